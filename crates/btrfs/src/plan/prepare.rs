//! [`prepare`]: the stages that read sources — subvolumes, numbering, file plans and
//! compression — run once; [`Prepared`] keeps their outcome for any number of [`plan`]s.
//!
//! [`plan`]: super::plan

use std::sync::Arc;

use mkdisk_tree::{InodeId, Tree};

use super::files::{self, FilePlan, Piece};
use super::number::{number, Numbered};
use super::subvol::{self, Roles, Subvols};
use crate::frames::Spill;
use crate::{BtrfsError, BtrfsOptions, SubvolSpec};

/// The stored form of one fs tree's files, by numbering position.
pub(crate) struct PreparedFs {
    /// How each file is stored (`FilePlan::None` for other inodes).
    pub files: Vec<FilePlan>,
    /// The data pieces of each file.
    pub pieces: Vec<Vec<Piece>>,
}

impl PreparedFs {
    /// Whether a file is stored inline and compressed.
    pub(crate) fn inline_zstd(&self) -> bool {
        self.files.iter().any(|f| matches!(f, FilePlan::Inline { zstd: true, .. }))
    }
}

/// The trees and compressed data of a filesystem, ready to be planned at any size: the
/// outcome of [`prepare`], the input of [`plan`](super::plan) and [`min_size`](super::min_size).
/// It borrows the trees it was prepared from (and owns a copy of one only where a nested
/// subvolume needed a parent directory created), and shares its compressed frames and
/// scratch file with every layout planned from it.
pub struct Prepared<'a> {
    pub(crate) subvols: Subvols<'a>,
    pub(crate) fss: Vec<PreparedFs>,
    pub(crate) spill: Option<Arc<Spill>>,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("fs_trees", &self.fss.len())
            .field("inodes", &self.fss.iter().map(|fs| fs.files.len()).sum::<usize>())
            .field("scratch_file", &self.spill.is_some())
            .finish_non_exhaustive()
    }
}

/// One fs tree as [`plan`](super::plan) sees it.
pub(crate) struct Fs<'p> {
    pub id: u64,
    pub readonly: bool,
    pub tree: &'p Tree,
    /// First inode index created by the planner (its time is the options' timestamp).
    pub created_from: usize,
    pub n: Numbered<'p>,
    pub prepared: &'p PreparedFs,
    pub uuid: [u8; 16],
    /// [`BtrfsOptions::timestamp`], the time of created directories.
    pub time: i64,
}

impl Fs<'_> {
    /// Whether the planner created inode `id` (a parent directory of a subvolume).
    pub(crate) fn created(&self, id: InodeId) -> bool {
        id.index() >= self.created_from
    }
}

/// Read and compress what planning needs, once: resolve the subvolumes, number every fs tree,
/// decide how each file is stored (reading inline files), and compress every candidate chunk
/// in parallel (rayon), keeping the frames that will be stored — in memory, or in an unnamed
/// scratch file in [`BtrfsOptions::scratch_dir`]. Of `opts` it uses only `compress` and
/// `scratch_dir`; the others matter to [`plan`](super::plan).
///
/// # Errors
/// Names over 255 bytes, duplicate or impossible subvolume paths, unreadable sources,
/// [`BtrfsError::Compress`] from zstd and [`BtrfsError::Scratch`] from the scratch file.
pub fn prepare<'a>(
    top: &'a Tree,
    subvols: &'a [SubvolSpec<'_>],
    opts: &BtrfsOptions,
) -> Result<Prepared<'a>, BtrfsError> {
    let s = subvol::resolve(top, subvols, opts.compress)?;
    let numbered: Vec<Numbered<'_>> =
        s.trees.iter().zip(&s.links).map(|(t, l)| number(t, l)).collect::<Result<_, _>>()?;
    let plans: Vec<Vec<FilePlan>> = s
        .trees
        .iter()
        .zip(&numbered)
        .zip(&s.compress)
        .map(|((t, n), &c)| files::file_plans(t, n, c))
        .collect::<Result<_, _>>()?;
    let mut cands = Vec::new();
    for (((t, n), f), &c) in s.trees.iter().zip(&numbered).zip(&plans).zip(&s.compress) {
        files::candidates(t, n, f, c, &mut cands);
    }
    let spill = match (&opts.scratch_dir, cands.is_empty()) {
        (Some(dir), false) => Some(Arc::new(Spill::new(dir)?)),
        _ => None,
    };
    let frames = files::compress_all(&cands, spill.as_deref())?;
    drop(cands);
    drop(numbered);
    let mut frames = frames.into_iter();
    let fss = plans
        .into_iter()
        .zip(&s.compress)
        .map(|(files, &c)| {
            let pieces = files::pieces(&files, c, &mut frames)?;
            Ok(PreparedFs { files, pieces })
        })
        .collect::<Result<_, BtrfsError>>()?;
    Ok(Prepared { subvols: s, fss, spill })
}

