//! Proof by an arm64 kernel (issue 16): an image written by `mkdisk build` boots under QEMU's
//! `-M virt -cpu max` (TCG, no root, no KVM) through AAVMF (edk2 for arm64) → our FAT32 ESP →
//! systemd-boot for arm64 (`EFI/BOOT/BOOTAA64.EFI`, staged in the source tree) → Debian's arm64
//! kernel (an EFI-stub `Image`) + the arm64 test initramfs, whose `/init` mounts the ext4 root,
//! the btrfs subvolume `/nix` (written with `compress-force=zstd`) and the ESP read-only and
//! lists every entry; the listing must equal the source tree split by the layout's mount points.
//!
//! The arm64 parts (kernel, busybox-static, systemd-boot-efi, qemu-efi-aarch64, and
//! qemu-system-arm where no `qemu-system-aarch64` is on `PATH`) come from Debian through
//! `tests/boot/harness.py --arch aarch64` (a private apt state under `target/boot-cache`). Where
//! they cannot be had the tests print `SKIPPED` loudly and return; with `CI=true` they fail.
//!
//! - `aavmf_boots_systemd_boot_aa64_from_our_esp`: the boot and the full comparison.
//! - `threads_1_and_2_give_identical_images`: the same layout and tree built with `--threads 1`
//!   and `--threads 2` are bit-identical.
//! - `aavmf_boots_the_systemd_boot_aa64_mkdisk_installed`: `mkdisk build --arch aarch64
//!   --system` with a fake aarch64 NixOS toplevel (bootspec `system = aarch64-linux`, the arm64
//!   kernel and initramfs): mkdisk installs systemd-boot (`BOOTAA64.EFI`), the loader entry and
//!   the kernel/initrd copies itself; AAVMF boots them and the guest reads every partition.
//! - `aavmf_boots_the_grub_efi_aa64_mkdisk_installed`: the same with `--grub LIB --grub-efi`
//!   (Debian's arm64 `grub-efi-arm64-bin` with the host's `grub-mkimage`, from the harness):
//!   mkdisk writes GRUB for arm64 EFI (`BOOTAA64.EFI`, a PE for machine 0xAA64), grub.cfg and
//!   the kernel copies on the ESP; AAVMF → GRUB → the kernel's EFI stub, and the guest reads
//!   every partition with the bootspec's command line.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use mkdisk_testkit::noise;

mod common;
mod guest;

use common::{build_args, mkdisk, plan_numbers, sha256_file};
use guest::{
    boot_aarch64_or_skip, chmod, compare_tree, init_line, kernel_args_aarch64, parts_aarch64, report, tail, write,
    Mount, Parts,
};

const BOOTAA64: &str = "EFI/BOOT/BOOTAA64.EFI";
const LINUX: &str = "EFI/test/linux.efi";
const INITRD: &str = "EFI/test/initrd.efi";

// ---------------------------------------------------------------------------------------------
// The source tree

/// Edge cases every filesystem here holds (FAT too): empty and cluster-boundary sizes, a long
/// and a non-ASCII name, deep nesting, a multi-MiB file.
fn portable_edges(d: &Path) {
    write(&d.join("empty"), b"");
    for (seed, n) in [1usize, 511, 512, 513, 4095, 4096, 4097, 65537].into_iter().enumerate() {
        write(&d.join(format!("size-{n}")), &noise(n, u64::try_from(seed).unwrap() + 1));
    }
    write(&d.join("big.bin"), &noise(3 << 20, 99));
    write(&d.join("L".repeat(250) + ".long"), b"255-character name\n");
    write(&d.join("names").join("Grüße ñ 日本語.txt"), "non-ASCII name\n".as_bytes());
    write(&d.join("names").join("with  spaces and.dots.in.it"), b"spaces\n");
    let mut deep = d.join("deep");
    for i in 0..12 {
        deep = deep.join(format!("level{i}"));
    }
    write(&deep.join("bottom.txt"), b"bottom\n");
    fs::create_dir_all(d.join("empty-dir")).unwrap();
}

