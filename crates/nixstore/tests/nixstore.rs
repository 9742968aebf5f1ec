//! mkdisk-nixstore: registration parsing, the Nix database against what Nix 2.8 creates
//! (Debian `nix-bin`, run hermetically: see `mkdisk_testkit::nix_command`; a loud SKIP without
//! it, a failure with `MKDISK_REQUIRE_NIX` or `CI=true`), DB reproducibility, store metadata,
//! bootspec, systemd-boot files, grub.cfg and the GRUB embedding offsets of boot.md §4.3.

use std::path::{Path, PathBuf};
use std::process::Command;

use mkdisk_nixstore::{
    add_closure, add_nix_db, add_profiles, grub_cfg, grub_embed, nix_db, resolve_store_path, systemd_boot_files,
    Bootspec, ClosureInfo, GrubCfgOptions, NixError, Registration, SystemdBootOptions,
};
use mkdisk_testkit::grub::fake_core;
use mkdisk_testkit::have_nix;
use mkdisk_testkit::nix::{nix_build_out, nix_ok, nix_ok_stdin};
use mkdisk_tree::{Kind, Meta, Tree};

const H1: &str = "sha256:1av6k5vjhy68xrphrsn96pcsqrcrh8f5mg814y0jm0dl8rs316gq";
const H1_HEX: &str = "f899307446b4812a812701bd5a1c829965acd935c9ea0c6feec87828779966ab";
const TOP: &str = "/nix/store/54pzvr0zg0n2w4y9kj93p1l603kf2gvl-top";
const DEP: &str = "/nix/store/5qn9lblnzjgza2vb23kwaclrcxnska2z-dep";
const A: &str = "/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a";

/// The doc's closureInfo-style example (nix-store.md §2).
fn example_registration() -> String {
    format!(
        "{TOP}\nsha256:068ss38ly7bc5lv2cqa5h496hvvcamp4ddx36k5pn3xr2iw7v47q\n1200\n\n2\n{DEP}\n{A}\n\
         {DEP}\nsha256:1vagcg4r6l6x6w0lj246c0cg1mvd3h5rsaizhfw68mw4sxpdh6cp\n128\n\n0\n\
         {A}\n{H1}\n1088\n\n0\n"
    )
}

#[test]
fn registration_parses_the_doc_example() {
    let r = Registration::parse(&example_registration()).unwrap();
    assert_eq!(r.paths.len(), 3);
    assert_eq!(r.paths[0].path, TOP);
    assert_eq!(r.paths[0].references, vec![DEP.to_string(), A.to_string()]);
    assert_eq!(r.paths[2].nar_size, 1088);
    let hex: String = r.paths[2].nar_hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, H1_HEX);
    assert_eq!(r.paths[0].deriver, None);
}

#[test]
fn registration_edge_cases() {
    // Empty (closureInfo of no roots), trailing newlines, no final newline.
    assert!(Registration::parse("").unwrap().paths.is_empty());
    assert!(Registration::parse("\n\n").unwrap().paths.is_empty());
    let one = format!("{A}\n{H1}\n1088\n\n0");
    assert_eq!(Registration::parse(&one).unwrap().paths.len(), 1);
    assert_eq!(Registration::parse(&format!("{one}\n\n\n")).unwrap().paths.len(), 1);
    // Every hash rendering, a deriver, a self reference.
    for h in [
        H1.to_string(),
        format!("sha256:{H1_HEX}"),
        H1_HEX.to_string(),
        "sha256-+JkwdEa0gSqBJwG9WhyCmWWs2TXJ6gxv7sh4KHeZZqs=".to_string(),
    ] {
        let r = Registration::parse(&format!("{A}\n{h}\n1088\n{A}.drv\n1\n{A}\n")).unwrap();
        let hex: String = r.paths[0].nar_hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, H1_HEX, "{h}");
        assert_eq!(r.paths[0].deriver.as_deref(), Some(format!("{A}.drv").as_str()));
        assert_eq!(r.paths[0].references, vec![A.to_string()]);
    }
    // Malformed records name their line.
    let line = |text: &str| match Registration::parse(text) {
        Err(NixError::Registration { line, .. }) => line,
        other => panic!("{text:?}: {other:?}"),
    };
    assert_eq!(line(&format!("{A}\nsha256:nothex\n1\n\n0\n")), 2);
    assert_eq!(line(&format!("{A}\n{H1}\nbig\n\n0\n")), 3);
    assert_eq!(line(&format!("{A}\n{H1}\n1\n\nx\n")), 5);
    assert_eq!(line(&format!("{A}\n{H1}\n1\n\n3\n{A}\n")), 5);
    assert_eq!(line(&format!("{A}\n{H1}\n1088\n")), 4);
    assert_eq!(line(&format!("{A}\n{H1}\n1\n\n1\n/tmp/x\n")), 6);
    assert!(matches!(Registration::parse("/tmp/x\n"), Err(NixError::NotAStorePath { .. })));
    assert!(matches!(
        Registration::parse(&format!("{one}\n{one}\n")),
        Err(NixError::DuplicatePath { path }) if path == A
    ));
}

