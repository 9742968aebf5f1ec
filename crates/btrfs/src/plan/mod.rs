//! The planner, in two steps. [`prepare`] reads what planning needs from the sources once:
//! it resolves the subvolumes, decides how every file is stored, and compresses every
//! candidate chunk (in parallel), keeping the frames that will be stored. [`plan`] is pure:
//! from a [`Prepared`] and the options it decides every chunk, data extent, tree block and
//! item, and can run many times on one `Prepared` (the minimal size is searched that way, see
//! [`min_size`]).
//!
//! The stages, one module each, run in this order:
//! 1. [`subvol`]: subvolume ids, parents and links, the default and read-only subvolumes;
//! 2. [`number`]: inode numbers and directory indices of each fs tree;
//! 3. [`files`]: how each file is stored (inline, raw ranges, zstd frames);
//! 4. [`prepare`] ends here; [`plan`] starts with [`data`]: data extents and chunks;
//! 5. [`fs_tree`]: every fs tree, straight into leaves;
//! 6. [`trees`]: the small trees (csum, uuid, data reloc, dev, chunk, root items);
//! 7. [`fixed_point`]: the metadata chunk's size, then the root, extent and free-space trees,
//!    whose contents depend on their own block addresses.

mod data;
mod files;
mod fixed_point;
mod fs_tree;
mod min_size;
mod number;
mod prepare;
mod subvol;
mod trees;

use std::sync::Arc;

use mkdisk_tree::{Source, Timestamp};

use crate::chunk::Chunk;
use crate::frames::{Frame, Spill};
use crate::items::Timespec;
use crate::node::PackedTree;
use crate::{BtrfsError, BtrfsOptions, CsumType};

pub use min_size::min_size;
pub use prepare::{prepare, Prepared};

/// One MiB.
const MIB: u64 = 1 << 20;
/// Logical start of the SYSTEM chunk; its stripes are at physical 1 MiB and 5 MiB.
const SYS_LOGICAL: u64 = MIB;
/// Length of the SYSTEM chunk (per stripe).
const SYS_LEN: u64 = 4 * MIB;
/// Data starts after the two system stripes; data logical addresses equal physical ones.
const DATA_START: u64 = 9 * MIB;
/// Data chunk size (the kernel's own maximum for data chunks).
const DATA_CHUNK_MAX: u64 = 1 << 30;
/// `BTRFS_MAX_EXTENT_SIZE`.
const MAX_EXTENT: u64 = 128 * MIB;
/// Superblock mirrors that may fall inside chunks.
const MIRRORS: [u64; 2] = [64 * MIB, 256 << 30];
/// `BTRFS_STRIPE_LEN`: the unit excluded around a superblock mirror.
const STRIPE: u64 = crate::STRIPE_LEN;

// Tree objectids.
pub(crate) const ROOT_TREE_OBJECTID: u64 = 1;
pub(crate) const EXTENT_TREE_OBJECTID: u64 = 2;
pub(crate) const CHUNK_TREE_OBJECTID: u64 = 3;
pub(crate) const DEV_TREE_OBJECTID: u64 = 4;
pub(crate) const FS_TREE_OBJECTID: u64 = 5;
pub(crate) const ROOT_TREE_DIR_OBJECTID: u64 = 6;
pub(crate) const CSUM_TREE_OBJECTID: u64 = 7;
pub(crate) const UUID_TREE_OBJECTID: u64 = 9;
pub(crate) const FREE_SPACE_TREE_OBJECTID: u64 = 10;
pub(crate) const DATA_RELOC_TREE_OBJECTID: u64 = (-9i64) as u64;
pub(crate) const EXTENT_CSUM_OBJECTID: u64 = (-10i64) as u64;
/// The first inode number (and subvolume id) of an fs tree.
const FIRST_FREE_OBJECTID: u64 = 256;
/// Directory index of a directory's first entry (0 and 1 are `.` and `..`).
const FIRST_DIR_INDEX: u64 = 2;

// Feature flags.
/// mixed-backref, mixed-groups off, big-metadata, extref, skinny-metadata, no-holes.
const INCOMPAT_BASE: u64 = 0x1 | 0x20 | 0x40 | 0x100 | 0x200;
/// `BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL`.
const INCOMPAT_DEFAULT_SUBVOL: u64 = 0x2;
/// `BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD`.
const INCOMPAT_COMPRESS_ZSTD: u64 = 0x10;
/// free-space-tree and free-space-tree-valid.
const COMPAT_RO_FST: u64 = 0x1 | 0x2;
/// `compat_ro_flags` of every filesystem.
pub(crate) const COMPAT_RO_FLAGS: u64 = COMPAT_RO_FST;

