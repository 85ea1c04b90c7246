//! Training (`mrc train`): the model's `training network` put in training mode, differentiated
//! with respect to its trainable parameters, and JIT-compiled for the CPU into one step function
//! (forward, losses, backward, running statistics) that the runtime's trainer
//! (`mrc_runtime::train`) drives. Everything the inference path uses is reused: the graph
//! passes, the emission, the CPU target. [`command`] is `mrc train` itself.

pub mod command;

use mrc_runtime::abi::forward::{call, Argument, HostTensor, Interface, ResultSpec, Source};
use mrc_runtime::data::{Batch, Loader, Prefetch};
use mrc_runtime::train::{Batches, BoxError, ModelState, Step, StepOutput, TensorKind, TensorLayout};

use crate::autodiff::{self, AutodiffError};
use crate::expand::{value::Value, Model};
use crate::graph::{Graph, StateKind};
use crate::lowering::{emit_forward, interface, LoweringError};
use crate::run::JitForward;
use crate::passes;
use crate::targets::{cpu::Cpu, Emitted, Target};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}: the model has no `training network`")]
    NoTrainingNetwork(String),
    #[error("the `train` section's `losses` names `{0}`, which the training network does not return")]
    UnknownLoss(String),
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    #[error(transparent)]
    Lowering(#[from] LoweringError),
    #[error("{0}")]
    Step(String),
}

/// The training network in training mode with its gradients: the graph a step computes.
pub struct TrainingGraph {
    pub graph: Graph,
    /// The outputs summed into the loss, in the `train` section's order.
    pub losses: Vec<String>,
    /// For each differentiated parameter (state order), its name and its gradient's output.
    pub gradients: Vec<(String, String)>,
    /// For each buffer the step updates (batch norms' running statistics), its name and the
    /// output holding its new value.
    pub updates: Vec<(String, String)>,
}

impl TrainingGraph {
    /// The training network of `model`, differentiated with respect to every parameter whose
    /// name does not start with one of `frozen`.
    pub fn new(model: &Model, frozen: &[String]) -> Result<TrainingGraph, TrainError> {
        let (_, graph) = model.training.clone().ok_or_else(|| TrainError::NoTrainingNetwork(model.path.display().to_string()))?;
        let mut graph = graph;
        let outputs: Vec<String> = graph.outputs.iter().map(|(name, _)| name.clone()).collect();
        let losses = match model.train.get("losses").map(|s| &s.value) {
            Some(Value::List(names)) => names.iter().filter_map(|n| if let Value::Str(s) = n { Some(s.clone()) } else { None }).collect(),
            _ => outputs.clone(),
        };
        if let Some(unknown) = losses.iter().find(|l| !outputs.contains(l)) {
            return Err(TrainError::UnknownLoss(unknown.clone()));
        }
        let updated = autodiff::to_training_mode(&mut graph)?;
        let trainable = |graph: &Graph, node: petgraph::stable_graph::NodeIndex| {
            let name = &graph.nodes[node].name;
            graph.state_kind(node) == Some(StateKind::Parameter) && !frozen.iter().any(|prefix| name.starts_with(prefix.as_str()))
        };
        let gradient_outputs = autodiff::differentiate(&mut graph, &losses, trainable)?;
        let strip = |output: &str, prefix: &str| output.strip_prefix(prefix).expect("named by the autodiff").to_owned();
        let gradients = gradient_outputs.iter().map(|o| (strip(o, "grad:"), o.clone())).collect();
        let updates = updated.iter().map(|o| (strip(o, "update:"), o.clone())).collect();
        Ok(TrainingGraph { graph, losses, gradients, updates })
    }

    /// The state the step reads and updates, as the trainer holds it.
    pub fn layout(&self) -> Vec<TensorLayout> {
        self.graph
            .state
            .iter()
            .map(|&s| {
                let node = &self.graph.nodes[s];
                TensorLayout {
                    name: node.name.clone(),
                    shape: node.outputs[0].dims.iter().map(|d| d.value().expect("state tensors have known sizes") as usize).collect(),
                    kind: if self.graph.state_kind(s) == Some(StateKind::Parameter) { TensorKind::Parameter } else { TensorKind::Buffer },
                }
            })
            .collect()
    }
}

