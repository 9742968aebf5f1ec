//! Checksums (`csum_type`) and the crc32c-based name and back-reference hashes.

use sha2::Digest as _;

/// `btrfs_super_block.csum_type`: the algorithm for superblock, tree-block and data checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CsumType {
    /// `BTRFS_CSUM_TYPE_CRC32` (0), 4 bytes.
    #[default]
    Crc32c,
    /// `BTRFS_CSUM_TYPE_XXHASH` (1), 8 bytes.
    Xxhash64,
    /// `BTRFS_CSUM_TYPE_SHA256` (2), 32 bytes.
    Sha256,
    /// `BTRFS_CSUM_TYPE_BLAKE2` (3), BLAKE2b-256, 32 bytes.
    Blake2b,
}

impl CsumType {
    /// The on-disk `csum_type` value.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            CsumType::Crc32c => 0,
            CsumType::Xxhash64 => 1,
            CsumType::Sha256 => 2,
            CsumType::Blake2b => 3,
        }
    }

    /// Bytes of one checksum.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            CsumType::Crc32c => 4,
            CsumType::Xxhash64 => 8,
            CsumType::Sha256 | CsumType::Blake2b => 32,
        }
    }

    /// Parse the `mkfs.btrfs --csum` names.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "crc32c" => Some(CsumType::Crc32c),
            "xxhash" | "xxhash64" => Some(CsumType::Xxhash64),
            "sha256" => Some(CsumType::Sha256),
            "blake2" | "blake2b" => Some(CsumType::Blake2b),
            _ => None,
        }
    }

    /// Checksum `data` into the first [`CsumType::size`] bytes of `out`.
    pub(crate) fn compute(self, data: &[u8], out: &mut [u8]) {
        match self {
            CsumType::Crc32c => out[..4].copy_from_slice(&crc32c::crc32c(data).to_le_bytes()),
            CsumType::Xxhash64 => out[..8].copy_from_slice(&xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes()),
            CsumType::Sha256 => out[..32].copy_from_slice(&sha2::Sha256::digest(data)),
            CsumType::Blake2b => out[..32].copy_from_slice(&blake2::Blake2b256::digest(data)),
        }
    }

    /// Maximum entries in one `EXTENT_CSUM` item (`MAX_CSUM_ITEMS`, what `btrfs check` accepts).
    pub(crate) fn max_csum_items(self) -> u64 {
        let leaf = crate::LEAF_DATA_SIZE as u64;
        ((leaf - 2 * crate::node::ITEM_SIZE as u64) / self.size() as u64) - 1
    }
}

/// `crc32c_raw(seed, data)`: the reflected Castagnoli update without pre/post inversion.
fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// `btrfs_name_hash`: the key offset of `DIR_ITEM` and `XATTR_ITEM`.
pub(crate) fn name_hash(name: &[u8]) -> u64 {
    u64::from(crc32c_raw(0xFFFF_FFFE, name))
}

/// `btrfs_extref_hash`: the key offset of `INODE_EXTREF`.
pub(crate) fn extref_hash(parent: u64, name: &[u8]) -> u64 {
    // The kernel truncates the parent inode number to 32 bits as the seed.
    let seed = u32::try_from(parent & u64::from(u32::MAX)).expect("masked to 32 bits");
    u64::from(crc32c_raw(seed, name))
}

/// `hash_extent_data_ref(root, objectid, offset)`: orders inline data back references.
#[allow(dead_code)]
pub(crate) fn extent_data_ref_hash(root: u64, objectid: u64, offset: u64) -> u64 {
    let high = crc32c_raw(!0, &root.to_le_bytes());
    let low = crc32c_raw(crc32c_raw(!0, &objectid.to_le_bytes()), &offset.to_le_bytes());
    (u64::from(high) << 31) ^ u64::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(name_hash(b"default"), 2_378_154_706);
        assert_eq!(name_hash(b"sparse.img"), 442_018_923);
        assert_eq!(extent_data_ref_hash(5, 257, 0), 0x0dfb_591f_a80d_95ea);
    }
}
