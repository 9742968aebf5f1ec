//! btrfs writer: arbitrary small trees (optionally as a subvolume, optionally zstd) → plan →
//! write → walk. The plan either fails with a typed error or the write succeeds (the write
//! phase checks the plan and every compressed frame against it); chunks are disjoint and inside
//! the device, and the primary superblock carries the magic and the planned size. Then the
//! image walker (crate `mkdisk-btrfs-walk`, crates/btrfs-walk) reads the image back without
//! any external tool: superblock, chunk/root/extent/dev/csum/free-space/uuid trees, every tree block (checksum,
//! header, key order, item layout), back references, data checksums, inode and directory
//! invariants, and every file's bytes (raw and zstd), and compares the top level (or the
//! subvolume "root", id 256) with the input tree. Never a panic. (`btrfs check` runs on random
//! trees in the proptest of crates/btrfs.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkdisk_fuzz::{build_tree, scratch_region, Node};
use mkdisk_tree::{Meta, NoProgress, Tree};

fuzz_target!(|input: (Vec<Node>, u8, bool, bool)| {
    let (nodes, mib, zstd, subvol) = input;
    let tree = build_tree(&nodes);
    let size = (u64::from(mib % 96) + 32) << 20;
    let mut opts = mkdisk_btrfs::BtrfsOptions::new(size, uuid::Uuid::from_u128(9));
    if zstd {
        opts.compress = Some(mkdisk_btrfs::Compress::Zstd { level: 1, force: true });
    }
    let (top, subvols) = if subvol {
        let sv = mkdisk_btrfs::SubvolSpec { path: "root".into(), tree: std::borrow::Cow::Owned(tree), compress: None };
        (Tree::new(Meta::new(0o755)), vec![sv])
    } else {
        (tree, Vec::new())
    };
    let Ok(prepared) = mkdisk_btrfs::prepare(&top, &subvols, &opts) else { return };
    let Ok(layout) = mkdisk_btrfs::plan(&prepared, &opts) else { return };
    let mut chunks: Vec<(u64, u64)> =
        layout.chunks().iter().flat_map(|c| c.stripes.iter().map(move |&s| (s, c.length))).collect();
    chunks.sort_unstable();
    for w in chunks.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "chunk stripes overlap");
    }
    if let Some(last) = chunks.last() {
        assert!(last.0 + last.1 <= size, "chunk beyond the device");
    }
    let (_file, region) = scratch_region(size);
    mkdisk_btrfs::write(&layout, &region, &NoProgress).expect("write of a planned layout failed");
    let mut sb = [0u8; 4096];
    region.read_at(0x10000, &mut sb).unwrap();
    assert_eq!(&sb[0x40..0x48], b"_BHRfS_M");
    assert_eq!(u64::from_le_bytes(sb[0x70..0x78].try_into().unwrap()), layout.total_bytes());
    let read = |off: u64, buf: &mut [u8]| region.read_at(off, buf).map_err(|e| e.to_string());
    let walk = match mkdisk_btrfs_walk::walk(&read, size) {
        Ok(w) => w,
        Err(e) => panic!("walker rejected the image: {e}"),
    };
    assert_eq!(walk.data_extents.len(), layout.data_extents(), "data extents");
    assert_eq!(walk.blocks.len(), layout.tree_blocks(), "tree blocks");
    let (id, tree) = if subvol { (256, subvols[0].tree.as_ref()) } else { (5, &top) };
    if let Err(e) = mkdisk_btrfs_walk::compare(&walk, id, tree) {
        panic!("image differs from the tree: {e}");
    }
    if subvol {
        mkdisk_btrfs_walk::compare(&walk, 5, &top).expect("top level differs");
    }
});
