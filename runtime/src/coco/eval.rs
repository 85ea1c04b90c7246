//! COCO's detection evaluation, number for number as pycocotools 2.0's `COCOeval` computes it
//! (`evaluate`, `accumulate`, `summarize`), with results loaded as `COCO.loadRes` loads them.
//!
//! Per image and category, detections (best score first, ties in file order: numpy's stable
//! mergesort) are matched greedily to ground truth at each IoU threshold .50:.05:.95; crowd
//! regions and objects outside the area range are "ignored": a detection matched to one counts
//! neither as a hit nor as a miss. Precision is interpolated (made non-increasing from the right)
//! and read at 101 recall points; a number that has no ground truth to measure is -1.
//!
//! As `loadRes` does for a results file with boxes (as every [`ResultEntry`] has), a detection's
//! area, which decides its area range, is its box's `w * h`, for `segm` too.
//!
//! Where pycocotools would go on with bad input, this stops with an error naming the entry: a
//! result on an image or category that the ground truth lacks, a `segm` result without a mask
//! or with one of another size than its image. A ground-truth object with id 0 is matched like
//! any other (pycocotools' id-as-flag takes it for unmatched). Results hold `f32` boxes and
//! scores, exactly the numbers of results written from `float32` tensors.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::dataset::{Dataset, DatasetError};
use super::mask::{box_iou, mask_iou, Rle};
use crate::program::coco::ResultEntry;

/// What is compared: boxes or masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum IouType {
    Bbox,
    Segm,
}

impl IouType {
    /// pycocotools' name (`iouType`), also the key in the stats JSON.
    pub fn name(self) -> &'static str {
        match self {
            IouType::Bbox => "bbox",
            IouType::Segm => "segm",
        }
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub iou_type: IouType,
    /// pycocotools' `COCOeval.stats`: AP at IoU .50:.95, .50, .75, AP small, medium, large,
    /// AR with 1, 10, 100 detections, AR small, medium, large.
    pub stats: [f64; 12],
    /// Per category in id order: (id, name, AP at IoU .50:.95, all areas, 100 detections; -1
    /// where the category has no ground truth).
    pub per_category: Vec<(i64, String, f64)>,
}

/// Why an evaluation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    /// A detection is wrong; `file` is the results file when there is one.
    #[error("{}result {index} (image {image_id}): {problem}", file_prefix(file))]
    Result { file: Option<PathBuf>, index: usize, image_id: i64, problem: String },
    /// A ground-truth object cannot be compared.
    #[error("ground truth annotation {id} (image {image_id}): {problem}")]
    GroundTruth { id: i64, image_id: i64, problem: String },
    /// Writing failed (the message names the file).
    #[error("{0}")]
    Write(String),
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref().map(|path| format!("{}: ", path.display())).unwrap_or_default()
}

/// IoU thresholds .50:.05:.95 as `np.linspace(.5, .95, 10)` computes them (a match needs an
/// IoU at least the threshold, so the last bits matter).
fn iou_thresholds() -> [f64; THRESHOLDS] {
    let step = (0.95 - 0.5) / 9.0;
    let mut thresholds = [0.0; THRESHOLDS];
    for (k, t) in thresholds.iter_mut().enumerate() {
        *t = k as f64 * step + 0.5;
    }
    thresholds[9] = 0.95;
    thresholds
}

/// Recall points 0:.01:1 as `np.linspace(0, 1, 101)`.
fn recall_points() -> [f64; RECALL_POINTS] {
    let step = 1.0 / 100.0;
    let mut points = [0.0; RECALL_POINTS];
    for (k, r) in points.iter_mut().enumerate() {
        *r = k as f64 * step;
    }
    points[100] = 1.0;
    points
}

/// Area ranges all, small, medium, large (bounds inclusive), and their labels.
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];
const MAX_DETECTIONS: [usize; 3] = [1, 10, 100];
const THRESHOLDS: usize = 10;
const RECALL_POINTS: usize = 101;

/// The region an IoU is computed on.
enum Region {
    Box([f64; 4]),
    Mask(Rle),
}

struct Truth {
    area: f64,
    crowd: bool,
    region: Region,
}

struct Detection {
    score: f64,
    area: f64,
    region: Region,
}

/// One image and category: its ground truth and detections (best first, at most 100) and
/// their IoUs, `[detection][truth]`.
struct Cell {
    truths: Vec<Truth>,
    detections: Vec<Detection>,
    ious: Vec<Vec<f64>>,
}

