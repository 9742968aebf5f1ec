//! Image sizes from the content (issue 15): `imageSize = "auto"` / `--image-size auto` makes
//! the seed layouts' 100% partition as small as its filesystem holds a store-shaped tree plus
//! the headroom, and the image ends after it; `--image-size 64G` builds for the target disk
//! and stays as sparse as the 2G build; bad sizes fail in one line and leave nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::repo;

const EPOCH: &str = "1700000000";
const MIB: u64 = 1 << 20;

fn mkdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkdisk")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).output().unwrap()
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(cmd: &str, args: &[&str]) -> String {
    ok(&format!("{cmd} {args:?}"), &Command::new(cmd).args(args).output().unwrap())
}

/// A store-shaped tree from this machine's packages, and a few files on the ESP.
fn corpus(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let script = repo().join("../shared/tools/make-store-corpus.py");
    let st = Command::new("python3").arg(&script).arg(&src).args(["--max-mib", "24"]).status().unwrap();
    assert!(st.success(), "make-store-corpus.py failed");
    fs::create_dir_all(src.join("boot/loader")).unwrap();
    fs::write(src.join("boot/loader/loader.conf"), "timeout 0\n").unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), "auto\n").unwrap();
    src
}

/// A seed layout (`../shared/disko/NAME.json`), its disk's imageSize replaced by `size`.
fn layout(name: &str, size: Option<&str>, dir: &Path) -> PathBuf {
    let mut v: Value =
        serde_json::from_slice(&fs::read(repo().join(format!("../shared/disko/{name}.json"))).unwrap()).unwrap();
    if let Some(size) = size {
        for d in v["disk"].as_object_mut().unwrap().values_mut() {
            d["imageSize"] = size.into();
        }
    }
    let p = dir.join(format!("{name}.json"));
    fs::write(&p, v.to_string()).unwrap();
    p
}

fn plan(spec: &Path, src: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["plan", spec.to_str().unwrap(), "--json", "--root", src.to_str().unwrap()];
    args.extend(extra);
    serde_json::from_str(&ok("mkdisk plan", &mkdisk(&args))).unwrap()
}

fn build(spec: &Path, src: &Path, out: &Path, extra: &[&str]) {
    fs::create_dir_all(out).unwrap();
    let mut args = vec!["build", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    args.extend(["--root", src.to_str().unwrap()]);
    args.extend(extra);
    ok("mkdisk build", &mkdisk(&args));
}

fn part<'a>(disk: &'a Value, name: &str) -> &'a Value {
    disk["partitions"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Copy the `len` bytes at `off` of `img` into a new sparse file, reading only the image's
/// data extents (SEEK_DATA/SEEK_HOLE): a 64 GiB partition costs what it holds.
fn extract(img: &Path, off: u64, len: u64, dest: &Path) -> PathBuf {
    const PY: &str = r"
import os, sys
src, off, n, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fi = os.open(src, os.O_RDONLY)
fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fo, n)
pos, end = off, off + n
while pos < end:
    try:
        d = os.lseek(fi, pos, os.SEEK_DATA)
    except OSError:
        break
    if d >= end:
        break
    h = min(os.lseek(fi, d, os.SEEK_HOLE), end)
    while d < h:
        b = os.pread(fi, min(h - d, 1 << 22), d)
        os.pwrite(fo, b, d - off)
        d += len(b)
    pos = h
";
    let args = [img.to_str().unwrap(), &off.to_string(), &len.to_string(), dest.to_str().unwrap()];
    let o = Command::new("python3").arg("-c").arg(PY).args(args).output().unwrap();
    ok("extract", &o);
    dest.to_path_buf()
}

fn offset_len(p: &Value) -> (u64, u64) {
    (num(p, "start") * 512, num(p, "size_bytes"))
}

/// sgdisk -v finds nothing wrong and the disk ends after its last partition and the backup
/// GPT's 33 sectors.
fn check_table(img: &Path, disk: &Value) {
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let last = disk["partitions"].as_array().unwrap().iter().map(|p| num(p, "end")).max().unwrap();
    assert_eq!(num(disk, "sectors"), last + 1 + 33, "{disk}");
    assert_eq!(fs::metadata(img).unwrap().len(), num(disk, "size_bytes"));
}

