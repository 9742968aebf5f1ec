//! A self-contained btrfs image walker for images written by `mkdisk_btrfs::write`: it reads
//! the superblock, the chunk tree and every tree reached from the root tree, checks their
//! internal consistency (checksums, headers, key order, item layout, back references, extent
//! and checksum accounting, free space, directory and inode invariants) and decodes every
//! file's bytes; [`compare`] then checks one fs tree against the source [`Tree`].
//!
//! Dependencies: std, `crc32c`, `zstd` (decompression, window log ≤ 17) and `mkdisk_tree`.
//! It never panics on a malformed image: every read and every computation is checked, and
//! errors name the tree, the block address and the key. Only crc32c is built in; other
//! checksum types need a hook ([`walk_with_csum`]).
//!
//! A test-only crate (`publish = false`), shared by the `btrfs_plan_write` fuzz target
//! (`fuzz/`) and the btrfs writer's tests (`crates/btrfs/tests/walk.rs`).
//!
//! Its little-endian readers, name/extref hashes and rdev encoding deliberately restate what
//! `mkdisk_btrfs` has instead of calling it: an oracle that shared the writer's helpers would
//! accept the writer's mistakes. It is still our own reader — `btrfs check`, `btrfs restore`
//! and the kernel remain the oracles in crates/btrfs/tests/btrfs.rs; this adds checks that
//! need no external tool (fuzzing) and catches corruption those tools are not asked about.

// `is_multiple_of` needs Rust 1.87; the workspace's MSRV is 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mkdisk_tree::{FileData, InodeId, Kind, Source, Tree};

/// Reads `buf.len()` bytes of the device at a byte offset.
pub type ReadFn<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<(), String>;
/// Computes the checksum of `csum_type` over the data, or `None` for an unknown type.
pub type CsumFn<'a> = &'a dyn Fn(u16, &[u8]) -> Option<Vec<u8>>;

const SUPER_OFF: u64 = 0x10000;
const SUPER_SIZE: usize = 4096;
const MIRRORS: [u64; 2] = [0x400_0000, 0x40_0000_0000];
const HEADER: usize = 101;
const ITEM: usize = 25;
const KEY_PTR: usize = 33;
const STRIPE_LEN: u64 = 65536;
const MAX_COMPRESSED: u64 = 128 * 1024;
const MAX_EXTENT: u64 = 128 << 20;

const ROOT_TREE: u64 = 1;
const EXTENT_TREE: u64 = 2;
const CHUNK_TREE: u64 = 3;
const DEV_TREE: u64 = 4;
const FS_TREE: u64 = 5;
const CSUM_TREE: u64 = 7;
const UUID_TREE: u64 = 9;
const FREE_SPACE_TREE: u64 = 10;
const DATA_RELOC_TREE: u64 = (-9i64) as u64;
const EXTENT_CSUM_OBJ: u64 = (-10i64) as u64;
const FIRST_FREE: u64 = 256;
const LAST_FREE: u64 = (-256i64) as u64;

const INODE_ITEM: u8 = 1;
const INODE_REF: u8 = 12;
const INODE_EXTREF: u8 = 13;
const XATTR_ITEM: u8 = 24;
const DIR_ITEM: u8 = 84;
const DIR_INDEX: u8 = 96;
const EXTENT_DATA: u8 = 108;
const EXTENT_CSUM: u8 = 128;
const ROOT_ITEM: u8 = 132;
const ROOT_BACKREF: u8 = 144;
const ROOT_REF: u8 = 156;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const TREE_BLOCK_REF: u8 = 176;
const EXTENT_DATA_REF: u8 = 178;
const BLOCK_GROUP_ITEM: u8 = 192;
const FREE_SPACE_INFO: u8 = 198;
const FREE_SPACE_EXTENT: u8 = 199;
const DEV_EXTENT: u8 = 204;
const DEV_ITEM: u8 = 216;
const CHUNK_ITEM: u8 = 228;
const UUID_KEY_SUBVOL: u8 = 251;

const BG_DATA: u64 = 1;
const BG_SYSTEM: u64 = 2;
const BG_METADATA: u64 = 4;
const BG_DUP: u64 = 0x20;

const FT_XATTR: u8 = 8;

/// A btrfs key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// objectid
    pub objectid: u64,
    /// type
    pub ty: u8,
    /// offset
    pub offset: u64,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: u64| if v >= LAST_FREE { format!("{}", v as i64) } else { v.to_string() };
        write!(f, "({} {} {})", o(self.objectid), self.ty, o(self.offset))
    }
}

/// One chunk: logical range, type flags and the physical start of each stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Logical start.
    pub logical: u64,
    /// Length.
    pub length: u64,
    /// Block group flags.
    pub ty: u64,
    /// Physical starts.
    pub stripes: Vec<u64>,
}

/// A directory entry as stored (`DIR_INDEX`, cross-checked with `DIR_ITEM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    /// The location key: `(ino, INODE_ITEM, 0)` or `(subvol, ROOT_ITEM, _)`.
    pub location: Key,
    /// `BTRFS_FT_*`.
    pub ty: u8,
    /// The `DIR_INDEX` index.
    pub index: u64,
}

/// A timestamp (seconds, nanoseconds).
pub type Time = (i64, u32);

/// One inode of an fs tree, decoded and checked.
#[derive(Clone, Debug, Default)]
pub struct Inode {
    /// `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `i_size`.
    pub size: u64,
    /// `nbytes`.
    pub nbytes: u64,
    /// `nlink`.
    pub nlink: u32,
    /// `rdev`.
    pub rdev: u64,
    /// atime, ctime, mtime, otime.
    pub times: [Time; 4],
    /// Names: (parent ino, index, name).
    pub names: Vec<(u64, u64, Vec<u8>)>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directory entries by name.
    pub entries: BTreeMap<Vec<u8>, DirEnt>,
    /// Decoded data pieces: (file offset, bytes); non-overlapping, sorted. Bytes past `size`
    /// (the tail of the last sector) are included.
    pub data: Vec<(u64, Vec<u8>)>,
    /// Whether the data is one inline extent.
    pub inline: bool,
}

/// One fs tree (top level, a subvolume or the data reloc tree).
#[derive(Clone, Debug, Default)]
pub struct FsTree {
    /// Inodes by number.
    pub inodes: BTreeMap<u64, Inode>,
}

/// What the walker found; every check has passed.
#[derive(Debug, Default)]
pub struct Walk {
    /// `nodesize`.
    pub nodesize: u32,
    /// `sectorsize`.
    pub sectorsize: u32,
    /// `csum_type`.
    pub csum_type: u16,
    /// Superblock generation.
    pub generation: u64,
    /// `total_bytes`.
    pub total_bytes: u64,
    /// All chunks, by logical address.
    pub chunks: Vec<Chunk>,
    /// Tree blocks visited: (address, owner, level).
    pub blocks: Vec<(u64, u64, u8)>,
    /// Data extents: (disk_bytenr, disk_num_bytes).
    pub data_extents: Vec<(u64, u64)>,
    /// Compressed data extents (regular) plus compressed inline extents.
    pub compressed: usize,
    /// Fs trees by id (5, subvolumes ≥ 256, and −9).
    pub fs_trees: BTreeMap<u64, FsTree>,
    /// Subvolume links: (parent tree, child tree, dir ino, index, name).
    pub subvol_links: Vec<(u64, u64, u64, u64, Vec<u8>)>,
}

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u8_at(b: &[u8], off: usize) -> Result<u8, String> {
    b.get(off).copied().ok_or_else(|| format!("read past the end ({off} of {})", b.len()))
}
fn u16_at(b: &[u8], off: usize) -> Result<u16, String> {
    get::<2>(b, off).map(u16::from_le_bytes).ok_or_else(|| format!("read past the end ({off} of {})", b.len()))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    get::<4>(b, off).map(u32::from_le_bytes).ok_or_else(|| format!("read past the end ({off} of {})", b.len()))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, String> {
    get::<8>(b, off).map(u64::from_le_bytes).ok_or_else(|| format!("read past the end ({off} of {})", b.len()))
}
fn bytes_at(b: &[u8], off: usize, len: usize) -> Result<&[u8], String> {
    off.checked_add(len)
        .and_then(|e| b.get(off..e))
        .ok_or_else(|| format!("read of {len} bytes at {off} past the end ({})", b.len()))
}
fn key_at(b: &[u8], off: usize) -> Result<Key, String> {
    Ok(Key { objectid: u64_at(b, off)?, ty: u8_at(b, off + 8)?, offset: u64_at(b, off + 9)? })
}
fn time_at(b: &[u8], off: usize) -> Result<Time, String> {
    Ok((u64_at(b, off)? as i64, u32_at(b, off + 8)?))
}
fn add(a: u64, b: u64) -> Result<u64, String> {
    a.checked_add(b).ok_or_else(|| format!("overflow: {a} + {b}"))
}
fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{v} does not fit usize"))
}
fn round_up(v: u64, to: u64) -> Result<u64, String> {
    Ok(add(v, to - 1)? / to * to)
}

