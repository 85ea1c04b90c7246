//! The detection operators that are not dense algebra. In the graph they are operators like any
//! other; how they are computed is the target's choice ([`BuiltIns`]): calls into the runtime
//! (`runtime/`), or, where an operator has one, its kernel lowering beside it (`*_kernel`:
//! `linalg.generic`s over the output whose bodies gather with `tensor.extract`), which a GPU
//! pipeline turns into kernels. Both have torchvision's numerics: the kernels follow the
//! runtime's float operations in order. A kernel cannot report an error: where the runtime
//! rejects a value (a label out of range), the kernel clamps it. Counts of boxes are symbolic:
//! proposals `P`, detections `D`.

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

runtime_operator!(
    /// Resize (torchvision's rule), normalize and zero-pad one image into a batch of one.
    /// Outputs the batch and the resized (unpadded) size.
    Preprocess, "preprocess",
    inputs: [input("image")],
    attrs: [
        attr("min_size", Int, Default::Int(800)).at_least(1),
        attr("max_size", Int, Default::Int(1333)).at_least(1),
        attr("mean", Floats, Default::Floats(&[0.485, 0.456, 0.406])),
        attr("std", Floats, Default::Floats(&[0.229, 0.224, 0.225])).positive(),
        attr("size_divisible", Int, Default::Int(32)).at_least(1),
    ],
    infer: |inputs, attrs| {
        image("preprocess", 0, &inputs[0][0])?;
        for name in ["mean", "std"] {
            if attrs.floats(name).len() != 3 {
                return Err(OpError::at_attr(name, format!("`{name}` needs one value per RGB channel")));
            }
        }
        let divisible = attrs.int("size_divisible");
        let padded = |s: &str| Dim::symbol(s).ceil_div(divisible)?.scale(divisible);
        Ok(Inference {
            outputs: vec![
                TensorType::f32(vec![Dim::known(1), Dim::known(3), padded("Hr")?, padded("Wr")?]),
                TensorType::new(DType::I64, vec![Dim::known(2)]),
            ],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        let (mean, std) = (node.attrs.floats("mean"), node.attrs.floats("std"));
        let transform = Transform {
            min_size: node.attrs.int("min_size") as usize,
            max_size: node.attrs.int("max_size") as usize,
            mean: [mean[0] as f32, mean[1] as f32, mean[2] as f32],
            std: [std[0] as f32, std[1] as f32, std[2] as f32],
            size_divisible: node.attrs.int("size_divisible") as usize,
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::Preprocess, transform, &slots[0]),
            BuiltIns::Kernels => preprocess_kernel(cx, slots[0][0], &transform),
        }
    }
);

/// The batch `[1, 3, Hp, Wp]`, an element per pixel and channel (the runtime's
/// `ops::preprocess`): the image normalized `(x/255 − mean)/std`, resized bilinearly
/// (`align_corners=False`) to torchvision's size, zero beyond it up to the padded size; and
/// that size `i64[2]`. The sizes are computed on the host from the image's dimensions alone.
fn preprocess_kernel<'c, 'b>(cx: &Emitter<'c, 'b>, image: Value<'c, 'b>, transform: &Transform) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, f64_type, i64_type) = (cx.f32_type(), cx.element_type(DType::F64), cx.element_type(DType::I64));
    let (height, width) = (cx.size_value(cx.size(image, 0)?)?, cx.size_value(cx.size(image, 1)?)?);
    // torchvision's scale rule in double precision (`resized_size`).
    let to_f64 = |index| cx.convert("arith.sitofp", cx.convert("arith.index_cast", index, i64_type)?, f64_type);
    let (short, long) = (to_f64(cx.binary("arith.minui", height, width)?)?, to_f64(cx.binary("arith.maxui", height, width)?)?);
    let bound = |size: usize, side| cx.divf(cx.constant_float(size as f64, f64_type)?, side);
    let scale = cx.binary("arith.minnumf", bound(transform.min_size, short)?, bound(transform.max_size, long)?)?;
    let one = cx.constant_index(1)?;
    let resized = |side| -> Result<Value<'c, 'b>, LoweringError> {
        let floor = cx.unary("math.floor", cx.mulf(to_f64(side)?, scale)?)?;
        let side = cx.convert("arith.index_cast", cx.convert("arith.fptosi", floor, i64_type)?, cx.index_type())?;
        cx.binary("arith.maxui", side, one)
    };
    let (resized_height, resized_width) = (resized(height)?, resized(width)?);
    let divisible = transform.size_divisible as i64;
    let padded = |side| cx.size_mul(cx.size_div(cx.size_add(Size::Dynamic(side), divisible - 1)?, divisible)?, divisible);
    let init = cx.empty(&[Size::Static(1), Size::Static(3), padded(resized_height)?, padded(resized_width)?], f32_type)?;
    let identity = identity_map(4);
    let batch = cx.generic(&[], &[init], &[identity.as_str()], &[Iterator::Parallel; 4], |body| {
        let (channel, y, x) = (body.loop_index(1)?, body.loop_index(2)?, body.loop_index(3)?);
        let inside = body.binary(
            "arith.andi",
            body.compare_integers(CmpiPredicate::Ult, y, resized_height)?,
            body.compare_integers(CmpiPredicate::Ult, x, resized_width)?,
        )?;
        let value = body.if_else(inside, &[f32_type], |b| {
            let per_channel = |values: [f32; 3]| -> Result<Value<'c, '_>, LoweringError> {
                let mut value = b.constant_float(values[2] as f64, f32_type)?;
                for c in (0..2).rev() {
                    let is_c = b.compare_integers(CmpiPredicate::Eq, channel, b.constant_index(c as i64)?)?;
                    value = b.select(is_c, b.constant_float(values[c] as f64, f32_type)?, value)?;
                }
                Ok(value)
            };
            let (mean, std) = (per_channel(transform.mean)?, per_channel(transform.std)?);
            let full_scale = b.constant_float(255.0, f32_type)?;
            let normalized = |yy, xx| {
                let byte = b.extract(image, &[yy, xx, channel])?;
                b.divf(b.subf(b.divf(b.convert("arith.uitofp", byte, f32_type)?, full_scale)?, mean)?, std)
            };
            let ty = ResizeTap::of(b, height, resized_height, y)?;
            let tx = ResizeTap::of(b, width, resized_width, x)?;
            Ok(vec![interpolated(b, normalized, &ty, &tx)?])
        }, |b| Ok(vec![b.constant_float(0.0, f32_type)?]))?;
        body.yield_values(&value)
    })?;
    let size_init = cx.empty(&[Size::Static(2)], i64_type)?;
    let image_size = cx.generic(&[], &[size_init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let is_height = body.compare_integers(CmpiPredicate::Eq, body.loop_index(0)?, body.constant_index(0)?)?;
        let side = body.select(is_height, resized_height, resized_width)?;
        body.yield_values(&[body.convert("arith.index_cast", side, i64_type)?])
    })?;
    Ok(vec![batch[0], image_size[0]])
}

runtime_operator!(
    /// Anchors of every pyramid level for the padded batch, levels concatenated; within a level
    /// for each cell row-major, the sizes × aspect ratios.
    Anchors, "anchors",
    inputs: [list_input("features"), input("batch")],
    attrs: [attr("sizes", IntLists, Default::Required).at_least(1), attr("aspect_ratios", Floats, Default::Required).positive()],
    infer: |inputs, attrs| {
        let levels = &inputs[0];
        pyramid("anchors", 0, levels)?;
        let sizes = attrs.int_lists("sizes");
        if sizes.len() != levels.len() {
            return Err(OpError::at_attr("sizes", format!("{} anchor size groups for {} feature maps", sizes.len(), levels.len()))
                .hint("give one list of sizes per pyramid level"));
        }
        Ok(Inference::output(TensorType::f32(vec![Dim::symbol("A"), Dim::known(4)])))
    },
    lower: |cx, node, slots| {
        let params = AnchorParams {
            sizes: node.attrs.int_lists("sizes").to_vec(),
            aspect_ratios: node.attrs.floats("aspect_ratios").to_vec(),
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::Anchors, params, &[cx.sizes_table(&slots[0], &[2, 3])?, slots[1][0]]),
            BuiltIns::Kernels => anchors_kernel(cx, &slots[0], slots[1][0], &params),
        }
    }
);

/// `[A, 4]`, a coordinate per element (the runtime's `ops::anchors::grid_anchors`): the row's
/// level, cell and cell anchor found from the levels' sizes, the cell's shift (its index times
/// the level's integer stride) plus the cell anchor, which the compiler computes with the
/// runtime's `cell_anchors` and the kernel chooses by `select`.
fn anchors_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    features: &[Value<'c, 'b>],
    batch: Value<'c, 'b>,
    params: &AnchorParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    // torch.as_tensor(..., dtype=float32) rounds sizes and ratios to float32.
    let ratios: Vec<f32> = params.aspect_ratios.iter().map(|&r| r as f32).collect();
    let cell_anchors: Vec<Vec<[f32; 4]>> =
        params.sizes.iter().map(|sizes| cell_anchors(&sizes.iter().map(|&s| s as f32).collect::<Vec<_>>(), &ratios)).collect();
    let one = cx.constant_index(1)?;
    let (batch_height, batch_width) = (cx.size_value(cx.size(batch, 2)?)?, cx.size_value(cx.size(batch, 3)?)?);
    let mut levels = vec![];
    let (mut start, mut first_anchor) = (cx.constant_index(0)?, 0);
    for (&level, anchors) in features.iter().zip(&cell_anchors) {
        let (height, width) = (cx.size_value(cx.size(level, 2)?)?, cx.size_value(cx.size(level, 3)?)?);
        // The runtime rejects empty maps; a kernel divides by at least 1 instead.
        let stride = |image, map| cx.binary("arith.divui", image, cx.binary("arith.maxui", map, one)?);
        let per_cell = cx.constant_index(anchors.len() as i64)?;
        let first = cx.constant_index(first_anchor)?;
        levels.push(AnchorLevel { start, width, per_cell, first_anchor: first, stride_height: stride(batch_height, height)?, stride_width: stride(batch_width, width)? });
        start = cx.binary("arith.addi", start, cx.binary("arith.muli", cx.binary("arith.muli", height, width)?, per_cell)?)?;
        first_anchor += anchors.len() as i64;
    }
    let all_anchors: Vec<[f32; 4]> = cell_anchors.concat();
    let init = cx.empty(&[Size::Dynamic(start), Size::Static(4)], cx.f32_type())?;
    let identity = identity_map(2);
    cx.generic(&[], &[init], &[identity.as_str()], &[Iterator::Parallel; 2], |body| {
        let (row, coordinate) = (body.loop_index(0)?, body.loop_index(1)?);
        let mut level = levels[0];
        for next in &levels[1..] {
            let within = body.compare_integers(CmpiPredicate::Uge, row, next.start)?;
            level = AnchorLevel {
                start: body.select(within, next.start, level.start)?,
                width: body.select(within, next.width, level.width)?,
                per_cell: body.select(within, next.per_cell, level.per_cell)?,
                first_anchor: body.select(within, next.first_anchor, level.first_anchor)?,
                stride_height: body.select(within, next.stride_height, level.stride_height)?,
                stride_width: body.select(within, next.stride_width, level.stride_width)?,
            };
        }
        let in_level = body.binary("arith.subi", row, level.start)?;
        let (cell, anchor) = (body.binary("arith.divui", in_level, level.per_cell)?, body.binary("arith.remui", in_level, level.per_cell)?);
        let (y, x) = (body.binary("arith.divui", cell, level.width)?, body.binary("arith.remui", cell, level.width)?);
        let shift_y = body.index_to_f32(body.binary("arith.muli", y, level.stride_height)?)?;
        let shift_x = body.index_to_f32(body.binary("arith.muli", x, level.stride_width)?)?;
        // Coordinates x1, y1, x2, y2: even ones are along the width.
        let two = body.constant_index(2)?;
        let along_width = body.compare_integers(CmpiPredicate::Eq, body.binary("arith.remui", coordinate, two)?, body.constant_index(0)?)?;
        let shift = body.select(along_width, shift_x, shift_y)?;
        let anchor = body.binary("arith.addi", level.first_anchor, anchor)?;
        let mut offset = body.constant_float(0.0, body.f32_type())?;
        for (a, corners) in all_anchors.iter().enumerate() {
            let mut value = body.constant_float(corners[3] as f64, body.f32_type())?;
            for j in (0..3).rev() {
                let is_j = body.compare_integers(CmpiPredicate::Eq, coordinate, body.constant_index(j as i64)?)?;
                value = body.select(is_j, body.constant_float(corners[j] as f64, body.f32_type())?, value)?;
            }
            let is_a = body.compare_integers(CmpiPredicate::Eq, anchor, body.constant_index(a as i64)?)?;
            offset = body.select(is_a, value, offset)?;
        }
        body.yield_values(&[body.addf(shift, offset)?])
    })
}

