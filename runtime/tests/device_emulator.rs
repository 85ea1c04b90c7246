//! The CPU emulator driven as generated code drives a device: the PTX module loaded before
//! the device is selected (as from a global constructor), kernels looked up and launched
//! through the `mgpu*` functions with hand-written CPU forms; a forward function on the device
//! through `Forward`; a CUDA program's command line with `--device emulator`.
//!
//! The tests of this process share the one emulator, and take turns so that its byte counts
//! are theirs.

use std::ffi::{c_void, CStr};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mrc_runtime::abi::forward::{Element, Forward, HostTensor, Interface, ResultSpec, Source};
use mrc_runtime::abi::kernels::_mlir_ciface_mrc_linear;
use mrc_runtime::abi::{take_error, MemRef};
use mrc_runtime::device::abi::*;
use mrc_runtime::device::{self, DeviceKind, EmulatedKernelEntry, SelectedDevice};
use mrc_runtime::program::{run_device_command_line, DetectError, Detection, Detector, ProgramInfo, StageTimes};
use mrc_runtime::weights::{Dtype, Tensor, TensorSpec, Weights};

/// The module's PTX, as far as the emulator reads it: `unregistered` has no CPU form.
const PTX: &CStr = c"//\n.version 8.0\n.target sm_80\n.address_size 64\n\n.visible .entry saxpy(\n\t.param .u64 saxpy_param_0\n)\n{\n\tret;\n}\n.visible .entry thread_ids(\n)\n{\n\tret;\n}\n.visible .entry unregistered(\n)\n{\n\tret;\n}\n";

static TURNS: Mutex<()> = Mutex::new(());

/// The module, loaded once as a global constructor would, before any device is selected; the
/// CPU forms registered and the emulator selected. Holds the test's turn.
fn setup() -> (MutexGuard<'static, ()>, *mut c_void, &'static SelectedDevice) {
    static MODULE: OnceLock<usize> = OnceLock::new();
    let turn = TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let module = *MODULE.get_or_init(|| {
        assert!(device::selected().is_none());
        // SAFETY: the text is NUL-terminated; the table's entries are live for the process.
        unsafe {
            let module = mgpuModuleLoadJIT(PTX.as_ptr(), 2);
            assert_eq!(device::register_emulated_kernels(kernel_table), 2);
            module as usize
        }
    });
    let device = device::select(DeviceKind::Emulator).unwrap();
    take_error();
    (turn, module as *mut c_void, device)
}

/// `mrc_emulated_kernels` of a program with two kernels.
unsafe extern "C" fn kernel_table(count: *mut i64) -> *const EmulatedKernelEntry {
    static TABLE: OnceLock<usize> = OnceLock::new();
    let table = *TABLE.get_or_init(|| {
        let entries = [
            EmulatedKernelEntry { name: c"saxpy".as_ptr(), function: saxpy },
            EmulatedKernelEntry { name: c"thread_ids".as_ptr(), function: thread_ids },
        ];
        Box::leak(Box::new(entries)).as_ptr() as usize
    });
    *count = 2;
    table as *const EmulatedKernelEntry
}

/// Parameter `i` of a launch, of type `T`.
unsafe fn param<T: Copy>(params: *mut *mut c_void, i: usize) -> T {
    *(*params.add(i) as *const T)
}

/// `y[i] += a * x[i]` for `i` in the memrefs' size, one element per thread. Parameters: the
/// descriptors of `x` and `y` expanded (allocated, aligned, offset, size, stride), then `a`.
unsafe extern "C" fn saxpy(ids: *const i64, params: *mut *mut c_void) {
    let ids = std::slice::from_raw_parts(ids, 12);
    let i = ids[0] * ids[9] + ids[3];
    let (x, x_offset, size, x_stride): (*const f32, i64, i64, i64) =
        (param(params, 1), param(params, 2), param(params, 3), param(params, 4));
    let (y, y_offset, y_stride): (*mut f32, i64, i64) = (param(params, 6), param(params, 7), param(params, 9));
    let a: f32 = param(params, 10);
    if i < size {
        *y.offset((y_offset + i * y_stride) as isize) += a * *x.offset((x_offset + i * x_stride) as isize);
    }
}

