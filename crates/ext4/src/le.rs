//! Explicit little-endian (and big-endian, for the journal) field helpers.

/// Write a `u8` at `off`.
pub(crate) fn put_u8(buf: &mut [u8], off: usize, v: u8) {
    buf[off] = v;
}

/// Write a little-endian `u16` at `off`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Write a little-endian `u32` at `off`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Write a big-endian `u32` at `off` (journal structures).
pub(crate) fn put_be32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// Read a little-endian `u32` at `off`.
pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[off..off + 4]);
    u32::from_le_bytes(b)
}

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
