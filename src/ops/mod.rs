//! The operators, one file per family. Each operator is a type implementing [`Operator`]: its
//! signature (tensor inputs, attributes with types and defaults), its shape rule and its MLIR
//! lowering live together with its gradient rule. The lowering side is the only part of an
//! operator that speaks MLIR, through [`crate::lowering::Emitter`]; the gradient rule adds
//! backward nodes to the graph ([`crate::autodiff`]).

mod conv;
mod detection;
mod elementwise;
mod linear;
mod norm;
mod pool;
mod resample;

use crate::autodiff::{GradientContext, GradientError};
use crate::graph::types::{DType, Dim, SizeError, TensorType};
use crate::graph::{Attrs, Port, StateKind};
use crate::lowering::{
    identity_map, loop_dims, CmpfPredicate, CmpiPredicate, Combiner, Emitter, Iterator, LowerNode, LoweringError, Size,
};
use melior::ir::{Block, Value};
use std::fmt;

/// The operators of the model language, by name: model files call them as functions. Operators
/// that only passes and the autodiff create (fused and backward operators) are registered in
/// [`INTERNAL_OPERATORS`] instead, out of model files' reach.
pub static OPERATORS: &[&dyn Operator] = &[
    &conv::Conv2d,
    &conv::ConvTranspose2d,
    &linear::Linear,
    &linear::Flatten,
    &norm::FrozenBatchNorm,
    &norm::BatchNorm,
    &elementwise::Relu,
    &elementwise::Sigmoid,
    &elementwise::Add,
    &elementwise::Mul,
    &pool::MaxPool2d,
    &pool::AvgPool2d,
    &pool::AdaptiveAvgPool2d,
    &resample::UpsampleNearest,
    &detection::Preprocess,
    &detection::Anchors,
    &detection::RpnProposals,
    &detection::RoiAlign,
    &detection::RoiPool,
    &detection::MultiscaleRoiAlign,
    &detection::MultiscaleRoiPool,
    &detection::PostprocessDetections,
    &detection::MaskProbs,
    &detection::RescaleBoxes,
    &detection::PasteMasks,
    &detection::HeatmapsToKeypoints,
    &detection::RpnProposalsBatch,
    &detection::MatchAnchors,
    &detection::UniformKeys,
    &detection::BalancedSample,
    &detection::RpnLoss,
    &detection::SampleRois,
    &detection::MultiscaleRoiAlignBatch,
    &detection::FastrcnnLoss,
    &detection::MaskTargets,
    &detection::MaskrcnnLoss,
];

pub use conv::{layout_paddings, non_overlapping, winograd_fits, ChannelsLast, Conv2dBackwardInput, Conv2dBackwardWeight, FusedConv2d, PreparedConvTranspose2d};
pub use elementwise::FillLike;
pub use norm::{BatchMoments, BatchNormTraining, RunningStatistics};

/// `add`, for the autodiff's sums of gradients.
pub static ADD: elementwise::Add = elementwise::Add;

/// Operators that the compiler creates and model files cannot call: fused forms, layouts,
/// training forms and the backward operators of gradient rules.
pub static INTERNAL_OPERATORS: &[&dyn Operator] = &[
    &conv::FusedConv2d,
    &conv::ChannelsLast,
    &conv::PreparedConvTranspose2d,
    &conv::Conv2dData,
    &conv::Conv2dBackwardInput,
    &conv::Conv2dBackwardWeight,
    &elementwise::FillLike,
    &elementwise::ReluBackward,
    &elementwise::SigmoidBackward,
    &elementwise::SumToAxis,
    &linear::Matmul,
    &linear::Unflatten,
    &norm::BatchMoments,
    &norm::BatchNormTraining,
    &norm::BatchNormBackward,
    &norm::RunningStatistics,
    &norm::ScaleChannels,
    &pool::MaxPool2dBackward,
    &pool::AvgPool2dBackward,
    &pool::AdaptiveAvgPool2dBackward,
    &resample::UpsampleNearestBackward,
    &detection::RpnLossBackward,
    &detection::MultiscaleRoiAlignBackward,
    &detection::FastrcnnLossBackward,
    &detection::MaskrcnnLossBackward,
];

