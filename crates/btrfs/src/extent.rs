//! Extent-tree and free-space-tree items: skinny `METADATA_ITEM`s with a `TREE_BLOCK_REF`,
//! data `EXTENT_ITEM`s with an inline `EXTENT_DATA_REF`, `FREE_SPACE_INFO`/`FREE_SPACE_EXTENT`.

use crate::le::{put_u32, put_u64, put_u8};

pub(crate) const EXTENT_ITEM_KEY: u8 = 168;
pub(crate) const METADATA_ITEM_KEY: u8 = 169;
pub(crate) const TREE_BLOCK_REF_KEY: u8 = 176;
pub(crate) const EXTENT_DATA_REF_KEY: u8 = 178;
pub(crate) const FREE_SPACE_INFO_KEY: u8 = 198;
pub(crate) const FREE_SPACE_EXTENT_KEY: u8 = 199;

const EXTENT_FLAG_DATA: u64 = 1;
const EXTENT_FLAG_TREE_BLOCK: u64 = 2;

/// `btrfs_extent_item` (24) + `btrfs_extent_inline_ref` (9).
pub(crate) const METADATA_ITEM_SIZE: usize = 33;
/// `btrfs_extent_item` (24) + type (1) + `btrfs_extent_data_ref` (28).
pub(crate) const DATA_EXTENT_ITEM_SIZE: usize = 53;

/// A tree block's extent item, referenced once by `owner`.
pub(crate) fn metadata_item(generation: u64, owner: u64) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_ITEM_SIZE];
    put_u64(&mut b, 0, 1); // refs
    put_u64(&mut b, 8, generation); // generation
    put_u64(&mut b, 16, EXTENT_FLAG_TREE_BLOCK); // flags
    put_u8(&mut b, 24, TREE_BLOCK_REF_KEY); // inline ref type
    put_u64(&mut b, 25, owner); // inline ref offset = root
    b
}

/// A data extent's item with one inline `EXTENT_DATA_REF`.
pub(crate) fn data_extent_item(generation: u64, root: u64, objectid: u64, offset: u64) -> Vec<u8> {
    let mut b = vec![0u8; DATA_EXTENT_ITEM_SIZE];
    put_u64(&mut b, 0, 1); // refs
    put_u64(&mut b, 8, generation); // generation
    put_u64(&mut b, 16, EXTENT_FLAG_DATA); // flags
    put_u8(&mut b, 24, EXTENT_DATA_REF_KEY); // inline ref type
    put_u64(&mut b, 25, root); // extent_data_ref.root
    put_u64(&mut b, 33, objectid); // extent_data_ref.objectid
    put_u64(&mut b, 41, offset); // extent_data_ref.offset
    put_u32(&mut b, 49, 1); // extent_data_ref.count
    b
}

/// `btrfs_free_space_info`.
pub(crate) fn free_space_info(extent_count: u32) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    put_u32(&mut b, 0, extent_count); // extent_count
    put_u32(&mut b, 4, 0); // flags
    b
}
