//! `mkdisk-bench`: mkdisk and its peers on the same trees, in the same run.
//!
//! For each case (a filesystem × a corpus) it builds the image with mkdisk (all cores and one
//! thread) and with every peer that is installed, `--rounds` times each, and prints a table:
//! median wall time, mkdisk's ratio to the peer, the output's allocated size (du) and peak RSS
//! (from GNU time). Timing is reported, never asserted: the machine is noisy.
//!
//! ```text
//! cargo build --release && target/release/mkdisk-bench [--short] [--rounds N] [--work DIR]
//! ```

#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

struct Args {
    short: bool,
    rounds: usize,
    work: PathBuf,
    mkdisk: PathBuf,
    shared: PathBuf,
    markdown: Option<PathBuf>,
    only: Option<String>,
    baseline: Option<PathBuf>,
    mkdisk_only: bool,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        short: false,
        rounds: 3,
        work: repo.join("target/bench"),
        mkdisk: exe.with_file_name("mkdisk"),
        shared: repo.join("../shared"),
        markdown: None,
        only: None,
        baseline: None,
        mkdisk_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = || it.next().with_context(|| format!("{x} needs a value"));
        match x.as_str() {
            "--short" => a.short = true,
            "--rounds" => a.rounds = val()?.parse()?,
            "--work" => a.work = PathBuf::from(val()?),
            "--mkdisk" => a.mkdisk = PathBuf::from(val()?),
            "--shared" => a.shared = PathBuf::from(val()?),
            "--markdown" => a.markdown = Some(PathBuf::from(val()?)),
            "--only" => a.only = Some(val()?),
            "--baseline" => a.baseline = Some(PathBuf::from(val()?)),
            "--mkdisk-only" => a.mkdisk_only = true,
            "-h" | "--help" => {
                println!("mkdisk-bench [--short] [--rounds N] [--work DIR] [--mkdisk PATH] [--shared DIR] [--markdown FILE] [--only CASE] [--baseline MKDISK] [--mkdisk-only]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.short {
        a.rounds = a.rounds.min(1);
    }
    Ok(a)
}

/// With `--baseline`: after each mkdisk run, the same run with the baseline binary (an older
/// build), labelled `baseline ...`, so the table's ratio column compares the two in one run.
fn add_baseline(a: &Args, case: &mut Case) {
    let Some(base) = &a.baseline else { return };
    let (ours, theirs) = (sh_quote(&a.mkdisk), sh_quote(base));
    let mut runs = Vec::new();
    for (label, script) in case.runs.drain(..) {
        let twin = label.starts_with("mkdisk").then(|| (format!("baseline {label}"), script.replace(&ours, &theirs)));
        runs.push((label, script));
        runs.extend(twin);
    }
    case.runs = runs;
}

/// With `--mkdisk-only`: only mkdisk's runs (and the baseline's), no peers or floors.
fn drop_peers(a: &Args, case: &mut Case) {
    if a.mkdisk_only {
        case.runs.retain(|(label, _)| label.starts_with("mkdisk") || label.starts_with("baseline "));
    }
}

/// One measured run: wall seconds, peak RSS in KiB, allocated output bytes.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    rss_kib: u64,
    alloc: u64,
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Run `script` under `sh -c` with GNU time; `out` is removed first and measured after.
fn measure(script: &str, out: &Path, env: &[(&str, &str)]) -> Result<Sample> {
    if out.is_dir() {
        std::fs::remove_dir_all(out)?;
    } else if out.exists() {
        std::fs::remove_file(out)?;
    }
    let tf = out.with_extension("time");
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "-o"])
        .arg(&tf)
        .args(["sh", "-c", script])
        .envs(env.iter().copied())
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    if !o.status.success() {
        bail!("{script}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let t = std::fs::read_to_string(&tf)?;
    let mut f = t.split_whitespace();
    let wall: f64 = f.next().context("time output")?.parse()?;
    let rss_kib: u64 = f.next().context("time output")?.parse()?;
    let alloc = if out.is_dir() {
        let o = Command::new("du").args(["-sB1"]).arg(out).output()?;
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("0").parse()?
    } else {
        allocated(out)
    };
    Ok(Sample { wall, rss_kib, alloc })
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    v[v.len() / 2]
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

fn du_apparent(dir: &Path) -> Result<u64> {
    let o = Command::new("du").args(["-sb"]).arg(dir).output()?;
    let s = String::from_utf8_lossy(&o.stdout);
    Ok(s.split_whitespace().next().unwrap_or("0").parse()?)
}

fn count_entries(dir: &Path) -> Result<u64> {
    let o = Command::new("find").arg(dir).output()?;
    Ok(u64::try_from(o.stdout.iter().filter(|&&b| b == b'\n').count())?)
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// A single-partition layout holding `format` at `/`, sized for `bytes` of content.
fn layout(format: &str, bytes: u64, mount_options: &str) -> String {
    let mib = ((bytes * 3 / 2) >> 20) + 256;
    format!(
        r#"{{"disk":{{"bench":{{"imageSize":"{}M","content":{{"type":"gpt","partitions":{{"fs":{{"size":"100%","content":{{"type":"filesystem","format":"{format}","mountpoint":"/","mountOptions":[{mount_options}]}}}}}}}}}}}}}}"#,
        mib + 2
    )
}

struct Case {
    name: String,
    corpus: PathBuf,
    bytes: u64,
    /// (label, shell script writing `$OUT`) — mkdisk variants first.
    runs: Vec<(String, String)>,
}

fn make_corpora(a: &Args) -> Result<Vec<(String, PathBuf)>> {
    let dir = a.work.join("corpus");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    let store = dir.join(if a.short { "store-short" } else { "store" });
    if !store.join("store-paths").exists() {
        let mib = if a.short { "64" } else { "1536" };
        let st = Command::new("python3")
            .arg(a.shared.join("tools/make-store-corpus.py"))
            .arg(&store)
            .args(["--max-mib", mib])
            .status()?;
        if !st.success() {
            bail!("make-store-corpus.py failed");
        }
    }
    out.push(("store".to_string(), store));
    let n = if a.short { "3000" } else { "30000" };
    let flat = dir.join(format!("flat-{n}"));
    if !flat.join("nix/store").exists() {
        let st = Command::new("python3").arg(a.shared.join("tools/make-flat-store.py")).arg(&flat).arg(n).status()?;
        if !st.success() {
            bail!("make-flat-store.py failed");
        }
    }
    out.push(("flat".to_string(), flat));
    // An ESP-shaped tree: a few large files and many small ones (~150 MiB, 3,000 files).
    let esp = dir.join(if a.short { "esp-short" } else { "esp" });
    if !esp.join("EFI").exists() {
        let (big, small) = if a.short { (4u64 << 20, 300) } else { (40u64 << 20, 3000) };
        std::fs::create_dir_all(esp.join("EFI/nixos"))?;
        std::fs::create_dir_all(esp.join("loader/entries"))?;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = |n: u64| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 56) as u8
                })
                .collect()
        };
        for i in 0..3 {
            std::fs::write(esp.join(format!("EFI/nixos/kernel-{i}.efi")), bytes(big))?;
        }
        for i in 0..small {
            let d = esp.join(format!("EFI/tools/dir{:02}", i % 50));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(format!("Module-{i}.Efi")), bytes(1000 + (i * 97) % 12000))?;
        }
        std::fs::write(esp.join("loader/loader.conf"), b"timeout 3\n")?;
    }
    out.push(("esp".to_string(), esp));
    Ok(out)
}

