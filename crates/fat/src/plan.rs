//! The planner: geometry, names, cluster allocation and the encoded directories, decided
//! before a single byte is written.

use std::collections::BTreeMap;

use mkdisk_tree::{DirData, InodeId, Kind, Tree};

use crate::dir_entry::{
    lfn_checksum, lfn_entries, lfn_entry_count, FatTime, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID,
    DIR_ENTRY_BYTES,
};
use crate::fat_table::{self, Chain};
use crate::geometry::Geometry;
use crate::names::{assign_short_names, long_name_units, ShortName};
use crate::{FatError, FatOptions, FatType};

/// Most 32-byte entries in one directory (2 MiB).
const MAX_DIR_ENTRIES: u64 = 65_536;
/// `BS_VolLab` of an unlabelled volume.
pub(crate) const NO_NAME: [u8; 11] = *b"NO NAME    ";

/// A planned directory: where it lives and its encoded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirPlan {
    /// Path in the tree (`/` for the root).
    pub path: String,
    /// First cluster; 0 for the fixed FAT16 root directory.
    pub first_cluster: u32,
    /// Clusters (0 for the FAT16 root).
    pub clusters: u32,
    /// The full contents: every cluster (or the whole FAT16 root region), zero-padded.
    pub bytes: Vec<u8>,
}

/// A planned file: which tree inode's data goes to which clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FilePlan {
    /// Path in the tree.
    pub path: String,
    /// The inode whose data is copied (hard links are copied once per entry).
    pub inode: InodeId,
    /// First cluster (0 for an empty file).
    pub first_cluster: u32,
    /// Clusters.
    pub clusters: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Everything [`crate::write`] needs, decided by [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatLayout {
    pub(crate) geometry: Geometry,
    pub(crate) hidden_sectors: u32,
    pub(crate) volume_id: u32,
    pub(crate) label: [u8; 11],
    pub(crate) dirs: Vec<DirPlan>,
    pub(crate) files: Vec<FilePlan>,
    /// Allocated clusters: exactly `2..2 + allocated`.
    pub(crate) allocated: u32,
}

impl FatLayout {
    /// The geometry.
    #[must_use]
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The FAT type.
    #[must_use]
    pub fn fat_type(&self) -> FatType {
        self.geometry.fat_type
    }

    /// Bytes of file data [`crate::write`] reports to its `Progress`: every file's whole
    /// size, since FAT has no holes and a sparse file's zeros are written too.
    #[must_use]
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).fold(0, u64::saturating_add)
    }

    /// Volume size in bytes (whole sectors) that the layout writes into.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.geometry.total_sectors) * u64::from(crate::SECTOR_BYTES)
    }

    /// Allocated clusters (directories and file data).
    #[must_use]
    pub fn used_clusters(&self) -> u32 {
        self.allocated
    }

    /// Free clusters, as written to `FSI_Free_Count`.
    #[must_use]
    pub fn free_clusters(&self) -> u32 {
        self.geometry.cluster_count - self.allocated
    }

    /// The first free cluster (`FSI_Nxt_Free`), or `0xFFFFFFFF` when the volume is full.
    #[must_use]
    pub fn next_free_cluster(&self) -> u32 {
        if self.allocated < self.geometry.cluster_count {
            self.allocated + 2
        } else {
            0xFFFF_FFFF
        }
    }

    /// Bytes of file data to copy (for progress bars).
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Number of directories (including the root) and of file entries.
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        (self.dirs.len(), self.files.len())
    }

    /// All cluster chains, sorted by first cluster.
    pub(crate) fn chains(&self) -> Vec<Chain> {
        let mut v: Vec<Chain> = self
            .dirs
            .iter()
            .map(|d| (d.first_cluster, d.clusters))
            .chain(self.files.iter().map(|f| (f.first_cluster, f.clusters)))
            .filter(|&(first, len)| first != 0 && len != 0)
            .map(|(first, len)| Chain { first, len })
            .collect();
        v.sort();
        v
    }

    /// One copy of the FAT, encoded (`fat_sectors × 512` bytes).
    #[must_use]
    pub fn fat_bytes(&self) -> Vec<u8> {
        // At most 0x0FFF_FFF7 entries of 4 bytes rounded up to whole sectors (about 1 GiB).
        let len = usize::try_from(u64::from(self.geometry.fat_sectors) * u64::from(crate::SECTOR_BYTES))
            .expect("a FAT is at most about 1 GiB");
        let mut out = vec![0u8; len];
        fat_table::encode(&self.geometry, &self.chains(), 0, &mut out);
        out
    }
}

