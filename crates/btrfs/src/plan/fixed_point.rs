//! Stage 7, metadata: the metadata chunk is sized from estimated block counts, the other
//! trees get their blocks in it, then the root, extent and free-space trees are solved
//! together — the extent tree holds an item per tree block (its own included) and the
//! free-space tree the gaps between blocks, so their sizes depend on their own contents. The
//! leaf counts only grow until packing gives the counts assumed (a fixed point); if the blocks
//! reserved for them overflow, the reserve grows and everything is placed again.

use super::prepare::Fs;
use super::subvol::Placement;
use super::trees::{pack, root_tree_items, RootAddrs, Small};
use super::{
    err_plan, round_up, u64_from, DataExtent, EXTENT_TREE_OBJECTID, FREE_SPACE_TREE_OBJECTID, MIB, MIRRORS,
    ROOT_TREE_OBJECTID, STRIPE,
};
use crate::chunk::{self, Chunk};
use crate::extent::{self, DATA_EXTENT_ITEM_SIZE};
use crate::node::{Item, Key, PackedTree, ITEM_SIZE, KEY_PTRS_PER_NODE};
use crate::{BtrfsError, GENERATION, NODESIZE};

/// Blocks assumed for the dev tree, which is packed only once the metadata chunk is sized
/// (one leaf holds about 300 dev extents, more chunks than an image has).
const DEV_TREE_BLOCKS_EST: usize = 1;
/// The metadata chunk, not yet in the chunk list when estimating.
const META_CHUNKS: usize = 1;
/// Blocks assumed for the extent and free-space trees themselves when estimating the extent
/// tree's items (each of their blocks has a metadata item too).
const EXT_FST_BLOCKS_EST: usize = 8;
/// Leaf bytes of the largest extent-tree item: an item header and a data `EXTENT_ITEM`.
const EXTENT_ITEM_COST: usize = ITEM_SIZE + DATA_EXTENT_ITEM_SIZE;
const _: () = assert!(EXTENT_ITEM_COST == 78);
/// Leaf bytes counted as used per leaf when estimating (about 86% of `LEAF_DATA_SIZE`).
const LEAF_FILL_EST: usize = 14_000;
/// Extent-tree leaves added to the estimate.
const EXTRA_EXTENT_LEAVES: usize = 1;
/// The blocks reserved for the extent and free-space trees are this many times their estimate,
/// and grow to this many times the need when a round overflows them.
const RESERVE_FACTOR: usize = 2;
/// Blocks reserved for the extent tree beyond its estimate.
const EXTENT_RESERVE_EXTRA: usize = 4;
/// Blocks reserved for the free-space tree beyond its estimate.
const FST_RESERVE_EXTRA: usize = 4;
/// Free-space-tree bytes estimated per chunk (`FREE_SPACE_INFO` and a few extents).
const FST_BYTES_PER_CHUNK_EST: usize = 300;
/// Blocks of slack in the metadata need.
const META_SLACK_BLOCKS: usize = 2;
/// Bytes of the metadata stripes that superblock mirror stripes may exclude (one per copy).
const MIRROR_EXCLUSION_BYTES: u64 = 2 * STRIPE;
/// The metadata chunk is this many times the need when the device has room (the kernel
/// writes new blocks copy-on-write next to the old ones).
const META_GROWTH: u64 = 2;
/// Smallest metadata chunk when the device has room.
const META_CHUNK_MIN: u64 = 32 * MIB;
/// DUP: every metadata block is stored twice.
const META_COPIES: u64 = 2;
/// Rounds of the leaf-count fixed point before giving up (it converges in a few).
const MAX_ROUNDS: usize = 64;

/// Blocks of a tree with `leaves` leaves (leaves and the nodes above them).
pub(super) fn blocks_for_leaves(leaves: usize) -> usize {
    let mut n = leaves;
    let mut total = leaves;
    while n > 1 {
        n = n.div_ceil(KEY_PTRS_PER_NODE);
        total += n;
    }
    total
}

