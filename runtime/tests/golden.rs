//! Golden tests: every case of the fixtures' `ops/` (see `common::fixtures_dir`) against
//! torchvision's outputs, floats within |a − b| ≤ 1e-5·|b| + 1e-6 (1e-4 absolute for pasted
//! masks), indices exactly.

mod common;

use common::*;
use mrc_runtime::ops::anchors::grid_anchors;
use mrc_runtime::ops::box_coder::BoxCoder;
use mrc_runtime::ops::keypoints::heatmaps_to_keypoints;
use mrc_runtime::ops::multiscale::{multiscale_roi_align, multiscale_roi_pool, MultiScaleParams, MultiScalePoolParams};
use mrc_runtime::ops::nms::{batched_nms, nms};
use mrc_runtime::ops::paste_masks::paste_masks_in_image;
use mrc_runtime::ops::preprocess::{preprocess, resized_size, ImageU8, Transform};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::ops::roi_pool::roi_pool;
use mrc_runtime::FeatureMap;

fn feature_map(t: &Tensor<f32>) -> FeatureMap<'_> {
    let s: [usize; 4] = t.shape.as_slice().try_into().expect("expected a 4-d tensor");
    FeatureMap::new(&t.data, s).unwrap()
}

#[test]
fn roi_align_cases() {
    let fx = Fixture::open("roi_align.safetensors");
    let mut failures = Vec::new();
    for case in cases("roi_align") {
        let n = name(&case);
        let input = fx.f32(&format!("{n}.input"));
        let rois_tensor = fx.f32(&format!("{n}.rois"));
        let expected = fx.f32(&format!("{n}.output"));
        let p = RoiAlignParams {
            output_size: pair(&case["output_size"]),
            spatial_scale: case["spatial_scale"].as_f64().unwrap() as f32,
            sampling_ratio: case["sampling_ratio"].as_i64().unwrap() as i32,
            aligned: case["aligned"].as_bool().unwrap(),
            mode: PoolMode::Avg,
        };
        let out = roi_align(&feature_map(&input), &rois(&rois_tensor), &p).unwrap();
        check_golden(&format!("roi_align {n}"), &out, &expected.data, FLOAT, &mut failures);
    }
    report("roi_align", failures);
}

/// `[K, 5]` RoIs (batch index, box).
fn rois(t: &Tensor<f32>) -> Vec<[f32; 5]> {
    t.data.chunks_exact(5).map(|c| c.try_into().unwrap()).collect()
}

#[test]
fn roi_pool_cases() {
    let fx = Fixture::open("roi_pool.safetensors");
    let mut failures = Vec::new();
    for case in cases("roi_pool") {
        let n = name(&case);
        let input = fx.f32(&format!("{n}.input"));
        let rois = rois(&fx.f32(&format!("{n}.rois")));
        let expected = fx.f32(&format!("{n}.output"));
        let scale = case["spatial_scale"].as_f64().unwrap() as f32;
        let out = roi_pool(&feature_map(&input), &rois, pair(&case["output_size"]), scale).unwrap();
        check_golden(&format!("roi_pool {n}"), &out.values, &expected.data, FLOAT, &mut failures);
    }
    report("roi_pool", failures);
}

#[test]
fn multiscale_roi_align_cases() {
    let fx = Fixture::open("multiscale_roi_align.safetensors");
    let mut failures = Vec::new();
    for case in cases("multiscale_roi_align") {
        let n = name(&case);
        let expected_scales = f32_list(&case["scales"]);
        let feats: Vec<Tensor<f32>> =
            (0..expected_scales.len()).map(|l| fx.f32(&format!("{n}.feat{l}"))).collect();
        let maps: Vec<FeatureMap> = feats.iter().map(feature_map).collect();
        let boxes = boxes(&fx.f32(&format!("{n}.boxes")));
        let expected = fx.f32(&format!("{n}.output"));
        let o = case["output_size"].as_u64().unwrap() as usize;
        let mut p = MultiScaleParams::new([o, o], case["sampling_ratio"].as_i64().unwrap() as i32);
        p.canonical_scale = case["canonical_scale"].as_f64().unwrap() as f32;
        p.canonical_level = case["canonical_level"].as_f64().unwrap() as f32;
        let out = multiscale_roi_align(&maps, &[&boxes], &[pair(&case["image_size"])], &p).unwrap();
        if out.scales != expected_scales {
            failures.push(format!("{n}: inferred scales {:?}, torchvision {:?}", out.scales, expected_scales));
        }
        check_golden(&format!("multiscale_roi_align {n}"), &out.values, &expected.data, FLOAT, &mut failures);
    }
    report("multiscale_roi_align", failures);
}

