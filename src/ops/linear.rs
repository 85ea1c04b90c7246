//! Fully connected layers and the reshape that feeds them.

use super::*;
use AttrType::*;

#[derive(Debug)]
pub struct Linear;

impl Operator for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const {
            &[
                attr("in", Int, Default::Optional).at_least(1),
                attr("out", Int, Default::Required).at_least(1),
                attr("bias", Bool, Default::Bool(true)),
            ]
        }
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
        let out = attrs.int("out");
        let mut state = vec![StateDecl::parameter("weight", vec![out, features])];
        if attrs.flag("bias") {
            state.push(StateDecl::parameter("bias", vec![out]));
        }
        Ok(Inference { outputs: vec![TensorType::f32(vec![x.dims[0].clone(), Dim::known(out)])], state })
    }
    /// `x · weightᵀ + bias`: the product as the target computes it ([`Emitter::linear_product`]),
    /// then the bias by an elementwise generic (which MLIR fuses with a following ReLU).
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (x, weight) = (node.inputs[0], node.inputs[1]);
        let sizes = [cx.size(x, 0)?, Size::Static(node.attrs.int("out"))];
        let product_type = cx.ranked_tensor(&sizes.map(|s| s.static_value()), cx.f32_type());
        let y = cx.linear_product(x, weight, product_type)?;
        if !node.attrs.flag("bias") {
            return Ok(vec![y]);
        }
        let init = cx.empty(&sizes, cx.f32_type())?;
        let add = cx.generic(&[y, node.inputs[2]], &[init], &["(m, n) -> (m, n)", "(m, n) -> (n)", "(m, n) -> (m, n)"], &[Iterator::Parallel; 2], |body| {
            body.yield_values(&[body.addf(body.arg(0)?, body.arg(1)?)?])
        })?;
        Ok(add)
    }
}

#[derive(Debug)]
pub struct Flatten;

impl Operator for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("start", Int, Default::Int(1)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let start = attrs.int("start");
        if start as usize >= x.rank() {
            return Err(OpError::at_attr("start", format!("`start` must be in 0..{}, found {start}", x.rank())));
        }
        let start = start as usize;
        let mut dims = x.dims[..start].to_vec();
        dims.push(x.dims[start..].iter().try_fold(Dim::known(1), |acc, d| acc.mul(d))?);
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
    /// `tensor.collapse_shape` of the axes from `start` on; nothing to do when that is one axis.
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let x = node.inputs[0];
        let (start, rank) = (node.attrs.int("start") as usize, cx.static_dims(x)?.len());
        if start + 1 == rank {
            return Ok(vec![x]);
        }
        let leading: Vec<[usize; 1]> = (0..start).map(|axis| [axis]).collect();
        let trailing: Vec<usize> = (start..rank).collect();
        let mut groups: Vec<&[usize]> = leading.iter().map(|g| g.as_slice()).collect();
        groups.push(&trailing);
        Ok(vec![cx.collapse_shape(x, &groups)?])
    }
}
