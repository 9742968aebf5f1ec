//! The plan's report: what `mkdisk plan --json` prints (schema version 1, described in the
//! README). Every identifier in it is what the writers store and `blkid` reads back.

use serde::Serialize;

use crate::partition::{DiskImagePlan, PartitionPlan};
use crate::plan::ImagePlan;

/// The report's schema version.
pub const REPORT_VERSION: u32 = 1;

/// The whole plan.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The disks, in layout order.
    pub disks: Vec<DiskReport>,
    /// The boot loaders installed.
    pub boot_loaders: Vec<BootLoaderReport>,
}

/// One disk.
#[derive(Debug, Serialize)]
pub struct DiskReport {
    /// The layout's disk name.
    pub name: String,
    /// The image file in the output directory.
    pub image: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The disk GUID.
    pub guid: String,
    /// The size asked for: `"auto"`, the layout's `imageSize` as written, or `--image-size`
    /// (in its largest whole binary unit: `64G`).
    pub image_size: String,
    /// How an auto size came about (only for `"auto"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_size: Option<AutoSizeReport>,
    /// Partitions in table order.
    pub partitions: Vec<PartitionReport>,
}

/// How an auto-sized disk got its size: the fill partition's filesystem minimum, plus the
/// headroom, rounded up to the partition's alignment; the disk ends after it and the backup
/// GPT.
#[derive(Debug, Serialize)]
pub struct AutoSizeReport {
    /// The partition that fills the disk (the layout's name).
    pub partition: String,
    /// The smallest size its filesystem plans the content into.
    pub min_size_bytes: u64,
    /// The headroom asked for (`--headroom`, as `10%+64M`).
    pub headroom: String,
    /// That headroom in bytes on this content.
    pub headroom_bytes: u64,
}

/// A mount point on a partition.
#[derive(Debug, Serialize)]
pub struct MountReport {
    /// The mount point.
    pub mountpoint: String,
    /// The btrfs subvolume mounted there (`subvol=`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subvolume: Option<String>,
}

/// What a filesystem holds, and the smallest partition that holds it.
#[derive(Debug, Serialize)]
pub struct ContentReport {
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Inodes.
    pub inodes: u64,
    /// The smallest partition size (a multiple of 1 MiB) the filesystem plans into.
    pub min_size_bytes: u64,
}

/// One partition.
#[derive(Debug, Serialize)]
pub struct PartitionReport {
    /// Number in the table (1-based).
    pub number: u32,
    /// The layout's partition name.
    pub name: String,
    /// The GPT partition name (`PARTLABEL`).
    pub label: String,
    /// First sector.
    pub start: u64,
    /// Last sector.
    pub end: u64,
    /// Size in sectors.
    pub size: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Type GUID, upper case (sfdisk's form).
    #[serde(rename = "type")]
    pub type_guid: String,
    /// sgdisk's type code (`EF00`), where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_code: Option<String>,
    /// Partition GUID (`PARTUUID`).
    pub guid: String,
    /// The content kind: `filesystem`, `btrfs`, `swap` or `none`.
    pub content: String,
    /// `vfat`, `ext4`, `btrfs`, `swap` or `-`.
    pub filesystem: String,
    /// The filesystem's `UUID` as blkid shows it (a FAT volume ID as `XXXX-XXXX`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_uuid: Option<String>,
    /// The FAT volume ID (`XXXX-XXXX`), for vfat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// The filesystem's `LABEL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_label: Option<String>,
    /// Mount points of the layout on this partition.
    pub mounts: Vec<MountReport>,
    /// btrfs subvolumes created.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subvolumes: Vec<String>,
    /// Content and minimal size (`mkdisk plan` with `--root`, `--closure` or `--system`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_size: Option<ContentReport>,
}

/// A boot loader.
#[derive(Debug, Serialize)]
pub struct BootLoaderReport {
    /// `systemd-boot` or `grub-bios`.
    pub kind: String,
    /// The disk's name.
    pub disk: String,
    /// The partition its code goes to.
    pub partition: String,
    /// The mount point under which its configuration and kernels go.
    pub files: String,
}

fn content_kind(format: &str) -> &'static str {
    match format {
        "-" => "none",
        "swap" => "swap",
        "btrfs" => "btrfs",
        _ => "filesystem",
    }
}

fn partition(d: &DiskImagePlan, p: &PartitionPlan) -> PartitionReport {
    let placed = &d.placed.layout.partitions[p.index];
    let is_fat = p.format == "vfat";
    PartitionReport {
        number: placed.number,
        name: placed.name.clone(),
        label: placed.label.clone(),
        start: placed.first_lba,
        end: placed.last_lba,
        size: placed.sectors(),
        size_bytes: placed.size_bytes(),
        type_guid: placed.type_guid.to_string().to_uppercase(),
        type_code: mkdisk_gpt::types::type_code(&placed.type_guid).map(str::to_string),
        guid: placed.guid.to_string(),
        content: content_kind(&p.format).to_string(),
        filesystem: p.format.clone(),
        fs_uuid: p.ident.uuid.clone(),
        volume_id: p.ident.uuid.clone().filter(|_| is_fat),
        fs_label: p.ident.label.clone(),
        mounts: p.mounts.iter().map(|(m, s)| MountReport { mountpoint: m.clone(), subvolume: s.clone() }).collect(),
        subvolumes: p.subvolumes.clone(),
        content_size: p.measure.map(|m| ContentReport {
            data_bytes: m.data_bytes,
            inodes: m.inodes,
            min_size_bytes: m.min_size_bytes,
        }),
    }
}

impl ImagePlan {
    /// The plan's report (`mkdisk plan --json`).
    #[must_use]
    pub fn report(&self) -> Report {
        let disks = self
            .disks()
            .iter()
            .map(|d| DiskReport {
                name: d.placed.disk.name.clone(),
                image: format!("{}.raw", d.placed.disk.image_name),
                sectors: d.placed.layout.sectors,
                size_bytes: d.placed.layout.sectors * mkdisk_gpt::SECTOR_SIZE,
                guid: d.placed.layout.disk_guid.to_string(),
                image_size: d.image_size.clone(),
                auto_size: d.auto.map(|a| AutoSizeReport {
                    partition: d.placed.layout.partitions[a.partition].name.clone(),
                    min_size_bytes: a.min_size_bytes,
                    headroom: a.headroom.to_string(),
                    headroom_bytes: a.headroom_bytes,
                }),
                partitions: d.partitions.iter().map(|p| partition(d, p)).collect(),
            })
            .collect();
        let boot_loaders = self
            .boot_loaders()
            .iter()
            .map(|b| BootLoaderReport {
                kind: b.kind.to_string(),
                disk: self.disks()[b.disk].placed.disk.name.clone(),
                partition: b.partition.clone(),
                files: b.files.clone(),
            })
            .collect();
        Report { version: REPORT_VERSION, disks, boot_loaders }
    }
}
