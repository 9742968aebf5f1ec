//! The planner: turns trees and options into a [`BtrfsLayout`] that fixes every chunk, data
//! extent, tree block and item. Pure apart from reading inline files and compressing chunks
//! to learn their sizes; the frames are kept (in memory or a scratch file, see `frames`) so
//! that `write` only copies them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use mkdisk_tree::{FileData, InodeId, Kind, Meta, Source, Timestamp, Tree};
use rayon::prelude::*;

use crate::chunk::{self, Chunk};
use crate::extent;
use crate::frames::{self, Frame, Spill};
use crate::items::{self, InodeItem, RootItem, Timespec};
use crate::node::{Item, Key, LeafStream, PackedTree, Payload, KEY_PTRS_PER_NODE, MAX_ITEM_DATA};
use crate::source::{source_name, zstd_frame, Reader};
use crate::{
    csum, BtrfsError, BtrfsOptions, Compress, CsumType, SubvolSpec, GENERATION, MAX_COMPRESSED_CHUNK, MAX_INLINE,
    NODESIZE, SECTORSIZE,
};

const MIB: u64 = 1 << 20;
/// Logical start of the SYSTEM chunk; its stripes are at physical 1 MiB and 5 MiB.
const SYS_LOGICAL: u64 = MIB;
const SYS_LEN: u64 = 4 * MIB;
/// Data starts after the two system stripes; data logical addresses equal physical ones.
const DATA_START: u64 = 9 * MIB;
/// Data chunk size (the kernel's own maximum for data chunks).
const DATA_CHUNK_MAX: u64 = 1 << 30;
/// `BTRFS_MAX_EXTENT_SIZE`.
const MAX_EXTENT: u64 = 128 * MIB;
/// Superblock mirrors that may fall inside chunks.
const MIRRORS: [u64; 2] = [64 * MIB, 256 << 30];
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
const FIRST_FREE_OBJECTID: u64 = 256;

// Feature flags.
const INCOMPAT_BASE: u64 = 0x1 | 0x20 | 0x40 | 0x100 | 0x200;
const INCOMPAT_DEFAULT_SUBVOL: u64 = 0x2;
const INCOMPAT_COMPRESS_ZSTD: u64 = 0x10;
const COMPAT_RO_FST: u64 = 0x1 | 0x2;

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
    /// Scratch file holding the compressed frames (none: frames are in memory).
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
        self.extents
            .iter()
            .filter(|e| e.zstd.is_some())
            .filter_map(|e| {
                let c = self.chunks.iter().find(|c| e.logical >= c.logical && e.logical < c.end())?;
                Some((c.stripes[0] + (e.logical - c.logical), e.disk_len, e.ram_len))
            })
            .collect()
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

fn ts(t: Timestamp) -> Timespec {
    Timespec { sec: t.sec, nsec: t.nsec.min(999_999_999) }
}

/// glibc `makedev` encoding → the kernel's `(major << 20) | minor`.
fn kernel_rdev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

/// The target of a directory entry.
#[derive(Clone, Copy, Debug)]
enum Target {
    Inode(InodeId),
    Subvol(u64),
}

#[derive(Clone, Copy, Debug)]
struct DirEnt<'a> {
    name: &'a [u8],
    target: Target,
}

/// One fs tree's inodes in numbering order (inode number = 256 + position).
struct Numbered<'a> {
    order: Vec<InodeId>,
    /// Position of each tree inode (`usize::MAX`: unreachable).
    pos_of: Vec<usize>,
    /// Entries of each directory position (empty for non-directories).
    entries: Vec<Vec<DirEnt<'a>>>,
    /// Names of each inode: (parent ino, dir index, name).
    refs: Vec<Vec<(u64, u64, &'a [u8])>>,
    /// First name and parent position, for error paths.
    first: Vec<(usize, &'a [u8])>,
}

impl Numbered<'_> {
    fn pos_of(&self, id: InodeId) -> Option<usize> {
        self.pos_of.get(id.index()).copied().filter(|&p| p != usize::MAX)
    }

    fn path(&self, mut pos: usize) -> String {
        let mut comps = Vec::new();
        while pos != 0 {
            let (p, n) = self.first[pos];
            comps.push(show(n));
            pos = p;
        }
        comps.reverse();
        format!("/{}", comps.join("/"))
    }
}

type Links = BTreeMap<InodeId, Vec<(Vec<u8>, u64)>>;

fn number<'a>(tree: &'a Tree, links: Option<&'a Links>) -> Result<Numbered<'a>, BtrfsError> {
    let mut n = Numbered {
        order: vec![InodeId::ROOT],
        pos_of: vec![usize::MAX; tree.len()],
        entries: Vec::new(),
        refs: vec![Vec::new()],
        first: vec![(0, b"")],
    };
    n.pos_of[0] = 0;
    let merged = |dir: InodeId, n: &Numbered<'a>, dpos: usize| -> Result<Vec<DirEnt<'a>>, BtrfsError> {
        let d = tree.inode(dir).as_dir().map(|d| d.entries.as_slice()).unwrap_or(&[]);
        let l: &[(Vec<u8>, u64)] = links.and_then(|m| m.get(&dir)).map_or(&[], Vec::as_slice);
        let mut out = Vec::with_capacity(d.len() + l.len());
        let (mut i, mut j) = (0, 0);
        while i < d.len() || j < l.len() {
            let take_link = j < l.len() && (i >= d.len() || l[j].0.as_slice() <= d[i].name.as_slice());
            if take_link {
                if i < d.len() && d[i].name == l[j].0 {
                    i += 1; // shadowed by the subvolume
                }
                out.push(DirEnt { name: &l[j].0, target: Target::Subvol(l[j].1) });
                j += 1;
            } else {
                let e = &d[i];
                if e.name.len() > 255 {
                    return Err(BtrfsError::NameTooLong {
                        path: format!("{}/{}", n.path(dpos).trim_end_matches('/'), show(&e.name)),
                        len: e.name.len(),
                    });
                }
                out.push(DirEnt { name: &e.name, target: Target::Inode(e.inode) });
                i += 1;
            }
        }
        Ok(out)
    };
    let root_entries = merged(InodeId::ROOT, &n, 0)?;
    n.entries.push(root_entries);
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some(top) = stack.last_mut() {
        let (p, k) = *top;
        if k >= n.entries[p].len() {
            stack.pop();
            continue;
        }
        top.1 += 1;
        let ent = n.entries[p][k];
        let Target::Inode(id) = ent.target else { continue };
        let index = u64::try_from(k).unwrap_or(u64::MAX).saturating_add(2);
        let parent_ino = FIRST_FREE_OBJECTID + u64::try_from(p).unwrap_or(0);
        if n.pos_of[id.index()] != usize::MAX {
            let q = n.pos_of[id.index()];
            n.refs[q].push((parent_ino, index, ent.name));
            continue;
        }
        let q = n.order.len();
        n.pos_of[id.index()] = q;
        n.order.push(id);
        n.refs.push(vec![(parent_ino, index, ent.name)]);
        n.first.push((p, ent.name));
        if tree.inode(id).as_dir().is_some() {
            let e = merged(id, &n, q)?;
            n.entries.push(e);
            stack.push((q, 0));
        } else {
            n.entries.push(Vec::new());
        }
    }
    Ok(n)
}

