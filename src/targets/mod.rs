//! Targets: from the graph to something that runs. Everything up to the emitted `@forward` is
//! shared ([`emit`]: the graph passes, the emission, the interface); a [`Target`] decides the
//! rest: how dense products and built-ins are computed, its MLIR pass pipeline, how runtime functions are
//! bound for in-process execution ([`Target::jit`], `mrc run`), and how its output is written
//! ([`Target::write`], `mrc compile` through [`compile`]).
//!
//! [`cpu`] writes native executables; it is the only target so far.

pub mod cpu;
pub mod cuda;
pub(crate) mod native;

use std::path::{Path, PathBuf};

use melior::{ir::Module, Context};
use mrc_runtime::abi::forward::Interface;
use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::train::{EvaluationNetwork, StepOutputs, TensorLayout, TrainConfig};
use mrc_runtime::weights::Weights;

use crate::expand::{value::Value, Model};
use crate::graph::{Graph, Port};
use crate::lowering::{
    create_context, emit_forward, expected_state, interface, BuiltIns, JitEngine, LoweringError, Products, Signature,
};
use crate::passes;

/// What a target decides.
pub trait Target {
    fn name(&self) -> &'static str;
    /// How dense products (convolutions, linear layers) are computed.
    fn products(&self) -> Products;
    /// How the built-in detection operators are computed.
    fn builtins(&self) -> BuiltIns;
    /// The graph passes from `-O1` on: the target-neutral ones, and the target's own after them.
    fn graph_passes(&self) -> Vec<Box<dyn passes::Pass>> {
        passes::default_passes()
    }
    /// The graph passes of a training step for this target, run from `-O1` on: the
    /// target-neutral [`passes::training_passes`] and its own that derive nothing from the
    /// weights.
    fn training_passes(&self) -> Vec<Box<dyn passes::Pass>> {
        passes::training_passes()
    }
    /// Lowers an emitted module in place with the target's pass pipeline, to what its back end
    /// takes (the CPU: the LLVM dialect).
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError>;
    /// Compiles `emitted` for execution in this process, the runtime's functions bound, at
    /// optimization level `level`.
    fn jit<'c>(&self, context: &'c Context, emitted: Emitted<'c>, level: u8) -> Result<JitEngine, LoweringError>;
    /// Writes `program` compiled from `emitted` to `output`, or the stage `emit` asks for.
    fn write<'c>(
        &self,
        context: &'c Context,
        emitted: Emitted<'c>,
        program: Program,
        level: u8,
        emit: Emit,
        output: &Path,
    ) -> Result<String, CompileError>;
}

/// What `mrc compile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The executable.
    Exe,
    /// MLIR on tensors, as emitted from the graph.
    Mlir,
    /// LLVM IR, after the CPU pipeline.
    Llvm,
    /// The object file, before linking.
    Obj,
    /// The PTX of every kernel, one module (CUDA).
    Ptx,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Lowering(#[from] LoweringError),
    #[error(transparent)]
    Weights(#[from] mrc_runtime::weights::WeightsError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("linking failed ({command}):\n{stderr}")]
    Link { command: String, stderr: String },
}

/// What a program carries besides its code.
pub struct Program {
    pub name: String,
    /// Weights to embed, checked against the model: a detector's, or a training program's
    /// initial weights.
    pub weights: Option<Weights>,
    pub kind: ProgramKind,
}

/// What a program's `main` does with its forward function.
pub enum ProgramKind {
    /// Detects on images (`mrc compile`); label names from the config's `class_names`.
    Inference { class_names: Vec<String> },
    /// Trains: the forward function is the training step (`mrc compile --train`); `evaluation`
    /// describes the inference network that the program carries as a companion module.
    Training {
        outputs: StepOutputs,
        layout: Vec<TensorLayout>,
        settings: TrainConfig,
        transform: Transform,
        evaluation: EvaluationNetwork,
    },
}

/// `mrc compile`: `model` for `target` at optimization level `level` (graph passes from 1 on,
/// LLVM's level), with `weights` embedded, written to `output` as `emit` says.
pub fn compile(
    model: &Model,
    target: &dyn Target,
    weights: Option<&Path>,
    level: u8,
    emit_stage: Emit,
    output: &Path,
) -> Result<String, CompileError> {
    // Weights first: a mismatch is reported before the compilation.
    let weights = weights.map(Weights::open).transpose()?;
    if let Some(weights) = &weights {
        weights.validate(&expected_state(&model.graph))?;
    }
    let context = create_context();
    let emitted = emit(&context, &model.graph, &model.graph.outputs, target, level)?;
    if emit_stage == Emit::Mlir {
        return native::write_mlir(&emitted.module, output);
    }
    let program = Program {
        name: program_name(output),
        weights,
        kind: ProgramKind::Inference { class_names: class_names(model) },
    };
    target.write(&context, emitted, program, level, emit_stage, output)
}

/// A program's name: its file's.
pub fn program_name(output: &Path) -> String {
    output.file_name().map_or("program".into(), |n| n.to_string_lossy().into_owned())
}

/// The label names from the config's `class_names`, if any.
fn class_names(model: &Model) -> Vec<String> {
    match model.config.get("class_names").map(|s| &s.value) {
        Some(Value::List(names)) => {
            names.iter().map(|n| if let Value::Str(s) = n { s.clone() } else { String::new() }).collect()
        }
        _ => vec![],
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CompileError + '_ {
    move |e| CompileError::Io { path: path.to_owned(), message: e.to_string() }
}

/// Writes through a temporary file renamed into place: never a half-written output.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CompileError> {
    mrc_runtime::program::coco::write_atomic(path, bytes)
        .map_err(|message| CompileError::Io { path: path.to_owned(), message })
}

/// A graph optimized and emitted for a target, not yet lowered.
pub struct Emitted<'c> {
    pub module: Module<'c>,
    pub signature: Signature,
    /// The runtime's description of `@forward`.
    pub interface: Interface,
    /// The graph passes that changed the graph.
    pub passes: Vec<&'static str>,
    /// Modules already in the LLVM dialect, their definitions prefixed, whose operations join a
    /// written program's (a training program's inference network, for `--val`).
    pub companions: Vec<Module<'c>>,
}

/// The optimization level's graph passes (none at 0) on a copy of `graph` whose outputs are
/// `outputs`, then `@forward` emitted for `target`.
pub fn emit<'c>(
    context: &'c Context,
    graph: &Graph,
    outputs: &[(String, Port)],
    target: &dyn Target,
    level: u8,
) -> Result<Emitted<'c>, LoweringError> {
    let mut graph = graph.clone();
    graph.outputs = outputs.to_vec();
    let passes = if level > 0 { passes::run(&mut graph, &target.graph_passes()) } else { vec![] };
    let (module, signature) = emit_forward(context, &graph, target.products(), target.builtins())?;
    let interface = interface(&graph, &signature);
    Ok(Emitted { module, signature, interface, passes, companions: vec![] })
}