/// Edge cases for ext4 and btrfs on top of the portable ones: symlinks (fast, 60 bytes, slow,
/// dangling), hard links across directories, a sparse file, a 1500-entry directory, special
/// modes, compressible data.
fn posix_edges(d: &Path) {
    portable_edges(d);
    symlink("empty", d.join("link-fast")).unwrap();
    symlink("y".repeat(60), d.join("link-60")).unwrap();
    symlink("z/".repeat(500), d.join("link-slow")).unwrap();
    symlink("/nix/store/does-not-exist", d.join("link-dangling")).unwrap();
    write(&d.join("hard/a"), b"three names, one inode\n");
    fs::create_dir_all(d.join("hard/sub")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/b")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/sub/c")).unwrap();
    {
        let f = fs::File::create(d.join("sparse")).unwrap();
        f.set_len(24 << 20).unwrap();
        f.write_all_at(&noise(4096, 11), 0).unwrap();
        f.write_all_at(&noise(4096, 12), 10 << 20).unwrap();
        f.write_all_at(&noise(4096, 13), (24 << 20) - 4096).unwrap();
    }
    for i in 0..1500 {
        write(&d.join("many").join(format!("entry-{i:05}-{}", "p".repeat(i % 40))), format!("{i}\n").as_bytes());
    }
    write(&d.join("modes/suid"), b"#!/bin/sh\n");
    chmod(&d.join("modes/suid"), 0o4755);
    write(&d.join("modes/readonly"), b"r\n");
    chmod(&d.join("modes/readonly"), 0o400);
    fs::create_dir_all(d.join("modes/sticky")).unwrap();
    chmod(&d.join("modes/sticky"), 0o1777);
    let text: Vec<u8> = (0..(2u32 << 20)).map(|i| b"abcdefgh\n"[usize::try_from(i % 9).unwrap()]).collect();
    write(&d.join("compressible.txt"), &text);
}

// ---------------------------------------------------------------------------------------------
// The image

struct Fixture {
    parts: &'static Parts,
    /// `CARGO_TARGET_TMPDIR/boot-aarch64`: the source, the images, the boot's logs.
    dir: PathBuf,
    src: PathBuf,
    spec: PathBuf,
    /// Built with `--threads 2`.
    image: PathBuf,
    mounts: Vec<Mount>,
}

/// `mkdisk build SPEC --root SRC --threads N` into `dir/out-tN`; the image's path.
fn build_image(fx_dir: &Path, spec: &Path, src: &Path, threads: &str) -> PathBuf {
    let out = fx_dir.join(format!("out-t{threads}"));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let t0 = Instant::now();
    let o = mkdisk(&[&build_args(spec, &out)[..], &["--root", src.to_str().unwrap(), "--threads", threads]].concat());
    assert!(o.status.success(), "mkdisk build --threads {threads}: {}", String::from_utf8_lossy(&o.stderr));
    eprintln!("boot: mkdisk build --threads {threads} took {:.1}s", t0.elapsed().as_secs_f64());
    out.join("main.raw")
}

