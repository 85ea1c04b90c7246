//! Pooling over spatial windows.

use super::*;
use AttrType::*;

static WINDOW_ATTRS: &[AttrSpec] = &[
    attr("kernel", Ints, Default::Required),
    attr("stride", Ints, Default::Optional),
    attr("padding", Ints, Default::Ints(&[0])),
    attr("ceil_mode", Bool, Default::Bool(false)),
];

/// torch's pooling size rule; the stride defaults to the kernel, as in torch.
fn pooled(op: &str, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
    let x = &inputs[0][0];
    expect_rank(op, 0, x, "N, C, H, W")?;
    let kernel = pair(attrs, "kernel")?;
    let stride = if attrs.contains_key("stride") { pair(attrs, "stride")? } else { kernel };
    let padding = pair(attrs, "padding")?;
    let ceil = attrs.flag("ceil_mode");
    let mut dims = x.dims.clone();
    for axis in 0..2 {
        let span = x.dims[axis + 2].add(&Dim::known(2 * padding[axis] - kernel[axis]));
        let steps = if ceil { span.ceil_div(stride[axis]) } else { span.floor_div(stride[axis]) };
        dims[axis + 2] = steps.add(&Dim::known(1));
    }
    Ok(Inference::output(TensorType::new(x.dtype, dims)))
}

#[derive(Debug)]
pub struct MaxPool2d;

impl Operator for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        pooled(self.name(), inputs, attrs)
    }
}

#[derive(Debug)]
pub struct AvgPool2d;

impl Operator for AvgPool2d {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        pooled(self.name(), inputs, attrs)
    }
}

/// Average pooling to a fixed output size (the C4 head's global pooling).
#[derive(Debug)]
pub struct AdaptiveAvgPool2d;

impl Operator for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("output", Ints, Default::Ints(&[1]))] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        let [oh, ow] = pair(attrs, "output")?;
        let dims = vec![x.dims[0].clone(), x.dims[1].clone(), Dim::known(oh), Dim::known(ow)];
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
}
