//! How the built-in detection operators (`src/ops/detection.rs`) are computed: the second
//! place, after [`super::Products`], where a target's choice reaches operator lowerings. Each
//! built-in's `lower` matches on [`Emitter::builtins`] once.

use super::builder::Emitter;

/// How a target computes the built-in detection operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltIns {
    /// Calls of the runtime's functions (`mrc_runtime::abi::detection`), its optimized CPU
    /// implementations (the CPU).
    Runtime,
    /// Target-neutral `linalg`/`tensor`/`scf` where the built-in has such a lowering, which a
    /// GPU pipeline turns into kernels; runtime calls for the others (those needing top-k and
    /// NMS).
    Kernels,
}

impl Emitter<'_, '_> {
    /// How built-ins are computed: the target's choice.
    pub fn builtins(&self) -> BuiltIns {
        self.builtins
    }
}
