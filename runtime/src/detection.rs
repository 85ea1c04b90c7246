//! The graph's detection operators for one image, at the level of torchvision's modules:
//! `GeneralizedRCNNTransform`, `AnchorGenerator`, `RegionProposalNetwork.filter_proposals`,
//! `roi_align` and `roi_pool` on one feature map, `MultiScaleRoIAlign` (and its RoIPool twin),
//! `RoIHeads.postprocess_detections`, `maskrcnn_inference` and `heatmaps_to_keypoints`, and the
//! transform's `postprocess`. Each composes the operators of [`crate::ops`] and takes and returns
//! owned row-major float32 tensors, so that the executor can call them with the values of the
//! graph. Sizes are `[height, width]`; zero boxes give empty results, bad shapes an [`Error`].
//!
//! Thresholds are taken as `f64` (the graph's float attributes). Where torch compares a float32
//! tensor with a Python float, the float is first rounded to float32, and so it is here; the NMS
//! IoU threshold stays a double, as in torchvision's kernel.

use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::anchors::grid_anchors;
use crate::ops::box_coder::{clip_boxes_to_image, remove_small_boxes, BoxCoder};
use crate::ops::keypoints;
use crate::ops::multiscale::{self, MultiScaleParams, MultiScalePoolParams};
use crate::ops::nms::{batched_nms, topk_per_level};
use crate::ops::paste_masks::paste_masks_into_image;
use crate::ops::preprocess::{self, resize_boxes, ImageU8, Transform};
use crate::ops::roi_align::{self, RoiAlignParams};
use crate::ops::roi_pool;
use crate::tensor::{rows, FeatureMap};

/// An owned, contiguous, row-major float32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorF32 {
    /// Checks that `data` holds exactly the product of `shape` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let len = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if len != Some(data.len()) {
            return shape_err("tensor", format!("{} values for shape {shape:?}", data.len()));
        }
        Ok(TensorF32 { shape, data })
    }

    /// `[K, 4]` boxes.
    pub fn from_boxes(boxes: &[[f32; 4]]) -> Self {
        TensorF32 { shape: vec![boxes.len(), 4], data: boxes.as_flattened().to_vec() }
    }

    /// The rows of a `[K, 4]` tensor as boxes.
    pub fn boxes(&self, op: &'static str) -> Result<&[[f32; 4]]> {
        if self.shape.len() != 2 || self.shape[1] != 4 {
            return shape_err(op, format!("boxes of shape {:?}, expected [K, 4]", self.shape));
        }
        self.check_len(op)?;
        rows::<4>(op, &self.data)
    }

    /// The four dimensions of a rank-4 tensor.
    pub(crate) fn dims4(&self, op: &'static str, what: &str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [a, b, c, d] => {
                self.check_len(op)?;
                Ok([a, b, c, d])
            }
            _ => shape_err(op, format!("{what} of shape {:?}, expected rank 4", self.shape)),
        }
    }

    /// Rejects a tensor whose public fields were set inconsistently.
    pub(crate) fn check_len(&self, op: &'static str) -> Result<()> {
        let len = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if len != Some(self.data.len()) {
            return shape_err(op, format!("{} values for shape {:?}", self.data.len(), self.shape));
        }
        Ok(())
    }
}

/// Resizes, normalizes and zero-pads one `[h, w, 3]` RGB image (torchvision's
/// `GeneralizedRCNNTransform`). Returns the `[1, 3, Hb, Wb]` batch and the resized, unpadded
/// size.
pub fn preprocess(image_hwc_u8: &[u8], hw: [usize; 2], p: &Transform) -> Result<(TensorF32, [usize; 2])> {
    let image = ImageU8 { data: image_hwc_u8, height: hw[0], width: hw[1] };
    let batch = preprocess::preprocess(&[image], p)?;
    Ok((TensorF32 { shape: batch.shape.to_vec(), data: batch.data }, batch.image_sizes[0]))
}