impl Prepared<'_> {
    /// The fs trees, numbered again (numbering is deterministic, so positions match the
    /// prepared files), with their ids, flags and UUIDs.
    pub(crate) fn fs_views(&self, roles: &Roles, opts: &BtrfsOptions) -> Result<Vec<Fs<'_>>, BtrfsError> {
        let s = &self.subvols;
        let mut out = Vec::with_capacity(s.trees.len());
        for (t, tree) in s.trees.iter().enumerate() {
            let n = number(tree, &s.links[t])?;
            let prepared = &self.fss[t];
            if n.order.len() != prepared.files.len() {
                return Err(BtrfsError::Plan("numbering differs from the prepared one".into()));
            }
            let id = s.ids[t];
            let uuid = *mkdisk_tree::ids::derive(&opts.uuid, format!("btrfs-subvol-uuid:{id}").as_bytes()).as_bytes();
            out.push(Fs {
                id,
                readonly: roles.readonly.contains(&id),
                tree,
                created_from: s.created_from[t],
                n,
                prepared,
                uuid,
                time: opts.timestamp,
            });
        }
        Ok(out)
    }

    /// The effective compression of each fs tree (`None`: raw).
    #[cfg(test)]
    pub(crate) fn compression(&self) -> &[Option<crate::Compress>] {
        &self.subvols.compress
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use mkdisk_tree::{FileData, Meta};

    use super::*;
    use crate::Compress;

    fn tree(files: &[(&str, Vec<u8>)]) -> Tree {
        let mut t = Tree::new(Meta::new(0o755));
        for (name, bytes) in files {
            t.add_file(InodeId::ROOT, name.as_bytes(), FileData::from_bytes(bytes.clone()), Meta::new(0o644)).unwrap();
        }
        t
    }

    #[test]
    fn compresses_once_and_keeps_saving_frames() {
        let t = tree(&[("zeros", vec![0u8; 300_000]), ("small", b"hello".to_vec())]);
        let mut o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        o.compress = Some(Compress::Zstd { level: 3, force: false });
        let p = prepare(&t, &[], &o).unwrap();
        assert_eq!(p.compression(), &[o.compress]);
        // Root, "small", "zeros" in name order.
        assert!(matches!(p.fss[0].files[1], FilePlan::Inline { .. }));
        let kinds: Vec<bool> = p.fss[0].pieces[2].iter().map(|p| p.zstd.is_some()).collect();
        assert_eq!(kinds, vec![true, true, true], "three compressed 128 KiB chunks (the last is 38 KiB)");
        assert!(p.spill.is_none());
        assert!(format!("{p:?}").contains("fs_trees: 1"));
    }

    #[test]
    fn scratch_file_only_with_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        o.scratch_dir = Some(dir.path().to_path_buf());
        o.compress = Some(Compress::Zstd { level: 1, force: true });
        let t = tree(&[("z", vec![0u8; 200_000])]);
        assert!(prepare(&t, &[], &o).unwrap().spill.is_some());
        let t = tree(&[("s", b"x".to_vec())]);
        assert!(prepare(&t, &[], &o).unwrap().spill.is_none());
    }

    #[test]
    fn views_renumber_the_same_way() {
        let sub = tree(&[("a", vec![1u8; 10_000])]);
        let specs = [SubvolSpec { path: "x/sv".into(), tree: Cow::Borrowed(&sub), compress: None }];
        let top = tree(&[("b", vec![2u8; 5])]);
        let o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        let p = prepare(&top, &specs, &o).unwrap();
        let roles = Roles { default_id: 5, readonly: vec![256] };
        let v = p.fs_views(&roles, &o).unwrap();
        assert_eq!(v.iter().map(|f| (f.id, f.readonly)).collect::<Vec<_>>(), vec![(5, false), (256, true)]);
        // The top level got directory "x" (created) for the subvolume.
        let x = v[0].tree.lookup(b"x").unwrap();
        assert!(v[0].created(x));
        assert!(!v[0].created(InodeId::ROOT));
        assert_ne!(v[0].uuid, v[1].uuid);
    }
}