/// pycocotools' `evaluateImg` for one area range: for each threshold, which detections matched
/// and which are ignored; and how many truths are not ignored.
struct ImageEvaluation {
    scores: Vec<f64>,
    matched: [Vec<bool>; THRESHOLDS],
    ignored: [Vec<bool>; THRESHOLDS],
    counted_truths: usize,
}

/// An (image, category) pair by position in [`Index`].
type CellKey = (usize, usize);

/// The ground truth's image ids and categories, each sorted by id (pycocotools' `imgIds` and
/// `catIds`): evaluation's order.
struct Index<'a> {
    /// Position and `(height, width)` by id.
    images: HashMap<i64, (usize, (u32, u32))>,
    categories: Vec<(i64, &'a str)>,
    category_positions: HashMap<i64, usize>,
}

impl Index<'_> {
    fn new(gt: &Dataset) -> Index<'_> {
        let mut images: Vec<(i64, (u32, u32))> = gt.images.iter().map(|i| (i.id, (i.height, i.width))).collect();
        images.sort_unstable_by_key(|i| i.0);
        images.dedup_by_key(|i| i.0);
        let mut categories: Vec<(i64, &str)> = gt.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
        categories.sort_by_key(|c| c.0);
        Index {
            images: images.iter().enumerate().map(|(position, &(id, size))| (id, (position, size))).collect(),
            category_positions: categories.iter().enumerate().map(|(k, c)| (c.0, k)).collect(),
            categories,
        }
    }

    /// The (image, category) positions of an object and its image's `(height, width)`, or why
    /// it has none.
    fn cell(&self, image_id: i64, category_id: i64) -> Result<(CellKey, (u32, u32)), String> {
        let &(image, size) = self
            .images
            .get(&image_id)
            .ok_or_else(|| format!("image id {image_id} is not in the ground truth's images"))?;
        let category = self
            .category_positions
            .get(&category_id)
            .ok_or_else(|| format!("category id {category_id} is not in the ground truth's categories"))?;
        Ok(((image, *category), size))
    }
}

/// Evaluates `results` against `gt` as pycocotools' `COCOeval` does. Every result must name an
/// image and a category of `gt` and, for `segm`, carry a mask of its image's size.
pub fn evaluate(gt: &Dataset, results: &[ResultEntry], iou_type: IouType) -> Result<Evaluation, EvalError> {
    evaluate_named(gt, results, iou_type, None)
}

fn evaluate_named(
    gt: &Dataset,
    results: &[ResultEntry],
    iou_type: IouType,
    results_file: Option<&Path>,
) -> Result<Evaluation, EvalError> {
    let index = Index::new(gt);

    let mut truths: HashMap<CellKey, Vec<Truth>> = HashMap::new();
    for annotation in &gt.annotations {
        // pycocotools evaluates only annotations of listed images and categories.
        let Ok((key, (height, width))) = index.cell(annotation.image_id, annotation.category_id) else { continue };
        let region = match iou_type {
            IouType::Bbox => Region::Box(annotation.bbox),
            IouType::Segm => {
                let problem = |problem: String| EvalError::GroundTruth {
                    id: annotation.id,
                    image_id: annotation.image_id,
                    problem,
                };
                let segmentation = annotation.segmentation.as_ref().ok_or_else(|| problem("no segmentation".into()))?;
                Region::Mask(segmentation.to_rle(height, width).map_err(|e| problem(e.to_string()))?)
            }
        };
        let truth = Truth { area: annotation.area, crowd: annotation.iscrowd != 0, region };
        truths.entry(key).or_default().push(truth);
    }

    let mut detections: HashMap<CellKey, Vec<Detection>> = HashMap::new();
    for (i, result) in results.iter().enumerate() {
        let problem = |problem: String| EvalError::Result {
            file: results_file.map(Path::to_owned),
            index: i,
            image_id: result.image_id,
            problem,
        };
        let (key, (height, width)) = index.cell(result.image_id, result.category_id).map_err(problem)?;
        if !result.score.is_finite() || !result.bbox.iter().all(|v| v.is_finite()) {
            return Err(problem("non-finite score or bbox".into()));
        }
        let bbox = result.bbox.map(f64::from);
        let region = match iou_type {
            IouType::Bbox => Region::Box(bbox),
            IouType::Segm => {
                let segmentation = result.segmentation.as_ref().ok_or_else(|| problem("no segmentation".into()))?;
                if segmentation.size != [height, width] {
                    let [h, w] = segmentation.size;
                    return Err(problem(format!("mask of size {h}x{w} on an image of {height}x{width}")));
                }
                let rle =
                    Rle::from_coco_string(height, width, &segmentation.counts).map_err(|e| problem(e.to_string()))?;
                Region::Mask(rle)
            }
        };
        let detection = Detection { score: f64::from(result.score), area: bbox[2] * bbox[3], region };
        detections.entry(key).or_default().push(detection);
    }

    let mut keys: Vec<CellKey> = truths.keys().chain(detections.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let cells: HashMap<CellKey, Cell> = keys
        .into_iter()
        .map(|key| {
            let truths = truths.remove(&key).unwrap_or_default();
            let mut detections = detections.remove(&key).unwrap_or_default();
            // Stable: equal scores keep the results file's order, as numpy's mergesort.
            detections.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal));
            // Only the best 100 are evaluated; the rest cannot change their matches.
            detections.truncate(MAX_DETECTIONS[2]);
            let ious = region_ious(&detections, &truths);
            (key, Cell { truths, detections, ious })
        })
        .collect();

    let precision = accumulate(&cells, index.images.len(), index.categories.len());
    let stats = summarize(&precision);
    let per_category = index
        .categories
        .iter()
        .enumerate()
        .map(|(k, &(id, name))| {
            let values = (0..THRESHOLDS).flat_map(|t| (0..RECALL_POINTS).map(move |r| (t, r)));
            (id, name.to_owned(), mean_defined(values.map(|(t, r)| precision.precision[t][r][k][0][2])))
        })
        .collect();
    Ok(Evaluation { iou_type, stats, per_category })
}

