//! Every output format checked by an independent reader: `qemu-img` (qcow2, vpc), the `zstd`
//! and `gzip` CLIs, and `bmaptool` where installed, against sparse raw images built here.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mkdisk_outputs::{
    bmap_into, data_ranges, qcow2_finish, write_bmap, write_gzip, write_qcow2, write_vhd, write_zstd, zstd_into, Named,
    OutputError, BMAP_BLOCK_SIZE, QCOW2_DATA_OFFSET,
};
use mkdisk_testkit::{assert_ok, noise, skip_or_fail};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 65_536;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Writes into a sparse file: (offset, bytes).
type Writes = Vec<(u64, Vec<u8>)>;

/// A sparse file of `size` bytes with `writes` (offset, bytes) written, nothing else.
fn sparse(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) -> PathBuf {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, bytes) in writes {
        f.write_all_at(bytes, *off).unwrap();
    }
    f.sync_all().unwrap();
    path.to_path_buf()
}

/// The standard test image: 64 MiB, data at the start, an unaligned island, a written cluster
/// of zeros, a partly written cluster, and the last bytes.
fn standard_image(dir: &Path, size: u64) -> PathBuf {
    let writes = vec![
        (0, noise(300_000, 1)),
        (3 * MIB + 123, noise(1000, 2)),
        (10 * MIB, vec![0u8; 65_536]),    // written zeros: a data extent, no qcow2 cluster
        (20 * MIB + 70_000, noise(5, 3)), // inside one cluster, not at its start
        (size - 100, noise(100, 4)),      // the last cluster, up to the end
    ];
    sparse(&dir.join("disk.raw"), size, &writes)
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(p).unwrap()).to_vec()
}

/// `qemu-img check` clean, `compare` identical, `info` virtual size; returns the check output.
fn qemu_qcow2_ok(raw: &Path, q: &Path, size: u64) -> String {
    let check = run("qemu-img", &["check", "-f", "qcow2", s(q)]);
    assert_ok("qemu-img check", &check);
    let text = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(text.contains("No errors were found"), "{text}");
    let cmp = run("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", s(raw), s(q)]);
    assert_ok("qemu-img compare", &cmp);
    eprintln!("qemu-img compare: {}", String::from_utf8_lossy(&cmp.stdout).trim());
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("Images are identical"));
    let info = run("qemu-img", &["info", "-f", "qcow2", "--output=json", s(q)]);
    assert_ok("qemu-img info", &info);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&format!("\"virtual-size\": {size},")), "{info}");
    assert!(info.contains("\"cluster-size\": 65536"), "{info}");
    text
}

#[test]
fn data_ranges_of_a_sparse_file() {
    let d = tmp();
    let raw = standard_image(d.path(), 64 * MIB);
    let ranges = data_ranges(&File::open(&raw).unwrap()).unwrap();
    assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0), "{ranges:?}");
    for off in [0, 3 * MIB + 123, 10 * MIB, 20 * MIB + 70_000, 64 * MIB - 1] {
        assert!(ranges.iter().any(|&(s, l)| s <= off && off < s + l), "{off} not in {ranges:?}");
    }
    let data: u64 = ranges.iter().map(|r| r.1).sum();
    assert!(data < 8 * MIB, "not sparse here? {ranges:?}");
}

#[test]
fn qcow2_standard_image() {
    let d = tmp();
    let size = 64 * MIB;
    let raw = standard_image(d.path(), size);
    let q = d.path().join("out.qcow2");
    let len = write_qcow2(&raw, &q).unwrap();
    assert_eq!(len, fs::metadata(&q).unwrap().len());
    // Data: clusters 0..=4 (300 000 bytes), 3 MiB island (1), 20 MiB+70 000 (1), last (1) =
    // 8; the written zero cluster is not stored. + header, L2, L1, refblock, reftable.
    assert_eq!(len, (1 + 8 + 4) * CLUSTER);
    eprintln!("{}", qemu_qcow2_ok(&raw, &q, size));
    let q2 = d.path().join("again.qcow2");
    write_qcow2(&raw, &q2).unwrap();
    assert_eq!(sha(&q), sha(&q2), "qcow2 not deterministic");
}