/// How one regular file is stored.
enum FilePlan {
    None,
    /// The inline `EXTENT_DATA` item's payload (header and the file bytes, or with `zstd` one
    /// zstd frame of them), built once and moved into the fs tree.
    Inline {
        item: Vec<u8>,
        zstd: bool,
    },
    /// Sector-aligned data ranges (start, len).
    Ranges(Vec<(u64, u64)>),
}

/// One piece of a file's data: raw (splittable by the allocator) or one zstd frame.
struct Piece {
    off: u64,
    len: u64,
    zstd: Option<Frame>,
}

/// How a file is stored. Inline: files up to [`MAX_INLINE`] bytes, and with compression also
/// files under one sector whose frame is strictly smaller than the file and at most
/// [`MAX_INLINE`] bytes (the kernel's rule: it inlines a compressed range of one sector at
/// offset 0 when the compressed bytes fit `max_inline`).
fn file_plan(fd: &FileData, compress: Option<Compress>) -> Result<FilePlan, BtrfsError> {
    if fd.size == 0 || fd.runs.is_empty() {
        return Ok(FilePlan::None);
    }
    let inline_max = if compress.is_some() { SECTORSIZE - 1 } else { MAX_INLINE };
    if fd.size <= inline_max {
        let mut buf = vec![0u8; usize::try_from(fd.size).unwrap_or(0)];
        Reader::open(&fd.source)?.read(fd.size, 0, &mut buf)?;
        if let Some(Compress::Zstd { level, .. }) = compress {
            let frame = zstd_frame(level, &buf)
                .map_err(|message| BtrfsError::Compress { path: source_name(&fd.source), message })?;
            if frame.len() < buf.len() && frame.len() as u64 <= MAX_INLINE {
                let item = items::inline_extent(GENERATION, fd.size, items::COMPRESS_ZSTD, &frame);
                return Ok(FilePlan::Inline { item, zstd: true });
            }
        }
        if fd.size <= MAX_INLINE {
            return Ok(FilePlan::Inline { item: items::inline_extent(GENERATION, fd.size, 0, &buf), zstd: false });
        }
    }
    let end_max = round_up(fd.size, SECTORSIZE)?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for r in &fd.runs {
        if r.len == 0 || r.offset >= fd.size {
            continue;
        }
        let s = r.offset / SECTORSIZE * SECTORSIZE;
        let e =
            round_up(r.offset.checked_add(r.len).ok_or_else(|| err_plan("run overflow"))?, SECTORSIZE)?.min(end_max);
        match ranges.last_mut() {
            Some(last) if s <= last.0 + last.1 => {
                let new_end = e.max(last.0 + last.1);
                last.1 = new_end - last.0;
            }
            _ => ranges.push((s, e - s)),
        }
    }
    Ok(FilePlan::Ranges(ranges))
}

/// Chunks of a range that are compression candidates: (offset, len).
fn chunks_of(range: (u64, u64)) -> impl Iterator<Item = (u64, u64)> {
    let (s, l) = range;
    let n = l.div_ceil(MAX_COMPRESSED_CHUNK);
    (0..n).map(move |i| {
        let off = s + i * MAX_COMPRESSED_CHUNK;
        (off, (s + l - off).min(MAX_COMPRESSED_CHUNK))
    })
}

/// An fs tree being planned.
struct Fs<'a> {
    id: u64,
    readonly: bool,
    tree: &'a Tree,
    compress: Option<Compress>,
    n: Numbered<'a>,
    files: Vec<FilePlan>,
    pieces: Vec<Vec<Piece>>,
    uuid: [u8; 16],
}

/// Data allocator over the data region: skips superblock stripes, never crosses a chunk.
struct DataAlloc {
    cursor: u64,
}

impl DataAlloc {
    fn skip(&mut self) {
        for m in MIRRORS {
            let ex = m / STRIPE * STRIPE;
            if self.cursor >= ex && self.cursor < ex + STRIPE {
                self.cursor = ex + STRIPE;
            }
        }
    }
    fn limit(&self) -> u64 {
        let rel = self.cursor - DATA_START;
        let mut lim = DATA_START + (rel / DATA_CHUNK_MAX + 1) * DATA_CHUNK_MAX;
        for m in MIRRORS {
            let ex = m / STRIPE * STRIPE;
            if ex >= self.cursor && ex < lim {
                lim = ex;
            }
        }
        lim
    }
    /// Up to `len` contiguous bytes (all of them if `whole`).
    fn take(&mut self, len: u64, whole: bool) -> (u64, u64) {
        loop {
            self.skip();
            let room = self.limit() - self.cursor;
            if whole && room < len {
                self.cursor += room;
                continue;
            }
            let got = len.min(room).min(MAX_EXTENT);
            let at = self.cursor;
            self.cursor += got;
            return (at, got);
        }
    }
}

