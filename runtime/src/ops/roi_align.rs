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
    /// Their maximum (the `max` mode of ONNX RoiAlign): the largest of the same bilinearly
    /// interpolated values the average would sum, points outside the map counting as 0. (ONNX
    /// Runtime instead takes the largest weighted corner of each point.)
    Max,
}

/// Parameters of [`roi_align`], named as in `torchvision.ops.roi_align`.
#[derive(Clone, Copy, Debug, PartialEq)]
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
        check_roi(OP, input, r, p)?;
    }
    if per_roi == 0 {
        return Ok(());
    }
    pool_rois(std::slice::from_ref(input), std::slice::from_ref(p), rois, |_| 0, input.c, out);
    Ok(())
}

/// The most sampling points one RoI may have: adaptive sampling of an absurdly large box would
/// otherwise exhaust memory (torchvision just tries).
const MAX_SAMPLES_PER_ROI: usize = 1 << 24;

/// Checks a RoI's values, batch index and number of sampling points.
pub(crate) fn check_roi(op: &'static str, input: &FeatureMap, r: &[f32; 5], p: &RoiAlignParams) -> Result<()> {
    check_finite(op, "roi", r)?;
    batch_index(op, r[0], input.n)?;
    let (.., gh, gw) = geometry(r, p);
    let samples = gh.checked_mul(gw).and_then(|g| g.checked_mul(p.output_size[0] * p.output_size[1]));
    if samples.is_none_or(|s| s > MAX_SAMPLES_PER_ROI) {
        return invalid(op, format!("RoI {r:?} needs a {gh}x{gw} sampling grid per bin"));
    }
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

/// Appends the sampling points of one RoI, bin by bin (torchvision's `pre_calc`), and returns
/// how many points each bin has.
fn push_samples([h, w]: [usize; 2], r: &[f32; 5], p: &RoiAlignParams, samples: &mut Vec<Sample>) -> usize {
    let (start_h, start_w, bin_h, bin_w, grid_h, grid_w) = geometry(r, p);
    let [oh, ow] = p.output_size;
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
    grid_h * grid_w
}

/// Start, bin size and sampling grid of a RoI in feature-map coordinates, evaluated in float32
/// in torchvision's order.
fn geometry(r: &[f32; 5], p: &RoiAlignParams) -> (f32, f32, f32, f32, usize, usize) {
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
    // Adaptive grids may be 0 (empty RoI with `aligned`): no samples and an output of 0.
    let grid = |ratio: i32, size: f32, bins: usize| {
        if ratio > 0 {
            ratio as usize
        } else {
            (size / bins as f32).ceil().max(0.0) as usize
        }
    };
    let (grid_h, grid_w) = (grid(p.sampling_ratio, roi_h, oh), grid(p.sampling_ratio, roi_w, ow));
    (start_h, start_w, roi_h / oh as f32, roi_w / ow as f32, grid_h, grid_w)
}

/// Where the sampling points of one RoI start in the group's list, and how many each bin has.
struct Plan {
    level: usize,
    batch: usize,
    first: usize,
    per_bin: usize,
}

/// Pools every RoI (already validated) into `out` (`[K, C, bins]`); RoI `k` reads
/// `maps[level(k)]` with `params[level(k)]`.
///
/// Channels are the outer loop: all RoIs of a group pool from channel `c` while its planes are
/// in cache, which matters when many RoIs overlap (as proposals do). Groups bound the memory
/// of the precomputed sampling points, which adaptive sampling can make large.
pub(crate) fn pool_rois(
    maps: &[FeatureMap],
    params: &[RoiAlignParams],
    rois: &[[f32; 5]],
    level: impl Fn(usize) -> usize + Sync,
    c: usize,
    out: &mut [f32],
) {
    let bins = params[0].output_size[0] * params[0].output_size[1];
    let per_roi = c * bins;
    if per_roi == 0 || rois.is_empty() {
        return;
    }
    let mut tmp = Vec::new();
    let mut k0 = 0;
    while k0 < rois.len() {
        // Sampling points of a group of RoIs, computed in parallel, then concatenated.
        let mut k1 = k0;
        let mut n_samples = 0;
        while k1 < rois.len() && (k1 == k0 || n_samples < SAMPLE_BUDGET) {
            let (.., gh, gw) = geometry(&rois[k1], &params[level(k1)]);
            n_samples += gh * gw * bins;
            k1 += 1;
        }
        let per_roi_samples: Vec<(Vec<Sample>, usize)> = (k0..k1)
            .into_par_iter()
            .map(|k| {
                let l = level(k);
                let mut s = Vec::new();
                let per_bin = push_samples([maps[l].h, maps[l].w], &rois[k], &params[l], &mut s);
                (s, per_bin)
            })
            .collect();
        let mut samples = Vec::with_capacity(n_samples);
        let mut plans = Vec::with_capacity(k1 - k0);
        for (k, (s, per_bin)) in (k0..k1).zip(per_roi_samples) {
            plans.push(Plan { level: level(k), batch: rois[k][0] as usize, first: samples.len(), per_bin });
            samples.extend(s);
        }
        // Channel-major results of the group, then transposed into the RoI-major output.
        let group = k1 - k0;
        tmp.clear();
        tmp.resize(c * group * bins, 0.0f32);
        tmp.par_chunks_mut(group * bins).enumerate().for_each(|(ch, t)| {
            for (plan, o) in plans.iter().zip(t.chunks_exact_mut(bins)) {
                let s = &samples[plan.first..plan.first + plan.per_bin * bins];
                pool_bins(maps[plan.level].plane(plan.batch, ch), s, plan.per_bin, params[plan.level].mode, o);
            }
        });
        out[k0 * per_roi..k1 * per_roi].par_chunks_mut(per_roi).enumerate().for_each(|(k, o)| {
            for (ch, oc) in o.chunks_exact_mut(bins).enumerate() {
                let at = (ch * group + k) * bins;
                oc.copy_from_slice(&tmp[at..at + bins]);
            }
        });
        k0 = k1;
    }
}

/// The most sampling points [`pool_rois`] and [`scatter_rois`] precompute at once.
const SAMPLE_BUDGET: usize = 1 << 20;

/// One channel of one RoI: each bin the mean (or max) of its `per_bin` sampled values.
fn pool_bins(plane: &[f32], samples: &[Sample], per_bin: usize, mode: PoolMode, out: &mut [f32]) {
    if per_bin == 0 {
        out.fill(0.0);
        return;
    }
    let count = per_bin as f32;
    for (bin, s) in out.iter_mut().zip(samples.chunks_exact(per_bin)) {
        *bin = match mode {
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

/// The gradient of [`roi_align`] (average mode) with respect to its input: `grad` `[K, C, oh,
/// ow]` spread back onto a zero `[N, C, H, W]` map of `shape` as torchvision's
/// `roi_align_backward` kernel does (each sampling point gives its bin's gradient, times its
/// bilinear weights, divided by the bin's number of points, to its four neighbours).
pub fn roi_align_backward(grad: &[f32], rois: &[[f32; 5]], shape: [usize; 4], p: &RoiAlignParams) -> Result<Vec<f32>> {
    const OP: &str = "roi_align_backward";
    let [n, c, h, w] = shape;
    let mut out = vec![0.0f32; n * c * h * w];
    {
        let input = FeatureMap::new(&out, shape)?;
        check_backward(OP, &input, p)?;
        for r in rois {
            check_roi(OP, &input, r, p)?;
        }
    }
    let [oh, ow] = p.output_size;
    if grad.len() != rois.len() * c * oh * ow {
        let (values, count) = (grad.len(), rois.len());
        return crate::error::shape_err(OP, format!("gradient of {values} values for {count} RoIs of {c}x{oh}x{ow}"));
    }
    check_finite(OP, "gradient", grad)?;
    scatter_rois(&[shape], std::slice::from_ref(p), rois, |_| 0, grad, std::slice::from_mut(&mut out));
    Ok(out)
}

/// [`check_params`] for a backward pass, which exists for the average only.
pub(crate) fn check_backward(op: &'static str, input: &FeatureMap, p: &RoiAlignParams) -> Result<()> {
    check_params(op, input, p)?;
    if p.mode != PoolMode::Avg {
        return invalid(op, "the backward pass of max pooling is not implemented");
    }
    Ok(())
}

/// The transpose of [`pool_rois`] (average mode): RoI `k`'s gradient `grad[k]` (`[C, bins]`)
/// spread onto `out[level(k)]` (`[N, C, H, W]` of `shapes[level(k)]`). RoIs already validated.
///
/// Planes (image, channel) are independent and filled in parallel; within a plane the sums run
/// in torchvision's order (RoI, bin, sampling point, neighbour), so the result is its CPU
/// kernel's to the bit.
pub(crate) fn scatter_rois(
    shapes: &[[usize; 4]],
    params: &[RoiAlignParams],
    rois: &[[f32; 5]],
    level: impl Fn(usize) -> usize + Sync,
    grad: &[f32],
    out: &mut [Vec<f32>],
) {
    let bins = params[0].output_size[0] * params[0].output_size[1];
    let c = shapes[0][1];
    let per_roi = c * bins;
    if per_roi == 0 || rois.is_empty() {
        return;
    }
    let mut k0 = 0;
    while k0 < rois.len() {
        let mut k1 = k0;
        let mut n_samples = 0;
        while k1 < rois.len() && (k1 == k0 || n_samples < SAMPLE_BUDGET) {
            let (.., gh, gw) = geometry(&rois[k1], &params[level(k1)]);
            n_samples += gh * gw * bins;
            k1 += 1;
        }
        let samples: Vec<(Vec<Sample>, usize)> = (k0..k1)
            .into_par_iter()
            .map(|k| {
                let l = level(k);
                let [_, _, h, w] = shapes[l];
                let mut s = Vec::new();
                let per_bin = push_samples([h, w], &rois[k], &params[l], &mut s);
                (s, per_bin)
            })
            .collect();
        for (l, (grads, &[_, _, h, w])) in out.iter_mut().zip(shapes).enumerate() {
            let hw = h * w;
            if hw == 0 {
                continue;
            }
            grads.par_chunks_mut(hw).enumerate().for_each(|(plane, g)| {
                let (batch, ch) = (plane / c, plane % c);
                for (k, (s, per_bin)) in (k0..k1).zip(&samples) {
                    if level(k) != l || rois[k][0] as usize != batch || *per_bin == 0 {
                        continue;
                    }
                    let count = *per_bin as f32;
                    let bin_grads = &grad[k * per_roi + ch * bins..][..bins];
                    for (&gb, points) in bin_grads.iter().zip(s.chunks_exact(*per_bin)) {
                        for sm in points {
                            // Points beyond the map have no neighbours (all weights 0).
                            if sm.w == [0.0; 4] {
                                continue;
                            }
                            for (&pos, &wt) in sm.pos.iter().zip(&sm.w) {
                                g[pos as usize] += gb * wt / count;
                            }
                        }
                    }
                }
            });
        }
        k0 = k1;
    }
}
