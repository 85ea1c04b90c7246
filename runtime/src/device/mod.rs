//! The device a CUDA program's network runs on: the NVIDIA driver ([`driver`]) or the CPU
//! emulator ([`emulator`]), behind one interface ([`Device`]), chosen once per process
//! ([`select`]) before the first real device call.
//!
//! Generated code reaches the device through MLIR's CUDA-runtime-wrapper ABI (`mgpu*`, see
//! [`abi`]); [`Forward`](crate::abi::forward::Forward) uploads weights and inputs and reads
//! results through [`SelectedDevice`]. What both devices share lives here: the ledger of
//! allocations (current and peak bytes), CUDA's launch limits, launch counters, and modules
//! loaded lazily ([`module`]) — `mgpuModuleLoadJIT` runs in a global constructor, before
//! `main` has parsed `--device`.
//!
//! Selecting nothing means the CUDA device: the first device call selects it.

pub mod abi;
pub mod cublas;
pub mod driver;
pub mod emulator;
pub mod gemm;
pub mod module;

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

pub use emulator::{register_emulated_kernels, EmulatedKernel, EmulatedKernelEntry, EmulatedKernelTable};
pub use gemm::{BatchedProduct, DeviceGemm, StridedMatrix};

/// A stream of generated code: a `CUstream`, or the emulator's token for one.
pub type Stream = *mut c_void;
/// An event of generated code: a `CUevent`, or the emulator's token for one.
pub type Event = *mut c_void;

/// A module loaded on a device, as the device names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleHandle(pub usize);

/// A kernel of a loaded module, as the device names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionHandle(pub usize);

/// Which device runs the network (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The first NVIDIA GPU, through the driver.
    Cuda,
    /// The CPU, running each kernel's CPU-compiled form.
    Emulator,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cuda => "cuda",
            DeviceKind::Emulator => "emulator",
        })
    }
}

