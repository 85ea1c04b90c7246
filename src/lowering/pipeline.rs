//! Pass pipelines from `linalg` on tensors to the LLVM dialect (CPU) and to PTX (CUDA), and the
//! in-process JIT for CPU code.

use melior::{
    ir::{
        operation::{OperationLike, WalkOrder, WalkResult},
        Module,
    },
    pass::PassManager,
    utility::parse_pass_pipeline,
    Context, Error as MeliorError, ExecutionEngine,
};

use std::path::Path;

use super::rewrite::{operations_named, symbol_name};
use super::{diagnostics::capture_diagnostics, error::LoweringError};

/// Bufferization, the first half of every target's pipeline, up to the deallocations that
/// [`bufferize`] frees early:
/// - elementwise `linalg.generic`s fused into their producers and consumers (a convolution's
///   bias, frozen batch norm, ReLU and residual add become one loop nest);
/// - empty-tensor elimination, so that results computed into a `tensor.empty` are written
///   straight into the destination they are materialized in (no temporary and copy);
/// - one-shot bufferization across function boundaries, with identity layouts so that every
///   function argument and result is a plain `StridedMemRef` descriptor at the C interface, and
///   loops that carry tensors each iteration computes anew (kernels launched from host loops);
/// - the first half of MLIR's `buffer-deallocation-pipeline`: ownership-based deallocation
///   (each block frees what it owns at its end, in one `bufferization.dealloc`), simplified.
const BUFFERIZE: &str = "builtin.module(\
     linalg-fuse-elementwise-ops,\
     eliminate-empty-tensors,\
     one-shot-bufferize{allow-return-allocs-from-loops bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},\
     expand-realloc{emit-deallocs=false},\
     canonicalize,\
     ownership-based-buffer-deallocation,\
     canonicalize,\
     buffer-deallocation-simplification)";

/// The rest of `buffer-deallocation-pipeline` after [`super::liveness::free_after_last_use`],
/// then `bufferization.clone` (which the deallocation inserts where a function returns a view
/// of an argument) to an allocation and a copy.
const LOWER_DEALLOCATIONS: &str = "builtin.module(\
     canonicalize,\
     buffer-deallocation-simplification,\
     bufferization-lower-deallocations,\
     cse,\
     canonicalize,\
     convert-bufferization-to-memref)";

/// Bufferizes `module` in place ([`BUFFERIZE`]), frees each buffer right after its last use
/// where MLIR would free it at the end of its block ([`super::liveness`]), and lowers the
/// deallocations ([`LOWER_DEALLOCATIONS`]).
pub fn bufferize(context: &Context, module: &mut Module) -> Result<(), LoweringError> {
    run_pipeline(context, module, BUFFERIZE)?;
    super::liveness::free_after_last_use(module)?;
    run_pipeline(context, module, LOWER_DEALLOCATIONS)
}

/// The host side's conversions to the LLVM dialect, after structured control flow is gone; `math`
/// ops without an LLVM intrinsic become libm calls; `convert-ub-to-llvm` is needed for the
/// `ub.poison` that the conversions leave.
macro_rules! host_to_llvm_passes {
    ($memref:literal) => {
        concat!(
            $memref,
            ",convert-math-to-llvm,\
             convert-math-to-libm,\
             convert-arith-to-llvm,\
             convert-index-to-llvm,\
             convert-cf-to-llvm,\
             convert-func-to-llvm,\
             convert-ub-to-llvm"
        )
    };
}

/// Lowers a bufferized module ([`bufferize`]) to the LLVM dialect for the CPU: linalg to loops whose parallel
/// dimensions form one `scf.parallel`, which `async-parallel-for` splits into blocks run on every
/// thread (as many blocks as the runtime's threads make worth it, however few the iterations:
/// a loop over channels may reduce thousands of values in each;
/// `mrc_runtime::abi::async_runtime` is MLIR's async runtime on rayon's pool), the coroutines
/// that makes lowered to LLVM's; then `expand-strided-metadata` before `lower-affine` (the
/// former emits `affine.apply`), then `scf` to `cf`; every remaining dialect to LLVM.
pub const CPU_PIPELINE: &str = concat!(
    "builtin.module(\
     convert-linalg-to-parallel-loops,\
     async-parallel-for{async-dispatch=false num-workers=-1 min-task-size=1},\
     async-to-async-runtime,\
     async-runtime-ref-counting,\
     async-runtime-ref-counting-opt,\
     convert-async-to-llvm,\
     expand-strided-metadata,\
     lower-affine,\
     convert-scf-to-cf,",
    host_to_llvm_passes!("finalize-memref-to-llvm"),
    ",reconcile-unrealized-casts)"
);

