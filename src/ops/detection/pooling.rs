//! RoIAlign and RoIPool, on one feature map or over FPN levels with torchvision's level
//! mapper: one kernel shape, a bin per output element, pooled as `Pooling` says from the level
//! `Levels` gives each box.

use super::*;

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
            BuiltIns::Kernels => single_level_kernel(cx, slots[0][0], slots[1][0], Pooling::Align(&params)),
        }
    }
);

/// `[K, C, oh, ow]`: each bin of each box pooled from `features` [1, C, H, W] as `pooling` says.
fn single_level_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    features: Value<'c, 'b>,
    boxes: Value<'c, 'b>,
    pooling: Pooling,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let sizes = cx.sizes(features)?;
    let map = FeatureMapSize::of(cx, sizes[2], sizes[3])?;
    let flat = cx.concat_flat(&[features])?;
    pooled_bins(cx, boxes, sizes[1], pooling, &Levels::One(map), flat)
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
            BuiltIns::Kernels => single_level_kernel(cx, slots[0][0], slots[1][0], Pooling::Quantized(&params)),
        }
    }
);

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