/// Why a device could not start or refused a call. The startup errors are one line that names
/// what is missing, shown as they are to the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("no NVIDIA driver: libcuda.so.1 not found (use --device emulator to run on the CPU)")]
    NoDriver,
    #[error("the NVIDIA driver lacks {symbol} (too old; use --device emulator to run on the CPU)")]
    DriverTooOld { symbol: &'static str },
    #[error("the NVIDIA driver failed to start: {0} (use --device emulator to run on the CPU)")]
    DriverStart(String),
    #[error("no CUDA device (use --device emulator to run on the CPU)")]
    NoDevice,
    #[error(
        "cuBLAS not found: libcublas.so.12 (pip install nvidia-cublas-cu12, or add a CUDA installation's lib64 to LD_LIBRARY_PATH; or use --device emulator to run on the CPU)"
    )]
    NoCublas,
    #[error("cuBLAS lacks {symbol} (too old; use --device emulator to run on the CPU)")]
    CublasTooOld { symbol: &'static str },
    #[error("cuBLAS failed to start: {0} (use --device emulator to run on the CPU)")]
    CublasStart(String),
    #[error("the device is already selected ({selected}), cannot select {requested}")]
    AlreadySelected { selected: DeviceKind, requested: DeviceKind },
    #[error("only device 0 exists, not device {0}")]
    NoSuchDevice(i32),
    /// A driver call failed.
    #[error("{call}: {message}")]
    Driver { call: &'static str, message: String },
    /// A cuBLAS call failed.
    #[error("{call}: {message}")]
    Cublas { call: &'static str, message: String },
    /// A product's operands are laid out in a way the device's GEMM cannot read.
    #[error(transparent)]
    GemmLayout(#[from] cublas::GemmLayoutError),
    /// A call's arguments are not what the device takes.
    #[error("{call}: {message}")]
    Invalid { call: &'static str, message: String },
    #[error("out of device memory allocating {bytes} bytes")]
    OutOfMemory { bytes: usize },
    #[error("{pointer:#x} is not a live allocation of the device")]
    UnknownPointer { pointer: usize },
    #[error("kernel `{name}` is not an entry of its module (no `.entry {name}(` in its PTX)")]
    NotAnEntry { name: String },
    #[error("kernel `{name}` has no CPU form for the emulator (the program registered none by that name)")]
    NoEmulatedKernel { name: String },
    #[error("launch of `{kernel}`: {reason}")]
    Launch { kernel: String, reason: String },
    #[error("a result on the device is not contiguous (shape {shape:?}, strides {strides:?})")]
    NonContiguousResult { shape: Vec<usize>, strides: Vec<i64> },
}

/// A pattern to fill device memory with (`mgpuMemset32`, `mgpuMemset16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    U32(u32),
    U16(u16),
}

/// The grid and block of a launch, checked against CUDA's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_memory_bytes: u32,
}

/// CUDA's limits on every GPU since compute capability 3.0 (without opting in to more shared
/// memory): the emulator refuses what a real GPU would, and the driver gets no value it cannot
/// take.
pub const MAX_THREADS_PER_BLOCK: i64 = 1024;
pub const MAX_BLOCK: [i64; 3] = [1024, 1024, 64];
pub const MAX_GRID: [i64; 3] = [(1 << 31) - 1, 65535, 65535];
pub const MAX_SHARED_MEMORY_BYTES: i64 = 48 * 1024;

impl LaunchConfig {
    /// The configuration of a launch, or why a GPU would refuse it.
    pub fn new(grid: [i64; 3], block: [i64; 3], shared_memory_bytes: i32) -> Result<LaunchConfig, String> {
        const AXES: [&str; 3] = ["x", "y", "z"];
        for axis in 0..3 {
            if !(1..=MAX_GRID[axis]).contains(&grid[axis]) {
                return Err(format!("grid {} of {} blocks is outside [1, {}]", AXES[axis], grid[axis], MAX_GRID[axis]));
            }
            if !(1..=MAX_BLOCK[axis]).contains(&block[axis]) {
                return Err(format!(
                    "block {} of {} threads is outside [1, {}]",
                    AXES[axis], block[axis], MAX_BLOCK[axis]
                ));
            }
        }
        let threads = block[0] * block[1] * block[2];
        if threads > MAX_THREADS_PER_BLOCK {
            return Err(format!(
                "a block of {}x{}x{} = {threads} threads is more than {MAX_THREADS_PER_BLOCK}",
                block[0], block[1], block[2]
            ));
        }
        if !(0..=MAX_SHARED_MEMORY_BYTES).contains(&i64::from(shared_memory_bytes)) {
            return Err(format!(
                "{shared_memory_bytes} bytes of shared memory is outside [0, {MAX_SHARED_MEMORY_BYTES}]"
            ));
        }
        // Every value is within [0, 2^31) now.
        Ok(LaunchConfig {
            grid: grid.map(|g| g as u32),
            block: block.map(|b| b as u32),
            shared_memory_bytes: shared_memory_bytes as u32,
        })
    }
}

/// What a device does; [`SelectedDevice`] adds the bookkeeping that both devices share.
/// Pointers are device pointers in the unified address space (the emulator's are host
/// pointers), so one `copy` serves every direction.
pub trait Device: Send + Sync {
    fn kind(&self) -> DeviceKind;

    /// `bytes` (more than zero) of device memory, ordered on `stream`; `host_shared` asks for
    /// memory the host may touch too (managed memory).
    ///
    /// # Safety
    /// `stream` is null or a live stream of this device.
    unsafe fn allocate(&self, bytes: usize, host_shared: bool, stream: Stream) -> Result<*mut c_void, DeviceError>;

    /// Frees what [`Device::allocate`] returned for `allocation`.
    ///
    /// # Safety
    /// `pointer` is live and was allocated as `allocation` says; `stream` as for `allocate`.
    unsafe fn free(&self, pointer: *mut c_void, allocation: Allocation, stream: Stream) -> Result<(), DeviceError>;

    /// # Safety
    /// Both ranges are live, `bytes` long, and do not overlap.
    unsafe fn copy(
        &self,
        destination: *mut c_void,
        source: *const c_void,
        bytes: usize,
        stream: Stream,
    ) -> Result<(), DeviceError>;

    /// Writes `count` copies of `pattern`.
    ///
    /// # Safety
    /// The range is live device memory.
    unsafe fn fill(
        &self,
        destination: *mut c_void,
        pattern: Fill,
        count: usize,
        stream: Stream,
    ) -> Result<(), DeviceError>;

    /// Loads a module image: PTX text ending in a NUL, or a binary the driver takes.
    /// `optimization_level` is the PTX JIT's (0 to 4), where the program chose one.
    fn load_module(&self, image: &[u8], optimization_level: Option<i32>) -> Result<ModuleHandle, DeviceError>;

    fn unload_module(&self, module: ModuleHandle) -> Result<(), DeviceError>;

    /// The kernel `name` of a loaded module.
    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle, DeviceError>;

    /// Runs a kernel; its error is the device's reason alone (the caller names the kernel).
    ///
    /// # Safety
    /// `params` points to one pointer per kernel parameter, each to that parameter's value, as
    /// `cuLaunchKernel` takes them; `extra` is null or as `cuLaunchKernel` takes it.
    unsafe fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
        stream: Stream,
    ) -> Result<(), String>;

    fn create_stream(&self) -> Result<Stream, DeviceError>;
    /// # Safety
    /// `stream` is a live stream of this device (for the next three too).
    unsafe fn destroy_stream(&self, stream: Stream) -> Result<(), DeviceError>;
    /// # Safety
    /// As for [`Device::destroy_stream`].
    unsafe fn synchronize_stream(&self, stream: Stream) -> Result<(), DeviceError>;
    /// # Safety
    /// `stream` and `event` are live, of this device.
    unsafe fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<(), DeviceError>;

    fn create_event(&self) -> Result<Event, DeviceError>;
    /// # Safety
    /// `event` is a live event of this device (for the next two too).
    unsafe fn destroy_event(&self, event: Event) -> Result<(), DeviceError>;
    /// # Safety
    /// As for [`Device::destroy_event`]; `stream` is null or live.
    unsafe fn record_event(&self, event: Event, stream: Stream) -> Result<(), DeviceError>;
    /// # Safety
    /// As for [`Device::destroy_event`].
    unsafe fn synchronize_event(&self, event: Event) -> Result<(), DeviceError>;

    /// Waits for all work on the device.
    fn synchronize(&self) -> Result<(), DeviceError>;

    /// The device's own GEMM, for products on memory the host cannot read (cuBLAS on the
    /// GPU); `None` where the host's GEMM reads device memory in place (the emulator, whose
    /// memory is host memory).
    fn gemm(&self) -> Option<&dyn DeviceGemm>;

    /// A point on the device's timeline after all work submitted so far (a timing event on
    /// the GPU; the host's clock on the emulator, where every call completes before it
    /// returns), for the time of each stage of a forward call.
    fn timestamp(&self) -> Result<Option<Event>, DeviceError>;

    /// Seconds from `start` to `end`, two timestamps of this device, once `end` has completed;
    /// both are destroyed.
    ///
    /// # Safety
    /// Both come from [`Device::timestamp`], and neither is used again.
    unsafe fn seconds_between(&self, start: Event, end: Event) -> Result<f64, DeviceError>;

    /// Destroys a timestamp that will not be measured.
    ///
    /// # Safety
    /// It comes from [`Device::timestamp`] and is not used again.
    unsafe fn discard_timestamp(&self, timestamp: Event);
}

/// How a live allocation was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub bytes: usize,
    pub host_shared: bool,
}

