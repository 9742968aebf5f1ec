//! NixOS content: the glue between the layout and `mkdisk-nixstore`.
//!
//! Before the root tree is split by mount point, [`populate`] grafts into it the closure
//! (`--closure`), the Nix database, the system profile and `/etc/NIXOS` (`--system`), and the
//! boot loaders: systemd-boot on the ESP and GRUB ([`crate::grub`]), as
//! [`NixosOptions`] chooses them, deciding the bytes of GRUB's MBR and EF02 writes
//! ([`GrubWrites`]), which the image plan then executes.

use std::path::Path;

use mkdisk_nixstore as nix;
use mkdisk_tree::Tree;

use crate::boot::{esp, mount_of};
pub use crate::boot::{BootLoader, GrubWrites, MountInfo, NixosError, NixosPlan};
use crate::options::{NixosOptions, SystemdBoot};
use crate::place::PlacedDisk;

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
        if o.explicit_boot_loaders() {
            return Err(NixosError::BootLoaderNeedsSystem);
        }
        return Ok(NixosPlan::default());
    };
    let bootspec = nix::Bootspec::load(system, &o.store_dir())?;
    let arch = target_arch(o.arch, &bootspec)?;
    nix::add_profiles(tree, system, mtime, root_is_disk(ms))?;
    if o.no_bootloader {
        return Ok(NixosPlan::default());
    }
    let mut plan = NixosPlan::default();
    let systemd_boot = match (&o.systemd_boot, o.explicit_boot_loaders()) {
        (Some(sb), _) => Some(sb.clone()),
        (None, true) => None,
        (None, false) => from_bootspec(ms, &bootspec, warn),
    };
    if let Some(sb) = &systemd_boot {
        add_systemd_boot(tree, ms, &bootspec, sb, o, (mtime, arch), &mut plan)?;
    }
    if crate::grub::wanted(o) {
        crate::grub::install(tree, disks, ms, &bootspec, o, (mtime, arch), systemd_boot.is_some(), warn, &mut plan)?;
    }
    Ok(plan)
}

/// The image's architecture: the bootspec's `system` (`aarch64-linux`), which `--arch` must
/// agree with; without one, `--arch`, else the host's.
fn target_arch(arch: Option<nix::Arch>, bootspec: &nix::Bootspec) -> Result<nix::Arch, NixosError> {
    if bootspec.system.is_empty() {
        return Ok(arch.unwrap_or_else(nix::Arch::host));
    }
    let Some(from_spec) = nix::Arch::from_nix_system(&bootspec.system) else {
        return Err(NixosError::Arch(format!(
            "--system {}: its bootspec's system {:?} is not an architecture mkdisk installs boot loaders for (x86_64, aarch64, riscv64)",
            bootspec.toplevel, bootspec.system
        )));
    };
    match arch {
        Some(a) if a != from_spec => Err(NixosError::Arch(format!(
            "--arch {a}, but --system {} is built for {}",
            bootspec.toplevel, bootspec.system
        ))),
        _ => Ok(from_spec),
    }
}

/// With `--system` alone: systemd-boot where the bootspec says NixOS enabled it
/// (`org.nixos.systemd-boot`) and the layout has a mounted vfat ESP; else none, with a warning.
fn from_bootspec(ms: &[MountInfo<'_>], bootspec: &nix::Bootspec, warn: &mut dyn FnMut(String)) -> Option<SystemdBoot> {
    match (bootspec.systemd_boot, esp(ms).is_some()) {
        (true, true) => Some(SystemdBoot::FromToplevel),
        (true, false) => {
            warn(
                "the bootspec asks for systemd-boot but the layout has no mounted vfat ESP: no boot loader installed"
                    .into(),
            );
            None
        }
        (false, _) => {
            warn(
                "no boot loader installed: the bootspec has no org.nixos.systemd-boot and none of --systemd-boot, --grub, --grub-efi was given"
                    .into(),
            );
            None
        }
    }
}

/// systemd-boot on the layout's mounted vfat ESP.
fn add_systemd_boot(
    tree: &mut Tree,
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    sb: &SystemdBoot,
    o: &NixosOptions,
    (mtime, arch): (i64, nix::Arch),
    plan: &mut NixosPlan,
) -> Result<(), NixosError> {
    let esp = esp(ms).ok_or(NixosError::NoEsp { what: "systemd-boot" })?;
    let mut so = nix::SystemdBootOptions {
        efi: match sb {
            SystemdBoot::FromToplevel => None,
            SystemdBoot::File(f) => Some(f.clone()),
        },
        arch,
        timeout: Some(o.boot_timeout.unwrap_or(5)),
        epoch: mtime,
        generation: 1,
        ..Default::default()
    };
    if let Some(mode) = &o.systemd_boot_console_mode {
        so.console_mode.clone_from(mode);
    }
    so.editor = !o.systemd_boot_no_editor;
    let files = nix::systemd_boot_files(bootspec, &o.store_dir(), &so)?;
    nix::add_files(tree, esp.mountpoint, &files, mtime)?;
    if let Some((disk, p)) = esp.partition {
        let files = esp.mountpoint.to_string();
        plan.boot_loaders.push(BootLoader { kind: "systemd-boot", disk, partition: p.name.clone(), files });
    }
    Ok(())
}
