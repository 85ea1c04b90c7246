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
        let init = cx.empty(&[n?, c?, out_h, out_w], cx.f32_type())?;
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
}