fn check_esp(img: &Path, disk: &Value, dir: &Path) {
    let (off, len) = offset_len(part(disk, "ESP"));
    let esp = extract(img, off, len, &dir.join("esp.img"));
    run("fsck.fat", &["-n", esp.to_str().unwrap()]);
    assert!(run("mdir", &["-i", esp.to_str().unwrap(), "::/loader"]).contains("loader"));
}

/// `dumpe2fs -h` field `key` as a number.
fn dumpe2fs(fs: &Path, key: &str) -> u64 {
    let out = run("dumpe2fs", &["-h", fs.to_str().unwrap()]);
    let line = out.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap_or_else(|| panic!("{key}: {out}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn dump_super(fs: &Path, key: &str) -> u64 {
    let out = run("btrfs", &["inspect-internal", "dump-super", fs.to_str().unwrap()]);
    let line = out.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("{key}: {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The disk's auto-size report, checked against the fill partition: min + headroom, rounded
/// up to 1 MiB; returns (partition, min, headroom bytes).
fn auto_report<'a>(disk: &'a Value, fill: &str) -> (&'a Value, u64, u64) {
    assert_eq!(disk["image_size"], "auto", "{disk}");
    let a = &disk["auto_size"];
    assert_eq!(a["partition"], fill);
    assert_eq!(a["headroom"], "10%+64M");
    let (min, headroom) = (num(a, "min_size_bytes"), num(a, "headroom_bytes"));
    assert_eq!(headroom, min.div_ceil(10) + 64 * MIB);
    let p = part(disk, fill);
    assert_eq!(num(p, "size_bytes"), (min + headroom).next_multiple_of(MIB), "{p}");
    assert_eq!(num(&p["content_size"], "min_size_bytes"), min);
    (p, min, headroom)
}

#[test]
fn auto_size_ext4_root_holds_the_store_with_the_headroom_left() {
    let dir = tempfile::tempdir().unwrap();
    let src = corpus(dir.path());
    // imageSize = "auto" in the layout itself.
    let spec = layout("ext4-swap", Some("auto"), dir.path());
    let report = plan(&spec, &src, &[]);
    let disk = &report["disks"][0];
    let (root, _min, headroom) = auto_report(disk, "root");
    // The fixed partitions keep their sizes.
    assert_eq!(num(part(disk, "ESP"), "size_bytes"), 256 * MIB);
    assert_eq!(num(part(disk, "swap"), "size_bytes"), 512 * MIB);
    let out = dir.path().join("out");
    build(&spec, &src, &out, &[]);
    let img = out.join("vdb.raw");
    check_table(&img, disk);
    check_esp(&img, disk, dir.path());
    let (off, len) = offset_len(root);
    let fs = extract(&img, off, len, &dir.path().join("root.img"));
    run("e2fsck", &["-fn", fs.to_str().unwrap()]);
    // It holds the store: every store path is there.
    let paths = fs::read_dir(src.join("nix/store")).unwrap().count();
    let listed = run("debugfs", &["-R", "ls -p /nix/store", fs.to_str().unwrap()]);
    assert_eq!(listed.lines().filter(|l| l.contains('-') && !l.contains("/./") && !l.contains("/../")).count(), paths);
    // What the filesystem uses (metadata included), plus the headroom, covers the partition.
    let block = dumpe2fs(&fs, "Block size");
    let used = (dumpe2fs(&fs, "Block count") - dumpe2fs(&fs, "Free blocks")) * block;
    let data = src_data_bytes(&src);
    assert!(used >= data, "used {used} < data {data}");
    assert!(len <= used + headroom + MIB, "partition {len} > used {used} + headroom {headroom} + 1 MiB");
    eprintln!("ext4 auto: partition {} MiB, used {} MiB, headroom {} MiB", len >> 20, used >> 20, headroom >> 20);
}

fn src_data_bytes(src: &Path) -> u64 {
    fn walk(p: &Path, sum: &mut u64) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                walk(&e.path(), sum);
            } else if m.is_file() {
                *sum += m.len();
            }
        }
    }
    let mut sum = 0;
    walk(&src.join("nix"), &mut sum);
    sum
}