/// `crc32c_raw(0xFFFFFFFE, name)`: the `DIR_ITEM`/`XATTR_ITEM` key offset.
#[must_use]
pub fn name_hash(name: &[u8]) -> u64 {
    u64::from(!crc32c::crc32c_append(1, name))
}

/// `crc32c_raw(parent as u32, name)`: the `INODE_EXTREF` key offset.
#[must_use]
pub fn extref_hash(parent: u64, name: &[u8]) -> u64 {
    u64::from(!crc32c::crc32c_append(!(parent as u32), name))
}

/// The built-in checksum: crc32c only.
fn builtin_csum(ty: u16, data: &[u8]) -> Option<Vec<u8>> {
    (ty == 0).then(|| crc32c::crc32c(data).to_le_bytes().to_vec())
}

/// The size of each checksum type's digest.
fn csum_size(ty: u16) -> Option<usize> {
    match ty {
        0 => Some(4),
        1 => Some(8),
        2 | 3 => Some(32),
        _ => None,
    }
}

struct Ctx<'a> {
    read: ReadFn<'a>,
    csum: CsumFn<'a>,
    size: u64,
    fsid: [u8; 16],
    chunk_uuid: Option<[u8; 16]>,
    nodesize: u64,
    sectorsize: u64,
    csum_type: u16,
    csum_size: usize,
    generation: u64,
    chunks: Vec<Chunk>,
    visited: BTreeMap<u64, (u64, u8)>,
}

/// The items of one tree, in key order.
type Items = Vec<(Key, Vec<u8>)>;
/// Data extent (bytenr, disk_num_bytes) → (root, inode, file offset − extent offset) → count.
type DataRefs = BTreeMap<(u64, u64), BTreeMap<(u64, u64, u64), u32>>;
/// A `btrfs_dir_item`: location, type, name, data.
type DirItem = (Key, u8, Vec<u8>, Vec<u8>);

impl Ctx<'_> {
    fn read_phys(&self, off: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = add(off, buf.len() as u64)?;
        if end > self.size {
            return Err(format!("physical read [{off}, {end}) beyond the device ({})", self.size));
        }
        (self.read)(off, buf).map_err(|e| format!("physical read at {off}: {e}"))
    }

    fn checksum(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let c = (self.csum)(self.csum_type, data).ok_or_else(|| format!("unsupported csum type {}", self.csum_type))?;
        if c.len() != self.csum_size {
            return Err(format!("csum hook returned {} bytes for type {}", c.len(), self.csum_type));
        }
        Ok(c)
    }

    fn chunk_of(&self, logical: u64, len: u64) -> Result<&Chunk, String> {
        let end = add(logical, len)?;
        self.chunks
            .iter()
            .find(|c| c.logical <= logical && end <= c.logical.saturating_add(c.length))
            .ok_or_else(|| format!("logical range [{logical}, {end}) is not inside one chunk"))
    }

    /// Read a logical range from the first stripe; every other stripe must hold the same bytes.
    fn read_logical(&self, logical: u64, len: usize) -> Result<Vec<u8>, String> {
        let c = self.chunk_of(logical, len as u64)?;
        let rel = logical - c.logical;
        let mut buf = vec![0u8; len];
        let first = *c.stripes.first().ok_or("chunk without stripes")?;
        self.read_phys(add(first, rel)?, &mut buf)?;
        let mut other = vec![0u8; len];
        for (i, &s) in c.stripes.iter().enumerate().skip(1) {
            self.read_phys(add(s, rel)?, &mut other)?;
            if other != buf {
                return Err(format!("logical {logical} (+{len}): stripe {i} differs from stripe 0"));
            }
        }
        Ok(buf)
    }

    /// Walk one tree from its root; returns its items in key order.
    fn walk_tree(&mut self, name: &str, owner: u64, root: u64, level: u8, gen: u64) -> Result<Items, String> {
        if level >= 8 {
            return Err(format!("{name} tree: root level {level} ≥ 8"));
        }
        let mut items = Vec::new();
        let mut last: Option<Key> = None;
        self.visit(name, owner, root, level, gen, None, &mut last, &mut items, true)?;
        Ok(items)
    }

    #[allow(clippy::too_many_arguments)]
    fn visit(
        &mut self,
        name: &str,
        owner: u64,
        addr: u64,
        level: u8,
        gen: u64,
        first: Option<Key>,
        last: &mut Option<Key>,
        items: &mut Items,
        is_root: bool,
    ) -> Result<(), String> {
        let at = |msg: String| format!("{name} tree, block {addr}: {msg}");
        if addr == 0 || addr % self.nodesize != 0 {
            return Err(at(format!("address not aligned to nodesize {}", self.nodesize)));
        }
        if (addr / STRIPE_LEN) != (addr + self.nodesize - 1) / STRIPE_LEN {
            return Err(at("block crosses a 64 KiB stripe".into()));
        }
        if let Some(prev) = self.visited.insert(addr, (owner, level)) {
            return Err(at(format!("block reached twice (first by tree {} level {})", prev.0, prev.1)));
        }
        let b = self.read_logical(addr, usize_of(self.nodesize)?).map_err(at)?;
        let sum = self.checksum(&b[32..]).map_err(at)?;
        if b[..self.csum_size] != sum[..] || b[self.csum_size..32].iter().any(|&x| x != 0) {
            return Err(at("header checksum mismatch".into()));
        }
        if b[32..48] != self.fsid {
            return Err(at("fsid mismatch".into()));
        }
        let h_bytenr = u64_at(&b, 48)?;
        if h_bytenr != addr {
            return Err(at(format!("header bytenr {h_bytenr}")));
        }
        let flags = u64_at(&b, 56)?;
        if flags != 0x0100_0000_0000_0001 {
            return Err(at(format!("header flags {flags:#x}")));
        }
        let cu: [u8; 16] = get(&b, 64).ok_or("short")?;
        match self.chunk_uuid {
            None => self.chunk_uuid = Some(cu),
            Some(u) if u != cu => return Err(at("chunk tree uuid differs from the other blocks".into())),
            Some(_) => {}
        }
        let h_gen = u64_at(&b, 80)?;
        if h_gen != gen || h_gen > self.generation {
            return Err(at(format!("generation {h_gen}, expected {gen} (super {})", self.generation)));
        }
        let h_owner = u64_at(&b, 88)?;
        if h_owner != owner {
            return Err(at(format!("owner {h_owner}, expected {owner}")));
        }
        let nritems = u32_at(&b, 96)? as usize;
        let h_level = b[100];
        if h_level != level {
            return Err(at(format!("level {h_level}, expected {level}")));
        }
        let ns = b.len();
        let mut keys = Vec::with_capacity(nritems);
        if level == 0 {
            if nritems == 0 && !is_root {
                return Err(at("empty leaf below a node".into()));
            }
            if nritems.checked_mul(ITEM).is_none_or(|n| n > ns - HEADER) {
                return Err(at(format!("nritems {nritems} too large for a leaf")));
            }
            let mut data_end = ns - HEADER; // relative to the header end
            let array_end = nritems * ITEM;
            for i in 0..nritems {
                let p = HEADER + i * ITEM;
                let k = key_at(&b, p)?;
                let off = u32_at(&b, p + 17)? as usize;
                let size = u32_at(&b, p + 21)? as usize;
                let end = off.checked_add(size).ok_or_else(|| at(format!("item {i} {k}: offset overflow")))?;
                if end != data_end || off < array_end {
                    return Err(at(format!(
                        "item {i} {k}: data [{off}, {end}) not packed (expected to end at {data_end}, items end at {array_end})"
                    )));
                }
                data_end = off;
                keys.push(k);
                items.push((k, b[HEADER + off..HEADER + end].to_vec()));
            }
            // This writer zeroes unused bytes (reproducibility).
            if b[HEADER + array_end..HEADER + data_end].iter().any(|&x| x != 0) {
                return Err(at("leaf free space is not zero".into()));
            }
        } else {
            if nritems == 0 || nritems > (ns - HEADER) / KEY_PTR {
                return Err(at(format!("node nritems {nritems}")));
            }
            for i in 0..nritems {
                keys.push(key_at(&b, HEADER + i * KEY_PTR)?);
            }
            if b[HEADER + nritems * KEY_PTR..].iter().any(|&x| x != 0) {
                return Err(at("node free space is not zero".into()));
            }
        }
        for w in keys.windows(2) {
            if w[0] >= w[1] {
                return Err(at(format!("keys out of order: {} then {}", w[0], w[1])));
            }
        }
        if let (Some(f), Some(k0)) = (first, keys.first()) {
            if f != *k0 {
                return Err(at(format!("first key {k0} differs from the parent's pointer key {f}")));
            }
        }
        if level == 0 {
            if let (Some(l), Some(k0)) = (*last, keys.first()) {
                if *k0 <= l {
                    return Err(at(format!("first key {k0} not after the previous leaf's last key {l}")));
                }
            }
            if let Some(k) = keys.last() {
                *last = Some(*k);
            }
            return Ok(());
        }
        for (i, &k) in keys.iter().enumerate() {
            let p = HEADER + i * KEY_PTR;
            let child = u64_at(&b, p + 17)?;
            let cgen = u64_at(&b, p + 25)?;
            self.visit(name, owner, child, level - 1, cgen, Some(k), last, items, false)
                .map_err(|e| format!("{e}\n  under {name} tree node {addr} key {k}"))?;
        }
        Ok(())
    }
}

