//! Non-maximum suppression as torchvision's CPU kernel, batched (per-class) NMS and top-k.

use std::cmp::Ordering;

use crate::error::{check_finite, invalid, shape_err, Result};
use crate::ops::sort::std_sort;

/// The box coordinates of the surviving candidates, in score order, kept contiguous so that
/// each suppression sweep is a linear pass over plain arrays.
struct Candidates {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
    index: Vec<u32>,
}

fn check(op: &'static str, boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Result<()> {
    if boxes.len() != scores.len() {
        return shape_err(op, format!("{} boxes but {} scores", boxes.len(), scores.len()));
    }
    if iou_threshold.is_nan() {
        return invalid(op, "IoU threshold NaN");
    }
    if boxes.len() > u32::MAX as usize {
        return invalid(op, format!("{} boxes", boxes.len()));
    }
    check_finite(op, "box", boxes.as_flattened())?;
    check_finite(op, "score", scores)
}

/// Indices into the input sorted by decreasing score, the earlier index first among equal
/// scores (torchvision's stable sort).
fn order_by_score(scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| descending(scores[a as usize], scores[b as usize]));
    order
}

/// Descending order of finite scores in which -0 and +0 tie, as in torch's sort.
fn descending(a: f32, b: f32) -> Ordering {
    (b + 0.0).total_cmp(&(a + 0.0))
}

/// The largest float32 `t` with `x > t ⇔ (x as f64) > threshold` for every float32 `x`:
/// torchvision compares the float IoU with its double threshold.
pub fn f32_threshold(threshold: f64) -> f32 {
    let t = threshold as f32;
    if t as f64 > threshold {
        t.next_down()
    } else {
        t
    }
}

/// Greedy NMS: keeps the highest-scoring box, drops every remaining box whose IoU with it
/// exceeds `iou_threshold`, repeats. Returns kept indices by decreasing score. IoU uses areas
/// `(x2 − x1)·(y2 − y1)` without the legacy +1.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Result<Vec<usize>> {
    check("nms", boxes, scores, iou_threshold)?;
    Ok(nms_unchecked(boxes, scores, iou_threshold))
}

fn nms_unchecked(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let order = order_by_score(scores);
    // With a threshold ≥ 0 only boxes that overlap with positive area can suppress each other
    // (a zero intersection gives IoU 0 or NaN, neither above it), so a spatial grid can
    // restrict each sweep to the neighbours of the kept box without changing the result.
    if iou_threshold >= 0.0 && order.len() > GRID_MIN_BOXES {
        nms_grid(boxes, order, iou_threshold)
    } else {
        nms_sweep(boxes, order, iou_threshold)
    }
}

/// Below this many boxes a plain sweep is as fast as building the grid.
const GRID_MIN_BOXES: usize = 256;

#[inline(always)]
pub(crate) fn iou(a: &[f32; 4], area_a: f32, b: &[f32; 4], area_b: f32) -> f32 {
    let xx1 = a[0].max(b[0]);
    let yy1 = a[1].max(b[1]);
    let xx2 = a[2].min(b[2]);
    let yy2 = a[3].min(b[3]);
    let inter = (xx2 - xx1).max(0.0) * (yy2 - yy1).max(0.0);
    inter / (area_a + area_b - inter)
}

