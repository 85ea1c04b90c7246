//! Elementwise operators. `+` and `*` between tensors in a model file are `add` and `mul`.

use super::*;

macro_rules! unary {
    ($ty:ident, $name:literal) => {
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn inputs(&self) -> &'static [InputSpec] {
                const { &[input("x")] }
            }
            fn attrs(&self) -> &'static [AttrSpec] {
                const { &[] }
            }
            fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
                Ok(Inference::output(inputs[0][0].clone()))
            }
        }
    };
}

unary!(Relu, "relu");
unary!(Sigmoid, "sigmoid");

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

macro_rules! binary {
    ($ty:ident, $name:literal) => {
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn inputs(&self) -> &'static [InputSpec] {
                const { &[input("x"), input("y")] }
            }
            fn attrs(&self) -> &'static [AttrSpec] {
                const { &[] }
            }
            fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
                same_shape($name, inputs)
            }
        }
    };
}

binary!(Add, "add");
binary!(Mul, "mul");
