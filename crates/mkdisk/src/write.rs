//! Executing an [`ImagePlan`]: create each disk's image as an unnamed temporary file in the
//! output directory, write the GPT, GRUB's sectors and every partition, and only then name
//! them all; on any error nothing is left in the output directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mkdisk_tree::{Image, Progress, Region};

use crate::error::BuildError;
use crate::partition::{ContentPlan, DiskImagePlan};
use crate::plan::ImagePlan;

/// What [`ImagePlan::write`] made.
#[derive(Debug)]
#[non_exhaustive]
pub struct Written {
    /// The images, one per disk, in layout order.
    pub images: Vec<PathBuf>,
    /// How long writing each disk took.
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

impl ImagePlan {
    /// Write every disk of the plan into the output directory.
    ///
    /// # Errors
    /// The output cannot be created or written; no image is left behind on error.
    pub fn write(&self, progress: &dyn Progress) -> Result<Written, BuildError> {
        progress.set_total(self.data_bytes());
        let mut images = Vec::new();
        let mut timings = Vec::new();
        for d in &self.disks {
            let start = Instant::now();
            let file = format!("{}.raw", d.placed.disk.image_name);
            progress.phase(&file);
            let path = self.out_dir.join(&file);
            let size = d.placed.layout.sectors * mkdisk_gpt::SECTOR_SIZE;
            let image = Image::create(&path, size)
                .map_err(|e| BuildError::Out { path: self.out_dir.clone(), message: e.to_string() })?;
            self.pool.install(|| write_disk(d, &image, progress))?;
            images.push(image);
            timings.push((format!("write {}", d.placed.disk.name), start.elapsed()));
        }
        Ok(Written { images: mkdisk_tree::persist_all(images)?, timings })
    }
}
