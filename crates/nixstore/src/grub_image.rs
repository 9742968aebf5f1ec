//! GRUB's boot images made from the GRUB package's own files (grub-images.md):
//!
//! - [`i386_pc_core_img`]: core.img for BIOS, assembled here as `grub-mkimage -O i386-pc`
//!   does (`util/mkimage.c`): kernel.img flattened, the modules in dependency order
//!   ([`resolve_modules`]), an embedded config and the prefix behind a module-info header,
//!   all raw-LZMA1-compressed behind `diskboot.img` + `lzma_decompress.img`. Only data files
//!   of the target's GRUB are read, so it works the same on any builder; the LZMA encoder is
//!   `lzma-rust2` (pinned), so the bytes are not grub-mkimage's, but the decompressed image
//!   is (grub-images.md §3.3).
//! - [`efi_image`]: the EFI image, made by running that package's `grub-mkimage`
//!   ([`find_grub_mkimage`]): a PE image needs a static linker with per-architecture
//!   relocations (grub-images.md §4.3).
//! - [`grub_modules_for`] and [`load_cfg`]: the filesystem module and the embedded config
//!   grub-install would choose.
//!
//! Nothing here reads environment variables (the temporary directory of [`efi_image`] aside,
//! which `tempfile` places as the OS says).

#![deny(clippy::cast_possible_truncation, clippy::as_conversions, clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::grub::GRUB_MAX_CORE_SECTORS;
use crate::NixError;

/// `GRUB_KERNEL_I386_PC_LINK_ADDR`: where kernel.img is linked and runs.
const LINK_ADDR: u32 = 0x9000;
/// `mkimage.c`: kernel + bss must end below 0x68000 ("kernel image is too big").
const KERNEL_END_MAX: u64 = 0x68000;
/// The decompressor runs at 0x8200 (`GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20`) and must end
/// before the kernel's link address: 0xE00 bytes.
const DECOMPRESSOR_MAX: usize = 0x9000 - 0x8200;
/// `0x78000 - LINK_ADDR`: decompressor + payload (`GRUB_MEMORY_I386_PC_UPPER`), 888 sectors.
const CORE_MAX: usize = 0x78000 - 0x9000;
// lzma_decompress.img fields (`include/grub/offsets.h`, core.img + 0x200).
/// `GRUB_KERNEL_I386_PC_COMPRESSED_SIZE`.
const COMPRESSED_SIZE_AT: usize = 0x08;
/// `GRUB_KERNEL_I386_PC_UNCOMPRESSED_SIZE`.
const UNCOMPRESSED_SIZE_AT: usize = 0x0C;
/// `GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH`.
const NO_RS_LENGTH_AT: usize = 0x14;
// diskboot.img: the default blocklist entry `{u64 start, u16 len, u16 segment}` at 0x1F4.
/// `GRUB_BOOT_MACHINE_LIST_SIZE` field of the first entry: the sector count.
const DISKBOOT_LEN_AT: usize = 0x1FC;
/// Its segment, which mkimage asserts is 0x820.
const DISKBOOT_SEGMENT_AT: usize = 0x1FE;
const DISKBOOT_SEGMENT: u16 = 0x0820;
const SECTOR: usize = 512;
/// `grub_module_info32` magic, "mimg".
const GRUB_MODULE_MAGIC: u32 = 0x676d_696d;
/// `sizeof (struct grub_module_info32)`.
const MODULE_INFO_SIZE: u32 = 12;
/// `sizeof (struct grub_module_header)`.
const MODULE_HEADER_SIZE: usize = 8;
/// `ALIGN_ADDR` on i386-pc: the pointer size.
const OBJ_ALIGN: usize = 4;
// Object types (`include/grub/kernel.h`).
const OBJ_TYPE_ELF: u32 = 0;
const OBJ_TYPE_CONFIG: u32 = 2;
const OBJ_TYPE_PREFIX: u32 = 3;
/// The LZMA dictionary mkimage uses (`compress_kernel_lzma`).
const LZMA_DICT: u32 = 1 << 16;
// ELF (`include/grub/elf.h`).
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EV_CURRENT: u32 = 1;
const ELF32_SHDR_SIZE: u16 = 40;
const SHT_PROGBITS: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;

