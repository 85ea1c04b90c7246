//! The CUDA target (`mrc compile --target cuda[:sm_XX]`): the network on an NVIDIA GPU.
//!
//! Dense products are `linalg` contractions, like every other operator. After bufferization
//! ([`GPU_BUFFERIZE`]), buffers are placed ([`memory`]: the network's tensors on the device, the
//! buffers the host writes on its stack, copies as kernels); every `linalg` op becomes a
//! kernel, tiled and mapped to blocks and threads ([`gpu_outlining`]); the host code is checked
//! never to touch device memory; the kernels are gathered into one `gpu.module` and given their
//! CPU forms for the emulated device ([`kernels`]); then [`lower_gpu_to_ptx`] serializes the
//! kernels to PTX and lowers the host code, whose launches, allocations and copies call the
//! runtime's device layer (`mgpu*`). The program is a native executable like the CPU's
//! ([`super::native`]) whose `main` calls the runtime's CUDA program driver with the table of
//! emulated kernels.
//!
//! The built-in detection operators are still the runtime's host functions: they read their
//! device inputs back to the host and upload their results.

mod kernels;
mod memory;

use std::path::Path;

use super::{native, write_atomic, CompileError, Emit, Emitted, Program, Target};
use crate::lowering::{add_entry_points, extract_ptx, gpu_outlining, lower_gpu_to_ptx, run_pipeline, LoweringError, ProgramMain, Products, GPU_BUFFERIZE};
use melior::{ir::Module, Context, ExecutionEngine};

pub use kernels::{EMULATED_KERNELS, KERNEL_MODULE};

/// The GPU architectures `--target cuda:<chip>` accepts; PTX for one runs on it and newer ones
/// (the driver compiles it).
pub const CHIPS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// Threads per block along the first loops of a parallel loop nest (the rest are 1).
const TILE_SIZES: [usize; 4] = [1, 1, 4, 32];

/// The CUDA program driver: `mrc_cuda_program_main(argc, argv, forward, emulated_kernels)`.
const CUDA_PROGRAM_MAIN: ProgramMain = ProgramMain { driver: "mrc_cuda_program_main", functions: &[EMULATED_KERNELS] };

/// An NVIDIA GPU of compute capability `chip` (`sm_80`, ...).
pub struct Cuda {
    pub chip: String,
}

impl Target for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn products(&self) -> Products {
        Products::Linalg
    }
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError> {
        run_pipeline(context, module, GPU_BUFFERIZE)?;
        memory::copies_to_kernels(context, module)?;
        memory::host_buffers_to_stack(context, module)?;
        run_pipeline(context, module, &gpu_outlining(&TILE_SIZES))?;
        memory::check_host_accesses(module)?;
        let kernels = kernels::merge_kernel_modules(context, module)?;
        kernels::add_cpu_forms(context, module, &kernels)?;
        lower_gpu_to_ptx(context, module, &self.chip)?;
        kernels::add_emulator_table(context, module, &kernels)
    }
    /// `mrc run` computes on the CPU target; a CUDA program runs on the emulated device with
    /// `--device emulator`.
    fn jit<'c>(&self, _context: &'c Context, _emitted: Emitted<'c>, _level: u8) -> Result<ExecutionEngine, LoweringError> {
        Err(LoweringError::Build(
            "the CUDA target does not run in process: compile the model with `--target cuda` and run the program (`--device emulator` without a GPU)".into(),
        ))
    }
    /// A native executable whose `main` calls the runtime's CUDA program driver, or the PTX of
    /// every kernel (`--emit ptx`).
    fn write<'c>(
        &self,
        context: &'c Context,
        emitted: Emitted<'c>,
        program: Program,
        level: u8,
        emit: Emit,
        output: &Path,
    ) -> Result<String, CompileError> {
        let Emitted { mut module, signature, interface, .. } = emitted;
        self.lower(context, &mut module)?;
        if emit == Emit::Ptx {
            let ptx = extract_ptx(&module);
            let [kernels] = ptx.as_slice() else {
                return Err(LoweringError::Build(format!("expected one PTX module, found {}", ptx.len())).into());
            };
            write_atomic(output, kernels.ptx.as_bytes())?;
            return Ok(format!("wrote {}\n", output.display()));
        }
        add_entry_points(context, &module, signature.arguments.len(), Some(CUDA_PROGRAM_MAIN))?;
        native::write_executable(&module, program, interface, level, emit, output)
    }
}
