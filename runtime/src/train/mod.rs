//! The training loop around a compiled training step, shared by `mrc train` (the step
//! JIT-compiled in process) and a standalone training program (`mrc compile --train`).
//!
//! The loop knows nothing of how a step is computed. It plugs together three traits:
//! [`Step`] (losses and gradients of one batch, buffers such as batch-norm running statistics
//! updated in place), [`Batches`] (the data loader: the batch of an iteration, deterministic in
//! it) and [`Evaluate`] (box and mask AP on a validation set). Around them it owns what every
//! run needs: torch's SGD ([`Sgd`]) and torchvision's warm-up and step schedule
//! ([`LrSchedule`]), per-step seeds from a checkpointed generator, `metrics.jsonl`, atomic
//! checkpoints that a resumed run continues from exactly, Ctrl-C, periodic evaluation and the
//! final weights under torchvision's names ([`train`]). [`TrainConfig`] holds the settings
//! (from the model's `train` section, a YAML file and flags: [`TrainArgs`]).

mod checkpoint;
mod cli;
mod compiled;
mod config;
mod error;
mod evaluate;
mod optim;
mod program;
mod progress;
mod run;
mod state;

pub use checkpoint::{read_checkpoint_config, CHECKPOINT_FILE, METRICS_FILE, WEIGHTS_FILE};
pub use cli::TrainArgs;
pub use compiled::{batch_inputs, CompiledStep, LoaderBatches, StepOutputs};
pub use config::{ModelSettings, TrainConfig};
pub use error::{BoxError, TrainError};
pub use evaluate::CocoEvaluation;
pub use optim::{LrSchedule, Sgd};
pub use program::{mrc_cuda_training_program_main, mrc_training_program_main, open_training_set, train_on_coco, use_threads, EvaluationNetwork, TrainingManifest};
pub use progress::Progress;
pub use run::{train, StopFlag, Summary, TrainOptions};
pub use state::{ModelState, StateTensor, TensorKind, TensorLayout};

/// One training step: the forward and backward pass of a batch, computed however the caller
/// compiled it.
pub trait Step {
    type Batch;

    /// The losses and gradients of `batch` at `state`. Buffers (batch-norm running statistics)
    /// are updated in place; parameters are not (the optimizer does that). `seed` drives the
    /// step's random choices (the samplers'), so that a run is reproducible.
    fn run(&mut self, state: &mut ModelState, batch: &Self::Batch, seed: u64) -> Result<StepOutput, BoxError>;
}

/// What a step computed.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Named losses in a fixed order; for Mask R-CNN torchvision's: `loss_objectness`,
    /// `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`, `loss_mask`. The loop minimizes
    /// their sum.
    pub losses: Vec<(String, f64)>,
    /// The gradient of the summed loss for each trainable parameter, in state order.
    pub gradients: Vec<Vec<f32>>,
}

/// The training data: one batch per iteration.
pub trait Batches {
    type Batch;

    /// The batch of `iteration`; the same iteration always gives the same batch (so that a
    /// resumed run sees what an uninterrupted one would), which lets a loader prefetch ahead.
    fn batch(&mut self, iteration: u64) -> Result<Self::Batch, BoxError>;

    /// How many batches one pass over the data set takes (iterations beyond wrap around).
    fn per_epoch(&self) -> u64;
}

/// Periodic evaluation of the model being trained (box and mask AP on a validation set).
pub trait Evaluate {
    /// Named results (`bbox_AP`, `segm_AP`, ...), recorded in `metrics.jsonl`.
    fn evaluate(&mut self, state: &ModelState) -> Result<Vec<(String, f64)>, BoxError>;
}
