//! The detection built-ins ([`crate::detection`]) behind the C interface. Each is
//! `_mlir_ciface_mrc_<op>(results*, params*, inputs...)`: `params` a `memref<?xf64>` holding the
//! operator's attributes in the layout of its [`Params`] implementation (the compiler encodes
//! with the same code), and a list of feature maps passed packed: their elements concatenated
//! (`memref<?xf32>`) and their shapes (`memref<Lx4xi64>`). Every call's time is recorded under
//! the operator's name ([`super::stages`]).

use super::{set_error, stages, MemRef};
use crate::detection::{self as rt, DetectionParams, RoiPoolParams, RpnParams, TensorF32};
use crate::ops::multiscale::{MultiScaleParams, MultiScalePoolParams};
use crate::ops::preprocess::Transform;
use crate::ops::roi_align::{PoolMode, RoiAlignParams};

/// Attributes of a built-in as the `f64` words generated code passes.
pub trait Params: Sized {
    fn encode(&self) -> Vec<f64>;
    /// `None` when the words do not have the layout [`Params::encode`] writes.
    fn decode(words: &[f64]) -> Option<Self>;
}

/// Reads words in order.
pub(super) struct Words<'a>(pub(super) &'a [f64]);

impl Words<'_> {
    pub(super) fn next(&mut self) -> Option<f64> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
    pub(super) fn take<const N: usize>(&mut self) -> Option<[f64; N]> {
        let mut out = [0.0; N];
        for slot in &mut out {
            *slot = self.next()?;
        }
        Some(out)
    }
    /// A length-prefixed list.
    pub(super) fn list(&mut self) -> Option<Vec<f64>> {
        let len = self.next()? as usize;
        (0..len).map(|_| self.next()).collect()
    }
    pub(super) fn end<T>(self, value: T) -> Option<T> {
        self.0.is_empty().then_some(value)
    }
}

impl Params for Transform {
    fn encode(&self) -> Vec<f64> {
        let mut words = vec![self.min_size as f64, self.max_size as f64];
        words.extend(self.mean.iter().chain(&self.std).map(|&v| v as f64));
        words.push(self.size_divisible as f64);
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [min_size, max_size] = w.take()?;
        let (mean, std) = (w.take::<3>()?.map(|v| v as f32), w.take::<3>()?.map(|v| v as f32));
        let size_divisible = w.next()?;
        w.end(Transform { min_size: min_size as usize, max_size: max_size as usize, mean, std, size_divisible: size_divisible as usize })
    }
}

/// The attributes of `anchors`.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorParams {
    /// Anchor sizes per level.
    pub sizes: Vec<Vec<i64>>,
    pub aspect_ratios: Vec<f64>,
}

impl Params for AnchorParams {
    fn encode(&self) -> Vec<f64> {
        let mut words = vec![self.sizes.len() as f64];
        for level in &self.sizes {
            words.push(level.len() as f64);
            words.extend(level.iter().map(|&s| s as f64));
        }
        words.push(self.aspect_ratios.len() as f64);
        words.extend(&self.aspect_ratios);
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let levels = w.next()? as usize;
        let sizes = (0..levels).map(|_| Some(w.list()?.iter().map(|&s| s as i64).collect())).collect::<Option<_>>()?;
        let aspect_ratios = w.list()?;
        w.end(AnchorParams { sizes, aspect_ratios })
    }
}

impl Params for RpnParams {
    fn encode(&self) -> Vec<f64> {
        let mut words = vec![self.pre_nms_top_n as f64, self.post_nms_top_n as f64, self.nms_thresh, self.min_size, self.score_thresh];
        words.extend(self.weights.map(f64::from));
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [pre, post, nms_thresh, min_size, score_thresh] = w.take()?;
        let weights = w.take::<4>()?.map(|v| v as f32);
        w.end(RpnParams { pre_nms_top_n: pre as usize, post_nms_top_n: post as usize, nms_thresh, min_size, score_thresh, weights })
    }
}

