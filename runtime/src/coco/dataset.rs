//! The COCO annotation file (`instances_*.json`): images, annotations and categories, read with
//! every reference checked so that training and evaluation can index without failing later.
//!
//! Fields that COCO files carry and nothing here uses (`info`, `licenses`, `license`, `coco_url`,
//! ...) are skipped on reading and not written back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mask::{Rle, RleError};

/// A COCO annotation file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub images: Vec<Image>,
    /// Absent in files that list images only (a test set's `image_info_*.json`).
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    pub categories: Vec<Category>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: i64,
    /// Relative to the image folder; COCO's are bare names.
    pub file_name: String,
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// The object's area in pixels (COCO: the mask's), which evaluation's area ranges use.
    pub area: f64,
    /// 1 for a crowd region: matched by no detection, it makes detections on it ignored.
    #[serde(default)]
    pub iscrowd: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
}

/// An object's mask as COCO stores it: polygons for single objects, RLE (uncompressed for crowd
/// regions in COCO's own files, compressed in results and elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// Each polygon is `[x1, y1, x2, y2, ...]` in pixel coordinates.
    Polygons(Vec<Vec<f64>>),
    Rle {
        /// `[height, width]`.
        size: [u32; 2],
        counts: RleCounts,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// pycocotools' string form (`rleToString`).
    Compressed(String),
    /// The run lengths themselves, zeros first, column-major.
    Uncompressed(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: i64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// Why an annotation file or one of its masks was refused.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    /// One entry of the file is wrong; `entry` names it (`annotation 17 (image 4)`).
    #[error("{}: {entry}: {problem}", path.display())]
    Entry { path: PathBuf, entry: String, problem: String },
    /// A mask that cannot be converted, outside any file.
    #[error("{0}")]
    Segmentation(#[from] SegmentationError),
    /// Writing failed (the message names the file).
    #[error("{0}")]
    Write(String),
}

/// Why a segmentation cannot become a mask of its image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentationError {
    #[error("no polygons")]
    NoPolygons,
    #[error("polygon {index} with {points} points")]
    TooFewPoints { index: usize, points: usize },
    #[error("polygon {index} has an odd number of coordinates ({coordinates})")]
    OddCoordinates { index: usize, coordinates: usize },
    #[error("polygon {index} has a non-finite coordinate")]
    NonFinite { index: usize },
    #[error("polygon {index} has the point ({x}, {y}), far outside the image ({height}x{width})")]
    FarOutside { index: usize, x: f64, y: f64, height: u32, width: u32 },
    #[error("RLE of size {height}x{width} on an image of {image_height}x{image_width}")]
    SizeMismatch { height: u32, width: u32, image_height: u32, image_width: u32 },
    #[error("{0}")]
    Rle(#[from] RleError),
}

/// How far (in pixels) a box may reach past its image's border: annotation tools round.
const BOX_TOLERANCE: f64 = 1.0;

impl Dataset {
    /// Reads and checks an annotation file: ids unique, every annotation on a listed image and
    /// category, polygons of at least 3 points, boxes of non-negative size inside their image
    /// (within [`BOX_TOLERANCE`]), RLE of its image's size and covering it exactly.
    pub fn read(path: &Path) -> Result<Dataset, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_owned(), source })?;
        let dataset: Dataset = serde_json::from_slice(&bytes).map_err(|e| DatasetError::Json {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: json_message(&e),
        })?;
        dataset.check().map_err(|(entry, problem)| DatasetError::Entry { path: path.to_owned(), entry, problem })?;
        Ok(dataset)
    }

    /// Writes the file atomically (a temporary file renamed over `path`).
    pub fn write(&self, path: &Path) -> Result<(), DatasetError> {
        crate::program::coco::write_json_atomic(path, self).map_err(DatasetError::Write)
    }

    /// The first problem found, as (entry, problem).
    fn check(&self) -> Result<(), (String, String)> {
        let mut images = HashMap::new();
        for (index, image) in self.images.iter().enumerate() {
            let entry = || format!("image {}", image.id);
            if let Some(first) = images.insert(image.id, (index, image)) {
                return Err((entry(), format!("duplicate id (images[{}] and images[{index}])", first.0)));
            }
            if image.height == 0 || image.width == 0 {
                return Err((entry(), format!("size {}x{}", image.height, image.width)));
            }
        }
        let mut categories = HashMap::new();
        for (index, category) in self.categories.iter().enumerate() {
            if let Some(first) = categories.insert(category.id, index) {
                let problem = format!("duplicate id (categories[{first}] and categories[{index}])");
                return Err((format!("category {}", category.id), problem));
            }
        }
        let mut annotation_ids = HashMap::new();
        for (index, annotation) in self.annotations.iter().enumerate() {
            let entry = || format!("annotation {} (image {})", annotation.id, annotation.image_id);
            if let Some(first) = annotation_ids.insert(annotation.id, index) {
                return Err((entry(), format!("duplicate id (annotations[{first}] and annotations[{index}])")));
            }
            let Some(&(_, image)) = images.get(&annotation.image_id) else {
                return Err((entry(), format!("image id {} is not in images", annotation.image_id)));
            };
            if !categories.contains_key(&annotation.category_id) {
                return Err((entry(), format!("category id {} is not in categories", annotation.category_id)));
            }
            check_annotation(annotation, image).map_err(|problem| (entry(), problem))?;
        }
        Ok(())
    }
}

