//! NixOS images end to end, with Debian's `nix-bin` (Nix 2.8) as the oracle: a small real
//! closure is built offline in a scratch chroot store (`nix-store --add`, a
//! `builtins.derivation` with `/bin/sh`, a fake NixOS toplevel with `boot.json`), turned into
//! closureInfo files, written into an image with `mkdisk build --closure --system`, the root
//! filesystem extracted again with `debugfs rdump`, and the extracted store checked with
//! `nix-store --verify --check-contents`, `-qR` and `-q --hash`.
//!
//! Every `nix-store`/`nix-build` runs through [`mkdisk_testkit::nix_command`]: its own configuration
//! (`build-users-group =`: no `nixbld` group needed), no `/etc/nix`, no user configuration, no
//! `/nix` on the host. Without `nix-store` on PATH these tests print a loud `*** SKIPPED (not a
//! pass)` line and return; with `MKDISK_REQUIRE_NIX` set (`tests/run.sh`) or `CI=true` they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mkdisk_testkit::assert_ok;
use mkdisk_testkit::grub::fake_grub_lib;
use mkdisk_testkit::harness::boot_parts;
use mkdisk_testkit::nix::{nix, nix_build, nix_ok, scratch_store, scratch_store_for, toplevel_nix, Scratch};

mod common;
use common::{
    build_args, fat_has, grub_boot_args, listing_sha, mtype, plan_numbers, qemu_boot, read_at, sha256_file, system_args,
};

const EPOCH: &str = "1700000000";

fn mkdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkdisk")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).output().unwrap()
}

/// Whether Nix is here (see [`common::have_nix`]: a skip, or a failure where it must run).
fn have_nix() -> bool {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    common::have_nix(&format!("NixOS oracle test {test}"))
}

/// A fresh temp dir holding a [`scratch_store`] and `spec_text` as `spec.json`: (the dir, the
/// store, the spec's path).
fn scratch_with_spec(spec_text: &str) -> (tempfile::TempDir, Scratch, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let s = scratch_store(tmp.path());
    let spec = tmp.path().join("spec.json");
    std::fs::write(&spec, spec_text).unwrap();
    (tmp, s, spec)
}

/// [`scratch_with_spec`] with [`SPEC_EXT4`]; `None` (after [`have_nix`]'s SKIP) without Nix.
fn ext4_scratch() -> Option<(tempfile::TempDir, Scratch, PathBuf)> {
    have_nix().then(|| scratch_with_spec(SPEC_EXT4))
}

const SPEC_EXT4: &str = r#"{"disk":{"main":{"imageSize":"192M","content":{"type":"gpt","partitions":{
  "boot":{"size":"1M","type":"EF02","priority":0},
  "ESP":{"size":"64M","type":"EF00","priority":1,"content":{"type":"filesystem","format":"vfat","mountpoint":"/boot"}},
  "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#;

/// (name, first byte, length in bytes) of every partition, from `mkdisk plan --json`.
fn partitions(spec: &Path) -> Vec<(String, u64, u64)> {
    let o = mkdisk(&["plan", spec.to_str().unwrap(), "--json"]);
    assert_ok("mkdisk plan", &o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["disks"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect()
}

fn part<'a>(parts: &'a [(String, u64, u64)], name: &str) -> &'a (String, u64, u64) {
    parts.iter().find(|p| p.0 == name).unwrap()
}

fn build(dir: &Path, spec: &Path, s: &Scratch, extra: &[&str]) -> PathBuf {
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let store_dir = s.store.join("nix/store");
    let args = [&build_args(spec, &out)[..], &system_args(&s.closure, &store_dir, &s.toplevel), extra].concat();
    assert_ok("mkdisk build", &mkdisk(&args));
    out.join("main.raw")
}

/// `debugfs rdump` of the ext4 filesystem at `offset` of `img` into `dest`.
fn extract_ext4(img: &Path, offset: u64, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let dev = format!("{}?offset={offset}", img.display());
    for d in ["nix", "etc"] {
        let o = Command::new("debugfs").args(["-R", &format!("rdump /{d} {}", dest.display()), &dev]).output().unwrap();
        assert_ok("debugfs rdump", &o);
    }
}

