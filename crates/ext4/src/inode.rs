//! `struct ext2_inode_large` (256 bytes on disk) and its checksum.

use crate::csum;
use crate::le::{hi16, lo16, lo32, lo32_signed, put_u16, put_u32};

/// On-disk inode size.
pub(crate) const INODE_SIZE: usize = 256;
/// `i_extra_isize`: the 160-byte large inode minus the 128-byte base.
pub(crate) const EXTRA_ISIZE: u16 = 32;
/// Start of the in-inode xattr area (128 + i_extra_isize).
pub(crate) const XATTR_OFF: usize = 128 + EXTRA_ISIZE as usize;
const _: () = assert!(XATTR_OFF == 0xA0 && INODE_SIZE - XATTR_OFF == 96);

/// `EXT4_EXTENTS_FL`.
pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT4_INDEX_FL` (htree directory).
pub(crate) const INDEX_FL: u32 = 0x0000_1000;

/// Everything that goes into one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InodeFields {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds and nanoseconds used for atime, ctime, mtime and crtime.
    pub time_sec: i64,
    pub time_nsec: u32,
    pub links: u16,
    /// `i_blocks` in 512-byte units (48 bits with huge_file).
    pub blocks_512: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub file_acl: u64,
    /// In-inode xattr area (0xA0..0x100), all zero when unused.
    pub xattr_area: Option<Box<[u8; 96]>>,
}

impl Default for InodeFields {
    fn default() -> Self {
        InodeFields {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            time_sec: 0,
            time_nsec: 0,
            links: 0,
            blocks_512: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            xattr_area: None,
        }
    }
}

/// `(sec, nsec)` clamped to [`crate::TIME_MIN`]`..=`[`crate::TIME_MAX`], and whether it had
/// to be. A clamped time gets nanoseconds 0, like the kernel's `timestamp_truncate`; nanoseconds
/// of an in-range time are capped at 999 999 999.
pub(crate) fn clamp_time(sec: i64, nsec: u32) -> (i64, u32, bool) {
    if sec < crate::TIME_MIN {
        (crate::TIME_MIN, 0, true)
    } else if sec > crate::TIME_MAX {
        (crate::TIME_MAX, 0, true)
    } else {
        (sec, nsec.min(999_999_999), false)
    }
}

/// `ext4_encode_extra_time`: nanoseconds and epoch bits. `sec` must be within
/// [`crate::TIME_MIN`]`..=`[`crate::TIME_MAX`] (see [`clamp_time`]); outside it the epoch bits
/// wrap.
fn extra_time(sec: i64, nsec: u32) -> u32 {
    // `sec - (s32)sec` is the multiple of 2^32 nearest below `sec + 2^31`.
    let epoch = (sec.wrapping_add(1 << 31) >> 32) & 3;
    (nsec << 2) | u32::try_from(epoch).expect("masked to two bits")
}

impl InodeFields {
    /// Encode and checksum inode `ino`.
    pub(crate) fn encode(&self, seed: u32, ino: u32) -> [u8; INODE_SIZE] {
        debug_assert!((crate::TIME_MIN..=crate::TIME_MAX).contains(&self.time_sec), "{}", self.time_sec);
        let mut b = [0u8; INODE_SIZE];
        let t = lo32_signed(self.time_sec);
        let te = extra_time(self.time_sec, self.time_nsec);
        put_u16(&mut b, 0x00, self.mode); // i_mode
        put_u16(&mut b, 0x02, lo16(self.uid)); // i_uid
        put_u32(&mut b, 0x04, lo32(self.size)); // i_size_lo
        put_u32(&mut b, 0x08, t); // i_atime
        put_u32(&mut b, 0x0C, t); // i_ctime
        put_u32(&mut b, 0x10, t); // i_mtime
        put_u16(&mut b, 0x18, lo16(self.gid)); // i_gid
        put_u16(&mut b, 0x1A, self.links); // i_links_count
        put_u32(&mut b, 0x1C, lo32(self.blocks_512)); // i_blocks_lo
        put_u32(&mut b, 0x20, self.flags); // i_flags
        b[0x28..0x64].copy_from_slice(&self.i_block); // i_block[15]
        put_u32(&mut b, 0x68, lo32(self.file_acl)); // i_file_acl_lo
        put_u32(&mut b, 0x6C, (self.size >> 32) as u32); // i_size_high
        put_u16(&mut b, 0x74, hi16(self.blocks_512)); // l_i_blocks_hi
        put_u16(&mut b, 0x76, hi16(self.file_acl)); // l_i_file_acl_high
        put_u16(&mut b, 0x78, (self.uid >> 16) as u16); // l_i_uid_high
        put_u16(&mut b, 0x7A, (self.gid >> 16) as u16); // l_i_gid_high
        put_u16(&mut b, 0x80, EXTRA_ISIZE); // i_extra_isize
        put_u32(&mut b, 0x84, te); // i_ctime_extra
        put_u32(&mut b, 0x88, te); // i_mtime_extra
        put_u32(&mut b, 0x8C, te); // i_atime_extra
        put_u32(&mut b, 0x90, t); // i_crtime
        put_u32(&mut b, 0x94, te); // i_crtime_extra
        if let Some(x) = &self.xattr_area {
            b[XATTR_OFF..].copy_from_slice(&x[..]);
        }
        set_csum(seed, ino, &mut b);
        b
    }
}

/// `l_i_checksum_lo` (0x7C) and `i_checksum_hi` (0x82) over all 256 bytes.
pub(crate) fn set_csum(seed: u32, ino: u32, b: &mut [u8; INODE_SIZE]) {
    put_u16(b, 0x7C, 0);
    put_u16(b, 0x82, 0);
    let c = csum::raw(seed, &[&ino.to_le_bytes(), &0u32.to_le_bytes(), &b[..]]);
    put_u16(b, 0x7C, (c & 0xFFFF) as u16);
    put_u16(b, 0x82, (c >> 16) as u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `ext4_decode_extra_time`.
    fn decode(base: u32, extra: u32) -> (i64, u32) {
        (i64::from(base as i32) + (i64::from(extra & 3) << 32), extra >> 2)
    }

    #[test]
    fn times_round_trip_and_clamp() {
        for (sec, nsec) in [
            (crate::TIME_MIN, 0),
            (crate::TIME_MIN + 1, 5),
            (-1, 999_999_999),
            (0, 0),
            (i64::from(i32::MAX), 1),
            (1 << 31, 2),
            (4_102_444_800, 3), // 2100-01-01
            (crate::TIME_MAX, 999_999_999),
        ] {
            assert_eq!(clamp_time(sec, nsec), (sec, nsec, false));
            assert_eq!(decode(lo32_signed(sec), extra_time(sec, nsec)), (sec, nsec), "{sec}");
        }
        assert_eq!(clamp_time(crate::TIME_MIN - 1, 7), (crate::TIME_MIN, 0, true));
        assert_eq!(clamp_time(-2_177_452_800, 0), (crate::TIME_MIN, 0, true)); // 1901-01-01
        assert_eq!(clamp_time(crate::TIME_MAX + 1, 7), (crate::TIME_MAX, 0, true));
        assert_eq!(clamp_time(16_725_225_600, 0), (crate::TIME_MAX, 0, true)); // 2500-01-01
        assert_eq!(clamp_time(i64::MIN, 0), (crate::TIME_MIN, 0, true));
        assert_eq!(clamp_time(i64::MAX, 0), (crate::TIME_MAX, 0, true));
        assert_eq!(clamp_time(5, u32::MAX), (5, 999_999_999, false));
    }
}
