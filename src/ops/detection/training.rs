//! The training built-ins: torchvision's target assignment, samplers and losses
//! (`RegionProposalNetwork` and `RoIHeads` in training mode), the batched RPN proposals and
//! RoIAlign they feed, and the backward operators of the differentiable ones. All are calls into
//! the runtime (`mrc_runtime::training`). Ground truth and proposals of a batch are
//! concatenated image by image, with an image index per row; counts are symbolic: proposals
//! `P`, sampled RoIs `R`, positive RoIs `Q`. Randomness enters only through keys
//! (`uniform_keys`), so that a run can replay a recorded choice.

use super::*;
use mrc_runtime::abi::training::{KeyParams, MaskTargetParams, SmoothL1Params};
use mrc_runtime::ops::sampler::Sampler;
use mrc_runtime::training::{AnchorMatchParams, RoiSamplingParams};

/// torchvision's smooth-L1 `beta` for both box losses.
const BETA: f64 = 1.0 / 9.0;

/// A batch's sizes, i64[N, 2]; returns N.
fn image_sizes(op: &str, slot: usize, ty: &TensorType) -> Result<Dim, OpError> {
    if ty.dtype != DType::I64 || ty.rank() != 2 || ty.dims[1] != Dim::known(2) {
        return Err(OpError::at_input(slot, format!("`{op}` expects the batch's image sizes i64[N, 2], found {ty}")));
    }
    Ok(ty.dims[0].clone())
}

/// A per-row index or label, i64[K]; returns K.
fn indices(op: &str, slot: usize, ty: &TensorType, what: &str) -> Result<Dim, OpError> {
    if ty.dtype != DType::I64 || ty.rank() != 1 {
        return Err(OpError::at_input(slot, format!("`{op}` expects {what} i64[K], found {ty}")));
    }
    Ok(ty.dims[0].clone())
}

/// `slot` holds a tensor of `dims` (same sizes as another input's).
fn same_dims(op: &str, slot: usize, ty: &TensorType, dims: &[Dim], what: &str) -> Result<(), OpError> {
    if ty.dims != dims {
        return Err(OpError::at_input(slot, format!("`{op}` expects {what} of sizes {dims:?}, found {ty}")));
    }
    Ok(())
}

fn scalar() -> TensorType {
    TensorType::f32(vec![])
}

fn no_gradient(cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
    Ok(vec![None; cx.inputs.len()])
}

fn sampler(attrs: &Attrs) -> Sampler {
    Sampler { batch_size_per_image: attrs.int("batch_size_per_image") as usize, positive_fraction: attrs.float("positive_fraction") }
}

