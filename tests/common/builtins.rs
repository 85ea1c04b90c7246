//! The built-in detection operators' kernel lowerings (`BuiltIns::Kernels`) against
//! torchvision's goldens (`tests/fixtures/ops/`, at the runtime's golden tolerances) or, for the
//! operators without goldens, against the runtime's implementations; each with zero boxes too.
//! Run by the executor a test binary chooses: the CPU with kernel built-ins, or the emulated
//! device.

use super::mini::Compile;
use mrc::run::HostTensor;
use mrc_runtime::detection::{self, TensorF32};
use mrc_runtime::weights::Weights;

/// `|a − b| ≤ rtol·|b| + atol`, as `runtime/tests/golden.rs` compares.
#[derive(Clone, Copy)]
pub struct Tolerance {
    pub rtol: f32,
    pub atol: f32,
}

/// The runtime's golden tolerance for floats.
pub const FLOAT: Tolerance = Tolerance { rtol: 1e-5, atol: 1e-6 };
/// The runtime's golden tolerance for pasted masks.
pub const PASTED: Tolerance = Tolerance { rtol: 0.0, atol: 1e-4 };

/// Compiles `text` (one network) with `compile` and runs it on `inputs`; the first output.
fn run(compile: Compile, name: &str, text: &str, inputs: &[(&str, HostTensor)]) -> HostTensor {
    let model = super::expand(name, text).unwrap_or_else(|d| panic!("{d}"));
    let executor = compile(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let inputs: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    executor.run(&inputs).unwrap().swap_remove(0).1
}

fn host(t: &TensorF32) -> HostTensor {
    HostTensor::F32 { shape: t.shape.clone(), data: t.data.clone() }
}

/// Asserts `actual` has `shape` and every value within `tolerance` of `expected`.
pub fn assert_close(case: &str, actual: &HostTensor, shape: &[usize], expected: &[f32], tolerance: Tolerance) {
    assert_eq!(actual.shape(), shape, "{case}: shape");
    let actual = actual.f32().unwrap();
    let bad: Vec<String> = actual
        .iter()
        .zip(expected)
        .enumerate()
        // Incomparable (a NaN on either side) is a mismatch too.
        .filter(|(_, (a, b))| {
            let bound = tolerance.rtol * b.abs() + tolerance.atol;
            matches!((*a - *b).abs().partial_cmp(&bound), None | Some(std::cmp::Ordering::Greater))
        })
        .take(5)
        .map(|(i, (a, b))| format!("[{i}] {a} vs {b}"))
        .collect();
    assert!(bad.is_empty(), "{case}: values differ: {}", bad.join(", "));
}

fn values(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin() * scale).collect()
}

/// `mask_probs` for a head with 3 classes and for a class-agnostic one, for 4 masks and none.
pub fn mask_probs(compile: Compile) {
    for classes in [3, 1] {
        let text = format!(
            "network t(logits: f32[D, {classes}, 6, 5], labels: i64[D]) -> (probs: f32[D, 1, 6, 5]) {{\n    return mask_probs(logits, labels)\n}}\n"
        );
        for d in [4, 0] {
            let logits = TensorF32::new(vec![d, classes, 6, 5], values(d * classes * 30, 8.0)).unwrap();
            let labels: Vec<i64> = (0..d as i64).map(|i| (i * 2 + 1) % 3 + 1).collect();
            let labels = if classes == 1 { labels } else { labels.iter().map(|l| l - 1).collect() };
            let inputs = [("logits", host(&logits)), ("labels", HostTensor::I64 { shape: vec![d], data: labels.clone() })];
            let ours = run(compile, &format!("mask_probs_{classes}.model"), &text, &inputs);
            let theirs = detection::mask_probs(&logits, &labels).unwrap();
            assert_close(&format!("mask_probs of {d} masks of {classes} classes"), &ours, &theirs.shape, &theirs.data, FLOAT);
        }
    }
}

