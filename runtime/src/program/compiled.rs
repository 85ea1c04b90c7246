//! The detector of a program compiled by `mrc compile`: its generated forward function, called
//! through [`Forward`], with the weights of its trailer or of `--weights`.

use std::path::Path;
use std::process::ExitCode;

use image::RgbImage;

use super::{main_with, trailer, DetectError, Detection, Detector, MaskProbs, ProgramInfo, StageTimes};
use crate::abi::forward::{Forward, ForwardFn, HostTensor, Source};
use crate::weights::Weights;

struct CompiledDetector {
    forward: Forward,
    input: String,
}

impl Detector for CompiledDetector {
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        let (width, height) = image.dimensions();
        let tensor = HostTensor::U8 { shape: vec![height as usize, width as usize, 3], data: image.as_raw().clone() };
        let (results, stages) = self.forward.run(&[(&self.input, &tensor)])?;
        let find = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let missing = |name: &str| format!("the network has no output `{name}`");
        let boxes = find("boxes").and_then(HostTensor::f32).ok_or_else(|| missing("boxes"))?;
        let scores = find("scores").and_then(HostTensor::f32).ok_or_else(|| missing("scores"))?;
        let labels = find("labels").and_then(HostTensor::i64).ok_or_else(|| missing("labels"))?;
        let masks = find("masks").and_then(HostTensor::f32);
        let plane = (width * height) as usize;
        let detections = (0..scores.len())
            .map(|i| Detection {
                bbox: [boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]],
                score: scores[i],
                label: labels[i],
                mask: masks.map(|m| MaskProbs { height, width, probs: m[i * plane..(i + 1) * plane].to_vec() }),
            })
            .collect();
        Ok((detections, stages.into_iter().map(|(name, time)| (name.to_owned(), time)).collect()))
    }
}

extern "C" {
    fn mallopt(parameter: i32, value: i32) -> i32;
}

/// glibc serves allocations over 128 KiB with fresh `mmap`s and returns them on `free`, so
/// every large tensor of every image would be page-faulted and zeroed anew (a quarter of the
/// run time of R50-FPN): keep freed memory in the heap for reuse instead.
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: plain glibc tuning calls, made before any other thread runs.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, i32::MAX);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The `main` of a compiled program: `forward` is its generated `mrc_forward_packed`.
///
/// # Safety
/// `argv` holds `argc` C strings; `forward` is the program's forward function, whose interface
/// the program's trailer describes.
#[no_mangle]
pub unsafe extern "C" fn mrc_program_main(_argc: i32, _argv: *const *const std::ffi::c_char, forward: ForwardFn) -> i32 {
    keep_freed_memory();
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let (manifest, embedded) = match trailer::read(&exe) {
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
        // SAFETY: the trailer describes the forward function it was compiled with.
        let forward = Forward::new(forward, manifest.interface.clone(), weights)?;
        Ok(CompiledDetector { forward, input: input.clone().ok_or("the network has no input")? })
    };
    let code = main_with(&info, make_detector, std::env::args());
    if code == ExitCode::SUCCESS {
        0
    } else {
        1
    }
}
