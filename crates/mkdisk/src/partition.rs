//! Each partition's content planned from its writer options and its source trees: a FAT,
//! ext4 or btrfs layout, a swap header, or nothing; with [`BuildOptions::measure`] also what
//! the content holds and the smallest partition that holds it.

use std::borrow::Cow;
use std::sync::Arc;

use mkdisk_gpt::Placed;
use mkdisk_tree::Tree;

use crate::autosize::AutoSized;
use crate::boot::GrubWrites;
use crate::error::{BuildError, FsError};
use crate::fsopts::{FsIdent, FsOptions};
use crate::options::BuildOptions;
use crate::place::PlacedDisk;
use crate::sources::{default_root_meta, Sources};
use crate::spec::{Content, MountTarget, Partition, Spec};
use crate::swap::swap_header;

/// A partition's planned content.
#[derive(Debug)]
#[non_exhaustive]
pub enum ContentPlan {
    /// Nothing is written (e.g. EF02 without GRUB).
    None,
    /// The first page of a swap area.
    Swap(Vec<u8>),
    /// A FAT filesystem and its tree.
    Fat(Box<mkdisk_fat::FatLayout>, Arc<Tree>),
    /// An ext4 filesystem and its tree.
    Ext4(Box<mkdisk_ext4::Ext4Layout>, Arc<Tree>),
    /// A btrfs filesystem (the layout owns its trees) and its file-data bytes.
    Btrfs(Box<mkdisk_btrfs::BtrfsLayout>, u64),
}

impl ContentPlan {
    /// File-data bytes the writer reports to [`Progress::data_written`].
    pub(crate) fn progress_bytes(&self) -> u64 {
        match self {
            ContentPlan::Fat(layout, _) => layout.file_bytes(),
            ContentPlan::Ext4(_, t) => t.data_bytes(),
            ContentPlan::Btrfs(_, bytes) => *bytes,
            ContentPlan::None | ContentPlan::Swap(_) => 0,
        }
    }
}

/// What a filesystem holds and the smallest partition that holds it (with
/// [`BuildOptions::measure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Inodes (files, directories, links; a hard-linked file once).
    pub inodes: u64,
    /// The smallest partition size, a multiple of 1 MiB, that the writer plans this content
    /// into with the same options.
    pub min_size_bytes: u64,
}

/// One partition of the plan.
#[derive(Debug)]
pub struct PartitionPlan {
    /// Index in [`mkdisk_gpt::DiskLayout::partitions`].
    pub index: usize,
    /// The filesystem format (`vfat`, `ext4`, `btrfs`, `swap`) or `-`.
    pub format: String,
    /// The identifiers the writer stores.
    pub ident: FsIdent,
    /// Mount points of the layout on this partition: (mount point, btrfs subvolume).
    pub mounts: Vec<(String, Option<String>)>,
    /// Subvolumes created (btrfs), in layout order.
    pub subvolumes: Vec<String>,
    /// The content.
    pub content: ContentPlan,
    /// Content and minimal size, when measured.
    pub measure: Option<Measure>,
}

/// One disk of the plan.
#[derive(Debug)]
pub struct DiskImagePlan {
    /// The disk and its placement.
    pub placed: PlacedDisk,
    /// Its partitions, in table order.
    pub partitions: Vec<PartitionPlan>,
    /// GRUB's MBR and core.img writes, if GRUB goes on this disk.
    pub grub: Option<GrubWrites>,
    /// The size asked for: `auto`, or the layout's `imageSize` or `--image-size` as written.
    pub image_size: String,
    /// How the size was chosen, for an auto-sized disk.
    pub auto: Option<AutoSized>,
}

/// 1 MiB: the granularity of minimal sizes (partitions are placed in MiB).
const MIB: u64 = 1 << 20;

