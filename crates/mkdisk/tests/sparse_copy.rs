//! Regression (zero blocks stored as allocated zeros): whole zero 4 KiB blocks of regular files
//! must be holes on ext4 and btrfs, because `dd conv=sparse` — how images are commonly written
//! to disks — skips zero blocks, and a disk's old bytes would then show through in the files
//! while the filesystem checkers stay clean.
//!
//! The test builds an image (ext4, plain btrfs, zstd btrfs), copies it with
//! `dd bs=4096 conv=sparse,notrunc` onto a file of 0xFF ("a disk with old data"), and reads the
//! files back with the real tools: `e2fsck -fn` and `debugfs dump`, `btrfs check
//! --check-data-csum` and `btrfs restore`.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{build_args, mkdisk, skip_or_fail};

const B: usize = 4096;
const MIB: usize = 1 << 20;

/// The layout: ext4 at `/`, plain btrfs at `/srv`, btrfs with `compress-force=zstd` at `/zst`.
const SPEC: &str = r#"{"disk":{"main":{"imageSize":"256M","content":{"type":"gpt","partitions":{
  "root":{"size":"64M","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}},
  "plain":{"size":"96M","content":{"type":"btrfs","mountpoint":"/srv"}},
  "zst":{"size":"100%","content":{"type":"btrfs","mountpoint":"/zst","mountOptions":["compress-force=zstd"]}}}}}}}"#;

/// A block of non-zero bytes that differs with `k` (none of them zero).
fn data(k: usize) -> Vec<u8> {
    (0..B).map(|i| u8::try_from((i * (k + 3) + k) % 251).unwrap() + 1).collect()
}

fn zeros(n: usize) -> Vec<u8> {
    vec![0u8; n]
}

/// Compressible text (zstd keeps it compressed).
fn text(n: usize) -> Vec<u8> {
    let mut t = Vec::new();
    let mut i = 0;
    while t.len() < n {
        t.extend_from_slice(format!("line {i} of some compressible text\n").as_bytes());
        i += 1;
    }
    t.truncate(n);
    t
}

/// The files of every partition: whole zero blocks at the start, middle and end, 1 MiB zero
/// stretches, a zero partial last block, an all-zero file, zero bytes that are not a whole
/// block, and a file with 1500 data runs (an ext4 extent tree of depth 2).
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let z = zeros(B);
    let cat = |parts: &[&[u8]]| parts.concat();
    let mut many = Vec::with_capacity(3000 * B);
    for k in 0..1500 {
        many.extend_from_slice(&data(k));
        many.extend_from_slice(&z);
    }
    let mut b = cat(&[&data(5), &data(6), &data(7), &zeros(3 * MIB), &data(8)]);
    for k in 0..10 {
        b.extend_from_slice(&z);
        b.extend_from_slice(&data(20 + k));
    }
    b.extend_from_slice(&[9u8; 100]);
    vec![
        ("a", cat(&[&z, &data(1), &data(2), &z, &data(3), &zeros(MIB), &data(4), &z, &zeros(100)])),
        ("b", b),
        ("c", cat(&[&text(300_000), &zeros(3 * B), &text(5000), &zeros(MIB), &text(200_000), &zeros(40 * B), b"end"])),
        ("many", many),
        ("nearly", cat(&[&zeros(B - 1), b"x", &zeros(2000), b"y", &zeros(B - 2001)])),
        ("partial", cat(&[&z, &data(9)[..904]])),
        ("small-zeros", zeros(100)),
        ("zeros", zeros(2 * MIB)),
    ]
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"))
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `(start, size)` in bytes of partition `name`, from `mkdisk plan --json`.
fn partition(spec: &Path, name: &str) -> (u64, u64) {
    let o = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert_ok("mkdisk plan", &o);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = plan["disks"][0]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
    (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
}

/// `len` bytes at `start` of `src` as a file of their own.
fn extract(src: &Path, start: u64, len: u64, dest: &Path) {
    let f = fs::File::open(src).unwrap();
    let out = fs::File::create(dest).unwrap();
    let mut buf = vec![0u8; MIB];
    let mut at = 0;
    while at < len {
        let n = usize::try_from((len - at).min(MIB as u64)).unwrap();
        f.read_exact_at(&mut buf[..n], start + at).unwrap();
        out.write_all_at(&buf[..n], at).unwrap();
        at += n as u64;
    }
}

/// Physical `(offset, length)` of every DATA chunk stripe of the btrfs in `part`, from its
/// chunk tree as `btrfs inspect-internal dump-tree` prints it.
fn data_stripes(part: &Path) -> Vec<(u64, u64)> {
    let o = run("btrfs", &["inspect-internal", "dump-tree", "-t", "chunk", part.to_str().unwrap()]);
    assert_ok("btrfs inspect-internal dump-tree -t chunk", &o);
    let mut out = Vec::new();
    let mut chunk: Option<(u64, bool)> = None;
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() == Some(&"length") && w.len() >= 8 && w[6] == "type" {
            chunk = Some((w[1].parse().unwrap(), w[7].starts_with("DATA")));
        } else if w.first() == Some(&"stripe") && w.len() >= 6 && w[4] == "offset" {
            if let Some((len, true)) = chunk {
                out.push((w[5].parse().unwrap(), len));
            }
        }
    }
    assert!(!out.is_empty(), "no DATA chunk in {}", part.display());
    out.sort_unstable();
    out
}

