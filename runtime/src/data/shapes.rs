//! The synthetic shapes set (`mrc data shapes`): 256×256 RGB images of 1 to 4 squares, circles
//! and triangles in random colours on a flat background, later shapes occluding earlier ones,
//! in COCO format (categories 1 square, 2 circle, 3 triangle), the kind matterport's Mask R-CNN
//! sample trains on first and the project's `shapes` data sets are.
//!
//! Each shape is an outline polygon (a square's corners on whole pixels, a triangle's three
//! vertices, a circle's 64-gon) rasterized as pycocotools does, so an unoccluded shape's polygon
//! reproduces its mask exactly. An annotation's mask is its shape's visible part; its
//! segmentation is the outline where that rasterizes to the visible mask with IoU ≥ 0.95, else
//! the visible mask's compressed RLE; `area` and `bbox` are the visible mask's. A shape that
//! would hide more than half of an earlier one is drawn again (or left out after a few tries),
//! so that every shape in an image is annotated and recognizable.
//!
//! Image `i` is drawn from a random stream of its own (the seed and `i`), so the same seed gives
//! byte-identical files whatever the thread count.

use std::io::Cursor;
use std::path::Path;

use rand::RngExt;
use rayon::prelude::*;

use super::{two_decimals, DataError, Result};
use crate::coco::dataset::{Annotation, Category, Dataset, Image, RleCounts, Segmentation};
use crate::coco::mask::Rle;

/// Image size, and the categories in id order.
const SIZE: u32 = 256;
const CATEGORIES: [&str; 3] = ["square", "circle", "triangle"];
/// Half the side of a square, a circle's radius, a triangle's half height, in pixels.
const HALF_SIZE: std::ops::RangeInclusive<u32> = 12..=56;
/// Polygon accuracy of a segmentation, and how much of an earlier shape must stay visible.
const POLYGON_IOU: f64 = 0.95;
const MIN_VISIBLE: f64 = 0.5;
const PLACEMENT_TRIES: usize = 20;
/// Least L1 distance between any two colours of an image (background included).
const COLOUR_DISTANCE: u32 = 90;

/// One drawn shape.
struct Shape {
    category: i64,
    colour: [u8; 3],
    outline: Vec<f64>,
    mask: Vec<bool>,
}