/// The CUDA target's second stage: every `linalg` op (copies included, once rewritten as
/// `linalg.generic`) to an `scf.parallel` nest whose reductions are sequential loops inside.
pub const GPU_PARALLEL_LOOPS: &str = "builtin.module(convert-linalg-to-parallel-loops,canonicalize)";

/// The CUDA target's third stage: each outermost `scf.parallel` tiled (the tile a block of
/// threads, with bounds checks inside rather than `min` bounds, since a launch needs a constant
/// block size), mapped to blocks and threads (first dimension to `x`), and outlined into a
/// kernel launched by `gpu.launch_func`.
pub fn gpu_outlining(tile_sizes: &[usize]) -> String {
    let tiles = tile_sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    format!(
        "builtin.module(\
         func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={tiles} no-min-max-bounds=true}}),\
         func.func(gpu-map-parallel-loops),\
         convert-parallel-loops-to-gpu,\
         canonicalize,\
         gpu-kernel-outlining)"
    )
}

/// The CUDA target's last stage begins here, for a module whose kernels are outlined into
/// `gpu.module`s and launched by `gpu.launch_func`: structured control flow to branches, and the
/// kernels to NVVM. Their `math` ops become calls of libdevice's `__nv_*` functions, which
/// decide whether [`cuda_pipeline`] must link it.
pub const KERNELS_TO_NVVM: &str = "builtin.module(\
     expand-strided-metadata,\
     lower-affine,\
     convert-scf-to-cf,\
     gpu.module(convert-gpu-to-nvvm,reconcile-unrealized-casts))";

/// The rest of the CUDA target's last stage, after [`KERNELS_TO_NVVM`]: it attaches an NVVM
/// target for `chip` (e.g. `sm_90`), linking `libdevice` into the kernels where given, lowers
/// the host side to LLVM (allocations through the generic `_mlir_memref_to_llvm_alloc`/`_free`,
/// which the runtime implements on the device), launches to calls of the `mgpu*` functions (the
/// runtime's device layer), and serializes each `gpu.module` into a `gpu.binary` holding PTX
/// text (`format=isa` needs no CUDA installation).
pub fn cuda_pipeline(chip: &str, libdevice: Option<&Path>) -> String {
    let link = libdevice.map_or(String::new(), |path| format!(" l={}", path.display()));
    format!(
        "builtin.module(\
         nvvm-attach-target{{chip={chip} O=3{link}}},\
         {},\
         gpu-to-llvm,\
         reconcile-unrealized-casts,\
         gpu-module-to-binary{{format=isa}})",
        host_to_llvm_passes!("finalize-memref-to-llvm{use-generic-functions=true}")
    )
}

/// Whether a kernel of `module`, lowered to NVVM, calls a libdevice function (`__nv_expf`, ...).
fn calls_libdevice(module: &Module) -> bool {
    operations_named(&module.as_operation(), &["gpu.module"]).iter().any(|kernels| {
        operations_named(kernels, &["llvm.func"]).iter().any(|f| symbol_name(f).is_some_and(|name| name.starts_with("__nv_")))
    })
}

/// Verifies `module`, then runs the textual pass `pipeline` on it in place.
pub fn run_pipeline(context: &Context, module: &mut Module, pipeline: &str) -> Result<(), LoweringError> {
    // The pass manager checks the IR after each pass but not before the first one.
    let (valid, diagnostics) = capture_diagnostics(context, || module.as_operation().verify());
    if !valid {
        return Err(LoweringError::InvalidModule { diagnostics });
    }

    let pass_manager = PassManager::new(context);
    parse_pass_pipeline(pass_manager.as_operation_pass_manager(), pipeline).map_err(|error| {
        LoweringError::ParsePipeline {
            pipeline: pipeline.to_owned(),
            message: match error {
                MeliorError::ParsePassPipeline(message) => message,
                other => other.to_string(),
            },
        }
    })?;

    let (outcome, diagnostics) = capture_diagnostics(context, || pass_manager.run(module));
    outcome.map_err(|_| LoweringError::PassFailed { pipeline: pipeline.to_owned(), diagnostics })
}

/// Lowers `module` in place to the LLVM dialect ([`bufferize`], then [`CPU_PIPELINE`]), and checks that nothing
/// else is left: the conversions leave what they cannot convert (and
/// `reconcile-unrealized-casts` leaves live casts) without failing.
pub fn lower_to_llvm(context: &Context, module: &mut Module) -> Result<(), LoweringError> {
    bufferize(context, module)?;
    run_pipeline(context, module, CPU_PIPELINE)?;
    match first_operation_outside_llvm(module) {
        Some(operation) => Err(LoweringError::NotLlvmDialect { operation }),
        None => Ok(()),
    }
}

