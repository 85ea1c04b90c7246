//! Folds computations on values known before the first image into tensors derived once, when
//! a program loads its weights: the weights are the program's constants. Today that is the
//! layout a transposed convolution's kernel needs (flipped with its channel axes swapped, or,
//! where the kernel equals the stride, the matrix of its taps), which its lowering otherwise
//! rebuilds for every image: the convolution becomes a `conv_transpose2d_prepared` reading the
//! laid-out kernel.

use super::Pass;
use crate::graph::types::TensorType;
use crate::graph::{Graph, NodeKind, Port};
use crate::ops::{self, AttrsExt, Operator};
use mrc_runtime::transforms::WeightTransform;
use petgraph::stable_graph::NodeIndex;

pub struct FoldConstantWeights;

impl Pass for FoldConstantWeights {
    fn name(&self) -> &'static str {
        "fold-constant-weights"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let transposed: Vec<NodeIndex> =
            graph.op_nodes().filter(|(_, op)| op.name() == "conv_transpose2d").map(|(node, _)| node).collect();
        let mut changed = false;
        for node in transposed {
            changed |= prepare_kernel(graph, node);
        }
        changed
    }
}

/// Reads the kernel of the transposed convolution `node` laid out at load time.
fn prepare_kernel(graph: &mut Graph, node: NodeIndex) -> bool {
    let NodeKind::Op { attrs, .. } = &graph.nodes[node].kind else { return false };
    let attrs = attrs.clone();
    let inputs = graph.inputs_of(node);
    let (x, weight) = (inputs[0], inputs[1].node);
    if graph.state_kind(weight).is_none() {
        return false;
    }
    let transform = if ops::non_overlapping(&attrs) {
        WeightTransform::TransposedKernelTaps
    } else {
        WeightTransform::FlipTransposedKernel { groups: attrs.int("groups") as usize }
    };
    let Ok(inference) = ops::PreparedConvTranspose2d.infer(&[vec![graph.ty(x).clone()]], &attrs) else { return false };
    let laid_out: TensorType = inference.state[0].ty();
    let name = format!("{}.kernel", graph.nodes[weight].name);
    let kernel = graph.add_derived(&name, transform, &[weight], laid_out);
    graph.set_input(node, 1, Port { node: kernel, output: 0 });
    graph.replace_op(node, &ops::PreparedConvTranspose2d, attrs, &[vec![x]]).expect("the prepared kernel fits");
    true
}
