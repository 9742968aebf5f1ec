//! GRUB's boot images made from the GRUB package's own files (grub-images.md):
//!
//! - [`i386_pc_core_img`]: core.img for BIOS, assembled here as `grub-mkimage -O i386-pc`
//!   does (`util/mkimage.c`): kernel.img flattened, the modules in dependency order
//!   ([`resolve_modules`]), an embedded config and the prefix behind a module-info header,
//!   all raw-LZMA1-compressed behind `diskboot.img` + `lzma_decompress.img`. Only data files
//!   of the target's GRUB are read, so it works the same on any builder; the LZMA encoder is
//!   `lzma-rust2` (pinned), so the bytes are not grub-mkimage's, but the decompressed image
//!   is (grub-images.md §3.3).
//! - [`efi_image`]: the EFI image, made by running that package's `grub-mkimage`: a PE image
//!   needs a static linker with per-architecture relocations (grub-images.md §4.3).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::NixError;

/// `GRUB_KERNEL_I386_PC_LINK_ADDR`: where kernel.img is linked and runs.
const LINK_ADDR: u32 = 0x9000;
/// mkimage's limit on kernel + bss: `0x68000 - LINK_ADDR` bytes.
const KERNEL_END_MAX: u64 = 0x68000;
/// The decompressor runs at 0x8200 and must end before the kernel.
const DECOMPRESSOR_MAX: usize = 0x9000 - 0x8200;
/// `0x78000 - LINK_ADDR`: decompressor + payload.
const CORE_MAX: usize = 0x78000 - 0x9000;
/// Offsets in lzma_decompress.img (`include/grub/offsets.h`).
const COMPRESSED_SIZE_AT: usize = 0x08;
const UNCOMPRESSED_SIZE_AT: usize = 0x0C;
const NO_RS_LENGTH_AT: usize = 0x14;
/// The sector count of diskboot's default blocklist entry.
const DISKBOOT_LEN_AT: usize = 0x1FC;
/// `grub_module_info32` magic, "mimg".
const MODULE_MAGIC: u32 = 0x676d_696d;
/// Object types (`include/grub/kernel.h`).
const OBJ_ELF: u32 = 0;
const OBJ_CONFIG: u32 = 2;
const OBJ_PREFIX: u32 = 3;
/// The LZMA dictionary mkimage uses.
const LZMA_DICT: u32 = 1 << 16;

fn bad(path: &Path, message: impl Into<String>) -> NixError {
    NixError::BadGrubInput { path: path.to_path_buf(), message: message.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, NixError> {
    std::fs::read(path).map_err(|e| NixError::io(path, e))
}

/// The modules to embed for `wanted`, in `util/resolve.c`'s order: each module after its
/// dependencies (visited in the reverse of their order in `moddep.lst`), each once.
///
/// # Errors
/// [`NixError::BadGrubInput`] for a malformed `moddep.lst` line.
pub fn resolve_modules(moddep_lst: &str, wanted: &[&str]) -> Result<Vec<String>, NixError> {
    let mut deps: Vec<(&str, Vec<&str>)> = Vec::new();
    for (i, line) in moddep_lst.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, list) = line
            .split_once(':')
            .ok_or_else(|| bad(Path::new("moddep.lst"), format!("line {}: no ':' in {line:?}", i + 1)))?;
        deps.push((name.trim(), list.split_whitespace().rev().collect()));
    }
    fn add(deps: &[(&str, Vec<&str>)], name: &str, out: &mut Vec<String>, depth: usize) {
        if out.iter().any(|m| m == name) || depth > deps.len() {
            return;
        }
        if let Some((_, list)) = deps.iter().find(|(n, _)| *n == name) {
            for d in list {
                add(deps, d, out, depth + 1);
            }
        }
        if !out.iter().any(|m| m == name) {
            out.push(name.to_string());
        }
    }
    let mut out = Vec::new();
    for w in wanted {
        add(&deps, w.strip_suffix(".mod").unwrap_or(w), &mut out, 0);
    }
    Ok(out)
}

