//! NixOS content for `mkdisk build`: the glue between the layout and `mkdisk-nixstore`.
//!
//! Before the root tree is split by mount point, [`populate`] grafts into it the closure
//! (`--closure`), the Nix database, the system profile and `/etc/NIXOS` (`--system`), the
//! systemd-boot ESP content (when the layout has an ESP) and GRUB's `/boot/grub` (when the
//! layout has a BIOS boot partition and `--grub-bios-dir` is given). The GRUB MBR and EF02
//! writes are planned here ([`GrubPlan`]) and executed by `build()` after the GPT is written.

use std::path::{Path, PathBuf};

use mkdisk_gpt::Placed;
use mkdisk_nixstore as nix;
use mkdisk_tree::{ids, Tree};

use crate::build::{BuildError, DiskPlan};
use crate::spec::{Content, Spec};

/// EF02, BIOS boot partition.
const BIOS_BOOT: uuid::Uuid = uuid::Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
/// EF00, EFI system partition.
const ESP: uuid::Uuid = uuid::Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);

/// NixOS inputs of a build.
#[derive(Clone, Debug, Default)]
pub struct NixosOptions {
    /// A `closureInfo` output directory (`store-paths`, `registration`).
    pub closure: Option<PathBuf>,
    /// The host directory holding the store paths (default `/nix/store`; for a chroot store
    /// `<root>/nix/store`).
    pub store_dir: Option<PathBuf>,
    /// The NixOS system toplevel store path.
    pub system: Option<String>,
    /// `systemd-bootx64.efi` to install instead of the toplevel's systemd's.
    pub systemd_boot: Option<PathBuf>,
    /// A directory with `boot.img`, `core.img` (built for this disk) and `i386-pc/`.
    pub grub_bios_dir: Option<PathBuf>,
    /// Install no boot loader even when the layout allows one.
    pub no_bootloader: bool,
    /// Boot menu timeout in seconds (default 5, NixOS's `boot.loader.timeout`).
    pub boot_timeout: Option<u32>,
    /// Put GRUB's terminal on the serial port as well.
    pub grub_serial: bool,
}

impl NixosOptions {
    /// True if any NixOS content was asked for.
    #[must_use]
    pub fn any(&self) -> bool {
        self.closure.is_some() || self.system.is_some() || self.systemd_boot.is_some() || self.grub_bios_dir.is_some()
    }

    fn store_dir(&self) -> PathBuf {
        self.store_dir.clone().unwrap_or_else(|| PathBuf::from(nix::STORE_DIR))
    }
}

/// The MBR/EF02 writes of a GRUB BIOS install on one disk.
#[derive(Clone, Debug)]
pub struct GrubPlan {
    /// Index of the disk in the spec.
    pub disk: usize,
    /// `boot.img`.
    pub boot_img: Vec<u8>,
    /// `core.img`.
    pub core_img: Vec<u8>,
    /// First LBA of the EF02 partition.
    pub first_lba: u64,
    /// Its length in sectors.
    pub sectors: u64,
}

fn nix_err(e: nix::NixError) -> BuildError {
    BuildError::Nixos(e.to_string())
}

fn other(msg: impl Into<String>) -> BuildError {
    BuildError::Nixos(msg.into())
}

/// A mount of the layout: mount point, filesystem format, the placed partition, the btrfs
/// subvolume name if it is one, and its disk index.
struct Mount<'a> {
    mountpoint: String,
    format: String,
    placed: Option<&'a Placed>,
    subvol: Option<String>,
    extra_args: Vec<String>,
    disk: usize,
}

fn mounts<'a>(spec: &Spec, plans: &'a [DiskPlan]) -> Vec<Mount<'a>> {
    let mut out = Vec::new();
    for (di, (d, dp)) in spec.disks.iter().zip(plans).enumerate() {
        for p in &d.partitions {
            let placed = dp.layout.partitions.iter().find(|x| x.name == p.name);
            match &p.content {
                Content::Filesystem(fs) => {
                    if let Some(m) = &fs.mountpoint {
                        out.push(Mount {
                            mountpoint: m.clone(),
                            format: fs.format.clone(),
                            placed,
                            subvol: None,
                            extra_args: fs.extra_args.clone(),
                            disk: di,
                        });
                    }
                }
                Content::Btrfs(b) => {
                    if let Some(m) = &b.mountpoint {
                        out.push(Mount {
                            mountpoint: m.clone(),
                            format: "btrfs".into(),
                            placed,
                            subvol: None,
                            extra_args: b.extra_args.clone(),
                            disk: di,
                        });
                    }
                    for s in &b.subvolumes {
                        if let Some(m) = &s.mountpoint {
                            out.push(Mount {
                                mountpoint: m.clone(),
                                format: "btrfs".into(),
                                placed,
                                subvol: Some(s.name.clone()),
                                extra_args: b.extra_args.clone(),
                                disk: di,
                            });
                        }
                    }
                }
                Content::Swap(_) | Content::None => {}
            }
        }
    }
    for n in &spec.nodev {
        out.push(Mount {
            mountpoint: n.mountpoint.clone(),
            format: n.fs_type.clone(),
            placed: None,
            subvol: None,
            extra_args: Vec::new(),
            disk: usize::MAX,
        });
    }
    out
}