/// `rescale_boxes` from a resized frame to an image of another aspect, for 3 boxes and none.
pub fn rescale_boxes(compile: Compile) {
    let text = "network t(boxes: f32[D, 4], size: i64[2], image: u8[H, W, 3]) -> (rescaled: f32[D, 4]) {\n    return rescale_boxes(boxes, size, image)\n}\n";
    let all = [[1.5, 2.0, 30.25, 40.0], [0.0, 0.0, 319.0, 211.0], [100.1, 7.7, 120.9, 99.3]];
    for d in [3, 0] {
        let boxes = TensorF32::from_boxes(&all[..d]);
        let (from, to) = ([212, 320], [300, 451]);
        let inputs = [
            ("boxes", host(&boxes)),
            ("size", HostTensor::I64 { shape: vec![2], data: vec![from[0] as i64, from[1] as i64] }),
            ("image", HostTensor::U8 { shape: vec![to[0], to[1], 3], data: vec![0; to[0] * to[1] * 3] }),
        ];
        let ours = run(compile, "rescale_boxes.model", text, &inputs);
        let theirs = detection::rescale_boxes(&boxes, from, to).unwrap();
        assert_close(&format!("rescale_boxes of {d} boxes"), &ours, &theirs.shape, &theirs.data, FLOAT);
    }
}

/// The cases of `op` in the fixtures' `ops/cases.json`, and its tensors.
fn golden(op: &str) -> (Vec<serde_json::Value>, Weights) {
    let directory = super::fixtures().join("ops");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(directory.join("cases.json")).unwrap()).unwrap();
    let tensors = Weights::open(directory.join(format!("{op}.safetensors"))).unwrap();
    (cases["cases"][op].as_array().unwrap().clone(), tensors)
}

fn tensor(tensors: &Weights, name: &str) -> TensorF32 {
    let t = tensors.get(name).unwrap_or_else(|| panic!("no {name}"));
    TensorF32::new(t.shape().to_vec(), t.as_f32().unwrap().to_vec()).unwrap()
}

/// `roi_align` on every golden case (aligned and legacy, fixed and adaptive sampling), image
/// by image of the case's batch, then with no boxes; and `mode: "max"` against the runtime.
pub fn roi_align(compile: Compile) {
    single_level_goldens(compile, "roi_align", |case| {
        format!("spatial_scale: {}, sampling_ratio: {}, aligned: {}", case["spatial_scale"], case["sampling_ratio"], case["aligned"])
    });

    let text = "network t(x: f32[1, 4, H, W], boxes: f32[K, 4]) -> (y: f32[K, 4, 2, 3]) {\n    return roi_align(x, boxes, output_size: [2, 3], spatial_scale: 0.25, mode: \"max\")\n}\n";
    let x = TensorF32::new(vec![1, 4, 16, 16], values(1024, 3.0)).unwrap();
    let all = [[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 12.5, 14.0], [0.0, 0.0, 63.0, 63.0], [-20.0, 5.0, 70.0, 25.0]];
    for k in [4, 0] {
        let boxes = TensorF32::from_boxes(&all[..k]);
        let ours = run(compile, "roi_align_max.model", text, &[("x", host(&x)), ("boxes", host(&boxes))]);
        let params = mrc_runtime::ops::roi_align::RoiAlignParams {
            output_size: [2, 3],
            spatial_scale: 0.25,
            sampling_ratio: -1,
            aligned: false,
            mode: mrc_runtime::ops::roi_align::PoolMode::Max,
        };
        let theirs = detection::roi_align(&x, &boxes, &params).unwrap();
        assert_close(&format!("roi_align max of {k} boxes"), &ours, &theirs.shape, &theirs.data, FLOAT);
    }
}

/// `roi_pool` on every golden case, image by image of the case's batch, then with no boxes.
pub fn roi_pool(compile: Compile) {
    single_level_goldens(compile, "roi_pool", |case| format!("spatial_scale: {}", case["spatial_scale"]));
}

