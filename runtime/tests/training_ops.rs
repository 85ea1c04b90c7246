//! The training built-ins against torchvision: the RPN's and the RoI heads' matching and sampling
//! replayed from the recorded training step (`$MRC_FIXTURES/train`, default the project's
//! `tests/fixtures/train`); every loss and the RoIAlign backward passes against central
//! differences in float64 at two sizes; loss values against their formulas on tiny inputs; and
//! the edge cases (no ground truth, no positives, no proposals, an image with ground truth
//! beside one without).

mod common;
#[path = "common/rng.rs"]
mod rng;

use std::collections::HashMap;

use common::fixtures_dir;
use mrc_runtime::detection::{rpn_proposals, RpnParams, TensorF32};
use mrc_runtime::ops::anchors::grid_anchors;
use mrc_runtime::ops::losses::{bce_with_logits, smooth_l1, FastRcnnLossInputs, MaskLossInputs, RpnLossInputs};
use mrc_runtime::ops::multiscale::{multiscale_roi_align, MultiScaleParams};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::ops::sampler::{uniform_keys, Sampler};
use mrc_runtime::training::{self, AnchorMatchParams, RoiSamplingParams};
use mrc_runtime::FeatureMap;
use rng::Rng;
use safetensors::{Dtype, SafeTensors};

