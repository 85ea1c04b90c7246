//! What a run directory holds and how it is written: the checkpoint (every state tensor, the
//! momentum buffers, and the iteration, generator state and settings as safetensors metadata),
//! the metrics and the final weights. Every file is written atomically (a temporary file
//! renamed over it), so that a crash or Ctrl-C never leaves a half-written one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand_xoshiro::Xoshiro256PlusPlus;
use safetensors::{Dtype as StDtype, View};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::error::{io_error, Result, TrainError};
use super::optim::Sgd;
use super::state::{ModelState, TensorKind};
use crate::program::coco::write_atomic;
use crate::weights::Weights;

/// The latest checkpoint in a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// One JSON object per iteration.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The final weights: state tensors under torchvision's names, f32.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Momentum buffers are stored beside the state as `optimizer.momentum_buffer.NAME`.
const MOMENTUM_PREFIX: &str = "optimizer.momentum_buffer.";
/// The safetensors metadata key holding [`Progress`] as JSON.
const METADATA_KEY: &str = "mrc_train";
/// Bounds the header read before anything is trusted (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where a run stands: what a checkpoint stores besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Iterations done; a resumed run starts with this one.
    pub iteration: u64,
    /// The per-step seed generator after those iterations.
    pub rng: Xoshiro256PlusPlus,
    pub config: TrainConfig,
}

/// An f32 tensor borrowed for serialization.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> StDtype {
        StDtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(bytemuck::cast_slice(self.data))
    }

    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

/// Writes `RUN_DIR/checkpoint.safetensors` atomically (and, when the settings keep every one,
/// `checkpoint-ITERATION.safetensors`); returns the path of the latest.
pub(crate) fn write(run_dir: &Path, state: &ModelState, sgd: &Sgd, progress: &Progress) -> Result<PathBuf> {
    let buffers = sgd.buffers().map(|(name, data)| {
        let shape = state.tensors.iter().find(|t| t.name == name).map_or(&[][..], |t| t.shape.as_slice());
        (format!("{MOMENTUM_PREFIX}{name}"), F32View { shape, data })
    });
    let tensors = state.tensors.iter().map(|t| (t.name.clone(), F32View { shape: &t.shape, data: &t.data }));
    let metadata = serde_json::to_string(progress).expect("progress serializes");
    let metadata = Some(HashMap::from([(METADATA_KEY.to_string(), metadata)]));
    let path = run_dir.join(CHECKPOINT_FILE);
    let bytes = safetensors::serialize(tensors.chain(buffers), &metadata)
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: format!("cannot serialize: {e:?}") })?;
    if progress.config.keep_checkpoints {
        write_atomic(&run_dir.join(format!("checkpoint-{:08}.safetensors", progress.iteration)), &bytes)
            .map_err(TrainError::Write)?;
    }
    write_atomic(&path, &bytes).map_err(TrainError::Write)?;
    Ok(path)
}

/// The settings a run directory's checkpoint was written with (what `--resume` starts from).
pub fn read_checkpoint_config(run_dir: &Path) -> Result<TrainConfig> {
    Ok(read_progress(&run_dir.join(CHECKPOINT_FILE))?.config)
}

/// Reads a run directory's checkpoint into `state` and `sgd`; returns where the run stands.
/// The checkpoint must hold exactly the state's tensors (and momentum buffers of its
/// parameters).
pub(crate) fn restore(run_dir: &Path, state: &mut ModelState, sgd: &mut Sgd) -> Result<Progress> {
    let path = run_dir.join(CHECKPOINT_FILE);
    let weights = Weights::open(&path)?;
    let progress = read_progress(&path)?;
    let problem = |message: String| TrainError::Checkpoint { path: path.clone(), message };
    for tensor in &mut state.tensors {
        let Some(stored) = weights.get(&tensor.name) else {
            return Err(problem(format!("no tensor {}: written for another model", tensor.name)));
        };
        match stored.as_f32() {
            Some(values) if stored.shape() == tensor.shape => tensor.data = values.to_vec(),
            _ => {
                return Err(problem(format!(
                    "{} is {} {:?}, the model's is f32 {:?}",
                    tensor.name,
                    stored.dtype(),
                    stored.shape(),
                    tensor.shape
                )))
            }
        }
    }
    for (name, stored) in weights.iter() {
        let Some(param) = name.strip_prefix(MOMENTUM_PREFIX) else {
            if state.tensors.iter().any(|t| t.name == name) {
                continue;
            }
            return Err(problem(format!("unexpected tensor {name}: written for another model")));
        };
        let owner = state.tensors.iter().find(|t| t.name == param && t.kind == TensorKind::Parameter);
        match (owner, stored.as_f32()) {
            (Some(owner), Some(values)) if values.len() == owner.data.len() => {
                sgd.set_buffer(param.to_string(), values.to_vec())
            }
            _ => return Err(problem(format!("momentum buffer {name} fits no parameter of the model"))),
        }
    }
    Ok(progress)
}

/// The checkpoint's metadata, read from the safetensors header alone.
fn read_progress(path: &Path) -> Result<Progress> {
    let problem = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(|_| problem("too short for a safetensors header".into()))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER_BYTES {
        return Err(problem(format!("implausible safetensors header of {length} bytes")));
    }
    let mut header = Vec::new();
    file.take(length).read_to_end(&mut header).map_err(io_error(path))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| problem(format!("safetensors header is not JSON: {e}")))?;
    let Some(metadata) = header["__metadata__"][METADATA_KEY].as_str() else {
        return Err(problem(format!("not a training checkpoint (no `{METADATA_KEY}` metadata)")));
    };
    serde_json::from_str(metadata).map_err(|e| problem(format!("damaged `{METADATA_KEY}` metadata: {e}")))
}

/// Drops the metrics of iterations at or after `done` (written after the checkpoint a run
/// resumes from, or cut off by a crash), so that the file reads as one uninterrupted run.
pub(crate) fn truncate_metrics(run_dir: &Path, done: u64) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::Io { path, source: e }),
    };
    let before = |line: &&str| {
        let entry: Option<serde_json::Value> = serde_json::from_str(line).ok();
        entry.and_then(|e| e["iteration"].as_u64()).is_some_and(|i| i < done)
    };
    let kept: String = text.lines().filter(before).flat_map(|line| [line, "\n"]).collect();
    write_atomic(&path, kept.as_bytes()).map_err(TrainError::Write)
}

/// Writes the final weights, `RUN_DIR/weights.safetensors`, atomically.
pub(crate) fn write_weights(run_dir: &Path, state: &ModelState) -> Result<PathBuf> {
    let path = run_dir.join(WEIGHTS_FILE);
    state.to_weights(&path.display().to_string())?.write_safetensors(&path)?;
    Ok(path)
}