fn normalize_subvol(path: &str) -> Result<Vec<Vec<u8>>, BtrfsError> {
    let comps: Vec<Vec<u8>> = path.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect();
    if comps.is_empty() || comps.iter().any(|c| c == b"." || c == b"..") {
        return Err(BtrfsError::BadSubvolume {
            path: path.to_string(),
            reason: "not a relative path below the top level".into(),
        });
    }
    if let Some(c) = comps.iter().find(|c| c.len() > 255) {
        return Err(BtrfsError::NameTooLong { path: path.to_string(), len: c.len() });
    }
    Ok(comps)
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

fn blocks_for_leaves(leaves: usize) -> usize {
    let mut n = leaves;
    let mut total = leaves;
    while n > 1 {
        n = n.div_ceil(KEY_PTRS_PER_NODE);
        total += n;
    }
    total
}

fn pack(owner: u64, items: Vec<Item>, min_leaves: usize) -> Result<PackedTree, BtrfsError> {
    PackedTree::pack(owner, items, min_leaves).map_err(BtrfsError::Plan)
}

/// Plan a filesystem whose top level (subvolume 5) holds `top` and which has `subvols`.
///
/// # Errors
/// Names over 255 bytes, oversized xattrs or symlinks, duplicate or impossible subvolume
/// paths, content larger than the partition, unreadable inline sources.
pub fn plan(top: &Tree, subvols: &[SubvolSpec<'_>], opts: &BtrfsOptions) -> Result<BtrfsLayout, BtrfsError> {
    let fsid = *opts.uuid.as_bytes();
    let dev_uuid = *mkdisk_tree::ids::derive(&opts.uuid, b"btrfs-dev-uuid").as_bytes();
    let chunk_uuid = *mkdisk_tree::ids::derive(&opts.uuid, b"btrfs-chunk-tree-uuid").as_bytes();
    let total_bytes = opts.size_bytes / SECTORSIZE * SECTORSIZE;
    let label = opts.label.clone().unwrap_or_default().into_bytes();
    if label.len() > 255 {
        return Err(BtrfsError::BadArgument { arg: "label".into(), reason: "longer than 255 bytes".into() });
    }
    let time = opts.timestamp;
    let dir_meta = Meta::new(0o755).with_mtime(Timestamp::from_secs(time));

    // --- Subvolumes: ids in sorted path order, parents by longest prefix.
    let mut specs: Vec<(Vec<Vec<u8>>, &SubvolSpec<'_>)> =
        subvols.iter().map(|s| normalize_subvol(&s.path).map(|c| (c, s))).collect::<Result<_, _>>()?;
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    for w in specs.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(BtrfsError::DuplicateSubvolume { path: w[1].1.path.clone() });
        }
    }
    // Borrowed unless a subvolume needs a parent directory created (a tree can be large).
    let mut trees: Vec<Cow<'_, Tree>> = Vec::with_capacity(specs.len() + 1);
    trees.push(Cow::Borrowed(top));
    trees.extend(specs.iter().map(|(_, s)| Cow::Borrowed(&*s.tree)));
    let ids: Vec<u64> = std::iter::once(FS_TREE_OBJECTID).chain((0..specs.len() as u64).map(|i| 256 + i)).collect();
    let mut links: Vec<Links> = vec![Links::new(); trees.len()];
    // (subvol idx) -> (parent tree idx, dir, name)
    let mut placement: Vec<(usize, InodeId, Vec<u8>)> = Vec::new();
    for (i, (comps, spec)) in specs.iter().enumerate() {
        let parent = specs[..i]
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| c.len() < comps.len() && comps.starts_with(c))
            .max_by_key(|(_, (c, _))| c.len())
            .map_or(0, |(j, _)| j + 1);
        let skip = if parent == 0 { 0 } else { specs[parent - 1].0.len() };
        let rel = &comps[skip..];
        let (name, dirs) = rel.split_last().ok_or_else(|| err_plan("empty subvolume path"))?;
        let dir_path = dirs.join(&b'/');
        let existing = trees[parent].lookup(&dir_path).filter(|&d| trees[parent].inode(d).as_dir().is_some());
        let dir = existing
            .map_or_else(|| trees[parent].to_mut().mkdir_p(&dir_path, &dir_meta), Ok)
            .map_err(|e| BtrfsError::BadSubvolume { path: spec.path.clone(), reason: e.to_string() })?;
        if let Some(d) = trees[parent].inode(dir).as_dir() {
            if let Ok(p) = d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
                match trees[parent].inode(d.entries[p].inode).as_dir() {
                    None => {
                        return Err(BtrfsError::BadSubvolume {
                            path: spec.path.clone(),
                            reason: "exists as a non-directory in its parent".into(),
                        })
                    }
                    Some(dd) if !dd.entries.is_empty() => {
                        return Err(BtrfsError::BadSubvolume {
                            path: spec.path.clone(),
                            reason: "a non-empty directory of that name exists in its parent".into(),
                        })
                    }
                    // An empty directory (a mount point) is replaced by the subvolume.
                    Some(_) => {}
                }
            }
        }
        links[parent].entry(dir).or_default().push((name.clone(), ids[i + 1]));
        placement.push((parent, dir, name.clone()));
    }
    for l in &mut links {
        for v in l.values_mut() {
            v.sort();
        }
    }
    let default_id = match &opts.default_subvolume {
        None => FS_TREE_OBJECTID,
        Some(p) if p.trim_matches('/').is_empty() => FS_TREE_OBJECTID,
        Some(p) => {
            let c = normalize_subvol(p)?;
            let i = specs.iter().position(|(sc, _)| *sc == c).ok_or_else(|| BtrfsError::BadSubvolume {
                path: p.clone(),
                reason: "the default subvolume is not one of the subvolumes".into(),
            })?;
            ids[i + 1]
        }
    };

    let mut readonly: Vec<u64> = Vec::new();
    for p in &opts.readonly_subvolumes {
        let c = normalize_subvol(p)?;
        let i = specs.iter().position(|(sc, _)| *sc == c).ok_or_else(|| BtrfsError::BadSubvolume {
            path: p.clone(),
            reason: "a read-only subvolume must be one of the subvolumes".into(),
        })?;
        readonly.push(ids[i + 1]);
    }

    // --- Number every fs tree and decide how each file is stored.
    let mut fss: Vec<Fs<'_>> = Vec::with_capacity(trees.len());
    for (t, tree) in trees.iter().enumerate() {
        let n = number(tree, Some(&links[t]))?;
        let compress = if t == 0 { opts.compress } else { specs[t - 1].1.compress.or(opts.compress) };
        let compress = compress.filter(|c| *c != Compress::None);
        let files = n
            .order
            .par_iter()
            .map(|&id| match &tree.inode(id).kind {
                Kind::File(fd) => file_plan(fd, compress),
                _ => Ok(FilePlan::None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let uuid = *mkdisk_tree::ids::derive(&opts.uuid, format!("btrfs-subvol-uuid:{}", ids[t]).as_bytes()).as_bytes();
        fss.push(Fs {
            id: ids[t],
            readonly: readonly.contains(&ids[t]),
            tree,
            compress,
            n,
            files,
            pieces: Vec::new(),
            uuid,
        });
    }

    // --- Compression: every candidate chunk once, in parallel. A frame that saves a sector is
    // kept (memory or scratch file) for `write`; for the others only the length matters.
    struct Cand<'b> {
        fd: &'b FileData,
        off: u64,
        len: u64,
        level: i32,
    }
    let mut cands: Vec<Cand<'_>> = Vec::new();
    for fs in &fss {
        let Some(Compress::Zstd { level, .. }) = fs.compress else { continue };
        for (pos, fp) in fs.files.iter().enumerate() {
            let FilePlan::Ranges(ranges) = fp else { continue };
            let Kind::File(fd) = &fs.tree.inode(fs.n.order[pos]).kind else { continue };
            for &r in ranges {
                for (off, len) in chunks_of(r) {
                    if len > SECTORSIZE {
                        cands.push(Cand { fd, off, len, level });
                    }
                }
            }
        }
    }
    let spill = match (&opts.scratch_dir, cands.is_empty()) {
        (Some(dir), false) => Some(Arc::new(Spill::new(dir)?)),
        _ => None,
    };
    let sizes: Vec<(u64, Option<Frame>)> = cands
        .par_iter()
        .map(|c| {
            let mut buf = vec![0u8; usize::try_from(c.len.min(c.fd.size.saturating_sub(c.off))).unwrap_or(0)];
            Reader::open(&c.fd.source)?.read(c.fd.size, c.off, &mut buf)?;
            let frame = zstd_frame(c.level, &buf)
                .map_err(|message| BtrfsError::Compress { path: source_name(&c.fd.source), message })?;
            let clen = u64::try_from(frame.len()).unwrap_or(u64::MAX);
            let saves = round_up(clen, SECTORSIZE)?.saturating_add(SECTORSIZE) <= c.len;
            let kept = if saves { Some(frames::keep(spill.as_deref(), frame)?) } else { None };
            Ok((clen, kept))
        })
        .collect::<Result<_, BtrfsError>>()?;
    drop(cands);

    // --- Pieces per file (same traversal as the candidates).
    let mut next_size = sizes.into_iter();
    for fs in &mut fss {
        let mut all = Vec::with_capacity(fs.files.len());
        for fp in &fs.files {
            let mut pieces: Vec<Piece> = Vec::new();
            if let FilePlan::Ranges(ranges) = fp {
                let mut nocompress = false;
                let mut first = true;
                for &r in ranges {
                    let push_raw = |pieces: &mut Vec<Piece>, off: u64, len: u64| match pieces.last_mut() {
                        Some(p) if p.zstd.is_none() && p.off + p.len == off => p.len += len,
                        _ => pieces.push(Piece { off, len, zstd: None }),
                    };
                    match fs.compress {
                        Some(Compress::Zstd { force, .. }) => {
                            for (off, len) in chunks_of(r) {
                                if len <= SECTORSIZE {
                                    push_raw(&mut pieces, off, len);
                                    continue;
                                }
                                let (_, frame) = next_size.next().ok_or_else(|| err_plan("compression sizes"))?;
                                let keep = !nocompress && frame.is_some();
                                if first && !keep && !force {
                                    nocompress = true;
                                }
                                first = false;
                                if let Some(frame) = frame.filter(|_| keep) {
                                    pieces.push(Piece { off, len, zstd: Some(frame) });
                                } else {
                                    push_raw(&mut pieces, off, len);
                                }
                            }
                        }
                        Some(Compress::None) | None => push_raw(&mut pieces, r.0, r.1),
                    }
                }
            }
            all.push(pieces);
        }
        fs.pieces = all;
    }

    // --- Allocate data extents in canonical order (after a size check, so that a huge sparse
    // source fails fast instead of allocating forever).
    let data_need = fss
        .iter()
        .flat_map(|fs| fs.pieces.iter().flatten())
        .map(|p| p.zstd.as_ref().map_or(p.len, |f| f.len))
        .fold(DATA_START, u64::saturating_add);
    if data_need > total_bytes {
        return Err(BtrfsError::ContentTooLarge { needed: data_need, available: total_bytes });
    }
    let mut alloc = DataAlloc { cursor: DATA_START };
    let mut extents: Vec<DataExtent> = Vec::new();
    for fs in &fss {
        for (pos, pieces) in fs.pieces.iter().enumerate() {
            let Kind::File(fd) = &fs.tree.inode(fs.n.order[pos]).kind else { continue };
            let ino = FIRST_FREE_OBJECTID + pos as u64;
            for p in pieces {
                match &p.zstd {
                    Some(frame) => {
                        let disk_len = round_up(frame.len, SECTORSIZE)?;
                        let (at, _) = alloc.take(disk_len, true);
                        extents.push(DataExtent {
                            logical: at,
                            disk_len,
                            ram_len: p.len,
                            file_offset: p.off,
                            file_size: fd.size,
                            source: fd.source.clone(),
                            zstd: Some(frame.clone()),
                            root: fs.id,
                            ino,
                        });
                    }
                    None => {
                        let mut done = 0;
                        while done < p.len {
                            let (at, got) = alloc.take(p.len - done, false);
                            extents.push(DataExtent {
                                logical: at,
                                disk_len: got,
                                ram_len: got,
                                file_offset: p.off + done,
                                file_size: fd.size,
                                source: fd.source.clone(),
                                zstd: None,
                                root: fs.id,
                                ino,
                            });
                            done += got;
                        }
                    }
                }
            }
        }
    }
    let data_end = alloc.cursor;
    let data_len = round_up((data_end - DATA_START).max(MIB), MIB)?;
    let mut chunks: Vec<Chunk> = vec![Chunk {
        logical: SYS_LOGICAL,
        length: SYS_LEN,
        flags: chunk::BLOCK_GROUP_SYSTEM | chunk::BLOCK_GROUP_DUP,
        stripes: vec![SYS_LOGICAL, SYS_LOGICAL + SYS_LEN],
    }];
    let mut s = DATA_START;
    while s < DATA_START + data_len {
        let l = (DATA_START + data_len - s).min(DATA_CHUNK_MAX);
        chunks.push(Chunk { logical: s, length: l, flags: chunk::BLOCK_GROUP_DATA, stripes: vec![s] });
        s += l;
    }
    let meta_start = DATA_START + data_len;

    // --- fs trees.
    let mut fs_trees: Vec<PackedTree> = Vec::with_capacity(fss.len());
    let mut ext_by_owner: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    for (i, e) in extents.iter().enumerate() {
        ext_by_owner.entry((e.root, e.ino)).or_default().push(i);
    }
    for fs in &mut fss {
        fs_trees.push(fs_tree(fs, &ext_by_owner, &extents)?);
    }

    // --- csum tree.
    let csum_size = opts.csum.size();
    let max_items = opts.csum.max_csum_items();
    let mut csum_items = Vec::new();
    {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for e in &extents {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == e.logical => r.1 += e.disk_len,
                _ => runs.push((e.logical, e.disk_len)),
            }
        }
        for (start, len) in runs {
            let sectors = len / SECTORSIZE;
            let mut done = 0;
            while done < sectors {
                let n = (sectors - done).min(max_items);
                let logical = start + done * SECTORSIZE;
                csum_items.push(Item {
                    key: Key::new(EXTENT_CSUM_OBJECTID, items::EXTENT_CSUM_KEY, logical),
                    data: Payload::Csums { logical, sectors: n, csum_size },
                });
                done += n;
            }
        }
    }
    let csum_tree = pack(CSUM_TREE_OBJECTID, csum_items, 1)?;

    // --- uuid tree.
    let mut uuid_map: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    for fs in &fss {
        let lo = u64::from_le_bytes(fs.uuid[0..8].try_into().unwrap_or([0; 8]));
        let hi = u64::from_le_bytes(fs.uuid[8..16].try_into().unwrap_or([0; 8]));
        uuid_map.entry(Key::new(lo, items::UUID_KEY_SUBVOL, hi)).or_default().extend_from_slice(&fs.id.to_le_bytes());
    }
    let uuid_tree = pack(UUID_TREE_OBJECTID, uuid_map.into_iter().map(|(k, v)| Item::bytes(k, v)).collect(), 1)?;

    // --- data reloc tree.
    let reloc_tree = pack(
        DATA_RELOC_TREE_OBJECTID,
        root_dir_items(InodeItem {
            generation: GENERATION,
            nbytes: NODESIZE,
            nlink: 1,
            mode: 0o040755,
            time: Timespec { sec: time, nsec: 0 },
            ..InodeItem::default()
        }),
        1,
    )?;

    // --- Metadata chunk size from the block counts.
    let n_other_est =
        1 + fs_trees.iter().chain([&csum_tree, &uuid_tree, &reloc_tree]).map(PackedTree::block_count).sum::<usize>();
    let n_chunks_est = chunks.len() + 1;
    let dummy_roots = RootAddrs::default();
    let root_probe = pack(ROOT_TREE_OBJECTID, root_tree_items(&fss, &placement, &dummy_roots, default_id, time), 1)?;
    let root_count = root_probe.block_count();
    let root_leaves = root_probe.leaf_count();
    drop(root_probe);
    let n_ext_items = n_other_est + root_count + 8 + extents.len() + n_chunks_est;
    let est_e = blocks_for_leaves((n_ext_items * 78).div_ceil(14000) + 1);
    let mut res_e = 2 * est_e + 4;
    let mut res_f = 4 + (n_chunks_est * 300).div_ceil(14000) * 2;
    let need_blocks = u64::try_from(n_other_est + root_count + res_e + res_f + 2).unwrap_or(u64::MAX);
    let need_bytes = need_blocks.saturating_mul(NODESIZE).saturating_add(2 * STRIPE);
    let min_meta = round_up(need_bytes, MIB)?;
    let want_meta = round_up((2 * need_bytes).max(32 * MIB), MIB)?;
    let avail = total_bytes.saturating_sub(meta_start);
    let meta_len = want_meta.min(avail / 2 / MIB * MIB);
    if meta_len < min_meta {
        return Err(BtrfsError::ContentTooLarge {
            needed: meta_start.saturating_add(2 * min_meta),
            available: total_bytes,
        });
    }
    let meta = Chunk {
        logical: meta_start,
        length: meta_len,
        flags: chunk::BLOCK_GROUP_METADATA | chunk::BLOCK_GROUP_DUP,
        stripes: vec![meta_start, meta_start + meta_len],
    };
    chunks.push(meta.clone());
    let slots = meta_slots(&meta);

    // --- dev and chunk trees (final chunk list).
    let mut dev_items = vec![Item::bytes(Key::new(0, chunk::PERSISTENT_ITEM_KEY, 1), vec![0u8; 40])];
    let mut dev_bytes_used = 0u64;
    for c in &chunks {
        for &p in &c.stripes {
            dev_items.push(Item::bytes(
                Key::new(1, chunk::DEV_EXTENT_KEY, p),
                chunk::dev_extent(c.logical, c.length, &chunk_uuid),
            ));
            dev_bytes_used += c.length;
        }
    }
    let mut dev_tree = pack(DEV_TREE_OBJECTID, dev_items, 1)?;
    let dev_item = chunk::dev_item(total_bytes, dev_bytes_used, &dev_uuid, &fsid);
    let mut chunk_items =
        vec![Item::bytes(Key::new(chunk::DEV_ITEMS_OBJECTID, chunk::DEV_ITEM_KEY, 1), dev_item.clone())];
    for c in &chunks {
        chunk_items.push(Item::bytes(
            Key::new(chunk::FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM_KEY, c.logical),
            c.encode(&dev_uuid),
        ));
    }
    let mut chunk_tree = pack(CHUNK_TREE_OBJECTID, chunk_items, 1)?;
    let sys_slots: Vec<u64> = (0..SYS_LEN / NODESIZE).map(|i| SYS_LOGICAL + i * NODESIZE).collect();
    if chunk_tree.block_count() > sys_slots.len() {
        return Err(err_plan("chunk tree does not fit the system chunk"));
    }
    chunk_tree.assign(&sys_slots);
    let mut sys_chunk_array = vec![0u8; 17];
    Key::new(chunk::FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM_KEY, SYS_LOGICAL).put(&mut sys_chunk_array, 0);
    sys_chunk_array.extend_from_slice(&chunks[0].encode(&dev_uuid));

    // --- Fixed point for the root, extent and free space trees.
    let mut others: Vec<PackedTree> = Vec::new();
    others.push(std::mem::take(&mut dev_tree));
    others.extend(fs_trees);
    others.push(csum_tree);
    others.push(uuid_tree);
    others.push(reloc_tree);
    let data_used: Vec<u64> = chunks
        .iter()
        .map(|c| {
            if c.flags & chunk::BLOCK_GROUP_DATA == 0 {
                return 0;
            }
            let lo = extents.partition_point(|e| e.logical < c.logical);
            let hi = extents.partition_point(|e| e.logical < c.end());
            extents[lo..hi].iter().map(|e| e.disk_len).sum()
        })
        .collect();
    let (root_tree, extent_tree, fst_tree, others) = 'outer: loop {
        let base = root_count + res_e + res_f;
        let total_other: usize = others.iter().map(PackedTree::block_count).sum();
        if base + total_other > slots.len() {
            return Err(BtrfsError::ContentTooLarge {
                needed: meta_start.saturating_add(4 * need_bytes),
                available: total_bytes,
            });
        }
        let mut cur = base;
        for t in &mut others {
            let n = t.block_count();
            t.assign(&slots[cur..cur + n]);
            cur += n;
        }
        let mut e_leaves = 1usize;
        let mut f_leaves = 1usize;
        for _ in 0..64 {
            let e_blocks = blocks_for_leaves(e_leaves);
            let f_blocks = blocks_for_leaves(f_leaves);
            if e_blocks > res_e || f_blocks > res_f {
                res_e = res_e.max(e_blocks * 2);
                res_f = res_f.max(f_blocks * 2);
                continue 'outer;
            }
            let root_addrs = &slots[..root_count];
            let e_addrs = &slots[root_count..root_count + e_blocks];
            let f_addrs = &slots[root_count + res_e..root_count + res_e + f_blocks];
            // Every metadata block (address, level, owner). Levels of the fixed-point trees are
            // derived from their leaf counts.
            let mut blocks: Vec<(u64, u8, u64)> = Vec::new();
            let lv = |leaves: usize, addrs: &[u64], owner: u64, out: &mut Vec<(u64, u8, u64)>| {
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
            };
            lv(root_leaves, root_addrs, ROOT_TREE_OBJECTID, &mut blocks);
            lv(e_leaves, e_addrs, EXTENT_TREE_OBJECTID, &mut blocks);
            lv(f_leaves, f_addrs, FREE_SPACE_TREE_OBJECTID, &mut blocks);
            for t in others.iter().chain(std::iter::once(&chunk_tree)) {
                for (a, l) in t.blocks() {
                    blocks.push((a, l, t.owner));
                }
            }
            blocks.sort_unstable();
            let mut ext_items: Vec<Item> = Vec::with_capacity(blocks.len() + extents.len() + chunks.len());
            for &(a, l, owner) in &blocks {
                ext_items.push(Item::bytes(
                    Key::new(a, extent::METADATA_ITEM_KEY, u64::from(l)),
                    extent::metadata_item(GENERATION, owner),
                ));
            }
            for e in &extents {
                ext_items.push(Item::bytes(
                    Key::new(e.logical, extent::EXTENT_ITEM_KEY, e.disk_len),
                    extent::data_extent_item(GENERATION, e.root, e.ino, e.file_offset),
                ));
            }
            let mut fst_items: Vec<Item> = Vec::new();
            for (ci, c) in chunks.iter().enumerate() {
                // Both lists are sorted by address.
                let used_ranges: Vec<(u64, u64)> = if c.flags & chunk::BLOCK_GROUP_DATA != 0 {
                    let lo = extents.partition_point(|e| e.logical < c.logical);
                    let hi = extents.partition_point(|e| e.logical < c.end());
                    extents[lo..hi].iter().map(|e| (e.logical, e.disk_len)).collect()
                } else {
                    let lo = blocks.partition_point(|b| b.0 < c.logical);
                    let hi = blocks.partition_point(|b| b.0 < c.end());
                    blocks[lo..hi].iter().map(|b| (b.0, NODESIZE)).collect()
                };
                let used: u64 = if c.flags & chunk::BLOCK_GROUP_DATA != 0 {
                    data_used[ci]
                } else {
                    u64::try_from(used_ranges.len()).unwrap_or(0) * NODESIZE
                };
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
                fst_items.push(Item::bytes(
                    Key::new(c.logical, extent::FREE_SPACE_INFO_KEY, c.length),
                    extent::free_space_info(u32::try_from(free.len()).unwrap_or(u32::MAX)),
                ));
                for (s, l) in free {
                    fst_items.push(Item::bytes(Key::new(s, extent::FREE_SPACE_EXTENT_KEY, l), Vec::new()));
                }
            }
            let et = pack(EXTENT_TREE_OBJECTID, ext_items, e_leaves)?;
            let ft = pack(FREE_SPACE_TREE_OBJECTID, fst_items, f_leaves)?;
            if et.leaf_count() != e_leaves || ft.leaf_count() != f_leaves {
                e_leaves = e_leaves.max(et.leaf_count());
                f_leaves = f_leaves.max(ft.leaf_count());
                continue;
            }
            let mut et = et;
            let mut ft = ft;
            et.assign(e_addrs);
            ft.assign(f_addrs);
            let roots = RootAddrs::collect(&et, &ft, &others);
            let mut rt = pack(ROOT_TREE_OBJECTID, root_tree_items(&fss, &placement, &roots, default_id, time), 1)?;
            if rt.block_count() != root_count {
                return Err(err_plan("root tree size changed"));
            }
            rt.assign(root_addrs);
            break 'outer (rt, et, ft, others);
        }
        return Err(err_plan("extent tree fixed point did not converge"));
    };

    let bytes_used = data_used.iter().sum::<u64>()
        + u64::try_from(
            root_tree.block_count()
                + extent_tree.block_count()
                + fst_tree.block_count()
                + others.iter().map(PackedTree::block_count).sum::<usize>()
                + chunk_tree.block_count(),
        )
        .unwrap_or(0)
            * NODESIZE;
    let mut incompat = INCOMPAT_BASE;
    let inline_zstd = fss.iter().any(|fs| fs.files.iter().any(|f| matches!(f, FilePlan::Inline { zstd: true, .. })));
    if inline_zstd || extents.iter().any(|e| e.zstd.is_some()) {
        incompat |= INCOMPAT_COMPRESS_ZSTD;
    }
    if default_id != FS_TREE_OBJECTID {
        incompat |= INCOMPAT_DEFAULT_SUBVOL;
    }
    let mut all_trees = vec![root_tree, extent_tree, fst_tree];
    all_trees.extend(others);
    all_trees.push(chunk_tree);
    Ok(BtrfsLayout {
        fsid,
        chunk_uuid,
        csum: opts.csum,
        label,
        total_bytes,
        bytes_used,
        incompat,
        chunks,
        extents,
        trees: all_trees,
        dev_item,
        sys_chunk_array,
        spill,
    })
}

