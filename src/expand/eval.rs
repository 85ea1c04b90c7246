//! The evaluator behind [`super::load`]: statements, expressions, block instantiation and the
//! creation of graph nodes.

use super::config::{Setting, Settings};
use super::value::Value;
use super::Program;
use crate::diagnostic::{closest, Diagnostic, Span};
use crate::graph::types::{DType, Dim, SizeError, TensorType};
use crate::graph::{AddOpError, Attrs, Graph, Port, StateUse};
use crate::ops::{self, AttrType, AttrValue, Default, OpError, Operator, Site};
use crate::summary::grouped;
use crate::syntax::ast::{self, BinOp, DimExpr, Expr, ExprKind, Stmt, UnOp};
use std::collections::{HashMap, HashSet};

/// Compile-time functions callable in a model file besides operators and blocks.
const COMPILE_TIME_FUNCTIONS: &[&str] = &["len", "reversed", "min", "max"];

/// Longest list a range or a concatenation may produce: guards against a typo unrolling forever.
const MAX_LIST: usize = 100_000;

/// Most graph nodes an expansion may create: about 200 times the nodes of the largest shipped
/// model, and a second's work for a release build.
const MAX_NODES: usize = 100_000;

/// Most loop iterations and block instantiations, together, that an expansion may run: about
/// 1,000 times the shipped models' and, for blocks of a dozen statements, a second's work.
const MAX_REPETITIONS: usize = 100_000;

/// Evaluates `config` sections (`config: None`; a setting may use earlier ones as
/// `config.name`) or `train` sections (which see the finished `config`).
pub fn settings(program: &Program, sections: Vec<&ast::Section>, config: Option<&Settings>, diags: &mut Vec<Diagnostic>) -> Settings {
    let mut out = Settings::default();
    for section in sections {
        for s in &section.settings {
            let visible = config.cloned().unwrap_or_else(|| out.clone());
            let mut ev = Evaluator::new(program, &visible, diags);
            let value = ev.expr(&s.value, None);
            if let Some(first) = out.get(&s.name.name) {
                diags.push(
                    Diagnostic::error(s.name.span, format!("name defined twice: `{}`", s.name.name))
                        .with_label("redefined here")
                        .with_note(first.span, "first defined here"),
                );
                continue;
            }
            if matches!(value, Value::Tensor(_)) {
                diags.push(Diagnostic::error(s.value.span, "settings are numbers, strings, booleans or lists of them"));
            }
            out.0.push(Setting { name: s.name.name.clone(), value, span: s.name.span.to(s.value.span) });
        }
    }
    out
}

pub fn expand_network(program: &Program, network: &ast::BlockDef, config: &Settings, diags: &mut Vec<Diagnostic>) -> Graph {
    let mut ev = Evaluator::new(program, config, diags);
    ev.stack.push(network.name.name.clone());
    let mut frame = Frame::default();
    for param in &network.params {
        let value = ev.network_input(param);
        frame.define(&param.name, value);
    }
    let result = ev.run_body(&mut frame, &network.body);
    match (result, &network.returns) {
        (Some(Value::Poison), _) => {}
        (Some(value), Some(returns)) => {
            let values = match (returns.tuple, value) {
                (true, Value::Tuple(items)) => items,
                (_, v) => vec![v],
            };
            if values.len() != returns.items.len() {
                ev.error(Diagnostic::error(network.name.span, format!("the network returns {} values but declares {}", values.len(), returns.items.len())));
            }
            for (i, ((name, ty), value)) in returns.items.iter().zip(values).enumerate() {
                ev.check_type(&mut frame, ty, &value, ty.span(), "return value");
                let name = name.as_ref().map_or(format!("output{i}"), |n| n.name.clone());
                match value {
                    Value::Tensor(port) => ev.graph.outputs.push((name, port)),
                    Value::Poison => {}
                    v => ev.error(Diagnostic::error(ty.span(), format!("network outputs are tensors, found {}", v.kind()))),
                }
            }
        }
        (Some(_), None) => ev.error(
            Diagnostic::error(network.name.span, "the network's outputs need types")
                .with_hint("declare them: `network name(...) -> (boxes: f32[D, 4], ...)`"),
        ),
        (None, _) => ev.error(Diagnostic::error(network.name.span, "the network never returns its outputs")),
    }
    ev.graph
}

/// Local names of one block instantiation: a stack of lexical scopes.
#[derive(Default)]
struct Frame {
    scopes: Vec<HashMap<String, (Value, Span)>>,
    /// Parameter path of this instantiation, e.g. `backbone.body.layer1.0`.
    prefix: Vec<String>,
    /// Inside a call marked `shared`: parameters are reused, not created.
    shared: bool,
}

impl Frame {
    fn lookup(&self, name: &str) -> Option<&(Value, Span)> {
        self.scopes.iter().rev().find_map(|s| s.get(name))
    }

    fn define(&mut self, name: &ast::Ident, value: Value) {
        if self.scopes.is_empty() {
            self.scopes.push(HashMap::new());
        }
        self.scopes.last_mut().unwrap().insert(name.name.clone(), (value, name.span));
    }

    fn assign(&mut self, name: &str, value: Value) {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(slot) = scope.get_mut(name) {
                slot.0 = value;
                return;
            }
        }
    }

    fn names(&self) -> Vec<&str> {
        self.scopes.iter().flat_map(|s| s.keys().map(String::as_str)).collect()
    }
}

struct Evaluator<'a> {
    program: &'a Program,
    config: &'a Settings,
    diags: &'a mut Vec<Diagnostic>,
    graph: Graph,
    /// Blocks being instantiated, to reject recursion.
    stack: Vec<String>,
    /// The iterables of the loops being run, innermost last: where an expansion too large is
    /// most likely repeated.
    loops: Vec<Span>,
    /// Loop iterations and block instantiations so far.
    repetitions: usize,
    /// Set once the expansion is too large: evaluation stops, errors that follow are not reported.
    exhausted: bool,
    /// The errors reported, by place and message: an error in a block is met again at each of
    /// its instantiations.
    reported: HashSet<(Option<Span>, String)>,
}

