//! Messages, the progress bar and the timing summary of a run.

use std::fmt::Display;
use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where the run's messages go, keeping them from tearing the progress bar.
pub struct Console<'a> {
    log: &'a mut dyn Write,
    bar: ProgressBar,
}

impl<'a> Console<'a> {
    /// A progress bar over `total` images is drawn on stderr only when `show_progress` (stderr
    /// is a terminal) and there is more than one image.
    pub fn new(log: &'a mut dyn Write, total: usize, show_progress: bool) -> Console<'a> {
        let bar = if show_progress && total > 1 {
            let style =
                ProgressStyle::with_template("{bar:40} {pos}/{len} images, {elapsed} elapsed, {eta} left  {msg}")
                    .expect("the template is valid");
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr()).with_style(style)
        } else {
            ProgressBar::hidden()
        };
        Console { log, bar }
    }

    /// Prints one line of text above the progress bar.
    pub fn line(&mut self, text: impl Display) {
        let log = &mut self.log;
        // A log that cannot be written (closed stderr) has nowhere to report that either.
        self.bar.suspend(|| {
            let _ = writeln!(log, "{text}");
        });
    }

    /// Shows which image is being processed.
    pub fn start(&self, name: impl Display) {
        self.bar.set_message(name.to_string());
    }

    /// Counts one image as done.
    pub fn advance(&self) {
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Total time per named stage, in the order the stages were first seen.
#[derive(Debug, Default, Clone)]
pub struct StageTotals {
    totals: Vec<(String, Duration)>,
}

impl StageTotals {
    pub fn add(&mut self, stage: &str, time: Duration) {
        match self.totals.iter_mut().find(|(name, _)| name == stage) {
            Some((_, total)) => *total += time,
            None => self.totals.push((stage.to_owned(), time)),
        }
    }

    /// One line per stage: total seconds and milliseconds per image.
    pub fn table(&self, images: usize) -> String {
        let width = self.totals.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut table = String::new();
        for (name, time) in &self.totals {
            let per_image = time.as_secs_f64() * 1e3 / images.max(1) as f64;
            table.push_str(&format!("  {name:<width$}  {:>9.3} s  {per_image:>9.1} ms/image\n", time.as_secs_f64()));
        }
        table
    }
}
