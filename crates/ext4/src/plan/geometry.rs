//! Stage 2a: geometry. Block and group counts, inodes per group and inode table blocks, from
//! the size and the inodes the tree needs.

use super::INODES_PER_BLOCK;
use crate::superblock::has_super;
use crate::{Ext4Error, Ext4Options, BLOCKS_PER_GROUP, BS};

/// The smallest filesystem, in blocks.
pub(super) const MIN_BLOCKS: u64 = 64;

/// The shape of the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    /// `s_blocks_count`.
    pub blocks_count: u64,
    /// Block groups.
    pub ngroups: u32,
    /// `s_inodes_per_group`.
    pub ipg: u32,
    /// Inode table blocks per group.
    pub itb: u64,
    /// Group descriptor table blocks.
    pub desc_blocks: u64,
}

/// The inodes wanted for `blocks`: `-N`, or the tree's plus a quarter plus 64, at least one
/// per 16 KiB.
fn wanted_inodes(opts: &Ext4Options, needed_inodes: u32, blocks: u64) -> u64 {
    match opts.inode_count {
        Some(n) => u64::from(n),
        None => {
            let need = u64::from(needed_inodes);
            (need + need / 4 + 64).max(blocks * BS / 16384)
        }
    }
}

/// `-N`, if given, must cover the tree's inodes whatever the size.
///
/// # Errors
/// [`Ext4Error::TooManyInodes`] when it does not.
pub(super) fn check_inode_count(opts: &Ext4Options, needed_inodes: u32) -> Result<(), Ext4Error> {
    match opts.inode_count {
        Some(n) if n < needed_inodes => {
            Err(Ext4Error::TooManyInodes { needed: u64::from(needed_inodes), reason: format!("-N allows only {n}") })
        }
        _ => Ok(()),
    }
}

/// The geometry for `opts.size_bytes` and `needed_inodes`. A last group too small for its
/// own metadata and 50 blocks is dropped, like mke2fs does.
///
/// # Errors
/// [`Ext4Error::DoesNotFit`] below 64 blocks or when the tree's inodes need more groups,
/// [`Ext4Error::TooManyInodes`] when `-N` is below `needed_inodes` or above what the groups
/// hold, [`Ext4Error::BadArgument`] beyond
/// 2^32 groups.
pub(super) fn geometry(opts: &Ext4Options, needed_inodes: u32) -> Result<Geometry, Ext4Error> {
    check_inode_count(opts, needed_inodes)?;
    let mut blocks_count = opts.size_bytes / BS;
    loop {
        if blocks_count < MIN_BLOCKS {
            return Err(Ext4Error::DoesNotFit { needed_bytes: MIN_BLOCKS * BS, available_bytes: opts.size_bytes });
        }
        let ngroups = blocks_count.div_ceil(BLOCKS_PER_GROUP);
        let ngroups32 = u32::try_from(ngroups).map_err(|_| Ext4Error::BadArgument {
            arg: opts.size_bytes.to_string(),
            reason: "filesystem too large".into(),
        })?;
        let desc_blocks = ngroups.div_ceil((crate::BLOCK_SIZE / crate::group_desc::DESC_SIZE) as u64);
        // At most one inode per block of a group, and a 32-bit inode count in all.
        let ipb = u64::from(INODES_PER_BLOCK);
        let max_ipg = BLOCKS_PER_GROUP.min(u64::from(u32::MAX) / ngroups) / ipb * ipb;
        let wanted = wanted_inodes(opts, needed_inodes, blocks_count);
        let mut per = wanted.div_ceil(ngroups);
        // Like mke2fs, the default bytes-per-inode ratio gives way to the limit on large
        // filesystems as long as the content still fits.
        if opts.inode_count.is_none() && per > max_ipg && u64::from(needed_inodes).div_ceil(ngroups) <= max_ipg {
            per = max_ipg;
        }
        let ipg = per.div_ceil(ipb).max(1) * ipb;
        if ipg > max_ipg && opts.inode_count.is_none() {
            // The tree's inodes need more groups: content that does not fit this size.
            let groups = u64::from(needed_inodes).div_ceil(max_ipg.max(ipb));
            return Err(Ext4Error::DoesNotFit {
                needed_bytes: groups.saturating_mul(BLOCKS_PER_GROUP * BS),
                available_bytes: opts.size_bytes,
            });
        }
        if ipg > max_ipg {
            return Err(Ext4Error::TooManyInodes {
                needed: wanted,
                reason: format!("a {}-byte filesystem holds at most {} inodes", opts.size_bytes, max_ipg * ngroups),
            });
        }
        let itb = ipg / ipb;
        let last = ngroups32 - 1;
        let last_len = blocks_count - u64::from(last) * BLOCKS_PER_GROUP;
        let overhead = if has_super(last) { 1 + desc_blocks } else { 0 } + 2 + itb + 50;
        if ngroups > 1 && last_len < overhead {
            blocks_count = u64::from(last) * BLOCKS_PER_GROUP;
            continue;
        }
        let ipg = u32::try_from(ipg).expect("ipg <= max_ipg <= u32::MAX / ngroups");
        return Ok(Geometry { blocks_count, ngroups: ngroups32, ipg, itb, desc_blocks });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size_bytes: u64) -> Ext4Options {
        Ext4Options::new(size_bytes, uuid::Uuid::nil())
    }

    #[test]
    fn small_one_group() {
        let g = geometry(&opts(8 << 20), 11).unwrap();
        // 2048 blocks; 512 inodes (one per 16 KiB) in 32 table blocks.
        assert_eq!(g, Geometry { blocks_count: 2048, ngroups: 1, ipg: 512, itb: 32, desc_blocks: 1 });
    }

    #[test]
    fn tiny_last_group_is_dropped() {
        // 32768 + 40 blocks: the 40-block tail cannot hold its bitmaps, table and 50 blocks.
        let g = geometry(&opts((32768 + 40) * BS), 11).unwrap();
        assert_eq!((g.blocks_count, g.ngroups), (32768, 1));
        let g = geometry(&opts((32768 + 4000) * BS), 11).unwrap();
        assert_eq!((g.blocks_count, g.ngroups), (32768 + 4000, 2));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            geometry(&opts(63 * BS), 11),
            Err(Ext4Error::DoesNotFit { needed_bytes: 262_144, available_bytes: 258_048 })
        ));
        let mut o = opts(64 << 20);
        o.inode_count = Some(20);
        assert!(matches!(geometry(&o, 21), Err(Ext4Error::TooManyInodes { needed: 21, .. })));
        // More inodes than one group holds: the content needs two groups.
        assert!(matches!(
            geometry(&opts(64 << 20), 40000),
            Err(Ext4Error::DoesNotFit { needed_bytes, available_bytes }) if needed_bytes == 256 << 20 && available_bytes == 64 << 20
        ));
        assert!(geometry(&opts(256 << 20), 40000).is_ok());
        // -N above what the size holds.
        let mut o = opts(64 << 20);
        o.inode_count = Some(40000);
        assert!(matches!(geometry(&o, 11), Err(Ext4Error::TooManyInodes { needed: 40000, .. })));
        assert!(matches!(geometry(&opts(u64::MAX), 11), Err(Ext4Error::BadArgument { .. })));
    }
}
