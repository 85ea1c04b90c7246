//! The training commands from the command line: `mrc eval` against pycocotools' numbers,
//! `mrc data shapes` feeding `mrc train`'s data checks, bad input failing with one error and a
//! non-zero exit code before anything is written, and `mrc compile --train`'s programs (CPU,
//! and CUDA on the emulated device) training as `mrc train` does.

mod common;

use std::path::Path;

use common::{fixtures, metrics_losses};
use std::process::{Command, Output};


/// The scores of each evaluation of a training run (bbox_AP, segm_AP), from its `metrics.jsonl`.
fn metrics_scores(run_dir: &Path) -> Vec<Vec<f64>> {
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines = metrics.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap());
    lines.filter_map(|line| Some(line["eval"].as_object()?.values().map(|v| v.as_f64().unwrap()).collect())).collect()
}

fn mrc(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mrc")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

#[test]
fn eval_matches_pycocotools_on_every_number() {
    let dir = tempfile::tempdir().unwrap();
    let (coco, stats) = (fixtures().join("coco_eval"), dir.path().join("stats.json"));
    let output = mrc(&[
        "eval".as_ref(),
        coco.join("results.json").as_os_str(),
        "--gt".as_ref(),
        coco.join("gt.json").as_os_str(),
        "--json".as_ref(),
        stats.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"), "{text}");
    let read = |path: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() };
    let (ours, theirs) = (read(&stats), read(&coco.join("stats.json")));
    for iou_type in ["bbox", "segm"] {
        let (a, b) = (ours[iou_type]["summary"].as_array().unwrap(), theirs[iou_type]["summary"].as_array().unwrap());
        assert_eq!(a.len(), 12);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4, "{iou_type} summary {i}: {x} != {y}");
        }
    }
}

#[test]
fn generated_shapes_train_and_bad_data_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = dir.path().join("shapes");
    let output = mrc(&["data".as_ref(), "shapes".as_ref(), "--n".as_ref(), "3".as_ref(), "--seed".as_ref(), "5".as_ref(), "-o".as_ref(), shapes.as_os_str()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let annotations = shapes.join("annotations.json");
    let dataset: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&annotations).unwrap()).unwrap();
    assert_eq!(dataset["images"].as_array().unwrap().len(), 3);

    // A missing image is one error naming it; the run directory is not left half-made.
    std::fs::remove_file(shapes.join("images/00002.png")).unwrap();
    let run = dir.path().join("run");
    let output = mrc(&[
        "train".as_ref(),
        "models/mini.model".as_ref(),
        "--data".as_ref(),
        annotations.as_os_str(),
        "--iterations".as_ref(),
        "1".as_ref(),
        "-o".as_ref(),
        run.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("00002.png"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A data file that is not JSON.
    std::fs::write(&annotations, "{ not json").unwrap();
    let output = mrc(&["train".as_ref(), "models/mini.model".as_ref(), "--data".as_ref(), annotations.as_os_str(), "-o".as_ref(), run.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("annotations.json") && stderr.contains("line 1"), "{stderr}");
    assert!(!run.join("checkpoint.safetensors").exists());
}

/// `mrc compile --train` writes a standalone training program: `mrc train`'s loop and flags
/// without the model, the same losses as `mrc train` from the same weights, for the CPU and for
/// CUDA (on the emulated device), and the same `--val` scores (the program carries the
/// inference network).
#[test]
fn compiled_training_programs_train_as_mrc_train() {
    let dir = tempfile::tempdir().unwrap();
    let (program, cuda_program) = (dir.path().join("mini_train"), dir.path().join("mini_train_cuda"));
    std::thread::scope(|scope| {
        for (target, output) in [("cpu", &program), ("cuda", &cuda_program)] {
            scope.spawn(move || {
                let compiled = mrc(&["compile".as_ref(), "models/mini.model".as_ref(), "--train".as_ref(), "--target".as_ref(), target.as_ref(), "-o".as_ref(), output.as_os_str()]);
                assert!(compiled.status.success(), "{target}: {}", String::from_utf8_lossy(&compiled.stderr));
            });
        }
    });

    // The shapes subset is the project's own (not in torchvision's fixture layout).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shapes/train/annotations.json");
    let (compiled_run, cuda_run, jit_run) = (dir.path().join("compiled"), dir.path().join("cuda"), dir.path().join("jit"));
    let val = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shapes/val/annotations.json");
    // The fixture's trained weights, so that the evaluation finds objects.
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model/weights.safetensors");
    let flags = |run: &Path| -> Vec<std::ffi::OsString> {
        let mut flags: Vec<std::ffi::OsString> = vec!["--data".into(), data.clone().into(), "--val".into(), val.clone().into()];
        flags.extend(["--weights".into(), weights.clone().into(), "--iterations".into(), "2".into(), "--eval-every".into(), "1".into()]);
        flags.extend(["--threads".into(), "2".into(), "-o".into(), run.into()]);
        flags
    };
    let output = Command::new(&program).args(flags(&compiled_run)).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = Command::new(&cuda_program).args(flags(&cuda_run)).args(["--device", "emulator"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut arguments: Vec<std::ffi::OsString> = vec!["train".into(), "models/mini.model".into()];
    arguments.extend(flags(&jit_run));
    let output = Command::new(env!("CARGO_BIN_EXE_mrc")).args(&arguments).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let jit = metrics_losses(&jit_run);
    // The CPU program is `mrc train`'s code: the same losses. The CUDA step computes its
    // convolutions as im2col products where the CPU's use window products: rounding differs,
    // which may flip a near-tie among the proposals the samplers choose from (a few parts in
    // 10,000 of a loss; `tests/train_step_on_device.rs` replays the choices and holds the step
    // to 1e-4).
    for (name, run, tolerance) in [("CPU program", &compiled_run, 1e-6), ("CUDA program on the emulated device", &cuda_run, 1e-2)] {
        let compiled = metrics_losses(run);
        assert_eq!(compiled.len(), 2, "{name}");
        for (iteration, (a, b)) in compiled.iter().zip(&jit).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= tolerance * y.abs(), "{name}, iteration {iteration}: {a:?} against mrc train's {b:?}");
            }
        }
    }
    assert!(compiled_run.join("weights.safetensors").exists());
    // Every program evaluates on the CPU, each state as `mrc train` does: the same scores, which
    // see the trained model's objects.
    let jit_scores = metrics_scores(&jit_run);
    assert_eq!(jit_scores.len(), 2, "one evaluation per iteration");
    assert!(jit_scores.iter().all(|scores| scores.len() == 2 && scores.iter().all(|&ap| ap > 0.3)), "{jit_scores:?}");
    assert_eq!(metrics_scores(&compiled_run), jit_scores, "the CPU program's evaluations");
    for (a, b) in metrics_scores(&cuda_run).iter().flatten().zip(jit_scores.iter().flatten()) {
        assert!((a - b).abs() <= 0.02, "the CUDA program's evaluations: {a} against mrc train's {b}");
    }
    // The run directory is required, as for `mrc train`.
    let output = Command::new(&program).args(["--data", "train.json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    // Without an NVIDIA driver (as here, unless the machine has a GPU) the CUDA program says so
    // in one line and exits 3; with one, it would train on the GPU.
    let output = Command::new(&cuda_program).args(flags(&dir.path().join("gpu"))).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        assert!(stderr.contains("--device emulator") && stderr.trim().lines().count() == 1, "{stderr}");
    } else {
        eprintln!("an NVIDIA driver is present: the CUDA training program ran on the GPU ({:?})", output.status);
    }
}