/// How the call being evaluated names its parameters.
#[derive(Clone)]
enum Scope {
    /// The name the call's result is bound to (`let conv1 = conv2d(...)`).
    Bound(String),
    /// An explicit `@path`, and whether it is marked `shared`.
    Path(Vec<String>, bool),
}

impl Scope {
    fn segments(&self) -> Vec<String> {
        match self {
            Scope::Bound(name) => vec![name.clone()],
            Scope::Path(p, _) => p.clone(),
        }
    }
}

impl<'a> Evaluator<'a> {
    fn new(program: &'a Program, config: &'a Settings, diags: &'a mut Vec<Diagnostic>) -> Self {
        Evaluator {
            program,
            config,
            diags,
            graph: Graph::default(),
            stack: vec![],
            loops: vec![],
            repetitions: 0,
            exhausted: false,
            reported: HashSet::new(),
        }
    }

    fn error(&mut self, d: Diagnostic) {
        if !self.exhausted && self.reported.insert((d.span, d.message.clone())) {
            self.diags.push(d);
        }
    }

    fn fail(&mut self, d: Diagnostic) -> Value {
        self.error(d);
        Value::Poison
    }

    /// Counts one loop iteration or block instantiation at `at`; false once there are too many.
    fn repeat(&mut self, at: Span) -> bool {
        self.repetitions += 1;
        if self.repetitions > MAX_REPETITIONS {
            self.too_large(
                format!("more than {} loop iterations and block calls", grouped(MAX_REPETITIONS as i64)),
                at,
            );
        }
        !self.exhausted
    }

    /// Whether the graph may grow by `nodes` more nodes for the call at `at`.
    fn room_for(&mut self, nodes: usize, at: Span) -> bool {
        if self.graph.nodes.node_count() + nodes > MAX_NODES {
            self.too_large(format!("the graph exceeds {} nodes", grouped(MAX_NODES as i64)), at);
        }
        !self.exhausted
    }

    /// Reports an expansion too large at the innermost loop being run (or at `at` outside loops)
    /// and stops the evaluation.
    fn too_large(&mut self, what: String, at: Span) {
        let message = format!("expansion too large: {what}");
        let d = match self.loops.last() {
            Some(&repeated) if repeated != at => Diagnostic::error(repeated, message)
                .with_label("repeated by this loop")
                .with_note(at, "the limit is reached here"),
            _ => Diagnostic::error(at, message).with_label("the limit is reached here"),
        };
        self.error(d.with_hint("a loop bound or a config value (such as a block count) is far larger than intended"));
        self.exhausted = true;
    }

    /// Lists longer than [`MAX_LIST`] are errors.
    fn too_long(&mut self, len: i128, span: Span) -> Value {
        let message = format!("list of {len} elements is too long");
        self.fail(
            Diagnostic::error(span, message)
                .with_hint(format!("ranges and lists hold at most {} elements", grouped(MAX_LIST as i64))),
        )
    }

    /// The value of size arithmetic, or its error at `span`.
    fn size(&mut self, result: Result<Dim, SizeError>, span: Span) -> Value {
        match result {
            Ok(d) => Value::from_dim(d),
            Err(e) => self.fail(Diagnostic::error(span, e.to_string())),
        }
    }

    /// The value of integer arithmetic, or an overflow error at `span` naming the `operation`.
    fn int(&mut self, result: Option<i64>, operation: impl FnOnce() -> String, span: Span) -> Value {
        match result {
            Some(v) => Value::Int(v),
            None => {
                self.fail(Diagnostic::error(span, format!("integer overflow: {} does not fit in 64 bits", operation())))
            }
        }
    }

    // ---- statements -------------------------------------------------------------------

    /// Runs statements in a fresh scope; `Some` once a `return` ran.
    fn run_body(&mut self, frame: &mut Frame, body: &[Stmt]) -> Option<Value> {
        frame.scopes.push(HashMap::new());
        let mut result = None;
        for stmt in body {
            if self.exhausted {
                result = Some(Value::Poison);
                break;
            }
            if let Some(v) = self.stmt(frame, stmt) {
                result = Some(v);
                break;
            }
        }
        frame.scopes.pop();
        result
    }

