//! Stage 2b: fixed metadata. The superblock and group descriptor copies (sparse_super), then
//! per flex group of 16 the block bitmaps, inode bitmaps and inode tables, packed from the
//! flex group's first free block; what remains becomes the [`Alloc`] cursor.

use super::alloc::Alloc;
use super::geometry::Geometry;
use super::FLEX;
use crate::group_desc::GroupDesc;
use crate::superblock::has_super;
use crate::{Ext4Error, BLOCKS_PER_GROUP, BS};

/// The first block at or after `cur` where `len` blocks fit without touching a superblock
/// copy (whose groups begin with `meta_len` blocks).
fn next_fit(geo: &Geometry, meta_len: u64, mut cur: u64, len: u64) -> Result<u64, Ext4Error> {
    let bpg = BLOCKS_PER_GROUP;
    'retry: loop {
        let end = cur + len;
        if end > geo.blocks_count {
            return Err(Ext4Error::DoesNotFit { needed_bytes: end * BS, available_bytes: geo.blocks_count * BS });
        }
        for k in cur / bpg..=(end - 1) / bpg {
            let group = u32::try_from(k).expect("k < ngroups, which is a u32");
            if has_super(group) {
                let (s, e) = (k * bpg, k * bpg + meta_len);
                if cur < e && s < end {
                    cur = e;
                    continue 'retry;
                }
            }
        }
        return Ok(cur);
    }
}

/// Free ranges between the sorted `fixed` ranges, up to `blocks_count`.
fn gaps(fixed: &[(u64, u64)], blocks_count: u64) -> Vec<(u64, u64)> {
    let mut free = Vec::new();
    let mut pos = 0u64;
    for &(s, l) in fixed {
        if s > pos {
            free.push((pos, s - pos));
        }
        pos = pos.max(s + l);
    }
    if pos < blocks_count {
        free.push((pos, blocks_count - pos));
    }
    free
}

/// Place the fixed metadata of `geo`: the group descriptors with their bitmap and inode table
/// blocks, and an allocator over the rest.
///
/// # Errors
/// [`Ext4Error::DoesNotFit`] when the metadata passes the end.
pub(super) fn place(geo: &Geometry) -> Result<(Vec<GroupDesc>, Alloc), Ext4Error> {
    let bpg = BLOCKS_PER_GROUP;
    let meta_len = 1 + geo.desc_blocks;
    let mut fixed: Vec<(u64, u64)> =
        (0..geo.ngroups).filter(|&g| has_super(g)).map(|g| (u64::from(g) * bpg, meta_len)).collect();
    let mut groups: Vec<GroupDesc> = vec![GroupDesc::default(); geo.ngroups as usize];
    for f in (0..geo.ngroups).step_by(FLEX as usize) {
        let flex = f as usize..(f + FLEX.min(geo.ngroups - f)) as usize;
        let mut cur = u64::from(f) * bpg + if has_super(f) { meta_len } else { 0 };
        for gd in &mut groups[flex.clone()] {
            gd.block_bitmap = next_fit(geo, meta_len, cur, 1)?;
            fixed.push((gd.block_bitmap, 1));
            cur = gd.block_bitmap + 1;
        }
        for gd in &mut groups[flex.clone()] {
            gd.inode_bitmap = next_fit(geo, meta_len, cur, 1)?;
            fixed.push((gd.inode_bitmap, 1));
            cur = gd.inode_bitmap + 1;
        }
        for gd in &mut groups[flex] {
            gd.inode_table = next_fit(geo, meta_len, cur, geo.itb)?;
            fixed.push((gd.inode_table, geo.itb));
            cur = gd.inode_table + geo.itb;
        }
    }
    fixed.sort_unstable();
    let free = gaps(&fixed, geo.blocks_count);
    Ok((groups, Alloc::new(free, fixed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(blocks_count: u64, ngroups: u32, itb: u64) -> Geometry {
        Geometry { blocks_count, ngroups, ipg: 16 * u32::try_from(itb).unwrap(), itb, desc_blocks: 1 }
    }

    #[test]
    fn one_group() {
        let (groups, mut al) = place(&geo(2048, 1, 32)).unwrap();
        // Superblock 0, GDT 1, block bitmap 2, inode bitmap 3, inode table 4..36.
        assert_eq!((groups[0].block_bitmap, groups[0].inode_bitmap, groups[0].inode_table), (2, 3, 4));
        assert_eq!(al.alloc(1), vec![(36, 1)]);
    }

    #[test]
    fn flex_group_skips_backup_superblocks() {
        // Three groups: backups in groups 1 (block 32768); the tables of all three groups
        // are packed in group 0 unless they would overlap group 1's copy.
        let g = geo(3 * 32768, 3, 512);
        let (groups, al) = place(&g).unwrap();
        let bb: Vec<u64> = groups.iter().map(|g| g.block_bitmap).collect();
        let ib: Vec<u64> = groups.iter().map(|g| g.inode_bitmap).collect();
        let it: Vec<u64> = groups.iter().map(|g| g.inode_table).collect();
        assert_eq!(bb, vec![2, 3, 4]);
        assert_eq!(ib, vec![5, 6, 7]);
        assert_eq!(it, vec![8, 520, 1032]);
        // Nothing overlaps, and the free ranges avoid the backup at 32768..32770.
        let mut all = al.used.clone();
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "{all:?}");
        assert!(all.contains(&(32768, 2)));
    }

    #[test]
    fn tables_that_pass_the_end_do_not_fit() {
        assert!(matches!(
            place(&geo(64, 1, 64)),
            Err(Ext4Error::DoesNotFit { needed_bytes, available_bytes: 262_144 }) if needed_bytes == 68 * BS
        ));
    }

    #[test]
    fn gaps_between_ranges() {
        assert_eq!(gaps(&[(0, 2), (2, 3), (10, 1)], 20), vec![(5, 5), (11, 9)]);
        assert_eq!(gaps(&[(0, 20)], 20), vec![]);
    }
}