/// Metadata chunk slot allocator: nodesize blocks skipping excluded stripes.
fn meta_slots(chunk: &Chunk) -> Vec<u64> {
    let mut excluded: Vec<u64> = Vec::new();
    for &p in &chunk.stripes {
        for m in MIRRORS {
            if m >= p && m < p + chunk.length {
                excluded.push(chunk.logical + (m - p) / STRIPE * STRIPE);
            }
        }
    }
    (0..chunk.length / NODESIZE)
        .map(|i| chunk.logical + i * NODESIZE)
        .filter(|a| !excluded.iter().any(|&e| *a >= e && *a < e + STRIPE))
        .collect()
}

/// What the metadata trees are planned from.
pub(crate) struct Ctx<'c, 'p> {
    pub fss: &'c [Fs<'p>],
    pub placement: &'c [Placement],
    pub default_id: u64,
    pub extents: &'c [DataExtent],
    /// [`crate::BtrfsOptions::timestamp`].
    pub time: i64,
}

impl Ctx<'_, '_> {
    fn root_tree(&self, roots: &RootAddrs) -> Result<PackedTree, BtrfsError> {
        pack(ROOT_TREE_OBJECTID, root_tree_items(self.fss, self.placement, roots, self.default_id, self.time), 1)
    }
}

/// Blocks reserved for the extent and free-space trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reserve {
    extent: usize,
    free_space: usize,
}

/// The metadata chunk and the estimates it was sized from.
pub(crate) struct Meta {
    pub chunk: Chunk,
    /// Its block addresses, superblock mirror stripes left out.
    slots: Vec<u64>,
    /// Blocks and leaves of the root tree (its size does not depend on addresses).
    root_count: usize,
    root_leaves: usize,
    reserve: Reserve,
    /// The estimated need in bytes (one copy).
    need_bytes: u64,
    total_bytes: u64,
}

impl Meta {
    /// Size the metadata chunk at `meta_start` on a device of `total_bytes`.
    ///
    /// # Errors
    /// [`BtrfsError::DoesNotFit`] when the device has no room for the estimated need.
    pub(crate) fn new(
        ctx: &Ctx<'_, '_>,
        trees: (&[PackedTree], &Small),
        chunks_before: usize,
        meta_start: u64,
        total_bytes: u64,
    ) -> Result<Self, BtrfsError> {
        let (fs_trees, small) = trees;
        let n_other_est =
            DEV_TREE_BLOCKS_EST + fs_trees.iter().map(PackedTree::block_count).sum::<usize>() + small.block_count();
        let n_chunks_est = chunks_before + META_CHUNKS;
        let root_probe = ctx.root_tree(&RootAddrs::default())?;
        let (root_count, root_leaves) = (root_probe.block_count(), root_probe.leaf_count());
        drop(root_probe);
        let n_ext_items = n_other_est + root_count + EXT_FST_BLOCKS_EST + ctx.extents.len() + n_chunks_est;
        let est_e = blocks_for_leaves((n_ext_items * EXTENT_ITEM_COST).div_ceil(LEAF_FILL_EST) + EXTRA_EXTENT_LEAVES);
        let reserve = Reserve {
            extent: RESERVE_FACTOR * est_e + EXTENT_RESERVE_EXTRA,
            free_space: FST_RESERVE_EXTRA
                + (n_chunks_est * FST_BYTES_PER_CHUNK_EST).div_ceil(LEAF_FILL_EST) * RESERVE_FACTOR,
        };
        let need_blocks = n_other_est + root_count + reserve.extent + reserve.free_space + META_SLACK_BLOCKS;
        let need_bytes = u64_from(need_blocks).saturating_mul(NODESIZE).saturating_add(MIRROR_EXCLUSION_BYTES);
        let min_meta = round_up(need_bytes, MIB)?;
        let want_meta = round_up(need_bytes.saturating_mul(META_GROWTH).max(META_CHUNK_MIN), MIB)?;
        let avail = total_bytes.saturating_sub(meta_start);
        let meta_len = want_meta.min(avail / META_COPIES / MIB * MIB);
        if meta_len < min_meta {
            return Err(BtrfsError::DoesNotFit {
                needed: meta_start.saturating_add(min_meta.saturating_mul(META_COPIES)),
                available: total_bytes,
            });
        }
        let chunk = Chunk {
            logical: meta_start,
            length: meta_len,
            flags: chunk::BLOCK_GROUP_METADATA | chunk::BLOCK_GROUP_DUP,
            stripes: vec![meta_start, meta_start + meta_len],
        };
        let slots = meta_slots(&chunk);
        Ok(Meta { chunk, slots, root_count, root_leaves, reserve, need_bytes, total_bytes })
    }
}