/// One pyramid level's anchors: the first row, the map's width, anchors per cell, the first of
/// its cell anchors among all levels', and its integer strides (batch size / map size).
#[derive(Clone, Copy)]
struct AnchorLevel<'c, 'b> {
    start: Value<'c, 'b>,
    width: Value<'c, 'b>,
    per_cell: Value<'c, 'b>,
    first_anchor: Value<'c, 'b>,
    stride_height: Value<'c, 'b>,
    stride_width: Value<'c, 'b>,
}

runtime_operator!(
    /// The RPN's proposal selection: decode deltas, top-k per level, clip, remove small boxes,
    /// drop low scores, NMS per level, keep the best `post_nms_top_n`.
    RpnProposals, "rpn_proposals",
    inputs: [list_input("objectness"), list_input("deltas"), input("anchors"), input("image_size")],
    attrs: [
        attr("pre_nms_top_n", Int, Default::Int(RPN.pre_nms_top_n as i64)).at_least(0),
        attr("post_nms_top_n", Int, Default::Int(RPN.post_nms_top_n as i64)).at_least(0),
        attr("nms_thresh", Float, Default::Float(RPN.nms_thresh)).between(0.0, 1.0),
        attr("min_size", Float, Default::Float(RPN.min_size)).at_least(0),
        attr("score_thresh", Float, Default::Float(RPN.score_thresh)).between(0.0, 1.0),
        attr("weights", Floats, Default::Floats(&RPN_WEIGHTS)).positive(),
    ],
    infer: |inputs, attrs| {
        let (objectness, deltas) = (&inputs[0], &inputs[1]);
        if objectness.len() != deltas.len() {
            return Err(OpError::at_input(1, format!("{} objectness maps but {} delta maps", objectness.len(), deltas.len())));
        }
        for (o, d) in objectness.iter().zip(deltas) {
            expect_rank("rpn_proposals", 0, o, "1, A, H, W")?;
            expect_rank("rpn_proposals", 1, d, "1, 4*A, H, W")?;
            if o.dims[1].scale(4)? != d.dims[1] || o.dims[2..] != d.dims[2..] {
                return Err(OpError::at_input(1, format!("deltas {d} do not match objectness {o}"))
                    .hint("the box branch has 4 channels per anchor of the objectness branch"));
            }
        }
        boxes("rpn_proposals", 2, &inputs[2][0])?;
        image_size("rpn_proposals", 3, &inputs[3][0])?;
        if attrs.floats("weights").len() != 4 {
            return Err(OpError::at_attr("weights", "box coder `weights` are four numbers (wx, wy, ww, wh)"));
        }
        Ok(Inference::output(TensorType::f32(vec![Dim::symbol("P"), Dim::known(4)])))
    },
    lower: |cx, node, slots| {
        let params = RpnParams {
            pre_nms_top_n: node.attrs.int("pre_nms_top_n") as usize,
            post_nms_top_n: node.attrs.int("post_nms_top_n") as usize,
            nms_thresh: node.attrs.float("nms_thresh"),
            min_size: node.attrs.float("min_size"),
            score_thresh: node.attrs.float("score_thresh"),
            weights: box_weights(node.attrs),
        };
        match cx.builtins() {
            BuiltIns::Runtime => {
                let (objectness, objectness_shapes) = cx.pack(&slots[0])?;
                let (deltas, deltas_shapes) = cx.pack(&slots[1])?;
                call(cx, node, RuntimeFunction::RpnProposals, params, &[objectness, objectness_shapes, deltas, deltas_shapes, slots[2][0], slots[3][0]])
            }
            BuiltIns::Kernels => rpn_proposals_kernel(cx, &slots[0], &slots[1], slots[2][0], slots[3][0], &params),
        }
    }
);

runtime_operator!(
    /// RoIAlign on one feature map (the C4 head); `mode: "max"` is ONNX's max variant.
    RoiAlign, "roi_align",
    inputs: [input("features"), input("boxes")],
    attrs: [
        attr("output_size", Ints, Default::Required).at_least(1),
        attr("spatial_scale", Float, Default::Required).positive(),
        attr("sampling_ratio", Int, Default::Int(-1)).at_least(-1),
        attr("aligned", Bool, Default::Bool(false)),
        attr("mode", Str, Default::Str("avg")),
    ],
    infer: |inputs, attrs| {
        let c = pyramid("roi_align", 0, &inputs[0])?;
        let k = boxes("roi_align", 1, &inputs[1][0])?;
        match &attrs["mode"] {
            AttrValue::Str(m) if m == "avg" || m == "max" => {}
            m => return Err(OpError::at_attr("mode", format!("`mode` is \"avg\" or \"max\", found {m}"))),
        }
        Ok(pooled(c, k, pair(attrs, "output_size")?))
    },
    lower: |cx, node, slots| {
        let params = RoiAlignParams {
            output_size: checked_output_size(node.attrs),
            spatial_scale: node.attrs.float("spatial_scale") as f32,
            sampling_ratio: node.attrs.int("sampling_ratio") as i32,
            aligned: node.attrs.flag("aligned"),
            mode: if matches!(&node.attrs["mode"], AttrValue::Str(m) if m == "max") { PoolMode::Max } else { PoolMode::Avg },
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::RoiAlign, params, &[slots[0][0], slots[1][0]]),
            BuiltIns::Kernels => roi_align_kernel(cx, slots[0][0], slots[1][0], &params),
        }
    }
);

/// `[K, C, oh, ow]`: each bin of each box's RoIAlign from `features` [1, C, H, W].
fn roi_align_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    features: Value<'c, 'b>,
    boxes: Value<'c, 'b>,
    params: &RoiAlignParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let sizes = cx.sizes(features)?;
    let map = FeatureMapSize::of(cx, sizes[2], sizes[3])?;
    let flat = cx.concat_flat(&[features])?;
    pooled_bins(cx, boxes, sizes[1], Pooling::Align(params), &Levels::One(map), flat)
}

/// How each bin of a box is pooled.
#[derive(Clone, Copy)]
enum Pooling<'p> {
    /// RoIAlign: bilinear samples on a grid, averaged (or their maximum).
    Align(&'p RoiAlignParams),
    /// RoIPool: the maximum over the feature cells the box, rounded to whole cells, puts in
    /// the bin.
    Quantized(&'p RoiPoolParams),
}

impl Pooling<'_> {
    fn output_size(&self) -> [usize; 2] {
        match self {
            Pooling::Align(params) => params.output_size,
            Pooling::Quantized(params) => params.output_size,
        }
    }

    fn spatial_scale(&self) -> f32 {
        match self {
            Pooling::Align(params) => params.spatial_scale,
            Pooling::Quantized(params) => params.spatial_scale,
        }
    }
}

/// Where a box's bins are pooled from.
enum Levels<'c, 'b> {
    /// One feature map at the parameters' spatial scale.
    One(FeatureMapSize<'c, 'b>),
    /// FPN levels, finest first, each with the start of its maps in the concatenated ones: a box
    /// is pooled from the level its size maps to (torchvision's `LevelMapper`), at the scale
    /// inferred from the level's height against the image's (`infer_scale`).
    Pyramid { levels: Vec<(Value<'c, 'b>, FeatureMapSize<'c, 'b>)>, image_size: Value<'c, 'b>, mapper: LevelMapping },
}

/// The level mapper's constants: `⌊canonical_level + log2(√area / canonical_scale) + eps⌋`.
#[derive(Clone, Copy)]
struct LevelMapping {
    canonical_scale: f32,
    canonical_level: f32,
    eps: f32,
}

impl<'c, 'b> Levels<'c, 'b> {
    /// The start of the level's maps in the concatenated ones, their size, and the spatial
    /// scale, for the box of `coordinates`: computed in the kernel body `b`.
    fn of<'n>(
        &self,
        b: &Emitter<'c, 'n>,
        spatial_scale: f32,
        coordinates: &[Value<'c, 'n>; 4],
    ) -> Result<(Value<'c, 'n>, FeatureMapSize<'c, 'n>, Value<'c, 'n>), LoweringError>
    where
        'b: 'n,
    {
        match self {
            Levels::One(map) => Ok((b.constant_index(0)?, *map, b.constant_float(spatial_scale as f64, b.f32_type())?)),
            Levels::Pyramid { levels, image_size, mapper } => pyramid_level(b, levels, *image_size, *mapper, coordinates),
        }
    }
}

/// The runtime's `ops::multiscale` in a kernel body: each level's scale exponent
/// `roundeven(log2(f32(feature height / image height)))` (the ratio in double precision, as
/// Python divides), levels `k = −exponent`, and the box's level
/// `⌊canonical_level + log2(√area / canonical_scale) + eps⌋` clamped to `[k_min, k_max]`; returns
/// that level's start, size and scale. Where the runtime rejects a box (negative area) or scales
/// that are not consecutive powers of two, the level is clamped into the pyramid instead.
fn pyramid_level<'c, 'b: 'n, 'n>(
    b: &Emitter<'c, 'n>,
    levels: &[(Value<'c, 'b>, FeatureMapSize<'c, 'b>)],
    image_size: Value<'c, 'b>,
    mapper: LevelMapping,
    [x1, y1, x2, y2]: &[Value<'c, 'n>; 4],
) -> Result<(Value<'c, 'n>, FeatureMapSize<'c, 'n>, Value<'c, 'n>), LoweringError> {
    let (f32_type, f64_type, i64_type) = (b.f32_type(), b.element_type(DType::F64), b.element_type(DType::I64));
    let float = |v: f32| b.constant_float(v as f64, f32_type);
    let image_height = b.convert("arith.sitofp", b.extract(image_size, &[b.constant_index(0)?])?, f64_type)?;
    let exponents = levels
        .iter()
        .map(|(_, map)| {
            let height = b.convert("arith.sitofp", b.convert("arith.index_cast", map.height, i64_type)?, f64_type)?;
            let ratio = b.convert("arith.truncf", b.divf(height, image_height)?, f32_type)?;
            b.unary("math.roundeven", b.unary("math.log2", ratio)?)
        })
        .collect::<Result<Vec<_>, LoweringError>>()?;
    let (k_min, k_max) = (b.unary("arith.negf", exponents[0])?, b.unary("arith.negf", exponents[exponents.len() - 1])?);
    let size = b.unary("math.sqrt", b.mulf(b.subf(*x2, *x1)?, b.subf(*y2, *y1)?)?)?;
    let log_size = b.unary("math.log2", b.divf(size, float(mapper.canonical_scale)?)?)?;
    let level = b.unary("math.floor", b.addf(b.addf(float(mapper.canonical_level)?, log_size)?, float(mapper.eps)?)?)?;
    // `maxnumf` first: a NaN level (negative area) becomes k_min.
    let level = b.binary("arith.minnumf", b.binary("arith.maxnumf", level, k_min)?, k_max)?;
    let index = b.convert("arith.fptosi", b.subf(level, k_min)?, i64_type)?;
    let index = b.convert("arith.index_cast", index, b.index_type())?;
    let last = b.constant_index(levels.len() as i64 - 1)?;
    let index = b.binary("arith.minsi", b.binary("arith.maxsi", index, b.constant_index(0)?)?, last)?;
    let (start, map) = levels[0];
    let (mut start, mut map, mut exponent): (Value<'c, 'n>, FeatureMapSize<'c, 'n>, _) = (start, map, exponents[0]);
    for (l, &(level_start, level_map)) in levels.iter().enumerate().skip(1) {
        let chosen = b.compare_integers(CmpiPredicate::Eq, index, b.constant_index(l as i64)?)?;
        start = b.select(chosen, level_start, start)?;
        map = FeatureMapSize {
            height: b.select(chosen, level_map.height, map.height)?,
            width: b.select(chosen, level_map.width, map.width)?,
            plane: b.select(chosen, level_map.plane, map.plane)?,
        };
        exponent = b.select(chosen, exponents[l], exponent)?;
    }
    Ok((start, map, power_of_two(b, exponent)?))
}

