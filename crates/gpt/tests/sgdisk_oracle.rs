//! The real `sgdisk` as the oracle for the placement: layouts that exercise the alignment
//! sgdisk computes from the partitions already on the disk (GPT fdisk's `ComputeAlignment`),
//! run exactly as disko runs them (one `sgdisk` process per partition, in (priority, name)
//! order, `--align-end [--set-alignment=A] --new=N:START:END ...`), compared sector by sector
//! with [`mkdisk_gpt::place`].
//!
//! The truth sgdisk 1.0.9 produced for these layouts is checked in as
//! `tests/data/sgdisk_alignment.json`, so `place_matches_checked_in_sgdisk_truth` checks the
//! rule even where sgdisk is missing; `place_matches_real_sgdisk` regenerates the truth and
//! compares it with both `place` and the checked-in file. After changing the layouts, rewrite
//! the file with `MKDISK_BLESS_SGDISK=1 cargo test -p mkdisk-gpt --test sgdisk_oracle`.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use mkdisk_gpt::{place, DiskRequest, PartitionRequest};
use uuid::Uuid;

/// Linux filesystem (8300); the type plays no part in placement.
const LINUX_FS: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
const GIB: u64 = 1 << 30;
const TRUTH: &str = "tests/data/sgdisk_alignment.json";

/// One disko partition: the attribute name and the fields that decide its place.
struct Part {
    name: &'static str,
    priority: i64,
    alignment: u64,
    start: &'static str,
    end: &'static str,
}

/// One disko disk.
struct Layout {
    name: &'static str,
    disk_bytes: u64,
    parts: Vec<Part>,
}

fn p(name: &'static str, priority: i64, alignment: u64, start: &'static str, end: &'static str) -> Part {
    Part { name, priority, alignment, start, end }
}

