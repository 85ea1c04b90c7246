//! `mrc compile --train [--target cuda]`: the training step as a native executable whose `main`
//! is the runtime's training loop (`mrc_runtime::train::mrc_training_program_main`, or for CUDA
//! `mrc_cuda_training_program_main`, which runs the step on the device), with the model's
//! settings, its state's layout and its initial weights in the trailer. The inference network
//! joins it, compiled for the CPU, for `--val`.

use std::path::Path;

use mrc_runtime::train::ModelState;
use mrc_runtime::weights::Weights;

use melior::{ir::Module, Context};
use mrc_runtime::train::EvaluationNetwork;

use super::command::{image_input, settings, transform};
use super::TrainingGraph;
use crate::expand::Model;
use crate::lowering::{add_entry_points, create_context, evaluation_prefix, rewrite::prefix_definitions, LoweringError};
use crate::targets::{cpu::Cpu, emit, native, program_name, Emit, Emitted, Program, ProgramKind, Target};

/// Writes the training program of `model` for `target` to `output` (or what `emit` asks for of
/// it), at LLVM level `level`, with `weights` (else `mrc init`'s, from the settings' seed) as
/// its initial weights.
pub fn write_training_program(
    model: &Model,
    target: &dyn Target,
    weights: Option<&Path>,
    level: u8,
    emit: Emit,
    output: &Path,
) -> Result<String, String> {
    let settings = settings(model)?;
    let training = TrainingGraph::new(model, &settings.frozen).map_err(|e| e.to_string())?;
    let layout = training.layout();
    let initial = match weights {
        Some(path) => Weights::open(path).map_err(|e| e.to_string())?,
        None => crate::init::init(&model.graph, settings.seed).map_err(|e| e.to_string())?,
    };
    // Checked now, not when the program starts.
    ModelState::from_weights(&initial, &layout).map_err(|e| e.to_string())?;
    let transform = transform(model)?;

    let context = create_context();
    let mut emitted = training.emit(&context, target, level).map_err(|e| e.to_string())?;
    if emit == Emit::Mlir {
        return native::write_mlir(&emitted.module, output).map_err(|e| e.to_string());
    }
    let (network, evaluation) = evaluation_network(&context, model, level).map_err(|e| e.to_string())?;
    emitted.companions.push(network);
    let kind = ProgramKind::Training { outputs: training.outputs.clone(), layout, settings, transform, evaluation };
    let program = Program { name: program_name(output), weights: Some(initial), kind };
    target.write(&context, emitted, program, level, emit, output).map_err(|e| e.to_string())
}

/// The inference network of `model` compiled for the CPU whatever the step's target (the
/// evaluation runs on the host), lowered, its entry point added and every definition prefixed
/// so that it joins the step's module; and its description for the manifest.
fn evaluation_network<'c>(context: &'c Context, model: &Model, level: u8) -> Result<(Module<'c>, EvaluationNetwork), LoweringError> {
    let graph = &model.graph;
    let input = image_input(graph).map_err(LoweringError::Build)?;
    let Emitted { mut module, signature, interface, .. } = emit(context, graph, &graph.outputs, &Cpu, level)?;
    Cpu.lower(context, &mut module)?;
    add_entry_points(context, &module, signature.arguments.len(), None)?;
    prefix_definitions(&module, evaluation_prefix());
    Ok((module, EvaluationNetwork { interface, input }))
}
