//! `mkdisk build --format raw|raw.zst|raw.gz|qcow2|vhd --bmap`, checked by the real tools, and
//! the copy of an image onto a disk that holds old data (issue 15).
//!
//! Two layouts shaped like the seed's (ESP + BIOS boot + btrfs root with `compress-force=zstd`;
//! ESP + swap + ext4 root, from `../shared/disko`, made smaller) with a Nix-store-shaped tree:
//! - every format decodes to the raw image: `qemu-img check` and `qemu-img compare` (qcow2,
//!   `-f vpc` for the VHD, whose size is a whole MiB plus the footer), `zstd -dc`/`gzip -dc`
//!   equal to the raw image; the same bytes with `--threads 1` and `2`; only
//!   `<imageName>.<ext>` and `<imageName>.raw.bmap` are left in `--out`;
//! - the "old disk": random bytes with the *other* layout's image written over them (a
//!   reinstall over an old system). The `.raw.zst` goes onto one copy with bmaptool's own
//!   copier (`BmapCopy`, what `bmaptool copy` runs for a block device: only mapped ranges are
//!   written), the raw image onto another with `dd bs=4M conv=sparse,notrunc`. On both: every
//!   mapped range equals the image, `sgdisk -v`, `fsck.fat -n`, `e2fsck -fn`, `btrfs check
//!   --check-data-csum` and `blkid -p` (exactly one signature per partition) are clean, and the
//!   kernel (QEMU) lists every file equal to the source. On the bmap copy the ext4 journal
//!   reads as zeros (mapped, never written to the raw image); on the `dd conv=sparse` copy it
//!   keeps the old bytes, which is why the README sends disks with old data to bmaptool.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
mod guest;
use common::{build_args, mkdisk, plan_numbers, repo};
use guest::{boot_or_skip, compare_tree, report, Mount};

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One layout: the seed export with a smaller disk and ESP, and the mounts the guest checks.
struct Layout {
    name: &'static str,
    export: &'static str,
    image: &'static str,
    /// Partition sizes to shrink: (name, size).
    sizes: &'static [(&'static str, &'static str)],
    /// (partition, fs, mount point) the guest mounts read-only.
    mounts: &'static [(&'static str, &'static str, &'static str)],
}

const BTRFS: Layout = Layout {
    name: "seed-regular",
    export: "seed-regular",
    image: "main",
    sizes: &[("ESP", "64M")],
    mounts: &[("ESP", "vfat", "/boot"), ("nix", "btrfs", "/")],
};

const EXT4: Layout = Layout {
    name: "ext4-swap",
    export: "ext4-swap",
    image: "vdb",
    sizes: &[("ESP", "64M"), ("swap", "32M")],
    mounts: &[("ESP", "vfat", "/boot"), ("root", "ext4", "/")],
};

/// The source: a store subset and a few files on the ESP and in /etc.
fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    guest::store_corpus(&src, 16);
    guest::write(&src.join("etc/hostname"), b"formats\n");
    guest::write(&src.join("boot/loader/loader.conf"), b"timeout 0\n");
    guest::write(&src.join("boot/EFI/nixos/kernel.efi"), &mkdisk_testkit::noise(3 << 20, 5));
    src
}

/// The layout's spec (smaller than the seed's 2G/3G so that filling "old disks" stays quick).
fn spec(l: &Layout, dir: &Path) -> PathBuf {
    let p = repo().join(format!("../shared/disko/{}.json", l.export));
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
    let disk = &mut v["disk"][l.image];
    disk["imageSize"] = "640M".into();
    for (part, size) in l.sizes {
        let p = &mut disk["content"]["partitions"][part];
        p["size"] = (*size).into();
        p["end"] = format!("+{size}").into();
    }
    let path = dir.join(format!("{}.json", l.name));
    fs::write(&path, v.to_string()).unwrap();
    path
}

