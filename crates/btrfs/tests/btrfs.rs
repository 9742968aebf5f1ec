//! Integration tests: build images with mkdisk-btrfs and check them with btrfs-progs
//! (`btrfs check --readonly --check-data-csum`, `btrfs restore`, `dump-tree`).

mod common;

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mkdisk_btrfs::{write, BtrfsError, BtrfsLayout, BtrfsOptions, Compress, CsumType, SubvolSpec};
use mkdisk_tree::{scan, DataRun, FileData, Image, InodeId, Kind, NoProgress, ScanOptions, Source, Tree, Xattr};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use common::{base_tree, bytes, meta, opts, prepare_and_plan, MIB};
use mkdisk_testkit::{noise, poisoned_file};

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools")
}

/// The `btrfs` tool: `MKDISK_BTRFS_PROGS` (say, an unpacked btrfs-progs 6.14) or the one on PATH.
fn btrfs_cmd() -> Command {
    Command::new(std::env::var_os("MKDISK_BTRFS_PROGS").unwrap_or_else(|| "btrfs".into()))
}

fn heavy() -> bool {
    std::env::var_os("MKDISK_HEAVY").is_some_and(|v| v == "1")
}

/// Plan and write into a fresh sparse image.
fn build(top: &Tree, subs: &[SubvolSpec<'_>], o: &BtrfsOptions, path: &Path) -> Result<BtrfsLayout, BtrfsError> {
    let layout = prepare_and_plan(top, subs, o)?;
    let image = Image::create(path, o.size_bytes).unwrap();
    write(&layout, &image.whole(), &NoProgress)?;
    image.persist().unwrap();
    Ok(layout)
}

/// `btrfs check --readonly --check-data-csum`: exit 0 and no error lines.
fn check_clean(img: &Path) {
    let out =
        btrfs_cmd().args(["check", "--readonly", "--check-data-csum"]).arg(img).output().expect("run btrfs check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = stderr.lines().chain(stdout.lines()).any(|l| {
        let l = l.to_lowercase();
        l.contains("error") && !l.contains("no error found")
            || l.contains("wrong")
            || l.contains("mismatch")
            || l.contains("corrupt")
    });
    assert!(
        out.status.success() && !bad && stdout.contains("no error found"),
        "btrfs check {}: rc {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        img.display(),
        out.status.code()
    );
}

fn dump_tree(img: &Path, tree: Option<&str>) -> String {
    let mut c = btrfs_cmd();
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
    let mut c = btrfs_cmd();
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
                same_content(fd, &p);
                n += 1;
            }
            Kind::Symlink(t) => {
                let got = fs::read_link(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                assert_eq!(got.as_os_str().as_encoded_bytes(), &t[..], "{} target", p.display());
                n += 1;
            }
            _ => continue,
        }
        // btrfs restore -x sets xattrs on regular files only.
        if matches!(ino.kind, Kind::File(_)) {
            for x in &ino.meta.xattrs {
                let name = String::from_utf8_lossy(&x.name).into_owned();
                let mut buf = vec![0u8; 65536];
                let n = rustix::fs::lgetxattr(&p, name.as_str(), &mut buf[..])
                    .unwrap_or_else(|e| panic!("{} xattr {name}: {e}", p.display()));
                assert_eq!(&buf[..n], &x.value[..], "{} xattr {name}", p.display());
            }
        }
    }
    n
}

/// Stream-compare a restored file with its source (holes read as zeros).
fn same_content(fd: &FileData, p: &Path) {
    use std::os::unix::fs::FileExt as _;
    let got = fs::File::open(p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
    assert_eq!(got.metadata().unwrap().len(), fd.size, "{} size", p.display());
    let host = match &fd.source {
        Source::Host(h) => Some(fs::File::open(h).unwrap()),
        Source::Bytes(_) => None,
    };
    let chunk = 4u64 << 20;
    let mut a = vec![0u8; chunk as usize];
    let mut b = vec![0u8; chunk as usize];
    let mut off = 0u64;
    while off < fd.size {
        let n = (fd.size - off).min(chunk) as usize;
        got.read_exact_at(&mut a[..n], off).unwrap();
        match (&fd.source, &host) {
            (Source::Bytes(bytes), _) => b[..n].copy_from_slice(&bytes[off as usize..off as usize + n]),
            (_, Some(h)) => h.read_exact_at(&mut b[..n], off).unwrap(),
            _ => unreachable!(),
        }
        assert!(a[..n] == b[..n], "{} content differs in [{off}, +{n})", p.display());
        off += n as u64;
    }
}

trait OsStrExt2 {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr;
}
impl OsStrExt2 for std::ffi::OsStr {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// A small tree with every inode kind.
fn small_tree() -> Tree {
    let (mut t, d, sub) = base_tree();
    let r = InodeId::ROOT;
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
    // Things restore skips: devices (kernel rdev encoding), FIFOs, sockets, directory xattrs.
    let fs5 = dump_tree(&img, Some("5"));
    assert!(fs5.contains("mode 20666") && fs5.contains("rdev 1048579"), "char 1:3 → (1 << 20) | 3");
    assert!(fs5.contains("mode 60660") && fs5.contains("rdev 7340032"), "block 7:0 → 7 << 20");
    assert!(fs5.contains("mode 10644") && fs5.contains("mode 140644"));
    assert!(fs5.contains("name: user.dir") && fs5.contains("transid 1 data_len 1 name_len 8"));
    assert!(fs5.contains("mtime 1600000000.123456789"), "nanosecond mtime");
}

fn restore_compare(img: &Path, root: Option<u64>, tree: &Tree, tmp: &Path, name: &str) -> usize {
    let out = tmp.join(name);
    restore(img, root, &out);
    compare(tree, InodeId::ROOT, &out)
}

/// Read every zstd extent the plan made from the image and decode it the way the kernel does:
/// one frame, window log at most 17, output ≤ 128 KiB.
fn kernel_zstd_rules(layout: &BtrfsLayout, img: &Path) -> usize {
    use std::os::unix::fs::FileExt as _;
    let f = fs::File::open(img).unwrap();
    let mut n = 0;
    for (phys, disk_len, ram_len) in layout.compressed_extent_ranges() {
        let mut buf = vec![0u8; usize::try_from(disk_len).unwrap()];
        f.read_exact_at(&mut buf, phys).unwrap();
        assert_eq!(&buf[..4], &[0x28, 0xB5, 0x2F, 0xFD], "zstd magic at {phys}");
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(17)).unwrap();
        let flen = zstd::zstd_safe::find_frame_compressed_size(&buf).unwrap_or_else(|e| panic!("frame at {phys}: {e}"));
        assert!(buf[flen..].iter().all(|&b| b == 0), "padding after the frame at {phys}");
        let out = d.decompress(&buf[..flen], 128 * 1024).unwrap_or_else(|e| panic!("frame at {phys}: {e}"));
        assert!(out.len() as u64 <= ram_len && ram_len <= 128 * 1024);
        n += 1;
    }
    n
}

#[test]
fn compress_force_zstd_small_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("z.img");
    let t = small_tree();
    let mut o = opts(256 * MIB);
    o.compress = mkdisk_btrfs::parse_mount_options(&["compress-force=zstd".to_string()]).unwrap();
    let layout = build(&t, &[], &o, &img).unwrap();
    assert!(layout.compressed_extents() > 0);
    check_clean(&img);
    assert!(kernel_zstd_rules(&layout, &img) > 0);
    assert!(restore_compare(&img, None, &t, tmp.path(), "out") >= 10);
    let super_dump = btrfs_cmd().args(["inspect-internal", "dump-super"]).arg(&img).output().unwrap();
    let s = String::from_utf8_lossy(&super_dump.stdout);
    assert!(s.contains("COMPRESS_ZSTD"), "{s}");
}

