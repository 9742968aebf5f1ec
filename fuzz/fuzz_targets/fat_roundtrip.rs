//! FAT writer: arbitrary small trees → plan → write → read back with `fatfs` (an independent
//! reader): every file the plan accepted is there with its bytes. Never a panic.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use mkdisk_fuzz::{build_tree, scratch_region, Node};
use mkdisk_tree::{InodeId, Kind, NoProgress, Tree};

fn check(fs_dir: fatfs::Dir<'_, std::fs::File>, tree: &Tree, dir: InodeId) {
    let Some(d) = tree.inode(dir).as_dir() else { return };
    for e in &d.entries {
        let name = String::from_utf8(e.name.clone()).expect("plan accepted a non-UTF-8 name");
        match &tree.inode(e.inode).kind {
            Kind::File(f) => {
                let mut file = fs_dir.open_file(&name).expect("file missing in FAT");
                let mut got = Vec::new();
                file.read_to_end(&mut got).unwrap();
                let want = mkdisk_tree::read_file(f).unwrap();
                assert_eq!(got, want, "{name}: content differs");
            }
            Kind::Dir(_) => check(fs_dir.open_dir(&name).expect("dir missing in FAT"), tree, e.inode),
            _ => unreachable!("plan accepted a non-file"),
        }
    }
}

fuzz_target!(|input: (Vec<Node>, bool)| {
    let (nodes, fat16) = input;
    let tree = build_tree(&nodes);
    let size = if fat16 { 20u64 << 20 } else { 40 << 20 };
    let opts = mkdisk_fat::FatOptions::new(size);
    let Ok(layout) = mkdisk_fat::plan(&tree, &opts) else { return };
    let (file, region) = scratch_region(size);
    mkdisk_fat::write(&layout, &tree, &region, &NoProgress).expect("write of a planned layout failed");
    let fs = fatfs::FileSystem::new((*file).try_clone().unwrap(), fatfs::FsOptions::new()).expect("fatfs cannot mount");
    check(fs.root_dir(), &tree, InodeId::ROOT);
});
