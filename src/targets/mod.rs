//! Targets: from the graph to something that runs. Everything up to the emitted `@forward` is
//! shared ([`emit`]: the graph passes, the emission, the interface); a [`Target`] decides the
//! rest: how dense products are computed, its MLIR pass pipeline, how runtime functions are
//! bound, and how its output is written. `mrc run` (JIT, in process) and `mrc compile` both go
//! through [`emit`] and a target's [`Target::lower`].
//!
//! [`cpu`] writes native executables; it is the only target so far.

pub mod cpu;

use melior::{ir::Module, Context};
use mrc_runtime::abi::forward::Interface;

use crate::graph::{Graph, Port};
use crate::lowering::{emit_forward, interface, LoweringError, Products, Signature};
use crate::passes;

/// What a target decides.
pub trait Target {
    fn name(&self) -> &'static str;
    /// How dense products (convolutions, linear layers) are computed.
    fn products(&self) -> Products;
    /// Lowers an emitted module in place with the target's pass pipeline, to what its back end
    /// takes (the CPU: the LLVM dialect).
    fn lower(&self, context: &Context, module: &mut Module) -> Result<(), LoweringError>;
}

/// A graph optimized and emitted for a target, not yet lowered.
pub struct Emitted<'c> {
    pub module: Module<'c>,
    pub signature: Signature,
    /// The runtime's description of `@forward`.
    pub interface: Interface,
    /// The graph passes that changed the graph.
    pub passes: Vec<&'static str>,
}

/// The optimization level's graph passes (none at 0) on a copy of `graph` whose outputs are
/// `outputs`, then `@forward` emitted for `target`.
pub fn emit<'c>(
    context: &'c Context,
    graph: &Graph,
    outputs: &[(String, Port)],
    target: &dyn Target,
    level: u8,
) -> Result<Emitted<'c>, LoweringError> {
    let mut graph = graph.clone();
    graph.outputs = outputs.to_vec();
    let passes = if level > 0 { passes::run(&mut graph, &passes::default_passes()) } else { vec![] };
    let (module, signature) = emit_forward(context, &graph, target.products())?;
    let interface = interface(&graph, &signature);
    Ok(Emitted { module, signature, interface, passes })
}
