//! The operators, one file per family. Each operator is a type implementing [`Operator`]: its
//! signature (tensor inputs, attributes with types and defaults), its shape rule and its MLIR
//! lowering live together, and its gradient rule will join them there. The lowering side is the
//! only part of an operator that speaks MLIR, through [`crate::lowering::Emitter`].

mod conv;
mod detection;
mod elementwise;
mod linear;
mod norm;
mod pool;
mod resample;

use crate::graph::types::{DType, Dim, TensorType};
use crate::graph::{Attrs, StateKind};
use crate::lowering::{identity_map, loop_dims, Combiner, Emitter, Iterator, LowerNode, LoweringError, Size};
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
];

/// Operators that the compiler creates and model files cannot call.
pub static INTERNAL_OPERATORS: &[&dyn Operator] = &[];

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
    fn lower<'c, 'b>(&self, cx: &Emitter<'c, 'b>, node: &LowerNode<'_, 'c, 'b>) -> Result<Vec<Value<'c, 'b>>, LoweringError>;
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
}

pub const fn attr(name: &'static str, ty: AttrType, default: Default) -> AttrSpec {
    AttrSpec { name, ty, default }
}

impl AttrSpec {
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
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Checks that input `slot` has rank `rank`; `layout` names the dimensions for the message.
pub fn expect_rank(op: &str, slot: usize, ty: &TensorType, layout: &str) -> Result<(), OpError> {
    let rank = layout.split(", ").count();
    if ty.rank() == rank {
        return Ok(());
    }
    Err(OpError::at_input(slot, format!("rank mismatch: `{op}` expects a rank-{rank} input [{layout}], found {ty}")))
}

/// A dimension that must be known when the model is compiled (channels, features).
pub fn known(op: &str, slot: usize, ty: &TensorType, axis: usize, what: &str) -> Result<i64, OpError> {
    ty.dims[axis].value().ok_or_else(|| {
        OpError::at_input(slot, format!("`{op}` needs the {what} of its input to be known, found {ty}"))
    })
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

pub fn positive(attrs: &Attrs, name: &'static str) -> Result<i64, OpError> {
    let v = attrs.int(name);
    if v > 0 {
        Ok(v)
    } else {
        Err(OpError::at_attr(name, format!("`{name}` must be positive, found {v}")))
    }
}

/// Declares a runtime built-in operator (one computed by a call into the runtime) from its name,
/// inputs, attributes, shape rule and lowering.
macro_rules! runtime_operator {
    ($(#[$doc:meta])* $ty:ident, $name:literal, inputs: [$($input:expr),*], attrs: [$($attr:expr),* $(,)?],
     infer: |$inputs:ident, $attrs:ident| $infer:block,
     lower: |$cx:ident, $node:ident, $slots:ident| $lower:block $(,)?) => {
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
