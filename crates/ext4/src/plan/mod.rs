//! The planner: a pure function from a tree and options to a complete layout. Every inode
//! number, block, extent and directory block is decided here, in a deterministic order:
//! inodes in depth-first pre-order over byte-sorted names (root 2, lost+found 11, then 12..),
//! fixed metadata per flex group, the journal, then each inode's blocks in inode order.
//!
//! The stages, one module each, run in this order:
//! 1. [`numbering`]: inode numbers for the tree's entries;
//! 2. [`geometry`] and [`fixed`]: block and group counts, inode table size, then the superblock
//!    copies, group descriptors, bitmaps and inode tables; what is left goes to an [`alloc`]
//!    cursor;
//! 3. [`journal_inode`]: the journal (inode 8);
//! 4. the other inodes in inode order, per kind: [`directory`], [`regular`] files, [`special`]
//!    (symlinks, devices, fifos, sockets), then each inode's [`xattrs`];
//! 5. [`finish`]: the used block map, per-group free counts and flags, the superblock fields.
//!
//! [`min_size`] searches the smallest size for which all of this succeeds.

mod alloc;
mod directory;
mod finish;
mod fixed;
mod geometry;
mod journal_inode;
mod min_size;
mod numbering;
mod regular;
mod special;
mod xattrs;

use mkdisk_tree::{InodeId, Kind, Tree};

use crate::dir::DirEnt;
use crate::extent::Extent;
use crate::group_desc::GroupDesc;
use crate::inode::{clamp_time, InodeFields};
use crate::superblock::SbFields;
use crate::{csum, Ext4Error, Ext4Options, BS};
use alloc::Alloc;
use numbering::Numbering;

pub use min_size::min_size;

/// Inodes per block of the inode table.
const INODES_PER_BLOCK: u32 = 16;
const _: () = assert!(INODES_PER_BLOCK as usize == crate::BLOCK_SIZE / crate::inode::INODE_SIZE);
/// Groups per flex group.
const FLEX: u32 = 1 << crate::superblock::LOG_GROUPS_PER_FLEX;
/// First non-reserved inode.
const FIRST_INO: u32 = 11;
/// The journal's inode.
const JOURNAL_INO: u32 = 8;

/// A directory block as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirBlock {
    /// A linear block (or htree leaf).
    Leaf(Vec<DirEnt>),
    /// An htree root: parent inode, indirect levels, `(hash, logical block)` entries.
    Root { parent: u32, levels: u8, entries: Vec<(u32, u32)> },
    /// An htree interior node.
    Node(Vec<(u32, u32)>),
}

/// What an inode's blocks hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Nothing beyond the inode itself (reserved, special files, fast symlinks, empty files).
    Empty,
    /// Directory blocks at their physical block numbers.
    Dir(Vec<(u64, DirBlock)>),
    /// A slow symlink's block.
    Symlink { pblk: u64, target: Vec<u8> },
    /// File data: the tree inode and its extents.
    File { tree: InodeId, extents: Vec<Extent> },
    /// The journal: its extents (only the first block is written).
    Journal { extents: Vec<Extent> },
}

/// One planned inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PInode {
    pub fields: InodeFields,
    pub body: Body,
    /// Extent tree blocks (already checksummed).
    pub ext_blocks: Vec<(u64, Vec<u8>)>,
    /// Xattr block number and bytes (without checksum).
    pub xattr_block: Option<(u64, Vec<u8>)>,
    /// Whether the inode is a directory (for `bg_used_dirs_count`).
    pub is_dir: bool,
}

impl PInode {
    /// An unused inode.
    fn unused() -> Self {
        PInode {
            fields: InodeFields::default(),
            body: Body::Empty,
            ext_blocks: Vec::new(),
            xattr_block: None,
            is_dir: false,
        }
    }
}

/// The complete plan of one ext4 filesystem, produced by [`plan`] and executed by
/// [`crate::write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Layout {
    pub(crate) seed: u32,
    pub(crate) blocks_count: u64,
    pub(crate) ipg: u32,
    pub(crate) itb: u64,
    pub(crate) desc_blocks: u64,
    pub(crate) groups: Vec<GroupDesc>,
    pub(crate) used: Vec<(u64, u64)>,
    /// Inodes 1..=max, index = ino - 1.
    pub(crate) inodes: Vec<PInode>,
    pub(crate) sb: SbFields,
    pub(crate) assume_zeroed: bool,
    /// Paths of the entries whose mtime was clamped, sorted.
    pub(crate) clamped_times: Vec<String>,
}

