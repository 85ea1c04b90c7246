//! Batch normalization: frozen (torchvision's `FrozenBatchNorm2d`), in eval mode, and in
//! training mode (batch statistics, running statistics updated) with its backward operator.

use super::*;
use AttrType::*;

/// Eval-mode batch normalization as torch computes it on the CPU: per channel
/// `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale` (one
/// small `linalg.generic` over the channels), then `x * scale + shift` (one elementwise
/// `linalg.generic` broadcasting along the channel axis 1). `node.inputs` are
/// `x, weight, bias, running_mean, running_var`, and for `batch_norm` the unused step counter.
fn lower_batch_norm<'c, 'b>(cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let [x, weight, bias, mean, var] = [0, 1, 2, 3, 4].map(|i| node.inputs[i]);
    let eps = node.attrs.float("eps");
    let channels = cx.size(weight, 0)?;
    let element = cx.element_of(x)?;
    let per_channel = [cx.empty(&[channels], element)?, cx.empty(&[channels], element)?];
    let identity = identity_map(1);
    let scale_shift = cx.generic(&[weight, bias, mean, var], &per_channel, &[identity.as_str(); 6], &[Iterator::Parallel], |body| {
        let [weight, bias, mean, var] = [body.arg(0)?, body.arg(1)?, body.arg(2)?, body.arg(3)?];
        let eps = body.constant_like(eps, weight)?;
        let scale = body.divf(weight, body.unary("math.sqrt", body.addf(var, eps)?)?)?;
        let shift = body.subf(bias, body.mulf(mean, scale)?)?;
        body.yield_values(&[scale, shift])
    })?;

    let rank = node.outputs[0].rank();
    let sizes = cx.sizes(x)?;
    let init = cx.empty(&sizes, element)?;
    let (identity, channel) = (identity_map(rank), format!("({}) -> (d1)", loop_dims(rank)));
    let maps = [identity.as_str(), &channel, &channel, &identity];
    let y = cx.generic(&[x, scale_shift[0], scale_shift[1]], &[init], &maps, &vec![Iterator::Parallel; rank], |body| {
        body.yield_values(&[body.addf(body.mulf(body.arg(0)?, body.arg(1)?)?, body.arg(2)?)?])
    })?;
    Ok(y)
}

fn channels(op: &str, x: &TensorType) -> Result<i64, OpError> {
    if x.rank() < 2 {
        return Err(OpError::at_input(0, format!("rank mismatch: `{op}` expects [N, C, ...], found {x}")));
    }
    known(op, 0, x, 1, "channels")
}

/// All four tensors are buffers: a frozen BN has no trainable parameters.
#[derive(Debug)]
pub struct FrozenBatchNorm;

impl Operator for FrozenBatchNorm {
    fn name(&self) -> &'static str {
        "frozen_batch_norm"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("eps", Float, Default::Float(1e-5)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let c = channels(self.name(), x)?;
        let state = ["weight", "bias", "running_mean", "running_var"].map(|n| StateDecl::buffer(n, vec![c]));
        Ok(Inference { outputs: vec![x.clone()], state: state.to_vec() })
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        lower_batch_norm(cx, node)
    }
    /// Only the input's: the statistics and affine terms are buffers.
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let grad = cx.output_grad(0)?;
        let [weight, var] = [cx.inputs[1], cx.inputs[4]];
        let dx = cx.add1(&ScaleChannels, cx.attrs.clone(), &[grad, weight, var])?;
        Ok(vec![Some(dx), None, None, None, None])
    }
}

/// `x · weight / sqrt(var + eps)` per channel (axis 1): the input gradient of a frozen batch
/// norm.
#[derive(Debug)]
pub struct ScaleChannels;

impl Operator for ScaleChannels {
    fn name(&self) -> &'static str {
        "scale_channels"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("weight"), input("var")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("eps", Float, Default::Float(1e-5)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[0][0].clone()))
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let [x, weight, var] = [0, 1, 2].map(|i| node.inputs[i]);
        let eps = node.attrs.float("eps");
        let rank = node.outputs[0].rank();
        let (identity, channel) = (identity_map(rank), format!("({}) -> (d1)", loop_dims(rank)));
        let init = cx.empty(&cx.sizes(x)?, cx.element_of(x)?)?;
        Ok(cx.generic(&[x, weight, var], &[init], &[&identity, &channel, &channel, &identity], &vec![Iterator::Parallel; rank], |body| {
            let (x, weight, var) = (body.arg(0)?, body.arg(1)?, body.arg(2)?);
            let std = body.unary("math.sqrt", body.addf(var, body.constant_like(eps, var)?)?)?;
            body.yield_values(&[body.mulf(x, body.divf(weight, std)?)?])
        })?)
    }
}

