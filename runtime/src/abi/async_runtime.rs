//! MLIR's async runtime (`mlirAsyncRuntime*`, the C interface of MLIR's `AsyncRuntime.h`), on
//! rayon's pool. The CPU pipeline's `async-parallel-for` splits each parallel loop nest into
//! blocks: the caller computes the first, and every other block is a coroutine started with
//! [`mlirAsyncRuntimeExecute`] whose token joins a group the caller awaits. Tokens, values and
//! groups are reference counted as MLIR's runtime counts them: a token or value starts with two
//! references (the caller's, and the one its completion drops), a group with one.

use std::ffi::c_void;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

type CoroHandle = *mut c_void;
type CoroResume = unsafe extern "C" fn(CoroHandle);
type Awaiter = Box<dyn FnOnce() + Send>;

/// A token, a value or a group: something that becomes ready once, then runs its awaiters.
struct AsyncObject {
    references: AtomicI64,
    state: Mutex<State>,
    ready: Condvar,
    /// A value's storage (empty for tokens and groups); written by its producer before it is
    /// emplaced, read by its consumers after.
    storage: Box<[u64]>,
}

struct State {
    /// For a token or value, 1 until it is emplaced (or set to an error); for a group, the
    /// tokens still to complete.
    pending: i64,
    /// For a token or value, whether it completed with an error; for a group, how many of its
    /// tokens did.
    errors: i64,
    /// The next rank [`mlirAsyncRuntimeAddTokenToGroup`] returns.
    rank: i64,
    /// Run once, when `pending` reaches zero.
    awaiters: Vec<Awaiter>,
}

/// A pointer crossing to the pool; the reference counts keep what it points to alive.
struct Shared(*mut c_void);
// SAFETY: the objects are thread-safe (atomics and a mutex), and coroutine handles are resumed
// on one thread at a time, as MLIR's runtime resumes them.
unsafe impl Send for Shared {}

impl AsyncObject {
    fn create(references: i64, pending: i64, storage_bytes: usize) -> *mut AsyncObject {
        let state = State { pending, errors: 0, rank: 0, awaiters: vec![] };
        let storage = vec![0_u64; storage_bytes.div_ceil(8)].into_boxed_slice();
        Box::into_raw(Box::new(AsyncObject { references: AtomicI64::new(references), state: Mutex::new(state), ready: Condvar::new(), storage }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one completion (`error` or not); when nothing is pending any more, wakes the
    /// waiters and runs the awaiters, outside the lock.
    fn complete(&self, error: bool) {
        let awaiters = {
            let mut state = self.lock();
            state.errors += i64::from(error);
            state.pending -= 1;
            if state.pending > 0 {
                return;
            }
            self.ready.notify_all();
            std::mem::take(&mut state.awaiters)
        };
        for awaiter in awaiters {
            awaiter();
        }
    }

    /// Runs `awaiter` now if nothing is pending, else when nothing is.
    fn then(&self, awaiter: Awaiter) {
        let mut state = self.lock();
        if state.pending > 0 {
            state.awaiters.push(awaiter);
        } else {
            drop(state);
            awaiter();
        }
    }

    /// Blocks until nothing is pending. On a pool thread, runs the pool's other work meanwhile,
    /// so that awaiting inside a task cannot starve the tasks it waits for.
    fn wait(&self) {
        let wait_while_pending = |timeout: Option<std::time::Duration>| {
            let state = self.lock();
            let pending = |s: &mut State| s.pending > 0;
            match timeout {
                None => drop(self.ready.wait_while(state, pending).unwrap_or_else(|poisoned| poisoned.into_inner())),
                Some(timeout) => drop(self.ready.wait_timeout_while(state, timeout, pending).unwrap_or_else(|poisoned| poisoned.into_inner())),
            }
        };
        // The lock is not held while the pool's work runs: that work may complete this object.
        while self.lock().pending > 0 {
            match rayon::yield_now() {
                None => wait_while_pending(None),
                Some(rayon::Yield::Idle) => wait_while_pending(Some(std::time::Duration::from_micros(50))),
                Some(rayon::Yield::Executed) => {}
            }
        }
    }
}

/// # Safety
/// `object` is a live object of this runtime.
unsafe fn object<'a>(object: *mut c_void) -> &'a AsyncObject {
    unsafe { &*(object as *const AsyncObject) }
}

/// Adds `count` references to a token, value or group.
///
/// # Safety
/// `ptr` is a live object of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAddRef(ptr: *mut c_void, count: i64) {
    unsafe { object(ptr) }.references.fetch_add(count, Ordering::Relaxed);
}

/// Drops `count` references; the last one frees the object.
///
/// # Safety
/// `ptr` is a live object of this runtime holding at least `count` references.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeDropRef(ptr: *mut c_void, count: i64) {
    let previous = unsafe { object(ptr) }.references.fetch_sub(count, Ordering::AcqRel);
    debug_assert!(previous >= count, "an async object's references went below zero");
    if previous == count {
        // SAFETY: made by `AsyncObject::create`, and no reference is left.
        drop(unsafe { Box::from_raw(ptr as *mut AsyncObject) });
    }
}

#[no_mangle]
pub extern "C" fn mlirAsyncRuntimeCreateToken() -> *mut c_void {
    AsyncObject::create(2, 1, 0) as *mut c_void
}

#[no_mangle]
pub extern "C" fn mlirAsyncRuntimeCreateValue(size: i64) -> *mut c_void {
    AsyncObject::create(2, 1, usize::try_from(size).unwrap_or(0)) as *mut c_void
}

#[no_mangle]
pub extern "C" fn mlirAsyncRuntimeCreateGroup(size: i64) -> *mut c_void {
    AsyncObject::create(1, size, 0) as *mut c_void
}

/// Adds `token` to `group` (whose size counted it): the group completes a token when the token
/// does. Returns the token's rank in the group.
///
/// # Safety
/// `token` and `group` are live objects of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAddTokenToGroup(token: *mut c_void, group: *mut c_void) -> i64 {
    let rank = {
        let mut state = unsafe { object(group) }.lock();
        state.rank += 1;
        state.rank - 1
    };
    // The group must outlive the token's completion.
    unsafe { mlirAsyncRuntimeAddRef(group, 1) };
    let (group, token_shared) = (Shared(group), Shared(token));
    unsafe { object(token) }.then(Box::new(move || {
        let (group, token) = (group, token_shared);
        // SAFETY: awaiters run before the token's completion drops its reference, and the
        // reference added above keeps the group alive until dropped here.
        unsafe {
            let failed = object(token.0).lock().errors > 0;
            object(group.0).complete(failed);
            mlirAsyncRuntimeDropRef(group.0, 1);
        }
    }));
    rank
}

