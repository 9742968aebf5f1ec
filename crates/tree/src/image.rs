//! The output image: a sparse file written only through bounds-checked [`Region`]s.
//!
//! [`Image::create`] makes a temporary file next to the final path and sets its length (so
//! it is all holes); writers get a [`Region`] per partition and write with positional I/O from
//! any number of threads. [`Image::persist`] renames the temporary file into place; dropping an
//! [`Image`] without persisting removes it, so a failed build leaves nothing behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::{FileData, Source};
use crate::{ImageError, TreeError};

/// A sparse output image under construction.
#[derive(Debug)]
pub struct Image {
    file: Arc<File>,
    tmp: Option<tempfile::TempPath>,
    path: PathBuf,
    size: u64,
}

impl Image {
    /// Create a temporary file in `path`'s directory, sized `size` bytes (sparse).
    ///
    /// # Errors
    /// The directory is not writable or the size cannot be set.
    pub fn create(path: &Path, size: u64) -> Result<Image, ImageError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::Create { path: dir.clone(), source: e })?;
        let (file, tmp) = tmp.into_parts();
        // Temporary files are created 0600; a finished image is an ordinary file.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        file.set_len(size).map_err(|e| ImageError::Create { path: path.to_path_buf(), source: e })?;
        Ok(Image { file: Arc::new(file), tmp: Some(tmp), path: path.to_path_buf(), size })
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
        Ok(Image { file: Arc::new(file), tmp: None, path: path.to_path_buf(), size })
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The final path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole image as one region.
    #[must_use]
    pub fn whole(&self) -> Region {
        Region { file: Arc::clone(&self.file), name: Arc::from("disk"), base: 0, len: self.size }
    }

    /// A region `offset..offset+len` named `name` (used in error messages).
    ///
    /// # Errors
    /// The range is outside the image.
    pub fn region(&self, name: &str, offset: u64, len: u64) -> Result<Region, ImageError> {
        self.whole().sub(name, offset, len)
    }

    /// Flush and rename the temporary file to the final path.
    ///
    /// # Errors
    /// The rename fails.
    pub fn persist(mut self) -> Result<PathBuf, ImageError> {
        if let Some(tmp) = self.tmp.take() {
            tmp.persist(&self.path).map_err(|e| ImageError::Persist { path: self.path.clone(), source: e.error })?;
        }
        Ok(self.path.clone())
    }
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
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
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
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
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
                let chunk = usize::try_from(remaining.min(1 << 30)).unwrap_or(1 << 30);
                match rustix::fs::copy_file_range(src, Some(&mut off_in), &*self.file, Some(&mut off_out), chunk) {
                    Ok(0) => {
                        return Err(src_err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "source file is shorter than when scanned",
                        )))
                    }
                    Ok(n) => {
                        done += u64::try_from(n).unwrap_or(0);
                        continue;
                    }
                    Err(_) => use_cfr = false,
                }
            }
            let chunk = usize::try_from(remaining.min(1 << 20)).unwrap_or(1 << 20);
            buf.resize(chunk, 0);
            src.read_exact_at(&mut buf, src_offset + done).map_err(src_err)?;
            self.file.write_all_at(&buf, abs + done).map_err(|e| ImageError::Write {
                region: self.name.to_string(),
                offset: offset + done,
                source: e,
            })?;
            done += u64::try_from(chunk).unwrap_or(0);
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
