//! Multi-scale RoIAlign over a feature pyramid: torchvision's `MultiScaleRoIAlign` with its
//! `LevelMapper` (FPN paper, eq. 1) and scale inference; and the same with RoIPool.

use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::roi_align::{check_backward, check_params, check_roi, pool_rois, scatter_rois, PoolMode, RoiAlignParams};
use crate::ops::roi_pool::roi_pool;
use crate::tensor::FeatureMap;

/// torchvision's `LevelMapper`: canonical box size 224 (ImageNet pre-training), its level 4,
/// and the epsilon added before flooring.
const TORCHVISION_MAPPER: [f32; 3] = [224.0, 4.0, 1e-6];

/// Assigns boxes to pyramid levels: `floor(lvl0 + log2(√area / s0) + eps)`, clamped to
/// `[k_min, k_max]`, returned relative to `k_min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelMapper {
    pub k_min: i32,
    pub k_max: i32,
    /// Canonical box size `s0` (224, ImageNet pre-training size).
    pub canonical_scale: f32,
    /// Level of a box of the canonical size (4).
    pub canonical_level: f32,
    pub eps: f32,
}

impl LevelMapper {
    /// torchvision's level range from the pyramid's scales (finest first): `-log2` of the first
    /// and last; the scales must be consecutive powers of two.
    pub fn from_scales(op: &'static str, scales: &[f32], canonical_scale: f32, canonical_level: f32, eps: f32) -> Result<Self> {
        let level = |s: f32| -s.log2();
        let (k_min, k_max) = (level(scales[0]), level(scales[scales.len() - 1]));
        if k_max - k_min + 1.0 != scales.len() as f32 {
            return invalid(op, format!("inferred scales {scales:?} are not consecutive powers of two"));
        }
        Ok(LevelMapper { k_min: k_min as i32, k_max: k_max as i32, canonical_scale, canonical_level, eps })
    }

    /// torchvision's defaults for levels `k_min..=k_max`.
    pub fn new(k_min: i32, k_max: i32) -> Self {
        let [canonical_scale, canonical_level, eps] = TORCHVISION_MAPPER;
        LevelMapper { k_min, k_max, canonical_scale, canonical_level, eps }
    }

    /// Index (from 0 = `k_min`) of each box's level.
    pub fn map_levels(&self, boxes: &[[f32; 4]]) -> Result<Vec<usize>> {
        const OP: &str = "level_mapper";
        check_finite(OP, "box", boxes.as_flattened())?;
        if self.k_max < self.k_min {
            return invalid(OP, format!("levels {}..={}", self.k_min, self.k_max));
        }
        boxes
            .iter()
            .map(|b| {
                let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
                let lvl = (self.canonical_level + (s / self.canonical_scale).log2() + self.eps).floor();
                if lvl.is_nan() {
                    return invalid(OP, format!("box {b:?} has a negative area"));
                }
                Ok((lvl.clamp(self.k_min as f32, self.k_max as f32) as i32 - self.k_min) as usize)
            })
            .collect()
    }
}

/// The scale of a feature map relative to the image, as torchvision infers it: the power of
/// two nearest (in log2, float32) to `feature height / image height`.
pub fn infer_scale(feature_hw: [usize; 2], image_hw: [usize; 2]) -> Result<f32> {
    if feature_hw[0] == 0 || image_hw[0] == 0 {
        return invalid("infer_scale", format!("feature {feature_hw:?} for image {image_hw:?}"));
    }
    let approx = (feature_hw[0] as f64 / image_hw[0] as f64) as f32;
    Ok(2f64.powf(approx.log2().round_ties_even() as f64) as f32)
}

/// Parameters of [`multiscale_roi_align`] (torchvision's `MultiScaleRoIAlign`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MultiScaleParams {
    pub output_size: [usize; 2],
    pub sampling_ratio: i32,
    /// Box size that maps to `canonical_level` (224).
    pub canonical_scale: f32,
    pub canonical_level: f32,
    pub eps: f32,
    /// torchvision's module always pools with `aligned=False`; `true` shifts boxes by −0.5
    /// pixel as `roi_align(..., aligned=True)`.
    pub aligned: bool,
}

