//! Shared helpers for the fuzz targets: an `Arbitrary` description of a small source tree.

use arbitrary::Arbitrary;
use mkdisk_tree::{FileData, InodeId, Kind, Meta, Timestamp, Tree};

/// One node of a fuzzed tree.
#[derive(Arbitrary, Debug)]
pub enum Node {
    /// A file with `len` bytes of a pattern seeded by `seed`.
    File { name: Vec<u8>, len: u16, seed: u8, mtime: i32 },
    /// A directory and its children.
    Dir { name: Vec<u8>, children: Vec<Node> },
    /// A symlink.
    Symlink { name: Vec<u8>, target: Vec<u8> },
    /// A hard link to the n-th file added so far.
    HardLink { name: Vec<u8>, to: u8 },
    /// A fifo.
    Fifo { name: Vec<u8> },
}

/// Build a tree from fuzz input, skipping nodes whose names the tree rejects. Depth and size
/// are bounded so one input stays fast.
#[must_use]
pub fn build_tree(nodes: &[Node]) -> Tree {
    let mut t = Tree::new(Meta::new(0o755));
    let mut files = Vec::new();
    let mut budget = 2000usize;
    add(&mut t, InodeId::ROOT, nodes, 0, &mut files, &mut budget);
    t
}

fn add(t: &mut Tree, dir: InodeId, nodes: &[Node], depth: usize, files: &mut Vec<InodeId>, budget: &mut usize) {
    for n in nodes {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        match n {
            Node::File { name, len, seed, mtime } => {
                let data: Vec<u8> = (0..*len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(*seed)).collect();
                let meta = Meta::new(0o644).with_mtime(Timestamp::from_secs(i64::from(*mtime)));
                if let Ok(id) = t.add_file(dir, name, FileData::from_bytes(data), meta) {
                    files.push(id);
                }
            }
            Node::Dir { name, children } => {
                if let Ok(id) = t.add_dir(dir, name, Meta::new(0o755)) {
                    if depth < 12 {
                        add(t, id, children, depth + 1, files, budget);
                    }
                }
            }
            Node::Symlink { name, target } => {
                if !target.is_empty() {
                    let _ = t.add(dir, name, Kind::Symlink(target.clone()), Meta::new(0o777));
                }
            }
            Node::HardLink { name, to } => {
                if !files.is_empty() {
                    let target = files[usize::from(*to) % files.len()];
                    let _ = t.add_hardlink(dir, name, target);
                }
            }
            Node::Fifo { name } => {
                let _ = t.add(dir, name, Kind::Fifo, Meta::new(0o644));
            }
        }
    }
}

/// A sparse scratch file of `size` bytes as a region.
#[must_use]
pub fn scratch_region(size: u64) -> (std::sync::Arc<std::fs::File>, mkdisk_tree::Region) {
    let f = tempfile::tempfile().expect("scratch file");
    f.set_len(size).expect("set_len");
    let f = std::sync::Arc::new(f);
    let r = mkdisk_tree::Region::from_file(std::sync::Arc::clone(&f), "fuzz", 0, size);
    (f, r)
}
