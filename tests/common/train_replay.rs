//! One training step of the mini model replayed from torchvision's (`$MRC_FIXTURES/train`, else
//! the project's copy; its README says what each tensor is), for every place a step runs. The
//! samplers are random in torchvision, so their recorded choices are replayed: the keys of the
//! chosen candidates are 0, the others' 1, which makes the balanced sampler pick exactly them.
//! The recorded RPN proposals are fed to the RoI heads, as the README allows (NMS near-ties may
//! reorder a few). Then the five losses agree within 1e-4 relative, every parameter's gradient
//! within ‖g − g_ref‖ ≤ 1e-3·‖g_ref‖ + 1e-6, and every batch norm's running statistics within
//! |a − b| ≤ 1e-5·|b| + 1e-6.

use std::path::PathBuf;

use mrc::graph::{NodeKind, Port};
use mrc::ops::AttrsExt;
use mrc::train::TrainingGraph;
use mrc_runtime::abi::forward::HostTensor;
use mrc_runtime::data::batch::{collate, Example};
use mrc_runtime::ops::preprocess::Transform;
use mrc_runtime::train::{ModelState, StepOutput};
use mrc_runtime::weights::Weights;

fn train_fixtures() -> PathBuf {
    super::fixtures().join("train")
}

fn bytes<'w>(weights: &'w Weights, name: &str) -> &'w [u8] {
    weights.get(name).unwrap_or_else(|| panic!("no `{name}`")).bytes()
}

