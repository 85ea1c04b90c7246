//! Convolutions on NCHW tensors. groups == 1 is an im2col `linalg.generic` and a matrix product
//! computed as the target chooses ([`Emitter::conv_product`]), or, at stride 1 where the target
//! has them, products over shifted views of the padded input with no im2col matrix
//! ([`Emitter::window_conv_product`], [`Emitter::window_weight_gradient`]); grouped ones are
//! `linalg.conv_2d_ngchw_gfchw` on views with the group axis split out (`tensor.expand_shape`). A transposed convolution is a stride-1
//! convolution of the input spread out with zeros, with the flipped, transposed kernel, except
//! where the kernel equals the stride: then it is a matrix product and a pixel shuffle.

use super::*;
use AttrType::*;

#[derive(Debug)]
pub struct Conv2d;

/// The attributes of `conv2d`, and `extra` ones after them.
macro_rules! conv_attrs {
    ($($extra:expr),*) => {
        &[
            attr("in", Int, Default::Optional).at_least(1),
            attr("out", Int, Default::Required).at_least(1),
            attr("kernel", Ints, Default::Required).at_least(1),
            attr("stride", Ints, Default::Ints(&[1])).at_least(1),
            attr("padding", Ints, Default::Ints(&[0])).at_least(0),
            attr("dilation", Ints, Default::Ints(&[1])).at_least(1),
            attr("groups", Int, Default::Int(1)).at_least(1),
            attr("bias", Bool, Default::Bool(true)),
            $($extra),*
        ]
    };
}

static CONV_ATTRS: &[AttrSpec] = conv_attrs!();

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
    let (groups, out) = (attrs.int("groups"), attrs.int("out"));
    if c % groups != 0 || out % groups != 0 {
        return Err(OpError::at_attr(
            "groups",
            format!("{groups} groups do not divide {c} input and {out} output channels"),
        ));
    }
    Ok((c, groups))
}

fn with_bias(mut state: Vec<StateDecl>, attrs: &Attrs) -> Vec<StateDecl> {
    if attrs.flag("bias") {
        state.push(StateDecl::parameter("bias", vec![attrs.int("out")]));
    }
    state
}

/// What a convolution adds to its product before anyone reads it: its bias, and, where a pass
/// fused them into it (`conv2d_fused`), a residual tensor of its output's shape and a ReLU.
#[derive(Clone, Copy)]
struct Epilogue<'c, 'b> {
    bias: Option<Value<'c, 'b>>,
    residual: Option<Value<'c, 'b>>,
    relu: bool,
}

impl<'c, 'b> Epilogue<'c, 'b> {
    fn bias(bias: Option<Value<'c, 'b>>) -> Self {
        Epilogue { bias, residual: None, relu: false }
    }

    /// `y + bias + residual`, then ReLU, in one elementwise `linalg.generic` over `y` [N, O, H, W]
    /// (`y` itself when there is nothing to add).
    fn apply(
        &self,
        cx: &Emitter<'c, 'b>,
        y: Value<'c, 'b>,
        sizes: &[Size<'c, 'b>; 4],
    ) -> Result<Value<'c, 'b>, LoweringError> {
        if self.bias.is_none() && self.residual.is_none() && !self.relu {
            return Ok(y);
        }
        let identity = identity_map(4);
        let mut inputs = vec![y];
        let mut maps = vec![identity.as_str()];
        if let Some(bias) = self.bias {
            inputs.push(bias);
            maps.push("(n, o, y, x) -> (o)");
        }
        if let Some(residual) = self.residual {
            inputs.push(residual);
            maps.push(&identity);
        }
        maps.push(&identity);
        let init = cx.empty(sizes, cx.element_of(y)?)?;
        let (terms, relu) = (inputs.len(), self.relu);
        Ok(cx.generic(&inputs, &[init], &maps, &[Iterator::Parallel; 4], |body| {
            let mut sum = body.arg(0)?;
            for term in 1..terms {
                sum = body.addf(sum, body.arg(term)?)?;
            }
            if relu {
                sum = body.maximumf(sum, body.constant_like(0.0, sum)?)?;
            }
            body.yield_values(&[sum])
        })?[0])
    }
}

/// A convolution (groups == 1) as a matrix product: the im2col matrix of each image,
/// `[C·kh·kw, Ho, Wo]` (for a 1×1 stride-1 convolution, the input itself),
/// gathered by a `linalg.generic`, times the weights viewed as `[O, C·kh·kw]`
/// ([`Emitter::conv_product`]); the epilogue is one elementwise `linalg.generic`, which MLIR's
/// fusion merges with what follows where the graph passes left anything (batch norm at `-O0`).
fn im2col_matmul<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    weight: Weight<'c, 'b>,
    epilogue: Epilogue<'c, 'b>,
    window: &Window,
    sizes: &[Size<'c, 'b>; 4],
) -> Result<Value<'c, 'b>, LoweringError> {
    let [n, _, ho, wo] = *sizes;
    let output_type = cx.ranked_tensor(&sizes.map(|size| size.static_value()), cx.element_of(x)?);
    let (matrix, packed) = match weight {
        Weight::Winograd(_) => {
            return Err(LoweringError::Build("Winograd's filters reached the im2col products".into()))
        }
        Weight::Kernel(kernel) => (cx.collapse_shape(kernel, &[&[0], &[1, 2, 3]])?, false),
        Weight::Packed(matrix) => (matrix, true),
    };
    let windows = match window.stride {
        [1, 1] if window.kernel != [1, 1] => {
            cx.window_conv_product(matrix, packed, x, window.kernel, window.dilation, sizes)?
        }
        _ => None,
    };
    let y = if let Some(y) = windows {
        y
    } else if window.kernel == [1, 1] && window.stride == [1, 1] {
        cx.conv_product(matrix, packed, x, output_type)?
    } else {
        // The im2col matrix (9× the input for a 3×3 kernel) lives only inside this region.
        let body = Block::new(&[]);
        {
            let cx = cx.nested(&body);
            let c = cx.size(x, 1)?;
            let [kh, kw] = window.kernel.map(Size::Static);
            let gathered = cx.empty(&[n, c, kh, kw, ho, wo], cx.element_of(x)?)?;
            let [sh, sw] = window.stride;
            let [dh, dw] = window.dilation;
            let source = format!("(n, c, i, j, y, x) -> (n, c, y * {sh} + i * {dh}, x * {sw} + j * {dw})");
            let gathered =
                cx.generic(&[x], &[gathered], &[&source, &identity_map(6)], &[Iterator::Parallel; 6], |body| {
                    body.yield_values(&[body.arg(0)?])
                })?[0];
            let columns = cx.collapse_shape(gathered, &[&[0], &[1, 2, 3], &[4], &[5]])?;
            cx.yield_region(&[cx.conv_product(matrix, packed, columns, output_type)?])?;
        }
        cx.execute_region(body, &[output_type])?[0]
    };
    epilogue.apply(cx, y, sizes)
}

