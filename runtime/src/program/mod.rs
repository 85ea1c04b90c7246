//! The driver of a compiled program: command line, image input, COCO results, overlays and the
//! run summary, around a [`Detector`] that the generated code provides.
//!
//! A compiled program's `main` is one call:
//! ```no_run
//! # use mrc_runtime::program::*;
//! # struct Net;
//! # impl Detector for Net {
//! #     fn detect(&mut self, _: &image::RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
//! #         Ok((Vec::new(), Vec::new()))
//! #     }
//! # }
//! fn main() -> std::process::ExitCode {
//!     let info = ProgramInfo { model_name: "mask_rcnn".into(), class_names: vec!["__background__".into(), "person".into()] };
//!     main_with(&info, |_weights| Ok(Net), std::env::args())
//! }
//! ```
//!
//! Conventions: boxes are `[x1, y1, x2, y2]` in pixels of the original image, COCO's `bbox` is
//! `[x, y, width, height]`; a mask pixel is set where its probability is strictly greater than
//! the mask threshold (torchvision's `mask > 0.5`), and a detection is kept where its score is
//! strictly greater than the score threshold (torchvision's `box_score_thresh` test) and drawn on
//! the overlay where its score is at least the overlay threshold.

pub mod coco;
pub mod compiled;
pub mod trailer;

mod cli;
pub(crate) mod inputs;
mod overlay;
mod report;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use image::RgbImage;

pub use cli::Options;
pub use inputs::IMAGE_EXTENSIONS;

use crate::device::DeviceKind;
use coco::{Annotations, Category, ImageInfo, Meta, ResultEntry};
use report::{Console, StageTotals};

/// Any error of a detector or of its construction, shown to the user with its message.
pub type DetectError = Box<dyn std::error::Error + Send + Sync>;

/// Time spent per stage of one detection (e.g. "preprocess", "backbone", "rpn", "heads",
/// "postprocess"), in the order the stages ran; the summary adds them up by name.
pub type StageTimes = Vec<(String, Duration)>;

/// A soft mask pasted into the whole image: `probs()[y * width + x]` in [0, 1], row-major, of
/// the image's size. The masks of one image share the network's result (R50-FPN's 100 masks of
/// an 800×1066 image are 341 MB): each is its plane of it, never a copy.
#[derive(Clone)]
pub struct MaskProbs {
    pub height: u32,
    pub width: u32,
    planes: std::sync::Arc<Vec<f32>>,
    plane: usize,
}

impl MaskProbs {
    /// The mask of plane `plane` of `planes` (`[D, height, width]`, row-major).
    pub fn plane_of(planes: std::sync::Arc<Vec<f32>>, plane: usize, [height, width]: [u32; 2]) -> MaskProbs {
        MaskProbs { height, width, planes, plane }
    }

    /// The probabilities, row-major; empty when the planes do not hold this one.
    pub fn probs(&self) -> &[f32] {
        let size = self.height as usize * self.width as usize;
        self.planes.get(self.plane * size..(self.plane + 1) * size).unwrap_or_default()
    }

    /// The binary mask: set where the probability is greater than `threshold`.
    pub fn binarize(&self, threshold: f32) -> Vec<bool> {
        self.probs().iter().map(|&p| p > threshold).collect()
    }
}

impl PartialEq for MaskProbs {
    fn eq(&self, other: &MaskProbs) -> bool {
        (self.height, self.width) == (other.height, other.width) && self.probs() == other.probs()
    }
}

