//! zstd streams of the raw image (`shared/docs/outputs.md` §4): the whole image, holes fed as
//! zeros, so decompressing gives the raw bytes. Concatenated frames (RFC 8878 §3.1, which every
//! decoder reads as one stream) of three kinds:
//!
//! - **data frames**: each run of 1 MiB windows holding a non-zero byte (with the zero runs
//!   shorter than 64 MiB inside it) is one frame from libzstd's multithreaded mode with at
//!   least one worker, which gives the same bytes for every worker count (§4), with a content
//!   checksum;
//! - **zero frames**: each run of at least 64 MiB of all-zero windows (holes above all), and
//!   any before the first data, is one frame of RLE blocks written directly;
//! - **stored frames**: the caller may name byte ranges that are already compressed (btrfs's
//!   zstd extents), which compressing again only costs time. The 128 KiB blocks mostly inside
//!   them, joined over gaps under 1 MiB and kept where the run is at least 1 MiB
//!   ([`stored_segments`]), are written as frames of raw blocks, with RLE blocks for the zero
//!   runs of 64 bytes or more inside them (the sector padding after each extent).
//!
//! Where frames are cut depends on the bytes and the named ranges only, never on how the host
//! file system reports holes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::stream::{ranges_of, Windows};
use crate::{io_err, is_zero, to_usize, Named, OutputError};

/// Bytes per window read (1 MiB: the ext4 store's conversion 3.5–4.0 s with 4 MiB, 3.4–3.5 s).
const WINDOW: u64 = 1 << 20;
/// Bytes per window read inside stored segments.
const STORED_WINDOW: u64 = 512 << 10;
/// The shortest run of all-zero bytes (whole windows) that ends a data frame and becomes a
/// frame of RLE blocks; shorter runs are compressed inside the data frame, so that holes
/// between files do not cut the multithreaded compression into small frames.
const ZSTD_ZERO_FRAME_MIN: u64 = 64 << 20;
/// Bytes of input per libzstd job (its default at level 3 is 8 MiB: the same speed, a stream
/// 0.004–0.16 % smaller, and 50–70 MiB more peak memory for the workers' buffers).
const JOB_SIZE: u32 = 4 << 20;
/// The output buffer. Small windows and buffers keep stored bytes in the cache between the
/// read, the copy into the buffer and the write (with 4 MiB windows and a 1 MiB buffer the
/// conversion of the seed image took 1.5–1.8 s instead of 0.95 s).
const OUT_BUF: usize = 256 << 10;
/// zstd's largest block (and the window the hand-written frames declare).
const BLOCK: u64 = 128 << 10;
/// [`BLOCK`] as a `usize`.
const MAX_BLOCK: usize = 128 << 10;
/// Stored runs shorter than this stay compressed; compressed gaps shorter than this between
/// stored runs are stored too (each switch ends a frame).
const STORED_MIN: u64 = 1 << 20;
/// The granule at which zero runs inside stored pieces become RLE blocks.
const ZERO_GRANULE: usize = 64;

/// Compresses `raw` into the zstd file `out` (created or truncated) at `level` with
/// `threads` workers (0 counts as 1). Returns the compressed length.
///
/// # Errors
/// [`OutputError::Io`] for a failed read, write or libzstd call.
pub fn write_zstd(raw: &Path, out: &Path, level: i32, threads: u32) -> Result<u64, OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the zstd file"))?;
    zstd_into(Named::new(&src, raw), Named::new(&dst, out), level, threads, &[])
}

/// [`write_zstd`] between open files (`dst` must be empty), storing without compressing the
/// blocks mostly inside the byte ranges `(offset, len)` of `compressed` (already-compressed
/// data; see the module documentation).
///
/// # Errors
/// As [`write_zstd`].
pub fn zstd_into(
    raw: Named<'_>,
    out: Named<'_>,
    level: i32,
    threads: u32,
    compressed: &[(u64, u64)],
) -> Result<u64, OutputError> {
    let ranges = ranges_of(raw)?;
    let mut win = Windows::open(raw.file, raw.path, &ranges, WINDOW)?;
    let size = win.size;
    let segments = stored_segments(compressed, size);
    let zeros = vec![0u8; to_usize(raw.path, WINDOW)?];
    let w = BufWriter::with_capacity(OUT_BUF, out.file);
    let mut enc = Encoder::new(w, level, threads, &zeros, out.path)?;
    let mut hints = compressed.to_vec();
    hints.sort_unstable();
    let mut blocks = Blocks::default();
    let mut buf = Vec::new();
    let (mut off, mut seg) = (0u64, 0usize);
    while off < size {
        while segments.get(seg).is_some_and(|s| s.1 <= off) {
            seg += 1;
        }
        let (end, stored) = next_piece(off, size, segments.get(seg).copied());
        let data = win.read(off, end - off, &mut buf)?;
        let n = to_usize(raw.path, end - off)?;
        let bytes = if data { &buf[..n] } else { &zeros[..n] };
        if stored {
            blocks.plan(bytes, off, &hints);
            enc.stored(&blocks, bytes, off == segments[seg].0, segments[seg].1 - off, end == segments[seg].1)?;
        } else {
            enc.compressed(bytes)?;
        }
        off = end;
    }
    enc.finish(size)?;
    Ok(out.file.metadata().map_err(io_err(out.path, "reading the zstd file's size"))?.len())
}

