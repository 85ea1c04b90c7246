//! The training built-ins ([`crate::training`]) behind the C interface, with the conventions of
//! [`super::detection`]: `_mlir_ciface_mrc_<op>(results*, params*, inputs...)`, attributes as
//! `f64` words in the layout of the operator's [`Params`] implementation, lists of feature maps
//! packed (elements concatenated, shapes `i64[L, 4]`) in arguments and in results, scalars as
//! rank-0 tensors, image sizes as `i64[N, 2]`. A failure records the error and yields empty
//! tensors.

use super::detection::{call, owned, tensor, text, unpack, Params, Two, Words};
use super::MemRef;
use crate::detection::{RpnParams, TensorF32};
use crate::ops::multiscale::MultiScaleParams;
use crate::ops::roi_align::RoiAlignParams;
use crate::ops::sampler::{uniform_keys, Sampler};
use crate::training::{self as tr, AnchorMatchParams, RoiSamplingParams};

/// Results of four and five tensors, as MLIR packs them.
#[repr(C)]
pub struct Four<A, B, C, D>(pub A, pub B, pub C, pub D);
#[repr(C)]
pub struct Five<A, B, C, D, E>(pub A, pub B, pub C, pub D, pub E);

/// `sample_rois`' results: RoIs, images, labels, regression targets, matched ground truth.
pub type SampledRoiResults = Five<MemRef<f32, 2>, MemRef<i64, 1>, MemRef<i64, 1>, MemRef<f32, 2>, MemRef<i64, 1>>;

impl Params for AnchorMatchParams {
    fn encode(&self) -> Vec<f64> {
        let mut words = vec![self.fg_iou, self.bg_iou, self.allow_low_quality_matches as u8 as f64];
        words.extend(self.weights.map(f64::from));
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [fg_iou, bg_iou, allow] = w.take()?;
        let weights = w.take::<4>()?.map(|v| v as f32);
        w.end(AnchorMatchParams { fg_iou, bg_iou, allow_low_quality_matches: allow != 0.0, weights })
    }
}

impl Params for Sampler {
    fn encode(&self) -> Vec<f64> {
        vec![self.batch_size_per_image as f64, self.positive_fraction]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [batch, fraction] = w.take()?;
        w.end(Sampler { batch_size_per_image: batch as usize, positive_fraction: fraction })
    }
}

impl Params for RoiSamplingParams {
    fn encode(&self) -> Vec<f64> {
        let mut words = self.sampler.encode();
        words.extend([self.fg_iou, self.bg_iou]);
        words.extend(self.weights.map(f64::from));
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let sampler = Sampler::decode(&w.take::<2>()?)?;
        let [fg_iou, bg_iou] = w.take()?;
        let weights = w.take::<4>()?.map(|v| v as f32);
        w.end(RoiSamplingParams { sampler, fg_iou, bg_iou, weights })
    }
}

/// The attributes of `uniform_keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyParams {
    /// Which sequence of the seed (one per sampler); below 2⁵³ to cross as a word exactly.
    pub stream: u64,
}

impl Params for KeyParams {
    fn encode(&self) -> Vec<f64> {
        vec![self.stream as f64]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let stream = w.next()?;
        w.end(KeyParams { stream: stream as u64 })
    }
}

/// The attributes of the losses with a smooth-L1 term (`rpn_loss`, `fastrcnn_loss`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothL1Params {
    /// 1/9 in torchvision.
    pub beta: f64,
}

impl Params for SmoothL1Params {
    fn encode(&self) -> Vec<f64> {
        vec![self.beta]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let beta = w.next()?;
        w.end(SmoothL1Params { beta })
    }
}

/// The attributes of `mask_targets`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskTargetParams {
    /// The targets' side (28).
    pub size: usize,
}

impl Params for MaskTargetParams {
    fn encode(&self) -> Vec<f64> {
        vec![self.size as f64]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let size = w.next()?;
        w.end(MaskTargetParams { size: size as usize })
    }
}

