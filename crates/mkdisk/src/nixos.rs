//! NixOS content: the glue between the layout and `mkdisk-nixstore`.
//!
//! Before the root tree is split by mount point, [`populate`] grafts into it the closure
//! (`--closure`), the Nix database, the system profile and `/etc/NIXOS` (`--system`), the
//! systemd-boot ESP content (when the layout has an ESP) and GRUB's `/boot/grub` (when the
//! layout has a BIOS boot partition and `--grub-bios-dir` is given), and decides the bytes of
//! GRUB's MBR and EF02 writes ([`GrubWrites`]), which the image plan then executes.

use std::path::{Path, PathBuf};

use mkdisk_gpt::{types, Placed};
use mkdisk_nixstore as nix;
use mkdisk_tree::Tree;

use crate::options::NixosOptions;
use crate::place::PlacedDisk;

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
    #[error("--systemd-boot and --grub-bios-dir need --system")]
    BootLoaderNeedsSystem,
    /// `--systemd-boot` on a layout without a mounted vfat ESP.
    #[error("--systemd-boot: the layout has no mounted vfat EFI system partition (EF00)")]
    NoEsp,
    /// GRUB's files would not be on a disk filesystem.
    #[error("GRUB: /boot/grub is not on a disk filesystem of the layout")]
    GrubNotOnDisk,
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
    /// `systemd-boot` or `grub-bios`.
    pub kind: &'static str,
    /// Index of the disk.
    pub disk: usize,
    /// The partition its code goes to (the ESP, or EF02 for GRUB's core.img).
    pub partition: String,
    /// Where its configuration and kernels go (`/boot` of the ESP, or `/boot/grub`'s mount).
    pub files: String,
}

/// What [`populate`] decided besides the files it added.
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
fn mount_of<'m, 'a>(ms: &'m [MountInfo<'a>], path: &str) -> Option<&'m MountInfo<'a>> {
    ms.iter().filter(|m| under(path, m.mountpoint)).max_by_key(|m| m.mountpoint.trim_end_matches('/').len())
}

