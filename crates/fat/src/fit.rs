//! Sizing: the smallest whole-MiB volume a tree fits in.
//!
//! Whether [`plan`] succeeds is not monotonic in the volume size: the cluster size grows in
//! steps with the volume (a 260 MiB FAT32 volume has 512-byte clusters, a 261 MiB one 4 KiB
//! clusters), and below the FAT32 minimum the volume is FAT16 with a fixed 512-entry root
//! directory. Within one *regime* — one FAT type and cluster size — it is monotonic: the
//! content needs the same clusters at every size, and the cluster count grows with the size.
//! The regime itself only ever moves up (FAT16 before FAT32, smaller clusters before larger
//! ones) as the size grows. So [`min_size`] walks the regimes from the smallest volume up,
//! tries the largest size of each, and binary-searches the first regime that fits.

use mkdisk_tree::Tree;

use crate::{plan, FatError, FatOptions, Geometry, SECTOR_BYTES};

/// One MiB.
const MIB: u64 = 1 << 20;
/// The largest whole-MiB volume FAT can describe (`BPB_TotSec32` counts 512-byte sectors).
const MAX_MIB: u64 = u32::MAX as u64 * SECTOR_BYTES as u64 / MIB;

/// The smallest `m` in `lo..hi` for which `pred(m)` holds, or `hi` if none does; `pred` must
/// be false and then true over the range.
fn first_true(mut lo: u64, mut hi: u64, mut pred: impl FnMut(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// The smallest volume size, a multiple of 1 MiB, for which [`plan`] succeeds with `opts`
/// (whose `size_bytes` is ignored; the FAT type stays forced if `opts.fat_type` is set).
///
/// # Errors
/// The first error that does not depend on the size (a name FAT cannot hold, a bad label,
/// a symlink, a file of 4 GiB or more, …); [`FatError::DoesNotFit`] (or
/// [`FatError::DirectoryTooLarge`]) when the tree fits no volume FAT can describe, as
/// [`plan`] reports it for the largest one tried.
pub fn min_size(tree: &Tree, opts: &FatOptions) -> Result<u64, FatError> {
    let with_size = |mib: u64| FatOptions { size_bytes: mib * MIB, ..opts.clone() };
    let geometry = |mib: u64| Geometry::compute(mib * MIB, opts.fat_type);
    let regime = |mib: u64| geometry(mib).ok().map(|g| (g.fat_type, g.sectors_per_cluster));
    let too_small =
        |mib: u64| matches!(geometry(mib), Err(FatError::VolumeTooSmall { .. } | FatError::Fat32TooSmall { .. }));
    let mut lo = first_true(1, MAX_MIB + 1, |m| !too_small(m));
    let mut last_err = None;
    loop {
        let Some(key) = regime(lo) else {
            // Past the largest volume of the FAT type (or no volume at all).
            return Err(match (last_err, geometry(lo.min(MAX_MIB))) {
                (Some(e), _) => e,
                (None, Err(e)) => e,
                (None, Ok(_)) => FatError::VolumeTooLarge { size_bytes: lo * MIB, what: "FAT" },
            });
        };
        // The last size of this regime.
        let hi = first_true(lo + 1, MAX_MIB + 1, |m| regime(m) != Some(key)) - 1;
        match plan(tree, &with_size(hi)) {
            Ok(_) => {
                let mib = first_true(lo, hi, |m| plan(tree, &with_size(m)).is_ok());
                return Ok(mib * MIB);
            }
            Err(e @ (FatError::DoesNotFit { .. } | FatError::DirectoryTooLarge { .. })) => last_err = Some(e),
            Err(e) => return Err(e),
        }
        if hi >= MAX_MIB {
            return Err(last_err.expect("set just above"));
        }
        lo = hi + 1;
    }
}

#[cfg(test)]
mod tests {
    use mkdisk_tree::{FileData, InodeId, Meta, Source, Tree};

    use super::*;
    use crate::FatType;

    /// The FAT type a volume of `size_bytes` gets.
    fn fat_type_at(tree: &Tree, opts: &FatOptions, size_bytes: u64) -> FatType {
        plan(tree, &FatOptions { size_bytes, ..opts.clone() }).expect("fits").fat_type()
    }

    fn tree_of(files: &[(&str, u64)]) -> Tree {
        let m = Meta::new(0o644);
        let mut t = Tree::new(Meta::new(0o755));
        for (name, size) in files {
            let data = FileData::dense(*size, Source::Host("/nonexistent".into()));
            t.add_file(InodeId::ROOT, name.as_bytes(), data, m.clone()).unwrap();
        }
        t
    }

    fn fits(t: &Tree, o: &FatOptions, mib: u64) -> bool {
        plan(t, &FatOptions { size_bytes: mib * MIB, ..o.clone() }).is_ok()
    }

    /// `min_size` against a linear scan from 1 MiB up to `limit_mib`.
    fn check_linear(t: &Tree, o: &FatOptions, limit_mib: u64) -> u64 {
        let got = min_size(t, o).unwrap();
        assert_eq!(got % MIB, 0);
        let linear = (1..=limit_mib).find(|&m| fits(t, o, m)).expect("fits below the limit");
        assert_eq!(got, linear * MIB, "{o:?}");
        got
    }

    #[test]
    fn empty_tree_is_the_smallest_volume_of_the_type() {
        let t = tree_of(&[]);
        let auto = check_linear(&t, &FatOptions::default(), 64);
        assert_eq!(fat_type_at(&t, &FatOptions::default(), auto), FatType::Fat16);
        let o32 = FatOptions { fat_type: Some(FatType::Fat32), ..FatOptions::default() };
        let min32 = check_linear(&t, &o32, 64);
        assert_eq!(min32, 33 * MIB);
        let o16 = FatOptions { fat_type: Some(FatType::Fat16), ..FatOptions::default() };
        assert_eq!(check_linear(&t, &o16, 64), auto);
    }

    #[test]
    fn content_sizes_match_a_linear_scan() {
        for files in [
            &[("a", 1)][..],
            &[("a", 3 * MIB), ("b", 1)],
            &[("kernel", 40 * MIB), ("initrd", 25 * MIB)],
            &[("big", 250 * MIB)],
            &[("big", 300 * MIB), ("x", 12345)],
        ] {
            let t = tree_of(files);
            for fat_type in [None, Some(FatType::Fat16), Some(FatType::Fat32)] {
                let o = FatOptions { fat_type, label: Some("ESP".into()), ..FatOptions::default() };
                check_linear(&t, &o, 400);
            }
        }
    }

    /// Over 512 root entries do not fit FAT16's fixed root directory: the answer is the
    /// first FAT32 size, although FAT16 volumes below it have room for the data.
    #[test]
    fn full_fat16_root_moves_to_fat32() {
        let names: Vec<String> = (0..600).map(|i| format!("F{i}")).collect();
        let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 100)).collect();
        let t = tree_of(&files);
        let got = check_linear(&t, &FatOptions::default(), 64);
        assert_eq!(got, 33 * MIB);
        assert_eq!(fat_type_at(&t, &FatOptions::default(), got), FatType::Fat32);
        let o16 = FatOptions { fat_type: Some(FatType::Fat16), ..FatOptions::default() };
        assert!(matches!(min_size(&t, &o16), Err(FatError::DirectoryTooLarge { .. })));
    }

    #[test]
    fn large_content() {
        let t = tree_of(&[("a", (3 << 30) + 5), ("b", 3 << 30)]);
        let got = min_size(&t, &FatOptions::default()).unwrap();
        assert!(fits(&t, &FatOptions::default(), got / MIB));
        assert!(!fits(&t, &FatOptions::default(), got / MIB - 1));
        assert!(got > 6 << 30 && got < (6 << 30) + 64 * MIB, "{got}");
        // FAT16 ends near 2 GiB.
        let o16 = FatOptions { fat_type: Some(FatType::Fat16), ..FatOptions::default() };
        assert!(matches!(min_size(&t, &o16), Err(FatError::DoesNotFit { .. })));
    }

    #[test]
    fn size_independent_errors_come_first() {
        let t = tree_of(&[("a:b", 1)]);
        assert!(matches!(min_size(&t, &FatOptions::default()), Err(FatError::BadName { .. })));
        let t = tree_of(&[("a", 1)]);
        let o = FatOptions { label: Some("much too long a label".into()), ..FatOptions::default() };
        assert!(matches!(min_size(&t, &o), Err(FatError::BadLabel { .. })));
    }

    #[test]
    fn options_other_than_size_are_kept() {
        let t = tree_of(&[("a", 1)]);
        let o = FatOptions { size_bytes: 1 << 40, volume_id: 7, hidden_sectors: 2048, ..FatOptions::default() };
        assert_eq!(min_size(&t, &o).unwrap(), min_size(&t, &FatOptions::default()).unwrap());
    }

    #[test]
    fn does_not_fit_reports_bytes_and_the_first_path() {
        let t = tree_of(&[("a", 10 * MIB), ("b", 30 * MIB), ("c", 1)]);
        let e = plan(&t, &FatOptions::new(34 * MIB)).unwrap_err();
        assert!(e.to_string().contains("/b: does not fit"), "{e}");
        let FatError::DoesNotFit { path, needed, available, cluster_bytes, size_bytes } = e else { panic!("{e}") };
        let g = Geometry::compute(34 * MIB, None).unwrap();
        assert_eq!((path.as_str(), cluster_bytes, size_bytes), ("/b", 512, 34 * MIB));
        // The root directory's cluster, then every file's clusters.
        assert_eq!(needed, 512 + 40 * MIB + 512);
        assert_eq!(available, u64::from(g.cluster_count) * 512);
        assert!(needed > available);
        let got = min_size(&t, &FatOptions::default()).unwrap();
        assert!(got > 40 * MIB && got < 42 * MIB, "{got}");
    }

    /// What `min_size` relies on: as the size grows, the regime (FAT type, cluster size)
    /// never moves back, and a size without a geometry is never followed by one with a
    /// geometry once one was found.
    #[test]
    fn regimes_only_move_up() {
        for fat_type in [None, Some(FatType::Fat16), Some(FatType::Fat32)] {
            let mut prev = None;
            let mut ended = false;
            let sizes = (1..=20_000).chain((20_000..=MAX_MIB).step_by(997)).chain([MAX_MIB]);
            for mib in sizes {
                match Geometry::compute(mib * MIB, fat_type) {
                    Ok(g) => {
                        assert!(!ended, "{fat_type:?} {mib} MiB");
                        let key = (g.fat_type, g.sectors_per_cluster);
                        assert!(prev <= Some(key), "{fat_type:?} {mib} MiB: {prev:?} then {key:?}");
                        prev = Some(key);
                    }
                    Err(_) => ended |= prev.is_some(),
                }
            }
            assert!(prev.is_some());
        }
    }
}
