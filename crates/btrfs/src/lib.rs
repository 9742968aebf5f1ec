//! mkdisk-btrfs: builds a complete single-device btrfs filesystem from
//! [`mkdisk_tree::Tree`]s in one pass, without root and without `mkfs.btrfs`.
//!
//! Layout: data SINGLE, metadata and system DUP, nodesize 16 KiB, sectorsize 4 KiB, the
//! mkfs.btrfs 6.14 default features (mixed-backref, big-metadata, extref, skinny-metadata,
//! no-holes, free-space-tree) and crc32c, xxhash64, sha256 or blake2b checksums. One
//! generation (1) everywhere. Physical layout: `[0, 1 MiB)` reserved (primary superblock at
//! 64 KiB), the SYSTEM chunk's two stripes at 1 MiB and 5 MiB, data chunks (≤ 1 GiB each,
//! logical = physical) from 9 MiB, then the METADATA chunk's two stripes sized from the block
//! count with slack; the rest of the partition stays unallocated for the kernel. 64 KiB stripes
//! holding superblock mirrors (64 MiB, 256 GiB) are never used.
//!
//! Content: inode numbers and directory indices follow a sorted pre-order walk; files up to
//! 2048 bytes and symlinks are inline, larger files regular extents (≤ 128 MiB, holes left
//! out), hard links share one inode (`INODE_REF` per parent, overflowing into
//! `INODE_EXTREF`), devices keep their `rdev` (kernel encoding), xattrs and nanosecond times
//! are kept. Subvolumes ([`SubvolSpec`]) get ids 256… in sorted path order, their own fs trees,
//! and are linked into the closest enclosing subvolume (or the top level, 5) under their last
//! path component, creating missing parent directories; an empty directory of that name
//! (a mount point) is replaced. The default subvolume and read-only flags come from
//! [`BtrfsOptions`].
//!
//! Compression (zstd only, per subvolume or filesystem-wide; zlib and lzo are refused with an
//! error, see [`parse_mount_options`]): every 128 KiB chunk of file data is
//! one single-segment zstd frame (content size set, window ≤ 128 KiB, no checksum), kept only
//! when it saves at least one sector; a file under one sector is inline and compressed when
//! its frame is strictly smaller and at most 2048 bytes (the kernel's rule); with `compress` (not `compress-force`) a file whose
//! first chunk does not compress is stored raw (a simplification of the kernel's heuristic).
//! Raw chunks of a file are merged into larger extents.
//!
//! Planning has two steps. [`prepare`] reads what the layout depends on once: it resolves the
//! subvolumes, numbers every inode, reads the bytes of inline files (which become metadata)
//! and compresses every candidate chunk in parallel (rayon), keeping the frames that will be
//! stored: in memory, or in an unnamed scratch file in [`BtrfsOptions::scratch_dir`]. [`plan`]
//! is pure: from a [`Prepared`] it decides every object id, logical/physical address, tree
//! block and item, without I/O, and may run many times (at different sizes: [`min_size`]
//! searches the smallest that fits). [`write()`] checks the plan, then writes the data in
//! parallel — copying the planned frames and reading raw extents from their sources —
//! checksumming every sector, then serialises every tree block onto both DUP stripes, and
//! writes the superblocks last.
//! Memory stays bounded: the layout keeps metadata and sources (paths or shared bytes), never
//! raw file data; the write phase uses one 1 MiB buffer per thread plus one checksum per data
//! sector. Output depends only on the trees and the options (zstd output depends only on the
//! input, level and parameters, never on threads or on which thread's context made it).

//! The crate sits between `mkdisk-tree` (below) and the `mkdisk` binary (above); it depends on
//! no other writer. See `docs/btrfs.md` for the on-disk reference.

#![deny(clippy::too_many_lines)]
#![deny(clippy::cast_possible_truncation)]

mod chunk;
mod csum;
mod extent;
mod frames;
mod items;
mod le;
mod node;
mod plan;
mod source;
mod superblock;
mod write;

use std::borrow::Cow;
use std::path::PathBuf;

use mkdisk_tree::{ImageError, Tree, TreeError};
use uuid::Uuid;

pub use chunk::Chunk;
pub use csum::CsumType;
pub use plan::{min_size, plan, prepare, BtrfsLayout, Prepared};
pub use write::write;

