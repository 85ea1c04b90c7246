//! Graph → MLIR: the operators that outputs of a graph depend on become one
//! `func.func @forward` on tensors, each node lowered by its own operator (see
//! [`crate::ops::Operator::lower`]).
//!
//! The function takes the graph inputs (declaration order), the state tensors (creation order,
//! i.e. `state_dict` order) and then the derived tensors that the requested outputs depend on,
//! and returns those
//! outputs; symbolic dimensions are `?`. It carries `llvm.emit_c_interface`, so that compiled
//! code is called through `_mlir_ciface_forward` with memref descriptors, and every argument
//! and result is named by an `mrc.name` attribute.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use melior::{
    dialect::func,
    ir::{
        attribute::{FlatSymbolRefAttribute, StringAttribute, TypeAttribute},
        operation::OperationLike,
        r#type::FunctionType,
        Attribute, Block, BlockLike, Identifier, Location, Module, Operation, Region, RegionLike, Type, Value, ValueLike,
    },
    Context,
};
use petgraph::{algo::toposort, stable_graph::NodeIndex};

use super::{builder::Emitter, builtins::BuiltIns, products::Products, diagnostics::capture_diagnostics, error::LoweringError, runtime_calls::declare_runtime_functions};
use crate::graph::{types::TensorType, Attrs, Graph, NodeKind, Port};

/// The name of the emitted function.
pub const FORWARD: &str = "forward";

/// What an operator's lowering sees of its node.
pub struct LowerNode<'a, 'c, 'b> {
    /// The node's scope path (`backbone.body.conv1`), for messages.
    pub name: &'a str,
    /// Tensor inputs in slot order, then the state tensors the operator owns.
    pub inputs: &'a [Value<'c, 'b>],
    /// Attributes, checked and completed with defaults by the expander.
    pub attrs: &'a Attrs,
    pub outputs: &'a [TensorType],
}

/// A function argument or result.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Input name, state path (`backbone.body.conv1.weight`) or output name.
    pub name: String,
    pub ty: TensorType,
}

/// The arguments and results of `@forward`, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub arguments: Vec<NamedTensor>,
    pub results: Vec<NamedTensor>,
}

/// Emits `@forward` computing the graph's outputs: dense operators as MLIR (products as
/// `products` says), detection built-ins as `builtins` says (calls into the runtime are declared
/// in the module). The module is verified.
pub fn emit_forward<'c>(
    context: &'c Context,
    graph: &Graph,
    products: Products,
    builtins: BuiltIns,
) -> Result<(Module<'c>, Signature), LoweringError> {
    let outputs = &graph.outputs;
    let needed = ancestors(graph, outputs);
    let derived = graph.nodes.node_indices().filter(|&n| matches!(graph.nodes[n].kind, NodeKind::Derived(_)));
    let arguments: Vec<NodeIndex> =
        graph.inputs.iter().chain(&graph.state).copied().chain(derived).filter(|node| needed.contains(node)).collect();
    let signature = Signature {
        arguments: arguments
            .iter()
            .map(|&node| NamedTensor { name: graph.nodes[node].name.clone(), ty: graph.nodes[node].outputs[0].clone() })
            .collect(),
        results: outputs.iter().map(|(name, port)| NamedTensor { name: name.clone(), ty: graph.ty(*port).clone() }).collect(),
    };

    let location = Location::unknown(context);
    let entry = Block::new(&[]);
    let cx = Emitter::new(context, &entry, location).with_products(products).with_builtins(builtins);
    let argument_types: Vec<Type> = signature.arguments.iter().map(|a| cx.tensor_type(&a.ty)).collect();
    let result_types: Vec<Type> = signature.results.iter().map(|r| cx.tensor_type(&r.ty)).collect();

    let mut values: HashMap<Port, Value> = HashMap::new();
    for (&node, &ty) in arguments.iter().zip(&argument_types) {
        values.insert(Port { node, output: 0 }, entry.add_argument(ty, location));
    }
    toposort(&graph.nodes, None).map_err(|cycle| {
        LoweringError::Build(format!("the graph has a cycle through `{}`", graph.nodes[cycle.node_id()].name))
    })?;
    let steps = scoped_steps(graph, &needed);
    let mut consumers: HashMap<Port, Vec<NodeIndex>> = HashMap::new();
    for step in &steps {
        for port in graph.inputs_of(step.node) {
            consumers.entry(port).or_default().push(step.node);
        }
    }
    let functions = Functions { operations: RefCell::default(), by_body: RefCell::default() };
    let run = Run { graph, steps: &steps, consumers: &consumers, outputs, functions: &functions };
    run.emit(&cx, 0, steps.len(), 0, &mut values)?;
    let returned: Vec<Value> = outputs.iter().map(|(_, port)| values[port]).collect();
    entry.append_operation(func::r#return(&returned, location));
    drop(values);
    let declarations = cx.runtime_declarations();
    drop(cx);

    let body = Region::new();
    body.append_block(entry);
    // Arguments are read-only: bufferization copies rather than writes into them, so callers
    // may pass memory-mapped weights.
    let names = |tensors: &[NamedTensor], extra: &str| {
        let dictionaries: Vec<String> =
            tensors.iter().map(|t| format!("{{mrc.name = \"{}\"{extra}}}", t.name.escape_default())).collect();
        format!("[{}]", dictionaries.join(", "))
    };
    let mut attributes = vec![(Identifier::new(context, "llvm.emit_c_interface"), Attribute::unit(context))];
    for (key, text) in [
        ("arg_attrs", names(&signature.arguments, ", bufferization.writable = false")),
        ("res_attrs", names(&signature.results, "")),
    ] {
        let attribute = Attribute::parse(context, &text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")))?;
        attributes.push((Identifier::new(context, key), attribute));
    }
    let module = Module::new(location);
    module.body().append_operation(func::func(
        context,
        StringAttribute::new(context, FORWARD),
        TypeAttribute::new(FunctionType::new(context, &argument_types, &result_types).into()),
        body,
        &attributes,
        location,
    ));
    for function in functions.operations.into_inner() {
        module.body().append_operation(function);
    }
    declare_runtime_functions(context, &module, &declarations)?;

    let (valid, diagnostics) = capture_diagnostics(context, || module.as_operation().verify());
    if !valid {
        return Err(LoweringError::InvalidModule { diagnostics });
    }
    Ok((module, signature))
}

/// An operator node to lower, with its scope: the components of its name but the last
/// (`backbone.body.layer1.0` for `backbone.body.layer1.0.conv1`); an unnamed node (a `relu`)
/// takes the scope of the node before it.
struct Step<'g> {
    node: NodeIndex,
    scope: Vec<&'g str>,
}

/// The operator nodes among `needed` in the graph's creation-respecting topological order, so
/// that the nodes of one block instance are consecutive.
fn scoped_steps<'g>(graph: &'g Graph, needed: &HashSet<NodeIndex>) -> Vec<Step<'g>> {
    let mut steps: Vec<Step<'g>> = vec![];
    for node in graph.topological_order() {
        if !needed.contains(&node) || !matches!(graph.nodes[node].kind, NodeKind::Op { .. }) {
            continue;
        }
        let name = graph.nodes[node].name.as_str();
        let scope = match name.rsplit_once('.') {
            Some((scope, _)) => scope.split('.').collect(),
            None if name.is_empty() => steps.last().map(|s| s.scope.clone()).unwrap_or_default(),
            None => vec![],
        };
        steps.push(Step { node, scope });
    }
    steps
}

