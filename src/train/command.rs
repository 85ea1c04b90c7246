//! `mrc train MODEL --data train.json -o RUN_DIR`: the model's training step compiled in
//! process, the COCO data set's loader, and the runtime's trainer around them.

use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::train::{open_training_set, train_on_coco, use_threads, CocoEvaluation, Evaluate, ModelSettings, ModelState, TrainArgs, TrainConfig};
use mrc_runtime::weights::Weights;

use super::{JitStep, TrainingGraph};
use crate::expand::{value::Value, Model};
use crate::graph::{Graph, NodeKind};
use crate::ops::AttrsExt;
use crate::run::JitForward;
use crate::targets::cpu::Cpu;

/// Trains `model` (loaded with the YAML overrides of `args.config` applied) as `args` say;
/// returns the summary to print.
pub fn train(model: &Model, args: &TrainArgs) -> Result<String, String> {
    let config = args.resolve(settings(model)?, ModelSettings::AppliedByCompiler).map_err(|e| e.to_string())?;
    let run_dir = args.run_dir().expect("clap requires -o or --resume");
    use_threads(config.threads);

    let training = TrainingGraph::new(model, &config.frozen).map_err(|e| e.to_string())?;
    let mut state = initial_state(model, &training, args, &config)?;
    let set = open_training_set(&config)?;
    // LLVM's level 3, as `mrc compile --train`: the same step in process as in a program.
    let mut step = JitStep::compile(&training, 3).map_err(|e| e.to_string())?;
    // Declared before the evaluator, which calls into its code.
    let inference;
    let evaluator: Option<Box<dyn Evaluate>> = match &config.val_data {
        Some(val) => {
            let graph = &model.graph;
            inference = JitForward::compile(&Cpu, graph, &graph.outputs, 2).map_err(|e| e.to_string())?;
            let input = image_input(graph)?;
            let category_ids = set.labels_to_category_ids().to_vec();
            // SAFETY: `inference` was compiled for its interface and outlives the training.
            let evaluation = unsafe {
                CocoEvaluation::new(inference.function, inference.interface.clone(), input, val, config.val_images.as_deref(), category_ids)
            };
            Some(Box::new(evaluation.map_err(|e| e.to_string())?))
        }
        None => None,
    };
    train_on_coco(&mut step, &mut state, &config, set, transform(model)?, args.resume.is_some(), run_dir, evaluator)
}

/// The name of the inference network's image input, which evaluation feeds.
pub(crate) fn image_input(graph: &Graph) -> Result<String, String> {
    graph.inputs.first().map(|&n| graph.nodes[n].name.clone()).ok_or_else(|| "the network has no input".to_owned())
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
pub(crate) fn settings(model: &Model) -> Result<TrainConfig, String> {
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
pub(crate) fn transform(model: &Model) -> Result<Transform, String> {
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