/// A training step compiled in process: call it with a batch's tensors and the model's state.
pub struct JitStep {
    code: JitForward,
    losses: Vec<String>,
    gradients: Vec<(String, String)>,
    updates: Vec<(String, String)>,
}

impl JitStep {
    /// Compiles `training` for the CPU at optimization level `level` (LLVM's; the graph passes
    /// that keep weights as they are run from 1 on: a step's weights change every iteration, so
    /// nothing may be derived from them at load time).
    pub fn compile(training: &TrainingGraph, level: u8) -> Result<JitStep, TrainError> {
        let mut graph = training.graph.clone();
        let passes = if level > 0 { passes::run(&mut graph, &passes::training_passes()) } else { vec![] };
        let target = Cpu;
        let code = JitForward::build(&target, level, |context| {
            let (module, signature) = emit_forward(context, &graph, target.products(), target.builtins())?;
            let interface = interface(&graph, &signature);
            Ok(Emitted { module, signature, interface, passes })
        })?;
        Ok(JitStep { code, losses: training.losses.clone(), gradients: training.gradients.clone(), updates: training.updates.clone() })
    }

    /// Runs the step on `inputs` (the training network's inputs, by name) at `state`: returns
    /// the losses and the gradients of the trainable parameters (state order), and writes the
    /// updated buffers into `state`.
    pub fn run(&self, inputs: &[(&str, &HostTensor)], state: &mut ModelState) -> Result<StepOutput, TrainError> {
        let index: std::collections::HashMap<String, usize> = state.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        // Step counters are i64 in the graph and f32 in the trainer's state.
        let counters: Vec<(usize, Vec<i64>)> = self
            .code
            .interface
            .arguments
            .iter()
            .enumerate()
            .filter_map(|(position, source)| match source {
                Source::State(name) if name.ends_with("num_batches_tracked") => {
                    Some((position, state.tensors[index[name]].data.iter().map(|&v| v as i64).collect()))
                }
                _ => None,
            })
            .collect();
        let mut arguments = vec![];
        for (position, source) in self.code.interface.arguments.iter().enumerate() {
            arguments.push(match source {
                Source::Input(name) => {
                    let (_, tensor) = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| TrainError::Step(format!("no input named `{name}`")))?;
                    let bytes: &[u8] = match tensor {
                        HostTensor::F32 { data, .. } => bytemuck::cast_slice(data),
                        HostTensor::I64 { data, .. } => bytemuck::cast_slice(data),
                        HostTensor::U8 { data, .. } => data,
                    };
                    Argument { bytes, shape: tensor.shape() }
                }
                Source::State(name) => {
                    let tensor = index.get(name).map(|&i| &state.tensors[i]).ok_or_else(|| TrainError::Step(format!("no state tensor `{name}`")))?;
                    match counters.iter().find(|(p, _)| *p == position) {
                        Some((_, counter)) => Argument { bytes: bytemuck::cast_slice(counter), shape: &tensor.shape },
                        None => Argument { bytes: bytemuck::cast_slice(&tensor.data), shape: &tensor.shape },
                    }
                }
                Source::Derived { name, .. } => return Err(TrainError::Step(format!("a training step derives no weights, found `{name}`"))),
            });
        }
        let specs: Vec<ResultSpec> = self.code.interface.results.iter().map(|(_, spec)| *spec).collect();
        mrc_runtime::abi::take_error();
        // SAFETY: the function was compiled for this interface, and the arguments follow it.
        let results = unsafe { call(self.code.function, &arguments, &specs) };
        if let Some(error) = mrc_runtime::abi::take_error() {
            return Err(TrainError::Step(error));
        }
        let mut by_name: std::collections::HashMap<&str, HostTensor> =
            self.code.interface.results.iter().map(|(name, _)| name.as_str()).zip(results).collect();
        let mut take = |name: &str| by_name.remove(name).ok_or_else(|| TrainError::Step(format!("the step has no result `{name}`")));
        let mut losses = vec![];
        for name in &self.losses {
            let value = take(name)?;
            losses.push((name.clone(), value.f32().and_then(|v| v.first()).copied().unwrap_or(f32::NAN) as f64));
        }
        for (state_name, output) in &self.updates {
            let value = take(output)?;
            let data: Vec<f32> = match &value {
                HostTensor::F32 { data, .. } => data.clone(),
                HostTensor::I64 { data, .. } => data.iter().map(|&v| v as f32).collect(),
                HostTensor::U8 { data, .. } => data.iter().map(|&v| v as f32).collect(),
            };
            state.tensors[index[state_name]].data = data;
        }
        let mut gradients = vec![];
        for (state_name, output) in &self.gradients {
            let value = take(output)?;
            if state.tensors[index[state_name]].trainable {
                gradients.push(value.f32().map(<[f32]>::to_vec).ok_or_else(|| TrainError::Step(format!("`{output}` is not f32")))?);
            }
        }
        Ok(StepOutput { losses, gradients })
    }

    /// The step's interface: what it takes and returns.
    pub fn interface(&self) -> &Interface {
        &self.code.interface
    }
}


