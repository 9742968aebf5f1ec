//! The planner: geometry, names, cluster allocation and the encoded directories, decided
//! before a single byte is written.

use std::collections::BTreeMap;

use mkdisk_tree::{InodeId, Kind, Tree};

use crate::dir_entry::{
    lfn_checksum, lfn_entries, lfn_entry_count, FatTime, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID,
    DIR_ENTRY_BYTES,
};
use crate::fat_table::{self, Chain};
use crate::geometry::Geometry;
use crate::names::{assign_short_names, long_name_units};
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
        let len = usize::try_from(self.geometry.fat_sectors).unwrap_or(0) * 512;
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

/// Plan a FAT volume holding `tree`.
///
/// Pure and deterministic: the same tree and options give the same layout.
///
/// # Errors
/// The volume size does not suit the FAT type; a name FAT cannot hold or two names equal up
/// to case; a symlink, device, FIFO or socket; a file of 4 GiB or more; a directory with too
/// many entries; content that does not fit. Every error names the path.
pub fn plan(tree: &Tree, opts: &FatOptions) -> Result<FatLayout, FatError> {
    let geometry = Geometry::compute(opts.size_bytes, opts.fat_type)?;
    let label = label_bytes(opts.label.as_deref())?;
    let cluster_bytes = u64::from(geometry.cluster_bytes());

    // Pass 1: walk directories depth-first in sorted order, name every entry.
    let mut dirs: Vec<DirWork> = vec![DirWork {
        inode: InodeId::ROOT,
        path: "/".to_owned(),
        parent: 0,
        entries: Vec::new(),
        slots: 0,
        first_cluster: 0,
        clusters: 0,
    }];
    let mut files: Vec<FilePlan> = Vec::new();
    let mut dir_seen = vec![false; tree.len()];
    let mut stack: Vec<usize> = vec![0];
    while let Some(di) = stack.pop() {
        let (dir_inode, dir_path) = (dirs[di].inode, dirs[di].path.clone());
        let Some(Kind::Dir(d)) = tree.inodes().get(dir_inode.index()).map(|i| &i.kind) else {
            return Err(FatError::BadTree { path: dir_path, reason: "not a directory" });
        };
        if std::mem::replace(&mut dir_seen[dir_inode.index()], true) {
            return Err(FatError::BadTree { path: dir_path, reason: "directory reachable twice" });
        }
        let mut units = Vec::with_capacity(d.entries.len());
        let mut upper: BTreeMap<String, usize> = BTreeMap::new();
        for (i, e) in d.entries.iter().enumerate() {
            let path = join(&dir_path, &e.name);
            let u = long_name_units(&e.name).map_err(|reason| FatError::BadName { path: path.clone(), reason })?;
            // Checked above: valid UTF-8.
            let s = String::from_utf8_lossy(&e.name).to_uppercase();
            if let Some(&j) = upper.get(&s) {
                return Err(FatError::CaseCollision { path, other: join(&dir_path, &d.entries[j].name) });
            }
            upper.insert(s, i);
            units.push(u);
        }
        let names: Vec<String> = d.entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let shorts =
            assign_short_names(&refs).map_err(|reason| FatError::BadName { path: dir_path.clone(), reason })?;

        let mut slots: u64 = if di == 0 { u64::from(label != NO_NAME) } else { 2 };
        let mut entries = Vec::with_capacity(d.entries.len());
        let mut subdirs = Vec::new();
        for ((e, u), (short, needs_lfn)) in d.entries.iter().zip(units).zip(shorts) {
            let path = join(&dir_path, &e.name);
            let Some(child) = tree.inodes().get(e.inode.index()) else {
                return Err(FatError::BadTree { path, reason: "dangling inode" });
            };
            let target = match &child.kind {
                Kind::Dir(_) => {
                    let idx = dirs.len() + subdirs.len();
                    subdirs.push(DirWork {
                        inode: e.inode,
                        path,
                        parent: di,
                        entries: Vec::new(),
                        slots: 0,
                        first_cluster: 0,
                        clusters: 0,
                    });
                    Target::Dir(idx)
                }
                Kind::File(f) => {
                    if f.size > u64::from(u32::MAX) {
                        return Err(FatError::FileTooLarge { path, size: f.size });
                    }
                    files.push(FilePlan { path, inode: e.inode, first_cluster: 0, clusters: 0, size: f.size });
                    Target::File(files.len() - 1)
                }
                Kind::Symlink(_) => return Err(FatError::Unsupported { path, kind: "symbolic link" }),
                Kind::CharDev(_) => return Err(FatError::Unsupported { path, kind: "character device" }),
                Kind::BlockDev(_) => return Err(FatError::Unsupported { path, kind: "block device" }),
                Kind::Fifo => return Err(FatError::Unsupported { path, kind: "FIFO" }),
                Kind::Socket => return Err(FatError::Unsupported { path, kind: "socket" }),
            };
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
        dirs[di].entries = entries;
        dirs[di].slots = slots;
        let first_new = dirs.len();
        dirs.extend(subdirs);
        // Push in reverse so that directories are visited in sorted pre-order.
        stack.extend((first_new..dirs.len()).rev());
    }

    // Pass 2: allocate clusters, directories first (root at 2), then file data.
    let end = 2 + u64::from(geometry.cluster_count);
    let mut next: u64 = 2;
    let mut alloc = |n: u64, path: &str| -> Result<u32, FatError> {
        if next + n > end {
            return Err(FatError::NoSpace {
                path: path.to_owned(),
                needed: n,
                free: end - next,
                cluster_bytes: geometry.cluster_bytes(),
                size_bytes: opts.size_bytes,
            });
        }
        let first = u32::try_from(next).map_err(|_| FatError::InvalidLayout { reason: "cluster overflow".into() })?;
        next += n;
        Ok(first)
    };
    for (i, d) in dirs.iter_mut().enumerate() {
        if i == 0 && geometry.fat_type == FatType::Fat16 {
            continue;
        }
        let n = (d.slots * DIR_ENTRY_BYTES as u64).div_ceil(cluster_bytes).max(1);
        d.first_cluster = alloc(n, &d.path)?;
        d.clusters = u32::try_from(n).unwrap_or(u32::MAX);
    }
    for f in &mut files {
        let n = f.size.div_ceil(cluster_bytes);
        if n > 0 {
            f.first_cluster = alloc(n, &f.path)?;
            f.clusters = u32::try_from(n).unwrap_or(u32::MAX);
        }
    }
    let allocated =
        u32::try_from(next - 2).map_err(|_| FatError::InvalidLayout { reason: "cluster overflow".into() })?;

    // Pass 3: encode every directory.
    let mut dir_plans = Vec::with_capacity(dirs.len());
    for (i, d) in dirs.iter().enumerate() {
        let len = if i == 0 && geometry.fat_type == FatType::Fat16 {
            u64::from(geometry.root_entries) * DIR_ENTRY_BYTES as u64
        } else {
            u64::from(d.clusters) * cluster_bytes
        };
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
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
                Target::File(k) => (ATTR_ARCHIVE, files[k].first_cluster, u32::try_from(files[k].size).unwrap_or(0)),
            };
            let se = ShortEntry { name: e.short, attr, first_cluster, size, time: meta_time(e.inode) };
            bytes.extend_from_slice(&se.encode());
        }
        debug_assert_eq!(bytes.len() as u64, d.slots * DIR_ENTRY_BYTES as u64);
        bytes.resize(usize::try_from(len).unwrap_or(0), 0);
        dir_plans.push(DirPlan { path: d.path.clone(), first_cluster: d.first_cluster, clusters: d.clusters, bytes });
    }

    Ok(FatLayout {
        geometry,
        hidden_sectors: opts.hidden_sectors,
        volume_id: opts.volume_id,
        label,
        dirs: dir_plans,
        files,
        allocated,
    })
}
