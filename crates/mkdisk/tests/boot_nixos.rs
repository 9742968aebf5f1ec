//! Proof by the kernel for NixOS-shaped images, where `mkdisk build --system` installs the boot
//! loaders itself: QEMU (TCG) boots through the firmware and the boot loader mkdisk wrote, the
//! guest's `/init` mounts every partition read-only and lists it, and the listing is compared
//! with the source tree plus what `--system` adds (the guest side and the parts: `guest/`).
//! Where QEMU or GRUB cannot be had the tests print `SKIPPED` loudly and return; with `CI=true`
//! they fail instead.
//!
//! - `seabios_boots_grub_from_ef02` and `ovmf_boots_the_systemd_boot_mkdisk_installed`: one
//!   image (`mkdisk build --system --grub --systemd-boot`) boots through SeaBIOS → GRUB
//!   (boot.img in the MBR, core.img in EF02, grub.cfg on the ESP) and through OVMF → the
//!   systemd-boot mkdisk installed; the guest reads every partition.
//! - `seabios_boots_grub_from_btrfs_subvolumes`: GRUB reads grub.cfg and the kernel from btrfs
//!   subvolumes (`/root` at `/`, `/nix` with the closure).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mkdisk_testkit::nar::closure_info;

mod common;
mod guest;

use common::{build_args, grub_boot_args, mkdisk, plan_numbers, system_args};
use guest::{
    boot_or_skip, chmod, compare_tree, init_line, kernel_args, parts, report, skip, tail, write, Boot, Entry, Mount,
    Parts, S_IFDIR, S_IFMT, S_IFREG,
};

/// An image built with `mkdisk build --system`: a bootspec whose kernel and initrd are the test's,
/// systemd-boot on the ESP (`--systemd-boot`) and GRUB i386-pc in the EF02 partition with
/// `/boot/grub` on the ESP (`--grub` with Debian's GRUB modules, core.img made by mkdisk).
struct NixosImage {
    /// The image's own directory (spec, source, store, GRUB inputs, the boots' logs).
    dir: PathBuf,
    src: PathBuf,
    image: PathBuf,
    mounts: Vec<Mount>,
    kernel_sha256: String,
    systemd_boot_sha256: String,
}

impl NixosImage {
    /// The image `image` built in `dir` from `src` with `--system`, booting the parts' kernel,
    /// and with the parts' systemd-boot where `--systemd-boot` installed it.
    fn new(
        p: &Parts,
        dir: PathBuf,
        src: PathBuf,
        image: PathBuf,
        mounts: Vec<Mount>,
        systemd_boot: bool,
    ) -> NixosImage {
        NixosImage {
            dir,
            src,
            image,
            mounts,
            kernel_sha256: p.sha256("kernel"),
            systemd_boot_sha256: if systemd_boot { p.sha256("systemd_boot") } else { String::new() },
        }
    }
}

/// A fake NixOS system's store paths: the parts' kernel in `kernel/bzImage`, its initramfs
/// in `initrd/initrd`, and a toplevel with `boot.json` and `init`.
struct FakeSystem {
    kernel: &'static str,
    initrd: &'static str,
    toplevel: &'static str,
}

impl FakeSystem {
    /// Writes the system into the host store `store` (`.../nix/store`): a bootspec labelled
    /// `label` whose kernel parameters name `mounts` for the guest's listing.
    fn write(&self, p: &Parts, store: &Path, mounts: &[Mount], label: &str) {
        let FakeSystem { kernel, initrd, toplevel } = self;
        let host = |p: &str| store.join(p.trim_start_matches("/nix/store/"));
        write(&host(kernel).join("bzImage"), &fs::read(p.path("kernel")).unwrap());
        write(&host(initrd).join("initrd"), &fs::read(&p.initrd).unwrap());
        let bootspec = serde_json::json!({"org.nixos.bootspec.v1": {
            "init": format!("{toplevel}/init"),
            "initrd": format!("{initrd}/initrd"),
            "kernel": format!("{kernel}/bzImage"),
            "kernelParams": kernel_args(mounts).split(' ').collect::<Vec<_>>(),
            "label": label,
            "system": "x86_64-linux",
            "toplevel": toplevel,
        }});
        write(&host(toplevel).join("boot.json"), bootspec.to_string().as_bytes());
        write(&host(toplevel).join("init"), b"#!/bin/sh\n");
    }
}