/// torchvision's greedy loop over all later candidates, with survivors compacted to the front
/// so that each sweep reads plain contiguous arrays.
fn nms_sweep(boxes: &[[f32; 4]], order: Vec<u32>, iou_threshold: f64) -> Vec<usize> {
    let n = order.len();
    let mut c = Candidates {
        x1: Vec::with_capacity(n),
        y1: Vec::with_capacity(n),
        x2: Vec::with_capacity(n),
        y2: Vec::with_capacity(n),
        area: Vec::with_capacity(n),
        index: order,
    };
    for &i in &c.index {
        let b = &boxes[i as usize];
        c.x1.push(b[0]);
        c.y1.push(b[1]);
        c.x2.push(b[2]);
        c.y2.push(b[3]);
        c.area.push((b[2] - b[0]) * (b[3] - b[1]));
    }
    let thr = f32_threshold(iou_threshold);
    let mut keep = Vec::new();
    let mut len = n;
    while len > 0 {
        keep.push(c.index[0] as usize);
        let kept = [c.x1[0], c.y1[0], c.x2[0], c.y2[0]];
        let ia = c.area[0];
        // Compact the survivors to the front, dropping the kept box at position 0.
        let mut w = 0;
        for r in 1..len {
            let other = [c.x1[r], c.y1[r], c.x2[r], c.y2[r]];
            let v = iou(&kept, ia, &other, c.area[r]);
            // Written unconditionally and advanced only for survivors: branch-free compaction.
            c.x1[w] = c.x1[r];
            c.y1[w] = c.y1[r];
            c.x2[w] = c.x2[r];
            c.y2[w] = c.y2[r];
            c.area[w] = c.area[r];
            c.index[w] = c.index[r];
            w += (v <= thr || v.is_nan()) as usize;
        }
        len = w;
    }
    keep
}

/// The same greedy NMS, each kept box compared only with the later boxes sharing a grid cell.
/// Cells are about the mean box side; a box is listed in every cell its closed extent touches,
/// so two boxes with a common interior point share a cell.
fn nms_grid(boxes: &[[f32; 4]], order: Vec<u32>, iou_threshold: f64) -> Vec<usize> {
    let n = order.len();
    // Boxes in score order, so that positions compare as priorities.
    let sorted: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i as usize]).collect();
    let area: Vec<f32> = sorted.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let (mut lo_x, mut lo_y, mut hi_x, mut hi_y) = (f32::INFINITY, f32::INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY);
    let mut side_sum = 0.0f64;
    let mut valid = 0usize;
    for b in &sorted {
        if b[2] > b[0] && b[3] > b[1] {
            lo_x = lo_x.min(b[0]);
            lo_y = lo_y.min(b[1]);
            hi_x = hi_x.max(b[2]);
            hi_y = hi_y.max(b[3]);
            side_sum += (b[2] - b[0]).max(b[3] - b[1]) as f64;
            valid += 1;
        }
    }
    if valid == 0 {
        // No box has a positive area: nothing can be suppressed.
        return order.into_iter().map(|i| i as usize).collect();
    }
    const MAX_CELLS_PER_AXIS: f64 = 256.0;
    let (ext_x, ext_y) = ((hi_x - lo_x) as f64, (hi_y - lo_y) as f64);
    let cell = (side_sum / valid as f64).max(ext_x.max(ext_y) / MAX_CELLS_PER_AXIS).max(f64::MIN_POSITIVE) as f32;
    let nx = ((ext_x / cell as f64) as usize + 1).min(MAX_CELLS_PER_AXIS as usize + 1);
    let ny = ((ext_y / cell as f64) as usize + 1).min(MAX_CELLS_PER_AXIS as usize + 1);
    let cell_of = |v: f32, lo: f32, cells: usize| (((v - lo) / cell) as usize).min(cells - 1);
    let span = |b: &[f32; 4]| {
        if b[2] > b[0] && b[3] > b[1] {
            Some((cell_of(b[0], lo_x, nx), cell_of(b[2], lo_x, nx), cell_of(b[1], lo_y, ny), cell_of(b[3], lo_y, ny)))
        } else {
            None
        }
    };
    // Cell lists in CSR form, each in increasing position (score) order.
    let mut start = vec![0u32; nx * ny + 1];
    for b in &sorted {
        if let Some((x0, x1, y0, y1)) = span(b) {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    start[y * nx + x + 1] += 1;
                }
            }
        }
    }
    for i in 0..nx * ny {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut members = vec![0u32; start[nx * ny] as usize];
    for (p, b) in sorted.iter().enumerate() {
        if let Some((x0, x1, y0, y1)) = span(b) {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let f = &mut fill[y * nx + x];
                    members[*f as usize] = p as u32;
                    *f += 1;
                }
            }
        }
    }
    let thr = f32_threshold(iou_threshold);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for p in 0..n {
        if suppressed[p] {
            continue;
        }
        keep.push(order[p] as usize);
        let Some((x0, x1, y0, y1)) = span(&sorted[p]) else { continue };
        let (kb, ka) = (&sorted[p], area[p]);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let cell = y * nx + x;
                let list = &members[start[cell] as usize..start[cell + 1] as usize];
                // Entries up to p were decided already; the lists are sorted.
                let from = list.partition_point(|&q| q as usize <= p);
                for &q in &list[from..] {
                    let q = q as usize;
                    if !suppressed[q] && iou(kb, ka, &sorted[q], area[q]) > thr {
                        suppressed[q] = true;
                    }
                }
            }
        }
    }
    keep
}

