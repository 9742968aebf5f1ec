//! GRUB from the GRUB package's directories (`--grub DIR`): for BIOS, a core.img assembled by
//! mkdisk for each disk that gets it, embedded in its BIOS boot (EF02) partition behind a
//! patched boot.img in sector 0; for EFI, the image of that package's `grub-mkimage` on the
//! ESP. Both find `/boot/grub` by filesystem UUID (an embedded `search.fs_uuid` config, as
//! grub-install does), with the partition of the disk in the prefix where it is on that disk.
//! `grub.cfg` is shared.

use std::path::{Path, PathBuf};

use mkdisk_gpt::types;
use mkdisk_nixstore as nix;
use mkdisk_tree::Tree;

use crate::boot::{esp, fs_path, mount_of, read, BootLoader, GrubWrites, MountInfo, NixosError, NixosPlan};
use crate::options::NixosOptions;
use crate::place::PlacedDisk;

const BIOS_PLATFORM: &str = "i386-pc";

/// The first `--grub` directory holding `platform/`.
fn platform_dir(o: &NixosOptions, platform: &str) -> Option<(PathBuf, PathBuf)> {
    o.grub.iter().map(|g| (g.clone(), g.join(platform))).find(|(_, d)| d.is_dir())
}

/// Whether GRUB for BIOS or EFI was asked for at all.
pub(crate) fn wanted(o: &NixosOptions) -> bool {
    !o.grub.is_empty() || o.grub_efi || !o.grub_disks.is_empty()
}

