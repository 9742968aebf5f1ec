//! Executing an [`ImagePlan`]: create each disk's image as an unnamed temporary file in the
//! output directory, write the GPT, GRUB's sectors and every partition, convert it into the
//! output format (and its bmap) from unnamed files too, and only then name the outputs all
//! together; on any error, or when the process dies, nothing is left in the output directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mkdisk_outputs::Named;
use mkdisk_tree::{Image, Progress, Region};

use crate::error::BuildError;
use crate::options::OutputFormat;
use crate::partition::{ContentPlan, DiskImagePlan};
use crate::plan::ImagePlan;

/// What [`ImagePlan::write`] made.
#[derive(Debug)]
#[non_exhaustive]
pub struct Written {
    /// The files written, per disk in layout order: the image (`<imageName>.<ext>`), then
    /// its bmap when asked for.
    pub images: Vec<PathBuf>,
    /// How long writing (and converting) each disk took.
    pub timings: Vec<(String, Duration)>,
}

fn write_content(region: &Region, content: &ContentPlan, progress: &dyn Progress) -> Result<(), crate::FsError> {
    match content {
        ContentPlan::None => {}
        ContentPlan::Swap(page) => region.write_at(0, page)?,
        ContentPlan::Fat(layout, tree) => mkdisk_fat::write(layout, tree, region, progress)?,
        ContentPlan::Ext4(layout, tree) => mkdisk_ext4::write(layout, tree, region, progress)?,
        ContentPlan::Btrfs(layout, _) => mkdisk_btrfs::write(layout, region, progress)?,
    }
    Ok(())
}

/// The partition table, GRUB's sectors (over the protective MBR's boot code) and every
/// partition of one disk.
fn write_disk(d: &DiskImagePlan, image: &Image, progress: &dyn Progress) -> Result<(), BuildError> {
    let layout = &d.placed.layout;
    let disk = &d.placed.disk.name;
    mkdisk_gpt::write_gpt(layout, &image.whole()).map_err(|source| BuildError::Gpt { disk: disk.clone(), source })?;
    if let Some(g) = &d.grub {
        image.whole().write_at(g.core_offset, &g.core)?;
        image.whole().write_at(0, &g.mbr)?;
    }
    for p in &d.partitions {
        let placed = &layout.partitions[p.index];
        let region = image.region(&placed.label, placed.offset_bytes(), placed.size_bytes())?;
        write_content(&region, &p.content, progress).map_err(|e| BuildError::partition(disk, &placed.name, e))?;
    }
    Ok(())
}

/// What a copy onto a disk with old data must write as zeros although the raw image leaves
/// it a hole, as disk byte ranges: the first and last MiB of the disk and of every partition
/// (where old partition tables and filesystem signatures live, as mkfs tools wipe them) and
/// each filesystem's own (the ext4 journal). Everything else that must read as zero is written
/// (GPT entry arrays, FAT tables and directory clusters, inode tables in use, btrfs nodes)
/// or made irrelevant by the metadata (never-used ext4 inode tables are flagged uninitialised).
pub(crate) fn zero_ranges(d: &DiskImagePlan) -> Vec<(u64, u64)> {
    const WIPE: u64 = 1 << 20;
    let ends = |off: u64, len: u64| [(off, len.min(WIPE)), (off + len.saturating_sub(WIPE), len.min(WIPE))];
    let layout = &d.placed.layout;
    let mut v: Vec<(u64, u64)> = ends(0, layout.sectors * mkdisk_gpt::SECTOR_SIZE).to_vec();
    for p in &d.partitions {
        let placed = &layout.partitions[p.index];
        let off = placed.offset_bytes();
        v.extend(ends(off, placed.size_bytes()));
        if let ContentPlan::Ext4(l, _) = &p.content {
            v.extend(l.zero_ranges().into_iter().map(|(o, n)| (off + o, n)));
        }
    }
    v.sort_unstable();
    v
}

/// The disk byte ranges holding already-compressed data (btrfs's zstd frames), which the
/// zstd stream stores rather than compresses again.
fn compressed_ranges(d: &DiskImagePlan) -> Vec<(u64, u64)> {
    let layout = &d.placed.layout;
    let mut v = Vec::new();
    for p in &d.partitions {
        if let ContentPlan::Btrfs(l, _) = &p.content {
            let off = layout.partitions[p.index].offset_bytes();
            v.extend(l.frame_ranges().into_iter().map(|(o, n)| (off + o, n)));
        }
    }
    v.sort_unstable();
    v
}

