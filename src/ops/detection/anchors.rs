//! Anchors of every pyramid level.

use super::*;

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
