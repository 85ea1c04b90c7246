//! The graph's training-side operators for a batch of `N` images, at the level of torchvision's
//! modules (as [`crate::detection`] composes the inference ones): the RPN's anchor targets
//! (`RegionProposalNetwork.assign_targets_to_anchors`), the balanced sampler, the RoI heads'
//! `select_training_samples`, the losses (`rpn.py`'s `compute_loss`, `fastrcnn_loss`,
//! `maskrcnn_loss`) with their gradients, the mask targets (`project_masks_on_boxes`), the
//! backward of RoIAlign and multi-scale RoIAlign, and the RPN's proposals for a batch.
//!
//! Ragged sets (ground-truth boxes, proposals, RoIs) are flattened image by image, with an
//! ascending image index per row. Randomness enters only through keys (see
//! [`crate::ops::sampler`]), so a step is reproducible and torchvision's recorded choices can
//! be replayed. Every operator accepts zero boxes, zero ground truth and images without either.

use std::ops::Range;

use rayon::prelude::*;

use crate::detection::{proposals_of_image, RpnParams, TensorF32};
use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::box_coder::BoxCoder;
use crate::ops::losses::{FastRcnnLossInputs, MaskLossInputs, RpnLossInputs};
use crate::ops::mask_targets::{project_masks_on_boxes, GtMasks};
use crate::ops::matcher::{Matcher, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};
use crate::ops::multiscale::{self, MultiScaleParams};
use crate::ops::roi_align::{self, RoiAlignParams};
use crate::ops::sampler::{Class, Sampler};
use crate::tensor::{rows, FeatureMap};

/// The rows of each image in a list of ascending image indices (`gt_image`, `proposal_image`,
/// `roi_image`), for a batch of `images`.
fn image_ranges(op: &'static str, what: &str, image_of: &[i64], images: usize) -> Result<Vec<Range<usize>>> {
    if let Some(i) = image_of.iter().position(|&i| !(0..images as i64).contains(&i)) {
        return invalid(op, format!("{what} row {i} is of image {} in a batch of {images}", image_of[i]));
    }
    if let Some(i) = image_of.windows(2).position(|w| w[0] > w[1]) {
        return invalid(op, format!("{what} rows are not in image order (row {})", i + 1));
    }
    Ok((0..images as i64)
        .map(|image| image_of.partition_point(|&i| i < image)..image_of.partition_point(|&i| i <= image))
        .collect())
}

/// A tensor of exactly `shape`.
fn expect_shape(op: &'static str, what: &str, t: &TensorF32, shape: &[usize]) -> Result<()> {
    t.check_len(op)?;
    if t.shape != shape {
        return shape_err(op, format!("{what} of shape {:?}, expected {shape:?}", t.shape));
    }
    Ok(())
}

/// Settings of [`match_anchors`] (the RPN's `Matcher` and box coder).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnchorMatchParams {
    /// Anchors with a best IoU `>=` this are foreground (0.7).
    pub fg_iou: f64,
    /// Anchors with a best IoU `<` this are background (0.3).
    pub bg_iou: f64,
    pub allow_low_quality_matches: bool,
    /// Box coder weights (1, 1, 1, 1).
    pub weights: [f32; 4],
}

impl AnchorMatchParams {
    /// torchvision's RPN values.
    pub const TORCHVISION: AnchorMatchParams =
        AnchorMatchParams { fg_iou: 0.7, bg_iou: 0.3, allow_low_quality_matches: true, weights: [1.0; 4] };
}

/// What [`match_anchors`] assigns to each anchor of each image.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorTargets {
    /// `[N, A]`: 1 foreground, 0 background, −1 between the thresholds.
    pub labels: TensorF32,
    /// `[N, A, 4]`: each anchor's matched box encoded against it (background anchors against
    /// the image's first box, as torchvision clamps their match to 0; all zero in an image
    /// without ground truth, where torchvision encodes a zero box).
    pub regression_targets: TensorF32,
}

