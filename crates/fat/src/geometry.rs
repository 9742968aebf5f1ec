//! Volume geometry: FAT type, cluster size, reserved sectors, FAT size and cluster count,
//! chosen as `mkfs.fat` (and Microsoft's `DskTableFAT32`) choose them.

use crate::{FatError, FatType, SECTOR_BYTES};

/// Fewest clusters of a FAT32 volume (fatgen103; EDK2 refuses fewer).
pub const FAT32_MIN_CLUSTERS: u32 = 65_525;
/// Most clusters of a FAT32 volume (28-bit cluster numbers, dosfstools' limit).
pub const FAT32_MAX_CLUSTERS: u32 = 0x0FFF_FFF5;
/// Fewest clusters of a FAT16 volume (fewer is FAT12, which this writer does not produce).
pub const FAT16_MIN_CLUSTERS: u32 = 4_085;
/// Most clusters of a FAT16 volume.
pub const FAT16_MAX_CLUSTERS: u32 = 65_524;
/// Root directory entries of a FAT16 volume (`BPB_RootEntCnt`, as mkfs.fat).
pub const FAT16_ROOT_ENTRIES: u32 = 512;
/// Number of FAT copies.
pub const NUM_FATS: u32 = 2;
/// Reserved sectors of a FAT32 volume before cluster alignment.
pub const FAT32_RESERVED_SECTORS: u32 = 32;

/// The planned shape of a volume (all counts in 512-byte sectors unless named otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// FAT16 or FAT32.
    pub fat_type: FatType,
    /// `BPB_TotSec32` (or `BPB_TotSec16`): sectors in the volume.
    pub total_sectors: u32,
    /// `BPB_SecPerClus`.
    pub sectors_per_cluster: u32,
    /// `BPB_RsvdSecCnt`.
    pub reserved_sectors: u32,
    /// `BPB_NumFATs`.
    pub num_fats: u32,
    /// `BPB_FATSz32` / `BPB_FATSz16`: sectors per FAT copy.
    pub fat_sectors: u32,
    /// `BPB_RootEntCnt` (0 on FAT32).
    pub root_entries: u32,
    /// Data clusters (numbered 2..cluster_count+2).
    pub cluster_count: u32,
}

impl Geometry {
    /// Choose the geometry for a volume of `size_bytes`.
    ///
    /// # Errors
    /// The volume is too small or too large for the requested (or any) FAT type.
    pub fn compute(size_bytes: u64, fat_type: Option<FatType>) -> Result<Geometry, FatError> {
        let sectors = size_bytes / u64::from(SECTOR_BYTES);
        let total_sectors = u32::try_from(sectors)
            .map_err(|_| FatError::VolumeTooLarge { size_bytes, what: "FAT (2 TiB with 512-byte sectors)" })?;
        match fat_type {
            Some(FatType::Fat32) => fat32(size_bytes, total_sectors),
            Some(FatType::Fat16) => fat16(size_bytes, total_sectors),
            None => match fat32(size_bytes, total_sectors) {
                Err(FatError::Fat32TooSmall { .. }) => fat16(size_bytes, total_sectors),
                r => r,
            },
        }
    }

    /// Bytes per cluster.
    #[must_use]
    pub fn cluster_bytes(&self) -> u32 {
        self.sectors_per_cluster * SECTOR_BYTES
    }

    /// Sectors of the fixed FAT16 root directory (0 on FAT32).
    #[must_use]
    pub fn root_dir_sectors(&self) -> u32 {
        self.root_entries * 32 / SECTOR_BYTES
    }

    /// First sector of FAT copy `n` (0-based).
    #[must_use]
    pub fn fat_start_sector(&self, n: u32) -> u32 {
        self.reserved_sectors + n * self.fat_sectors
    }

    /// First sector of the fixed FAT16 root directory.
    #[must_use]
    pub fn root_dir_start_sector(&self) -> u32 {
        self.reserved_sectors + self.num_fats * self.fat_sectors
    }

