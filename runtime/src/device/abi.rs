//! MLIR's CUDA-runtime-wrapper ABI (the `mgpu*` functions that `gpu-to-llvm` lowers host code
//! to), implemented on the selected device, so that a CUDA program runs on the driver or on
//! the emulator alike without `libmlir_cuda_runtime`.
//!
//! These functions cannot return errors: the first error of a forward call is recorded (see
//! [`crate::abi::take_error`]), and every later call that would use the device is a no-op
//! (allocations and lookups return null) until the forward function returns and its caller
//! reports the error. Releases (frees, stream and event destruction, module unloads) still run,
//! so that a failed image leaks nothing the next one needs.

use std::ffi::{c_char, c_void, CStr};

use super::module::{KernelFunction, LazyModule};
use super::{current, selected, DeviceError, Event, Fill, SelectedDevice, Stream};
use crate::abi::{error_pending, set_error};

/// Runs `call` on the selected device (selecting the CUDA device if none was) unless an error
/// is pending; records its error. Returns `idle` when it does not run or fails.
fn on_device<T>(idle: T, call: impl FnOnce(&'static SelectedDevice) -> Result<T, DeviceError>) -> T {
    if error_pending() {
        return idle;
    }
    match current().and_then(call) {
        Ok(value) => value,
        Err(error) => {
            set_error(error.to_string());
            idle
        }
    }
}

/// Runs a release on the selected device, even after an error; a device never selected holds
/// nothing to release.
fn releasing(call: impl FnOnce(&'static SelectedDevice) -> Result<(), DeviceError>) {
    if let Some(device) = selected() {
        if let Err(error) = call(device) {
            set_error(error.to_string());
        }
    }
}

/// A count from generated code, which must not be negative.
fn count(call: &'static str, value: i64) -> Result<usize, DeviceError> {
    usize::try_from(value).map_err(|_| DeviceError::Invalid { call, message: format!("negative size {value}") })
}

/// Keeps the PTX text of a module (NUL-terminated) for loading at its first function lookup:
/// this runs in a global constructor, before a device is selected.
///
/// # Safety
/// `ptx` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mgpuModuleLoadJIT(ptx: *const c_char, optimization_level: i32) -> *mut c_void {
    Box::into_raw(Box::new(LazyModule::from_ptx(CStr::from_ptr(ptx), Some(optimization_level)))).cast()
}

/// Keeps a module image of `size` bytes (PTX or a binary) for loading at its first function
/// lookup.
///
/// # Safety
/// `data` points to `size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn mgpuModuleLoad(data: *const c_void, size: i64) -> *mut c_void {
    let bytes = if data.is_null() || size <= 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(data.cast::<u8>(), size as usize)
    };
    Box::into_raw(Box::new(LazyModule::from_image(bytes))).cast()
}

/// Unloads a module (from a global destructor).
///
/// # Safety
/// `module` came from `mgpuModuleLoadJIT` or `mgpuModuleLoad` and is unloaded once; no kernel
/// of it runs or will be launched.
#[no_mangle]
pub unsafe extern "C" fn mgpuModuleUnload(module: *mut c_void) {
    if module.is_null() {
        return;
    }
    let module = Box::from_raw(module.cast::<LazyModule>());
    // At process exit, which is when generated code unloads, an error has no forward call to
    // be reported by, and the driver may already be shutting down.
    if let Some(device) = selected() {
        let _ = module.unload(device);
    }
}

/// The kernel `name` of `module`, loading the module on the device at the first lookup; null
/// (with the error recorded) when the module does not define it.
///
/// # Safety
/// `module` came from `mgpuModuleLoadJIT` or `mgpuModuleLoad` and is live; `name` is a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mgpuModuleGetFunction(module: *mut c_void, name: *const c_char) -> *mut c_void {
    let module = &*module.cast::<LazyModule>();
    let name = CStr::from_ptr(name).to_string_lossy();
    on_device(std::ptr::null_mut(), |device| Ok(module.function(device, &name)?.cast_mut().cast()))
}