/// Anchors of every pyramid level for a batch of size `batch_hw` (`AnchorGenerator`), `[A, 4]`:
/// levels concatenated, cells row-major, per cell the aspect ratios × that level's sizes.
/// `aspect_ratios` apply to every level.
pub fn anchors(
    feature_sizes: &[[usize; 2]],
    batch_hw: [usize; 2],
    sizes: &[Vec<i64>],
    aspect_ratios: &[f64],
) -> Result<TensorF32> {
    // torch.as_tensor(..., dtype=float32) rounds sizes and ratios to float32.
    let sizes: Vec<Vec<f32>> = sizes.iter().map(|s| s.iter().map(|&v| v as f32).collect()).collect();
    let ratios: Vec<f32> = aspect_ratios.iter().map(|&r| r as f32).collect();
    let anchors = grid_anchors(batch_hw, feature_sizes, &sizes, &vec![ratios; feature_sizes.len()])?;
    Ok(TensorF32::from_boxes(&anchors))
}

/// Settings of [`rpn_proposals`] (torchvision's `RegionProposalNetwork`, eval mode).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RpnParams {
    /// Proposals kept per level before NMS, by objectness.
    pub pre_nms_top_n: usize,
    /// Proposals kept after NMS.
    pub post_nms_top_n: usize,
    pub nms_thresh: f64,
    /// Boxes narrower or lower than this are dropped.
    pub min_size: f64,
    /// Proposals whose probability is below this are dropped.
    pub score_thresh: f64,
    /// Box coder weights `(wx, wy, ww, wh)`: (1, 1, 1, 1) in torchvision.
    pub weights: [f32; 4],
}

impl RpnParams {
    /// torchvision's test-time values: the defaults of the `rpn_proposals` operator too.
    pub const TORCHVISION: RpnParams = RpnParams {
        pre_nms_top_n: 1000,
        post_nms_top_n: 1000,
        nms_thresh: 0.7,
        min_size: 1e-3,
        score_thresh: 0.0,
        weights: [1.0; 4],
    };
}

impl Default for RpnParams {
    fn default() -> Self {
        RpnParams::TORCHVISION
    }
}

/// The RPN's proposals `[P, 4]` for one image of (resized, unpadded) size `image_size`, as
/// `filter_proposals`: per level the `pre_nms_top_n` highest objectness logits, their deltas
/// decoded against the anchors, sigmoid, clip, small boxes removed, probabilities
/// `>= score_thresh` kept, NMS within each level, the first `post_nms_top_n` by score.
///
/// `objectness[l]` is `[1, A, H, W]` and `deltas[l]` `[1, 4A, H, W]`; anchors are ordered as
/// [`anchors`] gives them (cell-major, then anchor), which is the order torchvision's
/// `concat_box_prediction_layers` flattens the head's outputs in.
///
/// Among equal logits top-k takes the lower anchor index first; torch's CPU top-k leaves them
/// in the order of its `std::partial_sort` / `std::nth_element`, which can differ.
pub fn rpn_proposals(
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    anchors: &TensorF32,
    image_size: [usize; 2],
    p: &RpnParams,
) -> Result<TensorF32> {
    const OP: &str = "rpn_proposals";
    let anchors = anchors.boxes(OP)?;
    Ok(TensorF32::from_boxes(&proposals_of_image(OP, objectness, deltas, anchors, [0, 1], image_size, p)?))
}

