//! Partition placement with the semantics of disko's `sgdisk --align-end --new=I:START:END`
//! calls (gdisk 1.0.9), as a pure function of the request.
//!
//! Partitions are created one at a time in (priority, name bytes) order; each sees the ones
//! before it. Rules (see `shared/docs/gpt-and-disko.md` §11):
//! - start `0`: the first aligned sector of the largest free block;
//! - start absolute: rounded down to the alignment when the sectors in between are free;
//! - end `+N`: requested start + N − 1 (not end-aligned);
//! - end `-N`, `-0`, `0`, `+0`: L − N, where L is the last sector of the free block with
//!   `(L + 1) % A == 0` (`--align-end`);
//! - end absolute: that sector.
//!
//! The alignment A of each run is the partition's `alignment` when it has one
//! (`--set-alignment` replaces whatever sgdisk computed); otherwise it is what sgdisk computes
//! from the partitions already on the disk when it loads the table ([`computed_alignment`]):
//! 2048, lowered to the largest power of two that divides every existing start.
//!
//! Units: `K`/`M`/`G`/`T`/`P` are binary multiples of bytes; a bare number or an `s` suffix is
//! sectors.

use uuid::Uuid;

use crate::{PlaceError, SECTOR_SIZE};

/// Sectors used by a 128-entry partition array.
pub const ENTRY_ARRAY_SECTORS: u64 = 32;
/// First usable LBA with a 128-entry array (sgdisk).
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_SECTORS;
/// Default alignment in sectors (1 MiB).
pub const DEFAULT_ALIGNMENT: u64 = 2048;
/// The alignment sgdisk never computes below on big disks (GPT fdisk's `MIN_AF_ALIGNMENT`:
/// 4 KiB, for Advanced Format drives).
const MIN_AF_ALIGNMENT: u64 = 8;
/// Disks of at least this many sectors get `MIN_AF_ALIGNMENT` as a floor (GPT fdisk's
/// `SMALLEST_ADVANCED_FORMAT`, about 279 GiB of 512-byte sectors).
const SMALLEST_ADVANCED_FORMAT: u64 = 585_937_500;

/// One partition as the spec asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRequest {
    /// The disko attribute name (sort tie-breaker, error context).
    pub name: String,
    /// GPT partition name.
    pub label: String,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// sgdisk start (`0`, `1G`, `2048s`, ...).
    pub start: String,
    /// sgdisk end (`+512M`, `-0`, ...).
    pub end: String,
    /// Alignment in sectors (`--set-alignment`); 0 means sgdisk's own: 2048, or less when the
    /// partitions created before start on smaller boundaries (see [`computed_alignment`]).
    pub alignment: u64,
    /// Creation order; lower first.
    pub priority: i64,
    /// Attribute bit numbers to set.
    pub attributes: Vec<u8>,
    /// Explicit unique GUID; `None` derives one from the seed.
    pub uuid: Option<Uuid>,
}

/// A disk as the spec asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRequest {
    /// Disk name (error context).
    pub name: String,
    /// Size in bytes (a multiple of 512).
    pub size_bytes: u64,
    /// Partitions in any order.
    pub partitions: Vec<PartitionRequest>,
}

/// One placed partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// 1-based partition number (= creation order).
    pub number: u32,
    /// The disko attribute name.
    pub name: String,
    /// GPT partition name.
    pub label: String,
    /// Type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub guid: Uuid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits as a mask.
    pub attributes: u64,
}

impl Placed {
    /// Size in sectors.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    /// Byte offset of the partition in the disk.
    #[must_use]
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    /// Size in bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.sectors() * SECTOR_SIZE
    }
}

/// The placed disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// Disk name.
    pub name: String,
    /// Total sectors.
    pub sectors: u64,
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA.
    pub last_usable_lba: u64,
    /// Partitions in number order.
    pub partitions: Vec<Placed>,
}

/// A parsed sgdisk position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    /// Plain number (sectors).
    Abs(u64),
    /// `+N`.
    Plus(u64),
    /// `-N`.
    Minus(u64),
}

/// Parse an sgdisk size/position to sectors. Units: K/M/G/T/P binary bytes; bare or `s` =
/// sectors.
fn parse_pos(s: &str) -> Option<Pos> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (2, &s[1..]),
        _ => (0, s),
    };
    let sectors = parse_sectors(rest)?;
    Some(match sign {
        1 => Pos::Plus(sectors),
        2 => Pos::Minus(sectors),
        _ => Pos::Abs(sectors),
    })
}

/// Split `N[unit]` into the number and the unit suffix (`None` without leading digits).
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    Some((s[..digits_end].parse().ok()?, &s[digits_end..]))
}

