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
    let head = u8::try_from(head).expect("head < 255");
    let sec = u8::try_from(sector | ((cyl >> 8) << 6)).expect("sector ≤ 63 and cylinder bits 8..10 in bits 6..8");
    let cyl_lo = u8::try_from(cyl & 0xFF).expect("masked to 8 bits");
    [head, sec, cyl_lo]
}

/// The protective MBR partition record area (bytes 446..512 of LBA 0) of a disk of
/// `sectors` sectors (at least 1).
#[must_use]
pub fn protective_mbr_tail(sectors: u64) -> [u8; 66] {
    let mut t = [0u8; 66];
    let last = sectors.saturating_sub(1);
    t[0] = 0x00; // boot indicator
    t[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // start CHS
    t[4] = 0xEE; // OS type: GPT protective
    t[5..8].copy_from_slice(&chs(last));
    // SizeInLBA: the disk size minus one, or 0xFFFFFFFF when that is too large (UEFI spec,
    // "Protective MBR").
    let size = u32::try_from(last.min(u64::from(u32::MAX))).expect("clamped to u32::MAX");
    t[8..12].copy_from_slice(&1u32.to_le_bytes()); // starting LBA
    t[12..16].copy_from_slice(&size.to_le_bytes());
    t[64] = 0x55;
    t[65] = 0xAA;
    t
}

/// Write the protective MBR (boot code zeroed) and both GPTs into `disk` (the whole image).
///
/// # Errors
/// gptman rejects the table (overlap, duplicate GUIDs), the layout's disk is too small for
/// the two table areas, too large to address in bytes, or not the size of `disk`, or the
/// write fails.
pub fn write_gpt(layout: &DiskLayout, disk: &Region) -> Result<(), GptError> {
    let head_sectors = 2 + ENTRY_ARRAY_SECTORS;
    let tail_sectors = 1 + ENTRY_ARRAY_SECTORS;
    if layout.sectors < head_sectors + tail_sectors {
        return Err(GptError::Table(format!("a disk of {} sectors is too small for a GPT", layout.sectors)));
    }
    let len = layout
        .sectors
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| GptError::Table(format!("a disk of {} sectors is too large", layout.sectors)))?;
    if disk.len() != len {
        return Err(GptError::Table(format!("image is {} bytes but the layout needs {len}", disk.len())));
    }
    // Both table areas are 33 or 34 sectors.
    let area = |sectors: u64| vec![0; usize::try_from(sectors * SECTOR_SIZE).expect("at most 34 sectors")];
    let mut cap = Capture {
        len,
        pos: 0,
        head: area(head_sectors),
        tail_start: (layout.sectors - tail_sectors) * SECTOR_SIZE,
        tail: area(tail_sectors),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protective_mbr_size_saturates_past_2_tib() {
        let t = protective_mbr_tail(1 << 33);
        assert_eq!(&t[12..16], &[0xFF; 4]);
        assert_eq!(&t[5..8], &[0xFE, 0xFF, 0xFF]);
        let t = protective_mbr_tail(2048);
        assert_eq!(u32::from_le_bytes([t[12], t[13], t[14], t[15]]), 2047);
        assert_eq!(&t[64..66], &[0x55, 0xAA]);
        // No panic on a zero-sector disk.
        assert_eq!(&protective_mbr_tail(0)[12..16], &[0; 4]);
    }

    #[test]
    fn chs_fields() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(255 * 63 * 1023 + 62), [0, 63 | 0xC0, 0xFF]);
        assert_eq!(chs(255 * 63 * 1024), [0xFE, 0xFF, 0xFF]);
    }
}
