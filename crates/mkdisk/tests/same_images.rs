//! The images of a fixed matrix (every layout of `../shared/disko` that mkdisk writes and
//! `testdata/`, × two source trees, × seeds and compression, and NixOS systems with systemd-boot
//! and GRUB) hash to the sha256 values recorded in `tests/data/image-hashes.txt`.
//!
//! A restructuring must change no output: the recorded set was written by the code before it.
//! A change that means to change output rewrites the file with `MKDISK_BLESS=1` and says why in
//! its commit. `MKDISK_SAME_IMAGES_BIN` runs another `mkdisk` binary (to record the set with an
//! older build). Hashes are of x86_64 builds with Debian's nix-bin 2.8 (the NixOS cases' store
//! paths come from it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{have_nix, repo, sha256_file, system_args};
use mkdisk_testkit::grub::fake_grub_lib;
use mkdisk_testkit::nix::scratch_store;

const EPOCH: &str = "1700000000";

fn bin() -> PathBuf {
    std::env::var_os("MKDISK_SAME_IMAGES_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mkdisk")), PathBuf::from)
}

/// A deterministic xorshift stream: incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A source tree with something under every mount point of the layouts: text and random files
/// of many sizes (inline, one block, several extents), a file with holes, a directory large
/// enough for an htree, hard links, symbolic links, an executable, empty files.
fn generated_tree(root: &Path) {
    for top in ["nix/store/0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-demo-1.0", "home/user", "persist/etc", "etc", "var/log"] {
        for i in 0..40u64 {
            let len = usize::try_from((i * i * 997) % 300_000).unwrap();
            let text: Vec<u8> = format!("line {i} of {top}\n").bytes().cycle().take(len).collect();
            put(root, &format!("{top}/text{i}.txt"), &text);
            put(root, &format!("{top}/bin{i}.dat"), &noise(i + 7, len / 3));
        }
    }
    for i in 0..400 {
        put(root, &format!("nix/store/big-dir/entry-with-a-longer-name-{i:04}"), format!("{i}\n").as_bytes());
    }
    let mut holes = noise(3, 3 << 20);
    holes[4096..1 << 20].fill(0);
    holes[2 << 20..(2 << 20) + 65536].fill(0);
    put(root, "var/log/holes.img", &holes);
    put(root, "boot/extra/blob.bin", &noise(11, 200_000));
    put(root, "boot/extra/notes.txt", b"kept beside the boot loader\n");
    put(root, "etc/empty", b"");
    std::fs::hard_link(root.join("etc/text3.txt"), root.join("etc/hardlink")).unwrap();
    std::os::unix::fs::symlink("text1.txt", root.join("etc/symlink")).unwrap();
    std::os::unix::fs::symlink("/nix/store/nowhere", root.join("home/user/dangling")).unwrap();
    let exe = root.join("nix/store/0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-demo-1.0/bin0.dat");
    std::fs::set_permissions(exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn layouts() -> Vec<PathBuf> {
    let shared = repo().join("../shared/disko");
    let mut v: Vec<PathBuf> = ["seed-regular", "seed-impermanence", "btrfs-subvolumes", "ext4-swap"]
        .iter()
        .map(|n| shared.join(format!("{n}.json")))
        .collect();
    v.push(repo().join("testdata/example.toml"));
    let mut specs: Vec<PathBuf> =
        std::fs::read_dir(repo().join("testdata/specs")).unwrap().map(|e| e.unwrap().path()).collect();
    specs.sort();
    v.extend(specs);
    v
}

/// Build `spec` with `args` into a fresh `out` and append `case image sha256` lines.
fn record(list: &mut String, case: &str, spec: &Path, out: &Path, args: &[&str]) {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(bin())
        .arg("build")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        writeln!(list, "{case} {name} {}", sha256_file(&f)).unwrap();
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn images_equal_the_recorded_set() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("generated");
    generated_tree(&gen);
    let out = tmp.path().join("out");
    let testroot = repo().join("testdata/root");
    let mut list = String::new();
    for spec in layouts() {
        let s = name(&spec);
        record(&mut list, &format!("{s}/empty"), &spec, &out, &[]);
        record(&mut list, &format!("{s}/testdata-root"), &spec, &out, &["--root", testroot.to_str().unwrap()]);
        record(&mut list, &format!("{s}/generated"), &spec, &out, &["--root", gen.to_str().unwrap()]);
        let other = ["--root", gen.to_str().unwrap(), "--seed", "another seed", "--compress", "zstd:1"];
        record(&mut list, &format!("{s}/generated-seed-zstd1"), &spec, &out, &other);
    }
    let nix = have_nix("same-images NixOS cases");
    if nix {
        let s = scratch_store(tmp.path());
        let store_dir = s.store.join("nix/store");
        let grub = fake_grub_lib(tmp.path());
        let sys = system_args(&s.closure, &store_dir, &s.toplevel);
        for spec in &layouts()[..2] {
            let n = name(spec);
            let with_grub =
                [&sys[..], &["--systemd-boot", "--grub", grub.to_str().unwrap(), "--root", gen.to_str().unwrap()]]
                    .concat();
            record(&mut list, &format!("{n}/nixos-grub"), spec, &out, &with_grub);
            record(
                &mut list,
                &format!("{n}/nixos-no-bootloader"),
                spec,
                &out,
                &[&sys[..], &["--no-bootloader"]].concat(),
            );
        }
    }
    let golden = repo().join("crates/mkdisk/tests/data/image-hashes.txt");
    if std::env::var_os("MKDISK_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &list).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    let want: Vec<&str> = want.lines().filter(|l| nix || !l.contains("/nixos-")).collect();
    let got: Vec<&str> = list.lines().collect();
    let diff: Vec<String> = want
        .iter()
        .filter(|l| !got.contains(l))
        .map(|l| format!("- {l}"))
        .chain(got.iter().filter(|l| !want.contains(l)).map(|l| format!("+ {l}")))
        .collect();
    assert!(diff.is_empty(), "images differ from tests/data/image-hashes.txt:\n{}", diff.join("\n"));
}
