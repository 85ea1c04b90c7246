//! The compiled program's driver, run on a fake detector: command line, inputs, COCO results
//! and sidecar, RLE against pycocotools, overlays, failures and exit codes.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mrc_runtime::coco::mask::{Rle, RleError};
use mrc_runtime::program::coco::{Meta, ResultEntry};
use mrc_runtime::program::{run_command_line, DetectError, Detection, Detector, MaskProbs, ProgramInfo, StageTimes};
use serde_json::Value;

/// Probability the fake detector gives to pixels inside its disk, and outside it.
const INSIDE: f32 = 0.7;
const OUTSIDE: f32 = 0.3;

/// Finds, in any image whose top-left pixel is not nearly black, one "person" (label 1, score
/// 0.9) whose box is the middle half of the image and whose mask is the disk inscribed in it,
/// plus a maskless "car" (label 3, score 0.2) inside it; nearly black images have no objects.
struct DiskDetector {
    seen: Rc<RefCell<Vec<RgbImage>>>,
}

fn middle_box(width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    [w / 4.0, h / 4.0, 3.0 * w / 4.0, 3.0 * h / 4.0]
}

fn in_disk(x: u32, y: u32, width: u32, height: u32) -> bool {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let r = width.min(height) as f32 / 4.0;
    let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
    dx * dx + dy * dy <= r * r
}

/// The disk as the driver should threshold it at 0.5, row-major.
fn disk_mask(width: u32, height: u32) -> Vec<bool> {
    (0..height).flat_map(|y| (0..width).map(move |x| in_disk(x, y, width, height))).collect()
}

impl Detector for DiskDetector {
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        self.seen.borrow_mut().push(image.clone());
        let times = vec![
            ("preprocess".to_owned(), Duration::from_millis(1)),
            ("backbone".to_owned(), Duration::from_millis(2)),
        ];
        if image.get_pixel(0, 0).0.iter().all(|&c| c < 10) {
            return Ok((Vec::new(), times));
        }
        let (width, height) = image.dimensions();
        let probs = disk_mask(width, height).into_iter().map(|set| if set { INSIDE } else { OUTSIDE }).collect();
        let person = Detection {
            bbox: middle_box(width, height),
            score: 0.9,
            label: 1,
            mask: Some(MaskProbs::plane_of(std::sync::Arc::new(probs), 0, [height, width])),
        };
        let [x1, y1, x2, y2] = person.bbox;
        let car = Detection { bbox: [x1 + 2.0, y1 + 2.0, x2 - 2.0, y2 - 2.0], score: 0.2, label: 3, mask: None };
        Ok((vec![person, car], times))
    }
}

fn program_info() -> ProgramInfo {
    ProgramInfo {
        model_name: "fake_rcnn".to_owned(),
        class_names: ["__background__", "person", "N/A", "car"].map(String::from).to_vec(),
    }
}

/// What one run of the program gave.
struct Run {
    code: u8,
    log: String,
    seen: Vec<RgbImage>,
    weights: Option<Option<PathBuf>>,
}

