//! Tree blocks: `btrfs_header`, leaves (`btrfs_item` + data) and nodes (`btrfs_key_ptr`), and
//! the bottom-up packing of a sorted item list into leaves and nodes.

use std::ops::Range;

use crate::le::{put_bytes, put_u32, put_u64, put_u8};
use crate::{LEAF_DATA_SIZE, NODESIZE_USIZE};

/// `sizeof(struct btrfs_header)`.
pub(crate) const HEADER_SIZE: usize = 101;
/// `sizeof(struct btrfs_disk_key)`.
pub(crate) const KEY_SIZE: usize = 17;
/// `sizeof(struct btrfs_item)`.
pub(crate) const ITEM_SIZE: usize = 25;
/// `sizeof(struct btrfs_key_ptr)`.
pub(crate) const KEY_PTR_SIZE: usize = 33;
/// Key pointers per node: `(nodesize - header) / key_ptr`.
pub(crate) const KEY_PTRS_PER_NODE: usize = (NODESIZE_USIZE - HEADER_SIZE) / KEY_PTR_SIZE;
/// Largest item payload that fits a leaf.
pub(crate) const MAX_ITEM_DATA: usize = LEAF_DATA_SIZE - ITEM_SIZE;

const _: () = assert!(LEAF_DATA_SIZE == NODESIZE_USIZE - HEADER_SIZE);
const _: () = assert!(KEY_PTRS_PER_NODE == 493);
const _: () = assert!(KEY_PTR_SIZE == KEY_SIZE + 16);
const _: () = assert!(ITEM_SIZE == KEY_SIZE + 8);
const _: () = assert!(MAX_ITEM_DATA == 16258);

/// An offset, length or count within one leaf (all below `LEAF_DATA_SIZE`) as its on-disk `u32`.
fn leaf_u32(n: usize) -> u32 {
    u32::try_from(n).expect("offsets, lengths and counts inside a 16 KiB leaf fit u32")
}

/// A tree level as its on-disk `u8`.
fn level_u8(level: usize) -> u8 {
    u8::try_from(level).expect("493 key pointers per node: 2^64 items need at most 8 levels")
}

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
    /// Literal bytes (boxed: no spare capacity, as a tree can hold millions of items).
    Bytes(Box<[u8]>),
    /// `EXTENT_CSUM` array: one checksum per sector of `sectors` sectors from `logical`.
    Csums { logical: u64, sectors: u64, csum_size: usize },
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Csums { sectors, csum_size, .. } => {
                usize::try_from(*sectors).expect("a csum item covers at most max_csum_items sectors") * csum_size
            }
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
        Item { key, data: Payload::Bytes(data.into_boxed_slice()) }
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
    /// Leaves already serialised by a [`LeafStream`] (then `items` is empty and leaf `i` is
    /// `levels[0][i] = i..i + 1`): a large fs tree costs its on-disk size in memory, not an
    /// allocation per item.
    pub bodies: Vec<LeafBody>,
}

/// One serialised leaf: everything after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeafBody {
    pub first: Key,
    pub nritems: u32,
    /// `LEAF_DATA_SIZE` bytes: item headers from the front, data from the back.
    pub data: Box<[u8]>,
}

/// Builds a tree from items pushed in key order, serialising leaves as they fill — the same
/// greedy packing as [`PackedTree::pack`], so the blocks are identical.
pub(crate) struct LeafStream {
    owner: u64,
    bodies: Vec<LeafBody>,
    cur: Vec<u8>,
    first: Option<Key>,
    n: usize,
    data_end: usize,
    last: Option<Key>,
}

impl LeafStream {
    pub(crate) fn new(owner: u64) -> Self {
        LeafStream {
            owner,
            bodies: Vec::new(),
            cur: vec![0u8; LEAF_DATA_SIZE],
            first: None,
            n: 0,
            data_end: LEAF_DATA_SIZE,
            last: None,
        }
    }

