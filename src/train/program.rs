//! `mrc compile --train [--target cuda]`: the training step as a native executable whose `main`
//! is the runtime's training loop (`mrc_runtime::train::mrc_training_program_main`, or for CUDA
//! `mrc_cuda_training_program_main`, which runs the step on the device), with the model's
//! settings, its state's layout and its initial weights in the trailer.

use std::path::Path;

use mrc_runtime::train::ModelState;
use mrc_runtime::weights::Weights;

use super::command::{settings, transform};
use super::TrainingGraph;
use crate::expand::Model;
use crate::lowering::create_context;
use crate::targets::{native, program_name, Emit, Program, ProgramKind, Target};

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
    let mut settings = settings(model)?;
    // The program carries no inference network to evaluate with.
    (settings.val_data, settings.val_images) = (None, None);
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
    let emitted = training.emit(&context, target, level).map_err(|e| e.to_string())?;
    if emit == Emit::Mlir {
        return native::write_mlir(&emitted.module, output).map_err(|e| e.to_string());
    }
    let kind = ProgramKind::Training { outputs: training.outputs.clone(), layout, settings, transform };
    let program = Program { name: program_name(output), weights: Some(initial), kind };
    target.write(&context, emitted, program, level, emit, output).map_err(|e| e.to_string())
}
