//! The smallest size that fits, shared by the filesystem writers' `min_size`.

/// The smallest `n` in `lo..=max` for which `fits(n)` is true, assuming that a larger `n`
/// never fits less: doubling from `lo` until it fits, then bisecting, so every answer is a
/// value `fits` accepted. `None` when even `max` does not fit.
///
/// # Errors
/// The first error `fits` returns.
pub fn smallest_fitting<E>(lo: u64, max: u64, mut fits: impl FnMut(u64) -> Result<bool, E>) -> Result<Option<u64>, E> {
    let (mut lo, mut hi) = (lo, lo.min(max));
    while !fits(hi)? {
        if hi >= max {
            return Ok(None);
        }
        lo = hi + 1;
        hi = hi.saturating_mul(2).min(max);
    }
    // fits(hi), and every value below lo has been found too small.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_threshold_and_reports_none_past_max() {
        for want in [1u64, 2, 3, 7, 8, 9, 100, 1000, 4096] {
            let mut calls = Vec::new();
            let got = smallest_fitting::<()>(1, 4096, |n| {
                calls.push(n);
                Ok(n >= want)
            });
            assert_eq!(got, Ok(Some(want)), "{want}");
            assert!(calls.contains(&want), "the answer was tried");
        }
        assert_eq!(smallest_fitting::<()>(12, 100, |n| Ok(n > 100)), Ok(None));
        assert_eq!(smallest_fitting(1, 10, |n| if n > 3 { Err("bad") } else { Ok(false) }), Err("bad"));
    }
}
