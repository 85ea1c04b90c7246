//! Tensor types: element type and dimensions, each dimension known or symbolic.
//!
//! A symbolic dimension is kept in a normal form, an integer-affine combination of atoms
//! (symbols and floor/ceil divisions), so that two routes to the same size compare equal:
//! a 3×3 convolution with padding 1 maps `H` to `H`, and both branches of a strided
//! residual block give `(H - 1) / 2 + 1`.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "i64" => DType::I64,
            "i32" => DType::I32,
            "u8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }
}

/// An indivisible piece of a symbolic dimension.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Atom {
    Symbol(String),
    FloorDiv(Box<Dim>, i64),
    CeilDiv(Box<Dim>, i64),
    Product(Box<Dim>, Box<Dim>),
}

/// `constant + Σ coefficient·atom`, with no zero coefficients.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dim {
    constant: i64,
    terms: BTreeMap<Atom, i64>,
}

impl Dim {
    pub fn known(n: i64) -> Dim {
        Dim { constant: n, terms: BTreeMap::new() }
    }

    pub fn symbol(name: &str) -> Dim {
        Dim::atom(Atom::Symbol(name.to_string()))
    }

    fn atom(atom: Atom) -> Dim {
        Dim { constant: 0, terms: BTreeMap::from([(atom, 1)]) }
    }

    /// The size, where it does not depend on the input.
    pub fn value(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    pub fn add(&self, other: &Dim) -> Dim {
        let mut out = self.clone();
        out.constant += other.constant;
        for (atom, c) in &other.terms {
            let entry = out.terms.entry(atom.clone()).or_insert(0);
            *entry += c;
            if *entry == 0 {
                out.terms.remove(atom);
            }
        }
        out
    }

    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.scale(-1))
    }

    pub fn scale(&self, k: i64) -> Dim {
        if k == 0 {
            return Dim::known(0);
        }
        Dim { constant: self.constant * k, terms: self.terms.iter().map(|(a, c)| (a.clone(), c * k)).collect() }
    }

    pub fn mul(&self, other: &Dim) -> Dim {
        match (self.value(), other.value()) {
            (Some(k), _) => other.scale(k),
            (_, Some(k)) => self.scale(k),
            _ => {
                let (a, b) = if self <= other { (self, other) } else { (other, self) };
                Dim::atom(Atom::Product(Box::new(a.clone()), Box::new(b.clone())))
            }
        }
    }

    /// ⌊self / d⌋ for d > 0.
    pub fn floor_div(&self, d: i64) -> Dim {
        self.div(d, false)
    }

    /// ⌈self / d⌉ for d > 0.
    pub fn ceil_div(&self, d: i64) -> Dim {
        self.div(d, true)
    }

    fn div(&self, d: i64, ceil: bool) -> Dim {
        assert!(d > 0, "division of a dimension by {d}");
        if d == 1 {
            return self.clone();
        }
        if let Some(v) = self.value() {
            return Dim::known(if ceil { (v + d - 1).div_euclid(d) } else { v.div_euclid(d) });
        }
        // Atoms are integers, so ⌊(d·q + c) / d⌋ = q + ⌊c / d⌋ whenever every coefficient is a
        // multiple of d: a stride-2 convolution of a size padded to 32 stays affine.
        if self.terms.values().all(|c| c % d == 0) {
            let constant = if ceil { (self.constant + d - 1).div_euclid(d) } else { self.constant.div_euclid(d) };
            return Dim { constant, terms: self.terms.iter().map(|(a, c)| (a.clone(), c / d)).collect() };
        }
        let inner = Box::new(self.clone());
        Dim::atom(if ceil { Atom::CeilDiv(inner, d) } else { Atom::FloorDiv(inner, d) })
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Symbol(s) => write!(f, "{s}"),
            Atom::FloorDiv(d, k) => write!(f, "floor({} / {k})", Parenthesized(d)),
            Atom::CeilDiv(d, k) => write!(f, "ceil({} / {k})", Parenthesized(d)),
            Atom::Product(a, b) => write!(f, "{}*{}", Parenthesized(a), Parenthesized(b)),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (atom, c) in &self.terms {
            let (sign, mag) = if *c < 0 { ("-", -c) } else { ("+", *c) };
            match (first, sign) {
                (true, "-") => write!(f, "-")?,
                (true, _) => {}
                (false, s) => write!(f, " {s} ")?,
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            write!(f, "{atom}")?;
            first = false;
        }
        match (first, self.constant) {
            (true, c) => write!(f, "{c}"),
            (false, 0) => Ok(()),
            (false, c) if c < 0 => write!(f, " - {}", -c),
            (false, c) => write!(f, " + {c}"),
        }
    }
}

/// A dimension in parentheses unless it is a single symbol or number.
struct Parenthesized<'a>(&'a Dim);

impl fmt::Display for Parenthesized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let simple = d.terms.is_empty()
            || (d.constant == 0 && d.terms.len() == 1 && d.terms.values().all(|&c| c == 1));
        if simple {
            write!(f, "{d}")
        } else {
            write!(f, "({d})")
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: Vec<Dim>) -> Self {
        TensorType { dtype, dims }
    }

    pub fn f32(dims: Vec<Dim>) -> Self {
        TensorType { dtype: DType::F32, dims }
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The number of elements, where every dimension is known.
    pub fn elements(&self) -> Option<i64> {
        self.dims.iter().map(Dim::value).product()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(ToString::to_string).collect();
        write!(f, "{}[{}]", self.dtype.name(), dims.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output size of a convolution or pooling window, as the shape rules compute it.
    fn window(h: &Dim, kernel: i64, stride: i64, padding: i64) -> Dim {
        h.add(&Dim::known(2 * padding - kernel)).floor_div(stride).add(&Dim::known(1))
    }

    #[test]
    fn same_padding_convolution_keeps_the_symbol() {
        let h = Dim::symbol("H");
        assert_eq!(window(&h, 3, 1, 1), h);
        assert_eq!(window(&h, 3, 1, 1).to_string(), "H");
    }

    #[test]
    fn strided_branches_of_a_residual_block_agree() {
        let h = Dim::symbol("H");
        let main = window(&h, 3, 2, 1);
        let shortcut = window(&h, 1, 2, 0);
        assert_eq!(main, shortcut);
        assert_eq!(main.to_string(), "floor((H - 1) / 2) + 1");
        // A size padded to a multiple of 32 halves exactly.
        let padded = h.ceil_div(32).scale(32);
        assert_eq!(window(&padded, 7, 2, 3), h.ceil_div(32).scale(16));
        assert_eq!(window(&padded, 7, 2, 3).to_string(), "16*ceil(H / 32)");
        assert_ne!(main, window(&h, 3, 2, 0));
    }

    #[test]
    fn exact_division_and_constants_fold() {
        let h = Dim::symbol("H");
        assert_eq!(h.scale(4).floor_div(2), h.scale(2));
        assert_eq!(Dim::known(7).ceil_div(2), Dim::known(4));
        assert_eq!(Dim::known(-7).floor_div(2), Dim::known(-4));
        assert_eq!(h.sub(&h), Dim::known(0));
        assert_eq!(Dim::known(3).mul(&h).to_string(), "3*H");
    }
}