/// The training network's inputs for `batch`, by name (`seed` drives the samplers).
pub fn batch_inputs(batch: &Batch, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let (n, g) = (batch.image_sizes.len(), batch.gt_boxes.len());
    vec![
        ("images", HostTensor::F32 { shape: batch.image_shape.to_vec(), data: batch.images.clone() }),
        ("image_sizes", HostTensor::I64 { shape: vec![n, 2], data: batch.image_sizes.iter().flatten().copied().collect() }),
        ("gt_boxes", HostTensor::F32 { shape: vec![g, 4], data: batch.gt_boxes.iter().flatten().copied().collect() }),
        ("gt_labels", HostTensor::I64 { shape: vec![g], data: batch.gt_labels.clone() }),
        ("gt_image", HostTensor::I64 { shape: vec![g], data: batch.gt_image.clone() }),
        ("gt_masks", HostTensor::U8 { shape: batch.mask_shape.to_vec(), data: batch.gt_masks.clone() }),
        // The seed crosses as a word; its low 63 bits are enough to pick a stream.
        ("seed", HostTensor::I64 { shape: vec![1], data: vec![(seed >> 1) as i64] }),
    ]
}

impl Step for JitStep {
    type Batch = Batch;

    fn run(&mut self, state: &mut ModelState, batch: &Batch, seed: u64) -> Result<StepOutput, BoxError> {
        let inputs = batch_inputs(batch, seed);
        let borrowed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        Ok(JitStep::run(self, &borrowed, state)?)
    }
}

/// The data loader as the trainer takes it: batches decoded on a worker thread ahead of the
/// step, restarted where the trainer asks for another iteration than the next.
pub struct LoaderBatches {
    loader: Loader,
    /// The prefetch and the iteration of the batch it hands out next.
    prefetch: Option<(Prefetch, u64)>,
}

impl LoaderBatches {
    /// How many batches the worker prepares ahead of the step.
    const DEPTH: usize = 2;

    pub fn new(loader: Loader) -> LoaderBatches {
        LoaderBatches { loader, prefetch: None }
    }
}

impl Batches for LoaderBatches {
    type Batch = Batch;

    fn batch(&mut self, iteration: u64) -> Result<Batch, BoxError> {
        if !matches!(&self.prefetch, Some((_, next)) if *next == iteration) {
            self.prefetch = Some((self.loader.prefetch(iteration, 1, Self::DEPTH), iteration));
        }
        let (prefetch, next) = self.prefetch.as_mut().expect("started above");
        *next += 1;
        Ok(prefetch.next_batch()?)
    }

    fn per_epoch(&self) -> u64 {
        self.loader.set().len().div_ceil(self.loader.options().batch_size) as u64
    }
}