/// The operator a model file calls `name`.
pub fn lookup(name: &str) -> Option<&'static dyn Operator> {
    OPERATORS.iter().copied().find(|op| op.name() == name)
}

pub trait Operator: Sync + fmt::Debug {
    fn name(&self) -> &'static str;
    /// Tensor inputs, filled positionally or by keyword.
    /// Most operators take one tensor, `x`.
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x")] }
    }
    fn attrs(&self) -> &'static [AttrSpec];
    /// The shape rule: output types, and the state tensors the operator owns (its weights).
    /// `inputs[slot]` holds one type, or several for a list slot.
    fn infer(&self, inputs: &[Vec<TensorType>], attrs: &Attrs) -> Result<Inference, OpError>;
    /// Appends the operator's computation to `cx`'s block: one MLIR value per output, of the
    /// node's output types (symbolic dimensions as `?`). `node.inputs` are the tensor inputs in
    /// slot order, then the state tensors in the order `infer` declares them.
    fn lower<'c, 'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        node: &LowerNode<'_, 'c, 'b>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError>;
    /// The gradient rule: from the gradients of the node's outputs (`cx.output_grads`), adds the
    /// nodes computing the gradient of each input (tensor inputs, then state tensors) and
    /// returns them, `None` where no gradient flows (integer inputs, boxes a selection chose,
    /// inputs not `cx.wanted`). Operators without one are not differentiable.
    fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
        let _ = cx;
        Err(GradientError::NoRule)
    }
}

pub struct InputSpec {
    pub name: &'static str,
    /// Takes a list of tensors (the levels of a feature pyramid).
    pub list: bool,
}

pub const fn input(name: &'static str) -> InputSpec {
    InputSpec { name, list: false }
}

pub const fn list_input(name: &'static str) -> InputSpec {
    InputSpec { name, list: true }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    Int,
    Float,
    Bool,
    Str,
    Ints,
    Floats,
    /// A list of int lists: anchor sizes per pyramid level.
    IntLists,
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrType::Int => "int",
            AttrType::Float => "float",
            AttrType::Bool => "bool",
            AttrType::Str => "str",
            AttrType::Ints => "[int]",
            AttrType::Floats => "[float]",
            AttrType::IntLists => "[[int]]",
        })
    }
}

/// The default of an attribute, or that it must be given.
pub enum Default {
    Required,
    /// May be left out; absent from the attributes then.
    Optional,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    Ints(&'static [i64]),
    Floats(&'static [f64]),
}

pub struct AttrSpec {
    pub name: &'static str,
    pub ty: AttrType,
    pub default: Default,
    /// The values a number, or each number of a list, may take.
    pub range: Range,
}

pub const fn attr(name: &'static str, ty: AttrType, default: Default) -> AttrSpec {
    AttrSpec { name, ty, default, range: Range::ANY }
}

/// The largest number an integer attribute may hold, and the most elements a state tensor may
/// have (2^31 - 1): far beyond any real network, small enough that sizes computed from them
/// stay exact.
pub const MAX_SIZE: i64 = i32::MAX as i64;

/// Bounds on the numbers of an attribute, inclusive except a `positive` one's zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    min: f64,
    exclusive_min: bool,
    max: f64,
}

impl Range {
    const ANY: Range = Range { min: f64::NEG_INFINITY, exclusive_min: false, max: f64::INFINITY };

    fn contains(&self, v: f64) -> bool {
        (if self.exclusive_min { v > self.min } else { v >= self.min }) && v <= self.max
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bounded_below, bounded_above) = (self.min > f64::NEG_INFINITY, self.max < f64::INFINITY);
        match (self.exclusive_min, bounded_below, bounded_above) {
            (true, _, false) => f.write_str("positive"),
            (true, _, true) => write!(f, "positive and at most {}", self.max),
            (false, true, false) => write!(f, "at least {}", self.min),
            (false, true, true) => write!(f, "between {} and {}", self.min, self.max),
            (false, false, true) => write!(f, "at most {}", self.max),
            (false, false, false) => f.write_str("any number"),
        }
    }
}