/// `nn.BatchNorm2d`: affine parameters, running statistics and the step counter.
#[derive(Debug)]
pub struct BatchNorm;

impl Operator for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const {
            &[
                attr("eps", Float, Default::Float(1e-5)).at_least(0),
                attr("momentum", Float, Default::Float(0.1)).between(0.0, 1.0),
            ]
        }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let c = channels(self.name(), x)?;
        let state = vec![
            StateDecl::parameter("weight", vec![c]),
            StateDecl::parameter("bias", vec![c]),
            StateDecl::buffer("running_mean", vec![c]),
            StateDecl::buffer("running_var", vec![c]),
            StateDecl { name: "num_batches_tracked", dtype: DType::I64, dims: vec![], kind: StateKind::Buffer },
        ];
        Ok(Inference { outputs: vec![x.clone()], state })
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        lower_batch_norm(cx, node)
    }
}

// ---- training mode ---------------------------------------------------------------------------

/// `batch_norm` in training mode, as torch computes it: each channel normalized by the mean and
/// the biased variance of the batch (over N, H, W), then scaled and shifted. It owns the same
/// state as `batch_norm` (the training form of the same layer) but reads only the affine
/// parameters; [`RunningStatistics`] updates the running ones.
#[derive(Debug)]
pub struct BatchNormTraining;

impl BatchNormTraining {
    /// The operator this is the training form of.
    pub fn inference_name(&self) -> &'static str {
        BatchNorm.name()
    }
}

impl Operator for BatchNormTraining {
    fn name(&self) -> &'static str {
        "batch_norm_training"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("mean"), input("var")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        BatchNorm.attrs()
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        BatchNorm.infer(inputs, attrs)
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let [x, mean, var, weight, bias] = [0, 1, 2, 3, 4].map(|i| node.inputs[i]);
        let element = cx.element_of(x)?;
        let double = cx.element_type(DType::F64);
        let std = standard_deviation(cx, var, node.attrs.float("eps"))?;
        // Per channel, in f64, then in the layer's type: α = w/σ and β = b − μ·α, so that
        // y = x·α + β, torch's form, with no division per element.
        let sizes = cx.sizes(mean)?;
        let inits = [cx.empty(&sizes, element)?, cx.empty(&sizes, element)?];
        let identity = identity_map(1);
        let terms = cx.generic(&[mean, std, weight, bias], &inits, &[identity.as_str(); 6], &[Iterator::Parallel], |body| {
            let [mean, std, weight, bias] = [0, 1, 2, 3].map(|i| body.arg(i));
            let (mean, std) = (mean?, std?);
            let alpha = body.divf(body.as_float(weight?, double)?, std)?;
            let beta = body.subf(body.as_float(bias?, double)?, body.mulf(mean, alpha)?)?;
            body.yield_values(&[body.as_float(alpha, element)?, body.as_float(beta, element)?])
        })?;
        let rank = node.outputs[0].rank();
        let (identity, channel) = (identity_map(rank), format!("({}) -> (d1)", loop_dims(rank)));
        let init = cx.empty(&cx.sizes(x)?, element)?;
        let maps = [identity.as_str(), &channel, &channel, &identity];
        Ok(cx.generic(&[x, terms[0], terms[1]], &[init], &maps, &vec![Iterator::Parallel; rank], |body| {
            body.yield_values(&[body.addf(body.mulf(body.arg(0)?, body.arg(1)?)?, body.arg(2)?)?])
        })?)
    }
    /// The batch statistics' part of the input's gradient is in `dx`: none flows to them.
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let grad = cx.output_grad(0)?;
        let [x, mean, var, weight] = [0, 1, 2, 3].map(|i| cx.inputs[i]);
        let eps = [("eps".to_string(), cx.attrs["eps"].clone())].into_iter().collect();
        let grads = cx.add(&BatchNormBackward, eps, &[vec![grad], vec![x], vec![weight], vec![mean], vec![var]])?;
        Ok(vec![Some(grads[0]), None, None, Some(grads[1]), Some(grads[2]), None, None, None])
    }
}

/// Per channel (axis 1) of `x`, the batch's mean and biased variance over the other axes, in
/// f64: computed once for a training-mode batch norm, its running statistics and its gradient.
#[derive(Debug)]
pub struct BatchMoments;

impl Operator for BatchMoments {
    fn name(&self) -> &'static str {
        "batch_moments"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        &[]
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        channels(self.name(), x)?;
        let moment = TensorType::new(DType::F64, vec![x.dims[1].clone()]);
        Ok(Inference { outputs: vec![moment.clone(), moment], state: vec![] })
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (mean, var) = channel_moments(cx, node.inputs[0])?;
        Ok(vec![mean, var])
    }
    /// Never asked: the batch norm's gradient rule accounts for the statistics.
    fn gradient(&self, _: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        Err(GradientError::NoRule)
    }
}