/// The solved metadata trees.
pub(crate) struct Done {
    pub root: PackedTree,
    pub extent: PackedTree,
    pub free_space: PackedTree,
    /// The other trees, at their addresses.
    pub others: Vec<PackedTree>,
    /// Bytes of data extents in each chunk (0 for metadata and system chunks).
    pub data_used: Vec<u64>,
}

/// Every block at `addrs` of a tree with `leaves` leaves as (address, level, owner).
fn tree_blocks_at(leaves: usize, addrs: &[u64], owner: u64, out: &mut Vec<(u64, u8, u64)>) {
    let mut n = leaves;
    let mut i = 0;
    let mut level = 0u8;
    loop {
        for a in &addrs[i..i + n] {
            out.push((*a, level, owner));
        }
        i += n;
        if n <= 1 {
            break;
        }
        n = n.div_ceil(KEY_PTRS_PER_NODE);
        level += 1;
    }
}

/// One round's guess: leaf counts and addresses of the three trees.
struct Guess<'s> {
    e_leaves: usize,
    f_leaves: usize,
    root_addrs: &'s [u64],
    e_addrs: &'s [u64],
    f_addrs: &'s [u64],
}

/// The data extents of chunk `c` (extents are sorted by address).
fn extents_in<'e>(extents: &'e [DataExtent], c: &Chunk) -> &'e [DataExtent] {
    let lo = extents.partition_point(|e| e.logical < c.logical);
    let hi = extents.partition_point(|e| e.logical < c.end());
    &extents[lo..hi]
}

/// The block group item and free-space items of every chunk; `blocks` sorted by address.
fn chunk_items(
    chunks: &[Chunk],
    extents: &[DataExtent],
    data_used: &[u64],
    blocks: &[(u64, u8, u64)],
    ext_items: &mut Vec<Item>,
) -> Vec<Item> {
    let mut fst_items: Vec<Item> = Vec::new();
    for (ci, c) in chunks.iter().enumerate() {
        let is_data = c.flags & chunk::BLOCK_GROUP_DATA != 0;
        let used_ranges: Vec<(u64, u64)> = if is_data {
            extents_in(extents, c).iter().map(|e| (e.logical, e.disk_len)).collect()
        } else {
            let lo = blocks.partition_point(|b| b.0 < c.logical);
            let hi = blocks.partition_point(|b| b.0 < c.end());
            blocks[lo..hi].iter().map(|b| (b.0, NODESIZE)).collect()
        };
        let used = if is_data { data_used[ci] } else { u64_from(used_ranges.len()) * NODESIZE };
        ext_items.push(Item::bytes(
            Key::new(c.logical, chunk::BLOCK_GROUP_ITEM_KEY, c.length),
            chunk::block_group_item(used, c.flags),
        ));
        let mut free: Vec<(u64, u64)> = Vec::new();
        let mut at = c.logical;
        for (s, l) in used_ranges {
            if s > at {
                free.push((at, s - at));
            }
            at = at.max(s + l);
        }
        if at < c.end() {
            free.push((at, c.end() - at));
        }
        let count = u32::try_from(free.len())
            .expect("free ranges alternate with used ones: at most one per sector of a 1 GiB data chunk or per block");
        fst_items.push(Item::bytes(
            Key::new(c.logical, extent::FREE_SPACE_INFO_KEY, c.length),
            extent::free_space_info(count),
        ));
        for (s, l) in free {
            fst_items.push(Item::bytes(Key::new(s, extent::FREE_SPACE_EXTENT_KEY, l), Vec::new()));
        }
    }
    fst_items
}