/// The golden cases of a pooling built-in over one feature map (`op`, with the attributes
/// `attributes` gives a case besides `output_size`): its batch of images one at a time (the
/// operator takes one), each image's boxes, then no boxes.
fn single_level_goldens(compile: Compile, op: &str, attributes: impl Fn(&serde_json::Value) -> String) {
    let (cases, tensors) = golden(op);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (input, rois, output) = (tensor(&tensors, &format!("{name}.input")), tensor(&tensors, &format!("{name}.rois")), tensor(&tensors, &format!("{name}.output")));
        let [n, c, h, w] = input.shape[..] else { panic!("{name}: input {:?}", input.shape) };
        let [oh, ow] = [0, 1].map(|i| case["output_size"][i].as_u64().unwrap() as usize);
        let text = format!(
            "network t(x: f32[1, {c}, H, W], boxes: f32[K, 4]) -> (y: f32[K, {c}, {oh}, {ow}]) {{\n    return {op}(x, boxes, output_size: [{oh}, {ow}], {})\n}}\n",
            attributes(case)
        );
        let per_box = c * oh * ow;
        for image in 0..=n {
            // The last round has no boxes.
            let members: Vec<usize> = (0..rois.shape[0]).filter(|&k| image < n && rois.data[k * 5] as usize == image).collect();
            let boxes: Vec<[f32; 4]> = members.iter().map(|&k| rois.data[k * 5 + 1..k * 5 + 5].try_into().unwrap()).collect();
            let features = TensorF32::new(vec![1, c, h, w], input.data[image.min(n - 1) * c * h * w..][..c * h * w].to_vec()).unwrap();
            let inputs = [("x", host(&features)), ("boxes", host(&TensorF32::from_boxes(&boxes)))];
            let ours = run(compile, &format!("{op}_{name}.model"), &text, &inputs);
            let expected: Vec<f32> = members.iter().flat_map(|&k| output.data[k * per_box..(k + 1) * per_box].iter().copied()).collect();
            assert_close(&format!("{op} {name}, {} boxes of image {image}", members.len()), &ours, &[members.len(), c, oh, ow], &expected, FLOAT);
        }
    }
}

/// `multiscale_roi_align` on every golden case (four levels whose sizes are known only at run
/// time), then with no boxes.
pub fn multiscale_roi_align(compile: Compile) {
    pyramid_goldens(compile, "multiscale_roi_align", |case| format!("sampling_ratio: {}, ", case["sampling_ratio"]));
}

/// `multiscale_roi_pool` on every golden case, then with no boxes.
pub fn multiscale_roi_pool(compile: Compile) {
    pyramid_goldens(compile, "multiscale_roi_pool", |_| String::new());
}

/// The golden cases of a pooling built-in over four FPN levels (`op`, with the attributes
/// `attributes` gives a case besides the level mapper's), then with no boxes.
fn pyramid_goldens(compile: Compile, op: &str, attributes: impl Fn(&serde_json::Value) -> String) {
    let (cases, tensors) = golden(op);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let levels: Vec<TensorF32> = (0..4).map(|l| tensor(&tensors, &format!("{name}.feat{l}"))).collect();
        let (boxes, output) = (tensor(&tensors, &format!("{name}.boxes")), tensor(&tensors, &format!("{name}.output")));
        let c = levels[0].shape[1];
        let o = case["output_size"].as_u64().unwrap();
        let text = format!(
            "network t(p2: f32[1, {c}, H2, W2], p3: f32[1, {c}, H3, W3], p4: f32[1, {c}, H4, W4], p5: f32[1, {c}, H5, W5], boxes: f32[K, 4], size: i64[2]) -> (y: f32[K, {c}, {o}, {o}]) {{\n    return {op}([p2, p3, p4, p5], boxes, size, output_size: [{o}, {o}], {}canonical_scale: {}, canonical_level: {})\n}}\n",
            attributes(case), case["canonical_scale"], case["canonical_level"]
        );
        let size: Vec<i64> = (0..2).map(|i| case["image_size"][i].as_i64().unwrap()).collect();
        for k in [boxes.shape[0], 0] {
            let inputs = [
                ("p2", host(&levels[0])),
                ("p3", host(&levels[1])),
                ("p4", host(&levels[2])),
                ("p5", host(&levels[3])),
                ("boxes", host(&TensorF32::new(vec![k, 4], boxes.data[..k * 4].to_vec()).unwrap())),
                ("size", HostTensor::I64 { shape: vec![2], data: size.clone() }),
            ];
            let ours = run(compile, &format!("{op}_{name}.model"), &text, &inputs);
            let o = o as usize;
            let expected = &output.data[..k * c * o * o];
            assert_close(&format!("{op} {name}, {k} boxes"), &ours, &[k, c, o, o], expected, FLOAT);
        }
    }
}