/// [`rpn_proposals`] of image `image` of a batch of `batch` (`[image, batch]`): `objectness[l]`
/// is `[batch, A, H, W]` and `deltas[l]` `[batch, 4A, H, W]`, and `anchors` are every image's.
pub(crate) fn proposals_of_image(
    op: &'static str,
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    anchors: &[[f32; 4]],
    [image, batch]: [usize; 2],
    image_size: [usize; 2],
    p: &RpnParams,
) -> Result<Vec<[f32; 4]>> {
    if objectness.len() != deltas.len() || objectness.is_empty() {
        return shape_err(op, format!("{} objectness maps and {} delta maps", objectness.len(), deltas.len()));
    }
    let mut logits = Vec::with_capacity(anchors.len());
    let mut level_sizes = Vec::with_capacity(objectness.len());
    let mut level_deltas = Vec::with_capacity(objectness.len());
    for (o, d) in objectness.iter().zip(deltas) {
        let [n, a, h, w] = o.dims4(op, "objectness")?;
        let dd = d.dims4(op, "deltas")?;
        if n != batch || dd != [batch, 4 * a, h, w] {
            return shape_err(
                op,
                format!(
                    "objectness {:?} with deltas {dd:?}, expected [{batch}, A, H, W] and [{batch}, 4A, H, W]",
                    o.shape
                ),
            );
        }
        // (A, H, W) to (H, W, A): each cell's anchors together.
        let hw = h * w;
        let o = &o.data[image * a * hw..(image + 1) * a * hw];
        logits.extend((0..hw).flat_map(|cell| (0..a).map(move |k| o[k * hw + cell])));
        level_sizes.push(hw * a);
        level_deltas.push((&d.data[image * 4 * a * hw..(image + 1) * 4 * a * hw], hw, a));
    }
    if logits.len() != anchors.len() {
        return shape_err(op, format!("{} anchors for {} objectness values", anchors.len(), logits.len()));
    }
    check_finite(op, "objectness", &logits)?;
    let top = topk_per_level(&logits, &level_sizes, p.pre_nms_top_n)?;

    // Decoding is per box, so decoding only the selected anchors gives torchvision's values.
    let mut top_deltas = Vec::with_capacity(top.len() * 4);
    let mut top_anchors = Vec::with_capacity(top.len());
    let mut top_levels = Vec::with_capacity(top.len());
    let level_starts: Vec<usize> = level_sizes.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
    for &i in &top {
        let level = level_starts.partition_point(|&s| s <= i) - 1;
        let (d, hw, a) = level_deltas[level];
        let local = i - level_starts[level];
        let (cell, k) = (local / a, local % a);
        // Deltas [4A, H, W] viewed as (A, 4, H, W).
        top_deltas.extend((0..4).map(|j| d[(k * 4 + j) * hw + cell]));
        top_anchors.push(anchors[i]);
        top_levels.push(level as i64);
    }
    let decoded = BoxCoder::new(p.weights).decode(&top_deltas, &top_anchors)?;
    let scores: Vec<f32> = top.iter().map(|&i| sigmoid(logits[i])).collect();
    let boxes = clip_boxes_to_image(&decoded, image_size)?;

    let keep = remove_small_boxes(&boxes, p.min_size as f32)?;
    let score_thresh = p.score_thresh as f32;
    let keep: Vec<usize> = keep.into_iter().filter(|&i| scores[i] >= score_thresh).collect();
    let boxes: Vec<[f32; 4]> = keep.iter().map(|&i| boxes[i]).collect();
    let scores: Vec<f32> = keep.iter().map(|&i| scores[i]).collect();
    let levels: Vec<i64> = keep.iter().map(|&i| top_levels[i]).collect();
    let mut kept = batched_nms(&boxes, &scores, &levels, p.nms_thresh)?;
    kept.truncate(p.post_nms_top_n);
    Ok(kept.iter().map(|&i| boxes[i]).collect())
}

/// torch's float32 sigmoid, `1 / (1 + exp(-x))`.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `[1, C, H, W]` feature maps of one image.
fn image_maps<'a>(op: &'static str, features: &'a [TensorF32]) -> Result<Vec<FeatureMap<'a>>> {
    features
        .iter()
        .map(|f| match f.dims4(op, "feature map")? {
            dims @ [1, ..] => FeatureMap::new(&f.data, dims),
            _ => shape_err(op, format!("feature map of shape {:?}, expected [1, C, H, W]", f.shape)),
        })
        .collect()
}

/// Boxes of the one image as RoIs `[0, x1, y1, x2, y2]`.
fn rois(boxes: &[[f32; 4]]) -> Vec<[f32; 5]> {
    boxes.iter().map(|b| [0.0, b[0], b[1], b[2], b[3]]).collect()
}

