//! Where compressed frames live between `plan` and `write`.
//!
//! The planner must know every frame's length to place extents, so it compresses each chunk
//! once and keeps the frame: in memory (the default, for small trees and tests), or appended
//! to an unnamed scratch file ([`crate::BtrfsOptions::scratch_dir`], the output directory in
//! mkdisk) so that memory stays bounded however much data is compressed. The writer then only
//! copies frames into place. A frame's position in the scratch file depends on which thread
//! finished first, but nothing of that reaches the image: the layout records each frame's own
//! offset and length, and the image bytes are the frame bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::BtrfsError;

/// One compressed frame: its exact length and where its bytes are.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// Frame length in bytes (before sector padding).
    pub len: u64,
    pub at: FrameAt,
}

/// Where a frame's bytes are.
#[derive(Clone, Debug)]
pub(crate) enum FrameAt {
    /// Held in memory.
    Mem(Arc<[u8]>),
    /// At this offset of the layout's scratch file.
    Spill(u64),
}

/// An unnamed scratch file (deleted by the OS when the last handle closes), appended to from
/// many threads at once.
#[derive(Debug)]
pub(crate) struct Spill {
    file: File,
    dir: PathBuf,
    next: AtomicU64,
}

impl Spill {
    pub(crate) fn new(dir: &Path) -> Result<Spill, BtrfsError> {
        let file =
            tempfile::tempfile_in(dir).map_err(|e| BtrfsError::Scratch { path: dir.to_path_buf(), source: e })?;
        Ok(Spill { file, dir: dir.to_path_buf(), next: AtomicU64::new(0) })
    }

    fn err(&self, e: std::io::Error) -> BtrfsError {
        BtrfsError::Scratch { path: self.dir.clone(), source: e }
    }

    /// Append `frame`; returns its offset.
    pub(crate) fn put(&self, frame: &[u8]) -> Result<u64, BtrfsError> {
        let len = u64::try_from(frame.len()).expect("usize is at most 64 bits wide");
        let at = self.next.fetch_add(len, Ordering::Relaxed);
        self.file.write_all_at(frame, at).map_err(|e| self.err(e))?;
        Ok(at)
    }

    /// Read `buf.len()` bytes at `at`.
    pub(crate) fn get(&self, at: u64, buf: &mut [u8]) -> Result<(), BtrfsError> {
        self.file.read_exact_at(buf, at).map_err(|e| self.err(e))
    }
}

/// Keep `frame` in memory, or in `spill` when there is one.
pub(crate) fn keep(spill: Option<&Spill>, frame: Vec<u8>) -> Result<Frame, BtrfsError> {
    let len = u64::try_from(frame.len()).expect("usize is at most 64 bits wide");
    let at = match spill {
        Some(s) => FrameAt::Spill(s.put(&frame)?),
        None => FrameAt::Mem(frame.into()),
    };
    Ok(Frame { len, at })
}

/// Copy `frame`'s bytes into the start of `buf` (which is at least `frame.len` long).
pub(crate) fn load(spill: Option<&Spill>, frame: &Frame, buf: &mut [u8]) -> Result<(), BtrfsError> {
    let n = usize::try_from(frame.len).expect("a frame's length came from a Vec's length");
    if n > buf.len() {
        return Err(BtrfsError::Plan(format!("frame of {n} bytes larger than its extent")));
    }
    match &frame.at {
        FrameAt::Mem(b) => {
            if b.len() != n {
                return Err(BtrfsError::Plan("frame length mismatch".into()));
            }
            buf[..n].copy_from_slice(b);
            Ok(())
        }
        FrameAt::Spill(at) => match spill {
            Some(s) => s.get(*at, &mut buf[..n]),
            None => Err(BtrfsError::Plan("spilled frame without a scratch file".into())),
        },
    }
}
