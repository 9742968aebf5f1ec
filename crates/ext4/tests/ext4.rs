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

/// Copy `img`, run `e2fsck -fy` on the copy and require that only the superblock fields the
/// doc lists changed (s_wtime, s_lastcheck, s_kbytes_written, s_checksum).
fn fixed_point(img: &Path) {
    let copy = img.with_extension("fy");
    fs::copy(img, &copy).unwrap();
    let out = Command::new("e2fsck").arg("-fy").arg(&copy).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "e2fsck -fy changed something:\n{}", String::from_utf8_lossy(&out.stdout));
    let allowed = |off: u64| {
        let o = off.wrapping_sub(1024);
        (0x30..0x34).contains(&o) || (0x40..0x44).contains(&o) || (0x178..0x180).contains(&o) || (0x3FC..0x400).contains(&o)
    };
    let a = fs::read(img).unwrap_or_default();
    let b = fs::read(&copy).unwrap_or_default();
    assert_eq!(a.len(), b.len());
    let diffs: Vec<u64> = a.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i as u64).collect();
    let bad: Vec<&u64> = diffs.iter().filter(|&&o| !allowed(o)).take(10).collect();
    assert!(bad.is_empty(), "e2fsck -fy changed bytes at {bad:?}");
    fs::remove_file(&copy).unwrap();
}

/// `ls -p` of every directory in one debugfs run: (dir path, name) → (ino, mode, uid, gid).
fn listing(img: &Path, tree: &Tree) -> std::collections::BTreeMap<(String, String), (u32, u32, u32, u32)> {
    let mut dirs = vec!["/".to_string()];
    tree.walk(|p, id, first| -> Result<(), ()> {
        if first && matches!(tree.inode(id).kind, Kind::Dir(_)) {
            dirs.push(String::from_utf8_lossy(p).into_owned());
        }
        Ok(())
    })
    .unwrap();
    let cmds = img.with_extension("cmds");
    let mut f = fs::File::create(&cmds).unwrap();
    for d in &dirs {
        writeln!(f, "ls -p {d}").unwrap();
    }
    drop(f);
    let out = Command::new("debugfs").arg("-f").arg(&cmds).arg(img).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut map = std::collections::BTreeMap::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("debugfs: ls -p ") {
            cur = d.trim_end_matches('/').to_string();
            continue;
        }
        let parts: Vec<&str> = line.split('/').collect();
        if parts.len() >= 7 && parts[0].is_empty() {
            let name = parts[5].to_string();
            if name == "." || name == ".." {
                continue;
            }
            let v = (
                parts[1].parse().unwrap(),
                u32::from_str_radix(parts[2], 8).unwrap(),
                parts[3].parse().unwrap(),
                parts[4].parse().unwrap(),
            );
            map.insert((cur.clone(), name), v);
        }
    }
    fs::remove_file(&cmds).unwrap();
    map
}

