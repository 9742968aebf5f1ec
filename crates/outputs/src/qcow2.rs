//! qcow2 version 3 (`docs/interop/qcow2.txt`; `shared/docs/outputs.md` §1): 64 KiB clusters,
//! 16-bit refcounts, every refcount 0 or 1, only allocated guest clusters stored.
//!
//! Two writers share one table layout, which puts the tables after the data:
//!
//! | host clusters | contents |
//! |---|---|
//! | 0 | header, end-of-extensions marker, zeros |
//! | 1 .. `tables_start` | data clusters |
//! | next n_l2 | L2 tables in guest-region order |
//! | next l1_clusters | L1 table |
//! | next rt_clusters | refcount table |
//! | then | refcount blocks, only those covering a used cluster, ascending |
//!
//! - [`qcow2_finish`] (in place): the raw disk was written at host offset
//!   [`QCOW2_DATA_OFFSET`], so guest cluster `g` is host cluster `1 + g`; the clusters the
//!   file has data in (`SEEK_DATA`) are mapped, the holes stay holes with refcount 0, and only
//!   the tables are appended. Nothing is read or written twice.
//! - [`qcow2_into`] (conversion): the raw image is read once, front to back, and each
//!   non-zero guest cluster appended in guest order (host cluster `1 + i`).
//!
//! Every offset is a pure function of (virtual size, where the data clusters are)
//! ([`Qcow2Layout::plan`]), so the bytes are deterministic.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::ranges::{data_ranges_in, read_exact_at, touched_units};
use crate::{data_ranges, io_err, is_zero, overflow, to_usize, Named, OutputError};

/// The cluster size written (`cluster_bits` 16, QEMU's default).
pub const QCOW2_CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// Where [`qcow2_finish`] expects the raw disk in the file: right after the header cluster.
pub const QCOW2_DATA_OFFSET: u64 = QCOW2_CLUSTER_SIZE;
const CLUSTER_BITS: u32 = 16;
/// Entries in one L2 table (8-byte entries in one cluster): one L2 maps 512 MiB of guest.
const L2_ENTRIES: u64 = QCOW2_CLUSTER_SIZE / 8;
/// 16-bit refcounts in one refcount block: one block covers 2 GiB of file.
const RB_ENTRIES: u64 = QCOW2_CLUSTER_SIZE / 2;
/// L1/L2 entry bit 63: the cluster's refcount is exactly 1.
const QCOW_OFLAG_COPIED: u64 = 1 << 63;
/// QEMU's limits (`block/qcow2.h`): L1 ≤ 32 MiB, refcount table ≤ 8 MiB, offsets < 2^56.
const QCOW_MAX_L1_SIZE: u64 = 32 << 20;
const QCOW_MAX_REFTABLE_SIZE: u64 = 8 << 20;
const MAX_HOST_OFFSET: u64 = 1 << 56;
const HEADER_LENGTH: u32 = 104;

/// Where everything goes, in clusters (see the module table). Pure: sizes and positions only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Layout {
    /// Guest size in bytes (the raw image's length).
    pub virtual_size: u64,
    /// L1 entries: one per 512 MiB of guest.
    pub l1_size: u32,
    /// Clusters holding the L1 table (none for an empty guest: an unreferenced cluster would
    /// be a leak; `l1_table_offset` then points at the next structure and is never read).
    pub l1_clusters: u64,
    /// The first host cluster after the data clusters: the first L2 table.
    pub tables_start: u64,
    /// L2 tables (512 MiB guest regions holding a stored cluster).
    pub n_l2: u64,
    /// Refcount table clusters.
    pub rt_clusters: u64,
    /// The refcount blocks written, by index (block `k` covers host clusters
    /// `k * 32768 ..`), ascending; the others are absent (all refcounts 0).
    pub refblocks: Vec<u64>,
}

