//! Each partition's content planned from its writer options and its source trees: a FAT,
//! ext4 or btrfs layout, a swap header, or nothing; with [`BuildOptions::measure`] also what
//! the content holds and the smallest partition that holds it.

use std::borrow::Cow;
use std::sync::Arc;

use mkdisk_gpt::Placed;
use mkdisk_tree::Tree;

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
}

/// 1 MiB: the granularity of minimal sizes (partitions are placed in MiB).
const MIB: u64 = 1 << 20;

/// The content of every partition of every disk; `fsopts[d][i]` are the options of
/// partition `i` of disk `d`.
///
/// # Errors
/// A filesystem cannot be planned ([`BuildError::Partition`]).
pub(crate) fn plan_disks(
    spec: &Spec,
    placed: Vec<PlacedDisk>,
    fsopts: Vec<Vec<FsOptions>>,
    sources: &Sources,
    mut grub: Vec<GrubWrites>,
    opts: &BuildOptions,
) -> Result<Vec<DiskImagePlan>, BuildError> {
    let mut disks = Vec::new();
    for (di, (dp, fso)) in placed.into_iter().zip(fsopts).enumerate() {
        let mut partitions = Vec::new();
        for (index, (placed, fo)) in dp.layout.partitions.iter().zip(fso).enumerate() {
            let err = |e: FsError| BuildError::partition(&dp.disk.name, &placed.name, e);
            let part = dp.spec_part(placed);
            partitions.push(plan_partition(spec, di, index, placed, part, fo, sources, opts).map_err(err)?);
        }
        let g = grub.iter().position(|g| g.disk == di).map(|i| grub.remove(i));
        disks.push(DiskImagePlan { placed: dp, partitions, grub: g });
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
    placed: &Placed,
    part: Option<(usize, &Partition)>,
    fo: FsOptions,
    sources: &Sources,
    opts: &BuildOptions,
) -> Result<PartitionPlan, FsError> {
    let ident = fo.ident();
    let (mounts, subvolumes) = match part {
        Some((pi, p)) => (mounts_on(spec, di, pi), subvolume_names(&p.content)),
        None => (Vec::new(), Vec::new()),
    };
    let format = part.map_or_else(|| "-".to_string(), |(_, p)| format_name(&p.content));
    let target = |pi| MountTarget::Partition(di, pi);
    let (content, measure) = match (fo, part) {
        (FsOptions::None, _) | (_, None) => (ContentPlan::None, None),
        (FsOptions::Swap(o), Some(_)) => plan_swap(placed, &o, opts.measure)?,
        (FsOptions::Fat(o), Some((pi, _))) => plan_fat(&o, sources.get(target(pi)), opts.measure)?,
        (FsOptions::Ext4(o), Some((pi, _))) => plan_ext4(&o, sources.get(target(pi)), opts.measure)?,
        (FsOptions::Btrfs(o, compress), Some((pi, p))) => {
            let trees = btrfs_trees(di, pi, p, sources, opts.source_date_epoch);
            plan_btrfs(&o, &trees, &subvolumes, compress, opts.measure)?
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

fn plan_fat(o: &mkdisk_fat::FatOptions, tree: Arc<Tree>, measure: bool) -> Result<Planned, FsError> {
    let layout = mkdisk_fat::plan(&tree, o)?;
    let m = if measure { Some(tree_measure(&[&tree], mkdisk_fat::min_size(&tree, o)?)) } else { None };
    Ok((ContentPlan::Fat(Box::new(layout), tree), m))
}

fn plan_ext4(o: &mkdisk_ext4::Ext4Options, tree: Arc<Tree>, measure: bool) -> Result<Planned, FsError> {
    let layout = mkdisk_ext4::plan(&tree, o)?;
    let m = if measure { Some(tree_measure(&[&tree], mkdisk_ext4::min_size(&tree, o)?)) } else { None };
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

/// btrfs: compression first ([`mkdisk_btrfs::prepare`]), then the pure plan.
fn plan_btrfs(
    o: &mkdisk_btrfs::BtrfsOptions,
    trees: &[Arc<Tree>],
    names: &[String],
    compress: Vec<Option<mkdisk_btrfs::Compress>>,
    measure: bool,
) -> Result<Planned, FsError> {
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
    let prepared = mkdisk_btrfs::prepare(&trees[0], &subvols, o)?;
    let layout = mkdisk_btrfs::plan(&prepared, o)?;
    let all: Vec<&Tree> = trees.iter().map(|t| &**t).collect();
    let bytes = all.iter().map(|t| t.data_bytes()).fold(0, u64::saturating_add);
    let m = if measure { Some(tree_measure(&all, mkdisk_btrfs::min_size(&prepared, o)?)) } else { None };
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
