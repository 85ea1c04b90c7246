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

/// The window geometry of a pooling node (or of its backward node, which has the same
/// attributes); `ceil_mode` is not lowered (torch's rule lets the last
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
    let element = cx.element_of(x)?;
    let neutral = cx.constant_float(value, element)?;
    let init = cx.fill(neutral, cx.empty(&sizes, element)?)?;
    // The window operand only carries the kernel's shape.
    let window = cx.empty(&kernel.map(Size::Static), element)?;
    let attributes = [
        ("strides", format!("dense<{stride:?}> : tensor<2xi64>")),
        ("dilations", "dense<1> : tensor<2xi64>".to_string()),
    ];
    cx.structured(name, &[x, window], init, &attributes, combiner)
}

/// A pooling's gradient: its `backward` operator of the output gradient and the input, with
/// the pooling's attributes.
fn pooling_gradient(cx: &mut GradientContext, backward: &'static dyn Operator) -> Result<Vec<Option<Port>>, GradientError> {
    let grad = cx.output_grad(0)?;
    let x = cx.inputs[0];
    Ok(vec![Some(cx.add1(backward, cx.attrs.clone(), &[grad, x])?)])
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
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        pooling_gradient(cx, &MaxPool2dBackward)
    }
}

/// The gradient of `max_pool2d`: each window's gradient goes to the first position (in row,
/// then column order) holding its maximum, as torch's kernel records it. Inputs `grad`
/// [N, C, Ho, Wo] and `x` [N, C, H, W].
#[derive(Debug)]
pub struct MaxPool2dBackward;

impl Operator for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max_pool2d_backward"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[1][0].clone()))
    }
    /// Two `linalg.generic`s: the argmax of each window (its flat position in the padded
    /// plane, padding −∞ so that it never wins), then, for each input position, the sum of the
    /// gradients of the windows that chose it (at most ⌈k/s⌉² windows contain it).
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (grad, x) = (node.inputs[0], node.inputs[1]);
        let (kernel, stride, padding) = window(self.name(), node)?;
        let padded = if padding == [0, 0] { x } else { cx.pad(x, &[0, 0, padding[0], padding[1]], &[0, 0, padding[0], padding[1]], f64::NEG_INFINITY)? };
        let padded_width = cx.size_value(cx.size(padded, 3)?)?;
        let index = cx.index_type();
        let argmax_init = cx.empty(&cx.sizes(grad)?, index)?;
        let argmax = cx.generic(&[], &[argmax_init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
            let [n, c, oy, ox] = [0, 1, 2, 3].map(|axis| body.loop_index(axis));
            let (n, c, oy, ox) = (n?, c?, oy?, ox?);
            let top = body.binary("arith.muli", oy, body.constant_index(stride[0])?)?;
            let left = body.binary("arith.muli", ox, body.constant_index(stride[1])?)?;
            let lowest = body.constant_float(f64::NEG_INFINITY, body.element_of(x)?)?;
            let first = body.binary("arith.addi", body.binary("arith.muli", top, padded_width)?, left)?;
            let zero = body.constant_index(0)?;
            let best = body.for_loop(zero, body.constant_index(kernel[0])?, &[lowest, first], |b, args| {
                let y = b.binary("arith.addi", top, args[0])?;
                b.for_loop(b.constant_index(0)?, b.constant_index(kernel[1])?, &args[1..], |b, args| {
                    let column = b.binary("arith.addi", left, args[0])?;
                    let value = b.extract(padded, &[n, c, y, column])?;
                    let greater = b.compare_floats(CmpfPredicate::Ogt, value, args[1])?;
                    let position = b.binary("arith.addi", b.binary("arith.muli", y, padded_width)?, column)?;
                    Ok(vec![b.select(greater, value, args[1])?, b.select(greater, position, args[2])?])
                })
            })?;
            body.yield_values(&[best[1]])
        })?[0];

        let [ho, wo] = [cx.size_value(cx.size(grad, 2)?)?, cx.size_value(cx.size(grad, 3)?)?];
        let element = cx.element_of(grad)?;
        let init = cx.empty(&cx.sizes(x)?, element)?;
        Ok(cx.generic(&[], &[init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
            let [n, c, h, w] = [0, 1, 2, 3].map(|axis| body.loop_index(axis));
            let (n, c, h, w) = (n?, c?, h?, w?);
            let [hp, wp] = [body.binary("arith.addi", h, body.constant_index(padding[0])?)?, body.binary("arith.addi", w, body.constant_index(padding[1])?)?];
            let me = body.binary("arith.addi", body.binary("arith.muli", hp, padded_width)?, wp)?;
            // Windows o with o·s ≤ p < o·s + k: the ⌈k/s⌉ candidates ⌊p / s⌋ − j (j from 0), each
            // valid when at least 0, below the count and reaching p. Static trip counts, so that
            // the loops unroll.
            let reach = [0, 1].map(|axis| (kernel[axis] + stride[axis] - 1) / stride[axis]);
            let zero = body.constant_float(0.0, element)?;
            let total = body.for_loop(body.constant_index(0)?, body.constant_index(reach[0])?, &[zero], |b, args| {
                let (oy, row_valid) = covering_window(b, hp, args[0], kernel[0], stride[0], ho)?;
                b.for_loop(b.constant_index(0)?, b.constant_index(reach[1])?, &args[1..], |b, args| {
                    let (ox, column_valid) = covering_window(b, wp, args[0], kernel[1], stride[1], wo)?;
                    let chosen = b.extract(argmax, &[n, c, oy, ox])?;
                    let mine = b.binary("arith.andi", b.binary("arith.andi", row_valid, column_valid)?, b.compare_integers(CmpiPredicate::Eq, chosen, me)?)?;
                    let contribution = b.select(mine, b.extract(grad, &[n, c, oy, ox])?, b.constant_float(0.0, element)?)?;
                    Ok(vec![b.addf(args[1], contribution)?])
                })
            })?;
            body.yield_values(&[total[0]])
        })?)
    }
}

