//! mkdisk-gpt: where partitions go (a pure function reproducing disko's sgdisk calls) and the
//! GPT that describes them (protective MBR, primary and backup headers and entry arrays,
//! written with `gptman`).
//!
//! Depends only on `mkdisk-tree` (for the image [`Region`](mkdisk_tree::Region) and the
//! seed-keyed id derivation). The partition type GUIDs mkdisk gives a meaning to (ESP,
//! BIOS boot, …) are named in [`types`].

#![deny(clippy::cast_possible_truncation)]

mod place;
pub mod types;
mod write;

pub use place::{
    computed_alignment, creation_order, parse_image_size, parse_sectors, place, DiskLayout, DiskRequest,
    PartitionRequest, Placed, DEFAULT_ALIGNMENT, ENTRY_ARRAY_SECTORS, FIRST_USABLE_LBA,
};
pub use write::{protective_mbr_tail, write_gpt};

/// Bytes per sector (disko and NixOS images use 512).
pub const SECTOR_SIZE: u64 = 512;

/// Placement errors; each names the disk and partition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlaceError {
    /// The disk size is not a whole number of sectors or too small for a GPT.
    #[error("disk {disk}: size {size} bytes is not usable for a GPT disk (needs whole 512-byte sectors, at least 68)")]
    BadDiskSize {
        /// Disk name.
        disk: String,
        /// Size in bytes.
        size: u64,
    },
    /// More than 128 partitions.
    #[error("disk {disk}: {count} partitions, GPT holds at most 128")]
    TooManyPartitions {
        /// Disk name.
        disk: String,
        /// Count.
        count: usize,
    },
    /// A start/end string that is not an sgdisk position.
    #[error("disk {disk}, partition {partition}: malformed {field} {value:?} (expected e.g. 0, 2048, +512M, -0, 1G)")]
    BadPosition {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// `start` or `end`.
        field: &'static str,
        /// The string.
        value: String,
    },
    /// The requested start lies in used space or outside the usable area.
    #[error("disk {disk}, partition {partition}: start sector {sector} is not in free space")]
    StartNotFree {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// The sector.
        sector: u64,
    },
    /// Not enough room.
    #[error(
        "disk {disk}, partition {partition} does not fit: needs {needed_sectors} sectors, {available_sectors} free (short by {} sectors)",
        needed_sectors.saturating_sub(*available_sectors)
    )]
    NoSpace {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// Sectors asked for.
        needed_sectors: u64,
        /// Sectors available.
        available_sectors: u64,
    },
    /// An attribute bit ≥ 64.
    #[error("disk {disk}, partition {partition}: attribute bit {bit} is not in 0..64")]
    BadAttribute {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// The bit.
        bit: u8,
    },
    /// Two partitions with the same unique GUID.
    #[error("disk {disk}, partition {partition}: GUID {guid} is used twice")]
    DuplicateGuid {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// The GUID.
        guid: uuid::Uuid,
    },
}

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// gptman rejected the table.
    #[error("partition table: {0}")]
    Table(String),
    /// Writing the image failed.
    #[error(transparent)]
    Image(#[from] mkdisk_tree::ImageError),
}
