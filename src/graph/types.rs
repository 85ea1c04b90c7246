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

impl Atom {
    /// How many atoms this one is built from, itself included.
    fn size(&self) -> usize {
        match self {
            Atom::Symbol(_) => 1,
            Atom::FloorDiv(d, _) | Atom::CeilDiv(d, _) => 1 + d.size(),
            Atom::Product(a, b) => 1 + a.size() + b.size(),
        }
    }
}

/// Most atoms one size may be built from: sizes are cloned, compared and printed recursively,
/// so a size grown without bound by a model's loops would exhaust time or the stack.
const MAX_ATOMS: usize = 256;

/// Why arithmetic on sizes has no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// A constant or coefficient beyond 64-bit integers.
    Overflow,
    /// A division by a size that is not positive.
    Divisor(i64),
    /// A symbolic size of more than [`MAX_ATOMS`] atoms.
    TooComplex,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Overflow => write!(f, "size too large: a size computed here does not fit in 64 bits"),
            SizeError::Divisor(d) => write!(f, "a size divided by {d}: sizes divide only by positive numbers"),
            SizeError::TooComplex => {
                write!(f, "size too complex: a symbolic size here has more than {MAX_ATOMS} terms")
            }
        }
    }
}

/// `constant + Σ coefficient·atom`, with no zero coefficients.
///
/// Arithmetic is checked: a result beyond 64-bit integers, a division by a non-positive number
/// or a symbolic size of more than [`MAX_ATOMS`] atoms is a [`SizeError`].
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
        Dim { constant: 0, terms: BTreeMap::from([(Atom::Symbol(name.to_string()), 1)]) }
    }

    fn atom(atom: Atom) -> Result<Dim, SizeError> {
        Dim { constant: 0, terms: BTreeMap::from([(atom, 1)]) }.bounded()
    }

    /// The size, where it does not depend on the input.
    pub fn value(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    fn size(&self) -> usize {
        self.terms.keys().map(Atom::size).sum()
    }

    fn bounded(self) -> Result<Dim, SizeError> {
        if self.size() > MAX_ATOMS {
            return Err(SizeError::TooComplex);
        }
        Ok(self)
    }

    pub fn add(&self, other: &Dim) -> Result<Dim, SizeError> {
        let mut out = self.clone();
        out.constant = out.constant.checked_add(other.constant).ok_or(SizeError::Overflow)?;
        for (atom, c) in &other.terms {
            let entry = out.terms.entry(atom.clone()).or_insert(0);
            *entry = entry.checked_add(*c).ok_or(SizeError::Overflow)?;
            if *entry == 0 {
                out.terms.remove(atom);
            }
        }
        out.bounded()
    }

    pub fn sub(&self, other: &Dim) -> Result<Dim, SizeError> {
        self.add(&other.scale(-1)?)
    }

    pub fn scale(&self, k: i64) -> Result<Dim, SizeError> {
        if k == 0 {
            return Ok(Dim::known(0));
        }
        let times = |v: i64| v.checked_mul(k).ok_or(SizeError::Overflow);
        let terms = self.terms.iter().map(|(a, c)| Ok((a.clone(), times(*c)?))).collect::<Result<_, _>>()?;
        Ok(Dim { constant: times(self.constant)?, terms })
    }

    pub fn mul(&self, other: &Dim) -> Result<Dim, SizeError> {
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
    pub fn floor_div(&self, d: i64) -> Result<Dim, SizeError> {
        self.div(d, false)
    }

    /// ⌈self / d⌉ for d > 0.
    pub fn ceil_div(&self, d: i64) -> Result<Dim, SizeError> {
        self.div(d, true)
    }

    fn div(&self, d: i64, ceil: bool) -> Result<Dim, SizeError> {
        if d <= 0 {
            return Err(SizeError::Divisor(d));
        }
        if d == 1 {
            return Ok(self.clone());
        }
        // Rounding up without computing `v + d - 1`, which may overflow.
        let quotient = |v: i64| v.div_euclid(d) + i64::from(ceil && v.rem_euclid(d) != 0);
        if let Some(v) = self.value() {
            return Ok(Dim::known(quotient(v)));
        }
        // Atoms are integers, so ⌊(d·q + c) / d⌋ = q + ⌊c / d⌋ whenever every coefficient is a
        // multiple of d: a stride-2 convolution of a size padded to 32 stays affine.
        if self.terms.values().all(|c| c % d == 0) {
            let terms = self.terms.iter().map(|(a, c)| (a.clone(), c / d)).collect();
            return Ok(Dim { constant: quotient(self.constant), terms });
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

    /// The number of elements, where every dimension is known and the count fits in 64 bits.
    pub fn elements(&self) -> Option<i64> {
        self.dims.iter().try_fold(1i64, |count, d| count.checked_mul(d.value()?))
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
        h.add(&Dim::known(2 * padding - kernel)).unwrap().floor_div(stride).unwrap().add(&Dim::known(1)).unwrap()
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
        let padded = h.ceil_div(32).unwrap().scale(32).unwrap();
        assert_eq!(window(&padded, 7, 2, 3), h.ceil_div(32).unwrap().scale(16).unwrap());
        assert_eq!(window(&padded, 7, 2, 3).to_string(), "16*ceil(H / 32)");
        assert_ne!(main, window(&h, 3, 2, 0));
    }

    #[test]
    fn exact_division_and_constants_fold() {
        let h = Dim::symbol("H");
        assert_eq!(h.scale(4).unwrap().floor_div(2), h.scale(2));
        assert_eq!(Dim::known(7).ceil_div(2), Ok(Dim::known(4)));
        assert_eq!(Dim::known(-7).floor_div(2), Ok(Dim::known(-4)));
        assert_eq!(Dim::known(-7).ceil_div(2), Ok(Dim::known(-3)));
        assert_eq!(h.sub(&h), Ok(Dim::known(0)));
        assert_eq!(Dim::known(3).mul(&h).unwrap().to_string(), "3*H");
    }

    #[test]
    fn arithmetic_beyond_64_bits_or_by_zero_is_an_error() {
        let h = Dim::symbol("H");
        assert_eq!(Dim::known(i64::MAX).add(&Dim::known(1)), Err(SizeError::Overflow));
        assert_eq!(h.scale(i64::MAX).unwrap().scale(2), Err(SizeError::Overflow));
        assert_eq!(Dim::known(i64::MIN).scale(-1), Err(SizeError::Overflow));
        assert_eq!(Dim::known(i64::MAX).ceil_div(2), Ok(Dim::known(i64::MAX / 2 + 1)));
        assert_eq!(h.floor_div(0), Err(SizeError::Divisor(0)));
        assert_eq!(h.ceil_div(-2), Err(SizeError::Divisor(-2)));
        let huge = TensorType::f32(vec![Dim::known(1 << 32), Dim::known(1 << 32)]);
        assert_eq!(huge.elements(), None);
    }

    #[test]
    fn sizes_grown_by_a_loop_stop_at_a_bound() {
        let mut h = Dim::symbol("H");
        let error = loop {
            match h.floor_div(3).and_then(|d| d.add(&Dim::known(1))) {
                Ok(next) => h = next,
                Err(e) => break e,
            }
        };
        assert_eq!(error, SizeError::TooComplex);
        let squared = Dim::symbol("H").mul(&Dim::symbol("W")).unwrap();
        assert!((0..16).try_fold(squared, |d, _| d.mul(&d)).is_err());
    }
}