/// `nodesize`, as the on-disk `u32`.
pub(crate) const NODESIZE_U32: u32 = 16384;
/// `nodesize`.
pub const NODESIZE: u64 = NODESIZE_U32 as u64;
/// `nodesize`, as a buffer length.
pub(crate) const NODESIZE_USIZE: usize = NODESIZE_U32 as usize;
/// `sectorsize`, as the on-disk `u32`.
pub(crate) const SECTORSIZE_U32: u32 = 4096;
/// `sectorsize`.
pub const SECTORSIZE: u64 = SECTORSIZE_U32 as u64;
/// `sectorsize`, as a buffer length.
pub(crate) const SECTORSIZE_USIZE: usize = SECTORSIZE_U32 as usize;
/// `BTRFS_STRIPE_LEN`, as the on-disk `u32`.
pub(crate) const STRIPE_LEN_U32: u32 = 65536;
/// `BTRFS_STRIPE_LEN`.
pub(crate) const STRIPE_LEN: u64 = STRIPE_LEN_U32 as u64;
/// `BTRFS_LEAF_DATA_SIZE` for 16 KiB nodes.
pub(crate) const LEAF_DATA_SIZE: usize = 16283;
/// The one generation every block and item carries.
pub(crate) const GENERATION: u64 = 1;
/// Largest file stored inline (the kernel's default `max_inline`).
pub const MAX_INLINE: u64 = 2048;
/// `BTRFS_MAX_UNCOMPRESSED`: the most file bytes one compressed extent covers.
pub const MAX_COMPRESSED_CHUNK: u64 = 128 * 1024;

/// Compression settings. Only zstd is written; `compress=zlib`/`lzo` are refused when parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    /// `compress=no` / `compress=none`: store files raw. The same as no compression in
    /// [`BtrfsOptions::compress`]; in [`SubvolSpec::compress`] it overrides a compressing
    /// filesystem default.
    None,
    /// zstd at `level` (1..=15). `force` = `compress-force`: keep every chunk that saves a
    /// sector; otherwise a file whose first chunk does not compress is stored raw (the
    /// kernel's NOCOMPRESS heuristic, simplified).
    Zstd {
        /// zstd level, 1..=15.
        level: i32,
        /// `compress-force`.
        force: bool,
    },
}

/// Default zstd level (kernel and mkfs).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// One subvolume to create.
#[derive(Clone, Debug)]
pub struct SubvolSpec<'a> {
    /// Path relative to the top level (`root`, `@home`, `a/b`; leading `/` allowed).
    pub path: String,
    /// Its content (borrowed: a NixOS store can be a large tree; the planner copies it only
    /// when it must create a directory in it for a nested subvolume).
    pub tree: Cow<'a, Tree>,
    /// Compression for its files (`None`: the filesystem default; `Some(Compress::None)`:
    /// uncompressed whatever the default).
    pub compress: Option<Compress>,
}

/// Options for one btrfs filesystem. [`prepare`] uses `compress` and `scratch_dir` (they
/// decide what is compressed and where frames are kept); [`plan`] uses all the others, which
/// may change between plans of one [`Prepared`] (`size_bytes` in particular).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BtrfsOptions {
    /// Size of the device (partition) in bytes; rounded down to sectors. Used by [`plan`].
    pub size_bytes: u64,
    /// The filesystem UUID (`fsid`); device, chunk-tree and subvolume UUIDs are derived from it.
    /// Used by [`plan`].
    pub uuid: Uuid,
    /// Label (at most 255 bytes). Used by [`plan`].
    pub label: Option<String>,
    /// Seconds for root-item and internal-directory times, and for directories created as
    /// parents of subvolumes (SOURCE_DATE_EPOCH or 0). Used by [`plan`].
    pub timestamp: i64,
    /// Filesystem-wide compression for the top level and subvolumes without their own
    /// (`None` and `Some(Compress::None)` both store files raw). Used by [`prepare`].
    pub compress: Option<Compress>,
    /// Checksum algorithm. Used by [`plan`].
    pub csum: CsumType,
    /// Subvolume path to make the default (mounted without `subvol=`). Used by [`plan`].
    pub default_subvolume: Option<String>,
    /// Subvolume paths to mark read-only (`BTRFS_ROOT_SUBVOL_RDONLY`). Used by [`plan`].
    pub readonly_subvolumes: Vec<String>,
    /// Directory for an unnamed scratch file that holds compressed frames between [`prepare`]
    /// and [`write()`] (mkdisk passes the output directory). `None` keeps them in memory,
    /// which costs about the compressed size of the data. Used by [`prepare`].
    pub scratch_dir: Option<PathBuf>,
}