/// `2^exponent` for an integral f32 `exponent`, exactly (as the runtime's `2f64.powf`; a GPU's
/// `exp2` is approximate): the float's bits, the exponent clamped to the normal range.
fn power_of_two<'c, 'n>(b: &Emitter<'c, 'n>, exponent: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let i32_type = b.element_type(DType::I32);
    let exponent = b.binary("arith.minnumf", b.binary("arith.maxnumf", exponent, b.constant_float(-126.0, b.f32_type())?)?, b.constant_float(127.0, b.f32_type())?)?;
    let biased = b.binary("arith.addi", b.convert("arith.fptosi", exponent, i32_type)?, b.constant_integer(127, i32_type)?)?;
    b.convert("arith.bitcast", b.binary("arith.shli", biased, b.constant_integer(23, i32_type)?)?, b.f32_type())
}

/// The size of a feature map's plane, as `index` values computed outside the kernels.
#[derive(Clone, Copy)]
struct FeatureMapSize<'c, 'b> {
    height: Value<'c, 'b>,
    width: Value<'c, 'b>,
    plane: Value<'c, 'b>,
}

impl<'c, 'b> FeatureMapSize<'c, 'b> {
    fn of(cx: &Emitter<'c, 'b>, height: Size<'c, 'b>, width: Size<'c, 'b>) -> Result<Self, LoweringError> {
        let (height, width) = (cx.size_value(height)?, cx.size_value(width)?);
        Ok(FeatureMapSize { height, width, plane: cx.binary("arith.muli", height, width)? })
    }
}

/// `[K, C, oh, ow]` over `boxes` [K, 4]: every bin pooled as `pooling` says from the
/// concatenated feature maps `flat`, from the level `levels` gives a box.
fn pooled_bins<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    boxes: Value<'c, 'b>,
    channels: Size<'c, 'b>,
    pooling: Pooling,
    levels: &Levels<'c, 'b>,
    flat: Value<'c, 'b>,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let [oh, ow] = pooling.output_size().map(|s| Size::Static(s as i64));
    let init = cx.empty(&[cx.size(boxes, 0)?, channels, oh, ow], cx.f32_type())?;
    let identity = identity_map(4);
    cx.generic(&[], &[init], &[identity.as_str()], &[Iterator::Parallel; 4], |body| {
        let k = body.loop_index(0)?;
        let mut coordinates = vec![];
        for j in 0..4 {
            coordinates.push(body.extract(boxes, &[k, body.constant_index(j)?])?);
        }
        let coordinates: [Value; 4] = coordinates.try_into().map_err(|_| LoweringError::Build("a box has 4 coordinates".into()))?;
        let (start, map, scale) = levels.of(body, pooling.spatial_scale(), &coordinates)?;
        let plane = body.binary("arith.addi", start, body.binary("arith.muli", body.loop_index(1)?, map.plane)?)?;
        let bin = [body.loop_index(2)?, body.loop_index(3)?];
        let value = match pooling {
            Pooling::Align(params) => roi_align_bin(body, params, flat, plane, map, &coordinates, scale, bin)?,
            Pooling::Quantized(params) => roi_pool_bin(body, params.output_size, flat, plane, map, &coordinates, scale, bin)?,
        };
        body.yield_values(&[value])
    })
}

/// One bin of RoIAlign (torchvision's CPU kernel, the runtime's `ops::roi_align`, float32 in
/// the same order): the box in feature coordinates, its sampling grid, then the mean (or max)
/// of the bilinear samples of the plane starting at `plane` in `flat`.
#[allow(clippy::too_many_arguments)]
fn roi_align_bin<'c, 'n>(
    b: &Emitter<'c, 'n>,
    params: &RoiAlignParams,
    flat: Value<'c, 'n>,
    plane: Value<'c, 'n>,
    map: FeatureMapSize<'c, 'n>,
    [x1, y1, x2, y2]: &[Value<'c, 'n>; 4],
    scale: Value<'c, 'n>,
    [ph, pw]: [Value<'c, 'n>; 2],
) -> Result<Value<'c, 'n>, LoweringError> {
    let f32_type = b.f32_type();
    let float = |v: f64| b.constant_float(v, f32_type);
    let offset = float(if params.aligned { 0.5 } else { 0.0 })?;
    let feature = |v: Value<'c, 'n>| b.subf(b.mulf(v, scale)?, offset);
    let (start_w, start_h, end_w, end_h) = (feature(*x1)?, feature(*y1)?, feature(*x2)?, feature(*y2)?);
    let (mut roi_w, mut roi_h) = (b.subf(end_w, start_w)?, b.subf(end_h, start_h)?);
    if !params.aligned {
        roi_w = b.binary("arith.maxnumf", roi_w, float(1.0)?)?;
        roi_h = b.binary("arith.maxnumf", roi_h, float(1.0)?)?;
    }
    let [oh, ow] = params.output_size.map(|s| s as f64);
    let (bin_h, bin_w) = (b.divf(roi_h, float(oh)?)?, b.divf(roi_w, float(ow)?)?);
    // Adaptive grids may be 0 (an empty box with `aligned`): no samples and an output of 0.
    let grid = |size: Value<'c, 'n>, bins: f64| -> Result<Value<'c, 'n>, LoweringError> {
        if params.sampling_ratio > 0 {
            return b.constant_index(params.sampling_ratio as i64);
        }
        let ceiling = b.unary("math.ceil", b.divf(size, float(bins)?)?)?;
        b.floor_to_index(b.binary("arith.maxnumf", ceiling, float(0.0)?)?)
    };
    let (grid_h, grid_w) = (grid(roi_h, oh)?, grid(roi_w, ow)?);
    let (grid_hf, grid_wf) = (b.index_to_f32(grid_h)?, b.index_to_f32(grid_w)?);
    let row_start = b.addf(start_h, b.mulf(b.index_to_f32(ph)?, bin_h)?)?;
    let column_start = b.addf(start_w, b.mulf(b.index_to_f32(pw)?, bin_w)?)?;
    let average = params.mode == PoolMode::Avg;
    let zero_index = b.constant_index(0)?;
    let initial = float(if average { 0.0 } else { f64::NEG_INFINITY })?;
    let total = b.for_loop(zero_index, grid_h, &[initial], |b, args| {
        let (iy, total) = (args[0], args[1]);
        let yy = sample_position(b, row_start, iy, bin_h, grid_hf)?;
        b.for_loop(b.constant_index(0)?, grid_w, &[total], |b, args| {
            let (ix, total) = (args[0], args[1]);
            let xx = sample_position(b, column_start, ix, bin_w, grid_wf)?;
            let value = bilinear(b, flat, plane, map, yy, xx)?;
            Ok(vec![if average { b.addf(total, value)? } else { b.binary("arith.maxnumf", total, value)? }])
        })
    })?[0];
    let count = b.index_to_f32(b.binary("arith.muli", grid_h, grid_w)?)?;
    let pooled = if average { b.divf(total, count)? } else { total };
    let empty = b.compare_floats(CmpfPredicate::Oeq, count, float(0.0)?)?;
    b.select(empty, float(0.0)?, pooled)
}

/// One bin of RoIPool (torchvision's CPU kernel, the runtime's `ops::roi_pool`): the box's
/// corners rounded to whole cells (half away from zero), the box including its end cell, the
/// bin's cells `[⌊p·bin⌋, ⌈(p + 1)·bin⌉)` clamped to the map, their maximum (0 for none).
#[allow(clippy::too_many_arguments)]
fn roi_pool_bin<'c, 'n>(
    b: &Emitter<'c, 'n>,
    [oh, ow]: [usize; 2],
    flat: Value<'c, 'n>,
    plane: Value<'c, 'n>,
    map: FeatureMapSize<'c, 'n>,
    [x1, y1, x2, y2]: &[Value<'c, 'n>; 4],
    scale: Value<'c, 'n>,
    [ph, pw]: [Value<'c, 'n>; 2],
) -> Result<Value<'c, 'n>, LoweringError> {
    let (f32_type, i64_type, index_type) = (b.f32_type(), b.element_type(DType::I64), b.index_type());
    let cell = |v: Value<'c, 'n>| b.convert("arith.fptosi", b.unary("math.round", b.mulf(v, scale)?)?, i64_type);
    let (start_w, start_h, end_w, end_h) = (cell(*x1)?, cell(*y1)?, cell(*x2)?, cell(*y2)?);
    let one = b.constant_integer(1, i64_type)?;
    let extent = |start: Value<'c, 'n>, end: Value<'c, 'n>| {
        b.binary("arith.maxsi", b.binary("arith.addi", b.binary("arith.subi", end, start)?, one)?, one)
    };
    let bin_h = b.divf(b.convert("arith.sitofp", extent(start_h, end_h)?, f32_type)?, b.constant_float(oh as f64, f32_type)?)?;
    let bin_w = b.divf(b.convert("arith.sitofp", extent(start_w, end_w)?, f32_type)?, b.constant_float(ow as f64, f32_type)?)?;
    let zero = b.constant_integer(0, i64_type)?;
    // `start + rounding(p · bin)` clamped to [0, limit], as an index.
    let edge = |p: Value<'c, 'n>, bin: Value<'c, 'n>, rounding: &str, start: Value<'c, 'n>, limit: Value<'c, 'n>| {
        let offset = b.convert("arith.fptosi", b.unary(rounding, b.mulf(b.index_to_f32(p)?, bin)?)?, i64_type)?;
        let limit = b.convert("arith.index_cast", limit, i64_type)?;
        let clamped = b.binary("arith.minsi", b.binary("arith.maxsi", b.binary("arith.addi", offset, start)?, zero)?, limit)?;
        b.convert("arith.index_cast", clamped, index_type)
    };
    let next = |p: Value<'c, 'n>| b.binary("arith.addi", p, b.constant_index(1)?);
    let (h_start, h_end) = (edge(ph, bin_h, "math.floor", start_h, map.height)?, edge(next(ph)?, bin_h, "math.ceil", start_h, map.height)?);
    let (w_start, w_end) = (edge(pw, bin_w, "math.floor", start_w, map.width)?, edge(next(pw)?, bin_w, "math.ceil", start_w, map.width)?);
    let lowest = b.constant_float(f32::MIN as f64, f32_type)?;
    let best = b.for_loop(h_start, h_end, &[lowest], |b, args| {
        let (y, best) = (args[0], args[1]);
        let row = b.binary("arith.addi", plane, b.binary("arith.muli", y, map.width)?)?;
        b.for_loop(w_start, w_end, &[best], |b, args| {
            let (x, best) = (args[0], args[1]);
            let value = b.extract(flat, &[b.binary("arith.addi", row, x)?])?;
            // Strictly greater, as the runtime: the first of equal maxima, NaNs never chosen.
            Ok(vec![b.select(b.compare_floats(CmpfPredicate::Ogt, value, best)?, value, best)?])
        })
    })?[0];
    let empty_rows = b.compare_integers(CmpiPredicate::Ule, h_end, h_start)?;
    let empty_columns = b.compare_integers(CmpiPredicate::Ule, w_end, w_start)?;
    let empty = b.binary("arith.ori", empty_rows, empty_columns)?;
    b.select(empty, b.constant_float(0.0, f32_type)?, best)
}

/// `start + (i + 0.5) · bin / grid`: the i-th sampling point of a bin.
fn sample_position<'c, 'n>(b: &Emitter<'c, 'n>, start: Value<'c, '_>, i: Value<'c, '_>, bin: Value<'c, '_>, grid: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let half = b.constant_float(0.5, b.f32_type())?;
    b.addf(start, b.divf(b.mulf(b.addf(b.index_to_f32(i)?, half)?, bin)?, grid)?)
}

