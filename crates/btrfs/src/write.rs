//! The writer: checks the plan, writes file data (and the planner's zstd frames) in parallel while
//! checksumming it, then every tree block on each stripe, then the superblocks.

use mkdisk_tree::{Progress, Region};
use rayon::prelude::*;

use crate::node::{serialize, HeaderCtx};
use crate::plan::{BtrfsLayout, DataExtent, COMPAT_RO_FLAGS};
use crate::source::Reader;
use crate::superblock::{sb_offset, Super, SUPER_INFO_SIZE};
use crate::{BtrfsError, GENERATION, NODESIZE, SECTORSIZE, SECTORSIZE_USIZE};

const IO_CHUNK: u64 = 1 << 20;

fn plan_err(msg: impl Into<String>) -> BtrfsError {
    BtrfsError::Plan(msg.into())
}

/// Logical → physical addresses of every stripe.
fn physical(layout: &BtrfsLayout, logical: u64, len: u64) -> Result<Vec<u64>, BtrfsError> {
    let c = layout
        .chunks
        .iter()
        .find(|c| logical >= c.logical && logical.saturating_add(len) <= c.end())
        .ok_or_else(|| plan_err(format!("logical range {logical}+{len} is in no chunk")))?;
    Ok(c.stripes.iter().map(|p| p + (logical - c.logical)).collect())
}

/// Assert the plan: data extents sorted, non-overlapping, aligned, inside data chunks; chunks
/// and their stripes inside the device.
fn check_plan(layout: &BtrfsLayout, region: &Region) -> Result<(), BtrfsError> {
    if region.len() < layout.total_bytes {
        return Err(plan_err(format!("region has {} bytes, the plan needs {}", region.len(), layout.total_bytes)));
    }
    for c in &layout.chunks {
        for &p in &c.stripes {
            if p.checked_add(c.length).is_none_or(|e| e > layout.total_bytes) {
                return Err(plan_err(format!("chunk {} stripe {p} ends past the device", c.logical)));
            }
        }
    }
    let mut prev_end = 0u64;
    for e in &layout.extents {
        if e.logical < prev_end {
            return Err(plan_err(format!("data extent {} overlaps its predecessor", e.logical)));
        }
        if e.logical % SECTORSIZE != 0 || e.disk_len % SECTORSIZE != 0 || e.disk_len == 0 {
            return Err(plan_err(format!("data extent {} is not sector-aligned", e.logical)));
        }
        let c = layout
            .chunks
            .iter()
            .find(|c| e.logical >= c.logical && e.logical + e.disk_len <= c.end())
            .ok_or_else(|| plan_err(format!("data extent {} is in no chunk", e.logical)))?;
        if c.flags & crate::chunk::BLOCK_GROUP_DATA == 0 {
            return Err(plan_err(format!("data extent {} is not in a data chunk", e.logical)));
        }
        prev_end = e.logical + e.disk_len;
    }
    Ok(())
}

/// Write one data extent; returns its per-sector checksums.
fn write_extent(
    layout: &BtrfsLayout,
    e: &DataExtent,
    region: &Region,
    progress: &dyn Progress,
) -> Result<Vec<u8>, BtrfsError> {
    let cs = layout.csum.size();
    let sectors = usize::try_from(e.disk_len / SECTORSIZE).map_err(|_| plan_err("extent too large"))?;
    let mut sums = vec![0u8; sectors * cs];
    let phys = physical(layout, e.logical, e.disk_len)?;
    let reader = Reader::open(&e.source)?;
    let checksum = |buf: &[u8], first_sector: usize, sums: &mut [u8]| {
        for (i, s) in buf.chunks(SECTORSIZE_USIZE).enumerate() {
            let o = (first_sector + i) * cs;
            layout.csum.compute(s, &mut sums[o..o + cs]);
        }
    };
    match &e.zstd {
        Some(frame) => {
            // The planner's frame, copied into place and padded to whole sectors.
            let len = usize::try_from(e.disk_len).expect("a compressed extent is at most 128 KiB");
            let mut buf = vec![0u8; len];
            crate::frames::load(layout.spill.as_deref(), frame, &mut buf)?;
            checksum(&buf, 0, &mut sums);
            for p in &phys {
                region.write_at(*p, &buf)?;
            }
            progress.data_written(e.ram_len);
        }
        None => {
            let mut done = 0u64;
            let mut buf = Vec::new();
            while done < e.disk_len {
                let n = (e.disk_len - done).min(IO_CHUNK);
                buf.resize(usize::try_from(n).expect("at most IO_CHUNK bytes"), 0);
                reader.read(e.file_size, e.file_offset + done, &mut buf)?;
                let first = usize::try_from(done / SECTORSIZE).expect("below the extent's sector count, a usize");
                checksum(&buf, first, &mut sums);
                for p in &phys {
                    region.write_at(p + done, &buf)?;
                }
                progress.data_written(n);
                done += n;
            }
        }
    }
    Ok(sums)
}

