//! RoIPool (Fast R-CNN), the quantized pooling the Mask R-CNN paper ablates against RoIAlign,
//! with torchvision's CPU kernel semantics.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::ops::{batch_index, check_coordinates};
use crate::tensor::FeatureMap;

/// Values `[K, C, oh, ow]` and, for the backward pass, the flat `h·w` offset of each maximum in
/// its plane (`-1` for an empty bin, whose value is 0).
#[derive(Clone, Debug, PartialEq)]
pub struct RoiPoolOutput {
    pub values: Vec<f32>,
    pub argmax: Vec<i32>,
}

/// RoIPool of `rois` (`[batch_index, x1, y1, x2, y2]`) over `input`. Box corners are rounded
/// to whole feature cells (half away from zero) and the box includes its end cell.
pub fn roi_pool(
    input: &FeatureMap,
    rois: &[[f32; 5]],
    output_size: [usize; 2],
    spatial_scale: f32,
) -> Result<RoiPoolOutput> {
    const OP: &str = "roi_pool";
    let [oh, ow] = output_size;
    if oh == 0 || ow == 0 {
        return invalid(OP, format!("output size {oh}x{ow}"));
    }
    if !spatial_scale.is_finite() || spatial_scale <= 0.0 || spatial_scale > 1e3 {
        return invalid(OP, format!("spatial scale {spatial_scale}"));
    }
    if input.h as u64 * input.w as u64 > i32::MAX as u64 {
        return invalid(OP, format!("feature map {}x{} too large", input.h, input.w));
    }
    for r in rois {
        check_coordinates(OP, &r[1..])?;
        batch_index(OP, r[0], input.n)?;
    }
    let per_roi = input.c * oh * ow;
    let mut values = vec![0.0f32; rois.len() * per_roi];
    let mut argmax = vec![-1i32; rois.len() * per_roi];
    if per_roi == 0 {
        return Ok(RoiPoolOutput { values, argmax });
    }
    values
        .par_chunks_mut(per_roi)
        .zip(argmax.par_chunks_mut(per_roi))
        .zip(rois.par_iter())
        .for_each(|((v, a), r)| pool_one(input, r, output_size, spatial_scale, v, a));
    Ok(RoiPoolOutput { values, argmax })
}

fn pool_one(input: &FeatureMap, r: &[f32; 5], [oh, ow]: [usize; 2], scale: f32, v: &mut [f32], a: &mut [i32]) {
    let (h, w) = (input.h as i64, input.w as i64);
    let start_w = (r[1] * scale).round() as i64;
    let start_h = (r[2] * scale).round() as i64;
    let end_w = (r[3] * scale).round() as i64;
    let end_h = (r[4] * scale).round() as i64;
    let roi_w = (end_w - start_w + 1).max(1);
    let roi_h = (end_h - start_h + 1).max(1);
    let bin_h = roi_h as f32 / oh as f32;
    let bin_w = roi_w as f32 / ow as f32;
    let b = r[0] as usize;
    for ph in 0..oh {
        let hstart = ((ph as f32 * bin_h).floor() as i64 + start_h).clamp(0, h);
        let hend = (((ph + 1) as f32 * bin_h).ceil() as i64 + start_h).clamp(0, h);
        for pw in 0..ow {
            let wstart = ((pw as f32 * bin_w).floor() as i64 + start_w).clamp(0, w);
            let wend = (((pw + 1) as f32 * bin_w).ceil() as i64 + start_w).clamp(0, w);
            let empty = hend <= hstart || wend <= wstart;
            for ch in 0..input.c {
                let plane = input.plane(b, ch);
                let mut best = if empty { 0.0 } else { f32::MIN };
                let mut best_idx = -1i64;
                for y in hstart..hend {
                    for x in wstart..wend {
                        let idx = y * w + x;
                        if plane[idx as usize] > best {
                            best = plane[idx as usize];
                            best_idx = idx;
                        }
                    }
                }
                let o = (ch * oh + ph) * ow + pw;
                v[o] = best;
                a[o] = best_idx as i32;
            }
        }
    }
}