/// Launches a kernel. `param_count` is not needed: the driver knows a kernel's parameters from
/// its module, and a CPU form reads as many as it has.
///
/// # Safety
/// `function` came from `mgpuModuleGetFunction` (or is null after its failure); `params` holds
/// one pointer per kernel parameter, each to the parameter's value; the stream is live.
#[no_mangle]
pub unsafe extern "C" fn mgpuLaunchKernel(
    function: *mut c_void,
    grid_x: i64,
    grid_y: i64,
    grid_z: i64,
    block_x: i64,
    block_y: i64,
    block_z: i64,
    shared_memory_bytes: i32,
    stream: Stream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    _param_count: i64,
) {
    on_device((), |device| {
        let Some(function) = function.cast::<KernelFunction>().as_ref() else {
            return Err(DeviceError::Invalid {
                call: "mgpuLaunchKernel",
                message: "no kernel (its lookup failed)".into(),
            });
        };
        let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
        // A loop nest over an empty tensor (no detections) has nothing to run; CUDA would
        // refuse its empty grid.
        if grid.contains(&0) {
            return Ok(());
        }
        device.launch(&function.name, function.handle, grid, block, shared_memory_bytes, params, extra, stream)
    })
}

#[no_mangle]
pub extern "C" fn mgpuStreamCreate() -> Stream {
    on_device(std::ptr::null_mut(), |device| device.device().create_stream())
}

/// # Safety
/// `stream` came from `mgpuStreamCreate` and is live.
#[no_mangle]
pub unsafe extern "C" fn mgpuStreamSynchronize(stream: Stream) {
    on_device((), |device| device.device().synchronize_stream(stream))
}

/// # Safety
/// `stream` came from `mgpuStreamCreate` and is destroyed once.
#[no_mangle]
pub unsafe extern "C" fn mgpuStreamDestroy(stream: Stream) {
    if !stream.is_null() {
        releasing(|device| device.device().destroy_stream(stream))
    }
}

/// # Safety
/// `stream` and `event` are live.
#[no_mangle]
pub unsafe extern "C" fn mgpuStreamWaitEvent(stream: Stream, event: Event) {
    on_device((), |device| device.device().stream_wait_event(stream, event))
}

#[no_mangle]
pub extern "C" fn mgpuEventCreate() -> Event {
    on_device(std::ptr::null_mut(), |device| device.device().create_event())
}

/// # Safety
/// `event` came from `mgpuEventCreate` and is destroyed once.
#[no_mangle]
pub unsafe extern "C" fn mgpuEventDestroy(event: Event) {
    if !event.is_null() {
        releasing(|device| device.device().destroy_event(event))
    }
}

/// # Safety
/// `event` is live.
#[no_mangle]
pub unsafe extern "C" fn mgpuEventSynchronize(event: Event) {
    on_device((), |device| device.device().synchronize_event(event))
}

/// # Safety
/// `event` is live; `stream` is null or live.
#[no_mangle]
pub unsafe extern "C" fn mgpuEventRecord(event: Event, stream: Stream) {
    on_device((), |device| device.device().record_event(event, stream))
}

/// `bytes` of device memory (null for zero bytes, or after an error), ordered on `stream`;
/// `host_shared` (non-zero) asks for memory the host can touch too.
///
/// # Safety
/// `stream` is null or live.
#[no_mangle]
pub unsafe extern "C" fn mgpuMemAlloc(bytes: i64, stream: Stream, host_shared: i8) -> *mut c_void {
    on_device(std::ptr::null_mut(), |device| device.allocate(count("mgpuMemAlloc", bytes)?, host_shared != 0, stream))
}

/// # Safety
/// `pointer` came from `mgpuMemAlloc` (or is null) and is freed once; `stream` is null or live.
#[no_mangle]
pub unsafe extern "C" fn mgpuMemFree(pointer: *mut c_void, stream: Stream) {
    releasing(|device| device.free(pointer, stream))
}