/// A directory during planning.
struct DirWork {
    inode: InodeId,
    path: String,
    /// Index of the parent in the directory list (the root is its own parent).
    parent: usize,
    entries: Vec<EntryWork>,
    slots: u64,
    first_cluster: u32,
    clusters: u32,
}

enum Target {
    Dir(usize),
    File(usize),
}

struct EntryWork {
    short: [u8; 11],
    lfn: Option<Vec<u16>>,
    inode: InodeId,
    target: Target,
}

fn label_bytes(label: Option<&str>) -> Result<[u8; 11], FatError> {
    let Some(label) = label.filter(|l| !l.is_empty()) else { return Ok(NO_NAME) };
    let bad = |reason| FatError::BadLabel { label: label.to_owned(), reason };
    if !label.is_ascii() {
        return Err(bad("not ASCII"));
    }
    if label.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    if label.starts_with(' ') {
        return Err(bad("starts with a space"));
    }
    let mut out = [b' '; 11];
    for (o, b) in out.iter_mut().zip(label.bytes()) {
        if b < 0x20 || b == 0x7F || b"*?.,;:/\\|+=<>[]\"".contains(&b) {
            return Err(bad("contains a character FAT labels cannot hold"));
        }
        *o = b.to_ascii_uppercase();
    }
    if out == NO_NAME {
        return Ok(NO_NAME);
    }
    Ok(out)
}

