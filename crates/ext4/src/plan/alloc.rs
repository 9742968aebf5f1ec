//! The free-space cursor every stage after [`super::fixed`] allocates from, and the extent
//! helpers built on it.

use super::PInode;
use crate::extent::{self, Extent};
use crate::BS;

/// Free-space cursor over the blocks not taken by fixed metadata: hands out blocks in
/// ascending order and counts what it could not give (`overflow`) instead of failing, so that
/// [`super::plan`] can report the whole size needed.
#[derive(Debug)]
pub(super) struct Alloc {
    /// Free ranges `(start, len)`, ascending.
    free: Vec<(u64, u64)>,
    idx: usize,
    off: u64,
    /// Blocks asked for beyond the end.
    pub overflow: u64,
    /// Every range handed out, fixed metadata included.
    pub used: Vec<(u64, u64)>,
}

impl Alloc {
    /// A cursor over `free` (ascending, disjoint) with `used` already taken.
    pub fn new(free: Vec<(u64, u64)>, used: Vec<(u64, u64)>) -> Self {
        Alloc { free, idx: 0, off: 0, overflow: 0, used }
    }

    /// Up to `n` blocks as ranges; a shortfall is added to `overflow`.
    pub fn alloc(&mut self, mut n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(&(s, l)) = self.free.get(self.idx) else {
                self.overflow = self.overflow.saturating_add(n);
                break;
            };
            let take = (l - self.off).min(n);
            out.push((s + self.off, take));
            self.used.push((s + self.off, take));
            self.off += take;
            n -= take;
            if self.off == l {
                self.idx += 1;
                self.off = 0;
            }
        }
        out
    }

    /// Up to `n` blocks, one by one.
    pub fn blocks(&mut self, n: u64) -> Vec<u64> {
        self.alloc(n).into_iter().flat_map(|(s, l)| s..s + l).collect()
    }
}

/// Append extents for logical blocks starting at `lblk` mapped to `pieces`; `None` when a
/// logical block would pass 2^32.
pub(super) fn push_extents(exts: &mut Vec<Extent>, mut lblk: u64, pieces: &[(u64, u64)]) -> Option<()> {
    let len32 = |n: u64| u32::try_from(n).expect("extent lengths are at most MAX_LEN = 32768");
    for &(mut p, mut l) in pieces {
        while l > 0 {
            if let Some(last) = exts.last_mut() {
                let ll = u64::from(last.len);
                if u64::from(last.lblk) + ll == lblk && last.pblk + ll == p && ll < extent::MAX_LEN {
                    let take = l.min(extent::MAX_LEN - ll);
                    last.len += len32(take);
                    lblk += take;
                    p += take;
                    l -= take;
                    continue;
                }
            }
            let take = l.min(extent::MAX_LEN);
            let lb = u32::try_from(lblk).ok()?;
            u32::try_from(lblk + take).ok()?;
            exts.push(Extent { lblk: lb, pblk: p, len: len32(take) });
            lblk += take;
            p += take;
            l -= take;
        }
    }
    Some(())
}

/// Build the extent root of `p` (and its tree blocks, allocated now) for `exts`.
///
/// # Errors
/// A human-readable reason when the extents need a tree deeper than two levels.
pub(super) fn finish_extents(
    p: &mut PInode,
    seed: u32,
    ino: u32,
    exts: &[Extent],
    al: &mut Alloc,
) -> Result<(), String> {
    let n =
        extent::tree_blocks(exts.len()).ok_or_else(|| format!("{} extents need a tree deeper than 2", exts.len()))?;
    let n64 = u64::try_from(n).expect("at most 4 + 4 × 340 tree blocks");
    let blocks = al.blocks(n64);
    if blocks.len() != n {
        // Out of space: the caller reports DoesNotFit from the overflow count.
        p.fields.i_block = [0; 60];
        return Ok(());
    }
    let (root, tb) = extent::build(seed, ino, exts, &blocks);
    p.fields.i_block = root;
    p.fields.blocks_512 += n64 * (BS / 512);
    p.ext_blocks = tb;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_walks_free_ranges_and_counts_overflow() {
        let mut al = Alloc::new(vec![(10, 3), (20, 5)], vec![(0, 10)]);
        assert_eq!(al.alloc(2), vec![(10, 2)]);
        assert_eq!(al.alloc(4), vec![(12, 1), (20, 3)]);
        assert_eq!(al.blocks(2), vec![23, 24]);
        assert_eq!(al.overflow, 0);
        assert_eq!(al.alloc(7), Vec::<(u64, u64)>::new());
        assert_eq!(al.overflow, 7);
        assert_eq!(al.used, vec![(0, 10), (10, 2), (12, 1), (20, 3), (23, 2)]);
    }

    #[test]
    fn extents_merge_and_split_at_max_len() {
        let mut exts = Vec::new();
        push_extents(&mut exts, 0, &[(100, 10), (110, 5), (200, extent::MAX_LEN)]).unwrap();
        assert_eq!(exts, vec![Extent { lblk: 0, pblk: 100, len: 15 }, Extent { lblk: 15, pblk: 200, len: 32768 },]);
        // Contiguous beyond MAX_LEN: the first extent fills up, the rest starts a new one.
        let mut exts = Vec::new();
        push_extents(&mut exts, 0, &[(0, 40000)]).unwrap();
        assert_eq!(exts, vec![Extent { lblk: 0, pblk: 0, len: 32768 }, Extent { lblk: 32768, pblk: 32768, len: 7232 }]);
        // Logical blocks end at 2^32.
        assert_eq!(push_extents(&mut Vec::new(), u64::from(u32::MAX), &[(0, 2)]), None);
    }

    #[test]
    fn finish_extents_inline_and_tree() {
        let mut p = PInode::unused();
        let mut al = Alloc::new(vec![(1000, 100)], Vec::new());
        let four: Vec<Extent> = (0..4).map(|i| Extent { lblk: i * 2, pblk: u64::from(i) * 10, len: 1 }).collect();
        finish_extents(&mut p, 0, 12, &four, &mut al).unwrap();
        assert!(p.ext_blocks.is_empty() && al.used.is_empty());
        let five: Vec<Extent> = (0..5).map(|i| Extent { lblk: i * 2, pblk: u64::from(i) * 10, len: 1 }).collect();
        finish_extents(&mut p, 0, 12, &five, &mut al).unwrap();
        assert_eq!(p.ext_blocks.len(), 1);
        assert_eq!(p.ext_blocks[0].0, 1000);
        assert_eq!(p.fields.blocks_512, 8);
    }
}
