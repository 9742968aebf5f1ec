//! Directory entries: the 32-byte short (8.3) entry, long-name (LFN) entries with their
//! checksum, and FAT date/time encoding.

use mkdisk_tree::{civil_from_days, Timestamp};

use crate::names::ShortName;
use crate::{put_u16, put_u32};

/// Bytes per directory entry (short or LFN).
pub(crate) const DIR_ENTRY_BYTES: usize = 32;

/// One encoded directory entry.
pub(crate) type RawDirEntry = [u8; DIR_ENTRY_BYTES];
const _: () = assert!(std::mem::size_of::<RawDirEntry>() == 32);

/// `DIR_Attr` bits.
pub(crate) const ATTR_VOLUME_ID: u8 = 0x08;
pub(crate) const ATTR_DIRECTORY: u8 = 0x10;
pub(crate) const ATTR_ARCHIVE: u8 = 0x20;
/// `LDIR_Attr` of a long-name entry (READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID).
pub(crate) const ATTR_LONG_NAME: u8 = 0x0F;

/// UTF-16 units per LFN entry.
pub(crate) const LFN_UNITS_PER_ENTRY: usize = 13;

/// A FAT date and time (UTC, 2-second resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FatTime {
    /// `((year - 1980) << 9) | (month << 5) | day`.
    pub date: u16,
    /// `(hour << 11) | (minute << 5) | (second / 2)`.
    pub time: u16,
}

/// 1980-01-01T00:00:00Z.
const FAT_EPOCH_MIN: i64 = 315_532_800;
/// 2107-12-31T23:59:58Z (2108-01-01 is 4,354,819,200).
const FAT_EPOCH_MAX: i64 = 4_354_819_198;

impl FatTime {
    /// Encode a Unix time (UTC), clamped to the FAT range, seconds rounded down to even.
    pub(crate) fn from_timestamp(ts: Timestamp) -> FatTime {
        let sec = ts.sec.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX);
        let days = sec.div_euclid(86_400);
        let secs = sec.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // All fields are in range after the clamp (years 1980..=2107), so both fit 16 bits.
        let date = ((y - 1980) << 9) | (m << 5) | d;
        let time = ((secs / 3600) << 11) | (((secs / 60) % 60) << 5) | ((secs % 60) / 2);
        FatTime {
            date: u16::try_from(date).expect("year 0..=127, month, day after the clamp"),
            time: u16::try_from(time).expect("hour, minute, second / 2 of one day"),
        }
    }
}

/// A short (8.3) directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShortEntry {
    /// `DIR_Name`.
    pub name: ShortName,
    /// `DIR_Attr`.
    pub attr: u8,
    /// `DIR_FstClusHI`/`DIR_FstClusLO`.
    pub first_cluster: u32,
    /// `DIR_FileSize`.
    pub size: u32,
    /// Creation, write and access time.
    pub time: FatTime,
}

impl ShortEntry {
    /// The 32 bytes of the entry.
    pub(crate) fn encode(&self) -> RawDirEntry {
        let mut e = [0u8; DIR_ENTRY_BYTES];
        e[0..11].copy_from_slice(&self.name); // 0x00 DIR_Name
        e[11] = self.attr; // 0x0B DIR_Attr
        e[12] = 0; // 0x0C DIR_NTRes
        e[13] = 0; // 0x0D DIR_CrtTimeTenth
        put_u16(&mut e, 14, self.time.time); // 0x0E DIR_CrtTime
        put_u16(&mut e, 16, self.time.date); // 0x10 DIR_CrtDate
        put_u16(&mut e, 18, self.time.date); // 0x12 DIR_LstAccDate
        let [lo0, lo1, hi0, hi1] = self.first_cluster.to_le_bytes();
        put_u16(&mut e, 20, u16::from_le_bytes([hi0, hi1])); // 0x14 DIR_FstClusHI
        put_u16(&mut e, 22, self.time.time); // 0x16 DIR_WrtTime
        put_u16(&mut e, 24, self.time.date); // 0x18 DIR_WrtDate
        put_u16(&mut e, 26, u16::from_le_bytes([lo0, lo1])); // 0x1A DIR_FstClusLO
        put_u32(&mut e, 28, self.size); // 0x1C DIR_FileSize
        e
    }
}

