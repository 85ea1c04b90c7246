//! The syntax tree of a model file, with a span on every node.

use crate::diagnostic::Span;

#[derive(Clone, Debug)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct File {
    /// The `//!` header, one entry per line.
    pub doc: Vec<String>,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub enum Item {
    Import { path: String, span: Span },
    Config(Section),
    Train(Section),
    Block(BlockDef),
}

/// `config { ... }` or `train { ... }`: named settings.
#[derive(Clone, Debug)]
pub struct Section {
    pub span: Span,
    pub settings: Vec<Setting>,
}

#[derive(Clone, Debug)]
pub struct Setting {
    pub name: Ident,
    pub value: Expr,
}

/// A `block` (reusable, parametrized), the `network` (the entry point) or the `training
/// network` (the graph a training step computes: targets in, losses out).
#[derive(Clone, Debug)]
pub struct BlockDef {
    pub is_network: bool,
    /// A `training network`.
    pub training: bool,
    pub name: Ident,
    pub params: Vec<Param>,
    pub returns: Option<Returns>,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub ty: Type,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug)]
pub struct Returns {
    /// `-> (a: T, U)` is a tuple; `-> T` is not.
    pub tuple: bool,
    pub items: Vec<(Option<Ident>, Type)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarType {
    Int,
    Float,
    Bool,
    Str,
}

#[derive(Clone, Debug)]
pub enum Type {
    Tensor { dtype: String, dims: Vec<DimExpr>, span: Span },
    List { elem: Box<Type>, span: Span },
    Scalar { ty: ScalarType, span: Span },
}

impl Type {
    pub fn span(&self) -> Span {
        match self {
            Type::Tensor { span, .. } | Type::List { span, .. } | Type::Scalar { span, .. } => *span,
        }
    }
}

/// A dimension in a tensor type: `_` matches anything; a lone unbound name binds on first use.
#[derive(Clone, Debug)]
pub enum DimExpr {
    Any(Span),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub enum Stmt {
    Let { names: Vec<Ident>, tuple: bool, value: Expr, span: Span },
    Assign { name: Ident, value: Expr, span: Span },
    For { var: Ident, iter: Expr, body: Vec<Stmt>, span: Span },
    If { cond: Expr, then: Vec<Stmt>, otherwise: Option<Vec<Stmt>>, span: Span },
    Return { value: Expr, span: Span },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Range,
    Or,
    And,
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Range => "..",
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Le => "<=",
            BinOp::Ge => ">=",
            BinOp::Lt => "<",
            BinOp::Gt => ">",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }

    /// Binding strength: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Range => 1,
            BinOp::Or => 2,
            BinOp::And => 3,
            BinOp::Eq | BinOp::Ne | BinOp::Le | BinOp::Ge | BinOp::Lt | BinOp::Gt => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug)]
pub struct Arg {
    /// `kernel: 3` has a keyword; positional arguments do not.
    pub keyword: Option<Ident>,
    pub value: Expr,
}

/// One dot-separated segment of a parameter path after `@`: `layer{i + 1}` is the text
/// `layer` followed by an interpolation.
#[derive(Clone, Debug)]
pub struct Segment {
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug)]
pub enum Piece {
    Text(String),
    Interpolated(Expr),
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(String),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Call { callee: Ident, args: Vec<Arg> },
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
    Unary { op: UnOp, operand: Box<Expr> },
    Index { base: Box<Expr>, index: Box<Expr> },
    Field { base: Box<Expr>, field: Ident },
    /// `call(...) @path`: the call's parameters live under `path` instead of the bound name;
    /// with `shared`, they are those an earlier call created there.
    Scoped { expr: Box<Expr>, path: Vec<Segment>, shared: bool },
}
