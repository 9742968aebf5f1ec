//! Stage 4b: regular files. The blocks that hold data runs (holes stay unallocated), each
//! contiguous run of logical blocks allocated in one go and mapped by extents.

use mkdisk_tree::{FileData, InodeId};

use super::alloc::{finish_extents, push_extents, Alloc};
use super::{Body, PInode};
use crate::inode::EXTENTS_FL;
use crate::{Ext4Error, BS};

/// Logical block ranges `[start, end)` that hold data, sorted and merged, within the size.
fn block_ranges(fd: &FileData) -> Vec<(u64, u64)> {
    let end_blk = fd.size.div_ceil(BS);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for r in &fd.runs {
        if r.len == 0 {
            continue;
        }
        let s = r.offset / BS;
        let e = r.end().div_ceil(BS).min(end_blk);
        if s >= e {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => ranges.push((s, e)),
        }
    }
    ranges
}

/// Plan regular file `t` (inode `ino`): size, data blocks and extents.
///
/// # Errors
/// [`Ext4Error::FileTooLarge`] past 2^32 logical blocks (16 TiB) or beyond a two-level extent
/// tree.
pub(super) fn plan(
    p: &mut PInode,
    seed: u32,
    ino: u32,
    t: InodeId,
    fd: &FileData,
    al: &mut Alloc,
    path: &dyn Fn() -> String,
) -> Result<(), Ext4Error> {
    p.fields.size = fd.size;
    p.fields.flags = EXTENTS_FL;
    let mut exts = Vec::new();
    let mut data_blocks = 0u64;
    for (s, e) in block_ranges(fd) {
        let pieces = al.alloc(e - s);
        data_blocks += e - s;
        push_extents(&mut exts, s, &pieces)
            .ok_or_else(|| Ext4Error::FileTooLarge { path: path(), reason: "larger than 16 TiB".into() })?;
    }
    p.fields.blocks_512 = data_blocks * (BS / 512);
    finish_extents(p, seed, ino, &exts, al).map_err(|reason| Ext4Error::FileTooLarge { path: path(), reason })?;
    p.body = Body::File { tree: t, extents: exts };
    Ok(())
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{DataRun, Source};

    use super::*;
    use crate::extent::Extent;

    fn sparse(size: u64, runs: &[(u64, u64)]) -> FileData {
        let mut fd = FileData::dense(size, Source::Host("/dev/null".into()));
        fd.runs = runs.iter().map(|&(offset, len)| DataRun { offset, len }).collect();
        fd
    }

    #[test]
    fn holes_are_not_allocated() {
        // Runs in block 0, in blocks 2..4 and 4 (merged), and one past the size.
        let fd = sparse(5 * BS, &[(10, 1), (2 * BS, 1000 + BS), (3 * BS + 5000, 10), (9 * BS, 1)]);
        assert_eq!(block_ranges(&fd), vec![(0, 1), (2, 5)]);
        let mut al = Alloc::new(vec![(100, 50)], Vec::new());
        let mut p = PInode::unused();
        plan(&mut p, 0, 12, InodeId::ROOT, &fd, &mut al, &|| "/f".into()).unwrap();
        let exts = vec![Extent { lblk: 0, pblk: 100, len: 1 }, Extent { lblk: 2, pblk: 101, len: 3 }];
        assert_eq!(p.body, Body::File { tree: InodeId::ROOT, extents: exts });
        assert_eq!((p.fields.size, p.fields.blocks_512), (5 * BS, 32));
    }

    #[test]
    fn past_16_tib_is_an_error() {
        let fd = sparse(1 << 45, &[((1 << 44) - BS, 2 * BS)]);
        let mut al = Alloc::new(vec![(100, 50)], Vec::new());
        let mut p = PInode::unused();
        let err = plan(&mut p, 0, 12, InodeId::ROOT, &fd, &mut al, &|| "/big".into()).unwrap_err();
        assert!(matches!(err, Ext4Error::FileTooLarge { path, .. } if path == "/big"));
    }
}
