//! Image sizes chosen from the content: `imageSize = "auto"` in a layout and `--image-size
//! auto|SIZE`, `--headroom` on the command line. This module is the pure part — the size
//! syntax, the headroom, and the arithmetic that turns a filesystem's minimal size into the
//! size of the partition that fills the disk; [`place`](crate::place) finds the disk size
//! that gives that partition this size, and [`plan`](crate::plan) joins them.
//!
//! An auto-sized disk keeps its fixed partitions; the partition that fills it (size `100%`,
//! an end `-0`/`-N`, or no size) gets the smallest size its filesystem plans the content
//! into ([`Measure::min_size_bytes`](crate::partition::Measure)), plus the headroom, rounded
//! up to the partition's alignment (1 MiB unless it sets one); the disk ends right after it,
//! with the 33 sectors of the backup GPT.

use std::fmt;
use std::str::FromStr;

/// 1 MiB.
const MIB: u64 = 1 << 20;

/// A disk's size: as a layout's `imageSize` or `--image-size` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSize {
    /// The smallest that holds the content, plus [`Headroom`].
    Auto,
    /// This many bytes (a multiple of 512).
    Bytes(u64),
}

impl ImageSize {
    /// Parse `auto` or disko's `[0-9]+[KMGTP]?` (a bare number is bytes, rounded up to whole
    /// sectors as `qemu-img create` does); `None` when malformed or zero.
    #[must_use]
    pub fn parse(s: &str) -> Option<ImageSize> {
        if s == "auto" {
            return Some(ImageSize::Auto);
        }
        mkdisk_gpt::parse_image_size(s).filter(|&b| b > 0).map(ImageSize::Bytes)
    }
}

impl FromStr for ImageSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageSize::parse(s).ok_or_else(|| {
            format!("malformed image size {s:?} (expected \"auto\" or [0-9]+[KMGTP]?, e.g. \"25G\"; a bare number is bytes)")
        })
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSize::Auto => f.write_str("auto"),
            ImageSize::Bytes(b) => f.write_str(&size_text(*b)),
        }
    }
}

/// What an auto-sized partition gets on top of its filesystem's minimal size: a percentage
/// of that size plus a number of bytes (`--headroom 10%+64M`, the default).
///
/// Why this default: at its minimal size a filesystem is full to the last block, and a
/// system booted from it writes logs, a machine id, the Nix database, generations; 10 %
/// scales with the content (a store grows with what it holds) and 64 MiB covers a small
/// image, where 10 % would be a few MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// Percent of the minimal size (rounded up to a byte).
    pub percent: u32,
    /// Bytes added after the percentage.
    pub bytes: u64,
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom { percent: 10, bytes: 64 * MIB }
    }
}

impl Headroom {
    /// The headroom, in bytes, on a filesystem whose minimal size is `min_bytes`; `None` on
    /// overflow.
    #[must_use]
    pub fn bytes_for(&self, min_bytes: u64) -> Option<u64> {
        let pct = u128::from(min_bytes).checked_mul(u128::from(self.percent))?.div_ceil(100);
        u64::try_from(pct).ok()?.checked_add(self.bytes)
    }
}

impl FromStr for Headroom {
    type Err = String;

    /// `P%`, `SIZE`, or both joined by `+` in either order (`10%+256M`); SIZE is
    /// `[0-9]+[KMGTP]?` (a bare number is bytes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "malformed headroom {s:?} (expected a percentage, a size or both, e.g. \"10%\", \"256M\", \"10%+64M\")"
            )
        };
        let mut h = Headroom { percent: 0, bytes: 0 };
        let (mut seen_pct, mut seen_bytes) = (false, false);
        for term in s.split('+') {
            if let Some(p) = term.strip_suffix('%') {
                let ok = !seen_pct && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                h.percent = if ok { p.parse().map_err(|_| bad())? } else { return Err(bad()) };
                seen_pct = true;
            } else {
                let ok = !seen_bytes && term.bytes().next().is_some_and(|b| b.is_ascii_digit());
                // Sizes parse as image sizes do, but to the byte (no sector rounding).
                h.bytes = if ok { parse_bytes(term).ok_or_else(bad)? } else { return Err(bad()) };
                seen_bytes = true;
            }
        }
        Ok(h)
    }
}

impl fmt::Display for Headroom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.percent, self.bytes) {
            (p, 0) => write!(f, "{p}%"),
            (0, b) => f.write_str(&size_text(b)),
            (p, b) => write!(f, "{p}%+{}", size_text(b)),
        }
    }
}

