//! Elementwise operators. `+` and `*` between tensors in a model file are `add` and `mul`.
//! Each lowers to one elementwise `linalg.generic` whose scalar body is given here.

use super::*;

/// `max(x, 0)`; NaN stays NaN, as in torch.
fn relu<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    let zero = body.constant_float(0.0, body.f32_type())?;
    body.yield_values(&[body.maximumf(body.arg(0)?, zero)?])
}

fn sigmoid<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[sigmoid_of(body, body.arg(0)?)?])
}

/// `1 / (1 + exp(-x))`, as torch and the runtime compute it.
pub(super) fn sigmoid_of<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
    let one = cx.constant_float(1.0, cx.f32_type())?;
    let exp = cx.unary("math.exp", cx.unary("arith.negf", x)?)?;
    cx.divf(one, cx.addf(one, exp)?)
}

fn add<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[body.addf(body.arg(0)?, body.arg(1)?)?])
}

fn mul<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[body.mulf(body.arg(0)?, body.arg(1)?)?])
}

/// Declares an elementwise operator from its name, inputs, shape rule and scalar body.
macro_rules! elementwise {
    ($ty:ident, $name:literal, inputs: [$($input:literal),*], infer: $infer:expr, body: $body:ident) => {
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn inputs(&self) -> &'static [InputSpec] {
                const { &[$(input($input)),*] }
            }
            fn attrs(&self) -> &'static [AttrSpec] {
                const { &[] }
            }
            fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
                $infer(inputs)
            }
            fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
                Ok(vec![cx.elementwise(node.inputs, $body)?])
            }
        }
    };
}

fn same_type(inputs: &[Vec<TensorType>]) -> Result<Inference, OpError> {
    Ok(Inference::output(inputs[0][0].clone()))
}

elementwise!(Relu, "relu", inputs: ["x"], infer: same_type, body: relu);
elementwise!(Sigmoid, "sigmoid", inputs: ["x"], infer: same_type, body: sigmoid);

/// Both operands have the same shape: mrc does not broadcast silently.
fn same_shape(op: &str, inputs: &[Vec<TensorType>]) -> Result<Inference, OpError> {
    let (a, b) = (&inputs[0][0], &inputs[1][0]);
    if a != b {
        let problem = if a.rank() != b.rank() {
            "rank mismatch"
        } else if a.rank() >= 2 && a.dims[1] != b.dims[1] && a.dims[2..] == b.dims[2..] {
            "channel mismatch"
        } else {
            "shape mismatch"
        };
        return Err(OpError { site: Site::Call, message: format!("{problem}: `{op}` of {a} and {b}"), hint: None }
            .hint("both operands of an elementwise operation must have the same type"));
    }
    Ok(Inference::output(a.clone()))
}

elementwise!(Add, "add", inputs: ["x", "y"], infer: |inputs| same_shape("add", inputs), body: add);
elementwise!(Mul, "mul", inputs: ["x", "y"], infer: |inputs| same_shape("mul", inputs), body: mul);