#[test]
fn compress_heuristic_keeps_incompressible_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("c.img");
    let mut t = Tree::new(meta(0o755));
    // Pseudo-random (incompressible) data and compressible data.
    let noise = noise(600_000, 0x1234_5678);
    t.add_file(InodeId::ROOT, b"noise", FileData::from_bytes(noise), meta(0o644)).unwrap();
    t.add_file(InodeId::ROOT, b"text", FileData::from_bytes(b"abcdefgh".repeat(100_000)), meta(0o644)).unwrap();
    let mut o = opts(128 * MIB);
    o.compress = Some(Compress::Zstd { level: 3, force: false });
    let layout = build(&t, &[], &o, &img).unwrap();
    // "text" is 800,000 bytes in 7 chunks, all compressible; "noise" none.
    assert_eq!(layout.compressed_extents(), 7);
    check_clean(&img);
    kernel_zstd_rules(&layout, &img);
    restore_compare(&img, None, &t, tmp.path(), "out");
}

#[test]
fn csum_types_check_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let t = small_tree();
    for name in ["xxhash", "sha256", "blake2"] {
        let img = tmp.path().join(format!("{name}.img"));
        let mut o = opts(128 * MIB);
        o.apply_extra_args(&["--csum".to_string(), name.to_string(), "-f".to_string()]).unwrap();
        o.apply_extra_args(&["-L".to_string(), format!("label-{name}")]).unwrap();
        assert_ne!(o.csum, CsumType::Crc32c);
        build(&t, &[], &o, &img).unwrap();
        check_clean(&img);
        let sup = btrfs_cmd().args(["inspect-internal", "dump-super"]).arg(&img).output().unwrap();
        let sup = String::from_utf8_lossy(&sup.stdout);
        assert!(sup.contains(&format!("label\t\t\tlabel-{name}")) || sup.contains(&format!("label-{name}")), "{sup}");
        assert!(sup.contains(&format!("csum_type\t\t{}", o.csum.code())), "{sup}");
        restore_compare(&img, None, &t, tmp.path(), name);
        kernel_compare(&img, "ro", &t);
    }
}

fn tree_with(files: &[(&str, &[u8])]) -> Tree {
    let mut t = Tree::new(meta(0o755));
    for (path, data) in files {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let d = t.mkdir_p(dir.as_bytes(), &meta(0o755)).unwrap();
        t.add_file(d, name.as_bytes(), FileData::from_bytes(data.to_vec()), meta(0o644)).unwrap();
    }
    t
}

/// The disko example: `/root` mounted at `/`, `/nix` with `compress=zstd`.
#[test]
fn disko_btrfs_subvolumes() {
    let json: String =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/disko/btrfs-subvolumes.json"))
            .unwrap();
    assert!(json.contains("\"/nix\"") && json.contains("\"/root\"") && json.contains("compress=zstd"));
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("sub.img");
    let root = tree_with(&[("etc/hostname", b"host\n"), ("etc/big", &bytes(500_000, 9)), ("home/u/.profile", b"x")]);
    let nix =
        tree_with(&[("store/abc-hello/bin/hello", &b"#!/bin/sh\necho hello\n".repeat(20_000)), ("var/db", b"db")]);
    let subs = vec![
        SubvolSpec { path: "/root".into(), tree: Cow::Borrowed(&root), compress: None },
        SubvolSpec {
            path: "/nix".into(),
            tree: Cow::Borrowed(&nix),
            compress: mkdisk_btrfs::parse_mount_options(&["compress=zstd".into(), "noatime".into()]).unwrap(),
        },
    ];
    let mut o = opts(512 * MIB);
    o.apply_extra_args(&["-f".to_string()]).unwrap();
    let layout = build(&Tree::new(meta(0o755)), &subs, &o, &img).unwrap();
    assert!(layout.compressed_extents() > 0);
    check_clean(&img);
    kernel_zstd_rules(&layout, &img);
    // Sorted paths: nix = 256, root = 257.
    restore_compare(&img, Some(256), &nix, tmp.path(), "nix");
    restore_compare(&img, Some(257), &root, tmp.path(), "root");
    let rt = dump_tree(&img, Some("root"));
    assert!(rt.contains("ROOT_REF 256") && rt.contains("ROOT_REF 257") && rt.contains("ROOT_BACKREF 5"), "{rt}");
    let top = dump_tree(&img, Some("5"));
    assert!(top.contains("name: nix") && top.contains("name: root"), "{top}");
    kernel_compare(&img, "ro,subvol=/root", &root);
    kernel_compare(&img, "ro,subvol=/nix", &nix);
}

