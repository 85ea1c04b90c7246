//! Text → [`ast::File`] with pest; syntax errors become diagnostics.

use super::ast::*;
use crate::diagnostic::{Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/model.pest"]
struct ModelParser;

pub fn parse(file: FileId, text: &str) -> Result<File, Diagnostic> {
    let mut pairs = ModelParser::parse(Rule::file, text).map_err(|e| syntax_error(file, text, e))?;
    let top = pairs.next().expect("the file rule always yields one pair");
    let cx = Cx { file };
    let mut doc = vec![];
    let mut items = vec![];
    for pair in top.into_inner() {
        match pair.as_rule() {
            Rule::header => {
                doc = pair.into_inner().map(|l| l.into_inner().as_str().trim().to_string()).collect()
            }
            Rule::import => {
                let span = cx.span(&pair);
                let path = pair.into_inner().next().unwrap().into_inner().as_str().to_string();
                items.push(Item::Import { path, span });
            }
            Rule::config => items.push(Item::Config(cx.section(pair))),
            Rule::train => items.push(Item::Train(cx.section(pair))),
            Rule::block => items.push(Item::Block(cx.block(pair, false))),
            Rule::network => items.push(Item::Block(cx.block(pair, true))),
            Rule::EOI => {}
            r => unreachable!("file item {r:?}"),
        }
    }
    Ok(File { doc, items })
}

fn syntax_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span(s) => s,
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| describe(*r)).collect();
            names.sort();
            names.dedup();
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => vec![],
    };
    let found = text[start..].chars().next().map_or("end of file".to_string(), |c| format!("`{c}`"));
    let message = if expected.is_empty() {
        format!("syntax error: unexpected {found}")
    } else {
        format!("syntax error: expected {}, found {found}", join_or(&expected))
    };
    let diag = Diagnostic::error(Span::new(file, start, end), message).with_label("unexpected here");
    match expected.as_slice() {
        ["`)`", ..] | ["`,`", ..] => diag.with_hint("arguments are separated by `,` and closed by `)`"),
        _ => diag,
    }
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// What a user should read for a grammar rule in "expected ..." messages.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::expr | Rule::unary | Rule::postfixed => "an expression",
        Rule::ident => "a name",
        Rule::ty | Rule::tensor_ty | Rule::list_ty | Rule::scalar_ty | Rule::dtype => "a type",
        Rule::int => "an integer",
        Rule::string => "a string",
        Rule::import | Rule::config | Rule::train | Rule::block | Rule::network => {
            "an item (`import`, `config`, `train`, `block`, `network`)"
        }
        Rule::let_stmt | Rule::assign_stmt | Rule::for_stmt | Rule::if_stmt | Rule::return_stmt => {
            "a statement"
        }
        Rule::setting => "a setting `name = value`",
        Rule::param | Rule::params => "a parameter `name: type`",
        Rule::arg | Rule::args => "an argument",
        Rule::dim => "a dimension",
        Rule::segment | Rule::path => "a path segment",
        Rule::EOI => "end of file",
        Rule::pattern => "a name or `(names)`",
        Rule::body => "`{`",
        Rule::returns => "`->`",
        Rule::range | Rule::or | Rule::and | Rule::eq | Rule::ne | Rule::le | Rule::ge | Rule::lt
        | Rule::gt | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem => "an operator",
        Rule::index | Rule::field | Rule::scope => "`[`, `.` or `@`",
        _ => return None,
    })
}

struct Cx {
    file: FileId,
}

impl Cx {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        debug_assert!(matches!(pair.as_rule(), Rule::ident | Rule::arg_name));
        Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    fn section(&self, pair: Pair<Rule>) -> Section {
        let span = self.span(&pair);
        let settings = pair
            .into_inner()
            .map(|s| {
                let mut it = s.into_inner();
                Setting { name: self.ident(it.next().unwrap()), value: self.expr(it.next().unwrap()) }
            })
            .collect();
        Section { span, settings }
    }

    fn block(&self, pair: Pair<Rule>, is_network: bool) -> BlockDef {
        let mut it = pair.into_inner().peekable();
        let training = it.next_if(|p| p.as_rule() == Rule::training).is_some();
        let name = self.ident(it.next().unwrap());
        let mut params = vec![];
        let mut returns = None;
        let mut body = vec![];
        for p in it {
            match p.as_rule() {
                Rule::params => params = p.into_inner().map(|p| self.param(p)).collect(),
                Rule::returns => returns = Some(self.returns(p)),
                Rule::body => body = self.body(p),
                r => unreachable!("block part {r:?}"),
            }
        }
        BlockDef { is_network, training, name, params, returns, body }
    }

