//! Adding operator nodes: the one place where a node's shape rule runs, its state tensors are
//! created (or shared) and its inputs are connected. The expander, the passes and the coming
//! autodiff all add nodes through [`Graph::add_op`]; only the expander has source spans to give.

use super::{Attrs, Graph, Node, NodeKind, Port, StateKind};
use crate::diagnostic::Span;
use crate::graph::types::TensorType;
use crate::ops::{OpError, Operator};
use petgraph::stable_graph::NodeIndex;

/// Whether an operator's state tensors are created or taken from earlier calls at the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateUse {
    /// New tensors; the names must be free.
    Create,
    /// Tensors an earlier call created at the same names, of the same types (`@path shared`, the
    /// elements of a list-mapped call after the first).
    Share,
}

/// Why a node could not be added.
#[derive(Debug)]
pub enum AddOpError {
    /// The shape rule rejected the inputs or attributes.
    Shape(OpError),
    /// The operator owns state tensors but the node has no name to put them under.
    Unnamed,
    /// A state tensor of this name exists already.
    DefinedTwice { name: String, first: Option<Span> },
    /// [`StateUse::Share`] of a tensor nobody created.
    NotDefined { name: String },
    /// [`StateUse::Share`] of a tensor of another type.
    SharedMismatch { name: String, here: TensorType, there: TensorType, first: Option<Span> },
}

impl Graph {
    /// Adds a network input.
    pub fn add_input(&mut self, name: &str, ty: TensorType, span: Option<Span>) -> NodeIndex {
        let index = self.nodes.add_node(Node { kind: NodeKind::Input, name: name.to_owned(), outputs: vec![ty], span });
        self.inputs.push(index);
        index
    }

    /// Adds a state tensor (`state_dict` entry) named `name`, which must be free.
    pub fn add_state(
        &mut self,
        name: &str,
        kind: StateKind,
        ty: TensorType,
        span: Option<Span>,
    ) -> Result<NodeIndex, AddOpError> {
        if let Some(existing) = self.state_named(name) {
            return Err(AddOpError::DefinedTwice { name: name.to_owned(), first: self.nodes[existing].span });
        }
        let index =
            self.nodes.add_node(Node { kind: NodeKind::State(kind), name: name.to_owned(), outputs: vec![ty], span });
        self.state.push(index);
        self.state_index.insert(name.to_owned(), index);
        Ok(index)
    }

    /// The state tensor named `name`.
    pub fn state_named(&self, name: &str) -> Option<NodeIndex> {
        self.state_index.get(name).copied()
    }

    /// Adds a node of `op` reading `inputs` (one list of ports per input slot): runs the shape
    /// rule, creates or shares the state tensors it declares under `name` (`name.weight`), and
    /// connects the inputs then the state in slot order. `name` is the node's scope path, empty
    /// for an unnamed node.
    pub fn add_op(
        &mut self,
        op: &'static dyn Operator,
        attrs: Attrs,
        inputs: &[Vec<Port>],
        name: &str,
        span: Option<Span>,
        state: StateUse,
    ) -> Result<NodeIndex, AddOpError> {
        let mut attrs = attrs;
        with_defaults(op, &mut attrs);
        let types: Vec<Vec<TensorType>> =
            inputs.iter().map(|slot| slot.iter().map(|&p| self.ty(p).clone()).collect()).collect();
        let inference = op.infer(&types, &attrs).and_then(|i| i.check_state().map(|()| i)).map_err(AddOpError::Shape)?;
        let inference = inference.in_float_type(&types);
        if !inference.state.is_empty() && name.is_empty() {
            return Err(AddOpError::Unnamed);
        }
        // Checked before anything is added, so that a failed call leaves the graph as it was.
        if state == StateUse::Create {
            if let Some(taken) =
                inference.state.iter().find_map(|decl| self.state_named(&format!("{name}.{}", decl.name)))
            {
                let node = &self.nodes[taken];
                return Err(AddOpError::DefinedTwice { name: node.name.clone(), first: node.span });
            }
        }
        let mut state_nodes = vec![];
        for decl in &inference.state {
            let full = format!("{name}.{}", decl.name);
            let node = match (self.state_named(&full), state) {
                (Some(node), StateUse::Share) => {
                    let there = &self.nodes[node].outputs[0];
                    if *there != decl.ty() {
                        let first = self.nodes[node].span;
                        return Err(AddOpError::SharedMismatch {
                            name: full,
                            here: decl.ty(),
                            there: there.clone(),
                            first,
                        });
                    }
                    node
                }
                (None, StateUse::Share) => return Err(AddOpError::NotDefined { name: full }),
                (_, StateUse::Create) => self.add_state(&full, decl.kind, decl.ty(), span)?,
            };
            state_nodes.push(node);
        }
        let kind = NodeKind::Op { op, attrs };
        let node = self.nodes.add_node(Node { kind, name: name.to_owned(), outputs: inference.outputs, span });
        let ports =
            inputs.iter().flatten().copied().chain(state_nodes.into_iter().map(|s| Port { node: s, output: 0 }));
        for (slot, port) in ports.enumerate() {
            self.connect(port, node, slot);
        }
        Ok(node)
    }

    /// Turns the operator node `node` into one of `op` with `attrs`, reading `inputs` (one list
    /// of ports per slot) and the weights it reads now (its last inputs, as many as `op`'s
    /// shape rule declares): a pass rewriting an operator in place. The shape rule must accept
    /// the inputs and weights and give the node's present output types.
    pub fn replace_op(&mut self, node: NodeIndex, op: &'static dyn Operator, mut attrs: Attrs, inputs: &[Vec<Port>]) -> Result<(), AddOpError> {
        with_defaults(op, &mut attrs);
        let types: Vec<Vec<TensorType>> = inputs.iter().map(|slot| slot.iter().map(|&p| self.ty(p).clone()).collect()).collect();
        let inference = op.infer(&types, &attrs).map_err(AddOpError::Shape)?.in_float_type(&types);
        let present = self.inputs_of(node);
        let weights = &present[present.len().saturating_sub(inference.state.len())..];
        let fits = weights.len() == inference.state.len()
            && weights.iter().zip(&inference.state).all(|(&w, decl)| self.is_weight(w.node) && *self.ty(w) == decl.ty())
            && inference.outputs == self.nodes[node].outputs;
        if !fits {
            let message = format!("`{}` does not fit in place of `{}`", op.name(), self.nodes[node].name);
            return Err(AddOpError::Shape(crate::ops::OpError { site: crate::ops::Site::Call, message, hint: None }));
        }
        let weights = weights.to_vec();
        let edges: Vec<_> = self.nodes.edges_directed(node, petgraph::Direction::Incoming).map(|e| petgraph::visit::EdgeRef::id(&e)).collect();
        for edge in edges {
            self.nodes.remove_edge(edge);
        }
        for (slot, port) in inputs.iter().flatten().copied().chain(weights).enumerate() {
            self.connect(port, node, slot);
        }
        self.nodes[node].kind = NodeKind::Op { op, attrs };
        Ok(())
    }
}

/// Completes `attrs` with `op`'s defaults, as the expander does for model files, so that a pass
/// names only the attributes it sets.
fn with_defaults(op: &dyn Operator, attrs: &mut Attrs) {
    for spec in op.attrs() {
        if let Some(value) = spec.default_value() {
            attrs.entry(spec.name.to_owned()).or_insert(value);
        }
    }
}
