//! The training loop (`mrc_runtime::train`) driven by a small step of its own: linear least
//! squares on noise-free data, gradients computed analytically, a batch-norm-like running mean
//! as a buffer and a sampler that drops one example per batch chosen by the step's seed (so
//! that a resumed run only matches if the seeds do).
//!
//! References: torch's SGD and LR-scheduler formulas evaluated by hand, the data's generating
//! weights (the optimum), uninterrupted runs (for resumed ones), and the runtime's own weights
//! reader.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use mrc_runtime::train::{
    read_checkpoint_config, train, Batches, BoxError, Evaluate, ModelSettings, ModelState, Progress, Sgd, StateTensor,
    Step, StepOutput, StopFlag, Summary, TensorKind, TensorLayout, TrainArgs, TrainConfig, TrainError, TrainOptions,
};
use mrc_runtime::weights::{Dtype, Tensor, Weights};

/// The weights and bias the data were generated with: the least-squares optimum.
const TRUE_WEIGHT: [f64; 3] = [1.5, -2.0, 0.5];
const TRUE_BIAS: f64 = 0.25;
const EXAMPLES: usize = 64;

fn example(i: usize) -> ([f64; 3], f64) {
    let t = i as f64;
    let x = [(0.37 * t + 0.1).sin(), (0.53 * t).cos(), ((i * 7) % 11) as f64 / 11.0 - 0.5];
    let y = TRUE_WEIGHT.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>() + TRUE_BIAS;
    (x, y)
}

fn tensor(name: &str, shape: &[usize], kind: TensorKind) -> StateTensor {
    StateTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: vec![0.0; shape.iter().product()],
        kind,
        trainable: kind == TensorKind::Parameter,
    }
}

/// The model at zero: a linear layer and a running mean of its inputs with a counter.
fn initial_state() -> ModelState {
    ModelState {
        tensors: vec![
            tensor("linear.weight", &[1, 3], TensorKind::Parameter),
            tensor("linear.bias", &[1], TensorKind::Parameter),
            tensor("norm.running_mean", &[3], TensorKind::Buffer),
            tensor("norm.num_batches_tracked", &[], TensorKind::Buffer),
        ],
    }
}

fn get<'a>(state: &'a ModelState, name: &str) -> &'a [f32] {
    &state.tensors.iter().find(|t| t.name == name).expect("tensor").data
}

/// Batch `i` is the next `size` examples, wrapping around.
struct InOrder {
    size: usize,
}

impl Batches for InOrder {
    type Batch = Vec<usize>;

    fn batch(&mut self, iteration: u64) -> Result<Vec<usize>, BoxError> {
        Ok((0..self.size).map(|k| (iteration as usize * self.size + k) % EXAMPLES).collect())
    }

    fn per_epoch(&self) -> u64 {
        (EXAMPLES / self.size) as u64
    }
}

/// Least squares with an anchor on the first weight (a second loss with the same optimum).
#[derive(Default)]
struct LeastSquares {
    calls: u64,
    /// Requests a stop during this call (0-based), as Ctrl-C would.
    stop_at: Option<(u64, StopFlag)>,
    /// Makes the fit loss NaN at this call.
    nan_at: Option<u64>,
    /// Runs at this call, to sabotage the run directory.
    sabotage_at: Option<(u64, PathBuf)>,
    /// Sleeps this long per call (for the SIGINT test).
    delay: Duration,
}

impl Step for LeastSquares {
    type Batch = Vec<usize>;

