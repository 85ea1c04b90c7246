//! Training data: the COCO loader against the annotation files it reads (targets, label map,
//! crowd regions, empty images), batches against the runtime's single-image preprocessing (itself
//! checked against torchvision's transform) and against torchvision's training step
//! (`train/`: the ground-truth boxes it resized, in the RoI sampler's record), the nearest mask
//! resize and box scaling against hand-worked cases, flips, the loader's order and prefetching,
//! the shapes generator against its README's rules read back from its own pixels, the VIA and
//! labelme importers against hand-written samples, and the error messages.
//!
//! Fixtures come from `$MRC_FIXTURES` (default: the project's `tests/fixtures`).

use std::path::{Path, PathBuf};

use mrc_runtime::coco::dataset::{Dataset, Segmentation};
use mrc_runtime::data::batch::{collate, resize_masks_nearest};
use mrc_runtime::data::{
    convert, data_main, generate_shapes, Batch, BatchOptions, ConvertOptions, DataCommand, Example, Format, Loader,
    LoaderOptions, TrainingSet, TrainingSetOptions,
};
use mrc_runtime::ops::preprocess::Transform;
use serde_json::json;

fn fixtures() -> PathBuf {
    std::env::var_os("MRC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"))
}

fn shapes_train() -> PathBuf {
    fixtures().join("shapes/train/annotations.json")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn open(path: &Path, keep_empty: bool) -> TrainingSet {
    TrainingSet::open(path, &TrainingSetOptions { images: None, keep_empty }).unwrap_or_else(|e| panic!("{e}"))
}

/// The mini model's transform: images resized to 320 on both sides.
fn mini_transform() -> Transform {
    Transform { min_size: 320, max_size: 320, ..Transform::default() }
}

fn loader(set: TrainingSet, batch_size: usize, hflip: f64, shuffle: bool) -> Loader {
    let batch = BatchOptions { transform: mini_transform(), hflip, seed: 11 };
    Loader::new(set, LoaderOptions { batch_size, shuffle, batch }).unwrap()
}

/// `[x, y, w, h]` of the set pixels of a row-major `h × w` mask, as COCO's `bbox`.
fn mask_bbox(mask: &[u8], w: usize) -> [usize; 4] {
    let set: Vec<(usize, usize)> =
        mask.iter().enumerate().filter(|(_, &m)| m != 0).map(|(p, _)| (p % w, p / w)).collect();
    let (x0, x1) = (set.iter().map(|p| p.0).min().unwrap(), set.iter().map(|p| p.0).max().unwrap());
    let (y0, y1) = (set.iter().map(|p| p.1).min().unwrap(), set.iter().map(|p| p.1).max().unwrap());
    [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
}

// ---------------------------------------------------------------------------------------------
// The loader on the shapes subset and on hand-made annotation files
// ---------------------------------------------------------------------------------------------

#[test]
fn shapes_subset_targets_are_the_annotation_file_s() {
    let set = open(&shapes_train(), false);
    let json = read_json(&shapes_train());
    assert_eq!(set.len(), 9);
    assert_eq!(set.class_names(), ["__background__", "square", "circle", "triangle"]);
    assert_eq!(set.labels_to_category_ids(), [0, 1, 2, 3]);
    assert_eq!(set.image_ids(), [1, 2, 3, 4, 5, 6, 7, 8, 36]);
    for (index, id) in set.image_ids().into_iter().enumerate() {
        let annotations: Vec<&serde_json::Value> =
            json["annotations"].as_array().unwrap().iter().filter(|a| a["image_id"] == id).collect();
        let (boxes, labels) = set.targets(index).unwrap();
        let expected: Vec<[f32; 4]> = annotations
            .iter()
            .map(|a| {
                let b: Vec<f32> = a["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            })
            .collect();
        assert_eq!(boxes, expected, "image {id}");
        let categories: Vec<i64> = annotations.iter().map(|a| a["category_id"].as_i64().unwrap()).collect();
        assert_eq!(labels, categories, "image {id}");

        let example = set.example(index).unwrap();
        assert_eq!(example.image_id, id);
        assert_eq!(example.image.dimensions(), (256, 256));
        for (g, a) in annotations.iter().enumerate() {
            let mask = &example.masks[g * 256 * 256..(g + 1) * 256 * 256];
            let area = mask.iter().filter(|&&m| m != 0).count() as f64;
            let bbox = mask_bbox(mask, 256).map(|v| v as f64);
            let expected_bbox: Vec<f64> = a["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            if a["segmentation"].is_object() {
                // An RLE is the mask itself: its area and box are exact.
                assert_eq!(area, a["area"].as_f64().unwrap(), "annotation {}", a["id"]);
                assert_eq!(bbox.to_vec(), expected_bbox, "annotation {}", a["id"]);
            } else {
                // A polygon reproduces the mask with IoU >= 0.95 (the set's README).
                let ratio = area / a["area"].as_f64().unwrap();
                assert!((0.95..=1.0 / 0.95).contains(&ratio), "annotation {}: area {area} vs {}", a["id"], a["area"]);
                for (got, want) in bbox.iter().zip(&expected_bbox) {
                    assert!((got - want).abs() <= 2.0, "annotation {}: bbox {bbox:?} vs {expected_bbox:?}", a["id"]);
                }
            }
        }
    }
}

/// A hand-made set over the subset's images: categories listed out of id order, a crowd region,
/// an image with only a crowd region, one without annotations, one whose only box is a pixel
/// wide, a box reaching past the border.
fn hand_made_set(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["00000.png", "00001.png", "00002.png", "00003.png"] {
        std::fs::copy(fixtures().join("shapes/train/images").join(name), images.join(name)).unwrap();
    }
    let crowd = |image_id: i64, id: i64| {
        // A 256×256 RLE of one run of 300 pixels from column 10 on.
        json!({"id": id, "image_id": image_id, "category_id": 3, "bbox": [10, 0, 2, 256], "area": 300, "iscrowd": 1,
               "segmentation": {"size": [256, 256], "counts": [2560, 300, 256 * 256 - 2860]}})
    };
    let square = json!([[10, 20, 40, 20, 40, 60, 10, 60]]);
    let file = json!({
        "images": [
            {"id": 5, "file_name": "00000.png", "height": 256, "width": 256},
            {"id": 2, "file_name": "00001.png", "height": 256, "width": 256},
            {"id": 9, "file_name": "00002.png", "height": 256, "width": 256},
            {"id": 4, "file_name": "00003.png", "height": 256, "width": 256}
        ],
        "categories": [{"id": 12, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 12, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0, "segmentation": square},
            crowd(5, 2),
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [240.25, 100, 16.5, 10.5], "area": 160, "iscrowd": 0,
             "segmentation": [[240.25, 100, 256, 100, 256, 110.5, 240.25, 110.5]]},
            crowd(2, 4),
            {"id": 5, "image_id": 4, "category_id": 7, "bbox": [50, 50, 1, 30], "area": 30, "iscrowd": 0,
             "segmentation": [[50, 50, 51, 50, 51, 80, 50, 80]]}
        ]
    });
    let path = dir.join("annotations.json");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    path
}

#[test]
fn crowd_regions_are_dropped_and_empty_images_skipped_as_torchvision_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = hand_made_set(dir.path());
    let set = open(&path, false);
    assert_eq!(set.class_names(), ["__background__", "a", "b", "c"]);
    assert_eq!(set.labels_to_category_ids(), [0, 3, 7, 12]);
    // Image 2 has only a crowd region, which `_has_valid_annotation` counts; 9 has nothing; 4's
    // only box is one pixel wide (`_has_only_empty_bbox`).
    assert_eq!(set.image_ids(), [2, 5]);
    assert_eq!(set.targets(0).unwrap(), (vec![], vec![]));
    let (boxes, labels) = set.targets(1).unwrap();
    assert_eq!(boxes, [[10.0, 20.0, 40.0, 60.0], [240.25, 100.0, 256.0, 110.5]], "crowd dropped, box clipped at 256");
    assert_eq!(labels, [3, 1]);
    let example = set.example(1).unwrap();
    assert_eq!(example.masks.len(), 2 * 256 * 256);
    assert_eq!(mask_bbox(&example.masks[..256 * 256], 256), [10, 20, 30, 40]);

    let kept = open(&path, true);
    assert_eq!(kept.image_ids(), [2, 4, 5, 9]);
    assert_eq!(kept.targets(1).unwrap(), (vec![[50.0, 50.0, 51.0, 80.0]], vec![2]));
    assert_eq!(kept.targets(3).unwrap(), (vec![], vec![]));

    // A batch with an image without targets: no rows for it.
    let batch = loader(kept, 4, 0.0, false).batch(0).unwrap();
    assert_eq!(batch.image_ids, [2, 4, 5, 9]);
    assert_eq!(batch.gt_image, [1, 2, 2]);
    assert_eq!(batch.gt_labels, [2, 3, 1]);
    assert_eq!(batch.mask_shape, [3, 320, 320]);
}

#[test]
fn bad_images_are_one_error_naming_the_file_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = hand_made_set(dir.path());
    let set = open(&path, false);
    let image = dir.path().join("images/00000.png");

    std::fs::remove_file(&image).unwrap();
    let message = set.example(1).unwrap_err().to_string();
    for part in [image.display().to_string(), "image 5 (\"00000.png\")".into(), path.display().to_string()] {
        assert!(message.contains(&part), "{message:?} lacks {part:?}");
    }

    std::fs::write(&image, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let message = set.example(1).unwrap_err().to_string();
    assert!(message.contains("00000.png") && message.contains("image 5"), "{message}");

    let small = image::RgbImage::new(20, 10);
    small.save(&image).unwrap();
    let message = set.example(1).unwrap_err().to_string();
    assert!(message.contains("20x10 pixels, the annotation file says 256x256"), "{message}");

    // A loader on the images of the set reports the same error for the batch.
    let message = loader(set, 2, 0.0, false).batch(0).unwrap_err().to_string();
    assert!(message.contains("image 5"), "{message}");
}

#[test]
fn bad_annotation_files_are_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = hand_made_set(dir.path());
    let mut file = read_json(&path);
    file["annotations"][0]["category_id"] = json!(99);
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let message = TrainingSet::open(&path, &TrainingSetOptions::default()).unwrap_err().to_string();
    assert!(
        message.contains("annotations.json") && message.contains("annotation 1") && message.contains("99"),
        "{message}"
    );

    std::fs::write(&path, b"{\"images\": [").unwrap();
    let message = TrainingSet::open(&path, &TrainingSetOptions::default()).unwrap_err().to_string();
    assert!(message.contains("annotations.json"), "{message}");

    // Nothing to train on.
    let empty = json!({"images": [{"id": 1, "file_name": "00000.png", "height": 256, "width": 256}], "annotations": [], "categories": []});
    std::fs::write(&path, serde_json::to_vec(&empty).unwrap()).unwrap();
    let set = TrainingSet::open(&path, &TrainingSetOptions::default()).unwrap();
    let message = Loader::new(
        set,
        LoaderOptions {
            batch_size: 1,
            shuffle: false,
            batch: BatchOptions { transform: mini_transform(), hflip: 0.0, seed: 0 },
        },
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("annotations.json") && message.contains("no image"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

/// The unpadded `[3, h, w]` content of image `n` of a batch.
fn batch_image(batch: &Batch, n: usize) -> Vec<f32> {
    let [_, c, bh, bw] = batch.image_shape;
    let [h, w] = batch.image_sizes[n].map(|s| s as usize);
    let image = &batch.images[n * c * bh * bw..(n + 1) * c * bh * bw];
    (0..c).flat_map(|ch| (0..h).flat_map(move |y| image[(ch * bh + y) * bw..][..w].to_vec())).collect()
}

#[test]
fn batch_images_are_the_single_image_preprocessing_padded() {
    // Images of different sizes and orientations, so that the padding shows.
    let read = |name: &str| image::open(fixtures().join("convert").join(name)).unwrap().into_rgb8();
    let examples: Vec<Example> = ["via/balloons_a.png", "labelme/kite_d.png", "via/balloons_b.png"]
        .iter()
        .zip(1..)
        .map(|(name, id)| Example { image_id: id, image: read(name), boxes: vec![], labels: vec![], masks: vec![] })
        .collect();
    let transform = Transform { min_size: 50, max_size: 70, ..Transform::default() };
    let batch = collate(&examples, &transform).unwrap();
    assert_eq!(batch.image_ids, [1, 2, 3]);
    let mut largest = [0, 0];
    for (n, example) in examples.iter().enumerate() {
        let (w, h) = example.image.dimensions();
        let (single, size) =
            mrc_runtime::detection::preprocess(example.image.as_raw(), [h as usize, w as usize], &transform).unwrap();
        assert_eq!(batch.image_sizes[n], size.map(|s| s as i64), "image {n}");
        let single = Batch {
            images: single.data,
            image_shape: single.shape.as_slice().try_into().unwrap(),
            image_sizes: vec![size.map(|s| s as i64)],
            ..batch.clone()
        };
        assert_eq!(batch_image(&batch, n), batch_image(&single, 0), "image {n}");
        largest = [largest[0].max(size[0]), largest[1].max(size[1])];
    }
    let [_, _, bh, bw] = batch.image_shape;
    assert_eq!([bh, bw], largest.map(|s| s.div_ceil(32) * 32));
    // Zero beyond each image's resized size.
    for n in 0..3 {
        let [h, w] = batch.image_sizes[n].map(|s| s as usize);
        let image = &batch.images[n * 3 * bh * bw..(n + 1) * 3 * bh * bw];
        let mut padding = image.iter().enumerate().filter(|(p, _)| (p % (bh * bw)) / bw >= h || p % bw >= w);
        assert!(padding.all(|(_, &v)| v == 0.0), "image {n}");
    }
}

#[test]
fn masks_resize_as_torch_nearest_and_boxes_as_resize_boxes() {
    // A 2×3 image made 3×4 (scale min(3/2, 5/3) = 1.5; width floor(4.5) = 4). torch's legacy
    // nearest takes source floor(dst · in/out) in float32: rows 0, 0, 1 (2/3), columns 0, 0, 1, 2
    // (3/4).
    let image = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([(x * 40 + y * 90) as u8, 7, 200]));
    let example = Example {
        image_id: 1,
        image,
        boxes: vec![[0.5, 1.0, 2.0, 2.0], [0.0, 0.0, 3.0, 1.0]],
        labels: vec![4, 2],
        masks: vec![1, 0, 1, 0, 1, 1, /* second */ 0, 0, 0, 1, 0, 0],
    };
    let transform = Transform { min_size: 3, max_size: 5, size_divisible: 8, ..Transform::default() };
    let batch = collate(std::slice::from_ref(&example), &transform).unwrap();
    assert_eq!(batch.image_sizes, [[3, 4]]);
    assert_eq!(batch.mask_shape, [2, 8, 8]);
    #[rustfmt::skip]
    let expected: [[u8; 4]; 6] = [
        [1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 1],
        [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0],
    ];
    for (g, rows) in expected.chunks(3).enumerate() {
        for (y, row) in rows.iter().enumerate() {
            assert_eq!(
                &batch.gt_masks[(g * 8 + y) * 8..][..8],
                [&row[..], &[0; 4]].concat().as_slice(),
                "mask {g} row {y}"
            );
        }
        assert!(batch.gt_masks[(g * 8 + 3) * 8..(g + 1) * 64].iter().all(|&v| v == 0), "mask {g} padding");
    }
    // resize_boxes: ratios 3/2 and 4/3 in float32.
    let rw = 4.0f32 / 3.0;
    assert_eq!(batch.gt_boxes, [[0.5 * rw, 1.5, 2.0 * rw, 3.0], [0.0, 0.0, 3.0 * rw, 1.5]]);
    assert_eq!(batch.gt_labels, [4, 2]);
    assert_eq!(batch.gt_image, [0, 0]);

    // Down: 5 → 3 takes 0, 1, 3 (5/3); doubling repeats each.
    let column: Vec<u8> = vec![10, 11, 12, 13, 14];
    assert_eq!(resize_masks_nearest(&column, 1, [5, 1], [3, 1]), [10, 11, 13]);
    assert_eq!(resize_masks_nearest(&column[..3], 1, [1, 3], [1, 6]), [10, 10, 11, 11, 12, 12]);
}

/// The train fixture's two images and targets, as the loader would give them.
fn train_fixture_examples() -> Vec<Example> {
    let dir = fixtures().join("train");
    let bytes = std::fs::read(dir.join("targets.safetensors")).unwrap();
    let targets = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(targets.tensor(name).unwrap().data()) };
    let i64s = |name: &str| -> Vec<i64> { bytemuck::pod_collect_to_vec(targets.tensor(name).unwrap().data()) };
    (0..2)
        .map(|i| Example {
            image_id: i,
            image: image::open(dir.join(format!("images/img{i}.png"))).unwrap().into_rgb8(),
            boxes: f32s(&format!("img{i}.boxes")).chunks_exact(4).map(|b| b.try_into().unwrap()).collect(),
            labels: i64s(&format!("img{i}.labels")),
            masks: targets.tensor(&format!("img{i}.masks")).unwrap().data().to_vec(),
        })
        .collect()
}

#[test]
fn train_fixture_targets_resize_as_torchvision_s() {
    let examples = train_fixture_examples();
    let batch = collate(&examples, &mini_transform()).unwrap();
    assert_eq!(batch.image_shape, [2, 3, 320, 320]);
    assert_eq!(batch.image_sizes, [[320, 320], [320, 320]]);

    // torchvision's resized ground truth, where its RoI sampler took it: the proposals with the
    // G boxes appended, sampled in index order, so the sampled appended boxes are the last rows.
    let bytes = std::fs::read(fixtures().join("train/step.safetensors")).unwrap();
    let step = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut compared = 0;
    for (i, example) in examples.iter().enumerate() {
        let get = |name: &str| step.tensor(&format!("roi.img{i}.{name}")).unwrap();
        let (positive, negative) = (get("positive").data().to_vec(), get("negative").data().to_vec());
        let sampled: Vec<f32> = bytemuck::pod_collect_to_vec(get("sampled_proposals").data());
        let g = example.boxes.len();
        let first = positive.len() - g;
        let taken: Vec<usize> = (0..g).filter(|&k| positive[first + k] != 0 || negative[first + k] != 0).collect();
        let rows = sampled.chunks_exact(4).rev().take(taken.len()).collect::<Vec<_>>();
        let offset = batch.gt_image.iter().position(|&b| b == i as i64).unwrap();
        for (&k, row) in taken.iter().rev().zip(rows) {
            assert_eq!(batch.gt_boxes[offset + k].as_slice(), row, "image {i} box {k}");
            compared += 1;
        }
        assert_eq!(&batch.gt_labels[offset..offset + g], example.labels.as_slice());
    }
    assert!(compared >= 3, "only {compared} boxes in the record");

    // The 256 → 320 nearest resize of the masks: each source pixel becomes the block of outputs
    // that map back to it, so the mask's box is the source box × 1.25 rounded outwards to pixels
    // ([ceil(1.25·x0), ceil(1.25·(x1 + 1)) − 1]) and the area grows by about 1.5625.
    let mut row = 0;
    for example in &examples {
        for source in example.masks.chunks_exact(256 * 256) {
            let resized = &batch.gt_masks[row * 320 * 320..(row + 1) * 320 * 320];
            let [x, y, w, h] = mask_bbox(source, 256);
            let scaled = |start: usize, len: usize| {
                let first = (start as f64 * 1.25).ceil() as usize;
                [first, ((start + len) as f64 * 1.25).ceil() as usize - first]
            };
            let ([rx, rw], [ry, rh]) = (scaled(x, w), scaled(y, h));
            assert_eq!(mask_bbox(resized, 320), [rx, ry, rw, rh], "mask {row}");
            let area = |m: &[u8]| m.iter().filter(|&&v| v != 0).count() as f64;
            let ratio = area(resized) / area(source);
            assert!((ratio - 1.5625).abs() < 0.05, "mask {row}: area ratio {ratio}");
            row += 1;
        }
    }
}

#[test]
fn flipping_twice_is_the_identity_and_boxes_follow_masks() {
    for example in train_fixture_examples() {
        let mut flipped = example.clone();
        flipped.flip_horizontal();
        assert_ne!(flipped, example);
        let w = example.image.width() as usize;
        for (g, (b, f)) in example.boxes.iter().zip(&flipped.boxes).enumerate() {
            assert_eq!(*f, [w as f32 - b[2], b[1], w as f32 - b[0], b[3]]);
            let [x, y, bw, bh] = mask_bbox(&example.masks[g * w * w..(g + 1) * w * w], w);
            assert_eq!(mask_bbox(&flipped.masks[g * w * w..(g + 1) * w * w], w), [w - x - bw, y, bw, bh]);
        }
        assert_eq!(flipped.image.get_pixel(0, 17), example.image.get_pixel(w as u32 - 1, 17));
        flipped.flip_horizontal();
        assert_eq!(flipped, example);
    }
}

#[test]
fn flips_are_drawn_per_image_and_reproducible() {
    let plain = loader(open(&shapes_train(), false), 3, 0.0, false);
    let always = loader(open(&shapes_train(), false), 3, 1.0, false);
    let half = loader(open(&shapes_train(), false), 3, 0.5, false);
    let (p, a) = (plain.batch(1).unwrap(), always.batch(1).unwrap());
    assert_eq!(p.image_ids, a.image_ids);
    // Flipping before the resize is mirroring after it, up to the float32 rounding of the
    // bilinear source positions (amplified by 1/std).
    for n in 0..3 {
        let (pi, ai) = (batch_image(&p, n), batch_image(&a, n));
        for (row_p, row_a) in pi.chunks_exact(320).zip(ai.chunks_exact(320)) {
            for (u, v) in row_p.iter().zip(row_a.iter().rev()) {
                assert!((u - v).abs() <= 1e-4, "image {n}: {u} vs {v}");
            }
        }
    }
    for (bp, ba) in p.gt_boxes.iter().zip(&a.gt_boxes) {
        assert_eq!(*ba, [320.0 - bp[2], bp[1], 320.0 - bp[0], bp[3]]);
    }
    // A fair coin per image: the same draw from a fresh loader, and about half flipped.
    let again = loader(open(&shapes_train(), false), 3, 0.5, false);
    let flipped: Vec<bool> = (0..40u64)
        .flat_map(|i| (0..3).map(move |n| (i, n)))
        .map(|(i, n)| mrc_runtime::data::batch::flips(&half.options().batch, i, n))
        .collect();
    let flipped_again: Vec<bool> = (0..40u64)
        .flat_map(|i| (0..3).map(move |n| (i, n)))
        .map(|(i, n)| mrc_runtime::data::batch::flips(&again.options().batch, i, n))
        .collect();
    assert_eq!(flipped, flipped_again);
    let count = flipped.iter().filter(|&&f| f).count();
    assert!((40..=80).contains(&count), "{count} of 120 flipped");
    assert_eq!(half.batch(7).unwrap(), again.batch(7).unwrap());
}

#[test]
fn batches_take_the_next_images_in_order_and_wrap_around() {
    let ordered = loader(open(&shapes_train(), false), 4, 0.0, false);
    assert_eq!(ordered.batch(0).unwrap().image_ids, [1, 2, 3, 4]);
    assert_eq!(ordered.indices(2), [8, 0, 1, 2]);
    assert_eq!(ordered.batch(2).unwrap().image_ids, [36, 1, 2, 3]);

    let shuffled = loader(open(&shapes_train(), false), 3, 0.0, true);
    let epoch = |e: u64| -> Vec<usize> { (3 * e..3 * e + 3).flat_map(|i| shuffled.indices(i)).collect() };
    let (first, second) = (epoch(0), epoch(1));
    for order in [&first, &second] {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>(), "each epoch visits every image once");
    }
    assert_ne!(first, second);
    assert_ne!(first, (0..9).collect::<Vec<_>>());
    assert_eq!(
        first,
        (0..3).flat_map(|i| loader(open(&shapes_train(), false), 3, 0.0, true).indices(i)).collect::<Vec<_>>()
    );
}

#[test]
fn prefetched_batches_are_the_batches_in_order() {
    let loader = loader(open(&shapes_train(), false), 2, 0.5, false);
    let prefetched: Vec<Batch> = loader.prefetch(3, 3, 2).take(6).map(Result::unwrap).collect();
    for (i, batch) in (3..).zip(&prefetched) {
        assert_eq!(*batch, loader.batch(i).unwrap(), "iteration {i}");
    }
    // Dropping a prefetch with work in flight stops its workers.
    let mut early = loader.prefetch(0, 2, 4);
    assert_eq!(early.next_batch().unwrap().image_ids, [1, 2]);
    drop(early);
}

// ---------------------------------------------------------------------------------------------
// The shapes generator
// ---------------------------------------------------------------------------------------------

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn generated_shapes_are_reproducible_and_follow_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    generate_shapes(12, 7, &a).unwrap();
    generate_shapes(12, 7, &b).unwrap();
    generate_shapes(12, 8, &c).unwrap();
    let listing = files(&a);
    assert_eq!(listing.len(), 13);
    assert_eq!(listing, files(&b), "same seed, same bytes");
    assert_ne!(listing, files(&c));
    let message = generate_shapes(1, 7, &a).unwrap_err().to_string();
    assert!(message.contains("not empty"), "{message}");

    let path = a.join("annotations.json");
    let dataset = Dataset::read(&path).unwrap();
    let names: Vec<(i64, &str)> = dataset.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
    assert_eq!(names, [(1, "square"), (2, "circle"), (3, "triangle")]);
    assert_eq!(dataset.images.iter().map(|i| i.id).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let (mut polygons, mut rles) = (0, 0);
    for image in &dataset.images {
        assert_eq!(image.file_name, format!("{:05}.png", image.id - 1));
        let pixels = image::open(a.join("images").join(&image.file_name)).unwrap();
        assert_eq!(pixels.color(), image::ColorType::Rgb8);
        let pixels = pixels.into_rgb8();
        assert_eq!(pixels.dimensions(), (256, 256));
        let annotations: Vec<_> = dataset.annotations.iter().filter(|a| a.image_id == image.id).collect();
        assert!((1..=4).contains(&annotations.len()), "image {}: {} shapes", image.id, annotations.len());
        for a in annotations {
            let mask = a.segmentation.as_ref().unwrap().to_rle(256, 256).unwrap().decode();
            // The object's visible pixels, read from the image: those of the colour its
            // segmentation mostly covers.
            let mut colours: Vec<[u8; 3]> = mask
                .iter()
                .enumerate()
                .filter(|(_, &m)| m)
                .map(|(p, _)| pixels.get_pixel(p as u32 % 256, p as u32 / 256).0)
                .collect();
            colours.sort();
            let colour = colours.chunk_by(|x, y| x == y).max_by_key(|run| run.len()).unwrap()[0];
            let visible: Vec<u8> = pixels.pixels().map(|p| u8::from(p.0 == colour)).collect();
            let area = visible.iter().filter(|&&v| v != 0).count();
            assert_eq!(a.area, area as f64, "annotation {}", a.id);
            assert_eq!(a.bbox, mask_bbox(&visible, 256).map(|v| v as f64), "annotation {}", a.id);
            let both = mask.iter().zip(&visible).filter(|(&m, &v)| m && v != 0).count();
            let either = mask.iter().zip(&visible).filter(|(&m, &v)| m || v != 0).count();
            match a.segmentation.as_ref().unwrap() {
                Segmentation::Polygons(_) => {
                    polygons += 1;
                    assert!(both as f64 >= 0.95 * either as f64, "annotation {}: IoU {both}/{either}", a.id);
                }
                Segmentation::Rle { .. } => {
                    rles += 1;
                    assert_eq!(both, either, "annotation {}: the RLE is the visible mask", a.id);
                }
            }
        }
    }
    assert!(polygons > 0 && rles > 0, "{polygons} polygons, {rles} RLEs: seed 7 should give both");
    // It is a training set.
    let set = open(&path, false);
    assert_eq!(set.len(), 12);
    assert_eq!(set.class_names(), ["__background__", "square", "circle", "triangle"]);
}

// ---------------------------------------------------------------------------------------------
// Converters and the command
// ---------------------------------------------------------------------------------------------

/// `(id, file_name, height, width)` of an image.
type ImageRow = (i64, String, u32, u32);
/// `(id, image_id, category_id, bbox, area)` of an annotation.
type AnnotationRow = (i64, i64, i64, [f64; 4], f64);

fn summary(dataset: &Dataset) -> (Vec<ImageRow>, Vec<AnnotationRow>) {
    let images = dataset.images.iter().map(|i| (i.id, i.file_name.clone(), i.height, i.width)).collect();
    let annotations = dataset.annotations.iter().map(|a| (a.id, a.image_id, a.category_id, a.bbox, a.area)).collect();
    (images, annotations)
}

#[test]
fn via_annotations_convert_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let input = fixtures().join("convert/via/via_region_data.json");
    let options = ConvertOptions { attribute: Some("kind".into()), ..ConvertOptions::default() };
    let dataset = convert(Format::Via, &[input], &out, &options).unwrap();
    assert_eq!(dataset, Dataset::read(&out).unwrap(), "what was written");
    let (images, annotations) = summary(&dataset);
    assert_eq!(images, [(1, "balloons_b.png".into(), 24, 32), (2, "balloons_a.png".into(), 30, 40)]);
    let names: Vec<&str> = dataset.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["balloon", "kite"]);
    // Whole-pixel rectangles cover exactly the pixels inside.
    assert_eq!(annotations[0], (1, 1, 1, [2.0, 3.0, 10.0, 5.0], 50.0));
    assert_eq!(annotations[1], (2, 1, 2, [14.0, 10.0, 10.0, 6.0], 60.0));
    // VIA 1.x regions "0" (ellipse 5×3), "2" (rectangle), "10" (circle r 6), in that order.
    let (id, image, category, bbox, area) = annotations[2];
    assert_eq!((id, image, category), (3, 2, 1));
    assert!((area - std::f64::consts::PI * 15.0).abs() < 5.0, "ellipse area {area}");
    assert!(bbox.iter().zip([15.0, 17.0, 10.0, 6.0]).all(|(a, b)| (a - b).abs() <= 1.0), "ellipse bbox {bbox:?}");
    assert_eq!(annotations[3], (4, 2, 2, [1.0, 1.0, 8.0, 20.0], 160.0));
    let (_, _, category, bbox, area) = annotations[4];
    assert_eq!(category, 1);
    assert!((area - std::f64::consts::PI * 36.0).abs() < 8.0, "circle area {area}");
    assert!(bbox.iter().zip([24.0, 9.0, 12.0, 12.0]).all(|(a, b)| (a - b).abs() <= 1.0), "circle bbox {bbox:?}");
    let segmentation = dataset.annotations[0].segmentation.clone().unwrap();
    assert_eq!(segmentation, Segmentation::Polygons(vec![vec![2.0, 3.0, 12.0, 3.0, 12.0, 8.0, 2.0, 8.0]]));

    // The converted file trains: images found in the VIA folder.
    let images = fixtures().join("convert/via");
    let set = TrainingSet::open(&out, &TrainingSetOptions { images: Some(images), keep_empty: false }).unwrap();
    assert_eq!(set.len(), 2);
    let example = set.example(0).unwrap();
    assert_eq!(mask_bbox(&example.masks[..24 * 32], 32), [2, 3, 10, 5]);
}

