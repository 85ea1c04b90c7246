//! Fully connected layers and the reshape that feeds them.

use super::*;
use AttrType::*;

#[derive(Debug)]
pub struct Linear;

impl Operator for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("in", Int, Default::Optional), attr("out", Int, Default::Required), attr("bias", Bool, Default::Bool(true))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        expect_rank(self.name(), 0, x, "N, features").map_err(|e| e.hint("`flatten` the input first"))?;
        let features = known(self.name(), 0, x, 1, "features")?;
        if let Some(AttrValue::Int(declared)) = attrs.get("in") {
            if *declared != features {
                return Err(OpError::at_input(
                    0,
                    format!("feature mismatch: `linear` declares {declared} input features, but its input is {x}"),
                ));
            }
        }
        let out = positive(attrs, "out")?;
        let mut state = vec![StateDecl::parameter("weight", vec![out, features])];
        if attrs.flag("bias") {
            state.push(StateDecl::parameter("bias", vec![out]));
        }
        Ok(Inference { outputs: vec![TensorType::f32(vec![x.dims[0].clone(), Dim::known(out)])], state })
    }
}

#[derive(Debug)]
pub struct Flatten;

impl Operator for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("start", Int, Default::Int(1))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let start = attrs.int("start");
        if start < 0 || start as usize >= x.rank() {
            return Err(OpError::at_attr("start", format!("`start` must be in 0..{}, found {start}", x.rank())));
        }
        let start = start as usize;
        let mut dims = x.dims[..start].to_vec();
        dims.push(x.dims[start..].iter().fold(Dim::known(1), |acc, d| acc.mul(d)));
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
}
