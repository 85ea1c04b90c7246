//! The model language's features, each on a small model written by the test.

mod common;

use common::{expand, write};
use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use mrc::graph::{NodeKind, StateKind};

fn op_count(model: &Model, name: &str) -> usize {
    model.graph.op_nodes().filter(|(_, op)| op.name() == name).count()
}

fn state(model: &Model) -> Vec<(String, String)> {
    model
        .graph
        .state
        .iter()
        .map(|&s| (model.graph.nodes[s].name.clone(), model.graph.nodes[s].outputs[0].to_string()))
        .collect()
}

#[test]
fn a_list_argument_maps_the_operator_with_shared_weights() {
    let model = expand(
        "shared.model",
        r#"
network net(a: f32[1, 8, H, W], b: f32[1, 8, 5, 7]) -> (f32[1, 4, H, W], f32[1, 4, 5, 7]) {
    let head = conv2d([a, b], out: 4, kernel: 3, padding: 1)
    return (head[0], head[1])
}
"#,
    )
    .unwrap();
    assert_eq!(op_count(&model, "conv2d"), 2);
    assert_eq!(state(&model), [("head.weight".into(), "f32[4, 8, 3, 3]".into()), ("head.bias".into(), "f32[4]".into())]);
    let weight = model.graph.state[0];
    let users = model.graph.nodes.neighbors_directed(weight, petgraph::Direction::Outgoing).count();
    assert_eq!(users, 2, "both convolutions read the one weight");
}

#[test]
fn loops_conditionals_and_interpolated_paths() {
    let model = expand(
        "loops.model",
        r#"
block unit(x: f32[N, C, H, W], out: int) -> f32[N, out, H, W] {
    let y = conv2d(x, out: out, kernel: 1)
    if C != out {
        let shortcut = conv2d(x, out: out, kernel: 1, bias: false) @proj
        return y + shortcut
    }
    return y + x
}

network net(x: f32[1, 16, H, W]) -> f32[1, 32, H, W] {
    let widths = [16, 32, 32]
    let y = x
    for i in 0..len(widths) {
        y = unit(y, widths[i]) @stage{i + 1}.{i * 10}
    }
    return y
}
"#,
    )
    .unwrap();
    let names: Vec<String> = state(&model).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["stage1.0.y.weight", "stage1.0.y.bias", "stage2.10.y.weight", "stage2.10.y.bias", "stage2.10.proj.weight", "stage3.20.y.weight", "stage3.20.y.bias"]
    );
    assert_eq!(op_count(&model, "add"), 3);
}

#[test]
fn symbolic_sizes_follow_strides_and_bind_in_block_types() {
    let model = expand(
        "sizes.model",
        r#"
block down(x: f32[N, C, H, W]) -> f32[N, C, H / 2, W / 2] {
    let conv = conv2d(x, out: C, kernel: 3, stride: 2, padding: 1)
    return conv
}

network net(x: f32[1, 8, H, W]) -> f32[1, 8, _, _] {
    let (padded, size) = preprocess(x)
    return down(x) @down
}
"#,
    );
    // `preprocess` takes an RGB image, not a feature map: the shape rule says so, at the call.
    let err = model.err().unwrap();
    assert!(err.contains("`preprocess` expects an RGB image [H, W, 3], found f32[1, 8, H, W]"), "{err}");

    let model = expand(
        "sizes_ok.model",
        r#"
block down(x: f32[N, C, H, W]) -> f32[N, C, (H - 1) / 2 + 1, (W - 1) / 2 + 1] {
    let conv = conv2d(x, out: C, kernel: 3, stride: 2, padding: 1)
    return conv
}

network net(x: f32[1, 8, H, W]) -> f32[1, 8, _, _] {
    return down(x) @down
}
"#,
    )
    .unwrap();
    let out = model.graph.ty(model.graph.outputs[0].1).to_string();
    assert_eq!(out, "f32[1, 8, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1]");
}

#[test]
fn a_declared_result_type_is_checked() {
    let err = expand(
        "result.model",
        r#"
block head(x: f32[N, C, H, W]) -> f32[N, 2 * C, H, W] {
    let conv = conv2d(x, out: C, kernel: 1)
    return conv
}

network net(x: f32[1, 8, H, W]) -> f32[1, 16, H, W] {
    return head(x) @head
}
"#,
    )
    .err()
    .unwrap();
    assert!(err.contains("channel mismatch: result of `head` expects f32[1, 16, H, W], found f32[1, 8, H, W]"), "{err}");
    assert!(err.contains("result.model:8:12"), "{err}");
}

