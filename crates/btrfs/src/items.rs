//! Filesystem-tree and root-tree item payloads: `btrfs_inode_item`, `btrfs_inode_ref`,
//! `btrfs_inode_extref`, `btrfs_dir_item`, `btrfs_file_extent_item`, `btrfs_root_item`,
//! `btrfs_root_ref`.

use crate::le::{put_bytes, put_i64, put_u16, put_u32, put_u64, put_u8};
use crate::node::Key;

// Item types (`btrfs_tree.h`).
pub(crate) const INODE_ITEM_KEY: u8 = 1;
pub(crate) const INODE_REF_KEY: u8 = 12;
pub(crate) const INODE_EXTREF_KEY: u8 = 13;
pub(crate) const XATTR_ITEM_KEY: u8 = 24;
pub(crate) const DIR_ITEM_KEY: u8 = 84;
pub(crate) const DIR_INDEX_KEY: u8 = 96;
pub(crate) const EXTENT_DATA_KEY: u8 = 108;
pub(crate) const EXTENT_CSUM_KEY: u8 = 128;
pub(crate) const ROOT_ITEM_KEY: u8 = 132;
pub(crate) const ROOT_BACKREF_KEY: u8 = 144;
pub(crate) const ROOT_REF_KEY: u8 = 156;
pub(crate) const UUID_KEY_SUBVOL: u8 = 251;

// `btrfs_dir_item.type` (`BTRFS_FT_*`).
pub(crate) const FT_REG_FILE: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHRDEV: u8 = 3;
pub(crate) const FT_BLKDEV: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;
pub(crate) const FT_XATTR: u8 = 8;

/// `sizeof(struct btrfs_inode_item)`.
pub(crate) const INODE_ITEM_SIZE: usize = 160;
/// `sizeof(struct btrfs_dir_item)` without name and data.
pub(crate) const DIR_ITEM_SIZE: usize = 30;
/// `sizeof(struct btrfs_inode_ref)` without the name.
pub(crate) const INODE_REF_SIZE: usize = 10;
/// `sizeof(struct btrfs_inode_extref)` without the name.
pub(crate) const INODE_EXTREF_SIZE: usize = 18;
/// `sizeof(struct btrfs_file_extent_item)`.
pub(crate) const FILE_EXTENT_SIZE: usize = 53;
/// Inline extent header: the file extent item up to `disk_bytenr`.
pub(crate) const FILE_EXTENT_INLINE_HEADER: usize = 21;
/// `sizeof(struct btrfs_root_item)`.
pub(crate) const ROOT_ITEM_SIZE: usize = 439;
/// `sizeof(struct btrfs_root_ref)` without the name.
pub(crate) const ROOT_REF_SIZE: usize = 18;

/// `BTRFS_INODE_ROOT_ITEM_INIT`.
pub(crate) const INODE_ROOT_ITEM_INIT: u64 = 1 << 31;
/// `BTRFS_ROOT_SUBVOL_RDONLY`.
pub(crate) const ROOT_SUBVOL_RDONLY: u64 = 1;

/// `struct btrfs_timespec` (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    fn put(self, buf: &mut [u8], off: usize) {
        put_i64(buf, off, self.sec);
        put_u32(buf, off + 8, self.nsec);
    }
}

/// The fields of `struct btrfs_inode_item` this writer sets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InodeItem {
    pub generation: u64,
    pub size: u64,
    pub nbytes: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u64,
    pub flags: u64,
    pub time: Timespec,
}

impl InodeItem {
    /// Encode into `buf[off..off + 160]`.
    pub(crate) fn put(&self, buf: &mut [u8], off: usize) {
        put_u64(buf, off, self.generation); // generation
        put_u64(buf, off + 8, self.generation); // transid
        put_u64(buf, off + 16, self.size); // size
        put_u64(buf, off + 24, self.nbytes); // nbytes
        put_u64(buf, off + 32, 0); // block_group
        put_u32(buf, off + 40, self.nlink); // nlink
        put_u32(buf, off + 44, self.uid); // uid
        put_u32(buf, off + 48, self.gid); // gid
        put_u32(buf, off + 52, self.mode); // mode
        put_u64(buf, off + 56, self.rdev); // rdev
        put_u64(buf, off + 64, self.flags); // flags
        put_u64(buf, off + 72, 0); // sequence
                                   // reserved[4] at 80..112
        self.time.put(buf, off + 112); // atime
        self.time.put(buf, off + 124); // ctime
        self.time.put(buf, off + 136); // mtime
        self.time.put(buf, off + 148); // otime
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; INODE_ITEM_SIZE];
        self.put(&mut b, 0);
        b
    }
}

/// A name or xattr value length as its on-disk `u16`.
fn len_u16(b: &[u8]) -> u16 {
    u16::try_from(b.len()).expect("the planner refuses names over 255 bytes and xattrs over MAX_XATTR")
}

/// Append one `btrfs_inode_ref` entry `{index, name_len, name}`.
pub(crate) fn push_inode_ref(out: &mut Vec<u8>, index: u64, name: &[u8]) {
    out.extend_from_slice(&index.to_le_bytes()); // index
    out.extend_from_slice(&len_u16(name).to_le_bytes()); // name_len
    out.extend_from_slice(name);
}

