//! The CUDA device where there may be no driver (a process of its own: nothing here selects
//! the emulator). Without `libcuda.so.1`, selecting it, calling an `mgpu*` function that
//! selects it by default, and a CUDA program's run all end in the one-line error, never a
//! panic; with a driver and a GPU, the device opens and runs a PTX kernel through the `mgpu*`
//! functions.

use std::path::Path;

use mrc_runtime::abi::take_error;
use mrc_runtime::device::abi::*;
use mrc_runtime::device::driver::CudaDriver;
use mrc_runtime::device::{self, DeviceError, DeviceKind};
use mrc_runtime::program::{
    run_device_command_line, DetectError, Detection, Detector, ProgramInfo, StageTimes, EXIT_NO_DEVICE,
};

const NO_DRIVER: &str = "no NVIDIA driver: libcuda.so.1 not found (use --device emulator to run on the CPU)";

#[test]
fn selecting_the_cuda_device_names_what_is_missing() {
    match device::select(DeviceKind::Cuda) {
        Ok(device) => {
            assert!(CudaDriver::library_present());
            assert_eq!(device.kind(), DeviceKind::Cuda);
        }
        Err(error) => {
            if !CudaDriver::library_present() {
                assert_eq!(error, DeviceError::NoDriver);
            }
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(message.ends_with("use --device emulator to run on the CPU)"), "{message}");
        }
    }
}

#[test]
fn device_calls_without_a_driver_record_the_error() {
    if CudaDriver::library_present() {
        return;
    }
    // SAFETY: the calls generated code makes; none reaches a device.
    unsafe {
        let module = mgpuModuleLoadJIT(c".visible .entry k(\n)\n{}\n".as_ptr(), 0);
        assert!(mgpuModuleGetFunction(module, c"k".as_ptr()).is_null());
        assert_eq!(take_error().as_deref(), Some(NO_DRIVER));
        assert!(mgpuMemAlloc(16, std::ptr::null_mut(), 0).is_null());
        assert_eq!(take_error().as_deref(), Some(NO_DRIVER));
    }
    assert!(device::selected().is_none());
}

struct NeverBuilt;

impl Detector for NeverBuilt {
    fn detect(&mut self, _: &image::RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        unreachable!("the device did not start")
    }
}

#[test]
fn a_cuda_program_without_a_driver_exits_with_code_3_and_one_line() {
    if CudaDriver::library_present() {
        return;
    }
    let info = ProgramInfo { model_name: "net".into(), class_names: vec!["__background__".into()] };
    let make = |_: Option<&Path>| -> Result<NeverBuilt, DetectError> {
        panic!("the detector is built after the device starts")
    };
    // `--device cuda` is the default.
    for args in [vec!["net", "a.png"], vec!["net", "--device", "cuda", "a.png"]] {
        let mut log = vec![];
        let code = run_device_command_line(&info, make, args.into_iter().map(String::from), &mut log, false);
        assert_eq!(code, EXIT_NO_DEVICE);
        assert_eq!(String::from_utf8(log).unwrap(), format!("net: error: {NO_DRIVER}\n"));
    }
}

/// `y[i] += a * x[i]` over expanded 1-d memref descriptors (allocated, aligned, offset, size,
/// stride) of `x` and `y`, then `a`; one element per thread. (Checked with `ptxas -arch=sm_90`.)
const SAXPY_PTX: &std::ffi::CStr = c".version 7.0\n.target sm_50\n.address_size 64\n\n.visible .entry saxpy(\n	.param .u64 x_allocated,\n	.param .u64 x_aligned,\n	.param .u64 x_offset,\n	.param .u64 x_size,\n	.param .u64 x_stride,\n	.param .u64 y_allocated,\n	.param .u64 y_aligned,\n	.param .u64 y_offset,\n	.param .u64 y_size,\n	.param .u64 y_stride,\n	.param .f32 a\n)\n{\n	.reg .pred %p<2>;\n	.reg .b32 %r<5>;\n	.reg .b64 %rd<16>;\n	.reg .f32 %f<5>;\n\n	ld.param.u64 %rd1, [x_aligned];\n	ld.param.u64 %rd2, [x_offset];\n	ld.param.u64 %rd3, [x_size];\n	ld.param.u64 %rd4, [x_stride];\n	ld.param.u64 %rd5, [y_aligned];\n	ld.param.u64 %rd6, [y_offset];\n	ld.param.u64 %rd7, [y_stride];\n	ld.param.f32 %f1, [a];\n	mov.u32 %r1, %ctaid.x;\n	mov.u32 %r2, %ntid.x;\n	mov.u32 %r3, %tid.x;\n	mad.lo.s32 %r4, %r1, %r2, %r3;\n	cvt.s64.s32 %rd8, %r4;\n	setp.ge.s64 %p1, %rd8, %rd3;\n	@%p1 bra DONE;\n	mad.lo.s64 %rd9, %rd8, %rd4, %rd2;\n	shl.b64 %rd10, %rd9, 2;\n	add.s64 %rd11, %rd1, %rd10;\n	ld.f32 %f2, [%rd11];\n	mad.lo.s64 %rd12, %rd8, %rd7, %rd6;\n	shl.b64 %rd13, %rd12, 2;\n	add.s64 %rd14, %rd5, %rd13;\n	ld.f32 %f3, [%rd14];\n	fma.rn.f32 %f4, %f1, %f2, %f3;\n	st.f32 [%rd14], %f4;\nDONE:\n	ret;\n}\n";

