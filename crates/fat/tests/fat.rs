//! Integration tests: build FAT volumes from host trees and check them with the real tools
//! (`fsck.fat`, mtools' `mcopy`) and the `fatfs` crate as a read-back oracle.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mkdisk_fat::{plan, write, FatError, FatLayout, FatOptions, FatType};
use mkdisk_tree::{scan, FileData, Meta, NoProgress, Region, ScanOptions, Timestamp, Tree};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

/// What a read-back must show: path → (Some(content sha256) | None for dirs, mtime secs).
type Expect = BTreeMap<String, (Option<[u8; 32]>, i64)>;

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// FAT time of a Unix time: clamped to 1980..2107, rounded down to even seconds.
fn fat_secs(sec: i64) -> i64 {
    let s = sec.clamp(315_532_800, 4_354_819_198);
    s - s.rem_euclid(2)
}

fn mtime_secs(md: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.mtime()
}

/// Expected contents of a host tree (relative paths with a leading '/').
fn expect_host(root: &Path) -> Expect {
    fn walk(dir: &Path, prefix: &str, out: &mut Expect) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let rel = format!("{prefix}/{}", n.to_str().unwrap());
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(rel.clone(), (None, fat_secs(mtime_secs(&md))));
                walk(&p, &rel, out);
            } else {
                out.insert(rel, (Some(sha(&fs::read(&p).unwrap())), fat_secs(mtime_secs(&md))));
            }
        }
    }
    let mut out = Expect::new();
    walk(root, "", &mut out);
    out
}

/// Build `tree` into a fresh image file of `opts.size_bytes` (pre-filled with 0xD1 when
/// `poison`), at offset `offset` inside the file.
fn build_at(tree: &Tree, opts: &FatOptions, path: &Path, poison: bool, offset: u64) -> FatLayout {
    let layout = plan(tree, opts).unwrap();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    if poison {
        let chunk = vec![0xD1u8; MIB as usize];
        let mut left = opts.size_bytes + offset;
        let mut w = std::io::BufWriter::new(&f);
        while left > 0 {
            let n = left.min(MIB);
            w.write_all(&chunk[..n as usize]).unwrap();
            left -= n;
        }
        w.flush().unwrap();
    } else {
        f.set_len(opts.size_bytes + offset).unwrap();
    }
    let region = Region::from_file(Arc::new(f), "esp", offset, opts.size_bytes);
    write(&layout, tree, &region, &NoProgress).unwrap();
    layout
}

fn build(tree: &Tree, opts: &FatOptions, path: &Path, poison: bool) -> FatLayout {
    build_at(tree, opts, path, poison, 0)
}

/// `fsck.fat -n -v`: exit 0 and nothing that looks like a complaint.
fn fsck(img: &Path) -> String {
    let out = Command::new("fsck.fat").arg("-n").arg("-v").arg(img).output().expect("fsck.fat runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fsck.fat failed ({}):\n{text}", out.status);
    for bad in [
        "arning", "differ", "uninitialized", "wrong", "Bad", "bad", "Dirty", "dirty", "Reclaim", "Expected",
        "share", "Fixing", "Duplicate", "abel", "Free cluster", "truncat", "chain", "Invalid", "invalid",
        "Unable", "Perform", "Leaving", "Correct", "Orphan", "Deleting", "Contains",
    ] {
        assert!(!text.contains(bad), "fsck.fat output contains {bad:?}:\n{text}");
    }
    text
}

fn main_line_files(text: &str) -> u64 {
    // "<img>: N files, U/C clusters"
    let line = text.lines().find(|l| l.contains(" files, ")).expect("summary line");
    line.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
}

/// Read the volume back with `mcopy -s -m` into a temp dir and list it.
fn read_mcopy(img: &Path, work: &Path) -> Expect {
    let out = work.join("mcopy-out");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let list = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .args(["-b", "-i"])
        .arg(img)
        .arg("::/")
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&list.stdout).trim().is_empty() {
        let st = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("TZ", "UTC")
            .args(["-s", "-m", "-n", "-Q", "-i"])
            .arg(img)
            .arg("::/*")
            .arg(&out)
            .output()
            .unwrap();
        assert!(st.status.success(), "mcopy failed: {}", String::from_utf8_lossy(&st.stderr));
    }
    expect_host(&out)
}

