//! What a run shows while it trains: a progress bar with it/s, ETA and the losses on a
//! terminal, a plain line every `log_every` iterations otherwise.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr.
    Bar,
    /// A line every `log_every` iterations, for logs and pipes.
    Lines,
    /// Messages only (tests).
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// Shows a run's progress and messages on `log`, keeping messages from tearing the bar.
pub(crate) struct Console<'a> {
    log: &'a mut dyn Write,
    mode: Progress,
    bar: ProgressBar,
    log_every: u64,
    total: u64,
    /// Iterations timed in this process and their total time, for the ETA of plain lines.
    timed: u64,
    time: Duration,
}

impl<'a> Console<'a> {
    pub fn new(log: &'a mut dyn Write, mode: Progress, done: u64, total: u64, log_every: u64) -> Console<'a> {
        let bar = if mode == Progress::Bar {
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} it, {per_sec}, {eta} left  {msg}")
                .expect("the template is valid");
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style);
            bar.set_position(done);
            bar.reset_eta();
            bar
        } else {
            ProgressBar::hidden()
        };
        Console { log, mode, bar, log_every, total, timed: 0, time: Duration::ZERO }
    }

    /// Prints one line above the bar.
    pub fn line(&mut self, text: impl Display) {
        let log = &mut self.log;
        // A log that cannot be written (closed stderr) has nowhere to report that either.
        self.bar.suspend(|| {
            let _ = writeln!(log, "{text}");
        });
    }

    /// Counts an iteration done (`done` iterations in all) with its learning rate, losses
    /// and time.
    pub fn iteration(&mut self, done: u64, lr: f64, losses: &[(String, f64)], time: Duration) {
        self.timed += 1;
        self.time += time;
        let named: Vec<String> =
            losses.iter().map(|(name, v)| format!("{} {v:.4}", name.strip_prefix("loss_").unwrap_or(name))).collect();
        let total: f64 = losses.iter().map(|(_, v)| v).sum();
        match self.mode {
            Progress::Bar => {
                self.bar.set_message(format!("loss {total:.4} ({})", named.join(", ")));
                self.bar.set_position(done);
            }
            Progress::Lines if done.is_multiple_of(self.log_every) || done == self.total => {
                let per_iteration = self.time.as_secs_f64() / self.timed as f64;
                let left = Duration::from_secs_f64(per_iteration * (self.total - done) as f64);
                let text = format!(
                    "iteration {done}/{}  lr {lr:.6}  loss {total:.4} ({})  {per_iteration:.3} s/it, {} left",
                    self.total,
                    named.join(", "),
                    indicatif::HumanDuration(left)
                );
                self.line(text);
            }
            Progress::Lines | Progress::Quiet => {}
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
