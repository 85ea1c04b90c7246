//! `mrc train MODEL --data train.json -o RUN_DIR`: the model's training step compiled in
//! process, the COCO data set's loader, and the runtime's trainer around them.

use mrc_runtime::data::{BatchOptions, Loader, LoaderOptions, TrainingSet, TrainingSetOptions};
use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::train::{self, CocoEvaluation, Evaluate, ModelSettings, ModelState, Progress, StopFlag, TrainArgs, TrainConfig, TrainOptions};
use mrc_runtime::weights::Weights;

use super::{JitStep, LoaderBatches, TrainingGraph};
use crate::expand::{value::Value, Model};
use crate::graph::NodeKind;
use crate::ops::AttrsExt;
use crate::run::JitForward;
use crate::targets::cpu::Cpu;

/// Trains `model` (loaded with the YAML overrides of `args.config` applied) as `args` say;
/// returns the summary to print.
pub fn train(model: &Model, args: &TrainArgs) -> Result<String, String> {
    mrc_runtime::abi::keep_freed_memory();
    let config = args.resolve(settings(model)?, ModelSettings::AppliedByCompiler).map_err(|e| e.to_string())?;
    let data = config.data.clone().ok_or("no training data: pass --data train.json (COCO annotations)")?;
    let run_dir = args.run_dir().expect("clap requires -o or --resume");
    if let Some(threads) = config.threads {
        // The global pool is set once per process; a second call only fails to resize it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }

    let training = TrainingGraph::new(model, &config.frozen).map_err(|e| e.to_string())?;
    let mut state = initial_state(model, &training, args, &config)?;
    let set = TrainingSet::open(&data, &TrainingSetOptions { images: config.images.clone(), keep_empty: config.keep_empty })
        .map_err(|e| e.to_string())?;
    let batch = BatchOptions { transform: transform(model)?, hflip: config.hflip, seed: config.seed };
    let loader = Loader::new(set, LoaderOptions { batch_size: config.batch_size, shuffle: false, batch }).map_err(|e| e.to_string())?;
    let category_ids = loader.set().labels_to_category_ids().to_vec();
    let mut batches = LoaderBatches::new(loader);
    let mut step = JitStep::compile(&training, 2).map_err(|e| e.to_string())?;
    // Declared before the evaluation, which calls into its code.
    let inference;
    let mut evaluation = match &config.val_data {
        Some(val) => {
            let graph = &model.graph;
            inference = JitForward::compile(&Cpu, graph, &graph.outputs, 2).map_err(|e| e.to_string())?;
            let input = graph.inputs.first().map(|&n| graph.nodes[n].name.clone()).ok_or("the network has no input")?;
            // SAFETY: `inference` was compiled for its interface and outlives the evaluation.
            let evaluation = unsafe {
                CocoEvaluation::new(inference.function, inference.interface.clone(), input, val, config.val_images.as_deref(), category_ids)
            };
            Some(evaluation.map_err(|e| e.to_string())?)
        }
        None => None,
    };

    let stop = StopFlag::on_ctrl_c().map_err(|e| e.to_string())?;
    let mut log = std::io::stderr();
    let evaluator = evaluation.as_mut().map(|e| e as &mut dyn Evaluate);
    let options = TrainOptions { resume: args.resume.is_some(), evaluator, stop, progress: Progress::for_stderr(), log: &mut log };
    let summary = train::train(&mut step, &mut batches, &mut state, &config, run_dir, options).map_err(|e| e.to_string())?;
    let losses: Vec<String> = summary.losses.iter().map(|(name, value)| format!("{name} {value:.4}")).collect();
    let mut text = format!(
        "{}: {} iterations in {:.1} s ({:.2} s per iteration){}\nlast losses: {}\n",
        run_dir.display(),
        summary.iterations,
        summary.seconds,
        summary.seconds / summary.iterations.max(1) as f64,
        if summary.interrupted { ", interrupted" } else { "" },
        losses.join(", ")
    );
    if let Some(weights) = &summary.weights {
        text += &format!("weights: {}\n", weights.display());
    }
    Ok(text)
}

/// The starting state: `--weights`, or the checkpoint when resuming (the trainer reads it), or
/// torchvision's initialization of an untrained model (`mrc init`) from the run's seed.
fn initial_state(model: &Model, training: &TrainingGraph, args: &TrainArgs, config: &TrainConfig) -> Result<ModelState, String> {
    let weights = match &args.weights {
        Some(path) => Weights::open(path).map_err(|e| e.to_string())?,
        None => crate::init::init(&model.graph, config.seed).map_err(|e| e.to_string())?,
    };
    let mut state = ModelState::from_weights(&weights, &training.layout()).map_err(|e| e.to_string())?;
    state.freeze(&config.frozen).map_err(|e| e.to_string())?;
    Ok(state)
}

/// The settings of the model's `train` section that the trainer takes, over its defaults.
fn settings(model: &Model) -> Result<TrainConfig, String> {
    let mut known = serde_json::Map::new();
    let fields = serde_json::to_value(TrainConfig::default()).map_err(|e| e.to_string())?;
    for setting in &model.train.0 {
        if fields.get(&setting.name).is_some() {
            known.insert(setting.name.clone(), json(&setting.value));
        }
    }
    let mut merged = fields;
    for (key, value) in known {
        merged[key] = value;
    }
    serde_json::from_value(merged).map_err(|e| format!("{}: the `train` section: {e}", model.path.display()))
}

fn json(value: &Value) -> serde_json::Value {
    match value {
        Value::Int(v) => (*v).into(),
        Value::Float(v) => (*v).into(),
        Value::Bool(v) => (*v).into(),
        Value::Str(v) => v.clone().into(),
        Value::List(items) => items.iter().map(json).collect(),
        _ => serde_json::Value::Null,
    }
}

/// The image transform of the model's `preprocess`, which training batches are made with.
fn transform(model: &Model) -> Result<Transform, String> {
    let attrs = model
        .graph
        .nodes
        .node_weights()
        .find_map(|n| match &n.kind {
            NodeKind::Op { op, attrs } if op.name() == "preprocess" => Some(attrs.clone()),
            _ => None,
        })
        .ok_or_else(|| format!("{}: the network has no `preprocess`, whose transform training batches use", model.path.display()))?;
    let three = |name: &str| {
        let v = attrs.floats(name);
        [v[0] as f32, v[1] as f32, v[2] as f32]
    };
    Ok(Transform {
        min_size: attrs.int("min_size") as usize,
        max_size: attrs.int("max_size") as usize,
        mean: three("mean"),
        std: three("std"),
        size_divisible: attrs.int("size_divisible") as usize,
    })
}