impl AttrSpec {
    /// Numbers at least `min`.
    pub const fn at_least(mut self, min: i64) -> Self {
        self.range.min = min as f64;
        self
    }

    /// Numbers above zero.
    pub const fn positive(mut self) -> Self {
        self.range.min = 0.0;
        self.range.exclusive_min = true;
        self
    }

    /// Numbers at most `max`.
    pub const fn at_most(mut self, max: f64) -> Self {
        self.range.max = max;
        self
    }

    /// Numbers from `min` to `max`.
    pub const fn between(mut self, min: f64, max: f64) -> Self {
        self.range.min = min;
        self.range.max = max;
        self
    }

    /// Checks a value given to operator `op` against this attribute's range, and every number
    /// against the bounds of all attributes: integers at most [`MAX_SIZE`] in magnitude, floats
    /// finite in 32 bits (the precision of weights and of the runtime's box arithmetic).
    pub fn check(&self, op: &str, value: &AttrValue) -> Result<(), OpError> {
        let name = self.name;
        let out_of_range = |found: &dyn fmt::Display| {
            let message = format!("attribute out of range: `{name}` of `{op}` must be {}, found {found}", self.range);
            let e = OpError::at_attr(name, message);
            match self.default_value() {
                Some(default) => e.hint(format!("leave `{name}` out for its default, {default}")),
                None => e,
            }
        };
        let check_int = |v: i64| {
            if !self.range.contains(v as f64) {
                return Err(out_of_range(&v));
            }
            if v.unsigned_abs() > MAX_SIZE as u64 {
                return Err(OpError::at_attr(name, format!("size too large: `{name}` of `{op}` is {v}"))
                    .hint(format!("integer attributes are at most {MAX_SIZE} (2^31 - 1)")));
            }
            Ok(())
        };
        let check_float = |v: f64| {
            if !(v as f32).is_finite() {
                let message =
                    format!("attribute out of range: `{name}` of `{op}` is not a finite 32-bit float, found {v:?}");
                return Err(OpError::at_attr(name, message).hint("32-bit floats reach about 3.4e38"));
            }
            if !self.range.contains(v) {
                return Err(out_of_range(&format_args!("{v:?}")));
            }
            Ok(())
        };
        match value {
            AttrValue::Int(v) => check_int(*v),
            AttrValue::Ints(v) => v.iter().try_for_each(|v| check_int(*v)),
            AttrValue::IntLists(v) => v.iter().flatten().try_for_each(|v| check_int(*v)),
            AttrValue::Float(v) => check_float(*v),
            AttrValue::Floats(v) => v.iter().try_for_each(|v| check_float(*v)),
            AttrValue::Bool(_) | AttrValue::Str(_) => Ok(()),
        }
    }