pub(crate) const COMPAT_RO_FLAGS: u64 = COMPAT_RO_FST;

/// Root addresses and levels of the trees the root tree points at.
#[derive(Default)]
struct RootAddrs {
    /// (objectid, bytenr, level, blocks)
    roots: Vec<(u64, u64, u8, u64)>,
}

impl RootAddrs {
    fn collect(et: &PackedTree, ft: &PackedTree, others: &[PackedTree]) -> Self {
        let mut roots = Vec::new();
        for t in std::iter::once(et).chain(std::iter::once(ft)).chain(others.iter()) {
            roots.push((t.owner, t.root_addr(), t.root_level(), u64::try_from(t.block_count()).unwrap_or(0)));
        }
        RootAddrs { roots }
    }
    fn get(&self, id: u64) -> (u64, u8, u64) {
        self.roots.iter().find(|r| r.0 == id).map_or((0, 0, 1), |r| (r.1, r.2, r.3))
    }
}

fn root_dir_items(inode: InodeItem) -> Vec<Item> {
    let mut r = Vec::new();
    items::push_inode_ref(&mut r, 0, b"..");
    vec![
        Item::bytes(Key::new(FIRST_FREE_OBJECTID, items::INODE_ITEM_KEY, 0), inode.encode()),
        Item::bytes(Key::new(FIRST_FREE_OBJECTID, items::INODE_REF_KEY, FIRST_FREE_OBJECTID), r),
    ]
}