    fn run(&mut self, state: &mut ModelState, batch: &Vec<usize>, seed: u64) -> Result<StepOutput, BoxError> {
        let call = self.calls;
        self.calls += 1;
        std::thread::sleep(self.delay);
        if let Some((at, flag)) = &self.stop_at {
            if *at == call {
                flag.request();
            }
        }
        if let Some((at, path)) = &self.sabotage_at {
            if *at == call {
                std::fs::create_dir_all(path.join("occupied"))?;
            }
        }
        let w: Vec<f64> = get(state, "linear.weight").iter().map(|&v| v as f64).collect();
        let b = get(state, "linear.bias")[0] as f64;
        // The "sampler": one example of the batch left out, chosen by the seed.
        let dropped = (seed % batch.len() as u64) as usize;
        let kept: Vec<usize> = batch.iter().enumerate().filter(|(k, _)| *k != dropped).map(|(_, &i)| i).collect();
        let (mut fit, mut grad_w, mut grad_b, mut mean) = (0.0, [0.0; 3], 0.0, [0.0; 3]);
        for &i in &kept {
            let (x, y) = example(i);
            let r = w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>() + b - y;
            fit += 0.5 * r * r;
            for j in 0..3 {
                grad_w[j] += r * x[j];
                mean[j] += x[j];
            }
            grad_b += r;
        }
        let n = kept.len() as f64;
        let anchor = 0.05 * (w[0] - TRUE_WEIGHT[0]).powi(2);
        grad_w = grad_w.map(|g| g / n);
        grad_w[0] += 0.1 * (w[0] - TRUE_WEIGHT[0]);
        let fit = if self.nan_at == Some(call) { f64::NAN } else { fit / n };
        // The buffer: batch norm's running mean (momentum 0.1) and its counter.
        for t in &mut state.tensors {
            match t.name.as_str() {
                "norm.running_mean" => {
                    for (m, x) in t.data.iter_mut().zip(mean) {
                        *m = 0.9 * *m + 0.1 * (x / n) as f32;
                    }
                }
                "norm.num_batches_tracked" => t.data[0] += 1.0,
                _ => {}
            }
        }
        let all = [("linear.weight", grad_w.map(|g| g as f32).to_vec()), ("linear.bias", vec![(grad_b / n) as f32])];
        let gradients = state
            .trainable()
            .map(|t| all.iter().find(|(name, _)| *name == t.name).expect("a parameter").1.clone())
            .collect();
        Ok(StepOutput { losses: vec![("loss_fit".into(), fit), ("loss_anchor".into(), anchor)], gradients })
    }
}

/// Mean squared error of the current weights over all examples.
struct Mse;

fn mse(weight: &[f32], bias: f32) -> f64 {
    let total: f64 = (0..EXAMPLES)
        .map(|i| {
            let (x, y) = example(i);
            let r = weight.iter().zip(&x).map(|(&w, x)| w as f64 * x).sum::<f64>() + bias as f64 - y;
            r * r
        })
        .sum();
    total / EXAMPLES as f64
}

impl Evaluate for Mse {
    fn evaluate(&mut self, state: &ModelState) -> Result<Vec<(String, f64)>, BoxError> {
        Ok(vec![("mse".into(), mse(get(state, "linear.weight"), get(state, "linear.bias")[0]))])
    }
}

fn config(iterations: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        iterations,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-3,
        warmup_iters: 3,
        warmup_factor: 0.1,
        milestones: vec![6],
        gamma: 0.5,
        checkpoint_every: 0,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn options(resume: bool, stop: StopFlag, log: &mut dyn Write) -> TrainOptions<'_> {
    TrainOptions { resume, evaluator: None, stop, progress: Progress::Quiet, log }
}

fn run(
    step: &mut LeastSquares,
    state: &mut ModelState,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
) -> Result<Summary, TrainError> {
    let mut log = Vec::new();
    train(
        step,
        &mut InOrder { size: config.batch_size },
        state,
        config,
        dir,
        options(resume, StopFlag::new(), &mut log),
    )
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
}

fn losses(line: &serde_json::Value) -> Vec<f64> {
    ["loss_fit", "loss_anchor"].iter().map(|name| line["losses"][name].as_f64().expect("loss")).collect()
}

fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    assert!((got - want).abs() <= rel * want.abs() + 1e-12, "{what}: {got} vs {want}");
}

// --- the optimizer and the schedule -------------------------------------------------------