/// A convolution's weights: the kernel [O, C / groups, kh, kw], or what the
/// `pack-gemm-weights` pass derived from it when the weights load: the matrix (column-major
/// [C·kh·kw, O]) or Winograd's filters [36, C, O].
#[derive(Clone, Copy)]
enum Weight<'c, 'b> {
    Kernel(Value<'c, 'b>),
    Packed(Value<'c, 'b>),
    Winograd(Value<'c, 'b>),
}

/// The geometry of one 2-d convolution, per spatial axis (height, width).
#[derive(Clone, Copy)]
struct Window {
    kernel: [i64; 2],
    stride: [i64; 2],
    dilation: [i64; 2],
    /// Zeros before and after the input.
    low: [i64; 2],
    high: [i64; 2],
    groups: i64,
}

/// Convolution of `x` [N, C, H, W] with `weight` [O, C / groups, kh, kw] (groups split along
/// the channel axes in order), then the `epilogue`. `tensor.pad` provides the zero padding
/// (Winograd's products pad their input themselves); a grouped convolution accumulates into the
/// bias (or zeros).
fn convolution<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    weight: Weight<'c, 'b>,
    epilogue: Epilogue<'c, 'b>,
    window: &Window,
) -> Result<Value<'c, 'b>, LoweringError> {
    if let Some(y) = winograd_convolution(cx, x, weight, epilogue, window, None)? {
        return Ok(y);
    }
    let x = window.padded(cx, x)?;
    let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let (n, c, h, w) = (n?, c?, h?, w?);
    let out = match weight {
        Weight::Kernel(kernel) => cx.size(kernel, 0)?,
        Weight::Packed(matrix) => cx.size(matrix, 1)?,
        Weight::Winograd(filters) => cx.size(filters, 2)?,
    };
    let spatial = |size, axis: usize| {
        cx.size_windows(size, -window.dilation[axis] * (window.kernel[axis] - 1) - 1, window.stride[axis])
    };
    let sizes = [n, out, spatial(h, 0)?, spatial(w, 1)?];
    let attributes = [
        ("strides", format!("dense<{:?}> : tensor<2xi64>", window.stride)),
        ("dilations", format!("dense<{:?}> : tensor<2xi64>", window.dilation)),
    ];
    let g = window.groups;
    let weight = match weight {
        _ if g == 1 => return im2col_matmul(cx, x, weight, epilogue, window, &sizes),
        Weight::Kernel(kernel) => kernel,
        Weight::Packed(_) | Weight::Winograd(_) => {
            return Err(LoweringError::Build("a grouped convolution's weights are not packed".into()))
        }
    };
    let init = match epilogue.bias {
        Some(bias) => cx.broadcast(bias, cx.empty(&sizes, cx.element_of(x)?)?, &[0, 2, 3])?,
        None => cx.zeros(&sizes, cx.element_of(x)?)?,
    };

    let split = |size: Size<'c, 'b>| match size {
        Size::Static(channels) => Ok(Size::Static(channels / g)),
        Size::Dynamic(_) => cx.size_div(size, g),
    };
    let channel_groups: [&[usize]; 4] = [&[0], &[1, 2], &[3], &[4]];
    let grouped_x = cx.expand_shape(x, &channel_groups, &[n, Size::Static(g), split(c)?, h, w])?;
    let [kh, kw] = window.kernel.map(Size::Static);
    let grouped_weight = cx.expand_shape(
        weight,
        &[&[0, 1], &[2], &[3], &[4]],
        &[Size::Static(g), split(out)?, cx.size(weight, 1)?, kh, kw],
    )?;
    let grouped_init =
        cx.expand_shape(init, &channel_groups, &[n, Size::Static(g), split(out)?, sizes[2], sizes[3]])?;
    let grouped = cx.structured(
        "linalg.conv_2d_ngchw_gfchw",
        &[grouped_x, grouped_weight],
        grouped_init,
        &attributes,
        Combiner::MulAdd,
    )?;
    let y = cx.collapse_shape(grouped, &channel_groups)?;
    Epilogue { bias: None, ..epilogue }.apply(cx, y, &sizes)
}

/// A 3×3 stride-1 convolution by Winograd's F(4×4, 3×3), where the target has its products,
/// with its `epilogue`; `None` for any other convolution. The runtime writes the window's zeros
/// while it lays the input out channels-last (`laid_out`, where the graph has that layout
/// already: see [`ChannelsLast`]), and the epilogue's sums while it transforms the output, so
/// `x` goes to it unpadded and nothing reads its output again.
fn winograd_convolution<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    weight: Weight<'c, 'b>,
    epilogue: Epilogue<'c, 'b>,
    window: &Window,
    laid_out: Option<Value<'c, 'b>>,
) -> Result<Option<Value<'c, 'b>>, LoweringError> {
    let (filters, transformed, out) = match weight {
        Weight::Winograd(_) if !cx.has_winograd_products() => {
            return Err(LoweringError::Build("Winograd's filters on a target without Winograd products".into()));
        }
        Weight::Winograd(filters) => (filters, true, cx.size(filters, 2)?),
        Weight::Kernel(kernel) if window.winograd() && cx.has_winograd_products() => {
            (kernel, false, cx.size(kernel, 0)?)
        }
        _ => return Ok(None),
    };
    let ([low_h, low_w], [high_h, high_w]) = (window.low, window.high);
    let sizes = [
        cx.size(x, 0)?,
        out,
        cx.size_add(cx.size(x, 2)?, low_h + high_h - 2)?,
        cx.size_add(cx.size(x, 3)?, low_w + high_w - 2)?,
    ];
    let output_type = cx.ranked_tensor(&sizes.map(|size| size.static_value()), cx.element_of(x)?);
    let laid_out = match laid_out {
        Some(laid_out) => laid_out,
        None => cx.channels_last(x, [low_h, low_w, high_h, high_w])?,
    };
    let Epilogue { bias, residual, relu } = epilogue;
    Ok(Some(cx.winograd_conv_product(filters, transformed, laid_out, bias, residual, relu, output_type)?))
}

