//! Weights: every file format against the safetensors reference, renames, validation, damaged
//! files, writing and embedding.
//!
//! The model's weights and parameter list come from `$MRC_FIXTURES` (default: the project's
//! `tests/fixtures`). The torch checkpoints in `tests/fixtures/checkpoints` were made by its
//! `make_checkpoints.py` from the project's copy of the mini weights, so they are always compared
//! with that copy.

use std::path::{Path, PathBuf};

use mrc_runtime::weights::{current_name, Dtype, Problem, Tensor, TensorSpec, Weights, WeightsError};

fn project_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn fixtures() -> PathBuf {
    std::env::var_os("MRC_FIXTURES").map(PathBuf::from).unwrap_or_else(project_fixtures)
}

fn checkpoint(name: &str) -> PathBuf {
    project_fixtures().join("checkpoints").join(name)
}

fn open(path: &Path) -> Weights {
    Weights::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The mini model's state as `params/mini.txt` lists it: `name [d0, d1, ...]` per line.
fn mini_specs() -> Vec<TensorSpec> {
    let path = fixtures().join("params/mini.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (name, shape) = line.split_once(' ').expect("name [shape]");
            let shape = shape.trim_matches(|c| c == '[' || c == ']');
            let shape = shape.split(", ").filter(|d| !d.is_empty()).map(|d| d.parse().expect("dimension")).collect();
            let dtype = if name.ends_with("num_batches_tracked") { Dtype::I64 } else { Dtype::F32 };
            TensorSpec { name: name.to_string(), shape, dtype }
        })
        .collect()
}

fn assert_same_tensor(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert!(got.bytes() == want.bytes(), "{name}: values differ");
}

/// Every tensor of `got` equals the tensor of the same name in `reference`.
fn assert_subset_of(got: &Weights, reference: &Weights) {
    for (name, tensor) in got.iter() {
        let want = reference.get(name).unwrap_or_else(|| panic!("{name} is not in {}", reference.origin()));
        assert_same_tensor(name, tensor, want);
    }
}

#[test]
fn safetensors_reference_loads_in_place_and_matches_the_model() {
    let weights = open(&fixtures().join("model/weights.safetensors"));
    let specs = mini_specs();
    assert_eq!(weights.len(), specs.len());
    weights.validate(&specs).unwrap_or_else(|e| panic!("{e}"));
    for (name, tensor) in weights.iter() {
        assert!(tensor.is_borrowed(), "{name} was copied out of the memory map");
    }
    let counter = weights.get("backbone.body.bn1.num_batches_tracked").expect("BatchNorm counter");
    assert_eq!(counter.dtype(), Dtype::I64);
}

#[test]
fn torch_checkpoints_equal_the_safetensors_reference() {
    let reference = open(&project_fixtures().join("model/weights.safetensors"));
    let zip = open(&checkpoint("mini_zip.pth"));
    let legacy = open(&checkpoint("mini_legacy.pth"));
    // The checkpoints hold a subset: every small tensor plus three renamed convolutions.
    assert!(zip.len() > 100 && zip.len() < reference.len(), "{} tensors", zip.len());
    assert_subset_of(&zip, &reference);
    assert_subset_of(&legacy, &reference);
    let names = |w: &Weights| w.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&zip), names(&legacy));
    let zip_weight = zip.get("rpn.head.conv.0.0.weight").expect("a large convolution");
    assert_eq!(zip_weight.shape(), [64, 64, 3, 3]);
    assert!(zip_weight.is_borrowed(), "stored zip records are read in place");
}

#[test]
fn pre_0_13_names_are_renamed_on_load() {
    let old = open(&checkpoint("mini_old_names_legacy.pth"));
    let current = open(&checkpoint("mini_legacy.pth"));
    assert_eq!(old.len(), current.len());
    for (name, tensor) in current.iter() {
        let renamed = old.get(name).unwrap_or_else(|| panic!("{name} missing after renaming"));
        assert_same_tensor(name, renamed, tensor);
    }
    for name in ["rpn.head.conv.weight", "backbone.fpn.inner_blocks.0.weight", "roi_heads.mask_head.mask_fcn1.weight"] {
        assert!(old.get(name).is_none(), "{name} kept its old name");
        assert!(old.get(&current_name(name).unwrap()).is_some(), "{name} not renamed");
    }
}

#[test]
fn strided_offset_shared_and_converted_tensors_load_as_their_values() {
    let expected = open(&checkpoint("strided_expected.safetensors"));
    for file in ["strided_zip.pth", "strided_legacy.pth"] {
        let got = open(&checkpoint(file));
        assert_eq!(got.len(), expected.len(), "{file}");
        assert_subset_of(&got, &expected);
    }
    let got = open(&checkpoint("strided_zip.pth"));
    assert_eq!(got.get("transposed").unwrap().shape(), [64, 64]);
    assert_eq!(got.get("scalar").unwrap().as_f32(), Some(&[3.5f32][..]));
    assert_eq!(got.get("empty").unwrap().shape(), [0, 4]);
    assert_eq!(got.get("counter").unwrap().bytes(), 17i64.to_le_bytes());
}