#[test]
fn sgd_matches_torch_formula_by_hand() {
    let mut state = ModelState {
        tensors: vec![tensor("p", &[2], TensorKind::Parameter), tensor("q", &[1], TensorKind::Parameter)],
    };
    state.tensors[0].data = vec![1.0, -2.0];
    state.tensors[1].data = vec![3.0];
    state.tensors[1].trainable = false;
    let mut sgd = Sgd::new(0.9, 0.01);
    let g = vec![vec![0.5, 0.25]];
    // d = g + 0.01·p = [0.51, 0.23]; buf = d; p = [1 − 0.051, −2 − 0.023].
    sgd.step(&mut state, &g, 0.1).unwrap();
    assert_slices(&state.tensors[0].data, &[0.949, -2.023]);
    // d = [0.5 + 0.00949, 0.25 − 0.02023]; buf = 0.9·[0.51, 0.23] + d = [0.96849, 0.43677].
    sgd.step(&mut state, &g, 0.1).unwrap();
    assert_slices(&state.tensors[0].data, &[0.852151, -2.066677]);
    let buffers: Vec<(&str, &[f32])> = sgd.buffers().collect();
    assert_eq!(buffers.len(), 1, "no buffer for the frozen parameter");
    assert_slices(buffers[0].1, &[0.96849, 0.43677]);
    assert_eq!(state.tensors[1].data, [3.0], "frozen parameter untouched");

    // Without momentum torch uses d directly: p = 1 − 0.1·(0.5 + 0.01).
    let mut plain = ModelState { tensors: vec![tensor("p", &[1], TensorKind::Parameter)] };
    plain.tensors[0].data = vec![1.0];
    Sgd::new(0.0, 0.01).step(&mut plain, &[vec![0.5]], 0.1).unwrap();
    assert_slices(&plain.tensors[0].data, &[0.949]);
    assert!(sgd.buffers().all(|(name, _)| name == "p"));
}

fn assert_slices(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "{got:?} vs {want:?}");
    }
}

#[test]
fn sgd_rejects_gradients_that_do_not_fit() {
    let mut state = initial_state();
    let err = Sgd::new(0.9, 0.0).step(&mut state, &[vec![0.0; 3]], 0.1).unwrap_err();
    assert!(err.to_string().contains("1 gradients for 2 trainable"), "{err}");
    let err = Sgd::new(0.9, 0.0).step(&mut state, &[vec![0.0; 2], vec![0.0]], 0.1).unwrap_err();
    assert!(err.to_string().contains("gradient of linear.weight has 2 values"), "{err}");
    assert_eq!(state, initial_state(), "nothing updated");
}

#[test]
fn schedule_is_the_shapes_recipe() {
    // shapes/README.md: 0.0002 at iteration 0 rising linearly to 0.02 at 100, ×0.1 at 1400 and
    // 1800 (LinearLR(0.01, 100) chained with MultiStepLR([1400, 1800], 0.1)).
    let schedule = TrainConfig::default().schedule();
    let cases = [
        (0, 0.0002),
        (1, 0.0002 + 0.000198),
        (50, 0.0101),
        (99, 0.0002 + 99.0 * 0.000198),
        (100, 0.02),
        (1399, 0.02),
        (1400, 0.002),
        (1799, 0.002),
        (1800, 0.0002),
        (1999, 0.0002),
    ];
    for (iteration, lr) in cases {
        assert_close(schedule.lr(iteration), lr, 1e-12, &format!("lr at {iteration}"));
    }
}

// --- the loop -----------------------------------------------------------------------------

#[test]
fn least_squares_trains_to_its_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        batch_size: 8,
        iterations: 600,
        lr: 0.1,
        weight_decay: 0.0,
        warmup_iters: 20,
        warmup_factor: 0.1,
        milestones: vec![400],
        ..config(0)
    };
    let mut state = initial_state();
    let summary = run(&mut LeastSquares::default(), &mut state, &config, &dir.path().join("run"), false).unwrap();
    assert_eq!(summary.iterations, 600);
    for (got, want) in get(&state, "linear.weight").iter().zip(TRUE_WEIGHT) {
        assert!((*got as f64 - want).abs() < 1e-4, "weight {got} vs {want}");
    }
    assert!((get(&state, "linear.bias")[0] as f64 - TRUE_BIAS).abs() < 1e-4);
    assert!(summary.losses[0].1 < 1e-8, "{:?}", summary.losses);
    assert_eq!(get(&state, "norm.num_batches_tracked"), [600.0], "the step's buffer kept across iterations");
}

