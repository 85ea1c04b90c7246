//! Text and Graphviz renderings of a graph (`mrc graph`).

use super::{Graph, NodeKind, StateKind};
use petgraph::visit::{EdgeRef, IntoEdgeReferences, IntoNodeReferences};
use std::fmt::Write;

/// One line per node in topological order: `%7 = conv2d[kernel=[3], ...](%6, %5) : f32[...]  # scope`.
pub fn to_text(graph: &Graph) -> String {
    let mut out = String::new();
    for node in graph.topological_order() {
        let n = &graph.nodes[node];
        let types: Vec<String> = n.outputs.iter().map(ToString::to_string).collect();
        let types = types.join(", ");
        let _ = match &n.kind {
            NodeKind::Input => writeln!(out, "%{} = input {} : {types}", node.index(), n.name),
            NodeKind::State(kind) => {
                let kind = if *kind == StateKind::Parameter { "param" } else { "buffer" };
                writeln!(out, "%{} = {kind} {} : {types}", node.index(), n.name)
            }
            NodeKind::Derived(transform) => {
                let sources: Vec<String> = graph.inputs_of(node).iter().map(|p| format!("%{}", p.node.index())).collect();
                writeln!(out, "%{} = derived {} = {transform:?}({}) : {types}", node.index(), n.name, sources.join(", "))
            }
            NodeKind::Op { op, attrs } => {
                let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let inputs: Vec<String> = graph
                    .inputs_of(node)
                    .iter()
                    .map(|p| if p.output == 0 { format!("%{}", p.node.index()) } else { format!("%{}#{}", p.node.index(), p.output) })
                    .collect();
                let scope = if n.name.is_empty() { String::new() } else { format!("  # {}", n.name) };
                writeln!(out, "%{} = {}[{}]({}) : {types}{scope}", node.index(), op.name(), attrs.join(", "), inputs.join(", "))
            }
        };
    }
    for (name, port) in &graph.outputs {
        let _ = writeln!(out, "output {name} = %{}#{} : {}", port.node.index(), port.output, graph.ty(*port));
    }
    out
}

/// Graphviz: operators as boxes, inputs as ellipses; state tensors are folded into their
/// operator's label so that the picture shows dataflow, not hundreds of weight nodes.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::from("digraph model {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n");
    for (i, n) in graph.nodes.node_references() {
        let label = match &n.kind {
            NodeKind::State(_) | NodeKind::Derived(_) => continue,
            NodeKind::Input => format!("{}\\n{}", n.name, n.outputs[0]),
            NodeKind::Op { op, .. } => {
                let types: Vec<String> = n.outputs.iter().map(ToString::to_string).collect();
                format!("{}\\n{}\\n{}", op.name(), n.name, types.join(", "))
            }
        };
        let shape = if matches!(n.kind, NodeKind::Input) { "ellipse" } else { "box" };
        let _ = writeln!(out, "  n{} [shape={shape}, label=\"{}\"];", i.index(), label.replace('"', "'"));
    }
    for e in (&graph.nodes).edge_references() {
        if !graph.is_weight(e.source()) {
            let _ = writeln!(out, "  n{} -> n{};", e.source().index(), e.target().index());
        }
    }
    for (k, (name, port)) in graph.outputs.iter().enumerate() {
        let _ = writeln!(out, "  out{k} [shape=ellipse, label=\"{name}\\n{}\"];", graph.ty(*port));
        let _ = writeln!(out, "  n{} -> out{k};", port.node.index());
    }
    out.push_str("}\n");
    out
}
