//! The loop: batches through the step, SGD on the schedule, metrics, checkpoints, evaluation,
//! Ctrl-C, and the final weights.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::checkpoint::{self, Progress as RunProgress, METRICS_FILE};
use super::config::TrainConfig;
use super::error::{io_error, Result, TrainError};
use super::optim::Sgd;
use super::progress::{Console, Progress};
use super::state::ModelState;
use super::{Batches, Evaluate, Step};

/// Asks a run to stop between iterations, with a checkpoint; shared with whoever asks (the
/// Ctrl-C handler, a test).
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Asks the run to stop after the iteration in progress.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A flag that Ctrl-C (SIGINT) raises; a second Ctrl-C exits the process at
    /// once (exit code 130) without a checkpoint. Once per process: the handler cannot be
    /// replaced.
    pub fn on_ctrl_c() -> Result<StopFlag> {
        let flag = StopFlag::new();
        let raised = flag.clone();
        ctrlc::set_handler(move || {
            if raised.0.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping after this iteration, with a checkpoint (Ctrl-C again to exit now)");
        })
        .map_err(|e| TrainError::CtrlC(e.to_string()))?;
        Ok(flag)
    }
}

/// How a run is carried out, beyond its settings.
pub struct TrainOptions<'a> {
    /// Continue the run directory's checkpoint instead of starting a new directory.
    pub resume: bool,
    /// Evaluated every `eval_every` iterations and at the end.
    pub evaluator: Option<&'a mut dyn Evaluate>,
    pub stop: StopFlag,
    pub progress: Progress,
    /// Where progress lines and messages go (stderr for the commands).
    pub log: &'a mut dyn Write,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Iterations done, this process's and earlier ones'.
    pub iterations: u64,
    /// Whether it stopped early on request (Ctrl-C), with a checkpoint to resume from.
    pub interrupted: bool,
    /// The losses of the last iteration run.
    pub losses: Vec<(String, f64)>,
    /// The last evaluation's results.
    pub evaluation: Vec<(String, f64)>,
    /// Iterations run by this process (fewer than `iterations` when resumed).
    pub ran: u64,
    /// Seconds spent in this process's iterations (evaluation and checkpoints excluded).
    pub seconds: f64,
    /// The final weights; `None` when interrupted.
    pub weights: Option<PathBuf>,
}

/// Named values serialized as a JSON object in their order.
struct Named<'a>(&'a [(String, f64)]);

impl Serialize for Named<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsLine<'a> {
    iteration: u64,
    epoch: u64,
    lr: f64,
    losses: Named<'a>,
    /// The sum of the losses: what is minimized.
    loss: f64,
    /// The iteration's wall time: batch, step and update.
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval: Option<Named<'a>>,
}