#[test]
fn metrics_have_one_line_per_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = TrainConfig { eval_every: 3, ..config(7) };
    let mut state = initial_state();
    let mut log = Vec::new();
    let mut mse_eval = Mse;
    let opts = TrainOptions {
        resume: false,
        evaluator: Some(&mut mse_eval),
        stop: StopFlag::new(),
        progress: Progress::Lines,
        log: &mut log,
    };
    let summary =
        train(&mut LeastSquares::default(), &mut InOrder { size: 4 }, &mut state, &config, &run_dir, opts).unwrap();
    let lines = metrics(&run_dir);
    assert_eq!(lines.len(), 7);
    let schedule = config.schedule();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["iteration"], i as u64);
        assert_eq!(line["epoch"], i as u64 / 16);
        assert_close(line["lr"].as_f64().unwrap(), schedule.lr(i as u64), 1e-15, "lr");
        let l = losses(line);
        assert_close(line["loss"].as_f64().unwrap(), l[0] + l[1], 1e-15, "loss is the sum");
        assert!(line["seconds"].as_f64().unwrap() >= 0.0);
        // Evaluated after iterations 3, 6 and at the end.
        assert_eq!(line.get("eval").is_some(), [2, 5, 6].contains(&i), "eval on line {i}");
    }
    // The last evaluation is of the final weights.
    let final_mse = mse(get(&state, "linear.weight"), get(&state, "linear.bias")[0]);
    assert_close(lines[6]["eval"]["mse"].as_f64().unwrap(), final_mse, 1e-15, "final eval");
    assert_eq!(summary.evaluation, vec![("mse".to_string(), final_mse)]);
    assert!(lines[2]["eval"]["mse"].as_f64().unwrap() > final_mse, "training lowers the error");
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("iteration 7/7") && log.contains("fit "), "plain progress lines:\n{log}");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut uninterrupted = initial_state();
    run(&mut LeastSquares::default(), &mut uninterrupted, &config(10), &whole, false).unwrap();

    // 5 iterations, then the same settings with 10, resumed from the checkpoint in a fresh
    // process's state (zeros: everything must come from the checkpoint).
    let halves = dir.path().join("halves");
    run(&mut LeastSquares::default(), &mut initial_state(), &config(5), &halves, false).unwrap();
    assert_eq!(metrics(&halves).len(), 5);
    let mut resumed = initial_state();
    let summary = run(&mut LeastSquares::default(), &mut resumed, &config(10), &halves, true).unwrap();
    assert_eq!(summary.iterations, 10);

    let (a, b) = (metrics(&whole), metrics(&halves));
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 10);
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a["lr"], b["lr"], "lr of iteration {i}");
        for (x, y) in losses(b).iter().zip(losses(a)) {
            assert_close(*x, y, 1e-6, &format!("loss of iteration {i}"));
        }
    }
    assert_eq!(resumed, uninterrupted, "state after 5 + 5 iterations");
    // The losses after iteration 5 depend on the seeds: the comparison would catch a resumed
    // run that drew others.
    let reseeded = dir.path().join("reseeded");
    run(&mut LeastSquares::default(), &mut initial_state(), &TrainConfig { seed: 8, ..config(10) }, &reseeded, false)
        .unwrap();
    assert!(metrics(&reseeded)[5..].iter().zip(&a[5..]).any(|(x, y)| losses(x) != losses(y)));
}