/// Debian's GRUB library directory (`usr/lib/grub`, holding `i386-pc/`) from the parts:
/// `--grub`, from which mkdisk assembles core.img for the filesystem holding `/boot/grub`.
fn grub_lib(p: &Parts) -> PathBuf {
    Path::new(p.path("grub_i386_pc")).parent().unwrap().to_path_buf()
}

/// `mkdisk build` of `spec` with the tree `src` into `dir/out`, `args` adding the system, its
/// store and the boot loaders, GRUB set up for a test boot; `what` names the build in a failure.
fn build_with_system(dir: &Path, spec: &Path, src: &Path, args: &[&str], grub: &Path, what: &str) -> PathBuf {
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let root = ["--root", src.to_str().unwrap()];
    let o = mkdisk(&[&build_args(spec, &out)[..], &root, args, &grub_boot_args(grub)].concat());
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    out.join("main.raw")
}

/// What `--system` adds beyond the source tree (boot loaders, kernels, profiles).
const NIXOS_ADDED: &[(&str, &str)] = &[
    ("esp", "./EFI"),
    ("esp", "./loader"),
    ("esp", "./grub"),
    ("esp", "./kernels"),
    ("root", "./nix"),
    ("root", "./etc/NIXOS"),
];

/// A fresh directory `CARGO_TARGET_TMPDIR/boot-NAME`, and the source tree in it with
/// `/etc/hostname`.
fn fresh_src(name: &str) -> (PathBuf, PathBuf) {
    let dir = guest::fresh_dir(&format!("boot-{name}"));
    let src = dir.join("src");
    write(&src.join("etc/hostname"), format!("{name}-boot-test\n").as_bytes());
    (dir, src)
}