/// One planned data extent: file bytes `file_offset..file_offset+ram_len` of `source`, stored
/// at `logical` (raw, or as one zstd frame), padded to `disk_len`.
#[derive(Clone, Debug)]
pub(crate) struct DataExtent {
    pub logical: u64,
    pub disk_len: u64,
    pub ram_len: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub source: Source,
    /// The frame of a compressed extent.
    pub zstd: Option<Frame>,
    pub root: u64,
    pub ino: u64,
}

/// The complete plan of one btrfs filesystem.
#[derive(Clone)]
pub struct BtrfsLayout {
    pub(crate) fsid: [u8; 16],
    pub(crate) chunk_uuid: [u8; 16],
    pub(crate) csum: CsumType,
    pub(crate) label: Vec<u8>,
    pub(crate) total_bytes: u64,
    pub(crate) bytes_used: u64,
    pub(crate) incompat: u64,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) extents: Vec<DataExtent>,
    /// Every tree; `trees[0]` is the root tree, the last one the chunk tree.
    pub(crate) trees: Vec<PackedTree>,
    pub(crate) dev_item: Vec<u8>,
    pub(crate) sys_chunk_array: Vec<u8>,
    /// Scratch file holding the compressed frames (none: frames are in memory), shared with
    /// the [`Prepared`] it was planned from.
    pub(crate) spill: Option<Arc<Spill>>,
}

impl std::fmt::Debug for BtrfsLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtrfsLayout")
            .field("total_bytes", &self.total_bytes)
            .field("bytes_used", &self.bytes_used)
            .field("chunks", &self.chunks)
            .field("data_extents", &self.extents.len())
            .field("tree_blocks", &self.tree_blocks())
            .finish_non_exhaustive()
    }
}

impl BtrfsLayout {
    /// Device size the filesystem uses (`total_bytes`).
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// `bytes_used`: data extents plus tree blocks.
    #[must_use]
    pub fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    /// The chunks, by logical address.
    #[must_use]
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Number of data extents.
    #[must_use]
    pub fn data_extents(&self) -> usize {
        self.extents.len()
    }

    /// Number of compressed data extents.
    #[must_use]
    pub fn compressed_extents(&self) -> usize {
        self.extents.iter().filter(|e| e.zstd.is_some()).count()
    }

    /// Every compressed extent as (byte offset in the partition, on-disk length, uncompressed
    /// length), for verifying frames.
    #[must_use]
    pub fn compressed_extent_ranges(&self) -> Vec<(u64, u64, u64)> {
        self.compressed().map(|(off, e, _)| (off, e.disk_len, e.ram_len)).collect()
    }

    /// Every compressed extent's zstd frame as (byte offset in the partition, frame length
    /// without the sector padding), ascending: bytes that compressing again does not shrink.
    #[must_use]
    pub fn frame_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.compressed().map(|(off, _, len)| (off, len)).collect();
        v.sort_unstable();
        v
    }

    /// The compressed extents with their byte offset in the partition and frame length.
    fn compressed(&self) -> impl Iterator<Item = (u64, &DataExtent, u64)> {
        self.extents.iter().filter_map(|e| {
            let frame = e.zstd.as_ref()?;
            let c = self.chunks.iter().find(|c| e.logical >= c.logical && e.logical < c.end())?;
            Some((c.stripes[0] + (e.logical - c.logical), e, frame.len))
        })
    }

    /// Number of tree blocks (each written twice: DUP).
    #[must_use]
    pub fn tree_blocks(&self) -> usize {
        self.trees.iter().map(PackedTree::block_count).sum()
    }

    pub(crate) fn root_tree(&self) -> &PackedTree {
        &self.trees[0]
    }

    pub(crate) fn chunk_tree(&self) -> &PackedTree {
        &self.trees[self.trees.len() - 1]
    }
}

