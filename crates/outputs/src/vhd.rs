//! A fixed VHD (Microsoft VHD spec v1.0; QEMU `block/vpc.c`; `shared/docs/outputs.md` §2):
//! the raw disk, rounded up to a whole MiB as Azure requires (§2.5), then one 512-byte
//! big-endian footer.
//!
//! The rounding only appends zeros: the raw image's bytes keep their offsets and the bytes
//! from the raw length to the next MiB read as zero (a hole). Such a disk's backup GPT is then
//! not at the last LBA; mkdisk rounds the disk size before partitioning so it is (§2.5).
//! The footer says creator `qem2` and geometry 65535/16/255, as `qemu-img convert -o
//! subformat=fixed,force_size` writes, so every QEMU generation takes the virtual size from
//! `current_size` (§2.3).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ranges::read_exact_at;
use crate::{data_ranges, io_err, is_zero, overflow, to_usize, Named, OutputError};

/// Bytes in the footer.
pub const VHD_FOOTER_SIZE: u64 = 512;
/// Azure's alignment of the virtual size.
const MIB: u64 = 1 << 20;
/// `VHD_MAX_SECTORS` in `vpc.c`: 2040 GiB.
const VHD_MAX_SECTORS: u64 = 0xff00_0000;
/// Block granularity at which zeros stay holes in the output.
const SPARSE_BLOCK: u64 = 4096;
/// Bytes read per positioned read.
const CHUNK: u64 = 1 << 20;

/// A CHS geometry as the footer stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

/// The VHD spec's CHS algorithm (appendix "CHS Calculation"; `vpc.c` `calculate_geometry`)
/// for `total_sectors` 512-byte sectors. `C*H*S` may fall short of the size; readers that go
/// by CHS then lose the tail, which is why [`write_vhd`] writes the "use current_size"
/// geometry 65535/16/255 instead. Kept for readers and tools that want the spec value.
#[must_use]
pub fn vhd_geometry(total_sectors: u64) -> Geometry {
    let t = total_sectors.min(65_535 * 16 * 255);
    let (spt, heads, cth) = if t >= 65_535 * 16 * 63 {
        (255u64, 16u64, t / 255)
    } else {
        let (mut spt, mut cth) = (17u64, t / 17);
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            (spt, heads, cth) = (31, 16, t / 31);
        }
        if cth >= heads * 1024 {
            (spt, heads, cth) = (63, 16, t / 63);
        }
        (spt, heads, cth)
    };
    // Bounded above: heads ≤ 16, spt ≤ 255, cylinders ≤ 65535 (t is capped).
    Geometry {
        cylinders: u16::try_from(cth / heads).unwrap_or(u16::MAX),
        heads: u8::try_from(heads).unwrap_or(u8::MAX),
        sectors_per_track: u8::try_from(spt).unwrap_or(u8::MAX),
    }
}

/// The footer checksum: the one's complement of the byte sum with the checksum field zero.
#[must_use]
pub fn vhd_checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &b)| a.wrapping_add(u32::from(b)));
    !sum
}

/// A UUID derived from `seed` (the first 16 bytes of its SHA-256, RFC 9562 version 8 and
/// variant bits set): the same seed gives the same id.
#[must_use]
pub fn vhd_uuid(seed: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(seed);
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The 512-byte fixed-disk footer for a `size`-byte disk (§2.1). `timestamp`: seconds since
/// 2000-01-01 00:00:00 UTC (`SOURCE_DATE_EPOCH - 946684800`, or 0).
#[must_use]
pub fn footer(size: u64, uuid: [u8; 16], timestamp: u32) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix"); // cookie
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features (reserved bit)
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // file format version
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    f[24..28].copy_from_slice(&timestamp.to_be_bytes());
    f[28..32].copy_from_slice(b"qem2"); // creator application
    f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    f[56..58].copy_from_slice(&65_535u16.to_be_bytes()); // cylinders: "use current_size"
    f[58] = 16; // heads
    f[59] = 255; // sectors per track
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&uuid);
    let sum = vhd_checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Writes `raw` as a fixed VHD `out` (created or truncated): the raw bytes at the same
/// offsets (4 KiB blocks of zeros and the raw file's holes stay holes), zeros up to the next
/// whole MiB, then the footer. Returns the output's length (the rounded size + 512).
///
/// # Errors
/// [`OutputError::Io`] for a failed read or write; [`OutputError::Unsupported`] over VHD's
/// 2040 GiB.
pub fn write_vhd(raw: &Path, out: &Path, uuid: [u8; 16], timestamp: u32) -> Result<u64, OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the VHD"))?;
    vhd_into(Named::new(&src, raw), Named::new(&dst, out), uuid, timestamp)
}

/// [`write_vhd`] between open files: `dst` must be empty.
///
/// # Errors
/// As [`write_vhd`].
pub fn vhd_into(raw: Named<'_>, out: Named<'_>, uuid: [u8; 16], timestamp: u32) -> Result<u64, OutputError> {
    let (src, dst) = (raw.file, out.file);
    let (raw, out) = (raw.path, out.path);
    let size = src.metadata().map_err(io_err(raw, "reading the raw image's size"))?.len();
    let disk = size.div_ceil(MIB).checked_mul(MIB).ok_or_else(|| overflow(raw, "VHD size"))?;
    if disk / 512 > VHD_MAX_SECTORS {
        let what = format!("a VHD holds at most 2040 GiB, the image rounds up to {disk} bytes");
        return Err(OutputError::Unsupported { path: raw.to_path_buf(), what });
    }
    let ranges = data_ranges(src).map_err(io_err(raw, "finding data extents (SEEK_DATA)"))?;
    copy_sparse(src, raw, &ranges, dst, out)?;
    let e = io_err(out, "writing the VHD footer");
    dst.write_all_at(&footer(disk, uuid, timestamp), disk).map_err(e)?;
    disk.checked_add(VHD_FOOTER_SIZE).ok_or_else(|| overflow(raw, "VHD size"))
}