/// Read the volume back with the `fatfs` crate.
fn read_fatfs(img: &Path) -> Expect {
    fn walk<T: fatfs::ReadWriteSeek>(dir: fatfs::Dir<'_, T>, prefix: &str, out: &mut Expect) {
        for e in dir.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let p = format!("{prefix}/{name}");
            let m = e.modified();
            let secs = civil_to_unix(
                i64::from(m.date.year),
                i64::from(m.date.month),
                i64::from(m.date.day),
                i64::from(m.time.hour) * 3600 + i64::from(m.time.min) * 60 + i64::from(m.time.sec),
            );
            if e.is_dir() {
                out.insert(p.clone(), (None, secs));
                walk(e.to_dir(), &p, out);
            } else {
                let mut data = Vec::new();
                e.to_file().read_to_end(&mut data).unwrap();
                assert_eq!(data.len() as u64, e.len());
                out.insert(p, (Some(sha(&data)), secs));
            }
        }
    }
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
    let mut out = Expect::new();
    walk(fs.root_dir(), "", &mut out);
    out
}

fn civil_to_unix(y: i64, m: i64, d: i64, secs: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400 + secs
}

fn assert_same(what: &str, got: &Expect, want: &Expect) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk.len(), wk.len(), "{what}: entry count");
    assert_eq!(gk, wk, "{what}: names");
    for (k, (c, t)) in want {
        let (gc, gt) = &got[k];
        assert_eq!(gc, c, "{what}: content of {k}");
        if c.is_some() {
            assert_eq!(gt, t, "{what}: mtime of {k}");
        }
    }
}

/// fsck, mcopy and fatfs all agree with the host tree.
fn check_all(img: &Path, host: &Path, work: &Path) -> String {
    let text = fsck(img);
    let want = expect_host(host);
    assert_same("fatfs", &read_fatfs(img), &want);
    assert_same("mcopy", &read_mcopy(img, work), &want);
    assert_eq!(main_line_files(&text), want.len() as u64 + 1, "{text}");
    text
}

fn scan_host(dir: &Path) -> Tree {
    scan(dir, &ScanOptions::default()).unwrap()
}

fn set_mtime(p: &Path, secs: u64) {
    let f = File::options().write(true).open(p).or_else(|_| File::open(p)).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

/// Deterministic pseudo-random bytes (fast enough for tens of MiB in debug builds).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_file(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// An ESP: EFI/BOOT/BOOTX64.EFI, loader entries, a 40 MiB and a 15 MiB file.
fn esp_tree(root: &Path, big: bool) {
    write_file(&root.join("EFI/BOOT/BOOTX64.EFI"), &pattern(300 * 1024, 1));
    write_file(&root.join("EFI/systemd/systemd-bootx64.efi"), &pattern(123_457, 2));
    write_file(&root.join("loader/loader.conf"), b"timeout 3\ndefault nixos-*\n");
    for i in 0..5 {
        write_file(&root.join(format!("loader/entries/nixos-generation-{i}.conf")), format!("title NixOS {i}\n").as_bytes());
    }
    if big {
        write_file(&root.join("EFI/nixos/kernel-6.6-bzImage.efi"), &pattern(15 * MIB as usize, 3));
        write_file(&root.join("EFI/nixos/initrd-6.6.efi"), &pattern(40 * MIB as usize, 4));
    }
    fs::create_dir_all(root.join("EFI/Linux")).unwrap();
    set_mtime(&root.join("loader/loader.conf"), 1);
}

#[test]
fn esp_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, false);
    let tree = scan_host(&host);
    let img = tmp.path().join("esp.img");
    let opts = FatOptions { size_bytes: 64 * MIB, volume_id: 0x1234_ABCD, label: None, ..FatOptions::default() };
    let layout = build(&tree, &opts, &img, true);
    assert_eq!(layout.fat_type(), FatType::Fat32);
    check_all(&img, &host, tmp.path());
}
