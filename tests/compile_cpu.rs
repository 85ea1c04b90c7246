//! `mrc compile --target cpu`: the mini model compiled (by an `mrc` alone in a directory of its
//! own) to an executable with the fixture weights embedded detects on every fixture image what
//! torchvision does; the intermediate stages are
//! written; bad inputs give one clear error.

mod common;

use common::detections::{compare, reference_detections, Detection};
use mrc_runtime::program::rle::Rle;
use mrc_runtime::weights::Weights;
use std::path::{Path, PathBuf};
use std::process::Command;

fn mrc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mrc")).args(args).output().unwrap()
}

/// The detections of image `id` in a COCO results file.
fn detections_in(results: &[serde_json::Value], id: i64, height: u32, width: u32) -> Vec<Detection> {
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

/// The compiler copied alone into `dir`: `mrc` carries the runtime library it links with.
fn lone_mrc(dir: &Path) -> PathBuf {
    let lone = dir.join("bin").join("mrc");
    std::fs::create_dir_all(lone.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_mrc"), &lone).unwrap();
    lone
}

#[test]
fn compiled_mini_model_matches_torchvision_on_every_fixture_image() {
    let fixtures = common::fixtures().join("model");
    let scratch = common::scratch();
    let dir = scratch.path();
    let program = dir.join("mini");
    let weights = fixtures.join("weights.safetensors");
    let model = std::fs::canonicalize("models/mini.model").unwrap();
    let out = Command::new(lone_mrc(dir))
        .args(["compile", model.to_str().unwrap(), "--target", "cpu", "--weights", weights.to_str().unwrap(), "-o", "mini"])
        .current_dir(dir)
        .env_remove("MRC_RUNTIME_LIB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let description: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("model.json")).unwrap()).unwrap();
    let images: Vec<PathBuf> = description["images"].as_array().unwrap().iter().map(|e| fixtures.join(e["image"].as_str().unwrap())).collect();
    assert!(!images.is_empty());
    let results_path = dir.join("results.json");
    let run = Command::new(&program)
        .args(&images)
        .args(["--json", results_path.to_str().unwrap(), "--overlay", dir.join("overlays").to_str().unwrap(), "--threads", "2"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap();

    let reference = Weights::open(fixtures.join("outputs.safetensors")).unwrap();
    let mut problems = vec![];
    for (position, path) in images.iter().enumerate() {
        let (width, height) = image::image_dimensions(path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let ours = detections_in(&results, position as i64 + 1, height, width);
        let theirs = reference_detections(&reference, name, (width * height) as usize);
        eprintln!("{name}: {} detections (torchvision {})", ours.len(), theirs.len());
        problems.extend(compare(name, &theirs, &ours));
        assert!(dir.join("overlays").join(format!("{name}.png")).exists(), "{name}: no overlay");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn intermediate_stages_are_written() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let model = "tests/lowering/fpn_top_down.model";
    for (emit, marker) in [("mlir", "func.func @forward"), ("llvm", "define "), ("obj", "\u{7f}ELF")] {
        let output = dir.join(format!("out.{emit}"));
        let out = mrc(&["compile", model, "--emit", emit, "-o", output.to_str().unwrap()]);
        assert!(out.status.success(), "{emit}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&output).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(marker), "--emit {emit} wrote no `{marker}`");
    }
}

#[test]
fn mismatched_weights_are_refused_before_compiling() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let output = dir.join("program");
    // The mini model's weights do not fit R50-FPN: one error lists the problems, nothing is written.
    let weights = common::fixtures().join("model/weights.safetensors");
    let out = mrc(&["compile", "models/mask_rcnn.model", "--weights", weights.to_str().unwrap(), "-o", output.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("weights.safetensors"), "{stderr}");
    assert!(!output.exists());
    assert!(!Path::new(&output).with_extension("tmp").exists());
}