fn region_ious(detections: &[Detection], truths: &[Truth]) -> Vec<Vec<f64>> {
    let crowd: Vec<bool> = truths.iter().map(|t| t.crowd).collect();
    let detection_regions: Vec<&Region> = detections.iter().map(|d| &d.region).collect();
    let truth_regions: Vec<&Region> = truths.iter().map(|t| &t.region).collect();
    match (boxes(&detection_regions), boxes(&truth_regions)) {
        (Some(d), Some(g)) => box_iou(&d, &g, &crowd),
        _ => mask_iou(&masks(&detection_regions), &masks(&truth_regions), &crowd),
    }
}

/// The boxes, when all regions are boxes.
fn boxes(regions: &[&Region]) -> Option<Vec<[f64; 4]>> {
    regions.iter().map(|r| if let Region::Box(b) = r { Some(*b) } else { None }).collect()
}

fn masks<'a>(regions: &[&'a Region]) -> Vec<&'a Rle> {
    regions.iter().filter_map(|r| if let Region::Mask(m) = r { Some(m) } else { None }).collect()
}

/// pycocotools' `evaluateImg` for one cell and area range.
fn evaluate_image(cell: &Cell, area: (f64, f64)) -> ImageEvaluation {
    let outside = |a: f64| a < area.0 || a > area.1;
    let truth_ignored: Vec<bool> = cell.truths.iter().map(|t| t.crowd || outside(t.area)).collect();
    // Truths that count first, ignored ones last, each group in its order (stable).
    let mut order: Vec<usize> = (0..cell.truths.len()).collect();
    order.sort_by_key(|&g| truth_ignored[g]);
    let detections = &cell.detections;
    let matched: [Vec<bool>; THRESHOLDS] = std::array::from_fn(|_| vec![false; detections.len()]);
    let ignored: [Vec<bool>; THRESHOLDS] = std::array::from_fn(|_| vec![false; detections.len()]);
    let mut evaluation = ImageEvaluation {
        scores: detections.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        counted_truths: truth_ignored.iter().filter(|&&i| !i).count(),
    };
    for (t, threshold) in iou_thresholds().into_iter().enumerate() {
        let mut truth_taken = vec![false; order.len()];
        for (d, ious) in cell.ious.iter().enumerate() {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut found: Option<usize> = None;
            for (position, &g) in order.iter().enumerate() {
                // A crowd region can absorb any number of detections.
                if truth_taken[position] && !cell.truths[g].crowd {
                    continue;
                }
                // Matched to a counted truth: the ignored ones (sorted last) cannot replace it.
                if found.is_some_and(|m| !truth_ignored[order[m]]) && truth_ignored[g] {
                    break;
                }
                if ious[g] < best {
                    continue;
                }
                best = ious[g];
                found = Some(position);
            }
            if let Some(position) = found {
                evaluation.ignored[t][d] = truth_ignored[order[position]];
                evaluation.matched[t][d] = true;
                truth_taken[position] = true;
            }
        }
        // Unmatched detections outside the area range are not counted as false positives.
        for (d, detection) in detections.iter().enumerate() {
            if !evaluation.matched[t][d] && outside(detection.area) {
                evaluation.ignored[t][d] = true;
            }
        }
    }
    evaluation
}

