//! The module-level detection steps against references written here from torchvision's definitions
//! (`filter_proposals`, `postprocess_detections`, `maskrcnn_inference`, ...) on small random
//! inputs, plus torchvision's own outputs for a few cases (`tests/fixtures/detection/`, made by
//! `tests/tools/make_detection_fixtures.py`).

use mrc_runtime::detection::{
    anchors, heatmaps_to_keypoints, mask_probs, multiscale_roi_align, multiscale_roi_pool, paste_masks,
    postprocess_detections, preprocess, rescale_boxes, roi_pool, rpn_proposals, DetectionParams, RoiPoolParams,
    RpnParams, TensorF32,
};
use mrc_runtime::ops::multiscale::{LevelMapper, MultiScaleParams, MultiScalePoolParams};
use mrc_runtime::ops::paste_masks::paste_masks_in_image;
use mrc_runtime::ops::preprocess::{self as pre, ImageU8, Transform};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::ops::roi_pool;
use mrc_runtime::{Error, FeatureMap};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

#[path = "common/rng.rs"]
mod rng;

use rng::Rng;

/// A tensor of `shape` with values uniform in `[lo, hi)`.
fn random_tensor(rng: &mut Rng, shape: Vec<usize>, lo: f32, hi: f32) -> TensorF32 {
    let n = shape.iter().product();
    TensorF32::new(shape, (0..n).map(|_| rng.range(lo, hi)).collect()).unwrap()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs() + 1e-6
}

fn assert_all_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        assert!(close(*a, *b), "{what}[{i}]: {a} vs {b}");
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `BoxCoder.decode_single` for one box and one set of deltas, as torchvision writes it.
fn decode(d: [f32; 4], b: [f32; 4], weights: [f32; 4]) -> [f32; 4] {
    let clip = (1000.0f64 / 16.0).ln() as f32;
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let (cx, cy) = (b[0] + 0.5 * w, b[1] + 0.5 * h);
    let (dx, dy) = (d[0] / weights[0], d[1] / weights[1]);
    let (dw, dh) = ((d[2] / weights[2]).min(clip), (d[3] / weights[3]).min(clip));
    let (pcx, pcy) = (dx * w + cx, dy * h + cy);
    let (pw, ph) = (dw.exp() * w, dh.exp() * h);
    [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]
}

fn clip(b: [f32; 4], [h, w]: [usize; 2]) -> [f32; 4] {
    let (h, w) = (h as f32, w as f32);
    [b[0].clamp(0.0, w), b[1].clamp(0.0, h), b[2].clamp(0.0, w), b[3].clamp(0.0, h)]
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let inter = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    inter / (area(a) + area(b) - inter)
}

/// `batched_nms` by its definition: candidates by decreasing score (stable), each kept unless a
/// kept candidate of the same group overlaps it by more than `thresh`.
fn batched_nms_reference(boxes: &[[f32; 4]], scores: &[f32], groups: &[i64], thresh: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| groups[k] != groups[i] || iou(boxes[k], boxes[i]) <= thresh) {
            keep.push(i);
        }
    }
    keep
}

/// One candidate box with its score and group (level or label).
type Candidate = ([f32; 4], f32, i64);

fn split(c: &[Candidate]) -> (Vec<[f32; 4]>, Vec<f32>, Vec<i64>) {
    (c.iter().map(|c| c.0).collect(), c.iter().map(|c| c.1).collect(), c.iter().map(|c| c.2).collect())
}

/// `RegionProposalNetwork` at test time for one image, from the head's raw outputs:
/// `concat_box_prediction_layers`, `decode`, then `filter_proposals`, with top-k as a stable
/// sort (the lower index first among equal logits).
fn rpn_reference(
    objectness: &[TensorF32],
    deltas: &[TensorF32],
    anchors: &[[f32; 4]],
    size: [usize; 2],
    p: &RpnParams,
) -> Vec<[f32; 4]> {
    let mut flat: Vec<(f32, [f32; 4], i64)> = Vec::new();
    for (level, (o, d)) in objectness.iter().zip(deltas).enumerate() {
        let (a, h, w) = (o.shape[1], o.shape[2], o.shape[3]);
        for y in 0..h {
            for x in 0..w {
                for k in 0..a {
                    let at = |c: usize| y * w + x + c * h * w;
                    let delta = [0, 1, 2, 3].map(|j| d.data[at(4 * k + j)]);
                    flat.push((o.data[at(k)], delta, level as i64));
                }
            }
        }
    }
    assert_eq!(flat.len(), anchors.len());
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut start = 0;
    for o in objectness {
        let n = o.data.len();
        let mut idx: Vec<usize> = (start..start + n).collect();
        idx.sort_by(|&a, &b| flat[b].0.partial_cmp(&flat[a].0).unwrap());
        for &i in idx.iter().take(p.pre_nms_top_n) {
            let b = clip(decode(flat[i].1, anchors[i], p.weights), size);
            candidates.push((b, sigmoid(flat[i].0), flat[i].2));
        }
        start += n;
    }
    let min = p.min_size as f32;
    candidates.retain(|c| c.0[2] - c.0[0] >= min && c.0[3] - c.0[1] >= min);
    candidates.retain(|c| c.1 >= p.score_thresh as f32);
    let (boxes, scores, levels) = split(&candidates);
    let keep = batched_nms_reference(&boxes, &scores, &levels, p.nms_thresh as f32);
    keep.into_iter().take(p.post_nms_top_n).map(|i| boxes[i]).collect()
}