fn build_nixos_image(p: &Parts) -> Result<NixosImage, String> {
    let (dir, src) = fresh_src("nixos");
    write(&src.join("srv/hello.txt"), b"hello from the NixOS-shaped image\n");
    symlink("hello.txt", src.join("srv/hello-link")).unwrap();
    fs::hard_link(src.join("srv/hello.txt"), src.join("srv/hello-hard")).unwrap();
    write(&src.join("boot/notes/readme.txt"), b"ESP content next to the boot loaders\n");

    let spec = serde_json::json!({"disk": {"main": {"imageSize": "384M", "content": {"type": "gpt", "partitions": {
        "boot": {"size": "1M", "type": "EF02", "priority": 0},
        "ESP": {"size": "96M", "type": "EF00",
                "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}});
    let spec_path = dir.join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let number = plan_numbers(&spec_path);
    let mount = |id: &str, part: &str, fs: &str, mp: &str| Mount::new(id, format!("vda{}", number(part)), fs, "ro", mp);
    let mounts = vec![mount("esp", "ESP", "vfat", "/boot"), mount("root", "root", "ext4", "/")];

    // A store with the kernel, the initramfs and a toplevel holding boot.json.
    let store = dir.join("store/nix/store");
    let system = FakeSystem {
        kernel: "/nix/store/s0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1",
        initrd: "/nix/store/0zk2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1",
        toplevel: "/nix/store/1ab2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-boottest-24.05",
    };
    system.write(p, &store, &mounts, "NixOS 24.05 (Linux 6.1, mkdisk boot test)");

    // GRUB: /boot is the ESP; mkdisk makes core.img with fat and the prefix (,gptN)/grub.
    let grub = grub_lib(p);
    let args =
        ["--system", system.toplevel, "--store-dir", store.to_str().unwrap(), "--systemd-boot", p.path("systemd_boot")];
    let image = build_with_system(&dir, &spec_path, &src, &args, &grub, "mkdisk build --system");
    Ok(NixosImage::new(p, dir, src, image, mounts, true))
}

/// The image of [`build_nixos_image`], built once per run of this binary; `None` (after a loud
/// skip) where GRUB cannot be had.
fn nixos_image(p: &'static Parts) -> Option<&'static NixosImage> {
    static N: OnceLock<Result<NixosImage, String>> = OnceLock::new();
    match N.get_or_init(|| build_nixos_image(p)) {
        Ok(n) => Some(n),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// The guest read the NixOS image: every source file, plus the boot loader files mkdisk added.
fn check_nixos_boot(n: &NixosImage, b: &Boot, what: &str) {
    let problems = compare_tree(&n.src, &n.mounts, b, &n.mounts, NIXOS_ADDED, None);
    assert!(problems.is_empty(), "{}\nconsole tail:\n{}", report(what, &problems), tail(&b.console));
    let esp = &b.mounts["esp"].1;
    let sha =
        |p: &str| esp.get(p).and_then(|e| e.sha256.clone()).unwrap_or_else(|| panic!("{what}: no {p} on the ESP"));
    assert_eq!(sha("./EFI/BOOT/BOOTX64.EFI"), n.systemd_boot_sha256, "{what}: BOOTX64.EFI");
    assert!(esp.contains_key("./grub/grub.cfg"), "{what}: no grub.cfg");
    let kernels: Vec<&String> =
        esp.keys().filter(|k| k.starts_with("./kernels/") || k.starts_with("./EFI/nixos/")).collect();
    for k in &kernels {
        if k.contains("linux-6.1-bzImage") {
            assert_eq!(sha(k), n.kernel_sha256, "{what}: kernel copy {k}");
        }
    }
    assert!(
        kernels.iter().filter(|k| k.contains("linux-6.1-bzImage")).count() >= 2,
        "{what}: kernel copies {kernels:?}"
    );
}

/// The NixOS-shaped image and one boot of it with `firmware` (`tag` names the logs); `None`
/// (after a loud skip) where the parts or QEMU cannot be had.
fn boot_nixos_image(firmware: &str, tag: &str) -> Option<(&'static NixosImage, Boot)> {
    let p = parts()?;
    let n = nixos_image(p)?;
    Some((n, boot_or_skip(p, &n.dir, &[&n.image], &n.mounts, firmware, tag)?))
}

#[test]
fn seabios_boots_grub_from_ef02() {
    let Some((n, b)) = boot_nixos_image("bios", "seabios-grub") else { return };
    // GRUB puts BOOT_IMAGE= first; the kernel came from /boot/kernels on the ESP.
    let init_line = init_line(&b, "SeaBIOS + GRUB");
    assert!(init_line.contains("BOOT_IMAGE=") && init_line.contains("/kernels/"), "not started by GRUB: {init_line}");
    check_nixos_boot(n, &b, "SeaBIOS → GRUB boot");
}

#[test]
fn ovmf_boots_the_systemd_boot_mkdisk_installed() {
    let Some((n, b)) = boot_nixos_image("ovmf", "ovmf-nixos") else { return };
    let init_line = init_line(&b, "OVMF");
    assert!(init_line.contains("initrd=\\EFI\\nixos\\"), "not started by the installed systemd-boot: {init_line}");
    check_nixos_boot(n, &b, "OVMF → installed systemd-boot");
}

/// A NixOS-shaped image with a btrfs root: subvolumes `/root` (at `/`) and `/nix`, the closure
/// (kernel, initrd, toplevel) in `/nix/store`, and GRUB reading `/boot/grub` and the kernel from
/// the btrfs subvolumes (core.img with `btrfs`, prefix `(,gptN)/root/boot/grub`).
fn build_btrfs_grub_image(p: &Parts) -> Result<NixosImage, String> {
    let (dir, src) = fresh_src("nixos-btrfs");
    write(&src.join("var/lib/state.txt"), b"state on the root subvolume\n");
    symlink("state.txt", src.join("var/lib/state-link")).unwrap();
    // The closure: kernel, initrd and toplevel.
    let system = FakeSystem {
        kernel: "/nix/store/a0m1xzf0b4k3j3l7gqk4c6m2qzk7dxy8-linux-6.1",
        initrd: "/nix/store/b0k2yq6j6v5w7q0n2r4c1l6p8x9a3b4c-initrd-linux-6.1",
        toplevel: "/nix/store/c1b2cd3fg4hi5jk6lm7np8qr9sv0wxyz-nixos-system-btrfstest-24.05",
    };
    let spec = serde_json::json!({"disk": {"main": {"imageSize": "384M", "content": {"type": "gpt", "partitions": {
        "boot": {"size": "1M", "type": "EF02", "priority": 0},
        "root": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
            "/root": {"mountpoint": "/"},
            "/nix": {"mountpoint": "/nix", "mountOptions": ["compress=zstd", "noatime"]}}}}}}}}});
    let spec_path = dir.join("spec.json");
    write(&spec_path, spec.to_string().as_bytes());
    let number = plan_numbers(&spec_path);
    let root = number("root");
    let mount = |id: &str, opts: &str, mp: &str| Mount::new(id, format!("vda{root}"), "btrfs", opts, mp);
    let mounts = vec![mount("root", "ro,subvol=/root", "/"), mount("nix", "ro,subvol=/nix", "/nix")];

    let store = dir.join("store/nix/store");
    system.write(p, &store, &mounts, "NixOS 24.05 (Linux 6.1, btrfs boot test)");
    let FakeSystem { kernel, initrd, toplevel } = system;
    let host = |p: &str| store.join(p.trim_start_matches("/nix/store/"));
    chmod(&host(toplevel).join("init"), 0o755);
    symlink(format!("{kernel}/bzImage"), host(toplevel).join("kernel")).unwrap();
    symlink(format!("{initrd}/initrd"), host(toplevel).join("initrd")).unwrap();
    let closure = dir.join("closure");
    closure_info(&closure, &store, &[kernel, initrd, toplevel], &[(toplevel, &[kernel, initrd, toplevel])]);

    // core.img with btrfs and the prefix (,gptN)/root/boot/grub, made by mkdisk.
    let grub = grub_lib(p);
    let args = system_args(&closure, &store, toplevel);
    let image = build_with_system(&dir, &spec_path, &src, &args, &grub, "mkdisk build --system (btrfs)");
    // The closure is part of the expected tree: /nix/store as the host store holds it.
    let nix_src = src.join("nix/store");
    fs::create_dir_all(&nix_src).unwrap();
    for p in [kernel, initrd, toplevel] {
        let name = p.trim_start_matches("/nix/store/");
        let st = Command::new("cp").arg("-a").arg(store.join(name)).arg(&nix_src).status().unwrap();
        assert!(st.success());
    }
    Ok(NixosImage::new(p, dir, src, image, mounts, false))
}

#[test]
fn seabios_boots_grub_from_btrfs_subvolumes() {
    let Some(p) = parts() else { return };
    static N: OnceLock<Result<NixosImage, String>> = OnceLock::new();
    let n = match N.get_or_init(|| build_btrfs_grub_image(p)) {
        Ok(n) => n,
        Err(why) => return skip(why),
    };
    let Some(b) = boot_or_skip(p, &n.dir, &[&n.image], &n.mounts, "bios", "seabios-grub-btrfs") else { return };
    let init_line = init_line(&b, "SeaBIOS + GRUB (btrfs)");
    // The kernel is read by GRUB from the /nix subvolume: BOOT_IMAGE=(hd0,gptN)/nix/store/….
    assert!(init_line.contains("BOOT_IMAGE=") && init_line.contains("/nix/store/"), "not started by GRUB: {init_line}");
    // Beyond the source: the Nix DB and profiles (nix), /etc/NIXOS, /boot/grub (root).
    let added: &[(&str, &str)] = &[("nix", "./var"), ("root", "./boot"), ("root", "./etc/NIXOS"), ("root", "./nix")];
    // The store as Nix keeps it: /nix/store 1775 root:nixbld (30000); in store paths, dirs 0555,
    // files 0444 or 0555, mtime 1.
    let canonical = |id: &str, path: &str, e: &mut Entry| {
        if id != "nix" {
            return;
        }
        if path == "./store" {
            e.mode = S_IFDIR | 0o1775;
            e.gid = 30000;
        } else if path.starts_with("./store/") {
            e.mtime = 1;
            match e.mode & S_IFMT {
                S_IFDIR => e.mode = S_IFDIR | 0o555,
                S_IFREG => e.mode = S_IFREG | if e.mode & 0o100 != 0 { 0o555 } else { 0o444 },
                _ => {}
            }
        }
    };
    let problems = compare_tree(&n.src, &n.mounts, &b, &n.mounts, added, Some(&canonical));
    assert!(
        problems.is_empty(),
        "{}\nconsole tail:\n{}",
        report("SeaBIOS → GRUB (btrfs)", &problems),
        tail(&b.console)
    );
    assert!(b.mounts["root"].1.contains_key("./boot/grub/grub.cfg"), "no /boot/grub/grub.cfg on the root subvolume");
    let k = b.mounts["nix"].1.iter().find(|(p, _)| p.ends_with("-linux-6.1/bzImage")).map(|(_, e)| e.sha256.clone());
    assert_eq!(k.flatten().as_deref(), Some(n.kernel_sha256.as_str()), "kernel in /nix/store");
}
