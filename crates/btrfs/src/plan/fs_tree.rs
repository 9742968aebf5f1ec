//! Stage 5, fs trees: each inode's items (inode item, names, xattrs, directory entries, file
//! extents), inode by inode — inode numbers increase, so sorting each inode's items gives the
//! whole tree in key order — streamed straight into serialised leaves.

use std::borrow::Cow;
use std::collections::BTreeMap;

use mkdisk_tree::{Inode, Kind, Timestamp};

use super::data::ByOwner;
use super::files::FilePlan;
use super::number::{Numbered, Target};
use super::prepare::Fs;
use super::{err_plan, ino_of, show, ts, u64_from, DataExtent, FIRST_DIR_INDEX};
use crate::items::{self, InodeItem};
use crate::node::{Key, LeafStream, MAX_ITEM_DATA};
use crate::{csum, BtrfsError, GENERATION};

/// `BTRFS_MAX_XATTR_SIZE` for 16 KiB nodes.
const MAX_XATTR: usize = MAX_ITEM_DATA - items::DIR_ITEM_SIZE;
/// Longest symlink target (`PATH_MAX - 1`).
const MAX_SYMLINK: usize = 4095;

/// An fs-tree item; payloads planned in [`prepare`](super::prepare) are borrowed.
type FsItem<'p> = (Key, Cow<'p, [u8]>);

/// glibc `makedev` encoding → the kernel's `(major << 20) | minor`.
fn kernel_rdev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

fn file_type(k: &Kind) -> u8 {
    match k {
        Kind::Dir(_) => items::FT_DIR,
        Kind::File(_) => items::FT_REG_FILE,
        Kind::Symlink(_) => items::FT_SYMLINK,
        Kind::CharDev(_) => items::FT_CHRDEV,
        Kind::BlockDev(_) => items::FT_BLKDEV,
        Kind::Fifo => items::FT_FIFO,
        Kind::Socket => items::FT_SOCK,
    }
}

/// The extent items of a file stored in data extents; returns its `nbytes`.
fn extent_items(
    ino: u64,
    list: &[usize],
    extents: &[DataExtent],
    out: &mut Vec<FsItem<'_>>,
) -> Result<u64, BtrfsError> {
    let mut nbytes = 0u64;
    for &i in list {
        let e = &extents[i];
        nbytes = nbytes.checked_add(e.ram_len).ok_or_else(|| err_plan("nbytes overflow"))?;
        let compression = if e.zstd.is_some() { items::COMPRESS_ZSTD } else { 0 };
        let item = items::regular_extent(GENERATION, e.ram_len, compression, e.logical, e.disk_len, e.ram_len);
        out.push((Key::new(ino, items::EXTENT_DATA_KEY, e.file_offset), Cow::Owned(item)));
    }
    Ok(nbytes)
}

/// The inode item of the inode at `pos` and its file extent items (appended to `out`).
fn inode_item<'p>(
    fs: &Fs<'p>,
    pos: usize,
    inode: &Inode,
    data: (&ByOwner, &[DataExtent]),
    out: &mut Vec<FsItem<'p>>,
) -> Result<InodeItem, BtrfsError> {
    let ino = ino_of(pos);
    let created = fs.created(fs.n.order[pos]);
    let mtime = if created { Timestamp::from_secs(fs.time) } else { inode.meta.mtime };
    let mut it = InodeItem {
        generation: GENERATION,
        nlink: 1,
        uid: inode.meta.uid,
        gid: inode.meta.gid,
        mode: u32::from(inode.mode()),
        time: ts(mtime),
        ..InodeItem::default()
    };
    match &inode.kind {
        Kind::Dir(_) => it.size = fs.n.entries[pos].iter().map(|e| 2 * u64_from(e.name.len())).sum(),
        Kind::File(fd) => {
            it.size = fd.size;
            match &fs.prepared.files[pos] {
                FilePlan::Inline { item, .. } => {
                    it.nbytes = fd.size;
                    out.push((Key::new(ino, items::EXTENT_DATA_KEY, 0), Cow::Borrowed(item.as_slice())));
                }
                FilePlan::Ranges(_) => {
                    if let Some(list) = data.0.get(&(fs.id, ino)) {
                        it.nbytes = extent_items(ino, list, data.1, out)?;
                    }
                }
                FilePlan::None => {}
            }
        }
        Kind::Symlink(target) => {
            if target.len() > MAX_SYMLINK {
                return Err(BtrfsError::SymlinkTooLong { path: fs.n.path(pos), len: target.len() });
            }
            it.size = u64_from(target.len());
            if !target.is_empty() {
                it.nbytes = it.size;
                let item = items::inline_extent(GENERATION, it.size, 0, target);
                out.push((Key::new(ino, items::EXTENT_DATA_KEY, 0), Cow::Owned(item)));
            }
        }
        Kind::CharDev(r) | Kind::BlockDev(r) => it.rdev = kernel_rdev(*r),
        Kind::Fifo | Kind::Socket => {}
    }
    if !matches!(inode.kind, Kind::Dir(_)) {
        let links = fs.n.refs[pos].len();
        it.nlink = u32::try_from(links).map_err(|_| BtrfsError::TooManyLinks { path: fs.n.path(pos), links })?;
    }
    Ok(it)
}

