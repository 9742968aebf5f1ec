//! `struct btrfs_super_block` (4096 bytes at 64 KiB, 64 MiB and 256 GiB).

use crate::le::{put_bytes, put_u16, put_u32, put_u64, put_u8};
use crate::{CsumType, NODESIZE_U32, SECTORSIZE_U32};

/// `sizeof(struct btrfs_super_block)`.
pub(crate) const SUPER_INFO_SIZE: usize = 4096;
/// `BTRFS_MAGIC` ("_BHRfS_M").
pub(crate) const MAGIC: u64 = 0x4D5F_5366_5248_425F;
/// `BTRFS_SYSTEM_CHUNK_ARRAY_SIZE`.
pub(crate) const SYS_CHUNK_ARRAY_SIZE: usize = 2048;
/// Offset of `sys_chunk_array`.
const SYS_CHUNK_ARRAY_OFF: usize = 811;
const _: () = assert!(SYS_CHUNK_ARRAY_OFF + SYS_CHUNK_ARRAY_SIZE + 4 * 168 + 565 == SUPER_INFO_SIZE);

/// Physical offset of superblock copy `i` (`btrfs_sb_offset`).
pub(crate) fn sb_offset(i: u32) -> u64 {
    if i == 0 {
        65536
    } else {
        (16 * 1024u64) << (12 * i)
    }
}

/// Everything the superblock records.
pub(crate) struct Super<'a> {
    pub fsid: [u8; 16],
    pub generation: u64,
    pub root: u64,
    pub root_level: u8,
    pub chunk_root: u64,
    pub chunk_root_level: u8,
    pub total_bytes: u64,
    pub bytes_used: u64,
    pub incompat_flags: u64,
    pub compat_ro_flags: u64,
    pub csum: CsumType,
    pub dev_item: &'a [u8],
    pub label: &'a [u8],
    pub sys_chunk_array: &'a [u8],
}

impl Super<'_> {
    /// The copy stored at physical `bytenr`, checksummed.
    pub(crate) fn encode(&self, bytenr: u64) -> Vec<u8> {
        let mut b = vec![0u8; SUPER_INFO_SIZE];
        put_bytes(&mut b, 32, &self.fsid); // fsid
        put_u64(&mut b, 48, bytenr); // bytenr
        put_u64(&mut b, 56, 1); // flags (BTRFS_HEADER_FLAG_WRITTEN)
        put_u64(&mut b, 64, MAGIC); // magic
        put_u64(&mut b, 72, self.generation); // generation
        put_u64(&mut b, 80, self.root); // root
        put_u64(&mut b, 88, self.chunk_root); // chunk_root
        put_u64(&mut b, 96, 0); // log_root
        put_u64(&mut b, 112, self.total_bytes); // total_bytes
        put_u64(&mut b, 120, self.bytes_used); // bytes_used
        put_u64(&mut b, 128, 6); // root_dir_objectid
        put_u64(&mut b, 136, 1); // num_devices
        put_u32(&mut b, 144, SECTORSIZE_U32); // sectorsize
        put_u32(&mut b, 148, NODESIZE_U32); // nodesize
        put_u32(&mut b, 152, NODESIZE_U32); // __unused_leafsize
        put_u32(&mut b, 156, SECTORSIZE_U32); // stripesize
        let array_len = u32::try_from(self.sys_chunk_array.len()).expect("the sys_chunk_array holds one chunk item");
        put_u32(&mut b, 160, array_len); // sys_chunk_array_size
        put_u64(&mut b, 164, self.generation); // chunk_root_generation
        put_u64(&mut b, 172, 0); // compat_flags
        put_u64(&mut b, 180, self.compat_ro_flags); // compat_ro_flags
        put_u64(&mut b, 188, self.incompat_flags); // incompat_flags
        put_u16(&mut b, 196, self.csum.code()); // csum_type
        put_u8(&mut b, 198, self.root_level); // root_level
        put_u8(&mut b, 199, self.chunk_root_level); // chunk_root_level
        put_u8(&mut b, 200, 0); // log_root_level
        put_bytes(&mut b, 201, self.dev_item); // dev_item
        put_bytes(&mut b, 299, &self.label[..self.label.len().min(255)]); // label
        put_u64(&mut b, 555, 0); // cache_generation
        put_u64(&mut b, 563, self.generation); // uuid_tree_generation
        put_bytes(&mut b, SYS_CHUNK_ARRAY_OFF, self.sys_chunk_array); // sys_chunk_array
        let mut sum = [0u8; 32];
        self.csum.compute(&b[32..], &mut sum);
        b[..32].copy_from_slice(&sum);
        b
    }
}