    fn stmt(&mut self, frame: &mut Frame, stmt: &Stmt) -> Option<Value> {
        match stmt {
            Stmt::Let { names, tuple, value, .. } => {
                for name in names {
                    if let Some((_, first)) = frame.lookup(&name.name) {
                        let first = *first;
                        self.error(
                            Diagnostic::error(name.span, format!("name defined twice: `{}`", name.name))
                                .with_label("redefined here")
                                .with_note(first, "first defined here")
                                .with_hint(format!("to update it, assign without `let`: `{} = ...`", name.name)),
                        );
                    }
                }
                let scope = (!tuple).then(|| Scope::Bound(names[0].name.clone()));
                let v = self.expr_in(frame, value, scope);
                if *tuple {
                    match v {
                        Value::Tuple(items) if items.len() == names.len() => {
                            for (n, item) in names.iter().zip(items) {
                                frame.define(n, item);
                            }
                        }
                        Value::Poison => names.iter().for_each(|n| frame.define(n, Value::Poison)),
                        other => {
                            let found = match &other {
                                Value::Tuple(items) => format!("a tuple of {}", items.len()),
                                v => format!("a {}", v.kind()),
                            };
                            self.error(Diagnostic::error(value.span, format!("cannot unpack {found} into {} names", names.len())));
                            names.iter().for_each(|n| frame.define(n, Value::Poison));
                        }
                    }
                } else {
                    frame.define(&names[0], v);
                }
                None
            }
            Stmt::Assign { name, value, .. } => {
                if frame.lookup(&name.name).is_none() {
                    self.undefined(frame, &name.name, name.span, Some("define it first with `let`"));
                    return None;
                }
                let v = self.expr_in(frame, value, Some(Scope::Bound(name.name.clone())));
                frame.assign(&name.name, v);
                None
            }
            Stmt::For { var, iter, body, .. } => {
                let items = match self.expr_in(frame, iter, None) {
                    Value::List(items) => items,
                    Value::Poison => return None,
                    v => {
                        self.error(Diagnostic::error(iter.span, format!("`for` iterates over a list or range, found {}", v.kind())));
                        return None;
                    }
                };
                self.loops.push(iter.span);
                let mut result = None;
                for item in items {
                    if !self.repeat(iter.span) {
                        result = Some(Value::Poison);
                        break;
                    }
                    frame.scopes.push(HashMap::from([(var.name.clone(), (item, var.span))]));
                    result = self.run_body(frame, body);
                    frame.scopes.pop();
                    if result.is_some() {
                        break;
                    }
                }
                self.loops.pop();
                result
            }
            Stmt::If { cond, then, otherwise, .. } => match self.expr_in(frame, cond, None) {
                Value::Bool(true) => self.run_body(frame, then),
                Value::Bool(false) => otherwise.as_ref().and_then(|o| self.run_body(frame, o)),
                Value::Poison => None,
                v => {
                    self.error(Diagnostic::error(cond.span, format!("a condition is a bool known at compile time, found {}", v.kind())));
                    None
                }
            },
            Stmt::Return { value, .. } => Some(self.expr_in(frame, value, None)),
        }
    }