#[test]
fn nested_subvolumes_and_default() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("nested.img");
    let top = tree_with(&[("readme", b"top level")]);
    let mut a = tree_with(&[("file-a", b"a")]);
    a.add_dir(InodeId::ROOT, b"b", meta(0o700)).unwrap(); // the mount point, replaced by a/b
    let b = tree_with(&[("file-b", &bytes(10_000, 4))]);
    let home = tree_with(&[("user/notes", b"notes")]);
    let deep = tree_with(&[("x", b"x")]);
    let subs = vec![
        SubvolSpec { path: "a".into(), tree: Cow::Borrowed(&a), compress: None },
        SubvolSpec {
            path: "a/b".into(),
            tree: Cow::Borrowed(&b),
            compress: Some(Compress::Zstd { level: 15, force: true }),
        },
        SubvolSpec { path: "@home".into(), tree: Cow::Borrowed(&home), compress: None },
        SubvolSpec { path: "x/y/deep".into(), tree: Cow::Borrowed(&deep), compress: None },
    ];
    let mut o = opts(256 * MIB);
    o.apply_extra_args(&["--subvol".into(), "default:@home".into(), "--subvol=ro:a/b".into()]).unwrap();
    assert_eq!(o.default_subvolume.as_deref(), Some("@home"));
    build(&top, &subs, &o, &img).unwrap();
    check_clean(&img);
    // Ids in sorted path order: @home 256, a 257, a/b 258, x/y/deep 259.
    restore_compare(&img, Some(256), &home, tmp.path(), "home");
    restore_compare(&img, Some(258), &b, tmp.path(), "b");
    restore_compare(&img, Some(259), &deep, tmp.path(), "deep");
    let rt = dump_tree(&img, Some("root"));
    assert!(rt.contains("ROOT_BACKREF 257"), "a/b's parent is a: {rt}");
    assert!(rt.contains("location key (256 ROOT_ITEM 0)"), "default → @home: {rt}");
    assert_eq!(rt.matches("flags 0x1(RDONLY)").count(), 1, "a/b is read-only: {rt}");
    let s = btrfs_cmd().args(["inspect-internal", "dump-super"]).arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&s.stdout).contains("DEFAULT_SUBVOL"));
    kernel_compare(&img, "ro", &home);
    kernel_compare(&img, "ro,subvol=/a/b", &b);
    kernel_compare(&img, "ro,subvol=/x/y/deep", &deep);
}

#[test]
fn subvolume_errors() {
    let t = Tree::new(meta(0o755));
    let sub = |p: &str| SubvolSpec { path: p.into(), tree: Cow::Owned(Tree::new(meta(0o755))), compress: None };
    let o = opts(256 * MIB);
    assert!(matches!(prepare_and_plan(&t, &[sub("a"), sub("/a/")], &o), Err(BtrfsError::DuplicateSubvolume { .. })));
    assert!(matches!(prepare_and_plan(&t, &[sub("")], &o), Err(BtrfsError::BadSubvolume { .. })));
    assert!(matches!(prepare_and_plan(&t, &[sub("../x")], &o), Err(BtrfsError::BadSubvolume { .. })));
    let f = tree_with(&[("file", b"f"), ("full/x", b"x")]);
    assert!(matches!(prepare_and_plan(&f, &[sub("file")], &o), Err(BtrfsError::BadSubvolume { .. })));
    assert!(matches!(prepare_and_plan(&f, &[sub("full")], &o), Err(BtrfsError::BadSubvolume { .. })));
    assert!(matches!(prepare_and_plan(&f, &[sub("file/x")], &o), Err(BtrfsError::BadSubvolume { .. })));
    let mut m = Tree::new(meta(0o755));
    m.add_dir(InodeId::ROOT, b"mnt", meta(0o700)).unwrap();
    assert!(prepare_and_plan(&m, &[sub("mnt")], &o).is_ok(), "an empty mount-point directory becomes the subvolume");
    let long = "n".repeat(256);
    assert!(matches!(prepare_and_plan(&t, &[sub(&long)], &o), Err(BtrfsError::NameTooLong { .. })));
    let mut o2 = opts(256 * MIB);
    o2.default_subvolume = Some("nope".into());
    assert!(matches!(prepare_and_plan(&t, &[sub("a")], &o2), Err(BtrfsError::BadSubvolume { .. })));
}

