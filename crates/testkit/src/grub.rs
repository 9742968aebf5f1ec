//! Synthetic GRUB i386-pc inputs shaped like GRUB's own: a library directory mkdisk can
//! assemble a core.img from ([`fake_grub_lib`]) and a core.img for the byte patching of the
//! embedding ([`fake_core`]). Booting needs Debian's GRUB (see [`crate::harness`]).

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

/// A minimal ELF32 ET_EXEC EM_386 file with `.text` (`code`) at 0x9000, `.data` (`data`)
/// after it at the next 4-byte boundary and a `.bss` of 0x100 bytes: the shape of GRUB's
/// i386-pc `kernel.img`.
fn fake_kernel_img(code: &[u8], data: &[u8]) -> Vec<u8> {
    let text_off = 52u32;
    let data_addr = (0x9000 + code.len()).next_multiple_of(4);
    let data_off = text_off + u32::try_from(code.len()).unwrap();
    let shoff = (data_off + u32::try_from(data.len()).unwrap()).next_multiple_of(4);
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    let h16 = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
    let h32 = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes());
    h16(&mut f, 2); // ET_EXEC
    h16(&mut f, 3); // EM_386
    h32(&mut f, 1);
    h32(&mut f, 0x9000); // entry
    h32(&mut f, 0); // phoff
    h32(&mut f, shoff);
    h32(&mut f, 0); // flags
    for v in [52u16, 0, 0, 40, 4, 0] {
        h16(&mut f, v); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(code);
    f.extend_from_slice(data);
    f.resize(usize::try_from(shoff).unwrap(), 0);
    let sections = [
        (0u32, 0u32, 0u32, 0u32, 0u32),
        (1, 6, 0x9000, text_off, u32::try_from(code.len()).unwrap()),
        (1, 3, u32::try_from(data_addr).unwrap(), data_off, u32::try_from(data.len()).unwrap()),
        (8, 3, u32::try_from(data_addr + data.len()).unwrap(), 0, 0x100),
    ];
    for (kind, flags, addr, off, size) in sections {
        for v in [0, kind, flags, addr, off, size, 0, 0, 4, 0] {
            h32(&mut f, v);
        }
    }
    f
}

/// A synthetic GRUB library directory `dir/grub-lib` (what `--grub` takes, like
/// `${grub2}/lib/grub`) holding `i386-pc/`, shaped like GRUB's so that mkdisk can assemble a
/// core.img from it: [`fake_kernel_img`], a 512-byte `diskboot.img` with the default blocklist
/// entry `{2, 0, 0x820}`, a 300-byte `lzma_decompress.img` (`no_rs_length` 0x0123), a
/// `boot.img` with the 0x55AA signature, `moddep.lst` and small `.mod` files. The returned
/// path is the library directory.
///
/// # Panics
/// Where a file cannot be written.
#[must_use]
pub fn fake_grub_lib(dir: &Path) -> PathBuf {
    let lib = dir.join("grub-lib");
    let pc = lib.join("i386-pc");
    std::fs::create_dir_all(&pc).unwrap();
    let code: Vec<u8> = (0..700u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    std::fs::write(pc.join("kernel.img"), fake_kernel_img(&code, b"GRUB kernel data")).unwrap();
    let mut diskboot = vec![0xD1u8; 512];
    diskboot[0x1e8..0x1f4].fill(0);
    diskboot[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes());
    diskboot[0x1fc..0x1fe].fill(0);
    diskboot[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    std::fs::write(pc.join("diskboot.img"), diskboot).unwrap();
    let mut decomp = vec![0xDCu8; 300];
    decomp[0x08..0x14].fill(0);
    decomp[0x14..0x16].copy_from_slice(&0x0123u16.to_le_bytes());
    std::fs::write(pc.join("lzma_decompress.img"), decomp).unwrap();
    let mut boot = vec![0xB0u8; 512];
    boot[0x1fe] = 0x55;
    boot[0x1ff] = 0xAA;
    std::fs::write(pc.join("boot.img"), boot).unwrap();
    let moddep =
        "biosdisk:\npart_gpt:\nfshelp:\next2: fshelp\nfat: fshelp\nbtrfs: zstd\nzstd:\nsearch_fs_uuid:\nnormal:\n";
    std::fs::write(pc.join("moddep.lst"), moddep).unwrap();
    for m in moddep.lines().filter_map(|l| l.split(':').next()) {
        std::fs::write(pc.join(format!("{m}.mod")), format!("\x7fELF fake module {m}\n").repeat(5)).unwrap();
    }
    lib
}
