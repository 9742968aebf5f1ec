//! Integration tests: build FAT volumes from host trees and check them with the real tools
//! (`fsck.fat`, mtools' `mcopy`) and the `fatfs` crate as a read-back oracle.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use mkdisk_fat::{plan, write, FatError, FatLayout, FatOptions, FatType};
use mkdisk_testkit::{poisoned_file, POISON};
use mkdisk_tree::{scan, FileData, Meta, NoProgress, Region, ScanOptions, Source, Timestamp, Tree};
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

/// Build `tree` into a fresh image file of `opts.size_bytes` (pre-filled with [`POISON`] when
/// `poison`), at offset `offset` inside the file.
fn build_at(tree: &Tree, opts: &FatOptions, path: &Path, poison: bool, offset: u64) -> FatLayout {
    let layout = plan(tree, opts).unwrap();
    let len = opts.size_bytes + offset;
    let f = if poison {
        poisoned_file(path, len)
    } else {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
        f.set_len(len).unwrap();
        f
    };
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
        "arning",
        "differ",
        "uninitialized",
        "wrong",
        "Bad",
        "bad",
        "Dirty",
        "dirty",
        "Reclaim",
        "Expected",
        "share",
        "Fixing",
        "Duplicate",
        "abel",
        "Free cluster",
        "truncat",
        "chain",
        "Invalid",
        "invalid",
        "Unable",
        "Perform",
        "Leaving",
        "Correct",
        "Orphan",
        "Deleting",
        "Contains",
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

/// An mtools command that does not depend on the machine: UTF-8 host names whatever the
/// locale (under `LANG=C` mcopy writes `über.txt` as `_ber.txt`; C.UTF-8 is built into glibc),
/// UTC times, and `HOME` at `work` so no `~/.mtoolsrc` is read.
fn mtools(cmd: &str, work: &Path) -> Command {
    let mut c = Command::new(cmd);
    c.env("MTOOLS_SKIP_CHECK", "1").env("TZ", "UTC").env("LC_ALL", "C.UTF-8").env("HOME", work);
    c
}

/// Read the volume back with `mcopy -s -m` into a temp dir and list it.
fn read_mcopy(img: &Path, work: &Path) -> Expect {
    let out = work.join("mcopy-out");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let list = mtools("mdir", work).args(["-b", "-i"]).arg(img).arg("::/").output().unwrap();
    if !String::from_utf8_lossy(&list.stdout).trim().is_empty() {
        let st =
            mtools("mcopy", work).args(["-s", "-m", "-n", "-Q", "-i"]).arg(img).arg("::/*").arg(&out).output().unwrap();
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

/// Compare read-back listings; directory mtimes only when `dir_mtimes` (mcopy does not
/// restore them).
fn assert_same(what: &str, got: &Expect, want: &Expect, dir_mtimes: bool) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk.len(), wk.len(), "{what}: entry count");
    assert_eq!(gk, wk, "{what}: names");
    for (k, (c, t)) in want {
        let (gc, gt) = &got[k];
        assert_eq!(gc, c, "{what}: content of {k}");
        if c.is_some() || dir_mtimes {
            assert_eq!(gt, t, "{what}: mtime of {k}");
        }
    }
}

/// fsck, mcopy and fatfs all agree with the host tree.
fn check_all(img: &Path, host: &Path, work: &Path, labelled: bool) -> String {
    let text = fsck(img);
    let want = expect_host(host);
    assert_same("fatfs", &read_fatfs(img), &want, true);
    assert_same("mcopy", &read_mcopy(img, work), &want, false);
    assert_eq!(main_line_files(&text), want.len() as u64 + u64::from(labelled), "{text}");
    text
}

/// The must-be-zero and must-match bytes that fsck.fat does not look at all: both FAT copies
/// equal the planned FAT in full (free entries too), reserved sectors other than the boot
/// sector, FSInfo and their backups are zero, the boot code area is zero.
fn check_metadata_bytes(img: &Path, layout: &FatLayout) {
    let bytes = fs::read(img).unwrap();
    let g = layout.geometry();
    let fat = layout.fat_bytes();
    for copy in 0..g.num_fats {
        let start = g.fat_start_sector(copy) as usize * 512;
        assert!(bytes[start..start + fat.len()] == fat[..], "FAT copy {copy} differs from the plan");
    }
    let keep: &[usize] = if g.fat_type == FatType::Fat32 { &[0, 1, 6, 7] } else { &[0] };
    for s in 0..g.reserved_sectors as usize {
        if !keep.contains(&s) {
            assert!(bytes[s * 512..(s + 1) * 512].iter().all(|&b| b == 0), "reserved sector {s} not zero");
        }
    }
    let code = if g.fat_type == FatType::Fat32 { 0x5A } else { 0x3E };
    assert!(bytes[code..510].iter().all(|&b| b == 0), "boot code area not zero");
    if g.fat_type == FatType::Fat32 {
        assert!(bytes[512 + 4..512 + 484].iter().all(|&b| b == 0), "FSI_Reserved1 not zero");
        assert_eq!(&bytes[512..1024], &bytes[7 * 512..8 * 512], "backup FSInfo");
        let free = u32::from_le_bytes(bytes[512 + 488..512 + 492].try_into().unwrap());
        assert_eq!(free, layout.free_clusters());
    }
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
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
        write_file(
            &root.join(format!("loader/entries/nixos-generation-{i}.conf")),
            format!("title NixOS {i}\n").as_bytes(),
        );
    }
    if big {
        write_file(&root.join("EFI/nixos/kernel-6.6-bzImage.efi"), &pattern(15 * MIB as usize, 3));
        write_file(&root.join("EFI/nixos/initrd-6.6.efi"), &pattern(40 * MIB as usize, 4));
    }
    fs::create_dir_all(root.join("EFI/Linux")).unwrap();
    set_mtime(&root.join("loader/loader.conf"), 1);
}

