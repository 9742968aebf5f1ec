//! mkdisk-ext4: builds a complete ext4 filesystem from a [`mkdisk_tree::Tree`] in one pass.
//!
//! [`plan`] is a pure function that decides every inode number, block, extent and offset
//! (4 KiB blocks, 256-byte inodes, features `has_journal ext_attr dir_index filetype extent
//! 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum`);
//! [`min_size`] is the smallest size, in whole MiB, at which it succeeds;
//! [`write`] checks the plan, copies file data in parallel (rayon, positional writes), then
//! writes directory, extent and xattr blocks, inode tables, bitmaps, group descriptors and the
//! superblocks (primary last). The result is reproducible: it depends only on the tree and the
//! options, never on the clock, randomness or thread scheduling.
//!
//! The crate sits between `mkdisk-tree` (below) and the `mkdisk` binary (above); it does not
//! depend on any other writer. See `docs/ext4.md` for the on-disk reference.

#![deny(clippy::too_many_lines)]
#![deny(clippy::cast_possible_truncation)]

mod bitmap;
mod csum;
mod dir;
mod extent;
mod group_desc;
mod htree;
mod inode;
mod journal;
mod le;
mod plan;
mod superblock;
mod write;
mod xattr;

use std::path::PathBuf;

pub use group_desc::GroupDesc;
pub use plan::{min_size, plan, Ext4Layout};
use uuid::Uuid;
pub use write::write;

/// Filesystem block size in bytes.
pub const BLOCK_SIZE: usize = 4096;
/// Block size as `u64`.
pub(crate) const BS: u64 = BLOCK_SIZE as u64;
/// `s_blocks_per_group`.
pub(crate) const BLOCKS_PER_GROUP: u64 = 32768;
/// `EXT2_LINK_MAX`.
pub(crate) const LINK_MAX: u32 = 65000;

/// Earliest inode time ext4 can store, in seconds since the Unix epoch: `-2^31`,
/// 1901-12-13T20:45:52Z (the kernel's `EXT4_EXTRA_TIMESTAMP_MIN`). A 32-bit signed `i_*time`
/// plus two epoch bits in `i_*time_extra` reach from here to [`TIME_MAX`]. [`plan`] clamps an
/// earlier mtime to this bound (nanoseconds 0, as the kernel's `timestamp_truncate` does) and
/// lists the entry in [`Ext4Layout::clamped_times`].
pub const TIME_MIN: i64 = i32::MIN as i64;
/// Latest inode time ext4 can store: `2^31 - 1 + 3 * 2^32` = `0x3_7FFF_FFFF`,
/// 2446-05-10T22:38:55Z (the kernel's `EXT4_EXTRA_TIMESTAMP_MAX`). [`plan`] clamps a later
/// mtime to this bound (nanoseconds 0) and lists the entry in [`Ext4Layout::clamped_times`].
pub const TIME_MAX: i64 = i32::MAX as i64 + 3 * (1 << 32);
const _: () = assert!(TIME_MIN == -0x8000_0000 && TIME_MAX == 0x3_7FFF_FFFF);

/// Options for one ext4 filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ext4Options {
    /// Size of the filesystem (the partition) in bytes; rounded down to whole blocks.
    pub size_bytes: u64,
    /// `s_uuid`.
    pub uuid: Uuid,
    /// `s_hash_seed` for htree directory hashes.
    pub hash_seed: Uuid,
    /// `s_volume_name` (at most 16 bytes).
    pub label: Option<String>,
    /// Build epoch (seconds) for `s_mkfs_time`, `s_wtime`, `s_lastcheck`, journal and
    /// lost+found times. Must lie in `0..=`[`TIME_MAX`] (the superblock fields are unsigned,
    /// the inode times end at [`TIME_MAX`]); [`plan`] refuses anything else with
    /// [`Ext4Error::BadTimestamp`].
    pub timestamp: i64,
    /// Total inode count (`-N`); by default sized from the tree plus headroom.
    pub inode_count: Option<u32>,
    /// Reserved blocks percentage (`-m`), 0..=50.
    pub reserved_percent: u8,
    /// Inode size (`-I`); only 256 is supported.
    pub inode_size: u16,
    /// The target is known to read as zeros where nothing is written (a fresh sparse file):
    /// then the journal's blocks after its superblock are not written, and
    /// [`Ext4Layout::zero_ranges`] lists them for a copy onto a disk with old data (a bmap).
    /// When false, the journal is zeroed explicitly. Never-used inode tables are never written
    /// nor flagged zeroed, in either mode.
    pub assume_zeroed: bool,
}

impl Ext4Options {
    /// Defaults: hash seed = `uuid`, no label, timestamp 0, inode count from the tree,
    /// 5 % reserved, 256-byte inodes, zeroed target.
    #[must_use]
    pub fn new(size_bytes: u64, uuid: Uuid) -> Self {
        Ext4Options {
            size_bytes,
            uuid,
            hash_seed: uuid,
            label: None,
            timestamp: 0,
            inode_count: None,
            reserved_percent: 5,
            inode_size: 256,
            assume_zeroed: true,
        }
    }

