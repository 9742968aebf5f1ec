//! Growth with the standard tools (issue 15, `docs/outputs.md` §6): an image written onto a
//! larger disk grows the way NixOS grows it — `boot.growPartition` runs `growpart`,
//! `autoResize` runs `resize2fs` (stage 1) or `systemd-growfs` (on the mounted filesystem) —
//! and afterwards every checker is clean and the content reads back.
//!
//! Two 2 GiB images built by `mkdisk build` from one source tree (a Nix-store-shaped corpus and
//! edge cases): a vfat ESP at /boot and a `100%` root, ext4 in one, btrfs with subvolumes
//! `/root` and `/nix` (compress=zstd) in the other. Each is copied onto a larger sparse file,
//! `sgdisk -e` moves the backup GPT to the new end, `growpart` grows the root partition to it,
//! `sgdisk -v` must find no problems.
//!
//! - `growpart_grows_the_last_partition_to_the_end`: the GPT part alone (host tools only).
//! - `ext4_grows_offline_with_resize2fs`: the root partition as a file grown to the new
//!   partition size, `e2fsck -fn`, `resize2fs FILE`, `e2fsck -fn`; the block count is exactly
//!   the partition's, `debugfs rdump` gives the source back; then the kernel lists it (vdc of
//!   the 8 GiB boot).
//! - `ext4_grows_online_to_8g`, `btrfs_grows_online_to_8g`: one QEMU boot (`tests/boot/`) with
//!   the grown 8 GiB images writable; the guest's `/init` mounts each root read-write and grows
//!   it on-line (`mkdisk.grow=`: `resize2fs DEV`, `btrfs filesystem resize max MNT`, the host's
//!   binaries in the initramfs), then lists every file read-only; the listing must equal the
//!   source and the sizes must be the partition's. On the host afterwards: `e2fsck -fn`, the
//!   superblock's block count; `btrfs check --readonly --check-data-csum`, `total_bytes`.
//! - `ext4_grows_online_past_128g_to_meta_bg`: the same on a 130 GiB sparse file: the kernel
//!   must convert the filesystem to `meta_bg` (mkdisk's ext4 has no `resize_inode`).
//!
//! Skips: where a host tool (`growpart` from cloud-guest-utils, `sgdisk`, e2fsprogs,
//! btrfs-progs) or the QEMU parts cannot be had, the tests print `SKIPPED` loudly and return;
//! with `CI=true` they fail instead.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use mkdisk_testkit::harness::{run_harness, HarnessError};
use mkdisk_testkit::{assert_ok, noise};

mod common;
mod guest;

use common::{build_args, mkdisk, plan_numbers, skip_or_fail};
use guest::{chmod, compare_tree, host_listing, parse_listing, report, tail, write, Boot, Mount, S_IFMT};
use guest::{S_IFDIR, S_IFLNK};

const GIB: u64 = 1 << 30;
const SECTOR: u64 = 512;
/// The ext4 and btrfs block size mkdisk writes (the exact sizes below are in these units).
const BLOCK: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// Host tools

