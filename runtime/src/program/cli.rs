//! The compiled program's command line.

use std::path::PathBuf;

use clap::Parser;

/// Runs the compiled detector on images and writes COCO results and overlays.
#[derive(Debug, Clone, Parser)]
#[command(about = "Runs the compiled detector on images and writes COCO results and overlays")]
pub struct Options {
    /// Image files (JPEG, PNG, BMP, TIFF) or directories of them (not recursive, sorted by name).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Weights to load instead of the ones built into the program (safetensors or a torch
    /// checkpoint).
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,

    /// Write detections in the COCO results format, with a `.meta.json` sidecar beside it.
    #[arg(long, value_name = "R.json")]
    pub json: Option<PathBuf>,

    /// Take image ids from this COCO annotation file, matching images by file name.
    #[arg(long, value_name = "GT.json", requires = "json")]
    pub coco: Option<PathBuf>,

    /// Write one PNG per image with masks, boxes, class names and scores into this directory.
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,

    // The default is Detectron2's demo's: lower scores clutter the picture.
    /// Draw on the overlays only detections whose score is at least T; the JSON results keep
    /// all detections.
    #[arg(long, value_name = "T", default_value_t = 0.5, value_parser = unit_interval)]
    pub overlay_threshold: f32,

    /// Keep only detections whose score is greater than T (default: keep all).
    #[arg(long, value_name = "T", value_parser = unit_interval)]
    pub score_threshold: Option<f32>,

    /// A mask pixel is set where the mask probability is greater than T.
    #[arg(long, value_name = "T", default_value_t = 0.5, value_parser = unit_interval)]
    pub mask_threshold: f32,

    /// Process truncated JPEG and PNG files, decoded as far as their data goes (the rest of the
    /// image made up by the decoder), instead of failing them.
    #[arg(long)]
    pub allow_truncated: bool,

    /// Write each image's detection time and the peak memory use as JSON
    /// (`{"seconds": [...], "peak_rss_mb": x}`), for benchmarks; a CUDA program adds its
    /// device, the device's peak memory and its kernel launches (`"device"`,
    /// `"peak_device_mb"`, `"kernel_launches"`) and prints the last two.
    #[arg(long, value_name = "T.json")]
    pub timings: Option<PathBuf>,

    /// Number of worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

fn unit_interval(s: &str) -> Result<f32, String> {
    let t: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!("{t} is outside [0, 1]"))
    }
}
