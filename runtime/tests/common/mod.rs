//! Fixture loading and tolerance checks shared by the golden tests.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The fixtures root: `$MRC_FIXTURES` (a directory with torchvision's layout, holding `ops/`),
/// else the project's copy in `<workspace>/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("MRC_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

/// The cases of one operator in `ops/cases.json`.
pub fn cases(op: &str) -> Vec<Value> {
    let path = fixtures_dir().join("ops/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list = json["cases"][op].as_array().unwrap_or_else(|| panic!("cases.json has no list for {op}"));
    eprintln!("{op}: {} cases from {}", list.len(), path.display());
    list.clone()
}

pub fn name(case: &Value) -> String {
    case["name"].as_str().expect("case without a name").to_string()
}

pub fn usize_list(v: &Value) -> Vec<usize> {
    v.as_array().expect("expected a list").iter().map(|x| x.as_u64().expect("expected an integer") as usize).collect()
}

pub fn f32_list(v: &Value) -> Vec<f32> {
    v.as_array().expect("expected a list").iter().map(|x| x.as_f64().expect("expected a number") as f32).collect()
}

pub fn pair(v: &Value) -> [usize; 2] {
    let l = usize_list(v);
    assert_eq!(l.len(), 2, "expected a pair, got {v}");
    [l[0], l[1]]
}

/// A tensor read from a fixture file, with its shape.
#[derive(Clone, Debug)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// All tensors of one `ops/<file>.safetensors`.
pub struct Fixture {
    file: String,
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Fixture {
    pub fn open(file: &str) -> Fixture {
        let path = fixtures_dir().join("ops").join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
            .collect();
        Fixture { file: file.to_string(), tensors }
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (&[usize], &[u8]) {
        let (d, shape, data) = self.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name}", self.file));
        assert_eq!(*d, dtype, "{}: {name} is {d:?}, expected {dtype:?}", self.file);
        (shape, data)
    }

    pub fn f32(&self, name: &str) -> Tensor<f32> {
        let (shape, data) = self.raw(name, Dtype::F32);
        let data = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        Tensor { shape: shape.to_vec(), data }
    }

    pub fn i64(&self, name: &str) -> Tensor<i64> {
        let (shape, data) = self.raw(name, Dtype::I64);
        let data = data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        Tensor { shape: shape.to_vec(), data }
    }

    pub fn u8(&self, name: &str) -> Tensor<u8> {
        let (shape, data) = self.raw(name, Dtype::U8);
        Tensor { shape: shape.to_vec(), data: data.to_vec() }
    }
}

/// Rows of 4 (boxes) from a `[K, 4]` tensor.
pub fn boxes(t: &Tensor<f32>) -> Vec<[f32; 4]> {
    assert_eq!(t.shape.len(), 2, "boxes of shape {:?}", t.shape);
    assert_eq!(t.shape[1], 4, "boxes of shape {:?}", t.shape);
    t.data.chunks_exact(4).map(|c| c.try_into().unwrap()).collect()
}

/// The tolerance of the fixtures' README: |a − b| ≤ rtol·|b| + atol.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f32,
    pub atol: f32,
}

pub const FLOAT: Tol = Tol { rtol: 1e-5, atol: 1e-6 };
pub const PASTED: Tol = Tol { rtol: 0.0, atol: 1e-4 };

/// Compares every element; describes the mismatches (up to a few) if any.
pub fn compare(actual: &[f32], expected: &[f32], tol: Tol) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{} values, expected {}", actual.len(), expected.len()));
    }
    let bad: Vec<usize> = (0..actual.len())
        .filter(|&i| {
            let (a, b) = (actual[i], expected[i]);
            let err = (a - b).abs();
            err.is_nan() || err > tol.rtol * b.abs() + tol.atol
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> =
        bad.iter().take(5).map(|&i| format!("[{i}] {} vs {}", actual[i], expected[i])).collect();
    Err(format!("{} of {} values differ: {}", bad.len(), actual.len(), shown.join(", ")))
}

/// Compares integers exactly.
pub fn compare_exact<T: PartialEq + std::fmt::Debug>(actual: &[T], expected: &[T]) -> Result<(), String> {
    if actual == expected {
        return Ok(());
    }
    if actual.len() != expected.len() {
        return Err(format!("{} values, expected {}: {actual:?} vs {expected:?}", actual.len(), expected.len()));
    }
    let i = (0..actual.len()).find(|&i| actual[i] != expected[i]).unwrap();
    Err(format!("first difference at [{i}]: {:?} vs {:?}", actual[i], expected[i]))
}

/// Checks `actual` against a golden tensor, and that the check has teeth: moving any one of a
/// few golden values (first, last, middle) just beyond the tolerance must make it fail.
pub fn check_golden(what: &str, actual: &[f32], expected: &[f32], tol: Tol, failures: &mut Vec<String>) {
    if let Err(e) = compare(actual, expected, tol) {
        failures.push(format!("{what}: {e}"));
        return;
    }
    if expected.is_empty() {
        return;
    }
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs() / (tol.rtol * b.abs() + tol.atol))
        .fold(0.0f32, f32::max);
    eprintln!("{what}: {} values, largest error {worst:.3} of the tolerance", expected.len());
    for i in [0, expected.len() / 2, expected.len() - 1] {
        let mut moved = expected.to_vec();
        let away = if actual[i] >= expected[i] { -1.5 } else { 1.5 };
        moved[i] += away * (tol.rtol * moved[i].abs() + tol.atol);
        assert!(compare(actual, &moved, tol).is_err(), "{what}: moving element {i} went unnoticed");
    }
}

/// Collected per-case failures, reported together so that one run shows them all.
pub fn report(op: &str, failures: Vec<String>) {
    assert!(failures.is_empty(), "{op}: {} failures:\n{}", failures.len(), failures.join("\n"));
}