#[test]
fn errors_are_named() {
    // Content over the partition, with sizes.
    let t = tree_with(&[("big", &bytes(60 * 1024 * 1024, 1))]);
    match prepare_and_plan(&t, &[], &opts(64 * MIB)).map(|_| ()) {
        Err(BtrfsError::DoesNotFit { needed, available }) => assert!(needed > available && available == 64 * MIB),
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    // Names over 255 bytes.
    let mut t = Tree::new(meta(0o755));
    t.add_file(InodeId::ROOT, &[b'a'; 256], FileData::from_bytes(b"x".to_vec()), meta(0o644)).unwrap();
    match prepare_and_plan(&t, &[], &opts(256 * MIB)).map(|_| ()) {
        Err(e @ BtrfsError::NameTooLong { .. }) => assert!(e.to_string().contains("256 bytes")),
        other => panic!("expected NameTooLong, got {other:?}"),
    }
    // Unsupported extraArgs.
    let mut o = opts(256 * MIB);
    let e = o.apply_extra_args(&["--mixed".to_string()]).unwrap_err();
    assert!(e.to_string().contains("--mixed"), "{e}");
    assert!(o.apply_extra_args(&["-m".into(), "raid1".into()]).is_err());
    assert!(o.apply_extra_args(&["--csum".into(), "md5".into()]).is_err());
    o.apply_extra_args(&["-L".into(), "nixos".into(), "--csum=xxhash".into(), "-f".into()]).unwrap();
    assert_eq!(o.label.as_deref(), Some("nixos"));
    assert_eq!(o.csum, CsumType::Xxhash64);
    // Mount options.
    let p = |v: &[&str]| mkdisk_btrfs::parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(p(&["compress-force=zstd"]).unwrap(), Some(Compress::Zstd { level: 3, force: true }));
    assert_eq!(p(&["noatime,compress=zstd:7"]).unwrap(), Some(Compress::Zstd { level: 7, force: false }));
    assert!(p(&["defaults", "compress=lzo"]).is_err(), "lzo is refused, not ignored");
    assert_eq!(p(&["defaults", "noatime"]).unwrap(), None);
    assert!(p(&["compress=zstd:99"]).is_err());
}

/// Sparse 5 GiB file, `links` hard links in one directory (INODE_EXTREF overflow), 255-byte
/// names, long symlinks, FIFOs, device nodes, xattrs, a `dir_entries`-entry directory.
fn edge_tree(tmp: &Path, n_links: u32, dir_entries: u32) -> Tree {
    use std::os::unix::fs::FileExt as _;
    let mut t = Tree::new(meta(0o755));
    let r = InodeId::ROOT;
    // Sparse 5 GiB file with three data runs.
    let sparse = tmp.join("sparse-src");
    let f = fs::File::create(&sparse).unwrap();
    let size = 5u64 << 30;
    f.set_len(size).unwrap();
    let runs = [(0u64, 10_000u64), ((1u64 << 30) + 123, 300_000), (size - 5000, 5000)];
    for (i, &(off, len)) in runs.iter().enumerate() {
        f.write_all_at(&bytes(len as usize, i as u8 + 1), off).unwrap();
    }
    let fd = FileData {
        size,
        source: Source::Host(sparse),
        runs: runs.iter().map(|&(offset, len)| DataRun { offset, len }).collect(),
    };
    t.add_file(r, b"sparse.img", fd, meta(0o644)).unwrap();
    // 70,000 hard links to one file, in one directory.
    let links = t.add_dir(r, b"links", meta(0o755)).unwrap();
    let target = t.add_file(links, b"target", FileData::from_bytes(b"linked!".to_vec()), meta(0o644)).unwrap();
    for i in 0..n_links {
        t.add_hardlink(links, format!("link-{i:05}-{}", "x".repeat((i % 40) as usize)).as_bytes(), target).unwrap();
    }
    // 255-byte names of every kind.
    let names = t.add_dir(r, &[b'd'; 255], meta(0o755)).unwrap();
    t.add_file(names, &[b'f'; 255], FileData::from_bytes(bytes(5000, 7)), meta(0o600)).unwrap();
    t.add_symlink(names, &[b's'; 255], &[b'/'; 4095], meta(0o777)).unwrap();
    t.add_symlink(names, b"long-target", "a/".repeat(2000).as_bytes(), meta(0o777)).unwrap();
    t.add(names, b"fifo", Kind::Fifo, meta(0o600)).unwrap();
    t.add(names, b"sock", Kind::Socket, meta(0o600)).unwrap();
    t.add(names, b"tty", Kind::CharDev((4 << 8) | 1), meta(0o620)).unwrap();
    t.add(names, b"sda", Kind::BlockDev((8 << 8) | 16), meta(0o660)).unwrap();
    let x = t.add_file(names, b"xattr-file", FileData::from_bytes(bytes(100_000, 3)), meta(0o644)).unwrap();
    // Small enough in total for the host filesystem that `btrfs restore -x` writes into.
    t.meta_mut(x).xattrs = (0..8)
        .map(|i| Xattr { name: format!("user.attr{i:02}").into_bytes(), value: bytes(50 * i, i as u8) })
        .collect();
    // The largest xattr btrfs allows (name + value = 16228), on a directory (checked by dump).
    t.meta_mut(names).xattrs = vec![Xattr { name: b"user.huge".to_vec(), value: vec![0xAB; 16_228 - 9] }];
    // A 100,000-entry directory.
    let big = t.add_dir(r, b"big-dir", meta(0o755)).unwrap();
    for i in 0..dir_entries {
        let name = format!("entry-{i:06}");
        match i % 4 {
            0 => t
                .add_file(big, name.as_bytes(), FileData::from_bytes(i.to_le_bytes().to_vec()), meta(0o644))
                .map(|_| ()),
            1 => t.add_symlink(big, name.as_bytes(), b"../links/target", meta(0o777)).map(|_| ()),
            2 => t.add(big, name.as_bytes(), Kind::Fifo, meta(0o644)).map(|_| ()),
            _ => t.add_dir(big, name.as_bytes(), meta(0o755)).map(|_| ()),
        }
        .unwrap();
    }
    t
}

/// `btrfs check` in lowmem mode (the original mode is quadratic in the links of one inode).
fn check_clean_lowmem(img: &Path) {
    let out = btrfs_cmd()
        .args(["check", "--readonly", "--check-data-csum", "--mode=lowmem"])
        .arg(img)
        .output()
        .expect("run btrfs check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("no error found") && !stderr.contains("ERROR"),
        "btrfs check --mode=lowmem: {stdout}\n{stderr}"
    );
}

#[test]
fn edge_cases_check_clean_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let t = edge_tree(tmp.path(), 2_000, 100_000);
    let img = tmp.path().join("edge.img");
    let layout = build(&t, &[], &opts(1 << 30), &img).unwrap();
    // The sparse 5 GiB file stores only its runs (12 KiB + 304 KiB + 8 KiB).
    assert!(layout.bytes_used() < 64 * MIB, "{layout:?}");
    check_clean(&img);
    let n = restore_compare(&img, None, &t, tmp.path(), "out");
    assert!(n > 2_000 + 75_000, "compared {n}");
    let dump = dump_tree(&img, Some("5"));
    assert!(dump.contains("links 2001"));
    assert!(dump.contains("rdev 4194305") && dump.contains("rdev 8388624"), "tty 4:1, sda 8:16");
    assert!(dump.contains("name: user.huge") && dump.contains("data_len 16219 name_len 9"));
    assert!(dump.contains("size 5368709120"));
    let sparse = tmp.path().join("out/sparse.img");
    assert!(fs::metadata(&sparse).unwrap().len() == 5 << 30);
    fs::remove_dir_all(tmp.path().join("out")).unwrap();
    kernel_compare(&img, "ro", &t);
}

/// 70,000 hard links to one file in one directory, checked in lowmem mode (the original mode
/// of `btrfs check` is quadratic in the names of one inode: hours at 70,000), then 5,000 in the
/// original mode. Both overflow INODE_REF into INODE_EXTREF items.
#[test]
fn many_hard_links() {
    for (links, lowmem) in [(70_000u32, true), (5_000, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let t = edge_tree(tmp.path(), links, 10);
        let img = tmp.path().join("links.img");
        build(&t, &[], &opts(512 * MIB), &img).unwrap();
        if lowmem {
            check_clean_lowmem(&img);
        } else {
            check_clean(&img);
        }
        let n = restore_compare(&img, None, &t, tmp.path(), "out");
        assert!(n > links as usize, "compared {n}");
        let dump = dump_tree(&img, Some("5"));
        assert!(dump.contains("INODE_EXTREF"), "{links} names overflow INODE_REF");
        assert!(dump.contains(&format!("links {}", links + 1)));
        kernel_compare(&img, "ro", &t);
    }
}

#[test]
fn poisoned_target_is_check_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("poison.img");
    let size = 160 * MIB;
    drop(poisoned_file(&img, size));
    let t = small_tree();
    let mut o = opts(size);
    o.compress = Some(Compress::Zstd { level: 3, force: true });
    let layout =
        prepare_and_plan(&t, &[SubvolSpec { path: "sub".into(), tree: Cow::Owned(small_tree()), compress: None }], &o)
            .unwrap();
    let image = Image::open_existing(&img).unwrap();
    write(&layout, &image.whole(), &NoProgress).unwrap();
    drop(image);
    check_clean(&img);
    restore_compare(&img, None, &t, tmp.path(), "top");
}

