//! The CUDA target (`mrc compile --target cuda[:sm_XX]`): the network on an NVIDIA GPU.
//!
//! Dense products are the runtime's GEMM calls, on cuBLAS; everything else is `linalg`, as for
//! the CPU. After bufferization
//! ([`bufferize`]: buffers freed after their last use), buffers are placed ([`memory`]: the network's tensors on the device, the
//! buffers the host writes on its stack, copies as kernels); every `linalg` op becomes a
//! kernel ([`GPU_PARALLEL_LOOPS`]), its last dimension first ([`mapping`]), tiled and mapped to
//! blocks and threads ([`gpu_outlining`]); the host code is checked
//! never to touch device memory; the kernels are gathered into one `gpu.module` and given their
//! CPU forms for the emulated device ([`kernels`]); then [`lower_gpu_to_ptx`] serializes the
//! kernels to PTX and lowers the host code, whose launches, allocations and copies call the
//! runtime's device layer (`mgpu*`). The program is a native executable like the CPU's
//! ([`super::native`]) whose `main` calls the runtime's CUDA program driver with the table of
//! emulated kernels.
//!
//! The built-in detection operators are kernels too ([`BuiltIns::Kernels`]), except those
//! without a kernel lowering (top-k and NMS): they are the runtime's host functions, which read
//! their device inputs back to the host and upload their results.

mod kernels;
mod mapping;
mod memory;

use std::path::Path;

use super::{native, write_atomic, CompileError, Emit, Emitted, Program, ProgramKind, Target};
use crate::lowering::{add_entry_points, extract_ptx, jit, JitEngine, ENGINE_CONSTRUCTORS, EVALUATION_FORWARD, MODULE_INITIALIZER, gpu_outlining, lower_gpu_to_ptx, run_pipeline, bufferize, BuiltIns, LoweringError, ProgramMain, Products, GPU_PARALLEL_LOOPS};
use melior::{ir::Module, Context};
use mrc_runtime::device::{register_emulated_kernels, EmulatedKernelTable};

use kernels::EMULATED_KERNELS;

/// The GPU architectures `--target cuda:<chip>` accepts; PTX for one runs on it and newer ones
/// (the driver compiles it).
pub const CHIPS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// Threads per block along the first dimensions of a parallel loop nest, once reversed (so
/// along its last ones: 32 consecutive elements of a row per warp, 4 rows); the rest are 1.
const TILE_SIZES: [usize; 2] = [32, 4];

/// The CUDA program driver: `mrc_cuda_program_main(argc, argv, forward, emulated_kernels)`.
/// It runs the module's constructors first: they hand the kernels' PTX to the runtime.
const CUDA_PROGRAM_MAIN: ProgramMain =
    ProgramMain { initializer: Some(MODULE_INITIALIZER), driver: "mrc_cuda_program_main", functions: &[EMULATED_KERNELS] };

/// The CUDA training program driver: `mrc_cuda_training_program_main(argc, argv, step,
/// emulated_kernels, evaluation)`, after the module's constructors as [`CUDA_PROGRAM_MAIN`].
const CUDA_TRAINING_PROGRAM_MAIN: ProgramMain = ProgramMain {
    initializer: Some(MODULE_INITIALIZER),
    driver: "mrc_cuda_training_program_main",
    functions: &[EMULATED_KERNELS, EVALUATION_FORWARD],
};

/// An NVIDIA GPU of compute capability `chip` (`sm_80`, ...).
pub struct Cuda {
    pub chip: String,
}

/// The emulated device, selected for the whole process, and the CUDA target (the default chip)
/// whose in-process code runs on it.
pub fn emulated_device() -> Result<(&'static mrc_runtime::device::SelectedDevice, Cuda), mrc_runtime::device::DeviceError> {
    let device = mrc_runtime::device::select(mrc_runtime::device::DeviceKind::Emulator)?;
    Ok((device, Cuda { chip: CHIPS[0].to_owned() }))
}