/// NMS within each label only; kept indices of all labels together by decreasing score.
///
/// Like torchvision, small inputs (≤ 1,000 boxes) run one NMS over boxes shifted apart by
/// `label · (max coordinate + 1)`, larger ones one NMS per label followed by torch's unstable
/// sort of the kept boxes by score: the shift changes IoUs by rounding noise and the sort
/// orders equal scores its own way, and following both keeps results identical to
/// torchvision's.
pub fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], labels: &[i64], iou_threshold: f64) -> Result<Vec<usize>> {
    const OP: &str = "batched_nms";
    check(OP, boxes, scores, iou_threshold)?;
    if labels.len() != boxes.len() {
        return shape_err(OP, format!("{} boxes but {} labels", boxes.len(), labels.len()));
    }
    if boxes.is_empty() {
        return Ok(Vec::new());
    }
    if boxes.len() * 4 <= 4000 {
        let max = boxes.as_flattened().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let shifted: Vec<[f32; 4]> = boxes
            .iter()
            .zip(labels)
            .map(|(b, &l)| {
                let off = l as f32 * (max + 1.0);
                b.map(|v| v + off)
            })
            .collect();
        check_finite(OP, "shifted box", shifted.as_flattened())?;
        return Ok(nms_unchecked(&shifted, scores, iou_threshold));
    }
    let mut by_label: Vec<u32> = (0..boxes.len() as u32).collect();
    by_label.sort_by_key(|&i| labels[i as usize]);
    let mut keep = Vec::new();
    for group in by_label.chunk_by(|&a, &b| labels[a as usize] == labels[b as usize]) {
        let b: Vec<[f32; 4]> = group.iter().map(|&i| boxes[i as usize]).collect();
        let s: Vec<f32> = group.iter().map(|&i| scores[i as usize]).collect();
        keep.extend(nms_unchecked(&b, &s, iou_threshold).into_iter().map(|k| group[k] as usize));
    }
    // torchvision: `keep_indices[scores[keep_indices].sort(descending=True)[1]]` with
    // `keep_indices` ascending, an unstable sort: equal scores end up in std::sort's order.
    keep.sort_unstable();
    let mut pairs: Vec<(f32, usize)> = keep.into_iter().map(|i| (scores[i], i)).collect();
    std_sort(&mut pairs, &|a, b| a.0 > b.0);
    Ok(pairs.into_iter().map(|p| p.1).collect())
}

/// For each level (consecutive runs of `level_sizes` in `scores`), the indices of its
/// `min(k, size)` highest scores, by decreasing score, lower index first among equals; levels in
/// order. Indices are into the whole `scores`.
pub fn topk_per_level(scores: &[f32], level_sizes: &[usize], k: usize) -> Result<Vec<usize>> {
    const OP: &str = "topk_per_level";
    if level_sizes.iter().sum::<usize>() != scores.len() {
        return shape_err(OP, format!("level sizes {level_sizes:?} for {} scores", scores.len()));
    }
    check_finite(OP, "score", scores)?;
    let mut out = Vec::new();
    let mut start = 0;
    for &n in level_sizes {
        let s = &scores[start..start + n];
        let cmp = |a: &usize, b: &usize| -> Ordering { descending(s[*a], s[*b]).then(a.cmp(b)) };
        let mut idx: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        if k > 0 && k < n {
            idx.select_nth_unstable_by(k - 1, cmp);
        }
        idx.truncate(k);
        idx.sort_unstable_by(cmp);
        out.extend(idx.into_iter().map(|i| i + start));
        start += n;
    }
    Ok(out)
}