impl ImagePlan {
    /// Write every disk of the plan into the output directory, in the output format.
    ///
    /// # Errors
    /// The output cannot be created or written; no image is left behind on error.
    pub fn write(&self, progress: &dyn Progress) -> Result<Written, BuildError> {
        progress.set_total(self.data_bytes());
        let mut outputs = Vec::new();
        let mut timings = Vec::new();
        for d in &self.disks {
            let start = Instant::now();
            let (ext, base) = self.output.format.disk_file();
            let file = format!("{}.{ext}", d.placed.disk.image_name);
            progress.phase(&file);
            let path = self.out_dir.join(&file);
            let size = d.placed.layout.sectors * mkdisk_gpt::SECTOR_SIZE;
            let image = self.create(&path, size, base)?;
            self.pool.install(|| write_disk(d, &image, progress))?;
            timings.push((format!("write {}", d.placed.disk.name), start.elapsed()));
            let start = Instant::now();
            outputs.extend(self.pool.install(|| self.convert(d, image, progress))?);
            if self.output.bmap || !matches!(self.output.format, OutputFormat::Raw | OutputFormat::Vhd) {
                timings.push((format!("convert {}", d.placed.disk.name), start.elapsed()));
            }
        }
        Ok(Written { images: mkdisk_tree::persist_all(outputs)?, timings })
    }

    /// An unnamed file in the output directory that becomes `path` when the build succeeds,
    /// `size` bytes from `base` on.
    fn create(&self, path: &std::path::Path, size: u64, base: u64) -> Result<Image, BuildError> {
        Image::create_at(path, size, base)
            .map_err(|e| BuildError::Out { path: self.out_dir.clone(), message: e.to_string() })
    }

    /// The disk's output files, made from its finished raw image: the image in the output
    /// format (the raw image itself for `raw`, with the footer for `vhd`, with its tables for
    /// `qcow2`; otherwise it is dropped, unnamed), then the bmap.
    fn convert(&self, d: &DiskImagePlan, raw: Image, progress: &dyn Progress) -> Result<Vec<Image>, BuildError> {
        let name = &d.placed.disk.image_name;
        let err = |source| BuildError::Output { disk: d.placed.disk.name.clone(), source };
        let src = Named::at(raw.file(), raw.path(), raw.base());
        let bmap = if self.output.bmap {
            progress.phase(&format!("{name}.raw.bmap"));
            let out = self.create(&self.out_dir.join(format!("{name}.raw.bmap")), 0, 0)?;
            let ranges = zero_ranges(d);
            // (A VHD gets its footer and a qcow2 its tables only after this, so the bmap sees
            // exactly the raw disk.)
            mkdisk_outputs::bmap_into(src, &format!("{name}.raw"), &ranges, Named::new(out.file(), out.path()))
                .map_err(err)?;
            Some(out)
        } else {
            None
        };
        let format = self.output.format;
        let image = match format {
            OutputFormat::Raw => raw,
            OutputFormat::Vhd => {
                let size = d.placed.layout.sectors * mkdisk_gpt::SECTOR_SIZE;
                let ts = self.output.vhd_timestamp();
                mkdisk_outputs::vhd_finish(src, size, self.vhd_uuid(&d.placed.disk.name), ts).map_err(err)?;
                raw
            }
            OutputFormat::Qcow2 => {
                mkdisk_outputs::qcow2_finish(src, raw.size()).map_err(err)?;
                raw
            }
            _ => {
                let file = format!("{name}.{}", format.extension());
                progress.phase(&file);
                let out = self.create(&self.out_dir.join(file), 0, 0)?;
                self.encode(format, d, src, Named::new(out.file(), out.path())).map_err(err)?;
                out
            }
        };
        Ok(std::iter::once(image).chain(bmap).collect())
    }

    /// The VHD footer's unique id: one per disk of the build, from the seed.
    fn vhd_uuid(&self, disk: &str) -> [u8; 16] {
        let mut key = self.output.seed.as_bytes().to_vec();
        key.extend_from_slice(disk.as_bytes());
        mkdisk_outputs::vhd_uuid(&key)
    }

    /// Encode the raw image `src` as a compressed stream into `out` on the build's threads.
    fn encode(
        &self,
        format: OutputFormat,
        d: &DiskImagePlan,
        src: Named<'_>,
        out: Named<'_>,
    ) -> Result<(), mkdisk_outputs::OutputError> {
        let threads = u32::try_from(self.pool.current_num_threads()).unwrap_or(u32::MAX);
        match format {
            OutputFormat::RawZst => {
                mkdisk_outputs::zstd_into(src, out, ZSTD_LEVEL, threads, &compressed_ranges(d))?;
            }
            OutputFormat::RawGz => {
                mkdisk_outputs::gzip_into(src, out, GZIP_LEVEL, threads)?;
            }
            OutputFormat::Raw | OutputFormat::Vhd | OutputFormat::Qcow2 => {}
        }
        Ok(())
    }
}

/// zstd's own default level (`zstd -3`): about gzip -6's ratio at many times its speed.
const ZSTD_LEVEL: i32 = 3;
/// gzip's default level.
const GZIP_LEVEL: u32 = 6;