#[test]
fn config_overrides_switch_paper_variants() {
    let yaml = write("variants.yaml", "class_agnostic_masks: true\npooler: pool\nnum_classes: 2\n");
    let model = common::load("models/mask_rcnn.model", Some(yaml.to_str().unwrap()));
    let state = state(&model);
    assert!(state.contains(&("roi_heads.mask_predictor.mask_fcn_logits.weight".into(), "f32[1, 256, 1, 1]".into())));
    assert!(state.contains(&("roi_heads.box_predictor.bbox_pred.weight".into(), "f32[8, 1024]".into())));
    assert_eq!(op_count(&model, "multiscale_roi_pool"), 2);
    assert_eq!(op_count(&model, "multiscale_roi_align"), 0);
}

#[test]
fn frozen_batch_norm_holds_buffers_and_batch_norm_parameters() {
    let kinds = |file: &str| {
        let model = common::load(file, None);
        let g = &model.graph;
        let find = |name: &str| {
            g.state.iter().find(|&&s| g.nodes[s].name == name).map(|&s| match g.nodes[s].kind {
                NodeKind::State(kind) => kind,
                _ => unreachable!(),
            })
        };
        (find("backbone.body.bn1.weight"), find("backbone.body.bn1.running_mean"))
    };
    assert_eq!(kinds("models/mask_rcnn.model"), (Some(StateKind::Buffer), Some(StateKind::Buffer)));
    assert_eq!(kinds("models/mini.model"), (Some(StateKind::Parameter), Some(StateKind::Buffer)));
}

#[test]
fn the_printer_shows_precedence_and_keeps_the_header() {
    let path = write(
        "print.model",
        "//! Header line.\nconfig { a = 1 + 2 * 3 - -4\n b = 0..2 + 1 == 3 || !true && false }\n",
    );
    let mut sources = SourceMap::default();
    let program = expand::parse_program(&mut sources, &path).unwrap();
    assert_eq!(
        mrc::syntax::print::print_file(&program.root),
        "//! Header line.\nconfig {\n    a = ((1 + (2 * 3)) - -4)\n    b = (0 .. (((2 + 1) == 3) || (!true && false)))\n}\n"
    );
}

#[test]
fn keywords_are_words_not_prefixes() {
    let model = expand(
        "keywords.model",
        r#"
network net(x: f32[1, 4, H, W]) -> f32[1, 4, H, W] {
    let format = 1
    let index = conv2d(x, in: 4, out: 4, kernel: 1)
    return index
}
"#,
    )
    .unwrap();
    assert_eq!(op_count(&model, "conv2d"), 1);
}

#[test]
fn shared_reuses_parameters_of_an_earlier_call() {
    let source = |second: &str| {
        format!(
            r#"
block head(x: f32[K, 8, 7, 7], width: int) -> f32[K, width, 7, 7] {{
    let conv = conv2d(x, out: width, kernel: 3, padding: 1)
    return relu(conv)
}}

network net(a: f32[P, 8, 7, 7], b: f32[D, 8, 7, 7]) -> (f32[P, 16, 7, 7], f32[D, _, 7, 7]) {{
    let first = head(a, 16) @head
    let second = {second}
    return (first, second)
}}
"#
        )
    };
    let model = expand("shared_ok.model", &source("head(b, 16) @head shared")).unwrap();
    assert_eq!(op_count(&model, "conv2d"), 2);
    assert_eq!(state(&model).len(), 2, "one weight and one bias for both calls");

    let err = expand("shared_twice.model", &source("head(b, 16) @head")).err().unwrap();
    assert!(err.contains("parameter `head.conv.weight` defined twice"), "{err}");

    let err = expand("shared_shape.model", &source("head(b, 32) @head shared")).err().unwrap();
    assert!(err.contains("shared parameter `head.conv.weight` is f32[32, 8, 3, 3] here but f32[16, 8, 3, 3]"), "{err}");

    let err = expand("shared_missing.model", &source("head(b, 16) @other shared")).err().unwrap();
    assert!(err.contains("`shared` parameter `other.conv.weight` is not defined before"), "{err}");
}

#[test]
fn the_c4_variant_shares_res5_between_box_and_mask_branches() {
    let model = common::load("models/mask_rcnn_c4.model", None);
    let names: Vec<String> = state(&model).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("roi_heads.res5.0.conv1.")).count(), 1);
    assert!(!names.iter().any(|n| n.contains("layer4") || n.contains("fpn")));
    // res5 runs twice (box and mask RoIs): 3 bottlenecks × 4 convolutions (with the projection).
    let res5_convs = model
        .graph
        .op_nodes()
        .filter(|(n, op)| op.name() == "conv2d" && model.graph.nodes[*n].name.starts_with("roi_heads.res5"))
        .count();
    assert_eq!(res5_convs, 2 * (3 * 3 + 1));
}