/// Each thread writes its 12 ids at its global linear index (blocks x fastest, then threads x
/// fastest) into a memref of i64 (allocated, aligned, offset, size, stride).
unsafe extern "C" fn thread_ids(ids: *const i64, params: *mut *mut c_void) {
    let ids = std::slice::from_raw_parts(ids, 12);
    let block = ids[0] + ids[6] * (ids[1] + ids[7] * ids[2]);
    let thread = ids[3] + ids[9] * (ids[4] + ids[10] * ids[5]);
    let index = block * (ids[9] * ids[10] * ids[11]) + thread;
    let out: *mut i64 = param(params, 1);
    std::ptr::copy_nonoverlapping(ids.as_ptr(), out.add(12 * index as usize), 12);
}

/// The expanded descriptor of a 1-d memref over `pointer`, and the parameter array pointing
/// into `values`.
fn descriptor(pointer: *mut c_void, offset: i64, size: i64) -> [i64; 5] {
    [pointer as i64, pointer as i64, offset, size, 1]
}

fn params_of(values: &mut [i64]) -> Vec<*mut c_void> {
    values.iter_mut().map(|v| v as *mut i64 as *mut c_void).collect()
}

#[test]
fn saxpy_runs_through_the_mgpu_functions() {
    let (_turn, module, device) = setup();
    let n = 1000_usize;
    let x: Vec<f32> = (0..n + 3).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
    // SAFETY: the calls generated code makes, on buffers of the sizes given.
    unsafe {
        let stream = mgpuStreamCreate();
        assert!(!stream.is_null());
        let x_device = mgpuMemAlloc((4 * x.len()) as i64, stream, 0);
        let y_device = mgpuMemAlloc((4 * n) as i64, stream, 0);
        mgpuMemcpy(x_device, x.as_ptr().cast(), (4 * x.len()) as i64, stream);
        mgpuMemcpy(y_device, y.as_ptr().cast(), (4 * n) as i64, stream);
        let function = mgpuModuleGetFunction(module, c"saxpy".as_ptr());
        assert_eq!(take_error(), None);
        assert!(!function.is_null());

        // x viewed from its fourth element: offset 3.
        let mut values: Vec<i64> = [descriptor(x_device, 3, n as i64), descriptor(y_device, 0, n as i64)].concat();
        values.push(i64::from(2.5_f32.to_bits()));
        let mut params = params_of(&mut values);
        let launches_before = device.statistics().launches;
        // 8 blocks of 128 threads: the last block is partly outside the memrefs.
        mgpuLaunchKernel(
            function,
            8,
            1,
            1,
            128,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
            params.len() as i64,
        );
        let event = mgpuEventCreate();
        mgpuEventRecord(event, stream);
        mgpuEventSynchronize(event);
        mgpuEventDestroy(event);
        mgpuStreamSynchronize(stream);

        let mut back = vec![0_f32; n];
        mgpuMemcpy(back.as_mut_ptr().cast(), y_device, (4 * n) as i64, stream);
        assert_eq!(take_error(), None);
        for i in 0..n {
            assert_eq!(back[i], y[i] + 2.5 * x[i + 3], "element {i}");
        }
        let statistics = device.statistics();
        assert_eq!(statistics.launches, launches_before + 1);
        assert!(statistics.launches_by_kernel.iter().any(|(name, count)| name == "saxpy" && *count >= 1));

        let before_free = statistics.current_bytes;
        mgpuMemFree(x_device, stream);
        mgpuMemFree(y_device, stream);
        mgpuStreamDestroy(stream);
        assert_eq!(device.statistics().current_bytes, before_free - 4 * (2 * n + 3));
        assert!(device.statistics().peak_bytes >= 4 * (2 * n + 3));
        assert_eq!(take_error(), None);
    }
}

