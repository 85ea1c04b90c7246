//! A training step compiled ahead of time or in process, called through its forward function:
//! the trainer's [`Step`] for `mrc train` (JIT) and for a compiled training program, with the
//! batch inputs it takes and the prefetching loader that feeds it.

use serde::{Deserialize, Serialize};

use super::{Batches, BoxError, ModelState, Step, StepOutput};
use crate::abi::forward::{call, call_on_device, on_pool, Argument, ForwardFn, HostTensor, Interface, ResultSpec, Source};
use crate::device::SelectedDevice;
use crate::data::{Batch, Loader, Prefetch};

/// Which results of a step's forward function are what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOutputs {
    /// The outputs summed into the loss, in the `train` section's order.
    pub losses: Vec<String>,
    /// For each differentiated parameter (state order), its name and its gradient's output.
    pub gradients: Vec<(String, String)>,
    /// For each buffer the step updates (batch norms' running statistics), its name and the
    /// output holding its new value.
    pub updates: Vec<(String, String)>,
}

/// A compiled step: its forward function, the interface it was compiled for, what its results
/// are, and the device it runs on, if any.
pub struct CompiledStep {
    function: ForwardFn,
    interface: Interface,
    outputs: StepOutputs,
    device: Option<&'static SelectedDevice>,
}

impl CompiledStep {
    /// # Safety
    /// `function` is the forward function that `interface` describes, valid as long as the step.
    pub unsafe fn new(function: ForwardFn, interface: Interface, outputs: StepOutputs) -> CompiledStep {
        CompiledStep { function, interface, outputs, device: None }
    }

    /// The step, whose forward function was compiled for `device`, run there: the state and
    /// the inputs are uploaded at each call, the results read back.
    ///
    /// # Safety
    /// The forward function runs on `device` (its results are `device`'s memory).
    pub unsafe fn on_device(self, device: &'static SelectedDevice) -> CompiledStep {
        CompiledStep { device: Some(device), ..self }
    }

    /// Runs the step on `inputs` (the training network's inputs, by name) at `state`: returns
    /// the losses and the gradients of the trainable parameters (state order), and writes the
    /// updated buffers into `state`.
    pub fn run(&self, inputs: &[(&str, &HostTensor)], state: &mut ModelState) -> Result<StepOutput, String> {
        let index: std::collections::HashMap<String, usize> = state.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        // Step counters are i64 in the graph and f32 in the trainer's state.
        let counters: Vec<(usize, Vec<i64>)> = self
            .interface
            .arguments
            .iter()
            .enumerate()
            .filter_map(|(position, source)| match source {
                Source::State(name) if name.ends_with("num_batches_tracked") => {
                    Some((position, state.tensors[index[name]].data.iter().map(|&v| v as i64).collect()))
                }
                _ => None,
            })
            .collect();
        let mut arguments = vec![];
        for (position, source) in self.interface.arguments.iter().enumerate() {
            arguments.push(match source {
                Source::Input(name) => Argument::input(inputs, name)?,
                Source::State(name) => {
                    let tensor = index.get(name).map(|&i| &state.tensors[i]).ok_or_else(|| format!("no state tensor `{name}`"))?;
                    match counters.iter().find(|(p, _)| *p == position) {
                        Some((_, counter)) => Argument { bytes: bytemuck::cast_slice(counter), shape: &tensor.shape },
                        None => Argument { bytes: bytemuck::cast_slice(&tensor.data), shape: &tensor.shape },
                    }
                }
                Source::Derived { name, .. } => return Err(format!("a training step derives no weights, found `{name}`")),
            });
        }
        let specs: Vec<ResultSpec> = self.interface.results.iter().map(|(_, spec)| *spec).collect();
        crate::abi::take_error();
        // SAFETY: the function was compiled for this interface, and the arguments follow it.
        let results = unsafe {
            match self.device {
                None => Ok(on_pool(|| call(self.function, &arguments, &specs))),
                Some(device) => {
                    let uploaded: Vec<_> = arguments.iter().map(|_| None).collect();
                    call_on_device(self.function, device, &arguments, &uploaded, &specs)
                }
            }
        };
        if let Some(error) = crate::abi::take_error() {
            return Err(error);
        }
        let results = results.map_err(|error| error.to_string())?;
        let mut by_name: std::collections::HashMap<&str, HostTensor> =
            self.interface.results.iter().map(|(name, _)| name.as_str()).zip(results).collect();
        let mut take = |name: &str| by_name.remove(name).ok_or_else(|| format!("the step has no result `{name}`"));
        let mut losses = vec![];
        for name in &self.outputs.losses {
            let value = take(name)?;
            losses.push((name.clone(), value.f32().and_then(|v| v.first()).copied().unwrap_or(f32::NAN) as f64));
        }
        for (state_name, output) in &self.outputs.updates {
            let value = take(output)?;
            let data: Vec<f32> = match &value {
                HostTensor::F32 { data, .. } => data.clone(),
                HostTensor::I64 { data, .. } => data.iter().map(|&v| v as f32).collect(),
                HostTensor::U8 { data, .. } => data.iter().map(|&v| v as f32).collect(),
            };
            state.tensors[index[state_name]].data = data;
        }
        let mut gradients = vec![];
        for (state_name, output) in &self.outputs.gradients {
            let value = take(output)?;
            if state.tensors[index[state_name]].trainable {
                gradients.push(value.f32().map(<[f32]>::to_vec).ok_or_else(|| format!("`{output}` is not f32"))?);
            }
        }
        Ok(StepOutput { losses, gradients })
    }

}