/// The RPN's targets: every anchor (`[A, 4]`, the same for every image) matched to the
/// ground-truth boxes of each image (`gt_boxes` `[G, 4]`, `gt_image` `[G]` ascending) by
/// torchvision's `Matcher` over float32 IoUs, labelled and encoded. An image without ground
/// truth is all background. `image_sizes` gives the batch size `N`.
pub fn match_anchors(
    anchors: &TensorF32,
    gt_boxes: &TensorF32,
    gt_image: &[i64],
    image_sizes: &[[usize; 2]],
    p: &AnchorMatchParams,
) -> Result<AnchorTargets> {
    const OP: &str = "match_anchors";
    let anchors = anchors.boxes(OP)?;
    let gt = gt_boxes.boxes(OP)?;
    if gt.len() != gt_image.len() {
        return shape_err(OP, format!("{} ground-truth boxes but {} image indices", gt.len(), gt_image.len()));
    }
    let images = image_ranges(OP, "ground-truth", gt_image, image_sizes.len())?;
    let matcher = Matcher::new(OP, p.fg_iou, p.bg_iou, p.allow_low_quality_matches)?;
    let coder = BoxCoder::new(p.weights);
    let a = anchors.len();
    let mut labels = vec![0.0f32; images.len() * a];
    let mut targets = vec![0.0f32; images.len() * a * 4];
    for (range, (labels, targets)) in
        images.iter().zip(labels.chunks_mut(a.max(1)).zip(targets.chunks_mut(4 * a.max(1))))
    {
        let gt = &gt[range.clone()];
        if gt.is_empty() {
            continue;
        }
        let matches = matcher.match_boxes(OP, gt, anchors)?;
        for (label, &m) in labels.iter_mut().zip(&matches) {
            *label = match m {
                BELOW_LOW_THRESHOLD => 0.0,
                BETWEEN_THRESHOLDS => -1.0,
                _ => 1.0,
            };
        }
        let matched: Vec<[f32; 4]> = matches.iter().map(|&m| gt[m.max(0) as usize]).collect();
        targets.copy_from_slice(coder.encode(&matched, anchors)?.as_flattened());
    }
    Ok(AnchorTargets {
        labels: TensorF32::new(vec![images.len(), a], labels)?,
        regression_targets: TensorF32::new(vec![images.len(), a, 4], targets)?,
    })
}

/// The balanced sampler over `[N, K]` candidates per image: labels `>= 1` are positive, 0
/// negative, anything else ignored; the keys `[N, K]` decide (smallest first). Returns the
/// masks `(positive, sampled)` `[N, K]` of 0 and 1, `sampled` holding positives and negatives.
pub fn balanced_sample(labels: &TensorF32, keys: &TensorF32, sampler: &Sampler) -> Result<(TensorF32, TensorF32)> {
    const OP: &str = "balanced_sample";
    let [_, k] = match labels.shape[..] {
        [n, k] => [n, k],
        _ => return shape_err(OP, format!("labels of shape {:?}, expected [N, K]", labels.shape)),
    };
    labels.check_len(OP)?;
    expect_shape(OP, "keys", keys, &labels.shape)?;
    let mut positive = vec![0.0f32; labels.data.len()];
    let mut sampled = vec![0.0f32; labels.data.len()];
    for (((labels, keys), positive), sampled) in labels
        .data
        .chunks(k.max(1))
        .zip(keys.data.chunks(k.max(1)))
        .zip(positive.chunks_mut(k.max(1)))
        .zip(sampled.chunks_mut(k.max(1)))
    {
        let classes: Vec<Class> = labels.iter().map(|&l| class_of(l >= 1.0, l == 0.0)).collect();
        let sample = sampler.sample(OP, &classes, keys)?;
        for i in 0..classes.len() {
            positive[i] = f32::from(u8::from(sample.positive[i]));
            sampled[i] = f32::from(u8::from(sample.positive[i] || sample.negative[i]));
        }
    }
    Ok((TensorF32::new(labels.shape.clone(), positive)?, TensorF32::new(labels.shape.clone(), sampled)?))
}

fn class_of(positive: bool, negative: bool) -> Class {
    match (positive, negative) {
        (true, _) => Class::Positive,
        (false, true) => Class::Negative,
        _ => Class::Ignored,
    }
}

/// Settings of [`sample_rois`] (the RoI heads' `Matcher`, sampler and box coder).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiSamplingParams {
    /// 512 per image at 0.25 in torchvision.
    pub sampler: Sampler,
    pub fg_iou: f64,
    pub bg_iou: f64,
    /// Box coder weights (10, 10, 5, 5).
    pub weights: [f32; 4],
}

