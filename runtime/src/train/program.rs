//! What `mrc train` and a compiled training program (`mrc compile --train`) share once the step,
//! the starting state and the settings are known ([`train_on_coco`]), and the training
//! program's `main`: its step, initial weights and settings come from its own file (the trailer:
//! [`TrainingManifest`], then the weights), its flags are `mrc train`'s without the model.

use std::path::Path;

use clap::Parser;
use serde::{Deserialize, Serialize};

use super::{train, CocoEvaluation, CompiledStep, Evaluate, LoaderBatches, ModelSettings, ModelState, Progress, Step, StepOutputs, StopFlag, TensorLayout};
use super::{TrainArgs, TrainConfig, TrainOptions};
use crate::abi::forward::{ForwardFn, Interface};
use crate::device::{register_emulated_kernels, DeviceKind, EmulatedKernelTable, SelectedDevice};
use crate::data::{Batch, BatchOptions, Loader, LoaderOptions, TrainingSet, TrainingSetOptions};
use crate::ops::preprocess::Transform;
use crate::program::trailer;
use crate::weights::Weights;

/// A training program's description of itself, in its trailer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingManifest {
    pub model_name: String,
    /// The step's forward function's interface.
    pub interface: Interface,
    pub outputs: StepOutputs,
    /// The model's state, which the embedded (or `--weights`) weights must match.
    pub layout: Vec<TensorLayout>,
    /// The model's `train` section.
    pub settings: TrainConfig,
    /// The image transform of the model's `preprocess`, which batches are made with.
    pub transform: Transform,
    /// The inference network that `--val` evaluates the state with.
    pub evaluation: EvaluationNetwork,
}

/// The inference network a training program carries for `--val`: its forward function's
/// interface and image input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationNetwork {
    pub interface: Interface,
    pub input: String,
}

