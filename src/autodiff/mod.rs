//! Reverse-mode differentiation of a graph: [`differentiate`] adds to a graph the nodes that
//! compute the gradient of the sum of some of its outputs (the losses) with respect to its
//! trainable parameters, and makes those gradients outputs. Each operator's gradient rule
//! ([`crate::ops::Operator::gradient`]) lives beside its shape rule and lowering; this module
//! only walks the graph: which nodes a gradient flows through, in which order, and where
//! several gradients of one tensor add up.
//!
//! The backward nodes are ordinary operator nodes, added through [`Graph::add_op`], so that the
//! graph passes, the lowering and every target treat the backward pass as they treat the
//! forward one.

mod mode;

pub use mode::to_training_mode;

use crate::diagnostic::Span;
use crate::graph::types::{DType, TensorType};
use crate::graph::{AddOpError, Attrs, Graph, NodeKind, Port, StateUse};
use crate::ops::{self, AttrValue, Operator};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why a graph cannot be differentiated.
#[derive(Debug)]
pub enum AutodiffError {
    /// A gradient reaches an operator that has no gradient rule.
    NoRule { op: &'static str, node: String, span: Option<Span> },
    /// A gradient rule could not add its nodes (a shape rule refused them).
    Rule { op: &'static str, node: String, span: Option<Span>, message: String },
    /// A loss is not a float scalar.
    NotScalar { name: String, ty: TensorType },
}

impl fmt::Display for AutodiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutodiffError::NoRule { op, node, .. } => {
                write!(f, "`{op}` has no gradient rule, but a loss depends on a parameter through it (node `{node}`)")
            }
            AutodiffError::Rule { op, node, message, .. } => write!(f, "the gradient rule of `{op}` failed at `{node}`: {message}"),
            AutodiffError::NotScalar { name, ty } => write!(f, "the loss `{name}` is {ty}, not a float scalar"),
        }
    }
}

impl std::error::Error for AutodiffError {}

/// What a gradient rule sees of the node it differentiates, and how it adds nodes.
pub struct GradientContext<'g> {
    graph: &'g mut Graph,
    node: NodeIndex,
    /// The node's inputs: tensor inputs in slot order, then its state tensors.
    pub inputs: Vec<Port>,
    /// The gradient of each output; `None` where no loss depends on it (zero).
    pub output_grads: Vec<Option<Port>>,
    /// Which inputs need a gradient; a rule may skip the others.
    pub wanted: Vec<bool>,
    pub attrs: Attrs,
}

impl GradientContext<'_> {
    /// Output `index` of the node being differentiated (forward values a rule may reuse).
    pub fn output(&self, index: usize) -> Port {
        Port { node: self.node, output: index }
    }

    pub fn ty(&self, port: Port) -> &TensorType {
        self.graph.ty(port)
    }

    /// The gradient of output `index`, or zeros of its type where none flows.
    pub fn output_grad(&mut self, index: usize) -> Result<Port, AddOpError> {
        match self.output_grads[index] {
            Some(grad) => Ok(grad),
            None => self.zeros_like(self.output(index)),
        }
    }

    /// Adds a node of `op` (which must own no state) in the scope of the node being
    /// differentiated, and returns its outputs.
    pub fn add(&mut self, op: &'static dyn Operator, attrs: Attrs, inputs: &[Vec<Port>]) -> Result<Vec<Port>, AddOpError> {
        let name = self.graph.nodes[self.node].name.clone();
        let node = self.graph.add_op(op, attrs, inputs, &name, None, StateUse::Create)?;
        Ok((0..self.graph.nodes[node].outputs.len()).map(|output| Port { node, output }).collect())
    }

    /// [`GradientContext::add`] of a single-output operator on single-tensor slots.
    pub fn add1(&mut self, op: &'static dyn Operator, attrs: Attrs, inputs: &[Port]) -> Result<Port, AddOpError> {
        let slots: Vec<Vec<Port>> = inputs.iter().map(|&p| vec![p]).collect();
        Ok(self.add(op, attrs, &slots)?[0])
    }

    pub fn zeros_like(&mut self, like: Port) -> Result<Port, AddOpError> {
        self.add1(&ops::FillLike, attrs(&[("value", AttrValue::Float(0.0))]), &[like])
    }
}

/// Attributes from name-value pairs.
pub fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
}

/// Adds the gradient of the sum of the outputs named `losses` with respect to every state
/// tensor for which `trainable` holds, as outputs named `grad:<state name>` (zeros for a
/// parameter no loss depends on). Returns those outputs' names in state order.
pub fn differentiate(graph: &mut Graph, losses: &[String], trainable: impl Fn(&Graph, NodeIndex) -> bool) -> Result<Vec<String>, AutodiffError> {
    let parameters: Vec<NodeIndex> = graph.state.iter().copied().filter(|&s| trainable(graph, s)).collect();
    let mut seeds = vec![];
    for name in losses {
        let port = graph.outputs.iter().find(|(n, _)| n == name).map(|(_, p)| *p).expect("losses name outputs");
        let ty = graph.ty(port);
        if ty.rank() != 0 || !is_float(ty) {
            return Err(AutodiffError::NotScalar { name: name.clone(), ty: ty.clone() });
        }
        let one = graph
            .add_op(&ops::FillLike, attrs(&[("value", AttrValue::Float(1.0))]), &[vec![port]], "", None, StateUse::Create)
            .map_err(|e| rule_error(graph, port.node, e))?;
        seeds.push((port, Port { node: one, output: 0 }));
    }
    backward(graph, &seeds, &parameters)
}