#[test]
fn auto_size_btrfs_subvolumes_counts_compressed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = corpus(dir.path());
    let spec = layout("btrfs-subvolumes", None, dir.path());
    let report = plan(&spec, &src, &["--image-size", "auto"]);
    let disk = &report["disks"][0];
    let (root, min, headroom) = auto_report(disk, "root");
    // /nix is compress=zstd: its compressed size counts (the same layout without compression
    // needs more).
    let mut v: Value = serde_json::from_slice(&fs::read(&spec).unwrap()).unwrap();
    v["disk"]["main"]["content"]["partitions"]["root"]["content"]["subvolumes"]["/nix"]["mountOptions"] =
        serde_json::json!(["noatime"]);
    let raw_spec = dir.path().join("raw.json");
    fs::write(&raw_spec, v.to_string()).unwrap();
    let raw = plan(&raw_spec, &src, &["--image-size", "auto"]);
    let raw_min = num(&raw["disks"][0]["auto_size"], "min_size_bytes");
    assert!(min + 4 * MIB < raw_min, "compressed min {min}, uncompressed {raw_min}");
    let out = dir.path().join("out");
    build(&spec, &src, &out, &["--image-size", "auto"]);
    let img = out.join("main.raw");
    check_table(&img, disk);
    check_esp(&img, disk, dir.path());
    let (off, len) = offset_len(root);
    let fs = extract(&img, off, len, &dir.path().join("root.img"));
    run("btrfs", &["check", "--readonly", "--check-data-csum", fs.to_str().unwrap()]);
    assert_eq!(dump_super(&fs, "total_bytes"), len);
    let used = dump_super(&fs, "bytes_used");
    // What the content takes fits the minimum, and the partition is the minimum plus the
    // headroom (plus the alignment's rounding).
    assert!(used <= min, "bytes_used {used} > min {min}");
    assert!(len <= min + headroom + MIB, "partition {len} > min {min} + headroom {headroom} + 1 MiB");
    eprintln!("btrfs auto: partition {} MiB, min {} MiB, bytes_used {} MiB", len >> 20, min >> 20, used >> 20);
    // Planning again reads the same: the plan is deterministic.
    assert_eq!(plan(&spec, &src, &["--image-size", "auto"]), report);
}

