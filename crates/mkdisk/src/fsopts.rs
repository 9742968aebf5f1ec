//! Each partition's writer options, from the layout and the placement alone: the one place
//! where filesystem UUIDs, FAT volume IDs and labels are decided (the NixOS content's
//! `search --fs-uuid`, the plan report and the writers all read them from here).

use mkdisk_gpt::Placed;
use mkdisk_tree::ids;

use crate::error::FsError;
use crate::options::BuildOptions;
use crate::spec::{Btrfs, Content, Filesystem, FsFormat, Partition};
use crate::swap::SwapOptions;

/// A partition's writer options (the size is the partition's; content comes later).
#[derive(Clone, Debug)]
pub enum FsOptions {
    /// No content.
    None,
    /// A swap signature.
    Swap(SwapOptions),
    /// FAT.
    Fat(mkdisk_fat::FatOptions),
    /// ext4.
    Ext4(mkdisk_ext4::Ext4Options),
    /// btrfs: the options and each subvolume's compression (in layout order).
    Btrfs(mkdisk_btrfs::BtrfsOptions, Vec<Option<mkdisk_btrfs::Compress>>),
}

/// How `blkid` names a filesystem: its UUID (a FAT volume ID as `XXXX-XXXX`) and label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsIdent {
    /// `UUID=`.
    pub uuid: Option<String>,
    /// `LABEL=`.
    pub label: Option<String>,
}

impl FsOptions {
    /// The identifiers the writer will store.
    #[must_use]
    pub fn ident(&self) -> FsIdent {
        match self {
            FsOptions::None => FsIdent::default(),
            FsOptions::Swap(o) => FsIdent { uuid: Some(o.uuid.to_string()), label: o.label.clone() },
            FsOptions::Fat(o) => FsIdent {
                uuid: Some(mkdisk_fat::format_volume_id(o.volume_id)),
                label: o.label.as_ref().map(|l| l.to_ascii_uppercase()),
            },
            FsOptions::Ext4(o) => FsIdent { uuid: Some(o.uuid.to_string()), label: o.label.clone() },
            FsOptions::Btrfs(o, _) => FsIdent { uuid: Some(o.uuid.to_string()), label: o.label.clone() },
        }
    }
}

/// FAT: systemd-repart's serial (the first four bytes of the filesystem UUID), the start
/// sector as hidden sectors, then mkfs.vfat's `extraArgs`.
fn fat(placed: &Placed, fs: &Filesystem) -> Result<mkdisk_fat::FatOptions, FsError> {
    let mut o = mkdisk_fat::FatOptions::new(placed.size_bytes());
    o.volume_id = mkdisk_fat::volume_id_from_uuid(&ids::fs_uuid(&placed.guid));
    o.hidden_sectors = u32::try_from(placed.first_lba).map_err(|_| FsError::FatStart(placed.first_lba))?;
    o.apply_extra_args(&fs.extra_args)?;
    Ok(o)
}

fn ext4(placed: &Placed, fs: &Filesystem, opts: &BuildOptions) -> Result<mkdisk_ext4::Ext4Options, FsError> {
    let mut o = mkdisk_ext4::Ext4Options::new(placed.size_bytes(), ids::fs_uuid(&placed.guid));
    o.timestamp = opts.source_date_epoch.unwrap_or(0);
    o.apply_extra_args(&fs.extra_args)?;
    Ok(o)
}

/// btrfs: the filesystem UUID derives from the partition GUID like every other filesystem's;
/// compression comes from `--compress` (lowest precedence), the filesystem's `mountOptions`,
/// then `extraArgs`. Compressed frames wait in an unnamed scratch file in the output directory.
fn btrfs(
    placed: &Placed,
    mount_options: &[String],
    extra_args: &[String],
    opts: &BuildOptions,
) -> Result<mkdisk_btrfs::BtrfsOptions, FsError> {
    let mut o = mkdisk_btrfs::BtrfsOptions::new(placed.size_bytes(), ids::fs_uuid(&placed.guid));
    o.timestamp = opts.source_date_epoch.unwrap_or(0);
    o.scratch_dir = Some(opts.out_dir.clone());
    if let Some(c) = &opts.compress {
        o.apply_extra_args(&["--compress".to_string(), c.clone()])?;
    }
    if let Some(c) = mkdisk_btrfs::parse_mount_options(mount_options)? {
        o.compress = Some(c);
    }
    o.apply_extra_args(extra_args)?;
    Ok(o)
}

fn btrfs_subvols(placed: &Placed, b: &Btrfs, opts: &BuildOptions) -> Result<FsOptions, FsError> {
    let o = btrfs(placed, &b.mount_options, &b.extra_args, opts)?;
    let compress =
        b.subvolumes.iter().map(|sv| mkdisk_btrfs::parse_mount_options(&sv.mount_options)).collect::<Result<_, _>>()?;
    Ok(FsOptions::Btrfs(o, compress))
}

/// The writer options of `part`, placed at `placed`.
///
/// # Errors
/// A bad `extraArgs`/`mountOptions` entry, a format mkdisk does not write, a swap partition
/// too small for its header.
pub fn fs_options(placed: &Placed, part: &Partition, opts: &BuildOptions) -> Result<FsOptions, FsError> {
    Ok(match &part.content {
        Content::None => FsOptions::None,
        Content::Swap(s) => {
            let mut o = SwapOptions { uuid: ids::fs_uuid(&placed.guid), label: None };
            o.apply_extra_args(&s.extra_args)?;
            FsOptions::Swap(o)
        }
        Content::Btrfs(b) => btrfs_subvols(placed, b, opts)?,
        Content::Filesystem(fs) => match &fs.format {
            FsFormat::Vfat => FsOptions::Fat(fat(placed, fs)?),
            FsFormat::Ext4 => FsOptions::Ext4(ext4(placed, fs, opts)?),
            FsFormat::Btrfs => FsOptions::Btrfs(btrfs(placed, &fs.mount_options, &fs.extra_args, opts)?, Vec::new()),
            FsFormat::Other(f) => return Err(FsError::NotImplemented(format!("format {f:?}"))),
        },
    })
}
