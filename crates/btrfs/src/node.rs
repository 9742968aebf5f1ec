//! Tree blocks: `btrfs_header`, leaves (`btrfs_item` + data) and nodes (`btrfs_key_ptr`), and
//! the bottom-up packing of a sorted item list into leaves and nodes.

use std::ops::Range;

use crate::le::{put_bytes, put_u32, put_u64, put_u8};
use crate::{LEAF_DATA_SIZE, NODESIZE};

/// `sizeof(struct btrfs_header)`.
pub(crate) const HEADER_SIZE: usize = 101;
/// `sizeof(struct btrfs_disk_key)`.
pub(crate) const KEY_SIZE: usize = 17;
/// `sizeof(struct btrfs_item)`.
pub(crate) const ITEM_SIZE: usize = 25;
/// `sizeof(struct btrfs_key_ptr)`.
pub(crate) const KEY_PTR_SIZE: usize = 33;
/// Key pointers per node: `(nodesize - header) / key_ptr`.
pub(crate) const KEY_PTRS_PER_NODE: usize = (NODESIZE as usize - HEADER_SIZE) / KEY_PTR_SIZE;
/// Largest item payload that fits a leaf.
pub(crate) const MAX_ITEM_DATA: usize = LEAF_DATA_SIZE - ITEM_SIZE;

const _: () = assert!(LEAF_DATA_SIZE == NODESIZE as usize - HEADER_SIZE);
const _: () = assert!(KEY_PTRS_PER_NODE == 493);
const _: () = assert!(KEY_PTR_SIZE == KEY_SIZE + 16);
const _: () = assert!(ITEM_SIZE == KEY_SIZE + 8);
const _: () = assert!(MAX_ITEM_DATA == 16258);

/// `BTRFS_HEADER_FLAG_WRITTEN | BTRFS_MIXED_BACKREF_REV << 56`.
const HEADER_FLAGS: u64 = 1 | (1 << 56);

/// `struct btrfs_disk_key`: objectid, type, offset; ordered as the kernel compares keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub objectid: u64,
    pub ty: u8,
    pub offset: u64,
}

impl Key {
    pub(crate) const fn new(objectid: u64, ty: u8, offset: u64) -> Self {
        Key { objectid, ty, offset }
    }

    /// Encode at `off` (17 bytes).
    pub(crate) fn put(&self, buf: &mut [u8], off: usize) {
        put_u64(buf, off, self.objectid);
        put_u8(buf, off + 8, self.ty);
        put_u64(buf, off + 9, self.offset);
    }
}

/// An item's payload: bytes known at plan time, or data checksums filled in by `write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// `EXTENT_CSUM` array: one checksum per sector of `sectors` sectors from `logical`.
    Csums { logical: u64, sectors: u64, csum_size: usize },
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Csums { sectors, csum_size, .. } => usize::try_from(*sectors).unwrap_or(usize::MAX) * csum_size,
        }
    }
}

/// A leaf item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub key: Key,
    pub data: Payload,
}

impl Item {
    pub(crate) fn bytes(key: Key, data: Vec<u8>) -> Self {
        Item { key, data: Payload::Bytes(data) }
    }
}

/// One tree packed into blocks: leaves hold ranges of `items`, nodes ranges of the level below.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedTree {
    /// Owner (tree objectid) written into every header.
    pub owner: u64,
    /// All items, sorted by key, keys unique.
    pub items: Vec<Item>,
    /// `levels[0]` = leaves (item ranges); `levels[l]` = nodes (child ranges in level `l-1`).
    pub levels: Vec<Vec<Range<usize>>>,
    /// Logical address of every block, same shape as `levels`.
    pub addrs: Vec<Vec<u64>>,
}