#[test]
fn multiscale_roi_pool_cases() {
    let fx = Fixture::open("multiscale_roi_pool.safetensors");
    let mut failures = Vec::new();
    for case in cases("multiscale_roi_pool") {
        let n = name(&case);
        let expected_scales = f32_list(&case["scales"]);
        let feats: Vec<Tensor<f32>> = (0..expected_scales.len()).map(|l| fx.f32(&format!("{n}.feat{l}"))).collect();
        let maps: Vec<FeatureMap> = feats.iter().map(feature_map).collect();
        let boxes = boxes(&fx.f32(&format!("{n}.boxes")));
        let expected = fx.f32(&format!("{n}.output"));
        let o = case["output_size"].as_u64().unwrap() as usize;
        let p = MultiScalePoolParams {
            canonical_scale: case["canonical_scale"].as_f64().unwrap() as f32,
            canonical_level: case["canonical_level"].as_f64().unwrap() as f32,
            ..MultiScalePoolParams::new([o, o])
        };
        let out = multiscale_roi_pool(&maps, &[&boxes], &[pair(&case["image_size"])], &p).unwrap();
        if out.scales != expected_scales {
            failures.push(format!("{n}: inferred scales {:?}, torchvision {:?}", out.scales, expected_scales));
        }
        check_golden(&format!("multiscale_roi_pool {n}"), &out.values, &expected.data, FLOAT, &mut failures);
    }
    report("multiscale_roi_pool", failures);
}

#[test]
fn heatmaps_to_keypoints_cases() {
    let fx = Fixture::open("heatmaps_to_keypoints.safetensors");
    let mut failures = Vec::new();
    for case in cases("heatmaps_to_keypoints") {
        let n = name(&case);
        let maps = fx.f32(&format!("{n}.heatmaps"));
        let shape: [usize; 4] = maps.shape.as_slice().try_into().expect("heatmaps [K, N, S, S]");
        let out = heatmaps_to_keypoints(&maps.data, shape, &boxes(&fx.f32(&format!("{n}.boxes")))).unwrap();
        let (keypoints, scores) = (fx.f32(&format!("{n}.keypoints")), fx.f32(&format!("{n}.scores")));
        check_golden(&format!("keypoints {n}"), &out.xyv, &keypoints.data, FLOAT, &mut failures);
        check_golden(&format!("keypoint scores {n}"), &out.scores, &scores.data, FLOAT, &mut failures);
    }
    report("heatmaps_to_keypoints", failures);
}

#[test]
fn anchors_cases() {
    let fx = Fixture::open("anchors.safetensors");
    let mut failures = Vec::new();
    for case in cases("anchors") {
        let n = name(&case);
        let feature_sizes: Vec<[usize; 2]> = case["feature_sizes"].as_array().unwrap().iter().map(pair).collect();
        let sizes: Vec<Vec<f32>> = case["sizes"].as_array().unwrap().iter().map(f32_list).collect();
        let ratios = vec![f32_list(&case["aspect_ratios"]); sizes.len()];
        let out = grid_anchors(pair(&case["image_size"]), &feature_sizes, &sizes, &ratios).unwrap();
        let expected = fx.f32(&format!("{n}.anchors"));
        check_golden(&format!("anchors {n}"), out.as_flattened(), &expected.data, FLOAT, &mut failures);
    }
    report("anchors", failures);
}

#[test]
fn box_coder_cases() {
    let fx = Fixture::open("box_coder.safetensors");
    let mut failures = Vec::new();
    for case in cases("box_coder") {
        let n = name(&case);
        let w = f32_list(&case["weights"]);
        let coder = BoxCoder {
            weights: w.as_slice().try_into().expect("four weights"),
            bbox_xform_clip: case["bbox_xform_clip"].as_f64().unwrap() as f32,
        };
        let t = |s: &str| fx.f32(&format!("{n}.{s}"));
        let proposals = boxes(&t("proposals"));
        let encoded = coder.encode(&boxes(&t("gt")), &proposals).unwrap();
        check_golden(&format!("encode {n}"), encoded.as_flattened(), &t("encoded").data, FLOAT, &mut failures);
        let decoded = coder.decode(&t("deltas").data, &proposals).unwrap();
        check_golden(&format!("decode {n}"), decoded.as_flattened(), &t("decoded").data, FLOAT, &mut failures);
    }
    report("box_coder", failures);
}

