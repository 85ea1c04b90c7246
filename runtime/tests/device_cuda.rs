//! The CUDA device where there may be no driver (a process of its own: nothing here selects
//! the emulator). Without `libcuda.so.1`, selecting it, calling an `mgpu*` function that
//! selects it by default, and a CUDA program's run all end in the one-line error, never a
//! panic; with a driver, the device opens.

use std::path::Path;

use mrc_runtime::abi::take_error;
use mrc_runtime::device::abi::{mgpuMemAlloc, mgpuModuleGetFunction, mgpuModuleLoadJIT};
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
            assert!(message.ends_with("(use --device emulator to run on the CPU)"), "{message}");
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
