//! Synthetic GRUB i386-pc inputs shaped like GRUB's own: enough for the byte patching of
//! boot.img and core.img to be checked (a real core.img from grub-mkimage is only needed to
//! boot, see [`crate::harness`]).

use std::path::{Path, PathBuf};

/// A core.img as grub-mkimage leaves it, `sectors` long (less 100 bytes): diskboot with the
/// classic MBR-gap blocklist `{2, sectors − 1, 0x820}` at 0x1F4, then the kernel header with
/// `no_rs_length` 0x1234 at 0x214; every other byte 0xC3.
///
/// # Panics
/// Where `sectors` is under 2 or over 65,536.
#[must_use]
pub fn fake_core(sectors: usize) -> Vec<u8> {
    let mut c = vec![0xC3u8; sectors * 512 - 100];
    c[0x1e8..0x1f4].fill(0);
    c[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes());
    c[0x1fc..0x1fe].copy_from_slice(&u16::try_from(sectors - 1).unwrap().to_le_bytes());
    c[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    c[0x210..0x214].fill(0); // redundancy
    c[0x214..0x216].copy_from_slice(&0x1234u16.to_le_bytes()); // no_rs_length
    c
}

/// A GRUB input directory `dir/grub-inputs` (`--grub-bios-dir`): a boot.img of 0xB0 bytes with
/// the 0x55AA signature, a 53-sector [`fake_core`] and `i386-pc/{normal.mod,moddep.lst}`.
///
/// # Panics
/// Where a file cannot be written.
#[must_use]
pub fn fake_grub_dir(dir: &Path) -> PathBuf {
    let g = dir.join("grub-inputs");
    std::fs::create_dir_all(g.join("i386-pc")).unwrap();
    let mut boot = vec![0xB0u8; 512];
    boot[0x1fe] = 0x55;
    boot[0x1ff] = 0xAA;
    std::fs::write(g.join("boot.img"), &boot).unwrap();
    std::fs::write(g.join("core.img"), fake_core(53)).unwrap();
    std::fs::write(g.join("i386-pc/normal.mod"), "mod").unwrap();
    std::fs::write(g.join("i386-pc/moddep.lst"), "normal: \n").unwrap();
    g
}