impl BtrfsOptions {
    /// Defaults: no label, timestamp 0, no compression, crc32c, top level as default.
    #[must_use]
    pub fn new(size_bytes: u64, uuid: Uuid) -> Self {
        BtrfsOptions {
            size_bytes,
            uuid,
            label: None,
            timestamp: 0,
            compress: None,
            csum: CsumType::Crc32c,
            default_subvolume: None,
            readonly_subvolumes: Vec::new(),
            scratch_dir: None,
        }
    }

    /// Apply mkfs.btrfs-style extra arguments: `-L`/`--label LABEL`, `--csum`/`--checksum
    /// crc32c|xxhash|sha256|blake2`, `--compress zstd[:N]|no|none`, `-f`/`--force` (ignored), and the
    /// defaults restated (`-m dup`, `-d single`, `-n 16384`, `-s 4096`), and
    /// `--subvol [rw|ro|default|default-ro]:PATH` to flag one of the subvolumes as read-only
    /// and/or the default one. Also `--name=value`.
    ///
    /// # Errors
    /// [`BtrfsError::BadArgument`] naming anything else, a missing or a bad value, including
    /// `--compress zlib|lzo` (not implemented) and unknown algorithms.
    pub fn apply_extra_args(&mut self, args: &[String]) -> Result<(), BtrfsError> {
        let bad =
            |arg: &str, reason: &str| BtrfsError::BadArgument { arg: arg.to_string(), reason: reason.to_string() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let (flag, inline) = match flag {
                f if f.len() > 2 && f.starts_with('-') && !f.starts_with("--") && inline.is_none() => {
                    (&f[..2], Some(f[2..].to_string()))
                }
                f => (f, inline),
            };
            if matches!(flag, "-f" | "--force") {
                if inline.is_some() {
                    return Err(bad(a, "takes no value"));
                }
                continue;
            }
            let known = matches!(
                flag,
                "-L" | "--label"
                    | "--csum"
                    | "--checksum"
                    | "-c"
                    | "--compress"
                    | "-m"
                    | "--metadata"
                    | "-d"
                    | "--data"
                    | "-n"
                    | "--nodesize"
                    | "-s"
                    | "--sectorsize"
                    | "-u"
                    | "--subvol"
            );
            if !known {
                return Err(bad(a, "unsupported mkfs.btrfs option (supported: -L, --csum, --compress, --subvol, -f)"));
            }
            let attached = inline.is_some();
            let value = match inline {
                Some(v) => v,
                None => it.next().ok_or_else(|| bad(a, "missing value"))?.clone(),
            };
            match flag {
                "-L" | "--label" => {
                    if value.len() > 255 {
                        return Err(bad(a, "label longer than 255 bytes"));
                    }
                    self.label = Some(value);
                }
                "--csum" | "--checksum" => {
                    self.csum = CsumType::from_name(&value).ok_or_else(|| bad(a, "unknown checksum type"))?;
                }
                "-c" | "--compress" => {
                    // The option as written: `--compress=lzo`, `-clzo` or `--compress lzo`.
                    let written = if attached { a.clone() } else { format!("{a} {value}") };
                    let c = parse_compress(&value, false, "--compress zstd").map_err(|r| bad(&written, &r))?;
                    self.compress = c.filter(|c| *c != Compress::None);
                }
                "-u" | "--subvol" => {
                    let (mode, path) = match value.split_once(':') {
                        Some((m @ ("rw" | "ro" | "default" | "default-ro"), p)) => (m, p),
                        _ => ("rw", value.as_str()),
                    };
                    if path.trim_matches('/').is_empty() {
                        return Err(bad(a, "empty subvolume path"));
                    }
                    if mode.starts_with("default") {
                        self.default_subvolume = Some(path.to_string());
                    }
                    if mode.ends_with("ro") {
                        self.readonly_subvolumes.push(path.to_string());
                    }
                }
                "-m" | "--metadata" if value.eq_ignore_ascii_case("dup") => {}
                "-d" | "--data" if value.eq_ignore_ascii_case("single") => {}
                "-n" | "--nodesize" if value == "16384" || value.eq_ignore_ascii_case("16k") => {}
                "-s" | "--sectorsize" if value == "4096" || value.eq_ignore_ascii_case("4k") => {}
                _ => return Err(bad(a, "only the defaults are supported (-m dup, -d single, -n 16384, -s 4096)")),
            }
        }
        Ok(())
    }
}