/// A stress tree: 2,000 files with long and mixed-case names, 20 levels of nesting, empty
/// files and directories, names that collide after 8.3 shortening, hard links.
fn stress_tree(root: &Path) {
    let many = root.join("Many Files");
    fs::create_dir_all(&many).unwrap();
    for i in 0..2000u64 {
        let name = match i % 4 {
            0 => format!("A Rather Long File Name Number {i:04}.Config"),
            1 => format!("file{i}.txt"),
            2 => format!("F{i}.BIN"),
            _ => format!("MiXeD.CaSe.{i}.TeXt"),
        };
        let len = (i * 37 % 700) as usize;
        fs::write(many.join(name), pattern(len, i)).unwrap();
    }
    let mut deep = root.join("deep");
    for level in 0..20 {
        deep = deep.join(format!("level {level:02} directory"));
    }
    write_file(&deep.join("bottom.txt"), b"the bottom\n");
    let coll = root.join("collide");
    fs::create_dir_all(&coll).unwrap();
    for name in [
        "longfilename1.txt",
        "longfilename2.txt",
        "LongFileName.TXT1",
        "A+B",
        "A_B~1",
        "A_B~2",
        ".bashrc",
        "bashrc",
        "ver +1.2.text",
        "über.txt",
        "uber.txt",
        "with space.txt",
        "x.tar.gz",
        "x.tar.gZip",
        "name.",
        "NAME~1",
        "日本語のファイル名.efi",
        "e\u{301}.txt",
        "a;b,c=d[e]",
        "..hidden",
        "0123456789abcdef.0123456789",
    ] {
        let name = name.trim_end_matches('.');
        fs::write(coll.join(name), name.as_bytes()).unwrap();
    }
    fs::write(coll.join("x".repeat(255)), b"max length").unwrap();
    fs::create_dir_all(root.join("empty dir/also empty")).unwrap();
    fs::write(root.join("empty dir/empty file"), b"").unwrap();
    fs::write(root.join("EMPTY"), b"").unwrap();
    fs::hard_link(root.join("collide/bashrc"), root.join("hardlink-to-bashrc")).unwrap();
    // Exactly one cluster, one byte more, at the largest cluster size used.
    fs::write(root.join("exact-4096"), pattern(4096, 7)).unwrap();
    fs::write(root.join("exact-4097"), pattern(4097, 8)).unwrap();
    set_mtime(&root.join("EMPTY"), 4_400_000_000);
}

fn opts(size_bytes: u64, hidden: u32, label: Option<&str>) -> FatOptions {
    FatOptions {
        size_bytes,
        volume_id: 0xAD69_BA1F,
        label: label.map(str::to_owned),
        hidden_sectors: hidden,
        fat_type: None,
    }
}

