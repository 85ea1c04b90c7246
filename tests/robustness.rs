//! Mutated copies of the shipped models never crash `mrc check`: each mutant either passes or
//! exits 1 with located diagnostics, within a time limit; never a panic, a signal or a hang.
//!
//! The mutants are the same on every run (a fixed seed; `MRC_MUTATION_SEED` tries others). They
//! mimic what goes wrong in model files: numbers replaced by 0, -1, sizes beyond 32 or 64 bits,
//! floats beyond f32 or fractions; tokens deleted, repeated or replaced; lines swapped or removed.

use std::fmt::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shipped models and how many mutants of each to check.
const MODELS: &[(&str, usize)] = &[("mask_rcnn.model", 150), ("mini.model", 75), ("mask_rcnn_c4.model", 75)];

const SEED: u64 = 0x6d72_632d_6d75_7461;

/// Far beyond what a mutant needs in a debug build (under 3 s at the expansion limits).
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Numbers that break assumptions: zero and negatives, sizes beyond 32 and 64 bits, floats beyond
/// f32 or below its precision, fractions where ints go, counts near the evaluator's limits.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "0.0",
    "0.5",
    "-0.5",
    "1.5",
    "1e40",
    "1e-40",
    "65536",
    "99999",
    "2147483648",
    "9223372036854775807",
    "99999999999999999999",
];

/// SplitMix64: small, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Token {
    Number,
    Other,
}

/// The tokens of a model text as byte ranges: numbers, words, strings and single punctuation
/// characters; comments are skipped.
fn tokens(text: &str) -> Vec<(Range<usize>, Token)> {
    let bytes = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    let run = |mut j: usize, part: fn(u8) -> bool| {
        while j < bytes.len() && part(bytes[j]) {
            j += 1;
        }
        j
    };
    while i < bytes.len() {
        let c = bytes[i];
        let (end, kind) = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if text[i..].starts_with("//") {
            i = run(i, |b| b != b'\n');
            continue;
        } else if c.is_ascii_digit() {
            (run(i, |b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'), Token::Number)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            (run(i, |b| b.is_ascii_alphanumeric() || b == b'_'), Token::Other)
        } else if c == b'"' {
            (run(i + 1, |b| b != b'"') + 1, Token::Other)
        } else {
            (i + text[i..].chars().next().map_or(1, char::len_utf8), Token::Other)
        };
        let end = end.min(bytes.len());
        out.push((i..end, kind));
        i = end;
    }
    out
}

/// Applies one random mutation to `text`; returns the mutant and what changed.
fn mutate(text: &str, rng: &mut Rng) -> (String, String) {
    let tokens = tokens(text);
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let splice = |range: Range<usize>, with: &str| format!("{}{with}{}", &text[..range.start], &text[range.end..]);
    match rng.below(20) {
        0..=7 => {
            let numbers: Vec<&Range<usize>> = tokens.iter().filter(|t| t.1 == Token::Number).map(|t| &t.0).collect();
            let at = (*rng.pick(&numbers)).clone();
            let new = *rng.pick(NUMBERS);
            let change = format!("line {}: number `{}` -> `{new}`", line_of(at.start), &text[at.clone()]);
            (splice(at, new), change)
        }
        8..=10 => {
            let at = rng.pick(&tokens).0.clone();
            (splice(at.clone(), ""), format!("line {}: deleted `{}`", line_of(at.start), &text[at]))
        }
        11..=12 => {
            let at = rng.pick(&tokens).0.clone();
            let token = &text[at.clone()];
            (splice(at.end..at.end, &format!(" {token}")), format!("line {}: repeated `{token}`", line_of(at.start)))
        }
        13..=15 => {
            let at = rng.pick(&tokens).0.clone();
            let other = &text[rng.pick(&tokens).0.clone()];
            let change = format!("line {}: `{}` -> `{other}`", line_of(at.start), &text[at.clone()]);
            (splice(at, other), change)
        }
        16..=17 => {
            let mut lines: Vec<&str> = text.lines().collect();
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(a, b);
            (lines.join("\n") + "\n", format!("lines {} and {} swapped", a + 1, b + 1))
        }
        _ => {
            let mut lines: Vec<&str> = text.lines().collect();
            let a = rng.below(lines.len());
            lines.remove(a);
            (lines.join("\n") + "\n", format!("line {} removed", a + 1))
        }
    }
}

struct Mutant {
    path: PathBuf,
    text: String,
    changes: Vec<String>,
}

/// What went wrong with a mutant, if anything, and how long `mrc check` took.
fn check(mrc: &Path, mutant: &Mutant) -> (Option<String>, Duration) {
    let (stdout_path, stderr_path) = (mutant.path.with_extension("stdout"), mutant.path.with_extension("stderr"));
    // Output to files, not pipes: a child blocked on a full pipe would look like a hang.
    let mut child = Command::new(mrc)
        .arg("check")
        .arg(&mutant.path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            return (Some(format!("still running after {TIME_LIMIT:?}")), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let fine = match status.code() {
        Some(0) => stdout.contains("is well-formed"),
        Some(1) => stderr.contains("error") && stderr.contains("-->"),
        _ => false,
    };
    if fine && !stderr.contains("panicked") {
        return (None, elapsed);
    }
    let tail: String = stderr.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
    (Some(format!("{status}, stderr:\n{tail}")), elapsed)
}

#[test]
fn mutated_models_give_diagnostics_not_crashes() {
    let seed = std::env::var("MRC_MUTATION_SEED").map_or(SEED, |s| s.parse().expect("MRC_MUTATION_SEED is a number"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut rng = Rng(seed);
    let mut mutants = vec![];
    for &(model, count) in MODELS {
        let original = std::fs::read_to_string(shipped.join(model)).unwrap();
        // Mutants import the unchanged models beside them.
        std::fs::write(dir.join(model), &original).unwrap();
        for i in 0..count {
            let (mut text, mut changes) = (original.clone(), vec![]);
            for _ in 0..1 + rng.below(2) {
                let (mutated, change) = mutate(&text, &mut rng);
                text = mutated;
                changes.push(change);
            }
            let path = dir.join(format!("{}-{i:03}.model", model.trim_end_matches(".model")));
            std::fs::write(&path, &text).unwrap();
            mutants.push(Mutant { path, text, changes });
        }
    }

    let mrc = Path::new(env!("CARGO_BIN_EXE_mrc"));
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(vec![]);
    let slowest = Mutex::new((Duration::ZERO, Path::new("")));
    let start = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(mutant) = mutants.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (problem, elapsed) = check(mrc, mutant);
                    if let Some(problem) = problem {
                        failures.lock().unwrap().push((mutant, problem));
                    }
                    let mut slowest = slowest.lock().unwrap();
                    if elapsed > slowest.0 {
                        *slowest = (elapsed, &mutant.path);
                    }
                }
            });
        }
    });
    let (longest, slowest) = slowest.into_inner().unwrap();
    println!(
        "{} mutants (seed {seed}) checked in {:.1?}; slowest {longest:.1?}: {}",
        mutants.len(),
        start.elapsed(),
        slowest.display()
    );

    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(m, _)| &m.path);
    let mut report = String::new();
    for (mutant, problem) in &failures {
        let _ = writeln!(report, "==== {} ({}): {problem}", mutant.path.display(), mutant.changes.join("; "));
        let _ = writeln!(report, "---- mutated file:\n{}", mutant.text);
    }
    assert!(failures.is_empty(), "{} of {} mutants crashed or hung:\n{report}", failures.len(), mutants.len());
    // Kept on failure, to reproduce with.
    std::fs::remove_dir_all(&dir).unwrap();
}
