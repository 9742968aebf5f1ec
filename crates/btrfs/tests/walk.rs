//! Integration tests with the self-contained image walker (`mkdisk_btrfs_walk`): build
//! images from trees (every inode kind, hard links, xattrs, holes, inline and regular, raw and
//! zstd, subvolumes, every checksum type), walk them without any external tool, compare them
//! with the trees, and check that corrupting a tree block or a data extent is caught.

mod common;

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;

use common::{base_tree, bytes, meta, opts, prepare_and_plan, MIB};
use mkdisk_btrfs::{write, BtrfsLayout, BtrfsOptions, Compress, CsumType, SubvolSpec};
use mkdisk_btrfs_walk::Walk;
use mkdisk_tree::{DataRun, FileData, Image, InodeId, Kind, NoProgress, Source, Tree, Xattr};
use sha2::Digest as _;

/// Every inode kind, hard links, xattrs, a sparse file, inline/regular boundaries, symlinks of
/// 59/60/3000 bytes, a host-file source and a 2,000-entry directory.
fn tree(host: &std::path::Path) -> Tree {
    let (mut t, d, sub) = base_tree();
    let r = InodeId::ROOT;
    t.add_file(r, b"compressible-3000", FileData::from_bytes(vec![b'a'; 3000]), meta(0o600)).unwrap();
    t.add_file(r, b"sector", FileData::from_bytes(vec![b'b'; 4096]), meta(0o600)).unwrap();
    let big = t.add_file(d, b"big", FileData::from_bytes(bytes(300_000, 3)), meta(0o644)).unwrap();
    t.add_file(sub, b"zeros", FileData::from_bytes(vec![0u8; 300_000]), meta(0o644)).unwrap();
    t.add_hardlink(r, b"big-link", big).unwrap();
    t.add_hardlink(sub, b"big-link2", big).unwrap();
    // Sparse: data at [5000, 9000) and [200000, 200100) of a 1 MiB file; zero elsewhere.
    let mut sparse = vec![0u8; 1 << 20];
    sparse[5000..9000].copy_from_slice(&bytes(4000, 4));
    sparse[200_000..200_100].copy_from_slice(&bytes(100, 5));
    let runs = vec![DataRun { offset: 5000, len: 4000 }, DataRun { offset: 200_000, len: 100 }];
    let sparse = FileData { size: 1 << 20, source: Source::Bytes(Arc::from(sparse)), runs };
    t.add_file(r, b"sparse", sparse, meta(0o644)).unwrap();
    let mut f = std::fs::File::create(host).unwrap();
    f.write_all(&bytes(150_000, 6)).unwrap();
    t.add_file(r, b"host", FileData::dense(150_000, Source::Host(host.to_path_buf())), meta(0o640)).unwrap();
    t.add_symlink(r, b"link59", &[b'y'; 59], meta(0o777)).unwrap();
    t.add_symlink(r, b"link60", &[b'z'; 60], meta(0o777)).unwrap();
    t.add_symlink(r, b"link3000", &[b'x'; 3000], meta(0o777)).unwrap();
    t.add(r, b"fifo", Kind::Fifo, meta(0o644)).unwrap();
    t.add(r, b"sock", Kind::Socket, meta(0o644)).unwrap();
    t.add(r, b"null", Kind::CharDev(0x0103), meta(0o666)).unwrap();
    t.add(r, b"loop0", Kind::BlockDev(0x0700), meta(0o660)).unwrap();
    let mut m = meta(0o644);
    m.uid = 1000;
    m.gid = 100;
    let x = t.add_file(r, b"xattrs", FileData::from_bytes(b"x".to_vec()), m).unwrap();
    t.meta_mut(x).xattrs = vec![
        Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() },
        Xattr { name: b"user.big".to_vec(), value: vec![7u8; 3000] },
    ];
    t.meta_mut(d).xattrs = vec![Xattr { name: b"user.dir".to_vec(), value: b"d".to_vec() }];
    t.add_file(r, &[b'n'; 255], FileData::from_bytes(b"long name".to_vec()), meta(0o644)).unwrap();
    let many = t.add_dir(r, b"many", meta(0o755)).unwrap();
    for i in 0..2000u32 {
        let name = format!("entry-{i:05}");
        let data = if i % 3 == 0 { bytes(i as usize % 700, i as u8) } else { Vec::new() };
        t.add_file(many, name.as_bytes(), FileData::from_bytes(data), meta(0o644)).unwrap();
    }
    t
}

