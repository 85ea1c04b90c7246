//! Importers of the formats matterport's users label with (`mrc data convert`), writing one COCO
//! annotation file:
//!
//! - VIA (VGG Image Annotator) JSON: the annotation export (a map of image entries with
//!   `filename` and `regions`, as the balloon sample's `via_region_data.json`) or a saved 2.x
//!   project (the same map under `_via_img_metadata`); regions a list (2.x) or a map (1.x);
//!   shapes `polygon` (`all_points_x`, `all_points_y`), `rect`, `circle` and `ellipse`.
//! - labelme 5.x per-image JSON: `shapes` of type `polygon`, `rectangle` or `circle`, `imagePath`,
//!   `imageHeight`, `imageWidth`.
//!
//! Every region becomes one annotation whose segmentation is its polygon (rectangles as four
//! corners, circles and ellipses as 64-gons); `area` and `bbox` are those of the polygon
//! rasterized as pycocotools does. Images get ids from 1 in input order, annotations likewise;
//! categories ids from 1, in the order of `ConvertOptions::categories` or else of first use.
//! VIA's file names are looked up in the image folder (`ConvertOptions::images`, default: the
//! VIA file's folder), labelme's `imagePath` beside its JSON file; either way an image's
//! `file_name` is written relative to the image folder, the folder a trainer is pointed at.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{two_decimals, DataError, Result};
use crate::coco::dataset::{Annotation, Category, Dataset, Image, Segmentation};
use crate::coco::mask::Rle;

/// The format of the input files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// VIA 1.x/2.x annotation JSON or 2.x project (one file for many images).
    Via,
    /// labelme 5.x JSON (one file per image).
    Labelme,
}

/// What the formats leave open.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertOptions {
    /// The folder the written `file_name`s are relative to (default: the first input's folder).
    pub images: Option<PathBuf>,
    /// VIA: the region attribute that names a region's category; without it every region is of
    /// category `category`.
    pub attribute: Option<String>,
    /// VIA without `attribute`: the one category's name (default `object`).
    pub category: Option<String>,
    /// The categories in id order; a label not among them is an error. Empty: in order of first
    /// use.
    pub categories: Vec<String>,
}

/// Vertices of the polygons standing for circles and ellipses.
const ROUND_VERTICES: usize = 64;

/// Converts `inputs` (VIA: usually one file; labelme: one per image) into one COCO annotation
/// file `output`, written atomically. Returns what was written.
pub fn convert(from: Format, inputs: &[PathBuf], output: &Path, options: &ConvertOptions) -> Result<Dataset> {
    let first = inputs.first().ok_or_else(|| DataError::File { path: output.into(), msg: "no input file".into() })?;
    let image_root = match &options.images {
        Some(dir) => dir.clone(),
        None => folder_of(first),
    };
    let image_root = image_root.canonicalize().map_err(|source| DataError::Io { path: image_root.clone(), source })?;
    let mut builder = Builder {
        image_root,
        categories: options.categories.clone(),
        fixed_categories: !options.categories.is_empty(),
        dataset: Dataset { images: Vec::new(), annotations: Vec::new(), categories: Vec::new() },
        files: HashMap::new(),
    };
    for input in inputs {
        let text = std::fs::read(input).map_err(|source| DataError::Io { path: input.clone(), source })?;
        match from {
            Format::Via => read_via(&text, input, options, &mut builder)?,
            Format::Labelme => read_labelme(&text, input, &mut builder)?,
        }
    }
    builder.dataset.categories = (1..)
        .zip(&builder.categories)
        .map(|(id, name)| Category { id, name: name.clone(), supercategory: None })
        .collect();
    builder.dataset.write(output)?;
    Ok(builder.dataset)
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The data set as it grows, input by input.
struct Builder {
    image_root: PathBuf,
    categories: Vec<String>,
    fixed_categories: bool,
    dataset: Dataset,
    /// Images already added, by resolved path: an image listed twice is an error.
    files: HashMap<PathBuf, String>,
}

impl Builder {
    /// Adds the image `written` (a path as the format writes it, relative to `base`), checking
    /// that it exists and, where the format gives it, its size. Returns its id, height and width.
    fn add_image(
        &mut self,
        input: &Path,
        entry: &str,
        base: &Path,
        written: &str,
        size: Option<(u32, u32)>,
    ) -> Result<(i64, u32, u32)> {
        let fail = |msg: String| DataError::entry(input, entry, msg);
        let path = base.join(written.replace('\\', "/"));
        let resolved = path.canonicalize().map_err(|e| fail(format!("image {}: {e}", path.display())))?;
        let (width, height) =
            image::image_dimensions(&resolved).map_err(|e| fail(format!("image {}: {e}", path.display())))?;
        if let Some((h, w)) = size {
            if (h, w) != (height, width) {
                return Err(fail(format!("the file says {w}x{h}, image {} is {width}x{height}", path.display())));
            }
        }
        let file_name = resolved.strip_prefix(&self.image_root).map_err(|_| {
            fail(format!("image {} is outside the image folder {}", path.display(), self.image_root.display()))
        })?;
        let file_name = file_name.to_string_lossy().replace('\\', "/");
        if let Some(earlier) = self.files.insert(resolved.clone(), entry.to_string()) {
            return Err(fail(format!("image {} is also that of {earlier}", path.display())));
        }
        let id = self.dataset.images.len() as i64 + 1;
        self.dataset.images.push(Image { id, file_name, height, width });
        Ok((id, height, width))
    }

    fn category(&mut self, input: &Path, entry: &str, name: &str) -> Result<i64> {
        if let Some(i) = self.categories.iter().position(|c| c == name) {
            return Ok(i as i64 + 1);
        }
        if self.fixed_categories || name.is_empty() {
            let msg = format!("category {name:?} is not among {:?}", self.categories);
            return Err(DataError::entry(input, entry, msg));
        }
        self.categories.push(name.to_string());
        Ok(self.categories.len() as i64)
    }

    /// Adds one region: its polygon rasterized for `area` and `bbox`.
    fn add_region(
        &mut self,
        input: &Path,
        entry: &str,
        (image_id, height, width): (i64, u32, u32),
        category: &str,
        polygon: Vec<f64>,
    ) -> Result<()> {
        let category_id = self.category(input, entry, category)?;
        if polygon.len() < 6 {
            return Err(DataError::entry(input, entry, format!("a polygon of {} points", polygon.len() / 2)));
        }
        if let Some(v) = polygon.iter().find(|v| !v.is_finite()) {
            return Err(DataError::entry(input, entry, format!("coordinate {v}")));
        }
        let rle = Rle::from_polygon(&polygon, height, width);
        if rle.area() == 0 {
            return Err(DataError::entry(
                input,
                entry,
                format!("the polygon covers no pixel of the {width}x{height} image"),
            ));
        }
        self.dataset.annotations.push(Annotation {
            id: self.dataset.annotations.len() as i64 + 1,
            image_id,
            category_id,
            bbox: rle.to_bbox(),
            area: rle.area() as f64,
            iscrowd: 0,
            segmentation: Some(Segmentation::Polygons(vec![polygon])),
        });
        Ok(())
    }
}

/// A JSON object's entries in file order (serde_json's own maps sort their keys).
struct Ordered<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct OrderedVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Ordered<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}

