//! The whole image decided before a byte is written: [`plan`] places every disk, reads and
//! splits the source, adds the NixOS content, and plans every filesystem, swap header and
//! boot loader write into one [`ImagePlan`]; [`ImagePlan::write`](crate::write) only executes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mkdisk_tree::{Progress, Tree};

use crate::error::BuildError;
use crate::fsopts::{fs_options, FsOptions};
use crate::nixos::{self, BootLoader, MountInfo};
use crate::options::BuildOptions;
use crate::partition::{plan_disks, warn_clamped_times, DiskImagePlan};
use crate::place::{place_all, PlacedDisk};
use crate::sources::{self, default_root_meta, Sources};
use crate::spec::{MountTarget, Spec};

/// The whole image, decided: write it with [`ImagePlan::write`].
#[derive(Debug)]
pub struct ImagePlan {
    pub(crate) disks: Vec<DiskImagePlan>,
    pub(crate) boot_loaders: Vec<BootLoader>,
    pub(crate) out_dir: PathBuf,
    pub(crate) output: crate::options::OutputPlan,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) warnings: Vec<String>,
    pub(crate) timings: Vec<(String, Duration)>,
}

impl ImagePlan {
    /// The disks.
    #[must_use]
    pub fn disks(&self) -> &[DiskImagePlan] {
        &self.disks
    }

    /// The boot loaders the image gets.
    #[must_use]
    pub fn boot_loaders(&self) -> &[BootLoader] {
        &self.boot_loaders
    }

    /// Warnings about the input (dropped entries, clamped times, no boot loader).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How long each planning phase took.
    #[must_use]
    pub fn timings(&self) -> &[(String, Duration)] {
        &self.timings
    }

    /// The file-data bytes that writing reports to [`Progress::data_written`].
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.disks.iter().flat_map(|d| &d.partitions).map(|p| p.content.progress_bytes()).fold(0, u64::saturating_add)
    }
}

fn check_out_dir(out: &Path) -> Result<(), BuildError> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(BuildError::Out { path: out.to_path_buf(), message: "not a directory".into() }),
        Err(e) => Err(BuildError::Out { path: out.to_path_buf(), message: e.to_string() }),
    }
}

fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool, BuildError> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        pool = pool.num_threads(n);
    }
    pool.build().map_err(|e| BuildError::Threads(e.to_string()))
}

/// Each placed partition's writer options, per disk in table order.
fn all_fs_options(disks: &[PlacedDisk], opts: &BuildOptions) -> Result<Vec<Vec<FsOptions>>, BuildError> {
    disks
        .iter()
        .map(|dp| {
            dp.layout
                .partitions
                .iter()
                .map(|placed| match dp.spec_part(placed) {
                    None => Ok(FsOptions::None),
                    Some((_, part)) => fs_options(placed, part, opts)
                        .map_err(|e| BuildError::partition(&dp.disk.name, &placed.name, e)),
                })
                .collect()
        })
        .collect()
}

/// The layout's mounts as the NixOS content sees them.
fn mount_infos<'a>(spec: &'a Spec, disks: &'a [PlacedDisk], fsopts: &[Vec<FsOptions>]) -> Vec<MountInfo<'a>> {
    spec.mounts()
        .into_iter()
        .map(|m| {
            let part = match m.target {
                MountTarget::Partition(d, p) | MountTarget::Subvolume(d, p, _) => Some((d, p)),
                MountTarget::Nodev(_) => None,
            };
            let placed = part.and_then(|(d, p)| {
                let dp = &disks[d];
                let i = dp.layout.partitions.iter().position(|x| x.name == dp.disk.partitions[p].name)?;
                Some((d, i))
            });
            MountInfo {
                mountpoint: m.mountpoint,
                format: spec.mount_format(m.target),
                partition: placed.map(|(d, i)| (d, &disks[d].layout.partitions[i])),
                subvol: spec.subvolume_name(m.target),
                search_id: placed.and_then(|(d, i)| fsopts[d][i].ident().uuid),
            }
        })
        .collect()
}

/// Phase durations, measured as the plan goes.
struct Laps(Instant, Vec<(String, Duration)>);

impl Laps {
    fn new() -> Laps {
        Laps(Instant::now(), Vec::new())
    }

    fn lap(&mut self, what: &str) {
        self.1.push((what.to_string(), self.0.elapsed()));
        self.0 = Instant::now();
    }
}

/// Scan `--root`, add the NixOS content and split the result by mount point.
fn read_sources(
    spec: &Spec,
    disks: &[PlacedDisk],
    fsopts: &[Vec<FsOptions>],
    opts: &BuildOptions,
    warn: &mut dyn FnMut(String),
) -> Result<(Sources, nixos::NixosPlan), BuildError> {
    let sde = opts.source_date_epoch;
    let mut tree = match &opts.root {
        None if !opts.nixos.any() => return Ok((Sources::empty(sde), nixos::NixosPlan::default())),
        None => Tree::new(default_root_meta(sde)),
        Some(root) => sources::scan(root, opts.keep_owner, sde)?,
    };
    let nix = if opts.nixos.any() {
        let ms = mount_infos(spec, disks, fsopts);
        nixos::populate(&mut tree, disks, &ms, &opts.nixos, sde, warn)?
    } else {
        nixos::NixosPlan::default()
    };
    Ok((sources::split(spec, &tree, sde, warn)?, nix))
}

/// Plan the whole image of `spec`: everything that can fail on input fails here, before
/// [`ImagePlan::write`] creates a file. Scanning and planning run on `opts.threads` threads.
///
/// # Errors
/// The layout does not place, the source or the NixOS inputs are bad, an option is bad, or
/// a filesystem's content does not fit ([`BuildError::Partition`] with the writer's error).
pub fn plan(spec: &Spec, opts: &BuildOptions, progress: &dyn Progress) -> Result<ImagePlan, BuildError> {
    check_out_dir(&opts.out_dir)?;
    let mut laps = Laps::new();
    let placed = place_all(spec, &opts.seed)?;
    let fsopts = all_fs_options(&placed, opts)?;
    let pool = pool(opts.threads)?;
    progress.phase("scanning");
    let mut warnings = Vec::new();
    let (sources, nix) = pool.install(|| read_sources(spec, &placed, &fsopts, opts, &mut |m| warnings.push(m)))?;
    laps.lap("scan and split");
    progress.phase("planning");
    let disks = pool.install(|| plan_disks(spec, placed, fsopts, &sources, nix.grub, opts))?;
    laps.lap("plan");
    warn_clamped_times(&disks, &mut warnings);
    Ok(ImagePlan {
        disks,
        boot_loaders: nix.boot_loaders,
        out_dir: opts.out_dir.clone(),
        output: crate::options::OutputPlan::new(opts),
        pool,
        warnings,
        timings: laps.1,
    })
}
