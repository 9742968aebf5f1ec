//! `struct ext4_group_desc` (64 bytes with the 64bit feature) and its checksum.

use crate::csum;
use crate::le::{hi32, lo16, lo32, put_u16, put_u32};

/// `s_desc_size`.
pub(crate) const DESC_SIZE: usize = 64;
const _: () = assert!(DESC_SIZE == 64);

/// `EXT4_BG_INODE_UNINIT`.
pub(crate) const BG_INODE_UNINIT: u16 = 0x1;
/// `EXT4_BG_BLOCK_UNINIT`.
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x2;
/// `EXT4_BG_INODE_ZEROED`.
pub(crate) const BG_INODE_ZEROED: u16 = 0x4;

/// One group's descriptor contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDesc {
    /// Block bitmap block.
    pub block_bitmap: u64,
    /// Inode bitmap block.
    pub inode_bitmap: u64,
    /// First inode table block.
    pub inode_table: u64,
    /// Free blocks in this group.
    pub free_blocks: u32,
    /// Free inodes in this group.
    pub free_inodes: u32,
    /// Directories in this group.
    pub used_dirs: u32,
    /// `bg_flags`.
    pub flags: u16,
    /// `bg_itable_unused`.
    pub itable_unused: u32,
    /// Block bitmap checksum (0 when BLOCK_UNINIT).
    pub block_bitmap_csum: u32,
    /// Inode bitmap checksum (0 when INODE_UNINIT).
    pub inode_bitmap_csum: u32,
}

impl GroupDesc {
    /// Encode with `bg_checksum` for group `g`.
    pub(crate) fn encode(&self, seed: u32, g: u32) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        put_u32(&mut b, 0x00, lo32(self.block_bitmap)); // bg_block_bitmap_lo
        put_u32(&mut b, 0x04, lo32(self.inode_bitmap)); // bg_inode_bitmap_lo
        put_u32(&mut b, 0x08, lo32(self.inode_table)); // bg_inode_table_lo
        put_u16(&mut b, 0x0C, lo16(self.free_blocks)); // bg_free_blocks_count_lo
        put_u16(&mut b, 0x0E, lo16(self.free_inodes)); // bg_free_inodes_count_lo
        put_u16(&mut b, 0x10, lo16(self.used_dirs)); // bg_used_dirs_count_lo
        put_u16(&mut b, 0x12, self.flags); // bg_flags
        put_u16(&mut b, 0x18, lo16(self.block_bitmap_csum)); // bg_block_bitmap_csum_lo
        put_u16(&mut b, 0x1A, lo16(self.inode_bitmap_csum)); // bg_inode_bitmap_csum_lo
        put_u16(&mut b, 0x1C, lo16(self.itable_unused)); // bg_itable_unused_lo
        put_u32(&mut b, 0x20, hi32(self.block_bitmap)); // bg_block_bitmap_hi
        put_u32(&mut b, 0x24, hi32(self.inode_bitmap)); // bg_inode_bitmap_hi
        put_u32(&mut b, 0x28, hi32(self.inode_table)); // bg_inode_table_hi
        put_u16(&mut b, 0x2C, (self.free_blocks >> 16) as u16); // bg_free_blocks_count_hi
        put_u16(&mut b, 0x2E, (self.free_inodes >> 16) as u16); // bg_free_inodes_count_hi
        put_u16(&mut b, 0x30, (self.used_dirs >> 16) as u16); // bg_used_dirs_count_hi
        put_u16(&mut b, 0x32, (self.itable_unused >> 16) as u16); // bg_itable_unused_hi
        put_u16(&mut b, 0x38, (self.block_bitmap_csum >> 16) as u16); // bg_block_bitmap_csum_hi
        put_u16(&mut b, 0x3A, (self.inode_bitmap_csum >> 16) as u16); // bg_inode_bitmap_csum_hi
        let c = csum::raw(seed, &[&g.to_le_bytes(), &b]);
        put_u16(&mut b, 0x1E, (c & 0xFFFF) as u16); // bg_checksum
        b
    }
}
