//! Resampling of feature maps.

use super::*;

/// Nearest-neighbour upsampling to the spatial size of `like` (the FPN top-down path).
#[derive(Debug)]
pub struct UpsampleNearest;

impl Operator for UpsampleNearest {
    fn name(&self) -> &'static str {
        "upsample_nearest"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("like")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let (x, like) = (&inputs[0][0], &inputs[1][0]);
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        expect_rank(self.name(), 1, like, "N, C, H, W")?;
        let dims = vec![x.dims[0].clone(), x.dims[1].clone(), like.dims[2].clone(), like.dims[3].clone()];
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
    /// torch's `nearest` with a target size: output row `i` reads input row
    /// `min(⌊i · scale⌋, H - 1)` with `scale = H / H_out` computed in f32 (`floorf(i * scale)` in
    /// torch's kernel), and likewise for columns. Exact for integer ratios; for others it
    /// repeats torch's own f32 rounding. A `linalg.generic` over the output gathers with
    /// `tensor.extract`.
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (x, like) = (node.inputs[0], node.inputs[1]);
        let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
        let [h, w] = [cx.size_value(h?)?, cx.size_value(w?)?];
        let [out_h, out_w] = [cx.size(like, 2)?, cx.size(like, 3)?];
        let scale = |size, out| cx.divf(cx.index_to_f32(size)?, cx.index_to_f32(cx.size_value(out)?)?);
        let [scale_h, scale_w] = [scale(h, out_h)?, scale(w, out_w)?];
        let one = cx.constant_index(1)?;
        let [last_h, last_w] = [cx.binary("arith.subi", h, one)?, cx.binary("arith.subi", w, one)?];
        let init = cx.empty(&[n?, c?, out_h, out_w], cx.element_of(x)?)?;
        let y = cx.generic(&[], &[init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
            let source = |axis, scale, last| {
                let position = body.mulf(body.index_to_f32(body.loop_index(axis)?)?, scale)?;
                body.binary("arith.minui", body.floor_to_index(position)?, last)
            };
            let indices = [body.loop_index(0)?, body.loop_index(1)?, source(2, scale_h, last_h)?, source(3, scale_w, last_w)?];
            body.yield_values(&[body.extract(x, &indices)?])
        })?;
        Ok(y)
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let grad = cx.output_grad(0)?;
        let x = cx.inputs[0];
        Ok(vec![Some(cx.add1(&UpsampleNearestBackward, Attrs::new(), &[grad, x])?), None])
    }
}

/// The gradient of `upsample_nearest`: each input pixel receives the sum of the gradients of
/// the output pixels that read it. Inputs `grad` [N, C, Ho, Wo] and `like` (the input)
/// [N, C, H, W].
#[derive(Debug)]
pub struct UpsampleNearestBackward;

impl Operator for UpsampleNearestBackward {
    fn name(&self) -> &'static str {
        "upsample_nearest_backward"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("like")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[1][0].clone()))
    }
    /// Output row `r` reads input row `min(⌊r · scale⌋, H − 1)` (the forward's f32 rule), so
    /// the rows that read row `h` lie within `[h · Ho / H − 1, (h + 1) · Ho / H + 1]`; each
    /// candidate is tested with the forward's own formula, and likewise for columns.
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (grad, like) = (node.inputs[0], node.inputs[1]);
        let [h, w] = [cx.size_value(cx.size(like, 2)?)?, cx.size_value(cx.size(like, 3)?)?];
        let [out_h, out_w] = [cx.size_value(cx.size(grad, 2)?)?, cx.size_value(cx.size(grad, 3)?)?];
        let scale = |size, out| cx.divf(cx.index_to_f32(size)?, cx.index_to_f32(out)?);
        let [scale_h, scale_w] = [scale(h, out_h)?, scale(w, out_w)?];
        let one = cx.constant_index(1)?;
        let [last_h, last_w] = [cx.binary("arith.subi", h, one)?, cx.binary("arith.subi", w, one)?];
        let element = cx.element_of(grad)?;
        let init = cx.empty(&cx.sizes(like)?, element)?;
        Ok(cx.generic(&[], &[init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
            let [n, c, y, x] = [0, 1, 2, 3].map(|axis| body.loop_index(axis));
            let (n, c, y, x) = (n?, c?, y?, x?);
            let one = body.constant_index(1)?;
            let candidates = |p: Value<'c, '_>, size: Value<'c, '_>, out: Value<'c, '_>| -> Result<[Value<'c, '_>; 2], LoweringError> {
                let first = body.binary("arith.subi", body.binary("arith.divui", body.binary("arith.muli", p, out)?, size)?, one)?;
                let next = body.binary("arith.addi", p, one)?;
                let last = body.binary("arith.addi", body.binary("arith.ceildivui", body.binary("arith.muli", next, out)?, size)?, one)?;
                Ok([body.binary("arith.maxsi", first, body.constant_index(0)?)?, body.binary("arith.minsi", last, out)?])
            };
            let [top, bottom] = candidates(y, h, out_h)?;
            let [left, right] = candidates(x, w, out_w)?;
            let zero = body.constant_float(0.0, element)?;
            let total = body.for_loop(top, bottom, &[zero], |b, args| {
                let row = args[0];
                let source_row = b.binary("arith.minui", b.floor_to_index(b.mulf(b.index_to_f32(row)?, scale_h)?)?, last_h)?;
                let row_reads = b.compare_integers(CmpiPredicate::Eq, source_row, y)?;
                b.for_loop(left, right, &args[1..], |b, args| {
                    let column = args[0];
                    let source_column = b.binary("arith.minui", b.floor_to_index(b.mulf(b.index_to_f32(column)?, scale_w)?)?, last_w)?;
                    let column_reads = b.compare_integers(CmpiPredicate::Eq, source_column, x)?;
                    let reads = b.binary("arith.andi", row_reads, column_reads)?;
                    let value = b.extract(grad, &[n, c, row, column])?;
                    Ok(vec![b.addf(args[1], b.select(reads, value, b.constant_float(0.0, element)?)?)?])
                })
            })?;
            body.yield_values(&[total[0]])
        })?)
    }
}
