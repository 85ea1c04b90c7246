//! Per-stage timing of a forward call: the time inside each runtime built-in under its name,
//! and the generated code's time between them under [`GENERATED`].

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The stage name of generated (dense) code.
pub const GENERATED: &str = "network";

thread_local! {
    static CLOCK: RefCell<Option<(Instant, Vec<(&'static str, Duration)>)>> = const { RefCell::new(None) };
}

/// Starts timing a forward call on this thread.
pub fn begin() {
    CLOCK.with(|c| *c.borrow_mut() = Some((Instant::now(), vec![])));
}

/// Ends the forward call's timing: the stages in the order they ran (consecutive runs of one
/// stage merged).
pub fn finish() -> Vec<(&'static str, Duration)> {
    mark(GENERATED);
    CLOCK.with(|c| c.borrow_mut().take().map(|(_, stages)| stages).unwrap_or_default())
}

/// Attributes the time since the last mark to `stage`.
fn mark(stage: &'static str) {
    CLOCK.with(|c| {
        if let Some((last, stages)) = c.borrow_mut().as_mut() {
            let now = Instant::now();
            let spent = now - *last;
            *last = now;
            match stages.last_mut() {
                Some((name, total)) if *name == stage => *total += spent,
                _ => stages.push((stage, spent)),
            }
        }
    });
}

/// Times a built-in: generated code ran until it starts, the built-in until it drops.
pub(crate) struct Timer(&'static str);

impl Timer {
    pub(crate) fn start(stage: &'static str) -> Timer {
        mark(GENERATED);
        Timer(stage)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        mark(self.0);
    }
}
