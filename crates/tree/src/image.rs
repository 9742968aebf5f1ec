//! The output image: a sparse file written only through bounds-checked [`Region`]s.
//!
//! [`Image::create`] makes an unnamed file (`O_TMPFILE`) in the final path's directory and
//! sets its length (so it is all holes); writers get a [`Region`] per partition and write with
//! positional I/O from any number of threads. [`persist_all`] gives the images of one build
//! their names together: each is linked in under a temporary name, then renamed into place.
//! An image that is dropped, or a process that dies (even by `SIGKILL`), leaves nothing
//! behind: an unnamed file has no name to leave. On filesystems without `O_TMPFILE` the image
//! is a named temporary file, removed on drop and by [`remove_temp_files`], which the binary
//! calls on `SIGINT`/`SIGTERM`/`SIGHUP`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::{FileData, Source};
use crate::{ImageError, TreeError};

/// Named files this process created that must go if it is interrupted: fallback temporaries,
/// staged images, and the finished images of a [`persist_all`] that is still renaming.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_add(p: &Path) {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(p.to_path_buf());
}

fn live_remove(p: &Path) {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|x| x != p);
}

/// Remove every named file an unfinished build of this process holds in an output
/// directory (see the module documentation). For signal handlers: call it, then exit.
pub fn remove_temp_files() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for p in live {
        let _ = std::fs::remove_file(p);
    }
}

/// How the image file is named while it is being written.
#[derive(Debug)]
enum Temp {
    /// Unnamed (`O_TMPFILE`) in this directory.
    Unnamed(PathBuf),
    /// A named temporary file (no `O_TMPFILE` here, or staged by [`persist_all`]).
    Named(tempfile::TempPath),
    /// An existing file written in place ([`Image::open_existing`]).
    InPlace,
}

/// A sparse output image under construction.
#[derive(Debug)]
pub struct Image {
    file: Arc<File>,
    tmp: Temp,
    path: PathBuf,
    size: u64,
    /// Where the disk starts in the file (room for a container's header before it).
    base: u64,
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The prefix of a temporary name beside `path`: `.<name>.` (then random, then `.tmp`).
fn temp_prefix(path: &Path) -> String {
    format!(".{}.", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// An unnamed file in `dir`, or `None` where the filesystem has no `O_TMPFILE`.
fn open_unnamed(dir: &Path) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags, CWD};
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e)
            if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR || e == rustix::io::Errno::INVAL =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Give the unnamed `file` the name `to`: `linkat(AT_EMPTY_PATH)` where allowed (it needs
/// `CAP_DAC_READ_SEARCH`), else through `/proc/self/fd`.
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD};
    if rustix::fs::linkat(file, "", CWD, to, AtFlags::EMPTY_PATH).is_ok() {
        return Ok(());
    }
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(CWD, proc_path.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW).map_err(io::Error::from)
}

impl Image {
    /// Create an unnamed file in `path`'s directory (a named temporary file where the
    /// filesystem has no `O_TMPFILE`), sized `size` bytes (sparse).
    ///
    /// # Errors
    /// The directory is not writable or the size cannot be set.
    pub fn create(path: &Path, size: u64) -> Result<Image, ImageError> {
        Image::create_at(path, size, 0)
    }

    /// [`Image::create`] with the disk starting `base` bytes into the file (a container
    /// format's header goes before it, as in a qcow2 written in place): the file is
    /// `base + size` bytes, all holes, and every [`Region`] is relative to `base`.
    ///
    /// # Errors
    /// As [`Image::create`]; `base + size` overflows.
    pub fn create_at(path: &Path, size: u64, base: u64) -> Result<Image, ImageError> {
        let dir = dir_of(path);
        let create_err = |e: io::Error| ImageError::Create { path: dir.clone(), source: e };
        let (file, tmp) = match open_unnamed(&dir).map_err(create_err)? {
            Some(file) => (file, Temp::Unnamed(dir.clone())),
            None => {
                let prefix = temp_prefix(path);
                let named = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(&dir);
                let (file, tmp) = named.map_err(create_err)?.into_parts();
                live_add(&tmp);
                (file, Temp::Named(tmp))
            }
        };
        let image = Image { file: Arc::new(file), tmp, path: path.to_path_buf(), size, base };
        // Temporary files are created 0600; a finished image is an ordinary file.
        use std::os::unix::fs::PermissionsExt;
        image
            .file
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        let len = base.checked_add(size).ok_or_else(|| io::Error::other("image size overflows"));
        let len = len.map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        // A new file is empty: truncating it to 0 would only make ext4 flush it on close
        // (its `auto_da_alloc` rule for truncate-then-rewrite), which costs a synchronous
        // block allocation of everything written (0.4 s for an 800 MB stream).
        if len > 0 {
            image.file.set_len(len).map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        }
        Ok(image)
    }

