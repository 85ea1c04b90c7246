//! The fixture README's match criteria for detections, shared by the tests that compare a
//! model's detections with torchvision's or with another run's (`mrc run` and compiled
//! programs), and the detections read from a forward function's outputs or a COCO results file.

use mrc::run::HostTensor;
use mrc_runtime::coco::mask::Rle;
use mrc_runtime::weights::Weights;

/// One detection: box, score, label, and the mask thresholded at 0.5 (row-major bits).
pub struct Detection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub label: i64,
    pub mask: Vec<bool>,
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

fn masks_agree(a: &[bool], b: &[bool]) -> bool {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    differing <= 2 || inter as f64 >= 0.98 * union as f64
}

pub fn reference_detections(reference: &Weights, image: &str, pixels: usize) -> Vec<Detection> {
    let f = |name: &str| reference.get(&format!("{image}.{name}")).unwrap_or_else(|| panic!("{image}.{name}"));
    let boxes = f("boxes").as_f32().unwrap().to_vec();
    let scores = f("scores").as_f32().unwrap().to_vec();
    let labels: Vec<i64> = f("labels").bytes().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let bits = f("masks_bits");
    let row = bits.shape()[1];
    (0..scores.len())
        .map(|i| Detection {
            bbox: boxes[4 * i..4 * i + 4].try_into().unwrap(),
            score: scores[i],
            label: labels[i],
            mask: (0..pixels).map(|p| bits.bytes()[i * row + p / 8] & (0x80 >> (p % 8)) != 0).collect(),
        })
        .collect()
}

/// The detections among the outputs of a forward function (`boxes`, `scores`, `labels`, `masks`),
/// masks thresholded at 0.5.
pub fn our_detections(outputs: &[(String, HostTensor)]) -> Vec<Detection> {
    let get = |name: &str| &outputs.iter().find(|(n, _)| n == name).unwrap().1;
    let boxes = get("boxes").f32().unwrap();
    let scores = get("scores").f32().unwrap();
    let labels = get("labels").i64().unwrap();
    let masks = get("masks");
    let pixels = masks.shape()[2] * masks.shape()[3];
    let masks = masks.f32().unwrap();
    (0..scores.len())
        .map(|i| Detection {
            bbox: boxes[4 * i..4 * i + 4].try_into().unwrap(),
            score: scores[i],
            label: labels[i],
            mask: masks[i * pixels..(i + 1) * pixels].iter().map(|&p| p > 0.5).collect(),
        })
        .collect()
}

/// The detections of image `id` in a COCO results file.
pub fn detections_in(results: &[serde_json::Value], id: i64, height: u32, width: u32) -> Vec<Detection> {
    results
        .iter()
        .filter(|r| r["image_id"] == id)
        .map(|r| {
            let b: Vec<f32> = r["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let counts = r["segmentation"]["counts"].as_str().unwrap();
            Detection {
                bbox: [b[0], b[1], b[0] + b[2], b[1] + b[3]],
                score: r["score"].as_f64().unwrap() as f32,
                label: r["category_id"].as_i64().unwrap(),
                mask: Rle::from_coco_string(height, width, counts).unwrap().decode(),
            }
        })
        .collect()
}

/// The fixture README's criteria: one-to-one counterparts (label, box IoU ≥ 0.99, score within
/// 1e-3, mask IoU ≥ 0.98 or at most 2 pixels apart), except near the score threshold or the
/// 100th score. Returns the problems found.
pub fn compare(image: &str, theirs: &[Detection], ours: &[Detection]) -> Vec<String> {
    let near_cutoff = |score: f32, all: &[Detection]| {
        (score - 0.05).abs() <= 1e-3 || (all.len() == 100 && (score - all[99].score).abs() <= 1e-3)
    };
    let mut used = vec![false; ours.len()];
    let mut problems = vec![];
    for (t, reference) in theirs.iter().enumerate() {
        let found = ours.iter().enumerate().position(|(o, d)| {
            !used[o]
                && d.label == reference.label
                && (d.score - reference.score).abs() <= 1e-3
                && iou(&d.bbox, &reference.bbox) >= 0.99
                && masks_agree(&d.mask, &reference.mask)
        });
        match found {
            Some(o) => used[o] = true,
            None if near_cutoff(reference.score, theirs) => {}
            None => problems.push(format!(
                "{image}: torchvision detection {t} (label {}, score {:.4}, box {:?}) has no counterpart",
                reference.label, reference.score, reference.bbox
            )),
        }
    }
    for (o, d) in ours.iter().enumerate() {
        if !used[o] && !near_cutoff(d.score, ours) {
            problems.push(format!("{image}: detection {o} (label {}, score {:.4}) is not torchvision's", d.label, d.score));
        }
    }
    problems
}


/// Asserts that COCO `results` of the fixture `images` (in order, ids from 1) meet the match
/// criteria against torchvision's outputs on every image.
pub fn assert_matches_torchvision(results: &[serde_json::Value], images: &[std::path::PathBuf]) {
    let reference = Weights::open(super::fixtures().join("model/outputs.safetensors")).unwrap();
    let mut problems = vec![];
    for (position, path) in images.iter().enumerate() {
        let (width, height) = ::image::image_dimensions(path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let ours = detections_in(results, position as i64 + 1, height, width);
        let theirs = reference_detections(&reference, name, (width * height) as usize);
        eprintln!("{name}: {} detections (torchvision {})", ours.len(), theirs.len());
        problems.extend(compare(name, &theirs, &ours));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