fn run(args: &[&str]) -> Run {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut weights = None;
    let mut log = Vec::new();
    let detector_seen = Rc::clone(&seen);
    let make = |path: Option<&Path>| {
        weights = Some(path.map(Path::to_path_buf));
        Ok(DiskDetector { seen: detector_seen })
    };
    let argv = std::iter::once("fake_rcnn".to_owned()).chain(args.iter().map(|a| a.to_string()));
    let code = run_command_line(&program_info(), make, argv, &mut log, false);
    let seen = seen.borrow().clone();
    Run { code, log: String::from_utf8(log).unwrap(), seen, weights }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn grey(width: u32, height: u32, value: u8) -> RgbImage {
    RgbImage::from_pixel(width, height, Rgb([value, value, value.saturating_add(10)]))
}

fn save(image: &RgbImage, path: &Path) {
    image.save(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn read_results(path: &Path) -> (Vec<ResultEntry>, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    (serde_json::from_str(&text).unwrap(), serde_json::from_str(&text).unwrap())
}

fn read_meta(results: &Path) -> Meta {
    let path = results.with_extension("meta.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn rle_matches_pycocotools_fixture() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/program/rle_cases.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(cases.len() >= 12);
    let mut long_runs = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let height = case["height"].as_u64().unwrap() as u32;
        let width = case["width"].as_u64().unwrap() as u32;
        let mut mask = Vec::new();
        for (i, run) in case["row_major_runs"].as_array().unwrap().iter().enumerate() {
            mask.extend(std::iter::repeat_n(i % 2 == 1, run.as_u64().unwrap() as usize));
        }
        assert_eq!(mask.len(), (height * width) as usize, "{name}");
        let expected_counts: Vec<u32> =
            case["uncompressed"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
        let expected_string = case["counts"].as_str().unwrap();

        let rle = Rle::encode(height, width, &mask);
        assert_eq!(rle.counts, expected_counts, "{name}: uncompressed counts");
        assert_eq!(rle.to_coco_string(), expected_string, "{name}: compressed counts");
        let parsed = Rle::from_coco_string(height, width, expected_string).unwrap();
        assert_eq!(parsed, rle, "{name}: parsed string");
        assert_eq!(parsed.decode(), mask, "{name}: decoded mask");
        assert_eq!(rle.area(), mask.iter().filter(|&&m| m).count() as u64, "{name}: area");
        long_runs += usize::from(rle.counts.iter().any(|&c| c > 1 << 15));
    }
    assert!(long_runs >= 2, "the fixture must hold runs longer than 2^15");
}

#[test]
fn rle_decoder_rejects_malformed_strings() {
    assert_eq!(Rle::from_coco_string(2, 2, "4"), Ok(Rle { height: 2, width: 2, counts: vec![4] }));
    assert_eq!(Rle::from_coco_string(2, 2, "3"), Err(RleError::WrongTotal { total: 3, expected: 4 }));
    assert_eq!(Rle::from_coco_string(2, 2, "4 "), Err(RleError::BadCharacter(' ', 1)));
    // 'P' is 0x20 + 0: a continuation with nothing after it.
    assert_eq!(Rle::from_coco_string(2, 2, "P"), Err(RleError::Truncated));
    // 'O' is 48 + 0x1f: one group with the sign bit, the count -1.
    assert_eq!(Rle::from_coco_string(2, 2, "O"), Err(RleError::CountOutOfRange { index: 0, value: -1 }));
    assert!(matches!(Rle::from_coco_string(1, 1, "oooooooooooo0"), Err(RleError::CountOutOfRange { index: 0, .. })));
}

#[test]
fn directory_is_sorted_and_ids_follow_processing_order() {
    let dir = temp_dir();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    save(&grey(40, 30, 100), &images.join("c.bmp"));
    save(&grey(33, 21, 120), &images.join("a.png"));
    save(&grey(24, 24, 140), &images.join("B.PNG"));
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(images.join("sub.png")).unwrap();
    let single = dir.path().join("single.tiff");
    save(&grey(17, 13, 90), &single);
    let results = dir.path().join("out/results.json");
    std::fs::create_dir(dir.path().join("out")).unwrap();

    let run = run(&[path_arg(&single), path_arg(&images), "--json", path_arg(&results)]);
    assert_eq!(run.code, 0, "{}", run.log);
    assert_eq!(run.weights, Some(None));

    let meta = read_meta(&results);
    let names: Vec<(i64, String, u32, u32)> = meta
        .images
        .iter()
        .map(|i| (i.id, Path::new(&i.file_name).file_name().unwrap().to_str().unwrap().to_owned(), i.width, i.height))
        .collect();
    let expected = [(1, "single.tiff", 17, 13), (2, "B.PNG", 24, 24), (3, "a.png", 33, 21), (4, "c.bmp", 40, 30)];
    assert_eq!(names, expected.map(|(id, n, w, h)| (id, n.to_owned(), w, h)).to_vec());
    assert_eq!(
        serde_json::to_value(&meta.categories).unwrap(),
        serde_json::json!([{"id": 1, "name": "person"}, {"id": 3, "name": "car"}])
    );

    let (entries, raw) = read_results(&results);
    assert_eq!(entries.len(), 8);
    for (entry, raw) in entries.iter().zip(raw.as_array().unwrap()) {
        let (_, _, width, height) = expected[(entry.image_id - 1) as usize];
        let [x1, y1, x2, y2] = middle_box(width, height);
        let mut keys: Vec<&str> = raw.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        if entry.category_id == 1 {
            assert_eq!(entry.bbox, [x1, y1, x2 - x1, y2 - y1], "bbox is [x, y, w, h]");
            assert_eq!(entry.score, 0.9);
            let segmentation = entry.segmentation.as_ref().unwrap();
            assert_eq!(segmentation.size, [height, width]);
            assert!(raw["segmentation"]["counts"].is_string());
            let rle = Rle::from_coco_string(height, width, &segmentation.counts).unwrap();
            assert_eq!(rle.decode(), disk_mask(width, height), "image {}", entry.image_id);
            assert_eq!(keys, ["bbox", "category_id", "image_id", "score", "segmentation"]);
        } else {
            assert_eq!(entry.category_id, 3);
            assert_eq!(entry.segmentation, None);
            assert_eq!(keys, ["bbox", "category_id", "image_id", "score"]);
        }
    }
    let ids: Vec<i64> = entries.iter().map(|e| e.image_id).collect();
    assert_eq!(ids, [1, 1, 2, 2, 3, 3, 4, 4]);
    // The atomic writes leave no temporary files behind.
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["results.json", "results.meta.json"]);
    // The summary adds the detector's stages to the driver's.
    for stage in ["decode", "preprocess", "backbone", "encode masks", "write results"] {
        assert!(run.log.contains(stage), "no {stage} in the summary:\n{}", run.log);
    }
    assert!(run.log.contains("4 images processed, 0 failed, 8 detections"), "{}", run.log);
}

#[test]
fn files_keep_the_command_line_order() {
    let dir = temp_dir();
    let (z, y) = (dir.path().join("z.png"), dir.path().join("y.png"));
    save(&grey(20, 20, 100), &z);
    save(&grey(30, 20, 100), &y);
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(&z), path_arg(&y), "--json", path_arg(&results)]);
    assert_eq!(run.code, 0, "{}", run.log);
    let meta = read_meta(&results);
    let order: Vec<(i64, u32)> = meta.images.iter().map(|i| (i.id, i.width)).collect();
    assert_eq!(order, [(1, 20), (2, 30)]);
}

fn write_annotations(path: &Path, images: Value) {
    let gt = serde_json::json!({"images": images, "annotations": [], "categories": [{"id": 1, "name": "person"}]});
    std::fs::write(path, gt.to_string()).unwrap();
}

#[test]
fn coco_annotation_file_gives_the_ids() {
    let dir = temp_dir();
    save(&grey(20, 16, 100), &dir.path().join("000000000042.jpg"));
    save(&grey(24, 18, 100), &dir.path().join("000000000007.jpg"));
    let gt = dir.path().join("gt.json");
    write_annotations(
        &gt,
        serde_json::json!([
            {"id": 42, "file_name": "val2017/000000000042.jpg", "height": 16, "width": 20},
            {"id": 7, "file_name": "000000000007.jpg", "height": 18, "width": 24},
            {"id": 9, "file_name": "not_given.jpg", "height": 1, "width": 1}
        ]),
    );
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(dir.path()), "--coco", path_arg(&gt), "--json", path_arg(&results)]);
    assert_eq!(run.code, 0, "{}", run.log);
    let (entries, _) = read_results(&results);
    let ids: Vec<i64> = entries.iter().map(|e| e.image_id).collect();
    assert_eq!(ids, [7, 7, 42, 42]);
    let meta_ids: Vec<i64> = read_meta(&results).images.iter().map(|i| i.id).collect();
    assert_eq!(meta_ids, [7, 42]);
}

