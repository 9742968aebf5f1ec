//! Stage 3: the journal, inode 8, sized like mke2fs does (`ext2fs_default_journal_size`),
//! allocated first so that it lies right after the fixed metadata.

use super::alloc::{finish_extents, push_extents, Alloc};
use super::geometry::Geometry;
use super::{Body, Ident, PInode, JOURNAL_INO};
use crate::inode::EXTENTS_FL;
use crate::le::{get_u32, hi32, lo32};
use crate::{journal, Ext4Error, BS};

/// Plan the journal into `p` (inode 8). Returns `s_jnl_blocks` (the inode's `i_block` and
/// size), or `None` for a filesystem too small to have a journal.
///
/// # Errors
/// [`Ext4Error::BadPlan`] if the journal's extents do not fit an extent tree (they always do).
pub(super) fn plan(
    p: &mut PInode,
    geo: &Geometry,
    ident: &Ident,
    al: &mut Alloc,
) -> Result<Option<[u32; 17]>, Ext4Error> {
    let jblocks = journal::default_blocks(geo.blocks_count);
    if jblocks == 0 {
        return Ok(None);
    }
    let pieces = al.alloc(jblocks);
    let mut exts = Vec::new();
    push_extents(&mut exts, 0, &pieces).ok_or_else(|| Ext4Error::BadPlan("journal extents".into()))?;
    finish_extents(p, ident.seed, JOURNAL_INO, &exts, al).map_err(|r| Ext4Error::BadPlan(format!("journal: {r}")))?;
    p.fields.mode = 0o100600;
    p.fields.links = 1;
    p.fields.size = jblocks * BS;
    p.fields.time_sec = ident.timestamp;
    p.fields.flags = EXTENTS_FL;
    p.fields.blocks_512 += jblocks * (BS / 512);
    let mut jnl_blocks = [0u32; 17];
    for (i, w) in jnl_blocks.iter_mut().take(15).enumerate() {
        *w = get_u32(&p.fields.i_block, i * 4);
    }
    jnl_blocks[15] = hi32(p.fields.size);
    jnl_blocks[16] = lo32(p.fields.size);
    p.body = Body::Journal { extents: exts };
    Ok(Some(jnl_blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::Extent;

    fn ident() -> Ident {
        Ident { uuid: [0; 16], hash_seed: [0; 16], label: [0; 16], seed: 0, timestamp: 7 }
    }

    #[test]
    fn journal_of_a_small_filesystem() {
        let geo = Geometry { blocks_count: 16384, ngroups: 1, ipg: 4096, itb: 256, desc_blocks: 1 };
        let mut al = Alloc::new(vec![(300, 16000)], Vec::new());
        let mut p = PInode::unused();
        let jnl = plan(&mut p, &geo, &ident(), &mut al).unwrap().unwrap();
        assert_eq!(p.body, Body::Journal { extents: vec![Extent { lblk: 0, pblk: 300, len: 1024 }] });
        assert_eq!((p.fields.size, p.fields.blocks_512, p.fields.time_sec), (1024 * BS, 8192, 7));
        // s_jnl_blocks: the extent root, then the size hi, lo.
        assert_eq!(jnl[0], 0x0001_F30A);
        assert_eq!((jnl[15], jnl[16]), (0, 1024 * 4096));
    }

    #[test]
    fn no_journal_below_2048_blocks() {
        let geo = Geometry { blocks_count: 2047, ngroups: 1, ipg: 512, itb: 32, desc_blocks: 1 };
        let mut al = Alloc::new(vec![(40, 2000)], Vec::new());
        let mut p = PInode::unused();
        assert_eq!(plan(&mut p, &geo, &ident(), &mut al).unwrap(), None);
        assert_eq!(p, PInode::unused());
    }
}
