//! Data extents of a sparse file (`SEEK_DATA`/`SEEK_HOLE`) and a sequential reader over them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;

/// The data extents of `file` as `(offset, len)`, sorted, non-overlapping, adjacent ones
/// merged, clipped to the file's length. Holes (ranges the filesystem reports with
/// `SEEK_HOLE`) are left out; on a filesystem without hole reporting the whole file is one
/// extent. Moves the file's offset (every reader here uses positioned reads).
///
/// # Errors
/// `fstat` or `lseek` failing with anything but `ENXIO` (no data past the offset).
pub fn data_ranges(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let size = file.metadata()?.len();
    data_ranges_in(file, 0, size)
}

/// [`data_ranges`] of the window `base .. base + size` of `file` (a disk stored at an offset,
/// as in a qcow2 written in place), as offsets from `base`.
///
/// # Errors
/// As [`data_ranges`].
pub fn data_ranges_in(file: &File, base: u64, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let end_of = base.checked_add(size).ok_or_else(|| io::Error::other("window overflows"))?;
    let size = file.metadata()?.len().min(end_of);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = base;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            // A filesystem that reports no progress: take the rest as data rather than loop.
            push_merged(&mut out, start, size);
            break;
        }
        push_merged(&mut out, start, end);
        pos = end;
    }
    Ok(out.into_iter().map(|(s, e)| (s - base, e - s)).collect())
}

/// Appends `[start, end)` to sorted `[start, end)` pairs, merging with the last when they touch.
fn push_merged(out: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match out.last_mut() {
        Some(last) if start <= last.1 => last.1 = last.1.max(end),
        _ => out.push((start, end)),
    }
}

/// Reads exactly `buf.len()` bytes at `offset` (holes read as zeros, as always); a file
/// that ends first (a raw image truncated while we read it) is an `UnexpectedEof` error.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or_else(|| io::Error::other("offset overflows"))?;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("raw image ends before byte {at}")))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The units of `unit` bytes (clusters, blocks) that any data extent touches, ascending, each
/// once: unit `i` covers `[i*unit, (i+1)*unit)`.
pub(crate) fn touched_units(ranges: &[(u64, u64)], unit: u64) -> impl Iterator<Item = u64> + '_ {
    let mut next = 0u64; // first unit not yet yielded
    ranges.iter().flat_map(move |&(off, len)| {
        let first = (off / unit).max(next);
        let end = off.saturating_add(len).div_ceil(unit);
        next = next.max(end);
        first..end
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_units_dedups_shared_units() {
        let r = [(0, 1), (100, 10), (4096, 1), (4097, 5000), (20000, 1)];
        let v: Vec<u64> = touched_units(&r, 4096).collect();
        assert_eq!(v, [0, 1, 2, 4]);
        assert_eq!(touched_units(&[], 4096).count(), 0);
    }

    #[test]
    fn merges_touching() {
        let mut v = Vec::new();
        push_merged(&mut v, 0, 10);
        push_merged(&mut v, 10, 20);
        push_merged(&mut v, 30, 40);
        assert_eq!(v, [(0, 20), (30, 40)]);
    }
}
