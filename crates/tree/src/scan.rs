//! Scanning a host directory into a [`Tree`].
//!
//! Entries are read, then sorted bytewise, so the result never depends on `readdir` order.
//! Only `lstat` fields that are content are used: type, permission bits, owner (optionally),
//! size, `rdev`, mtime with nanoseconds. atime and ctime are never read. Holes are found with
//! `SEEK_DATA`/`SEEK_HOLE` for files whose allocated blocks are fewer than their size.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::model::{DataRun, DirData, FileData, InodeId, Kind, Meta, Source, Timestamp, Tree, Xattr};
use crate::TreeError;

/// How to turn host metadata into tree metadata.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Keep host uid/gid; otherwise everything is root:root.
    pub keep_owner: bool,
    /// Clamp mtimes newer than this (Unix seconds) to it, as `SOURCE_DATE_EPOCH` asks.
    pub source_date_epoch: Option<i64>,
    /// Skip extended attributes.
    pub no_xattrs: bool,
    /// Apply the Nix store's canonical metadata (nix-store.md §5) instead of the host's:
    /// directories and files with the owner-execute bit 0555, other files 0444, symlinks
    /// 0777, mtime 1, root:root, no extended attributes. Overrides the options above.
    pub store_canonical: bool,
}

/// Scan `dir` (which must be a directory) into a new tree.
///
/// # Errors
/// The directory or anything under it cannot be read; names the path.
pub fn scan(dir: &Path, opts: &ScanOptions) -> Result<Tree, TreeError> {
    let md = fs::symlink_metadata(dir).map_err(|e| TreeError::io(dir, e))?;
    if !md.is_dir() {
        return Err(TreeError::NotADirectory { path: dir.display().to_string() });
    }
    let root_meta = meta_of(dir, &md, opts)?;
    let mut tree = Tree::new(root_meta);
    scan_children(&mut tree, InodeId::ROOT, dir, opts)?;
    Ok(tree)
}

/// Scan host directory `host` into the existing directory `dir` of `tree` (its entries are
/// merged; a name that already exists is an error).
///
/// # Errors
/// As [`scan`], or a name collision.
pub fn scan_into(tree: &mut Tree, dir: InodeId, host: &Path, opts: &ScanOptions) -> Result<(), TreeError> {
    scan_children(tree, dir, host, opts)
}

/// Add the host path `host` (a directory, file, symlink or special file) to directory `dir`
/// of `tree` as `name`, with everything below it when it is a directory. Returns the new
/// inode.
///
/// # Errors
/// As [`scan`], or `name` already exists in `dir`.
pub fn scan_entry_into(
    tree: &mut Tree,
    dir: InodeId,
    name: &[u8],
    host: &Path,
    opts: &ScanOptions,
) -> Result<InodeId, TreeError> {
    let md = fs::symlink_metadata(host).map_err(|e| TreeError::io(host, e))?;
    let meta = meta_of(host, &md, opts)?;
    let kind = kind_of(host, &md)?;
    let is_dir = matches!(kind, Kind::Dir(_));
    let id = tree.add(dir, name, kind, meta)?;
    if is_dir {
        scan_children(tree, id, host, opts)?;
    }
    Ok(id)
}

fn kind_of(path: &Path, md: &fs::Metadata) -> Result<Kind, TreeError> {
    let ft = md.file_type();
    Ok(if ft.is_dir() {
        Kind::Dir(DirData { parent: InodeId::ROOT, entries: Vec::new() })
    } else if ft.is_file() {
        let size = md.len();
        let runs = data_runs(path, size, md)?;
        Kind::File(FileData { size, source: Source::Host(path.to_path_buf()), runs })
    } else if ft.is_symlink() {
        let t = fs::read_link(path).map_err(|e| TreeError::io(path, e))?;
        Kind::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::CharDev(md.rdev())
    } else if ft.is_block_device() {
        Kind::BlockDev(md.rdev())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        return Err(TreeError::UnsupportedType { path: path.display().to_string() });
    })
}

fn meta_of(path: &Path, md: &fs::Metadata, opts: &ScanOptions) -> Result<Meta, TreeError> {
    if opts.store_canonical {
        return Ok(store_canonical_meta(md));
    }
    let perm = u16::try_from(md.mode() & 0o7777).unwrap_or(0);
    let (uid, gid) = if opts.keep_owner { (md.uid(), md.gid()) } else { (0, 0) };
    let nsec = u32::try_from(md.mtime_nsec()).unwrap_or(0).min(999_999_999);
    let mut mtime = Timestamp { sec: md.mtime(), nsec };
    if let Some(sde) = opts.source_date_epoch {
        if mtime > Timestamp::from_secs(sde) {
            mtime = Timestamp::from_secs(sde);
        }
    }
    let xattrs = if opts.no_xattrs { Vec::new() } else { read_xattrs(path)? };
    Ok(Meta { perm, uid, gid, mtime, xattrs })
}

/// Nix's `canonicaliseTimestampAndPermissions` (plus root ownership and no xattrs).
fn store_canonical_meta(md: &fs::Metadata) -> Meta {
    let ft = md.file_type();
    let perm = if ft.is_symlink() {
        0o777
    } else if ft.is_dir() || md.mode() & 0o100 != 0 {
        0o555
    } else {
        0o444
    };
    Meta::new(perm).with_mtime(Timestamp::from_secs(1))
}