impl Operator for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
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
        let [h, w] = window_sizes(self.name(), x, [kh, kw], [sh, sw], [ph, pw], [dh, dw], false)?;
        let dims = vec![x.dims[0].clone(), Dim::known(out), h, w];
        Ok(Inference {
            outputs: vec![TensorType::new(x.dtype, dims)],
            state: with_bias(vec![StateDecl::parameter("weight", vec![out, c / groups, kh, kw])], attrs),
        })
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let bias = node.attrs.flag("bias").then(|| node.inputs[2]);
        Ok(vec![convolution(
            cx,
            node.inputs[0],
            Weight::Kernel(node.inputs[1]),
            Epilogue::bias(bias),
            &Window::of(node.attrs),
        )?])
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        convolution_gradient(cx, false)
    }
}

impl Window {
    /// `x` with the window's zeros around it.
    fn padded<'c, 'b>(&self, cx: &Emitter<'c, 'b>, x: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
        if self.low == [0, 0] && self.high == [0, 0] {
            return Ok(x);
        }
        cx.pad(x, &[0, 0, self.low[0], self.low[1]], &[0, 0, self.high[0], self.high[1]], 0.0)
    }

    /// The zeros around the input, `[top, left, bottom, right]`.
    fn padding(&self) -> [i64; 4] {
        [self.low[0], self.low[1], self.high[0], self.high[1]]
    }

    /// The window of the input gradient's convolution at stride 1: the gradient padded by the
    /// dilated kernel's reach less the forward's padding, on each side (`None` where the
    /// forward's padding is wider than the reach).
    fn input_gradient_window(&self) -> Option<Window> {
        let reach = [0, 1].map(|axis| self.dilation[axis] * (self.kernel[axis] - 1));
        let low = [0, 1].map(|axis| reach[axis] - self.low[axis]);
        let high = [0, 1].map(|axis| reach[axis] - self.high[axis]);
        (low.iter().chain(&high).all(|&zeros| zeros >= 0)).then_some(Window { low, high, ..*self })
    }

    /// Whether Winograd's F(4×4, 3×3) computes this convolution: 3×3, stride 1, undilated, one
    /// group.
    fn winograd(&self) -> bool {
        self.kernel == [3, 3] && self.stride == [1, 1] && self.dilation == [1, 1] && self.groups == 1
    }

    /// The window of a `conv2d` or of its backward operators (padding on both sides).
    fn of(attrs: &Attrs) -> Window {
        let padding = checked_pair(attrs, "padding");
        Window {
            kernel: checked_pair(attrs, "kernel"),
            stride: checked_pair(attrs, "stride"),
            dilation: checked_pair(attrs, "dilation"),
            low: padding,
            high: padding,
            groups: attrs.int("groups"),
        }
    }
}

/// A tensor [N, C, H, W] laid out channels-last with `padding` ([top, left, bottom, right])
/// zeros around it, [N, H + top + bottom, W + left + right, C]: the layout Winograd's products
/// read, made once for every convolution that reads it (a layer's forward and weight gradient,
/// an output gradient's input and weight gradients). Internal: the CPU target's
/// `lay-out-for-winograd` pass creates it.
#[derive(Debug)]
pub struct ChannelsLast;

impl Operator for ChannelsLast {
    fn name(&self) -> &'static str {
        "channels_last"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[attr("padding", Ints, Default::Required).at_least(0)] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let x = &inputs[0][0];
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        let padding: [i64; 4] = attrs
            .ints("padding")
            .try_into()
            .map_err(|_| OpError::at_attr("padding", "`padding` takes [top, left, bottom, right]"))?;
        Ok(Inference::output(channels_last_type(x, padding)?))
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let padding: [i64; 4] = node
            .attrs
            .ints("padding")
            .try_into()
            .map_err(|_| LoweringError::Build("unchecked `channels_last` padding".into()))?;
        Ok(vec![cx.channels_last(node.inputs[0], padding)?])
    }
}

/// The type of `x` [N, C, H, W] laid out by [`ChannelsLast`] with `padding`.
fn channels_last_type(x: &TensorType, [top, left, bottom, right]: [i64; 4]) -> Result<TensorType, OpError> {
    let d = &x.dims;
    let (h, w) = (d[2].add(&Dim::known(top + bottom))?, d[3].add(&Dim::known(left + right))?);
    Ok(TensorType::new(x.dtype, vec![d[0].clone(), h, w, d[1].clone()]))
}

/// The tensors of list slot `slot`, none where the caller gave fewer slots (a trailing list).
fn list_at(inputs: &[Vec<TensorType>], slot: usize) -> &[TensorType] {
    inputs.get(slot).map_or(&[], Vec::as_slice)
}

/// Checks the layouts a convolution operator reads (slot `slot`): none, or with `laid_out`,
/// each tensor of `of` laid out with its padding.
fn check_laid_out(
    laid_out: &[TensorType],
    of: &[(&TensorType, [i64; 4])],
    attrs: &Attrs,
    slot: usize,
) -> Result<(), OpError> {
    if !attrs.flag("laid_out") {
        return match laid_out {
            [] => Ok(()),
            _ => Err(OpError::at_input(slot, "layouts given without `laid_out`")),
        };
    }
    if !Window::of(attrs).winograd() {
        return Err(OpError::at_attr("laid_out", "only a convolution Winograd computes reads layouts"));
    }
    let expected = of.iter().map(|(x, padding)| channels_last_type(x, *padding)).collect::<Result<Vec<_>, _>>()?;
    if laid_out != expected.as_slice() {
        let shown = |types: &[TensorType]| types.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        return Err(OpError::at_input(slot, format!("layouts [{}] where [{}] fit", shown(laid_out), shown(&expected))));
    }
    Ok(())
}

/// The zeros around the input of the convolution of `attrs`, and around its output gradient
/// in the input gradient's convolution at stride 1 (`None` where the padding is wider than the
/// kernel's reach), `[top, left, bottom, right]` each: what its layouts hold.
pub fn layout_paddings(attrs: &Attrs) -> ([i64; 4], Option<[i64; 4]>) {
    let window = Window::of(attrs);
    (window.padding(), window.input_gradient_window().map(|gradient| gradient.padding()))
}

