//! Helpers shared by the integration tests of the `mkdisk` binary (`tests/*.rs`), each of
//! which is its own crate with `mod common;`: running `mkdisk`, the arguments of `mkdisk
//! build`, the plan's partition numbers and sha256. The boot harness client, the Nix fixtures
//! and the skip policy live in `mkdisk-testkit` (re-exported here: the skip policy); the QEMU
//! guest side of the boot tests in `guest/`.

// Every test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mkdisk_testkit::assert_ok;
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

pub fn listing_sha(listing: &str, path: &str) -> Option<String> {
    listing.lines().find_map(|l| {
        let rest = l.strip_prefix("S ")?;
        let (sha, p) = rest.split_once("  ")?;
        (p.trim_start_matches('.') == path).then(|| sha.to_string())
    })
}

/// Boot `img` under QEMU (TCG; `uefi`: OVMF, else SeaBIOS): the console and the listing the
/// guest writes on the second serial port.
pub fn qemu_boot(parts: &serde_json::Value, dir: &Path, what: &str, img: &Path, uefi: bool) -> (String, String) {
    let console = dir.join(format!("console-{what}.log"));
    let listing = dir.join(format!("listing-{what}.txt"));
    std::fs::write(&console, "").unwrap();
    std::fs::write(&listing, "").unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("300").arg(parts["qemu"].as_str().unwrap());
    for a in parts["qemu_args"].as_array().unwrap() {
        cmd.arg(a.as_str().unwrap());
    }
    for (k, v) in parts["qemu_env"].as_object().unwrap() {
        cmd.env(k, v.as_str().unwrap());
    }
    cmd.args(["-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1", "-nodefaults", "-display", "none"]);
    cmd.args(["-no-reboot", "-serial", &format!("file:{}", console.display())]);
    cmd.args(["-serial", &format!("file:{}", listing.display())]);
    cmd.args(["-drive", &format!("file={},format=raw,if=virtio,snapshot=on", img.display())]);
    if uefi {
        let vars = dir.join(format!("OVMF_VARS-{what}.fd"));
        std::fs::copy(parts["ovmf_vars"].as_str().unwrap(), &vars).unwrap();
        cmd.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", parts["ovmf_code"].as_str().unwrap()),
        ]);
        cmd.args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", vars.display())]);
    }
    let o = cmd.output().unwrap();
    eprintln!("qemu {what}: {}", o.status);
    let cons = std::fs::read_to_string(&console).unwrap_or_default().replace('\r', "");
    (cons, std::fs::read_to_string(&listing).unwrap_or_default())
}

/// Whether `path` exists on the FAT filesystem at `offset` of `img`.
pub fn fat_has(img: &Path, offset: u64, path: &str) -> bool {
    let o = Command::new("mdir")
        .args(["-b", "-i", &format!("{}@@{offset}", img.display()), &format!("::{path}")])
        .output()
        .unwrap();
    o.status.success()
}

pub fn read_at(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(img).unwrap().read_exact_at(&mut b, offset).unwrap();
    b
}

pub fn mtype(img: &Path, offset: u64, path: &str) -> String {
    let o = Command::new("mtype")
        .args(["-i", &format!("{}@@{offset}", img.display()), &format!("::{path}")])
        .output()
        .unwrap();
    assert_ok("mtype", &o);
    String::from_utf8(o.stdout).unwrap()
}