/// pycocotools' `eval['precision']` `[T][R][K][A][M]` and `eval['recall']` `[T][K][A][M]`, -1
/// where undefined.
struct Accumulated {
    precision: Vec<Vec<Vec<[[f64; 3]; 4]>>>,
    recall: Vec<Vec<[[f64; 3]; 4]>>,
}

fn accumulate(cells: &HashMap<CellKey, Cell>, images: usize, categories: usize) -> Accumulated {
    let mut precision = vec![vec![vec![[[-1.0; 3]; 4]; categories]; RECALL_POINTS]; THRESHOLDS];
    let mut recall = vec![vec![[[-1.0; 3]; 4]; categories]; THRESHOLDS];
    let recall_points = recall_points();
    for k in 0..categories {
        for (a, &area) in AREA_RANGES.iter().enumerate() {
            // Images in id order: their concatenation decides the order of equal scores.
            let evaluations: Vec<ImageEvaluation> =
                (0..images).filter_map(|i| cells.get(&(i, k))).map(|cell| evaluate_image(cell, area)).collect();
            if evaluations.is_empty() {
                continue;
            }
            let counted_truths: usize = evaluations.iter().map(|e| e.counted_truths).sum();
            if counted_truths == 0 {
                continue;
            }
            for (m, &max_detections) in MAX_DETECTIONS.iter().enumerate() {
                let mut entries: Vec<(f64, usize, usize)> = Vec::new();
                for (e, evaluation) in evaluations.iter().enumerate() {
                    let kept = evaluation.scores.len().min(max_detections);
                    entries.extend(evaluation.scores[..kept].iter().enumerate().map(|(d, &score)| (score, e, d)));
                }
                entries.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap_or(Ordering::Equal));
                for t in 0..THRESHOLDS {
                    let (mut true_positives, mut false_positives) = (0.0f64, 0.0f64);
                    let mut recalls = Vec::with_capacity(entries.len());
                    let mut precisions = Vec::with_capacity(entries.len());
                    for &(_, e, d) in &entries {
                        if evaluations[e].ignored[t][d] {
                            // Neither a hit nor a miss; the cumulative sums carry over.
                        } else if evaluations[e].matched[t][d] {
                            true_positives += 1.0;
                        } else {
                            false_positives += 1.0;
                        }
                        recalls.push(true_positives / counted_truths as f64);
                        precisions.push(true_positives / (false_positives + true_positives + f64::EPSILON));
                    }
                    recall[t][k][a][m] = recalls.last().copied().unwrap_or(0.0);
                    // Interpolation: the best precision at this recall or any higher one.
                    for i in (1..precisions.len()).rev() {
                        if precisions[i] > precisions[i - 1] {
                            precisions[i - 1] = precisions[i];
                        }
                    }
                    for (r, &point) in recall_points.iter().enumerate() {
                        // `np.searchsorted(rc, recThrs, side='left')`; past the end stays 0.
                        let i = recalls.partition_point(|&rc| rc < point);
                        precision[t][r][k][a][m] = precisions.get(i).copied().unwrap_or(0.0);
                    }
                }
            }
        }
    }
    Accumulated { precision, recall }
}

/// The mean of the values other than -1, or -1 when there are none (pycocotools'
/// `np.mean(s[s>-1])`).
fn mean_defined(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.filter(|&v| v > -1.0).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if count == 0 {
        -1.0
    } else {
        sum / count as f64
    }
}

/// One line of the summary: AP or AR, at one threshold (index) or all, area range, detections.
struct Line {
    average_precision: bool,
    threshold: Option<usize>,
    area: usize,
    max_detections: usize,
}

/// The twelve numbers of `COCOeval.summarize()`, in `stats` order.
const SUMMARY: [Line; 12] = {
    const fn line(average_precision: bool, threshold: Option<usize>, area: usize, max_detections: usize) -> Line {
        Line { average_precision, threshold, area, max_detections }
    }
    [
        line(true, None, 0, 2),
        line(true, Some(0), 0, 2),
        line(true, Some(5), 0, 2),
        line(true, None, 1, 2),
        line(true, None, 2, 2),
        line(true, None, 3, 2),
        line(false, None, 0, 0),
        line(false, None, 0, 1),
        line(false, None, 0, 2),
        line(false, None, 1, 2),
        line(false, None, 2, 2),
        line(false, None, 3, 2),
    ]
};

