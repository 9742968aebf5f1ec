//! Executing a plan: check it, copy file data in parallel, then write metadata (directory,
//! extent, xattr and symlink blocks; inode tables; bitmaps; group descriptors) and finally the
//! superblocks, the primary last.

use mkdisk_tree::{open_source, Kind, Progress, Region, Source, Tree};
use rayon::prelude::*;

use crate::group_desc::{GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT, DESC_SIZE};
use crate::inode::INODE_SIZE;
use crate::plan::{Body, DirBlock, PInode};
use crate::superblock::{has_super, SB_SIZE};
use crate::{bitmap, dir, htree, journal, xattr, Ext4Error, Ext4Layout, BLOCKS_PER_GROUP, BLOCK_SIZE, BS};

/// Check the plan before touching the image: every extent in bounds, sorted, non-overlapping
/// within its inode, and no block used twice across the filesystem.
fn check_plan(layout: &Ext4Layout, tree: &Tree, region: &Region) -> Result<(), Ext4Error> {
    let bad = |m: String| Err(Ext4Error::BadPlan(m));
    if region.len() < layout.size_bytes() {
        return bad(format!(
            "region of {} bytes is smaller than the filesystem ({})",
            region.len(),
            layout.size_bytes()
        ));
    }
    let mut all: Vec<(u64, u64)> = Vec::new();
    for (i, p) in layout.inodes.iter().enumerate() {
        let ino = i + 1;
        let exts = match &p.body {
            Body::File { extents, tree: t } => {
                if !matches!(tree.inode(*t).kind, Kind::File(_)) {
                    return bad(format!("inode {ino}: tree inode is not a file"));
                }
                extents.as_slice()
            }
            Body::Journal { extents } => extents.as_slice(),
            _ => &[],
        };
        let mut next_l = 0u64;
        for e in exts {
            if u64::from(e.lblk) < next_l || e.len == 0 || u64::from(e.len) > crate::extent::MAX_LEN {
                return bad(format!("inode {ino}: extents unsorted or overlapping at logical block {}", e.lblk));
            }
            next_l = u64::from(e.lblk) + u64::from(e.len);
            all.push((e.pblk, u64::from(e.len)));
        }
        if let Body::Dir(blocks) = &p.body {
            all.extend(blocks.iter().map(|b| (b.0, 1)));
        }
        if let Body::Symlink { pblk, .. } = &p.body {
            all.push((*pblk, 1));
        }
        all.extend(p.ext_blocks.iter().map(|b| (b.0, 1)));
        all.extend(p.xattr_block.iter().map(|b| (b.0, 1)));
    }
    all.sort_unstable();
    let mut end = 0u64;
    for &(s, l) in &all {
        if s < end {
            return bad(format!("block {s} used twice"));
        }
        end = s + l;
        if end > layout.blocks_count {
            return bad(format!("block {s}+{l} beyond the end ({})", layout.blocks_count));
        }
    }
    Ok(())
}

fn write_file(
    layout: &Ext4Layout,
    tree: &Tree,
    region: &Region,
    p: &PInode,
    progress: &dyn Progress,
) -> Result<(), Ext4Error> {
    let Body::File { tree: t, extents } = &p.body else { return Ok(()) };
    let Kind::File(fd) = &tree.inode(*t).kind else { return Ok(()) };
    let _ = layout;
    let host = match &fd.source {
        Source::Host(path) => Some((open_source(path)?, path)),
        Source::Bytes(_) => None,
    };
    for e in extents {
        let src = u64::from(e.lblk) * BS;
        let span = u64::from(e.len) * BS;
        let len = span.min(fd.size.saturating_sub(src));
        let dst = e.pblk * BS;
        if len > 0 {
            match &host {
                Some((f, path)) => region.copy_from_file(f, path, src, dst, len)?,
                None => region.write_file_range(fd, src, dst, len)?,
            }
        }
        if len < span {
            // Zero the rest of the last block (the target may hold anything).
            let tail = usize::try_from((span - len).min(BS)).expect("at most one block");
            region.write_at(dst + len, &vec![0u8; tail])?;
        }
        progress.data_written(len);
    }
    Ok(())
}

/// The inode number of `layout.inodes[index]`.
fn ino_of(index: usize) -> u32 {
    u32::try_from(index + 1).expect("plan numbers inodes by u32")
}

fn write_blocks(layout: &Ext4Layout, region: &Region, ino: u32, p: &PInode) -> Result<(), Ext4Error> {
    let seed = layout.seed;
    match &p.body {
        Body::Dir(blocks) => {
            for (pblk, b) in blocks {
                let bytes = match b {
                    DirBlock::Leaf(ents) => dir::leaf_block(seed, ino, ents),
                    DirBlock::Root { parent, levels, entries } => htree::dx_root(seed, ino, *parent, *levels, entries),
                    DirBlock::Node(entries) => htree::dx_node(seed, ino, entries),
                };
                region.write_at(pblk * BS, &bytes)?;
            }
        }
        Body::Symlink { pblk, target } => {
            let mut b = vec![0u8; BLOCK_SIZE];
            b[..target.len()].copy_from_slice(target);
            region.write_at(pblk * BS, &b)?;
        }
        Body::Journal { extents } => {
            if let Some(first) = extents.first() {
                let maxlen = u32::try_from(p.fields.size / BS).expect("journals are at most 2^18 blocks");
                if !layout.assume_zeroed {
                    let zeros = vec![0u8; 1 << 20];
                    for e in extents {
                        let mut off = e.pblk * BS;
                        let end = off + u64::from(e.len) * BS;
                        while off < end {
                            let n = usize::try_from(end - off).map_or(zeros.len(), |n| n.min(zeros.len()));
                            region.write_at(off, &zeros[..n])?;
                            off += n as u64;
                        }
                    }
                }
                region.write_at(first.pblk * BS, &journal::superblock(maxlen, &layout.sb.uuid))?;
            }
        }
        Body::File { .. } | Body::Empty => {}
    }
    for (blk, bytes) in &p.ext_blocks {
        region.write_at(blk * BS, bytes)?;
    }
    if let Some((blk, bytes)) = &p.xattr_block {
        let mut b = bytes.clone();
        xattr::finish_block(seed, *blk, &mut b);
        region.write_at(blk * BS, &b)?;
    }
    Ok(())
}

