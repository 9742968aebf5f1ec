//! Build orchestration: spec → placement → source split → per-partition plans → images.
//!
//! Everything that can fail on input is decided before the first byte is written: the
//! placement of every disk, the split of `--root` by mount point, and the plan of every
//! filesystem. Only then are the images created (as temporary files in `--out`), written, and
//! renamed into place together; any error drops the temporaries so `--out` is left as it was.

use std::path::{Path, PathBuf};

use mkdisk_gpt::{DiskLayout, DiskRequest, PartitionRequest, Placed};
use mkdisk_tree::{ids, Image, Meta, Progress, ScanOptions, Timestamp, Tree};
use uuid::Uuid;

use crate::spec::{Content, Disk, Spec};
use crate::swap::{SwapError, SwapOptions};

/// What `mkdisk build` needs besides the spec.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Output directory (`<imageName>.raw` per disk).
    pub out_dir: PathBuf,
    /// Source root to split by mount point; `None` builds empty filesystems.
    pub root: Option<PathBuf>,
    /// Seed for every identifier the spec leaves open.
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
    pub nixos: crate::nixos::NixosOptions,
}

impl BuildOptions {
    /// Defaults: no root, the default seed, all cores, root ownership, no epoch.
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
            nixos: crate::nixos::NixosOptions::default(),
        }
    }
}