#[test]
fn image_missing_from_annotation_file_is_named_and_nothing_is_written() {
    let dir = temp_dir();
    save(&grey(20, 16, 100), &dir.path().join("known.png"));
    save(&grey(20, 16, 100), &dir.path().join("stranger.png"));
    let gt = dir.path().join("gt.json");
    write_annotations(&gt, serde_json::json!([{"id": 3, "file_name": "known.png"}]));
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(dir.path()), "--coco", path_arg(&gt), "--json", path_arg(&results)]);
    assert_eq!(run.code, 1);
    assert!(run.log.contains("stranger.png") && run.log.contains("gt.json"), "{}", run.log);
    assert!(!run.log.contains("known.png"), "{}", run.log);
    assert!(run.seen.is_empty(), "no image is processed before the ids are known");
    assert!(!results.exists());
}

#[test]
fn image_size_differing_from_annotation_fails_that_image() {
    let dir = temp_dir();
    save(&grey(20, 16, 100), &dir.path().join("a.png"));
    save(&grey(20, 16, 100), &dir.path().join("b.png"));
    let gt = dir.path().join("gt.json");
    write_annotations(
        &gt,
        serde_json::json!([{"id": 1, "file_name": "a.png", "height": 16, "width": 20}, {"id": 2, "file_name": "b.png", "height": 20, "width": 16}]),
    );
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(dir.path()), "--coco", path_arg(&gt), "--json", path_arg(&results)]);
    assert_eq!(run.code, 1);
    assert!(run.log.contains("b.png: error: the image is 20x16, the annotation file says 16x20"), "{}", run.log);
    let ids: Vec<i64> = read_meta(&results).images.iter().map(|i| i.id).collect();
    assert_eq!(ids, [1]);
}