    /// First sector of cluster 2.
    #[must_use]
    pub fn data_start_sector(&self) -> u32 {
        self.root_dir_start_sector() + self.root_dir_sectors()
    }

    /// Byte offset of cluster `cluster` (≥ 2) from the start of the volume.
    #[must_use]
    pub fn cluster_offset_bytes(&self, cluster: u32) -> u64 {
        let rel = u64::from(cluster.saturating_sub(2)) * u64::from(self.sectors_per_cluster);
        (u64::from(self.data_start_sector()) + rel) * u64::from(SECTOR_BYTES)
    }

    /// Bytes per FAT entry (2 or 4).
    #[must_use]
    pub fn fat_entry_bytes(&self) -> u32 {
        match self.fat_type {
            FatType::Fat16 => 2,
            FatType::Fat32 => 4,
        }
    }

    /// FAT entries the FAT can hold.
    #[must_use]
    pub fn fat_capacity_entries(&self) -> u64 {
        u64::from(self.fat_sectors) * u64::from(SECTOR_BYTES / self.fat_entry_bytes())
    }
}

fn round_up(v: u32, m: u32) -> Option<u32> {
    v.div_ceil(m).checked_mul(m)
}

/// Smallest FAT size (sectors) for the space after the reserved sectors (and root
/// directory), rounded up to a multiple of `spc`, and the resulting cluster count; `None`
/// when nothing fits.
fn fat_size(avail: u32, spc: u32, entries_per_sector: u32) -> Option<(u32, u32)> {
    let avail = u64::from(avail);
    let spc64 = u64::from(spc);
    let per = u64::from(entries_per_sector);
    let nf = u64::from(NUM_FATS);
    // Lower bound from the real-valued solution of (avail - nf*F)/spc + 2 <= per*F.
    let mut f = (avail / (per * spc64 + nf)).max(1);
    loop {
        let data = avail.checked_sub(nf * f)?;
        if data / spc64 + 2 <= per * f {
            break;
        }
        f += 1;
    }
    let f = round_up(u32::try_from(f).ok()?, spc)?;
    let data = avail.checked_sub(nf * u64::from(f))?;
    let clusters = u32::try_from(data / spc64).ok()?;
    Some((f, clusters))
}

/// FAT32 cluster size by volume size, as `DskTableFAT32` and `mkfs.fat`.
fn fat32_table_spc(total_sectors: u32) -> u32 {
    match total_sectors {
        0..=532_480 => 1,
        532_481..=16_777_216 => 8,
        16_777_217..=33_554_432 => 16,
        33_554_433..=67_108_864 => 32,
        _ => 64,
    }
}

fn fat32(size_bytes: u64, total_sectors: u32) -> Result<Geometry, FatError> {
    let mut spc = fat32_table_spc(total_sectors);
    let mut best = 0u64;
    loop {
        let reserved = round_up(FAT32_RESERVED_SECTORS, spc).expect("32 rounded up to at most 64");
        let fit = total_sectors.checked_sub(reserved).and_then(|avail| fat_size(avail, spc, 128));
        if let Some((fat_sectors, clusters)) = fit {
            best = best.max(u64::from(clusters));
            if clusters > FAT32_MAX_CLUSTERS {
                if spc >= 64 {
                    return Err(FatError::VolumeTooLarge { size_bytes, what: "FAT32" });
                }
                spc *= 2;
                continue;
            }
            if clusters >= FAT32_MIN_CLUSTERS {
                return Ok(Geometry {
                    fat_type: FatType::Fat32,
                    total_sectors,
                    sectors_per_cluster: spc,
                    reserved_sectors: reserved,
                    num_fats: NUM_FATS,
                    fat_sectors,
                    root_entries: 0,
                    cluster_count: clusters,
                });
            }
        }
        if spc == 1 {
            return Err(FatError::Fat32TooSmall { size_bytes, clusters: best });
        }
        spc /= 2;
    }
}

