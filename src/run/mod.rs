//! In-process execution of a model (`mrc run`): the graph is cut into segments of dense
//! operators, each lowered to MLIR and JIT-compiled once (sizes stay symbolic, so one compiled
//! segment serves every image), and the built-in detection operators between them run in the
//! runtime. Every value can be dumped by the name of the node that computes it.

mod builtins;
mod jit;
mod tensor;

pub use tensor::HostTensor;

use crate::graph::{Graph, Node, NodeKind, Port};
use crate::lowering::{create_context, emit_forward, lower_to_llvm, LoweringError};
use crate::ops::OpKind;
use jit::CompiledSegment;
use melior::Context;
use mrc_runtime::weights::{Dtype, TensorSpec, Weights};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lowering(#[from] LoweringError),
    #[error(transparent)]
    Weights(#[from] mrc_runtime::weights::WeightsError),
    #[error("`{op}` ({node}): {message}")]
    Builtin { op: &'static str, node: String, message: String },
    #[error("no tensor is named `{0}`; names are node scopes as `mrc graph` shows them")]
    UnknownDump(String),
}

/// A step of the execution plan.
enum Step {
    Dense(CompiledSegment),
    Builtin(NodeIndex),
}

/// A model ready to run: segments compiled, weights checked.
pub struct Executor<'g> {
    graph: &'g Graph,
    weights: Weights,
    steps: Vec<Step>,
    dumps: Vec<(String, Port)>,
    /// Keeps the MLIR context alive as long as the compiled segments.
    _context: Box<Context>,
}

/// The state tensors a checkpoint must hold for `graph`.
pub fn expected_state(graph: &Graph) -> Vec<TensorSpec> {
    graph
        .state
        .iter()
        .map(|&s| {
            let ty = &graph.nodes[s].outputs[0];
            TensorSpec {
                name: graph.nodes[s].name.clone(),
                shape: ty.dims.iter().map(|d| d.value().unwrap_or(0) as usize).collect(),
                dtype: if ty.dtype == crate::graph::types::DType::I64 { Dtype::I64 } else { Dtype::F32 },
            }
        })
        .collect()
}

impl<'g> Executor<'g> {
    /// Plans and compiles `graph`; `dump` names nodes whose first output is kept for
    /// [`Executor::run`]'s caller.
    pub fn new(graph: &'g Graph, weights: Weights, dump: &[String]) -> Result<Self, RunError> {
        weights.validate(&expected_state(graph))?;
        let mut dumps = vec![];
        for name in dump {
            let node = graph
                .nodes
                .node_indices()
                .find(|&n| graph.nodes[n].name == *name && matches!(graph.nodes[n].kind, NodeKind::Op { .. }))
                .ok_or_else(|| RunError::UnknownDump(name.clone()))?;
            dumps.push((name.clone(), Port { node, output: 0 }));
        }
        let context = Box::new(create_context());
        let mut steps = vec![];
        let mut segment: Vec<NodeIndex> = vec![];
        for node in graph.topological_order() {
            let NodeKind::Op { op, .. } = &graph.nodes[node].kind else { continue };
            if op.kind() == OpKind::Dense {
                segment.push(node);
                continue;
            }
            if !segment.is_empty() {
                steps.push(Step::Dense(compile_segment(&context, graph, &std::mem::take(&mut segment), &dumps)?));
            }
            steps.push(Step::Builtin(node));
        }
        if !segment.is_empty() {
            steps.push(Step::Dense(compile_segment(&context, graph, &segment, &dumps)?));
        }
        // The segments' modules lived in `context`; it is kept (boxed, so it does not move) and
        // dropped after the engines, fields dropping in declaration order.
        Ok(Executor { graph, weights, steps, dumps, _context: context })
    }

    /// Runs the network on `inputs` (by input name); returns the network outputs and the dumps,
    /// by name. With `dumps_only`, it stops as soon as the dumps are computed and returns them.
    pub fn run(&self, inputs: Vec<(String, HostTensor)>, dumps_only: bool) -> Result<Vec<(String, HostTensor)>, RunError> {
        let mut values: HashMap<Port, HostTensor> = HashMap::new();
        for (name, tensor) in inputs {
            let node = self.graph.inputs.iter().copied().find(|&n| self.graph.nodes[n].name == name);
            if let Some(node) = node {
                values.insert(Port { node, output: 0 }, tensor);
            }
        }
        for step in &self.steps {
            if dumps_only && self.dumps.iter().all(|(_, p)| values.contains_key(p)) {
                break;
            }
            match step {
                Step::Dense(segment) => {
                    let results = segment.run(&values, &self.weights)?;
                    values.extend(results);
                }
                Step::Builtin(node) => {
                    let inputs: Vec<&HostTensor> = self.graph.inputs_of(*node).iter().map(|p| &values[p]).collect();
                    let outputs = builtins::run(self.graph, *node, &inputs)?;
                    for (output, tensor) in outputs.into_iter().enumerate() {
                        values.insert(Port { node: *node, output }, tensor);
                    }
                }
            }
        }
        let wanted: Vec<&(String, Port)> =
            if dumps_only { self.dumps.iter().collect() } else { self.graph.outputs.iter().chain(&self.dumps).collect() };
        Ok(wanted.into_iter().map(|(name, port)| (name.clone(), values[port].clone())).collect())
    }
}

/// The name a segment gives a value that crosses its boundary.
fn port_name(port: Port) -> String {
    format!("%{}#{}", port.node.index(), port.output)
}

/// Copies `nodes` into a graph of their own: values from outside become inputs named by
/// [`port_name`], state tensors keep their names; the outputs are the values used outside,
/// the network outputs and the dumps among them.
fn compile_segment(
    context: &Context,
    graph: &Graph,
    nodes: &[NodeIndex],
    dumps: &[(String, Port)],
) -> Result<CompiledSegment, RunError> {
    let inside: HashSet<NodeIndex> = nodes.iter().copied().collect();
    let mut sub = Graph::default();
    let mut mapped: HashMap<Port, Port> = HashMap::new();
    let mut boundary: Vec<Port> = vec![];
    for &node in nodes {
        let inputs = graph.inputs_of(node);
        for port in &inputs {
            if mapped.contains_key(port) {
                continue;
            }
            let source = &graph.nodes[port.node];
            let copy = match source.kind {
                NodeKind::State(kind) => Node { kind: NodeKind::State(kind), ..source.clone() },
                _ => {
                    boundary.push(*port);
                    Node { kind: NodeKind::Input, name: port_name(*port), outputs: vec![graph.ty(*port).clone()], span: source.span }
                }
            };
            mapped.insert(*port, Port { node: sub.add_node(copy), output: 0 });
        }
        let copy = sub.add_node(graph.nodes[node].clone());
        for (slot, port) in inputs.iter().enumerate() {
            sub.connect(mapped[port], copy, slot);
        }
        for output in 0..graph.nodes[node].outputs.len() {
            mapped.insert(Port { node, output }, Port { node: copy, output });
        }
    }
    let mut outputs = vec![];
    let mut results = vec![];
    for &node in nodes {
        for output in 0..graph.nodes[node].outputs.len() {
            let port = Port { node, output };
            let used_outside = graph
                .nodes
                .edges_directed(node, Direction::Outgoing)
                .any(|e| e.weight().from_output == output && !inside.contains(&petgraph::visit::EdgeRef::target(&e)));
            let wanted = graph.outputs.iter().chain(dumps).any(|(_, p)| *p == port);
            if used_outside || wanted {
                outputs.push((port_name(port), mapped[&port]));
                results.push(port);
            }
        }
    }
    let (mut module, signature) = emit_forward(context, &sub, &outputs)?;
    lower_to_llvm(context, &mut module)?;
    let boundary: HashMap<String, Port> = boundary.iter().map(|p| (port_name(*p), *p)).collect();
    Ok(CompiledSegment::new(module, signature, boundary, results)?)
}

/// `mrc run`: every image through the network; a line per image, dumps written to `dump_dir`.
pub fn run_images(
    graph: &Graph,
    weights: &std::path::Path,
    images: &[std::path::PathBuf],
    dumps: &[String],
    dump_dir: &std::path::Path,
) -> Result<String, String> {
    let weights = Weights::open(weights).map_err(|e| e.to_string())?;
    let executor = Executor::new(graph, weights, dumps).map_err(|e| e.to_string())?;
    let input = graph.inputs.first().map(|&n| graph.nodes[n].name.clone()).ok_or("the network has no input")?;
    let mut report = String::new();
    for path in images {
        let rgb = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
        let (w, h) = rgb.dimensions();
        let tensor = HostTensor::U8 { shape: vec![h as usize, w as usize, 3], data: rgb.into_raw() };
        let results = executor.run(vec![(input.clone(), tensor)], false).map_err(|e| format!("{}: {e}", path.display()))?;
        let summary: Vec<String> = results
            .iter()
            .take(graph.outputs.len())
            .map(|(name, t)| format!("{name} {:?}", t.shape()))
            .collect();
        report.push_str(&format!("{}: {}\n", path.display(), summary.join(", ")));
        if !dumps.is_empty() {
            let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let file = dump_dir.join(format!("{stem}.safetensors"));
            write_tensors(&file, &results[graph.outputs.len()..]).map_err(|e| format!("{}: {e}", file.display()))?;
            report.push_str(&format!("  wrote {}\n", file.display()));
        }
    }
    Ok(report)
}

fn write_tensors(path: &std::path::Path, tensors: &[(String, HostTensor)]) -> Result<(), mrc_runtime::weights::WeightsError> {
    use mrc_runtime::weights::Tensor;
    let converted = tensors.iter().map(|(name, t)| {
        let tensor = match t {
            HostTensor::F32 { shape, data } => Tensor::from_f32(shape.clone(), data),
            HostTensor::I64 { shape, data } => {
                Tensor::from_le_bytes(Dtype::I64, shape.clone(), &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
            }
            HostTensor::U8 { shape, data } => Tensor::from_le_bytes(Dtype::U8, shape.clone(), data),
        };
        (name.clone(), tensor.expect("host tensors hold as many values as their shape says"))
    });
    Weights::from_tensors(path.display().to_string(), converted)?.write_safetensors(path)
}
