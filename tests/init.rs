//! `mrc init`: every state tensor of the model with its shape, each kind of layer drawn from
//! torchvision's distribution (sample mean and deviation against the rule's), the same file for
//! the same seed.

mod common;

use mrc::init::{init, plan, Draw};
use mrc::lowering::expected_state;
use mrc_runtime::weights::{Dtype, Weights};
use std::process::Command;

/// `√2/√fan_out`: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
fn kaiming_normal_fan_out(fan_out: usize) -> Draw {
    Draw::Normal { std: 2f64.sqrt() / (fan_out as f64).sqrt() }
}

/// `√3·gain/√fan_in` with `gain = √(2/(1 + a²))`: `kaiming_uniform_(a)`.
fn kaiming_uniform(a: f64, fan_in: usize) -> Draw {
    Draw::Uniform { bound: 3f64.sqrt() * (2.0 / (1.0 + a * a)).sqrt() / (fan_in as f64).sqrt() }
}

/// PyTorch's default bias, U(±1/√fan_in).
fn fan_in_bias(fan_in: usize) -> Draw {
    Draw::Uniform { bound: 1.0 / (fan_in as f64).sqrt() }
}

fn draw_of(planned: &[mrc::init::Planned], name: &str) -> Draw {
    planned.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no {name}")).draw
}

/// Checks a drawn tensor against its distribution: the sample mean within 4 standard errors
/// of 0 and the sample deviation within `tolerance` (relative) of the rule's; uniform values
/// within their bound; constants exactly. Returns the deviation found, for the report.
fn check(name: &str, values: &[f32], draw: Draw, tolerance: f64) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let expected = match draw {
        Draw::Constant(c) => {
            assert!(values.iter().all(|&v| v as f64 == c), "{name}: not all {c}");
            return 0.0;
        }
        Draw::Uniform { bound } => {
            assert!(values.iter().all(|&v| (v as f64).abs() <= bound * (1.0 + 1e-6)), "{name}: beyond ±{bound}");
            bound / 3f64.sqrt()
        }
        Draw::Normal { std } => std,
    };
    assert!(mean.abs() <= 4.0 * expected / n.sqrt(), "{name}: mean {mean}, deviation {expected}");
    assert!((std / expected - 1.0).abs() <= tolerance, "{name}: deviation {std}, expected {expected}");
    eprintln!("{name}: {} values, deviation {std:.6} (expected {expected:.6}), mean {mean:.2e}", values.len());
    std
}

#[test]
fn each_kind_of_r50_layer_is_drawn_as_torchvision_draws_it() {
    let model = common::load("models/mask_rcnn.model", None);
    let weights = init(&model.graph, 0).unwrap();
    weights.validate(&expected_state(&model.graph)).unwrap();
    let planned = plan(&model.graph).unwrap();
    // (tensor, its distribution by torchvision's rule, tolerance on the deviation)
    let kinds = [
        // ResNet convolutions: kaiming_normal_(fan_out, relu).
        ("backbone.body.conv1.weight", kaiming_normal_fan_out(64 * 49), 0.03),
        ("backbone.body.layer3.0.conv2.weight", kaiming_normal_fan_out(256 * 9), 0.03),
        ("backbone.body.layer4.2.conv3.weight", kaiming_normal_fan_out(2048), 0.03),
        // Frozen batch norms: the identity.
        ("backbone.body.bn1.weight", Draw::Constant(1.0), 0.0),
        ("backbone.body.layer2.1.bn2.bias", Draw::Constant(0.0), 0.0),
        ("backbone.body.layer1.0.downsample.1.running_mean", Draw::Constant(0.0), 0.0),
        ("backbone.body.layer1.0.downsample.1.running_var", Draw::Constant(1.0), 0.0),
        // FPN: kaiming_uniform_(a=1), bias 0.
        ("backbone.fpn.inner_blocks.3.0.weight", kaiming_uniform(1.0, 2048), 0.03),
        ("backbone.fpn.layer_blocks.0.0.weight", kaiming_uniform(1.0, 256 * 9), 0.03),
        ("backbone.fpn.inner_blocks.0.0.bias", Draw::Constant(0.0), 0.0),
        // RPN head: normal(std=0.01), bias 0.
        ("rpn.head.conv.0.0.weight", Draw::Normal { std: 0.01 }, 0.03),
        ("rpn.head.bbox_pred.weight", Draw::Normal { std: 0.01 }, 0.05),
        ("rpn.head.cls_logits.bias", Draw::Constant(0.0), 0.0),
        // Box head and predictor: PyTorch's Linear defaults.
        ("roi_heads.box_head.fc6.weight", kaiming_uniform(5f64.sqrt(), 256 * 49), 0.03),
        ("roi_heads.box_head.fc6.bias", fan_in_bias(256 * 49), 0.06),
        ("roi_heads.box_predictor.cls_score.weight", kaiming_uniform(5f64.sqrt(), 1024), 0.03),
        ("roi_heads.box_predictor.bbox_pred.weight", kaiming_uniform(5f64.sqrt(), 1024), 0.03),
        // Mask head: kaiming_normal_(fan_out, relu), bias 0.
        ("roi_heads.mask_head.0.0.weight", kaiming_normal_fan_out(256 * 9), 0.03),
        ("roi_heads.mask_head.3.0.bias", Draw::Constant(0.0), 0.0),
        // Mask predictor: kaiming_normal_(fan_out, relu); biases keep the default. The
        // transposed convolution's weight is [in, out, k, k]: fan-out 256·4, fan-in 256·4.
        ("roi_heads.mask_predictor.conv5_mask.weight", kaiming_normal_fan_out(256 * 4), 0.03),
        ("roi_heads.mask_predictor.conv5_mask.bias", fan_in_bias(256 * 4), 0.1),
        ("roi_heads.mask_predictor.mask_fcn_logits.weight", kaiming_normal_fan_out(91), 0.03),
    ];
    for (name, draw, tolerance) in kinds {
        assert_eq!(draw_of(&planned, name), draw, "{name}: the rule chosen");
        let tensor = weights.get(name).unwrap();
        check(name, tensor.as_f32().unwrap(), draw, tolerance);
    }
}

