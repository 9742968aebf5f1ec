//! Explicit little-endian (and big-endian, for the journal) field helpers: the shared ones from
//! `mkdisk_tree::le`, plus ext4's splitting of 64-bit values into lo/hi fields.

pub(crate) use mkdisk_tree::le::{get_u32, put_be32, put_u16, put_u32, put_u8};

/// Low 32 bits of a 64-bit value.
pub(crate) fn lo32(v: u64) -> u32 {
    (v & 0xFFFF_FFFF) as u32
}

/// Bits 32..48 of a 64-bit value.
pub(crate) fn hi16(v: u64) -> u16 {
    ((v >> 32) & 0xFFFF) as u16
}

/// Bits 32..64 of a 64-bit value.
pub(crate) fn hi32(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Low 16 bits of a 32-bit value (the `_lo` half of a split field).
pub(crate) fn lo16(v: u32) -> u16 {
    (v & 0xFFFF) as u16
}

/// Low 32 bits of a signed 64-bit time, two's complement (the on-disk seconds field, whose
/// high bits go elsewhere).
pub(crate) fn lo32_signed(v: i64) -> u32 {
    lo32(u64::from_le_bytes(v.to_le_bytes()))
}
