//! Errors of the lowering layer.

use thiserror::Error;

/// A failure to emit, parse, verify, lower or JIT-compile an MLIR module. `diagnostics` holds MLIR's
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

    #[error("the JIT needs `{path}`, which is missing")]
    MissingLibrary { path: String },

    #[error("cannot lower `{op}` (at `{node}`): {reason}")]
    Unsupported { op: &'static str, node: String, reason: String },

    #[error("the lowering of `{node}` produced {produced}, but the graph says {expected}")]
    TypeMismatch { node: String, produced: String, expected: String },

    #[error("cannot build MLIR: {0}")]
    Build(String),
}

impl From<melior::Error> for LoweringError {
    fn from(error: melior::Error) -> Self {
        LoweringError::Build(error.to_string())
    }
}