/// `[N, 2]` image sizes.
unsafe fn image_sizes(m: *const MemRef<i64, 2>) -> Result<Vec<[usize; 2]>, String> {
    (*m).elements()
        .chunks(2)
        .map(|s| match s {
            &[h, w] if h >= 0 && w >= 0 => Ok([h as usize, w as usize]),
            other => Err(format!("image size {other:?}")),
        })
        .collect()
}

unsafe fn i64s<const R: usize>(m: *const MemRef<i64, R>) -> Vec<i64> {
    (*m).elements().into_owned()
}

unsafe fn scalar(m: *const MemRef<f32, 0>) -> f32 {
    (*m).elements().first().copied().unwrap_or(0.0)
}

fn f32_scalar(v: f32) -> MemRef<f32, 0> {
    MemRef::owned(&[v], [])
}

fn i64_list(v: &[i64]) -> MemRef<i64, 1> {
    MemRef::owned(v, [v.len()])
}

/// Tensors of rank 4 as a packed list.
fn packed(tensors: &[TensorF32]) -> Two<MemRef<f32, 1>, MemRef<i64, 2>> {
    let data: Vec<f32> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
    let shapes: Vec<i64> = tensors.iter().flat_map(|t| t.shape.iter().map(|&d| d as i64)).collect();
    Two(MemRef::owned(&data, [data.len()]), MemRef::owned(&shapes, [tensors.len(), 4]))
}

fn empty_packed() -> Two<MemRef<f32, 1>, MemRef<i64, 2>> {
    Two(MemRef::allocate([0]), MemRef::allocate([0, 4]))
}

/// `match_anchors`: labels [N, A] and regression targets [N, A, 4] of the anchors [A, 4] for
/// the ground truth [G, 4] of images `gt_image` [G], in a batch of sizes [N, 2].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_match_anchors(
    out: *mut Two<MemRef<f32, 2>, MemRef<f32, 3>>,
    params: *const MemRef<f64, 1>,
    anchors: *const MemRef<f32, 2>,
    gt_boxes: *const MemRef<f32, 2>,
    gt_image: *const MemRef<i64, 1>,
    sizes: *const MemRef<i64, 2>,
) {
    let empty = || Two(MemRef::allocate([0, 0]), MemRef::allocate([0, 0, 4]));
    *out = call("match_anchors", params, empty, |p: AnchorMatchParams| {
        let t = tr::match_anchors(&tensor(anchors), &tensor(gt_boxes), &i64s(gt_image), &image_sizes(sizes)?, &p)
            .map_err(text)?;
        Ok(Two(owned(&t.labels), owned(&t.regression_targets)))
    });
}

/// `balanced_sample`: the masks (positive, sampled) [N, K] from labels and keys [N, K].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_balanced_sample(
    out: *mut Two<MemRef<f32, 2>, MemRef<f32, 2>>,
    params: *const MemRef<f64, 1>,
    labels: *const MemRef<f32, 2>,
    keys: *const MemRef<f32, 2>,
) {
    let empty = || Two(MemRef::allocate([0, 0]), MemRef::allocate([0, 0]));
    *out = call("balanced_sample", params, empty, |p: Sampler| {
        let (positive, sampled) = tr::balanced_sample(&tensor(labels), &tensor(keys), &p).map_err(text)?;
        Ok(Two(owned(&positive), owned(&sampled)))
    });
}

/// `uniform_keys`: `count` [1] keys in [0, 1) from `seed` [1].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_uniform_keys(
    out: *mut MemRef<f32, 1>,
    params: *const MemRef<f64, 1>,
    seed: *const MemRef<i64, 1>,
    count: *const MemRef<i64, 1>,
) {
    *out = call(
        "uniform_keys",
        params,
        || MemRef::allocate([0]),
        |p: KeyParams| {
            let (seed, count) = match (&(*seed).elements()[..], &(*count).elements()[..]) {
                (&[seed], &[count]) if count >= 0 => (seed, count as usize),
                (s, c) => return Err(format!("seed {s:?} and count {c:?}")),
            };
            let keys = uniform_keys(seed, p.stream, count);
            Ok(MemRef::owned(&keys, [count]))
        },
    );
}

