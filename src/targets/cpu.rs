//! The CPU target (`mrc compile --target cpu`, and `mrc run`'s JIT): the network's `@forward`
//! lowered to the LLVM dialect, products in the runtime's GEMM, written as a native executable
//! ([`super::native`]).

use std::path::Path;

use super::{native, CompileError, Emit, Emitted, Program, ProgramKind, Target};
use crate::lowering::{
    add_entry_points, jit, lower_to_llvm, BuiltIns, JitEngine, LoweringError, Products, ProgramMain,
};
use melior::{ir::Module, Context};

/// The host CPU: products in the runtime's GEMM microkernels, the LLVM dialect, code compiled by
/// LLVM in process and linked with the runtime's static library.
pub struct Cpu;

impl Target for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn products(&self) -> Products {
        Products::HostGemm
    }
    /// The runtime's optimized CPU implementations.
    fn builtins(&self) -> BuiltIns {
        BuiltIns::Runtime
    }
    /// The runtime's GEMM reads convolution weights packed at load time.
    fn graph_passes(&self) -> Vec<Box<dyn crate::passes::Pass>> {
        let mut passes = crate::passes::default_passes();
        passes.push(Box::new(crate::passes::PackGemmWeights));
        passes.push(Box::new(crate::passes::LayOutForWinograd));
        passes
    }
    fn training_passes(&self) -> Vec<Box<dyn crate::passes::Pass>> {
        let mut passes = crate::passes::training_passes();
        passes.push(Box::new(crate::passes::LayOutForWinograd));
        passes
    }
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError> {
        lower_to_llvm(context, module)
    }
    /// The runtime's functions (`mrc_runtime::abi::symbols`, one per `RuntimeFunction`) bound
    /// to this process's copies.
    fn jit<'c>(&self, context: &'c Context, emitted: Emitted<'c>, level: u8) -> Result<JitEngine, LoweringError> {
        let Emitted { mut module, signature, .. } = emitted;
        self.lower(context, &mut module)?;
        add_entry_points(context, &module, signature.arguments.len(), None)?;
        jit(&module, level as usize)
    }
    /// A native executable whose `main` calls the runtime's CPU program driver.
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
        let main = match program.kind {
            ProgramKind::Inference { .. } => ProgramMain::CPU,
            ProgramKind::Training { .. } => ProgramMain::TRAINING,
        };
        add_entry_points(context, &module, signature.arguments.len(), Some(main))?;
        native::write_program(&module, &companions, &[], program, interface, level, emit, output)
    }
}