/// Read the image back with debugfs and compare with the tree: types, modes, owners, hard-link
/// groups (ls -p), file contents and mtimes (rdump), symlink targets, xattrs (ea_list) and
/// device numbers (stat). Files larger than `max_content` are compared by size only.
fn readback(img: &Path, tree: &Tree, max_content: u64) {
    let list = listing(img, tree);
    let out = tempfile::tempdir().unwrap();
    let r = Command::new("debugfs").arg("-R").arg(format!("rdump / {}", out.path().display())).arg(img).output().unwrap();
    assert!(r.status.success());
    let mut groups: std::collections::BTreeMap<InodeId, std::collections::BTreeSet<u32>> = Default::default();
    let mut checked = 0;
    tree.walk(|p, id, _first| -> Result<(), ()> {
        let path = String::from_utf8_lossy(p).into_owned();
        let (dir, name) = path.rsplit_once('/').unwrap();
        let key = (dir.to_string(), name.to_string());
        let node = tree.inode(id);
        let &(ino, mode, uid, gid) = list.get(&key).unwrap_or_else(|| panic!("{path} missing in ls -p"));
        assert_eq!(mode, u32::from(node.mode()), "{path}: mode");
        assert_eq!((uid, gid), (node.meta.uid, node.meta.gid), "{path}: owner");
        groups.entry(id).or_default().insert(ino);
        let host = out.path().join(&path[1..]);
        match &node.kind {
            Kind::File(fd) => {
                let md = fs::symlink_metadata(&host).unwrap();
                assert_eq!(md.len(), fd.size, "{path}: size");
                assert_eq!(md.mtime(), node.meta.mtime.sec, "{path}: mtime");
                if fd.size <= max_content {
                    assert!(fs::read(&host).unwrap() == mkdisk_tree::read_file(fd).unwrap(), "{path}: content");
                }
            }
            Kind::Dir(_) => {
                let md = fs::symlink_metadata(&host).unwrap();
                assert!(md.is_dir());
                assert_eq!(md.mtime(), node.meta.mtime.sec, "{path}: mtime");
            }
            Kind::Symlink(t) => {
                let got = fs::read_link(&host).unwrap();
                assert_eq!(std::os::unix::ffi::OsStrExt::as_bytes(got.as_os_str()), &t[..], "{path}: target");
            }
            Kind::CharDev(rdev) | Kind::BlockDev(rdev) => {
                let s = debugfs(img, &format!("stat {path}"));
                let (maj, min) = ((rdev >> 8) & 0xfff | (rdev >> 32) & !0xfff, (rdev & 0xff) | ((rdev >> 12) & !0xff));
                assert!(s.contains(&format!("Device major/minor number: {maj:02}:{min:02}")), "{path}: {s}");
            }
            Kind::Fifo | Kind::Socket => {}
        }
        if !node.meta.xattrs.is_empty() {
            let s = debugfs(img, &format!("ea_list {path}"));
            for x in &node.meta.xattrs {
                let want = format!("{} ({})", String::from_utf8_lossy(&x.name), x.value.len());
                assert!(s.contains(&want), "{path}: xattr {want} missing in\n{s}");
            }
        }
        checked += 1;
        Ok(())
    })
    .unwrap();
    for (id, inos) in groups {
        let want = (tree.inode(id).links as usize).div_ceil(65000);
        assert_eq!(inos.len(), want, "hard-link group of {:?} maps to inodes {inos:?}", tree.paths()[id.index()]);
    }
    assert!(checked > 0);
}

fn makedev(maj: u64, min: u64) -> u64 {
    (min & 0xff) | ((maj & 0xfff) << 8) | ((min & !0xff) << 12) | ((maj & !0xfff) << 32)
}

/// The edge-case tree (except the two huge directories, see `huge_directories`).
fn edge_tree(scratch: &Path) -> Tree {
    let mut t = Tree::new(meta(0o755, 1000));
    let r = InodeId::ROOT;
    t.add_file(r, b"empty1", FileData::from_bytes(&b""[..]), meta(0o644, 1)).unwrap();
    t.add_file(r, b"empty2", FileData::from_bytes(&b""[..]), meta(0o444, 2)).unwrap();
    // 5 GiB sparse file with data at both ends.
    let big = scratch.join("sparse");
    let size = 5u64 << 30;
    {
        let f = fs::File::create(&big).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xAB; 12288], 0).unwrap();
        f.write_all_at(&[0xCD; 10000], size - 10000).unwrap();
    }
    let runs = vec![DataRun { offset: 0, len: 12288 }, DataRun { offset: size - 10000, len: 10000 }];
    t.add_file(r, b"sparse", FileData { size, source: Source::Host(big), runs }, meta(0o644, 3)).unwrap();
    t.add_file(r, &[b'n'; 255], FileData::from_bytes(&b"long name"[..]), meta(0o644, 4)).unwrap();
    for len in [1usize, 59, 60, 61, 4095] {
        let target: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        t.add_symlink(r, format!("sym{len}").as_bytes(), &target, meta(0o777, 5)).unwrap();
    }
    t.add(r, b"fifo", Kind::Fifo, meta(0o600, 6)).unwrap();
    t.add(r, b"sock", Kind::Socket, meta(0o755, 6)).unwrap();
    t.add(r, b"null", Kind::CharDev(makedev(1, 3)), meta(0o666, 6)).unwrap();
    t.add(r, b"nvme", Kind::BlockDev(makedev(259, 70000)), meta(0o660, 6)).unwrap();
    let mut m = meta(0o755, 7);
    m.xattrs = vec![
        Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] },
        Xattr { name: b"user.small".to_vec(), value: b"x".to_vec() },
    ];
    t.add_file(r, b"ping", FileData::from_bytes(&b"\x7fELF"[..]), m).unwrap();
    let mut m = meta(0o644, 8);
    m.xattrs = vec![
        Xattr { name: b"trusted.big".to_vec(), value: vec![7; 300] },
        Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() },
        Xattr { name: b"user.big".to_vec(), value: vec![9; 700] },
        Xattr { name: b"user.empty".to_vec(), value: Vec::new() },
    ];
    t.add_file(r, b"many-xattrs", FileData::from_bytes(&b"data"[..]), m).unwrap();
    let mut m = meta(0o2750, 9);
    m.uid = 70000;
    m.gid = 100;
    m.mtime = Timestamp { sec: 1_600_000_000, nsec: 123_456_789 };
    m.xattrs = vec![Xattr { name: b"user.dir".to_vec(), value: b"yes".to_vec() }];
    let owned = t.add_dir(r, b"owned", m).unwrap();
    let mut d = owned;
    for i in 0..30 {
        d = t.add_dir(d, format!("level{i:02}").as_bytes(), meta(0o700, 10 + i)).unwrap();
    }
    let deep = t.add_file(d, b"bottom", FileData::from_bytes(vec![0x5A; 100_000]), meta(0o640, 50)).unwrap();
    t.add_hardlink(r, b"bottom-link", deep).unwrap();
    t.add_hardlink(owned, b"bottom-link2", deep).unwrap();
    // A directory needing a one-level htree, and files with more than 4 extents' worth of data.
    let mid = t.add_dir(r, b"mid", meta(0o755, 11)).unwrap();
    for i in 0..3000 {
        let data: Vec<u8> = format!("file {i}\n").into_bytes();
        t.add_file(mid, format!("some-longer-file-name-{i:05}").as_bytes(), FileData::from_bytes(data), meta(0o444, 1)).unwrap();
    }
    let frag = (0..12u64).map(|i| DataRun { offset: i * 2 * 4096, len: 4096 }).collect();
    let bytes: Vec<u8> = (0..24 * 4096u32).map(|i| if (i / 4096) % 2 == 0 { (i % 251) as u8 } else { 0 }).collect();
    let size = bytes.len() as u64;
    t.add_file(r, b"fragmented", FileData { size, source: Source::Bytes(bytes.into()), runs: frag }, meta(0o644, 12)).unwrap();
    t
}