#[test]
fn via_projects_and_single_categories() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let input = fixtures().join("convert/via/via_project.json");
    let dataset = convert(Format::Via, std::slice::from_ref(&input), &out, &ConvertOptions::default()).unwrap();
    let (images, annotations) = summary(&dataset);
    assert_eq!(images, [(1, "balloons_a.png".into(), 30, 40)]);
    assert_eq!(annotations, [(1, 1, 1, [1.0, 1.0, 8.0, 20.0], 160.0)]);
    assert_eq!(dataset.categories[0].name, "object");
    let options = ConvertOptions { category: Some("balloon".into()), ..ConvertOptions::default() };
    let dataset = convert(Format::Via, &[input], &out, &options).unwrap();
    assert_eq!(dataset.categories[0].name, "balloon");
}

#[test]
fn labelme_files_convert() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let inputs = [fixtures().join("convert/labelme/kite_c.json"), fixtures().join("convert/labelme/kite_d.json")];
    let dataset = convert(Format::Labelme, &inputs, &out, &ConvertOptions::default()).unwrap();
    let (images, annotations) = summary(&dataset);
    assert_eq!(images, [(1, "kite_c.png".into(), 28, 36), (2, "kite_d.png".into(), 16, 20)]);
    let names: Vec<&str> = dataset.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kite", "bird"]);
    assert_eq!(annotations[0], (1, 1, 1, [4.0, 4.0, 10.0, 6.0], 60.0));
    assert_eq!(annotations[1], (2, 1, 2, [20.0, 12.0, 10.0, 8.0], 80.0), "rectangle from reversed corners");
    assert_eq!(annotations[2], (3, 2, 1, [1.0, 1.0, 8.0, 4.0], 32.0));
    let (_, _, category, _, area) = annotations[3];
    assert_eq!(category, 2);
    assert!((area - std::f64::consts::PI * 9.0).abs() < 5.0, "circle area {area}");

    let options = ConvertOptions { categories: vec!["bird".into(), "kite".into()], ..ConvertOptions::default() };
    let dataset = convert(Format::Labelme, &inputs, &out, &options).unwrap();
    assert_eq!(dataset.annotations.iter().map(|a| a.category_id).collect::<Vec<_>>(), [2, 1, 2, 1]);
    let options = ConvertOptions { categories: vec!["kite".into()], ..ConvertOptions::default() };
    let message = convert(Format::Labelme, &inputs, &out, &options).unwrap_err().to_string();
    assert!(message.contains("kite_c.json") && message.contains("shape 1 (\"bird\")"), "{message}");
}