#[test]
fn stop_flag_writes_a_checkpoint_that_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut uninterrupted = initial_state();
    run(&mut LeastSquares::default(), &mut uninterrupted, &config(9), &whole, false).unwrap();

    let stopped = dir.path().join("stopped");
    let stop = StopFlag::new();
    let mut step = LeastSquares { stop_at: Some((3, stop.clone())), ..LeastSquares::default() };
    let mut log = Vec::new();
    let summary = train(
        &mut step,
        &mut InOrder { size: 4 },
        &mut initial_state(),
        &config(9),
        &stopped,
        options(false, stop, &mut log),
    )
    .unwrap();
    assert!(summary.interrupted);
    assert_eq!(summary.iterations, 4, "the iteration in progress completes");
    assert_eq!(summary.weights, None);
    assert!(!stopped.join("weights.safetensors").exists());
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains(&format!("--resume {}", stopped.display())), "{log}");
    assert_eq!(read_checkpoint_config(&stopped).unwrap(), config(9));

    let mut resumed = initial_state();
    run(&mut LeastSquares::default(), &mut resumed, &config(9), &stopped, true).unwrap();
    assert_eq!(resumed, uninterrupted);
    let (a, b) = (metrics(&whole), metrics(&stopped));
    assert_eq!(b.len(), 9);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(losses(a), losses(b));
    }
}

#[test]
fn resume_drops_metrics_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = TrainConfig { checkpoint_every: 4, ..config(6) };
    run(&mut LeastSquares::default(), &mut initial_state(), &config, &run_dir, false).unwrap();
    // As if the process died after iteration 6 but the last checkpoint were of iteration 4:
    // restore that checkpoint, with a torn last metrics line.
    let early = dir.path().join("early");
    run(
        &mut LeastSquares::default(),
        &mut initial_state(),
        &TrainConfig { iterations: 4, ..config.clone() },
        &early,
        false,
    )
    .unwrap();
    std::fs::copy(early.join("checkpoint.safetensors"), run_dir.join("checkpoint.safetensors")).unwrap();
    let original = metrics(&run_dir);
    std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .unwrap()
        .write_all(b"{\"iterat")
        .unwrap();
    run(&mut LeastSquares::default(), &mut initial_state(), &config, &run_dir, true).unwrap();
    let after = metrics(&run_dir);
    assert_eq!(after.iter().map(|l| l["iteration"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(&after[..4], &original[..4], "lines before the checkpoint kept as they were");
    for (a, b) in after[4..].iter().zip(&original[4..]) {
        assert_eq!(losses(a), losses(b), "iterations after the checkpoint run again");
    }
}

#[test]
fn checkpoint_and_weights_hold_the_state_under_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = TrainConfig { checkpoint_every: 2, keep_checkpoints: true, ..config(5) };
    let mut state = initial_state();
    let summary = run(&mut LeastSquares::default(), &mut state, &config, &run_dir, false).unwrap();

    let weights = Weights::open(summary.weights.as_ref().unwrap()).unwrap();
    let names: Vec<&str> = weights.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["linear.bias", "linear.weight", "norm.num_batches_tracked", "norm.running_mean"]);
    for t in &state.tensors {
        let stored = weights.get(&t.name).unwrap();
        assert_eq!(stored.dtype(), Dtype::F32);
        assert_eq!(stored.shape(), t.shape);
        assert_eq!(stored.as_f32().unwrap(), t.data, "{}", t.name);
    }
    assert_eq!(weights.get("norm.num_batches_tracked").unwrap().as_f32().unwrap(), [5.0]);

    let checkpoint = Weights::open(run_dir.join("checkpoint.safetensors")).unwrap();
    let names: Vec<&str> = checkpoint.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "linear.bias",
            "linear.weight",
            "norm.num_batches_tracked",
            "norm.running_mean",
            "optimizer.momentum_buffer.linear.bias",
            "optimizer.momentum_buffer.linear.weight",
        ]
    );
    assert_eq!(checkpoint.get("optimizer.momentum_buffer.linear.weight").unwrap().shape(), [1, 3]);
    for kept in
        ["checkpoint-00000002.safetensors", "checkpoint-00000004.safetensors", "checkpoint-00000005.safetensors"]
    {
        assert!(run_dir.join(kept).exists(), "{kept}");
    }
    assert!(!run_dir.join("checkpoint-00000003.safetensors").exists());
    // The run's state round-trips through the weights reader into a model state.
    let layout: Vec<TensorLayout> = state
        .tensors
        .iter()
        .map(|t| TensorLayout { name: t.name.clone(), shape: t.shape.clone(), kind: t.kind })
        .collect();
    assert_eq!(ModelState::from_weights(&weights, &layout).unwrap(), state);
}