/// The tensors of one file of the recorded training step, as raw bytes by name.
struct Recorded {
    file: String,
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Recorded {
    fn open(file: &str) -> Recorded {
        let path = fixtures_dir().join("train").join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        Recorded { file: path.display().to_string(), tensors }
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (&[usize], &[u8]) {
        let (d, shape, data) = self.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name}", self.file));
        assert_eq!(*d, dtype, "{}: {name} is {d:?}", self.file);
        (shape, data)
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        self.raw(name, Dtype::F32).1.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        self.raw(name, Dtype::I64).1.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn flags(&self, name: &str) -> Vec<bool> {
        self.raw(name, Dtype::U8).1.iter().map(|&b| b != 0).collect()
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.tensors[name].1.clone()
    }
}

/// The recorded batch: the images' count, the ground truth in the 320×320 frame (boxes × 1.25,
/// as torchvision's transform resizes them) and the step's settings.
struct Batch {
    images: usize,
    gt_boxes: Vec<f32>,
    gt_labels: Vec<i64>,
    gt_image: Vec<i64>,
    gt_counts: Vec<usize>,
    step: serde_json::Value,
}

fn batch() -> Batch {
    let targets = Recorded::open("targets.safetensors");
    let path = fixtures_dir().join("train/step.json");
    let step: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let images = (0..).take_while(|i| targets.tensors.contains_key(&format!("img{i}.boxes"))).count();
    let mut b = Batch { images, gt_boxes: vec![], gt_labels: vec![], gt_image: vec![], gt_counts: vec![], step };
    for i in 0..images {
        let boxes = targets.f32(&format!("img{i}.boxes"));
        // torchvision's resize_boxes: each coordinate times float32(320) / float32(256).
        let ratio = 320f32 / 256f32;
        b.gt_boxes.extend(boxes.iter().map(|&v| v * ratio));
        b.gt_labels.extend(targets.i64(&format!("img{i}.labels")));
        b.gt_image.extend(std::iter::repeat_n(i as i64, boxes.len() / 4));
        b.gt_counts.push(boxes.len() / 4);
    }
    b
}

fn boxes_tensor(flat: Vec<f32>) -> TensorF32 {
    TensorF32::new(vec![flat.len() / 4, 4], flat).unwrap()
}

/// The mini model's anchors for its 320×320 batch.
fn mini_anchors() -> TensorF32 {
    let sizes = vec![vec![16.0], vec![32.0], vec![64.0], vec![128.0]];
    let ratios = vec![vec![0.5, 1.0, 2.0]; 4];
    let anchors = grid_anchors([320, 320], &[[80, 80], [40, 40], [20, 20], [10, 10]], &sizes, &ratios).unwrap();
    TensorF32::from_boxes(&anchors)
}

fn sampler(step: &serde_json::Value, which: &str) -> Sampler {
    let s = &step["sampler"][which];
    Sampler {
        batch_size_per_image: s["batch_size_per_image"].as_u64().unwrap() as usize,
        positive_fraction: s["positive_fraction"].as_f64().unwrap(),
    }
}

/// Keys that replay a recorded choice: 0 for the candidates taken, 1 for the others.
fn replay_keys(positive: &[bool], negative: &[bool]) -> Vec<f32> {
    positive.iter().zip(negative).map(|(&p, &n)| if p || n { 0.0 } else { 1.0 }).collect()
}

#[test]
fn rpn_matching_and_sampling_replay_torchvision() {
    let b = batch();
    let step = Recorded::open("step.safetensors");
    let anchors = mini_anchors();
    let a = anchors.shape[0];
    let rpn = &b.step["rpn_training"];
    let p = AnchorMatchParams {
        fg_iou: rpn["fg_iou"].as_f64().unwrap(),
        bg_iou: rpn["bg_iou"].as_f64().unwrap(),
        allow_low_quality_matches: rpn["allow_low_quality_matches"].as_bool().unwrap(),
        weights: [1.0; 4],
    };
    let sizes = vec![[320, 320]; b.images];
    let targets =
        training::match_anchors(&anchors, &boxes_tensor(b.gt_boxes.clone()), &b.gt_image, &sizes, &p).unwrap();
    assert_eq!(targets.labels.shape, [b.images, a]);
    let s = sampler(&b.step, "rpn");
    let quota = (s.batch_size_per_image as f64 * s.positive_fraction) as usize;
    let mut keys = Vec::new();
    let (mut expected_positive, mut expected_sampled) = (Vec::new(), Vec::new());
    for i in 0..b.images {
        let positive = step.flags(&format!("rpn.img{i}.positive"));
        let negative = step.flags(&format!("rpn.img{i}.negative"));
        assert_eq!(positive.len(), a, "recorded anchors of image {i}");
        let labels = &targets.labels.data[i * a..(i + 1) * a];
        let fg = labels.iter().filter(|&&l| l == 1.0).count();
        let bg = labels.iter().filter(|&&l| l == 0.0).count();
        for k in 0..a {
            assert!(
                !positive[k] || labels[k] == 1.0,
                "image {i}: recorded positive anchor {k} has label {}",
                labels[k]
            );
            assert!(
                !negative[k] || labels[k] == 0.0,
                "image {i}: recorded negative anchor {k} has label {}",
                labels[k]
            );
        }
        let taken_positive = positive.iter().filter(|&&p| p).count();
        let taken_negative = negative.iter().filter(|&&n| n).count();
        assert_eq!(taken_positive, fg.min(quota), "image {i}: positives ({fg} foreground anchors)");
        assert_eq!(taken_negative, bg.min(s.batch_size_per_image - taken_positive), "image {i}: negatives");
        eprintln!("image {i}: {fg} foreground, {bg} background anchors; {taken_positive} + {taken_negative} sampled");
        keys.extend(replay_keys(&positive, &negative));
        expected_positive.extend(positive.iter().map(|&p| p as u8 as f32));
        expected_sampled.extend(positive.iter().zip(&negative).map(|(&p, &n)| (p || n) as u8 as f32));
    }
    let keys = TensorF32::new(vec![b.images, a], keys).unwrap();
    let (positive, sampled) = training::balanced_sample(&targets.labels, &keys, &s).unwrap();
    assert!(positive.data == expected_positive, "replayed positives differ from torchvision's");
    assert!(sampled.data == expected_sampled, "replayed samples differ from torchvision's");
}

#[test]
fn roi_sampling_replays_torchvision() {
    let b = batch();
    let step = Recorded::open("step.safetensors");
    let (mut proposals, mut proposal_image) = (Vec::new(), Vec::new());
    let (mut proposal_keys, mut gt_keys) = (Vec::new(), Vec::new());
    for i in 0..b.images {
        let p = step.f32(&format!("rpn.img{i}.proposals"));
        let n = p.len() / 4;
        let positive = step.flags(&format!("roi.img{i}.positive"));
        let negative = step.flags(&format!("roi.img{i}.negative"));
        assert_eq!(positive.len(), n + b.gt_counts[i]);
        let keys = replay_keys(&positive, &negative);
        proposal_keys.extend_from_slice(&keys[..n]);
        gt_keys.extend_from_slice(&keys[n..]);
        proposals.extend(p);
        proposal_image.extend(std::iter::repeat_n(i as i64, n));
    }
    let keys: Vec<f32> = proposal_keys.into_iter().chain(gt_keys).collect();
    let roi = &b.step["roi_training"];
    let p = RoiSamplingParams {
        sampler: sampler(&b.step, "roi"),
        fg_iou: roi["fg_iou"].as_f64().unwrap(),
        bg_iou: roi["bg_iou"].as_f64().unwrap(),
        weights: [10.0, 10.0, 5.0, 5.0],
    };
    let s = training::sample_rois(
        &boxes_tensor(proposals),
        &proposal_image,
        &boxes_tensor(b.gt_boxes.clone()),
        &b.gt_labels,
        &b.gt_image,
        &keys,
        b.images,
        &p,
    )
    .unwrap();
    let mut start = 0;
    let mut gt_start = 0;
    for i in 0..b.images {
        let expected_rois = step.f32(&format!("roi.img{i}.sampled_proposals"));
        let r = expected_rois.len() / 4;
        let rows = start..start + r;
        assert!(s.roi_image[rows.clone()].iter().all(|&im| im == i as i64), "image {i}: RoI images");
        assert_eq!(&s.rois.data[4 * rows.start..4 * rows.end], &expected_rois[..], "image {i}: sampled proposals");
        assert_eq!(&s.labels[rows.clone()], &step.i64(&format!("roi.img{i}.labels"))[..], "image {i}: labels");
        let matched: Vec<i64> = s.matched_gt[rows.clone()].iter().map(|&m| m - gt_start).collect();
        assert_eq!(matched, step.i64(&format!("roi.img{i}.matched_idxs")), "image {i}: matched indices");
        let expected_targets = step.f32(&format!("roi.img{i}.regression_targets"));
        for (k, (a, e)) in
            s.regression_targets.data[4 * rows.start..4 * rows.end].iter().zip(&expected_targets).enumerate()
        {
            assert!((a - e).abs() <= 1e-6 * (1.0 + e.abs()), "image {i}: regression target {k}: {a} vs {e}");
        }
        start += r;
        gt_start += b.gt_counts[i] as i64;
    }
    assert_eq!(start, s.labels.len(), "more RoIs than recorded");
    assert_eq!(step.shape("roi.img0.sampled_proposals")[0], p.sampler.batch_size_per_image);
}

/// Central differences of `f` at `x` in float64, step `h`.
fn central_differences(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let v = x[i];
            x[i] = v + h;
            let up = f(&x);
            x[i] = v - h;
            let down = f(&x);
            x[i] = v;
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol * (1.0 + e.abs()), "{what}[{i}]: {a} vs {e} (central differences)");
    }
}