/// The live allocations of a device and the most bytes ever live at once.
#[derive(Default)]
struct MemoryLedger {
    live: HashMap<usize, Allocation>,
    current_bytes: usize,
    peak_bytes: usize,
}

/// What a device has done so far, for the run summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatistics {
    pub kind: DeviceKind,
    pub current_bytes: usize,
    pub peak_bytes: usize,
    pub launches: u64,
    /// Launches per kernel name, by name.
    pub launches_by_kernel: Vec<(String, u64)>,
}

/// A device with the bookkeeping both devices share: the allocation ledger, launch limits and
/// counters.
pub struct SelectedDevice {
    device: Box<dyn Device>,
    memory: Mutex<MemoryLedger>,
    launches: Mutex<BTreeMap<String, u64>>,
}

/// Locks a mutex even when a thread panicked while holding it: the guarded ledgers are
/// updated in single statements, so they stay consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SelectedDevice {
    pub fn new(device: Box<dyn Device>) -> SelectedDevice {
        SelectedDevice { device, memory: Mutex::default(), launches: Mutex::default() }
    }

    pub fn kind(&self) -> DeviceKind {
        self.device.kind()
    }

    /// `bytes` of device memory; zero bytes is the null pointer, as in MLIR's wrappers.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this device.
    pub unsafe fn allocate(&self, bytes: usize, host_shared: bool, stream: Stream) -> Result<*mut c_void, DeviceError> {
        if bytes == 0 {
            return Ok(std::ptr::null_mut());
        }
        let pointer = self.device.allocate(bytes, host_shared, stream)?;
        let mut memory = lock(&self.memory);
        memory.live.insert(pointer as usize, Allocation { bytes, host_shared });
        memory.current_bytes += bytes;
        memory.peak_bytes = memory.peak_bytes.max(memory.current_bytes);
        Ok(pointer)
    }

    /// Frees a pointer from [`SelectedDevice::allocate`]; null is nothing to free.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this device, and no pending work uses the memory
    /// other than on `stream`.
    pub unsafe fn free(&self, pointer: *mut c_void, stream: Stream) -> Result<(), DeviceError> {
        if pointer.is_null() {
            return Ok(());
        }
        let allocation = {
            let mut memory = lock(&self.memory);
            let allocation = memory
                .live
                .remove(&(pointer as usize))
                .ok_or(DeviceError::UnknownPointer { pointer: pointer as usize })?;
            memory.current_bytes -= allocation.bytes;
            allocation
        };
        self.device.free(pointer, allocation, stream)
    }

    /// Copies `bytes` in any direction (host or device memory on either side).
    ///
    /// # Safety
    /// As [`Device::copy`].
    pub unsafe fn copy(
        &self,
        destination: *mut c_void,
        source: *const c_void,
        bytes: usize,
        stream: Stream,
    ) -> Result<(), DeviceError> {
        if bytes == 0 {
            return Ok(());
        }
        self.device.copy(destination, source, bytes, stream)
    }

    /// # Safety
    /// As [`Device::fill`].
    pub unsafe fn fill(
        &self,
        destination: *mut c_void,
        pattern: Fill,
        count: usize,
        stream: Stream,
    ) -> Result<(), DeviceError> {
        if count == 0 {
            return Ok(());
        }
        self.device.fill(destination, pattern, count, stream)
    }

    /// A device copy of `bytes`, complete when this returns.
    pub fn upload(&'static self, bytes: &[u8]) -> Result<DeviceBuffer, DeviceError> {
        // SAFETY: a fresh allocation of `bytes.len()` bytes receives as many from a live slice,
        // on the default stream, which is then drained.
        unsafe {
            let pointer = self.allocate(bytes.len(), false, std::ptr::null_mut())?;
            let buffer = DeviceBuffer { device: self, pointer };
            self.copy(pointer, bytes.as_ptr().cast(), bytes.len(), std::ptr::null_mut())?;
            self.device.synchronize()?;
            Ok(buffer)
        }
    }

    /// Whether `pointer` is the start of a live allocation of this device.
    pub fn owns(&self, pointer: *const c_void) -> bool {
        lock(&self.memory).live.contains_key(&(pointer as usize))
    }

    /// Copies `into.len()` bytes at `source` to the host, complete when this returns.
    ///
    /// # Safety
    /// `source` is live device memory of at least `into.len()` bytes, and no pending work
    /// writes it.
    pub unsafe fn download(&self, source: *const c_void, into: &mut [u8]) -> Result<(), DeviceError> {
        self.copy(into.as_mut_ptr().cast(), source, into.len(), std::ptr::null_mut())?;
        self.device.synchronize()
    }

    /// Waits for all work on the device.
    pub fn synchronize(&self) -> Result<(), DeviceError> {
        self.device.synchronize()
    }

    /// `mgpuSetDefaultDevice`: a process has one device, the first.
    pub fn set_default_device(&self, ordinal: i32) -> Result<(), DeviceError> {
        if ordinal == 0 {
            Ok(())
        } else {
            Err(DeviceError::NoSuchDevice(ordinal))
        }
    }

    /// Launches `function` (named `name`, for errors and counters) after checking the
    /// configuration against CUDA's limits.
    ///
    /// # Safety
    /// As [`Device::launch`].
    #[allow(clippy::too_many_arguments)] // `cuLaunchKernel`'s, in its order, and the name.
    pub unsafe fn launch(
        &self,
        name: &str,
        function: FunctionHandle,
        grid: [i64; 3],
        block: [i64; 3],
        shared_memory_bytes: i32,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
        stream: Stream,
    ) -> Result<(), DeviceError> {
        let failed = |reason: String| DeviceError::Launch { kernel: name.to_owned(), reason };
        let config = LaunchConfig::new(grid, block, shared_memory_bytes).map_err(failed)?;
        self.device.launch(function, &config, params, extra, stream).map_err(failed)?;
        *lock(&self.launches).entry(name.to_owned()).or_default() += 1;
        Ok(())
    }

    pub fn device(&self) -> &dyn Device {
        self.device.as_ref()
    }

    /// Whether the device's products may use TF32 (`--tf32`); the emulator's are the host's
    /// GEMM in full single precision whatever is asked.
    pub fn set_tf32(&self, enabled: bool) -> Result<(), DeviceError> {
        self.device.gemm().map_or(Ok(()), |gemm| gemm.set_tf32(enabled))
    }

    pub fn statistics(&self) -> DeviceStatistics {
        let memory = lock(&self.memory);
        let launches = lock(&self.launches);
        DeviceStatistics {
            kind: self.kind(),
            current_bytes: memory.current_bytes,
            peak_bytes: memory.peak_bytes,
            launches: launches.values().sum(),
            launches_by_kernel: launches.iter().map(|(name, &count)| (name.clone(), count)).collect(),
        }
    }
}

