//! Proof by the kernel: boot Linux in QEMU (TCG, no root, no KVM) on an image written by
//! `mkdisk build`, mount every partition read-only, list every entry with its sha256, mode,
//! size and symlink target over a serial port, and compare with the source tree split by the
//! layout's mount points.
//!
//! The parts (QEMU, OVMF, systemd-boot, busybox, a Debian kernel) come from Debian packages,
//! fetched and cached by `tests/boot/harness.py` (see there). Where QEMU cannot be had the
//! tests print `SKIPPED` loudly and return; with `CI=true` they fail instead.
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
//! - `seabios_boots_grub_from_ef02` and `ovmf_boots_the_systemd_boot_mkdisk_installed`: a
//!   NixOS-shaped image (`mkdisk build --system --grub-bios-dir --systemd-boot`) boots through
//!   SeaBIOS → GRUB (boot.img in the MBR, core.img in EF02, grub.cfg on the ESP) and through
//!   OVMF → the systemd-boot mkdisk installed; the guest reads every partition.
//! - `seabios_boots_grub_from_btrfs_subvolumes`: GRUB reads grub.cfg and the kernel from btrfs
//!   subvolumes (`/root` at `/`, `/nix` with the closure).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

mod common;
use common::{
    boot_parts, build_args, grub_boot_args, harness_or_why, mkdisk, plan_numbers, repo, run_harness, sha256_hex,
    system_args, HarnessError,
};

/// QEMU or a part cannot be had: a loud skip, or a failure under CI ([`common::skip_or_fail`]).
fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    common::skip_or_fail(&format!("kernel boot test {test}"), why);
}

/// Boots are serialized: TCG is CPU-bound and the machine is small.
static BOOT: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The source tree

/// Deterministic bytes (xorshift), not compressible.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

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