/// # Safety
/// `token` is a live, pending token of this runtime.
unsafe fn set_token_state(token: *mut c_void, error: bool) {
    unsafe { object(token) }.complete(error);
    // Tokens and values start with a reference that their completion drops.
    unsafe { mlirAsyncRuntimeDropRef(token, 1) };
}

/// # Safety
/// `token` is a live, pending token of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeEmplaceToken(token: *mut c_void) {
    unsafe { set_token_state(token, false) }
}

/// # Safety
/// `token` is a live, pending token of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeSetTokenError(token: *mut c_void) {
    unsafe { set_token_state(token, true) }
}

/// # Safety
/// `value` is a live, pending value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeEmplaceValue(value: *mut c_void) {
    unsafe { set_token_state(value, false) }
}

/// # Safety
/// `value` is a live, pending value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeSetValueError(value: *mut c_void) {
    unsafe { set_token_state(value, true) }
}

/// # Safety
/// `token` is a live token of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeIsTokenError(token: *mut c_void) -> bool {
    unsafe { object(token) }.lock().errors > 0
}

/// # Safety
/// `value` is a live value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeIsValueError(value: *mut c_void) -> bool {
    unsafe { object(value) }.lock().errors > 0
}

/// # Safety
/// `group` is a live group of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeIsGroupError(group: *mut c_void) -> bool {
    unsafe { object(group) }.lock().errors > 0
}

/// # Safety
/// `token` is a live token of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitToken(token: *mut c_void) {
    unsafe { object(token) }.wait()
}

/// # Safety
/// `value` is a live value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitValue(value: *mut c_void) {
    unsafe { object(value) }.wait()
}

/// # Safety
/// `group` is a live group of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitAllInGroup(group: *mut c_void) {
    unsafe { object(group) }.wait()
}

/// # Safety
/// `value` is a live value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeGetValueStorage(value: *mut c_void) -> *mut c_void {
    unsafe { object(value) }.storage.as_ptr() as *mut c_void
}

