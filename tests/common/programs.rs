//! Compiled programs in tests: the compiler, the fixture images, running a program.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `mrc` with `args`.
pub fn mrc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mrc")).args(args).output().unwrap()
}

/// The images of the fixture model, in `model.json`'s order.
pub fn fixture_images() -> Vec<PathBuf> {
    let fixtures = super::fixtures().join("model");
    let description: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("model.json")).unwrap()).unwrap();
    let images: Vec<PathBuf> =
        description["images"].as_array().unwrap().iter().map(|e| fixtures.join(e["image"].as_str().unwrap())).collect();
    assert!(!images.is_empty());
    images
}

/// Runs a compiled program on `images` with `--json` (and `extra` arguments); its COCO results.
pub fn run_program(program: &Path, images: &[PathBuf], extra: &[&str]) -> Vec<serde_json::Value> {
    let results_path = program.with_extension("json");
    let run = Command::new(program)
        .args(images)
        .args(["--json", results_path.to_str().unwrap(), "--threads", "2"])
        .args(extra)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap()
}

/// The compiler copied alone into `dir`: `mrc` carries the runtime library it links with.
pub fn lone_mrc(dir: &Path) -> PathBuf {
    let lone = dir.join("bin").join("mrc");
    std::fs::create_dir_all(lone.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_mrc"), &lone).unwrap();
    lone
}

/// Compiles the mini model for `target` with the fixture weights embedded, by an `mrc` alone
/// in `dir`; the program's path.
pub fn compile_mini(dir: &Path, target: &str) -> PathBuf {
    let weights = super::fixtures().join("model/weights.safetensors");
    let model = std::fs::canonicalize("models/mini.model").unwrap();
    let out = Command::new(lone_mrc(dir))
        .args(["compile", model.to_str().unwrap(), "--target", target, "--weights", weights.to_str().unwrap(), "-o", "mini"])
        .current_dir(dir)
        .env_remove("MRC_RUNTIME_LIB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("mini")
}