impl RoiSamplingParams {
    /// torchvision's Mask R-CNN values.
    pub const TORCHVISION: RoiSamplingParams = RoiSamplingParams {
        sampler: Sampler { batch_size_per_image: 512, positive_fraction: 0.25 },
        fg_iou: 0.5,
        bg_iou: 0.5,
        weights: [10.0, 10.0, 5.0, 5.0],
    };
}

/// The RoIs [`sample_rois`] keeps, image by image, each image's in candidate order.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledRois {
    /// `[R, 4]`.
    pub rois: TensorF32,
    /// `[R]`, ascending.
    pub roi_image: Vec<i64>,
    /// `[R]`: the matched box's label, 0 for background.
    pub labels: Vec<i64>,
    /// `[R, 4]`: the matched box encoded against the RoI (zero in an image without ground truth).
    pub regression_targets: TensorF32,
    /// `[R]`: the matched ground-truth row (of the whole batch); background rows take their
    /// image's first box (torchvision clamps to 0); −1 in an image without ground truth.
    pub matched_gt: Vec<i64>,
}

/// The RoI heads' `select_training_samples`: per image, the candidates are its proposals
/// followed by its ground-truth boxes (`add_gt_proposals`), matched without low-quality matches,
/// labelled (the box's label, 0 background, −1 ignored), sampled by `keys` (`[P + G]`: proposal
/// row `p` takes `keys[p]`, ground-truth row `g` takes `keys[P + g]`) and kept in candidate
/// order (`torch.where(positive | negative)`). `images` is the batch size.
#[allow(clippy::too_many_arguments)]
pub fn sample_rois(
    proposals: &TensorF32,
    proposal_image: &[i64],
    gt_boxes: &TensorF32,
    gt_labels: &[i64],
    gt_image: &[i64],
    keys: &[f32],
    images: usize,
    p: &RoiSamplingParams,
) -> Result<SampledRois> {
    const OP: &str = "sample_rois";
    let proposals = proposals.boxes(OP)?;
    let gt = gt_boxes.boxes(OP)?;
    if proposals.len() != proposal_image.len() || gt.len() != gt_image.len() || gt.len() != gt_labels.len() {
        return shape_err(
            OP,
            format!(
                "{} proposals with {} image indices, {} ground-truth boxes with {} image indices and {} labels",
                proposals.len(),
                proposal_image.len(),
                gt.len(),
                gt_image.len(),
                gt_labels.len()
            ),
        );
    }
    if keys.len() != proposals.len() + gt.len() {
        return shape_err(OP, format!("{} keys for {} proposals and {} boxes", keys.len(), proposals.len(), gt.len()));
    }
    if let Some(i) = gt_labels.iter().position(|&l| l < 1) {
        return invalid(OP, format!("ground-truth box {i} has label {}, expected ≥ 1", gt_labels[i]));
    }
    check_finite(OP, "proposal", proposals.as_flattened())?;
    let proposal_ranges = image_ranges(OP, "proposal", proposal_image, images)?;
    let gt_ranges = image_ranges(OP, "ground-truth", gt_image, images)?;
    let matcher = Matcher::new(OP, p.fg_iou, p.bg_iou, false)?;
    let coder = BoxCoder::new(p.weights);
    let mut out = SampledRois {
        rois: TensorF32::new(vec![0, 4], Vec::new())?,
        roi_image: Vec::new(),
        labels: Vec::new(),
        regression_targets: TensorF32::new(vec![0, 4], Vec::new())?,
        matched_gt: Vec::new(),
    };
    let (mut rois, mut targets) = (Vec::new(), Vec::new());
    for (image, (pr, gr)) in proposal_ranges.into_iter().zip(gt_ranges).enumerate() {
        let image_gt = &gt[gr.clone()];
        let candidates: Vec<[f32; 4]> = proposals[pr.clone()].iter().chain(image_gt).copied().collect();
        let candidate_keys: Vec<f32> =
            keys[pr].iter().chain(&keys[proposals.len() + gr.start..proposals.len() + gr.end]).copied().collect();
        let matches = matcher.match_boxes(OP, image_gt, &candidates)?;
        let labels: Vec<i64> = matches
            .iter()
            .map(|&m| match m {
                BELOW_LOW_THRESHOLD => 0,
                BETWEEN_THRESHOLDS => -1,
                _ => gt_labels[gr.start + m as usize],
            })
            .collect();
        let classes: Vec<Class> = labels.iter().map(|&l| class_of(l >= 1, l == 0)).collect();
        let sample = p.sampler.sample(OP, &classes, &candidate_keys)?;
        let kept: Vec<usize> = (0..candidates.len()).filter(|&i| sample.positive[i] || sample.negative[i]).collect();
        let kept_boxes: Vec<[f32; 4]> = kept.iter().map(|&i| candidates[i]).collect();
        if image_gt.is_empty() {
            targets.extend(std::iter::repeat_n([0.0f32; 4], kept.len()));
            out.matched_gt.extend(std::iter::repeat_n(-1, kept.len()));
        } else {
            let matched: Vec<usize> = kept.iter().map(|&i| matches[i].max(0) as usize).collect();
            let matched_boxes: Vec<[f32; 4]> = matched.iter().map(|&m| image_gt[m]).collect();
            targets.extend(coder.encode(&matched_boxes, &kept_boxes)?);
            out.matched_gt.extend(matched.iter().map(|&m| (gr.start + m) as i64));
        }
        out.labels.extend(kept.iter().map(|&i| labels[i]));
        out.roi_image.extend(std::iter::repeat_n(image as i64, kept.len()));
        rois.extend(kept_boxes);
    }
    out.rois = TensorF32::from_boxes(&rois);
    out.regression_targets = TensorF32::from_boxes(&targets);
    Ok(out)
}

