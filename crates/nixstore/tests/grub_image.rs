//! GRUB's images as mkdisk makes them, against GRUB's own `grub-mkimage` (Debian's, from the
//! boot harness's parts) as the oracle: a native core.img has grub-mkimage's diskboot sector
//! and decompressor (but for the two sizes) and decompresses to the same image byte for byte
//! (the LZMA encoders differ, grub-images.md §3.3); the EFI image is grub-mkimage's, made the
//! same twice.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use mkdisk_nixstore::{efi_image, find_grub_mkimage, i386_pc_core_img, load_cfg, resolve_modules};
use mkdisk_testkit::grub::fake_grub_lib;
use mkdisk_testkit::harness::boot_parts;
use mkdisk_testkit::{assert_ok, skip_or_fail};

/// The decompressed image behind diskboot + the decompressor of `core` (sizes at 0x208/0x20C).
fn flat(core: &[u8], decompressor_len: usize) -> Vec<u8> {
    let u32_at = |at: usize| u32::from_le_bytes(core[at..at + 4].try_into().unwrap());
    let (csize, usize_) = (u32_at(0x208) as usize, u32_at(0x20c));
    let start = 512 + decompressor_len;
    assert_eq!(core.len(), start + csize, "payload length");
    let mut r = lzma_rust2::LzmaReader::new(&core[start..], u64::from(usize_), 3, 0, 2, 1 << 16, None).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), usize_ as usize);
    out
}

/// The synthetic GRUB of the test kit: the structure of core.img.
#[test]
fn core_img_from_a_synthetic_grub() {
    let tmp = tempfile::tempdir().unwrap();
    let pc = fake_grub_lib(tmp.path()).join("i386-pc");
    let cfg = load_cfg("1234-ABCD", "/grub");
    let core = i386_pc_core_img(&pc, &["biosdisk", "part_gpt", "btrfs"], "(,gpt2)/grub", Some(&cfg)).unwrap();
    assert_eq!(core, i386_pc_core_img(&pc, &["biosdisk", "part_gpt", "btrfs"], "(,gpt2)/grub", Some(&cfg)).unwrap());
    let diskboot = std::fs::read(pc.join("diskboot.img")).unwrap();
    assert_eq!(&core[..0x1fc], &diskboot[..0x1fc]);
    let decomp = std::fs::read(pc.join("lzma_decompress.img")).unwrap();
    let body = core.len() - 512;
    assert_eq!(u16::from_le_bytes([core[0x1fc], core[0x1fd]]) as usize, body.div_ceil(512));
    let f = flat(&core, decomp.len());
    // The flat kernel (700 bytes of code, data at 700), then "mimg", 12, total size.
    let info = f.windows(4).position(|w| w == b"mimg").unwrap();
    assert_eq!(info, 700 + b"GRUB kernel data".len());
    let total = u32::from_le_bytes(f[info + 8..info + 12].try_into().unwrap()) as usize;
    assert_eq!(info + total, f.len());
    // Modules in dependency order (zstd before btrfs), then the config, then the prefix.
    let text = String::from_utf8_lossy(&f[info..]);
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} not in the module area"));
    assert!(at("module biosdisk") < at("module part_gpt"));
    assert!(at("module zstd") < at("module btrfs"));
    assert!(at("module btrfs") < at("search.fs_uuid 1234-ABCD root") && at("search.fs_uuid") < at("(,gpt2)/grub"));
    // Bad inputs are named.
    let e = i386_pc_core_img(&pc, &["nosuch"], "/grub", None).unwrap_err().to_string();
    assert!(e.contains("\"nosuch\"") && e.contains("moddep.lst"), "{e}");
    std::fs::write(pc.join("kernel.img"), b"\x7fELF\x02\x01").unwrap();
    let e = i386_pc_core_img(&pc, &["biosdisk"], "/grub", None).unwrap_err().to_string();
    assert!(e.contains("kernel.img") && e.contains("not a 32-bit"), "{e}");
}

/// Debian's grub-mkimage, its `usr/lib/grub` and the environment it runs in.
type DebianGrub = (PathBuf, PathBuf, Vec<(String, String)>);

/// Debian's GRUB from the harness, or a skip (a failure under `CI=true`).
fn debian_grub() -> Option<DebianGrub> {
    match boot_parts() {
        Ok((p, _)) => {
            let env = p["grub_env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into()));
            Some((p["grub_mkimage"].as_str().unwrap().into(), p["grub_lib"].as_str().unwrap().into(), env.collect()))
        }
        Err(why) => {
            skip_or_fail("GRUB image oracle test", &why);
            None
        }
    }
}

fn grub_mkimage(
    mkimage: &Path,
    env: &[(String, String)],
    pc: &Path,
    prefix: &str,
    cfg: Option<&str>,
    mods: &[&str],
) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("core.img");
    let mut c = Command::new(mkimage);
    c.envs(env.iter().cloned()).args(["-O", "i386-pc", "-d"]).arg(pc).args(["-p", prefix, "-o"]).arg(&out);
    if let Some(cfg) = cfg {
        std::fs::write(tmp.path().join("load.cfg"), cfg).unwrap();
        c.arg("-c").arg(tmp.path().join("load.cfg"));
    }
    assert_ok("grub-mkimage", &c.args(mods).output().unwrap());
    std::fs::read(out).unwrap()
}