/// `mkdisk build SPEC --root SRC` with `extra` arguments into a new `dir/out-TAG`; the files
/// it left there, sorted.
/// (`SOURCE_DATE_EPOCH` past the source's times: fixed output, no clamped mtimes.)
fn build(spec: &Path, src: &Path, dir: &Path, tag: &str, extra: &[&str]) -> (PathBuf, Vec<String>) {
    let out = dir.join(format!("out-{tag}"));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let seed: &[&str] = if extra.contains(&"--seed") { &[] } else { &["--seed", "formats"] };
    let args = [&build_args(spec, &out)[..], &["--root", src.to_str().unwrap()], seed, extra].concat();
    let o = Command::new(env!("CARGO_BIN_EXE_mkdisk")).args(&args).env("SOURCE_DATE_EPOCH", "4000000000").output();
    assert_ok(&format!("mkdisk build {tag}"), &o.unwrap());
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    (out, names)
}

/// The bmap's mapped byte ranges `(offset, len)`.
fn mapped(bmap: &Path) -> Vec<(u64, u64)> {
    let text = fs::read_to_string(bmap).unwrap();
    text.lines()
        .filter_map(|l| l.split_once("\"> ").map(|(_, r)| r.trim_end_matches(" </Range>").trim().to_string()))
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((&r, &r));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            (a * 4096, (b - a + 1) * 4096)
        })
        .collect()
}

fn sha(p: &Path) -> String {
    common::sha256_file(p)
}

/// Every format decodes to the raw image, deterministically, and leaves only its own files.
fn check_formats(l: &Layout, spec: &Path, src: &Path, dir: &Path, raw: &Path) {
    let img = l.image;
    let raw_bmap = raw.with_extension("raw.bmap");
    for (format, threads) in [("raw.zst", "2"), ("raw.gz", "2"), ("qcow2", "2"), ("vhd", "2")] {
        let extra = ["--format", format, "--bmap", "--threads", threads];
        let (out, names) = build(spec, src, dir, format, &extra);
        let file = out.join(format!("{img}.{format}"));
        let mut want = [format!("{img}.{format}"), format!("{img}.raw.bmap")];
        want.sort();
        assert_eq!(names, want, "{format}: files in --out");
        assert_eq!(sha(&out.join(format!("{img}.raw.bmap"))), sha(&raw_bmap), "{format}: the bmap");
        let f = file.to_str().unwrap();
        let r = raw.to_str().unwrap();
        match format {
            "raw.zst" => {
                let o = Command::new("sh").args(["-c", &format!("zstd -dc '{f}' | cmp - '{r}'")]).output().unwrap();
                assert_ok("zstd -dc | cmp", &o);
                // btrfs's zstd extents are stored, not compressed again: frames without a
                // checksum (mkdisk's own) holding raw blocks. ext4 has none to store.
                let (stored, total) = stored_frame_bytes(&fs::read(&file).unwrap());
                eprintln!("{}: {stored} of {total} bytes in stored frames", l.name);
                let btrfs = l.mounts.iter().any(|m| m.1 == "btrfs");
                assert_eq!(stored > MIB, btrfs, "{}: {stored} bytes in stored frames", l.name);
            }
            "raw.gz" => {
                let o = Command::new("sh").args(["-c", &format!("gzip -dc '{f}' | cmp - '{r}'")]).output().unwrap();
                assert_ok("gzip -dc | cmp", &o);
            }
            "qcow2" => {
                assert_ok("qemu-img check", &run("qemu-img", &["check", "-f", "qcow2", f]));
                assert_ok("qemu-img compare", &run("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", r, f]));
                // Written in place: the raw disk's extents 64 KiB further on, its holes kept,
                // the tables appended: allocated bytes as the raw image's, plus the tables.
                let (q, r) = (fs::metadata(&file).unwrap(), fs::metadata(raw).unwrap());
                assert!(q.len() > r.len(), "qcow2 {} bytes, raw {}", q.len(), r.len());
                assert!(
                    q.blocks() * 512 <= r.blocks() * 512 + 2 * MIB,
                    "qcow2 {} allocated, raw {}",
                    q.blocks() * 512,
                    r.blocks() * 512
                );
            }
            _ => {
                assert_ok("qemu-img compare -F vpc", &run("qemu-img", &["compare", "-f", "raw", "-F", "vpc", r, f]));
                assert_eq!(fs::metadata(&file).unwrap().len() % MIB, 512, "VHD: a whole number of MiB + footer");
            }
        }
        // The same bytes on one thread.
        let (out1, _) = build(spec, src, dir, &format!("{format}-t1"), &["--format", format, "--threads", "1"]);
        assert_eq!(sha(&out1.join(format!("{img}.{format}"))), sha(&file), "{format}: --threads 1 vs 2");
        let _ = fs::remove_dir_all(&out1);
        if format != "raw.zst" {
            let _ = fs::remove_dir_all(&out);
        }
    }
}