fn debugfs(img: &Path, offset: u64, req: &str) -> String {
    let dev = format!("{}?offset={offset}", img.display());
    let o = Command::new("debugfs").args(["-R", req, &dev]).output().unwrap();
    assert_ok("debugfs", &o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Each boot loader only when asked for: `--system` alone follows the bootspec (the scratch
/// toplevel's has no `org.nixos.systemd-boot`: no boot loader, a warning); `--grub` alone
/// gives no systemd-boot; `--systemd-boot` alone no GRUB; both give both.
#[test]
fn boot_loaders_each_on_their_own() {
    let Some((tmp, s, spec)) = ext4_scratch() else { return };
    let dir = tmp.path();
    let grub = fake_grub_lib(dir);
    let g = grub.to_str().unwrap();
    let parts = partitions(&spec);
    let (esp, ef02) = (part(&parts, "ESP").1, part(&parts, "boot").1);
    let out = dir.join("out-alone");
    std::fs::create_dir_all(&out).unwrap();
    let store_dir = s.store.join("nix/store");
    let args = ["build", spec.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let o = mkdisk(&[&args[..], &system_args(&s.closure, &store_dir, &s.toplevel)].concat());
    assert_ok("mkdisk build --system", &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: no boot loader installed: the bootspec has no org.nixos.systemd-boot"), "{err}");
    let img = out.join("main.raw");
    assert!(!fat_has(&img, esp, "/EFI") && !fat_has(&img, esp, "/grub"));
    assert!(read_at(&img, ef02, 1024).iter().all(|&b| b == 0), "EF02 written without GRUB");

    let has = |img: &Path| {
        let core = read_at(img, ef02, 512).iter().any(|&b| b != 0);
        (fat_has(img, esp, "/EFI/BOOT/BOOTX64.EFI"), fat_has(img, esp, "/grub/grub.cfg"), core)
    };
    assert_eq!(has(&build(dir, &spec, &s, &["--grub", g])), (false, true, true), "GRUB only");
    assert_eq!(has(&build(dir, &spec, &s, &["--systemd-boot"])), (true, false, false), "systemd-boot only");
    assert_eq!(has(&build(dir, &spec, &s, &["--systemd-boot", "--grub", g])), (true, true, true), "both");
}

#[test]
fn extracted_store_verifies_with_nix() {
    let Some((tmp, s, spec)) = ext4_scratch() else { return };
    let dir = tmp.path();
    assert!(s.store_paths.len() >= 6, "{:?}", s.store_paths);
    let img = build(dir, &spec, &s, &["--systemd-boot"]);
    let parts = partitions(&spec);
    let root = part(&parts, "root");
    let r = dir.join("extracted");
    extract_ext4(&img, root.1, &r);

    // The DB as written: schema file, rollback journal, no side files.
    assert_eq!(std::fs::read(r.join("nix/var/nix/db/schema")).unwrap(), b"10");
    let db = std::fs::read(r.join("nix/var/nix/db/db.sqlite")).unwrap();
    assert_eq!(&db[..16], b"SQLite format 3\0");
    assert_eq!(&db[16..20], &[0x10, 0x00, 1, 1], "page size 4096, rollback journal");
    let names: Vec<_> = std::fs::read_dir(r.join("nix/var/nix/db")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Store conventions on the image.
    let stat = debugfs(&img, root.1, "stat /nix/store");
    assert!(stat.contains("Mode:  01775") && stat.contains("Group: 30000"), "{stat}");
    let top_name = s.toplevel.trim_start_matches("/nix/store/");
    let stat = debugfs(&img, root.1, &format!("stat /nix/store/{top_name}/init"));
    assert!(stat.contains("Mode:  0555") && stat.contains("User:     0"), "{stat}");
    assert!(stat.contains("mtime: 0x00000001"), "{stat}");
    let stat = debugfs(&img, root.1, &format!("stat /nix/store/{top_name}/boot.json"));
    assert!(stat.contains("Mode:  0444"), "{stat}");

    // Profiles and the NixOS marker.
    let link = std::fs::read_link(r.join("nix/var/nix/profiles/system")).unwrap();
    assert_eq!(link, Path::new("system-1-link"));
    let link = std::fs::read_link(r.join("nix/var/nix/profiles/system-1-link")).unwrap();
    assert_eq!(link, Path::new(&s.toplevel));
    assert!(r.join("nix/var/nix/profiles/per-user/root").is_dir());
    assert_eq!(std::fs::read(r.join("etc/NIXOS")).unwrap(), b"");

    // The oracle: Nix 2.8 accepts the extracted store and DB.
    let o = nix(&r, &["--verify", "--check-contents"]);
    assert_ok("nix-store --verify --check-contents", &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("modified") && !err.contains("invalid") && !err.contains("error"), "{err}");
    let mut closure: Vec<String> = nix_ok(&r, &["-qR", &s.toplevel]).lines().map(str::to_string).collect();
    closure.sort();
    assert_eq!(closure, s.store_paths);
    for p in &s.store_paths {
        assert_eq!(nix_ok(&r, &["-q", "--hash", p]), nix_ok(&s.store, &["-q", "--hash", p]), "{p}");
        assert_eq!(nix_ok(&r, &["-q", "--size", p]), nix_ok(&s.store, &["-q", "--size", p]), "{p}");
        let mut a: Vec<String> = nix_ok(&r, &["-q", "--references", p]).lines().map(str::to_string).collect();
        let mut b: Vec<String> = nix_ok(&s.store, &["-q", "--references", p]).lines().map(str::to_string).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{p}");
    }
    // The profile keeps the whole closure alive.
    let o = nix(&r, &["--gc", "--print-dead"]);
    assert_ok("nix-store --gc --print-dead", &o);
    let dead = String::from_utf8_lossy(&o.stdout);
    assert!(s.store_paths.iter().all(|p| !dead.contains(p.as_str())), "dead: {dead}");

    // systemd-boot on the ESP.
    let esp = part(&parts, "ESP");
    assert_eq!(mtype(&img, esp.1, "/EFI/BOOT/BOOTX64.EFI"), "fake-sd-boot\n");
    assert_eq!(mtype(&img, esp.1, "/EFI/systemd/systemd-bootx64.efi"), "fake-sd-boot\n");
    assert_eq!(
        mtype(&img, esp.1, "/loader/loader.conf"),
        "timeout 5\ndefault nixos-generation-1.conf\nconsole-mode keep\n"
    );
    let entry = mtype(&img, esp.1, "/loader/entries/nixos-generation-1.conf");
    let kernel_dir = s
        .store_paths
        .iter()
        .find(|p| p.ends_with("-linux-6.1.0") && !p.contains("initrd"))
        .unwrap()
        .trim_start_matches("/nix/store/");
    let initrd_dir =
        s.store_paths.iter().find(|p| p.ends_with("-initrd-linux-6.1.0")).unwrap().trim_start_matches("/nix/store/");
    assert_eq!(
        entry,
        format!(
            "title NixOS\nsort-key nixos\nversion Generation 1 NixOS 24.05 (Linux 6.1.0), built on 2023-11-14\n\
             linux /EFI/nixos/{kernel_dir}-bzImage.efi\ninitrd /EFI/nixos/{initrd_dir}-initrd.efi\n\
             options init={}/init loglevel=4 console=ttyS0\n",
            s.toplevel
        )
    );
    assert_eq!(mtype(&img, esp.1, &format!("/EFI/nixos/{kernel_dir}-bzImage.efi")), "fake-kernel\n");
    assert_eq!(mtype(&img, esp.1, &format!("/EFI/nixos/{initrd_dir}-initrd.efi")), "fake-initrd\n");

    // Reproducible across runs and thread counts, DB included.
    let first = sha256_file(&img);
    let img1 = build(dir, &spec, &s, &["--threads", "1", "--systemd-boot"]);
    assert_eq!(sha256_file(&img1), first);
    let img3 = build(dir, &spec, &s, &["--threads", "3", "--systemd-boot"]);
    assert_eq!(sha256_file(&img3), first);
}

fn build_err(dir: &Path, spec: &Path, args: &[&str]) -> String {
    let out = dir.join("out-err");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let o = mkdisk(&[&build_args(spec, &out)[..], args].concat());
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "no image left behind");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_nixos_inputs_are_named() {
    let Some((tmp, s, spec)) = ext4_scratch() else { return };
    let dir = tmp.path();
    let store_dir = s.store.join("nix/store");
    let sd = store_dir.to_str().unwrap();
    let cl = s.closure.to_str().unwrap();

    // A store path missing from the host store.
    let bad = dir.join("closure-missing");
    std::fs::create_dir_all(&bad).unwrap();
    let ghost = "/nix/store/00000000000000000000000000000000-ghost";
    let sp = std::fs::read_to_string(s.closure.join("store-paths")).unwrap();
    std::fs::write(bad.join("store-paths"), format!("{sp}{ghost}\n")).unwrap();
    let reg = std::fs::read_to_string(s.closure.join("registration")).unwrap();
    std::fs::write(
        bad.join("registration"),
        format!("{reg}{ghost}\nsha256:1av6k5vjhy68xrphrsn96pcsqrcrh8f5mg814y0jm0dl8rs316gq\n120\n\n0\n"),
    )
    .unwrap();
    let e = build_err(dir, &spec, &["--closure", bad.to_str().unwrap(), "--store-dir", sd]);
    assert!(e.contains("missing from the host store") && e.contains(ghost), "{e}");

    // A registration that disagrees with store-paths.
    std::fs::write(bad.join("store-paths"), sp.as_bytes()).unwrap();
    let e = build_err(dir, &spec, &["--closure", bad.to_str().unwrap(), "--store-dir", sd]);
    assert!(e.contains("registration disagrees with store-paths") && e.contains(ghost), "{e}");

    // A toplevel without boot.json.
    let a = s.store_paths.iter().find(|p| p.ends_with("-a")).unwrap();
    let e = build_err(dir, &spec, &["--closure", cl, "--store-dir", sd, "--system", a]);
    assert!(e.contains("has no boot.json") && e.contains(a.as_str()), "{e}");

    // Boot loader inputs without a system.
    let e = build_err(dir, &spec, &["--systemd-boot", "/dev/null"]);
    assert!(e.contains("need --system"), "{e}");

    // GRUB without an EF02 partition.
    let no_ef02 = dir.join("no-ef02.json");
    std::fs::write(&no_ef02, SPEC_EXT4.replace(r#""boot":{"size":"1M","type":"EF02","priority":0},"#, "")).unwrap();
    let grub = dir.join("grub");
    std::fs::create_dir_all(grub.join("i386-pc")).unwrap();
    let e = build_err(
        dir,
        &no_ef02,
        &["--closure", cl, "--store-dir", sd, "--system", &s.toplevel, "--grub", grub.to_str().unwrap()],
    );
    assert!(e.contains("disk \"main\" has no BIOS boot partition (type EF02)"), "{e}");
    // GRUB for EFI without x86_64-efi/, /boot/grub on tmpfs, an unknown --grub-disk.
    let sys = ["--closure", cl, "--store-dir", sd, "--system", &s.toplevel];
    let e = build_err(dir, &spec, &[&sys[..], &["--grub", grub.to_str().unwrap(), "--grub-efi"]].concat());
    assert!(e.contains("--grub-efi: no --grub directory holds x86_64-efi/"), "{e}");
    let e = build_err(dir, &spec, &[&sys[..], &["--grub", grub.to_str().unwrap(), "--grub-disk", "other"]].concat());
    assert!(e.contains("--grub-disk other: the layout has no disk \"other\""), "{e}");
    let tmpfs_boot = dir.join("tmpfs-boot.json");
    std::fs::write(
        &tmpfs_boot,
        r#"{"disk":{"main":{"imageSize":"64M","content":{"type":"gpt","partitions":{
  "boot":{"size":"1M","type":"EF02","priority":0},
  "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}},
  "nodev":{"/boot":{"fsType":"tmpfs"}}}"#,
    )
    .unwrap();
    let e = build_err(dir, &tmpfs_boot, &[&sys[..], &["--grub", grub.to_str().unwrap()]].concat());
    assert!(e.contains("GRUB (--grub, --grub-efi): /boot/grub is on tmpfs (mounted at /boot)"), "{e}");
}

/// The UUID (or FAT serial) `blkid -p` reads from the filesystem at `offset` of `img`.
fn blkid_uuid(img: &Path, offset: u64) -> String {
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", "-O", &offset.to_string()])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8(blkid.stdout).unwrap().trim().to_string()
}

#[test]
fn grub_bios_and_systemd_boot_hybrid() {
    let Some((tmp, s, spec)) = ext4_scratch() else { return };
    let dir = tmp.path();
    let grub = fake_grub_lib(dir);
    let g = grub.to_str().unwrap();
    let parts = partitions(&spec);
    let plain = build(dir, &spec, &s, &["--no-bootloader"]);
    let plain_mbr = read_at(&plain, 0, 512);
    let img = build(dir, &spec, &s, &["--systemd-boot", "--grub", g, "--grub-serial"]);
    let ef02 = part(&parts, "boot");
    // Sector 0: boot.img with the kernel sector, boot drive, NOPs; the protective MBR's
    // partition table kept (sgdisk still accepts the disk).
    let mbr = read_at(&img, 0, 512);
    assert_eq!(&mbr[0x5c..0x64], &(ef02.1 / 512).to_le_bytes());
    assert_eq!(mbr[0x64], 0xff);
    assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
    assert_eq!(&mbr[0x1b8..0x200], &plain_mbr[0x1b8..0x200]);
    let boot_img = std::fs::read(grub.join("i386-pc/boot.img")).unwrap();
    assert_eq!(&mbr[0x68..0x1b8], &boot_img[0x68..0x1b8]);
    let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
    assert_ok("sgdisk -v", &v);
    assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"), "{}", String::from_utf8_lossy(&v.stdout));
    // core.img (assembled by mkdisk from the synthetic GRUB) in EF02 with its blocklist.
    let core = read_at(&img, ef02.1, 512);
    assert_eq!(&core[0x1f4..0x1fc], &(ef02.1 / 512 + 1).to_le_bytes());
    assert_eq!(&core[0x1fe..0x200], &[0x20, 0x08]);
    let rest = u16::from_le_bytes([core[0x1fc], core[0x1fd]]);
    assert!(rest > 0 && u64::from(rest) < ef02.2 / 512, "{rest} sectors after diskboot");
    // /boot is the ESP: grub.cfg, modules and kernel copies live there, found by FAT serial.
    let esp = part(&parts, "ESP");
    let cfg = mtype(&img, esp.1, "/grub/grub.cfg");
    let serial = blkid_uuid(&img, esp.1);
    assert_eq!(serial.len(), 9, "{serial}");
    assert!(cfg.contains(&format!("search --set=drive1 --fs-uuid {serial}\n")), "{cfg}");
    let kernel = s.store_paths.iter().find(|p| p.ends_with("-linux-6.1.0") && !p.contains("initrd")).unwrap();
    let kname = format!("{}-bzImage", kernel.trim_start_matches("/nix/store/"));
    assert!(cfg.contains(&format!("linux ($drive1)/kernels/{kname} init={}/init", s.toplevel)), "{cfg}");
    assert!(cfg.contains("terminal_output serial console"), "{cfg}");
    assert_eq!(mtype(&img, esp.1, &format!("/kernels/{kname}")), "fake-kernel\n");
    assert_eq!(
        mtype(&img, esp.1, "/grub/i386-pc/moddep.lst"),
        std::fs::read_to_string(grub.join("i386-pc/moddep.lst")).unwrap()
    );
    assert_eq!(mtype(&img, esp.1, "/grub/grubenv").len(), 1024);
    // Hybrid: systemd-boot is there too.
    assert_eq!(mtype(&img, esp.1, "/EFI/BOOT/BOOTX64.EFI"), "fake-sd-boot\n");

    // /boot on the root ext4 filesystem: the kernel is referenced in the store, by ext4 UUID.
    let spec2 = dir.join("spec-root-boot.json");
    std::fs::write(
        &spec2,
        r#"{"disk":{"main":{"imageSize":"128M","content":{"type":"gpt","partitions":{
  "boot":{"size":"1M","type":"EF02","priority":0},
  "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#,
    )
    .unwrap();
    let img2 = build(dir, &spec2, &s, &["--grub", g]);
    let root = part(&partitions(&spec2), "root").clone();
    let cfg = debugfs(&img2, root.1, "cat /boot/grub/grub.cfg");
    let uuid = blkid_uuid(&img2, root.1);
    assert!(cfg.contains(&format!("search --set=drive1 --fs-uuid {uuid}\n")), "{cfg}");
    assert!(cfg.contains(&format!("linux ($drive1){kernel}/bzImage init=")), "{cfg}");
}

/// A layout to boot: the spec, the partition holding the store, its type, and where it is
/// mounted in the layout (`/` or `/nix`).
struct BootLayout {
    name: &'static str,
    spec: String,
    store_part: &'static str,
    fs: &'static str,
    mountpoint: &'static str,
}

/// The regular layout (EF02 + vfat ESP at /boot + ext4 /) and the seed's impermanence layout
/// (tmpfs /, btrfs /nix with compress-force=zstd, vfat /boot, EF02), built from a fake NixOS
/// toplevel (Debian kernel, the boot harness's initramfs, boot.json) with Debian's GRUB
/// directory (`--grub`), boot three ways: SeaBIOS → GRUB (boot.img + the core.img mkdisk
/// assembled, in EF02), OVMF → our systemd-boot, and OVMF → GRUB for EFI
/// (`EFI/BOOT/BOOTX64.EFI` from the package's grub-mkimage), to the test init, which reads
/// the store filesystem.
#[test]
fn nixos_image_boots_with_grub_and_systemd_boot() {
    if !have_nix() {
        return;
    }
    let (parts, initramfs) = match boot_parts() {
        Ok(p) => p,
        Err(why) => {
            skip_or_fail(&format!("boot parts unavailable: {}", why.trim()));
            return;
        }
    };
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/disko/seed-impermanence.json");
    let mut layouts = vec![BootLayout {
        name: "regular-ext4",
        spec: SPEC_EXT4.to_string(),
        store_part: "root",
        fs: "ext4",
        mountpoint: "/",
    }];
    match std::fs::read_to_string(&shared) {
        Ok(spec) => layouts.push(BootLayout {
            name: "seed-impermanence",
            spec,
            store_part: "nix",
            fs: "btrfs",
            mountpoint: "/nix",
        }),
        Err(e) => skip_or_fail(&format!("{}: {e}", shared.display())),
    }
    let mut failures = Vec::new();
    for l in &layouts {
        failures.extend(boot_layout(l, &parts, &initramfs));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn boot_layout(l: &BootLayout, parts: &serde_json::Value, initramfs: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let kernel = nix_ok(&store, &["--add", parts["kernel"].as_str().unwrap()]).trim().to_string();
    let initrd = nix_ok(&store, &["--add", initramfs.to_str().unwrap()]).trim().to_string();
    let spec = dir.join("spec.json");
    std::fs::write(&spec, &l.spec).unwrap();
    let number = plan_numbers(&spec);
    let root_n = number(l.store_part);
    let params = format!(
        r#"[ "console=ttyS0" "panic=-1" "loglevel=4" "mkdisk.out=ttyS1" "mkdisk.mount=root:vda{root_n}:{}:ro" ]"#,
        l.fs
    );
    let expr = format!(
        r#"
let
  kernel = builtins.storePath "{kernel}";
  initrd = builtins.storePath "{initrd}";
{}"#,
        toplevel_nix(
            "nixos-system-boottest-24.05",
            "${kernel}",
            "${initrd}",
            &params,
            "NixOS 24.05 (Linux 6.1.0-56-amd64)",
            r#"mkdir $out; printf '%s' \"$bootJson\" > $out/boot.json; ln -s ${kernel} $out/kernel; ln -s ${initrd} $out/initrd; printf '#!/bin/sh\n' > $out/init; chmod +x $out/init"#,
        )
    );
    let (toplevel, closure, _) = nix_build(dir, &store, "boot.nix", &expr);

    // GRUB: Debian's GRUB library directory (grub-pc-bin's i386-pc/ and grub-efi-amd64-bin's
    // x86_64-efi/ beside it, with grub-mkimage, unpacked by the harness with the libraries it
    // lacks). mkdisk assembles core.img itself and runs that grub-mkimage for EFI.
    let glib = Path::new(parts["grub_i386_pc"].as_str().unwrap()).parent().unwrap().to_path_buf();
    let store_dir = store.join("nix/store");
    let build_image = |name: &str, loaders: &[&str]| -> PathBuf {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        let args = [&build_args(&spec, &out)[..], &system_args(&closure, &store_dir, &toplevel), loaders].concat();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkdisk"));
        for (k, v) in parts["grub_env"].as_object().unwrap() {
            cmd.env(k, v.as_str().unwrap());
        }
        assert_ok("mkdisk build", &cmd.args(&args).output().unwrap());
        out.join("main.raw")
    };
    // Hybrid: systemd-boot on the ESP and GRUB for BIOS; then GRUB for BIOS and EFI.
    let sd_boot = ["--systemd-boot", parts["systemd_boot"].as_str().unwrap()];
    let hybrid = build_image("out", &[&sd_boot[..], &grub_boot_args(&glib)].concat());
    let grub_efi = build_image("out-grub-efi", &[&grub_boot_args(&glib)[..], &["--grub-efi"]].concat());
    let boot_json_sha = sha256_file(&store_dir.join(&toplevel[11..]).join("boot.json"));

    // A path of the root tree as the guest sees it below the store filesystem's mount.
    let store_view = |p: &str| p.strip_prefix(l.mountpoint.trim_end_matches('/')).unwrap_or(p).to_string();
    let mut failures = Vec::new();
    let boots =
        [("seabios-grub", &hybrid, false), ("ovmf-systemd-boot", &hybrid, true), ("ovmf-grub-efi", &grub_efi, true)];
    for (what, img, uefi) in boots {
        let (cons, list) = qemu_boot(parts, dir, what, img, uefi);
        let init_line = cons.lines().find(|l| l.contains("MKDISK-INIT start")).unwrap_or("").to_string();
        let ok = list.contains("MKDISK-END root rc=0")
            && list.contains("MKDISK-DONE")
            && init_line.contains(&format!("init={toplevel}/init"))
            && listing_sha(&list, &store_view(&format!("/nix/store/{}/boot.json", &toplevel[11..]))).as_deref()
                == Some(boot_json_sha.as_str())
            && listing_sha(&list, &store_view("/nix/var/nix/db/db.sqlite")).is_some()
            && (l.mountpoint != "/" || listing_sha(&list, "/etc/NIXOS").is_some());
        // systemd-boot passes the initrd on the command line; GRUB sets BOOT_IMAGE.
        let by_loader = if what == "ovmf-systemd-boot" {
            init_line.contains("initrd=\\EFI\\nixos\\")
        } else {
            init_line.contains("BOOT_IMAGE=")
        };
        eprintln!("boot {} {what}: init line: {init_line}", l.name);
        if !(ok && by_loader) {
            failures.push(format!(
                "{} {what}: ok={ok} by_loader={by_loader}\nconsole tail:\n{}\nlisting tail:\n{}",
                l.name,
                &cons[cons.len().saturating_sub(3000)..],
                &list[list.len().saturating_sub(1000)..]
            ));
        }
    }
    failures
}

/// The seed's impermanence layout (tmpfs /, btrfs /nix with compress-force=zstd, vfat /boot,
/// EF02): the store on the btrfs partition, extracted with `btrfs restore`, verifies with Nix.
#[test]
fn impermanence_store_verifies_with_nix() {
    if !have_nix() {
        return;
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/disko/seed-impermanence.json");
    let Ok(spec_text) = std::fs::read_to_string(&shared) else {
        skip_or_fail(&format!("{} not found", shared.display()));
        return;
    };
    let (tmp, s, spec) = scratch_with_spec(&spec_text);
    let dir = tmp.path();
    let img = build(dir, &spec, &s, &["--systemd-boot"]);
    let parts = partitions(&spec);
    let nixp = part(&parts, "nix");
    let pimg = dir.join("nix.img");
    let dd = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", pimg.display()))
        .args(["bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
        .arg(format!("skip={}", nixp.1))
        .arg(format!("count={}", nixp.2))
        .output()
        .unwrap();
    assert_ok("dd", &dd);
    let r = dir.join("extracted");
    std::fs::create_dir_all(r.join("nix")).unwrap();
    let o = Command::new("btrfs").args(["restore", "-m", "-S", "-x"]).arg(&pimg).arg(r.join("nix")).output().unwrap();
    assert_ok("btrfs restore", &o);
    assert_eq!(std::fs::read(r.join("nix/var/nix/db/schema")).unwrap(), b"10");
    assert_eq!(std::fs::read_link(r.join("nix/var/nix/profiles/system-1-link")).unwrap(), Path::new(&s.toplevel));
    let o = nix(&r, &["--verify", "--check-contents"]);
    assert_ok("nix-store --verify --check-contents", &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("modified") && !err.contains("error"), "{err}");
    let mut closure: Vec<String> = nix_ok(&r, &["-qR", &s.toplevel]).lines().map(str::to_string).collect();
    closure.sort();
    assert_eq!(closure, s.store_paths);
    for p in &s.store_paths {
        assert_eq!(nix_ok(&r, &["-q", "--hash", p]), nix_ok(&s.store, &["-q", "--hash", p]), "{p}");
    }
    // systemd-boot on the ESP, GRUB not asked for (no --grub): the EF02 stays empty.
    let esp = part(&parts, "ESP");
    assert_eq!(mtype(&img, esp.1, "/EFI/BOOT/BOOTX64.EFI"), "fake-sd-boot\n");
}

/// Where QEMU, GRUB or the shared layouts cannot be had: a loud skip, but a failure under
/// `CI=true` ([`common::skip_or_fail`]).
fn skip_or_fail(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    common::skip_or_fail(&format!("NixOS test {test}"), why);
}

/// A minimal PE header for `machine` (0x8664 x86_64, 0xAA64 aarch64): what mkdisk checks.
fn fake_pe(machine: u16) -> Vec<u8> {
    let mut v = vec![0u8; 512];
    v[..2].copy_from_slice(b"MZ");
    v[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    v[0x80..0x84].copy_from_slice(b"PE\0\0");
    v[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    v
}

/// An aarch64 toplevel (bootspec `system = "aarch64-linux"`) built on this x86_64 host gets
/// systemd-boot under the aarch64 names, the same bytes with 1 and 2 threads; an x86_64
/// systemd-boot, GRUB for BIOS and a disagreeing `--arch` are refused with one line.
#[test]
fn aarch64_images_get_aarch64_boot_loaders() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = scratch_store_for(dir, "aarch64-linux");
    let spec = dir.join("spec.json");
    std::fs::write(&spec, SPEC_EXT4).unwrap();
    let (aa64, x64) = (dir.join("systemd-bootaa64.efi"), dir.join("systemd-bootx64.efi"));
    std::fs::write(&aa64, fake_pe(0xAA64)).unwrap();
    std::fs::write(&x64, fake_pe(0x8664)).unwrap();
    let sb = ["--systemd-boot", aa64.to_str().unwrap()];
    let img = build(dir, &spec, &s, &[&sb[..], &["--threads", "1"]].concat());
    let esp = part(&partitions(&spec), "ESP").1;
    assert!(fat_has(&img, esp, "/EFI/BOOT/BOOTAA64.EFI"), "BOOTAA64.EFI");
    assert!(fat_has(&img, esp, "/EFI/systemd/systemd-bootaa64.efi"), "systemd-bootaa64.efi");
    assert!(!fat_has(&img, esp, "/EFI/BOOT/BOOTX64.EFI") && !fat_has(&img, esp, "/EFI/systemd/systemd-bootx64.efi"));
    let one = sha256_file(&img);
    let img2 = build(dir, &spec, &s, &[&sb[..], &["--threads", "2"]].concat());
    assert_eq!(sha256_file(&img2), one, "--threads 1 and 2 give the same aarch64 image");

    let store_dir = s.store.join("nix/store");
    let sys = system_args(&s.closure, &store_dir, &s.toplevel);
    let one_line = |e: &str| assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    let e = build_err(dir, &spec, &[&sys[..], &["--systemd-boot", x64.to_str().unwrap()]].concat());
    one_line(&e);
    assert!(e.contains("systemd-bootx64.efi: an EFI binary for x86_64, but the image is for aarch64"), "{e}");
    let grub = fake_grub_lib(dir);
    let e = build_err(dir, &spec, &[&sys[..], &["--grub", grub.to_str().unwrap()]].concat());
    one_line(&e);
    assert!(e.contains("aarch64 machines have no BIOS"), "{e}");
    let e = build_err(dir, &spec, &[&sys[..], &["--arch", "x86_64"]].concat());
    one_line(&e);
    assert!(e.contains("--arch x86_64, but --system") && e.contains("is built for aarch64-linux"), "{e}");
}