/// Plan and write into a temporary image; returns the layout and the image bytes.
fn build(top: &Tree, subs: &[SubvolSpec<'_>], o: &BtrfsOptions) -> (BtrfsLayout, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let layout = prepare_and_plan(top, subs, o).unwrap();
    let image = Image::create(&path, o.size_bytes).unwrap();
    write(&layout, &image.whole(), &NoProgress).unwrap();
    let path = image.persist().unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(b.len() as u64, o.size_bytes);
    (layout, b)
}

fn reader(img: &[u8]) -> impl Fn(u64, &mut [u8]) -> Result<(), String> + '_ {
    move |off, buf| {
        let s = usize::try_from(off).map_err(|e| e.to_string())?;
        let src = s.checked_add(buf.len()).and_then(|e| img.get(s..e)).ok_or("read past the end")?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Every checksum type the writer supports, via the crate's own dependencies.
fn any_csum(ty: u16, data: &[u8]) -> Option<Vec<u8>> {
    match ty {
        0 => Some(crc32c::crc32c(data).to_le_bytes().to_vec()),
        1 => Some(xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes().to_vec()),
        2 => Some(sha2::Sha256::digest(data).to_vec()),
        3 => Some(blake2::Blake2b256::digest(data).to_vec()),
        _ => None,
    }
}

fn walk(img: &[u8]) -> Result<Walk, String> {
    let read = reader(img);
    mkdisk_btrfs_walk::walk_with_csum(&read, img.len() as u64, &any_csum)
}

fn walk_ok(layout: &BtrfsLayout, img: &[u8]) -> Walk {
    let w = walk(img).unwrap_or_else(|e| panic!("walker rejected the image: {e}"));
    assert_eq!(w.blocks.len(), layout.tree_blocks());
    assert_eq!(w.data_extents.len(), layout.data_extents());
    w
}

fn zstd3() -> Compress {
    Compress::Zstd { level: 3, force: true }
}

#[test]
fn plain_and_zstd_top_level() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    for compress in [None, Some(zstd3())] {
        let mut o = opts(128 * MIB);
        o.compress = compress;
        let (layout, img) = build(&t, &[], &o);
        let w = walk_ok(&layout, &img);
        let n = mkdisk_btrfs_walk::compare(&w, 5, &t).unwrap();
        assert_eq!(n, t.len(), "every inode compared");
        if compress.is_some() {
            assert!(layout.compressed_extents() > 0);
            // Compressed inline extents: compressible files under 4096 bytes (frame ≤ 2048).
            let fs = &w.fs_trees[&5];
            let inline_zstd = fs.inodes.values().filter(|i| i.inline && i.size > 2048 && i.mode & 0o170000 == 0o100000);
            assert!(inline_zstd.count() >= 1, "the 3000-byte compressible file is inline");
            assert!(w.compressed > layout.compressed_extents());
        } else {
            assert_eq!(w.compressed, 0);
        }
    }
}

#[test]
fn subvolume_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    let mut top = Tree::new(meta(0o755));
    top.add_file(InodeId::ROOT, b"top-file", FileData::from_bytes(bytes(10_000, 9)), meta(0o644)).unwrap();
    for compress in [None, Some(zstd3())] {
        let subs = [
            SubvolSpec { path: "root".into(), tree: Cow::Borrowed(&t), compress },
            SubvolSpec { path: "a/nested".into(), tree: Cow::Owned(Tree::new(meta(0o700))), compress: None },
        ];
        let (layout, img) = build(&top, &subs, &opts(128 * MIB));
        let w = walk_ok(&layout, &img);
        // Ids follow the sorted paths: "a/nested" 256, "root" 257.
        let mut links: Vec<(u64, u64, Vec<u8>)> = w.subvol_links.iter().map(|l| (l.0, l.1, l.4.clone())).collect();
        links.sort();
        assert_eq!(links, [(5, 256, b"nested".to_vec()), (5, 257, b"root".to_vec())]);
        assert_eq!(mkdisk_btrfs_walk::compare(&w, 257, &t).unwrap(), t.len());
        assert_eq!(mkdisk_btrfs_walk::compare(&w, 256, &Tree::new(meta(0o700))).unwrap(), 1);
        // The top level has "top-file", "root" (a subvolume) and "a" (created for the nested one).
        let five = &w.fs_trees[&5];
        assert_eq!(five.inodes[&256].entries.len(), 3);
        // Comparing the wrong tree fails.
        assert!(mkdisk_btrfs_walk::compare(&w, 5, &t).is_err());
    }
}

#[test]
fn every_csum_type() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    for (csum, code) in [(CsumType::Crc32c, 0), (CsumType::Xxhash64, 1), (CsumType::Sha256, 2), (CsumType::Blake2b, 3)]
    {
        let mut o = opts(64 * MIB);
        o.csum = csum;
        o.compress = Some(zstd3());
        let (layout, img) = build(&t, &[], &o);
        let w = walk_ok(&layout, &img);
        assert_eq!(w.csum_type, code);
        mkdisk_btrfs_walk::compare(&w, 5, &t).unwrap();
        // The built-in checksum is crc32c only.
        let read = reader(&img);
        let builtin = mkdisk_btrfs_walk::walk(&read, img.len() as u64);
        if code == 0 {
            builtin.unwrap();
        } else {
            assert_eq!(builtin.unwrap_err(), format!("unsupported csum type {code}"));
        }
    }
}

/// Physical offsets of a logical address on every stripe.
fn phys(w: &Walk, logical: u64) -> Vec<u64> {
    let c = w.chunks.iter().find(|c| c.logical <= logical && logical < c.logical + c.length).unwrap();
    c.stripes.iter().map(|s| s + (logical - c.logical)).collect()
}