/// Whether the convolution of `attrs` (`conv2d`'s) is one Winograd's F(4×4, 3×3) computes.
pub fn winograd_fits(attrs: &Attrs) -> bool {
    Window::of(attrs).winograd()
}

/// A `conv2d` with what follows it fused in by the `fuse-conv-epilogues` pass: an optional
/// residual tensor added to its result, then an optional ReLU, all in the convolution's
/// epilogue; with `packed` (the `pack-gemm-weights` pass), its weight is the column-major
/// matrix [C·kh·kw, O], or with `winograd` too, Winograd's transformed filters [36, C, O].
/// With `laid_out` (the `lay-out-for-winograd` pass), a Winograd convolution reads `x` laid
/// out channels-last by a [`ChannelsLast`] node. Internal: model files cannot call it. Inputs:
/// `x`, the residual (none or one), the layout (one with `laid_out`), then the convolution's
/// weights.
#[derive(Debug)]
pub struct FusedConv2d;

static FUSED_CONV_ATTRS: &[AttrSpec] = conv_attrs!(
    attr("relu", Bool, Default::Bool(false)),
    attr("packed", Bool, Default::Bool(false)),
    attr("winograd", Bool, Default::Bool(false)),
    attr("laid_out", Bool, Default::Bool(false))
);

impl Operator for FusedConv2d {
    fn name(&self) -> &'static str {
        "conv2d_fused"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), list_input("residual"), list_input("laid_out")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        FUSED_CONV_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let mut inference = Conv2d.infer(&inputs[..1], attrs)?;
        if attrs.flag("packed") {
            if attrs.int("groups") != 1 {
                return Err(OpError::at_attr("packed", "only a convolution of one group has packed weights"));
            }
            let kernel = &inference.state[0].dims;
            inference.state[0].dims = if attrs.flag("winograd") {
                if !winograd_fits(attrs) {
                    return Err(OpError::at_attr(
                        "winograd",
                        "only a 3×3 stride-1 undilated convolution has Winograd's filters",
                    ));
                }
                vec![36, kernel[1], kernel[0]]
            } else {
                vec![kernel[1..].iter().product(), kernel[0]]
            };
        }
        match inputs[1].as_slice() {
            [] => {}
            [residual] if *residual == inference.outputs[0] => {}
            [residual] => {
                return Err(OpError::at_input(
                    1,
                    format!("residual {residual} for a convolution giving {}", inference.outputs[0]),
                ))
            }
            more => return Err(OpError::at_input(1, format!("one residual at most, found {}", more.len()))),
        }
        let window = Window::of(attrs);
        check_laid_out(list_at(inputs, 2), &[(&inputs[0][0], window.padding())], attrs, 2)?;
        Ok(inference)
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let with_bias = node.attrs.flag("bias");
        let (x, rest) = (node.inputs[0], &node.inputs[1..]);
        let (tensors, weights) = rest.split_at(rest.len() - 1 - with_bias as usize);
        let (residual, laid_out) = tensors.split_at(tensors.len() - node.attrs.flag("laid_out") as usize);
        let epilogue = Epilogue {
            bias: with_bias.then(|| weights[1]),
            residual: residual.first().copied(),
            relu: node.attrs.flag("relu"),
        };
        let weight = match (node.attrs.flag("packed"), node.attrs.flag("winograd")) {
            (true, true) => Weight::Winograd(weights[0]),
            (true, false) => Weight::Packed(weights[0]),
            _ => Weight::Kernel(weights[0]),
        };
        let window = Window::of(node.attrs);
        if let [laid_out] = laid_out {
            return winograd_convolution(cx, x, weight, epilogue, &window, Some(*laid_out))?
                .map(|y| vec![y])
                .ok_or_else(|| {
                    LoweringError::Build(format!(
                        "`{}`: a layout for a convolution Winograd does not compute",
                        node.name
                    ))
                });
        }
        Ok(vec![convolution(cx, x, weight, epilogue, &window)?])
    }
}

#[derive(Debug)]
pub struct ConvTranspose2d;

static CONV_TRANSPOSE_ATTRS: &[AttrSpec] = &[
    attr("in", Int, Default::Optional).at_least(1),
    attr("out", Int, Default::Required).at_least(1),
    attr("kernel", Ints, Default::Required).at_least(1),
    attr("stride", Ints, Default::Ints(&[1])).at_least(1),
    attr("padding", Ints, Default::Ints(&[0])).at_least(0),
    attr("output_padding", Ints, Default::Ints(&[0])).at_least(0),
    attr("dilation", Ints, Default::Ints(&[1])).at_least(1),
    attr("groups", Int, Default::Int(1)).at_least(1),
    attr("bias", Bool, Default::Bool(true)),
];

impl Operator for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
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
        if oph >= sh.max(dh) || opw >= sw.max(dw) {
            let message = format!("`output_padding` {:?} is not smaller than the stride or the dilation", [oph, opw]);
            return Err(OpError::at_attr("output_padding", message)
                .hint("torch requires output_padding < max(stride, dilation)"));
        }
        // (size - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1
        let spatial = |d: &Dim, k: i64, s: i64, p: i64, op: i64, dil: i64| -> Result<Dim, OpError> {
            let reach = Dim::known(k).sub(&Dim::known(1))?.scale(dil)?;
            let one = Dim::known(1);
            let size =
                d.sub(&one)?.scale(s)?.sub(&Dim::known(p).scale(2)?)?.add(&reach)?.add(&Dim::known(op))?.add(&one)?;
            positive_size(self.name(), x, size, "the padding crops more than the transposed convolution produces")
        };
        let dims = vec![
            x.dims[0].clone(),
            Dim::known(out),
            spatial(&x.dims[2], kh, sh, ph, oph, dh)?,
            spatial(&x.dims[3], kw, sw, pw, opw, dw)?,
        ];
        Ok(Inference {
            outputs: vec![TensorType::new(x.dtype, dims)],
            state: with_bias(vec![StateDecl::parameter("weight", vec![c, out / groups, kh, kw])], attrs),
        })
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        lower_transposed(cx, node, Kernel::State(node.inputs[1]))
    }
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        if checked_pair(&cx.attrs, "output_padding") != [0, 0] {
            return Err(GradientError::NoRule);
        }
        convolution_gradient(cx, true)
    }
}

