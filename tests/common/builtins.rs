//! The built-in detection operators' kernel lowerings (`BuiltIns::Kernels`) against
//! torchvision's goldens (`tests/fixtures/ops/`, at the runtime's golden tolerances) or, for the
//! operators without goldens, against the runtime's implementations; each with zero boxes too.
//! Run by the executor a test binary chooses: the CPU with kernel built-ins, or the emulated
//! device.

use super::mini::Compile;
use mrc::run::HostTensor;
use mrc_runtime::detection::{self, TensorF32};
use mrc_runtime::weights::Weights;

/// `|a − b| ≤ rtol·|b| + atol`, as `runtime/tests/golden.rs` compares.
#[derive(Clone, Copy)]
pub struct Tolerance {
    pub rtol: f32,
    pub atol: f32,
}

/// The runtime's golden tolerance for floats.
pub const FLOAT: Tolerance = Tolerance { rtol: 1e-5, atol: 1e-6 };
/// The runtime's golden tolerance for pasted masks.
pub const PASTED: Tolerance = Tolerance { rtol: 0.0, atol: 1e-4 };

/// Compiles `text` (one network) with `compile` and runs it on `inputs`; the first output.
fn run(compile: Compile, name: &str, text: &str, inputs: &[(&str, HostTensor)]) -> HostTensor {
    let model = super::expand(name, text).unwrap_or_else(|d| panic!("{d}"));
    let executor = compile(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let inputs: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    executor.run(&inputs).unwrap().swap_remove(0).1
}

fn host(t: &TensorF32) -> HostTensor {
    HostTensor::F32 { shape: t.shape.clone(), data: t.data.clone() }
}

/// Asserts `actual` has `shape` and every value within `tolerance` of `expected`.
pub fn assert_close(case: &str, actual: &HostTensor, shape: &[usize], expected: &[f32], tolerance: Tolerance) {
    assert_eq!(actual.shape(), shape, "{case}: shape");
    let actual = actual.f32().unwrap();
    let bad: Vec<String> = actual
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (a, b))| !((*a - *b).abs() <= tolerance.rtol * b.abs() + tolerance.atol))
        .take(5)
        .map(|(i, (a, b))| format!("[{i}] {a} vs {b}"))
        .collect();
    assert!(bad.is_empty(), "{case}: values differ: {}", bad.join(", "));
}

fn values(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin() * scale).collect()
}

/// `mask_probs` for a head with 3 classes and for a class-agnostic one, for 4 masks and none.
pub fn mask_probs(compile: Compile) {
    for classes in [3, 1] {
        let text = format!(
            "network t(logits: f32[D, {classes}, 6, 5], labels: i64[D]) -> (probs: f32[D, 1, 6, 5]) {{\n    return mask_probs(logits, labels)\n}}\n"
        );
        for d in [4, 0] {
            let logits = TensorF32::new(vec![d, classes, 6, 5], values(d * classes * 30, 8.0)).unwrap();
            let labels: Vec<i64> = (0..d as i64).map(|i| (i * 2 + 1) % 3 + 1).collect();
            let labels = if classes == 1 { labels } else { labels.iter().map(|l| l - 1).collect() };
            let inputs = [("logits", host(&logits)), ("labels", HostTensor::I64 { shape: vec![d], data: labels.clone() })];
            let ours = run(compile, &format!("mask_probs_{classes}.model"), &text, &inputs);
            let theirs = detection::mask_probs(&logits, &labels).unwrap();
            assert_close(&format!("mask_probs of {d} masks of {classes} classes"), &ours, &theirs.shape, &theirs.data, FLOAT);
        }
    }
}

/// `rescale_boxes` from a resized frame to an image of another aspect, for 3 boxes and none.
pub fn rescale_boxes(compile: Compile) {
    let text = "network t(boxes: f32[D, 4], size: i64[2], image: u8[H, W, 3]) -> (rescaled: f32[D, 4]) {\n    return rescale_boxes(boxes, size, image)\n}\n";
    let all = [[1.5, 2.0, 30.25, 40.0], [0.0, 0.0, 319.0, 211.0], [100.1, 7.7, 120.9, 99.3]];
    for d in [3, 0] {
        let boxes = TensorF32::from_boxes(&all[..d]);
        let (from, to) = ([212, 320], [300, 451]);
        let inputs = [
            ("boxes", host(&boxes)),
            ("size", HostTensor::I64 { shape: vec![2], data: vec![from[0] as i64, from[1] as i64] }),
            ("image", HostTensor::U8 { shape: vec![to[0], to[1], 3], data: vec![0; to[0] * to[1] * 3] }),
        ];
        let ours = run(compile, "rescale_boxes.model", text, &inputs);
        let theirs = detection::rescale_boxes(&boxes, from, to).unwrap();
        assert_close(&format!("rescale_boxes of {d} boxes"), &ours, &theirs.shape, &theirs.data, FLOAT);
    }
}