#[test]
fn closure_info_cross_checks() {
    let reg = example_registration();
    let sp = format!("{TOP}\n{A}\n{DEP}\n");
    let c = ClosureInfo::from_texts(&sp, &reg).unwrap();
    assert_eq!(c.store_paths, vec![TOP.to_string(), DEP.to_string(), A.to_string()]);
    let e = ClosureInfo::from_texts(&format!("{TOP}\n{A}\n"), &reg).unwrap_err();
    assert!(e.to_string().contains(DEP) && e.to_string().contains("registration disagrees"), "{e}");
    let e = ClosureInfo::from_texts(&format!("{sp}/nix/store/x-extra\n"), &reg).unwrap_err();
    assert!(matches!(e, NixError::RegistrationMismatch { present_in: "store-paths", .. }), "{e}");
    // A reference outside the closure.
    let bad = reg.replace(&format!("2\n{DEP}\n{A}\n"), "1\n/nix/store/zzz-elsewhere\n");
    let e = ClosureInfo::from_texts(&sp, &bad).unwrap_err();
    assert!(matches!(e, NixError::UnknownReference { .. }), "{e}");
    assert!(ClosureInfo::from_texts("", "").unwrap().store_paths.is_empty());
}

/// sqlite_master rows, ValidPaths rows (without id and registrationTime), Refs as path pairs.
type DbRows = (Vec<(String, String, String, String)>, Vec<Vec<Option<String>>>, Vec<(String, String)>);