/// The tickets of the tasks started and not yet returned: a task runs generated code (the end of
/// its coroutine) after it has completed its token, so the code must stay until it returns.
static RUNNING: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static NEXT_TICKET: AtomicU64 = AtomicU64::new(0);

fn running() -> MutexGuard<'static, BTreeSet<u64>> {
    RUNNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until every task started before this call has returned: after it, generated code
/// whose calls have all returned may be freed. (MLIR's runtime waits for its pool when an
/// execution engine is destroyed, for the same reason.)
pub fn quiesce() {
    let horizon = NEXT_TICKET.load(Ordering::SeqCst);
    while running().range(..horizon).next().is_some() {
        std::thread::yield_now();
    }
}

/// Resumes the coroutine `handle` on the pool.
///
/// # Safety
/// `resume` resumes `handle`, a suspended coroutine.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeExecute(handle: CoroHandle, resume: CoroResume) {
    let (handle, ticket) = (Shared(handle), NEXT_TICKET.fetch_add(1, Ordering::SeqCst));
    running().insert(ticket);
    rayon::spawn(move || {
        let handle = handle;
        // SAFETY: as the caller promised.
        unsafe { resume(handle.0) };
        running().remove(&ticket);
    });
}

/// Resumes `handle` on the pool once `object` completes.
///
/// # Safety
/// `object` is a live object of this runtime; `resume` resumes `handle`, a suspended coroutine.
unsafe fn execute_after(object_ptr: *mut c_void, handle: CoroHandle, resume: CoroResume) {
    let handle = Shared(handle);
    unsafe { object(object_ptr) }.then(Box::new(move || {
        let handle = handle;
        // SAFETY: as the caller promised.
        unsafe { mlirAsyncRuntimeExecute(handle.0, resume) }
    }));
}

/// # Safety
/// As [`mlirAsyncRuntimeExecute`]; `token` is a live token of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitTokenAndExecute(token: *mut c_void, handle: CoroHandle, resume: CoroResume) {
    unsafe { execute_after(token, handle, resume) }
}

/// # Safety
/// As [`mlirAsyncRuntimeExecute`]; `value` is a live value of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitValueAndExecute(value: *mut c_void, handle: CoroHandle, resume: CoroResume) {
    unsafe { execute_after(value, handle, resume) }
}

/// # Safety
/// As [`mlirAsyncRuntimeExecute`]; `group` is a live group of this runtime.
#[no_mangle]
pub unsafe extern "C" fn mlirAsyncRuntimeAwaitAllInGroupAndExecute(group: *mut c_void, handle: CoroHandle, resume: CoroResume) {
    unsafe { execute_after(group, handle, resume) }
}

/// The pool's threads: how many blocks a parallel loop is worth splitting into. (The missing
/// "e" is MLIR's spelling.)
#[no_mangle]
pub extern "C" fn mlirAsyncRuntimGetNumWorkerThreads() -> i64 {
    rayon::current_num_threads() as i64
}

