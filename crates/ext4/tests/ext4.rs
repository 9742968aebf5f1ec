//! Integration tests: build images with mkdisk-ext4 and check them with the real e2fsprogs
//! tools (`e2fsck -fn`, `debugfs`) and the independent checksum verifier.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use mkdisk_ext4::{plan, write, Ext4Error, Ext4Options};
use mkdisk_tree::{scan, DataRun, FileData, Image, InodeId, Kind, Meta, NoProgress, ScanOptions, Source, Timestamp, Tree, Xattr};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const UUID: &str = "11111111-2222-3333-4444-555555555555";

fn opts(size: u64) -> Ext4Options {
    let mut o = Ext4Options::new(size, Uuid::parse_str(UUID).unwrap());
    o.timestamp = 1_700_000_000;
    o
}

fn verifier() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/verify_ext4.py")
}

/// Plan and write `tree` into a fresh sparse image at `path`.
fn build(tree: &Tree, o: &Ext4Options, path: &Path) -> Result<(), Ext4Error> {
    let layout = plan(tree, o)?;
    let image = Image::create(path, o.size_bytes).unwrap();
    write(&layout, tree, &image.whole(), &NoProgress)?;
    image.persist().unwrap();
    Ok(())
}

/// `e2fsck -fn`: exit 0 and nothing on stdout but the pass headers and the summary line.
fn fsck_clean(img: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().expect("run e2fsck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let noise: Vec<&str> = stdout
        .lines()
        .filter(|l| !(l.starts_with("Pass ") || (l.contains(" files (") && l.contains(" blocks"))))
        .collect();
    assert!(
        out.status.code() == Some(0) && noise.is_empty(),
        "e2fsck -fn {}: rc {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        img.display(),
        out.status.code()
    );
}

/// The independent checksum/htree verifier reports no mismatch.
fn verify(img: &Path) {
    let out = Command::new("python3").arg(verifier()).arg(img).output().expect("run verify_ext4.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify_ext4.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok="), "verify_ext4.py checked nothing:\n{stdout}");
}

fn debugfs(img: &Path, req: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(req).arg(img).output().expect("run debugfs");
    assert!(out.status.success(), "debugfs {req}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn meta(perm: u16, sec: i64) -> Meta {
    Meta::new(perm).with_mtime(Timestamp::from_secs(sec))
}

/// A small tree with one of everything.
fn small_tree() -> Tree {
    let mut t = Tree::new(meta(0o755, 1000));
    let etc = t.add_dir(InodeId::ROOT, b"etc", meta(0o755, 1001)).unwrap();
    let f = t.add_file(etc, b"hosts", FileData::from_bytes(&b"127.0.0.1 localhost\n"[..]), meta(0o644, 1002)).unwrap();
    t.add_hardlink(InodeId::ROOT, b"hosts-link", f).unwrap();
    t.add_file(InodeId::ROOT, b"empty", FileData::from_bytes(&b""[..]), meta(0o600, 5)).unwrap();
    t.add_symlink(InodeId::ROOT, b"short", b"etc/hosts", meta(0o777, 7)).unwrap();
    t.add_symlink(InodeId::ROOT, b"long", &[b'x'; 200], meta(0o777, 7)).unwrap();
    t.add(InodeId::ROOT, b"null", Kind::CharDev(0x103), meta(0o666, 8)).unwrap();
    t.add(InodeId::ROOT, b"fifo", Kind::Fifo, meta(0o644, 9)).unwrap();
    t
}

#[test]
fn small_tree_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small.img");
    build(&small_tree(), &opts(64 << 20), &img).unwrap();
    if let Ok(keep) = std::env::var("MKDISK_KEEP") {
        fs::copy(&img, keep).unwrap();
    }
    fsck_clean(&img);
    verify(&img);
}
