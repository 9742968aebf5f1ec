//! What a build takes besides the layout: [`BuildOptions`] and its NixOS part,
//! [`NixosOptions`]. Both are `#[non_exhaustive]`: make them with `new`/`default` and set
//! the fields that differ.

use std::path::PathBuf;

use mkdisk_tree::ids;
use uuid::Uuid;

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

/// NixOS inputs of a build.
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

    /// The host directory holding the store paths.
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.store_dir.clone().unwrap_or_else(|| PathBuf::from(mkdisk_nixstore::STORE_DIR))
    }
}