/// Names: `INODE_REF` per parent, overflowing into `INODE_EXTREF`.
fn name_items(n: &Numbered<'_>, pos: usize, out: &mut Vec<FsItem<'_>>) -> Result<(), BtrfsError> {
    let ino = ino_of(pos);
    if pos == 0 {
        let mut r = Vec::new();
        items::push_inode_ref(&mut r, 0, b"..");
        out.push((Key::new(ino, items::INODE_REF_KEY, ino), Cow::Owned(r)));
        return Ok(());
    }
    let mut by_parent: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut extrefs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for &(parent, index, name) in &n.refs[pos] {
        let r = by_parent.entry(parent).or_default();
        if r.len() + items::INODE_REF_SIZE + name.len() <= MAX_ITEM_DATA {
            // Fits the INODE_REF item of this parent.
            items::push_inode_ref(r, index, name);
        } else {
            let x = extrefs.entry(csum::extref_hash(parent, name)).or_default();
            items::push_inode_extref(x, parent, index, name);
        }
    }
    for (parent, r) in by_parent {
        out.push((Key::new(ino, items::INODE_REF_KEY, parent), Cow::Owned(r)));
    }
    for (h, x) in extrefs {
        debug_assert!(x.len() >= items::INODE_EXTREF_SIZE);
        if x.len() > MAX_ITEM_DATA {
            return Err(err_plan(format!("{}: extref hash collision overflow", n.path(pos))));
        }
        out.push((Key::new(ino, items::INODE_EXTREF_KEY, h), Cow::Owned(x)));
    }
    Ok(())
}

/// Xattrs, grouped by name hash.
fn xattr_items(n: &Numbered<'_>, pos: usize, inode: &Inode, out: &mut Vec<FsItem<'_>>) -> Result<(), BtrfsError> {
    let mut xattrs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for x in &inode.meta.xattrs {
        if x.name.is_empty() || x.name.len() > 255 || x.name.len() + x.value.len() > MAX_XATTR {
            return Err(BtrfsError::XattrTooLarge { path: n.path(pos), name: show(&x.name) });
        }
        let v = xattrs.entry(csum::name_hash(&x.name)).or_default();
        items::push_dir_item(v, Key::new(0, 0, 0), GENERATION, items::FT_XATTR, &x.name, &x.value);
    }
    for (h, v) in xattrs {
        if v.len() > MAX_ITEM_DATA {
            return Err(BtrfsError::XattrTooLarge { path: n.path(pos), name: "(hash collision)".into() });
        }
        out.push((Key::new(ino_of(pos), items::XATTR_ITEM_KEY, h), Cow::Owned(v)));
    }
    Ok(())
}

