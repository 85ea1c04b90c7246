//! Mask resampling between the M×M mask head and the image: pasting predicted masks into the
//! image (inference) and cropping ground-truth masks to M×M (training targets).

use rayon::prelude::*;

use crate::error::{invalid, shape_err, Result};
use crate::ops::check_coordinates;
use crate::ops::interpolate::{tap, Tap};
use crate::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use crate::tensor::FeatureMap;

/// The integer box a padded mask is pasted into: torchvision's `expand_boxes` by
/// `(M + 2·padding)/M` about the centre, in float32, then truncated toward zero.
pub fn expand_box(b: &[f32; 4], m: usize, padding: usize) -> [i64; 4] {
    // torch multiplies a float32 tensor by a Python float: the factor is rounded to float32.
    let scale = ((m + 2 * padding) as f64 / m as f64) as f32;
    let w_half = (b[2] - b[0]) * 0.5 * scale;
    let h_half = (b[3] - b[1]) * 0.5 * scale;
    let x_c = (b[2] + b[0]) * 0.5;
    let y_c = (b[3] + b[1]) * 0.5;
    [(x_c - w_half) as i64, (y_c - h_half) as i64, (x_c + w_half) as i64, (y_c + h_half) as i64]
}

/// Pastes `masks` (`[N, m, m]` probabilities) into `[N, H, W]` images of size `image_size`,
/// as torchvision's `paste_masks_in_image`: each mask is zero-padded by `padding`, its box
/// expanded to match, and the padded mask resized bilinearly to the integer box
/// (`x2 − x1 + 1` wide) and clipped to the image. The result is soft (not thresholded).
pub fn paste_masks_in_image(
    masks: &[f32],
    m: usize,
    boxes: &[[f32; 4]],
    image_size: [usize; 2],
    padding: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; boxes.len() * image_size[0] * image_size[1]];
    paste_masks_into_image(masks, m, boxes, image_size, padding, &mut out)?;
    Ok(out)
}

/// [`paste_masks_in_image`] into `out`, zeros of its size (`[D, H, W]`), where the masks are
/// pasted: the buffer the caller returns, with no copy.
pub fn paste_masks_into_image(
    masks: &[f32],
    m: usize,
    boxes: &[[f32; 4]],
    image_size: [usize; 2],
    padding: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "paste_masks_in_image";
    if m == 0 {
        return invalid(OP, "mask size 0");
    }
    if masks.len() != boxes.len() * m * m {
        return shape_err(OP, format!("{} mask values for {} boxes of {m}x{m}", masks.len(), boxes.len()));
    }
    for b in boxes {
        check_coordinates(OP, b)?;
    }
    let [ih, iw] = image_size;
    if out.len() != boxes.len() * ih * iw {
        return shape_err(OP, format!("{} values for {} masks of {ih}x{iw}", out.len(), boxes.len()));
    }
    if ih == 0 || iw == 0 {
        return Ok(());
    }
    let s = m + 2 * padding;
    out.par_chunks_mut(ih * iw).zip(masks.par_chunks(m * m)).zip(boxes.par_iter()).for_each(
        |((o, mask), b)| {
            let padded = pad(mask, m, padding);
            paste_one(&padded, s, &expand_box(b, m, padding), ih, iw, o);
        },
    );
    Ok(())
}

fn pad(mask: &[f32], m: usize, padding: usize) -> Vec<f32> {
    let s = m + 2 * padding;
    let mut p = vec![0.0f32; s * s];
    for (y, row) in mask.chunks_exact(m).enumerate() {
        let start = (y + padding) * s + padding;
        p[start..start + m].copy_from_slice(row);
    }
    p
}

fn paste_one(padded: &[f32], s: usize, b: &[i64; 4], ih: usize, iw: usize, out: &mut [f32]) {
    let w = (b[2] - b[0] + 1).max(1);
    let h = (b[3] - b[1] + 1).max(1);
    let x0 = b[0].max(0);
    let x1 = (b[2] + 1).min(iw as i64);
    let y0 = b[1].max(0);
    let y1 = (b[3] + 1).min(ih as i64);
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    // Only the part of the resized mask that lands inside the image is computed.
    let tx: Vec<Tap> = (x0..x1).map(|x| tap(s, w as usize, (x - b[0]) as usize)).collect();
    for y in y0..y1 {
        let ty = tap(s, h as usize, (y - b[1]) as usize);
        let row = &mut out[y as usize * iw + x0 as usize..y as usize * iw + x1 as usize];
        for (v, t) in row.iter_mut().zip(&tx) {
            *v = crate::ops::interpolate::sample(padded, s, &ty, t);
        }
    }
}

/// Crops and resizes ground-truth masks (`[G, H, W]`, values in 0..1) to `m×m` inside each
/// box, as torchvision's `project_masks_on_boxes`: RoIAlign with scale 1, adaptive sampling and
/// `aligned=False`. `matched` gives, per box, the index of its ground-truth mask.
/// Returns `[K, m, m]`.
pub fn project_masks_on_boxes(
    gt_masks: &[f32],
    mask_hw: [usize; 2],
    boxes: &[[f32; 4]],
    matched: &[usize],
    m: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "project_masks_on_boxes";
    if boxes.len() != matched.len() {
        return shape_err(OP, format!("{} boxes but {} matched indices", boxes.len(), matched.len()));
    }
    if !gt_masks.len().is_multiple_of((mask_hw[0] * mask_hw[1]).max(1)) {
        return shape_err(OP, format!("{} values for masks of {}x{}", gt_masks.len(), mask_hw[0], mask_hw[1]));
    }
    let g = gt_masks.len().checked_div(mask_hw[0] * mask_hw[1]).unwrap_or(0);
    let input = FeatureMap::new(gt_masks, [g, 1, mask_hw[0], mask_hw[1]])?;
    let rois: Vec<[f32; 5]> = boxes.iter().zip(matched).map(|(b, &i)| [i as f32, b[0], b[1], b[2], b[3]]).collect();
    roi_align(
        &input,
        &rois,
        &RoiAlignParams { output_size: [m, m], spatial_scale: 1.0, sampling_ratio: -1, aligned: false, mode: PoolMode::Avg },
    )
}