fn cases(a: &Args, corpora: &[(String, PathBuf)]) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    let specs = a.work.join("specs");
    std::fs::create_dir_all(&specs)?;
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (cname, dir) in corpora {
        let bytes = du_apparent(dir)?;
        let fss: &[&str] = if cname == "esp" { &["vfat"] } else { &["ext4", "btrfs", "btrfs-zstd"] };
        for fs in fss {
            let (format, mo) = match *fs {
                "btrfs-zstd" => ("btrfs", r#""compress-force=zstd""#),
                f => (f, ""),
            };
            let spec = specs.join(format!("{fs}-{cname}.json"));
            std::fs::write(&spec, layout(format, bytes, mo))?;
            let size_mib = ((bytes * 3 / 2) >> 20) + 256;
            let mk = |threads: usize| {
                format!(
                    "{} build {} --root {} --out \"$OUT\" --quiet --threads {threads}",
                    sh_quote(&a.mkdisk),
                    sh_quote(&spec),
                    sh_quote(dir)
                )
            };
            let mut runs = vec![(format!("mkdisk ({nproc} threads)"), format!("mkdir -p \"$OUT\" && {}", mk(nproc)))];
            if nproc > 1 {
                runs.push(("mkdisk (1 thread)".into(), format!("mkdir -p \"$OUT\" && {}", mk(1))));
            }
            let d = sh_quote(dir);
            match *fs {
                // mke2fs's default inode ratio cannot hold a 180k-entry tree (the flat store):
                // give it the inode count mkdisk sizes for itself, entries plus a quarter.
                "ext4" if have("mke2fs") => runs.push((
                    "mke2fs -d".into(),
                    format!(
                        "mke2fs -q -F -t ext4 -N {} -E root_owner=0:0 -d {d} \"$OUT\" {size_mib}M",
                        count_entries(dir)? * 5 / 4 + 1024
                    ),
                )),
                "btrfs" if have("mkfs.btrfs") => runs.push((
                    "mkfs.btrfs --rootdir".into(),
                    format!("truncate -s {size_mib}M \"$OUT\" && mkfs.btrfs -q --rootdir {d} \"$OUT\""),
                )),
                "btrfs-zstd" if have("mkfs.btrfs") => runs.push((
                    "mkfs.btrfs --rootdir --compress zstd".into(),
                    format!("truncate -s {size_mib}M \"$OUT\" && mkfs.btrfs -q --compress zstd --rootdir {d} \"$OUT\""),
                )),
                "vfat" if have("mkfs.vfat") && have("mcopy") => runs.push((
                    "mkfs.vfat + mcopy -s".into(),
                    format!(
                        "mkfs.vfat -F 32 -C \"$OUT\" {} >/dev/null && mcopy -s -p -Q -m -i \"$OUT\" {d}/* ::/",
                        size_mib * 1024
                    ),
                )),
                _ => {}
            }
            runs.push(("tar cf (floor)".into(), format!("tar cf \"$OUT\" -C {d} .")));
            v.push(Case { name: format!("{fs} / {cname}"), corpus: dir.clone(), bytes, runs });
        }
        if cname == "store" {
            v.push(closure_case(a, dir, bytes, &specs, nproc)?);
            let spec = specs.join("ext4-outputs.json");
            std::fs::write(&spec, layout("ext4", bytes, ""))?;
            v.push(outputs_case(a, "outputs / ext4 store", &spec, dir, bytes, nproc)?);
            let esp = corpora.iter().find(|c| c.0 == "esp").map(|c| c.1.clone());
            if let Some(esp) = esp {
                let seed = seed_case(a, dir, &esp, &specs, nproc)?;
                let (root, bytes) = (seed.corpus.clone(), seed.bytes);
                v.push(seed);
                v.push(outputs_case(a, "outputs / seed image", &specs.join("seed.json"), &root, bytes, nproc)?);
            }
        }
    }
    Ok(v)
}

