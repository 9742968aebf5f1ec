//! The internal journal (inode 8): size table and the JBD2 v2 superblock (big-endian).

use crate::le::put_be32;
use crate::BLOCK_SIZE;

/// `JBD2_MAGIC_NUMBER`.
const JBD2_MAGIC: u32 = 0xC03B_3998;
/// `JBD2_SUPERBLOCK_V2`.
const JBD2_SUPERBLOCK_V2: u32 = 4;
/// Size of `journal_superblock_t`.
const JSB_SIZE: usize = 1024;
const _: () = assert!(JSB_SIZE <= BLOCK_SIZE);

/// `ext2fs_default_journal_size` for 4 KiB blocks; 0 = no journal.
pub(crate) fn default_blocks(fs_blocks: u64) -> u64 {
    match fs_blocks {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

/// The first journal block: an empty, clean v2 journal with no features.
pub(crate) fn superblock(maxlen: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_be32(&mut b, 0x00, JBD2_MAGIC); // h_magic
    put_be32(&mut b, 0x04, JBD2_SUPERBLOCK_V2); // h_blocktype
    put_be32(&mut b, 0x08, 0); // h_sequence
    put_be32(&mut b, 0x0C, u32::try_from(BLOCK_SIZE).expect("4096")); // s_blocksize
    put_be32(&mut b, 0x10, maxlen); // s_maxlen
    put_be32(&mut b, 0x14, 1); // s_first
    put_be32(&mut b, 0x18, 1); // s_sequence
    put_be32(&mut b, 0x1C, 0); // s_start: empty
    b[0x30..0x40].copy_from_slice(uuid); // s_uuid
    put_be32(&mut b, 0x40, 1); // s_nr_users
    b
}
