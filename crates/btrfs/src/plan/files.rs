//! Stage 3, files: how each regular file is stored — inline in its `EXTENT_DATA` item, or
//! as sector-aligned ranges cut into pieces, raw or one zstd frame per 128 KiB chunk. Every
//! candidate chunk is compressed once, in parallel; the frames that save a sector are kept
//! (in memory or in the scratch file) for `write`.

use mkdisk_tree::{FileData, Kind, Tree};
use rayon::prelude::*;

use super::number::Numbered;
use super::{err_plan, round_up, u64_from};
use crate::frames::{self, Frame, Spill};
use crate::items;
use crate::source::{source_name, zstd_frame, Reader};
use crate::{BtrfsError, Compress, GENERATION, MAX_COMPRESSED_CHUNK, MAX_INLINE, SECTORSIZE};

/// How one regular file is stored.
pub(crate) enum FilePlan {
    None,
    /// The inline `EXTENT_DATA` item's payload (header and the file bytes, or with `zstd` one
    /// zstd frame of them).
    Inline {
        item: Vec<u8>,
        zstd: bool,
    },
    /// Sector-aligned data ranges (start, len).
    Ranges(Vec<(u64, u64)>),
}

/// One piece of a file's data: raw (splittable by the allocator) or one zstd frame.
pub(crate) struct Piece {
    pub off: u64,
    pub len: u64,
    pub zstd: Option<Frame>,
}

/// Read the first `size` bytes of a small file (at most one sector).
fn read_small(fd: &FileData) -> Result<Vec<u8>, BtrfsError> {
    let len = usize::try_from(fd.size).expect("only files under one sector are read whole");
    let mut buf = vec![0u8; len];
    Reader::open(&fd.source)?.read(fd.size, 0, &mut buf)?;
    Ok(buf)
}

/// How a file is stored. Inline: files up to [`MAX_INLINE`] bytes, and with compression also
/// files under one sector whose frame is strictly smaller than the file and at most
/// [`MAX_INLINE`] bytes (the kernel's rule: it inlines a compressed range of one sector at
/// offset 0 when the compressed bytes fit `max_inline`).
pub(crate) fn file_plan(fd: &FileData, compress: Option<Compress>) -> Result<FilePlan, BtrfsError> {
    if fd.size == 0 || fd.runs.is_empty() {
        return Ok(FilePlan::None);
    }
    let inline_max = if compress.is_some() { SECTORSIZE - 1 } else { MAX_INLINE };
    if fd.size <= inline_max {
        let buf = read_small(fd)?;
        if let Some(Compress::Zstd { level, .. }) = compress {
            let frame = zstd_frame(level, &buf)
                .map_err(|message| BtrfsError::Compress { path: source_name(&fd.source), message })?;
            if frame.len() < buf.len() && u64_from(frame.len()) <= MAX_INLINE {
                let item = items::inline_extent(GENERATION, fd.size, items::COMPRESS_ZSTD, &frame);
                return Ok(FilePlan::Inline { item, zstd: true });
            }
        }
        if fd.size <= MAX_INLINE {
            return Ok(FilePlan::Inline { item: items::inline_extent(GENERATION, fd.size, 0, &buf), zstd: false });
        }
    }
    let end_max = round_up(fd.size, SECTORSIZE)?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for r in &fd.runs {
        if r.len == 0 || r.offset >= fd.size {
            continue;
        }
        let s = r.offset / SECTORSIZE * SECTORSIZE;
        let e =
            round_up(r.offset.checked_add(r.len).ok_or_else(|| err_plan("run overflow"))?, SECTORSIZE)?.min(end_max);
        match ranges.last_mut() {
            Some(last) if s <= last.0 + last.1 => {
                let new_end = e.max(last.0 + last.1);
                last.1 = new_end - last.0;
            }
            _ => ranges.push((s, e - s)),
        }
    }
    Ok(FilePlan::Ranges(ranges))
}

