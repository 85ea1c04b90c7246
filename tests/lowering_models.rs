//! Whole networks through the emitter: the MLIR of the small models in `tests/lowering/`,
//! pinned by snapshots and lowered to LLVM, and the errors for what cannot be lowered yet.

use std::path::Path;

use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use mrc::lowering::{create_context, emit_forward, Products, lower_to_llvm, LoweringError};

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
        let (mut module, signature) = emit_forward(&context, &model.graph, Products::RuntimeGemm).unwrap();
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
    let (_, signature) = emit_forward(&context, &model.graph, Products::RuntimeGemm).unwrap();
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
    let (module, _) = emit_forward(&context, &model.graph, Products::RuntimeGemm).unwrap();
    let text = module.as_operation().to_string();
    for op in ["preprocess", "anchors", "rpn_proposals", "multiscale_roi_align", "postprocess_detections", "mask_probs", "rescale_boxes", "paste_masks", "conv_matmul", "linear"] {
        assert!(text.contains(&format!("func.func private @mrc_{op}(")), "no declaration of `mrc_{op}`");
        assert!(text.contains(&format!("call @mrc_{op}(")), "no call of `mrc_{op}`");
    }
    // Declared once, with read-only arguments and the C interface.
    assert_eq!(text.matches("func.func private @mrc_multiscale_roi_align(").count(), 1);
    assert!(text.contains("bufferization.access = \"read\""));
}

#[test]
fn operators_without_a_runtime_entry_are_reported() {
    let model = load_text("roi_pool.model", "network t(x: f32[1, 2, H, W], boxes: f32[K, 4]) -> (y: f32[K, 2, 7, 7]) {\n    return roi_pool(x, boxes, output_size: 7, spatial_scale: 0.25)\n}\n");
    let context = create_context();
    match emit_forward(&context, &model.graph, Products::RuntimeGemm).map(|_| ()) {
        Err(error @ LoweringError::RuntimeBuiltin { op: "roi_pool", .. }) => {
            assert!(error.to_string().starts_with("not lowered yet: `roi_pool`"), "{error}");
        }
        Err(other) => panic!("expected `roi_pool` to be reported, got: {other}"),
        Ok(_) => panic!("roi_pool lowered although the runtime has no entry for it"),
    }
}

#[test]
fn ceil_mode_pooling_is_an_error_not_a_wrong_result() {
    let model = load_text("ceil_mode.model", "network t(x: f32[1, 2, H, W]) -> (y: f32[1, 2, _, _]) {\n    return max_pool2d(x, kernel: 3, stride: 2, ceil_mode: true) @pool\n}\n");
    let context = create_context();
    let result = emit_forward(&context, &model.graph, Products::RuntimeGemm).map(|_| ());
    match result {
        Err(LoweringError::Unsupported { op: "max_pool2d", node, reason }) => {
            assert_eq!(node, "pool");
            assert!(reason.contains("ceil_mode"), "{reason}");
        }
        Err(other) => panic!("expected an unsupported `ceil_mode`, got: {other}"),
        Ok(_) => panic!("ceil_mode pooling lowered"),
    }
}