    fn undefined(&mut self, frame: &Frame, name: &str, span: Span, hint: Option<&str>) -> Value {
        let mut d = Diagnostic::error(span, format!("undefined name `{name}`")).with_label("not found in this scope");
        let mut candidates = frame.names();
        candidates.push("config");
        if let Some(c) = closest(name, candidates) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        } else if let Some(h) = hint {
            d = d.with_hint(h);
        }
        self.fail(d)
    }

    // ---- expressions ------------------------------------------------------------------

    /// Evaluates outside any block (settings): names are config settings.
    pub fn expr(&mut self, e: &Expr, scope: Option<Scope>) -> Value {
        let mut frame = Frame::default();
        self.expr_in(&mut frame, e, scope)
    }

    fn expr_in(&mut self, frame: &mut Frame, e: &Expr, scope: Option<Scope>) -> Value {
        match &e.kind {
            ExprKind::Int(v) => Value::Int(*v),
            ExprKind::Float(v) => Value::Float(*v),
            ExprKind::Bool(v) => Value::Bool(*v),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Name(name) => match frame.lookup(name) {
                Some((v, _)) => v.clone(),
                None => self.undefined(frame, name, e.span, None),
            },
            ExprKind::List(items) => Value::List(items.iter().map(|i| self.expr_in(frame, i, None)).collect()),
            ExprKind::Tuple(items) => Value::Tuple(items.iter().map(|i| self.expr_in(frame, i, None)).collect()),
            ExprKind::Field { base, field } => {
                if matches!(&base.kind, ExprKind::Name(n) if n == "config" && frame.lookup("config").is_none()) {
                    return self.config_value(field);
                }
                let _ = self.expr_in(frame, base, None);
                self.fail(Diagnostic::error(field.span, format!("no field `{}`", field.name)).with_hint("only `config.<name>` has fields"))
            }
            ExprKind::Index { base, index } => {
                let b = self.expr_in(frame, base, None);
                let i = self.expr_in(frame, index, None);
                self.index(b, i, e.span, index.span)
            }
            ExprKind::Unary { op, operand } => {
                let v = self.expr_in(frame, operand, None);
                match (op, v) {
                    (_, Value::Poison) => Value::Poison,
                    (UnOp::Neg, Value::Int(v)) => self.int(v.checked_neg(), || format!("-({v})"), e.span),
                    (UnOp::Neg, Value::Float(v)) => Value::Float(-v),
                    (UnOp::Neg, Value::Dim(d)) => self.size(d.scale(-1), e.span),
                    (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                    (_, v) => self.fail(Diagnostic::error(e.span, format!("cannot apply `{}` to {}", if *op == UnOp::Neg { "-" } else { "!" }, v.kind()))),
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr_in(frame, lhs, None);
                let r = self.expr_in(frame, rhs, None);
                self.binary(*op, l, r, e.span)
            }
            ExprKind::Scoped { expr, path, shared } => {
                if !matches!(expr.kind, ExprKind::Call { .. }) {
                    return self.fail(Diagnostic::error(e.span, "`@` names the parameters of a call").with_hint("write `op(...) @name`"));
                }
                let mut segments = vec![];
                for seg in path {
                    let mut text = String::new();
                    for piece in &seg.pieces {
                        match piece {
                            ast::Piece::Text(t) => text.push_str(t),
                            ast::Piece::Interpolated(x) => match self.expr_in(frame, x, None) {
                                Value::Int(v) => text.push_str(&v.to_string()),
                                Value::Str(s) => text.push_str(&s),
                                Value::Poison => return Value::Poison,
                                v => {
                                    let message = format!("a path segment is an int or a str, found {}", v.kind());
                                    return self.fail(Diagnostic::error(x.span, message));
                                }
                            },
                        }
                    }
                    segments.push(text);
                }
                self.expr_in(frame, expr, Some(Scope::Path(segments, *shared)))
            }
            ExprKind::Call { callee, args } => self.call(frame, e, callee, args, scope),
        }
    }

    fn config_value(&mut self, field: &ast::Ident) -> Value {
        match self.config.get(&field.name) {
            Some(s) => s.value.clone(),
            None => {
                let mut d = Diagnostic::error(field.span, format!("undefined config setting `{}`", field.name))
                    .with_label("not in the `config` section");
                if let Some(c) = closest(&field.name, self.config.names()) {
                    d = d.with_hint(format!("did you mean `config.{c}`?"));
                }
                self.fail(d)
            }
        }
    }

    fn index(&mut self, base: Value, index: Value, span: Span, index_span: Span) -> Value {
        match (base, index) {
            (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
            (Value::List(items) | Value::Tuple(items), Value::Int(i)) => {
                let n = items.len() as i64;
                let at = if i < 0 { n + i } else { i };
                if (0..n).contains(&at) {
                    items[at as usize].clone()
                } else {
                    self.fail(Diagnostic::error(index_span, format!("index {i} out of range for a list of {n}")))
                }
            }
            (b, i) => self.fail(Diagnostic::error(span, format!("cannot index a {} with a {}", b.kind(), i.kind()))),
        }
    }

    fn binary(&mut self, op: BinOp, l: Value, r: Value, span: Span) -> Value {
        use Value::*;
        if l.is_poison() || r.is_poison() {
            return Poison;
        }
        let mismatch = |l: &Value, r: &Value| format!("cannot apply `{}` to {} and {}", op.symbol(), l.kind(), r.kind());
        match (op, l, r) {
            (BinOp::Range, Int(a), Int(b)) => {
                let len = i128::from(b) - i128::from(a);
                if len > MAX_LIST as i128 {
                    return self.too_long(len, span);
                }
                List((a..b).map(Int).collect())
            }
            (BinOp::Add, Tensor(a), Tensor(b)) => self.elementwise("add", a, b, span),
            (BinOp::Mul, Tensor(a), Tensor(b)) => self.elementwise("mul", a, b, span),
            (BinOp::Add, List(mut a), List(b)) => {
                if a.len() + b.len() > MAX_LIST {
                    return self.too_long((a.len() + b.len()) as i128, span);
                }
                a.extend(b);
                List(a)
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem, Int(a), Int(b)) => {
                if matches!(op, BinOp::Div | BinOp::Rem) && b == 0 {
                    return self.fail(Diagnostic::error(span, "division by zero"));
                }
                let result = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div => a.checked_div_euclid(b),
                    _ => a.checked_rem_euclid(b),
                };
                self.int(result, || format!("{a} {} {b}", op.symbol()), span)
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, a @ (Int(_) | Float(_)), b @ (Int(_) | Float(_))) => {
                let (a, b) = (number(&a), number(&b));
                Float(match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    _ => a / b,
                })
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, a @ (Int(_) | Dim(_)), b @ (Int(_) | Dim(_))) => {
                let (da, db) = (a.as_dim().unwrap(), b.as_dim().unwrap());
                match (op, &b) {
                    (BinOp::Add, _) => self.size(da.add(&db), span),
                    (BinOp::Sub, _) => self.size(da.sub(&db), span),
                    (BinOp::Mul, _) => self.size(da.mul(&db), span),
                    (_, Int(k)) if *k > 0 => self.size(da.floor_div(*k), span),
                    _ => self.fail(Diagnostic::error(span, "a symbolic size can only be divided by a positive int")),
                }
            }
            (BinOp::Eq | BinOp::Ne, a, b) => {
                let equal = match (&a, &b) {
                    (Int(_) | Float(_), Int(_) | Float(_)) => number(&a) == number(&b),
                    (Str(x), Str(y)) => x == y,
                    (Bool(x), Bool(y)) => x == y,
                    _ => return self.fail(Diagnostic::error(span, mismatch(&a, &b)).with_hint("only numbers, strings and bools compare at compile time")),
                };
                Bool(equal == (op == BinOp::Eq))
            }
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, a @ (Int(_) | Float(_)), b @ (Int(_) | Float(_))) => {
                let (a, b) = (number(&a), number(&b));
                Bool(match op {
                    BinOp::Lt => a < b,
                    BinOp::Le => a <= b,
                    BinOp::Gt => a > b,
                    _ => a >= b,
                })
            }
            (BinOp::And, Bool(a), Bool(b)) => Bool(a && b),
            (BinOp::Or, Bool(a), Bool(b)) => Bool(a || b),
            (_, a, b) => self.fail(Diagnostic::error(span, mismatch(&a, &b))),
        }
    }

    fn elementwise(&mut self, name: &str, a: Port, b: Port, span: Span) -> Value {
        let op = ops::lookup(name).expect("elementwise operators are registered");
        if !self.room_for(1, span) {
            return Value::Poison;
        }
        match self.graph.add_op(op, Attrs::new(), &[vec![a], vec![b]], "", Some(span), StateUse::Create) {
            Ok(node) => Value::Tensor(Port { node, output: 0 }),
            Err(AddOpError::Shape(e)) => self.fail(Diagnostic::error(span, e.message).with_label("in this operation").with_hint(e.hint.unwrap_or_default())),
            Err(e) => unreachable!("elementwise operators own no state: {e:?}"),
        }
    }

    // ---- calls ------------------------------------------------------------------------

    fn call(&mut self, frame: &mut Frame, call: &Expr, callee: &ast::Ident, args: &[ast::Arg], scope: Option<Scope>) -> Value {
        let name = callee.name.as_str();
        if let Some(op) = ops::lookup(name) {
            let values: Vec<Value> = args.iter().map(|a| self.expr_in(frame, &a.value, None)).collect();
            return self.operator(frame, op, call, args, values, scope);
        }
        if let Some(block) = self.program.blocks.get(name).filter(|b| !b.is_network) {
            let values: Vec<Value> = args.iter().map(|a| self.expr_in(frame, &a.value, None)).collect();
            return self.instantiate(frame, block, call, args, values, scope);
        }
        if COMPILE_TIME_FUNCTIONS.contains(&name) {
            let values: Vec<Value> = args.iter().map(|a| self.expr_in(frame, &a.value, None)).collect();
            return self.compile_time_function(name, call.span, values);
        }
        let known = ops::OPERATORS
            .iter()
            .map(|o| o.name())
            .chain(self.program.blocks.keys().map(String::as_str))
            .chain(COMPILE_TIME_FUNCTIONS.iter().copied());
        let mut d = Diagnostic::error(callee.span, format!("unknown operator `{name}`")).with_label("not an operator, block or function");
        if let Some(c) = closest(name, known) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        }
        self.fail(d)
    }

    fn compile_time_function(&mut self, name: &str, span: Span, args: Vec<Value>) -> Value {
        if args.iter().any(Value::is_poison) {
            return Value::Poison;
        }
        match (name, args.as_slice()) {
            ("len", [Value::List(items) | Value::Tuple(items)]) => Value::Int(items.len() as i64),
            ("reversed", [Value::List(items)]) => Value::List(items.iter().rev().cloned().collect()),
            ("min" | "max", [a @ (Value::Int(_) | Value::Float(_)), b @ (Value::Int(_) | Value::Float(_))]) => {
                let pick_a = (number(a) <= number(b)) == (name == "min");
                if pick_a { a.clone() } else { b.clone() }
            }
            _ => {
                let kinds: Vec<&str> = args.iter().map(Value::kind).collect();
                self.fail(Diagnostic::error(span, format!("`{name}` does not take ({})", kinds.join(", "))).with_hint(match name {
                    "len" | "reversed" => "it takes one list",
                    _ => "it takes two numbers",
                }))
            }
        }
    }

    fn operator(&mut self, frame: &Frame, op: &'static dyn Operator, call: &Expr, args: &[ast::Arg], values: Vec<Value>, scope: Option<Scope>) -> Value {
        let specs = op.inputs();
        let mut inputs: Vec<Option<(Value, Span)>> = vec![None; specs.len()];
        let mut attrs = Attrs::new();
        let mut attr_spans: HashMap<&'static str, Span> = HashMap::new();
        let mut failed = false;
        let mut positional = 0;
        for (arg, value) in args.iter().zip(values) {
            failed |= value.is_poison();
            match &arg.keyword {
                None => {
                    if positional >= specs.len() {
                        self.error(Diagnostic::error(arg.value.span, format!("`{}` takes {} tensor input{}; attributes are given by name", op.name(), specs.len(), if specs.len() == 1 { "" } else { "s" })).with_label("extra argument").with_hint(attr_list(op)));
                        failed = true;
                        continue;
                    }
                    inputs[positional] = Some((value, arg.value.span));
                    positional += 1;
                }
                Some(k) => {
                    if let Some(slot) = specs.iter().position(|s| s.name == k.name) {
                        inputs[slot] = Some((value, arg.value.span));
                    } else if let Some(spec) = op.attrs().iter().find(|a| a.name == k.name) {
                        match attr_value(spec.ty, &value) {
                            Some(v) => {
                                attr_spans.insert(spec.name, arg.value.span);
                                match spec.check(op.name(), &v) {
                                    Ok(()) => {
                                        attrs.insert(spec.name.to_string(), v);
                                    }
                                    Err(e) => {
                                        self.error(op_diagnostic(op, e, &[], &attr_spans, call.span));
                                        failed = true;
                                    }
                                }
                            }
                            None if value.is_poison() => {}
                            None => {
                                self.error(Diagnostic::error(arg.value.span, format!("wrong attribute type: `{}` of `{}` expects {}, found {}", k.name, op.name(), spec.ty, value.kind())).with_label(format!("this is {value}")));
                                failed = true;
                            }
                        }
                    } else {
                        let names = op.attrs().iter().map(|a| a.name).chain(specs.iter().map(|s| s.name));
                        let hint = match closest(&k.name, names) {
                            Some(c) => format!("did you mean `{c}`?"),
                            None => attr_list(op),
                        };
                        self.error(Diagnostic::error(k.span, format!("unknown attribute `{}` for `{}`", k.name, op.name())).with_label("unknown attribute").with_hint(hint));
                        failed = true;
                    }
                }
            }
        }
        for spec in op.attrs() {
            if attrs.contains_key(spec.name) {
                continue;
            }
            match spec.default_value() {
                Some(v) => {
                    attrs.insert(spec.name.to_string(), v);
                }
                // After a misspelt or mistyped attribute, "missing" would only repeat it.
                None if matches!(spec.default, Default::Required) && !failed => {
                    self.error(Diagnostic::error(call.span, format!("missing attribute `{}` for `{}`", spec.name, op.name())).with_label(format!("`{}: {}` is required", spec.name, spec.ty)).with_hint(attr_list(op)));
                    failed = true;
                }
                None => {}
            }
        }
        for (spec, input) in specs.iter().zip(&inputs) {
            if input.is_none() {
                self.error(Diagnostic::error(call.span, format!("missing input `{}` for `{}`", spec.name, op.name())));
                failed = true;
            }
        }
        if failed {
            return Value::Poison;
        }
        let inputs: Vec<(Value, Span)> = inputs.into_iter().map(Option::unwrap).collect();

        // A tensor slot given a list maps the operator over it, sharing the weights
        // (the RPN head runs on every pyramid level).
        let lifted: Vec<usize> = (0..specs.len()).filter(|&s| !specs[s].list && matches!(inputs[s].0, Value::List(_))).collect();
        let count = match lifted.first() {
            None => None,
            Some(&s) => {
                let n = list_len(&inputs[s].0);
                if let Some(&bad) = lifted.iter().find(|&&o| list_len(&inputs[o].0) != n) {
                    return self.fail(Diagnostic::error(inputs[bad].1, format!("lists of different lengths ({n} and {}) given to `{}`", list_len(&inputs[bad].0), op.name())));
                }
                Some(n)
            }
        };
        let shared = frame.shared || matches!(scope, Some(Scope::Path(_, true)));
        let scope_path = scope.map(|s| frame.prefix.iter().cloned().chain(s.segments()).collect::<Vec<_>>());
        let mut results = vec![];
        for element in 0..count.unwrap_or(1) {
            let mut ports: Vec<Vec<Port>> = vec![];
            for (slot, (value, span)) in inputs.iter().enumerate() {
                let value = match (count, value) {
                    (Some(_), Value::List(items)) if !specs[slot].list => items[element].clone(),
                    _ => value.clone(),
                };
                match self.tensors(&value, specs[slot].list) {
                    Some(p) => ports.push(p),
                    None => {
                        let expected = if specs[slot].list { "a list of tensors" } else { "a tensor" };
                        return self.fail(Diagnostic::error(*span, format!("input `{}` of `{}` expects {expected}, found {}", specs[slot].name, op.name(), value.kind())));
                    }
                }
            }
            let spans: Vec<Span> = inputs.iter().map(|(_, s)| *s).collect();
            match self.add_op(op, &attrs, ports, &spans, &attr_spans, call.span, scope_path.as_deref(), shared || element > 0) {
                Some(v) => results.push(v),
                None => return Value::Poison,
            }
        }
        match count {
            Some(_) => Value::List(results),
            None => results.pop().unwrap(),
        }
    }

    fn tensors(&self, value: &Value, list: bool) -> Option<Vec<Port>> {
        match (value, list) {
            (Value::Tensor(p), false) => Some(vec![*p]),
            (Value::List(items), true) => items.iter().map(|i| match i {
                Value::Tensor(p) => Some(*p),
                _ => None,
            }).collect(),
            _ => None,
        }
    }

    /// Runs the shape rule, creates (or shares) the state tensors, adds the node.
    #[allow(clippy::too_many_arguments)]
    fn add_op(&mut self, op: &'static dyn Operator, attrs: &Attrs, ports: Vec<Vec<Port>>, spans: &[Span], attr_spans: &HashMap<&'static str, Span>, call: Span, scope: Option<&[String]>, reuse: bool) -> Option<Value> {
        // Operators own at most a handful of state tensors: one node more is the check that
        // matters against runaway expansion.
        if !self.room_for(1, call) {
            return None;
        }
        let name = scope.map(|s| s.join(".")).unwrap_or_default();
        let state = if reuse { StateUse::Share } else { StateUse::Create };
        let node = match self.graph.add_op(op, attrs.clone(), &ports, &name, Some(call), state) {
            Ok(node) => node,
            Err(e) => {
                let d = match e {
                    AddOpError::Shape(e) => op_diagnostic(op, e, spans, attr_spans, call),
                    AddOpError::Unnamed => Diagnostic::error(call, format!("`{}` owns parameters and needs a name", op.name())).with_label("unnamed").with_hint("bind it with `let name = ...` or name it with `@name`"),
                    AddOpError::DefinedTwice { name, first } => with_note(Diagnostic::error(call, format!("parameter `{name}` defined twice")).with_label("second definition"), first, "first defined here").with_hint("give one of them another name with `@name`"),
                    AddOpError::NotDefined { name } => Diagnostic::error(call, format!("`shared` parameter `{name}` is not defined before")).with_hint("the first call at this path creates the parameters; mark only later calls `shared`"),
                    AddOpError::SharedMismatch { name, here, there, first } => with_note(Diagnostic::error(call, format!("shared parameter `{name}` is {here} here but {there} where it was defined")), first, "defined here"),
                };
                self.error(d);
                return None;
            }
        };
        let outputs = self.graph.nodes[node].outputs.len();
        let mut values: Vec<Value> = (0..outputs).map(|output| Value::Tensor(Port { node, output })).collect();
        Some(if outputs == 1 { values.pop().unwrap() } else { Value::Tuple(values) })
    }

    // ---- blocks -----------------------------------------------------------------------

    fn instantiate(&mut self, caller: &Frame, block: &'a ast::BlockDef, call: &Expr, args: &[ast::Arg], values: Vec<Value>, scope: Option<Scope>) -> Value {
        let name = &block.name.name;
        if !self.repeat(call.span) {
            return Value::Poison;
        }
        if self.stack.contains(name) {
            return self.fail(Diagnostic::error(call.span, format!("recursive block `{name}`")).with_label("calls itself through this call").with_note(block.name.span, "block defined here").with_hint(format!("blocks are expanded at compile time; use a `for` loop instead (chain: {} -> {name})", self.stack.join(" -> "))));
        }
        let mut bound: Vec<Option<(Value, Span)>> = vec![None; block.params.len()];
        let mut positional = 0;
        let mut failed = false;
        for (arg, value) in args.iter().zip(values) {
            let slot = match &arg.keyword {
                None => {
                    positional += 1;
                    if positional > block.params.len() {
                        self.error(Diagnostic::error(arg.value.span, format!("wrong number of block arguments: `{name}` takes {} argument{}, found {}", block.params.len(), if block.params.len() == 1 { "" } else { "s" }, args.len())).with_label("extra argument").with_note(block.name.span, "block defined here"));
                        failed = true;
                        continue;
                    }
                    positional - 1
                }
                Some(k) => match block.params.iter().position(|p| p.name.name == k.name) {
                    Some(s) => s,
                    None => {
                        let hint = closest(&k.name, block.params.iter().map(|p| p.name.name.as_str())).map_or(String::new(), |c| format!("did you mean `{c}`?"));
                        self.error(Diagnostic::error(k.span, format!("block `{name}` has no parameter `{}`", k.name)).with_note(block.name.span, "block defined here").with_hint(hint));
                        failed = true;
                        continue;
                    }
                },
            };
            bound[slot] = Some((value, arg.value.span));
        }
        let shared = caller.shared || matches!(scope, Some(Scope::Path(_, true)));
        let mut frame = Frame { scopes: vec![HashMap::new()], prefix: caller.prefix.clone(), shared };
        if let Some(s) = &scope {
            frame.prefix.extend(s.segments());
        }
        // Scalars first: tensor types may mention them (`x: f32[N, in_channels, H, W]`).
        let mut order: Vec<usize> = (0..block.params.len()).collect();
        order.sort_by_key(|&i| matches!(block.params[i].ty, ast::Type::Tensor { .. } | ast::Type::List { .. }));
        for i in order {
            let param = &block.params[i];
            let (value, span) = match bound[i].take() {
                Some(b) => b,
                None => match &param.default {
                    Some(d) => {
                        let v = self.expr_in(&mut frame, d, None);
                        (v, d.span)
                    }
                    None => {
                        self.error(Diagnostic::error(call.span, format!("wrong number of block arguments: `{name}` is missing `{}`", param.name.name)).with_label(format!("missing `{}`", param.name.name)).with_note(param.name.span, "parameter declared here"));
                        failed = true;
                        continue;
                    }
                },
            };
            let value = self.check_type(&mut frame, &param.ty, &value, span, &format!("argument `{}` of `{name}`", param.name.name));
            if value.is_poison() {
                self.poison_dim_names(&mut frame, &param.ty);
            }
            frame.define(&param.name, value);
        }
        if failed {
            return Value::Poison;
        }
        self.stack.push(name.clone());
        let result = self.run_body(&mut frame, &block.body);
        self.stack.pop();
        let Some(result) = result else {
            // A block without `return` only contributes parameters (a body with side effects).
            return Value::Tuple(vec![]);
        };
        match &block.returns {
            Some(r) if r.tuple => {
                if let Value::Tuple(items) = &result {
                    if items.len() == r.items.len() {
                        let checked = r.items.iter().zip(items).map(|((_, ty), v)| self.check_type(&mut frame, ty, v, call.span, &format!("result of `{name}`"))).collect();
                        return Value::Tuple(checked);
                    }
                }
                if result.is_poison() {
                    return result;
                }
                self.fail(Diagnostic::error(call.span, format!("block `{name}` declares {} results but returned {}", r.items.len(), result.kind())))
            }
            Some(r) => self.check_type(&mut frame, &r.items[0].1, &result, call.span, &format!("result of `{name}`")),
            None => result,
        }
    }

    /// Checks `value` against a declared type, binding the type's free dimension names.
    fn check_type(&mut self, frame: &mut Frame, ty: &ast::Type, value: &Value, span: Span, what: &str) -> Value {
        if value.is_poison() {
            return Value::Poison;
        }
        let ok = match (ty, value) {
            (ast::Type::Scalar { ty, .. }, v) => {
                return match (ty, v) {
                    (ast::ScalarType::Int, Value::Int(_) | Value::Dim(_))
                    | (ast::ScalarType::Bool, Value::Bool(_))
                    | (ast::ScalarType::Str, Value::Str(_))
                    | (ast::ScalarType::Float, Value::Float(_)) => v.clone(),
                    (ast::ScalarType::Float, Value::Int(i)) => Value::Float(*i as f64),
                    _ => self.fail(Diagnostic::error(span, format!("type mismatch: {what} is {}, found {}", type_name(ty), v.kind())).with_label(format!("this is {v}"))),
                };
            }
            (ast::Type::List { elem, .. }, Value::List(items)) => {
                let items: Vec<Value> = items.iter().map(|i| self.check_type(frame, elem, i, span, what)).collect();
                return Value::List(items);
            }
            (ast::Type::Tensor { dtype, dims, span: ty_span }, Value::Tensor(port)) => {
                let actual = self.graph.ty(*port).clone();
                let dtype_ok = DType::parse(dtype) == Some(actual.dtype);
                let rank_ok = dims.len() == actual.rank();
                if !(dtype_ok && rank_ok) {
                    let problem = if dtype_ok { "rank mismatch" } else { "type mismatch" };
                    let expected = self.type_text(frame, ty);
                    return self.fail(Diagnostic::error(span, format!("{problem}: {what} expects {expected}, found {actual}")).with_label(format!("this is {actual}")).with_note(*ty_span, "expected because of this type"));
                }
                for (dim, actual_dim) in dims.iter().zip(&actual.dims) {
                    let DimExpr::Expr(e) = dim else { continue };
                    if let Some(name) = self.dim_name(frame, e) {
                        frame.define(&name, Value::from_dim(actual_dim.clone()));
                        continue;
                    }
                    let expected = self.expr_in(frame, e, None);
                    match expected.as_dim() {
                        Some(d) if d == *actual_dim => {}
                        Some(_) => {
                            let kind = if actual.rank() >= 2 && std::ptr::eq(dim, &dims[1]) { "channel mismatch" } else { "shape mismatch" };
                            let expected_ty = self.type_text(frame, ty);
                            return self.fail(Diagnostic::error(span, format!("{kind}: {what} expects {expected_ty}, found {actual}")).with_label(format!("this is {actual}")).with_note(e.span, format!("expected {expected} here")));
                        }
                        None if expected.is_poison() => return Value::Poison,
                        None => return self.fail(Diagnostic::error(e.span, format!("a dimension is an int, found {}", expected.kind()))),
                    }
                }
                true
            }
            (ast::Type::List { .. } | ast::Type::Tensor { .. }, _) => false,
        };
        if ok {
            value.clone()
        } else {
            let expected = match ty {
                ast::Type::List { .. } => "a list",
                _ => "a tensor",
            };
            self.fail(Diagnostic::error(span, format!("type mismatch: {what} expects {expected}, found {}", value.kind())).with_note(ty.span(), "declared here"))
        }
    }

    /// A dimension of a declared type that names the size it is checked against (`C` of
    /// `f32[N, C, H, W]`): a name not yet defined.
    fn dim_name(&self, frame: &Frame, e: &Expr) -> Option<ast::Ident> {
        match &e.kind {
            ExprKind::Name(n) if frame.lookup(n).is_none() && !self.program.blocks.contains_key(n) => {
                Some(ast::Ident { name: n.clone(), span: e.span })
            }
            _ => None,
        }
    }

    /// Defines the dimension names of a type whose value failed as poison, which silences the
    /// errors their absence would cause.
    fn poison_dim_names(&self, frame: &mut Frame, ty: &ast::Type) {
        match ty {
            ast::Type::Tensor { dims, .. } => {
                let named = dims.iter().filter_map(|d| match d {
                    DimExpr::Expr(e) => self.dim_name(frame, e),
                    DimExpr::Any(_) => None,
                });
                for name in named.collect::<Vec<_>>() {
                    frame.define(&name, Value::Poison);
                }
            }
            ast::Type::List { elem, .. } => self.poison_dim_names(frame, elem),
            ast::Type::Scalar { .. } => {}
        }
    }

    /// A declared type with its dimensions evaluated where they can be.
    fn type_text(&mut self, frame: &mut Frame, ty: &ast::Type) -> String {
        match ty {
            ast::Type::Tensor { dtype, dims, .. } => {
                let dims: Vec<String> = dims.iter().map(|d| match d {
                    DimExpr::Any(_) => "_".to_string(),
                    DimExpr::Expr(e) => match &e.kind {
                        ExprKind::Name(n) if frame.lookup(n).is_none() => n.clone(),
                        _ => {
                            let mut ignored = vec![];
                            let v = Evaluator::new(self.program, self.config, &mut ignored).expr_in(frame, e, None);
                            if v.is_poison() { crate::syntax::print::expr(e) } else { v.to_string() }
                        }
                    },
                }).collect();
                format!("{dtype}[{}]", dims.join(", "))
            }
            _ => String::new(),
        }
    }

    /// A network parameter becomes a graph input; its dimension names become symbols.
    fn network_input(&mut self, param: &ast::Param) -> Value {
        let ast::Type::Tensor { dtype, dims, span } = &param.ty else {
            return self.fail(Diagnostic::error(param.ty.span(), "network inputs are tensors").with_hint("write e.g. `image: u8[H, W, 3]`"));
        };
        let Some(dtype) = DType::parse(dtype) else { return Value::Poison };
        let mut out = vec![];
        for d in dims {
            match d {
                DimExpr::Expr(Expr { kind: ExprKind::Int(v), .. }) => out.push(Dim::known(*v)),
                DimExpr::Expr(Expr { kind: ExprKind::Name(n), .. }) => out.push(Dim::symbol(n)),
                DimExpr::Expr(e) => return self.fail(Diagnostic::error(e.span, "a network input dimension is a number or a name")),
                DimExpr::Any(s) => return self.fail(Diagnostic::error(*s, "a network input dimension is a number or a name").with_hint("name it, e.g. `H`")),
            }
        }
        let node = self.graph.add_input(&param.name.name, TensorType::new(dtype, out), Some(*span));
        Value::Tensor(Port { node, output: 0 })
    }
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