/// `paste_masks` on every golden case, then with no masks.
pub fn paste_masks(compile: Compile) {
    let (cases, tensors) = golden("paste_masks");
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (masks, boxes, pasted) = (tensor(&tensors, &format!("{name}.masks")), tensor(&tensors, &format!("{name}.boxes")), tensor(&tensors, &format!("{name}.pasted")));
        let m = masks.shape[3];
        let [h, w] = [0, 1].map(|i| case["image_size"][i].as_u64().unwrap() as usize);
        let text = format!(
            "network t(masks: f32[D, 1, {m}, {m}], boxes: f32[D, 4], image: u8[H, W, 3]) -> (y: f32[D, 1, H, W]) {{\n    return paste_masks(masks, boxes, image, padding: {})\n}}\n",
            case["padding"]
        );
        for d in [boxes.shape[0], 0] {
            let inputs = [
                ("masks", host(&TensorF32::new(vec![d, 1, m, m], masks.data[..d * m * m].to_vec()).unwrap())),
                ("boxes", host(&TensorF32::new(vec![d, 4], boxes.data[..d * 4].to_vec()).unwrap())),
                ("image", HostTensor::U8 { shape: vec![h, w, 3], data: vec![0; h * w * 3] }),
            ];
            let ours = run(compile, &format!("paste_masks_{name}.model"), &text, &inputs);
            assert_close(&format!("paste_masks {name}, {d} masks"), &ours, &[d, 1, h, w], &pasted.data[..d * h * w], PASTED);
        }
    }
}

/// `anchors` on every golden case (feature maps and batch of sizes known only at run time).
pub fn anchors(compile: Compile) {
    let (cases, tensors) = golden("anchors");
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let expected = tensor(&tensors, &format!("{name}.anchors"));
        let feature_sizes: Vec<[usize; 2]> = case["feature_sizes"].as_array().unwrap().iter().map(|s| [0, 1].map(|i| s[i].as_u64().unwrap() as usize)).collect();
        let [h, w] = [0, 1].map(|i| case["image_size"][i].as_u64().unwrap() as usize);
        let names: Vec<String> = (0..feature_sizes.len()).map(|l| format!("f{l}")).collect();
        let parameters: Vec<String> = names.iter().map(|n| format!("{n}: f32[1, 1, H{n}, W{n}]")).collect();
        let text = format!(
            "network t({}, batch: f32[1, 3, H, W]) -> (y: f32[A, 4]) {{\n    return anchors([{}], batch, sizes: {}, aspect_ratios: {})\n}}\n",
            parameters.join(", "),
            names.join(", "),
            case["sizes"],
            case["aspect_ratios"]
        );
        let mut inputs: Vec<(&str, HostTensor)> =
            names.iter().zip(&feature_sizes).map(|(n, [fh, fw])| (n.as_str(), HostTensor::F32 { shape: vec![1, 1, *fh, *fw], data: vec![0.0; fh * fw] })).collect();
        inputs.push(("batch", HostTensor::F32 { shape: vec![1, 3, h, w], data: vec![0.0; 3 * h * w] }));
        let ours = run(compile, &format!("anchors_{name}.model"), &text, &inputs);
        assert_close(&format!("anchors {name}"), &ours, &expected.shape, &expected.data, FLOAT);
    }
}