fn build_with_threads(threads: usize, top: &Tree, subs: &[SubvolSpec<'_>], o: &BtrfsOptions, path: &Path) -> String {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| build(top, subs, o, path).unwrap());
    sha256_file(path)
}

#[test]
fn reproducible_across_threads_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = small_tree();
    let subs = vec![
        SubvolSpec {
            path: "@".into(),
            tree: Cow::Owned(small_tree()),
            compress: Some(Compress::Zstd { level: 3, force: true }),
        },
        SubvolSpec {
            path: "@nix".into(),
            tree: Cow::Owned(small_tree()),
            compress: Some(Compress::Zstd { level: 1, force: false }),
        },
    ];
    let o = opts(300 * MIB);
    let a = build_with_threads(1, &t, &subs, &o, &tmp.path().join("a.img"));
    let b = build_with_threads(2, &t, &subs, &o, &tmp.path().join("b.img"));
    let c = build_with_threads(8, &t, &subs, &o, &tmp.path().join("c.img"));
    let d = build_with_threads(8, &t, &subs, &o, &tmp.path().join("d.img"));
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    check_clean(&tmp.path().join("a.img"));
    // A different uuid changes the image (ids are derived, not random).
    let mut o2 = o.clone();
    o2.uuid = Uuid::parse_str("99999999-2222-3333-4444-555555555555").unwrap();
    assert_ne!(a, build_with_threads(2, &t, &subs, &o2, &tmp.path().join("e.img")));
}

/// Run a corpus generator into a fresh directory under `tmp` and scan it.
fn corpus(tmp: &Path, script: &str, args: &[&str]) -> (PathBuf, Tree) {
    let dest = tmp.join(script.trim_end_matches(".py"));
    let st = Command::new("python3").arg(tools().join(script)).arg(&dest).args(args).status().expect("python3");
    assert!(st.success(), "{script} failed");
    let tree = scan(&dest, &ScanOptions::default()).unwrap();
    (dest, tree)
}

fn corpus_size(t: &Tree) -> u64 {
    // Data plus generous room for metadata (DUP) and slack.
    (t.data_bytes() * 2).max(64 * MIB) + (t.len() as u64) * 8192 + 256 * MIB
}

/// The store corpus (48 MiB by default, the full 1.5 GiB with MKDISK_HEAVY=1), plain and with
/// the seed's `compress-force=zstd`.
#[test]
fn store_corpus_plain_and_seed_compress_force() {
    let tmp = tempfile::tempdir().unwrap();
    let max = if heavy() { "1536" } else { "48" };
    let (_, t) = corpus(tmp.path(), "make-store-corpus.py", &["--max-mib", max]);
    assert!(t.len() > 1000);
    let img = tmp.path().join("store.img");
    let o = opts(corpus_size(&t));
    build(&t, &[], &o, &img).unwrap();
    check_clean(&img);
    assert!(restore_compare(&img, None, &t, tmp.path(), "plain") > 1000);
    fs::remove_file(&img).unwrap();
    fs::remove_dir_all(tmp.path().join("plain")).unwrap();

    // The seed's layout: one btrfs filesystem with mountOptions compress-force=zstd.
    let seed =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/disko/seed-regular.json"))
            .unwrap();
    assert!(seed.contains("\"compress-force=zstd\""));
    let mut o = opts(corpus_size(&t));
    o.compress =
        mkdisk_btrfs::parse_mount_options(&["compress-force=zstd".into(), "nosuid".into(), "nodev".into()]).unwrap();
    let img = tmp.path().join("seed.img");
    let layout = build(&t, &[], &o, &img).unwrap();
    assert!(layout.compressed_extents() > 100, "{layout:?}");
    check_clean(&img);
    check_clean_lowmem(&img);
    assert!(kernel_zstd_rules(&layout, &img) > 100);
    assert!(restore_compare(&img, None, &t, tmp.path(), "seed") > 1000);
    kernel_compare(&img, "ro", &t);
}