/// How the disks' sizes are decided, per disk (see [`plan_disks`]).
pub(crate) enum DiskSizing<'f> {
    /// As placed.
    Placed,
    /// As placed, at the size `--image-size` gave: when partition `.0` (index in the placed
    /// table: the one that fills the disk) does not hold its content, the content is measured
    /// so that the error says by how much ([`FsError::TooSmall`]).
    Explain(usize),
    /// Auto-sized: partition `.0` (index in the placed table) is planned first; `.1` takes its
    /// filesystem's smallest size and returns the disk placed for it, with every partition's
    /// writer options at that placement.
    Auto(usize, AutoPlace<'f>),
}

/// Places an auto-sized disk once its fill partition's minimal size (the argument) is known.
pub(crate) type AutoPlace<'f> = Box<dyn FnMut(u64) -> Result<(PlacedDisk, Vec<FsOptions>), BuildError> + Send + 'f>;

/// How one partition's size is decided (see [`DiskSizing`]).
enum Sizing<'c> {
    /// As placed.
    Placed,
    /// As placed; a content that does not fit is measured for the error.
    Explain,
    /// `choose(min_size_bytes)` returns the partition's final placement.
    Auto(&'c mut dyn FnMut(u64) -> Result<Placed, BuildError>),
}

/// The content of every partition of every disk; `fsopts[d][i]` are the options of
/// partition `i` of disk `d`, `sizing[d]` how disk `d`'s size is decided. An auto-sized disk's
/// fill partition is planned first (the expensive preparation, btrfs's compression, runs
/// once), the disk is placed for its size, then the other partitions are planned there.
///
/// # Errors
/// A filesystem cannot be planned ([`BuildError::Partition`]); an auto-sized disk does not
/// place.
pub(crate) fn plan_disks(
    spec: &Spec,
    placed: Vec<PlacedDisk>,
    fsopts: Vec<Vec<FsOptions>>,
    sources: &Sources,
    mut grub: Vec<GrubWrites>,
    opts: &BuildOptions,
    sizing: Vec<DiskSizing<'_>>,
) -> Result<Vec<DiskImagePlan>, BuildError> {
    let mut disks = Vec::new();
    for (di, ((mut dp, mut fso), sizing)) in placed.into_iter().zip(fsopts).zip(sizing).enumerate() {
        let mut first: Option<(usize, PartitionPlan)> = None;
        let mut explain = None;
        match sizing {
            DiskSizing::Placed => {}
            DiskSizing::Explain(fill) => explain = Some(fill),
            DiskSizing::Auto(fill, mut place) => {
                let placed = dp.layout.partitions[fill].clone();
                let mut done = None;
                let mut choose = |min: u64| {
                    let (d, f) = place(min)?;
                    let p = d.layout.partitions[fill].clone();
                    done = Some((d, f));
                    Ok(p)
                };
                let fo = fso[fill].clone();
                let pp = plan_partition(spec, di, fill, &dp, &placed, fo, sources, opts, Sizing::Auto(&mut choose))?;
                // plan_partition chose the size (or failed) for every content an auto disk accepts.
                let Some((d, f)) = done else {
                    return Err(BuildError::Size {
                        disk: dp.disk.name.clone(),
                        message: format!("partition {} has no filesystem to size the image by", placed.name),
                    });
                };
                (dp, fso) = (d, f);
                first = Some((fill, pp));
            }
        }
        let mut partitions = Vec::new();
        for (index, (placed, fo)) in dp.layout.partitions.iter().zip(fso).enumerate() {
            if let Some((_, pp)) = first.take_if(|(i, _)| *i == index) {
                partitions.push(pp);
                continue;
            }
            let how = if explain == Some(index) { Sizing::Explain } else { Sizing::Placed };
            partitions.push(plan_partition(spec, di, index, &dp, placed, fo, sources, opts, how)?);
        }
        let g = grub.iter().position(|g| g.disk == di).map(|i| grub.remove(i));
        disks.push(DiskImagePlan { placed: dp, partitions, grub: g, image_size: String::new(), auto: None });
    }
    Ok(disks)
}

