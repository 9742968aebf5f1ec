//! Scanning a host directory into a [`Tree`].
//!
//! Entries are read, then sorted bytewise, so the result never depends on `readdir` order.
//! Only `lstat` fields that are content are used: type, permission bits, owner (optionally),
//! size, `rdev`, mtime with nanoseconds. atime and ctime are never read. Holes are found with
//! `SEEK_DATA`/`SEEK_HOLE` for files whose allocated blocks are fewer than their size; then the
//! data of every regular file is read once (in parallel across files, through one bounded
//! buffer per file) and each [`FileData::HOLE_BLOCK`]-aligned block that is all zero becomes a
//! hole too, so a file's data runs do not depend on how the host happened to allocate it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
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
    let perm = u16::try_from(md.mode() & 0o7777).expect("masked to 12 bits");
    let (uid, gid) = if opts.keep_owner { (md.uid(), md.gid()) } else { (0, 0) };
    let nsec = u32::try_from(md.mtime_nsec()).ok().filter(|&n| n < 1_000_000_000).ok_or_else(|| {
        let msg = format!("modification time nanoseconds {} out of range", md.mtime_nsec());
        TreeError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, msg))
    })?;
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

/// The most file data read at once while looking for zero blocks (per file being scanned).
const READ_CHUNK: u64 = 1 << 20;

/// Data runs of a regular file of `size` bytes: its allocated ranges (`SEEK_DATA`/`SEEK_HOLE`
/// when it is sparse), less every [`FileData::HOLE_BLOCK`]-aligned block that reads as zero.
fn data_runs(path: &Path, size: u64, md: &fs::Metadata) -> Result<Vec<DataRun>, TreeError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let f = fs::File::open(path).map_err(|e| TreeError::io(path, e))?;
    let allocated = allocated_runs(&f, path, size, md)?;
    split_zero_blocks(&allocated, size, |buf, offset| f.read_exact_at(buf, offset)).map_err(|e| TreeError::io(path, e))
}

