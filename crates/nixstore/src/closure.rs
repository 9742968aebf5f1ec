//! closureInfo input (nix-store.md §1, §2) and grafting the closure into a tree (§5).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mkdisk_tree::{InodeId, Meta, ScanOptions, Timestamp, Tree};

use crate::{NixError, STORE_DIR};

/// One registered store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// Full store path, `/nix/store/<hash>-<name>`.
    pub path: String,
    /// SHA-256 of the path's NAR serialisation.
    pub nar_hash: [u8; 32],
    /// Length of the NAR serialisation.
    pub nar_size: u64,
    /// The deriver, if given (closureInfo leaves it empty).
    pub deriver: Option<String>,
    /// References (full store paths, possibly including the path itself), as given.
    pub references: Vec<String>,
}

/// A parsed registration: what `nix-store --load-db` reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Records in input order.
    pub paths: Vec<PathInfo>,
}

/// The basename of a store path, checked to be `/nix/store/<name>` with one component.
pub(crate) fn store_basename(path: &str) -> Result<&str, NixError> {
    let bad = || NixError::NotAStorePath { path: path.to_string() };
    let name = path.strip_prefix(STORE_DIR).and_then(|r| r.strip_prefix('/')).ok_or_else(bad)?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(bad());
    }
    Ok(name)
}

impl Registration {
    /// Parse the registration format (`decodeValidPathInfo` with hashes given): records of
    /// path, narHash, narSize, deriver (or empty), reference count, references. Trailing empty
    /// lines are accepted.
    ///
    /// # Errors
    /// [`NixError::Registration`] with the line number for a malformed record,
    /// [`NixError::NotAStorePath`], [`NixError::DuplicatePath`].
    pub fn parse(text: &str) -> Result<Self, NixError> {
        let lines: Vec<&str> = text.split('\n').collect();
        // `split` yields one empty string after a final newline; drop trailing empties.
        let mut end = lines.len();
        while end > 0 && lines[end - 1].is_empty() {
            end -= 1;
        }
        let mut i = 0usize;
        let err = |line: usize, message: String| NixError::Registration { line: line + 1, message };
        let next = |i: &mut usize, what: &str| -> Result<(usize, &str), NixError> {
            if *i >= end {
                return Err(err(*i, format!("unexpected end of input, expected {what}")));
            }
            let l = lines[*i];
            *i += 1;
            Ok((*i - 1, l))
        };
        let mut paths = Vec::new();
        let mut seen = BTreeSet::new();
        while i < end {
            let (_, path) = next(&mut i, "a store path")?;
            store_basename(path)?;
            let (hl, hash) = next(&mut i, "a NAR hash")?;
            let nar_hash = crate::hash::parse_nar_hash(hash)
                .ok_or_else(|| err(hl, format!("{hash:?} is not a SHA-256 hash (for {path})")))?;
            let (sl, size) = next(&mut i, "a NAR size")?;
            let nar_size = size.parse::<u64>().map_err(|_| err(sl, format!("{size:?} is not a NAR size")))?;
            let (dl, deriver) = next(&mut i, "a deriver or an empty line")?;
            let deriver = if deriver.is_empty() {
                None
            } else {
                store_basename(deriver).map_err(|_| err(dl, format!("deriver {deriver:?} is not a store path")))?;
                Some(deriver.to_string())
            };
            let (cl, count) = next(&mut i, "a reference count")?;
            let n = count.parse::<usize>().map_err(|_| err(cl, format!("{count:?} is not a reference count")))?;
            if n > end.saturating_sub(i) {
                return Err(err(cl, format!("{n} references announced, fewer lines left")));
            }
            let mut references = Vec::with_capacity(n);
            for _ in 0..n {
                let (rl, r) = next(&mut i, "a reference")?;
                store_basename(r).map_err(|_| err(rl, format!("reference {r:?} is not a store path")))?;
                references.push(r.to_string());
            }
            if !seen.insert(path.to_string()) {
                return Err(NixError::DuplicatePath { path: path.to_string() });
            }
            paths.push(PathInfo { path: path.to_string(), nar_hash, nar_size, deriver, references });
        }
        Ok(Registration { paths })
    }

    /// Check that every reference names a registered path.
    ///
    /// # Errors
    /// [`NixError::UnknownReference`].
    pub fn check_references(&self) -> Result<(), NixError> {
        let all: BTreeSet<&str> = self.paths.iter().map(|p| p.path.as_str()).collect();
        for p in &self.paths {
            for r in &p.references {
                if !all.contains(r.as_str()) {
                    return Err(NixError::UnknownReference { path: p.path.clone(), reference: r.clone() });
                }
            }
        }
        Ok(())
    }