/// `[0-9]+[KMGTP]?` in bytes; `None` when malformed or too large.
fn parse_bytes(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..end].parse().ok()?;
    let shift = match &s[end..] {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// A byte count in the largest binary unit that divides it (`64M`, `1536K`, `100`).
fn size_text(b: u64) -> String {
    for (shift, unit) in [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if b != 0 && b % (1u64 << shift) == 0 {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// How an auto-sized disk got its size (for the plan's report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoSized {
    /// The partition that fills the disk: its index in the placed table.
    pub partition: usize,
    /// Its filesystem's smallest size.
    pub min_size_bytes: u64,
    /// The headroom asked for.
    pub headroom: Headroom,
    /// That headroom in bytes, on this content.
    pub headroom_bytes: u64,
}

/// The size of an auto-sized partition whose filesystem needs `min_bytes`: that plus the
/// headroom, rounded up to `align_bytes`; `None` on overflow or a zero alignment.
#[must_use]
pub fn fill_bytes(min_bytes: u64, headroom: Headroom, align_bytes: u64) -> Option<u64> {
    let want = min_bytes.checked_add(headroom.bytes_for(min_bytes)?)?;
    want.checked_next_multiple_of(align_bytes).filter(|_| align_bytes > 0)
}

/// `bytes` in whole MiB, rounded up (for messages about sizes).
#[must_use]
pub fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_parses_percent_size_and_both() {
        let h = |s: &str| s.parse::<Headroom>();
        assert_eq!(h("10%"), Ok(Headroom { percent: 10, bytes: 0 }));
        assert_eq!(h("256M"), Ok(Headroom { percent: 0, bytes: 256 << 20 }));
        assert_eq!(h("10%+256M"), Ok(Headroom { percent: 10, bytes: 256 << 20 }));
        assert_eq!(h("1G+5%"), Ok(Headroom { percent: 5, bytes: 1 << 30 }));
        assert_eq!(h("0"), Ok(Headroom { percent: 0, bytes: 0 }));
        assert_eq!(h("4096"), Ok(Headroom { percent: 0, bytes: 4096 }));
        assert_eq!(h("250%"), Ok(Headroom { percent: 250, bytes: 0 }));
        let bad =
            ["", "%", "+", "10%+", "+10%", "10%+20%", "1M+2M", "ten%", "-5%", "1.5%", "10 %", "5X", "99999999999P"];
        for bad in bad.into_iter().chain(["5000000000%", "auto"]) {
            assert!(h(bad).is_err(), "{bad:?} parsed as {:?}", h(bad));
        }
        assert!(h("1.5%").unwrap_err().contains("malformed headroom"));
    }

    #[test]
    fn headroom_prints_as_it_parses() {
        for s in ["10%+64M", "10%", "256M", "0%", "3%+1536K", "7%+100"] {
            let h: Headroom = s.parse().unwrap();
            assert_eq!(h.to_string().parse::<Headroom>(), Ok(h), "{s}");
        }
        assert_eq!(Headroom::default().to_string(), "10%+64M");
    }

    #[test]
    fn image_size_parses_auto_and_sizes() {
        assert_eq!(ImageSize::parse("auto"), Some(ImageSize::Auto));
        assert_eq!(ImageSize::parse("64G"), Some(ImageSize::Bytes(64 << 30)));
        assert_eq!(ImageSize::parse("1000"), Some(ImageSize::Bytes(1024)));
        for bad in ["", "0", "Auto", "2X", "-1G", "1.5G", "99999999999999999999"] {
            assert_eq!(ImageSize::parse(bad), None, "{bad}");
            assert!(bad.parse::<ImageSize>().is_err());
        }
    }

    #[test]
    fn fill_size_is_min_plus_headroom_aligned() {
        let h = Headroom::default();
        // 100 MiB: 10 MiB + 64 MiB on top, already aligned.
        assert_eq!(fill_bytes(100 << 20, h, 1 << 20), Some(174 << 20));
        // 10 % of 1 MiB + 1 byte rounds up, and so does the sum.
        assert_eq!(fill_bytes((1 << 20) + 1, h, 1 << 20), Some(66 << 20));
        assert_eq!(fill_bytes(0, Headroom { percent: 0, bytes: 0 }, 1 << 20), Some(0));
        assert_eq!(fill_bytes(1, Headroom { percent: 0, bytes: 0 }, 512), Some(512));
        // No panics on any input: overflow and a zero alignment are None.
        assert_eq!(fill_bytes(u64::MAX, h, 1 << 20), None);
        assert_eq!(fill_bytes(u64::MAX - (1 << 20), Headroom { percent: 0, bytes: 2 }, 1 << 20), None);
        let top = u64::MAX - (1 << 20) + 1;
        assert_eq!(fill_bytes(u64::MAX - (1 << 20), Headroom { percent: 0, bytes: 1 }, 1 << 20), Some(top));
        assert_eq!(fill_bytes(1 << 20, h, 0), None);
        assert_eq!(Headroom { percent: u32::MAX, bytes: u64::MAX }.bytes_for(u64::MAX), None);
        assert_eq!(Headroom { percent: u32::MAX, bytes: 0 }.bytes_for(1 << 40), None);
        assert_eq!(mib_ceil(0), 0);
        assert_eq!(mib_ceil(1), 1);
        assert_eq!(mib_ceil(u64::MAX), 1 << 44);
    }
}