#[test]
fn qcow2_several_regions_and_unaligned_size() {
    let d = tmp();
    let size = 1536 * MIB + 3 * 512; // not a cluster multiple; regions 0, 1 (empty), 2, 3
    let writes = vec![(0, noise(4096, 5)), (1100 * MIB, noise(CLUSTER as usize * 2, 6)), (size - 512, noise(512, 7))];
    let raw = sparse(&d.path().join("disk.raw"), size, &writes);
    let q = d.path().join("out.qcow2");
    let len = write_qcow2(&raw, &q).unwrap();
    assert_eq!(len, (1 + 4 + 3 + 3) * CLUSTER);
    qemu_qcow2_ok(&raw, &q, size);
}

#[test]
fn qcow2_empty_and_all_holes() {
    let d = tmp();
    for size in [0, 64 * MIB] {
        let raw = sparse(&d.path().join(format!("e{size}.raw")), size, &[]);
        let q = d.path().join(format!("e{size}.qcow2"));
        let tables = if size == 0 { 3 } else { 4 }; // header, [L1,] refblock, reftable
        assert_eq!(write_qcow2(&raw, &q).unwrap(), tables * CLUSTER);
        qemu_qcow2_ok(&raw, &q, size);
    }
}

/// `qcow2_finish`: the disk written at 64 KiB into the file becomes a qcow2 image in place —
/// the data clusters keep their bytes, only tables are appended, holes stay holes — for
/// the standard image, several regions with an unaligned size, a 64 GiB mostly empty guest
/// (its refcount blocks are sparse too) and an all-holes guest. The bmap of the disk inside
/// is the raw image's.
#[test]
fn qcow2_in_place() {
    let d = tmp();
    let big = vec![(0, noise(4096, 8)), (40 << 30, noise(70_000, 9)), ((64 << 30) - 512, noise(512, 10))];
    let odd = 1536 * MIB + 3 * 512; // regions 0, 1 (empty), 2, 3; not a cluster multiple
    let unaligned = vec![(0, noise(4096, 5)), (1100 * MIB, noise(CLUSTER as usize * 2, 6)), (odd - 512, noise(512, 7))];
    let cases: [(&str, u64, Writes); 4] = [
        ("std", 64 * MIB, Vec::new()),
        ("unaligned", odd, unaligned),
        ("big", 64 << 30, big),
        ("empty", 8 * MIB, Vec::new()),
    ];
    for (name, size, writes) in cases {
        let raw = if name == "std" {
            standard_image(d.path(), size)
        } else {
            sparse(&d.path().join(format!("{name}.raw")), size, &writes)
        };
        // The same bytes 64 KiB further on, holes kept (copied extent by extent).
        let q = d.path().join(format!("{name}.qcow2"));
        let src = File::open(&raw).unwrap();
        let dst = File::options().read(true).write(true).create(true).truncate(true).open(&q).unwrap();
        dst.set_len(QCOW2_DATA_OFFSET + size).unwrap();
        for (off, len) in data_ranges(&src).unwrap() {
            let mut buf = vec![0u8; usize::try_from(len).unwrap()];
            src.read_exact_at(&mut buf, off).unwrap();
            dst.write_all_at(&buf, QCOW2_DATA_OFFSET + off).unwrap();
        }
        let b1 = d.path().join(format!("{name}.bmap1"));
        write_bmap(&raw, "x", &b1).unwrap();
        let b2 = File::create(d.path().join(format!("{name}.bmap2"))).unwrap();
        let inside = Named::at(&dst, &q, QCOW2_DATA_OFFSET);
        bmap_into(inside, "x", &[], Named::new(&b2, &q)).unwrap();
        assert_eq!(fs::read(&b1).unwrap(), fs::read(d.path().join(format!("{name}.bmap2"))).unwrap(), "{name}: bmap");
        let len = qcow2_finish(Named::at(&dst, &q, QCOW2_DATA_OFFSET), size).unwrap();
        assert_eq!(len, fs::metadata(&q).unwrap().len(), "{name}");
        let check = qemu_qcow2_ok(&raw, &q, size);
        eprintln!("{name}: {len} bytes, {} allocated\n{check}", fs::metadata(&q).unwrap().blocks() * 512);
        assert!(fs::metadata(&q).unwrap().blocks() * 512 < 8 * MIB, "{name}: holes were filled");
    }
    // The same disk with no holes at all (as on a file system that reports none): the same
    // qcow2 bytes. The written zero cluster at 10 MiB is not mapped in either.
    let raw = d.path().join("disk.raw");
    let dense = d.path().join("dense.qcow2");
    let mut bytes = vec![0u8; usize::try_from(QCOW2_DATA_OFFSET).unwrap()];
    bytes.extend(fs::read(&raw).unwrap());
    fs::write(&dense, &bytes).unwrap();
    let f = File::options().read(true).write(true).open(&dense).unwrap();
    qcow2_finish(Named::at(&f, &dense, QCOW2_DATA_OFFSET), 64 * MIB).unwrap();
    assert_eq!(sha(&dense), sha(&d.path().join("std.qcow2")), "qcow2 depends on the holes of the file");
    let e = qcow2_finish(Named::new(&f, &dense), 64 * MIB).unwrap_err();
    assert!(e.to_string().contains("at byte 65536, not 0"), "{e}");
}