/// Try one guess: the packed root, extent and free-space trees if their leaf counts are the
/// guessed ones, else the counts packing gave (`Err`).
fn try_guess(
    ctx: &Ctx<'_, '_>,
    meta: &Meta,
    placed: (&[Chunk], &[PackedTree], &PackedTree, &[u64]),
    g: &Guess<'_>,
) -> Result<Result<[PackedTree; 3], (usize, usize)>, BtrfsError> {
    let (chunks, others, chunk_tree, data_used) = placed;
    // Every metadata block (address, level, owner). Levels of the fixed-point trees are
    // derived from their leaf counts.
    let mut blocks: Vec<(u64, u8, u64)> = Vec::new();
    tree_blocks_at(meta.root_leaves, g.root_addrs, ROOT_TREE_OBJECTID, &mut blocks);
    tree_blocks_at(g.e_leaves, g.e_addrs, EXTENT_TREE_OBJECTID, &mut blocks);
    tree_blocks_at(g.f_leaves, g.f_addrs, FREE_SPACE_TREE_OBJECTID, &mut blocks);
    for t in others.iter().chain(std::iter::once(chunk_tree)) {
        blocks.extend(t.blocks().map(|(a, l)| (a, l, t.owner)));
    }
    blocks.sort_unstable();
    let mut ext_items: Vec<Item> = Vec::with_capacity(blocks.len() + ctx.extents.len() + chunks.len());
    for &(a, l, owner) in &blocks {
        ext_items.push(Item::bytes(
            Key::new(a, extent::METADATA_ITEM_KEY, u64::from(l)),
            extent::metadata_item(GENERATION, owner),
        ));
    }
    for e in ctx.extents {
        ext_items.push(Item::bytes(
            Key::new(e.logical, extent::EXTENT_ITEM_KEY, e.disk_len),
            extent::data_extent_item(GENERATION, e.root, e.ino, e.file_offset),
        ));
    }
    let fst_items = chunk_items(chunks, ctx.extents, data_used, &blocks, &mut ext_items);
    let mut et = pack(EXTENT_TREE_OBJECTID, ext_items, g.e_leaves)?;
    let mut ft = pack(FREE_SPACE_TREE_OBJECTID, fst_items, g.f_leaves)?;
    if et.leaf_count() != g.e_leaves || ft.leaf_count() != g.f_leaves {
        return Ok(Err((g.e_leaves.max(et.leaf_count()), g.f_leaves.max(ft.leaf_count()))));
    }
    et.assign(g.e_addrs);
    ft.assign(g.f_addrs);
    let mut rt = ctx.root_tree(&RootAddrs::collect(&et, &ft, others))?;
    if rt.block_count() != meta.root_count {
        return Err(err_plan("root tree size changed"));
    }
    rt.assign(g.root_addrs);
    Ok(Ok([rt, et, ft]))
}

/// The leaf-count fixed point with the trees placed after `reserve`: the three trees, or
/// `None` when the reserve was too small (it has grown).
fn leaves_fixed_point(
    ctx: &Ctx<'_, '_>,
    meta: &Meta,
    placed: (&[Chunk], &[PackedTree], &PackedTree, &[u64]),
    reserve: &mut Reserve,
) -> Result<Option<[PackedTree; 3]>, BtrfsError> {
    let (mut e_leaves, mut f_leaves) = (1usize, 1usize);
    let rc = meta.root_count;
    for _ in 0..MAX_ROUNDS {
        let e_blocks = blocks_for_leaves(e_leaves);
        let f_blocks = blocks_for_leaves(f_leaves);
        if e_blocks > reserve.extent || f_blocks > reserve.free_space {
            reserve.extent = reserve.extent.max(e_blocks * RESERVE_FACTOR);
            reserve.free_space = reserve.free_space.max(f_blocks * RESERVE_FACTOR);
            return Ok(None);
        }
        let f_start = rc + reserve.extent;
        let g = Guess {
            e_leaves,
            f_leaves,
            root_addrs: &meta.slots[..rc],
            e_addrs: &meta.slots[rc..rc + e_blocks],
            f_addrs: &meta.slots[f_start..f_start + f_blocks],
        };
        match try_guess(ctx, meta, placed, &g)? {
            Ok(trees) => return Ok(Some(trees)),
            Err((e, f)) => (e_leaves, f_leaves) = (e, f),
        }
    }
    Err(err_plan("extent tree fixed point did not converge"))
}