/// grub-install's embedded config: find the filesystem whose UUID is `uuid` (a filesystem
/// UUID, or a FAT volume ID `XXXX-XXXX`) and take `path` on it as the prefix.
#[must_use]
pub fn load_cfg(uuid: &str, path: &str) -> String {
    let quoted = path.replace('\'', "'\\''");
    format!("search.fs_uuid {uuid} root\nset prefix=($root)'{quoted}'\n")
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An ELF section of kernel.img: (type, flags, address, file offset, size).
struct Section {
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
}

const SHT_PROGBITS: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;

/// The section headers of an ELF32 little-endian ET_EXEC EM_386 file.
fn elf32_sections(path: &Path, elf: &[u8]) -> Result<Vec<Section>, NixError> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&1) || elf.get(5) != Some(&1) {
        return Err(bad(path, "not a 32-bit little-endian ELF file"));
    }
    if u16_at(elf, 16) != Some(2) || u16_at(elf, 18) != Some(3) {
        return Err(bad(path, "not an i386 executable (ET_EXEC, EM_386)"));
    }
    let (shoff, shentsize, shnum) = match (u32_at(elf, 32), u16_at(elf, 46), u16_at(elf, 48)) {
        (Some(o), Some(e), Some(n)) if e >= 40 => (o, e, n),
        _ => return Err(bad(path, "bad ELF section header table")),
    };
    (0..shnum)
        .map(|i| {
            let at = usize::try_from(u64::from(shoff) + u64::from(i) * u64::from(shentsize))
                .map_err(|_| bad(path, "section header table out of range"))?;
            let f = |o: usize| u32_at(elf, at + o).ok_or_else(|| bad(path, "section header table out of range"));
            Ok(Section { kind: f(4)?, flags: f(8)?, addr: f(12)?, offset: f(16)?, size: f(20)? })
        })
        .collect()
}

/// kernel.img laid out from its link address: every allocated PROGBITS section at its
/// address − 0x9000, zeros between; the executable code must start at 0x9000.
fn flatten_kernel(path: &Path, elf: &[u8]) -> Result<Vec<u8>, NixError> {
    let sections = elf32_sections(path, elf)?;
    let alloc = |s: &&Section| s.flags & SHF_ALLOC != 0;
    let text = sections
        .iter()
        .filter(alloc)
        .filter(|s| s.kind == SHT_PROGBITS && s.flags & SHF_EXECINSTR != 0)
        .map(|s| s.addr)
        .min();
    if text != Some(LINK_ADDR) {
        return Err(bad(path, format!("the code does not start at {LINK_ADDR:#x} (not GRUB's i386-pc kernel.img)")));
    }
    let end = |s: &Section| u64::from(s.addr) + u64::from(s.size);
    let data_end = sections.iter().filter(alloc).filter(|s| s.kind == SHT_PROGBITS).map(end).max().unwrap_or(0);
    let bss_end = sections.iter().filter(alloc).filter(|s| s.kind == SHT_NOBITS).map(end).max().unwrap_or(0);
    if data_end.max(bss_end) > KERNEL_END_MAX {
        return Err(bad(path, "kernel image is too big (kernel + bss beyond 0x68000)"));
    }
    let size = usize::try_from(data_end - u64::from(LINK_ADDR)).map_err(|_| bad(path, "kernel too large"))?;
    let mut flat = vec![0u8; size];
    for s in sections.iter().filter(alloc).filter(|s| s.kind == SHT_PROGBITS) {
        let at = s
            .addr
            .checked_sub(LINK_ADDR)
            .ok_or_else(|| bad(path, format!("a section at {:#x}, below the link address", s.addr)))?;
        let (at, off, len) = (to_usize(at), to_usize(s.offset), to_usize(s.size));
        let src = elf.get(off..off + len).ok_or_else(|| bad(path, "a section beyond the end of the file"))?;
        flat[at..at + len].copy_from_slice(src);
    }
    Ok(flat)
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).expect("usize holds u32 on the platforms mkdisk builds for")
}

/// Append one object (`grub_module_header` + payload padded to 4 bytes).
fn push_object(out: &mut Vec<u8>, kind: u32, payload: &[u8]) -> Result<(), NixError> {
    let padded = payload.len().div_ceil(4) * 4;
    let size = u32::try_from(8 + padded).map_err(|_| NixError::BadGrubImage("a module is over 4 GiB".into()))?;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + padded - payload.len(), 0);
    Ok(())
}

/// The module area: `grub_module_info32` then the ELF modules, the config and the prefix.
fn module_area(dir: &Path, modules: &[String], prefix: &str, config: Option<&str>) -> Result<Vec<u8>, NixError> {
    let mut objs = Vec::new();
    for m in modules {
        let path = dir.join(format!("{m}.mod"));
        if !path.is_file() {
            return Err(bad(&path, format!("GRUB module {m:?} not found")));
        }
        push_object(&mut objs, OBJ_ELF, &read(&path)?)?;
    }
    let nul = |s: &str| [s.as_bytes(), b"\0"].concat();
    if let Some(c) = config {
        push_object(&mut objs, OBJ_CONFIG, &nul(c))?;
    }
    push_object(&mut objs, OBJ_PREFIX, &nul(prefix))?;
    let total = u32::try_from(12 + objs.len()).map_err(|_| NixError::BadGrubImage("modules over 4 GiB".into()))?;
    let mut area = Vec::with_capacity(objs.len() + 12);
    area.extend_from_slice(&MODULE_MAGIC.to_le_bytes());
    area.extend_from_slice(&12u32.to_le_bytes());
    area.extend_from_slice(&total.to_le_bytes());
    area.extend_from_slice(&objs);
    Ok(area)
}