/// Lowers `module` in place with [`KERNELS_TO_NVVM`] and [`cuda_pipeline`] for `chip`, libdevice
/// linked if the kernels call it (an error if it cannot be found): afterwards its `gpu.binary`
/// ops hold the kernels' PTX (see [`super::extract_ptx`]) and its host code is in the LLVM
/// dialect, launches included.
pub fn lower_gpu_to_ptx(context: &Context, module: &mut Module, chip: &str) -> Result<(), LoweringError> {
    run_pipeline(context, module, KERNELS_TO_NVVM)?;
    let libdevice = if calls_libdevice(module) { Some(super::libdevice::find()?) } else { None };
    run_pipeline(context, module, &cuda_pipeline(chip, libdevice.as_deref()))?;
    match first_operation_outside_llvm(module) {
        Some(operation) => Err(LoweringError::NotLlvmDialect { operation }),
        None => Ok(()),
    }
}

/// JIT-compiles a module already lowered to the LLVM dialect for the host CPU, at LLVM
/// optimization level `optimization_level` (0 to 3), with the runtime's functions
/// (`mrc_runtime::abi::symbols`, `memrefCopy` among them) resolvable. For a function `f` marked
/// `llvm.emit_c_interface`, `ExecutionEngine::invoke_packed("f", args)` calls its C interface
/// `_mlir_ciface_f`, with `args` pointing to each of that function's arguments (memrefs are
/// passed as pointers to descriptors; a returned memref is a leading pointer to a descriptor),
/// followed by a pointer to the scalar result if there is one.
pub fn jit(module: &Module, optimization_level: usize) -> Result<JitEngine, LoweringError> {
    engine(module, optimization_level, false)
}

/// An execution engine whose code is freed only once the tasks it started on the runtime's
/// pool (its parallel loops' blocks) have returned.
pub struct JitEngine(ExecutionEngine);

impl std::ops::Deref for JitEngine {
    type Target = ExecutionEngine;
    fn deref(&self) -> &ExecutionEngine {
        &self.0
    }
}

impl Drop for JitEngine {
    fn drop(&mut self) {
        mrc_runtime::abi::async_runtime::quiesce();
    }
}

/// [`jit`] with the compiled code kept for `ExecutionEngine::dump_to_object_file` (after the
/// first lookup, which compiles it).
pub fn jit_for_object(module: &Module, optimization_level: usize) -> Result<JitEngine, LoweringError> {
    engine(module, optimization_level, true)
}

fn engine(module: &Module, optimization_level: usize, keep_object: bool) -> Result<JitEngine, LoweringError> {
    // melior does not report a failed engine creation (it keeps a null engine that crashes on
    // first use), and the usual cause is an operation left outside the LLVM dialect: reject it.
    if let Some(operation) = first_operation_outside_llvm(module) {
        return Err(LoweringError::NotLlvmDialect { operation });
    }
    let engine = ExecutionEngine::new(module, optimization_level, &[], keep_object, false);
    for (name, pointer) in mrc_runtime::abi::symbols() {
        // SAFETY: each pointer is the runtime function of that C symbol.
        unsafe { engine.register_symbol(&name, pointer) };
    }
    // A program's `main` calls it; the linker binds it, the JIT never runs `main`.
    // SAFETY: a function of the right type, never called.
    unsafe { engine.register_symbol(super::MODULE_INITIALIZER, unbound_initializer as *mut ()) };
    Ok(JitEngine(engine))
}

extern "C" fn unbound_initializer() {}

/// Runs the global constructors of the module `engine` compiled (a compiled program's `main`
/// does so through [`super::MODULE_INITIALIZER`]).
pub fn run_constructors(engine: &ExecutionEngine) {
    // melior does not expose the engine's handle, its only field.
    const _: () = assert!(std::mem::size_of::<ExecutionEngine>() == std::mem::size_of::<mlir_sys::MlirExecutionEngine>());
    // SAFETY: `ExecutionEngine` is a wrapper of exactly its handle, which stays owned by it.
    unsafe {
        let raw = std::ptr::read(engine as *const ExecutionEngine as *const mlir_sys::MlirExecutionEngine);
        mlir_sys::mlirExecutionEngineInitialize(raw);
    }
}

/// The name of the first operation, in pre-order, that is neither the module itself nor in the
/// LLVM dialect nor one of the GPU dialect's operations that the translation to LLVM IR turns
/// into runtime calls (a serialized `gpu.binary` and the `gpu.launch_func`s naming it).
fn first_operation_outside_llvm(module: &Module) -> Option<String> {
    let mut found = None;
    module.as_operation().walk(WalkOrder::PreOrder, |operation| {
        let name = operation.name();
        let name = name.as_string_ref().as_str().unwrap_or("<non-UTF-8 name>");
        if name == "builtin.module" || name.starts_with("llvm.") || name == "gpu.launch_func" {
            WalkResult::Advance
        } else if name == "gpu.binary" {
            WalkResult::Skip
        } else {
            found = Some(name.to_owned());
            WalkResult::Interrupt
        }
    });
    found
}