#[test]
fn small_volume_33_mib_poisoned() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, false);
    stress_tree(&host.join("stress"));
    let tree = scan_host(&host);
    let img = tmp.path().join("esp.img");
    let layout = build(&tree, &opts(33 * MIB, 0, Some("esp")), &img, true);
    assert_eq!(layout.fat_type(), FatType::Fat32);
    assert_eq!(layout.geometry().sectors_per_cluster, 1);
    let text = check_all(&img, &host, tmp.path(), true);
    assert!(text.contains("0 hidden sectors"), "{text}");
    check_metadata_bytes(&img, &layout);
    // The label is in the boot sector, its backup and the root directory.
    let bytes = fs::read(&img).unwrap();
    assert_eq!(&bytes[0x47..0x52], b"ESP        ");
    assert_eq!(&bytes[6 * 512..7 * 512], &bytes[..512]);
    assert_eq!(&bytes[0x43..0x47], &0xAD69_BA1Fu32.to_le_bytes());
}

#[test]
fn esp_sizes_256m_512m_2g() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, true);
    stress_tree(&host.join("stress"));
    let tree = scan_host(&host);
    let img = tmp.path().join("esp.img");
    for (size, hidden, label, poison, spc) in [
        (256 * MIB, 2048, None, true, 1),
        (512 * MIB, 4096, Some("NIXOS_ESP"), false, 8),
        (2048 * MIB, 2048, None, false, 8),
    ] {
        let layout = build(&tree, &opts(size, hidden, label), &img, poison);
        assert_eq!(layout.fat_type(), FatType::Fat32);
        assert_eq!(layout.geometry().sectors_per_cluster, spc);
        let text = check_all(&img, &host, tmp.path(), label.is_some());
        if poison {
            check_metadata_bytes(&img, &layout);
        }
        assert!(text.contains(&format!("{hidden} hidden sectors")), "{text}");
        assert!(text.contains(&format!("{} data clusters", layout.geometry().cluster_count)), "{text}");
        let used = layout.used_clusters();
        assert!(text.contains(&format!(" {used}/{} clusters", layout.geometry().cluster_count)), "{text}");
    }
}

#[test]
fn fat16_below_fat32_minimum() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, false);
    let tree = scan_host(&host);
    let img = tmp.path().join("esp.img");
    for size in [16 * MIB, 32 * MIB] {
        let layout = build(&tree, &opts(size, 63, Some("SMALL")), &img, true);
        assert_eq!(layout.fat_type(), FatType::Fat16);
        let text = check_all(&img, &host, tmp.path(), true);
        check_metadata_bytes(&img, &layout);
        assert!(text.contains("16 bit entries"), "{text}");
    }
    // Forced FAT16 on a larger volume is fine too.
    let mut o = opts(200 * MIB, 0, None);
    o.fat_type = Some(FatType::Fat16);
    let layout = build(&tree, &o, &img, false);
    assert_eq!(layout.fat_type(), FatType::Fat16);
    check_all(&img, &host, tmp.path(), false);
    // Forcing FAT32 where it cannot be valid is an explicit error.
    let mut o = opts(32 * MIB, 0, None);
    o.fat_type = Some(FatType::Fat32);
    let err = plan(&tree, &o).unwrap_err();
    assert!(matches!(err, FatError::Fat32TooSmall { .. }), "{err}");
}

fn sha_file(p: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = File::open(p).unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

#[test]
fn reproducible_across_threads_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, false);
    stress_tree(&host.join("stress"));
    for i in 0..64u64 {
        write_file(&host.join(format!("data/blob{i}")), &pattern((i * 40_000) as usize, i));
    }
    let mut hashes = Vec::new();
    for threads in [1, 2, 1, 2] {
        let tree = scan_host(&host);
        let img = tmp.path().join(format!("esp-{}.img", hashes.len()));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| build(&tree, &opts(100 * MIB, 2048, Some("ESP")), &img, false));
        hashes.push(sha_file(&img));
        fs::remove_file(&img).unwrap();
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]));
}