#[test]
fn core_img_decompresses_to_grub_mkimages() {
    let Some((mkimage, lib, env)) = debian_grub() else { return };
    let pc = lib.join("i386-pc");
    let decomp = std::fs::metadata(pc.join("lzma_decompress.img")).unwrap().len() as usize;
    let cfg = load_cfg("0123456789abcdef", "/@root/boot/grub");
    let cases: [(&[&str], &str, Option<&str>); 3] = [
        (&["biosdisk", "part_gpt", "fat"], "(,gpt2)/grub", None),
        (&["biosdisk", "part_gpt", "ext2", "search_fs_uuid"], "(,gpt3)/boot/grub", Some(&cfg)),
        (&["biosdisk", "part_gpt", "btrfs", "search_fs_uuid"], "(,gpt3)/@root/boot/grub", Some(&cfg)),
    ];
    // resolve.c's order on Debian's own moddep.lst (grub-images.md §2.4).
    let moddep = std::fs::read_to_string(pc.join("moddep.lst")).unwrap();
    let order = resolve_modules(&moddep, &["biosdisk", "part_gpt", "btrfs", "search_fs_uuid"]).unwrap().join(" ");
    assert_eq!(order, "biosdisk part_gpt zstd diskfilter raid6rec crypto lzopio gcry_crc gzio btrfs search_fs_uuid");
    for (mods, prefix, cfg) in cases {
        let ours = i386_pc_core_img(&pc, mods, prefix, cfg).unwrap();
        let theirs = grub_mkimage(&mkimage, &env, &pc, prefix, cfg, mods);
        // diskboot: all but the sector count, which follows each image's own length.
        assert_eq!(&ours[..0x1fc], &theirs[..0x1fc], "{mods:?}: diskboot");
        assert_eq!(&ours[0x1fe..0x200], &theirs[0x1fe..0x200], "{mods:?}: diskboot segment");
        for core in [&ours, &theirs] {
            let sectors = usize::from(u16::from_le_bytes([core[0x1fc], core[0x1fd]]));
            assert_eq!(sectors, (core.len() - 512).div_ceil(512), "{mods:?}: diskboot sector count");
        }
        assert_eq!(&ours[0x200..0x208], &theirs[0x200..0x208], "{mods:?}: decompressor");
        assert_eq!(&ours[0x210..512 + decomp], &theirs[0x210..512 + decomp], "{mods:?}: decompressor");
        assert_eq!(&ours[0x20c..0x210], &theirs[0x20c..0x210], "{mods:?}: uncompressed size");
        assert!(flat(&ours, decomp) == flat(&theirs, decomp), "{mods:?}: flat images differ");
        assert_eq!(ours, i386_pc_core_img(&pc, mods, prefix, cfg).unwrap(), "{mods:?}: not deterministic");
        eprintln!("{mods:?}: ours {} bytes, grub-mkimage {} bytes", ours.len(), theirs.len());
    }
}

#[test]
fn efi_image_is_the_packages_grub_mkimages() {
    let Some((_, lib, env)) = debian_grub() else { return };
    let mkimage = find_grub_mkimage(&lib).expect("grub-mkimage beside usr/lib/grub");
    // The harness's grub-mkimage needs its unpacked libraries: a wrapper sets them.
    let tmp = tempfile::tempdir().unwrap();
    let wrapper = tmp.path().join("grub-mkimage");
    let vars: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec env {vars}'{}' \"$@\"\n", mkimage.display())).unwrap();
    assert_ok("chmod", &Command::new("chmod").arg("755").arg(&wrapper).output().unwrap());
    let dir = lib.join("x86_64-efi");
    let cfg = load_cfg("ABCD-1234", "/grub");
    let mods = ["part_gpt", "fat", "search_fs_uuid"];
    let a = efi_image(&wrapper, &dir, "x86_64-efi", &mods, "(,gpt2)/grub", Some(&cfg)).unwrap();
    let b = efi_image(&wrapper, &dir, "x86_64-efi", &mods, "(,gpt2)/grub", Some(&cfg)).unwrap();
    assert_eq!(a, b, "not deterministic");
    assert_eq!(&a[..2], b"MZ");
    let pe = u32::from_le_bytes(a[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&a[pe..pe + 6], b"PE\0\0\x64\x86", "PE machine x86-64");
    let e = efi_image(&wrapper, &dir, "x86_64-efi", &["nosuch"], "/grub", None).unwrap_err().to_string();
    assert!(e.contains("grub-mkimage failed"), "{e}");
}