impl MultiScaleParams {
    /// torchvision's `MultiScaleRoIAlign(output_size, sampling_ratio)` defaults.
    pub fn new(output_size: [usize; 2], sampling_ratio: i32) -> Self {
        let [canonical_scale, canonical_level, eps] = TORCHVISION_MAPPER;
        MultiScaleParams { output_size, sampling_ratio, canonical_scale, canonical_level, eps, aligned: false }
    }
}

/// The result of [`multiscale_roi_align`].
#[derive(Clone, Debug, PartialEq)]
pub struct MultiScaleOutput {
    /// `[K, C, oh, ow]`, boxes of all images concatenated in order.
    pub values: Vec<f32>,
    /// The scale inferred for each level.
    pub scales: Vec<f32>,
    /// The level (index into `features`) each box was pooled from.
    pub levels: Vec<usize>,
}

/// Where a multi-scale pooler takes each box from: the scale inferred for each level, each box's
/// level, and the boxes as RoIs `[image, x1, y1, x2, y2]`, images in order.
struct Assignment {
    scales: Vec<f32>,
    levels: Vec<usize>,
    rois: Vec<[f32; 5]>,
}

/// torchvision's `_setup_scales` and `LevelMapper` for `features` (finest first, equal batch and
/// channels) and the boxes of each image of the batch, of (resized, unpadded) sizes
/// `image_sizes`: scales inferred from the largest image height against each level's height.
fn assign_levels(
    op: &'static str,
    features: &[FeatureMap],
    boxes: &[&[[f32; 4]]],
    image_sizes: &[[usize; 2]],
    [canonical_scale, canonical_level, eps]: [f32; 3],
) -> Result<Assignment> {
    let Some(first) = features.first() else {
        return invalid(op, "no feature maps");
    };
    if boxes.len() != image_sizes.len() || boxes.len() != first.n {
        return shape_err(
            op,
            format!("{} box lists, {} image sizes, batch of {}", boxes.len(), image_sizes.len(), first.n),
        );
    }
    if features.iter().any(|f| f.n != first.n || f.c != first.c) {
        return shape_err(op, "feature maps differ in batch size or channels");
    }
    let original = [
        image_sizes.iter().map(|s| s[0]).max().unwrap_or(0),
        image_sizes.iter().map(|s| s[1]).max().unwrap_or(0),
    ];
    let scales = features.iter().map(|f| infer_scale([f.h, f.w], original)).collect::<Result<Vec<_>>>()?;
    let mapper = LevelMapper::from_scales(op, &scales, canonical_scale, canonical_level, eps)?;
    let all: Vec<[f32; 4]> = boxes.iter().flat_map(|b| b.iter().copied()).collect();
    let levels = mapper.map_levels(&all)?;
    let rois =
        boxes.iter().enumerate().flat_map(|(i, b)| b.iter().map(move |b| [i as f32, b[0], b[1], b[2], b[3]])).collect();
    Ok(Assignment { scales, levels, rois })
}

/// RoIAlign of each box from the pyramid level its size maps to.
///
/// `features` are the levels finest first, all with the same batch and channels;
/// `boxes[i]` are image `i`'s boxes; `image_sizes[i]` its (resized, unpadded) size. Scales are
/// inferred from the largest image height against each level's height.
pub fn multiscale_roi_align(
    features: &[FeatureMap],
    boxes: &[&[[f32; 4]]],
    image_sizes: &[[usize; 2]],
    p: &MultiScaleParams,
) -> Result<MultiScaleOutput> {
    const OP: &str = "multiscale_roi_align";
    let Assignment { scales, levels, rois } =
        assign_levels(OP, features, boxes, image_sizes, [p.canonical_scale, p.canonical_level, p.eps])?;
    let [oh, ow] = p.output_size;
    let channels = features[0].c;
    let params = level_params(&scales, p);
    for (f, q) in features.iter().zip(&params) {
        check_params(OP, f, q)?;
    }
    for (r, &l) in rois.iter().zip(&levels) {
        check_roi(OP, &features[l], r, &params[l])?;
    }
    let mut values = vec![0.0f32; rois.len() * channels * oh * ow];
    pool_rois(features, &params, &rois, |k| levels[k], channels, &mut values);
    Ok(MultiScaleOutput { values, scales, levels })
}

/// The RoIAlign parameters of each level.
fn level_params(scales: &[f32], p: &MultiScaleParams) -> Vec<RoiAlignParams> {
    scales
        .iter()
        .map(|&spatial_scale| RoiAlignParams {
            output_size: p.output_size,
            spatial_scale,
            sampling_ratio: p.sampling_ratio,
            aligned: p.aligned,
            mode: PoolMode::Avg,
        })
        .collect()
}