#[test]
fn training_checkpoint_wrapping_a_state_dict() {
    let weights = open(&checkpoint("wrapped_state_dict_zip.pth"));
    let expected = open(&checkpoint("strided_expected.safetensors"));
    let names: Vec<&str> = weights.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["counter", "shared_slice", "transposed"]);
    assert_subset_of(&weights, &expected);
}

#[test]
fn validation_reports_every_problem_at_once() {
    let weights = open(&fixtures().join("model/weights.safetensors"));
    let mut specs = mini_specs();
    // Unexpected: the model no longer has this tensor.
    let dropped = specs.iter().position(|s| s.name == "roi_heads.box_predictor.bbox_pred.bias").unwrap();
    specs.remove(dropped);
    // Missing: the model has a tensor the file lacks.
    specs.push(TensorSpec {
        name: "roi_heads.keypoint_head.0.weight".into(),
        shape: vec![8, 64, 3, 3],
        dtype: Dtype::F32,
    });
    // Wrong shape and wrong dtype.
    let shaped = specs.iter_mut().find(|s| s.name == "rpn.head.conv.0.0.weight").unwrap();
    shaped.shape = vec![64, 32, 3, 3];
    let typed = specs.iter_mut().find(|s| s.name == "backbone.body.bn1.running_mean").unwrap();
    typed.dtype = Dtype::I64;

    let error = weights.validate(&specs).expect_err("four problems");
    let WeightsError::Mismatch { problems, .. } = &error else { panic!("not a mismatch: {error}") };
    assert_eq!(problems.len(), 4, "{error}");
    assert!(problems.contains(&Problem::Missing {
        name: "roi_heads.keypoint_head.0.weight".into(),
        shape: vec![8, 64, 3, 3],
        dtype: Dtype::F32
    }));
    assert!(problems
        .iter()
        .any(|p| matches!(p, Problem::Unexpected { name, .. } if name == "roi_heads.box_predictor.bbox_pred.bias")));
    assert!(problems.contains(&Problem::Shape {
        name: "rpn.head.conv.0.0.weight".into(),
        expected: vec![64, 32, 3, 3],
        found: vec![64, 64, 3, 3]
    }));
    assert!(problems.contains(&Problem::Dtype {
        name: "backbone.body.bn1.running_mean".into(),
        expected: Dtype::I64,
        found: Dtype::F32
    }));
    let message = error.to_string();
    assert!(message.starts_with(&weights.origin().to_string()), "{message}");
    for needle in [
        "missing roi_heads.keypoint_head.0.weight",
        "unexpected roi_heads.box_predictor.bbox_pred.bias",
        "[64, 32, 3, 3]",
        "[64, 64, 3, 3]",
        "expects i64, the file has f32",
    ] {
        assert!(message.contains(needle), "{needle:?} not in:\n{message}");
    }
}

#[test]
fn num_batches_tracked_is_ignored_on_both_sides() {
    let weights = open(&fixtures().join("model/weights.safetensors"));
    let mut specs: Vec<TensorSpec> =
        mini_specs().into_iter().filter(|s| !s.name.ends_with("num_batches_tracked")).collect();
    weights.validate(&specs).unwrap_or_else(|e| panic!("counters in the file only: {e}"));
    specs.push(TensorSpec { name: "backbone.body.extra.num_batches_tracked".into(), shape: vec![], dtype: Dtype::I64 });
    weights.validate(&specs).unwrap_or_else(|e| panic!("counter in the model only: {e}"));
}

/// Copies of `file` cut at several lengths, inside `dir`.
fn truncated_copies(file: &Path, dir: &Path) -> Vec<PathBuf> {
    let bytes = std::fs::read(file).unwrap();
    let len = bytes.len();
    let mut cuts = vec![0, 1, 7, 8, 9, 15, 16, 64, 200, 1000, len / 3, len / 2, len - 200, len - 30, len - 1];
    cuts.retain(|&c| c < len);
    cuts.dedup();
    cuts.iter()
        .map(|&cut| {
            let path = dir.join(format!("{}.cut{cut}", file.file_name().unwrap().to_string_lossy()));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            path
        })
        .collect()
}

#[test]
fn truncated_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        fixtures().join("model/weights.safetensors"),
        checkpoint("mini_zip.pth"),
        checkpoint("mini_legacy.pth"),
        checkpoint("mini_old_names_legacy.pth"),
        checkpoint("strided_legacy.pth"),
    ];
    for file in &files {
        for cut in truncated_copies(file, dir.path()) {
            let message = match Weights::open(&cut) {
                Ok(w) => panic!("{} loaded {} tensors", cut.display(), w.len()),
                Err(e) => e.to_string(),
            };
            assert!(message.starts_with(&cut.display().to_string()), "{message}");
        }
    }
}