/// Writes `n` images and `annotations.json` into `out_dir` (created if needed; an existing
/// directory must be empty). Returns the annotations written.
pub fn generate_shapes(n: usize, seed: u64, out_dir: &Path) -> Result<Dataset> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    if out_dir.exists() && std::fs::read_dir(out_dir).map_err(io(out_dir))?.next().is_some() {
        return Err(DataError::File {
            path: out_dir.to_path_buf(),
            msg: "not empty: refusing to write into it".into(),
        });
    }
    let image_dir = out_dir.join("images");
    std::fs::create_dir_all(&image_dir).map_err(io(&image_dir))?;
    let per_image = (0..n)
        .into_par_iter()
        .map(|index| {
            let (pixels, shapes) = draw_image(seed, index as u64);
            let file_name = format!("{index:05}.png");
            let mut png = Vec::new();
            pixels
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| DataError::File { path: image_dir.join(&file_name), msg: format!("encoding PNG: {e}") })?;
            crate::program::coco::write_atomic(&image_dir.join(&file_name), &png)
                .map_err(|msg| DataError::File { path: image_dir.join(&file_name), msg })?;
            Ok((file_name, annotate(&shapes)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut dataset = Dataset {
        images: Vec::with_capacity(n),
        annotations: Vec::new(),
        categories: (1..)
            .zip(CATEGORIES)
            .map(|(id, name)| Category { id, name: name.into(), supercategory: Some("shape".into()) })
            .collect(),
    };
    for (image_id, (file_name, annotations)) in (1..).zip(per_image) {
        dataset.images.push(Image { id: image_id, file_name, height: SIZE, width: SIZE });
        for mut a in annotations {
            a.id = dataset.annotations.len() as i64 + 1;
            a.image_id = image_id;
            dataset.annotations.push(a);
        }
    }
    dataset.write(&out_dir.join("annotations.json"))?;
    Ok(dataset)
}

/// Image `index`: its pixels and its shapes in drawing order.
fn draw_image(seed: u64, index: u64) -> (image::RgbImage, Vec<Shape>) {
    const SHAPES: u64 = 0x7368_6170;
    let mut rng = super::stream(seed, &[SHAPES, index]);
    let background: [u8; 3] = rng.random();
    let count = rng.random_range(1..=4);
    let mut colours = vec![background];
    let mut shapes: Vec<Shape> = Vec::new();
    for _ in 0..count {
        let placed = (0..PLACEMENT_TRIES).map(|_| random_shape(&mut rng)).find(|candidate| {
            shapes.iter().enumerate().all(|(i, earlier)| {
                let full = earlier.mask.iter().filter(|&&m| m).count();
                let visible = (0..earlier.mask.len())
                    .filter(|&p| earlier.mask[p] && !candidate.1[p] && !shapes[i + 1..].iter().any(|s| s.mask[p]))
                    .count();
                visible as f64 >= MIN_VISIBLE * full as f64
            })
        });
        let Some((category, mask, outline)) = placed else { break };
        let colour = loop {
            let c: [u8; 3] = rng.random();
            let distance = |o: &[u8; 3]| c.iter().zip(o).map(|(&a, &b)| a.abs_diff(b) as u32).sum::<u32>();
            if colours.iter().all(|o| distance(o) >= COLOUR_DISTANCE) {
                break c;
            }
        };
        colours.push(colour);
        shapes.push(Shape { category, colour, outline, mask });
    }
    let mut pixels = image::RgbImage::from_pixel(SIZE, SIZE, image::Rgb(background));
    for shape in &shapes {
        for (p, _) in shape.mask.iter().enumerate().filter(|(_, &m)| m) {
            pixels.put_pixel(p as u32 % SIZE, p as u32 / SIZE, image::Rgb(shape.colour));
        }
    }
    (pixels, shapes)
}

/// A shape of random kind, size and place, inside the image: (category, mask, outline).
fn random_shape(rng: &mut impl rand::Rng) -> (i64, Vec<bool>, Vec<f64>) {
    let category = rng.random_range(1..=3);
    let s = rng.random_range(HALF_SIZE);
    // A triangle's half base is s / sin 60°.
    let half_width = if category == 3 { (f64::from(s) * 2.0 / 3f64.sqrt()).ceil() as u32 } else { s };
    let x = f64::from(rng.random_range(half_width..=SIZE - half_width));
    let y = f64::from(rng.random_range(s..=SIZE - s));
    let s = f64::from(s);
    // The mask is the rounded polygon's, so the rounding loses nothing.
    let round = two_decimals;
    let outline: Vec<f64> = match category {
        1 => vec![x - s, y - s, x + s, y - s, x + s, y + s, x - s, y + s],
        2 => (0..64)
            .flat_map(|k| {
                let angle = std::f64::consts::TAU * f64::from(k) / 64.0;
                [round(x + s * angle.cos()), round(y + s * angle.sin())]
            })
            .collect(),
        _ => {
            let half_base = s * 2.0 / 3f64.sqrt();
            vec![x, y - s, round(x + half_base), y + s, round(x - half_base), y + s]
        }
    };
    let mask = Rle::from_polygon(&outline, SIZE, SIZE).decode();
    (category, mask, outline)
}

/// The annotations of an image's shapes (ids left for the caller): each shape's visible part.
fn annotate(shapes: &[Shape]) -> Vec<Annotation> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let visible: Vec<bool> = (0..shape.mask.len())
                .map(|p| shape.mask[p] && !shapes[i + 1..].iter().any(|later| later.mask[p]))
                .collect();
            let rle = Rle::encode(SIZE, SIZE, &visible);
            let full = shape.mask.iter().filter(|&&m| m).count() as f64;
            // The outline's mask contains the visible one, so their IoU is the ratio of areas.
            let segmentation = if rle.area() as f64 >= POLYGON_IOU * full {
                Segmentation::Polygons(vec![shape.outline.clone()])
            } else {
                Segmentation::Rle { size: [SIZE, SIZE], counts: RleCounts::Compressed(rle.to_coco_string()) }
            };
            Annotation {
                id: 0,
                image_id: 0,
                category_id: shape.category,
                bbox: rle.to_bbox(),
                area: rle.area() as f64,
                iscrowd: 0,
                segmentation: Some(segmentation),
            }
        })
        .collect()
}