impl std::fmt::Debug for MaskProbs {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "MaskProbs {{ {}x{}, plane {} }}", self.width, self.height, self.plane)
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]` in pixels of the original image.
    pub bbox: [f32; 4],
    pub score: f32,
    /// The model's class index (for torchvision's 91-class COCO model, COCO's category id).
    pub label: i64,
    /// `None` for models without a mask head.
    pub mask: Option<MaskProbs>,
}

/// The network as the driver sees it: an RGB image in, detections in original-image
/// coordinates out, with the time each stage took.
pub trait Detector {
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError>;
}

/// What the compiled program knows about its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    /// Shown as the program's name in help and messages.
    pub model_name: String,
    /// The name of each label, indexed by label. Label 0 is the background, and the name "N/A"
    /// marks an unused label (torchvision's list for COCO's 91 ids has them); neither is a
    /// category.
    pub class_names: Vec<String>,
}

impl ProgramInfo {
    /// The label's name, or its number when the model config does not name it.
    pub fn class_name(&self, label: i64) -> String {
        usize::try_from(label).ok().and_then(|i| self.class_names.get(i)).cloned().unwrap_or_else(|| label.to_string())
    }

    /// The categories the results can refer to: every named label but the background and "N/A".
    pub fn categories(&self) -> Vec<Category> {
        (1..self.class_names.len())
            .filter(|&i| self.class_names[i] != "N/A")
            .map(|i| Category { id: i as i64, name: self.class_names[i].clone(), supercategory: None })
            .collect()
    }
}

/// The compiled program's `main`: parses `args` (the program name first, as from
/// [`std::env::args`]), builds the detector with `make_detector(--weights)`, processes the
/// images and reports on stderr, with a progress bar when stderr is a terminal.
///
/// An input that cannot be read or decoded (a truncated JPEG or PNG included, unless
/// `--allow-truncated`), or on which the detector fails, is reported by name and the others are
/// processed; the results of those are written all the same.
///
/// Exit codes: 0 when every image was processed (zero detections included), 1 when any input
/// failed or the run could not start or finish, 2 for usage errors, 3 when the device of a
/// CUDA program could not start ([`run_device_command_line`]).
pub fn main_with<D: Detector>(
    info: &ProgramInfo,
    make_detector: impl FnOnce(Option<&Path>) -> Result<D, DetectError>,
    args: impl IntoIterator<Item = String>,
) -> ExitCode {
    let show_progress = std::io::stderr().is_terminal();
    ExitCode::from(run_command_line(info, make_detector, args, &mut std::io::stderr(), show_progress))
}

/// [`main_with`] with its messages written to `log` and the exit code returned as a number.
pub fn run_command_line<D: Detector>(
    info: &ProgramInfo,
    make_detector: impl FnOnce(Option<&Path>) -> Result<D, DetectError>,
    args: impl IntoIterator<Item = String>,
    log: &mut dyn Write,
    show_progress: bool,
) -> u8 {
    run_command_line_on(info, false, make_detector, args, log, show_progress)
}

/// [`run_command_line`] for a program whose network runs on a device (a CUDA program). Its
/// command line also has `--device cuda|emulator` (default `cuda`): the device is selected
/// after the command line is parsed and before the detector is built, which finds it with
/// [`crate::device::current`]. A device that cannot start (cuBLAS included, for `cuda`) ends
/// the run with its one-line message and exit code 3. `--tf32` lets cuBLAS use TF32 tensor
/// cores (off by default: full single precision). `--timings` adds the device's peak memory
/// and kernel launches.
pub fn run_device_command_line<D: Detector>(
    info: &ProgramInfo,
    make_detector: impl FnOnce(Option<&Path>) -> Result<D, DetectError>,
    args: impl IntoIterator<Item = String>,
    log: &mut dyn Write,
    show_progress: bool,
) -> u8 {
    run_command_line_on(info, true, make_detector, args, log, show_progress)
}

/// The exit code of a program whose device could not start.
pub const EXIT_NO_DEVICE: u8 = 3;

fn run_command_line_on<D: Detector>(
    info: &ProgramInfo,
    on_device: bool,
    make_detector: impl FnOnce(Option<&Path>) -> Result<D, DetectError>,
    args: impl IntoIterator<Item = String>,
    log: &mut dyn Write,
    show_progress: bool,
) -> u8 {
    let mut command = Options::command().name(info.model_name.clone());
    if on_device {
        command = command
            .arg(
                clap::Arg::new("device")
                    .long("device")
                    .value_name("D")
                    .value_parser(clap::builder::EnumValueParser::<DeviceKind>::new())
                    .default_value("cuda")
                    .help("Run the network on the first NVIDIA GPU (cuda) or on the CPU (emulator)"),
            )
            .arg(clap::Arg::new("tf32").long("tf32").action(clap::ArgAction::SetTrue).help(
                "Let cuBLAS compute convolutions and linear layers on the GPU with TF32 tensor cores: \
                 faster, with 10-bit mantissas in the products. Off: full single precision, as on \
                 the CPU (the emulator always computes so)",
            ));
    }
    let parsed = command.try_get_matches_from(args).and_then(|matches| Ok((Options::from_arg_matches(&matches)?, matches)));
    let (options, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // Help goes to stdout like any clap program; errors to the log.
            if e.use_stderr() {
                let _ = write!(log, "{}", e.render());
            } else {
                let _ = e.print();
            }
            return e.exit_code() as u8;
        }
    };
    if let Some(threads) = options.threads {
        set_thread_count(usize::from(threads), log);
    }
    let device = if on_device {
        let kind = matches.get_one::<DeviceKind>("device").copied().unwrap_or(DeviceKind::Cuda);
        let tf32 = matches.get_flag("tf32");
        match crate::device::select(kind).and_then(|device| device.set_tf32(tf32).map(|()| device)) {
            Ok(device) => Some(device),
            Err(e) => {
                let _ = writeln!(log, "{}: error: {e}", info.model_name);
                return EXIT_NO_DEVICE;
            }
        }
    } else {
        None
    };
    match run(&options, info, device, make_detector, log, show_progress) {
        Ok(0) => 0,
        Ok(_) => 1,
        Err(message) => {
            let _ = writeln!(log, "{}: error: {message}", info.model_name);
            1
        }
    }
}

/// Sizes rayon's global pool, which only the first call in a process can do.
fn set_thread_count(threads: usize, log: &mut dyn Write) {
    if rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_err()
        && rayon::current_num_threads() != threads
    {
        let _ = writeln!(
            log,
            "warning: the thread pool was already started with {} threads, --threads {threads} ignored",
            rayon::current_num_threads()
        );
    }
}

/// An image that was processed: its results and what the sidecar says of it.
struct Processed {
    info: ImageInfo,
    entries: Vec<ResultEntry>,
    /// The detector's time on the image.
    seconds: f64,
    /// Why the file is truncated, when `--allow-truncated` let it through.
    truncated: Option<String>,
}

/// Processes the images and writes the outputs; returns how many inputs failed, or why the run
/// as a whole did.
fn run<D: Detector>(
    options: &Options,
    info: &ProgramInfo,
    device: Option<&crate::device::SelectedDevice>,
    make_detector: impl FnOnce(Option<&Path>) -> Result<D, DetectError>,
    log: &mut dyn Write,
    show_progress: bool,
) -> Result<usize, String> {
    let started = Instant::now();
    let collected = inputs::collect(&options.inputs);
    let mut console = Console::new(log, collected.images.len(), show_progress);
    for (path, reason) in &collected.failures {
        console.line(format_args!("{}: error: {reason}", path.display()));
    }
    if collected.images.is_empty() && collected.failures.is_empty() {
        console.line("warning: no images found in the inputs");
    }
    let ids = image_ids(options, &collected.images)?;
    if let Some(dir) = &options.overlay {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut detector = make_detector(options.weights.as_deref()).map_err(|e| format!("cannot load the model: {e}"))?;

    let mut stages = StageTotals::default();
    let mut processed = Vec::new();
    let mut failures = collected.failures.len();
    let overlay_files = options.overlay.as_deref().map(|dir| overlay_files(dir, &collected.images));
    for (i, (path, id)) in collected.images.iter().zip(&ids).enumerate() {
        console.start(path.display());
        let overlay_file = overlay_files.as_ref().map(|files| files[i].as_path());
        match process_image(options, info, &mut detector, path, id, overlay_file, &mut stages) {
            Ok(image) => {
                if let Some(reason) = &image.truncated {
                    console.line(format_args!(
                        "{}: warning: image file is truncated: {reason}; decoded as far as the data goes",
                        path.display()
                    ));
                }
                processed.push(image);
            }
            Err(reason) => {
                failures += 1;
                console.line(format_args!("{}: error: {reason}", path.display()));
            }
        }
        console.advance();
    }
    console.finish();

    let detections: usize = processed.iter().map(|p| p.entries.len()).sum();
    if let Some(json) = &options.json {
        let clock = Instant::now();
        let entries: Vec<&ResultEntry> = processed.iter().flat_map(|p| &p.entries).collect();
        let meta = Meta { images: processed.iter().map(|p| p.info.clone()).collect(), categories: info.categories() };
        coco::write_json_atomic(json, &entries)?;
        coco::write_json_atomic(&coco::meta_path(json), &meta)?;
        stages.add("write results", clock.elapsed());
    }
    if let Some(path) = &options.timings {
        let seconds: Vec<f64> = processed.iter().map(|p| p.seconds).collect();
        let mut timings = serde_json::json!({ "seconds": seconds, "peak_rss_mb": peak_rss_mb() });
        if let Some(device) = device {
            let statistics = device.statistics();
            let peak_device_mb = statistics.peak_bytes as f64 / (1024.0 * 1024.0);
            timings["device"] = serde_json::json!(statistics.kind.to_string());
            timings["peak_device_mb"] = serde_json::json!(peak_device_mb);
            timings["kernel_launches"] = serde_json::json!(statistics.launches);
            console.line(format_args!(
                "{}: device {}: peak memory {peak_device_mb:.1} MiB, {} kernel launches",
                info.model_name, statistics.kind, statistics.launches
            ));
        }
        coco::write_json_atomic(path, &timings)?;
    }
    console.line(format_args!(
        "{}: {} images processed, {} failed, {} detections in {:.3} s",
        info.model_name,
        processed.len(),
        failures,
        detections,
        started.elapsed().as_secs_f64()
    ));
    console.line(stages.table(processed.len()).trim_end());
    if let (Some(json), Some(gt)) = (&options.json, &options.coco) {
        // The results just written, against the annotation file's ground truth (every image
        // of it: those not given count as missed). The results stand without it: a file that
        // cannot be evaluated (no annotations, other categories) is a warning.
        match crate::coco::evaluate_files(gt, json, None) {
            Ok(evaluations) => console.line(crate::coco::summaries_text(&evaluations).trim_end()),
            Err(e) => console.line(format_args!("{}: warning: no COCO evaluation: {e}", info.model_name)),
        }
    }
    Ok(failures)
}

/// The process's peak resident set (`VmHWM`), in MiB; `None` where `/proc` does not say.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The image ids in processing order: each image's 1-based position, or with `--coco` its id in
/// the annotation file. Every image must be in the annotation file, checked before any work.
fn image_ids(options: &Options, images: &[PathBuf]) -> Result<Vec<ImageId>, String> {
    let Some(coco_path) = &options.coco else {
        return Ok((1..=images.len() as i64).map(|id| ImageId { id, size: None }).collect());
    };
    let annotations = Annotations::read(coco_path)?;
    let mut ids = Vec::with_capacity(images.len());
    let mut missing = Vec::new();
    for path in images {
        match annotations.find(path) {
            Some(found) => ids.push(ImageId { id: found.id, size: found.size }),
            None => missing.push(path.display().to_string()),
        }
    }
    if missing.is_empty() {
        Ok(ids)
    } else {
        Err(format!("{}: no image named {}", coco_path.display(), missing.join(", ")))
    }
}

/// An image's id and, from an annotation file, its expected `(height, width)`.
struct ImageId {
    id: i64,
    size: Option<(u32, u32)>,
}

fn process_image<D: Detector>(
    options: &Options,
    info: &ProgramInfo,
    detector: &mut D,
    path: &Path,
    id: &ImageId,
    overlay_file: Option<&Path>,
    stages: &mut StageTotals,
) -> Result<Processed, String> {
    let clock = Instant::now();
    let inputs::Decoded { image, truncated } = inputs::decode(path, options.allow_truncated)?;
    stages.add("decode", clock.elapsed());
    let (height, width) = (image.height(), image.width());
    if let Some((h, w)) = id.size.filter(|&size| size != (height, width)) {
        return Err(format!("the image is {width}x{height}, the annotation file says {w}x{h}"));
    }

    let detect_clock = Instant::now();
    let (detections, times) = detector.detect(&image).map_err(|e| format!("detection failed: {e}"))?;
    let seconds = detect_clock.elapsed().as_secs_f64();
    for (stage, time) in &times {
        stages.add(stage, *time);
    }

    let clock = Instant::now();
    let kept: Vec<Detection> =
        detections.into_iter().filter(|d| options.score_threshold.is_none_or(|t| d.score > t)).collect();
    for detection in &kept {
        check_detection(detection, height, width)?;
    }
    // One image-sized mask per detection: binarized and encoded on every thread.
    use rayon::prelude::*;
    let masks: Vec<Option<Vec<bool>>> =
        kept.par_iter().map(|detection| detection.mask.as_ref().map(|m| m.binarize(options.mask_threshold))).collect();
    let entries: Vec<ResultEntry> =
        kept.par_iter().zip(&masks).map(|(d, mask)| ResultEntry::of(id.id, d.label, d, mask.as_deref(), height, width)).collect();
    stages.add("encode masks", clock.elapsed());

    if let Some(overlay_file) = overlay_file {
        let clock = Instant::now();
        let marks: Vec<overlay::Mark<'_>> = kept
            .iter()
            .zip(&masks)
            .filter(|(d, _)| d.score >= options.overlay_threshold)
            .map(|(d, mask)| overlay::Mark { bbox: d.bbox, label: d.label, score: d.score, mask: mask.as_deref() })
            .collect();
        let picture = overlay::render(&image, &marks, |label| info.class_name(label));
        write_png(overlay_file, &picture)?;
        stages.add("overlay", clock.elapsed());
    }

    let info = ImageInfo { id: id.id, file_name: path.to_string_lossy().into_owned(), height, width };
    Ok(Processed { info, entries, seconds, truncated })
}

/// Refuses what would make invalid JSON (NaN) or a mask that does not fit the image.
fn check_detection(detection: &Detection, height: u32, width: u32) -> Result<(), String> {
    if !detection.score.is_finite() || detection.bbox.iter().any(|v| !v.is_finite()) {
        return Err(format!("the detector returned a non-finite box or score: {:?}", detection.bbox));
    }
    if let Some(mask) = &detection.mask {
        if (mask.height, mask.width) != (height, width) || mask.probs().len() != height as usize * width as usize {
            return Err(format!(
                "the detector returned a {}x{} mask with {} values for a {width}x{height} image",
                mask.width,
                mask.height,
                mask.probs().len()
            ));
        }
    }
    Ok(())
}

/// Each image's overlay file in `dir`: its file stem with `.png`, or, where images share a stem
/// (`a.jpg` and `a.png`), the stem, `-`, the image's 1-based position and `.png`, so that no
/// overlay overwrites another.
fn overlay_files(dir: &Path, images: &[PathBuf]) -> Vec<PathBuf> {
    let stems: Vec<&std::ffi::OsStr> = images.iter().map(|p| p.file_stem().unwrap_or(p.as_os_str())).collect();
    let mut uses: HashMap<&std::ffi::OsStr, usize> = HashMap::new();
    for stem in &stems {
        *uses.entry(stem).or_default() += 1;
    }
    stems
        .iter()
        .enumerate()
        .map(|(i, stem)| {
            let mut name = stem.to_os_string();
            if uses[stem] > 1 {
                name.push(format!("-{}", i + 1));
            }
            name.push(".png");
            dir.join(name)
        })
        .collect()
}

fn write_png(path: &Path, picture: &RgbImage) -> Result<(), String> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| format!("{}: {e}", path.display()))?;
    coco::write_atomic(path, bytes.get_ref())
}
