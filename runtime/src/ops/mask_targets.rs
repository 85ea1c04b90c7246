//! Mask targets for the mask head: torchvision's `project_masks_on_boxes`, each positive RoI's
//! ground-truth mask cropped and resampled onto an `M × M` grid by RoIAlign.

use crate::error::{invalid, shape_err, Result};
use crate::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use crate::tensor::FeatureMap;

/// Binary masks `[G, Hb, Wb]` (u8, nonzero inside), each valid within its own `[h, w]` corner
/// (its image's resized size; the rest is batch padding).
#[derive(Clone, Copy, Debug)]
pub struct GtMasks<'a> {
    pub data: &'a [u8],
    /// `[G, Hb, Wb]`.
    pub shape: [usize; 3],
    /// The valid `[h, w]` of each mask.
    pub sizes: &'a [[usize; 2]],
}

/// `[K, M, M]` targets: for each box, `roi_align` of its matched mask (as float, restricted to
/// its valid size) with output `M × M`, spatial scale 1, adaptive sampling, `aligned=False`.
pub fn project_masks_on_boxes(masks: &GtMasks, boxes: &[[f32; 4]], matched: &[usize], size: usize) -> Result<Vec<f32>> {
    const OP: &str = "project_masks_on_boxes";
    let [g, hb, wb] = masks.shape;
    if masks.data.len() != g * hb * wb || masks.sizes.len() != g || matched.len() != boxes.len() {
        return shape_err(
            OP,
            format!(
                "{} mask values for shape {:?}, {} mask sizes, {} matches for {} boxes",
                masks.data.len(),
                masks.shape,
                masks.sizes.len(),
                matched.len(),
                boxes.len()
            ),
        );
    }
    if let Some(s) = masks.sizes.iter().find(|s| s[0] > hb || s[1] > wb) {
        return invalid(OP, format!("mask size {s:?} beyond the masks' {hb}x{wb}"));
    }
    if let Some(&m) = matched.iter().find(|&&m| m >= g) {
        return invalid(OP, format!("matched mask {m} of {g}"));
    }
    let params = RoiAlignParams {
        output_size: [size, size],
        spatial_scale: 1.0,
        sampling_ratio: -1,
        aligned: false,
        mode: PoolMode::Avg,
    };
    let plane = size * size;
    let mut out = vec![0.0f32; boxes.len() * plane];
    // Each mask converted once, for all the boxes matched to it.
    for (mask, &[h, w]) in masks.sizes.iter().enumerate() {
        let members: Vec<usize> = (0..boxes.len()).filter(|&k| matched[k] == mask).collect();
        if members.is_empty() {
            continue;
        }
        let bits = &masks.data[mask * hb * wb..(mask + 1) * hb * wb];
        let values: Vec<f32> =
            (0..h).flat_map(|y| bits[y * wb..y * wb + w].iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })).collect();
        let map = FeatureMap::new(&values, [1, 1, h, w])?;
        let rois: Vec<[f32; 5]> =
            members.iter().map(|&k| [0.0, boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3]]).collect();
        let pooled = roi_align(&map, &rois, &params)?;
        for (i, &k) in members.iter().enumerate() {
            out[k * plane..(k + 1) * plane].copy_from_slice(&pooled[i * plane..(i + 1) * plane]);
        }
    }
    Ok(out)
}
