//! The NVIDIA driver (`--device cuda`), through cudarc's bindings loaded at run time: building
//! needs no CUDA toolkit, and a machine without a driver gets [`DeviceError::NoDriver`].
//!
//! Device 0 in its primary context; memory from the device's default pool, stream-ordered
//! (`cuMemAllocAsync`), managed memory where generated code asks for host-shared memory; PTX is
//! compiled by the driver's JIT when a module is loaded; products by cuBLAS ([`Cublas`]),
//! which the device needs to start.

use std::cell::Cell;
use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::sys::{self, CUresult};

use super::cublas::Cublas;
use super::{
    Allocation, BatchedProduct, Device, DeviceError, DeviceGemm, DeviceKind, Event, Fill, FunctionHandle, LaunchConfig,
    ModuleHandle, Stream,
};

/// The driver functions this device calls, as cudarc resolves them: cudarc panics at the first
/// call of a function the library lacks, so their presence is checked when the device opens.
const DRIVER_FUNCTIONS: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuDeviceGetDefaultMemPool",
    "cuMemPoolSetAttribute",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemAllocManaged",
    "cuMemFree_v2",
    "cuMemcpyAsync",
    "cuMemsetD32Async",
    "cuMemsetD16Async",
    "cuModuleLoadDataEx",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// The CUDA driver's error codes as names and messages ("CUDA_ERROR_OUT_OF_MEMORY: out of
/// memory").
fn describe(result: CUresult) -> String {
    // SAFETY: the driver returns static strings for every code it knows.
    unsafe {
        let (mut name, mut text) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        if sys::cuGetErrorName(result, name.as_mut_ptr()) != CUresult::CUDA_SUCCESS
            || sys::cuGetErrorString(result, text.as_mut_ptr()) != CUresult::CUDA_SUCCESS
        {
            return format!("CUDA error {}", result as u32);
        }
        let (name, text) = (std::ffi::CStr::from_ptr(name.assume_init()), std::ffi::CStr::from_ptr(text.assume_init()));
        format!("{}: {}", name.to_string_lossy(), text.to_string_lossy())
    }
}

fn check(call: &'static str, result: CUresult) -> Result<(), DeviceError> {
    match result {
        CUresult::CUDA_SUCCESS => Ok(()),
        _ => Err(DeviceError::Driver { call, message: describe(result) }),
    }
}

thread_local! {
    /// The context current on this thread, as last set here.
    static CURRENT_CONTEXT: Cell<usize> = const { Cell::new(0) };
}

/// The first GPU, in its primary context, with a cuBLAS handle there.
pub struct CudaDriver {
    context: sys::CUcontext,
    cublas: Cublas,
    /// Streams given back by `destroy_stream`, handed out again by `create_stream`: MLIR's
    /// lowering creates and destroys a stream around every launch, and creating one costs far
    /// more than a small kernel.
    idle_streams: std::sync::Mutex<Vec<usize>>,
}

// SAFETY: the driver API is thread-safe; a context may be current on any number of threads.
unsafe impl Send for CudaDriver {}
unsafe impl Sync for CudaDriver {}

impl CudaDriver {
    /// Whether the driver library (`libcuda.so.1` or another of its names) can be loaded.
    pub fn library_present() -> bool {
        // SAFETY: loading the library runs its initializers, which expect nothing of us.
        unsafe { sys::is_culib_present() }
    }

