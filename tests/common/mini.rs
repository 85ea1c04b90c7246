//! The mini model in process against torchvision's intermediate tensors.

use super::detections::{compare, iou, our_detections, reference_detections};
use super::image;
use mrc::graph::Graph;
use mrc::run::{Executor, HostTensor, RunError};
use mrc_runtime::weights::Weights;

/// How a test compiles a graph: `Executor::new` (the CPU) or `Executor::on_emulated_device`.
pub type Compile = fn(&Graph, Weights, &[String], u8) -> Result<Executor, RunError>;

/// The FPN maps of the fixture's first image, computed by the executor `compile` makes,
/// against torchvision's (1e-4 of the largest magnitude).
pub fn assert_fpn_maps_of_img0_match_torchvision(compile: Compile) {
    let model = super::load("models/mini.model", None);
    let fixtures = super::fixtures().join("model");
    let weights = Weights::open(fixtures.join("weights.safetensors")).unwrap();
    let reference = Weights::open(fixtures.join("outputs.safetensors")).unwrap();
    let levels = [
        ("fpn.0", "backbone.fpn.layer_blocks.0.0"),
        ("fpn.1", "backbone.fpn.layer_blocks.1.0"),
        ("fpn.2", "backbone.fpn.layer_blocks.2.0"),
        ("fpn.pool", "backbone.fpn.pool"),
    ];
    let dumps: Vec<String> = levels.iter().map(|(_, node)| node.to_string()).collect();
    let executor = compile(&model.graph, weights, &dumps, 3).unwrap();
    let outputs = executor.run(&[("image", &image(&fixtures.join("images/img0.png")))]).unwrap();
    for ((fixture, node), (name, tensor)) in levels.iter().zip(&outputs[model.graph.outputs.len()..]) {
        assert_eq!(node, name);
        let expected = reference.get(&format!("img0.{fixture}")).or_else(|| reference.get(fixture)).unwrap();
        let expected_values = expected.as_f32().unwrap();
        let HostTensor::F32 { shape, data } = tensor else { panic!("{name} is not f32") };
        assert_eq!(&shape[1..], expected.shape(), "{fixture}: batch dimension dropped in the fixture");
        let scale = expected_values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let error = data.iter().zip(expected_values).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(error <= 1e-4 * (1.0 + scale), "{fixture}: max |a - b| = {error}, max |b| = {scale}");
        eprintln!("{fixture}: max |a - b| = {error:.3e} (max |b| = {scale:.3})");
    }
}


/// Detections on every fixture image and the RPN's proposals, from the executor `compile`
/// makes at `level`, against torchvision's (the fixture README's criteria).
pub fn assert_detections_and_proposals_match_torchvision(compile: Compile, level: u8) {
    let model = super::load("models/mini.model", None);
    let fixtures = super::fixtures().join("model");
    let weights = Weights::open(fixtures.join("weights.safetensors")).unwrap();
    let reference = Weights::open(fixtures.join("outputs.safetensors")).unwrap();
    let description: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("model.json")).unwrap()).unwrap();
    let executor = compile(&model.graph, weights, &["rpn.proposals".to_string()], level).unwrap();
    assert_eq!(executor.passes().contains(&"fold-batch-norm"), level > 0, "passes run: {:?}", executor.passes());
    let mut problems = vec![];
    let images = description["images"].as_array().unwrap();
    assert!(!images.is_empty());
    for entry in images {
        let file = entry["image"].as_str().unwrap();
        let name = std::path::Path::new(file).file_stem().unwrap().to_str().unwrap();
        let outputs = executor.run(&[("image", &image(&fixtures.join(file)))]).unwrap();
        let ours = our_detections(&outputs);
        let pixels = outputs.iter().find(|(n, _)| n == "masks").map(|(_, m)| m.shape()[2] * m.shape()[3]).unwrap();
        let theirs = reference_detections(&reference, name, pixels);
        eprintln!("{name}: {} detections (torchvision {})", ours.len(), theirs.len());
        problems.extend(compare(name, &theirs, &ours));

        if let Some(expected) = reference.get(&format!("{name}.rpn.proposals")) {
            let proposals = outputs.iter().find(|(n, _)| n == "rpn.proposals").unwrap().1.f32().unwrap();
            let expected: Vec<[f32; 4]> = expected.as_f32().unwrap().chunks_exact(4).map(|c| c.try_into().unwrap()).collect();
            let mut used = vec![false; proposals.len() / 4];
            let matched = expected
                .iter()
                .filter(|e| {
                    let hit = proposals.chunks_exact(4).enumerate().position(|(i, p)| !used[i] && iou(&p.try_into().unwrap(), e) >= 0.99);
                    hit.map(|i| used[i] = true).is_some()
                })
                .count();
            eprintln!("{name}: {matched} of {} proposals matched", expected.len());
            assert!(matched as f64 >= 0.99 * expected.len() as f64, "{name}: {matched} of {} proposals", expected.len());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
