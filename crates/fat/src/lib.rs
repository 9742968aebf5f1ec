//! mkdisk-fat: a native, deterministic FAT32 (and small-volume FAT16) writer for the EFI
//! System Partition.
//!
//! It turns a [`mkdisk_tree::Tree`] (the files under a `vfat` partition's mount point) into
//! a FAT volume written into a [`mkdisk_tree::Region`] (exactly the partition), in two
//! phases:
//!
//! 1. [`plan`] is pure: it picks the geometry (FAT type, cluster size, FAT size) the way
//!    `mkfs.fat` does, assigns every 8.3 short name, encodes every directory (long-name
//!    entries, `.`/`..`, zero tail) and allocates every cluster. Directories come first
//!    (root at cluster 2, then depth-first pre-order), then file data in the same order,
//!    every chain contiguous.
//! 2. [`write`] checks the plan (chains sorted, non-overlapping, in bounds), copies file
//!    data in parallel with rayon into disjoint cluster runs, then writes both FATs in full,
//!    the directories, the boot sector, FSInfo and their backups. No byte of the output
//!    depends on the thread count, the clock or the host.
//!
//! Choices (see `docs/fat32.md`):
//! - **FAT type**: FAT32 whenever the volume can hold the FAT32 minimum of 65,525 clusters
//!   (about 33 MiB); below that FAT16 (`fat_type: None`). Forcing FAT32 on a volume that is
//!   too small is an error ([`FatError::Fat32TooSmall`]); UEFI firmware would not mount it.
//! - **Cluster size**: Microsoft's/`mkfs.fat`'s FAT32 table by volume size (512 B up to
//!   260 MiB, 4 KiB up to 8 GiB, 8/16/32 KiB above), halved while the cluster count would be
//!   below the FAT32 minimum; FAT16 starts at 2 KiB and doubles while there are too many
//!   clusters, as `mkfs.fat` does.
//! - **Names**: a name that is already a valid upper-case 8.3 name is stored as a short
//!   entry only; every other name gets long-name (LFN) entries plus a deterministic short
//!   name (`BASIS~N`, N counted up until unique in the directory; exact 8.3 names are
//!   reserved first so a generated name never takes one). Names that are not UTF-8, contain
//!   characters FAT forbids (`" * / : < > ? \ |`, control characters), end in a dot or a
//!   space, or are longer than 255 UTF-16 units are errors, as are two names in one
//!   directory that differ only in case.
//! - **Hard links** are copied: every entry naming a file gets its own clusters (FAT has no
//!   links; this is what users expect on an ESP).
//! - **Symlinks, devices, FIFOs and sockets** are errors naming the path.
//! - **Timestamps**: write, creation and access times all come from the inode's mtime in
//!   UTC, clamped to 1980-01-01..2107-12-31 23:59:58, seconds rounded down to even.
//! - **Holes** in sparse source files are written as zeros (FAT has no holes, so they are
//!   file content); the slack after each file's last byte up to the end of its cluster is
//!   zeroed too, so a dirty target never leaks into a file.

mod boot_sector;
mod dir_entry;
mod fat_table;
mod fsinfo;
mod geometry;
mod names;
mod plan;
mod write;

use mkdisk_tree::ImageError;

pub use geometry::Geometry;
pub use plan::{plan, FatLayout};
pub use write::write;

/// Bytes per sector; the only size this writer produces.
pub const SECTOR_BYTES: u32 = 512;

/// The FAT variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FatType {
    /// 16-bit FAT with a fixed root directory (volumes below the FAT32 minimum).
    Fat16,
    /// 32-bit FAT (what an ESP should be).
    Fat32,
}