/// The file plan of every inode of `n` (in parallel).
pub(crate) fn file_plans(
    tree: &Tree,
    n: &Numbered<'_>,
    compress: Option<Compress>,
) -> Result<Vec<FilePlan>, BtrfsError> {
    n.order
        .par_iter()
        .map(|&id| match &tree.inode(id).kind {
            Kind::File(fd) => file_plan(fd, compress),
            _ => Ok(FilePlan::None),
        })
        .collect()
}

/// Chunks of a range that are compression candidates: (offset, len).
pub(crate) fn chunks_of(range: (u64, u64)) -> impl Iterator<Item = (u64, u64)> {
    let (s, l) = range;
    let n = l.div_ceil(MAX_COMPRESSED_CHUNK);
    (0..n).map(move |i| {
        let off = s + i * MAX_COMPRESSED_CHUNK;
        (off, (s + l - off).min(MAX_COMPRESSED_CHUNK))
    })
}

/// One chunk to compress.
pub(crate) struct Cand<'b> {
    fd: &'b FileData,
    off: u64,
    len: u64,
    level: i32,
}

/// Append the compression candidates of one fs tree (chunks over one sector, in file order).
pub(crate) fn candidates<'b>(
    tree: &'b Tree,
    n: &Numbered<'_>,
    files: &[FilePlan],
    compress: Option<Compress>,
    out: &mut Vec<Cand<'b>>,
) {
    let Some(Compress::Zstd { level, .. }) = compress else { return };
    for (pos, fp) in files.iter().enumerate() {
        let FilePlan::Ranges(ranges) = fp else { continue };
        let Kind::File(fd) = &tree.inode(n.order[pos]).kind else { continue };
        for &r in ranges {
            for (off, len) in chunks_of(r) {
                if len > SECTORSIZE {
                    out.push(Cand { fd, off, len, level });
                }
            }
        }
    }
}

/// Compress every candidate, in parallel; the frames that save at least one sector are kept
/// (in `spill` when there is one).
pub(crate) fn compress_all(cands: &[Cand<'_>], spill: Option<&Spill>) -> Result<Vec<Option<Frame>>, BtrfsError> {
    cands
        .par_iter()
        .map(|c| {
            let len = usize::try_from(c.len.min(c.fd.size.saturating_sub(c.off)))
                .expect("a candidate is at most MAX_COMPRESSED_CHUNK bytes");
            let mut buf = vec![0u8; len];
            Reader::open(&c.fd.source)?.read(c.fd.size, c.off, &mut buf)?;
            let frame = zstd_frame(c.level, &buf)
                .map_err(|message| BtrfsError::Compress { path: source_name(&c.fd.source), message })?;
            let saves = round_up(u64_from(frame.len()), SECTORSIZE)?.saturating_add(SECTORSIZE) <= c.len;
            if saves {
                Ok(Some(frames::keep(spill, frame)?))
            } else {
                Ok(None)
            }
        })
        .collect()
}

/// Append a raw range, merged with a raw predecessor it continues.
fn push_raw(pieces: &mut Vec<Piece>, off: u64, len: u64) {
    match pieces.last_mut() {
        Some(p) if p.zstd.is_none() && p.off + p.len == off => p.len += len,
        _ => pieces.push(Piece { off, len, zstd: None }),
    }
}

/// The pieces of one file's ranges; `frames` yields the outcome of each candidate in the
/// order of [`candidates`]. Without `force`, a file whose first chunk does not compress is
/// stored raw.
fn file_pieces(
    ranges: &[(u64, u64)],
    compress: Option<Compress>,
    frames: &mut impl Iterator<Item = Option<Frame>>,
) -> Result<Vec<Piece>, BtrfsError> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut nocompress = false;
    let mut first = true;
    for &r in ranges {
        let Some(Compress::Zstd { force, .. }) = compress else {
            push_raw(&mut pieces, r.0, r.1);
            continue;
        };
        for (off, len) in chunks_of(r) {
            if len <= SECTORSIZE {
                push_raw(&mut pieces, off, len);
                continue;
            }
            let frame = frames.next().ok_or_else(|| err_plan("compression sizes"))?;
            let keep = !nocompress && frame.is_some();
            if first && !keep && !force {
                nocompress = true;
            }
            first = false;
            match frame.filter(|_| keep) {
                Some(frame) => pieces.push(Piece { off, len, zstd: Some(frame) }),
                None => push_raw(&mut pieces, off, len),
            }
        }
    }
    Ok(pieces)
}