/// Copies a converter sample into a temporary folder, edited, with its images.
fn edited_sample(dir: &Path, sample: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let source = fixtures().join("convert").join(sample);
    for entry in std::fs::read_dir(source.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut json = read_json(&source);
    edit(&mut json);
    let path = dir.join(source.file_name().unwrap());
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

#[test]
fn bad_converter_input_is_one_error_naming_the_file_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let options = ConvertOptions { attribute: Some("kind".into()), ..ConvertOptions::default() };
    let expect = |path: &Path, format: Format, options: &ConvertOptions, parts: &[&str]| {
        let message = convert(format, &[path.to_path_buf()], &out, options).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message:?} lacks the file");
        for part in parts {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
        assert!(!out.exists(), "nothing written");
    };

    let via = edited_sample(dir.path(), "via/via_region_data.json", |j| {
        j["balloons_b.png1459"]["regions"][0]["shape_attributes"]["all_points_x"] = json!([2, 12]);
        j["balloons_b.png1459"]["regions"][0]["shape_attributes"]["all_points_y"] = json!([3, 3]);
    });
    expect(&via, Format::Via, &options, &["balloons_b.png", "region 0", "polygon of 2 points"]);

    let via = edited_sample(dir.path(), "via/via_region_data.json", |j| {
        j["balloons_a.png2318"]["filename"] = json!("missing.png");
    });
    expect(&via, Format::Via, &options, &["entry \"balloons_a.png2318\"", "missing.png"]);

    let via = edited_sample(dir.path(), "via/via_region_data.json", |j| {
        j["balloons_b.png1459"]["regions"][1]["shape_attributes"]["name"] = json!("polyline");
    });
    expect(&via, Format::Via, &options, &["region 1", "polyline"]);

    expect(
        &via,
        Format::Via,
        &ConvertOptions { attribute: Some("colour".into()), ..options.clone() },
        &["region 0", "\"colour\""],
    );

    let labelme = edited_sample(dir.path(), "labelme/kite_c.json", |j| j["shapes"][1]["shape_type"] = json!("line"));
    expect(&labelme, Format::Labelme, &ConvertOptions::default(), &["shape 1 (\"bird\")", "\"line\""]);

    let labelme = edited_sample(dir.path(), "labelme/kite_c.json", |j| j["imageHeight"] = json!(27));
    expect(&labelme, Format::Labelme, &ConvertOptions::default(), &["kite_c.png", "36x27"]);

    std::fs::write(&labelme, b"{\"shapes\": [}").unwrap();
    expect(&labelme, Format::Labelme, &ConvertOptions::default(), &["not a labelme file", "line 1"]);
}

#[test]
fn data_commands_parse_and_run() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: DataCommand,
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shapes");
    let cli = Cli::try_parse_from(["mrc", "shapes", "--n", "2", "--seed", "3", "-o", out.to_str().unwrap()]).unwrap();
    assert_eq!(cli.command, DataCommand::Shapes { n: 2, seed: 3, o: out.clone() });
    let message = data_main(&cli.command).unwrap();
    assert!(message.contains("2 images"), "{message}");
    assert!(data_main(&cli.command).unwrap_err().contains("not empty"));

    let inputs = [fixtures().join("convert/labelme/kite_c.json"), fixtures().join("convert/labelme/kite_d.json")];
    let json = dir.path().join("labelme.json");
    let args = ["mrc", "convert", "--from", "labelme", inputs[0].to_str().unwrap(), inputs[1].to_str().unwrap()];
    let cli = Cli::try_parse_from(args.into_iter().chain(["-o", json.to_str().unwrap(), "--categories", "kite,bird"]))
        .unwrap();
    let message = data_main(&cli.command).unwrap();
    assert!(message.contains("2 images, 4 objects, categories kite, bird"), "{message}");
}
