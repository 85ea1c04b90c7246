//! The training settings: filled from the model's `train` section by the compiler, overridden
//! by a YAML file (`--config`, the compiler's layout: training settings under `train:`) and by
//! flags ([`super::TrainArgs`]), checked after each layer so that an error names where the bad
//! value came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{io_error, Result, TrainError};
use super::optim::LrSchedule;

/// Everything the loop, the optimizer and the data loader are told. Defaults are the recipe that
/// trained the fixture's torchvision mini model (`shapes/README.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The training set's COCO annotation file.
    pub data: Option<PathBuf>,
    /// Its image folder (default: `images/` beside the annotations).
    pub images: Option<PathBuf>,
    /// The validation set's COCO annotation file, evaluated every `eval_every` iterations.
    pub val_data: Option<PathBuf>,
    pub val_images: Option<PathBuf>,
    /// Keep training images without annotations, as negatives.
    pub keep_empty: bool,
    /// Images per batch.
    pub batch_size: usize,
    pub iterations: u64,
    /// The base learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Iterations of linear warm-up from `lr · warmup_factor` to `lr` (0: none).
    pub warmup_iters: u64,
    pub warmup_factor: f64,
    /// Iterations at which the learning rate is multiplied by `gamma`, increasing.
    pub milestones: Vec<u64>,
    pub gamma: f64,
    /// Probability of flipping an image horizontally.
    pub hflip: f64,
    /// Seeds the per-step seeds (the samplers') and the loader's augmentation.
    pub seed: u64,
    /// Write a checkpoint every this many iterations (0: only at the end).
    pub checkpoint_every: u64,
    /// Keep every checkpoint (`checkpoint-ITERATION.safetensors`) besides the latest.
    pub keep_checkpoints: bool,
    /// Evaluate every this many iterations (0: only at the end, when there is validation data).
    pub eval_every: u64,
    /// Print a progress line every this many iterations when stderr is not a terminal.
    pub log_every: u64,
    /// Parameter-name prefixes whose parameters are not trained.
    pub frozen: Vec<String>,
    /// Worker threads (default: one per core). The command sizes rayon's pool from it before
    /// training; the loop itself starts no threads.
    pub threads: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            data: None,
            images: None,
            val_data: None,
            val_images: None,
            keep_empty: false,
            batch_size: 4,
            iterations: 2000,
            lr: 0.02,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_iters: 100,
            warmup_factor: 0.01,
            milestones: vec![1400, 1800],
            gamma: 0.1,
            hflip: 0.0,
            seed: 0,
            checkpoint_every: 500,
            keep_checkpoints: false,
            eval_every: 0,
            log_every: 20,
            frozen: Vec::new(),
            threads: None,
        }
    }
}

/// What the top-level keys of a YAML override (the model's `config` settings) mean to the
/// trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSettings {
    /// `mrc train`: the compiler has applied and checked them; the trainer reads `train:` only.
    AppliedByCompiler,
    /// A compiled training program: the model is fixed, so each is an error.
    FixedAtCompileTime,
}

impl TrainConfig {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.lr,
            warmup_iters: self.warmup_iters,
            warmup_factor: self.warmup_factor,
            milestones: self.milestones.clone(),
            gamma: self.gamma,
        }
    }

    /// Checks every value; `origin` says where they came from.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.check().map_err(|(key, message)| TrainError::Setting { origin: origin.into(), key: key.into(), message })
    }

    /// The first bad setting and why.
    fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = |key, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((key, format!("{v} is not a positive number")))
            }
        };
        let non_negative = |key, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err((key, format!("{v} is not a number ≥ 0")))
            }
        };
        let at_least_one = |key, v: u64| if v >= 1 { Ok(()) } else { Err((key, "must be at least 1".to_string())) };
        at_least_one("batch_size", self.batch_size as u64)?;
        at_least_one("iterations", self.iterations)?;
        at_least_one("log_every", self.log_every)?;
        at_least_one("threads", self.threads.unwrap_or(1) as u64)?;
        positive("lr", self.lr)?;
        positive("gamma", self.gamma)?;
        non_negative("momentum", self.momentum)?;
        non_negative("weight_decay", self.weight_decay)?;
        if !(self.warmup_factor > 0.0 && self.warmup_factor <= 1.0) {
            return Err(("warmup_factor", format!("{} is outside (0, 1]", self.warmup_factor)));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return Err(("hflip", format!("{} is not a probability in [0, 1]", self.hflip)));
        }
        if let Some(pair) = self.milestones.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(("milestones", format!("must increase ({} then {})", pair[0], pair[1])));
        }
        if self.frozen.iter().any(String::is_empty) {
            return Err(("frozen", "an empty prefix would freeze every parameter".into()));
        }
        Ok(())
    }

    /// Applies the `train:` mapping of a YAML file of overrides (the compiler's `--config`
    /// layout) and checks the result. Unknown keys, wrong types and bad values are one error
    /// naming the file and the key, with its line.
    pub fn override_from_yaml(&mut self, path: &Path, model_settings: ModelSettings) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let yaml_error = |e: serde_yaml::Error| TrainError::Yaml { path: path.to_path_buf(), message: e.to_string() };
        let top: serde_yaml::Value = serde_yaml::from_str(&text).map_err(yaml_error)?;
        let top = match top {
            serde_yaml::Value::Null => return Ok(()),
            serde_yaml::Value::Mapping(top) => top,
            _ => {
                let message = "expected a mapping of model settings and `train:`".into();
                return Err(TrainError::Yaml { path: path.to_path_buf(), message });
            }
        };
        let located = |key: &str| match key_line(&text, key) {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        if model_settings == ModelSettings::FixedAtCompileTime {
            if let Some(key) = top.keys().filter_map(|k| k.as_str()).find(|k| *k != "train") {
                return Err(TrainError::Setting {
                    origin: located(key),
                    key: key.into(),
                    message: "a model setting, fixed when this training program was compiled; only `train:` \
                              settings can be changed"
                        .into(),
                });
            }
        }
        let Some(train) = top.get("train") else { return Ok(()) };
        #[derive(Deserialize)]
        struct File {
            train: TrainConfig,
        }
        // Deserializing the whole text keeps serde_yaml's line and column in errors.
        let parsed = serde_yaml::from_str::<File>(&text).map_err(yaml_error)?.train;
        let given: Vec<&str> =
            train.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(|k| k.as_str()).collect();
        let mut merged = self.clone();
        merged.take_given(parsed, &given);
        if let Err((key, message)) = merged.check() {
            return Err(TrainError::Setting { origin: located(key), key: key.into(), message });
        }
        *self = merged;
        Ok(())
    }

    /// Replaces the settings named in `given` by `other`'s. The destructuring is exhaustive, so
    /// that a new setting cannot be forgotten here.
    fn take_given(&mut self, other: TrainConfig, given: &[&str]) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {
                let TrainConfig { $($field),* } = other;
                $(if given.contains(&stringify!($field)) {
                    self.$field = $field;
                })*
            };
        }
        take!(
            data,
            images,
            val_data,
            val_images,
            keep_empty,
            batch_size,
            iterations,
            lr,
            momentum,
            weight_decay,
            warmup_iters,
            warmup_factor,
            milestones,
            gamma,
            hflip,
            seed,
            checkpoint_every,
            keep_checkpoints,
            eval_every,
            log_every,
            frozen,
            threads,
        );
    }
}

/// The 1-based line where `key:` is first set in a YAML text (for errors serde_yaml does not
/// locate: bad values found after parsing).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let pattern = format!("{key}:");
    text.lines().position(|line| line.trim_start().starts_with(&pattern)).map(|i| i + 1)
}