fn build_fixture(parts: &'static Parts) -> Fixture {
    let dir = guest::fresh_dir("boot-aarch64");
    let src = dir.join("src");

    // Root (ext4) and /nix (btrfs): a store corpus under nix/store, edge cases on both.
    let t0 = Instant::now();
    guest::store_corpus(&src, 16);
    eprintln!("boot: store corpus in {:.1}s", t0.elapsed().as_secs_f64());
    posix_edges(&src.join("edge"));
    posix_edges(&src.join("nix/var/edge"));
    write(&src.join("etc/hostname"), b"mkdisk-aarch64\n");
    write(&src.join("etc/os-release"), b"ID=nixos\n");

    // ESP (vfat at /boot): systemd-boot for arm64 at the removable-media path AAVMF finds
    // without boot entries, the arm64 kernel (an EFI-stub Image) and initramfs, the loader
    // configuration, edge cases.
    let boot = src.join("boot");
    write(&boot.join(BOOTAA64), &fs::read(parts.path("systemd_boot_aa64")).unwrap());
    write(&boot.join(LINUX), &fs::read(parts.path("kernel")).unwrap());
    write(&boot.join(INITRD), &fs::read(&parts.initrd).unwrap());
    write(&boot.join("loader/loader.conf"), b"timeout 0\ndefault test.conf\n");
    portable_edges(&boot.join("edge"));

    let spec = serde_json::json!({"disk": {"main": {"imageSize": "1G", "content": {"type": "gpt", "partitions": {
        "ESP": {"size": "128M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "192M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "nix": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress-force=zstd", "noatime"]}}}}}}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();

    let number = plan_numbers(&spec_path);
    let mount = |id: &str, part: &str, fs: &str, opts: &str, mp: &str| {
        Mount::new(id, format!("vda{}", number(part)), fs, opts, mp)
    };
    let mounts = vec![
        mount("esp", "ESP", "vfat", "ro", "/boot"),
        mount("root", "root", "ext4", "ro", "/"),
        mount("nix", "nix", "btrfs", "ro,subvol=/nix", "/nix"),
    ];
    // The loader entry names the mounts: the guest's /init reads them off its command line.
    let entry = format!(
        "title mkdisk aarch64 boot test\nlinux /{LINUX}\ninitrd /{INITRD}\noptions {}\n",
        kernel_args_aarch64(&mounts)
    );
    write(&boot.join("loader/entries/test.conf"), entry.as_bytes());

    let image = build_image(&dir, &spec_path, &src, "2");
    Fixture { parts, dir, src, spec: spec_path, image, mounts }
}

/// The fixture, built once per run of this binary; `None` (after a loud skip) where the
/// aarch64 parts cannot be had.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Fixture> = OnceLock::new();
    let parts = parts_aarch64()?;
    Some(F.get_or_init(|| build_fixture(parts)))
}

/// The first byte offset where the files `a` and `b` differ, or `None` where they are equal
/// (a size difference counts at the shorter length).
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut pos = 0u64;
    while pos < la.min(lb) {
        let n = usize::try_from((la.min(lb) - pos).min(4 << 20)).unwrap();
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(pos + u64::try_from(i).unwrap());
        }
        pos += u64::try_from(n).unwrap();
    }
    (la != lb).then_some(pos)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn aavmf_boots_systemd_boot_aa64_from_our_esp() {
    let Some(fx) = fixture() else { return };
    let Some(b) = boot_aarch64_or_skip(fx.parts, &fx.dir, &[&fx.image], &fx.mounts, "uefi", "aavmf") else {
        return;
    };
    // The guest's /init ran from the initramfs systemd-boot loaded off our ESP, with the entry's
    // options: systemd-boot adds `initrd=` with the ESP path in backslashes.
    let init_line = init_line(&b, "AAVMF");
    assert!(
        init_line.contains(&format!("initrd=\\{}", INITRD.replace('/', "\\"))),
        "not started by systemd-boot from the ESP: {init_line}"
    );
    assert!(init_line.contains("console=ttyAMA0"), "not the aarch64 entry: {init_line}");
    assert!(
        b.console.contains("EFI stub: Booting Linux Kernel"),
        "the kernel's EFI stub did not run:\n{}",
        tail(&b.console)
    );
    let problems = compare_tree(&fx.src, &fx.mounts, &b, &fx.mounts, &[], None);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report("AAVMF boot", &problems), tail(&b.console));
    let entries: usize = fx.mounts.iter().map(|m| b.mounts[&m.id].1.len()).sum();
    let store = b.mounts["nix"].1.keys().filter(|p| p.starts_with("./store/")).count();
    assert!(entries > 3000 && store > 100, "only {entries} entries listed ({store} in /nix/store)");
    eprintln!(
        "boot: the arm64 kernel read {entries} entries ({store} below /nix/store) in {} mounts, all equal to the source",
        fx.mounts.len()
    );
}

#[test]
fn threads_1_and_2_give_identical_images() {
    let Some(fx) = fixture() else { return };
    let one = build_image(&fx.dir, &fx.spec, &fx.src, "1");
    let diff = first_difference(&one, &fx.image);
    let _ = fs::remove_dir_all(one.parent().unwrap());
    assert_eq!(diff, None, "--threads 1 and --threads 2 images differ at byte {diff:?}");
}

/// What `--system` adds beyond the source tree: boot loaders and kernels on the ESP, the
/// profiles below /nix (the btrfs subvolume), `/etc/NIXOS`.
const NIXOS_ADDED: &[(&str, &str)] =
    &[("esp", "./EFI"), ("esp", "./loader"), ("root", "./etc/NIXOS"), ("nix", "./var/nix")];

/// An image where mkdisk installs systemd-boot for aarch64 itself (`--arch aarch64 --system
/// --systemd-boot systemd-bootaa64.efi`), from a fake NixOS toplevel whose bootspec boots the
/// arm64 kernel and initramfs with the listing's mounts.
#[test]
fn aavmf_boots_the_systemd_boot_aa64_mkdisk_installed() {
    let Some(p) = parts_aarch64() else { return };
    let dir = guest::fresh_dir("boot-aarch64-nixos");
    let src = dir.join("src");
    write(&src.join("etc/hostname"), b"aarch64-nixos\n");
    write(&src.join("srv/hello.txt"), b"hello from the aarch64 NixOS-shaped image\n");
    symlink("hello.txt", src.join("srv/hello-link")).unwrap();
    write(&src.join("nix/var/notes/readme.txt"), b"in the btrfs /nix subvolume\n");
    write(&src.join("boot/notes/readme.txt"), b"ESP content next to the boot loaders\n");

    let spec = serde_json::json!({"disk": {"main": {"imageSize": "512M", "content": {"type": "gpt", "partitions": {
        "ESP": {"size": "160M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "64M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "nix": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress-force=zstd"]}}}}}}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let number = plan_numbers(&spec_path);
    let mount = |id: &str, part: &str, fs: &str, opts: &str, mp: &str| {
        Mount::new(id, format!("vda{}", number(part)), fs, opts, mp)
    };
    let mounts = vec![
        mount("esp", "ESP", "vfat", "ro", "/boot"),
        mount("root", "root", "ext4", "ro", "/"),
        mount("nix", "nix", "btrfs", "ro,subvol=/nix", "/nix"),
    ];

    // The fake system's store paths: the arm64 kernel (`Image`), the initramfs, the toplevel.
    let store = dir.join("store/nix/store");
    let host = |sp: &str| store.join(sp.trim_start_matches("/nix/store/"));
    let kernel = "/nix/store/a0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1";
    let initrd = "/nix/store/azk2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1";
    let toplevel = "/nix/store/aab2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-aarch64test-24.05";
    write(&host(kernel).join("Image"), &fs::read(p.path("kernel")).unwrap());
    write(&host(initrd).join("initrd"), &fs::read(&p.initrd).unwrap());
    let bootspec = serde_json::json!({"org.nixos.bootspec.v1": {
        "init": format!("{toplevel}/init"),
        "initrd": format!("{initrd}/initrd"),
        "kernel": format!("{kernel}/Image"),
        "kernelParams": kernel_args_aarch64(&mounts).split(' ').collect::<Vec<_>>(),
        "label": "NixOS 24.05 (Linux 6.1, mkdisk aarch64 boot test)",
        "system": "aarch64-linux",
        "toplevel": toplevel,
    }});
    write(&host(toplevel).join("boot.json"), bootspec.to_string().as_bytes());
    write(&host(toplevel).join("init"), b"#!/bin/sh\n");

    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let sd_boot = p.path("systemd_boot_aa64");
    let args = ["--root", src.to_str().unwrap(), "--arch", "aarch64", "--system", toplevel, "--store-dir"];
    let args2 = [store.to_str().unwrap(), "--systemd-boot", sd_boot, "--boot-timeout", "0"];
    let o = mkdisk(&[&build_args(&spec_path, &out)[..], &args, &args2].concat());
    assert!(o.status.success(), "mkdisk build --arch aarch64 --system: {}", String::from_utf8_lossy(&o.stderr));
    let image = out.join("main.raw");

    let Some(b) = boot_aarch64_or_skip(p, &dir, &[&image], &mounts, "uefi", "aavmf-nixos") else { return };
    let init_line = init_line(&b, "AAVMF");
    assert!(init_line.contains("initrd=\\EFI\\nixos\\"), "not started by the installed systemd-boot: {init_line}");
    let problems = compare_tree(&src, &mounts, &b, &mounts, NIXOS_ADDED, None);
    assert!(
        problems.is_empty(),
        "{}\nconsole tail:\n{}",
        report("AAVMF → installed systemd-boot", &problems),
        tail(&b.console)
    );
    let esp = &b.mounts["esp"].1;
    let sha =
        |path: &str| esp.get(path).and_then(|e| e.sha256.clone()).unwrap_or_else(|| panic!("no {path} on the ESP"));
    for efi in ["./EFI/BOOT/BOOTAA64.EFI", "./EFI/systemd/systemd-bootaa64.efi"] {
        assert_eq!(sha(efi), sha256_file(Path::new(sd_boot)), "{efi}");
    }
    assert!(esp.contains_key("./loader/entries/nixos-generation-1.conf"), "no loader entry: {:?}", esp.keys());
    let profile = b.mounts["nix"].1.get("./var/nix/profiles/system-1-link").and_then(|e| e.target.clone());
    assert_eq!(profile.as_deref(), Some(toplevel), "the system profile in the btrfs /nix");
    let kernels: Vec<&String> =
        esp.keys().filter(|k| k.starts_with("./EFI/nixos/") && k.contains("linux-6.1-Image")).collect();
    assert!(!kernels.is_empty(), "no kernel copy in EFI/nixos: {:?}", esp.keys().collect::<Vec<_>>());
    for k in kernels {
        assert_eq!(sha(k), p.sha256("kernel"), "kernel copy {k}");
    }
}

/// The PE machine of an EFI image (`None`: no `MZ`/`PE\0\0` header), read here from the
/// headers rather than through mkdisk's own code.
fn pe_machine(image: &[u8]) -> Option<u16> {
    if !image.starts_with(b"MZ") {
        return None;
    }
    let pe = usize::try_from(u32::from_le_bytes(image.get(0x3C..0x40)?.try_into().ok()?)).ok()?;
    let head = image.get(pe..pe + 6)?;
    (head[..4] == *b"PE\0\0").then(|| u16::from_le_bytes([head[4], head[5]]))
}

/// The file `path` of the FAT filesystem of partition `part` of `image` (laid out by `spec`),
/// read on the host with mtools' `mcopy`.
fn fat_file(image: &Path, spec: &Path, part: &str, path: &str) -> Vec<u8> {
    let o = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "mkdisk plan: {}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = plan["disks"][0]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == part).unwrap();
    let offset = p["start"].as_u64().unwrap() * 512;
    let out = Command::new("mcopy")
        .args(["-n", "-i", &format!("{}@@{offset}", image.display()), &format!("::{path}"), "-"])
        .output()
        .unwrap_or_else(|e| panic!("mcopy (mtools) to read {path} off the ESP: {e}"));
    assert!(out.status.success(), "mcopy ::{path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// What `--system --grub --grub-efi` adds beyond the source tree: GRUB for EFI on the ESP's
/// removable path, `/boot/grub` (grub.cfg, arm64-efi modules) and the kernel copies on the
/// ESP, the profiles below /nix (the btrfs subvolume), `/etc/NIXOS`.
const GRUB_ADDED: &[(&str, &str)] =
    &[("esp", "./EFI"), ("esp", "./grub"), ("esp", "./kernels"), ("root", "./etc/NIXOS"), ("nix", "./var/nix")];

/// An image where mkdisk installs GRUB for EFI on arm64 (`--arch aarch64 --system --grub LIB
/// --grub-efi`: `EFI/BOOT/BOOTAA64.EFI` made by LIB's grub-mkimage `-O arm64-efi`, grub.cfg and
/// the arm64-efi modules in `/boot/grub` on the ESP, the kernel and initrd copied to
/// `/boot/kernels`), from a fake aarch64 NixOS toplevel whose bootspec boots the arm64 kernel
/// and initramfs; AAVMF → GRUB → the kernel's EFI stub → the guest reads every partition.
#[test]
fn aavmf_boots_the_grub_efi_aa64_mkdisk_installed() {
    let Some(p) = parts_aarch64() else { return };
    let Some(grub) = p.json["grub_arm64_efi_lib"].as_str() else {
        let why = p.json["grub_arm64_efi_unavailable"].as_str().unwrap_or("not in the parts");
        return guest::skip(&format!("GRUB for arm64 EFI (harness.py: grub-efi-arm64-bin): {why}"));
    };
    let dir = guest::fresh_dir("boot-aarch64-grub");
    let src = dir.join("src");
    write(&src.join("etc/hostname"), b"aarch64-grub\n");
    write(&src.join("srv/hello.txt"), b"hello from the aarch64 GRUB image\n");
    symlink("hello.txt", src.join("srv/hello-link")).unwrap();
    write(&src.join("nix/var/notes/readme.txt"), b"in the btrfs /nix subvolume\n");
    write(&src.join("boot/notes/readme.txt"), b"ESP content next to GRUB\n");

    let spec = serde_json::json!({"disk": {"main": {"imageSize": "512M", "content": {"type": "gpt", "partitions": {
        "ESP": {"size": "160M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "64M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "nix": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress-force=zstd"]}}}}}}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let number = plan_numbers(&spec_path);
    let mount = |id: &str, part: &str, fs: &str, opts: &str, mp: &str| {
        Mount::new(id, format!("vda{}", number(part)), fs, opts, mp)
    };
    let mounts = vec![
        mount("esp", "ESP", "vfat", "ro", "/boot"),
        mount("root", "root", "ext4", "ro", "/"),
        mount("nix", "nix", "btrfs", "ro,subvol=/nix", "/nix"),
    ];

    // The fake system's store paths: the arm64 kernel (`Image`), the initramfs, the toplevel.
    let store = dir.join("store/nix/store");
    let host = |sp: &str| store.join(sp.trim_start_matches("/nix/store/"));
    let kernel = "/nix/store/g0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1";
    let initrd = "/nix/store/gzk2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1";
    let toplevel = "/nix/store/gab2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-aarch64grub-24.05";
    let params = kernel_args_aarch64(&mounts);
    write(&host(kernel).join("Image"), &fs::read(p.path("kernel")).unwrap());
    write(&host(initrd).join("initrd"), &fs::read(&p.initrd).unwrap());
    let bootspec = serde_json::json!({"org.nixos.bootspec.v1": {
        "init": format!("{toplevel}/init"),
        "initrd": format!("{initrd}/initrd"),
        "kernel": format!("{kernel}/Image"),
        "kernelParams": params.split(' ').collect::<Vec<_>>(),
        "label": "NixOS 24.05 (Linux 6.1, mkdisk aarch64 GRUB boot test)",
        "system": "aarch64-linux",
        "toplevel": toplevel,
    }});
    write(&host(toplevel).join("boot.json"), bootspec.to_string().as_bytes());
    write(&host(toplevel).join("init"), b"#!/bin/sh\n");

    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let args = ["--root", src.to_str().unwrap(), "--arch", "aarch64", "--system", toplevel, "--store-dir"];
    // --grub-serial on aarch64 is the firmware's serial device (`serial efi0`, terminal
    // `serial_efi0`), not the PC's COM port, which arm64-efi GRUB does not have: a COM port
    // here would print `error:` lines, which the check below refuses.
    let args2 = [store.to_str().unwrap(), "--grub", grub, "--grub-efi", "--grub-serial", "--boot-timeout", "0"];
    let t0 = Instant::now();
    let o = mkdisk(&[&build_args(&spec_path, &out)[..], &args, &args2].concat());
    assert!(o.status.success(), "mkdisk build --arch aarch64 --grub-efi: {}", String::from_utf8_lossy(&o.stderr));
    eprintln!("boot: mkdisk build (GRUB arm64-efi) took {:.1}s", t0.elapsed().as_secs_f64());
    let image = out.join("main.raw");

    // GRUB for EFI on the removable path is an arm64 PE image.
    let bootaa64 = fat_file(&image, &spec_path, "ESP", "/EFI/BOOT/BOOTAA64.EFI");
    assert_eq!(pe_machine(&bootaa64), Some(0xAA64), "EFI/BOOT/BOOTAA64.EFI is not an arm64 PE image");

    let Some(b) = boot_aarch64_or_skip(p, &dir, &[&image], &mounts, "uefi", "aavmf-grub") else { return };
    // GRUB started the kernel (BOOT_IMAGE= first, the copy in /boot/kernels on the ESP) with the
    // bootspec's command line.
    let init_line = init_line(&b, "AAVMF + GRUB");
    assert!(init_line.contains("BOOT_IMAGE=") && init_line.contains("/kernels/"), "not started by GRUB: {init_line}");
    let cmdline = format!("init={toplevel}/init {params}");
    assert!(init_line.contains(&cmdline), "not the bootspec's command line {cmdline:?}: {init_line}");
    // GRUB ran grub.cfg (its serial_efi0 terminal and the EFI console) without an error, up to
    // booting the entry. (With GRUB on serial_efi0 the EFI stub's own line does not reach the
    // console; the kernel's messages do.)
    let grub_out = b.console.split_once("Welcome to GRUB!").map(|(_, rest)| rest).unwrap_or_else(|| {
        panic!("no GRUB banner on the console:\n{}", tail(&b.console));
    });
    let grub_out = grub_out.split("Booting `NixOS - Default'").next().unwrap_or_default();
    assert!(b.console.contains("Booting `NixOS - Default'"), "GRUB booted no entry:\n{}", tail(&b.console));
    assert!(!grub_out.contains("error:"), "GRUB reported errors:\n{grub_out}");
    let problems = compare_tree(&src, &mounts, &b, &mounts, GRUB_ADDED, None);
    assert!(
        problems.is_empty(),
        "{}\nconsole tail:\n{}",
        report("AAVMF → installed GRUB", &problems),
        tail(&b.console)
    );
    let esp = &b.mounts["esp"].1;
    let sha =
        |path: &str| esp.get(path).and_then(|e| e.sha256.clone()).unwrap_or_else(|| panic!("no {path} on the ESP"));
    assert_eq!(sha("./EFI/BOOT/BOOTAA64.EFI"), common::sha256_hex(&bootaa64), "BOOTAA64.EFI as the guest read it");
    assert!(esp.contains_key("./grub/grub.cfg"), "no grub.cfg: {:?}", esp.keys());
    assert!(esp.contains_key("./grub/arm64-efi/linux.mod"), "no arm64-efi modules: {:?}", esp.keys());
    let kernels: Vec<&String> = esp.keys().filter(|k| k.starts_with("./kernels/") && k.ends_with("-Image")).collect();
    assert_eq!(kernels.len(), 1, "kernel copies in /boot/kernels: {:?}", esp.keys().collect::<Vec<_>>());
    assert_eq!(sha(kernels[0]), p.sha256("kernel"), "kernel copy {}", kernels[0]);
    let profile = b.mounts["nix"].1.get("./var/nix/profiles/system-1-link").and_then(|e| e.target.clone());
    assert_eq!(profile.as_deref(), Some(toplevel), "the system profile in the btrfs /nix");
}
