//! Placement: every disk of the layout through `mkdisk-gpt`'s sgdisk-identical placement.

use mkdisk_gpt::{DiskLayout, DiskRequest, PartitionRequest, PlaceError, Placed};
use mkdisk_tree::ids;
use uuid::Uuid;

use crate::autosize::ImageSize;
use crate::spec::{Disk, Partition, Spec};

/// One placed disk: the layout's disk and where each of its partitions goes.
#[derive(Clone, Debug)]
pub struct PlacedDisk {
    /// The layout's disk.
    pub disk: Disk,
    /// Its placement (partitions in table order).
    pub layout: DiskLayout,
}

impl PlacedDisk {
    /// The placed partition made from the layout's partition `part`.
    #[must_use]
    pub fn placed(&self, part: &Partition) -> Option<&Placed> {
        self.layout.partitions.iter().find(|p| p.name == part.name)
    }

    /// The layout's partition (with its index in the disk) that `placed` came from.
    #[must_use]
    pub fn spec_part(&self, placed: &Placed) -> Option<(usize, &Partition)> {
        self.disk.partitions.iter().enumerate().find(|(_, p)| p.name == placed.name)
    }
}

fn request(d: &Disk, size_bytes: u64) -> DiskRequest {
    DiskRequest {
        name: d.name.clone(),
        size_bytes,
        partitions: d
            .partitions
            .iter()
            .map(|p| PartitionRequest {
                name: p.name.clone(),
                label: p.label.clone(),
                type_guid: p.type_guid,
                start: p.start.clone(),
                end: p.end.clone(),
                alignment: p.alignment,
                priority: p.priority,
                attributes: p.attributes.clone(),
                uuid: p.uuid,
            })
            .collect(),
    }
}

/// 1 MiB.
const MIB: u64 = 1 << 20;
/// The backup GPT at the end of a disk: its header and the 128-entry array, in sectors.
pub const BACKUP_GPT_SECTORS: u64 = 1 + mkdisk_gpt::ENTRY_ARRAY_SECTORS;
/// The first size an auto-sized disk is placed at before its content is measured: 64 GiB
/// of partitions (doubled while the fixed partitions do not fit, up to 1 PiB).
const PROVISIONAL_MIB: u64 = 64 << 10;
/// The largest disk, in MiB, that sizes are searched up to: 1 PiB.
const MAX_MIB: u64 = 1 << 30;

/// Place disk `index` of `spec` at `size_bytes`.
///
/// # Errors
/// The disk does not place at that size.
pub fn place_disk(spec: &Spec, index: usize, size_bytes: u64, seed: &Uuid) -> Result<PlacedDisk, PlaceError> {
    let d = &spec.disks[index];
    // Each disk gets its own key so two disks of one spec never share GUIDs.
    let disk_seed = if spec.disks.len() == 1 { *seed } else { ids::derive(seed, d.name.as_bytes()) };
    let layout = mkdisk_gpt::place(&request(d, size_bytes), &disk_seed)?;
    Ok(PlacedDisk { disk: d.clone(), layout })
}

/// Place every disk of `spec` at its layout's size; disk `i` of the result is
/// `spec.disks[i]`. An auto-sized disk is placed provisionally ([`place_provisional`]).
///
/// # Errors
/// A disk does not place.
pub fn place_all(spec: &Spec, seed: &Uuid) -> Result<Vec<PlacedDisk>, PlaceError> {
    (0..spec.disks.len())
        .map(|i| match spec.disks[i].size {
            ImageSize::Bytes(b) => place_disk(spec, i, b, seed),
            ImageSize::Auto => place_provisional(spec, i, seed),
        })
        .collect()
}

/// Whether an sgdisk end counts from the end of the disk (`-0`, `-N`, `0`, `+0`: what a
/// `100%` or absent size becomes).
fn ends_at_disk_end(end: &str) -> bool {
    let e = end.trim();
    e.starts_with('-') || mkdisk_gpt::parse_sectors(e.trim_start_matches('+')) == Some(0)
}

/// The partition (index in `d.partitions`) whose size an auto-sized disk decides: of those
/// whose end counts from the disk's end, the first created (later ones take what is left
/// after it, as on any disk).
#[must_use]
pub fn fill_partition(d: &Disk) -> Option<usize> {
    let req = request(d, 0);
    mkdisk_gpt::creation_order(&req.partitions).into_iter().find(|&i| ends_at_disk_end(&d.partitions[i].end))
}

/// Disk `index` placed with room to spare, before its content is measured: 64 GiB of
/// partitions and the backup GPT (so that the partition area is a whole number of MiB),
/// doubled while the fixed partitions do not fit.
///
/// # Errors
/// The disk does not place even at 1 PiB, or is malformed.
pub fn place_provisional(spec: &Spec, index: usize, seed: &Uuid) -> Result<PlacedDisk, PlaceError> {
    let mut mib = PROVISIONAL_MIB;
    loop {
        let bytes = mib * MIB + BACKUP_GPT_SECTORS * mkdisk_gpt::SECTOR_SIZE;
        match place_disk(spec, index, bytes, seed) {
            Err(PlaceError::NoSpace { .. } | PlaceError::StartNotFree { .. }) if mib < MAX_MIB => mib *= 2,
            r => return r,
        }
    }
}

