//! The compiled training step under the runtime's trainer, on the project's shapes subset
//! (`tests/fixtures/shapes/train`): a run stopped after two iterations and resumed from its
//! checkpoint gives the losses of an uninterrupted run (within 1e-6 relative), the batch
//! norms' running statistics come back from the checkpoint, and the final weights load as the
//! model's weights.

mod common;

use std::path::{Path, PathBuf};

use common::metrics_losses as losses;

use mrc::diagnostic::SourceMap;
use mrc::train::{JitStep, LoaderBatches, TrainingGraph};
use mrc_runtime::data::{BatchOptions, Loader, LoaderOptions, TrainingSet, TrainingSetOptions};
use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::train::{train, ModelState, Progress, StopFlag, TrainConfig, TrainOptions};
use mrc_runtime::weights::Weights;

fn project(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let mut sources = SourceMap::default();
    let model = mrc::expand::load(&mut sources, &project("models/mini.model"), None).unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let training = TrainingGraph::new(&model, &[]).unwrap();
    let mut step = JitStep::compile(&training, 2).unwrap();
    let initial = mrc::init::init(&model.graph, 7).unwrap();
    let data = project("tests/fixtures/shapes/train/annotations.json");
    let config = |iterations| TrainConfig { data: Some(data.clone()), batch_size: 2, iterations, checkpoint_every: 1, seed: 3, ..TrainConfig::default() };
    let transform = Transform { min_size: 320, max_size: 320, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], size_divisible: 32 };
    let loader = || {
        let set = TrainingSet::open(&data, &TrainingSetOptions::default()).unwrap();
        let batch = BatchOptions { transform, hflip: 0.5, seed: 3 };
        LoaderBatches::new(Loader::new(set, LoaderOptions { batch_size: 2, shuffle: false, batch }).unwrap())
    };
    let mut run = |dir: &Path, iterations, resume| {
        let mut state = ModelState::from_weights(&initial, &training.layout()).unwrap();
        let mut log = vec![];
        let options = TrainOptions { resume, evaluator: None, stop: StopFlag::new(), progress: Progress::Quiet, log: &mut log };
        train(&mut step, &mut loader(), &mut state, &config(iterations), dir, options).unwrap();
        state
    };
    let directory = tempfile::tempdir().unwrap();
    let (whole, parts) = (directory.path().join("whole"), directory.path().join("parts"));
    let uninterrupted = run(&whole, 3, false);
    run(&parts, 2, false);
    let resumed = run(&parts, 3, true);

    let (expected, actual) = (losses(&whole), losses(&parts));
    assert_eq!(actual.len(), 3);
    for (iteration, (a, b)) in actual.iter().zip(&expected).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * y.abs(), "iteration {iteration}: {a:?} != {b:?}");
        }
    }
    assert_ne!(expected[0], expected[2], "training changes the losses");
    for (a, b) in resumed.tensors.iter().zip(&uninterrupted.tensors) {
        assert_eq!(a.data, b.data, "{} after the resumed run", a.name);
    }
    let weights = Weights::open(parts.join("weights.safetensors")).unwrap();
    weights.validate(&mrc::lowering::expected_state(&model.graph)).unwrap();
}

/// `--val`: the inference network compiled in process and run at the trainer's state scores
/// pycocotools' numbers for the fixture's trained mini model on its validation set
/// (`tests/fixtures/coco_eval`: shapes/val, crowd regions and a blank image).
#[test]
fn periodic_evaluation_scores_the_state_as_pycocotools() {
    use mrc_runtime::train::{CocoEvaluation, Evaluate};
    let mut sources = SourceMap::default();
    let model = mrc::expand::load(&mut sources, &project("models/mini.model"), None).unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let training = TrainingGraph::new(&model, &[]).unwrap();
    let weights = Weights::open(&project("tests/fixtures/model/weights.safetensors")).unwrap();
    let state = ModelState::from_weights(&weights, &training.layout()).unwrap();
    let graph = &model.graph;
    let inference = mrc::run::JitForward::compile(&mrc::targets::cpu::Cpu, graph, &graph.outputs, 2).unwrap();
    let input = graph.nodes[graph.inputs[0]].name.clone();
    let gt = project("tests/fixtures/coco_eval/gt.json");
    // SAFETY: `inference` was compiled for its interface and outlives the evaluation.
    let mut evaluation = unsafe { CocoEvaluation::new(inference.function, inference.interface.clone(), input, &gt, None, vec![0, 1, 2, 3]) }.unwrap();
    let scores = evaluation.evaluate(&state).unwrap();

    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(project("tests/fixtures/coco_eval/stats.json")).unwrap()).unwrap();
    assert_eq!(scores.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["bbox_AP", "segm_AP"]);
    for ((name, score), kind) in scores.iter().zip(["bbox", "segm"]) {
        let expected = stats[kind]["summary"][0].as_f64().unwrap();
        assert!((score - expected).abs() <= 1e-4, "{name}: {score} against pycocotools' {expected} on torchvision's detections");
    }
}