/// `RoIHeads.postprocess_detections` for one image.
fn detections_reference(
    logits: &TensorF32,
    regression: &TensorF32,
    proposals: &[[f32; 4]],
    size: [usize; 2],
    p: &DetectionParams,
) -> Vec<Candidate> {
    let k = logits.shape[1];
    let mut candidates: Vec<Candidate> = Vec::new();
    for (i, proposal) in proposals.iter().enumerate() {
        let row = &logits.data[i * k..(i + 1) * k];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
        for (c, &logit) in row.iter().enumerate().skip(1) {
            let score = (logit - max).exp() / sum;
            let d = [0, 1, 2, 3].map(|j| regression.data[i * 4 * k + 4 * c + j]);
            candidates.push((clip(decode(d, *proposal, p.weights), size), score, c as i64));
        }
    }
    candidates.retain(|c| c.1 > p.score_thresh as f32);
    let min = p.min_size as f32;
    candidates.retain(|c| c.0[2] - c.0[0] >= min && c.0[3] - c.0[1] >= min);
    let (boxes, scores, labels) = split(&candidates);
    let keep = batched_nms_reference(&boxes, &scores, &labels, p.nms_thresh as f32);
    keep.into_iter().take(p.detections_per_img).map(|i| candidates[i]).collect()
}

/// Two levels (4×5 and 2×2 cells, 3 anchors each) over a 64×80 batch; `pre_nms_top_n` 20 cuts
/// the first level (60 anchors) but not the second (12). Anchors of 32 and 64 pixels reach
/// outside the 60×75 image. The first level's logits repeat in pairs, so top-k meets ties.
fn rpn_case(rng: &mut Rng) -> (Vec<TensorF32>, Vec<TensorF32>, TensorF32) {
    let maps = [[4, 5], [2, 2]];
    let anchors = anchors(&maps, [64, 80], &[vec![32], vec![64]], &[0.5, 1.0, 2.0]).unwrap();
    let mut objectness: Vec<TensorF32> = maps.iter().map(|&[h, w]| random_tensor(rng, vec![1, 3, h, w], -3.0, 3.0)).collect();
    let first = &mut objectness[0].data;
    for i in (0..first.len()).step_by(2) {
        first[i + 1] = first[i];
    }
    let deltas = maps.iter().map(|&[h, w]| random_tensor(rng, vec![1, 12, h, w], -0.6, 0.6)).collect();
    (objectness, deltas, anchors)
}

fn rpn_params() -> RpnParams {
    RpnParams {
        pre_nms_top_n: 20,
        post_nms_top_n: 15,
        nms_thresh: 0.5,
        min_size: 1e-3,
        score_thresh: 0.0,
        weights: [1.0; 4],
    }
}

#[test]
fn rpn_proposals_match_filter_proposals() {
    let mut rng = Rng(1);
    for case in 0..20 {
        let (objectness, deltas, anchors) = rpn_case(&mut rng);
        let p = RpnParams { score_thresh: [0.0, 0.3][case % 2], post_nms_top_n: [15, 1000][case % 2], ..rpn_params() };
        let size = [60, 75];
        let got = rpn_proposals(&objectness, &deltas, &anchors, size, &p).unwrap();
        let expected = rpn_reference(&objectness, &deltas, anchors.boxes("test").unwrap(), size, &p);
        assert!(!expected.is_empty());
        assert_eq!(got.shape, [expected.len(), 4], "case {case}");
        assert_all_close(&got.data, expected.as_flattened(), &format!("case {case}"));
        assert!(got.data.chunks(4).all(|b| b[0] >= 0.0 && b[2] <= 75.0 && b[1] >= 0.0 && b[3] <= 60.0));
    }
}