/// Mount points on partition `pi` of disk `di`, with the subvolume each mounts.
fn mounts_on(spec: &Spec, di: usize, pi: usize) -> Vec<(String, Option<String>)> {
    spec.mounts()
        .into_iter()
        .filter(|m| match m.target {
            MountTarget::Partition(d, p) | MountTarget::Subvolume(d, p, _) => (d, p) == (di, pi),
            MountTarget::Nodev(_) => false,
        })
        .map(|m| (m.mountpoint.to_string(), spec.subvolume_name(m.target).map(str::to_string)))
        .collect()
}

#[allow(clippy::too_many_arguments)] // the one place that joins them
fn plan_partition(
    spec: &Spec,
    di: usize,
    index: usize,
    dp: &PlacedDisk,
    placed: &Placed,
    fo: FsOptions,
    sources: &Sources,
    opts: &BuildOptions,
    mut sizing: Sizing<'_>,
) -> Result<PartitionPlan, BuildError> {
    let err = |e: FsError| BuildError::partition(&dp.disk.name, &placed.name, e);
    let part = dp.spec_part(placed);
    let ident = fo.ident();
    let (mounts, subvolumes) = match part {
        Some((pi, p)) => (mounts_on(spec, di, pi), subvolume_names(&p.content)),
        None => (Vec::new(), Vec::new()),
    };
    let format = part.map_or_else(|| "-".to_string(), |(_, p)| format_name(&p.content));
    let target = |pi| MountTarget::Partition(di, pi);
    let s = &mut sizing;
    let (content, measure) = match (fo, part) {
        (FsOptions::None, _) | (_, None) => (ContentPlan::None, None),
        (FsOptions::Swap(o), Some(_)) => plan_swap(placed, &o, opts.measure).map_err(err)?,
        (FsOptions::Fat(o), Some((pi, _))) => plan_fat(o, sources.get(target(pi)), opts.measure, s, &err)?,
        (FsOptions::Ext4(o), Some((pi, _))) => plan_ext4(o, sources.get(target(pi)), opts.measure, s, &err)?,
        (FsOptions::Btrfs(o, compress), Some((pi, p))) => {
            let trees = btrfs_trees(di, pi, p, sources, opts.source_date_epoch);
            plan_btrfs(o, &trees, &subvolumes, compress, opts.measure, s, &err)?
        }
    };
    Ok(PartitionPlan { index, format, ident, mounts, subvolumes, content, measure })
}

fn format_name(c: &Content) -> String {
    match c {
        Content::Filesystem(f) => f.format.name().to_string(),
        Content::Btrfs(_) => "btrfs".into(),
        Content::Swap(_) => "swap".into(),
        Content::None => "-".into(),
    }
}

fn subvolume_names(c: &Content) -> Vec<String> {
    match c {
        Content::Btrfs(b) => b.subvolumes.iter().map(|s| s.name.clone()).collect(),
        _ => Vec::new(),
    }
}

type Planned = (ContentPlan, Option<Measure>);
type ErrFn<'e> = dyn Fn(FsError) -> BuildError + 'e;

fn plan_swap(placed: &Placed, o: &crate::swap::SwapOptions, measure: bool) -> Result<Planned, FsError> {
    let page = swap_header(placed.size_bytes(), o)?;
    let min = crate::swap::MIN_PAGES * crate::swap::PAGE_SIZE;
    let m = measure.then_some(Measure { data_bytes: 0, inodes: 0, min_size_bytes: min.div_ceil(MIB) * MIB });
    Ok((ContentPlan::Swap(page), m))
}

fn tree_measure(trees: &[&Tree], min_size_bytes: u64) -> Measure {
    let data_bytes = trees.iter().map(|t| t.data_bytes()).fold(0, u64::saturating_add);
    let inodes = trees.iter().map(|t| t.len() as u64).sum();
    Measure { data_bytes, inodes, min_size_bytes }
}

