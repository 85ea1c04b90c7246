//! COCO data sets and evaluation: the annotation file ([`dataset`]), masks in COCO's run-length
//! encoding ([`mask`]), the evaluator of pycocotools' `COCOeval` ([`eval`]), and the command
//! that evaluates a results file (`mrc eval`).

pub mod dataset;
pub mod eval;
pub mod mask;

use std::path::PathBuf;

pub use eval::{evaluate, evaluate_files, EvalError, Evaluation, IouType};

/// `mrc eval`: COCO's summary numbers for a results file.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Detections in the COCO results format (a JSON list with image_id, category_id, bbox,
    /// score and, for masks, segmentation as compressed RLE).
    #[arg(value_name = "RESULTS.json")]
    pub results: PathBuf,
    /// The ground truth: a COCO annotation file.
    #[arg(long, value_name = "GT.json")]
    pub gt: PathBuf,
    /// What to compare (default: bbox, and segm when the results have masks).
    #[arg(long, value_enum)]
    pub iou_type: Option<IouType>,
    /// Also write the numbers as JSON: `{"bbox": {"summary": [12 numbers], "per_category_ap":
    /// {name: AP}}, "segm": ...}`.
    #[arg(long, value_name = "S.json")]
    pub json: Option<PathBuf>,
}

/// Runs `mrc eval`: the text to print, or the error as one line.
pub fn eval_main(args: &EvalArgs) -> Result<String, String> {
    let evaluations = evaluate_files(&args.gt, &args.results, args.iou_type).map_err(|e| e.to_string())?;
    if let Some(json) = &args.json {
        eval::write_stats_json(json, &evaluations).map_err(|e| e.to_string())?;
    }
    Ok(summaries_text(&evaluations))
}

/// The summaries of several evaluations, each under a line naming its IoU type.
pub fn summaries_text(evaluations: &[Evaluation]) -> String {
    evaluations
        .iter()
        .map(|e| format!("IoU type {}:\n{}", e.iou_type.name(), e.summary_text()))
        .collect::<Vec<_>>()
        .join("\n")
}
