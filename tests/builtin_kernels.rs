//! The built-ins' kernel lowerings (`BuiltIns::Kernels`) JIT-compiled for this CPU, against
//! torchvision's goldens and the runtime (`common::builtins`); and, with that choice, the
//! built-ins that have a kernel lowering call no runtime function.

mod common;

use std::path::Path;

use melior::{ir::Module, Context};
use mrc::graph::Graph;
use mrc::lowering::{create_context, emit_forward, BuiltIns, JitEngine, LoweringError, Products};
use mrc::run::{Executor, RunError};
use mrc::targets::{cpu::Cpu, CompileError, Emit, Emitted, Program, Target};
use mrc_runtime::weights::Weights;

/// The CPU target with the built-ins' kernel lowerings in place of runtime calls.
struct CpuWithKernelBuiltIns;

impl Target for CpuWithKernelBuiltIns {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn products(&self) -> Products {
        Cpu.products()
    }
    fn builtins(&self) -> BuiltIns {
        BuiltIns::Kernels
    }
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError> {
        Cpu.lower(context, module)
    }
    fn jit<'c>(&self, context: &'c Context, emitted: Emitted<'c>, level: u8) -> Result<JitEngine, LoweringError> {
        Cpu.jit(context, emitted, level)
    }
    fn write<'c>(&self, context: &'c Context, emitted: Emitted<'c>, program: Program, level: u8, emit: Emit, output: &Path) -> Result<String, CompileError> {
        Cpu.write(context, emitted, program, level, emit, output)
    }
}

fn kernels_on_cpu(graph: &Graph, weights: Weights, dumps: &[String], level: u8) -> Result<Executor, RunError> {
    Executor::on_host(&CpuWithKernelBuiltIns, graph, weights, dumps, level)
}

#[test]
fn mask_probs() {
    common::builtins::mask_probs(kernels_on_cpu);
}

#[test]
fn rescale_boxes() {
    common::builtins::rescale_boxes(kernels_on_cpu);
}

/// The mini model's built-ins with a kernel lowering are no runtime calls under
/// `BuiltIns::Kernels`, and all of them are under `BuiltIns::Runtime`.
#[test]
fn kernel_builtins_call_no_runtime_function() {
    let model = common::load("models/mini.model", None);
    let context = create_context();
    let kernels = ["mask_probs", "rescale_boxes", "multiscale_roi_align", "paste_masks", "anchors", "preprocess", "rpn_proposals", "postprocess_detections"];
    for builtins in [BuiltIns::Kernels, BuiltIns::Runtime] {
        let (module, _) = emit_forward(&context, &model.graph, Products::RuntimeGemm, builtins).unwrap();
        let text = module.as_operation().to_string();
        for op in kernels {
            assert_eq!(text.contains(&format!("call @mrc_{op}(")), builtins == BuiltIns::Runtime, "`{op}` with {builtins:?}");
        }
    }
}

#[test]
fn roi_align() {
    common::builtins::roi_align(kernels_on_cpu);
}

#[test]
fn multiscale_roi_align() {
    common::builtins::multiscale_roi_align(kernels_on_cpu);
}

#[test]
fn paste_masks() {
    common::builtins::paste_masks(kernels_on_cpu);
}

#[test]
fn anchors() {
    common::builtins::anchors(kernels_on_cpu);
}

#[test]
fn preprocess() {
    common::builtins::preprocess(kernels_on_cpu);
}

#[test]
fn roi_pool() {
    common::builtins::roi_pool(kernels_on_cpu);
}

#[test]
fn multiscale_roi_pool() {
    common::builtins::multiscale_roi_pool(kernels_on_cpu);
}

#[test]
fn postprocess_detections() {
    common::builtins::postprocess_detections(kernels_on_cpu);
}

#[test]
fn rpn_proposals() {
    common::builtins::rpn_proposals(kernels_on_cpu);
}