/// The piece of a `size`-byte image read next from `off`, given the first stored segment not
/// ending before it: its end, and whether it is stored. Pieces end at window boundaries and
/// segment edges; stored ones are read in smaller windows, so that they are still in the cache
/// when copied into the output buffer and written.
fn next_piece(off: u64, size: u64, segment: Option<(u64, u64)>) -> (u64, bool) {
    let stored = segment.is_some_and(|s| s.0 <= off);
    let window = if stored { STORED_WINDOW } else { WINDOW };
    let window_end = (off / window).saturating_add(1).saturating_mul(window).min(size);
    let end = match segment {
        Some(s) if stored => s.1.min(window_end),
        Some(s) => s.0.min(window_end),
        None => window_end,
    };
    (end, stored)
}

/// The 128 KiB-aligned byte ranges `[start, end)` of a `size`-byte image to store: the blocks
/// at least half inside `compressed`, joined over gaps shorter than 1 MiB, in runs of at
/// least 1 MiB. Pure; ascending.
#[must_use]
pub fn stored_segments(compressed: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut hints = compressed.to_vec();
    hints.sort_unstable();
    let mut cover: Vec<(u64, u64)> = Vec::new(); // (block, bytes inside), ascending
    for (off, len) in hints {
        let end = off.saturating_add(len).min(size);
        let mut p = off;
        while p < end {
            let b = p / BLOCK;
            let e = b.saturating_add(1).saturating_mul(BLOCK).min(end);
            match cover.last_mut() {
                Some((lb, c)) if *lb == b => *c += e - p,
                _ => cover.push((b, e - p)),
            }
            p = e;
        }
    }
    let mut runs: Vec<(u64, u64)> = Vec::new(); // block ranges
    for (b, c) in cover {
        if c.saturating_mul(2) < BLOCK {
            continue;
        }
        match runs.last_mut() {
            Some(r) if (b - r.1) * BLOCK < STORED_MIN => r.1 = b + 1,
            _ => runs.push((b, b + 1)),
        }
    }
    runs.into_iter()
        .map(|(a, b)| (a * BLOCK, b.saturating_mul(BLOCK).min(size)))
        .filter(|(a, b)| b - a >= STORED_MIN)
        .collect()
}

/// Which frame is open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    None,
    /// A libzstd frame in the encoder's context.
    Data,
    /// A hand-written frame of raw and RLE blocks.
    Stored,
}

/// The stream being written: one libzstd context for every data frame (its buffers and
/// worker threads are made once), the open frame and the zero bytes not yet written.
struct Encoder<'a> {
    w: BufWriter<&'a File>,
    cctx: zstd::zstd_safe::CCtx<'static>,
    /// libzstd's output, copied into `w`.
    obuf: Vec<u8>,
    frame: Frame,
    zero_run: u64,
    /// A window of zeros.
    zeros: &'a [u8],
    out: &'a Path,
}

impl<'a> Encoder<'a> {
    /// A context at `level` with `threads` workers (at least one: the same bytes for every
    /// worker count) and content checksums.
    fn new(
        w: BufWriter<&'a File>,
        level: i32,
        threads: u32,
        zeros: &'a [u8],
        out: &'a Path,
    ) -> Result<Self, OutputError> {
        use zstd::zstd_safe::CParameter;
        let mut cctx = zstd::zstd_safe::CCtx::create();
        let params = [
            CParameter::CompressionLevel(level),
            CParameter::NbWorkers(threads.max(1)),
            CParameter::ChecksumFlag(true),
            CParameter::JobSize(JOB_SIZE),
        ];
        for p in params {
            cctx.set_parameter(p).map_err(|c| zstd_err(out, "setting up zstd", c))?;
        }
        let obuf = vec![0u8; zstd::zstd_safe::CCtx::out_size()];
        Ok(Self { w, cctx, obuf, frame: Frame::None, zero_run: 0, zeros, out })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
        io_err(self.out, what)
    }

