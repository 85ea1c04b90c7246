//! Each graph pass on its own: the graph before and after, pinned by snapshots, plus the
//! property the pass must keep.

mod common;

use mrc::passes::{self, CommonSubexpressions, DeadCode, FoldBatchNorm, Pass};

const DUPLICATES: &str = r#"
network net(x: f32[1, 8, H, W]) -> (f32[1, 8, H, W], f32[1, 8, H, W]) {
    let conv = conv2d(x, out: 8, kernel: 3, padding: 1)
    let a = relu(conv)
    let b = relu(conv)
    let unused = max_pool2d(a, kernel: 2)
    return (a + a, b + b)
}
"#;

fn before_after(pass: &dyn Pass, text: &str) -> (String, String, bool) {
    let mut model = common::expand(&format!("{}.model", pass.name()), text).unwrap();
    let before = mrc::graph::to_text(&model.graph);
    let changed = pass.run(&mut model.graph);
    (before, mrc::graph::to_text(&model.graph), changed)
}

#[test]
fn dead_code_removes_unused_operators_only() {
    let (before, after, changed) = before_after(&DeadCode, DUPLICATES);
    assert!(changed);
    assert!(before.contains("max_pool2d") && !after.contains("max_pool2d"));
    assert_eq!(before.lines().count() - 1, after.lines().count());
    insta::assert_snapshot!(format!("{before}\n=== after dead-code ===\n\n{after}"));
}

#[test]
fn common_subexpressions_merge_chains() {
    let (before, after, changed) = before_after(&CommonSubexpressions, DUPLICATES);
    assert!(changed);
    // relu(conv) twice becomes one relu, and then a + a and b + b become one add.
    assert_eq!(before.matches("relu").count(), 2);
    assert_eq!(after.matches("relu").count(), 1);
    assert_eq!(after.matches("= add").count(), 1);
    insta::assert_snapshot!(format!("{before}\n=== after common-subexpressions ===\n\n{after}"));
}

const BATCH_NORMS: &str = r#"
network net(x: f32[1, 3, H, W]) -> (f32[1, 8, _, _], f32[1, 8, _, _], f32[1, 8, _, _]) {
    let conv1 = conv2d(x, out: 8, kernel: 3, padding: 1, bias: false)
    let bn1 = frozen_batch_norm(conv1, eps: 0.0)
    let conv2 = conv2d(bn1, out: 8, kernel: 1)
    let bn2 = batch_norm(conv2)
    let conv3 = conv2d(x, out: 8, kernel: 1, bias: false)
    let bn3 = frozen_batch_norm(conv3)
    return (relu(bn2), bn3, conv3)
}
"#;

#[test]
fn batch_norms_fold_into_the_convolution_before_them() {
    let (before, after, changed) = before_after(&FoldBatchNorm, BATCH_NORMS);
    assert!(changed);
    // bn1 and bn2 fold (with and without a convolution bias); bn3 does not: conv3's own result
    // is an output too.
    assert_eq!(before.matches("batch_norm[").count(), 3);
    assert_eq!(after.matches("batch_norm[").count(), 1);
    assert_eq!(after.matches("FoldBatchNormWeight").count(), 2);
    assert!(after.contains("FoldBatchNormBias { eps: 0.0, conv_bias: false }"));
    assert!(after.contains("FoldBatchNormBias { eps: 1e-5, conv_bias: true }"));
    insta::assert_snapshot!(format!("{before}\n=== after fold-batch-norm ===\n\n{after}"));
}

#[test]
fn passes_keep_the_shipped_model_state_and_outputs() {
    let mut model = common::load("models/mask_rcnn.model", None);
    let state = mrc::summary::params(&model);
    let outputs: Vec<String> = model.graph.outputs.iter().map(|(n, p)| format!("{n}: {}", model.graph.ty(*p))).collect();
    let changed = passes::run(&mut model.graph, &passes::default_passes());
    // Every frozen batch norm of ResNet-50 follows a convolution; nothing is dead or duplicated.
    assert_eq!(changed, ["fold-batch-norm"]);
    assert_eq!(model.graph.op_nodes().filter(|(_, op)| op.name() == "frozen_batch_norm").count(), 0);
    assert_eq!(mrc::summary::params(&model), state);
    let after: Vec<String> = model.graph.outputs.iter().map(|(n, p)| format!("{n}: {}", model.graph.ty(*p))).collect();
    assert_eq!(after, outputs);
}

#[test]
fn a_second_run_changes_nothing() {
    let mut model = common::expand("twice.model", DUPLICATES).unwrap();
    assert!(!passes::run(&mut model.graph, &passes::default_passes()).is_empty());
    assert!(passes::run(&mut model.graph, &passes::default_passes()).is_empty());
}