/// Disk `index` placed at the smallest size on which its partition `fill` (index in the
/// placed table) has at least `want_sectors` sectors, starting from the provisional placement
/// `prov`: the disk shrinks or grows by the difference until the partition has its size
/// (once, for the usual layout whose fill partition is the last; a few times at most when
/// placement rules move it). `None` when no such size is found.
///
/// # Errors
/// The disk does not place at a size tried.
pub fn place_fill(
    spec: &Spec,
    index: usize,
    seed: &Uuid,
    prov: &PlacedDisk,
    fill: usize,
    want_sectors: u64,
) -> Result<Option<PlacedDisk>, PlaceError> {
    let sectors_of = |dp: &PlacedDisk| dp.layout.partitions.get(fill).map_or(0, mkdisk_gpt::Placed::sectors);
    let Some(mut n) = prov.layout.sectors.checked_sub(sectors_of(prov)).and_then(|n| n.checked_add(want_sectors))
    else {
        return Ok(None);
    };
    let mut best: Option<PlacedDisk> = None;
    let mut tried = Vec::new();
    while tried.len() < 8 && !tried.contains(&n) {
        tried.push(n);
        let Some(bytes) = n.checked_mul(mkdisk_gpt::SECTOR_SIZE) else { break };
        let dp = place_disk(spec, index, bytes, seed)?;
        let got = sectors_of(&dp);
        n = if got >= want_sectors {
            let next = n - (got - want_sectors);
            if best.as_ref().is_none_or(|b| dp.layout.sectors < b.layout.sectors) {
                best = Some(dp);
            }
            if got == want_sectors {
                break;
            }
            next
        } else {
            match n.checked_add(want_sectors - got) {
                Some(n) => n,
                None => break,
            }
        };
    }
    Ok(best)
}

/// The smallest disk, in whole MiB, on which disk `index` places (a bisection: placing is
/// cheap); `None` when it does not place even at 1 PiB.
#[must_use]
pub fn min_disk_mib(spec: &Spec, index: usize, seed: &Uuid) -> Option<u64> {
    let fits = |mib: u64| Ok::<bool, ()>(place_disk(spec, index, mib * MIB, seed).is_ok());
    mkdisk_tree::smallest_fitting(1, MAX_MIB, fits).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(parts: &str) -> Spec {
        Spec::parse(&format!(
            r#"{{"disk":{{"d":{{"imageSize":"auto","content":{{"type":"gpt","partitions":{{{parts}}}}}}}}}}}"#
        ))
        .unwrap()
    }

    const ESP: &str = r#""ESP":{"size":"512M","type":"EF00","content":{"type":"filesystem","format":"vfat"}}"#;

    #[test]
    fn the_fill_partition_is_the_first_created_that_ends_at_the_disk_end() {
        let s = spec(&format!(r#"{ESP},"root":{{"size":"100%","content":{{"type":"filesystem","format":"ext4"}}}}"#));
        assert_eq!(fill_partition(&s.disks[0]).map(|i| s.disks[0].partitions[i].name.as_str()), Some("root"));
        // root ends 8G before the end and is created first; swap takes what is left.
        let s = spec(
            r#""root":{"end":"-8G","content":{"type":"filesystem","format":"ext4"}},
               "swap":{"size":"100%","content":{"type":"swap"}}"#,
        );
        assert_eq!(fill_partition(&s.disks[0]).map(|i| s.disks[0].partitions[i].name.as_str()), Some("root"));
        let s = spec(ESP);
        assert_eq!(fill_partition(&s.disks[0]), None);
        assert!(ends_at_disk_end("+0") && ends_at_disk_end("0") && ends_at_disk_end("-0") && !ends_at_disk_end("+1M"));
    }

    #[test]
    fn the_disk_ends_after_the_fill_partition_and_the_backup_gpt() {
        let s = spec(&format!(r#"{ESP},"root":{{"size":"100%","content":{{"type":"filesystem","format":"ext4"}}}}"#));
        let seed = ids::DEFAULT_SEED;
        let prov = place_provisional(&s, 0, &seed).unwrap();
        let fill = prov.layout.partitions.iter().position(|p| p.name == "root").unwrap();
        for want in [2048, 4096, 300 * 2048, 200_000 * 2048] {
            let dp = place_fill(&s, 0, &seed, &prov, fill, want).unwrap().unwrap();
            let p = &dp.layout.partitions[fill];
            assert_eq!(p.sectors(), want);
            assert_eq!(dp.layout.sectors, p.last_lba + 1 + BACKUP_GPT_SECTORS);
            assert_eq!(dp.layout.partitions[1 - fill], prov.layout.partitions[1 - fill]);
        }
        // The fixed partitions need 513 MiB and the GPTs: 514 MiB places, 513 does not.
        assert_eq!(min_disk_mib(&s, 0, &seed), Some(514));
    }

    #[test]
    fn a_fill_partition_before_a_fixed_tail_keeps_the_tail() {
        let s = spec(
            r#""root":{"end":"-8G","content":{"type":"filesystem","format":"ext4"}},
               "swap":{"size":"100%","content":{"type":"swap"}}"#,
        );
        let seed = ids::DEFAULT_SEED;
        let prov = place_provisional(&s, 0, &seed).unwrap();
        let fill = prov.layout.partitions.iter().position(|p| p.name == "root").unwrap();
        let dp = place_fill(&s, 0, &seed, &prov, fill, 1000 * 2048).unwrap().unwrap();
        assert_eq!(dp.layout.partitions[fill].sectors(), 1000 * 2048);
        assert_eq!(dp.layout.partitions[1].sectors(), 8 << 21);
    }
}
