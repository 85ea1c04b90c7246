//! `mrc compile --target cuda`: the mini model compiled for CUDA and run on the emulated device
//! detects on every fixture image what torchvision does; every kernel of every shipped model
//! (and of the mini model's training step) assembles with `ptxas` for sm_80 and sm_90; without
//! an NVIDIA driver the program says so in one line and exits 3.

mod common;

use common::detections::assert_matches_torchvision;
use common::programs::{compile_mini, fixture_images, mrc, run_program};
use std::path::PathBuf;
use std::process::Command;

/// `ptxas` from `$MRC_PTXAS`, else where `examples/lib/deps.sh` installs it.
fn ptxas() -> PathBuf {
    if let Some(path) = std::env::var_os("MRC_PTXAS") {
        return PathBuf::from(path);
    }
    let venv = std::env::var_os("MRC_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/mrc/venv"));
    let found = std::fs::read_dir(venv.join("lib")).ok().into_iter().flatten().flatten().map(|python| {
        python.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas")
    });
    found.into_iter().find(|path| path.exists()).unwrap_or_else(|| {
        panic!("no ptxas: run tests/run.sh, or `. examples/lib/deps.sh && mrc_install_ptxas` (or set MRC_PTXAS)")
    })
}

#[test]
fn compiled_mini_model_on_the_emulated_device_matches_torchvision_on_every_fixture_image() {
    let scratch = common::scratch();
    let dir = scratch.path();
    let program = compile_mini(dir, "cuda");
    let images = fixture_images();
    let timings = dir.join("timings.json");
    let results = run_program(&program, &images, &["--device", "emulator", "--timings", timings.to_str().unwrap()]);
    assert_matches_torchvision(&results, &images);
    let timings = std::fs::read_to_string(&timings).unwrap();
    assert!(timings.contains("launches"), "no device figures in the timings: {timings}");
}

#[test]
fn without_a_driver_the_cuda_program_exits_3_with_one_line() {
    let scratch = common::scratch();
    let program = compile_mini(scratch.path(), "cuda");
    let image = &fixture_images()[0];
    let run = Command::new(&program).arg(image).output().unwrap();
    if run.status.success() {
        eprintln!("skipped: this machine has an NVIDIA driver and GPU, so the program ran");
        return;
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("libcuda.so.1") && stderr.contains("--device emulator"), "{stderr}");
}

/// The training step's kernels (`mrc compile --train --target cuda --emit ptx`) assemble with
/// `ptxas` for sm_80 and sm_90.
#[test]
fn every_kernel_of_the_training_step_assembles_with_ptxas() {
    let ptxas = ptxas();
    let scratch = common::scratch();
    let ptx = scratch.path().join("step.ptx");
    let out = mrc(&["compile", "models/mini.model", "--train", "--target", "cuda", "--emit", "ptx", "-o", ptx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&ptx).unwrap();
    let kernels = text.matches(".entry ").count();
    assert!(kernels > 100, "{kernels} kernels");
    for architecture in ["sm_80", "sm_90"] {
        let assembled = Command::new(&ptxas).args([&format!("-arch={architecture}"), ptx.to_str().unwrap(), "-o", "/dev/null"]).output().unwrap();
        assert!(assembled.status.success(), "{architecture}: {}", String::from_utf8_lossy(&assembled.stderr));
    }
    eprintln!("the training step: {kernels} kernels assemble for sm_80 and sm_90");
}

/// `--emit ptx` of every shipped model and variant for sm_80 (the default, which `ptxas`
/// also assembles for sm_90) and for sm_90: every kernel assembles.
#[test]
fn every_kernel_of_every_shipped_model_assembles_with_ptxas() {
    let ptxas = ptxas();
    let scratch = common::scratch();
    for (model, config) in [
        ("models/mask_rcnn.model", None),
        ("models/mask_rcnn.model", Some("models/resnet101.yaml")),
        ("models/mask_rcnn.model", Some("models/resnext101_32x8d.yaml")),
        ("models/mask_rcnn_c4.model", None),
        ("models/mini.model", None),
    ] {
        for (target, architectures) in [("cuda", &["sm_80", "sm_90"][..]), ("cuda:sm_90", &["sm_90"][..])] {
            let ptx = scratch.path().join("kernels.ptx");
            let mut args = vec!["compile", model, "--target", target, "--emit", "ptx", "-o", ptx.to_str().unwrap()];
            args.extend(config.iter().flat_map(|c| ["--config", c]));
            let out = mrc(&args);
            assert!(out.status.success(), "{model} {config:?} {target}: {}", String::from_utf8_lossy(&out.stderr));
            let text = std::fs::read_to_string(&ptx).unwrap();
            let kernels = text.matches(".entry ").count();
            assert!(kernels > 10, "{model} {config:?}: {kernels} kernels");
            for architecture in architectures {
                let assembled = Command::new(&ptxas).args([&format!("-arch={architecture}"), ptx.to_str().unwrap(), "-o", "/dev/null"]).output().unwrap();
                assert!(
                    assembled.status.success(),
                    "{model} {config:?} {target} for {architecture}: {}",
                    String::from_utf8_lossy(&assembled.stderr)
                );
            }
            eprintln!("{model} {config:?} {target}: {kernels} kernels assemble for {architectures:?}");
        }
    }
}

#[test]
fn intermediate_stages_are_written() {
    let scratch = common::scratch();
    let model = "tests/lowering/fpn_top_down.model";
    for (emit, marker) in [
        ("mlir", "func.func @forward"),
        ("llvm", "@mgpuLaunchKernel"),
        ("obj", "\u{7f}ELF"),
        ("ptx", ".visible .entry forward"),
    ] {
        let output = scratch.path().join(format!("out.{emit}"));
        let out = mrc(&["compile", model, "--target", "cuda", "--emit", emit, "-o", output.to_str().unwrap()]);
        assert!(out.status.success(), "{emit}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&output).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(marker), "--emit {emit} wrote no `{marker}`");
    }
    let output = scratch.path().join("cpu.ptx");
    let out = mrc(&["compile", model, "--target", "cpu", "--emit", "ptx", "-o", output.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("only the CUDA target has PTX"));
    assert!(!output.exists());
}

#[test]
fn unknown_gpu_architectures_are_usage_errors() {
    let out = mrc(&["compile", "models/mini.model", "--target", "cuda:sm_70", "--emit", "ptx", "-o", "unused.ptx"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown GPU architecture `sm_70`") && stderr.contains("sm_80, sm_86, sm_89, sm_90"), "{stderr}");
}

/// No detection survives a score threshold of 1: every kernel after the box head runs over
/// empty tensors (empty grids are not launched) and the program writes an empty result.
#[test]
fn zero_detections_on_the_emulated_device_are_a_normal_result() {
    let scratch = common::scratch();
    let config = common::write("no_detections.yaml", "box_score_thresh: 1.0\n");
    let weights = common::fixtures().join("model/weights.safetensors");
    let program = scratch.path().join("mini_none");
    let out = mrc(&[
        "compile", "models/mini.model", "--config", config.to_str().unwrap(), "--target", "cuda",
        "--weights", weights.to_str().unwrap(), "-o", program.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = run_program(&program, &fixture_images()[..1], &["--device", "emulator"]);
    assert!(results.is_empty(), "{results:?}");
}