/// `sample_rois`: RoIs [R, 4], their images, labels, regression targets [R, 4] and matched
/// ground-truth rows, from the proposals [P, 4] of images `proposal_image`, the ground truth
/// and the keys [P + G].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn _mlir_ciface_mrc_sample_rois(
    out: *mut SampledRoiResults,
    params: *const MemRef<f64, 1>,
    proposals: *const MemRef<f32, 2>,
    proposal_image: *const MemRef<i64, 1>,
    gt_boxes: *const MemRef<f32, 2>,
    gt_labels: *const MemRef<i64, 1>,
    gt_image: *const MemRef<i64, 1>,
    keys: *const MemRef<f32, 1>,
    sizes: *const MemRef<i64, 2>,
) {
    let empty = || {
        Five(
            MemRef::allocate([0, 4]),
            MemRef::allocate([0]),
            MemRef::allocate([0]),
            MemRef::allocate([0, 4]),
            MemRef::allocate([0]),
        )
    };
    *out = call("sample_rois", params, empty, |p: RoiSamplingParams| {
        let s = tr::sample_rois(
            &tensor(proposals),
            &i64s(proposal_image),
            &tensor(gt_boxes),
            &i64s(gt_labels),
            &i64s(gt_image),
            &(*keys).elements(),
            image_sizes(sizes)?.len(),
            &p,
        )
        .map_err(text)?;
        Ok(Five(
            owned(&s.rois),
            i64_list(&s.roi_image),
            i64_list(&s.labels),
            owned(&s.regression_targets),
            i64_list(&s.matched_gt),
        ))
    });
}

/// `rpn_loss`: (loss_objectness, loss_rpn_box_reg) from the packed objectness [N, a, h, w] and
/// deltas [N, 4a, h, w] per level, labels [N, A], targets [N, A, 4] and the masks [N, A].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn _mlir_ciface_mrc_rpn_loss(
    out: *mut Two<MemRef<f32, 0>, MemRef<f32, 0>>,
    params: *const MemRef<f64, 1>,
    objectness: *const MemRef<f32, 1>,
    objectness_shapes: *const MemRef<i64, 2>,
    deltas: *const MemRef<f32, 1>,
    deltas_shapes: *const MemRef<i64, 2>,
    labels: *const MemRef<f32, 2>,
    regression_targets: *const MemRef<f32, 3>,
    positive: *const MemRef<f32, 2>,
    sampled: *const MemRef<f32, 2>,
) {
    let empty = || Two(f32_scalar(0.0), f32_scalar(0.0));
    *out = call("rpn_loss", params, empty, |p: SmoothL1Params| {
        let (objectness, deltas) = (unpack(objectness, objectness_shapes)?, unpack(deltas, deltas_shapes)?);
        let (lo, lb) = tr::rpn_loss(
            &objectness,
            &deltas,
            &tensor(labels),
            &tensor(regression_targets),
            &tensor(positive),
            &tensor(sampled),
            p.beta,
        )
        .map_err(text)?;
        Ok(Two(f32_scalar(lo), f32_scalar(lb)))
    });
}

/// `rpn_loss_backward`: the gradients of the objectness and of the deltas, packed like them,
/// from `rpn_loss`'s inputs and the gradients [] of its two losses.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn _mlir_ciface_mrc_rpn_loss_backward(
    out: *mut Four<MemRef<f32, 1>, MemRef<i64, 2>, MemRef<f32, 1>, MemRef<i64, 2>>,
    params: *const MemRef<f64, 1>,
    objectness: *const MemRef<f32, 1>,
    objectness_shapes: *const MemRef<i64, 2>,
    deltas: *const MemRef<f32, 1>,
    deltas_shapes: *const MemRef<i64, 2>,
    labels: *const MemRef<f32, 2>,
    regression_targets: *const MemRef<f32, 3>,
    positive: *const MemRef<f32, 2>,
    sampled: *const MemRef<f32, 2>,
    grad_objectness: *const MemRef<f32, 0>,
    grad_box: *const MemRef<f32, 0>,
) {
    let empty = || {
        let (Two(a, b), Two(c, d)) = (empty_packed(), empty_packed());
        Four(a, b, c, d)
    };
    *out = call("rpn_loss_backward", params, empty, |p: SmoothL1Params| {
        let (objectness, deltas) = (unpack(objectness, objectness_shapes)?, unpack(deltas, deltas_shapes)?);
        let (g_objectness, g_deltas) = tr::rpn_loss_backward(
            &objectness,
            &deltas,
            &tensor(labels),
            &tensor(regression_targets),
            &tensor(positive),
            &tensor(sampled),
            p.beta,
            scalar(grad_objectness),
            scalar(grad_box),
        )
        .map_err(text)?;
        let (Two(a, b), Two(c, d)) = (packed(&g_objectness), packed(&g_deltas));
        Ok(Four(a, b, c, d))
    });
}

