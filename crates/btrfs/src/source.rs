//! Reading file bytes from a tree source, and the zstd frame encoder.

use std::fs::File;
use std::os::unix::fs::FileExt;

use mkdisk_tree::{ImageError, Source};

use crate::BtrfsError;

/// Name of a source for errors.
pub(crate) fn source_name(src: &Source) -> String {
    match src {
        Source::Host(p) => p.display().to_string(),
        Source::Bytes(_) => "<in-memory file>".to_string(),
    }
}

/// An open source: host files are opened once per extent.
pub(crate) enum Reader<'a> {
    Host(File, &'a std::path::Path),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    pub(crate) fn open(src: &'a Source) -> Result<Self, BtrfsError> {
        Ok(match src {
            Source::Host(p) => Reader::Host(mkdisk_tree::open_source(p)?, p),
            Source::Bytes(b) => Reader::Bytes(b),
        })
    }

    /// Fill `buf` with the file bytes at `off`; bytes at or past `file_size` are zero. A host
    /// file shorter than `file_size` is an error (it changed since the scan).
    pub(crate) fn read(&self, file_size: u64, off: u64, buf: &mut [u8]) -> Result<(), BtrfsError> {
        buf.fill(0);
        let buf_len = u64::try_from(buf.len()).expect("usize is at most 64 bits wide");
        let want = usize::try_from(file_size.saturating_sub(off).min(buf_len)).expect("at most buf.len()");
        match self {
            Reader::Bytes(b) => {
                let b_len = u64::try_from(b.len()).expect("usize is at most 64 bits wide");
                let start = usize::try_from(off.min(b_len)).expect("at most b.len()");
                let end = start.saturating_add(want).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
            }
            Reader::Host(f, p) => {
                f.read_exact_at(&mut buf[..want], off)
                    .map_err(|e| BtrfsError::Image(ImageError::Source { path: p.to_path_buf(), source: e }))?;
            }
        }
        Ok(())
    }
}

thread_local! {
    /// One zstd context per thread and level, reused for every frame (a fresh context per
    /// 128 KiB chunk cost more than the compression of small chunks). Reuse does not change
    /// the output: each frame is a one-shot `ZSTD_compress2` with the same parameters.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compress one chunk into a single zstd frame the kernel accepts: one-shot with the content
/// size (single segment, window = content size ≤ 128 KiB), window log capped at 17, no
/// checksum.
pub(crate) fn zstd_frame(level: i32, data: &[u8]) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::CParameter;
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut c = zstd::bulk::Compressor::new(level).map_err(|e| e.to_string())?;
            c.set_parameter(CParameter::WindowLog(17)).map_err(|e| e.to_string())?;
            c.set_parameter(CParameter::ContentSizeFlag(true)).map_err(|e| e.to_string())?;
            c.set_parameter(CParameter::ChecksumFlag(false)).map_err(|e| e.to_string())?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().ok_or("no zstd context")?;
        c.compress(data).map_err(|e| e.to_string())
    })
}