fn under(path: &str, mountpoint: &str) -> bool {
    let m = mountpoint.trim_end_matches('/');
    m.is_empty() || path == m || path.strip_prefix(m).is_some_and(|r| r.starts_with('/'))
}

/// The mount holding `path` (longest mount point prefix).
fn mount_of<'m, 'a>(ms: &'m [Mount<'a>], path: &str) -> Option<&'m Mount<'a>> {
    ms.iter().filter(|m| under(path, &m.mountpoint)).max_by_key(|m| m.mountpoint.trim_end_matches('/').len())
}

/// `path` as seen from the root of the filesystem of mount `m` (GRUB's view: btrfs
/// subvolumes are directories of the top level).
fn fs_path(m: &Mount<'_>, path: &str) -> String {
    let mp = m.mountpoint.trim_end_matches('/');
    let rel = path.strip_prefix(mp).unwrap_or(path);
    let rel = if rel.starts_with('/') { rel.to_string() } else { format!("/{rel}") };
    match &m.subvol {
        Some(s) => format!("/{}{rel}", s.trim_matches('/')),
        None => rel,
    }
}

/// The `search --fs-uuid` value of a mount's filesystem.
fn search_uuid(m: &Mount<'_>) -> Result<String, BuildError> {
    let placed = m.placed.ok_or_else(|| other(format!("{}: not on a disk partition", m.mountpoint)))?;
    let uuid = ids::fs_uuid(&placed.guid);
    if m.format == "vfat" {
        // As build.rs's FAT options: `-i VOLID` or the first four bytes of the fs UUID.
        let mut id = {
            let b = uuid.as_bytes();
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        };
        let mut it = m.extra_args.iter();
        while let Some(a) = it.next() {
            if a == "-i" {
                if let Some(v) = it.next() {
                    id = u32::from_str_radix(v, 16).map_err(|_| other(format!("-i {v:?}: not hexadecimal")))?;
                }
            }
        }
        return Ok(format!("{:04X}-{:04X}", id >> 16, id & 0xffff));
    }
    Ok(uuid.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| other(format!("{}: {e}", path.display())))
}

