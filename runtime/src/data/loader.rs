//! A COCO-format training set read as torchvision's detection references read one
//! (`references/detection/coco_utils.py`), and the loader that turns it into batches.
//!
//! - Images are taken in the order of their ids (`CocoDetection` sorts them); an image is kept
//!   when one of its annotations, crowd regions included, has a width and a height above one
//!   pixel (`_coco_remove_images_without_annotations`), or always with `keep_empty`.
//! - Targets (`ConvertCocoPolysToMask`): crowd annotations dropped; boxes `[x, y, w, h]` →
//!   `[x1, y1, x2, y2]` in float32, clipped to the image, those without area dropped; each
//!   mask the union of its segmentation's polygons or its RLE, at the image's size. An image kept
//!   by the first rule may so end with no targets: it is then a negative, as in torchvision.
//! - Categories become labels 1..=K in the order of their ids (0 is the background).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;

use super::batch::{self, Batch, BatchOptions, Example};
use super::prefetch::Prefetch;
use super::{DataError, Result};
use crate::coco::dataset::{Dataset, Image, Segmentation};

/// Where the images are and which images are kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingSetOptions {
    /// The image folder (default: `images/` beside the annotation file).
    pub images: Option<PathBuf>,
    /// Keep images without usable annotations, as negatives with no targets.
    pub keep_empty: bool,
}

/// The images of a training set with their targets, ready to be decoded one by one.
#[derive(Debug)]
pub struct TrainingSet {
    annotation_file: PathBuf,
    image_dir: PathBuf,
    entries: Vec<Entry>,
    /// Indexed by label; entry 0 is the background.
    class_names: Vec<String>,
    category_ids: Vec<i64>,
}

#[derive(Debug)]
struct Entry {
    image: Image,
    objects: Vec<Object>,
}

#[derive(Debug)]
struct Object {
    annotation_id: i64,
    bbox: [f32; 4],
    label: i64,
    segmentation: Segmentation,
}

/// The name of label 0 (torchvision's convention, which compiled programs share).
pub const BACKGROUND: &str = "__background__";

impl TrainingSet {
    /// Reads `annotations` and selects the images and targets (see the module's rules).
    pub fn open(annotations: &Path, options: &TrainingSetOptions) -> Result<TrainingSet> {
        // Read with every reference and box checked; the lookups below cannot miss.
        let dataset = Dataset::read(annotations)?;
        let image_dir = match &options.images {
            Some(dir) => dir.clone(),
            None => annotations.parent().unwrap_or(Path::new("")).join("images"),
        };
        let mut categories: Vec<_> = dataset.categories.iter().collect();
        categories.sort_by_key(|c| c.id);
        let label_of: HashMap<i64, i64> = categories.iter().enumerate().map(|(i, c)| (c.id, i as i64 + 1)).collect();
        let mut class_names = vec![BACKGROUND.to_string()];
        class_names.extend(categories.iter().map(|c| c.name.clone()));
        let mut category_ids = vec![0];
        category_ids.extend(categories.iter().map(|c| c.id));

        let mut images: Vec<Image> = dataset.images;
        images.sort_by_key(|i| i.id);
        let position: HashMap<i64, usize> = images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
        let mut objects: Vec<Vec<Object>> = images.iter().map(|_| Vec::new()).collect();
        let mut valid = vec![options.keep_empty; images.len()];
        for a in &dataset.annotations {
            let entry = || format!("annotation {} (image {})", a.id, a.image_id);
            let index = *position
                .get(&a.image_id)
                .ok_or_else(|| DataError::entry(annotations, entry(), format!("image {} is not listed", a.image_id)))?;
            let label = *label_of.get(&a.category_id).ok_or_else(|| {
                DataError::entry(annotations, entry(), format!("category {} is not listed", a.category_id))
            })?;
            valid[index] |= a.bbox[2] > 1.0 && a.bbox[3] > 1.0;
            if a.iscrowd != 0 {
                continue;
            }
            let segmentation = a
                .segmentation
                .clone()
                .ok_or_else(|| DataError::entry(annotations, entry(), "no segmentation (a mask is needed to train)"))?;
            let (w, h) = (images[index].width as f32, images[index].height as f32);
            // float32 as torchvision: the corner is added after the conversion.
            let [x, y, bw, bh] = a.bbox.map(|v| v as f32);
            let bbox = [x.clamp(0.0, w), y.clamp(0.0, h), (x + bw).clamp(0.0, w), (y + bh).clamp(0.0, h)];
            if bbox[2] > bbox[0] && bbox[3] > bbox[1] {
                objects[index].push(Object { annotation_id: a.id, bbox, label, segmentation });
            }
        }
        let entries = images
            .into_iter()
            .zip(objects)
            .zip(valid)
            .filter(|(_, keep)| *keep)
            .map(|((image, objects), _)| Entry { image, objects })
            .collect();
        Ok(TrainingSet { annotation_file: annotations.to_path_buf(), image_dir, entries, class_names, category_ids })
    }

    /// The number of images kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The category names indexed by label, `__background__` first.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The data set's category ids indexed by label (0 for the background at label 0).
    pub fn labels_to_category_ids(&self) -> &[i64] {
        &self.category_ids
    }

