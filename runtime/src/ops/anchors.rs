//! Anchor generation as torchvision's `AnchorGenerator`.

use crate::error::{invalid, shape_err, Result};

/// The anchors of one level centred on the origin: for each aspect ratio, for each size,
/// `round([-w, -h, w, h] / 2)` with `h = size·√ratio`, `w = size/√ratio` (float32, rounding
/// half to even like `torch.round`).
pub fn cell_anchors(sizes: &[f32], aspect_ratios: &[f32]) -> Vec<[f32; 4]> {
    let mut out = Vec::with_capacity(sizes.len() * aspect_ratios.len());
    for &ar in aspect_ratios {
        let h_ratio = ar.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in sizes {
            let ws = w_ratio * s;
            let hs = h_ratio * s;
            out.push([-ws, -hs, ws, hs].map(|v| (v / 2.0).round_ties_even()));
        }
    }
    out
}

/// Anchors for every level of a feature pyramid over a (padded) batch of `image_size`.
///
/// `sizes[l]` and `aspect_ratios[l]` configure level `l`, whose map is `feature_sizes[l]`; its
/// stride is `image_size / feature_size` in integer division, per axis. Levels are
/// concatenated; within a level, cells in row-major order, and per cell the cell anchors.
pub fn grid_anchors(
    image_size: [usize; 2],
    feature_sizes: &[[usize; 2]],
    sizes: &[Vec<f32>],
    aspect_ratios: &[Vec<f32>],
) -> Result<Vec<[f32; 4]>> {
    const OP: &str = "anchors";
    if feature_sizes.len() != sizes.len() || sizes.len() != aspect_ratios.len() {
        return shape_err(
            OP,
            format!(
                "{} feature maps, {} size lists, {} aspect-ratio lists",
                feature_sizes.len(),
                sizes.len(),
                aspect_ratios.len()
            ),
        );
    }
    for v in sizes.iter().flatten().chain(aspect_ratios.iter().flatten()) {
        if !v.is_finite() || *v <= 0.0 {
            return invalid(OP, format!("anchor size or aspect ratio {v}"));
        }
    }
    let mut total = 0usize;
    for (fs, (s, a)) in feature_sizes.iter().zip(sizes.iter().zip(aspect_ratios)) {
        if fs[0] == 0 || fs[1] == 0 || fs[0] > image_size[0] || fs[1] > image_size[1] {
            return invalid(OP, format!("feature map {fs:?} for an image of {image_size:?}"));
        }
        total += fs[0] * fs[1] * s.len() * a.len();
    }
    let mut out = Vec::with_capacity(total);
    for (fs, (s, a)) in feature_sizes.iter().zip(sizes.iter().zip(aspect_ratios)) {
        let base = cell_anchors(s, a);
        let (stride_h, stride_w) = (image_size[0] / fs[0], image_size[1] / fs[1]);
        for y in 0..fs[0] {
            let sy = (y * stride_h) as f32;
            for x in 0..fs[1] {
                let sx = (x * stride_w) as f32;
                out.extend(base.iter().map(|b| [sx + b[0], sy + b[1], sx + b[2], sy + b[3]]));
            }
        }
    }
    Ok(out)
}
