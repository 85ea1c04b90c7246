//! Lowering of the dataflow graph to MLIR (melior), and the MLIR toolchain.
//!
//! [`emit_forward`] turns the dense part of a graph into one `func.func @forward` on tensors;
//! each operator lowers its own nodes (`src/ops`) through the builders of [`Emitter`].
//!
//! [`create_context`] makes an MLIR context that knows every dialect, pass and LLVM translation.
//! The pass pipelines ([`bufferize`], with mrc's own early frees, then [`CPU_PIPELINE`] or
//! [`cuda_pipeline`]) take modules of `func`, `arith`,
//! `math`, `scf`, `tensor` and `linalg` on tensors to the LLVM dialect for the CPU (then [`jit`]
//! runs them in process), or outlined `gpu` kernels to PTX text for CUDA ([`extract_ptx`] reads
//! it back out of the module).
//! Every failure comes back as a [`LoweringError`] carrying MLIR's own diagnostics.

mod builder;
mod builtins;
mod context;
mod diagnostics;
mod emit;
mod entry;
mod error;
mod interface;
mod libdevice;
mod liveness;
mod pipeline;
mod products;
mod ptx;
pub mod rewrite;
mod runtime_calls;

pub use builtins::BuiltIns;
/// The comparison predicates of [`Emitter::compare_floats`] and [`Emitter::compare_integers`].
pub use melior::dialect::arith::{CmpfPredicate, CmpiPredicate};
pub use builder::{identity_map, loop_dims, Combiner, Emitter, Iterator, Size};
pub use context::{create_context, parse_module};
pub use entry::{add_entry_points, append_module, append_operations, evaluation_prefix, ProgramMain, ENGINE_CONSTRUCTORS, EVALUATION_FORWARD, MODULE_INITIALIZER};
pub use emit::{emit_forward, LowerNode, NamedTensor, Signature, FORWARD};
pub use error::LoweringError;
pub use interface::{expected_state, interface};
pub use pipeline::{cuda_pipeline, KERNELS_TO_NVVM, gpu_outlining, jit, run_constructors, jit_for_object, JitEngine, lower_gpu_to_ptx, lower_to_llvm, run_pipeline, bufferize, CPU_PIPELINE, GPU_PARALLEL_LOOPS};
pub use products::Products;
pub use ptx::{extract_ptx, GpuModulePtx};
