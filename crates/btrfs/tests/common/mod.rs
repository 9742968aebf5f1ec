//! Helpers shared by the btrfs integration tests (`btrfs.rs`, checked by btrfs-progs and the
//! kernel, and `walk.rs`, checked by the self-contained walker).

use mkdisk_btrfs::{plan, prepare, BtrfsError, BtrfsLayout, BtrfsOptions, SubvolSpec};
use mkdisk_tree::{FileData, InodeId, Meta, Timestamp, Tree};
use uuid::Uuid;

pub const UUID: &str = "11111111-2222-3333-4444-555555555555";
pub const MIB: u64 = 1 << 20;

/// Options for a `size`-byte filesystem with the test UUID and a fixed timestamp.
pub fn opts(size: u64) -> BtrfsOptions {
    let mut o = BtrfsOptions::new(size, Uuid::parse_str(UUID).unwrap());
    o.timestamp = 1_700_000_000;
    o
}

/// Metadata with nanoseconds in the mtime.
pub fn meta(perm: u16) -> Meta {
    Meta::new(perm).with_mtime(Timestamp { sec: 1_600_000_000, nsec: 123_456_789 })
}

/// `n` patterned (compressible but not trivial) bytes.
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8)).collect()
}

/// The start both fixture trees share: `dir/sub`, an empty file, a small one, and files at
/// and just over the 2048-byte inline limit. Returns the tree, `dir` and `dir/sub`.
pub fn base_tree() -> (Tree, InodeId, InodeId) {
    let mut t = Tree::new(meta(0o755));
    let r = InodeId::ROOT;
    let d = t.add_dir(r, b"dir", meta(0o750)).unwrap();
    let sub = t.add_dir(d, b"sub", meta(0o700)).unwrap();
    t.add_file(r, b"empty", FileData::from_bytes(Vec::new()), meta(0o644)).unwrap();
    t.add_file(r, b"small", FileData::from_bytes(b"hello btrfs\n".to_vec()), meta(0o644)).unwrap();
    t.add_file(r, b"inline-max", FileData::from_bytes(bytes(2048, 1)), meta(0o644)).unwrap();
    t.add_file(r, b"just-over", FileData::from_bytes(bytes(2049, 2)), meta(0o600)).unwrap();
    (t, d, sub)
}

/// [`prepare`] then [`plan`]: what the tests build.
pub fn prepare_and_plan(top: &Tree, subs: &[SubvolSpec<'_>], o: &BtrfsOptions) -> Result<BtrfsLayout, BtrfsError> {
    prepare(top, subs, o).and_then(|p| plan(&p, o))
}