/// The layout of the RPN head's outputs: the batch size and each level's `[a, h, w]`.
struct RpnLayout {
    images: usize,
    levels: Vec<[usize; 3]>,
}

impl RpnLayout {
    /// Checks that `objectness[l]` is `[N, a, h, w]` and `deltas[l]` `[N, 4a, h, w]`.
    fn of(op: &'static str, objectness: &[TensorF32], deltas: &[TensorF32]) -> Result<Self> {
        if objectness.len() != deltas.len() || objectness.is_empty() {
            return shape_err(op, format!("{} objectness maps and {} delta maps", objectness.len(), deltas.len()));
        }
        let mut levels = Vec::with_capacity(objectness.len());
        let mut images = None;
        for (o, d) in objectness.iter().zip(deltas) {
            let [n, a, h, w] = o.dims4(op, "objectness")?;
            let dd = d.dims4(op, "deltas")?;
            if dd != [n, 4 * a, h, w] || images.is_some_and(|i| i != n) {
                return shape_err(
                    op,
                    format!("objectness {:?} with deltas {dd:?}, expected [N, A, H, W] and [N, 4A, H, W]", o.shape),
                );
            }
            images = Some(n);
            levels.push([a, h, w]);
        }
        Ok(RpnLayout { images: images.unwrap_or(0), levels })
    }

    /// Anchors per image.
    fn anchors(&self) -> usize {
        self.levels.iter().map(|[a, h, w]| a * h * w).sum()
    }

    /// For each anchor in `concat_box_prediction_layers`' order (image, level, cell, anchor),
    /// where its logit is in its level's `[N, a, h, w]` map, with the level: the delta `j` is at
    /// `[N, a, 4, h, w]`'s `(image, anchor, j, cell)`.
    fn positions(&self) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::with_capacity(self.images * self.anchors());
        for image in 0..self.images {
            for (l, &[a, h, w]) in self.levels.iter().enumerate() {
                let hw = h * w;
                for cell in 0..hw {
                    for k in 0..a {
                        // (level, logit offset, delta offset of j = 0; j adds j·hw)
                        out.push((l, (image * a + k) * hw + cell, (image * a + k) * 4 * hw + cell));
                    }
                }
            }
        }
        out
    }
}

/// The RPN loss's inputs in flattened anchor order.
struct RpnFlat {
    layout: RpnLayout,
    positions: Vec<(usize, usize, usize)>,
    objectness: Vec<f32>,
    deltas: Vec<f32>,
    positive: Vec<bool>,
    sampled: Vec<bool>,
}