impl Qcow2Layout {
    /// The layout for a `virtual_size` guest whose `n_l2` regions hold data clusters at the
    /// ascending host clusters `data` (all below `tables_start`); `None` where QEMU's limits
    /// (L1 ≤ 32 MiB, refcount table ≤ 8 MiB, host offsets < 2^56) or `u64` arithmetic are
    /// exceeded.
    #[must_use]
    pub fn plan(virtual_size: u64, tables_start: u64, n_l2: u64, data: &[u64]) -> Option<Self> {
        let l1_entries = virtual_size.div_ceil(QCOW2_CLUSTER_SIZE.checked_mul(L2_ENTRIES)?);
        let data_ok = data.last().is_none_or(|&h| h < tables_start) && data.first().is_none_or(|&h| h > 0);
        if l1_entries.checked_mul(8)? > QCOW_MAX_L1_SIZE || n_l2 > l1_entries || !data_ok {
            return None;
        }
        let l1_clusters = l1_entries.checked_mul(8)?.div_ceil(QCOW2_CLUSTER_SIZE);
        let rt_start = tables_start.checked_add(n_l2)?.checked_add(l1_clusters)?;
        let mut rt_clusters = 1u64;
        let refblocks = loop {
            let blocks = refblocks_for(data, tables_start, rt_start.checked_add(rt_clusters)?)?;
            let need_rt = blocks.last().map_or(0, |&k| k + 1).checked_mul(8)?.div_ceil(QCOW2_CLUSTER_SIZE);
            if need_rt <= rt_clusters {
                break blocks;
            }
            rt_clusters = need_rt; // grows monotonically, so this ends
        };
        let l1_size = u32::try_from(l1_entries).ok()?;
        let layout = Self { virtual_size, l1_size, l1_clusters, tables_start, n_l2, rt_clusters, refblocks };
        let ok = rt_clusters.checked_mul(QCOW2_CLUSTER_SIZE)? <= QCOW_MAX_REFTABLE_SIZE
            && layout.file_size()? <= MAX_HOST_OFFSET;
        ok.then_some(layout)
    }

    /// First cluster of the L1 table.
    #[must_use]
    pub fn l1_start(&self) -> u64 {
        self.tables_start + self.n_l2
    }
    /// First refcount table cluster.
    #[must_use]
    pub fn rt_start(&self) -> u64 {
        self.l1_start() + self.l1_clusters
    }
    /// First refcount block.
    #[must_use]
    pub fn rb_start(&self) -> u64 {
        self.rt_start() + self.rt_clusters
    }
    /// The host clusters in the file (the used ones have refcount 1, the holes 0).
    #[must_use]
    pub fn total_clusters(&self) -> u64 {
        self.rb_start() + self.refblocks.len() as u64
    }
    /// The output file's length in bytes; `None` on overflow (never for a planned layout).
    #[must_use]
    pub fn file_size(&self) -> Option<u64> {
        self.total_clusters().checked_mul(QCOW2_CLUSTER_SIZE)
    }

    /// The 104-byte v3 header followed by the 8-byte end-of-extensions marker.
    #[must_use]
    pub fn header(&self) -> [u8; 112] {
        let cs = QCOW2_CLUSTER_SIZE;
        let mut h = [0u8; 112];
        h[0..4].copy_from_slice(b"QFI\xfb"); // magic
        h[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes()); // cluster_bits
        h[24..32].copy_from_slice(&self.virtual_size.to_be_bytes()); // size
        h[36..40].copy_from_slice(&self.l1_size.to_be_bytes()); // l1_size
        h[40..48].copy_from_slice(&(self.l1_start() * cs).to_be_bytes()); // l1_table_offset
        h[48..56].copy_from_slice(&(self.rt_start() * cs).to_be_bytes()); // refcount_table_offset
        let rt = u32::try_from(self.rt_clusters).unwrap_or(u32::MAX); // ≤ 128 by plan()
        h[56..60].copy_from_slice(&rt.to_be_bytes()); // refcount_table_clusters
        h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order
        h[100..104].copy_from_slice(&HEADER_LENGTH.to_be_bytes()); // header_length
        h // 104..112: end-of-extensions marker (type 0, length 0)
    }

    /// Whether host cluster `c` is used (refcount 1): the header, a data cluster, a table.
    fn used(&self, data: &[u64], c: u64) -> bool {
        c == 0 || (self.tables_start..self.total_clusters()).contains(&c) || data.binary_search(&c).is_ok()
    }
}

/// The refcount blocks that cover host cluster 0, the `data` clusters and the tables
/// `tables_start .. rb_start` plus the blocks themselves (placed from `rb_start` on).
fn refblocks_for(data: &[u64], tables_start: u64, rb_start: u64) -> Option<Vec<u64>> {
    let mut fixed: Vec<u64> = std::iter::once(0).chain(data.iter().map(|h| h / RB_ENTRIES)).collect();
    fixed.dedup();
    let mut n = 0u64;
    loop {
        let end = rb_start.checked_add(n)?; // one past the last used cluster
        let mut blocks = fixed.clone();
        blocks.extend(tables_start / RB_ENTRIES..=(end - 1) / RB_ENTRIES);
        blocks.sort_unstable();
        blocks.dedup();
        if blocks.len() as u64 == n {
            return Some(blocks);
        }
        n = blocks.len() as u64; // grows monotonically with n, so this ends
    }
}