    /// Loads the driver library, initializes it, opens device 0 and loads cuBLAS there: every
    /// way this can fail is an error that says what is missing.
    pub fn open() -> Result<CudaDriver, DeviceError> {
        // cudarc panics at the first call when the library is missing: look first.
        if !CudaDriver::library_present() {
            return Err(DeviceError::NoDriver);
        }
        for &symbol in DRIVER_FUNCTIONS {
            // SAFETY: the library is present (checked above); looking a symbol up calls nothing.
            if unsafe { sys::culib().get::<*const c_void>(symbol.as_bytes()) }.is_err() {
                return Err(DeviceError::DriverTooOld { symbol });
            }
        }
        // SAFETY: every function called is present, with cudarc's declared signature.
        unsafe {
            match sys::cuInit(0) {
                CUresult::CUDA_SUCCESS => {}
                CUresult::CUDA_ERROR_NO_DEVICE => return Err(DeviceError::NoDevice),
                failure => return Err(DeviceError::DriverStart(describe(failure))),
            }
            let mut count = 0;
            check("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))?;
            if count == 0 {
                return Err(DeviceError::NoDevice);
            }
            let mut device = MaybeUninit::uninit();
            check("cuDeviceGet", sys::cuDeviceGet(device.as_mut_ptr(), 0))?;
            let device = device.assume_init();
            let mut context = MaybeUninit::uninit();
            check("cuDevicePrimaryCtxRetain", sys::cuDevicePrimaryCtxRetain(context.as_mut_ptr(), device))?;
            let context = context.assume_init();
            bind(context)?;
            // The handle belongs to the context, which must be current to create it.
            let driver = CudaDriver { context, cublas: Cublas::create()?, idle_streams: std::sync::Mutex::default() };
            // The default pool returns freed memory to the system at every synchronization
            // unless told to keep it: every image would allocate its tensors anew.
            let mut pool = MaybeUninit::uninit();
            check("cuDeviceGetDefaultMemPool", sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), device))?;
            let mut keep_everything = u64::MAX;
            check(
                "cuMemPoolSetAttribute",
                sys::cuMemPoolSetAttribute(
                    pool.assume_init(),
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep_everything as *mut u64).cast(),
                ),
            )?;
            Ok(driver)
        }
    }

    /// Makes the context current on the calling thread (generated code may run on any).
    fn bind(&self) -> Result<(), DeviceError> {
        bind(self.context)
    }
}

/// Makes `context`, retained for the life of the process, current on the calling thread.
fn bind(context: sys::CUcontext) -> Result<(), DeviceError> {
    if CURRENT_CONTEXT.get() != context as usize {
        // SAFETY: the context is retained for the life of the process.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(context) })?;
        CURRENT_CONTEXT.set(context as usize);
    }
    Ok(())
}