/// Sizes rayon's pool, which the step's products and loops run on; before anything uses it.
pub fn use_threads(threads: Option<usize>) {
    if let Some(threads) = threads {
        // The global pool is set once per process; a second call only fails to resize it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
}

/// The COCO training set of `config`, read and checked (before anything slow starts).
pub fn open_training_set(config: &TrainConfig) -> Result<TrainingSet, String> {
    let data = config.data.clone().ok_or("no training data: pass --data train.json (COCO annotations)")?;
    TrainingSet::open(&data, &TrainingSetOptions { images: config.images.clone(), keep_empty: config.keep_empty }).map_err(|e| e.to_string())
}

/// Trains `step` from `state` on `set` (batches made with `transform`) as `config` says, in
/// `run_dir` (continuing its checkpoint if `resume`), with Ctrl-C handled and progress on
/// stderr, evaluating with `evaluator` if any. Returns the summary to print.
#[allow(clippy::too_many_arguments)]
pub fn train_on_coco<S: Step<Batch = Batch>>(
    step: &mut S,
    state: &mut ModelState,
    config: &TrainConfig,
    set: TrainingSet,
    transform: Transform,
    resume: bool,
    run_dir: &Path,
    mut evaluator: Option<Box<dyn Evaluate>>,
) -> Result<String, String> {
    let batch = BatchOptions { transform, hflip: config.hflip, seed: config.seed };
    let loader = Loader::new(set, LoaderOptions { batch_size: config.batch_size, shuffle: false, batch }).map_err(|e| e.to_string())?;
    let mut batches = LoaderBatches::new(loader);
    let stop = StopFlag::on_ctrl_c().map_err(|e| e.to_string())?;
    let mut log = std::io::stderr();
    let evaluator = evaluator.as_mut().map(|e| &mut **e as &mut dyn Evaluate);
    let options = TrainOptions { resume, evaluator, stop, progress: Progress::for_stderr(), log: &mut log };
    let summary = train(step, &mut batches, state, config, run_dir, options).map_err(|e| e.to_string())?;
    let losses: Vec<String> = summary.losses.iter().map(|(name, value)| format!("{name} {value:.4}")).collect();
    let resumed = if summary.ran < summary.iterations { format!(", {} of them in this run", summary.ran) } else { String::new() };
    let mut text = format!(
        "{}: {} iterations{resumed} in {:.1} s ({:.2} s per iteration){}\nlast losses: {}\n",
        run_dir.display(),
        summary.iterations,
        summary.seconds,
        summary.seconds / summary.ran.max(1) as f64,
        if summary.interrupted { ", interrupted" } else { "" },
        losses.join(", ")
    );
    if let Some(weights) = &summary.weights {
        text += &format!("weights: {}\n", weights.display());
    }
    Ok(text)
}

/// A compiled training program's command line: `mrc train`'s, without the model.
#[derive(Debug, Parser)]
#[command(about = "Trains the model compiled into this program on a COCO data set (as `mrc train` does).")]
struct TrainingCommandLine {
    #[command(flatten)]
    args: TrainArgs,
}

/// A CUDA training program's command line: [`TrainingCommandLine`]'s and the device.
#[derive(Debug, Parser)]
#[command(about = "Trains the model compiled into this program on a COCO data set (as `mrc train` does), on a GPU.")]
struct CudaTrainingCommandLine {
    #[command(flatten)]
    args: TrainArgs,
    /// Run the step on the first NVIDIA GPU (cuda) or on the CPU (emulator).
    #[arg(long, value_name = "D", default_value = "cuda")]
    device: DeviceKind,
}

/// The `main` of a compiled training program: `step` is its generated `mrc_forward_packed`,
/// `evaluation` the inference network's (see [`EvaluationNetwork`]). Exit codes: 0 when the run finished or stopped at Ctrl-C with a checkpoint, 1 when it
/// failed, 2 for usage errors.
///
/// # Safety
/// `step` is the program's step function, whose interface the program's trailer describes.
#[no_mangle]
pub unsafe extern "C" fn mrc_training_program_main(
    _argc: i32,
    _argv: *const *const std::ffi::c_char,
    step: ForwardFn,
    evaluation: ForwardFn,
) -> i32 {
    crate::abi::keep_freed_memory();
    let command_line = TrainingCommandLine::try_parse().unwrap_or_else(|error| error.exit());
    // SAFETY: as the caller promised.
    exit_code(unsafe { training_program(step, evaluation, &command_line.args, None) })
}

/// The `main` of a training program compiled for CUDA: [`mrc_training_program_main`] with the
/// step on the device `--device` selects; exit code 3 when it cannot start.
///
/// # Safety
/// As [`mrc_training_program_main`], `step` compiled for CUDA, `kernels` the program's table of
/// emulated kernels, `evaluation` compiled for the CPU.
#[no_mangle]
pub unsafe extern "C" fn mrc_cuda_training_program_main(
    _argc: i32,
    _argv: *const *const std::ffi::c_char,
    step: ForwardFn,
    kernels: EmulatedKernelTable,
    evaluation: ForwardFn,
) -> i32 {
    register_emulated_kernels(kernels);
    crate::abi::keep_freed_memory();
    let command_line = CudaTrainingCommandLine::try_parse().unwrap_or_else(|error| error.exit());
    let device = match crate::device::select(command_line.device) {
        Ok(device) => device,
        Err(error) => {
            eprintln!("error: {error}");
            return i32::from(crate::program::EXIT_NO_DEVICE);
        }
    };
    // SAFETY: as the caller promised.
    exit_code(unsafe { training_program(step, evaluation, &command_line.args, Some(device)) })
}

/// A training program's exit code, its summary or error printed.
fn exit_code(outcome: Result<String, String>) -> i32 {
    match outcome {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// The training program's run, its step on `device` if there is one, evaluating with
/// `evaluation` (on the CPU) when there is a validation set.
///
/// # Safety
/// As [`mrc_training_program_main`]; `step` compiled for `device`.
unsafe fn training_program(
    step: ForwardFn,
    evaluation: ForwardFn,
    args: &TrainArgs,
    device: Option<&'static SelectedDevice>,
) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let (manifest, embedded) = trailer::read::<TrainingManifest>(&exe)?;
    let config = args.resolve(manifest.settings.clone(), ModelSettings::FixedAtCompileTime).map_err(|e| e.to_string())?;
    use_threads(config.threads);
    let run_dir = args.run_dir().expect("clap requires -o or --resume");
    let weights = match (&args.weights, embedded) {
        (Some(path), _) => Weights::open(path).map_err(|e| e.to_string())?,
        (None, Some(bytes)) => Weights::from_static_safetensors(bytes).map_err(|e| e.to_string())?,
        (None, None) => return Err("this program has no initial weights built in: pass --weights W".into()),
    };
    let mut state = ModelState::from_weights(&weights, &manifest.layout).map_err(|e| e.to_string())?;
    state.freeze(&config.frozen).map_err(|e| e.to_string())?;
    let set = open_training_set(&config)?;
    let evaluator: Option<Box<dyn Evaluate>> = match &config.val_data {
        Some(val) => {
            let EvaluationNetwork { interface, input } = manifest.evaluation.clone();
            let category_ids = set.labels_to_category_ids().to_vec();
            // SAFETY: the trailer describes the evaluation function it was compiled with, which
            // is the program's code.
            let evaluation = unsafe { CocoEvaluation::new(evaluation, interface, input, val, config.val_images.as_deref(), category_ids) };
            Some(Box::new(evaluation.map_err(|e| e.to_string())?))
        }
        None => None,
    };
    // SAFETY: the trailer describes the step function it was compiled with.
    let step = unsafe { CompiledStep::new(step, manifest.interface, manifest.outputs) };
    // SAFETY: the caller promised that the step was compiled for the device.
    let mut step = match device {
        Some(device) => unsafe { step.on_device(device) },
        None => step,
    };
    train_on_coco(&mut step, &mut state, &config, set, manifest.transform, args.resume.is_some(), run_dir, evaluator)
}