#[test]
fn the_c4_model_follows_the_r50_rules() {
    let model = common::load("models/mask_rcnn_c4.model", None);
    let planned = plan(&model.graph).unwrap();
    for (name, draw) in [
        ("backbone.body.layer3.5.conv3.weight", kaiming_normal_fan_out(1024)),
        ("rpn.head.conv.0.0.weight", Draw::Normal { std: 0.01 }),
        ("roi_heads.res5.0.conv2.weight", kaiming_normal_fan_out(512 * 9)),
        ("roi_heads.res5.2.bn3.running_var", Draw::Constant(1.0)),
        ("roi_heads.box_predictor.cls_score.weight", kaiming_uniform(5f64.sqrt(), 2048)),
        ("roi_heads.mask_head.conv5_mask.weight", kaiming_normal_fan_out(2048 * 4)),
        ("roi_heads.mask_head.conv5_mask.bias", fan_in_bias(256 * 4)),
        ("roi_heads.mask_head.mask_fcn_logits.weight", kaiming_normal_fan_out(81)),
    ] {
        assert_eq!(draw_of(&planned, name), draw, "{name}");
    }
    assert_eq!(planned.len(), model.graph.state.len());
}

fn mrc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mrc")).args(args).output().unwrap()
}

#[test]
fn mrc_init_writes_every_state_tensor_and_the_same_file_for_the_same_seed() {
    let scratch = common::scratch();
    let path = |name: &str| scratch.path().join(name).to_str().unwrap().to_owned();
    for (file, seed) in [("a.safetensors", "7"), ("b.safetensors", "7"), ("c.safetensors", "8")] {
        let out = mrc(&["init", "models/mini.model", "--seed", seed, "-o", &path(file)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}: 128 tensors, seed {seed}\n", path(file)));
    }
    let bytes = |file: &str| std::fs::read(path(file)).unwrap();
    assert_eq!(bytes("a.safetensors"), bytes("b.safetensors"), "the same seed gave different files");

    // Names, shapes and types exactly as `mrc params` lists them, batch counters included.
    let model = common::load("models/mini.model", None);
    let (a, c) = (Weights::open(path("a.safetensors")).unwrap(), Weights::open(path("c.safetensors")).unwrap());
    let expected = expected_state(&model.graph);
    a.validate(&expected).unwrap();
    let mut names: Vec<&str> = a.iter().map(|(name, _)| name).collect();
    let mut listed: Vec<&str> = expected.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    listed.sort();
    assert_eq!(names, listed);
    let counter = a.get("backbone.body.bn1.num_batches_tracked").unwrap();
    assert_eq!((counter.dtype(), counter.shape(), counter.bytes()), (Dtype::I64, &[][..], &[0u8; 8][..]));

    // Another seed: other values wherever the rule is random, the same constants elsewhere.
    for p in plan(&model.graph).unwrap() {
        let same = a.get(&p.name).unwrap().bytes() == c.get(&p.name).unwrap().bytes();
        assert_eq!(same, matches!(p.draw, Draw::Constant(_)), "{}: seeds 7 and 8", p.name);
    }
}
