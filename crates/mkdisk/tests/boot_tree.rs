//! Proof by the kernel: boot Linux in QEMU (TCG, no root, no KVM) on an image written by
//! `mkdisk build`, mount every partition read-only, list every entry with its sha256, mode,
//! size and symlink target over a serial port, and compare with the source tree split by the
//! layout's mount points.
//!
//! The parts (QEMU, OVMF, systemd-boot, busybox, a Debian kernel) come from Debian packages,
//! fetched and cached by `tests/boot/harness.py` (see there); the guest side is `guest/`. Where
//! QEMU cannot be had the tests print `SKIPPED` loudly and return; with `CI=true` they fail
//! instead. The tests here share one fixture, built once per run of this binary: a store corpus
//! subset plus edge cases written into one image. (NixOS-shaped images: `boot_nixos.rs`.)
//!
//! - `kernel_reads_every_file`: direct kernel boot (`-kernel/-initrd`) on an image with a vfat
//!   ESP, an ext4 root (store corpus subset + edge cases), an ext4 /home and, once `mkdisk
//!   build` writes btrfs, btrfs subvolumes mounted with `subvol=`.
//! - `altered_file_is_caught`: in the same boot, a second disk holds a copy of the image with one
//!   byte changed in a file of the ext4 root, one of the ESP and one of a btrfs subvolume;
//!   exactly those must differ (btrfs: the kernel refuses the read with a checksum error).
//! - `ovmf_boots_systemd_boot_from_our_esp`: OVMF → our FAT32 ESP → systemd-boot staged in the
//!   tree (`EFI/BOOT/BOOTX64.EFI`, `loader/entries/test.conf`) → kernel + initramfs from the
//!   ESP; the same full comparison.
//! - `kernel_message_devices`, `listing_parser_reads_guest_records`: the guest module's parsers.

use std::fs;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use mkdisk_testkit::harness::{run_harness, HarnessError};
use mkdisk_testkit::noise;

mod common;
mod guest;

use common::{build_args, mkdisk, plan_numbers};
use guest::{
    boot, boot_or_skip, chmod, compare_tree, init_line, kernel_args, parse_listing, parts, report, skip, tail,
    vd_devices, write, Boot, Mount, Parts, S_IFLNK, S_IFMT,
};

// ---------------------------------------------------------------------------------------------
// The source tree

/// Edge cases that FAT can hold too: empty files, cluster-boundary sizes, long and non-ASCII
/// names, deep nesting, a multi-MiB file, and the marker file.
fn portable_edges(d: &Path, marker: &str) {
    write(&d.join("empty"), b"");
    for (i, n) in [1usize, 511, 512, 513, 4095, 4096, 4097, 65536, 65537].iter().enumerate() {
        write(&d.join(format!("size-{n}")), &noise(*n, i as u64 + 1));
    }
    write(&d.join("big.bin"), &noise(3 << 20, 99));
    let long: String = "L".repeat(250) + ".long";
    assert_eq!(long.len(), 255);
    write(&d.join(&long), b"255-character name\n");
    write(&d.join("names").join("Grüße ñ 日本語.txt"), "non-ASCII name\n".as_bytes());
    write(&d.join("names").join("with  spaces and.dots.in.it"), b"spaces\n");
    write(&d.join("names").join(".hidden"), b"dot file\n");
    let mut deep = d.join("deep");
    for i in 0..12 {
        deep = deep.join(format!("level{i}"));
    }
    write(&deep.join("bottom.txt"), b"bottom\n");
    fs::create_dir_all(d.join("empty-dir")).unwrap();
    // The marker: unique in the image, so the negative test can find and alter it.
    let mut m = marker.as_bytes().to_vec();
    m.extend_from_slice(b"\n");
    m.extend_from_slice(&noise(1000, 7));
    write(&d.join("marker.txt"), &m);
}