fn parse_chunk(b: &[u8], key: Key, size: u64) -> Result<(Chunk, usize), String> {
    let at = |m: String| format!("chunk {key}: {m}");
    let length = u64_at(b, 0)?;
    let stripe_len = u64_at(b, 16)?;
    let ty = u64_at(b, 24)?;
    let num = u16_at(b, 44)? as usize;
    let sub = u16_at(b, 46)?;
    if key.objectid != 256 || key.ty != CHUNK_ITEM {
        return Err(at("bad key".into()));
    }
    if stripe_len != STRIPE_LEN || sub != 1 {
        return Err(at(format!("stripe_len {stripe_len} sub_stripes {sub}")));
    }
    let want_num = if ty & BG_DUP != 0 { 2 } else { 1 };
    if num != want_num || ty & !(BG_DATA | BG_SYSTEM | BG_METADATA | BG_DUP) != 0 || (ty & 7).count_ones() != 1 {
        return Err(at(format!("type {ty:#x} with {num} stripes")));
    }
    if length == 0 || length % 4096 != 0 || key.offset % 65536 != 0 || key.offset.checked_add(length).is_none() {
        return Err(at(format!("length {length}")));
    }
    let mut stripes = Vec::new();
    for i in 0..num {
        let devid = u64_at(b, 48 + 32 * i)?;
        let phys = u64_at(b, 56 + 32 * i)?;
        if devid != 1 {
            return Err(at(format!("stripe {i} devid {devid}")));
        }
        if add(phys, length)? > size || phys < (1 << 20) {
            return Err(at(format!("stripe {i} at {phys} (+{length}) outside the device")));
        }
        stripes.push(phys);
    }
    Ok((Chunk { logical: key.offset, length, ty, stripes }, 80 + 32 * (num - 1)))
}

fn check_chunks(chunks: &[Chunk]) -> Result<(), String> {
    let mut phys: Vec<(u64, u64)> = Vec::new();
    let mut log: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        log.push((c.logical, c.length));
        for &s in &c.stripes {
            phys.push((s, c.length));
        }
    }
    for v in [&mut phys, &mut log] {
        v.sort_unstable();
        for w in v.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(format!("chunks overlap: [{}, +{}) and [{}, +{})", w[0].0, w[0].1, w[1].0, w[1].1));
            }
        }
    }
    Ok(())
}

/// Walk an image with the built-in checksum (crc32c only).
///
/// # Errors
/// Any inconsistency, naming the tree, block and key.
pub fn walk(read: ReadFn<'_>, size: u64) -> Result<Walk, String> {
    walk_with_csum(read, size, &builtin_csum)
}

