//! Per-stage timing of a forward call: the time inside each runtime built-in under its name,
//! and the generated code's time between them under [`GENERATED`]. On a GPU the times are the
//! device's, from timing events recorded at each boundary; elsewhere the host's clock.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::device::{self, Event, SelectedDevice};

/// The stage name of generated (dense) code.
pub const GENERATED: &str = "network";

/// Where the current stage began: the host's clock, and the device's when it has one.
struct Clock {
    last: Instant,
    last_on_device: Option<(&'static SelectedDevice, Event)>,
    stages: Vec<(&'static str, Duration)>,
}

thread_local! {
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

/// A timestamp of the selected device, if it keeps its own time (errors only lose the device's
/// figure: the host's clock stands in).
fn device_timestamp() -> Option<(&'static SelectedDevice, Event)> {
    let device = device::selected()?;
    device.device().timestamp().ok().flatten().map(|event| (device, event))
}

/// Starts timing a forward call on this thread.
pub fn begin() {
    let clock = Clock { last: Instant::now(), last_on_device: device_timestamp(), stages: vec![] };
    CLOCK.with(|c| *c.borrow_mut() = Some(clock));
}

/// Ends the forward call's timing: the stages in the order they ran (consecutive runs of one
/// stage merged).
pub fn finish() -> Vec<(&'static str, Duration)> {
    mark(GENERATED);
    CLOCK.with(|c| {
        c.borrow_mut()
            .take()
            .map(|clock| {
                if let Some((device, event)) = clock.last_on_device {
                    // SAFETY: the last timestamp of this call, used nowhere else.
                    unsafe { device.device().discard_timestamp(event) };
                }
                clock.stages
            })
            .unwrap_or_default()
    })
}

/// Attributes the time since the last mark to `stage`.
fn mark(stage: &'static str) {
    CLOCK.with(|c| {
        if let Some(clock) = c.borrow_mut().as_mut() {
            let now = Instant::now();
            let mut spent = now - clock.last;
            clock.last = now;
            if let Some((device, start)) = clock.last_on_device.take() {
                // `seconds_between` consumes both events: the next stage starts at a fresh one.
                let end = device_timestamp();
                clock.last_on_device = device_timestamp();
                // SAFETY: timestamps of this device, each used once.
                unsafe {
                    match end {
                        Some((_, end)) => {
                            if let Ok(seconds) = device.device().seconds_between(start, end) {
                                spent = Duration::from_secs_f64(seconds);
                            }
                        }
                        None => device.device().discard_timestamp(start),
                    }
                }
            }
            match clock.stages.last_mut() {
                Some((name, total)) if *name == stage => *total += spent,
                _ => clock.stages.push((stage, spent)),
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