/// Allocated bytes of a file (st_blocks × 512).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn image_size_64g_is_sparse_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let src = corpus(dir.path());
    let spec = layout("seed-regular", None, dir.path());
    let (small, big) = (dir.path().join("2g"), dir.path().join("64g"));
    build(&spec, &src, &small, &[]);
    build(&spec, &src, &big, &["--image-size", "64G"]);
    let (a, b) = (small.join("main.raw"), big.join("main.raw"));
    assert_eq!(fs::metadata(&a).unwrap().len(), 2 << 30);
    assert_eq!(fs::metadata(&b).unwrap().len(), 64 << 30);
    let (alloc_a, alloc_b) = (allocated(&a), allocated(&b));
    eprintln!("allocated: 2G build {alloc_a} bytes, 64G build {alloc_b} bytes");
    assert!(alloc_b.abs_diff(alloc_a) * 20 <= alloc_a, "64G allocates {alloc_b} bytes, 2G {alloc_a}");
    let report = plan(&spec, &src, &["--image-size", "64G"]);
    let disk = &report["disks"][0];
    assert_eq!(disk["image_size"], "64G");
    assert!(disk.get("auto_size").is_none());
    assert_eq!(num(disk, "size_bytes"), 64 << 30);
    let v = run("sgdisk", &["-v", b.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    check_esp(&b, disk, dir.path());
    let (off, len) = offset_len(part(disk, "nix"));
    assert!(len > 63 << 30);
    let fs = extract(&b, off, len, &dir.path().join("nix.img"));
    run("btrfs", &["check", "--readonly", "--check-data-csum", fs.to_str().unwrap()]);
    assert_eq!(dump_super(&fs, "total_bytes"), len);
}

/// A failed command: exit code 1, one line on stderr containing each of `want`, nothing in
/// the output directory.
fn fails(args: &[&str], out: &Path, want: &[&str]) {
    fs::create_dir_all(out).unwrap();
    let o = mkdisk(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: {err:?} lacks {w:?}");
    }
    assert_eq!(fs::read_dir(out).unwrap().count(), 0, "{args:?} left files");
}

#[test]
fn bad_sizes_fail_in_one_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let outs = out.to_str().unwrap();
    let spec = layout("ext4-swap", None, dir.path());
    let s = spec.to_str().unwrap();
    // Below the fixed partitions (256M + 512M and the GPTs: 770 MiB).
    fails(
        &["build", s, "--out", outs, "--image-size", "700M"],
        &out,
        &["disk vdb", "--image-size 700M is 70 MiB too small", "at least 770 MiB"],
    );
    fails(&["plan", s, "--image-size", "700M"], &out, &["70 MiB too small"]);
    // Below the content: the root partition gets 2 MiB, its content needs more.
    let root = dir.path().join("big");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("blob"), mkdisk_testkit::noise(40 << 20, 3)).unwrap();
    let r = root.to_str().unwrap();
    let o = mkdisk(&["plan", s, "--root", r, "--json"]);
    let min = num(
        &part(&serde_json::from_slice::<Value>(&o.stdout).unwrap()["disks"][0], "root")["content_size"],
        "min_size_bytes",
    );
    let short = min / MIB - 2;
    fails(
        &["build", s, "--out", outs, "--root", r, "--image-size", "772M"],
        &out,
        &["partition root", &format!("the image is {short} MiB too small"), &format!("needs {} MiB", min / MIB)],
    );
    // auto without a partition that fills the disk, and with one that is swap or empty.
    let fixed = dir.path().join("fixed.toml");
    fs::write(
        &fixed,
        "[disk.data]\nimageSize = \"auto\"\n[disk.data.content]\ntype = \"gpt\"\n\
         [disk.data.content.partitions.a]\nsize = \"64M\"\ncontent = { type = \"filesystem\", format = \"ext4\" }\n",
    )
    .unwrap();
    fails(&["build", fixed.to_str().unwrap(), "--out", outs], &out, &["disk data", "has none"]);
    let swap = dir.path().join("swap.toml");
    fs::write(
        &swap,
        "[disk.d.content]\ntype = \"gpt\"\n[disk.d.content.partitions.root]\nsize = \"64M\"\n\
         content = { type = \"filesystem\", format = \"ext4\" }\n\
         [disk.d.content.partitions.swap]\nsize = \"100%\"\ncontent = { type = \"swap\" }\n",
    )
    .unwrap();
    fails(
        &["build", swap.to_str().unwrap(), "--out", outs, "--image-size", "auto"],
        &out,
        &["disk d", "partition swap", "is swap"],
    );
    let empty = dir.path().join("empty.toml");
    fs::write(&empty, "[disk.d.content]\ntype = \"gpt\"\n[disk.d.content.partitions.raw]\nsize = \"100%\"\n").unwrap();
    fails(
        &["build", empty.to_str().unwrap(), "--out", outs, "--image-size", "auto"],
        &out,
        &["partition raw", "no filesystem"],
    );
    // Unparsable sizes and headrooms.
    fails(&["build", s, "--out", outs, "--image-size", "12Q"], &out, &["malformed image size \"12Q\""]);
    fails(&["build", s, "--out", outs, "--image-size", "0"], &out, &["malformed image size"]);
    fails(&["plan", s, "--image-size", "auto", "--headroom", "10%%"], &out, &["malformed headroom"]);
    fails(&["build", s, "--out", outs, "--image-size", "auto", "--headroom", "5M+5M"], &out, &["malformed headroom"]);
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[disk.d]\nimageSize = \"automatic\"\n[disk.d.content]\ntype = \"gpt\"\n").unwrap();
    fails(&["build", bad.to_str().unwrap(), "--out", outs], &out, &["disk.d.imageSize", "\"auto\""]);
}
