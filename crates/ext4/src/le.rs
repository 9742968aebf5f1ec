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
