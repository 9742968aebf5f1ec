//! Stage 4a: directories. Entries sorted by name with `.` and `..`, one linear block when they
//! fit, else a hashed (htree) directory of one or two levels; our own `lost+found` when the
//! tree has none.

use mkdisk_tree::{DirData, InodeId, Kind, Tree};

use super::alloc::{finish_extents, push_extents, Alloc};
use super::numbering::Numbering;
use super::{path_of, Body, DirBlock, Ident, PInode, FIRST_INO};
use crate::dir::{self, DirEnt, LEAF_SPACE};
use crate::htree::{self, DX_NODE_LIMIT, DX_ROOT_LIMIT};
use crate::inode::{EXTENTS_FL, INDEX_FL};
use crate::{Ext4Error, BS, LINK_MAX};

/// The directory entry file type of `kind`.
fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir(_) => dir::FT_DIR,
        Kind::File(_) => dir::FT_REG,
        Kind::Symlink(_) => dir::FT_SYMLINK,
        Kind::CharDev(_) => dir::FT_CHR,
        Kind::BlockDev(_) => dir::FT_BLK,
        Kind::Fifo => dir::FT_FIFO,
        Kind::Socket => dir::FT_SOCK,
    }
}

/// Our own lost+found (inode 11, when the tree has none): 4 blocks, 0700.
///
/// # Errors
/// [`Ext4Error::BadPlan`] only (its 4 blocks always fit an extent root).
pub(super) fn lost_found(p: &mut PInode, ident: &Ident, al: &mut Alloc) -> Result<(), Ext4Error> {
    let blocks = vec![
        DirBlock::Leaf(vec![
            DirEnt { ino: FIRST_INO, ft: dir::FT_DIR, name: b".".to_vec() },
            DirEnt { ino: 2, ft: dir::FT_DIR, name: b"..".to_vec() },
        ]),
        DirBlock::Leaf(Vec::new()),
        DirBlock::Leaf(Vec::new()),
        DirBlock::Leaf(Vec::new()),
    ];
    p.fields.mode = 0o040700;
    p.fields.links = 2;
    p.fields.time_sec = ident.timestamp;
    place(p, ident.seed, FIRST_INO, blocks, false, al)
}

/// Plan directory `t` (inode `ino`, whose fields are set but for links and blocks).
///
/// # Errors
/// [`Ext4Error::DirectoryTooLarge`] beyond a two-level htree.
#[allow(clippy::too_many_arguments, reason = "the stage's context, kept as plain references")]
pub(super) fn plan(
    tree: &Tree,
    num: &Numbering,
    ident: &Ident,
    ino: u32,
    t: InodeId,
    d: &DirData,
    p: &mut PInode,
    al: &mut Alloc,
) -> Result<(), Ext4Error> {
    let parent = if t == InodeId::ROOT { 2 } else { num.first_ino(d.parent) };
    let mut ents: Vec<DirEnt> = d
        .entries
        .iter()
        .zip(num.entry_inos(t))
        .map(|(e, &i)| DirEnt { ino: i, ft: file_type(&tree.inode(e.inode).kind), name: e.name.clone() })
        .collect();
    let mut subdirs = u64::from(tree.subdir_count(t));
    if t == InodeId::ROOT && !num.tree_lost_found {
        let lf = DirEnt { ino: FIRST_INO, ft: dir::FT_DIR, name: b"lost+found".to_vec() };
        let at = ents.partition_point(|e| e.name.as_slice() < b"lost+found".as_slice());
        ents.insert(at, lf);
        subdirs += 1;
    }
    // dir_nlink: a directory with more than EXT2_LINK_MAX links counts 1.
    let links = 2 + subdirs;
    p.fields.links =
        if links > u64::from(LINK_MAX) { 1 } else { u16::try_from(links).expect("links <= LINK_MAX < 2^16") };
    let (blocks, indexed) = blocks(&ident.hash_seed, ino, parent, ents, &|| path_of(tree, t))?;
    place(p, ident.seed, ino, blocks, indexed, al)
}