/// torchvision's bilinear interpolation for RoIAlign at (`yy`, `xx`) in the plane starting at
/// `plane` in `flat`: 0 beyond one pixel outside the map (nothing is read there), clamped to
/// the border within it.
fn bilinear<'c, 'n>(
    b: &Emitter<'c, 'n>,
    flat: Value<'c, '_>,
    plane: Value<'c, '_>,
    map: FeatureMapSize<'c, '_>,
    yy: Value<'c, '_>,
    xx: Value<'c, '_>,
) -> Result<Value<'c, 'n>, LoweringError> {
    let f32_type = b.f32_type();
    let (minus_one, zero, one) = (b.constant_float(-1.0, f32_type)?, b.constant_float(0.0, f32_type)?, b.constant_float(1.0, f32_type)?);
    let (height, width) = (b.index_to_f32(map.height)?, b.index_to_f32(map.width)?);
    let zero_index = b.constant_index(0)?;
    let mut outside = b.compare_integers(CmpiPredicate::Eq, map.plane, zero_index)?;
    for (predicate, lhs, rhs) in [(CmpfPredicate::Olt, yy, minus_one), (CmpfPredicate::Ogt, yy, height), (CmpfPredicate::Olt, xx, minus_one), (CmpfPredicate::Ogt, xx, width)] {
        outside = b.binary("arith.ori", outside, b.compare_floats(predicate, lhs, rhs)?)?;
    }
    Ok(b.if_else(outside, &[f32_type], |b| Ok(vec![b.constant_float(0.0, f32_type)?]), |b| {
        // Low and high neighbours along one axis, and the position's fraction past the low one.
        let neighbours = |position: Value<'c, '_>, size: Value<'c, '_>| {
            let position = b.binary("arith.maxnumf", position, zero)?;
            let low = b.floor_to_index(position)?;
            let last = b.binary("arith.subi", size, b.constant_index(1)?)?;
            let at_border = b.compare_integers(CmpiPredicate::Sge, low, last)?;
            let low = b.select(at_border, last, low)?;
            let high = b.select(at_border, low, b.binary("arith.addi", low, b.constant_index(1)?)?)?;
            let position = b.select(at_border, b.index_to_f32(low)?, position)?;
            Ok::<_, LoweringError>((low, high, b.subf(position, b.index_to_f32(low)?)?))
        };
        let (y_low, y_high, ly) = neighbours(yy, map.height)?;
        let (x_low, x_high, lx) = neighbours(xx, map.width)?;
        let (hy, hx) = (b.subf(one, ly)?, b.subf(one, lx)?);
        let at = |y: Value<'c, '_>, x: Value<'c, '_>| {
            let index = b.binary("arith.addi", plane, b.binary("arith.addi", b.binary("arith.muli", y, map.width)?, x)?)?;
            b.extract(flat, &[index])
        };
        let mut value = b.mulf(b.mulf(hy, hx)?, at(y_low, x_low)?)?;
        for (weight, y, x) in [(b.mulf(hy, lx)?, y_low, x_high), (b.mulf(ly, hx)?, y_high, x_low), (b.mulf(ly, lx)?, y_high, x_high)] {
            value = b.addf(value, b.mulf(weight, at(y, x)?)?)?;
        }
        Ok(vec![value])
    })?[0])
}

runtime_operator!(
    /// RoIPool on one feature map (the paper's ablation).
    RoiPool, "roi_pool",
    inputs: [input("features"), input("boxes")],
    // The runtime's RoIPool takes scales up to 1000.
    attrs: [attr("output_size", Ints, Default::Required).at_least(1), attr("spatial_scale", Float, Default::Required).positive().at_most(1e3)],
    infer: |inputs, attrs| {
        let c = pyramid("roi_pool", 0, &inputs[0])?;
        let k = boxes("roi_pool", 1, &inputs[1][0])?;
        Ok(pooled(c, k, pair(attrs, "output_size")?))
    },
    lower: |cx, node, slots| {
        let params = RoiPoolParams {
            output_size: checked_output_size(node.attrs),
            spatial_scale: node.attrs.float("spatial_scale") as f32,
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::RoiPool, params, &[slots[0][0], slots[1][0]]),
            BuiltIns::Kernels => roi_pool_kernel(cx, slots[0][0], slots[1][0], &params),
        }
    }
);

/// `[K, C, oh, ow]`: each bin of each box's RoIPool from `features` [1, C, H, W].
fn roi_pool_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    features: Value<'c, 'b>,
    boxes: Value<'c, 'b>,
    params: &RoiPoolParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let sizes = cx.sizes(features)?;
    let map = FeatureMapSize::of(cx, sizes[2], sizes[3])?;
    let flat = cx.concat_flat(&[features])?;
    pooled_bins(cx, boxes, sizes[1], Pooling::Quantized(params), &Levels::One(map), flat)
}

runtime_operator!(
    /// RoIAlign over FPN levels: each box goes to level ⌊4 + log2(√area / 224) + 1e-6⌋, clamped;
    /// the scales are inferred from the feature sizes against the resized image, as torchvision's.
    MultiscaleRoiAlign, "multiscale_roi_align",
    inputs: [list_input("features"), input("boxes"), input("image_size")],
    attrs: [
        attr("output_size", Ints, Default::Required).at_least(1),
        attr("sampling_ratio", Int, Default::Int(2)).at_least(-1),
        attr("canonical_scale", Int, Default::Int(224)).at_least(1),
        attr("canonical_level", Int, Default::Int(4)).at_least(0),
        attr("aligned", Bool, Default::Bool(false)),
    ],
    infer: |inputs, attrs| {
        let c = pyramid("multiscale_roi_align", 0, &inputs[0])?;
        let k = boxes("multiscale_roi_align", 1, &inputs[1][0])?;
        image_size("multiscale_roi_align", 2, &inputs[2][0])?;
        Ok(pooled(c, k, pair(attrs, "output_size")?))
    },
    lower: |cx, node, slots| {
        let params = MultiScaleParams {
            canonical_scale: node.attrs.int("canonical_scale") as f32,
            canonical_level: node.attrs.int("canonical_level") as f32,
            aligned: node.attrs.flag("aligned"),
            ..MultiScaleParams::new(checked_output_size(node.attrs), node.attrs.int("sampling_ratio") as i32)
        };
        match cx.builtins() {
            BuiltIns::Runtime => {
                let (features, shapes) = cx.pack(&slots[0])?;
                call(cx, node, RuntimeFunction::MultiscaleRoiAlign, params, &[features, shapes, slots[1][0], slots[2][0]])
            }
            BuiltIns::Kernels => {
                let mapper = LevelMapping { canonical_scale: params.canonical_scale, canonical_level: params.canonical_level, eps: params.eps };
                let roi_align = RoiAlignParams {
                    output_size: params.output_size,
                    // Unused: `Levels::Pyramid` gives each box its level's scale.
                    spatial_scale: 1.0,
                    sampling_ratio: params.sampling_ratio,
                    aligned: params.aligned,
                    mode: PoolMode::Avg,
                };
                multiscale_kernel(cx, &slots[0], slots[1][0], slots[2][0], mapper, Pooling::Align(&roi_align))
            }
        }
    }
);

/// `[K, C, oh, ow]`: each bin of each box pooled from the FPN level `features` (finest first,
/// [1, C, H, W] each) its size maps to, at the scale inferred against `image_size`.
fn multiscale_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    features: &[Value<'c, 'b>],
    boxes: Value<'c, 'b>,
    image_size: Value<'c, 'b>,
    mapper: LevelMapping,
    pooling: Pooling,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let channels = cx.size(features[0], 1)?;
    let channels_value = cx.size_value(channels)?;
    let mut levels = vec![];
    let mut start = cx.constant_index(0)?;
    for (l, &level) in features.iter().enumerate() {
        let sizes = cx.sizes(level)?;
        let map = FeatureMapSize::of(cx, sizes[2], sizes[3])?;
        levels.push((start, map));
        if l + 1 < features.len() {
            start = cx.binary("arith.addi", start, cx.binary("arith.muli", channels_value, map.plane)?)?;
        }
    }
    let levels = Levels::Pyramid { levels, image_size, mapper };
    pooled_bins(cx, boxes, channels, pooling, &levels, cx.concat_flat(features)?)
}

runtime_operator!(
    /// RoIPool over FPN levels, with the same level mapper as `multiscale_roi_align`.
    MultiscaleRoiPool, "multiscale_roi_pool",
    inputs: [list_input("features"), input("boxes"), input("image_size")],
    attrs: [
        attr("output_size", Ints, Default::Required).at_least(1),
        attr("canonical_scale", Int, Default::Int(224)).at_least(1),
        attr("canonical_level", Int, Default::Int(4)).at_least(0),
    ],
    infer: |inputs, attrs| {
        let c = pyramid("multiscale_roi_pool", 0, &inputs[0])?;
        let k = boxes("multiscale_roi_pool", 1, &inputs[1][0])?;
        image_size("multiscale_roi_pool", 2, &inputs[2][0])?;
        Ok(pooled(c, k, pair(attrs, "output_size")?))
    },
    lower: |cx, node, slots| {
        let params = MultiScalePoolParams {
            canonical_scale: node.attrs.int("canonical_scale") as f32,
            canonical_level: node.attrs.int("canonical_level") as f32,
            ..MultiScalePoolParams::new(checked_output_size(node.attrs))
        };
        match cx.builtins() {
            BuiltIns::Runtime => {
                let (features, shapes) = cx.pack(&slots[0])?;
                call(cx, node, RuntimeFunction::MultiscaleRoiPool, params, &[features, shapes, slots[1][0], slots[2][0]])
            }
            BuiltIns::Kernels => {
                let mapper = LevelMapping { canonical_scale: params.canonical_scale, canonical_level: params.canonical_level, eps: params.eps };
                // Unused: `Levels::Pyramid` gives each box its level's scale.
                let roi_pool = RoiPoolParams { output_size: params.output_size, spatial_scale: 1.0 };
                multiscale_kernel(cx, &slots[0], slots[1][0], slots[2][0], mapper, Pooling::Quantized(&roi_pool))
            }
        }
    }
);