/// Walk an image; `csum` computes checksums (for types other than crc32c).
///
/// # Errors
/// Any inconsistency, naming the tree, block and key.
#[allow(clippy::too_many_lines)]
pub fn walk_with_csum(read: ReadFn<'_>, size: u64, csum: CsumFn<'_>) -> Result<Walk, String> {
    // Superblock.
    if size < SUPER_OFF + SUPER_SIZE as u64 {
        return Err(format!("device of {size} bytes has no room for a superblock"));
    }
    let mut sb = vec![0u8; SUPER_SIZE];
    read(SUPER_OFF, &mut sb).map_err(|e| format!("superblock read: {e}"))?;
    if &sb[64..72] != b"_BHRfS_M" {
        return Err("superblock: bad magic".into());
    }
    let csum_type = u16_at(&sb, 196)?;
    let cs = csum_size(csum_type).ok_or_else(|| format!("unsupported csum type {csum_type}"))?;
    let sum = csum(csum_type, &sb[32..]).ok_or_else(|| format!("unsupported csum type {csum_type}"))?;
    if sum.len() != cs || sb[..cs] != sum[..] || sb[cs..32].iter().any(|&x| x != 0) {
        return Err("superblock: checksum mismatch".into());
    }
    if u64_at(&sb, 48)? != SUPER_OFF {
        return Err(format!("superblock: bytenr {}", u64_at(&sb, 48)?));
    }
    let fsid: [u8; 16] = get(&sb, 32).ok_or("short")?;
    let generation = u64_at(&sb, 72)?;
    let root = u64_at(&sb, 80)?;
    let chunk_root = u64_at(&sb, 88)?;
    let total_bytes = u64_at(&sb, 112)?;
    let bytes_used = u64_at(&sb, 120)?;
    let sectorsize = u32_at(&sb, 144)?;
    let nodesize = u32_at(&sb, 148)?;
    let sys_size = u32_at(&sb, 160)? as usize;
    let incompat = u64_at(&sb, 188)?;
    let root_level = sb[198];
    let chunk_root_level = sb[199];
    if sectorsize != 4096 || !nodesize.is_power_of_two() || !(4096..=65536).contains(&nodesize) {
        return Err(format!("superblock: sectorsize {sectorsize} nodesize {nodesize}"));
    }
    if total_bytes == 0 || total_bytes > size || total_bytes % 4096 != 0 {
        return Err(format!("superblock: total_bytes {total_bytes} (device {size})"));
    }
    if u64_at(&sb, 136)? != 1 || u64_at(&sb, 96)? != 0 || sb[200] != 0 {
        return Err("superblock: num_devices or log root".into());
    }
    if !(17 + 80..=2048).contains(&sys_size) {
        return Err(format!("superblock: sys_chunk_array_size {sys_size}"));
    }
    if incompat & !(0x361 | 0x10 | 0x2) != 0 || incompat & 0x361 != 0x361 {
        return Err(format!("superblock: incompat flags {incompat:#x}"));
    }
    if u64_at(&sb, 180)? != 3 || u64_at(&sb, 172)? != 0 || u64_at(&sb, 563)? != generation {
        return Err("superblock: compat_ro/compat flags or uuid_tree_generation".into());
    }
    // Mirrors: identical but for bytenr and checksum.
    for m in MIRRORS {
        if m + SUPER_SIZE as u64 > total_bytes {
            continue;
        }
        let mut mb = vec![0u8; SUPER_SIZE];
        read(m, &mut mb).map_err(|e| format!("superblock mirror {m}: {e}"))?;
        let msum = csum(csum_type, &mb[32..]).ok_or("csum")?;
        if mb[..cs] != msum[..] || u64_at(&mb, 48)? != m || mb[56..] != sb[56..] || mb[32..48] != sb[32..48] {
            return Err(format!("superblock mirror at {m} differs from the primary or has a bad checksum"));
        }
    }
    let mut ctx = Ctx {
        read,
        csum,
        size: total_bytes,
        fsid,
        chunk_uuid: None,
        nodesize: u64::from(nodesize),
        sectorsize: u64::from(sectorsize),
        csum_type,
        csum_size: cs,
        generation,
        chunks: Vec::new(),
        visited: BTreeMap::new(),
    };
    // sys_chunk_array.
    let arr = &sb[811..811 + sys_size];
    let mut p = 0;
    let mut sys_chunks = Vec::new();
    while p < arr.len() {
        let k = key_at(arr, p).map_err(|e| format!("sys_chunk_array at {p}: {e}"))?;
        let (c, len) = parse_chunk(&arr[p + 17..], k, total_bytes).map_err(|e| format!("sys_chunk_array: {e}"))?;
        if c.ty & BG_SYSTEM == 0 {
            return Err(format!("sys_chunk_array: chunk {k} is not SYSTEM"));
        }
        sys_chunks.push(c);
        p += 17 + len;
    }
    ctx.chunks.clone_from(&sys_chunks);
    check_chunks(&ctx.chunks)?;
    // Chunk tree.
    let chunk_items = ctx.walk_tree("chunk", CHUNK_TREE, chunk_root, chunk_root_level, generation)?;
    let mut chunks = Vec::new();
    let mut dev_item = None;
    for (k, v) in &chunk_items {
        match (k.objectid, k.ty) {
            (1, DEV_ITEM) if k.offset == 1 && v.len() == 98 => dev_item = Some(v.clone()),
            (256, CHUNK_ITEM) => {
                let (c, len) = parse_chunk(v, *k, total_bytes)?;
                if len != v.len() {
                    return Err(format!("chunk tree: item {k} size {} (expected {len})", v.len()));
                }
                chunks.push(c);
            }
            _ => return Err(format!("chunk tree: unexpected item {k}")),
        }
    }
    let dev_item = dev_item.ok_or("chunk tree: no DEV_ITEM (1 216 1)")?;
    if dev_item[..] != sb[201..299] || dev_item[82..98] != fsid || u64_at(&dev_item, 8)? != total_bytes {
        return Err("chunk tree: DEV_ITEM differs from the superblock copy, fsid or total_bytes".into());
    }
    let sys_in_tree: Vec<&Chunk> = chunks.iter().filter(|c| c.ty & BG_SYSTEM != 0).collect();
    if sys_in_tree.len() != sys_chunks.len() || sys_chunks.iter().zip(&sys_in_tree).any(|(a, b)| a != *b) {
        return Err("sys_chunk_array differs from the chunk tree's SYSTEM chunks".into());
    }
    check_chunks(&chunks)?;
    let dev_used: u64 = chunks.iter().map(|c| c.length * c.stripes.len() as u64).sum();
    if u64_at(&dev_item, 16)? != dev_used {
        return Err(format!("DEV_ITEM bytes_used {} but the chunks use {dev_used}", u64_at(&dev_item, 16)?));
    }
    ctx.chunks = chunks;
    // Root tree.
    let root_items = ctx.walk_tree("root", ROOT_TREE, root, root_level, generation)?;
    let mut roots: BTreeMap<u64, (u64, u8, u64, Vec<u8>)> = BTreeMap::new();
    let mut refs: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut backrefs: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    for (k, v) in &root_items {
        match k.ty {
            ROOT_ITEM => {
                if v.len() != 439 || k.offset != 0 {
                    return Err(format!("root tree: ROOT_ITEM {k} of {} bytes", v.len()));
                }
                let gen = u64_at(v, 160)?;
                if u64_at(v, 239)? != gen || gen > generation || u32_at(v, 216)? != 1 {
                    return Err(format!("root tree: ROOT_ITEM {k}: generation_v2/generation/refs"));
                }
                roots.insert(k.objectid, (u64_at(v, 176)?, v[238], gen, v.clone()));
            }
            ROOT_REF => {
                refs.insert((k.objectid, k.offset), v.clone());
            }
            ROOT_BACKREF => {
                backrefs.insert((k.offset, k.objectid), v.clone());
            }
            _ if k.objectid == 6 || k.objectid == FS_TREE => {} // root-tree dir 6 ("default")
            _ => return Err(format!("root tree: unexpected item {k}")),
        }
    }
    for id in [EXTENT_TREE, DEV_TREE, FS_TREE, CSUM_TREE, UUID_TREE, FREE_SPACE_TREE, DATA_RELOC_TREE] {
        if !roots.contains_key(&id) {
            return Err(format!("root tree: no ROOT_ITEM ({} 132 0)", id as i64));
        }
    }
    if refs.len() != backrefs.len() {
        return Err(format!("root tree: {} ROOT_REFs but {} ROOT_BACKREFs", refs.len(), backrefs.len()));
    }
    let mut subvol_parents = BTreeMap::new();
    for ((parent, child), v) in &refs {
        let b = backrefs
            .get(&(*parent, *child))
            .ok_or_else(|| format!("root tree: ROOT_REF ({parent} 156 {child}) without ROOT_BACKREF"))?;
        if b != v || v.len() < 18 || v.len() != 18 + u16_at(v, 16)? as usize {
            return Err(format!("root tree: ROOT_REF/ROOT_BACKREF ({parent} {child}) payloads differ or bad size"));
        }
        if subvol_parents.insert(*child, (*parent, u64_at(v, 0)?, u64_at(v, 8)?, v[18..].to_vec())).is_some() {
            return Err(format!("root tree: subvolume {child} has two parents"));
        }
    }
    let mut tree_items: BTreeMap<u64, Items> = BTreeMap::new();
    for (&id, (bytenr, level, gen, ri)) in &roots {
        if !(matches!(id, EXTENT_TREE | DEV_TREE | FS_TREE | CSUM_TREE | UUID_TREE | FREE_SPACE_TREE | DATA_RELOC_TREE)
            || (FIRST_FREE..LAST_FREE).contains(&id))
        {
            return Err(format!("root tree: ROOT_ITEM for unexpected tree {id}"));
        }
        if (FIRST_FREE..LAST_FREE).contains(&id) && !subvol_parents.contains_key(&id) {
            return Err(format!("root tree: subvolume {id} has no ROOT_REF/ROOT_BACKREF"));
        }
        let before = ctx.visited.len();
        let name = format!("tree {}", id as i64);
        let items = ctx.walk_tree(&name, id, *bytenr, *level, *gen)?;
        let blocks = (ctx.visited.len() - before) as u64;
        if u64_at(ri, 192)? != blocks * ctx.nodesize {
            return Err(format!("root tree: ROOT_ITEM {id}: bytes_used {} but {blocks} blocks", u64_at(ri, 192)?));
        }
        tree_items.insert(id, items);
    }
    for child in subvol_parents.keys() {
        if !roots.contains_key(child) {
            return Err(format!("root tree: ROOT_REF to subvolume {child} without ROOT_ITEM"));
        }
    }
    let mut w = Walk {
        nodesize,
        sectorsize,
        csum_type,
        generation,
        total_bytes,
        chunks: ctx.chunks.clone(),
        ..Walk::default()
    };
    // Tree blocks must avoid superblock stripes.
    let super_stripes: Vec<(u64, u64)> = super_stripes(&ctx.chunks, total_bytes);
    for &addr in ctx.visited.keys() {
        if super_stripes.iter().any(|&(s, l)| addr < s + l && s < addr + ctx.nodesize) {
            return Err(format!("tree block {addr} inside a superblock stripe"));
        }
        let c = ctx.chunk_of(addr, ctx.nodesize)?;
        let want = if ctx.visited[&addr].0 == CHUNK_TREE { BG_SYSTEM } else { BG_METADATA };
        if c.ty & want == 0 {
            return Err(format!("tree block {addr} in a chunk of type {:#x}", c.ty));
        }
    }
    w.blocks = ctx.visited.iter().map(|(&a, &(o, l))| (a, o, l)).collect();

    // Fs trees: inodes, names, directory entries, file extents and their data.
    let csum_items = tree_items.get(&CSUM_TREE).cloned().unwrap_or_default();
    let mut csums: BTreeMap<u64, Vec<u8>> = BTreeMap::new(); // sector → csum
    for (k, v) in &csum_items {
        if k.objectid != EXTENT_CSUM_OBJ || k.ty != EXTENT_CSUM || k.offset % ctx.sectorsize != 0 {
            return Err(format!("csum tree: unexpected item {k}"));
        }
        if v.is_empty() || v.len() % cs != 0 {
            return Err(format!("csum tree: item {k} of {} bytes", v.len()));
        }
        let max = (usize_of(ctx.nodesize)? - HEADER - 2 * ITEM) / cs - 1;
        if v.len() / cs > max {
            return Err(format!("csum tree: item {k} holds {} csums (max {max})", v.len() / cs));
        }
        for (i, c) in v.chunks(cs).enumerate() {
            let sector = add(k.offset, i as u64 * ctx.sectorsize)?;
            if csums.insert(sector, c.to_vec()).is_some() {
                return Err(format!("csum tree: item {k}: sector {sector} has two checksums"));
            }
        }
    }
    // extent (bytenr, len) → refs (root, ino, offset) → count
    let mut data_refs: DataRefs = BTreeMap::new();
    let mut extent_data: BTreeMap<u64, Vec<u8>> = BTreeMap::new(); // verified on-disk bytes by disk_bytenr
    let mut used_csums: BTreeSet<u64> = BTreeSet::new();
    for (&id, items) in &tree_items {
        if id != FS_TREE && id != DATA_RELOC_TREE && !(FIRST_FREE..LAST_FREE).contains(&id) {
            continue;
        }
        let fs = fs_tree(&ctx, id, items, &csums, &mut data_refs, &mut extent_data, &mut used_csums, &mut w)?;
        w.fs_trees.insert(id, fs);
    }
    if let Some(s) = csums.keys().find(|s| !used_csums.contains(s)) {
        return Err(format!("csum tree: checksum for sector {s} outside any data extent"));
    }
    // Subvolume links: ROOT_REF ↔ DIR_INDEX/DIR_ITEM in the parent tree.
    for (&child, (parent, dirid, index, name)) in &subvol_parents {
        let pt = w.fs_trees.get(parent).ok_or_else(|| format!("subvolume {child}: parent tree {parent} missing"))?;
        let d = pt.inodes.get(dirid).ok_or_else(|| format!("subvolume {child}: parent dir {dirid} missing"))?;
        let e = d
            .entries
            .get(name)
            .ok_or_else(|| format!("subvolume {child}: no entry in dir {dirid} of tree {parent}"))?;
        if e.location.objectid != child || e.location.ty != ROOT_ITEM || e.index != *index || e.ty != 2 {
            return Err(format!("subvolume {child}: parent entry {:?} does not match ROOT_REF", e));
        }
        w.subvol_links.push((*parent, child, *dirid, *index, name.clone()));
    }
    for (&pid, t) in &w.fs_trees {
        for (&dir, ino) in &t.inodes {
            for (n, e) in &ino.entries {
                if e.location.ty == ROOT_ITEM
                    && !w
                        .subvol_links
                        .iter()
                        .any(|l| l.0 == pid && l.1 == e.location.objectid && l.2 == dir && &l.4 == n)
                {
                    return Err(format!("tree {pid} dir {dir}: subvolume entry {e:?} without ROOT_REF"));
                }
            }
        }
    }
    // Data reloc tree: just the root directory.
    if w.fs_trees.get(&DATA_RELOC_TREE).is_none_or(|t| t.inodes.len() != 1) {
        return Err("data reloc tree: expected only the root directory".into());
    }

    // Extent tree.
    let ext_items = tree_items.get(&EXTENT_TREE).cloned().unwrap_or_default();
    let mut meta_seen = BTreeSet::new();
    let mut data_seen = BTreeSet::new();
    let mut bgs = Vec::new();
    for (k, v) in &ext_items {
        let at = |m: String| format!("extent tree: item {k}: {m}");
        match k.ty {
            METADATA_ITEM => {
                let Some(&(owner, level)) = ctx.visited.get(&k.objectid) else {
                    return Err(at("no such tree block reached".into()));
                };
                if k.offset != u64::from(level) || v.len() != 33 {
                    return Err(at(format!("level {level}, size {}", v.len())));
                }
                if u64_at(v, 0)? != 1 || u64_at(v, 16)? != 2 || v[24] != TREE_BLOCK_REF || u64_at(v, 25)? != owner {
                    return Err(at(format!("refs/flags or TREE_BLOCK_REF (expected owner {})", owner as i64)));
                }
                meta_seen.insert(k.objectid);
            }
            EXTENT_ITEM => {
                let Some(r) = data_refs.get(&(k.objectid, k.offset)) else {
                    return Err(at("no file extent references it".into()));
                };
                let total: u64 = r.values().map(|&c| u64::from(c)).sum();
                if v.len() < 24 || u64_at(v, 0)? != total || u64_at(v, 16)? != 1 {
                    return Err(at(format!("refs {} (expected {total}) or flags", u64_at(v, 0).unwrap_or(0))));
                }
                let mut p = 24;
                let mut found = BTreeMap::new();
                while p < v.len() {
                    if v[p] != EXTENT_DATA_REF {
                        return Err(at(format!("inline ref type {}", v[p])));
                    }
                    let root = u64_at(v, p + 1)?;
                    let obj = u64_at(v, p + 9)?;
                    let off = u64_at(v, p + 17)?;
                    let cnt = u32_at(v, p + 25)?;
                    found.insert((root, obj, off), cnt);
                    p += 29;
                }
                if &found != r {
                    return Err(at(format!("inline refs {found:?}, file extents say {r:?}")));
                }
                data_seen.insert((k.objectid, k.offset));
            }
            BLOCK_GROUP_ITEM => {
                if v.len() != 24 || u64_at(v, 8)? != 256 {
                    return Err(at("bad block group item".into()));
                }
                bgs.push((k.objectid, k.offset, u64_at(v, 0)?, u64_at(v, 16)?));
            }
            _ => return Err(at("unexpected item type".into())),
        }
    }
    if let Some(a) = ctx.visited.keys().find(|a| !meta_seen.contains(a)) {
        return Err(format!("extent tree: tree block {a} (owner {}) has no METADATA_ITEM", ctx.visited[a].0 as i64));
    }
    if let Some(e) = data_refs.keys().find(|e| !data_seen.contains(e)) {
        return Err(format!("extent tree: data extent {e:?} has no EXTENT_ITEM"));
    }
    w.data_extents = data_refs.keys().copied().collect();
    // Block groups: one per chunk, `used` = Σ extents inside.
    if bgs.len() != ctx.chunks.len() {
        return Err(format!("extent tree: {} block groups for {} chunks", bgs.len(), ctx.chunks.len()));
    }
    let mut allocated: Vec<(u64, u64)> = ctx.visited.keys().map(|&a| (a, ctx.nodesize)).collect();
    allocated.extend(w.data_extents.iter().copied());
    allocated.sort_unstable();
    for w2 in allocated.windows(2) {
        if w2[0].0 + w2[0].1 > w2[1].0 {
            return Err(format!("extents overlap: {:?} and {:?}", w2[0], w2[1]));
        }
    }
    let mut total_used = 0u64;
    for &(start, len, used, flags) in &bgs {
        let c = ctx.chunks.iter().find(|c| c.logical == start && c.length == len && c.ty == flags);
        let Some(c) = c else {
            return Err(format!("extent tree: block group ({start} 192 {len}) flags {flags:#x} matches no chunk"));
        };
        let sum: u64 = allocated.iter().filter(|e| e.0 >= start && e.0 < start + len).map(|e| e.1).sum();
        if sum != used {
            return Err(format!("extent tree: block group {start}: used {used}, extents sum to {sum}"));
        }
        let _ = c;
        total_used += used;
        for e in allocated.iter().filter(|e| e.0 >= start && e.0 < start + len) {
            if e.0 + e.1 > start + len {
                return Err(format!("extent {e:?} crosses the end of chunk {start}"));
            }
            let want = if ctx.visited.contains_key(&e.0) { BG_SYSTEM | BG_METADATA } else { BG_DATA };
            if flags & want == 0 {
                return Err(format!("extent {e:?} in a chunk of type {flags:#x}"));
            }
        }
    }
    if total_used != bytes_used {
        return Err(format!("superblock bytes_used {bytes_used}, block groups say {total_used}"));
    }
    for e in &w.data_extents {
        if super_stripes.iter().any(|&(s, l)| e.0 < s + l && s < e.0 + e.1) {
            return Err(format!("data extent {e:?} inside a superblock stripe"));
        }
    }

    // Dev tree: one DEV_EXTENT per stripe.
    let mut dev_ext = BTreeMap::new();
    for (k, v) in tree_items.get(&DEV_TREE).map_or(&[][..], Vec::as_slice) {
        match (k.objectid, k.ty) {
            (1, DEV_EXTENT) if v.len() == 48 => {
                let cu = ctx.chunk_uuid.unwrap_or_default();
                if u64_at(v, 0)? != CHUNK_TREE || u64_at(v, 8)? != 256 || v[32..48] != cu {
                    return Err(format!("dev tree: DEV_EXTENT {k}: bad chunk tree fields"));
                }
                dev_ext.insert(k.offset, (u64_at(v, 16)?, u64_at(v, 24)?));
            }
            (0, 249) if k.offset == 1 && v.len() == 40 => {}
            _ => return Err(format!("dev tree: unexpected item {k}")),
        }
    }
    let mut want_ext = BTreeMap::new();
    for c in &ctx.chunks {
        for &s in &c.stripes {
            want_ext.insert(s, (c.logical, c.length));
        }
    }
    if dev_ext != want_ext {
        return Err(format!("dev tree: dev extents {dev_ext:?} do not match the chunk stripes {want_ext:?}"));
    }

    // Free space tree: per block group an info item, and free extents that exactly tile the
    // group together with the allocated extents (super stripes count as free).
    let fst = tree_items.get(&FREE_SPACE_TREE).cloned().unwrap_or_default();
    let mut i = 0;
    for &(start, len, _, _) in &bgs {
        let (k, v) =
            fst.get(i).ok_or_else(|| format!("free space tree: no FREE_SPACE_INFO for block group {start}"))?;
        if *k != (Key { objectid: start, ty: FREE_SPACE_INFO, offset: len }) || v.len() != 8 || u32_at(v, 4)? != 0 {
            return Err(format!("free space tree: item {k}, expected FREE_SPACE_INFO ({start} 198 {len})"));
        }
        let count = u32_at(v, 0)? as usize;
        i += 1;
        let mut free = Vec::new();
        while let Some((k, v)) = fst.get(i) {
            if k.ty != FREE_SPACE_EXTENT || k.objectid >= start + len {
                break;
            }
            if !v.is_empty() || k.offset == 0 || k.objectid < start || add(k.objectid, k.offset)? > start + len {
                return Err(format!("free space tree: bad FREE_SPACE_EXTENT {k}"));
            }
            free.push((k.objectid, k.offset));
            i += 1;
        }
        if free.len() != count {
            return Err(format!("free space tree: block group {start}: extent_count {count}, {} extents", free.len()));
        }
        let mut all: Vec<(u64, u64, bool)> = free.iter().map(|&(s, l)| (s, l, true)).collect();
        all.extend(allocated.iter().filter(|e| e.0 >= start && e.0 < start + len).map(|&(s, l)| (s, l, false)));
        all.sort_unstable();
        let mut pos = start;
        let mut prev_free = false;
        for &(s, l, f) in &all {
            if s != pos {
                return Err(format!("free space tree: block group {start}: [{pos}, {s}) neither free nor allocated"));
            }
            if f && prev_free {
                return Err(format!("free space tree: adjacent free extents at {s}"));
            }
            prev_free = f;
            pos = s + l;
        }
        if pos != start + len {
            return Err(format!("free space tree: block group {start}: [{pos}, {}) not accounted", start + len));
        }
    }
    if i != fst.len() {
        return Err(format!("free space tree: unexpected item {}", fst[i].0));
    }

    // UUID tree: every fs tree with a uuid.
    let uuid_items: BTreeMap<Key, Vec<u8>> =
        tree_items.get(&UUID_TREE).cloned().unwrap_or_default().into_iter().collect();
    let mut n_uuid = 0;
    for (&id, (_, _, _, ri)) in &roots {
        let u: [u8; 16] = get(ri, 247).ok_or("short")?;
        if u == [0; 16] {
            continue;
        }
        let k = Key {
            objectid: u64::from_le_bytes(get(&u, 0).ok_or("u")?),
            ty: UUID_KEY_SUBVOL,
            offset: u64::from_le_bytes(get(&u, 8).ok_or("u")?),
        };
        match uuid_items.get(&k) {
            Some(v) if v.len() == 8 && u64_at(v, 0)? == id => n_uuid += 1,
            _ => return Err(format!("uuid tree: no entry {k} → {id}")),
        }
    }
    if n_uuid != uuid_items.len() {
        return Err(format!("uuid tree: {} items for {n_uuid} uuids", uuid_items.len()));
    }
    Ok(w)
}