/// `fastrcnn_loss`: (loss_classifier, loss_box_reg) from class logits [R, C], box regression
/// [R, 4C], labels [R] and regression targets [R, 4].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_fastrcnn_loss(
    out: *mut Two<MemRef<f32, 0>, MemRef<f32, 0>>,
    params: *const MemRef<f64, 1>,
    class_logits: *const MemRef<f32, 2>,
    box_regression: *const MemRef<f32, 2>,
    labels: *const MemRef<i64, 1>,
    regression_targets: *const MemRef<f32, 2>,
) {
    let empty = || Two(f32_scalar(0.0), f32_scalar(0.0));
    *out = call("fastrcnn_loss", params, empty, |p: SmoothL1Params| {
        let (lc, lb) = tr::fastrcnn_loss(
            &tensor(class_logits),
            &tensor(box_regression),
            &i64s(labels),
            &tensor(regression_targets),
            p.beta,
        )
        .map_err(text)?;
        Ok(Two(f32_scalar(lc), f32_scalar(lb)))
    });
}

/// `fastrcnn_loss_backward`: the gradients of the class logits [R, C] and of the box regression
/// [R, 4C] from `fastrcnn_loss`'s inputs and the gradients [] of its two losses.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn _mlir_ciface_mrc_fastrcnn_loss_backward(
    out: *mut Two<MemRef<f32, 2>, MemRef<f32, 2>>,
    params: *const MemRef<f64, 1>,
    class_logits: *const MemRef<f32, 2>,
    box_regression: *const MemRef<f32, 2>,
    labels: *const MemRef<i64, 1>,
    regression_targets: *const MemRef<f32, 2>,
    grad_classifier: *const MemRef<f32, 0>,
    grad_box: *const MemRef<f32, 0>,
) {
    let empty = || Two(MemRef::allocate([0, 0]), MemRef::allocate([0, 0]));
    *out = call("fastrcnn_loss_backward", params, empty, |p: SmoothL1Params| {
        let (g_logits, g_boxes) = tr::fastrcnn_loss_backward(
            &tensor(class_logits),
            &tensor(box_regression),
            &i64s(labels),
            &tensor(regression_targets),
            p.beta,
            scalar(grad_classifier),
            scalar(grad_box),
        )
        .map_err(text)?;
        Ok(Two(owned(&g_logits), owned(&g_boxes)))
    });
}

/// `mask_targets`: the positive RoIs [Q, 4], their images, labels and targets [Q, M, M] from
/// the ground-truth masks [G, Hb, Wb], the batch's sizes [N, 2] and the sampled RoIs.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn _mlir_ciface_mrc_mask_targets(
    out: *mut Four<MemRef<f32, 2>, MemRef<i64, 1>, MemRef<i64, 1>, MemRef<f32, 3>>,
    params: *const MemRef<f64, 1>,
    gt_masks: *const MemRef<u8, 3>,
    sizes: *const MemRef<i64, 2>,
    rois: *const MemRef<f32, 2>,
    roi_image: *const MemRef<i64, 1>,
    labels: *const MemRef<i64, 1>,
    matched_gt: *const MemRef<i64, 1>,
) {
    let empty =
        || Four(MemRef::allocate([0, 4]), MemRef::allocate([0]), MemRef::allocate([0]), MemRef::allocate([0, 0, 0]));
    *out = call("mask_targets", params, empty, |p: MaskTargetParams| {
        let masks = &*gt_masks;
        let t = tr::mask_targets(
            &masks.elements(),
            masks.shape(),
            &image_sizes(sizes)?,
            &tensor(rois),
            &i64s(roi_image),
            &i64s(labels),
            &i64s(matched_gt),
            p.size,
        )
        .map_err(text)?;
        Ok(Four(owned(&t.positive_rois), i64_list(&t.positive_image), i64_list(&t.positive_labels), owned(&t.targets)))
    });
}