/// Place `others` in the metadata chunk and solve the root, extent and free-space trees.
///
/// # Errors
/// [`BtrfsError::DoesNotFit`] when the blocks outgrow the metadata chunk.
pub(crate) fn solve(
    ctx: &Ctx<'_, '_>,
    meta: &Meta,
    chunks: &[Chunk],
    chunk_tree: &PackedTree,
    mut others: Vec<PackedTree>,
) -> Result<Done, BtrfsError> {
    let data_used: Vec<u64> = chunks
        .iter()
        .map(|c| {
            if c.flags & chunk::BLOCK_GROUP_DATA == 0 {
                return 0;
            }
            extents_in(ctx.extents, c).iter().map(|e| e.disk_len).sum()
        })
        .collect();
    let mut reserve = meta.reserve;
    loop {
        let base = meta.root_count + reserve.extent + reserve.free_space;
        let total_other: usize = others.iter().map(PackedTree::block_count).sum();
        if base + total_other > meta.slots.len() {
            return Err(BtrfsError::DoesNotFit {
                needed: meta.chunk.logical.saturating_add(meta.need_bytes.saturating_mul(META_COPIES * META_GROWTH)),
                available: meta.total_bytes,
            });
        }
        let mut cur = base;
        for t in &mut others {
            let n = t.block_count();
            t.assign(&meta.slots[cur..cur + n]);
            cur += n;
        }
        let placed = (chunks, others.as_slice(), chunk_tree, data_used.as_slice());
        if let Some([root, extent, free_space]) = leaves_fixed_point(ctx, meta, placed, &mut reserve)? {
            return Ok(Done { root, extent, free_space, others, data_used });
        }
    }
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, InodeId, Meta as TreeMeta, Tree};

    use super::*;
    use crate::{min_size, plan, prepare, BtrfsLayout, BtrfsOptions};

    /// A top level with `files` files of `bytes` bytes each, in `dirs` directories.
    fn tree(files: usize, bytes: usize, dirs: usize) -> Tree {
        let mut t = Tree::new(TreeMeta::new(0o755));
        let dirs: Vec<InodeId> =
            (0..dirs.max(1)).map(|d| t.mkdir_p(format!("d{d}").as_bytes(), &TreeMeta::new(0o755)).unwrap()).collect();
        for i in 0..files {
            let data: Vec<u8> = (0..bytes).map(|j| u8::try_from((i + j * 31) % 253).unwrap()).collect();
            let name = format!("file-{i:06}");
            t.add_file(dirs[i % dirs.len()], name.as_bytes(), FileData::from_bytes(data), TreeMeta::new(0o644))
                .unwrap();
        }
        t
    }

    /// The extent tree holds one metadata item per tree block, one item per data extent and one
    /// block group per chunk; the free-space tree one info item per chunk.
    fn check_consistent(l: &BtrfsLayout) {
        let count = |t: &PackedTree, ty: u8| t.items.iter().filter(|i| i.key.ty == ty).count();
        let (et, ft) = (&l.trees[1], &l.trees[2]);
        assert_eq!(et.owner, EXTENT_TREE_OBJECTID);
        assert_eq!(count(et, extent::METADATA_ITEM_KEY), l.tree_blocks());
        assert_eq!(count(et, extent::EXTENT_ITEM_KEY), l.data_extents());
        assert_eq!(count(et, chunk::BLOCK_GROUP_ITEM_KEY), l.chunks.len());
        assert_eq!(count(ft, extent::FREE_SPACE_INFO_KEY), l.chunks.len());
        // Every block in the metadata chunk (or the system chunk) and no two at one address.
        let mut addrs: Vec<u64> = l.trees.iter().flat_map(|t| t.blocks().map(|(a, _)| a)).collect();
        addrs.sort_unstable();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]), "tree blocks overlap");
        let meta = l.chunks.last().unwrap();
        let sys = &l.chunks[0];
        assert!(addrs.iter().all(|&a| (a >= meta.logical && a < meta.end()) || (a >= sys.logical && a < sys.end())));
    }

    /// The fixed point over many item counts and device sizes: it converges wherever the
    /// content fits (anything else is `DoesNotFit`), the result is self-consistent, and
    /// planning again gives the very same trees.
    #[test]
    fn fixed_point_sweep_converges_and_is_stable() {
        let shapes = [(0, 0, 1), (10, 5000, 2), (400, 100, 7), (3000, 9000, 30), (12_000, 0, 300), (2, 3 << 20, 1)];
        for (files, bytes, dirs) in shapes {
            let t = tree(files, bytes, dirs);
            let o = BtrfsOptions::new(0, uuid::Uuid::from_u128(7));
            let p = prepare(&t, &[], &o).unwrap();
            let min = min_size(&p, &o).unwrap();
            let mut sizes: Vec<u64> = (0..12).map(|k| min - 2 * MIB + k * 3 * MIB / 2).collect();
            sizes.extend([min * 2 + 12_345, 100 * MIB, 1 << 30, 300 << 30]);
            for size in sizes {
                let o = BtrfsOptions { size_bytes: size, ..o.clone() };
                match plan(&p, &o) {
                    Ok(l) => {
                        assert!(size >= min, "{files} files: planned at {size} below the minimum {min}");
                        check_consistent(&l);
                        let again = plan(&p, &o).unwrap();
                        assert!(l.trees == again.trees, "{files} files at {size}: not stable");
                        assert_eq!(l.chunks, again.chunks);
                    }
                    Err(BtrfsError::DoesNotFit { needed, available }) => {
                        assert!(size < min, "{files} files at {size}: {needed} > {available}");
                    }
                    Err(e) => panic!("{files} files at {size}: {e}"),
                }
            }
        }
    }

    #[test]
    fn blocks_for_leaves_counts_nodes() {
        assert_eq!(blocks_for_leaves(1), 1);
        assert_eq!(blocks_for_leaves(2), 3);
        assert_eq!(blocks_for_leaves(KEY_PTRS_PER_NODE), KEY_PTRS_PER_NODE + 1);
        assert_eq!(blocks_for_leaves(KEY_PTRS_PER_NODE + 1), KEY_PTRS_PER_NODE + 1 + 2 + 1);
    }

    #[test]
    fn meta_slots_skip_the_mirror_stripe() {
        let c = Chunk { logical: 60 * MIB, length: 8 * MIB, flags: 0, stripes: vec![60 * MIB, 68 * MIB] };
        let s = meta_slots(&c);
        assert_eq!(s.len(), usize::try_from(8 * MIB / NODESIZE - STRIPE / NODESIZE).unwrap());
        let mirror = 64 * MIB;
        assert!(s.iter().all(|&a| !(mirror..mirror + STRIPE).contains(&a)));
    }

    #[test]
    fn tree_blocks_at_levels() {
        let addrs: Vec<u64> = (0..10).collect();
        let mut out = Vec::new();
        tree_blocks_at(KEY_PTRS_PER_NODE + 1, &(0..600).collect::<Vec<u64>>(), 2, &mut out);
        assert_eq!(out.len(), KEY_PTRS_PER_NODE + 1 + 2 + 1);
        assert_eq!(out.last().map(|b| b.1), Some(2));
        out.clear();
        tree_blocks_at(1, &addrs, 10, &mut out);
        assert_eq!(out, vec![(0, 0, 10)]);
    }
}