/// The layouts: the shapes of the shared disko goldens (the rule must not move them), then
/// layouts where a partition with a small alignment is created before default-aligned ones.
fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            name: "golden-shape-boot-esp-root",
            disk_bytes: 2 * GIB,
            parts: vec![p("boot", 100, 0, "0", "+1M"), p("ESP", 1000, 0, "0", "+512M"), p("root", 9001, 0, "0", "-0")],
        },
        Layout {
            name: "golden-shape-esp-swap-root",
            disk_bytes: 3 * GIB,
            parts: vec![
                p("ESP", 1000, 0, "0", "+256M"),
                p("swap", 1000, 0, "0", "+512M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        Layout {
            name: "golden-shape-esp-luks",
            disk_bytes: 2 * GIB,
            parts: vec![p("ESP", 1000, 0, "0", "+512M"), p("luks", 9001, 0, "0", "-0")],
        },
        // alignment = 8 first: everything after it follows 8-sector boundaries.
        Layout {
            name: "align8-then-default-then-tail",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("small", 100, 8, "0", "+1M"),
                p("data", 1000, 0, "0", "+100M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // disko's default alignment 1 for a start in sectors: the classic 34s BIOS boot
        // partition lowers the computed alignment to 2.
        Layout {
            name: "sector-start-34-align1",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("bios", 100, 1, "34s", "+2014s"),
                p("ESP", 1000, 0, "0", "+512M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // An odd start lowers it to 1: the next partition starts right after, the tail ends
        // on the last usable sector.
        Layout {
            name: "odd-start-align1",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("odd", 100, 1, "2049s", "+1000s"),
                p("data", 1000, 0, "0", "+1M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // Several small alignments in a row; the computed one is the smallest power of two
        // that all their starts share.
        Layout {
            name: "small-alignments-in-a-row",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("a8", 100, 8, "0", "+1001s"),
                p("b4", 200, 4, "0", "+1M"),
                p("c16", 300, 16, "0", "+1M"),
                p("data", 1000, 0, "0", "+10M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // Mixed priorities: partitions created before the small-alignment one keep 2048,
        // those after follow it; equal priorities go by name bytes ("Aa" < "data" < "zz").
        Layout {
            name: "mixed-priorities",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("zz", 3000, 0, "0", "+1M"),
                p("root", 9001, 0, "0", "-100M"),
                p("ESP", 1000, 0, "0", "+512M"),
                p("small", 2000, 8, "1052680", "+1M"),
                p("data", 3000, 0, "0", "+64M"),
                p("boot", 100, 0, "0", "+1M"),
                p("Aa", 3000, 0, "0", "+1001s"),
                p("zzz-tail", 9001, 0, "0", "-0"),
            ],
        },
        // --set-alignment larger than the computed value replaces it for that run only.
        Layout {
            name: "set-alignment-above-computed",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("a8", 100, 8, "0", "+1M"),
                p("b4096", 1000, 4096, "0", "+1001s"),
                p("c", 1500, 0, "0", "+1M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // Absolute and relative starts are rounded to the computed alignment, not to 2048.
        Layout {
            name: "absolute-and-relative-starts",
            disk_bytes: 2 * GIB,
            parts: vec![
                p("a8", 100, 8, "0", "+1M"),
                p("abs", 1000, 0, "3001", "+1M"),
                p("rel", 1100, 0, "+100", "+1M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
        // On a disk of at least 585,937,500 sectors the computed alignment is never below 8.
        Layout {
            name: "big-disk-advanced-format-floor",
            disk_bytes: 300 * GIB,
            parts: vec![
                p("odd", 100, 1, "35s", "+1000s"),
                p("data", 1000, 0, "0", "+1M"),
                p("root", 9001, 0, "0", "-0"),
            ],
        },
    ]
}

/// The layout's partitions in disko's creation order: priority, then attribute name bytes.
fn creation_order(l: &Layout) -> Vec<&Part> {
    let mut parts: Vec<&Part> = l.parts.iter().collect();
    parts.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.as_bytes().cmp(b.name.as_bytes())));
    parts
}

fn label(part: &Part) -> String {
    format!("disk-t-{}", part.name)
}

fn request(l: &Layout) -> DiskRequest {
    DiskRequest {
        name: l.name.into(),
        size_bytes: l.disk_bytes,
        partitions: l
            .parts
            .iter()
            .map(|part| PartitionRequest {
                name: part.name.into(),
                label: label(part),
                type_guid: LINUX_FS,
                start: part.start.into(),
                end: part.end.into(),
                alignment: part.alignment,
                priority: part.priority,
                attributes: vec![],
                uuid: None,
            })
            .collect(),
    }
}

/// (first, last) of every partition in creation order, as `place` puts them.
fn placed(l: &Layout) -> Vec<(u64, u64)> {
    let layout = place(&request(l), &Uuid::nil()).unwrap_or_else(|e| panic!("{}: {e}", l.name));
    let names: Vec<&str> = layout.partitions.iter().map(|q| q.name.as_str()).collect();
    let expected: Vec<&str> = creation_order(l).iter().map(|q| q.name).collect();
    assert_eq!(names, expected, "{}: partition numbers are not in creation order", l.name);
    layout.partitions.iter().map(|q| (q.first_lba, q.last_lba)).collect()
}

/// The checked-in truth file as text: the layouts with the sectors `results` gives them
/// (creation order). Written by hand so the file is stable and needs no JSON crate.
fn render(layouts: &[Layout], results: &[Vec<(u64, u64)>]) -> String {
    let mut s = String::new();
    s.push_str("{\n");
    s.push_str(
        "  \"generator\": \"sgdisk 1.0.9, one run per partition as disko does (crates/gpt/tests/sgdisk_oracle.rs)\",\n",
    );
    s.push_str("  \"sector_size\": 512,\n");
    s.push_str("  \"layouts\": [\n");
    for (li, (l, res)) in layouts.iter().zip(results).enumerate() {
        s.push_str("    {\n");
        s.push_str(&format!("      \"name\": \"{}\",\n", json_safe(l.name)));
        s.push_str(&format!("      \"disk_bytes\": {},\n", l.disk_bytes));
        s.push_str("      \"partitions\": [\n");
        let order = creation_order(l);
        for (i, (part, &(first, last))) in order.iter().zip(res).enumerate() {
            s.push_str(&format!(
                "        {{\"number\": {}, \"name\": \"{}\", \"priority\": {}, \"alignment\": {}, \"start\": \"{}\", \"end\": \"{}\", \"first_lba\": {first}, \"last_lba\": {last}}}{}\n",
                i + 1,
                json_safe(part.name),
                part.priority,
                part.alignment,
                json_safe(part.start),
                json_safe(part.end),
                if i + 1 < order.len() { "," } else { "" },
            ));
        }
        s.push_str("      ]\n");
        s.push_str(if li + 1 < layouts.len() { "    },\n" } else { "    }\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

/// The strings here need no JSON escaping; keep it that way.
fn json_safe(s: &str) -> &str {
    assert!(s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'), "{s:?} needs JSON escaping");
    s
}

fn truth_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(TRUTH)
}

/// Panic at the first line where `got` differs from the checked-in file.
fn assert_same_text(what: &str, expected: &str, got: &str) {
    if expected == got {
        return;
    }
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let line = e.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(e.len().min(g.len()));
    panic!(
        "{what} differs from {TRUTH} at line {}:\n  file: {}\n  got:  {}\n(regenerate the file with MKDISK_BLESS_SGDISK=1 where sgdisk 1.0.9 is installed)",
        line + 1,
        e.get(line).unwrap_or(&"<end of file>"),
        g.get(line).unwrap_or(&"<end of output>"),
    );
}

#[test]
fn place_matches_checked_in_sgdisk_truth() {
    let layouts = layouts();
    let results: Vec<_> = layouts.iter().map(placed).collect();
    let file = std::fs::read_to_string(truth_path()).unwrap_or_else(|e| panic!("{TRUTH}: {e}"));
    assert_same_text("place", &file, &render(&layouts, &results));
}

/// Run `sgdisk` with `args`; `Ok(None)` when it is not installed.
fn sgdisk(args: &[String]) -> std::io::Result<Option<std::process::Output>> {
    match Command::new("sgdisk").args(args).output() {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create the layout on a sparse image the way disko does and read back (first, last) of
/// every partition, in partition-number order.
fn sgdisk_layout(l: &Layout, dir: &Path) -> Vec<(u64, u64)> {
    let img = dir.join(format!("{}.img", l.name));
    File::create(&img).and_then(|f| f.set_len(l.disk_bytes)).unwrap();
    let path = img.to_str().unwrap().to_string();
    let run = |args: Vec<String>| {
        let o = sgdisk(&args).unwrap().expect("sgdisk vanished");
        assert!(
            o.status.success(),
            "{}: sgdisk {} failed:\n{}{}",
            l.name,
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // A blank image: blkid finds nothing, so disko starts with a fresh table.
    run(vec!["--clear".into(), path.clone()]);
    let order = creation_order(l);
    for (i, part) in order.iter().enumerate() {
        let n = i + 1;
        let mut args = vec!["--align-end".to_string()];
        if part.alignment != 0 {
            args.push(format!("--set-alignment={}", part.alignment));
        }
        args.extend([
            format!("--new={n}:{}:{}", part.start, part.end),
            format!("--partition-guid={n}:R"),
            format!("--change-name={n}:{}", label(part)),
            format!("--typecode={n}:8300"),
            format!("--attributes={n}:=:0"),
            path.clone(),
        ]);
        run(args);
    }
    // The primary entry array: LBA 2, 128-byte entries, partition N in slot N - 1.
    let mut array = vec![0u8; order.len() * 128];
    let mut f = File::open(&img).unwrap();
    f.seek(SeekFrom::Start(2 * 512)).unwrap();
    f.read_exact(&mut array).unwrap();
    drop(f);
    std::fs::remove_file(&img).unwrap();
    array
        .chunks_exact(128)
        .map(|e| {
            let le = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
            (le(32), le(40))
        })
        .collect()
}

#[test]
fn place_matches_real_sgdisk() {
    match sgdisk(&["--version".to_string()]) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let msg = "sgdisk not on PATH: the placement was not compared with the real sgdisk";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg} (CI=true)");
            eprintln!("*** SKIPPED (not a pass): {msg}");
            return;
        }
        Err(e) => panic!("sgdisk not runnable: {e}"),
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sgdisk-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layouts = layouts();
    // Every sgdisk run sleeps a second after writing (GPT fdisk's DiskSync), so the layouts
    // run side by side; the partitions of one layout stay strictly one after another.
    let truth: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = layouts.iter().map(|l| s.spawn(|| sgdisk_layout(l, &dir))).collect();
        runs.into_iter().map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let _ = std::fs::remove_dir(&dir);
    let text = render(&layouts, &truth);
    if std::env::var_os("MKDISK_BLESS_SGDISK").is_some() {
        std::fs::write(truth_path(), &text).unwrap();
    }
    let mut wrong = Vec::new();
    for (l, want) in layouts.iter().zip(&truth) {
        let got = placed(l);
        for ((part, w), g) in creation_order(l).iter().zip(want).zip(&got) {
            if w != g {
                wrong.push(format!("{} / {}: sgdisk {w:?}, place {g:?}", l.name, part.name));
            }
        }
    }
    assert!(wrong.is_empty(), "place differs from sgdisk:\n{}", wrong.join("\n"));
    let file = std::fs::read_to_string(truth_path()).unwrap_or_else(|e| panic!("{TRUTH}: {e}"));
    assert_same_text("sgdisk", &file, &text);
}
