//! Batch normalization, frozen (torchvision's `FrozenBatchNorm2d`) and in eval mode.

use super::*;
use AttrType::*;

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
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("eps", Float, Default::Float(1e-5))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let c = channels(self.name(), x)?;
        let state = ["weight", "bias", "running_mean", "running_var"].map(|n| StateDecl::buffer(n, vec![c]));
        Ok(Inference { outputs: vec![x.clone()], state: state.to_vec() })
    }
}

/// `nn.BatchNorm2d`: affine parameters, running statistics and the step counter.
#[derive(Debug)]
pub struct BatchNorm;

impl Operator for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("eps", Float, Default::Float(1e-5)), attr("momentum", Float, Default::Float(0.1))] }
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
}