/// Output position `o` along an axis receives input `i` through kernel tap `k` where
/// `o = i·stride - padding + k·dilation`. Spreading the input out (`stride - 1` zeros between
/// elements, `tensor.insert_slice` with strides into zeros) and padding it by
/// `dilation·(kernel - 1) - padding` before (plus `output_padding` after) turns that into a
/// stride-1 convolution with the kernel flipped and its channel axes swapped. Negative
/// padding (padding larger than the dilated kernel) crops the result instead.
fn lower_transposed<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    node: &LowerNode<'_, 'c, 'b>,
    kernel: Kernel<'c, 'b>,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let attrs = node.attrs;
    let x = node.inputs[0];
    let [kernel_size, stride, padding, output_padding, dilation] =
        ["kernel", "stride", "padding", "output_padding", "dilation"].map(|name| checked_pair(attrs, name));
    let groups = attrs.int("groups");
    let bias = attrs.flag("bias").then(|| node.inputs[2]);
    if non_overlapping(attrs) {
        return Ok(vec![non_overlapping_transpose(cx, x, kernel, bias, kernel_size)?]);
    }
    let reach = [0, 1].map(|axis| dilation[axis] * (kernel_size[axis] - 1));
    let low = [0, 1].map(|axis| reach[axis] - padding[axis]);
    let high = [0, 1].map(|axis| low[axis] + output_padding[axis]);
    let (pad_low, pad_high) = (low.map(|p| p.max(0)), high.map(|p| p.max(0)));

    let [n, c, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let (n, c) = (n?, c?);
    let spread = |size, axis: usize| {
        let spread = cx.size_add(cx.size_mul(cx.size_add(size, -1)?, stride[axis])?, 1)?;
        cx.size_add(spread, pad_low[axis] + pad_high[axis])
    };
    let zeros = cx.zeros(&[n, c, spread(h?, 0)?, spread(w?, 1)?], cx.element_of(x)?)?;
    let spread_x = cx.insert_slice(x, zeros, &[0, 0, pad_low[0], pad_low[1]], &[1, 1, stride[0], stride[1]])?;

    let window = Window { kernel: kernel_size, stride: [1, 1], dilation, low: [0, 0], high: [0, 0], groups };
    let flipped = match kernel {
        Kernel::Prepared(flipped) => flipped,
        Kernel::State(weight) => flipped_kernel(cx, weight, groups)?,
    };
    let y = convolution(cx, spread_x, Weight::Kernel(flipped), Epilogue::bias(bias), &window)?;
    if low == pad_low && high == pad_high {
        return Ok(vec![y]);
    }
    let [n, o, h, w] = [0, 1, 2, 3].map(|axis| cx.size(y, axis));
    let cropped = |size, axis: usize| cx.size_add(size, (low[axis] - pad_low[axis]) + (high[axis] - pad_high[axis]));
    let sizes = [n?, o?, cropped(h?, 0)?, cropped(w?, 1)?];
    Ok(vec![cx.extract_slice(y, &[0, 0, pad_low[0] - low[0], pad_low[1] - low[1]], &sizes)?])
}

/// The kernel of a transposed convolution: its weight as the checkpoint holds it, or already laid
/// out for the lowering by the `fold-constant-weights` pass (the flipped kernel of the
/// equivalent direct convolution, or, where the kernel equals the stride, the matrix of taps).
#[derive(Clone, Copy)]
enum Kernel<'c, 'b> {
    State(Value<'c, 'b>),
    Prepared(Value<'c, 'b>),
}

/// Whether a transposed convolution's taps do not overlap (kernel == stride, no padding or
/// dilation, one group): then it is a matrix product and a pixel shuffle.
pub fn non_overlapping(attrs: &Attrs) -> bool {
    let [kernel, stride, padding, output_padding, dilation] =
        ["kernel", "stride", "padding", "output_padding", "dilation"].map(|name| checked_pair(attrs, name));
    attrs.int("groups") == 1 && kernel == stride && padding == [0, 0] && output_padding == [0, 0] && dilation == [1, 1]
}

/// A `conv_transpose2d` whose kernel the `fold-constant-weights` pass laid out at load time:
/// [O·kh·kw, C] where the taps do not overlap ([`non_overlapping`]), else the flipped kernel
/// [O, C / groups, kh, kw]. Internal: model files cannot call it.
#[derive(Debug)]
pub struct PreparedConvTranspose2d;

impl Operator for PreparedConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d_prepared"
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        CONV_TRANSPOSE_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let mut inference = ConvTranspose2d.infer(inputs, attrs)?;
        let [c, _, kh, kw] = inference.state[0].dims[..] else { unreachable!("a 4-d kernel") };
        let out = attrs.int("out");
        inference.state[0].dims =
            if non_overlapping(attrs) { vec![out * kh * kw, c] } else { vec![out, c / attrs.int("groups"), kh, kw] };
        Ok(inference)
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        lower_transposed(cx, node, Kernel::Prepared(node.inputs[1]))
    }
}

/// A transposed convolution whose kernel equals its stride (the mask head's 2×2 upsampling):
/// every output pixel receives exactly one input pixel, through tap `(y mod kh, x mod kw)`. So it
/// is one matrix product, the kernel viewed as `[O·kh·kw, C]` times each image's `[C, H·W]`,
/// followed by a `linalg.generic` that moves each tap's plane to its place in the output
/// (a pixel shuffle) and adds the bias; no multiplication by the zeros of the spread input.
fn non_overlapping_transpose<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    kernel: Kernel<'c, 'b>,
    bias: Option<Value<'c, 'b>>,
    [kh, kw]: [i64; 2],
) -> Result<Value<'c, 'b>, LoweringError> {
    let matrix = match kernel {
        Kernel::Prepared(matrix) => matrix,
        Kernel::State(weight) => {
            let dims = cx.static_dims(weight)?;
            let [c, o] = [0, 1].map(|axis| dims[axis].expect("state tensors have static shapes"));
            // [C, O·kh·kw] → [O·kh·kw, C]: the kernel's rows, one per (output channel, tap).
            let matrix = cx.collapse_shape(weight, &[&[0], &[1, 2, 3]])?;
            let transposed = cx.empty(&[Size::Static(o * kh * kw), Size::Static(c)], cx.element_of(weight)?)?;
            let maps = ["(m, k) -> (k, m)", &identity_map(2)];
            cx.generic(&[matrix], &[transposed], &maps, &[Iterator::Parallel; 2], |body| {
                body.yield_values(&[body.arg(0)?])
            })?[0]
        }
    };
    let taps = cx.static_dims(matrix)?[0].expect("weights have static shapes");
    let o = taps / (kh * kw);
    let [n, _, h, w] = [0, 1, 2, 3].map(|axis| cx.size(x, axis));
    let (n, h, w) = (n?, h?, w?);
    let product_type =
        cx.ranked_tensor(&[n.static_value(), Some(taps), h.static_value(), w.static_value()], cx.element_of(x)?);
    let planes = cx.conv_product(matrix, false, x, product_type)?;

    let sizes = [n, Size::Static(o), cx.size_mul(h, kh)?, cx.size_mul(w, kw)?];
    let init = cx.empty(&sizes, cx.element_of(x)?)?;
    let shuffle = format!(
        "(n, o, y, x) -> (n, o * {} + (y mod {kh}) * {kw} + x mod {kw}, y floordiv {kh}, x floordiv {kw})",
        kh * kw
    );
    let identity = identity_map(4);
    let Some(bias) = bias else {
        return Ok(cx.generic(&[planes], &[init], &[&shuffle, &identity], &[Iterator::Parallel; 4], |body| {
            body.yield_values(&[body.arg(0)?])
        })?[0]);
    };
    Ok(cx.generic(
        &[planes, bias],
        &[init],
        &[&shuffle, "(n, o, y, x) -> (o)", &identity],
        &[Iterator::Parallel; 4],
        |body| body.yield_values(&[body.addf(body.arg(0)?, body.arg(1)?)?]),
    )?[0])
}