/// Planner sweep 33 MiB..32 GiB: valid cluster counts, the FAT covers every cluster, the
/// free count equals the FAT's zero entries.
#[test]
fn planner_sweep() {
    let mut tree = Tree::new(Meta::new(0o755));
    let d = tree.mkdir_p(b"/EFI/BOOT", &Meta::new(0o755)).unwrap();
    tree.add_file(d, b"BOOTX64.EFI", FileData::from_bytes(pattern(100_000, 1)), Meta::new(0o644)).unwrap();
    let mut size = 33 * MIB;
    let mut seen = 0;
    while size <= 32 * 1024 * MIB {
        let layout = plan(&tree, &opts(size, 0, None)).unwrap();
        let g = *layout.geometry();
        assert_eq!(g.fat_type, FatType::Fat32, "{size}");
        assert!((65_525..=0x0FFF_FFF5).contains(&g.cluster_count), "{size}: {g:?}");
        assert!(u64::from(g.cluster_count) + 2 <= u64::from(g.fat_sectors) * 128, "{size}: {g:?}");
        let data_end = u64::from(g.data_start_sector()) + u64::from(g.cluster_count) * u64::from(g.sectors_per_cluster);
        assert!(data_end * 512 <= size, "{size}: {g:?}");
        let fat = layout.fat_bytes();
        let entries: Vec<u32> = fat.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(entries[0], 0x0FFF_FFF8);
        assert_eq!(entries[1], 0x0FFF_FFFF);
        let n = g.cluster_count as usize + 2;
        let free = entries[2..n].iter().filter(|&&e| e == 0).count();
        assert_eq!(free as u32, layout.free_clusters(), "{size}");
        assert!(entries[n..].iter().all(|&e| e == 0));
        assert_eq!(layout.next_free_cluster(), 2 + layout.used_clusters());
        assert_eq!(entries[layout.next_free_cluster() as usize], 0);
        size = size * 6 / 5 / 512 * 512 + 512 * 7;
        seen += 1;
    }
    assert!(seen > 30);
}

fn err_of(tree: &Tree) -> String {
    plan(tree, &opts(64 * MIB, 0, None)).unwrap_err().to_string()
}

#[test]
fn errors_name_the_path() {
    let m = Meta::new(0o644);
    let small = || FileData::from_bytes(&b"x"[..]);
    // Symlink.
    let mut t = Tree::new(Meta::new(0o755));
    let d = t.mkdir_p(b"/EFI/BOOT", &m).unwrap();
    t.add_symlink(d, b"link", b"target", m.clone()).unwrap();
    assert!(err_of(&t).contains("/EFI/BOOT/link"), "{}", err_of(&t));
    // Case collision.
    let mut t = Tree::new(Meta::new(0o755));
    t.add_dir(mkdisk_tree::InodeId::ROOT, b"EFI", m.clone()).unwrap();
    t.add_dir(mkdisk_tree::InodeId::ROOT, b"efi", m.clone()).unwrap();
    let e = err_of(&t);
    assert!(e.contains("/efi") && e.contains("/EFI"), "{e}");
    // Forbidden characters, non-UTF-8, too long, trailing dot.
    for name in [&b"a:b"[..], b"q?", b"\xff\xfe", &[b'n'; 256], b"dot.", b"tab\t"] {
        let mut t = Tree::new(Meta::new(0o755));
        let d = t.mkdir_p(b"/dir", &m).unwrap();
        t.add_file(d, name, small(), m.clone()).unwrap();
        let e = err_of(&t);
        assert!(e.contains("/dir/"), "{e}");
    }
    // Devices and FIFOs.
    let mut t = Tree::new(Meta::new(0o755));
    t.add(mkdisk_tree::InodeId::ROOT, b"null", mkdisk_tree::Kind::CharDev(0x103), m.clone()).unwrap();
    assert!(err_of(&t).contains("/null"));
    // Content larger than the partition.
    let mut t = Tree::new(Meta::new(0o755));
    let d = t.mkdir_p(b"/big", &m).unwrap();
    t.add_file(d, b"huge.img", FileData::dense(100 * MIB, Source::Host("/nonexistent".into())), m.clone()).unwrap();
    let e = err_of(&t);
    assert!(e.contains("/big/huge.img") && e.contains("does not fit"), "{e}");
    // A file FAT cannot hold at all.
    let mut t = Tree::new(Meta::new(0o755));
    t.add_file(mkdisk_tree::InodeId::ROOT, b"4g", FileData::dense(1 << 32, Source::Host("/x".into())), m.clone())
        .unwrap();
    assert!(err_of(&t).contains("/4g"));
    // A FAT16 root directory holds 512 entries.
    let mut t = Tree::new(Meta::new(0o755));
    for i in 0..600 {
        t.add_file(mkdisk_tree::InodeId::ROOT, format!("F{i}").as_bytes(), small(), m.clone()).unwrap();
    }
    let e = plan(&t, &opts(16 * MIB, 0, None)).unwrap_err().to_string();
    assert!(e.starts_with("/: directory needs 600 entries"), "{e}");
    // Bad labels and impossible sizes.
    let t = Tree::new(Meta::new(0o755));
    assert!(plan(&t, &opts(64 * MIB, 0, Some("TWELVE_CHARS"))).is_err());
    assert!(plan(&t, &opts(64 * MIB, 0, Some("A:B"))).is_err());
    assert!(plan(&t, &opts(MIB, 0, None)).is_err());
    assert!(plan(&t, &opts(0, 0, None)).is_err());
    assert!(plan(&t, &opts(u64::MAX, 0, None)).is_err());
}