fn f32s(weights: &Weights, name: &str) -> Vec<f32> {
    bytes(weights, name).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn i64s(weights: &Weights, name: &str) -> Vec<i64> {
    bytes(weights, name).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn chosen(step: &Weights, prefix: &str) -> Vec<bool> {
    let [positive, negative] = ["positive", "negative"].map(|m| step.get(&format!("{prefix}.{m}")).unwrap().bytes().to_vec());
    positive.iter().zip(&negative).map(|(&p, &n)| p != 0 || n != 0).collect()
}

/// Keys that make the sampler take exactly the `chosen` candidates.
fn replay_keys(chosen: impl IntoIterator<Item = bool>) -> Vec<f32> {
    chosen.into_iter().map(|c| if c { 0.0 } else { 1.0 }).collect()
}

/// The mini model's training graph with the samplers' keys and the RPN's proposals as inputs.
pub fn training_graph() -> TrainingGraph {
    let model = super::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/mini.model"), None);
    let mut training = TrainingGraph::new(&model, &[]).unwrap();
    let graph = &mut training.graph;
    let nodes: Vec<_> = graph.op_nodes().map(|(n, op)| (n, op.name())).collect();
    for (node, name) in nodes {
        let NodeKind::Op { attrs, .. } = graph.nodes[node].kind.clone() else { continue };
        let replaced: Vec<String> = match name {
            "uniform_keys" => vec![format!("replay:keys:{}", attrs.int("stream"))],
            "rpn_proposals_batch" => vec!["replay:proposals".into(), "replay:proposal_image".into()],
            _ => continue,
        };
        for (output, input) in replaced.iter().enumerate() {
            let ty = graph.nodes[node].outputs[output].clone();
            let replay = graph.add_input(input, ty, None);
            graph.replace_uses(Port { node, output }, Port { node: replay, output: 0 });
        }
    }
    training
}

/// The state before the step: the fixture model's weights.
pub fn initial_state(training: &TrainingGraph) -> ModelState {
    let weights = Weights::open(super::fixtures().join("model/weights.safetensors")).unwrap();
    ModelState::from_weights(&weights, &training.layout()).unwrap()
}

/// The step's inputs: the batch as torchvision's transform makes it (320×320 from 256×256), and
/// the replayed choices.
pub fn inputs() -> Vec<(&'static str, HostTensor)> {
    let train = train_fixtures();
    let step_tensors = Weights::open(train.join("step.safetensors")).unwrap();
    let targets = Weights::open(train.join("targets.safetensors")).unwrap();
    let mut examples = vec![];
    for i in 0..2 {
        let image = image::open(train.join(format!("images/img{i}.png"))).unwrap().to_rgb8();
        let boxes = f32s(&targets, &format!("img{i}.boxes")).chunks(4).map(|b| [b[0], b[1], b[2], b[3]]).collect();
        let labels = i64s(&targets, &format!("img{i}.labels"));
        let masks = targets.get(&format!("img{i}.masks")).unwrap().bytes().to_vec();
        examples.push(Example { image_id: i as i64, image, boxes, labels, masks });
    }
    let transform = Transform {
        min_size: 320,
        max_size: 320,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        size_divisible: 32,
    };
    let batch = collate(&examples, &transform).unwrap();

    let anchors = step_tensors.get("rpn.img0.positive").unwrap().shape()[0];
    let rpn_keys = replay_keys((0..2).flat_map(|i| chosen(&step_tensors, &format!("rpn.img{i}"))));
    let mut proposals = vec![];
    let mut proposal_image = vec![];
    let mut proposal_keys = vec![];
    let mut gt_keys = vec![];
    for i in 0..2 {
        let recorded = f32s(&step_tensors, &format!("rpn.img{i}.proposals"));
        let count = recorded.len() / 4;
        proposals.extend(recorded);
        proposal_image.extend(std::iter::repeat_n(i as i64, count));
        let roi = chosen(&step_tensors, &format!("roi.img{i}"));
        proposal_keys.extend(replay_keys(roi[..count].iter().copied()));
        gt_keys.extend(replay_keys(roi[count..].iter().copied()));
    }
    let g = batch.gt_boxes.len();
    let tensor = |data: Vec<f32>, shape: Vec<usize>| HostTensor::F32 { shape, data };
    vec![
        ("images", tensor(batch.images.clone(), batch.image_shape.to_vec())),
        ("image_sizes", HostTensor::I64 { shape: vec![2, 2], data: batch.image_sizes.iter().flatten().copied().collect() }),
        ("gt_boxes", tensor(batch.gt_boxes.iter().flatten().copied().collect(), vec![g, 4])),
        ("gt_labels", HostTensor::I64 { shape: vec![g], data: batch.gt_labels.clone() }),
        ("gt_image", HostTensor::I64 { shape: vec![g], data: batch.gt_image.clone() }),
        ("gt_masks", HostTensor::U8 { shape: batch.mask_shape.to_vec(), data: batch.gt_masks.clone() }),
        ("seed", HostTensor::I64 { shape: vec![1], data: vec![0] }),
        ("replay:keys:0", tensor(rpn_keys, vec![2, anchors])),
        ("replay:keys:1", tensor(proposal_keys, vec![proposal_image.len()])),
        ("replay:keys:2", tensor(gt_keys, vec![g])),
        ("replay:proposals", tensor(proposals, vec![proposal_image.len(), 4])),
        ("replay:proposal_image", HostTensor::I64 { shape: vec![proposal_image.len()], data: proposal_image }),
    ]
}

/// Checks a step's `output` and the `state` it updated against torchvision's step.
pub fn assert_matches_torchvision(output: &StepOutput, state: &ModelState) {
    let train = train_fixtures();
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(train.join("step.json")).unwrap()).unwrap();
    let step_tensors = Weights::open(train.join("step.safetensors")).unwrap();
    let mut failures = vec![];
    for (name, value) in &output.losses {
        let expected = settings["losses"][name].as_f64().unwrap();
        eprintln!("{name}: {value} (torchvision {expected})");
        if (value - expected).abs() > 1e-4 * expected.abs() {
            failures.push(format!("{name}: {value} != {expected}"));
        }
    }

    let grads = Weights::open(train.join("grads.safetensors")).unwrap();
    let trainable: Vec<_> = state.tensors.iter().filter(|t| t.trainable).collect();
    assert_eq!(trainable.len(), output.gradients.len());
    assert_eq!(grads.len(), trainable.len(), "the fixture's gradients are every parameter's");
    for (tensor, gradient) in trainable.iter().zip(&output.gradients) {
        let reference = f32s(&grads, &tensor.name);
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let difference = norm(&mut gradient.iter().zip(&reference).map(|(a, b)| *a as f64 - *b as f64));
        let reference_norm = norm(&mut reference.iter().map(|&b| b as f64));
        if difference > 1e-3 * reference_norm + 1e-6 {
            failures.push(format!("gradient of {}: ‖g − g_ref‖ = {difference:e}, ‖g_ref‖ = {reference_norm:e}", tensor.name));
        }
    }

    let mut statistics = 0;
    for tensor in &state.tensors {
        let name = format!("after.{}", tensor.name);
        if step_tensors.get(&name).is_none() {
            continue;
        }
        statistics += 1;
        let recorded = f32s(&step_tensors, &name);
        if let Some((a, b)) = tensor.data.iter().zip(&recorded).find(|(a, b)| (*a - *b).abs() > 1e-5 * b.abs() + 1e-6) {
            failures.push(format!("{} after the step: {a} != {b}", tensor.name));
        }
    }
    assert!(statistics > 0, "the fixture records running statistics");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