/// Checks and flattens [`rpn_loss`]'s inputs.
fn flatten_rpn(
    op: &'static str,
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    labels: &TensorF32,
    regression_targets: &TensorF32,
    positive: &TensorF32,
    sampled: &TensorF32,
) -> Result<RpnFlat> {
    let layout = RpnLayout::of(op, objectness, deltas)?;
    let (n, a) = (layout.images, layout.anchors());
    expect_shape(op, "labels", labels, &[n, a])?;
    expect_shape(op, "regression targets", regression_targets, &[n, a, 4])?;
    expect_shape(op, "positive", positive, &[n, a])?;
    expect_shape(op, "sampled", sampled, &[n, a])?;
    let positions = layout.positions();
    let flat_objectness = positions.iter().map(|&(l, o, _)| objectness[l].data[o]).collect();
    let flat_deltas = positions
        .iter()
        .flat_map(|&(l, _, d)| {
            let hw = layout.levels[l][1] * layout.levels[l][2];
            (0..4).map(move |j| deltas[l].data[d + j * hw])
        })
        .collect();
    Ok(RpnFlat {
        objectness: flat_objectness,
        deltas: flat_deltas,
        positive: positive.data.iter().map(|&v| v != 0.0).collect(),
        sampled: sampled.data.iter().map(|&v| v != 0.0).collect(),
        layout,
        positions,
    })
}

/// The RPN's losses `(loss_objectness, loss_rpn_box_reg)` from its head's outputs
/// (`objectness[l]` `[N, a, h, w]`, `deltas[l]` `[N, 4a, h, w]`, flattened as
/// `concat_box_prediction_layers`) and the targets of [`match_anchors`] and
/// [`balanced_sample`]: BCE with logits averaged over the sampled anchors; smooth-L1 (`beta`,
/// 1/9) of the positives summed and divided by the number sampled.
#[allow(clippy::too_many_arguments)]
pub fn rpn_loss(
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    labels: &TensorF32,
    regression_targets: &TensorF32,
    positive: &TensorF32,
    sampled: &TensorF32,
    beta: f64,
) -> Result<(f32, f32)> {
    let flat = flatten_rpn("rpn_loss", objectness, deltas, labels, regression_targets, positive, sampled)?;
    rpn_inputs(&flat, labels, regression_targets, beta).losses()
}

fn rpn_inputs<'a>(
    flat: &'a RpnFlat,
    labels: &'a TensorF32,
    regression_targets: &'a TensorF32,
    beta: f64,
) -> RpnLossInputs<'a, f32> {
    RpnLossInputs {
        objectness: &flat.objectness,
        deltas: &flat.deltas,
        labels: &labels.data,
        regression_targets: &regression_targets.data,
        positive: &flat.positive,
        sampled: &flat.sampled,
        beta,
    }
}

/// The gradients of `grad_objectness · loss_objectness + grad_box · loss_rpn_box_reg`
/// ([`rpn_loss`]) with respect to each level's objectness and deltas, shaped like them.
#[allow(clippy::too_many_arguments)]
pub fn rpn_loss_backward(
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    labels: &TensorF32,
    regression_targets: &TensorF32,
    positive: &TensorF32,
    sampled: &TensorF32,
    beta: f64,
    grad_objectness: f32,
    grad_box: f32,
) -> Result<(Vec<TensorF32>, Vec<TensorF32>)> {
    let flat = flatten_rpn("rpn_loss_backward", objectness, deltas, labels, regression_targets, positive, sampled)?;
    let (d_objectness, d_deltas) =
        rpn_inputs(&flat, labels, regression_targets, beta).backward(grad_objectness, grad_box)?;
    let mut g_objectness: Vec<TensorF32> =
        objectness.iter().map(|o| TensorF32 { shape: o.shape.clone(), data: vec![0.0; o.data.len()] }).collect();
    let mut g_deltas: Vec<TensorF32> =
        deltas.iter().map(|d| TensorF32 { shape: d.shape.clone(), data: vec![0.0; d.data.len()] }).collect();
    for (i, &(l, o, d)) in flat.positions.iter().enumerate() {
        let hw = flat.layout.levels[l][1] * flat.layout.levels[l][2];
        g_objectness[l].data[o] = d_objectness[i];
        for j in 0..4 {
            g_deltas[l].data[d + j * hw] = d_deltas[4 * i + j];
        }
    }
    Ok((g_objectness, g_deltas))
}

