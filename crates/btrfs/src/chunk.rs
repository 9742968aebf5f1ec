//! Chunk-tree and dev-tree items: `btrfs_dev_item`, `btrfs_chunk` + `btrfs_stripe`,
//! `btrfs_dev_extent`, and the extent tree's `btrfs_block_group_item`.

use crate::le::{put_bytes, put_u16, put_u32, put_u64};
use crate::{SECTORSIZE_U32, STRIPE_LEN, STRIPE_LEN_U32};

pub(crate) const DEV_ITEM_KEY: u8 = 216;
pub(crate) const CHUNK_ITEM_KEY: u8 = 228;
pub(crate) const DEV_EXTENT_KEY: u8 = 204;
pub(crate) const BLOCK_GROUP_ITEM_KEY: u8 = 192;
pub(crate) const PERSISTENT_ITEM_KEY: u8 = 249;

/// `BTRFS_FIRST_CHUNK_TREE_OBJECTID`.
pub(crate) const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
/// `BTRFS_DEV_ITEMS_OBJECTID`.
pub(crate) const DEV_ITEMS_OBJECTID: u64 = 1;

// Block group flags.
pub(crate) const BLOCK_GROUP_DATA: u64 = 0x1;
pub(crate) const BLOCK_GROUP_SYSTEM: u64 = 0x2;
pub(crate) const BLOCK_GROUP_METADATA: u64 = 0x4;
pub(crate) const BLOCK_GROUP_DUP: u64 = 0x20;

/// `sizeof(struct btrfs_dev_item)`.
pub(crate) const DEV_ITEM_SIZE: usize = 98;
/// `sizeof(struct btrfs_chunk)` with one stripe.
pub(crate) const CHUNK_ITEM_BASE: usize = 80;
/// `sizeof(struct btrfs_stripe)`.
pub(crate) const STRIPE_SIZE: usize = 32;
/// `sizeof(struct btrfs_dev_extent)`.
pub(crate) const DEV_EXTENT_SIZE: usize = 48;
/// `sizeof(struct btrfs_block_group_item)`.
pub(crate) const BLOCK_GROUP_ITEM_SIZE: usize = 24;

/// One chunk: a logical range and its physical stripes on device 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Logical start.
    pub logical: u64,
    /// Length in bytes (per stripe).
    pub length: u64,
    /// Block group flags (type | profile).
    pub flags: u64,
    /// Physical start of each stripe.
    pub stripes: Vec<u64>,
}

impl Chunk {
    /// `btrfs_chunk` with its stripes.
    pub(crate) fn encode(&self, dev_uuid: &[u8; 16]) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK_ITEM_BASE + STRIPE_SIZE * (self.stripes.len().saturating_sub(1))];
        put_u64(&mut b, 0, self.length); // length
        put_u64(&mut b, 8, 2); // owner (BTRFS_EXTENT_TREE_OBJECTID)
        put_u64(&mut b, 16, STRIPE_LEN); // stripe_len
        put_u64(&mut b, 24, self.flags); // type
        put_u32(&mut b, 32, STRIPE_LEN_U32); // io_align
        put_u32(&mut b, 36, STRIPE_LEN_U32); // io_width
        put_u32(&mut b, 40, SECTORSIZE_U32); // sector_size
        let num_stripes = u16::try_from(self.stripes.len()).expect("chunks have one (SINGLE) or two (DUP) stripes");
        put_u16(&mut b, 44, num_stripes); // num_stripes
        put_u16(&mut b, 46, 1); // sub_stripes
        for (i, &phys) in self.stripes.iter().enumerate() {
            let o = 48 + i * STRIPE_SIZE;
            put_u64(&mut b, o, 1); // devid
            put_u64(&mut b, o + 8, phys); // offset
            put_bytes(&mut b, o + 16, dev_uuid); // dev_uuid
        }
        b
    }

    pub(crate) fn end(&self) -> u64 {
        self.logical + self.length
    }
}

/// `btrfs_dev_item` for device 1.
pub(crate) fn dev_item(total_bytes: u64, bytes_used: u64, dev_uuid: &[u8; 16], fsid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; DEV_ITEM_SIZE];
    put_u64(&mut b, 0, 1); // devid
    put_u64(&mut b, 8, total_bytes); // total_bytes
    put_u64(&mut b, 16, bytes_used); // bytes_used
    put_u32(&mut b, 24, SECTORSIZE_U32); // io_align
    put_u32(&mut b, 28, SECTORSIZE_U32); // io_width
    put_u32(&mut b, 32, SECTORSIZE_U32); // sector_size
                                         // type 36, generation 44, start_offset 52, dev_group 60, seek_speed 64, bandwidth 65: 0
    put_bytes(&mut b, 66, dev_uuid); // uuid
    put_bytes(&mut b, 82, fsid); // fsid
    b
}

/// `btrfs_dev_extent` for one stripe of `chunk_offset`.
pub(crate) fn dev_extent(chunk_offset: u64, length: u64, chunk_tree_uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; DEV_EXTENT_SIZE];
    put_u64(&mut b, 0, 3); // chunk_tree
    put_u64(&mut b, 8, FIRST_CHUNK_TREE_OBJECTID); // chunk_objectid
    put_u64(&mut b, 16, chunk_offset); // chunk_offset
    put_u64(&mut b, 24, length); // length
    put_bytes(&mut b, 32, chunk_tree_uuid); // chunk_tree_uuid
    b
}

/// `btrfs_block_group_item`.
pub(crate) fn block_group_item(used: u64, flags: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_GROUP_ITEM_SIZE];
    put_u64(&mut b, 0, used); // used
    put_u64(&mut b, 8, FIRST_CHUNK_TREE_OBJECTID); // chunk_objectid
    put_u64(&mut b, 16, flags); // flags
    b
}