/// Directory blocks for `ents` (sorted, without `.`/`..`): one linear block when they fit,
/// else an htree. Returns blocks in logical order and whether it is indexed.
fn blocks(
    hash_seed: &[u8; 16],
    ino: u32,
    parent: u32,
    ents: Vec<DirEnt>,
    path: &dyn Fn() -> String,
) -> Result<(Vec<DirBlock>, bool), Ext4Error> {
    let total: usize = 24 + ents.iter().map(|e| dir::rec_len(e.name.len())).sum::<usize>();
    if total <= LEAF_SPACE {
        let mut v = Vec::with_capacity(ents.len() + 2);
        v.push(DirEnt { ino, ft: dir::FT_DIR, name: b".".to_vec() });
        v.push(DirEnt { ino: parent, ft: dir::FT_DIR, name: b"..".to_vec() });
        v.extend(ents);
        return Ok((vec![DirBlock::Leaf(v)], false));
    }
    let (leaves, keys) = hashed_leaves(hash_seed, ents);
    let n = leaves.len();
    // Logical block numbers: the root is 0, leaves 1..=n, interior nodes after them.
    let lblk = |i: usize| u32::try_from(i).expect("at most 1 + 507 × 510 + 507 directory blocks");
    let mut blocks = Vec::with_capacity(n + 2);
    if n <= DX_ROOT_LIMIT {
        let entries = (0..n).map(|i| (keys[i], lblk(i + 1))).collect();
        blocks.push(DirBlock::Root { parent, levels: 0, entries });
        blocks.extend(leaves.into_iter().map(DirBlock::Leaf));
    } else {
        let nodes = n.div_ceil(DX_NODE_LIMIT);
        if nodes > DX_ROOT_LIMIT {
            return Err(Ext4Error::DirectoryTooLarge { path: path(), leaves: n as u64 });
        }
        let entries = (0..nodes).map(|j| (keys[j * DX_NODE_LIMIT], lblk(1 + n + j))).collect();
        blocks.push(DirBlock::Root { parent, levels: 1, entries });
        blocks.extend(leaves.into_iter().map(DirBlock::Leaf));
        for j in 0..nodes {
            let hi = ((j + 1) * DX_NODE_LIMIT).min(n);
            let entries = (j * DX_NODE_LIMIT..hi).map(|i| (keys[i], lblk(i + 1))).collect();
            blocks.push(DirBlock::Node(entries));
        }
    }
    Ok((blocks, true))
}