runtime_operator!(
    /// torchvision's `postprocess_detections`: softmax, per-class box decoding, clipping,
    /// score threshold, small-box removal, per-class NMS, the best `detections_per_img`.
    /// Outputs boxes, scores and labels.
    PostprocessDetections, "postprocess_detections",
    inputs: [input("class_logits"), input("box_regression"), input("proposals"), input("image_size")],
    attrs: [
        attr("weights", Floats, Default::Floats(&DETECTION_WEIGHTS)).positive(),
        attr("score_thresh", Float, Default::Float(DETECTION.score_thresh)).between(0.0, 1.0),
        attr("nms_thresh", Float, Default::Float(DETECTION.nms_thresh)).between(0.0, 1.0),
        attr("detections_per_img", Int, Default::Int(DETECTION.detections_per_img as i64)).at_least(0),
        attr("min_size", Float, Default::Float(DETECTION.min_size)).at_least(0),
    ],
    infer: |inputs, attrs| {
        let (logits, regression) = (&inputs[0][0], &inputs[1][0]);
        expect_rank("postprocess_detections", 0, logits, "P, classes")?;
        expect_rank("postprocess_detections", 1, regression, "P, 4*classes")?;
        let p = boxes("postprocess_detections", 2, &inputs[2][0])?;
        image_size("postprocess_detections", 3, &inputs[3][0])?;
        if logits.dims[1].scale(4)? != regression.dims[1] {
            return Err(OpError::at_input(1, format!("box regression {regression} does not match class logits {logits}"))
                .hint("the box predictor has 4 outputs per class"));
        }
        if logits.dims[0] != p || regression.dims[0] != p {
            return Err(OpError::at_input(0, format!("{logits} and {regression} are not one row per proposal of {}", inputs[2][0])));
        }
        let d = Dim::symbol("D");
        Ok(Inference {
            outputs: vec![
                TensorType::f32(vec![d.clone(), Dim::known(4)]),
                TensorType::f32(vec![d.clone()]),
                TensorType::new(DType::I64, vec![d]),
            ],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        let params = DetectionParams {
            weights: box_weights(node.attrs),
            score_thresh: node.attrs.float("score_thresh"),
            nms_thresh: node.attrs.float("nms_thresh"),
            detections_per_img: node.attrs.int("detections_per_img") as usize,
            min_size: node.attrs.float("min_size"),
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::PostprocessDetections, params, &[slots[0][0], slots[1][0], slots[2][0], slots[3][0]]),
            BuiltIns::Kernels => postprocess_detections_kernel(cx, slots[0][0], slots[1][0], slots[2][0], slots[3][0], &params),
        }
    }
);

/// `postprocess_detections` as kernels (the runtime's function step by step; only counts
/// cross to the host, through [`RuntimeFunction::Count`], to size buffers and end loops): each
/// candidate (proposal `i`, foreground class `c`, in that order) decoded and clipped (`[N, 4]`),
/// and its key: its class probability where it passes the score threshold and the small-box
/// test, else −∞; then [`select_by_nms`] with the classes as labels, the first
/// `detections_per_img`.
fn postprocess_detections_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    logits: Value<'c, 'b>,
    regression: Value<'c, 'b>,
    proposals: Value<'c, 'b>,
    image_size: Value<'c, 'b>,
    p: &DetectionParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let one = cx.constant_index(1)?;
    let classes = cx.size_value(cx.size(logits, 1)?)?;
    let foreground = cx.binary("arith.subi", cx.binary("arith.maxui", classes, one)?, one)?;
    let n = cx.binary("arith.muli", cx.size_value(cx.size(logits, 0)?)?, foreground)?;
    let weights = p.weights;
    let (score_thresh, min_size) = (p.score_thresh as f32, p.min_size as f32);
    let identity2 = identity_map(2);
    let decoded_init = cx.empty(&[Size::Dynamic(n), Size::Static(4)], f32_type)?;
    let decoded = cx.generic(&[], &[decoded_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let c = body.loop_index(0)?;
        let i = body.binary("arith.divui", c, foreground)?;
        let class = body.binary("arith.addi", body.binary("arith.remui", c, foreground)?, body.constant_index(1)?)?;
        let proposal = |k: i64| body.extract(proposals, &[i, body.constant_index(k)?]);
        let base = body.binary("arith.muli", class, body.constant_index(4)?)?;
        let delta = |k: i64| body.extract(regression, &[i, body.binary("arith.addi", base, body.constant_index(k)?)?]);
        let coordinates = decoded_box(body, [proposal(0)?, proposal(1)?, proposal(2)?, proposal(3)?], [delta(0)?, delta(1)?, delta(2)?, delta(3)?], image_size, weights)?;
        body.yield_values(&[coordinate_at(body, &coordinates, body.loop_index(1)?)?])
    })?[0];
    let sort = SortSize::of(cx, n)?;
    let keys_init = [cx.empty(&[Size::Dynamic(sort.padded)], f32_type)?, cx.empty(&[Size::Dynamic(sort.padded)], i64_type)?];
    let keys = cx.generic(&[], &keys_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let j = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, j, n)?;
        let key = body.if_else(inside, &[f32_type], |b| {
            let i = b.binary("arith.divui", j, foreground)?;
            let class = b.binary("arith.addi", b.binary("arith.remui", j, foreground)?, b.constant_index(1)?)?;
            let probability = class_probability(b, logits, i, class, classes)?;
            let large = large_enough(b, decoded, j, min_size)?;
            let likely = b.compare_floats(CmpfPredicate::Ogt, probability, b.constant_float(score_thresh as f64, f32_type)?)?;
            Ok(vec![b.select(b.binary("arith.andi", likely, large)?, probability, negative_infinity(b)?)?])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[key[0], body.convert("arith.index_cast", j, i64_type)?])
    })?;
    let selected = select_by_nms(cx, &sort, [keys[0], keys[1]], decoded, &|b, c| b.binary("arith.addi", b.binary("arith.remui", c, foreground)?, b.constant_index(1)?), p.nms_thresh, p.detections_per_img)?;
    let boxes = selected.gather_boxes(cx, decoded)?;
    let outputs_init = [cx.empty(&[Size::Dynamic(selected.count)], f32_type)?, cx.empty(&[Size::Dynamic(selected.count)], i64_type)?];
    let scored = cx.generic(&[], &outputs_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let j = slot_position(body, selected.prefix, selected.candidates, body.loop_index(0)?)?;
        let c = body.convert("arith.index_cast", body.extract(selected.indices, &[j])?, body.index_type())?;
        let class = body.binary("arith.addi", body.binary("arith.remui", c, foreground)?, body.constant_index(1)?)?;
        body.yield_values(&[body.extract(selected.keys, &[j])?, body.convert("arith.index_cast", class, i64_type)?])
    })?;
    Ok(vec![boxes, scored[0], scored[1]])
}

/// The RPN's proposals as kernels (the runtime's `rpn_proposals` step by step): the anchors'
/// logits sorted by level, then logit descending (a bitonic sort; a level's anchors keep their
/// range), each level's first `pre_nms_top_n` the candidates, in level order; each decoded
/// against its anchor and clipped, its key the sigmoid of its logit where it passes the
/// small-box test and the score threshold, else −∞; then [`select_by_nms`] with the levels as
/// labels, the first `post_nms_top_n`.
fn rpn_proposals_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    objectness: &[Value<'c, 'b>],
    deltas: &[Value<'c, 'b>],
    anchors: Value<'c, 'b>,
    image_size: Value<'c, 'b>,
    p: &RpnParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let zero = cx.constant_index(0)?;
    // Per level: the anchors per cell, the width, the first anchor, the first candidate.
    let (mut per_cell, mut widths, mut starts, mut firsts) = (vec![], vec![], vec![], vec![]);
    let (mut start, mut first) = (zero, zero);
    let top = cx.constant_index(p.pre_nms_top_n as i64)?;
    for &level in objectness {
        let [a, h, w] = [1, 2, 3].map(|axis| cx.size(level, axis).and_then(|s| cx.size_value(s)));
        let (a, h, w) = (a?, h?, w?);
        let size = cx.binary("arith.muli", cx.binary("arith.muli", a, h)?, w)?;
        per_cell.push(a);
        widths.push(w);
        starts.push(start);
        firsts.push(first);
        start = cx.binary("arith.addi", start, size)?;
        first = cx.binary("arith.addi", first, cx.binary("arith.minui", size, top)?)?;
    }
    let (anchor_count, candidate_count) = (start, first);
    let sort = SortSize::of(cx, anchor_count)?;
    let logits_init = [cx.empty(&[Size::Dynamic(sort.padded)], f32_type)?, cx.empty(&[Size::Dynamic(sort.padded)], i64_type)?];
    let logits = cx.generic(&[], &logits_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let i = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, i, anchor_count)?;
        let logit = body.if_else(inside, &[f32_type], |b| {
            let level = level_index(b, &starts, i)?;
            Ok(vec![per_level(b, level, objectness.len(), 1, &|e, l| Ok(vec![anchor_value(e, objectness[l], starts[l], per_cell[l], widths[l], 1, i, 0)?]))?[0]])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[logit[0], body.convert("arith.index_cast", i, i64_type)?])
    })?;
    let by_level = bitonic_sort(cx, &sort, [logits[0], logits[1]], &|b, own, other| {
        let level = |index| level_index(b, &starts, b.convert("arith.index_cast", index, b.index_type())?);
        let (own_level, other_level) = (level(own.1)?, level(other.1)?);
        let same = b.compare_integers(CmpiPredicate::Eq, own_level, other_level)?;
        let lower = b.compare_integers(CmpiPredicate::Ult, own_level, other_level)?;
        b.binary("arith.ori", lower, b.binary("arith.andi", same, score_first(b, own, other)?)?)
    })?;
    let identity2 = identity_map(2);
    let decoded_init = cx.empty(&[Size::Dynamic(candidate_count), Size::Static(4)], f32_type)?;
    let decoded = cx.generic(&[], &[decoded_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let t = body.loop_index(0)?;
        let level = level_index(body, &firsts, t)?;
        let position = body.binary("arith.addi", select_level(body, level, &starts)?, body.binary("arith.subi", t, select_level(body, level, &firsts)?)?)?;
        let i = body.convert("arith.index_cast", body.extract(by_level[1], &[position])?, body.index_type())?;
        let anchor = |k: i64| body.extract(anchors, &[i, body.constant_index(k)?]);
        let delta = per_level(body, level, deltas.len(), 4, &|e, l| (0..4).map(|j| anchor_value(e, deltas[l], starts[l], per_cell[l], widths[l], 4, i, j)).collect())?;
        let coordinates = decoded_box(body, [anchor(0)?, anchor(1)?, anchor(2)?, anchor(3)?], [delta[0], delta[1], delta[2], delta[3]], image_size, p.weights)?;
        body.yield_values(&[coordinate_at(body, &coordinates, body.loop_index(1)?)?])
    })?[0];
    let candidates = SortSize::of(cx, candidate_count)?;
    let (min_size, score_thresh) = (p.min_size as f32, p.score_thresh as f32);
    let keys_init = [cx.empty(&[Size::Dynamic(candidates.padded)], f32_type)?, cx.empty(&[Size::Dynamic(candidates.padded)], i64_type)?];
    let keys = cx.generic(&[], &keys_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let t = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, t, candidate_count)?;
        let key = body.if_else(inside, &[f32_type], |b| {
            let level = level_index(b, &firsts, t)?;
            let position = b.binary("arith.addi", select_level(b, level, &starts)?, b.binary("arith.subi", t, select_level(b, level, &firsts)?)?)?;
            let score = sigmoid_of(b, b.extract(by_level[0], &[position])?)?;
            let likely = b.compare_floats(CmpfPredicate::Oge, score, b.constant_float(score_thresh as f64, f32_type)?)?;
            let valid = b.binary("arith.andi", likely, large_enough(b, decoded, t, min_size)?)?;
            Ok(vec![b.select(valid, score, negative_infinity(b)?)?])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[key[0], body.convert("arith.index_cast", t, i64_type)?])
    })?;
    let selected = select_by_nms(cx, &candidates, [keys[0], keys[1]], decoded, &|b, t| level_index(b, &firsts, t), p.nms_thresh, p.post_nms_top_n)?;
    Ok(vec![selected.gather_boxes(cx, decoded)?])
}

/// The level of index `i` of a range split into levels starting at `starts` (the first 0).
fn level_index<'c, 'n>(b: &Emitter<'c, 'n>, starts: &[Value<'c, '_>], i: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let mut level = b.constant_index(0)?;
    for &start in &starts[1..] {
        let reached = b.compare_integers(CmpiPredicate::Uge, i, start)?;
        level = b.binary("arith.addi", level, b.select(reached, b.constant_index(1)?, b.constant_index(0)?)?)?;
    }
    Ok(level)
}

/// `values[level]` (as a value of `b`'s block: level 0's selected either way to begin).
fn select_level<'c, 'n>(b: &Emitter<'c, 'n>, level: Value<'c, '_>, values: &[Value<'c, '_>]) -> Result<Value<'c, 'n>, LoweringError> {
    let mut value = b.select(b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(0)?)?, values[0], values[0])?;
    for (l, &v) in values.iter().enumerate().skip(1) {
        value = b.select(b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(l as i64)?)?, v, value)?;
    }
    Ok(value)
}

/// What reads a level's values, in a block of its own.
type LevelRead<'c, 'r> = dyn for<'m> Fn(&Emitter<'c, 'm>, usize) -> Result<Vec<Value<'c, 'm>>, LoweringError> + 'r;

/// The `values` floats `read(level)` gives for the level `level` (0 to `levels − 1`): one
/// `scf.if` per level, so that only that level's tensors are read.
fn per_level<'c, 'n>(
    b: &Emitter<'c, 'n>,
    level: Value<'c, '_>,
    levels: usize,
    values: usize,
    read: &LevelRead<'c, '_>,
) -> Result<Vec<Value<'c, 'n>>, LoweringError> {
    per_level_from(b, level, 0, levels, values, read)
}

fn per_level_from<'c, 'n>(
    b: &Emitter<'c, 'n>,
    level: Value<'c, '_>,
    from: usize,
    levels: usize,
    values: usize,
    read: &LevelRead<'c, '_>,
) -> Result<Vec<Value<'c, 'n>>, LoweringError> {
    if from + 1 == levels {
        return read(b, from);
    }
    let is_level = b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(from as i64)?)?;
    b.if_else(is_level, &vec![b.f32_type(); values], |e| read(e, from), |e| per_level_from(e, level, from + 1, levels, values, read))
}

