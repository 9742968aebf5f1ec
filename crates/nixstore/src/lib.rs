//! mkdisk-nixstore: the NixOS part of an image, written without Nix, a VM or root.
//!
//! What disko does inside its VM with `nix-store --load-db`, `cp -r` and `nixos-install`, done
//! as pure functions that add to a [`mkdisk_tree::Tree`] (the root tree before it is split by
//! mount point) or return bytes:
//!
//! - [`ClosureInfo`] / [`Registration`]: `closureInfo` output parsing and validation;
//! - [`add_closure`]: every store path grafted under `/nix/store` straight from the host store
//!   (file data is read only in the writers' data phase), with the store's canonical metadata;
//! - [`nix_db`] / [`add_nix_db`]: `/nix/var/nix/db/db.sqlite` (schema 10) and `schema`;
//! - [`add_profiles`]: `/nix/var/nix/profiles/system` → `system-1-link` → toplevel, `/etc/NIXOS`;
//! - [`Bootspec`]: `boot.json` (bootspec v1);
//! - [`systemd_boot_files`]: the ESP of a systemd-boot install;
//! - [`grub_cfg`] and [`grub_embed`]: GRUB i386-pc in an EF02 partition, as
//!   `grub-bios-setup --no-rs-codes` does;
//! - [`grub_image`]: core.img assembled from GRUB's files, and the EFI image.
//!
//! It depends only on `mkdisk-tree`; the `mkdisk` crate calls it from its build orchestration.
//! Formats: `docs/nix-store.md` and `docs/boot.md`.

mod arch;
mod bootspec;
mod closure;
mod db;
mod esp;
mod grub;
pub mod grub_image;
mod hash;
mod profiles;

use std::path::PathBuf;

pub use arch::{check_efi_arch, pe_machine, Arch};
pub use bootspec::{resolve_store_path, store_host_path, Bootspec};
pub use closure::{add_closure, ClosureInfo, PathInfo, Registration};
pub use db::{add_nix_db, nix_db, NIX_SCHEMA_SQL, NIX_SCHEMA_VERSION};
pub use esp::{add_files, civil_date, systemd_boot_files, BootFiles, SystemdBootOptions};
pub use grub::{grub_cfg, grub_embed, GrubCfgOptions, GrubEmbed, GrubSerial, GRUB_MAX_CORE_SECTORS};
pub use grub_image::{efi_image, find_grub_mkimage, grub_modules_for, i386_pc_core_img, load_cfg, resolve_modules};
pub use hash::{nix32_decode, nix32_encode, parse_nar_hash};
pub use profiles::add_profiles;

/// Errors, each naming the path or input it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixError {
    /// Reading a host file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registration text is malformed.
    #[error("registration line {line}: {message}")]
    Registration {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A path that is not `/nix/store/<name>`.
    #[error("{path:?} is not a store path under /nix/store")]
    NotAStorePath {
        /// The path.
        path: String,
    },
    /// `store-paths` and `registration` list different paths.
    #[error("registration disagrees with store-paths: {path} is in {present_in} but not in {missing_in}")]
    RegistrationMismatch {
        /// The path.
        path: String,
        /// Where it is listed.
        present_in: &'static str,
        /// Where it is missing.
        missing_in: &'static str,
    },
    /// A path registered twice.
    #[error("{path} is registered twice")]
    DuplicatePath {
        /// The path.
        path: String,
    },
    /// A reference outside the closure.
    #[error("{path} refers to {reference}, which is not in the closure")]
    UnknownReference {
        /// The referrer.
        path: String,
        /// The missing reference.
        reference: String,
    },
    /// A store path of the closure is missing from the host store.
    #[error("store path {path} is missing from the host store (looked for {})", host.display())]
    MissingStorePath {
        /// The store path.
        path: String,
        /// Where it was looked for.
        host: PathBuf,
    },
    /// Building the tree failed.
    #[error("{context}: {source}")]
    Tree {
        /// What was being added.
        context: String,
        /// The cause.
        source: mkdisk_tree::TreeError,
    },
    /// SQLite failed.
    #[error("nix database: {0}")]
    Db(String),
    /// The toplevel has no `boot.json`.
    #[error(
        "--system {toplevel} has no boot.json (the bootspec NixOS writes with boot.bootspec.enable; looked for {})",
        host.display()
    )]
    NoBootJson {
        /// The toplevel store path.
        toplevel: String,
        /// Where it was looked for.
        host: PathBuf,
    },
    /// `boot.json` is malformed.
    #[error("{}: {message}", path.display())]
    BadBootJson {
        /// The host path of boot.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file the boot loader needs is missing.
    #[error("{what} {path}: {message}")]
    MissingBootFile {
        /// What it is (kernel, initrd, systemd-boot, ...).
        what: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An EFI binary handed in is built for another architecture than the image's.
    #[error("{what} {}: an EFI binary for {found}, but the image is for {arch}", path.display())]
    WrongArch {
        /// What it is (systemd-boot, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its architecture (or PE machine type).
        found: String,
        /// The image's architecture.
        arch: Arch,
    },
    /// `boot.img` is not one sector, or `core.img` is malformed.
    #[error("GRUB: {0}")]
    BadGrubImage(String),
    /// A file of GRUB's package directory is not shaped like GRUB's own.
    #[error("GRUB: {}: {message}", path.display())]
    BadGrubInput {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GRUB module (wanted, or a dependency of one) that `moddep.lst` does not list.
    #[error(
        "GRUB: module {module:?}{} is not in {}",
        needed_by.as_ref().map(|m| format!(" (needed by {m:?})")).unwrap_or_default(),
        moddep.display()
    )]
    UnknownGrubModule {
        /// The module's name.
        module: String,
        /// The module that depends on it, where it is a dependency.
        needed_by: Option<String>,
        /// The `moddep.lst` read.
        moddep: PathBuf,
    },
    /// `/boot/grub` is on a filesystem GRUB has no module for here.
    #[error("GRUB cannot read a {format:?} filesystem: /boot/grub must be on vfat, ext2/ext3/ext4 or btrfs")]
    GrubCannotReadFs {
        /// The filesystem format (disko's `format`).
        format: String,
    },
    /// grub-mkimage failed.
    #[error("GRUB: {} failed: {message}", program.display())]
    GrubMkimage {
        /// The program.
        program: PathBuf,
        /// Its exit status and message.
        message: String,
    },
    /// The layout has no BIOS boot (EF02) partition to embed core.img into.
    #[error("GRUB BIOS install needs a BIOS boot partition (type EF02) on the disk, found none")]
    NoBiosBootPartition,
    /// core.img does not fit.
    #[error("GRUB core.img needs {core_sectors} sectors but {what} has {available}")]
    CoreTooLarge {
        /// Sectors core.img needs.
        core_sectors: u64,
        /// Sectors available.
        available: u64,
        /// The limit that was hit.
        what: &'static str,
    },
}

impl NixError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NixError::Io { path: path.into(), source }
    }

    pub(crate) fn tree(context: impl Into<String>) -> impl FnOnce(mkdisk_tree::TreeError) -> NixError {
        let context = context.into();
        move |source| NixError::Tree { context, source }
    }
}

/// The store directory inside the image (always the default; a Nix with another store
/// directory makes store paths with other hashes).
pub const STORE_DIR: &str = "/nix/store";