#[test]
fn failed_checkpoint_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = TrainConfig { checkpoint_every: 2, ..config(5) };
    // During iteration 1 a non-empty directory takes the checkpoint's name: renaming over it
    // fails (permissions would not stop root).
    let mut step =
        LeastSquares { sabotage_at: Some((1, run_dir.join("checkpoint.safetensors"))), ..LeastSquares::default() };
    let err = train(
        &mut step,
        &mut InOrder { size: 4 },
        &mut initial_state(),
        &config,
        &run_dir,
        options(false, StopFlag::new(), &mut Vec::new()),
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Write(_)), "{err:?}");
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
    let mut entries: Vec<String> =
        std::fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, ["checkpoint.safetensors", "metrics.jsonl"], "no temporary file left");
    assert_eq!(metrics(&run_dir).len(), 2);
}

#[test]
fn non_finite_loss_stops_naming_the_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = TrainConfig { checkpoint_every: 2, ..config(8) };
    let mut step = LeastSquares { nan_at: Some(3), ..LeastSquares::default() };
    let err = run(&mut step, &mut initial_state(), &config, &run_dir, false).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("iteration 3: non-finite loss loss_fit = NaN"), "{text}");
    assert!(text.contains("checkpoint of iteration 2"), "{text}");
    assert_eq!(metrics(&run_dir).len(), 3, "nothing of iteration 3 written");
    assert!(!run_dir.join("weights.safetensors").exists());
    assert_eq!(
        Weights::open(run_dir.join("checkpoint.safetensors"))
            .unwrap()
            .get("norm.num_batches_tracked")
            .unwrap()
            .as_f32()
            .unwrap(),
        [2.0]
    );
}