/// Per channel (axis 1) of `x`, the mean and the biased variance over the other axes, in f64:
/// torch accumulates batch statistics in double precision on the CPU, and a float sum over a
/// whole batch would drift from them. One pass sums `x` and `x²`; in f64 the variance
/// `Σx²/n − mean²` keeps its precision for any activation a network makes.
fn channel_moments<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, 'b>) -> Result<(Value<'c, 'b>, Value<'c, 'b>), LoweringError> {
    let count = channel_count(cx, x)?;
    let double = cx.element_type(DType::F64);
    let sums = cx.sums_to_axis(&[x], &[], 1, double, 2, |b, elements| {
        let x = b.as_float(elements[0], double)?;
        Ok(vec![x, b.mulf(x, x)?])
    })?;
    let mean = divide(cx, sums[0], count)?;
    let var = cx.elementwise(&[sums[1], mean], |body| {
        let (squares, mean) = (body.arg(0)?, body.arg(1)?);
        let var = body.subf(body.divf(squares, count)?, body.mulf(mean, mean)?)?;
        body.yield_values(&[body.maximumf(var, body.constant_like(0.0, var)?)?])
    })?;
    Ok((mean, var))
}

/// The number of elements of `x` each channel (axis 1) holds, as an f64.
fn channel_count<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    let double = cx.element_type(DType::F64);
    let mut count = cx.constant_float(1.0, double)?;
    for (axis, size) in cx.sizes(x)?.into_iter().enumerate() {
        if axis != 1 {
            count = cx.mulf(count, cx.index_to_float(cx.size_value(size)?, double)?)?;
        }
    }
    Ok(count)
}

/// `v / count` elementwise over a [C] tensor.
fn divide<'c, 'b>(cx: &Emitter<'c, 'b>, v: Value<'c, 'b>, count: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    cx.elementwise(&[v], |body| body.yield_values(&[body.divf(body.arg(0)?, count)?]))
}

/// An f64 [C] tensor in `element` (the layer's float type).
fn narrow<'c, 'b>(cx: &Emitter<'c, 'b>, v: Value<'c, 'b>, element: melior::ir::Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
    if cx.element_of(v)? == element {
        return Ok(v);
    }
    let init = cx.empty(&cx.sizes(v)?, element)?;
    Ok(cx.generic(&[v], &[init], &[&identity_map(1), &identity_map(1)], &[Iterator::Parallel], |body| {
        body.yield_values(&[body.convert("arith.truncf", body.arg(0)?, element)?])
    })?[0])
}

/// `sqrt(var + eps)` elementwise over a [C] tensor.
fn standard_deviation<'c, 'b>(cx: &Emitter<'c, 'b>, var: Value<'c, 'b>, eps: f64) -> Result<Value<'c, 'b>, LoweringError> {
    cx.elementwise(&[var], |body| {
        let var = body.arg(0)?;
        body.yield_values(&[body.unary("math.sqrt", body.addf(var, body.constant_like(eps, var)?)?)?])
    })
}

/// The gradients of a training-mode batch norm, torch's formulas: with `x̂ = (x − μ)/σ`,
/// `dx = w/σ · (dy − mean(dy) − x̂ · mean(dy · x̂))`, `dw = Σ dy · x̂`, `db = Σ dy`. Inputs
/// `grad`, `x`, `weight` and the batch's `mean` and `var` (f64, [`BatchMoments`]).
#[derive(Debug)]
pub struct BatchNormBackward;