fn uniform_f64(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f64> {
    (0..n).map(|_| rng.range(lo, hi) as f64).collect()
}

/// Random inputs for the RPN loss: logits, deltas, labels, targets, positive and sampled masks.
type RpnCase = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<bool>, Vec<bool>);

/// Random inputs for the RPN loss over `m` anchors, with some positives, negatives and ignored.
fn rpn_case(rng: &mut Rng, m: usize) -> RpnCase {
    let objectness = uniform_f64(rng, m, -4.0, 4.0);
    let deltas = uniform_f64(rng, 4 * m, -1.0, 1.0);
    let targets = uniform_f64(rng, 4 * m, -1.0, 1.0);
    let mut labels = vec![0.0; m];
    let (mut positive, mut sampled) = (vec![false; m], vec![false; m]);
    for i in 0..m {
        let u = rng.uniform();
        labels[i] = if u < 0.3 {
            1.0
        } else if u < 0.8 {
            0.0
        } else {
            -1.0
        };
        sampled[i] = labels[i] >= 0.0 && rng.uniform() < 0.7;
        positive[i] = sampled[i] && labels[i] == 1.0;
    }
    (objectness, deltas, labels, targets, positive, sampled)
}

#[test]
fn rpn_loss_gradients_match_central_differences() {
    let mut rng = Rng(7);
    for m in [6, 40] {
        let (objectness, deltas, labels, targets, positive, sampled) = rpn_case(&mut rng, m);
        let inputs = |o: &'_ [f64], d: &'_ [f64]| -> (f64, f64) {
            RpnLossInputs {
                objectness: o,
                deltas: d,
                labels: &labels,
                regression_targets: &targets,
                positive: &positive,
                sampled: &sampled,
                beta: 1.0 / 9.0,
            }
            .losses()
            .unwrap()
        };
        let (go, gb) = (0.7, 1.3);
        let total = |o: &[f64], d: &[f64]| {
            let (lo, lb) = inputs(o, d);
            go * lo + gb * lb
        };
        let (d_objectness, d_deltas) = RpnLossInputs {
            objectness: &objectness,
            deltas: &deltas,
            labels: &labels,
            regression_targets: &targets,
            positive: &positive,
            sampled: &sampled,
            beta: 1.0 / 9.0,
        }
        .backward(go, gb)
        .unwrap();
        assert_close(
            "d objectness",
            &d_objectness,
            &central_differences(&objectness, 1e-6, |o| total(o, &deltas)),
            1e-6,
        );
        assert_close("d deltas", &d_deltas, &central_differences(&deltas, 1e-6, |d| total(&objectness, d)), 1e-6);
    }
}

#[test]
fn fastrcnn_loss_gradients_match_central_differences() {
    let mut rng = Rng(11);
    for (r, c) in [(3, 2), (17, 5)] {
        let logits = uniform_f64(&mut rng, r * c, -3.0, 3.0);
        let boxes = uniform_f64(&mut rng, 4 * r * c, -1.0, 1.0);
        let targets = uniform_f64(&mut rng, 4 * r, -1.0, 1.0);
        let labels: Vec<i64> = (0..r).map(|i| (i % c) as i64).collect();
        let loss = |l: &[f64], bx: &[f64]| {
            let (lc, lb) = FastRcnnLossInputs {
                class_logits: l,
                box_regression: bx,
                labels: &labels,
                regression_targets: &targets,
                classes: c,
                beta: 1.0 / 9.0,
            }
            .losses()
            .unwrap();
            0.4 * lc + 2.0 * lb
        };
        let (d_logits, d_boxes) = FastRcnnLossInputs {
            class_logits: &logits,
            box_regression: &boxes,
            labels: &labels,
            regression_targets: &targets,
            classes: c,
            beta: 1.0 / 9.0,
        }
        .backward(0.4, 2.0)
        .unwrap();
        assert_close("d class logits", &d_logits, &central_differences(&logits, 1e-6, |l| loss(l, &boxes)), 1e-6);
        assert_close("d box regression", &d_boxes, &central_differences(&boxes, 1e-6, |bx| loss(&logits, bx)), 1e-6);
    }
}

#[test]
fn mask_loss_gradients_match_central_differences() {
    let mut rng = Rng(13);
    for (q, c, m) in [(2, 3, 3), (5, 4, 6)] {
        let logits = uniform_f64(&mut rng, q * c * m * m, -3.0, 3.0);
        let targets = uniform_f64(&mut rng, q * m * m, 0.0, 1.0);
        let labels: Vec<i64> = (0..q).map(|i| 1 + (i % (c - 1)) as i64).collect();
        let d = MaskLossInputs { mask_logits: &logits, shape: [q, c, m, m], labels: &labels, targets: &targets }
            .backward(1.5)
            .unwrap();
        assert_close(
            "d mask logits",
            &d,
            &central_differences(&logits, 1e-6, |l| {
                1.5 * MaskLossInputs { mask_logits: l, shape: [q, c, m, m], labels: &labels, targets: &targets }
                    .loss()
                    .unwrap()
            }),
            1e-6,
        );
        // Channels other than the label's get no gradient.
        for i in 0..q {
            for ch in (0..c).filter(|&ch| ch as i64 != labels[i]) {
                assert!(d[(i * c + ch) * m * m..][..m * m].iter().all(|&g| g == 0.0));
            }
        }
    }
}