fn db_rows(db: &Path) -> DbRows {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("select type, name, tbl_name, coalesce(sql, '') from sqlite_master order by name").unwrap();
    let schema = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
    let schema = schema.collect::<Result<Vec<_>, _>>().unwrap();
    let mut st = c
        .prepare(
            "select path, hash, deriver, cast(narSize as text), cast(ultimate as text), sigs, ca \
             from ValidPaths order by path",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| (0..7).map(|i| r.get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut st = c
        .prepare(
            "select a.path, b.path from Refs join ValidPaths a on a.id = referrer \
             join ValidPaths b on b.id = reference order by 1, 2",
        )
        .unwrap();
    let refs = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    (schema, rows, refs)
}

#[test]
fn db_is_reproducible_and_well_formed() {
    let r = Registration::parse(&example_registration()).unwrap();
    let a = nix_db(&r, 1_700_000_000).unwrap();
    let b = nix_db(&r, 1_700_000_000).unwrap();
    assert_eq!(a, b);
    // Input order does not matter: rows are sorted by path.
    let mut rev = r.clone();
    rev.paths.reverse();
    assert_eq!(nix_db(&rev, 1_700_000_000).unwrap(), a);
    assert_ne!(nix_db(&r, 1).unwrap(), a);
    assert_eq!(&a[..16], b"SQLite format 3\0");
    assert_eq!(&a[16..18], &[0x10, 0x00], "page size 4096");
    assert_eq!(&a[18..20], &[1, 1], "rollback journal, not WAL");
    assert_eq!(a.len() % 4096, 0);

    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("db.sqlite");
    std::fs::write(&p, &a).unwrap();
    let (_, rows, refs) = db_rows(&p);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2][0].as_deref(), Some(A));
    assert_eq!(rows[2][1].as_deref(), Some(format!("sha256:{H1_HEX}").as_str()));
    assert_eq!(rows[2][3].as_deref(), Some("1088"));
    assert!(rows.iter().all(|r| r[2].is_none() && r[4].is_none() && r[5].is_none() && r[6].is_none()));
    assert_eq!(refs, vec![(TOP.to_string(), DEP.to_string()), (TOP.to_string(), A.to_string())]);
    let c = rusqlite::Connection::open(&p).unwrap();
    let ok: String = c.query_row("pragma integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let fk: i64 = c.query_row("select count(*) from pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
    assert_eq!(fk, 0);
    let t: i64 = c.query_row("select distinct registrationTime from ValidPaths", [], |r| r.get(0)).unwrap();
    assert_eq!(t, 1_700_000_000);
}

/// Our DB equals what Nix 2.8 makes from the same registration with `--load-db`: the same
/// schema objects with the same SQL text, the same rows (but registrationTime) and refs.
#[test]
fn db_matches_nix_load_db() {
    if !have_nix("the Nix DB oracle test (db_matches_nix_load_db)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("store");
    // Real paths with references, a self reference and a deriver.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/x"), "x").unwrap();
    let a = nix_ok(&s, &["--add", src.join("d").to_str().unwrap()]).trim().to_string();
    let expr = format!(
        r#"let a = builtins.storePath "{a}"; in builtins.derivation {{ name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "export PATH=/bin:/usr/bin; mkdir $out; echo ${{a}} > $out/a; echo $out > $out/self" ]; }}"#
    );
    let top = nix_build_out(tmp.path(), &s, "t.nix", &expr);
    // The registration with derivers (dump-db prints bare hex hashes).
    let reg_text = nix_ok(&s, &["--dump-db", &top, &a]);
    let reg = Registration::parse(&reg_text).unwrap();
    assert!(reg.paths.iter().any(|p| p.references.contains(&p.path)), "a self reference: {reg_text}");
    let ours = tmp.path().join("ours.sqlite");
    std::fs::write(&ours, nix_db(&reg, 1).unwrap()).unwrap();
    // Nix's own: a fresh store loaded from the same registration.
    let fresh = tmp.path().join("fresh");
    let _ = nix_ok_stdin(&fresh, &["--load-db"], reg_text.as_bytes());
    let theirs = fresh.join("nix/var/nix/db/db.sqlite");
    let (s1, r1, f1) = db_rows(&ours);
    let (s2, r2, f2) = db_rows(&theirs);
    assert_eq!(s1, s2, "schema objects and their SQL");
    assert_eq!(r1, r2, "ValidPaths rows");
    assert_eq!(f1, f2, "Refs");
    assert_eq!(std::fs::read(fresh.join("nix/var/nix/db/schema")).unwrap(), b"10");
    // And Nix reads ours: put it into a copy of the store and verify.
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(copy.join("nix/var/nix/db")).unwrap();
    assert!(Command::new("cp").arg("-a").arg(s.join("nix/store")).arg(copy.join("nix/")).status().unwrap().success());
    std::fs::copy(&ours, copy.join("nix/var/nix/db/db.sqlite")).unwrap();
    std::fs::write(copy.join("nix/var/nix/db/schema"), "10").unwrap();
    let _ = nix_ok(&copy, &["--verify", "--check-contents"]);
    let mut q: Vec<String> = nix_ok(&copy, &["-qR", &top]).lines().map(str::to_string).collect();
    q.sort();
    let mut want = vec![a.clone(), top.clone()];
    want.sort();
    assert_eq!(q, want);
}

fn poison_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    let a = store.join("6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::write(a.join("file"), "f").unwrap();
    std::fs::write(a.join("exe"), "#!/bin/sh\n").unwrap();
    Command::new("chmod").arg("0751").arg(a.join("exe")).status().unwrap();
    Command::new("chmod").arg("0600").arg(a.join("file")).status().unwrap();
    Command::new("chmod").arg("4755").arg(a.join("sub")).status().unwrap();
    std::os::unix::fs::symlink("file", a.join("link")).unwrap();
    std::fs::write(store.join("5qn9lblnzjgza2vb23kwaclrcxnska2z-dep"), "dep").unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/5qn9lblnzjgza2vb23kwaclrcxnska2z-dep",
        store.join("54pzvr0zg0n2w4y9kj93p1l603kf2gvl-top"),
    )
    .unwrap();
    store
}

#[test]
fn closure_gets_store_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let store = poison_store(tmp.path());
    let c = ClosureInfo::from_texts(&format!("{TOP}\n{A}\n{DEP}\n"), &example_registration()).unwrap();
    let mut tree = Tree::new(Meta::new(0o755));
    add_closure(&mut tree, &c, &store, 1234).unwrap();
    let meta = |p: &str| tree.inode(tree.lookup(p.as_bytes()).unwrap_or_else(|| panic!("{p}"))).meta.clone();
    let st = meta("/nix/store");
    assert_eq!((st.perm, st.uid, st.gid, st.mtime.sec), (0o1775, 0, 30000, 1234));
    assert_eq!(meta("/nix").perm, 0o755);
    for (p, perm) in [
        ("/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a", 0o555),
        ("/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a/file", 0o444),
        ("/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a/exe", 0o555),
        ("/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a/sub", 0o555),
        ("/nix/store/6dlbwrcpj6yqkwsvjjsa088ym021nd2w-a/link", 0o777),
        ("/nix/store/5qn9lblnzjgza2vb23kwaclrcxnska2z-dep", 0o444),
        ("/nix/store/54pzvr0zg0n2w4y9kj93p1l603kf2gvl-top", 0o777),
    ] {
        let m = meta(p);
        assert_eq!((m.perm, m.uid, m.gid, m.mtime.sec, m.mtime.nsec), (perm, 0, 0, 1, 0), "{p}");
        assert!(m.xattrs.is_empty());
    }
    let top = tree.inode(tree.lookup(TOP.as_bytes()).unwrap());
    assert!(matches!(&top.kind, Kind::Symlink(t) if t == DEP.as_bytes()));

    add_nix_db(&mut tree, &c.registration, 1, 1234).unwrap();
    add_profiles(&mut tree, TOP, 1234, true).unwrap();
    let sys = tree.inode(tree.lookup(b"/nix/var/nix/profiles/system").unwrap());
    assert!(matches!(&sys.kind, Kind::Symlink(t) if t == b"system-1-link"));
    assert!(tree.lookup(b"/etc/NIXOS").is_some());
    assert!(tree.lookup(b"/nix/var/nix/profiles/per-user/root").is_some());
    let schema = tree.inode(tree.lookup(b"/nix/var/nix/db/schema").unwrap());
    assert!(matches!(&schema.kind, Kind::File(f) if mkdisk_tree::read_file(f).unwrap() == b"10"));

    // A path missing from the host store is named.
    std::fs::remove_file(store.join("5qn9lblnzjgza2vb23kwaclrcxnska2z-dep")).unwrap();
    let mut t2 = Tree::new(Meta::new(0o755));
    let e = add_closure(&mut t2, &c, &store, 0).unwrap_err();
    assert!(matches!(&e, NixError::MissingStorePath { path, .. } if path == DEP), "{e}");
}