/// Lowers runs of [`Step`]s. Consecutive steps that share a scope prefix are emitted into one
/// `scf.execute_region` per level of the scope tree (a bottleneck block inside its ResNet
/// stage inside the backbone), which yields only the values used after it: MLIR's ownership-
/// based deallocation frees a buffer at the end of the block that allocated it, so this is what
/// frees a block's intermediate activations when the block is done rather than when the whole
/// network returns.
struct Run<'a, 'g, 'c> {
    graph: &'g Graph,
    steps: &'a [Step<'g>],
    /// The nodes reading each port.
    consumers: &'a HashMap<Port, Vec<NodeIndex>>,
    outputs: &'a [(String, Port)],
    functions: &'a Functions<'c>,
}

impl<'c> Run<'_, '_, 'c> {
    /// Lowers `steps[start..end]`, all sharing their first `depth` scope components.
    fn emit<'b>(
        &self,
        cx: &Emitter<'c, 'b>,
        start: usize,
        end: usize,
        depth: usize,
        values: &mut HashMap<Port, Value<'c, 'b>>,
    ) -> Result<(), LoweringError> {
        let mut k = start;
        while k < end {
            let Some(key) = self.steps[k].scope.get(..=depth) else {
                self.lower(cx, self.steps[k].node, values)?;
                k += 1;
                continue;
            };
            let mut m = k + 1;
            while m < end && self.steps[m].scope.get(..=depth) == Some(key) {
                m += 1;
            }
            if m - k == 1 {
                self.lower(cx, self.steps[k].node, values)?;
                k += 1;
                continue;
            }
            let escaping = self.escaping(k, m);
            let reads = self.reads(k, m);
            let arguments: Vec<Value> = reads.iter().map(|port| values[port]).collect();
            let argument_types: Vec<Type> = arguments.iter().map(|v| v.r#type()).collect();
            let body = Block::new(&argument_types.iter().map(|&ty| (ty, cx.location)).collect::<Vec<_>>());
            let result_types = {
                let inner = cx.nested(&body);
                let mut inner_values: HashMap<Port, Value<'c, '_>> = HashMap::new();
                for (i, &port) in reads.iter().enumerate() {
                    inner_values.insert(port, inner.arg(i)?);
                }
                self.emit(&inner, k, m, depth + 1, &mut inner_values)?;
                let returned: Vec<Value> = escaping.iter().map(|port| inner_values[port]).collect();
                body.append_operation(func::r#return(&returned, cx.location));
                returned.iter().map(|v| v.r#type()).collect::<Vec<Type>>()
            };
            let symbol = self.functions.define(cx.context, &key.join("_"), body, &argument_types, &result_types)?;
            let call = func::call(cx.context, FlatSymbolRefAttribute::new(cx.context, &symbol), &arguments, &result_types, cx.location);
            let results = cx.append_results(call)?;
            for (port, value) in escaping.into_iter().zip(results) {
                values.insert(port, value);
            }
            k = m;
        }
        Ok(())
    }

    /// The ports that `steps[start..end]` read but do not define, in order of first use: the
    /// arguments of their function.
    fn reads(&self, start: usize, end: usize) -> Vec<Port> {
        let inside: HashSet<NodeIndex> = self.steps[start..end].iter().map(|s| s.node).collect();
        let mut ports: Vec<Port> = vec![];
        for step in &self.steps[start..end] {
            for port in self.graph.inputs_of(step.node) {
                if !inside.contains(&port.node) && !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
        ports
    }

    /// The ports defined by `steps[start..end]` that a later step or a result reads, in order.
    fn escaping(&self, start: usize, end: usize) -> Vec<Port> {
        let inside: HashSet<NodeIndex> = self.steps[start..end].iter().map(|s| s.node).collect();
        let mut ports = vec![];
        for step in &self.steps[start..end] {
            for output in 0..self.graph.nodes[step.node].outputs.len() {
                let port = Port { node: step.node, output };
                let read_after = self.consumers.get(&port).is_some_and(|c| c.iter().any(|n| !inside.contains(n)));
                if read_after || self.outputs.iter().any(|(_, p)| *p == port) {
                    ports.push(port);
                }
            }
        }
        ports
    }

    /// Lowers one operator node, checking that its results have the types its shape rule gave.
    fn lower<'b>(&self, cx: &Emitter<'c, 'b>, node: NodeIndex, values: &mut HashMap<Port, Value<'c, 'b>>) -> Result<(), LoweringError> {
        let NodeKind::Op { op, attrs } = &self.graph.nodes[node].kind else { return Ok(()) };
        let name = &self.graph.nodes[node].name;
        let inputs: Vec<Value> = self.graph.inputs_of(node).iter().map(|port| values[port]).collect();
        let expected = &self.graph.nodes[node].outputs;
        let cx = cx.at(Location::name(cx.context, name, cx.location));
        let results = op.lower(&cx, &LowerNode { name, inputs: &inputs, attrs, outputs: expected })?;
        for (output, (value, ty)) in results.into_iter().zip(expected).enumerate() {
            if value.r#type() != cx.tensor_type(ty) {
                return Err(LoweringError::TypeMismatch {
                    node: name.clone(),
                    produced: value.r#type().to_string(),
                    expected: cx.tensor_type(ty).to_string(),
                });
            }
            values.insert(Port { node, output }, value);
        }
        Ok(())
    }
}

/// The functions that scopes are outlined into, one per distinct body: the repeated blocks of a
/// ResNet stage (their weights are arguments, their sizes symbolic) share one.
struct Functions<'c> {
    operations: RefCell<Vec<Operation<'c>>>,
    /// Each function's text with its name left out, and its name.
    by_body: RefCell<HashMap<String, String>>,
}

impl<'c> Functions<'c> {
    /// The name of a private function with `body`: an existing one with the same body, or a new
    /// one named after `scope`. It is never inlined, so that LLVM optimizes and compiles
    /// many small functions rather than one huge one.
    fn define(&self, context: &'c Context, scope: &str, body: Block<'c>, arguments: &[Type<'c>], results: &[Type<'c>]) -> Result<String, LoweringError> {
        let taken = self.by_body.borrow().len();
        // Symbols become PTX identifiers on the CUDA target, which admit no dots.
        let scope: String = scope.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let name = format!("{FORWARD}__{scope}_{taken}");
        let region = Region::new();
        region.append_block(body);
        let parse = |text: &str| Attribute::parse(context, text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")));
        let function = func::func(
            context,
            StringAttribute::new(context, &name),
            TypeAttribute::new(FunctionType::new(context, arguments, results).into()),
            region,
            &[
                (Identifier::new(context, "sym_visibility"), StringAttribute::new(context, "private").into()),
                (Identifier::new(context, "passthrough"), parse("[\"noinline\"]")?),
            ],
            Location::unknown(context),
        );
        let key = function.to_string().replacen(&format!("@{name}("), "@(", 1);
        if let Some(existing) = self.by_body.borrow().get(&key) {
            return Ok(existing.clone());
        }
        self.by_body.borrow_mut().insert(key, name.clone());
        self.operations.borrow_mut().push(function);
        Ok(name)
    }
}

/// The nodes that `outputs` depend on, themselves included, down to the arguments: the state
/// tensors a derived tensor is computed from are not needed by the function.
fn ancestors(graph: &Graph, outputs: &[(String, Port)]) -> HashSet<NodeIndex> {
    let mut needed = HashSet::new();
    let mut stack: Vec<NodeIndex> = outputs.iter().map(|(_, port)| port.node).collect();
    while let Some(node) = stack.pop() {
        if needed.insert(node) && !matches!(graph.nodes[node].kind, NodeKind::Derived(_)) {
            stack.extend(graph.nodes.neighbors_directed(node, petgraph::Direction::Incoming));
        }
    }
    needed
}
