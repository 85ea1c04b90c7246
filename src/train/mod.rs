//! Training (`mrc train`): the model's `training network` put in training mode, differentiated
//! with respect to its trainable parameters, and JIT-compiled for the CPU into one step function
//! (forward, losses, backward, running statistics) that the runtime's trainer
//! (`mrc_runtime::train`) drives. Everything the inference path uses is reused: the graph
//! passes, the emission, the CPU target. [`command`] is `mrc train` itself.

pub mod command;
pub mod program;

use melior::Context;
use mrc_runtime::abi::forward::HostTensor;
use mrc_runtime::data::Batch;
pub use mrc_runtime::train::LoaderBatches;
use mrc_runtime::train::{BoxError, CompiledStep, ModelState, Step, StepOutput, StepOutputs, TensorKind, TensorLayout};

use crate::autodiff::{self, AutodiffError};
use crate::expand::{value::Value, Model};
use crate::graph::{Graph, StateKind};
use crate::lowering::{emit_forward, interface, LoweringError};
use crate::passes;
use crate::run::JitForward;
use crate::targets::{cpu::Cpu, cuda::emulated_device, Emitted, Target};

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
    /// Which of its outputs are the losses, the gradients and the updated buffers.
    pub outputs: StepOutputs,
}

impl TrainingGraph {
    /// The training network of `model`, differentiated with respect to every parameter whose
    /// name does not start with one of `frozen`.
    pub fn new(model: &Model, frozen: &[String]) -> Result<TrainingGraph, TrainError> {
        let (_, graph) =
            model.training.clone().ok_or_else(|| TrainError::NoTrainingNetwork(model.path.display().to_string()))?;
        let mut graph = graph;
        let outputs: Vec<String> = graph.outputs.iter().map(|(name, _)| name.clone()).collect();
        let losses = match model.train.get("losses").map(|s| &s.value) {
            Some(Value::List(names)) => {
                names.iter().filter_map(|n| if let Value::Str(s) = n { Some(s.clone()) } else { None }).collect()
            }
            _ => outputs.clone(),
        };
        if let Some(unknown) = losses.iter().find(|l| !outputs.contains(l)) {
            return Err(TrainError::UnknownLoss(unknown.clone()));
        }
        let updated = autodiff::to_training_mode(&mut graph)?;
        let trainable = |graph: &Graph, node: petgraph::stable_graph::NodeIndex| {
            let name = &graph.nodes[node].name;
            graph.state_kind(node) == Some(StateKind::Parameter)
                && !frozen.iter().any(|prefix| name.starts_with(prefix.as_str()))
        };
        let gradient_outputs = autodiff::differentiate(&mut graph, &losses, trainable)?;
        let strip = |output: &str, prefix: &str| output.strip_prefix(prefix).expect("named by the autodiff").to_owned();
        let gradients = gradient_outputs.iter().map(|o| (strip(o, "grad:"), o.clone())).collect();
        let updates = updated.iter().map(|o| (strip(o, "update:"), o.clone())).collect();
        Ok(TrainingGraph { graph, outputs: StepOutputs { losses, gradients, updates } })
    }

    /// The step's `@forward` for `target` in `context`, after the target's training passes,
    /// which keep weights as they are (from level 1 on: a step's weights change every
    /// iteration, so nothing may be derived from them at load time).
    pub fn emit<'c>(&self, context: &'c Context, target: &dyn Target, level: u8) -> Result<Emitted<'c>, LoweringError> {
        let mut graph = self.graph.clone();
        let passes = if level > 0 { passes::run(&mut graph, &target.training_passes()) } else { vec![] };
        let (module, signature) = emit_forward(context, &graph, target.products(), target.builtins())?;
        let interface = interface(&graph, &signature);
        Ok(Emitted { module, signature, interface, passes, companions: vec![] })
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
                    shape: node.outputs[0]
                        .dims
                        .iter()
                        .map(|d| d.value().expect("state tensors have known sizes") as usize)
                        .collect(),
                    kind: if self.graph.state_kind(s) == Some(StateKind::Parameter) {
                        TensorKind::Parameter
                    } else {
                        TensorKind::Buffer
                    },
                }
            })
            .collect()
    }
}

/// A training step compiled in process: call it with a batch's tensors and the model's state.
pub struct JitStep {
    step: CompiledStep,
    /// Owns the code `step` calls; dropped after it (fields drop in declaration order). None
    /// when that code lives as long as the process (for the emulated device).
    _code: Option<JitForward>,
}

impl JitStep {
    /// Compiles `training` for the CPU at optimization level `level` (LLVM's; the graph passes
    /// that keep weights as they are run from 1 on: a step's weights change every iteration, so
    /// nothing may be derived from them at load time).
    pub fn compile(training: &TrainingGraph, level: u8) -> Result<JitStep, TrainError> {
        let target = Cpu;
        let code = JitForward::build(&target, level, |context| training.emit(context, &target, level))?;
        // SAFETY: the function was compiled for this interface and lives as long as `code`.
        let step = unsafe { CompiledStep::new(code.function, code.interface.clone(), training.outputs.clone()) };
        Ok(JitStep { step, _code: Some(code) })
    }

    /// [`JitStep::compile`] for the CUDA target, run on the emulated device: every kernel's
    /// CPU form, every allocation, copy and launch as a CUDA program makes them. It selects the
    /// emulator for the whole process (see `Executor::on_emulated_device`).
    pub fn on_emulated_device(training: &TrainingGraph, level: u8) -> Result<JitStep, TrainError> {
        let (device, target) = emulated_device().map_err(|e| TrainError::Step(e.to_string()))?;
        let code = JitForward::build(&target, level, |context| training.emit(context, &target, level))?;
        // SAFETY: the function was compiled for this interface, for a device, and is kept for
        // the process.
        let step = unsafe {
            CompiledStep::new(code.function, code.interface.clone(), training.outputs.clone()).on_device(device)
        };
        code.keep_for_the_process();
        Ok(JitStep { step, _code: None })
    }

    /// [`CompiledStep::run`].
    pub fn run(&self, inputs: &[(&str, &HostTensor)], state: &mut ModelState) -> Result<StepOutput, TrainError> {
        self.step.run(inputs, state).map_err(TrainError::Step)
    }
}

impl Step for JitStep {
    type Batch = Batch;

    fn run(&mut self, state: &mut ModelState, batch: &Batch, seed: u64) -> Result<StepOutput, BoxError> {
        Step::run(&mut self.step, state, batch, seed)
    }
}
