//! Stage 1, subvolumes: ids in sorted path order (256…), each linked into the closest
//! enclosing subvolume (or the top level) under its last path component, with missing parent
//! directories created; then which subvolume is the default and which are read-only.

use std::borrow::Cow;
use std::collections::BTreeMap;

use mkdisk_tree::{InodeId, Meta, Tree};

use super::{err_plan, u64_from, FIRST_FREE_OBJECTID, FS_TREE_OBJECTID};
use crate::{BtrfsError, BtrfsOptions, Compress, SubvolSpec};

/// Subvolume links of one fs tree: directory → (name, subvolume id), sorted by name.
pub(super) type Links = BTreeMap<InodeId, Vec<(Vec<u8>, u64)>>;

/// A subvolume path as its components.
type Comps = Vec<Vec<u8>>;

/// Where a subvolume is linked: (parent tree index, directory in it, name).
pub(super) type Placement = (usize, InodeId, Vec<u8>);

/// The fs trees: the top level first, then the subvolumes in sorted path order.
pub(crate) struct Subvols<'a> {
    /// Normalised path of each subvolume, sorted (subvolume `i` is tree `i + 1`).
    pub comps: Vec<Vec<Vec<u8>>>,
    /// Every fs tree; borrowed unless the planner created a directory in it.
    pub trees: Vec<Cow<'a, Tree>>,
    /// Per tree, the first inode index the planner created (parent directories of nested
    /// subvolumes, whose times come from [`BtrfsOptions::timestamp`] when planning).
    pub created_from: Vec<usize>,
    /// Tree ids: 5, then 256….
    pub ids: Vec<u64>,
    /// Per tree, the subvolumes linked into it.
    pub links: Vec<Links>,
    /// Per subvolume, where it is linked.
    pub placement: Vec<Placement>,
    /// Per tree, its compression (`None`: raw).
    pub compress: Vec<Option<Compress>>,
}

/// The default subvolume and the read-only ones.
pub(crate) struct Roles {
    /// Id of the default subvolume (5: the top level).
    pub default_id: u64,
    /// Ids of the read-only subvolumes.
    pub readonly: Vec<u64>,
}

/// Path components of a subvolume path.
pub(super) fn normalize(path: &str) -> Result<Vec<Vec<u8>>, BtrfsError> {
    let comps: Vec<Vec<u8>> = path.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect();
    if comps.is_empty() || comps.iter().any(|c| c == b"." || c == b"..") {
        return Err(BtrfsError::BadSubvolume {
            path: path.to_string(),
            reason: "not a relative path below the top level".into(),
        });
    }
    if let Some(c) = comps.iter().find(|c| c.len() > 255) {
        return Err(BtrfsError::NameTooLong { path: path.to_string(), len: c.len() });
    }
    Ok(comps)
}

/// The subvolume specs with their normalised paths, sorted; duplicates refused.
fn sorted<'s, 'a>(subvols: &'s [SubvolSpec<'a>]) -> Result<Vec<(Comps, &'s SubvolSpec<'a>)>, BtrfsError> {
    let mut specs: Vec<(Comps, &SubvolSpec<'_>)> =
        subvols.iter().map(|s| normalize(&s.path).map(|c| (c, s))).collect::<Result<_, _>>()?;
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    for w in specs.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(BtrfsError::DuplicateSubvolume { path: w[1].1.path.clone() });
        }
    }
    Ok(specs)
}

/// Refuse a subvolume whose name exists in `dir` as anything but an empty directory (a
/// mount point, which the subvolume replaces).
fn check_slot(tree: &Tree, dir: InodeId, name: &[u8], path: &str) -> Result<(), BtrfsError> {
    let Some(d) = tree.inode(dir).as_dir() else { return Ok(()) };
    let Ok(p) = d.entries.binary_search_by(|e| e.name.as_slice().cmp(name)) else { return Ok(()) };
    let reason = match tree.inode(d.entries[p].inode).as_dir() {
        None => "exists as a non-directory in its parent",
        Some(dd) if !dd.entries.is_empty() => "a non-empty directory of that name exists in its parent",
        Some(_) => return Ok(()),
    };
    Err(BtrfsError::BadSubvolume { path: path.to_string(), reason: reason.into() })
}

/// Resolve the subvolumes of a filesystem whose top level holds `top`; `compress` is the
/// filesystem default.
pub(crate) fn resolve<'a>(
    top: &'a Tree,
    subvols: &'a [SubvolSpec<'_>],
    compress: Option<Compress>,
) -> Result<Subvols<'a>, BtrfsError> {
    let specs = sorted(subvols)?;
    let mut trees: Vec<Cow<'a, Tree>> = Vec::with_capacity(specs.len() + 1);
    trees.push(Cow::Borrowed(top));
    trees.extend(specs.iter().map(|(_, s)| Cow::Borrowed(&*s.tree)));
    let created_from: Vec<usize> = trees.iter().map(|t| t.len()).collect();
    let ids: Vec<u64> =
        std::iter::once(FS_TREE_OBJECTID).chain((0..specs.len()).map(|i| FIRST_FREE_OBJECTID + u64_from(i))).collect();
    let mut links: Vec<Links> = vec![Links::new(); trees.len()];
    let mut placement: Vec<Placement> = Vec::new();
    // New directories get their time when planned (see `created_from`).
    let dir_meta = Meta::new(0o755);
    for (i, (comps, spec)) in specs.iter().enumerate() {
        let parent = specs[..i]
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| c.len() < comps.len() && comps.starts_with(c))
            .max_by_key(|(_, (c, _))| c.len())
            .map_or(0, |(j, _)| j + 1);
        let skip = if parent == 0 { 0 } else { specs[parent - 1].0.len() };
        let (name, dirs) = comps[skip..].split_last().ok_or_else(|| err_plan("empty subvolume path"))?;
        let dir_path = dirs.join(&b'/');
        let existing = trees[parent].lookup(&dir_path).filter(|&d| trees[parent].inode(d).as_dir().is_some());
        let dir = existing
            .map_or_else(|| trees[parent].to_mut().mkdir_p(&dir_path, &dir_meta), Ok)
            .map_err(|e| BtrfsError::BadSubvolume { path: spec.path.clone(), reason: e.to_string() })?;
        check_slot(&trees[parent], dir, name, &spec.path)?;
        links[parent].entry(dir).or_default().push((name.clone(), ids[i + 1]));
        placement.push((parent, dir, name.clone()));
    }
    for v in links.iter_mut().flat_map(BTreeMap::values_mut) {
        v.sort();
    }
    let compress = std::iter::once(compress)
        .chain(specs.iter().map(|(_, s)| s.compress.or(compress)))
        .map(|c| c.filter(|c| *c != Compress::None))
        .collect();
    Ok(Subvols {
        comps: specs.into_iter().map(|(c, _)| c).collect(),
        trees,
        created_from,
        ids,
        links,
        placement,
        compress,
    })
}

