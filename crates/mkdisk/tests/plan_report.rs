//! `mkdisk plan --json` is the plan's report: for the seed layouts and the ext4 and subvolume
//! layouts built from a source tree, every identifier it prints is what `blkid -p` and
//! `sfdisk --json` read from the built image, mount points and subvolumes are listed, and the
//! minimal size it gives for each filesystem's content holds that content (the filesystem
//! rebuilt at exactly that size passes its checker) and lies within 10 % above what the
//! built filesystem actually uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{repo, skip_or_fail};

const EPOCH: &str = "1700000000";
const MIB: u64 = 1 << 20;

fn mkdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkdisk")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).output().unwrap()
}

fn ok(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn run(cmd: &str, args: &[&str]) -> String {
    ok(&format!("{cmd} {args:?}"), Command::new(cmd).args(args).output().unwrap())
}

/// 48 MiB of files under /nix/store and /home, half of them compressible text, so that the
/// store filesystem's content outweighs its fixed overhead.
fn source_tree(root: &Path) {
    let noise = mkdisk_testkit::noise(24 * MIB as usize, 5);
    for i in 0..96usize {
        let dir = root.join(format!("nix/store/{i:032}-pkg-{i}"));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let chunk = &noise[i * (MIB as usize / 4)..(i + 1) * (MIB as usize / 4)];
        std::fs::write(dir.join("bin/prog"), chunk).unwrap();
        let text: Vec<u8> =
            format!("package {i} documentation line\n").bytes().cycle().take(MIB as usize / 4).collect();
        std::fs::write(dir.join("README"), text).unwrap();
    }
    std::fs::create_dir_all(root.join("home/user")).unwrap();
    std::fs::write(root.join("home/user/notes"), "hello\n").unwrap();
    std::fs::create_dir_all(root.join("boot/extra")).unwrap();
    std::fs::write(root.join("boot/extra/blob"), &noise[..300_000]).unwrap();
}

/// `blkid -p` of the filesystem at `offset` of `img`: (TYPE, UUID, LABEL).
fn blkid(img: &Path, offset: u64) -> (String, Option<String>, Option<String>) {
    // Exit status 2: nothing found (a partition without a filesystem).
    let o = Command::new("blkid").args(["-p", "-o", "export", "-O", &offset.to_string()]).arg(img).output().unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    let get = |k: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string));
    (get("TYPE").unwrap_or_default(), get("UUID"), get("LABEL"))
}

/// `len` bytes of `img` from `offset` as the (sparse) file `dest`.
fn extract(img: &Path, offset: u64, len: u64, dest: &Path) -> PathBuf {
    let _ = std::fs::remove_file(dest);
    let (input, output) = (format!("if={}", img.display()), format!("of={}", dest.display()));
    let (skip, count) = (format!("skip={}", offset / MIB), format!("count={}", len / MIB));
    run("dd", &[&input, &output, "bs=1M", &skip, &count, "conv=sparse", "status=none"]);
    dest.to_path_buf()
}

/// Bytes the filesystem of `format` at `offset` of `img` uses: ext4's blocks in use (metadata
/// included), btrfs's allocated chunks.
fn used_bytes(format: &str, img: &Path, offset: u64, len: u64, dir: &Path) -> u64 {
    let part = extract(img, offset, len, &dir.join("part.img"));
    let n = |s: &str| -> u64 { s.trim().parse().unwrap() };
    match format {
        "ext4" => {
            let h = run("dumpe2fs", &["-h", part.to_str().unwrap()]);
            let field = |k: &str| n(h.lines().find_map(|l| l.strip_prefix(k)).unwrap());
            (field("Block count:") - field("Free blocks:")) * field("Block size:")
        }
        // The device space its chunks take (`btrfs filesystem usage`'s "Device allocated"),
        // plus the first MiB, which holds the superblock and no chunk.
        "btrfs" => {
            let h = run("btrfs", &["inspect-internal", "dump-super", part.to_str().unwrap()]);
            n(h.lines().find_map(|l| l.strip_prefix("dev_item.bytes_used")).unwrap()) + MIB
        }
        _ => unreachable!("{format}"),
    }
}

/// The checker of `format` accepts the filesystem at `offset` of `img`.
fn check_fs(format: &str, img: &Path, offset: u64, len: u64, dir: &Path) {
    let part = extract(img, offset, len, &dir.join("check.img"));
    let p = part.to_str().unwrap();
    match format {
        "ext4" => drop(run("e2fsck", &["-fn", p])),
        "btrfs" => drop(run("btrfs", &["check", "--readonly", p])),
        "vfat" => drop(run("fsck.fat", &["-n", p])),
        _ => {}
    }
}

/// The layout with partition `name` set to `mib` MiB.
fn resized(spec: &Path, name: &str, mib: u64, dest: &Path) -> PathBuf {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(spec).unwrap()).unwrap();
    let disk = v["disk"].as_object_mut().unwrap().values_mut().next().unwrap();
    let p = &mut disk["content"]["partitions"][name];
    p["size"] = Value::String(format!("{mib}M"));
    p["end"] = Value::String(format!("+{mib}M"));
    let out = dest.join(format!("resized-{name}.json"));
    std::fs::write(&out, serde_json::to_string(&v).unwrap()).unwrap();
    out
}

