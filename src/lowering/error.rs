//! Errors of the lowering layer.

use thiserror::Error;

/// A failure to parse, verify, lower or JIT-compile an MLIR module. `diagnostics` holds MLIR's
/// own messages, one per diagnostic, with their locations.
#[derive(Debug, Error)]
pub enum LoweringError {
    #[error("cannot parse MLIR module:\n{}", .diagnostics.join("\n"))]
    ParseModule { diagnostics: Vec<String> },

    #[error("invalid MLIR module:\n{}", .diagnostics.join("\n"))]
    InvalidModule { diagnostics: Vec<String> },

    #[error("cannot parse pass pipeline `{pipeline}`: {message}")]
    ParsePipeline { pipeline: String, message: String },

    #[error("pass pipeline `{pipeline}` failed:\n{}", .diagnostics.join("\n"))]
    PassFailed { pipeline: String, diagnostics: Vec<String> },

    #[error("module is not fully lowered to the LLVM dialect: found `{operation}`")]
    NotLlvmDialect { operation: String },
}