#[test]
fn losses_equal_their_formulas_on_tiny_inputs() {
    let ln2 = 2f64.ln();
    // BCE with logits: log(1 + e^-x) for y = 1, log(1 + e^x) for y = 0.
    assert!((bce_with_logits(0.0f64, 1.0) - ln2).abs() < 1e-15);
    assert!((bce_with_logits(2.0f64, 0.0) - (1.0 + 2f64.exp()).ln()).abs() < 1e-12);
    assert!((bce_with_logits(-30.0f64, 1.0) - 30.0).abs() < 1e-9);
    assert!((smooth_l1(0.05f64, 1.0 / 9.0) - 0.5 * 0.05 * 0.05 * 9.0).abs() < 1e-15);
    assert!((smooth_l1(-0.5f64, 1.0 / 9.0) - (0.5 - 0.5 / 9.0)).abs() < 1e-15);

    // RPN: one image, two levels of one anchor on 1×1 maps; anchor 0 positive, anchor 1 negative.
    let objectness =
        [TensorF32::new(vec![1, 1, 1, 1], vec![0.0]).unwrap(), TensorF32::new(vec![1, 1, 1, 1], vec![2.0]).unwrap()];
    let deltas = [
        TensorF32::new(vec![1, 4, 1, 1], vec![0.05, -0.5, 0.0, 0.0]).unwrap(),
        TensorF32::new(vec![1, 4, 1, 1], vec![9.0, 9.0, 9.0, 9.0]).unwrap(),
    ];
    let labels = TensorF32::new(vec![1, 2], vec![1.0, 0.0]).unwrap();
    let targets = TensorF32::new(vec![1, 2, 4], vec![0.0; 8]).unwrap();
    let positive = TensorF32::new(vec![1, 2], vec![1.0, 0.0]).unwrap();
    let sampled = TensorF32::new(vec![1, 2], vec![1.0, 1.0]).unwrap();
    let (lo, lb) = training::rpn_loss(&objectness, &deltas, &labels, &targets, &positive, &sampled, 1.0 / 9.0).unwrap();
    let expected_objectness = (ln2 + (1.0 + 2f64.exp()).ln()) / 2.0;
    let expected_box = (0.5 * 0.05 * 0.05 * 9.0 + (0.5 - 0.5 / 9.0)) / 2.0;
    assert!((lo as f64 - expected_objectness).abs() < 1e-6, "{lo} vs {expected_objectness}");
    assert!((lb as f64 - expected_box).abs() < 1e-6, "{lb} vs {expected_box}");

    // Box head: two RoIs, two classes; RoI 0 of class 1, RoI 1 background.
    let logits = TensorF32::new(vec![2, 2], vec![0.0, 1.0, 2.0, 0.0]).unwrap();
    let regression = TensorF32::new(
        vec![2, 8],
        vec![9.0, 9.0, 9.0, 9.0, 1.0, 0.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0],
    )
    .unwrap();
    let roi_targets = TensorF32::new(vec![2, 4], vec![0.0; 8]).unwrap();
    let (lc, lb) = training::fastrcnn_loss(&logits, &regression, &[1, 0], &roi_targets, 1.0 / 9.0).unwrap();
    let ce = |x: [f64; 2], label: usize| (x[0].exp() + x[1].exp()).ln() - x[label];
    let expected_classifier = (ce([0.0, 1.0], 1) + ce([2.0, 0.0], 0)) / 2.0;
    assert!((lc as f64 - expected_classifier).abs() < 1e-6, "{lc} vs {expected_classifier}");
    assert!((lb as f64 - (1.0 - 0.5 / 9.0) / 2.0).abs() < 1e-6, "{lb}");

    // Mask: one RoI of label 1 over 1×1 masks of two classes; channel 0 is not read.
    let mask_logits = TensorF32::new(vec![1, 2, 1, 1], vec![100.0, 0.0]).unwrap();
    let mask_targets = TensorF32::new(vec![1, 1, 1], vec![1.0]).unwrap();
    let loss = training::maskrcnn_loss(&mask_logits, &[1], &mask_targets).unwrap();
    assert!((loss as f64 - ln2).abs() < 1e-6, "{loss}");
}

/// RoIs over a `[n, c, h, w]` map: inside, partly outside, tiny, one per image at least.
fn test_rois(rng: &mut Rng, n: usize, h: usize, w: usize, k: usize, scale: f32) -> Vec<[f32; 5]> {
    (0..k)
        .map(|i| {
            let (hf, wf) = (h as f32 / scale, w as f32 / scale);
            let x1 = rng.range(-0.2 * wf, 0.9 * wf);
            let y1 = rng.range(-0.2 * hf, 0.9 * hf);
            let size = if i % 5 == 4 { 0.3 } else { rng.range(1.0, 0.8 * wf) };
            [(i % n) as f32, x1, y1, x1 + size, y1 + size * rng.range(0.5, 1.5)]
        })
        .collect()
}

/// `Σ grad · f(x)`, accumulated in float64.
fn dot(grad: &[f32], values: &[f32]) -> f64 {
    grad.iter().zip(values).map(|(&g, &v)| g as f64 * v as f64).sum()
}