/// The kernel of a transposed convolution, [C, O / groups, kh, kw], as the kernel of the
/// equivalent direct convolution, [O, C / groups, kh, kw], spatially flipped: one
/// `linalg.generic` on views with the group axis split out.
fn flipped_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    weight: Value<'c, 'b>,
    groups: i64,
) -> Result<Value<'c, 'b>, LoweringError> {
    let dims = cx.static_dims(weight)?;
    let [c, f, kh, kw] = [0, 1, 2, 3].map(|axis| dims[axis].expect("state tensors have static shapes"));
    let sizes = |dims: [i64; 5]| dims.map(Size::Static);
    let grouped = cx.expand_shape(weight, &[&[0, 1], &[2], &[3], &[4]], &sizes([groups, c / groups, f, kh, kw]))?;
    let init = cx.empty(&sizes([groups, f, c / groups, kh, kw]), cx.element_of(weight)?)?;
    let flip = format!("(d0, d1, d2, d3, d4) -> (d0, d2, d1, {} - d3, {} - d4)", kh - 1, kw - 1);
    let identity = identity_map(5);
    let flipped = cx.generic(&[grouped], &[init], &[&flip, &identity], &[Iterator::Parallel; 5], |body| {
        body.yield_values(&[body.arg(0)?])
    })?;
    cx.collapse_shape(flipped[0], &[&[0, 1], &[2], &[3], &[4]])
}

// ---- gradients -----------------------------------------------------------------------------

/// The window attributes of a convolution, which its backward operators take, and `extra`
/// ones after them.
macro_rules! window_attrs {
    ($($extra:expr),*) => {
        &[
            attr("kernel", Ints, Default::Required).at_least(1),
            attr("stride", Ints, Default::Ints(&[1])).at_least(1),
            attr("padding", Ints, Default::Ints(&[0])).at_least(0),
            attr("dilation", Ints, Default::Ints(&[1])).at_least(1),
            attr("groups", Int, Default::Int(1)).at_least(1),
            $($extra),*
        ]
    };
}

static WINDOW_ATTRS: &[AttrSpec] = window_attrs!();

/// `attrs` restricted to the window's.
fn window_attrs(attrs: &Attrs) -> Attrs {
    WINDOW_ATTRS.iter().map(|spec| (spec.name.to_string(), attrs[spec.name].clone())).collect()
}

/// The gradients of a convolution `y = conv(x, weight) + bias` (or of a transposed one, whose
/// input and output gradients swap roles: `x` is then what the direct convolution produces).
fn convolution_gradient(cx: &mut GradientContext, transposed: bool) -> Result<Vec<Option<Port>>, GradientError> {
    let grad = cx.output_grad(0)?;
    let [x, weight] = [cx.inputs[0], cx.inputs[1]];
    let window = window_attrs(&cx.attrs);
    let dx = match (cx.wanted[0], transposed) {
        (false, _) => None,
        (true, false) => Some(cx.add1(&Conv2dBackwardInput, window.clone(), &[grad, weight, x])?),
        (true, true) => Some(cx.add1(&Conv2dData, window.clone(), &[grad, weight])?),
    };
    let dw = match (cx.wanted[1], transposed) {
        (false, _) => None,
        (true, false) => Some(cx.add1(&Conv2dBackwardWeight, window, &[x, grad])?),
        (true, true) => Some(cx.add1(&Conv2dBackwardWeight, window, &[grad, x])?),
    };
    let mut grads = vec![dx, dw];
    if cx.attrs.flag("bias") {
        let axis = [("axis".to_string(), AttrValue::Int(1))].into_iter().collect();
        grads.push(if cx.wanted[2] { Some(cx.add1(&super::elementwise::SumToAxis, axis, &[grad])?) } else { None });
    }
    Ok(grads)
}

/// A convolution whose weight is a tensor input rather than its own state: the input gradient
/// of a transposed convolution. Inputs `x` [N, C, H, W] and `weight` [O, C / groups, kh, kw].
#[derive(Debug)]
pub struct Conv2dData;

impl Operator for Conv2dData {
    fn name(&self) -> &'static str {
        "conv2d_data"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("weight")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        WINDOW_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let (x, weight) = (&inputs[0][0], &inputs[1][0]);
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        expect_rank(self.name(), 1, weight, "O, C / groups, kh, kw")?;
        let [h, w] = window_sizes(
            self.name(),
            x,
            pair(attrs, "kernel")?,
            pair(attrs, "stride")?,
            pair(attrs, "padding")?,
            pair(attrs, "dilation")?,
            false,
        )?;
        Ok(Inference::output(TensorType::new(x.dtype, vec![x.dims[0].clone(), weight.dims[0].clone(), h, w])))
    }
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let window = Window::of(node.attrs);
        Ok(vec![convolution(cx, node.inputs[0], Weight::Kernel(node.inputs[1]), Epilogue::bias(None), &window)?])
    }
}

