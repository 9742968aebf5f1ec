//! The FAT32 FSInfo sector (sector 1, backup at sector 7).

use crate::put_u32;

/// Bytes of the FSInfo sector.
pub(crate) const FSINFO_BYTES: usize = 512;
const _: () = assert!(std::mem::size_of::<[u8; FSINFO_BYTES]>() == 512);

/// Encode FSInfo with an exact free-cluster count and next-free hint (`0xFFFFFFFF` when
/// unknown / none free).
pub(crate) fn encode(free_count: u32, next_free: u32) -> [u8; FSINFO_BYTES] {
    let mut s = [0u8; FSINFO_BYTES];
    put_u32(&mut s, 0, 0x4161_5252); // 0x000 FSI_LeadSig "RRaA"
                                     // 0x004..0x1E4 FSI_Reserved1: zero
    put_u32(&mut s, 484, 0x6141_7272); // 0x1E4 FSI_StrucSig "rrAa"
    put_u32(&mut s, 488, free_count); // 0x1E8 FSI_Free_Count
    put_u32(&mut s, 492, next_free); // 0x1EC FSI_Nxt_Free
                                     // 0x1F0..0x1FC FSI_Reserved2: zero
    put_u32(&mut s, 508, 0xAA55_0000); // 0x1FC FSI_TrailSig
    s
}
