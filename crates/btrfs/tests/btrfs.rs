//! Integration tests: build images with mkdisk-btrfs and check them with btrfs-progs
//! (`btrfs check --readonly --check-data-csum`, `btrfs restore`, `dump-tree`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mkdisk_btrfs::{plan, write, BtrfsError, BtrfsLayout, BtrfsOptions, Compress, CsumType, SubvolSpec};
use mkdisk_tree::{scan, DataRun, FileData, Image, InodeId, Kind, Meta, NoProgress, ScanOptions, Source, Timestamp, Tree, Xattr};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const UUID: &str = "11111111-2222-3333-4444-555555555555";
const MIB: u64 = 1 << 20;

fn opts(size: u64) -> BtrfsOptions {
    let mut o = BtrfsOptions::new(size, Uuid::parse_str(UUID).unwrap());
    o.timestamp = 1_700_000_000;
    o
}

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools")
}

fn heavy() -> bool {
    std::env::var_os("MKDISK_HEAVY").is_some_and(|v| v == "1")
}

/// Plan and write into a fresh sparse image.
fn build(top: &Tree, subs: &[SubvolSpec], o: &BtrfsOptions, path: &Path) -> Result<BtrfsLayout, BtrfsError> {
    let layout = plan(top, subs, o)?;
    let image = Image::create(path, o.size_bytes).unwrap();
    write(&layout, &image.whole(), &NoProgress)?;
    image.persist().unwrap();
    Ok(layout)
}

/// `btrfs check --readonly --check-data-csum`: exit 0 and no error lines.
fn check_clean(img: &Path) {
    let out = Command::new("btrfs")
        .args(["check", "--readonly", "--check-data-csum"])
        .arg(img)
        .output()
        .expect("run btrfs check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = stderr.lines().chain(stdout.lines()).any(|l| {
        let l = l.to_lowercase();
        l.contains("error") && !l.contains("no error found") || l.contains("wrong") || l.contains("mismatch") || l.contains("corrupt")
    });
    assert!(
        out.status.success() && !bad && stdout.contains("no error found"),
        "btrfs check {}: rc {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        img.display(),
        out.status.code()
    );
}

