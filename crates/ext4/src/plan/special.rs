//! Stage 4c: symlinks and device nodes (fifos and sockets are nothing but their inode).
//! A target under 60 bytes is stored in `i_block` (fast symlink), a longer one in one block;
//! device numbers go into `i_block` in the old or the new encoding.

use super::alloc::{finish_extents, push_extents, Alloc};
use super::{Body, PInode};
use crate::inode::EXTENTS_FL;
use crate::le::put_u32;
use crate::{Ext4Error, BLOCK_SIZE, BS};

/// Plan a symlink to `target` into `p` (inode `ino`).
///
/// # Errors
/// [`Ext4Error::BadSymlink`] for an empty target or one of 4096 bytes or more.
pub(super) fn symlink(
    p: &mut PInode,
    seed: u32,
    ino: u32,
    target: &[u8],
    al: &mut Alloc,
    path: &dyn Fn() -> String,
) -> Result<(), Ext4Error> {
    if target.is_empty() || target.len() >= BLOCK_SIZE {
        return Err(Ext4Error::BadSymlink { path: path(), len: target.len() });
    }
    p.fields.size = target.len() as u64;
    if target.len() < 60 {
        p.fields.i_block[..target.len()].copy_from_slice(target);
        return Ok(());
    }
    let pieces = al.alloc(1);
    let mut exts = Vec::new();
    push_extents(&mut exts, 0, &pieces).ok_or_else(|| Ext4Error::BadPlan("symlink".into()))?;
    p.fields.flags = EXTENTS_FL;
    p.fields.blocks_512 = BS / 512;
    finish_extents(p, seed, ino, &exts, al).map_err(Ext4Error::BadPlan)?;
    let pblk = pieces.first().map_or(0, |x| x.0);
    p.body = Body::Symlink { pblk, target: target.to_vec() };
    Ok(())
}

/// Store device number `rdev` (glibc `makedev` encoding) in `p`: `i_block[0]` in the old
/// 8:8 encoding when both fit, else `i_block[1]` in the kernel's `new_encode_dev` (12-bit
/// major, 20-bit minor).
///
/// # Errors
/// [`Ext4Error::BadDevice`] for a major of 4096 or more or a minor of 2^20 or more.
pub(super) fn device(p: &mut PInode, rdev: u64, path: &dyn Fn() -> String) -> Result<(), Ext4Error> {
    // glibc's gnu_dev_major / gnu_dev_minor: 32 bits each.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    if major < 256 && minor < 256 {
        let old = u32::try_from(major * 256 + minor).expect("both below 256");
        put_u32(&mut p.fields.i_block, 0, old);
        return Ok(());
    }
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(Ext4Error::BadDevice { path: path(), major, minor });
    }
    let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    put_u32(&mut p.fields.i_block, 4, u32::try_from(new).expect("12-bit major and 20-bit minor make 32 bits"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::le::get_u32;

    /// glibc's `makedev`.
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    #[test]
    fn fast_and_slow_symlinks() {
        let mut al = Alloc::new(vec![(50, 10)], Vec::new());
        let mut p = PInode::unused();
        symlink(&mut p, 0, 12, b"target", &mut al, &|| "/l".into()).unwrap();
        assert_eq!((&p.fields.i_block[..7], p.fields.size, &p.body), (&b"target\0"[..], 6, &Body::Empty));
        let long = vec![b'a'; 60];
        let mut p = PInode::unused();
        symlink(&mut p, 0, 12, &long, &mut al, &|| "/l".into()).unwrap();
        assert_eq!(p.body, Body::Symlink { pblk: 50, target: long });
        assert_eq!((p.fields.size, p.fields.blocks_512, p.fields.flags), (60, 8, EXTENTS_FL));
        for bad in [&b""[..], &[b'a'; 4096][..]] {
            let err = symlink(&mut PInode::unused(), 0, 12, bad, &mut al, &|| "/l".into()).unwrap_err();
            assert!(matches!(err, Ext4Error::BadSymlink { len, .. } if len == bad.len()));
        }
    }

    #[test]
    fn device_encodings() {
        let enc = |major, minor| {
            let mut p = PInode::unused();
            device(&mut p, makedev(major, minor), &|| "/dev/x".into())
                .map(|()| (get_u32(&p.fields.i_block, 0), get_u32(&p.fields.i_block, 4)))
        };
        assert_eq!(enc(8, 1).unwrap(), (0x0801, 0));
        assert_eq!(enc(259, 3).unwrap(), (0, 0x0001_0303));
        assert_eq!(enc(4095, 0xF_FFFF).unwrap(), (0, 0xFFFF_FFFF));
        assert!(matches!(enc(4096, 0), Err(Ext4Error::BadDevice { major: 4096, minor: 0, .. })));
        assert!(matches!(enc(1, 1 << 20), Err(Ext4Error::BadDevice { major: 1, .. })));
    }
}