    /// The ids of the kept images, in the order batches take them (unshuffled).
    pub fn image_ids(&self) -> Vec<i64> {
        self.entries.iter().map(|e| e.image.id).collect()
    }

    pub fn annotation_file(&self) -> &Path {
        &self.annotation_file
    }

    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    /// The targets of kept image `index` without decoding it: boxes and labels.
    pub fn targets(&self, index: usize) -> Option<(Vec<[f32; 4]>, Vec<i64>)> {
        let e = self.entries.get(index)?;
        Some((e.objects.iter().map(|o| o.bbox).collect(), e.objects.iter().map(|o| o.label).collect()))
    }

    /// Decodes kept image `index` and rasterizes its masks.
    ///
    /// # Panics
    /// When `index >= self.len()`.
    pub fn example(&self, index: usize) -> Result<Example> {
        let Entry { image: info, objects } = &self.entries[index];
        let path = self.image_dir.join(&info.file_name);
        let image_error = |msg: String| DataError::Image {
            image: path.clone(),
            annotations: self.annotation_file.clone(),
            entry: format!("{} ({:?})", info.id, info.file_name),
            msg,
        };
        let image = crate::program::inputs::decode(&path, false).map_err(image_error)?.image;
        if image.dimensions() != (info.width, info.height) {
            let (w, h) = image.dimensions();
            return Err(image_error(format!(
                "{w}x{h} pixels, the annotation file says {}x{}",
                info.width, info.height
            )));
        }
        let mut masks = Vec::with_capacity(objects.len() * (info.width * info.height) as usize);
        for o in objects {
            let rle = o.segmentation.to_rle(info.height, info.width).map_err(|e| {
                DataError::entry(
                    &self.annotation_file,
                    format!("annotation {} (image {})", o.annotation_id, info.id),
                    e.to_string(),
                )
            })?;
            masks.extend(rle.decode().into_iter().map(u8::from));
        }
        Ok(Example {
            image_id: info.id,
            image,
            boxes: objects.iter().map(|o| o.bbox).collect(),
            labels: objects.iter().map(|o| o.label).collect(),
            masks,
        })
    }
}

/// How batches are drawn from a training set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderOptions {
    /// Images per batch (`N`).
    pub batch_size: usize,
    /// Visit the images in an order shuffled per epoch from `batch.seed` instead of in order.
    pub shuffle: bool,
    pub batch: BatchOptions,
}

/// Batches of a training set: the batch of iteration `i` holds the images at positions
/// `[i·N, (i+1)·N)` of the endless sequence of epochs, so that any batch can be recomputed from
/// its iteration alone (resuming, or several workers at once).
#[derive(Clone, Debug)]
pub struct Loader {
    set: Arc<TrainingSet>,
    options: LoaderOptions,
}

impl Loader {
    /// Refuses an empty set and a batch size of 0.
    pub fn new(set: TrainingSet, options: LoaderOptions) -> Result<Loader> {
        if set.is_empty() {
            let msg = "no image to train on: none has an annotation of more than one pixel (keep_empty keeps them)";
            return Err(DataError::File { path: set.annotation_file.clone(), msg: msg.into() });
        }
        if options.batch_size == 0 {
            return Err(DataError::File { path: set.annotation_file.clone(), msg: "batch size 0".into() });
        }
        Ok(Loader { set: Arc::new(set), options })
    }

    pub fn set(&self) -> &TrainingSet {
        &self.set
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// The indices (into the training set) of the images of iteration `iteration`'s batch.
    pub fn indices(&self, iteration: u64) -> Vec<usize> {
        const SHUFFLE: u64 = 0x7368_7566;
        let len = self.set.len() as u64;
        let n = self.options.batch_size as u64;
        let mut order: Option<(u64, Vec<usize>)> = None;
        (iteration * n..(iteration + 1) * n)
            .map(|position| {
                let (epoch, k) = (position / len, (position % len) as usize);
                if !self.options.shuffle {
                    return k;
                }
                match &order {
                    Some((e, o)) if *e == epoch => o[k],
                    _ => {
                        let mut o: Vec<usize> = (0..self.set.len()).collect();
                        o.shuffle(&mut super::stream(self.options.batch.seed, &[SHUFFLE, epoch]));
                        let index = o[k];
                        order = Some((epoch, o));
                        index
                    }
                }
            })
            .collect()
    }

    /// The batch of iteration `iteration`: its images decoded, flipped where drawn, transformed.
    pub fn batch(&self, iteration: u64) -> Result<Batch> {
        let mut examples =
            self.indices(iteration).into_iter().map(|i| self.set.example(i)).collect::<Result<Vec<_>>>()?;
        for (position, example) in examples.iter_mut().enumerate() {
            if batch::flips(&self.options.batch, iteration, position) {
                example.flip_horizontal();
            }
        }
        batch::collate(&examples, &self.options.batch.transform)
    }

    /// Batches from iteration `start` on, prepared by `workers` threads at most `depth` ahead of
    /// the one taken last.
    pub fn prefetch(&self, start: u64, workers: usize, depth: usize) -> Prefetch {
        Prefetch::new(self.clone(), start, workers, depth)
    }
}