/// Converts the raw image `raw` into a qcow2 v3 image `out` (created or truncated) of the
/// same virtual size, storing only the guest clusters that hold a non-zero byte. Returns the
/// output's length in bytes.
///
/// # Errors
/// [`OutputError::Io`] for a failed read or write; [`OutputError::Unsupported`] when the raw
/// length is not a whole number of 512-byte sectors (QEMU drops a partial sector) or exceeds
/// QEMU's qcow2 limits.
pub fn write_qcow2(raw: &Path, out: &Path) -> Result<u64, OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the qcow2 image"))?;
    qcow2_into(Named::new(&src, raw), Named::new(&dst, out))
}

/// Refuses a guest size QEMU cannot take: not whole sectors, or an L1 table over QEMU's limit.
/// (The layout planned for the clusters actually stored checks every other limit.)
fn check_size(size: u64, path: &Path) -> Result<(), OutputError> {
    if size % 512 != 0 {
        let what = format!("qcow2 needs a whole number of 512-byte sectors, the image has {size} bytes");
        return Err(OutputError::Unsupported { path: path.to_path_buf(), what });
    }
    let clusters = size.div_ceil(QCOW2_CLUSTER_SIZE);
    Qcow2Layout::plan(size, clusters + 1, 0, &[]).map(|_| ()).ok_or_else(|| overflow(path, "qcow2 layout"))
}

/// [`write_qcow2`] between open files: `dst` must be empty.
///
/// # Errors
/// As [`write_qcow2`].
pub fn qcow2_into(raw: Named<'_>, out: Named<'_>) -> Result<u64, OutputError> {
    let (src, dst) = (raw.file, out.file);
    let (raw, out) = (raw.path, out.path);
    let size = src.metadata().map_err(io_err(raw, "reading the raw image's size"))?.len();
    check_size(size, raw)?;
    let ranges = data_ranges(src).map_err(io_err(raw, "finding data extents (SEEK_DATA)"))?;
    let guest = write_data_clusters(src, raw, size, &ranges, dst, out)?;
    let host: Vec<u64> = (1..=guest.len() as u64).collect();
    finish(size, &guest, &host, 1 + guest.len() as u64, Named::new(dst, out))
}

/// Makes the file holding a raw disk of `size` bytes at [`QCOW2_DATA_OFFSET`] (and nothing
/// after it; `image.base` must say so) a qcow2 v3 image of that disk: maps every cluster that
/// holds a non-zero byte to itself, appends the tables and writes the header into the first
/// cluster. Returns the file's new length.
///
/// Which clusters are mapped depends on the disk's bytes only, not on how the host file system
/// reports holes (one that turns zero blocks into holes, or reports none, gives the same
/// file): `SEEK_DATA` only narrows what is read, and a cluster with data is told by its first
/// 4 KiB holding a non-zero byte in nearly every case.
///
/// # Errors
/// As [`write_qcow2`]; [`OutputError::Unsupported`] for another `image.base`.
pub fn qcow2_finish(image: Named<'_>, size: u64) -> Result<u64, OutputError> {
    let (file, path) = (image.file, image.path);
    if image.base != QCOW2_DATA_OFFSET {
        let what = format!("a qcow2 written in place has its disk at byte {QCOW2_DATA_OFFSET}, not {}", image.base);
        return Err(OutputError::Unsupported { path: path.to_path_buf(), what });
    }
    check_size(size, path)?;
    let ranges =
        data_ranges_in(file, QCOW2_DATA_OFFSET, size).map_err(io_err(path, "finding data extents (SEEK_DATA)"))?;
    let mut guest = Vec::new();
    let mut buf = vec![0u8; PROBE];
    for g in touched_units(&ranges, QCOW2_CLUSTER_SIZE) {
        if cluster_has_data(image, size, g, &mut buf)? {
            guest.push(g);
        }
    }
    let host: Vec<u64> = guest.iter().map(|g| g + 1).collect();
    finish(size, &guest, &host, 1 + size.div_ceil(QCOW2_CLUSTER_SIZE), image)
}

/// Bytes read at a time when looking for a non-zero byte in a cluster.
const PROBE: usize = 4096;