impl Ext4Layout {
    /// `s_blocks_count`.
    #[must_use]
    pub fn blocks_count(&self) -> u64 {
        self.blocks_count
    }
    /// Bytes the filesystem occupies (`s_blocks_count × 4096`), at most the requested size.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.blocks_count * BS
    }
    /// `s_inodes_count`.
    #[must_use]
    pub fn inodes_count(&self) -> u32 {
        self.sb.inodes_count
    }
    /// Highest used inode number.
    #[must_use]
    pub fn used_inodes(&self) -> u32 {
        u32::try_from(self.inodes.len()).expect("inode numbers are u32 (numbering checks)")
    }
    /// `s_free_blocks_count`.
    #[must_use]
    pub fn free_blocks(&self) -> u64 {
        self.sb.free_blocks
    }
    /// The group descriptors (without bitmap checksums, which `write` computes).
    #[must_use]
    pub fn groups(&self) -> &[GroupDesc] {
        &self.groups
    }
    /// Sorted paths of the entries whose mtime lies outside
    /// [`crate::TIME_MIN`]`..=`[`crate::TIME_MAX`] and was clamped to the nearer bound, for the
    /// caller to warn about. Rendered as in this crate's errors (`/dir/file`, `/` for the root);
    /// a hard-linked file is named once, by its first path in tree walk order.
    #[must_use]
    pub fn clamped_times(&self) -> &[String] {
        &self.clamped_times
    }
    /// Byte ranges `(offset, len)` of the filesystem that must read as zero but that
    /// [`write`](crate::write) leaves unwritten (holes of a fresh file): with
    /// [`assume_zeroed`](crate::Ext4Options::assume_zeroed), the journal after its superblock.
    /// A copy onto a disk with old data must write these zeros (a bmap maps them): a stale
    /// journal block carrying this filesystem's UUID and the next sequence number would be
    /// replayed after a crash. Sorted.
    #[must_use]
    pub fn zero_ranges(&self) -> Vec<(u64, u64)> {
        let journal = self.inodes.get(JOURNAL_INO as usize - 1).map(|p| &p.body);
        match journal {
            Some(Body::Journal { extents }) if self.assume_zeroed => {
                // The journal superblock (logical block 0) itself is written.
                let skip = |e: &Extent| u64::from(e.lblk == 0);
                let mut v: Vec<(u64, u64)> = extents
                    .iter()
                    .map(|e| ((e.pblk + skip(e)) * BS, (u64::from(e.len) - skip(e).min(u64::from(e.len))) * BS))
                    .filter(|r| r.1 > 0)
                    .collect();
                v.sort_unstable();
                v
            }
            _ => Vec::new(),
        }
    }
}

/// What the options fix besides the size, checked once and shared by the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ident {
    /// `s_uuid`.
    uuid: [u8; 16],
    /// `s_hash_seed`.
    hash_seed: [u8; 16],
    /// `s_volume_name`, zero-padded.
    label: [u8; 16],
    /// The metadata checksum seed (crc32c of the uuid).
    seed: u32,
    /// [`Ext4Options::timestamp`], within `0..=TIME_MAX`.
    timestamp: i64,
}

impl Ident {
    /// Check the options that do not depend on the size.
    fn new(opts: &Ext4Options) -> Result<Self, Ext4Error> {
        // Superblock times are unsigned (32 bits + an 8-bit `_hi`), and the same timestamp
        // goes into the journal and lost+found inodes, which end at TIME_MAX.
        if !(0..=crate::TIME_MAX).contains(&opts.timestamp) {
            return Err(Ext4Error::BadTimestamp { timestamp: opts.timestamp });
        }
        if opts.inode_size != 256 {
            return Err(Ext4Error::BadArgument { arg: format!("-I {}", opts.inode_size), reason: "only 256".into() });
        }
        let mut label = [0u8; 16];
        if let Some(l) = &opts.label {
            if l.len() > 16 {
                return Err(Ext4Error::BadArgument {
                    arg: format!("-L {l}"),
                    reason: "label longer than 16 bytes".into(),
                });
            }
            label[..l.len()].copy_from_slice(l.as_bytes());
        }
        let uuid = *opts.uuid.as_bytes();
        Ok(Ident {
            uuid,
            hash_seed: *opts.hash_seed.as_bytes(),
            label,
            seed: csum::fs_seed(&uuid),
            timestamp: opts.timestamp,
        })
    }
}

/// Path of a tree inode as errors name it.
fn path_of(tree: &Tree, id: InodeId) -> String {
    tree.paths().get(id.index()).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default()
}