    pub fn default_value(&self) -> Option<AttrValue> {
        Some(match &self.default {
            Default::Required | Default::Optional => return None,
            Default::Int(v) => AttrValue::Int(*v),
            Default::Float(v) => AttrValue::Float(*v),
            Default::Bool(v) => AttrValue::Bool(*v),
            Default::Str(v) => AttrValue::Str(v.to_string()),
            Default::Ints(v) => AttrValue::Ints(v.to_vec()),
            Default::Floats(v) => AttrValue::Floats(v.to_vec()),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    IntLists(Vec<Vec<i64>>),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Int(v) => write!(f, "{v}"),
            AttrValue::Float(v) => write!(f, "{v:?}"),
            AttrValue::Bool(v) => write!(f, "{v}"),
            AttrValue::Str(v) => write!(f, "\"{v}\""),
            AttrValue::Ints(v) => write!(f, "{v:?}"),
            AttrValue::Floats(v) => write!(f, "{v:?}"),
            AttrValue::IntLists(v) => write!(f, "{v:?}"),
        }
    }
}

/// Typed access to attributes that the expander has checked and completed with defaults.
pub trait AttrsExt {
    fn int(&self, name: &str) -> i64;
    fn float(&self, name: &str) -> f64;
    fn flag(&self, name: &str) -> bool;
    fn ints(&self, name: &str) -> &[i64];
    fn floats(&self, name: &str) -> &[f64];
    fn int_lists(&self, name: &str) -> &[Vec<i64>];
}

impl AttrsExt for Attrs {
    fn int(&self, name: &str) -> i64 {
        match &self[name] {
            AttrValue::Int(v) => *v,
            v => panic!("attribute {name} = {v} is not an int"),
        }
    }
    fn float(&self, name: &str) -> f64 {
        match &self[name] {
            AttrValue::Float(v) => *v,
            AttrValue::Int(v) => *v as f64,
            v => panic!("attribute {name} = {v} is not a float"),
        }
    }
    fn flag(&self, name: &str) -> bool {
        match &self[name] {
            AttrValue::Bool(v) => *v,
            v => panic!("attribute {name} = {v} is not a bool"),
        }
    }
    fn ints(&self, name: &str) -> &[i64] {
        match &self[name] {
            AttrValue::Ints(v) => v,
            v => panic!("attribute {name} = {v} is not an int list"),
        }
    }
    fn floats(&self, name: &str) -> &[f64] {
        match &self[name] {
            AttrValue::Floats(v) => v,
            v => panic!("attribute {name} = {v} is not a float list"),
        }
    }
    fn int_lists(&self, name: &str) -> &[Vec<i64>] {
        match &self[name] {
            AttrValue::IntLists(v) => v,
            v => panic!("attribute {name} = {v} is not a list of int lists"),
        }
    }
}

/// A state tensor an operator owns, named relative to the operator's scope.
#[derive(Clone, Debug)]
pub struct StateDecl {
    pub name: &'static str,
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub kind: StateKind,
}

impl StateDecl {
    pub fn parameter(name: &'static str, dims: Vec<i64>) -> Self {
        StateDecl { name, dtype: DType::F32, dims, kind: StateKind::Parameter }
    }

    pub fn buffer(name: &'static str, dims: Vec<i64>) -> Self {
        StateDecl { name, dtype: DType::F32, dims, kind: StateKind::Buffer }
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, self.dims.iter().map(|&d| Dim::known(d)).collect())
    }
}

#[derive(Debug)]
pub struct Inference {
    pub outputs: Vec<TensorType>,
    pub state: Vec<StateDecl>,
}

impl Inference {
    pub fn output(ty: TensorType) -> Self {
        Inference { outputs: vec![ty], state: vec![] }
    }

    /// The float state tensors in the float type of the first input, where that is f64 (a
    /// graph in double precision, for gradient checks); f32 otherwise, as declared.
    pub fn in_float_type(mut self, inputs: &[Vec<TensorType>]) -> Self {
        if inputs.first().and_then(|slot| slot.first()).is_some_and(|ty| ty.dtype == DType::F64) {
            for decl in &mut self.state {
                if decl.dtype == DType::F32 {
                    decl.dtype = DType::F64;
                }
            }
        }
        self
    }

    /// Checks that no state tensor has more than [`MAX_SIZE`] elements.
    pub fn check_state(&self) -> Result<(), OpError> {
        match self.state.iter().find(|s| s.ty().elements().is_none_or(|n| n > MAX_SIZE)) {
            None => Ok(()),
            Some(s) => Err(OpError::sizes_at_call(format!(
                "size too large: `{}` would be {}, more than {MAX_SIZE} elements",
                s.name,
                s.ty()
            ))),
        }
    }
}