/// Trains `state` for `config.iterations` iterations (from the checkpoint in `run_dir` when
/// `options.resume`) and writes `run_dir`'s `metrics.jsonl`, checkpoints and final weights.
///
/// Each iteration takes the batch of its index, runs the step with the next seed of a
/// generator seeded by `config.seed`, checks that the losses and gradients are finite, and
/// updates the trainable parameters by [`Sgd`] at [`super::LrSchedule`]'s rate; parameters
/// under `config.frozen` are not trained. A resumed run restores the state, the momentum
/// buffers and the generator, so it computes what an uninterrupted run would. A new run needs a
/// `run_dir` that does not exist. A requested stop ([`StopFlag`]) ends the run between
/// iterations with a checkpoint and a message saying how to resume.
pub fn train<S, B>(
    step: &mut S,
    batches: &mut B,
    state: &mut ModelState,
    config: &TrainConfig,
    run_dir: &Path,
    options: TrainOptions<'_>,
) -> Result<Summary>
where
    S: Step,
    B: Batches<Batch = S::Batch>,
{
    config.validate("training settings")?;
    state.freeze(&config.frozen)?;
    let mut sgd = Sgd::new(config.momentum, config.weight_decay);
    let TrainOptions { resume, mut evaluator, stop, progress, log } = options;
    let (mut rng, start) = if resume {
        let progress = checkpoint::restore(run_dir, state, &mut sgd)?;
        checkpoint::truncate_metrics(run_dir, progress.iteration)?;
        (progress.rng, progress.iteration)
    } else {
        if run_dir.exists() {
            return Err(TrainError::RunDirExists { path: run_dir.to_path_buf() });
        }
        std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
        (Xoshiro256PlusPlus::seed_from_u64(config.seed), 0)
    };
    let per_epoch = batches.per_epoch().max(1);
    let schedule = config.schedule();
    let metrics_path = run_dir.join(METRICS_FILE);
    let mut metrics =
        OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(io_error(&metrics_path))?;
    let mut console = Console::new(log, progress, start, config.iterations, config.log_every);
    let mut summary = Summary {
        iterations: start,
        interrupted: false,
        losses: Vec::new(),
        evaluation: Vec::new(),
        ran: 0,
        seconds: 0.0,
        weights: None,
    };
    // The iteration of the checkpoint on disk, for the message of a failure.
    let mut checkpointed = resume.then_some(start);
    for iteration in start..config.iterations {
        if stop.is_requested() {
            let run = RunProgress { iteration, rng: rng.clone(), config: config.clone() };
            if checkpointed != Some(iteration) {
                checkpoint::write(run_dir, state, &sgd, &run)?;
            }
            console.finish();
            console.line(format!(
                "stopped after iteration {iteration} of {}; checkpoint in {}; continue with `--resume {}`",
                config.iterations,
                run_dir.display(),
                run_dir.display()
            ));
            summary.interrupted = true;
            return Ok(summary);
        }
        let started = Instant::now();
        let seed = rng.next_u64();
        let batch = batches.batch(iteration).map_err(|source| TrainError::Data { iteration, source })?;
        let output = step.run(state, &batch, seed).map_err(|source| TrainError::Step { iteration, source })?;
        let non_finite = |what: String| TrainError::NonFinite {
            iteration,
            what,
            resume: match checkpointed {
                Some(at) => format!("the checkpoint of iteration {at} is in {}", run_dir.display()),
                None => "no checkpoint was written".into(),
            },
        };
        if let Some((name, value)) = output.losses.iter().find(|(_, v)| !v.is_finite()) {
            return Err(non_finite(format!("loss {name} = {value}")));
        }
        if let Some((t, _)) = state.trainable().zip(&output.gradients).find(|(_, g)| g.iter().any(|v| !v.is_finite())) {
            return Err(non_finite(format!("gradient of {}", t.name)));
        }
        let lr = schedule.lr(iteration);
        sgd.step(state, &output.gradients, lr)?;
        let seconds = started.elapsed();
        let done = iteration + 1;
        let last = done == config.iterations;
        let evaluate = last || (config.eval_every > 0 && done.is_multiple_of(config.eval_every));
        let evaluation = match evaluator.as_deref_mut() {
            Some(evaluator) if evaluate => {
                let results = evaluator.evaluate(state).map_err(|source| TrainError::Evaluate { iteration, source })?;
                Some(results)
            }
            _ => None,
        };
        let line = MetricsLine {
            iteration,
            epoch: iteration / per_epoch,
            lr,
            losses: Named(&output.losses),
            loss: output.losses.iter().map(|(_, v)| v).sum(),
            seconds: seconds.as_secs_f64(),
            eval: evaluation.as_deref().map(Named),
        };
        let mut text = serde_json::to_string(&line).expect("metrics serialize");
        text.push('\n');
        metrics.write_all(text.as_bytes()).and_then(|()| metrics.flush()).map_err(io_error(&metrics_path))?;
        if last || (config.checkpoint_every > 0 && done.is_multiple_of(config.checkpoint_every)) {
            let run = RunProgress { iteration: done, rng: rng.clone(), config: config.clone() };
            checkpoint::write(run_dir, state, &sgd, &run)?;
            checkpointed = Some(done);
        }
        console.iteration(done, lr, &output.losses, seconds);
        if let Some(results) = evaluation {
            let text: Vec<String> = results.iter().map(|(name, v)| format!("{name} {v:.4}")).collect();
            console.line(format!("iteration {done}: {}", text.join(", ")));
            summary.evaluation = results;
        }
        summary.iterations = done;
        summary.losses = output.losses;
        summary.ran += 1;
        summary.seconds += seconds.as_secs_f64();
    }
    console.finish();
    summary.weights = Some(checkpoint::write_weights(run_dir, state)?);
    Ok(summary)
}