impl Step for CompiledStep {
    type Batch = Batch;

    fn run(&mut self, state: &mut ModelState, batch: &Batch, seed: u64) -> Result<StepOutput, BoxError> {
        let inputs = batch_inputs(batch, seed);
        let borrowed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        Ok(CompiledStep::run(self, &borrowed, state)?)
    }
}

/// The training network's inputs for `batch`, by name (`seed` drives the samplers).
pub fn batch_inputs(batch: &Batch, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let (n, g) = (batch.image_sizes.len(), batch.gt_boxes.len());
    vec![
        ("images", HostTensor::F32 { shape: batch.image_shape.to_vec(), data: batch.images.clone() }),
        ("image_sizes", HostTensor::I64 { shape: vec![n, 2], data: batch.image_sizes.iter().flatten().copied().collect() }),
        ("gt_boxes", HostTensor::F32 { shape: vec![g, 4], data: batch.gt_boxes.iter().flatten().copied().collect() }),
        ("gt_labels", HostTensor::I64 { shape: vec![g], data: batch.gt_labels.clone() }),
        ("gt_image", HostTensor::I64 { shape: vec![g], data: batch.gt_image.clone() }),
        ("gt_masks", HostTensor::U8 { shape: batch.mask_shape.to_vec(), data: batch.gt_masks.clone() }),
        // The seed crosses as a word; its low 63 bits are enough to pick a stream.
        ("seed", HostTensor::I64 { shape: vec![1], data: vec![(seed >> 1) as i64] }),
    ]
}

/// The data loader as the trainer takes it: batches decoded on a worker thread ahead of the
/// step, restarted where the trainer asks for another iteration than the next.
pub struct LoaderBatches {
    loader: Loader,
    /// The prefetch and the iteration of the batch it hands out next.
    prefetch: Option<(Prefetch, u64)>,
}

impl LoaderBatches {
    /// How many batches the worker prepares ahead of the step.
    const DEPTH: usize = 2;

    pub fn new(loader: Loader) -> LoaderBatches {
        LoaderBatches { loader, prefetch: None }
    }
}

impl Batches for LoaderBatches {
    type Batch = Batch;

    fn batch(&mut self, iteration: u64) -> Result<Batch, BoxError> {
        if !matches!(&self.prefetch, Some((_, next)) if *next == iteration) {
            self.prefetch = Some((self.loader.prefetch(iteration, 1, Self::DEPTH), iteration));
        }
        let (prefetch, next) = self.prefetch.as_mut().expect("started above");
        *next += 1;
        Ok(prefetch.next_batch()?)
    }

    fn per_epoch(&self) -> u64 {
        self.loader.set().len().div_ceil(self.loader.options().batch_size) as u64
    }
}
