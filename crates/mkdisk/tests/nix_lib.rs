//! The Nix side (`nix/lib.nix`, `flake.nix`, `nix/module.nix`, `nix/package.nix`) with Debian's
//! nix-bin 2.8, offline: a stub `pkgs` (`tests/nix/stub-pkgs.nix`: only the attributes lib.nix
//! may use, derivations over the host's `/bin/sh`, closureInfo as nixpkgs makes it, Debian's
//! GRUB and systemd-boot from the boot harness) and stub configurations (`tests/nix/config.nix`:
//! the shared disko exports with `_` attributes, functions among them, added back; a fake
//! toplevel from `tests/nix/system.nix`). Each case is `nix-build tests/nix/case.nix -A image`
//! in a scratch chroot store (Nix runs the builders in its sandbox, where the store is
//! `/nix/store`), checked with the real tools (sgdisk, fsck.fat, mtools, btrfs check, btrfs
//! restore + `nix-store --verify --check-contents`); the seed layouts are booted under QEMU
//! through each boot loader. Without Nix or the boot parts: a loud skip (a failure under
//! `CI=true` or `MKDISK_REQUIRE_NIX`). The QEMU and listing helpers are copies of
//! `tests/nixos.rs`'s (private there).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mkdisk_testkit::harness::boot_parts;
use mkdisk_testkit::nix::{make_closure_info, nix};
use mkdisk_testkit::{assert_ok, have_nix, nix_command, skip_or_fail};

mod common;
use common::{fat_has, listing_sha, mtype, plan_numbers, qemu_boot, read_at, repo, sha256_file};

const SEEDS: [&str; 2] = ["seed-regular", "seed-impermanence"];

fn shared(layout: &str) -> PathBuf {
    repo().join(format!("../shared/disko/{layout}.json"))
}

/// What every case needs: a scratch directory, Debian's GRUB (trimmed to the two platform
/// directories and grub-mkimage) and systemd-boot, and the boot parts.
struct Env {
    tmp: tempfile::TempDir,
    grub_root: PathBuf,
    systemd_boot: PathBuf,
    parts: serde_json::Value,
    initramfs: PathBuf,
}