/// Edge cases for POSIX filesystems (ext4, btrfs) on top of the portable ones.
fn posix_edges(d: &Path, marker: &str) {
    portable_edges(d, marker);
    // Symlinks: fast (< 60 bytes), exactly 60, slow, dangling, to a directory, absolute.
    symlink("empty", d.join("link-fast")).unwrap();
    symlink("x".repeat(59), d.join("link-59")).unwrap();
    symlink("y".repeat(60), d.join("link-60")).unwrap();
    symlink("z/".repeat(500), d.join("link-slow")).unwrap();
    symlink("/nix/store/does-not-exist", d.join("link-dangling")).unwrap();
    symlink("deep/level0", d.join("link-dir")).unwrap();
    // Hard links, across directories.
    write(&d.join("hard/a"), b"three names, one inode\n");
    fs::create_dir_all(d.join("hard/sub")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/b")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/sub/c")).unwrap();
    // A sparse file: 24 MiB apparent, three 4 KiB extents of data.
    {
        let f = fs::File::create(d.join("sparse")).unwrap();
        f.set_len(24 << 20).unwrap();
        f.write_all_at(&noise(4096, 11), 0).unwrap();
        f.write_all_at(&noise(4096, 12), 10 << 20).unwrap();
        f.write_all_at(&noise(4096, 13), (24 << 20) - 4096).unwrap();
    }
    // 255-byte names for a directory and a symlink as well.
    let long_dir = "D".repeat(255);
    write(&d.join(&long_dir).join("inside"), b"in a 255-byte directory\n");
    symlink("empty", d.join("S".repeat(255))).unwrap();
    // A large directory (htree on ext4).
    for i in 0..1500 {
        write(&d.join("many").join(format!("entry-{i:05}-{}", "p".repeat(i % 40))), format!("{i}\n").as_bytes());
    }
    // Modes.
    write(&d.join("modes/suid"), b"#!/bin/sh\n");
    chmod(&d.join("modes/suid"), 0o4755);
    write(&d.join("modes/sgid"), b"#!/bin/sh\n");
    chmod(&d.join("modes/sgid"), 0o2711);
    write(&d.join("modes/readonly"), b"r\n");
    chmod(&d.join("modes/readonly"), 0o400);
    fs::create_dir_all(d.join("modes/sticky")).unwrap();
    chmod(&d.join("modes/sticky"), 0o1777);
    fs::create_dir_all(d.join("modes/private")).unwrap();
    chmod(&d.join("modes/private"), 0o700);
    // Compressible data (btrfs compress=zstd: large frames).
    let text: Vec<u8> = (0..(2 << 20)).map(|i: u32| b"abcdefgh\n"[(i % 9) as usize]).collect();
    write(&d.join("compressible.txt"), &text);
}

// ---------------------------------------------------------------------------------------------
// The image

/// The image every test here boots, and what it was built from.
struct Fixture {
    parts: &'static Parts,
    /// `CARGO_TARGET_TMPDIR/boot-tree`: the source, the image, the boots' logs.
    dir: PathBuf,
    src: PathBuf,
    image: PathBuf,
    mounts: Vec<Mount>,
    ext4_marker: String,
    fat_marker: String,
    /// In the uncompressed btrfs subvolume `/logs` (data checksums: the kernel must refuse it).
    btrfs_marker: Option<String>,
}

const LINUX: &str = "EFI/test/linux.efi";
const INITRD: &str = "EFI/test/initrd.efi";