/// Anchor `i`'s value `j` (of `per` per anchor) in the level map `map` `[1, A·per, H, W]` whose
/// anchors start at `start`, `anchors` per cell, cells `width` per row: channel `k·per + j` of
/// anchor `k` of its cell (cells are row-major, each cell's anchors together).
#[allow(clippy::too_many_arguments)]
fn anchor_value<'c, 'n>(
    b: &Emitter<'c, 'n>,
    map: Value<'c, '_>,
    start: Value<'c, '_>,
    anchors: Value<'c, '_>,
    width: Value<'c, '_>,
    per: i64,
    i: Value<'c, '_>,
    j: i64,
) -> Result<Value<'c, 'n>, LoweringError> {
    let local = b.binary("arith.subi", i, start)?;
    let (cell, k) = (b.binary("arith.divui", local, anchors)?, b.binary("arith.remui", local, anchors)?);
    let (y, x) = (b.binary("arith.divui", cell, width)?, b.binary("arith.remui", cell, width)?);
    let channel = b.binary("arith.addi", b.binary("arith.muli", k, b.constant_index(per)?)?, b.constant_index(j)?)?;
    b.extract(map, &[b.constant_index(0)?, channel, y, x])
}

/// `coordinates[k]`.
fn coordinate_at<'c, 'n>(b: &Emitter<'c, 'n>, coordinates: &[Value<'c, 'n>; 4], k: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let mut value = coordinates[3];
    for j in (0..3).rev() {
        value = b.select(b.compare_integers(CmpiPredicate::Eq, k, b.constant_index(j as i64)?)?, coordinates[j], value)?;
    }
    Ok(value)
}

/// Whether box `row` of `boxes` is at least `min_size` wide and high (`remove_small_boxes`).
fn large_enough<'c, 'n>(b: &Emitter<'c, 'n>, boxes: Value<'c, '_>, row: Value<'c, '_>, min_size: f32) -> Result<Value<'c, 'n>, LoweringError> {
    let coordinate = |k: i64| b.extract(boxes, &[row, b.constant_index(k)?]);
    let min = b.constant_float(min_size as f64, b.f32_type())?;
    let wide = b.compare_floats(CmpfPredicate::Oge, b.subf(coordinate(2)?, coordinate(0)?)?, min)?;
    let high = b.compare_floats(CmpfPredicate::Oge, b.subf(coordinate(3)?, coordinate(1)?)?, min)?;
    b.binary("arith.andi", wide, high)
}

/// The size of a bitonic sort of `n` elements: `padded = 2^bits ≥ max(n, 1)`, and `unit`, a 1
/// the canonicalizer cannot see through, the extent of one-thread kernels (which it would
/// otherwise inline, a loop nest of one iteration, into host code).
struct SortSize<'c, 'b> {
    bits: Value<'c, 'b>,
    padded: Value<'c, 'b>,
    unit: Value<'c, 'b>,
}

impl<'c, 'b> SortSize<'c, 'b> {
    fn of(cx: &Emitter<'c, 'b>, n: Value<'c, 'b>) -> Result<Self, LoweringError> {
        let one = cx.constant_index(1)?;
        let bits = ceil_log2(cx, n)?;
        let padded = cx.binary("arith.shli", one, bits)?;
        Ok(SortSize { bits, padded, unit: cx.binary("arith.minui", padded, one)? })
    }
}

/// A (key, index) pair of a sort.
type Pair<'c, 'n> = (Value<'c, 'n>, Value<'c, 'n>);

/// Whether `own` comes before `other`: the higher score first, the lower index among equal
/// scores (the runtime's stable sort by descending score; −0 and +0 equal).
fn score_first<'c, 'n>(b: &Emitter<'c, 'n>, own: Pair<'c, '_>, other: Pair<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    b.binary(
        "arith.ori",
        b.compare_floats(CmpfPredicate::Ogt, own.0, other.0)?,
        b.binary("arith.andi", b.compare_floats(CmpfPredicate::Oeq, own.0, other.0)?, b.compare_integers(CmpiPredicate::Slt, own.1, other.1)?)?,
    )
}

/// Bitonic sort of (key `f32`, index `i64`) pairs `[padded]` so that `first(own, other)` holds
/// of each element and every later one (a strict total order: indices are distinct): for block
/// sizes 2^k, distances 2^(k−1) down to 1, each compare-exchange pass a kernel (element `i`
/// reads itself and `i ^ distance`), the passes driven by host loops.
fn bitonic_sort<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    size: &SortSize<'c, 'b>,
    pairs: [Value<'c, 'b>; 2],
    first: &dyn for<'n> Fn(&Emitter<'c, 'n>, Pair<'c, 'n>, Pair<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let padded = size.padded;
    cx.for_loop(cx.constant_index(1)?, cx.binary("arith.addi", size.bits, cx.constant_index(1)?)?, &pairs, |outer, a| {
        let k = a[0];
        let block = outer.binary("arith.shli", outer.constant_index(1)?, k)?;
        outer.for_loop(outer.constant_index(0)?, k, &[a[1], a[2]], |inner, b| {
            let step = inner.binary("arith.subi", inner.binary("arith.subi", k, b[0])?, inner.constant_index(1)?)?;
            let distance = inner.binary("arith.shli", inner.constant_index(1)?, step)?;
            let (keys, indices) = (b[1], b[2]);
            let init = [inner.empty(&[Size::Dynamic(padded)], f32_type)?, inner.empty(&[Size::Dynamic(padded)], i64_type)?];
            inner.generic(&[], &init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
                let i = body.loop_index(0)?;
                let partner = body.binary("arith.xori", i, distance)?;
                let own = (body.extract(keys, &[i])?, body.extract(indices, &[i])?);
                let other = (body.extract(keys, &[partner])?, body.extract(indices, &[partner])?);
                let own_first = first(body, own, other)?;
                let lower = body.compare_integers(CmpiPredicate::Ult, i, partner)?;
                let ascending = body.compare_integers(CmpiPredicate::Eq, body.binary("arith.andi", i, block)?, body.constant_index(0)?)?;
                // The lower element of an ascending block takes the first of the two.
                let takes_first = body.compare_integers(CmpiPredicate::Eq, ascending, lower)?;
                let keeps_own = body.compare_integers(CmpiPredicate::Eq, takes_first, own_first)?;
                body.yield_values(&[body.select(keeps_own, own.0, other.0)?, body.select(keeps_own, own.1, other.1)?])
            })
        })
    })
}

/// What [`select_by_nms`] keeps: the candidates sorted (keys and indices), how many passed
/// (`candidates`, first in that order), the inclusive prefix sums of their keep flags, and how
/// many are output (`count`).
struct Selected<'c, 'b> {
    keys: Value<'c, 'b>,
    indices: Value<'c, 'b>,
    candidates: Value<'c, 'b>,
    prefix: Value<'c, 'b>,
    count: Value<'c, 'b>,
}

impl<'c, 'b> Selected<'c, 'b> {
    /// The output boxes `[count, 4]`: row `p` of `boxes` for the candidate of slot `p`.
    fn gather_boxes(&self, cx: &Emitter<'c, 'b>, boxes: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
        let init = cx.empty(&[Size::Dynamic(self.count), Size::Static(4)], cx.f32_type())?;
        let identity2 = identity_map(2);
        Ok(cx.generic(&[], &[init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
            let j = slot_position(body, self.prefix, self.candidates, body.loop_index(0)?)?;
            let c = body.convert("arith.index_cast", body.extract(self.indices, &[j])?, body.index_type())?;
            body.yield_values(&[body.extract(boxes, &[c, body.loop_index(1)?])?])
        })?[0])
    }
}

/// The runtime's `batched_nms` of candidates whose (key, index) pairs are `pairs` (`[padded]`;
/// the key the score where a candidate passed its filters, −∞ otherwise and for padding), boxes
/// `boxes` `[N, 4]` and labels `label(c)`, then the first `limit`:
/// 1. the pairs sorted by score descending, the earlier candidate first among equals (the
///    runtime's stable sort): the `M` candidates that passed come first;
/// 2. greedy NMS as its fixed point (Cluster-NMS): `keep[j]` iff no earlier kept candidate
///    suppresses it, iterated from all-kept until an iteration changes nothing (the host reads
///    the count of changes). As the runtime: up to 1,000 candidates IoUs of boxes shifted apart
///    by label (`label · (max coordinate + 1)`), beyond that unshifted boxes of the same label;
/// 3. the inclusive prefix sum of the keep flags (Hillis–Steele passes), the count of kept
///    candidates read; output slot `p` finds its candidate by binary search.
///
/// Beyond 1,000 candidates the runtime orders kept boxes of equal scores by `std::sort`'s
/// swaps; here they stay in candidate order.
fn select_by_nms<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    size: &SortSize<'c, 'b>,
    pairs: [Value<'c, 'b>; 2],
    boxes: Value<'c, 'b>,
    label: &dyn for<'n> Fn(&Emitter<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
    nms_thresh: f64,
    limit: usize,
) -> Result<Selected<'c, 'b>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let (zero, unit) = (cx.constant_index(0)?, size.unit);
    let threshold = f32_threshold(nms_thresh);
    let sorted = bitonic_sort(cx, size, pairs, &|b, own, other| score_first(b, own, other))?;
    let (sorted_keys, sorted_indices) = (sorted[0], sorted[1]);
    let candidates = device_count(cx, unit, size.padded, |b, j| b.compare_floats(CmpfPredicate::Ogt, b.extract(sorted_keys, &[j])?, negative_infinity(b)?))?;

    let shifted = cx.compare_integers(CmpiPredicate::Ule, candidates, cx.constant_index(1000)?)?;
    let max_init = cx.empty(&[Size::Dynamic(unit)], f32_type)?;
    let max_coordinate = cx.generic(&[], &[max_init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let [zero, four] = [body.constant_index(0)?, body.constant_index(4)?];
        let max = body.for_loop(zero, candidates, &[negative_infinity(body)?], |l, a| {
            let c = l.convert("arith.index_cast", l.extract(sorted_indices, &[a[0]])?, l.index_type())?;
            l.for_loop(l.constant_index(0)?, four, &[a[1]], |m, b| Ok(vec![m.binary("arith.maxnumf", b[1], m.extract(boxes, &[c, b[0]])?)?]))
        })?;
        body.yield_values(&max)
    })?[0];
    let identity2 = identity_map(2);
    let boxes_init = cx.empty(&[Size::Dynamic(candidates), Size::Static(4)], f32_type)?;
    let nms_boxes = cx.generic(&[], &[boxes_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let c = body.convert("arith.index_cast", body.extract(sorted_indices, &[body.loop_index(0)?])?, body.index_type())?;
        let value = body.extract(boxes, &[c, body.loop_index(1)?])?;
        let label = body.convert("arith.sitofp", body.convert("arith.index_cast", label(body, c)?, i64_type)?, f32_type)?;
        let max = body.extract(max_coordinate, &[body.constant_index(0)?])?;
        let offset = body.mulf(label, body.addf(max, body.constant_float(1.0, f32_type)?)?)?;
        body.yield_values(&[body.select(shifted, body.addf(value, offset)?, value)?])
    })?[0];
    let all_init = cx.empty(&[Size::Dynamic(candidates)], i64_type)?;
    let all_kept = cx.fill(cx.constant_integer(1, i64_type)?, all_init)?;
    let converged = cx.for_loop(zero, candidates, &[all_kept, cx.constant_integer(0, cx.element_type(DType::Bool))?], |l, a| {
        let (keep, done) = (a[1], a[2]);
        l.unless(done, &[keep, done], |b| {
            let next_init = b.empty(&[Size::Dynamic(candidates)], i64_type)?;
            let next = b.generic(&[], &[next_init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
                let j = body.loop_index(0)?;
                let true_value = body.constant_integer(1, body.element_type(DType::Bool))?;
                let survives = body.for_loop(body.constant_index(0)?, j, &[true_value], |m, s| {
                    let i = s[0];
                    let kept = m.compare_integers(CmpiPredicate::Ne, m.extract(keep, &[i])?, m.constant_integer(0, i64_type)?)?;
                    let label_at = |position| -> Result<Value<'c, '_>, LoweringError> {
                        label(m, m.convert("arith.index_cast", m.extract(sorted_indices, &[position])?, m.index_type())?)
                    };
                    let same_label = m.compare_integers(CmpiPredicate::Eq, label_at(i)?, label_at(j)?)?;
                    let comparable = m.binary("arith.ori", shifted, same_label)?;
                    let overlaps = m.compare_floats(CmpfPredicate::Ogt, iou(m, nms_boxes, i, j)?, m.constant_float(threshold as f64, f32_type)?)?;
                    let suppresses = m.binary("arith.andi", kept, m.binary("arith.andi", comparable, overlaps)?)?;
                    let not = m.binary("arith.xori", suppresses, m.constant_integer(1, m.element_type(DType::Bool))?)?;
                    Ok(vec![m.binary("arith.andi", s[1], not)?])
                })?;
                body.yield_values(&[body.convert("arith.extui", survives[0], i64_type)?])
            })?[0];
            let changes = device_count(b, unit, candidates, |e, j| e.compare_integers(CmpiPredicate::Ne, e.extract(next, &[j])?, e.extract(keep, &[j])?))?;
            Ok(vec![next, b.compare_integers(CmpiPredicate::Eq, changes, b.constant_index(0)?)?])
        })
    })?;
    let keep = converged[0];

    let prefix = cx.for_loop(zero, ceil_log2(cx, candidates)?, &[keep], |l, a| {
        let distance = l.binary("arith.shli", l.constant_index(1)?, a[0])?;
        let sums = a[1];
        let init = l.empty(&[Size::Dynamic(candidates)], i64_type)?;
        Ok(vec![l.generic(&[], &[init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
            let j = body.loop_index(0)?;
            let reaches = body.compare_integers(CmpiPredicate::Uge, j, distance)?;
            let earlier = body.select(reaches, body.binary("arith.subi", j, distance)?, j)?;
            let addend = body.select(reaches, body.extract(sums, &[earlier])?, body.constant_integer(0, i64_type)?)?;
            body.yield_values(&[body.binary("arith.addi", body.extract(sums, &[j])?, addend)?])
        })?[0]])
    })?[0];
    let kept = device_count(cx, unit, candidates, |b, j| b.compare_integers(CmpiPredicate::Ne, b.extract(keep, &[j])?, b.constant_integer(0, i64_type)?))?;
    let count = cx.binary("arith.minui", kept, cx.constant_index(limit as i64)?)?;
    Ok(Selected { keys: sorted_keys, indices: sorted_indices, candidates, prefix, count })
}