/// The disks that get GRUB for BIOS: those named by `--grub-disk`; without it, every disk
/// with a BIOS boot partition when `--grub` has `i386-pc/` and GRUB for EFI is not the only
/// thing asked for. None on an architecture without a BIOS, where asking is an error.
fn bios_disks(disks: &[PlacedDisk], o: &NixosOptions, arch: nix::Arch) -> Result<Vec<usize>, NixosError> {
    let has_ef02 = |d: &PlacedDisk| d.layout.partitions.iter().any(|p| p.type_guid == types::BIOS_BOOT);
    if !arch.has_bios() {
        if !o.grub_disks.is_empty() || (!o.grub_efi && !o.grub.is_empty()) {
            return Err(NixosError::NoBios { arch });
        }
        return Ok(Vec::new());
    }
    if platform_dir(o, BIOS_PLATFORM).is_none() {
        if !o.grub_disks.is_empty() || (!o.grub_efi && !o.grub.is_empty()) {
            return Err(NixosError::NoGrubPlatform { what: "GRUB for BIOS", platform: BIOS_PLATFORM });
        }
        return Ok(Vec::new());
    }
    if o.grub_disks.is_empty() {
        if o.grub_efi {
            return Ok(Vec::new());
        }
        let all: Vec<usize> = (0..disks.len()).filter(|&i| has_ef02(&disks[i])).collect();
        if all.is_empty() {
            let names: Vec<&str> = disks.iter().map(|d| d.disk.name.as_str()).collect();
            return Err(NixosError::NoBiosBoot { disk: names.join(", ") });
        }
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in &o.grub_disks {
        let i = disks
            .iter()
            .position(|d| &d.disk.name == name)
            .ok_or_else(|| NixosError::NoSuchDisk { disk: name.clone() })?;
        if !has_ef02(&disks[i]) {
            return Err(NixosError::NoBiosBoot { disk: name.clone() });
        }
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

/// Where `/boot/grub` is and how GRUB finds it.
struct GrubHome<'m, 'a> {
    mount: &'m MountInfo<'a>,
    /// `/boot/grub` from the root of its filesystem (`/grub`, `/@root/boot/grub`).
    path: String,
    /// The embedded config: `search.fs_uuid` and the prefix.
    load_cfg: String,
    /// The filesystem module.
    module: &'static str,
}

fn grub_home<'m, 'a>(ms: &'m [MountInfo<'a>]) -> Result<GrubHome<'m, 'a>, NixosError> {
    let cannot = |what: String| NixosError::GrubCannotRead { what };
    let m = mount_of(ms, "/boot/grub").ok_or_else(|| cannot("on no mount of the layout".into()))?;
    if m.partition.is_none() {
        return Err(cannot(format!("on {} (mounted at {})", m.format, m.mountpoint)));
    }
    let module = nix::grub_image::grub_modules_for(m.format)
        .map_err(|_| cannot(format!("on {} (mounted at {})", m.format, m.mountpoint)))?;
    let uuid = m.search_id.clone().ok_or_else(|| cannot("on a filesystem without a UUID".into()))?;
    let path = fs_path(m, "/boot/grub");
    let load_cfg = nix::grub_image::load_cfg(&uuid, &path);
    Ok(GrubHome { mount: m, path, load_cfg, module })
}

/// Install GRUB as `o` asks: grub.cfg, grubenv, the kernels where needed and each platform's
/// modules below `/boot/grub`; core.img and boot.img for BIOS; the EFI image on the ESP.
/// `systemd_boot`: whether systemd-boot took the removable path.
///
/// # Errors
/// A missing platform directory or partition, `/boot/grub` on a filesystem GRUB cannot read,
/// or a bad GRUB input.
#[allow(clippy::too_many_arguments)] // the one step that needs all of them
pub(crate) fn install(
    tree: &mut Tree,
    disks: &[PlacedDisk],
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    o: &NixosOptions,
    (mtime, arch): (i64, nix::Arch),
    systemd_boot: bool,
    warn: &mut dyn FnMut(String),
    plan: &mut NixosPlan,
) -> Result<(), NixosError> {
    let bios = bios_disks(disks, o, arch)?;
    let efi_platform = arch.grub_efi_platform();
    let efi = if o.grub_efi {
        Some(
            platform_dir(o, efi_platform)
                .ok_or(NixosError::NoGrubPlatform { what: "--grub-efi", platform: efi_platform })?,
        )
    } else {
        None
    };
    if bios.is_empty() && efi.is_none() {
        return Ok(());
    }
    let home = grub_home(ms)?;
    let mut files = grub_files(ms, bootspec, &o.store_dir(), &home, o, (mtime, arch))?;
    if !bios.is_empty() {
        let (_, dir) = platform_dir(o, BIOS_PLATFORM)
            .ok_or(NixosError::NoGrubPlatform { what: "GRUB for BIOS", platform: BIOS_PLATFORM })?;
        add_platform_files(&mut files, &dir, BIOS_PLATFORM)?;
        for &d in &bios {
            install_bios(disks, d, &dir, &home, plan)?;
        }
    }
    if let Some((lib, dir)) = efi {
        add_platform_files(&mut files, &dir, efi_platform)?;
        install_efi(tree, ms, (&lib, &dir), &home, o, (mtime, arch), systemd_boot, warn, plan)?;
    }
    nix::add_files(tree, "/boot", &files, mtime)?;
    Ok(())
}

/// core.img for disk `d` (the partition in the prefix where `/boot/grub` is on this disk),
/// embedded in its EF02 partition; boot.img patched for sector 0.
fn install_bios(
    disks: &[PlacedDisk],
    d: usize,
    dir: &Path,
    home: &GrubHome<'_, '_>,
    plan: &mut NixosPlan,
) -> Result<(), NixosError> {
    let dp = &disks[d];
    let part = dp
        .layout
        .partitions
        .iter()
        .find(|p| p.type_guid == types::BIOS_BOOT)
        .ok_or_else(|| NixosError::NoBiosBoot { disk: dp.disk.name.clone() })?;
    let prefix = match home.mount.partition {
        Some((hd, hp)) if hd == d => format!("(,gpt{}){}", hp.number, home.path),
        _ => home.path.clone(),
    };
    let modules = ["biosdisk", "part_gpt", home.module, "search_fs_uuid"];
    let core_img = nix::grub_image::i386_pc_core_img(dir, &modules, &prefix, Some(&home.load_cfg))?;
    let boot_img = read(&dir.join("boot.img"))?;
    // The protective MBR write_gpt puts in sector 0: boot code zero, then the partition table.
    let mut lba0 = [0u8; 512];
    lba0[446..].copy_from_slice(&mkdisk_gpt::protective_mbr_tail(dp.layout.sectors));
    let e = nix::grub_embed(&boot_img, &core_img, &lba0, part.first_lba, part.sectors())?;
    plan.grub.push(GrubWrites { disk: d, mbr: e.mbr, core: e.core, core_offset: part.offset_bytes() });
    let files = home.mount.mountpoint.to_string();
    plan.boot_loaders.push(BootLoader { kind: "grub-bios", disk: d, partition: part.name.clone(), files });
    Ok(())
}

/// The EFI image (the package's grub-mkimage) on the ESP.
#[allow(clippy::too_many_arguments)] // the one step that needs all of them
fn install_efi(
    tree: &mut Tree,
    ms: &[MountInfo<'_>],
    (lib, dir): (&Path, &Path),
    home: &GrubHome<'_, '_>,
    o: &NixosOptions,
    (mtime, arch): (i64, nix::Arch),
    systemd_boot: bool,
    warn: &mut dyn FnMut(String),
    plan: &mut NixosPlan,
) -> Result<(), NixosError> {
    let esp = esp(ms).ok_or(NixosError::NoEsp { what: "--grub-efi" })?;
    let removable = arch.removable_efi_path();
    let target = match &o.grub_efi_id {
        Some(id) => {
            let file = format!("EFI/{id}/grub{}.efi", arch.efi_suffix());
            warn(format!(
                "GRUB for EFI goes to {file}, which firmware starts only through a boot entry an image cannot carry; without --grub-efi-id (NixOS: boot.loader.grub.efiInstallAsRemovable) it goes to {removable}"
            ));
            file
        }
        None if systemd_boot => return Err(NixosError::BothOnRemovablePath { path: removable }),
        None => removable,
    };
    let mkimage = nix::grub_image::find_grub_mkimage(lib).ok_or_else(|| NixosError::Read {
        path: lib.join("../../bin/grub-mkimage"),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "grub-mkimage of this GRUB package not found"),
    })?;
    let prefix = match home.mount.partition {
        Some((hd, hp)) if esp.partition.is_some_and(|(ed, _)| ed == hd) => format!("(,gpt{}){}", hp.number, home.path),
        _ => home.path.clone(),
    };
    let modules = ["part_gpt", home.module, "search_fs_uuid"];
    let image =
        nix::grub_image::efi_image(&mkimage, dir, arch.grub_efi_platform(), &modules, &prefix, Some(&home.load_cfg))?;
    if let Some(m) = nix::pe_machine(&image) {
        if m != arch.pe_machine() {
            return Err(nix::NixError::WrongArch {
                what: "grub-mkimage's EFI image",
                path: mkimage.clone(),
                found: format!("machine {m:#06x}"),
                arch,
            }
            .into());
        }
    }
    let mut files = nix::BootFiles::default();
    files.add_bytes(target, image);
    nix::add_files(tree, esp.mountpoint, &files, mtime)?;
    if let Some((disk, p)) = esp.partition {
        let files = home.mount.mountpoint.to_string();
        plan.boot_loaders.push(BootLoader { kind: "grub-efi", disk, partition: p.name.clone(), files });
    }
    Ok(())
}

/// Every file of GRUB's platform directory `dir` (modules, lists, images), below
/// `grub/<platform>/`, in name order.
fn add_platform_files(files: &mut nix::BootFiles, dir: &Path, platform: &str) -> Result<(), NixosError> {
    let bad = |source| NixosError::Read { path: dir.to_path_buf(), source };
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(bad)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(bad)?;
    names.sort();
    for p in names {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if p.is_file() {
            files.add_host(format!("grub/{platform}/{name}"), &p)?;
        }
    }
    Ok(())
}

/// grub.cfg, grubenv and, where the store is not on `/boot/grub`'s filesystem, the kernel and
/// initrd copied to `/boot/kernels` (install-grub.pl's copyKernels).
fn grub_files(
    ms: &[MountInfo<'_>],
    bootspec: &nix::Bootspec,
    store_dir: &Path,
    home: &GrubHome<'_, '_>,
    o: &NixosOptions,
    (mtime, arch): (i64, nix::Arch),
) -> Result<nix::BootFiles, NixosError> {
    let boot_m = home.mount;
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
            serial: match (o.grub_serial, arch.has_bios()) {
                (false, _) => nix::GrubSerial::None,
                (true, true) => nix::GrubSerial::Com0,
                (true, false) => nix::GrubSerial::Efi0,
            },
            epoch: mtime,
            extra_config: o.grub_extra_config.clone(),
            extra_entries: o.grub_extra_entries.clone(),
        },
    );
    files.add_bytes("grub/grub.cfg", cfg);
    // grubenv: exactly 1024 bytes.
    let mut env = b"# GRUB Environment Block\n".to_vec();
    env.resize(1024, b'#');
    files.add_bytes("grub/grubenv", env);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X64: nix::Arch = nix::Arch::X86_64;

    fn disks(json: &str) -> Vec<PlacedDisk> {
        let spec = crate::Spec::parse(json).unwrap();
        crate::place_all(&spec, &mkdisk_tree::ids::DEFAULT_SEED).unwrap()
    }

    const TWO: &str = r#"{"disk":{
      "a":{"imageSize":"64M","content":{"type":"gpt","partitions":{
        "boot":{"size":"1M","type":"EF02"},
        "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}},
      "b":{"imageSize":"64M","content":{"type":"gpt","partitions":{
        "data":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/data"}}}}}}}"#;

    fn opts(grub: &[&Path], disks: &[&str], efi: bool) -> NixosOptions {
        NixosOptions {
            grub: grub.iter().map(|p| p.to_path_buf()).collect(),
            grub_disks: disks.iter().map(ToString::to_string).collect(),
            grub_efi: efi,
            ..Default::default()
        }
    }

    #[test]
    fn bios_goes_on_the_disks_with_ef02_or_those_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (both, efi_only) = (tmp.path().join("both"), tmp.path().join("efi"));
        for d in [both.join(BIOS_PLATFORM), both.join("x86_64-efi"), efi_only.join("x86_64-efi")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ds = disks(TWO);
        assert_eq!(bios_disks(&ds, &opts(&[&both], &[], false), X64).unwrap(), vec![0]);
        // EFI alone asked for: no BIOS unless a disk is named.
        assert!(bios_disks(&ds, &opts(&[&both], &[], true), X64).unwrap().is_empty());
        assert_eq!(bios_disks(&ds, &opts(&[&both], &["a", "a"], true), X64).unwrap(), vec![0]);
        assert!(bios_disks(&ds, &opts(&[&efi_only], &[], true), X64).unwrap().is_empty());
        let e = bios_disks(&ds, &opts(&[&both], &["b"], false), X64).unwrap_err();
        assert!(matches!(&e, NixosError::NoBiosBoot { disk } if disk == "b"), "{e}");
        let e = bios_disks(&ds, &opts(&[&both], &["c"], false), X64).unwrap_err();
        assert!(matches!(&e, NixosError::NoSuchDisk { disk } if disk == "c"), "{e}");
        let e = bios_disks(&ds, &opts(&[&efi_only], &["a"], false), X64).unwrap_err();
        assert!(matches!(e, NixosError::NoGrubPlatform { platform: BIOS_PLATFORM, .. }), "{e}");
        let e = bios_disks(&ds[1..], &opts(&[&both], &[], false), X64).unwrap_err();
        // No BIOS on aarch64: asking for it is an error; GRUB for EFI alone is not.
        let e2 = bios_disks(&ds, &opts(&[&both], &[], false), nix::Arch::Aarch64).unwrap_err();
        assert!(matches!(e2, NixosError::NoBios { .. }), "{e2}");
        assert!(bios_disks(&ds, &opts(&[&both], &[], true), nix::Arch::Aarch64).unwrap().is_empty());
        assert!(matches!(&e, NixosError::NoBiosBoot { disk } if disk == "b"), "{e}");
    }
}
