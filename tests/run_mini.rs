//! `models/mini.model` executed in process (dense segments JIT-compiled, built-ins in the
//! runtime) against torchvision's intermediate tensors of the fixtures (`model/outputs.safetensors`).

mod common;

use mrc::run::{Executor, HostTensor};
use mrc_runtime::weights::Weights;

fn image(path: &std::path::Path) -> HostTensor {
    let rgb = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let (w, h) = rgb.dimensions();
    HostTensor::U8 { shape: vec![h as usize, w as usize, 3], data: rgb.into_raw() }
}

#[test]
fn fpn_maps_of_img0_match_torchvision() {
    let model = common::load("models/mini.model", None);
    let fixtures = common::fixtures().join("model");
    let weights = Weights::open(fixtures.join("weights.safetensors")).unwrap();
    let reference = Weights::open(fixtures.join("outputs.safetensors")).unwrap();
    let levels = [
        ("fpn.0", "backbone.fpn.layer_blocks.0.0"),
        ("fpn.1", "backbone.fpn.layer_blocks.1.0"),
        ("fpn.2", "backbone.fpn.layer_blocks.2.0"),
        ("fpn.pool", "backbone.fpn.pool"),
    ];
    let dumps: Vec<String> = levels.iter().map(|(_, node)| node.to_string()).collect();
    let executor = Executor::new(&model.graph, weights, &dumps).unwrap();
    let outputs = executor.run(vec![("image".into(), image(&fixtures.join("images/img0.png")))], true).unwrap();
    for ((fixture, node), (name, tensor)) in levels.iter().zip(&outputs) {
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
