//! Lowering of the dataflow graph to MLIR (melior), and the MLIR toolchain.
//!
//! [`create_context`] makes an MLIR context that knows every dialect, pass and LLVM translation.
//! The pass pipelines ([`CPU_PIPELINE`], [`cuda_pipeline`]) take modules of `func`, `arith`,
//! `math`, `scf`, `tensor` and `linalg` on tensors to the LLVM dialect for the CPU (then [`jit`]
//! runs them in process), or outlined `gpu` kernels to PTX text for CUDA ([`extract_ptx`] reads
//! it back out of the module).
//! Every failure comes back as a [`LoweringError`] carrying MLIR's own diagnostics.

mod context;
mod diagnostics;
mod error;
mod pipeline;
mod ptx;

pub use context::{create_context, parse_module};
pub use error::LoweringError;
pub use pipeline::{cuda_pipeline, jit, lower_gpu_to_ptx, lower_to_llvm, run_pipeline, CPU_PIPELINE};
pub use ptx::{extract_ptx, GpuModulePtx};
