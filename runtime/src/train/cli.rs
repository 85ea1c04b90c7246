//! The training flags shared by `mrc train` and a compiled training program, and how they
//! combine with the model's settings, a YAML file and a checkpoint.

use std::path::{Path, PathBuf};

use super::config::{ModelSettings, TrainConfig};
use super::error::Result;

/// Where the data, the initial weights and the run directory are, and the settings a flag
/// overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The training set's COCO annotation file.
    #[arg(long, value_name = "train.json")]
    pub data: Option<PathBuf>,

    /// The training images (default: `images/` beside the annotation file).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,

    /// A validation set's COCO annotation file, evaluated (box and mask AP) every
    /// `--eval-every` iterations and at the end (default: the model's `val_data`, unless
    /// `--data` names another training set).
    #[arg(long, value_name = "val.json")]
    pub val: Option<PathBuf>,

    /// Initial weights (safetensors or a torch checkpoint), e.g. from `mrc init`.
    #[arg(long, value_name = "W", conflicts_with = "resume")]
    pub weights: Option<PathBuf>,

    /// Training settings to override, as the `train:` mapping of a YAML file.
    #[arg(long, value_name = "Y.yaml")]
    pub config: Option<PathBuf>,

    /// Iterations in all (a resumed run continues up to this many).
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,

    /// The run directory to create: metrics, checkpoints and the final weights.
    #[arg(short = 'o', long = "output", value_name = "RUN_DIR", required_unless_present = "resume")]
    pub output: Option<PathBuf>,

    /// Continue the run in RUN_DIR from its checkpoint, with its settings.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "output")]
    pub resume: Option<PathBuf>,

    /// Keep training images without annotations, as negatives.
    #[arg(long)]
    pub keep_empty: bool,

    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Evaluate on `--val` every N iterations (0: only at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,

    /// Write a checkpoint every N iterations (0: only at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
}

impl TrainArgs {
    /// The run directory: the one resumed, or the one to create.
    pub fn run_dir(&self) -> Option<&Path> {
        self.resume.as_deref().or(self.output.as_deref())
    }

    /// The settings of this run: the checkpoint's when resuming, else `model`'s (the model's
    /// `train` section), then the YAML file's, then the flags'. Each layer is checked, so an
    /// error names the file or the flag a bad value came from.
    pub fn resolve(&self, model: TrainConfig, model_settings: ModelSettings) -> Result<TrainConfig> {
        let mut config = match &self.resume {
            Some(run_dir) => super::read_checkpoint_config(run_dir)?,
            None => model,
        };
        config.validate(if self.resume.is_some() {
            "the checkpoint's settings"
        } else {
            "the model's `train` section"
        })?;
        if let Some(path) = &self.config {
            config.override_from_yaml(path, model_settings)?;
        }
        // Another data set's images are beside its annotations unless `--images` says otherwise.
        if self.data.is_some() && self.images.is_none() {
            config.images = None;
        }
        if self.val.is_some() {
            config.val_images = None;
        } else if self.data.is_some() {
            // The settings' validation set goes with the settings' training set.
            config.val_data = None;
            config.val_images = None;
        }
        let paths =
            [(&self.data, &mut config.data), (&self.images, &mut config.images), (&self.val, &mut config.val_data)];
        for (flag, setting) in paths {
            if let Some(path) = flag {
                *setting = Some(path.clone());
            }
        }
        config.keep_empty |= self.keep_empty;
        let counts = [
            (self.iterations, &mut config.iterations),
            (self.eval_every, &mut config.eval_every),
            (self.checkpoint_every, &mut config.checkpoint_every),
        ];
        for (flag, setting) in counts {
            if let Some(value) = flag {
                *setting = value;
            }
        }
        if let Some(threads) = self.threads {
            config.threads = Some(usize::from(threads));
        }
        config.validate("the command line")?;
        Ok(config)
    }
}
