//! The whole image decided before a byte is written: [`plan`] places every disk, reads and
//! splits the source, adds the NixOS content, and plans every filesystem, swap header and
//! boot loader write into one [`ImagePlan`]; [`ImagePlan::write`](crate::write) only executes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mkdisk_gpt::PlaceError;
use mkdisk_tree::{Progress, Tree};

use crate::autosize::{self, AutoSized, ImageSize};
use crate::error::BuildError;
use crate::fsopts::{fs_options, FsOptions};
use crate::nixos::{self, BootLoader, MountInfo};
use crate::options::{BuildOptions, OutputFormat};
use crate::partition::{plan_disks, warn_clamped_times, AutoPlace, DiskImagePlan, DiskSizing};
use crate::place::{self, PlacedDisk};
use crate::sources::{self, default_root_meta, Sources};
use crate::spec::{Content, MountTarget, Spec};

const MIB: u64 = 1 << 20;

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

/// Each disk's size: `--image-size`, else the layout's.
fn disk_sizes(spec: &Spec, opts: &BuildOptions) -> Vec<ImageSize> {
    spec.disks.iter().map(|d| opts.image_size.unwrap_or(d.size)).collect()
}

/// The fill partition (index in `d.partitions`) of each disk that has one; for an auto-sized
/// disk it must exist and hold a filesystem (checked before the source is read).
fn fill_partitions(spec: &Spec, sizes: &[ImageSize]) -> Result<Vec<Option<usize>>, BuildError> {
    let mut fills = Vec::new();
    for (d, size) in spec.disks.iter().zip(sizes) {
        let fill = place::fill_partition(d);
        if *size == ImageSize::Auto {
            let size_err = |message: String| BuildError::Size { disk: d.name.clone(), message };
            let Some(i) = fill else {
                return Err(size_err(
                    "image size \"auto\" needs a partition that fills the disk (size \"100%\", an end of \"-0\", or no \
                     size), and the disk has none"
                        .into(),
                ));
            };
            let p = &d.partitions[i];
            let what = match &p.content {
                Content::Swap(_) => Some("is swap, which has no content to size it by"),
                Content::None => Some("has no filesystem to size it by"),
                Content::Filesystem(_) | Content::Btrfs(_) => None,
            };
            if let Some(what) = what {
                return Err(size_err(format!(
                    "image size \"auto\": partition {} fills the disk but {what} (give it a fixed size)",
                    p.name
                )));
            }
        }
        fills.push(fill);
    }
    Ok(fills)
}

/// Place every disk at its size (an auto-sized one provisionally). A disk too small for its
/// fixed partitions at `--image-size` says by how much.
fn place_disks(spec: &Spec, opts: &BuildOptions, sizes: &[ImageSize]) -> Result<Vec<PlacedDisk>, BuildError> {
    let mut disks = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let placed = match *size {
            ImageSize::Auto => place::place_provisional(spec, i, &opts.seed),
            ImageSize::Bytes(b) if opts.format == OutputFormat::Vhd && b % MIB != 0 => {
                return Err(BuildError::Size {
                    disk: spec.disks[i].name.clone(),
                    message: format!(
                        "--format vhd needs a disk of a whole number of MiB (Azure's rule), and {b} bytes is not; \
                         give the size in M or G"
                    ),
                })
            }
            ImageSize::Bytes(b) => place::place_disk(spec, i, b, &opts.seed),
        };
        match (placed, opts.image_size) {
            (Ok(p), _) => disks.push(p),
            (Err(e @ (PlaceError::NoSpace { .. } | PlaceError::StartNotFree { .. })), Some(ImageSize::Bytes(b))) => {
                let Some(min_mib) = place::min_disk_mib(spec, i, &opts.seed) else { return Err(e.into()) };
                return Err(BuildError::Size {
                    disk: spec.disks[i].name.clone(),
                    message: format!(
                        "--image-size {size} is {} MiB too small for the fixed partitions, which need a disk of at \
                         least {min_mib} MiB",
                        (min_mib << 20).saturating_sub(b).div_ceil(1 << 20)
                    ),
                });
            }
            (Err(e), _) => return Err(e.into()),
        }
    }
    Ok(disks)
}

/// How each disk's size is decided when its filesystems are planned: an auto-sized disk is
/// placed again once its fill partition's content is measured.
fn sizings<'f>(
    spec: &'f Spec,
    opts: &'f BuildOptions,
    placed: &[PlacedDisk],
    sizes: &[ImageSize],
    fills: &[Option<usize>],
) -> Vec<DiskSizing<'f>> {
    let mut out = Vec::new();
    for (i, dp) in placed.iter().enumerate() {
        // The fill partition's index in the placed table.
        let fill =
            fills[i].and_then(|f| dp.layout.partitions.iter().position(|p| p.name == dp.disk.partitions[f].name));
        out.push(match (sizes[i], fill) {
            (ImageSize::Auto, Some(fill)) => DiskSizing::Auto(fill, auto_place(spec, opts, dp.clone(), fill)),
            (ImageSize::Bytes(_), Some(fill)) if opts.image_size.is_some() => DiskSizing::Explain(fill),
            _ => DiskSizing::Placed,
        });
    }
    out
}