/// Build errors, each with the disk/partition it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The layout does not place.
    #[error(transparent)]
    Place(#[from] mkdisk_gpt::PlaceError),
    /// Scanning or splitting the source failed.
    #[error("source tree: {0}")]
    Tree(#[from] mkdisk_tree::TreeError),
    /// The output could not be created or written.
    #[error(transparent)]
    Image(#[from] mkdisk_tree::ImageError),
    /// Writing the partition table failed.
    #[error("disk {disk}: {source}")]
    Gpt {
        /// Disk name.
        disk: String,
        /// Cause.
        source: mkdisk_gpt::GptError,
    },
    /// A partition's writer failed.
    #[error("disk {disk}, partition {partition}: {message}")]
    Partition {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// Cause, rendered.
        message: String,
    },
    /// A format mkdisk does not write yet.
    #[error("disk {disk}, partition {partition}: {what} is not implemented yet")]
    NotImplemented {
        /// Disk name.
        disk: String,
        /// Partition name.
        partition: String,
        /// The format.
        what: String,
    },
    /// `--root` is missing or not a directory.
    #[error("--root {}: {message}", path.display())]
    Root {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--out` is not a writable directory.
    #[error("--out {}: {message}", path.display())]
    Out {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    Threads(String),
    /// NixOS content (closure, store, boot.json, boot loader inputs).
    #[error("NixOS: {0}")]
    Nixos(String),
}

/// One placed disk and what goes in each partition.
#[derive(Debug)]
pub struct DiskPlan {
    /// The spec disk.
    pub disk: Disk,
    /// Its placement.
    pub layout: DiskLayout,
}

/// Place every disk of `spec`.
///
/// # Errors
/// A disk does not place.
pub fn place_all(spec: &Spec, seed: &Uuid) -> Result<Vec<DiskPlan>, BuildError> {
    spec.disks
        .iter()
        .map(|d| {
            let req = DiskRequest {
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                partitions: d
                    .partitions
                    .iter()
                    .map(|p| PartitionRequest {
                        name: p.name.clone(),
                        label: p.label.clone(),
                        type_guid: p.type_guid,
                        start: p.start.clone(),
                        end: p.end.clone(),
                        alignment: p.alignment,
                        priority: p.priority,
                        attributes: p.attributes.clone(),
                        uuid: p.uuid,
                    })
                    .collect(),
            };
            // Each disk gets its own key so two disks of one spec never share GUIDs.
            let disk_seed = if spec.disks.len() == 1 { *seed } else { ids::derive(seed, d.name.as_bytes()) };
            let layout = mkdisk_gpt::place(&req, &disk_seed)?;
            Ok(DiskPlan { disk: d.clone(), layout })
        })
        .collect()
}

/// Place every disk and plan every filesystem with empty content: everything `build`
/// checks that does not need the source tree (formats, `extraArgs`, sizes a filesystem
/// needs, swap headers). `mkdisk plan` runs this, so it refuses what `build` would refuse.
///
/// # Errors
/// As [`build`], for the layout alone.
pub fn check(spec: &Spec, opts: &BuildOptions) -> Result<Vec<DiskPlan>, BuildError> {
    let plans = place_all(spec, &opts.seed)?;
    let sources = Sources { trees: Vec::new(), empty: Some(Tree::new(default_root_meta(opts.source_date_epoch))) };
    for (di, dp) in plans.iter().enumerate() {
        for placed in &dp.layout.partitions {
            plan_partition(dp, placed, di, &sources, opts)?;
        }
    }
    Ok(plans)
}

/// `--root` itself may be a symbolic link to a directory (the `./result` of a Nix build):
/// it is followed; links inside the tree are copied as links.
fn resolve_root(root: &Path) -> Result<PathBuf, BuildError> {
    let bad = |message: String| BuildError::Root { path: root.to_path_buf(), message };
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(root).map_err(|e| bad(e.to_string())),
        _ => Ok(root.to_path_buf()),
    }
}

/// The spec partition that a placed partition came from.
fn spec_part<'a>(disk: &'a Disk, placed: &Placed) -> Option<&'a crate::spec::Partition> {
    disk.partitions.iter().find(|p| p.name == placed.name)
}

/// Where one split tree goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A filesystem partition: (disk, partition index in the spec disk).
    Part(usize, usize),
    /// A btrfs subvolume (disk, partition, subvolume index).
    Subvol(usize, usize, usize),
    /// A nodev mount: content dropped.
    Nodev(usize),
}

/// Per-partition source trees after splitting `--root` by every mount point.
#[derive(Debug, Default)]
pub struct Sources {
    trees: Vec<(Target, Tree)>,
    empty: Option<Tree>,
}

impl Sources {
    fn get(&self, t: Target) -> Option<&Tree> {
        self.trees.iter().find(|(x, _)| *x == t).map(|(_, tr)| tr).or(self.empty.as_ref())
    }
}

fn default_root_meta(sde: Option<i64>) -> Meta {
    Meta::new(0o755).with_mtime(Timestamp::from_secs(sde.unwrap_or(0)))
}

/// Scan `--root` and split it by the spec's mount points.
///
/// # Errors
/// The root is not a directory, mount points collide, scanning fails.
pub fn split_sources(spec: &Spec, opts: &BuildOptions, warn: &mut dyn FnMut(String)) -> Result<Sources, BuildError> {
    let plans = if opts.nixos.any() { place_all(spec, &opts.seed)? } else { Vec::new() };
    Ok(split_sources_placed(spec, opts, &plans, warn)?.0)
}

/// [`split_sources`] for placed disks; also adds the NixOS content and plans GRUB's writes.
fn split_sources_placed(
    spec: &Spec,
    opts: &BuildOptions,
    plans: &[DiskPlan],
    warn: &mut dyn FnMut(String),
) -> Result<(Sources, Vec<crate::nixos::GrubPlan>), BuildError> {
    let default_meta = default_root_meta(opts.source_date_epoch);
    let mut targets: Vec<(Target, String)> = Vec::new();
    for (di, d) in spec.disks.iter().enumerate() {
        for (pi, p) in d.partitions.iter().enumerate() {
            match &p.content {
                Content::Filesystem(fs) => {
                    if let Some(m) = &fs.mountpoint {
                        targets.push((Target::Part(di, pi), m.clone()));
                    }
                }
                Content::Btrfs(b) => {
                    if let Some(m) = &b.mountpoint {
                        targets.push((Target::Part(di, pi), m.clone()));
                    }
                    for (si, s) in b.subvolumes.iter().enumerate() {
                        if let Some(m) = &s.mountpoint {
                            targets.push((Target::Subvol(di, pi, si), m.clone()));
                        }
                    }
                }
                Content::Swap(_) | Content::None => {}
            }
        }
    }
    for (ni, n) in spec.nodev.iter().enumerate() {
        targets.push((Target::Nodev(ni), n.mountpoint.clone()));
    }
    let mut tree = match &opts.root {
        None if !opts.nixos.any() => {
            return Ok((Sources { trees: Vec::new(), empty: Some(Tree::new(default_meta)) }, Vec::new()));
        }
        None => Tree::new(default_meta.clone()),
        Some(root) => {
            let root = resolve_root(root)?;
            let scan_opts = ScanOptions {
                keep_owner: opts.keep_owner,
                source_date_epoch: opts.source_date_epoch,
                ..ScanOptions::default()
            };
            mkdisk_tree::scan(&root, &scan_opts)?
        }
    };
    let grub = if opts.nixos.any() {
        crate::nixos::populate(&mut tree, spec, plans, &opts.nixos, opts.source_date_epoch, warn)?
    } else {
        Vec::new()
    };
    let mounts: Vec<Vec<u8>> =
        targets.iter().map(|(_, m)| mkdisk_tree::normalize_mountpoint(m)).collect::<Result<_, _>>()?;
    let split = mkdisk_tree::split(&tree, &mounts, &default_meta)?;
    for u in &split.unclaimed {
        warn(format!("{}: not under any mount point of the layout; dropped", String::from_utf8_lossy(u)));
    }
    let mut trees = Vec::new();
    for ((t, m), tree) in targets.into_iter().zip(split.trees) {
        if let Target::Nodev(i) = t {
            if !tree.root_is_empty() {
                let fs = &spec.nodev[i].fs_type;
                warn(format!(
                    "{m}: {fs} mount (nodev) is empty at boot; {} entries under it in --root dropped",
                    tree.len() - 1
                ));
            }
        }
        trees.push((t, tree));
    }
    Ok((Sources { trees, empty: Some(Tree::new(default_meta)) }, grub))
}

/// A partition's planned content.
enum FsPlan<'a> {
    None,
    Swap(SwapOptions),
    Fat(Box<mkdisk_fat::FatLayout>, &'a Tree),
    Ext4(Box<mkdisk_ext4::Ext4Layout>, &'a Tree),
    /// The layout owns its trees; the second field is the file-data total for progress.
    Btrfs(Box<mkdisk_btrfs::BtrfsLayout>, u64),
}

/// Options for the FAT writer from the partition and mkfs.vfat `extraArgs` (`-n LABEL`,
/// `-i VOLID`, `-F 16|32`; anything else is rejected).
fn fat_options(placed: &Placed, extra: &[String]) -> Result<mkdisk_fat::FatOptions, String> {
    let fs_uuid = ids::fs_uuid(&placed.guid);
    let b = fs_uuid.as_bytes();
    let mut o = mkdisk_fat::FatOptions::new(placed.size_bytes());
    // systemd-repart's vfat serial: the first four bytes of the fs UUID as a number.
    o.volume_id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    o.hidden_sectors = u32::try_from(placed.first_lba)
        .map_err(|_| format!("start sector {} does not fit FAT's 32-bit hidden-sector field", placed.first_lba))?;
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("mkfs.vfat argument {a:?} needs a value"));
        match a.as_str() {
            "-n" => o.label = Some(val()?),
            "-i" => {
                let v = val()?;
                o.volume_id =
                    u32::from_str_radix(&v, 16).map_err(|_| format!("-i {v:?}: not a hexadecimal volume id"))?;
            }
            "-F" => match val()?.as_str() {
                "32" => o.fat_type = Some(mkdisk_fat::FatType::Fat32),
                "16" => o.fat_type = Some(mkdisk_fat::FatType::Fat16),
                v => return Err(format!("-F {v}: mkdisk writes FAT16 or FAT32")),
            },
            _ => return Err(format!("unsupported mkfs.vfat argument {a:?} (supported: -n LABEL, -i VOLID, -F 16|32)")),
        }
    }
    Ok(o)
}

/// What every btrfs filesystem of a build shares.
struct BtrfsBuild<'a> {
    sde: Option<i64>,
    compress: Option<&'a str>,
    scratch: &'a Path,
}

/// Plan a btrfs filesystem: the filesystem UUID derives from the partition GUID like every
/// other filesystem's; compression comes from `--compress` (lowest precedence), the
/// filesystem's `mountOptions`, then `extraArgs`; each subvolume's own `mountOptions` win for
/// its files. Compressed frames wait in an unnamed scratch file in the output directory.
fn plan_btrfs<'a>(
    placed: &Placed,
    top: &Tree,
    subvols: Vec<mkdisk_btrfs::SubvolSpec<'_>>,
    mount_options: &[String],
    extra_args: &[String],
    bo: &BtrfsBuild<'_>,
) -> Result<FsPlan<'a>, mkdisk_btrfs::BtrfsError> {
    let mut o = mkdisk_btrfs::BtrfsOptions::new(placed.size_bytes(), ids::fs_uuid(&placed.guid));
    o.timestamp = bo.sde.unwrap_or(0);
    o.scratch_dir = Some(bo.scratch.to_path_buf());
    if let Some(c) = bo.compress {
        o.apply_extra_args(&["--compress".to_string(), c.to_string()])?;
    }
    if let Some(c) = mkdisk_btrfs::parse_mount_options(mount_options)? {
        o.compress = Some(c);
    }
    o.apply_extra_args(extra_args)?;
    let bytes = subvols.iter().map(|s| s.tree.data_bytes()).fold(top.data_bytes(), u64::saturating_add);
    let layout = mkdisk_btrfs::plan(top, &subvols, &o)?;
    Ok(FsPlan::Btrfs(Box::new(layout), bytes))
}

fn plan_partition<'a>(
    dp: &DiskPlan,
    placed: &Placed,
    di: usize,
    sources: &'a Sources,
    opts: &BuildOptions,
) -> Result<FsPlan<'a>, BuildError> {
    let sde = opts.source_date_epoch;
    let bo = BtrfsBuild { sde, compress: opts.compress.as_deref(), scratch: &opts.out_dir };
    let disk = &dp.disk;
    let Some((pi, part)) = disk.partitions.iter().enumerate().find(|(_, p)| p.name == placed.name) else {
        return Ok(FsPlan::None);
    };
    let tree_of = |t: Target| {
        sources.get(t).ok_or_else(|| BuildError::Partition {
            disk: disk.name.clone(),
            partition: part.name.clone(),
            message: "no source tree".into(),
        })
    };
    let not_impl = |what: &str| BuildError::NotImplemented {
        disk: disk.name.clone(),
        partition: part.name.clone(),
        what: what.to_string(),
    };
    let part_err = |e: &dyn std::fmt::Display| BuildError::Partition {
        disk: disk.name.clone(),
        partition: part.name.clone(),
        message: e.to_string(),
    };
    match &part.content {
        Content::None => Ok(FsPlan::None),
        Content::Swap(s) => {
            let mut o = SwapOptions { uuid: ids::fs_uuid(&placed.guid), label: None };
            o.apply_extra_args(&s.extra_args).map_err(|e| part_err(&e))?;
            // Validate the header now so a too-small partition fails before any write.
            crate::swap::swap_header(placed.size_bytes(), &o).map_err(|e| part_err(&e))?;
            Ok(FsPlan::Swap(o))
        }
        Content::Btrfs(b) => {
            let empty;
            let top = match &b.mountpoint {
                Some(_) => tree_of(Target::Part(di, pi))?,
                None => {
                    empty = Tree::new(default_root_meta(sde));
                    &empty
                }
            };
            let mut subvols = Vec::new();
            for (si, sv) in b.subvolumes.iter().enumerate() {
                subvols.push(mkdisk_btrfs::SubvolSpec {
                    path: sv.name.clone(),
                    tree: std::borrow::Cow::Borrowed(tree_of(Target::Subvol(di, pi, si))?),
                    compress: mkdisk_btrfs::parse_mount_options(&sv.mount_options).map_err(|e| part_err(&e))?,
                });
            }
            plan_btrfs(placed, top, subvols, &b.mount_options, &b.extra_args, &bo).map_err(|e| part_err(&e))
        }
        Content::Filesystem(fs) => match fs.format.as_str() {
            "vfat" => {
                let tree = tree_of(Target::Part(di, pi))?;
                let o = fat_options(placed, &fs.extra_args).map_err(|e| part_err(&e))?;
                let layout = mkdisk_fat::plan(tree, &o).map_err(|e| part_err(&e))?;
                Ok(FsPlan::Fat(Box::new(layout), tree))
            }
            "ext4" => {
                let tree = tree_of(Target::Part(di, pi))?;
                let mut o = mkdisk_ext4::Ext4Options::new(placed.size_bytes(), ids::fs_uuid(&placed.guid));
                o.timestamp = sde.unwrap_or(0);
                o.apply_extra_args(&fs.extra_args).map_err(|e| part_err(&e))?;
                let layout = mkdisk_ext4::plan(tree, &o).map_err(|e| part_err(&e))?;
                Ok(FsPlan::Ext4(Box::new(layout), tree))
            }
            "btrfs" => {
                let top = tree_of(Target::Part(di, pi))?;
                plan_btrfs(placed, top, Vec::new(), &fs.mount_options, &fs.extra_args, &bo).map_err(|e| part_err(&e))
            }
            other => Err(not_impl(&format!("format {other:?}"))),
        },
    }
}

/// One warning per ext4 entry whose time lay outside ext4's range and was clamped.
fn warn_clamped_times(plans: &[DiskPlan], fs_plans: &[Vec<FsPlan<'_>>], warn: &mut dyn FnMut(String)) {
    for (dp, fsp) in plans.iter().zip(fs_plans) {
        for (placed, plan) in dp.layout.partitions.iter().zip(fsp) {
            let FsPlan::Ext4(layout, _) = plan else { continue };
            for path in layout.clamped_times() {
                warn(format!(
                    "disk {}, partition {}: {path}: modification time outside ext4's range (1901-12-13 to \
                     2446-05-10), stored as the nearest end of it",
                    dp.disk.name, placed.name
                ));
            }
        }
    }
}

fn check_out_dir(out: &Path) -> Result<(), BuildError> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(BuildError::Out { path: out.to_path_buf(), message: "not a directory".into() }),
        Err(e) => Err(BuildError::Out { path: out.to_path_buf(), message: e.to_string() }),
    }
}

/// Phase durations on stderr when `MKDISK_TIMINGS` is set (for profiling; never in output).
struct Timings(Option<std::time::Instant>);

impl Timings {
    fn from_env() -> Self {
        Timings(std::env::var_os("MKDISK_TIMINGS").map(|_| std::time::Instant::now()))
    }

    fn lap(&mut self, what: &str) {
        if let Some(t) = &mut self.0 {
            eprintln!("mkdisk: {what}: {:.3} s", t.elapsed().as_secs_f64());
            *t = std::time::Instant::now();
        }
    }
}

/// Build every disk of `spec` into `opts.out_dir`. Returns the written image paths.
///
/// # Errors
/// Any placement, source, planning or write error; no image is left behind on error.
pub fn build(
    spec: &Spec,
    opts: &BuildOptions,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<PathBuf>, BuildError> {
    check_out_dir(&opts.out_dir)?;
    let mut timings = Timings::from_env();
    let plans = place_all(spec, &opts.seed)?;
    // One pool for scanning, planning (btrfs compresses there) and writing, so `--threads`
    // bounds them all.
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = opts.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().map_err(|e| BuildError::Threads(e.to_string()))?;
    progress.phase("scanning");
    // Warnings are collected inside the pool and passed on in order afterwards.
    let (split, warnings) = pool.install(|| {
        let mut warnings = Vec::new();
        let r = split_sources_placed(spec, opts, &plans, &mut |m| warnings.push(m));
        (r, warnings)
    });
    for m in warnings {
        warn(m);
    }
    let (sources, grub) = split?;
    timings.lap("scan and split");
    // Plan every filesystem before touching the output.
    progress.phase("planning");
    let fs_plans = pool.install(|| -> Result<Vec<Vec<FsPlan<'_>>>, BuildError> {
        let mut fs_plans = Vec::new();
        for (di, dp) in plans.iter().enumerate() {
            let mut v = Vec::new();
            for placed in &dp.layout.partitions {
                v.push(plan_partition(dp, placed, di, &sources, opts)?);
            }
            fs_plans.push(v);
        }
        Ok(fs_plans)
    })?;
    timings.lap("plan");
    warn_clamped_times(&plans, &fs_plans, warn);
    let total: u64 = fs_plans
        .iter()
        .flatten()
        .map(|p| match p {
            FsPlan::Fat(layout, _) => layout.file_bytes(),
            FsPlan::Ext4(_, t) => t.data_bytes(),
            FsPlan::Btrfs(_, bytes) => *bytes,
            FsPlan::None | FsPlan::Swap(_) => 0,
        })
        .fold(0, u64::saturating_add);
    progress.set_total(total);
    let mut images = Vec::new();
    for (di, (dp, fsp)) in plans.iter().zip(&fs_plans).enumerate() {
        let file = format!("{}.raw", dp.disk.image_name);
        progress.phase(&file);
        let path = opts.out_dir.join(&file);
        let image = Image::create(&path, dp.layout.sectors * mkdisk_gpt::SECTOR_SIZE)
            .map_err(|e| BuildError::Out { path: opts.out_dir.clone(), message: e.to_string() })?;
        mkdisk_gpt::write_gpt(&dp.layout, &image.whole())
            .map_err(|e| BuildError::Gpt { disk: dp.disk.name.clone(), source: e })?;
        // GRUB BIOS: boot.img over the protective MBR's boot code, core.img into EF02.
        for g in grub.iter().filter(|g| g.disk == di) {
            crate::nixos::write_grub(g, &image.whole())?;
        }
        pool.install(|| -> Result<(), BuildError> {
            for (placed, plan) in dp.layout.partitions.iter().zip(fsp) {
                let region = image.region(&placed.label, placed.offset_bytes(), placed.size_bytes())?;
                let part_err = |e: &dyn std::fmt::Display| BuildError::Partition {
                    disk: dp.disk.name.clone(),
                    partition: placed.name.clone(),
                    message: e.to_string(),
                };
                match plan {
                    FsPlan::None => {}
                    FsPlan::Swap(o) => crate::swap::write_swap(&region, o).map_err(|e: SwapError| part_err(&e))?,
                    FsPlan::Fat(layout, tree) => {
                        mkdisk_fat::write(layout, tree, &region, progress).map_err(|e| part_err(&e))?;
                    }
                    FsPlan::Btrfs(layout, _) => {
                        mkdisk_btrfs::write(layout, &region, progress).map_err(|e| part_err(&e))?;
                    }
                    FsPlan::Ext4(layout, tree) => {
                        mkdisk_ext4::write(layout, tree, &region, progress).map_err(|e| part_err(&e))?;
                    }
                }
            }
            Ok(())
        })?;
        images.push(image);
        timings.lap(&format!("write {}", dp.disk.name));
    }
    Ok(mkdisk_tree::persist_all(images)?)
}

/// For `mkdisk plan`: a placed partition and its spec content.
#[must_use]
pub fn describe(dp: &DiskPlan, placed: &Placed) -> String {
    match spec_part(&dp.disk, placed).map(|p| &p.content) {
        Some(Content::Filesystem(f)) => f.format.clone(),
        Some(Content::Btrfs(_)) => "btrfs".into(),
        Some(Content::Swap(_)) => "swap".into(),
        Some(Content::None) | None => "-".into(),
    }
}
