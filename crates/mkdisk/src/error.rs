//! The errors of a build: [`BuildError`], each naming the disk and partition it concerns, with
//! the writer's own error as its [`source`](std::error::Error::source).

use std::path::PathBuf;

use crate::boot::NixosError;
use crate::sources::SourceError;
use crate::swap::SwapError;

/// A filesystem writer's error (the `source` of [`BuildError::Partition`]); match it to tell
/// a full filesystem (`DoesNotFit`) from a bad option.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// FAT.
    #[error(transparent)]
    Fat(#[from] mkdisk_fat::FatError),
    /// ext4.
    #[error(transparent)]
    Ext4(#[from] mkdisk_ext4::Ext4Error),
    /// btrfs.
    #[error(transparent)]
    Btrfs(#[from] mkdisk_btrfs::BtrfsError),
    /// Swap.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// Writing the partition's bytes failed.
    #[error(transparent)]
    Image(#[from] mkdisk_tree::ImageError),
    /// A FAT partition starts past what FAT's 32-bit hidden-sector field holds.
    #[error("start sector {0} does not fit FAT's 32-bit hidden-sector field")]
    FatStart(u64),
    /// A format mkdisk does not write yet.
    #[error("{0} is not implemented yet")]
    NotImplemented(String),
    /// The partition that fills a disk sized by `--image-size` is smaller than its content
    /// needs (the filesystem's minimal size, measured when planning failed).
    #[error(
        "the image is {} MiB too small for this partition's content: the partition has {} MiB, its filesystem needs {} MiB",
        crate::autosize::mib_ceil(min_size_bytes.saturating_sub(*size_bytes)),
        size_bytes >> 20,
        crate::autosize::mib_ceil(*min_size_bytes)
    )]
    TooSmall {
        /// The partition's size.
        size_bytes: u64,
        /// The smallest size its filesystem plans the content into.
        min_size_bytes: u64,
    },
}

/// Build errors, each with the disk/partition it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The layout does not place.
    #[error(transparent)]
    Place(#[from] mkdisk_gpt::PlaceError),
    /// `--root` is bad, or scanning or splitting the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The output could not be created or written.
    #[error(transparent)]
    Image(#[from] mkdisk_tree::ImageError),
    /// Writing the partition table failed.
    #[error("disk {disk}: {source}")]
    Gpt {
        /// Disk name.
        disk: String,
        /// Cause.
        source: mkdisk_gpt::GptError,
    },
    /// A partition's filesystem could not be planned or written.
    #[error("disk {disk}, partition {partition}: {source}")]
    Partition {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// The writer's error.
        source: FsError,
    },
    /// `--out` is not a writable directory.
    #[error("--out {}: {message}", path.display())]
    Out {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Converting a disk's raw image into the output format (or its bmap) failed.
    #[error("disk {disk}: {source}")]
    Output {
        /// Disk name.
        disk: String,
        /// Cause, naming the file.
        source: mkdisk_outputs::OutputError,
    },
    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    Threads(String),
    /// NixOS content (closure, store, boot.json, boot loader inputs).
    #[error("NixOS: {0}")]
    Nixos(#[from] NixosError),
    /// A disk's size cannot be had: `--image-size` below the fixed partitions, `auto` on a
    /// disk with no partition to size, or one without content to size it by.
    #[error("disk {disk}: {message}")]
    Size {
        /// Disk name.
        disk: String,
        /// What is wrong.
        message: String,
    },
}

impl BuildError {
    /// A [`BuildError::Partition`] for `disk`, `partition`.
    pub(crate) fn partition(disk: &str, partition: &str, source: impl Into<FsError>) -> BuildError {
        BuildError::Partition { disk: disk.to_string(), partition: partition.to_string(), source: source.into() }
    }
}
