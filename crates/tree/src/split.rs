//! Splitting one root tree into one tree per mount point, by longest prefix.
//!
//! A path belongs to the deepest mount point that is a prefix of it. The directory a deeper
//! mount is mounted on stays in the outer filesystem as an empty directory (with its metadata),
//! as on a real system. Hard links that cross mounts become independent copies.

use crate::model::{show, InodeId, Meta, Tree};
use crate::TreeError;

/// Normalise a mount point: leading `/`, no trailing `/`, no empty or `.` components.
///
/// # Errors
/// The path is relative or has a `..` component.
pub fn normalize_mountpoint(mp: &str) -> Result<Vec<u8>, TreeError> {
    if !mp.starts_with('/') {
        return Err(TreeError::BadMountpoint { mountpoint: mp.to_string() });
    }
    let mut out = Vec::new();
    for comp in mp.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if comp == ".." {
            return Err(TreeError::BadMountpoint { mountpoint: mp.to_string() });
        }
        out.push(b'/');
        out.extend_from_slice(comp.as_bytes());
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// True if `path` is `mount` or below it (both normalised).
#[must_use]
pub fn is_under(path: &[u8], mount: &[u8]) -> bool {
    if mount == b"/" {
        return true;
    }
    path.starts_with(mount) && (path.len() == mount.len() || path[mount.len()] == b'/')
}

/// The result of [`split`].
#[derive(Debug)]
pub struct Split {
    /// One tree per requested mount point, in the order given.
    pub trees: Vec<Tree>,
    /// Top-most paths of the source that no mount point claims (dropped).
    pub unclaimed: Vec<Vec<u8>>,
}

/// Split `tree` by `mounts` (normalised, see [`normalize_mountpoint`]; duplicates are an
/// error). A mount point missing from the source gets an empty root with `default_root`.
///
/// # Errors
/// A mount point names a non-directory, or appears twice.
pub fn split(tree: &Tree, mounts: &[Vec<u8>], default_root: &Meta) -> Result<Split, TreeError> {
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].contains(m) {
            return Err(TreeError::DuplicateMountpoint { mountpoint: show(m) });
        }
    }
    let mut trees = Vec::with_capacity(mounts.len());
    for m in mounts {
        let deeper: Vec<&Vec<u8>> = mounts.iter().filter(|o| *o != m && is_under(o, m)).collect();
        let t = match tree.lookup(m) {
            None => Tree::new(default_root.clone()),
            Some(id) => {
                if tree.inode(id).as_dir().is_none() {
                    return Err(TreeError::NotADirectory { path: show(m) });
                }
                let base: &[u8] = if m.as_slice() == b"/" { b"" } else { m };
                let prune = |rel: &[u8]| {
                    let mut full = base.to_vec();
                    full.extend_from_slice(rel);
                    deeper.iter().any(|d| d.as_slice() == full.as_slice())
                };
                Tree::subtree(tree, id, &prune)?
            }
        };
        trees.push(t);
    }
    let mut unclaimed: Vec<Vec<u8>> = Vec::new();
    if !mounts.iter().any(|m| m.as_slice() == b"/") {
        let _ = tree.walk::<()>(|p, _id: InodeId, _first| {
            let claimed = mounts.iter().any(|m| is_under(p, m));
            let ancestor = mounts.iter().any(|m| m.len() > p.len() && m.starts_with(p) && m[p.len()] == b'/');
            if !claimed && !ancestor && !unclaimed.last().is_some_and(|u| is_under(p, u)) {
                unclaimed.push(p.to_vec());
            }
            Ok(())
        });
    }
    Ok(Split { trees, unclaimed })
}
