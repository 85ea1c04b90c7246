//! The dataflow graph: operator nodes with attributes, tensor edges with inferred types.
//!
//! Invariant: this layer knows nothing of MLIR. Every op node's inputs are its tensor inputs in
//! slot order followed by the state tensors it owns; each edge carries one typed value.

mod build;
mod print;
pub mod types;

pub use build::{AddOpError, StateUse};
pub use print::{to_dot, to_text};

use crate::diagnostic::Span;
use crate::ops::{AttrValue, Operator};
use mrc_runtime::transforms::WeightTransform;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeMap, HashMap};
use types::TensorType;

pub type Attrs = BTreeMap<String, AttrValue>;

/// Trainable parameter or non-trainable buffer (torch's distinction, kept for `state_dict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    Parameter,
    Buffer,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// A network input, by name.
    Input,
    /// A tensor of the model's state (`state_dict` entry), named by its full path.
    State(StateKind),
    Op { op: &'static dyn Operator, attrs: Attrs },
    /// A tensor computed from state tensors (its inputs) when a program loads its weights, not
    /// per image: what a pass folds into an operator's weights.
    Derived(WeightTransform),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    /// Input name, state path, or the scope path of an operator.
    pub name: String,
    pub outputs: Vec<TensorType>,
    /// Where the model file created this node; none for nodes that passes add.
    pub span: Option<Span>,
}

/// A tensor flowing from output `from_output` of one node into input `to_input` of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from_output: usize,
    pub to_input: usize,
}

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    pub node: NodeIndex,
    pub output: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: StableDiGraph<Node, Edge>,
    /// Network inputs, in declaration order.
    pub inputs: Vec<NodeIndex>,
    /// State tensors, in creation order (torchvision's `state_dict` order where the model
    /// file creates them in module order).
    pub state: Vec<NodeIndex>,
    /// Network outputs, by name.
    pub outputs: Vec<(String, Port)>,
    /// `state` by name.
    state_index: HashMap<String, NodeIndex>,
}

impl Graph {
    pub fn connect(&mut self, from: Port, to: NodeIndex, to_input: usize) {
        self.nodes.add_edge(from.node, to, Edge { from_output: from.output, to_input });
    }

    pub fn ty(&self, port: Port) -> &TensorType {
        &self.nodes[port.node].outputs[port.output]
    }

    /// The ports feeding `node`, in input order.
    pub fn inputs_of(&self, node: NodeIndex) -> Vec<Port> {
        let mut edges: Vec<(usize, Port)> = self
            .nodes
            .edges_directed(node, Direction::Incoming)
            .map(|e| (e.weight().to_input, Port { node: e.source(), output: e.weight().from_output }))
            .collect();
        edges.sort_by_key(|(slot, _)| *slot);
        edges.into_iter().map(|(_, p)| p).collect()
    }

    pub fn op_nodes(&self) -> impl Iterator<Item = (NodeIndex, &'static dyn Operator)> + '_ {
        self.nodes.node_indices().filter_map(|i| match &self.nodes[i].kind {
            NodeKind::Op { op, .. } => Some((i, *op)),
            _ => None,
        })
    }

    /// Adds a tensor derived from the state tensors `from` by `transform`.
    pub fn add_derived(&mut self, name: &str, transform: WeightTransform, from: &[NodeIndex], ty: TensorType) -> NodeIndex {
        let node = self.nodes.add_node(Node { kind: NodeKind::Derived(transform), name: name.to_owned(), outputs: vec![ty], span: None });
        for (slot, &source) in from.iter().enumerate() {
            self.connect(Port { node: source, output: 0 }, node, slot);
        }
        node
    }

    /// Whether `node` holds weights: a state tensor or a tensor derived from them.
    pub fn is_weight(&self, node: NodeIndex) -> bool {
        matches!(self.nodes[node].kind, NodeKind::State(_) | NodeKind::Derived(_))
    }

    pub fn state_kind(&self, node: NodeIndex) -> Option<StateKind> {
        match self.nodes[node].kind {
            NodeKind::State(kind) => Some(kind),
            _ => None,
        }
    }

    /// Nodes in a topological order; among ready nodes derived tensors first, then the lowest
    /// index, so that a graph fresh from the expander (which creates nodes after their inputs)
    /// lists in creation order, and an operator whose weights a pass replaced by derived
    /// tensors keeps its place among the operators.
    pub fn topological_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let priority = |n: NodeIndex| Reverse((!matches!(self.nodes[n].kind, NodeKind::Derived(_)), n));
        let mut pending: HashMap<NodeIndex, usize> = self
            .nodes
            .node_indices()
            .map(|n| (n, self.nodes.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<_> = pending.iter().filter(|(_, &c)| c == 0).map(|(&n, _)| priority(n)).collect();
        let mut order = Vec::with_capacity(pending.len());
        while let Some(Reverse((_, n))) = ready.pop() {
            order.push(n);
            for e in self.nodes.edges_directed(n, Direction::Outgoing) {
                let count = pending.get_mut(&e.target()).expect("edges join nodes of the graph");
                *count -= 1;
                if *count == 0 {
                    ready.push(priority(e.target()));
                }
            }
        }
        order
    }

    /// Makes `port` input `slot` of `node`, in place of what fed that slot, if anything.
    pub fn set_input(&mut self, node: NodeIndex, slot: usize, port: Port) {
        let present: Vec<_> =
            self.nodes.edges_directed(node, Direction::Incoming).filter(|e| e.weight().to_input == slot).map(|e| e.id()).collect();
        for edge in present {
            self.nodes.remove_edge(edge);
        }
        self.connect(port, node, slot);
    }

    /// Redirects every use of `from` (edges and graph outputs) to `to`.
    pub fn replace_uses(&mut self, from: Port, to: Port) {
        let uses: Vec<_> = self
            .nodes
            .edges_directed(from.node, Direction::Outgoing)
            .filter(|e| e.weight().from_output == from.output)
            .map(|e| (e.id(), e.target(), e.weight().to_input))
            .collect();
        for (id, target, to_input) in uses {
            self.nodes.remove_edge(id);
            self.connect(to, target, to_input);
        }
        for (_, port) in self.outputs.iter_mut() {
            if *port == from {
                *port = to;
            }
        }
    }

    /// Makes every f32 tensor of the graph a tensor of `dtype`: a graph in double precision for
    /// gradient checks. Shape rules run again on nodes added later see the new types.
    pub fn convert_floats(&mut self, dtype: types::DType) {
        for node in self.nodes.node_weights_mut() {
            for ty in &mut node.outputs {
                if ty.dtype == types::DType::F32 {
                    ty.dtype = dtype;
                }
            }
        }
    }

    /// Elements in the trainable parameters (torch's `sum(p.numel() for p in parameters())`).
    pub fn parameter_count(&self) -> i64 {
        self.state
            .iter()
            .filter(|&&s| self.state_kind(s) == Some(StateKind::Parameter))
            .map(|&s| self.nodes[s].outputs[0].elements().unwrap_or(0))
            .sum()
    }
}