#[test]
fn rpn_proposals_keep_scores_equal_to_the_threshold() {
    // One anchor, logit 0: probability exactly 0.5, kept by `scores >= 0.5`.
    let objectness = vec![TensorF32::new(vec![1, 1, 1, 1], vec![0.0]).unwrap()];
    let deltas = vec![TensorF32::new(vec![1, 4, 1, 1], vec![0.0; 4]).unwrap()];
    let anchor = TensorF32::new(vec![1, 4], vec![2.0, 3.0, 10.0, 12.0]).unwrap();
    let at = |t: f64| {
        rpn_proposals(&objectness, &deltas, &anchor, [20, 20], &RpnParams { score_thresh: t, ..rpn_params() }).unwrap()
    };
    assert_eq!(at(0.5).data, [2.0, 3.0, 10.0, 12.0]);
    assert_eq!(at(0.5000001).shape, [0, 4]);
}

#[test]
fn rpn_proposals_drop_everything_below_the_threshold() {
    let mut rng = Rng(2);
    let (mut objectness, deltas, anchors) = rpn_case(&mut rng);
    for o in &mut objectness {
        o.data.iter_mut().for_each(|v| *v = -v.abs() - 0.1);
    }
    let got = rpn_proposals(&objectness, &deltas, &anchors, [60, 75], &RpnParams { score_thresh: 0.5, ..rpn_params() })
        .unwrap();
    assert_eq!(got.shape, [0, 4]);
    assert!(got.data.is_empty());
}

#[test]
fn rpn_proposals_remove_boxes_clipped_to_nothing() {
    // An anchor entirely right of the image clips to zero width and is removed.
    let objectness = vec![TensorF32::new(vec![1, 2, 1, 1], vec![1.0, 2.0]).unwrap()];
    let deltas = vec![TensorF32::new(vec![1, 8, 1, 1], vec![0.0; 8]).unwrap()];
    let anchors = TensorF32::new(vec![2, 4], vec![1.0, 1.0, 5.0, 5.0, 30.0, 1.0, 40.0, 5.0]).unwrap();
    let got = rpn_proposals(&objectness, &deltas, &anchors, [20, 20], &rpn_params()).unwrap();
    assert_eq!(got.data, [1.0, 1.0, 5.0, 5.0]);
}

#[test]
fn rpn_proposals_of_no_anchors_are_empty() {
    let objectness = vec![TensorF32::new(vec![1, 3, 0, 4], vec![]).unwrap()];
    let deltas = vec![TensorF32::new(vec![1, 12, 0, 4], vec![]).unwrap()];
    let anchors = TensorF32::new(vec![0, 4], vec![]).unwrap();
    assert_eq!(rpn_proposals(&objectness, &deltas, &anchors, [32, 32], &rpn_params()).unwrap().shape, [0, 4]);
}

#[test]
fn rpn_proposals_reject_bad_shapes() {
    let mut rng = Rng(3);
    let (objectness, deltas, anchors) = rpn_case(&mut rng);
    let p = rpn_params();
    assert!(matches!(rpn_proposals(&objectness[..1], &deltas, &anchors, [60, 75], &p), Err(Error::Shape { .. })));
    let fewer = TensorF32::new(vec![3, 4], anchors.data[..12].to_vec()).unwrap();
    assert!(matches!(rpn_proposals(&objectness, &deltas, &fewer, [60, 75], &p), Err(Error::Shape { .. })));
    let wrong = vec![deltas[0].clone(), TensorF32::new(vec![1, 8, 2, 2], vec![0.0; 32]).unwrap()];
    assert!(matches!(rpn_proposals(&objectness, &wrong, &anchors, [60, 75], &p), Err(Error::Shape { .. })));
    let inconsistent = TensorF32 { shape: vec![1, 3, 4, 5], data: vec![0.0; 7] };
    assert!(rpn_proposals(&[inconsistent, objectness[1].clone()], &deltas, &anchors, [60, 75], &p).is_err());
    assert!(rpn_proposals(&[], &[], &anchors, [60, 75], &p).is_err());
}

/// Six proposals × four classes; some proposals stick out of the 50×60 image, and proposals 1
/// and 4 share their logits, so equal scores meet in NMS.
fn detection_case(rng: &mut Rng) -> (TensorF32, TensorF32, TensorF32) {
    let mut logits = random_tensor(rng, vec![6, 4], -2.0, 3.0);
    let row: Vec<f32> = logits.data[4..8].to_vec();
    logits.data[16..20].copy_from_slice(&row);
    let regression = random_tensor(rng, vec![6, 16], -2.0, 2.0);
    let proposals: Vec<f32> = (0..6)
        .flat_map(|_| {
            let (x, y) = (rng.range(-10.0, 50.0), rng.range(-10.0, 40.0));
            [x, y, x + rng.range(2.0, 30.0), y + rng.range(2.0, 30.0)]
        })
        .collect();
    (logits, regression, TensorF32::new(vec![6, 4], proposals).unwrap())
}