/// A Nix-store-shaped subset from this machine's packages (`../shared/tools`), or a
/// synthetic stand-in where that script is not present.
fn store_corpus(dest: &Path) {
    let script = repo().join("../shared/tools/make-store-corpus.py");
    if script.exists() {
        let st = Command::new("python3").arg(&script).arg(dest).args(["--max-mib", "24"]).status().unwrap();
        assert!(st.success(), "make-store-corpus.py failed");
        return;
    }
    eprintln!("boot: {} missing; using a synthetic store", script.display());
    for p in 0..40u64 {
        let sp = dest.join(format!("nix/store/{:032x}-pkg-{p}", p * 7919));
        for f in 0..20u64 {
            let file = sp.join(format!("share/f{f}"));
            write(&file, &noise(usize::try_from((p * 131 + f * 17) % 9000).unwrap(), p * 100 + f));
            chmod(&file, 0o444);
        }
        symlink("share/f0", sp.join("link")).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The image

/// One read-only mount the guest makes, and the part of the source tree it must show.
#[derive(Clone, Debug)]
struct Mount {
    /// Name in the listing.
    id: String,
    /// Guest device (`vda3`).
    dev: String,
    /// `ext4`, `vfat`, `btrfs`.
    fs: String,
    /// Mount options (`ro`, `ro,subvol=/data`).
    opts: String,
    /// The layout's mount point (`/`, `/boot`).
    mountpoint: String,
}

impl Mount {
    fn new(id: &str, dev: String, fs: &str, opts: &str, mountpoint: &str) -> Mount {
        Mount { id: id.into(), dev, fs: fs.into(), opts: opts.into(), mountpoint: mountpoint.into() }
    }

    fn arg(&self) -> String {
        format!("{}:{}:{}:{}", self.id, self.dev, self.fs, self.opts)
    }
}

struct Fixture {
    parts: serde_json::Value,
    dir: PathBuf,
    src: PathBuf,
    image: PathBuf,
    mounts: Vec<Mount>,
    initrd: PathBuf,
    ext4_marker: String,
    fat_marker: String,
    /// In the uncompressed btrfs subvolume `/logs` (data checksums: the kernel must refuse it).
    btrfs_marker: Option<String>,
}

const LINUX: &str = "EFI/test/linux.efi";
const INITRD: &str = "EFI/test/initrd.efi";

fn kernel_args(mounts: &[Mount]) -> String {
    let mut a = vec!["console=ttyS0".to_string(), "panic=-1".into(), "loglevel=4".into(), "mkdisk.out=ttyS1".into()];
    a.extend(mounts.iter().map(|m| format!("mkdisk.mount={}", m.arg())));
    a.join(" ")
}

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

/// The fixture, or why the parts cannot be had here.
fn build_fixture() -> Result<Fixture, String> {
    let t0 = Instant::now();
    let (parts, initrd) = boot_parts()?;
    eprintln!("boot: parts ready in {:.1}s ({})", t0.elapsed().as_secs_f64(), parts["kernel_package"]);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot-test");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
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
    store_corpus(&src);
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
    fs::copy(parts["systemd_boot"].as_str().unwrap(), boot.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    write(&boot.join(LINUX), &fs::read(parts["kernel"].as_str().unwrap()).unwrap());
    write(&boot.join(INITRD), &fs::read(&initrd).unwrap());
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
    Ok(Fixture { parts, image: out.join("main.raw"), dir, src, mounts, initrd, ext4_marker, fat_marker, btrfs_marker })
}

fn fixture_or_why() -> &'static Result<Fixture, String> {
    static F: OnceLock<Result<Fixture, String>> = OnceLock::new();
    F.get_or_init(build_fixture)
}

/// The fixture; `None` (after a loud skip) where the parts cannot be had.
fn fixture() -> Option<&'static Fixture> {
    match fixture_or_why() {
        Ok(f) => Some(f),
        Err(why) => {
            skip(why);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Booting and the listings

/// One mount's listing: rc, entries by path, stderr of the listing commands.
type Listing = (String, BTreeMap<String, Entry>, Vec<String>);

/// What one boot printed.
struct Boot {
    console: String,
    /// Mount id → (rc, entries, stderr of the listing commands).
    mounts: BTreeMap<String, Listing>,
    /// Kernel messages the guest flagged (errors, corruption).
    dmesg: Vec<String>,
    done: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    /// `st_mode` (type and permission bits).
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    ino: u64,
    mtime: i64,
    sha256: Option<String>,
    target: Option<String>,
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Boot once; `Err` = QEMU could not run here.
fn boot(fx: &Fixture, disks: &[&Path], mounts: &[Mount], firmware: &str, tag: &str) -> Result<Boot, String> {
    let _g = BOOT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let console = fx.dir.join(format!("{tag}.console.log"));
    let listing = fx.dir.join(format!("{tag}.listing.txt"));
    let mut args = vec!["run".to_string()];
    for d in disks {
        args.push("--disk".into());
        args.push(d.to_str().unwrap().into());
    }
    args.extend([
        "--console".into(),
        console.to_str().unwrap().into(),
        "--listing".into(),
        listing.to_str().unwrap().into(),
        "--firmware".into(),
        firmware.into(),
        "--initrd".into(),
        fx.initrd.to_str().unwrap().into(),
        "--timeout".into(),
        "400".into(),
    ]);
    for m in mounts {
        args.push("--mount".into());
        args.push(m.arg());
    }
    let t0 = Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_harness(&args);
    let secs = t0.elapsed().as_secs_f64();
    match r {
        Ok(_) => {}
        Err(HarnessError::Unavailable(why)) => return Err(why),
        Err(HarnessError::Failed(e)) => panic!("{tag}: boot failed after {secs:.1}s:\n{e}"),
    }
    eprintln!("boot: {tag} ({firmware}) took {secs:.1}s");
    let b = parse_listing(&fs::read(&listing).unwrap());
    let console = String::from_utf8_lossy(&fs::read(&console).unwrap()).replace('\r', "");
    Ok(Boot { console, ..b })
}

/// [`boot`], or `None` after a loud [`skip`] where QEMU could not run here.
fn boot_or_skip(fx: &Fixture, disks: &[&Path], mounts: &[Mount], firmware: &str, tag: &str) -> Option<Boot> {
    boot(fx, disks, mounts, firmware, tag).map_err(|why| skip(&why)).ok()
}

/// The line the guest's /init printed first, with the kernel command line it was started with;
/// a failure, with the console's tail, where it never ran (booting `under` the firmware named).
fn init_line<'a>(b: &'a Boot, under: &str) -> &'a str {
    b.console
        .lines()
        .find(|l| l.starts_with("MKDISK-INIT start:"))
        .unwrap_or_else(|| panic!("guest /init never ran under {under}; console tail:\n{}", tail(&b.console)))
}

fn parse_listing(raw: &[u8]) -> Boot {
    let mut b = Boot { console: String::new(), mounts: BTreeMap::new(), dmesg: Vec::new(), done: false };
    let mut cur: Option<Listing> = None;
    for line in raw.split(|&c| c == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
        if let Some(rest) = line.strip_prefix("MKDISK-BEGIN ") {
            cur = Some((rest.split(' ').next().unwrap().to_string(), BTreeMap::new(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("MKDISK-END ") {
            let (id, rc) = rest.split_once(' ').unwrap_or((rest, ""));
            let (cid, entries, stderr) = cur.take().unwrap_or_default();
            assert_eq!(cid, id, "listing out of order");
            b.mounts.insert(id.to_string(), (rc.trim_start_matches("rc=").to_string(), entries, stderr));
        } else if let Some(rest) = line.strip_prefix("MKDISK-DMESG ") {
            b.dmesg.push(rest.to_string());
        } else if line == "MKDISK-DONE" {
            b.done = true;
        } else if let Some((_, entries, stderr)) = cur.as_mut() {
            if let Some(rest) = line.strip_prefix("MKDISK-STDERR ") {
                stderr.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("M ") {
                let f: Vec<&str> = rest.splitn(8, ' ').collect();
                assert_eq!(f.len(), 8, "bad record {line:?}");
                let e = entries.entry(f[7].to_string()).or_default();
                e.mode = u32::from_str_radix(f[0], 16).unwrap();
                e.uid = f[1].parse().unwrap();
                e.gid = f[2].parse().unwrap();
                e.size = f[3].parse().unwrap();
                e.nlink = f[4].parse().unwrap();
                e.ino = f[5].parse().unwrap();
                e.mtime = f[6].parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("S ") {
                let (h, p) = rest.split_once("  ").unwrap_or_else(|| panic!("bad record {line:?}"));
                entries.entry(p.to_string()).or_default().sha256 = Some(h.to_string());
            } else if let Some(rest) = line.strip_prefix("L ") {
                let (p, t) = rest.split_once('\t').unwrap_or_else(|| panic!("bad record {line:?}"));
                entries.entry(p.to_string()).or_default().target = Some(t.to_string());
            }
        }
    }
    b
}

/// The host's view of one mount: the source below its mount point, deeper mount points kept as
/// (empty) directories. Also (dev, ino) per path for hard-link groups.
fn host_listing(src: &Path, all: &[Mount], m: &Mount) -> (BTreeMap<String, Entry>, HashMap<String, (u64, u64)>) {
    let base = src.join(m.mountpoint.trim_start_matches('/'));
    let deeper: Vec<PathBuf> = all
        .iter()
        .filter(|o| o.mountpoint != m.mountpoint)
        .map(|o| src.join(o.mountpoint.trim_start_matches('/')))
        .filter(|p| p.starts_with(&base) && *p != base)
        .collect();
    let mut out = BTreeMap::new();
    let mut ids = HashMap::new();
    let mut stack = vec![(base.clone(), ".".to_string())];
    while let Some((p, rel)) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let mut e = Entry {
            mode: md.mode(),
            uid: 0,
            gid: 0,
            size: md.size(),
            nlink: md.nlink(),
            ino: md.ino(),
            mtime: md.mtime(),
            sha256: None,
            target: None,
        };
        if md.is_file() {
            e.sha256 = Some(sha256_hex(&fs::read(&p).unwrap()));
        } else if md.is_symlink() {
            e.target = Some(fs::read_link(&p).unwrap().to_string_lossy().into_owned());
        } else if md.is_dir() && (rel == "." || !deeper.contains(&p)) {
            for c in fs::read_dir(&p).unwrap() {
                let c = c.unwrap();
                stack.push((c.path(), format!("{rel}/{}", c.file_name().to_string_lossy())));
            }
        }
        ids.insert(rel.clone(), (md.dev(), md.ino()));
        out.insert(rel, e);
    }
    (out, ids)
}

/// Differences between what the kernel read (for `mounts`) and the source, one line each.
fn compare(fx: &Fixture, b: &Boot, mounts: &[Mount]) -> Vec<String> {
    compare_tree(&fx.src, &fx.mounts, b, mounts, &[], None)
}

/// Adjusts the host's expectation for (mount id, path) where the image is meant to differ
/// from the source (the Nix store's canonical metadata).
type Fixup<'a> = &'a dyn Fn(&str, &str, &mut Entry);

/// The `vdXN` device names a kernel message mentions.
fn vd_devices(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = line[i..].find("vd") {
        let start = i + pos;
        let mut end = start + 2;
        let boundary = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        if boundary && end < b.len() && b[end].is_ascii_lowercase() {
            end += 1;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == b.len() || !b[end].is_ascii_alphanumeric() {
                out.push(line[start..end].to_string());
            }
        }
        i = start + 2;
    }
    out
}

/// [`compare`] for the tree `src` laid out by `all`; `extra_ok` = (mount id, path prefix) of
/// entries the image may hold beyond the source (what `mkdisk build --system` adds).
fn compare_tree(
    src: &Path,
    all: &[Mount],
    b: &Boot,
    mounts: &[Mount],
    extra_ok: &[(&str, &str)],
    fixup: Option<Fixup<'_>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !b.done {
        problems.push("guest listing incomplete (no MKDISK-DONE)".to_string());
    }
    for d in &b.dmesg {
        // Messages naming a device belong to that device's mounts; the rest to every check.
        let named = vd_devices(d);
        let ours = named.is_empty() || mounts.iter().any(|m| named.contains(&m.dev));
        if ours
            && ["EXT4-fs error", "BTRFS error", "BTRFS critical", "FAT-fs (", "I/O error", "csum failed", "corrupt"]
                .iter()
                .any(|k| d.contains(k))
        {
            problems.push(format!("kernel: {d}"));
        }
    }
    for m in mounts {
        let Some((rc, guest, stderr)) = b.mounts.get(&m.id) else {
            problems.push(format!("{}: not in the guest listing", m.id));
            continue;
        };
        for e in stderr {
            problems.push(format!("{}: stderr: {e}", m.id));
        }
        if rc != "0" {
            problems.push(format!("{} ({} {}): rc={rc}", m.id, m.fs, m.dev));
            continue;
        }
        let (mut host, host_ids) = host_listing(src, all, m);
        if let Some(f) = fixup {
            for (path, e) in &mut host {
                f(&m.id, path, e);
            }
        }
        let posix = m.fs != "vfat";
        let mut p = |s: String| problems.push(format!("{}: {s}", m.id));
        for (path, h) in &host {
            let Some(g) = guest.get(path) else {
                p(format!("{path}: missing"));
                continue;
            };
            if g.mode & S_IFMT != h.mode & S_IFMT {
                p(format!("{path}: type {:o} != {:o}", g.mode & S_IFMT, h.mode & S_IFMT));
                continue;
            }
            let kind = h.mode & S_IFMT;
            if kind == S_IFREG {
                if g.size != h.size {
                    p(format!("{path}: size {} != {}", g.size, h.size));
                }
                if g.sha256 != h.sha256 {
                    p(format!("{path}: sha256 {:?} != {:?}", g.sha256, h.sha256));
                }
            }
            if !posix {
                continue;
            }
            if g.mode != h.mode {
                p(format!("{path}: mode {:o} != {:o}", g.mode, h.mode));
            }
            if (g.uid, g.gid) != (h.uid, h.gid) {
                p(format!("{path}: owner {}:{} != {}:{}", g.uid, g.gid, h.uid, h.gid));
            }
            if kind != S_IFDIR && g.mtime != h.mtime {
                p(format!("{path}: mtime {} != {}", g.mtime, h.mtime));
            }
            if kind == S_IFLNK {
                if g.target != h.target {
                    p(format!("{path}: symlink target {:?} != {:?}", g.target, h.target));
                }
                if g.size != h.size {
                    p(format!("{path}: symlink size {} != {}", g.size, h.size));
                }
            }
            if kind == S_IFREG && g.nlink != h.nlink {
                p(format!("{path}: nlink {} != {}", g.nlink, h.nlink));
            }
        }
        for path in guest.keys() {
            // mke2fs-style lost+found is the ext4 writer's addition.
            let ext4_extra = posix && path == "./lost+found";
            let added = extra_ok.iter().any(|(id, pre)| {
                *id == m.id && (path == pre || path.strip_prefix(pre).is_some_and(|r| r.starts_with('/')))
            });
            if !host.contains_key(path) && !ext4_extra && !added {
                p(format!("{path}: in the image, not in the source"));
            }
        }
        if posix {
            // Hard links: paths sharing a host inode share a guest inode, and only those.
            let mut groups: BTreeMap<(u64, u64), Vec<&String>> = BTreeMap::new();
            for (path, h) in &host {
                if h.mode & S_IFMT == S_IFREG {
                    groups.entry(host_ids[path]).or_default().push(path);
                }
            }
            let mut seen: HashMap<u64, &String> = HashMap::new();
            for paths in groups.values() {
                let inos: Vec<u64> = paths.iter().filter_map(|p| guest.get(*p)).map(|g| g.ino).collect();
                if inos.windows(2).any(|w| w[0] != w[1]) {
                    p(format!("hard links {paths:?} are different inodes {inos:?}"));
                }
                if let Some(&ino) = inos.first() {
                    if let Some(other) = seen.insert(ino, paths[0]) {
                        p(format!("{} and {other} share inode {ino}", paths[0]));
                    }
                }
            }
        }
    }
    problems
}

fn report(what: &str, problems: &[String]) -> String {
    let n = problems.len();
    let shown: Vec<&str> = problems.iter().take(60).map(String::as_str).collect();
    format!("{what}: {n} difference(s):\n  {}", shown.join("\n  "))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn ovmf_boots_systemd_boot_from_our_esp() {
    let Some(fx) = fixture() else { return };
    let Some(b) = boot_or_skip(fx, &[&fx.image], &fx.mounts, "ovmf", "ovmf") else { return };
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
        let b = boot(fx, &[&fx.image, &altered], &mounts, "direct", "direct");
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

// ---------------------------------------------------------------------------------------------
// A NixOS-shaped image: mkdisk installs the boot loaders itself

/// An image built with `mkdisk build --system`: a bootspec whose kernel and initrd are the test's,
/// systemd-boot on the ESP (`--systemd-boot`) and GRUB i386-pc in the EF02 partition with
/// `/boot/grub` on the ESP (`--grub-bios-dir`, core.img from Debian's grub-mkimage).
struct NixosImage {
    src: PathBuf,
    image: PathBuf,
    mounts: Vec<Mount>,
    kernel_sha256: String,
    systemd_boot_sha256: String,
}

impl NixosImage {
    /// The image `image` built from `src` with `--system`, booting the fixture's kernel, and
    /// with the fixture's systemd-boot where `--systemd-boot` installed it.
    fn new(fx: &Fixture, src: PathBuf, image: PathBuf, mounts: Vec<Mount>, systemd_boot: bool) -> NixosImage {
        let sha = |part: &str| sha256_hex(&fs::read(fx.parts[part].as_str().unwrap()).unwrap());
        NixosImage {
            src,
            image,
            mounts,
            kernel_sha256: sha("kernel"),
            systemd_boot_sha256: if systemd_boot { sha("systemd_boot") } else { String::new() },
        }
    }
}

/// A fake NixOS system's store paths: the fixture's kernel in `kernel/bzImage`, its initramfs
/// in `initrd/initrd`, and a toplevel with `boot.json` and `init`.
struct FakeSystem {
    kernel: &'static str,
    initrd: &'static str,
    toplevel: &'static str,
}

impl FakeSystem {
    /// Writes the system into the host store `store` (`.../nix/store`): a bootspec labelled
    /// `label` whose kernel parameters name `mounts` for the guest's listing.
    fn write(&self, fx: &Fixture, store: &Path, mounts: &[Mount], label: &str) {
        let FakeSystem { kernel, initrd, toplevel } = self;
        let host = |p: &str| store.join(p.trim_start_matches("/nix/store/"));
        write(&host(kernel).join("bzImage"), &fs::read(fx.parts["kernel"].as_str().unwrap()).unwrap());
        write(&host(initrd).join("initrd"), &fs::read(&fx.initrd).unwrap());
        let bootspec = serde_json::json!({"org.nixos.bootspec.v1": {
            "init": format!("{toplevel}/init"),
            "initrd": format!("{initrd}/initrd"),
            "kernel": format!("{kernel}/bzImage"),
            "kernelParams": kernel_args(mounts).split(' ').collect::<Vec<_>>(),
            "label": label,
            "system": "x86_64-linux",
            "toplevel": toplevel,
        }});
        write(&host(toplevel).join("boot.json"), bootspec.to_string().as_bytes());
        write(&host(toplevel).join("init"), b"#!/bin/sh\n");
    }
}

/// GRUB i386-pc inputs in `dir/grub` (`harness.py grub-dir`) with the prefix `prefix` and the
/// modules to read it (`biosdisk`, `part_gpt` and `fs`), or why they cannot be had here.
fn grub_dir(dir: &Path, prefix: &str, fs: &str) -> Result<PathBuf, String> {
    let grub = dir.join("grub");
    harness_or_why(&["grub-dir", grub.to_str().unwrap(), "--prefix", prefix, "biosdisk", "part_gpt", fs])?;
    Ok(grub)
}

/// `mkdisk build` of `spec` with the tree `src` into `dir/out`, `args` adding the system, its
/// store and the boot loaders, GRUB set up for a test boot; `what` names the build in a failure.
fn build_with_system(dir: &Path, spec: &Path, src: &Path, args: &[&str], grub: &Path, what: &str) -> PathBuf {
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let root = ["--root", src.to_str().unwrap()];
    let o = mkdisk(&[&build_args(spec, &out)[..], &root, args, &grub_boot_args(grub)].concat());
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    out.join("main.raw")
}

/// What `--system` adds beyond the source tree (boot loaders, kernels, profiles).
const NIXOS_ADDED: &[(&str, &str)] = &[
    ("esp", "./EFI"),
    ("esp", "./loader"),
    ("esp", "./grub"),
    ("esp", "./kernels"),
    ("root", "./nix"),
    ("root", "./etc/NIXOS"),
];

/// A fresh directory `name` in the fixture's, and the source tree in it with `/etc/hostname`.
fn fresh_src(fx: &Fixture, name: &str) -> (PathBuf, PathBuf) {
    let dir = fx.dir.join(name);
    let _ = fs::remove_dir_all(&dir);
    let src = dir.join("src");
    write(&src.join("etc/hostname"), format!("{name}-boot-test\n").as_bytes());
    (dir, src)
}

fn build_nixos_image(fx: &Fixture) -> Result<NixosImage, String> {
    let (dir, src) = fresh_src(fx, "nixos");
    write(&src.join("srv/hello.txt"), b"hello from the NixOS-shaped image\n");
    symlink("hello.txt", src.join("srv/hello-link")).unwrap();
    fs::hard_link(src.join("srv/hello.txt"), src.join("srv/hello-hard")).unwrap();
    write(&src.join("boot/notes/readme.txt"), b"ESP content next to the boot loaders\n");

    let spec = serde_json::json!({"disk": {"main": {"imageSize": "384M", "content": {"type": "gpt", "partitions": {
        "boot": {"size": "1M", "type": "EF02", "priority": 0},
        "ESP": {"size": "96M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let number = plan_numbers(&spec_path);
    let esp = number("ESP");
    let mount = |id: &str, part: &str, fs: &str, mp: &str| Mount::new(id, format!("vda{}", number(part)), fs, "ro", mp);
    let mounts = vec![mount("esp", "ESP", "vfat", "/boot"), mount("root", "root", "ext4", "/")];

    // A store with the kernel, the initramfs and a toplevel holding boot.json.
    let store = dir.join("store/nix/store");
    let system = FakeSystem {
        kernel: "/nix/store/s0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1",
        initrd: "/nix/store/0zk2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1",
        toplevel: "/nix/store/1ab2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-boottest-24.05",
    };
    system.write(fx, &store, &mounts, "NixOS 24.05 (Linux 6.1, mkdisk boot test)");

    // GRUB: /boot is the ESP, so the prefix is (,gptN)/grub and core.img needs fat.
    let grub = grub_dir(&dir, &format!("(,gpt{esp})/grub"), "fat")?;
    let args = [
        "--system",
        system.toplevel,
        "--store-dir",
        store.to_str().unwrap(),
        "--systemd-boot",
        fx.parts["systemd_boot"].as_str().unwrap(),
    ];
    let image = build_with_system(&dir, &spec_path, &src, &args, &grub, "mkdisk build --system");
    Ok(NixosImage::new(fx, src, image, mounts, true))
}

fn nixos_image(fx: &'static Fixture) -> Option<&'static NixosImage> {
    static N: OnceLock<Result<NixosImage, String>> = OnceLock::new();
    match N.get_or_init(|| build_nixos_image(fx)) {
        Ok(n) => Some(n),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// The guest read the NixOS image: every source file, plus the boot loader files mkdisk added.
fn check_nixos_boot(n: &NixosImage, b: &Boot, what: &str) {
    let problems = compare_tree(&n.src, &n.mounts, b, &n.mounts, NIXOS_ADDED, None);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report(what, &problems), tail(&b.console));
    let esp = &b.mounts["esp"].1;
    let sha =
        |p: &str| esp.get(p).and_then(|e| e.sha256.clone()).unwrap_or_else(|| panic!("{what}: no {p} on the ESP"));
    assert_eq!(sha("./EFI/BOOT/BOOTX64.EFI"), n.systemd_boot_sha256, "{what}: BOOTX64.EFI");
    assert!(esp.contains_key("./grub/grub.cfg"), "{what}: no grub.cfg");
    let kernels: Vec<&String> =
        esp.keys().filter(|k| k.starts_with("./kernels/") || k.starts_with("./EFI/nixos/")).collect();
    for k in &kernels {
        if k.contains("linux-6.1-bzImage") {
            assert_eq!(sha(k), n.kernel_sha256, "{what}: kernel copy {k}");
        }
    }
    assert!(
        kernels.iter().filter(|k| k.contains("linux-6.1-bzImage")).count() >= 2,
        "{what}: kernel copies {kernels:?}"
    );
}

/// The NixOS-shaped image and one boot of it with `firmware` (`tag` names the logs); `None`
/// (after a loud skip) where the parts or QEMU cannot be had.
fn boot_nixos_image(firmware: &str, tag: &str) -> Option<(&'static NixosImage, Boot)> {
    let fx = fixture()?;
    let n = nixos_image(fx)?;
    Some((n, boot_or_skip(fx, &[&n.image], &n.mounts, firmware, tag)?))
}

#[test]
fn seabios_boots_grub_from_ef02() {
    let Some((n, b)) = boot_nixos_image("bios", "seabios-grub") else { return };
    // GRUB puts BOOT_IMAGE= first; the kernel came from /boot/kernels on the ESP.
    let init_line = init_line(&b, "SeaBIOS + GRUB");
    assert!(init_line.contains("BOOT_IMAGE=") && init_line.contains("/kernels/"), "not started by GRUB: {init_line}");
    check_nixos_boot(n, &b, "SeaBIOS → GRUB boot");
}

#[test]
fn ovmf_boots_the_systemd_boot_mkdisk_installed() {
    let Some((n, b)) = boot_nixos_image("ovmf", "ovmf-nixos") else { return };
    let init_line = init_line(&b, "OVMF");
    assert!(init_line.contains("initrd=\\EFI\\nixos\\"), "not started by the installed systemd-boot: {init_line}");
    check_nixos_boot(n, &b, "OVMF → installed systemd-boot");
}

/// The NAR serialisation of `p` (for closureInfo's registration).
fn nar(p: &Path, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    use std::os::unix::ffi::OsStrExt;
    let md = fs::symlink_metadata(p).unwrap();
    if out.is_empty() {
        s(out, b"nix-archive-1");
    }
    s(out, b"(");
    s(out, b"type");
    if md.is_symlink() {
        s(out, b"symlink");
        s(out, b"target");
        s(out, fs::read_link(p).unwrap().as_os_str().as_bytes());
    } else if md.is_file() {
        s(out, b"regular");
        if md.mode() & 0o100 != 0 {
            s(out, b"executable");
            s(out, b"");
        }
        s(out, b"contents");
        s(out, &fs::read(p).unwrap());
    } else {
        s(out, b"directory");
        let mut names: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            s(out, b"entry");
            s(out, b"(");
            s(out, b"name");
            s(out, n.as_bytes());
            s(out, b"node");
            nar(&p.join(&n), out);
            s(out, b")");
        }
    }
    s(out, b")");
}

/// A closureInfo directory (`store-paths`, `registration`) for `paths` in the host store
/// `store` (`.../nix/store`); `refs` = (path, its references).
fn closure_info(dir: &Path, store: &Path, paths: &[&str], refs: &[(&str, &[&str])]) {
    let mut reg = String::new();
    for p in paths {
        let mut n = Vec::new();
        nar(&store.join(p.trim_start_matches("/nix/store/")), &mut n);
        let r: &[&str] = refs.iter().find(|(q, _)| q == p).map_or(&[], |(_, r)| *r);
        reg.push_str(&format!("{p}\nsha256:{}\n{}\n\n{}\n", sha256_hex(&n), n.len(), r.len()));
        for x in r {
            reg.push_str(&format!("{x}\n"));
        }
    }
    write(&dir.join("registration"), reg.as_bytes());
    write(&dir.join("store-paths"), (paths.join("\n") + "\n").as_bytes());
}

/// A NixOS-shaped image with a btrfs root: subvolumes `/root` (at `/`) and `/nix`, the closure
/// (kernel, initrd, toplevel) in `/nix/store`, and GRUB reading `/boot/grub` and the kernel from
/// the btrfs subvolumes (core.img with `btrfs`, prefix `(,gptN)/root/boot/grub`).
fn build_btrfs_grub_image(fx: &Fixture) -> Result<NixosImage, String> {
    let (dir, src) = fresh_src(fx, "nixos-btrfs");
    write(&src.join("var/lib/state.txt"), b"state on the root subvolume\n");
    symlink("state.txt", src.join("var/lib/state-link")).unwrap();
    // The closure: kernel, initrd and toplevel.
    let system = FakeSystem {
        kernel: "/nix/store/a0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1",
        initrd: "/nix/store/b0k2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1",
        toplevel: "/nix/store/c1b2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-btrfstest-24.05",
    };
    let spec = serde_json::json!({"disk": {"main": {"imageSize": "384M", "content": {"type": "gpt", "partitions": {
        "boot": {"size": "1M", "type": "EF02", "priority": 0},
        "root": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/root": {"mountpoint": "/"},
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress=zstd", "noatime"]}}}}}}}}});
    let spec_path = dir.join("spec.json");
    write(&spec_path, spec.to_string().as_bytes());
    let number = plan_numbers(&spec_path);
    let root = number("root");
    let mount = |id: &str, opts: &str, mp: &str| Mount::new(id, format!("vda{root}"), "btrfs", opts, mp);
    let mounts = vec![mount("root", "ro,subvol=/root", "/"), mount("nix", "ro,subvol=/nix", "/nix")];

    let store = dir.join("store/nix/store");
    system.write(fx, &store, &mounts, "NixOS 24.05 (Linux 6.1, btrfs boot test)");
    let FakeSystem { kernel, initrd, toplevel } = system;
    let host = |p: &str| store.join(p.trim_start_matches("/nix/store/"));
    chmod(&host(toplevel).join("init"), 0o755);
    symlink(format!("{kernel}/bzImage"), host(toplevel).join("kernel")).unwrap();
    symlink(format!("{initrd}/initrd"), host(toplevel).join("initrd")).unwrap();
    let closure = dir.join("closure");
    closure_info(&closure, &store, &[kernel, initrd, toplevel], &[(toplevel, &[kernel, initrd, toplevel])]);

    let grub = grub_dir(&dir, &format!("(,gpt{root})/root/boot/grub"), "btrfs")?;
    let args = system_args(&closure, &store, toplevel);
    let image = build_with_system(&dir, &spec_path, &src, &args, &grub, "mkdisk build --system (btrfs)");
    // The closure is part of the expected tree: /nix/store as the host store holds it.
    let nix_src = src.join("nix/store");
    fs::create_dir_all(&nix_src).unwrap();
    for p in [kernel, initrd, toplevel] {
        let name = p.trim_start_matches("/nix/store/");
        let st = Command::new("cp").arg("-a").arg(store.join(name)).arg(&nix_src).status().unwrap();
        assert!(st.success());
    }
    Ok(NixosImage::new(fx, src, image, mounts, false))
}

#[test]
fn seabios_boots_grub_from_btrfs_subvolumes() {
    let Some(fx) = fixture() else { return };
    static N: OnceLock<Result<NixosImage, String>> = OnceLock::new();
    let n = match N.get_or_init(|| build_btrfs_grub_image(fx)) {
        Ok(n) => n,
        Err(why) => return skip(why),
    };
    let Some(b) = boot_or_skip(fx, &[&n.image], &n.mounts, "bios", "seabios-grub-btrfs") else { return };
    let init_line = init_line(&b, "SeaBIOS + GRUB (btrfs)");
    // The kernel is read by GRUB from the /nix subvolume: BOOT_IMAGE=(hd0,gptN)/nix/store/….
    assert!(init_line.contains("BOOT_IMAGE=") && init_line.contains("/nix/store/"), "not started by GRUB: {init_line}");
    // Beyond the source: the Nix DB and profiles (nix), /etc/NIXOS, /boot/grub (root).
    let added: &[(&str, &str)] = &[("nix", "./var"), ("root", "./boot"), ("root", "./etc/NIXOS"), ("root", "./nix")];
    // The store as Nix keeps it: /nix/store 1775 root:nixbld (30000); in store paths, dirs 0555,
    // files 0444 or 0555, mtime 1.
    let canonical = |id: &str, path: &str, e: &mut Entry| {
        if id != "nix" {
            return;
        }
        if path == "./store" {
            e.mode = S_IFDIR | 0o1775;
            e.gid = 30000;
        } else if path.starts_with("./store/") {
            e.mtime = 1;
            match e.mode & S_IFMT {
                S_IFDIR => e.mode = S_IFDIR | 0o555,
                S_IFREG => e.mode = S_IFREG | if e.mode & 0o100 != 0 { 0o555 } else { 0o444 },
                _ => {}
            }
        }
    };
    let problems = compare_tree(&n.src, &n.mounts, &b, &n.mounts, added, Some(&canonical));
    assert!(
        problems.is_empty(),
        "{}\nconsole tail:\n{}",
        report("SeaBIOS → GRUB (btrfs)", &problems),
        tail(&b.console)
    );
    assert!(b.mounts["root"].1.contains_key("./boot/grub/grub.cfg"), "no /boot/grub/grub.cfg on the root subvolume");
    let k = b.mounts["nix"].1.iter().find(|(p, _)| p.ends_with("-linux-6.1/bzImage")).map(|(_, e)| e.sha256.clone());
    assert_eq!(k.flatten().as_deref(), Some(n.kernel_sha256.as_str()), "kernel in /nix/store");
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
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
