//! The test kit's own fixtures against their oracles: `nar` against `nix-store --dump` (where
//! Nix runs here), the byte generators against what their callers rely on.

use std::os::unix::fs::PermissionsExt as _;

use mkdisk_testkit::grub::{fake_core, fake_grub_lib};
use mkdisk_testkit::nar::{closure_info, nar};
use mkdisk_testkit::{have_nix, noise, poisoned_file, POISON};

#[test]
fn noise_is_deterministic_and_incompressible_looking() {
    assert_eq!(noise(4096, 7), noise(4096, 7));
    assert_eq!(noise(100, 7)[..], noise(4096, 7)[..100]);
    assert_ne!(noise(4096, 7), noise(4096, 8));
    let n = noise(1 << 16, 1);
    let mut seen = [0usize; 256];
    for &b in &n {
        seen[usize::from(b)] += 1;
    }
    // Every byte value, none far from 256 times in 65,536.
    assert!(seen.iter().all(|&c| (128..=384).contains(&c)), "{seen:?}");
}

#[test]
fn poisoned_file_is_poison_throughout() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.img");
    std::fs::write(&p, b"longer than the poisoned file will be, so truncate must happen").unwrap();
    drop(poisoned_file(&p, (3 << 20) + 5));
    let b = std::fs::read(&p).unwrap();
    assert_eq!(b.len(), (3 << 20) + 5);
    assert!(b.iter().all(|&x| x == POISON));
    drop(poisoned_file(&p, 10));
    assert_eq!(std::fs::read(&p).unwrap(), [POISON; 10]);
}

#[test]
fn fake_grub_inputs_are_shaped_like_grubs() {
    let c = fake_core(53);
    assert_eq!(c.len(), 53 * 512 - 100);
    assert_eq!(&c[0x1f4..0x200], &[2, 0, 0, 0, 0, 0, 0, 0, 52, 0, 0x20, 0x08]);
    let tmp = tempfile::tempdir().unwrap();
    let pc = fake_grub_lib(tmp.path()).join("i386-pc");
    assert_eq!(&std::fs::read(pc.join("boot.img")).unwrap()[0x1fe..], &[0x55, 0xAA]);
    let diskboot = std::fs::read(pc.join("diskboot.img")).unwrap();
    assert_eq!(&diskboot[0x1f4..0x200], &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x08]);
    let kernel = std::fs::read(pc.join("kernel.img")).unwrap();
    assert_eq!(&kernel[..6], b"\x7fELF\x01\x01");
    assert_eq!(&kernel[16..20], &[2, 0, 3, 0], "ET_EXEC, EM_386");
    assert!(pc.join("btrfs.mod").is_file() && pc.join("moddep.lst").is_file());
}

/// Our NAR of a directory with every entry kind is byte for byte what `nix-store --dump` writes.
#[test]
fn nar_matches_nix_store_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("p");
    std::fs::create_dir_all(d.join("sub/empty-dir")).unwrap();
    std::fs::write(d.join("b-file"), "hello\n").unwrap();
    std::fs::write(d.join("a-exe"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(d.join("a-exe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("sub/seven-b"), "1234567").unwrap();
    std::os::unix::fs::symlink("b-file", d.join("link")).unwrap();
    let mut ours = Vec::new();
    nar(&d, &mut ours);
    assert_eq!(ours.len() % 8, 0);
    // closureInfo of the path as a store of its own.
    closure_info(&tmp.path().join("ci"), tmp.path(), &["/nix/store/p"], &[]);
    let reg = std::fs::read_to_string(tmp.path().join("ci/registration")).unwrap();
    assert!(reg.starts_with("/nix/store/p\nsha256:") && reg.ends_with(&format!("\n{}\n\n0\n", ours.len())), "{reg}");
    if !have_nix("nar_matches_nix_store_dump (nix-store --dump)") {
        return;
    }
    let o = mkdisk_testkit::nix_command("nix-store")
        .arg("--store")
        .arg(tmp.path().join("store"))
        .arg("--dump")
        .arg(&d)
        .output()
        .unwrap();
    mkdisk_testkit::assert_ok("nix-store --dump", &o);
    assert!(o.stdout == ours, "NAR differs from nix-store --dump ({} vs {} bytes)", ours.len(), o.stdout.len());
}
