//! What the boot loader installs share: the NixOS content's errors, the layout's mounts as a
//! boot loader sees them, and what the image plan executes ([`GrubWrites`]) and reports
//! ([`BootLoader`]).

use std::path::{Path, PathBuf};

use mkdisk_gpt::Placed;
use mkdisk_nixstore as nix;

/// Errors of the NixOS content, each naming the input that is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixosError {
    /// The closure, store, boot.json or a boot loader input is bad.
    #[error(transparent)]
    Nix(#[from] nix::NixError),
    /// `--closure` could not be read.
    #[error("--closure {}: {source}", dir.display())]
    Closure {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: nix::NixError,
    },
    /// `--system` is not in the closure.
    #[error("--system {system} is not in the closure {}", dir.display())]
    SystemNotInClosure {
        /// The toplevel.
        system: String,
        /// The closure directory.
        dir: PathBuf,
    },
    /// A boot loader option without `--system`.
    #[error("--systemd-boot, --grub and --grub-efi need --system")]
    BootLoaderNeedsSystem,
    /// systemd-boot or GRUB for EFI on a layout without a mounted vfat ESP.
    #[error("{what}: the layout has no mounted vfat EFI system partition (EF00)")]
    NoEsp {
        /// The option that needs it.
        what: &'static str,
    },
    /// GRUB's files would not be on a filesystem of the layout GRUB can read.
    #[error("GRUB (--grub, --grub-efi): /boot/grub is {what}; GRUB reads it only from a vfat, ext4 or btrfs partition of the layout")]
    GrubCannotRead {
        /// Where /boot/grub is instead (e.g. "on tmpfs").
        what: String,
    },
    /// `--grub` without the platform directory a GRUB install needs.
    #[error("{what}: no --grub directory holds {platform}/ (give GRUB's lib/grub, e.g. ${{grub2}}/lib/grub)")]
    NoGrubPlatform {
        /// The install that needs it.
        what: &'static str,
        /// `i386-pc`, `x86_64-efi`, `arm64-efi`, ...
        platform: &'static str,
    },
    /// `--grub-disk` names a disk the layout does not have.
    #[error("--grub-disk {disk}: the layout has no disk {disk:?}")]
    NoSuchDisk {
        /// The name.
        disk: String,
    },
    /// A disk that should get GRUB for BIOS has no BIOS boot partition.
    #[error("GRUB for BIOS (--grub with i386-pc/): disk {disk:?} has no BIOS boot partition (type EF02)")]
    NoBiosBoot {
        /// The disk.
        disk: String,
    },
    /// systemd-boot and GRUB for EFI both want the removable path.
    #[error("systemd-boot and GRUB for EFI both install {path}; give --grub-efi-id to put GRUB beside it")]
    BothOnRemovablePath {
        /// The removable path (`EFI/BOOT/BOOTX64.EFI`, ...).
        path: String,
    },
    /// GRUB for BIOS on an architecture that has no BIOS.
    #[error("GRUB for BIOS (--grub with i386-pc/, --grub-disk; NixOS: boot.loader.grub.device) on an {arch} image: {arch} machines have no BIOS; use --grub-efi (boot.loader.grub.efiSupport) or --systemd-boot")]
    NoBios {
        /// The image's architecture.
        arch: nix::Arch,
    },
    /// `--arch` and the toplevel's bootspec disagree, or the bootspec's system is unknown.
    #[error("{0}")]
    Arch(String),
    /// A GRUB input file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A mount of the layout as the NixOS content sees it (the plan makes these from
/// [`crate::spec::Spec::mounts`] and each filesystem's options).
#[derive(Clone, Debug)]
pub struct MountInfo<'a> {
    /// The mount point.
    pub mountpoint: &'a str,
    /// Its filesystem format (`vfat`, `ext4`, `btrfs`, `tmpfs`, ...).
    pub format: &'a str,
    /// The placed partition and its disk index; `None` for `nodev` mounts.
    pub partition: Option<(usize, &'a Placed)>,
    /// The btrfs subvolume mounted there, if any.
    pub subvol: Option<&'a str>,
    /// What GRUB's `search --fs-uuid` finds the filesystem by: the filesystem UUID, or the
    /// FAT volume ID as `XXXX-XXXX`.
    pub search_id: Option<String>,
}

/// The MBR and EF02 writes of a GRUB BIOS install on one disk, decided in full.
#[derive(Clone, Debug)]
pub struct GrubWrites {
    /// Index of the disk.
    pub disk: usize,
    /// Sector 0: the patched boot.img with the protective MBR's partition table.
    pub mbr: [u8; 512],
    /// core.img with its blocklist, for the EF02 partition's first byte.
    pub core: Vec<u8>,
    /// Byte offset of the EF02 partition in the disk.
    pub core_offset: u64,
}

/// A boot loader the image gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLoader {
    /// `systemd-boot`, `grub-bios` or `grub-efi`.
    pub kind: &'static str,
    /// Index of the disk.
    pub disk: usize,
    /// The partition its code goes to (the ESP, or EF02 for GRUB's core.img).
    pub partition: String,
    /// Where its configuration and kernels go (`/boot` of the ESP, or `/boot/grub`'s mount).
    pub files: String,
}

/// What the NixOS content decided besides the files it added.
#[derive(Clone, Debug, Default)]
pub struct NixosPlan {
    /// GRUB's raw writes.
    pub grub: Vec<GrubWrites>,
    /// The boot loaders installed.
    pub boot_loaders: Vec<BootLoader>,
}

fn under(path: &str, mountpoint: &str) -> bool {
    let m = mountpoint.trim_end_matches('/');
    m.is_empty() || path == m || path.strip_prefix(m).is_some_and(|r| r.starts_with('/'))
}

/// The mount holding `path` (longest mount point prefix).
pub(crate) fn mount_of<'m, 'a>(ms: &'m [MountInfo<'a>], path: &str) -> Option<&'m MountInfo<'a>> {
    ms.iter().filter(|m| under(path, m.mountpoint)).max_by_key(|m| m.mountpoint.trim_end_matches('/').len())
}

/// `path` as seen from the root of the filesystem of mount `m` (GRUB's view: btrfs
/// subvolumes are directories of the top level).
pub(crate) fn fs_path(m: &MountInfo<'_>, path: &str) -> String {
    let mp = m.mountpoint.trim_end_matches('/');
    let rel = path.strip_prefix(mp).unwrap_or(path);
    let rel = if rel.starts_with('/') { rel.to_string() } else { format!("/{rel}") };
    match m.subvol {
        Some(s) => format!("/{}{rel}", s.trim_matches('/')),
        None => rel,
    }
}

/// The mounted vfat EFI system partition, if the layout has one.
pub(crate) fn esp<'m, 'a>(ms: &'m [MountInfo<'a>]) -> Option<&'m MountInfo<'a>> {
    ms.iter().find(|m| m.partition.is_some_and(|(_, p)| p.type_guid == mkdisk_gpt::types::ESP) && m.format == "vfat")
}

/// The bytes of a host file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, NixosError> {
    std::fs::read(path).map_err(|source| NixosError::Read { path: path.to_path_buf(), source })
}
