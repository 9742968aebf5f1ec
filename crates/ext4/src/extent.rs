//! Extent trees (`lib/ext2fs/ext3_extents.h`): header, leaf and index entries, the in-inode
//! root (`eh_max` 4) and tree blocks (`eh_max` 340 plus a checksum tail).

use crate::csum;
use crate::le::{hi16, lo32, put_u16, put_u32};
use crate::BLOCK_SIZE;

/// `eh_magic`.
const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// Size of `ext4_extent_header`, `ext4_extent`, `ext4_extent_idx`.
const ENTRY: usize = 12;
const _: () = assert!(ENTRY == 12);
/// `eh_max` of the root in `i_block` (60 bytes).
pub(crate) const ROOT_MAX: usize = 4;
/// `eh_max` of a tree block: (bs - 12) / 12.
pub(crate) const BLOCK_MAX: usize = (BLOCK_SIZE - ENTRY) / ENTRY;
const _: () = assert!(BLOCK_MAX == 340);
/// Longest initialised extent.
pub(crate) const MAX_LEN: u64 = 32768;

/// One leaf extent: `ee_block`, `ee_len`, `ee_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    /// First logical block.
    pub lblk: u32,
    /// Physical block.
    pub pblk: u64,
    /// Length in blocks (1..=32768).
    pub len: u32,
}

/// Number of tree blocks needed for `n` extents (0 when they fit in the inode); `None` if
/// beyond depth 2.
pub(crate) fn tree_blocks(n: usize) -> Option<usize> {
    if n <= ROOT_MAX {
        return Some(0);
    }
    let leaves = n.div_ceil(BLOCK_MAX);
    if leaves <= ROOT_MAX {
        return Some(leaves);
    }
    let idx = leaves.div_ceil(BLOCK_MAX);
    if idx <= ROOT_MAX {
        return Some(leaves + idx);
    }
    None
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put_u16(b, 0, EXT4_EXT_MAGIC);
    put_u16(b, 2, u16::try_from(entries).expect("at most BLOCK_MAX = 340 entries"));
    put_u16(b, 4, u16::try_from(max).expect("ROOT_MAX or BLOCK_MAX"));
    put_u16(b, 6, depth);
    put_u32(b, 8, 0); // eh_generation
}

fn leaf(b: &mut [u8], off: usize, e: &Extent) {
    put_u32(b, off, e.lblk); // ee_block
    put_u16(b, off + 4, u16::try_from(e.len).expect("extents are at most MAX_LEN = 32768")); // ee_len
    put_u16(b, off + 6, hi16(e.pblk)); // ee_start_hi
    put_u32(b, off + 8, lo32(e.pblk)); // ee_start_lo
}

fn index(b: &mut [u8], off: usize, lblk: u32, child: u64) {
    put_u32(b, off, lblk); // ei_block
    put_u32(b, off + 4, lo32(child)); // ei_leaf_lo
    put_u16(b, off + 8, hi16(child)); // ei_leaf_hi
    put_u16(b, off + 10, 0); // ei_unused
}

fn finish_block(seed: u32, ino: u32, b: &mut [u8]) {
    let end = ENTRY + ENTRY * BLOCK_MAX;
    let c = csum::raw(seed, &[&ino.to_le_bytes(), &0u32.to_le_bytes(), &b[..end]]);
    put_u32(b, end, c);
}

/// Build the tree for `exts` (sorted): returns `i_block` and the tree blocks as
/// `(block number, bytes)`, using `blocks` (exactly [`tree_blocks`] of them: leaves first, then
/// index blocks).
pub(crate) fn build(seed: u32, ino: u32, exts: &[Extent], blocks: &[u64]) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    let mut root = [0u8; 60];
    if exts.len() <= ROOT_MAX {
        header(&mut root, exts.len(), ROOT_MAX, 0);
        for (i, e) in exts.iter().enumerate() {
            leaf(&mut root, ENTRY * (i + 1), e);
        }
        return (root, Vec::new());
    }
    let mut out = Vec::new();
    let chunks: Vec<&[Extent]> = exts.chunks(BLOCK_MAX).collect();
    let mut level: Vec<(u32, u64)> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut b = vec![0u8; BLOCK_SIZE];
        header(&mut b, c.len(), BLOCK_MAX, 0);
        for (j, e) in c.iter().enumerate() {
            leaf(&mut b, ENTRY * (j + 1), e);
        }
        finish_block(seed, ino, &mut b);
        out.push((blocks[i], b));
        level.push((c[0].lblk, blocks[i]));
    }
    let mut depth = 1u16;
    if level.len() > ROOT_MAX {
        let base = level.len();
        let mut next = Vec::new();
        for (i, c) in level.chunks(BLOCK_MAX).enumerate() {
            let mut b = vec![0u8; BLOCK_SIZE];
            header(&mut b, c.len(), BLOCK_MAX, 1);
            for (j, &(l, p)) in c.iter().enumerate() {
                index(&mut b, ENTRY * (j + 1), l, p);
            }
            finish_block(seed, ino, &mut b);
            out.push((blocks[base + i], b));
            next.push((c[0].0, blocks[base + i]));
        }
        level = next;
        depth = 2;
    }
    header(&mut root, level.len(), ROOT_MAX, depth);
    for (i, &(l, p)) in level.iter().enumerate() {
        index(&mut root, ENTRY * (i + 1), l, p);
    }
    (root, out)
}