    fn flush(&mut self) {
        let data = std::mem::replace(&mut self.cur, vec![0u8; LEAF_DATA_SIZE]).into_boxed_slice();
        self.bodies.push(LeafBody {
            first: self.first.take().unwrap_or(Key::new(0, 0, 0)),
            nritems: leaf_u32(self.n),
            data,
        });
        self.n = 0;
        self.data_end = LEAF_DATA_SIZE;
    }

    /// Append one item; keys must strictly increase.
    pub(crate) fn push(&mut self, key: Key, data: &[u8]) -> Result<(), String> {
        if self.last.is_some_and(|l| l >= key) {
            return Err(format!("key {key:?} out of order or duplicate in tree {}", self.owner));
        }
        self.last = Some(key);
        let cost = ITEM_SIZE + data.len();
        if cost > LEAF_DATA_SIZE {
            return Err(format!("item {key:?} of {} bytes does not fit a leaf", data.len()));
        }
        let used = self.n * ITEM_SIZE + (LEAF_DATA_SIZE - self.data_end);
        if self.n > 0 && used + cost > LEAF_DATA_SIZE {
            self.flush();
        }
        let data_off = self.data_end - data.len();
        let ioff = self.n * ITEM_SIZE;
        key.put(&mut self.cur, ioff);
        put_u32(&mut self.cur, ioff + 17, leaf_u32(data_off));
        put_u32(&mut self.cur, ioff + 21, leaf_u32(data.len()));
        self.cur[data_off..self.data_end].copy_from_slice(data);
        self.data_end = data_off;
        if self.n == 0 {
            self.first = Some(key);
        }
        self.n += 1;
        Ok(())
    }

    /// The finished tree (one empty leaf if nothing was pushed).
    pub(crate) fn finish(mut self) -> PackedTree {
        if self.n > 0 || self.bodies.is_empty() {
            self.flush();
        }
        let leaves: Vec<Range<usize>> = (0..self.bodies.len()).map(|i| i..i + 1).collect();
        PackedTree {
            owner: self.owner,
            items: Vec::new(),
            levels: node_levels(leaves),
            addrs: Vec::new(),
            bodies: self.bodies,
        }
    }
}

/// Leaves plus the node levels above them (children split evenly, at most
/// `KEY_PTRS_PER_NODE` per node).
fn node_levels(leaves: Vec<Range<usize>>) -> Vec<Vec<Range<usize>>> {
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
    levels
}

impl PackedTree {
    /// Sort `items` and pack them; `min_leaves` forces at least that many leaves (used by the
    /// fixed point so block counts only grow). Fails on an item too big for a leaf or a
    /// duplicate key (a planner bug).
    pub(crate) fn pack(owner: u64, mut items: Vec<Item>, min_leaves: usize) -> Result<PackedTree, String> {
        // Keys are unique (checked below), so an unstable sort gives the same order without
        // the stable sort's scratch buffer of half the items.
        items.sort_unstable_by_key(|a| a.key);
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
        Ok(PackedTree { owner, items, levels: node_levels(leaves), addrs: Vec::new(), bodies: Vec::new() })
    }

    /// Give the blocks their logical addresses, leaves first (`addrs` has at least
    /// [`Self::block_count`] entries).
    pub(crate) fn assign(&mut self, addrs: &[u64]) {
        let mut i = 0;
        self.addrs = self
            .levels
            .iter()
            .map(|l| {
                let v = addrs[i..i + l.len()].to_vec();
                i += l.len();
                v
            })
            .collect();
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
        level_u8(self.levels.len().saturating_sub(1))
    }

    /// Logical address of the root block.
    pub(crate) fn root_addr(&self) -> u64 {
        self.addrs.last().and_then(|l| l.first()).copied().unwrap_or(0)
    }

