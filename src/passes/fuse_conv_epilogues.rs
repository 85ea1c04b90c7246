//! Fuses into a convolution what reads its result alone: a residual `add`, then a `relu`
//! (ResNet's `relu(bn3(conv3(x)) + identity)` once the batch norm is folded, the stem's and
//! every inner `relu(conv(x))`). The convolution becomes a `conv2d_fused`, whose lowering adds
//! the bias and the residual and clamps in the one loop nest that reads the product: the
//! lowering follows the decision instead of hoping MLIR's elementwise fusion finds it.

use super::Pass;
use crate::graph::{Graph, NodeKind, Port};
use crate::ops::{self, AttrValue};
use petgraph::algo::has_path_connecting;
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;

pub struct FuseConvEpilogues;

impl Pass for FuseConvEpilogues {
    fn name(&self) -> &'static str {
        "fuse-conv-epilogues"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let convolutions: Vec<NodeIndex> = graph.op_nodes().filter(|(_, op)| op.name() == "conv2d").map(|(n, _)| n).collect();
        let mut changed = false;
        for conv in convolutions {
            changed |= fuse(graph, conv);
        }
        changed
    }
}

/// The one operator reading `node`'s result, if nothing else (not even a graph output) does.
fn sole_reader(graph: &Graph, node: NodeIndex) -> Option<(NodeIndex, &'static str)> {
    let mut readers = graph.nodes.neighbors_directed(node, Direction::Outgoing);
    let (reader, more) = (readers.next()?, readers.next());
    let edges = graph.nodes.edges_connecting(node, reader).count();
    if more.is_some() || edges != 1 || graph.outputs.iter().any(|(_, p)| p.node == node) {
        return None;
    }
    match &graph.nodes[reader].kind {
        NodeKind::Op { op, .. } => Some((reader, op.name())),
        _ => None,
    }
}

/// Fuses what follows `conv` into it; whether anything was.
fn fuse(graph: &mut Graph, conv: NodeIndex) -> bool {
    let mut last = conv;
    let mut fused = vec![];
    let mut residual = vec![];
    if let Some((add, "add")) = sole_reader(graph, conv) {
        let other = graph.inputs_of(add).into_iter().find(|p| p.node != conv);
        // The residual must be computable before the convolution runs.
        if let Some(other) = other.filter(|p| !has_path_connecting(&graph.nodes, conv, p.node, None)) {
            residual.push(other);
            fused.push(add);
            last = add;
        }
    }
    let relu = matches!(sole_reader(graph, last), Some((_, "relu")));
    if relu {
        let (node, _) = sole_reader(graph, last).expect("just matched");
        fused.push(node);
        last = node;
    }
    if fused.is_empty() {
        return false;
    }
    let NodeKind::Op { attrs, .. } = &graph.nodes[conv].kind else { unreachable!("a convolution") };
    let mut attrs = attrs.clone();
    attrs.insert("relu".into(), AttrValue::Bool(relu));
    let x = graph.inputs_of(conv)[0];
    if graph.replace_op(conv, &ops::FusedConv2d, attrs, &[vec![x], residual]).is_err() {
        return false;
    }
    graph.replace_uses(Port { node: last, output: 0 }, Port { node: conv, output: 0 });
    for node in fused {
        graph.nodes.remove_node(node);
    }
    true
}