    /// Use an existing file (e.g. one pre-filled with poison bytes in tests) as the image; it
    /// is written in place and never renamed or removed.
    ///
    /// # Errors
    /// The file cannot be opened for writing.
    pub fn open_existing(path: &Path) -> Result<Image, ImageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        let size = file.metadata().map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?.len();
        Ok(Image { file: Arc::new(file), tmp: Temp::InPlace, path: path.to_path_buf(), size, base: 0 })
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the disk starts in the file.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The open file (to read the finished image back, e.g. to convert it).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The final path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole image as one region.
    #[must_use]
    pub fn whole(&self) -> Region {
        Region { file: Arc::clone(&self.file), name: Arc::from("disk"), base: self.base, len: self.size }
    }

    /// A region `offset..offset+len` named `name` (used in error messages).
    ///
    /// # Errors
    /// The range is outside the image.
    pub fn region(&self, name: &str, offset: u64, len: u64) -> Result<Region, ImageError> {
        self.whole().sub(name, offset, len)
    }

    /// Give an unnamed image a temporary name beside its final path.
    fn stage(&mut self) -> Result<(), ImageError> {
        let Temp::Unnamed(dir) = &self.tmp else { return Ok(()) };
        let file = &self.file;
        let prefix = temp_prefix(&self.path);
        let named = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .make_in(dir, |p| link_unnamed(file, p))
            .map_err(|e| ImageError::Persist { path: self.path.clone(), source: e })?;
        let (_, tmp) = named.into_parts();
        live_add(&tmp);
        self.tmp = Temp::Named(tmp);
        Ok(())
    }

    /// Name the image: link it in and rename it to the final path. For several images of
    /// one build use [`persist_all`].
    ///
    /// # Errors
    /// Linking or renaming fails; nothing is left behind.
    pub fn persist(self) -> Result<PathBuf, ImageError> {
        let mut v = persist_all(vec![self])?;
        Ok(v.remove(0))
    }

    /// Rename a staged image into place.
    fn rename(mut self) -> Result<PathBuf, ImageError> {
        if let Temp::Named(tmp) = std::mem::replace(&mut self.tmp, Temp::InPlace) {
            let from = tmp.to_path_buf();
            let r = tmp.persist(&self.path);
            live_remove(&from);
            r.map_err(|e| ImageError::Persist { path: self.path.clone(), source: e.error })?;
        }
        Ok(self.path.clone())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // The temporary path itself is removed by `TempPath`'s own drop.
        if let Temp::Named(tmp) = &self.tmp {
            live_remove(tmp);
        }
    }
}