#[test]
fn edge_case_tree_is_clean_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let tree = edge_tree(dir.path());
    let img = dir.path().join("edge.img");
    build(&tree, &opts(256 << 20), &img).unwrap();
    fsck_clean(&img);
    verify(&img);
    fixed_point(&img);
    readback(&img, &tree, 1 << 20);
    // The sparse file: size, few blocks, both ends intact.
    let s = debugfs(&img, "stat /sparse");
    assert!(s.contains("Size: 5368709120"), "{s}");
    assert!(s.contains("Blockcount: 48\n"), "{s}");
    let image = fs::read(&img).unwrap();
    for (lblk, byte) in [(0u64, 0xABu8), (5 * 262_144 - 1, 0xCD)] {
        let b = debugfs(&img, &format!("bmap /sparse {lblk}"));
        let pblk: usize = b.trim().parse().unwrap();
        let at = pblk * 4096 + if byte == 0xCD { 4096 - 10000 % 4096 } else { 0 };
        assert_eq!(image[at], byte, "sparse block {lblk}");
    }
    // Fast vs slow symlinks.
    assert!(debugfs(&img, "stat /sym59").contains("Fast link dest"));
    assert!(!debugfs(&img, "stat /sym60").contains("Fast link dest"));
    // The 3000-entry directory is indexed.
    assert!(debugfs(&img, "stat /mid").contains("Flags: 0x81000"));
}

#[test]
fn huge_directories_and_link_groups() {
    let mut t = Tree::new(meta(0o755, 1));
    let big = t.add_dir(InodeId::ROOT, b"big", meta(0o755, 1)).unwrap();
    for i in 0..100_000 {
        t.add_file(big, format!("entry-{i:06}-with-padding").as_bytes(), FileData::from_bytes(&b""[..]), meta(0o444, 1))
            .unwrap();
    }
    let links = t.add_dir(InodeId::ROOT, b"links", meta(0o755, 1)).unwrap();
    let target = t.add_file(links, b"a-target", FileData::from_bytes(&b"shared\n"[..]), meta(0o444, 1)).unwrap();
    for i in 0..69_999 {
        t.add_hardlink(links, format!("l{i:05}").as_bytes(), target).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("huge.img");
    build(&t, &opts(512 << 20), &img).unwrap();
    fsck_clean(&img);
    verify(&img);
    fixed_point(&img);
    let s = debugfs(&img, "htree_dump /big");
    assert!(s.contains("Indirect levels: 1"), "{}", &s[..s.len().min(2000)]);
    let a = debugfs(&img, "stat /links/a-target");
    assert!(a.contains("Links: 65000"), "{a}");
    let b = debugfs(&img, "stat /links/l69998");
    assert!(b.contains("Links: 5000"), "{b}");
}