#[test]
fn timestamps_clamped_and_even() {
    let mut t = Tree::new(Meta::new(0o755).with_mtime(Timestamp::from_secs(1_700_000_001)));
    let m = |s| Meta::new(0o644).with_mtime(Timestamp::from_secs(s));
    for (name, secs) in [("old", 1), ("odd", 1_700_000_001), ("future", 5_000_000_000), ("negative", -100)] {
        t.add_file(mkdisk_tree::InodeId::ROOT, name.as_bytes(), FileData::from_bytes(name.as_bytes()), m(secs))
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("t.img");
    build(&t, &opts(40 * MIB, 0, None), &img, true);
    fsck(&img);
    let got = read_fatfs(&img);
    assert_eq!(got["/old"].1, 315_532_800);
    assert_eq!(got["/negative"].1, 315_532_800);
    assert_eq!(got["/odd"].1, 1_700_000_000);
    assert_eq!(got["/future"].1, 4_354_819_198);
}

/// A volume inside a larger file at an offset (the region is exactly the partition).
#[test]
fn region_at_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    esp_tree(&host, false);
    let tree = scan_host(&host);
    let img = tmp.path().join("disk.img");
    let offset = 2048 * 512;
    let layout = build_at(&tree, &opts(40 * MIB, 2048, None), &img, true, offset);
    // Progress reports every byte of file data once.
    struct Count(std::sync::atomic::AtomicU64);
    impl mkdisk_tree::Progress for Count {
        fn data_written(&self, bytes: u64) {
            self.0.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let count = Count(std::sync::atomic::AtomicU64::new(0));
    let f = OpenOptions::new().read(true).write(true).open(&img).unwrap();
    write(&layout, &tree, &Region::from_file(Arc::new(f), "esp", offset, 40 * MIB), &count).unwrap();
    assert_eq!(count.0.into_inner(), layout.data_bytes());
    assert_eq!(layout.data_bytes(), tree.data_bytes());
    let part = tmp.path().join("part.img");
    let bytes = fs::read(&img).unwrap();
    assert!(bytes[..offset as usize].iter().all(|&b| b == POISON));
    fs::write(&part, &bytes[offset as usize..]).unwrap();
    check_all(&part, &host, tmp.path(), false);
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Node {
        File(Vec<u8>),
        Dir(Vec<(String, Node)>),
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_~+ .-]{0,14}[a-zA-Z0-9_~+-]"
            .prop_map(|s| s.trim_start().to_owned())
            .prop_filter("non-empty", |s| !s.is_empty() && s != "." && s != "..")
    }

    fn node() -> impl Strategy<Value = Node> {
        let leaf = prop::collection::vec(any::<u8>(), 0..3000).prop_map(Node::File);
        leaf.prop_recursive(5, 64, 8, |inner| prop::collection::vec((name(), inner), 0..8).prop_map(Node::Dir))
    }

    fn add(tree: &mut Tree, dir: mkdisk_tree::InodeId, children: &[(String, Node)], path: &str, want: &mut Expect) {
        let mut seen = std::collections::BTreeSet::new();
        for (n, child) in children {
            if !seen.insert(n.to_uppercase()) {
                continue;
            }
            let p = format!("{path}/{n}");
            match child {
                Node::File(data) => {
                    tree.add_file(dir, n.as_bytes(), FileData::from_bytes(data.clone()), Meta::new(0o644)).unwrap();
                    want.insert(p, (Some(sha(data)), 315_532_800));
                }
                Node::Dir(kids) => {
                    let d = tree.add_dir(dir, n.as_bytes(), Meta::new(0o755)).unwrap();
                    want.insert(p.clone(), (None, 315_532_800));
                    add(tree, d, kids, &p, want);
                }
            }
        }
    }

    fn raw_name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![prop::collection::vec(any::<u8>(), 1..300), "[a-zA-Z0-9.~+ ]{1,20}".prop_map(String::into_bytes),]
            .prop_filter("tree-valid", |n| n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Arbitrary names, sizes and volume sizes: plan (and write when it plans) never panics.
        #[test]
        fn plan_never_panics(
            entries in prop::collection::vec((raw_name(), 0u64..(1 << 33), any::<bool>()), 0..40),
            size in prop_oneof![0u64..(64 * MIB), Just(u64::MAX), (1u64 << 40)..(1u64 << 44)],
            fat_type in prop_oneof![Just(None), Just(Some(FatType::Fat16)), Just(Some(FatType::Fat32))],
            label in prop::option::of("[ -~]{0,13}"),
        ) {
            let mut tree = Tree::new(Meta::new(0o755));
            let mut dir = mkdisk_tree::InodeId::ROOT;
            for (name, len, is_dir) in &entries {
                if *is_dir {
                    if let Ok(d) = tree.add_dir(dir, name, Meta::new(0o755)) {
                        dir = d;
                    }
                } else {
                    let data = FileData::dense(*len, Source::Host("/nonexistent".into()));
                    let _ = tree.add_file(dir, name, data, Meta::new(0o644));
                }
            }
            let o = FatOptions { size_bytes: size, volume_id: 1, label, hidden_sectors: 0, fat_type };
            let _ = plan(&tree, &o).map(|l| l.used_clusters());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Arbitrary small trees: plan, write, fsck clean, fatfs reads back the same tree.
        #[test]
        fn fat_roundtrip(kids in prop::collection::vec((name(), node()), 0..12), fat16 in any::<bool>()) {
            let mut tree = Tree::new(Meta::new(0o755));
            let mut want = Expect::new();
            add(&mut tree, mkdisk_tree::InodeId::ROOT, &kids, "", &mut want);
            let tmp = tempfile::tempdir().unwrap();
            let img = tmp.path().join("p.img");
            let size = if fat16 { 8 * MIB } else { 34 * MIB };
            build(&tree, &opts(size, 0, None), &img, true);
            fsck(&img);
            prop_assert_eq!(read_fatfs(&img), want);
        }
    }
}

/// Regression: FAT has no holes, so the holes of a sparse source file are file content and
/// must read back as zeros even when the target was dirty (poisoned) before the build.
#[test]
fn sparse_source_holes_are_zeros_on_a_dirty_target() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    fs::create_dir_all(&host).unwrap();
    let sparse = host.join("SPARSE.BIN");
    {
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(3 * MIB).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 3 * MIB - 4).unwrap();
    }
    let tree = scan_host(&host);
    let Some(mkdisk_tree::Kind::File(fd)) = tree.lookup(b"/SPARSE.BIN").map(|i| &tree.inode(i).kind) else {
        panic!("no file")
    };
    assert!(fd.runs.len() >= 2, "the source should be sparse: {:?}", fd.runs);
    let img = tmp.path().join("esp.img");
    build(&tree, &opts(64 * MIB, 0, None), &img, true);
    check_all(&img, &host, tmp.path(), false);
}

