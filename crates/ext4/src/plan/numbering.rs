//! Stage 1: inode numbers. Depth-first pre-order over byte-sorted names: the root is 2, a
//! tree `lost+found` 11, everything else 12 upwards; hard links share an inode until
//! `EXT2_LINK_MAX` names, then the link group continues in a new inode.

use mkdisk_tree::{InodeId, Kind, Tree};

use super::{path_of, FIRST_INO};
use crate::{Ext4Error, LINK_MAX};

/// The inode numbers of a tree.
pub(super) struct Numbering {
    /// Per tree inode (dirs only): ext4 inode of each entry.
    entry_inos: Vec<Vec<u32>>,
    /// Per tree inode: its first ext4 inode.
    first_ino: Vec<u32>,
    /// Per ext4 inode (index = ino - 1): tree inode and number of entries naming it.
    owner: Vec<Option<InodeId>>,
    links: Vec<u32>,
    /// lost+found comes from the tree.
    pub tree_lost_found: bool,
}

impl Numbering {
    /// The highest inode number in use (at least [`FIRST_INO`]).
    pub fn max_ino(&self) -> u32 {
        u32::try_from(self.owner.len()).expect("number() hands out u32 inode numbers only")
    }

    /// The tree inode that ext4 inode `ino` holds, if any.
    pub fn owner_of(&self, ino: u32) -> Option<InodeId> {
        self.owner.get(ino as usize - 1).copied().flatten()
    }

    /// The first ext4 inode of tree inode `t` (0 for one that no entry names).
    pub fn first_ino(&self, t: InodeId) -> u32 {
        self.first_ino[t.index()]
    }

    /// The ext4 inode of each entry of directory `t`, in entry order.
    pub fn entry_inos(&self, t: InodeId) -> &[u32] {
        &self.entry_inos[t.index()]
    }

    /// Entries naming ext4 inode `ino` (`i_links_count` of a non-directory).
    pub fn links(&self, ino: u32) -> u16 {
        let n = self.links[ino as usize - 1];
        u16::try_from(n).expect("number() splits link groups at LINK_MAX < 2^16")
    }

    /// A new inode for `t`, named once so far.
    fn push(&mut self, t: InodeId) -> Result<u32, Ext4Error> {
        let too_many =
            || Ext4Error::TooManyInodes { needed: u64::from(u32::MAX) + 1, reason: "more than 2^32 - 1".into() };
        let ino = u32::try_from(self.owner.len() + 1).map_err(|_| too_many())?;
        self.owner.push(Some(t));
        self.links.push(1);
        Ok(ino)
    }
}

/// Number the inodes of `tree`.
///
/// # Errors
/// A name longer than 255 bytes, a root `lost+found` that is not a directory, or more than
/// 2^32 - 1 inodes.
pub(super) fn number(tree: &Tree) -> Result<Numbering, Ext4Error> {
    let n = tree.len();
    let mut num = Numbering {
        entry_inos: vec![Vec::new(); n],
        first_ino: vec![0; n],
        owner: vec![None; FIRST_INO as usize],
        links: vec![0; FIRST_INO as usize],
        tree_lost_found: false,
    };
    num.owner[1] = Some(InodeId::ROOT);
    num.first_ino[0] = 2;
    // Per tree inode: the inode of its current link group.
    let mut chunk = vec![0u32; n];
    let mut stack: Vec<(InodeId, usize)> = vec![(InodeId::ROOT, 0)];
    num.entry_inos[0] = vec![0; tree.root().as_dir().map_or(0, |d| d.entries.len())];
    while let Some(&mut (d, ref mut i)) = stack.last_mut() {
        let dd = tree.inode(d).as_dir().ok_or_else(|| Ext4Error::BadPlan("non-directory on stack".into()))?;
        if *i >= dd.entries.len() {
            stack.pop();
            continue;
        }
        let idx = *i;
        *i += 1;
        let e = &dd.entries[idx];
        if e.name.len() > 255 {
            let mut p = if d == InodeId::ROOT { String::new() } else { path_of(tree, d) };
            p.push('/');
            p.push_str(&String::from_utf8_lossy(&e.name));
            return Err(Ext4Error::NameTooLong { path: p, len: e.name.len() });
        }
        let t = e.inode;
        let target = tree.inode(t);
        let ino;
        if d == InodeId::ROOT && e.name == b"lost+found" {
            if !matches!(target.kind, Kind::Dir(_)) {
                return Err(Ext4Error::LostFoundNotDir);
            }
            ino = FIRST_INO;
            num.tree_lost_found = true;
            num.first_ino[t.index()] = ino;
            num.owner[10] = Some(t);
            num.links[10] = 1;
        } else if num.first_ino[t.index()] == 0 {
            ino = num.push(t)?;
            num.first_ino[t.index()] = ino;
            chunk[t.index()] = ino;
        } else {
            let cur = chunk[t.index()];
            if num.links[cur as usize - 1] >= LINK_MAX {
                // A link group above EXT2_LINK_MAX is split into several inodes.
                ino = num.push(t)?;
                chunk[t.index()] = ino;
            } else {
                ino = cur;
                num.links[cur as usize - 1] += 1;
            }
        }
        num.entry_inos[d.index()][idx] = ino;
        if let Kind::Dir(sub) = &target.kind {
            num.entry_inos[t.index()] = vec![0; sub.entries.len()];
            stack.push((t, 0));
        }
    }
    Ok(num)
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, Meta, Tree};

    use super::*;

    fn meta() -> Meta {
        Meta::new(0o755)
    }

    #[test]
    fn preorder_with_lost_found_at_11() {
        let mut t = Tree::new(meta());
        let b = t.add_dir(InodeId::ROOT, b"b", meta()).unwrap();
        let f = t.add_file(b, b"f", FileData::from_bytes(&b"x"[..]), meta()).unwrap();
        t.add_file(InodeId::ROOT, b"a", FileData::from_bytes(&b""[..]), meta()).unwrap();
        t.add_hardlink(InodeId::ROOT, b"c", f).unwrap();
        let num = number(&t).unwrap();
        // a = 12, b = 13, b/f = 14; c is b/f again.
        assert_eq!(num.max_ino(), 14);
        assert_eq!(num.entry_inos(InodeId::ROOT), &[12, 13, 14]);
        assert_eq!(num.entry_inos(b), &[14]);
        assert_eq!(num.links(14), 2);
        assert_eq!(num.owner_of(2), Some(InodeId::ROOT));
        assert_eq!(num.owner_of(11), None);
        assert!(!num.tree_lost_found);
        let lf = t.add_dir(InodeId::ROOT, b"lost+found", meta()).unwrap();
        let num = number(&t).unwrap();
        assert!(num.tree_lost_found);
        assert_eq!(num.first_ino(lf), FIRST_INO);
    }

    #[test]
    fn long_names_and_bad_lost_found() {
        let mut t = Tree::new(meta());
        t.add_file(InodeId::ROOT, &[b'x'; 256], FileData::from_bytes(&b""[..]), meta()).unwrap();
        assert!(matches!(number(&t), Err(Ext4Error::NameTooLong { len: 256, .. })));
        let mut t = Tree::new(meta());
        t.add_file(InodeId::ROOT, b"lost+found", FileData::from_bytes(&b""[..]), meta()).unwrap();
        assert!(matches!(number(&t), Err(Ext4Error::LostFoundNotDir)));
    }
}