impl Params for RoiAlignParams {
    fn encode(&self) -> Vec<f64> {
        let max = match self.mode {
            PoolMode::Avg => 0.0,
            PoolMode::Max => 1.0,
        };
        vec![
            self.output_size[0] as f64,
            self.output_size[1] as f64,
            self.spatial_scale as f64,
            self.sampling_ratio as f64,
            self.aligned as u8 as f64,
            max,
        ]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [oh, ow, spatial_scale, sampling_ratio, aligned, max] = w.take()?;
        w.end(RoiAlignParams {
            output_size: [oh as usize, ow as usize],
            spatial_scale: spatial_scale as f32,
            sampling_ratio: sampling_ratio as i32,
            aligned: aligned != 0.0,
            mode: if max != 0.0 { PoolMode::Max } else { PoolMode::Avg },
        })
    }
}

impl Params for RoiPoolParams {
    fn encode(&self) -> Vec<f64> {
        vec![self.output_size[0] as f64, self.output_size[1] as f64, self.spatial_scale as f64]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [oh, ow, spatial_scale] = w.take()?;
        w.end(RoiPoolParams { output_size: [oh as usize, ow as usize], spatial_scale: spatial_scale as f32 })
    }
}

impl Params for MultiScaleParams {
    fn encode(&self) -> Vec<f64> {
        vec![
            self.output_size[0] as f64,
            self.output_size[1] as f64,
            self.sampling_ratio as f64,
            self.canonical_scale as f64,
            self.canonical_level as f64,
            self.aligned as u8 as f64,
        ]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [oh, ow, sampling_ratio, canonical_scale, canonical_level, aligned] = w.take()?;
        w.end(MultiScaleParams {
            canonical_scale: canonical_scale as f32,
            canonical_level: canonical_level as f32,
            aligned: aligned != 0.0,
            ..MultiScaleParams::new([oh as usize, ow as usize], sampling_ratio as i32)
        })
    }
}

impl Params for MultiScalePoolParams {
    fn encode(&self) -> Vec<f64> {
        vec![
            self.output_size[0] as f64,
            self.output_size[1] as f64,
            self.canonical_scale as f64,
            self.canonical_level as f64,
        ]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let [oh, ow, canonical_scale, canonical_level] = w.take()?;
        w.end(MultiScalePoolParams {
            canonical_scale: canonical_scale as f32,
            canonical_level: canonical_level as f32,
            ..MultiScalePoolParams::new([oh as usize, ow as usize])
        })
    }
}

impl Params for DetectionParams {
    fn encode(&self) -> Vec<f64> {
        let mut words: Vec<f64> = self.weights.map(f64::from).to_vec();
        words.extend([self.score_thresh, self.nms_thresh, self.detections_per_img as f64, self.min_size]);
        words
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let weights = w.take::<4>()?.map(|v| v as f32);
        let [score_thresh, nms_thresh, detections, min_size] = w.take()?;
        w.end(DetectionParams { weights, score_thresh, nms_thresh, detections_per_img: detections as usize, min_size })
    }
}

/// The attributes of `paste_masks`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PasteParams {
    pub padding: usize,
}

impl Params for PasteParams {
    fn encode(&self) -> Vec<f64> {
        vec![self.padding as f64]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        let mut w = Words(words);
        let padding = w.next()?;
        w.end(PasteParams { padding: padding as usize })
    }
}

/// For operators without attributes.
impl Params for () {
    fn encode(&self) -> Vec<f64> {
        vec![]
    }
    fn decode(words: &[f64]) -> Option<Self> {
        words.is_empty().then_some(())
    }
}

/// An f32 tensor of any rank as the built-ins take it.
pub(super) unsafe fn tensor<const R: usize>(m: *const MemRef<f32, R>) -> TensorF32 {
    let m = &*m;
    TensorF32 { shape: m.shape().to_vec(), data: m.elements().into_owned() }
}

