//! Stage 2, numbering: inode numbers follow a pre-order walk over sorted names (the root is
//! 256), hard links keep their first number, and each directory's entries (tree entries merged
//! with the subvolumes linked into it, which shadow an empty directory of the same name) get
//! the directory indices 2, 3, ….

use mkdisk_tree::{InodeId, Tree};

use super::subvol::Links;
use super::{ino_of, show, u64_from, FIRST_DIR_INDEX};
use crate::BtrfsError;

/// The target of a directory entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Inode(InodeId),
    Subvol(u64),
}

/// One directory entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirEnt<'a> {
    pub name: &'a [u8],
    pub target: Target,
}

/// One fs tree's inodes in numbering order (inode number = 256 + position).
pub(crate) struct Numbered<'a> {
    pub order: Vec<InodeId>,
    /// Position of each tree inode (`usize::MAX`: unreachable).
    pos_of: Vec<usize>,
    /// Entries of each directory position (empty for non-directories).
    pub entries: Vec<Vec<DirEnt<'a>>>,
    /// Names of each inode: (parent ino, dir index, name).
    pub refs: Vec<Vec<(u64, u64, &'a [u8])>>,
    /// First name and parent position, for error paths.
    first: Vec<(usize, &'a [u8])>,
}

impl Numbered<'_> {
    pub(super) fn pos_of(&self, id: InodeId) -> Option<usize> {
        self.pos_of.get(id.index()).copied().filter(|&p| p != usize::MAX)
    }

    /// Path of the inode at `pos`, for errors.
    pub(super) fn path(&self, mut pos: usize) -> String {
        let mut comps = Vec::new();
        while pos != 0 {
            let (p, n) = self.first[pos];
            comps.push(show(n));
            pos = p;
        }
        comps.reverse();
        format!("/{}", comps.join("/"))
    }

    /// Inode number of a reachable tree inode.
    pub(super) fn ino(&self, id: InodeId) -> u64 {
        ino_of(self.pos_of(id).expect("numbering gives every reachable inode a position"))
    }
}

/// The entries of directory `dir` (at position `dpos`) merged with the subvolumes linked
/// into it, by name.
fn merged<'a>(
    tree: &'a Tree,
    links: &'a Links,
    dir: InodeId,
    n: &Numbered<'a>,
    dpos: usize,
) -> Result<Vec<DirEnt<'a>>, BtrfsError> {
    let d = tree.inode(dir).as_dir().map(|d| d.entries.as_slice()).unwrap_or(&[]);
    let l: &[(Vec<u8>, u64)] = links.get(&dir).map_or(&[], Vec::as_slice);
    let mut out = Vec::with_capacity(d.len() + l.len());
    let (mut i, mut j) = (0, 0);
    while i < d.len() || j < l.len() {
        let take_link = j < l.len() && (i >= d.len() || l[j].0.as_slice() <= d[i].name.as_slice());
        if take_link {
            if i < d.len() && d[i].name == l[j].0 {
                i += 1; // shadowed by the subvolume
            }
            out.push(DirEnt { name: &l[j].0, target: Target::Subvol(l[j].1) });
            j += 1;
        } else {
            let e = &d[i];
            if e.name.len() > 255 {
                return Err(BtrfsError::NameTooLong {
                    path: format!("{}/{}", n.path(dpos).trim_end_matches('/'), show(&e.name)),
                    len: e.name.len(),
                });
            }
            out.push(DirEnt { name: &e.name, target: Target::Inode(e.inode) });
            i += 1;
        }
    }
    Ok(out)
}

/// Number `tree` with the subvolumes in `links`.
pub(crate) fn number<'a>(tree: &'a Tree, links: &'a Links) -> Result<Numbered<'a>, BtrfsError> {
    let mut n = Numbered {
        order: vec![InodeId::ROOT],
        pos_of: vec![usize::MAX; tree.len()],
        entries: Vec::new(),
        refs: vec![Vec::new()],
        first: vec![(0, b"")],
    };
    n.pos_of[0] = 0;
    let root_entries = merged(tree, links, InodeId::ROOT, &n, 0)?;
    n.entries.push(root_entries);
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some(top) = stack.last_mut() {
        let (p, k) = *top;
        if k >= n.entries[p].len() {
            stack.pop();
            continue;
        }
        top.1 += 1;
        let ent = n.entries[p][k];
        let Target::Inode(id) = ent.target else { continue };
        let index = FIRST_DIR_INDEX + u64_from(k);
        let parent_ino = ino_of(p);
        if n.pos_of[id.index()] != usize::MAX {
            let q = n.pos_of[id.index()];
            n.refs[q].push((parent_ino, index, ent.name));
            continue;
        }
        let q = n.order.len();
        n.pos_of[id.index()] = q;
        n.order.push(id);
        n.refs.push(vec![(parent_ino, index, ent.name)]);
        n.first.push((p, ent.name));
        if tree.inode(id).as_dir().is_some() {
            let e = merged(tree, links, id, &n, q)?;
            n.entries.push(e);
            stack.push((q, 0));
        } else {
            n.entries.push(Vec::new());
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, Meta};

    use super::*;

    #[test]
    fn pre_order_with_hard_links_and_subvolumes() {
        let mut t = Tree::new(Meta::new(0o755));
        let d = t.mkdir_p(b"d", &Meta::new(0o755)).unwrap();
        let f = t.add_file(d, b"f", FileData::from_bytes(b"x".to_vec()), Meta::new(0o644)).unwrap();
        t.add_hardlink(InodeId::ROOT, b"z", f).unwrap();
        t.mkdir_p(b"mnt", &Meta::new(0o755)).unwrap();
        let mut links = Links::new();
        links.entry(InodeId::ROOT).or_default().push((b"mnt".to_vec(), 256));
        let n = number(&t, &links).unwrap();
        // Root, d, d/f; "mnt" is shadowed by the subvolume; "z" is f again.
        assert_eq!(n.order, vec![InodeId::ROOT, d, f]);
        assert_eq!(n.ino(f), 258);
        assert_eq!(n.refs[2], vec![(257, 2, &b"f"[..]), (256, 4, &b"z"[..])]);
        assert_eq!(n.entries[0].len(), 3);
        assert!(matches!(n.entries[0][1].target, Target::Subvol(256)));
        assert_eq!(n.path(2), "/d/f");
    }

    #[test]
    fn long_names_are_refused_with_their_path() {
        let mut t = Tree::new(Meta::new(0o755));
        let d = t.mkdir_p(b"d", &Meta::new(0o755)).unwrap();
        t.add_file(d, &[b'a'; 256], FileData::from_bytes(b"x".to_vec()), Meta::new(0o644)).unwrap();
        let links = Links::new();
        let Err(BtrfsError::NameTooLong { path, len }) = number(&t, &links) else { panic!("expected NameTooLong") };
        assert_eq!(len, 256);
        assert!(path.starts_with("/d/aaa"), "{path}");
    }
}