impl Target for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }
    /// The runtime's GEMM entry points, which run cuBLAS on device buffers of a GPU (the
    /// emulated device substitutes the CPU GEMM): generated kernels are not competitive for
    /// the products yet.
    fn products(&self) -> Products {
        Products::RuntimeGemm
    }
    /// Kernels, so that a built-in's inputs and result stay on the device; those without a
    /// kernel lowering yet are runtime calls on the host.
    fn builtins(&self) -> BuiltIns {
        BuiltIns::Kernels
    }
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError> {
        bufferize(context, module)?;
        memory::copies_to_kernels(context, module)?;
        memory::host_buffers_to_stack(context, module)?;
        run_pipeline(context, module, GPU_PARALLEL_LOOPS)?;
        memory::scalar_stores_to_kernels(context, module)?;
        mapping::innermost_first(context, module)?;
        run_pipeline(context, module, &gpu_outlining(&TILE_SIZES))?;
        memory::check_host_accesses(module)?;
        let kernels = kernels::merge_kernel_modules(context, module)?;
        kernels::add_cpu_forms(context, module, &kernels)?;
        lower_gpu_to_ptx(context, module, &self.chip)?;
        kernels::add_emulator_table(context, module, &kernels)
    }
    /// Compiled in process with the runtime's device layer bound; the module's constructors
    /// have run (the kernels' PTX is handed to the runtime) and the kernels' CPU forms are
    /// registered with the emulated device. The caller selects the device.
    fn jit<'c>(&self, context: &'c Context, emitted: Emitted<'c>, level: u8) -> Result<JitEngine, LoweringError> {
        let Emitted { mut module, signature, .. } = emitted;
        self.lower(context, &mut module)?;
        add_entry_points(context, &module, signature.arguments.len(), None)?;
        let engine = jit(&module, level as usize)?;
        crate::lowering::run_constructors(&engine);
        let address = engine.lookup(EMULATED_KERNELS);
        // SAFETY: the table function of this module, alive as long as the engine, which the
        // caller keeps as long as it launches kernels.
        unsafe { register_emulated_kernels(std::mem::transmute::<*mut (), EmulatedKernelTable>(address)) };
        Ok(engine)
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
        let Emitted { mut module, signature, interface, companions, .. } = emitted;
        self.lower(context, &mut module)?;
        if emit == Emit::Ptx {
            let ptx = extract_ptx(&module);
            let [kernels] = ptx.as_slice() else {
                return Err(LoweringError::Build(format!("expected one PTX module, found {}", ptx.len())).into());
            };
            write_atomic(output, kernels.ptx.as_bytes())?;
            return Ok(format!("wrote {}\n", output.display()));
        }
        let main = match program.kind {
            ProgramKind::Inference { .. } => CUDA_PROGRAM_MAIN,
            ProgramKind::Training { .. } => CUDA_TRAINING_PROGRAM_MAIN,
        };
        add_entry_points(context, &module, signature.arguments.len(), Some(main))?;
        let bind_initializer = format!("-Wl,--defsym={MODULE_INITIALIZER}={ENGINE_CONSTRUCTORS}");
        native::write_program(&module, &companions, &[bind_initializer], program, interface, level, emit, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowering::{create_context, parse_module};

    /// A bufferized `@forward` as the CPU and CUDA pipelines share it: a tensor of sizes built
    /// by the host for a runtime function, and a concatenation (a copy into a view of the
    /// result).
    const BUFFERIZED: &str = r#"
module {
  func.func private @mrc_anchors(memref<2xi64>)
  func.func @forward(%x: memref<2x3xf32>) -> memref<4x3xf32> {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %two = arith.constant 2 : i64
    %sizes = memref.alloc() {alignment = 64 : i64} : memref<2xi64>
    memref.store %two, %sizes[%c0] : memref<2xi64>
    memref.store %two, %sizes[%c1] : memref<2xi64>
    func.call @mrc_anchors(%sizes) : (memref<2xi64>) -> ()
    %out = memref.alloc() {alignment = 64 : i64} : memref<4x3xf32>
    %top = memref.subview %out[0, 0] [2, 3] [1, 1] : memref<4x3xf32> to memref<2x3xf32, strided<[3, 1]>>
    memref.copy %x, %top : memref<2x3xf32> to memref<2x3xf32, strided<[3, 1]>>
    %bottom = memref.subview %out[2, 0] [2, 3] [1, 1] : memref<4x3xf32> to memref<2x3xf32, strided<[3, 1], offset: 6>>
    memref.copy %x, %bottom : memref<2x3xf32> to memref<2x3xf32, strided<[3, 1], offset: 6>>
    memref.dealloc %sizes : memref<2xi64>
    return %out : memref<4x3xf32>
  }
}
"#;

    fn outline(context: &melior::Context, module: &mut melior::ir::Module) {
        run_pipeline(context, module, GPU_PARALLEL_LOOPS).unwrap();
        memory::scalar_stores_to_kernels(context, module).unwrap();
        mapping::innermost_first(context, module).unwrap();
        run_pipeline(context, module, &gpu_outlining(&TILE_SIZES)).unwrap();
    }

    fn placed(source: &str) -> (melior::Context, String) {
        let context = create_context();
        let text = {
            let mut module = parse_module(&context, source).unwrap();
            memory::copies_to_kernels(&context, &module).unwrap();
            memory::host_buffers_to_stack(&context, &module).unwrap();
            run_pipeline(&context, &mut module, "builtin.module(canonicalize)").unwrap();
            module.as_operation().to_string()
        };
        (context, text)
    }

    #[test]
    fn copies_become_kernels_and_host_written_buffers_go_to_the_stack() {
        let (_context, text) = placed(BUFFERIZED);
        assert!(!text.contains("memref.copy") && !text.contains("memref.dealloc"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn kernels_are_merged_into_one_module_and_have_cpu_forms() {
        let (context, text) = placed(BUFFERIZED);
        let mut module = parse_module(&context, &text).unwrap();
        outline(&context, &mut module);
        memory::check_host_accesses(&module).unwrap();
        let kernels = kernels::merge_kernel_modules(&context, &module).unwrap();
        assert_eq!(kernels.len(), 2);
        assert!(kernels[0].starts_with("forward_kernel_") && kernels[1].starts_with("forward_kernel_0_"), "{kernels:?}");
        kernels::add_cpu_forms(&context, &module, &kernels).unwrap();
        insta::assert_snapshot!(module.as_operation().to_string());

        lower_gpu_to_ptx(&context, &mut module, "sm_80").unwrap();
        kernels::add_emulator_table(&context, &module, &kernels).unwrap();
        let lowered = module.as_operation().to_string();
        let ptx = extract_ptx(&module);
        assert_eq!(ptx.len(), 1);
        for kernel in &kernels {
            assert!(lowered.contains(&format!("llvm.func @{kernel}_emulated(")), "no emulated {kernel} in\n{lowered}");
            assert!(ptx[0].ptx.contains(&format!(".entry {kernel}(")), "no {kernel} in\n{}", ptx[0].ptx);
        }
        assert!(lowered.contains("llvm.func @mrc_emulated_kernels("), "{lowered}");
    }

    /// A rank-0 `linalg` op (a step counter plus one) and a tensor of indices (a pooling's
    /// argmax) on the device: the counter's load, add and store become a one-thread kernel, the
    /// indices stay device memory, and the host touches neither.
    #[test]
    fn scalar_updates_become_kernels_and_index_tensors_stay_on_the_device() {
        const SCALAR: &str = r#"
module {
  func.func @forward(%steps: memref<i64>, %x: memref<2x3xf32>) -> (memref<i64>, memref<2x3xindex>) {
    %c1 = arith.constant 1 : i64
    %next = memref.alloc() {alignment = 64 : i64} : memref<i64>
    linalg.generic {indexing_maps = [affine_map<() -> ()>, affine_map<() -> ()>], iterator_types = []} ins(%steps : memref<i64>) outs(%next : memref<i64>) {
    ^bb0(%in: i64, %out: i64):
      %sum = arith.addi %in, %c1 : i64
      linalg.yield %sum : i64
    }
    %argmax = memref.alloc() {alignment = 64 : i64} : memref<2x3xindex>
    linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]} ins(%x : memref<2x3xf32>) outs(%argmax : memref<2x3xindex>) {
    ^bb0(%in: f32, %out: index):
      %i = linalg.index 1 : index
      linalg.yield %i : index
    }
    return %next, %argmax : memref<i64>, memref<2x3xindex>
  }
}
"#;
        let (context, text) = placed(SCALAR);
        assert!(!text.contains("memref.alloca"), "{text}");
        let mut module = parse_module(&context, &text).unwrap();
        outline(&context, &mut module);
        memory::check_host_accesses(&module).unwrap();
        let text = module.as_operation().to_string();
        assert_eq!(text.matches("gpu.launch_func").count(), 2, "{text}");
        insta::assert_snapshot!(text);
    }

    /// Each breach of the placement rules, and the error naming it.
    #[test]
    fn host_code_touching_device_memory_is_an_error() {
        let load = BUFFERIZED
            .replace(
                "    return %out",
                "    %v = memref.load %out[%c0, %c0] : memref<4x3xf32>\n    func.call @mrc_print(%v) : (f32) -> ()\n    return %out",
            )
            .replace("  func.func @forward", "  func.func private @mrc_print(f32)\n  func.func @forward");
        let escape = BUFFERIZED.replace("memref.dealloc %sizes : memref<2xi64>\n", "").replace(
            "func.func @forward(%x: memref<2x3xf32>) -> memref<4x3xf32>",
            "func.func @forward(%x: memref<2x3xf32>) -> (memref<4x3xf32>, memref<2xi64>)",
        ).replace("return %out : memref<4x3xf32>", "return %out, %sizes : memref<4x3xf32>, memref<2xi64>");
        let mut errors = vec![];
        for source in [load, escape] {
            let (context, text) = placed(&source);
            let mut module = parse_module(&context, &text).unwrap();
            outline(&context, &mut module);
            errors.push(memory::check_host_accesses(&module).unwrap_err().to_string());
        }
        insta::assert_snapshot!(errors.join("\n"));
    }
}
