//! qcow2 version 3 (`docs/interop/qcow2.txt`; `shared/docs/outputs.md` §1): 64 KiB clusters,
//! 16-bit refcounts, every refcount 1, only non-zero guest clusters stored.
//!
//! The raw image is read once, front to back, and each output byte written once. Which guest
//! clusters are non-zero is only known after reading them, so this writer cannot put the
//! tables first as §1.4's plan-driven layout does; it puts them last:
//!
//! | host clusters | contents |
//! |---|---|
//! | 0 | header, end-of-extensions marker, zeros |
//! | 1 ..= n_data | data clusters in ascending guest order (the last one zero-padded) |
//! | next n_l2 | L2 tables in guest-region order |
//! | next l1_clusters | L1 table |
//! | next n_rb | refcount blocks: `1` for every host cluster `0 .. N` |
//! | next rt_clusters | refcount table |
//!
//! Every offset is a pure function of (virtual size, the set of non-zero guest clusters)
//! ([`Qcow2Layout::plan`]), so the bytes are deterministic.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::ranges::{read_exact_at, touched_units};
use crate::{data_ranges, io_err, is_zero, overflow, to_usize, Named, OutputError};

/// The cluster size written (`cluster_bits` 16, QEMU's default).
pub const QCOW2_CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
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

/// Where everything goes, in clusters (see the module table). Pure: sizes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Layout {
    /// Guest size in bytes (the raw image's length).
    pub virtual_size: u64,
    /// L1 entries: one per 512 MiB of guest.
    pub l1_size: u32,
    /// Clusters holding the L1 table (none for an empty guest: an unreferenced cluster would
    /// be a leak; `l1_table_offset` then points at the next structure and is never read).
    pub l1_clusters: u64,
    /// Stored data clusters.
    pub n_data: u64,
    /// L2 tables (512 MiB guest regions holding a stored cluster).
    pub n_l2: u64,
    /// Refcount blocks.
    pub n_rb: u64,
    /// Refcount table clusters.
    pub rt_clusters: u64,
}

impl Qcow2Layout {
    /// The layout for `n_data` stored clusters in `n_l2` regions of a `virtual_size` guest;
    /// `None` where QEMU's limits (L1 ≤ 32 MiB, refcount table ≤ 8 MiB, host offsets
    /// < 2^56) or `u64` arithmetic are exceeded.
    #[must_use]
    pub fn plan(virtual_size: u64, n_data: u64, n_l2: u64) -> Option<Self> {
        let l1_entries = virtual_size.div_ceil(QCOW2_CLUSTER_SIZE.checked_mul(L2_ENTRIES)?);
        if l1_entries.checked_mul(8)? > QCOW_MAX_L1_SIZE || n_l2 > l1_entries {
            return None;
        }
        let l1_clusters = l1_entries.checked_mul(8)?.div_ceil(QCOW2_CLUSTER_SIZE);
        let fixed = 1u64.checked_add(n_data)?.checked_add(n_l2)?.checked_add(l1_clusters)?;
        let (mut n_rb, mut rt_clusters) = (1u64, 1u64);
        loop {
            // Grows monotonically with (n_rb, rt_clusters), so this reaches a fixed point.
            let total = fixed.checked_add(n_rb)?.checked_add(rt_clusters)?;
            let need_rb = total.div_ceil(RB_ENTRIES);
            let need_rt = need_rb.checked_mul(8)?.div_ceil(QCOW2_CLUSTER_SIZE);
            if (need_rb, need_rt) == (n_rb, rt_clusters) {
                break;
            }
            (n_rb, rt_clusters) = (need_rb.max(n_rb), need_rt.max(rt_clusters));
        }
        let l1_size = u32::try_from(l1_entries).ok()?;
        let layout = Self { virtual_size, l1_size, l1_clusters, n_data, n_l2, n_rb, rt_clusters };
        let ok = rt_clusters.checked_mul(QCOW2_CLUSTER_SIZE)? <= QCOW_MAX_REFTABLE_SIZE
            && layout.file_size()? <= MAX_HOST_OFFSET;
        ok.then_some(layout)
    }

