//! Mask probabilities, boxes back in the image's frame, and masks pasted into the image.

use super::*;
use super::image::{interpolated, ResizeTap};

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