/// A file of `len` bytes of noise (the old disk's bytes), then `old` (another image) over it.
fn old_disk(path: &Path, len: u64, old: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let block = mkdisk_testkit::noise(usize::try_from(MIB).unwrap(), 99);
    for i in 0..len / MIB {
        // Vary each MiB so that no two blocks are equal.
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&b).unwrap();
    }
    drop(f);
    let o = run("dd", &[&format!("if={}", old.display()), &format!("of={}", path.display()), "bs=4M", "conv=notrunc"]);
    assert_ok("dd the old image", &o);
}

/// bmaptool's copier writing only the mapped ranges of `image` (any format bmaptool reads)
/// onto the existing `dest`, verifying each range's SHA-256, as `bmaptool copy` does onto a
/// block device (onto a regular file the command line truncates it first).
fn bmap_copy(image: &Path, bmap: &Path, dest: &Path) {
    let py = format!(
        "import os\nfrom bmaptools import BmapCopy, TransRead\n\
         img = TransRead.TransRead({img:?})\n\
         dest = open({dest:?}, 'r+b')\n\
         w = BmapCopy.BmapCopy(img, dest, open({bmap:?}, 'r'), os.path.getsize({dest:?}))\n\
         w.copy(False, True)\ndest.close()\n",
        img = image.to_str().unwrap(),
        dest = dest.to_str().unwrap(),
        bmap = bmap.to_str().unwrap()
    );
    // Debian's python3: bmaptool's modules are installed for it.
    assert_ok("bmaptools BmapCopy", &run("/usr/bin/python3", &["-c", &py]));
}

/// Partition name → (offset, size) in bytes, from the plan.
fn partitions(spec: &Path) -> Vec<(String, u64, u64, String)> {
    let o = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert_ok("mkdisk plan", &o);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    plan["disks"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap();
            let fs_name = p["filesystem"].as_str().unwrap_or("-").to_string();
            (p["name"].as_str().unwrap().to_string(), n("start") * 512, n("size") * 512, fs_name)
        })
        .collect()
}

fn extract(img: &Path, off: u64, len: u64, dest: &Path) {
    let f = fs::File::open(img).unwrap();
    let mut out = fs::File::create(dest).unwrap();
    let mut buf = vec![0u8; usize::try_from(4 * MIB).unwrap()];
    let mut done = 0;
    while done < len {
        let n = usize::try_from((len - done).min(4 * MIB)).unwrap();
        f.read_exact_at(&mut buf[..n], off + done).unwrap();
        out.write_all(&buf[..n]).unwrap();
        done += n as u64;
    }
}

/// The journal's blocks (after its superblock) as byte ranges of the partition.
fn journal_ranges(part: &Path) -> Vec<(u64, u64)> {
    let o = run("debugfs", &["-R", "blocks <8>", part.to_str().unwrap()]);
    assert_ok("debugfs blocks <8>", &o);
    let blocks: Vec<u64> = String::from_utf8_lossy(&o.stdout).split_whitespace().map(|b| b.parse().unwrap()).collect();
    assert!(blocks.len() >= 1024, "a journal of {} blocks", blocks.len());
    blocks[1..].iter().map(|b| (b * 4096, 4096)).collect()
}

