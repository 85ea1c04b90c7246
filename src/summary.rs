//! What `mrc check` and `mrc params` print about an expanded model.

use crate::expand::Model;
use crate::graph::StateKind;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One line per state tensor, `name [d0, d1, ...]`, in creation order.
pub fn params(model: &Model) -> String {
    let mut out = String::new();
    for &s in &model.graph.state {
        let node = &model.graph.nodes[s];
        let dims: Vec<String> = node.outputs[0].dims.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "{} [{}]", node.name, dims.join(", "));
    }
    out
}

/// Thousands separated by commas, as torchvision's docs print parameter counts.
pub fn grouped(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn check(model: &Model) -> String {
    let g = &model.graph;
    let mut out = String::new();
    let _ = writeln!(out, "{}: network `{}` is well-formed", model.path.display(), model.network);
    if let Some(first) = model.doc.first() {
        let _ = writeln!(out, "  {first}");
    }
    let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, op) in g.op_nodes() {
        *by_op.entry(op.name()).or_default() += 1;
    }
    let total: usize = by_op.values().sum();
    let list: Vec<String> = by_op.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "operators: {total} ({})", list.join(", "));
    let params = g.state.iter().filter(|&&s| g.state_kind(s) == Some(StateKind::Parameter)).count();
    let _ = writeln!(out, "state tensors: {} ({params} parameters, {} buffers)", g.state.len(), g.state.len() - params);
    let _ = writeln!(out, "parameters: {}", grouped(g.parameter_count()));
    for &i in &g.inputs {
        let _ = writeln!(out, "input  {}: {}", g.nodes[i].name, g.nodes[i].outputs[0]);
    }
    for (name, port) in &g.outputs {
        let _ = writeln!(out, "output {name}: {}", g.ty(*port));
    }
    if let Some((name, training)) = &model.training {
        let _ = writeln!(out, "training network `{name}`: {} operators", training.op_nodes().count());
        for &i in &training.inputs {
            let _ = writeln!(out, "  input  {}: {}", training.nodes[i].name, training.nodes[i].outputs[0]);
        }
        for (name, port) in &training.outputs {
            let _ = writeln!(out, "  output {name}: {}", training.ty(*port));
        }
    }
    out
}