fn negative_infinity<'c, 'n>(b: &Emitter<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError> {
    b.constant_float(f64::NEG_INFINITY, b.f32_type())
}

/// The smallest `bits` with `2^bits ≥ max(n, 1)`, on the host (`n` an index).
fn ceil_log2<'c, 'b>(cx: &Emitter<'c, 'b>, n: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    let at_least_one = cx.binary("arith.maxui", n, cx.constant_index(1)?)?;
    Ok(cx.for_loop(cx.constant_index(0)?, cx.constant_index(63)?, &[cx.constant_index(0)?], |l, a| {
        let below = l.compare_integers(CmpiPredicate::Ult, l.binary("arith.shli", l.constant_index(1)?, a[0])?, at_least_one)?;
        Ok(vec![l.binary("arith.addi", a[1], l.select(below, l.constant_index(1)?, l.constant_index(0)?)?)?])
    })?[0])
}

/// How many of `0..n` satisfy `flag`, counted by a kernel (one thread: `unit` is an opaque 1)
/// and read by the host.
fn device_count<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    unit: Value<'c, '_>,
    n: Value<'c, 'b>,
    flag: impl for<'n> Fn(&Emitter<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
) -> Result<Value<'c, 'b>, LoweringError> {
    let i64_type = cx.element_type(DType::I64);
    let init = cx.empty(&[Size::Dynamic(unit)], i64_type)?;
    let counted = cx.generic(&[], &[init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let total = body.for_loop(body.constant_index(0)?, n, &[body.constant_integer(0, i64_type)?], |l, a| {
            Ok(vec![l.binary("arith.addi", a[1], l.convert("arith.extui", flag(l, a[0])?, i64_type)?)?])
        })?;
        body.yield_values(&total)
    })?[0];
    let count = cx.call_runtime(RuntimeFunction::Count, &[counted], &[i64_type])?[0];
    cx.convert("arith.index_cast", count, cx.index_type())
}

/// The sorted position of output slot `slot`: the first whose inclusive prefix sum of keep
/// flags (`prefix`, `n` long) exceeds `slot` (binary search).
fn slot_position<'c, 'n>(b: &Emitter<'c, 'n>, prefix: Value<'c, '_>, n: Value<'c, '_>, slot: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let i64_type = b.element_type(DType::I64);
    let target = b.convert("arith.index_cast", b.binary("arith.addi", slot, b.constant_index(1)?)?, i64_type)?;
    let last = b.binary("arith.subi", n, b.constant_index(1)?)?;
    let bounds = b.for_loop(b.constant_index(0)?, b.constant_index(64)?, &[b.constant_index(0)?, n], |l, a| {
        let (low, high) = (a[1], a[2]);
        let active = l.compare_integers(CmpiPredicate::Ult, low, high)?;
        let middle = l.binary("arith.minui", l.binary("arith.divui", l.binary("arith.addi", low, high)?, l.constant_index(2)?)?, last)?;
        let below = l.compare_integers(CmpiPredicate::Slt, l.extract(prefix, &[middle])?, target)?;
        let next_low = l.select(below, l.binary("arith.addi", middle, l.constant_index(1)?)?, low)?;
        let next_high = l.select(below, high, middle)?;
        Ok(vec![l.select(active, next_low, low)?, l.select(active, next_high, high)?])
    })?;
    Ok(bounds[0])
}

/// The IoU of the boxes at rows `i` (the earlier, kept one) and `j` of `boxes`, as the
/// runtime's `nms::iou`.
fn iou<'c, 'n>(b: &Emitter<'c, 'n>, boxes: Value<'c, '_>, i: Value<'c, '_>, j: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let coordinates = |row| -> Result<Vec<Value<'c, 'n>>, LoweringError> { (0..4).map(|k| b.extract(boxes, &[row, b.constant_index(k)?])).collect() };
    let (a, o) = (coordinates(i)?, coordinates(j)?);
    let zero = b.constant_float(0.0, b.f32_type())?;
    let (xx1, yy1) = (b.binary("arith.maxnumf", a[0], o[0])?, b.binary("arith.maxnumf", a[1], o[1])?);
    let (xx2, yy2) = (b.binary("arith.minnumf", a[2], o[2])?, b.binary("arith.minnumf", a[3], o[3])?);
    let inter = b.mulf(b.binary("arith.maxnumf", b.subf(xx2, xx1)?, zero)?, b.binary("arith.maxnumf", b.subf(yy2, yy1)?, zero)?)?;
    let area = |c: &[Value<'c, 'n>]| b.mulf(b.subf(c[2], c[0])?, b.subf(c[3], c[1])?);
    b.divf(inter, b.subf(b.addf(area(&a)?, area(&o)?)?, inter)?)
}

/// A box (`x1, y1, x2, y2`) decoded from `deltas` against `reference` (the box coder's weights
/// and clamp) and clipped to the image, as the runtime's `BoxCoder::decode` and
/// `clip_boxes_to_image`.
fn decoded_box<'c, 'n>(
    b: &Emitter<'c, 'n>,
    reference: [Value<'c, 'n>; 4],
    deltas: [Value<'c, 'n>; 4],
    image_size: Value<'c, '_>,
    weights: [f32; 4],
) -> Result<[Value<'c, 'n>; 4], LoweringError> {
    let f32_type = b.f32_type();
    let float = |v: f32| b.constant_float(v as f64, f32_type);
    let [x1, y1, x2, y2] = reference;
    let (w, h) = (b.subf(x2, x1)?, b.subf(y2, y1)?);
    let (center_x, center_y) = (b.addf(x1, b.mulf(float(0.5)?, w)?)?, b.addf(y1, b.mulf(float(0.5)?, h)?)?);
    let delta = |k: usize| b.divf(deltas[k], float(weights[k])?);
    let clip = float(BoxCoder::new(weights).bbox_xform_clip)?;
    let (dx, dy) = (delta(0)?, delta(1)?);
    let (dw, dh) = (b.binary("arith.minnumf", delta(2)?, clip)?, b.binary("arith.minnumf", delta(3)?, clip)?);
    let (pcx, pcy) = (b.addf(b.mulf(dx, w)?, center_x)?, b.addf(b.mulf(dy, h)?, center_y)?);
    let (pw, ph) = (b.mulf(b.unary("math.exp", dw)?, w)?, b.mulf(b.unary("math.exp", dh)?, h)?);
    let (hw, hh) = (b.mulf(float(0.5)?, pw)?, b.mulf(float(0.5)?, ph)?);
    let side = |k: i64| b.convert("arith.sitofp", b.extract(image_size, &[b.constant_index(k)?])?, f32_type);
    let (height, width) = (side(0)?, side(1)?);
    // `f32::clamp(0, high)`: below 0 is 0, then above `high` is `high`.
    let clamp = |v, high| -> Result<Value<'c, 'n>, LoweringError> {
        let zero = float(0.0)?;
        let v = b.select(b.compare_floats(CmpfPredicate::Olt, v, zero)?, zero, v)?;
        b.select(b.compare_floats(CmpfPredicate::Ogt, v, high)?, high, v)
    };
    Ok([
        clamp(b.subf(pcx, hw)?, width)?,
        clamp(b.subf(pcy, hh)?, height)?,
        clamp(b.addf(pcx, hw)?, width)?,
        clamp(b.addf(pcy, hh)?, height)?,
    ])
}

/// Row `i`'s softmax probability of `class` (torch's: the maximum subtracted, exponentials
/// summed in order), as the runtime's `softmax`.
fn class_probability<'c, 'n>(b: &Emitter<'c, 'n>, logits: Value<'c, '_>, i: Value<'c, '_>, class: Value<'c, '_>, classes: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let f32_type = b.f32_type();
    let zero = b.constant_index(0)?;
    let max = b.for_loop(zero, classes, &[b.constant_float(f64::NEG_INFINITY, f32_type)?], |l, a| {
        Ok(vec![l.binary("arith.maxnumf", a[1], l.extract(logits, &[i, a[0]])?)?])
    })?[0];
    let sum = b.for_loop(zero, classes, &[b.constant_float(0.0, f32_type)?], |l, a| {
        Ok(vec![l.addf(a[1], l.unary("math.exp", l.subf(l.extract(logits, &[i, a[0]])?, max)?)?)?])
    })?[0];
    b.divf(b.unary("math.exp", b.subf(b.extract(logits, &[i, class])?, max)?)?, sum)
}

runtime_operator!(
    /// Mask probabilities: the sigmoid of each detection's logits for its own label
    /// (or of the single channel of a class-agnostic head).
    MaskProbs, "mask_probs",
    inputs: [input("logits"), input("labels")],
    attrs: [],
    infer: |inputs, attrs| {
        let (logits, labels) = (&inputs[0][0], &inputs[1][0]);
        expect_rank("mask_probs", 0, logits, "D, classes, M, M")?;
        if labels.dtype != DType::I64 || labels.dims != logits.dims[..1] {
            return Err(OpError::at_input(1, format!("labels {labels} are not one i64 per mask of {logits}")));
        }
        let mut dims = logits.dims.clone();
        dims[1] = Dim::known(1);
        Ok(Inference::output(TensorType::f32(dims)))
    },
    lower: |cx, node, slots| {
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::MaskProbs, (), &[slots[0][0], slots[1][0]]),
            BuiltIns::Kernels => mask_probs_kernel(cx, slots[0][0], slots[1][0]),
        }
    }
);

/// `[D, 1, M, M]`: the sigmoid of channel `labels[d]` of `logits[d]`, the label clamped into
/// the channels (so a class-agnostic head's one channel serves every label).
fn mask_probs_kernel<'c, 'b>(cx: &Emitter<'c, 'b>, logits: Value<'c, 'b>, labels: Value<'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let sizes = cx.sizes(logits)?;
    let last_channel = cx.size_value(cx.size_add(sizes[1], -1)?)?;
    let zero = cx.constant_index(0)?;
    let init = cx.empty(&[sizes[0], Size::Static(1), sizes[2], sizes[3]], cx.f32_type())?;
    let maps = ["(d, c, y, x) -> (d)", "(d, c, y, x) -> (d, c, y, x)"];
    cx.generic(&[labels], &[init], &maps, &[Iterator::Parallel; 4], |body| {
        let label = body.convert("arith.index_cast", body.arg(0)?, body.index_type())?;
        let channel = body.binary("arith.minsi", body.binary("arith.maxsi", label, zero)?, last_channel)?;
        let logit = body.extract(logits, &[body.loop_index(0)?, channel, body.loop_index(2)?, body.loop_index(3)?])?;
        body.yield_values(&[sigmoid_of(body, logit)?])
    })
}