#[test]
fn corruption_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    for compress in [None, Some(zstd3())] {
        let mut o = opts(64 * MIB);
        o.compress = compress;
        let (layout, mut img) = build(&t, &[], &o);
        let w = walk_ok(&layout, &img);
        // One byte of every tree block's first copy (and of a few second copies): header
        // checksum or the DUP comparison catches it.
        for (i, &(addr, owner, _)) in w.blocks.iter().enumerate() {
            let p = phys(&w, addr);
            let stripes: &[u64] = if i % 7 == 0 { &p } else { &p[..1] };
            for (k, &at) in stripes.iter().enumerate() {
                let off = usize::try_from(at).unwrap() + 200 + i % 1000;
                img[off] ^= 0x40;
                let r = walk(&img);
                img[off] ^= 0x40;
                let e = r.expect_err("a corrupted tree block was accepted");
                if k == 0 {
                    assert!(
                        e.contains("checksum mismatch") || e.contains("differs"),
                        "block {addr} (tree {owner}): {e}"
                    );
                } else {
                    assert!(e.contains("stripe 1 differs"), "block {addr} (tree {owner}), stripe 1: {e}");
                }
            }
        }
        // One byte of each data extent: the data checksum catches it.
        for &(bytenr, len) in &w.data_extents {
            let off = usize::try_from(phys(&w, bytenr)[0] + len / 2).unwrap();
            img[off] ^= 1;
            let r = walk(&img);
            img[off] ^= 1;
            let e = r.expect_err("a corrupted data extent was accepted");
            assert!(e.contains("data checksum mismatch"), "extent {bytenr}: {e}");
        }
        // The primary superblock.
        let mut bad = img.clone();
        bad[0x10000 + 300] ^= 1;
        assert!(walk(&bad).unwrap_err().contains("superblock"));
    }
}

/// Patch a leaf of fs tree 5 and re-checksum it on both stripes: the walker accepts the image
/// (it is consistent) but the comparison with the tree fails.
#[test]
fn compare_catches_consistent_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    let (layout, img) = build(&t, &[], &opts(64 * MIB));
    let w = walk_ok(&layout, &img);
    let leaf = w.blocks.iter().find(|b| b.1 == 5 && b.2 == 0).unwrap().0;
    let p = phys(&w, leaf);
    let start = usize::try_from(p[0]).unwrap();
    let block = &img[start..start + 16384];
    // The first INODE_ITEM in the leaf: change its uid.
    let nritems = u32::from_le_bytes(block[96..100].try_into().unwrap()) as usize;
    let item = (0..nritems).map(|i| 101 + i * 25).find(|&o| block[o + 8] == 1).unwrap();
    let data = 101 + u32::from_le_bytes(block[item + 17..item + 21].try_into().unwrap()) as usize;
    let mut bad = img.clone();
    for &s in &p {
        let s = usize::try_from(s).unwrap();
        bad[s + data + 44] ^= 1; // uid
        let c = crc32c::crc32c(&bad[s + 32..s + 16384]);
        bad[s..s + 4].copy_from_slice(&c.to_le_bytes());
    }
    let w2 = walk(&bad).unwrap();
    let e = mkdisk_btrfs_walk::compare(&w2, 5, &t).unwrap_err();
    assert!(e.contains("uid"), "{e}");
}

/// Truncated images, and tree blocks with random bytes changed and the checksum recomputed
/// on both stripes (so the parser, not the checksum, meets them): errors, never panics.
#[test]
fn malformed_blocks_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tree(&tmp.path().join("host"));
    let mut o = opts(64 * MIB);
    o.compress = Some(zstd3());
    let (layout, img) = build(&t, &[], &o);
    let w = walk_ok(&layout, &img);
    for len in [0usize, 4096, 0x10000 + 4095, 2 * MIB as usize, 9 * MIB as usize] {
        assert!(walk(&img[..len]).is_err());
    }
    let mut x = 0x1234_5678_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as usize
    };
    let (mut rejected, mut differs) = (0, 0);
    let mut bad = img.clone();
    for _ in 0..400 {
        let (addr, _, _) = w.blocks[next() % w.blocks.len()];
        let p = phys(&w, addr);
        let n = 1 + next() % 3;
        let edits: Vec<(usize, u8)> = (0..n).map(|_| (48 + next() % (16384 - 48), next() as u8)).collect();
        for &s in &p {
            let s = usize::try_from(s).unwrap();
            for &(o, v) in &edits {
                bad[s + o] = v;
            }
            let c = crc32c::crc32c(&bad[s + 32..s + 16384]);
            bad[s..s + 4].copy_from_slice(&c.to_le_bytes());
        }
        match walk(&bad) {
            Err(_) => rejected += 1,
            Ok(w2) => {
                if mkdisk_btrfs_walk::compare(&w2, 5, &t).is_err() {
                    differs += 1;
                }
            }
        }
        for &s in &p {
            let s = usize::try_from(s).unwrap();
            bad[s..s + 16384].copy_from_slice(&img[s..s + 16384]);
        }
    }
    assert!(
        rejected > 250 && rejected + differs > 350,
        "only {rejected} of 400 edited images rejected ({differs} differ from the tree)"
    );
}
