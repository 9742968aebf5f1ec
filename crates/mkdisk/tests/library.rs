//! mkdisk as a library: plan, report, write; typed errors a caller can match; warnings and
//! timings returned rather than printed.

use mkdisk::{BuildError, BuildOptions, FsError, NoProgress, Spec};

const SPEC: &str = r#"{"disk":{"main":{"imageSize":"64M","content":{"type":"gpt","partitions":{
  "ESP":{"size":"20M","type":"EF00","content":{"type":"filesystem","format":"vfat","mountpoint":"/boot"}},
  "swap":{"size":"4M","content":{"type":"swap"}},
  "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#;

fn tree(dir: &std::path::Path, big: usize) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "lib\n").unwrap();
    std::fs::write(root.join("big"), mkdisk_testkit::noise(big, 1)).unwrap();
    root
}

#[test]
fn plan_then_write_from_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path(), 1 << 20);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let spec = Spec::parse(SPEC).unwrap();
    let opts = BuildOptions::new(&out).with_root(&root).with_source_date_epoch(1_700_000_000);
    let plan = mkdisk::plan(&spec, &opts, &NoProgress).unwrap();
    let report = plan.report();
    assert_eq!(report.version, 1);
    let parts = &report.disks[0].partitions;
    assert_eq!(parts.iter().map(|p| p.filesystem.as_str()).collect::<Vec<_>>(), ["vfat", "swap", "ext4"]);
    assert_eq!(parts[2].mounts[0].mountpoint, "/");
    assert!(parts[2].content_size.is_none(), "measured only when asked");
    assert!(!plan.timings().is_empty());
    // Planning writes nothing into the output directory.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    // Planning is deterministic: the same report twice.
    let again = mkdisk::plan(&spec, &opts, &NoProgress).unwrap();
    assert_eq!(serde_json::to_string(&again.report()).unwrap(), serde_json::to_string(&report).unwrap());
    let written = plan.write(&NoProgress).unwrap();
    assert_eq!(written.images, vec![out.join("main.raw")]);
    assert_eq!(std::fs::metadata(&written.images[0]).unwrap().len(), 64 << 20);

    let mut measured = opts.clone();
    measured.measure = true;
    let m = mkdisk::plan(&spec, &measured, &NoProgress).unwrap().report();
    let c = m.disks[0].partitions[2].content_size.as_ref().unwrap();
    assert!(c.data_bytes >= 1 << 20 && c.inodes >= 4 && c.min_size_bytes >= c.data_bytes, "{c:?}");
}

#[test]
fn a_full_filesystem_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path(), 48 << 20);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let spec = Spec::parse(SPEC).unwrap();
    let opts = BuildOptions::new(&out).with_root(&root);
    let e = mkdisk::plan(&spec, &opts, &NoProgress).unwrap_err();
    match &e {
        BuildError::Partition { disk, partition, source: FsError::Ext4(mkdisk_ext4::Ext4Error::DoesNotFit { .. }) } => {
            assert_eq!((disk.as_str(), partition.as_str()), ("main", "root"));
        }
        other => panic!("expected ext4's DoesNotFit, got {other:?}"),
    }
    // The writer's error is the source, for callers that walk the chain.
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