/// Disk `prov` (placed provisionally) placed for its fill partition `fill` (index in the
/// placed table) once that partition's content needs `min` bytes: the minimum plus the
/// headroom, rounded up to the partition's alignment (sgdisk's 1 MiB unless it sets one).
fn auto_place<'f>(spec: &'f Spec, opts: &'f BuildOptions, prov: PlacedDisk, fill: usize) -> AutoPlace<'f> {
    Box::new(move |min: u64| {
        let index = spec.disks.iter().position(|d| d.name == prov.disk.name).unwrap_or(0);
        let part = prov.spec_part(&prov.layout.partitions[fill]).map(|(_, p)| p);
        let align = part.map_or(0, |p| p.alignment);
        let align = if align == 0 { mkdisk_gpt::DEFAULT_ALIGNMENT } else { align };
        let name = &prov.layout.partitions[fill].name;
        let size_err = |what: String| BuildError::Size { disk: prov.disk.name.clone(), message: what };
        let bytes = align
            .checked_mul(mkdisk_gpt::SECTOR_SIZE)
            .and_then(|a| autosize::fill_bytes(min, opts.headroom, a))
            .ok_or_else(|| size_err(format!("partition {name}: {min} bytes and the headroom overflow")))?;
        let want = bytes / mkdisk_gpt::SECTOR_SIZE;
        let dp = place::place_fill(spec, index, &opts.seed, &prov, fill, want)?.ok_or_else(|| {
            size_err(format!("no disk size gives partition {name} {} MiB", autosize::mib_ceil(bytes)))
        })?;
        // A VHD's disk is a whole number of MiB (Azure's rule): the fill partition takes the
        // rest of the last MiB, so that the backup GPT stays at the disk's end.
        let dp = match dp.layout.sectors.checked_mul(mkdisk_gpt::SECTOR_SIZE) {
            Some(b) if opts.format == OutputFormat::Vhd && b % MIB != 0 => {
                place::place_disk(spec, index, b.div_ceil(MIB) * MIB, &opts.seed)?
            }
            _ => dp,
        };
        let fso = all_fs_options(std::slice::from_ref(&dp), opts)?.pop().unwrap_or_default();
        Ok((dp, fso))
    })
}

/// After planning: each disk's size as asked for, how an auto size came about, and GRUB's
/// sector 0 for the final disk size (its protective MBR entry holds the size; its core.img's
/// partition must not have moved).
fn finish_sizes(
    disks: &mut [DiskImagePlan],
    spec: &Spec,
    opts: &BuildOptions,
    sizes: &[ImageSize],
    fills: &[Option<usize>],
    prov: &[PlacedDisk],
) -> Result<(), BuildError> {
    for (i, d) in disks.iter_mut().enumerate() {
        d.image_size = match opts.image_size {
            Some(s) => s.to_string(),
            None => spec.disks[i].image_size.clone(),
        };
        if sizes[i] != ImageSize::Auto {
            continue;
        }
        let name = fills[i].map(|f| &spec.disks[i].partitions[f].name);
        let fill = d.partitions.iter().find(|p| Some(&d.placed.layout.partitions[p.index].name) == name);
        if let Some(m) = fill.and_then(|p| p.measure.map(|m| (p.index, m))) {
            let headroom_bytes = opts.headroom.bytes_for(m.1.min_size_bytes).unwrap_or(u64::MAX);
            d.auto = Some(AutoSized {
                partition: m.0,
                min_size_bytes: m.1.min_size_bytes,
                headroom: opts.headroom,
                headroom_bytes,
            });
        }
        if let Some(g) = &mut d.grub {
            let ef02 = |l: &mkdisk_gpt::DiskLayout| {
                l.partitions
                    .iter()
                    .find(|p| p.type_guid == mkdisk_gpt::types::BIOS_BOOT)
                    .map(|p| (p.first_lba, p.last_lba))
            };
            if ef02(&d.placed.layout) != ef02(&prov[i].layout) {
                return Err(BuildError::Size {
                    disk: d.placed.disk.name.clone(),
                    message: "image size \"auto\": the BIOS boot partition moves with the disk size (give the disk a \
                              fixed size)"
                        .into(),
                });
            }
            g.mbr[446..510].copy_from_slice(&mkdisk_gpt::protective_mbr_tail(d.placed.layout.sectors)[..64]);
        }
    }
    Ok(())
}

/// Plan the whole image of `spec`: everything that can fail on input fails here, before
/// [`ImagePlan::write`] creates a file. Scanning and planning run on `opts.threads` threads.
///
/// An auto-sized disk (`imageSize = "auto"`, `--image-size auto`) is placed provisionally,
/// the source is read once, its fill partition's content is measured and planned at its
/// final size (btrfs compresses once), the disk is placed for that size, and its other
/// partitions are planned there.
///
/// # Errors
/// The layout does not place, the source or the NixOS inputs are bad, an option is bad, or
/// a filesystem's content does not fit ([`BuildError::Partition`] with the writer's error);
/// a disk's size cannot be had ([`BuildError::Size`]).
pub fn plan(spec: &Spec, opts: &BuildOptions, progress: &dyn Progress) -> Result<ImagePlan, BuildError> {
    check_out_dir(&opts.out_dir)?;
    let mut laps = Laps::new();
    let sizes = disk_sizes(spec, opts);
    let fills = fill_partitions(spec, &sizes)?;
    let placed = place_disks(spec, opts, &sizes)?;
    let fsopts = all_fs_options(&placed, opts)?;
    let pool = pool(opts.threads)?;
    progress.phase("scanning");
    let mut warnings = Vec::new();
    let (sources, nix) = pool.install(|| read_sources(spec, &placed, &fsopts, opts, &mut |m| warnings.push(m)))?;
    laps.lap("scan and split");
    progress.phase("planning");
    let sizing = sizings(spec, opts, &placed, &sizes, &fills);
    let prov = if sizes.contains(&ImageSize::Auto) { placed.clone() } else { Vec::new() };
    let mut disks = pool.install(|| plan_disks(spec, placed, fsopts, &sources, nix.grub, opts, sizing))?;
    finish_sizes(&mut disks, spec, opts, &sizes, &fills, &prov)?;
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
