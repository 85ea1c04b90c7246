//! The runtime that programs compiled by `mrc` link: the detection operators on the CPU, the C
//! interface generated code calls ([`abi`]), the device a CUDA program runs on ([`device`]),
//! weights and their load-time transforms, and the program driver.
//!
//! Every operator in [`ops`] reproduces torchvision's numerics (same sampling positions, same
//! float32 evaluation order where it matters, same tie-breaking), takes plain slices plus shapes
//! and returns owned buffers, which the C interface hands to generated code without copying. Boxes are `[x1, y1, x2, y2]` in pixels; RoIs are
//! `[batch_index, x1, y1, x2, y2]`; sizes are `[height, width]`. Bad arguments give an
//! [`Error`], never a panic, and every operator accepts zero boxes.

pub mod abi;
pub mod coco;
pub mod data;
pub mod detection;
pub mod device;
pub mod error;
pub mod ops;
pub mod program;
pub mod tensor;
pub mod train;
pub mod training;
pub mod transforms;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::FeatureMap;
