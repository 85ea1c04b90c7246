//! The CPU emulator (`--device emulator`): device memory is host memory, and each kernel runs
//! as its CPU-compiled form, which the program registers by name
//! ([`register_emulated_kernels`]).
//!
//! A launch runs every thread of every block: the blocks in parallel (CUDA promises no order
//! between blocks, so a correct kernel cannot tell), the threads of a block one after the
//! other, x fastest. That is CUDA's semantics only for kernels without barriers: a thread runs
//! to its end before the next starts, so a `gpu.barrier` cannot be honoured, and a kernel with
//! barriers must be split at them into several kernels before it can be emulated. Streams and
//! events are tokens: every call completes before it returns.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use rayon::prelude::*;

use super::{
    lock, Allocation, Device, DeviceError, DeviceGemm, DeviceKind, Event, Fill, FunctionHandle, LaunchConfig,
    ModuleHandle, Stream,
};

/// A kernel's CPU form. `ids` holds 12 values: the block id x, y, z; the thread id x, y, z;
/// the grid's size in blocks x, y, z; the block's size in threads x, y, z. `params` is the
/// launch's: one pointer per kernel parameter, each to that parameter's value.
pub type EmulatedKernel = unsafe extern "C" fn(ids: *const i64, params: *mut *mut c_void);

/// One entry of the table generated code exports (`mrc_emulated_kernels`).
#[repr(C)]
pub struct EmulatedKernelEntry {
    /// The kernel's name, NUL-terminated, as in its module's PTX.
    pub name: *const c_char,
    pub function: EmulatedKernel,
}

/// `const EmulatedKernelEntry* mrc_emulated_kernels(i64* count_out)`: the table of CPU forms
/// a CUDA program exports, and its length.
pub type EmulatedKernelTable = unsafe extern "C" fn(count: *mut i64) -> *const EmulatedKernelEntry;

/// Device memory is aligned as generously as `cuMemAlloc`'s (256 bytes there; 64 is a cache
/// line and more than any element type needs).
pub(crate) const ALIGNMENT: usize = 64;

/// The CPU forms of kernels, by name, for every emulator of the process.
static EMULATED_KERNELS: RwLock<Option<HashMap<String, EmulatedKernel>>> = RwLock::new(None);

/// Registers the CPU forms of `table` by name (a later registration of a name replaces the
/// earlier); returns how many it registered.
///
/// # Safety
/// `table` returns a pointer to `*count` entries (or null with a count of zero), each name a
/// NUL-terminated string, each function a kernel's CPU form; the table outlives the process's
/// launches.
pub unsafe fn register_emulated_kernels(table: EmulatedKernelTable) -> usize {
    let mut count = 0_i64;
    let entries = table(&mut count);
    if entries.is_null() || count <= 0 {
        return 0;
    }
    let entries = std::slice::from_raw_parts(entries, count as usize);
    let mut kernels = EMULATED_KERNELS.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let kernels = kernels.get_or_insert_with(HashMap::new);
    for entry in entries {
        kernels.insert(CStr::from_ptr(entry.name).to_string_lossy().into_owned(), entry.function);
    }
    entries.len()
}

fn emulated_kernel(name: &str) -> Option<EmulatedKernel> {
    EMULATED_KERNELS.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref()?.get(name).copied()
}

/// The kernels a PTX text defines: the names of its `.entry <name>(` directives.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut entries = vec![];
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry") {
        rest = &rest[at + ".entry".len()..];
        // `.entry` is a directive only where a blank follows it (not `.entry_x`).
        if !rest.starts_with(|c: char| c.is_whitespace()) {
            continue;
        }
        let name_and_after = rest.trim_start();
        let length =
            name_and_after.find(|c: char| !(c.is_alphanumeric() || "_$%.".contains(c))).unwrap_or(name_and_after.len());
        let (name, after) = name_and_after.split_at(length);
        if !name.is_empty() && after.trim_start().starts_with('(') {
            entries.push(name.to_owned());
        }
    }
    entries
}

/// The CPU emulator.
pub struct Emulator {
    /// The kernels each loaded module defines; `None` once unloaded.
    modules: Mutex<Vec<Option<Vec<String>>>>,
    /// The CPU forms handed out by [`Device::function`], by handle.
    functions: Mutex<Vec<EmulatedKernel>>,
    /// Source of distinct stream and event tokens.
    tokens: AtomicUsize,
}

impl Default for Emulator {
    fn default() -> Self {
        Emulator::new()
    }
}

impl Emulator {
    pub fn new() -> Emulator {
        Emulator { modules: Mutex::default(), functions: Mutex::default(), tokens: AtomicUsize::new(1) }
    }

    /// A distinct non-null token (never dereferenced).
    fn token(&self) -> *mut c_void {
        (self.tokens.fetch_add(1, Ordering::Relaxed) * ALIGNMENT) as *mut c_void
    }
}