/// RoIAlign is linear in its input, so central differences of the float32 forward with a unit
/// step are exact up to its rounding: they check the backward's every element.
#[test]
fn roi_align_backward_matches_central_differences() {
    let mut rng = Rng(17);
    for (shape, k, output, sampling_ratio, scale) in
        [([2, 2, 5, 6], 5, [2, 2], -1, 0.5f32), ([2, 3, 9, 7], 9, [3, 4], 2, 0.25f32)]
    {
        let [n, c, h, w] = shape;
        let rois = test_rois(&mut rng, n, h, w, k, scale);
        let p = RoiAlignParams {
            output_size: output,
            spatial_scale: scale,
            sampling_ratio,
            aligned: false,
            mode: PoolMode::Avg,
        };
        let grad: Vec<f32> = (0..k * c * output[0] * output[1]).map(|_| rng.range(-1.0, 1.0)).collect();
        let x: Vec<f64> = (0..n * c * h * w).map(|_| rng.range(-1.0, 1.0) as f64).collect();
        let forward = |x: &[f64]| {
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            dot(&grad, &roi_align(&FeatureMap::new(&x32, shape).unwrap(), &rois, &p).unwrap())
        };
        let backward = training::roi_align_backward(
            &TensorF32::new(vec![k, c, output[0], output[1]], grad.clone()).unwrap(),
            &TensorF32::new(vec![k, 5], rois.as_flattened().to_vec()).unwrap(),
            shape,
            &p,
        )
        .unwrap();
        let backward: Vec<f64> = backward.data.iter().map(|&v| v as f64).collect();
        assert_close("roi_align backward", &backward, &central_differences(&x, 1.0, forward), 1e-5);
    }
}

/// The same for the multi-scale RoIAlign of boxes of two images over a three-level pyramid.
#[test]
fn multiscale_roi_align_backward_matches_central_differences() {
    let mut rng = Rng(19);
    for (image, k, output) in [(32usize, 6usize, 2usize), (64, 10, 3)] {
        let n = 2;
        let c = 2;
        let shapes: Vec<[usize; 4]> = [4, 8, 16].iter().map(|&s| [n, c, image / s, image / s]).collect();
        let sizes = vec![[image, image], [image * 3 / 4, image]];
        let p = MultiScaleParams {
            canonical_scale: 8.0,
            canonical_level: 3.0,
            ..MultiScaleParams::new([output, output], -1)
        };
        // Boxes of many sizes so that every level gets some; image 0's first, then image 1's.
        let boxes: Vec<[f32; 4]> = (0..k)
            .map(|i| {
                let side = [3.0, 9.0, 20.0, 40.0][i % 4] * image as f32 / 64.0;
                let (x, y) = (rng.range(0.0, image as f32 / 2.0), rng.range(0.0, image as f32 / 2.0));
                [x, y, x + side, y + side * 0.8]
            })
            .collect();
        let roi_image: Vec<i64> = (0..k).map(|i| (2 * i / k) as i64).collect();
        let split = roi_image.iter().filter(|&&i| i == 0).count();
        let grad: Vec<f32> = (0..k * c * output * output).map(|_| rng.range(-1.0, 1.0)).collect();
        let sizes_of: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        let x: Vec<f64> = (0..sizes_of.iter().sum::<usize>()).map(|_| rng.range(-1.0, 1.0) as f64).collect();
        let forward = |x: &[f64]| {
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut start = 0;
            let maps: Vec<FeatureMap> = shapes
                .iter()
                .zip(&sizes_of)
                .map(|(&s, &len)| {
                    start += len;
                    FeatureMap::new(&x32[start - len..start], s).unwrap()
                })
                .collect();
            let pooled = multiscale_roi_align(&maps, &[&boxes[..split], &boxes[split..]], &sizes, &p).unwrap();
            dot(&grad, &pooled.values)
        };
        let grads = training::multiscale_roi_align_backward(
            &TensorF32::new(vec![k, c, output, output], grad.clone()).unwrap(),
            &shapes,
            &TensorF32::from_boxes(&boxes),
            &roi_image,
            &sizes,
            &p,
        )
        .unwrap();
        let levels_hit = grads.iter().filter(|g| g.data.iter().any(|&v| v != 0.0)).count();
        assert!(levels_hit >= 2, "boxes reach only {levels_hit} levels");
        let backward: Vec<f64> = grads.iter().flat_map(|g| g.data.iter().map(|&v| v as f64)).collect();
        assert_close("multiscale backward", &backward, &central_differences(&x, 1.0, forward), 1e-5);
    }
}

#[test]
fn batched_multiscale_roi_align_equals_the_per_image_operator() {
    let mut rng = Rng(23);
    let shapes = [[2, 3, 16, 16], [2, 3, 8, 8]];
    let data: Vec<Vec<f32>> =
        shapes.iter().map(|s| (0..s.iter().product()).map(|_| rng.range(-1.0, 1.0)).collect()).collect();
    let features: Vec<TensorF32> =
        shapes.iter().zip(&data).map(|(s, d)| TensorF32::new(s.to_vec(), d.clone()).unwrap()).collect();
    let boxes = vec![[1.0, 2.0, 20.0, 30.0], [5.0, 5.0, 60.0, 50.0], [0.0, 0.0, 64.0, 64.0]];
    let roi_image = [0, 1, 1];
    let sizes = [[64, 64], [60, 64]];
    let p = MultiScaleParams { canonical_scale: 16.0, canonical_level: 3.0, ..MultiScaleParams::new([2, 2], 2) };
    let batched =
        training::multiscale_roi_align_batched(&features, &TensorF32::from_boxes(&boxes), &roi_image, &sizes, &p)
            .unwrap();
    let maps: Vec<FeatureMap> = shapes.iter().zip(&data).map(|(&s, d)| FeatureMap::new(d, s).unwrap()).collect();
    let direct = multiscale_roi_align(&maps, &[&boxes[..1], &boxes[1..]], &sizes, &p).unwrap();
    assert_eq!(batched.shape, [3, 3, 2, 2]);
    assert_eq!(batched.data, direct.values);
    // RoIs out of image order are refused.
    assert!(training::multiscale_roi_align_batched(&features, &TensorF32::from_boxes(&boxes), &[1, 0, 1], &sizes, &p)
        .is_err());
}

