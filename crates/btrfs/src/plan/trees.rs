//! Stage 6, the small trees: csum, uuid and data-reloc trees (from the data extents and fs
//! trees), the dev and chunk trees with the superblock's `sys_chunk_array` (from the final
//! chunk list), and the root tree's items (from the other trees' root addresses).

use mkdisk_tree::ids::derive;

use super::prepare::Fs;
use super::subvol::Placement;
use super::{
    err_plan, ino_of, u64_from, DataExtent, CHUNK_TREE_OBJECTID, CSUM_TREE_OBJECTID, DATA_RELOC_TREE_OBJECTID,
    DEV_TREE_OBJECTID, EXTENT_CSUM_OBJECTID, EXTENT_TREE_OBJECTID, FIRST_DIR_INDEX, FIRST_FREE_OBJECTID,
    FREE_SPACE_TREE_OBJECTID, FS_TREE_OBJECTID, ROOT_TREE_DIR_OBJECTID, SYS_LEN, SYS_LOGICAL, UUID_TREE_OBJECTID,
};
use crate::chunk::{self, Chunk};
use crate::items::{self, InodeItem, RootItem, Timespec};
use crate::node::{Item, Key, PackedTree, Payload};
use crate::{csum, BtrfsError, BtrfsOptions, CsumType, GENERATION, NODESIZE, SECTORSIZE};

/// Mode of the internal directories (root-tree directory 6, the data-reloc root).
const INTERNAL_DIR_MODE: u32 = 0o040755;
/// Payload of device 1's dev-stats `PERSISTENT_ITEM` (`btrfs_dev_stats_item`: five `u64`
/// error counters), all zero.
const DEV_STATS_SIZE: usize = 40;
/// Header of one `sys_chunk_array` entry: the disk key.
const SYS_CHUNK_KEY_SIZE: usize = crate::node::KEY_SIZE;

/// The identity of the filesystem: UUIDs, size and label.
pub(crate) struct Ident {
    pub fsid: [u8; 16],
    pub dev_uuid: [u8; 16],
    pub chunk_uuid: [u8; 16],
    /// The device size, rounded down to sectors.
    pub total_bytes: u64,
    pub label: Vec<u8>,
}

impl Ident {
    pub(crate) fn new(opts: &BtrfsOptions) -> Result<Self, BtrfsError> {
        let label = opts.label.clone().unwrap_or_default().into_bytes();
        if label.len() > 255 {
            return Err(BtrfsError::BadArgument { arg: "label".into(), reason: "longer than 255 bytes".into() });
        }
        Ok(Ident {
            fsid: *opts.uuid.as_bytes(),
            dev_uuid: *derive(&opts.uuid, b"btrfs-dev-uuid").as_bytes(),
            chunk_uuid: *derive(&opts.uuid, b"btrfs-chunk-tree-uuid").as_bytes(),
            total_bytes: opts.size_bytes / SECTORSIZE * SECTORSIZE,
            label,
        })
    }
}

pub(super) fn pack(owner: u64, items: Vec<Item>, min_leaves: usize) -> Result<PackedTree, BtrfsError> {
    PackedTree::pack(owner, items, min_leaves).map_err(BtrfsError::Plan)
}

/// `EXTENT_CSUM` items: one per run of adjacent extents, split at `max_csum_items` sectors.
fn csum_items(extents: &[DataExtent], csum: CsumType) -> Vec<Item> {
    let csum_size = csum.size();
    let max_items = csum.max_csum_items();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in extents {
        match runs.last_mut() {
            Some(r) if r.0 + r.1 == e.logical => r.1 += e.disk_len,
            _ => runs.push((e.logical, e.disk_len)),
        }
    }
    let mut out = Vec::new();
    for (start, len) in runs {
        let sectors = len / SECTORSIZE;
        let mut done = 0;
        while done < sectors {
            let n = (sectors - done).min(max_items);
            let logical = start + done * SECTORSIZE;
            out.push(Item {
                key: Key::new(EXTENT_CSUM_OBJECTID, items::EXTENT_CSUM_KEY, logical),
                data: Payload::Csums { logical, sectors: n, csum_size },
            });
            done += n;
        }
    }
    out
}