/// The launch's parameters, shared by the threads that run its blocks: kernels only read
/// them.
struct Params(*mut *mut c_void);
// SAFETY: see above; the pointed-to values outlive the launch, which returns after all blocks.
unsafe impl Sync for Params {}

impl Params {
    /// Through a method, so that closures capture the whole (`Sync`) wrapper, not its field.
    fn pointer(&self) -> *mut *mut c_void {
        self.0
    }
}

impl Device for Emulator {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Emulator
    }

    unsafe fn allocate(&self, bytes: usize, _host_shared: bool, _stream: Stream) -> Result<*mut c_void, DeviceError> {
        let layout =
            std::alloc::Layout::from_size_align(bytes, ALIGNMENT).map_err(|_| DeviceError::OutOfMemory { bytes })?;
        let pointer = std::alloc::alloc(layout);
        if pointer.is_null() {
            return Err(DeviceError::OutOfMemory { bytes });
        }
        Ok(pointer.cast())
    }

    unsafe fn free(&self, pointer: *mut c_void, allocation: Allocation, _stream: Stream) -> Result<(), DeviceError> {
        // The layout was valid when the same size was allocated.
        std::alloc::dealloc(pointer.cast(), std::alloc::Layout::from_size_align_unchecked(allocation.bytes, ALIGNMENT));
        Ok(())
    }

    unsafe fn copy(
        &self,
        destination: *mut c_void,
        source: *const c_void,
        bytes: usize,
        _stream: Stream,
    ) -> Result<(), DeviceError> {
        std::ptr::copy(source.cast::<u8>(), destination.cast::<u8>(), bytes);
        Ok(())
    }

    unsafe fn fill(
        &self,
        destination: *mut c_void,
        pattern: Fill,
        count: usize,
        _stream: Stream,
    ) -> Result<(), DeviceError> {
        let misaligned = |width: usize| DeviceError::Invalid {
            call: "memset",
            message: format!("{destination:p} is not aligned to the {width}-byte pattern"),
        };
        match pattern {
            Fill::U32(value) => {
                if !(destination as usize).is_multiple_of(4) {
                    return Err(misaligned(4));
                }
                std::slice::from_raw_parts_mut(destination.cast::<u32>(), count).fill(value);
            }
            Fill::U16(value) => {
                if !(destination as usize).is_multiple_of(2) {
                    return Err(misaligned(2));
                }
                std::slice::from_raw_parts_mut(destination.cast::<u16>(), count).fill(value);
            }
        }
        Ok(())
    }

    fn load_module(&self, image: &[u8], _optimization_level: Option<i32>) -> Result<ModuleHandle, DeviceError> {
        let text = image.split(|&b| b == 0).next().unwrap_or_default();
        let entries = ptx_entries(&String::from_utf8_lossy(text));
        let mut modules = lock(&self.modules);
        modules.push(Some(entries));
        Ok(ModuleHandle(modules.len() - 1))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<(), DeviceError> {
        if let Some(slot) = lock(&self.modules).get_mut(module.0) {
            *slot = None;
        }
        Ok(())
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle, DeviceError> {
        let defined = lock(&self.modules)
            .get(module.0)
            .and_then(Option::as_ref)
            .is_some_and(|entries| entries.iter().any(|e| e == name));
        if !defined {
            return Err(DeviceError::NotAnEntry { name: name.to_owned() });
        }
        let kernel = emulated_kernel(name).ok_or_else(|| DeviceError::NoEmulatedKernel { name: name.to_owned() })?;
        let mut functions = lock(&self.functions);
        functions.push(kernel);
        Ok(FunctionHandle(functions.len() - 1))
    }

    unsafe fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
        _stream: Stream,
    ) -> Result<(), String> {
        if !extra.is_null() {
            return Err("the emulator takes kernel parameters through `params`, not `extra`".into());
        }
        if config.shared_memory_bytes != 0 {
            return Err(format!(
                "the emulator cannot give a kernel's CPU form dynamic shared memory ({} bytes asked)",
                config.shared_memory_bytes
            ));
        }
        let kernel = *lock(&self.functions).get(function.0).ok_or("not a kernel of the emulator")?;
        let [grid_x, grid_y, grid_z] = config.grid.map(u64::from);
        let [block_x, block_y, block_z] = config.block.map(i64::from);
        let params = Params(params);
        (0..grid_x * grid_y * grid_z).into_par_iter().for_each(|block| {
            let (x, y, z) = (block % grid_x, block / grid_x % grid_y, block / (grid_x * grid_y));
            let mut ids = [
                x as i64,
                y as i64,
                z as i64,
                0,
                0,
                0,
                grid_x as i64,
                grid_y as i64,
                grid_z as i64,
                block_x,
                block_y,
                block_z,
            ];
            for thread_z in 0..block_z {
                for thread_y in 0..block_y {
                    for thread_x in 0..block_x {
                        ids[3..6].copy_from_slice(&[thread_x, thread_y, thread_z]);
                        // SAFETY: the launch's contract: the parameters are this kernel's.
                        unsafe { kernel(ids.as_ptr(), params.pointer()) };
                    }
                }
            }
        });
        Ok(())
    }

    fn create_stream(&self) -> Result<Stream, DeviceError> {
        Ok(self.token())
    }

    unsafe fn destroy_stream(&self, _stream: Stream) -> Result<(), DeviceError> {
        Ok(())
    }

    unsafe fn synchronize_stream(&self, _stream: Stream) -> Result<(), DeviceError> {
        Ok(())
    }

    unsafe fn stream_wait_event(&self, _stream: Stream, _event: Event) -> Result<(), DeviceError> {
        Ok(())
    }

    fn create_event(&self) -> Result<Event, DeviceError> {
        Ok(self.token())
    }

    unsafe fn destroy_event(&self, _event: Event) -> Result<(), DeviceError> {
        Ok(())
    }

    unsafe fn record_event(&self, _event: Event, _stream: Stream) -> Result<(), DeviceError> {
        Ok(())
    }

    unsafe fn synchronize_event(&self, _event: Event) -> Result<(), DeviceError> {
        Ok(())
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Device memory is host memory: the runtime's host GEMM computes products in place.
    fn gemm(&self) -> Option<&dyn DeviceGemm> {
        None
    }

    /// The host's clock: every call has completed when it returns.
    fn timestamp(&self) -> Result<Option<Event>, DeviceError> {
        Ok(Some(Box::into_raw(Box::new(std::time::Instant::now())).cast()))
    }

    unsafe fn seconds_between(&self, start: Event, end: Event) -> Result<f64, DeviceError> {
        let (start, end) = (Box::from_raw(start.cast::<std::time::Instant>()), Box::from_raw(end.cast::<std::time::Instant>()));
        Ok(end.saturating_duration_since(*start).as_secs_f64())
    }

    unsafe fn discard_timestamp(&self, timestamp: Event) {
        drop(Box::from_raw(timestamp.cast::<std::time::Instant>()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::SelectedDevice;
    use super::*;

    /// A fresh emulator with its own ledger, so that counts are exact while other tests run.
    fn emulator() -> &'static SelectedDevice {
        Box::leak(Box::new(SelectedDevice::new(Box::new(Emulator::new()))))
    }

    #[test]
    fn ptx_entries_are_the_entry_directives() {
        let ptx = ".version 8.0\n.visible .entry saxpy(\n .param .u64 a)\n{}\n.entry  fill_2 (\n)\n.func helper(\n.entry_point x(\n// .entry\n";
        assert_eq!(ptx_entries(ptx), ["saxpy", "fill_2"]);
    }

    #[test]
    fn memory_round_trips_and_peak_bytes_are_tracked() {
        let device = emulator();
        let null = std::ptr::null_mut();
        let values: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let first = device.upload(bytemuck::cast_slice(&values)).unwrap();
        assert_eq!(first.pointer() as usize % ALIGNMENT, 0);
        unsafe {
            let second = device.allocate(400, false, null).unwrap();
            assert_eq!(device.statistics().current_bytes, 800);
            device.copy(second, first.pointer(), 400, null).unwrap();
            let mut back = vec![0_f32; 100];
            device.download(second, bytemuck::cast_slice_mut(&mut back)).unwrap();
            assert_eq!(back, values);

            device.fill(second, Fill::U32(7), 50, null).unwrap();
            device.fill(second.byte_add(200), Fill::U16(0xabcd), 4, null).unwrap();
            let mut words = vec![0_u32; 100];
            device.download(second, bytemuck::cast_slice_mut(&mut words)).unwrap();
            assert_eq!(&words[..50], &[7; 50]);
            assert_eq!(&words[50..52], &[0xabcd_abcd; 2]);
            assert_eq!(words[52], values[52].to_bits());

            assert!(device.fill(second.byte_add(1), Fill::U32(0), 1, null).is_err());

            device.free(second, null).unwrap();
            assert_eq!(device.free(second, null), Err(DeviceError::UnknownPointer { pointer: second as usize }));
        }
        let after_free = device.statistics();
        assert_eq!((after_free.current_bytes, after_free.peak_bytes), (400, 800));
        drop(first);
        assert_eq!(device.statistics().current_bytes, 0);
        assert_eq!(device.statistics().peak_bytes, 800);
        // SAFETY: zero bytes is the null pointer, and freeing null is nothing.
        unsafe {
            assert!(device.allocate(0, false, null).unwrap().is_null());
            device.free(null, null).unwrap();
        }
    }
}