/// Plan a filesystem for `tree`.
///
/// # Errors
/// [`Ext4Error::DoesNotFit`] when the content does not fit (with the bytes needed),
/// [`Ext4Error::TooManyInodes`] when `-N` is below the tree's inodes or above what the size
/// holds, a name is longer than 255 bytes, a
/// symlink target is empty or ≥ 4096 bytes, a device number is beyond ext4's 12-bit major and
/// 20-bit minor, a directory needs more than a two-level htree, xattrs do not fit one block, or
/// an option is invalid.
pub fn plan(tree: &Tree, opts: &Ext4Options) -> Result<Ext4Layout, Ext4Error> {
    let ident = Ident::new(opts)?;
    let num = numbering::number(tree)?;
    let max_ino = num.max_ino();
    let geo = geometry::geometry(opts, max_ino)?;
    let (groups, mut al) = fixed::place(&geo)?;
    let mut inodes: Vec<PInode> = (0..max_ino).map(|_| PInode::unused()).collect();
    let journal = journal_inode::plan(&mut inodes[JOURNAL_INO as usize - 1], &geo, &ident, &mut al)?;
    let mut clamped: Vec<InodeId> = Vec::new();
    for (ino, p) in (1..=max_ino).zip(inodes.iter_mut()) {
        plan_inode(tree, &num, &ident, ino, p, &mut al, &mut clamped)?;
    }
    if al.overflow > 0 {
        let used: u64 = al.used.iter().map(|r| r.1).sum();
        return Err(Ext4Error::DoesNotFit {
            needed_bytes: used.saturating_add(al.overflow).saturating_mul(BS),
            available_bytes: geo.blocks_count * BS,
        });
    }
    let used = finish::merge_used(std::mem::take(&mut al.used))?;
    let (groups, totals) = finish::groups(&geo, groups, &used, &inodes);
    let sb = finish::superblock(&geo, &totals, &ident, opts.reserved_percent, journal);
    Ok(Ext4Layout {
        seed: ident.seed,
        blocks_count: geo.blocks_count,
        ipg: geo.ipg,
        itb: geo.itb,
        desc_blocks: geo.desc_blocks,
        groups,
        used,
        inodes,
        sb,
        assume_zeroed: opts.assume_zeroed,
        clamped_times: clamped_paths(tree, &clamped),
    })
}

/// Plan inode `ino` (not the journal): our own lost+found, or the tree inode numbered `ino`,
/// by kind, then its xattrs. Adds the tree inode to `clamped` when its time was clamped.
fn plan_inode(
    tree: &Tree,
    num: &Numbering,
    ident: &Ident,
    ino: u32,
    p: &mut PInode,
    al: &mut Alloc,
    clamped: &mut Vec<InodeId>,
) -> Result<(), Ext4Error> {
    let Some(t) = num.owner_of(ino) else {
        if ino == FIRST_INO {
            directory::lost_found(p, ident, al)?;
        }
        return Ok(());
    };
    let node = tree.inode(t);
    let path = || path_of(tree, t);
    let (time_sec, time_nsec, was_clamped) = clamp_time(node.meta.mtime.sec, node.meta.mtime.nsec);
    // A link group split over several inodes is listed once.
    if was_clamped && num.first_ino(t) == ino {
        clamped.push(t);
    }
    p.fields = InodeFields {
        mode: node.mode(),
        uid: node.meta.uid,
        gid: node.meta.gid,
        time_sec,
        time_nsec,
        ..InodeFields::default()
    };
    let xattr_block = xattrs::in_inode(p, &node.meta.xattrs, &path)?;
    match &node.kind {
        Kind::Dir(d) => directory::plan(tree, num, ident, ino, t, d, p, al)?,
        Kind::File(fd) => {
            p.fields.links = num.links(ino);
            regular::plan(p, ident.seed, ino, t, fd, al, &path)?;
        }
        Kind::Symlink(target) => {
            p.fields.links = num.links(ino);
            special::symlink(p, ident.seed, ino, target, al, &path)?;
        }
        Kind::CharDev(rdev) | Kind::BlockDev(rdev) => {
            p.fields.links = num.links(ino);
            special::device(p, *rdev, &path)?;
        }
        Kind::Fifo | Kind::Socket => p.fields.links = num.links(ino),
    }
    if let Some(b) = xattr_block {
        xattrs::place_block(p, b, al);
    }
    Ok(())
}

/// Sorted paths of `ids` (computing the path table only when there is something to name).
fn clamped_paths(tree: &Tree, ids: &[InodeId]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    let paths = tree.paths();
    let mut out: Vec<String> = ids.iter().map(|id| String::from_utf8_lossy(&paths[id.index()]).into_owned()).collect();
    out.sort_unstable();
    out
}