/// Copies `bytes` in any direction: host and device addresses are one space.
///
/// # Safety
/// Both ranges are live and `bytes` long.
#[no_mangle]
pub unsafe extern "C" fn mgpuMemcpy(destination: *mut c_void, source: *const c_void, bytes: i64, stream: Stream) {
    on_device((), |device| device.copy(destination, source, count("mgpuMemcpy", bytes)?, stream))
}

/// # Safety
/// `destination` holds `count` 32-bit words of device memory.
#[no_mangle]
pub unsafe extern "C" fn mgpuMemset32(destination: *mut c_void, value: i32, words: i64, stream: Stream) {
    on_device((), |device| device.fill(destination, Fill::U32(value as u32), count("mgpuMemset32", words)?, stream))
}

/// # Safety
/// `destination` holds `count` 16-bit words of device memory.
#[no_mangle]
pub unsafe extern "C" fn mgpuMemset16(destination: *mut c_void, value: i16, words: i64, stream: Stream) {
    on_device((), |device| device.fill(destination, Fill::U16(value as u16), count("mgpuMemset16", words)?, stream))
}

/// `memref.alloc` in a CUDA program's host code (`finalize-memref-to-llvm` with generic
/// functions): every buffer the network computes is device memory.
///
/// # Safety
/// Called by generated code.
#[no_mangle]
pub unsafe extern "C" fn _mlir_memref_to_llvm_alloc(bytes: u64) -> *mut c_void {
    on_device(std::ptr::null_mut(), |device| device.allocate(count("_mlir_memref_to_llvm_alloc", bytes as i64)?, false, std::ptr::null_mut()))
}

/// An aligned `memref.alloc`: device allocations are aligned to 256 bytes (the emulator's to
/// [`super::emulator::ALIGNMENT`]), which covers what generated code asks for.
///
/// # Safety
/// Called by generated code.
#[no_mangle]
pub unsafe extern "C" fn _mlir_memref_to_llvm_aligned_alloc(alignment: u64, bytes: u64) -> *mut c_void {
    if alignment as usize > super::emulator::ALIGNMENT {
        set_error(format!("an allocation aligned to {alignment} bytes (at most {} are)", super::emulator::ALIGNMENT));
        return std::ptr::null_mut();
    }
    _mlir_memref_to_llvm_alloc(bytes)
}

/// `memref.dealloc` in a CUDA program's host code.
///
/// # Safety
/// `pointer` came from [`_mlir_memref_to_llvm_alloc`] (or is null) and is freed once.
#[no_mangle]
pub unsafe extern "C" fn _mlir_memref_to_llvm_free(pointer: *mut c_void) {
    releasing(|device| device.free(pointer, std::ptr::null_mut()))
}

#[no_mangle]
pub extern "C" fn mgpuSetDefaultDevice(ordinal: i32) {
    on_device((), |device| device.set_default_device(ordinal))
}

macro_rules! symbols {
    ($($function:ident),* $(,)?) => {
        /// The `mgpu*` functions by C symbol, for a JIT to bind.
        pub fn symbols() -> Vec<(&'static str, *mut ())> {
            vec![$((stringify!($function), $function as *mut ())),*]
        }
    };
}

symbols![
    _mlir_memref_to_llvm_alloc,
    _mlir_memref_to_llvm_aligned_alloc,
    _mlir_memref_to_llvm_free,
    mgpuModuleLoadJIT,
    mgpuModuleLoad,
    mgpuModuleUnload,
    mgpuModuleGetFunction,
    mgpuLaunchKernel,
    mgpuStreamCreate,
    mgpuStreamSynchronize,
    mgpuStreamDestroy,
    mgpuStreamWaitEvent,
    mgpuEventCreate,
    mgpuEventDestroy,
    mgpuEventSynchronize,
    mgpuEventRecord,
    mgpuMemAlloc,
    mgpuMemFree,
    mgpuMemcpy,
    mgpuMemset32,
    mgpuMemset16,
    mgpuSetDefaultDevice,
];
