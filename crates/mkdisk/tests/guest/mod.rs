//! The guest side of the QEMU boot tests (`boot_tree.rs`, `boot_nixos.rs`), a module of each:
//! the boot parts ([`parts`], from `tests/boot/harness.py` through [`mkdisk_testkit::harness`]),
//! one boot with the guest's read-only mounts ([`boot`]), the listing the guest's `/init` prints
//! over the second serial port ([`parse_listing`]) and its comparison with the source tree
//! ([`compare_tree`]). Where QEMU or a part cannot be had the tests print `SKIPPED` loudly and
//! return; with `CI=true` they fail instead ([`skip`]).

// Each boot test binary uses its own subset.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use mkdisk_testkit::harness::{boot_parts, boot_parts_for, run_harness, HarnessError};

use crate::common::{repo, sha256_hex};

/// QEMU or a part cannot be had: a loud skip, or a failure under CI
/// ([`mkdisk_testkit::skip_or_fail`]).
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    mkdisk_testkit::skip_or_fail(&format!("kernel boot test {test}"), why);
}

/// Boots are serialized: TCG is CPU-bound and the machine is small.
static BOOT: Mutex<()> = Mutex::new(());

/// A fresh, empty `CARGO_TARGET_TMPDIR/name` (removed first): one per test binary, so two boot
/// test binaries never share one.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A Nix-store-shaped corpus of at most `max_mib` MiB from this machine's packages
/// (`../shared/tools/make-store-corpus.py`), or a synthetic stand-in where that script is not
/// present.
pub fn store_corpus(dest: &Path, max_mib: u32) {
    let script = repo().join("../shared/tools/make-store-corpus.py");
    if script.exists() {
        let st = std::process::Command::new("python3")
            .arg(&script)
            .arg(dest)
            .args(["--max-mib", &max_mib.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "make-store-corpus.py failed");
        return;
    }
    eprintln!("{} missing; using a synthetic store", script.display());
    for p in 0..40u64 {
        let sp = dest.join(format!("nix/store/{:032x}-pkg-{p}", p * 7919));
        for f in 0..20u64 {
            let file = sp.join(format!("share/f{f}"));
            let len = usize::try_from((p * 131 + f * 17) % 9000).unwrap();
            write(&file, &mkdisk_testkit::noise(len, p * 100 + f));
            chmod(&file, 0o444);
        }
        symlink("share/f0", sp.join("link")).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The boot parts

/// The boot parts (`harness.py fetch`) and the test initramfs (`harness.py initramfs`).
pub struct Parts {
    /// `harness.py fetch`'s JSON: `kernel`, `systemd_boot`, `qemu`, ... (mostly paths).
    pub json: serde_json::Value,
    /// The test initramfs: its `/init` mounts what the kernel command line names and lists it.
    pub initrd: PathBuf,
}

impl Parts {
    /// The path the harness gave for `part` (`kernel`, `systemd_boot`).
    pub fn path(&self, part: &str) -> &str {
        self.json[part].as_str().unwrap_or_else(|| panic!("no {part} in the boot parts: {}", self.json))
    }

    /// The sha256 of the file [`Parts::path`] names.
    pub fn sha256(&self, part: &str) -> String {
        sha256_hex(&fs::read(self.path(part)).unwrap())
    }
}

/// The parts, fetched once per test binary; `None` (after a loud [`skip`]) where they cannot be
/// had here.
pub fn parts() -> Option<&'static Parts> {
    static P: OnceLock<Result<Parts, String>> = OnceLock::new();
    let r = P.get_or_init(|| {
        let t0 = Instant::now();
        let (json, initrd) = boot_parts()?;
        eprintln!("boot: parts ready in {:.1}s ({})", t0.elapsed().as_secs_f64(), json["kernel_package"]);
        Ok(Parts { json, initrd })
    });
    match r {
        Ok(p) => Some(p),
        Err(why) => {
            skip(why);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The mounts

/// One read-only mount the guest makes, and the part of the source tree it must show.
#[derive(Clone, Debug)]
pub struct Mount {
    /// Name in the listing.
    pub id: String,
    /// Guest device (`vda3`).
    pub dev: String,
    /// `ext4`, `vfat`, `btrfs`.
    pub fs: String,
    /// Mount options (`ro`, `ro,subvol=/data`).
    pub opts: String,
    /// The layout's mount point (`/`, `/boot`).
    pub mountpoint: String,
}

impl Mount {
    pub fn new(id: &str, dev: String, fs: &str, opts: &str, mountpoint: &str) -> Mount {
        Mount { id: id.into(), dev, fs: fs.into(), opts: opts.into(), mountpoint: mountpoint.into() }
    }

    pub fn arg(&self) -> String {
        format!("{}:{}:{}:{}", self.id, self.dev, self.fs, self.opts)
    }
}

/// The kernel command line of a test boot: the console, and `mkdisk.mount=` per mount for the
/// guest's `/init`.
pub fn kernel_args(mounts: &[Mount]) -> String {
    let mut a = vec!["console=ttyS0".to_string(), "panic=-1".into(), "loglevel=4".into(), "mkdisk.out=ttyS1".into()];
    a.extend(mounts.iter().map(|m| format!("mkdisk.mount={}", m.arg())));
    a.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Booting and the listings

/// One mount's listing: rc, entries by path, stderr of the listing commands.
pub type Listing = (String, BTreeMap<String, Entry>, Vec<String>);

/// What one boot printed.
pub struct Boot {
    /// The first serial port (kernel, firmware, boot loader).
    pub console: String,
    /// Mount id → (rc, entries, stderr of the listing commands).
    pub mounts: BTreeMap<String, Listing>,
    /// Kernel messages the guest flagged (errors, corruption).
    pub dmesg: Vec<String>,
    /// The guest's `/init` got to the end (`MKDISK-DONE`).
    pub done: bool,
}

/// One entry of a listing (the guest's, or the host's for the source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub mtime: i64,
    pub sha256: Option<String>,
    pub target: Option<String>,
}

pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFLNK: u32 = 0o120_000;

/// Boot `disks` once with `firmware` (`direct`, `ovmf`, `bios`) and the test initramfs, the
/// guest mounting and listing `mounts`; the console and the listing are kept in `dir` as
/// `TAG.console.log` and `TAG.listing.txt`. `Err` = QEMU could not run here.
pub fn boot(
    p: &Parts,
    dir: &Path,
    disks: &[&Path],
    mounts: &[Mount],
    firmware: &str,
    tag: &str,
) -> Result<Boot, String> {
    boot_on(None, p, dir, disks, mounts, firmware, tag)
}

/// [`boot`] for `arch` (`None`: the harness's default, x86_64, 400 s; `aarch64`: 900 s).
fn boot_on(
    arch: Option<&str>,
    p: &Parts,
    dir: &Path,
    disks: &[&Path],
    mounts: &[Mount],
    firmware: &str,
    tag: &str,
) -> Result<Boot, String> {
    let _g = BOOT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let console = dir.join(format!("{tag}.console.log"));
    let listing = dir.join(format!("{tag}.listing.txt"));
    let mut args: Vec<String> = vec!["run".into()];
    if let Some(a) = arch {
        args.extend(["--arch".into(), a.into()]);
    }
    for d in disks {
        args.push("--disk".into());
        args.push(d.to_str().unwrap().into());
    }
    let timeout = if arch.is_some() { "900" } else { "400" };
    for (k, v) in [
        ("--console", console.to_str().unwrap()),
        ("--listing", listing.to_str().unwrap()),
        ("--firmware", firmware),
        ("--initrd", p.initrd.to_str().unwrap()),
        ("--timeout", timeout),
    ] {
        args.push(k.into());
        args.push(v.into());
    }
    for m in mounts {
        args.push("--mount".into());
        args.push(m.arg());
    }
    let t0 = Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_harness(&args);
    let secs = t0.elapsed().as_secs_f64();
    let on = arch.unwrap_or("x86_64");
    match r {
        Ok(_) => {}
        Err(HarnessError::Unavailable(why)) => return Err(why),
        Err(HarnessError::Failed(e)) => panic!("{tag}: {on} boot failed after {secs:.1}s:\n{e}"),
    }
    eprintln!("boot: {tag} ({on}, {firmware}) took {secs:.1}s");
    let b = parse_listing(&fs::read(&listing).unwrap());
    let console = String::from_utf8_lossy(&fs::read(&console).unwrap()).replace('\r', "");
    Ok(Boot { console, ..b })
}

/// [`boot`], or `None` after a loud [`skip`] where QEMU could not run here.
pub fn boot_or_skip(
    p: &Parts,
    dir: &Path,
    disks: &[&Path],
    mounts: &[Mount],
    firmware: &str,
    tag: &str,
) -> Option<Boot> {
    boot(p, dir, disks, mounts, firmware, tag).map_err(|why| skip(&why)).ok()
}

/// The line the guest's /init printed first, with the kernel command line it was started with;
/// a failure, with the console's tail, where it never ran (booting `under` the firmware named).
pub fn init_line<'a>(b: &'a Boot, under: &str) -> &'a str {
    b.console
        .lines()
        .find(|l| l.starts_with("MKDISK-INIT start:"))
        .unwrap_or_else(|| panic!("guest /init never ran under {under}; console tail:\n{}", tail(&b.console)))
}

pub fn parse_listing(raw: &[u8]) -> Boot {
    let mut b = Boot { console: String::new(), mounts: BTreeMap::new(), dmesg: Vec::new(), done: false };
    let mut cur: Option<Listing> = None;
    for line in raw.split(|&c| c == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
        if let Some(rest) = line.strip_prefix("MKDISK-BEGIN ") {
            cur = Some((rest.split(' ').next().unwrap().to_string(), BTreeMap::new(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("MKDISK-END ") {
            let (id, rc) = rest.split_once(' ').unwrap_or((rest, ""));
            let (cid, entries, stderr) = cur.take().unwrap_or_default();
            assert_eq!(cid, id, "listing out of order");
            b.mounts.insert(id.to_string(), (rc.trim_start_matches("rc=").to_string(), entries, stderr));
        } else if let Some(rest) = line.strip_prefix("MKDISK-DMESG ") {
            b.dmesg.push(rest.to_string());
        } else if line == "MKDISK-DONE" {
            b.done = true;
        } else if let Some((_, entries, stderr)) = cur.as_mut() {
            if let Some(rest) = line.strip_prefix("MKDISK-STDERR ") {
                stderr.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("M ") {
                let f: Vec<&str> = rest.splitn(8, ' ').collect();
                assert_eq!(f.len(), 8, "bad record {line:?}");
                let e = entries.entry(f[7].to_string()).or_default();
                e.mode = u32::from_str_radix(f[0], 16).unwrap();
                e.uid = f[1].parse().unwrap();
                e.gid = f[2].parse().unwrap();
                e.size = f[3].parse().unwrap();
                e.nlink = f[4].parse().unwrap();
                e.ino = f[5].parse().unwrap();
                e.mtime = f[6].parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("S ") {
                let (h, p) = rest.split_once("  ").unwrap_or_else(|| panic!("bad record {line:?}"));
                entries.entry(p.to_string()).or_default().sha256 = Some(h.to_string());
            } else if let Some(rest) = line.strip_prefix("L ") {
                let (p, t) = rest.split_once('\t').unwrap_or_else(|| panic!("bad record {line:?}"));
                entries.entry(p.to_string()).or_default().target = Some(t.to_string());
            }
        }
    }
    b
}

/// The host's view of one mount: the source below its mount point, deeper mount points kept as
/// (empty) directories. Also (dev, ino) per path for hard-link groups.
pub fn host_listing(src: &Path, all: &[Mount], m: &Mount) -> (BTreeMap<String, Entry>, HashMap<String, (u64, u64)>) {
    let base = src.join(m.mountpoint.trim_start_matches('/'));
    let deeper: Vec<PathBuf> = all
        .iter()
        .filter(|o| o.mountpoint != m.mountpoint)
        .map(|o| src.join(o.mountpoint.trim_start_matches('/')))
        .filter(|p| p.starts_with(&base) && *p != base)
        .collect();
    let mut out = BTreeMap::new();
    let mut ids = HashMap::new();
    let mut stack = vec![(base.clone(), ".".to_string())];
    while let Some((p, rel)) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let mut e = Entry {
            mode: md.mode(),
            uid: 0,
            gid: 0,
            size: md.size(),
            nlink: md.nlink(),
            ino: md.ino(),
            mtime: md.mtime(),
            sha256: None,
            target: None,
        };
        if md.is_file() {
            e.sha256 = Some(sha256_hex(&fs::read(&p).unwrap()));
        } else if md.is_symlink() {
            e.target = Some(fs::read_link(&p).unwrap().to_string_lossy().into_owned());
        } else if md.is_dir() && (rel == "." || !deeper.contains(&p)) {
            for c in fs::read_dir(&p).unwrap() {
                let c = c.unwrap();
                stack.push((c.path(), format!("{rel}/{}", c.file_name().to_string_lossy())));
            }
        }
        ids.insert(rel.clone(), (md.dev(), md.ino()));
        out.insert(rel, e);
    }
    (out, ids)
}

/// Adjusts the host's expectation for (mount id, path) where the image is meant to differ
/// from the source (the Nix store's canonical metadata).
pub type Fixup<'a> = &'a dyn Fn(&str, &str, &mut Entry);

/// The `vdXN` device names a kernel message mentions.
pub fn vd_devices(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = line[i..].find("vd") {
        let start = i + pos;
        let mut end = start + 2;
        let boundary = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        if boundary && end < b.len() && b[end].is_ascii_lowercase() {
            end += 1;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == b.len() || !b[end].is_ascii_alphanumeric() {
                out.push(line[start..end].to_string());
            }
        }
        i = start + 2;
    }
    out
}

/// Differences between what the kernel read (for `mounts`) and the tree `src` laid out by
/// `all`, one line each; `extra_ok` = (mount id, path prefix) of entries the image may hold
/// beyond the source (what `mkdisk build --system` adds), `fixup` adjusts the expectation.
pub fn compare_tree(
    src: &Path,
    all: &[Mount],
    b: &Boot,
    mounts: &[Mount],
    extra_ok: &[(&str, &str)],
    fixup: Option<Fixup<'_>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !b.done {
        problems.push("guest listing incomplete (no MKDISK-DONE)".to_string());
    }
    for d in &b.dmesg {
        // Messages naming a device belong to that device's mounts; the rest to every check.
        let named = vd_devices(d);
        let ours = named.is_empty() || mounts.iter().any(|m| named.contains(&m.dev));
        if ours
            && ["EXT4-fs error", "BTRFS error", "BTRFS critical", "FAT-fs (", "I/O error", "csum failed", "corrupt"]
                .iter()
                .any(|k| d.contains(k))
        {
            problems.push(format!("kernel: {d}"));
        }
    }
    for m in mounts {
        let Some((rc, guest, stderr)) = b.mounts.get(&m.id) else {
            problems.push(format!("{}: not in the guest listing", m.id));
            continue;
        };
        for e in stderr {
            problems.push(format!("{}: stderr: {e}", m.id));
        }
        if rc != "0" {
            problems.push(format!("{} ({} {}): rc={rc}", m.id, m.fs, m.dev));
            continue;
        }
        let (mut host, host_ids) = host_listing(src, all, m);
        if let Some(f) = fixup {
            for (path, e) in &mut host {
                f(&m.id, path, e);
            }
        }
        let posix = m.fs != "vfat";
        let mut p = |s: String| problems.push(format!("{}: {s}", m.id));
        for (path, h) in &host {
            let Some(g) = guest.get(path) else {
                p(format!("{path}: missing"));
                continue;
            };
            if g.mode & S_IFMT != h.mode & S_IFMT {
                p(format!("{path}: type {:o} != {:o}", g.mode & S_IFMT, h.mode & S_IFMT));
                continue;
            }
            let kind = h.mode & S_IFMT;
            if kind == S_IFREG {
                if g.size != h.size {
                    p(format!("{path}: size {} != {}", g.size, h.size));
                }
                if g.sha256 != h.sha256 {
                    p(format!("{path}: sha256 {:?} != {:?}", g.sha256, h.sha256));
                }
            }
            if !posix {
                continue;
            }
            if g.mode != h.mode {
                p(format!("{path}: mode {:o} != {:o}", g.mode, h.mode));
            }
            if (g.uid, g.gid) != (h.uid, h.gid) {
                p(format!("{path}: owner {}:{} != {}:{}", g.uid, g.gid, h.uid, h.gid));
            }
            if kind != S_IFDIR && g.mtime != h.mtime {
                p(format!("{path}: mtime {} != {}", g.mtime, h.mtime));
            }
            if kind == S_IFLNK {
                if g.target != h.target {
                    p(format!("{path}: symlink target {:?} != {:?}", g.target, h.target));
                }
                if g.size != h.size {
                    p(format!("{path}: symlink size {} != {}", g.size, h.size));
                }
            }
            if kind == S_IFREG && g.nlink != h.nlink {
                p(format!("{path}: nlink {} != {}", g.nlink, h.nlink));
            }
        }
        for path in guest.keys() {
            // mke2fs-style lost+found is the ext4 writer's addition.
            let ext4_extra = posix && path == "./lost+found";
            let added = extra_ok.iter().any(|(id, pre)| {
                *id == m.id && (path == pre || path.strip_prefix(pre).is_some_and(|r| r.starts_with('/')))
            });
            if !host.contains_key(path) && !ext4_extra && !added {
                p(format!("{path}: in the image, not in the source"));
            }
        }
        if posix {
            // Hard links: paths sharing a host inode share a guest inode, and only those.
            let mut groups: BTreeMap<(u64, u64), Vec<&String>> = BTreeMap::new();
            for (path, h) in &host {
                if h.mode & S_IFMT == S_IFREG {
                    groups.entry(host_ids[path]).or_default().push(path);
                }
            }
            let mut seen: HashMap<u64, &String> = HashMap::new();
            for paths in groups.values() {
                let inos: Vec<u64> = paths.iter().filter_map(|p| guest.get(*p)).map(|g| g.ino).collect();
                if inos.windows(2).any(|w| w[0] != w[1]) {
                    p(format!("hard links {paths:?} are different inodes {inos:?}"));
                }
                if let Some(&ino) = inos.first() {
                    if let Some(other) = seen.insert(ino, paths[0]) {
                        p(format!("{} and {other} share inode {ino}", paths[0]));
                    }
                }
            }
        }
    }
    problems
}

pub fn report(what: &str, problems: &[String]) -> String {
    let n = problems.len();
    let shown: Vec<&str> = problems.iter().take(60).map(String::as_str).collect();
    format!("{what}: {n} difference(s):\n  {}", shown.join("\n  "))
}

/// The last 4,000 bytes of `s` (the console's tail in a failure).
pub fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

// ---------------------------------------------------------------------------------------------
// aarch64 guests (`boot_aarch64.rs`): `-M virt -cpu max` under TCG, AAVMF, the arm64 kernel

/// The aarch64 parts (`harness.py fetch --arch aarch64`: `kernel`, `systemd_boot_aa64`,
/// `aavmf_code`, `qemu`, ...) and the arm64 test initramfs, fetched once per test binary;
/// `None` (after a loud [`skip`]) where they cannot be had here.
pub fn parts_aarch64() -> Option<&'static Parts> {
    static P: OnceLock<Result<Parts, String>> = OnceLock::new();
    let r = P.get_or_init(|| {
        let t0 = Instant::now();
        let (json, initrd) = boot_parts_for("aarch64")?;
        eprintln!("boot: aarch64 parts ready in {:.1}s ({})", t0.elapsed().as_secs_f64(), json["kernel_package"]);
        Ok(Parts { json, initrd })
    });
    match r {
        Ok(p) => Some(p),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// [`kernel_args`] for an aarch64 guest: the console on the PL011 (`ttyAMA0`), the listing on
/// the virtio console the harness adds (`hvc0`).
pub fn kernel_args_aarch64(mounts: &[Mount]) -> String {
    let mut a = vec!["console=ttyAMA0".to_string(), "panic=-1".into(), "loglevel=4".into(), "mkdisk.out=hvc0".into()];
    a.extend(mounts.iter().map(|m| format!("mkdisk.mount={}", m.arg())));
    a.join(" ")
}

/// [`boot`] for an aarch64 guest (`harness.py run --arch aarch64`): `firmware` = `uefi`
/// (AAVMF boots the disk's ESP) or `direct` (`-kernel`, the arm64 test initramfs); TCG, so
/// the timeout is longer. `Err` = QEMU could not run here.
pub fn boot_aarch64(
    p: &Parts,
    dir: &Path,
    disks: &[&Path],
    mounts: &[Mount],
    firmware: &str,
    tag: &str,
) -> Result<Boot, String> {
    boot_on(Some("aarch64"), p, dir, disks, mounts, firmware, tag)
}

/// [`boot_aarch64`], or `None` after a loud [`skip`] where QEMU could not run here.
pub fn boot_aarch64_or_skip(
    p: &Parts,
    dir: &Path,
    disks: &[&Path],
    mounts: &[Mount],
    firmware: &str,
    tag: &str,
) -> Option<Boot> {
    boot_aarch64(p, dir, disks, mounts, firmware, tag).map_err(|why| skip(&why)).ok()
}