/// Whether guest cluster `g` of the `size`-byte disk in `image` holds a non-zero byte, read
/// [`PROBE`] bytes at a time up to the first one that does.
fn cluster_has_data(image: Named<'_>, size: u64, g: u64, buf: &mut [u8]) -> Result<bool, OutputError> {
    let start = g.checked_mul(QCOW2_CLUSTER_SIZE).ok_or_else(|| overflow(image.path, "cluster offset"))?;
    let end = start.saturating_add(QCOW2_CLUSTER_SIZE).min(size);
    let mut off = start;
    while off < end {
        let n = to_usize(image.path, (end - off).min(PROBE as u64))?;
        read_exact_at(image.file, &mut buf[..n], image.base + off).map_err(io_err(image.path, "reading the disk"))?;
        if !is_zero(&buf[..n]) {
            return Ok(true);
        }
        off += n as u64;
    }
    Ok(false)
}

/// Plans the layout for guest clusters `guest` stored at host clusters `host` (both
/// ascending, pairwise), the tables from host cluster `tables_start` on, then writes the
/// tables and the header. Returns the file's length.
fn finish(size: u64, guest: &[u64], host: &[u64], tables_start: u64, out: Named<'_>) -> Result<u64, OutputError> {
    let n_l2 = count_regions(guest);
    let layout = Qcow2Layout::plan(size, tables_start, n_l2, host).ok_or_else(|| overflow(out.path, "qcow2 layout"))?;
    write_tables(&layout, guest, host, out)?;
    let e = io_err(out.path, "writing the qcow2 header");
    out.file.write_all_at(&layout.header(), 0).map_err(e)?;
    layout.file_size().ok_or_else(|| overflow(out.path, "qcow2 file size"))
}

/// Reads every cluster a data extent touches, once, in guest order, and appends the non-zero
/// ones (zero-padded to a whole cluster) from host cluster 1 on. Returns their guest indices.
fn write_data_clusters(
    src: &File,
    raw: &Path,
    size: u64,
    ranges: &[(u64, u64)],
    dst: &File,
    out: &Path,
) -> Result<Vec<u64>, OutputError> {
    let cs = QCOW2_CLUSTER_SIZE;
    let mut w = BufWriter::with_capacity(1 << 20, dst);
    w.seek(SeekFrom::Start(cs)).map_err(io_err(out, "seeking in the qcow2 image"))?;
    let mut buf = vec![0u8; to_usize(raw, cs)?];
    let mut stored = Vec::new();
    for cluster in touched_units(ranges, cs) {
        let off = cluster.checked_mul(cs).ok_or_else(|| overflow(raw, "cluster offset"))?;
        let len = to_usize(raw, cs.min(size.saturating_sub(off)))?;
        buf[len..].fill(0);
        read_exact_at(src, &mut buf[..len], off).map_err(io_err(raw, "reading the raw image"))?;
        if !is_zero(&buf) {
            w.write_all(&buf).map_err(io_err(out, "writing a qcow2 data cluster"))?;
            stored.push(cluster);
        }
    }
    w.flush().map_err(io_err(out, "writing a qcow2 data cluster"))?;
    Ok(stored)
}

/// The number of 512 MiB guest regions (L2 tables) that ascending `clusters` touch.
fn count_regions(clusters: &[u64]) -> u64 {
    let mut n = 0u64;
    let mut last = None;
    for &c in clusters {
        let r = c / L2_ENTRIES;
        if last != Some(r) {
            n += 1;
            last = Some(r);
        }
    }
    n
}

