//! Pooling over spatial windows: `linalg.pooling_nchw_max`/`_sum` on the padded input, and
//! global average pooling as a `linalg.generic` reduction.

use super::*;
use AttrType::*;

static WINDOW_ATTRS: &[AttrSpec] = &[
    attr("kernel", Ints, Default::Required).at_least(1),
    attr("stride", Ints, Default::Optional).at_least(1),
    attr("padding", Ints, Default::Ints(&[0])).at_least(0),
    attr("ceil_mode", Bool, Default::Bool(false)),
];

/// torch's pooling size rule; the stride defaults to the kernel, as in torch.
fn pooled(op: &str, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
    let x = &inputs[0][0];
    expect_rank(op, 0, x, "N, C, H, W")?;
    let kernel = pair(attrs, "kernel")?;
    let stride = if attrs.contains_key("stride") { pair(attrs, "stride")? } else { kernel };
    let padding = pair(attrs, "padding")?;
    if (0..2).any(|axis| 2 * padding[axis] > kernel[axis]) {
        let message = format!("`{op}` pads by {padding:?}, more than half of its {kernel:?} window");
        return Err(OpError::at_attr("padding", message).hint("torch pads a pooling window by at most half its size"));
    }
    let [h, w] = window_sizes(op, x, kernel, stride, padding, [1, 1], attrs.flag("ceil_mode"))?;
    let dims = vec![x.dims[0].clone(), x.dims[1].clone(), h, w];
    Ok(Inference::output(TensorType::new(x.dtype, dims)))
}

/// The window geometry of a pooling node; `ceil_mode` is not lowered (torch's rule lets the last
/// window hang over the padded input, which needs a clipped divisor).
fn window(op: &'static str, node: &LowerNode) -> Result<([i64; 2], [i64; 2], [i64; 2]), LoweringError> {
    if node.attrs.flag("ceil_mode") {
        let reason = "`ceil_mode: true` is not lowered yet".to_string();
        return Err(LoweringError::Unsupported { op, node: node.name.to_string(), reason });
    }
    let kernel = checked_pair(node.attrs, "kernel");
    let stride = if node.attrs.contains_key("stride") { checked_pair(node.attrs, "stride") } else { kernel };
    Ok((kernel, stride, checked_pair(node.attrs, "padding")))
}

/// `x` padded with `value`, then pooled by `name` (a `linalg.pooling_nchw_*` op) into `init`
/// (made by `init` from the output sizes).
fn pool<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    (kernel, stride, padding): ([i64; 2], [i64; 2], [i64; 2]),
    value: f64,
    name: &str,
    combiner: Combiner,
) -> Result<Value<'c, 'b>, LoweringError> {
    let x = if padding == [0, 0] { x } else { cx.pad(x, &[0, 0, padding[0], padding[1]], &[0, 0, padding[0], padding[1]], value)? };
    let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let spatial = |size, axis: usize| cx.size_windows(size, -kernel[axis], stride[axis]);
    let sizes = [n?, c?, spatial(h?, 0)?, spatial(w?, 1)?];
    let neutral = cx.constant_float(value, cx.f32_type())?;
    let init = cx.fill(neutral, cx.empty(&sizes, cx.f32_type())?)?;
    // The window operand only carries the kernel's shape.
    let window = cx.empty(&kernel.map(Size::Static), cx.f32_type())?;
    let attributes = [
        ("strides", format!("dense<{stride:?}> : tensor<2xi64>")),
        ("dilations", "dense<1> : tensor<2xi64>".to_string()),
    ];
    cx.structured(name, &[x, window], init, &attributes, combiner)
}

#[derive(Debug)]
pub struct MaxPool2d;

impl Operator for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        pooled(self.name(), inputs, attrs)
    }
    /// Padding is -inf, so that it never wins (torch pads implicitly the same way).
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let window = window(self.name(), node)?;
        Ok(vec![pool(cx, node.inputs[0], window, f64::NEG_INFINITY, "linalg.pooling_nchw_max", Combiner::Max)?])
    }
}

#[derive(Debug)]
pub struct AvgPool2d;

impl Operator for AvgPool2d {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        pooled(self.name(), inputs, attrs)
    }
    /// Sum over zero-padded windows divided by the window size: torch's default
    /// `count_include_pad=True` (without `ceil_mode`, no window leaves the padded input).
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let window = window(self.name(), node)?;
        let sum = pool(cx, node.inputs[0], window, 0.0, "linalg.pooling_nchw_sum", Combiner::Add)?;
        let count = cx.constant_float((window.0[0] * window.0[1]) as f64, cx.f32_type())?;
        Ok(vec![cx.elementwise(&[sum], |body| body.yield_values(&[body.divf(body.arg(0)?, count)?]))?])
    }
}

/// Average pooling to a fixed output size (the C4 head's global pooling).
#[derive(Debug)]
pub struct AdaptiveAvgPool2d;

impl Operator for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("output", Ints, Default::Ints(&[1])).at_least(1)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        let [oh, ow] = pair(attrs, "output")?;
        let dims = vec![x.dims[0].clone(), x.dims[1].clone(), Dim::known(oh), Dim::known(ow)];
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
    /// To 1×1: a `linalg.generic` summing over H and W, divided by H·W. To other sizes where
    /// the input size is a known multiple of the output size, torch's windows are uniform: an
    /// average pooling with kernel = stride = input / output.
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let x = node.inputs[0];
        let output = checked_pair(node.attrs, "output");
        if output == [1, 1] {
            return Ok(vec![global_average(cx, x)?]);
        }
        let dims = cx.static_dims(x)?;
        match [0, 1].map(|axis| dims[axis + 2].filter(|size| size % output[axis] == 0).map(|size| size / output[axis])) {
            [Some(kh), Some(kw)] => {
                let sum = pool(cx, x, ([kh, kw], [kh, kw], [0, 0]), 0.0, "linalg.pooling_nchw_sum", Combiner::Add)?;
                let count = cx.constant_float((kh * kw) as f64, cx.f32_type())?;
                Ok(vec![cx.elementwise(&[sum], |body| body.yield_values(&[body.divf(body.arg(0)?, count)?]))?])
            }
            _ => Err(LoweringError::Unsupported {
                op: self.name(),
                node: node.name.to_string(),
                reason: format!("pooling to {output:?} is lowered only for a known input size divisible by it"),
            }),
        }
    }
}

/// The mean over H and W of `x` [N, C, H, W], as [N, C, 1, 1].
fn global_average<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let (n, c, h, w) = (n?, c?, h?, w?);
    let sums = cx.generic(
        &[x],
        &[cx.zeros(&[n, c])?],
        &[&identity_map(4), "(d0, d1, d2, d3) -> (d0, d1)"],
        &[Iterator::Parallel, Iterator::Parallel, Iterator::Reduction, Iterator::Reduction],
        |body| body.yield_values(&[body.addf(body.arg(1)?, body.arg(0)?)?]),
    )?;
    let area = cx.binary("arith.muli", cx.size_value(h)?, cx.size_value(w)?)?;
    let area = cx.index_to_f32(area)?;
    let means = cx.elementwise(&[sums[0]], |body| body.yield_values(&[body.divf(body.arg(0)?, area)?]))?;
    cx.expand_shape(means, &[&[0], &[1, 2, 3]], &[n, c, Size::Static(1), Size::Static(1)])
}