#[test]
fn qcow2_refuses_a_partial_sector() {
    let d = tmp();
    let raw = sparse(&d.path().join("odd.raw"), 1000, &[(0, vec![1; 10])]);
    let e = write_qcow2(&raw, &d.path().join("odd.qcow2")).unwrap_err();
    assert!(matches!(e, OutputError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("odd.raw") && e.to_string().contains("1000 bytes"), "{e}");
}

#[test]
fn vhd_rounds_to_mib_and_matches_qemu() {
    let d = tmp();
    let size = 64 * MIB + 4096 + 512; // rounds to 65 MiB
    let raw = standard_image(d.path(), size);
    let v = d.path().join("out.vhd");
    let uuid = mkdisk_outputs::vhd_uuid(b"test");
    let len = write_vhd(&raw, &v, uuid, 0).unwrap();
    assert_eq!(len, 65 * MIB + 512);
    assert_eq!(fs::metadata(&v).unwrap().len(), len);
    assert!(fs::metadata(&v).unwrap().blocks() * 512 < 4 * MIB, "holes were filled");
    let info = run("qemu-img", &["info", "-f", "vpc", "--output=json", s(&v)]);
    assert_ok("qemu-img info", &info);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&format!("\"virtual-size\": {},", 65 * MIB)), "{info}");
    // The raw image rounded up (zeros appended) is what the VHD holds.
    let aligned = d.path().join("aligned.raw");
    fs::copy(&raw, &aligned).unwrap();
    File::options().write(true).open(&aligned).unwrap().set_len(65 * MIB).unwrap();
    let cmp = run("qemu-img", &["compare", "-f", "raw", "-F", "vpc", s(&aligned), s(&v)]);
    assert_ok("qemu-img compare", &cmp);
    eprintln!("vpc: {info}\nqemu-img compare: {}", String::from_utf8_lossy(&cmp.stdout).trim());
    // Byte-identical to qemu-img's own fixed VHD but for timestamp, checksum and UUID.
    let reference = d.path().join("ref.vhd");
    let conv = run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", s(&aligned), s(&reference)],
    );
    assert_ok("qemu-img convert", &conv);
    let (ours, theirs) = (fs::read(&v).unwrap(), fs::read(&reference).unwrap());
    assert_eq!(ours.len(), theirs.len());
    let foot = usize::try_from(65 * MIB).unwrap();
    assert_eq!(ours[..foot], theirs[..foot]);
    let differ: Vec<usize> = (0..512).filter(|&i| ours[foot + i] != theirs[foot + i]).collect();
    assert!(differ.iter().all(|i| (24..28).contains(i) || (64..84).contains(i)), "{differ:?}");
    let again = d.path().join("again.vhd");
    write_vhd(&raw, &again, uuid, 0).unwrap();
    assert_eq!(sha(&v), sha(&again));
}

