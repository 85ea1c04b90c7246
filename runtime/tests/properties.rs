//! Property tests of the operators' invariants.

use mrc_runtime::ops::box_coder::BoxCoder;
use mrc_runtime::ops::nms::{batched_nms, nms};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::FeatureMap;
use proptest::prelude::*;

/// IoU exactly as the NMS kernel computes it (float32, no +1).
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

fn boxes_and_scores(max: usize) -> impl Strategy<Value = Vec<([f32; 4], f32)>> {
    prop::collection::vec(
        (0.0f32..100.0, 0.0f32..100.0, 0.5f32..40.0, 0.5f32..40.0, 0u8..20)
            .prop_map(|(x, y, w, h, s)| ([x, y, x + w, y + h], s as f32 / 20.0)),
        0..max,
    )
}

/// torchvision's CPU NMS kernel, transcribed: stable descending sort, suppress later boxes
/// whose float IoU with a kept box exceeds the (double) threshold.
fn reference_nms(boxes: &[[f32; 4]], scores: &[f32], thr: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[oi + 1..] {
            if !suppressed[j] && (iou(&boxes[i], &boxes[j]) as f64) > thr {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Integer-ish boxes in a small area (many overlaps, exact IoU ties), some of zero or negative
/// size, in numbers on both sides of the size where NMS switches to its grid.
fn crowded_boxes() -> impl Strategy<Value = Vec<([f32; 4], f32)>> {
    prop::collection::vec(
        (0u8..60, 0u8..60, -2i8..30, -2i8..30, 0u8..10)
            .prop_map(|(x, y, w, h, s)| {
                let (x, y) = (x as f32, y as f32);
                ([x, y, x + w as f32, y + h as f32], s as f32 / 10.0)
            }),
        0..700,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn nms_keeps_no_overlapping_pair_and_sorts_by_score(
        items in boxes_and_scores(120),
        thr in prop::sample::select(vec![0.3f64, 0.5, 0.7]),
    ) {
        let (boxes, scores): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let keep = nms(&boxes, &scores, thr).unwrap();
        for (i, &a) in keep.iter().enumerate() {
            for &b in &keep[i + 1..] {
                prop_assert!(iou(&boxes[a], &boxes[b]) as f64 <= thr);
                prop_assert!(scores[a] >= scores[b]);
            }
        }
        // Every dropped box overlaps a kept box at least as confident as it.
        for j in (0..boxes.len()).filter(|j| !keep.contains(j)) {
            prop_assert!(keep.iter().any(|&k| scores[k] >= scores[j] && iou(&boxes[k], &boxes[j]) as f64 > thr));
        }
    }

    #[test]
    fn nms_equals_torchvisions_loop(
        items in crowded_boxes(),
        thr in prop::sample::select(vec![0.0f64, 0.3, 0.5, 0.7, 0.9, -0.1]),
    ) {
        let (boxes, scores): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        prop_assert_eq!(nms(&boxes, &scores, thr).unwrap(), reference_nms(&boxes, &scores, thr));
    }

    #[test]
    fn batched_nms_only_suppresses_within_a_label(
        items in boxes_and_scores(120),
        labels in prop::collection::vec(0i64..3, 120),
    ) {
        let (boxes, scores): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let labels = &labels[..boxes.len()];
        let keep = batched_nms(&boxes, &scores, labels, 0.5).unwrap();
        for (i, &a) in keep.iter().enumerate() {
            for &b in &keep[i + 1..] {
                prop_assert!(labels[a] != labels[b] || iou(&boxes[a], &boxes[b]) <= 0.5);
                prop_assert!(scores[a] >= scores[b]);
            }
        }
    }

    #[test]
    fn roi_align_of_a_constant_map_is_the_constant(
        c in -100.0f32..100.0,
        x1 in 0.0f32..30.0,
        y1 in 0.0f32..20.0,
        w in 0.0f32..30.0,
        h in 0.0f32..20.0,
        batch in 0usize..2,
        sampling_ratio in -1i32..4,
        aligned in any::<bool>(),
        scale in prop::sample::select(vec![1.0f32, 0.5, 0.25]),
        out in 1usize..8,
    ) {
        // Feature map 24×32; the box (in map coordinates) stays in [0, 31]×[0, 23], so every
        // sampling point lies inside the map, also after the legacy 1-pixel minimum size.
        let (mh, mw) = (24usize, 32usize);
        let map = vec![c; 2 * 3 * mh * mw];
        let fm = FeatureMap::new(&map, [2, 3, mh, mw]).unwrap();
        let off = if aligned { 0.5 } else { 0.0 };
        let x1 = x1.min(mw as f32 - 2.0) + off;
        let y1 = y1.min(mh as f32 - 2.0) + off;
        let x2 = (x1 + w).min(mw as f32 - 1.0 + off);
        let y2 = (y1 + h).min(mh as f32 - 1.0 + off);
        let roi = [batch as f32, x1 / scale, y1 / scale, x2 / scale, y2 / scale];
        let p = RoiAlignParams { output_size: [out, out], spatial_scale: scale, sampling_ratio, aligned, mode: PoolMode::Avg };
        let values = roi_align(&fm, &[roi], &p).unwrap();
        // An adaptive grid of an empty aligned box has no points at all and pools to 0.
        let empty = aligned && sampling_ratio <= 0 && (x2 == x1 || y2 == y1);
        for v in values {
            let expected = if empty { 0.0 } else { c };
            prop_assert!((v - expected).abs() <= 1e-5 * expected.abs() + 1e-6, "{v} vs {expected}");
        }
    }

    #[test]
    fn decode_inverts_encode_within_the_clamp(
        px in -50.0f32..800.0, py in -50.0f32..800.0, pw in 1.0f32..300.0, ph in 1.0f32..300.0,
        gx in -50.0f32..800.0, gy in -50.0f32..800.0, gw in 1.0f32..300.0, gh in 1.0f32..300.0,
        weights in prop::sample::select(vec![[1.0f32, 1.0, 1.0, 1.0], [10.0, 10.0, 5.0, 5.0], [2.0, 3.0, 0.5, 7.0]]),
    ) {
        let coder = BoxCoder::new(weights);
        let proposal = [px, py, px + pw, py + ph];
        let gt = [gx, gy, gx + gw, gy + gh];
        let d = coder.encode(&[gt], &[proposal]).unwrap()[0];
        prop_assume!(d[2] / weights[2] <= coder.bbox_xform_clip && d[3] / weights[3] <= coder.bbox_xform_clip);
        let back = coder.decode(&d, &[proposal]).unwrap()[0];
        let scale = 1.0f32.max(pw).max(ph).max(gw).max(gh).max(px.abs()).max(py.abs()).max(gx.abs()).max(gy.abs());
        for (a, b) in back.iter().zip(&gt) {
            prop_assert!((a - b).abs() <= 1e-5 * scale, "{back:?} vs {gt:?}");
        }
    }
}