/// `ents` in hash order, cut into leaves, with each leaf's index key (0 for the first).
fn hashed_leaves(hash_seed: &[u8; 16], ents: Vec<DirEnt>) -> (Vec<Vec<DirEnt>>, Vec<u32>) {
    // Sorted by the kernel's major hash, which maps 0xFFFFFFFE to 0xFFFFFFFC (the 32-bit EOF
    // marker); ties by the unmapped value, so that a checker that does not map (e2fsprogs,
    // by docs/ext4.md) still sees hashes rising within a leaf. Index keys come from the
    // kernel's value: none ever lies in (0xFFFFFFFC, 0xFFFFFFFE], where the two disagree.
    let mut hashed: Vec<(u32, u32, u32, DirEnt)> = ents
        .into_iter()
        .map(|e| {
            let (raw, min) = htree::half_md4(&e.name, hash_seed);
            (htree::kernel_major(raw), raw, min, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2, &a.3.name).cmp(&(b.0, b.1, b.2, &b.3.name)));
    let mut leaves: Vec<Vec<DirEnt>> = Vec::new();
    let mut keys: Vec<u32> = Vec::new();
    let mut left = 0usize;
    let mut prev_major: Option<u32> = None;
    for (maj, _raw, _min, e) in hashed {
        let rl = dir::rec_len(e.name.len());
        if leaves.is_empty() || rl > left {
            // A leaf that starts within a run of equal hashes gets the collision bit.
            let key = if prev_major == Some(maj) { maj | 1 } else { maj };
            keys.push(if leaves.is_empty() { 0 } else { key });
            leaves.push(Vec::new());
            left = LEAF_SPACE;
        }
        left -= rl;
        prev_major = Some(maj);
        if let Some(l) = leaves.last_mut() {
            l.push(e);
        }
    }
    (leaves, keys)
}

/// Allocate `blocks` for directory `ino` and record them in `p`.
fn place(
    p: &mut PInode,
    seed: u32,
    ino: u32,
    blocks: Vec<DirBlock>,
    indexed: bool,
    al: &mut Alloc,
) -> Result<(), Ext4Error> {
    let nb = blocks.len() as u64;
    let pieces = al.alloc(nb);
    let mut exts = Vec::new();
    push_extents(&mut exts, 0, &pieces).ok_or_else(|| Ext4Error::BadPlan("directory extents".into()))?;
    let phys: Vec<u64> = pieces.iter().flat_map(|&(s, l)| s..s + l).collect();
    p.is_dir = true;
    p.fields.size = nb * BS;
    p.fields.flags = EXTENTS_FL | if indexed { INDEX_FL } else { 0 };
    p.fields.blocks_512 += nb * (BS / 512);
    finish_extents(p, seed, ino, &exts, al).map_err(Ext4Error::BadPlan)?;
    p.body = Body::Dir(phys.into_iter().zip(blocks).collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(i: u32) -> DirEnt {
        DirEnt { ino: 100 + i, ft: dir::FT_REG, name: format!("file-with-a-longish-name-{i:06}").into_bytes() }
    }

    fn no_path() -> String {
        String::from("/d")
    }

    #[test]
    fn small_directory_is_one_linear_block() {
        let (b, indexed) = blocks(&[0; 16], 12, 2, vec![ent(0), ent(1)], &no_path).unwrap();
        assert!(!indexed);
        let [DirBlock::Leaf(v)] = b.as_slice() else { panic!("{b:?}") };
        let names: Vec<&[u8]> = v.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(&names[..2], &[&b"."[..], &b".."[..]]);
        assert_eq!((v[0].ino, v[1].ino, v.len()), (12, 2, 4));
    }

    #[test]
    fn large_directory_is_an_htree() {
        let ents: Vec<DirEnt> = (0..1000).map(ent).collect();
        let (b, indexed) = blocks(&[0; 16], 12, 2, ents, &no_path).unwrap();
        assert!(indexed);
        let DirBlock::Root { parent: 2, levels: 0, entries } = &b[0] else { panic!("{:?}", b[0]) };
        assert_eq!(entries.len(), b.len() - 1);
        assert_eq!(entries[0].0, 0);
        assert!(entries.windows(2).all(|w| w[0].0 <= w[1].0 && w[1].1 == w[0].1 + 1));
        let in_leaves: usize = b[1..].iter().map(|l| if let DirBlock::Leaf(v) = l { v.len() } else { 0 }).sum();
        assert_eq!(in_leaves, 1000);
    }

    #[test]
    fn two_levels() {
        // 40-byte records, 102 per leaf: over 507 leaves needs interior nodes. (Too large, over
        // 507 × 510 leaves, takes millions of entries: tests/ext4.rs has no such case either.)
        let ents: Vec<DirEnt> = (0..60_000).map(ent).collect();
        let (b, _) = blocks(&[0; 16], 12, 2, ents, &no_path).unwrap();
        let DirBlock::Root { levels: 1, entries, .. } = &b[0] else { panic!("{:?}", b[0]) };
        assert!(matches!(b.last(), Some(DirBlock::Node(_))));
        assert_eq!(entries.len(), b.iter().filter(|x| matches!(x, DirBlock::Node(_))).count());
    }

    #[test]
    fn lost_found_has_four_blocks() {
        let ident = Ident { uuid: [0; 16], hash_seed: [0; 16], label: [0; 16], seed: 0, timestamp: 5 };
        let mut al = Alloc::new(vec![(100, 10)], Vec::new());
        let mut p = PInode::unused();
        lost_found(&mut p, &ident, &mut al).unwrap();
        assert!(p.is_dir);
        assert_eq!((p.fields.mode, p.fields.links, p.fields.size, p.fields.time_sec), (0o040700, 2, 4 * BS, 5));
        let Body::Dir(b) = &p.body else { panic!("{:?}", p.body) };
        assert_eq!(b.iter().map(|x| x.0).collect::<Vec<_>>(), vec![100, 101, 102, 103]);
    }
}