/// The box head's inputs checked for shape: `(class count, inputs)`.
fn fastrcnn_inputs<'a>(
    op: &'static str,
    class_logits: &'a TensorF32,
    box_regression: &'a TensorF32,
    labels: &'a [i64],
    regression_targets: &'a TensorF32,
    beta: f64,
) -> Result<FastRcnnLossInputs<'a, f32>> {
    let classes = match class_logits.shape[..] {
        [_, c] => c,
        _ => return shape_err(op, format!("class logits of shape {:?}, expected [R, C]", class_logits.shape)),
    };
    let r = labels.len();
    expect_shape(op, "class logits", class_logits, &[r, classes])?;
    expect_shape(op, "box regression", box_regression, &[r, 4 * classes])?;
    expect_shape(op, "regression targets", regression_targets, &[r, 4])?;
    Ok(FastRcnnLossInputs {
        class_logits: &class_logits.data,
        box_regression: &box_regression.data,
        labels,
        regression_targets: &regression_targets.data,
        classes,
        beta,
    })
}

/// `fastrcnn_loss`: `(loss_classifier, loss_box_reg)` of the box head's `[R, C]` logits and
/// `[R, 4C]` regression for the sampled RoIs' labels `[R]` and targets `[R, 4]`.
pub fn fastrcnn_loss(
    class_logits: &TensorF32,
    box_regression: &TensorF32,
    labels: &[i64],
    regression_targets: &TensorF32,
    beta: f64,
) -> Result<(f32, f32)> {
    fastrcnn_inputs("fastrcnn_loss", class_logits, box_regression, labels, regression_targets, beta)?.losses()
}

/// The gradients `([R, C], [R, 4C])` of `grad_classifier · loss_classifier + grad_box ·
/// loss_box_reg` ([`fastrcnn_loss`]).
pub fn fastrcnn_loss_backward(
    class_logits: &TensorF32,
    box_regression: &TensorF32,
    labels: &[i64],
    regression_targets: &TensorF32,
    beta: f64,
    grad_classifier: f32,
    grad_box: f32,
) -> Result<(TensorF32, TensorF32)> {
    let inputs =
        fastrcnn_inputs("fastrcnn_loss_backward", class_logits, box_regression, labels, regression_targets, beta)?;
    let (d_logits, d_boxes) = inputs.backward(grad_classifier, grad_box)?;
    Ok((TensorF32::new(class_logits.shape.clone(), d_logits)?, TensorF32::new(box_regression.shape.clone(), d_boxes)?))
}

/// The positive RoIs of [`mask_targets`] and their targets.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskTargets {
    /// `[Q, 4]`: the RoIs with a label > 0, in order.
    pub positive_rois: TensorF32,
    /// `[Q]`.
    pub positive_image: Vec<i64>,
    /// `[Q]`.
    pub positive_labels: Vec<i64>,
    /// `[Q, M, M]`.
    pub targets: TensorF32,
}