#[test]
fn overlay_marks_the_mask_box_and_label_only() {
    let dir = temp_dir();
    let input = grey(160, 120, 90);
    let path = dir.path().join("street.jpg");
    save(&input, &path);
    let decoded = image::open(&path).unwrap().into_rgb8();
    let overlays = dir.path().join("overlays/new");
    let run = run(&[path_arg(&path), "--overlay", path_arg(&overlays)]);
    assert_eq!(run.code, 0, "{}", run.log);

    let picture = image::open(overlays.join("street.png")).unwrap().into_rgb8();
    assert_eq!(picture.dimensions(), (160, 120));
    let [x1, y1, x2, y2] = middle_box(160, 120).map(|v| v as u32);
    // The disk's centre is tinted; the box's edge carries the class colour.
    assert_ne!(picture.get_pixel(80, 60), decoded.get_pixel(80, 60));
    assert_ne!(picture.get_pixel(x1, 60), decoded.get_pixel(x1, 60));
    assert_ne!(picture.get_pixel(80, y2 - 1), decoded.get_pixel(80, y2 - 1));
    // The label sits just above the box.
    let label_changed =
        (y1 - 10..y1).any(|y| (x1..x1 + 40).any(|x| picture.get_pixel(x, y) != decoded.get_pixel(x, y)));
    assert!(label_changed, "no label above the box");
    // Away from the box and its label nothing changes.
    for (x, y) in [(0, 0), (159, 0), (0, 119), (159, 119), (x2 + 5, 60), (20, y2 + 5)] {
        assert_eq!(picture.get_pixel(x, y), decoded.get_pixel(x, y), "pixel ({x}, {y})");
    }
    // Inside the box but outside the disk nothing changes: the car (0.2) is below the default
    // overlay threshold.
    assert_eq!(picture.get_pixel(x1 + 1, y1 + 1), decoded.get_pixel(x1 + 1, y1 + 1));
    assert!(run.log.contains("overlay"), "{}", run.log);
}

#[test]
fn overlay_draws_only_detections_scoring_at_least_the_overlay_threshold() {
    let dir = temp_dir();
    let input = grey(160, 120, 90);
    let path = dir.path().join("street.png");
    save(&input, &path);
    let [x1, _, x2, _] = middle_box(160, 120).map(|v| v as u32);
    // On the car's box outline, outside the person's disk and box outline.
    let (car_x, car_y) = (x1 + 2, 60);
    for (threshold, car_drawn) in [(None, false), (Some("0.25"), false), (Some("0.2"), true), (Some("0.0"), true)] {
        let overlays = dir.path().join(format!("overlays-{}", threshold.unwrap_or("default")));
        let results = dir.path().join("r.json");
        let mut args = vec![path_arg(&path), "--overlay", path_arg(&overlays), "--json", path_arg(&results)];
        args.extend(threshold.iter().flat_map(|t| ["--overlay-threshold", t]));
        let run = run(&args);
        assert_eq!(run.code, 0, "{threshold:?}: {}", run.log);
        let picture = image::open(overlays.join("street.png")).unwrap().into_rgb8();
        let changed = |x, y| picture.get_pixel(x, y) != input.get_pixel(x, y);
        assert_eq!(changed(car_x, car_y), car_drawn, "{threshold:?}: the car's box");
        assert_eq!(changed(x2 - 3, car_y), car_drawn, "{threshold:?}: the car's box, right edge");
        assert!(changed(x1, car_y) && changed(80, 60), "{threshold:?}: the person (0.9) is always drawn");
        let (entries, _) = read_results(&results);
        let labels: Vec<i64> = entries.iter().map(|e| e.category_id).collect();
        assert_eq!(labels, [1, 3], "{threshold:?}: the results keep every detection");
    }
}