fn fake_system(dir: &Path) -> (PathBuf, Bootspec) {
    let store = dir.join("store");
    let top = store.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x");
    let kernel = store.join("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1");
    let initrd = store.join("cccccccccccccccccccccccccccccccc-initrd");
    let systemd = store.join("dddddddddddddddddddddddddddddddd-systemd");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::create_dir_all(&kernel).unwrap();
    std::fs::create_dir_all(systemd.join("lib/systemd/boot/efi")).unwrap();
    std::fs::write(kernel.join("bzImage"), "K").unwrap();
    std::fs::write(&initrd, "I").unwrap();
    std::fs::write(systemd.join("lib/systemd/boot/efi/systemd-bootx64.efi"), "E").unwrap();
    std::os::unix::fs::symlink("/nix/store/dddddddddddddddddddddddddddddddd-systemd", top.join("systemd")).unwrap();
    // A relative link through another path, resolved like realpath.
    std::os::unix::fs::symlink("../bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1/bzImage", top.join("kernel")).unwrap();
    let json = r#"{"org.nixos.bootspec.v1": {
        "init": "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x/init",
        "initrd": "/nix/store/cccccccccccccccccccccccccccccccc-initrd",
        "kernel": "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x/kernel",
        "kernelParams": ["quiet", "console=ttyS0"],
        "label": "NixOS 24.05 (Linux 6.1)",
        "system": "x86_64-linux",
        "toplevel": "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x"}}"#;
    std::fs::write(top.join("boot.json"), json).unwrap();
    let b = Bootspec::load("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x", &store).unwrap();
    (store, b)
}

