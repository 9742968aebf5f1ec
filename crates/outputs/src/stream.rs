//! gzip streams of the raw image (`shared/docs/outputs.md` §4): the whole image, holes fed as
//! zeros, so decompressing gives the raw bytes; and the windowed reader zstd shares.
//!
//! gzip: the image cut into [`GZIP_MEMBER_SIZE`] pieces, each compressed as an independent
//! member (RFC 1952 §2.2: MTIME 0, no name, OS 255) in parallel and concatenated in order;
//! the bytes depend on the level and the member size, not on the thread count. An all-zero
//! piece is compressed once and its member reused.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::ranges::read_exact_at;
use crate::{data_ranges, io_err, is_zero, overflow, to_usize, Named, OutputError};

/// Uncompressed bytes per gzip member (and per read for both streams).
pub const GZIP_MEMBER_SIZE: u64 = 4 << 20;

/// The raw image read front to back, in `chunk`-byte windows ([`Windows::next`]) or in
/// pieces of any length at ascending offsets ([`Windows::read`]): a piece no data extent
/// touches is not read (it is all zeros).
pub(crate) struct Windows<'a> {
    src: &'a File,
    raw: &'a Path,
    pub(crate) size: u64,
    ranges: &'a [(u64, u64)],
    next_range: usize,
    off: u64,
    chunk: u64,
}

impl<'a> Windows<'a> {
    pub(crate) fn open(
        src: &'a File,
        raw: &'a Path,
        ranges: &'a [(u64, u64)],
        chunk: u64,
    ) -> Result<Self, OutputError> {
        let size = src.metadata().map_err(io_err(raw, "reading the raw image's size"))?.len();
        Ok(Self { src, raw, size, ranges, next_range: 0, off: 0, chunk })
    }

    /// The next window: its length and, when any data extent touches it, its bytes in `buf`.
    fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<(usize, bool)>, OutputError> {
        if self.off >= self.size {
            return Ok(None);
        }
        let len = self.chunk.min(self.size - self.off);
        let (n, data) = (to_usize(self.raw, len)?, self.read(self.off, len, buf)?);
        self.off += len;
        Ok(Some((n, data)))
    }

    /// Bytes `off .. off + len` (inside the image, `off` not below an earlier call's) into
    /// `buf` when any data extent touches them; `false` (and `buf` untouched) where none does.
    pub(crate) fn read(&mut self, off: u64, len: u64, buf: &mut Vec<u8>) -> Result<bool, OutputError> {
        let end = off.checked_add(len).ok_or_else(|| overflow(self.raw, "read offset"))?;
        while self.ranges.get(self.next_range).is_some_and(|&(s, l)| s.saturating_add(l) <= off) {
            self.next_range += 1;
        }
        let data = self.ranges.get(self.next_range).is_some_and(|&(s, _)| s < end);
        if data {
            buf.resize(to_usize(self.raw, len)?, 0);
            read_exact_at(self.src, buf, off).map_err(io_err(self.raw, "reading the raw image"))?;
        }
        Ok(data)
    }
}

/// Lists the data extents of the raw image.
pub(crate) fn ranges_of(raw: Named<'_>) -> Result<Vec<(u64, u64)>, OutputError> {
    data_ranges(raw.file).map_err(io_err(raw.path, "finding data extents (SEEK_DATA)"))
}

/// One gzip member of `data` at `level` (deterministic header: MTIME 0, no name, OS 255).
fn gzip_member(data: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 4), flate2::Compression::new(level));
    enc.write_all(data)?;
    enc.finish()
}

/// Compresses `raw` into the gzip file `out` (created or truncated): independent members of
/// [`GZIP_MEMBER_SIZE`] input bytes each, compressed on `threads` threads (0 counts as 1) at
/// `level` (0–9, clamped). Returns the compressed length.
///
/// # Errors
/// [`OutputError::Io`] for a failed read or write, or a thread pool that cannot start.
pub fn write_gzip(raw: &Path, out: &Path, level: u32, threads: u32) -> Result<u64, OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the gzip file"))?;
    gzip_into(Named::new(&src, raw), Named::new(&dst, out), level, threads)
}

/// [`write_gzip`] between open files: `dst` must be empty.
///
/// # Errors
/// As [`write_gzip`].
pub fn gzip_into(raw: Named<'_>, out: Named<'_>, level: u32, threads: u32) -> Result<u64, OutputError> {
    let ranges = ranges_of(raw)?;
    let dst = out.file;
    let (src, raw, out) = (raw.file, raw.path, out.path);
    let level = level.min(9);
    let threads = usize::try_from(threads.max(1)).map_err(|_| overflow(raw, "thread count"))?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| OutputError::Io {
        path: out.to_path_buf(),
        what: "starting threads",
        source: std::io::Error::other(e),
    })?;
    let mut win = Windows::open(src, raw, &ranges, GZIP_MEMBER_SIZE)?;
    let mut w = BufWriter::with_capacity(1 << 20, dst);
    let zero_member =
        gzip_member(&vec![0u8; to_usize(raw, GZIP_MEMBER_SIZE)?], level).map_err(io_err(out, "compressing"))?;
    if win.size == 0 {
        // One empty member: a valid gzip file (zero members is an empty file gzip rejects).
        w.write_all(&gzip_member(&[], level).map_err(io_err(out, "compressing"))?)
            .map_err(io_err(out, "writing the gzip file"))?;
    }
    let batch = threads.saturating_mul(2);
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); batch];
    loop {
        // Read up to `batch` windows in order; all-zero full windows reuse `zero_member`.
        let mut jobs: Vec<(usize, bool)> = Vec::with_capacity(batch);
        for buf in &mut bufs {
            match win.next(buf)? {
                Some((n, data)) => jobs.push((n, data)),
                None => break,
            }
        }
        if jobs.is_empty() {
            break;
        }
        let members: Vec<std::io::Result<Option<Vec<u8>>>> = pool.install(|| {
            jobs.par_iter()
                .zip(bufs.par_iter_mut())
                .map(|(&(n, data), buf)| compress_window(n, data, buf, level))
                .collect()
        });
        for m in members {
            let m = m.map_err(io_err(out, "compressing"))?;
            w.write_all(m.as_deref().unwrap_or(&zero_member)).map_err(io_err(out, "writing the gzip file"))?;
        }
    }
    w.flush().map_err(io_err(out, "writing the gzip file"))?;
    drop(w);
    Ok(dst.metadata().map_err(io_err(out, "reading the gzip file's size"))?.len())
}

/// The member for one window of `n` bytes (`data`: its bytes are in `buf`), or `None` where
/// it is a full-size window of zeros whose member is the shared one.
fn compress_window(n: usize, data: bool, buf: &mut Vec<u8>, level: u32) -> std::io::Result<Option<Vec<u8>>> {
    let full = n as u64 == GZIP_MEMBER_SIZE;
    if full && !data {
        return Ok(None);
    }
    if !data {
        buf.clear();
        buf.resize(n, 0);
    }
    if full && is_zero(&buf[..n]) {
        return Ok(None);
    }
    gzip_member(&buf[..n], level).map(Some)
}
