//! The client of the QEMU boot harness (`tests/boot/harness.py` in the repository): it fetches
//! and caches the boot parts (QEMU, OVMF, SeaBIOS, systemd-boot, a Debian kernel, GRUB), builds
//! the test initramfs and boots images. Exit status 77 means a part cannot be had on this
//! machine, which the caller turns into a skip (see [`crate::skip_or_fail`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/boot/harness.py` of this repository.
#[must_use]
pub fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/boot/harness.py")
}

/// The harness's exit status where QEMU or a part cannot be had here.
const HARNESS_UNAVAILABLE: i32 = 77;

/// Why the harness gave no output.
#[derive(Debug)]
pub enum HarnessError {
    /// `python3`, QEMU or a part cannot be had on this machine (a skip, or a failure in CI).
    Unavailable(String),
    /// The harness ran and failed: always a test failure.
    Failed(String),
}

/// `python3 harness.py ARGS`: its stdout, or why it gave none.
///
/// # Errors
/// [`HarnessError::Unavailable`] where `python3` does not run or the harness exits with 77
/// (its stderr says what is missing), [`HarnessError::Failed`] for any other failure.
pub fn run_harness(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new("python3")
        .arg(harness())
        .args(args)
        .output()
        .map_err(|e| HarnessError::Unavailable(format!("python3 not runnable: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(HARNESS_UNAVAILABLE) => Err(HarnessError::Unavailable(stderr)),
        _ => Err(HarnessError::Failed(format!("harness {args:?} failed ({}):\n{stderr}", out.status))),
    }
}

/// The harness's output, or why its parts cannot be had here (the caller decides whether that
/// is a skip).
///
/// # Errors
/// The harness's explanation where a part cannot be had ([`HarnessError::Unavailable`]).
///
/// # Panics
/// Where the harness fails otherwise ([`HarnessError::Failed`]): that fails the test.
pub fn harness_or_why(args: &[&str]) -> Result<String, String> {
    match run_harness(args) {
        Ok(s) => Ok(s),
        Err(HarnessError::Unavailable(why)) => Err(why),
        Err(HarnessError::Failed(e)) => panic!("{e}"),
    }
}

/// The boot parts (`harness.py fetch`: QEMU, firmware, systemd-boot, kernel, GRUB, as JSON)
/// and the path of the test initramfs (`harness.py initramfs`).
///
/// # Errors
/// Why the parts cannot be had here.
///
/// # Panics
/// Where the harness fails otherwise or prints something that is not JSON.
pub fn boot_parts() -> Result<(serde_json::Value, PathBuf), String> {
    let parts: serde_json::Value = serde_json::from_str(&harness_or_why(&["fetch"])?).unwrap();
    let initrd = PathBuf::from(harness_or_why(&["initramfs"])?.trim());
    Ok((parts, initrd))
}

/// [`boot_parts`] for the guest architecture `arch` (`x86_64`, `aarch64`): `harness.py fetch
/// --arch ARCH` and `harness.py initramfs --arch ARCH`. The aarch64 parts name the arm64
/// kernel, busybox and initramfs, `systemd_boot_aa64`, `aavmf_code`/`aavmf_vars` and a
/// `qemu-system-aarch64`.
///
/// # Errors
/// Why the parts cannot be had here.
///
/// # Panics
/// Where the harness fails otherwise or prints something that is not JSON.
pub fn boot_parts_for(arch: &str) -> Result<(serde_json::Value, PathBuf), String> {
    let parts: serde_json::Value = serde_json::from_str(&harness_or_why(&["fetch", "--arch", arch])?).unwrap();
    let initrd = PathBuf::from(harness_or_why(&["initramfs", "--arch", arch])?.trim());
    Ok((parts, initrd))
}
