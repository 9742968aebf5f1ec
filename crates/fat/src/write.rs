//! The write phase: check the plan, copy file data in parallel, then write the FATs, the
//! directories and the reserved sectors (boot sector, FSInfo, backups).

use mkdisk_tree::{open_source, ImageError, Kind, Progress, Region, Source, Tree};
use rayon::prelude::*;

use crate::boot_sector::{self, BACKUP_BOOT_SECTOR, FSINFO_SECTOR};
use crate::fat_table::{self, Chain};
use crate::plan::FilePlan;
use crate::{fsinfo, FatError, FatLayout, FatType, SECTOR_BYTES};

/// FAT bytes encoded and written per step.
const FAT_CHUNK_BYTES: usize = 1 << 20;

fn invalid(reason: impl Into<String>) -> FatError {
    FatError::InvalidLayout { reason: reason.into() }
}

fn io(path: &str) -> impl Fn(ImageError) -> FatError + '_ {
    move |source| FatError::Io { path: path.to_owned(), source }
}

/// Check the plan before anything is written: chains sorted, non-overlapping, inside the
/// data region; directory contents sized to their clusters; the volume inside the region.
fn check(layout: &FatLayout, region: &Region) -> Result<Vec<Chain>, FatError> {
    let g = &layout.geometry;
    if region.len() < layout.size_bytes() {
        return Err(invalid(format!(
            "region of {} bytes is smaller than the volume ({})",
            region.len(),
            layout.size_bytes()
        )));
    }
    let chains = layout.chains();
    let end = 2 + u64::from(g.cluster_count);
    let mut prev_end = 2u64;
    let mut total = 0u64;
    for c in &chains {
        if u64::from(c.first) < prev_end || c.end() > end {
            return Err(invalid(format!("cluster chain {c:?} overlaps or is out of bounds")));
        }
        prev_end = c.end();
        total += u64::from(c.len);
    }
    if total != u64::from(layout.allocated) || prev_end != 2 + u64::from(layout.allocated) {
        return Err(invalid("allocated clusters are not exactly 2..2+allocated"));
    }
    let cluster_bytes = u64::from(g.cluster_bytes());
    for (i, d) in layout.dirs.iter().enumerate() {
        let want = if i == 0 && g.fat_type == FatType::Fat16 {
            u64::from(g.root_dir_sectors()) * u64::from(SECTOR_BYTES)
        } else {
            u64::from(d.clusters) * cluster_bytes
        };
        if d.bytes.len() as u64 != want || (want == 0) {
            return Err(invalid(format!("{}: directory bytes do not match its clusters", d.path)));
        }
    }
    for f in &layout.files {
        if f.size.div_ceil(cluster_bytes) != u64::from(f.clusters) {
            return Err(invalid(format!("{}: size does not match its clusters", f.path)));
        }
    }
    Ok(chains)
}

fn write_file(layout: &FatLayout, tree: &Tree, region: &Region, f: &FilePlan) -> Result<(), FatError> {
    if f.clusters == 0 {
        return Ok(());
    }
    let g = &layout.geometry;
    let Some(Kind::File(data)) = tree.inodes().get(f.inode.index()).map(|i| &i.kind) else {
        return Err(invalid(format!("{}: not a file in this tree", f.path)));
    };
    if data.size != f.size {
        return Err(invalid(format!("{}: size changed since planning", f.path)));
    }
    let base = g.cluster_offset_bytes(f.first_cluster);
    let host = match &data.source {
        Source::Host(p) => Some((open_source(p).map_err(io(&f.path))?, p)),
        Source::Bytes(_) => None,
    };
    // FAT has no holes: a sparse source's holes are file content (zeros) and must be written
    // explicitly, or a dirty target would leak its old bytes into the file.
    let write_zeros = |from: u64, to: u64| -> Result<(), FatError> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(1 << 20);
            let zeros = vec![0u8; usize::try_from(n).expect("at most 1 MiB")];
            region.write_at(base + at, &zeros).map_err(io(&f.path))?;
            at += n;
        }
        Ok(())
    };
    let mut pos = 0u64;
    for run in &data.runs {
        if run.end() > f.size || run.offset < pos {
            return Err(invalid(format!("{}: data run outside the file or out of order", f.path)));
        }
        write_zeros(pos, run.offset)?;
        pos = run.end();
        match &host {
            Some((file, p)) => region.copy_from_file(file, p, run.offset, base + run.offset, run.len),
            None => region.write_file_range(data, run.offset, base + run.offset, run.len),
        }
        .map_err(io(&f.path))?;
    }
    write_zeros(pos, f.size)?;
    // Zero the slack after the last byte up to the end of the last cluster.
    let slack = u64::from(f.clusters) * u64::from(g.cluster_bytes()) - f.size;
    if slack > 0 {
        let zeros = vec![0u8; usize::try_from(slack).expect("less than one cluster (at most 32 KiB)")];
        region.write_at(base + f.size, &zeros).map_err(io(&f.path))?;
    }
    Ok(())
}

