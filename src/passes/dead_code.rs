//! Removes operators and derived tensors whose results reach no network output.
//!
//! Inputs and state tensors stay: they are the model's interface (a checkpoint must still
//! provide every `state_dict` entry, used or not).

use super::Pass;
use crate::graph::{Graph, NodeKind};
use petgraph::Direction;
use std::collections::HashSet;

pub struct DeadCode;

impl Pass for DeadCode {
    fn name(&self) -> &'static str {
        "dead-code"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut live: HashSet<_> = graph.outputs.iter().map(|(_, p)| p.node).collect();
        let mut stack: Vec<_> = live.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for pred in graph.nodes.neighbors_directed(n, Direction::Incoming) {
                if live.insert(pred) {
                    stack.push(pred);
                }
            }
        }
        let dead: Vec<_> = graph
            .nodes
            .node_indices()
            .filter(|n| !live.contains(n) && matches!(graph.nodes[*n].kind, NodeKind::Op { .. } | NodeKind::Derived(_)))
            .collect();
        for &n in &dead {
            graph.nodes.remove_node(n);
        }
        !dead.is_empty()
    }
}
