//! Training mode, as torch's `model.train()` sets it: every `batch_norm` normalizes by its
//! batch's statistics, and its running statistics are updated by the step. Frozen batch norms
//! (`frozen_batch_norm`) stay as they are.

use super::{attrs, rule_error, AutodiffError};
use crate::graph::{Graph, NodeKind, Port, StateUse};
use crate::ops::{self, AttrValue, AttrsExt};

/// Rewrites each `batch_norm` node into `batch_norm_training` and adds its running statistics
/// after the step as outputs named `update:<state name>` (running mean, running variance, step
/// counter). Returns those names.
pub fn to_training_mode(graph: &mut Graph) -> Result<Vec<String>, AutodiffError> {
    let batch_norms: Vec<_> = graph
        .op_nodes()
        .filter(|(_, op)| op.name() == ops::BatchNormTraining.inference_name())
        .map(|(node, _)| node)
        .collect();
    let mut names = vec![];
    for node in batch_norms {
        let NodeKind::Op { attrs: layer, .. } = graph.nodes[node].kind.clone() else { unreachable!("an operator node") };
        let inputs = graph.inputs_of(node);
        let x = inputs[0];
        let name = graph.nodes[node].name.clone();
        let moments = graph
            .add_op(&ops::BatchMoments, attrs(&[]), &[vec![x]], &name, None, StateUse::Create)
            .map_err(|e| rule_error(graph, node, e))?;
        let [mean, var] = [0, 1].map(|output| Port { node: moments, output });
        graph
            .replace_op(node, &ops::BatchNormTraining, layer.clone(), &[vec![x], vec![mean], vec![var]])
            .map_err(|e| rule_error(graph, node, e))?;
        let momentum = attrs(&[("momentum", AttrValue::Float(layer.float("momentum")))]);
        let slots: Vec<Vec<Port>> = [x, mean, var, inputs[3], inputs[4], inputs[5]].map(|p| vec![p]).to_vec();
        let statistics = graph
            .add_op(&ops::RunningStatistics, momentum, &slots, &name, None, StateUse::Create)
            .map_err(|e| rule_error(graph, node, e))?;
        for (output, state) in [inputs[3], inputs[4], inputs[5]].into_iter().enumerate() {
            let update = format!("update:{}", graph.nodes[state.node].name);
            graph.outputs.push((update.clone(), Port { node: statistics, output }));
            names.push(update);
        }
    }
    Ok(names)
}