/// `UUID_KEY_SUBVOL` items: each fs tree's UUID → its id.
fn uuid_items(fss: &[Fs<'_>]) -> Vec<Item> {
    let mut map: std::collections::BTreeMap<Key, Vec<u8>> = std::collections::BTreeMap::new();
    for fs in fss {
        let (lo, hi) = fs.uuid.split_at(8);
        let lo = u64::from_le_bytes(lo.try_into().expect("the first half of a 16-byte uuid"));
        let hi = u64::from_le_bytes(hi.try_into().expect("the second half of a 16-byte uuid"));
        map.entry(Key::new(lo, items::UUID_KEY_SUBVOL, hi)).or_default().extend_from_slice(&fs.id.to_le_bytes());
    }
    map.into_iter().map(|(k, v)| Item::bytes(k, v)).collect()
}

/// The inode item and `..` ref of an fs tree's root directory (256).
fn root_dir_items(inode: InodeItem) -> Vec<Item> {
    let mut r = Vec::new();
    items::push_inode_ref(&mut r, 0, b"..");
    vec![
        Item::bytes(Key::new(FIRST_FREE_OBJECTID, items::INODE_ITEM_KEY, 0), inode.encode()),
        Item::bytes(Key::new(FIRST_FREE_OBJECTID, items::INODE_REF_KEY, FIRST_FREE_OBJECTID), r),
    ]
}

/// An internal directory's inode item at `time`.
fn internal_dir(time: i64) -> InodeItem {
    InodeItem {
        generation: GENERATION,
        nbytes: NODESIZE,
        nlink: 1,
        mode: INTERNAL_DIR_MODE,
        time: Timespec { sec: time, nsec: 0 },
        ..InodeItem::default()
    }
}

/// The csum, uuid and data-reloc trees.
pub(crate) struct Small {
    pub csum: PackedTree,
    pub uuid: PackedTree,
    pub reloc: PackedTree,
}

impl Small {
    pub(crate) fn new(extents: &[DataExtent], fss: &[Fs<'_>], opts: &BtrfsOptions) -> Result<Self, BtrfsError> {
        Ok(Small {
            csum: pack(CSUM_TREE_OBJECTID, csum_items(extents, opts.csum), 1)?,
            uuid: pack(UUID_TREE_OBJECTID, uuid_items(fss), 1)?,
            reloc: pack(DATA_RELOC_TREE_OBJECTID, root_dir_items(internal_dir(opts.timestamp)), 1)?,
        })
    }

    /// Their blocks.
    pub(crate) fn block_count(&self) -> usize {
        self.csum.block_count() + self.uuid.block_count() + self.reloc.block_count()
    }
}

/// The dev and chunk trees, the dev item and the `sys_chunk_array`.
pub(crate) struct SysTrees {
    pub dev_tree: PackedTree,
    /// Already at its addresses in the SYSTEM chunk.
    pub chunk_tree: PackedTree,
    pub dev_item: Vec<u8>,
    pub sys_chunk_array: Vec<u8>,
}

impl SysTrees {
    /// From the final chunk list (the SYSTEM chunk first).
    pub(crate) fn new(chunks: &[Chunk], id: &Ident) -> Result<Self, BtrfsError> {
        let mut dev_items = vec![Item::bytes(Key::new(0, chunk::PERSISTENT_ITEM_KEY, 1), vec![0u8; DEV_STATS_SIZE])];
        let mut dev_bytes_used = 0u64;
        for c in chunks {
            for &p in &c.stripes {
                dev_items.push(Item::bytes(
                    Key::new(1, chunk::DEV_EXTENT_KEY, p),
                    chunk::dev_extent(c.logical, c.length, &id.chunk_uuid),
                ));
                dev_bytes_used += c.length;
            }
        }
        let dev_tree = pack(DEV_TREE_OBJECTID, dev_items, 1)?;
        let dev_item = chunk::dev_item(id.total_bytes, dev_bytes_used, &id.dev_uuid, &id.fsid);
        let mut chunk_items =
            vec![Item::bytes(Key::new(chunk::DEV_ITEMS_OBJECTID, chunk::DEV_ITEM_KEY, 1), dev_item.clone())];
        for c in chunks {
            chunk_items.push(Item::bytes(
                Key::new(chunk::FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM_KEY, c.logical),
                c.encode(&id.dev_uuid),
            ));
        }
        let mut chunk_tree = pack(CHUNK_TREE_OBJECTID, chunk_items, 1)?;
        let sys_slots: Vec<u64> = (0..SYS_LEN / NODESIZE).map(|i| SYS_LOGICAL + i * NODESIZE).collect();
        if chunk_tree.block_count() > sys_slots.len() {
            return Err(err_plan("chunk tree does not fit the system chunk"));
        }
        chunk_tree.assign(&sys_slots);
        let mut sys_chunk_array = vec![0u8; SYS_CHUNK_KEY_SIZE];
        Key::new(chunk::FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM_KEY, SYS_LOGICAL).put(&mut sys_chunk_array, 0);
        sys_chunk_array.extend_from_slice(&chunks[0].encode(&id.dev_uuid));
        Ok(SysTrees { dev_tree, chunk_tree, dev_item, sys_chunk_array })
    }
}

/// Root addresses and levels of the trees the root tree points at.
#[derive(Default)]
pub(crate) struct RootAddrs {
    /// (objectid, bytenr, level, blocks)
    roots: Vec<(u64, u64, u8, u64)>,
}

impl RootAddrs {
    pub(crate) fn collect(et: &PackedTree, ft: &PackedTree, others: &[PackedTree]) -> Self {
        let roots = std::iter::once(et)
            .chain(std::iter::once(ft))
            .chain(others.iter())
            .map(|t| (t.owner, t.root_addr(), t.root_level(), u64_from(t.block_count())))
            .collect();
        RootAddrs { roots }
    }

    fn get(&self, id: u64) -> (u64, u8, u64) {
        self.roots.iter().find(|r| r.0 == id).map_or((0, 0, 1), |r| (r.1, r.2, r.3))
    }
}

/// One `ROOT_ITEM` of tree `id`.
fn root_item(roots: &RootAddrs, id: u64, dirid: u64, uuid: [u8; 16], flags: u64, time: i64) -> Item {
    let (bytenr, level, blocks) = roots.get(id);
    let fs_tree = dirid != 0;
    let ri = RootItem {
        generation: GENERATION,
        root_dirid: dirid,
        bytenr,
        bytes_used: blocks * NODESIZE,
        flags,
        level,
        uuid,
        time,
        fs_tree,
    };
    Item::bytes(Key::new(id, items::ROOT_ITEM_KEY, 0), ri.encode(NODESIZE))
}

/// Subvolume back references: `ROOT_REF` in the parent, `ROOT_BACKREF` in the child.
fn root_refs(fss: &[Fs<'_>], placement: &[Placement], out: &mut Vec<Item>) {
    for (i, (parent, dir, name)) in placement.iter().enumerate() {
        let child = &fss[i + 1];
        let pfs = &fss[*parent];
        let dirpos = pfs.n.pos_of(*dir).expect("a subvolume's directory is reachable in its parent");
        let k = pfs.n.entries[dirpos]
            .iter()
            .position(|e| e.name == name.as_slice())
            .expect("a subvolume is an entry of its directory");
        let payload = items::root_ref(ino_of(dirpos), FIRST_DIR_INDEX + u64_from(k), name);
        out.push(Item::bytes(Key::new(pfs.id, items::ROOT_REF_KEY, child.id), payload.clone()));
        out.push(Item::bytes(Key::new(child.id, items::ROOT_BACKREF_KEY, pfs.id), payload));
    }
}

/// The root tree: root items, subvolume references, and directory 6 with its "default" entry.
pub(crate) fn root_tree_items(
    fss: &[Fs<'_>],
    placement: &[Placement],
    roots: &RootAddrs,
    default_id: u64,
    time: i64,
) -> Vec<Item> {
    let mut out = Vec::new();
    for id in
        [EXTENT_TREE_OBJECTID, DEV_TREE_OBJECTID, CSUM_TREE_OBJECTID, UUID_TREE_OBJECTID, FREE_SPACE_TREE_OBJECTID]
    {
        out.push(root_item(roots, id, 0, [0; 16], 0, time));
    }
    out.push(root_item(roots, DATA_RELOC_TREE_OBJECTID, FIRST_FREE_OBJECTID, [0; 16], 0, time));
    for fs in fss {
        let flags = if fs.readonly { items::ROOT_SUBVOL_RDONLY } else { 0 };
        out.push(root_item(roots, fs.id, FIRST_FREE_OBJECTID, fs.uuid, flags, time));
    }
    root_refs(fss, placement, &mut out);
    out.push(Item::bytes(Key::new(ROOT_TREE_DIR_OBJECTID, items::INODE_ITEM_KEY, 0), internal_dir(time).encode()));
    let mut r = Vec::new();
    items::push_inode_ref(&mut r, 0, b"..");
    out.push(Item::bytes(Key::new(ROOT_TREE_DIR_OBJECTID, items::INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), r));
    let loc = if default_id == FS_TREE_OBJECTID {
        Key::new(FS_TREE_OBJECTID, items::ROOT_ITEM_KEY, u64::MAX)
    } else {
        Key::new(default_id, items::ROOT_ITEM_KEY, 0)
    };
    let mut d = Vec::new();
    items::push_dir_item(&mut d, loc, GENERATION, items::FT_DIR, b"default", &[]);
    out.push(Item::bytes(Key::new(ROOT_TREE_DIR_OBJECTID, items::DIR_ITEM_KEY, csum::name_hash(b"default")), d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(logical: u64, disk_len: u64) -> DataExtent {
        DataExtent {
            logical,
            disk_len,
            ram_len: disk_len,
            file_offset: 0,
            file_size: disk_len,
            source: mkdisk_tree::Source::Bytes(vec![0u8; 1].into()),
            zstd: None,
            root: 5,
            ino: 256,
        }
    }

    #[test]
    fn csum_items_follow_adjacent_runs_and_the_item_limit() {
        let max = CsumType::Crc32c.max_csum_items();
        let v =
            csum_items(&[extent(0, 8192), extent(8192, 4096), extent(65536, (max + 1) * SECTORSIZE)], CsumType::Crc32c);
        let got: Vec<(u64, u64)> = v
            .iter()
            .map(|i| match i.data {
                Payload::Csums { logical, sectors, .. } => (logical, sectors),
                Payload::Bytes(_) => panic!("csum payload expected"),
            })
            .collect();
        assert_eq!(got, vec![(0, 3), (65536, max), (65536 + max * SECTORSIZE, 1)]);
    }

    #[test]
    fn label_and_ident() {
        let mut o = BtrfsOptions::new(100 * SECTORSIZE + 7, uuid::Uuid::from_u128(1));
        let id = Ident::new(&o).unwrap();
        assert_eq!(id.total_bytes, 100 * SECTORSIZE);
        assert_ne!(id.dev_uuid, id.chunk_uuid);
        o.label = Some("x".repeat(256));
        assert!(matches!(Ident::new(&o), Err(BtrfsError::BadArgument { .. })));
    }

    #[test]
    fn sys_trees_fit_the_system_chunk() {
        let chunks = vec![
            Chunk {
                logical: SYS_LOGICAL,
                length: SYS_LEN,
                flags: chunk::BLOCK_GROUP_SYSTEM | chunk::BLOCK_GROUP_DUP,
                stripes: vec![SYS_LOGICAL, SYS_LOGICAL + SYS_LEN],
            },
            Chunk { logical: 9 << 20, length: 1 << 20, flags: chunk::BLOCK_GROUP_DATA, stripes: vec![9 << 20] },
        ];
        let o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        let s = SysTrees::new(&chunks, &Ident::new(&o).unwrap()).unwrap();
        assert_eq!(s.chunk_tree.root_addr(), SYS_LOGICAL);
        assert_eq!(s.sys_chunk_array.len(), SYS_CHUNK_KEY_SIZE + chunks[0].encode(&[0; 16]).len());
        assert_eq!(s.dev_tree.leaf_count(), 1);
    }
}