impl PackedTree {
    /// Sort `items` and pack them; `min_leaves` forces at least that many leaves (used by the
    /// fixed point so block counts only grow). Fails on an item too big for a leaf or a
    /// duplicate key (a planner bug).
    pub(crate) fn pack(owner: u64, mut items: Vec<Item>, min_leaves: usize) -> Result<PackedTree, String> {
        items.sort_by_key(|a| a.key);
        for w in items.windows(2) {
            if w[0].key == w[1].key {
                return Err(format!("duplicate key {:?} in tree {owner}", w[0].key));
            }
        }
        let mut leaves: Vec<Range<usize>> = Vec::new();
        let mut start = 0usize;
        let mut used = 0usize;
        for (i, it) in items.iter().enumerate() {
            let cost = ITEM_SIZE + it.data.len();
            if cost > LEAF_DATA_SIZE {
                return Err(format!("item {:?} of {} bytes does not fit a leaf", it.key, it.data.len()));
            }
            if used + cost > LEAF_DATA_SIZE {
                leaves.push(start..i);
                start = i;
                used = 0;
            }
            used += cost;
        }
        if start < items.len() || leaves.is_empty() {
            leaves.push(start..items.len());
        }
        // Split the fullest leaves until the minimum count is reached.
        while leaves.len() < min_leaves {
            let Some((idx, _)) = leaves.iter().enumerate().filter(|(_, r)| r.len() >= 2).max_by_key(|(_, r)| r.len())
            else {
                break;
            };
            let r = leaves[idx].clone();
            let mid = r.start + r.len() / 2;
            leaves[idx] = r.start..mid;
            leaves.insert(idx + 1, mid..r.end);
        }
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let n = levels.last().map_or(0, Vec::len);
            let groups = n.div_ceil(KEY_PTRS_PER_NODE);
            let mut nodes = Vec::with_capacity(groups);
            let mut s = 0;
            for g in 0..groups {
                let size = n / groups + usize::from(g < n % groups);
                nodes.push(s..s + size);
                s += size;
            }
            levels.push(nodes);
        }
        Ok(PackedTree { owner, items, levels, addrs: Vec::new() })
    }

    /// Number of tree blocks.
    pub(crate) fn block_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    pub(crate) fn leaf_count(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Level of the root block.
    pub(crate) fn root_level(&self) -> u8 {
        u8::try_from(self.levels.len().saturating_sub(1)).unwrap_or(u8::MAX)
    }

    /// Logical address of the root block.
    pub(crate) fn root_addr(&self) -> u64 {
        self.addrs.last().and_then(|l| l.first()).copied().unwrap_or(0)
    }

    /// Every block as (logical address, level), leaves first.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.addrs.iter().enumerate().flat_map(|(l, a)| a.iter().map(move |&x| (x, u8::try_from(l).unwrap_or(u8::MAX))))
    }

    /// First key of block `idx` at `level`.
    fn first_key(&self, level: usize, idx: usize) -> Key {
        let mut l = level;
        let mut i = idx;
        while l > 0 {
            i = self.levels[l][i].start;
            l -= 1;
        }
        let r = &self.levels[0][i];
        self.items.get(r.start).map_or(Key::new(0, 0, 0), |it| it.key)
    }
}

/// Fills the checksums of `sectors` data sectors from `logical` into the buffer.
pub(crate) type CsumFill<'a> = dyn Fn(u64, u64, &mut [u8]) -> Result<(), String> + Sync + 'a;

/// What every header of this filesystem shares.
pub(crate) struct HeaderCtx<'a> {
    pub fsid: [u8; 16],
    pub chunk_tree_uuid: [u8; 16],
    pub generation: u64,
    pub csum: crate::CsumType,
    /// Fills a `Payload::Csums` item.
    pub csums: &'a CsumFill<'a>,
}

/// Serialise block `idx` of `level` into a `NODESIZE` buffer, checksum included.
pub(crate) fn serialize(tree: &PackedTree, level: usize, idx: usize, ctx: &HeaderCtx<'_>) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; NODESIZE as usize];
    let bytenr = tree.addrs[level][idx];
    let range = tree.levels[level][idx].clone();
    // btrfs_header
    put_bytes(&mut b, 32, &ctx.fsid); // fsid
    put_u64(&mut b, 48, bytenr); // bytenr
    put_u64(&mut b, 56, HEADER_FLAGS); // flags
    put_bytes(&mut b, 64, &ctx.chunk_tree_uuid); // chunk_tree_uuid
    put_u64(&mut b, 80, ctx.generation); // generation
    put_u64(&mut b, 88, tree.owner); // owner
    put_u32(&mut b, 96, u32::try_from(range.len()).map_err(|_| "too many items".to_string())?); // nritems
    put_u8(&mut b, 100, u8::try_from(level).map_err(|_| "level".to_string())?); // level
    if level == 0 {
        let mut data_end = LEAF_DATA_SIZE;
        for (n, it) in tree.items[range].iter().enumerate() {
            let size = it.data.len();
            let data_off = data_end - size;
            let ioff = HEADER_SIZE + n * ITEM_SIZE;
            it.key.put(&mut b, ioff); // btrfs_item.key
            put_u32(&mut b, ioff + 17, u32::try_from(data_off).unwrap_or(0)); // offset
            put_u32(&mut b, ioff + 21, u32::try_from(size).unwrap_or(0)); // size
            let dst = &mut b[HEADER_SIZE + data_off..HEADER_SIZE + data_end];
            match &it.data {
                Payload::Bytes(v) => dst.copy_from_slice(v),
                Payload::Csums { logical, sectors, .. } => (ctx.csums)(*logical, *sectors, dst)?,
            }
            data_end = data_off;
        }
    } else {
        for (n, child) in range.enumerate() {
            let off = HEADER_SIZE + n * KEY_PTR_SIZE;
            tree.first_key(level - 1, child).put(&mut b, off); // key
            put_u64(&mut b, off + 17, tree.addrs[level - 1][child]); // blockptr
            put_u64(&mut b, off + 25, ctx.generation); // generation
        }
    }
    let mut sum = [0u8; 32];
    ctx.csum.compute(&b[32..], &mut sum);
    b[..32].copy_from_slice(&sum);
    Ok(b)
}