fn root_tree_items(
    fss: &[Fs<'_>],
    placement: &[(usize, InodeId, Vec<u8>)],
    roots: &RootAddrs,
    default_id: u64,
    time: i64,
) -> Vec<Item> {
    let mut out = Vec::new();
    let root_item = |id: u64, dirid: u64, uuid: [u8; 16], fs_tree: bool, flags: u64, out: &mut Vec<Item>| {
        let (bytenr, level, blocks) = roots.get(id);
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
        out.push(Item::bytes(Key::new(id, items::ROOT_ITEM_KEY, 0), ri.encode(NODESIZE)));
    };
    for id in
        [EXTENT_TREE_OBJECTID, DEV_TREE_OBJECTID, CSUM_TREE_OBJECTID, UUID_TREE_OBJECTID, FREE_SPACE_TREE_OBJECTID]
    {
        root_item(id, 0, [0; 16], false, 0, &mut out);
    }
    root_item(DATA_RELOC_TREE_OBJECTID, FIRST_FREE_OBJECTID, [0; 16], true, 0, &mut out);
    for fs in fss {
        let flags = if fs.readonly { items::ROOT_SUBVOL_RDONLY } else { 0 };
        root_item(fs.id, FIRST_FREE_OBJECTID, fs.uuid, true, flags, &mut out);
    }
    // Subvolume back references: ROOT_REF in the parent, ROOT_BACKREF in the child.
    for (i, (parent, dir, name)) in placement.iter().enumerate() {
        let child = &fss[i + 1];
        let pfs = &fss[*parent];
        let dirpos = pfs.n.order.iter().position(|&d| d == *dir).unwrap_or(0);
        let dir_ino = FIRST_FREE_OBJECTID + dirpos as u64;
        let index = pfs.n.entries[dirpos].iter().position(|e| e.name == name.as_slice()).map_or(0, |k| k as u64 + 2);
        let payload = items::root_ref(dir_ino, index, name);
        out.push(Item::bytes(Key::new(pfs.id, items::ROOT_REF_KEY, child.id), payload.clone()));
        out.push(Item::bytes(Key::new(child.id, items::ROOT_BACKREF_KEY, pfs.id), payload));
    }
    // Root tree directory 6 with its "default" entry.
    let t = Timespec { sec: time, nsec: 0 };
    out.push(Item::bytes(
        Key::new(ROOT_TREE_DIR_OBJECTID, items::INODE_ITEM_KEY, 0),
        InodeItem {
            generation: GENERATION,
            nbytes: NODESIZE,
            nlink: 1,
            mode: 0o040755,
            time: t,
            ..InodeItem::default()
        }
        .encode(),
    ));
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

/// One fs tree, packed as its items are made: inode by inode (inode numbers increase, so
/// sorting each inode's items gives the whole tree in key order), straight into serialised
/// leaves.
fn fs_tree(
    fs: &mut Fs<'_>,
    ext_by_owner: &BTreeMap<(u64, u64), Vec<usize>>,
    extents: &[DataExtent],
) -> Result<PackedTree, BtrfsError> {
    let tree = fs.tree;
    let n = &fs.n;
    let files = &mut fs.files;
    let mut stream = LeafStream::new(fs.id);
    let mut out: Vec<Item> = Vec::new();
    for (pos, &id) in n.order.iter().enumerate() {
        out.clear();
        let ino = FIRST_FREE_OBJECTID + pos as u64;
        let inode = tree.inode(id);
        let mut it = InodeItem {
            generation: GENERATION,
            nlink: 1,
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            mode: u32::from(inode.mode()),
            time: ts(inode.meta.mtime),
            ..InodeItem::default()
        };
        let mut tail: Vec<Item> = Vec::new();
        match &inode.kind {
            Kind::Dir(_) => {
                it.size = n.entries[pos].iter().map(|e| 2 * e.name.len() as u64).sum();
            }
            Kind::File(fd) => {
                it.size = fd.size;
                match &mut files[pos] {
                    FilePlan::Inline { item, .. } => {
                        it.nbytes = fd.size;
                        tail.push(Item::bytes(Key::new(ino, items::EXTENT_DATA_KEY, 0), std::mem::take(item)));
                    }
                    FilePlan::Ranges(_) => {
                        if let Some(list) = ext_by_owner.get(&(fs.id, ino)) {
                            for &i in list {
                                let e = &extents[i];
                                it.nbytes =
                                    it.nbytes.checked_add(e.ram_len).ok_or_else(|| err_plan("nbytes overflow"))?;
                                tail.push(Item::bytes(
                                    Key::new(ino, items::EXTENT_DATA_KEY, e.file_offset),
                                    items::regular_extent(
                                        GENERATION,
                                        e.ram_len,
                                        if e.zstd.is_some() { items::COMPRESS_ZSTD } else { 0 },
                                        e.logical,
                                        e.disk_len,
                                        e.ram_len,
                                    ),
                                ));
                            }
                        }
                    }
                    FilePlan::None => {}
                }
            }
            Kind::Symlink(target) => {
                if target.len() > 4095 {
                    return Err(BtrfsError::SymlinkTooLong { path: n.path(pos), len: target.len() });
                }
                it.size = target.len() as u64;
                if !target.is_empty() {
                    it.nbytes = target.len() as u64;
                    tail.push(Item::bytes(
                        Key::new(ino, items::EXTENT_DATA_KEY, 0),
                        items::inline_extent(GENERATION, target.len() as u64, 0, target),
                    ));
                }
            }
            Kind::CharDev(r) | Kind::BlockDev(r) => it.rdev = kernel_rdev(*r),
            Kind::Fifo | Kind::Socket => {}
        }
        if !matches!(inode.kind, Kind::Dir(_)) {
            it.nlink = u32::try_from(n.refs[pos].len()).unwrap_or(u32::MAX);
        }
        out.push(Item::bytes(Key::new(ino, items::INODE_ITEM_KEY, 0), it.encode()));
        // Names: INODE_REF per parent, overflow into INODE_EXTREF.
        if pos == 0 {
            let mut r = Vec::new();
            items::push_inode_ref(&mut r, 0, b"..");
            out.push(Item::bytes(Key::new(ino, items::INODE_REF_KEY, ino), r));
        } else {
            let mut by_parent: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut extrefs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for &(parent, index, name) in &n.refs[pos] {
                let r = by_parent.entry(parent).or_default();
                if r.len() + items::INODE_REF_SIZE + name.len() <= MAX_ITEM_DATA {
                    // Fits the INODE_REF item of this parent.
                    items::push_inode_ref(r, index, name);
                } else {
                    let x = extrefs.entry(csum::extref_hash(parent, name)).or_default();
                    items::push_inode_extref(x, parent, index, name);
                }
            }
            for (parent, r) in by_parent {
                out.push(Item::bytes(Key::new(ino, items::INODE_REF_KEY, parent), r));
            }
            for (h, x) in extrefs {
                debug_assert!(x.len() >= items::INODE_EXTREF_SIZE);
                if x.len() > MAX_ITEM_DATA {
                    return Err(err_plan(format!("{}: extref hash collision overflow", n.path(pos))));
                }
                out.push(Item::bytes(Key::new(ino, items::INODE_EXTREF_KEY, h), x));
            }
        }
        // Xattrs.
        let mut xattrs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for x in &inode.meta.xattrs {
            if x.name.is_empty() || x.name.len() > 255 || x.name.len() + x.value.len() > MAX_XATTR {
                return Err(BtrfsError::XattrTooLarge { path: n.path(pos), name: show(&x.name) });
            }
            let v = xattrs.entry(csum::name_hash(&x.name)).or_default();
            items::push_dir_item(v, Key::new(0, 0, 0), GENERATION, items::FT_XATTR, &x.name, &x.value);
        }
        for (h, v) in xattrs {
            if v.len() > MAX_ITEM_DATA {
                return Err(BtrfsError::XattrTooLarge { path: n.path(pos), name: "(hash collision)".into() });
            }
            out.push(Item::bytes(Key::new(ino, items::XATTR_ITEM_KEY, h), v));
        }
        // Directory entries.
        if matches!(inode.kind, Kind::Dir(_)) {
            let mut by_hash: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for (k, e) in n.entries[pos].iter().enumerate() {
                let (loc, ty) = match e.target {
                    Target::Subvol(sid) => (Key::new(sid, items::ROOT_ITEM_KEY, 0), items::FT_DIR),
                    Target::Inode(cid) => {
                        (Key::new(child_ino(n, cid), items::INODE_ITEM_KEY, 0), file_type(&tree.inode(cid).kind))
                    }
                };
                let mut di = Vec::new();
                items::push_dir_item(&mut di, loc, GENERATION, ty, e.name, &[]);
                by_hash.entry(csum::name_hash(e.name)).or_default().extend_from_slice(&di);
                out.push(Item::bytes(Key::new(ino, items::DIR_INDEX_KEY, k as u64 + 2), di));
            }
            for (h, v) in by_hash {
                if v.len() > MAX_ITEM_DATA {
                    return Err(err_plan(format!("{}: directory hash collision overflow", n.path(pos))));
                }
                out.push(Item::bytes(Key::new(ino, items::DIR_ITEM_KEY, h), v));
            }
        }
        out.extend(tail);
        out.sort_unstable_by_key(|it| it.key);
        for it in &out {
            let Payload::Bytes(data) = &it.data else { return Err(err_plan("checksum item in an fs tree")) };
            stream.push(it.key, data).map_err(BtrfsError::Plan)?;
        }
    }
    Ok(stream.finish())
}

/// `BTRFS_MAX_XATTR_SIZE` for 16 KiB nodes.
const MAX_XATTR: usize = MAX_ITEM_DATA - items::DIR_ITEM_SIZE;

fn child_ino(n: &Numbered<'_>, id: InodeId) -> u64 {
    // Filled by `number`: every reachable inode has a position.
    n.pos_of(id).map_or(0, |p| FIRST_FREE_OBJECTID + p as u64)
}

fn file_type(k: &Kind) -> u8 {
    match k {
        Kind::Dir(_) => items::FT_DIR,
        Kind::File(_) => items::FT_REG_FILE,
        Kind::Symlink(_) => items::FT_SYMLINK,
        Kind::CharDev(_) => items::FT_CHRDEV,
        Kind::BlockDev(_) => items::FT_BLKDEV,
        Kind::Fifo => items::FT_FIFO,
        Kind::Socket => items::FT_SOCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    #[test]
    fn rdev_is_the_kernel_encoding() {
        assert_eq!(kernel_rdev(makedev(1, 3)), (1 << 20) | 3);
        assert_eq!(kernel_rdev(makedev(259, 70_000)), (259 << 20) | 70_000);
        assert_eq!(kernel_rdev(0), 0);
    }

    #[test]
    fn chunks_of_splits_at_128k() {
        let v: Vec<_> = chunks_of((4096, 300_000)).collect();
        assert_eq!(v, vec![(4096, 131_072), (135_168, 131_072), (266_240, 37_856)]);
    }

    #[test]
    fn data_alloc_skips_mirror_and_chunk_ends() {
        let mut a = DataAlloc { cursor: 64 * MIB - 8192 };
        assert_eq!(a.take(100_000, false), (64 * MIB - 8192, 8192));
        assert_eq!(a.take(100_000, false).0, 64 * MIB + STRIPE);
        let mut b = DataAlloc { cursor: DATA_START + DATA_CHUNK_MAX - 4096 };
        assert_eq!(b.take(8192, true).0, DATA_START + DATA_CHUNK_MAX, "whole extents never cross a chunk");
    }

    #[test]
    fn pack_respects_leaf_capacity_and_min_leaves() {
        let items: Vec<Item> = (0..2000u64).map(|i| Item::bytes(Key::new(i, 1, 0), vec![0u8; 100])).collect();
        let t = PackedTree::pack(5, items.clone(), 1).unwrap();
        // 125 bytes per item: 130 per leaf.
        assert_eq!(t.leaf_count(), 2000usize.div_ceil(130));
        assert_eq!(t.root_level(), 1);
        let t = PackedTree::pack(5, items, 40).unwrap();
        assert_eq!(t.leaf_count(), 40);
        let dup = vec![Item::bytes(Key::new(1, 1, 0), vec![]), Item::bytes(Key::new(1, 1, 0), vec![])];
        assert!(PackedTree::pack(5, dup, 1).is_err());
    }
}
