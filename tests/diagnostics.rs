//! Every diagnostic class: a bad model file (or YAML override) in `tests/diagnostics/`, its
//! rendered message pinned by a snapshot, and the command line exiting 1 without a panic.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn diagnostics_of_bad_models() {
    insta::glob!("diagnostics/*.model", |path| {
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        insta::assert_snapshot!(common::diagnostics(relative, None));
    });
}

#[test]
fn diagnostics_of_bad_config_overrides() {
    insta::glob!("diagnostics/*.yaml", |path| {
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        insta::assert_snapshot!(common::diagnostics(Path::new("models/mini.model"), Some(relative)));
    });
}

/// A diagnostic says where: `path:line:col`, the source line, and a caret under the span.
fn assert_located(stderr: &str, file: &str) {
    let origin = format!("--> {file}:");
    let at = stderr.find(&origin).unwrap_or_else(|| panic!("no `{origin}` in:\n{stderr}"));
    let position: String = stderr[at + origin.len()..].chars().take_while(|c| !c.is_whitespace()).collect();
    let parts: Vec<&str> = position.split(':').collect();
    assert!(parts.len() == 2 && parts.iter().all(|p| p.parse::<usize>().is_ok()), "line:col in {position:?}");
    assert!(stderr.contains('^'), "caret in:\n{stderr}");
}

#[test]
fn command_line_reports_every_class_and_exits_1() {
    let dir = Path::new("tests/diagnostics");
    let mut cases: Vec<(Vec<String>, String)> = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let shown = path.to_str().unwrap().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("model") => cases.push((vec!["check".into(), shown.clone()], shown)),
            Some("yaml") => cases.push((
                vec!["check".into(), "models/mini.model".into(), "--config".into(), shown.clone()],
                shown,
            )),
            _ => {}
        }
    }
    assert!(cases.len() >= 15, "the diagnostic classes are all present");
    for (args, file) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_mrc")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout on failure");
        assert_located(&stderr, &file);
    }
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_mrc")).args(["check", "models/no_such.model"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("cannot read models/no_such.model"), "{stderr}");
}

#[test]
fn check_prints_a_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_mrc")).args(["check", "models/mask_rcnn.model"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("parameters: 44,401,393"), "{stdout}");
    assert!(stdout.contains("input  image: u8[H, W, 3]"), "{stdout}");
}