#[test]
fn every_thread_of_every_block_runs_once_with_its_ids() {
    let (_turn, module, _device) = setup();
    let (grid, block) = ([3_i64, 2, 2], [4_i64, 2, 3]);
    let threads = (grid.iter().product::<i64>() * block.iter().product::<i64>()) as usize;
    // SAFETY: as generated code would, on a buffer of 12 words per thread.
    let out = unsafe {
        let buffer = mgpuMemAlloc((8 * 12 * threads) as i64, std::ptr::null_mut(), 0);
        mgpuMemset32(buffer, -1, (2 * 12 * threads) as i64, std::ptr::null_mut());
        let function = mgpuModuleGetFunction(module, c"thread_ids".as_ptr());
        let mut values = descriptor(buffer, 0, (12 * threads) as i64);
        let mut params = params_of(&mut values);
        let [gx, gy, gz] = grid;
        let [bx, by, bz] = block;
        mgpuLaunchKernel(
            function,
            gx,
            gy,
            gz,
            bx,
            by,
            bz,
            0,
            std::ptr::null_mut(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
            5,
        );
        let mut out = vec![0_i64; 12 * threads];
        mgpuMemcpy(out.as_mut_ptr().cast(), buffer, (8 * 12 * threads) as i64, std::ptr::null_mut());
        mgpuMemFree(buffer, std::ptr::null_mut());
        out
    };
    assert_eq!(take_error(), None);
    let mut index = 0;
    for (bz, by, bx) in itertools_product(grid[2], grid[1], grid[0]) {
        for (tz, ty, tx) in itertools_product(block[2], block[1], block[0]) {
            let expected = [bx, by, bz, tx, ty, tz, grid[0], grid[1], grid[2], block[0], block[1], block[2]];
            assert_eq!(&out[12 * index..12 * index + 12], &expected, "thread {index}");
            index += 1;
        }
    }
}

/// (z, y, x) over the ranges, x fastest.
fn itertools_product(z: i64, y: i64, x: i64) -> impl Iterator<Item = (i64, i64, i64)> {
    (0..z).flat_map(move |k| (0..y).flat_map(move |j| (0..x).map(move |i| (k, j, i))))
}

#[test]
fn launches_beyond_cudas_limits_are_refused_and_later_calls_do_nothing() {
    let (_turn, module, device) = setup();
    // SAFETY: the launch is refused before the kernel would read its parameters.
    unsafe {
        let function = mgpuModuleGetFunction(module, c"saxpy".as_ptr());
        let launches = device.statistics().launches;
        mgpuLaunchKernel(
            function,
            1,
            1,
            1,
            1025,
            1,
            1,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        // The error is pending: an allocation is a no-op now.
        assert!(mgpuMemAlloc(64, std::ptr::null_mut(), 0).is_null());
        assert_eq!(take_error().as_deref(), Some("launch of `saxpy`: block x of 1025 threads is outside [1, 1024]"));
        assert_eq!(device.statistics().launches, launches);

        for (grid, block, shared, reason) in [
            ([1, 65536, 1], [1, 1, 1], 0, "grid y of 65536 blocks is outside [1, 65535]"),
            ([1, 1, 1], [16, 16, 8], 0, "a block of 16x16x8 = 2048 threads is more than 1024"),
            ([1, 1, 1], [1, 1, 1], 49 * 1024, "50176 bytes of shared memory is outside [0, 49152]"),
        ] {
            let ([gx, gy, gz], [bx, by, bz]) = (grid, block);
            mgpuLaunchKernel(
                function,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shared,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            assert_eq!(take_error(), Some(format!("launch of `saxpy`: {reason}")));
        }
        assert_eq!(device.statistics().launches, launches);
    }
}

#[test]
fn kernels_must_be_entries_of_the_ptx_and_have_a_cpu_form() {
    let (_turn, module, _device) = setup();
    // SAFETY: lookups of NUL-terminated names in a live module.
    unsafe {
        assert!(mgpuModuleGetFunction(module, c"missing".as_ptr()).is_null());
        assert_eq!(
            take_error().as_deref(),
            Some("kernel `missing` is not an entry of its module (no `.entry missing(` in its PTX)")
        );
        assert!(mgpuModuleGetFunction(module, c"unregistered".as_ptr()).is_null());
        let error = take_error().unwrap();
        assert!(error.starts_with("kernel `unregistered` has no CPU form"), "{error}");
        // A kernel with a CPU form that another module's PTX does not define is not found there.
        let other_ptx = c".visible .entry other(\n)\n{}\n";
        let other = mgpuModuleLoad(other_ptx.as_ptr().cast(), other_ptx.to_bytes().len() as i64);
        assert!(mgpuModuleGetFunction(other, c"saxpy".as_ptr()).is_null());
        assert!(take_error().unwrap().starts_with("kernel `saxpy` is not an entry"));
        mgpuModuleUnload(other);
        assert_eq!(take_error(), None);
    }
}

#[test]
fn freeing_what_was_not_allocated_is_an_error() {
    let (_turn, _module, _device) = setup();
    let mut host = [0_u8; 16];
    // SAFETY: the emulator checks the pointer against its allocations before freeing.
    unsafe { mgpuMemFree(host.as_mut_ptr().cast(), std::ptr::null_mut()) };
    let error = take_error().unwrap();
    assert!(error.ends_with("is not a live allocation of the device"), "{error}");
}

/// A forward function as the compiler generates it for a device: `y = w + 2 x` for an input
/// `x` [n] and a state tensor `w` [n], both in device memory; `y` in a fresh device buffer.
unsafe extern "C" fn forward_on_device(args: *mut *mut c_void) {
    static MODULE: OnceLock<usize> = OnceLock::new();
    let module = *MODULE.get_or_init(|| mgpuModuleLoadJIT(PTX.as_ptr(), 2) as usize) as *mut c_void;
    let result = std::slice::from_raw_parts_mut(*args as *mut i64, 5);
    let x = std::slice::from_raw_parts(*args.add(1) as *const i64, 5);
    let w = std::slice::from_raw_parts(*args.add(2) as *const i64, 5);
    let n = x[3];
    let stream = mgpuStreamCreate();
    let y = mgpuMemAlloc(4 * n, stream, 0);
    mgpuMemcpy(y, (w[1] as *const f32).offset(w[2] as isize).cast(), 4 * n, stream);
    let mut values: Vec<i64> = [[x[0], x[1], x[2], x[3], x[4]], descriptor(y, 0, n)].concat();
    values.push(i64::from(2.0_f32.to_bits()));
    let mut params = params_of(&mut values);
    let function = mgpuModuleGetFunction(module, c"saxpy".as_ptr());
    let blocks = (n + 255) / 256;
    mgpuLaunchKernel(
        function,
        blocks.max(1),
        1,
        1,
        256,
        1,
        1,
        0,
        stream,
        params.as_mut_ptr(),
        std::ptr::null_mut(),
        11,
    );
    mgpuStreamSynchronize(stream);
    mgpuStreamDestroy(stream);
    result.copy_from_slice(&descriptor(y, 0, n));
}

fn forward_interface(n: usize) -> Interface {
    Interface {
        arguments: vec![Source::Input("x".into()), Source::State("w".into())],
        results: vec![("y".into(), ResultSpec { element: Element::F32, rank: 1 })],
        state: vec![TensorSpec { name: "w".into(), shape: vec![n], dtype: Dtype::F32 }],
    }
}

fn forward_weights(n: usize) -> Weights {
    let w: Vec<f32> = (0..n).map(|i| 100.0 - i as f32).collect();
    Weights::from_tensors("test", [("w".to_owned(), Tensor::from_f32(vec![n], &w).unwrap())]).unwrap()
}

#[test]
fn a_forward_function_runs_on_the_device_with_weights_uploaded_once() {
    let (_turn, _module, device) = setup();
    let n = 700;
    let before = device.statistics();
    // SAFETY: the function has this interface and runs on the emulator.
    let forward =
        unsafe { Forward::new_on_device(forward_on_device, forward_interface(n), forward_weights(n), device) }.unwrap();
    assert_eq!(device.statistics().current_bytes, before.current_bytes + 4 * n, "the weights are on the device");
    for round in 0..2 {
        let x: Vec<f32> = (0..n).map(|i| (i + round) as f32 * 0.5).collect();
        let input = HostTensor::F32 { shape: vec![n], data: x.clone() };
        let (results, _) = forward.run(&[("x", &input)]).unwrap();
        assert_eq!(results.len(), 1);
        let HostTensor::F32 { shape, data } = &results[0].1 else { panic!("y is not f32") };
        assert_eq!(shape, &[n]);
        for i in 0..n {
            assert_eq!(data[i], 100.0 - i as f32 + 2.0 * x[i], "element {i}");
        }
        // The input and the result were freed; the weights stay.
        assert_eq!(device.statistics().current_bytes, before.current_bytes + 4 * n);
    }
    assert!(device.statistics().peak_bytes >= before.current_bytes + 3 * 4 * n);
    drop(forward);
    assert_eq!(device.statistics().current_bytes, before.current_bytes);
}

/// A detector that runs [`forward_on_device`] on the red channel of each image.
struct DeviceDetector {
    forward: Forward,
}

impl Detector for DeviceDetector {
    fn detect(&mut self, image: &image::RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        let x: Vec<f32> = image.pixels().map(|p| f32::from(p[0])).collect();
        let input = HostTensor::F32 { shape: vec![x.len()], data: x };
        let (results, _) = self.forward.run(&[("x", &input)])?;
        let y = results[0].1.f32().ok_or("y is not f32")?;
        let detections = y
            .iter()
            .take(1)
            .map(|&score| Detection { bbox: [0.0, 0.0, 1.0, 1.0], score: score / 1000.0, label: 1, mask: None })
            .collect();
        Ok((detections, vec![]))
    }
}

/// The emulator has no GEMM of its own: its memory is host memory, which the runtime's host
/// GEMM reads and writes in place.
#[test]
fn products_on_the_emulator_run_on_the_host_gemm() {
    let (_turn, _, device) = setup();
    assert!(device.device().gemm().is_none());
    let (m, k, n) = (3, 4, 5);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 - 2.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 3) as f32 + 0.5).collect();
    let before = device.statistics().current_bytes;
    let mut y = MemRef::<f32, 2>::borrowed(&[], [0, 0]);
    // SAFETY: the descriptors describe the vectors; the result is the emulator's, freed once.
    unsafe {
        _mlir_ciface_mrc_linear(&mut y, &MemRef::borrowed(&x, [m, k]), &MemRef::borrowed(&w, [n, k]));
        assert_eq!(take_error(), None);
        assert!(device.owns(y.allocated.cast()));
        let elements = y.elements().into_owned();
        for i in 0..m {
            for j in 0..n {
                let expected: f32 = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
                assert!((elements[i * n + j] - expected).abs() < 1e-5, "Y[{i}, {j}]");
            }
        }
        device.free(y.allocated.cast(), std::ptr::null_mut()).unwrap();
    }
    assert_eq!(device.statistics().current_bytes, before);
}

#[test]
fn a_cuda_program_runs_on_the_emulator_and_reports_the_device() {
    let (_turn, _module, _device) = setup();
    let dir = tempfile::tempdir().unwrap();
    let (image_path, timings, json) = (dir.path().join("a.png"), dir.path().join("t.json"), dir.path().join("r.json"));
    image::RgbImage::from_pixel(4, 4, image::Rgb([50, 0, 0])).save(&image_path).unwrap();
    let info = ProgramInfo { model_name: "net".into(), class_names: vec!["__background__".into(), "thing".into()] };
    let make = |_: Option<&Path>| -> Result<DeviceDetector, DetectError> {
        let device = device::current()?;
        assert_eq!(device.kind(), DeviceKind::Emulator);
        // SAFETY: the function has this interface and runs on the emulator.
        let forward =
            unsafe { Forward::new_on_device(forward_on_device, forward_interface(16), forward_weights(16), device)? };
        Ok(DeviceDetector { forward })
    };
    let args = [
        "net",
        "--device",
        "emulator",
        "--timings",
        timings.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        image_path.to_str().unwrap(),
    ];
    let mut log = vec![];
    let code = run_device_command_line(&info, make, args.map(String::from), &mut log, false);
    let log = String::from_utf8(log).unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("net: device emulator: peak memory"), "{log}");
    let timings: serde_json::Value = serde_json::from_slice(&std::fs::read(&timings).unwrap()).unwrap();
    assert_eq!(timings["device"], "emulator");
    assert!(timings["kernel_launches"].as_u64().unwrap() >= 1);
    assert!(timings["peak_device_mb"].as_f64().unwrap() > 0.0);
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // y[0] = w[0] + 2 x[0] = 100 + 2 * 50.
    assert_eq!(results[0]["score"].as_f64().unwrap(), 0.2);

    // `--tf32` is cuBLAS's: the emulator takes it and computes in full precision all the same.
    let args = ["net", "--device", "emulator", "--tf32", "--json", json.to_str().unwrap(), image_path.to_str().unwrap()];
    let mut log = vec![];
    let code = run_device_command_line(&info, make, args.map(String::from), &mut log, false);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&log));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results[0]["score"].as_f64().unwrap(), 0.2);

    // `--device` takes only the two devices: a usage error.
    let mut log = vec![];
    let code =
        run_device_command_line(&info, make, ["net", "--device", "tpu", "a.png"].map(String::from), &mut log, false);
    assert_eq!(code, 2, "{}", String::from_utf8_lossy(&log));
}
