//! The command line's contract, defect by defect: every bad input gives exactly one line
//! naming what and where, exit code 1, and nothing in `--out`; a killed build leaves
//! nothing; what the user asked for is never changed without a word.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{mkdisk, repo};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn one_disk(partitions: &str) -> String {
    format!(r#"{{"disk":{{"main":{{"imageSize":"64M","content":{{"type":"gpt","partitions":{{{partitions}}}}}}}}}}}"#)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The files in `dir` (hidden ones included), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `o` failed with exit code 1 and exactly the one line `line` on stderr.
fn assert_fails_with(o: &Output, line: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit code of {err:?}");
    assert_eq!(err, format!("{line}\n"), "stderr");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
}

/// `mkdisk build SPEC --out OUT ARGS` and `mkdisk plan SPEC` both fail with `line` (with
/// `plan` the layout is the only input, so only layout errors are checked there), and
/// `--out` is left empty.
fn build_and_plan_fail(spec: &Path, out: &Path, args: &[&str], line: &str) {
    std::fs::create_dir_all(out).unwrap();
    let o = mkdisk(&[&["build", s(spec), "--out", s(out)], args].concat());
    assert_fails_with(&o, line);
    assert_eq!(listing(out), Vec::<String>::new(), "left in --out");
    if args.is_empty() {
        assert_fails_with(&mkdisk(&["plan", s(spec)]), line);
        assert_fails_with(&mkdisk(&["plan", s(spec), "--json"]), line);
    }
}

#[test]
fn two_disks_writing_one_image_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let gpt = r#"{"imageSize":"8M","content":{"type":"gpt"}}"#;
    let same_image = write(
        t.path(),
        "a.json",
        &format!(
            r#"{{"disk":{{"a":{{"imageName":"main","imageSize":"8M","content":{{"type":"gpt"}}}},"main":{gpt}}}}}"#
        ),
    );
    let line = format!(
        "mkdisk: error: {}: disk.main.imageName: disks \"a\" and \"main\" would both write main.raw",
        s(&same_image)
    );
    build_and_plan_fail(&same_image, &t.path().join("out"), &[], &line);
    // The same name after defaults: disk names with `/` become `_`.
    let same_name = write(t.path(), "b.json", &format!(r#"{{"disk":{{"x/y":{gpt},"x_y":{gpt}}}}}"#));
    let line =
        format!("mkdisk: error: {}: disk.x_y.name: disks \"x/y\" and \"x_y\" are both named \"x_y\"", s(&same_name));
    build_and_plan_fail(&same_name, &t.path().join("out"), &[], &line);
}

#[test]
fn duplicate_partition_labels_and_names_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let labels = write(t.path(), "l.json", &one_disk(r#""p":{"label":"L","size":"1M"},"q":{"label":"L","size":"1M"}"#));
    let line = format!(
        "mkdisk: error: {}: disk.main.content.partitions.q.label: partitions \"p\" and \"q\" both have the label \"L\"",
        s(&labels)
    );
    build_and_plan_fail(&labels, &t.path().join("out"), &[], &line);
    let names = write(
        t.path(),
        "n.json",
        &one_disk(r#""p":{"name":"N","label":"a","size":"1M"},"q":{"name":"N","label":"b","size":"1M"}"#),
    );
    let line = format!(
        "mkdisk: error: {}: disk.main.content.partitions.q.name: partitions \"p\" and \"q\" are both named \"N\"",
        s(&names)
    );
    build_and_plan_fail(&names, &t.path().join("out"), &[], &line);
}

#[test]
fn unknown_keys_are_refused_with_the_closest_known_one() {
    let t = tempfile::tempdir().unwrap();
    let esp =
        r#""ESP":{"size":"32M","type":"EF00","content":{"type":"filesystem","format":"vfat","mountPoint":"/boot"}}"#;
    let spec = write(t.path(), "mp.json", &one_disk(esp));
    let line = format!(
        "mkdisk: error: {}: disk.main.content.partitions.ESP.content.mountPoint: unknown attribute (did you mean \"mountpoint\"?)",
        s(&spec)
    );
    build_and_plan_fail(&spec, &t.path().join("out"), &[], &line);
    let spec = write(t.path(), "is.toml", "[disk.main]\nimagesize = \"1G\"\ncontent = { type = \"gpt\" }\n");
    let line =
        format!("mkdisk: error: {}: disk.main.imagesize: unknown attribute (did you mean \"imageSize\"?)", s(&spec));
    build_and_plan_fail(&spec, &t.path().join("out"), &[], &line);
    let spec = write(t.path(), "far.json", &one_disk(r#""p":{"size":"1M","zzzz":1}"#));
    let line = format!(
        "mkdisk: error: {}: disk.main.content.partitions.p.zzzz: unknown attribute (expected one of alignment, \
         attributes, content, device, end, hybrid, label, name, priority, size, start, type, uuid)",
        s(&spec)
    );
    build_and_plan_fail(&spec, &t.path().join("out"), &[], &line);
}

#[test]
fn every_key_of_the_shared_disko_exports_is_known() {
    // Real exports carry hooks, `device`, `destroy`, `discardPolicy`, ...: all accepted.
    for f in ["seed-impermanence", "seed-regular", "btrfs-subvolumes", "ext4-swap"] {
        let p = repo().join(format!("../shared/disko/{f}.json"));
        let o = mkdisk(&["plan", s(&p)]);
        assert!(o.status.success(), "{f}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn plan_refuses_what_build_refuses() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#""r":{"size":"100%","content":{"type":"filesystem","format":"xfs","mountpoint":"/"}}"#,
            "disk main, partition r: format \"xfs\" is not implemented yet",
        ),
        (
            r#""r":{"size":"100%","content":{"type":"filesystem","format":"vfat","extraArgs":["-F","12"]}}"#,
            "disk main, partition r: -F 12: mkdisk writes FAT16 or FAT32",
        ),
        (
            r#""r":{"size":"100%","content":{"type":"filesystem","format":"ext4","extraArgs":["-O","^has_journal"]}}"#,
            "disk main, partition r: ",
        ),
        (
            r#""r":{"size":"8M","content":{"type":"filesystem","format":"vfat","extraArgs":["-F","32"]}}"#,
            "disk main, partition r: ",
        ),
    ];
    for (i, (part, needle)) in cases.iter().enumerate() {
        let spec = write(t.path(), &format!("c{i}.json"), &one_disk(part));
        for args in [vec!["plan", s(&spec)], vec!["plan", s(&spec), "--json"]] {
            let o = mkdisk(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{part}: {err}");
            assert!(err.starts_with(&format!("mkdisk: error: {}: {needle}", s(&spec))), "{part}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(o.stdout.is_empty());
        }
    }
}

#[test]
fn messages_name_the_file_and_say_each_cause_once() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let empty = write(t.path(), "empty.json", "  \n");
    let line = format!(
        "mkdisk: error: {}: the file is empty (expected the JSON of disko.devices, or a JSON or TOML layout)",
        s(&empty)
    );
    build_and_plan_fail(&empty, &out, &[], &line);
    // A JSON array, with or without a byte order mark, is JSON, not a TOML syntax error.
    for (name, text) in [("array.json", "[1, 2]"), ("bom.json", "\u{feff}[1]")] {
        let p = write(t.path(), name, text);
        let line = format!("mkdisk: error: {}: (top level): expected an attribute set, found a list", s(&p));
        build_and_plan_fail(&p, &out, &[], &line);
    }
    let bom = write(t.path(), "bom-ok.json", &format!("\u{feff}{}", one_disk("")));
    assert!(mkdisk(&["plan", s(&bom)]).status.success());
    let zero = write(t.path(), "zero.toml", "[disk.main]\nimageSize = \"0\"\ncontent = { type = \"gpt\" }\n");
    let line = format!(
        "mkdisk: error: {}: disk.main.imageSize: \"0\" is an empty image (the size must be greater than zero)",
        s(&zero)
    );
    build_and_plan_fail(&zero, &out, &[], &line);
    let fs =
        |m: &str| format!(r#"{{"size":"8M","content":{{"type":"filesystem","format":"ext4","mountpoint":"{m}"}}}}"#);
    let twice = write(t.path(), "twice.json", &one_disk(&format!(r#""a":{},"b":{}"#, fs("/"), fs("//"))));
    let line = format!(
        "mkdisk: error: {}: disk.main.content.partitions.b.content.mountpoint: \"//\" is also the mount point of \
         disk.main.content.partitions.a.content",
        s(&twice)
    );
    build_and_plan_fail(&twice, &out, &[], &line);
    // An OS error is printed once, after what was being done.
    assert_fails_with(
        &mkdisk(&["plan", s(t.path())]),
        &format!("mkdisk: error: reading {}: Is a directory (os error 21)", s(t.path())),
    );
    let ok = repo().join("testdata/specs/gpt-swap.json");
    let missing = t.path().join("no\nsuch\x1b[31mroot");
    let o = mkdisk(&["build", s(&ok), "--out", s(&out), "--root", s(&missing)]);
    let line = format!(
        "mkdisk: error: {}: --root {}/no\\nsuch\\u{{1b}}[31mroot: No such file or directory (os error 2)",
        s(&ok),
        s(t.path())
    );
    assert_fails_with(&o, &line);
}

#[test]
fn large_ext4_caps_the_default_inode_count() {
    // 64 TiB at the default ratio would want more than 2^32 inodes; like mke2fs, the default
    // gives way to the 32-bit limit instead of failing with a contradictory message.
    let t = tempfile::tempdir().unwrap();
    let spec = write(
        t.path(),
        "big.toml",
        "[disk.main]\nimageSize = \"64T\"\n[disk.main.content]\ntype = \"gpt\"\n\
         [disk.main.content.partitions.root]\nsize = \"100%\"\ncontent = { type = \"filesystem\", format = \"ext4\" }\n",
    );
    let o = mkdisk(&["plan", s(&spec)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The planner itself (what `build` runs before writing a byte).
    let tree = mkdisk_tree::Tree::new(mkdisk_tree::Meta::new(0o755));
    let layout = mkdisk_ext4::plan(&tree, &mkdisk_ext4::Ext4Options::new(64 << 40, uuid::Uuid::nil()));
    assert!(layout.is_ok(), "{:?}", layout.err());
}

#[test]
fn usage_errors_are_one_line_with_exit_code_1() {
    for args in [&["build"][..], &["bogus"], &["plan", "x", "--bogus"]] {
        let o = mkdisk(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mkdisk: error: ") && err.contains("(usage: mkdisk"), "{err}");
    }
    let help = mkdisk(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}

#[test]
fn plan_into_a_closed_pipe_is_quiet() {
    // `mkdisk plan ... | head -0`: the reader is gone before the first write.
    let spec = repo().join("testdata/example.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mkdisk"))
        .args(["plan", s(&spec), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.is_empty(), "stderr: {err}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn root_may_be_a_symlink_to_a_directory() {
    // `--root ./result` (a Nix build's output link) is followed; links inside stay links.
    let t = tempfile::tempdir().unwrap();
    let link = t.path().join("result");
    std::os::unix::fs::symlink(repo().join("testdata/root"), &link).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let spec = repo().join("testdata/example.toml");
    let direct = repo().join("testdata/root");
    for (root, out) in [(&link, &a), (&direct, &b)] {
        let o = mkdisk(&["build", s(&spec), "--out", s(out), "--root", s(root), "--quiet"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(a.join("main.raw")).unwrap(), std::fs::read(b.join("main.raw")).unwrap());
}

/// A layout of two disks; `second` names the second disk's image.
fn two_disks(dir: &Path, second: &str) -> PathBuf {
    let disk = |name: &str| {
        format!(
            r#""{name}":{{"imageName":"{name}","imageSize":"64M","content":{{"type":"gpt","partitions":{{
            "root":{{"size":"100%","content":{{"type":"filesystem","format":"ext4","mountpoint":"/{name}"}}}}}}}}}}"#
        )
    };
    write(dir, "two.json", &format!(r#"{{"disk":{{{},{}}}}}"#, disk("first"), disk(second)))
}

#[test]
fn a_failed_rename_of_the_second_disk_leaves_neither() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    // `second.raw` is a non-empty directory: renaming the finished image onto it fails.
    std::fs::create_dir_all(out.join("second.raw/keep")).unwrap();
    let spec = two_disks(t.path(), "second");
    let o = mkdisk(&["build", s(&spec), "--out", s(&out), "--quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot rename finished image to") && err.contains("second.raw"), "{err}");
    assert_eq!(listing(&out), ["second.raw"], "only what was there before");
    assert_eq!(listing(&out.join("second.raw")), ["keep"]);
}

/// Start a build whose file data takes a while to write, wait until `files` of its outputs
/// exist (open files in `--out`: the raw image, then the converted one), and send it
/// `signal`; `--out` must then be empty.
fn kill_during_write(signal: &str, extra: &[&str], files: usize) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // 96 files of 2 MiB of non-zero data, written with one thread.
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    for i in 0..96 {
        std::fs::write(root.join(format!("f{i}")), &data).unwrap();
    }
    let spec = write(
        t.path(),
        "l.json",
        r#"{"disk":{"main":{"imageSize":"512M","content":{"type":"gpt","partitions":{
          "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_mkdisk"))
        .args(["build", s(&spec), "--out", s(&out), "--root", s(&root), "--threads", "1", "--quiet"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let out_canon = std::fs::canonicalize(&out).unwrap();
    let started = std::time::Instant::now();
    loop {
        let writing = std::fs::read_dir(&fd_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.starts_with(&out_canon) && !l.ends_with("out")))
            .count();
        if writing >= files {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the build ended before it was killed");
        assert!(started.elapsed().as_secs() < 60, "no image file appeared in --out");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let k = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(k.success());
    let status = child.wait().unwrap();
    assert!(!status.success(), "{signal}: {status}");
    assert_eq!(listing(&out), Vec::<String>::new(), "left in --out after SIG{signal}");
}

#[test]
fn a_killed_build_leaves_nothing() {
    for signal in ["KILL", "TERM", "INT"] {
        kill_during_write(signal, &[], 1);
    }
    // While the raw image is being compressed into the output format.
    kill_during_write("KILL", &["--format", "raw.zst", "--bmap"], 2);
    // A qcow2 is written in place, then gets its tables (after the bmap).
    kill_during_write("TERM", &["--format", "qcow2"], 1);
    kill_during_write("TERM", &["--format", "qcow2", "--bmap"], 2);
}

#[test]
fn ext4_times_outside_its_range_are_clamped_with_a_warning() {
    // The source tree lives on tmpfs: ext4 or btrfs under the test would clamp `touch -d`
    // themselves, and nothing would be out of range by the time mkdisk reads it.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        common::skip_or_fail("ext4 time clamp", "no /dev/shm (tmpfs) for out-of-range mtimes");
        return;
    }
    let t = tempfile::tempdir_in(shm).unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (name, when) in
        [("old", "1901-01-01 00:00:00 UTC"), ("new", "2500-01-01 00:00:00 UTC"), ("ok", "1950-06-01 UTC")]
    {
        std::fs::write(root.join(name), name).unwrap();
        assert!(Command::new("touch").args(["-d", when]).arg(root.join(name)).status().unwrap().success());
    }
    let spec = write(
        t.path(),
        "e.json",
        &one_disk(r#""root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}"#),
    );
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let o = mkdisk(&["build", s(&spec), "--out", s(&out), "--root", s(&root)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let warning = |p: &str| {
        format!(
            "mkdisk: warning: disk main, partition root: {p}: modification time outside ext4's range (1901-12-13 to \
             2446-05-10), stored as the nearest end of it\n"
        )
    };
    assert_eq!(err, format!("{}{}mkdisk: wrote {}/main.raw\n", warning("/new"), warning("/old"), s(&out)));
}

#[test]
fn btrfs_compression_other_than_zstd_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let btrfs = |opts: &str| {
        one_disk(&format!(
            r#""root":{{"size":"100%","content":{{"type":"filesystem","format":"btrfs","mountpoint":"/","mountOptions":[{opts}]}}}}"#
        ))
    };
    for (i, opt) in ["compress=lzo", "compress=zlib:3", "compress-force=lz4", "compress=bogus"].iter().enumerate() {
        let spec = write(t.path(), &format!("c{i}.json"), &btrfs(&format!(r#""noatime,{opt}""#)));
        std::fs::create_dir_all(&out).unwrap();
        let o = mkdisk(&["build", s(&spec), "--out", s(&out)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{opt}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("mkdisk: error: {}: disk main, partition root: ", s(&spec))), "{err}");
        assert!(err.contains(opt), "{opt}: {err}");
        assert_eq!(listing(&out), Vec::<String>::new());
        assert_eq!(mkdisk(&["plan", s(&spec)]).stderr, o.stderr, "plan refuses it too");
    }
    let spec = write(t.path(), "plain.json", &btrfs(r#""compress=no""#));
    for flag in ["lzo", "zlib", "lz4"] {
        let o = mkdisk(&["build", s(&spec), "--out", s(&out), "--compress", flag]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "--compress {flag}: {err}");
        assert!(err.contains(flag) && err.lines().count() == 1, "{err}");
        assert_eq!(listing(&out), Vec::<String>::new());
    }
    let o = mkdisk(&["build", s(&spec), "--out", s(&out), "--quiet"]);
    assert!(o.status.success(), "compress=no: {}", String::from_utf8_lossy(&o.stderr));
}
