//! Helpers shared by the integration tests of the `mkdisk` binary (`tests/*.rs`), each of
//! which is its own crate with `mod common;`: running `mkdisk`, the arguments of `mkdisk
//! build`, the plan's partition numbers and sha256. The boot harness client, the Nix fixtures
//! and the skip policy live in `mkdisk-testkit` (re-exported here: the skip policy); the QEMU
//! guest side of the boot tests in `guest/`.

// Every test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `mkdisk` with `args` and without `SOURCE_DATE_EPOCH` (the build's own default time).
pub fn mkdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkdisk")).args(args).env_remove("SOURCE_DATE_EPOCH").output().unwrap()
}

/// `build SPEC --out OUT --quiet`: how every `mkdisk build` here starts; the options that
/// follow say what else goes into the image.
pub fn build_args<'a>(spec: &'a Path, out: &'a Path) -> [&'a str; 5] {
    ["build", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]
}

/// The options of `mkdisk build` for a NixOS system: the closureInfo directory `closure`, the
/// host store holding it (`.../nix/store`) and the toplevel to install.
pub fn system_args<'a>(closure: &'a Path, store_dir: &'a Path, toplevel: &'a str) -> [&'a str; 6] {
    ["--closure", closure.to_str().unwrap(), "--store-dir", store_dir.to_str().unwrap(), "--system", toplevel]
}

/// The options of `mkdisk build` for a GRUB that a test boots: GRUB's library directory `dir`
/// (holding `i386-pc/`), output on the serial console, no menu wait.
pub fn grub_boot_args(dir: &Path) -> [&str; 5] {
    ["--grub", dir.to_str().unwrap(), "--grub-serial", "--boot-timeout", "0"]
}

/// Partition name → number, from `mkdisk plan --json`.
pub fn plan_numbers(spec: &Path) -> impl Fn(&str) -> u64 {
    let o = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "mkdisk plan: {}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    move |name: &str| -> u64 {
        plan["disks"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no partition {name} in the plan"))["number"]
            .as_u64()
            .unwrap()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

#[allow(unused_imports)] // each test crate uses its own subset
pub use mkdisk_testkit::{have_nix, in_ci, nix_command, skip_or_fail};
