//! Stage 4d: extended attributes. As many as fit go into the inode's extra space; the rest
//! into one xattr block, allocated after the inode's other blocks.

use mkdisk_tree::Xattr;

use super::alloc::Alloc;
use super::PInode;
use crate::{xattr, Ext4Error, BS};

/// Lay out `attrs` for `p`: sets the in-inode area and returns the overflow block's bytes, to
/// be placed with [`place_block`] once the inode's other blocks are allocated.
///
/// # Errors
/// [`Ext4Error::Xattr`] for a name over 255 bytes, a bad POSIX ACL, or more than fits a block.
pub(super) fn in_inode(
    p: &mut PInode,
    attrs: &[Xattr],
    path: &dyn Fn() -> String,
) -> Result<Option<Vec<u8>>, Ext4Error> {
    let xl = xattr::layout(attrs).map_err(|reason| Ext4Error::Xattr { path: path(), reason })?;
    p.fields.xattr_area = xl.in_inode;
    Ok(xl.block)
}

/// Allocate the xattr block holding `bytes` for `p`.
pub(super) fn place_block(p: &mut PInode, bytes: Vec<u8>, al: &mut Alloc) {
    // Out of space: block 0 stands in, and `plan` reports DoesNotFit from the overflow count.
    let blk = al.blocks(1).first().copied().unwrap_or(0);
    p.fields.file_acl = blk;
    p.fields.blocks_512 += BS / 512;
    p.xattr_block = Some((blk, bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, len: usize) -> Xattr {
        Xattr { name: name.as_bytes().to_vec(), value: vec![b'v'; len] }
    }

    #[test]
    fn small_attrs_stay_in_the_inode() {
        let mut p = PInode::unused();
        assert_eq!(in_inode(&mut p, &[attr("user.a", 10)], &|| "/f".into()).unwrap(), None);
        assert!(p.fields.xattr_area.is_some());
        let mut p = PInode::unused();
        assert_eq!(in_inode(&mut p, &[], &|| "/f".into()).unwrap(), None);
        assert!(p.fields.xattr_area.is_none());
    }

    #[test]
    fn large_attrs_get_a_block() {
        let mut p = PInode::unused();
        let b = in_inode(&mut p, &[attr("user.big", 1000)], &|| "/f".into()).unwrap().unwrap();
        let mut al = Alloc::new(vec![(77, 1)], Vec::new());
        place_block(&mut p, b.clone(), &mut al);
        assert_eq!((p.fields.file_acl, p.fields.blocks_512, p.xattr_block), (77, 8, Some((77, b))));
    }

    #[test]
    fn too_large_is_an_error() {
        let err = in_inode(&mut PInode::unused(), &[attr("user.huge", 5000)], &|| "/f".into()).unwrap_err();
        assert!(matches!(err, Ext4Error::Xattr { path, .. } if path == "/f"));
    }
}