#[test]
fn postprocess_detections_match_roi_heads() {
    let mut rng = Rng(4);
    let mut seen = 0;
    for case in 0..30 {
        let (logits, regression, proposals) = detection_case(&mut rng);
        let p = DetectionParams {
            score_thresh: 0.1,
            nms_thresh: 0.3,
            detections_per_img: [100, 4][case % 2],
            ..Default::default()
        };
        let (boxes, scores, labels) = postprocess_detections(&logits, &regression, &proposals, [50, 60], &p).unwrap();
        let expected = detections_reference(&logits, &regression, proposals.boxes("test").unwrap(), [50, 60], &p);
        let (eb, es, el) = split(&expected);
        assert_eq!((boxes.shape.clone(), scores.shape.clone()), (vec![eb.len(), 4], vec![eb.len()]), "case {case}");
        assert_all_close(&boxes.data, eb.as_flattened(), &format!("case {case} boxes"));
        assert_all_close(&scores.data, &es, &format!("case {case} scores"));
        assert_eq!(labels, el, "case {case}");
        assert!(labels.iter().all(|&l| (1..4).contains(&l)));
        assert!(scores.data.windows(2).all(|w| w[0] >= w[1]));
        seen += labels.len();
    }
    assert!(seen > 30, "the cases should produce detections");
}

#[test]
fn postprocess_detections_need_scores_above_the_threshold() {
    // Two classes with equal logits: probability exactly 0.5, not kept by `scores > 0.5`.
    let logits = TensorF32::new(vec![1, 2], vec![1.0, 1.0]).unwrap();
    let regression = TensorF32::new(vec![1, 8], vec![0.0; 8]).unwrap();
    let proposal = TensorF32::new(vec![1, 4], vec![1.0, 2.0, 8.0, 9.0]).unwrap();
    let at = |t: f64| {
        postprocess_detections(
            &logits,
            &regression,
            &proposal,
            [20, 20],
            &DetectionParams { score_thresh: t, ..Default::default() },
        )
        .unwrap()
    };
    assert_eq!(at(0.5).0.shape, [0, 4]);
    let (boxes, scores, labels) = at(0.4999);
    assert_eq!((boxes.data, scores.data, labels), (vec![1.0, 2.0, 8.0, 9.0], vec![0.5], vec![1]));
}

#[test]
fn postprocess_detections_of_nothing_are_empty() {
    let mut rng = Rng(5);
    let (logits, regression, proposals) = detection_case(&mut rng);
    let all_below = postprocess_detections(
        &logits,
        &regression,
        &proposals,
        [50, 60],
        &DetectionParams { score_thresh: 0.999, ..Default::default() },
    )
    .unwrap();
    let none = postprocess_detections(
        &TensorF32::new(vec![0, 4], vec![]).unwrap(),
        &TensorF32::new(vec![0, 16], vec![]).unwrap(),
        &TensorF32::new(vec![0, 4], vec![]).unwrap(),
        [50, 60],
        &DetectionParams::default(),
    )
    .unwrap();
    for (boxes, scores, labels) in [all_below, none] {
        assert_eq!((boxes.shape, scores.shape, labels.len()), (vec![0, 4], vec![0], 0));
    }
}

#[test]
fn postprocess_detections_reject_bad_shapes() {
    let mut rng = Rng(6);
    let (logits, regression, proposals) = detection_case(&mut rng);
    let p = DetectionParams::default();
    let short = TensorF32::new(vec![6, 12], regression.data[..72].to_vec()).unwrap();
    assert!(matches!(postprocess_detections(&logits, &short, &proposals, [50, 60], &p), Err(Error::Shape { .. })));
    let five = TensorF32::new(vec![5, 4], proposals.data[..20].to_vec()).unwrap();
    assert!(matches!(postprocess_detections(&logits, &regression, &five, [50, 60], &p), Err(Error::Shape { .. })));
    let flat = TensorF32::new(vec![24], logits.data.clone()).unwrap();
    assert!(matches!(postprocess_detections(&flat, &regression, &proposals, [50, 60], &p), Err(Error::Shape { .. })));
}