/// The whole seed image (EF02, 512 MiB FAT32 ESP at /boot, btrfs / with compress-force=zstd)
/// from one root (the store corpus plus the ESP tree) against systemd-repart 254 `--offline`
/// under `unshare --map-root-user`, as NixOS' image.repart runs it (with
/// `SYSTEMD_REPART_MKFS_OPTIONS_BTRFS=--compress zstd` so both compress). The repart binary
/// comes from `benches/fetch-repart.sh` (bookworm-backports, extracted, not installed).
fn seed_case(a: &Args, store: &Path, esp: &Path, specs: &Path, nproc: usize) -> Result<Case> {
    let root = a.work.join(if a.short { "corpus/seed-root-short" } else { "corpus/seed-root" });
    if !root.join("boot").exists() {
        std::fs::create_dir_all(&root)?;
        let st = Command::new("cp").arg("-a").arg(store.join("nix")).arg(&root).status()?;
        let st2 = Command::new("cp").arg("-a").arg(esp).arg(root.join("boot")).status()?;
        if !st.success() || !st2.success() {
            bail!("cannot assemble {}", root.display());
        }
    }
    let bytes = du_apparent(&root)?;
    // repart sizes its offline btrfs generously; give both tools the same, roomy disk.
    let mib = ((bytes * 3) >> 20) + 1536;
    let spec = specs.join("seed.json");
    let text = std::fs::read_to_string(a.shared.join("disko/seed-regular.json"))?
        .replace("\"imageSize\": \"2G\"", &format!("\"imageSize\": \"{mib}M\""));
    std::fs::write(&spec, text)?;
    let mk = format!(
        "{} build {} --root {} --out \"$OUT\" --quiet --threads {nproc}",
        sh_quote(&a.mkdisk),
        sh_quote(&spec),
        sh_quote(&root)
    );
    let mut runs = vec![
        (format!("mkdisk ({nproc} threads)"), format!("mkdir -p \"$OUT\" && {mk}")),
        // Auto size: the fill partition's minimal size is searched (ratio = fixed ÷ auto: 0.95
        // or more is "at most 1.05× the fixed-size build").
        ("--image-size auto (mkdisk)".into(), format!("mkdir -p \"$OUT\" && {mk} --image-size auto")),
    ];
    let repart = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-repart.sh"))
        .arg(a.work.join("repart"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(repart) = repart {
        let defs = a.work.join("repart-defs");
        std::fs::create_dir_all(&defs)?;
        std::fs::write(
            defs.join("00-bios.conf"),
            "[Partition]\nType=21686148-6449-6e6f-744e-656564454649\nSizeMinBytes=1M\nSizeMaxBytes=1M\n",
        )?;
        std::fs::write(
            defs.join("10-esp.conf"),
            "[Partition]\nType=esp\nFormat=vfat\nSizeMinBytes=512M\nSizeMaxBytes=512M\nCopyFiles=/boot:/\n",
        )?;
        std::fs::write(
            defs.join("20-root.conf"),
            "[Partition]\nType=linux-generic\nFormat=btrfs\nCopyFiles=/:/\nExcludeFiles=/boot/\n",
        )?;
        runs.push((
            "systemd-repart 254 --offline".into(),
            format!(
                "SYSTEMD_REPART_MKFS_OPTIONS_BTRFS='--compress zstd' unshare --map-root-user {} --offline=yes \
                 --empty=create --size={}M --seed=0867da16-f251-457d-a9e8-c31f9a3c220b --root={} \
                 --definitions={} --dry-run=no --sector-size=512 --json=off \"$OUT\" >/dev/null",
                sh_quote(Path::new(&repart)),
                mib + 2,
                sh_quote(&root),
                sh_quote(&defs)
            ),
        ));
    }
    runs.push(("tar cf (floor)".into(), format!("tar cf \"$OUT\" -C {} .", sh_quote(&root))));
    Ok(Case { name: "seed image / store+esp".into(), corpus: root, bytes, runs })
}

/// Closure copy: the store corpus as a closureInfo (`--closure`, straight from the host
/// store into an ext4 image, Nix DB included) against `cp -a` of the same store paths into a
/// directory, the floor.
fn closure_case(a: &Args, corpus: &Path, bytes: u64, specs: &Path, nproc: usize) -> Result<Case> {
    let paths = std::fs::read_to_string(corpus.join("store-paths"))?;
    let info = a.work.join("closure-info");
    std::fs::create_dir_all(&info)?;
    let mut reg = String::new();
    for p in paths.lines().filter(|l| !l.is_empty()) {
        // The writer does not re-hash; any well-formed narHash serves for throughput.
        writeln!(reg, "{p}\nsha256:{}\n0\n\n0", "0".repeat(64))?;
    }
    std::fs::write(info.join("store-paths"), &paths)?;
    std::fs::write(info.join("registration"), reg)?;
    let spec = specs.join("ext4-closure.json");
    std::fs::write(&spec, layout("ext4", bytes, ""))?;
    let store = corpus.join("nix/store");
    let mk = format!(
        "{} build {} --out \"$OUT\" --quiet --threads {nproc} --closure {} --store-dir {}",
        sh_quote(&a.mkdisk),
        sh_quote(&spec),
        sh_quote(&info),
        sh_quote(&store)
    );
    Ok(Case {
        name: "closure copy / store".into(),
        corpus: corpus.to_path_buf(),
        bytes,
        runs: vec![
            (format!("mkdisk --closure ({nproc} threads)"), format!("mkdir -p \"$OUT\" && {mk}")),
            ("cp -a (floor)".into(), format!("mkdir -p \"$OUT\" && cp -a {}/* \"$OUT\"/", sh_quote(&store))),
        ],
    })
}

/// Output formats of the layout `spec` built from `corpus`: raw (the reference row), then
/// `--format raw.zst|qcow2|raw.gz` (ratio = raw ÷ format: 0.77 or more is "at most 1.3× the
/// raw build"), against the raw build followed by `zstd -3 -T0` in sequence and `zstd -3
/// -T0` alone on a prebuilt raw image (compare the sizes with `--format raw.zst`'s).
fn outputs_case(a: &Args, name: &str, spec: &Path, corpus: &Path, bytes: u64, nproc: usize) -> Result<Case> {
    let mk = |extra: &str| {
        format!(
            "mkdir -p \"$OUT\" && {} build {} --root {} --out \"$OUT\" --quiet --threads {nproc}{extra}",
            sh_quote(&a.mkdisk),
            sh_quote(spec),
            sh_quote(corpus)
        )
    };
    let prebuilt = a.work.join(format!("outputs-raw-{}", name.rsplit(' ').next().unwrap_or("x")));
    let _ = std::fs::remove_dir_all(&prebuilt);
    std::fs::create_dir_all(&prebuilt)?;
    let st = Command::new("sh").args(["-c", &mk("")]).env("OUT", &prebuilt).status()?;
    if !st.success() {
        bail!("mkdisk build of {} failed", spec.display());
    }
    let image =
        std::fs::read_dir(&prebuilt)?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "raw"));
    let image = image.with_context(|| format!("no raw image in {}", prebuilt.display()))?;
    let raw = sh_quote(&image);
    let name_raw = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut runs = vec![
        (format!("mkdisk raw ({nproc} threads)"), mk("")),
        ("--format raw.zst (mkdisk)".into(), mk(" --format raw.zst")),
        ("--format qcow2 (mkdisk)".into(), mk(" --format qcow2")),
        ("--format raw.gz (mkdisk)".into(), mk(" --format raw.gz")),
        ("--format vhd (mkdisk)".into(), mk(" --format vhd")),
    ];
    if have("zstd") {
        runs.push((
            "raw, then zstd -3 -T0, in sequence (mkdisk)".into(),
            format!("{} && zstd -q -3 -T0 --rm \"$OUT/{name_raw}\" -o \"$OUT/{name_raw}.zst\"", mk("")),
        ));
        runs.push(("zstd -3 -T0 of the raw image".into(), format!("zstd -q -3 -T0 {raw} -o \"$OUT\"")));
    }
    Ok(Case { name: name.into(), corpus: corpus.to_path_buf(), bytes, runs })
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if !a.mkdisk.exists() {
        bail!("{} not found: run `cargo build --release` first or pass --mkdisk", a.mkdisk.display());
    }
    let corpora = make_corpora(&a)?;
    let out_dir = a.work.join("out");
    std::fs::create_dir_all(&out_dir)?;
    let mut table = String::new();
    let host =
        Command::new("uname").arg("-srm").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(table, "mkdisk-bench: {host}, {nproc} cores, {} round(s), median wall time", a.rounds)?;
    writeln!(table)?;
    writeln!(table, "| case | tool | wall s | mkdisk ÷ tool | allocated MiB | peak RSS MiB |")?;
    // (allocated: the output's blocks; one decimal, so that compressed sizes compare.)
    writeln!(table, "|---|---|---:|---:|---:|---:|")?;
    let mut failures = 0;
    for mut case in cases(&a, &corpora)? {
        add_baseline(&a, &mut case);
        drop_peers(&a, &mut case);
        if a.only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        let _ = &case.corpus;
        eprintln!("== {} ({} MiB of content)", case.name, case.bytes >> 20);
        let mut results: Vec<(String, Option<Sample>)> = Vec::new();
        for (label, script) in &case.runs {
            let out = out_dir.join("img");
            let env = [("OUT", out.to_str().unwrap_or_default()), ("MTOOLS_SKIP_CHECK", "1"), ("TZ", "UTC")];
            let mut samples = Vec::new();
            let mut err = None;
            for _ in 0..a.rounds {
                match measure(script, &out, &env) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = err {
                let msg = format!("{e:#}");
                let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                eprintln!("   {label}: FAILED: {first}");
                if label.contains("mkdisk") && !first.contains("not implemented yet") {
                    failures += 1;
                }
                results.push((label.clone(), None));
            } else {
                let m = median(samples);
                eprintln!("   {label}: {:.2} s, {} MiB RSS", m.wall, m.rss_kib >> 10);
                results.push((label.clone(), Some(m)));
            }
        }
        let ours = results.first().and_then(|r| r.1);
        for (label, s) in &results {
            match s {
                Some(s) => {
                    // A baseline row compares with its own twin (same thread count).
                    let twin = label.strip_prefix("baseline ").and_then(|l| results.iter().find(|r| r.0 == l));
                    let ours = twin.map_or(ours, |t| t.1);
                    let ratio = match ours {
                        Some(o) if !label.starts_with("mkdisk") && s.wall > 0.0 => format!("{:.2}×", o.wall / s.wall),
                        _ => "".into(),
                    };
                    writeln!(
                        table,
                        "| {} | {label} | {:.2} | {ratio} | {:.1} | {} |",
                        case.name,
                        s.wall,
                        s.alloc as f64 / f64::from(1u32 << 20),
                        s.rss_kib >> 10
                    )?;
                }
                None => writeln!(table, "| {} | {label} | failed / n.a. | | | |", case.name)?,
            }
        }
    }
    println!("{table}");
    if let Some(md) = &a.markdown {
        std::fs::write(md, &table)?;
    }
    if failures > 0 {
        bail!("{failures} mkdisk run(s) failed");
    }
    Ok(())
}