fn read_xattrs(path: &Path) -> Result<Vec<Xattr>, TreeError> {
    use rustix::io::Errno;
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need: usize =
                    rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(|e| TreeError::io(path, e.into()))?;
                buf.resize(need.max(buf.len().saturating_mul(2)), 0);
            }
            Err(Errno::NOTSUP | Errno::PERM) => return Ok(Vec::new()),
            Err(e) => return Err(TreeError::io(path, e.into())),
        }
    };
    let mut out = Vec::new();
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut val = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, name, &mut val[..]) {
                Ok(len) => break len,
                Err(Errno::RANGE) => {
                    let need: usize = rustix::fs::lgetxattr(path, name, &mut [0u8; 0][..])
                        .map_err(|e| TreeError::io(path, e.into()))?;
                    val.resize(need.max(val.len().saturating_mul(2)), 0);
                }
                Err(Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(TreeError::io(path, e.into())),
            }
        };
        if len == usize::MAX {
            continue;
        }
        val.truncate(len);
        out.push(Xattr { name: name.to_vec(), value: val });
    }
    out.sort();
    Ok(out)
}

/// Find data runs of a possibly sparse file.
fn data_runs(path: &Path, size: u64, md: &fs::Metadata) -> Result<Vec<DataRun>, TreeError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    // Fully allocated files (the common case) cost no extra syscalls.
    if md.blocks().saturating_mul(512) >= size {
        return Ok(vec![DataRun { offset: 0, len: size }]);
    }
    use rustix::fs::SeekFrom;
    use rustix::io::Errno;
    let f = fs::File::open(path).map_err(|e| TreeError::io(path, e))?;
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            // No SEEK_DATA support: treat as dense.
            Err(Errno::INVAL) => return Ok(vec![DataRun { offset: 0, len: size }]),
            Err(e) => return Err(TreeError::io(path, e.into())),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(&f, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(e) => return Err(TreeError::io(path, e.into())),
        };
        if hole <= data {
            break;
        }
        runs.push(DataRun { offset: data, len: hole - data });
        pos = hole;
    }
    Ok(runs)
}

/// One host entry, read in parallel (lstat, xattrs, holes, symlink target) and placed into
/// the tree afterwards, serially and in the order of the serial walk, so the tree (inode ids,
/// hard-link choice) is the same whatever the thread count.
struct Scanned {
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    nlink: u64,
    /// Metadata and kind; `Err(path, lstat)` for a non-directory with more links, read only
    /// when it turns out to be the first name of its inode (later names cost no more syscalls).
    read: Result<(Meta, Kind), (PathBuf, fs::Metadata)>,
    /// A directory's entries, sorted by name.
    children: Vec<Scanned>,
}

/// Read `host`'s entries, sorted bytewise, and everything below them, in parallel (rayon's
/// current pool). The first error in entry order wins.
fn read_tree(host: &Path, opts: &ScanOptions) -> Result<Vec<Scanned>, TreeError> {
    use rayon::prelude::*;
    let rd = fs::read_dir(host).map_err(|e| TreeError::io(host, e))?;
    let mut names: Vec<Vec<u8>> = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| TreeError::io(host, e))?;
        names.push(ent.file_name().as_bytes().to_vec());
    }
    names.sort_unstable();
    let read: Vec<Result<Scanned, TreeError>> = names
        .into_par_iter()
        .map(|name| {
            let path = host.join(std::ffi::OsStr::from_bytes(&name));
            let md = fs::symlink_metadata(&path).map_err(|e| TreeError::io(&path, e))?;
            let is_dir = md.file_type().is_dir();
            let read = if !is_dir && md.nlink() > 1 {
                Err((path.clone(), md.clone()))
            } else {
                Ok((meta_of(&path, &md, opts)?, kind_of(&path, &md)?))
            };
            let children = if is_dir { read_tree(&path, opts)? } else { Vec::new() };
            Ok(Scanned { name, dev: md.dev(), ino: md.ino(), nlink: md.nlink(), read, children })
        })
        .collect();
    read.into_iter().collect()
}

fn scan_children(tree: &mut Tree, dir: InodeId, host: &Path, opts: &ScanOptions) -> Result<(), TreeError> {
    let entries = read_tree(host, opts)?;
    let mut links: HashMap<(u64, u64), InodeId> = HashMap::new();
    let mut stack = vec![(dir, entries)];
    while let Some((dir, entries)) = stack.pop() {
        let merging = tree.inode(dir).as_dir().is_some_and(|d| !d.entries.is_empty());
        let mut subdirs = Vec::new();
        for e in entries {
            if e.read.is_err() {
                if let Some(&target) = links.get(&(e.dev, e.ino)) {
                    if merging {
                        tree.add_hardlink(dir, &e.name, target)?;
                    } else {
                        tree.add_hardlink_sorted(dir, e.name, target)?;
                    }
                    continue;
                }
            }
            let (meta, kind) = match e.read {
                Ok(r) => r,
                Err((path, md)) => (meta_of(&path, &md, opts)?, kind_of(&path, &md)?),
            };
            let kind = match kind {
                Kind::Dir(_) => Kind::Dir(DirData { parent: dir, entries: Vec::new() }),
                k => k,
            };
            let is_dir = matches!(kind, Kind::Dir(_));
            let id =
                if merging { tree.add(dir, &e.name, kind, meta)? } else { tree.add_sorted(dir, e.name, kind, meta)? };
            if is_dir {
                subdirs.push((id, e.children));
            } else if e.nlink > 1 {
                links.insert((e.dev, e.ino), id);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
