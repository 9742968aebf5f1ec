//! Deterministic identifiers, derived from one seed as systemd-repart does.
//!
//! `derive(key, msg)` is `HMAC-SHA256(key, msg)[0..16]` with the RFC 4122 version-4 and
//! variant bits set. All byte strings are UUIDs in big-endian string order (as `Uuid::as_bytes`
//! gives them), not GPT's mixed-endian form. With these rules and the same seed, mkdisk's disk
//! and partition GUIDs equal systemd-repart's (`disk-uuid`, per-type partition UUIDs,
//! `file-system-uuid`), which the test vectors in the docs check.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// The default seed when none is given (the one nixpkgs' `image.repart` uses).
pub const DEFAULT_SEED: Uuid = Uuid::from_u128(0x0867da16_f251_457d_a9e8_c31f9a3c220b);

/// Full HMAC-SHA256 of `msg` keyed by `key`.
#[must_use]
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(msg);
    let out = mac.finalize().into_bytes();
    let mut r = [0u8; 32];
    r.copy_from_slice(&out);
    r
}

// HMAC accepts keys of any length; this cannot happen.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(b"k").unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// A version-4-shaped UUID from `HMAC-SHA256(key, msg)`.
#[must_use]
pub fn derive(key: &Uuid, msg: &[u8]) -> Uuid {
    let h = hmac_sha256(key.as_bytes(), msg);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// The filesystem UUID for a partition, as systemd-repart derives it.
#[must_use]
pub fn fs_uuid(part_uuid: &Uuid) -> Uuid {
    derive(part_uuid, b"file-system-uuid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repart_vectors() {
        let seed = Uuid::parse_str("b3d3f1b4-3c1e-4a5f-9d8e-2c1a7e0f4a11").unwrap();
        assert_eq!(derive(&seed, b"disk-uuid").to_string(), "7cd37ddd-8034-4f61-a13c-4b65faa165bb");
        let esp = Uuid::parse_str("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        let p = derive(&seed, esp.as_bytes());
        assert_eq!(p.to_string(), "f3da2f5f-a47b-4692-8f90-1043dfdb1201");
        assert_eq!(fs_uuid(&p).to_string(), "ad69ba1f-706a-4dc8-8d58-789c7233274b");
        let root = Uuid::parse_str("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709").unwrap();
        let r = derive(&seed, root.as_bytes());
        assert_eq!(r.to_string(), "7e3eb821-5444-4524-b26b-b9f6b7c2b9a1");
        assert_eq!(fs_uuid(&r).to_string(), "329931d6-880b-4aab-a90e-18ec14869e78");
    }
}