/// The mask head's training inputs: the positive rows of the sampled RoIs and, for each, its
/// matched ground-truth mask (`gt_masks` `[G, Hb, Wb]`, each in its image's resized frame,
/// padded) projected onto the RoI by `project_masks_on_boxes` (`size × size`), read within its
/// image's own size `image_sizes[roi_image]`.
#[allow(clippy::too_many_arguments)]
pub fn mask_targets(
    gt_masks: &[u8],
    gt_masks_shape: [usize; 3],
    image_sizes: &[[usize; 2]],
    rois: &TensorF32,
    roi_image: &[i64],
    labels: &[i64],
    matched_gt: &[i64],
    size: usize,
) -> Result<MaskTargets> {
    const OP: &str = "mask_targets";
    let rois = rois.boxes(OP)?;
    if [roi_image.len(), labels.len(), matched_gt.len()] != [rois.len(); 3] {
        return shape_err(
            OP,
            format!(
                "{} RoIs, {} image indices, {} labels, {} matches",
                rois.len(),
                roi_image.len(),
                labels.len(),
                matched_gt.len()
            ),
        );
    }
    if size == 0 {
        return invalid(OP, "mask size 0");
    }
    image_ranges(OP, "RoI", roi_image, image_sizes.len())?;
    let [g, hb, wb] = gt_masks_shape;
    let positive: Vec<usize> = (0..rois.len()).filter(|&k| labels[k] > 0).collect();
    // Each mask is valid within the size of the image of the RoIs matched to it.
    let mut mask_sizes: Vec<Option<[usize; 2]>> = vec![None; g];
    let mut matched = Vec::with_capacity(positive.len());
    for &k in &positive {
        let image_size = image_sizes[roi_image[k] as usize];
        let m = match usize::try_from(matched_gt[k]) {
            Ok(m) if m < g => m,
            _ => return invalid(OP, format!("positive RoI {k} matched to mask {} of {g}", matched_gt[k])),
        };
        if mask_sizes[m].is_some_and(|s| s != image_size) {
            return invalid(OP, format!("mask {m} is matched to RoIs of images of different sizes"));
        }
        mask_sizes[m] = Some(image_size);
        matched.push(m);
    }
    let sizes: Vec<[usize; 2]> = mask_sizes.iter().map(|s| s.unwrap_or([hb, wb])).collect();
    let masks = GtMasks { data: gt_masks, shape: gt_masks_shape, sizes: &sizes };
    let positive_rois: Vec<[f32; 4]> = positive.iter().map(|&k| rois[k]).collect();
    let targets = project_masks_on_boxes(&masks, &positive_rois, &matched, size)?;
    Ok(MaskTargets {
        targets: TensorF32::new(vec![positive.len(), size, size], targets)?,
        positive_rois: TensorF32::from_boxes(&positive_rois),
        positive_image: positive.iter().map(|&k| roi_image[k]).collect(),
        positive_labels: positive.iter().map(|&k| labels[k]).collect(),
    })
}

/// The mask head's inputs checked for shape.
fn mask_inputs<'a>(
    op: &'static str,
    mask_logits: &'a TensorF32,
    labels: &'a [i64],
    targets: &'a TensorF32,
) -> Result<MaskLossInputs<'a, f32>> {
    let shape @ [q, _, mh, mw] = mask_logits.dims4(op, "mask logits")?;
    expect_shape(op, "mask targets", targets, &[q, mh, mw])?;
    Ok(MaskLossInputs { mask_logits: &mask_logits.data, shape, labels, targets: &targets.data })
}

/// `maskrcnn_loss`: BCE with logits of each positive RoI's label channel of `[Q, C, M, M]`
/// against its `[Q, M, M]` target, averaged (0 without positives).
pub fn maskrcnn_loss(mask_logits: &TensorF32, labels: &[i64], targets: &TensorF32) -> Result<f32> {
    mask_inputs("maskrcnn_loss", mask_logits, labels, targets)?.loss()
}

/// The gradient `[Q, C, M, M]` of `grad · loss_mask` ([`maskrcnn_loss`]).
pub fn maskrcnn_loss_backward(
    mask_logits: &TensorF32,
    labels: &[i64],
    targets: &TensorF32,
    grad: f32,
) -> Result<TensorF32> {
    let d = mask_inputs("maskrcnn_loss_backward", mask_logits, labels, targets)?.backward(grad)?;
    TensorF32::new(mask_logits.shape.clone(), d)
}

/// The gradient `[N, C, H, W]` (`feature_shape`) of `roi_align` of `rois` (`[K, 5]`, batch
/// index first) from the gradient `[K, C, oh, ow]` of its output.
pub fn roi_align_backward(
    grad: &TensorF32,
    rois: &TensorF32,
    feature_shape: [usize; 4],
    p: &RoiAlignParams,
) -> Result<TensorF32> {
    const OP: &str = "roi_align_backward";
    let rois_list = match rois.shape[..] {
        [_, 5] => rows::<5>(OP, &rois.data)?,
        _ => return shape_err(OP, format!("RoIs of shape {:?}, expected [K, 5]", rois.shape)),
    };
    let [oh, ow] = p.output_size;
    expect_shape(OP, "gradient", grad, &[rois_list.len(), feature_shape[1], oh, ow])?;
    TensorF32::new(feature_shape.to_vec(), roi_align::roi_align_backward(&grad.data, rois_list, feature_shape, p)?)
}

