//! Whole networks through the emitter: the MLIR of the small models in `tests/lowering/`,
//! pinned by snapshots and lowered to LLVM, and the errors for what cannot be lowered yet.

use std::path::Path;

use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use mrc::lowering::{create_context, emit_network, lower_to_llvm, LoweringError};

fn load(path: &Path) -> Model {
    let mut sources = SourceMap::default();
    expand::load(&mut sources, path, None).unwrap_or_else(|d| panic!("{} does not expand:\n{}", path.display(), d.render(&sources)))
}

#[test]
fn emitted_mlir_of_small_models() {
    insta::glob!("lowering/*.model", |path| {
        let model = load(path);
        let context = create_context();
        let (mut module, signature) = emit_network(&context, &model.graph).unwrap();
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
    let (_, signature) = emit_network(&context, &model.graph).unwrap();
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
fn detection_operators_are_reported_as_runtime_built_ins() {
    let model = load(Path::new("models/mini.model"));
    let context = create_context();
    let result = emit_network(&context, &model.graph).map(|_| ());
    match result {
        Err(error @ LoweringError::RuntimeBuiltin { op: "preprocess", .. }) => {
            assert!(error.to_string().starts_with("not lowered yet: `preprocess`"), "{error}");
        }
        Err(other) => panic!("expected the runtime built-in `preprocess`, got: {other}"),
        Ok(_) => panic!("mini.model lowered although it starts with `preprocess`"),
    }
}

#[test]
fn ceil_mode_pooling_is_an_error_not_a_wrong_result() {
    let directory = std::env::temp_dir().join(format!("mrc-lowering-models-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("ceil_mode.model");
    std::fs::write(
        &path,
        "network t(x: f32[1, 2, H, W]) -> (y: f32[1, 2, _, _]) {\n    return max_pool2d(x, kernel: 3, stride: 2, ceil_mode: true) @pool\n}\n",
    )
    .unwrap();
    let model = load(&path);
    std::fs::remove_file(&path).unwrap();
    let context = create_context();
    let result = emit_network(&context, &model.graph).map(|_| ());
    match result {
        Err(LoweringError::Unsupported { op: "max_pool2d", node, reason }) => {
            assert_eq!(node, "pool");
            assert!(reason.contains("ceil_mode"), "{reason}");
        }
        Err(other) => panic!("expected an unsupported `ceil_mode`, got: {other}"),
        Ok(_) => panic!("ceil_mode pooling lowered"),
    }
}
