//! zstd and gzip streams of the raw image (`shared/docs/outputs.md` §4): the whole image,
//! holes fed as zeros, so decompressing gives the raw bytes.
//!
//! zstd: concatenated frames (RFC 8878 §3.1, which every decoder reads as one stream): each
//! run of 4 MiB windows holding a non-zero byte (with the zero runs shorter than 64 MiB inside
//! it) is one frame from libzstd's multithreaded mode with at least one worker, which gives the
//! same bytes for every worker count (§4), with a content checksum; each run of at least 64 MiB
//! of all-zero windows (holes above all), and any before the first data, is one frame of RLE
//! blocks written directly. The cut depends on the bytes only, never on how the host file
//! system reports holes.
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

/// The raw image read front to back in `chunk`-byte windows: a window no data extent
/// touches is not read and comes back as `None` (all zeros).
struct Windows<'a> {
    src: &'a File,
    raw: &'a Path,
    size: u64,
    ranges: &'a [(u64, u64)],
    next_range: usize,
    off: u64,
    chunk: u64,
}

impl<'a> Windows<'a> {
    fn open(src: &'a File, raw: &'a Path, ranges: &'a [(u64, u64)], chunk: u64) -> Result<Self, OutputError> {
        let size = src.metadata().map_err(io_err(raw, "reading the raw image's size"))?.len();
        Ok(Self { src, raw, size, ranges, next_range: 0, off: 0, chunk })
    }

    /// The next window: its length and, when any data extent touches it, its bytes in `buf`.
    fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<(usize, bool)>, OutputError> {
        if self.off >= self.size {
            return Ok(None);
        }
        let len = self.chunk.min(self.size - self.off);
        let end = self.off + len;
        while self.ranges.get(self.next_range).is_some_and(|&(s, l)| s.saturating_add(l) <= self.off) {
            self.next_range += 1;
        }
        let data = self.ranges.get(self.next_range).is_some_and(|&(s, _)| s < end);
        let n = to_usize(self.raw, len)?;
        if data {
            buf.resize(n, 0);
            read_exact_at(self.src, buf, self.off).map_err(io_err(self.raw, "reading the raw image"))?;
        }
        self.off = end;
        Ok(Some((n, data)))
    }
}

/// Lists the data extents of the raw image.
fn ranges_of(raw: Named<'_>) -> Result<Vec<(u64, u64)>, OutputError> {
    data_ranges(raw.file).map_err(io_err(raw.path, "finding data extents (SEEK_DATA)"))
}

/// Compresses `raw` into the zstd file `out` (created or truncated) at `level` with
/// `threads` workers (0 counts as 1). Returns the compressed length.
///
/// # Errors
/// [`OutputError::Io`] for a failed read, write or libzstd call.
pub fn write_zstd(raw: &Path, out: &Path, level: i32, threads: u32) -> Result<u64, OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the zstd file"))?;
    zstd_into(Named::new(&src, raw), Named::new(&dst, out), level, threads)
}

/// [`write_zstd`] between open files: `dst` must be empty.
///
/// # Errors
/// As [`write_zstd`].
pub fn zstd_into(raw: Named<'_>, out: Named<'_>, level: i32, threads: u32) -> Result<u64, OutputError> {
    let ranges = ranges_of(raw)?;
    let dst = out.file;
    let (src, raw, out) = (raw.file, raw.path, out.path);
    let mut win = Windows::open(src, raw, &ranges, GZIP_MEMBER_SIZE)?;
    let mut state = Zstd::Idle(BufWriter::with_capacity(1 << 20, dst));
    let mut zero_run = 0u64;
    let mut buf = Vec::new();
    let zeros = vec![0u8; to_usize(raw, GZIP_MEMBER_SIZE)?];
    let e = |what| io_err(out, what);
    while let Some((n, data)) = win.next(&mut buf)? {
        if !data || is_zero(&buf[..n]) {
            zero_run += n as u64;
            continue;
        }
        if zero_run >= ZSTD_ZERO_FRAME_MIN || matches!(state, Zstd::Idle(_)) {
            // A long zero run (or one before any data) becomes its own RLE frame.
            let mut w = state.finish().map_err(e("finishing a zstd frame"))?;
            if zero_run > 0 {
                w.write_all(&zero_frame(zero_run)).map_err(e("writing the zstd file"))?;
            }
            state = Zstd::Idle(w).compressing(level, threads).map_err(e("setting up zstd"))?;
        } else if let Zstd::Frame(enc) = &mut state {
            // A short one stays in the data frame (no sync point in the middle of the data).
            feed_zeros(enc, zero_run, &zeros).map_err(e("compressing into the zstd file"))?;
        }
        zero_run = 0;
        if let Zstd::Frame(enc) = &mut state {
            enc.write_all(&buf[..n]).map_err(e("compressing into the zstd file"))?;
        }
    }
    if zero_run > 0 && zero_run < ZSTD_ZERO_FRAME_MIN {
        if let Zstd::Frame(enc) = &mut state {
            feed_zeros(enc, zero_run, &zeros).map_err(e("compressing into the zstd file"))?;
            zero_run = 0;
        }
    }
    let mut w = state.finish().map_err(e("finishing a zstd frame"))?;
    if zero_run > 0 || win.size == 0 {
        w.write_all(&zero_frame(zero_run)).map_err(e("writing the zstd file"))?;
    }
    w.flush().map_err(io_err(out, "writing the zstd file"))?;
    drop(w);
    Ok(dst.metadata().map_err(io_err(out, "reading the zstd file's size"))?.len())
}

