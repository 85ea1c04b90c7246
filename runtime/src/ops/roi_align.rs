//! RoIAlign (He et al. 2017) with torchvision's CPU kernel semantics, plus a max-pooling variant.

use rayon::prelude::*;

use crate::error::{check_finite, invalid, Result};
use crate::ops::batch_index;
use crate::tensor::FeatureMap;

/// How the sampled points of one bin are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Their mean: torchvision's `roi_align`.
    Avg,
    /// Their maximum (ONNX RoiAlign `mode="max"`), over the same bilinearly interpolated points.
    /// Points outside the map count as 0, like in the average.
    Max,
}

/// Parameters of [`roi_align`], named as in `torchvision.ops.roi_align`.
#[derive(Clone, Copy, Debug)]
pub struct RoiAlignParams {
    /// `[height, width]` of each output bin grid.
    pub output_size: [usize; 2],
    /// Multiplies box coordinates to get feature-map coordinates.
    pub spatial_scale: f32,
    /// Sampling points per bin along each axis; `<= 0` picks `ceil(roi size / bins)` per RoI.
    pub sampling_ratio: i32,
    /// Shift boxes by -0.5 pixel (the corrected version); `false` is the legacy behaviour that
    /// torchvision's Mask R-CNN uses, which also forces RoIs to at least 1×1.
    pub aligned: bool,
    pub mode: PoolMode,
}

/// One sampling point: four neighbour offsets into an `h·w` plane and their bilinear weights.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    pos: [u32; 4],
    w: [f32; 4],
}

/// RoIAlign of `rois` (`[batch_index, x1, y1, x2, y2]`, image coordinates) over `input`.
/// Returns `[K, C, oh, ow]`.
pub fn roi_align(input: &FeatureMap, rois: &[[f32; 5]], p: &RoiAlignParams) -> Result<Vec<f32>> {
    let [oh, ow] = p.output_size;
    let mut out = vec![0.0f32; rois.len() * input.c * oh * ow];
    roi_align_into(input, rois, p, &mut out)?;
    Ok(out)
}

/// [`roi_align`] writing into a caller-owned `[K, C, oh, ow]` buffer.
pub fn roi_align_into(
    input: &FeatureMap,
    rois: &[[f32; 5]],
    p: &RoiAlignParams,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "roi_align";
    check_params(OP, input, p)?;
    let per_roi = input.c * p.output_size[0] * p.output_size[1];
    if out.len() != rois.len() * per_roi {
        return crate::error::shape_err(OP, format!("output buffer of {} values", out.len()));
    }
    for r in rois {
        check_finite(OP, "roi", r)?;
        batch_index(OP, r[0], input.n)?;
    }
    if per_roi == 0 {
        return Ok(());
    }
    out.par_chunks_mut(per_roi).zip(rois.par_iter()).for_each_init(Vec::new, |samples, (o, r)| {
        align_one(input, r, p, samples, o)
    });
    Ok(())
}

pub(crate) fn check_params(op: &'static str, input: &FeatureMap, p: &RoiAlignParams) -> Result<()> {
    let [oh, ow] = p.output_size;
    if oh == 0 || ow == 0 {
        return invalid(op, format!("output size {oh}x{ow}"));
    }
    if !p.spatial_scale.is_finite() || p.spatial_scale <= 0.0 {
        return invalid(op, format!("spatial scale {}", p.spatial_scale));
    }
    if input.h as u64 * input.w as u64 >= u32::MAX as u64 {
        return invalid(op, format!("feature map {}x{} too large", input.h, input.w));
    }
    Ok(())
}

/// Pools one RoI (already validated) into its `[C, oh, ow]` output; `samples` is scratch space.
pub(crate) fn align_one(input: &FeatureMap, r: &[f32; 5], p: &RoiAlignParams, samples: &mut Vec<Sample>, out: &mut [f32]) {
    let [oh, ow] = p.output_size;
    let scale = p.spatial_scale;
    let offset = if p.aligned { 0.5f32 } else { 0.0 };
    let start_w = r[1] * scale - offset;
    let start_h = r[2] * scale - offset;
    let end_w = r[3] * scale - offset;
    let end_h = r[4] * scale - offset;
    let mut roi_w = end_w - start_w;
    let mut roi_h = end_h - start_h;
    if !p.aligned {
        roi_w = roi_w.max(1.0);
        roi_h = roi_h.max(1.0);
    }
    let bin_h = roi_h / oh as f32;
    let bin_w = roi_w / ow as f32;
    // Adaptive grids may be 0 (empty RoI with `aligned`): no samples and an output of 0.
    let grid_h = if p.sampling_ratio > 0 { p.sampling_ratio as usize } else { (roi_h / oh as f32).ceil().max(0.0) as usize };
    let grid_w = if p.sampling_ratio > 0 { p.sampling_ratio as usize } else { (roi_w / ow as f32).ceil().max(0.0) as usize };
    let count = (grid_h * grid_w).max(1) as f32;

    samples.clear();
    let (h, w) = (input.h, input.w);
    for ph in 0..oh {
        for pw in 0..ow {
            for iy in 0..grid_h {
                let yy = start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let xx = start_w + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    samples.push(bilinear_sample(yy, xx, h, w));
                }
            }
        }
    }

    let per_bin = grid_h * grid_w;
    if per_bin == 0 {
        out.fill(0.0);
        return;
    }
    let b = r[0] as usize;
    for (ch, o) in out.chunks_exact_mut(oh * ow).enumerate() {
        let plane = input.plane(b, ch);
        for (bin, s) in o.iter_mut().zip(samples.chunks_exact(per_bin)) {
            *bin = match p.mode {
                PoolMode::Avg => {
                    let mut acc = 0.0f32;
                    for sm in s {
                        acc += value(plane, sm);
                    }
                    acc / count
                }
                PoolMode::Max => s.iter().map(|sm| value(plane, sm)).fold(f32::NEG_INFINITY, f32::max),
            };
        }
    }
}

#[inline(always)]
fn value(plane: &[f32], s: &Sample) -> f32 {
    s.w[0] * plane[s.pos[0] as usize]
        + s.w[1] * plane[s.pos[1] as usize]
        + s.w[2] * plane[s.pos[2] as usize]
        + s.w[3] * plane[s.pos[3] as usize]
}

/// torchvision's `pre_calc_for_bilinear_interpolate` for one point: points beyond one pixel
/// outside the map weigh nothing; points within it are clamped to the border.
fn bilinear_sample(yy: f32, xx: f32, height: usize, width: usize) -> Sample {
    let (hf, wf) = (height as f32, width as f32);
    if yy < -1.0 || yy > hf || xx < -1.0 || xx > wf || height == 0 || width == 0 {
        return Sample::default();
    }
    let mut y = yy.max(0.0);
    let mut x = xx.max(0.0);
    let mut y_low = y as usize;
    let mut x_low = x as usize;
    let y_high;
    let x_high;
    if y_low >= height - 1 {
        y_low = height - 1;
        y_high = y_low;
        y = y_low as f32;
    } else {
        y_high = y_low + 1;
    }
    if x_low >= width - 1 {
        x_low = width - 1;
        x_high = x_low;
        x = x_low as f32;
    } else {
        x_high = x_low + 1;
    }
    let ly = y - y_low as f32;
    let lx = x - x_low as f32;
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    let idx = |yi: usize, xi: usize| (yi * width + xi) as u32;
    Sample {
        pos: [idx(y_low, x_low), idx(y_low, x_high), idx(y_high, x_low), idx(y_high, x_high)],
        w: [hy * hx, hy * lx, ly * hx, ly * lx],
    }
}