/// The binary shift of a `K`/`M`/`G`/`T`/`P` suffix.
fn binary_shift(unit: &str) -> Option<u32> {
    match unit {
        "K" | "k" => Some(10),
        "M" | "m" => Some(20),
        "G" | "g" => Some(30),
        "T" | "t" => Some(40),
        "P" | "p" => Some(50),
        _ => None,
    }
}

/// Parse `N[KMGTPs]` (sgdisk units) to sectors.
#[must_use]
pub fn parse_sectors(s: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(s)?;
    if matches!(unit, "" | "s" | "S") {
        return Some(n);
    }
    let bytes = n.checked_mul(1u64 << binary_shift(unit)?)?;
    Some(bytes / SECTOR_SIZE)
}

/// Parse a disko `imageSize` (`[0-9]+[KMGTP]?`, bare number = bytes) to bytes, rounded up to
/// whole sectors as `qemu-img create` does.
#[must_use]
pub fn parse_image_size(s: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(s)?;
    let shift = if unit.is_empty() { 0 } else { binary_shift(unit)? };
    let bytes = n.checked_mul(1u64 << shift)?;
    bytes.checked_add(SECTOR_SIZE - 1).map(|b| b / SECTOR_SIZE * SECTOR_SIZE)
}

/// Sort partitions into creation order: (priority, name bytes), stable.
#[must_use]
pub fn creation_order(parts: &[PartitionRequest]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..parts.len()).collect();
    idx.sort_by(|&a, &b| {
        parts[a].priority.cmp(&parts[b].priority).then_with(|| parts[a].name.as_bytes().cmp(parts[b].name.as_bytes()))
    });
    idx
}

/// Free blocks (inclusive ranges) of [first, last] minus the used ranges.
fn free_blocks(first: u64, last: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut used = used.to_vec();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut cur = first;
    for &(s, e) in &used {
        if s > cur {
            out.push((cur, s - 1));
        }
        cur = cur.max(e.saturating_add(1));
    }
    if cur <= last {
        out.push((cur, last));
    }
    out
}

/// The alignment sgdisk uses for a run without `--set-alignment`, given the first sectors of
/// the partitions already on a disk of `disk_sectors` sectors (GPT fdisk's
/// `GPTData::ComputeAlignment`, which `LoadPartitions` calls every time sgdisk opens the disk;
/// disko runs one sgdisk per partition, so each partition sees the starts of those created
/// before it).
///
/// Starting from [`DEFAULT_ALIGNMENT`] (2048 for 512-byte sectors), the alignment is halved
/// until it divides every existing start, i.e. it is the largest power of two ≤ 2048 that all
/// existing starts share; with no partitions it stays 2048. On a disk of at least
/// 585,937,500 sectors (`SMALLEST_ADVANCED_FORMAT`) a result below 8 (`MIN_AF_ALIGNMENT`) is
/// raised to 8. A partition's own `alignment` (`--set-alignment`, applied after the load)
/// replaces the result, whether larger or smaller.
#[must_use]
pub fn computed_alignment(existing_starts: impl IntoIterator<Item = u64>, disk_sectors: u64) -> u64 {
    // 2048 = 2^11; a start's trailing zero bits give the largest power of two dividing it
    // (64 for sector 0, which every power of two divides).
    let max_shift = DEFAULT_ALIGNMENT.trailing_zeros();
    let shift = existing_starts.into_iter().map(u64::trailing_zeros).fold(max_shift, u32::min);
    let align = 1u64 << shift;
    if align < MIN_AF_ALIGNMENT && disk_sectors >= SMALLEST_ADVANCED_FORMAT {
        MIN_AF_ALIGNMENT
    } else {
        align
    }
}

/// gdisk's `Align`: move `sector` to an alignment boundary, preferring the one below when the
/// sectors in between are free, else the one above when it stays inside the free block.
fn align(sector: u64, a: u64, block: (u64, u64)) -> u64 {
    if a <= 1 || sector % a == 0 {
        return sector;
    }
    let earlier = sector / a * a;
    let later = earlier + a;
    if earlier >= block.0 {
        earlier
    } else if later <= block.1 {
        later
    } else {
        sector
    }
}