/// Write the filesystem planned by `layout` for `tree` into `region` (which must be at least
/// [`Ext4Layout::size_bytes`] long). File data is copied in parallel on the current rayon pool;
/// the output does not depend on the number of threads.
///
/// # Errors
/// The plan is inconsistent with the tree or region, a source file cannot be read (named), or
/// the image cannot be written. The image is then incomplete and must be discarded.
pub fn write(layout: &Ext4Layout, tree: &Tree, region: &Region, progress: &dyn Progress) -> Result<(), Ext4Error> {
    check_plan(layout, tree, region)?;
    // 1. File data, in parallel, to disjoint planned offsets.
    layout.inodes.par_iter().try_for_each(|p| write_file(layout, tree, region, p, progress))?;
    // 2. Directory, symlink, extent-tree, xattr blocks and the journal superblock.
    layout.inodes.par_iter().enumerate().try_for_each(|(i, p)| write_blocks(layout, region, ino_of(i), p))?;
    // 3. Inode tables of groups with used inodes (whole tables, so they really are zeroed).
    let ipg = layout.ipg as usize;
    let seed = layout.seed;
    layout.groups.par_iter().enumerate().try_for_each(|(g, gd)| -> Result<(), Ext4Error> {
        if gd.flags & BG_INODE_UNINIT != 0 {
            return Ok(());
        }
        let mut table = vec![0u8; ipg * INODE_SIZE];
        let first = g * ipg;
        for (k, p) in layout.inodes.iter().enumerate().skip(first).take(ipg) {
            let ino = ino_of(k);
            let reserved_empty = ino < 11 && matches!(p.body, Body::Empty) && p.fields.mode == 0;
            if reserved_empty {
                continue;
            }
            let off = (k - first) * INODE_SIZE;
            table[off..off + INODE_SIZE].copy_from_slice(&p.fields.encode(seed, ino));
        }
        region.write_at(gd.inode_table * BS, &table)?;
        Ok(())
    })?;
    // 4. Bitmaps and their checksums.
    let last = layout.groups.len() - 1;
    let descs: Vec<GroupDesc> = layout
        .groups
        .par_iter()
        .enumerate()
        .map(|(g, gd)| -> Result<GroupDesc, Ext4Error> {
            let mut d = gd.clone();
            if gd.flags & BG_BLOCK_UNINIT == 0 {
                let start = g as u64 * BLOCKS_PER_GROUP;
                let len = if g == last { layout.blocks_count - start } else { BLOCKS_PER_GROUP };
                let b = bitmap::block_bitmap(start, len, &layout.used);
                d.block_bitmap_csum = bitmap::block_csum(seed, &b);
                region.write_at(gd.block_bitmap * BS, &b)?;
            }
            if gd.flags & BG_INODE_UNINIT == 0 {
                let used = layout.ipg - gd.free_inodes;
                let b = bitmap::inode_bitmap(used, layout.ipg);
                d.inode_bitmap_csum = bitmap::inode_csum(seed, &b, layout.ipg);
                region.write_at(gd.inode_bitmap * BS, &b)?;
            }
            Ok(d)
        })
        .collect::<Result<_, _>>()?;
    // 5. Group descriptor table (primary and backups) and backup superblocks; primary last.
    let desc_blocks = usize::try_from(layout.desc_blocks).expect("at most 2^32 / 64 descriptor blocks");
    let mut gdt = vec![0u8; desc_blocks * BLOCK_SIZE];
    for (g, d) in descs.iter().enumerate() {
        gdt[g * DESC_SIZE..(g + 1) * DESC_SIZE]
            .copy_from_slice(&d.encode(seed, u32::try_from(g).expect("groups are numbered by u32")));
    }
    let groups = u32::try_from(layout.groups.len()).expect("geometry keeps ngroups a u32");
    for g in (1..groups).filter(|&g| has_super(g)) {
        let base = u64::from(g) * BLOCKS_PER_GROUP * BS;
        region.write_at(base + BS, &gdt)?;
        let mut blk = vec![0u8; BLOCK_SIZE];
        blk[..SB_SIZE].copy_from_slice(&layout.sb.encode(g));
        region.write_at(base, &blk)?;
    }
    region.write_at(BS, &gdt)?;
    let mut blk0 = vec![0u8; BLOCK_SIZE];
    blk0[1024..1024 + SB_SIZE].copy_from_slice(&layout.sb.encode(0));
    region.write_at(0, &blk0)?;
    Ok(())
}
