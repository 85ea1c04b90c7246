//! Convolutions.

use super::*;
use AttrType::*;

#[derive(Debug)]
pub struct Conv2d;

static CONV_ATTRS: &[AttrSpec] = &[
    attr("in", Int, Default::Optional),
    attr("out", Int, Default::Required),
    attr("kernel", Ints, Default::Required),
    attr("stride", Ints, Default::Ints(&[1])),
    attr("padding", Ints, Default::Ints(&[0])),
    attr("dilation", Ints, Default::Ints(&[1])),
    attr("groups", Int, Default::Int(1)),
    attr("bias", Bool, Default::Bool(true)),
];

/// Input channels, checked against `in:` where the model states it, and divisible by groups.
fn in_channels(op: &str, x: &TensorType, attrs: &Attrs) -> Result<(i64, i64), OpError> {
    expect_rank(op, 0, x, "N, C, H, W")?;
    let c = known(op, 0, x, 1, "channels")?;
    if let Some(AttrValue::Int(declared)) = attrs.get("in") {
        if *declared != c {
            return Err(OpError::at_input(
                0,
                format!("channel mismatch: `{op}` declares {declared} input channels, but its input is {x}"),
            )
            .hint(format!("the previous layer produces {c} channels; change `in:` or the producer")));
        }
    }
    let groups = positive(attrs, "groups")?;
    let out = positive(attrs, "out")?;
    if c % groups != 0 || out % groups != 0 {
        return Err(OpError::at_attr("groups", format!("{groups} groups do not divide {c} input and {out} output channels")));
    }
    Ok((c, groups))
}

fn with_bias(mut state: Vec<StateDecl>, attrs: &Attrs) -> Vec<StateDecl> {
    if attrs.flag("bias") {
        state.push(StateDecl::parameter("bias", vec![attrs.int("out")]));
    }
    state
}

impl Operator for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        CONV_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let (c, groups) = in_channels(self.name(), x, attrs)?;
        let out = attrs.int("out");
        let [kh, kw] = pair(attrs, "kernel")?;
        let [sh, sw] = pair(attrs, "stride")?;
        let [ph, pw] = pair(attrs, "padding")?;
        let [dh, dw] = pair(attrs, "dilation")?;
        let spatial = |d: &Dim, k: i64, s: i64, p: i64, dil: i64| {
            d.add(&Dim::known(2 * p - dil * (k - 1) - 1)).floor_div(s).add(&Dim::known(1))
        };
        let dims = vec![
            x.dims[0].clone(),
            Dim::known(out),
            spatial(&x.dims[2], kh, sh, ph, dh),
            spatial(&x.dims[3], kw, sw, pw, dw),
        ];
        Ok(Inference {
            outputs: vec![TensorType::f32(dims)],
            state: with_bias(vec![StateDecl::parameter("weight", vec![out, c / groups, kh, kw])], attrs),
        })
    }
}

#[derive(Debug)]
pub struct ConvTranspose2d;

static CONV_TRANSPOSE_ATTRS: &[AttrSpec] = &[
    attr("in", Int, Default::Optional),
    attr("out", Int, Default::Required),
    attr("kernel", Ints, Default::Required),
    attr("stride", Ints, Default::Ints(&[1])),
    attr("padding", Ints, Default::Ints(&[0])),
    attr("output_padding", Ints, Default::Ints(&[0])),
    attr("dilation", Ints, Default::Ints(&[1])),
    attr("groups", Int, Default::Int(1)),
    attr("bias", Bool, Default::Bool(true)),
];

impl Operator for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        CONV_TRANSPOSE_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        let (c, groups) = in_channels(self.name(), x, attrs)?;
        let out = attrs.int("out");
        let [kh, kw] = pair(attrs, "kernel")?;
        let [sh, sw] = pair(attrs, "stride")?;
        let [ph, pw] = pair(attrs, "padding")?;
        let [oph, opw] = pair(attrs, "output_padding")?;
        let [dh, dw] = pair(attrs, "dilation")?;
        let spatial = |d: &Dim, k: i64, s: i64, p: i64, op: i64, dil: i64| {
            d.add(&Dim::known(-1)).scale(s).add(&Dim::known(-2 * p + dil * (k - 1) + op + 1))
        };
        let dims = vec![
            x.dims[0].clone(),
            Dim::known(out),
            spatial(&x.dims[2], kh, sh, ph, oph, dh),
            spatial(&x.dims[3], kw, sw, pw, opw, dw),
        ];
        Ok(Inference {
            outputs: vec![TensorType::f32(dims)],
            state: with_bias(vec![StateDecl::parameter("weight", vec![c, out / groups, kh, kw])], attrs),
        })
    }
}
