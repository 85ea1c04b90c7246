//! COCO data sets and evaluation against pycocotools: the fixture's `coco_eval/` (`$MRC_FIXTURES`,
//! default the project's `tests/fixtures`: torchvision's detections on the shapes validation set,
//! with pycocotools' numbers in `stats.json`), masks against `mask_cases.json` (made by
//! pycocotools: `tests/fixtures/coco_eval/make_mask_cases.py`) and against pixel counts by hand,
//! small evaluations worked out by hand, and the errors for bad files.

use std::path::{Path, PathBuf};

use image::RgbImage;
use mrc_runtime::coco::dataset::{Annotation, Category, Dataset, Image, RleCounts, Segmentation};
use mrc_runtime::coco::eval::{evaluate, evaluate_files, read_results};
use mrc_runtime::coco::mask::{box_iou, mask_iou, Rle};
use mrc_runtime::coco::{eval_main, EvalArgs, IouType};
use mrc_runtime::program::coco::ResultEntry;
use mrc_runtime::program::{run_command_line, DetectError, Detection, Detector, MaskProbs, ProgramInfo, StageTimes};
use serde_json::Value;

fn project_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coco_eval")
}

fn fixtures() -> PathBuf {
    std::env::var_os("MRC_FIXTURES").map(|d| PathBuf::from(d).join("coco_eval")).unwrap_or_else(project_fixtures)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Every number of `evaluated` (the fixture's layout) within 1e-4 of pycocotools' `stats.json`.
fn assert_matches_stats(evaluated: &Value, iou_type: &str) {
    let reference = &read_json(&fixtures().join("stats.json"))[iou_type];
    let summary = reference["summary"].as_array().unwrap();
    let ours = evaluated[iou_type]["summary"].as_array().unwrap();
    assert_eq!(ours.len(), 12);
    for (i, (a, b)) in ours.iter().zip(summary).enumerate() {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{iou_type} stats[{i}]: {a} vs pycocotools {b}");
    }
    let per_category = reference["per_category_ap"].as_object().unwrap();
    let ours = evaluated[iou_type]["per_category_ap"].as_object().unwrap();
    assert_eq!(ours.len(), per_category.len(), "{iou_type}: categories");
    for (name, b) in per_category {
        let (a, b) = (ours[name].as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{iou_type} AP of {name}: {a} vs pycocotools {b}");
    }
}

fn evaluate_fixture(iou_type: IouType) -> Value {
    let dir = fixtures();
    let clock = std::time::Instant::now();
    let evaluations = evaluate_files(&dir.join("gt.json"), &dir.join("results.json"), Some(iou_type)).unwrap();
    eprintln!("{}: {:.3} s", iou_type.name(), clock.elapsed().as_secs_f64());
    assert_eq!(evaluations.len(), 1);
    let evaluation = &evaluations[0];
    let names: Vec<&str> = evaluation.per_category.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(names, ["square", "circle", "triangle"], "categories in id order");
    eprint!("{}", evaluation.summary_text());
    serde_json::json!({ iou_type.name(): evaluation.to_json() })
}

#[test]
fn bbox_evaluation_equals_pycocotools() {
    assert_matches_stats(&evaluate_fixture(IouType::Bbox), "bbox");
}

#[test]
fn segm_evaluation_equals_pycocotools() {
    assert_matches_stats(&evaluate_fixture(IouType::Segm), "segm");
}

#[test]
fn eval_command_prints_both_types_and_writes_the_stats_layout() {
    let dir = temp_dir();
    let json = dir.path().join("stats.json");
    let args = EvalArgs {
        results: fixtures().join("results.json"),
        gt: fixtures().join("gt.json"),
        iou_type: None,
        json: Some(json.clone()),
    };
    let text = eval_main(&args).unwrap();
    let written = read_json(&json);
    assert_matches_stats(&written, "bbox");
    assert_matches_stats(&written, "segm");
    // The twelve lines as pycocotools prints them, for each type.
    let bbox_ap = read_json(&fixtures().join("stats.json"))["bbox"]["summary"][0].as_f64().unwrap();
    let first = format!(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {bbox_ap:.3}");
    assert!(text.contains(&first), "{text}");
    assert!(text.contains(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = "), "{text}");
    assert!(text.contains(" Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = "), "{text}");
    assert_eq!(text.matches("maxDets=").count(), 2 * 13, "{text}");
    assert!(text.contains("IoU type bbox") && text.contains("IoU type segm"), "{text}");
}

// ---- masks ----

fn polygons_of(case: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(case["polygons"].clone()).unwrap()
}

fn u32s(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn f64s(value: &Value) -> Vec<f64> {
    serde_json::from_value(value.clone()).unwrap()
}

fn mask_cases() -> Value {
    read_json(&project_fixtures().join("mask_cases.json"))
}

#[test]
fn polygons_are_rasterized_as_pycocotools_does() {
    let cases = mask_cases();
    for (i, case) in cases["polygons"].as_array().unwrap().iter().enumerate() {
        let (h, w) = (case["height"].as_u64().unwrap() as u32, case["width"].as_u64().unwrap() as u32);
        let rle = Segmentation::Polygons(polygons_of(case)).to_rle(h, w).unwrap();
        assert_eq!(rle.counts, u32s(&case["counts"]), "case {i}: counts");
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "case {i}: area");
        assert_eq!(rle.to_bbox().to_vec(), f64s(&case["bbox"]), "case {i}: toBbox");
    }
}

#[test]
fn ious_are_pycocotools_ones() {
    let cases = mask_cases();
    for (i, case) in cases["ious"].as_array().unwrap().iter().enumerate() {
        let (h, w) = (case["height"].as_u64().unwrap() as u32, case["width"].as_u64().unwrap() as u32);
        let decode = |list: &Value| -> Vec<Rle> {
            list.as_array().unwrap().iter().map(|s| Rle::from_coco_string(h, w, s.as_str().unwrap()).unwrap()).collect()
        };
        let (detections, truths) = (decode(&case["detections"]), decode(&case["ground_truth"]));
        let crowd: Vec<bool> = case["iscrowd"].as_array().unwrap().iter().map(|c| c.as_u64() == Some(1)).collect();
        let boxes = |list: &Value| -> Vec<[f64; 4]> { serde_json::from_value(list.clone()).unwrap() };
        let ours = [
            ("mask", mask_iou(&detections.iter().collect::<Vec<_>>(), &truths.iter().collect::<Vec<_>>(), &crowd)),
            ("box", box_iou(&boxes(&case["detection_boxes"]), &boxes(&case["ground_truth_boxes"]), &crowd)),
        ];
        for (kind, ious) in ours {
            let expected: Vec<Vec<f64>> = serde_json::from_value(case[format!("{kind}_iou")].clone()).unwrap();
            if detections.is_empty() || truths.is_empty() {
                assert!(ious.iter().all(|row| row.is_empty()), "case {i}: {kind}");
                continue;
            }
            assert_eq!(ious.len(), expected.len(), "case {i}: {kind} rows");
            for (row, expected_row) in ious.iter().zip(&expected) {
                for (a, b) in row.iter().zip(expected_row) {
                    assert!((a - b).abs() <= 1e-12, "case {i}: {kind} IoU {a} vs pycocotools {b}\n{ious:?}");
                }
            }
        }
    }
}

/// Even-odd test of a point against polygons (which do not pass through it).
fn inside(polygons: &[Vec<f64>], x: f64, y: f64) -> bool {
    let mut inside = false;
    for polygon in polygons {
        let points: Vec<(f64, f64)> = polygon.chunks(2).map(|p| (p[0], p[1])).collect();
        let mut crossings = 0;
        for (k, &(x0, y0)) in points.iter().enumerate() {
            let (x1, y1) = points[(k + 1) % points.len()];
            if (y0 > y) != (y1 > y) && x < x0 + (y - y0) * (x1 - x0) / (y1 - y0) {
                crossings += 1;
            }
        }
        inside |= crossings % 2 == 1;
    }
    inside
}

#[test]
fn polygon_pixels_are_those_whose_centres_are_inside() {
    // Pixel (x, y) covers [x, x+1) × [y, y+1); COCO sets a pixel when its centre is inside (for
    // several polygons: inside any). COCO traces edges on a 1/5-pixel grid, so the shapes keep
    // their vertices on that grid, their slanted edges at 45°, and no centre on an edge.
    let shapes: [&[&[f64]]; 6] = [
        &[&[1.2, 1.2, 5.7, 1.2, 5.7, 4.7, 1.2, 4.7]],
        &[&[0.2, 0.2, 8.2, 0.2, 0.2, 8.2]],
        // Concave: an L.
        &[&[1.1, 1.1, 8.9, 1.1, 8.9, 3.9, 3.9, 3.9, 3.9, 9.9, 1.1, 9.9]],
        // Two overlapping polygons: their union.
        &[&[0.3, 0.3, 4.8, 0.3, 4.8, 4.8, 0.3, 4.8], &[6.2, 2.4, 10.0, 6.2, 6.2, 10.0, 2.4, 6.2]],
        // Partly outside the image.
        &[&[-3.2, -2.2, 8.8, -2.2, -3.2, 9.8]],
        &[&[-2.2, 4.2, 6.2, 12.6, 6.2, 4.2]],
    ];
    let (h, w) = (12u32, 10u32);
    for shape in shapes {
        let polygons: Vec<Vec<f64>> = shape.iter().map(|p| p.to_vec()).collect();
        let rle = Segmentation::Polygons(polygons.clone()).to_rle(h, w).unwrap();
        let expected: Vec<bool> =
            (0..h * w).map(|p| inside(&polygons, f64::from(p % w) + 0.5, f64::from(p / w) + 0.5)).collect();
        assert_eq!(rle.decode(), expected, "{polygons:?}");
        assert_eq!(rle.area(), expected.iter().filter(|&&m| m).count() as u64);
    }
    // From 1.2 to 5.7 across and 1.2 to 4.7 down: centres 1.5..=5.5 and 1.5..=4.5, columns
    // 1..=5 and rows 1..=4; the box is their extent.
    let rle = Segmentation::Polygons(vec![vec![1.2, 1.2, 5.7, 1.2, 5.7, 4.7, 1.2, 4.7]]).to_rle(h, w).unwrap();
    assert_eq!((rle.area(), rle.to_bbox()), (20, [1.0, 1.0, 5.0, 4.0]));
}

#[test]
fn polygon_edges_through_pixel_centres_follow_pycocotools() {
    // pycocotools' rule where an edge passes through centres: a centre on a left or top edge is
    // outside, on a right or bottom edge inside (a square from 1.5 to 5.5 gives columns 2..=5).
    let rle = Segmentation::Polygons(vec![vec![1.5, 1.5, 5.5, 1.5, 5.5, 4.5, 1.5, 4.5]]).to_rle(8, 8).unwrap();
    let expected: Vec<bool> = (0..64).map(|p| (2..=5).contains(&(p % 8)) && (2..=4).contains(&(p / 8))).collect();
    assert_eq!(rle.decode(), expected);
    // Integer corners: [1, 5) × [1, 4).
    let rle = Segmentation::Polygons(vec![vec![1.0, 1.0, 5.0, 1.0, 5.0, 4.0, 1.0, 4.0]]).to_rle(8, 8).unwrap();
    assert_eq!((rle.area(), rle.to_bbox()), (12, [1.0, 1.0, 4.0, 3.0]));
}

#[test]
fn rle_segmentations_convert_as_pycocotools_reads_them() {
    // Uncompressed counts are kept as given, runs of zero length included.
    let uncompressed = Segmentation::Rle { size: [2, 3], counts: RleCounts::Uncompressed(vec![1, 0, 0, 2, 3]) };
    let rle = uncompressed.to_rle(2, 3).unwrap();
    assert_eq!(rle.counts, [1, 0, 0, 2, 3]);
    assert_eq!(rle.area(), 2);
    assert_eq!(rle.decode(), [false, true, false, true, false, false]);
    let mask = [false, true, true, false, true, false];
    let encoded = Rle::encode(2, 3, &mask);
    let compressed = Segmentation::Rle { size: [2, 3], counts: RleCounts::Compressed(encoded.to_coco_string()) };
    assert_eq!(compressed.to_rle(2, 3).unwrap().decode(), mask);
    // Set: columns 1 and 2 of row 0, column 1 of row 1; the box spans x 1..=2, y 0..=1.
    assert_eq!(encoded.to_bbox(), [1.0, 0.0, 2.0, 2.0]);
    let wrong_size = compressed.to_rle(3, 2).unwrap_err().to_string();
    assert!(wrong_size.contains("2x3") && wrong_size.contains("3x2"), "{wrong_size}");
    let short = Segmentation::Rle { size: [2, 3], counts: RleCounts::Uncompressed(vec![1, 2]) };
    assert!(short.to_rle(2, 3).unwrap_err().to_string().contains("add up to 3 pixels, the mask has 6"));
}

#[test]
fn merge_is_union_or_intersection() {
    let a = Rle::encode(2, 2, &[true, true, false, false]);
    let b = Rle::encode(2, 2, &[false, true, false, true]);
    assert_eq!(Rle::merge(&[a.clone(), b.clone()], false).unwrap().decode(), [true, true, false, true]);
    assert_eq!(Rle::merge(&[a.clone(), b.clone()], true).unwrap().decode(), [false, true, false, false]);
    assert_eq!(Rle::merge(std::slice::from_ref(&a), true).unwrap(), a);
    assert!(Rle::merge(&[a, Rle::encode(1, 4, &[true; 4])], false).is_err());
    assert!(Rle::merge(&[], false).is_err());
}

// ---- evaluations worked out by hand ----

fn square(x: f64, y: f64, size: f64) -> [f64; 4] {
    [x, y, size, size]
}

fn truth(id: i64, bbox: [f64; 4], iscrowd: u8) -> Annotation {
    let [x, y, w, h] = bbox;
    let polygon = vec![x, y, x + w, y, x + w, y + h, x, y + h];
    Annotation {
        id,
        image_id: 1,
        category_id: 7,
        bbox,
        area: w * h,
        iscrowd,
        segmentation: Some(Segmentation::Polygons(vec![polygon])),
    }
}

fn one_image(annotations: Vec<Annotation>) -> Dataset {
    Dataset {
        images: vec![Image { id: 1, file_name: "a.png".into(), height: 300, width: 300 }],
        annotations,
        categories: vec![Category { id: 7, name: "thing".into(), supercategory: None }],
    }
}

fn detection(bbox: [f64; 4], score: f32) -> ResultEntry {
    ResultEntry { image_id: 1, category_id: 7, bbox: bbox.map(|v| v as f32), score, segmentation: None }
}

#[test]
fn precision_is_interpolated_over_101_recall_points() {
    // Three objects; detections by score: hit, miss, miss, hit, hit. Recall 1/3, 1/3, 1/3, 2/3,
    // 1 at precision 1, 1/2, 1/3, 1/2, 3/5; interpolated (the best at any higher recall): 1,
    // 3/5, 3/5, 3/5, 3/5. Recall points 0 to .33 (34) read 1, .34 to .66 (33) and .67 to 1 (34)
    // read 3/5 (without interpolation the middle ones would read 1/2).
    let objects = [square(10.0, 10.0, 50.0), square(100.0, 10.0, 50.0), square(200.0, 10.0, 50.0)];
    let gt = one_image(objects.iter().zip(1..).map(|(&b, id)| truth(id, b, 0)).collect());
    let results = [
        detection(objects[0], 0.9),
        detection(square(10.0, 100.0, 50.0), 0.8),
        detection(square(100.0, 100.0, 50.0), 0.7),
        detection(objects[1], 0.6),
        detection(objects[2], 0.5),
    ];
    let evaluation = evaluate(&gt, &results, IouType::Bbox).unwrap();
    let ap = (34.0 + 67.0 * 0.6) / 101.0;
    // All objects are medium (2500 pixels): small and large are undefined.
    let expected = [ap, ap, ap, -1.0, ap, -1.0, 1.0 / 3.0, 1.0, 1.0, -1.0, 1.0, -1.0];
    for (i, (a, b)) in evaluation.stats.iter().zip(expected).enumerate() {
        assert!((a - b).abs() < 1e-12, "stats[{i}]: {a} vs {b}");
    }
    assert_eq!(evaluation.per_category.len(), 1);
    assert!((evaluation.per_category[0].2 - ap).abs() < 1e-12);
}

#[test]
fn detections_on_crowd_regions_are_ignored() {
    // Two objects found (scores .9 and .7) and, between them, detections on a crowd region:
    // ignored, neither hits nor misses, however many. The crowd's IoU is the detection's part
    // inside it: the one half inside the region has IoU 1/2 (a match at .50, not above: a
    // miss there; against a plain object of the region's size its IoU would be 1/8), the one
    // wholly inside has IoU 1.
    let crowd = truth(3, [120.0, 10.0, 50.0, 200.0], 1);
    let gt = one_image(vec![truth(1, square(10.0, 10.0, 100.0), 0), truth(2, square(150.0, 150.0, 100.0), 0), crowd]);
    let results = [
        detection(square(10.0, 10.0, 100.0), 0.9),
        detection(square(120.0, 10.0, 100.0), 0.8),
        detection(square(120.0, 110.0, 50.0), 0.75),
        detection(square(150.0, 150.0, 100.0), 0.7),
    ];
    let bbox = evaluate(&gt, &results, IouType::Bbox).unwrap();
    // At IoU .50: AP 1; above, the half-inside one misses: precision 1, 1/2, 2/3 at recall
    // 1/2, 1/2, 1, interpolated 1 up to recall .50 (51 points) and 2/3 above (50 points).
    let strict = (51.0 + 50.0 * 2.0 / 3.0) / 101.0;
    assert!((bbox.stats[1] - 1.0).abs() < 1e-12, "AP50 {}", bbox.stats[1]);
    assert!((bbox.stats[0] - (1.0 + 9.0 * strict) / 10.0).abs() < 1e-12, "AP {}", bbox.stats[0]);
    // The same with masks (the boxes' polygons rasterized: the same pixel counts).
    let with_masks: Vec<ResultEntry> = results
        .iter()
        .map(|r| {
            let [x, y, w, h] = r.bbox.map(f64::from);
            let mask: Vec<bool> = (0..300 * 300)
                .map(|p| {
                    let (px, py) = (f64::from(p % 300), f64::from(p / 300));
                    px >= x && px < x + w && py >= y && py < y + h
                })
                .collect();
            let segmentation = Some((&Rle::encode(300, 300, &mask)).into());
            ResultEntry { segmentation, ..r.clone() }
        })
        .collect();
    let segm = evaluate(&gt, &with_masks, IouType::Segm).unwrap();
    assert_eq!(segm.stats, bbox.stats);
}

#[test]
fn a_detection_matched_to_an_object_stays_matched_over_a_crowd_region() {
    // The detection is the object and lies wholly in a crowd region around it (crowd IoU 1,
    // as good as the object's): it hits the object, which is counted first.
    let gt = one_image(vec![truth(1, square(10.0, 10.0, 100.0), 0), truth(2, square(0.0, 0.0, 150.0), 1)]);
    let evaluation = evaluate(&gt, &[detection(square(10.0, 10.0, 100.0), 0.9)], IouType::Bbox).unwrap();
    assert!((evaluation.stats[0] - 1.0).abs() < 1e-12, "AP {}", evaluation.stats[0]);
    assert!((evaluation.stats[8] - 1.0).abs() < 1e-12, "AR {}", evaluation.stats[8]);
}

// ---- bad files ----

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

fn valid_gt() -> Value {
    serde_json::json!({
        "images": [{"id": 4, "file_name": "4.png", "height": 20, "width": 30}, {"id": 5, "file_name": "5.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 17, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
             "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
            {"id": 18, "image_id": 5, "category_id": 1, "bbox": [0, 0, 30, 20], "area": 600,
             "segmentation": {"size": [20, 30], "counts": [0, 600]}, "iscrowd": 1}
        ],
        "categories": [{"id": 1, "name": "box", "supercategory": "shape"}]
    })
}

fn read_error(dir: &Path, gt: &Value) -> String {
    let path = write(dir, "annotations.json", gt);
    Dataset::read(&path).unwrap_err().to_string()
}

#[test]
fn a_valid_file_reads_and_writes_back() {
    let dir = temp_dir();
    let path = write(dir.path(), "annotations.json", &valid_gt());
    let dataset = Dataset::read(&path).unwrap();
    assert_eq!(dataset.annotations[1].iscrowd, 1);
    assert_eq!(dataset.annotations[0].iscrowd, 0, "iscrowd defaults to 0");
    let copy = dir.path().join("copy.json");
    dataset.write(&copy).unwrap();
    assert_eq!(Dataset::read(&copy).unwrap(), dataset);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary file left");
}

#[test]
fn bad_annotation_files_name_the_file_and_the_entry() {
    let dir = temp_dir();
    let path = dir.path().join("annotations.json");
    std::fs::write(&path, "{\"images\": [\n  {\"id\": 1,, }]}").unwrap();
    let broken = Dataset::read(&path).unwrap_err().to_string();
    assert!(broken.contains("annotations.json: line 2, column"), "{broken}");

    // (what is changed, the change, the message expected)
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: [Case; 10] = [
        (
            "/annotations/0/segmentation",
            |gt| gt["annotations"][0]["segmentation"] = serde_json::json!([[1, 1, 6, 1, 6, 1e9]]),
            "annotation 17 (image 4): polygon 0 has the point (6, 1000000000), far outside the image (20x30)",
        ),
        ("/images/1/id", |gt| gt["images"][1]["id"] = 4.into(), "image 4: duplicate id (images[0] and images[1])"),
        ("/annotations/1/id", |gt| gt["annotations"][1]["id"] = 17.into(), "annotation 17 (image 5): duplicate id"),
        (
            "/annotations/0/image_id",
            |gt| gt["annotations"][0]["image_id"] = 9.into(),
            "annotation 17 (image 9): image id 9 is not in images",
        ),
        (
            "/annotations/0/category_id",
            |gt| gt["annotations"][0]["category_id"] = 2.into(),
            "annotation 17 (image 4): category id 2 is not in categories",
        ),
        (
            "/annotations/0/segmentation",
            |gt| gt["annotations"][0]["segmentation"] = serde_json::json!([[1, 1, 6, 1, 6, 6, 1, 6], [1, 1, 4, 4]]),
            "annotation 17 (image 4): polygon 1 with 2 points",
        ),
        (
            "/annotations/0/bbox",
            |gt| gt["annotations"][0]["bbox"] = serde_json::json!([20, 1, 15, 5]),
            "annotation 17 (image 4): bbox [20.0, 1.0, 15.0, 5.0] is outside the image (30x20)",
        ),
        (
            "/annotations/0/bbox",
            |gt| gt["annotations"][0]["bbox"] = serde_json::json!([2, 1, -1, 5]),
            "annotation 17 (image 4): bbox [2.0, 1.0, -1.0, 5.0] has a negative size",
        ),
        (
            "/annotations/1/segmentation",
            |gt| gt["annotations"][1]["segmentation"] = serde_json::json!({"size": [30, 20], "counts": [0, 600]}),
            "annotation 18 (image 5): RLE of size 30x20 on an image of 20x30",
        ),
        (
            "/categories/0",
            |gt| gt["categories"] = serde_json::json!([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
            "category 1: duplicate id",
        ),
    ];
    for (what, change, expected) in cases {
        let mut gt = valid_gt();
        change(&mut gt);
        let message = read_error(dir.path(), &gt);
        assert!(message.contains("annotations.json: ") && message.contains(expected), "{what}: {message}");
    }
    // Within a pixel of the border is accepted (annotation tools round).
    let mut gt = valid_gt();
    gt["annotations"][0]["bbox"] = serde_json::json!([-0.5, 1, 30.9, 5]);
    let path = write(dir.path(), "annotations.json", &gt);
    Dataset::read(&path).unwrap();
}

#[test]
fn bad_results_name_the_file_and_the_entry() {
    let dir = temp_dir();
    let gt_path = write(dir.path(), "gt.json", &valid_gt());
    let gt = Dataset::read(&gt_path).unwrap();
    let result = |image_id: i64, category_id: i64| serde_json::json!({"image_id": image_id, "category_id": category_id, "bbox": [1, 1, 4, 4], "score": 0.5});
    let cases = [
        (
            vec![result(4, 1), result(6, 1)],
            "results.json: result 1 (image 6): image id 6 is not in the ground truth's images",
        ),
        (
            vec![result(4, 1), result(4, 3)],
            "results.json: result 1 (image 4): category id 3 is not in the ground truth's categories",
        ),
    ];
    for (results, expected) in cases {
        let path = write(dir.path(), "results.json", &Value::Array(results));
        let message = read_results(&path, &gt).unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
    }
    let path = write(dir.path(), "results.json", &Value::Array(vec![result(4, 1)]));
    let message = evaluate_files(&gt_path, &path, Some(IouType::Segm)).unwrap_err().to_string();
    assert!(message.contains("results.json: result 0 (image 4): no segmentation"), "{message}");
    let args = EvalArgs { results: dir.path().join("missing.json"), gt: gt_path, iou_type: None, json: None };
    let message = eval_main(&args).unwrap_err();
    assert!(message.contains("missing.json") && !message.contains('\n'), "{message}");
}

// ---- the compiled program's --coco ----

/// Finds one 16×8 object at (4, 4), its mask the box's pixels.
struct BoxDetector;

impl Detector for BoxDetector {
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        let (width, height) = image.dimensions();
        let probs = (0..width * height)
            .map(|p| if (4..20).contains(&(p % width)) && (4..12).contains(&(p / width)) { 1.0 } else { 0.0 })
            .collect();
        let mask = Some(MaskProbs::plane_of(std::sync::Arc::new(probs), 0, [height, width]));
        Ok((vec![Detection { bbox: [4.0, 4.0, 20.0, 12.0], score: 0.9, label: 1, mask }], Vec::new()))
    }
}

fn run_program(args: &[&Path]) -> (u8, String) {
    let info = ProgramInfo { model_name: "boxes".into(), class_names: vec!["__background__".into(), "thing".into()] };
    let argv = std::iter::once("boxes".to_owned()).chain(args.iter().map(|a| a.to_str().unwrap().to_owned()));
    let mut log = Vec::new();
    let code = run_command_line(&info, |_| Ok(BoxDetector), argv, &mut log, false);
    (code, String::from_utf8(log).unwrap())
}

#[test]
fn program_prints_the_evaluation_after_a_run_with_coco() {
    let dir = temp_dir();
    let image = dir.path().join("a.png");
    RgbImage::new(24, 16).save(&image).unwrap();
    let mut gt = serde_json::json!({
        "images": [{"id": 3, "file_name": "a.png", "height": 16, "width": 24}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [4, 4, 16, 8], "area": 128,
                         "segmentation": [[4, 4, 20, 4, 20, 12, 4, 12]]}],
        "categories": [{"id": 1, "name": "thing"}]
    });
    let gt_path = write(dir.path(), "gt.json", &gt);
    let results = dir.path().join("r.json");
    let (code, log) = run_program(&[&image, Path::new("--coco"), &gt_path, Path::new("--json"), &results]);
    assert_eq!(code, 0, "{log}");
    // A perfect detection of a small object: AP 1 (small 1, medium and large undefined).
    for iou_type in ["bbox", "segm"] {
        let text = &log[log.find(&format!("IoU type {iou_type}:")).unwrap_or_else(|| panic!("{log}"))..];
        assert!(
            text.contains(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"),
            "{log}"
        );
        assert!(
            text.contains(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = -1.000"),
            "{log}"
        );
    }
    // Results the ground truth cannot take: a warning; the results stand.
    gt["categories"][0]["id"] = 2.into();
    gt["annotations"][0]["category_id"] = 2.into();
    write(dir.path(), "gt.json", &gt);
    let (code, log) = run_program(&[&image, Path::new("--coco"), &gt_path, Path::new("--json"), &results]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("boxes: warning: no COCO evaluation: ") && log.contains("category id 1 is not in"), "{log}");
    assert!(results.exists());
}