/// Parse a compression value: `zstd`, `zstd:N` (N in 0..=15, 0 = the default 3), `no`,
/// `none` (`Compress::None`). `zlib[:N]` and `lzo`, which the kernel accepts but mkdisk does
/// not write, and anything else are errors (the reason; `instead` is the option to suggest).
fn parse_compress(value: &str, force: bool, instead: &str) -> Result<Option<Compress>, String> {
    let (alg, level) = match value.split_once(':') {
        Some((a, l)) => (a, Some(l)),
        None => (value, None),
    };
    match (alg, level) {
        ("zstd", _) => {}
        ("no" | "none", None) => return Ok(Some(Compress::None)),
        ("zlib", _) | ("lzo", None) => {
            return Err(format!("compression {alg:?} is not implemented yet (mkdisk writes zstd; use {instead})"))
        }
        _ => {
            return Err(format!(
                "unknown compression {value:?} (the kernel accepts zlib[:1..9], lzo, zstd[:1..15] and no; \
                 mkdisk writes zstd and no)"
            ))
        }
    }
    let level = match level {
        None => DEFAULT_ZSTD_LEVEL,
        Some(l) => {
            let n: i32 = l.parse().map_err(|_| format!("bad zstd level {l:?} (zstd:1..15, or zstd alone for 3)"))?;
            match n {
                0 => DEFAULT_ZSTD_LEVEL,
                1..=15 => n,
                _ => return Err(format!("zstd level {n} outside 1..=15")),
            }
        }
    };
    Ok(Some(Compress::Zstd { level, force }))
}

/// The compression a set of mount options asks for (also inside comma-separated lists; the
/// last one wins, as in the kernel): `compress=zstd[:N]`, `compress-force=zstd[:N]`, and
/// `compress=no`/`none` or `compress-force=no`/`none`, which give `Some(Compress::None)` (so
/// that they override a default). `None` when no option mentions compression; other options
/// are ignored.
///
/// # Errors
/// [`BtrfsError::BadArgument`] naming the option as written: `compress=zlib[:N]`,
/// `compress=lzo` and a bare `compress` or `compress-force` (the kernel's zlib) are not
/// implemented; any other algorithm (`lz4`, …) is unknown; a zstd level that is not a
/// number in 0..=15 is bad.
pub fn parse_mount_options(opts: &[String]) -> Result<Option<Compress>, BtrfsError> {
    let mut out = None;
    for o in opts.iter().flat_map(|o| o.split(',')) {
        let (force, value) = match o.split_once('=') {
            Some(("compress-force", v)) => (true, v),
            Some(("compress", v)) => (false, v),
            // Without a value the kernel compresses with zlib.
            None if o == "compress" || o == "compress-force" => (o == "compress-force", "zlib"),
            _ => continue,
        };
        let instead = "compress=zstd or compress-force=zstd";
        out = parse_compress(value, force, instead)
            .map_err(|reason| BtrfsError::BadArgument { arg: o.to_string(), reason })?;
    }
    Ok(out)
}