#[test]
fn anchors_follow_the_anchor_generator() {
    let got = anchors(&[[4, 5], [2, 3]], [64, 80], &[vec![32, 48], vec![64]], &[0.5, 1.0, 2.0]).unwrap();
    let mut expected = Vec::new();
    for ([h, w], sizes) in [([4usize, 5usize], vec![32.0f32, 48.0]), ([2, 3], vec![64.0])] {
        let (sy, sx) = (64 / h, 80 / w);
        let mut cell = Vec::new();
        for r in [0.5f32, 1.0, 2.0] {
            for &s in &sizes {
                let (hs, ws) = (r.sqrt() * s, s / r.sqrt());
                cell.push([-ws, -hs, ws, hs].map(|v| (v / 2.0).round_ties_even()));
            }
        }
        for y in 0..h {
            for x in 0..w {
                let (ox, oy) = ((x * sx) as f32, (y * sy) as f32);
                expected.extend(cell.iter().map(|c| [c[0] + ox, c[1] + oy, c[2] + ox, c[3] + oy]));
            }
        }
    }
    assert_eq!(got.shape, [4 * 5 * 6 + 2 * 3 * 3, 4]);
    assert_eq!(got.data, expected.as_flattened());
    assert!(anchors(&[[4, 5]], [64, 80], &[vec![32], vec![64]], &[1.0]).is_err());
}

#[test]
fn mask_probs_take_the_sigmoid_of_the_label_channel() {
    let mut rng = Rng(7);
    let logits = random_tensor(&mut rng, vec![3, 4, 2, 2], -4.0, 4.0);
    let got = mask_probs(&logits, &[2, 0, 3]).unwrap();
    assert_eq!(got.shape, [3, 1, 2, 2]);
    let expected: Vec<f32> = [(0, 2), (1, 0), (2, 3)]
        .iter()
        .flat_map(|&(d, c)| logits.data[(d * 4 + c) * 4..][..4].iter().map(|&x| sigmoid(x)))
        .collect();
    assert_all_close(&got.data, &expected, "mask probs");

    let agnostic = random_tensor(&mut rng, vec![2, 1, 3, 3], -4.0, 4.0);
    let got = mask_probs(&agnostic, &[3, 1]).unwrap();
    assert_all_close(&got.data, &agnostic.data.iter().map(|&x| sigmoid(x)).collect::<Vec<_>>(), "class-agnostic");

    assert!(matches!(mask_probs(&logits, &[2, 4, 0]), Err(Error::Invalid { .. })));
    assert!(matches!(mask_probs(&logits, &[2, -1, 0]), Err(Error::Invalid { .. })));
    assert!(matches!(mask_probs(&logits, &[2, 0]), Err(Error::Shape { .. })));
    assert_eq!(mask_probs(&TensorF32::new(vec![0, 4, 28, 28], vec![]).unwrap(), &[]).unwrap().shape, [0, 1, 28, 28]);
}

#[test]
fn rescale_boxes_scale_each_axis() {
    let boxes = TensorF32::new(vec![2, 4], vec![10.0, 20.0, 30.0, 40.0, 0.0, 0.0, 320.0, 240.0]).unwrap();
    let got = rescale_boxes(&boxes, [240, 320], [480, 960]).unwrap();
    assert_eq!(got.data, [30.0, 40.0, 90.0, 80.0, 0.0, 0.0, 960.0, 480.0]);
    assert_eq!(
        rescale_boxes(&TensorF32::new(vec![0, 4], vec![]).unwrap(), [240, 320], [480, 960]).unwrap().shape,
        [0, 4]
    );
    assert!(rescale_boxes(&TensorF32::new(vec![2, 2], vec![0.0; 4]).unwrap(), [240, 320], [480, 960]).is_err());
}

