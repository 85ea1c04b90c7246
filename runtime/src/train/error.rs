//! What can stop a training run; the Display text is what the user reads.

use std::path::PathBuf;

use crate::weights::WeightsError;

/// The error type of the pluggable parts ([`super::Step`], [`super::Batches`],
/// [`super::Evaluate`]): any error of theirs, which the loop reports with the iteration.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why training could not start, continue or finish. Every message names the file, setting or
/// iteration it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A setting with a bad value or of an unknown name; `origin` is the YAML file (with the
    /// line where known), the flag, or the model's `train` section.
    #[error("{origin}: `{key}`: {message}")]
    Setting { origin: String, key: String, message: String },
    /// A YAML file that does not parse as training settings (serde_yaml's message, with its
    /// line and column).
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: the run directory exists; continue it with `--resume {}` or choose another -o", path.display(), path.display())]
    RunDirExists { path: PathBuf },
    /// A checkpoint that cannot be resumed from: damaged, or of another model.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A file of the run directory could not be written (its path and why).
    #[error("{0}")]
    Write(String),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("cannot handle Ctrl-C: {0}")]
    CtrlC(String),
    /// The model's state and what the step or the weights provide disagree.
    #[error("model state: {0}")]
    State(String),
    #[error("iteration {iteration}: cannot load the batch: {source}")]
    Data { iteration: u64, source: BoxError },
    #[error("iteration {iteration}: the training step failed: {source}")]
    Step { iteration: u64, source: BoxError },
    #[error("iteration {iteration}: evaluation failed: {source}")]
    Evaluate { iteration: u64, source: BoxError },
    /// A loss or gradient that is NaN or infinite; nothing of that iteration was written.
    #[error("iteration {iteration}: non-finite {what}; training stopped ({resume})")]
    NonFinite { iteration: u64, what: String, resume: String },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
