//! `mrc compile --target cpu`: the mini model compiled (by an `mrc` alone in a directory of its
//! own) to an executable with the fixture weights embedded detects on every fixture image what
//! torchvision does; the weights mrc trained (`models/mini.safetensors`, the demo's) find the
//! shapes of the val subset; the C4 model with `mrc init` weights detects what `mrc run` does;
//! every shipped model compiles; the intermediate stages are written; bad inputs give one clear
//! error.

mod common;

use common::detections::{assert_matches_torchvision, compare, detections_in, our_detections};
use common::programs::{compile_mini, fixture_images, mrc, run_program};
use mrc::run::Executor;
use mrc_runtime::weights::Weights;
use std::path::Path;
use std::time::Instant;

#[test]
fn compiled_mini_model_matches_torchvision_on_every_fixture_image() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let program = compile_mini(dir, "cpu");
    let images = fixture_images();
    let results = run_program(&program, &images, &["--overlay", dir.join("overlays").to_str().unwrap()]);
    assert_matches_torchvision(&results, &images);
    for path in &images {
        let name = path.file_stem().unwrap().to_str().unwrap();
        assert!(dir.join("overlays").join(format!("{name}.png")).exists(), "{name}: no overlay");
    }
}

/// `models/mini.safetensors`, trained by `mrc train` with the shapes recipe
/// (`examples/train_shapes.sh`), compiled and run on the val subset of `tests/fixtures/shapes`,
/// its results scored by `mrc eval`: box and mask AP at what they reached when committed.
#[test]
fn weights_mrc_trained_find_the_shapes_of_the_val_subset() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let shapes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shapes/val");
    let gt = shapes.join("annotations.json").to_str().unwrap().to_owned();
    let out = mrc(&["compile", "models/mini.model", "--weights", "models/mini.safetensors", "-o", &path("mini")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::process::Command::new(path("mini"))
        .arg(shapes.join("images"))
        .args(["--json", &path("results.json"), "--coco", &gt, "--threads", "2"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = mrc(&["eval", &path("results.json"), "--gt", &gt, "--json", &path("stats.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("stats.json")).unwrap()).unwrap();
    for (kind, bar) in [("bbox", TRAINED_BOX_AP), ("segm", TRAINED_MASK_AP)] {
        let ap = stats[kind]["summary"][0].as_f64().unwrap();
        eprintln!("{kind} AP {ap:.3} on the val subset");
        assert!(ap >= bar, "{kind} AP {ap:.3} of models/mini.safetensors on the val subset, below {bar}");
    }
}

/// The committed weights reach box AP 0.705 and mask AP 0.718 on the four val images; these
/// bars leave a margin and stay above torchvision's fixture model there (0.509 and 0.490), so
/// the test also fails if the file were replaced by those weights.
const TRAINED_BOX_AP: f64 = 0.65;
const TRAINED_MASK_AP: f64 = 0.65;

/// The C4 model at a size a test affords (res5 runs per RoI: 50 proposals instead of 1,000,
/// images of 256 to 320 pixels), with a score threshold that random weights pass now and then.
const C4_SMALL: &str =
    "min_size: 256\nmax_size: 320\nrpn_pre_nms_top_n: 300\nrpn_post_nms_top_n: 50\nbox_score_thresh: 0.02\n";

#[test]
fn c4_model_with_initialized_weights_compiles_and_detects_what_mrc_run_detects() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    std::fs::write(path("c4_small.yaml"), C4_SMALL).unwrap();
    let (config, weights, program) = (path("c4_small.yaml"), path("c4.safetensors"), path("c4"));
    let c4 = "models/mask_rcnn_c4.model";
    let out = mrc(&["init", c4, "--config", &config, "-o", &weights]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    let out = mrc(&["compile", c4, "--config", &config, "--weights", &weights, "-O1", "-o", &program]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("compiled in {:.1} s", start.elapsed().as_secs_f64());
    let images = fixture_images();
    let results = run_program(Path::new(&program), &images, &[]);

    let model = common::load(c4, Some(&config));
    let executor = Executor::new(&model.graph, Weights::open(&weights).unwrap(), &[], 1).unwrap();
    let (mut problems, mut count) = (vec![], 0);
    for (position, path) in images.iter().enumerate() {
        let (width, height) = image::image_dimensions(path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let program_detections = detections_in(&results, position as i64 + 1, height, width);
        let run_detections = our_detections(&executor.run(&[("image", &common::image(path))]).unwrap());
        eprintln!("{name}: {} detections (mrc run {})", program_detections.len(), run_detections.len());
        count += run_detections.len();
        problems.extend(compare(name, &run_detections, &program_detections));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(count >= 10, "{count} detections in all: too few to compare");
}

/// `mrc compile --emit obj` of R50-FPN, its ResNet-101 and ResNeXt-101 variants, C4 and mini.
#[test]
fn every_shipped_model_and_variant_compiles_to_an_object() {
    let scratch = common::scratch();
    let output = scratch.path().join("model.o");
    for (model, config) in [
        ("models/mask_rcnn.model", None),
        ("models/mask_rcnn.model", Some("models/resnet101.yaml")),
        ("models/mask_rcnn.model", Some("models/resnext101_32x8d.yaml")),
        ("models/mask_rcnn_c4.model", None),
        ("models/mini.model", None),
    ] {
        let mut args = vec!["compile", model, "--emit", "obj", "-O1", "-o", output.to_str().unwrap()];
        args.extend(config.iter().flat_map(|c| ["--config", c]));
        let start = Instant::now();
        let out = mrc(&args);
        assert!(out.status.success(), "{model} {config:?}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&output).unwrap();
        assert!(bytes.starts_with(b"\x7fELF"), "{model} {config:?}: not an object file");
        eprintln!(
            "{model} {config:?}: {:.1} MB object in {:.1} s",
            bytes.len() as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
    }
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