#[test]
fn bootspec_and_systemd_boot_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, b) = fake_system(tmp.path());
    assert_eq!(b.kernel_params, vec!["quiet", "console=ttyS0"]);
    assert_eq!(b.sort_key, "nixos");
    assert_eq!(
        resolve_store_path(&store, &b.kernel).unwrap(),
        "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1/bzImage"
    );
    let files =
        systemd_boot_files(&b, &store, &SystemdBootOptions { epoch: 1_767_225_600, ..Default::default() }).unwrap();
    let names: Vec<&str> = files.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/systemd/systemd-bootx64.efi",
            "EFI/nixos/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1-bzImage.efi",
            "EFI/nixos/cccccccccccccccccccccccccccccccc-initrd.efi",
            "loader/loader.conf",
            "loader/entries/nixos-generation-1.conf",
        ]
    );
    let text = |i: usize| String::from_utf8(mkdisk_tree::read_file(&files.files[i].1).unwrap()).unwrap();
    assert_eq!(text(0), "E");
    assert_eq!(text(4), "timeout 5\ndefault nixos-generation-1.conf\nconsole-mode keep\n");
    let so = SystemdBootOptions { console_mode: "max".into(), editor: false, ..Default::default() };
    let conf = systemd_boot_files(&b, &store, &so).unwrap();
    let conf = conf.files.iter().find(|(p, _)| p == "loader/loader.conf").unwrap();
    assert_eq!(
        mkdisk_tree::read_file(&conf.1).unwrap(),
        b"timeout 5\ndefault nixos-generation-1.conf\neditor 0\nconsole-mode max\n"
    );
    assert_eq!(
        text(5),
        "title NixOS\nsort-key nixos\nversion Generation 1 NixOS 24.05 (Linux 6.1), built on 2026-01-01\n\
         linux /EFI/nixos/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1-bzImage.efi\n\
         initrd /EFI/nixos/cccccccccccccccccccccccccccccccc-initrd.efi\n\
         options init=/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x/init quiet console=ttyS0\n"
    );
    assert_eq!(files.dirs, vec!["EFI/nixos/.extra-files".to_string()]);

    let cfg = grub_cfg(
        &b,
        &GrubCfgOptions {
            fs_uuid: "AD69-BA1F".into(),
            kernel: "/kernels/k".into(),
            initrd: Some("/kernels/i".into()),
            timeout: 5,
            serial: mkdisk_nixstore::GrubSerial::Com0,
            epoch: 0,
            extra_config: Some("set menu_color_normal=white/blue\n".into()),
            extra_entries: Some("menuentry \"Other\" {\n  halt\n}".into()),
        },
    );
    assert!(cfg.contains("search --set=drive1 --fs-uuid AD69-BA1F\n"));
    // extraConfig after the settings, extraEntries between the default entry and the submenu.
    let at = |needle: &str| cfg.find(needle).unwrap_or_else(|| panic!("{needle:?} not in {cfg}"));
    assert!(at("terminal_output serial") < at("set menu_color_normal=white/blue\n"));
    assert!(at("set menu_color_normal") < at("menuentry \"NixOS - Default\""));
    assert!(at("menuentry \"NixOS - Default\"") < at("menuentry \"Other\" {\n  halt\n}\n"));
    assert!(at("menuentry \"Other\"") < at("submenu \"NixOS - All configurations\""));
    assert!(cfg.contains(
        "  linux ($drive1)/kernels/k init=/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-x/init quiet console=ttyS0\n"
    ));
    assert!(cfg.contains("  initrd ($drive1)/kernels/i\n"));
    assert!(cfg.contains("terminal_output serial console\n"));

    // No boot.json, a broken one.
    let e = Bootspec::load("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-linux-6.1", &store).unwrap_err();
    assert!(matches!(e, NixError::NoBootJson { .. }), "{e}");
    let e = Bootspec::parse(br#"{"org.nixos.bootspec.v1": {"init": "x"}}"#, Path::new("b.json")).unwrap_err();
    assert!(e.to_string().contains("kernel"), "{e}");
}

