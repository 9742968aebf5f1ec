//! mkdisk: write complete, bootable disk images from a disko layout as an ordinary user.
//!
//! This crate is the top of the DAG: it reads the layout ([`spec`]), places partitions with
//! `mkdisk-gpt`, splits the source tree by mount point with `mkdisk-tree`, and drives each
//! filesystem writer ([`build`]). The `mkdisk` binary is a thin clap front end over it.

pub mod build;
pub mod nixos;
pub mod spec;
pub mod swap;

pub use build::{build, place_all, BuildError, BuildOptions, DiskPlan};
pub use spec::{Spec, SpecError};

/// Turn a `--seed` argument into the seed UUID: a UUID string is used as is; any other
/// string is hashed (SHA-256, first 16 bytes, version-4 bits) so that words work as seeds.
#[must_use]
pub fn parse_seed(s: &str) -> uuid::Uuid {
    if let Ok(u) = uuid::Uuid::parse_str(s) {
        return u;
    }
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b)
}
