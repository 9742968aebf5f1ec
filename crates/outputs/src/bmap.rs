//! bmap 2.0 for bmaptool (`BmapCreate.py`; `shared/docs/outputs.md` §3): the 4 KiB blocks
//! that hold data, as inclusive ranges with each range's SHA-256, and the file's own checksum.
//!
//! A block is mapped when any byte of it lies in a data extent of the raw file
//! (`SEEK_DATA`). The raw file's holes are the only thing left out: a block of written zeros
//! stays mapped, since zeros the image relies on (GPT entry arrays, FAT tables, zeroed inode
//! tables) must reach a target that is not zeroed (§3.4, §5).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ranges::{data_ranges_in, read_exact_at, touched_units};
use crate::{io_err, overflow, to_usize, Named, OutputError};

/// The block size written (`BlockSize`).
pub const BMAP_BLOCK_SIZE: u64 = 4096;
/// Bytes hashed per read.
const CHUNK: u64 = 1 << 20;

/// Inclusive block ranges `(first, last)` of the blocks any of `ranges` touches.
fn block_ranges(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in touched_units(ranges, BMAP_BLOCK_SIZE) {
        match out.last_mut() {
            Some(last) if last.1 + 1 == b => last.1 = b,
            _ => out.push((b, b)),
        }
    }
    out
}

/// The hex SHA-256 of bytes `first*bs .. min((last+1)*bs, size)` of `src`.
fn range_sha256(src: Named<'_>, size: u64, (first, last): (u64, u64)) -> Result<String, OutputError> {
    let raw = src.path;
    let start = first.checked_mul(BMAP_BLOCK_SIZE).ok_or_else(|| overflow(raw, "bmap range"))?;
    let end = last.saturating_add(1).saturating_mul(BMAP_BLOCK_SIZE).min(size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; to_usize(raw, CHUNK)?];
    let mut off = start;
    while off < end {
        let n = to_usize(raw, CHUNK.min(end - off))?;
        read_exact_at(src.file, &mut buf[..n], src.base + off).map_err(io_err(raw, "reading the raw image"))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bmap text for an image of `size` bytes with `ranges` (inclusive block ranges and
/// their hex SHA-256), `BmapFileChecksum` filled in as §3.2 says: written as 64 `0`s, the
/// whole text hashed, the digest put in their place.
#[must_use]
pub fn bmap_text(image_name: &str, size: u64, ranges: &[((u64, u64), String)]) -> String {
    let blocks = size.div_ceil(BMAP_BLOCK_SIZE);
    let mapped: u64 = ranges.iter().map(|((f, l), _)| l - f + 1).sum();
    let zeros = "0".repeat(64);
    let mut s = String::new();
    let name = xml_escape(image_name);
    s.push_str("<?xml version=\"1.0\" ?>\n");
    let _ = write!(s, "<!-- bmap of {name}, written by mkdisk -->\n<bmap version=\"2.0\">\n");
    let _ = writeln!(s, "    <ImageSize> {size} </ImageSize>");
    let _ = writeln!(s, "    <BlockSize> {BMAP_BLOCK_SIZE} </BlockSize>");
    let _ = writeln!(s, "    <BlocksCount> {blocks} </BlocksCount>");
    let _ = writeln!(s, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
    let _ = writeln!(s, "    <ChecksumType> sha256 </ChecksumType>");
    let _ = writeln!(s, "    <BmapFileChecksum> {zeros} </BmapFileChecksum>");
    s.push_str("    <BlockMap>\n");
    for ((first, last), sum) in ranges {
        let r = if first == last { format!("{first}") } else { format!("{first}-{last}") };
        let _ = writeln!(s, "        <Range chksum=\"{sum}\"> {r} </Range>");
    }
    s.push_str("    </BlockMap>\n</bmap>\n");
    let digest = hex(&Sha256::digest(s.as_bytes()));
    s.replacen(&zeros, &digest, 1)
}

/// `&`, `<`, `>` and `-` escaped for an XML comment (`--` may not appear in one).
fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '-' => "&#45;".to_string(),
            c if c.is_control() => "?".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Writes the bmap 2.0 file `out` (created or truncated) for the raw image `raw`, whose name
/// `image_name` goes into a comment only. Every mapped range is read once to hash it.
///
/// # Errors
/// [`OutputError::Io`] for a failed read or write.
pub fn write_bmap(raw: &Path, image_name: &str, out: &Path) -> Result<(), OutputError> {
    let src = File::open(raw).map_err(io_err(raw, "opening the raw image"))?;
    let dst = File::create(out).map_err(io_err(out, "creating the bmap file"))?;
    bmap_into(Named::new(&src, raw), image_name, &[], Named::new(&dst, out))
}

/// [`write_bmap`] between open files (`dst` empty), mapping `extra` byte ranges
/// `(offset, len)` besides the data extents: holes whose zeros matter (a zeroed journal,
/// say), which `bmaptool copy` then writes as zeros onto a disk with old data.
///
/// # Errors
/// As [`write_bmap`].
pub fn bmap_into(raw: Named<'_>, image_name: &str, extra: &[(u64, u64)], out: Named<'_>) -> Result<(), OutputError> {
    let (src, path, base) = (raw.file, raw.path, raw.base);
    let size = src.metadata().map_err(io_err(path, "reading the raw image's size"))?.len().saturating_sub(base);
    let mut ranges = data_ranges_in(src, base, size).map_err(io_err(path, "finding data extents (SEEK_DATA)"))?;
    ranges.extend(extra.iter().map(|&(o, l)| (o.min(size), l.min(size.saturating_sub(o)))).filter(|r| r.1 > 0));
    ranges.sort_unstable();
    let mut hashed = Vec::new();
    for r in block_ranges(&ranges) {
        hashed.push((r, range_sha256(raw, size, r)?));
    }
    let text = bmap_text(image_name, size, &hashed);
    let mut w = out.file;
    w.write_all(text.as_bytes()).map_err(io_err(out.path, "writing the bmap file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_merge() {
        let r = [(0, 10), (4096, 4096), (8192 + 100, 1), (40_960, 4097)];
        assert_eq!(block_ranges(&r), [(0, 2), (10, 11)]);
        assert!(block_ranges(&[]).is_empty());
    }

    #[test]
    fn file_checksum_verifies_as_bmaptool_does() {
        let text = bmap_text("a--b<c", 10_000, &[((0, 1), "ab".repeat(32)), ((2, 2), "cd".repeat(32))]);
        assert!(text.contains("<MappedBlocksCount> 3 </MappedBlocksCount>"));
        assert!(text.contains("<BlocksCount> 3 </BlocksCount>"));
        assert!(text.contains("> 0-1 </Range>") && text.contains("> 2 </Range>"));
        assert!(!text.contains("a--b"));
        let start = text.find("<BmapFileChecksum> ").unwrap() + 19;
        let stored = &text[start..start + 64];
        let zeroed = text.replacen(stored, &"0".repeat(64), 1);
        assert_eq!(hex(&Sha256::digest(zeroed.as_bytes())), stored);
    }
}
