//! `mrc import`: converting checkpoints to safetensors with current names, and failing cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mrc_runtime::weights::Weights;

fn checkpoint(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints").join(name)
}

/// An empty directory of this test's own, removed when dropped.
struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    fn new(test: &str) -> Self {
        ScratchDir(tempfile::Builder::new().prefix(&format!("mrc-weights-cli-{test}-")).tempdir().unwrap())
    }

    fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.path().join(name)
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn import(input: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mrc")).arg("import").arg(input).arg("-o").arg(output).output().unwrap()
}

fn assert_same(got: &Weights, want: &Weights) {
    assert_eq!(got.len(), want.len());
    for ((name, a), (want_name, b)) in got.iter().zip(want.iter()) {
        assert_eq!(name, want_name);
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        assert!(a.bytes() == b.bytes(), "{name}: values differ");
    }
}

#[test]
fn import_writes_current_names_and_round_trips() {
    let scratch = ScratchDir::new("round-trip");
    let reference = Weights::open(checkpoint("mini_legacy.pth")).unwrap();
    for input in ["mini_old_names_legacy.pth", "mini_zip.pth", "mini_legacy.pth"] {
        let out = scratch.join(format!("{input}.safetensors"));
        let result = import(&checkpoint(input), &out);
        assert!(result.status.success(), "{input}: {}", String::from_utf8_lossy(&result.stderr));
        assert!(String::from_utf8_lossy(&result.stdout).contains("tensors"));
        let imported = Weights::open(&out).unwrap();
        assert!(imported.get("rpn.head.conv.0.0.weight").is_some() && imported.get("rpn.head.conv.weight").is_none());
        assert_same(&imported, &reference);

        // Importing the safetensors output again changes nothing.
        let again = scratch.join(format!("{input}.again.safetensors"));
        assert!(import(&out, &again).status.success());
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap(), "{input}");
    }
}

#[test]
fn failed_import_leaves_no_output() {
    let scratch = ScratchDir::new("corrupt");
    let bytes = std::fs::read(checkpoint("mini_legacy.pth")).unwrap();
    let input = scratch.join("cut.pth");
    std::fs::write(&input, &bytes[..bytes.len() / 2]).unwrap();

    let out = scratch.join("out.safetensors");
    let result = import(&input, &out);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("cut.pth") && stderr.contains("truncated"), "{stderr}");
    assert_eq!(scratch.files(), ["cut.pth"]);

    // An existing output stays as it was.
    std::fs::write(&out, b"previous").unwrap();
    assert_eq!(import(&input, &out).status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(scratch.files(), ["cut.pth", "out.safetensors"]);
}

#[test]
fn import_of_a_missing_file_names_it() {
    let scratch = ScratchDir::new("missing");
    let input = scratch.join("no_such_checkpoint.pth");
    let result = import(&input, &scratch.join("out.safetensors"));
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("no_such_checkpoint.pth"), "{stderr}");
    assert!(scratch.files().is_empty());
}
