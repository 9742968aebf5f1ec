//! Extended attributes (`lib/ext2fs/ext_attr.c`, `ext2_ext_attr.h`): in-inode area and one
//! overflow block, `ext2_ext_attr_entry` with name indexes and hashes.

use mkdisk_tree::Xattr;

use crate::csum;
use crate::le::{get_u32, put_u16, put_u32, put_u8};
use crate::BLOCK_SIZE;

/// `EXT2_EXT_ATTR_MAGIC`.
const EXT2_EXT_ATTR_MAGIC: u32 = 0xEA02_0000;
/// Size of `ext2_ext_attr_header` (block header).
const HEADER_SIZE: usize = 32;
/// Size of the fixed part of `ext2_ext_attr_entry`.
const ENTRY_SIZE: usize = 16;
const _: () = assert!(HEADER_SIZE == 32 && ENTRY_SIZE == 16);
/// Bytes for entries + values in the inode: 96 - 4 (magic).
const IN_INODE_SPACE: usize = 92;

/// Name prefixes and their `e_name_index`, longest first where one prefixes another.
const PREFIXES: &[(&[u8], u8)] = &[
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"system.richacl", 8),
    (b"user.", 1),
    (b"trusted.", 4),
    (b"security.", 6),
    (b"system.", 7),
    (b"gnu.", 10),
];

struct Ent {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn split_name(full: &[u8]) -> (u8, &[u8]) {
    for &(p, idx) in PREFIXES {
        if let Some(rest) = full.strip_prefix(p) {
            if idx == 2 || idx == 3 || idx == 8 {
                if rest.is_empty() {
                    return (idx, rest);
                }
                continue;
            }
            return (idx, rest);
        }
    }
    (0, full)
}

/// Convert a POSIX ACL from the VFS xattr format (v2, 8-byte entries) to `ext4_acl_header` v1
/// with short entries for USER_OBJ, GROUP_OBJ, MASK and OTHER.
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || get_u32(v, 0) != 2 || (v.len() - 4) % 8 != 0 {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[0..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

/// `ext2fs_ext_attr_hash_entry`.
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h = 0u32;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = value.to_vec();
    padded.resize(pad4(value.len()), 0);
    for w in padded.chunks(4) {
        h = (h << 16) ^ (h >> 16) ^ get_u32(w, 0);
    }
    h
}

/// Where a set of xattrs goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct XattrLayout {
    /// The in-inode area (0xA0..0x100), if any attribute is stored there.
    pub in_inode: Option<Box<[u8; 96]>>,
    /// The overflow block without its checksum, if needed.
    pub block: Option<Vec<u8>>,
}

/// Lay out `attrs`: in-inode first (in `(index, name_len, name)` order), the rest in one block.
/// Errors are human-readable reasons.
pub(crate) fn layout(attrs: &[Xattr]) -> Result<XattrLayout, String> {
    if attrs.is_empty() {
        return Ok(XattrLayout::default());
    }
    let mut ents = Vec::new();
    for a in attrs {
        let (index, name) = split_name(&a.name);
        if name.len() > 255 {
            return Err(format!("xattr name {:?} is longer than 255 bytes", String::from_utf8_lossy(&a.name)));
        }
        let value = if index == 2 || index == 3 {
            acl_to_disk(&a.value).ok_or_else(|| format!("{}: not a POSIX ACL", String::from_utf8_lossy(&a.name)))?
        } else {
            a.value.clone()
        };
        ents.push(Ent { index, name: name.to_vec(), value });
    }
    ents.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    let cost = |e: &Ent| ENTRY_SIZE + pad4(e.name.len()) + pad4(e.value.len());
    let mut used = 4; // terminator
    let mut split = 0;
    for e in &ents {
        if used + cost(e) > IN_INODE_SPACE {
            break;
        }
        used += cost(e);
        split += 1;
    }
    let mut out = XattrLayout::default();
    if split > 0 {
        let mut area = Box::new([0u8; 96]);
        put_u32(&mut area[..], 0, EXT2_EXT_ATTR_MAGIC);
        // Offsets are relative to the first entry (area offset 4).
        fill(&mut area[4..], 0, &ents[..split], IN_INODE_SPACE);
        out.in_inode = Some(area);
    }
    let rest = &ents[split..];
    if !rest.is_empty() {
        let need: usize = HEADER_SIZE + 4 + rest.iter().map(cost).sum::<usize>();
        if need > BLOCK_SIZE {
            return Err(format!("extended attributes need {need} bytes, more than one {BLOCK_SIZE}-byte block"));
        }
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u32(&mut b, 0x00, EXT2_EXT_ATTR_MAGIC); // h_magic
        put_u32(&mut b, 0x04, 1); // h_refcount
        put_u32(&mut b, 0x08, 1); // h_blocks
        let hashes = fill(&mut b, HEADER_SIZE, rest, BLOCK_SIZE);
        let mut h = 0u32;
        for e in hashes {
            if e == 0 {
                h = 0;
                break;
            }
            h = (h << 16) ^ (h >> 16) ^ e;
        }
        put_u32(&mut b, 0x0C, h); // h_hash
        out.block = Some(b);
    }
    Ok(out)
}

/// Write entries from `first` and values from the end of `buf[..end]` downwards; offsets are
/// relative to `buf` start. Returns the entry hashes.
fn fill(buf: &mut [u8], first: usize, ents: &[Ent], end: usize) -> Vec<u32> {
    let mut off = first;
    let mut vend = end;
    let mut hashes = Vec::new();
    for e in ents {
        vend -= pad4(e.value.len());
        buf[vend..vend + e.value.len()].copy_from_slice(&e.value);
        let h = entry_hash(&e.name, &e.value);
        hashes.push(h);
        put_u8(buf, off, u8::try_from(e.name.len()).expect("layout checks names <= 255 bytes")); // e_name_len
        put_u8(buf, off + 1, e.index); // e_name_index
        put_u16(buf, off + 2, u16::try_from(vend).expect("an offset within one block")); // e_value_offs
        put_u32(buf, off + 4, 0); // e_value_inum
        put_u32(buf, off + 8, u32::try_from(e.value.len()).expect("layout fits values in one block")); // e_value_size
        put_u32(buf, off + 12, h); // e_hash
        buf[off + ENTRY_SIZE..off + ENTRY_SIZE + e.name.len()].copy_from_slice(&e.name);
        off += ENTRY_SIZE + pad4(e.name.len());
    }
    hashes
}

/// Set `h_checksum` of an xattr block at `block_nr`.
pub(crate) fn finish_block(seed: u32, block_nr: u64, b: &mut [u8]) {
    put_u32(b, 0x10, 0);
    let c = csum::raw(seed, &[&block_nr.to_le_bytes(), b]);
    put_u32(b, 0x10, c);
}