/// RoIAlign `[K, C, oh, ow]` of each box (image coordinates) from one `[1, C, H, W]` feature
/// map (torchvision's `roi_align`).
pub fn roi_align(features: &TensorF32, boxes: &TensorF32, p: &RoiAlignParams) -> Result<TensorF32> {
    const OP: &str = "roi_align";
    let boxes = boxes.boxes(OP)?;
    let map = &image_maps(OP, std::slice::from_ref(features))?[0];
    let [oh, ow] = p.output_size;
    TensorF32::new(vec![boxes.len(), map.c, oh, ow], roi_align::roi_align(map, &rois(boxes), p)?)
}

/// Settings of [`roi_pool`], named as in `torchvision.ops.roi_pool`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiPoolParams {
    pub output_size: [usize; 2],
    /// Multiplies box coordinates to get feature-map coordinates.
    pub spatial_scale: f32,
}

/// RoIPool `[K, C, oh, ow]` of each box (image coordinates) from one `[1, C, H, W]` feature map
/// (torchvision's `roi_pool`).
pub fn roi_pool(features: &TensorF32, boxes: &TensorF32, p: &RoiPoolParams) -> Result<TensorF32> {
    const OP: &str = "roi_pool";
    let boxes = boxes.boxes(OP)?;
    let map = &image_maps(OP, std::slice::from_ref(features))?[0];
    let [oh, ow] = p.output_size;
    let pooled = roi_pool::roi_pool(map, &rois(boxes), p.output_size, p.spatial_scale)?;
    TensorF32::new(vec![boxes.len(), map.c, oh, ow], pooled.values)
}

/// RoIAlign `[K, C, oh, ow]` of each box (image coordinates) from the pyramid level its size
/// maps to (`floor(canonical_level + log2(√area / canonical_scale) + 1e-6)`, clamped to the
/// levels present). `features` are `[1, C, H, W]`, finest first; each level's scale is the power
/// of two nearest to its height over `image_hw[0]`.
///
/// torchvision infers the scales from the resized, unpadded image size; the padded batch size
/// gives the same powers of two unless padding grows the height by √2 or more (images under
/// about 75 pixels with padding to 32).
pub fn multiscale_roi_align(
    features: &[TensorF32],
    boxes: &TensorF32,
    image_hw: [usize; 2],
    p: &MultiScaleParams,
) -> Result<TensorF32> {
    pooled_over_levels("multiscale_roi_align", features, boxes, p.output_size, |maps, boxes| {
        multiscale::multiscale_roi_align(maps, &[boxes], &[image_hw], p)
    })
}

/// RoIPool `[K, C, oh, ow]` of each box from the pyramid level [`multiscale_roi_align`] would
/// take it from.
pub fn multiscale_roi_pool(
    features: &[TensorF32],
    boxes: &TensorF32,
    image_hw: [usize; 2],
    p: &MultiScalePoolParams,
) -> Result<TensorF32> {
    pooled_over_levels("multiscale_roi_pool", features, boxes, p.output_size, |maps, boxes| {
        multiscale::multiscale_roi_pool(maps, &[boxes], &[image_hw], p)
    })
}

/// The `[K, C, oh, ow]` result of `pool` (a multi-scale operator of `ops::multiscale`) on the
/// one image's pyramid and boxes.
fn pooled_over_levels(
    op: &'static str,
    features: &[TensorF32],
    boxes: &TensorF32,
    [oh, ow]: [usize; 2],
    pool: impl FnOnce(&[FeatureMap], &[[f32; 4]]) -> Result<multiscale::MultiScaleOutput>,
) -> Result<TensorF32> {
    let boxes = boxes.boxes(op)?;
    let maps = image_maps(op, features)?;
    let channels = maps.first().map_or(0, |m| m.c);
    TensorF32::new(vec![boxes.len(), channels, oh, ow], pool(&maps, boxes)?.values)
}