/// The runtime's functions by symbol, for a JIT to resolve.
pub fn symbols() -> Vec<(&'static str, *mut ())> {
    vec![
        ("mlirAsyncRuntimeAddRef", mlirAsyncRuntimeAddRef as *mut ()),
        ("mlirAsyncRuntimeDropRef", mlirAsyncRuntimeDropRef as *mut ()),
        ("mlirAsyncRuntimeCreateToken", mlirAsyncRuntimeCreateToken as *mut ()),
        ("mlirAsyncRuntimeCreateValue", mlirAsyncRuntimeCreateValue as *mut ()),
        ("mlirAsyncRuntimeCreateGroup", mlirAsyncRuntimeCreateGroup as *mut ()),
        ("mlirAsyncRuntimeAddTokenToGroup", mlirAsyncRuntimeAddTokenToGroup as *mut ()),
        ("mlirAsyncRuntimeEmplaceToken", mlirAsyncRuntimeEmplaceToken as *mut ()),
        ("mlirAsyncRuntimeSetTokenError", mlirAsyncRuntimeSetTokenError as *mut ()),
        ("mlirAsyncRuntimeEmplaceValue", mlirAsyncRuntimeEmplaceValue as *mut ()),
        ("mlirAsyncRuntimeSetValueError", mlirAsyncRuntimeSetValueError as *mut ()),
        ("mlirAsyncRuntimeIsTokenError", mlirAsyncRuntimeIsTokenError as *mut ()),
        ("mlirAsyncRuntimeIsValueError", mlirAsyncRuntimeIsValueError as *mut ()),
        ("mlirAsyncRuntimeIsGroupError", mlirAsyncRuntimeIsGroupError as *mut ()),
        ("mlirAsyncRuntimeAwaitToken", mlirAsyncRuntimeAwaitToken as *mut ()),
        ("mlirAsyncRuntimeAwaitValue", mlirAsyncRuntimeAwaitValue as *mut ()),
        ("mlirAsyncRuntimeAwaitAllInGroup", mlirAsyncRuntimeAwaitAllInGroup as *mut ()),
        ("mlirAsyncRuntimeGetValueStorage", mlirAsyncRuntimeGetValueStorage as *mut ()),
        ("mlirAsyncRuntimeExecute", mlirAsyncRuntimeExecute as *mut ()),
        ("mlirAsyncRuntimeAwaitTokenAndExecute", mlirAsyncRuntimeAwaitTokenAndExecute as *mut ()),
        ("mlirAsyncRuntimeAwaitValueAndExecute", mlirAsyncRuntimeAwaitValueAndExecute as *mut ()),
        ("mlirAsyncRuntimeAwaitAllInGroupAndExecute", mlirAsyncRuntimeAwaitAllInGroupAndExecute as *mut ()),
        ("mlirAsyncRuntimGetNumWorkerThreads", mlirAsyncRuntimGetNumWorkerThreads as *mut ()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static RESUMED: AtomicUsize = AtomicUsize::new(0);

    /// A "coroutine" that emplaces the token it is given.
    unsafe extern "C" fn emplace_on_resume(token: CoroHandle) {
        RESUMED.fetch_add(1, Ordering::SeqCst);
        unsafe { mlirAsyncRuntimeEmplaceToken(token) }
    }

    /// The protocol `async-parallel-for` generates: a group of tokens emplaced by tasks on the
    /// pool, awaited by the caller, every object freed by its last reference.
    #[test]
    fn a_group_completes_when_its_tokens_do() {
        const TASKS: i64 = 64;
        let group = mlirAsyncRuntimeCreateGroup(TASKS);
        for rank in 0..TASKS {
            let token = mlirAsyncRuntimeCreateToken();
            unsafe {
                assert_eq!(mlirAsyncRuntimeAddTokenToGroup(token, group), rank);
                mlirAsyncRuntimeExecute(token, emplace_on_resume);
                mlirAsyncRuntimeDropRef(token, 1);
            }
        }
        unsafe {
            mlirAsyncRuntimeAwaitAllInGroup(group);
            assert!(!mlirAsyncRuntimeIsGroupError(group));
            assert_eq!(object(group).lock().pending, 0);
            mlirAsyncRuntimeDropRef(group, 1);
        }
        assert!(RESUMED.load(Ordering::SeqCst) >= TASKS as usize);
    }

    /// An error in one token is the group's error; a value's storage holds what was written.
    #[test]
    fn errors_reach_the_group_and_values_keep_their_storage() {
        let group = mlirAsyncRuntimeCreateGroup(2);
        let (ok, failed) = (mlirAsyncRuntimeCreateToken(), mlirAsyncRuntimeCreateToken());
        let value = mlirAsyncRuntimeCreateValue(8);
        unsafe {
            mlirAsyncRuntimeAddTokenToGroup(ok, group);
            mlirAsyncRuntimeAddTokenToGroup(failed, group);
            mlirAsyncRuntimeEmplaceToken(ok);
            assert!(!mlirAsyncRuntimeIsGroupError(group));
            mlirAsyncRuntimeSetTokenError(failed);
            mlirAsyncRuntimeAwaitAllInGroup(group);
            assert!(mlirAsyncRuntimeIsGroupError(group));
            assert!(mlirAsyncRuntimeIsTokenError(failed) && !mlirAsyncRuntimeIsTokenError(ok));
            *(mlirAsyncRuntimeGetValueStorage(value) as *mut f64) = 2.5;
            mlirAsyncRuntimeEmplaceValue(value);
            mlirAsyncRuntimeAwaitValue(value);
            assert_eq!(*(mlirAsyncRuntimeGetValueStorage(value) as *const f64), 2.5);
            for object in [ok, failed, value, group] {
                mlirAsyncRuntimeDropRef(object, 1);
            }
        }
    }
}
