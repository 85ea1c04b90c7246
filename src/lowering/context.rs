//! The MLIR context every lowering runs in.

use melior::{
    dialect::DialectRegistry,
    ir::Module,
    utility::{register_all_dialects, register_all_llvm_translations, register_all_passes},
    Context,
};

use super::{diagnostics::capture_diagnostics, error::LoweringError};

/// Creates an MLIR context with every upstream dialect registered and loaded, the LLVM IR
/// translations registered (needed by the JIT and by `gpu-module-to-binary`), and every upstream
/// pass registered so that textual pipelines can name them.
pub fn create_context() -> Context {
    // Pass registration is process-wide; melior guards it with a `Once` because registering
    // twice corrupts MLIR's registry. Dialects and translations are per context.
    register_all_passes();

    let registry = DialectRegistry::new();
    register_all_dialects(&registry);

    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    context
}

/// Parses MLIR text into a verified module, returning the parser's diagnostics on failure.
pub fn parse_module<'c>(context: &'c Context, source: &str) -> Result<Module<'c>, LoweringError> {
    // melior hands MLIR a C string and panics on an interior NUL byte.
    if source.contains('\0') {
        return Err(LoweringError::ParseModule { diagnostics: vec!["source contains a NUL byte".to_owned()] });
    }
    let (module, diagnostics) = capture_diagnostics(context, || Module::parse(context, source));
    module.ok_or(LoweringError::ParseModule { diagnostics })
}