#[test]
fn mask_targets_crop_each_matched_mask_within_its_image() {
    // Two images: 4×4 (mask 0: ones in the top-left 2×2) and 2×4 in a 4×4 batch (mask 1: ones
    // in its 2×4, zero padding below, which must not be read).
    let mut masks = vec![0u8; 2 * 16];
    for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        masks[y * 4 + x] = 1;
    }
    masks[16..24].fill(1);
    let rois = TensorF32::from_boxes(&[
        [0.0, 0.0, 2.0, 2.0],
        [9.0, 9.0, 10.0, 10.0],
        [1.0, 0.0, 3.0, 2.0],
        [0.0, 0.5, 4.0, 2.5],
    ]);
    let t = training::mask_targets(
        &masks,
        [2, 4, 4],
        &[[4, 4], [2, 4]],
        &rois,
        &[0, 0, 0, 1],
        &[1, 0, 2, 3],
        &[0, 0, 0, 1],
        2,
    )
    .unwrap();
    assert_eq!(t.positive_labels, [1, 2, 3]);
    assert_eq!(t.positive_image, [0, 0, 1]);
    assert_eq!(t.targets.shape, [3, 2, 2]);
    // Box [0, 0, 2, 2], 2×2 bins of 1 pixel, one sample per bin at its centre (x, y in 0.5, 1.5):
    // bilinear over the mask's pixels. Centre (0.5, 0.5) averages pixels (0..2, 0..2) = 1;
    // (1.5, 0.5) averages columns 1 and 2: half ones.
    assert_eq!(&t.targets.data[0..4], &[1.0, 0.5, 0.5, 0.25]);
    // Box [1, 0, 3, 2]: centres x in 1.5, 2.5.
    assert_eq!(&t.targets.data[4..8], &[0.5, 0.0, 0.25, 0.0]);
    // Image 1 is 2 rows high: samples at y = 1 and y = 2 read its last row (y = 2 is clamped to
    // it; reading the padding would give 0 there).
    assert!(t.targets.data[8..12].iter().all(|&v| v == 1.0), "{:?}", &t.targets.data[8..12]);
}

#[test]
fn uniform_keys_are_reproducible_uniform_and_distinct_per_stream() {
    let keys = uniform_keys(42, 0, 20_000);
    assert_eq!(keys, uniform_keys(42, 0, 20_000));
    assert_eq!(&keys[..100], &uniform_keys(42, 0, 100)[..]);
    assert_ne!(keys[..100], uniform_keys(42, 1, 100)[..]);
    assert_ne!(keys[..100], uniform_keys(43, 0, 100)[..]);
    assert!(keys.iter().all(|&k| (0.0..1.0).contains(&k)));
    let mean = keys.iter().map(|&k| k as f64).sum::<f64>() / keys.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    let deciles = (0..10).map(|d| keys.iter().filter(|&&k| (k * 10.0) as usize == d).count());
    assert!(deciles.into_iter().all(|c| (1800..2200).contains(&c)));
}

