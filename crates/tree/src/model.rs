//! The in-memory source tree: inodes, directory entries, metadata and data sources.
//!
//! A [`Tree`] is an arena of [`Inode`]s. Directories hold their entries sorted bytewise by
//! name; a hard link is simply a second entry naming the same [`InodeId`]. Inode 0 is the
//! root directory. Nothing in a tree depends on the order in which the host returned
//! directory entries, so every writer that walks it in entry order is deterministic.

use std::path::PathBuf;
use std::sync::Arc;

use crate::TreeError;

// Inode ids and counts are `u32`; indexes into the inode arena are `usize`.
const _: () = assert!(usize::BITS >= 32, "mkdisk needs at least 32-bit pointers");

/// Index of an inode in a [`Tree`]; `InodeId::ROOT` is the root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u32);

impl InodeId {
    /// The root directory of every tree.
    pub const ROOT: InodeId = InodeId(0);

    /// The index as `usize`, for slices.
    #[must_use]
    pub fn index(self) -> usize {
        usize::try_from(self.0).expect("u32 fits usize (asserted at compile time)")
    }
}

/// A modification time: seconds since the Unix epoch and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (may be negative).
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

impl Timestamp {
    /// A whole-second timestamp.
    #[must_use]
    pub const fn from_secs(sec: i64) -> Self {
        Timestamp { sec, nsec: 0 }
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`); used for FAT dates and boot-entry version strings.
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One extended attribute (`user.foo`, `security.capability`, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    /// Full name including the namespace prefix, without a NUL.
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
}

/// Metadata common to every inode kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask); no file-type bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (also used for ctime/atime/crtime by the writers).
    pub mtime: Timestamp,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    /// Metadata with the given permission bits, root:root, time 0, no xattrs.
    #[must_use]
    pub fn new(perm: u16) -> Self {
        Meta { perm: perm & 0o7777, uid: 0, gid: 0, mtime: Timestamp::default(), xattrs: Vec::new() }
    }

    /// Builder-style mtime setter.
    #[must_use]
    pub fn with_mtime(mut self, mtime: Timestamp) -> Self {
        self.mtime = mtime;
        self
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file on the host, read at write time (never copied while planning).
    Host(PathBuf),
    /// Bytes generated in memory (boot entries, databases, tests).
    Bytes(Arc<[u8]>),
}

/// A run of bytes that holds data; everything in a file outside its data runs is a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataRun {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
}

impl DataRun {
    /// One past the last byte of the run.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// A regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    /// Logical size in bytes.
    pub size: u64,
    /// Where the bytes come from.
    pub source: Source,
    /// Data runs, sorted, non-overlapping, inside `0..size`. A file without holes has one run
    /// `0..size` (or none when empty). Bytes outside the runs read as zero, and the source
    /// must agree: writers copy whole blocks around a run, so the source's bytes in the rest
    /// of a run's first and last block are copied as they are (host files' holes read as zero;
    /// an in-memory source must hold zeros there).
    ///
    /// A scanned host file's runs are exactly its [`FileData::HOLE_BLOCK`]-aligned blocks that
    /// hold a non-zero byte (the last, partial block up to `size`), adjacent ones merged into
    /// one run, whatever the host's allocation: every all-zero block (the last one: zero up to
    /// the end of the file) is a hole, which writers store as a hole, as `mke2fs -d` does; an
    /// all-zero file has no runs. Zero bytes that do not fill an aligned block stay data.
    pub runs: Vec<DataRun>,
}

impl FileData {
    /// The block size, in bytes, at which the scanner turns whole zero blocks of a host file
    /// into holes: blocks at file offsets that are multiples of it.
    ///
    /// 4096 is the block size mkdisk writes ext4 with (`mkdisk_ext4::BLOCK_SIZE`, never 1024)
    /// and btrfs's sector size, the unit in which both map file data: a zero run that is
    /// aligned to it and as long becomes a hole there (no extent, no block), and whole zero
    /// 4 KiB blocks are also what `dd conv=sparse bs=4096` skips when an image is written to a
    /// disk, so storing them as holes keeps such copies correct. A smaller unit would split
    /// runs that neither writer can store as holes anyway; FAT has no holes and writes the
    /// zeros wherever the runs leave a gap.
    pub const HOLE_BLOCK: u64 = 4096;

    /// A file whose bytes are all data (no holes).
    #[must_use]
    pub fn dense(size: u64, source: Source) -> Self {
        let runs = if size == 0 { Vec::new() } else { vec![DataRun { offset: 0, len: size }] };
        FileData { size, source, runs }
    }

    /// A file from in-memory bytes.
    #[must_use]
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes: Arc<[u8]> = bytes.into();
        let size = u64::try_from(bytes.len()).expect("usize fits u64");
        FileData::dense(size, Source::Bytes(bytes))
    }

    /// Bytes of data (excluding holes).
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name: raw bytes, no `/`, no NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// The inode it names.
    pub inode: InodeId,
}

/// A directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirData {
    /// The parent directory (the root is its own parent).
    pub parent: InodeId,
    /// Entries sorted bytewise by name, names unique.
    pub entries: Vec<Entry>,
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir(DirData),
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target bytes.
    Symlink(Vec<u8>),
    /// A character device with its `rdev` (Linux `makedev` encoding).
    CharDev(u64),
    /// A block device with its `rdev`.
    BlockDev(u64),
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl Kind {
    /// The `S_IF*` file-type bits of this kind.
    #[must_use]
    pub fn mode_type(&self) -> u16 {
        match self {
            Kind::Dir(_) => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev(_) => 0o020000,
            Kind::BlockDev(_) => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// What it is.
    pub kind: Kind,
    /// Its metadata.
    pub meta: Meta,
    /// Number of directory entries naming it (1 for directories: their own entry).
    pub links: u32,
}

impl Inode {
    /// Full `st_mode`: file type bits plus permission bits.
    #[must_use]
    pub fn mode(&self) -> u16 {
        self.kind.mode_type() | (self.meta.perm & 0o7777)
    }

    /// The directory data, if a directory.
    #[must_use]
    pub fn as_dir(&self) -> Option<&DirData> {
        match &self.kind {
            Kind::Dir(d) => Some(d),
            _ => None,
        }
    }
}

/// The source tree: an arena of inodes rooted at [`InodeId::ROOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    inodes: Vec<Inode>,
}

/// Split a name into something printable for errors.
pub(crate) fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn check_name(name: &[u8]) -> Result<(), TreeError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(TreeError::BadName { name: show(name) });
    }
    Ok(())
}

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    #[must_use]
    pub fn new(root_meta: Meta) -> Self {
        Tree {
            inodes: vec![Inode {
                kind: Kind::Dir(DirData { parent: InodeId::ROOT, entries: Vec::new() }),
                meta: root_meta,
                links: 1,
            }],
        }
    }

    /// Give back the spare capacity of the inode table and of every directory (a tree of a
    /// few hundred thousand inodes built by appending carries tens of MiB of it).
    pub fn shrink_to_fit(&mut self) {
        self.inodes.shrink_to_fit();
        for i in &mut self.inodes {
            if let Kind::Dir(d) = &mut i.kind {
                d.entries.shrink_to_fit();
            }
        }
    }

    /// Number of inodes (including the root).
    #[must_use]
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Always false: a tree has at least its root.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// All inodes, indexed by [`InodeId`].
    #[must_use]
    pub fn inodes(&self) -> &[Inode] {
        &self.inodes
    }

    /// One inode.
    ///
    /// # Panics
    /// If `id` does not belong to this tree (ids are only made by the tree itself).
    #[must_use]
    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.index()]
    }

    /// Mutable access to one inode's metadata.
    ///
    /// # Panics
    /// If `id` does not belong to this tree.
    pub fn meta_mut(&mut self, id: InodeId) -> &mut Meta {
        &mut self.inodes[id.index()].meta
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Inode {
        &self.inodes[0]
    }

    /// True if the root directory has no entries.
    #[must_use]
    pub fn root_is_empty(&self) -> bool {
        self.root().as_dir().is_some_and(|d| d.entries.is_empty())
    }

    fn push(&mut self, inode: Inode) -> Result<InodeId, TreeError> {
        let id = u32::try_from(self.inodes.len()).map_err(|_| TreeError::TooManyInodes)?;
        self.inodes.push(inode);
        Ok(InodeId(id))
    }

    fn dir_mut(&mut self, dir: InodeId) -> Result<&mut DirData, TreeError> {
        match self.inodes.get_mut(dir.index()).map(|i| &mut i.kind) {
            Some(Kind::Dir(d)) => Ok(d),
            _ => Err(TreeError::NotADirectory { path: format!("inode {}", dir.0) }),
        }
    }

    /// Add an entry `name` → `target` to directory `dir`, keeping entries sorted.
    fn link_entry(&mut self, dir: InodeId, name: &[u8], target: InodeId) -> Result<(), TreeError> {
        check_name(name)?;
        let d = self.dir_mut(dir)?;
        match d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
            Ok(_) => Err(TreeError::Exists { name: show(name) }),
            Err(pos) => {
                d.entries.insert(pos, Entry { name: name.to_vec(), inode: target });
                Ok(())
            }
        }
    }

    /// Append an entry without searching; callers guarantee `name` sorts after every existing
    /// entry (used by the scanner, which reads directories in sorted order).
    pub(crate) fn append_entry_sorted(
        &mut self,
        dir: InodeId,
        name: Vec<u8>,
        target: InodeId,
    ) -> Result<(), TreeError> {
        check_name(&name)?;
        let d = self.dir_mut(dir)?;
        if let Some(last) = d.entries.last() {
            if last.name >= name {
                return Err(TreeError::Exists { name: show(&name) });
            }
        }
        d.entries.push(Entry { name, inode: target });
        Ok(())
    }

    /// Add a new inode of `kind` under `dir` as `name`.
    ///
    /// # Errors
    /// `dir` is not a directory, the name is invalid or already present.
    pub fn add(&mut self, dir: InodeId, name: &[u8], kind: Kind, meta: Meta) -> Result<InodeId, TreeError> {
        check_name(name)?;
        // Check the target directory before allocating the inode.
        {
            let d = self.dir_mut(dir)?;
            if d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).is_ok() {
                return Err(TreeError::Exists { name: show(name) });
            }
        }
        let kind = match kind {
            Kind::Dir(mut d) => {
                d.parent = dir;
                Kind::Dir(d)
            }
            k => k,
        };
        let id = self.push(Inode { kind, meta, links: 1 })?;
        self.link_entry(dir, name, id)?;
        Ok(id)
    }

    /// Add an inode that the caller guarantees sorts after every entry of `dir`.
    pub(crate) fn add_sorted(
        &mut self,
        dir: InodeId,
        name: Vec<u8>,
        kind: Kind,
        meta: Meta,
    ) -> Result<InodeId, TreeError> {
        check_name(&name)?;
        let kind = match kind {
            Kind::Dir(mut d) => {
                d.parent = dir;
                Kind::Dir(d)
            }
            k => k,
        };
        let id = self.push(Inode { kind, meta, links: 1 })?;
        self.append_entry_sorted(dir, name, id)?;
        Ok(id)
    }

    /// Add an empty directory.
    ///
    /// # Errors
    /// As [`Tree::add`].
    pub fn add_dir(&mut self, dir: InodeId, name: &[u8], meta: Meta) -> Result<InodeId, TreeError> {
        self.add(dir, name, Kind::Dir(DirData { parent: dir, entries: Vec::new() }), meta)
    }

    /// Add a regular file.
    ///
    /// # Errors
    /// As [`Tree::add`].
    pub fn add_file(&mut self, dir: InodeId, name: &[u8], data: FileData, meta: Meta) -> Result<InodeId, TreeError> {
        self.add(dir, name, Kind::File(data), meta)
    }

    /// Add a symbolic link.
    ///
    /// # Errors
    /// As [`Tree::add`].
    pub fn add_symlink(&mut self, dir: InodeId, name: &[u8], target: &[u8], meta: Meta) -> Result<InodeId, TreeError> {
        self.add(dir, name, Kind::Symlink(target.to_vec()), meta)
    }

    /// Add a hard link: a new entry `name` in `dir` naming the existing non-directory `target`.
    ///
    /// # Errors
    /// `target` is a directory, or as [`Tree::add`].
    pub fn add_hardlink(&mut self, dir: InodeId, name: &[u8], target: InodeId) -> Result<(), TreeError> {
        if matches!(self.inodes.get(target.index()).map(|i| &i.kind), Some(Kind::Dir(_)) | None) {
            return Err(TreeError::HardLinkToDirectory { name: show(name) });
        }
        self.link_entry(dir, name, target)?;
        let inode = &mut self.inodes[target.index()];
        inode.links = inode.links.checked_add(1).ok_or(TreeError::TooManyLinks { name: show(name) })?;
        Ok(())
    }

    pub(crate) fn add_hardlink_sorted(
        &mut self,
        dir: InodeId,
        name: Vec<u8>,
        target: InodeId,
    ) -> Result<(), TreeError> {
        let shown = show(&name);
        self.append_entry_sorted(dir, name, target)?;
        let inode = &mut self.inodes[target.index()];
        inode.links = inode.links.checked_add(1).ok_or(TreeError::TooManyLinks { name: shown })?;
        Ok(())
    }

    /// Find the inode at `path` (components separated by `/`, leading `/` optional).
    #[must_use]
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = InodeId::ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let d = self.inode(cur).as_dir()?;
            let pos = d.entries.binary_search_by(|e| e.name.as_slice().cmp(comp)).ok()?;
            cur = d.entries[pos].inode;
        }
        Some(cur)
    }

    /// Look up or create the directories along `path` (like `mkdir -p`); new ones get `meta`.
    ///
    /// # Errors
    /// A component exists and is not a directory, or a name is invalid.
    pub fn mkdir_p(&mut self, path: &[u8], meta: &Meta) -> Result<InodeId, TreeError> {
        let mut cur = InodeId::ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let found = {
                let d = self.inode(cur).as_dir().ok_or_else(|| TreeError::NotADirectory { path: show(path) })?;
                d.entries.binary_search_by(|e| e.name.as_slice().cmp(comp)).ok().map(|p| d.entries[p].inode)
            };
            cur = match found {
                Some(id) => {
                    if self.inode(id).as_dir().is_none() {
                        return Err(TreeError::NotADirectory { path: show(path) });
                    }
                    id
                }
                None => self.add_dir(cur, comp, meta.clone())?,
            };
        }
        Ok(cur)
    }

    /// Visit every entry in depth-first pre-order, entries in sorted name order. The callback
    /// gets the full path (`/a/b`), the entry's inode and whether this entry is the first one
    /// naming that inode (later ones are hard links). The root itself is not visited.
    pub fn walk<E>(&self, mut f: impl FnMut(&[u8], InodeId, bool) -> Result<(), E>) -> Result<(), E> {
        let mut seen = vec![false; self.inodes.len()];
        let mut path: Vec<u8> = Vec::new();
        // Explicit stack: (dir, next entry index, path length before this dir's component).
        let mut stack: Vec<(InodeId, usize, usize)> = vec![(InodeId::ROOT, 0, 0)];
        while let Some(top) = stack.last_mut() {
            let (dir, idx, _) = *top;
            let Some(d) = self.inode(dir).as_dir() else { break };
            if idx >= d.entries.len() {
                let (_, _, plen) = stack.pop().unwrap_or((dir, 0, 0));
                path.truncate(plen);
                continue;
            }
            top.1 += 1;
            let e = &d.entries[idx];
            let plen = path.len();
            path.push(b'/');
            path.extend_from_slice(&e.name);
            let first = !seen[e.inode.index()];
            seen[e.inode.index()] = true;
            f(&path, e.inode, first)?;
            if first && self.inode(e.inode).as_dir().is_some() {
                stack.push((e.inode, 0, plen));
            } else {
                path.truncate(plen);
            }
        }
        Ok(())
    }

    /// The path of the first entry naming each inode (`/` for the root), in [`InodeId`] order.
    #[must_use]
    pub fn paths(&self) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new(); self.inodes.len()];
        out[0] = b"/".to_vec();
        let _ = self.walk::<()>(|p, id, first| {
            if first {
                out[id.index()] = p.to_vec();
            }
            Ok(())
        });
        out
    }

    /// Number of subdirectories of a directory (for `nlink = 2 + subdirs`).
    #[must_use]
    pub fn subdir_count(&self, dir: InodeId) -> u32 {
        self.inode(dir).as_dir().map_or(0, |d| {
            let n = d.entries.iter().filter(|e| self.inode(e.inode).as_dir().is_some()).count();
            // Each subdirectory is a distinct inode with a u32 id other than the root's.
            u32::try_from(n).expect("fewer subdirectories than u32 inode ids")
        })
    }

    /// Total bytes of file data (holes excluded), counting hard-linked files once.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.inodes
            .iter()
            .map(|i| match &i.kind {
                Kind::File(f) => f.data_bytes(),
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Copy the subtree rooted at directory `src_dir` of `src` into a new tree, skipping the
    /// contents (not the entries) of directories for which `prune(path)` is true. Paths passed
    /// to `prune` are relative to `src_dir` and start with `/`. Hard links inside the copied
    /// subtree stay hard links.
    ///
    /// # Errors
    /// `src_dir` is not a directory.
    pub fn subtree(src: &Tree, src_dir: InodeId, prune: &dyn Fn(&[u8]) -> bool) -> Result<Tree, TreeError> {
        let root = src.inode(src_dir);
        let Kind::Dir(_) = root.kind else {
            return Err(TreeError::NotADirectory { path: show(&src.paths()[src_dir.index()]) });
        };
        let mut out = Tree::new(root.meta.clone());
        let mut map: Vec<Option<InodeId>> = vec![None; src.inodes.len()];
        map[src_dir.index()] = Some(InodeId::ROOT);
        // Stack of (source dir, target dir, path prefix).
        let mut stack: Vec<(InodeId, InodeId, Vec<u8>)> = vec![(src_dir, InodeId::ROOT, Vec::new())];
        while let Some((sdir, tdir, prefix)) = stack.pop() {
            let Some(d) = src.inode(sdir).as_dir() else { continue };
            let mut subdirs = Vec::new();
            for e in &d.entries {
                let mut p = prefix.clone();
                p.push(b'/');
                p.extend_from_slice(&e.name);
                let sino = src.inode(e.inode);
                if let Some(t) = map[e.inode.index()] {
                    out.add_hardlink_sorted(tdir, e.name.clone(), t)?;
                    continue;
                }
                let kind = match &sino.kind {
                    Kind::Dir(_) => Kind::Dir(DirData { parent: tdir, entries: Vec::new() }),
                    k => k.clone(),
                };
                let t = out.add_sorted(tdir, e.name.clone(), kind, sino.meta.clone())?;
                map[e.inode.index()] = Some(t);
                if sino.as_dir().is_some() && !prune(&p) {
                    subdirs.push((e.inode, t, p));
                }
            }
            // Reverse so that the stack pops in sorted order (keeps inode ids in pre-order-ish
            // sorted order; determinism only needs it to be a fixed function of the input).
            stack.extend(subdirs.into_iter().rev());
        }
        out.shrink_to_fit();
        Ok(out)
    }
}