#[test]
fn existing_run_dir_is_an_error_unless_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(&mut LeastSquares::default(), &mut initial_state(), &config(2), dir.path(), false).unwrap_err();
    assert!(matches!(err, TrainError::RunDirExists { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("--resume {}", dir.path().display())), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    // Resuming a directory without a checkpoint names the missing file.
    let err = run(&mut LeastSquares::default(), &mut initial_state(), &config(2), dir.path(), true).unwrap_err();
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn frozen_parameters_stay_and_unknown_prefixes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig { frozen: vec!["linear.bias".into()], ..config(4) };
    let mut state = initial_state();
    run(&mut LeastSquares::default(), &mut state, &config, &dir.path().join("a"), false).unwrap();
    assert_eq!(get(&state, "linear.bias"), [0.0]);
    assert!(get(&state, "linear.weight").iter().all(|&w| w != 0.0));

    let config = TrainConfig { frozen: vec!["backbone.".into()], ..config.clone() };
    let err =
        run(&mut LeastSquares::default(), &mut initial_state(), &config, &dir.path().join("b"), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "training settings: `frozen`: `backbone.` is not the beginning of any parameter's name"
    );
}

#[test]
fn model_state_from_weights_checks_and_converts() {
    let layout = [
        TensorLayout { name: "conv.weight".into(), shape: vec![2], kind: TensorKind::Parameter },
        TensorLayout { name: "bn.num_batches_tracked".into(), shape: vec![], kind: TensorKind::Buffer },
        TensorLayout { name: "bn2.num_batches_tracked".into(), shape: vec![], kind: TensorKind::Buffer },
    ];
    let tensors = [
        ("conv.weight".to_string(), Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap()),
        ("bn.num_batches_tracked".to_string(), Tensor::from_le_bytes(Dtype::I64, vec![], &7i64.to_le_bytes()).unwrap()),
    ];
    let weights = Weights::from_tensors("init.safetensors", tensors.clone()).unwrap();
    let state = ModelState::from_weights(&weights, &layout).unwrap();
    let data: Vec<&[f32]> = state.tensors.iter().map(|t| t.data.as_slice()).collect();
    assert_eq!(data, [&[1.0, 2.0][..], &[7.0], &[0.0]]);
    assert_eq!(state.trainable().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["conv.weight"]);

    let wrong = [TensorLayout { name: "conv.weight".into(), shape: vec![3], kind: TensorKind::Parameter }];
    let err = ModelState::from_weights(&weights, &wrong).unwrap_err().to_string();
    assert!(
        err.starts_with("init.safetensors: the weights do not match") && err.contains("shape of conv.weight"),
        "{err}"
    );
}

// --- settings -----------------------------------------------------------------------------

fn yaml(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("override.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn yaml_overrides_only_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = yaml(
        dir.path(),
        "min_size: 320\ntrain:\n  lr: 0.01\n  milestones: [10, 20]\n  frozen: [backbone.body.conv1]\n",
    );
    let mut config = TrainConfig::default();
    config.override_from_yaml(&path, ModelSettings::AppliedByCompiler).unwrap();
    let want = TrainConfig {
        lr: 0.01,
        milestones: vec![10, 20],
        frozen: vec!["backbone.body.conv1".into()],
        ..TrainConfig::default()
    };
    assert_eq!(config, want);
}

#[test]
fn yaml_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("override.yaml").display().to_string();
    let error = |text: &str, settings| {
        let path = yaml(dir.path(), text);
        let mut config = TrainConfig::default();
        let err = config.override_from_yaml(&path, settings).unwrap_err().to_string();
        assert_eq!(config, TrainConfig::default(), "unchanged by a bad file");
        err
    };
    let fixed = ModelSettings::FixedAtCompileTime;
    let compiler = ModelSettings::AppliedByCompiler;

    let err = error("train:\n  lr: 0.1\n  learning_rate: 0.1\n", compiler);
    assert!(err.starts_with(&format!("{file}: train: unknown field `learning_rate`")), "{err}");
    assert!(err.contains("line 3 column 3"), "{err}");

    let err = error("train:\n  iterations: many\n", compiler);
    assert!(err.starts_with(&file) && err.contains("invalid type") && err.contains("line 2"), "{err}");

    assert_eq!(
        error("train:\n  lr: 0.1\n  momentum: -0.5\n", compiler),
        format!("{file}:3: `momentum`: -0.5 is not a number ≥ 0")
    );
    assert_eq!(
        error("train:\n  milestones: [20, 10]\n", compiler),
        format!("{file}:2: `milestones`: must increase (20 then 10)")
    );
    assert_eq!(error("train:\n  hflip: 2\n", compiler), format!("{file}:2: `hflip`: 2 is not a probability in [0, 1]"));
    assert_eq!(
        error("train:\n  lr: 0.1\nmin_size: 320\n", fixed),
        format!(
            "{file}:3: `min_size`: a model setting, fixed when this training program was compiled; only `train:` settings can be changed"
        )
    );
    let err = error("- lr\n", compiler);
    assert!(err.contains("expected a mapping"), "{err}");
    let err = error("train: [\n", compiler);
    assert!(err.starts_with(&file), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

fn parse(args: &[&str]) -> Result<TrainArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("train").chain(args.iter().copied())).map(|cli| cli.train)
}

#[test]
fn flags_override_yaml_which_overrides_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = yaml(dir.path(), "train:\n  iterations: 50\n  lr: 0.01\n  checkpoint_every: 7\n");
    let path = path.display().to_string();
    let args = parse(&[
        "--config",
        &path,
        "--iterations",
        "80",
        "-o",
        "run",
        "--data",
        "d.json",
        "--val",
        "v.json",
        "--keep-empty",
        "--threads",
        "2",
        "--eval-every",
        "10",
    ])
    .unwrap();
    assert_eq!(args.run_dir(), Some(Path::new("run")));
    let model = TrainConfig { momentum: 0.5, ..TrainConfig::default() };
    let config = args.resolve(model, ModelSettings::FixedAtCompileTime).unwrap();
    let want = TrainConfig {
        iterations: 80,
        lr: 0.01,
        momentum: 0.5,
        checkpoint_every: 7,
        eval_every: 10,
        threads: Some(2),
        keep_empty: true,
        data: Some("d.json".into()),
        val_data: Some("v.json".into()),
        ..TrainConfig::default()
    };
    assert_eq!(config, want);

    let err = parse(&["-o", "run", "--iterations", "0"])
        .unwrap()
        .resolve(TrainConfig::default(), ModelSettings::FixedAtCompileTime);
    assert_eq!(err.unwrap_err().to_string(), "the command line: `iterations`: must be at least 1");
    assert!(parse(&["--iterations", "3"]).is_err(), "a run directory is required");
    assert!(parse(&["-o", "a", "--resume", "b"]).is_err());
    assert!(parse(&["--resume", "b", "--weights", "w.safetensors"]).is_err());
    assert!(parse(&["-o", "a", "--threads", "0"]).is_err());
}