/// Reverse mode from `seeds` (each a port and the gradient flowing into it): adds the gradient
/// of every node in `wrt` (inputs or state tensors) as an output named `grad:<node name>`,
/// zeros where none reaches it, and returns those names in order.
pub fn backward(graph: &mut Graph, seeds: &[(Port, Port)], wrt: &[NodeIndex]) -> Result<Vec<String>, AutodiffError> {
    let active = active_nodes(graph, wrt, seeds);
    let mut grads: HashMap<Port, Port> = HashMap::new();
    for &(port, seed) in seeds {
        accumulate(graph, &mut grads, port, seed)?;
    }

    let order = graph.topological_order();
    for &node in order.iter().rev() {
        let NodeKind::Op { op, attrs } = graph.nodes[node].kind.clone() else { continue };
        if !active.contains(&node) {
            continue;
        }
        let output_grads: Vec<Option<Port>> =
            (0..graph.nodes[node].outputs.len()).map(|output| grads.get(&Port { node, output }).copied()).collect();
        if output_grads.iter().all(Option::is_none) {
            continue;
        }
        let inputs = graph.inputs_of(node);
        let wanted: Vec<bool> = inputs.iter().map(|p| active.contains(&p.node) && is_float(graph.ty(*p))).collect();
        if !wanted.iter().any(|&w| w) {
            continue;
        }
        let mut cx = GradientContext { graph, node, inputs: inputs.clone(), output_grads, wanted: wanted.clone(), attrs };
        let input_grads = match op.gradient(&mut cx) {
            Ok(g) => g,
            Err(GradientError::NoRule) => {
                let n = &graph.nodes[node];
                return Err(AutodiffError::NoRule { op: op.name(), node: n.name.clone(), span: n.span });
            }
            Err(GradientError::Add(e)) => return Err(rule_error(graph, node, e)),
        };
        for ((input, grad), wanted) in inputs.iter().zip(input_grads).zip(wanted) {
            if let (Some(grad), true) = (grad, wanted) {
                accumulate(graph, &mut grads, *input, grad)?;
            }
        }
    }

    let mut names = vec![];
    for &node in wrt {
        let port = Port { node, output: 0 };
        let grad = match grads.get(&port) {
            Some(&grad) => grad,
            None => {
                let zeros = graph
                    .add_op(&ops::FillLike, attrs(&[("value", AttrValue::Float(0.0))]), &[vec![port]], "", None, StateUse::Create)
                    .map_err(|e| rule_error(graph, node, e))?;
                Port { node: zeros, output: 0 }
            }
        };
        let name = format!("grad:{}", graph.nodes[node].name);
        graph.outputs.push((name.clone(), grad));
        names.push(name);
    }
    Ok(names)
}

/// What a gradient rule reports instead of gradients.
#[derive(Debug)]
pub enum GradientError {
    /// The operator is not differentiable.
    NoRule,
    /// Adding a backward node failed.
    Add(AddOpError),
}

impl From<AddOpError> for GradientError {
    fn from(e: AddOpError) -> Self {
        GradientError::Add(e)
    }
}

fn is_float(ty: &TensorType) -> bool {
    matches!(ty.dtype, DType::F32 | DType::F64)
}

/// Nodes on a path from a node of `wrt` to a seeded port: the only ones a gradient flows
/// through.
fn active_nodes(graph: &Graph, wrt: &[NodeIndex], seeds: &[(Port, Port)]) -> HashSet<NodeIndex> {
    let reach = |starts: Vec<NodeIndex>, direction: Direction| {
        let mut seen: HashSet<NodeIndex> = starts.iter().copied().collect();
        let mut stack = starts;
        while let Some(n) = stack.pop() {
            for e in graph.nodes.edges_directed(n, direction) {
                let next = if direction == Direction::Outgoing { e.target() } else { e.source() };
                if seen.insert(next) {
                    stack.push(next);
                }
            }
        }
        seen
    };
    let from_parameters = reach(wrt.to_vec(), Direction::Outgoing);
    let to_losses = reach(seeds.iter().map(|(p, _)| p.node).collect(), Direction::Incoming);
    from_parameters.intersection(&to_losses).copied().collect()
}

/// Adds `grad` to the gradient of `port` (an `add` node where one is there already).
fn accumulate(graph: &mut Graph, grads: &mut HashMap<Port, Port>, port: Port, grad: Port) -> Result<(), AutodiffError> {
    let sum = match grads.get(&port) {
        None => grad,
        Some(&present) => {
            let name = graph.nodes[grad.node].name.clone();
            let node = graph
                .add_op(&ops::ADD, Attrs::new(), &[vec![present], vec![grad]], &name, None, StateUse::Create)
                .map_err(|e| rule_error(graph, port.node, e))?;
            Port { node, output: 0 }
        }
    };
    grads.insert(port, sum);
    Ok(())
}

fn rule_error(graph: &Graph, node: NodeIndex, e: AddOpError) -> AutodiffError {
    let n = &graph.nodes[node];
    let op = match &n.kind {
        NodeKind::Op { op, .. } => op.name(),
        _ => "state",
    };
    let message = match e {
        AddOpError::Shape(e) => e.message,
        other => format!("{other:?}"),
    };
    AutodiffError::Rule { op, node: n.name.clone(), span: n.span, message }
}
