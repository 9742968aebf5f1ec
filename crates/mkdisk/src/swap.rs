//! The swap signature `mkswap` writes (util-linux `mkswap.c`, `include/swapheader.h`):
//! the first page holds 1024 bytes of boot space, then `struct swap_header_v1_2`
//! (`version` = 1, `last_page`, `nr_badpages`, `uuid[16]`, `volume_name[16]`), and the page
//! ends with the magic `SWAPSPACE2`. The whole first page is written (zeros included) so the
//! signature is valid on a dirty target; the rest of the partition is left sparse.

use uuid::Uuid;

/// Page size of the swap area (x86-64, aarch64 with 4 KiB pages).
pub const PAGE_SIZE: u64 = 4096;

/// The fewest pages mkswap accepts.
pub const MIN_PAGES: u64 = 10;

/// Errors from the swap writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwapError {
    /// Fewer than 10 pages (mkswap's minimum).
    #[error("swap partition of {bytes} bytes is too small (mkswap needs at least 10 pages of {PAGE_SIZE} bytes)")]
    TooSmall {
        /// Partition size.
        bytes: u64,
    },
    /// More pages than the header's 32-bit `last_page` counts.
    #[error(
        "swap partition of {bytes} bytes is too large (the swap header counts at most 2^32 pages of {PAGE_SIZE} bytes)"
    )]
    TooLarge {
        /// Partition size.
        bytes: u64,
    },
    /// A label over 16 bytes.
    #[error("swap label {0:?} is longer than 16 bytes")]
    LabelTooLong(String),
    /// An `extraArgs` entry mkdisk does not understand.
    #[error("unsupported mkswap argument {0:?} (supported: -L/--label LABEL, -U/--uuid UUID)")]
    BadArg(String),
    /// Writing failed.
    #[error(transparent)]
    Image(#[from] mkdisk_tree::ImageError),
}

/// Swap options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapOptions {
    /// UUID (big-endian byte order as `uuid_parse` gives it).
    pub uuid: Uuid,
    /// Volume label (≤ 16 bytes).
    pub label: Option<String>,
}

impl SwapOptions {
    /// Apply mkswap `extraArgs`: `-L/--label`, `-U/--uuid`.
    ///
    /// # Errors
    /// Anything else, or a missing value.
    pub fn apply_extra_args(&mut self, args: &[String]) -> Result<(), SwapError> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-L" | "--label" => self.label = Some(it.next().ok_or_else(|| SwapError::BadArg(a.clone()))?.clone()),
                "-U" | "--uuid" => {
                    let v = it.next().ok_or_else(|| SwapError::BadArg(a.clone()))?;
                    self.uuid = Uuid::parse_str(v).map_err(|_| SwapError::BadArg(format!("{a} {v}")))?;
                }
                _ => return Err(SwapError::BadArg(a.clone())),
            }
        }
        Ok(())
    }
}

/// The first page of a swap area of `bytes` bytes.
///
/// # Errors
/// Too small, or a label over 16 bytes.
pub fn swap_header(bytes: u64, opts: &SwapOptions) -> Result<Vec<u8>, SwapError> {
    let pages = bytes / PAGE_SIZE;
    if pages < MIN_PAGES {
        return Err(SwapError::TooSmall { bytes });
    }
    let last_page = u32::try_from(pages - 1).map_err(|_| SwapError::TooLarge { bytes })?;
    let mut page = vec![0u8; 4096];
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes()); // version
    page[1028..1032].copy_from_slice(&last_page.to_le_bytes()); // last_page
    page[1032..1036].copy_from_slice(&0u32.to_le_bytes()); // nr_badpages
    page[1036..1052].copy_from_slice(opts.uuid.as_bytes()); // sws_uuid
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(SwapError::LabelTooLong(l.clone()));
        }
        page[1052..1052 + l.len()].copy_from_slice(l.as_bytes()); // sws_volume
    }
    page[4096 - 10..].copy_from_slice(b"SWAPSPACE2");
    Ok(page)
}
