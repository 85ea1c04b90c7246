//! Periodic evaluation on a validation set (`--val`): the inference network, compiled once, run
//! with the trainer's current weights on every image of a COCO annotation file, scored by
//! COCO's box and mask AP (`bbox_AP`, `segm_AP`: AP at IoU .50:.95).

use std::path::{Path, PathBuf};

use super::{BoxError, Evaluate, ModelState};
use crate::abi::forward::{Forward, ForwardFn, Interface};
use crate::coco::{self, dataset::Dataset, IouType};
use crate::program::coco::ResultEntry;
use crate::program::compiled::CompiledDetector;
use crate::program::inputs;
use crate::program::Detector;

/// Masks are binarized as a compiled program binarizes them by default.
const MASK_THRESHOLD: f32 = 0.5;

/// The validation set and the compiled inference network that [`Evaluate`] runs on it.
pub struct CocoEvaluation {
    function: ForwardFn,
    interface: Interface,
    /// The network's image input.
    input: String,
    ground_truth: Dataset,
    /// Each validation image's id and file.
    images: Vec<(i64, PathBuf)>,
    /// The data set's category id of each label (the training set's mapping).
    category_ids: Vec<i64>,
}

impl CocoEvaluation {
    /// The evaluation of `function` (an inference network taking one image as `input`) on the
    /// annotation file `annotations`, whose images are in `images` (default: `images/` beside
    /// it); labels name categories through `category_ids`.
    ///
    /// # Safety
    /// `function` is the forward function that `interface` describes, and stays valid as long as
    /// the evaluation.
    pub unsafe fn new(
        function: ForwardFn,
        interface: Interface,
        input: String,
        annotations: &Path,
        images: Option<&Path>,
        category_ids: Vec<i64>,
    ) -> Result<CocoEvaluation, BoxError> {
        let ground_truth = Dataset::read(annotations)?;
        if ground_truth.images.is_empty() {
            return Err(format!("{}: the validation set has no images", annotations.display()).into());
        }
        let folder = images.map(Path::to_path_buf).unwrap_or_else(|| annotations.parent().unwrap_or(Path::new("")).join("images"));
        let images = ground_truth.images.iter().map(|image| (image.id, folder.join(&image.file_name))).collect();
        Ok(CocoEvaluation { function, interface, input, ground_truth, images, category_ids })
    }
}

impl Evaluate for CocoEvaluation {
    fn evaluate(&mut self, state: &ModelState) -> Result<Vec<(String, f64)>, BoxError> {
        let weights = state.to_weights("the weights being trained")?;
        // SAFETY: as `CocoEvaluation::new` requires.
        let forward = unsafe { Forward::new(self.function, self.interface.clone(), weights)? };
        let mut detector = CompiledDetector::new(forward, self.input.clone());
        let mut results = vec![];
        let mut has_masks = false;
        for (id, path) in &self.images {
            let image = inputs::decode(path, false).map_err(|e| format!("{}: {e}", path.display()))?.image;
            let (height, width) = (image.height(), image.width());
            let (detections, _) = detector.detect(&image).map_err(|e| format!("{}: {e}", path.display()))?;
            for detection in &detections {
                let mask = detection.mask.as_ref().map(|m| m.binarize(MASK_THRESHOLD));
                has_masks |= mask.is_some();
                let category = usize::try_from(detection.label).ok().and_then(|l| self.category_ids.get(l)).copied().unwrap_or(detection.label);
                results.push(ResultEntry::of(*id, category, detection, mask.as_deref(), height, width));
            }
        }
        let mut scores = vec![];
        for (iou_type, name) in [(IouType::Bbox, "bbox_AP"), (IouType::Segm, "segm_AP")] {
            if iou_type == IouType::Segm && !has_masks && !results.is_empty() {
                continue;
            }
            let evaluation = coco::evaluate(&self.ground_truth, &results, iou_type)?;
            scores.push((name.to_string(), evaluation.stats[0]));
        }
        Ok(scores)
    }
}
