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
        Ok(Inference { outputs: vec![TensorType::new(x.dtype, vec![x.dims[0].clone(), Dim::known(out)])], state })
    }
    /// `x · weightᵀ + bias`: the product as the target computes it ([`Emitter::linear_product`]),
    /// then the bias by an elementwise generic (which MLIR fuses with a following ReLU).
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (x, weight) = (node.inputs[0], node.inputs[1]);
        let sizes = [cx.size(x, 0)?, Size::Static(node.attrs.int("out"))];
        let product_type = cx.ranked_tensor(&sizes.map(|s| s.static_value()), cx.element_of(x)?);
        let y = cx.linear_product(x, weight, product_type)?;
        if !node.attrs.flag("bias") {
            return Ok(vec![y]);
        }
        let init = cx.empty(&sizes, cx.element_of(x)?)?;
        let add = cx.generic(&[y, node.inputs[2]], &[init], &["(m, n) -> (m, n)", "(m, n) -> (n)", "(m, n) -> (m, n)"], &[Iterator::Parallel; 2], |body| {
            body.yield_values(&[body.addf(body.arg(0)?, body.arg(1)?)?])
        })?;
        Ok(add)
    }
    /// `dx = grad · W`, `dW = gradᵀ · x`, `db = Σ_rows grad`.
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let grad = cx.output_grad(0)?;
        let [x, weight] = [cx.inputs[0], cx.inputs[1]];
        let mut grads = vec![None, None];
        if cx.wanted[0] {
            grads[0] = Some(cx.add1(&Matmul, matmul_attrs(false), &[grad, weight])?);
        }
        if cx.wanted[1] {
            grads[1] = Some(cx.add1(&Matmul, matmul_attrs(true), &[grad, x])?);
        }
        if cx.attrs.flag("bias") {
            let axis = [("axis".to_string(), AttrValue::Int(1))].into_iter().collect();
            grads.push(if cx.wanted[2] { Some(cx.add1(&super::elementwise::SumToAxis, axis, &[grad])?) } else { None });
        }
        Ok(grads)
    }
}

fn matmul_attrs(transpose_a: bool) -> Attrs {
    [("transpose_a".to_string(), AttrValue::Bool(transpose_a))].into_iter().collect()
}

/// `a · b`, or `aᵀ · b` with `transpose_a`: the products of a linear layer's gradients.
#[derive(Debug)]
pub struct Matmul;

impl Operator for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("a"), input("b")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("transpose_a", Bool, Default::Bool(false))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let (a, b) = (&inputs[0][0], &inputs[1][0]);
        expect_rank(self.name(), 0, a, "M, K")?;
        expect_rank(self.name(), 1, b, "K, N")?;
        let (m, k) = if attrs.flag("transpose_a") { (1, 0) } else { (0, 1) };
        if a.dims[k] != b.dims[0] {
            return Err(OpError::sizes_at_call(format!("`matmul` of {a} and {b}: inner sizes differ")));
        }
        Ok(Inference::output(TensorType::new(a.dtype, vec![a.dims[m].clone(), b.dims[1].clone()])))
    }
    /// [`Emitter::linear_product`] computes `p · qᵀ`: `p` is `a` (or its transposed copy) and
    /// `q` the transposed copy of `b`.
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let transpose = |t: Value<'c, 'b>| -> Result<Value<'c, 'b>, LoweringError> {
            let init = cx.empty(&[cx.size(t, 1)?, cx.size(t, 0)?], cx.element_of(t)?)?;
            Ok(cx.generic(&[t], &[init], &["(i, j) -> (j, i)", "(i, j) -> (i, j)"], &[Iterator::Parallel; 2], |body| body.yield_values(&[body.arg(0)?]))?[0])
        };
        let p = if node.attrs.flag("transpose_a") { transpose(a)? } else { a };
        let q = transpose(b)?;
        let ty = cx.tensor_type(&node.outputs[0]);
        Ok(vec![cx.linear_product(p, q, ty)?])
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
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let grad = cx.output_grad(0)?;
        let x = cx.inputs[0];
        Ok(vec![Some(cx.add1(&Unflatten, cx.attrs.clone(), &[grad, x])?)])
    }
}

/// The inverse of `flatten`: `x` reshaped to the type of `like`, whose axes from `start` on
/// were merged into `x`'s last.
#[derive(Debug)]
pub struct Unflatten;

impl Operator for Unflatten {
    fn name(&self) -> &'static str {
        "unflatten"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("like")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("start", Int, Default::Int(1)).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        Ok(Inference::output(inputs[1][0].clone()))
    }
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (x, like) = (node.inputs[0], node.inputs[1]);
        let start = node.attrs.int("start") as usize;
        let sizes = cx.sizes(like)?;
        if start + 1 == sizes.len() {
            return Ok(vec![x]);
        }
        let leading: Vec<[usize; 1]> = (0..start).map(|axis| [axis]).collect();
        let trailing: Vec<usize> = (start..sizes.len()).collect();
        let mut groups: Vec<&[usize]> = leading.iter().map(|g| g.as_slice()).collect();
        groups.push(&trailing);
        Ok(vec![cx.expand_shape(x, &groups, &sizes)?])
    }
}
