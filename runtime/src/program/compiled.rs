//! The detector of a program compiled by `mrc compile`: its generated forward function, called
//! through [`Forward`], with the weights of its trailer or of `--weights`; for a CUDA program,
//! on the device that `--device` selects.

use std::io::IsTerminal;
use std::path::Path;

use image::RgbImage;

use super::{run_command_line, run_device_command_line, trailer, DetectError, Detection, Detector, MaskProbs, ProgramInfo, StageTimes};
use crate::abi::forward::{Forward, ForwardFn, HostTensor, Source};
use crate::device::{register_emulated_kernels, EmulatedKernelTable};
use crate::weights::Weights;

/// A compiled forward function with its weights, as a [`Detector`]: what a compiled program
/// runs, and what training's periodic evaluation runs at the current weights.
pub struct CompiledDetector {
    forward: Forward,
    input: String,
}

impl CompiledDetector {
    /// The detector of `forward`, whose network takes one image as the input `input`.
    pub fn new(forward: Forward, input: String) -> CompiledDetector {
        CompiledDetector { forward, input }
    }
}

impl Detector for CompiledDetector {
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        let (width, height) = image.dimensions();
        let tensor = HostTensor::U8 { shape: vec![height as usize, width as usize, 3], data: image.as_raw().clone() };
        let (mut results, stages) = self.forward.run(&[(&self.input, &tensor)])?;
        // The masks move out of the results, whole: each detection's mask is a plane of them.
        let masks = results.iter().position(|(n, _)| n == "masks").map(|at| results.swap_remove(at).1);
        let masks = match masks {
            Some(HostTensor::F32 { data, .. }) => Some(std::sync::Arc::new(data)),
            _ => None,
        };
        let find = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let missing = |name: &str| format!("the network has no output `{name}`");
        let boxes = find("boxes").and_then(HostTensor::f32).ok_or_else(|| missing("boxes"))?;
        let scores = find("scores").and_then(HostTensor::f32).ok_or_else(|| missing("scores"))?;
        let labels = find("labels").and_then(HostTensor::i64).ok_or_else(|| missing("labels"))?;
        let detections = (0..scores.len())
            .map(|i| Detection {
                bbox: [boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]],
                score: scores[i],
                label: labels[i],
                mask: masks.as_ref().map(|planes| MaskProbs::plane_of(planes.clone(), i, [height, width])),
            })
            .collect();
        Ok((detections, stages.into_iter().map(|(name, time)| (name.to_owned(), time)).collect()))
    }
}

/// The `main` of a compiled program: `forward` is its generated `mrc_forward_packed`.
///
/// # Safety
/// `argv` holds `argc` C strings; `forward` is the program's forward function, whose interface
/// the program's trailer describes.
#[no_mangle]
pub unsafe extern "C" fn mrc_program_main(_argc: i32, _argv: *const *const std::ffi::c_char, forward: ForwardFn) -> i32 {
    compiled_main(forward, false)
}

/// The `main` of a compiled CUDA program: `forward` is its generated `mrc_forward_packed`,
/// whose host code calls the `mgpu*` functions of [`crate::device::abi`], and `kernels` its
/// `mrc_emulated_kernels`, the CPU forms of its kernels for `--device emulator`. The command
/// line is the CPU program's plus `--device cuda|emulator` (default `cuda`); a device that
/// cannot start exits with code 3 and one line saying what is missing.
///
/// # Safety
/// As [`mrc_program_main`]; `kernels` returns the program's table of CPU forms.
#[no_mangle]
pub unsafe extern "C" fn mrc_cuda_program_main(
    _argc: i32,
    _argv: *const *const std::ffi::c_char,
    forward: ForwardFn,
    kernels: EmulatedKernelTable,
) -> i32 {
    register_emulated_kernels(kernels);
    compiled_main(forward, true)
}

/// A compiled program's `main`, its network on the host or on the device that `--device`
/// selects.
///
/// # Safety
/// As [`mrc_program_main`].
unsafe fn compiled_main(forward: ForwardFn, on_device: bool) -> i32 {
    crate::abi::keep_freed_memory();
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let (manifest, embedded) = match trailer::read::<trailer::ProgramManifest>(&exe) {
        Ok(found) => found,
        Err(message) => {
            eprintln!("error: {message}");
            return 1;
        }
    };
    let info = ProgramInfo { model_name: manifest.model_name.clone(), class_names: manifest.class_names.clone() };
    let input = manifest.interface.arguments.iter().find_map(|s| if let Source::Input(name) = s { Some(name.clone()) } else { None });
    let make_detector = |path: Option<&Path>| -> Result<CompiledDetector, DetectError> {
        let weights = match (path, embedded) {
            (Some(path), _) => Weights::open(path)?,
            (None, Some(bytes)) => Weights::from_static_safetensors(bytes)?,
            (None, None) => return Err("this program has no weights built in: pass --weights W".into()),
        };
        let interface = manifest.interface.clone();
        // SAFETY: the trailer describes the forward function it was compiled with.
        let forward = if on_device {
            Forward::new_on_device(forward, interface, weights, crate::device::current()?)?
        } else {
            Forward::new(forward, interface, weights)?
        };
        Ok(CompiledDetector { forward, input: input.clone().ok_or("the network has no input")? })
    };
    let (args, log, show_progress) = (std::env::args(), &mut std::io::stderr(), std::io::stderr().is_terminal());
    let code = if on_device {
        run_device_command_line(&info, make_detector, args, log, show_progress)
    } else {
        run_command_line(&info, make_detector, args, log, show_progress)
    };
    i32::from(code)
}