/// Decompresses `out` with `tool -dc` and compares with `raw`; `tool -t` must pass too.
fn decompresses_to(tool: &str, out: &Path, raw: &Path) {
    assert_ok(&format!("{tool} -t"), &run(tool, &["-t", s(out)]));
    let o = run(tool, &["-dc", s(out)]);
    assert_ok(&format!("{tool} -dc"), &o);
    assert!(o.stdout == fs::read(raw).unwrap(), "{tool} -dc differs from the raw image");
}

#[test]
fn zstd_stream() {
    let d = tmp();
    let raw = standard_image(d.path(), 64 * MIB + 512);
    let (z1, z2) = (d.path().join("t1.zst"), d.path().join("t2.zst"));
    let len = write_zstd(&raw, &z1, 3, 1).unwrap();
    assert!(len < MIB, "{len}");
    write_zstd(&raw, &z2, 3, 2).unwrap();
    decompresses_to("zstd", &z1, &raw);
    assert_eq!(sha(&z1), sha(&z2), "zstd output depends on the thread count");
    let list = run("zstd", &["-lv", s(&z1)]);
    eprintln!("{}", String::from_utf8_lossy(&list.stdout));
    // Zero runs become RLE frames between the data frames: all holes, written zeros (the
    // same bytes as holes), data only in the last, partial window, and a zero run longer
    // than one RLE block that is not a whole number of blocks.
    type Writes = Vec<(u64, Vec<u8>)>;
    let cases: [(u64, Writes); 5] = [
        (10 * MIB + 3, vec![]),
        // Longer than a decoder's default window limit (128 MiB), data at both ends.
        (300 * MIB, vec![(0, vec![3u8; 5000]), (300 * MIB - 4096, vec![4u8; 4096])]),
        (9 * MIB, vec![(MIB, vec![0u8; 3 << 20])]),
        (9 * MIB + 5, vec![(9 * MIB, b"tail!".to_vec())]),
        (13 * MIB + 4097, vec![(0, vec![1u8; 4097]), (12 * MIB + 7, vec![2u8; 9])]),
    ];
    for (i, (size, writes)) in cases.into_iter().enumerate() {
        let raw = sparse(&d.path().join(format!("c{i}.raw")), size, &writes);
        let z = d.path().join(format!("c{i}.zst"));
        write_zstd(&raw, &z, 3, 2).unwrap();
        decompresses_to("zstd", &z, &raw);
    }
    let holes = fs::metadata(d.path().join("c0.zst")).unwrap().len();
    assert!(holes < 512, "10 MiB of holes take {holes} bytes");
}

/// Named already-compressed ranges (noise here, btrfs's zstd frames in a build) are stored
/// as raw blocks with their zero padding as RLE blocks: the stream still decompresses to the
/// image, does not depend on the thread count, and is within 1 % of compressing everything.
#[test]
fn zstd_stores_compressed_ranges() {
    let d = tmp();
    let size = 40 * MIB;
    let text: Vec<u8> = (0..4 * MIB).map(|i| b"store path /nix/store/abc-hello "[(i % 32) as usize]).collect();
    let mut writes: Writes = vec![(0, text.clone()), (30 * MIB, text)];
    // 20 MiB of 40 KiB "frames" every 44 KiB from 6 MiB, 4 KiB of zero padding after each.
    let frames: Vec<(u64, u64)> = (0..465).map(|i| (6 * MIB + i * 44 * 1024, 40 * 1024)).collect();
    writes.extend(frames.iter().enumerate().map(|(i, &(o, l))| (o, noise(l as usize, 100 + i as u64))));
    let raw = sparse(&d.path().join("frames.raw"), size, &writes);
    let src = File::open(&raw).unwrap();
    let zst = |name: &str, threads: u32, hints: &[(u64, u64)]| {
        let p = d.path().join(name);
        let f = File::create(&p).unwrap();
        zstd_into(Named::new(&src, &raw), Named::new(&f, &p), 3, threads, hints).unwrap();
        p
    };
    let (z1, z2, plain) = (zst("s1.zst", 1, &frames), zst("s2.zst", 2, &frames), zst("p.zst", 2, &[]));
    decompresses_to("zstd", &z2, &raw);
    assert_eq!(sha(&z1), sha(&z2), "zstd output depends on the thread count");
    let (stored, all) = (fs::metadata(&z2).unwrap().len(), fs::metadata(&plain).unwrap().len());
    eprintln!(
        "stored {stored}, all compressed {all}\n{}",
        String::from_utf8_lossy(&run("zstd", &["-lv", s(&z2)]).stdout)
    );
    assert!(stored * 100 <= all * 101, "stored {stored} vs {all}");
    assert!(stored >= 465 * 40 * 1024, "frames lost? {stored}");
    assert_eq!(mkdisk_outputs::stored_segments(&frames, size), [(6 * MIB, 6 * MIB + 20 * MIB)]);
}

