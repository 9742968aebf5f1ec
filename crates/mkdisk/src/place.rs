//! Placement: every disk of the layout through `mkdisk-gpt`'s sgdisk-identical placement.

use mkdisk_gpt::{DiskLayout, DiskRequest, PartitionRequest, PlaceError, Placed};
use mkdisk_tree::ids;
use uuid::Uuid;

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

fn request(d: &Disk) -> DiskRequest {
    DiskRequest {
        name: d.name.clone(),
        size_bytes: d.size_bytes,
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

/// Place every disk of `spec`; disk `i` of the result is `spec.disks[i]`.
///
/// # Errors
/// A disk does not place.
pub fn place_all(spec: &Spec, seed: &Uuid) -> Result<Vec<PlacedDisk>, PlaceError> {
    spec.disks
        .iter()
        .map(|d| {
            // Each disk gets its own key so two disks of one spec never share GUIDs.
            let disk_seed = if spec.disks.len() == 1 { *seed } else { ids::derive(seed, d.name.as_bytes()) };
            let layout = mkdisk_gpt::place(&request(d), &disk_seed)?;
            Ok(PlacedDisk { disk: d.clone(), layout })
        })
        .collect()
}
