//! Keypoints from heatmaps (Mask R-CNN section 5): torchvision's `heatmaps_to_keypoints`. Each
//! RoI's heatmaps are resized bicubically to the RoI's size in whole pixels; a keypoint is the
//! first maximum of its map, at the centre of that pixel, scaled back to the RoI's real size.

use rayon::prelude::*;

use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::interpolate::cubic_rows;

/// The most pixels one RoI's resized heatmap may have: a box as large as 4096×4096, far beyond
/// any resized image; an absurd box would otherwise take hours.
const MAX_MAP_PIXELS: usize = 1 << 24;

/// Keypoints of `K` RoIs with `N` keypoints each.
#[derive(Clone, Debug, PartialEq)]
pub struct Keypoints {
    /// `[K, N, 3]`: x, y (image coordinates) and visibility, always 1.
    pub xyv: Vec<f32>,
    /// `[K, N]`: the resized heatmap's value at each keypoint.
    pub scores: Vec<f32>,
}

/// Keypoints from `maps` (`[K, N, H, W]`, row-major, of shape `shape`) for the RoIs `boxes`
/// (`x1, y1, x2, y2`, one per map).
pub fn heatmaps_to_keypoints(maps: &[f32], shape: [usize; 4], boxes: &[[f32; 4]]) -> Result<Keypoints> {
    const OP: &str = "heatmaps_to_keypoints";
    let [k, n, h, w] = shape;
    if k != boxes.len() || shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(maps.len()) {
        return shape_err(OP, format!("{} values of heatmaps {shape:?} for {} boxes", maps.len(), boxes.len()));
    }
    if k > 0 && n > 0 && (h == 0 || w == 0) {
        return invalid(OP, format!("heatmaps of size {h}x{w}"));
    }
    check_finite(OP, "box", boxes.as_flattened())?;
    check_finite(OP, "heatmap value", maps)?;
    // torchvision's sizes: each side at least 1, the map's side that rounded up.
    let sides: Vec<([f32; 2], [usize; 2])> = boxes
        .iter()
        .map(|b| {
            let (width, height) = ((b[2] - b[0]).max(1.0), (b[3] - b[1]).max(1.0));
            let (map_w, map_h) = (width.ceil() as usize, height.ceil() as usize);
            if map_w.checked_mul(map_h).is_none_or(|p| p > MAX_MAP_PIXELS) {
                return invalid(OP, format!("box {b:?} needs a {map_h}x{map_w} heatmap"));
            }
            Ok(([width, height], [map_h, map_w]))
        })
        .collect::<Result<_>>()?;
    let (xyv, scores): (Vec<Vec<f32>>, Vec<Vec<f32>>) = boxes
        .par_iter()
        .zip(&sides)
        .enumerate()
        .map(|(i, (b, &([width, height], [map_h, map_w])))| {
            let (x_scale, y_scale) = (width / map_w as f32, height / map_h as f32);
            let mut xyv = Vec::with_capacity(n * 3);
            let mut scores = Vec::with_capacity(n);
            for j in 0..n {
                let plane = &maps[(i * n + j) * h * w..][..h * w];
                let (mut best, mut at) = (f32::NEG_INFINITY, (0, 0));
                cubic_rows(plane, [h, w], [map_h, map_w], |y, row| {
                    for (x, &v) in row.iter().enumerate() {
                        if v > best {
                            (best, at) = (v, (x, y));
                        }
                    }
                });
                let (x, y) = at;
                xyv.extend([(x as f32 + 0.5) * x_scale + b[0], (y as f32 + 0.5) * y_scale + b[1], 1.0]);
                scores.push(best);
            }
            (xyv, scores)
        })
        .unzip();
    Ok(Keypoints { xyv: xyv.concat(), scores: scores.concat() })
}