fn check_annotation(annotation: &Annotation, image: &Image) -> Result<(), String> {
    let [x, y, w, h] = annotation.bbox;
    if !annotation.bbox.iter().all(|v| v.is_finite()) {
        return Err(format!("bbox {:?} is not finite", annotation.bbox));
    }
    if w < 0.0 || h < 0.0 {
        return Err(format!("bbox {:?} has a negative size", annotation.bbox));
    }
    let (width, height) = (f64::from(image.width), f64::from(image.height));
    if x < -BOX_TOLERANCE || y < -BOX_TOLERANCE || x + w > width + BOX_TOLERANCE || y + h > height + BOX_TOLERANCE {
        return Err(format!("bbox {:?} is outside the image ({}x{})", annotation.bbox, image.width, image.height));
    }
    if !annotation.area.is_finite() || annotation.area < 0.0 {
        return Err(format!("area {} is not a non-negative number", annotation.area));
    }
    if annotation.iscrowd > 1 {
        return Err(format!("iscrowd is {}, not 0 or 1", annotation.iscrowd));
    }
    match &annotation.segmentation {
        None => Ok(()),
        // Polygons are rasterized on use; their shape is checked here, cheaply.
        Some(Segmentation::Polygons(polygons)) => {
            check_polygons(polygons, image.height, image.width).map_err(|e| e.to_string())
        }
        Some(rle @ Segmentation::Rle { .. }) => {
            rle.to_rle(image.height, image.width).map(drop).map_err(|e| e.to_string())
        }
    }
}

/// Polygons of at least 3 points each, within the image give or take its larger side
/// (rasterizing traces every edge, so a wild coordinate would cost time and memory in
/// proportion).
fn check_polygons(polygons: &[Vec<f64>], height: u32, width: u32) -> Result<(), SegmentationError> {
    if polygons.is_empty() {
        return Err(SegmentationError::NoPolygons);
    }
    for (index, polygon) in polygons.iter().enumerate() {
        if polygon.len() % 2 != 0 {
            return Err(SegmentationError::OddCoordinates { index, coordinates: polygon.len() });
        }
        if polygon.len() < 6 {
            return Err(SegmentationError::TooFewPoints { index, points: polygon.len() / 2 });
        }
        if !polygon.iter().all(|v| v.is_finite()) {
            return Err(SegmentationError::NonFinite { index });
        }
        let (h, w) = (f64::from(height), f64::from(width));
        let margin = h.max(w);
        let far = |p: &&[f64]| !(-margin..=w + margin).contains(&p[0]) || !(-margin..=h + margin).contains(&p[1]);
        if let Some(p) = polygon.chunks_exact(2).find(far) {
            return Err(SegmentationError::FarOutside { index, x: p[0], y: p[1], height, width });
        }
    }
    Ok(())
}

impl Segmentation {
    /// The mask on a `height × width` image, as pycocotools' `annToRLE` makes it: polygons each
    /// rasterized by `rleFrPoly` and merged (union), uncompressed RLE taken as it is, compressed
    /// RLE decoded. An RLE must be of the image's size.
    pub fn to_rle(&self, height: u32, width: u32) -> Result<Rle, DatasetError> {
        Ok(self.mask(height, width)?)
    }

    fn mask(&self, height: u32, width: u32) -> Result<Rle, SegmentationError> {
        match self {
            Segmentation::Polygons(polygons) => {
                check_polygons(polygons, height, width)?;
                let rles: Vec<Rle> = polygons.iter().map(|p| Rle::from_polygon(p, height, width)).collect();
                Ok(Rle::merge(&rles, false)?)
            }
            Segmentation::Rle { size: [h, w], counts } => {
                if (*h, *w) != (height, width) {
                    let (image_height, image_width) = (height, width);
                    return Err(SegmentationError::SizeMismatch { height: *h, width: *w, image_height, image_width });
                }
                Ok(match counts {
                    RleCounts::Compressed(s) => Rle::from_coco_string(height, width, s)?,
                    RleCounts::Uncompressed(counts) => Rle::from_counts(height, width, counts.clone())?,
                })
            }
        }
    }
}

/// serde_json's message without its own " at line L column C" suffix (the error says where).
pub(crate) fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}