/// Raw LZMA1 (lc 3, lp 0, pb 2, 64 KiB dictionary, no header, no end marker).
fn lzma_raw(data: &[u8]) -> Result<Vec<u8>, NixError> {
    let mut o = lzma_rust2::LzmaOptions::with_preset(6);
    (o.lc, o.lp, o.pb, o.dict_size) = (3, 0, 2, LZMA_DICT);
    let fail = |e: std::io::Error| NixError::BadGrubImage(format!("LZMA: {e}"));
    let mut w = lzma_rust2::LzmaWriter::new_no_header(Vec::new(), &o, false).map_err(fail)?;
    w.write_all(data).map_err(fail)?;
    w.finish().map_err(fail)
}

/// core.img for i386-pc from GRUB's `i386-pc` directory `dir`: `modules` (with their
/// dependencies from `moddep.lst`), the embedded `config` and the `prefix`
/// (e.g. `(,gpt2)/grub`), compressed behind `diskboot.img` + `lzma_decompress.img`.
///
/// # Errors
/// [`NixError::Io`] for a file that cannot be read, [`NixError::BadGrubInput`] for a
/// kernel.img, decompressor or diskboot.img not shaped like GRUB's or a module not found,
/// [`NixError::BadGrubImage`] when the image exceeds GRUB's limits.
pub fn i386_pc_core_img(dir: &Path, modules: &[&str], prefix: &str, config: Option<&str>) -> Result<Vec<u8>, NixError> {
    let moddep = dir.join("moddep.lst");
    let text = String::from_utf8(read(&moddep)?).map_err(|_| bad(&moddep, "not UTF-8"))?;
    let order = resolve_modules(&text, modules)?;
    let kpath = dir.join("kernel.img");
    let mut flat = flatten_kernel(&kpath, &read(&kpath)?)?;
    flat.extend_from_slice(&module_area(dir, &order, prefix, config)?);
    let payload = lzma_raw(&flat)?;

    let dpath = dir.join("lzma_decompress.img");
    let mut decomp = read(&dpath)?;
    if decomp.len() > DECOMPRESSOR_MAX || decomp.len() < NO_RS_LENGTH_AT + 2 {
        return Err(bad(
            &dpath,
            format!("{} bytes, not GRUB's decompressor (at most {DECOMPRESSOR_MAX})", decomp.len()),
        ));
    }
    if u16_at(&decomp, NO_RS_LENGTH_AT) == Some(0xffff) {
        return Err(bad(&dpath, "no_rs_length is 0xFFFF (a decompressor of another GRUB version)"));
    }
    let too_big = || NixError::BadGrubImage(format!("core.img is over GRUB's {CORE_MAX}-byte limit"));
    let csize = u32::try_from(payload.len()).map_err(|_| too_big())?;
    let usize_ = u32::try_from(flat.len()).map_err(|_| too_big())?;
    decomp[COMPRESSED_SIZE_AT..COMPRESSED_SIZE_AT + 4].copy_from_slice(&csize.to_le_bytes());
    decomp[UNCOMPRESSED_SIZE_AT..UNCOMPRESSED_SIZE_AT + 4].copy_from_slice(&usize_.to_le_bytes());
    let body = decomp.len() + payload.len();
    if body > CORE_MAX {
        return Err(too_big());
    }

    let bpath = dir.join("diskboot.img");
    let mut core = read(&bpath)?;
    if core.len() != 512 || u16_at(&core, 0x1FE) != Some(0x0820) {
        return Err(bad(&bpath, "not GRUB's diskboot.img (512 bytes ending in segment 0x820)"));
    }
    let sectors = u16::try_from(body.div_ceil(512)).map_err(|_| too_big())?;
    core[DISKBOOT_LEN_AT..DISKBOOT_LEN_AT + 2].copy_from_slice(&sectors.to_le_bytes());
    core.extend_from_slice(&decomp);
    core.extend_from_slice(&payload);
    Ok(core)
}