    /// Apply mke2fs-style extra arguments: `-L label`, `-N inodes`, `-m percent`, `-I size`
    /// (also in the attached forms `-Lfoo`).
    ///
    /// # Errors
    /// [`Ext4Error::BadArgument`] for anything else, a missing value, or a bad value.
    pub fn apply_extra_args(&mut self, args: &[String]) -> Result<(), Ext4Error> {
        let bad = |arg: &str, reason: &str| Ext4Error::BadArgument { arg: arg.to_string(), reason: reason.to_string() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, attached) = match a.as_str() {
                s if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") => (&s[..2], Some(&s[2..])),
                s => (s, None),
            };
            if !matches!(flag, "-L" | "-N" | "-m" | "-I") {
                return Err(bad(a, "unsupported ext4 option (supported: -L, -N, -m, -I)"));
            }
            let value = match attached {
                Some(v) => v.to_string(),
                None => it.next().ok_or_else(|| bad(a, "missing value"))?.clone(),
            };
            match flag {
                "-L" => {
                    if value.len() > 16 {
                        return Err(bad(a, "label longer than 16 bytes"));
                    }
                    self.label = Some(value);
                }
                "-N" => {
                    self.inode_count = Some(value.parse().map_err(|_| bad(a, "not an inode count"))?);
                }
                "-m" => {
                    let m: u8 = value.parse().map_err(|_| bad(a, "not a percentage"))?;
                    if m > 50 {
                        return Err(bad(a, "reserved percentage above 50"));
                    }
                    self.reserved_percent = m;
                }
                _ => {
                    let s: u16 = value.parse().map_err(|_| bad(a, "not an inode size"))?;
                    if s != 256 {
                        return Err(bad(a, "only 256-byte inodes are supported"));
                    }
                    self.inode_size = s;
                }
            }
        }
        Ok(())
    }
}

/// Errors from planning or writing an ext4 filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    /// The content (data, metadata, or the tree's inodes) does not fit in the filesystem size:
    /// the one error that a larger size mends (see [`min_size`]).
    #[error("ext4: content does not fit: needs {needed_bytes} bytes, the filesystem has {available_bytes}")]
    DoesNotFit {
        /// Bytes needed (metadata + data).
        needed_bytes: u64,
        /// Size of the filesystem.
        available_bytes: u64,
    },
    /// `-N` is below the inodes the tree needs, or above what the size holds.
    #[error("ext4: {needed} inodes needed, but {reason}")]
    TooManyInodes {
        /// Inodes the tree needs.
        needed: u64,
        /// Why they cannot be had.
        reason: String,
    },
    /// A name longer than 255 bytes.
    #[error("ext4: {path}: name is {len} bytes, longer than 255")]
    NameTooLong {
        /// Path of the entry.
        path: String,
        /// Name length.
        len: usize,
    },
    /// A symlink target that ext4 cannot store (empty or ≥ 4096 bytes).
    #[error("ext4: {path}: symlink target of {len} bytes is not storable (1..=4095)")]
    BadSymlink {
        /// Path of the link.
        path: String,
        /// Target length.
        len: usize,
    },
    /// A device number that ext4 cannot store: a major of 4096 or more, or a minor of 2^20 or
    /// more (the kernel's `new_encode_dev`).
    #[error("ext4: {path}: device {major}:{minor} is not storable (major < 4096, minor < 1048576)")]
    BadDevice {
        /// Path of the device node.
        path: String,
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// A directory too large for a two-level htree.
    #[error("ext4: {path}: directory too large ({leaves} leaf blocks)")]
    DirectoryTooLarge {
        /// Path of the directory.
        path: String,
        /// Leaf blocks it would need.
        leaves: u64,
    },
    /// A file too large or too fragmented for its extent tree.
    #[error("ext4: {path}: {reason}")]
    FileTooLarge {
        /// Path of the file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Extended attributes that cannot be stored.
    #[error("ext4: {path}: {reason}")]
    Xattr {
        /// Path of the inode.
        path: String,
        /// Why.
        reason: String,
    },
    /// The root of the tree has a `lost+found` that is not a directory.
    #[error("ext4: /lost+found exists and is not a directory")]
    LostFoundNotDir,
    /// A mke2fs option that cannot be applied.
    #[error("ext4: extra argument {arg:?}: {reason}")]
    BadArgument {
        /// The argument.
        arg: String,
        /// Why it was rejected.
        reason: String,
    },
    /// [`Ext4Options::timestamp`] outside `0..=`[`TIME_MAX`].
    #[error(
        "ext4: filesystem timestamp {timestamp} is outside the range ext4 can store \
         (0..=15032385535, 1970-01-01T00:00:00Z to 2446-05-10T22:38:55Z)"
    )]
    BadTimestamp {
        /// The timestamp, in seconds since the Unix epoch.
        timestamp: i64,
    },
    /// The plan is inconsistent (a bug), detected before writing.
    #[error("ext4: invalid plan: {0}")]
    BadPlan(String),
    /// A source file could not be read or the image could not be written.
    #[error("ext4: {0}")]
    Image(#[from] mkdisk_tree::ImageError),
    /// A source file is unreadable.
    #[error("ext4: reading {path}: {source}")]
    Source {
        /// Host path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}