/// The maps of a packed list.
pub(super) unsafe fn unpack(
    flat: *const MemRef<f32, 1>,
    shapes: *const MemRef<i64, 2>,
) -> Result<Vec<TensorF32>, String> {
    let (data, shapes) = ((*flat).elements(), &*shapes);
    let [levels, rank] = shapes.shape();
    let dims = shapes.elements();
    let mut start = 0;
    let mut maps = Vec::with_capacity(levels);
    for level in 0..levels {
        let shape: Vec<usize> = dims[level * rank..(level + 1) * rank].iter().map(|&d| d as usize).collect();
        let end = start + shape.iter().product::<usize>();
        let values = data.get(start..end).ok_or("a packed list shorter than its shapes")?;
        maps.push(TensorF32 { shape, data: values.to_vec() });
        start = end;
    }
    Ok(maps)
}

pub(super) unsafe fn image_size(m: *const MemRef<i64, 1>) -> Result<[usize; 2], String> {
    match (*m).elements()[..] {
        [h, w] if h >= 0 && w >= 0 => Ok([h as usize, w as usize]),
        ref other => Err(format!("image size {other:?}")),
    }
}

/// An owned result of rank `R` (the built-ins' ranks are fixed by their shape rules).
pub(super) fn owned<const R: usize>(t: &TensorF32) -> MemRef<f32, R> {
    let shape: [usize; R] = t.shape.as_slice().try_into().unwrap_or([0; R]);
    MemRef::owned(&t.data, shape)
}

/// Runs one built-in: decodes its parameters, times it, and on failure records the error and
/// yields `empty`.
pub(super) unsafe fn call<P: Params, T>(
    op: &'static str,
    params: *const MemRef<f64, 1>,
    empty: impl FnOnce() -> T,
    body: impl FnOnce(P) -> Result<T, String>,
) -> T {
    let _timer = stages::Timer::start(op);
    let result = match P::decode(&(*params).elements()) {
        Some(params) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(params)))
            .unwrap_or_else(|_| Err("panicked".to_owned())),
        None => Err("parameters of the wrong layout (program and runtime versions differ)".to_owned()),
    };
    result.unwrap_or_else(|message| {
        set_error(format!("{op}: {message}"));
        empty()
    })
}

/// Results of two and three tensors, as MLIR packs them.
#[repr(C)]
pub struct Two<A, B>(pub A, pub B);
#[repr(C)]
pub struct Three<A, B, C>(pub A, pub B, pub C);

pub(super) fn text(e: crate::Error) -> String {
    e.to_string()
}

/// `preprocess`: a `[H, W, 3]` u8 image to the normalized, resized, padded `[1, 3, Hb, Wb]`
/// batch and the resized size (i64[2]).
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_preprocess(
    out: *mut Two<MemRef<f32, 4>, MemRef<i64, 1>>,
    params: *const MemRef<f64, 1>,
    image: *const MemRef<u8, 3>,
) {
    *out = call("preprocess", params, || Two(MemRef::allocate([1, 3, 0, 0]), MemRef::owned(&[0, 0], [2])), |t: Transform| {
        let image = &*image;
        let [h, w, _] = image.shape();
        let (batch, [rh, rw]) = rt::preprocess(&image.elements(), [h, w], &t).map_err(text)?;
        Ok(Two(owned(&batch), MemRef::owned(&[rh as i64, rw as i64], [2])))
    });
}

/// `anchors` for feature maps of sizes `sizes` [L, 2] (height, width) on `batch` [1, 3, Hb, Wb].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_anchors(
    out: *mut MemRef<f32, 2>,
    params: *const MemRef<f64, 1>,
    sizes: *const MemRef<i64, 2>,
    batch: *const MemRef<f32, 4>,
) {
    *out = call("anchors", params, || MemRef::allocate([0, 4]), |p: AnchorParams| {
        let sizes: Vec<[usize; 2]> = (*sizes).elements().chunks(2).map(|s| [s[0] as usize, s[1] as usize]).collect();
        let [_, _, hb, wb] = (*batch).shape();
        Ok(owned(&rt::anchors(&sizes, [hb, wb], &p.sizes, &p.aspect_ratios).map_err(text)?))
    });
}

