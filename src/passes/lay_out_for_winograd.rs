//! Lays out once what Winograd's products read channels-last: the CPU target's choice of
//! layout where it pays. Winograd's F(4×4, 3×3) reads its input as [N, Hp, Wp, C] with the
//! zeros around it (a tile's point is then one vector of channels), and each of its runtime
//! calls used to lay its own input out. In a training step a layer's input was laid out twice
//! (for the convolution and for its weight gradient), and so was its output gradient (for the
//! input gradient and the weight gradient): 5.6% of the mini model's step. This pass makes the
//! layout a graph node, `channels_last`, one per tensor and padding, which every convolution
//! that Winograd computes reads (`laid_out`); the rest of the graph stays NCHW, as the GEMM
//! products, im2col and the built-ins read it. A target-specific pass: the CUDA target has no
//! Winograd products.

use std::collections::HashMap;

use super::Pass;
use crate::graph::types::DType;
use crate::graph::{Attrs, Graph, NodeKind, Port, StateUse};
use crate::ops::{self, AttrValue, AttrsExt};
use petgraph::stable_graph::NodeIndex;

pub struct LayOutForWinograd;

impl Pass for LayOutForWinograd {
    fn name(&self) -> &'static str {
        "lay-out-for-winograd"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let order = graph.topological_order();
        let mut layouts = Layouts::default();
        let mut changed = false;
        for node in order {
            let NodeKind::Op { op, attrs } = &graph.nodes[node].kind else { continue };
            const CONVOLUTIONS: [&str; 4] =
                ["conv2d", "conv2d_fused", "conv2d_backward_input", "conv2d_backward_weight"];
            if !CONVOLUTIONS.contains(&op.name()) {
                continue;
            }
            let flag = |name: &str| attrs.get(name) == Some(&AttrValue::Bool(true));
            let winograd = ops::winograd_fits(attrs) && !flag("laid_out") && !(flag("packed") && !flag("winograd"));
            let f32_input = graph.inputs_of(node).first().is_some_and(|&x| graph.ty(x).dtype == DType::F32);
            if !winograd || !f32_input {
                continue;
            }
            let (name, mut attrs) = (op.name(), attrs.clone());
            attrs.insert("laid_out".into(), AttrValue::Bool(true));
            changed |= match name {
                "conv2d" | "conv2d_fused" => lay_out_convolution(graph, node, attrs, &mut layouts),
                "conv2d_backward_input" => lay_out_input_gradient(graph, node, attrs, &mut layouts),
                "conv2d_backward_weight" => lay_out_weight_gradient(graph, node, attrs, &mut layouts),
                _ => false,
            };
        }
        changed
    }
}

/// The `channels_last` nodes made so far, by tensor and padding.
#[derive(Default)]
struct Layouts(HashMap<(Port, [i64; 4]), Port>);

impl Layouts {
    /// `of` laid out with `padding`, made in the scope of `reader` if it is not yet.
    fn of(&mut self, graph: &mut Graph, of: Port, padding: [i64; 4], reader: NodeIndex) -> Port {
        *self.0.entry((of, padding)).or_insert_with(|| {
            let attrs: Attrs = [("padding".to_string(), AttrValue::Ints(padding.to_vec()))].into_iter().collect();
            let name = graph.nodes[reader].name.clone();
            let node = graph
                .add_op(&ops::ChannelsLast, attrs, &[vec![of]], &name, None, StateUse::Create)
                .expect("a 4-d tensor can be laid out");
            Port { node, output: 0 }
        })
    }
}

/// A convolution (`conv2d` becomes a `conv2d_fused` with nothing fused) reads its input laid out.
fn lay_out_convolution(graph: &mut Graph, node: NodeIndex, mut attrs: Attrs, layouts: &mut Layouts) -> bool {
    let inputs = graph.inputs_of(node);
    let weights = 1 + attrs.flag("bias") as usize;
    let (x, residual) = (inputs[0], inputs[1..inputs.len() - weights].to_vec());
    for (flag, value) in [("relu", false), ("packed", false), ("winograd", false)] {
        attrs.entry(flag.into()).or_insert(AttrValue::Bool(value));
    }
    let laid_out = layouts.of(graph, x, ops::layout_paddings(&attrs).0, node);
    graph
        .replace_op(node, &ops::FusedConv2d, attrs, &[vec![x], residual, vec![laid_out]])
        .expect("a layout fits its convolution");
    true
}

/// An input gradient at stride 1 reads the output gradient laid out with its convolution's zeros.
fn lay_out_input_gradient(graph: &mut Graph, node: NodeIndex, attrs: Attrs, layouts: &mut Layouts) -> bool {
    let Some(zeros) = ops::layout_paddings(&attrs).1 else { return false };
    let [grad, weight, like] = graph.inputs_of(node)[..] else { return false };
    let laid_out = layouts.of(graph, grad, zeros, node);
    graph
        .replace_op(node, &ops::Conv2dBackwardInput, attrs, &[vec![grad], vec![weight], vec![like], vec![laid_out]])
        .expect("a layout fits its input gradient");
    true
}

/// A weight gradient reads the layouts of the forward's input and of the input gradient's
/// output gradient, where Winograd's transforms pay for its output size (all but mostly
/// partial tiles, such as the mask head's 14×14; sizes known only at run time are taken to).
fn lay_out_weight_gradient(graph: &mut Graph, node: NodeIndex, attrs: Attrs, layouts: &mut Layouts) -> bool {
    let (padding, Some(zeros)) = ops::layout_paddings(&attrs) else { return false };
    let [x, grad] = graph.inputs_of(node)[..] else { return false };
    let dims = &graph.ty(grad).dims;
    let known = |axis: usize| dims[axis].value().map(|size| size as usize);
    if let (Some(ho), Some(wo)) = (known(2), known(3)) {
        // Enough images to pay where their number is known only at run time.
        if !mrc_runtime::abi::winograd::pays_for_weight_gradient(known(0).unwrap_or(16), [ho, wo]) {
            return false;
        }
    }
    let x_laid_out = layouts.of(graph, x, padding, node);
    let grad_laid_out = layouts.of(graph, grad, zeros, node);
    graph
        .replace_op(node, &ops::Conv2dBackwardWeight, attrs, &[vec![x], vec![grad], vec![x_laid_out, grad_laid_out]])
        .expect("layouts fit their weight gradient");
    true
}