/// Write a planned volume into `region` (exactly the partition).
///
/// File data is copied first, in parallel (rayon) into disjoint cluster runs; then both
/// FAT copies are written in full, then every directory, then the reserved sectors. The
/// output does not depend on the number of threads. Holes of sparse files are not written
/// (the region is expected to read as zero there, as a fresh image does).
///
/// # Errors
/// The layout does not match the region or tree (a caller bug), a source file cannot be
/// read, or writing the image fails; the error names the path.
pub fn write(layout: &FatLayout, tree: &Tree, region: &Region, progress: &dyn Progress) -> Result<(), FatError> {
    let chains = check(layout, region)?;
    let g = &layout.geometry;
    let sector = u64::from(SECTOR_BYTES);

    layout.files.par_iter().try_for_each(|f| {
        write_file(layout, tree, region, f)?;
        progress.data_written(f.size);
        Ok::<(), FatError>(())
    })?;

    // Both FAT copies, every byte (free entries included).
    let fat_bytes = u64::from(g.fat_sectors) * sector;
    let entry_bytes = u64::from(g.fat_entry_bytes());
    let mut buf = vec![0u8; FAT_CHUNK_BYTES];
    let mut off = 0u64;
    while off < fat_bytes {
        let n = (fat_bytes - off).min(FAT_CHUNK_BYTES as u64);
        let chunk = &mut buf[..usize::try_from(n).expect("at most FAT_CHUNK_BYTES")];
        fat_table::encode(g, &chains, off / entry_bytes, chunk);
        for copy in 0..g.num_fats {
            let start = u64::from(g.fat_start_sector(copy)) * sector;
            region.write_at(start + off, chunk).map_err(io("FAT"))?;
        }
        off += n;
    }

    // Directories (each written whole, including the zeroed unused slots).
    for (i, d) in layout.dirs.iter().enumerate() {
        let start = if i == 0 && g.fat_type == FatType::Fat16 {
            u64::from(g.root_dir_start_sector()) * sector
        } else {
            g.cluster_offset_bytes(d.first_cluster)
        };
        region.write_at(start, &d.bytes).map_err(io(&d.path))?;
    }

    // Reserved sectors: boot sector, FSInfo, zeros, backups, zeros.
    let reserved_bytes = u64::from(g.reserved_sectors) * sector;
    let mut reserved = vec![0u8; usize::try_from(reserved_bytes).expect("at most 64 reserved sectors")];
    let boot = boot_sector::encode(g, layout.hidden_sectors, layout.volume_id, &layout.label);
    reserved[..512].copy_from_slice(&boot);
    if g.fat_type == FatType::Fat32 {
        let info = fsinfo::encode(layout.free_clusters(), layout.next_free_cluster());
        let at = |s: u16| usize::from(s) * SECTOR_BYTES as usize;
        reserved[at(FSINFO_SECTOR)..at(FSINFO_SECTOR + 1)].copy_from_slice(&info);
        reserved[at(BACKUP_BOOT_SECTOR)..at(BACKUP_BOOT_SECTOR + 1)].copy_from_slice(&boot);
        reserved[at(BACKUP_BOOT_SECTOR + FSINFO_SECTOR)..at(BACKUP_BOOT_SECTOR + FSINFO_SECTOR + 1)]
            .copy_from_slice(&info);
    }
    region.write_at(0, &reserved).map_err(io("boot sector"))?;
    Ok(())
}
