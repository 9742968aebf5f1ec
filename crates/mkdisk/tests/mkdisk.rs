//! End-to-end tests of the `mkdisk` binary against the real tools: the disko goldens
//! (`sfdisk --json` of disko's own sgdisk calls), `sgdisk -v`, `sfdisk --json`, `blkid -p`,
//! reproducibility, and the bad-input contract (one line, non-zero exit, no file left).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mkdisk::Spec;

mod common;
use common::{build_args, mkdisk, repo, sha256_file};

fn shared() -> PathBuf {
    repo().join("../shared")
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    out
}

fn build(spec: &Path, out: &Path, extra: &[&str]) -> Output {
    mkdisk(&[&build_args(spec, out)[..], extra].concat())
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The spec with the LUKS content stripped, so its placement can still be compared.
fn strip_luks(v: &mut serde_json::Value) {
    if let Some(parts) = v.pointer_mut("/disk/main/content/partitions") {
        if let Some(l) = parts.get_mut("luks") {
            l["content"] = serde_json::Value::Null;
        }
    }
}

#[test]
fn every_shared_spec_places_like_its_golden() {
    let mut checked = 0;
    for entry in std::fs::read_dir(shared().join("disko")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if stem == "luks" {
            strip_luks(&mut v);
        }
        let spec = Spec::from_value(&v).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let plans = mkdisk::place_all(&spec, &mkdisk_tree::ids::DEFAULT_SEED).unwrap();
        for dp in plans {
            let golden = shared().join("disko/golden").join(&stem).join(format!("{}.sfdisk.json", dp.disk.name));
            let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
            let gt = &g["partitiontable"];
            assert_eq!(gt["firstlba"].as_u64().unwrap(), dp.layout.first_usable_lba, "{stem}");
            assert_eq!(gt["lastlba"].as_u64().unwrap(), dp.layout.last_usable_lba, "{stem}");
            let gparts = gt["partitions"].as_array().unwrap();
            assert_eq!(gparts.len(), dp.layout.partitions.len(), "{stem}");
            for (gp, p) in gparts.iter().zip(&dp.layout.partitions) {
                assert_eq!(gp["start"].as_u64().unwrap(), p.first_lba, "{stem} {}", p.label);
                assert_eq!(gp["size"].as_u64().unwrap(), p.sectors(), "{stem} {}", p.label);
                assert_eq!(gp["type"].as_str().unwrap().to_lowercase(), p.type_guid.to_string(), "{stem} {}", p.label);
                assert_eq!(gp["name"].as_str().unwrap(), p.label, "{stem}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} goldens checked");
}

#[test]
fn luks_is_rejected_with_its_json_path() {
    let o = mkdisk(&["plan", shared().join("disko/luks.json").to_str().unwrap()]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("disk.main.content.partitions.luks.content") && e.contains("\"luks\""), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

fn sfdisk_json(img: &Path) -> serde_json::Value {
    let o = tool("sfdisk", &["--json", img.to_str().unwrap()]);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn built_image_passes_sgdisk_and_sfdisk_reads_our_guids() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo().join("testdata/specs/gpt-swap.json");
    assert_ok(&build(&spec, dir.path(), &[]));
    let img = dir.path().join("main.raw");
    let v = tool("sgdisk", &["-v", img.to_str().unwrap()]);
    let vs = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success() && vs.contains("No problems found"), "{vs}");
    // Our plan, as JSON.
    let p = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert_ok(&p);
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let pparts = plan["disks"][0]["partitions"].as_array().unwrap();
    let s = sfdisk_json(&img);
    let t = &s["partitiontable"];
    assert_eq!(t["id"].as_str().unwrap().to_lowercase(), plan["disks"][0]["guid"].as_str().unwrap());
    let sparts = t["partitions"].as_array().unwrap();
    assert_eq!(sparts.len(), pparts.len());
    for (sp, pp) in sparts.iter().zip(pparts) {
        assert_eq!(sp["uuid"].as_str().unwrap().to_lowercase(), pp["guid"].as_str().unwrap());
        assert_eq!(sp["name"], pp["label"]);
        assert_eq!(sp["start"], pp["start"]);
        assert_eq!(sp["size"], pp["size"]);
    }
    // Attribute bits 0 (RequiredPartition) and 60 (GUID:60).
    let attrs = sparts[2]["attrs"].as_str().unwrap_or("");
    assert!(attrs.contains("RequiredPartition") && attrs.contains("60"), "{attrs}");
    // Protective MBR: real end CHS like sgdisk, size N-1.
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
    assert_eq!(bytes[450], 0xEE);
}

#[test]
fn swap_signature_is_read_by_blkid() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo().join("testdata/specs/gpt-swap.json");
    assert_ok(&build(&spec, dir.path(), &[]));
    let img = dir.path().join("main.raw");
    let p = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let swap =
        plan["disks"][0]["partitions"].as_array().unwrap().iter().find(|p| p["filesystem"] == "swap").unwrap().clone();
    let guid = uuid::Uuid::parse_str(swap["guid"].as_str().unwrap()).unwrap();
    let fs_uuid = mkdisk_tree::ids::fs_uuid(&guid).to_string();
    let offset = swap["start"].as_u64().unwrap() * 512;
    let size = swap["size"].as_u64().unwrap() * 512;
    let o = tool(
        "blkid",
        &["-p", "-O", &offset.to_string(), "-S", &size.to_string(), "-o", "export", img.to_str().unwrap()],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("TYPE=swap"), "{out}");
    assert!(out.contains(&format!("UUID={fs_uuid}")), "{out}");
    assert!(out.contains("LABEL=myswap"), "{out}");
    // swaplabel reads it too (on a copy of just the partition).
    let part = dir.path().join("swap.img");
    let bytes = std::fs::read(&img).unwrap();
    let (s, e) = (usize::try_from(offset).unwrap(), usize::try_from(offset + size).unwrap());
    std::fs::write(&part, &bytes[s..e]).unwrap();
    let o = tool("swaplabel", &[part.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("myswap") && out.contains(&fs_uuid), "{out}");
}

#[test]
fn same_seed_same_bytes_other_seed_only_ids_differ() {
    let spec = repo().join("testdata/specs/gpt-swap.json");
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_ok(&build(&spec, a.path(), &["--threads", "1"]));
    assert_ok(&build(&spec, b.path(), &["--threads", "2"]));
    assert_ok(&build(&spec, c.path(), &["--seed", "another"]));
    let (ia, ib, ic) = (a.path().join("main.raw"), b.path().join("main.raw"), c.path().join("main.raw"));
    assert_eq!(sha256_file(&ia), sha256_file(&ib));
    assert_ne!(sha256_file(&ia), sha256_file(&ic));
    // Every differing byte is in a GUID field, a CRC over them, or the swap UUID.
    let (x, y) = (std::fs::read(&ia).unwrap(), std::fs::read(&ic).unwrap());
    let n = x.len();
    let p = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let swap_off = plan["disks"][0]["partitions"][1]["start"].as_u64().unwrap() as usize * 512;
    let in_gpt_header = |o: usize, base: usize| {
        (base + 16..base + 20).contains(&o)
            || (base + 56..base + 72).contains(&o)
            || (base + 88..base + 92).contains(&o)
    };
    let in_entries =
        |o: usize, base: usize| o >= base && o < base + 16384 && ((o - base) % 128 >= 16 && (o - base) % 128 < 32);
    let mut diffs = 0;
    for i in 0..n {
        if x[i] != y[i] {
            diffs += 1;
            let ok = in_gpt_header(i, 512)
                || in_gpt_header(i, n - 512)
                || in_entries(i, 1024)
                || in_entries(i, n - 33 * 512)
                || (swap_off + 1036..swap_off + 1052).contains(&i);
            assert!(ok, "byte {i} differs outside any id field");
        }
    }
    assert!(diffs > 16);
}

fn assert_clean_failure(o: &Output, needle: &str, out: &Path) {
    assert!(!o.status.success(), "unexpected success");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.trim().lines().count(), 1, "error is not one line: {e}");
    assert!(e.contains(needle), "error {e:?} does not mention {needle:?}");
    if out.is_dir() {
        let left: Vec<_> = std::fs::read_dir(out).unwrap().collect();
        assert!(left.is_empty(), "files left in --out: {left:?}");
    }
}

fn write_spec(dir: &Path, name: &str, json: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, json).unwrap();
    p
}

fn disk_with(partitions: &str) -> String {
    format!(r#"{{"disk":{{"main":{{"imageSize":"64M","content":{{"type":"gpt","partitions":{{{partitions}}}}}}}}}}}"#)
}

#[test]
fn bad_input_gives_one_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for t in ["luks", "lvm_pv", "mdraid", "zfs", "bcachefs"] {
        let spec = write_spec(
            tmp.path(),
            &format!("{t}.json"),
            &disk_with(&format!(r#""p":{{"size":"8M","content":{{"type":"{t}"}}}}"#)),
        );
        assert_clean_failure(
            &build(&spec, &out, &[]),
            &format!("disk.main.content.partitions.p.content: unsupported type \"{t}\""),
            &out,
        );
    }
    let legacy = write_spec(
        tmp.path(),
        "table.json",
        r#"{"disk":{"main":{"content":{"type":"table","format":"gpt","partitions":[]}}}}"#,
    );
    assert_clean_failure(&build(&legacy, &out, &[]), "disk.main.content: unsupported type \"table\"", &out);
    for group in ["mdadm", "zpool", "lvm_vg"] {
        let spec =
            write_spec(tmp.path(), &format!("{group}.json"), &format!(r#"{{"disk":{{}},"{group}":{{"x":{{}}}}}}"#));
        assert_clean_failure(&build(&spec, &out, &[]), &format!("{group}.x: unsupported type"), &out);
    }
    let bad_size = write_spec(tmp.path(), "size.json", &disk_with(r#""p":{"size":"12Q"}"#));
    assert_clean_failure(
        &build(&bad_size, &out, &[]),
        "disk.main.content.partitions.p.size: malformed size \"12Q\"",
        &out,
    );
    let too_big = write_spec(tmp.path(), "big.json", &disk_with(r#""a":{"size":"40M"},"b":{"size":"40M"}"#));
    assert_clean_failure(&build(&too_big, &out, &[]), "partition b does not fit", &out);
    let ok = repo().join("testdata/specs/gpt-swap.json");
    let missing = tmp.path().join("no-such-root");
    assert_clean_failure(&build(&ok, &out, &["--root", missing.to_str().unwrap()]), "no-such-root", &out);
    let file_out = tmp.path().join("a-file");
    std::fs::write(&file_out, b"x").unwrap();
    assert_clean_failure(&build(&ok, &file_out, &[]), "a-file", &out);
    let no_out = tmp.path().join("missing-dir");
    assert_clean_failure(&build(&ok, &no_out, &[]), "missing-dir", &out);
    assert!(!no_out.exists());
    // A failure in a writer after planning (a swap too small for mkswap) leaves no image.
    let tiny = write_spec(
        tmp.path(),
        "tiny.json",
        &disk_with(r#""s":{"size":"20K","alignment":1,"content":{"type":"swap"}}"#),
    );
    assert_clean_failure(&build(&tiny, &out, &[]), "partition s", &out);
}

#[test]
fn minimal_toml_form_gets_disko_defaults() {
    let spec = Spec::parse(&std::fs::read_to_string(repo().join("testdata/example.toml")).unwrap()).unwrap();
    let d = &spec.disks[0];
    let esp = d.partitions.iter().find(|p| p.name == "ESP").unwrap();
    assert_eq!(esp.label, "disk-main-ESP");
    assert_eq!(esp.priority, 1000);
    assert_eq!(esp.end, "+64M");
    let boot = d.partitions.iter().find(|p| p.name == "boot").unwrap();
    assert_eq!(boot.priority, 100);
    let swap = d.partitions.iter().find(|p| p.name == "swap").unwrap();
    assert_eq!(swap.type_code, "8200");
    let root = d.partitions.iter().find(|p| p.name == "root").unwrap();
    assert_eq!((root.priority, root.end.as_str(), root.type_code.as_str()), (9001, "-0", "8300"));
    assert_eq!(
        mkdisk::spec::default_label("my-very-long-disk-name-for-testing", "ESP"),
        "dc8a174a33432cd35e2b41f26e902a658bf8"
    );
}

#[test]
fn every_buildable_layout_passes_sgdisk_and_fsck() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, Option<PathBuf>, &str)> = vec![
        (repo().join("testdata/example.toml"), Some(repo().join("testdata/root")), "main.raw"),
        (repo().join("testdata/specs/esp-swap.json"), Some(repo().join("testdata/root")), "main.raw"),
        (shared().join("disko/ext4-swap.json"), None, "vdb.raw"),
        (shared().join("disko/seed-regular.json"), Some(repo().join("testdata/root")), "main.raw"),
        (shared().join("disko/seed-impermanence.json"), Some(repo().join("testdata/root")), "main.raw"),
        (shared().join("disko/btrfs-subvolumes.json"), Some(repo().join("testdata/root")), "main.raw"),
    ];
    for (i, (spec, root, name)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("case{i}"));
        std::fs::create_dir(&out).unwrap();
        let mut extra = vec![];
        if let Some(r) = root {
            extra = vec!["--root", r.to_str().unwrap()];
        }
        assert_ok(&build(spec, &out, &extra));
        let img = out.join(name);
        let v = tool("sgdisk", &["-v", img.to_str().unwrap()]);
        let vs = String::from_utf8_lossy(&v.stdout);
        assert!(v.status.success() && vs.contains("No problems found"), "{}: {vs}", spec.display());
        // Every filesystem partition passes its checker.
        let s = sfdisk_json(&img);
        let file = std::fs::File::open(&img).unwrap();
        for p in s["partitiontable"]["partitions"].as_array().unwrap() {
            let start = p["start"].as_u64().unwrap() * 512;
            let size = p["size"].as_u64().unwrap() * 512;
            let o = match p["type"].as_str().unwrap() {
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; usize::try_from(size).unwrap()];
                    file.read_exact_at(&mut buf, start).unwrap();
                    let part = out.join("esp.img");
                    std::fs::write(&part, &buf).unwrap();
                    tool("fsck.fat", &["-n", "-v", part.to_str().unwrap()])
                }
                // e2fsprogs' unix I/O manager takes `file?offset=BYTES`; btrfs-progs needs the
                // partition as a file of its own.
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => {
                    let mut magic = [0u8; 8];
                    use std::os::unix::fs::FileExt;
                    file.read_exact_at(&mut magic, start + 0x10040).unwrap();
                    if &magic == b"_BHRfS_M" {
                        let part = out.join("btrfs.img");
                        extract(&file, start, size, &part);
                        tool("btrfs", &["check", "--readonly", "--check-data-csum", part.to_str().unwrap()])
                    } else {
                        tool("e2fsck", &["-fn", &format!("{}?offset={start}", img.display())])
                    }
                }
                _ => continue,
            };
            assert!(o.status.success(), "{} of {}: {}", p["name"], spec.display(), String::from_utf8_lossy(&o.stdout));
        }
    }
}

/// Copy `size` bytes at `start` of `src` into a new sparse file (all-zero MiB chunks skipped).
fn extract(src: &std::fs::File, start: u64, size: u64, dest: &Path) {
    use std::os::unix::fs::FileExt;
    let out = std::fs::File::create(dest).unwrap();
    out.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = usize::try_from((size - at).min(1 << 20)).unwrap();
        src.read_exact_at(&mut buf[..n], start + at).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], at).unwrap();
        }
        at += n as u64;
    }
}

#[test]
fn example_image_is_reproducible_across_threads() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = repo().join("testdata/example.toml");
    let root = repo().join("testdata/root");
    assert_ok(&build(&spec, a.path(), &["--root", root.to_str().unwrap(), "--threads", "1"]));
    assert_ok(&build(&spec, b.path(), &["--root", root.to_str().unwrap(), "--threads", "2"]));
    assert_eq!(sha256_file(&a.path().join("main.raw")), sha256_file(&b.path().join("main.raw")));
}

#[test]
fn formats_not_written_yet_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let spec = write_spec(
        tmp.path(),
        "xfs.json",
        &disk_with(r#""r":{"size":"100%","content":{"type":"filesystem","format":"xfs","mountpoint":"/"}}"#),
    );
    assert_clean_failure(&build(&spec, &out, &[]), "format \"xfs\" is not implemented yet", &out);
}