/// Device memory owned by the host side (uploaded weights and inputs), freed when dropped.
pub struct DeviceBuffer {
    device: &'static SelectedDevice,
    pointer: *mut c_void,
}

// SAFETY: the buffer is an address in device memory that only device calls touch, and the
// device is shared by all threads.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// The device address (null for zero bytes).
    pub fn pointer(&self) -> *mut c_void {
        self.pointer
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // The buffer was allocated on the default stream and all its readers were synchronized
        // with before their results were read. A failing free has nowhere to be reported.
        // SAFETY: the pointer came from this device's `allocate` and is freed once.
        let _ = unsafe { self.device.free(self.pointer, std::ptr::null_mut()) };
    }
}

static SELECTED: OnceLock<SelectedDevice> = OnceLock::new();
/// Serializes selections, so that a device is opened once.
static SELECTING: Mutex<()> = Mutex::new(());

/// Selects the device of this process, once: selecting again the same kind is nothing,
/// another kind an error. A device that fails to start is not selected.
pub fn select(kind: DeviceKind) -> Result<&'static SelectedDevice, DeviceError> {
    let _selecting = lock(&SELECTING);
    if let Some(selected) = SELECTED.get() {
        return if selected.kind() == kind {
            Ok(selected)
        } else {
            Err(DeviceError::AlreadySelected { selected: selected.kind(), requested: kind })
        };
    }
    let device: Box<dyn Device> = match kind {
        DeviceKind::Cuda => Box::new(driver::CudaDriver::open()?),
        DeviceKind::Emulator => Box::new(emulator::Emulator::new()),
    };
    Ok(SELECTED.get_or_init(|| SelectedDevice::new(device)))
}

