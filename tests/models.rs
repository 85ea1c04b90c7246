//! The shipped models: parameter names and shapes against torchvision's `state_dict`s,
//! parameter counts, and snapshots of their syntax trees and graphs.

mod common;

use common::{fixtures, load};
use mrc::graph::types::Dim;
use std::collections::BTreeSet;

/// Lines `name [d0, d1]` as a set: torchvision's order is not the model file's.
fn state_lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

fn assert_state_dict(file: &str, config: Option<&str>, reference: &str) {
    let model = load(file, config);
    let path = fixtures().join("params").join(format!("{reference}.txt"));
    let expected = state_lines(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let actual = state_lines(&mrc::summary::params(&model));
    let missing: Vec<&String> = expected.difference(&actual).collect();
    let unexpected: Vec<&String> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{file} vs {}:\nmissing {missing:#?}\nunexpected {unexpected:#?}",
        path.display()
    );
    assert_eq!(model.graph.state.len(), expected.len(), "no state tensor is listed twice");
}

#[test]
fn resnet50_fpn_has_torchvision_state_dict() {
    assert_state_dict("models/mask_rcnn.model", None, "maskrcnn_resnet50_fpn");
}

#[test]
fn resnet101_fpn_config_has_torchvision_state_dict() {
    assert_state_dict("models/mask_rcnn.model", Some("models/resnet101.yaml"), "maskrcnn_resnet101_fpn");
}

#[test]
fn resnext101_fpn_config_has_torchvision_state_dict() {
    assert_state_dict("models/mask_rcnn.model", Some("models/resnext101_32x8d.yaml"), "maskrcnn_resnext101_32x8d_fpn");
}

#[test]
fn mini_model_has_fixture_state_dict() {
    assert_state_dict("models/mini.model", None, "mini");
}

#[test]
fn resnet50_fpn_parameter_count_is_torchvisions() {
    let model = load("models/mask_rcnn.model", None);
    assert_eq!(model.graph.parameter_count(), 44_401_393);
    assert!(mrc::summary::check(&model).contains("parameters: 44,401,393"));
}

#[test]
fn outputs_have_symbolic_detection_counts_and_image_sizes() {
    let model = load("models/mask_rcnn.model", None);
    let outputs: Vec<(String, String)> =
        model.graph.outputs.iter().map(|(n, p)| (n.clone(), model.graph.ty(*p).to_string())).collect();
    assert_eq!(
        outputs,
        [
            ("boxes".to_string(), "f32[D, 4]".to_string()),
            ("scores".to_string(), "f32[D]".to_string()),
            ("labels".to_string(), "i64[D]".to_string()),
            ("masks".to_string(), "f32[D, 1, H, W]".to_string()),
        ]
    );
    let masks = model.graph.ty(model.graph.outputs[3].1);
    assert_eq!(masks.dims[2], Dim::symbol("H"));
}

#[test]
fn shipped_models_parse() {
    for file in ["models/mask_rcnn.model", "models/mini.model"] {
        let mut sources = mrc::diagnostic::SourceMap::default();
        let program = mrc::expand::parse_program(&mut sources, std::path::Path::new(file)).unwrap();
        let name = std::path::Path::new(file).file_stem().unwrap().to_str().unwrap().to_string();
        insta::assert_snapshot!(format!("ast_{name}"), mrc::syntax::print::print_file(&program.root));
    }
}

#[test]
fn shipped_model_graphs() {
    for (file, config, name) in [
        ("models/mask_rcnn.model", None, "mask_rcnn"),
        ("models/mini.model", None, "mini"),
        ("models/mask_rcnn.model", Some("models/resnext101_32x8d.yaml"), "mask_rcnn_resnext101"),
    ] {
        let model = load(file, config);
        insta::assert_snapshot!(format!("graph_{name}"), mrc::graph::to_text(&model.graph));
        insta::assert_snapshot!(format!("check_{name}"), mrc::summary::check(&model));
    }
}

#[test]
fn dot_graph_renders_with_graphviz() {
    let model = load("models/mini.model", None);
    let dot = mrc::graph::to_dot(&model.graph);
    assert!(dot.starts_with("digraph model {") && dot.trim_end().ends_with('}'));
    let Ok(mut child) = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: Graphviz `dot` is not installed (tests/run.sh installs it)");
        return;
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(svg.contains("<svg") && svg.contains("multiscale_roi_align"));
}
