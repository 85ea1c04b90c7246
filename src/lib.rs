//! mrc: a compiler for Mask R-CNN-family networks.
//!
//! The modules follow the pipeline: `syntax` (model text → AST) → `expand` (AST → graph, with
//! shape inference by the `ops`) → `graph` → `lowering` (MLIR). `diagnostic` serves them all;
//! `init` draws weights for a graph's state.

pub mod autodiff;
pub mod diagnostic;
pub mod expand;
pub mod graph;
pub mod init;
pub mod lowering;
pub mod ops;
pub mod passes;
pub mod run;
pub mod summary;
pub mod syntax;
pub mod targets;
pub mod train;
