//! Image preprocessing (normalize, resize as torchvision's transform, pad) and the 1-D bilinear
//! taps it shares with mask pasting.

use super::*;

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

/// One output index of a 1-D bilinear resize (`torch.nn.functional.interpolate`,
/// `align_corners=False`; the runtime's `interpolate::tap`): its two source indices and their
/// weights. (The runtime's shortcut for equal sizes gives the same values.)
pub(super) struct ResizeTap<'c, 'n> {
    low: Value<'c, 'n>,
    high: Value<'c, 'n>,
    low_weight: Value<'c, 'n>,
    high_weight: Value<'c, 'n>,
}

impl<'c, 'n> ResizeTap<'c, 'n> {
    /// The tap of output index `i` resizing `input` samples to `output` (`index` values).
    pub(super) fn of(b: &Emitter<'c, 'n>, input: Value<'c, '_>, output: Value<'c, '_>, i: Value<'c, '_>) -> Result<Self, LoweringError> {
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
pub(super) fn interpolated<'c, 'n>(
    b: &Emitter<'c, 'n>,
    at: impl Fn(Value<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
    ty: &ResizeTap<'c, 'n>,
    tx: &ResizeTap<'c, 'n>,
) -> Result<Value<'c, 'n>, LoweringError> {
    let row = |y| b.addf(b.mulf(at(y, tx.low)?, tx.low_weight)?, b.mulf(at(y, tx.high)?, tx.high_weight)?);
    b.addf(b.mulf(row(ty.low)?, ty.low_weight)?, b.mulf(row(ty.high)?, ty.high_weight)?)
}