/// Settings of [`postprocess_detections`] (torchvision's `RoIHeads`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionParams {
    /// Box coder weights `(wx, wy, ww, wh)`: (10, 10, 5, 5) in torchvision.
    pub weights: [f32; 4],
    /// Class probabilities must exceed this.
    pub score_thresh: f64,
    pub nms_thresh: f64,
    pub detections_per_img: usize,
    /// Boxes narrower or lower than this are dropped (torchvision: 1e-2).
    pub min_size: f64,
}

impl DetectionParams {
    /// torchvision's Mask R-CNN values: the defaults of the `postprocess_detections` operator too.
    pub const TORCHVISION: DetectionParams = DetectionParams {
        weights: [10.0, 10.0, 5.0, 5.0],
        score_thresh: 0.05,
        nms_thresh: 0.5,
        detections_per_img: 100,
        min_size: 1e-2,
    };
}

impl Default for DetectionParams {
    fn default() -> Self {
        DetectionParams::TORCHVISION
    }
}

/// Detections of one image (`postprocess_detections`): softmax over the `[P, K]` class logits,
/// each class's box of `[P, 4K]` decoded against its proposal and clipped to `image_size`, the
/// background class dropped, candidates in (proposal, class) order with probability
/// `> score_thresh` and sides `>= min_size` kept, NMS within each class, the best
/// `detections_per_img`. Returns boxes `[D, 4]`, scores `[D]` and labels (class indices ≥ 1),
/// by decreasing score.
pub fn postprocess_detections(
    class_logits: &TensorF32,
    box_regression: &TensorF32,
    proposals: &TensorF32,
    image_size: [usize; 2],
    p: &DetectionParams,
) -> Result<(TensorF32, TensorF32, Vec<i64>)> {
    const OP: &str = "postprocess_detections";
    let proposals = proposals.boxes(OP)?;
    let (n, classes) = match class_logits.shape[..] {
        [n, k] if k > 0 => (n, k),
        _ => return shape_err(OP, format!("class logits of shape {:?}, expected [P, K]", class_logits.shape)),
    };
    class_logits.check_len(OP)?;
    box_regression.check_len(OP)?;
    if n != proposals.len() || box_regression.shape != [n, 4 * classes] {
        return shape_err(
            OP,
            format!(
                "class logits {:?}, box regression {:?} for {} proposals",
                class_logits.shape,
                box_regression.shape,
                proposals.len()
            ),
        );
    }
    check_finite(OP, "class logit", &class_logits.data)?;
    let probs: Vec<f32> = class_logits.data.chunks_exact(classes).flat_map(softmax).collect();
    let decoded = BoxCoder::new(p.weights).decode(&box_regression.data, proposals)?;
    let decoded = clip_boxes_to_image(&decoded, image_size)?;

    let score_thresh = p.score_thresh as f32;
    let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        for c in 1..classes {
            let s = probs[i * classes + c];
            if s > score_thresh {
                boxes.push(decoded[i * classes + c]);
                scores.push(s);
                labels.push(c as i64);
            }
        }
    }
    let keep = remove_small_boxes(&boxes, p.min_size as f32)?;
    let boxes: Vec<[f32; 4]> = keep.iter().map(|&i| boxes[i]).collect();
    let scores: Vec<f32> = keep.iter().map(|&i| scores[i]).collect();
    let labels: Vec<i64> = keep.iter().map(|&i| labels[i]).collect();
    let mut kept = batched_nms(&boxes, &scores, &labels, p.nms_thresh)?;
    kept.truncate(p.detections_per_img);
    Ok((
        TensorF32::from_boxes(&kept.iter().map(|&i| boxes[i]).collect::<Vec<_>>()),
        TensorF32 { shape: vec![kept.len()], data: kept.iter().map(|&i| scores[i]).collect() },
        kept.iter().map(|&i| labels[i]).collect(),
    ))
}