/// Write the planned filesystem into `region` (the partition, `layout.total_bytes()` long or
/// longer). Data and compression run in parallel; tree blocks follow; superblocks last.
///
/// # Errors
/// The plan does not fit the region, a source file is unreadable or changed since planning,
/// or a write fails.
pub fn write(layout: &BtrfsLayout, region: &Region, progress: &dyn Progress) -> Result<(), BtrfsError> {
    check_plan(layout, region)?;
    // Stale signatures and poison: zero the first MiB (the primary superblock comes last).
    region.write_at(0, &vec![0u8; 1 << 20])?;

    // Data, in parallel; checksums come back in extent order.
    let sums: Vec<Vec<u8>> =
        layout.extents.par_iter().map(|e| write_extent(layout, e, region, progress)).collect::<Result<_, _>>()?;
    let cs = layout.csum.size();
    let csums = |logical: u64, sectors: u64, dst: &mut [u8]| -> Result<(), String> {
        let mut at = logical;
        let mut out = 0usize;
        let end = logical + sectors * SECTORSIZE;
        while at < end {
            let i = layout.extents.partition_point(|e| e.logical + e.disk_len <= at);
            let e = layout.extents.get(i).filter(|e| e.logical <= at).ok_or_else(|| format!("no extent at {at}"))?;
            let first = usize::try_from((at - e.logical) / SECTORSIZE).expect("a sector index inside one extent");
            let take = usize::try_from(((e.logical + e.disk_len).min(end) - at) / SECTORSIZE)
                .expect("a sector count inside one extent");
            dst[out..out + take * cs].copy_from_slice(&sums[i][first * cs..(first + take) * cs]);
            out += take * cs;
            at += take as u64 * SECTORSIZE;
        }
        Ok(())
    };
    let ctx = HeaderCtx {
        fsid: layout.fsid,
        chunk_tree_uuid: layout.chunk_uuid,
        generation: GENERATION,
        csum: layout.csum,
        csums: &csums,
    };
    // Tree blocks, in parallel.
    let blocks: Vec<(usize, usize, usize)> = layout
        .trees
        .iter()
        .enumerate()
        .flat_map(|(t, tree)| {
            tree.levels.iter().enumerate().flat_map(move |(l, v)| (0..v.len()).map(move |i| (t, l, i)))
        })
        .collect();
    blocks.par_iter().try_for_each(|&(t, l, i)| -> Result<(), BtrfsError> {
        let tree = &layout.trees[t];
        let buf = serialize(tree, l, i, &ctx).map_err(BtrfsError::Plan)?;
        for p in physical(layout, tree.addrs[l][i], NODESIZE)? {
            region.write_at(p, &buf)?;
        }
        Ok(())
    })?;

    // Superblocks last.
    let root = layout.root_tree();
    let chunk = layout.chunk_tree();
    let sb = Super {
        fsid: layout.fsid,
        generation: GENERATION,
        root: root.root_addr(),
        root_level: root.root_level(),
        chunk_root: chunk.root_addr(),
        chunk_root_level: chunk.root_level(),
        total_bytes: layout.total_bytes,
        bytes_used: layout.bytes_used,
        incompat_flags: layout.incompat,
        compat_ro_flags: COMPAT_RO_FLAGS,
        csum: layout.csum,
        dev_item: &layout.dev_item,
        label: &layout.label,
        sys_chunk_array: &layout.sys_chunk_array,
    };
    for i in (0..3).rev() {
        let off = sb_offset(i);
        if off + SUPER_INFO_SIZE as u64 <= layout.total_bytes {
            region.write_at(off, &sb.encode(off))?;
        }
    }
    Ok(())
}