#[test]
fn gzip_stream() {
    let d = tmp();
    let raw = standard_image(d.path(), 64 * MIB + 512);
    let (g1, g2) = (d.path().join("t1.gz"), d.path().join("t2.gz"));
    let len = write_gzip(&raw, &g1, 6, 1).unwrap();
    assert!(len < 2 * MIB, "{len}");
    write_gzip(&raw, &g2, 6, 2).unwrap();
    decompresses_to("gzip", &g1, &raw);
    assert_eq!(sha(&g1), sha(&g2), "gzip output depends on the thread count");
    let empty = sparse(&d.path().join("empty.raw"), 0, &[]);
    let ge = d.path().join("empty.gz");
    write_gzip(&empty, &ge, 6, 2).unwrap();
    let ze = d.path().join("empty.zst");
    write_zstd(&empty, &ze, 3, 2).unwrap();
    let o = run("zstd", &["-dc", s(&ze)]);
    assert_ok("zstd -dc empty", &o);
    assert!(o.stdout.is_empty());
    // An empty image gives one empty member, which gzip accepts.
    decompresses_to("gzip", &ge, &empty);
    decompresses_to("zstd", &ze, &empty);
}

/// The text between `<tag>` and `</tag>`, trimmed.
fn field<'a>(text: &'a str, tag: &str) -> &'a str {
    let a = text.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let b = text.find(&format!("</{tag}>")).unwrap();
    text[a..b].trim()
}

#[test]
fn bmap_file() {
    let d = tmp();
    let size = 64 * MIB + 512;
    let raw = standard_image(d.path(), size);
    let b = d.path().join("disk.raw.bmap");
    write_bmap(&raw, "disk.raw", &b).unwrap();
    let text = fs::read_to_string(&b).unwrap();
    eprintln!("{text}");
    assert_eq!(field(&text, "ImageSize"), size.to_string());
    assert_eq!(field(&text, "BlocksCount"), size.div_ceil(4096).to_string());
    // BmapFileChecksum as bmaptool verifies it: the first occurrence zeroed, then hashed.
    let stored = field(&text, "BmapFileChecksum");
    let zeroed = text.replacen(stored, &"0".repeat(64), 1);
    assert_eq!(hex(&Sha256::digest(zeroed.as_bytes())), stored);
    let bytes = fs::read(&raw).unwrap();
    let mut mapped = 0u64;
    let mut ranges = Vec::new();
    for line in text.lines().filter(|l| l.contains("<Range")) {
        let sum = &line[line.find("chksum=\"").unwrap() + 8..][..64];
        let r = line[line.find("\">").unwrap() + 2..line.find("</Range>").unwrap()].trim();
        let (first, last) = r.split_once('-').map_or_else(|| (r, r), |(a, b)| (a, b));
        let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
        let lo = usize::try_from(first * BMAP_BLOCK_SIZE).unwrap();
        let hi = usize::try_from(((last + 1) * BMAP_BLOCK_SIZE).min(size)).unwrap();
        assert_eq!(hex(&Sha256::digest(&bytes[lo..hi])), sum, "range {r}");
        mapped += last - first + 1;
        ranges.push((lo, hi));
    }
    assert_eq!(field(&text, "MappedBlocksCount"), mapped.to_string());
    // Every non-zero byte is mapped.
    let covered = |i: usize| ranges.iter().any(|&(lo, hi)| lo <= i && i < hi);
    assert!(bytes.iter().enumerate().filter(|(_, &b)| b != 0).all(|(i, _)| covered(i)));
    bmaptool_copy(&raw, &b, d.path(), &ranges);
}

