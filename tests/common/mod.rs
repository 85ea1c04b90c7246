//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod builtins;
pub mod detections;
pub mod mini;
pub mod programs;
pub mod train_replay;

use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use mrc::run::HostTensor;
use std::path::{Path, PathBuf};

/// The fixture directory: `$MRC_FIXTURES` (torchvision's layout), else the project's copy.
pub fn fixtures() -> PathBuf {
    std::env::var_os("MRC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub fn load(file: &str, config: Option<&str>) -> Model {
    let mut sources = SourceMap::default();
    match expand::load(&mut sources, Path::new(file), config.map(Path::new)) {
        Ok(model) => model,
        Err(d) => panic!("{file} does not expand:\n{}", d.render(&sources)),
    }
}

/// The rendered diagnostics of a model that must fail.
pub fn diagnostics(file: &Path, config: Option<&Path>) -> String {
    let mut sources = SourceMap::default();
    match expand::load(&mut sources, file, config) {
        Ok(_) => panic!("{} expanded without errors", file.display()),
        Err(d) => d.render(&sources),
    }
}

/// An image file as the `u8[H, W, 3]` input of a network.
pub fn image(path: &Path) -> HostTensor {
    let rgb = ::image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let (w, h) = rgb.dimensions();
    HostTensor::U8 { shape: vec![h as usize, w as usize, 3], data: rgb.into_raw() }
}

/// A new private directory, removed with everything in it when dropped (programs, dumps).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("mrc-tests-").tempdir().unwrap()
}

/// Writes a model (or YAML) text the test made to this test binary's directory under cargo's
/// `target/tmp`, where it stays readable for the rest of the test (diagnostics name the file).
pub fn write(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Expands a model text the test wrote; the error is the rendered diagnostics.
pub fn expand(name: &str, text: &str) -> Result<Model, String> {
    let path = write(name, text);
    let mut sources = SourceMap::default();
    expand::load(&mut sources, &path, None).map_err(|d| d.render(&sources))
}

/// The losses of each iteration of a training run, from its `metrics.jsonl`.
pub fn metrics_losses(run_dir: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["losses"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect()
        })
        .collect()
}
