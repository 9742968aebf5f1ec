//! mkdisk-tree: the source-tree model every mkdisk writer consumes, the directory scanner,
//! mount splitting, deterministic identifiers, and the sparse output image.
//!
//! It sits at the bottom of the crate DAG: `mkdisk-gpt`, the filesystem writers and the
//! `mkdisk` binary depend on it; it depends on none of them.

#![deny(clippy::cast_possible_truncation)]

pub mod ids;
mod image;
pub mod le;
mod model;
mod scan;
mod search;
mod split;

use std::path::{Path, PathBuf};

pub use image::{open_source, persist_all, read_file, remove_temp_files, Image, Region};
pub use model::{
    civil_from_days, DataRun, DirData, Entry, FileData, Inode, InodeId, Kind, Meta, Source, Timestamp, Tree, Xattr,
};
pub use scan::{scan, scan_entry_into, scan_into, ScanOptions};
pub use search::smallest_fitting;
pub use split::{is_under, normalize_mountpoint, split, Split};

/// Errors from building or scanning a tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// Reading the host tree failed.
    #[error("{path}: {source}")]
    Io {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path that must be a directory is not.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// An entry name that no filesystem can hold.
    #[error("invalid file name {name:?}")]
    BadName {
        /// The name.
        name: String,
    },
    /// A name added twice to a directory.
    #[error("{name:?} already exists in its directory")]
    Exists {
        /// The name.
        name: String,
    },
    /// A hard link to a directory.
    #[error("{name:?}: hard links to directories are not allowed")]
    HardLinkToDirectory {
        /// The link name.
        name: String,
    },
    /// More than 2^32 links.
    #[error("{name:?}: too many hard links")]
    TooManyLinks {
        /// The link name.
        name: String,
    },
    /// More than 2^32 inodes.
    #[error("too many inodes in one tree")]
    TooManyInodes,
    /// A file type the tree cannot represent.
    #[error("{path}: unsupported file type")]
    UnsupportedType {
        /// The path.
        path: String,
    },
    /// A mount point that is not an absolute path.
    #[error("mount point {mountpoint:?} is not an absolute path without '..'")]
    BadMountpoint {
        /// The mount point.
        mountpoint: String,
    },
    /// The same mount point used twice.
    #[error("mount point {mountpoint:?} is used twice")]
    DuplicateMountpoint {
        /// The mount point.
        mountpoint: String,
    },
}

impl TreeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TreeError::Io { path: path.to_path_buf(), source }
    }
}

/// Errors from writing the output image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The output file could not be created or sized.
    #[error("cannot create image in {path}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Renaming the finished image failed.
    #[error("cannot rename finished image to {path}: {source}")]
    Persist {
        /// The final path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A write outside its region: a bug in a writer's plan.
    #[error("write of {len} bytes at offset {offset} is outside {region} ({size} bytes)")]
    OutOfBounds {
        /// Region name.
        region: String,
        /// Offset within the region.
        offset: u64,
        /// Length.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// Writing to the image failed.
    #[error("writing {region} at offset {offset}: {source}")]
    Write {
        /// Region name.
        region: String,
        /// Offset within the region.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a source file failed.
    #[error("reading {path}: {source}")]
    Source {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Progress reporting from a writer's data phase (called from many threads).
pub trait Progress: Sync {
    /// `bytes` more bytes of file data were placed in the image.
    fn data_written(&self, bytes: u64);

    /// The total number of file-data bytes the build will report (called once, before the
    /// data phase, by the orchestrator).
    fn set_total(&self, _bytes: u64) {}

    /// The build entered a new phase (`"scanning"`, `"planning"`, `"writing main.raw"`), for
    /// a progress display's label.
    fn phase(&self, _what: &str) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn data_written(&self, _bytes: u64) {}
}
