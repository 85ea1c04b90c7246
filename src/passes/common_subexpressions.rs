//! Merges operators that compute the same thing: same operator, same attributes, same inputs.

use super::Pass;
use crate::graph::{Graph, NodeKind, Port};
use std::collections::HashMap;

pub struct CommonSubexpressions;

impl Pass for CommonSubexpressions {
    fn name(&self) -> &'static str {
        "common-subexpressions"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        // In topological order a node's inputs are already merged when it is looked at, so
        // chains of duplicates collapse in one sweep.
        let mut seen: HashMap<String, petgraph::stable_graph::NodeIndex> = HashMap::new();
        let mut changed = false;
        for n in graph.topological_order() {
            let NodeKind::Op { op, attrs } = &graph.nodes[n].kind else { continue };
            let inputs: Vec<String> = graph.inputs_of(n).iter().map(|p| format!("{}#{}", p.node.index(), p.output)).collect();
            let key = format!("{}{:?}({})", op.name(), attrs, inputs.join(","));
            match seen.get(&key) {
                Some(&first) => {
                    for output in 0..graph.nodes[n].outputs.len() {
                        graph.replace_uses(Port { node: n, output }, Port { node: first, output });
                    }
                    graph.nodes.remove_node(n);
                    changed = true;
                }
                None => {
                    seen.insert(key, n);
                }
            }
        }
        changed
    }
}
