//! Linear directory blocks (`ext4_dir_entry_2`) with the metadata_csum tail
//! (`struct ext4_dir_entry_tail`).

use crate::csum;
use crate::le::{put_u16, put_u32, put_u8};
use crate::BLOCK_SIZE;

/// `file_type` values of `ext4_dir_entry_2`.
pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

/// Size of the fixed part of `ext4_dir_entry_2`.
pub(crate) const DIRENT_HEADER: usize = 8;
/// Size of `ext4_dir_entry_tail`.
pub(crate) const DIRENT_TAIL: usize = 12;
const _: () = assert!(DIRENT_HEADER == 8 && DIRENT_TAIL == 12);
/// Space for entries in a block with a checksum tail.
pub(crate) const LEAF_SPACE: usize = BLOCK_SIZE - DIRENT_TAIL;

/// One directory entry to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEnt {
    /// `inode`
    pub ino: u32,
    /// `file_type`
    pub ft: u8,
    /// `name` (1..=255 bytes)
    pub name: Vec<u8>,
}

/// Minimal `rec_len` for a name: 8 + name rounded up to 4.
pub(crate) fn rec_len(name_len: usize) -> usize {
    DIRENT_HEADER + name_len.div_ceil(4) * 4
}

/// A leaf block holding `ents` (which must fit in [`LEAF_SPACE`]); the last entry absorbs the
/// remaining space; an empty block is one unused entry spanning the space. Then the tail.
pub(crate) fn leaf_block(seed: u32, dir_ino: u32, ents: &[DirEnt]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let mut off = 0usize;
    if ents.is_empty() {
        put_u32(&mut b, 0, 0);
        put_u16(&mut b, 4, u16::try_from(LEAF_SPACE).expect("4084"));
    }
    for (i, e) in ents.iter().enumerate() {
        let len = if i + 1 == ents.len() { LEAF_SPACE - off } else { rec_len(e.name.len()) };
        put_u32(&mut b, off, e.ino);
        put_u16(&mut b, off + 4, u16::try_from(len).expect("a record within one block"));
        put_u8(&mut b, off + 6, u8::try_from(e.name.len()).expect("names are at most 255 bytes (numbering checks)"));
        put_u8(&mut b, off + 7, e.ft);
        b[off + 8..off + 8 + e.name.len()].copy_from_slice(&e.name);
        off += len;
    }
    debug_assert!(off <= LEAF_SPACE);
    // ext4_dir_entry_tail: det_reserved_zero1 = 0, det_rec_len = 12, det_reserved_zero2 = 0,
    // det_reserved_ft = 0xDE, det_checksum.
    put_u32(&mut b, LEAF_SPACE, 0);
    put_u16(&mut b, LEAF_SPACE + 4, u16::try_from(DIRENT_TAIL).expect("12"));
    put_u8(&mut b, LEAF_SPACE + 6, 0);
    put_u8(&mut b, LEAF_SPACE + 7, 0xDE);
    let c = csum::raw(seed, &[&dir_ino.to_le_bytes(), &0u32.to_le_bytes(), &b[..LEAF_SPACE]]);
    put_u32(&mut b, BLOCK_SIZE - 4, c);
    b
}
