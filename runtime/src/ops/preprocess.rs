//! Image preprocessing as torchvision's `GeneralizedRCNNTransform`: scale to 0..1, normalize,
//! resize bilinearly by its scale rule, zero-pad into one batch; and the inverse box mapping.

use rayon::prelude::*;

use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::interpolate::resize_planes;

/// Resize and normalization settings (torchvision's Mask R-CNN: 800, 1333, ImageNet mean/std, 32).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    pub min_size: usize,
    pub max_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub size_divisible: usize,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            min_size: 800,
            max_size: 1333,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            size_divisible: 32,
        }
    }
}

/// An 8-bit RGB image, `[height, width, 3]` row-major.
#[derive(Clone, Copy, Debug)]
pub struct ImageU8<'a> {
    pub data: &'a [u8],
    pub height: usize,
    pub width: usize,
}

/// Preprocessed images: `[N, 3, H, W]` zero-padded, and each image's resized size.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
    pub image_sizes: Vec<[usize; 2]>,
}

/// The size torchvision resizes `[h, w]` to: `scale = min(min_size/short, max_size/long)` and
/// output `floor(side · scale)`, both in double precision (Python floats in torchvision).
pub fn resized_size(hw: [usize; 2], min_size: usize, max_size: usize) -> Result<[usize; 2]> {
    if hw[0] == 0 || hw[1] == 0 || min_size == 0 || max_size == 0 {
        return invalid("resize", format!("image {hw:?}, min size {min_size}, max size {max_size}"));
    }
    let short = hw[0].min(hw[1]) as f64;
    let long = hw[0].max(hw[1]) as f64;
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    Ok(hw.map(|s| ((s as f64 * scale).floor() as usize).max(1)))
}

/// `[h, w, 3]` bytes to `[3, h, w]` floats `(x/255 − mean)/std`.
pub fn normalize(image: &ImageU8, mean: [f32; 3], std: [f32; 3]) -> Result<Vec<f32>> {
    const OP: &str = "normalize";
    let (h, w) = (image.height, image.width);
    if image.data.len() != h * w * 3 {
        return shape_err(OP, format!("{} bytes for a {h}x{w} RGB image", image.data.len()));
    }
    check_finite(OP, "mean", &mean)?;
    if std.iter().any(|s| !s.is_finite() || *s == 0.0) {
        return invalid(OP, format!("std {std:?}"));
    }
    let mut out = vec![0.0f32; 3 * h * w];
    if out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(h * w).enumerate().for_each(|(c, plane)| {
        for (o, px) in plane.iter_mut().zip(image.data.chunks_exact(3)) {
            *o = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    });
    Ok(out)
}

/// Bilinear resize (`align_corners=False`) of `[c, h, w]` planes to `[c, oh, ow]`.
pub fn resize_bilinear(chw: &[f32], c: usize, hw: [usize; 2], out_hw: [usize; 2]) -> Result<Vec<f32>> {
    const OP: &str = "resize_bilinear";
    if chw.len() != c * hw[0] * hw[1] {
        return shape_err(OP, format!("{} values for [{c}, {}, {}]", chw.len(), hw[0], hw[1]));
    }
    if hw.contains(&0) || out_hw.contains(&0) {
        return invalid(OP, format!("resize from {hw:?} to {out_hw:?}"));
    }
    Ok(resize_planes(chw, c, hw, out_hw))
}

/// Copies `[c, h, w]` images into one zero-filled `[N, c, H, W]` batch, `H` and `W` the largest
/// height and width rounded up to a multiple of `size_divisible`.
pub fn batch_images(images: &[(&[f32], [usize; 2])], c: usize, size_divisible: usize) -> Result<Batch> {
    const OP: &str = "batch_images";
    if size_divisible == 0 {
        return invalid(OP, "size_divisible 0");
    }
    for (data, [h, w]) in images {
        if data.len() != c * h * w {
            return shape_err(OP, format!("{} values for [{c}, {h}, {w}]", data.len()));
        }
    }
    let round_up = |v: usize| v.div_ceil(size_divisible) * size_divisible;
    let bh = round_up(images.iter().map(|i| i.1[0]).max().unwrap_or(0));
    let bw = round_up(images.iter().map(|i| i.1[1]).max().unwrap_or(0));
    let mut data = vec![0.0f32; images.len() * c * bh * bw];
    if bh * bw > 0 {
        for (dst, (src, [h, w])) in data.chunks_exact_mut(bh * bw).zip(
            images.iter().flat_map(|(d, hw)| (0..c).map(move |ch| (&d[ch * hw[0] * hw[1]..(ch + 1) * hw[0] * hw[1]], *hw))),
        ) {
            for (drow, srow) in dst.chunks_exact_mut(bw).zip(src.chunks_exact(w.max(1))).take(h) {
                drow[..w].copy_from_slice(srow);
            }
        }
    }
    Ok(Batch { data, shape: [images.len(), c, bh, bw], image_sizes: images.iter().map(|i| i.1).collect() })
}

/// One image through the transform before batching: normalized, then resized by
/// [`resized_size`]. Returns the `[3, h', w']` planes and `[h', w']`.
pub fn normalize_and_resize(image: &ImageU8, t: &Transform) -> Result<(Vec<f32>, [usize; 2])> {
    let hw = [image.height, image.width];
    let out_hw = resized_size(hw, t.min_size, t.max_size)?;
    Ok((resize_bilinear(&normalize(image, t.mean, t.std)?, 3, hw, out_hw)?, out_hw))
}

/// The whole transform: normalize, resize, batch.
pub fn preprocess(images: &[ImageU8], t: &Transform) -> Result<Batch> {
    let resized = images.iter().map(|im| normalize_and_resize(im, t)).collect::<Result<Vec<_>>>()?;
    let views: Vec<(&[f32], [usize; 2])> = resized.iter().map(|(d, hw)| (d.as_slice(), *hw)).collect();
    batch_images(&views, 3, t.size_divisible)
}

/// Maps boxes from an image of size `from` to one of size `to` (torchvision's `resize_boxes`,
/// used to report detections in the original image).
pub fn resize_boxes(boxes: &[[f32; 4]], from: [usize; 2], to: [usize; 2]) -> Result<Vec<[f32; 4]>> {
    const OP: &str = "resize_boxes";
    if from.contains(&0) {
        return invalid(OP, format!("resize from {from:?}"));
    }
    check_finite(OP, "box", boxes.as_flattened())?;
    let rh = to[0] as f32 / from[0] as f32;
    let rw = to[1] as f32 / from[1] as f32;
    Ok(boxes.iter().map(|b| [b[0] * rw, b[1] * rh, b[2] * rw, b[3] * rh]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes torchvision 0.29's `GeneralizedRCNNTransform.resize` produced, chosen where float32
    /// arithmetic would round differently.
    #[test]
    fn resized_sizes_match_torchvision() {
        let cases = [
            ([1779, 838], 600, 320, [320, 150]),
            ([580, 1097], 600, 1333, [600, 1134]),
            ([1930, 1655], 800, 1333, [932, 800]),
            ([300, 451], 320, 320, [212, 320]),
            ([400, 600], 480, 800, [480, 720]),
            ([335, 627], 480, 320, [170, 320]),
            ([1494, 1709], 480, 800, [480, 549]),
            ([252, 1544], 320, 800, [130, 799]),
        ];
        for (hw, min, max, expected) in cases {
            assert_eq!(resized_size(hw, min, max).unwrap(), expected, "{hw:?} {min} {max}");
        }
    }
}