/// The gradient of [`multiscale_roi_align`] with respect to each level: `grad` (`[K, C, oh,
/// ow]`, boxes of all images in order) spread back onto zero maps of `shapes` (finest first),
/// each box onto the level the forward pooled it from (torchvision's backward of
/// `MultiScaleRoIAlign`: `roi_align`'s backward per level).
pub fn multiscale_roi_align_backward(
    grad: &[f32],
    shapes: &[[usize; 4]],
    boxes: &[&[[f32; 4]]],
    image_sizes: &[[usize; 2]],
    p: &MultiScaleParams,
) -> Result<Vec<Vec<f32>>> {
    const OP: &str = "multiscale_roi_align_backward";
    let mut grads: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0f32; s.iter().product()]).collect();
    let (params, Assignment { levels, rois, .. }) = {
        let maps = grads.iter().zip(shapes).map(|(g, &s)| FeatureMap::new(g, s)).collect::<Result<Vec<_>>>()?;
        let assignment = assign_levels(OP, &maps, boxes, image_sizes, [p.canonical_scale, p.canonical_level, p.eps])?;
        let params = level_params(&assignment.scales, p);
        for (f, q) in maps.iter().zip(&params) {
            check_backward(OP, f, q)?;
        }
        for (r, &l) in assignment.rois.iter().zip(&assignment.levels) {
            check_roi(OP, &maps[l], r, &params[l])?;
        }
        (params, assignment)
    };
    let [oh, ow] = p.output_size;
    if grad.len() != rois.len() * shapes[0][1] * oh * ow {
        let (values, boxes, channels) = (grad.len(), rois.len(), shapes[0][1]);
        return shape_err(OP, format!("gradient of {values} values for {boxes} boxes of {channels}x{oh}x{ow}"));
    }
    check_finite(OP, "gradient", grad)?;
    scatter_rois(shapes, &params, &rois, |k| levels[k], grad, &mut grads);
    Ok(grads)
}

/// Parameters of [`multiscale_roi_pool`]: the level mapper of [`MultiScaleParams`], RoIPool's
/// output size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MultiScalePoolParams {
    pub output_size: [usize; 2],
    pub canonical_scale: f32,
    pub canonical_level: f32,
    pub eps: f32,
}

impl MultiScalePoolParams {
    /// torchvision's level mapper defaults.
    pub fn new(output_size: [usize; 2]) -> Self {
        let [canonical_scale, canonical_level, eps] = TORCHVISION_MAPPER;
        MultiScalePoolParams { output_size, canonical_scale, canonical_level, eps }
    }
}

/// RoIPool (the Mask R-CNN paper's ablation, on FPN) of each box from the pyramid level its
/// size maps to: [`multiscale_roi_align`]'s levels and scales, pooled with
/// [`roi_pool`](crate::ops::roi_pool::roi_pool) level by level, as torchvision's
/// `MultiScaleRoIAlign` calls `roi_align`.
pub fn multiscale_roi_pool(
    features: &[FeatureMap],
    boxes: &[&[[f32; 4]]],
    image_sizes: &[[usize; 2]],
    p: &MultiScalePoolParams,
) -> Result<MultiScaleOutput> {
    const OP: &str = "multiscale_roi_pool";
    let Assignment { scales, levels, rois } =
        assign_levels(OP, features, boxes, image_sizes, [p.canonical_scale, p.canonical_level, p.eps])?;
    let [oh, ow] = p.output_size;
    let per_roi = features[0].c * oh * ow;
    let mut values = vec![0.0f32; rois.len() * per_roi];
    for (level, (map, &scale)) in features.iter().zip(&scales).enumerate() {
        let members: Vec<usize> = (0..rois.len()).filter(|&k| levels[k] == level).collect();
        let level_rois: Vec<[f32; 5]> = members.iter().map(|&k| rois[k]).collect();
        let pooled = roi_pool(map, &level_rois, p.output_size, scale)?;
        for (i, &k) in members.iter().enumerate() {
            values[k * per_roi..(k + 1) * per_roi].copy_from_slice(&pooled.values[i * per_roi..(i + 1) * per_roi]);
        }
    }
    Ok(MultiScaleOutput { values, scales, levels })
}