/// The id of the subvolume at `path` (`reason`: the error when it is none).
fn id_of(s: &Subvols<'_>, path: &str, reason: &str) -> Result<u64, BtrfsError> {
    let c = normalize(path)?;
    let i = s
        .comps
        .iter()
        .position(|sc| *sc == c)
        .ok_or_else(|| BtrfsError::BadSubvolume { path: path.to_string(), reason: reason.to_string() })?;
    Ok(s.ids[i + 1])
}

/// The default and read-only subvolumes named in `opts`.
pub(crate) fn roles(s: &Subvols<'_>, opts: &BtrfsOptions) -> Result<Roles, BtrfsError> {
    let default_id = match &opts.default_subvolume {
        None => FS_TREE_OBJECTID,
        Some(p) if p.trim_matches('/').is_empty() => FS_TREE_OBJECTID,
        Some(p) => id_of(s, p, "the default subvolume is not one of the subvolumes")?,
    };
    let readonly = opts
        .readonly_subvolumes
        .iter()
        .map(|p| id_of(s, p, "a read-only subvolume must be one of the subvolumes"))
        .collect::<Result<_, _>>()?;
    Ok(Roles { default_id, readonly })
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::FileData;

    use super::*;

    fn spec(path: &str, tree: Tree) -> SubvolSpec<'static> {
        SubvolSpec { path: path.into(), tree: Cow::Owned(tree), compress: None }
    }

    fn empty() -> Tree {
        Tree::new(Meta::new(0o755))
    }

    #[test]
    fn ids_follow_sorted_paths_and_parents_nest() {
        let specs = [spec("b/c", empty()), spec("a", empty()), spec("b", empty())];
        let top = empty();
        let s = resolve(&top, &specs, None).unwrap();
        assert_eq!(s.comps, vec![vec![b"a".to_vec()], vec![b"b".to_vec()], vec![b"b".to_vec(), b"c".to_vec()]]);
        assert_eq!(s.ids, vec![5, 256, 257, 258]);
        // "b/c" is linked into "b" (tree 2) at its root, "a" and "b" into the top level.
        assert_eq!(s.placement[2], (2, InodeId::ROOT, b"c".to_vec()));
        assert_eq!(s.links[0][&InodeId::ROOT], vec![(b"a".to_vec(), 256), (b"b".to_vec(), 257)]);
        assert!(matches!(s.trees[0], Cow::Borrowed(_)), "no directory was created");
    }

    #[test]
    fn missing_parents_are_created_and_remembered() {
        let top = empty();
        let specs = [spec("x/y/z", empty())];
        let s = resolve(&top, &specs, None).unwrap();
        assert_eq!(s.created_from[0], 1);
        assert_eq!(s.trees[0].len(), 3, "x and x/y were created");
        assert!(s.trees[0].lookup(b"x/y").is_some());
    }

    #[test]
    fn bad_paths_and_roles_are_refused() {
        let top = empty();
        assert!(matches!(
            resolve(&top, &[spec("a", empty()), spec("/a/", empty())], None),
            Err(BtrfsError::DuplicateSubvolume { .. })
        ));
        assert!(matches!(resolve(&top, &[spec("../x", empty())], None), Err(BtrfsError::BadSubvolume { .. })));
        let mut f = empty();
        f.add_file(InodeId::ROOT, b"file", FileData::from_bytes(b"x".to_vec()), Meta::new(0o644)).unwrap();
        assert!(matches!(resolve(&f, &[spec("file", empty())], None), Err(BtrfsError::BadSubvolume { .. })));
        let specs = [spec("a", empty())];
        let s = resolve(&top, &specs, None).unwrap();
        let mut o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        o.default_subvolume = Some("/a".into());
        o.readonly_subvolumes = vec!["a".into()];
        let r = roles(&s, &o).unwrap();
        assert_eq!((r.default_id, r.readonly), (256, vec![256]));
        o.default_subvolume = Some("b".into());
        assert!(matches!(roles(&s, &o), Err(BtrfsError::BadSubvolume { .. })));
    }

    #[test]
    fn compression_none_means_raw() {
        let top = empty();
        let z = Some(Compress::Zstd { level: 3, force: false });
        let specs = [SubvolSpec { path: "a".into(), tree: Cow::Owned(empty()), compress: Some(Compress::None) }];
        let s = resolve(&top, &specs, z).unwrap();
        assert_eq!(s.compress, vec![z, None]);
    }
}