/// `maskrcnn_loss`: loss_mask [] from mask logits [Q, C, M, M], labels [Q] and targets [Q, M, M].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_maskrcnn_loss(
    out: *mut MemRef<f32, 0>,
    params: *const MemRef<f64, 1>,
    mask_logits: *const MemRef<f32, 4>,
    labels: *const MemRef<i64, 1>,
    targets: *const MemRef<f32, 3>,
) {
    *out = call(
        "maskrcnn_loss",
        params,
        || f32_scalar(0.0),
        |()| Ok(f32_scalar(tr::maskrcnn_loss(&tensor(mask_logits), &i64s(labels), &tensor(targets)).map_err(text)?)),
    );
}

/// `maskrcnn_loss_backward`: the gradient [Q, C, M, M] of the mask logits from
/// `maskrcnn_loss`'s inputs and the gradient [] of its loss.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_maskrcnn_loss_backward(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    mask_logits: *const MemRef<f32, 4>,
    labels: *const MemRef<i64, 1>,
    targets: *const MemRef<f32, 3>,
    grad: *const MemRef<f32, 0>,
) {
    *out = call(
        "maskrcnn_loss_backward",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |()| {
            let g = tr::maskrcnn_loss_backward(&tensor(mask_logits), &i64s(labels), &tensor(targets), scalar(grad))
                .map_err(text)?;
            Ok(owned(&g))
        },
    );
}

/// `roi_align_backward`: the gradient [N, C, H, W] (shape `feature_shape` [4]) of the feature
/// map from the gradient [K, C, oh, ow] of RoIAlign of `rois` [K, 5].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_roi_align_backward(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    grad: *const MemRef<f32, 4>,
    rois: *const MemRef<f32, 2>,
    feature_shape: *const MemRef<i64, 1>,
) {
    *out = call(
        "roi_align_backward",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |p: RoiAlignParams| {
            let shape: [usize; 4] = match (*feature_shape).elements()[..] {
                [n, c, h, w] if n >= 0 && c >= 0 && h >= 0 && w >= 0 => {
                    [n as usize, c as usize, h as usize, w as usize]
                }
                ref other => return Err(format!("feature shape {other:?}")),
            };
            Ok(owned(&tr::roi_align_backward(&tensor(grad), &tensor(rois), shape, &p).map_err(text)?))
        },
    );
}

/// `multiscale_roi_align_batched`: [R, C, oh, ow] of the boxes [R, 4] of images `roi_image`
/// from the packed pyramid levels [N, C, H, W], for a batch of sizes [N, 2].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_multiscale_roi_align_batched(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    features: *const MemRef<f32, 1>,
    feature_shapes: *const MemRef<i64, 2>,
    boxes: *const MemRef<f32, 2>,
    roi_image: *const MemRef<i64, 1>,
    sizes: *const MemRef<i64, 2>,
) {
    *out = call(
        "multiscale_roi_align_batched",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |p: MultiScaleParams| {
            let features = unpack(features, feature_shapes)?;
            let pooled =
                tr::multiscale_roi_align_batched(&features, &tensor(boxes), &i64s(roi_image), &image_sizes(sizes)?, &p)
                    .map_err(text)?;
            Ok(owned(&pooled))
        },
    );
}