/// `rpn_proposals` from the packed per-level objectness and deltas.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_rpn_proposals(
    out: *mut MemRef<f32, 2>,
    params: *const MemRef<f64, 1>,
    objectness: *const MemRef<f32, 1>,
    objectness_shapes: *const MemRef<i64, 2>,
    deltas: *const MemRef<f32, 1>,
    deltas_shapes: *const MemRef<i64, 2>,
    anchors: *const MemRef<f32, 2>,
    size: *const MemRef<i64, 1>,
) {
    *out = call("rpn_proposals", params, || MemRef::allocate([0, 4]), |p: RpnParams| {
        let objectness = unpack(objectness, objectness_shapes)?;
        let deltas = unpack(deltas, deltas_shapes)?;
        Ok(owned(&rt::rpn_proposals(&objectness, &deltas, &tensor(anchors), image_size(size)?, &p).map_err(text)?))
    });
}

/// `multiscale_roi_align` over the packed pyramid levels.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_multiscale_roi_align(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    features: *const MemRef<f32, 1>,
    feature_shapes: *const MemRef<i64, 2>,
    boxes: *const MemRef<f32, 2>,
    size: *const MemRef<i64, 1>,
) {
    *out = call("multiscale_roi_align", params, || MemRef::allocate([0, 0, 0, 0]), |p: MultiScaleParams| {
        let features = unpack(features, feature_shapes)?;
        Ok(owned(&rt::multiscale_roi_align(&features, &tensor(boxes), image_size(size)?, &p).map_err(text)?))
    });
}

/// `roi_align` of `boxes` [K, 4] from one feature map [1, C, H, W].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_roi_align(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    features: *const MemRef<f32, 4>,
    boxes: *const MemRef<f32, 2>,
) {
    *out = call(
        "roi_align",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |p: RoiAlignParams| Ok(owned(&rt::roi_align(&tensor(features), &tensor(boxes), &p).map_err(text)?)),
    );
}

/// `roi_pool` of `boxes` [K, 4] from one feature map [1, C, H, W].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_roi_pool(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    features: *const MemRef<f32, 4>,
    boxes: *const MemRef<f32, 2>,
) {
    *out = call(
        "roi_pool",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |p: RoiPoolParams| Ok(owned(&rt::roi_pool(&tensor(features), &tensor(boxes), &p).map_err(text)?)),
    );
}

/// `multiscale_roi_pool` over the packed pyramid levels.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_multiscale_roi_pool(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    features: *const MemRef<f32, 1>,
    feature_shapes: *const MemRef<i64, 2>,
    boxes: *const MemRef<f32, 2>,
    size: *const MemRef<i64, 1>,
) {
    *out = call(
        "multiscale_roi_pool",
        params,
        || MemRef::allocate([0, 0, 0, 0]),
        |p: MultiScalePoolParams| {
            let features = unpack(features, feature_shapes)?;
            Ok(owned(&rt::multiscale_roi_pool(&features, &tensor(boxes), image_size(size)?, &p).map_err(text)?))
        },
    );
}

/// `postprocess_detections`: boxes [D, 4], scores [D], labels [D].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_postprocess_detections(
    out: *mut Three<MemRef<f32, 2>, MemRef<f32, 1>, MemRef<i64, 1>>,
    params: *const MemRef<f64, 1>,
    class_logits: *const MemRef<f32, 2>,
    box_regression: *const MemRef<f32, 2>,
    proposals: *const MemRef<f32, 2>,
    size: *const MemRef<i64, 1>,
) {
    let empty = || Three(MemRef::allocate([0, 4]), MemRef::allocate([0]), MemRef::allocate([0]));
    *out = call("postprocess_detections", params, empty, |p: DetectionParams| {
        let (boxes, scores, labels) =
            rt::postprocess_detections(&tensor(class_logits), &tensor(box_regression), &tensor(proposals), image_size(size)?, &p)
                .map_err(text)?;
        Ok(Three(owned(&boxes), owned(&scores), MemRef::owned(&labels, [labels.len()])))
    });
}