/// The boxes of each image of a batch (`roi_image` ascending).
fn boxes_per_image<'a>(
    op: &'static str,
    boxes: &'a [[f32; 4]],
    roi_image: &[i64],
    images: usize,
) -> Result<Vec<&'a [[f32; 4]]>> {
    if boxes.len() != roi_image.len() {
        return shape_err(op, format!("{} boxes but {} image indices", boxes.len(), roi_image.len()));
    }
    Ok(image_ranges(op, "box", roi_image, images)?.into_iter().map(|r| &boxes[r]).collect())
}

/// `MultiScaleRoIAlign` over a batch: `[R, C, oh, ow]` of the boxes `[R, 4]` of every image
/// (`roi_image` ascending) from the pyramid's `[N, C, H, W]` levels (finest first), scales
/// inferred from the largest of `image_sizes`.
pub fn multiscale_roi_align_batched(
    features: &[TensorF32],
    boxes: &TensorF32,
    roi_image: &[i64],
    image_sizes: &[[usize; 2]],
    p: &MultiScaleParams,
) -> Result<TensorF32> {
    const OP: &str = "multiscale_roi_align_batched";
    let boxes = boxes.boxes(OP)?;
    let maps =
        features.iter().map(|f| FeatureMap::new(&f.data, f.dims4(OP, "feature map")?)).collect::<Result<Vec<_>>>()?;
    let per_image = boxes_per_image(OP, boxes, roi_image, image_sizes.len())?;
    let pooled = multiscale::multiscale_roi_align(&maps, &per_image, image_sizes, p)?;
    let channels = maps.first().map_or(0, |m| m.c);
    TensorF32::new(vec![boxes.len(), channels, p.output_size[0], p.output_size[1]], pooled.values)
}

/// The gradient of [`multiscale_roi_align_batched`] with respect to each level (of
/// `feature_shapes`, finest first) from the gradient `[R, C, oh, ow]` of its output.
pub fn multiscale_roi_align_backward(
    grad: &TensorF32,
    feature_shapes: &[[usize; 4]],
    boxes: &TensorF32,
    roi_image: &[i64],
    image_sizes: &[[usize; 2]],
    p: &MultiScaleParams,
) -> Result<Vec<TensorF32>> {
    const OP: &str = "multiscale_roi_align_backward";
    let boxes = boxes.boxes(OP)?;
    let channels = feature_shapes.first().map_or(0, |s| s[1]);
    expect_shape(OP, "gradient", grad, &[boxes.len(), channels, p.output_size[0], p.output_size[1]])?;
    let per_image = boxes_per_image(OP, boxes, roi_image, image_sizes.len())?;
    let grads = multiscale::multiscale_roi_align_backward(&grad.data, feature_shapes, &per_image, image_sizes, p)?;
    grads.into_iter().zip(feature_shapes).map(|(g, s)| TensorF32::new(s.to_vec(), g)).collect()
}

/// The RPN's proposals for every image of a batch (`filter_proposals`, as
/// [`crate::detection::rpn_proposals`] for one image, with training's top-n in `p`):
/// `objectness[l]` `[N, a, h, w]`, `deltas[l]` `[N, 4a, h, w]`, `anchors` `[A, 4]` shared, each
/// image's proposals clipped to its size. Returns the proposals `[P, 4]` and their images `[P]`.
pub fn rpn_proposals_batched(
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    anchors: &TensorF32,
    image_sizes: &[[usize; 2]],
    p: &RpnParams,
) -> Result<(TensorF32, Vec<i64>)> {
    const OP: &str = "rpn_proposals_batched";
    let anchors = anchors.boxes(OP)?;
    let batch = image_sizes.len();
    let per_image = (0..batch)
        .into_par_iter()
        .map(|image| proposals_of_image(OP, objectness, deltas, anchors, [image, batch], image_sizes[image], p))
        .collect::<Result<Vec<_>>>()?;
    let image_of = per_image.iter().enumerate().flat_map(|(i, b)| std::iter::repeat_n(i as i64, b.len())).collect();
    Ok((TensorF32::from_boxes(&per_image.concat()), image_of))
}
