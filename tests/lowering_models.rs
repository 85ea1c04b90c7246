//! Whole networks through the emitter: the MLIR of the small models in `tests/lowering/`,
//! pinned by snapshots and lowered to LLVM; the built-ins as calls into the runtime; and the
//! errors for what cannot be lowered.

use std::path::Path;

use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use mrc::lowering::{BuiltIns, create_context, emit_forward, Products, lower_to_llvm, LoweringError};
use mrc::run::{Executor, HostTensor};
use mrc_runtime::detection::{self, RoiPoolParams, TensorF32};
use mrc_runtime::ops::multiscale::MultiScalePoolParams;
use mrc_runtime::ops::roi_align::{PoolMode, RoiAlignParams};
use mrc_runtime::weights::Weights;

fn load(path: &Path) -> Model {
    let mut sources = SourceMap::default();
    expand::load(&mut sources, path, None).unwrap_or_else(|d| panic!("{} does not expand:\n{}", path.display(), d.render(&sources)))
}

/// Expands a model text written to a temporary file named `name`.
fn load_text(name: &str, text: &str) -> Model {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(name);
    std::fs::write(&path, text).unwrap();
    load(&path)
}

#[test]
fn emitted_mlir_of_small_models() {
    insta::glob!("lowering/*.model", |path| {
        let model = load(path);
        let context = create_context();
        let (mut module, signature) = emit_forward(&context, &model.graph, Products::RuntimeGemm, BuiltIns::Runtime).unwrap();
        let arguments: Vec<String> = signature.arguments.iter().map(|a| format!("{}: {}", a.name, a.ty)).collect();
        let results: Vec<String> = signature.results.iter().map(|r| format!("{}: {}", r.name, r.ty)).collect();
        insta::assert_snapshot!(format!(
            "arguments:\n  {}\nresults:\n  {}\n\n{}",
            arguments.join("\n  "),
            results.join("\n  "),
            module.as_operation()
        ));
        lower_to_llvm(&context, &mut module).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    });
}

#[test]
fn arguments_are_inputs_then_state_in_state_dict_order() {
    let model = load(Path::new("tests/lowering/fpn_top_down.model"));
    let context = create_context();
    let (_, signature) = emit_forward(&context, &model.graph, Products::RuntimeGemm, BuiltIns::Runtime).unwrap();
    let names: Vec<&str> = signature.arguments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "c4",
            "c5",
            "inner_blocks.1.weight",
            "inner_blocks.1.bias",
            "inner_blocks.0.weight",
            "inner_blocks.0.bias",
            "layer_blocks.1.weight",
            "layer_blocks.1.bias",
            "layer_blocks.0.weight",
            "layer_blocks.0.bias",
        ]
    );
    let results: Vec<&str> = signature.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(results, ["p4", "p5", "p6"]);
}

#[test]
fn detection_operators_become_calls_into_the_runtime() {
    let model = load(Path::new("models/mini.model"));
    let context = create_context();
    let (module, _) = emit_forward(&context, &model.graph, Products::RuntimeGemm, BuiltIns::Runtime).unwrap();
    let text = module.as_operation().to_string();
    for op in ["preprocess", "anchors", "rpn_proposals", "multiscale_roi_align", "postprocess_detections", "mask_probs", "rescale_boxes", "paste_masks", "conv_matmul", "linear"] {
        assert!(text.contains(&format!("func.func private @mrc_{op}(")), "no declaration of `mrc_{op}`");
        assert!(text.contains(&format!("call @mrc_{op}(")), "no call of `mrc_{op}`");
    }
    // Declared once, with read-only arguments and the C interface.
    assert_eq!(text.matches("func.func private @mrc_multiscale_roi_align(").count(), 1);
    assert!(text.contains("bufferization.access = \"read\""));
}

