//! Elementwise operators. `+` and `*` between tensors in a model file are `add` and `mul`.
//! Each lowers to one elementwise `linalg.generic` whose scalar body is given here, in the
//! element type of its operands (f32, or f64 for gradient checks). Their backward operators,
//! and the reductions and fills that gradients need, are here too.

use super::*;

/// `max(x, 0)`; NaN stays NaN, as in torch.
fn relu<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    let x = body.arg(0)?;
    body.yield_values(&[body.maximumf(x, body.constant_like(0.0, x)?)?])
}

/// `grad` where `y > 0`, else 0 (torch's `threshold_backward` on the output).
fn relu_backward<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    let (grad, y) = (body.arg(0)?, body.arg(1)?);
    let zero = body.constant_like(0.0, y)?;
    let positive = body.compare_floats(CmpfPredicate::Ogt, y, zero)?;
    body.yield_values(&[body.select(positive, grad, zero)?])
}

/// `grad · (1 − y) · y`, torch's `sigmoid_backward` on the output.
fn sigmoid_backward<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    let (grad, y) = (body.arg(0)?, body.arg(1)?);
    let one_minus = body.subf(body.constant_like(1.0, y)?, y)?;
    body.yield_values(&[body.mulf(body.mulf(grad, one_minus)?, y)?])
}

fn sigmoid<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[sigmoid_of(body, body.arg(0)?)?])
}

/// `1 / (1 + exp(-x))`, as torch and the runtime compute it.
pub(super) fn sigmoid_of<'c, 'b>(cx: &Emitter<'c, 'b>, x: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
    let one = cx.constant_like(1.0, x)?;
    let exp = cx.unary("math.exp", cx.unary("arith.negf", x)?)?;
    cx.divf(one, cx.addf(one, exp)?)
}

fn add<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[body.addf(body.arg(0)?, body.arg(1)?)?])
}

fn mul<'c>(body: &Emitter<'c, '_>) -> Result<(), LoweringError> {
    body.yield_values(&[body.mulf(body.arg(0)?, body.arg(1)?)?])
}

/// Declares an elementwise operator from its name, inputs, shape rule, scalar body and
/// gradient rule.
macro_rules! elementwise {
    ($ty:ident, $name:literal, inputs: [$($input:literal),*], infer: $infer:expr, body: $body:ident, gradient: $gradient:expr) => {
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
            fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
                $gradient(cx)
            }
        }
    };
}

/// The gradient rule of an operator no gradient flows through.
fn not_differentiable(_: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
    Err(GradientError::NoRule)
}

/// `backward(grad, y)` for an operator whose gradient depends only on its output.
fn from_output(cx: &mut GradientContext, backward: &'static dyn Operator) -> Result<Vec<Option<Port>>, GradientError> {
    let grad = cx.output_grad(0)?;
    let y = cx.output(0);
    Ok(vec![Some(cx.add1(backward, Attrs::new(), &[grad, y])?)])
}

fn same_type(inputs: &[Vec<TensorType>]) -> Result<Inference, OpError> {
    Ok(Inference::output(inputs[0][0].clone()))
}

elementwise!(Relu, "relu", inputs: ["x"], infer: same_type, body: relu, gradient: |cx| from_output(cx, &ReluBackward));
elementwise!(Sigmoid, "sigmoid", inputs: ["x"], infer: same_type, body: sigmoid, gradient: |cx| from_output(cx, &SigmoidBackward));
elementwise!(ReluBackward, "relu_backward", inputs: ["grad", "y"], infer: |inputs| same_shape("relu_backward", inputs), body: relu_backward, gradient: not_differentiable);
elementwise!(SigmoidBackward, "sigmoid_backward", inputs: ["grad", "y"], infer: |inputs| same_shape("sigmoid_backward", inputs), body: sigmoid_backward, gradient: not_differentiable);

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

elementwise!(Add, "add", inputs: ["x", "y"], infer: |inputs| same_shape("add", inputs), body: add, gradient: |cx: &mut GradientContext| {
    let grad = cx.output_grad(0)?;
    Ok(vec![Some(grad), Some(grad)])
});
elementwise!(Mul, "mul", inputs: ["x", "y"], infer: |inputs| same_shape("mul", inputs), body: mul, gradient: |cx: &mut GradientContext| {
    let grad = cx.output_grad(0)?;
    let [x, y] = [cx.inputs[0], cx.inputs[1]];
    Ok(vec![Some(cx.add1(&Mul, Attrs::new(), &[grad, y])?), Some(cx.add1(&Mul, Attrs::new(), &[grad, x])?)])
});

/// A tensor of `like`'s type filled with `value`: the seed of a backward pass (1 for a loss)
/// and the zero gradient of what no loss reaches.
#[derive(Debug)]
pub struct FillLike;

impl Operator for FillLike {
    fn name(&self) -> &'static str {
        "fill_like"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("like")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("value", AttrType::Float, Default::Float(0.0))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        same_type(inputs)
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let like = node.inputs[0];
        let element = cx.element_of(like)?;
        let value = cx.constant_float(node.attrs.float("value"), element)?;
        Ok(vec![cx.fill(value, cx.empty(&cx.sizes(like)?, element)?)?])
    }
    fn gradient(&self, _: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        Ok(vec![None])
    }
}

/// The sum of `x` over every axis but `axis`: the gradient of a bias added along that axis
/// (a convolution's channels, a linear layer's features).
#[derive(Debug)]
pub struct SumToAxis;

impl Operator for SumToAxis {
    fn name(&self) -> &'static str {
        "sum_to_axis"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("axis", AttrType::Int, Default::Int(1)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let axis = attrs.int("axis") as usize;
        if axis >= x.rank() {
            return Err(OpError::at_attr("axis", format!("`sum_to_axis` of {x} along axis {axis}")));
        }
        Ok(Inference::output(TensorType::new(x.dtype, vec![x.dims[axis].clone()])))
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let x = node.inputs[0];
        let axis = node.attrs.int("axis") as usize;
        // Summed in f64, as torch's CPU reductions accumulate floats in double.
        let (element, double) = (cx.element_of(x)?, cx.element_type(DType::F64));
        let sums = cx.sums_to_axis(&[x], &[], axis, double, 1, |b, elements| Ok(vec![b.as_float(elements[0], double)?]))?[0];
        if element == double {
            return Ok(vec![sums]);
        }
        let init = cx.empty(&[cx.size(x, axis)?], element)?;
        Ok(cx.generic(&[sums], &[init], &[&identity_map(1), &identity_map(1)], &[Iterator::Parallel], |body| {
            body.yield_values(&[body.convert("arith.truncf", body.arg(0)?, element)?])
        })?)
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        not_differentiable(cx)
    }
}
