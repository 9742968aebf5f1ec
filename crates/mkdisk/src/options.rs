//! What a build takes besides the layout: [`BuildOptions`] and its NixOS part,
//! [`NixosOptions`]. Both are `#[non_exhaustive]`: make them with `new`/`default` and set
//! the fields that differ.

use std::path::PathBuf;

use mkdisk_tree::ids;
use uuid::Uuid;

use crate::autosize::{Headroom, ImageSize};

/// What `mkdisk build` needs besides the layout.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BuildOptions {
    /// Output directory (`<imageName>.raw` per disk); btrfs's compressed frames wait in an
    /// unnamed scratch file there while the plan is made.
    pub out_dir: PathBuf,
    /// Source root to split by mount point; `None` builds empty filesystems.
    pub root: Option<PathBuf>,
    /// Seed for every identifier the layout leaves open.
    pub seed: Uuid,
    /// Worker threads (`None` = rayon's default: all cores).
    pub threads: Option<usize>,
    /// Keep host uid/gid instead of root:root.
    pub keep_owner: bool,
    /// `SOURCE_DATE_EPOCH`: clamps source mtimes, stamps filesystem creation times.
    pub source_date_epoch: Option<i64>,
    /// Default btrfs compression (`zstd[:N]`) where the layout's mount options set none.
    pub compress: Option<String>,
    /// NixOS content: closure, Nix database, system profile, boot loaders.
    pub nixos: NixosOptions,
    /// Also measure each filesystem's content and the smallest partition that holds it
    /// (for `mkdisk plan`; costs a search over the filesystem plans).
    pub measure: bool,
    /// What is written per disk: `<imageName>.raw` or a converted form of it.
    pub format: OutputFormat,
    /// Also write `<imageName>.raw.bmap` (bmaptool's format 2.0) per disk.
    pub bmap: bool,
    /// Every disk's size (`--image-size`), instead of the layout's `imageSize`.
    pub image_size: Option<ImageSize>,
    /// What an auto-sized disk's fill partition gets on top of its content's minimal size
    /// (`--headroom`, default 10 % + 64 MiB).
    pub headroom: Headroom,
}

/// The file each disk becomes (`--format`). Every form is made from the finished sparse raw
/// image in one sequential read that skips its holes; the raw image itself is only kept for
/// [`OutputFormat::Raw`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputFormat {
    /// `<imageName>.raw`, a sparse file.
    #[default]
    Raw,
    /// `<imageName>.raw.zst`: zstd frames (level 3, multithreaded, content checksums; btrfs's
    /// zstd extents stored, runs of holes as RLE blocks).
    RawZst,
    /// `<imageName>.raw.gz`: gzip members of 4 MiB, compressed in parallel (level 6).
    RawGz,
    /// `<imageName>.qcow2`: qcow2 version 3, 64 KiB clusters, written in place (the disk
    /// after the header cluster, each cluster with data mapped to itself, tables appended).
    Qcow2,
    /// `<imageName>.vhd`: a fixed VHD (the raw image rounded up to a whole MiB, then the
    /// 512-byte footer), as Azure takes it.
    Vhd,
}

impl OutputFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [OutputFormat; 5] =
        [OutputFormat::Raw, OutputFormat::RawZst, OutputFormat::RawGz, OutputFormat::Qcow2, OutputFormat::Vhd];

    /// The file name extension (also the `--format` value).
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::RawZst => "raw.zst",
            OutputFormat::RawGz => "raw.gz",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vhd => "vhd",
        }
    }

    /// The file the disk itself is written into: its extension, and the byte of that file
    /// where the disk starts. raw, vhd and qcow2 are written in place (a VHD is the raw disk
    /// and a footer, a qcow2 a header cluster, the disk and its tables); the streams are made
    /// from an unnamed raw image that is then dropped.
    pub(crate) fn disk_file(self) -> (&'static str, u64) {
        match self {
            OutputFormat::Vhd => ("vhd", 0),
            OutputFormat::Qcow2 => ("qcow2", mkdisk_outputs::QCOW2_DATA_OFFSET),
            OutputFormat::Raw | OutputFormat::RawZst | OutputFormat::RawGz => ("raw", 0),
        }
    }
}

/// The output part of [`BuildOptions`] that writing needs after planning.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputPlan {
    pub(crate) format: OutputFormat,
    pub(crate) bmap: bool,
    /// For the VHD's unique id.
    pub(crate) seed: Uuid,
    /// For the VHD's timestamp.
    pub(crate) source_date_epoch: Option<i64>,
}

impl OutputPlan {
    pub(crate) fn new(opts: &BuildOptions) -> Self {
        OutputPlan { format: opts.format, bmap: opts.bmap, seed: opts.seed, source_date_epoch: opts.source_date_epoch }
    }

    /// The VHD footer's timestamp: seconds since 2000-01-01 UTC, from `SOURCE_DATE_EPOCH`
    /// (never the clock), clamped to the field; 0 without an epoch.
    pub(crate) fn vhd_timestamp(&self) -> u32 {
        const Y2000: i64 = 946_684_800;
        self.source_date_epoch.map_or(0, |e| u32::try_from(e.saturating_sub(Y2000).max(0)).unwrap_or(u32::MAX))
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL.into_iter().find(|f| f.extension() == s).ok_or_else(|| {
            let all: Vec<&str> = OutputFormat::ALL.iter().map(|f| f.extension()).collect();
            format!("unknown image format {s:?} (known: {})", all.join(", "))
        })
    }
}

