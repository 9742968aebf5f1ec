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
//! 2. [`write()`] checks the plan (chains sorted, non-overlapping, in bounds), copies file
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
//!
//! Sizing: [`min_size`] finds the smallest whole-MiB volume a tree fits in;
//! [`FatOptions::apply_extra_args`] takes the `mkfs.vfat` arguments disko layouts pass
//! (`-n`, `-i`, `-F`); [`volume_id_from_uuid`] and [`format_volume_id`] give the volume
//! serial the way systemd-repart derives it and blkid prints it.

#![deny(clippy::cast_possible_truncation)]
#![deny(clippy::too_many_lines)]

mod boot_sector;
mod dir_entry;
mod fat_table;
mod fit;
mod fsinfo;
mod geometry;
mod names;
mod plan;
mod write;

use mkdisk_tree::ImageError;

pub use fit::min_size;
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

    /// Apply `mkfs.vfat`-style extra arguments (a disko `extraArgs` list): `-n LABEL`,
    /// `-i VOLID` (hexadecimal, as `mkfs.vfat -i`), `-F 16|32`. Each flag takes its value
    /// as the next argument; later flags override earlier ones. The label is checked by
    /// [`plan`], not here.
    ///
    /// # Errors
    /// [`FatError::ExtraArgMissingValue`] for a flag without a value,
    /// [`FatError::BadVolumeId`] for an `-i` value that is not hexadecimal `u32`,
    /// [`FatError::BadFatType`] for an `-F` other than 16 or 32, and
    /// [`FatError::UnsupportedExtraArg`] for anything else. `self` may be partly updated
    /// when an error is returned.
    pub fn apply_extra_args(&mut self, args: &[String]) -> Result<(), FatError> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| FatError::ExtraArgMissingValue { arg: a.clone() });
            match a.as_str() {
                "-n" => self.label = Some(value()?),
                "-i" => {
                    let v = value()?;
                    self.volume_id = u32::from_str_radix(&v, 16).map_err(|_| FatError::BadVolumeId { value: v })?;
                }
                "-F" => match value()?.as_str() {
                    "32" => self.fat_type = Some(FatType::Fat32),
                    "16" => self.fat_type = Some(FatType::Fat16),
                    v => return Err(FatError::BadFatType { value: v.to_owned() }),
                },
                _ => return Err(FatError::UnsupportedExtraArg { arg: a.clone() }),
            }
        }
        Ok(())
    }
}

/// The volume id (`BS_VolID`) systemd-repart gives a vfat filesystem: the first four bytes
/// of the filesystem UUID, big-endian.
#[must_use]
pub fn volume_id_from_uuid(uuid: &uuid::Uuid) -> u32 {
    let b = uuid.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A volume id the way blkid and `/dev/disk/by-uuid` show it: `XXXX-XXXX`, upper-case
/// hexadecimal, high half first.
#[must_use]
pub fn format_volume_id(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)
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
    /// The content does not fit into the volume. [`min_size`] finds a size that fits.
    #[error("{path}: does not fit: the content needs {needed} bytes of {cluster_bytes}-byte clusters, the {size_bytes}-byte volume has {available}")]
    DoesNotFit {
        /// The first path (in allocation order: directories, then files) that does not fit.
        path: String,
        /// Bytes of clusters the whole content needs (directories and file data).
        needed: u64,
        /// Bytes of clusters the volume has (its data region).
        available: u64,
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
    /// An `mkfs.vfat` extra argument without its value.
    #[error("mkfs.vfat argument {arg:?} needs a value")]
    ExtraArgMissingValue {
        /// The flag.
        arg: String,
    },
    /// An `-i` value that is not a hexadecimal 32-bit number.
    #[error("-i {value:?}: not a hexadecimal volume id")]
    BadVolumeId {
        /// The value.
        value: String,
    },
    /// An `-F` value other than 16 or 32.
    #[error("-F {value}: mkdisk writes FAT16 or FAT32")]
    BadFatType {
        /// The value.
        value: String,
    },
    /// An `mkfs.vfat` extra argument this writer does not take.
    #[error("unsupported mkfs.vfat argument {arg:?} (supported: -n LABEL, -i VOLID, -F 16|32)")]
    UnsupportedExtraArg {
        /// The argument.
        arg: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn apply(v: &[&str]) -> Result<FatOptions, FatError> {
        let mut o = FatOptions::new(64 << 20);
        o.volume_id = 0x1234_5678;
        o.apply_extra_args(&args(v))?;
        Ok(o)
    }

    #[test]
    fn extra_args_accepted() {
        let o = apply(&[]).unwrap();
        assert_eq!((o.volume_id, o.label.as_deref(), o.fat_type), (0x1234_5678, None, None));
        let o = apply(&["-n", "ESP", "-i", "deadBEEF", "-F", "32"]).unwrap();
        assert_eq!((o.volume_id, o.label.as_deref(), o.fat_type), (0xDEAD_BEEF, Some("ESP"), Some(FatType::Fat32)));
        let o = apply(&["-F", "32", "-F", "16", "-n", "A", "-n", "B"]).unwrap();
        assert_eq!((o.label.as_deref(), o.fat_type), (Some("B"), Some(FatType::Fat16)));
        assert_eq!(o.size_bytes, 64 << 20);
    }

    #[test]
    fn extra_args_rejected_with_the_old_messages() {
        let msg = |v: &[&str]| apply(v).unwrap_err().to_string();
        assert_eq!(msg(&["-n"]), r#"mkfs.vfat argument "-n" needs a value"#);
        assert_eq!(msg(&["-F"]), r#"mkfs.vfat argument "-F" needs a value"#);
        assert_eq!(msg(&["-i", "xyz"]), r#"-i "xyz": not a hexadecimal volume id"#);
        assert_eq!(msg(&["-i", "123456789"]), r#"-i "123456789": not a hexadecimal volume id"#);
        assert_eq!(msg(&["-F", "12"]), "-F 12: mkdisk writes FAT16 or FAT32");
        assert_eq!(
            msg(&["-s", "8"]),
            r#"unsupported mkfs.vfat argument "-s" (supported: -n LABEL, -i VOLID, -F 16|32)"#
        );
        assert_eq!(
            msg(&["-nESP"]),
            r#"unsupported mkfs.vfat argument "-nESP" (supported: -n LABEL, -i VOLID, -F 16|32)"#
        );
        assert!(matches!(apply(&["-i"]), Err(FatError::ExtraArgMissingValue { arg }) if arg == "-i"));
        assert!(matches!(apply(&["-i", "g"]), Err(FatError::BadVolumeId { value }) if value == "g"));
        assert!(matches!(apply(&["-F", "8"]), Err(FatError::BadFatType { value }) if value == "8"));
        assert!(matches!(apply(&["--x"]), Err(FatError::UnsupportedExtraArg { arg }) if arg == "--x"));
    }

    #[test]
    fn volume_ids() {
        let u = uuid::Uuid::parse_str("a1b2c3d4-0000-4000-8000-000000000000").unwrap();
        assert_eq!(volume_id_from_uuid(&u), 0xA1B2_C3D4);
        assert_eq!(format_volume_id(0xA1B2_C3D4), "A1B2-C3D4");
        assert_eq!(format_volume_id(0x0000_00AB), "0000-00AB");
        assert_eq!(format_volume_id(u32::MAX), "FFFF-FFFF");
        assert_eq!(format_volume_id(volume_id_from_uuid(&uuid::Uuid::nil())), "0000-0000");
    }
}