    fn param(&self, pair: Pair<Rule>) -> Param {
        let mut it = pair.into_inner();
        let name = self.ident(it.next().unwrap());
        let ty = self.ty(it.next().unwrap());
        let default = it.next().map(|e| self.expr(e));
        Param { name, ty, default }
    }

    fn returns(&self, pair: Pair<Rule>) -> Returns {
        let inner = pair.into_inner().next().unwrap();
        match inner.as_rule() {
            Rule::ret_tuple => Returns {
                tuple: true,
                items: inner
                    .into_inner()
                    .map(|item| {
                        let mut parts: Vec<Pair<Rule>> = item.into_inner().collect();
                        let ty = self.ty(parts.pop().unwrap());
                        (parts.pop().map(|n| self.ident(n)), ty)
                    })
                    .collect(),
            },
            _ => Returns { tuple: false, items: vec![(None, self.ty(inner))] },
        }
    }

    fn ty(&self, pair: Pair<Rule>) -> Type {
        let span = self.span(&pair);
        let inner = pair.into_inner().next().unwrap();
        match inner.as_rule() {
            Rule::tensor_ty => {
                let mut it = inner.into_inner();
                let dtype = it.next().unwrap().as_str().to_string();
                let dims = it
                    .map(|d| {
                        let d = d.into_inner().next().unwrap();
                        match d.as_rule() {
                            Rule::wildcard => DimExpr::Any(self.span(&d)),
                            _ => DimExpr::Expr(self.expr(d)),
                        }
                    })
                    .collect();
                Type::Tensor { dtype, dims, span }
            }
            Rule::list_ty => Type::List { elem: Box::new(self.ty(inner.into_inner().next().unwrap())), span },
            Rule::scalar_ty => {
                let ty = match inner.as_str() {
                    "int" => ScalarType::Int,
                    "float" => ScalarType::Float,
                    "bool" => ScalarType::Bool,
                    _ => ScalarType::Str,
                };
                Type::Scalar { ty, span }
            }
            r => unreachable!("type {r:?}"),
        }
    }

    fn body(&self, pair: Pair<Rule>) -> Vec<Stmt> {
        pair.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, pair: Pair<Rule>) -> Stmt {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut it = pair.into_inner();
        match rule {
            Rule::let_stmt => {
                let pattern = it.next().unwrap();
                let tuple = pattern.as_str().starts_with('(');
                let names = pattern.into_inner().map(|n| self.ident(n)).collect();
                Stmt::Let { names, tuple, value: self.expr(it.next().unwrap()), span }
            }
            Rule::assign_stmt => {
                Stmt::Assign { name: self.ident(it.next().unwrap()), value: self.expr(it.next().unwrap()), span }
            }
            Rule::for_stmt => Stmt::For {
                var: self.ident(it.next().unwrap()),
                iter: self.expr(it.next().unwrap()),
                body: self.body(it.next().unwrap()),
                span,
            },
            Rule::if_stmt => {
                let cond = self.expr(it.next().unwrap());
                let then = self.body(it.next().unwrap());
                let otherwise = it.next().map(|e| match e.as_rule() {
                    Rule::if_stmt => vec![self.stmt(e)],
                    _ => self.body(e),
                });
                Stmt::If { cond, then, otherwise, span }
            }
            Rule::return_stmt => Stmt::Return { value: self.expr(it.next().unwrap()), span },
            r => unreachable!("statement {r:?}"),
        }
    }