fn join(parent: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The long name (UTF-16) and short name of every entry of directory `d` at `dir_path`,
/// with whether the entry needs long-name entries; names FAT cannot hold and names equal up
/// to case are errors.
fn dir_names(d: &DirData, dir_path: &str) -> Result<Vec<(Vec<u16>, ShortName, bool)>, FatError> {
    let mut units = Vec::with_capacity(d.entries.len());
    let mut upper: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in d.entries.iter().enumerate() {
        let path = join(dir_path, &e.name);
        let u = long_name_units(&e.name).map_err(|reason| FatError::BadName { path: path.clone(), reason })?;
        // Checked above: valid UTF-8.
        let s = String::from_utf8_lossy(&e.name).to_uppercase();
        if let Some(&j) = upper.get(&s) {
            return Err(FatError::CaseCollision { path, other: join(dir_path, &d.entries[j].name) });
        }
        upper.insert(s, i);
        units.push(u);
    }
    let names: Vec<String> = d.entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let shorts = assign_short_names(&refs).map_err(|reason| FatError::BadName { path: dir_path.to_owned(), reason })?;
    Ok(units.into_iter().zip(shorts).map(|(u, (short, needs_lfn))| (u, short, needs_lfn)).collect())
}

/// Directories and files found by [`walk`], in allocation order.
struct Walked {
    dirs: Vec<DirWork>,
    files: Vec<FilePlan>,
}

impl Walked {
    /// What entry `path` (naming `child`, inode `inode`, in directory `parent`) becomes: a
    /// new directory (pushed to `subdirs`) or a file (pushed to `self.files`).
    fn target(
        &mut self,
        subdirs: &mut Vec<DirWork>,
        parent: usize,
        path: String,
        inode: InodeId,
        child: &Kind,
    ) -> Result<Target, FatError> {
        match child {
            Kind::Dir(_) => {
                let idx = self.dirs.len() + subdirs.len();
                subdirs.push(DirWork {
                    inode,
                    path,
                    parent,
                    entries: Vec::new(),
                    slots: 0,
                    first_cluster: 0,
                    clusters: 0,
                });
                Ok(Target::Dir(idx))
            }
            Kind::File(f) => {
                if f.size > u64::from(u32::MAX) {
                    return Err(FatError::FileTooLarge { path, size: f.size });
                }
                self.files.push(FilePlan { path, inode, first_cluster: 0, clusters: 0, size: f.size });
                Ok(Target::File(self.files.len() - 1))
            }
            Kind::Symlink(_) => Err(FatError::Unsupported { path, kind: "symbolic link" }),
            Kind::CharDev(_) => Err(FatError::Unsupported { path, kind: "character device" }),
            Kind::BlockDev(_) => Err(FatError::Unsupported { path, kind: "block device" }),
            Kind::Fifo => Err(FatError::Unsupported { path, kind: "FIFO" }),
            Kind::Socket => Err(FatError::Unsupported { path, kind: "socket" }),
        }
    }
}

/// Pass 1: walk directories depth-first in sorted order, name every entry, count every
/// directory's 32-byte slots.
fn walk(tree: &Tree, geometry: &Geometry, label: [u8; 11]) -> Result<Walked, FatError> {
    let root = DirWork {
        inode: InodeId::ROOT,
        path: "/".to_owned(),
        parent: 0,
        entries: Vec::new(),
        slots: 0,
        first_cluster: 0,
        clusters: 0,
    };
    let mut w = Walked { dirs: vec![root], files: Vec::new() };
    let mut dir_seen = vec![false; tree.len()];
    let mut stack: Vec<usize> = vec![0];
    while let Some(di) = stack.pop() {
        let (dir_inode, dir_path) = (w.dirs[di].inode, w.dirs[di].path.clone());
        let Some(Kind::Dir(d)) = tree.inodes().get(dir_inode.index()).map(|i| &i.kind) else {
            return Err(FatError::BadTree { path: dir_path, reason: "not a directory" });
        };
        if std::mem::replace(&mut dir_seen[dir_inode.index()], true) {
            return Err(FatError::BadTree { path: dir_path, reason: "directory reachable twice" });
        }
        let names = dir_names(d, &dir_path)?;
        let mut slots: u64 = if di == 0 { u64::from(label != NO_NAME) } else { 2 };
        let mut entries = Vec::with_capacity(d.entries.len());
        let mut subdirs = Vec::new();
        for (e, (u, short, needs_lfn)) in d.entries.iter().zip(names) {
            let path = join(&dir_path, &e.name);
            let Some(child) = tree.inodes().get(e.inode.index()) else {
                return Err(FatError::BadTree { path, reason: "dangling inode" });
            };
            let target = w.target(&mut subdirs, di, path, e.inode, &child.kind)?;
            let lfn = needs_lfn.then_some(u);
            slots += 1 + lfn.as_ref().map_or(0, |u| lfn_entry_count(u.len()) as u64);
            entries.push(EntryWork { short, lfn, inode: e.inode, target });
        }
        let max = if di == 0 && geometry.fat_type == FatType::Fat16 {
            u64::from(geometry.root_entries)
        } else {
            MAX_DIR_ENTRIES
        };
        if slots > max {
            return Err(FatError::DirectoryTooLarge { path: dir_path, entries: slots, max });
        }
        w.dirs[di].entries = entries;
        w.dirs[di].slots = slots;
        let first_new = w.dirs.len();
        w.dirs.extend(subdirs);
        // Push in reverse so that directories are visited in sorted pre-order.
        stack.extend((first_new..w.dirs.len()).rev());
    }
    Ok(w)
}

/// Pass 2: allocate clusters, directories first (root at 2, none for the fixed FAT16
/// root), then file data, every chain contiguous. Returns the clusters allocated.
fn allocate(w: &mut Walked, geometry: &Geometry, size_bytes: u64) -> Result<u32, FatError> {
    let cluster_bytes = u64::from(geometry.cluster_bytes());
    let fat16 = geometry.fat_type == FatType::Fat16;
    // Clusters per chain, in allocation order, with the chain's path.
    let dir_clusters = |i: usize, slots: u64| {
        if i == 0 && fat16 {
            0
        } else {
            (slots * DIR_ENTRY_BYTES as u64).div_ceil(cluster_bytes).max(1)
        }
    };
    let chains: Vec<(u64, &str)> = w
        .dirs
        .iter()
        .enumerate()
        .map(|(i, d)| (dir_clusters(i, d.slots), d.path.as_str()))
        .chain(w.files.iter().map(|f| (f.size.div_ceil(cluster_bytes), f.path.as_str())))
        .collect();
    let needed = chains.iter().fold(0u64, |a, &(n, _)| a.saturating_add(n));
    let available = u64::from(geometry.cluster_count);
    if needed > available {
        let mut used = 0u64;
        let (_, path) = chains
            .iter()
            .find(|&&(n, _)| {
                used += n;
                used > available
            })
            .expect("the running sum reaches `needed`, which exceeds `available`");
        return Err(FatError::DoesNotFit {
            path: (*path).to_owned(),
            needed: needed.saturating_mul(cluster_bytes),
            available: available * cluster_bytes,
            cluster_bytes: geometry.cluster_bytes(),
            size_bytes,
        });
    }
    let counts: Vec<u64> = chains.into_iter().map(|(n, _)| n).collect();
    // Every count and every first cluster is at most 2 + cluster_count ≤ 2 + 0x0FFF_FFF5.
    let fits = "at most 2 + cluster_count, which fits u32";
    let mut next: u64 = 2;
    let (dir_counts, file_counts) = counts.split_at(w.dirs.len());
    let slots = w
        .dirs
        .iter_mut()
        .map(|d| (&mut d.first_cluster, &mut d.clusters))
        .zip(dir_counts)
        .chain(w.files.iter_mut().map(|f| (&mut f.first_cluster, &mut f.clusters)).zip(file_counts));
    for ((first, clusters), &n) in slots {
        if n > 0 {
            *first = u32::try_from(next).expect(fits);
            *clusters = u32::try_from(n).expect(fits);
            next += n;
        }
    }
    Ok(u32::try_from(next - 2).expect(fits))
}

/// Pass 3: encode every directory (its whole cluster run, or the whole FAT16 root region).
fn encode_dirs(tree: &Tree, geometry: &Geometry, label: [u8; 11], w: &Walked) -> Vec<DirPlan> {
    let (dirs, files) = (&w.dirs, &w.files);
    let cluster_bytes = u64::from(geometry.cluster_bytes());
    let mut dir_plans = Vec::with_capacity(dirs.len());
    for (i, d) in dirs.iter().enumerate() {
        let len = if i == 0 && geometry.fat_type == FatType::Fat16 {
            u64::from(geometry.root_entries) * DIR_ENTRY_BYTES as u64
        } else {
            u64::from(d.clusters) * cluster_bytes
        };
        // Slots are checked against MAX_DIR_ENTRIES (2 MiB) in pass 1.
        let len = usize::try_from(len).expect("a directory is at most 2 MiB plus one cluster");
        let mut bytes = Vec::with_capacity(len);
        let meta_time = |id: InodeId| FatTime::from_timestamp(tree.inode(id).meta.mtime);
        let own_time = meta_time(d.inode);
        if i == 0 {
            if label != NO_NAME {
                let e = ShortEntry { name: label, attr: ATTR_VOLUME_ID, first_cluster: 0, size: 0, time: own_time };
                bytes.extend_from_slice(&e.encode());
            }
        } else {
            let dot = ShortEntry {
                name: *b".          ",
                attr: ATTR_DIRECTORY,
                first_cluster: d.first_cluster,
                size: 0,
                time: own_time,
            };
            // `..` of a first-level directory points at cluster 0, not the FAT32 root cluster.
            let parent_cluster = if d.parent == 0 { 0 } else { dirs[d.parent].first_cluster };
            let dotdot = ShortEntry { name: *b"..         ", first_cluster: parent_cluster, ..dot };
            bytes.extend_from_slice(&dot.encode());
            bytes.extend_from_slice(&dotdot.encode());
        }
        for e in &d.entries {
            if let Some(u) = &e.lfn {
                for raw in lfn_entries(u, lfn_checksum(&e.short)) {
                    bytes.extend_from_slice(&raw);
                }
            }
            let (attr, first_cluster, size) = match e.target {
                Target::Dir(j) => (ATTR_DIRECTORY, dirs[j].first_cluster, 0),
                Target::File(k) => {
                    let size = u32::try_from(files[k].size).expect("larger files are FileTooLarge in pass 1");
                    (ATTR_ARCHIVE, files[k].first_cluster, size)
                }
            };
            let se = ShortEntry { name: e.short, attr, first_cluster, size, time: meta_time(e.inode) };
            bytes.extend_from_slice(&se.encode());
        }
        debug_assert_eq!(bytes.len() as u64, d.slots * DIR_ENTRY_BYTES as u64);
        bytes.resize(len, 0);
        dir_plans.push(DirPlan { path: d.path.clone(), first_cluster: d.first_cluster, clusters: d.clusters, bytes });
    }
    dir_plans
}

/// Plan a FAT volume holding `tree`.
///
/// Pure and deterministic: the same tree and options give the same layout.
///
/// # Errors
/// The volume size does not suit the FAT type; a name FAT cannot hold or two names equal up
/// to case; a symlink, device, FIFO or socket; a file of 4 GiB or more; a directory with too
/// many entries; content that does not fit ([`FatError::DoesNotFit`]). Every error names
/// the path.
pub fn plan(tree: &Tree, opts: &FatOptions) -> Result<FatLayout, FatError> {
    let geometry = Geometry::compute(opts.size_bytes, opts.fat_type)?;
    let label = label_bytes(opts.label.as_deref())?;
    let mut w = walk(tree, &geometry, label)?;
    let allocated = allocate(&mut w, &geometry, opts.size_bytes)?;
    let dirs = encode_dirs(tree, &geometry, label, &w);
    Ok(FatLayout {
        geometry,
        hidden_sectors: opts.hidden_sectors,
        volume_id: opts.volume_id,
        label,
        dirs,
        files: w.files,
        allocated,
    })
}
