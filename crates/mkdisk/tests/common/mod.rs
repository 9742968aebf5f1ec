//! Helpers shared by the integration tests of the `mkdisk` binary (`tests/boot.rs`,
//! `tests/nixos.rs`, `tests/mkdisk.rs`), each of which is its own crate with `mod common;`:
//! running `mkdisk`, the arguments of `mkdisk build`, the plan's partition numbers, the boot
//! harness (`tests/boot/harness.py`) and the CI rule for what may be skipped.

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

/// The options of `mkdisk build` for a GRUB that a test boots: i386-pc inputs from `dir`, output
/// on the serial console, no menu wait.
pub fn grub_boot_args(dir: &Path) -> [&str; 5] {
    ["--grub-bios-dir", dir.to_str().unwrap(), "--grub-serial", "--boot-timeout", "0"]
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

/// Whether this is CI (`CI=true`), where a check that cannot run is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A check that cannot run on this machine (`what`, e.g. "kernel boot test x"; `why`): a
/// failure under `CI=true`, else a loud `*** SKIPPED (not a pass)` line written to the real
/// stderr (not the test harness's captured output), so it shows in every `cargo test` run.
pub fn skip_or_fail(what: &str, why: &str) {
    let why = why.trim();
    assert!(!in_ci(), "{what} cannot run under CI=true: {why}");
    let bar = "*".repeat(78);
    let msg = format!("\n{bar}\n*** SKIPPED (not a pass): {what} — {why}\n{bar}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Nix (Debian nix-bin, Nix 2.8) as an oracle

/// The only Nix settings the tests run with (a machine's `/etc/nix/nix.conf` and user files
/// are not read, see [`nix_command`]). `build-users-group =`: as root, Nix defaults to the
/// group `nixbld`, which Debian's nix-bin does not create; builds run as the calling user.
/// `builders =`: no remote builders (the default reads `$NIX_CONF_DIR/machines`). `nix-path =`:
/// no channels looked up in `$HOME` or `/nix/var`. No sandbox, no substituters: offline.
pub const NIX_CONFIG: &str = "build-users-group =\nbuilders =\nnix-path =\nexperimental-features = nix-command\n\
                              sandbox = false\nsubstituters =\nsandbox-paths = /bin /lib /lib64 /usr";

/// `program` (`nix-store`, `nix-build`) with an environment that depends on nothing of this
/// machine but the binary: every inherited `NIX_*` variable removed (`NIX_REMOTE`,
/// `NIX_STORE_DIR`, `NIX_PATH`, ...), [`NIX_CONFIG`], `NIX_CONF_DIR` an empty directory (no
/// `/etc/nix/nix.conf`, `/etc/nix/machines`), no user configuration files
/// (`NIX_USER_CONF_FILES=""`), and `HOME`, the XDG directories, `NIX_STATE_DIR` and
/// `NIX_LOG_DIR` under `target/tmp/nix-hermetic`, so nothing under `/nix` is read or created.
/// Every call passes `--store <scratch root>`, which holds that store's own state and logs.
pub fn nix_command(program: &str) -> Command {
    let base = nix_hermetic_dir();
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("NIX_")) {
            c.env_remove(k);
        }
    }
    c.env("NIX_CONFIG", NIX_CONFIG)
        .env("NIX_CONF_DIR", base.join("etc"))
        .env("NIX_USER_CONF_FILES", "")
        .env("NIX_STATE_DIR", base.join("state"))
        .env("NIX_LOG_DIR", base.join("log"))
        .env("HOME", base.join("home"))
        .env("XDG_CONFIG_HOME", base.join("home/.config"))
        .env("XDG_CONFIG_DIRS", base.join("xdg"))
        .env("XDG_CACHE_HOME", base.join("home/.cache"))
        .env("XDG_DATA_HOME", base.join("home/.local/share"))
        .env("XDG_STATE_HOME", base.join("home/.local/state"));
    // Nix names the per-user directories after the passwd entry of the uid, or $USER without one.
    if std::env::var_os("USER").is_none() {
        c.env("USER", "mkdisk-test");
    }
    c
}

/// `target/tmp/nix-hermetic`: `etc` (must stay empty), `home`, `xdg`, `state`, `log`.
fn nix_hermetic_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nix-hermetic");
        for d in ["etc", "home", "xdg", "state", "log"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let etc = base.join("etc");
        let stray: Vec<_> = std::fs::read_dir(&etc).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(stray.is_empty(), "{} must be empty (it is the tests' NIX_CONF_DIR): {stray:?}", etc.display());
        base
    })
}

/// Whether `nix-store` runs here. Without it: a failure with `MKDISK_REQUIRE_NIX` set (as
/// `tests/run.sh` sets it) or under `CI=true`, else a loud skip of `what`.
pub fn have_nix(what: &str) -> bool {
    // With a store named: a bare `nix-store --version` opens the default store, creating /nix.
    let probe = nix_hermetic_dir().join("probe-store");
    let v = nix_command("nix-store").arg("--store").arg(probe).arg("--version").output();
    let why = match &v {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("nix-store --version failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("nix-store (Debian package nix-bin) is not runnable: {e}"),
    };
    assert!(std::env::var_os("MKDISK_REQUIRE_NIX").is_none(), "{what}: {why} (MKDISK_REQUIRE_NIX is set)");
    skip_or_fail(what, &why);
    false
}

// ---------------------------------------------------------------------------------------------
// The boot harness

fn harness() -> PathBuf {
    repo().join("tests/boot/harness.py")
}

/// The harness's exit status where QEMU or a part cannot be had here.
const HARNESS_UNAVAILABLE: i32 = 77;

pub enum HarnessError {
    Unavailable(String),
    Failed(String),
}

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
/// is a skip); a harness that fails otherwise fails the test.
pub fn harness_or_why(args: &[&str]) -> Result<String, String> {
    match run_harness(args) {
        Ok(s) => Ok(s),
        Err(HarnessError::Unavailable(why)) => Err(why),
        Err(HarnessError::Failed(e)) => panic!("{e}"),
    }
}

/// The boot parts (`harness.py fetch`: QEMU, firmware, systemd-boot, kernel, as JSON) and the
/// test initramfs, or why they cannot be had here.
pub fn boot_parts() -> Result<(serde_json::Value, PathBuf), String> {
    let parts: serde_json::Value = serde_json::from_str(&harness_or_why(&["fetch"])?).unwrap();
    let initrd = PathBuf::from(harness_or_why(&["initramfs"])?.trim());
    Ok((parts, initrd))
}