fn env(what: &str) -> Option<Env> {
    if !have_nix(what) {
        return None;
    }
    let (parts, initramfs) = match boot_parts() {
        Ok(p) => p,
        Err(why) => {
            skip_or_fail(what, &why);
            return None;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let grub_root = tmp.path().join("grub-root");
    let lib = Path::new(parts["grub_lib"].as_str().unwrap());
    std::fs::create_dir_all(grub_root.join("usr/lib/grub")).unwrap();
    std::fs::create_dir_all(grub_root.join("usr/bin")).unwrap();
    for platform in ["i386-pc", "x86_64-efi"] {
        let o = Command::new("cp").arg("-rL").arg(lib.join(platform)).arg(grub_root.join("usr/lib/grub")).output();
        assert_ok("cp", &o.unwrap());
    }
    std::fs::copy(parts["grub_mkimage"].as_str().unwrap(), grub_root.join("usr/bin/grub-mkimage")).unwrap();
    let systemd_boot = PathBuf::from(parts["systemd_boot"].as_str().unwrap());
    Some(Env { tmp, grub_root, systemd_boot, parts, initramfs })
}

/// A case: the layout and the Nix text of the other arguments of `tests/nix/case.nix`.
struct Case<'a> {
    layout: &'a str,
    loader: &'a str,
    extra: Vec<(&'a str, String)>,
}

impl<'a> Case<'a> {
    fn new(layout: &'a str, loader: &'a str) -> Case<'a> {
        Case { layout, loader, extra: Vec::new() }
    }

    fn arg(mut self, name: &'a str, nix_text: impl Into<String>) -> Case<'a> {
        self.extra.push((name, nix_text.into()));
        self
    }

    /// `--arg` pairs for case.nix.
    fn args(&self, e: &Env) -> Vec<String> {
        let grub_env = e.parts["grub_env"]["LD_LIBRARY_PATH"].as_str().unwrap_or("");
        let mut v = vec![
            ("layout", shared(self.layout).display().to_string()),
            ("loader", self.loader.to_string()),
            ("grubRoot", e.grub_root.display().to_string()),
            ("grubLibPath", format!("{grub_env:?}")),
            ("systemdBootEfi", e.systemd_boot.display().to_string()),
            ("mkdiskBin", env!("CARGO_BIN_EXE_mkdisk").to_string()),
        ];
        v.extend(self.extra.iter().map(|(k, t)| (*k, t.clone())));
        v.into_iter().flat_map(|(k, t)| ["--arg".to_string(), k.to_string(), t]).collect()
    }
}

/// `nix-build tests/nix/case.nix -A image` in the scratch store `store` (plus `flags`).
fn nix_build(store: &Path, e: &Env, case: &Case<'_>, flags: &[&str]) -> Output {
    nix_build_attr(store, e, case, "image", flags)
}

/// `nix-build tests/nix/case.nix -A ATTR` in the scratch store `store` (plus `flags`).
fn nix_build_attr(store: &Path, e: &Env, case: &Case<'_>, attr: &str, flags: &[&str]) -> Output {
    let mut c = nix_command("nix-build");
    c.arg("--store").arg(store).arg(repo().join("tests/nix/case.nix")).args(["-A", attr, "--no-out-link"]);
    c.args(case.args(e)).args(flags).output().unwrap()
}

/// The store path `nix-build -A ATTR` made (as the store names it, `/nix/store/...`).
fn built_attr(store: &Path, e: &Env, case: &Case<'_>, attr: &str) -> String {
    let o = nix_build_attr(store, e, case, attr, &[]);
    assert_ok(&format!("nix-build -A {attr} {} {}", case.layout, case.loader), &o);
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The image directory the build made, as a host path.
fn built(store: &Path, e: &Env, case: &Case<'_>) -> PathBuf {
    let o = nix_build(store, e, case, &[]);
    assert_ok(&format!("nix-build {} {}", case.layout, case.loader), &o);
    let out = String::from_utf8(o.stdout).unwrap().trim().to_string();
    store.join(out.trim_start_matches('/'))
}

/// (first byte, length in bytes) of partition `name`, from `mkdisk plan --json` of the layout.
fn partition(layout: &str, name: &str) -> (u64, u64) {
    let o = common::mkdisk(&["plan", shared(layout).to_str().unwrap(), "--json"]);
    assert_ok("mkdisk plan", &o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = v["disks"][0]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
}

/// (systemd-boot on the ESP, GRUB's files on the ESP, core.img in EF02, GRUB EFI on the ESP).
fn loaders(layout: &str, img: &Path) -> (bool, bool, bool, bool) {
    let (esp, ef02) = (partition(layout, "ESP").0, partition(layout, "boot").0);
    (
        fat_has(img, esp, "/EFI/systemd/systemd-bootx64.efi"),
        fat_has(img, esp, "/grub/grub.cfg"),
        read_at(img, ef02, 512).iter().any(|&b| b != 0),
        fat_has(img, esp, "/EFI/BOOT/BOOTX64.EFI") && !fat_has(img, esp, "/EFI/systemd"),
    )
}

const GRUB_BIOS: &str = r#"{ grub = { enable = true; devices = [ "/dev/vda" ]; }; timeout = 0; }"#;
const SYSTEMD_BOOT: &str =
    r#"{ systemd-boot = { enable = true; editor = false; }; grub.enable = false; timeout = 0; }"#;
const BOTH: &str = r#"{ systemd-boot.enable = true; grub = { enable = true; devices = [ "/dev/vda" ];
  extraConfig = "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console";
  extraEntries = "menuentry \"mkdisk-extra\" { halt }"; }; timeout = 0; }"#;
const GRUB_EFI: &str = r#"{ grub = { enable = true; devices = [ "nodev" ]; efiSupport = true; efiInstallAsRemovable = true;
  extraConfig = "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console"; };
  timeout = 0; }"#;