runtime_operator!(
    /// The RPN's proposals for each image of a batch (torchvision's `filter_proposals` in
    /// training mode: top-n before and after NMS per image), and the image of each.
    RpnProposalsBatch, "rpn_proposals_batch",
    inputs: [list_input("objectness"), list_input("deltas"), input("anchors"), input("image_sizes")],
    attrs: [
        attr("pre_nms_top_n", Int, Default::Int(2000)).at_least(0),
        attr("post_nms_top_n", Int, Default::Int(2000)).at_least(0),
        attr("nms_thresh", Float, Default::Float(RPN.nms_thresh)).between(0.0, 1.0),
        attr("min_size", Float, Default::Float(RPN.min_size)).at_least(0),
        attr("score_thresh", Float, Default::Float(RPN.score_thresh)).between(0.0, 1.0),
        attr("weights", Floats, Default::Floats(&RPN_WEIGHTS)).positive(),
    ],
    infer: |inputs, attrs| {
        if inputs[0].len() != inputs[1].len() {
            return Err(OpError::at_input(1, format!("{} objectness maps but {} delta maps", inputs[0].len(), inputs[1].len())));
        }
        boxes("rpn_proposals_batch", 2, &inputs[2][0])?;
        image_sizes("rpn_proposals_batch", 3, &inputs[3][0])?;
        if attrs.floats("weights").len() != 4 {
            return Err(OpError::at_attr("weights", "box coder `weights` are four numbers (wx, wy, ww, wh)"));
        }
        let p = Dim::symbol("P");
        Ok(Inference { outputs: vec![TensorType::f32(vec![p.clone(), Dim::known(4)]), TensorType::new(DType::I64, vec![p])], state: vec![] })
    },
    lower: |cx, node, slots| {
        let params = rpn_params(node.attrs);
        let (objectness, objectness_shapes) = cx.pack(&slots[0])?;
        let (deltas, deltas_shapes) = cx.pack(&slots[1])?;
        call(cx, node, RuntimeFunction::RpnProposalsBatched, params, &[objectness, objectness_shapes, deltas, deltas_shapes, slots[2][0], slots[3][0]])
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// Each anchor's label per image (1 foreground, 0 background, −1 ignored: torchvision's
    /// `Matcher` with low-quality matches) and its regression target, the matched box encoded.
    MatchAnchors, "match_anchors",
    inputs: [input("anchors"), input("gt_boxes"), input("gt_image"), input("image_sizes")],
    attrs: [
        attr("fg_iou", Float, Default::Float(0.7)).between(0.0, 1.0),
        attr("bg_iou", Float, Default::Float(0.3)).between(0.0, 1.0),
        attr("allow_low_quality", Bool, Default::Bool(true)),
        attr("weights", Floats, Default::Floats(&[1.0, 1.0, 1.0, 1.0])).positive(),
    ],
    infer: |inputs, attrs| {
        let a = boxes("match_anchors", 0, &inputs[0][0])?;
        let g = boxes("match_anchors", 1, &inputs[1][0])?;
        same_dims("match_anchors", 2, &inputs[2][0], &[g], "one image index per box")?;
        let n = image_sizes("match_anchors", 3, &inputs[3][0])?;
        if attrs.float("bg_iou") > attrs.float("fg_iou") {
            return Err(OpError::at_attr("bg_iou", "`bg_iou` must not exceed `fg_iou`"));
        }
        Ok(Inference {
            outputs: vec![TensorType::f32(vec![n.clone(), a.clone()]), TensorType::f32(vec![n, a, Dim::known(4)])],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        let params = AnchorMatchParams {
            fg_iou: node.attrs.float("fg_iou"),
            bg_iou: node.attrs.float("bg_iou"),
            allow_low_quality_matches: node.attrs.flag("allow_low_quality"),
            weights: box_weights(node.attrs),
        };
        call(cx, node, RuntimeFunction::MatchAnchors, params, &[slots[0][0], slots[1][0], slots[2][0], slots[3][0]])
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// Uniform keys in [0, 1), one per element of `like`, from the step's `seed` and the
    /// sampler's `stream` (a counter-based hash: the same seed gives the same keys).
    UniformKeys, "uniform_keys",
    inputs: [input("seed"), input("like")],
    attrs: [attr("stream", Int, Default::Int(0)).at_least(0)],
    infer: |inputs, attrs| {
        let seed = &inputs[0][0];
        if seed.dtype != DType::I64 || seed.dims != [Dim::known(1)] {
            return Err(OpError::at_input(0, format!("`uniform_keys` expects a seed i64[1], found {seed}")));
        }
        Ok(Inference::output(TensorType::f32(inputs[1][0].dims.clone())))
    },
    lower: |cx, node, slots| {
        let like = slots[1][0];
        let sizes = cx.sizes(like)?;
        let mut count = cx.constant_index(1)?;
        for &size in &sizes {
            count = cx.binary("arith.muli", count, cx.size_value(size)?)?;
        }
        let count = cx.index_tensor(&[Size::Dynamic(count)])?;
        let flat_type = cx.ranked_tensor(&[None], cx.f32_type());
        let keys = cx.call_runtime(RuntimeFunction::UniformKeys, &[cx.f64_words(&KeyParams { stream: node.attrs.int("stream") as u64 }.encode())?, slots[0][0], count], &[flat_type])?[0];
        Ok(vec![cx.reshape(keys, &sizes, cx.tensor_type(&node.outputs[0]))?])
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// torchvision's `BalancedPositiveNegativeSampler` per image (row): of the candidates
    /// labelled 1 and 0, the `positive_fraction` share of `batch_size_per_image` positives and
    /// the rest negatives with the smallest keys. Masks (0 or 1) of the positives and of all
    /// sampled.
    BalancedSample, "balanced_sample",
    inputs: [input("labels"), input("keys")],
    attrs: [
        attr("batch_size_per_image", Int, Default::Int(256)).at_least(1),
        attr("positive_fraction", Float, Default::Float(0.5)).between(0.0, 1.0),
    ],
    infer: |inputs, attrs| {
        let labels = &inputs[0][0];
        expect_rank("balanced_sample", 0, labels, "N, K")?;
        same_dims("balanced_sample", 1, &inputs[1][0], &labels.dims, "keys")?;
        Ok(Inference { outputs: vec![labels.clone(), labels.clone()], state: vec![] })
    },
    lower: |cx, node, slots| {
        call(cx, node, RuntimeFunction::BalancedSample, sampler(node.attrs), &[slots[0][0], slots[1][0]])
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// The RPN's losses over the sampled anchors: objectness BCE (mean over the sampled) and
    /// smooth-L1 on the positives' deltas (summed, divided by the number sampled).
    RpnLoss, "rpn_loss",
    inputs: [list_input("objectness"), list_input("deltas"), input("labels"), input("targets"), input("positive"), input("sampled")],
    attrs: [attr("beta", Float, Default::Float(BETA)).positive()],
    infer: |inputs, attrs| {
        if inputs[0].len() != inputs[1].len() {
            return Err(OpError::at_input(1, format!("{} objectness maps but {} delta maps", inputs[0].len(), inputs[1].len())));
        }
        expect_rank("rpn_loss", 2, &inputs[2][0], "N, A")?;
        expect_rank("rpn_loss", 3, &inputs[3][0], "N, A, 4")?;
        Ok(Inference { outputs: vec![scalar(), scalar()], state: vec![] })
    },
    lower: |cx, node, slots| {
        let (objectness, objectness_shapes) = cx.pack(&slots[0])?;
        let (deltas, deltas_shapes) = cx.pack(&slots[1])?;
        let params = SmoothL1Params { beta: node.attrs.float("beta") };
        call(cx, node, RuntimeFunction::RpnLoss, params, &[objectness, objectness_shapes, deltas, deltas_shapes, slots[2][0], slots[3][0], slots[4][0], slots[5][0]])
    },
    gradient: |cx| {
        let levels = (cx.inputs.len() - 4) / 2;
        let grads = [cx.output_grad(0)?, cx.output_grad(1)?];
        let mut slots: Vec<Vec<Port>> = vec![cx.inputs[..levels].to_vec(), cx.inputs[levels..2 * levels].to_vec()];
        slots.extend(cx.inputs[2 * levels..].iter().map(|&p| vec![p]));
        slots.extend(grads.map(|g| vec![g]));
        let maps = cx.add(&RpnLossBackward, cx.attrs.clone(), &slots)?;
        let mut result: Vec<Option<Port>> = maps.into_iter().map(Some).collect();
        result.extend([None; 4]);
        Ok(result)
    }
);

runtime_operator!(
    /// The gradients of `rpn_loss`'s objectness and delta maps (in that order, like them).
    RpnLossBackward, "rpn_loss_backward",
    inputs: [list_input("objectness"), list_input("deltas"), input("labels"), input("targets"), input("positive"), input("sampled"), input("grad_objectness"), input("grad_box")],
    attrs: [attr("beta", Float, Default::Float(BETA)).positive()],
    infer: |inputs, attrs| {
        Ok(Inference { outputs: inputs[0].iter().chain(&inputs[1]).cloned().collect(), state: vec![] })
    },
    lower: |cx, node, slots| {
        let (objectness, objectness_shapes) = cx.pack(&slots[0])?;
        let (deltas, deltas_shapes) = cx.pack(&slots[1])?;
        let params = SmoothL1Params { beta: node.attrs.float("beta") };
        let flat = cx.ranked_tensor(&[None], cx.f32_type());
        let shapes = cx.ranked_tensor(&[None, None], cx.element_type(DType::I64));
        let arguments = [cx.f64_words(&params.encode())?, objectness, objectness_shapes, deltas, deltas_shapes, slots[2][0], slots[3][0], slots[4][0], slots[5][0], slots[6][0], slots[7][0]];
        let packed = cx.call_runtime(RuntimeFunction::RpnLossBackward, &arguments, &[flat, shapes, flat, shapes])?;
        let mut grads = cx.unpack(packed[0], &slots[0])?;
        grads.extend(cx.unpack(packed[2], &slots[1])?);
        Ok(grads)
    }
);

runtime_operator!(
    /// torchvision's `select_training_samples`: per image, its proposals with its ground-truth
    /// boxes appended, matched (`fg_iou`/`bg_iou`, no low-quality matches), sampled with the
    /// keys (proposals' then ground truth's), and encoded. The sampled RoIs, their images,
    /// labels (0 background), regression targets and matched ground-truth rows.
    SampleRois, "sample_rois",
    inputs: [input("proposals"), input("proposal_image"), input("gt_boxes"), input("gt_labels"), input("gt_image"),
        input("proposal_keys"), input("gt_keys"), input("image_sizes")],
    attrs: [
        attr("batch_size_per_image", Int, Default::Int(512)).at_least(1),
        attr("positive_fraction", Float, Default::Float(0.25)).between(0.0, 1.0),
        attr("fg_iou", Float, Default::Float(0.5)).between(0.0, 1.0),
        attr("bg_iou", Float, Default::Float(0.5)).between(0.0, 1.0),
        attr("weights", Floats, Default::Floats(&DETECTION_WEIGHTS)).positive(),
    ],
    infer: |inputs, attrs| {
        let p = boxes("sample_rois", 0, &inputs[0][0])?;
        same_dims("sample_rois", 1, &inputs[1][0], &[p.clone()], "one image index per proposal")?;
        let g = boxes("sample_rois", 2, &inputs[2][0])?;
        indices("sample_rois", 3, &inputs[3][0], "ground-truth labels")?;
        same_dims("sample_rois", 4, &inputs[4][0], &[g.clone()], "one image index per box")?;
        same_dims("sample_rois", 5, &inputs[5][0], &[p], "one key per proposal")?;
        same_dims("sample_rois", 6, &inputs[6][0], &[g], "one key per box")?;
        image_sizes("sample_rois", 7, &inputs[7][0])?;
        if attrs.floats("weights").len() != 4 {
            return Err(OpError::at_attr("weights", "box coder `weights` are four numbers (wx, wy, ww, wh)"));
        }
        let r = Dim::symbol("R");
        let i64s = TensorType::new(DType::I64, vec![r.clone()]);
        let rows = TensorType::f32(vec![r, Dim::known(4)]);
        Ok(Inference { outputs: vec![rows.clone(), i64s.clone(), i64s.clone(), rows, i64s], state: vec![] })
    },
    lower: |cx, node, slots| {
        let params = RoiSamplingParams {
            sampler: sampler(node.attrs),
            fg_iou: node.attrs.float("fg_iou"),
            bg_iou: node.attrs.float("bg_iou"),
            weights: box_weights(node.attrs),
        };
        let keys = cx.concat_flat(&[slots[5][0], slots[6][0]])?;
        call(cx, node, RuntimeFunction::SampleRois, params, &[slots[0][0], slots[1][0], slots[2][0], slots[3][0], slots[4][0], keys, slots[7][0]])
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// RoIAlign over FPN levels (as `multiscale_roi_align`) of the boxes of several images,
    /// `box_image` giving each box's image; scales inferred against the batch's padded size.
    MultiscaleRoiAlignBatch, "multiscale_roi_align_batch",
    inputs: [list_input("features"), input("boxes"), input("box_image"), input("image_sizes")],
    attrs: [
        attr("output_size", Ints, Default::Required).at_least(1),
        attr("sampling_ratio", Int, Default::Int(2)).at_least(-1),
        attr("canonical_scale", Int, Default::Int(224)).at_least(1),
        attr("canonical_level", Int, Default::Int(4)).at_least(0),
    ],
    infer: |inputs, attrs| {
        let c = pyramid("multiscale_roi_align_batch", 0, &inputs[0])?;
        let k = boxes("multiscale_roi_align_batch", 1, &inputs[1][0])?;
        same_dims("multiscale_roi_align_batch", 2, &inputs[2][0], &[k.clone()], "one image index per box")?;
        image_sizes("multiscale_roi_align_batch", 3, &inputs[3][0])?;
        Ok(pooled(c, k, pair(attrs, "output_size")?))
    },
    lower: |cx, node, slots| {
        let (features, shapes) = cx.pack(&slots[0])?;
        call(cx, node, RuntimeFunction::MultiscaleRoiAlignBatched, multiscale_params(node.attrs), &[features, shapes, slots[1][0], slots[2][0], slots[3][0]])
    },
    gradient: |cx| {
        let levels = cx.inputs.len() - 3;
        let grad = cx.output_grad(0)?;
        let mut slots = vec![vec![grad], cx.inputs[..levels].to_vec()];
        slots.extend(cx.inputs[levels..].iter().map(|&p| vec![p]));
        let maps = cx.add(&MultiscaleRoiAlignBackward, cx.attrs.clone(), &slots)?;
        let mut result: Vec<Option<Port>> = maps.into_iter().map(Some).collect();
        result.extend([None; 3]);
        Ok(result)
    }
);

fn multiscale_params(attrs: &Attrs) -> MultiScaleParams {
    MultiScaleParams {
        canonical_scale: attrs.int("canonical_scale") as f32,
        canonical_level: attrs.int("canonical_level") as f32,
        ..MultiScaleParams::new(checked_output_size(attrs), attrs.int("sampling_ratio") as i32)
    }
}

runtime_operator!(
    /// The gradient of each level of `multiscale_roi_align_batch` (the levels are read for
    /// their shapes only).
    MultiscaleRoiAlignBackward, "multiscale_roi_align_batch_backward",
    inputs: [input("grad"), list_input("features"), input("boxes"), input("box_image"), input("image_sizes")],
    attrs: [
        attr("output_size", Ints, Default::Required).at_least(1),
        attr("sampling_ratio", Int, Default::Int(2)).at_least(-1),
        attr("canonical_scale", Int, Default::Int(224)).at_least(1),
        attr("canonical_level", Int, Default::Int(4)).at_least(0),
    ],
    infer: |inputs, attrs| {
        Ok(Inference { outputs: inputs[1].clone(), state: vec![] })
    },
    lower: |cx, node, slots| {
        let axes = [0, 1, 2, 3];
        let shapes = cx.sizes_table(&slots[1], &axes)?;
        let flat = cx.ranked_tensor(&[None], cx.f32_type());
        let table = cx.ranked_tensor(&[None, None], cx.element_type(DType::I64));
        let arguments = [cx.f64_words(&multiscale_params(node.attrs).encode())?, slots[0][0], shapes, slots[2][0], slots[3][0], slots[4][0]];
        let packed = cx.call_runtime(RuntimeFunction::MultiscaleRoiAlignBackward, &arguments, &[flat, table])?;
        cx.unpack(packed[0], &slots[1])
    }
);

runtime_operator!(
    /// The box head's losses: cross-entropy of the class logits (mean) and smooth-L1 of the
    /// positives' class-specific box deltas (summed, divided by the number of RoIs).
    FastrcnnLoss, "fastrcnn_loss",
    inputs: [input("class_logits"), input("box_regression"), input("labels"), input("targets")],
    attrs: [attr("beta", Float, Default::Float(BETA)).positive()],
    infer: |inputs, attrs| {
        expect_rank("fastrcnn_loss", 0, &inputs[0][0], "R, C")?;
        expect_rank("fastrcnn_loss", 1, &inputs[1][0], "R, 4 * C")?;
        indices("fastrcnn_loss", 2, &inputs[2][0], "labels")?;
        Ok(Inference { outputs: vec![scalar(), scalar()], state: vec![] })
    },
    lower: |cx, node, slots| {
        call(cx, node, RuntimeFunction::FastrcnnLoss, SmoothL1Params { beta: node.attrs.float("beta") }, &[slots[0][0], slots[1][0], slots[2][0], slots[3][0]])
    },
    gradient: |cx| {
        let grads = [cx.output_grad(0)?, cx.output_grad(1)?];
        let mut inputs = cx.inputs.clone();
        inputs.extend(grads);
        let slots: Vec<Vec<Port>> = inputs.iter().map(|&p| vec![p]).collect();
        let maps = cx.add(&FastrcnnLossBackward, cx.attrs.clone(), &slots)?;
        Ok(vec![Some(maps[0]), Some(maps[1]), None, None])
    }
);

runtime_operator!(
    /// The gradients of `fastrcnn_loss`'s class logits and box regression.
    FastrcnnLossBackward, "fastrcnn_loss_backward",
    inputs: [input("class_logits"), input("box_regression"), input("labels"), input("targets"), input("grad_classifier"), input("grad_box")],
    attrs: [attr("beta", Float, Default::Float(BETA)).positive()],
    infer: |inputs, attrs| {
        Ok(Inference { outputs: vec![inputs[0][0].clone(), inputs[1][0].clone()], state: vec![] })
    },
    lower: |cx, node, slots| {
        let arguments: Vec<_> = slots.iter().map(|s| s[0]).collect();
        call(cx, node, RuntimeFunction::FastrcnnLossBackward, SmoothL1Params { beta: node.attrs.float("beta") }, &arguments)
    }
);

runtime_operator!(
    /// The positive RoIs (label > 0) in order, their images, labels, and mask targets: the
    /// matched ground-truth mask cropped and resized to `size` × `size` by RoIAlign
    /// (torchvision's `project_masks_on_boxes`), read within its image's own size.
    MaskTargets, "mask_targets",
    inputs: [input("gt_masks"), input("image_sizes"), input("rois"), input("roi_image"), input("labels"), input("matched")],
    attrs: [attr("size", Int, Default::Int(28)).at_least(1)],
    infer: |inputs, attrs| {
        let masks = &inputs[0][0];
        if masks.dtype != DType::U8 || masks.rank() != 3 {
            return Err(OpError::at_input(0, format!("`mask_targets` expects ground-truth masks u8[G, H, W], found {masks}")));
        }
        image_sizes("mask_targets", 1, &inputs[1][0])?;
        let r = boxes("mask_targets", 2, &inputs[2][0])?;
        for slot in 3..6 {
            same_dims("mask_targets", slot, &inputs[slot][0], &[r.clone()], "one value per RoI")?;
        }
        let q = Dim::symbol("Q");
        let size = Dim::known(attrs.int("size"));
        let i64s = TensorType::new(DType::I64, vec![q.clone()]);
        Ok(Inference {
            outputs: vec![TensorType::f32(vec![q.clone(), Dim::known(4)]), i64s.clone(), i64s, TensorType::f32(vec![q, size.clone(), size])],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        let arguments: Vec<_> = slots.iter().map(|s| s[0]).collect();
        call(cx, node, RuntimeFunction::MaskTargets, MaskTargetParams { size: node.attrs.int("size") as usize }, &arguments)
    },
    gradient: |cx| { no_gradient(cx) }
);

runtime_operator!(
    /// The mask loss: BCE with logits of each positive RoI's own class channel against its
    /// target, the mean over all their pixels (zero without positives).
    MaskrcnnLoss, "maskrcnn_loss",
    inputs: [input("mask_logits"), input("labels"), input("targets")],
    attrs: [],
    infer: |inputs, attrs| {
        expect_rank("maskrcnn_loss", 0, &inputs[0][0], "Q, C, M, M")?;
        indices("maskrcnn_loss", 1, &inputs[1][0], "labels")?;
        expect_rank("maskrcnn_loss", 2, &inputs[2][0], "Q, M, M")?;
        Ok(Inference::output(scalar()))
    },
    lower: |cx, node, slots| {
        call(cx, node, RuntimeFunction::MaskrcnnLoss, (), &[slots[0][0], slots[1][0], slots[2][0]])
    },
    gradient: |cx| {
        let grad = cx.output_grad(0)?;
        let slots: Vec<Vec<Port>> = cx.inputs.iter().chain([&grad]).map(|&p| vec![p]).collect();
        let logits = cx.add(&MaskrcnnLossBackward, Attrs::new(), &slots)?[0];
        Ok(vec![Some(logits), None, None])
    }
);

runtime_operator!(
    /// The gradient of `maskrcnn_loss`'s mask logits.
    MaskrcnnLossBackward, "maskrcnn_loss_backward",
    inputs: [input("mask_logits"), input("labels"), input("targets"), input("grad")],
    attrs: [],
    infer: |inputs, attrs| {
        Ok(Inference::output(inputs[0][0].clone()))
    },
    lower: |cx, node, slots| {
        let arguments: Vec<_> = slots.iter().map(|s| s[0]).collect();
        call(cx, node, RuntimeFunction::MaskrcnnLossBackward, (), &arguments)
    }
);
