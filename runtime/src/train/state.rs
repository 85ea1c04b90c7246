//! The model's state as the trainer holds it: every state tensor as f32, in `state_dict` order,
//! each a parameter (trained, unless frozen) or a buffer (updated by the step itself).

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use crate::weights::{Dtype, Tensor, TensorSpec, Weights};

/// Whether the optimizer or the step owns a tensor's updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorKind {
    /// A learned weight: updated by the optimizer from its gradient, unless frozen.
    Parameter,
    /// Running statistics and counters (batch norm's): updated by the step, never by the
    /// optimizer.
    Buffer,
}

/// One state tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    /// Its torchvision `state_dict` name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
    pub kind: TensorKind,
    /// Whether the optimizer updates it: parameters not frozen.
    pub trainable: bool,
}

/// What a model's state consists of: a tensor's name, shape and kind, in `state_dict` order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorLayout {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

/// Every state tensor of the model being trained, in `state_dict` order.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub tensors: Vec<StateTensor>,
}

/// Batch norm's counter: torch stores it as i64, and no computation reads it, so weights files
/// may omit it (as [`Weights::validate`] allows); it starts at zero then.
fn is_counter(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

impl ModelState {
    /// The state `layout` describes, with values from `weights` (one error lists every
    /// missing, unexpected or mis-shaped tensor). Every parameter starts trainable.
    pub fn from_weights(weights: &Weights, layout: &[TensorLayout]) -> Result<ModelState> {
        let specs: Vec<TensorSpec> = layout
            .iter()
            .map(|t| TensorSpec { name: t.name.clone(), shape: t.shape.clone(), dtype: Dtype::F32 })
            .collect();
        weights.validate(&specs)?;
        let tensors = layout
            .iter()
            .map(|t| {
                let data = match weights.get(&t.name) {
                    Some(tensor) => counter_or_f32(weights.origin(), &t.name, tensor)?,
                    // Only a counter can be missing once validated.
                    None => vec![0.0; t.shape.iter().product()],
                };
                Ok(StateTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data,
                    kind: t.kind,
                    trainable: t.kind == TensorKind::Parameter,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ModelState { tensors })
    }

    /// Stops training the parameters whose names start with one of `prefixes`. A prefix that
    /// names no parameter is an error: a misspelt one would silently train everything.
    pub fn freeze(&mut self, prefixes: &[String]) -> Result<()> {
        for prefix in prefixes {
            let mut matched = false;
            for tensor in self.tensors.iter_mut().filter(|t| t.kind == TensorKind::Parameter) {
                if tensor.name.starts_with(prefix.as_str()) {
                    tensor.trainable = false;
                    matched = true;
                }
            }
            if !matched {
                return Err(TrainError::Setting {
                    origin: "training settings".into(),
                    key: "frozen".into(),
                    message: format!("`{prefix}` is not the beginning of any parameter's name"),
                });
            }
        }
        Ok(())
    }

    /// The parameters the optimizer updates, in state order (the order of
    /// [`super::StepOutput::gradients`]).
    pub fn trainable(&self) -> impl Iterator<Item = &StateTensor> {
        self.tensors.iter().filter(|t| t.trainable)
    }

    /// The state as weights under torchvision's names, every tensor f32: what torch's
    /// `load_state_dict` and `mrc compile --weights` read.
    pub fn to_weights(&self, origin: &str) -> Result<Weights> {
        let tensors = self.tensors.iter().map(|t| {
            let tensor = Tensor::from_f32(t.shape.clone(), &t.data).ok_or_else(|| {
                TrainError::State(format!("{} has {} values for shape {:?}", t.name, t.data.len(), t.shape))
            });
            tensor.map(|tensor| (t.name.clone(), tensor))
        });
        Ok(Weights::from_tensors(origin, tensors.collect::<Result<Vec<_>>>()?)?)
    }
}

/// The values of a validated tensor: f32 as they are, batch norm's i64 counter converted.
fn counter_or_f32(origin: &str, name: &str, tensor: &Tensor) -> Result<Vec<f32>> {
    if let Some(values) = tensor.as_f32() {
        return Ok(values.to_vec());
    }
    match tensor.dtype() {
        Dtype::I64 if is_counter(name) => Ok(tensor
            .bytes()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()),
        dtype => Err(TrainError::State(format!("{origin}: {name} is {dtype}, not f32"))),
    }
}