fn check_identifiers(plan: &Value, img: &Path) {
    let sf: Value = serde_json::from_str(&run("sfdisk", &["--json", img.to_str().unwrap()])).unwrap();
    let table = &sf["partitiontable"];
    assert_eq!(table["id"].as_str().unwrap().to_lowercase(), plan["guid"].as_str().unwrap());
    for p in plan["partitions"].as_array().unwrap() {
        let n = p["number"].as_u64().unwrap() as usize;
        let sfp = &table["partitions"][n - 1];
        assert_eq!(sfp["uuid"].as_str().unwrap().to_lowercase(), p["guid"].as_str().unwrap());
        assert_eq!(sfp["name"], p["label"]);
        let offset = p["start"].as_u64().unwrap() * 512;
        let (ty, uuid, label) = blkid(img, offset);
        let fs = p["filesystem"].as_str().unwrap();
        if fs == "-" {
            assert!(p.get("fs_uuid").is_none(), "{p}");
            continue;
        }
        assert_eq!(ty, fs, "{p}");
        assert_eq!(uuid.as_deref(), p["fs_uuid"].as_str(), "{p}");
        assert_eq!(label.as_deref(), p["fs_label"].as_str(), "{p}");
        if fs == "vfat" {
            assert_eq!(p["volume_id"], p["fs_uuid"]);
        }
    }
}

#[test]
fn report_matches_blkid_and_minimal_sizes_hold() {
    for tool in ["blkid", "sfdisk", "dumpe2fs", "btrfs", "e2fsck", "fsck.fat"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            return skip_or_fail("plan report vs blkid", &format!("{tool} is not installed"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    source_tree(&root);
    let shared = repo().join("../shared/disko");
    for layout in ["seed-regular", "seed-impermanence", "btrfs-subvolumes", "ext4-swap"] {
        let spec = shared.join(format!("{layout}.json"));
        let spec_s = spec.to_str().unwrap();
        let r = root.to_str().unwrap();
        let report: Value =
            serde_json::from_str(&ok("plan", mkdisk(&["plan", spec_s, "--json", "--root", r]))).unwrap();
        assert_eq!(report["version"], 1);
        let out = tmp.path().join(format!("out-{layout}"));
        std::fs::create_dir_all(&out).unwrap();
        ok("build", mkdisk(&["build", spec_s, "--out", out.to_str().unwrap(), "--quiet", "--root", r]));
        let disk = &report["disks"][0];
        let img = out.join(disk["image"].as_str().unwrap());
        check_identifiers(disk, &img);
        for p in disk["partitions"].as_array().unwrap() {
            check_partition(p, &spec, &img, tmp.path(), layout);
        }
    }
}

fn check_partition(p: &Value, spec: &Path, img: &Path, dir: &Path, layout: &str) {
    let fs = p["filesystem"].as_str().unwrap();
    if ["ext4", "btrfs", "vfat"].contains(&fs) {
        assert!(!p["mounts"].as_array().unwrap().is_empty() || fs == "btrfs", "{layout}: {p}");
    }
    if fs == "btrfs" && layout == "btrfs-subvolumes" {
        assert!(!p["subvolumes"].as_array().unwrap().is_empty(), "{p}");
        assert!(p["mounts"].as_array().unwrap().iter().any(|m| m.get("subvolume").is_some()), "{p}");
    }
    let Some(c) = p.get("content_size") else {
        assert_eq!(fs, "-", "{layout}: no content size for {p}");
        return;
    };
    let min = c["min_size_bytes"].as_u64().unwrap();
    let data = c["data_bytes"].as_u64().unwrap();
    assert_eq!(min % MIB, 0);
    let offset = p["start"].as_u64().unwrap() * 512;
    if data >= 32 * MIB && fs != "vfat" {
        let used = used_bytes(fs, img, offset, p["size_bytes"].as_u64().unwrap(), dir);
        eprintln!("{layout} {}: {data} bytes of data, minimal size {min}, {used} bytes used", p["name"]);
        assert!(
            min * 10 <= used * 11,
            "{layout} {}: minimal size {min} is over 110 % of the {used} bytes used",
            p["name"]
        );
    }
    if fs == "swap" {
        return;
    }
    // The filesystem rebuilt at exactly the minimal size holds the content.
    let name = p["name"].as_str().unwrap();
    let small = resized(spec, name, min / MIB, dir);
    let out = dir.join(format!("min-{layout}-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let r = dir.join("root");
    ok(
        "build at the minimal size",
        mkdisk(&[
            "build",
            small.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--root",
            r.to_str().unwrap(),
        ]),
    );
    let plan: Value = serde_json::from_str(&ok("plan", mkdisk(&["plan", small.to_str().unwrap(), "--json"]))).unwrap();
    let img = out.join(plan["disks"][0]["image"].as_str().unwrap());
    let q = plan["disks"][0]["partitions"].as_array().unwrap().iter().find(|q| q["name"] == name).unwrap().clone();
    assert_eq!(q["size_bytes"].as_u64().unwrap(), min, "{layout} {name}");
    let start = q["start"].as_u64().unwrap() * 512;
    check_fs(fs, &img, start, min, dir);
    if data >= 32 * MIB && fs != "vfat" {
        // ... and is nearly full there: the minimum is tight, not a generous guess.
        let used = used_bytes(fs, &img, start, min, dir);
        eprintln!("{layout} {name}: at the minimal size {min}, {used} bytes used");
        assert!(min * 10 <= used * 11, "{layout} {name}: at the minimal size {min} only {used} bytes are used");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
