//! The planner: a pure function from a tree and options to a complete layout. Every inode
//! number, block, extent and directory block is decided here, in a deterministic order:
//! inodes in depth-first pre-order over byte-sorted names (root 2, lost+found 11, then 12..),
//! fixed metadata per flex group, the journal, then each inode's blocks in inode order.

use mkdisk_tree::{InodeId, Kind, Tree};

use crate::dir::{self, DirEnt, LEAF_SPACE};
use crate::extent::{self, Extent};
use crate::group_desc::{GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED};
use crate::htree::{self, DX_NODE_LIMIT, DX_ROOT_LIMIT};
use crate::inode::{clamp_time, InodeFields, EXTENTS_FL, INDEX_FL};
use crate::superblock::{has_super, SbFields};
use crate::{csum, journal, xattr, Ext4Error, Ext4Options, BLOCKS_PER_GROUP, BS, LINK_MAX};

/// Inodes per block of the inode table.
const INODES_PER_BLOCK: u32 = (crate::BLOCK_SIZE / crate::inode::INODE_SIZE) as u32;
/// Groups per flex group.
const FLEX: u32 = 1 << crate::superblock::LOG_GROUPS_PER_FLEX;
/// First non-reserved inode.
const FIRST_INO: u32 = 11;

/// A directory block as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirBlock {
    /// A linear block (or htree leaf).
    Leaf(Vec<DirEnt>),
    /// An htree root: parent inode, indirect levels, `(hash, logical block)` entries.
    Root { parent: u32, levels: u8, entries: Vec<(u32, u32)> },
    /// An htree interior node.
    Node(Vec<(u32, u32)>),
}

/// What an inode's blocks hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Nothing beyond the inode itself (reserved, special files, fast symlinks, empty files).
    Empty,
    /// Directory blocks at their physical block numbers.
    Dir(Vec<(u64, DirBlock)>),
    /// A slow symlink's block.
    Symlink { pblk: u64, target: Vec<u8> },
    /// File data: the tree inode and its extents.
    File { tree: InodeId, extents: Vec<Extent> },
    /// The journal: its extents (only the first block is written).
    Journal { extents: Vec<Extent> },
}

/// One planned inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PInode {
    pub fields: InodeFields,
    pub body: Body,
    /// Extent tree blocks (already checksummed).
    pub ext_blocks: Vec<(u64, Vec<u8>)>,
    /// Xattr block number and bytes (without checksum).
    pub xattr_block: Option<(u64, Vec<u8>)>,
    /// Whether the inode is a directory (for `bg_used_dirs_count`).
    pub is_dir: bool,
}

/// The complete plan of one ext4 filesystem, produced by [`plan`] and executed by
/// [`crate::write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Layout {
    pub(crate) seed: u32,
    pub(crate) blocks_count: u64,
    pub(crate) ipg: u32,
    pub(crate) itb: u64,
    pub(crate) desc_blocks: u64,
    pub(crate) groups: Vec<GroupDesc>,
    pub(crate) used: Vec<(u64, u64)>,
    /// Inodes 1..=max, index = ino - 1.
    pub(crate) inodes: Vec<PInode>,
    pub(crate) sb: SbFields,
    pub(crate) assume_zeroed: bool,
    /// Paths of the entries whose mtime was clamped, sorted.
    pub(crate) clamped_times: Vec<String>,
}

impl Ext4Layout {
    /// `s_blocks_count`.
    #[must_use]
    pub fn blocks_count(&self) -> u64 {
        self.blocks_count
    }
    /// Bytes the filesystem occupies (`s_blocks_count × 4096`), at most the requested size.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.blocks_count * BS
    }
    /// `s_inodes_count`.
    #[must_use]
    pub fn inodes_count(&self) -> u32 {
        self.sb.inodes_count
    }
    /// Highest used inode number.
    #[must_use]
    pub fn used_inodes(&self) -> u32 {
        self.inodes.len() as u32
    }
    /// `s_free_blocks_count`.
    #[must_use]
    pub fn free_blocks(&self) -> u64 {
        self.sb.free_blocks
    }
    /// The group descriptors (without bitmap checksums, which `write` computes).
    #[must_use]
    pub fn groups(&self) -> &[GroupDesc] {
        &self.groups
    }
    /// Sorted paths of the entries whose mtime lies outside
    /// [`crate::TIME_MIN`]`..=`[`crate::TIME_MAX`] and was clamped to the nearer bound, for the
    /// caller to warn about. Rendered as in this crate's errors (`/dir/file`, `/` for the root);
    /// a hard-linked file is named once, by its first path in tree walk order.
    #[must_use]
    pub fn clamped_times(&self) -> &[String] {
        &self.clamped_times
    }
}