#[test]
fn sampler_takes_the_smallest_keys_within_its_quotas() {
    let labels = TensorF32::new(vec![1, 8], vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0]).unwrap();
    let keys = TensorF32::new(vec![1, 8], vec![0.9, 0.1, 0.5, 0.3, 0.3, 0.2, 0.0, 0.8]).unwrap();
    let s = Sampler { batch_size_per_image: 4, positive_fraction: 0.5 };
    let (positive, sampled) = training::balanced_sample(&labels, &keys, &s).unwrap();
    assert_eq!(positive.data, [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // Negatives 5 (0.2) and, of the tie at 0.3, the lower index 3.
    assert_eq!(sampled.data, [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    // Few positives leave their share to negatives.
    let labels = TensorF32::new(vec![1, 5], vec![1.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let (_, sampled) =
        training::balanced_sample(&labels, &TensorF32::new(vec![1, 5], vec![0.0; 5]).unwrap(), &s).unwrap();
    assert_eq!(sampled.data, [1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn images_without_ground_truth_or_proposals() {
    let anchors = TensorF32::from_boxes(&[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 40.0]]);
    let gt = TensorF32::from_boxes(&[[1.0, 1.0, 11.0, 11.0]]);
    let sizes = [[40, 40], [40, 40]];
    // Image 0 without ground truth, image 1 with one box.
    let t = training::match_anchors(&anchors, &gt, &[1], &sizes, &AnchorMatchParams::TORCHVISION).unwrap();
    assert_eq!(t.labels.data, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    assert!(t.regression_targets.data[..12].iter().all(|&v| v == 0.0));
    // No ground truth at all; no anchors.
    let none = TensorF32::new(vec![0, 4], vec![]).unwrap();
    let t = training::match_anchors(&anchors, &none, &[], &sizes, &AnchorMatchParams::TORCHVISION).unwrap();
    assert!(t.labels.data.iter().all(|&l| l == 0.0));
    let t = training::match_anchors(&none, &gt, &[0], &sizes, &AnchorMatchParams::TORCHVISION).unwrap();
    assert_eq!(t.labels.shape, [2, 0]);
    // Ground truth out of image order is an error, not a panic.
    assert!(training::match_anchors(
        &anchors,
        &boxes_tensor(vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
        &[1, 0],
        &sizes,
        &AnchorMatchParams::TORCHVISION
    )
    .is_err());

    // RoI sampling: image 0 has proposals and no ground truth (all background, matched −1),
    // image 1 has no proposals and one box (the box itself is its only candidate: positive).
    let proposals = TensorF32::from_boxes(&[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 9.0]]);
    let s = training::sample_rois(
        &proposals,
        &[0, 0],
        &gt,
        &[2],
        &[1],
        &[0.5, 0.1, 0.0],
        2,
        &RoiSamplingParams::TORCHVISION,
    )
    .unwrap();
    assert_eq!(s.roi_image, [0, 0, 1]);
    assert_eq!(s.labels, [0, 0, 2]);
    assert_eq!(s.matched_gt, [-1, -1, 0]);
    assert_eq!(s.rois.data, [0.0, 0.0, 10.0, 10.0, 5.0, 5.0, 9.0, 9.0, 1.0, 1.0, 11.0, 11.0]);
    assert_eq!(s.regression_targets.data, [0.0; 12]);
    // No proposals and no ground truth anywhere.
    let s = training::sample_rois(&none, &[], &none, &[], &[], &[], 2, &RoiSamplingParams::TORCHVISION).unwrap();
    assert!(s.labels.is_empty() && s.rois.shape == [0, 4]);

    // No positives: the mask targets are empty and the mask loss is 0 with a zero gradient.
    let m = training::mask_targets(&[0; 16], [1, 4, 4], &sizes, &proposals, &[0, 0], &[0, 0], &[-1, -1], 28).unwrap();
    assert_eq!((m.positive_rois.shape.clone(), m.targets.shape.clone()), (vec![0, 4], vec![0, 28, 28]));
    let logits = TensorF32::new(vec![0, 3, 28, 28], vec![]).unwrap();
    assert_eq!(training::maskrcnn_loss(&logits, &[], &m.targets).unwrap(), 0.0);
    assert_eq!(training::maskrcnn_loss_backward(&logits, &[], &m.targets, 1.0).unwrap().shape, [0, 3, 28, 28]);
    // Nothing sampled: RPN losses 0; no RoIs: box losses 0.
    let level = TensorF32::new(vec![1, 1, 1, 2], vec![0.3, -0.2]).unwrap();
    let level_deltas = TensorF32::new(vec![1, 4, 1, 2], vec![0.1; 8]).unwrap();
    let zeros = TensorF32::new(vec![1, 2], vec![0.0; 2]).unwrap();
    let targets = TensorF32::new(vec![1, 2, 4], vec![0.0; 8]).unwrap();
    let losses = training::rpn_loss(
        std::slice::from_ref(&level),
        std::slice::from_ref(&level_deltas),
        &zeros,
        &targets,
        &zeros,
        &zeros,
        1.0 / 9.0,
    )
    .unwrap();
    assert_eq!(losses, (0.0, 0.0));
    let (go, gd) =
        training::rpn_loss_backward(&[level], &[level_deltas], &zeros, &targets, &zeros, &zeros, 1.0 / 9.0, 1.0, 1.0)
            .unwrap();
    assert!(go[0].data.iter().chain(&gd[0].data).all(|&g| g == 0.0));
    let empty_logits = TensorF32::new(vec![0, 3], vec![]).unwrap();
    let empty_boxes = TensorF32::new(vec![0, 12], vec![]).unwrap();
    assert_eq!(training::fastrcnn_loss(&empty_logits, &empty_boxes, &[], &none, 1.0 / 9.0).unwrap(), (0.0, 0.0));
}

/// The packed-layout entry: its gradient, in each level's `[N, a, h, w]`, equals central
/// differences of its own loss (float32, so a loose tolerance: this checks the layout).
#[test]
fn rpn_loss_backward_follows_the_head_layout() {
    let mut rng = Rng(29);
    let (n, a) = (2, 3);
    let level_sizes = [[4, 3], [2, 2]];
    let per_image: usize = level_sizes.iter().map(|[h, w]| a * h * w).sum();
    let objectness: Vec<TensorF32> = level_sizes
        .iter()
        .map(|&[h, w]| {
            TensorF32::new(vec![n, a, h, w], (0..n * a * h * w).map(|_| rng.range(-2.0, 2.0)).collect()).unwrap()
        })
        .collect();
    let deltas: Vec<TensorF32> = level_sizes
        .iter()
        .map(|&[h, w]| {
            TensorF32::new(vec![n, 4 * a, h, w], (0..n * 4 * a * h * w).map(|_| rng.range(-1.0, 1.0)).collect())
                .unwrap()
        })
        .collect();
    let labels: Vec<f32> = (0..n * per_image).map(|i| [1.0, 0.0, -1.0, 0.0][i % 4]).collect();
    let sampled: Vec<f32> = labels.iter().map(|&l| (l >= 0.0) as u8 as f32).collect();
    let positive: Vec<f32> = labels.iter().map(|&l| (l == 1.0) as u8 as f32).collect();
    let t = |v: Vec<f32>| TensorF32::new(vec![n, per_image], v).unwrap();
    let (labels, sampled, positive) = (t(labels), t(sampled), t(positive));
    let targets = TensorF32::new(vec![n, per_image, 4], vec![0.0; n * per_image * 4]).unwrap();
    let beta = 1.0 / 9.0;
    // Deltas kept away from smooth-L1's kinks at ±beta, where central differences fail.
    let deltas: Vec<TensorF32> = deltas
        .into_iter()
        .map(|mut d| {
            d.data.iter_mut().filter(|v| (v.abs() - 1.0 / 9.0).abs() < 0.03).for_each(|v| *v *= 3.0);
            d
        })
        .collect();
    let (go, gb) = (1.0f32, 1.0f32);
    let loss = |o: &[TensorF32], d: &[TensorF32]| {
        let (lo, lb) = training::rpn_loss(o, d, &labels, &targets, &positive, &sampled, beta).unwrap();
        lo as f64 + lb as f64
    };
    let (d_objectness, d_deltas) =
        training::rpn_loss_backward(&objectness, &deltas, &labels, &targets, &positive, &sampled, beta, go, gb)
            .unwrap();
    let h = 1e-2f32;
    for (l, level) in objectness.iter().enumerate() {
        for i in (0..level.data.len()).step_by(5) {
            let (mut up, mut down) = (objectness.to_vec(), objectness.to_vec());
            up[l].data[i] += h;
            down[l].data[i] -= h;
            let numeric = (loss(&up, &deltas) - loss(&down, &deltas)) / (2.0 * h as f64);
            assert!((d_objectness[l].data[i] as f64 - numeric).abs() < 2e-4, "objectness level {l} [{i}]");
        }
    }
    for (l, level) in deltas.iter().enumerate() {
        for i in (0..level.data.len()).step_by(3) {
            let (mut up, mut down) = (deltas.to_vec(), deltas.to_vec());
            up[l].data[i] += h / 10.0;
            down[l].data[i] -= h / 10.0;
            let numeric = (loss(&objectness, &up) - loss(&objectness, &down)) / (2.0 * h as f64 / 10.0);
            assert!(
                (d_deltas[l].data[i] as f64 - numeric).abs() < 2e-3,
                "deltas level {l} [{i}]: {} vs {numeric}",
                d_deltas[l].data[i]
            );
        }
    }
}

/// The batched proposals are, image by image, those of the one-image operator.
#[test]
fn batched_rpn_proposals_equal_the_per_image_operator() {
    let mut rng = Rng(31);
    let (n, a) = (2, 3);
    let feature_sizes = [[8, 8], [4, 4]];
    let sizes: Vec<Vec<f32>> = vec![vec![8.0], vec![16.0]];
    let anchors = grid_anchors([32, 32], &feature_sizes, &sizes, &vec![vec![0.5, 1.0, 2.0]; 2]).unwrap();
    let anchors = TensorF32::from_boxes(&anchors);
    let objectness: Vec<TensorF32> = feature_sizes
        .iter()
        .map(|&[h, w]| {
            TensorF32::new(vec![n, a, h, w], (0..n * a * h * w).map(|_| rng.range(-3.0, 3.0)).collect()).unwrap()
        })
        .collect();
    let deltas: Vec<TensorF32> = feature_sizes
        .iter()
        .map(|&[h, w]| {
            TensorF32::new(vec![n, 4 * a, h, w], (0..n * 4 * a * h * w).map(|_| rng.range(-0.5, 0.5)).collect())
                .unwrap()
        })
        .collect();
    let image_sizes = [[32, 32], [24, 30]];
    let p = RpnParams { pre_nms_top_n: 50, post_nms_top_n: 40, ..RpnParams::TORCHVISION };
    let (proposals, image_of) =
        training::rpn_proposals_batched(&objectness, &deltas, &anchors, &image_sizes, &p).unwrap();
    let mut start = 0;
    for (image, &size) in image_sizes.iter().enumerate() {
        let one = |maps: &[TensorF32]| -> Vec<TensorF32> {
            maps.iter()
                .map(|m| {
                    let per = m.data.len() / n;
                    TensorF32::new([&[1][..], &m.shape[1..]].concat(), m.data[image * per..(image + 1) * per].to_vec())
                        .unwrap()
                })
                .collect()
        };
        let expected = rpn_proposals(&one(&objectness), &one(&deltas), &anchors, size, &p).unwrap();
        let count = expected.shape[0];
        assert!(count > 0);
        assert_eq!(&proposals.data[4 * start..4 * (start + count)], &expected.data[..], "image {image}");
        assert!(image_of[start..start + count].iter().all(|&i| i == image as i64));
        start += count;
    }
    assert_eq!(start, proposals.shape[0]);
}

/// torchvision's matcher on a hand-made case: a low-quality match takes the anchor's own best
/// box (not the box whose highest IoU it is), boxes between the thresholds are ignored, and
/// the targets are the matched box encoded against the anchor.
#[test]
fn anchor_matching_follows_torchvisions_matcher() {
    // A's highest IoU is with X (0.25), B's with X too (0.5625): both low quality, and X's best
    // box is B. Z's best is B at 0.5 (between). Y overlaps nothing.
    let gt = TensorF32::from_boxes(&[[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 6.0, 6.0]]);
    let anchors = TensorF32::from_boxes(&[[0.0, 0.0, 8.0, 8.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 6.0, 12.0]]);
    let t = training::match_anchors(&anchors, &gt, &[0, 0], &[[32, 32]], &AnchorMatchParams::TORCHVISION).unwrap();
    assert_eq!(t.labels.data, [1.0, 0.0, -1.0]);
    // X against B: centres (4, 4) and (3, 3), sides 8 and 6.
    let expected = [-0.125, -0.125, (6f64 / 8.0).ln(), (6f64 / 8.0).ln()];
    for (a, e) in t.regression_targets.data[..4].iter().zip(expected) {
        assert!((*a as f64 - e).abs() < 1e-6, "{:?} vs {expected:?}", &t.regression_targets.data[..4]);
    }
    // Without low-quality matches X is between the thresholds.
    let strict = AnchorMatchParams { allow_low_quality_matches: false, ..AnchorMatchParams::TORCHVISION };
    let t = training::match_anchors(&anchors, &gt, &[0, 0], &[[32, 32]], &strict).unwrap();
    assert_eq!(t.labels.data, [-1.0, 0.0, -1.0]);
}