/// The flat store (30,000 store paths, ~180,000 entries): plain, checked and restored; then
/// with `compress-force=zstd` (thousands of zstd inline extents), checked and read back
/// through the kernel.
#[test]
fn flat_store() {
    let tmp = tempfile::tempdir().unwrap();
    let n = "30000";
    let (_, t) = corpus(tmp.path(), "make-flat-store.py", &[n]);
    let img = tmp.path().join("flat.img");
    let layout = build(&t, &[], &opts(corpus_size(&t)), &img).unwrap();
    check_clean(&img);
    let count = restore_compare(&img, None, &t, tmp.path(), "out");
    assert!(count > 4 * n.parse::<usize>().unwrap(), "compared {count}; {layout:?}");
    fs::remove_file(&img).unwrap();
    fs::remove_dir_all(tmp.path().join("out")).unwrap();

    let mut o = opts(corpus_size(&t));
    o.compress = Some(Compress::Zstd { level: 3, force: true });
    o.scratch_dir = Some(tmp.path().to_path_buf());
    let img = tmp.path().join("flat-zstd.img");
    build(&t, &[], &o, &img).unwrap();
    check_clean(&img);
    let dump = dump_tree(&img, Some("5"));
    let zinline = dump.lines().filter(|l| l.contains("inline extent") && l.contains("compression 3")).count();
    assert!(zinline > 1000, "{zinline} compressed inline extents");
    kernel_compare(&img, "ro", &t);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Dir(u8),
        File(u8, usize, u8),
        Sparse(u8, u32, u16),
        Link(u8, u8),
        Symlink(u8, u16),
        Fifo(u8),
        Dev(u8, u16),
        Xattr(u8, u8, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Dir),
            (any::<u8>(), prop_oneof![0usize..64, 1000usize..5000, 60_000usize..300_000], any::<u8>())
                .prop_map(|(d, n, s)| Op::File(d, n, s)),
            (any::<u8>(), any::<u32>(), any::<u16>()).prop_map(|(d, o, l)| Op::Sparse(d, o, l)),
            (any::<u8>(), any::<u8>()).prop_map(|(d, f)| Op::Link(d, f)),
            (any::<u8>(), 1u16..4095).prop_map(|(d, n)| Op::Symlink(d, n)),
            any::<u8>().prop_map(Op::Fifo),
            (any::<u8>(), any::<u16>()).prop_map(|(d, r)| Op::Dev(d, r)),
            (any::<u8>(), any::<u8>(), 0u16..3000).prop_map(|(i, n, l)| Op::Xattr(i, n, l)),
        ]
    }

    fn build_tree(ops: &[Op]) -> Tree {
        let mut t = Tree::new(meta(0o755));
        let mut dirs = vec![InodeId::ROOT];
        let mut files = Vec::new();
        let mut all = vec![InodeId::ROOT];
        for (i, op) in ops.iter().enumerate() {
            let name = format!("n{i}-{}", "q".repeat(i * 37 % 200));
            let pick = |v: &Vec<InodeId>, k: u8| v[k as usize % v.len()];
            match *op {
                Op::Dir(d) => {
                    let id = t.add_dir(pick(&dirs, d), name.as_bytes(), meta(0o755)).unwrap();
                    dirs.push(id);
                    all.push(id);
                }
                Op::File(d, n, s) => {
                    let id = t
                        .add_file(pick(&dirs, d), name.as_bytes(), FileData::from_bytes(bytes(n, s)), meta(0o644))
                        .unwrap();
                    files.push(id);
                    all.push(id);
                }
                Op::Sparse(d, o, l) => {
                    let off = u64::from(o % (1 << 22));
                    let len = u64::from(l) + 1;
                    let mut data = vec![0u8; (off + len) as usize];
                    data[off as usize..].copy_from_slice(&bytes(len as usize, 5));
                    let fd = FileData {
                        size: off + len + 9000,
                        source: Source::Bytes({
                            data.resize((off + len + 9000) as usize, 0);
                            data.into()
                        }),
                        runs: vec![DataRun { offset: off, len }],
                    };
                    let id = t.add_file(pick(&dirs, d), name.as_bytes(), fd, meta(0o600)).unwrap();
                    files.push(id);
                    all.push(id);
                }
                Op::Link(d, f) if !files.is_empty() => {
                    t.add_hardlink(pick(&dirs, d), name.as_bytes(), pick(&files, f)).unwrap();
                }
                Op::Link(..) => {}
                Op::Symlink(d, n) => {
                    let id = t
                        .add_symlink(
                            pick(&dirs, d),
                            name.as_bytes(),
                            &bytes(n as usize, 1).iter().map(|b| b'a' + b % 26).collect::<Vec<_>>(),
                            meta(0o777),
                        )
                        .unwrap();
                    all.push(id);
                }
                Op::Fifo(d) => {
                    all.push(t.add(pick(&dirs, d), name.as_bytes(), Kind::Fifo, meta(0o644)).unwrap());
                }
                Op::Dev(d, r) => {
                    all.push(t.add(pick(&dirs, d), name.as_bytes(), Kind::CharDev(u64::from(r)), meta(0o644)).unwrap());
                }
                Op::Xattr(i, n, l) => {
                    let id = pick(&all, i);
                    let x = &mut t.meta_mut(id).xattrs;
                    let name = format!("user.x{n}").into_bytes();
                    if !x.iter().any(|a| a.name == name) {
                        x.push(Xattr { name, value: vec![n; l as usize] });
                        x.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
            }
        }
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random trees → plan → write → `btrfs check` clean; with and without zstd and a
        /// subvolume.
        #[test]
        fn random_trees_check_clean(ops in prop::collection::vec(op(), 0..60), zstd in any::<bool>(), sub in any::<bool>()) {
            let t = build_tree(&ops);
            let tmp = tempfile::tempdir().unwrap();
            let img = tmp.path().join("p.img");
            let mut o = opts(200 * MIB);
            if zstd {
                o.compress = Some(Compress::Zstd { level: 1, force: true });
            }
            let subs = if sub { vec![SubvolSpec { path: "sv".into(), tree: Cow::Borrowed(&t), compress: None }] } else { Vec::new() };
            let layout = build(&t, &subs, &o, &img).unwrap();
            check_clean(&img);
            if zstd {
                kernel_zstd_rules(&layout, &img);
            }
        }

        /// The planner never panics on arbitrary sizes and trees.
        #[test]
        fn plan_never_panics(ops in prop::collection::vec(op(), 0..30), size in 0u64..(1 << 32)) {
            let t = build_tree(&ops);
            let _ = prepare_and_plan(&t, &[], &opts(size));
        }
    }
}

/// The planner over sizes from tiny to huge: either a named error or a layout whose chunks
/// lie inside the device, do not overlap physically, and follow the profile rules.
#[test]
fn plan_sweep_sizes() {
    let trees = [Tree::new(meta(0o755)), small_tree()];
    let mut size = 1u64 << 16;
    while size <= 1 << 42 {
        for t in &trees {
            for sub in [false, true] {
                let subs = if sub {
                    vec![SubvolSpec { path: "@".into(), tree: Cow::Borrowed(t), compress: None }]
                } else {
                    vec![]
                };
                match prepare_and_plan(t, &subs, &opts(size + 12_345)) {
                    Ok(l) => {
                        assert!(l.total_bytes() <= size + 12_345 && l.total_bytes() % 4096 == 0);
                        let mut phys: Vec<(u64, u64)> = Vec::new();
                        for c in l.chunks() {
                            let dup = c.flags & 0x20 != 0;
                            assert_eq!(c.stripes.len(), if dup { 2 } else { 1 });
                            assert!(c.flags & 0x1 == 0 || c.length <= 1 << 30, "data chunks ≤ 1 GiB");
                            for &p in &c.stripes {
                                assert!(p >= MIB && p + c.length <= l.total_bytes());
                                phys.push((p, c.length));
                            }
                        }
                        phys.sort_unstable();
                        assert!(phys.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "{l:?}");
                        assert!(l.chunks().windows(2).all(|w| w[0].logical + w[0].length <= w[1].logical));
                    }
                    Err(BtrfsError::DoesNotFit { needed, available }) => {
                        assert!(needed > available && available <= size + 12_345);
                        assert!(size < 256 * MIB, "{size} bytes should fit");
                    }
                    Err(e) => panic!("{size}: {e}"),
                }
            }
        }
        size *= 2;
    }
}

/// More than 1 GiB of data: several data chunks, the 64 MiB superblock mirror inside the
/// data chunk, extents split at chunk boundaries.
#[test]
fn data_over_several_chunks_and_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big-src");
    {
        use std::os::unix::fs::FileExt as _;
        let f = fs::File::create(&src).unwrap();
        f.set_len(1200 * MIB).unwrap();
        f.write_all_at(&bytes(3 * MIB as usize, 1), 50 * MIB).unwrap();
        f.write_all_at(&bytes(MIB as usize, 2), 1100 * MIB).unwrap();
    }
    let mut t = small_tree();
    let fd = FileData::dense(1200 * MIB, Source::Host(src));
    t.add_file(InodeId::ROOT, b"big", fd, meta(0o644)).unwrap();
    let img = tmp.path().join("big.img");
    let layout = build(&t, &[], &opts(1600 * MIB), &img).unwrap();
    assert!(layout.chunks().iter().filter(|c| c.flags == 1).count() >= 2, "{layout:?}");
    check_clean(&img);
    restore_compare(&img, None, &t, tmp.path(), "out");
}

