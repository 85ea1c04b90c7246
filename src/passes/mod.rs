//! Graph rewrites. Each pass is small, knows nothing of MLIR, and is tested on its own; the
//! optimizer is the list [`default_passes`] run in order.

mod common_subexpressions;
mod dead_code;
mod fold_batch_norm;
mod fold_constant_weights;
mod fuse_conv_epilogues;
mod lay_out_for_winograd;
mod pack_gemm_weights;

pub use common_subexpressions::CommonSubexpressions;
pub use dead_code::DeadCode;
pub use fold_batch_norm::FoldBatchNorm;
pub use fold_constant_weights::FoldConstantWeights;
pub use fuse_conv_epilogues::FuseConvEpilogues;
pub use lay_out_for_winograd::LayOutForWinograd;
pub use pack_gemm_weights::PackGemmWeights;

use crate::graph::Graph;

pub trait Pass {
    fn name(&self) -> &'static str;
    /// Rewrites `graph` in place; returns whether anything changed.
    fn run(&self, graph: &mut Graph) -> bool;
}

/// The target-neutral passes, in order; a target may add its own after them
/// (`Target::graph_passes`).
pub fn default_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(FoldBatchNorm),
        Box::new(FoldConstantWeights),
        Box::new(CommonSubexpressions),
        Box::new(DeadCode),
        Box::new(FuseConvEpilogues),
    ]
}

/// The passes of a training step, whose weights change every iteration: none that derives
/// tensors from them at load time.
pub fn training_passes() -> Vec<Box<dyn Pass>> {
    vec![Box::new(CommonSubexpressions), Box::new(DeadCode), Box::new(FuseConvEpilogues)]
}

/// Runs `passes` in order; returns the names of those that changed the graph.
pub fn run(graph: &mut Graph, passes: &[Box<dyn Pass>]) -> Vec<&'static str> {
    passes.iter().filter(|p| p.run(graph)).map(|p| p.name()).collect()
}

/// The lines of `after` that differ from `before`, as a unified diff (`mrc graph --passes`).
pub fn diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after).unified_diff().context_radius(1).to_string()
}
