//! Writing the protective MBR and both GPT copies with `gptman`.
//!
//! gptman writes through `Write + Seek`; we hand it a capture buffer for the two table areas
//! (LBA 0..34 and N−33..N) so that every byte of those sectors — including the header
//! padding gptman skips — is written explicitly into the image (sparse-safe).

use std::io::{self, Seek, SeekFrom, Write};

use mkdisk_tree::Region;

use crate::place::{DiskLayout, ENTRY_ARRAY_SECTORS};
use crate::{GptError, SECTOR_SIZE};

/// Captures writes to the head and tail table areas of a disk of `len` bytes.
struct Capture {
    len: u64,
    pos: u64,
    head: Vec<u8>,
    tail_start: u64,
    tail: Vec<u8>,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        let end = self.pos + n;
        let (dst, off) = if end <= self.head.len() as u64 {
            (&mut self.head, self.pos)
        } else if self.pos >= self.tail_start && end <= self.len {
            (&mut self.tail, self.pos - self.tail_start)
        } else {
            return Err(io::Error::other(format!("GPT write outside the table areas at byte {}", self.pos)));
        };
        let off = usize::try_from(off).map_err(io::Error::other)?;
        dst[off..off + buf.len()].copy_from_slice(buf);
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for Capture {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("the GPT capture buffer is write-only"))
    }
}

impl Seek for Capture {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// CHS tuple (as the three MBR bytes) for an LBA with 255 heads × 63 sectors, or FE FF FF
/// when the cylinder exceeds 1023, as sgdisk writes it.
fn chs(lba: u64) -> [u8; 3] {
    let cyl = lba / (255 * 63);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / 63) % 255;
    let sector = lba % 63 + 1;
    // Each value fits its field by construction (head < 255, sector ≤ 63, cyl ≤ 1023).
    let head = u8::try_from(head).unwrap_or(0xFE);
    let sec = u8::try_from(sector | ((cyl >> 8) << 6)).unwrap_or(0xFF);
    let cyl_lo = u8::try_from(cyl & 0xFF).unwrap_or(0xFF);
    [head, sec, cyl_lo]
}

/// The protective MBR partition record area (bytes 446..512 of LBA 0).
#[must_use]
pub fn protective_mbr_tail(sectors: u64) -> [u8; 66] {
    let mut t = [0u8; 66];
    let last = sectors - 1;
    t[0] = 0x00; // boot indicator
    t[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // start CHS
    t[4] = 0xEE; // OS type: GPT protective
    t[5..8].copy_from_slice(&chs(last));
    t[8..12].copy_from_slice(&1u32.to_le_bytes()); // starting LBA
    let size = u32::try_from(last).unwrap_or(u32::MAX);
    t[12..16].copy_from_slice(&size.to_le_bytes());
    t[64] = 0x55;
    t[65] = 0xAA;
    t
}

/// Write the protective MBR (boot code zeroed) and both GPTs into `disk` (the whole image).
///
/// # Errors
/// gptman rejects the table (overlap, duplicate GUIDs) or the write fails.
pub fn write_gpt(layout: &DiskLayout, disk: &Region) -> Result<(), GptError> {
    let len = layout.sectors * SECTOR_SIZE;
    if disk.len() != len {
        return Err(GptError::Table(format!("image is {} bytes but the layout needs {len}", disk.len())));
    }
    let head_sectors = 2 + ENTRY_ARRAY_SECTORS;
    let tail_sectors = 1 + ENTRY_ARRAY_SECTORS;
    let mut cap = Capture {
        len,
        pos: 0,
        head: vec![0; usize::try_from(head_sectors * SECTOR_SIZE).unwrap_or(0)],
        tail_start: (layout.sectors - tail_sectors) * SECTOR_SIZE,
        tail: vec![0; usize::try_from(tail_sectors * SECTOR_SIZE).unwrap_or(0)],
    };
    let mut gpt = gptman::GPT::new_from(&mut cap, SECTOR_SIZE, layout.disk_guid.to_bytes_le())
        .map_err(|e| GptError::Table(e.to_string()))?;
    for p in &layout.partitions {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid.to_bytes_le(),
            unique_partition_guid: p.guid.to_bytes_le(),
            starting_lba: p.first_lba,
            ending_lba: p.last_lba,
            attribute_bits: p.attributes,
            partition_name: p.label.as_str().into(),
        };
    }
    gpt.write_into(&mut cap).map_err(|e| GptError::Table(e.to_string()))?;
    cap.head[446..512].copy_from_slice(&protective_mbr_tail(layout.sectors));
    disk.write_at(0, &cap.head)?;
    disk.write_at(cap.tail_start, &cap.tail)?;
    Ok(())
}
