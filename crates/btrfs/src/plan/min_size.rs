//! The smallest device that holds a prepared filesystem: [`min_size`].

use super::{plan, Prepared, DATA_START, MIB};
use crate::{BtrfsError, BtrfsOptions};

/// No plan fits below this many MiB: the reserved first MiB and the two 4 MiB SYSTEM stripes
/// (data starts at 9 MiB), a data chunk of at least 1 MiB, and two metadata stripes of at
/// least 1 MiB each.
const MIN_MIB: u64 = DATA_START / MIB + 1 + 2;
/// The largest size [`min_size`] tries: 2^50 bytes (1 PiB).
const MAX_MIB: u64 = 1 << 30;

/// Whether `mib` MiB hold the filesystem: `Ok(false)` when it does not fit, the error for
/// anything else (which no size mends).
fn fits(prepared: &Prepared<'_>, opts: &BtrfsOptions, mib: u64) -> Result<bool, BtrfsError> {
    let o = BtrfsOptions { size_bytes: mib * MIB, ..opts.clone() };
    match plan(prepared, &o) {
        Ok(_) => Ok(true),
        Err(BtrfsError::DoesNotFit { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The smallest `size_bytes`, a multiple of 1 MiB, for which [`plan`] succeeds on `prepared`
/// with `opts` (whose own `size_bytes` is ignored). The search doubles from the smallest
/// possible btrfs (12 MiB) until the filesystem fits, then bisects, assuming that a larger
/// size never fits less; the result is a size that was planned.
///
/// # Errors
/// What [`plan`] reports for errors that no size mends (a bad label, an unknown default
/// subvolume, a symlink too long, ...), and [`BtrfsError::DoesNotFit`] from planning at
/// 2^50 bytes when the content does not fit even there.
pub fn min_size(prepared: &Prepared<'_>, opts: &BtrfsOptions) -> Result<u64, BtrfsError> {
    match mkdisk_tree::smallest_fitting(MIN_MIB, MAX_MIB, |mib| fits(prepared, opts, mib))? {
        Some(mib) => Ok(mib * MIB),
        // Planning at the largest size gives the error that says why.
        None => plan(prepared, &BtrfsOptions { size_bytes: MAX_MIB * MIB, ..opts.clone() }).map(|_| MAX_MIB * MIB),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use mkdisk_tree::{FileData, InodeId, Meta, Tree};

    use super::*;
    use crate::{prepare, Compress, SubvolSpec};

    fn opts() -> BtrfsOptions {
        BtrfsOptions::new(123, uuid::Uuid::nil())
    }

    fn tree_with(file_bytes: usize, files: usize) -> Tree {
        let mut t = Tree::new(Meta::new(0o755));
        for i in 0..files {
            let bytes: Vec<u8> = (0..file_bytes).map(|j| u8::try_from((i * 7 + j * 13) % 251).unwrap()).collect();
            t.add_file(InodeId::ROOT, format!("f{i}").as_bytes(), FileData::from_bytes(bytes), Meta::new(0o644))
                .unwrap();
        }
        t
    }

    #[test]
    fn min_size_is_the_smallest_that_plans() {
        for (bytes, files) in [(0, 0), (1 << 20, 3), (40 << 20, 1), (3000, 3000), (100, 20_000)] {
            let t = tree_with(bytes, files);
            let p = prepare(&t, &[], &opts()).unwrap();
            let min = min_size(&p, &opts()).unwrap();
            assert_eq!(min % MIB, 0);
            assert!(min >= MIN_MIB * MIB);
            assert!(plan(&p, &BtrfsOptions { size_bytes: min, ..opts() }).is_ok(), "{bytes} × {files}: {min}");
            let err = plan(&p, &BtrfsOptions { size_bytes: min - MIB, ..opts() }).unwrap_err();
            let BtrfsError::DoesNotFit { needed, available } = err else { panic!("{bytes} × {files}: {err:?}") };
            assert!(needed > available && available == min - MIB, "{needed} {available}");
            // Independent of the size asked for.
            assert_eq!(min_size(&p, &BtrfsOptions { size_bytes: 1 << 40, ..opts() }).unwrap(), min);
        }
    }

    #[test]
    fn compression_and_subvolumes_shrink_or_move_the_minimum() {
        let t = tree_with(0, 0);
        let zeros = {
            let mut z = Tree::new(Meta::new(0o755));
            z.add_file(InodeId::ROOT, b"z", FileData::from_bytes(vec![0u8; 50 << 20]), Meta::new(0o644)).unwrap();
            z
        };
        let raw = [SubvolSpec { path: "a/b".into(), tree: Cow::Borrowed(&zeros), compress: None }];
        let zstd = [SubvolSpec {
            path: "a/b".into(),
            tree: Cow::Borrowed(&zeros),
            compress: Some(Compress::Zstd { level: 1, force: true }),
        }];
        let raw_min = min_size(&prepare(&t, &raw, &opts()).unwrap(), &opts()).unwrap();
        let zstd_min = min_size(&prepare(&t, &zstd, &opts()).unwrap(), &opts()).unwrap();
        assert!(raw_min > 50 << 20, "{raw_min}");
        assert!(zstd_min < 20 << 20, "{zstd_min}");
    }

    #[test]
    fn size_independent_errors_come_back() {
        let t = tree_with(10, 1);
        let p = prepare(&t, &[], &opts()).unwrap();
        let mut o = opts();
        o.default_subvolume = Some("nope".into());
        assert!(matches!(min_size(&p, &o), Err(BtrfsError::BadSubvolume { .. })));
        let mut o = opts();
        o.label = Some("l".repeat(300));
        assert!(matches!(min_size(&p, &o), Err(BtrfsError::BadArgument { .. })));
    }
}