/// Whether `mkdisk build` writes btrfs yet (decides whether the fixture has a btrfs partition).
fn btrfs_supported(dir: &Path) -> bool {
    let d = dir.join("btrfs-probe");
    fs::create_dir_all(&d).unwrap();
    let spec = serde_json::json!({"disk": {"probe": {"imageSize": "200M", "content": {"type": "gpt",
        "partitions": {"p": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/a": {"mountpoint": "/a"}}}}}}}}});
    fs::write(d.join("spec.json"), spec.to_string()).unwrap();
    let o = mkdisk(&build_args(&d.join("spec.json"), &d));
    let _ = fs::remove_dir_all(&d);
    let err = String::from_utf8_lossy(&o.stderr);
    // Only "not written yet" drops btrfs from the image; any other failure is a finding.
    assert!(o.status.success() || err.contains("not implemented"), "mkdisk build of a btrfs layout: {err}");
    if !o.status.success() {
        eprintln!("boot: btrfs not covered: {}", err.trim());
    }
    o.status.success()
}

/// The fixture: the source tree and the image built from it with the boot `parts`.
fn build_fixture(parts: &'static Parts) -> Fixture {
    let dir = guest::fresh_dir("boot-tree");
    let src = dir.join("src");
    let stamp = format!(
        "{:x}",
        std::process::id() as u64 * 0x1_0000_0000
            + u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
    );
    let ext4_marker = format!("MKDISK-BOOT-MARKER-EXT4-{stamp}");
    let fat_marker = format!("MKDISK-BOOT-MARKER-FAT-{stamp}");

    // Root (ext4): a store subset, edge cases, plain config files.
    let t1 = Instant::now();
    guest::store_corpus(&src, 24);
    eprintln!("boot: store corpus in {:.1}s", t1.elapsed().as_secs_f64());
    posix_edges(&src.join("edge"), &ext4_marker);
    write(&src.join("etc/hostname"), b"mkdisk-boot-test\n");
    write(&src.join("etc/os-release"), b"ID=nixos\n");
    // /home: a second ext4 partition (a mount point below another).
    write(&src.join("home/user/.profile"), b"export A=1\n");
    write(&src.join("home/user/notes/todo.txt"), b"boot it\n");
    symlink(".profile", src.join("home/user/profile-link")).unwrap();
    // ESP (vfat at /boot): systemd-boot, kernel, initramfs, loader config, edge cases.
    let boot = src.join("boot");
    fs::create_dir_all(boot.join("EFI/BOOT")).unwrap();
    fs::copy(parts.path("systemd_boot"), boot.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    write(&boot.join(LINUX), &fs::read(parts.path("kernel")).unwrap());
    write(&boot.join(INITRD), &fs::read(&parts.initrd).unwrap());
    write(&boot.join("loader/loader.conf"), b"timeout 0\ndefault test.conf\n");
    portable_edges(&boot.join("edge"), &fat_marker);

    let with_btrfs = btrfs_supported(&dir);
    let mut partitions = serde_json::json!({
        "boot": {"size": "1M", "type": "EF02"},
        "ESP": {"size": "96M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "home": {"size": "32M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/home"}},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
    });
    let btrfs_marker = with_btrfs.then(|| format!("MKDISK-BOOT-MARKER-BTRFS-{stamp}"));
    if let Some(marker) = &btrfs_marker {
        posix_edges(&src.join("srv/data"), "btrfs data subvolume");
        write(&src.join("srv/logs/boot.log"), b"log line\n");
        // Larger than max_inline, so the bytes sit in a checksummed data extent.
        let mut m = marker.as_bytes().to_vec();
        m.extend_from_slice(&noise(16384, 17));
        write(&src.join("srv/logs/marker.txt"), &m);
        partitions["srv"] = serde_json::json!({"size": "256M", "content": {"type": "btrfs", "subvolumes": {
            "/data": {"mountpoint": "/srv/data", "mountOptions": ["compress=zstd"]},
            "/logs": {"mountpoint": "/srv/logs"}}}});
    }
    let spec = serde_json::json!({"disk": {"main": {"imageSize": "1G",
        "content": {"type": "gpt", "partitions": partitions}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();

    // Partition numbers from the plan, for the guest's device names.
    let number = plan_numbers(&spec_path);
    let mount = |id: &str, part: &str, fs: &str, opts: &str, mp: &str| {
        Mount::new(id, format!("vda{}", number(part)), fs, opts, mp)
    };
    let mut mounts = vec![
        mount("esp", "ESP", "vfat", "ro", "/boot"),
        mount("root", "root", "ext4", "ro", "/"),
        mount("home", "home", "ext4", "ro", "/home"),
    ];
    if with_btrfs {
        mounts.push(mount("srv-data", "srv", "btrfs", "ro,subvol=/data", "/srv/data"));
        mounts.push(mount("srv-logs", "srv", "btrfs", "ro,subvol=/logs", "/srv/logs"));
    }
    // The loader entry names the mounts, so the OVMF boot checks the same as the direct one.
    let entry = format!("title mkdisk boot test\nlinux /{LINUX}\ninitrd /{INITRD}\noptions {}\n", kernel_args(&mounts));
    write(&boot.join("loader/entries/test.conf"), entry.as_bytes());

    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let t1 = Instant::now();
    let o = mkdisk(&[&build_args(&spec_path, &out)[..], &["--root", src.to_str().unwrap()]].concat());
    assert!(o.status.success(), "mkdisk build: {}", String::from_utf8_lossy(&o.stderr));
    eprintln!("boot: mkdisk build took {:.1}s", t1.elapsed().as_secs_f64());
    Fixture { parts, image: out.join("main.raw"), dir, src, mounts, ext4_marker, fat_marker, btrfs_marker }
}

/// The fixture, built once per run of this binary; `None` (after a loud skip) where the parts
/// cannot be had.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Fixture> = OnceLock::new();
    let parts = parts()?;
    Some(F.get_or_init(|| build_fixture(parts)))
}

/// Differences between what the kernel read (for `mounts`) and the fixture's source.
fn compare(fx: &Fixture, b: &Boot, mounts: &[Mount]) -> Vec<String> {
    compare_tree(&fx.src, &fx.mounts, b, mounts, &[], None)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn ovmf_boots_systemd_boot_from_our_esp() {
    let Some(fx) = fixture() else { return };
    let Some(b) = boot_or_skip(fx.parts, &fx.dir, &[&fx.image], &fx.mounts, "ovmf", "ovmf") else { return };
    // The guest's /init ran from the initramfs systemd-boot loaded off our ESP, with the entry's
    // options: systemd-boot adds `initrd=` with the ESP path in backslashes.
    let init_line = init_line(&b, "OVMF");
    assert!(
        init_line.contains(&format!("initrd=\\{}", INITRD.replace('/', "\\"))),
        "not started by systemd-boot from the ESP: {init_line}"
    );
    let problems = compare(fx, &b, &fx.mounts);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report("OVMF boot", &problems), tail(&b.console));
}

/// The altered copy's mounts: the same partitions on the second disk.
fn altered_mounts(fx: &Fixture) -> Vec<Mount> {
    fx.mounts
        .iter()
        .map(|m| Mount { id: format!("altered-{}", m.id), dev: m.dev.replacen("vda", "vdb", 1), ..m.clone() })
        .collect()
}

/// One direct kernel boot (`-kernel/-initrd`) with two disks: vda = the image as built,
/// vdb = a copy with one byte changed in a file of the ext4 root and one of the ESP.
fn direct_boot(fx: &'static Fixture) -> Option<&'static Boot> {
    static B: OnceLock<Result<Boot, String>> = OnceLock::new();
    let r = B.get_or_init(|| {
        let altered = fx.dir.join("altered.raw");
        // A sparse copy with one byte changed inside each marker text (same size, different
        // content); the markers must occur exactly once in the image.
        let t0 = Instant::now();
        let mut args =
            vec!["alter", fx.image.to_str().unwrap(), altered.to_str().unwrap(), &fx.ext4_marker, &fx.fat_marker];
        if let Some(m) = &fx.btrfs_marker {
            args.push(m);
        }
        if let Err(HarnessError::Failed(e) | HarnessError::Unavailable(e)) = run_harness(&args) {
            panic!("altering the image failed: {e}");
        }
        eprintln!("boot: altered copy in {:.1}s", t0.elapsed().as_secs_f64());
        let mut mounts = fx.mounts.clone();
        mounts.extend(altered_mounts(fx));
        let b = boot(fx.parts, &fx.dir, &[&fx.image, &altered], &mounts, "direct", "direct");
        let _ = fs::remove_file(&altered);
        b
    });
    match r {
        Ok(b) => Some(b),
        Err(why) => {
            skip(why);
            None
        }
    }
}

#[test]
fn kernel_reads_every_file() {
    let Some(fx) = fixture() else { return };
    let Some(b) = direct_boot(fx) else { return };
    let problems = compare(fx, b, &fx.mounts);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report("direct boot", &problems), tail(&b.console));
    let entries: usize = fx.mounts.iter().map(|m| b.mounts[&m.id].1.len()).sum();
    assert!(entries > 1000, "only {entries} entries listed");
    eprintln!("boot: the kernel read {entries} entries in {} mounts, all equal to the source", fx.mounts.len());
}

#[test]
fn altered_file_is_caught() {
    let Some(fx) = fixture() else { return };
    let Some(b) = direct_boot(fx) else { return };
    let problems = compare(fx, b, &altered_mounts(fx));
    let mut expect = vec!["altered-root: ./edge/marker.txt: sha256", "altered-esp: ./edge/marker.txt: sha256"];
    if fx.btrfs_marker.is_some() {
        // btrfs checks data checksums: the read fails (EIO) and the kernel says why.
        expect.extend(["altered-srv-logs: ./marker.txt: sha256", "kernel: "]);
    }
    for e in &expect {
        assert!(problems.iter().any(|p| p.starts_with(e)), "alteration not caught ({e}): {problems:#?}");
    }
    // Nothing else differs: only the altered files, the kernel's complaints about the altered
    // disk, and the listing's read errors for those files.
    let explained = |p: &String| {
        expect[..2].iter().any(|e| p.starts_with(e))
            || (fx.btrfs_marker.is_some()
                && (p.starts_with(expect[2])
                    || (p.starts_with("kernel: ") && vd_devices(p).iter().all(|d| d.starts_with("vdb")))
                    || (p.starts_with("altered-srv-logs: stderr: ") && p.contains("marker.txt"))))
    };
    eprintln!("boot: the altered copy was caught:\n  {}", problems.join("\n  "));
    let unexplained: Vec<&String> = problems.iter().filter(|p| !explained(p)).collect();
    assert!(unexplained.is_empty(), "differences beyond the altered files: {unexplained:#?}\nall: {problems:#?}");
    if fx.btrfs_marker.is_some() {
        assert!(problems.iter().any(|p| p.starts_with("kernel: ") && p.contains("csum")), "{problems:#?}");
    } else {
        assert_eq!(problems.len(), 2, "exactly the two altered files differ: {problems:#?}");
    }
}

#[test]
fn kernel_message_devices() {
    assert_eq!(vd_devices("BTRFS warning (device vdb5): csum failed root 258"), ["vdb5"]);
    assert_eq!(vd_devices("EXT4-fs (vda4): mounted; I/O error on vda12"), ["vda4", "vda12"]);
    assert!(vd_devices("ACPI: vdso, avdb1").is_empty());
}

#[test]
fn listing_parser_reads_guest_records() {
    let raw = b"noise\nMKDISK-BEGIN root vda3 ext4 ro\r\nM 81a4 0 0 6 2 14 1700000000 ./a b/x\nS 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  ./a b/x\nM a1ff 0 0 5 1 16 1 ./l\nL ./l\ta b/x\nMKDISK-END root rc=0\nMKDISK-DONE\n";
    let b = parse_listing(raw);
    assert!(b.done);
    let (rc, e, stderr) = &b.mounts["root"];
    assert!(stderr.is_empty());
    assert_eq!(rc, "0");
    assert_eq!(e["./a b/x"].mode, 0o100_644);
    assert_eq!(e["./a b/x"].nlink, 2);
    assert_eq!(e["./a b/x"].sha256.as_deref().unwrap().len(), 64);
    assert_eq!(e["./l"].target.as_deref(), Some("a b/x"));
    assert_eq!(e["./l"].mode & S_IFMT, S_IFLNK);
}
