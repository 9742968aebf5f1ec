//! The boot sector: BPB and the FAT16 or FAT32 extended BPB.

use crate::fat_table::MEDIA_FIXED;
use crate::geometry::Geometry;
use crate::{put_u16, put_u32, FatType};

/// Bytes of the boot sector.
pub(crate) const BOOT_SECTOR_BYTES: usize = 512;
const _: () = assert!(std::mem::size_of::<[u8; BOOT_SECTOR_BYTES]>() == 512);

/// `BPB_FSInfo`: sector of FSInfo (FAT32).
pub(crate) const FSINFO_SECTOR: u16 = 1;
/// `BPB_BkBootSec`: sector of the backup boot sector (FAT32).
pub(crate) const BACKUP_BOOT_SECTOR: u16 = 6;
/// `BPB_RootClus`.
pub(crate) const ROOT_CLUSTER: u32 = 2;

/// Encode the boot sector. `label` is the 11-byte `BS_VolLab` ("NO NAME    " for none).
pub(crate) fn encode(g: &Geometry, hidden_sectors: u32, volume_id: u32, label: &[u8; 11]) -> [u8; BOOT_SECTOR_BYTES] {
    // Every field below fits its width for a geometry from `Geometry::compute`: at most 64
    // sectors per cluster, 2 FATs, 512 root entries, reserved sectors rounded up to at most
    // 64, and the 16-bit sector and FAT-size fields used only for FAT16 volumes that fit them.
    let mut s = [0u8; BOOT_SECTOR_BYTES];
    let fat32 = g.fat_type == FatType::Fat32;
    // 0x00 BS_jmpBoot: short jump over the BPB to the (empty) boot code.
    s[0..3].copy_from_slice(if fat32 { &[0xEB, 0x58, 0x90] } else { &[0xEB, 0x3C, 0x90] });
    s[3..11].copy_from_slice(b"MSWIN4.1"); // 0x03 BS_OEMName
    put_u16(&mut s, 0x0B, 512); // BPB_BytsPerSec
    s[0x0D] = u8::try_from(g.sectors_per_cluster).expect("at most 64 sectors per cluster"); // BPB_SecPerClus
    put_u16(&mut s, 0x0E, u16::try_from(g.reserved_sectors).expect("at most 64 reserved sectors")); // BPB_RsvdSecCnt
    s[0x10] = u8::try_from(g.num_fats).expect("2 FATs"); // BPB_NumFATs
    put_u16(&mut s, 0x11, u16::try_from(g.root_entries).expect("0 or 512 root entries")); // BPB_RootEntCnt
    let small = !fat32 && g.total_sectors < 0x1_0000;
    // 0x13 BPB_TotSec16 (FAT16 volumes under 32 MiB), else 0x20 BPB_TotSec32.
    put_u16(&mut s, 0x13, if small { u16::try_from(g.total_sectors).expect("checked: below 0x10000") } else { 0 });
    s[0x15] = MEDIA_FIXED; // BPB_Media
                           // 0x16 BPB_FATSz16: 0 is what marks FAT32.
    let fat16_sectors = || u16::try_from(g.fat_sectors).expect("a FAT16 FAT is at most 65,536 × 2 bytes = 256 sectors");
    put_u16(&mut s, 0x16, if fat32 { 0 } else { fat16_sectors() });
    // CHS geometry (unused by UEFI and Linux), as mkfs.fat picks it for image files.
    let (spt, heads) = if u64::from(g.total_sectors) * 512 < 512 << 20 { (32, 64) } else { (63, 255) };
    put_u16(&mut s, 0x18, spt); // BPB_SecPerTrk
    put_u16(&mut s, 0x1A, heads); // BPB_NumHeads
    put_u32(&mut s, 0x1C, hidden_sectors); // BPB_HiddSec
    put_u32(&mut s, 0x20, if small { 0 } else { g.total_sectors }); // BPB_TotSec32
    let ebpb = if fat32 {
        put_u32(&mut s, 0x24, g.fat_sectors); // BPB_FATSz32
        put_u16(&mut s, 0x28, 0); // BPB_ExtFlags: FATs mirrored
        put_u16(&mut s, 0x2A, 0); // BPB_FSVer 0.0
        put_u32(&mut s, 0x2C, ROOT_CLUSTER); // BPB_RootClus
        put_u16(&mut s, 0x30, FSINFO_SECTOR); // BPB_FSInfo
        put_u16(&mut s, 0x32, BACKUP_BOOT_SECTOR); // BPB_BkBootSec
                                                   // 0x34..0x40 BPB_Reserved: zero
        0x40
    } else {
        0x24
    };
    s[ebpb] = 0x80; // BS_DrvNum
    s[ebpb + 1] = 0; // BS_Reserved1 (dirty bit clear)
    s[ebpb + 2] = 0x29; // BS_BootSig: the next three fields are valid
    put_u32(&mut s, ebpb + 3, volume_id); // BS_VolID
    s[ebpb + 7..ebpb + 18].copy_from_slice(label); // BS_VolLab
    s[ebpb + 18..ebpb + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " }); // BS_FilSysType
                                                                                            // Boot code: zero. 0x1FE signature.
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}