/// Counts what a writer reports to its progress display.
#[derive(Default)]
struct Counted(std::sync::atomic::AtomicU64);

impl mkdisk_tree::Progress for Counted {
    fn data_written(&self, bytes: u64) {
        self.0.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The progress total a caller sets from the layout equals what the writer reports, sparse
/// and all-zero files included (FAT writes their zeros): no "1000 MiB/0 B" bar.
#[test]
fn progress_total_matches_what_write_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("src");
    fs::create_dir_all(host.join("D")).unwrap();
    File::create(host.join("ZEROS.BIN")).unwrap().set_len(5 * MIB).unwrap();
    write_file(&host.join("D/DATA.BIN"), &pattern(300_000, 7));
    let tree = scan_host(&host);
    let o = opts(64 * MIB, 0, None);
    let layout = plan(&tree, &o).unwrap();
    assert_eq!(layout.file_bytes(), 5 * MIB + 300_000);
    let img = tmp.path().join("esp.img");
    File::create(&img).unwrap().set_len(layout.size_bytes()).unwrap();
    let file = Arc::new(OpenOptions::new().read(true).write(true).open(&img).unwrap());
    let region = Region::from_file(file, "esp", 0, layout.size_bytes());
    let counted = Counted::default();
    write(&layout, &tree, &region, &counted).unwrap();
    assert_eq!(counted.0.into_inner(), layout.file_bytes());
}