    /// Every block as (logical address, level), leaves first.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.addrs.iter().enumerate().flat_map(|(l, a)| a.iter().map(move |&x| (x, level_u8(l))))
    }

    /// First key of block `idx` at `level`.
    fn first_key(&self, level: usize, idx: usize) -> Key {
        let mut l = level;
        let mut i = idx;
        while l > 0 {
            i = self.levels[l][i].start;
            l -= 1;
        }
        if let Some(b) = self.bodies.get(i) {
            return b.first;
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
    let mut b = vec![0u8; NODESIZE_USIZE];
    let bytenr = tree.addrs[level][idx];
    let range = tree.levels[level][idx].clone();
    // btrfs_header
    put_bytes(&mut b, 32, &ctx.fsid); // fsid
    put_u64(&mut b, 48, bytenr); // bytenr
    put_u64(&mut b, 56, HEADER_FLAGS); // flags
    put_bytes(&mut b, 64, &ctx.chunk_tree_uuid); // chunk_tree_uuid
    put_u64(&mut b, 80, ctx.generation); // generation
    put_u64(&mut b, 88, tree.owner); // owner
    let body = if level == 0 { tree.bodies.get(idx) } else { None };
    let nritems = match body {
        Some(body) => body.nritems,
        None => u32::try_from(range.len()).map_err(|_| "too many items".to_string())?,
    };
    put_u32(&mut b, 96, nritems); // nritems
    put_u8(&mut b, 100, u8::try_from(level).map_err(|_| "level".to_string())?); // level
    if let Some(body) = body {
        b[HEADER_SIZE..].copy_from_slice(&body.data);
    } else if level == 0 {
        let mut data_end = LEAF_DATA_SIZE;
        for (n, it) in tree.items[range].iter().enumerate() {
            let size = it.data.len();
            let data_off = data_end - size;
            let ioff = HEADER_SIZE + n * ITEM_SIZE;
            it.key.put(&mut b, ioff); // btrfs_item.key
            put_u32(&mut b, ioff + 17, leaf_u32(data_off)); // offset
            put_u32(&mut b, ioff + 21, leaf_u32(size)); // size
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming packer makes the very blocks `pack` makes from the same sorted items.
    #[test]
    fn leaf_stream_matches_pack() {
        let items: Vec<Item> = (0..5000u64)
            .map(|i| {
                let ty = u8::try_from(i % 3).unwrap();
                Item::bytes(
                    Key::new(256 + i / 3, ty, i),
                    vec![u8::try_from(i % 251).unwrap(); usize::try_from(i * 37 % 700).unwrap()],
                )
            })
            .collect();
        let packed = PackedTree::pack(5, items.clone(), 1).unwrap();
        let mut s = LeafStream::new(5);
        for it in &items {
            let Payload::Bytes(b) = &it.data else { unreachable!() };
            s.push(it.key, b).unwrap();
        }
        let mut streamed = s.finish();
        assert!(packed.leaf_count() > 100 && packed.root_level() == 1);
        assert_eq!(
            streamed.levels.iter().map(Vec::len).collect::<Vec<_>>(),
            packed.levels.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let mut packed = packed;
        let addrs: Vec<u64> = (0..packed.block_count() as u64).map(|i| (1 << 30) + i * crate::NODESIZE).collect();
        packed.assign(&addrs);
        streamed.assign(&addrs);
        let none = |_: u64, _: u64, _: &mut [u8]| -> Result<(), String> { Err("no csums".into()) };
        let ctx = HeaderCtx {
            fsid: [1; 16],
            chunk_tree_uuid: [2; 16],
            generation: 1,
            csum: crate::CsumType::Crc32c,
            csums: &none,
        };
        for (l, v) in packed.levels.iter().enumerate() {
            for i in 0..v.len() {
                assert_eq!(
                    serialize(&packed, l, i, &ctx).unwrap(),
                    serialize(&streamed, l, i, &ctx).unwrap(),
                    "block {l}/{i}"
                );
            }
        }
        // Keys must increase; an item larger than a leaf is refused.
        let mut s = LeafStream::new(5);
        s.push(Key::new(2, 1, 0), b"x").unwrap();
        assert!(s.push(Key::new(2, 1, 0), b"y").is_err());
        assert!(s.push(Key::new(3, 1, 0), &vec![0u8; LEAF_DATA_SIZE]).is_err());
        assert_eq!(LeafStream::new(5).finish().leaf_count(), 1, "an empty tree has one empty leaf");
    }
}