/// Whether every byte of `ranges` of `img` (at `base`) is zero.
fn all_zero(img: &Path, base: u64, ranges: &[(u64, u64)]) -> bool {
    let f = fs::File::open(img).unwrap();
    let mut buf = vec![0u8; 4096];
    ranges.iter().all(|&(o, n)| {
        (0..n / 4096).all(|k| {
            f.read_exact_at(&mut buf, base + o + k * 4096).unwrap();
            buf.iter().all(|&b| b == 0)
        })
    })
}

/// The checkers on every partition of the copy `img`; for ext4, whether its journal reads as
/// zeros.
fn check_copy(what: &str, spec: &Path, img: &Path, dir: &Path) -> Option<bool> {
    let o = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("No problems found"), "{what}: sgdisk -v: {o:?}");
    let mut journal_zero = None;
    for (name, off, len, fs_name) in partitions(spec) {
        let part = dir.join(format!("{what}-{name}.part"));
        extract(img, off, len, &part);
        let p = part.to_str().unwrap();
        let probe = run("blkid", &["-p", "-o", "export", p]);
        let types: Vec<String> = String::from_utf8_lossy(&probe.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("TYPE="))
            .map(String::from)
            .collect();
        let want = fs_name.as_str();
        match want {
            "vfat" => assert_ok(&format!("{what}: fsck.fat -n {name}"), &run("fsck.fat", &["-n", p])),
            "ext4" => {
                assert_ok(&format!("{what}: e2fsck -fn {name}"), &run("e2fsck", &["-fn", p]));
                journal_zero = Some(all_zero(&part, 0, &journal_ranges(&part)));
            }
            "btrfs" => assert_ok(
                &format!("{what}: btrfs check {name}"),
                &run("btrfs", &["check", "--readonly", "--check-data-csum", p]),
            ),
            _ => {}
        }
        // Exactly the partition's own signature (none for the BIOS boot partition): an old
        // one beside it makes blkid refuse ("ambivalent"), and udev then names no UUID.
        let expect: Vec<String> = if want == "-" { vec![] } else { vec![want.to_string()] };
        assert_eq!(types, expect, "{what}: blkid -p {name}: {}", String::from_utf8_lossy(&probe.stderr));
        let _ = fs::remove_file(&part);
    }
    journal_zero
}

/// Walks the zstd frames of `z` (RFC 8878 §3.1.1) and returns (bytes of raw blocks in frames
/// without a content checksum, the file's length).
fn stored_frame_bytes(z: &[u8]) -> (u64, u64) {
    let (mut p, mut stored) = (0usize, 0u64);
    while p < z.len() {
        assert_eq!(z[p..p + 4], 0xFD2F_B528u32.to_le_bytes(), "frame magic at {p}");
        let fhd = z[p + 4];
        let single = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
        let fcs = match fhd >> 6 {
            0 => usize::from(single),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        p += 5 + usize::from(!single) + dict + fcs;
        loop {
            let h = u32::from_le_bytes([z[p], z[p + 1], z[p + 2], 0]);
            let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, (h >> 3) as usize);
            p += 3 + if kind == 1 { 1 } else { size };
            if kind == 0 && !checksum {
                stored += size as u64;
            }
            if last {
                break;
            }
        }
        p += if checksum { 4 } else { 0 };
    }
    (stored, z.len() as u64)
}