/// `preprocess` against the runtime's on odd sizes of both orientations, enlarged and reduced;
/// the batch and the resized size.
pub fn preprocess(compile: Compile) {
    let text = "network t(image: u8[H, W, 3]) -> (batch: f32[1, 3, Hp, Wp], size: i64[2]) {\n    let (batch, size) = preprocess(image, min_size: 48, max_size: 80, size_divisible: 32)\n    return (batch, size)\n}\n";
    let model = super::expand("preprocess.model", text).unwrap_or_else(|d| panic!("{d}"));
    let executor = compile(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let transform = mrc_runtime::ops::preprocess::Transform { min_size: 48, max_size: 80, ..Default::default() };
    for [h, w] in [[37, 53], [53, 37], [101, 67], [45, 131], [48, 48]] {
        let pixels: Vec<u8> = (0..h * w * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect();
        let image = HostTensor::U8 { shape: vec![h, w, 3], data: pixels.clone() };
        let outputs = executor.run(&[("image", &image)]).unwrap();
        let (batch, size) = detection::preprocess(&pixels, [h, w], &transform).unwrap();
        assert_close(&format!("preprocess {h}x{w}"), &outputs[0].1, &batch.shape, &batch.data, FLOAT);
        assert_eq!(outputs[1].1, HostTensor::I64 { shape: vec![2], data: vec![size[0] as i64, size[1] as i64] }, "preprocess {h}x{w}: size");
    }
}

/// `postprocess_detections` against the runtime's function, outputs equal (boxes, scores and
/// labels, in the same order): on the detection fixtures' cases; on candidates with tied
/// scores and identical boxes; with no candidate above the score threshold; with every box
/// but the best suppressed; with no proposals; and with more than 1,000 candidates (boxes not
/// shifted apart by label).
pub fn postprocess_detections(compile: Compile) {
    let directory = super::fixtures().join("detection");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(directory.join("cases.json")).unwrap()).unwrap();
    let tensors = Weights::open(directory.join("detection.safetensors")).unwrap();
    for case in cases["cases"]["detections"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let t = |what: &str| tensor(&tensors, &format!("{name}.{what}"));
        let size = [0, 1].map(|i| case["image_hw"][i].as_u64().unwrap() as usize);
        let params = detection::DetectionParams {
            weights: [0, 1, 2, 3].map(|i| case["weights"][i].as_f64().unwrap() as f32),
            score_thresh: case["score_thresh"].as_f64().unwrap(),
            nms_thresh: case["nms_thresh"].as_f64().unwrap(),
            detections_per_img: case["detections_per_img"].as_u64().unwrap() as usize,
            min_size: case["min_size"].as_f64().unwrap(),
        };
        postprocess_case(compile, name, &t("class_logits"), &t("box_regression"), &t("proposals"), size, &params);
    }
    let params = detection::DetectionParams::TORCHVISION;
    let uniform = |p: usize, k: usize, value: f32| TensorF32::new(vec![p, k], vec![value; p * k]).unwrap();
    let square = |p: usize| TensorF32::from_boxes(&vec![[10.0, 10.0, 30.0, 30.0]; p]);
    // Equal logits: ties everywhere, identical boxes per class; one box kept per class.
    postprocess_case(compile, "ties", &uniform(5, 3, 0.0), &uniform(5, 12, 0.0), &square(5), [50, 60], &params);
    // Equal scores, boxes apart: all kept, in candidate order.
    let apart = TensorF32::from_boxes(&(0..6).map(|i| [i as f32 * 8.0, 0.0, i as f32 * 8.0 + 6.0, 6.0]).collect::<Vec<_>>());
    postprocess_case(compile, "ties apart", &uniform(6, 2, 0.0), &uniform(6, 8, 0.0), &apart, [50, 60], &params);
    // Background only: no candidate passes the threshold.
    let background = TensorF32::new(vec![4, 3], (0..4).flat_map(|_| [20.0, 0.0, 0.0]).collect()).unwrap();
    postprocess_case(compile, "no candidates", &background, &uniform(4, 12, 0.0), &square(4), [50, 60], &params);
    // One class, distinct scores, overlapping boxes: all but the best suppressed.
    let logits = TensorF32::new(vec![5, 2], (0..5).flat_map(|i| [0.0, 1.0 + i as f32 * 0.1]).collect()).unwrap();
    let overlapping = TensorF32::from_boxes(&(0..5).map(|i| [10.0 + i as f32 * 0.5, 10.0, 30.0 + i as f32 * 0.5, 30.0]).collect::<Vec<_>>());
    postprocess_case(compile, "all suppressed", &logits, &uniform(5, 8, 0.0), &overlapping, [50, 60], &params);
    postprocess_case(compile, "no proposals", &uniform(0, 3, 0.0), &uniform(0, 12, 0.0), &square(0), [50, 60], &params);
    // 600 proposals × 2 classes: 1,200 candidates, NMS per label on unshifted boxes.
    let many = 600;
    let logits = TensorF32::new(vec![many, 3], (0..many).flat_map(|i| [0.0, (i as f32 * 0.37).sin(), (i as f32 * 0.11).cos()]).collect()).unwrap();
    let regression = TensorF32::new(vec![many, 12], values(many * 12, 0.5)).unwrap();
    let proposals = TensorF32::from_boxes(&(0..many).map(|i| { let (x, y) = ((i % 30) as f32 * 5.0, (i / 30) as f32 * 5.0); [x, y, x + 12.0, y + 9.0] }).collect::<Vec<_>>());
    postprocess_case(compile, "1,200 candidates", &logits, &regression, &proposals, [110, 160], &params);
}

fn postprocess_case(
    compile: Compile,
    case: &str,
    logits: &TensorF32,
    regression: &TensorF32,
    proposals: &TensorF32,
    size: [usize; 2],
    p: &detection::DetectionParams,
) {
    let k = logits.shape[1];
    let text = format!(
        "network t(logits: f32[P, {k}], regression: f32[P, {}], proposals: f32[P, 4], size: i64[2]) -> (boxes: f32[D, 4], scores: f32[D], labels: i64[D]) {{\n    let (boxes, scores, labels) = postprocess_detections(logits, regression, proposals, size, weights: [{:?}, {:?}, {:?}, {:?}], score_thresh: {:?}, nms_thresh: {:?}, detections_per_img: {}, min_size: {:?})\n    return (boxes, scores, labels)\n}}\n",
        4 * k, p.weights[0], p.weights[1], p.weights[2], p.weights[3], p.score_thresh, p.nms_thresh, p.detections_per_img, p.min_size
    );
    let model = super::expand("postprocess_detections.model", &text).unwrap_or_else(|d| panic!("{d}"));
    let executor = compile(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let size_tensor = HostTensor::I64 { shape: vec![2], data: vec![size[0] as i64, size[1] as i64] };
    let (logits_in, regression_in, proposals_in) = (host(logits), host(regression), host(proposals));
    let inputs: Vec<(&str, &HostTensor)> = vec![("logits", &logits_in), ("regression", &regression_in), ("proposals", &proposals_in), ("size", &size_tensor)];
    let outputs = executor.run(&inputs).unwrap();
    let (boxes, scores, labels) = detection::postprocess_detections(logits, regression, proposals, size, p).unwrap();
    assert_eq!(outputs[0].1.shape(), boxes.shape, "{case}: boxes' shape");
    assert_eq!(outputs[0].1.f32().unwrap(), &boxes.data[..], "{case}: boxes");
    assert_eq!(outputs[1].1.f32().unwrap(), &scores.data[..], "{case}: scores");
    let HostTensor::I64 { data, .. } = &outputs[2].1 else { panic!("{case}: labels not i64") };
    assert_eq!(data, &labels, "{case}: labels");
    eprintln!("{case}: {} detections", labels.len());
}

/// `rpn_proposals` against the runtime's function, proposals equal (same boxes, same order):
/// on the detection fixtures' RPN cases (the second with more than 1,000 candidates); and, for
/// those with at most 1,000, with equal logits everywhere (ties), with every box below the
/// score threshold, and with every box but one per level suppressed.
pub fn rpn_proposals(compile: Compile) {
    let directory = super::fixtures().join("detection");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(directory.join("cases.json")).unwrap()).unwrap();
    let tensors = Weights::open(directory.join("detection.safetensors")).unwrap();
    let hw = |v: &serde_json::Value| [0, 1].map(|i| v[i].as_u64().unwrap() as usize);
    for case in cases["cases"]["rpn"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let levels = case["feature_sizes"].as_array().unwrap().len();
        let objectness: Vec<TensorF32> = (0..levels).map(|l| tensor(&tensors, &format!("{name}.objectness{l}"))).collect();
        let deltas: Vec<TensorF32> = (0..levels).map(|l| tensor(&tensors, &format!("{name}.deltas{l}"))).collect();
        let anchors = tensor(&tensors, &format!("{name}.anchors"));
        let p = detection::RpnParams {
            pre_nms_top_n: case["pre_nms_top_n"].as_u64().unwrap() as usize,
            post_nms_top_n: case["post_nms_top_n"].as_u64().unwrap() as usize,
            nms_thresh: case["nms_thresh"].as_f64().unwrap(),
            min_size: case["min_size"].as_f64().unwrap(),
            score_thresh: case["score_thresh"].as_f64().unwrap(),
            weights: [1.0; 4],
        };
        let size = hw(&case["image_hw"]);
        rpn_case(compile, name, &objectness, &deltas, &anchors, size, &p);
        // Beyond 1,000 candidates the runtime orders equal scores by `std::sort`'s swaps,
        // which the kernels do not reproduce: ties only below.
        let candidates: usize = objectness.iter().map(|o| o.data.len().min(p.pre_nms_top_n)).sum();
        if candidates > 1000 {
            continue;
        }
        let flat = |t: &TensorF32, value: f32| TensorF32::new(t.shape.clone(), vec![value; t.data.len()]).unwrap();
        let equal: Vec<TensorF32> = objectness.iter().map(|o| flat(o, 0.5)).collect();
        let zero_deltas: Vec<TensorF32> = deltas.iter().map(|d| flat(d, 0.0)).collect();
        rpn_case(compile, &format!("{name} with equal logits"), &equal, &deltas, &anchors, size, &p);
        rpn_case(compile, &format!("{name} with equal logits and boxes"), &equal, &zero_deltas, &anchors, size, &p);
        let low: Vec<TensorF32> = objectness.iter().map(|o| flat(o, -20.0)).collect();
        rpn_case(compile, &format!("{name} below the threshold"), &low, &deltas, &anchors, size, &detection::RpnParams { score_thresh: 0.5, ..p });
        // Every anchor the same box: one proposal per level survives.
        let same = TensorF32::from_boxes(&vec![[4.0, 4.0, 30.0, 20.0]; anchors.shape[0]]);
        rpn_case(compile, &format!("{name} all suppressed but one per level"), &objectness, &zero_deltas, &same, size, &p);
    }
}

fn rpn_case(compile: Compile, case: &str, objectness: &[TensorF32], deltas: &[TensorF32], anchors: &TensorF32, size: [usize; 2], p: &detection::RpnParams) {
    let levels = objectness.len();
    let maps: Vec<String> = (0..levels)
        .map(|l| format!("o{l}: f32[1, {a}, H{l}, W{l}], d{l}: f32[1, {}, H{l}, W{l}]", 4 * objectness[l].shape[1], a = objectness[l].shape[1]))
        .collect();
    let list = |prefix: &str| (0..levels).map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "network t({}, anchors: f32[N, 4], size: i64[2]) -> (proposals: f32[P, 4]) {{\n    return rpn_proposals([{}], [{}], anchors, size, pre_nms_top_n: {}, post_nms_top_n: {}, nms_thresh: {:?}, min_size: {:?}, score_thresh: {:?}, weights: [1.0, 1.0, 1.0, 1.0])\n}}\n",
        maps.join(", "), list("o"), list("d"), p.pre_nms_top_n, p.post_nms_top_n, p.nms_thresh, p.min_size, p.score_thresh
    );
    let model = super::expand("rpn_proposals.model", &text).unwrap_or_else(|d| panic!("{d}"));
    let executor = compile(&model.graph, Weights::from_tensors("no weights", []).unwrap(), &[], 1).unwrap();
    let mut named: Vec<(String, HostTensor)> = vec![];
    for l in 0..levels {
        named.push((format!("o{l}"), host(&objectness[l])));
        named.push((format!("d{l}"), host(&deltas[l])));
    }
    named.push(("anchors".into(), host(anchors)));
    named.push(("size".into(), HostTensor::I64 { shape: vec![2], data: vec![size[0] as i64, size[1] as i64] }));
    let inputs: Vec<(&str, &HostTensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let ours = executor.run(&inputs).unwrap().swap_remove(0).1;
    let theirs = detection::rpn_proposals(objectness, deltas, anchors, size, p).unwrap();
    assert_eq!(ours.shape(), theirs.shape, "{case}: shape");
    let differ = ours.f32().unwrap().iter().zip(&theirs.data).position(|(a, b)| a != b);
    assert!(differ.is_none(), "{case}: proposals differ from value {differ:?} on");
    eprintln!("{case}: {} proposals", theirs.shape[0]);
}