fn fat16(size_bytes: u64, total_sectors: u32) -> Result<Geometry, FatError> {
    let mut spc = 4u32;
    let root_sectors = FAT16_ROOT_ENTRIES * 32 / SECTOR_BYTES;
    loop {
        // Reserved sectors chosen so that the data region starts cluster-aligned.
        let reserved = round_up(1 + root_sectors, spc).expect("33 rounded up to at most 64") - root_sectors;
        let fit = total_sectors
            .checked_sub(reserved + root_sectors)
            .and_then(|avail| fat_size(avail, spc, 256))
            .unwrap_or((0, 0));
        let (fat_sectors, clusters) = fit;
        if clusters > FAT16_MAX_CLUSTERS {
            if spc >= 64 {
                return Err(FatError::VolumeTooLarge { size_bytes, what: "FAT16" });
            }
            spc *= 2;
            continue;
        }
        if clusters < FAT16_MIN_CLUSTERS {
            if spc == 1 {
                return Err(FatError::VolumeTooSmall { size_bytes, what: "FAT16 (FAT12 is not supported)" });
            }
            spc /= 2;
            continue;
        }
        return Ok(Geometry {
            fat_type: FatType::Fat16,
            total_sectors,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            num_fats: NUM_FATS,
            fat_sectors,
            root_entries: FAT16_ROOT_ENTRIES,
            cluster_count: clusters,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn worked_example_512_mib() {
        let g = Geometry::compute(512 * MIB, None).unwrap();
        assert_eq!(g.fat_type, FatType::Fat32);
        assert_eq!(g.sectors_per_cluster, 8);
        assert_eq!(g.reserved_sectors, 32);
        assert_eq!(g.fat_sectors, 1024);
        assert_eq!(g.cluster_count, 130_812);
        assert_eq!(g.data_start_sector(), 2080);
    }

    #[test]
    fn small_volumes() {
        assert_eq!(Geometry::compute(33 * MIB, None).unwrap().fat_type, FatType::Fat32);
        let g = Geometry::compute(32 * MIB, None).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        assert_eq!(g.sectors_per_cluster, 4);
        assert!(matches!(Geometry::compute(32 * MIB, Some(FatType::Fat32)), Err(FatError::Fat32TooSmall { .. })));
        assert!(matches!(Geometry::compute(MIB, None), Err(FatError::VolumeTooSmall { .. })));
        assert!(Geometry::compute(0, None).is_err());
    }

    /// Sweep 1 MiB..64 GiB: cluster counts valid for the type, the FAT covers every cluster,
    /// everything fits in the volume, the data region is cluster-aligned.
    #[test]
    fn sweep() {
        let mut size = MIB;
        while size <= 64 * 1024 * MIB {
            for fat_type in [None, Some(FatType::Fat16), Some(FatType::Fat32)] {
                let Ok(g) = Geometry::compute(size, fat_type) else { continue };
                let (lo, hi) = match g.fat_type {
                    FatType::Fat16 => (FAT16_MIN_CLUSTERS, FAT16_MAX_CLUSTERS),
                    FatType::Fat32 => (FAT32_MIN_CLUSTERS, FAT32_MAX_CLUSTERS),
                };
                assert!((lo..=hi).contains(&g.cluster_count), "{size}: {g:?}");
                assert!(u64::from(g.cluster_count) + 2 <= g.fat_capacity_entries(), "{size}: {g:?}");
                let end =
                    u64::from(g.data_start_sector()) + u64::from(g.cluster_count) * u64::from(g.sectors_per_cluster);
                assert!(end <= u64::from(g.total_sectors), "{size}: {g:?}");
                assert!(u64::from(g.total_sectors) - end < u64::from(g.sectors_per_cluster) + 2 * 4, "{size}: {g:?}");
                assert_eq!(g.data_start_sector() % g.sectors_per_cluster, 0, "{size}: {g:?}");
                assert!(g.sectors_per_cluster.is_power_of_two());
            }
            size = size * 9 / 8 + 512;
        }
    }
}
