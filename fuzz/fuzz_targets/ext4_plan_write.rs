//! ext4 writer: arbitrary small trees → plan → write. The plan either fails with a typed error
//! or the write succeeds (the write phase asserts the plan: extents sorted, disjoint, in
//! bounds) and the superblock magic and block count land where the plan says. Never a panic.
//! (e2fsck runs on random trees in the proptest of crates/ext4; this target needs no tools.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkdisk_fuzz::{build_tree, scratch_region, Node};
use mkdisk_tree::NoProgress;

fuzz_target!(|input: (Vec<Node>, u8)| {
    let (nodes, mib) = input;
    let tree = build_tree(&nodes);
    let size = (u64::from(mib % 48) + 4) << 20;
    let opts = mkdisk_ext4::Ext4Options::new(size, uuid::Uuid::from_u128(7));
    let Ok(layout) = mkdisk_ext4::plan(&tree, &opts) else { return };
    let (_file, region) = scratch_region(size);
    mkdisk_ext4::write(&layout, &tree, &region, &NoProgress).expect("write of a planned layout failed");
    let mut sb = [0u8; 1024];
    region.read_at(1024, &mut sb).unwrap();
    assert_eq!(&sb[0x38..0x3A], &[0x53, 0xEF], "superblock magic");
    let blocks = u64::from(u32::from_le_bytes(sb[4..8].try_into().unwrap()))
        | u64::from(u32::from_le_bytes(sb[0x150..0x154].try_into().unwrap())) << 32;
    assert_eq!(blocks, layout.blocks_count());
});