/// Name every image of one build, all or nothing: all are first linked in under temporary
/// names, then renamed into place; if any step fails, every image of this call is removed
/// again (those already renamed included) and the error is returned.
///
/// # Errors
/// Linking or renaming one of the images fails.
pub fn persist_all(mut images: Vec<Image>) -> Result<Vec<PathBuf>, ImageError> {
    for image in &mut images {
        image.stage()?;
    }
    let mut done: Vec<PathBuf> = Vec::new();
    for image in images {
        let path = image.path.clone();
        live_add(&path);
        match image.rename() {
            Ok(p) => done.push(p),
            Err(e) => {
                for p in done.iter().chain([&path]) {
                    live_remove(p);
                }
                for p in &done {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    for p in &done {
        live_remove(p);
    }
    Ok(done)
}

/// A bounds-checked window of the image that writers may write to from many threads.
#[derive(Clone, Debug)]
pub struct Region {
    file: Arc<File>,
    name: Arc<str>,
    base: u64,
    len: u64,
}

impl Region {
    /// A region over an arbitrary file (for tests and tools).
    #[must_use]
    pub fn from_file(file: Arc<File>, name: &str, base: u64, len: u64) -> Region {
        Region { file, name: Arc::from(name), base, len }
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if zero-length.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this region in the image.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Name used in errors (the partition label, say).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A sub-region relative to this one.
    ///
    /// # Errors
    /// Out of bounds.
    pub fn sub(&self, name: &str, offset: u64, len: u64) -> Result<Region, ImageError> {
        self.check(offset, len)?;
        Ok(Region { file: Arc::clone(&self.file), name: Arc::from(name), base: self.base + offset, len })
    }

    fn check(&self, offset: u64, len: u64) -> Result<u64, ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(ImageError::OutOfBounds { region: self.name.to_string(), offset, len, size: self.len }),
        }
    }

    /// Write `data` at `offset` (relative to the region).
    ///
    /// # Errors
    /// Out of bounds, or the write fails.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        let len = u64::try_from(data.len()).expect("usize fits u64");
        let abs = self.check(offset, len)?;
        self.file.write_all_at(data, abs).map_err(|e| ImageError::Write {
            region: self.name.to_string(),
            offset,
            source: e,
        })
    }

    /// Read `buf.len()` bytes at `offset` (for read-modify-write of boot sectors and tests).
    ///
    /// # Errors
    /// Out of bounds, or the read fails.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let len = u64::try_from(buf.len()).expect("usize fits u64");
        let abs = self.check(offset, len)?;
        self.file.read_exact_at(buf, abs).map_err(|e| ImageError::Write {
            region: self.name.to_string(),
            offset,
            source: e,
        })
    }

    /// Copy `len` bytes from `src` at `src_offset` to `offset` in this region, with
    /// `copy_file_range` (reflink/server-side copy where the filesystem offers it) and a
    /// read/write fallback. Short source files are an error (the file changed under us).
    ///
    /// # Errors
    /// Out of bounds, the source is short or unreadable, or the write fails.
    pub fn copy_from_file(
        &self,
        src: &File,
        src_path: &Path,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), ImageError> {
        let abs = self.check(offset, len)?;
        let src_err = |e: io::Error| ImageError::Source { path: src_path.to_path_buf(), source: e };
        let mut done = 0u64;
        let mut use_cfr = true;
        let mut buf: Vec<u8> = Vec::new();
        while done < len {
            let remaining = len - done;
            if use_cfr {
                let mut off_in = src_offset + done;
                let mut off_out = abs + done;
                let chunk = usize::try_from(remaining.min(1 << 30)).expect("at most 1 GiB");
                match rustix::fs::copy_file_range(src, Some(&mut off_in), &*self.file, Some(&mut off_out), chunk) {
                    Ok(0) => {
                        return Err(src_err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "source file is shorter than when scanned",
                        )))
                    }
                    Ok(n) => {
                        done += u64::try_from(n).expect("usize fits u64");
                        continue;
                    }
                    Err(_) => use_cfr = false,
                }
            }
            let chunk = usize::try_from(remaining.min(1 << 20)).expect("at most 1 MiB");
            buf.resize(chunk, 0);
            src.read_exact_at(&mut buf, src_offset + done).map_err(src_err)?;
            self.file.write_all_at(&buf, abs + done).map_err(|e| ImageError::Write {
                region: self.name.to_string(),
                offset: offset + done,
                source: e,
            })?;
            done += u64::try_from(chunk).expect("usize fits u64");
        }
        Ok(())
    }

    /// Write the bytes `src_offset..src_offset+len` of a tree file to `offset`.
    ///
    /// For host files this opens the file once per call; callers that write several runs of
    /// one file should use [`open_source`] and [`Region::copy_from_file`].
    ///
    /// # Errors
    /// As [`Region::copy_from_file`]; in-memory sources shorter than asked.
    pub fn write_file_range(&self, data: &FileData, src_offset: u64, offset: u64, len: u64) -> Result<(), ImageError> {
        match &data.source {
            Source::Bytes(b) => {
                let s = usize::try_from(src_offset).ok();
                let e = src_offset.checked_add(len).and_then(|e| usize::try_from(e).ok());
                match (s, e) {
                    (Some(s), Some(e)) if e <= b.len() => self.write_at(offset, &b[s..e]),
                    _ => Err(ImageError::OutOfBounds {
                        region: "in-memory source".into(),
                        offset: src_offset,
                        len,
                        size: b.len() as u64,
                    }),
                }
            }
            Source::Host(p) => {
                let f = File::open(p).map_err(|e| ImageError::Source { path: p.clone(), source: e })?;
                self.copy_from_file(&f, p, src_offset, offset, len)
            }
        }
    }
}

/// Open a host source for repeated range copies.
///
/// # Errors
/// The file cannot be opened.
pub fn open_source(path: &Path) -> Result<File, ImageError> {
    File::open(path).map_err(|e| ImageError::Source { path: path.to_path_buf(), source: e })
}

/// Read a whole tree file into memory (for compressors and small files).
///
/// # Errors
/// The host file cannot be read or is shorter than its recorded size.
pub fn read_file(data: &FileData) -> Result<Vec<u8>, TreeError> {
    match &data.source {
        Source::Bytes(b) => Ok(b.to_vec()),
        Source::Host(p) => {
            let v = std::fs::read(p).map_err(|e| TreeError::io(p, e))?;
            if (v.len() as u64) < data.size {
                return Err(TreeError::io(p, io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank since scan")));
            }
            Ok(v)
        }
    }
}
