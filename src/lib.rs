//! mrc: a compiler for Mask R-CNN-family networks.
//!
//! The modules follow the pipeline: `syntax` → `graph` → `passes` → `lowering` → `targets`.

pub mod lowering;