/// `multiscale_roi_align_backward`: the gradient of each pyramid level (shapes
/// `feature_shapes` [L, 4]), packed, from the gradient [R, C, oh, ow] of
/// `multiscale_roi_align_batched`.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_multiscale_roi_align_backward(
    out: *mut Two<MemRef<f32, 1>, MemRef<i64, 2>>,
    params: *const MemRef<f64, 1>,
    grad: *const MemRef<f32, 4>,
    feature_shapes: *const MemRef<i64, 2>,
    boxes: *const MemRef<f32, 2>,
    roi_image: *const MemRef<i64, 1>,
    sizes: *const MemRef<i64, 2>,
) {
    *out = call("multiscale_roi_align_backward", params, empty_packed, |p: MultiScaleParams| {
        let shapes = (*feature_shapes)
            .elements()
            .chunks(4)
            .map(|s| match s {
                &[n, c, h, w] if n >= 0 && c >= 0 && h >= 0 && w >= 0 => {
                    Ok([n as usize, c as usize, h as usize, w as usize])
                }
                other => Err(format!("feature shape {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let grads = tr::multiscale_roi_align_backward(
            &tensor(grad),
            &shapes,
            &tensor(boxes),
            &i64s(roi_image),
            &image_sizes(sizes)?,
            &p,
        )
        .map_err(text)?;
        Ok(packed(&grads))
    });
}

/// `rpn_proposals_batched`: proposals [P, 4] and their images [P] from the packed objectness
/// and deltas of every image, the anchors and the batch's sizes [N, 2].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_rpn_proposals_batched(
    out: *mut Two<MemRef<f32, 2>, MemRef<i64, 1>>,
    params: *const MemRef<f64, 1>,
    objectness: *const MemRef<f32, 1>,
    objectness_shapes: *const MemRef<i64, 2>,
    deltas: *const MemRef<f32, 1>,
    deltas_shapes: *const MemRef<i64, 2>,
    anchors: *const MemRef<f32, 2>,
    sizes: *const MemRef<i64, 2>,
) {
    *out = call(
        "rpn_proposals_batched",
        params,
        || Two(MemRef::allocate([0, 4]), MemRef::allocate([0])),
        |p: RpnParams| {
            let (objectness, deltas) = (unpack(objectness, objectness_shapes)?, unpack(deltas, deltas_shapes)?);
            let (proposals, image_of) =
                tr::rpn_proposals_batched(&objectness, &deltas, &tensor(anchors), &image_sizes(sizes)?, &p)
                    .map_err(text)?;
            Ok(Two(owned(&proposals), i64_list(&image_of)))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the compiler encodes, the runtime decodes; a word more or less is refused.
    fn round_trip<P: Params + PartialEq + std::fmt::Debug>(params: P) {
        let words = params.encode();
        assert_eq!(P::decode(&words), Some(params));
        assert_eq!(P::decode(&words[..words.len() - 1]), None);
        assert_eq!(P::decode(&[&words[..], &[0.0]].concat()), None);
    }

    #[test]
    fn training_parameters_round_trip() {
        round_trip(AnchorMatchParams::TORCHVISION);
        round_trip(AnchorMatchParams { allow_low_quality_matches: false, ..AnchorMatchParams::TORCHVISION });
        round_trip(Sampler { batch_size_per_image: 256, positive_fraction: 0.5 });
        round_trip(RoiSamplingParams::TORCHVISION);
        round_trip(KeyParams { stream: 3 });
        round_trip(SmoothL1Params { beta: 1.0 / 9.0 });
        round_trip(MaskTargetParams { size: 28 });
    }

    fn words<P: Params>(p: &P) -> Vec<f64> {
        p.encode()
    }

    /// The entries hand generated code the operators' results, packed lists with their shapes,
    /// and record an error (with empty results) for bad input.
    #[test]
    fn entries_return_the_operators_results_and_record_errors() {
        let sampling = words(&RoiSamplingParams::TORCHVISION);
        let params = MemRef::borrowed(&sampling, [sampling.len()]);
        let proposals = [0.0f32, 0.0, 10.0, 10.0, 5.0, 5.0, 9.0, 9.0];
        let gt = [1.0f32, 1.0, 11.0, 11.0];
        let keys = [0.5f32, 0.1, 0.0];
        let sizes = [40i64, 40, 40, 40];
        let call_sample_rois = |proposal_image: &[i64]| {
            let mut out = std::mem::MaybeUninit::uninit();
            // SAFETY: descriptors of live buffers.
            unsafe {
                _mlir_ciface_mrc_sample_rois(
                    out.as_mut_ptr(),
                    &params,
                    &MemRef::borrowed(&proposals, [2, 4]),
                    &MemRef::borrowed(proposal_image, [2]),
                    &MemRef::borrowed(&gt, [1, 4]),
                    &MemRef::borrowed(&[3i64], [1]),
                    &MemRef::borrowed(&[1i64], [1]),
                    &MemRef::borrowed(&keys, [3]),
                    &MemRef::borrowed(&sizes, [2, 2]),
                );
                out.assume_init()
            }
        };
        let Five(rois, roi_image, labels, _, matched) = call_sample_rois(&[0, 0]);
        // SAFETY: results of the entry.
        unsafe {
            assert_eq!(super::super::take_error(), None);
            assert_eq!(rois.shape(), [3, 4]);
            assert_eq!(&roi_image.elements()[..], [0, 0, 1]);
            assert_eq!(&labels.elements()[..], [0, 0, 3]);
            assert_eq!(&matched.elements()[..], [-1, -1, 0]);
        }
        let Five(rois, ..) = call_sample_rois(&[1, 0]);
        assert_eq!(rois.shape(), [0, 4]);
        let error = super::super::take_error().unwrap_or_default();
        assert!(error.starts_with("sample_rois: ") && error.contains("image order"), "{error}");

        // The RPN gradient comes back packed like the head's outputs: two levels of one image.
        let beta = words(&SmoothL1Params { beta: 1.0 / 9.0 });
        let objectness = [0.5f32, -0.5, 1.0];
        let objectness_shapes = [1i64, 1, 1, 2, 1, 1, 1, 1];
        let deltas = [0.1f32; 12];
        let deltas_shapes = [1i64, 4, 1, 2, 1, 4, 1, 1];
        let labels = [1.0f32, 0.0, 0.0];
        let targets = [0.0f32; 12];
        let mut out = std::mem::MaybeUninit::uninit();
        // SAFETY: descriptors of live buffers.
        let Four(g_objectness, g_objectness_shapes, g_deltas, g_deltas_shapes) = unsafe {
            _mlir_ciface_mrc_rpn_loss_backward(
                out.as_mut_ptr(),
                &MemRef::borrowed(&beta, [1]),
                &MemRef::borrowed(&objectness, [3]),
                &MemRef::borrowed(&objectness_shapes, [2, 4]),
                &MemRef::borrowed(&deltas, [12]),
                &MemRef::borrowed(&deltas_shapes, [2, 4]),
                &MemRef::borrowed(&labels, [1, 3]),
                &MemRef::borrowed(&targets, [1, 3, 4]),
                &MemRef::borrowed(&[1.0f32, 0.0, 0.0], [1, 3]),
                &MemRef::borrowed(&[1.0f32, 1.0, 0.0], [1, 3]),
                &MemRef::borrowed(&[1.0f32], []),
                &MemRef::borrowed(&[1.0f32], []),
            );
            out.assume_init()
        };
        // SAFETY: results of the entry.
        unsafe {
            assert_eq!(super::super::take_error(), None);
            assert_eq!(&g_objectness_shapes.elements()[..], objectness_shapes);
            assert_eq!(&g_deltas_shapes.elements()[..], deltas_shapes);
            let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
            let g = g_objectness.elements();
            assert!(
                (g[0] - (sigmoid(0.5) - 1.0) / 2.0).abs() < 1e-7
                    && (g[1] - sigmoid(-0.5) / 2.0).abs() < 1e-7
                    && g[2] == 0.0
            );
            // Anchor 0's deltas (0.1 − 0 < beta): 0.1·9 / 2, at (anchor 0, j, cell 0) of [4, 1, 2].
            let g = g_deltas.elements();
            assert!([g[0], g[2], g[4], g[6]].iter().all(|&v| (v - 0.45).abs() < 1e-6), "{g:?}");
            assert!(g[1] == 0.0 && g[8..].iter().all(|&v| v == 0.0));
        }
    }
}