    /// Feeds `input` into the open data frame; with `end`, then ends the frame.
    fn data(&mut self, input: &[u8], end: bool) -> Result<(), OutputError> {
        use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer};
        let directive = if end { ZSTD_EndDirective::ZSTD_e_end } else { ZSTD_EndDirective::ZSTD_e_continue };
        let mut inb = InBuffer::around(input);
        loop {
            let mut outb = OutBuffer::around(&mut self.obuf[..]);
            let left = self.cctx.compress_stream2(&mut outb, &mut inb, directive);
            let left = left.map_err(|c| zstd_err(self.out, "compressing into the zstd file", c))?;
            let n = outb.pos();
            self.w.write_all(&self.obuf[..n]).map_err(io_err(self.out, "writing the zstd file"))?;
            if (end && left == 0) || (!end && inb.pos == input.len()) {
                return Ok(());
            }
        }
    }

    /// Ends the open frame.
    fn close(&mut self) -> Result<(), OutputError> {
        if self.frame == Frame::Data {
            self.data(&[], true)?;
        }
        self.frame = Frame::None;
        Ok(())
    }

    /// Bytes outside every stored segment.
    fn compressed(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        if is_zero(bytes) {
            self.zero_run += bytes.len() as u64;
            return Ok(());
        }
        if self.zero_run >= ZSTD_ZERO_FRAME_MIN || self.frame != Frame::Data {
            // A long zero run (or one before data) becomes its own RLE frame.
            self.close()?;
            if self.zero_run > 0 {
                self.w.write_all(&zero_frame(self.zero_run)).map_err(self.err("writing the zstd file"))?;
                self.zero_run = 0;
            }
            self.frame = Frame::Data;
        } else {
            // A short one stays in the data frame (no sync point in the middle of the data).
            self.feed_zeros()?;
        }
        self.data(bytes, false)
    }

    /// The pending zero run into the open data frame.
    fn feed_zeros(&mut self) -> Result<(), OutputError> {
        while self.zero_run > 0 && self.frame == Frame::Data {
            let k = usize::try_from(self.zero_run).map_or(self.zeros.len(), |n| n.min(self.zeros.len()));
            self.data(&self.zeros[..k], false)?;
            self.zero_run -= k as u64;
        }
        Ok(())
    }

    /// A piece of a stored segment, as `blocks` of `bytes`; `first`: it starts the segment,
    /// whose bytes from here on number `left`; `last`: it ends it. The pending zero run opens
    /// the stored frame.
    fn stored(&mut self, blocks: &Blocks, bytes: &[u8], first: bool, left: u64, last: bool) -> Result<(), OutputError> {
        let e = io_err(self.out, "writing the zstd file");
        if first {
            self.close()?;
            self.w.write_all(&frame_header(self.zero_run + left)).map_err(self.err("writing the zstd file"))?;
            rle_zeros(&mut self.w, self.zero_run).map_err(self.err("writing the zstd file"))?;
            self.zero_run = 0;
            self.frame = Frame::Stored;
        }
        blocks.write(&mut self.w, bytes, last).map_err(e)?;
        if last {
            self.frame = Frame::None;
        }
        Ok(())
    }

    /// Ends the stream: the last zero run, in the data frame when short, else as a frame.
    fn finish(mut self, size: u64) -> Result<(), OutputError> {
        if self.zero_run < ZSTD_ZERO_FRAME_MIN {
            self.feed_zeros()?;
        }
        self.close()?;
        if self.zero_run > 0 || size == 0 {
            self.w.write_all(&zero_frame(self.zero_run)).map_err(self.err("writing the zstd file"))?;
        }
        self.w.flush().map_err(self.err("writing the zstd file"))
    }
}

/// An [`OutputError::Io`] for a libzstd error code.
fn zstd_err(out: &Path, what: &'static str, code: usize) -> OutputError {
    io_err(out, what)(std::io::Error::other(zstd::zstd_safe::get_error_name(code)))
}

