//! Hashed directories: the half_md4 directory hash (`lib/ext2fs/dirhash.c`) and the
//! `dx_root` / `dx_node` index blocks (`e2fsck/rehash.c set_root_node`).

use crate::csum;
use crate::le::{put_u16, put_u32, put_u8};
use crate::BLOCK_SIZE;

/// `limit` of a `dx_root` with metadata_csum: (bs - 32 - 8) / 8.
pub(crate) const DX_ROOT_LIMIT: usize = (BLOCK_SIZE - 32 - 8) / 8;
/// `limit` of a `dx_node` with metadata_csum: (bs - 8 - 8) / 8.
pub(crate) const DX_NODE_LIMIT: usize = (BLOCK_SIZE - 8 - 8) / 8;
/// `s_def_hash_version` half_md4.
pub(crate) const DX_HASH_HALF_MD4: u8 = 1;
/// Size of `struct dx_root_info`.
const DX_ROOT_INFO_SIZE: usize = 8;
const _: () = assert!(DX_ROOT_INFO_SIZE == 8);
const _: () = assert!(DX_ROOT_LIMIT == 507 && DX_NODE_LIMIT == 510);

fn str2hashbuf(msg: &[u8], len: usize, num: usize) -> [u32; 8] {
    let mut out = [0u32; 8];
    let len32 = u32::try_from(len).expect("names are at most 255 bytes");
    let mut pad = len32 | (len32 << 8);
    pad |= pad << 16;
    let mut val = pad;
    let n = len.min(num * 4);
    let mut num = num as isize;
    let mut k = 0;
    for (i, &b) in msg.iter().take(n).enumerate() {
        // EXT2_FLAGS_SIGNED_HASH: bytes are sign-extended as on x86.
        let c = i32::from(b as i8) as u32;
        val = c.wrapping_add(val << 8);
        if i % 4 == 3 {
            out[k] = val;
            k += 1;
            val = pad;
            num -= 1;
        }
    }
    num -= 1;
    if num >= 0 {
        out[k] = val;
        k += 1;
    }
    loop {
        num -= 1;
        if num < 0 {
            break;
        }
        out[k] = pad;
        k += 1;
    }
    out
}

fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    let step = |t: &mut u32, fv: u32, xk: u32, k: u32, s: u32| {
        *t = t.wrapping_add(fv).wrapping_add(xk.wrapping_add(k)).rotate_left(s);
    };
    let rounds: [(u8, u32, [usize; 8], [u32; 4]); 3] = [
        (0, 0, [0, 1, 2, 3, 4, 5, 6, 7], [3, 7, 11, 19]),
        (1, 0x5A82_7999, [1, 3, 5, 7, 0, 2, 4, 6], [3, 5, 9, 13]),
        (2, 0x6ED9_EBA1, [3, 7, 2, 6, 1, 5, 0, 4], [3, 9, 11, 15]),
    ];
    for (which, k, order, shifts) in rounds {
        let fun = |x: u32, y: u32, z: u32| match which {
            0 => f(x, y, z),
            1 => g(x, y, z),
            _ => h(x, y, z),
        };
        for (i, &idx) in order.iter().enumerate() {
            let s = shifts[i % 4];
            match i % 4 {
                0 => step(&mut a, fun(b, c, d), x[idx], k, s),
                1 => step(&mut d, fun(a, b, c), x[idx], k, s),
                2 => step(&mut c, fun(d, a, b), x[idx], k, s),
                _ => step(&mut b, fun(c, d, a), x[idx], k, s),
            }
        }
    }
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The major hash as the kernel uses it (`fs/ext4/hash.c`): 0xFFFFFFFE, the 32-bit EOF
/// position, becomes 0xFFFFFFFC.
pub(crate) fn kernel_major(major: u32) -> u32 {
    if major == 0xFFFF_FFFE {
        0xFFFF_FFFC
    } else {
        major
    }
}

/// half_md4 `(major, minor)` of `name` with `s_hash_seed` (signed chars), major bit 0 cleared.
pub(crate) fn half_md4(name: &[u8], seed: &[u8; 16]) -> (u32, u32) {
    let mut buf = [0x6745_2301u32, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476];
    let words: [u32; 4] = std::array::from_fn(|i| crate::le::get_u32(seed, i * 4));
    if words.iter().any(|&w| w != 0) {
        buf = words;
    }
    let mut p = name;
    let mut len = name.len();
    while len > 0 {
        let input = str2hashbuf(p, len, 8);
        half_md4_transform(&mut buf, &input);
        len = len.saturating_sub(32);
        p = &p[p.len().min(32)..];
    }
    (buf[1] & !1, buf[2])
}

/// Checksum tail of a dx block: `count_off` is 0x20 for the root, 0x08 for a node.
fn dx_csum(seed: u32, dir_ino: u32, blk: &mut [u8], count_off: usize, count: usize, limit: usize) {
    let c = csum::raw(seed, &[&dir_ino.to_le_bytes(), &0u32.to_le_bytes(), &blk[..count_off + count * 8], &[0u8; 8]]);
    let tail = count_off + limit * 8;
    put_u32(blk, tail, 0); // dt_reserved
    put_u32(blk, tail + 4, c); // dt_checksum
}