#[test]
fn nms_cases() {
    let fx = Fixture::open("nms.safetensors");
    let mut failures = Vec::new();
    for case in cases("nms") {
        let n = name(&case);
        let b = boxes(&fx.f32(&format!("{n}.boxes")));
        let scores = fx.f32(&format!("{n}.scores")).data;
        let thr = case["iou_threshold"].as_f64().unwrap();
        let keep = if case["batched"].as_bool().unwrap() {
            batched_nms(&b, &scores, &fx.i64(&format!("{n}.labels")).data, thr)
        } else {
            nms(&b, &scores, thr)
        }
        .unwrap();
        let keep: Vec<i64> = keep.into_iter().map(|k| k as i64).collect();
        if let Err(e) = compare_exact(&keep, &fx.i64(&format!("{n}.keep")).data) {
            failures.push(format!("nms {n}: {e}"));
        }
    }
    report("nms", failures);
}

#[test]
fn paste_masks_cases() {
    let fx = Fixture::open("paste_masks.safetensors");
    let mut failures = Vec::new();
    for case in cases("paste_masks") {
        let n = name(&case);
        let masks = fx.f32(&format!("{n}.masks"));
        let m = masks.shape[3];
        assert_eq!(masks.shape[2], m, "square masks");
        let b = boxes(&fx.f32(&format!("{n}.boxes")));
        let padding = case["padding"].as_u64().unwrap() as usize;
        let out = paste_masks_in_image(&masks.data, m, &b, pair(&case["image_size"]), padding).unwrap();
        let expected = fx.f32(&format!("{n}.pasted"));
        check_golden(&format!("paste_masks {n}"), &out, &expected.data, PASTED, &mut failures);
    }
    report("paste_masks", failures);
}

#[test]
fn transform_cases() {
    let fx = Fixture::open("transform.safetensors");
    let mut failures = Vec::new();
    for case in cases("transform") {
        let n = name(&case);
        let img = fx.u8(&format!("{n}.image_u8"));
        let (h, w) = (img.shape[0], img.shape[1]);
        let t = Transform {
            min_size: case["min_size"].as_u64().unwrap() as usize,
            max_size: case["max_size"].as_u64().unwrap() as usize,
            mean: f32_list(&case["mean"]).try_into().unwrap(),
            std: f32_list(&case["std"]).try_into().unwrap(),
            size_divisible: case["size_divisible"].as_u64().unwrap() as usize,
        };
        let resized = resized_size([h, w], t.min_size, t.max_size).unwrap();
        if resized != pair(&case["resized_hw"]) {
            failures.push(format!("transform {n}: resized to {resized:?}, torchvision {}", case["resized_hw"]));
            continue;
        }
        let batch = preprocess(&[ImageU8 { data: &img.data, height: h, width: w }], &t).unwrap();
        let expected = fx.f32(&format!("{n}.batched"));
        if batch.shape[1..] != expected.shape[..] {
            failures.push(format!("transform {n}: batch shape {:?}, torchvision {:?}", batch.shape, expected.shape));
            continue;
        }
        check_golden(&format!("transform {n}"), &batch.data, &expected.data, FLOAT, &mut failures);
    }
    report("transform", failures);
}

/// The comparison has teeth everywhere: moving any single value of a golden output beyond the
/// tolerance (either way), or any kept index, is reported.
#[test]
fn perturbing_any_golden_value_fails() {
    let first = |op: &str| name(&cases(op)[0]);
    let fx = Fixture::open("roi_align.safetensors");
    let expected = fx.f32(&format!("{}.output", first("roi_align"))).data;
    compare(&expected, &expected, FLOAT).unwrap();
    for i in 0..expected.len() {
        for sign in [-1.0f32, 1.0] {
            let mut moved = expected.clone();
            moved[i] += sign * 1.01 * (FLOAT.rtol * moved[i].abs() + FLOAT.atol) + sign * 1e-7;
            assert!(compare(&expected, &moved, FLOAT).is_err(), "element {i} moved by {sign}");
        }
    }
    let fx = Fixture::open("paste_masks.safetensors");
    let pasted = fx.f32(&format!("{}.pasted", first("paste_masks"))).data;
    let mut moved = pasted.clone();
    let last = moved.len() - 1;
    moved[last] += 1.01e-4;
    assert!(compare(&pasted, &moved, PASTED).is_err());

    let fx = Fixture::open("nms.safetensors");
    for case in cases("nms") {
        let keep = fx.i64(&format!("{}.keep", name(&case))).data;
        for i in 0..keep.len() {
            let mut moved = keep.clone();
            moved[i] += 1;
            assert!(compare_exact(&keep, &moved).is_err());
        }
        let mut shorter = keep.clone();
        if shorter.pop().is_some() {
            assert!(compare_exact(&keep, &shorter).is_err());
        }
    }
}