/// The header of a frame of hand-written blocks holding `len` bytes (RFC 8878 §3.1.1): the
/// content size in 8 bytes, no Single_Segment_flag (a single segment's window is the whole
/// content, which decoders refuse above 128 MiB: `zstd -d` "Window size larger than
/// maximum"), a 128 KiB window (Exponent 7, Mantissa 0), which is all raw and RLE blocks need.
fn frame_header(len: u64) -> [u8; 14] {
    let mut h = [0u8; 14];
    h[..4].copy_from_slice(&0xFD2F_B528u32.to_le_bytes());
    h[4] = 0b1100_0000; // Frame_Content_Size_flag 3
    h[5] = 7 << 3;
    h[6..].copy_from_slice(&len.to_le_bytes());
    h
}

/// A block header: `kind` 0 raw, 1 RLE; `size` ≤ 128 KiB.
fn block_header(last: bool, kind: u64, size: u64) -> [u8; 3] {
    let h = u64::from(last) | (kind << 1) | (size << 3);
    let b = h.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// `len` zero bytes as RLE blocks (not the last block of the frame).
fn rle_zeros(w: &mut impl Write, mut len: u64) -> std::io::Result<()> {
    while len > 0 {
        let n = len.min(BLOCK);
        w.write_all(&block_header(false, 1, n))?;
        w.write_all(&[0])?;
        len -= n;
    }
    Ok(())
}

/// The blocks of one stored piece: raw blocks over the named compressed ranges, and over the
/// bytes between them RLE blocks for each run of zero 64-byte granules and raw blocks for the
/// rest; each block at most 128 KiB. Reused from piece to piece.
#[derive(Default)]
struct Blocks {
    /// (start in the piece, length, RLE) per block.
    list: Vec<(usize, usize, bool)>,
    /// Index of the first named range that may reach this piece or a later one.
    next_hint: usize,
}

impl Blocks {
    /// Plans the blocks of `bytes`, the image bytes from `off` on, given the ascending named
    /// ranges `hints`. Pure: the blocks depend on the bytes and the ranges only.
    fn plan(&mut self, bytes: &[u8], off: u64, hints: &[(u64, u64)]) {
        self.list.clear();
        let end = off + bytes.len() as u64;
        let mut at = 0usize; // planned up to here
        let mut i = self.next_hint;
        while let Some(&(h, len)) = hints.get(i) {
            let h_end = h.saturating_add(len);
            if h >= end {
                break;
            }
            let (s, e) = (h.max(off + at as u64), h_end.min(end));
            if s < e {
                let (s, e) = (usize::try_from(s - off).unwrap_or(at), usize::try_from(e - off).unwrap_or(at));
                self.gap(bytes, at, s);
                self.raw(s, e);
                at = e;
            }
            if h_end > end {
                break; // continues into the next piece
            }
            i += 1;
        }
        self.next_hint = i;
        self.gap(bytes, at, bytes.len());
    }

    /// Raw blocks over `start..end`.
    fn raw(&mut self, start: usize, end: usize) {
        let mut p = start;
        while p < end {
            let n = (end - p).min(MAX_BLOCK);
            self.list.push((p, n, false));
            p += n;
        }
    }

    /// Bytes `start..end` between named ranges: zero granule runs as RLE, the rest raw.
    fn gap(&mut self, bytes: &[u8], start: usize, end: usize) {
        let granule_zero = |p: usize| is_zero(&bytes[p..end.min(p + ZERO_GRANULE)]);
        let mut p = start;
        while p < end {
            let zero = granule_zero(p);
            let mut q = end.min(p + ZERO_GRANULE);
            while q < end && granule_zero(q) == zero {
                q = end.min(q + ZERO_GRANULE);
            }
            if zero {
                let mut z = p;
                while z < q {
                    let n = (q - z).min(MAX_BLOCK);
                    self.list.push((z, n, true));
                    z += n;
                }
            } else {
                self.raw(p, q);
            }
            p = q;
        }
    }

    /// Writes the planned blocks (then, when `last`, the frame's empty last block) to `w`.
    /// (Through a buffer: vectored writes of the 3-byte headers and the payloads straight
    /// from `bytes` leave the kernel copying to misaligned destinations, which measured
    /// slower than one user-space copy into aligned 1 MiB writes.)
    fn write(&self, w: &mut impl Write, bytes: &[u8], last: bool) -> std::io::Result<()> {
        for &(p, n, rle) in &self.list {
            w.write_all(&block_header(false, u64::from(rle), n as u64))?;
            w.write_all(if rle { &[0] } else { &bytes[p..p + n] })?;
        }
        if last {
            w.write_all(&block_header(true, 0, 0))?;
        }
        Ok(())
    }
}

/// A zstd frame of `len` zero bytes made of RLE blocks: 2 GiB of holes cost 64 KiB and no
/// compression work. `len` 0 gives one empty raw block (a valid, empty frame).
fn zero_frame(len: u64) -> Vec<u8> {
    let mut f = frame_header(len).to_vec();
    let _ = rle_zeros(&mut f, len); // writing into a Vec cannot fail
    f.extend_from_slice(&block_header(true, 0, 0));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = BLOCK;

    #[test]
    fn segments_join_gaps_and_drop_short_runs() {
        assert!(stored_segments(&[], 1 << 30).is_empty());
        // 2 MiB of extents from 1 MiB, 40 KiB frames every 44 KiB: one run.
        let frames: Vec<(u64, u64)> = (0..47).map(|i| ((1 << 20) + i * 44 * 1024, 40 * 1024)).collect();
        assert_eq!(stored_segments(&frames, 1 << 30), [(1 << 20, 3 << 20)]);
        // Under half a block covered: not stored; a run of 4 blocks: too short.
        assert!(stored_segments(&[(0, K / 2 - 1)], 1 << 30).is_empty());
        assert!(stored_segments(&[(0, 4 * K)], 1 << 30).is_empty());
        // Two runs 512 KiB apart are joined; 2 MiB apart they are not.
        assert_eq!(stored_segments(&[(0, 8 * K), (12 * K, 8 * K)], 1 << 30), [(0, 20 * K)]);
        assert_eq!(stored_segments(&[(0, 8 * K), (24 * K, 8 * K)], 1 << 30), [(0, 8 * K), (24 * K, 32 * K)]);
        // Clipped to the image.
        assert_eq!(stored_segments(&[(0, 100 * K)], 9 * K + 5), [(0, 9 * K)]);
        assert_eq!(stored_segments(&[(0, 100 * K)], 9 * K + K / 2), [(0, 9 * K + K / 2)]);
    }

    #[test]
    fn pieces_end_at_windows_and_segment_edges() {
        let m = 1 << 20;
        assert_eq!(next_piece(0, 10 * m, None), (m, false));
        assert_eq!(next_piece(m + 5, 10 * m, None), (2 * m, false));
        assert_eq!(next_piece(9 * m + 1, 9 * m + 7, None), (9 * m + 7, false));
        let seg = Some((3 * m + (256 << 10), 5 * m));
        assert_eq!(next_piece(3 * m, 10 * m, seg), (3 * m + (256 << 10), false));
        assert_eq!(next_piece(3 * m + (256 << 10), 10 * m, seg), (3 * m + (512 << 10), true));
        assert_eq!(next_piece(4 * m + (512 << 10), 10 * m, seg), (5 * m, true));
    }

    #[test]
    fn blocks_split_at_zero_granules() {
        let mut bytes = vec![7u8; 300_000];
        bytes[1000..5000].fill(0); // whole zero granules from 1024 to 4992
        let mut b = Blocks::default();
        b.plan(&bytes, 0, &[]);
        let m = MAX_BLOCK;
        assert_eq!(
            b.list,
            [
                (0, 1024, false),
                (1024, 3968, true),
                (4992, m, false),
                (4992 + m, m, false),
                (4992 + 2 * m, 300_000 - 4992 - 2 * m, false)
            ]
        );
    }

    #[test]
    fn blocks_follow_named_ranges_across_pieces() {
        // The piece starts at 1000: zeros, a frame of 5000 bytes at 100 (zeros inside it stay
        // raw), 3092 bytes of padding, a frame from 8192 running past the piece's end.
        let mut bytes = vec![0u8; 10_000];
        bytes[100..5100].fill(9);
        bytes[2000..2500].fill(0);
        bytes[8192..].fill(5);
        let hints = [(1100, 5000), (9192, 4000)];
        let mut b = Blocks::default();
        b.plan(&bytes, 1000, &hints);
        assert_eq!(b.list, [(0, 100, true), (100, 5000, false), (5100, 3092, true), (8192, 1808, false)]);
        assert_eq!(b.next_hint, 1, "the second range goes on in the next piece");
        let mut v = Vec::new();
        b.write(&mut v, &bytes, true).unwrap();
        assert_eq!(v.len(), 2 * 4 + (3 + 5000) + (3 + 1808) + 3);
    }
}
