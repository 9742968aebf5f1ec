//! The file allocation table: FAT[0] (media), FAT[1] (end-of-chain with the clean bits),
//! then one entry per data cluster; every chain is contiguous (`c → c+1 → … → EOC`).

use crate::geometry::Geometry;
use crate::{put_u16, put_u32, FatType};

/// `BPB_Media` of a fixed disk.
pub(crate) const MEDIA_FIXED: u8 = 0xF8;

/// A contiguous cluster chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Chain {
    /// First cluster (≥ 2).
    pub first: u32,
    /// Clusters (≥ 1).
    pub len: u32,
}

impl Chain {
    /// One past the last cluster.
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.first) + u64::from(self.len)
    }
}

fn entry_value(fat_type: FatType, cluster: u64, chains: &[Chain], idx: &mut usize) -> u32 {
    let (media, eoc) = match fat_type {
        FatType::Fat16 => (0xFF00 | u32::from(MEDIA_FIXED), 0xFFFF),
        FatType::Fat32 => (0x0FFF_FF00 | u32::from(MEDIA_FIXED), 0x0FFF_FFFF),
    };
    match cluster {
        // FAT[0]: media byte in the low 8 bits, all other bits set.
        0 => media,
        // FAT[1]: end-of-chain with "clean shutdown" and "no hard error" set.
        1 => eoc,
        c => {
            while *idx < chains.len() && chains[*idx].end() <= c {
                *idx += 1;
            }
            match chains.get(*idx) {
                Some(ch) if u64::from(ch.first) <= c => {
                    if c + 1 == ch.end() {
                        eoc
                    } else {
                        u32::try_from(c + 1).expect("c + 1 < end ≤ 2^32")
                    }
                }
                _ => 0,
            }
        }
    }
}

/// Encode the FAT entries starting at entry `first_entry` into `out` (whose length is a
/// multiple of the entry size). `chains` must be sorted and non-overlapping.
pub(crate) fn encode(geometry: &Geometry, chains: &[Chain], first_entry: u64, out: &mut [u8]) {
    let width = match geometry.fat_type {
        FatType::Fat16 => 2,
        FatType::Fat32 => 4,
    };
    let mut idx = chains.partition_point(|c| c.end() <= first_entry);
    for (i, slot) in out.chunks_exact_mut(width).enumerate() {
        let cluster = first_entry + i as u64;
        let v = entry_value(geometry.fat_type, cluster, chains, &mut idx);
        match geometry.fat_type {
            FatType::Fat16 => {
                let [lo, hi, ..] = v.to_le_bytes();
                put_u16(slot, 0, u16::from_le_bytes([lo, hi]));
            }
            FatType::Fat32 => put_u32(slot, 0, v),
        }
    }
}