#[test]
fn overlays_of_images_sharing_a_stem_get_distinct_names() {
    let dir = temp_dir();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    save(&grey(20, 20, 100), &images.join("a.bmp"));
    save(&grey(30, 20, 100), &images.join("a.png"));
    save(&grey(40, 20, 100), &images.join("b.png"));
    let overlays = dir.path().join("overlays");
    let run = run(&[path_arg(&images), "--overlay", path_arg(&overlays)]);
    assert_eq!(run.code, 0, "{}", run.log);
    let width = |name: &str| image::open(overlays.join(name)).unwrap().width();
    assert_eq!([width("a-1.png"), width("a-2.png"), width("b.png")], [20, 30, 40]);
    assert_eq!(std::fs::read_dir(&overlays).unwrap().count(), 3);
}

#[test]
fn corrupt_image_is_reported_by_name_and_the_rest_processed() {
    let dir = temp_dir();
    save(&grey(20, 20, 100), &dir.path().join("a.png"));
    std::fs::write(dir.path().join("b.jpg"), b"\xff\xd8\xff\xe0 this is not really a JPEG").unwrap();
    save(&grey(20, 20, 100), &dir.path().join("c.png"));
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(dir.path()), "--json", path_arg(&results)]);
    assert_eq!(run.code, 1);
    assert!(run.log.lines().any(|l| l.contains("b.jpg") && l.contains("error")), "{}", run.log);
    assert_eq!(run.seen.len(), 2);
    let meta = read_meta(&results);
    let ids: Vec<(i64, bool)> = meta.images.iter().map(|i| (i.id, i.file_name.ends_with("c.png"))).collect();
    assert_eq!(ids, [(1, false), (3, true)], "ids are positions, the failed image's included");
    assert!(run.log.contains("2 images processed, 1 failed"), "{}", run.log);
}

/// A colourful picture (not nearly black, so the fake detector finds objects) saved as `name`,
/// and a copy cut at half its length as `cut_name`.
fn save_whole_and_cut(dir: &Path, name: &str, cut_name: &str) -> (PathBuf, PathBuf) {
    let picture = RgbImage::from_fn(160, 120, |x, y| Rgb([100 + (x / 2) as u8, 2 * y as u8, ((x * y) % 200) as u8]));
    let (whole, cut) = (dir.join(name), dir.join(cut_name));
    save(&picture, &whole);
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    (whole, cut)
}