/// (command, Debian package) of every host tool used here.
const TOOLS: &[(&str, &str)] = &[
    ("sgdisk", "gdisk"),
    ("sfdisk", "fdisk"),
    ("growpart", "cloud-guest-utils"),
    ("e2fsck", "e2fsprogs"),
    ("resize2fs", "e2fsprogs"),
    ("dumpe2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("btrfs", "btrfs-progs"),
    ("python3", "python3"),
];

/// Where `cmd` is: on `PATH`, or in the sbin directories a non-root `PATH` lacks.
fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Whether every host tool is here; else a loud skip of `what` (a failure under CI).
fn host_tools(what: &str) -> bool {
    let missing: Vec<String> =
        TOOLS.iter().filter(|(c, _)| which(c).is_none()).map(|(c, p)| format!("{c} (Debian {p})")).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(&format!("growth test {what}"), &format!("missing host tools: {}", missing.join(", ")));
    false
}

/// `cmd args…` (the tool found by [`which`]), its output.
fn tool(cmd: &str, args: &[&str]) -> Output {
    let exe = which(cmd).unwrap_or_else(|| panic!("{cmd} not found"));
    Command::new(exe).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// [`tool`] that must succeed; its stdout.
fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let o = tool(cmd, args);
    assert_ok(&format!("{cmd} {}", args.join(" ")), &o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The source tree and the two images

/// The source of both images: the store corpus (in `/nix`: the btrfs image's `/nix`
/// subvolume), edge cases in the root, a few files for the ESP.
fn source(src: &Path) {
    guest::store_corpus(src, 8);
    write(&src.join("etc/hostname"), b"mkdisk-growth-test\n");
    let d = src.join("var/lib/edge");
    write(&d.join("empty"), b"");
    write(&d.join("big.bin"), &noise(3 << 20, 1));
    let text: Vec<u8> = (0..(1 << 20)).map(|i: u32| b"growth\n"[(i % 7) as usize]).collect();
    write(&d.join("compressible.txt"), &text);
    write(&d.join(format!("{}.long", "L".repeat(250))), b"255-byte name\n");
    symlink("empty", d.join("link-fast")).unwrap();
    symlink("z/".repeat(200), d.join("link-slow")).unwrap();
    symlink("/nix/store/does-not-exist", d.join("link-dangling")).unwrap();
    write(&d.join("hard/a"), b"three names, one inode\n");
    fs::create_dir_all(d.join("hard/sub")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/b")).unwrap();
    fs::hard_link(d.join("hard/a"), d.join("hard/sub/c")).unwrap();
    {
        let f = fs::File::create(d.join("sparse")).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&noise(4096, 2), 0).unwrap();
        f.write_all_at(&noise(4096, 3), (16 << 20) - 4096).unwrap();
    }
    for i in 0..300 {
        write(&d.join("many").join(format!("entry-{i:04}")), format!("{i}\n").as_bytes());
    }
    write(&d.join("modes/suid"), b"#!/bin/sh\n");
    chmod(&d.join("modes/suid"), 0o4755);
    fs::create_dir_all(d.join("modes/sticky")).unwrap();
    chmod(&d.join("modes/sticky"), 0o1777);
    write(&src.join("boot/loader/loader.conf"), b"timeout 0\n");
    write(&src.join("boot/EFI/BOOT/data.bin"), &noise(1 << 20, 4));
}

/// One of the two 2 GiB images: where it is, its root partition's number, the guest's mounts
/// (on vda) and which of them cover the grown root.
struct Image {
    path: PathBuf,
    root: u64,
    mounts: Vec<Mount>,
}

/// The source and the two images, built once per run of this binary.
struct Fixture {
    dir: PathBuf,
    src: PathBuf,
    ext4: Image,
    btrfs: Image,
}

/// A GPT disk of 2 GiB: a 256 MiB vfat ESP at /boot, then `root` over the rest (last, so that
/// growpart can grow it).
fn spec(root: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"disk": {"main": {"imageSize": "2G", "content": {"type": "gpt", "partitions": {
        "ESP": {"size": "256M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "100%", "content": root}}}}}})
}

fn build_image(dir: &Path, src: &Path, name: &str, root: &serde_json::Value, subvols: &[(&str, &str)]) -> Image {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    let spec_path = d.join("spec.json");
    fs::write(&spec_path, serde_json::to_string_pretty(&spec(root)).unwrap()).unwrap();
    let number = plan_numbers(&spec_path);
    let (esp, root) = (number("ESP"), number("root"));
    let t0 = Instant::now();
    let o = mkdisk(&[&build_args(&spec_path, &d)[..], &["--root", s(src)]].concat());
    assert!(o.status.success(), "mkdisk build ({name}): {}", String::from_utf8_lossy(&o.stderr));
    eprintln!("growth: mkdisk build {name} took {:.1}s", t0.elapsed().as_secs_f64());
    let mut mounts = vec![Mount::new("esp", format!("vda{esp}"), "vfat", "ro", "/boot")];
    if subvols.is_empty() {
        mounts.push(Mount::new("root", format!("vda{root}"), "ext4", "ro", "/"));
    }
    for (sv, mp) in subvols {
        let id = format!("root{}", sv.replace('/', "-"));
        mounts.push(Mount::new(&id, format!("vda{root}"), "btrfs", &format!("ro,subvol={sv}"), mp));
    }
    Image { path: d.join("main.raw"), root, mounts }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = guest::fresh_dir("growth");
        let src = dir.join("src");
        let t0 = Instant::now();
        source(&src);
        eprintln!("growth: source tree in {:.1}s", t0.elapsed().as_secs_f64());
        let ext4 = serde_json::json!({"type": "filesystem", "format": "ext4", "mountpoint": "/"});
        let btrfs = serde_json::json!({"type": "btrfs", "subvolumes": {
            "/root": {"mountpoint": "/"},
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress=zstd", "noatime"]}}});
        let ext4 = build_image(&dir, &src, "ext4", &ext4, &[]);
        let btrfs = build_image(&dir, &src, "btrfs", &btrfs, &[("/root", "/"), ("/nix", "/nix")]);
        Fixture { dir, src, ext4, btrfs }
    })
}

// ---------------------------------------------------------------------------------------------
// The partition table, grown

/// One partition: first sector and length in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    start: u64,
    sectors: u64,
}

impl Part {
    fn offset(self) -> u64 {
        self.start * SECTOR
    }
    fn bytes(self) -> u64 {
        self.sectors * SECTOR
    }
}

/// `sfdisk --json IMG`: the last usable LBA and partition number → partition.
fn gpt(img: &Path) -> (u64, BTreeMap<u64, Part>) {
    let v: serde_json::Value = serde_json::from_str(&tool_ok("sfdisk", &["--json", s(img)])).unwrap();
    let t = &v["partitiontable"];
    assert_eq!(t["label"], "gpt", "{v}");
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits = node.len() - node.chars().rev().take_while(char::is_ascii_digit).count();
            let part = Part { start: p["start"].as_u64().unwrap(), sectors: p["size"].as_u64().unwrap() };
            (node[digits..].parse().unwrap(), part)
        })
        .collect();
    (t["lastlba"].as_u64().unwrap(), parts)
}

/// A copy of an image on a larger disk, its GPT and root partition grown.
struct Grown {
    path: PathBuf,
    /// The root partition before (in the 2 GiB image) and after growpart.
    before: Part,
    root: Part,
}

/// Copies `img` to `name` (sparse), makes the copy `disk_bytes` long and grows its last
/// partition `number` the way NixOS does: `sgdisk -e` (backup GPT to the new end), `growpart`.
/// Checks that `sgdisk -v` finds no problems, the partition now ends at the last usable LBA,
/// its start and every other partition are unchanged.
fn grow_disk(dir: &Path, img: &Path, name: &str, disk_bytes: u64, number: u64) -> Grown {
    let t0 = Instant::now();
    let path = dir.join(name);
    let st = Command::new("cp").args(["--sparse=always", s(img), s(&path)]).status().unwrap();
    assert!(st.success(), "cp {img:?}");
    let (_, old) = gpt(&path);
    assert_eq!(*old.keys().last().unwrap(), number, "the root is not the last partition: {old:?}");
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(disk_bytes).unwrap();
    tool_ok("sgdisk", &["-e", s(&path)]);
    let out = tool_ok("growpart", &[s(&path), &number.to_string()]);
    assert!(out.contains(&format!("CHANGED: partition={number}")), "growpart: {out}");
    let verify = tool_ok("sgdisk", &["-v", s(&path)]);
    assert!(verify.contains("No problems found"), "sgdisk -v after growpart:\n{verify}");
    let (last_lba, new) = gpt(&path);
    // The backup GPT: 32 sectors of entries and the header in the last sector.
    assert_eq!(last_lba, disk_bytes / SECTOR - 34, "last usable LBA");
    let root = new[&number];
    assert_eq!(root.start, old[&number].start, "growpart moved the partition");
    assert_eq!(root.start + root.sectors - 1, last_lba, "partition {number} does not reach the end: {root:?}");
    for (n, p) in &old {
        if *n != number {
            assert_eq!(new.get(n), Some(p), "partition {n} changed");
        }
    }
    eprintln!(
        "growth: {name}: partition {number} {} → {} sectors ({} → {} bytes) in {:.1}s",
        old[&number].sectors,
        root.sectors,
        old[&number].bytes(),
        root.bytes(),
        t0.elapsed().as_secs_f64()
    );
    Grown { path, before: old[&number], root }
}

/// `harness.py extract`: the byte range of `part` in `img` as a sparse file `out`.
fn extract(img: &Path, part: Part, length: u64, out: &Path) {
    let (offset, length) = (part.offset().to_string(), length.to_string());
    if let Err(HarnessError::Failed(e) | HarnessError::Unavailable(e)) =
        run_harness(&["extract", s(img), &offset, &length, s(out)])
    {
        panic!("extracting a partition of {img:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// ext4 on the host

/// `dumpe2fs -h` of the ext4 at `dev` (a file, or `IMG?offset=N`): field → value.
fn ext4_super(dev: &str) -> BTreeMap<String, String> {
    tool_ok("dumpe2fs", &["-h", dev])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `e2fsck -fn` clean, 4 KiB blocks, exactly `bytes` / 4 KiB of them; the superblock's fields.
fn check_ext4(dev: &str, bytes: u64, what: &str) -> BTreeMap<String, String> {
    let o = tool("e2fsck", &["-fn", dev]);
    assert_ok(&format!("e2fsck -fn ({what})"), &o);
    let sb = ext4_super(dev);
    assert_eq!(sb["Block size"], BLOCK.to_string(), "{what}");
    assert_eq!(sb["Block count"], (bytes / BLOCK).to_string(), "{what}: the filesystem does not fill {bytes} bytes");
    sb
}

// ---------------------------------------------------------------------------------------------
// Booting with growth

/// One `MKDISK-GROW` record of the guest (`tests/boot/init.sh`) and its `MKDISK-GROWLOG` lines.
#[derive(Debug, Default)]
struct Grow {
    fs: String,
    rc: String,
    /// statfs size (f_blocks × f_bsize) mounted, before and after the tool ran.
    before: u64,
    after: u64,
    /// The guest's size of the partition's block device.
    device: u64,
    log: Vec<String>,
}

fn parse_grows(listing: &str) -> BTreeMap<String, Grow> {
    let mut out: BTreeMap<String, Grow> = BTreeMap::new();
    for line in listing.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = line.strip_prefix("MKDISK-GROWLOG ") {
            let (dev, text) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(dev.to_string()).or_default().log.push(text.to_string());
        } else if let Some(rest) = line.strip_prefix("MKDISK-GROW ") {
            let f: Vec<&str> = rest.split(' ').collect();
            assert_eq!(f.len(), 6, "bad record {line:?}");
            let field = |i: usize, k: &str| f[i].strip_prefix(k).unwrap_or_else(|| panic!("bad record {line:?}"));
            let num = |i: usize, k: &str| field(i, k).parse::<u64>().unwrap_or_else(|_| panic!("bad record {line:?}"));
            let g = out.entry(f[0].to_string()).or_default();
            g.fs = f[1].to_string();
            g.rc = field(2, "rc=").to_string();
            (g.before, g.after, g.device) = (num(3, "before="), num(4, "after="), num(5, "device="));
        }
    }
    out
}

/// What one boot with growth printed.
struct GrowBoot {
    boot: Boot,
    grows: BTreeMap<String, Grow>,
}

/// Boot `disks` (writable: the guest's writes reach the files) with the host's `resize2fs` and
/// `btrfs` in the initramfs; the guest grows each of `grows` (`DEV:FS`), then lists `mounts`.
/// `Err` = QEMU or a part cannot be had here.
fn grow_boot(dir: &Path, disks: &[&Path], grows: &[&str], mounts: &[Mount], tag: &str) -> Result<GrowBoot, String> {
    static BOOT: Mutex<()> = Mutex::new(());
    let _g = BOOT.lock().unwrap_or_else(PoisonError::into_inner);
    let console = dir.join(format!("{tag}.console.log"));
    let listing = dir.join(format!("{tag}.listing.txt"));
    let mut args: Vec<String> =
        ["run", "--writable", "--timeout", "500", "--console", s(&console), "--listing"].map(String::from).to_vec();
    args.push(s(&listing).into());
    for bin in ["resize2fs", "btrfs"] {
        args.extend(["--with".into(), s(&which(bin).unwrap()).into()]);
    }
    args.extend(disks.iter().flat_map(|d| ["--disk".to_string(), s(d).into()]));
    args.extend(grows.iter().flat_map(|g| ["--grow".to_string(), (*g).into()]));
    args.extend(mounts.iter().flat_map(|m| ["--mount".to_string(), m.arg()]));
    let t0 = Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run_harness(&args) {
        Ok(_) => {}
        Err(HarnessError::Unavailable(why)) => return Err(why),
        Err(HarnessError::Failed(e)) => panic!("{tag}: boot failed after {:.1}s:\n{e}", t0.elapsed().as_secs_f64()),
    }
    eprintln!("growth: boot {tag} took {:.1}s", t0.elapsed().as_secs_f64());
    let raw = fs::read(&listing).unwrap();
    let grows = parse_grows(&String::from_utf8_lossy(&raw));
    let console = String::from_utf8_lossy(&fs::read(&console).unwrap()).replace('\r', "");
    Ok(GrowBoot { boot: Boot { console, ..parse_listing(&raw) }, grows })
}

/// The guest grew `dev` (`fs`) on-line from the built size to the grown partition `g`.
fn check_grow<'a>(b: &'a GrowBoot, dev: &str, fs: &str, g: &Grown) -> &'a Grow {
    let r =
        b.grows.get(dev).unwrap_or_else(|| panic!("no growth record for {dev}; console:\n{}", tail(&b.boot.console)));
    let ctx = || format!("{dev} ({fs}): {r:?}\nconsole tail:\n{}", tail(&b.boot.console));
    assert_eq!(r.fs, fs, "{}", ctx());
    assert_eq!(r.rc, "0", "growing failed: {}", ctx());
    assert_eq!(r.device, g.root.bytes(), "the guest's partition is not the grown one: {}", ctx());
    // statfs counts the filesystem less its fixed overhead (ext4: inode tables, journal):
    // before, at most the built partition; after, nearly all of the grown one.
    assert!(r.before > 0 && r.before <= g.before.bytes(), "size before: {}", ctx());
    assert!(r.after <= r.device && r.after >= r.device / 100 * 95, "size after: {}", ctx());
    eprintln!(
        "growth: {dev} ({fs}) grew on-line from {} to {} bytes (statfs; partition {} bytes)",
        r.before, r.after, r.device
    );
    r
}

/// `mounts` (on vda) on the disk `vdX` instead, ids prefixed.
fn on_disk(mounts: &[Mount], disk: &str, prefix: &str) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| Mount { id: format!("{prefix}-{}", m.id), dev: m.dev.replacen("vda", disk, 1), ..m.clone() })
        .collect()
}

/// The listing of `check` (a subset of `all`, one disk's mounts) equals the source.
fn assert_listing(fx: &Fixture, b: &Boot, all: &[Mount], check: &[Mount], what: &str) {
    let problems = compare_tree(&fx.src, all, b, check, &[], None);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report(what, &problems), tail(&b.console));
    let entries: usize = check.iter().map(|m| b.mounts[&m.id].1.len()).sum();
    eprintln!("growth: {what}: the kernel read {entries} entries, all equal to the source");
}

// ---------------------------------------------------------------------------------------------
// The 8 GiB disks: ext4 offline, ext4 and btrfs on-line

/// The ext4 root grown offline: the 2 GiB image's root partition as a file, made as long as the
/// grown partition, then `resize2fs` (what NixOS's stage 1 does, `e2fsck -fp; resize2fs`).
struct Offline {
    file: PathBuf,
    bytes: u64,
}

fn disks_8g() -> &'static (Grown, Grown) {
    static D: OnceLock<(Grown, Grown)> = OnceLock::new();
    D.get_or_init(|| {
        let fx = fixture();
        let ext4 = grow_disk(&fx.dir, &fx.ext4.path, "ext4-8g.raw", 8 * GIB, fx.ext4.root);
        let btrfs = grow_disk(&fx.dir, &fx.btrfs.path, "btrfs-8g.raw", 8 * GIB, fx.btrfs.root);
        (ext4, btrfs)
    })
}

fn offline() -> &'static Offline {
    static O: OnceLock<Offline> = OnceLock::new();
    O.get_or_init(|| {
        let fx = fixture();
        let (g, _) = disks_8g();
        let t0 = Instant::now();
        let file = fx.dir.join("ext4-offline.img");
        // The partition as built, on a partition of the grown size.
        extract(&fx.ext4.path, g.before, g.root.bytes(), &file);
        let sb = check_ext4(s(&file), g.before.bytes(), "offline, before resize2fs");
        assert!(!sb["Filesystem features"].contains("resize_inode"), "{sb:?}");
        let out = tool_ok("resize2fs", &[s(&file)]);
        let blocks = g.root.bytes() / BLOCK;
        assert!(out.contains(&format!("is now {blocks} (4k) blocks long")), "resize2fs:\n{out}");
        check_ext4(s(&file), g.root.bytes(), "offline, after resize2fs");
        eprintln!(
            "growth: offline resize2fs {} → {} bytes in {:.1}s",
            g.before.bytes(),
            g.root.bytes(),
            t0.elapsed().as_secs_f64()
        );
        Offline { file, bytes: g.root.bytes() }
    })
}

/// The boot of the 8 GiB disks: vda = ext4 (grown on-line), vdb = btrfs (grown on-line),
/// vdc = the offline-grown ext4 partition (only listed). `None` after a loud skip.
fn boot_8g() -> Option<&'static GrowBoot> {
    static B: OnceLock<Result<GrowBoot, String>> = OnceLock::new();
    // Without the parts, parts() has skipped loudly.
    guest::parts()?;
    let r = B.get_or_init(|| {
        let fx = fixture();
        let (ext4, btrfs) = disks_8g();
        let off = offline();
        let root = fx.ext4.root;
        let mut mounts = on_disk(&fx.ext4.mounts, "vda", "ext4");
        mounts.extend(on_disk(&fx.btrfs.mounts, "vdb", "btrfs"));
        mounts.extend(offline_mounts(fx).into_iter().take(1));
        let grows = [format!("vda{root}:ext4"), format!("vdb{}:btrfs", fx.btrfs.root)];
        let grows: Vec<&str> = grows.iter().map(String::as_str).collect();
        grow_boot(&fx.dir, &[&ext4.path, &btrfs.path, &off.file], &grows, &mounts, "grow-8g")
    });
    match r {
        Ok(b) => Some(b),
        Err(why) => {
            guest::skip(why);
            None
        }
    }
}

/// The offline-grown partition, a whole disk (vdc), first; then the ext4 image's ESP, which
/// the guest does not mount from vdc (it only tells which part of the source is the root's).
fn offline_mounts(fx: &Fixture) -> Vec<Mount> {
    vec![Mount::new("offline-root", "vdc".into(), "ext4", "ro", "/")]
        .into_iter()
        .chain(fx.ext4.mounts.iter().filter(|m| m.mountpoint != "/").cloned())
        .collect()
}

#[test]
fn growpart_grows_the_last_partition_to_the_end() {
    if !host_tools("growpart") {
        return;
    }
    let (ext4, btrfs) = disks_8g();
    for g in [ext4, btrfs] {
        // 8 GiB less the ESP, the alignment gap and the backup GPT.
        assert!(g.root.bytes() > 8 * GIB - 258 * (1 << 20), "{:?}", g.root);
        assert!(g.root.bytes() > 4 * g.before.bytes(), "{:?} {:?}", g.before, g.root);
    }
}

#[test]
fn ext4_grows_offline_with_resize2fs() {
    if !host_tools("ext4 offline") {
        return;
    }
    let fx = fixture();
    let off = offline();
    // The content, read back by e2fsprogs (hard links come out as copies, so no nlink here).
    let dump = fx.dir.join("offline-rdump");
    let _ = fs::remove_dir_all(&dump);
    fs::create_dir_all(&dump).unwrap();
    let o = tool("debugfs", &["-R", &format!("rdump / {}", s(&dump)), s(&off.file)]);
    assert_ok("debugfs rdump", &o);
    let problems = compare_dump(&fx.src, &fx.ext4.mounts, &dump);
    assert!(problems.is_empty(), "{}", report("debugfs rdump of the offline-grown ext4", &problems));
    eprintln!("growth: offline-grown ext4 ({} bytes): rdump equals the source", off.bytes);
    // And the kernel's read of it.
    let Some(b) = boot_8g() else { return };
    let all = offline_mounts(fx);
    assert_listing(fx, &b.boot, &all, &all[..1], "offline-grown ext4 (vdc)");
}

/// Differences between the root mount's part of `src` and the tree `dump` (`debugfs rdump`):
/// types, rwx permissions, sizes, content, symlink targets, mtimes of files.
fn compare_dump(src: &Path, all: &[Mount], dump: &Path) -> Vec<String> {
    let root = all.iter().find(|m| m.mountpoint == "/").unwrap();
    let (want, _) = host_listing(src, all, root);
    let (got, _) = host_listing(dump, std::slice::from_ref(root), root);
    let mut problems = Vec::new();
    for (path, w) in &want {
        let Some(g) = got.get(path) else {
            problems.push(format!("{path}: missing"));
            continue;
        };
        let kind = w.mode & S_IFMT;
        // rdump restores the type and rwx bits only (debugfs `mode_xlate`): suid, sgid and
        // sticky are compared by the kernel's read (vdc of the 8 GiB boot).
        let differs = g.mode & (S_IFMT | 0o777) != w.mode & (S_IFMT | 0o777)
            || g.sha256 != w.sha256
            || g.target != w.target
            || (kind != S_IFDIR && g.size != w.size)
            || (kind != S_IFDIR && kind != S_IFLNK && g.mtime != w.mtime);
        if differs && path != "." {
            problems.push(format!("{path}: {g:?} != {w:?}"));
        }
    }
    problems
        .extend(got.keys().filter(|p| !want.contains_key(*p) && *p != "./lost+found").map(|p| format!("{p}: extra")));
    problems
}

#[test]
fn ext4_grows_online_to_8g() {
    if !host_tools("ext4 online 8G") {
        return;
    }
    let Some(b) = boot_8g() else { return };
    let fx = fixture();
    let (g, _) = disks_8g();
    let dev = format!("vda{}", fx.ext4.root);
    let r = check_grow(b, &dev, "ext4", g);
    let blocks = g.root.bytes() / BLOCK;
    assert!(r.log.iter().any(|l| l.contains(&format!("is now {blocks} (4k) blocks long"))), "{r:?}");
    let mounts = on_disk(&fx.ext4.mounts, "vda", "ext4");
    assert_listing(fx, &b.boot, &mounts, &mounts, "ext4 grown on-line to 8 GiB");
    // On the host: the grown image's partition.
    let dev = format!("{}?offset={}", s(&g.path), g.root.offset());
    let sb = check_ext4(&dev, g.root.bytes(), "ext4 grown on-line");
    eprintln!("growth: ext4 8G features after on-line growth: {}", sb["Filesystem features"]);
}

/// The btrfs superblock's `total_bytes` and `dev_item.total_bytes` (`dump-super`).
fn btrfs_sizes(dev: &Path) -> (u64, u64) {
    let out = tool_ok("btrfs", &["inspect-internal", "dump-super", s(dev)]);
    let field = |k: &str| -> u64 {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(k)).unwrap_or_else(|| panic!("{k}: {out}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("total_bytes"), field("dev_item.total_bytes"))
}

#[test]
fn btrfs_grows_online_to_8g() {
    if !host_tools("btrfs online 8G") {
        return;
    }
    let Some(b) = boot_8g() else { return };
    let fx = fixture();
    let (_, g) = disks_8g();
    check_grow(b, &format!("vdb{}", fx.btrfs.root), "btrfs", g);
    let all = on_disk(&fx.btrfs.mounts, "vdb", "btrfs");
    assert_listing(fx, &b.boot, &all, &all, "btrfs grown on-line to 8 GiB");
    // On the host: the grown partition as a file (btrfs check takes no offset).
    let part = fx.dir.join("btrfs-8g.part");
    extract(&g.path, g.root, g.root.bytes(), &part);
    let o = tool("btrfs", &["check", "--readonly", "--check-data-csum", s(&part)]);
    assert_ok("btrfs check --readonly --check-data-csum (grown on-line)", &o);
    let want = g.root.bytes() / BLOCK * BLOCK;
    assert_eq!(btrfs_sizes(&part), (want, want), "btrfs does not fill the grown partition");
    let _ = fs::remove_file(&part);
}

// ---------------------------------------------------------------------------------------------
// ext4 on-line past 128 GiB: meta_bg

#[test]
fn ext4_grows_online_past_128g_to_meta_bg() {
    if !host_tools("ext4 online 130G") {
        return;
    }
    let fx = fixture();
    if guest::parts().is_none() {
        return;
    }
    let g = grow_disk(&fx.dir, &fx.ext4.path, "ext4-130g.raw", 130 * GIB, fx.ext4.root);
    assert!(g.root.bytes() >= 128 * GIB, "{:?}", g.root);
    let root: Vec<Mount> = fx.ext4.mounts.iter().filter(|m| m.mountpoint == "/").cloned().collect();
    let dev = format!("vda{}", fx.ext4.root);
    let b = match grow_boot(&fx.dir, &[&g.path], &[&format!("{dev}:ext4")], &root, "grow-130g") {
        Ok(b) => b,
        Err(why) => return guest::skip(&why),
    };
    let r = check_grow(&b, &dev, "ext4", &g);
    let blocks = g.root.bytes() / BLOCK;
    assert!(r.log.iter().any(|l| l.contains(&format!("is now {blocks} (4k) blocks long"))), "{r:?}");
    // The kernel's own account of the conversion (ext4_convert_meta_bg).
    assert!(r.log.iter().any(|l| l.contains("Converting file system to meta_bg")), "{r:?}");
    assert_listing(fx, &b.boot, &fx.ext4.mounts, &root, "ext4 grown on-line to 130 GiB");
    let sb = check_ext4(&format!("{}?offset={}", s(&g.path), g.root.offset()), g.root.bytes(), "ext4 130G");
    let features = &sb["Filesystem features"];
    assert!(features.contains("meta_bg") && !features.contains("resize_inode"), "{features}");
    assert!(features.contains("64bit"), "{features}");
    eprintln!("growth: ext4 130G features after on-line growth: {features}");
    let _ = fs::remove_file(&g.path);
}

#[test]
fn grow_records_parse() {
    let raw = "MKDISK-GROWLOG vda2 resize2fs 1.47.0\nMKDISK-GROWLOG vda2 The filesystem on /dev/vda2 is now 9 (4k) blocks long.\r\nMKDISK-GROW vda2 ext4 rc=0 before=100 after=200 device=300\nMKDISK-GROW vdb2 btrfs rc=mount-failed before=0 after=0 device=8\n";
    let g = parse_grows(raw);
    assert_eq!((g["vda2"].before, g["vda2"].after, g["vda2"].device), (100, 200, 300));
    assert_eq!(g["vda2"].log.len(), 2);
    assert_eq!(g["vda2"].rc, "0");
    assert_eq!(g["vdb2"].rc, "mount-failed");
    assert_eq!(g["vdb2"].fs, "btrfs");
}