/// The LFN checksum of a short name.
pub(crate) fn lfn_checksum(name: &ShortName) -> u8 {
    name.iter().fold(0u8, |sum, &b| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b))
}

/// Number of LFN entries for a name of `units` UTF-16 units.
pub(crate) fn lfn_entry_count(units: usize) -> usize {
    units.div_ceil(LFN_UNITS_PER_ENTRY)
}

/// The LFN entries for `units`, in on-disk order (last part first, with the 0x40 bit).
pub(crate) fn lfn_entries(units: &[u16], checksum: u8) -> Vec<RawDirEntry> {
    let n = lfn_entry_count(units.len());
    let mut out = Vec::with_capacity(n);
    for k in (1..=n).rev() {
        let mut part = [0xFFFFu16; LFN_UNITS_PER_ENTRY];
        let start = (k - 1) * LFN_UNITS_PER_ENTRY;
        let chunk = &units[start..units.len().min(start + LFN_UNITS_PER_ENTRY)];
        part[..chunk.len()].copy_from_slice(chunk);
        if chunk.len() < LFN_UNITS_PER_ENTRY {
            part[chunk.len()] = 0x0000;
        }
        let mut e = [0u8; DIR_ENTRY_BYTES];
        // 0x00 LDIR_Ord.
        let ord = u8::try_from(k).expect("a long name of at most 255 units has at most 20 entries");
        e[0] = if k == n { ord | 0x40 } else { ord };
        for (i, u) in part[0..5].iter().enumerate() {
            put_u16(&mut e, 1 + 2 * i, *u); // 0x01 LDIR_Name1
        }
        e[11] = ATTR_LONG_NAME; // 0x0B LDIR_Attr
        e[12] = 0; // 0x0C LDIR_Type
        e[13] = checksum; // 0x0D LDIR_Chksum
        for (i, u) in part[5..11].iter().enumerate() {
            put_u16(&mut e, 14 + 2 * i, *u); // 0x0E LDIR_Name2
        }
        put_u16(&mut e, 26, 0); // 0x1A LDIR_FstClusLO
        for (i, u) in part[11..13].iter().enumerate() {
            put_u16(&mut e, 28 + 2 * i, *u); // 0x1C LDIR_Name3
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = FatTime::from_timestamp(Timestamp::from_secs(1));
        assert_eq!((t.date, t.time), (0x0021, 0));
        // 2024-02-29T13:45:31Z
        let t = FatTime::from_timestamp(Timestamp::from_secs(1_709_214_331));
        assert_eq!(t.date, (44 << 9) | (2 << 5) | 29);
        assert_eq!(t.time, (13 << 11) | (45 << 5) | 15);
        let t = FatTime::from_timestamp(Timestamp::from_secs(i64::MAX));
        assert_eq!(t.date, (127 << 9) | (12 << 5) | 31);
        assert_eq!(t.time, (23 << 11) | (59 << 5) | 29);
        let t = FatTime::from_timestamp(Timestamp::from_secs(i64::MIN));
        assert_eq!(t.date, 0x21);
    }

    #[test]
    fn lfn_layout() {
        let units: Vec<u16> = "loader.conf".encode_utf16().collect();
        let e = lfn_entries(&units, 0x12);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(e[0][13], 0x12);
        assert_eq!(&e[0][28..32], &[0, 0, 0xFF, 0xFF]);
        let units = vec![u16::from(b'a'); 26];
        let e = lfn_entries(&units, 0);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(e[1][0], 0x01);
        assert_eq!(&e[0][30..32], &[b'a', 0]);
    }
}