impl BuildOptions {
    /// Defaults: no root, the default seed, all cores, root ownership, no epoch, no NixOS
    /// content, no measuring.
    #[must_use]
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            out_dir: out_dir.into(),
            root: None,
            seed: ids::DEFAULT_SEED,
            threads: None,
            keep_owner: false,
            source_date_epoch: None,
            compress: None,
            nixos: NixosOptions::default(),
            measure: false,
            format: OutputFormat::Raw,
            bmap: false,
            image_size: None,
            headroom: Headroom::default(),
        }
    }

    /// With `root` as the source tree.
    #[must_use]
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// With `seed` for every identifier.
    #[must_use]
    pub fn with_seed(mut self, seed: Uuid) -> Self {
        self.seed = seed;
        self
    }

    /// With `SOURCE_DATE_EPOCH` = `epoch`.
    #[must_use]
    pub fn with_source_date_epoch(mut self, epoch: i64) -> Self {
        self.source_date_epoch = Some(epoch);
        self
    }
}

/// Which systemd-boot binary to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemdBoot {
    /// `<toplevel>/systemd/lib/systemd/boot/efi/systemd-boot<x64|aa64|riscv64>.efi`.
    FromToplevel,
    /// This file.
    File(PathBuf),
}

/// NixOS inputs of a build.
///
/// Boot loaders: when any of [`systemd_boot`](Self::systemd_boot), [`grub`](Self::grub) or
/// [`grub_efi`](Self::grub_efi) is set, exactly those are installed; otherwise, with a
/// [`system`](Self::system), systemd-boot is installed when the toplevel's bootspec carries
/// NixOS's `org.nixos.systemd-boot` extension (NixOS adds it only when
/// `boot.loader.systemd-boot.enable`) and the layout has a mounted vfat ESP, and nothing else.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct NixosOptions {
    /// A `closureInfo` output directory (`store-paths`, `registration`).
    pub closure: Option<PathBuf>,
    /// The host directory holding the store paths (default `/nix/store`; for a chroot store
    /// `<root>/nix/store`).
    pub store_dir: Option<PathBuf>,
    /// The NixOS system toplevel store path.
    pub system: Option<String>,
    /// Install systemd-boot on the ESP.
    pub systemd_boot: Option<SystemdBoot>,
    /// systemd-boot's `console-mode` (default `keep`, NixOS's `consoleMode`).
    pub systemd_boot_console_mode: Option<String>,
    /// systemd-boot's boot entry editor (NixOS's `editor`, default on); `false` writes
    /// `editor 0`.
    pub systemd_boot_no_editor: bool,
    /// GRUB library directories (`${grub2}/lib/grub`, `${grub2_efi}/lib/grub`) holding the
    /// platform directories `i386-pc/` and `x86_64-efi/`. With `i386-pc/`, GRUB for BIOS goes
    /// on [`grub_disks`](Self::grub_disks) (default: every disk with a BIOS boot partition,
    /// unless only [`grub_efi`](Self::grub_efi) is asked for).
    pub grub: Vec<PathBuf>,
    /// Disks (layout names) that get GRUB for BIOS.
    pub grub_disks: Vec<String>,
    /// Install GRUB for EFI on the ESP (`EFI/BOOT/BOOTX64.EFI`, or
    /// `EFI/<grub_efi_id>/grubx64.efi`).
    pub grub_efi: bool,
    /// Install GRUB for EFI under `EFI/<ID>/grubx64.efi` (found only through a firmware boot
    /// entry, which an image cannot create) instead of the removable path.
    pub grub_efi_id: Option<String>,
    /// Text added to `grub.cfg` after its settings (`boot.loader.grub.extraConfig`).
    pub grub_extra_config: Option<String>,
    /// Menu entries added after the default entry (`boot.loader.grub.extraEntries`).
    pub grub_extra_entries: Option<String>,
    /// Install no boot loader even when the layout allows one.
    pub no_bootloader: bool,
    /// Boot menu timeout in seconds (default 5, NixOS's `boot.loader.timeout`).
    pub boot_timeout: Option<u32>,
    /// Put GRUB's terminal on the serial port as well.
    pub grub_serial: bool,
    /// The image's architecture (`--arch`): boot loader file names and binaries. `None`: the
    /// toplevel's bootspec `system`, else the host's. A bootspec that disagrees is an error.
    pub arch: Option<mkdisk_nixstore::Arch>,
}

impl NixosOptions {
    /// True if any NixOS content was asked for.
    #[must_use]
    pub fn any(&self) -> bool {
        self.closure.is_some() || self.system.is_some() || self.explicit_boot_loaders()
    }

    /// True if the boot loaders were named (rather than taken from the bootspec).
    #[must_use]
    pub fn explicit_boot_loaders(&self) -> bool {
        self.systemd_boot.is_some() || !self.grub.is_empty() || self.grub_efi || !self.grub_disks.is_empty()
    }

    /// The host directory holding the store paths.
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.store_dir.clone().unwrap_or_else(|| PathBuf::from(mkdisk_nixstore::STORE_DIR))
    }
}