/// `path` as seen from the root of the filesystem of mount `m` (GRUB's view: btrfs
/// subvolumes are directories of the top level).
fn fs_path(m: &MountInfo<'_>, path: &str) -> String {
    let mp = m.mountpoint.trim_end_matches('/');
    let rel = path.strip_prefix(mp).unwrap_or(path);
    let rel = if rel.starts_with('/') { rel.to_string() } else { format!("/{rel}") };
    match m.subvol {
        Some(s) => format!("/{}{rel}", s.trim_matches('/')),
        None => rel,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, NixosError> {
    std::fs::read(path).map_err(|source| NixosError::Read { path: path.to_path_buf(), source })
}

/// The mount holding `/` is on a disk (not tmpfs).
fn root_is_disk(ms: &[MountInfo<'_>]) -> bool {
    mount_of(ms, "/").is_some_and(|m| m.partition.is_some())
}

/// Copy the closure and write its Nix database into `tree`.
fn add_closure(tree: &mut Tree, o: &NixosOptions, dir: &Path, epoch: Option<i64>) -> Result<(), NixosError> {
    let closure =
        nix::ClosureInfo::load(dir).map_err(|source| NixosError::Closure { dir: dir.to_path_buf(), source })?;
    if let Some(sys) = &o.system {
        if !closure.store_paths.iter().any(|p| p == sys) {
            return Err(NixosError::SystemNotInClosure { system: sys.clone(), dir: dir.to_path_buf() });
        }
    }
    let mtime = epoch.unwrap_or(0);
    nix::add_closure(tree, &closure, &o.store_dir(), mtime)?;
    // registrationTime: SOURCE_DATE_EPOCH, else 1 (the store's mtime).
    nix::add_nix_db(tree, &closure.registration, epoch.unwrap_or(1), mtime)?;
    Ok(())
}

/// Add the NixOS content to `tree` (the root tree before splitting) and decide the boot
/// loaders. `epoch` is SOURCE_DATE_EPOCH (or `None`).
///
/// # Errors
/// Any input error (closure, store, boot.json, boot loader inputs, layout without the
/// partitions a requested boot loader needs), each naming what is wrong.
pub fn populate(
    tree: &mut Tree,
    disks: &[PlacedDisk],
    ms: &[MountInfo<'_>],
    o: &NixosOptions,
    epoch: Option<i64>,
    warn: &mut dyn FnMut(String),
) -> Result<NixosPlan, NixosError> {
    let mtime = epoch.unwrap_or(0);
    if let Some(dir) = &o.closure {
        add_closure(tree, o, dir, epoch)?;
    }
    let Some(system) = &o.system else {
        if o.systemd_boot.is_some() || o.grub_bios_dir.is_some() {
            return Err(NixosError::BootLoaderNeedsSystem);
        }
        return Ok(NixosPlan::default());
    };
    let bootspec = nix::Bootspec::load(system, &o.store_dir())?;
    nix::add_profiles(tree, system, mtime, root_is_disk(ms))?;
    if o.no_bootloader {
        return Ok(NixosPlan::default());
    }
    let mut plan = NixosPlan::default();
    let esp = add_systemd_boot(tree, ms, &bootspec, o, mtime, &mut plan)?;
    add_grub(tree, disks, ms, &bootspec, o, mtime, esp, warn, &mut plan)?;
    Ok(plan)
}

/// systemd-boot, where the layout has a mounted vfat ESP; whether it has one.
fn add_systemd_boot(
    tree: &mut Tree,
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    o: &NixosOptions,
    mtime: i64,
    plan: &mut NixosPlan,
) -> Result<bool, NixosError> {
    let esp = ms.iter().find(|m| m.partition.is_some_and(|(_, p)| p.type_guid == types::ESP) && m.format == "vfat");
    let Some(esp) = esp else {
        return if o.systemd_boot.is_some() { Err(NixosError::NoEsp) } else { Ok(false) };
    };
    let so = nix::SystemdBootOptions {
        efi: o.systemd_boot.clone(),
        timeout: Some(o.boot_timeout.unwrap_or(5)),
        epoch: mtime,
        generation: 1,
    };
    let files = nix::systemd_boot_files(bootspec, &o.store_dir(), &so)?;
    nix::add_files(tree, esp.mountpoint, &files, mtime)?;
    if let Some((disk, p)) = esp.partition {
        let files = esp.mountpoint.to_string();
        plan.boot_loaders.push(BootLoader { kind: "systemd-boot", disk, partition: p.name.clone(), files });
    }
    Ok(true)
}

/// GRUB for BIOS, where the layout has an EF02 partition and `--grub-bios-dir` is given.
#[allow(clippy::too_many_arguments)] // the one step that needs all of them
fn add_grub(
    tree: &mut Tree,
    disks: &[PlacedDisk],
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    o: &NixosOptions,
    mtime: i64,
    esp: bool,
    warn: &mut dyn FnMut(String),
    plan: &mut NixosPlan,
) -> Result<(), NixosError> {
    let bios = disks.iter().enumerate().find_map(|(di, dp)| {
        dp.layout.partitions.iter().find(|p| p.type_guid == types::BIOS_BOOT).map(|p| (di, dp, p))
    });
    let (dir, (di, dp, part)) = match (&o.grub_bios_dir, bios) {
        (Some(_), None) => return Err(nix::NixError::NoBiosBootPartition.into()),
        (None, Some(_)) if !esp => {
            warn("the layout has a BIOS boot partition (EF02) but no --grub-bios-dir: no boot loader installed".into());
            return Ok(());
        }
        (None, None) if !esp => {
            warn("the layout has neither an ESP nor a BIOS boot partition: no boot loader installed".into());
            return Ok(());
        }
        (None, _) => return Ok(()),
        (Some(dir), Some(b)) => (dir, b),
    };
    let boot_img = read(&dir.join("boot.img"))?;
    let core_img = read(&dir.join("core.img"))?;
    // The protective MBR write_gpt puts in sector 0: boot code zero, then the partition table.
    let mut lba0 = [0u8; 512];
    lba0[446..].copy_from_slice(&mkdisk_gpt::protective_mbr_tail(dp.layout.sectors));
    let e = nix::grub_embed(&boot_img, &core_img, &lba0, part.first_lba, part.sectors())?;
    let files = add_grub_files(tree, ms, bootspec, &o.store_dir(), dir, o, mtime)?;
    plan.grub.push(GrubWrites { disk: di, mbr: e.mbr, core: e.core, core_offset: part.offset_bytes() });
    plan.boot_loaders.push(BootLoader { kind: "grub-bios", disk: di, partition: part.name.clone(), files });
    Ok(())
}

fn add_grub_files(
    tree: &mut Tree,
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    store_dir: &Path,
    grub_dir: &Path,
    o: &NixosOptions,
    mtime: i64,
) -> Result<String, NixosError> {
    let boot_m = mount_of(ms, "/boot/grub").filter(|m| m.partition.is_some()).ok_or(NixosError::GrubNotOnDisk)?;
    let store_m = mount_of(ms, "/nix/store");
    let key = |m: &MountInfo<'_>| m.partition.map(|(d, p)| (d, p.guid));
    let same_fs = store_m.is_some_and(|s| s.partition.is_some() && key(s) == key(boot_m));
    let mut files = nix::BootFiles::default();
    let resolve = |what: &'static str, p: &str| {
        nix::resolve_store_path(store_dir, p).map_err(|e| nix::NixError::MissingBootFile {
            what,
            path: p.to_string(),
            message: e.to_string(),
        })
    };
    let kernel = resolve("kernel", &bootspec.kernel)?;
    let initrd = bootspec.initrd.as_deref().map(|i| resolve("initrd", i)).transpose()?;
    let (kpath, ipath) = if same_fs {
        let m = store_m.unwrap_or(boot_m);
        (fs_path(m, &kernel), initrd.as_deref().map(|i| fs_path(m, i)))
    } else {
        // install-grub.pl's copyKernels: /boot/kernels/<store path without /nix/store/, / → ->.
        let mut copy = |p: &str| -> Result<String, nix::NixError> {
            let name = p.trim_start_matches("/nix/store/").replace('/', "-");
            let host = nix::store_host_path(store_dir, p)?;
            files.add_host(format!("kernels/{name}"), &host)?;
            Ok(fs_path(boot_m, &format!("/boot/kernels/{name}")))
        };
        let k = copy(&kernel)?;
        let i = initrd.as_deref().map(&mut copy).transpose()?;
        (k, i)
    };
    let cfg = nix::grub_cfg(
        bootspec,
        &nix::GrubCfgOptions {
            fs_uuid: (if same_fs { store_m.unwrap_or(boot_m) } else { boot_m }).search_id.clone().unwrap_or_default(),
            kernel: kpath,
            initrd: ipath,
            timeout: o.boot_timeout.unwrap_or(5),
            serial: o.grub_serial,
            epoch: mtime,
        },
    );
    files.add_bytes("grub/grub.cfg", cfg);
    // grubenv: exactly 1024 bytes.
    let mut env = b"# GRUB Environment Block\n".to_vec();
    env.resize(1024, b'#');
    files.add_bytes("grub/grubenv", env);
    let i386 = grub_dir.join("i386-pc");
    let bad = |source| NixosError::Read { path: i386.clone(), source };
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&i386).map_err(bad)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(bad)?;
    names.sort();
    for p in names {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if p.is_file() {
            files.add_host(format!("grub/i386-pc/{name}"), &p)?;
        }
    }
    nix::add_files(tree, "/boot", &files, mtime)?;
    Ok(boot_m.mountpoint.to_string())
}