/// torch's softmax of one row: subtract the maximum, exponentiate, divide by the sum.
fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `maskrcnn_inference`: the sigmoid of each detection's mask logits for its label,
/// `[D, K, M, M]` to `[D, 1, M, M]`; a class-agnostic head (`K = 1`) uses its only channel.
pub fn mask_probs(logits: &TensorF32, labels: &[i64]) -> Result<TensorF32> {
    const OP: &str = "mask_probs";
    let [d, k, mh, mw] = logits.dims4(OP, "mask logits")?;
    if d != labels.len() {
        return shape_err(OP, format!("{} labels for {d} masks", labels.len()));
    }
    let plane = mh * mw;
    let mut out = Vec::with_capacity(d * plane);
    for (i, &label) in labels.iter().enumerate() {
        let channel = match (k, usize::try_from(label)) {
            (1, _) => 0,
            (_, Ok(c)) if c < k => c,
            _ => return invalid(OP, format!("label {label} for {k} mask classes")),
        };
        let start = (i * k + channel) * plane;
        out.extend(logits.data[start..start + plane].iter().map(|&x| sigmoid(x)));
    }
    TensorF32::new(vec![d, 1, mh, mw], out)
}

/// Boxes from an image of size `from_hw` to one of size `to_hw` (the transform's
/// `postprocess`, `resize_boxes`).
pub fn rescale_boxes(boxes: &TensorF32, from_hw: [usize; 2], to_hw: [usize; 2]) -> Result<TensorF32> {
    let boxes = boxes.boxes("rescale_boxes")?;
    Ok(TensorF32::from_boxes(&resize_boxes(boxes, from_hw, to_hw)?))
}

/// Pastes `[D, 1, M, M]` mask probabilities into `[D, 1, H, W]` images at their boxes
/// (`paste_masks_in_image`: box expanded by `(M + 2·padding)/M`, bilinear, soft).
pub fn paste_masks(masks: &TensorF32, boxes: &TensorF32, image_hw: [usize; 2], padding: usize) -> Result<TensorF32> {
    let shape = pasted_shape(masks, boxes, image_hw)?;
    let mut pasted = vec![0.0; shape.iter().product()];
    paste_masks_into(masks, boxes, image_hw, padding, &mut pasted)?;
    TensorF32::new(shape.to_vec(), pasted)
}

/// The shape of [`paste_masks`]' result, `[D, 1, H, W]`, once its arguments are checked.
pub fn pasted_shape(masks: &TensorF32, boxes: &TensorF32, [h, w]: [usize; 2]) -> Result<[usize; 4]> {
    const OP: &str = "paste_masks";
    let boxes = boxes.boxes(OP)?;
    let [d, one, mh, mw] = masks.dims4(OP, "masks")?;
    if d != boxes.len() || one != 1 || mh != mw {
        return shape_err(OP, format!("masks {:?} for {} boxes, expected [D, 1, M, M]", masks.shape, boxes.len()));
    }
    Ok([d, 1, h, w])
}

/// [`paste_masks`] into `out`, zeros of [`pasted_shape`]'s size.
pub fn paste_masks_into(masks: &TensorF32, boxes: &TensorF32, image_hw: [usize; 2], padding: usize, out: &mut [f32]) -> Result<()> {
    let [d, _, mh, _] = masks.dims4("paste_masks", "masks")?;
    if d == 0 {
        return Ok(());
    }
    paste_masks_into_image(&masks.data, mh, boxes.boxes("paste_masks")?, image_hw, padding, out)
}

/// Keypoints `[D, K, 3]` (x, y, visibility 1) and their scores `[D, K]` from `[D, K, S, S]`
/// heatmaps and the `[D, 4]` boxes they were pooled from (torchvision's `heatmaps_to_keypoints`).
pub fn heatmaps_to_keypoints(heatmaps: &TensorF32, boxes: &TensorF32) -> Result<(TensorF32, TensorF32)> {
    const OP: &str = "heatmaps_to_keypoints";
    let boxes = boxes.boxes(OP)?;
    let shape @ [d, k, ..] = heatmaps.dims4(OP, "heatmaps")?;
    let keypoints = keypoints::heatmaps_to_keypoints(&heatmaps.data, shape, boxes)?;
    Ok((TensorF32::new(vec![d, k, 3], keypoints.xyv)?, TensorF32::new(vec![d, k], keypoints.scores)?))
}
