//! The smallest filesystem that holds a tree: [`min_size`].

use mkdisk_tree::Tree;

use super::{geometry, numbering, plan, Ident};
use crate::{Ext4Error, Ext4Options};

/// One MiB: the unit of [`min_size`].
const MIB: u64 = 1 << 20;
/// The largest size [`min_size`] tries: 64 TiB, 2^19 groups.
const MAX_MIB: u64 = 64 << 20;

/// Whether a `mib` MiB filesystem holds `tree`: `Ok(false)` when the content or the inodes do
/// not fit, the error for anything else (which no size mends).
fn fits(tree: &Tree, opts: &Ext4Options, mib: u64) -> Result<bool, Ext4Error> {
    let o = Ext4Options { size_bytes: mib * MIB, ..opts.clone() };
    match plan(tree, &o) {
        Ok(_) => Ok(true),
        Err(Ext4Error::DoesNotFit { .. } | Ext4Error::TooManyInodes { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The smallest `size_bytes`, a multiple of 1 MiB, for which [`plan`] succeeds with `opts`
/// (whose own `size_bytes` is ignored). The search doubles from 1 MiB until the tree fits,
/// then bisects, assuming that a larger size never fits less; the result is a size that was
/// planned. The default inode count grows with the size, so this is what the content needs
/// with these options, not with the inode count of some other size.
///
/// # Errors
/// What [`plan`] reports for errors that no size mends (a name longer than 255 bytes, a bad
/// symlink, an invalid option, `-N` below the tree's inodes, ...), and
/// [`Ext4Error::DoesNotFit`] or [`Ext4Error::TooManyInodes`] from planning at 64 TiB when the
/// tree does not fit even there.
pub fn min_size(tree: &Tree, opts: &Ext4Options) -> Result<u64, Ext4Error> {
    // Errors that do not depend on the size, before planning at many sizes.
    Ident::new(opts)?;
    geometry::check_inode_count(opts, numbering::number(tree)?.max_ino())?;
    match mkdisk_tree::smallest_fitting(1, MAX_MIB, |mib| fits(tree, opts, mib))? {
        Some(mib) => Ok(mib * MIB),
        // Planning at the largest size gives the error that says why.
        None => plan(tree, &Ext4Options { size_bytes: MAX_MIB * MIB, ..opts.clone() }).map(|_| MAX_MIB * MIB),
    }
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, InodeId, Meta};

    use super::*;

    fn opts() -> Ext4Options {
        Ext4Options::new(123, uuid::Uuid::nil())
    }

    fn tree_with(file_bytes: usize, files: usize) -> Tree {
        let mut t = Tree::new(Meta::new(0o755));
        for i in 0..files {
            let name = format!("f{i}");
            t.add_file(InodeId::ROOT, name.as_bytes(), FileData::from_bytes(vec![7u8; file_bytes]), Meta::new(0o644))
                .unwrap();
        }
        t
    }

    fn planned(tree: &Tree, size_bytes: u64) -> Result<crate::Ext4Layout, Ext4Error> {
        plan(tree, &Ext4Options { size_bytes, ..opts() })
    }

    #[test]
    fn min_size_is_the_smallest_that_plans() {
        for (bytes, files) in [(0, 0), (1 << 20, 3), (40 << 20, 1), (4096, 3000)] {
            let t = tree_with(bytes, files);
            let min = min_size(&t, &opts()).unwrap();
            assert_eq!(min % MIB, 0);
            assert!(planned(&t, min).is_ok(), "{bytes} × {files}: {min}");
            if min > MIB {
                let err = planned(&t, min - MIB).unwrap_err();
                assert!(matches!(err, Ext4Error::DoesNotFit { .. } | Ext4Error::TooManyInodes { .. }), "{err:?}");
            }
            // Independent of the size asked for.
            assert_eq!(min_size(&t, &Ext4Options { size_bytes: 1 << 40, ..opts() }).unwrap(), min);
        }
    }

    #[test]
    fn content_beyond_the_first_mib_does_not_fit_below_min() {
        let t = tree_with(40 << 20, 1);
        let min = min_size(&t, &opts()).unwrap();
        assert!(min > 40 << 20);
        let Err(Ext4Error::DoesNotFit { needed_bytes, available_bytes }) = planned(&t, min - MIB) else {
            panic!("expected DoesNotFit at {} bytes", min - MIB)
        };
        assert!(needed_bytes > available_bytes, "{needed_bytes} {available_bytes}");
    }

    #[test]
    fn size_independent_errors_come_back() {
        let mut t = Tree::new(Meta::new(0o755));
        t.add_symlink(InodeId::ROOT, b"l", &[b'a'; 4096], Meta::new(0o777)).unwrap();
        assert!(matches!(min_size(&t, &opts()), Err(Ext4Error::BadSymlink { .. })));
        let o = Ext4Options { inode_count: Some(5), ..opts() };
        assert!(matches!(min_size(&tree_with(0, 1), &o), Err(Ext4Error::TooManyInodes { .. })));
        let o = Ext4Options { timestamp: -1, ..opts() };
        assert!(matches!(min_size(&tree_with(0, 1), &o), Err(Ext4Error::BadTimestamp { .. })));
    }
}
