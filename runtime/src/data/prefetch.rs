//! Batches prepared on worker threads ahead of the training step and handed out in order.
//!
//! Workers claim iterations in increasing order, at most `depth` beyond the next one to be taken,
//! so memory stays bounded; finished batches wait in a map until their turn. Dropping the
//! [`Prefetch`] stops the workers and joins them.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::batch::Batch;
use super::loader::Loader;
use super::{DataError, Result};

/// An endless, in-order stream of batches from a [`Loader`] (see [`Loader::prefetch`]).
pub struct Prefetch {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    depth: u64,
}

struct State {
    /// The next iteration a worker will claim.
    next_claim: u64,
    /// The next iteration [`Prefetch::next_batch`] returns.
    next_out: u64,
    ready: BTreeMap<u64, Result<Batch>>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked leaves the state consistent (it holds no lock while working).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Prefetch {
    pub(super) fn new(loader: Loader, start: u64, workers: usize, depth: usize) -> Prefetch {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_claim: start, next_out: start, ready: BTreeMap::new(), stop: false }),
            changed: Condvar::new(),
            depth: depth.max(1) as u64,
        });
        let workers = (0..workers.max(1))
            .map(|_| {
                let (shared, loader) = (Arc::clone(&shared), loader.clone());
                std::thread::spawn(move || work(&shared, &loader))
            })
            .collect();
        Prefetch { shared, workers }
    }

    /// The next batch in iteration order, waiting for it if a worker is still on it.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let mut state = self.shared.lock();
        loop {
            let next = state.next_out;
            if let Some(batch) = state.ready.remove(&next) {
                state.next_out += 1;
                self.shared.changed.notify_all();
                return batch;
            }
            state = self.shared.wait(state);
        }
    }
}

fn work(shared: &Shared, loader: &Loader) {
    loop {
        let iteration = {
            let mut state = shared.lock();
            while !state.stop && state.next_claim >= state.next_out + shared.depth {
                state = shared.wait(state);
            }
            if state.stop {
                return;
            }
            state.next_claim += 1;
            state.next_claim - 1
        };
        // A panic becomes that batch's error, so that the consumer is told instead of waiting.
        let batch =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.batch(iteration))).unwrap_or_else(|_| {
                Err(DataError::Worker(format!("preparing the batch of iteration {iteration} panicked")))
            });
        shared.lock().ready.insert(iteration, batch);
        shared.changed.notify_all();
    }
}

impl Iterator for Prefetch {
    type Item = Result<Batch>;

    /// Never `None`: epochs follow each other without end (take as many as the run needs).
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        for worker in self.workers.drain(..) {
            // A worker's panic has already been reported on its thread; nothing to add here.
            let _ = worker.join();
        }
    }
}