fn bad(path: &Path, message: impl Into<String>) -> NixError {
    NixError::BadGrubInput { path: path.to_path_buf(), message: message.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, NixError> {
    std::fs::read(path).map_err(|e| NixError::io(path, e))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Overwrite `bytes.len()` bytes at `at`; `None` where they are not all inside `b`.
fn put(b: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    b.get_mut(at..at.checked_add(bytes.len())?)?.copy_from_slice(bytes);
    Some(())
}

fn usize_from(v: impl Into<u64>) -> Option<usize> {
    usize::try_from(v.into()).ok()
}

/// The modules to embed for `wanted`, in `util/resolve.c`'s order: each module after its
/// dependencies, the dependencies visited in the reverse of their order in `moddep.lst`
/// (resolve.c builds each list by prepending), each module once; a `.mod` suffix is accepted.
///
/// # Errors
/// [`NixError::UnknownGrubModule`] for a module (wanted or a dependency) that `moddep.lst`
/// does not list, [`NixError::BadGrubInput`] for a line without `:` or a dependency cycle
/// (GRUB's own resolver would recurse forever).
pub fn resolve_modules(moddep_lst: &str, wanted: &[&str]) -> Result<Vec<String>, NixError> {
    resolve_in(Path::new("moddep.lst"), moddep_lst, wanted)
}

fn resolve_in(moddep: &Path, text: &str, wanted: &[&str]) -> Result<Vec<String>, NixError> {
    // A name listed twice: resolve.c's list is built by prepending, so the last line wins.
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, list) = line
            .split_once(':')
            .ok_or_else(|| bad(moddep, format!("line {}: no ':' in {line:?}", i.saturating_add(1))))?;
        deps.insert(name.trim(), list.split_whitespace().collect());
    }
    enum Step<'a> {
        Enter { name: &'a str, needed_by: Option<&'a str> },
        Leave(&'a str),
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    // The modules being resolved, outermost first (the recursion path of resolve.c).
    let mut path: Vec<&str> = Vec::new();
    for w in wanted {
        let mut stack = vec![Step::Enter { name: w.strip_suffix(".mod").unwrap_or(w), needed_by: None }];
        while let Some(step) = stack.pop() {
            match step {
                Step::Enter { name, needed_by } => {
                    if done.contains(name) {
                        continue;
                    }
                    if path.contains(&name) {
                        let cycle = [&path[..], &[name]].concat().join(" → ");
                        return Err(bad(moddep, format!("dependency cycle: {cycle}")));
                    }
                    let list = deps.get(name).ok_or_else(|| NixError::UnknownGrubModule {
                        module: name.to_string(),
                        needed_by: needed_by.map(str::to_string),
                        moddep: moddep.to_path_buf(),
                    })?;
                    path.push(name);
                    stack.push(Step::Leave(name));
                    // Popped last-listed first: resolve.c's reversed list.
                    stack.extend(list.iter().map(|d| Step::Enter { name: d, needed_by: Some(name) }));
                }
                Step::Leave(name) => {
                    path.pop();
                    done.insert(name);
                    out.push(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// GRUB's module that reads a filesystem of `format` (disko's `format`: `vfat`, `ext4`, ...),
/// as grub-install picks it for the filesystem holding `/boot/grub`.
///
/// # Errors
/// [`NixError::GrubCannotReadFs`] for any other format.
pub fn grub_modules_for(format: &str) -> Result<&'static str, NixError> {
    match format {
        "vfat" => Ok("fat"),
        "ext2" | "ext3" | "ext4" => Ok("ext2"),
        "btrfs" => Ok("btrfs"),
        _ => Err(NixError::GrubCannotReadFs { format: format.to_string() }),
    }
}

/// grub-install's embedded config (`load.cfg`): find the filesystem whose UUID is
/// `search_uuid` (a filesystem UUID, or a FAT volume ID `XXXX-XXXX`) and take `path` on it
/// as the prefix; `path` is single-quoted as grub-install's `escape` does (`'` → `'\''`).
#[must_use]
pub fn load_cfg(search_uuid: &str, path: &str) -> String {
    let quoted = path.replace('\'', "'\\''");
    format!("search.fs_uuid {search_uuid} root\nset prefix=($root)'{quoted}'\n")
}

/// An ELF32 section header (`Elf32_Shdr`), the fields mkimage reads.
struct Elf32Shdr {
    sh_type: u32,
    sh_flags: u32,
    sh_addr: u32,
    sh_offset: u32,
    sh_size: u32,
}

impl Elf32Shdr {
    fn alloc(&self) -> bool {
        self.sh_flags & SHF_ALLOC != 0
    }

    fn end(&self) -> u64 {
        u64::from(self.sh_addr).saturating_add(u64::from(self.sh_size))
    }
}

/// The section headers of an ELF32 little-endian ET_EXEC EM_386 file (mkimage's
/// `check_elf_header` and the i386-pc target's class, machine and type).
fn elf32_sections(path: &Path, elf: &[u8]) -> Result<Vec<Elf32Shdr>, NixError> {
    // e_ident: magic, EI_CLASS = ELFCLASS32, EI_DATA = ELFDATA2LSB, EI_VERSION = EV_CURRENT.
    if elf.get(..7) != Some(b"\x7fELF\x01\x01\x01") {
        return Err(bad(path, "not a 32-bit little-endian ELF file of the current version"));
    }
    let (e_type, e_machine, e_version) = (u16_at(elf, 0x10), u16_at(elf, 0x12), u32_at(elf, 0x14));
    if e_type != Some(ET_EXEC) || e_machine != Some(EM_386) || e_version != Some(EV_CURRENT) {
        return Err(bad(path, "not an i386 executable (ET_EXEC, EM_386): not GRUB's i386-pc kernel.img"));
    }
    let (Some(e_shoff), Some(e_shentsize), Some(e_shnum)) = (u32_at(elf, 0x20), u16_at(elf, 0x2E), u16_at(elf, 0x30))
    else {
        return Err(bad(path, "truncated ELF header"));
    };
    if e_shentsize < ELF32_SHDR_SIZE {
        return Err(bad(path, format!("ELF section header size {e_shentsize}, expected at least {ELF32_SHDR_SIZE}")));
    }
    (0..e_shnum)
        .map(|i| {
            let out = || bad(path, format!("section header {i} beyond the end of the file"));
            let at = u64::from(i)
                .checked_mul(u64::from(e_shentsize))
                .and_then(|o| o.checked_add(u64::from(e_shoff)))
                .and_then(usize_from)
                .ok_or_else(out)?;
            let field = |o: usize| at.checked_add(o).and_then(|a| u32_at(elf, a)).ok_or_else(out);
            Ok(Elf32Shdr {
                sh_type: field(4)?,
                sh_flags: field(8)?,
                sh_addr: field(12)?,
                sh_offset: field(16)?,
                sh_size: field(20)?,
            })
        })
        .collect()
}

/// kernel.img laid out from its link address (`grub-mkimagexx.c` `load_image` for a
/// non-relocatable target): every allocated PROGBITS section at `sh_addr − 0x9000`, zeros
/// between; the result is `kernel_size` bytes long (`_edata − _start`).
fn flatten_kernel(path: &Path, elf: &[u8]) -> Result<Vec<u8>, NixError> {
    let sections = elf32_sections(path, elf)?;
    let progbits: Vec<&Elf32Shdr> = sections.iter().filter(|s| s.alloc() && s.sh_type == SHT_PROGBITS).collect();
    let text: Vec<&&Elf32Shdr> = progbits.iter().filter(|s| s.sh_flags & SHF_EXECINSTR != 0).collect();
    if text.is_empty() {
        return Err(bad(path, "no executable section: not GRUB's i386-pc kernel.img"));
    }
    // mkimage: "`%s' is miscompiled: its start address is 0x%llx instead of 0x%llx".
    if let Some(s) = text.iter().find(|s| s.sh_addr != LINK_ADDR) {
        return Err(bad(path, format!("code at {:#x} instead of {LINK_ADDR:#x} (miscompiled)", s.sh_addr)));
    }
    let data_end = progbits.iter().map(|s| s.end()).max().unwrap_or(0);
    let bss_end =
        sections.iter().filter(|s| s.alloc() && s.sh_type == SHT_NOBITS).map(Elf32Shdr::end).max().unwrap_or(0);
    let end = data_end.max(bss_end);
    if end > KERNEL_END_MAX {
        return Err(bad(path, format!("kernel image is too big (kernel + bss end at {end:#x} > {KERNEL_END_MAX:#x})")));
    }
    // data_end ≥ LINK_ADDR (the code starts there) and ≤ KERNEL_END_MAX: both fit.
    let kernel_size =
        data_end.checked_sub(u64::from(LINK_ADDR)).and_then(usize_from).ok_or_else(|| bad(path, "kernel size"))?;
    let mut flat = vec![0u8; kernel_size];
    for s in progbits {
        let below = || bad(path, format!("a section at {:#x}, below the link address {LINK_ADDR:#x}", s.sh_addr));
        let at = s.sh_addr.checked_sub(LINK_ADDR).and_then(usize_from).ok_or_else(below)?;
        let beyond = || bad(path, format!("the section at {:#x} lies beyond the end of the file", s.sh_addr));
        let (off, len) = (usize_from(s.sh_offset).ok_or_else(beyond)?, usize_from(s.sh_size).ok_or_else(beyond)?);
        let src = off.checked_add(len).and_then(|e| elf.get(off..e)).ok_or_else(beyond)?;
        put(&mut flat, at, src).ok_or_else(|| bad(path, "section outside the flat kernel"))?;
    }
    Ok(flat)
}

/// Append one object: `grub_module_header { u32 type; u32 size }` (size including the
/// header) and the payload padded with zeros to `ALIGN_ADDR` (4 bytes on i386-pc).
fn push_object(out: &mut Vec<u8>, kind: u32, payload: &[u8]) -> Result<(), NixError> {
    let too_big = || NixError::BadGrubImage(format!("a GRUB object of {} bytes", payload.len()));
    let padded = payload.len().checked_next_multiple_of(OBJ_ALIGN).ok_or_else(too_big)?;
    let size = padded.checked_add(MODULE_HEADER_SIZE).and_then(|s| u32::try_from(s).ok()).ok_or_else(too_big)?;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().saturating_add(padded.saturating_sub(payload.len())), 0);
    Ok(())
}

/// A C string object's payload: the text and its NUL (mkimage takes `strlen + 1`); a NUL
/// inside would cut it short at run time.
fn c_string(what: &str, s: &str) -> Result<Vec<u8>, NixError> {
    if s.contains('\0') {
        return Err(NixError::BadGrubImage(format!("the {what} contains a NUL byte")));
    }
    Ok([s.as_bytes(), b"\0"].concat())
}

/// The module area (grub-images.md §2.2): `grub_module_info32 { magic, offset 12, size }`,
/// then the ELF modules in order, the config object (the text + NUL) and the prefix object
/// (mkimage's emission order).
fn module_area(dir: &Path, modules: &[String], prefix: &str, config: Option<&str>) -> Result<Vec<u8>, NixError> {
    let mut objs = Vec::new();
    for m in modules {
        let path = dir.join(format!("{m}.mod"));
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad(&path, format!("GRUB module {m:?} not found (moddep.lst lists it)")),
            _ => NixError::io(&path, e),
        })?;
        push_object(&mut objs, OBJ_TYPE_ELF, &bytes)?;
    }
    if let Some(c) = config {
        push_object(&mut objs, OBJ_TYPE_CONFIG, &c_string("embedded config", c)?)?;
    }
    push_object(&mut objs, OBJ_TYPE_PREFIX, &c_string("prefix", prefix)?)?;
    let total = u32::try_from(objs.len())
        .ok()
        .and_then(|n| n.checked_add(MODULE_INFO_SIZE))
        .ok_or_else(|| NixError::BadGrubImage(format!("GRUB modules of {} bytes", objs.len())))?;
    let mut area = Vec::with_capacity(objs.len().saturating_add(12));
    area.extend_from_slice(&GRUB_MODULE_MAGIC.to_le_bytes());
    area.extend_from_slice(&MODULE_INFO_SIZE.to_le_bytes());
    area.extend_from_slice(&total.to_le_bytes());
    area.extend_from_slice(&objs);
    Ok(area)
}

/// Raw LZMA1 (lc 3, lp 0, pb 2, 64 KiB dictionary, no header, no end marker) as
/// `lzma_decode.S` reads it; preset 6's match finder (grub-images.md §3.3).
fn lzma_raw(data: &[u8]) -> Result<Vec<u8>, NixError> {
    let mut o = lzma_rust2::LzmaOptions::with_preset(6);
    (o.lc, o.lp, o.pb, o.dict_size) = (3, 0, 2, LZMA_DICT);
    let fail = |e: std::io::Error| NixError::BadGrubImage(format!("LZMA: {e}"));
    let mut w = lzma_rust2::LzmaWriter::new_no_header(Vec::new(), &o, false).map_err(fail)?;
    w.write_all(data).map_err(fail)?;
    w.finish().map_err(fail)
}

/// `lzma_decompress.img` with the sizes patched, after checking it is this layout's.
fn patch_decompressor(
    path: &Path,
    mut d: Vec<u8>,
    compressed: usize,
    uncompressed: usize,
) -> Result<Vec<u8>, NixError> {
    if d.len() > DECOMPRESSOR_MAX {
        return Err(bad(
            path,
            format!("{} bytes, over the {DECOMPRESSOR_MAX} bytes between 0x8200 and 0x9000", d.len()),
        ));
    }
    match u16_at(&d, NO_RS_LENGTH_AT) {
        None => return Err(bad(path, format!("{} bytes, too short for GRUB's decompressor header", d.len()))),
        Some(0xFFFF) => return Err(bad(path, "no_rs_length is 0xFFFF (a decompressor of another GRUB version)")),
        Some(_) => {}
    }
    let too_big = || core_too_large(compressed);
    let compressed = u32::try_from(compressed).map_err(|_| too_big())?;
    let uncompressed = u32::try_from(uncompressed).map_err(|_| too_big())?;
    put(&mut d, COMPRESSED_SIZE_AT, &compressed.to_le_bytes()).ok_or_else(|| bad(path, "too short"))?;
    put(&mut d, UNCOMPRESSED_SIZE_AT, &uncompressed.to_le_bytes()).ok_or_else(|| bad(path, "too short"))?;
    Ok(d)
}

/// `bytes` behind diskboot (decompressor + payload) over GRUB's load limit.
fn core_too_large(bytes: usize) -> NixError {
    NixError::CoreTooLarge {
        core_sectors: u64::try_from(bytes.div_ceil(SECTOR)).unwrap_or(u64::MAX),
        available: GRUB_MAX_CORE_SECTORS,
        what: "GRUB's i386-pc load area behind diskboot (0x9000 + core ≤ 0x78000)",
    }
}

/// `diskboot.img` with the sector count of its default blocklist entry set to `sectors`
/// (the sectors after diskboot), after checking the entry is GRUB's (segment 0x820).
fn patch_diskboot(path: &Path, mut d: Vec<u8>, sectors: u16) -> Result<Vec<u8>, NixError> {
    if d.len() != SECTOR {
        return Err(bad(path, format!("{} bytes, expected one sector of {SECTOR}", d.len())));
    }
    let segment = u16_at(&d, DISKBOOT_SEGMENT_AT);
    if segment != Some(DISKBOOT_SEGMENT) {
        let found = segment.unwrap_or(0);
        return Err(bad(path, format!("blocklist segment {found:#x}, expected {DISKBOOT_SEGMENT:#x}")));
    }
    put(&mut d, DISKBOOT_LEN_AT, &sectors.to_le_bytes()).ok_or_else(|| bad(path, "too short"))?;
    Ok(d)
}

/// core.img for i386-pc from GRUB's `i386-pc` directory `dir` (`${grub2}/lib/grub/i386-pc`):
/// `modules` with their dependencies from `moddep.lst`, the embedded `config` (for example
/// [`load_cfg`]) and the `prefix` (`(,gpt2)/grub`), as `grub-mkimage -O i386-pc -d dir -p
/// prefix [-c config] modules…` lays it out (grub-images.md §3.4): diskboot.img (sector count
/// patched) ‖ lzma_decompress.img (sizes patched) ‖ raw LZMA1 of the flat kernel and the
/// module area. The same inputs give the same bytes.
///
/// # Errors
/// [`NixError::Io`] for a file that cannot be read, [`NixError::UnknownGrubModule`] for a
/// module `moddep.lst` does not list, [`NixError::BadGrubInput`] for a kernel.img,
/// decompressor, diskboot.img or `moddep.lst` not shaped like GRUB's i386-pc ones or a
/// listed module without its file, [`NixError::CoreTooLarge`] when the image exceeds GRUB's
/// load area, [`NixError::BadGrubImage`] for a NUL in the prefix or the config.
pub fn i386_pc_core_img(dir: &Path, modules: &[&str], prefix: &str, config: Option<&str>) -> Result<Vec<u8>, NixError> {
    let moddep = dir.join("moddep.lst");
    let text = String::from_utf8(read(&moddep)?).map_err(|_| bad(&moddep, "not UTF-8"))?;
    let order = resolve_in(&moddep, &text, modules)?;
    let kernel = dir.join("kernel.img");
    let mut flat = flatten_kernel(&kernel, &read(&kernel)?)?;
    flat.extend_from_slice(&module_area(dir, &order, prefix, config)?);
    let payload = lzma_raw(&flat)?;

    let dpath = dir.join("lzma_decompress.img");
    let decompressor = patch_decompressor(&dpath, read(&dpath)?, payload.len(), flat.len())?;
    let body = decompressor.len().saturating_add(payload.len());
    if body > CORE_MAX {
        return Err(core_too_large(body));
    }
    let sectors = u16::try_from(body.div_ceil(SECTOR)).map_err(|_| core_too_large(body))?;
    let bpath = dir.join("diskboot.img");
    let mut core = patch_diskboot(&bpath, read(&bpath)?, sectors)?;
    core.reserve(body);
    core.extend_from_slice(&decompressor);
    core.extend_from_slice(&payload);
    Ok(core)
}

/// The `grub-mkimage` of the GRUB package whose `lib/grub` is `grub_lib`:
/// `<grub_lib>/../../bin/grub-mkimage` (Nix: `${grub2_efi}/lib/grub` →
/// `${grub2_efi}/bin/grub-mkimage`; Debian unpacked: `usr/lib/grub` → `usr/bin/grub-mkimage`),
/// where that file exists.
#[must_use]
pub fn find_grub_mkimage(grub_lib: &Path) -> Option<PathBuf> {
    let p = grub_lib.parent()?.parent()?.join("bin").join("grub-mkimage");
    p.is_file().then_some(p)
}

/// The EFI image of `platform` (`x86_64-efi`, `arm64-efi`) made by running `mkimage` on the
/// platform directory `dir` (`-O platform -d dir -p prefix [-c config] -o tmp modules…`) in a
/// temporary directory; grub-mkimage's output is deterministic (grub-images.md §6).
///
/// # Errors
/// [`NixError::Io`] when it cannot be started or its output read, [`NixError::GrubMkimage`]
/// when it fails (its exit status and stderr on one line), writes no PE image or no
/// temporary directory can be made.
pub fn efi_image(
    mkimage: &Path,
    dir: &Path,
    platform: &str,
    modules: &[&str],
    prefix: &str,
    config: Option<&str>,
) -> Result<Vec<u8>, NixError> {
    let failed = |message: String| NixError::GrubMkimage { program: mkimage.to_path_buf(), message };
    let tmp = tempfile::tempdir().map_err(|e| failed(format!("no temporary directory for its output: {e}")))?;
    let out = tmp.path().join("grub.efi");
    let mut cmd = Command::new(mkimage);
    cmd.args(["-O", platform, "-d"]).arg(dir).args(["-p", prefix]);
    if let Some(c) = config {
        let cfg = tmp.path().join("load.cfg");
        std::fs::write(&cfg, c).map_err(|e| NixError::io(&cfg, e))?;
        cmd.arg("-c").arg(&cfg);
    }
    let o = cmd.arg("-o").arg(&out).args(modules).output().map_err(|e| NixError::io(mkimage, e))?;
    if !o.status.success() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        let msg: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        return Err(failed(format!("{}: {}", o.status, msg.join(" "))));
    }
    let image = read(&out)?;
    if !image.starts_with(b"MZ") {
        return Err(failed(format!("wrote {} bytes that are not a PE image (no MZ)", image.len())));
    }
    Ok(image)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use mkdisk_testkit::grub::fake_grub_lib;

    /// Debian 2.06's `moddep.lst` lines that matter (grub-images.md §2.3).
    const MODDEP: &str = "biosdisk:\npart_gpt:\nfshelp:\next2: fshelp\nfat: fshelp\n\
        btrfs: gzio lzopio raid6rec zstd\ngzio: gcry_crc\ngcry_crc: crypto\nlzopio: crypto\n\
        raid6rec: diskfilter\nsearch_fs_uuid:\nzstd:\ndiskfilter:\ncrypto:\n";

    fn resolved(wanted: &[&str]) -> String {
        resolve_modules(MODDEP, wanted).unwrap().join(" ")
    }

    #[test]
    fn modules_follow_their_dependencies_as_resolve_c_orders_them() {
        // grub-images.md §2.4, measured with Debian's grub-mkimage.
        let want = "biosdisk part_gpt zstd diskfilter raid6rec crypto lzopio gcry_crc gzio btrfs";
        assert_eq!(resolved(&["biosdisk", "part_gpt", "btrfs"]), want);
        assert_eq!(resolved(&["biosdisk", "part_gpt", "btrfs", "search_fs_uuid"]), format!("{want} search_fs_uuid"));
        assert_eq!(resolved(&["biosdisk", "part_gpt", "fat"]), "biosdisk part_gpt fshelp fat");
        // `.mod` accepted, duplicates skipped, command-line order kept.
        assert_eq!(resolved(&["biosdisk", "part_gpt.mod", "ext2", "ext2.mod"]), "biosdisk part_gpt fshelp ext2");
        assert_eq!(resolved(&["ext2", "part_gpt", "biosdisk"]), "fshelp ext2 part_gpt biosdisk");
        assert_eq!(resolved(&[]), "");
        // Blank lines are ignored; a later line for the same module wins (resolve.c prepends).
        assert_eq!(resolve_modules("\na: b\nb:\nc:\na: c\n", &["a"]).unwrap().join(" "), "c a");
    }

    #[test]
    fn unknown_modules_and_bad_moddep_lines_are_named() {
        let e = resolve_modules(MODDEP, &["biosdisk", "nosuch.mod"]).unwrap_err();
        assert!(matches!(&e, NixError::UnknownGrubModule { module, needed_by: None, .. } if module == "nosuch"), "{e}");
        assert!(e.to_string().contains("\"nosuch\"") && e.to_string().contains("moddep.lst"), "{e}");
        let e = resolve_modules("btrfs: zstd\n", &["btrfs"]).unwrap_err();
        assert!(
            matches!(&e, NixError::UnknownGrubModule { module, needed_by: Some(b), .. } if module == "zstd" && b == "btrfs"),
            "{e}"
        );
        assert!(e.to_string().contains("needed by \"btrfs\""), "{e}");
        let e = resolve_modules("a:\nbad line\n", &["a"]).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bad line"), "{e}");
        let e = resolve_modules("a: b\nb: c\nc: a\n", &["a"]).unwrap_err().to_string();
        assert!(e.contains("cycle: a → b → c → a"), "{e}");
    }

    #[test]
    fn filesystems_map_to_grubs_modules() {
        assert_eq!(grub_modules_for("vfat").unwrap(), "fat");
        for f in ["ext2", "ext3", "ext4"] {
            assert_eq!(grub_modules_for(f).unwrap(), "ext2");
        }
        assert_eq!(grub_modules_for("btrfs").unwrap(), "btrfs");
        let e = grub_modules_for("xfs").unwrap_err();
        assert!(matches!(&e, NixError::GrubCannotReadFs { format } if format == "xfs"));
        assert!(e.to_string().contains("GRUB cannot read") && e.to_string().contains("xfs"), "{e}");
    }

    #[test]
    fn the_load_cfg_quotes_the_path() {
        assert_eq!(load_cfg("AB12-CD34", "/grub"), "search.fs_uuid AB12-CD34 root\nset prefix=($root)'/grub'\n");
        assert_eq!(
            load_cfg("0c2e-1", "/@root/it's/grub"),
            "search.fs_uuid 0c2e-1 root\nset prefix=($root)'/@root/it'\\''s/grub'\n"
        );
    }

    #[test]
    fn objects_are_padded_to_four_bytes() {
        for (len, size) in [(0, 8), (1, 12), (3, 12), (4, 12), (5, 16), (18, 28)] {
            let mut v = vec![0xEE];
            push_object(&mut v, OBJ_TYPE_PREFIX, &vec![0x41; len]).unwrap();
            assert_eq!(v.len(), 1 + size, "payload {len}");
            assert_eq!(&v[1..9], &[[3, 0, 0, 0], u32::try_from(size).unwrap().to_le_bytes()].concat()[..]);
            assert!(v[9 + len..].iter().all(|&b| b == 0), "zero padding");
        }
        // The worked example of grub-images.md §2.2: the prefix object is 28 bytes.
        let mut v = Vec::new();
        push_object(&mut v, OBJ_TYPE_PREFIX, &c_string("prefix", "(,gpt3)/boot/grub").unwrap()).unwrap();
        assert_eq!(v.len(), 28);
        assert!(matches!(c_string("prefix", "a\0b"), Err(NixError::BadGrubImage(_))));
    }

    /// The module area of a synthetic GRUB: info header, modules in order, config, prefix.
    #[test]
    fn the_module_area_packs_modules_config_and_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let pc = fake_grub_lib(tmp.path()).join("i386-pc");
        let mods = ["fshelp".to_string(), "ext2".to_string()];
        let area = module_area(&pc, &mods, "(,gpt3)/boot/grub", Some("set a=b\n")).unwrap();
        assert_eq!(&area[..8], &[b'm', b'i', b'm', b'g', 12, 0, 0, 0]);
        assert_eq!(u32_at(&area, 8).and_then(usize_from), Some(area.len()));
        let mut at = 12;
        let mut kinds = Vec::new();
        while at < area.len() {
            let (kind, size) = (u32_at(&area, at).unwrap(), usize_from(u32_at(&area, at + 4).unwrap()).unwrap());
            assert_eq!(size % 4, 0);
            kinds.push((kind, area[at + 8..at + size].to_vec()));
            at += size;
        }
        assert_eq!(at, area.len());
        let fshelp = std::fs::read(pc.join("fshelp.mod")).unwrap();
        assert_eq!(kinds[0].0, OBJ_TYPE_ELF);
        assert_eq!(&kinds[0].1[..fshelp.len()], &fshelp[..]);
        assert!(String::from_utf8_lossy(&kinds[1].1).contains("module ext2"));
        assert_eq!(kinds[2], (OBJ_TYPE_CONFIG, b"set a=b\n\0\0\0\0".to_vec()));
        assert_eq!(kinds[3], (OBJ_TYPE_PREFIX, b"(,gpt3)/boot/grub\0\0\0".to_vec()));
        assert_eq!(kinds.len(), 4);
    }

    fn decode(core: &[u8], decompressor_len: usize) -> Vec<u8> {
        use std::io::Read as _;
        let (csize, usize_) = (u32_at(core, 0x208).unwrap(), u32_at(core, 0x20C).unwrap());
        let start = 512 + decompressor_len;
        assert_eq!(core.len(), start + usize_from(csize).unwrap(), "payload length");
        let mut r = lzma_rust2::LzmaReader::new(&core[start..], u64::from(usize_), 3, 0, 2, LZMA_DICT, None).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn core_img_patches_diskboot_and_the_decompressor() {
        let tmp = tempfile::tempdir().unwrap();
        let pc = fake_grub_lib(tmp.path()).join("i386-pc");
        let core = i386_pc_core_img(&pc, &["biosdisk", "part_gpt", "btrfs"], "(,gpt2)/grub", Some("x\n")).unwrap();
        assert_eq!(
            core,
            i386_pc_core_img(&pc, &["biosdisk", "part_gpt", "btrfs"], "(,gpt2)/grub", Some("x\n")).unwrap()
        );
        let diskboot = std::fs::read(pc.join("diskboot.img")).unwrap();
        let decomp = std::fs::read(pc.join("lzma_decompress.img")).unwrap();
        assert_eq!(&core[..0x1FC], &diskboot[..0x1FC]);
        assert_eq!(&core[0x1FE..0x200], &diskboot[0x1FE..]);
        let behind = core.len() - 512;
        assert_eq!(u16_at(&core, 0x1FC).map(usize::from), Some(behind.div_ceil(512)), "sector count");
        assert_eq!(&core[0x200..0x208], &decomp[..8]);
        assert_eq!(&core[0x210..0x200 + decomp.len()], &decomp[0x10..]);
        let flat = decode(&core, decomp.len());
        assert_eq!(u32_at(&core, 0x20C).and_then(usize_from), Some(flat.len()), "uncompressed size");
        // The flat kernel: 700 bytes of code at 0, its data at 700, nothing of the bss.
        let kernel = flatten_kernel(Path::new("k"), &std::fs::read(pc.join("kernel.img")).unwrap()).unwrap();
        assert_eq!(kernel.len(), 700 + 16);
        assert_eq!(&kernel[700..], b"GRUB kernel data");
        assert_eq!(&flat[..kernel.len()], &kernel[..]);
        let order: Vec<String> = ["biosdisk", "part_gpt", "zstd", "btrfs"].map(String::from).to_vec();
        assert_eq!(&flat[kernel.len()..], &module_area(&pc, &order, "(,gpt2)/grub", Some("x\n")).unwrap()[..]);
        // Another prefix, other bytes.
        assert_ne!(
            core,
            i386_pc_core_img(&pc, &["biosdisk", "part_gpt", "btrfs"], "(,gpt3)/grub", Some("x\n")).unwrap()
        );
    }

    /// The fake kernel.img's section header `i`, field at `field`.
    fn shdr_field(elf: &[u8], i: usize, field: usize) -> usize {
        usize_from(u32_at(elf, 0x20).unwrap()).unwrap() + 40 * i + field
    }

    #[test]
    fn kernels_not_shaped_like_grubs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let good = std::fs::read(fake_grub_lib(tmp.path()).join("i386-pc/kernel.img")).unwrap();
        let p = Path::new("kernel.img");
        let refused = |elf: &[u8], what: &str| {
            let e = flatten_kernel(p, elf).unwrap_err();
            assert!(matches!(&e, NixError::BadGrubInput { path, .. } if path == p), "{e}");
            assert!(e.to_string().contains(what), "{e} lacks {what:?}");
        };
        let with = |at: usize, bytes: &[u8]| {
            let mut k = good.clone();
            k[at..at + bytes.len()].copy_from_slice(bytes);
            k
        };
        refused(b"not an elf", "not a 32-bit");
        refused(&with(4, &[2]), "not a 32-bit"); // ELFCLASS64
        refused(&with(5, &[2]), "not a 32-bit"); // big-endian
        refused(&with(0x10, &[1]), "ET_EXEC"); // ET_REL (an EFI kernel.img)
        refused(&with(0x12, &[62]), "EM_386"); // x86-64
        refused(&good[..0x30], "truncated ELF header");
        refused(&with(0x2E, &[20, 0]), "section header size 20");
        refused(&with(0x20, &0xFFFF_FF00u32.to_le_bytes()), "beyond the end of the file");
        refused(&with(shdr_field(&good, 1, 12), &0x8000u32.to_le_bytes()), "instead of 0x9000");
        refused(&with(shdr_field(&good, 1, 8), &2u32.to_le_bytes()), "no executable section");
        refused(&with(shdr_field(&good, 1, 16), &0x10_0000u32.to_le_bytes()), "beyond the end of the file");
        refused(&with(shdr_field(&good, 2, 12), &0x8000u32.to_le_bytes()), "below the link address");
        refused(&with(shdr_field(&good, 3, 20), &0x6_0000u32.to_le_bytes()), "kernel image is too big");
        refused(&with(shdr_field(&good, 2, 20), &0xFFFF_FFF0u32.to_le_bytes()), "kernel image is too big");
        assert!(flatten_kernel(p, &good).is_ok());
    }

    #[test]
    fn decompressors_and_diskboots_not_shaped_like_grubs_are_refused() {
        let p = Path::new("x.img");
        let good = vec![0u8; 300];
        assert!(patch_decompressor(p, good.clone(), 10, 20).is_ok());
        let e = patch_decompressor(p, vec![0; DECOMPRESSOR_MAX + 1], 10, 20).unwrap_err().to_string();
        assert!(e.contains("3585 bytes, over"), "{e}");
        let e = patch_decompressor(p, vec![0; 0x15], 10, 20).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
        let mut ff = good.clone();
        ff[0x14..0x16].fill(0xFF);
        let e = patch_decompressor(p, ff, 10, 20).unwrap_err().to_string();
        assert!(e.contains("no_rs_length is 0xFFFF"), "{e}");
        let d = patch_decompressor(p, good, 0x1234_5678, 0x9ABC).unwrap();
        assert_eq!(&d[8..16], &[0x78, 0x56, 0x34, 0x12, 0xBC, 0x9A, 0, 0]);

        let mut db = vec![0u8; 512];
        db[0x1FE..].copy_from_slice(&0x820u16.to_le_bytes());
        assert_eq!(&patch_diskboot(p, db.clone(), 53).unwrap()[0x1FC..], &[53, 0, 0x20, 0x08]);
        let e = patch_diskboot(p, db[..511].to_vec(), 1).unwrap_err().to_string();
        assert!(e.contains("511 bytes, expected one sector"), "{e}");
        db[0x1FE] = 0;
        let e = patch_diskboot(p, db, 1).unwrap_err().to_string();
        assert!(e.contains("segment 0x800"), "{e}");
    }

    #[test]
    fn core_img_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let pc = fake_grub_lib(tmp.path()).join("i386-pc");
        let e = i386_pc_core_img(&pc, &["nosuch"], "/grub", None).unwrap_err();
        assert!(matches!(&e, NixError::UnknownGrubModule { moddep, .. } if *moddep == pc.join("moddep.lst")), "{e}");
        assert!(matches!(i386_pc_core_img(&pc, &["biosdisk"], "a\0", None), Err(NixError::BadGrubImage(_))));
        std::fs::remove_file(pc.join("fshelp.mod")).unwrap();
        let e = i386_pc_core_img(&pc, &["ext2"], "/grub", None).unwrap_err();
        assert!(matches!(&e, NixError::BadGrubInput { path, .. } if *path == pc.join("fshelp.mod")), "{e}");
        // An incompressible module over GRUB's load area.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..CORE_MAX)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        std::fs::write(pc.join("zstd.mod"), noise).unwrap();
        let e = i386_pc_core_img(&pc, &["zstd"], "/grub", None).unwrap_err();
        assert!(matches!(e, NixError::CoreTooLarge { available: 888, core_sectors, .. } if core_sectors > 888), "{e}");
        std::fs::write(pc.join("lzma_decompress.img"), [0u8; 0x10]).unwrap();
        let e = i386_pc_core_img(&pc, &["biosdisk"], "/grub", None).unwrap_err();
        assert!(matches!(&e, NixError::BadGrubInput { path, .. } if *path == pc.join("lzma_decompress.img")), "{e}");
        std::fs::write(pc.join("moddep.lst"), [0xFF]).unwrap();
        let e = i386_pc_core_img(&pc, &["biosdisk"], "/grub", None).unwrap_err().to_string();
        assert!(e.contains("moddep.lst") && e.contains("UTF-8"), "{e}");
        let e = i386_pc_core_img(&tmp.path().join("none"), &["biosdisk"], "/grub", None).unwrap_err();
        assert!(matches!(&e, NixError::Io { path, .. } if path.ends_with("none/moddep.lst")), "{e}");
    }

    #[test]
    fn grub_mkimage_is_found_beside_the_library() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("usr/lib/grub");
        std::fs::create_dir_all(&lib).unwrap();
        assert_eq!(find_grub_mkimage(&lib), None);
        std::fs::create_dir_all(tmp.path().join("usr/bin/grub-mkimage")).unwrap();
        assert_eq!(find_grub_mkimage(&lib), None, "a directory is not the program");
        std::fs::remove_dir(tmp.path().join("usr/bin/grub-mkimage")).unwrap();
        std::fs::write(tmp.path().join("usr/bin/grub-mkimage"), "").unwrap();
        assert_eq!(find_grub_mkimage(&lib), Some(tmp.path().join("usr/bin/grub-mkimage")));
        assert_eq!(find_grub_mkimage(Path::new("/")), None);
    }

    /// A stand-in grub-mkimage (a shell script) that records its arguments and the config.
    fn fake_mkimage(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join("grub-mkimage");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn efi_image_runs_grub_mkimage_with_grubs_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let ok = fake_mkimage(
            tmp.path(),
            &format!(
                "log={}\nfor a; do echo \"$a\" >> $log; done\n\
                 while [ $# -gt 0 ]; do case $1 in -c) cat \"$2\" >> $log; shift;; -o) printf 'MZ-pe' > \"$2\"; shift;; esac; shift; done",
                log.display()
            ),
        );
        let img = efi_image(
            &ok,
            Path::new("/g/x86_64-efi"),
            "x86_64-efi",
            &["part_gpt", "fat"],
            "(,gpt1)/grub",
            Some("cfg\n"),
        )
        .unwrap();
        assert_eq!(img, b"MZ-pe");
        let args = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = args.lines().collect();
        assert_eq!(&lines[..6], &["-O", "x86_64-efi", "-d", "/g/x86_64-efi", "-p", "(,gpt1)/grub"]);
        assert_eq!(lines[6], "-c");
        assert!(lines[7].ends_with("/load.cfg"));
        assert_eq!(lines[8], "-o");
        assert_eq!(&lines[10..], &["part_gpt", "fat", "cfg"]);

        let failing = fake_mkimage(
            tmp.path(),
            "echo 'grub-mkimage: error: cannot open `x.mod'\"'\"': No such file' >&2\necho more >&2\nexit 1",
        );
        let e = efi_image(&failing, Path::new("/g"), "x86_64-efi", &["x"], "/grub", None).unwrap_err();
        let NixError::GrubMkimage { program, message } = &e else { panic!("{e}") };
        assert_eq!(program, &failing);
        assert!(message.contains("exit status: 1") && message.ends_with("No such file more"), "{message}");
        assert!(!e.to_string().contains('\n'), "{e}");

        let not_pe =
            fake_mkimage(tmp.path(), "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo ELF > \"$2\"; shift; done");
        let e = efi_image(&not_pe, Path::new("/g"), "x86_64-efi", &[], "/grub", None).unwrap_err().to_string();
        assert!(e.contains("not a PE image"), "{e}");
        let e = efi_image(&tmp.path().join("none"), Path::new("/g"), "x86_64-efi", &[], "/grub", None).unwrap_err();
        assert!(matches!(e, NixError::Io { .. }), "{e}");
    }
}
