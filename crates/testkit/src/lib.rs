//! What the test suites of mkdisk share (`publish = false`, a dev-dependency only): the skip
//! policy (a check this machine cannot run is a loud skip, and a failure under `CI=true`), Nix
//! (Debian's nix-bin 2.8) as an oracle in an environment that depends on nothing of the
//! machine, and the fixtures built on them:
//!
//! - [`harness`]: the client of the QEMU boot harness (`tests/boot/harness.py`);
//! - [`nix`]: a scratch store with a real closure, `nix-build`, closureInfo from Nix;
//! - [`nar`]: NAR serialisation and closureInfo without Nix, for hand-made store paths;
//! - [`grub`]: synthetic GRUB i386-pc inputs;
//! - [`noise`] (incompressible bytes) and [`poisoned_file`] (a target pre-filled with
//!   [`POISON`], so a byte the writer should have written and did not is caught).

pub mod grub;
pub mod harness;
pub mod nar;
pub mod nix;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/tmp` of this workspace (`CARGO_TARGET_DIR` when the tests were built with one).
fn target_tmp() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    target.join("tmp")
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

/// That the command behind `o` succeeded (`what` names it in the failure).
///
/// # Panics
/// Where it did not: with its exit status, stderr and stdout.
pub fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// Test data

/// `len` deterministic, incompressible bytes from `seed` (xorshift64, the low byte of each
/// step). The same (`len`, `seed`) always gives the same bytes, and a shorter `len` a prefix.
#[must_use]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// The byte a poisoned target is filled with: not zero, and not what a writer writes by chance.
pub const POISON: u8 = 0xD1;

/// A fresh file `path` (created or truncated) of `len` bytes, every one [`POISON`], open for
/// reading and writing: a writer that skips a byte it must write (zeroing included) leaves
/// 0xD1 there for fsck or a read-back to find.
///
/// # Panics
/// Where the file cannot be created or written.
pub fn poisoned_file(path: &Path, len: u64) -> std::fs::File {
    const CHUNK: u64 = 1 << 20;
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    let chunk = vec![POISON; CHUNK as usize];
    let mut w = std::io::BufWriter::new(&f);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&chunk[..n as usize]).unwrap();
        left -= n;
    }
    w.flush().unwrap();
    drop(w);
    f
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
        let base = target_tmp().join("nix-hermetic");
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
    let why = match nix_probe() {
        Ok(()) => return true,
        Err(why) => why,
    };
    assert!(std::env::var_os("MKDISK_REQUIRE_NIX").is_none(), "{what}: {why} (MKDISK_REQUIRE_NIX is set)");
    skip_or_fail(what, why);
    false
}

/// `nix-store --version` against a scratch store, once per process: tests run in parallel,
/// and Nix creating one store's directories from two processes at once races.
fn nix_probe() -> Result<(), &'static str> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = PROBE.get_or_init(|| {
        // With a store named: a bare `nix-store --version` opens the default store, creating /nix.
        let probe = nix_hermetic_dir().join(format!("probe-store-{}", std::process::id()));
        let v = nix_command("nix-store").arg("--store").arg(&probe).arg("--version").output();
        let _ = std::fs::remove_dir_all(&probe);
        match &v {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => {
                Err(format!("nix-store --version failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
            }
            Err(e) => Err(format!("nix-store (Debian package nix-bin) is not runnable: {e}")),
        }
    });
    r.as_ref().copied().map_err(String::as_str)
}
