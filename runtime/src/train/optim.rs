//! torch's SGD and torchvision's learning-rate schedule for detection: linear warm-up chained
//! with step decay, evaluated per iteration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use super::state::ModelState;

/// `torch.optim.SGD` with dampening 0 and without Nesterov: for each trainable parameter `p`
/// with gradient `g`, `d = g + weight_decay·p`; the momentum buffer is `d` on its first step
/// and `momentum·buf + d` after; `p −= lr·buf` (`p −= lr·d` without momentum). Computed in
/// f32 like torch's CPU kernels, up to their fused multiply-adds.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Momentum buffers by parameter name, created on a parameter's first step.
    buffers: BTreeMap<String, Vec<f32>>,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64) -> Sgd {
        Sgd { momentum, weight_decay, buffers: BTreeMap::new() }
    }

    /// Updates the trainable parameters of `state` from `gradients` (one per trainable
    /// parameter, in state order). Gradients that do not fit the parameters are an error and
    /// nothing is updated.
    pub fn step(&mut self, state: &mut ModelState, gradients: &[Vec<f32>], lr: f64) -> Result<()> {
        let trainable = state.trainable().count();
        if gradients.len() != trainable {
            return Err(TrainError::State(format!(
                "the step gave {} gradients for {trainable} trainable parameters",
                gradients.len()
            )));
        }
        if let Some((t, g)) = state.trainable().zip(gradients).find(|(t, g)| t.data.len() != g.len()) {
            return Err(TrainError::State(format!(
                "the gradient of {} has {} values, the parameter {} ({:?})",
                t.name,
                g.len(),
                t.data.len(),
                t.shape
            )));
        }
        let (lr, momentum, weight_decay) = (lr as f32, self.momentum as f32, self.weight_decay as f32);
        for (param, grad) in state.tensors.iter_mut().filter(|t| t.trainable).zip(gradients) {
            if momentum == 0.0 {
                for (p, &g) in param.data.iter_mut().zip(grad) {
                    *p -= lr * (g + weight_decay * *p);
                }
                continue;
            }
            let decayed = grad.iter().zip(&param.data).map(|(&g, &p)| g + weight_decay * p);
            match self.buffers.get_mut(&param.name) {
                Some(buffer) => {
                    for (b, d) in buffer.iter_mut().zip(decayed) {
                        *b = momentum * *b + d;
                    }
                }
                None => {
                    let buffer = decayed.collect();
                    self.buffers.insert(param.name.clone(), buffer);
                }
            }
            let buffer = &self.buffers[&param.name];
            for (p, b) in param.data.iter_mut().zip(buffer) {
                *p -= lr * b;
            }
        }
        Ok(())
    }

    /// The momentum buffers by parameter name (what a checkpoint stores).
    pub fn buffers(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.buffers.iter().map(|(name, buffer)| (name.as_str(), buffer.as_slice()))
    }

    /// Restores a parameter's momentum buffer (from a checkpoint).
    pub fn set_buffer(&mut self, name: String, buffer: Vec<f32>) {
        self.buffers.insert(name, buffer);
    }
}

/// The learning rate per iteration: torch's `LinearLR(start_factor = warmup_factor,
/// total_iters = warmup_iters)` chained with `MultiStepLR(milestones, gamma)`, both stepped
/// once per iteration (their closed forms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_iters: u64,
    pub warmup_factor: f64,
    pub milestones: Vec<u64>,
    pub gamma: f64,
}

impl LrSchedule {
    /// The learning rate of the update made at `iteration` (0-based).
    pub fn lr(&self, iteration: u64) -> f64 {
        let warmup = if iteration >= self.warmup_iters {
            1.0
        } else {
            // torch's order of operations: start + (end − start)·i / total.
            self.warmup_factor + (1.0 - self.warmup_factor) * iteration as f64 / self.warmup_iters as f64
        };
        // bisect_right: a milestone counts from its own iteration on.
        let decays = self.milestones.iter().filter(|&&m| m <= iteration).count();
        self.base_lr * warmup * self.gamma.powi(decays as i32)
    }
}
