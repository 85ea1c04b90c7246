//! The CUDA target (`mrc compile --target cuda[:sm_XX]`).

use std::path::Path;

use super::{CompileError, Emit, Emitted, Program, Target};
use crate::lowering::{LoweringError, Products};
use melior::{ir::Module, Context, ExecutionEngine};

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
    fn lower(&self, _context: &Context, _module: &mut Module) -> Result<(), LoweringError> {
        Err(LoweringError::Build("todo".into()))
    }
    fn jit<'c>(&self, _context: &'c Context, _emitted: Emitted<'c>, _level: u8) -> Result<ExecutionEngine, LoweringError> {
        Err(LoweringError::Build("todo".into()))
    }
    fn write<'c>(&self, _c: &'c Context, _e: Emitted<'c>, _p: Program, _l: u8, _emit: Emit, _o: &Path) -> Result<String, CompileError> {
        Err(LoweringError::Build("todo".into()).into())
    }
}