    /// First cluster of the L2 tables.
    #[must_use]
    pub fn l2_start(&self) -> u64 {
        1 + self.n_data
    }
    /// First cluster of the L1 table.
    #[must_use]
    pub fn l1_start(&self) -> u64 {
        self.l2_start() + self.n_l2
    }
    /// First refcount block.
    #[must_use]
    pub fn rb_start(&self) -> u64 {
        self.l1_start() + self.l1_clusters
    }
    /// First refcount table cluster.
    #[must_use]
    pub fn rt_start(&self) -> u64 {
        self.rb_start() + self.n_rb
    }
    /// Every host cluster (all refcount 1).
    #[must_use]
    pub fn total_clusters(&self) -> u64 {
        self.rt_start() + self.rt_clusters
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

/// [`write_qcow2`] between open files: `dst` must be empty.
///
/// # Errors
/// As [`write_qcow2`].
pub fn qcow2_into(raw: Named<'_>, out: Named<'_>) -> Result<u64, OutputError> {
    let (src, dst) = (raw.file, out.file);
    let (raw, out) = (raw.path, out.path);
    let size = src.metadata().map_err(io_err(raw, "reading the raw image's size"))?.len();
    if size % 512 != 0 {
        let what = format!("qcow2 needs a whole number of 512-byte sectors, the image has {size} bytes");
        return Err(OutputError::Unsupported { path: raw.to_path_buf(), what });
    }
    // Refuse early what cannot fit even with every cluster stored.
    Qcow2Layout::plan(size, size.div_ceil(QCOW2_CLUSTER_SIZE), 0).ok_or_else(|| overflow(raw, "qcow2 layout"))?;
    let ranges = data_ranges(src).map_err(io_err(raw, "finding data extents (SEEK_DATA)"))?;
    let stored = write_data_clusters(src, raw, size, &ranges, dst, out)?;
    let n_l2 = count_regions(&stored);
    let n_data = u64::try_from(stored.len()).map_err(|_| overflow(raw, "cluster count"))?;
    let layout = Qcow2Layout::plan(size, n_data, n_l2).ok_or_else(|| overflow(raw, "qcow2 layout"))?;
    write_tables(&layout, &stored, dst, out)?;
    dst.write_all_at(&layout.header(), 0).map_err(io_err(out, "writing the qcow2 header"))?;
    layout.file_size().ok_or_else(|| overflow(raw, "qcow2 file size"))
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

/// Writes the L2 tables, L1 table, refcount blocks and refcount table where `layout` puts
/// them (stored data cluster `i` is host cluster `1 + i`), checking the plan as it goes.
fn write_tables(layout: &Qcow2Layout, stored: &[u64], dst: &File, out: &Path) -> Result<(), OutputError> {
    let cs = QCOW2_CLUSTER_SIZE;
    let mut w = BufWriter::with_capacity(1 << 20, dst);
    let mut pos = layout.l2_start();
    w.seek(SeekFrom::Start(pos * cs)).map_err(io_err(out, "seeking in the qcow2 image"))?;
    let mut l1 = vec![0u64; to_usize(out, layout.l1_clusters * L2_ENTRIES)?];
    let mut l2 = vec![0u64; to_usize(out, L2_ENTRIES)?];
    let mut i = 0usize;
    while i < stored.len() {
        let region = stored[i] / L2_ENTRIES;
        l2.fill(0);
        while i < stored.len() && stored[i] / L2_ENTRIES == region {
            let host = (1 + i as u64) * cs; // < 2^56 by plan()
            l2[to_usize(out, stored[i] % L2_ENTRIES)?] = host | QCOW_OFLAG_COPIED;
            i += 1;
        }
        l1[to_usize(out, region)?] = (pos * cs) | QCOW_OFLAG_COPIED;
        write_be(&mut w, &l2).map_err(io_err(out, "writing the qcow2 tables"))?;
        pos += 1;
    }
    debug_assert_eq!(pos, layout.l1_start());
    write_be(&mut w, &l1).map_err(io_err(out, "writing the qcow2 tables"))?;
    let rb_slots = to_usize(out, layout.n_rb * RB_ENTRIES)?;
    let total = to_usize(out, layout.total_clusters())?;
    let mut refs = vec![0u8; rb_slots * 2];
    for r in refs.chunks_exact_mut(2).take(total) {
        r.copy_from_slice(&1u16.to_be_bytes());
    }
    w.write_all(&refs).map_err(io_err(out, "writing the qcow2 tables"))?;
    let rt: Vec<u64> = (0..layout.rt_clusters * L2_ENTRIES)
        .map(|k| if k < layout.n_rb { (layout.rb_start() + k) * cs } else { 0 })
        .collect();
    write_be(&mut w, &rt).map_err(io_err(out, "writing the qcow2 tables"))?;
    w.flush().map_err(io_err(out, "writing the qcow2 tables"))?;
    debug_assert_eq!(dst.metadata().map(|m| m.len()).ok(), layout.file_size());
    Ok(())
}

/// Writes `entries` as big-endian u64s.
fn write_be(w: &mut impl Write, entries: &[u64]) -> std::io::Result<()> {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    w.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §1.3's worked example: 8 GiB virtual, 24 576 data clusters in all 16 regions. With the
    /// tables after the data the cluster count is the same (only the order differs).
    #[test]
    fn worked_example() {
        let l = Qcow2Layout::plan(8 << 30, 24_576, 16).unwrap();
        assert_eq!((l.l1_size, l.l1_clusters, l.n_rb, l.rt_clusters), (16, 1, 1, 1));
        assert_eq!(l.total_clusters(), 24_596);
        assert_eq!(l.file_size(), Some(1_611_923_456));
    }

    /// Swept over sizes from empty to QEMU's limits: every host cluster has a refcount
    /// slot, the refcount table holds every block, the L1 covers the guest, nothing overlaps.
    #[test]
    fn sweep_sizes() {
        let sizes = [0u64, 512, 65_536, 65_536 + 512, 512 << 20, (512 << 20) + 512, 2 << 30, 1 << 40, 1 << 50];
        for &size in &sizes {
            let clusters = size.div_ceil(QCOW2_CLUSTER_SIZE);
            for n_data in [0, 1, clusters / 3, clusters] {
                let n_l2 = n_data.min(size.div_ceil(512 << 20));
                let Some(l) = Qcow2Layout::plan(size, n_data, n_l2) else {
                    assert!(size > (1 << 46), "refused {size} {n_data}");
                    continue;
                };
                assert!(u64::from(l.l1_size) * (512 << 20) >= size);
                assert!(l.l1_clusters * L2_ENTRIES >= u64::from(l.l1_size));
                assert!(l.n_rb * RB_ENTRIES >= l.total_clusters());
                assert!((l.n_rb - 1) * RB_ENTRIES < l.total_clusters(), "no spare refblock");
                assert!(l.rt_clusters * L2_ENTRIES >= l.n_rb);
                assert_eq!(l.total_clusters(), 1 + n_data + n_l2 + l.l1_clusters + l.n_rb + l.rt_clusters);
            }
        }
        assert!(Qcow2Layout::plan(1 << 60, 0, 0).is_none(), "L1 over 32 MiB");
    }

    #[test]
    fn header_fields() {
        let l = Qcow2Layout::plan(64 << 20, 3, 1).unwrap();
        let h = l.header();
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(u64::from_be_bytes(h[40..48].try_into().unwrap()), 5 * QCOW2_CLUSTER_SIZE);
        assert_eq!(u64::from_be_bytes(h[48..56].try_into().unwrap()), 7 * QCOW2_CLUSTER_SIZE);
        assert_eq!(l.total_clusters(), 8);
    }

    #[test]
    fn regions() {
        assert_eq!(count_regions(&[]), 0);
        assert_eq!(count_regions(&[0, 1, 8191, 8192, 40_000]), 3);
    }
}