/// The shortest run of all-zero bytes (whole windows) that ends a data frame and becomes a
/// frame of RLE blocks; shorter runs are compressed inside the data frame, so that holes
/// between files do not cut the multithreaded compression into small frames.
const ZSTD_ZERO_FRAME_MIN: u64 = 64 << 20;

/// `n` zero bytes into the open frame, from the window-sized `zeros`.
fn feed_zeros<W: Write>(enc: &mut W, mut n: u64, zeros: &[u8]) -> std::io::Result<()> {
    while n > 0 {
        let k = usize::try_from(n).map_or(zeros.len(), |n| n.min(zeros.len()));
        enc.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// The zstd output between frames, or inside a data frame.
enum Zstd<'a> {
    Idle(BufWriter<&'a File>),
    Frame(zstd::stream::Encoder<'static, BufWriter<&'a File>>),
}

impl<'a> Zstd<'a> {
    /// Inside a data frame: a libzstd frame (multithreaded with at least one worker, the same
    /// bytes for every worker count) with a content checksum.
    fn compressing(self, level: i32, threads: u32) -> std::io::Result<Self> {
        match self {
            Zstd::Idle(w) => {
                let mut enc = zstd::stream::Encoder::new(w, level)?;
                enc.multithread(threads.max(1))?;
                enc.include_checksum(true)?;
                Ok(Zstd::Frame(enc))
            }
            frame => Ok(frame),
        }
    }

    /// The writer, after the last frame is finished.
    fn finish(self) -> std::io::Result<BufWriter<&'a File>> {
        match self {
            Zstd::Idle(w) => Ok(w),
            Zstd::Frame(enc) => enc.finish(),
        }
    }
}

/// A zstd frame of `len` zero bytes made of RLE blocks (RFC 8878 §3.1.1: a 128 KiB window, the
/// content size in 8 bytes, blocks of at most 128 KiB, 4 bytes each): 2 GiB of holes cost 64 KiB
/// and no compression work. `len` 0 gives one empty raw block (a valid, empty frame).
fn zero_frame(len: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut f = Vec::with_capacity(13 + 4 * usize::try_from(len / BLOCK + 1).unwrap_or(0));
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Content_Size_flag 3 (8 bytes), no Single_Segment_flag: a single segment's window is
    // the whole content, which decoders refuse above 128 MiB (`zstd -d`: "Window size larger
    // than maximum"); a 128 KiB window (Exponent 7, Mantissa 0) is all RLE blocks need.
    f.push(0b1100_0000);
    f.push(7 << 3);
    f.extend_from_slice(&len.to_le_bytes());
    let mut left = len;
    loop {
        let size = left.min(BLOCK);
        left -= size;
        let last = u64::from(left == 0);
        let rle = if size == 0 { 0 } else { 1 }; // Block_Type: 0 raw (empty), 1 RLE
        let header = last | (rle << 1) | (size << 3);
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        if size > 0 {
            f.push(0);
        }
        if left == 0 {
            return f;
        }
    }
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