/// One filesystem's planning steps, for [`plan_sized`].
struct Steps<O, L, E, M, P, R> {
    /// The smallest size for these options.
    min: M,
    /// The plan at the options' size.
    plan: P,
    /// The options moved to a placement: (options, partition) → options.
    resize: R,
    /// The options' size.
    size: fn(&O) -> u64,
    /// Whether an error is the one a larger size mends.
    does_not_fit: fn(&E) -> bool,
    _l: std::marker::PhantomData<fn() -> L>,
}

/// Plan at the size `sizing` decides: [`Sizing::Auto`] measures the minimum first and plans
/// at the placement it chooses; [`Sizing::Explain`] measures it when the content does not fit,
/// for [`FsError::TooSmall`]; with `measure` the minimum comes back (measured once at most).
fn plan_sized<O, L, E, M, P, R>(
    o: O,
    sizing: &mut Sizing<'_>,
    measure: bool,
    steps: Steps<O, L, E, M, P, R>,
    err: &ErrFn<'_>,
) -> Result<(L, Option<u64>), BuildError>
where
    E: Into<FsError>,
    M: Fn(&O) -> Result<u64, E>,
    P: Fn(&O) -> Result<L, E>,
    R: Fn(O, &Placed) -> Result<O, FsError>,
{
    let mut o = o;
    let mut min = None;
    if let Sizing::Auto(choose) = sizing {
        let m = (steps.min)(&o).map_err(|e| err(e.into()))?;
        let placed = choose(m)?;
        o = (steps.resize)(o, &placed).map_err(err)?;
        min = Some(m);
    }
    let layout = match (steps.plan)(&o) {
        Ok(l) => l,
        Err(e) if matches!(sizing, Sizing::Explain) && (steps.does_not_fit)(&e) => {
            let min_size_bytes = (steps.min)(&o).map_err(|e| err(e.into()))?;
            return Err(err(FsError::TooSmall { size_bytes: (steps.size)(&o), min_size_bytes }));
        }
        Err(e) => return Err(err(e.into())),
    };
    if measure && min.is_none() {
        min = Some((steps.min)(&o).map_err(|e| err(e.into()))?);
    }
    Ok((layout, min))
}

fn plan_fat(
    o: mkdisk_fat::FatOptions,
    tree: Arc<Tree>,
    measure: bool,
    sizing: &mut Sizing<'_>,
    err: &ErrFn<'_>,
) -> Result<Planned, BuildError> {
    use mkdisk_fat::{FatError, FatOptions};
    let steps = Steps {
        min: |o: &FatOptions| mkdisk_fat::min_size(&tree, o),
        plan: |o: &FatOptions| mkdisk_fat::plan(&tree, o),
        resize: |o: FatOptions, p: &Placed| {
            let hidden_sectors = u32::try_from(p.first_lba).map_err(|_| FsError::FatStart(p.first_lba))?;
            let mut o = o;
            (o.size_bytes, o.hidden_sectors) = (p.size_bytes(), hidden_sectors);
            Ok(o)
        },
        size: |o: &FatOptions| o.size_bytes,
        does_not_fit: |e: &FatError| matches!(e, FatError::DoesNotFit { .. } | FatError::DirectoryTooLarge { .. }),
        _l: std::marker::PhantomData,
    };
    let (layout, min) = plan_sized(o, sizing, measure, steps, err)?;
    let m = min.map(|min| tree_measure(&[&tree], min));
    Ok((ContentPlan::Fat(Box::new(layout), tree), m))
}

fn plan_ext4(
    o: mkdisk_ext4::Ext4Options,
    tree: Arc<Tree>,
    measure: bool,
    sizing: &mut Sizing<'_>,
    err: &ErrFn<'_>,
) -> Result<Planned, BuildError> {
    use mkdisk_ext4::{Ext4Error, Ext4Options};
    let steps = Steps {
        min: |o: &Ext4Options| mkdisk_ext4::min_size(&tree, o),
        plan: |o: &Ext4Options| mkdisk_ext4::plan(&tree, o),
        resize: |mut o: Ext4Options, p: &Placed| {
            o.size_bytes = p.size_bytes();
            Ok(o)
        },
        size: |o: &Ext4Options| o.size_bytes,
        does_not_fit: |e: &Ext4Error| matches!(e, Ext4Error::DoesNotFit { .. }),
        _l: std::marker::PhantomData,
    };
    let (layout, min) = plan_sized(o, sizing, measure, steps, err)?;
    let m = min.map(|min| tree_measure(&[&tree], min));
    Ok((ContentPlan::Ext4(Box::new(layout), tree), m))
}