#[test]
fn grub_embed_offsets() {
    let mut boot = vec![0xB0u8; 512];
    boot[0x1fe] = 0x55;
    boot[0x1ff] = 0xAA;
    let mut lba0 = [0u8; 512];
    lba0[0x1b8..0x1bc].copy_from_slice(&[1, 2, 3, 4]);
    lba0[0x1be..0x1ce].copy_from_slice(&[0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0x05, 0]);
    lba0[0x1fe] = 0x55;
    lba0[0x1ff] = 0xAA;
    let core = fake_core(53);
    let e = grub_embed(&boot, &core, &lba0, 2048, 2048).unwrap();
    // boot.img: BPB from LBA 0, kernel sector, boot drive, drive-check NOPs, partition table.
    assert_eq!(&e.mbr[..3], &boot[..3]);
    assert!(e.mbr[0x03..0x5a].iter().all(|&b| b == 0));
    assert_eq!(&e.mbr[0x5a..0x5c], &[0xB0, 0xB0]);
    assert_eq!(&e.mbr[0x5c..0x64], &2048u64.to_le_bytes());
    assert_eq!(e.mbr[0x64], 0xFF);
    assert_eq!(&e.mbr[0x66..0x68], &[0x90, 0x90]);
    assert!(e.mbr[0x68..0x1b8].iter().all(|&b| b == 0xB0));
    assert_eq!(&e.mbr[0x1b8..0x1fe], &lba0[0x1b8..0x1fe]);
    assert_eq!(&e.mbr[0x1fe..], &[0x55, 0xAA]);
    // core.img: padded, one blocklist entry {2049, 52, 0x820}, terminator below.
    assert_eq!(e.core.len(), 53 * 512);
    assert_eq!(&e.core[0x1f4..0x1fc], &2049u64.to_le_bytes());
    assert_eq!(&e.core[0x1fc..0x1fe], &52u16.to_le_bytes());
    assert_eq!(&e.core[0x1fe..0x200], &0x820u16.to_le_bytes());
    assert!(e.core[0x1e8..0x1f4].iter().all(|&b| b == 0));
    assert_eq!(&e.core[..0x1e8], &core[..0x1e8]);
    assert_eq!(&e.core[0x200..core.len()], &core[0x200..]);
    assert!(e.core[core.len()..].iter().all(|&b| b == 0));

    // Too large for the partition, for GRUB, wrong boot.img, RS version mismatch.
    let e = grub_embed(&boot, &core, &lba0, 2048, 52).unwrap_err();
    assert!(matches!(e, NixError::CoreTooLarge { core_sectors: 53, available: 52, .. }), "{e}");
    let e = grub_embed(&boot, &fake_core(889), &lba0, 2048, 4096).unwrap_err();
    assert!(matches!(e, NixError::CoreTooLarge { available: 888, .. }), "{e}");
    assert!(matches!(grub_embed(&boot[..440], &core, &lba0, 2048, 2048), Err(NixError::BadGrubImage(_))));
    let mut bad = core.clone();
    bad[0x214..0x216].fill(0xff);
    assert!(matches!(grub_embed(&boot, &bad, &lba0, 2048, 2048), Err(NixError::BadGrubImage(_))));
}