/// A directory's `DIR_INDEX` items and its `DIR_ITEM`s, grouped by name hash.
fn dir_items(fs: &Fs<'_>, pos: usize, out: &mut Vec<FsItem<'_>>) -> Result<(), BtrfsError> {
    let ino = ino_of(pos);
    let n = &fs.n;
    let mut by_hash: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (k, e) in n.entries[pos].iter().enumerate() {
        let (loc, ty) = match e.target {
            Target::Subvol(sid) => (Key::new(sid, items::ROOT_ITEM_KEY, 0), items::FT_DIR),
            Target::Inode(cid) => (Key::new(n.ino(cid), items::INODE_ITEM_KEY, 0), file_type(&fs.tree.inode(cid).kind)),
        };
        let mut di = Vec::new();
        items::push_dir_item(&mut di, loc, GENERATION, ty, e.name, &[]);
        by_hash.entry(csum::name_hash(e.name)).or_default().extend_from_slice(&di);
        out.push((Key::new(ino, items::DIR_INDEX_KEY, FIRST_DIR_INDEX + u64_from(k)), Cow::Owned(di)));
    }
    for (h, v) in by_hash {
        if v.len() > MAX_ITEM_DATA {
            return Err(err_plan(format!("{}: directory hash collision overflow", n.path(pos))));
        }
        out.push((Key::new(ino, items::DIR_ITEM_KEY, h), Cow::Owned(v)));
    }
    Ok(())
}

/// One fs tree, packed as its items are made.
pub(crate) fn fs_tree(
    fs: &Fs<'_>,
    by_owner: &ByOwner,
    extents: &[DataExtent],
) -> Result<crate::node::PackedTree, BtrfsError> {
    let mut stream = LeafStream::new(fs.id);
    let mut out: Vec<FsItem<'_>> = Vec::new();
    for (pos, &id) in fs.n.order.iter().enumerate() {
        out.clear();
        let inode = fs.tree.inode(id);
        let mut tail = Vec::new();
        let it = inode_item(fs, pos, inode, (by_owner, extents), &mut tail)?;
        out.push((Key::new(ino_of(pos), items::INODE_ITEM_KEY, 0), Cow::Owned(it.encode())));
        name_items(&fs.n, pos, &mut out)?;
        xattr_items(&fs.n, pos, inode, &mut out)?;
        if matches!(inode.kind, Kind::Dir(_)) {
            dir_items(fs, pos, &mut out)?;
        }
        out.extend(tail);
        out.sort_unstable_by_key(|it| it.0);
        for (key, data) in &out {
            stream.push(*key, data).map_err(BtrfsError::Plan)?;
        }
    }
    Ok(stream.finish())
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, InodeId, Meta, Tree};

    use super::*;
    use crate::plan::subvol::Roles;
    use crate::{prepare, BtrfsOptions};

    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    #[test]
    fn rdev_is_the_kernel_encoding() {
        assert_eq!(kernel_rdev(makedev(1, 3)), (1 << 20) | 3);
        assert_eq!(kernel_rdev(makedev(259, 70_000)), (259 << 20) | 70_000);
        assert_eq!(kernel_rdev(0), 0);
    }

    fn planned_fs(t: &Tree, f: impl FnOnce(&Fs<'_>)) {
        let o = BtrfsOptions::new(1 << 30, uuid::Uuid::nil());
        let p = prepare(t, &[], &o).unwrap();
        let v = p.fs_views(&Roles { default_id: 5, readonly: Vec::new() }, &o).unwrap();
        f(&v[0]);
    }

    #[test]
    fn one_leaf_for_a_small_tree_with_its_items() {
        let mut t = Tree::new(Meta::new(0o755));
        t.add_file(InodeId::ROOT, b"f", FileData::from_bytes(b"hi".to_vec()), Meta::new(0o644)).unwrap();
        t.add_symlink(InodeId::ROOT, b"l", b"f", Meta::new(0o777)).unwrap();
        planned_fs(&t, |fs| {
            let tree = fs_tree(fs, &ByOwner::new(), &[]).unwrap();
            assert_eq!(tree.leaf_count(), 1);
            assert_eq!(tree.bodies[0].nritems, 2 + 2 * 2 + 2 * 3, "root: inode+ref, 2×(index+item); files: 3 each");
            assert!(!fs.created(InodeId::ROOT));
        });
    }

    #[test]
    fn long_symlinks_are_refused() {
        let mut t = Tree::new(Meta::new(0o755));
        t.add_symlink(InodeId::ROOT, b"l", &[b'a'; MAX_SYMLINK + 1], Meta::new(0o777)).unwrap();
        planned_fs(&t, |fs| {
            let e = fs_tree(fs, &ByOwner::new(), &[]).unwrap_err();
            assert!(matches!(e, BtrfsError::SymlinkTooLong { len: 4096, .. }), "{e:?}");
        });
    }
}