runtime_operator!(
    /// Boxes from the resized frame (`from`, an image size) back to the original image.
    RescaleBoxes, "rescale_boxes",
    inputs: [input("boxes"), input("from"), input("to")],
    attrs: [],
    infer: |inputs, attrs| {
        let d = boxes("rescale_boxes", 0, &inputs[0][0])?;
        image_size("rescale_boxes", 1, &inputs[1][0])?;
        image("rescale_boxes", 2, &inputs[2][0])?;
        Ok(Inference::output(TensorType::f32(vec![d, Dim::known(4)])))
    },
    lower: |cx, node, slots| {
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::RescaleBoxes, (), &[slots[0][0], slots[1][0], slots[2][0]]),
            BuiltIns::Kernels => rescale_boxes_kernel(cx, slots[0][0], slots[1][0], slots[2][0]),
        }
    }
);

/// `[D, 4]`: x coordinates times `to` width / `from` width, y coordinates by the heights
/// (torchvision's `resize_boxes`, ratios in float32).
fn rescale_boxes_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    boxes: Value<'c, 'b>,
    from: Value<'c, 'b>,
    to: Value<'c, 'b>,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let to_height = cx.index_to_f32(cx.size_value(cx.size(to, 0)?)?)?;
    let to_width = cx.index_to_f32(cx.size_value(cx.size(to, 1)?)?)?;
    let [zero, one, two] = [cx.constant_index(0)?, cx.constant_index(1)?, cx.constant_index(2)?];
    Ok(vec![cx.elementwise(&[boxes], |body| {
        let from_side = |axis| body.convert("arith.sitofp", body.extract(from, &[axis])?, body.f32_type());
        let height_ratio = body.divf(to_height, from_side(zero)?)?;
        let width_ratio = body.divf(to_width, from_side(one)?)?;
        // Coordinates x1, y1, x2, y2: even ones are along the width.
        let along_width = body.compare_integers(CmpiPredicate::Eq, body.binary("arith.remui", body.loop_index(1)?, two)?, zero)?;
        let ratio = body.select(along_width, width_ratio, height_ratio)?;
        body.yield_values(&[body.mulf(body.arg(0)?, ratio)?])
    })?])
}

runtime_operator!(
    /// Pastes M×M mask probabilities into the image at their boxes (expanded by (M+2)/M,
    /// bilinear), giving soft masks of the image's size.
    PasteMasks, "paste_masks",
    inputs: [input("masks"), input("boxes"), input("image")],
    attrs: [attr("padding", Int, Default::Int(1)).at_least(0)],
    infer: |inputs, attrs| {
        let masks = &inputs[0][0];
        expect_rank("paste_masks", 0, masks, "D, 1, M, M")?;
        let d = boxes("paste_masks", 1, &inputs[1][0])?;
        if masks.dims[0] != d || masks.dims[1] != Dim::known(1) {
            return Err(OpError::at_input(0, format!("masks {masks} are not one [1, M, M] mask per box of {}", inputs[1][0])));
        }
        let (h, w) = image("paste_masks", 2, &inputs[2][0])?;
        Ok(Inference::output(TensorType::f32(vec![d, Dim::known(1), h, w])))
    },
    lower: |cx, node, slots| {
        let params = PasteParams { padding: node.attrs.int("padding") as usize };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::PasteMasks, params, &[slots[0][0], slots[1][0], slots[2][0]]),
            BuiltIns::Kernels => paste_masks_kernel(cx, slots[0][0], slots[1][0], slots[2][0], params.padding),
        }
    }
);

/// `[D, 1, H, W]`, a pixel per element (the runtime's `ops::paste_masks`, torchvision's
/// `paste_masks_in_image`): the box expanded by (M + 2·padding)/M and truncated to integers, and
/// inside it the zero-padded mask resized bilinearly to the box's `x2 − x1 + 1` by
/// `y2 − y1 + 1` pixels; 0 outside.
fn paste_masks_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    masks: Value<'c, 'b>,
    boxes: Value<'c, 'b>,
    image: Value<'c, 'b>,
    padding: usize,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let sizes = cx.sizes(masks)?;
    let (f32_type, f64_type, i64_type) = (cx.f32_type(), cx.element_type(DType::F64), cx.element_type(DType::I64));
    let mask_size = cx.size_value(sizes[2])?;
    let padded_size = cx.size_value(cx.size_add(sizes[2], 2 * padding as i64)?)?;
    let to_f64 = |index: Value<'c, 'b>| cx.convert("arith.sitofp", cx.convert("arith.index_cast", index, i64_type)?, f64_type);
    // torch multiplies a float32 tensor by a Python float: the factor is rounded to float32.
    let scale = cx.convert("arith.truncf", cx.divf(to_f64(padded_size)?, to_f64(mask_size)?)?, f32_type)?;
    let padding = cx.constant_index(padding as i64)?;
    let init = cx.empty(&[sizes[0], Size::Static(1), cx.size(image, 0)?, cx.size(image, 1)?], f32_type)?;
    let identity = identity_map(4);
    cx.generic(&[], &[init], &[identity.as_str()], &[Iterator::Parallel; 4], |body| {
        let (d, y, x) = (body.loop_index(0)?, body.loop_index(2)?, body.loop_index(3)?);
        let coordinate = |j| body.extract(boxes, &[d, body.constant_index(j)?]);
        let (x1, y1, x2, y2) = (coordinate(0)?, coordinate(1)?, coordinate(2)?, coordinate(3)?);
        let half = body.constant_float(0.5, f32_type)?;
        let (w_half, h_half) = (body.mulf(body.mulf(body.subf(x2, x1)?, half)?, scale)?, body.mulf(body.mulf(body.subf(y2, y1)?, half)?, scale)?);
        let (x_center, y_center) = (body.mulf(body.addf(x2, x1)?, half)?, body.mulf(body.addf(y2, y1)?, half)?);
        // Truncated toward zero, as `as i64`.
        let truncated = |v| body.convert("arith.index_cast", body.convert("arith.fptosi", v, i64_type)?, body.index_type());
        let (left, right) = (truncated(body.subf(x_center, w_half)?)?, truncated(body.addf(x_center, w_half)?)?);
        let (top, bottom) = (truncated(body.subf(y_center, h_half)?)?, truncated(body.addf(y_center, h_half)?)?);
        let mut inside = body.compare_integers(CmpiPredicate::Sge, x, left)?;
        for (predicate, lhs, rhs) in [(CmpiPredicate::Sle, x, right), (CmpiPredicate::Sge, y, top), (CmpiPredicate::Sle, y, bottom)] {
            inside = body.binary("arith.andi", inside, body.compare_integers(predicate, lhs, rhs)?)?;
        }
        let pasted = body.if_else(inside, &[f32_type], |b| {
            let one = b.constant_index(1)?;
            let extent = |low, high| b.binary("arith.maxsi", b.binary("arith.addi", b.binary("arith.subi", high, low)?, one)?, one);
            let tx = ResizeTap::of(b, padded_size, extent(left, right)?, b.binary("arith.subi", x, left)?)?;
            let ty = ResizeTap::of(b, padded_size, extent(top, bottom)?, b.binary("arith.subi", y, top)?)?;
            // The padded mask: the mask's pixel, 0 in the padding (read clamped, then dropped).
            let zero = b.constant_index(0)?;
            let last = b.binary("arith.subi", mask_size, one)?;
            let zero_value = b.constant_float(0.0, f32_type)?;
            let padded = |py, px| {
                let (my, mx) = (b.binary("arith.subi", py, padding)?, b.binary("arith.subi", px, padding)?);
                let mut within = b.compare_integers(CmpiPredicate::Sge, my, zero)?;
                for (predicate, lhs, rhs) in [(CmpiPredicate::Sle, my, last), (CmpiPredicate::Sge, mx, zero), (CmpiPredicate::Sle, mx, last)] {
                    within = b.binary("arith.andi", within, b.compare_integers(predicate, lhs, rhs)?)?;
                }
                let clamped = |i| b.binary("arith.minsi", b.binary("arith.maxsi", i, zero)?, last);
                let value = b.extract(masks, &[d, zero, clamped(my)?, clamped(mx)?])?;
                b.select(within, value, zero_value)
            };
            Ok(vec![interpolated(b, padded, &ty, &tx)?])
        }, |b| Ok(vec![b.constant_float(0.0, f32_type)?]))?;
        body.yield_values(&pasted)
    })
}

/// One output index of a 1-D bilinear resize (`torch.nn.functional.interpolate`,
/// `align_corners=False`; the runtime's `interpolate::tap`): its two source indices and their
/// weights. (The runtime's shortcut for equal sizes gives the same values.)
struct ResizeTap<'c, 'n> {
    low: Value<'c, 'n>,
    high: Value<'c, 'n>,
    low_weight: Value<'c, 'n>,
    high_weight: Value<'c, 'n>,
}

impl<'c, 'n> ResizeTap<'c, 'n> {
    /// The tap of output index `i` resizing `input` samples to `output` (`index` values).
    fn of(b: &Emitter<'c, 'n>, input: Value<'c, '_>, output: Value<'c, '_>, i: Value<'c, '_>) -> Result<Self, LoweringError> {
        let float = |v: f64| b.constant_float(v, b.f32_type());
        let ratio = b.divf(b.index_to_f32(input)?, b.index_to_f32(output)?)?;
        let source = b.subf(b.mulf(ratio, b.addf(b.index_to_f32(i)?, float(0.5)?)?)?, float(0.5)?)?;
        let source = b.binary("arith.maxnumf", source, float(0.0)?)?;
        let last = b.binary("arith.subi", input, b.constant_index(1)?)?;
        let low = b.binary("arith.minsi", b.floor_to_index(source)?, last)?;
        let high_weight = b.binary("arith.minnumf", b.binary("arith.maxnumf", b.subf(source, b.index_to_f32(low)?)?, float(0.0)?)?, float(1.0)?)?;
        let before_last = b.compare_integers(CmpiPredicate::Slt, low, last)?;
        let high = b.select(before_last, b.binary("arith.addi", low, b.constant_index(1)?)?, low)?;
        Ok(ResizeTap { low, high, low_weight: b.subf(float(1.0)?, high_weight)?, high_weight })
    }
}

/// The bilinear value at taps `ty` (rows) and `tx` (columns) of the plane `at` reads, along the
/// width first as torch's kernel (the runtime's `interpolate::sample`).
fn interpolated<'c, 'n>(
    b: &Emitter<'c, 'n>,
    at: impl Fn(Value<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
    ty: &ResizeTap<'c, 'n>,
    tx: &ResizeTap<'c, 'n>,
) -> Result<Value<'c, 'n>, LoweringError> {
    let row = |y| b.addf(b.mulf(at(y, tx.low)?, tx.low_weight)?, b.mulf(at(y, tx.high)?, tx.high_weight)?);
    b.addf(b.mulf(row(ty.low)?, ty.low_weight)?, b.mulf(row(ty.high)?, ty.high_weight)?)
}

runtime_operator!(
    /// Keypoint heatmaps [D, K, S, S] to keypoints [D, K, 3] (x, y, visibility) in image
    /// coordinates, and their scores [D, K] (Mask R-CNN section 5).
    HeatmapsToKeypoints, "heatmaps_to_keypoints",
    inputs: [input("heatmaps"), input("boxes")],
    attrs: [],
    infer: |inputs, attrs| {
        let maps = &inputs[0][0];
        expect_rank("heatmaps_to_keypoints", 0, maps, "D, K, S, S")?;
        let d = boxes("heatmaps_to_keypoints", 1, &inputs[1][0])?;
        let k = maps.dims[1].clone();
        Ok(Inference {
            outputs: vec![TensorType::f32(vec![d.clone(), k.clone(), Dim::known(3)]), TensorType::f32(vec![d, k])],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        call(cx, node, RuntimeFunction::HeatmapsToKeypoints, (), &[slots[0][0], slots[1][0]])
    }
);