/// `grub-mkimage` of the GRUB package whose `lib/grub` is `grub_lib`:
/// `<grub_lib>/../../bin/grub-mkimage` (Nix: `${grub2_efi}/bin`; Debian unpacked: `usr/bin`).
#[must_use]
pub fn find_grub_mkimage(grub_lib: &Path) -> Option<PathBuf> {
    let p = grub_lib.parent()?.parent()?.join("bin/grub-mkimage");
    p.is_file().then_some(p)
}

/// The EFI image of `platform` (`x86_64-efi`, `arm64-efi`) made by `mkimage` from the
/// platform directory `dir`, with `modules`, `prefix` and the embedded `config`.
///
/// # Errors
/// [`NixError::Io`] when it cannot be run or its output read, [`NixError::GrubMkimage`] when
/// it fails (with its message).
pub fn efi_image(
    mkimage: &Path,
    dir: &Path,
    platform: &str,
    modules: &[&str],
    prefix: &str,
    config: Option<&str>,
) -> Result<Vec<u8>, NixError> {
    let tmp = tempfile::tempdir().map_err(|e| NixError::io(std::env::temp_dir(), e))?;
    let out = tmp.path().join("grub.efi");
    let mut cmd = Command::new(mkimage);
    cmd.args(["-O", platform, "-d"]).arg(dir).args(["-p", prefix, "-o"]).arg(&out);
    if let Some(c) = config {
        let cfg = tmp.path().join("load.cfg");
        std::fs::write(&cfg, c).map_err(|e| NixError::io(&cfg, e))?;
        cmd.arg("-c").arg(&cfg);
    }
    let o = cmd.args(modules).output().map_err(|e| NixError::io(mkimage, e))?;
    if !o.status.success() {
        let msg = String::from_utf8_lossy(&o.stderr).lines().map(str::trim).collect::<Vec<_>>().join(" ");
        return Err(NixError::GrubMkimage { program: mkimage.to_path_buf(), message: format!("{}: {msg}", o.status) });
    }
    read(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 2.06's `moddep.lst` lines that matter (grub-images.md §2.3).
    const MODDEP: &str = "biosdisk:\npart_gpt:\nfshelp:\next2: fshelp\nfat: fshelp\n\
        btrfs: gzio lzopio raid6rec zstd\ngzio: gcry_crc\ngcry_crc: crypto\nlzopio: crypto\n\
        raid6rec: diskfilter\nsearch_fs_uuid:\n";

    #[test]
    fn modules_follow_their_dependencies_as_resolve_c_orders_them() {
        let r = resolve_modules(MODDEP, &["biosdisk", "part_gpt", "btrfs"]).unwrap();
        let want = "biosdisk part_gpt zstd diskfilter raid6rec crypto lzopio gcry_crc gzio btrfs";
        assert_eq!(r.join(" "), want);
        let r = resolve_modules(MODDEP, &["biosdisk", "part_gpt.mod", "ext2", "ext2", "search_fs_uuid"]).unwrap();
        assert_eq!(r.join(" "), "biosdisk part_gpt fshelp ext2 search_fs_uuid");
        assert!(resolve_modules("bad line\n", &["x"]).is_err());
        // A cycle (GRUB has none) ends, each module once.
        assert_eq!(resolve_modules("a: b\nb: a\n", &["a"]).unwrap().len(), 2);
    }

    #[test]
    fn objects_are_padded_to_four_bytes() {
        let mut v = Vec::new();
        push_object(&mut v, OBJ_PREFIX, b"(,gpt3)/boot/grub\0").unwrap();
        assert_eq!(v.len(), 28);
        assert_eq!(&v[..8], &[3, 0, 0, 0, 28, 0, 0, 0]);
        assert_eq!(&v[26..], &[0, 0]);
    }

    #[test]
    fn the_load_cfg_quotes_the_path() {
        assert_eq!(load_cfg("AB12-CD34", "/grub"), "search.fs_uuid AB12-CD34 root\nset prefix=($root)'/grub'\n");
        assert!(load_cfg("u", "/a'b").ends_with("'/a'\\''b'\n"));
    }

    #[test]
    fn kernels_not_shaped_like_grubs_are_refused() {
        let p = Path::new("kernel.img");
        assert!(flatten_kernel(p, b"not an elf").is_err());
        let mut elf = vec![0u8; 52];
        elf[..6].copy_from_slice(b"\x7fELF\x01\x01");
        elf[16] = 2;
        elf[18] = 62; // x86-64
        assert!(matches!(flatten_kernel(p, &elf), Err(NixError::BadGrubInput { .. })));
    }
}