/// Add the NixOS content to `tree` (the root tree before splitting) and plan the GRUB
/// writes. `epoch` is SOURCE_DATE_EPOCH (or `None`).
///
/// # Errors
/// Any input error (closure, store, boot.json, boot loader inputs, layout without the
/// partitions a requested boot loader needs), each naming what is wrong.
pub fn populate(
    tree: &mut Tree,
    spec: &Spec,
    plans: &[DiskPlan],
    o: &NixosOptions,
    epoch: Option<i64>,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<GrubPlan>, BuildError> {
    let mtime = epoch.unwrap_or(0);
    let store_dir = o.store_dir();
    let ms = mounts(spec, plans);
    let root_is_disk = mount_of(&ms, "/").is_some_and(|m| m.placed.is_some());
    if let Some(dir) = &o.closure {
        let closure = nix::ClosureInfo::load(dir).map_err(|e| other(format!("--closure {}: {e}", dir.display())))?;
        if let Some(sys) = &o.system {
            if !closure.store_paths.iter().any(|p| p == sys) {
                return Err(other(format!("--system {sys} is not in the closure {}", dir.display())));
            }
        }
        nix::add_closure(tree, &closure, &store_dir, mtime).map_err(nix_err)?;
        // registrationTime: SOURCE_DATE_EPOCH, else 1 (the store's mtime).
        nix::add_nix_db(tree, &closure.registration, epoch.unwrap_or(1), mtime).map_err(nix_err)?;
    }
    let Some(system) = &o.system else {
        if o.systemd_boot.is_some() || o.grub_bios_dir.is_some() {
            return Err(other("--systemd-boot and --grub-bios-dir need --system"));
        }
        return Ok(Vec::new());
    };
    let bootspec = nix::Bootspec::load(system, &store_dir).map_err(nix_err)?;
    nix::add_profiles(tree, system, mtime, root_is_disk).map_err(nix_err)?;
    if o.no_bootloader {
        return Ok(Vec::new());
    }
    let mut grub = Vec::new();
    // systemd-boot: the layout has a mounted vfat ESP.
    let esp = ms.iter().find(|m| m.placed.is_some_and(|p| p.type_guid == ESP) && m.format == "vfat");
    match esp {
        Some(esp) => {
            let so = nix::SystemdBootOptions {
                efi: o.systemd_boot.clone(),
                timeout: Some(o.boot_timeout.unwrap_or(5)),
                epoch: mtime,
                generation: 1,
            };
            let files = nix::systemd_boot_files(&bootspec, &store_dir, &so).map_err(nix_err)?;
            nix::add_files(tree, &esp.mountpoint, &files, mtime).map_err(nix_err)?;
        }
        None if o.systemd_boot.is_some() => {
            return Err(other("--systemd-boot: the layout has no mounted vfat EFI system partition (EF00)"));
        }
        None => {}
    }
    // GRUB BIOS: an EF02 partition and --grub-bios-dir.
    let bios = plans
        .iter()
        .enumerate()
        .find_map(|(di, dp)| dp.layout.partitions.iter().find(|p| p.type_guid == BIOS_BOOT).map(|p| (di, p)));
    match (&o.grub_bios_dir, bios) {
        (Some(_), None) => return Err(nix_err(nix::NixError::NoBiosBootPartition)),
        (None, Some(_)) => {
            if esp.is_none() {
                warn(
                    "the layout has a BIOS boot partition (EF02) but no --grub-bios-dir: no boot loader installed"
                        .into(),
                );
            }
        }
        (None, None) => {
            if esp.is_none() {
                warn("the layout has neither an ESP nor a BIOS boot partition: no boot loader installed".into());
            }
        }
        (Some(dir), Some((di, part))) => {
            let boot_img = read(&dir.join("boot.img"))?;
            let core_img = read(&dir.join("core.img"))?;
            // Validate now (sizes, version) so a bad input fails before any write.
            nix::grub_embed(&boot_img, &core_img, &[0u8; 512], part.first_lba, part.sectors()).map_err(nix_err)?;
            add_grub_files(tree, &ms, &bootspec, &store_dir, dir, o, mtime)?;
            grub.push(GrubPlan { disk: di, boot_img, core_img, first_lba: part.first_lba, sectors: part.sectors() });
        }
    }
    Ok(grub)
}

fn add_grub_files(
    tree: &mut Tree,
    ms: &[Mount<'_>],
    bootspec: &nix::Bootspec,
    store_dir: &Path,
    grub_dir: &Path,
    o: &NixosOptions,
    mtime: i64,
) -> Result<(), BuildError> {
    let boot_m = mount_of(ms, "/boot/grub")
        .filter(|m| m.placed.is_some())
        .ok_or_else(|| other("GRUB: /boot/grub is not on a disk filesystem of the layout"))?;
    let store_m = mount_of(ms, "/nix/store");
    let same_fs = store_m.is_some_and(|s| {
        s.placed.map(|p| p.guid) == boot_m.placed.map(|p| p.guid) && s.disk == boot_m.disk && s.placed.is_some()
    });
    let mut files = nix::BootFiles::default();
    let resolve = |what: &'static str, p: &str| {
        nix::resolve_store_path(store_dir, p)
            .map_err(|e| nix_err(nix::NixError::MissingBootFile { what, path: p.to_string(), message: e.to_string() }))
    };
    let kernel = resolve("kernel", &bootspec.kernel)?;
    let initrd = bootspec.initrd.as_deref().map(|i| resolve("initrd", i)).transpose()?;
    let (kpath, ipath) = if same_fs {
        let m = store_m.unwrap_or(boot_m);
        (fs_path(m, &kernel), initrd.as_deref().map(|i| fs_path(m, i)))
    } else {
        // install-grub.pl's copyKernels: /boot/kernels/<store path without /nix/store/, / → ->.
        let mut copy = |p: &str| -> Result<String, BuildError> {
            let name = p.trim_start_matches("/nix/store/").replace('/', "-");
            let host = nix::store_host_path(store_dir, p).map_err(nix_err)?;
            files.add_host(format!("kernels/{name}"), &host).map_err(nix_err)?;
            Ok(fs_path(boot_m, &format!("/boot/kernels/{name}")))
        };
        let k = copy(&kernel)?;
        let i = initrd.as_deref().map(&mut copy).transpose()?;
        (k, i)
    };
    let cfg = nix::grub_cfg(
        bootspec,
        &nix::GrubCfgOptions {
            fs_uuid: search_uuid(if same_fs { store_m.unwrap_or(boot_m) } else { boot_m })?,
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
    let mut names: Vec<PathBuf> = std::fs::read_dir(&i386)
        .map_err(|e| other(format!("{}: {e}", i386.display())))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| other(format!("{}: {e}", i386.display())))?;
    names.sort();
    for p in names {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if p.is_file() {
            files.add_host(format!("grub/i386-pc/{name}"), &p).map_err(nix_err)?;
        }
    }
    nix::add_files(tree, "/boot", &files, mtime).map_err(nix_err)
}

/// Execute a [`GrubPlan`] on the written disk: core.img into the EF02 partition, the patched
/// boot.img into sector 0 (keeping the protective MBR's partition table).
///
/// # Errors
/// Reading or writing the image fails, or the embed check fails.
pub fn write_grub(plan: &GrubPlan, disk: &mkdisk_tree::Region) -> Result<(), BuildError> {
    let mut lba0 = [0u8; 512];
    disk.read_at(0, &mut lba0)?;
    let e = nix::grub_embed(&plan.boot_img, &plan.core_img, &lba0, plan.first_lba, plan.sectors).map_err(nix_err)?;
    disk.write_at(plan.first_lba * mkdisk_gpt::SECTOR_SIZE, &e.core)?;
    disk.write_at(0, &e.mbr)?;
    Ok(())
}