/// The 64 KiB stripes holding superblock copies, as logical ranges.
fn super_stripes(chunks: &[Chunk], total: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in std::iter::once(SUPER_OFF).chain(MIRRORS) {
        if m >= total {
            continue;
        }
        for c in chunks {
            for &s in &c.stripes {
                if m >= s && m < s + c.length {
                    let l = c.logical + (m - s) / STRIPE_LEN * STRIPE_LEN;
                    out.push((l, STRIPE_LEN.min(c.logical + c.length - l)));
                }
            }
        }
    }
    out
}

fn mode_ft(mode: u32) -> u8 {
    match mode & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// Parse a `btrfs_dir_item` array: (location, type, name, data).
fn dir_items(v: &[u8]) -> Result<Vec<DirItem>, String> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < v.len() {
        let loc = key_at(v, p)?;
        let data_len = u16_at(v, p + 25)? as usize;
        let name_len = u16_at(v, p + 27)? as usize;
        let ty = u8_at(v, p + 29)?;
        let name = bytes_at(v, p + 30, name_len)?.to_vec();
        let data = bytes_at(v, p + 30 + name_len, data_len)?.to_vec();
        if name.is_empty() {
            return Err("empty name".into());
        }
        out.push((loc, ty, name, data));
        p += 30 + name_len + data_len;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
fn fs_tree(
    ctx: &Ctx<'_>,
    id: u64,
    items: &Items,
    csums: &BTreeMap<u64, Vec<u8>>,
    data_refs: &mut DataRefs,
    extent_data: &mut BTreeMap<u64, Vec<u8>>,
    used_csums: &mut BTreeSet<u64>,
    w: &mut Walk,
) -> Result<FsTree, String> {
    let tname = format!("fs tree {}", id as i64);
    let mut t = FsTree::default();
    // by dir: DIR_ITEM entries (name → (loc, ty))
    let mut dir_item_names: BTreeMap<u64, BTreeMap<Vec<u8>, (Key, u8)>> = BTreeMap::new();
    let mut extents: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (k, v) in items {
        let at = |m: String| format!("{tname}: item {k}: {m}");
        if k.ty == INODE_ITEM {
            if v.len() != 160 || k.offset != 0 || !(FIRST_FREE..LAST_FREE).contains(&k.objectid) {
                return Err(at("bad INODE_ITEM".into()));
            }
            let ino = Inode {
                size: u64_at(v, 16)?,
                nbytes: u64_at(v, 24)?,
                nlink: u32_at(v, 40)?,
                uid: u32_at(v, 44)?,
                gid: u32_at(v, 48)?,
                mode: u32_at(v, 52)?,
                rdev: u64_at(v, 56)?,
                times: [time_at(v, 112)?, time_at(v, 124)?, time_at(v, 136)?, time_at(v, 148)?],
                ..Inode::default()
            };
            if mode_ft(ino.mode) == 0 || ino.mode & !0o177777 != 0 {
                return Err(at(format!("mode {:o}", ino.mode)));
            }
            if u64_at(v, 0)? > ctx.generation || u64_at(v, 64)? != 0 {
                return Err(at("generation or flags".into()));
            }
            t.inodes.insert(k.objectid, ino);
            continue;
        }
        let ino = t.inodes.get_mut(&k.objectid).ok_or_else(|| at("item without INODE_ITEM".into()))?;
        match k.ty {
            INODE_REF => {
                let mut p = 0;
                while p < v.len() {
                    let index = u64_at(v, p)?;
                    let n = u16_at(v, p + 8)? as usize;
                    let name = bytes_at(v, p + 10, n)?.to_vec();
                    ino.names.push((k.offset, index, name));
                    p += 10 + n;
                }
            }
            INODE_EXTREF => {
                let mut p = 0;
                while p < v.len() {
                    let parent = u64_at(v, p)?;
                    let index = u64_at(v, p + 8)?;
                    let n = u16_at(v, p + 16)? as usize;
                    let name = bytes_at(v, p + 18, n)?.to_vec();
                    if extref_hash(parent, &name) != k.offset {
                        return Err(at("extref hash mismatch".into()));
                    }
                    ino.names.push((parent, index, name));
                    p += 18 + n;
                }
            }
            XATTR_ITEM => {
                for (loc, ty, name, data) in dir_items(v).map_err(at)? {
                    if ty != FT_XATTR || loc != (Key { objectid: 0, ty: 0, offset: 0 }) || name_hash(&name) != k.offset
                    {
                        return Err(at("bad xattr item".into()));
                    }
                    if ino.xattrs.insert(name, data).is_some() {
                        return Err(at("duplicate xattr".into()));
                    }
                }
            }
            DIR_ITEM => {
                let m = dir_item_names.entry(k.objectid).or_default();
                for (loc, ty, name, data) in dir_items(v).map_err(at)? {
                    if !data.is_empty() || name_hash(&name) != k.offset || m.insert(name, (loc, ty)).is_some() {
                        return Err(at("bad or duplicate DIR_ITEM entry".into()));
                    }
                }
            }
            DIR_INDEX => {
                let e = dir_items(v).map_err(at)?;
                let [(loc, ty, name, data)] = &e[..] else { return Err(at("DIR_INDEX with several entries".into())) };
                if !data.is_empty() || k.offset < 2 {
                    return Err(at("bad DIR_INDEX".into()));
                }
                let de = DirEnt { location: *loc, ty: *ty, index: k.offset };
                if ino.entries.insert(name.clone(), de).is_some() {
                    return Err(at("name indexed twice".into()));
                }
            }
            EXTENT_DATA => extents.entry(k.objectid).or_default().push((k.offset, v.clone())),
            _ => return Err(at("unexpected item type".into())),
        }
    }
    // Directory consistency.
    let mut names_seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (&dir, ino) in &t.inodes {
        let di = dir_item_names.remove(&dir).unwrap_or_default();
        let at = |m: String| format!("{tname}: dir {dir}: {m}");
        if mode_ft(ino.mode) != 2 {
            if !di.is_empty() || !ino.entries.is_empty() {
                return Err(at("directory entries in a non-directory".into()));
            }
            continue;
        }
        if di.len() != ino.entries.len() {
            return Err(at(format!("{} DIR_ITEM names but {} DIR_INDEX", di.len(), ino.entries.len())));
        }
        let mut size = 0u64;
        for (name, e) in &ino.entries {
            let Some(&(loc, ty)) = di.get(name) else { return Err(at(format!("no DIR_ITEM for {:?}", show(name)))) };
            if loc != e.location || ty != e.ty {
                return Err(at(format!("DIR_ITEM and DIR_INDEX differ for {:?}", show(name))));
            }
            size += 2 * name.len() as u64;
            match e.location.ty {
                INODE_ITEM => {
                    let c = t
                        .inodes
                        .get(&e.location.objectid)
                        .ok_or_else(|| at(format!("{:?}: no inode {}", show(name), e.location.objectid)))?;
                    if e.location.offset != 0 || mode_ft(c.mode) != e.ty {
                        return Err(at(format!("{:?}: type {} but inode mode {:o}", show(name), e.ty, c.mode)));
                    }
                    if !c.names.iter().any(|(p, i, n)| *p == dir && *i == e.index && n == name) {
                        return Err(at(format!(
                            "{:?}: inode {} has no matching INODE_REF",
                            show(name),
                            e.location.objectid
                        )));
                    }
                    *names_seen.entry(e.location.objectid).or_default() += 1;
                }
                ROOT_ITEM => {
                    if e.ty != 2 {
                        return Err(at(format!("{:?}: subvolume entry of type {}", show(name), e.ty)));
                    }
                }
                _ => return Err(at(format!("{:?}: location {}", show(name), e.location))),
            }
        }
        let nbytes_ok = ino.nbytes == 0 || (id == DATA_RELOC_TREE && ino.nbytes == ctx.nodesize); // mkfs-style
        if size != ino.size || ino.nlink != 1 || !nbytes_ok {
            return Err(at(format!("size {} (expected {size}), nlink {}, nbytes {}", ino.size, ino.nlink, ino.nbytes)));
        }
    }
    if let Some((d, _)) = dir_item_names.into_iter().next() {
        return Err(format!("{tname}: DIR_ITEM for missing inode {d}"));
    }
    // Names, reachability.
    for (&i, ino) in &t.inodes {
        let at = |m: String| format!("{tname}: inode {i}: {m}");
        if i == FIRST_FREE {
            if ino.names != [(FIRST_FREE, 0, b"..".to_vec())] || mode_ft(ino.mode) != 2 {
                return Err(at("root dir must be a directory with the one name \"..\"".into()));
            }
            continue;
        }
        let seen = names_seen.get(&i).copied().unwrap_or(0);
        if seen == 0 || seen != ino.names.len() {
            return Err(at(format!("{} names but {seen} directory entries", ino.names.len())));
        }
        if mode_ft(ino.mode) != 2 && ino.nlink as usize != seen {
            return Err(at(format!("nlink {} but {seen} names", ino.nlink)));
        }
        if mode_ft(ino.mode) == 2 && seen != 1 {
            return Err(at("directory with several names".into()));
        }
    }
    // Reachability from 256 (names_seen covers entries; make sure there is no cycle of dirs).
    let mut reach = BTreeSet::new();
    let mut stack = vec![FIRST_FREE];
    while let Some(d) = stack.pop() {
        if !reach.insert(d) {
            return Err(format!("{tname}: directory {d} reached twice"));
        }
        if let Some(ino) = t.inodes.get(&d) {
            for e in ino.entries.values() {
                if e.location.ty == INODE_ITEM {
                    if e.ty == 2 {
                        stack.push(e.location.objectid);
                    } else {
                        reach.insert(e.location.objectid);
                    }
                }
            }
        }
    }
    if let Some(i) = t.inodes.keys().find(|i| !reach.contains(i)) {
        return Err(format!("{tname}: inode {i} not reachable from the root directory"));
    }
    // File extents and data.
    for (&i, ino) in &mut t.inodes {
        let list = extents.remove(&i).unwrap_or_default();
        let ft = mode_ft(ino.mode);
        let at = |m: String| format!("{tname}: inode {i}: {m}");
        if !matches!(ft, 1 | 7) {
            if !list.is_empty() || (ft != 2 && (ino.nbytes != 0 || ino.size != 0)) {
                return Err(at("extents or size on an inode without data".into()));
            }
            if !matches!(ft, 3 | 4) && ino.rdev != 0 {
                return Err(at("rdev on a non-device".into()));
            }
            continue;
        }
        if ino.rdev != 0 {
            return Err(at("rdev on a file".into()));
        }
        let mut nbytes = 0u64;
        let mut end = 0u64;
        for (off, v) in &list {
            let at = |m: String| format!("{tname}: item ({i} 108 {off}): {m}");
            let ram = u64_at(v, 8)?;
            let comp = u8_at(v, 16)?;
            let ty = u8_at(v, 20)?;
            if u64_at(v, 0)? > ctx.generation || u8_at(v, 17)? != 0 || u16_at(v, 18)? != 0 || !matches!(comp, 0 | 3) {
                return Err(at("generation, encryption, other_encoding or compression".into()));
            }
            if ty == 0 {
                if *off != 0 || list.len() != 1 {
                    return Err(at("inline extent not alone at offset 0".into()));
                }
                let payload = &v[21..];
                let data = if comp == 3 {
                    if ram > ctx.sectorsize || payload.len() as u64 > ctx.sectorsize - 1 {
                        return Err(at("compressed inline extent too large".into()));
                    }
                    w.compressed += 1;
                    let d = unzstd(payload, usize_of(ram)?).map_err(at)?;
                    if d.len() as u64 != ram {
                        return Err(at(format!("inline frame decodes to {} bytes, ram_bytes {ram}", d.len())));
                    }
                    d
                } else {
                    if payload.len() as u64 != ram || ram > ctx.sectorsize - 1 {
                        return Err(at(format!("inline size {} ram_bytes {ram}", payload.len())));
                    }
                    payload.to_vec()
                };
                if ram != ino.size || ram == 0 {
                    return Err(at(format!("inline ram_bytes {ram} but i_size {}", ino.size)));
                }
                nbytes = ram;
                ino.inline = true;
                ino.data.push((0, data));
                continue;
            }
            if ty != 1 || v.len() != 53 || ft == 7 {
                return Err(at(format!("extent type {ty}, size {} (symlinks are inline only)", v.len())));
            }
            let bytenr = u64_at(v, 21)?;
            let disk_len = u64_at(v, 29)?;
            let eoff = u64_at(v, 37)?;
            let num = u64_at(v, 45)?;
            let s = ctx.sectorsize;
            if off % s != 0 || bytenr % s != 0 || disk_len % s != 0 || num % s != 0 || num == 0 || eoff % s != 0 {
                return Err(at("unaligned extent".into()));
            }
            if add(eoff, num)? > ram || *off < end {
                return Err(at(format!("offset {eoff} + num_bytes {num} > ram_bytes {ram}, or overlaps the previous extent ending at {end}")));
            }
            end = add(*off, num)?;
            if *off >= ino.size || end > round_up(ino.size, s)? {
                return Err(at(format!("extent [{off}, {end}) beyond i_size {}", ino.size)));
            }
            if bytenr == 0 {
                continue; // explicit hole
            }
            nbytes = add(nbytes, num)?;
            if (comp == 3 && (ram > MAX_COMPRESSED || disk_len > MAX_COMPRESSED)) || disk_len > MAX_EXTENT {
                return Err(at(format!("extent too large: ram_bytes {ram}, disk_num_bytes {disk_len}")));
            }
            let c = ctx.chunk_of(bytenr, disk_len).map_err(at)?;
            if c.ty & BG_DATA == 0 {
                return Err(at("data extent outside a data chunk".into()));
            }
            let ref_off = off.checked_sub(eoff).ok_or_else(|| at(format!("extent offset {eoff} > file offset")))?;
            let count = data_refs.entry((bytenr, disk_len)).or_default().entry((id, i, ref_off)).or_default();
            *count = count.checked_add(1).ok_or("ref count overflow")?;
            if let std::collections::btree_map::Entry::Vacant(slot) = extent_data.entry(bytenr) {
                let d = ctx.read_logical(bytenr, usize_of(disk_len)?).map_err(at)?;
                for (j, sector) in d.chunks(usize_of(s)?).enumerate() {
                    let addr = bytenr + j as u64 * s;
                    let want = csums.get(&addr).ok_or_else(|| at(format!("no checksum for data sector {addr}")))?;
                    if ctx.checksum(sector)? != *want {
                        return Err(at(format!("data checksum mismatch at sector {addr}")));
                    }
                    used_csums.insert(addr);
                }
                slot.insert(d);
            }
            let disk = &extent_data[&bytenr];
            if disk.len() as u64 != disk_len {
                return Err(at("one disk_bytenr with two lengths".into()));
            }
            let full = if comp == 3 {
                w.compressed += 1;
                let mut d = unzstd(disk, usize_of(ram)?).map_err(at)?;
                d.resize(usize_of(ram)?, 0);
                d
            } else {
                if ram != disk_len {
                    return Err(at(format!("raw extent ram_bytes {ram} != disk_num_bytes {disk_len}")));
                }
                disk.clone()
            };
            ino.data.push((*off, full[usize_of(eoff)?..usize_of(eoff + num)?].to_vec()));
        }
        if nbytes != ino.nbytes {
            return Err(at(format!("nbytes {} but extents hold {nbytes}", ino.nbytes)));
        }
        if ft == 7 && (!ino.inline || ino.size == 0) {
            return Err(at("symlink without an inline target".into()));
        }
    }
    if let Some((i, _)) = extents.into_iter().next() {
        return Err(format!("{tname}: EXTENT_DATA for missing inode {i}"));
    }
    Ok(t)
}

/// Decode one zstd frame (window ≤ 128 KiB) of at most `cap` bytes; bytes after the frame
/// must be zero.
fn unzstd(src: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    let n = zstd::zstd_safe::find_frame_compressed_size(src).map_err(|e| format!("bad zstd frame (error {e})"))?;
    if src.get(n..).is_none_or(|t| t.iter().any(|&b| b != 0)) {
        return Err(format!("bytes after the zstd frame ({n} of {}) are not zero", src.len()));
    }
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(17)).map_err(|e| format!("zstd: {e}"))?;
    let mut out = vec![0u8; cap];
    let frame = src.get(..n).ok_or("zstd frame longer than the extent")?;
    let got = d.decompress_to_buffer(frame, &mut out[..]).map_err(|e| format!("zstd decompression: {e}"))?;
    out.truncate(got);
    Ok(out)
}

fn show(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// glibc `makedev` encoding → the kernel's `(major << 20) | minor`.
#[must_use]
pub fn kernel_rdev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

/// Compare fs tree `subvol_id` with `tree`: names, inode kinds, mode, uid, gid, mtime, xattrs,
/// symlink targets, rdev, file bytes, hard links. Subvolume links in the image (and an entry
/// of the tree they shadow) are skipped. Returns the number of inodes compared.
///
/// # Errors
/// The first difference, with its path.
pub fn compare(walk: &Walk, subvol_id: u64, tree: &Tree) -> Result<usize, String> {
    let fs = walk.fs_trees.get(&subvol_id).ok_or_else(|| format!("no fs tree {subvol_id}"))?;
    let mut map: BTreeMap<InodeId, u64> = BTreeMap::new();
    let mut back: BTreeMap<u64, InodeId> = BTreeMap::new();
    let mut stack = vec![(InodeId::ROOT, FIRST_FREE, String::from("/"))];
    let mut n = 0;
    while let Some((id, ino, path)) = stack.pop() {
        let at = |m: String| format!("tree {subvol_id} {path}: {m}");
        match (map.insert(id, ino), back.insert(ino, id)) {
            (None, None) => {}
            (Some(a), _) if a == ino => {
                continue; // another name of a hard-linked inode, already compared
            }
            _ => return Err(at(format!("hard link mismatch (image inode {ino})"))),
        }
        let bi = fs.inodes.get(&ino).ok_or_else(|| at(format!("image inode {ino} missing")))?;
        let ti = tree.inode(id);
        n += 1;
        if bi.mode != u32::from(ti.mode()) || bi.uid != ti.meta.uid || bi.gid != ti.meta.gid {
            return Err(at(format!(
                "mode/uid/gid {:o} {} {} vs {:o} {} {}",
                bi.mode,
                bi.uid,
                bi.gid,
                ti.mode(),
                ti.meta.uid,
                ti.meta.gid
            )));
        }
        let mt = (ti.meta.mtime.sec, ti.meta.mtime.nsec.min(999_999_999));
        if bi.times[2] != mt || bi.times[0] != mt || bi.times[1] != mt {
            return Err(at(format!("times {:?} vs mtime {mt:?}", bi.times)));
        }
        let want_x: BTreeMap<Vec<u8>, Vec<u8>> =
            ti.meta.xattrs.iter().map(|x| (x.name.clone(), x.value.clone())).collect();
        if want_x != bi.xattrs {
            return Err(at("xattrs differ".into()));
        }
        match &ti.kind {
            Kind::Dir(d) => {
                let subvol_names: BTreeSet<&Vec<u8>> =
                    bi.entries.iter().filter(|(_, e)| e.location.ty == ROOT_ITEM).map(|(k, _)| k).collect();
                let tnames: Vec<&Vec<u8>> =
                    d.entries.iter().map(|e| &e.name).filter(|nm| !subvol_names.contains(nm)).collect();
                let bnames: Vec<&Vec<u8>> = bi.entries.keys().filter(|nm| !subvol_names.contains(nm)).collect();
                if tnames != bnames {
                    return Err(at(format!("entries differ: tree has {}, image {}", tnames.len(), bnames.len())));
                }
                for e in d.entries.iter().rev() {
                    if subvol_names.contains(&e.name) {
                        continue;
                    }
                    let be = &bi.entries[&e.name];
                    stack.push((
                        e.inode,
                        be.location.objectid,
                        format!(
                            "{}{}{}",
                            path,
                            show(&e.name),
                            if tree.inode(e.inode).as_dir().is_some() { "/" } else { "" }
                        ),
                    ));
                }
            }
            Kind::File(fd) => compare_file(bi, fd).map_err(at)?,
            Kind::Symlink(target) => {
                let got = bi.data.first().map(|d| d.1.as_slice()).unwrap_or_default();
                if bi.size != target.len() as u64 || got != target.as_slice() {
                    return Err(at("symlink target differs".into()));
                }
            }
            Kind::CharDev(r) | Kind::BlockDev(r) => {
                if bi.rdev != kernel_rdev(*r) {
                    return Err(at(format!("rdev {:#x}, expected {:#x}", bi.rdev, kernel_rdev(*r))));
                }
            }
            Kind::Fifo | Kind::Socket => {}
        }
        if !matches!(ti.kind, Kind::Dir(_)) && bi.nlink != ti.links {
            return Err(at(format!("nlink {} vs {} links", bi.nlink, ti.links)));
        }
    }
    if map.len() != fs.inodes.len() {
        return Err(format!("tree {subvol_id}: image has {} inodes, tree reaches {}", fs.inodes.len(), map.len()));
    }
    Ok(n)
}

fn compare_file(bi: &Inode, fd: &FileData) -> Result<(), String> {
    if bi.size != fd.size {
        return Err(format!("size {} vs {}", bi.size, fd.size));
    }
    let src: Vec<u8> = match &fd.source {
        Source::Bytes(b) => b.to_vec(),
        Source::Host(p) => std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?,
    };
    let runs: Vec<(u64, u64)> = fd.runs.iter().map(|r| (r.offset.min(fd.size), r.end().min(fd.size))).collect();
    let exp = |a: u64, b: u64, out: &mut Vec<u8>| {
        // expected bytes of [a, b): source inside runs, zero elsewhere
        out.clear();
        out.resize((b - a) as usize, 0);
        for &(rs, re) in &runs {
            let s = rs.max(a);
            let e = re.min(b);
            if s < e {
                for p in s..e {
                    out[(p - a) as usize] = src.get(p as usize).copied().unwrap_or(0);
                }
            }
        }
    };
    let mut buf = Vec::new();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for (off, data) in &bi.data {
        let end = off + data.len() as u64;
        exp(*off, end, &mut buf);
        if buf != *data {
            let i = buf.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!("content differs at byte {}", off + i as u64));
        }
        covered.push((*off, end));
    }
    // Data not covered by any extent must be zero in the source.
    covered.sort_unstable();
    let mut pos = 0u64;
    for &(s, e) in covered.iter().chain(std::iter::once(&(fd.size, fd.size))) {
        let hi = s.min(fd.size);
        for &(rs, re) in &runs {
            for p in rs.max(pos)..re.min(hi) {
                if src.get(usize::try_from(p).unwrap_or(usize::MAX)).is_some_and(|&b| b != 0) {
                    return Err(format!("byte {p} of data is not stored"));
                }
            }
        }
        pos = pos.max(e);
    }
    Ok(())
}
