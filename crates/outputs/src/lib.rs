//! mkdisk's output formats, written from a finished sparse raw image (`<imageName>.raw`):
//! qcow2 v3 ([`write_qcow2`]), a fixed VHD ([`write_vhd`]), a bmap 2.0 file ([`write_bmap`])
//! and compressed streams ([`write_zstd`], [`write_gzip`]); or, for qcow2 and VHD, around a
//! raw disk written in place into the output file ([`qcow2_finish`], [`vhd_finish`]).
//!
//! It sits after the image writers: it depends on no other mkdisk crate and reads nothing but
//! the raw file. Every writer finds the data extents with `SEEK_DATA`/`SEEK_HOLE`
//! ([`data_ranges`]), reads each extent once, front to back, and writes every output byte
//! once. Nothing depends on the clock or on randomness: the same raw content gives the same
//! output bytes (the VHD's UUID and timestamp are parameters). See `shared/docs/outputs.md`.
#![deny(clippy::cast_possible_truncation)]

mod bmap;
mod qcow2;
mod ranges;
mod stream;
mod vhd;
mod zst;

use std::path::{Path, PathBuf};

pub use bmap::{bmap_into, write_bmap, BMAP_BLOCK_SIZE};
pub use qcow2::{qcow2_finish, qcow2_into, write_qcow2, Qcow2Layout, QCOW2_CLUSTER_SIZE, QCOW2_DATA_OFFSET};
pub use ranges::{data_ranges, data_ranges_in};
pub use stream::{gzip_into, write_gzip, GZIP_MEMBER_SIZE};
pub use vhd::{
    footer as vhd_footer, vhd_checksum, vhd_finish, vhd_geometry, vhd_into, vhd_uuid, write_vhd, Geometry,
    VHD_FOOTER_SIZE,
};
pub use zst::{stored_segments, write_zstd, zstd_into};

/// An open file and the path its errors name (the `*_into` functions take these, so that a
/// caller can write into an unnamed file that gets its name only when the build succeeds).
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    /// The open file.
    pub file: &'a std::fs::File,
    /// Its (final) path, for error messages.
    pub path: &'a Path,
    /// Where the raw disk starts in the file (0, or [`QCOW2_DATA_OFFSET`] in a qcow2 being
    /// written in place); it runs to the file's end. [`bmap_into`] and [`qcow2_finish`] read
    /// at this offset; the other functions take the disk at 0.
    pub base: u64,
}

impl<'a> Named<'a> {
    /// `file`, named `path` in errors.
    #[must_use]
    pub fn new(file: &'a std::fs::File, path: &'a Path) -> Self {
        Named { file, path, base: 0 }
    }

    /// `file`, named `path` in errors, holding the raw disk from byte `base` to its end.
    #[must_use]
    pub fn at(file: &'a std::fs::File, path: &'a Path, base: u64) -> Self {
        Named { file, path, base }
    }
}

/// What went wrong writing an output format, naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// Reading, writing, creating or seeking `path` failed (`what` says which step).
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file the step was on.
        path: PathBuf,
        /// The step, e.g. "reading the raw image".
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image cannot be expressed in the format (too large, not a whole number of sectors).
    #[error("{}: {what}", path.display())]
    Unsupported {
        /// The raw image.
        path: PathBuf,
        /// Why, with the numbers.
        what: String,
    },
}

/// A closure turning an `io::Error` into [`OutputError::Io`] on `path` for step `what`.
pub(crate) fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io { path: path.to_path_buf(), what, source }
}

/// An [`OutputError::Unsupported`] for arithmetic that overflowed on `path`'s sizes.
pub(crate) fn overflow(path: &Path, what: &str) -> OutputError {
    OutputError::Unsupported { path: path.to_path_buf(), what: format!("{what}: size arithmetic overflows") }
}

/// `u64` → `usize` for in-memory buffer lengths (checked; all callers pass chunk-sized values).
pub(crate) fn to_usize(path: &Path, v: u64) -> Result<usize, OutputError> {
    usize::try_from(v).map_err(|_| overflow(path, "buffer length"))
}

/// Whether every byte of `buf` is zero: an OR-fold (which the compiler vectorises) per 4 KiB,
/// stopping at the first chunk with data.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}