    /// The records sorted by path (the order the database uses).
    #[must_use]
    pub fn sorted(&self) -> Vec<&PathInfo> {
        let mut v: Vec<&PathInfo> = self.paths.iter().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

/// A `closureInfo` output: `store-paths` plus `registration`, checked against each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosureInfo {
    /// The store paths, sorted, unique.
    pub store_paths: Vec<String>,
    /// The registration.
    pub registration: Registration,
}

impl ClosureInfo {
    /// Read `DIR/store-paths` and `DIR/registration`.
    ///
    /// # Errors
    /// A file cannot be read, or as [`ClosureInfo::from_texts`].
    pub fn load(dir: &Path) -> Result<Self, NixError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| NixError::io(p, e))
        };
        Self::from_texts(&read("store-paths")?, &read("registration")?)
    }

    /// Parse and cross-check the two files' contents: the same set of paths, references
    /// inside the closure.
    ///
    /// # Errors
    /// [`NixError::NotAStorePath`], [`NixError::Registration`],
    /// [`NixError::RegistrationMismatch`], [`NixError::UnknownReference`],
    /// [`NixError::DuplicatePath`].
    pub fn from_texts(store_paths: &str, registration: &str) -> Result<Self, NixError> {
        let mut paths = BTreeSet::new();
        for l in store_paths.lines().filter(|l| !l.is_empty()) {
            store_basename(l)?;
            if !paths.insert(l.to_string()) {
                return Err(NixError::DuplicatePath { path: l.to_string() });
            }
        }
        let registration = Registration::parse(registration)?;
        let reg: BTreeMap<&str, &PathInfo> = registration.paths.iter().map(|p| (p.path.as_str(), p)).collect();
        if let Some(p) = paths.iter().find(|p| !reg.contains_key(p.as_str())) {
            return Err(NixError::RegistrationMismatch {
                path: p.clone(),
                present_in: "store-paths",
                missing_in: "registration",
            });
        }
        if let Some(p) = reg.keys().find(|p| !paths.contains(**p)) {
            return Err(NixError::RegistrationMismatch {
                path: (*p).to_string(),
                present_in: "registration",
                missing_in: "store-paths",
            });
        }
        registration.check_references()?;
        Ok(ClosureInfo { store_paths: paths.into_iter().collect(), registration })
    }
}

/// Add every store path of `closure` under `/nix/store` of `tree`, read from the host
/// directory `store_dir` (`/nix/store` normally; a chroot store's `<root>/nix/store` in
/// tests). Contents get the store's canonical metadata (0444/0555, mtime 1, root:root, no
/// xattrs); `/nix/store` itself becomes 1775 root:30000 (nixbld). Directories created on the
/// way (`/nix`) get 0755 and `mtime`. File data is not copied here: it stays a host source
/// (the scan reads it once to find whole zero blocks).
///
/// # Errors
/// [`NixError::MissingStorePath`] naming the first path missing from the host store, or a
/// tree error (e.g. the path already exists in the tree).
pub fn add_closure(tree: &mut Tree, closure: &ClosureInfo, store_dir: &Path, mtime: i64) -> Result<(), NixError> {
    let dir_meta = Meta::new(0o755).with_mtime(Timestamp::from_secs(mtime));
    let store = tree.mkdir_p(b"/nix/store", &dir_meta).map_err(NixError::tree("/nix/store"))?;
    *tree.meta_mut(store) = Meta { perm: 0o1775, gid: 30000, ..dir_meta };
    let opts = ScanOptions { store_canonical: true, ..ScanOptions::default() };
    for path in &closure.store_paths {
        let name = store_basename(path)?;
        let host = store_dir.join(name);
        if std::fs::symlink_metadata(&host).is_err() {
            return Err(NixError::MissingStorePath { path: path.clone(), host });
        }
        add_store_path(tree, store, name, &host, &opts).map_err(NixError::tree(path.clone()))?;
    }
    Ok(())
}

fn add_store_path(
    tree: &mut Tree,
    store: InodeId,
    name: &str,
    host: &Path,
    opts: &ScanOptions,
) -> Result<InodeId, mkdisk_tree::TreeError> {
    mkdisk_tree::scan_entry_into(tree, store, name.as_bytes(), host, opts)
}
