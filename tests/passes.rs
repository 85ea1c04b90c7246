//! Each graph pass on its own: the graph before and after, pinned by snapshots, plus the
//! property the pass must keep.

mod common;

use mrc::passes::{
    self, CommonSubexpressions, DeadCode, FoldBatchNorm, FoldConstantWeights, FuseConvEpilogues, LayOutForWinograd,
    PackGemmWeights, Pass,
};

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

const EPILOGUES: &str = r#"
network net(x: f32[1, 8, H, W]) -> (f32[1, 8, H, W], f32[1, 8, H, W], f32[1, 8, H, W]) {
    let conv1 = conv2d(x, out: 8, kernel: 3, padding: 1)
    let a = relu(conv1)
    let conv2 = conv2d(a, out: 8, kernel: 1, bias: false)
    let b = relu(conv2 + x)
    let conv3 = conv2d(b, out: 8, kernel: 1)
    let c = relu(conv3)
    return (b, c, conv3 + c)
}
"#;

#[test]
fn convolutions_take_in_the_residual_add_and_relu_after_them() {
    let (before, after, changed) = before_after(&FuseConvEpilogues, EPILOGUES);
    assert!(changed);
    // conv1 takes its relu, conv2 the add of `x` and the relu; conv3 is read twice (by the
    // relu and the last add) and stays.
    assert_eq!(after.matches("conv2d_fused[").count(), 2);
    assert_eq!(before.matches("relu[").count() - 2, after.matches("relu[").count());
    assert_eq!(before.matches("= add[").count() - 1, after.matches("= add[").count());
    assert!(after.contains("conv2d_fused[bias=false, dilation=[1], groups=1, kernel=[1], laid_out=false, out=8, packed=false, padding=[0], relu=true, stride=[1], winograd=false](%3, %0, %5)"));
    insta::assert_snapshot!(format!("{before}\n=== after fuse-conv-epilogues ===\n\n{after}"));
}

const TRANSPOSED: &str = r#"
network net(x: f32[1, 8, H, W]) -> (f32[1, 4, _, _], f32[1, 4, _, _]) {
    let up = conv_transpose2d(x, out: 4, kernel: 2, stride: 2)
    let wide = conv_transpose2d(x, out: 4, kernel: 3, stride: 2, padding: 1, groups: 2, bias: false)
    return (up, wide)
}
"#;

#[test]
fn transposed_kernels_are_laid_out_when_the_weights_load() {
    let (before, after, changed) = before_after(&FoldConstantWeights, TRANSPOSED);
    assert!(changed);
    assert_eq!(after.matches("conv_transpose2d_prepared[").count(), 2);
    assert!(after.contains("derived up.weight.kernel = TransposedKernelTaps(%1) : f32[16, 8]"));
    assert!(after.contains("derived wide.weight.kernel = FlipTransposedKernel { groups: 2 }(%4) : f32[4, 4, 3, 3]"));
    insta::assert_snapshot!(format!("{before}\n=== after fold-constant-weights ===\n\n{after}"));
}

#[test]
fn gemm_weights_are_packed_from_the_state_or_from_what_is_derived_from_it() {
    let mut model = common::expand("pack.model", BATCH_NORMS).unwrap();
    FoldBatchNorm.run(&mut model.graph);
    let before = mrc::graph::to_text(&model.graph);
    assert!(PackGemmWeights.run(&mut model.graph));
    let after = mrc::graph::to_text(&model.graph);
    assert_eq!(after.matches("packed=true").count(), 3);
    // conv1's folded 3×3 kernel becomes Winograd's filters in one transform; conv3's state
    // kernel is packed directly; the folded kernels themselves go.
    assert_eq!(after.matches("winograd=true").count(), 1);
    assert!(after.contains("derived conv1.weight.folded.packed = WinogradFilters { of: Some(FoldBatchNormWeight { eps: 0.0 }) }(%1, %3, %6) : f32[36, 3, 8]"));
    assert!(after.contains("derived conv3.weight.packed = GemmColumns { of: None }(%17) : f32[3, 8]"));
    assert!(!after.contains("weight.folded ="));
    insta::assert_snapshot!(format!("{before}\n=== after pack-gemm-weights ===\n\n{after}"));
}

const WINOGRAD_LAYERS: &str = r#"
network net(x: f32[2, 8, H, W]) -> (f32[2, 8, H, W]) {
    let conv1 = conv2d(x, out: 8, kernel: 3, padding: 1)
    let a = relu(conv1)
    let conv2 = conv2d(a, out: 8, kernel: 3, padding: 1, bias: false)
    return conv2
}
"#;

#[test]
fn winograd_convolutions_and_their_gradients_share_one_layout_per_tensor() {
    let mut model = common::expand("layout.model", WINOGRAD_LAYERS).unwrap();
    let graph = &mut model.graph;
    let port = graph.outputs[0].1;
    let seed = graph.add_input("seed", graph.ty(port).clone(), None);
    let wrt: Vec<_> = graph.inputs.iter().copied().filter(|&n| n != seed).chain(graph.state.iter().copied()).collect();
    mrc::autodiff::backward(graph, &[(port, mrc::graph::Port { node: seed, output: 0 })], &wrt).unwrap();
    let before = mrc::graph::to_text(graph);
    assert!(LayOutForWinograd.run(graph));
    let after = mrc::graph::to_text(graph);
    // Four tensors are laid out: x (read by conv1 and its weight gradient), a (conv2 and its
    // weight gradient), the output's gradient (conv2's input and weight gradients) and
    // conv1's output gradient (conv1's input and weight gradients); six convolutions read them.
    assert_eq!(after.matches("= channels_last[").count(), 4);
    assert_eq!(after.matches("laid_out=true").count(), 6);
    assert_eq!(after.matches("= conv2d[").count(), 0);
    assert!(!LayOutForWinograd.run(graph), "a second run changes nothing");
    insta::assert_snapshot!(format!("{before}\n=== after lay-out-for-winograd ===\n\n{after}"));
}

#[test]
fn internal_operators_cannot_be_called_from_model_files() {
    let text =
        "network net(x: f32[1, 8, H, W]) -> (f32[1, 8, H, W]) {\n    return conv2d_fused(x, out: 8, kernel: 1) @c\n}\n";
    let error = common::expand("internal.model", text).err().expect("an unknown operator");
    assert!(error.contains("unknown operator `conv2d_fused`"), "{error}");
}

#[test]
fn passes_keep_the_shipped_model_state_and_outputs() {
    let mut model = common::load("models/mask_rcnn.model", None);
    let state = mrc::summary::params(&model);
    let outputs: Vec<String> =
        model.graph.outputs.iter().map(|(n, p)| format!("{n}: {}", model.graph.ty(*p))).collect();
    let changed = passes::run(&mut model.graph, &passes::default_passes());
    // Every frozen batch norm of ResNet-50 follows a convolution, and every ReLU and residual
    // add of the backbone follows one then; the mask head's transposed convolution reads a
    // kernel laid out at load time; nothing is dead or duplicated.
    assert_eq!(changed, ["fold-batch-norm", "fold-constant-weights", "fuse-conv-epilogues"]);
    let count = |name: &str| model.graph.op_nodes().filter(|(_, op)| op.name() == name).count();
    assert_eq!(count("frozen_batch_norm"), 0);
    // The FPN's top-down adds stay: the upsampling reads the lateral convolution's size.
    assert_eq!(count("add"), 3);
    // The stem, three per bottleneck, the RPN head on five levels, the mask head's four.
    assert_eq!(count("conv2d_fused"), 1 + 16 * 3 + 5 + 4);
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
