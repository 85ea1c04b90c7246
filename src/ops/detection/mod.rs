//! The detection operators that are not dense algebra. In the graph they are operators like any
//! other; how they are computed is the target's choice ([`BuiltIns`]): calls into the runtime
//! (`runtime/`), or, where an operator has one, its kernel lowering beside it (`*_kernel`:
//! `linalg.generic`s over the output whose bodies gather with `tensor.extract`), which a GPU
//! pipeline turns into kernels. Both have torchvision's numerics: the kernels follow the
//! runtime's float operations in order. A kernel cannot report an error: where the runtime
//! rejects a value (a label out of range), the kernel clamps it. Counts of boxes are symbolic:
//! proposals `P`, detections `D`.
//!
//! One file per family, each operator with its kernel: `image` (preprocessing), `anchors`,
//! `selection` (the RPN's proposals and the detection post-processing: sorts, NMS,
//! compaction), `pooling` (RoIAlign and RoIPool, one level or FPN levels), `masks`,
//! `keypoints`; here what they share (checks of inputs, the runtime call).

mod anchors;
mod image;
mod keypoints;
mod masks;
mod pooling;
mod selection;
mod training;

pub use anchors::Anchors;
pub use image::Preprocess;
pub use keypoints::HeatmapsToKeypoints;
pub use masks::{MaskProbs, PasteMasks, RescaleBoxes};
pub use pooling::{MultiscaleRoiAlign, MultiscaleRoiPool, RoiAlign, RoiPool};
pub use selection::{PostprocessDetections, RpnProposals};
pub use training::{
    BalancedSample, FastrcnnLoss, FastrcnnLossBackward, MaskTargets, MaskrcnnLoss, MaskrcnnLossBackward, MatchAnchors,
    MultiscaleRoiAlignBackward, MultiscaleRoiAlignBatch, RpnLoss, RpnLossBackward, RpnProposalsBatch, SampleRois, UniformKeys,
};

use super::elementwise::sigmoid_of;
use super::*;
use crate::lowering::{BuiltIns, CmpfPredicate, CmpiPredicate};
use mrc_runtime::abi::detection::{AnchorParams, Params, PasteParams};
use mrc_runtime::abi::functions::RuntimeFunction;
use mrc_runtime::detection::{DetectionParams, RoiPoolParams, RpnParams};
use mrc_runtime::ops::anchors::cell_anchors;
use mrc_runtime::ops::box_coder::BoxCoder;
use mrc_runtime::ops::multiscale::{MultiScaleParams, MultiScalePoolParams};
use mrc_runtime::ops::nms::f32_threshold;
use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::ops::roi_align::{PoolMode, RoiAlignParams};
use AttrType::*;

/// Lowers a built-in to the call `mrc_<op>(params, arguments...)` of the runtime's C interface
/// (`mrc_runtime::abi::detection`), its results typed as the node's outputs.
fn call<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    node: &LowerNode<'_, 'c, 'b>,
    function: RuntimeFunction,
    params: impl Params,
    arguments: &[Value<'c, 'b>],
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let mut all = vec![cx.f64_words(&params.encode())?];
    all.extend_from_slice(arguments);
    let results: Vec<_> = node.outputs.iter().map(|ty| cx.tensor_type(ty)).collect();
    cx.call_runtime(function, &all, &results)
}

/// The runtime's torchvision values are the operators' defaults: one definition.
const RPN: RpnParams = RpnParams::TORCHVISION;
const DETECTION: DetectionParams = DetectionParams::TORCHVISION;

const RPN_WEIGHTS: [f64; 4] = widened(RPN.weights);
const DETECTION_WEIGHTS: [f64; 4] = widened(DETECTION.weights);

/// Box-coder weights as a float attribute.
const fn widened(weights: [f32; 4]) -> [f64; 4] {
    [weights[0] as f64, weights[1] as f64, weights[2] as f64, weights[3] as f64]
}

fn box_weights(attrs: &Attrs) -> [f32; 4] {
    let w = attrs.floats("weights");
    [w[0] as f32, w[1] as f32, w[2] as f32, w[3] as f32]
}

/// The RPN's selection settings of an `rpn_proposals` node (or its batched twin).
fn rpn_params(attrs: &Attrs) -> RpnParams {
    RpnParams {
        pre_nms_top_n: attrs.int("pre_nms_top_n") as usize,
        post_nms_top_n: attrs.int("post_nms_top_n") as usize,
        nms_thresh: attrs.float("nms_thresh"),
        min_size: attrs.float("min_size"),
        score_thresh: attrs.float("score_thresh"),
        weights: box_weights(attrs),
    }
}

fn boxes(op: &str, slot: usize, ty: &TensorType) -> Result<Dim, OpError> {
    if ty.rank() != 2 || ty.dims[1] != Dim::known(4) {
        return Err(OpError::at_input(slot, format!("`{op}` expects boxes [K, 4] (x1, y1, x2, y2), found {ty}")));
    }
    Ok(ty.dims[0].clone())
}

fn image_size(op: &str, slot: usize, ty: &TensorType) -> Result<(), OpError> {
    if ty.dtype != DType::I64 || ty.dims != [Dim::known(2)] {
        return Err(OpError::at_input(slot, format!("`{op}` expects an image size i64[2] (height, width), found {ty}"))
            .hint("use the second output of `preprocess`"));
    }
    Ok(())
}

fn image(op: &str, slot: usize, ty: &TensorType) -> Result<(Dim, Dim), OpError> {
    if ty.rank() != 3 || ty.dims[2] != Dim::known(3) {
        return Err(OpError::at_input(slot, format!("`{op}` expects an RGB image [H, W, 3], found {ty}")));
    }
    Ok((ty.dims[0].clone(), ty.dims[1].clone()))
}

/// Feature maps of one image that agree in channels; returns the channel count.
fn pyramid(op: &str, slot: usize, levels: &[TensorType]) -> Result<i64, OpError> {
    let mut channels = None;
    for level in levels {
        expect_rank(op, slot, level, "1, C, H, W")?;
        let c = known(op, slot, level, 1, "channels")?;
        if *channels.get_or_insert(c) != c {
            return Err(OpError::at_input(slot, format!("channel mismatch: `{op}` levels have {} and {c} channels", channels.unwrap())));
        }
    }
    channels.ok_or_else(|| OpError::at_input(slot, format!("`{op}` needs at least one feature map")))
}

/// `output_size` of a node whose shape rule accepted it.
fn checked_output_size(attrs: &Attrs) -> [usize; 2] {
    checked_pair(attrs, "output_size").map(|s| s as usize)
}

fn pooled(features: i64, rois: Dim, [oh, ow]: [i64; 2]) -> Inference {
    Inference::output(TensorType::f32(vec![rois, Dim::known(features), Dim::known(oh), Dim::known(ow)]))
}