#[test]
fn truncated_jpeg_fails_by_name_unless_allowed() {
    let dir = temp_dir();
    let (good, cut) = save_whole_and_cut(dir.path(), "good.jpg", "cut.jpg");
    let cut_bytes = std::fs::read(&cut).unwrap();
    assert!(image::load_from_memory(&cut_bytes).is_ok(), "the decoder alone makes the missing half up");
    let results = dir.path().join("r.json");

    let strict = run(&[path_arg(&good), path_arg(&cut), "--json", path_arg(&results)]);
    assert_eq!(strict.code, 1, "{}", strict.log);
    let error = strict.log.lines().find(|l| l.contains("error")).unwrap_or_default();
    assert!(error.contains("cut.jpg: error: image file is truncated"), "{}", strict.log);
    assert!(error.contains("--allow-truncated"), "the error says how to accept it: {error}");
    assert_eq!(strict.seen.len(), 1);
    let names: Vec<String> = read_meta(&results).images.into_iter().map(|i| i.file_name).collect();
    assert_eq!(names, [path_arg(&good)]);
    let (entries, _) = read_results(&results);
    assert_eq!(entries.iter().map(|e| e.image_id).collect::<Vec<_>>(), [1, 1], "good.jpg's detections");
    assert!(strict.log.contains("1 images processed, 1 failed"), "{}", strict.log);

    let allowed = run(&[path_arg(&good), path_arg(&cut), "--json", path_arg(&results), "--allow-truncated"]);
    assert_eq!(allowed.code, 0, "{}", allowed.log);
    assert!(allowed.log.contains("cut.jpg: warning: image file is truncated"), "{}", allowed.log);
    assert_eq!(read_meta(&results).images.len(), 2);
    let (entries, _) = read_results(&results);
    assert_eq!(entries.iter().map(|e| e.image_id).collect::<Vec<_>>(), [1, 1, 2, 2]);
    let [whole, partial] = &allowed.seen[..] else { panic!("{} images seen", allowed.seen.len()) };
    assert_eq!(partial.dimensions(), whole.dimensions());
    assert_eq!(partial.get_pixel(5, 0), whole.get_pixel(5, 0), "the data there is decoded");
    assert_ne!(partial.get_pixel(155, 119), whole.get_pixel(155, 119), "the rest is made up");
}

#[test]
fn truncated_png_fails_by_name_unless_allowed() {
    let dir = temp_dir();
    let (good, cut) = save_whole_and_cut(dir.path(), "good.png", "cut.png");
    let strict = run(&[path_arg(&good), path_arg(&cut)]);
    assert_eq!(strict.code, 1, "{}", strict.log);
    assert!(strict.log.contains("cut.png: error: image file is truncated"), "{}", strict.log);
    assert_eq!(strict.seen.len(), 1);

    let allowed = run(&[path_arg(&good), path_arg(&cut), "--allow-truncated"]);
    assert_eq!(allowed.code, 0, "{}", allowed.log);
    let [whole, partial] = &allowed.seen[..] else { panic!("{} images seen", allowed.seen.len()) };
    assert_eq!(partial.get_pixel(5, 0), whole.get_pixel(5, 0), "the rows the data holds are decoded");
    assert_eq!(partial.get_pixel(155, 119).0, [0, 0, 0], "the missing rows are black");
}

#[test]
fn zero_detections_give_an_empty_list_and_success() {
    let dir = temp_dir();
    let path = dir.path().join("night.png");
    save(&RgbImage::new(30, 20), &path);
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(&path), "--json", path_arg(&results)]);
    assert_eq!(run.code, 0, "{}", run.log);
    assert_eq!(std::fs::read_to_string(&results).unwrap(), "[]");
    assert_eq!(read_meta(&results).images.len(), 1);
}

#[test]
fn grayscale_and_rgba_inputs_become_rgb() {
    let dir = temp_dir();
    let gray = dir.path().join("gray.png");
    GrayImage::from_pixel(12, 9, Luma([77])).save(&gray).unwrap();
    let rgba = dir.path().join("rgba.png");
    RgbaImage::from_pixel(10, 8, Rgba([10, 200, 30, 40])).save(&rgba).unwrap();
    let run = run(&[path_arg(&gray), path_arg(&rgba)]);
    assert_eq!(run.code, 0, "{}", run.log);
    assert_eq!(run.seen.len(), 2);
    assert_eq!(run.seen[0].dimensions(), (12, 9));
    assert!(run.seen[0].pixels().all(|p| p.0 == [77, 77, 77]));
    assert_eq!(run.seen[1].dimensions(), (10, 8));
    assert!(run.seen[1].pixels().all(|p| p.0 == [10, 200, 30]));
}

#[test]
fn missing_input_path_is_named_and_the_rest_processed() {
    let dir = temp_dir();
    let good = dir.path().join("good.png");
    save(&grey(20, 20, 100), &good);
    let missing = dir.path().join("no_such_image.jpg");
    let run = run(&[path_arg(&missing), path_arg(&good)]);
    assert_eq!(run.code, 1);
    assert!(run.log.contains("no_such_image.jpg: error"), "{}", run.log);
    assert_eq!(run.seen.len(), 1);
}

