//! Block and inode bitmaps (one block each per group) with padding and checksums.

use crate::csum;
use crate::BLOCK_SIZE;

/// Block bitmap of a group starting at `start` with `len` blocks; `used` is the sorted, merged
/// list of used `(start, len)` ranges of the whole filesystem, starting the search at `*cursor`.
/// Bits past the end of a short last group are set.
pub(crate) fn block_bitmap(start: u64, len: u64, used: &[(u64, u64)]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let bit = |v: u64| usize::try_from(v).expect("a bit within one group's bitmap");
    let end = start + len;
    let first = used.partition_point(|&(s, l)| s + l <= start);
    for &(s, l) in &used[first..] {
        if s >= end {
            break;
        }
        let a = s.max(start) - start;
        let z = (s + l).min(end) - start;
        set_bits(&mut b, bit(a), bit(z));
    }
    set_bits(&mut b, bit(len), BLOCK_SIZE * 8);
    b
}

/// Inode bitmap with the first `used` inodes of the group in use; padding bytes past
/// `ipg / 8` are 0xFF.
pub(crate) fn inode_bitmap(used: u32, ipg: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    set_bits(&mut b, 0, used as usize);
    set_bits(&mut b, ipg as usize, BLOCK_SIZE * 8);
    b
}

fn set_bits(b: &mut [u8], from: usize, to: usize) {
    let mut i = from;
    while i < to && i % 8 != 0 {
        b[i / 8] |= 1 << (i % 8);
        i += 1;
    }
    while i + 8 <= to {
        b[i / 8] = 0xFF;
        i += 8;
    }
    while i < to {
        b[i / 8] |= 1 << (i % 8);
        i += 1;
    }
}

/// `bg_block_bitmap_csum`: over clusters_per_group / 8 bytes.
pub(crate) fn block_csum(seed: u32, b: &[u8]) -> u32 {
    csum::raw(seed, &[&b[..(crate::BLOCKS_PER_GROUP / 8) as usize]])
}

/// `bg_inode_bitmap_csum`: over inodes_per_group / 8 bytes.
pub(crate) fn inode_csum(seed: u32, b: &[u8], ipg: u32) -> u32 {
    csum::raw(seed, &[&b[..(ipg / 8) as usize]])
}