#[test]
fn zero_blocks_survive_dd_conv_sparse_onto_a_dirty_disk() {
    for t in ["dd", "e2fsck", "debugfs", "btrfs"] {
        if Command::new(t).arg("--help").output().is_err() {
            skip_or_fail("sparse_copy (dd conv=sparse onto a dirty disk)", &format!("{t} is not installed"));
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = dir.join("spec.json");
    fs::write(&spec, SPEC).unwrap();
    let root = dir.join("root");
    let files = files();
    for sub in ["", "srv", "zst"] {
        fs::create_dir_all(root.join(sub)).unwrap();
        for (name, bytes) in &files {
            fs::write(root.join(sub).join(name), bytes).unwrap();
        }
    }
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let o = mkdisk(&[&build_args(&spec, &out)[..], &["--root", root.to_str().unwrap()]].concat());
    assert_ok("mkdisk build", &o);
    let image = out.join("main.raw");
    let image_len = fs::metadata(&image).unwrap().len();

    // A disk with old data, and the image written onto it as `dd conv=sparse` writes it.
    let dirty = dir.join("dirty.raw");
    {
        let f = fs::File::create(&dirty).unwrap();
        let ff = vec![0xffu8; MIB];
        let mut at = 0;
        while at < image_len {
            let n = usize::try_from((image_len - at).min(MIB as u64)).unwrap();
            f.write_all_at(&ff[..n], at).unwrap();
            at += n as u64;
        }
    }
    let o = run(
        "dd",
        &[
            &format!("if={}", image.display()),
            &format!("of={}", dirty.display()),
            "bs=4096",
            "conv=sparse,notrunc",
            "status=none",
        ],
    );
    assert_ok("dd conv=sparse", &o);

    // ext4: clean, every file reads back exactly, zero blocks are not allocated.
    let (start, _) = partition(&spec, "root");
    let dev = format!("{}?offset={start}", dirty.display());
    assert_ok("e2fsck -fn", &run("e2fsck", &["-fn", &dev]));
    for (name, bytes) in &files {
        let got = dir.join(format!("ext4-{name}"));
        let o = run("debugfs", &["-R", &format!("dump /{name} {}", got.display()), &dev]);
        assert_ok("debugfs dump", &o);
        assert!(fs::read(&got).unwrap() == *bytes, "ext4 /{name} does not read back its bytes after dd conv=sparse");
    }
    let blockcount = |name: &str| -> u64 {
        let o = run("debugfs", &["-R", &format!("stat /{name}"), &dev]);
        assert_ok("debugfs stat", &o);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let at = s.find("Blockcount: ").unwrap_or_else(|| panic!("no Blockcount in {s}")) + "Blockcount: ".len();
        s[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    // 512-byte units: /a has 4 data blocks in 3 extents (in the inode), the all-zero files
    // none, /many 1500 data blocks and 6 extent-tree blocks (1500 extents: depth 2).
    assert_eq!(blockcount("a"), 4 * 8);
    assert_eq!(blockcount("zeros"), 0);
    assert_eq!(blockcount("small-zeros"), 0);
    assert_eq!(blockcount("partial"), 8);
    assert_eq!(blockcount("many"), (1500 + 6) * 8);

    // btrfs: its tree blocks (16 KiB, zero-filled free space) hold whole zero sectors too, which
    // no `conv=sparse` copy onto a dirty disk survives (mkfs.btrfs's neither): that is not file
    // data. So the metadata, system chunks and superblocks are copied in full and only the DATA
    // chunks are left as `dd conv=sparse` wrote them over the old bytes.
    for (name, sub) in [("plain", "srv"), ("zst", "zst")] {
        let (start, len) = partition(&spec, name);
        let clean = dir.join(format!("{name}.clean"));
        extract(&image, start, len, &clean);
        let part = dir.join(format!("{name}.dirty"));
        extract(&dirty, start, len, &part);
        {
            let src = fs::File::open(&clean).unwrap();
            let dst = fs::OpenOptions::new().write(true).open(&part).unwrap();
            let copy = |from: u64, to: u64| {
                let mut buf = vec![0u8; MIB];
                let mut at = from;
                while at < to {
                    let n = usize::try_from((to - at).min(MIB as u64)).unwrap();
                    src.read_exact_at(&mut buf[..n], at).unwrap();
                    dst.write_all_at(&buf[..n], at).unwrap();
                    at += n as u64;
                }
            };
            let mut pos = 0;
            for (off, l) in data_stripes(&clean) {
                copy(pos, off);
                pos = off + l;
            }
            copy(pos, len);
        }
        let p = part.to_str().unwrap();
        assert_ok(
            &format!("btrfs check --check-data-csum ({name})"),
            &run("btrfs", &["check", "--readonly", "--check-data-csum", p]),
        );
        let restored = dir.join(format!("{name}.restored"));
        fs::create_dir(&restored).unwrap();
        assert_ok(&format!("btrfs restore ({name})"), &run("btrfs", &["restore", p, restored.to_str().unwrap()]));
        for (file, bytes) in &files {
            let got = fs::read(restored.join(file)).unwrap_or_else(|e| panic!("btrfs {name} /{sub}/{file}: {e}"));
            assert!(got == *bytes, "btrfs ({name}) /{file} does not read back its bytes after dd conv=sparse");
        }
    }
}