#[test]
fn paste_masks_wraps_paste_masks_in_image() {
    let mut rng = Rng(8);
    let masks = random_tensor(&mut rng, vec![2, 1, 5, 5], 0.0, 1.0);
    let boxes = TensorF32::new(vec![2, 4], vec![3.0, 4.0, 20.0, 15.0, -5.0, 10.0, 12.0, 40.0]).unwrap();
    let got = paste_masks(&masks, &boxes, [30, 25], 1).unwrap();
    assert_eq!(got.shape, [2, 1, 30, 25]);
    assert_eq!(got.data, paste_masks_in_image(&masks.data, 5, boxes.boxes("test").unwrap(), [30, 25], 1).unwrap());

    // A mask of ones covers its box's interior exactly.
    let ones = TensorF32::new(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
    let got =
        paste_masks(&ones, &TensorF32::new(vec![1, 4], vec![8.0, 8.0, 16.0, 16.0]).unwrap(), [24, 24], 1).unwrap();
    assert_eq!(got.data[12 * 24 + 12], 1.0);
    assert_eq!(got.data[2 * 24 + 2], 0.0);

    let none = paste_masks(
        &TensorF32::new(vec![0, 1, 28, 28], vec![]).unwrap(),
        &TensorF32::new(vec![0, 4], vec![]).unwrap(),
        [30, 25],
        1,
    )
    .unwrap();
    assert_eq!(none.shape, [0, 1, 30, 25]);
    assert!(matches!(
        paste_masks(&masks, &TensorF32::new(vec![1, 4], vec![0.0; 4]).unwrap(), [30, 25], 1),
        Err(Error::Shape { .. })
    ));
}

fn pyramid(rng: &mut Rng) -> Vec<TensorF32> {
    [[16, 20], [8, 10], [4, 5]].iter().map(|&[h, w]| random_tensor(rng, vec![1, 3, h, w], -1.0, 1.0)).collect()
}

/// Twelve boxes with sides from 10 to 285 pixels: they reach all three levels of [`pyramid`]
/// (level 2 below 112, level 4 from 224).
fn boxes_over_levels(rng: &mut Rng) -> TensorF32 {
    let boxes: Vec<f32> = (0..12)
        .flat_map(|i| {
            let side = 10.0 + 25.0 * i as f32;
            let (x, y) = (rng.range(-5.0, 40.0), rng.range(-5.0, 30.0));
            [x, y, x + side, y + side * rng.range(0.5, 1.5)]
        })
        .collect();
    TensorF32::new(vec![12, 4], boxes).unwrap()
}

#[test]
fn multiscale_roi_align_pools_each_box_at_its_level() {
    let mut rng = Rng(9);
    let features = pyramid(&mut rng);
    let boxes = boxes_over_levels(&mut rng);
    let maps: Vec<FeatureMap> =
        features.iter().map(|f| FeatureMap::new(&f.data, [1, 3, f.shape[2], f.shape[3]]).unwrap()).collect();
    let rows = boxes.boxes("test").unwrap();
    let mapper = LevelMapper::new(2, 4);
    let levels = mapper.map_levels(rows).unwrap();
    assert_eq!(levels.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "boxes should use every level");
    let p = MultiScaleParams::new([3, 2], 2);
    for aligned in [false, true] {
        let got = multiscale_roi_align(&features, &boxes, [64, 80], &MultiScaleParams { aligned, ..p }).unwrap();
        assert_eq!(got.shape, [12, 3, 3, 2]);
        for (k, (b, &level)) in rows.iter().zip(&levels).enumerate() {
            let q = RoiAlignParams {
                output_size: [3, 2],
                spatial_scale: 0.25 / (1 << level) as f32,
                sampling_ratio: 2,
                aligned,
                mode: PoolMode::Avg,
            };
            let one = roi_align(&maps[level], &[[0.0, b[0], b[1], b[2], b[3]]], &q).unwrap();
            assert_eq!(&got.data[k * 18..(k + 1) * 18], one.as_slice(), "box {k}, aligned {aligned}");
        }
    }
}

#[test]
fn multiscale_roi_align_handles_no_boxes_and_rejects_bad_shapes() {
    let mut rng = Rng(10);
    let features = pyramid(&mut rng);
    let p = MultiScaleParams::new([7, 7], 2);
    let none = multiscale_roi_align(&features, &TensorF32::new(vec![0, 4], vec![]).unwrap(), [64, 80], &p).unwrap();
    assert_eq!(none.shape, [0, 3, 7, 7]);
    let one_box = TensorF32::new(vec![1, 4], vec![0.0, 0.0, 10.0, 10.0]).unwrap();
    let mut mixed = features.clone();
    mixed[1] = random_tensor(&mut rng, vec![1, 2, 8, 10], -1.0, 1.0);
    assert!(matches!(multiscale_roi_align(&mixed, &one_box, [64, 80], &p), Err(Error::Shape { .. })));
    assert!(multiscale_roi_align(&[], &one_box, [64, 80], &p).is_err());
    // Levels 1/4 and 1/16 are not consecutive.
    assert!(matches!(
        multiscale_roi_align(&[features[0].clone(), features[2].clone()], &one_box, [64, 80], &p),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn multiscale_roi_pool_pools_each_box_at_its_level_with_roi_pool() {
    let mut rng = Rng(11);
    let features = pyramid(&mut rng);
    let boxes = boxes_over_levels(&mut rng);
    let rows = boxes.boxes("test").unwrap();
    let levels = LevelMapper::new(2, 4).map_levels(rows).unwrap();
    assert_eq!(levels.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "boxes should use every level");
    let got = multiscale_roi_pool(&features, &boxes, [64, 80], &MultiScalePoolParams::new([3, 2])).unwrap();
    assert_eq!(got.shape, [12, 3, 3, 2]);
    for (k, (b, &level)) in rows.iter().zip(&levels).enumerate() {
        let f = &features[level];
        let map = FeatureMap::new(&f.data, [1, 3, f.shape[2], f.shape[3]]).unwrap();
        let one =
            roi_pool::roi_pool(&map, &[[0.0, b[0], b[1], b[2], b[3]]], [3, 2], 0.25 / (1 << level) as f32).unwrap();
        assert_eq!(&got.data[k * 18..(k + 1) * 18], one.values.as_slice(), "box {k}");
    }
}

#[test]
fn one_map_pooling_and_keypoints_handle_no_boxes_and_reject_bad_shapes() {
    let mut rng = Rng(12);
    let map = random_tensor(&mut rng, vec![1, 3, 16, 20], -1.0, 1.0);
    let batch_of_two = random_tensor(&mut rng, vec![2, 3, 16, 20], -1.0, 1.0);
    let none = TensorF32::new(vec![0, 4], vec![]).unwrap();
    let one_box = TensorF32::new(vec![1, 4], vec![1.0, 2.0, 30.0, 40.0]).unwrap();
    let align = RoiAlignParams {
        output_size: [7, 7],
        spatial_scale: 0.25,
        sampling_ratio: 2,
        aligned: false,
        mode: PoolMode::Avg,
    };
    let pool = RoiPoolParams { output_size: [7, 7], spatial_scale: 0.25 };
    assert_eq!(mrc_runtime::detection::roi_align(&map, &none, &align).unwrap().shape, [0, 3, 7, 7]);
    assert_eq!(roi_pool(&map, &none, &pool).unwrap().shape, [0, 3, 7, 7]);
    let pyramid = pyramid(&mut rng);
    let levels = multiscale_roi_pool(&pyramid, &none, [64, 80], &MultiScalePoolParams::new([7, 7])).unwrap();
    assert_eq!(levels.shape, [0, 3, 7, 7]);
    assert!(matches!(mrc_runtime::detection::roi_align(&batch_of_two, &one_box, &align), Err(Error::Shape { .. })));
    assert!(matches!(roi_pool(&batch_of_two, &one_box, &pool), Err(Error::Shape { .. })));
    assert!(matches!(roi_pool(&map, &map, &pool), Err(Error::Shape { .. })));

    let (keypoints, scores) =
        heatmaps_to_keypoints(&random_tensor(&mut rng, vec![0, 17, 56, 56], 0.0, 1.0), &none).unwrap();
    assert_eq!((keypoints.shape, scores.shape), (vec![0, 17, 3], vec![0, 17]));
    let heatmaps = random_tensor(&mut rng, vec![1, 2, 8, 8], -1.0, 1.0);
    let two_boxes = TensorF32::new(vec![2, 4], [one_box.data.clone(), one_box.data.clone()].concat()).unwrap();
    assert!(matches!(heatmaps_to_keypoints(&heatmaps, &two_boxes), Err(Error::Shape { .. })));
    let huge = TensorF32::new(vec![1, 4], vec![0.0, 0.0, 1e6, 1e6]).unwrap();
    assert!(matches!(heatmaps_to_keypoints(&heatmaps, &huge), Err(Error::Invalid { .. })));
    let mut nan = heatmaps.clone();
    nan.data[5] = f32::NAN;
    assert!(matches!(heatmaps_to_keypoints(&nan, &one_box), Err(Error::NonFinite { .. })));
    let empty_maps = TensorF32::new(vec![1, 2, 0, 8], vec![]).unwrap();
    assert!(matches!(heatmaps_to_keypoints(&empty_maps, &one_box), Err(Error::Invalid { .. })));
}

#[test]
fn preprocess_makes_a_batch_of_one() {
    let (h, w) = (30, 45);
    let image: Vec<u8> = (0..h * w * 3).map(|i| (i * 37 % 251) as u8).collect();
    let t = Transform { min_size: 64, max_size: 100, ..Default::default() };
    let (batch, size) = preprocess(&image, [h, w], &t).unwrap();
    let expected = pre::preprocess(&[ImageU8 { data: &image, height: h, width: w }], &t).unwrap();
    assert_eq!(size, [64, 96]);
    assert_eq!(batch.shape, [1, 3, 64, 96]);
    assert_eq!(batch.data, expected.data);
    assert!(preprocess(&image[1..], [h, w], &t).is_err());
}

/// torchvision's outputs for a few cases: `tests/fixtures/detection/`, made by
/// `tests/tools/make_detection_fixtures.py` (parameters in `cases.json`, tensors in
/// `detection.safetensors`).
struct Golden {
    cases: Value,
    bytes: Vec<u8>,
}

impl Golden {
    fn open() -> Golden {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/detection");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()));
        let cases: Value = serde_json::from_slice(&read("cases.json")).unwrap();
        Golden { cases: cases["cases"].clone(), bytes: read("detection.safetensors") }
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), dtype, "{name}");
        (view.shape().to_vec(), view.data().to_vec())
    }

    fn f32(&self, name: &str) -> TensorF32 {
        let (shape, data) = self.raw(name, Dtype::F32);
        TensorF32::new(shape, data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
            .unwrap()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        self.raw(name, Dtype::I64).1.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn cases(&self, op: &str) -> Vec<Value> {
        let list = self.cases[op].as_array().unwrap_or_else(|| panic!("no {op} cases")).clone();
        assert!(!list.is_empty(), "no {op} cases");
        list
    }
}

fn hw(v: &Value) -> [usize; 2] {
    [v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize]
}

#[test]
fn golden_anchors_and_proposals_match_torchvision() {
    let golden = Golden::open();
    for case in golden.cases("rpn") {
        let name = case["name"].as_str().unwrap();
        let maps: Vec<[usize; 2]> = case["feature_sizes"].as_array().unwrap().iter().map(hw).collect();
        let sizes: Vec<Vec<i64>> = case["sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
            .collect();
        let ratios: Vec<f64> = case["aspect_ratios"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got_anchors = anchors(&maps, hw(&case["batch_hw"]), &sizes, &ratios).unwrap();
        assert_eq!(got_anchors, golden.f32(&format!("{name}.anchors")), "{name} anchors");

        let objectness: Vec<TensorF32> =
            (0..maps.len()).map(|l| golden.f32(&format!("{name}.objectness{l}"))).collect();
        let deltas: Vec<TensorF32> = (0..maps.len()).map(|l| golden.f32(&format!("{name}.deltas{l}"))).collect();
        let p = RpnParams {
            pre_nms_top_n: case["pre_nms_top_n"].as_u64().unwrap() as usize,
            post_nms_top_n: case["post_nms_top_n"].as_u64().unwrap() as usize,
            nms_thresh: case["nms_thresh"].as_f64().unwrap(),
            min_size: case["min_size"].as_f64().unwrap(),
            score_thresh: case["score_thresh"].as_f64().unwrap(),
            weights: [1.0; 4],
        };
        let got = rpn_proposals(&objectness, &deltas, &got_anchors, hw(&case["image_hw"]), &p).unwrap();
        let expected = golden.f32(&format!("{name}.proposals"));
        assert_eq!(got.shape, expected.shape, "{name}");
        assert_all_close(&got.data, &expected.data, name);
    }
}

#[test]
fn golden_detections_match_torchvision() {
    let golden = Golden::open();
    for case in golden.cases("detections") {
        let name = case["name"].as_str().unwrap();
        let w: Vec<f32> = case["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let p = DetectionParams {
            weights: [w[0], w[1], w[2], w[3]],
            score_thresh: case["score_thresh"].as_f64().unwrap(),
            nms_thresh: case["nms_thresh"].as_f64().unwrap(),
            detections_per_img: case["detections_per_img"].as_u64().unwrap() as usize,
            min_size: case["min_size"].as_f64().unwrap(),
        };
        let t = |what: &str| golden.f32(&format!("{name}.{what}"));
        let (boxes, scores, labels) = postprocess_detections(
            &t("class_logits"),
            &t("box_regression"),
            &t("proposals"),
            hw(&case["image_hw"]),
            &p,
        )
        .unwrap();
        assert_eq!(boxes.shape, t("boxes").shape, "{name}");
        assert_all_close(&boxes.data, &t("boxes").data, &format!("{name} boxes"));
        assert_all_close(&scores.data, &t("scores").data, &format!("{name} scores"));
        assert_eq!(labels, golden.i64(&format!("{name}.labels")), "{name} labels");
    }
}

#[test]
fn golden_mask_probs_match_torchvision() {
    let golden = Golden::open();
    for case in golden.cases("mask_probs") {
        let name = case["name"].as_str().unwrap();
        let got = mask_probs(&golden.f32(&format!("{name}.logits")), &golden.i64(&format!("{name}.labels"))).unwrap();
        let expected = golden.f32(&format!("{name}.probs"));
        assert_eq!(got.shape, expected.shape);
        assert_all_close(&got.data, &expected.data, name);
    }
}