/// A VIA file's image entries in file order: an annotation export is the map of entries itself;
/// a saved project holds it under `_via_img_metadata` beside other `_via_` sections.
struct ViaEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for ViaEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ViaVisitor;
        impl<'de> Visitor<'de> for ViaVisitor {
            type Value = ViaEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a VIA annotation object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<ViaEntries, A::Error> {
                let (mut entries, mut project) = (Vec::new(), None);
                while let Some(key) = map.next_key::<String>()? {
                    if key == "_via_img_metadata" {
                        project = Some(map.next_value::<Ordered<Value>>()?.0);
                    } else if key.starts_with("_via_") {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        entries.push((key, map.next_value()?));
                    }
                }
                Ok(ViaEntries(project.unwrap_or(entries)))
            }
        }
        deserializer.deserialize_map(ViaVisitor)
    }
}

#[derive(Deserialize)]
struct ViaImage {
    filename: String,
    #[serde(default)]
    regions: Value,
}

#[derive(Deserialize)]
struct ViaRegion {
    shape_attributes: ViaShape,
    #[serde(default)]
    region_attributes: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
enum ViaShape {
    Polygon {
        all_points_x: Vec<f64>,
        all_points_y: Vec<f64>,
    },
    Rect {
        x: f64,
        y: f64,
        width: f64,
        height: f64,
    },
    Circle {
        cx: f64,
        cy: f64,
        r: f64,
    },
    Ellipse {
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
        #[serde(default)]
        theta: f64,
    },
}

fn read_via(text: &[u8], input: &Path, options: &ConvertOptions, builder: &mut Builder) -> Result<()> {
    let ViaEntries(entries) = serde_json::from_slice(text)
        .map_err(|e| DataError::File { path: input.into(), msg: format!("not a VIA annotation file: {e}") })?;
    let base = options.images.clone().unwrap_or_else(|| folder_of(input));
    for (key, value) in entries {
        let entry = format!("entry {key:?}");
        let image: ViaImage =
            serde_json::from_value(value).map_err(|e| DataError::entry(input, &entry, e.to_string()))?;
        let image_info = builder.add_image(input, &entry, &base, &image.filename, None)?;
        let regions: Vec<(String, Value)> = match image.regions {
            Value::Null => Vec::new(),
            Value::Array(list) => list.into_iter().enumerate().map(|(i, r)| (i.to_string(), r)).collect(),
            // VIA 1.x: "0", "1", ...; ordered by number, not as text.
            Value::Object(map) => {
                let mut regions: Vec<(String, Value)> = map.into_iter().collect();
                regions.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
                regions
            }
            other => return Err(DataError::entry(input, &entry, format!("regions is {other}, not a list or map"))),
        };
        for (index, region) in regions {
            let entry = format!("entry {key:?} ({}), region {index}", image.filename);
            let region: ViaRegion =
                serde_json::from_value(region).map_err(|e| DataError::entry(input, &entry, e.to_string()))?;
            let category = match &options.attribute {
                Some(attribute) => via_category(&region.region_attributes, attribute).ok_or_else(|| {
                    DataError::entry(input, &entry, format!("no category in attribute {attribute:?}"))
                })?,
                None => options.category.clone().unwrap_or_else(|| "object".into()),
            };
            let polygon = match region.shape_attributes {
                ViaShape::Polygon { all_points_x: xs, all_points_y: ys } => {
                    if xs.len() != ys.len() {
                        let msg = format!("{} x and {} y coordinates", xs.len(), ys.len());
                        return Err(DataError::entry(input, &entry, msg));
                    }
                    xs.iter().zip(&ys).flat_map(|(&x, &y)| [x, y]).collect()
                }
                ViaShape::Rect { x, y, width, height } => {
                    vec![x, y, x + width, y, x + width, y + height, x, y + height]
                }
                ViaShape::Circle { cx, cy, r } => ellipse(cx, cy, r, r, 0.0),
                ViaShape::Ellipse { cx, cy, rx, ry, theta } => ellipse(cx, cy, rx, ry, theta),
            };
            builder.add_region(input, &entry, image_info, &category, polygon)?;
        }
    }
    Ok(())
}

/// A region's category from its attribute: a text value, or the one chosen option of a
/// checkbox or radio attribute (`{"option": true}`).
fn via_category(attributes: &serde_json::Map<String, Value>, attribute: &str) -> Option<String> {
    match attributes.get(attribute)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(options) => {
            let mut chosen = options.iter().filter(|(_, v)| v.as_bool() == Some(true));
            match (chosen.next(), chosen.next()) {
                (Some((name, _)), None) => Some(name.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An ellipse of radii `rx`, `ry` rotated by `theta` (radians) as a polygon.
fn ellipse(cx: f64, cy: f64, rx: f64, ry: f64, theta: f64) -> Vec<f64> {
    let (sin, cos) = theta.sin_cos();
    (0..ROUND_VERTICES)
        .flat_map(|k| {
            let t = std::f64::consts::TAU * k as f64 / ROUND_VERTICES as f64;
            let (x, y) = (rx * t.cos(), ry * t.sin());
            [two_decimals(cx + x * cos - y * sin), two_decimals(cy + x * sin + y * cos)]
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LabelmeFile {
    shapes: Vec<Value>,
    image_path: String,
    image_height: Option<u32>,
    image_width: Option<u32>,
}

#[derive(Deserialize)]
struct LabelmeShape {
    label: String,
    points: Vec<[f64; 2]>,
    #[serde(default)]
    shape_type: Option<String>,
}

fn read_labelme(text: &[u8], input: &Path, builder: &mut Builder) -> Result<()> {
    let file: LabelmeFile = serde_json::from_slice(text)
        .map_err(|e| DataError::File { path: input.into(), msg: format!("not a labelme file: {e}") })?;
    let size = file.image_height.zip(file.image_width);
    let entry = format!("imagePath {:?}", file.image_path);
    let image_info = builder.add_image(input, &entry, &folder_of(input), &file.image_path, size)?;
    for (index, shape) in file.shapes.into_iter().enumerate() {
        let entry = format!("shape {index}");
        let shape: LabelmeShape =
            serde_json::from_value(shape).map_err(|e| DataError::entry(input, &entry, e.to_string()))?;
        let entry = format!("shape {index} ({:?})", shape.label);
        let kind = shape.shape_type.as_deref().unwrap_or("polygon");
        let points = &shape.points;
        let polygon = match (kind, points.as_slice()) {
            ("polygon", _) => points.iter().flatten().copied().collect(),
            ("rectangle", [[x1, y1], [x2, y2]]) => {
                let ([x1, x2], [y1, y2]) = ([x1.min(*x2), x1.max(*x2)], [y1.min(*y2), y1.max(*y2)]);
                vec![x1, y1, x2, y1, x2, y2, x1, y2]
            }
            ("circle", [[cx, cy], [px, py]]) => {
                let r = (px - cx).hypot(py - cy);
                ellipse(*cx, *cy, r, r, 0.0)
            }
            ("rectangle" | "circle", _) => {
                return Err(DataError::entry(input, &entry, format!("a {kind} of {} points, not 2", points.len())));
            }
            _ => return Err(DataError::entry(input, &entry, format!("shape_type {kind:?} has no mask"))),
        };
        builder.add_region(input, &entry, image_info, &shape.label, polygon)?;
    }
    Ok(())
}
