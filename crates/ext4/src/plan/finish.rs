//! Stage 5: finish the groups. The used block map (merged, checked for double allocation),
//! per-group free block and inode counts, used directories, `BLOCK_UNINIT` / `INODE_UNINIT` /
//! `ITABLE_ZEROED` flags and `bg_itable_unused`, then the superblock fields.

use super::geometry::Geometry;
use super::{Ident, PInode};
use crate::group_desc::{GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED};
use crate::superblock::SbFields;
use crate::{Ext4Error, BLOCKS_PER_GROUP};

/// Free counts over all groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    /// `s_free_blocks_count`.
    pub free_blocks: u64,
    /// `s_free_inodes_count`.
    pub free_inodes: u32,
}

/// Sort and merge the allocated ranges.
///
/// # Errors
/// [`Ext4Error::BadPlan`] when two ranges overlap (a planner bug).
pub(super) fn merge_used(mut used: Vec<(u64, u64)>) -> Result<Vec<(u64, u64)>, Ext4Error> {
    used.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(used.len());
    for (s, l) in used {
        match merged.last_mut() {
            Some(last) if last.0 + last.1 > s => {
                return Err(Ext4Error::BadPlan(format!("block {s} allocated twice")));
            }
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => merged.push((s, l)),
        }
    }
    Ok(merged)
}

/// Used blocks per group of the merged ranges `used`.
fn used_per_group(used: &[(u64, u64)], ngroups: u32) -> Vec<u64> {
    let bpg = BLOCKS_PER_GROUP;
    let mut per = vec![0u64; ngroups as usize];
    for &(s, l) in used {
        let mut b = s;
        let end = s + l;
        while b < end {
            let g = b / bpg;
            let ge = ((g + 1) * bpg).min(end);
            per[usize::try_from(g).expect("g < ngroups, which is a u32")] += ge - b;
            b = ge;
        }
    }
    per
}

/// Fill in the free counts and flags of `groups` from the merged `used` ranges and the planned
/// `inodes`.
pub(super) fn groups(
    geo: &Geometry,
    mut groups: Vec<GroupDesc>,
    used: &[(u64, u64)],
    inodes: &[PInode],
) -> (Vec<GroupDesc>, Totals) {
    let bpg = BLOCKS_PER_GROUP;
    let ipg = geo.ipg;
    let used_blocks = used_per_group(used, geo.ngroups);
    let last = geo.ngroups as usize - 1;
    let mut totals = Totals::default();
    for (g, gd) in groups.iter_mut().enumerate() {
        let g_blocks = if g == last { geo.blocks_count - last as u64 * bpg } else { bpg };
        let free = g_blocks - used_blocks[g];
        gd.free_blocks = u32::try_from(free).expect("at most BLOCKS_PER_GROUP free blocks");
        totals.free_blocks += free;
        let first = g * ipg as usize;
        let in_group = inodes.get(first..).unwrap_or_default();
        let in_group = &in_group[..in_group.len().min(ipg as usize)];
        let used_inodes = u32::try_from(in_group.len()).expect("at most ipg inodes");
        gd.free_inodes = ipg - used_inodes;
        totals.free_inodes += ipg - used_inodes;
        gd.used_dirs = u32::try_from(in_group.iter().filter(|p| p.is_dir).count()).expect("at most ipg inodes");
        if free == bpg && g != last {
            gd.flags |= BG_BLOCK_UNINIT;
        }
        if used_inodes == 0 {
            // Never written, so never flagged zeroed: on a disk with old data the table holds
            // whatever was there. INODE_UNINIT and itable_unused keep every reader out, and the
            // kernel zeroes the table on the first mount (ext4lazyinit), as after mke2fs.
            gd.flags |= BG_INODE_UNINIT;
            gd.itable_unused = ipg;
        } else {
            gd.itable_unused = ipg - used_inodes;
            gd.flags |= BG_INODE_ZEROED;
        }
    }
    (groups, totals)
}

/// `s_r_blocks_count`: `percent` of `blocks`, rounded down, without overflow.
fn reserved_blocks(blocks: u64, percent: u8) -> u64 {
    blocks / 100 * u64::from(percent) + blocks % 100 * u64::from(percent) / 100
}

/// The superblock fields; `journal` is `s_jnl_blocks` when there is a journal.
pub(super) fn superblock(
    geo: &Geometry,
    totals: &Totals,
    ident: &Ident,
    reserved_percent: u8,
    journal: Option<[u32; 17]>,
) -> SbFields {
    SbFields {
        inodes_count: geo.ipg * geo.ngroups,
        blocks_count: geo.blocks_count,
        r_blocks_count: reserved_blocks(geo.blocks_count, reserved_percent),
        free_blocks: totals.free_blocks,
        free_inodes: totals.free_inodes,
        inodes_per_group: geo.ipg,
        time: ident.timestamp,
        uuid: ident.uuid,
        label: ident.label,
        hash_seed: ident.hash_seed,
        has_journal: journal.is_some(),
        jnl_blocks: journal.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_double_allocation() {
        assert_eq!(merge_used(vec![(5, 2), (0, 5), (9, 1)]).unwrap(), vec![(0, 7), (9, 1)]);
        assert!(matches!(merge_used(vec![(0, 5), (4, 1)]), Err(Ext4Error::BadPlan(m)) if m.contains("block 4")));
    }

    #[test]
    fn used_blocks_split_at_group_boundaries() {
        assert_eq!(used_per_group(&[(0, 10), (32760, 20), (70000, 1)], 3), vec![18, 12, 1]);
    }

    #[test]
    fn counts_and_flags() {
        let geo = Geometry { blocks_count: 2 * 32768 + 1000, ngroups: 3, ipg: 16, itb: 1, desc_blocks: 1 };
        let mut inodes: Vec<PInode> = (0..20).map(|_| PInode::unused()).collect();
        inodes[1].is_dir = true;
        inodes[17].is_dir = true;
        let (g, totals) = groups(&geo, vec![GroupDesc::default(); 3], &[(0, 100), (65536, 10)], &inodes);
        assert_eq!(g.iter().map(|g| g.free_blocks).collect::<Vec<_>>(), vec![32668, 32768, 990]);
        assert_eq!(g.iter().map(|g| g.free_inodes).collect::<Vec<_>>(), vec![0, 12, 16]);
        assert_eq!(g.iter().map(|g| g.used_dirs).collect::<Vec<_>>(), vec![1, 1, 0]);
        assert_eq!(g.iter().map(|g| g.itable_unused).collect::<Vec<_>>(), vec![0, 12, 16]);
        assert_eq!(g[0].flags, BG_INODE_ZEROED);
        assert_eq!(g[1].flags, BG_BLOCK_UNINIT | BG_INODE_ZEROED);
        // The last group is never BLOCK_UNINIT; its never-written table is not ZEROED.
        assert_eq!(g[2].flags, BG_INODE_UNINIT);
        assert_eq!(totals, Totals { free_blocks: 32668 + 32768 + 990, free_inodes: 28 });
    }

    #[test]
    fn reserved_blocks_round_down() {
        assert_eq!(reserved_blocks(2048, 5), 102);
        assert_eq!(reserved_blocks(u64::MAX, 50), u64::MAX / 2);
    }
}