/// `bmaptool copy` onto a noise-filled file: every mapped range arrives intact.
fn bmaptool_copy(raw: &Path, bmap: &Path, dir: &Path, ranges: &[(usize, usize)]) {
    let have = Command::new("sh").args(["-c", "command -v bmaptool"]).output().is_ok_and(|o| o.status.success());
    if !have {
        skip_or_fail("bmaptool copy of our bmap", "bmaptool is not installed (Debian package bmap-tools)");
        return;
    }
    let (zst, gz) = (dir.join("disk.raw.zst"), dir.join("disk.raw.gz"));
    write_zstd(raw, &zst, 3, 2).unwrap();
    write_gzip(raw, &gz, 6, 2).unwrap();
    let target = dir.join("target.img");
    let size = fs::metadata(raw).unwrap().len();
    let src = fs::read(raw).unwrap();
    for image in [raw, &zst, &gz] {
        fs::write(&target, noise(usize::try_from(size).unwrap(), 9)).unwrap();
        let o = run("bmaptool", &["copy", "--bmap", s(bmap), s(image), s(&target)]);
        assert_ok("bmaptool copy", &o);
        eprintln!("{}", String::from_utf8_lossy(&o.stderr).trim());
        let dst = fs::read(&target).unwrap();
        for &(lo, hi) in ranges {
            assert!(src[lo..hi] == dst[lo..hi], "range {lo}..{hi} differs after bmaptool copy of {image:?}");
        }
        // A regular-file target is truncated first (§3.3), so the whole image arrives.
        assert!(src == dst, "bmaptool copy of {image:?} differs outside the mapped ranges");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One quick measurement: a 2 GiB image with 200 MiB of data in 20 islands (half noise, half
/// a repetitive text). `cargo test --release -p mkdisk-outputs -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check"]
fn timing_2gib() {
    let d = tmp();
    let text: Vec<u8> = b"the quick brown fox 0123456789 jumps over the lazy dog\n".repeat(190_651);
    let writes: Vec<(u64, Vec<u8>)> = (0..20u64)
        .map(|i| (i * 100 * MIB + 12_345, if i % 2 == 0 { noise(10 << 20, i) } else { text[..10 << 20].to_vec() }))
        .collect();
    let raw = sparse(&d.path().join("big.raw"), 2048 * MIB, &writes);
    let time = |name: &str, f: &dyn Fn() -> u64| {
        let t = std::time::Instant::now();
        let len = f();
        eprintln!("{name}: {:.2} s, {len} bytes", t.elapsed().as_secs_f64());
    };
    time("qcow2", &|| write_qcow2(&raw, &d.path().join("o.qcow2")).unwrap());
    time("vhd", &|| write_vhd(&raw, &d.path().join("o.vhd"), [0; 16], 0).unwrap());
    time("bmap", &|| {
        write_bmap(&raw, "big.raw", &d.path().join("o.bmap")).unwrap();
        0
    });
    time("zstd -3 T2", &|| write_zstd(&raw, &d.path().join("o.zst"), 3, 2).unwrap());
    time("zstd -3 T1", &|| write_zstd(&raw, &d.path().join("o1.zst"), 3, 1).unwrap());
    time("gzip -6 T2", &|| write_gzip(&raw, &d.path().join("o.gz"), 6, 2).unwrap());
    time("gzip -6 T1", &|| write_gzip(&raw, &d.path().join("o1.gz"), 6, 1).unwrap());
    let t = std::time::Instant::now();
    assert_ok(
        "qemu-img convert",
        &run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&d.path().join("q.qcow2"))]),
    );
    eprintln!("(qemu-img convert -O qcow2: {:.2} s)", t.elapsed().as_secs_f64());
    qemu_qcow2_ok(&raw, &d.path().join("o.qcow2"), 2048 * MIB);
}
