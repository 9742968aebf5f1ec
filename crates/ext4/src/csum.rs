//! metadata_csum checksums: raw (non-inverted) CRC32C as e2fsprogs' `ext2fs_crc32c_le`.

/// `raw(seed, a ‖ b ‖ …)`: reflected Castagnoli CRC with the caller's initial value and no
/// final inversion.
pub(crate) fn raw(seed: u32, parts: &[&[u8]]) -> u32 {
    parts.iter().fold(seed, |c, p| !crc32c::crc32c_append(!c, p))
}

/// The filesystem checksum seed: `raw(~0, s_uuid)` (no `metadata_csum_seed`).
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    raw(!0, &[uuid])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_matches_doc() {
        let u = uuid::Uuid::parse_str("11111111-2222-3333-4444-555555555555").unwrap();
        assert_eq!(fs_seed(u.as_bytes()), 0x643d_bf5b);
        assert_eq!(!raw(!0, &[b"123456789"]), 0xE306_9283);
    }
}