/// The selected device, selecting the CUDA device when none was.
pub fn current() -> Result<&'static SelectedDevice, DeviceError> {
    match SELECTED.get() {
        Some(selected) => Ok(selected),
        None => select(DeviceKind::Cuda),
    }
}

/// The selected device, if one was: what releases memory, streams and events uses, since
/// nothing was allocated on a device never selected.
pub fn selected() -> Option<&'static SelectedDevice> {
    SELECTED.get()
}

/// What the selected device has done, if one was selected.
pub fn statistics() -> Option<DeviceStatistics> {
    selected().map(SelectedDevice::statistics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_limits_are_cudas() {
        assert!(LaunchConfig::new([1, 1, 1], [1024, 1, 1], 0).is_ok());
        assert!(LaunchConfig::new([(1 << 31) - 1, 65535, 65535], [32, 32, 1], 48 * 1024).is_ok());
        let refused = [
            ([1, 1, 1], [1025, 1, 1], 0, "block x of 1025 threads is outside [1, 1024]"),
            ([1, 1, 1], [32, 33, 1], 0, "a block of 32x33x1 = 1056 threads is more than 1024"),
            ([1, 1, 1], [1, 1, 65], 0, "block z of 65 threads is outside [1, 64]"),
            ([1 << 31, 1, 1], [1, 1, 1], 0, "grid x of 2147483648 blocks is outside [1, 2147483647]"),
            ([1, 65536, 1], [1, 1, 1], 0, "grid y of 65536 blocks is outside [1, 65535]"),
            ([1, 1, 65536], [1, 1, 1], 0, "grid z of 65536 blocks is outside [1, 65535]"),
            ([0, 1, 1], [1, 1, 1], 0, "grid x of 0 blocks is outside [1, 2147483647]"),
            ([1, 1, 1], [1, 1, 1], 48 * 1024 + 1, "49153 bytes of shared memory is outside [0, 49152]"),
        ];
        for (grid, block, shared, reason) in refused {
            assert_eq!(LaunchConfig::new(grid, block, shared).unwrap_err(), reason);
        }
    }

    /// Startup errors are one line that ends by pointing to the emulator.
    #[test]
    fn device_errors_are_one_line() {
        for error in [
            DeviceError::NoDriver,
            DeviceError::NoDevice,
            DeviceError::DriverStart("CUDA_ERROR_UNKNOWN".into()),
            DeviceError::NoCublas,
            DeviceError::CublasTooOld { symbol: "cublasSgemmStridedBatched" },
            DeviceError::CublasStart("CUBLAS_STATUS_NOT_INITIALIZED: the library was not initialized".into()),
        ] {
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(message.ends_with("use --device emulator to run on the CPU)"), "{message}");
        }
    }
}