/// What a shape rule objects to, and where the expander should point.
#[derive(Debug)]
pub struct OpError {
    pub site: Site,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Site {
    Input(usize),
    Attr(&'static str),
    Call,
}

impl OpError {
    pub fn at_input(slot: usize, message: impl Into<String>) -> Self {
        OpError { site: Site::Input(slot), message: message.into(), hint: None }
    }
    pub fn at_attr(name: &'static str, message: impl Into<String>) -> Self {
        OpError { site: Site::Attr(name), message: message.into(), hint: None }
    }
    /// Sizes that the call's attributes and inputs give, which are out of bounds.
    pub fn sizes_at_call(message: impl Into<String>) -> Self {
        OpError { site: Site::Call, message: message.into(), hint: None }
            .hint("check the attributes of this call and the sizes of its inputs")
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Sizes beyond 64 bits (or too complex) are the call's error.
impl From<SizeError> for OpError {
    fn from(e: SizeError) -> Self {
        OpError::sizes_at_call(e.to_string())
    }
}

/// Checks that input `slot` has rank `rank`; `layout` names the dimensions for the message.
/// The window (of `count`, `stride` apart, input padded by `low`) that reads input position
/// `p` at its position `k` (`dilation` apart), and whether there is one: what the gathers that
/// send gradients back through windows (col2im, average pooling) sum over.
pub fn reading_position<'c, 'n>(
    b: &Emitter<'c, 'n>,
    p: Value<'c, '_>,
    k: Value<'c, '_>,
    low: i64,
    dilation: i64,
    stride: i64,
    count: Value<'c, '_>,
) -> Result<(Value<'c, 'n>, Value<'c, 'n>), LoweringError> {
    let reach = b.binary("arith.muli", k, b.constant_index(dilation)?)?;
    let shifted = b.binary("arith.subi", b.binary("arith.addi", p, b.constant_index(low)?)?, reach)?;
    let stride = b.constant_index(stride)?;
    let (position, remainder) = (b.binary("arith.divsi", shifted, stride)?, b.binary("arith.remsi", shifted, stride)?);
    let zero = b.constant_index(0)?;
    let whole = b.binary(
        "arith.andi",
        b.compare_integers(CmpiPredicate::Sge, shifted, zero)?,
        b.compare_integers(CmpiPredicate::Eq, remainder, zero)?,
    )?;
    let valid = b.binary("arith.andi", whole, b.compare_integers(CmpiPredicate::Slt, position, count)?)?;
    Ok((b.select(valid, position, zero)?, valid))
}

pub fn expect_rank(op: &str, slot: usize, ty: &TensorType, layout: &str) -> Result<(), OpError> {
    let rank = layout.split(", ").count();
    if ty.rank() == rank {
        return Ok(());
    }
    Err(OpError::at_input(slot, format!("rank mismatch: `{op}` expects a rank-{rank} input [{layout}], found {ty}")))
}

/// A dimension that must be known when the model is compiled (channels, features).
pub fn known(op: &str, slot: usize, ty: &TensorType, axis: usize, what: &str) -> Result<i64, OpError> {
    ty.dims[axis]
        .value()
        .ok_or_else(|| OpError::at_input(slot, format!("`{op}` needs the {what} of its input to be known, found {ty}")))
}

/// `kernel: 3` and `kernel: [3, 3]` both mean a 3×3 window.
pub fn pair(attrs: &Attrs, name: &'static str) -> Result<[i64; 2], OpError> {
    match attrs.ints(name) {
        [v] => Ok([*v, *v]),
        [a, b] => Ok([*a, *b]),
        v => Err(OpError::at_attr(name, format!("`{name}` takes one or two values, found {}", v.len()))),
    }
}

/// A pair attribute that the shape rule has accepted (lowerings run on checked graphs).
pub fn checked_pair(attrs: &Attrs, name: &'static str) -> [i64; 2] {
    pair(attrs, name).unwrap_or_else(|e| panic!("unchecked attribute: {}", e.message))
}

/// The spatial output sizes (height, width) of a window sliding over `x` [N, C, H, W]
/// (convolution, pooling): ⌊(size + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1,
/// rounded up instead in `ceil` mode.
pub fn window_sizes(
    op: &str,
    x: &TensorType,
    kernel: [i64; 2],
    stride: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    ceil: bool,
) -> Result<[Dim; 2], OpError> {
    let size = |axis: usize| -> Result<Dim, OpError> {
        let reach = Dim::known(kernel[axis]).sub(&Dim::known(1))?.scale(dilation[axis])?;
        let span = x.dims[axis + 2].add(&Dim::known(padding[axis]).scale(2)?)?.sub(&reach)?.sub(&Dim::known(1))?;
        let steps = if ceil { span.ceil_div(stride[axis])? } else { span.floor_div(stride[axis])? };
        positive_size(
            op,
            x,
            steps.add(&Dim::known(1))?,
            "the window (kernel and dilation) is larger than the padded input",
        )
    };
    Ok([size(0)?, size(1)?])
}

/// A computed output size, which must be positive where it is known; `why` says what to change.
pub fn positive_size(op: &str, x: &TensorType, size: Dim, why: &str) -> Result<Dim, OpError> {
    match size.value() {
        Some(v) if v < 1 => {
            Err(OpError::at_input(0, format!("`{op}` gives an output size of {v} for its input {x}")).hint(why))
        }
        _ => Ok(size),
    }
}

/// Declares a runtime built-in operator (one computed by a call into the runtime) from its name,
/// inputs, attributes, shape rule, lowering and, for a differentiable one, gradient rule.
macro_rules! runtime_operator {
    ($(#[$doc:meta])* $ty:ident, $name:literal, inputs: [$($input:expr),*], attrs: [$($attr:expr),* $(,)?],
     infer: |$inputs:ident, $attrs:ident| $infer:block,
     lower: |$cx:ident, $node:ident, $slots:ident| $lower:block
     $(, gradient: |$gcx:ident| $gradient:block)? $(,)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn inputs(&self) -> &'static [InputSpec] {
                const { &[$($input),*] }
            }
            fn attrs(&self) -> &'static [AttrSpec] {
                const { &[$($attr),*] }
            }
            #[allow(unused_variables)]
            fn infer(&self, $inputs: &[Vec<TensorType>], $attrs: &Attrs) -> Result<Inference, OpError> {
                $infer
            }
            fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
                let ($cx, $node, $slots) = (cx, node, split_slots(self.inputs(), node.inputs));
                $lower
            }
            $(
            fn gradient(&self, cx: &mut GradientContext) -> Result<Vec<Option<Port>>, GradientError> {
                let $gcx = cx;
                $gradient
            }
            )?
        }
    };
}
pub(crate) use runtime_operator;

/// Groups a node's flat inputs by the operator's slots: a list slot takes as many values as the
/// node has beyond the single slots (split evenly between list slots, which have equal lengths).
pub fn split_slots<T: Copy>(specs: &[InputSpec], inputs: &[T]) -> Vec<Vec<T>> {
    let lists = specs.iter().filter(|s| s.list).count();
    let per_list = (inputs.len() - (specs.len() - lists)).checked_div(lists).unwrap_or(0);
    let mut rest = inputs;
    specs
        .iter()
        .map(|s| {
            let (head, tail) = rest.split_at(if s.list { per_list } else { 1 });
            rest = tail;
            head.to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_in_its_range() {
        for op in OPERATORS {
            for spec in op.attrs() {
                if let Some(default) = spec.default_value() {
                    assert!(spec.check(op.name(), &default).is_ok(), "{}: {} = {default}", op.name(), spec.name);
                }
            }
        }
    }

    #[test]
    fn ranges_read_as_bounds() {
        let bounds = |spec: AttrSpec| spec.range.to_string();
        assert_eq!(bounds(attr("a", AttrType::Int, Default::Required).at_least(-1)), "at least -1");
        assert_eq!(bounds(attr("a", AttrType::Float, Default::Required).positive()), "positive");
        assert_eq!(
            bounds(attr("a", AttrType::Float, Default::Required).positive().at_most(1e3)),
            "positive and at most 1000"
        );
        assert_eq!(bounds(attr("a", AttrType::Float, Default::Required).between(0.0, 1.0)), "between 0 and 1");
    }
}
