//! Folds a batch norm in eval mode (frozen or not) into the convolution that feeds it: the
//! convolution's weight scaled per output channel and a bias that does the shift, both derived
//! from the checkpoint when a program loads it ([`WeightTransform`]), so the batch norm costs
//! nothing per image. The state tensors stay: checkpoints still hold (and programs still check)
//! every `state_dict` entry.
//!
//! Only a convolution whose result is read by the batch norm alone is folded (its unscaled
//! result is needed nowhere else), and only from state tensors (not from derived ones).

use super::Pass;
use crate::graph::types::TensorType;
use crate::graph::{Graph, NodeKind, Port};
use crate::ops::{AttrValue, AttrsExt};
use mrc_runtime::transforms::WeightTransform;
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;

pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batch-norm"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let candidates: Vec<(NodeIndex, NodeIndex)> =
            graph.topological_order().into_iter().filter_map(|bn| foldable(graph, bn).map(|conv| (conv, bn))).collect();
        for &(conv, bn) in &candidates {
            fold(graph, conv, bn);
        }
        !candidates.is_empty()
    }
}

/// The convolution that `bn` can be folded into, if it is a batch norm fed by one.
fn foldable(graph: &Graph, bn: NodeIndex) -> Option<NodeIndex> {
    let NodeKind::Op { op, .. } = &graph.nodes[bn].kind else { return None };
    if !matches!(op.name(), "frozen_batch_norm" | "batch_norm") {
        return None;
    }
    let inputs = graph.inputs_of(bn);
    let x = inputs[0];
    let NodeKind::Op { op: producer, .. } = &graph.nodes[x.node].kind else { return None };
    let read_once = graph.nodes.edges_directed(x.node, Direction::Outgoing).count() == 1
        && !graph.outputs.iter().any(|(_, port)| port.node == x.node);
    let from_state =
        graph.inputs_of(x.node)[1..].iter().chain(&inputs[1..]).all(|p| graph.state_kind(p.node).is_some());
    (producer.name() == "conv2d" && read_once && from_state).then_some(x.node)
}

/// Replaces the weight (and bias) of `conv` by derived tensors that include `bn`, which goes.
fn fold(graph: &mut Graph, conv: NodeIndex, bn: NodeIndex) {
    let NodeKind::Op { attrs: bn_attrs, .. } = &graph.nodes[bn].kind else { unreachable!("checked by `foldable`") };
    let eps = bn_attrs.float("eps");
    let bn_inputs = graph.inputs_of(bn);
    let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| bn_inputs[i].node);
    let conv_inputs = graph.inputs_of(conv);
    let weight = conv_inputs[1].node;
    let bias = conv_inputs.get(2).map(|p| p.node);

    let name = graph.nodes[conv].name.clone();
    let weight_type = graph.nodes[weight].outputs[0].clone();
    let channels = weight_type.dims[0].clone();
    let folded_weight = graph.add_derived(
        &format!("{name}.weight.folded"),
        WeightTransform::FoldBatchNormWeight { eps },
        &[weight, gamma, var],
        weight_type,
    );
    let bias_sources: Vec<NodeIndex> = bias.into_iter().chain([gamma, beta, mean, var]).collect();
    let folded_bias = graph.add_derived(
        &format!("{name}.bias.folded"),
        WeightTransform::FoldBatchNormBias { eps, conv_bias: bias.is_some() },
        &bias_sources,
        TensorType::f32(vec![channels]),
    );

    graph.set_input(conv, 1, Port { node: folded_weight, output: 0 });
    graph.set_input(conv, 2, Port { node: folded_bias, output: 0 });
    let NodeKind::Op { op, attrs } = &graph.nodes[conv].kind else { unreachable!("checked by `foldable`") };
    let (op, mut attrs) = (*op, attrs.clone());
    attrs.insert("bias".into(), AttrValue::Bool(true));
    graph.replace_op(conv, op, attrs, &[vec![conv_inputs[0]]]).expect("the folded weights fit the convolution");
    graph.replace_uses(Port { node: bn, output: 0 }, Port { node: conv, output: 0 });
    graph.nodes.remove_node(bn);
}