#[test]
fn saxpy_runs_on_the_gpu_through_the_mgpu_functions() {
    // SAFETY: the text is NUL-terminated; loading only keeps it.
    let module = unsafe { mgpuModuleLoadJIT(SAXPY_PTX.as_ptr(), 3) };
    let Ok(device) = device::select(DeviceKind::Cuda) else {
        return; // No driver or no GPU: the tests above cover that.
    };
    let n = 100_000_usize;
    let x: Vec<f32> = (0..n + 5).map(|i| (i % 1000) as f32).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - (i % 77) as f32).collect();
    // SAFETY: the calls generated code makes, on buffers of the sizes given.
    unsafe {
        let stream = mgpuStreamCreate();
        let x_device = mgpuMemAlloc((4 * x.len()) as i64, stream, 0);
        let y_device = mgpuMemAlloc((4 * n) as i64, stream, 0);
        mgpuMemcpy(x_device, x.as_ptr().cast(), (4 * x.len()) as i64, stream);
        mgpuMemcpy(y_device, y.as_ptr().cast(), (4 * n) as i64, stream);
        let function = mgpuModuleGetFunction(module, c"saxpy".as_ptr());
        assert_eq!(take_error(), None);
        let (x_pointer, y_pointer) = (x_device as i64, y_device as i64);
        let mut values = [x_pointer, x_pointer, 5, n as i64, 1, y_pointer, y_pointer, 0, n as i64, 1];
        let mut a = 0.5_f32;
        let mut params: Vec<*mut std::ffi::c_void> =
            values.iter_mut().map(|v| v as *mut i64 as *mut std::ffi::c_void).collect();
        params.push(&mut a as *mut f32 as *mut std::ffi::c_void);
        let blocks = n.div_ceil(256) as i64;
        mgpuLaunchKernel(function, blocks, 1, 1, 256, 1, 1, 0, stream, params.as_mut_ptr(), std::ptr::null_mut(), 11);
        let event = mgpuEventCreate();
        mgpuEventRecord(event, stream);
        mgpuEventSynchronize(event);
        mgpuEventDestroy(event);
        mgpuStreamSynchronize(stream);
        let mut back = vec![0_f32; n];
        mgpuMemcpy(back.as_mut_ptr().cast(), y_device, (4 * n) as i64, stream);
        mgpuStreamSynchronize(stream);
        assert_eq!(take_error(), None);
        for i in 0..n {
            assert_eq!(back[i], y[i] + 0.5 * x[i + 5], "element {i}");
        }

        mgpuMemset32(y_device, 0x3f80_0000, n as i64, stream);
        mgpuMemset16(x_device, 0x1234, 4, stream);
        mgpuMemcpy(back.as_mut_ptr().cast(), y_device, (4 * n) as i64, stream);
        let mut halves = [0_u16; 5];
        mgpuMemcpy(halves.as_mut_ptr().cast(), x_device, 10, stream);
        mgpuStreamSynchronize(stream);
        assert!(back.iter().all(|&v| v == 1.0));
        assert_eq!(&halves[..4], &[0x1234; 4]);

        mgpuMemFree(x_device, stream);
        mgpuMemFree(y_device, stream);
        mgpuStreamDestroy(stream);
        assert_eq!(take_error(), None);
    }
    let statistics = device.statistics();
    assert_eq!(statistics.launches_by_kernel, [("saxpy".to_owned(), 1)]);
    assert_eq!(statistics.peak_bytes, 4 * (2 * n + 5));
    assert_eq!(statistics.current_bytes, 0);

    // A launch the GPU would refuse is refused before it reaches the driver.
    // SAFETY: the launch is refused before the parameters are read.
    unsafe {
        let function = mgpuModuleGetFunction(module, c"saxpy".as_ptr());
        mgpuLaunchKernel(
            function,
            1,
            1,
            1,
            2048,
            1,
            1,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            11,
        );
    }
    assert_eq!(take_error().as_deref(), Some("launch of `saxpy`: block x of 2048 threads is outside [1, 1024]"));
}