/// A check this machine cannot run (the kernel mounts need root, loop devices and the btrfs
/// module): a failure under `CI=true`, else a loud `*** SKIPPED (not a pass)` line on the real
/// stderr (not the test harness's captured output).
fn skip_or_fail(what: &str, why: &str) {
    let why = why.trim();
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what} cannot run under CI=true: {why}");
    let msg = format!("\n*** SKIPPED (not a pass): {what} — {why}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
}

/// A loop mount of an image, unmounted on drop. `None` when this host cannot mount (not root,
/// no loop devices, no btrfs module): the kernel tests then print a loud SKIPPED line (a
/// failure under `CI=true`).
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(img: &Path, options: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "btrfs", "-o", &format!("loop,{options}")])
            .arg(img)
            .arg(dir.path())
            .output();
        let Ok(out) = out else {
            skip_or_fail(&format!("kernel mount of {}", img.display()), "no mount command (Debian package mount)");
            return None;
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains("wrong fs type") && !err.contains("bad superblock"),
                "the kernel rejects the image ({options}): {err}\n{}",
                dmesg_tail()
            );
            skip_or_fail(&format!("kernel mount of {} ({options})", img.display()), &err);
            return None;
        }
        Some(Mount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn dmesg_tail() -> String {
    Command::new("dmesg")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        })
        .unwrap_or_default()
}

/// Mount read-only through the kernel and compare everything (files through the page cache,
/// so compressed extents are decoded by the kernel's zstd). Returns false when mounting is
/// impossible on this host (printed as SKIPPED).
fn kernel_compare(img: &Path, options: &str, tree: &Tree) -> bool {
    let Some(m) = Mount::new(img, options) else { return false };
    assert!(compare(tree, InodeId::ROOT, m.path()) > 0 || tree.root_is_empty());
    compare_special(tree, InodeId::ROOT, m.path());
    true
}

/// Stat device nodes, FIFOs and sockets through the kernel (restore skips them).
fn compare_special(tree: &Tree, dir: InodeId, host: &Path) -> usize {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let mut n = 0;
    for e in &tree.inode(dir).as_dir().unwrap().entries {
        let p = host.join(std::ffi::OsStr::from_encoded_bytes_unchecked_safe(&e.name));
        let ino = tree.inode(e.inode);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
        assert_eq!(md.mode() & 0o7777, u32::from(ino.meta.perm), "{} mode", p.display());
        assert_eq!(md.mtime(), ino.meta.mtime.sec, "{} mtime", p.display());
        assert_eq!(md.mtime_nsec(), i64::from(ino.meta.mtime.nsec), "{} mtime nsec", p.display());
        match &ino.kind {
            Kind::Dir(_) => n += compare_special(tree, e.inode, &p),
            Kind::CharDev(r) => {
                assert!(md.file_type().is_char_device() && md.rdev() == *r, "{} rdev", p.display());
                n += 1;
            }
            Kind::BlockDev(r) => {
                assert!(md.file_type().is_block_device() && md.rdev() == *r, "{} rdev", p.display());
                n += 1;
            }
            Kind::Fifo => {
                assert!(md.file_type().is_fifo());
                n += 1;
            }
            Kind::Socket => {
                assert!(md.file_type().is_socket());
                n += 1;
            }
            Kind::File(_) => assert_eq!(md.nlink(), u64::from(ino.links), "{} nlink", p.display()),
            Kind::Symlink(_) => {}
        }
    }
    n
}

/// The Linux kernel mounts the image (ro, then rw), reads every file — compressed ones
/// included, the only check that catches bad zstd frames — and sees devices, times, links;
/// subvolumes mount by name; after rw writes, a new subvolume and a scrub, check stays clean.
#[test]
fn kernel_mounts_and_reads_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("k.img");
    let top = small_tree();
    let nix =
        tree_with(&[("store/x/bin/hello", &b"#!/bin/sh\necho hello\n".repeat(30_000)), ("big", &bytes(3_000_000, 5))]);
    let subs = vec![
        SubvolSpec { path: "@".into(), tree: Cow::Owned(small_tree()), compress: None },
        SubvolSpec {
            path: "@nix".into(),
            tree: Cow::Borrowed(&nix),
            compress: Some(Compress::Zstd { level: 3, force: true }),
        },
    ];
    let mut o = opts(512 * MIB);
    o.compress = Some(Compress::Zstd { level: 3, force: true });
    o.default_subvolume = Some("@".into());
    build(&top, &subs, &o, &img).unwrap();
    check_clean(&img);
    check_clean_lowmem(&img);
    {
        let Some(m) = Mount::new(&img, "ro,subvolid=5") else { return };
        let n = compare(&top, InodeId::ROOT, m.path());
        eprintln!("kernel: compared {n} entries through {}", m.path().display());
        assert!(n >= 10);
        assert!(compare_special(&top, InodeId::ROOT, m.path()) == 4);
        assert!(compare(&nix, InodeId::ROOT, &m.path().join("@nix")) >= 2);
    }
    {
        // The default subvolume is "@".
        let m = Mount::new(&img, "ro").unwrap();
        assert!(m.path().join("small").exists() && !m.path().join("@nix").exists());
        assert_eq!(compare_special(&subs[0].tree, InodeId::ROOT, m.path()), 4);
    }
    {
        let m = Mount::new(&img, "ro,subvol=/@nix").unwrap();
        compare(&nix, InodeId::ROOT, m.path());
    }
    {
        let m = Mount::new(&img, "rw,subvolid=5").unwrap();
        fs::write(m.path().join("new-file"), bytes(20 * MIB as usize, 3)).unwrap();
        fs::remove_dir_all(m.path().join("dir")).unwrap();
        let st = btrfs_cmd().args(["subvolume", "create"]).arg(m.path().join("new-sub")).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        let st = Command::new("sync").status().unwrap();
        assert!(st.success());
        let out = btrfs_cmd().args(["balance", "start", "--full-balance"]).arg(m.path()).output().unwrap();
        assert!(out.status.success(), "balance: {}", String::from_utf8_lossy(&out.stderr));
        let out = btrfs_cmd().args(["scrub", "start", "-B"]).arg(m.path()).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && s.contains("no errors found"),
            "scrub: {s}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check_clean(&img);
}