/// The `j`th window (from the last) of `kernel` and `stride` that may cover the position `p`
/// along an axis of `count` windows: ⌊p / s⌋ − j, and whether it exists and covers `p`
/// (the window itself is 0 where not).
fn covering_window<'c, 'n>(
    b: &Emitter<'c, 'n>,
    p: Value<'c, '_>,
    j: Value<'c, '_>,
    kernel: i64,
    stride: i64,
    count: Value<'c, '_>,
) -> Result<(Value<'c, 'n>, Value<'c, 'n>), LoweringError> {
    let s = b.constant_index(stride)?;
    let window = b.binary("arith.subi", b.binary("arith.divui", p, s)?, j)?;
    let zero = b.constant_index(0)?;
    let exists = b.binary("arith.andi", b.compare_integers(CmpiPredicate::Sge, window, zero)?, b.compare_integers(CmpiPredicate::Slt, window, count)?)?;
    let offset = b.binary("arith.subi", p, b.binary("arith.muli", window, s)?)?;
    let valid = b.binary("arith.andi", exists, b.compare_integers(CmpiPredicate::Slt, offset, b.constant_index(kernel)?)?)?;
    Ok((b.select(valid, window, zero)?, valid))
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
        let count = cx.constant_float((window.0[0] * window.0[1]) as f64, cx.element_of(sum)?)?;
        Ok(vec![cx.elementwise(&[sum], |body| body.yield_values(&[body.divf(body.arg(0)?, count)?]))?])
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        pooling_gradient(cx, &AvgPool2dBackward)
    }
}

/// The gradient of `avg_pool2d`: each input position gets the gradients of the windows that
/// contain it, over the window size. Inputs `grad` [N, C, Ho, Wo] and `x` [N, C, H, W].
#[derive(Debug)]
pub struct AvgPool2dBackward;

impl Operator for AvgPool2dBackward {
    fn name(&self) -> &'static str {
        "avg_pool2d_backward"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[1][0].clone()))
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        Ok(vec![window_means_backward(cx, node.inputs[0], node.inputs[1], window(self.name(), node)?)?])
    }
}

