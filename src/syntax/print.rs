//! Prints a syntax tree back as model text, binary operations parenthesized so that the
//! structure the parser found is visible (used by `mrc parse` and the AST snapshots).

use super::ast::*;
use std::fmt::Write;

pub fn print_file(file: &File) -> String {
    let mut p = Printer::default();
    for line in &file.doc {
        p.line(&format!("//! {line}"));
    }
    for item in &file.items {
        match item {
            Item::Import { path, .. } => p.line(&format!("import \"{path}\"")),
            Item::Config(s) => p.section("config", s),
            Item::Train(s) => p.section("train", s),
            Item::Block(b) => p.block(b),
        }
    }
    p.out
}

#[derive(Default)]
struct Printer {
    out: String,
    indent: usize,
}

impl Printer {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{:width$}{text}", "", width = self.indent * 4);
    }

    fn section(&mut self, keyword: &str, section: &Section) {
        self.line(&format!("{keyword} {{"));
        self.indent += 1;
        for s in &section.settings {
            self.line(&format!("{} = {}", s.name.name, expr(&s.value)));
        }
        self.indent -= 1;
        self.line("}");
    }

    fn block(&mut self, b: &BlockDef) {
        let params: Vec<String> = b
            .params
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("{}: {} = {}", p.name.name, ty(&p.ty), expr(d)),
                None => format!("{}: {}", p.name.name, ty(&p.ty)),
            })
            .collect();
        let returns = b.returns.as_ref().map_or(String::new(), |r| {
            let items: Vec<String> = r
                .items
                .iter()
                .map(|(n, t)| match n {
                    Some(n) => format!("{}: {}", n.name, ty(t)),
                    None => ty(t),
                })
                .collect();
            if r.tuple {
                format!(" -> ({})", items.join(", "))
            } else {
                format!(" -> {}", items[0])
            }
        });
        let keyword = match (b.is_network, b.training) {
            (true, true) => "training network",
            (true, false) => "network",
            (false, _) => "block",
        };
        self.line(&format!("{keyword} {}({}){returns} {{", b.name.name, params.join(", ")));
        self.body(&b.body);
        self.line("}");
    }

    fn body(&mut self, stmts: &[Stmt]) {
        self.indent += 1;
        for s in stmts {
            self.stmt(s);
        }
        self.indent -= 1;
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let { names, tuple, value, .. } => {
                let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                let pattern = if *tuple { format!("({})", names.join(", ")) } else { names[0].to_string() };
                self.line(&format!("let {pattern} = {}", expr(value)));
            }
            Stmt::Assign { name, value, .. } => self.line(&format!("{} = {}", name.name, expr(value))),
            Stmt::For { var, iter, body, .. } => {
                self.line(&format!("for {} in {} {{", var.name, expr(iter)));
                self.body(body);
                self.line("}");
            }
            Stmt::If { cond, then, otherwise, .. } => {
                self.line(&format!("if {} {{", expr(cond)));
                self.body(then);
                if let Some(otherwise) = otherwise {
                    self.line("} else {");
                    self.body(otherwise);
                }
                self.line("}");
            }
            Stmt::Return { value, .. } => self.line(&format!("return {}", expr(value))),
        }
    }
}

fn ty(t: &Type) -> String {
    match t {
        Type::Tensor { dtype, dims, .. } => {
            let dims: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    DimExpr::Any(_) => "_".to_string(),
                    DimExpr::Expr(e) => expr(e),
                })
                .collect();
            format!("{dtype}[{}]", dims.join(", "))
        }
        Type::List { elem, .. } => format!("[{}]", ty(elem)),
        Type::Scalar { ty, .. } => match ty {
            ScalarType::Int => "int",
            ScalarType::Float => "float",
            ScalarType::Bool => "bool",
            ScalarType::Str => "str",
        }
        .to_string(),
    }
}

pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(v) => v.to_string(),
        ExprKind::Str(s) => format!("\"{s}\""),
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(items) => format!("[{}]", list(items)),
        ExprKind::Tuple(items) if items.len() == 1 => format!("({},)", expr(&items[0])),
        ExprKind::Tuple(items) => format!("({})", list(items)),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.keyword {
                    Some(k) => format!("{}: {}", k.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", callee.name, args.join(", "))
        }
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", expr(lhs), op.symbol(), expr(rhs)),
        ExprKind::Unary { op, operand } => {
            format!("{}{}", if *op == UnOp::Neg { "-" } else { "!" }, expr(operand))
        }
        ExprKind::Index { base, index } => format!("{}[{}]", expr(base), expr(index)),
        ExprKind::Field { base, field } => format!("{}.{}", expr(base), field.name),
        ExprKind::Scoped { expr: inner, path, shared } => {
            let segments: Vec<String> = path
                .iter()
                .map(|s| {
                    s.pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Text(t) => t.clone(),
                            Piece::Interpolated(e) => format!("{{{}}}", expr(e)),
                        })
                        .collect::<String>()
                })
                .collect();
            let shared = if *shared { " shared" } else { "" };
            format!("{} @{}{shared}", expr(inner), segments.join("."))
        }
    }
}

fn list(items: &[Expr]) -> String {
    items.iter().map(expr).collect::<Vec<_>>().join(", ")
}