/// `mask_probs`: [D, K, M, M] logits and [D] labels to [D, 1, M, M] probabilities.
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_mask_probs(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    logits: *const MemRef<f32, 4>,
    labels: *const MemRef<i64, 1>,
) {
    *out = call("mask_probs", params, || MemRef::allocate([0, 1, 0, 0]), |()| {
        Ok(owned(&rt::mask_probs(&tensor(logits), &(*labels).elements()).map_err(text)?))
    });
}

/// `rescale_boxes` from the resized size `from` to the size of `image` [H, W, 3].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_rescale_boxes(
    out: *mut MemRef<f32, 2>,
    params: *const MemRef<f64, 1>,
    boxes: *const MemRef<f32, 2>,
    from: *const MemRef<i64, 1>,
    image: *const MemRef<u8, 3>,
) {
    *out = call("rescale_boxes", params, || MemRef::allocate([0, 4]), |()| {
        let [h, w, _] = (*image).shape();
        Ok(owned(&rt::rescale_boxes(&tensor(boxes), image_size(from)?, [h, w]).map_err(text)?))
    });
}

/// `paste_masks`: [D, 1, M, M] probabilities into [D, 1, H, W] at `boxes`, for `image` [H, W, 3].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_paste_masks(
    out: *mut MemRef<f32, 4>,
    params: *const MemRef<f64, 1>,
    masks: *const MemRef<f32, 4>,
    boxes: *const MemRef<f32, 2>,
    image: *const MemRef<u8, 3>,
) {
    *out = call("paste_masks", params, || MemRef::allocate([0, 1, 0, 0]), |p: PasteParams| {
        let [h, w, _] = (*image).shape();
        let (masks, boxes) = (tensor(masks), tensor(boxes));
        let shape = rt::pasted_shape(&masks, &boxes, [h, w]).map_err(text)?;
        MemRef::written(shape, |out| rt::paste_masks_into(&masks, &boxes, [h, w], p.padding, out)).map_err(text)
    });
}

/// `heatmaps_to_keypoints`: [D, K, S, S] heatmaps of the boxes [D, 4] to keypoints [D, K, 3]
/// and their scores [D, K].
///
/// # Safety
/// Descriptors of live buffers, as generated code passes them.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_heatmaps_to_keypoints(
    out: *mut Two<MemRef<f32, 3>, MemRef<f32, 2>>,
    params: *const MemRef<f64, 1>,
    heatmaps: *const MemRef<f32, 4>,
    boxes: *const MemRef<f32, 2>,
) {
    let empty = || Two(MemRef::allocate([0, 0, 3]), MemRef::allocate([0, 0]));
    *out = call("heatmaps_to_keypoints", params, empty, |()| {
        let (keypoints, scores) = rt::heatmaps_to_keypoints(&tensor(heatmaps), &tensor(boxes)).map_err(text)?;
        Ok(Two(owned(&keypoints), owned(&scores)))
    });
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
    fn pooling_parameters_round_trip() {
        round_trip(RoiAlignParams {
            output_size: [14, 7],
            spatial_scale: 0.0625,
            sampling_ratio: -1,
            aligned: true,
            mode: PoolMode::Max,
        });
        round_trip(RoiAlignParams {
            output_size: [7, 7],
            spatial_scale: 0.3,
            sampling_ratio: 2,
            aligned: false,
            mode: PoolMode::Avg,
        });
        round_trip(RoiPoolParams { output_size: [7, 5], spatial_scale: 0.3 });
        round_trip(MultiScalePoolParams {
            canonical_scale: 112.0,
            canonical_level: 3.0,
            ..MultiScalePoolParams::new([7, 7])
        });
    }
}

/// A count computed on the device (`i64[1]`), read back to the host: what sizes the buffers of
/// results whose size depends on the data (detections after NMS). Only counts cross.
///
/// # Safety
/// The descriptor of a live buffer, as generated code passes it.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_count(count: *const MemRef<i64, 1>) -> i64 {
    (*count).elements().first().copied().unwrap_or(0)
}