/// Writes the L2 tables, the L1 table, the refcount table and the refcount blocks where
/// `layout` puts them (guest cluster `guest[i]` is host cluster `host[i]`), checking the plan
/// as it goes.
fn write_tables(layout: &Qcow2Layout, guest: &[u64], host: &[u64], out: Named<'_>) -> Result<(), OutputError> {
    let cs = QCOW2_CLUSTER_SIZE;
    let path = out.path;
    let put = |cluster: u64, entries: &[u64]| -> Result<(), OutputError> {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        out.file.write_all_at(&bytes, cluster * cs).map_err(io_err(path, "writing the qcow2 tables"))
    };
    let mut l1 = vec![0u64; to_usize(path, layout.l1_clusters * L2_ENTRIES)?];
    let mut l2 = vec![0u64; to_usize(path, L2_ENTRIES)?];
    let mut pos = layout.tables_start;
    let mut i = 0usize;
    while i < guest.len() {
        let region = guest[i] / L2_ENTRIES;
        l2.fill(0);
        while i < guest.len() && guest[i] / L2_ENTRIES == region {
            l2[to_usize(path, guest[i] % L2_ENTRIES)?] = (host[i] * cs) | QCOW_OFLAG_COPIED; // < 2^56 by plan()
            i += 1;
        }
        l1[to_usize(path, region)?] = (pos * cs) | QCOW_OFLAG_COPIED;
        put(pos, &l2)?;
        pos += 1;
    }
    assert_eq!(pos, layout.l1_start(), "qcow2: L2 tables as planned");
    put(pos, &l1)?;
    let mut rt = vec![0u64; to_usize(path, layout.rt_clusters * L2_ENTRIES)?];
    for (n, &k) in layout.refblocks.iter().enumerate() {
        rt[to_usize(path, k)?] = (layout.rb_start() + n as u64) * cs;
    }
    put(layout.rt_start(), &rt)?;
    let mut rb = vec![0u8; to_usize(path, cs)?];
    for (n, &k) in layout.refblocks.iter().enumerate() {
        for (j, r) in rb.chunks_exact_mut(2).enumerate() {
            let used = layout.used(host, k * RB_ENTRIES + j as u64);
            r.copy_from_slice(&u16::from(used).to_be_bytes());
        }
        let e = io_err(path, "writing the qcow2 tables");
        out.file.write_all_at(&rb, (layout.rb_start() + n as u64) * cs).map_err(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(n: u64) -> Vec<u64> {
        (1..=n).collect()
    }

    /// §1.3's worked example: 8 GiB virtual, 24 576 data clusters in all 16 regions. With the
    /// tables after the data the cluster count is the same (only the order differs).
    #[test]
    fn worked_example() {
        let l = Qcow2Layout::plan(8 << 30, 24_577, 16, &dense(24_576)).unwrap();
        assert_eq!((l.l1_size, l.l1_clusters, l.refblocks.len(), l.rt_clusters), (16, 1, 1, 1));
        assert_eq!(l.total_clusters(), 24_596);
        assert_eq!(l.file_size(), Some(1_611_923_456));
    }

    /// Swept over sizes from empty to QEMU's limits, dense and in place: every used host
    /// cluster has a refcount block, the refcount table holds every block, the L1 covers the
    /// guest, nothing overlaps.
    #[test]
    fn sweep_sizes() {
        let sizes = [0u64, 512, 65_536, 65_536 + 512, 512 << 20, (512 << 20) + 512, 2 << 30, 1 << 40, 1 << 50];
        for &size in &sizes {
            let clusters = size.div_ceil(QCOW2_CLUSTER_SIZE);
            for n_data in [0, 1, clusters / 3, clusters].map(|n| n.min(clusters).min(1 << 20)) {
                let n_l2 = n_data.min(size.div_ceil(512 << 20));
                let inplace: Vec<u64> = (0..n_data).map(|i| 1 + i * (clusters / n_data.max(1))).collect();
                for (start, data) in [(n_data + 1, dense(n_data)), (clusters + 1, inplace)] {
                    let Some(l) = Qcow2Layout::plan(size, start, n_l2, &data) else {
                        assert!(size > (1 << 46), "refused {size} {n_data}");
                        continue;
                    };
                    assert!(u64::from(l.l1_size) * (512 << 20) >= size);
                    assert!(l.l1_clusters * L2_ENTRIES >= u64::from(l.l1_size));
                    assert!(l.rt_clusters * L2_ENTRIES > *l.refblocks.last().unwrap());
                    let covered = |c: u64| l.refblocks.binary_search(&(c / RB_ENTRIES)).is_ok();
                    assert!(covered(0) && data.iter().all(|&c| covered(c)));
                    assert!((l.tables_start..l.total_clusters()).all(covered));
                    assert!(l
                        .refblocks
                        .iter()
                        .all(|&k| (k * RB_ENTRIES..(k + 1) * RB_ENTRIES).any(|c| l.used(&data, c))));
                    assert_eq!(
                        l.total_clusters(),
                        start + n_l2 + l.l1_clusters + l.rt_clusters + l.refblocks.len() as u64
                    );
                }
            }
        }
        assert!(Qcow2Layout::plan(1 << 60, 1, 0, &[]).is_none(), "L1 over 32 MiB");
    }

    #[test]
    fn header_fields() {
        let l = Qcow2Layout::plan(64 << 20, 4, 1, &dense(3)).unwrap();
        let h = l.header();
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(u64::from_be_bytes(h[40..48].try_into().unwrap()), 5 * QCOW2_CLUSTER_SIZE);
        assert_eq!(u64::from_be_bytes(h[48..56].try_into().unwrap()), 6 * QCOW2_CLUSTER_SIZE);
        assert_eq!(l.total_clusters(), 8);
    }

    #[test]
    fn regions() {
        assert_eq!(count_regions(&[]), 0);
        assert_eq!(count_regions(&[0, 1, 8191, 8192, 40_000]), 3);
    }
}