impl Device for CudaDriver {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }

    unsafe fn allocate(&self, bytes: usize, host_shared: bool, stream: Stream) -> Result<*mut c_void, DeviceError> {
        self.bind()?;
        let mut pointer = 0;
        if host_shared {
            let global = sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL as u32;
            check("cuMemAllocManaged", sys::cuMemAllocManaged(&mut pointer, bytes, global))?;
        } else {
            match sys::cuMemAllocAsync(&mut pointer, bytes, stream.cast()) {
                CUresult::CUDA_ERROR_OUT_OF_MEMORY => return Err(DeviceError::OutOfMemory { bytes }),
                result => check("cuMemAllocAsync", result)?,
            }
        }
        Ok(pointer as *mut c_void)
    }

    unsafe fn free(&self, pointer: *mut c_void, allocation: Allocation, stream: Stream) -> Result<(), DeviceError> {
        self.bind()?;
        if allocation.host_shared {
            check("cuMemFree", sys::cuMemFree_v2(pointer as u64))
        } else {
            check("cuMemFreeAsync", sys::cuMemFreeAsync(pointer as u64, stream.cast()))
        }
    }

    unsafe fn copy(
        &self,
        destination: *mut c_void,
        source: *const c_void,
        bytes: usize,
        stream: Stream,
    ) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuMemcpyAsync", sys::cuMemcpyAsync(destination as u64, source as u64, bytes, stream.cast()))
    }

    unsafe fn fill(
        &self,
        destination: *mut c_void,
        pattern: Fill,
        count: usize,
        stream: Stream,
    ) -> Result<(), DeviceError> {
        self.bind()?;
        match pattern {
            Fill::U32(value) => {
                check("cuMemsetD32Async", sys::cuMemsetD32Async(destination as u64, value, count, stream.cast()))
            }
            Fill::U16(value) => {
                check("cuMemsetD16Async", sys::cuMemsetD16Async(destination as u64, value, count, stream.cast()))
            }
        }
    }

    fn load_module(&self, image: &[u8], optimization_level: Option<i32>) -> Result<ModuleHandle, DeviceError> {
        self.bind()?;
        // The JIT's error log says which PTX line it refused; the error code alone does not.
        let mut log = vec![0_u8; 16 * 1024];
        let mut options =
            vec![sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        // Option values are passed as pointer-sized words holding the value itself.
        let mut values: Vec<*mut c_void> = vec![log.as_mut_ptr().cast(), log.len() as *mut c_void];
        if let Some(level) = optimization_level {
            options.push(sys::CUjit_option::CU_JIT_OPTIMIZATION_LEVEL);
            values.push(level.clamp(0, 4) as usize as *mut c_void);
        }
        let mut module = MaybeUninit::uninit();
        // SAFETY: the image ends in a NUL (PTX) or is a binary image; the log buffer outlives
        // the call, and the options and values match in number.
        let result = unsafe {
            sys::cuModuleLoadDataEx(
                module.as_mut_ptr(),
                image.as_ptr().cast(),
                options.len() as u32,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        if result != CUresult::CUDA_SUCCESS {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]);
            let message =
                if log.trim().is_empty() { describe(result) } else { format!("{}: {}", describe(result), log.trim()) };
            return Err(DeviceError::Driver { call: "cuModuleLoadDataEx", message });
        }
        // SAFETY: the call succeeded.
        Ok(ModuleHandle(unsafe { module.assume_init() } as usize))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<(), DeviceError> {
        self.bind()?;
        // SAFETY: the handle came from `load_module` and is unloaded once.
        check("cuModuleUnload", unsafe { sys::cuModuleUnload(module.0 as sys::CUmodule) })
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle, DeviceError> {
        self.bind()?;
        let c_name = std::ffi::CString::new(name).map_err(|_| DeviceError::NotAnEntry { name: name.to_owned() })?;
        let mut function = MaybeUninit::uninit();
        // SAFETY: the module is loaded; the name is NUL-terminated.
        match unsafe { sys::cuModuleGetFunction(function.as_mut_ptr(), module.0 as sys::CUmodule, c_name.as_ptr()) } {
            CUresult::CUDA_ERROR_NOT_FOUND => Err(DeviceError::NotAnEntry { name: name.to_owned() }),
            // SAFETY: the call succeeded.
            result => check("cuModuleGetFunction", result)
                .map(|()| FunctionHandle(unsafe { function.assume_init() } as usize)),
        }
    }

    unsafe fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
        stream: Stream,
    ) -> Result<(), String> {
        self.bind().map_err(|e| e.to_string())?;
        let ([gx, gy, gz], [bx, by, bz]) = (config.grid, config.block);
        let result = sys::cuLaunchKernel(
            function.0 as sys::CUfunction,
            gx,
            gy,
            gz,
            bx,
            by,
            bz,
            config.shared_memory_bytes,
            stream.cast(),
            params,
            extra,
        );
        check("cuLaunchKernel", result).map_err(|e| e.to_string())
    }

    fn create_stream(&self) -> Result<Stream, DeviceError> {
        if let Some(stream) = super::lock(&self.idle_streams).pop() {
            return Ok(stream as Stream);
        }
        self.bind()?;
        let mut stream = MaybeUninit::uninit();
        // Non-blocking, as MLIR's wrappers make them: the legacy default stream (what uploads
        // use) does not serialize with them; uploads and downloads synchronize the context.
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        // SAFETY: plain creation.
        unsafe {
            check("cuStreamCreate", sys::cuStreamCreate(stream.as_mut_ptr(), flags))?;
            Ok(stream.assume_init().cast())
        }
    }

    /// Keeps the stream for the next `create_stream` (streams go with the context): work still
    /// queued on it runs before what is queued there next, more order than a fresh stream
    /// would give, never less.
    unsafe fn destroy_stream(&self, stream: Stream) -> Result<(), DeviceError> {
        super::lock(&self.idle_streams).push(stream as usize);
        Ok(())
    }

    unsafe fn synchronize_stream(&self, stream: Stream) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuStreamSynchronize", sys::cuStreamSynchronize(stream.cast()))
    }

    unsafe fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuStreamWaitEvent", sys::cuStreamWaitEvent(stream.cast(), event.cast(), 0))
    }

    fn create_event(&self) -> Result<Event, DeviceError> {
        self.bind()?;
        let mut event = MaybeUninit::uninit();
        // Events only order work here; timing them would cost at every record.
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: plain creation.
        unsafe {
            check("cuEventCreate", sys::cuEventCreate(event.as_mut_ptr(), flags))?;
            Ok(event.assume_init().cast())
        }
    }

    unsafe fn destroy_event(&self, event: Event) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuEventDestroy", sys::cuEventDestroy_v2(event.cast()))
    }

    unsafe fn record_event(&self, event: Event, stream: Stream) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuEventRecord", sys::cuEventRecord(event.cast(), stream.cast()))
    }

    unsafe fn synchronize_event(&self, event: Event) -> Result<(), DeviceError> {
        self.bind()?;
        check("cuEventSynchronize", sys::cuEventSynchronize(event.cast()))
    }

    /// An event with timing on the default stream. The generated code's streams are
    /// synchronized before it goes on, and cuBLAS runs on the default stream, so the event
    /// follows everything submitted so far.
    fn timestamp(&self) -> Result<Option<Event>, DeviceError> {
        self.bind()?;
        let mut event = MaybeUninit::uninit();
        // SAFETY: plain creation, then a record on the default stream.
        unsafe {
            check("cuEventCreate", sys::cuEventCreate(event.as_mut_ptr(), sys::CUevent_flags::CU_EVENT_DEFAULT as u32))?;
            let event = event.assume_init();
            check("cuEventRecord", sys::cuEventRecord(event, std::ptr::null_mut()))?;
            Ok(Some(event.cast()))
        }
    }

    unsafe fn seconds_between(&self, start: Event, end: Event) -> Result<f64, DeviceError> {
        self.bind()?;
        let mut milliseconds = 0_f32;
        let measured = check("cuEventSynchronize", sys::cuEventSynchronize(end.cast()))
            .and_then(|()| check("cuEventElapsedTime", sys::cuEventElapsedTime(&mut milliseconds, start.cast(), end.cast())));
        check("cuEventDestroy", sys::cuEventDestroy_v2(start.cast()))?;
        check("cuEventDestroy", sys::cuEventDestroy_v2(end.cast()))?;
        measured.map(|()| f64::from(milliseconds) / 1e3)
    }

    unsafe fn discard_timestamp(&self, timestamp: Event) {
        // A failure leaves an event behind; nothing else depends on it.
        let _ = self.bind().map(|()| sys::cuEventDestroy_v2(timestamp.cast()));
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        self.bind()?;
        // SAFETY: the context is current.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    fn gemm(&self) -> Option<&dyn DeviceGemm> {
        Some(self)
    }
}

impl DeviceGemm for CudaDriver {
    unsafe fn batched_product(
        &self,
        product: &BatchedProduct,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) -> Result<(), DeviceError> {
        self.bind()?;
        self.cublas.sgemm(product, a, b, c)?;
        // Generated code's kernels run on non-blocking streams, which do not wait for the
        // default stream that cuBLAS ran on: the result must be complete before they read it.
        check("cuStreamSynchronize", sys::cuStreamSynchronize(std::ptr::null_mut()))
    }

    fn set_tf32(&self, enabled: bool) -> Result<(), DeviceError> {
        self.cublas.set_tf32(enabled)
    }
}