/// Fill the `limit/count/block` header and entries at `count_off`; `entries[0].0` is ignored.
fn put_dx_entries(blk: &mut [u8], count_off: usize, limit: usize, entries: &[(u32, u32)]) {
    put_u16(blk, count_off, u16::try_from(limit).expect("DX_ROOT_LIMIT or DX_NODE_LIMIT"));
    put_u16(blk, count_off + 2, u16::try_from(entries.len()).expect("at most limit entries"));
    for (i, &(hash, block)) in entries.iter().enumerate() {
        let off = count_off + i * 8;
        if i > 0 {
            put_u32(blk, off, hash);
        }
        put_u32(blk, off + 4, block);
    }
}

/// A `dx_root` block: `.`, `..` (rec_len bs-12), `dx_root_info`, entries, `dx_tail`.
pub(crate) fn dx_root(seed: u32, dir_ino: u32, parent_ino: u32, levels: u8, entries: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_u32(&mut b, 0x00, dir_ino);
    put_u16(&mut b, 0x04, 12);
    put_u8(&mut b, 0x06, 1);
    put_u8(&mut b, 0x07, crate::dir::FT_DIR);
    b[0x08] = b'.';
    put_u32(&mut b, 0x0C, parent_ino);
    put_u16(&mut b, 0x10, u16::try_from(BLOCK_SIZE - 12).expect("4084"));
    put_u8(&mut b, 0x12, 2);
    put_u8(&mut b, 0x13, crate::dir::FT_DIR);
    b[0x14] = b'.';
    b[0x15] = b'.';
    // dx_root_info at 0x18: reserved_zero, hash_version, info_length, indirect_levels, unused_flags
    put_u32(&mut b, 0x18, 0);
    put_u8(&mut b, 0x1C, DX_HASH_HALF_MD4);
    put_u8(&mut b, 0x1D, u8::try_from(DX_ROOT_INFO_SIZE).expect("8"));
    put_u8(&mut b, 0x1E, levels);
    put_u8(&mut b, 0x1F, 0);
    put_dx_entries(&mut b, 0x20, DX_ROOT_LIMIT, entries);
    dx_csum(seed, dir_ino, &mut b, 0x20, entries.len(), DX_ROOT_LIMIT);
    b
}

/// A `dx_node` block: fake dirent (inode 0, rec_len bs), entries, `dx_tail`.
pub(crate) fn dx_node(seed: u32, dir_ino: u32, entries: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_u32(&mut b, 0, 0);
    // rec_len = bs is stored as 0 in 16 bits only for 64 KiB blocks; 4096 fits.
    put_u16(&mut b, 4, u16::try_from(BLOCK_SIZE).expect("4096"));
    put_dx_entries(&mut b, 0x08, DX_NODE_LIMIT, entries);
    dx_csum(seed, dir_ino, &mut b, 0x08, entries.len(), DX_NODE_LIMIT);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        let u = uuid::Uuid::parse_str("11111111-2222-3333-4444-555555555555").unwrap();
        let s = u.as_bytes();
        assert_eq!(half_md4(b"a", s), (0x61ab28ce, 0x4ffe6d79));
        assert_eq!(half_md4(b"hello", s), (0xe4a977aa, 0xb8f2ce63));
        assert_eq!(half_md4(b"lost+found", s), (0x10e09910, 0x2ceaef16));
        assert_eq!(half_md4(b"0123456789abcdef0123456789abcdef-nixos-system", s), (0x83b3cb96, 0x5a29e75d));
        assert_eq!(half_md4("é".as_bytes(), s), (0x7802026a, 0xd45cb9c3));
        assert_eq!(half_md4(b"hello", &[0; 16]), (0x1746da32, 0x420013b5));
        assert_eq!(kernel_major(0xFFFF_FFFE), 0xFFFF_FFFC);
        assert_eq!(kernel_major(0xFFFF_FFFC), 0xFFFF_FFFC);
        assert_eq!(kernel_major(0x1746_da32), 0x1746_da32);
    }

    /// Finds a name whose half_md4 major hash is 0xFFFFFFFE under the all-0x11 seed (the
    /// input of the `eof_hash_name` test in tests/ext4.rs); minutes of CPU, so ignored.
    #[test]
    #[ignore = "search tool: cargo test -p mkdisk-ext4 --release --lib find_eof_name -- --ignored --nocapture"]
    fn find_eof_name() {
        use rayon::prelude::*;
        let seed = [0x11u8; 16];
        let hit = (0u64..1 << 40).into_par_iter().find_any(|i| {
            let name = format!("eof-{i:010x}");
            half_md4(name.as_bytes(), &seed).0 == 0xFFFF_FFFE
        });
        let hit = hit.expect("no name found");
        assert_eq!(half_md4(format!("eof-{hit:010x}").as_bytes(), &seed).0, 0xFFFF_FFFE, "eof-{hit:010x}");
        eprintln!("found eof-{hit:010x}");
    }
}
