//! Nix's archive format (NAR) and closureInfo's files without Nix: for store paths a test
//! writes into a host directory itself (a fake NixOS system), where no real store exists.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The NAR serialisation of the file, directory or symlink `p`, appended to `out` (the
/// `nix-archive-1` magic first where `out` is empty): entries sorted by name, a file
/// executable where its owner may execute it.
///
/// # Panics
/// Where `p` or something below it cannot be read.
pub fn nar(p: &Path, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    let md = std::fs::symlink_metadata(p).unwrap();
    if out.is_empty() {
        s(out, b"nix-archive-1");
    }
    s(out, b"(");
    s(out, b"type");
    if md.is_symlink() {
        s(out, b"symlink");
        s(out, b"target");
        s(out, std::fs::read_link(p).unwrap().as_os_str().as_bytes());
    } else if md.is_file() {
        s(out, b"regular");
        if md.mode() & 0o100 != 0 {
            s(out, b"executable");
            s(out, b"");
        }
        s(out, b"contents");
        s(out, &std::fs::read(p).unwrap());
    } else {
        s(out, b"directory");
        let mut names: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            s(out, b"entry");
            s(out, b"(");
            s(out, b"name");
            s(out, n.as_bytes());
            s(out, b"node");
            nar(&p.join(&n), out);
            s(out, b")");
        }
    }
    s(out, b")");
}

/// A closureInfo directory `dir` (`store-paths`, `registration`) for `paths` in the host store
/// `store` (`.../nix/store`), NAR hashes and sizes computed with [`nar`]; `refs` = (path, its
/// references), a path not named there has none.
///
/// # Panics
/// Where a store path cannot be read or a file cannot be written.
pub fn closure_info(dir: &Path, store: &Path, paths: &[&str], refs: &[(&str, &[&str])]) {
    let mut reg = String::new();
    for p in paths {
        let mut n = Vec::new();
        nar(&store.join(p.trim_start_matches("/nix/store/")), &mut n);
        let r: &[&str] = refs.iter().find(|(q, _)| q == p).map_or(&[], |(_, r)| *r);
        let hash: String = Sha256::digest(&n).iter().map(|b| format!("{b:02x}")).collect();
        reg.push_str(&format!("{p}\nsha256:{hash}\n{}\n\n{}\n", n.len(), r.len()));
        for x in r {
            reg.push_str(&format!("{x}\n"));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("registration"), reg).unwrap();
    std::fs::write(dir.join("store-paths"), paths.join("\n") + "\n").unwrap();
}