fn list_len(v: &Value) -> usize {
    match v {
        Value::List(items) => items.len(),
        _ => 0,
    }
}

fn type_name(ty: &ast::ScalarType) -> &'static str {
    match ty {
        ast::ScalarType::Int => "an int",
        ast::ScalarType::Float => "a float",
        ast::ScalarType::Bool => "a bool",
        ast::ScalarType::Str => "a str",
    }
}

/// A shape rule's or an attribute check's objection, at the input, attribute or call it names.
fn op_diagnostic(
    op: &dyn Operator,
    e: OpError,
    input_spans: &[Span],
    attr_spans: &HashMap<&'static str, Span>,
    call: Span,
) -> Diagnostic {
    let (span, label) = match e.site {
        Site::Input(slot) => (input_spans[slot], format!("input `{}`", op.inputs()[slot].name)),
        Site::Attr(name) => (attr_spans.get(name).copied().unwrap_or(call), format!("attribute `{name}`")),
        Site::Call => (call, "in this call".to_string()),
    };
    let d = Diagnostic::error(span, e.message).with_label(label);
    match e.hint {
        Some(h) => d.with_hint(h),
        None => d,
    }
}

fn attr_list(op: &dyn Operator) -> String {
    let attrs: Vec<String> = op.attrs().iter().map(|a| format!("{}: {}", a.name, a.ty)).collect();
    let inputs: Vec<&str> = op.inputs().iter().map(|i| i.name).collect();
    format!("`{}` takes inputs ({}) and attributes: {}", op.name(), inputs.join(", "), attrs.join(", "))
}

