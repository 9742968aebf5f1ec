//! Stage 4, data allocation: every piece gets its data extents in canonical order (fs tree,
//! inode, offset) from 9 MiB on, skipping superblock mirror stripes and never crossing a
//! 1 GiB data chunk; then the SYSTEM chunk and the data chunks that cover them.

use std::collections::BTreeMap;

use mkdisk_tree::Kind;

use super::prepare::Fs;
use super::{
    ino_of, round_up, DataExtent, DATA_CHUNK_MAX, DATA_START, MAX_EXTENT, MIB, MIRRORS, STRIPE, SYS_LEN, SYS_LOGICAL,
};
use crate::chunk::{self, Chunk};
use crate::BtrfsError;

/// Data allocator over the data region: skips superblock stripes, never crosses a chunk.
pub(super) struct DataAlloc {
    pub cursor: u64,
}

impl DataAlloc {
    fn skip(&mut self) {
        for m in MIRRORS {
            let ex = m / STRIPE * STRIPE;
            if self.cursor >= ex && self.cursor < ex + STRIPE {
                self.cursor = ex + STRIPE;
            }
        }
    }

    fn limit(&self) -> u64 {
        let rel = self.cursor - DATA_START;
        let mut lim = DATA_START + (rel / DATA_CHUNK_MAX + 1) * DATA_CHUNK_MAX;
        for m in MIRRORS {
            let ex = m / STRIPE * STRIPE;
            if ex >= self.cursor && ex < lim {
                lim = ex;
            }
        }
        lim
    }

    /// Up to `len` contiguous bytes (all of them if `whole`).
    pub(super) fn take(&mut self, len: u64, whole: bool) -> (u64, u64) {
        loop {
            self.skip();
            let room = self.limit() - self.cursor;
            if whole && room < len {
                self.cursor += room;
                continue;
            }
            let got = len.min(room).min(MAX_EXTENT);
            let at = self.cursor;
            self.cursor += got;
            return (at, got);
        }
    }
}

/// Extent indices of each (fs tree id, inode number).
pub(crate) type ByOwner = BTreeMap<(u64, u64), Vec<usize>>;

/// The data extents and the chunks so far.
pub(crate) struct Data {
    /// Every data extent, by logical address.
    pub extents: Vec<DataExtent>,
    /// Extent indices of each (fs tree, inode).
    pub by_owner: ByOwner,
    /// The SYSTEM chunk, then the data chunks.
    pub chunks: Vec<Chunk>,
    /// Where the metadata chunk starts (after the data chunks).
    pub meta_start: u64,
}

