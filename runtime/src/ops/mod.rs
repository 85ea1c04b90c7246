//! The CPU built-in operators, one module per operator family.

pub mod anchors;
pub mod box_coder;
pub(crate) mod interpolate;
pub mod keypoints;
pub mod losses;
pub mod mask_targets;
pub mod matcher;
pub mod multiscale;
pub mod nms;
pub mod paste_masks;
pub mod preprocess;
pub mod roi_align;
pub mod roi_pool;
pub mod sampler;
mod sort;

use crate::error::{invalid, Result};

/// The largest box coordinate the operators that round boxes to integer cells accept: far
/// beyond any image, and small enough that the integer arithmetic cannot overflow.
pub(crate) const MAX_COORDINATE: f32 = 1e8;

pub(crate) fn check_coordinates(op: &'static str, values: &[f32]) -> Result<()> {
    crate::error::check_finite(op, "box", values)?;
    match values.iter().find(|v| v.abs() > MAX_COORDINATE) {
        Some(v) => invalid(op, format!("box coordinate {v} beyond ±{MAX_COORDINATE}")),
        None => Ok(()),
    }
}

/// Validates a batch index stored as a float in a RoI row, as torchvision casts it to int.
pub(crate) fn batch_index(op: &'static str, value: f32, n: usize) -> Result<usize> {
    if value.fract() != 0.0 || value < 0.0 || value as usize >= n {
        return invalid(op, format!("batch index {value} for a batch of {n}"));
    }
    Ok(value as usize)
}
