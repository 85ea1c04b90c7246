//! Batch normalization, frozen (torchvision's `FrozenBatchNorm2d`) and in eval mode.

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
    let per_channel = [cx.empty(&[channels], cx.f32_type())?, cx.empty(&[channels], cx.f32_type())?];
    let identity = identity_map(1);
    let scale_shift = cx.generic(&[weight, bias, mean, var], &per_channel, &[identity.as_str(); 6], &[Iterator::Parallel], |body| {
        let [weight, bias, mean, var] = [body.arg(0)?, body.arg(1)?, body.arg(2)?, body.arg(3)?];
        let eps = body.constant_float(eps, body.f32_type())?;
        let scale = body.divf(weight, body.unary("math.sqrt", body.addf(var, eps)?)?)?;
        let shift = body.subf(bias, body.mulf(mean, scale)?)?;
        body.yield_values(&[scale, shift])
    })?;

    let rank = node.outputs[0].rank();
    let sizes = cx.sizes(x)?;
    let init = cx.empty(&sizes, cx.f32_type())?;
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