#[test]
fn thresholds_filter_detections_and_binarize_masks() {
    let dir = temp_dir();
    let path = dir.path().join("a.png");
    save(&grey(40, 40, 100), &path);
    let results = dir.path().join("r.json");
    let strict =
        run(&[path_arg(&path), "--json", path_arg(&results), "--score-threshold", "0.5", "--mask-threshold", "0.75"]);
    assert_eq!(strict.code, 0, "{}", strict.log);
    let (entries, _) = read_results(&results);
    assert_eq!(entries.len(), 1, "the car (0.2) is dropped");
    let rle = Rle::from_coco_string(40, 40, &entries[0].segmentation.as_ref().unwrap().counts).unwrap();
    assert_eq!(rle.area(), 0, "no probability exceeds 0.75");

    let loose = run(&[path_arg(&path), "--json", path_arg(&results), "--mask-threshold", "0.25"]);
    assert_eq!(loose.code, 0, "{}", loose.log);
    let (entries, _) = read_results(&results);
    assert_eq!(entries.len(), 2);
    let rle = Rle::from_coco_string(40, 40, &entries[0].segmentation.as_ref().unwrap().counts).unwrap();
    assert_eq!(rle.area(), 1600, "every probability exceeds 0.25");
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        &[][..],
        &["a.png", "--threads", "0"],
        &["a.png", "--score-threshold", "1.5"],
        &["a.png", "--overlay-threshold", "1.5"],
        &["a.png", "--overlay-threshold=-0.5"],
        &["a.png", "--overlay-threshold", "high"],
        &["a.png", "--coco", "gt.json"],
        &["a.png", "--frobnicate"],
    ] {
        let run = run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.log);
        assert!(run.log.starts_with("error:") && run.log.contains("--help"), "{args:?}: {}", run.log);
        assert_eq!(run.weights, None, "{args:?}: the detector is not built");
    }
    let run = run(&["a.png", "--overlay-threshold=-0.5"]);
    assert!(run.log.contains("'--overlay-threshold <T>': -0.5 is outside [0, 1]"), "{}", run.log);
}

#[test]
fn weights_path_is_handed_to_the_detector_factory() {
    let dir = temp_dir();
    let path = dir.path().join("a.png");
    save(&grey(20, 20, 100), &path);
    let run = run(&["--weights", "model.safetensors", path_arg(&path)]);
    assert_eq!(run.code, 0, "{}", run.log);
    assert_eq!(run.weights, Some(Some(PathBuf::from("model.safetensors"))));
}

#[test]
fn detector_that_cannot_be_built_fails_the_run() {
    let dir = temp_dir();
    let path = dir.path().join("a.png");
    save(&grey(20, 20, 100), &path);
    let mut log = Vec::new();
    let argv = ["fake_rcnn", path_arg(&path), "--weights", "missing.safetensors"].map(String::from);
    let code = run_command_line::<DiskDetector>(
        &program_info(),
        |_| Err("missing.safetensors: not found".into()),
        argv,
        &mut log,
        false,
    );
    assert_eq!(code, 1);
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("cannot load the model: missing.safetensors: not found"), "{log}");
}

#[test]
fn unwritable_results_fail_the_run_and_name_the_file() {
    let dir = temp_dir();
    let path = dir.path().join("a.png");
    save(&grey(20, 20, 100), &path);
    let results = dir.path().join("no_dir/r.json");
    let run = run(&[path_arg(&path), "--json", path_arg(&results)]);
    assert_eq!(run.code, 1);
    assert!(run.log.contains("no_dir/r.json"), "{}", run.log);
    assert!(!results.exists());
}

#[test]
fn directory_without_images_warns_and_writes_empty_results() {
    let dir = temp_dir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("readme.md"), "no images here").unwrap();
    let results = dir.path().join("r.json");
    let run = run(&[path_arg(&empty), "--json", path_arg(&results)]);
    assert_eq!(run.code, 0, "{}", run.log);
    assert!(run.log.contains("warning: no images found"), "{}", run.log);
    assert_eq!(std::fs::read_to_string(&results).unwrap(), "[]");
}