/// The top level's tree and each subvolume's: the top level is empty unless it is mounted.
fn btrfs_trees(di: usize, pi: usize, p: &Partition, sources: &Sources, sde: Option<i64>) -> Vec<Arc<Tree>> {
    let mut trees = Vec::new();
    match &p.content {
        Content::Btrfs(b) => {
            let top = if b.mountpoint.is_some() {
                sources.get(MountTarget::Partition(di, pi))
            } else {
                Arc::new(Tree::new(default_root_meta(sde)))
            };
            trees.push(top);
            trees.extend((0..b.subvolumes.len()).map(|si| sources.get(MountTarget::Subvolume(di, pi, si))));
        }
        _ => trees.push(sources.get(MountTarget::Partition(di, pi))),
    }
    trees
}

/// btrfs: compression first ([`mkdisk_btrfs::prepare`], once), then the pure plan — at the
/// minimum's search sizes and the final size alike.
fn plan_btrfs(
    o: mkdisk_btrfs::BtrfsOptions,
    trees: &[Arc<Tree>],
    names: &[String],
    compress: Vec<Option<mkdisk_btrfs::Compress>>,
    measure: bool,
    sizing: &mut Sizing<'_>,
    err: &ErrFn<'_>,
) -> Result<Planned, BuildError> {
    use mkdisk_btrfs::{BtrfsError, BtrfsOptions};
    let subvols: Vec<mkdisk_btrfs::SubvolSpec<'_>> = names
        .iter()
        .zip(&trees[1..])
        .zip(compress)
        .map(|((path, tree), compress)| mkdisk_btrfs::SubvolSpec {
            path: path.clone(),
            tree: Cow::Borrowed(&**tree),
            compress,
        })
        .collect();
    let prepared = mkdisk_btrfs::prepare(&trees[0], &subvols, &o).map_err(|e| err(e.into()))?;
    let steps = Steps {
        min: |o: &BtrfsOptions| mkdisk_btrfs::min_size(&prepared, o),
        plan: |o: &BtrfsOptions| mkdisk_btrfs::plan(&prepared, o),
        resize: |mut o: BtrfsOptions, p: &Placed| {
            o.size_bytes = p.size_bytes();
            Ok(o)
        },
        size: |o: &BtrfsOptions| o.size_bytes,
        does_not_fit: |e: &BtrfsError| matches!(e, BtrfsError::DoesNotFit { .. }),
        _l: std::marker::PhantomData,
    };
    let (layout, min) = plan_sized(o, sizing, measure, steps, err)?;
    let all: Vec<&Tree> = trees.iter().map(|t| &**t).collect();
    let bytes = all.iter().map(|t| t.data_bytes()).fold(0, u64::saturating_add);
    let m = min.map(|min| tree_measure(&all, min));
    Ok((ContentPlan::Btrfs(Box::new(layout), bytes), m))
}

/// One warning per ext4 entry whose time lay outside ext4's range and was clamped.
pub(crate) fn warn_clamped_times(disks: &[DiskImagePlan], warnings: &mut Vec<String>) {
    for d in disks {
        for p in &d.partitions {
            let ContentPlan::Ext4(layout, _) = &p.content else { continue };
            for path in layout.clamped_times() {
                warnings.push(format!(
                    "disk {}, partition {}: {path}: modification time outside ext4's range (1901-12-13 to \
                     2446-05-10), stored as the nearest end of it",
                    d.placed.disk.name, d.placed.layout.partitions[p.index].name
                ));
            }
        }
    }
}