/// Every mapped range of `copy` equals the image's.
fn assert_mapped_equal(raw: &Path, copy: &Path, ranges: &[(u64, u64)]) {
    let (a, b) = (fs::File::open(raw).unwrap(), fs::File::open(copy).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for &(off, len) in ranges {
        let mut done = 0;
        while done < len {
            let n = usize::try_from((len - done).min(1 << 20)).unwrap();
            a.read_exact_at(&mut x[..n], off + done).unwrap();
            b.read_exact_at(&mut y[..n], off + done).unwrap();
            assert!(x[..n] == y[..n], "mapped range at {} differs on the copy", off + done);
            done += n as u64;
        }
    }
}

fn layout_case(l: &Layout, other: &Layout) {
    let dir = guest::fresh_dir(&format!("formats-{}", l.name));
    let src = source(&dir);
    let spec = spec(l, &dir);
    let (out, names) = build(&spec, &src, &dir, "raw", &["--bmap"]);
    assert_eq!(names, [format!("{}.raw", l.image), format!("{}.raw.bmap", l.image)]);
    let raw = out.join(format!("{}.raw", l.image));
    let bmap = out.join(format!("{}.raw.bmap", l.image));
    check_formats(l, &spec, &src, &dir, &raw);

    // The old disk: noise, then the other layout's image.
    let other_spec = spec_of(other, &dir);
    let (old_out, _) = build(&other_spec, &src, &dir, "old", &["--seed", "old"]);
    let old = old_out.join(format!("{}.raw", other.image));
    let size = fs::metadata(&raw).unwrap().len();
    let via_bmap = dir.join("dirty-bmap.img");
    let via_dd = dir.join("dirty-dd.img");
    old_disk(&via_bmap, size, &old);
    fs::copy(&via_bmap, &via_dd).unwrap();
    let _ = fs::remove_dir_all(&old_out);
    bmap_copy(&dir.join("out-raw.zst").join(format!("{}.raw.zst", l.image)), &bmap, &via_bmap);
    let o = run(
        "dd",
        &[&format!("if={}", raw.display()), &format!("of={}", via_dd.display()), "bs=4M", "conv=sparse,notrunc"],
    );
    assert_ok("dd conv=sparse", &o);
    let ranges = mapped(&bmap);
    assert_mapped_equal(&raw, &via_bmap, &ranges);

    let j_bmap = check_copy("bmap", &spec, &via_bmap, &dir);
    let j_dd = check_copy("dd", &spec, &via_dd, &dir);
    if l.mounts.iter().any(|m| m.1 == "ext4") {
        assert_eq!(j_bmap, Some(true), "bmap copy: the ext4 journal must read as zeros (it is mapped)");
        assert_eq!(j_dd, Some(false), "dd conv=sparse copy: the journal keeps the old bytes (the README's warning)");
    }
    kernel_reads(l, &spec, &src, &dir, &[&via_bmap, &via_dd]);
    let _ = fs::remove_dir_all(&dir);
}

/// The other layout's spec, written beside (same shrinking).
fn spec_of(l: &Layout, dir: &Path) -> PathBuf {
    spec(l, dir)
}

/// The kernel lists every file of both copies (`vda`, `vdb`) equal to the source.
fn kernel_reads(l: &Layout, spec: &Path, src: &Path, dir: &Path, disks: &[&Path]) {
    let pairs: Vec<(&Path, &Layout, &Path)> = disks.iter().map(|d| (*d, l, spec)).collect();
    kernel_reads_disks(src, dir, &pairs, l.name);
}

/// The kernel lists every file of each disk (`vda`, `vdb`, …: image, its layout, its spec)
/// equal to the source, in one boot.
fn kernel_reads_disks(src: &Path, dir: &Path, disks: &[(&Path, &Layout, &Path)], tag: &str) {
    let Some(parts) = guest::parts() else { return };
    let mut all = Vec::new();
    let mut per_disk = Vec::new();
    for (&(d, l, spec), letter) in disks.iter().zip('a'..='z') {
        let number = plan_numbers(spec);
        let ms: Vec<Mount> = l
            .mounts
            .iter()
            .map(|(part, fs_name, mp)| {
                let id = format!("{letter}-{part}");
                Mount::new(&id, format!("vd{letter}{}", number(part)), fs_name, "ro", mp)
            })
            .collect();
        all.extend(ms.clone());
        per_disk.push((d, ms));
    }
    let paths: Vec<&Path> = disks.iter().map(|d| d.0).collect();
    let Some(b) = boot_or_skip(parts, dir, &paths, &all, "direct", tag) else { return };
    for (d, ms) in &per_disk {
        let problems = compare_tree(src, ms, &b, ms, &[], None);
        assert!(problems.is_empty(), "{}", report(&format!("kernel read-back of {}", d.display()), &problems));
    }
}

/// Auto-sized images of both layouts and the btrfs seed layout built for a 64 GiB disk: the
/// kernel reads every file of each, in one boot (the checkers and the sizes are in
/// `auto_size.rs`); the auto-sized images are smaller than the layouts' 640 MiB and the 64 GiB
/// one is 64 GiB long, sparse.
#[test]
fn auto_and_final_size_images_are_read_by_the_kernel() {
    let dir = guest::fresh_dir("formats-sizes");
    let src = source(&dir);
    let mut built = Vec::new();
    for (l, size) in [(&BTRFS, "auto"), (&EXT4, "auto"), (&BTRFS, "64G")] {
        let spec = spec(l, &dir);
        let (out, _) = build(&spec, &src, &dir, &format!("{}-{size}", l.name), &["--image-size", size]);
        let img = out.join(format!("{}.raw", l.image));
        let o = run("sgdisk", &["-v", img.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("No problems found"), "{size}: sgdisk -v: {o:?}");
        let len = fs::metadata(&img).unwrap().len();
        if size == "auto" {
            assert!(len < 640 * MIB, "{}: auto size {len} is not below the layout's 640 MiB", l.name);
        } else {
            assert_eq!(len, 64 << 30);
            assert!(fs::metadata(&img).unwrap().blocks() * 512 < 256 * MIB, "64G image not sparse");
        }
        built.push((img, l, spec));
    }
    let disks: Vec<(&Path, &Layout, &Path)> = built.iter().map(|(i, l, s)| (i.as_path(), *l, s.as_path())).collect();
    kernel_reads_disks(&src, &dir, &disks, "sizes");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn btrfs_seed_layout_formats_and_dirty_disk_copies() {
    layout_case(&BTRFS, &EXT4);
}

#[test]
fn ext4_layout_formats_and_dirty_disk_copies() {
    layout_case(&EXT4, &BTRFS);
}

/// A build that fails leaves nothing in `--out`, whatever the format (the converted file is
/// as unnamed as the raw image until the end).
#[test]
fn a_failed_build_leaves_nothing() {
    let dir = guest::fresh_dir("formats-fail");
    let spec = dir.join("spec.json");
    fs::write(
        &spec,
        r#"{"disk":{"d":{"imageSize":"64M","content":{"type":"gpt","partitions":{
        "p":{"size":"100%","content":{"type":"filesystem","format":"vfat","mountpoint":"/"}}}}}}}"#,
    )
    .unwrap();
    let root = dir.join("root");
    guest::write(&root.join("big"), &vec![1u8; 80 << 20]);
    for format in ["raw", "raw.zst", "qcow2"] {
        let out = dir.join(format!("out-{format}"));
        fs::create_dir_all(&out).unwrap();
        let args =
            [&build_args(&spec, &out)[..], &["--root", root.to_str().unwrap(), "--format", format, "--bmap"]].concat();
        let o = mkdisk(&args);
        assert_eq!(o.status.code(), Some(1), "{format}: {o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1, "{format}: one line");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "{format}: nothing left in --out");
    }
    let o = mkdisk(&[&build_args(&spec, &dir)[..], &["--format", "zip"]].concat());
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown image format \"zip\"") && err.lines().count() == 1, "{err}");
    let _ = fs::remove_dir_all(&dir);
}