/// The allocated ranges of the open file `f`: one run `0..size` unless it has fewer blocks
/// than its size (fully allocated files, the common case, cost no extra syscalls).
fn allocated_runs(f: &fs::File, path: &Path, size: u64, md: &fs::Metadata) -> Result<Vec<DataRun>, TreeError> {
    if md.blocks().saturating_mul(512) >= size {
        return Ok(vec![DataRun { offset: 0, len: size }]);
    }
    use rustix::fs::SeekFrom;
    use rustix::io::Errno;
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            // No SEEK_DATA support: treat as dense.
            Err(Errno::INVAL) => return Ok(vec![DataRun { offset: 0, len: size }]),
            Err(e) => return Err(TreeError::io(path, e.into())),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(f, SeekFrom::Hole(data)) {
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

/// The data runs of a file of `size` bytes whose allocated ranges are `runs` (sorted,
/// non-overlapping, inside `0..size`; the bytes outside them read as zero): exactly its
/// [`FileData::HOLE_BLOCK`]-aligned blocks that hold a non-zero byte (the last one up to
/// `size`), adjacent blocks merged into one run. So the result does not depend on how the host
/// allocated the file, only on its bytes.
///
/// Only the bytes inside `runs` are read, in whole-block chunks of at most [`READ_CHUNK`]
/// bytes through `read_exact_at(buf, offset)`, which must fill `buf` (a file that shrank is an
/// error, not a shorter file). A data block that `runs` cover only in part (a host filesystem
/// with smaller blocks) is kept whole: the rest of it is a host hole and reads as zero.
fn split_zero_blocks(
    runs: &[DataRun],
    size: u64,
    mut read_exact_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> std::io::Result<Vec<DataRun>> {
    const BS: u64 = FileData::HOLE_BLOCK;
    let mut out: Vec<DataRun> = Vec::with_capacity(runs.len());
    // At least one block, a whole number of them, and no more than the file needs.
    let cap = size.div_ceil(BS).saturating_mul(BS).clamp(BS, READ_CHUNK);
    let mut buf = vec![0u8; usize::try_from(cap).expect("at most READ_CHUNK")];
    for r in runs {
        let end = r.end().min(size);
        let mut pos = r.offset;
        while pos < end {
            // Chunks end on a block boundary (or the run's end), so no block spans two reads.
            let chunk_end = (pos / BS * BS).saturating_add(cap).min(end);
            let n = usize::try_from(chunk_end - pos).expect("at most cap, the buffer's length");
            let chunk = &mut buf[..n];
            read_exact_at(chunk, pos)?;
            let mut at = pos;
            while at < chunk_end {
                let block_end = ((at / BS + 1) * BS).min(chunk_end);
                let lo = usize::try_from(at - pos).expect("inside the chunk");
                let hi = usize::try_from(block_end - pos).expect("inside the chunk");
                if !is_zero(&chunk[lo..hi]) {
                    let (s, e) = (at / BS * BS, (at / BS * BS).saturating_add(BS).min(size));
                    match out.last_mut() {
                        Some(last) if last.end() >= s => last.len = e.max(last.end()) - last.offset,
                        _ => out.push(DataRun { offset: s, len: e - s }),
                    }
                }
                at = block_end;
            }
            pos = chunk_end;
        }
    }
    Ok(out)
}

/// Whether every byte of `b` is zero (in 64-byte steps the compiler can vectorise).
fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// One host entry, read in parallel (lstat, xattrs, holes, symlink target) and placed into
/// the tree afterwards, serially and in the order of the serial walk, so the tree (inode ids,
/// hard-link choice) is the same whatever the thread count.
struct Scanned {
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    nlink: u64,
    /// Metadata and kind; `Err(path, lstat)` for a non-directory with more links, read (by
    /// [`read_first_links`]) only when it turns out to be the first name of its inode (later
    /// names cost no more syscalls and no more reads of the data).
    read: Deferred,
    /// A directory's entries, sorted by name.
    children: Vec<Scanned>,
}

/// An entry's metadata and kind, or the path and `lstat` to read them from later.
type Deferred = Result<(Meta, Kind), (PathBuf, fs::Metadata)>;

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

/// Read, in parallel, the metadata and kind (data runs included) of the first name of every
/// multiply-linked non-directory that [`read_tree`] deferred: first in the order in which
/// [`scan_children`] places entries (a directory's entries, then each subdirectory's, in
/// order), so the same name owns the inode as when it was read there. Later names stay
/// deferred and become hard links. The first error in that order wins.
fn read_first_links(entries: &mut [Scanned], opts: &ScanOptions) -> Result<(), TreeError> {
    use rayon::prelude::*;
    fn collect<'a>(entries: &'a mut [Scanned], seen: &mut HashSet<(u64, u64)>, out: &mut Vec<&'a mut Deferred>) {
        let mut subdirs = Vec::new();
        for e in entries {
            let Scanned { dev, ino, read, children, .. } = e;
            if read.is_err() {
                if seen.insert((*dev, *ino)) {
                    out.push(read);
                }
            } else if !children.is_empty() {
                subdirs.push(children);
            }
        }
        for c in subdirs {
            collect(c, seen, out);
        }
    }
    let mut firsts = Vec::new();
    collect(entries, &mut HashSet::new(), &mut firsts);
    let done: Vec<Result<(), TreeError>> = firsts
        .into_par_iter()
        .map(|read| {
            let Err((path, md)) = &*read else { return Ok(()) };
            let got = (meta_of(path, md, opts)?, kind_of(path, md)?);
            *read = Ok(got);
            Ok(())
        })
        .collect();
    done.into_iter().collect()
}

fn scan_children(tree: &mut Tree, dir: InodeId, host: &Path, opts: &ScanOptions) -> Result<(), TreeError> {
    let mut entries = read_tree(host, opts)?;
    read_first_links(&mut entries, opts)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BS: u64 = FileData::HOLE_BLOCK;

    /// `start..end` as a slice range.
    fn r(start: u64, end: u64) -> std::ops::Range<usize> {
        usize::try_from(start).unwrap()..usize::try_from(end).unwrap()
    }

    /// `split_zero_blocks` over in-memory content, where `runs` are the host's data runs
    /// (the content must be zero outside them).
    fn split(content: &[u8], runs: &[DataRun]) -> std::io::Result<Vec<DataRun>> {
        split_zero_blocks(runs, content.len() as u64, |buf, off| {
            let off = usize::try_from(off).unwrap();
            let src = content.get(off..off + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn pairs(runs: &[DataRun]) -> Vec<(u64, u64)> {
        runs.iter().map(|r| (r.offset, r.end())).collect()
    }

    #[test]
    fn read_errors_and_short_files_are_errors() {
        let runs = [DataRun { offset: 0, len: 3 * BS }];
        let short = vec![1u8; r(0, 2 * BS).end];
        assert!(split_zero_blocks(&runs, 3 * BS, |buf, off| {
            let off = usize::try_from(off).unwrap();
            let src = short.get(off..off + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        })
        .is_err());
        let e = split_zero_blocks(&runs, 3 * BS, |_, _| Err(std::io::Error::other("boom"))).unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }

    #[test]
    fn runs_not_aligned_to_blocks() {
        // Runs of a filesystem with 1 KiB blocks: [1 KiB, 3 KiB) zero, [3 KiB, 5 KiB) data in
        // block 1 only.
        let mut c = vec![0u8; r(0, 3 * BS).end];
        c[4096] = 7;
        let runs = [DataRun { offset: 1024, len: 2048 }, DataRun { offset: 3072, len: 2048 }];
        assert_eq!(pairs(&split(&c, &runs).unwrap()), [(4096, 8192)]);
        // Block 0 holds data in its first run: the whole block is data, merged with block 1.
        c[3000] = 1;
        assert_eq!(pairs(&split(&c, &runs).unwrap()), [(0, 8192)]);
        // Data only in the second run's part of block 0: the same.
        c[3000] = 0;
        c[3500] = 1;
        assert_eq!(pairs(&split(&c, &runs).unwrap()), [(0, 8192)]);
    }

    proptest! {
        /// For any content (stretches of zeros and data, unaligned) and any host runs that
        /// cover its data, the runs are exactly the aligned blocks with a non-zero byte, merged.
        #[test]
        fn every_zero_block_is_a_hole(
            pieces in proptest::collection::vec((0u8..4, 1u64..3 * BS), 0..24),
            hole_mask in proptest::collection::vec(any::<bool>(), 0..24),
        ) {
            let mut content = Vec::new();
            for (kind, len) in &pieces {
                let len = usize::try_from(*len).unwrap();
                match kind {
                    0 | 1 => content.extend(std::iter::repeat_n(0u8, len)),
                    2 => content.extend(std::iter::repeat_n(0xa5u8, len)),
                    _ => content.extend((0..len).map(|i| u8::from(i % 1000 == 999))),
                }
            }
            let size = content.len() as u64;
            // Host runs: the blocks not picked as host holes (zeroed there).
            let mut host: Vec<DataRun> = Vec::new();
            for b in 0..size.div_ceil(BS) {
                let (s, e) = (b * BS, ((b + 1) * BS).min(size));
                if hole_mask.get(usize::try_from(b).unwrap()).copied().unwrap_or(false) {
                    content[r(s, e)].fill(0);
                    continue;
                }
                match host.last_mut() {
                    Some(l) if l.end() == s => l.len += e - s,
                    _ => host.push(DataRun { offset: s, len: e - s }),
                }
            }
            let out = split(&content, &host).unwrap();
            let mut want: Vec<(u64, u64)> = Vec::new();
            for b in 0..size.div_ceil(BS) {
                let (s, e) = (b * BS, ((b + 1) * BS).min(size));
                if content[r(s, e)].iter().any(|&x| x != 0) {
                    match want.last_mut() {
                        Some(l) if l.1 == s => l.1 = e,
                        _ => want.push((s, e)),
                    }
                }
            }
            prop_assert_eq!(pairs(&out), want);
            // Unaligned host runs (a filesystem with 1 KiB blocks) give the same result.
            let fine: Vec<DataRun> = host
                .iter()
                .flat_map(|r| (r.offset..r.end()).step_by(1024).map(move |o| (o, (o + 1024).min(r.end()))))
                .filter(|&(s, e)| content[r(s, e)].iter().any(|&x| x != 0) || s % 3072 == 0)
                .map(|(s, e)| DataRun { offset: s, len: e - s })
                .collect();
            prop_assert_eq!(split(&content, &fine).unwrap(), out);
        }
    }
}