#[test]
#[ignore = "timing helper: MKDISK_BTRFS_SRC=dir"]
fn time_plan_write() {
    let Some(src) = std::env::var_os("MKDISK_BTRFS_SRC") else { return };
    let t0 = std::time::Instant::now();
    let t = scan(Path::new(&src), &ScanOptions::default()).unwrap();
    let t1 = std::time::Instant::now();
    let mut o = opts(corpus_size(&t));
    if std::env::var_os("MKDISK_BTRFS_ZSTD").is_some() {
        o.compress = Some(Compress::Zstd { level: 3, force: true });
    }
    let layout = prepare_and_plan(&t, &[], &o).unwrap();
    let t2 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let image = Image::create(&tmp.path().join("t.img"), o.size_bytes).unwrap();
    write(&layout, &image.whole(), &NoProgress).unwrap();
    let t3 = std::time::Instant::now();
    eprintln!("scan {:?} plan {:?} write {:?}; {layout:?}", t1 - t0, t2 - t1, t3 - t2);
}

/// Files under one sector are inline and zstd-compressed when the frame is strictly smaller
/// and at most 2048 bytes (the kernel's rule); others stay raw inline (≤ 2048) or become a
/// one-sector extent. Frames kept in a scratch file give the very same image as frames kept
/// in memory. Check, restore and the kernel (which decodes inline frames in one call and
/// fails with EIO on a short one) agree.
#[test]
fn compressed_inline_extents_and_scratch_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(meta(0o755));
    let r = InodeId::ROOT;
    let noise = noise(4095, 0x9E37_79B9);
    let files: [(&[u8], Vec<u8>); 7] = [
        (b"tiny", b"a".to_vec()),
        (b"text-100", b"0123456789".repeat(10)),
        (b"text-2048", b"nix store ".repeat(205)[..2048].to_vec()),
        (b"text-3000", b"/nix/store/abc-hello ".repeat(150)[..3000].to_vec()),
        (b"text-4095", b"/nix/store/xyz ".repeat(300)[..4095].to_vec()),
        (b"noise-2048", noise[..2048].to_vec()),
        (b"noise-3000", noise[..3000].to_vec()),
    ];
    for (name, data) in &files {
        t.add_file(r, name, FileData::from_bytes(data.clone()), meta(0o644)).unwrap();
    }
    let mut o = opts(128 * MIB);
    o.compress = Some(Compress::Zstd { level: 3, force: true });
    let img = tmp.path().join("inline.img");
    build(&t, &[], &o, &img).unwrap();
    check_clean(&img);
    restore_compare(&img, None, &t, tmp.path(), "out");
    let fs5 = dump_tree(&img, Some("5"));
    // Four compressible files under a sector are inline frames; noise-2048 is raw inline;
    // noise-3000 is a regular extent; "tiny" (1 byte) does not shrink.
    let zinline = fs5.matches("inline extent data size").count();
    let compressed = fs5.lines().filter(|l| l.contains("inline extent") && l.contains("compression 3")).count();
    assert_eq!(compressed, 4, "compressed inline extents:\n{fs5}");
    assert_eq!(zinline, 6, "inline extents:\n{fs5}");
    assert!(fs5.contains("ram_bytes 4095 compression 3"), "{fs5}");
    let sup = btrfs_cmd().args(["inspect-internal", "dump-super"]).arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&sup.stdout).contains("COMPRESS_ZSTD"));
    kernel_compare(&img, "ro", &t);

    // The scratch file changes nothing in the image.
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let mut o2 = o.clone();
    o2.scratch_dir = Some(scratch.clone());
    let big = small_tree();
    let a = tmp.path().join("mem.img");
    let b = tmp.path().join("spill.img");
    build(&big, &[], &o, &a).unwrap();
    build(&big, &[], &o2, &b).unwrap();
    assert_eq!(sha256_file(&a), sha256_file(&b));
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "the scratch file is unnamed");
    check_clean(&b);
    // An unusable scratch directory is a named error.
    o2.scratch_dir = Some(tmp.path().join("missing"));
    let e = prepare_and_plan(&big, &[], &o2).unwrap_err().to_string();
    assert!(e.contains("scratch") && e.contains("missing"), "{e}");
}

/// `compress=no` is an explicit choice: on a subvolume it overrides a compressing filesystem
/// default (a subvolume without compression options inherits it), and as the filesystem
/// default it stores everything raw. zlib and lzo are refused, not silently stored raw.
#[test]
fn compress_no_overrides_and_other_algorithms_are_refused() {
    let mount = |v: &[&str]| mkdisk_btrfs::parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let tmp = tempfile::tempdir().unwrap();
    let tree = || {
        let mut t = Tree::new(meta(0o755));
        let text = b"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1/bin/hello\n".repeat(4000);
        t.add_file(InodeId::ROOT, b"text", FileData::from_bytes(text), meta(0o644)).unwrap();
        t
    };
    let top = tree();
    let subs = [
        SubvolSpec { path: "inherit".into(), tree: Cow::Owned(tree()), compress: mount(&["noatime"]).unwrap() },
        SubvolSpec { path: "raw".into(), tree: Cow::Owned(tree()), compress: mount(&["noatime,compress=no"]).unwrap() },
    ];
    assert_eq!(subs[1].compress, Some(Compress::None));
    let mut o = opts(256 * MIB);
    o.compress = mount(&["compress-force=zstd"]).unwrap();
    let img = tmp.path().join("mixed.img");
    let layout = build(&top, &subs, &o, &img).unwrap();
    check_clean(&img);
    // 3 chunks (≤ 128 KiB each) of the file in the top level and in "inherit", none in "raw".
    let chunks = top.data_bytes().div_ceil(mkdisk_btrfs::MAX_COMPRESSED_CHUNK) as usize;
    assert_eq!((chunks, layout.compressed_extents()), (3, 2 * chunks));
    assert!(dump_tree(&img, Some("256")).contains("compression 3"), "inherit is compressed");
    let raw = dump_tree(&img, Some("257"));
    assert!(raw.contains("extent data disk byte") && !raw.contains("compression 3"), "raw is not:\n{raw}");
    restore_compare(&img, Some(257), &tree(), tmp.path(), "raw");
    // compress=no as the filesystem default.
    o.compress = mount(&["compress=zstd", "compress=none"]).unwrap();
    assert_eq!(o.compress, Some(Compress::None));
    assert_eq!(prepare_and_plan(&top, &subs[..1], &o).unwrap().compressed_extents(), 0);
    // Algorithms mkdisk does not write are errors naming the option, not raw images.
    for opt in ["compress=lzo", "compress=zlib:3", "compress-force=lz4", "compress=bogus", "compress"] {
        let e = mount(&["noatime", &format!("ssd,{opt}")]).unwrap_err().to_string();
        assert!(e.contains(&format!("{opt:?}")) && e.lines().count() == 1, "{opt}: {e}");
    }
}