/// The gradient of a convolution's input: inputs `grad` [N, O, Ho, Wo], `weight`
/// [O, C / groups, kh, kw] and `like` (the input, for its size) [N, C, H, W]; with `laid_out`
/// (the `lay-out-for-winograd` pass), then `grad` laid out channels-last with the zeros of its
/// convolution ([`ChannelsLast`]), which Winograd's products read.
#[derive(Debug)]
pub struct Conv2dBackwardInput;

/// The attributes of the backward operators: the forward's window, and whether Winograd's
/// products read layouts made by [`ChannelsLast`] nodes.
static BACKWARD_ATTRS: &[AttrSpec] = window_attrs!(attr("laid_out", Bool, Default::Bool(false)));

impl Operator for Conv2dBackwardInput {
    fn name(&self) -> &'static str {
        "conv2d_backward_input"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("grad"), input("weight"), input("like"), list_input("laid_out")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        BACKWARD_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let gradient_window = Window::of(attrs).input_gradient_window();
        let padding = gradient_window.map_or([0; 4], |window| window.padding());
        check_laid_out(list_at(inputs, 3), &[(&inputs[0][0], padding)], attrs, 3)?;
        Ok(Inference::output(inputs[2][0].clone()))
    }
    /// With a stride and one group, [`strided_input_gradient`]. Otherwise a transposed
    /// convolution of the gradient: a stride-1 convolution with the kernel flipped and its
    /// channel axes swapped, of the gradient padded (at stride 1) or spread out by the stride
    /// (zeros between its elements, `tensor.insert_slice` into zeros of the padded input's
    /// size, which `like` gives even where the stride made the forward floor its size).
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (grad, weight, like) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let window = Window::of(node.attrs);
        if window.groups == 1 && window.stride != [1, 1] {
            return Ok(vec![strided_input_gradient(cx, grad, weight, like, &window)?]);
        }
        let reach = [0, 1].map(|axis| window.dilation[axis] * (window.kernel[axis] - 1));
        let low = [0, 1].map(|axis| reach[axis] - window.low[axis]);
        let Some(direct) = window.input_gradient_window() else {
            let reason =
                "the gradient of a convolution padded by more than its dilated kernel is not lowered".to_string();
            return Err(LoweringError::Unsupported {
                op: "conv2d_backward_input",
                node: node.name.to_string(),
                reason,
            });
        };
        let flipped = flipped_kernel(cx, weight, window.groups)?;
        if window.stride == [1, 1] {
            // Nothing to spread: the gradient padded by the kernel's reach less the forward's
            // padding, which the convolution adds as its own (Winograd's without a copy).
            if let Some(&laid_out) = node.inputs.get(3) {
                return winograd_convolution(
                    cx,
                    grad,
                    Weight::Kernel(flipped),
                    Epilogue::bias(None),
                    &direct,
                    Some(laid_out),
                )?
                .map(|dx| vec![dx])
                .ok_or_else(|| {
                    LoweringError::Build(format!(
                        "`{}`: a layout for a convolution Winograd does not compute",
                        node.name
                    ))
                });
            }
            return Ok(vec![convolution(cx, grad, Weight::Kernel(flipped), Epilogue::bias(None), &direct)?]);
        }
        let sizes = [
            cx.size(grad, 0)?,
            cx.size(grad, 1)?,
            cx.size_add(cx.size(like, 2)?, reach[0])?,
            cx.size_add(cx.size(like, 3)?, reach[1])?,
        ];
        let element = cx.element_of(grad)?;
        let zeros = cx.fill(cx.constant_float(0.0, element)?, cx.empty(&sizes, element)?)?;
        let spread =
            cx.insert_slice(grad, zeros, &[0, 0, low[0], low[1]], &[1, 1, window.stride[0], window.stride[1]])?;
        let direct = Window { stride: [1, 1], low: [0, 0], high: [0, 0], ..window };
        Ok(vec![convolution(cx, spread, Weight::Kernel(flipped), Epilogue::bias(None), &direct)?])
    }
}

/// The input gradient of a strided convolution of one group, without the products with zeros
/// that spreading the gradient out would add (three in four at stride 2): the columns
/// `weightᵀ · grad` ([N, C·kh·kw, Ho, Wo]; the weight [O, C·kh·kw] is already the packed layout
/// of that product), then each input pixel sums the columns that read it (col2im, as a gather:
/// output row `(y + padding - i·dilation) / stride` where that is whole and in range).
fn strided_input_gradient<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    grad: Value<'c, 'b>,
    weight: Value<'c, 'b>,
    like: Value<'c, 'b>,
    window: &Window,
) -> Result<Value<'c, 'b>, LoweringError> {
    let element = cx.element_of(grad)?;
    let [_, c, kh, kw] =
        [0, 1, 2, 3].map(|axis| cx.static_dims(weight).map(|dims| dims[axis].expect("kernels have known sizes")));
    let (c, kh, kw) = (c?, kh?, kw?);
    let matrix = cx.collapse_shape(weight, &[&[0], &[1, 2, 3]])?;
    let [n, ho, wo] = [0, 2, 3].map(|axis| cx.static_dims(grad).map(|dims| dims[axis]));
    let columns = cx.conv_product(matrix, true, grad, cx.ranked_tensor(&[n?, Some(c * kh * kw), ho?, wo?], element))?;
    let [rows, cols] = [cx.size_value(cx.size(grad, 2)?)?, cx.size_value(cx.size(grad, 3)?)?];
    let init = cx.empty(&cx.sizes(like)?, element)?;
    let window = *window;
    Ok(cx.generic(&[], &[init], &[&identity_map(4)], &[Iterator::Parallel; 4], |body| {
        let [n, c, y, x] = [0, 1, 2, 3].map(|axis| body.loop_index(axis));
        let (n, c, y, x) = (n?, c?, y?, x?);
        let index = |value: i64| body.constant_index(value);
        let zero = body.constant_float(0.0, element)?;
        let total = body.for_loop(index(0)?, index(kh)?, &[zero], |b, args| {
            let i = args[0];
            let (row, row_valid) =
                reading_position(b, y, i, window.low[0], window.dilation[0], window.stride[0], rows)?;
            b.for_loop(b.constant_index(0)?, b.constant_index(kw)?, &args[1..], |b, args| {
                let j = args[0];
                let (column, column_valid) =
                    reading_position(b, x, j, window.low[1], window.dilation[1], window.stride[1], cols)?;
                let valid = b.binary("arith.andi", row_valid, column_valid)?;
                let kernel_position = b.binary("arith.addi", b.binary("arith.muli", i, b.constant_index(kw)?)?, j)?;
                let k =
                    b.binary("arith.addi", b.binary("arith.muli", c, b.constant_index(kh * kw)?)?, kernel_position)?;
                let value = b.extract(columns, &[n, k, row, column])?;
                Ok(vec![b.addf(args[1], b.select(valid, value, b.constant_float(0.0, element)?)?)?])
            })
        })?;
        body.yield_values(&[total[0]])
    })?[0])
}