/// Errors from planning or writing a btrfs filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtrfsError {
    /// The content does not fit the partition ([`min_size`] finds the size that does).
    #[error("btrfs content needs {needed} bytes but the partition has {available} bytes")]
    DoesNotFit {
        /// Bytes needed (data, metadata and the reserved first MiB).
        needed: u64,
        /// Partition size.
        available: u64,
    },
    /// A file name longer than 255 bytes.
    #[error("{path}: name is {len} bytes long (btrfs allows 255)")]
    NameTooLong {
        /// Path of the entry.
        path: String,
        /// Name length.
        len: usize,
    },
    /// An extended attribute btrfs cannot hold.
    #[error("{path}: xattr {name:?} is too large or its name too long")]
    XattrTooLarge {
        /// Path of the inode.
        path: String,
        /// Attribute name.
        name: String,
    },
    /// A symlink target longer than 4095 bytes.
    #[error("{path}: symlink target is {len} bytes long (at most 4095)")]
    SymlinkTooLong {
        /// Path of the link.
        path: String,
        /// Target length.
        len: usize,
    },
    /// An inode with more names (hard links) than `nlink` can count.
    #[error("{path}: {links} hard links (btrfs counts at most 4294967295)")]
    TooManyLinks {
        /// Path of the inode (its first name).
        path: String,
        /// Number of names.
        links: usize,
    },
    /// Two subvolumes with the same path.
    #[error("subvolume {path:?} is given twice")]
    DuplicateSubvolume {
        /// The path.
        path: String,
    },
    /// A subvolume path that cannot be created.
    #[error("subvolume {path:?}: {reason}")]
    BadSubvolume {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An unsupported or malformed mkfs argument or mount option.
    #[error("btrfs option {arg:?}: {reason}")]
    BadArgument {
        /// The argument.
        arg: String,
        /// Why.
        reason: String,
    },
    /// Reading a source file failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Writing the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// zstd failed.
    #[error("zstd compression of {path}: {message}")]
    Compress {
        /// The source.
        path: String,
        /// The error.
        message: String,
    },
    /// The scratch file for compressed frames could not be created, written or read.
    #[error("btrfs scratch file in {path}: {source}")]
    Scratch {
        /// The scratch directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The region given to `write` does not match the plan, or a plan check failed.
    #[error("btrfs plan check failed: {0}")]
    Plan(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(v: &[&str]) -> Result<Option<Compress>, BtrfsError> {
        parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn mount_err(v: &[&str]) -> String {
        let e = mount(v).expect_err(&format!("{v:?} must be refused"));
        assert!(matches!(e, BtrfsError::BadArgument { .. }), "{e:?}");
        let msg = e.to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        msg
    }

    fn extra(v: &[&str]) -> Result<BtrfsOptions, BtrfsError> {
        let mut o = BtrfsOptions::new(1 << 30, Uuid::nil());
        o.apply_extra_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        Ok(o)
    }

    const fn zstd(level: i32, force: bool) -> Option<Compress> {
        Some(Compress::Zstd { level, force })
    }

    #[test]
    fn mount_options_accept_zstd_and_no() {
        assert_eq!(mount(&[]).unwrap(), None);
        assert_eq!(mount(&["noatime", "ssd,discard=async"]).unwrap(), None);
        assert_eq!(mount(&["compress=zstd"]).unwrap(), zstd(3, false));
        assert_eq!(mount(&["compress=zstd:0"]).unwrap(), zstd(3, false));
        assert_eq!(mount(&["compress=zstd:1"]).unwrap(), zstd(1, false));
        assert_eq!(mount(&["compress-force=zstd:15"]).unwrap(), zstd(15, true));
        assert_eq!(mount(&["noatime,compress=zstd:7"]).unwrap(), zstd(7, false));
        assert_eq!(mount(&["compress=no"]).unwrap(), Some(Compress::None));
        assert_eq!(mount(&["compress=none"]).unwrap(), Some(Compress::None));
        assert_eq!(mount(&["compress-force=no"]).unwrap(), Some(Compress::None));
        // The last one wins, across list items and within one.
        assert_eq!(mount(&["compress=zstd", "noatime,compress=no"]).unwrap(), Some(Compress::None));
        assert_eq!(mount(&["compress=no,compress-force=zstd:2"]).unwrap(), zstd(2, true));
    }

    #[test]
    fn mount_options_refuse_zlib_lzo_and_unknown() {
        let not_impl = |opt: &str, alg: &str| {
            format!(
                "btrfs option {opt:?}: compression {alg:?} is not implemented yet (mkdisk writes zstd; use \
                 compress=zstd or compress-force=zstd)"
            )
        };
        assert_eq!(mount_err(&["compress=lzo"]), not_impl("compress=lzo", "lzo"));
        assert_eq!(mount_err(&["noatime,compress=lzo"]), not_impl("compress=lzo", "lzo"));
        assert_eq!(mount_err(&["compress-force=lzo"]), not_impl("compress-force=lzo", "lzo"));
        assert_eq!(mount_err(&["compress=zlib"]), not_impl("compress=zlib", "zlib"));
        assert_eq!(mount_err(&["compress=zlib:3"]), not_impl("compress=zlib:3", "zlib"));
        assert_eq!(
            mount_err(&["defaults", "compress-force=zlib:9,noatime"]),
            not_impl("compress-force=zlib:9", "zlib")
        );
        // Without a value the kernel uses zlib.
        assert_eq!(mount_err(&["noatime,compress"]), not_impl("compress", "zlib"));
        assert_eq!(mount_err(&["compress-force"]), not_impl("compress-force", "zlib"));
        // An error anywhere in the list, even when a later option would win.
        assert_eq!(mount_err(&["compress=lzo", "compress=zstd"]), not_impl("compress=lzo", "lzo"));
        let unknown = |opt: &str, val: &str| {
            format!(
                "btrfs option {opt:?}: unknown compression {val:?} (the kernel accepts zlib[:1..9], lzo, \
                 zstd[:1..15] and no; mkdisk writes zstd and no)"
            )
        };
        for (opt, val) in [
            ("compress=lz4", "lz4"),
            ("compress=bogus", "bogus"),
            ("compress-force=lz4", "lz4"),
            ("compress=", ""),
            ("compress=ZSTD", "ZSTD"),
            ("compress=lzo:1", "lzo:1"),
            ("compress=no:3", "no:3"),
        ] {
            assert_eq!(mount_err(&["noatime", opt]), unknown(opt, val));
        }
        assert_eq!(
            mount_err(&["compress=zstd:x"]),
            "btrfs option \"compress=zstd:x\": bad zstd level \"x\" (zstd:1..15, or zstd alone for 3)"
        );
        assert_eq!(mount_err(&["compress=zstd:16"]), "btrfs option \"compress=zstd:16\": zstd level 16 outside 1..=15");
        assert!(mount_err(&["compress-force=zstd:-1"]).contains("outside 1..=15"));
        // Options that only look similar are not compression options.
        assert_eq!(mount(&["compression=lzo", "nocompress", "compress_x=1"]).unwrap(), None);
    }

    #[test]
    fn mkfs_compress_argument() {
        assert_eq!(extra(&["--compress", "zstd"]).unwrap().compress, zstd(3, false));
        assert_eq!(extra(&["--compress=zstd:9"]).unwrap().compress, zstd(9, false));
        assert_eq!(extra(&["-czstd:2"]).unwrap().compress, zstd(2, false));
        assert_eq!(extra(&["--compress", "zstd", "--compress", "no"]).unwrap().compress, None);
        assert_eq!(extra(&["--compress=none"]).unwrap().compress, None);
        let err = |v: &[&str]| {
            let e = extra(v).expect_err(&format!("{v:?} must be refused"));
            assert!(matches!(e, BtrfsError::BadArgument { .. }), "{e:?}");
            e.to_string()
        };
        assert_eq!(
            err(&["--compress", "lzo"]),
            "btrfs option \"--compress lzo\": compression \"lzo\" is not implemented yet (mkdisk writes zstd; use \
             --compress zstd)"
        );
        assert_eq!(
            err(&["--compress=zlib:3"]),
            "btrfs option \"--compress=zlib:3\": compression \"zlib\" is not implemented yet (mkdisk writes zstd; \
             use --compress zstd)"
        );
        assert!(err(&["-clzo"]).starts_with("btrfs option \"-clzo\": compression \"lzo\" is not implemented"));
        assert_eq!(
            err(&["--compress", "lz4"]),
            "btrfs option \"--compress lz4\": unknown compression \"lz4\" (the kernel accepts zlib[:1..9], lzo, \
             zstd[:1..15] and no; mkdisk writes zstd and no)"
        );
        assert!(err(&["--compress", "bogus"]).contains("\"--compress bogus\""));
        assert!(err(&["--compress", "zstd:x"]).contains("bad zstd level"));
        assert!(err(&["--compress"]).contains("missing value"));
    }
}