impl Operator for BatchNormBackward {
    fn name(&self) -> &'static str {
        "batch_norm_backward"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("x"), input("weight"), input("mean"), input("var")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("eps", Float, Default::Float(1e-5)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let (x, weight) = (&inputs[1][0], &inputs[2][0]);
        Ok(Inference { outputs: vec![x.clone(), weight.clone(), weight.clone()], state: vec![] })
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let [grad, x, weight, mean, var] = [0, 1, 2, 3, 4].map(|i| node.inputs[i]);
        let eps = node.attrs.float("eps");
        let element = cx.element_of(x)?;
        let count = channel_count(cx, x)?;
        let std = standard_deviation(cx, var, eps)?;
        // Σ dy and Σ dy · (x − μ), from which Σ dy · x̂ = that / σ, in one pass.
        let double = cx.element_type(DType::F64);
        let sums = cx.sums_to_axis(&[grad, x], &[mean], 1, double, 2, |b, elements| {
            let dy = b.as_float(elements[0], double)?;
            Ok(vec![dy, b.mulf(dy, b.subf(b.as_float(elements[1], double)?, elements[2])?)?])
        })?;
        let (grad_sum, centered) = (sums[0], sums[1]);
        let grad_weight = cx.elementwise(&[centered, std], |body| body.yield_values(&[body.divf(body.arg(0)?, body.arg(1)?)?]))?;
        // Per channel, in f64, then in the layer's type: μ, mean(dy), k = mean(dy·x̂)/σ and
        // a = w/σ, so that dx = a·(dy − mean(dy) − (x − μ)·k), torch's form, with no division
        // per element.
        let sizes = cx.sizes(mean)?;
        let inits = (0..4).map(|_| cx.empty(&sizes, element)).collect::<Result<Vec<_>, _>>()?;
        let identity = identity_map(1);
        let terms = cx.generic(&[mean, std, grad_sum, grad_weight, weight], &inits, &[identity.as_str(); 9], &[Iterator::Parallel], |body| {
            let [mean, std, grad_sum, grad_weight, weight] = [0, 1, 2, 3, 4].map(|i| body.arg(i));
            let (mean, std, grad_sum, grad_weight, weight) = (mean?, std?, grad_sum?, grad_weight?, weight?);
            let k = body.divf(body.divf(grad_weight, count)?, std)?;
            let a = body.divf(body.as_float(weight, double)?, std)?;
            let terms = [mean, body.divf(grad_sum, count)?, k, a].map(|v| body.as_float(v, element));
            body.yield_values(&terms.into_iter().collect::<Result<Vec<_>, _>>()?)
        })?;
        let rank = node.outputs[0].rank();
        let (identity, channel) = (identity_map(rank), format!("({}) -> (d1)", loop_dims(rank)));
        let init = cx.empty(&cx.sizes(x)?, element)?;
        let maps = [identity.as_str(), &identity, &channel, &channel, &channel, &channel, &identity];
        let dx = cx.generic(&[grad, x, terms[0], terms[1], terms[2], terms[3]], &[init], &maps, &vec![Iterator::Parallel; rank], |body| {
            let [dy, x, mean, grad_mean, k, a] = [0, 1, 2, 3, 4, 5].map(|i| body.arg(i));
            let (dy, x, mean, grad_mean, k, a) = (dy?, x?, mean?, grad_mean?, k?, a?);
            let correction = body.mulf(body.subf(x, mean)?, k)?;
            body.yield_values(&[body.mulf(body.subf(body.subf(dy, grad_mean)?, correction)?, a)?])
        })?[0];
        let (grad_weight, grad_sum) = (narrow(cx, grad_weight, element)?, narrow(cx, grad_sum, element)?);
        Ok(vec![dx, grad_weight, grad_sum])
    }
}

/// The running statistics after a training step, as torch updates them: `(1 − m) · running +
/// m · batch`, the batch variance unbiased (`· n / (n − 1)`), and the step counter plus one.
/// Inputs `x` and the layer's `running_mean`, `running_var`, `num_batches_tracked`.
#[derive(Debug)]
pub struct RunningStatistics;

impl Operator for RunningStatistics {
    fn name(&self) -> &'static str {
        "running_statistics"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("mean"), input("var"), input("running_mean"), input("running_var"), input("num_batches_tracked")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("momentum", Float, Default::Float(0.1)).between(0.0, 1.0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference { outputs: vec![inputs[3][0].clone(), inputs[4][0].clone(), inputs[5][0].clone()], state: vec![] })
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let [x, mean, var, running_mean, running_var, steps] = [0, 1, 2, 3, 4, 5].map(|i| node.inputs[i]);
        let momentum = node.attrs.float("momentum");
        let element = cx.element_of(x)?;
        let count = channel_count(cx, x)?;
        let one = cx.constant_float(1.0, cx.element_type(DType::F64))?;
        let unbiased = cx.elementwise(&[var], |body| body.yield_values(&[body.mulf(body.arg(0)?, body.divf(count, body.subf(count, one)?)?)?]))?;
        let (mean, var) = (narrow(cx, mean, element)?, narrow(cx, unbiased, element)?);
        let blend = |running: Value<'c, 'b>, batch: Value<'c, 'b>| {
            cx.elementwise(&[running, batch], |body| {
                let (running, batch) = (body.arg(0)?, body.arg(1)?);
                let kept = body.mulf(running, body.constant_like(1.0 - momentum, running)?)?;
                body.yield_values(&[body.addf(kept, body.mulf(batch, body.constant_like(momentum, batch)?)?)?])
            })
        };
        let (new_mean, new_var) = (blend(running_mean, mean)?, blend(running_var, var)?);
        // Elementwise rather than extracted and rebuilt, so that a device target counts on the
        // device.
        let next = cx.elementwise(&[steps], |body| {
            let step = body.arg(0)?;
            body.yield_values(&[body.binary("arith.addi", step, body.constant_integer(1, melior::ir::ValueLike::r#type(&step))?)?])
        })?;
        Ok(vec![new_mean, new_var, next])
    }
}