/// The gradient of a convolution's weight: inputs `x` [N, C, H, W] and `grad` [N, O, Ho, Wo];
/// output [O, C / groups, kh, kw]. With `laid_out` (the `lay-out-for-winograd` pass), then
/// `x` laid out channels-last with the convolution's zeros and `grad` with its input
/// gradient's ([`ChannelsLast`]), from which Winograd's transforms compute it.
#[derive(Debug)]
pub struct Conv2dBackwardWeight;

impl Operator for Conv2dBackwardWeight {
    fn name(&self) -> &'static str {
        "conv2d_backward_weight"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("grad"), list_input("laid_out")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        BACKWARD_ATTRS
    }
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError> {
        let (x, grad) = (&inputs[0][0], &inputs[1][0]);
        let c = known(self.name(), 0, x, 1, "channels")?;
        let o = known(self.name(), 1, grad, 1, "channels")?;
        let [kh, kw] = pair(attrs, "kernel")?;
        let window = Window::of(attrs);
        let gradient_padding = window.input_gradient_window().map_or([0; 4], |window| window.padding());
        check_laid_out(list_at(inputs, 2), &[(x, window.padding()), (grad, gradient_padding)], attrs, 2)?;
        let dims = [o, c / attrs.int("groups"), kh, kw].map(Dim::known).to_vec();
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
    /// From layouts, Winograd's weight gradient; otherwise, per group,
    /// [`one_group_weight_gradient`] of its channels of `x` and `grad`, the groups' gradients
    /// stacked along the output channels.
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let (x, grad) = (node.inputs[0], node.inputs[1]);
        let window = Window::of(node.attrs);
        if let ([x_laid_out, grad_laid_out], Some(gradient_window)) =
            (&node.inputs[2..], window.input_gradient_window())
        {
            let ty =
                cx.ranked_tensor(&node.outputs[0].dims.iter().map(Dim::value).collect::<Vec<_>>(), cx.element_of(x)?);
            return Ok(vec![cx.winograd_weight_gradient(
                *x_laid_out,
                *grad_laid_out,
                gradient_window.padding(),
                ty,
            )?]);
        }
        if window.groups == 1 {
            return Ok(vec![one_group_weight_gradient(cx, x, grad, &window)?]);
        }
        let channels = |tensor| cx.static_dims(tensor).map(|dims| dims[1].expect("channels are known"));
        let (c, o) = (channels(x)? / window.groups, channels(grad)? / window.groups);
        let [kh, kw] = window.kernel;
        let element = cx.element_of(x)?;
        let mut stacked = cx.empty(&[o * window.groups, c, kh, kw].map(Size::Static), element)?;
        for group in 0..window.groups {
            let slice = |tensor, width: i64| -> Result<Value<'c, 'b>, LoweringError> {
                let sizes = [cx.size(tensor, 0)?, Size::Static(width), cx.size(tensor, 2)?, cx.size(tensor, 3)?];
                cx.extract_slice(tensor, &[0, group * width, 0, 0], &sizes)
            };
            let gradient =
                one_group_weight_gradient(cx, slice(x, c)?, slice(grad, o)?, &Window { groups: 1, ..window })?;
            stacked = cx.insert_slice(gradient, stacked, &[group * o, 0, 0, 0], &[1, 1, 1, 1])?;
        }
        Ok(vec![stacked])
    }
}

/// The weight gradient of a convolution of one group: Σ over images and pixels of `grad`
/// [O, N·Ho·Wo] times the im2col matrix [C·kh·kw, N·Ho·Wo] transposed: one product
/// ([`Emitter::linear_product`]) of two relaid copies.
fn one_group_weight_gradient<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    x: Value<'c, 'b>,
    grad: Value<'c, 'b>,
    window: &Window,
) -> Result<Value<'c, 'b>, LoweringError> {
    let element = cx.element_of(x)?;
    let [n, c] = [cx.size(x, 0)?, cx.size(x, 1)?];
    let [o, ho, wo] = [cx.size(grad, 1)?, cx.size(grad, 2)?, cx.size(grad, 3)?];
    if window.stride == [1, 1] && window.kernel != [1, 1] {
        let ty = cx.ranked_tensor(
            &[o.static_value(), c.static_value(), Some(window.kernel[0]), Some(window.kernel[1])],
            element,
        );
        let padding = [window.low[0], window.low[1], window.high[0], window.high[1]];
        if let Some(gradient) = cx.window_weight_gradient(x, grad, window.kernel, window.dilation, padding, ty)? {
            return Ok(gradient);
        }
    }
    let x = window.padded(cx, x)?;
    let [kh, kw] = window.kernel.map(Size::Static);
    let [sh, sw] = window.stride;
    let [dh, dw] = window.dilation;
    let gathered = cx.empty(&[c, kh, kw, n, ho, wo], element)?;
    let source = format!("(c, i, j, n, y, x) -> (n, c, y * {sh} + i * {dh}, x * {sw} + j * {dw})");
    let gathered = cx.generic(&[x], &[gathered], &[&source, &identity_map(6)], &[Iterator::Parallel; 6], |body| {
        body.yield_values(&[body.arg(0)?])
    })?[0];
    let columns = cx.collapse_shape(gathered, &[&[0, 1, 2], &[3, 4, 5]])?;
    let relaid = cx.empty(&[o, n, ho, wo], element)?;
    let relaid = cx.generic(
        &[grad],
        &[relaid],
        &["(o, n, y, x) -> (n, o, y, x)", &identity_map(4)],
        &[Iterator::Parallel; 4],
        |body| body.yield_values(&[body.arg(0)?]),
    )?[0];
    let rows = cx.collapse_shape(relaid, &[&[0], &[1, 2, 3]])?;
    let dims = cx.static_dims(columns)?;
    let product = cx.ranked_tensor(&[o.static_value(), dims[0]], element);
    let matrix = cx.linear_product(rows, columns, product)?;
    let c = c.static_value().expect("channels are known");
    cx.expand_shape(matrix, &[&[0], &[1, 2, 3]], &[o, Size::Static(c), kh, kw])
}