#[test]
fn truncation_messages_say_which_bytes_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cut_by = |name: &Path, n: usize| {
        let bytes = std::fs::read(name).unwrap();
        let path = dir.path().join(name.file_name().unwrap());
        std::fs::write(&path, &bytes[..bytes.len() - n]).unwrap();
        Weights::open(&path).expect_err("truncated").to_string()
    };
    let safetensors = cut_by(&fixtures().join("model/weights.safetensors"), 100);
    assert!(safetensors.contains("truncated: tensor") && safetensors.contains("needs bytes"), "{safetensors}");
    let legacy = cut_by(&checkpoint("mini_legacy.pth"), 100);
    assert!(legacy.contains("truncated: storage") && legacy.contains("needs bytes"), "{legacy}");
    let zip = cut_by(&checkpoint("mini_zip.pth"), 100);
    assert!(zip.contains("zip archive"), "{zip}");
    let magic_only = dir.path().join("magic.pth");
    std::fs::write(&magic_only, &std::fs::read(checkpoint("strided_legacy.pth")).unwrap()[..5]).unwrap();
    let magic = Weights::open(&magic_only).unwrap_err().to_string();
    assert!(magic.contains("truncated: a torch checkpoint cut off after 5 bytes"), "{magic}");
}

#[test]
fn corrupt_pickles_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(checkpoint("strided_legacy.pth")).unwrap();
    let mut errors = 0;
    // The magic number, the header pickles and the object pickle lie in the first 2 KB.
    for position in (0..2000).step_by(7) {
        let mut bytes = original.clone();
        bytes[position] ^= 0xa5;
        let path = dir.path().join("corrupt.pth");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = Weights::open(&path) {
            assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 100, "only {errors} corruptions detected");
}

#[test]
fn unrecognized_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not weights at all").unwrap();
    let message = Weights::open(&text).unwrap_err().to_string();
    assert!(message.contains("not a safetensors file or a torch checkpoint"), "{message}");
    let missing = dir.path().join("absent.pth");
    let message = Weights::open(&missing).unwrap_err().to_string();
    assert!(message.starts_with(&missing.display().to_string()), "{message}");
}

#[test]
fn old_and_new_name_of_one_tensor_collide() {
    let tensor = || Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap();
    let error = Weights::from_tensors(
        "test",
        [("rpn.head.conv.0.0.bias".to_string(), tensor()), ("rpn.head.conv.bias".to_string(), tensor())],
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("rpn.head.conv.0.0.bias") && error.contains("rpn.head.conv.bias"), "{error}");
}

#[test]
fn tensors_reject_data_of_the_wrong_length() {
    assert!(Tensor::from_f32(vec![2, 3], &[0.0; 5]).is_none());
    assert!(Tensor::from_le_bytes(Dtype::I64, vec![1], &[0; 4]).is_none());
    let t = Tensor::from_le_bytes(Dtype::I64, vec![1], &5i64.to_le_bytes()).unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[1usize][..]));
    assert!(t.as_f32().is_none());
}

#[test]
fn embedded_safetensors_bytes_round_trip_without_copies() {
    let weights = open(&checkpoint("mini_old_names_legacy.pth"));
    let bytes: &'static [u8] = Box::leak(weights.to_safetensors_bytes().unwrap().into_boxed_slice());
    let embedded = Weights::from_static_safetensors(bytes).unwrap();
    assert_eq!(embedded.origin(), "embedded weights");
    assert_eq!(embedded.len(), weights.len());
    assert_subset_of(&embedded, &weights);
    if (bytes.as_ptr() as usize).is_multiple_of(8) {
        for (name, tensor) in embedded.iter() {
            assert!(tensor.is_borrowed(), "{name} was copied from aligned embedded bytes");
        }
    }
    let error = Weights::from_static_safetensors(b"PK\x03\x04 not safetensors").unwrap_err().to_string();
    assert!(error.starts_with("embedded weights"), "{error}");
}

#[test]
fn writing_safetensors_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let weights = open(&checkpoint("strided_zip.pth"));
    let out = dir.path().join("out.safetensors");
    weights.write_safetensors(&out).unwrap();
    let back = open(&out);
    assert_eq!(back.len(), weights.len());
    assert_subset_of(&back, &weights);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["out.safetensors"]);

    let unwritable = dir.path().join("no such dir/out.safetensors");
    let message = weights.write_safetensors(&unwritable).unwrap_err().to_string();
    assert!(message.contains("no such dir/out.safetensors"), "{message}");
    assert!(!unwritable.exists());
}
