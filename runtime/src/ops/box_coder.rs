//! Box regression coding (torchvision's `BoxCoder`) and the box utilities around it.

use crate::error::{check_finite, invalid, shape_err, Result};

/// `log(1000 / 16)`: the largest width/height log-ratio decoding applies, so that a wild
/// regression cannot overflow `exp`.
pub const BBOX_XFORM_CLIP: f32 = 4.135_166_556_742_356_f64 as f32;

/// Encodes boxes as deltas `(dx, dy, dw, dh)` relative to reference boxes and back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
    pub weights: [f32; 4],
    pub bbox_xform_clip: f32,
}

impl BoxCoder {
    pub fn new(weights: [f32; 4]) -> Self {
        BoxCoder { weights, bbox_xform_clip: BBOX_XFORM_CLIP }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        if self.weights.iter().any(|w| !w.is_finite() || *w <= 0.0) || self.bbox_xform_clip.is_nan() {
            return invalid(op, format!("weights {:?}, clip {}", self.weights, self.bbox_xform_clip));
        }
        Ok(())
    }

    /// The deltas that take each of `proposals` to the matching box of `gt`.
    pub fn encode(&self, gt: &[[f32; 4]], proposals: &[[f32; 4]]) -> Result<Vec<[f32; 4]>> {
        const OP: &str = "box_encode";
        self.check(OP)?;
        if gt.len() != proposals.len() {
            return shape_err(OP, format!("{} boxes but {} proposals", gt.len(), proposals.len()));
        }
        check_finite(OP, "box", gt.as_flattened())?;
        check_finite(OP, "proposal", proposals.as_flattened())?;
        let [wx, wy, ww, wh] = self.weights;
        Ok(gt
            .iter()
            .zip(proposals)
            .map(|(g, p)| {
                let ex_w = p[2] - p[0];
                let ex_h = p[3] - p[1];
                let ex_cx = p[0] + 0.5 * ex_w;
                let ex_cy = p[1] + 0.5 * ex_h;
                let gt_w = g[2] - g[0];
                let gt_h = g[3] - g[1];
                let gt_cx = g[0] + 0.5 * gt_w;
                let gt_cy = g[1] + 0.5 * gt_h;
                [
                    wx * (gt_cx - ex_cx) / ex_w,
                    wy * (gt_cy - ex_cy) / ex_h,
                    ww * (gt_w / ex_w).ln(),
                    wh * (gt_h / ex_h).ln(),
                ]
            })
            .collect())
    }

    /// Applies `deltas` (`[K, 4·C]`: one set per class, as the box head predicts) to `boxes`
    /// (`[K, 4]`); returns `[K·C]` boxes, class-major within each box.
    pub fn decode(&self, deltas: &[f32], boxes: &[[f32; 4]]) -> Result<Vec<[f32; 4]>> {
        const OP: &str = "box_decode";
        self.check(OP)?;
        check_finite(OP, "box", boxes.as_flattened())?;
        if boxes.is_empty() {
            return if deltas.is_empty() { Ok(Vec::new()) } else { shape_err(OP, "deltas for no boxes") };
        }
        if !deltas.len().is_multiple_of(4 * boxes.len()) || deltas.is_empty() {
            return shape_err(OP, format!("{} deltas for {} boxes", deltas.len(), boxes.len()));
        }
        check_finite(OP, "delta", deltas)?;
        let per_box = deltas.len() / boxes.len();
        let [wx, wy, ww, wh] = self.weights;
        let clip = self.bbox_xform_clip;
        let mut out = Vec::with_capacity(deltas.len() / 4);
        for (b, d) in boxes.iter().zip(deltas.chunks_exact(per_box)) {
            let w = b[2] - b[0];
            let h = b[3] - b[1];
            let cx = b[0] + 0.5 * w;
            let cy = b[1] + 0.5 * h;
            for d in d.chunks_exact(4) {
                let dx = d[0] / wx;
                let dy = d[1] / wy;
                let dw = (d[2] / ww).min(clip);
                let dh = (d[3] / wh).min(clip);
                let pcx = dx * w + cx;
                let pcy = dy * h + cy;
                let pw = dw.exp() * w;
                let ph = dh.exp() * h;
                let (hw, hh) = (0.5 * pw, 0.5 * ph);
                out.push([pcx - hw, pcy - hh, pcx + hw, pcy + hh]);
            }
        }
        Ok(out)
    }
}

/// Clamps x coordinates to `[0, width]` and y to `[0, height]` (`size = [height, width]`).
pub fn clip_boxes_to_image(boxes: &[[f32; 4]], size: [usize; 2]) -> Result<Vec<[f32; 4]>> {
    check_finite("clip_boxes_to_image", "box", boxes.as_flattened())?;
    let (h, w) = (size[0] as f32, size[1] as f32);
    Ok(boxes
        .iter()
        .map(|b| [b[0].clamp(0.0, w), b[1].clamp(0.0, h), b[2].clamp(0.0, w), b[3].clamp(0.0, h)])
        .collect())
}

/// Indices (ascending) of the boxes at least `min_size` wide and high.
pub fn remove_small_boxes(boxes: &[[f32; 4]], min_size: f32) -> Result<Vec<usize>> {
    const OP: &str = "remove_small_boxes";
    if min_size.is_nan() || min_size < 0.0 {
        return invalid(OP, format!("min size {min_size}"));
    }
    check_finite(OP, "box", boxes.as_flattened())?;
    Ok(boxes
        .iter()
        .enumerate()
        .filter(|(_, b)| b[2] - b[0] >= min_size && b[3] - b[1] >= min_size)
        .map(|(i, _)| i)
        .collect())
}
