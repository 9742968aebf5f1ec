//! mkdisk: write complete, bootable disk images from a disko layout as an ordinary user.
//!
//! This crate is the top of the DAG. A build has two phases: [`plan`] reads the layout
//! ([`spec`]), places the partitions ([`place`]), reads and splits the source tree
//! ([`sources`]), adds the NixOS content ([`nixos`]) and plans every filesystem
//! ([`partition`]) into one [`ImagePlan`]; [`ImagePlan::write`] then only executes it. The
//! plan's [`report`](ImagePlan::report) is what `mkdisk plan --json` prints. The `mkdisk`
//! binary is a thin clap front end over this.
//!
//! ```
//! use mkdisk::{BuildOptions, NoProgress, Spec};
//!
//! let spec = Spec::parse(
//!     r#"{"disk":{"main":{"imageSize":"96M","content":{"type":"gpt","partitions":{
//!          "ESP":{"size":"40M","type":"EF00",
//!                 "content":{"type":"filesystem","format":"vfat","mountpoint":"/boot"}},
//!          "root":{"size":"100%",
//!                  "content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#,
//! )?;
//! let dir = tempfile::tempdir()?;
//! let root = dir.path().join("root");
//! std::fs::create_dir_all(root.join("boot/loader"))?;
//! std::fs::write(root.join("boot/loader/loader.conf"), "timeout 3\n")?;
//! std::fs::write(root.join("hostname"), "demo\n")?;
//! let out = dir.path().join("out");
//! std::fs::create_dir(&out)?;
//!
//! let opts = BuildOptions::new(&out).with_root(&root).with_source_date_epoch(1_700_000_000);
//! let plan = mkdisk::plan(&spec, &opts, &NoProgress)?;
//! let report = plan.report();
//! println!("{}", serde_json::to_string_pretty(&report)?);
//! assert_eq!(report.disks[0].partitions[1].mounts[0].mountpoint, "/");
//!
//! let written = plan.write(&NoProgress)?;
//! assert_eq!(written.images, vec![out.join("main.raw")]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(clippy::too_many_lines, clippy::cast_possible_truncation)]

pub mod autosize;
pub mod boot;
pub mod error;
pub mod fsopts;
pub mod grub;
pub mod nixos;
pub mod options;
pub mod partition;
pub mod place;
pub mod plan;
pub mod report;
pub mod sources;
pub mod spec;
pub mod swap;
pub mod write;

use std::path::PathBuf;

pub use autosize::{Headroom, ImageSize};
pub use error::{BuildError, FsError};
pub use mkdisk_nixstore::Arch;
pub use mkdisk_tree::{NoProgress, Progress};
pub use nixos::NixosError;
pub use options::{BuildOptions, NixosOptions, OutputFormat, SystemdBoot};
pub use place::{place_all, PlacedDisk};
pub use plan::{plan, ImagePlan};
pub use report::Report;
pub use spec::{Spec, SpecError};
pub use write::Written;

/// [`plan`], each warning passed to `warn`, then [`ImagePlan::write`]: the images' paths.
///
/// # Errors
/// As [`plan`] and [`ImagePlan::write`]; no image is left behind on error.
pub fn build(
    spec: &Spec,
    opts: &BuildOptions,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<PathBuf>, BuildError> {
    let plan = plan(spec, opts, progress)?;
    for w in plan.warnings() {
        warn(w.clone());
    }
    Ok(plan.write(progress)?.images)
}

/// Turn a `--seed` argument into the seed UUID: a UUID string is used as is; any other
/// string is hashed (SHA-256, first 16 bytes, version-4 bits) so that words work as seeds.
#[must_use]
pub fn parse_seed(s: &str) -> uuid::Uuid {
    if let Ok(u) = uuid::Uuid::parse_str(s) {
        return u;
    }
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b)
}