#[test]
fn resume_flags_start_from_the_checkpoint_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run(&mut LeastSquares::default(), &mut initial_state(), &config(3), &run_dir, false).unwrap();
    let resume = run_dir.display().to_string();
    let args = parse(&["--resume", &resume, "--iterations", "6"]).unwrap();
    assert_eq!(args.run_dir(), Some(run_dir.as_path()));
    let config = args.resolve(TrainConfig::default(), ModelSettings::FixedAtCompileTime).unwrap();
    assert_eq!(config, TrainConfig { iterations: 6, ..self::config(3) });
}

// --- Ctrl-C -------------------------------------------------------------------------------

const SIGINT_CHILD: &str = "MRC_TRAINER_SIGINT_RUN_DIR";
const SIGINT_CHILD_DELAY: &str = "MRC_TRAINER_SIGINT_DELAY_MS";

/// The child process of the SIGINT tests: trains slowly (the step sleeps), with the Ctrl-C
/// handler installed, until interrupted. Does nothing unless one of those tests started it.
#[test]
fn sigint_child() {
    let Some(run_dir) = std::env::var_os(SIGINT_CHILD) else { return };
    let delay = std::env::var(SIGINT_CHILD_DELAY).unwrap().parse().unwrap();
    let stop = StopFlag::on_ctrl_c().unwrap();
    let mut step = LeastSquares { delay: Duration::from_millis(delay), ..LeastSquares::default() };
    let mut stderr = std::io::stderr();
    let opts = TrainOptions { resume: false, evaluator: None, stop, progress: Progress::Quiet, log: &mut stderr };
    let summary =
        train(&mut step, &mut InOrder { size: 4 }, &mut initial_state(), &config(100_000), Path::new(&run_dir), opts)
            .unwrap();
    assert!(summary.interrupted);
}

/// Starts [`sigint_child`] on `run_dir` with steps of `delay_ms` and waits until it has done
/// `iterations`.
fn start_training_child(run_dir: &Path, delay_ms: u64, iterations: usize) -> std::process::Child {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigint_child", "--nocapture", "--test-threads", "1"])
        .env(SIGINT_CHILD, run_dir)
        .env(SIGINT_CHILD_DELAY, delay_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < iterations {
        assert!(Instant::now() < deadline, "the child did not start training");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn sigint(child: &std::process::Child) {
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
}

/// The child's exit status and stderr.
fn wait_for_exit(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the child did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn sigint_writes_a_checkpoint_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let child = start_training_child(&run_dir, 20, 3);
    sigint(&child);
    let (status, stderr) = wait_for_exit(child);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains(&format!("continue with `--resume {}`", run_dir.display())), "{stderr}");
    // The checkpoint is of the last iteration in the metrics, and resumes.
    let done = metrics(&run_dir).len() as u64;
    let checkpoint = Weights::open(run_dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(checkpoint.get("norm.num_batches_tracked").unwrap().as_f32().unwrap(), [done as f32]);
    let mut state = initial_state();
    let summary = run(&mut LeastSquares::default(), &mut state, &config(done + 2), &run_dir, true).unwrap();
    assert_eq!(summary.iterations, done + 2);
}

#[test]
fn second_sigint_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    // Steps of 3 s: both signals arrive during the second iteration.
    let child = start_training_child(&run_dir, 3000, 1);
    sigint(&child);
    std::thread::sleep(Duration::from_millis(100));
    sigint(&child);
    let (status, stderr) = wait_for_exit(child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted again: exiting without a checkpoint"), "{stderr}");
    assert!(!run_dir.join("checkpoint.safetensors").exists());
    assert_eq!(metrics(&run_dir).len(), 1);
}