fn err_plan(msg: impl Into<String>) -> BtrfsError {
    BtrfsError::Plan(msg.into())
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn round_up(x: u64, to: u64) -> Result<u64, BtrfsError> {
    x.checked_add(to - 1).map(|v| v / to * to).ok_or_else(|| err_plan("size overflow"))
}

/// A count or index as `u64` (lossless: `usize` is at most 64 bits on every target).
fn u64_from(n: usize) -> u64 {
    u64::try_from(n).expect("usize is at most 64 bits wide")
}

/// Inode number of numbering position `pos`.
fn ino_of(pos: usize) -> u64 {
    FIRST_FREE_OBJECTID + u64_from(pos)
}

fn ts(t: Timestamp) -> Timespec {
    Timespec { sec: t.sec, nsec: t.nsec.min(999_999_999) }
}

/// Plan the filesystem prepared in `prepared`: every chunk, data extent, tree block and item.
/// Pure and cheap next to [`prepare`]: it reads no file and compresses nothing, so it can run
/// once per candidate size. Of `opts` it uses `size_bytes`, `uuid`, `label`, `timestamp`,
/// `csum`, `default_subvolume` and `readonly_subvolumes`; compression and `scratch_dir` were
/// decided by [`prepare`] and are ignored here.
///
/// # Errors
/// [`BtrfsError::DoesNotFit`] when the content (data or metadata) does not fit
/// `opts.size_bytes`; [`BtrfsError::BadArgument`] for a label over 255 bytes;
/// [`BtrfsError::BadSubvolume`] for a default or read-only subvolume that is not one of the
/// subvolumes; [`BtrfsError::SymlinkTooLong`], [`BtrfsError::XattrTooLarge`] and
/// [`BtrfsError::TooManyLinks`] for inodes btrfs cannot hold.
pub fn plan(prepared: &Prepared<'_>, opts: &BtrfsOptions) -> Result<BtrfsLayout, BtrfsError> {
    let id = trees::Ident::new(opts)?;
    let roles = subvol::roles(&prepared.subvols, opts)?;
    let fss = prepared.fs_views(&roles, opts)?;
    let data = data::allocate(&fss, id.total_bytes)?;
    let fs_trees =
        fss.iter().map(|fs| fs_tree::fs_tree(fs, &data.by_owner, &data.extents)).collect::<Result<Vec<_>, _>>()?;
    let small = trees::Small::new(&data.extents, &fss, opts)?;
    let ctx = fixed_point::Ctx {
        fss: &fss,
        placement: &prepared.subvols.placement,
        default_id: roles.default_id,
        extents: &data.extents,
        time: opts.timestamp,
    };
    let meta = fixed_point::Meta::new(&ctx, (&fs_trees, &small), data.chunks.len(), data.meta_start, id.total_bytes)?;
    let mut chunks = data.chunks.clone();
    chunks.push(meta.chunk.clone());
    let sys = trees::SysTrees::new(&chunks, &id)?;
    let mut others = vec![sys.dev_tree];
    others.extend(fs_trees);
    others.extend([small.csum, small.uuid, small.reloc]);
    let done = fixed_point::solve(&ctx, &meta, &chunks, &sys.chunk_tree, others)?;
    let blocks = done.root.block_count()
        + done.extent.block_count()
        + done.free_space.block_count()
        + done.others.iter().map(PackedTree::block_count).sum::<usize>()
        + sys.chunk_tree.block_count();
    let tree_bytes = u64_from(blocks) * crate::NODESIZE;
    let bytes_used = done.data_used.iter().sum::<u64>() + tree_bytes;
    let mut incompat = INCOMPAT_BASE;
    if fss.iter().any(|fs| fs.prepared.inline_zstd()) || data.extents.iter().any(|e| e.zstd.is_some()) {
        incompat |= INCOMPAT_COMPRESS_ZSTD;
    }
    if roles.default_id != FS_TREE_OBJECTID {
        incompat |= INCOMPAT_DEFAULT_SUBVOL;
    }
    let mut all_trees = vec![done.root, done.extent, done.free_space];
    all_trees.extend(done.others);
    all_trees.push(sys.chunk_tree);
    Ok(BtrfsLayout {
        fsid: id.fsid,
        chunk_uuid: id.chunk_uuid,
        csum: opts.csum,
        label: id.label,
        total_bytes: id.total_bytes,
        bytes_used,
        incompat,
        chunks,
        extents: data.extents,
        trees: all_trees,
        dev_item: sys.dev_item,
        sys_chunk_array: sys.sys_chunk_array,
        spill: prepared.spill.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SECTORSIZE;

    #[test]
    fn round_up_is_checked() {
        assert_eq!(round_up(1, SECTORSIZE).unwrap(), SECTORSIZE);
        assert_eq!(round_up(SECTORSIZE, SECTORSIZE).unwrap(), SECTORSIZE);
        assert_eq!(round_up(0, MIB).unwrap(), 0);
        assert!(matches!(round_up(u64::MAX - 5, SECTORSIZE), Err(BtrfsError::Plan(_))));
    }

    #[test]
    fn inode_numbers_start_at_256() {
        assert_eq!(ino_of(0), 256);
        assert_eq!(ino_of(10), 266);
    }
}
