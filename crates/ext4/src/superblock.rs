//! `struct ext2_super_block` (1024 bytes at byte 1024 of the filesystem and at the start of
//! every backup group).

use crate::csum;
use crate::le::{hi32, lo16, lo32, lo32_signed, put_u16, put_u32, put_u8};

/// Size of the superblock.
pub(crate) const SB_SIZE: usize = 1024;
const _: () = assert!(SB_SIZE == 1024);

/// `s_feature_compat`: ext_attr | dir_index | has_journal.
pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x0004;
pub(crate) const COMPAT: u32 = 0x0008 | 0x0020;
/// `s_feature_incompat`: filetype | extent | 64bit | flex_bg.
pub(crate) const INCOMPAT: u32 = 0x0002 | 0x0040 | 0x0080 | 0x0200;
/// `s_feature_ro_compat`: sparse_super | large_file | huge_file | dir_nlink | extra_isize |
/// metadata_csum.
pub(crate) const RO_COMPAT: u32 = 0x0001 | 0x0002 | 0x0008 | 0x0020 | 0x0040 | 0x0400;
const _: () = assert!(COMPAT | COMPAT_HAS_JOURNAL == 0x2C && INCOMPAT == 0x2C2 && RO_COMPAT == 0x46B);

/// Log2 of flex_bg group count.
pub(crate) const LOG_GROUPS_PER_FLEX: u8 = 4;

/// Values that vary between filesystems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SbFields {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub r_blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub time: i64,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub hash_seed: [u8; 16],
    pub has_journal: bool,
    /// `s_jnl_blocks[17]`.
    pub jnl_blocks: [u32; 17],
}

impl SbFields {
    /// The superblock copy for group `group` (0 = primary).
    pub(crate) fn encode(&self, group: u32) -> [u8; SB_SIZE] {
        let mut b = [0u8; SB_SIZE];
        let t = lo32_signed(self.time);
        let thi = ((self.time >> 32) & 0xFF) as u8;
        put_u32(&mut b, 0x000, self.inodes_count); // s_inodes_count
        put_u32(&mut b, 0x004, lo32(self.blocks_count)); // s_blocks_count_lo
        put_u32(&mut b, 0x008, lo32(self.r_blocks_count)); // s_r_blocks_count_lo
        put_u32(&mut b, 0x00C, lo32(self.free_blocks)); // s_free_blocks_count_lo
        put_u32(&mut b, 0x010, self.free_inodes); // s_free_inodes_count
        put_u32(&mut b, 0x014, 0); // s_first_data_block
        put_u32(&mut b, 0x018, 2); // s_log_block_size
        put_u32(&mut b, 0x01C, 2); // s_log_cluster_size
        let bpg = u32::try_from(crate::BLOCKS_PER_GROUP).expect("32768");
        put_u32(&mut b, 0x020, bpg); // s_blocks_per_group
        put_u32(&mut b, 0x024, bpg); // s_clusters_per_group
        put_u32(&mut b, 0x028, self.inodes_per_group); // s_inodes_per_group
        put_u32(&mut b, 0x030, t); // s_wtime
        put_u16(&mut b, 0x036, 0xFFFF); // s_max_mnt_count
        put_u16(&mut b, 0x038, 0xEF53); // s_magic
        put_u16(&mut b, 0x03A, if group == 0 { 1 } else { 0 }); // s_state
        put_u16(&mut b, 0x03C, 1); // s_errors: continue
        put_u32(&mut b, 0x040, t); // s_lastcheck
        put_u32(&mut b, 0x04C, 1); // s_rev_level: dynamic
        put_u32(&mut b, 0x054, 11); // s_first_ino
        put_u16(&mut b, 0x058, u16::try_from(crate::inode::INODE_SIZE).expect("256")); // s_inode_size
        put_u16(&mut b, 0x05A, lo16(group)); // s_block_group_nr: 16 bits, wraps like e2fsprogs'
        let compat = COMPAT | if self.has_journal { COMPAT_HAS_JOURNAL } else { 0 };
        put_u32(&mut b, 0x05C, compat); // s_feature_compat
        put_u32(&mut b, 0x060, INCOMPAT); // s_feature_incompat
        put_u32(&mut b, 0x064, RO_COMPAT); // s_feature_ro_compat
        b[0x068..0x078].copy_from_slice(&self.uuid); // s_uuid
        b[0x078..0x088].copy_from_slice(&self.label); // s_volume_name
        put_u16(&mut b, 0x0CE, 0); // s_reserved_gdt_blocks
        if self.has_journal {
            put_u32(&mut b, 0x0E0, 8); // s_journal_inum
        }
        b[0x0EC..0x0FC].copy_from_slice(&self.hash_seed); // s_hash_seed
        put_u8(&mut b, 0x0FC, crate::htree::DX_HASH_HALF_MD4); // s_def_hash_version
        if self.has_journal {
            put_u8(&mut b, 0x0FD, 1); // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        }
        put_u16(&mut b, 0x0FE, u16::try_from(crate::group_desc::DESC_SIZE).expect("64")); // s_desc_size
        put_u32(&mut b, 0x100, 0x0C); // s_default_mount_opts: user_xattr, acl
        put_u32(&mut b, 0x108, t); // s_mkfs_time
        if self.has_journal {
            for (i, w) in self.jnl_blocks.iter().enumerate() {
                put_u32(&mut b, 0x10C + 4 * i, *w); // s_jnl_blocks
            }
        }
        put_u32(&mut b, 0x150, hi32(self.blocks_count)); // s_blocks_count_hi
        put_u32(&mut b, 0x154, hi32(self.r_blocks_count)); // s_r_blocks_count_hi
        put_u32(&mut b, 0x158, hi32(self.free_blocks)); // s_free_blocks_hi
        put_u16(&mut b, 0x15C, crate::inode::EXTRA_ISIZE); // s_min_extra_isize
        put_u16(&mut b, 0x15E, crate::inode::EXTRA_ISIZE); // s_want_extra_isize
        put_u32(&mut b, 0x160, 1); // s_flags: EXT2_FLAGS_SIGNED_HASH
        put_u8(&mut b, 0x174, LOG_GROUPS_PER_FLEX); // s_log_groups_per_flex
        put_u8(&mut b, 0x175, 1); // s_checksum_type: crc32c
        put_u8(&mut b, 0x274, thi); // s_wtime_hi
        put_u8(&mut b, 0x276, thi); // s_mkfs_time_hi
        put_u8(&mut b, 0x277, thi); // s_lastcheck_hi
        let c = csum::raw(!0, &[&b[..0x3FC]]);
        put_u32(&mut b, 0x3FC, c); // s_checksum
        b
    }
}

/// Whether group `g` holds a superblock backup (sparse_super: 0, 1, powers of 3, 5, 7).
pub(crate) fn has_super(g: u32) -> bool {
    if g <= 1 {
        return true;
    }
    for base in [3u32, 5, 7] {
        let mut p = base;
        while p < g {
            match p.checked_mul(base) {
                Some(n) => p = n,
                None => break,
            }
        }
        if p == g {
            return true;
        }
    }
    false
}