struct Numbering {
    /// Per tree inode (dirs only): ext4 inode of each entry.
    entry_inos: Vec<Vec<u32>>,
    /// Per tree inode: its first ext4 inode.
    first_ino: Vec<u32>,
    /// Per ext4 inode (index = ino - 1): tree inode and number of entries naming it.
    owner: Vec<Option<InodeId>>,
    links: Vec<u32>,
    /// lost+found comes from the tree.
    tree_lost_found: bool,
}

fn path_of(tree: &Tree, id: InodeId) -> String {
    tree.paths().get(id.index()).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default()
}

fn number(tree: &Tree) -> Result<Numbering, Ext4Error> {
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
    let mut chunk = vec![0u32; n];
    let mut stack: Vec<(InodeId, usize)> = vec![(InodeId::ROOT, 0)];
    num.entry_inos[0] = vec![0; tree.root().as_dir().map_or(0, |d| d.entries.len())];
    let too_many = || Ext4Error::TooManyInodes { needed: u64::from(u32::MAX), reason: "more than 2^32".into() };
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
        let is_dir = matches!(target.kind, Kind::Dir(_));
        let ino;
        if d == InodeId::ROOT && e.name == b"lost+found" {
            if !is_dir {
                return Err(Ext4Error::LostFoundNotDir);
            }
            ino = FIRST_INO;
            num.tree_lost_found = true;
            num.first_ino[t.index()] = ino;
            num.owner[10] = Some(t);
            num.links[10] = 1;
        } else if num.first_ino[t.index()] == 0 {
            ino = u32::try_from(num.owner.len() + 1).map_err(|_| too_many())?;
            num.owner.push(Some(t));
            num.links.push(1);
            num.first_ino[t.index()] = ino;
            chunk[t.index()] = ino;
        } else {
            let cur = chunk[t.index()];
            if num.links[(cur - 1) as usize] >= LINK_MAX {
                // A link group above EXT2_LINK_MAX is split into several inodes.
                ino = u32::try_from(num.owner.len() + 1).map_err(|_| too_many())?;
                num.owner.push(Some(t));
                num.links.push(1);
                chunk[t.index()] = ino;
            } else {
                ino = cur;
                num.links[(cur - 1) as usize] += 1;
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

/// Directory blocks for `ents` (sorted, without `.`/`..`): one linear block when they fit,
/// else an htree. Returns blocks in logical order and whether it is indexed.
fn plan_dir(
    hash_seed: &[u8; 16],
    ino: u32,
    parent: u32,
    ents: Vec<DirEnt>,
    path: &dyn Fn() -> String,
) -> Result<(Vec<DirBlock>, bool), Ext4Error> {
    let dot = |ino| DirEnt { ino, ft: dir::FT_DIR, name: b".".to_vec() };
    let dotdot = |ino| DirEnt { ino, ft: dir::FT_DIR, name: b"..".to_vec() };
    let total: usize = 24 + ents.iter().map(|e| dir::rec_len(e.name.len())).sum::<usize>();
    if total <= LEAF_SPACE {
        let mut v = Vec::with_capacity(ents.len() + 2);
        v.push(dot(ino));
        v.push(dotdot(parent));
        v.extend(ents);
        return Ok((vec![DirBlock::Leaf(v)], false));
    }
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
    let n = leaves.len();
    let mut blocks = Vec::with_capacity(n + 2);
    if n <= DX_ROOT_LIMIT {
        let entries = (0..n).map(|i| (keys[i], (i + 1) as u32)).collect();
        blocks.push(DirBlock::Root { parent, levels: 0, entries });
        blocks.extend(leaves.into_iter().map(DirBlock::Leaf));
    } else {
        let nodes = n.div_ceil(DX_NODE_LIMIT);
        if nodes > DX_ROOT_LIMIT {
            return Err(Ext4Error::DirectoryTooLarge { path: path(), leaves: n as u64 });
        }
        let entries = (0..nodes).map(|j| (keys[j * DX_NODE_LIMIT], (1 + n + j) as u32)).collect();
        blocks.push(DirBlock::Root { parent, levels: 1, entries });
        blocks.extend(leaves.into_iter().map(DirBlock::Leaf));
        for j in 0..nodes {
            let hi = ((j + 1) * DX_NODE_LIMIT).min(n);
            let entries = (j * DX_NODE_LIMIT..hi).map(|i| (keys[i], (i + 1) as u32)).collect();
            blocks.push(DirBlock::Node(entries));
        }
    }
    Ok((blocks, true))
}

/// Free-space cursor over the blocks not taken by fixed metadata.
struct Alloc {
    free: Vec<(u64, u64)>,
    idx: usize,
    off: u64,
    overflow: u64,
    used: Vec<(u64, u64)>,
}

impl Alloc {
    fn alloc(&mut self, mut n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(&(s, l)) = self.free.get(self.idx) else {
                self.overflow = self.overflow.saturating_add(n);
                break;
            };
            let take = (l - self.off).min(n);
            out.push((s + self.off, take));
            self.used.push((s + self.off, take));
            self.off += take;
            n -= take;
            if self.off == l {
                self.idx += 1;
                self.off = 0;
            }
        }
        out
    }

    fn blocks(&mut self, n: u64) -> Vec<u64> {
        self.alloc(n).into_iter().flat_map(|(s, l)| s..s + l).collect()
    }
}

/// Append extents for logical blocks starting at `lblk` mapped to `pieces`.
fn push_extents(exts: &mut Vec<Extent>, mut lblk: u64, pieces: &[(u64, u64)]) -> Option<()> {
    for &(mut p, mut l) in pieces {
        while l > 0 {
            if let Some(last) = exts.last_mut() {
                let ll = u64::from(last.len);
                if u64::from(last.lblk) + ll == lblk && last.pblk + ll == p && ll < extent::MAX_LEN {
                    let take = l.min(extent::MAX_LEN - ll);
                    last.len += take as u32;
                    lblk += take;
                    p += take;
                    l -= take;
                    continue;
                }
            }
            let take = l.min(extent::MAX_LEN);
            let lb = u32::try_from(lblk).ok()?;
            u32::try_from(lblk + take).ok()?;
            exts.push(Extent { lblk: lb, pblk: p, len: take as u32 });
            lblk += take;
            p += take;
            l -= take;
        }
    }
    Some(())
}

struct Geometry {
    blocks_count: u64,
    ngroups: u32,
    ipg: u32,
    itb: u64,
    desc_blocks: u64,
}

fn geometry(opts: &Ext4Options, needed_inodes: u32) -> Result<Geometry, Ext4Error> {
    let mut blocks_count = opts.size_bytes / BS;
    let wanted = |blocks: u64| -> u64 {
        match opts.inode_count {
            Some(n) => u64::from(n),
            None => {
                let need = u64::from(needed_inodes);
                (need + need / 4 + 64).max(blocks * BS / 16384)
            }
        }
    };
    if let Some(n) = opts.inode_count {
        if n < needed_inodes {
            return Err(Ext4Error::TooManyInodes {
                needed: u64::from(needed_inodes),
                reason: format!("-N allows only {n}"),
            });
        }
    }
    loop {
        if blocks_count < 64 {
            return Err(Ext4Error::DoesNotFit { needed_bytes: 64 * BS, available_bytes: opts.size_bytes });
        }
        let ngroups = blocks_count.div_ceil(BLOCKS_PER_GROUP);
        let ngroups32 = u32::try_from(ngroups).map_err(|_| Ext4Error::BadArgument {
            arg: opts.size_bytes.to_string(),
            reason: "filesystem too large".into(),
        })?;
        let desc_blocks = ngroups.div_ceil((crate::BLOCK_SIZE / crate::group_desc::DESC_SIZE) as u64);
        // At most one inode per block of a group, and a 32-bit inode count in all.
        let ipb = u64::from(INODES_PER_BLOCK);
        let max_ipg = BLOCKS_PER_GROUP.min(u64::from(u32::MAX) / ngroups) / ipb * ipb;
        let mut per = wanted(blocks_count).div_ceil(ngroups);
        // Like mke2fs, the default bytes-per-inode ratio gives way to the limit on large
        // filesystems as long as the content still fits.
        if opts.inode_count.is_none() && per > max_ipg && u64::from(needed_inodes).div_ceil(ngroups) <= max_ipg {
            per = max_ipg;
        }
        let ipg = per.div_ceil(ipb).max(1) * ipb;
        if ipg > max_ipg {
            return Err(Ext4Error::TooManyInodes {
                needed: wanted(blocks_count),
                reason: format!("a {}-byte filesystem holds at most {} inodes", opts.size_bytes, max_ipg * ngroups),
            });
        }
        let itb = ipg / u64::from(INODES_PER_BLOCK);
        let last = ngroups - 1;
        let last_len = blocks_count - last * BLOCKS_PER_GROUP;
        let overhead = if has_super(last as u32) { 1 + desc_blocks } else { 0 } + 2 + itb + 50;
        if ngroups > 1 && last_len < overhead {
            blocks_count = last * BLOCKS_PER_GROUP;
            continue;
        }
        return Ok(Geometry { blocks_count, ngroups: ngroups32, ipg: ipg as u32, itb, desc_blocks });
    }
}

/// Plan a filesystem for `tree`.
///
/// # Errors
/// The content does not fit (with the bytes needed), a name is longer than 255 bytes, a symlink
/// target is empty or ≥ 4096 bytes, a directory needs more than a two-level htree, xattrs do not
/// fit one block, or an option is invalid.
pub fn plan(tree: &Tree, opts: &Ext4Options) -> Result<Ext4Layout, Ext4Error> {
    // Superblock times are unsigned (32 bits + an 8-bit `_hi`), and the same timestamp goes
    // into the journal and lost+found inodes, which end at TIME_MAX.
    if !(0..=crate::TIME_MAX).contains(&opts.timestamp) {
        return Err(Ext4Error::BadTimestamp { timestamp: opts.timestamp });
    }
    if opts.inode_size != 256 {
        return Err(Ext4Error::BadArgument { arg: format!("-I {}", opts.inode_size), reason: "only 256".into() });
    }
    let mut label = [0u8; 16];
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(Ext4Error::BadArgument { arg: format!("-L {l}"), reason: "label longer than 16 bytes".into() });
        }
        label[..l.len()].copy_from_slice(l.as_bytes());
    }
    let uuid = *opts.uuid.as_bytes();
    let hash_seed = *opts.hash_seed.as_bytes();
    let seed = csum::fs_seed(&uuid);
    let num = number(tree)?;
    let max_ino = num.owner.len() as u32;
    let geo = geometry(opts, max_ino)?;
    let bpg = BLOCKS_PER_GROUP;
    let meta_len = 1 + geo.desc_blocks;

    // Fixed metadata: superblock/GDT copies, then per flex group the bitmaps and inode tables.
    let mut fixed: Vec<(u64, u64)> = Vec::new();
    for g in 0..geo.ngroups {
        if has_super(g) {
            fixed.push((u64::from(g) * bpg, meta_len));
        }
    }
    let no_fit = |needed: u64| Ext4Error::DoesNotFit { needed_bytes: needed, available_bytes: geo.blocks_count * BS };
    let place = |mut cur: u64, len: u64| -> Result<u64, Ext4Error> {
        'retry: loop {
            let end = cur + len;
            if end > geo.blocks_count {
                return Err(no_fit(end * BS));
            }
            for k in cur / bpg..=(end - 1) / bpg {
                if has_super(k as u32) {
                    let (s, e) = (k * bpg, k * bpg + meta_len);
                    if cur < e && s < end {
                        cur = e;
                        continue 'retry;
                    }
                }
            }
            return Ok(cur);
        }
    };
    let mut groups: Vec<GroupDesc> = vec![GroupDesc::default(); geo.ngroups as usize];
    for f in (0..geo.ngroups).step_by(FLEX as usize) {
        let n = FLEX.min(geo.ngroups - f);
        let lead = u64::from(f) * bpg;
        let mut cur = lead + if has_super(f) { meta_len } else { 0 };
        for g in f..f + n {
            let b = place(cur, 1)?;
            groups[g as usize].block_bitmap = b;
            fixed.push((b, 1));
            cur = b + 1;
        }
        for g in f..f + n {
            let b = place(cur, 1)?;
            groups[g as usize].inode_bitmap = b;
            fixed.push((b, 1));
            cur = b + 1;
        }
        for g in f..f + n {
            let b = place(cur, geo.itb)?;
            groups[g as usize].inode_table = b;
            fixed.push((b, geo.itb));
            cur = b + geo.itb;
        }
    }
    fixed.sort_unstable();
    let mut free = Vec::new();
    let mut pos = 0u64;
    for &(s, l) in &fixed {
        if s > pos {
            free.push((pos, s - pos));
        }
        pos = pos.max(s + l);
    }
    if pos < geo.blocks_count {
        free.push((pos, geo.blocks_count - pos));
    }
    let mut al = Alloc { free, idx: 0, off: 0, overflow: 0, used: fixed };

    let mut inodes: Vec<PInode> = (0..max_ino)
        .map(|_| PInode {
            fields: InodeFields::default(),
            body: Body::Empty,
            ext_blocks: Vec::new(),
            xattr_block: None,
            is_dir: false,
        })
        .collect();

    // Journal (inode 8).
    let jblocks = journal::default_blocks(geo.blocks_count);
    let mut jnl_blocks = [0u32; 17];
    if jblocks > 0 {
        let pieces = al.alloc(jblocks);
        let mut exts = Vec::new();
        push_extents(&mut exts, 0, &pieces).ok_or_else(|| Ext4Error::BadPlan("journal extents".into()))?;
        let p = &mut inodes[7];
        finish_extents(p, seed, 8, &exts, &mut al).map_err(|r| Ext4Error::BadPlan(format!("journal: {r}")))?;
        p.fields.mode = 0o100600;
        p.fields.links = 1;
        p.fields.size = jblocks * BS;
        p.fields.time_sec = opts.timestamp;
        p.fields.flags = EXTENTS_FL;
        p.fields.blocks_512 += jblocks * (BS / 512);
        for (i, w) in jnl_blocks.iter_mut().take(15).enumerate() {
            *w = crate::le::get_u32(&p.fields.i_block, i * 4);
        }
        jnl_blocks[15] = (p.fields.size >> 32) as u32;
        jnl_blocks[16] = p.fields.size as u32;
        p.body = Body::Journal { extents: exts };
    }

    // Every other inode, in inode order.
    let mut clamped: Vec<InodeId> = Vec::new();
    for ino in 1..=max_ino {
        let idx = (ino - 1) as usize;
        let owner = num.owner[idx];
        if ino == FIRST_INO && owner.is_none() {
            // Our own lost+found: 4 blocks, 0700.
            let blocks = vec![
                DirBlock::Leaf(vec![
                    DirEnt { ino: FIRST_INO, ft: dir::FT_DIR, name: b".".to_vec() },
                    DirEnt { ino: 2, ft: dir::FT_DIR, name: b"..".to_vec() },
                ]),
                DirBlock::Leaf(Vec::new()),
                DirBlock::Leaf(Vec::new()),
                DirBlock::Leaf(Vec::new()),
            ];
            let p = &mut inodes[idx];
            p.fields.mode = 0o040700;
            p.fields.links = 2;
            p.fields.time_sec = opts.timestamp;
            place_dir(p, seed, ino, blocks, false, &mut al)?;
            continue;
        }
        let Some(t) = owner else { continue };
        let node = tree.inode(t);
        let path = || path_of(tree, t);
        let (time_sec, time_nsec, was_clamped) = clamp_time(node.meta.mtime.sec, node.meta.mtime.nsec);
        // A link group split over several inodes is listed once.
        if was_clamped && num.first_ino[t.index()] == ino {
            clamped.push(t);
        }
        let mut f = InodeFields {
            mode: node.mode(),
            uid: node.meta.uid,
            gid: node.meta.gid,
            time_sec,
            time_nsec,
            ..InodeFields::default()
        };
        let xl = xattr::layout(&node.meta.xattrs).map_err(|reason| Ext4Error::Xattr { path: path(), reason })?;
        f.xattr_area = xl.in_inode;
        inodes[idx].fields = f;
        let p = &mut inodes[idx];
        match &node.kind {
            Kind::Dir(d) => {
                let parent = if t == InodeId::ROOT { 2 } else { num.first_ino[d.parent.index()] };
                let mut ents: Vec<DirEnt> = d
                    .entries
                    .iter()
                    .zip(&num.entry_inos[t.index()])
                    .map(|(e, &i)| DirEnt { ino: i, ft: file_type(&tree.inode(e.inode).kind), name: e.name.clone() })
                    .collect();
                let mut subdirs = u64::from(tree.subdir_count(t));
                if t == InodeId::ROOT && !num.tree_lost_found {
                    let lf = DirEnt { ino: FIRST_INO, ft: dir::FT_DIR, name: b"lost+found".to_vec() };
                    let at = ents.partition_point(|e| e.name.as_slice() < b"lost+found".as_slice());
                    ents.insert(at, lf);
                    subdirs += 1;
                }
                let links = 2 + subdirs;
                p.fields.links = if links > u64::from(LINK_MAX) { 1 } else { links as u16 };
                let (blocks, indexed) = plan_dir(&hash_seed, ino, parent, ents, &path)?;
                place_dir(p, seed, ino, blocks, indexed, &mut al)?;
            }
            Kind::File(fd) => {
                p.fields.links = num.links[idx] as u16;
                p.fields.size = fd.size;
                p.fields.flags = EXTENTS_FL;
                let end_blk = fd.size.div_ceil(BS);
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for r in &fd.runs {
                    if r.len == 0 {
                        continue;
                    }
                    let s = r.offset / BS;
                    let e = r.end().div_ceil(BS).min(end_blk);
                    if s >= e {
                        continue;
                    }
                    match ranges.last_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(e),
                        _ => ranges.push((s, e)),
                    }
                }
                let mut exts = Vec::new();
                let mut data_blocks = 0u64;
                for &(s, e) in &ranges {
                    let pieces = al.alloc(e - s);
                    data_blocks += e - s;
                    push_extents(&mut exts, s, &pieces)
                        .ok_or_else(|| Ext4Error::FileTooLarge { path: path(), reason: "larger than 16 TiB".into() })?;
                }
                p.fields.blocks_512 = data_blocks * (BS / 512);
                finish_extents(p, seed, ino, &exts, &mut al)
                    .map_err(|reason| Ext4Error::FileTooLarge { path: path(), reason })?;
                p.body = Body::File { tree: t, extents: exts };
            }
            Kind::Symlink(target) => {
                p.fields.links = num.links[idx] as u16;
                p.fields.size = target.len() as u64;
                if target.is_empty() || target.len() >= crate::BLOCK_SIZE {
                    return Err(Ext4Error::BadSymlink { path: path(), len: target.len() });
                }
                if target.len() < 60 {
                    p.fields.i_block[..target.len()].copy_from_slice(target);
                } else {
                    let pieces = al.alloc(1);
                    let mut exts = Vec::new();
                    push_extents(&mut exts, 0, &pieces).ok_or_else(|| Ext4Error::BadPlan("symlink".into()))?;
                    p.fields.flags = EXTENTS_FL;
                    p.fields.blocks_512 = BS / 512;
                    finish_extents(p, seed, ino, &exts, &mut al).map_err(Ext4Error::BadPlan)?;
                    let pblk = pieces.first().map_or(0, |x| x.0);
                    p.body = Body::Symlink { pblk, target: target.clone() };
                }
            }
            Kind::CharDev(rdev) | Kind::BlockDev(rdev) => {
                p.fields.links = num.links[idx] as u16;
                let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
                let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
                if major < 256 && minor < 256 {
                    crate::le::put_u32(&mut p.fields.i_block, 0, (major * 256 + minor) as u32);
                } else {
                    let v = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                    crate::le::put_u32(&mut p.fields.i_block, 4, v as u32);
                }
            }
            Kind::Fifo | Kind::Socket => {
                p.fields.links = num.links[idx] as u16;
            }
        }
        if let Some(b) = xl.block {
            let blk = al.blocks(1).first().copied().unwrap_or(0);
            p.fields.file_acl = blk;
            p.fields.blocks_512 += BS / 512;
            p.xattr_block = Some((blk, b));
        }
    }

    if al.overflow > 0 {
        let used: u64 = al.used.iter().map(|r| r.1).sum();
        return Err(no_fit((used + al.overflow) * BS));
    }

    // Used block map, per-group counts and flags.
    let mut used = std::mem::take(&mut al.used);
    used.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(used.len());
    for (s, l) in used {
        match merged.last_mut() {
            Some(last) if last.0 + last.1 > s => {
                return Err(Ext4Error::BadPlan(format!("block {s} allocated twice")));
            }
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => merged.push((s, l)),
        }
    }
    let mut used_per_group = vec![0u64; geo.ngroups as usize];
    for &(s, l) in &merged {
        let mut b = s;
        let end = s + l;
        while b < end {
            let g = b / bpg;
            let ge = ((g + 1) * bpg).min(end);
            used_per_group[g as usize] += ge - b;
            b = ge;
        }
    }
    let ipg = geo.ipg;
    let mut free_blocks_total = 0u64;
    let mut free_inodes_total = 0u64;
    let last = geo.ngroups - 1;
    for (g, gd) in groups.iter_mut().enumerate() {
        let gl = if g as u32 == last { geo.blocks_count - u64::from(last) * bpg } else { bpg };
        let free = gl - used_per_group[g];
        gd.free_blocks = free as u32;
        free_blocks_total += free;
        let first = g as u64 * u64::from(ipg);
        let used_inodes = u64::from(max_ino).saturating_sub(first).min(u64::from(ipg)) as u32;
        gd.free_inodes = ipg - used_inodes;
        free_inodes_total += u64::from(ipg - used_inodes);
        gd.used_dirs =
            inodes.iter().skip(first as usize).take(used_inodes as usize).filter(|p| p.is_dir).count() as u32;
        if free == bpg && g as u32 != last {
            gd.flags |= BG_BLOCK_UNINIT;
        }
        if used_inodes == 0 {
            gd.flags |= BG_INODE_UNINIT;
            gd.itable_unused = ipg;
            if opts.assume_zeroed {
                gd.flags |= BG_INODE_ZEROED;
            }
        } else {
            gd.itable_unused = ipg - used_inodes;
            gd.flags |= BG_INODE_ZEROED;
        }
    }
    let inodes_count = ipg * geo.ngroups;
    let sb = SbFields {
        inodes_count,
        blocks_count: geo.blocks_count,
        r_blocks_count: geo.blocks_count / 100 * u64::from(opts.reserved_percent)
            + geo.blocks_count % 100 * u64::from(opts.reserved_percent) / 100,
        free_blocks: free_blocks_total,
        free_inodes: free_inodes_total as u32,
        inodes_per_group: ipg,
        time: opts.timestamp,
        uuid,
        label,
        hash_seed,
        has_journal: jblocks > 0,
        jnl_blocks,
    };
    Ok(Ext4Layout {
        seed,
        blocks_count: geo.blocks_count,
        ipg,
        itb: geo.itb,
        desc_blocks: geo.desc_blocks,
        groups,
        used: merged,
        inodes,
        sb,
        assume_zeroed: opts.assume_zeroed,
        clamped_times: clamped_paths(tree, &clamped),
    })
}

/// Sorted paths of `ids` (computing the path table only when there is something to name).
fn clamped_paths(tree: &Tree, ids: &[InodeId]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    let paths = tree.paths();
    let mut out: Vec<String> = ids.iter().map(|id| String::from_utf8_lossy(&paths[id.index()]).into_owned()).collect();
    out.sort_unstable();
    out
}

/// Build the extent root (and tree blocks, allocated now) for `exts`.
fn finish_extents(p: &mut PInode, seed: u32, ino: u32, exts: &[Extent], al: &mut Alloc) -> Result<(), String> {
    let n =
        extent::tree_blocks(exts.len()).ok_or_else(|| format!("{} extents need a tree deeper than 2", exts.len()))?;
    let blocks = al.blocks(n as u64);
    if blocks.len() != n {
        // Out of space: the caller reports DoesNotFit from the overflow count.
        p.fields.i_block = [0; 60];
        return Ok(());
    }
    let (root, tb) = extent::build(seed, ino, exts, &blocks);
    p.fields.i_block = root;
    p.fields.blocks_512 += n as u64 * (BS / 512);
    p.ext_blocks = tb;
    Ok(())
}

fn place_dir(
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
