//! Packs convolution weights for a GEMM that reads its left operand column-major (the CPU
//! target's runtime kernels): the kernel [O, C, kh, kw], or what a pass derived from it (a
//! folded batch norm), becomes the matrix [C·kh·kw, O] once, when the weights load, instead of
//! being packed by the kernel on every call; a 3×3 stride-1 kernel becomes Winograd's
//! transformed filters [36, C, O] instead (`winograd`). The convolution becomes a
//! `conv2d_fused` with `packed`. A target-specific pass: a target whose products are `linalg`
//! gains nothing.

use super::Pass;
use crate::graph::types::{Dim, TensorType};
use crate::graph::{Graph, NodeKind, Port};
use crate::ops::{self, AttrValue, AttrsExt};
use mrc_runtime::transforms::WeightTransform;
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;

pub struct PackGemmWeights;

impl Pass for PackGemmWeights {
    fn name(&self) -> &'static str {
        "pack-gemm-weights"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let convolutions: Vec<NodeIndex> = graph
            .op_nodes()
            .filter(|(node, op)| {
                let NodeKind::Op { attrs, .. } = &graph.nodes[*node].kind else { return false };
                let packed = attrs.get("packed") == Some(&AttrValue::Bool(true));
                matches!(op.name(), "conv2d" | "conv2d_fused") && attrs.int("groups") == 1 && !packed
            })
            .map(|(node, _)| node)
            .collect();
        let mut changed = false;
        for node in convolutions {
            changed |= pack(graph, node);
        }
        changed
    }
}

/// Reads the weight of the convolution `node` packed at load time.
fn pack(graph: &mut Graph, node: NodeIndex) -> bool {
    let NodeKind::Op { attrs, .. } = &graph.nodes[node].kind else { return false };
    let mut attrs = attrs.clone();
    let inputs = graph.inputs_of(node);
    let slot = inputs.len() - 1 - attrs.flag("bias") as usize;
    let weight = inputs[slot].node;
    let (of, sources) = match &graph.nodes[weight].kind {
        NodeKind::State(_) => (None, vec![weight]),
        NodeKind::Derived(of) => (Some(Box::new(of.clone())), graph.inputs_of(weight).iter().map(|p| p.node).collect()),
        _ => return false,
    };
    // Weights have static shapes.
    let kernel: Vec<i64> = graph.nodes[weight].outputs[0].dims.iter().map(|d| d.value().unwrap_or(0)).collect();
    let winograd = ops::winograd_fits(&attrs);
    let (transform, packed_type) = if winograd {
        (WeightTransform::WinogradFilters { of }, TensorType::f32(vec![Dim::known(36), Dim::known(kernel[1]), Dim::known(kernel[0])]))
    } else {
        (WeightTransform::GemmColumns { of }, TensorType::f32(vec![Dim::known(kernel[1..].iter().product()), Dim::known(kernel[0])]))
    };
    let name = format!("{}.packed", graph.nodes[weight].name);
    let packed = graph.add_derived(&name, transform, &sources, packed_type);

    graph.set_input(node, slot, Port { node: packed, output: 0 });
    attrs.insert("packed".into(), AttrValue::Bool(true));
    attrs.insert("winograd".into(), AttrValue::Bool(winograd));
    attrs.entry("relu".into()).or_insert(AttrValue::Bool(false));
    let tensor_inputs = vec![vec![inputs[0]], inputs[1..slot].to_vec()];
    graph.replace_op(node, &ops::FusedConv2d, attrs, &tensor_inputs).expect("a packed weight fits its convolution");
    // A derived weight now read by no one (the folded kernel) goes.
    if matches!(graph.nodes[weight].kind, NodeKind::Derived(_))
        && graph.nodes.edges_directed(weight, Direction::Outgoing).next().is_none()
    {
        graph.nodes.remove_node(weight);
    }
    true
}