/// The pieces of every file of one fs tree (same traversal as [`candidates`]).
pub(crate) fn pieces(
    files: &[FilePlan],
    compress: Option<Compress>,
    frames: &mut impl Iterator<Item = Option<Frame>>,
) -> Result<Vec<Vec<Piece>>, BtrfsError> {
    files
        .iter()
        .map(|fp| match fp {
            FilePlan::Ranges(ranges) => file_pieces(ranges, compress, frames),
            _ => Ok(Vec::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::DataRun as Run;

    use super::*;

    const ZSTD: Option<Compress> = Some(Compress::Zstd { level: 3, force: false });

    #[test]
    fn chunks_of_splits_at_128k() {
        let v: Vec<_> = chunks_of((4096, 300_000)).collect();
        assert_eq!(v, vec![(4096, 131_072), (135_168, 131_072), (266_240, 37_856)]);
    }

    #[test]
    fn small_files_are_inline_and_compressed_when_smaller() {
        let fd = FileData::from_bytes(vec![b'a'; 3000]);
        assert!(matches!(file_plan(&fd, None).unwrap(), FilePlan::Ranges(r) if r == vec![(0, 4096)]));
        assert!(matches!(file_plan(&fd, ZSTD).unwrap(), FilePlan::Inline { zstd: true, .. }));
        let fd = FileData::from_bytes(vec![b'a'; 2048]);
        assert!(matches!(file_plan(&fd, None).unwrap(), FilePlan::Inline { zstd: false, .. }));
        assert!(matches!(file_plan(&FileData::from_bytes(Vec::new()), ZSTD).unwrap(), FilePlan::None));
    }

    #[test]
    fn ranges_are_sector_aligned_and_merged() {
        let mut fd = FileData::from_bytes(vec![1u8; 100_000]);
        fd.runs = vec![Run { offset: 100, len: 10 }, Run { offset: 5000, len: 10 }, Run { offset: 90_000, len: 50 }];
        let FilePlan::Ranges(r) = file_plan(&fd, None).unwrap() else { panic!("ranges expected") };
        assert_eq!(r, vec![(0, 8192), (86_016, 4096)]);
    }

    #[test]
    fn first_incompressible_chunk_makes_the_file_raw_unless_forced() {
        let frame = || Some(Frame { len: 10, at: crate::frames::FrameAt::Mem(vec![0u8; 10].into()) });
        let ranges = [(0, 3 * MAX_COMPRESSED_CHUNK + 4096)];
        let mut outcomes = vec![None, frame(), frame()].into_iter();
        let p = file_pieces(&ranges, ZSTD, &mut outcomes).unwrap();
        assert_eq!(p.len(), 1, "one raw piece");
        assert_eq!((p[0].off, p[0].len), (0, 3 * MAX_COMPRESSED_CHUNK + 4096));
        let forced = Some(Compress::Zstd { level: 3, force: true });
        let mut outcomes = vec![None, frame(), frame()].into_iter();
        let p = file_pieces(&ranges, forced, &mut outcomes).unwrap();
        let kinds: Vec<bool> = p.iter().map(|p| p.zstd.is_some()).collect();
        assert_eq!(kinds, vec![false, true, true, false], "raw, two frames, raw tail");
        assert!(file_pieces(&ranges, forced, &mut std::iter::empty()).is_err(), "missing outcomes");
    }
}