/// Converts a value to an attribute of type `ty`: a single int where ints are expected is a
/// one-element list (`kernel: 3`), ints are floats where floats are expected.
fn attr_value(ty: AttrType, v: &Value) -> Option<AttrValue> {
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let float = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    Some(match (ty, v) {
        (AttrType::Int, v) => AttrValue::Int(int(v)?),
        (AttrType::Float, v) => AttrValue::Float(float(v)?),
        (AttrType::Bool, Value::Bool(b)) => AttrValue::Bool(*b),
        (AttrType::Str, Value::Str(s)) => AttrValue::Str(s.clone()),
        (AttrType::Ints, Value::List(items)) => AttrValue::Ints(items.iter().map(int).collect::<Option<_>>()?),
        (AttrType::Ints, v) => AttrValue::Ints(vec![int(v)?]),
        (AttrType::Floats, Value::List(items)) => AttrValue::Floats(items.iter().map(float).collect::<Option<_>>()?),
        (AttrType::IntLists, Value::List(items)) => AttrValue::IntLists(
            items
                .iter()
                .map(|i| match i {
                    Value::List(inner) => inner.iter().map(int).collect::<Option<Vec<_>>>(),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// `d` with a note at `span`, where there is one.
fn with_note(d: Diagnostic, span: Option<Span>, note: &str) -> Diagnostic {
    match span {
        Some(span) => d.with_note(span, note),
        None => d,
    }
}