/// `layoutJSON` of every shared layout (with `_` attributes added back) is the shared JSON, and
/// byte for byte what the README's `nix eval --json --apply` recipe prints.
#[test]
fn layout_json_is_the_shared_export() {
    if !have_nix("nix lib layoutJSON") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let apply = readme.split("--apply '").nth(1).and_then(|s| s.split("' >").next()).expect("README recipe");
    // `_` attributes go at every depth, inside lists too, functions with them; the rest stays.
    let synthetic = format!(
        r#"(import {}/nix/lib.nix {{ pkgs = {{ }}; }}).layoutJSON {{ _meta = x: x; disk.a = {{ _p = 1; l = [ 1 {{ _f = x: x; k = [ {{ _g = 2; v = "_x"; }} ]; }} [ {{ _h = 3; }} ] ]; }}; }}"#,
        repo().display()
    );
    let mut c = nix_command("nix-instantiate");
    let o = c.arg("--store").arg(&store).args(["--eval", "--json", "-E", &synthetic]).output().unwrap();
    assert_ok("nix-instantiate layoutJSON (synthetic)", &o);
    let text: String = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(text, r#"{"disk":{"a":{"l":[1,{"k":[{"v":"_x"}]},[{}]]}}}"#);
    for layout in ["seed-regular", "seed-impermanence", "ext4-swap", "btrfs-subvolumes", "luks"] {
        let args = |attr: &str| {
            let e = format!(
                "(import {} {{ layout = {}; grubRoot = /nonexistent; systemdBootEfi = /nonexistent; mkdiskBin = /nonexistent; }}).{attr}",
                repo().join("tests/nix/case.nix").display(),
                shared(layout).display()
            );
            e
        };
        let o = nix_command("nix-instantiate")
            .arg("--store")
            .arg(&store)
            .args(["--eval", "--strict", "--json", "-E", &args("layoutJSON")])
            .output()
            .unwrap();
        assert_ok("nix-instantiate layoutJSON", &o);
        let text: String = serde_json::from_slice(&o.stdout).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: serde_json::Value = serde_json::from_slice(&std::fs::read(shared(layout)).unwrap()).unwrap();
        assert_eq!(ours, want, "{layout}");
        // The README's recipe on the same attribute set.
        let o = nix_command("nix")
            .arg("--store")
            .arg(&store)
            .args(["eval", "--json", "--impure", "--expr", &args("config.disko.devices"), "--apply", apply])
            .output()
            .unwrap();
        if o.status.success() {
            assert_eq!(String::from_utf8(o.stdout).unwrap().trim_end(), text, "{layout}: README recipe");
        } else {
            panic!("nix eval: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// GRUB-only gets no systemd-boot, systemd-boot-only no GRUB, both both, GRUB EFI only itself;
/// the images pass sgdisk, fsck.fat, btrfs check, and the store extracted from the image
/// verifies with Nix.
#[test]
fn boot_loaders_come_from_the_configuration() {
    let Some(e) = env("nix lib boot loaders") else { return };
    let store = e.tmp.path().join("store");
    for layout in SEEDS {
        for (loader, want) in [
            (GRUB_BIOS, (false, true, true, false)),
            (SYSTEMD_BOOT, (true, false, false, false)),
            (BOTH, (true, true, true, false)),
            (GRUB_EFI, (false, true, false, true)),
        ] {
            let out = built(&store, &e, &Case::new(layout, loader));
            let img = out.join("main.raw");
            assert_eq!(loaders(layout, &img), want, "{layout} {loader}");
            let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
            assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"), "{layout}: sgdisk -v");
        }
        let out = built(&store, &e, &Case::new(layout, BOTH));
        check_filesystems(layout, &out.join("main.raw"), e.tmp.path());
    }
}

/// `fsck.fat -n` on the ESP, `btrfs check` on the store partition, and `nix-store --verify
/// --check-contents` on the store `btrfs restore` extracts from it.
fn check_filesystems(layout: &str, img: &Path, dir: &Path) {
    let esp = partition(layout, "ESP");
    let part = |(off, len): (u64, u64), name: &str| {
        let p = dir.join(format!("{layout}-{name}.img"));
        let dd = Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", p.display()))
            .args(["bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
            .arg(format!("skip={off}"))
            .arg(format!("count={len}"))
            .output()
            .unwrap();
        assert_ok("dd", &dd);
        p
    };
    let esp_img = part(esp, "esp");
    assert_ok("fsck.fat -n", &Command::new("fsck.fat").arg("-n").arg(&esp_img).output().unwrap());
    let nix_img = part(partition(layout, "nix"), "nix");
    let o = Command::new("btrfs").args(["check", "--readonly", "--check-data-csum"]).arg(&nix_img).output().unwrap();
    assert_ok("btrfs check", &o);
    let r = dir.join(format!("{layout}-extracted"));
    // seed-regular has the btrfs at /, seed-impermanence at /nix.
    let dest = if layout == "seed-regular" { r.clone() } else { r.join("nix") };
    std::fs::create_dir_all(&dest).unwrap();
    let o = Command::new("btrfs").args(["restore", "-m", "-S", "-x"]).arg(&nix_img).arg(&dest).output().unwrap();
    assert_ok("btrfs restore", &o);
    let o = nix(&r, &["--verify", "--check-contents"]);
    assert_ok("nix-store --verify --check-contents", &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("modified") && !err.contains("error"), "{err}");
}

/// What the configuration says reaches the image: systemd-boot's timeout, editor and console
/// mode in loader.conf; GRUB's extraConfig and extraEntries in grub.cfg; GRUB for EFI under
/// `EFI/<efiBootloaderId>/` unless removable; and the imageBuilder options: `name`,
/// `extraPostVM` (after mkdisk, in the same builder, with zstd on PATH), `copyNixStore = false`
/// (no NixOS content, no boot loader), and the `seed` argument.
#[test]
fn options_reach_the_image() {
    let Some(e) = env("nix lib options") else { return };
    let store = e.tmp.path().join("store");
    let layout = "seed-regular";
    let esp = partition(layout, "ESP").0;

    let sd = built(&store, &e, &Case::new(layout, SYSTEMD_BOOT)).join("main.raw");
    assert_eq!(
        mtype(&sd, esp, "/loader/loader.conf"),
        "timeout 0\ndefault nixos-generation-1.conf\neditor 0\nconsole-mode keep\n"
    );
    let auto = r#"{ systemd-boot = { enable = true; consoleMode = "auto"; }; }"#;
    let sd2 = built(&store, &e, &Case::new(layout, auto)).join("main.raw");
    assert_eq!(
        mtype(&sd2, esp, "/loader/loader.conf"),
        "timeout 5\ndefault nixos-generation-1.conf\nconsole-mode auto\n"
    );

    let both = built(&store, &e, &Case::new(layout, BOTH)).join("main.raw");
    let cfg = mtype(&both, esp, "/grub/grub.cfg");
    assert!(cfg.contains("terminal_output serial console") && cfg.contains("menuentry \"mkdisk-extra\""), "{cfg}");
    assert!(cfg.contains("timeout=0") || cfg.contains("timeout 0"), "{cfg}");

    let efi_id =
        r#"{ grub = { enable = true; devices = [ "nodev" ]; efiSupport = true; efiBootloaderId = "Mine"; }; }"#;
    let img = built(&store, &e, &Case::new(layout, efi_id)).join("main.raw");
    assert!(fat_has(&img, esp, "/EFI/Mine/grubx64.efi"), "EFI/Mine/grubx64.efi");
    assert!(!fat_has(&img, esp, "/EFI/BOOT/BOOTX64.EFI"), "no removable path without efiInstallAsRemovable");
    assert!(read_at(&img, partition(layout, "boot").0, 512).iter().all(|&b| b == 0), "nodev: no core.img");

    let ib = r#"{ name = "custom-name"; copyNixStore = false;
      extraPostVM = "l=$(ls $out); echo $l > $out/post; command -v zstd >> $out/post"; }"#;
    let out = built(&store, &e, &Case::new(layout, BOTH).arg("imageBuilder", ib));
    assert!(out.to_str().unwrap().ends_with("-custom-name"), "{}", out.display());
    let post = std::fs::read_to_string(out.join("post")).unwrap();
    let mut lines = post.lines();
    assert_eq!(lines.next(), Some("main.raw"), "{post}");
    assert!(lines.next().is_some_and(|l| l.ends_with("-zstd-stub/bin/zstd")), "{post}");
    let bare = out.join("main.raw");
    assert!(!fat_has(&bare, esp, "/EFI") && !fat_has(&bare, esp, "/grub"), "copyNixStore = false: no boot loader");
    assert!(read_at(&bare, partition(layout, "boot").0, 512).iter().all(|&b| b == 0));

    // disko's imageFormat = "qcow2": only main.qcow2, the same disk as the raw build.
    let q = built(&store, &e, &Case::new(layout, BOTH).arg("imageBuilder", r#"{ imageFormat = "qcow2"; }"#));
    let names: Vec<_> = std::fs::read_dir(&q).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["main.qcow2"], "imageFormat = qcow2");
    let (r, qc) = (both.to_str().unwrap(), q.join("main.qcow2"));
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2", r, qc.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok("qemu-img compare raw qcow2", &o);

    let seeded = built(&store, &e, &Case::new(layout, BOTH).arg("seed", r#""another-seed""#)).join("main.raw");
    assert_ne!(sha256_file(&seeded), sha256_file(&both), "the seed argument reaches mkdisk");
}

/// Two builds in two stores give the same image, and `nix-build --check` rebuilds it equal.
#[test]
fn two_builds_give_the_same_image() {
    let Some(e) = env("nix lib reproducibility") else { return };
    let case = Case::new("seed-impermanence", BOTH);
    let a = built(&e.tmp.path().join("store-a"), &e, &case);
    let b = built(&e.tmp.path().join("store-b"), &e, &case);
    assert_eq!(sha256_file(&a.join("main.raw")), sha256_file(&b.join("main.raw")));
    let o = nix_build(&e.tmp.path().join("store-a"), &e, &case, &["--check"]);
    assert_ok("nix-build --check", &o);
}

/// Bad input names the option or the file.
#[test]
fn bad_configurations_name_the_option() {
    let Some(e) = env("nix lib errors") else { return };
    let store = e.tmp.path().join("store");
    let err = |case: Case<'_>| {
        let o = nix_build(&store, &e, &case, &[]);
        assert!(!o.status.success(), "{} {} built", case.layout, case.loader);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let s = err(Case::new("seed-regular", GRUB_BIOS).arg("imageBuilder", r#"{ imageFormat = "vmdk"; }"#));
    assert!(s.contains("disko.imageBuilder.imageFormat = \"vmdk\" is not a format mkdisk writes (raw, "), "{s}");
    let s = err(Case::new("ext4-swap", r#"{ grub = { enable = true; devices = [ "/dev/vdb" ]; }; }"#));
    assert!(s.contains("disk \"vdb\" has no BIOS boot partition (type EF02)"), "{s}");
    let s = err(Case::new("seed-regular", r#"{ grub = { enable = true; devices = [ "/dev/sdz" ]; }; }"#));
    assert!(s.contains("boot.loader.grub.devices names /dev/sdz"), "{s}");
    let s = err(Case::new("seed-regular", SYSTEMD_BOOT).arg("noBootJson", "true"));
    assert!(s.contains("has no boot.json"), "{s}");
}

/// The flake's outputs are wired (evaluated against the stub pkgs; the package itself needs
/// nixpkgs' rustPlatform and is only parsed), and the NixOS module adds
/// `system.build.mkdiskImages`.
#[test]
fn flake_and_module_are_wired() {
    if !have_nix("nix flake wiring") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let r = repo();
    let expr = format!(
        r#"let
  stub = import {r}/tests/nix/stub-pkgs.nix {{ grubRoot = /nonexistent; systemdBootEfi = /nonexistent; }};
  nixpkgs = {{ legacyPackages = {{ x86_64-linux = stub; aarch64-linux = stub; }}; }};
  self = (import {r}/flake.nix).outputs {{ inherit self nixpkgs; }};
  module = import self.nixosModules.default {{ config = {{ }}; pkgs = stub; }};
  devices = builtins.fromJSON (builtins.readFile {r}/../shared/disko/luks.json);
in {{
  top = builtins.attrNames self;
  lib = builtins.attrNames self.lib;
  packages = builtins.attrNames self.packages;
  x86 = builtins.attrNames self.packages.x86_64-linux;
  apps = self.apps.x86_64-linux.default.type;
  overlay = builtins.isFunction self.overlays.default;
  diskImages = builtins.isFunction self.lib.diskImages;
  layout = self.lib.layoutJSON devices == builtins.toJSON devices;
  module = builtins.attrNames module.system.build;
}}"#,
        r = r.display()
    );
    let mut cmd = nix_command("nix-instantiate");
    let o = cmd.arg("--store").arg(&store).args(["--eval", "--strict", "--json", "-E", &expr]).output().unwrap();
    assert_ok("nix-instantiate flake", &o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = serde_json::json!({
        "top": ["apps", "lib", "nixosModules", "overlays", "packages"],
        "lib": ["diskImages", "layoutJSON"],
        "packages": ["aarch64-linux", "x86_64-linux"],
        "x86": ["default", "mkdisk"],
        "apps": "app",
        "overlay": true,
        "diskImages": true,
        "layout": true,
        "module": ["mkdiskImages"],
    });
    assert_eq!(v, want);
    for f in ["nix/package.nix", "nix/lib.nix", "nix/module.nix", "flake.nix"] {
        let o = nix_command("nix-instantiate").arg("--store").arg(&store).arg("--parse").arg(r.join(f)).output();
        assert_ok(&format!("nix-instantiate --parse {f}"), &o.unwrap());
    }
}

/// closureInfo of the stub pkgs (structured attrs, exportReferencesGraph, closure-info.py) is
/// byte for byte what testkit's `make_closure_info` writes from `nix-store -q` for the toplevel.
#[test]
fn closure_info_matches_nix() {
    let Some(e) = env("nix lib closureInfo") else { return };
    let store = e.tmp.path().join("store");
    let case = Case::new("seed-regular", SYSTEMD_BOOT);
    let toplevel = built_attr(&store, &e, &case, "toplevel");
    let ours = store.join(built_attr(&store, &e, &case, "closureInfo").trim_start_matches('/'));
    let want = e.tmp.path().join("closure-want");
    let paths = make_closure_info(&store, &toplevel, &want);
    assert!(paths.len() >= 4, "{paths:?}");
    for f in ["store-paths", "registration", "total-nar-size"] {
        assert_eq!(
            std::fs::read_to_string(ours.join(f)).unwrap(),
            std::fs::read_to_string(want.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// The NixOS module and the flake's `lib.diskImages` give the same derivation, with mkdisk from
/// `nix/package.nix` (the stub's rustPlatform gives the binary under test), and it builds the
/// same image as `nix/lib.nix` called directly.
#[test]
fn module_and_flake_build_the_same_image() {
    let Some(e) = env("nix lib module") else { return };
    let store = e.tmp.path().join("store");
    let case = Case::new("seed-impermanence", BOTH);
    let mut c = nix_command("nix-instantiate");
    c.arg("--store").arg(&store).args(["--eval", "--strict", "--json", "-E"]);
    c.arg(format!(
        "{{ ... }}@args: let x = import {} args; in {{ m = x.viaModule.drvPath; f = x.viaFlake.drvPath; \
         p = {{ inherit (x.package.rustAttrs) pname version cargoTestFlags; lock = toString x.package.rustAttrs.cargoLock.lockFile; }}; }}",
        repo().join("tests/nix/case.nix").display()
    ));
    let o = c.args(case.args(&e)).output().unwrap();
    assert_ok("nix-instantiate module/flake", &o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["m"], v["f"], "module and flake");
    assert_eq!(v["p"]["pname"], "mkdisk");
    assert_eq!(v["p"]["version"], "0.1.0");
    assert!(v["p"]["cargoTestFlags"].as_array().unwrap().contains(&serde_json::json!("--lib")), "{v}");
    assert!(v["p"]["lock"].as_str().unwrap().ends_with("/Cargo.lock"), "{v}");
    let module = store.join(built_attr(&store, &e, &case, "viaModule").trim_start_matches('/'));
    let direct = built(&store, &e, &case);
    assert_eq!(sha256_file(&module.join("main.raw")), sha256_file(&direct.join("main.raw")));
}

/// The images of the seed layouts with systemd-boot and GRUB for BIOS from the configuration
/// (BOTH) boot under QEMU (TCG): SeaBIOS → GRUB (boot.img, core.img in EF02) and OVMF →
/// systemd-boot; with GRUB for EFI (removable path) also OVMF → GRUB. The toplevel
/// holds the harness's Debian kernel and test initramfs, whose init mounts the store's btrfs
/// and lists it.
#[test]
fn images_boot_under_qemu() {
    let Some(e) = env("nix lib QEMU boot") else { return };
    let mut failures = Vec::new();
    for layout in SEEDS {
        let store = e.tmp.path().join(format!("store-boot-{layout}"));
        let n = plan_numbers(&shared(layout))("nix");
        let mountpoint = if layout == "seed-regular" { "/" } else { "/nix" };
        let params = format!(
            r#"[ "console=ttyS0" "panic=-1" "loglevel=4" "mkdisk.out=ttyS1" "mkdisk.mount=root:vda{n}:btrfs:ro" ]"#
        );
        let case = |loader| {
            Case::new(layout, loader)
                .arg("kernel", e.parts["kernel"].as_str().unwrap().to_string())
                .arg("initrd", e.initramfs.display().to_string())
                .arg("params", params.clone())
        };
        let toplevel = built_attr(&store, &e, &case(BOTH), "toplevel");
        let both = built(&store, &e, &case(BOTH)).join("main.raw");
        let grub_efi = built(&store, &e, &case(GRUB_EFI)).join("main.raw");
        let boots = [
            ("seabios-grub", both.clone(), false),
            ("ovmf-systemd-boot", both, true),
            ("ovmf-grub-efi", grub_efi, true),
        ];
        let boot_json_sha = sha256_file(&store.join(toplevel.trim_start_matches('/')).join("boot.json"));
        let store_view = |p: &str| p.strip_prefix(mountpoint.trim_end_matches('/')).unwrap_or(p).to_string();
        for (what, img, uefi) in boots {
            let what = format!("{layout}-{what}");
            let (cons, list) = qemu_boot(&e.parts, e.tmp.path(), &what, &img, uefi);
            let init_line = cons.lines().find(|l| l.contains("MKDISK-INIT start")).unwrap_or("").to_string();
            let ok = list.contains("MKDISK-END root rc=0")
                && list.contains("MKDISK-DONE")
                && init_line.contains(&format!("init={toplevel}/init"))
                && listing_sha(&list, &store_view(&format!("{toplevel}/boot.json"))).as_deref()
                    == Some(boot_json_sha.as_str())
                && listing_sha(&list, &store_view("/nix/var/nix/db/db.sqlite")).is_some()
                && (mountpoint != "/" || listing_sha(&list, "/etc/NIXOS").is_some());
            // systemd-boot passes the initrd on the command line; GRUB sets BOOT_IMAGE.
            let by_loader = if what.ends_with("systemd-boot") {
                init_line.contains("initrd=\\EFI\\nixos\\")
            } else {
                init_line.contains("BOOT_IMAGE=")
            };
            eprintln!("boot {what}: init line: {init_line}");
            if !(ok && by_loader) {
                failures.push(format!(
                    "{what}: ok={ok} by_loader={by_loader}\nconsole tail:\n{}\nlisting tail:\n{}",
                    &cons[cons.len().saturating_sub(3000)..],
                    &list[list.len().saturating_sub(1000)..]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// An aarch64 configuration builds here, on x86_64, with no emulation: lib.nix takes only
/// systemd, GRUB and `stdenv.hostPlatform` from the configuration's pkgs (a target stub whose
/// runCommand, writeText, closureInfo, callPackage and zstd throw) and every builder from
/// `buildPkgs`; the image gets the aarch64 boot loader names (`--arch aarch64` from
/// hostPlatform, agreeing with the toplevel's bootspec), through lib.nix and the flake alike.
#[test]
fn an_aarch64_configuration_builds_on_this_machine() {
    let Some(e) = env("nix lib aarch64") else { return };
    let store = e.tmp.path().join("store");
    let case = Case::new("seed-regular", SYSTEMD_BOOT).arg("targetSystem", r#""aarch64-linux""#);
    let out = built(&store, &e, &case);
    let img = out.join("main.raw");
    let esp = partition("seed-regular", "ESP").0;
    assert!(fat_has(&img, esp, "/EFI/BOOT/BOOTAA64.EFI"), "BOOTAA64.EFI");
    assert!(fat_has(&img, esp, "/EFI/systemd/systemd-bootaa64.efi"), "systemd-bootaa64.efi");
    assert!(!fat_has(&img, esp, "/EFI/BOOT/BOOTX64.EFI"), "no x86_64 name");
    let flake = store.join(built_attr(&store, &e, &case, "viaFlake").trim_start_matches('/'));
    assert_eq!(sha256_file(&flake.join("main.raw")), sha256_file(&img), "the flake's lib with buildPkgs");
}