/// Turns a raw image written in place into a fixed VHD: appends the footer after its `size`
/// bytes (the disk, already a whole number of MiB: place the backup GPT there, which a
/// rounding copy could not). Nothing is copied. Returns the VHD's length.
///
/// # Errors
/// [`OutputError::Unsupported`] when `size` is not a whole number of MiB or exceeds 2040 GiB;
/// [`OutputError::Io`] when the footer cannot be written.
pub fn vhd_finish(image: Named<'_>, size: u64, uuid: [u8; 16], timestamp: u32) -> Result<u64, OutputError> {
    let path = image.path;
    if size % MIB != 0 || size / 512 > VHD_MAX_SECTORS {
        let what = format!("a fixed VHD is a whole number of MiB up to 2040 GiB, and this disk has {size} bytes");
        return Err(OutputError::Unsupported { path: path.to_path_buf(), what });
    }
    image.file.write_all_at(&footer(size, uuid, timestamp), size).map_err(io_err(path, "writing the VHD footer"))?;
    size.checked_add(VHD_FOOTER_SIZE).ok_or_else(|| overflow(path, "VHD size"))
}

/// Copies the data extents of `src` to the same offsets of `dst`, leaving 4 KiB blocks of
/// zeros unwritten (`dst` is new, so they read as zero).
fn copy_sparse(src: &File, raw: &Path, ranges: &[(u64, u64)], dst: &File, out: &Path) -> Result<(), OutputError> {
    let mut buf = vec![0u8; to_usize(raw, CHUNK)?];
    for &(start, len) in ranges {
        let end = start.checked_add(len).ok_or_else(|| overflow(raw, "extent"))?;
        let mut off = start;
        while off < end {
            let n = to_usize(raw, CHUNK.min(end - off))?;
            let chunk = &mut buf[..n];
            read_exact_at(src, chunk, off).map_err(io_err(raw, "reading the raw image"))?;
            write_nonzero_blocks(chunk, off, dst, out)?;
            off += n as u64;
        }
    }
    Ok(())
}

/// Writes the parts of `chunk` (image offset `off`) outside all-zero 4 KiB-aligned blocks,
/// coalescing neighbouring non-zero blocks into one write.
fn write_nonzero_blocks(chunk: &[u8], off: u64, dst: &File, out: &Path) -> Result<(), OutputError> {
    let mut pos = 0usize;
    let mut run: Option<usize> = None;
    while pos < chunk.len() {
        let at = off + pos as u64;
        // ≤ chunk.len() + 4096, so it fits; the fallback is never taken.
        let next_block = usize::try_from((at / SPARSE_BLOCK + 1) * SPARSE_BLOCK - off).unwrap_or(chunk.len());
        let block_end = next_block.min(chunk.len());
        let zero = is_zero(&chunk[pos..block_end]);
        match (zero, run) {
            (false, None) => run = Some(pos),
            (true, Some(s)) => {
                dst.write_all_at(&chunk[s..pos], off + s as u64).map_err(io_err(out, "writing the VHD"))?;
                run = None;
            }
            _ => {}
        }
        pos = block_end;
    }
    if let Some(s) = run {
        dst.write_all_at(&chunk[s..], off + s as u64).map_err(io_err(out, "writing the VHD"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §2.2: 64 MiB → 963/8/17; the spec's branches (17, 31, 63, 255 sectors per track).
    #[test]
    fn geometry_examples() {
        let g = |c, h, s| Geometry { cylinders: c, heads: h, sectors_per_track: s };
        assert_eq!(vhd_geometry(131_072), g(963, 8, 17));
        assert_eq!(vhd_geometry(65_535 * 16 * 255 + 7), g(65_535, 16, 255));
        assert_eq!(vhd_geometry(65_535 * 16 * 63), g(16_191, 16, 255));
        // 1 GiB: cth = 2097152/17 = 123361 ≥ 16*1024 → 31 spt: 67650 ≥ 16384 → 63 spt.
        assert_eq!(vhd_geometry(2_097_152), g(2080, 16, 63));
        // 8 MiB: 16384/17 = 963, heads 4.
        assert_eq!(vhd_geometry(16_384), g(240, 4, 17));
        for s in [1u64, 100, 131_072, 2_097_152, 1 << 30, 0xff00_0000] {
            let g = vhd_geometry(s);
            let chs = u64::from(g.cylinders) * u64::from(g.heads) * u64::from(g.sectors_per_track);
            assert!(chs <= s, "{s}: {g:?}");
        }
    }

    #[test]
    fn footer_checksum_and_fields() {
        let f = footer(64 << 20, [7; 16], 0);
        assert_eq!(&f[0..8], b"conectix");
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        assert_eq!(stored, vhd_checksum(&f));
        // Independent form: the byte sum of the whole footer, checksum bytes included,
        // plus the checksum's own bytes, is !0 minus... simply recompute by hand.
        let mut sum = 0u32;
        for (i, &b) in f.iter().enumerate() {
            if !(64..68).contains(&i) {
                sum += u32::from(b);
            }
        }
        assert_eq!(stored, !sum);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 64 << 20);
    }

    #[test]
    fn uuid_is_stable_v8() {
        let a = vhd_uuid(b"main");
        assert_eq!(a, vhd_uuid(b"main"));
        assert_ne!(a, vhd_uuid(b"other"));
        assert_eq!(a[6] >> 4, 8);
        assert_eq!(a[8] >> 6, 2);
    }
}