fn dump_tree(img: &Path, tree: Option<&str>) -> String {
    let mut c = Command::new("btrfs");
    c.args(["inspect-internal", "dump-tree"]);
    if let Some(t) = tree {
        c.args(["-t", t]);
    }
    let out = c.arg(img).output().expect("dump-tree");
    assert!(out.status.success(), "dump-tree: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `btrfs restore -S -x [-r root]` into a fresh directory.
fn restore(img: &Path, root: Option<u64>, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let mut c = Command::new("btrfs");
    c.args(["restore", "-S", "-x", "-i"]);
    if let Some(r) = root {
        c.args(["-r", &r.to_string()]);
    }
    let out = c.arg(img).arg(dest).output().expect("btrfs restore");
    assert!(
        out.status.success(),
        "btrfs restore: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(path: &Path) -> String {
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

/// Compare a restored directory against the tree: names, file bytes, symlink targets, xattrs
/// (`btrfs restore` skips device nodes, FIFOs and sockets). Returns the number compared.
fn compare(tree: &Tree, dir: InodeId, host: &Path) -> usize {
    let mut n = 0;
    let d = tree.inode(dir).as_dir().unwrap();
    for e in &d.entries {
        let name = std::ffi::OsStr::from_encoded_bytes_unchecked_safe(&e.name);
        let p = host.join(name);
        let ino = tree.inode(e.inode);
        match &ino.kind {
            Kind::Dir(_) => {
                assert!(p.is_dir(), "{} missing", p.display());
                n += 1 + compare(tree, e.inode, &p);
            }
            Kind::File(fd) => {
                let got = fs::read(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                let want = mkdisk_tree::read_file(fd).unwrap();
                let want_len = usize::try_from(fd.size).unwrap();
                assert_eq!(got.len(), want_len, "{} size", p.display());
                assert!(got[..] == want[..want_len.min(want.len())] || want.len() < want_len, "{} content", p.display());
                n += 1;
            }
            Kind::Symlink(t) => {
                let got = fs::read_link(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                assert_eq!(got.as_os_str().as_encoded_bytes(), &t[..], "{} target", p.display());
                n += 1;
            }
            _ => continue,
        }
        if !matches!(ino.kind, Kind::Symlink(_)) {
            for x in &ino.meta.xattrs {
                let name = String::from_utf8_lossy(&x.name).into_owned();
                let out = Command::new("getfattr").args(["--only-values", "-h", "-n", &name]).arg(&p).output();
                if let Ok(out) = out {
                    if out.status.success() {
                        assert_eq!(out.stdout, x.value, "{} xattr {name}", p.display());
                    }
                }
            }
        }
    }
    n
}

trait OsStrExt2 {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr;
}
impl OsStrExt2 for std::ffi::OsStr {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

fn meta(perm: u16) -> Meta {
    Meta::new(perm).with_mtime(Timestamp { sec: 1_600_000_000, nsec: 123_456_789 })
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8)).collect()
}

/// A small tree with every inode kind.
fn small_tree() -> Tree {
    let mut t = Tree::new(meta(0o755));
    let r = InodeId::ROOT;
    let d = t.add_dir(r, b"dir", meta(0o750)).unwrap();
    let sub = t.add_dir(d, b"sub", meta(0o700)).unwrap();
    t.add_file(r, b"empty", FileData::from_bytes(Vec::new()), meta(0o644)).unwrap();
    t.add_file(r, b"small", FileData::from_bytes(b"hello btrfs\n".to_vec()), meta(0o644)).unwrap();
    t.add_file(r, b"inline-max", FileData::from_bytes(bytes(2048, 1)), meta(0o644)).unwrap();
    t.add_file(r, b"just-over", FileData::from_bytes(bytes(2049, 2)), meta(0o600)).unwrap();
    let big = t.add_file(d, b"big", FileData::from_bytes(bytes(3 * 1024 * 1024 + 17, 3)), meta(0o644)).unwrap();
    t.add_file(sub, b"zeros", FileData::from_bytes(vec![0u8; 300_000]), meta(0o644)).unwrap();
    t.add_hardlink(r, b"big-link", big).unwrap();
    t.add_hardlink(sub, b"big-link2", big).unwrap();
    t.add_symlink(r, b"link", b"dir/big", meta(0o777)).unwrap();
    t.add_symlink(r, b"longlink", &[b'x'; 3000], meta(0o777)).unwrap();
    t.add(r, b"fifo", Kind::Fifo, meta(0o644)).unwrap();
    t.add(r, b"sock", Kind::Socket, meta(0o644)).unwrap();
    t.add(r, b"null", Kind::CharDev(0x0103), meta(0o666)).unwrap();
    t.add(r, b"loop0", Kind::BlockDev(0x0700), meta(0o660)).unwrap();
    let x = t.add_file(r, b"xattrs", FileData::from_bytes(b"x".to_vec()), meta(0o644)).unwrap();
    t.meta_mut(x).xattrs = vec![
        Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() },
        Xattr { name: b"user.big".to_vec(), value: vec![7u8; 3000] },
    ];
    t.meta_mut(d).xattrs = vec![Xattr { name: b"user.dir".to_vec(), value: b"d".to_vec() }];
    t.add_file(r, &[b'n'; 255], FileData::from_bytes(b"long name".to_vec()), meta(0o644)).unwrap();
    t
}

#[test]
fn small_tree_check_clean_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("small.img");
    let t = small_tree();
    build(&t, &[], &opts(256 * MIB), &img).unwrap();
    check_clean(&img);
    let out = tmp.path().join("out");
    restore(&img, None, &out);
    assert!(compare(&t, InodeId::ROOT, &out) >= 10);
}
