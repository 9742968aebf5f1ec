//! The source trees: `--root` scanned, then split by the layout's mount points into one tree
//! per filesystem and subvolume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mkdisk_tree::{Meta, ScanOptions, Timestamp, Tree, TreeError};

use crate::spec::{MountTarget, Spec};

/// Errors of the source stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// `--root` is missing or not a directory.
    #[error("--root {}: {message}", path.display())]
    Root {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Scanning or splitting the source failed.
    #[error("source tree: {0}")]
    Tree(#[from] TreeError),
}

/// The metadata of a filesystem root the source does not provide.
#[must_use]
pub fn default_root_meta(sde: Option<i64>) -> Meta {
    Meta::new(0o755).with_mtime(Timestamp::from_secs(sde.unwrap_or(0)))
}

/// `--root` itself may be a symbolic link to a directory (the `./result` of a Nix build):
/// it is followed; links inside the tree are copied as links.
fn resolve_root(root: &Path) -> Result<PathBuf, SourceError> {
    let bad = |message: String| SourceError::Root { path: root.to_path_buf(), message };
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(root).map_err(|e| bad(e.to_string())),
        _ => Ok(root.to_path_buf()),
    }
}

/// Scan `root` (after [`resolve_root`]).
///
/// # Errors
/// The root is not a directory, or scanning fails.
pub fn scan(root: &Path, keep_owner: bool, sde: Option<i64>) -> Result<Tree, SourceError> {
    let root = resolve_root(root)?;
    let opts = ScanOptions { keep_owner, source_date_epoch: sde, ..ScanOptions::default() };
    Ok(mkdisk_tree::scan(&root, &opts)?)
}

/// Per-mount source trees after splitting the whole tree by every mount point.
#[derive(Debug)]
pub struct Sources {
    trees: Vec<(MountTarget, Arc<Tree>)>,
    empty: Arc<Tree>,
}

impl Sources {
    /// Only empty trees (no `--root` and no NixOS content).
    #[must_use]
    pub fn empty(sde: Option<i64>) -> Sources {
        Sources { trees: Vec::new(), empty: Arc::new(Tree::new(default_root_meta(sde))) }
    }

    /// The tree of mount `t`, or an empty one where nothing is mounted from the source.
    #[must_use]
    pub fn get(&self, t: MountTarget) -> Arc<Tree> {
        self.trees.iter().find(|(x, _)| *x == t).map_or_else(|| Arc::clone(&self.empty), |(_, tr)| Arc::clone(tr))
    }
}

/// Split `tree` by the mount points of `spec`; entries under no mount point and entries of
/// `nodev` mounts are dropped, each with a warning.
///
/// # Errors
/// A mount point is not a normal absolute path, or splitting fails.
pub fn split(spec: &Spec, tree: &Tree, sde: Option<i64>, warn: &mut dyn FnMut(String)) -> Result<Sources, SourceError> {
    let default_meta = default_root_meta(sde);
    let mounts = spec.mounts();
    let points: Vec<Vec<u8>> =
        mounts.iter().map(|m| mkdisk_tree::normalize_mountpoint(m.mountpoint)).collect::<Result<_, _>>()?;
    let split = mkdisk_tree::split(tree, &points, &default_meta)?;
    for u in &split.unclaimed {
        warn(format!("{}: not under any mount point of the layout; dropped", String::from_utf8_lossy(u)));
    }
    let mut trees = Vec::new();
    for (m, tree) in mounts.iter().zip(split.trees) {
        if let MountTarget::Nodev(i) = m.target {
            if !tree.root_is_empty() {
                let fs = &spec.nodev[i].fs_type;
                warn(format!(
                    "{}: {fs} mount (nodev) is empty at boot; {} entries under it in --root dropped",
                    m.mountpoint,
                    tree.len() - 1
                ));
            }
        }
        trees.push((m.target, Arc::new(tree)));
    }
    Ok(Sources { trees, empty: Arc::new(Tree::new(default_meta)) })
}
