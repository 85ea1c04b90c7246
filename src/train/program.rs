//! `mrc compile --train`: the training step as a native executable whose `main` is the
//! runtime's training loop (`mrc_runtime::train::mrc_training_program_main`), with the model's
//! settings, its state's layout and its initial weights in the trailer.

use std::path::Path;

use mrc_runtime::train::{ModelState, TrainingManifest};
use mrc_runtime::weights::Weights;

use super::command::{settings, transform};
use super::TrainingGraph;
use crate::expand::Model;
use crate::lowering::{add_entry_points, create_context, ProgramMain};
use crate::targets::{cpu::Cpu, native, Emit, Emitted, Target};

/// Writes the training program of `model` to `output` (or what `emit` asks for of it), at LLVM
/// level `level`, with `weights` (else `mrc init`'s, from the settings' seed) as its initial
/// weights.
pub fn write_training_program(model: &Model, weights: Option<&Path>, level: u8, emit: Emit, output: &Path) -> Result<String, String> {
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
    let target = Cpu;
    let Emitted { mut module, signature, interface, .. } = training.emit(&context, &target, level).map_err(|e| e.to_string())?;
    if emit == Emit::Mlir {
        return native::write_mlir(&module, output).map_err(|e| e.to_string());
    }
    target.lower(&context, &mut module).map_err(|e| e.to_string())?;
    add_entry_points(&context, &module, signature.arguments.len(), Some(ProgramMain::TRAINING)).map_err(|e| e.to_string())?;
    let model_name = output.file_name().map_or("program".into(), |n| n.to_string_lossy().into_owned());
    let manifest = TrainingManifest { model_name, interface, outputs: training.outputs.clone(), layout, settings, transform };
    native::write_executable(&module, &[], &manifest, Some(&initial), level, emit, output).map_err(|e| e.to_string())
}