/// Append one `btrfs_inode_extref` entry `{parent_objectid, index, name_len, name}`.
pub(crate) fn push_inode_extref(out: &mut Vec<u8>, parent: u64, index: u64, name: &[u8]) {
    out.extend_from_slice(&parent.to_le_bytes()); // parent_objectid
    out.extend_from_slice(&index.to_le_bytes()); // index
    out.extend_from_slice(&len_u16(name).to_le_bytes()); // name_len
    out.extend_from_slice(name);
}

/// Append one `btrfs_dir_item` (also used for xattrs) followed by name and data.
pub(crate) fn push_dir_item(out: &mut Vec<u8>, location: Key, transid: u64, ty: u8, name: &[u8], data: &[u8]) {
    let start = out.len();
    out.resize(start + DIR_ITEM_SIZE, 0);
    let b = &mut out[start..];
    location.put(b, 0); // location
    put_u64(b, 17, transid); // transid
    put_u16(b, 25, len_u16(data)); // data_len
    put_u16(b, 27, len_u16(name)); // name_len
    put_u8(b, 29, ty); // type
    out.extend_from_slice(name);
    out.extend_from_slice(data);
}

/// `btrfs_file_extent_item.type`.
pub(crate) const FILE_EXTENT_INLINE: u8 = 0;
pub(crate) const FILE_EXTENT_REG: u8 = 1;
/// `btrfs_file_extent_item.compression` for zstd.
pub(crate) const COMPRESS_ZSTD: u8 = 3;

/// Inline file extent: header then the data (`ram_bytes` of file content, stored raw or, for
/// `compression` 3, as one zstd frame).
pub(crate) fn inline_extent(generation: u64, ram_bytes: u64, compression: u8, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; FILE_EXTENT_INLINE_HEADER + data.len()];
    put_u64(&mut b, 0, generation); // generation
    put_u64(&mut b, 8, ram_bytes); // ram_bytes
    put_u8(&mut b, 16, compression); // compression
    put_u8(&mut b, 17, 0); // encryption
    put_u16(&mut b, 18, 0); // other_encoding
    put_u8(&mut b, 20, FILE_EXTENT_INLINE); // type
    put_bytes(&mut b, FILE_EXTENT_INLINE_HEADER, data);
    b
}

/// Regular file extent item (53 bytes).
pub(crate) fn regular_extent(
    generation: u64,
    ram_bytes: u64,
    compression: u8,
    disk_bytenr: u64,
    disk_num_bytes: u64,
    num_bytes: u64,
) -> Vec<u8> {
    let mut b = vec![0u8; FILE_EXTENT_SIZE];
    put_u64(&mut b, 0, generation); // generation
    put_u64(&mut b, 8, ram_bytes); // ram_bytes
    put_u8(&mut b, 16, compression); // compression
    put_u8(&mut b, 20, FILE_EXTENT_REG); // type
    put_u64(&mut b, 21, disk_bytenr); // disk_bytenr
    put_u64(&mut b, 29, disk_num_bytes); // disk_num_bytes
    put_u64(&mut b, 37, 0); // offset
    put_u64(&mut b, 45, num_bytes); // num_bytes
    b
}

/// The fields of `struct btrfs_root_item` this writer sets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RootItem {
    pub generation: u64,
    pub root_dirid: u64,
    pub bytenr: u64,
    pub bytes_used: u64,
    pub flags: u64,
    pub level: u8,
    pub uuid: [u8; 16],
    pub time: i64,
    /// Whether the embedded inode carries `BTRFS_INODE_ROOT_ITEM_INIT`.
    pub fs_tree: bool,
}

impl RootItem {
    pub(crate) fn encode(&self, nodesize: u64) -> Vec<u8> {
        let mut b = vec![0u8; ROOT_ITEM_SIZE];
        InodeItem {
            generation: 1,
            size: 3,
            nbytes: nodesize,
            nlink: 1,
            mode: 0o040755,
            flags: if self.fs_tree { INODE_ROOT_ITEM_INIT } else { 0 },
            ..InodeItem::default()
        }
        .put(&mut b, 0); // inode
        put_u64(&mut b, 160, self.generation); // generation
        put_u64(&mut b, 168, self.root_dirid); // root_dirid
        put_u64(&mut b, 176, self.bytenr); // bytenr
        put_u64(&mut b, 184, 0); // byte_limit
        put_u64(&mut b, 192, self.bytes_used); // bytes_used
        put_u64(&mut b, 200, 0); // last_snapshot
        put_u64(&mut b, 208, self.flags); // flags
        put_u32(&mut b, 216, 1); // refs
                                 // drop_progress (17) at 220, drop_level at 237
        put_u8(&mut b, 238, self.level); // level
        put_u64(&mut b, 239, self.generation); // generation_v2
        put_bytes(&mut b, 247, &self.uuid); // uuid
                                            // parent_uuid 263, received_uuid 279
        let transid = if self.fs_tree { self.generation } else { 0 };
        put_u64(&mut b, 295, transid); // ctransid
        put_u64(&mut b, 303, transid); // otransid
        let t = Timespec { sec: if self.fs_tree { self.time } else { 0 }, nsec: 0 };
        t.put(&mut b, 327); // ctime
        t.put(&mut b, 339); // otime
        b
    }
}

/// `btrfs_root_ref` (also `ROOT_BACKREF`): `{dirid, sequence, name_len, name}`.
pub(crate) fn root_ref(dirid: u64, sequence: u64, name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; ROOT_REF_SIZE];
    put_u64(&mut b, 0, dirid); // dirid
    put_u64(&mut b, 8, sequence); // sequence
    put_u16(&mut b, 16, len_u16(name)); // name_len
    b.extend_from_slice(name);
    b
}