    /// Precedence climbing over the flat `unary (infix unary)*` sequence of the grammar.
    fn expr(&self, pair: Pair<Rule>) -> Expr {
        let mut operands = vec![];
        let mut ops = vec![];
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::unary => operands.push(self.unary(p)),
                rule => ops.push(binop(rule)),
            }
        }
        let mut operands = operands.into_iter();
        let first = operands.next().unwrap();
        let mut rest = ops.into_iter().zip(operands).peekable();
        climb(first, &mut rest, 0)
    }

    fn unary(&self, pair: Pair<Rule>) -> Expr {
        let mut prefixes = vec![];
        let mut operand = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::neg => prefixes.push((UnOp::Neg, self.span(&p))),
                Rule::not => prefixes.push((UnOp::Not, self.span(&p))),
                _ => operand = Some(self.postfixed(p)),
            }
        }
        let mut e = operand.unwrap();
        for (op, span) in prefixes.into_iter().rev() {
            e = Expr { span: span.to(e.span), kind: ExprKind::Unary { op, operand: Box::new(e) } };
        }
        e
    }

    fn postfixed(&self, pair: Pair<Rule>) -> Expr {
        let mut it = pair.into_inner();
        let mut e = self.primary(it.next().unwrap());
        for post in it {
            let span = e.span.to(self.span(&post));
            let rule = post.as_rule();
            let mut parts = post.into_inner();
            let inner = parts.next().unwrap();
            let kind = match rule {
                Rule::index => ExprKind::Index { base: Box::new(e), index: Box::new(self.expr(inner)) },
                Rule::field => ExprKind::Field { base: Box::new(e), field: self.ident(inner) },
                Rule::scope => {
                    ExprKind::Scoped { expr: Box::new(e), path: self.path(inner), shared: parts.next().is_some() }
                }
                r => unreachable!("postfix {r:?}"),
            };
            e = Expr { kind, span };
        }
        e
    }

    fn path(&self, pair: Pair<Rule>) -> Vec<Segment> {
        pair.into_inner()
            .map(|seg| Segment {
                pieces: seg
                    .into_inner()
                    .map(|piece| match piece.as_rule() {
                        Rule::interpolation => Piece::Interpolated(self.expr(piece.into_inner().next().unwrap())),
                        _ => Piece::Text(piece.as_str().to_string()),
                    })
                    .collect(),
            })
            .collect()
    }

    fn primary(&self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::int => ExprKind::Int(parse_int(pair.as_str())),
            Rule::float => ExprKind::Float(pair.as_str().parse().expect("grammar admits only valid floats")),
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::string => ExprKind::Str(pair.into_inner().as_str().to_string()),
            Rule::ident => ExprKind::Name(pair.as_str().to_string()),
            Rule::list => ExprKind::List(pair.into_inner().map(|e| self.expr(e)).collect()),
            Rule::paren => {
                let is_tuple = pair.as_str().trim_end_matches(')').trim_end().ends_with(',');
                let mut items: Vec<Expr> = pair.into_inner().map(|e| self.expr(e)).collect();
                if items.len() == 1 && !is_tuple {
                    let mut inner = items.pop().unwrap();
                    inner.span = span;
                    return inner;
                }
                ExprKind::Tuple(items)
            }
            Rule::call => {
                let mut it = pair.into_inner();
                let callee = self.ident(it.next().unwrap());
                let args = it
                    .next()
                    .map(|args| {
                        args.into_inner()
                            .map(|arg| {
                                let mut parts: Vec<Pair<Rule>> = arg.into_inner().collect();
                                let value = self.expr(parts.pop().unwrap());
                                Arg { keyword: parts.pop().map(|k| self.ident(k)), value }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ExprKind::Call { callee, args }
            }
            r => unreachable!("primary {r:?}"),
        };
        Expr { kind, span }
    }
}

fn parse_int(text: &str) -> i64 {
    // The grammar admits digits and `_` separators; values beyond i64 saturate (and are
    // then reported as out of range by whoever uses them).
    text.replace('_', "").parse().unwrap_or(i64::MAX)
}

fn binop(rule: Rule) -> BinOp {
    match rule {
        Rule::range => BinOp::Range,
        Rule::or => BinOp::Or,
        Rule::and => BinOp::And,
        Rule::eq => BinOp::Eq,
        Rule::ne => BinOp::Ne,
        Rule::le => BinOp::Le,
        Rule::ge => BinOp::Ge,
        Rule::lt => BinOp::Lt,
        Rule::gt => BinOp::Gt,
        Rule::add => BinOp::Add,
        Rule::sub => BinOp::Sub,
        Rule::mul => BinOp::Mul,
        Rule::div => BinOp::Div,
        Rule::rem => BinOp::Rem,
        r => unreachable!("infix {r:?}"),
    }
}

fn climb(
    mut lhs: Expr,
    rest: &mut std::iter::Peekable<impl Iterator<Item = (BinOp, Expr)>>,
    min_prec: u8,
) -> Expr {
    while let Some(&(op, _)) = rest.peek() {
        if op.precedence() < min_prec {
            break;
        }
        let (op, mut rhs) = rest.next().unwrap();
        while let Some(&(next, _)) = rest.peek() {
            if next.precedence() <= op.precedence() {
                break;
            }
            rhs = climb(rhs, rest, next.precedence());
        }
        let span = lhs.span.to(rhs.span);
        lhs = Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span };
    }
    lhs
}