fn summarize(accumulated: &Accumulated) -> [f64; 12] {
    SUMMARY.map(|line| {
        let thresholds = match line.threshold {
            Some(t) => t..t + 1,
            None => 0..THRESHOLDS,
        };
        let (a, m) = (line.area, line.max_detections);
        if line.average_precision {
            let cells = thresholds.flat_map(|t| accumulated.precision[t].iter().flat_map(|by_k| by_k.iter()));
            mean_defined(cells.map(|by_area| by_area[a][m]))
        } else {
            mean_defined(thresholds.flat_map(|t| accumulated.recall[t].iter().map(|by_area| by_area[a][m])))
        }
    })
}

impl Evaluation {
    /// The twelve lines pycocotools' `summarize()` prints, then AP per category.
    pub fn summary_text(&self) -> String {
        let thresholds = iou_thresholds();
        let mut text = String::new();
        for (line, value) in SUMMARY.iter().zip(self.stats) {
            let (title, kind) =
                if line.average_precision { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            let iou = match line.threshold {
                Some(t) => format!("{:.2}", thresholds[t]),
                None => format!("{:.2}:{:.2}", thresholds[0], thresholds[THRESHOLDS - 1]),
            };
            let (area, max_detections) = (AREA_LABELS[line.area], MAX_DETECTIONS[line.max_detections]);
            let _ = writeln!(
                text,
                " {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_detections:>3} ] = {value:.3}"
            );
        }
        let width = self.per_category.iter().map(|c| c.1.len()).max().unwrap_or(0).max("category".len());
        let _ = writeln!(text, " AP per category @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]");
        let _ = writeln!(text, " {:>6}  {:<width$}  {:>6}", "id", "category", "AP");
        for (id, name, ap) in &self.per_category {
            let _ = writeln!(text, " {id:>6}  {name:<width$}  {ap:>6.3}");
        }
        text
    }

    /// This evaluation as in the fixture's `stats.json`: `{"summary": [12], "per_category_ap":
    /// {name: AP}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let per_category: serde_json::Map<String, serde_json::Value> =
            self.per_category.iter().map(|(_, name, ap)| (name.clone(), (*ap).into())).collect();
        serde_json::json!({ "summary": self.stats, "per_category_ap": per_category })
    }
}

/// Writes evaluations atomically as `{"bbox": {...}, "segm": {...}}` (see [`Evaluation::to_json`]).
pub fn write_stats_json(path: &Path, evaluations: &[Evaluation]) -> Result<(), EvalError> {
    let stats: serde_json::Map<String, serde_json::Value> =
        evaluations.iter().map(|e| (e.iou_type.name().to_owned(), e.to_json())).collect();
    crate::program::coco::write_json_atomic(path, &stats).map_err(EvalError::Write)
}

/// Reads a results file (a JSON list of [`ResultEntry`]) and checks it against `gt`: every
/// result on an image and a category of `gt`.
pub fn read_results(path: &Path, gt: &Dataset) -> Result<Vec<ResultEntry>, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io { path: path.to_owned(), source })?;
    let results: Vec<ResultEntry> = serde_json::from_slice(&bytes).map_err(|e| EvalError::Json {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: super::dataset::json_message(&e),
    })?;
    let index = Index::new(gt);
    for (i, result) in results.iter().enumerate() {
        index.cell(result.image_id, result.category_id).map_err(|problem| EvalError::Result {
            file: Some(path.to_owned()),
            index: i,
            image_id: result.image_id,
            problem,
        })?;
    }
    Ok(results)
}

/// Reads a ground-truth annotation file and a results file and evaluates them for `iou_type`
/// or, without one, for `bbox` and, when the results have masks, `segm` (errors name the file
/// and the entry).
pub fn evaluate_files(gt: &Path, results: &Path, iou_type: Option<IouType>) -> Result<Vec<Evaluation>, EvalError> {
    let dataset = Dataset::read(gt)?;
    let entries = read_results(results, &dataset)?;
    let iou_types = match iou_type {
        Some(iou_type) => vec![iou_type],
        None if entries.iter().any(|r| r.segmentation.is_some()) => vec![IouType::Bbox, IouType::Segm],
        None => vec![IouType::Bbox],
    };
    iou_types.iter().map(|&iou_type| evaluate_named(&dataset, &entries, iou_type, Some(results))).collect()
}