/// The gradient of an average pooling with `(kernel, stride, padding)` from `grad` to the
/// positions of `like`: for each, the sum of the gradients of the windows containing it
/// (gathered as col2im gathers), over the window size.
fn window_means_backward<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    grad: Value<'c, 'b>,
    like: Value<'c, 'b>,
    (kernel, stride, padding): ([i64; 2], [i64; 2], [i64; 2]),
) -> Result<Value<'c, 'b>, LoweringError> {
    let [rows, columns] = [cx.size_value(cx.size(grad, 2)?)?, cx.size_value(cx.size(grad, 3)?)?];
    let element = cx.element_of(grad)?;
    let init = cx.empty(&cx.sizes(like)?, element)?;
    Ok(cx.generic(&[], &[init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
        let [n, c, y, x] = [0, 1, 2, 3].map(|axis| body.loop_index(axis));
        let (n, c, y, x) = (n?, c?, y?, x?);
        let zero = body.constant_float(0.0, element)?;
        let total = body.for_loop(body.constant_index(0)?, body.constant_index(kernel[0])?, &[zero], |b, args| {
            let (row, row_valid) = reading_position(b, y, args[0], padding[0], 1, stride[0], rows)?;
            b.for_loop(b.constant_index(0)?, b.constant_index(kernel[1])?, &args[1..], |b, args| {
                let (column, column_valid) = reading_position(b, x, args[0], padding[1], 1, stride[1], columns)?;
                let valid = b.binary("arith.andi", row_valid, column_valid)?;
                let value = b.extract(grad, &[n, c, row, column])?;
                Ok(vec![b.addf(args[1], b.select(valid, value, b.constant_float(0.0, element)?)?)?])
            })
        })?;
        let area = body.constant_float((kernel[0] * kernel[1]) as f64, element)?;
        body.yield_values(&[body.divf(total[0], area)?])
    })?[0])
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
                let count = cx.constant_float((kh * kw) as f64, cx.element_of(sum)?)?;
                Ok(vec![cx.elementwise(&[sum], |body| body.yield_values(&[body.divf(body.arg(0)?, count)?]))?])
            }
            _ => Err(uneven_windows(self.name(), node, output)),
        }
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        pooling_gradient(cx, &AdaptiveAvgPool2dBackward)
    }
}

/// Why an adaptive pooling is not lowered: its windows would differ in size.
fn uneven_windows(op: &'static str, node: &LowerNode, output: [i64; 2]) -> LoweringError {
    let reason = format!("pooling to {output:?} is lowered only for a known input size divisible by it");
    LoweringError::Unsupported { op, node: node.name.to_string(), reason }
}

/// The gradient of `adaptive_avg_pool2d`: to 1×1, each position gets its plane's gradient over
/// the plane's area; to uniform windows, as `avg_pool2d_backward` with kernel = stride. Inputs
/// `grad` [N, C, oh, ow] and `x` [N, C, H, W].
#[derive(Debug)]
pub struct AdaptiveAvgPool2dBackward;

impl Operator for AdaptiveAvgPool2dBackward {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d_backward"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        AdaptiveAvgPool2d.attrs()
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[1][0].clone()))
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (grad, x) = (node.inputs[0], node.inputs[1]);
        let output = checked_pair(node.attrs, "output");
        if output == [1, 1] {
            let area = cx.binary("arith.muli", cx.size_value(cx.size(x, 2)?)?, cx.size_value(cx.size(x, 3)?)?)?;
            let area = cx.index_to_float(area, cx.element_of(grad)?)?;
            let init = cx.empty(&cx.sizes(x)?, cx.element_of(grad)?)?;
            return Ok(cx.generic(&[grad], &[init], &["(n, c, y, x) -> (n, c, 0, 0)", &identity_map(4)], &[Iterator::Parallel; 4], |body| {
                body.yield_values(&[body.divf(body.arg(0)?, area)?])
            })?);
        }
        let dims = cx.static_dims(x)?;
        match [0, 1].map(|axis| dims[axis + 2].filter(|size| size % output[axis] == 0).map(|size| size / output[axis])) {
            [Some(kh), Some(kw)] => Ok(vec![window_means_backward(cx, grad, x, ([kh, kw], [kh, kw], [0, 0]))?]),
            _ => Err(uneven_windows(self.name(), node, output)),
        }
    }
}

/// The mean over H and W of `x` [N, C, H, W], as [N, C, 1, 1].
fn global_average<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let (n, c, h, w) = (n?, c?, h?, w?);
    let sums = cx.generic(
        &[x],
        &[cx.zeros(&[n, c], cx.element_of(x)?)?],
        &[&identity_map(4), "(d0, d1, d2, d3) -> (d0, d1)"],
        &[Iterator::Parallel, Iterator::Parallel, Iterator::Reduction, Iterator::Reduction],
        |body| body.yield_values(&[body.addf(body.arg(1)?, body.arg(0)?)?]),
    )?;
    let area = cx.binary("arith.muli", cx.size_value(h)?, cx.size_value(w)?)?;
    let area = cx.index_to_float(area, cx.element_of(x)?)?;
    let means = cx.elementwise(&[sums[0]], |body| body.yield_values(&[body.divf(body.arg(0)?, area)?]))?;
    cx.expand_shape(means, &[&[0], &[1, 2, 3]], &[n, c, Size::Static(1), Size::Static(1)])
}