/// What to build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FatOptions {
    /// Volume (partition) size in bytes; rounded down to whole sectors.
    pub size_bytes: u64,
    /// `BS_VolID`, the serial shown as `XXXX-XXXX` by blkid.
    pub volume_id: u32,
    /// Volume label (≤ 11 ASCII characters, upper-cased), or `None` for "NO NAME".
    pub label: Option<String>,
    /// `BPB_HiddSec`: the partition's start LBA (0 for a standalone image).
    pub hidden_sectors: u32,
    /// Force a FAT type; `None` = FAT32 when the volume can hold it, else FAT16.
    pub fat_type: Option<FatType>,
}

impl FatOptions {
    /// Options for a volume of `size_bytes` with volume id 0, no label, no hidden sectors and
    /// an automatic FAT type.
    #[must_use]
    pub fn new(size_bytes: u64) -> Self {
        FatOptions { size_bytes, ..FatOptions::default() }
    }
}

/// Why a FAT volume cannot be planned or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FatError {
    /// A name FAT cannot hold.
    #[error("{path}: name cannot be stored on FAT: {reason}")]
    BadName {
        /// The path in the tree.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two names in one directory that differ only in case.
    #[error("{path}: collides with {other} (FAT names are case-insensitive)")]
    CaseCollision {
        /// The later path.
        path: String,
        /// The earlier path with the same name up to case.
        other: String,
    },
    /// A symlink, device, FIFO or socket.
    #[error("{path}: a {kind} cannot be stored on FAT")]
    Unsupported {
        /// The path in the tree.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A file of 4 GiB or more.
    #[error("{path}: {size} bytes is more than a FAT file can hold (4 GiB - 1)")]
    FileTooLarge {
        /// The path in the tree.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A directory with more than 65,536 entries (including long-name entries).
    #[error("{path}: directory needs {entries} entries, more than FAT allows ({max})")]
    DirectoryTooLarge {
        /// The path in the tree.
        path: String,
        /// Entries needed.
        entries: u64,
        /// The limit.
        max: u64,
    },
    /// The content does not fit into the volume.
    #[error("{path}: does not fit: needs {needed} more clusters of {cluster_bytes} bytes, {free} left ({size_bytes}-byte volume)")]
    NoSpace {
        /// The first path that does not fit.
        path: String,
        /// Clusters it needs.
        needed: u64,
        /// Clusters still free when it was reached.
        free: u64,
        /// Cluster size.
        cluster_bytes: u32,
        /// Volume size.
        size_bytes: u64,
    },
    /// The volume is too small for any supported FAT type.
    #[error("a {size_bytes}-byte volume is too small for {what}")]
    VolumeTooSmall {
        /// Volume size.
        size_bytes: u64,
        /// What it is too small for.
        what: &'static str,
    },
    /// FAT32 was forced on a volume below the 65,525-cluster minimum.
    #[error("a {size_bytes}-byte volume has only {clusters} clusters even with 512-byte clusters; FAT32 needs at least 65525 (UEFI firmware rejects less): use FAT16 or a larger partition")]
    Fat32TooSmall {
        /// Volume size.
        size_bytes: u64,
        /// Best cluster count reachable.
        clusters: u64,
    },
    /// The volume is too large for the FAT type.
    #[error("a {size_bytes}-byte volume is too large for {what}")]
    VolumeTooLarge {
        /// Volume size.
        size_bytes: u64,
        /// What it is too large for.
        what: &'static str,
    },
    /// An invalid volume label.
    #[error("volume label {label:?}: {reason}")]
    BadLabel {
        /// The label.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tree is malformed (a directory reachable twice, a dangling inode).
    #[error("{path}: malformed tree: {reason}")]
    BadTree {
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The layout does not match the tree or region it is written with (a caller bug).
    #[error("invalid layout: {reason}")]
    InvalidLayout {
        /// What is wrong.
        reason: String,
    },
    /// Writing the image or reading a source file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path in the tree (or the structure being written).
        path: String,
        /// The underlying error.
        source: ImageError,
    },
}

/// Store `v` little-endian at `buf[off..off+2]`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Store `v` little-endian at `buf[off..off+4]`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
