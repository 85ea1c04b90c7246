//! Matching boxes to ground truth as torchvision's `Matcher` over `box_iou`: the training-side
//! assignment of anchors (RPN) and proposals (RoI heads) to the objects they should detect.

use crate::error::{check_finite, invalid, Result};
use crate::ops::nms::iou;

/// A box whose best IoU is below the low threshold: background.
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// A box whose best IoU lies between the thresholds: neither, ignored by the losses.
pub const BETWEEN_THRESHOLDS: i64 = -2;

/// torchvision's `Matcher(high_threshold, low_threshold, allow_low_quality_matches)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    /// Boxes with a best IoU `>= high` are matched (foreground).
    pub high: f32,
    /// Boxes with a best IoU `< low` are background.
    pub low: f32,
    /// Also match, for each ground-truth box, every box whose IoU with it equals its highest
    /// (so that each object has at least one match).
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    /// The thresholds are rounded to float32 first, as torch does when it compares a float32
    /// tensor with a Python float.
    pub fn new(op: &'static str, high: f64, low: f64, allow_low_quality_matches: bool) -> Result<Self> {
        if !(0.0..=1.0).contains(&low) || !(low..=1.0).contains(&high) {
            return invalid(op, format!("IoU thresholds {low} (background) and {high} (foreground)"));
        }
        Ok(Matcher { high: high as f32, low: low as f32, allow_low_quality_matches })
    }

    /// For each of `boxes`, the index into `gt` of the object it matches, or
    /// [`BELOW_LOW_THRESHOLD`] or [`BETWEEN_THRESHOLDS`]. Without ground truth every box is
    /// below the low threshold (torchvision's callers treat that case as all background).
    pub fn match_boxes(&self, op: &'static str, gt: &[[f32; 4]], boxes: &[[f32; 4]]) -> Result<Vec<i64>> {
        check_finite(op, "ground-truth box", gt.as_flattened())?;
        check_finite(op, "box", boxes.as_flattened())?;
        if gt.is_empty() {
            return Ok(vec![BELOW_LOW_THRESHOLD; boxes.len()]);
        }
        // box_iou(gt, boxes) in float32, a row per object.
        let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
        let box_areas: Vec<f32> = boxes.iter().map(area).collect();
        let quality: Vec<Vec<f32>> = gt
            .iter()
            .map(|g| {
                let ga = area(g);
                boxes.iter().zip(&box_areas).map(|(b, &ba)| iou(g, ga, b, ba)).collect()
            })
            .collect();
        // Best object per box (the first among equals, as torch's `max(dim=0)`).
        let mut best = vec![(f32::NEG_INFINITY, 0usize); boxes.len()];
        for (g, row) in quality.iter().enumerate() {
            for (slot, &q) in best.iter_mut().zip(row) {
                if q > slot.0 {
                    *slot = (q, g);
                }
            }
        }
        let mut matches: Vec<i64> = best
            .iter()
            .map(|&(q, g)| {
                if q < self.low {
                    BELOW_LOW_THRESHOLD
                } else if q < self.high {
                    BETWEEN_THRESHOLDS
                } else {
                    g as i64
                }
            })
            .collect();
        if self.allow_low_quality_matches {
            // Every box whose IoU with some object equals that object's highest takes its own
            // best object (not necessarily that one), as `set_low_quality_matches_`.
            for row in &quality {
                let highest = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (b, &q) in row.iter().enumerate() {
                    if q == highest {
                        matches[b] = best[b].1 as i64;
                    }
                }
            }
        }
        Ok(matches)
    }
}
