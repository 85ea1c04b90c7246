//! Values of the model language during expansion.

use crate::graph::types::Dim;
use crate::graph::Port;
use std::fmt;

#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A size known only when the program runs (bound from a symbolic tensor dimension).
    Dim(Dim),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Tensor(Port),
    /// The result of an expression that already failed; it silences follow-on errors.
    Poison,
}

impl Value {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Dim(_) => "symbolic size",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Tensor(_) => "tensor",
            Value::Poison => "error",
        }
    }

    pub fn is_poison(&self) -> bool {
        match self {
            Value::Poison => true,
            Value::List(items) | Value::Tuple(items) => items.iter().any(Value::is_poison),
            _ => false,
        }
    }

    pub fn as_dim(&self) -> Option<Dim> {
        match self {
            Value::Int(v) => Some(Dim::known(*v)),
            Value::Dim(d) => Some(d.clone()),
            _ => None,
        }
    }

    pub fn from_dim(d: Dim) -> Value {
        match d.value() {
            Some(v) => Value::Int(v),
            None => Value::Dim(d),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[Value]| {
            items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ").fmt(f)
        };
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "\"{v}\""),
            Value::Dim(d) => write!(f, "{d}"),
            Value::List(items) => {
                write!(f, "[")?;
                list(f, items)?;
                write!(f, "]")
            }
            Value::Tuple(items) => {
                write!(f, "(")?;
                list(f, items)?;
                write!(f, ")")
            }
            Value::Tensor(p) => write!(f, "%{}", p.node.index()),
            Value::Poison => write!(f, "<error>"),
        }
    }
}