/// The pooling and keypoint built-ins that the shipped R50 and mini models do not call, in
/// one network: what the JIT-compiled calls return is what the runtime's functions compute on
/// the same tensors, for four boxes and for none.
#[test]
fn every_pooling_and_keypoint_builtin_runs_through_its_runtime_entry() {
    let model = load_text(
        "detection_operators.model",
        "network t(x: f32[1, 4, H, W], y: f32[1, 4, H2, W2], size: i64[2], boxes: f32[K, 4], heatmaps: f32[K, 3, 8, 8])
    -> (aligned: f32[K, 4, 5, 5], maxed: f32[K, 4, 2, 3], pooled: f32[K, 4, 3, 3], levels: f32[K, 4, 3, 3], keypoints: f32[K, 3, 3], scores: f32[K, 3]) {
    let aligned = roi_align(x, boxes, output_size: 5, spatial_scale: 0.25, sampling_ratio: 2, aligned: true)
    let maxed = roi_align(x, boxes, output_size: [2, 3], spatial_scale: 0.25, mode: \"max\")
    let pooled = roi_pool(x, boxes, output_size: 3, spatial_scale: 0.25)
    let levels = multiscale_roi_pool([x, y], boxes, size, output_size: 3, canonical_scale: 32)
    let (keypoints, scores) = heatmaps_to_keypoints(heatmaps, boxes)
    return (aligned, maxed, pooled, levels, keypoints, scores)
}
",
    );
    let executor = Executor::new(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let values = |n: usize, scale: f32| (0..n).map(|i| (i as f32 * 0.37).sin() * scale).collect::<Vec<f32>>();
    let tensor = |shape: Vec<usize>, data: Vec<f32>| TensorF32::new(shape, data).unwrap();
    let (x, y) = (tensor(vec![1, 4, 16, 16], values(1024, 3.0)), tensor(vec![1, 4, 8, 8], values(256, 2.0)));
    let all_boxes = [[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 12.5, 14.0], [0.0, 0.0, 63.0, 63.0], [20.0, 5.0, 50.0, 25.0]];
    for k in [4, 0] {
        let boxes = TensorF32::from_boxes(&all_boxes[..k]);
        let heatmaps = tensor(vec![k, 3, 8, 8], values(k * 192, 5.0));
        let host = |t: &TensorF32| HostTensor::F32 { shape: t.shape.clone(), data: t.data.clone() };
        let size = HostTensor::I64 { shape: vec![2], data: vec![64, 64] };
        let inputs =
            [("x", host(&x)), ("y", host(&y)), ("size", size), ("boxes", host(&boxes)), ("heatmaps", host(&heatmaps))];
        let inputs: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let outputs = executor.run(&inputs).unwrap();

        let align = |output_size, sampling_ratio, aligned, mode| RoiAlignParams {
            output_size,
            spatial_scale: 0.25,
            sampling_ratio,
            aligned,
            mode,
        };
        let (keypoints, scores) = detection::heatmaps_to_keypoints(&heatmaps, &boxes).unwrap();
        let expected = [
            detection::roi_align(&x, &boxes, &align([5, 5], 2, true, PoolMode::Avg)).unwrap(),
            detection::roi_align(&x, &boxes, &align([2, 3], -1, false, PoolMode::Max)).unwrap(),
            detection::roi_pool(&x, &boxes, &RoiPoolParams { output_size: [3, 3], spatial_scale: 0.25 }).unwrap(),
            detection::multiscale_roi_pool(
                &[x.clone(), y.clone()],
                &boxes,
                [64, 64],
                &MultiScalePoolParams { canonical_scale: 32.0, ..MultiScalePoolParams::new([3, 3]) },
            )
            .unwrap(),
            keypoints,
            scores,
        ];
        for ((name, ours), theirs) in outputs.iter().zip(&expected) {
            assert_eq!(ours.shape(), theirs.shape, "{name} of {k} boxes");
            assert_eq!(ours.f32().unwrap(), theirs.data, "{name} of {k} boxes");
        }
    }
}

#[test]
fn ceil_mode_pooling_is_an_error_not_a_wrong_result() {
    let model = load_text("ceil_mode.model", "network t(x: f32[1, 2, H, W]) -> (y: f32[1, 2, _, _]) {\n    return max_pool2d(x, kernel: 3, stride: 2, ceil_mode: true) @pool\n}\n");
    let context = create_context();
    let result = emit_forward(&context, &model.graph, Products::RuntimeGemm, BuiltIns::Runtime).map(|_| ());
    match result {
        Err(LoweringError::Unsupported { op: "max_pool2d", node, reason }) => {
            assert_eq!(node, "pool");
            assert!(reason.contains("ceil_mode"), "{reason}");
        }
        Err(other) => panic!("expected an unsupported `ceil_mode`, got: {other}"),
        Ok(_) => panic!("ceil_mode pooling lowered"),
    }
}