/// Place every partition of `req`; GUIDs not given explicitly come from `seed` with
/// systemd-repart's derivation (disk: `"disk-uuid"`, partition: its type GUID, `‖ le64(k)` for
/// the k-th further partition of the same type).
///
/// # Errors
/// Malformed positions, a disk too small for a GPT, or a partition that does not fit (with
/// the shortfall in sectors).
pub fn place(req: &DiskRequest, seed: &Uuid) -> Result<DiskLayout, PlaceError> {
    let disk = req.name.clone();
    if req.size_bytes % SECTOR_SIZE != 0 {
        return Err(PlaceError::BadDiskSize { disk, size: req.size_bytes });
    }
    let n = req.size_bytes / SECTOR_SIZE;
    // Two headers, two arrays, and at least one usable sector.
    if n < 2 * (1 + ENTRY_ARRAY_SECTORS) + 2 {
        return Err(PlaceError::BadDiskSize { disk, size: req.size_bytes });
    }
    let first_usable = FIRST_USABLE_LBA;
    let last_usable = n - 2 - ENTRY_ARRAY_SECTORS;
    if req.partitions.len() > 128 {
        return Err(PlaceError::TooManyPartitions { disk, count: req.partitions.len() });
    }
    let order = creation_order(&req.partitions);
    let mut used: Vec<(u64, u64)> = Vec::new();
    let mut placed = Vec::with_capacity(order.len());
    let mut type_counts: Vec<(Uuid, u64)> = Vec::new();
    for (i, &pi) in order.iter().enumerate() {
        let p = &req.partitions[pi];
        let err_pos = |field: &'static str, value: &str| PlaceError::BadPosition {
            disk: req.name.clone(),
            partition: p.name.clone(),
            field,
            value: value.to_string(),
        };
        let a =
            if p.alignment == 0 { computed_alignment(used.iter().map(|&(first, _)| first), n) } else { p.alignment };
        let free = free_blocks(first_usable, last_usable, &used);
        let no_space = |needed: u64, available: u64| PlaceError::NoSpace {
            disk: req.name.clone(),
            partition: p.name.clone(),
            needed_sectors: needed,
            available_sectors: available,
        };
        // The largest free block (first of equals), as FindFirstInLargest.
        let largest = free.iter().copied().fold(None::<(u64, u64)>, |best, b| match best {
            Some(x) if x.1 - x.0 >= b.1 - b.0 => Some(x),
            _ => Some(b),
        });
        let start_pos = parse_pos(&p.start).ok_or_else(|| err_pos("start", &p.start))?;
        let requested_start = match start_pos {
            Pos::Abs(0) => {
                let Some(b) = largest else { return Err(no_space(1, 0)) };
                align(b.0, a, b)
            }
            Pos::Abs(s) => s,
            Pos::Plus(s) => {
                let Some(b) = largest else { return Err(no_space(1, 0)) };
                align(b.0, a, b).checked_add(s).ok_or_else(|| err_pos("start", &p.start))?
            }
            Pos::Minus(s) => {
                let Some(b) = largest else { return Err(no_space(1, 0)) };
                b.1.checked_sub(s).ok_or_else(|| err_pos("start", &p.start))?
            }
        };
        let Some(&block) = free.iter().find(|b| b.0 <= requested_start && requested_start <= b.1) else {
            return Err(PlaceError::StartNotFree {
                disk: req.name.clone(),
                partition: p.name.clone(),
                sector: requested_start,
            });
        };
        let start = align(requested_start, a, block);
        if start < block.0 || start > block.1 {
            return Err(no_space(1, 0));
        }
        // --align-end: last sector of the block with (L + 1) % A == 0.
        let aligned_last = {
            let l = (block.1 + 1) / a * a;
            l.checked_sub(1).filter(|&l| l >= start).unwrap_or(block.1)
        };
        let end = match parse_pos(&p.end).ok_or_else(|| err_pos("end", &p.end))? {
            Pos::Plus(0) | Pos::Abs(0) => aligned_last,
            Pos::Minus(k) => aligned_last
                .checked_sub(k)
                .filter(|&e| e >= start)
                .ok_or_else(|| no_space(k + 1, aligned_last - start + 1))?,
            Pos::Plus(len) => {
                let end = requested_start.checked_add(len - 1).ok_or_else(|| err_pos("end", &p.end))?;
                if end < start {
                    return Err(err_pos("end", &p.end));
                }
                if end > block.1 {
                    return Err(no_space(end - start + 1, block.1 - start + 1));
                }
                end
            }
            Pos::Abs(e) => {
                if e < start {
                    return Err(err_pos("end", &p.end));
                }
                if e > block.1 {
                    return Err(no_space(e - start + 1, block.1 - start + 1));
                }
                e
            }
        };
        used.push((start, end));
        let k = match type_counts.iter_mut().find(|(t, _)| *t == p.type_guid) {
            Some((_, c)) => {
                *c += 1;
                *c - 1
            }
            None => {
                type_counts.push((p.type_guid, 1));
                0
            }
        };
        let guid = p.uuid.unwrap_or_else(|| {
            let mut msg = p.type_guid.as_bytes().to_vec();
            if k > 0 {
                msg.extend_from_slice(&k.to_le_bytes());
            }
            mkdisk_tree::ids::derive(seed, &msg)
        });
        let mut attributes = 0u64;
        for &bit in &p.attributes {
            if bit >= 64 {
                return Err(PlaceError::BadAttribute { disk: req.name.clone(), partition: p.name.clone(), bit });
            }
            attributes |= 1u64 << bit;
        }
        placed.push(Placed {
            number: u32::try_from(i + 1).expect("at most 128 partitions (checked above)"),
            name: p.name.clone(),
            label: p.label.clone(),
            type_guid: p.type_guid,
            guid,
            first_lba: start,
            last_lba: end,
            attributes,
        });
    }
    for (i, a) in placed.iter().enumerate() {
        if placed[..i].iter().any(|b| b.guid == a.guid) {
            return Err(PlaceError::DuplicateGuid { disk: req.name.clone(), partition: a.name.clone(), guid: a.guid });
        }
    }
    Ok(DiskLayout {
        name: req.name.clone(),
        sectors: n,
        disk_guid: mkdisk_tree::ids::derive(seed, b"disk-uuid"),
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        partitions: placed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, prio: i64, start: &str, end: &str) -> PartitionRequest {
        PartitionRequest {
            name: name.into(),
            label: format!("disk-main-{name}"),
            type_guid: Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4),
            start: start.into(),
            end: end.into(),
            alignment: 0,
            priority: prio,
            attributes: vec![],
            uuid: None,
        }
    }

    fn one(start: &str, end: &str) -> (u64, u64) {
        let req = DiskRequest { name: "d".into(), size_bytes: 2 << 30, partitions: vec![part("a", 1, start, end)] };
        let l = place(&req, &Uuid::nil()).unwrap();
        (l.partitions[0].first_lba, l.partitions[0].last_lba)
    }

    #[test]
    fn sgdisk_measured_rules() {
        assert_eq!(one("3000", "+1M"), (2048, 5047));
        assert_eq!(one("0", "+1000"), (2048, 3047));
        assert_eq!(one("0", "+1500K"), (2048, 5047));
        assert_eq!(one("10000", "+1M"), (8192, 12047));
        assert_eq!(one("0", "-0"), (2048, 4192255));
        assert_eq!(one("0", "-1000"), (2048, 4191255));
        assert_eq!(one("0", "-1G"), (2048, 4192255 - 2097152));
    }

    #[test]
    fn computed_alignment_follows_existing_starts() {
        let small = 4_194_304;
        assert_eq!(computed_alignment([], small), 2048);
        assert_eq!(computed_alignment([2048, 4096, 1_052_672], small), 2048);
        assert_eq!(computed_alignment([2048, 40], small), 8);
        assert_eq!(computed_alignment([40, 2088, 4096], small), 8);
        assert_eq!(computed_alignment([34], small), 2);
        assert_eq!(computed_alignment([2049], small), 1);
        assert_eq!(computed_alignment([0, 1 << 40], small), 2048);
        // Advanced Format floor on big disks only.
        assert_eq!(computed_alignment([2049], SMALLEST_ADVANCED_FORMAT - 1), 1);
        assert_eq!(computed_alignment([2049], SMALLEST_ADVANCED_FORMAT), 8);
        assert_eq!(computed_alignment([34], SMALLEST_ADVANCED_FORMAT), 8);
        assert_eq!(computed_alignment([48], SMALLEST_ADVANCED_FORMAT), 16);
    }

    #[test]
    fn small_alignment_lowers_later_default_alignment() {
        // Measured with sgdisk 1.0.9: 8-aligned partition first, then default and -0.
        let mut a = part("a", 1, "0", "+1M");
        a.alignment = 8;
        let req = DiskRequest {
            name: "d".into(),
            size_bytes: 2 << 30,
            partitions: vec![a, part("b", 2, "0", "+100M"), part("c", 3, "0", "-0")],
        };
        let l = place(&req, &Uuid::nil()).unwrap();
        let got: Vec<_> = l.partitions.iter().map(|p| (p.first_lba, p.last_lba)).collect();
        assert_eq!(got, [(40, 2087), (2088, 206_887), (206_888, 4_194_263)]);
    }

    #[test]
    fn start_zero_takes_largest_block() {
        let req = DiskRequest {
            name: "d".into(),
            size_bytes: 2 << 30,
            partitions: vec![part("a", 1, "2048", "4095"), part("b", 2, "8192", "12047"), part("c", 3, "0", "+1M")],
        };
        let l = place(&req, &Uuid::nil()).unwrap();
        assert_eq!(l.partitions[2].first_lba, 12288);
    }
}