/// Bytes up to the end of the data if it were packed without gaps: a lower bound checked
/// before allocating, so that a huge sparse source fails fast instead of allocating forever.
fn data_need(fss: &[Fs<'_>]) -> u64 {
    fss.iter()
        .flat_map(|fs| fs.prepared.pieces.iter().flatten())
        .map(|p| p.zstd.as_ref().map_or(p.len, |f| f.len))
        .fold(DATA_START, u64::saturating_add)
}

/// The extents of every piece, in canonical order.
fn extents(fss: &[Fs<'_>]) -> Result<(Vec<DataExtent>, u64), BtrfsError> {
    let mut alloc = DataAlloc { cursor: DATA_START };
    let mut extents: Vec<DataExtent> = Vec::new();
    for fs in fss {
        for (pos, pieces) in fs.prepared.pieces.iter().enumerate() {
            let Kind::File(fd) = &fs.tree.inode(fs.n.order[pos]).kind else { continue };
            let ino = ino_of(pos);
            let extent = |logical, disk_len, ram_len, file_offset, zstd| DataExtent {
                logical,
                disk_len,
                ram_len,
                file_offset,
                file_size: fd.size,
                source: fd.source.clone(),
                zstd,
                root: fs.id,
                ino,
            };
            for p in pieces {
                if let Some(frame) = &p.zstd {
                    let disk_len = round_up(frame.len, crate::SECTORSIZE)?;
                    let (at, _) = alloc.take(disk_len, true);
                    extents.push(extent(at, disk_len, p.len, p.off, Some(frame.clone())));
                    continue;
                }
                let mut done = 0;
                while done < p.len {
                    let (at, got) = alloc.take(p.len - done, false);
                    extents.push(extent(at, got, got, p.off + done, None));
                    done += got;
                }
            }
        }
    }
    Ok((extents, alloc.cursor))
}

/// The SYSTEM chunk, then data chunks of at most 1 GiB covering `data_len` bytes from 9 MiB.
fn chunks(data_len: u64) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = vec![Chunk {
        logical: SYS_LOGICAL,
        length: SYS_LEN,
        flags: chunk::BLOCK_GROUP_SYSTEM | chunk::BLOCK_GROUP_DUP,
        stripes: vec![SYS_LOGICAL, SYS_LOGICAL + SYS_LEN],
    }];
    let mut s = DATA_START;
    while s < DATA_START + data_len {
        let l = (DATA_START + data_len - s).min(DATA_CHUNK_MAX);
        chunks.push(Chunk { logical: s, length: l, flags: chunk::BLOCK_GROUP_DATA, stripes: vec![s] });
        s += l;
    }
    chunks
}

/// Allocate the data of `fss` on a device of `total_bytes`.
///
/// # Errors
/// [`BtrfsError::DoesNotFit`] when the data alone does not fit.
pub(crate) fn allocate(fss: &[Fs<'_>], total_bytes: u64) -> Result<Data, BtrfsError> {
    let need = data_need(fss);
    if need > total_bytes {
        return Err(BtrfsError::DoesNotFit { needed: need, available: total_bytes });
    }
    let (extents, data_end) = extents(fss)?;
    let data_len = round_up((data_end - DATA_START).max(MIB), MIB)?;
    let mut by_owner = ByOwner::new();
    for (i, e) in extents.iter().enumerate() {
        by_owner.entry((e.root, e.ino)).or_default().push(i);
    }
    Ok(Data { extents, by_owner, chunks: chunks(data_len), meta_start: DATA_START + data_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_alloc_skips_mirror_and_chunk_ends() {
        let mut a = DataAlloc { cursor: 64 * MIB - 8192 };
        assert_eq!(a.take(100_000, false), (64 * MIB - 8192, 8192));
        assert_eq!(a.take(100_000, false).0, 64 * MIB + STRIPE);
        let mut b = DataAlloc { cursor: DATA_START + DATA_CHUNK_MAX - 4096 };
        assert_eq!(b.take(8192, true).0, DATA_START + DATA_CHUNK_MAX, "whole extents never cross a chunk");
        let mut c = DataAlloc { cursor: 128 * MIB };
        assert_eq!(c.take(3 * MAX_EXTENT, false), (128 * MIB, MAX_EXTENT), "extents are at most 128 MiB");
    }

    #[test]
    fn data_chunks_cover_the_data_in_1g_steps() {
        let c = chunks(MIB);
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].logical, c[1].length), (DATA_START, MIB));
        let c = chunks(DATA_CHUNK_MAX + 5 * MIB);
        assert_eq!(c.iter().map(|c| c.length).collect::<Vec<_>>(), vec![SYS_LEN, DATA_CHUNK_MAX, 5 * MIB]);
        assert_eq!(c[2].logical, DATA_START + DATA_CHUNK_MAX);
    }

    #[test]
    fn nothing_to_allocate_still_gives_one_data_chunk() {
        let d = allocate(&[], 100 * MIB).unwrap();
        assert!(d.extents.is_empty());
        assert_eq!(d.meta_start, DATA_START + MIB);
        assert!(matches!(
            allocate(&[], DATA_START - 1),
            Err(BtrfsError::DoesNotFit { needed: DATA_START, available }) if available == DATA_START - 1
        ));
    }
}
