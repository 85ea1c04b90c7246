//! Operators without torchvision fixtures (RoIPool, RoIAlign's max mode, mask projection,
//! several images per batch, top-k, ...) checked against their definitions on small inputs
//! whose answers are known.

use mrc_runtime::ops::anchors::cell_anchors;
use mrc_runtime::ops::box_coder::{clip_boxes_to_image, remove_small_boxes};
use mrc_runtime::ops::multiscale::{infer_scale, multiscale_roi_align, LevelMapper, MultiScaleParams};
use mrc_runtime::ops::nms::{batched_nms, nms, topk_per_level};
use mrc_runtime::ops::paste_masks::{expand_box, paste_masks_in_image, project_masks_on_boxes};
use mrc_runtime::ops::preprocess::{batch_images, resize_boxes};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::ops::roi_pool::roi_pool;
use mrc_runtime::FeatureMap;

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs() + 1e-6
}

fn assert_all_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        assert!(close(*a, *b), "[{i}] {a} vs {b}");
    }
}

/// RoIPool by its definition: the RoI's corners rounded to cells, its (inclusive) extent cut
/// into `oh×ow` bins with floor/ceil edges, each bin the max of the cells it covers, found here
/// by testing every cell of the map for membership.
fn roi_pool_by_definition(map: &[f32], h: usize, w: usize, r: [f32; 4], scale: f32, o: usize) -> Vec<f32> {
    let q = |v: f32| (v * scale).round() as i64;
    let (x1, y1, x2, y2) = (q(r[0]), q(r[1]), q(r[2]), q(r[3]));
    let rh = (y2 - y1 + 1).max(1) as f32 / o as f32;
    let rw = (x2 - x1 + 1).max(1) as f32 / o as f32;
    let mut out = vec![f32::NEG_INFINITY; o * o];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for ph in 0..o {
                for pw in 0..o {
                    let in_y = y >= y1 + (ph as f32 * rh).floor() as i64 && y < y1 + ((ph + 1) as f32 * rh).ceil() as i64;
                    let in_x = x >= x1 + (pw as f32 * rw).floor() as i64 && x < x1 + ((pw + 1) as f32 * rw).ceil() as i64;
                    if in_y && in_x {
                        let v = &mut out[ph * o + pw];
                        *v = v.max(map[y as usize * w + x as usize]);
                    }
                }
            }
        }
    }
    out.into_iter().map(|v| if v == f32::NEG_INFINITY { 0.0 } else { v }).collect()
}

#[test]
fn roi_pool_matches_its_definition() {
    let (h, w) = (9, 11);
    let map: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.5).collect();
    let fm = FeatureMap::new(&map, [1, 1, h, w]).unwrap();
    let boxes = [
        [0.0, 0.0, 10.0, 8.0],
        [2.2, 1.7, 7.9, 6.4],
        [-3.0, -2.0, 4.0, 3.0],
        [8.0, 6.0, 30.0, 20.0],
        [5.0, 5.0, 5.0, 5.0],
        [40.0, 40.0, 50.0, 50.0],
        [12.0, 3.0, 30.0, 5.0],
    ];
    for scale in [1.0f32, 0.5] {
        for o in [1, 2, 3, 7] {
            let rois: Vec<[f32; 5]> = boxes.iter().map(|b| [0.0, b[0], b[1], b[2], b[3]]).collect();
            let out = roi_pool(&fm, &rois, [o, o], scale).unwrap();
            for (k, b) in boxes.iter().enumerate() {
                let expected = roi_pool_by_definition(&map, h, w, *b, scale, o);
                assert_eq!(&out.values[k * o * o..(k + 1) * o * o], &expected[..], "box {b:?} scale {scale} out {o}");
                for (j, &a) in out.argmax[k * o * o..(k + 1) * o * o].iter().enumerate() {
                    if a < 0 {
                        assert_eq!(expected[j], 0.0, "an empty bin pools to 0");
                    } else {
                        assert_eq!(map[a as usize], expected[j], "argmax points at the maximum");
                    }
                }
            }
        }
    }
}

#[test]
fn roi_pool_small_example() {
    let map: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let fm = FeatureMap::new(&map, [1, 1, 4, 4]).unwrap();
    let out = roi_pool(&fm, &[[0.0, 0.0, 0.0, 3.0, 3.0]], [2, 2], 1.0).unwrap();
    assert_eq!(out.values, vec![5.0, 7.0, 13.0, 15.0]);
    assert_eq!(out.argmax, vec![5, 7, 13, 15]);
    let outside = roi_pool(&fm, &[[0.0, 10.0, 10.0, 12.0, 12.0]], [2, 2], 1.0).unwrap();
    assert_eq!(outside.values, vec![0.0; 4]);
    assert_eq!(outside.argmax, vec![-1; 4]);
}

/// Bilinear interpolation as RoIAlign defines it: zero beyond one pixel outside the map,
/// border values clamped within it.
fn bilinear(map: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return 0.0;
    }
    let y = y.clamp(0.0, (h - 1) as f32);
    let x = x.clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (ly, lx) = (y - y0 as f32, x - x0 as f32);
    let at = |yy: usize, xx: usize| map[yy * w + xx];
    (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1))
}

#[test]
fn roi_align_max_mode_is_the_maximum_of_the_sampled_points() {
    let (h, w) = (8, 10);
    let map: Vec<f32> = (0..h * w).map(|i| ((i * 53 % 31) as f32) * 0.25 - 3.0).collect();
    let fm = FeatureMap::new(&map, [1, 1, h, w]).unwrap();
    let boxes = [[0.0, 0.0, 9.0, 7.0], [1.3, 2.1, 6.6, 5.2], [-2.0, -1.5, 3.0, 12.0], [4.0, 4.0, 4.0, 4.0]];
    for aligned in [false, true] {
        for sampling_ratio in [1, 2, 3] {
            let o = 3;
            let p = RoiAlignParams { output_size: [o, o], spatial_scale: 1.0, sampling_ratio, aligned, mode: PoolMode::Max };
            let rois: Vec<[f32; 5]> = boxes.iter().map(|b| [0.0, b[0], b[1], b[2], b[3]]).collect();
            let out = roi_align(&fm, &rois, &p).unwrap();
            for (k, b) in boxes.iter().enumerate() {
                let off = if aligned { 0.5 } else { 0.0 };
                let (sx, sy) = (b[0] - off, b[1] - off);
                let (mut rw, mut rh) = (b[2] - b[0], b[3] - b[1]);
                if !aligned {
                    rw = rw.max(1.0);
                    rh = rh.max(1.0);
                }
                let g = sampling_ratio as usize;
                for ph in 0..o {
                    for pw in 0..o {
                        let mut best = f32::NEG_INFINITY;
                        for iy in 0..g {
                            for ix in 0..g {
                                let y = sy + (ph as f32 + (iy as f32 + 0.5) / g as f32) * rh / o as f32;
                                let x = sx + (pw as f32 + (ix as f32 + 0.5) / g as f32) * rw / o as f32;
                                best = best.max(bilinear(&map, h, w, y, x));
                            }
                        }
                        let got = out[k * o * o + ph * o + pw];
                        assert!((got - best).abs() <= 1e-4, "box {b:?} aligned {aligned} bin ({ph},{pw}): {got} vs {best}");
                    }
                }
            }
        }
    }
}

#[test]
fn roi_align_hand_example_avg_and_max() {
    // f(y, x) = x on a 6×6 map; aligned box [0, 0, 4, 4] samples x at 0.5 and 2.5 in one bin.
    let map: Vec<f32> = (0..36).map(|i| (i % 6) as f32).collect();
    let fm = FeatureMap::new(&map, [1, 1, 6, 6]).unwrap();
    let mut p = RoiAlignParams { output_size: [1, 1], spatial_scale: 1.0, sampling_ratio: 2, aligned: true, mode: PoolMode::Avg };
    let roi = [[0.0, 0.0, 0.0, 4.0, 4.0]];
    assert_eq!(roi_align(&fm, &roi, &p).unwrap(), vec![1.5]);
    p.mode = PoolMode::Max;
    assert_eq!(roi_align(&fm, &roi, &p).unwrap(), vec![2.5]);
}

#[test]
fn roi_align_of_a_linear_map_is_its_value_at_the_bin_centre() {
    // Bilinear interpolation reproduces a linear map exactly, and the samples of a bin are
    // symmetric about its centre.
    let (h, w) = (20, 24);
    let f = |y: f32, x: f32| 0.75 * x - 0.5 * y + 2.0;
    let map: Vec<f32> = (0..h * w).map(|i| f((i / w) as f32, (i % w) as f32)).collect();
    let fm = FeatureMap::new(&map, [1, 1, h, w]).unwrap();
    for aligned in [false, true] {
        for sampling_ratio in [-1, 0, 1, 2, 4] {
            let p = RoiAlignParams { output_size: [4, 5], spatial_scale: 0.5, sampling_ratio, aligned, mode: PoolMode::Avg };
            let boxes = [[4.0f32, 6.0, 30.0, 36.0], [10.0, 2.0, 18.0, 37.0], [3.0, 3.0, 44.0, 37.0]];
            let rois: Vec<[f32; 5]> = boxes.iter().map(|b| [0.0, b[0], b[1], b[2], b[3]]).collect();
            let out = roi_align(&fm, &rois, &p).unwrap();
            for (k, b) in boxes.iter().enumerate() {
                let off = if aligned { 0.5 } else { 0.0 };
                let (x1, y1) = (b[0] * 0.5 - off, b[1] * 0.5 - off);
                let (bw, bh) = ((b[2] - b[0]) * 0.5 / 5.0, (b[3] - b[1]) * 0.5 / 4.0);
                for ph in 0..4 {
                    for pw in 0..5 {
                        let expected = f(y1 + (ph as f32 + 0.5) * bh, x1 + (pw as f32 + 0.5) * bw);
                        let got = out[k * 20 + ph * 5 + pw];
                        assert!((got - expected).abs() <= 1e-4, "{got} vs {expected}");
                    }
                }
            }
        }
    }
}

#[test]
fn roi_align_reads_the_image_of_its_batch_index() {
    let map: Vec<f32> = [vec![1.0f32; 2 * 25], vec![-3.0; 2 * 25]].concat();
    let fm = FeatureMap::new(&map, [2, 2, 5, 5]).unwrap();
    let p = RoiAlignParams { output_size: [2, 2], spatial_scale: 1.0, sampling_ratio: 2, aligned: false, mode: PoolMode::Avg };
    let out = roi_align(&fm, &[[1.0, 0.0, 0.0, 3.0, 3.0], [0.0, 1.0, 1.0, 2.0, 4.0]], &p).unwrap();
    assert_eq!(out, [vec![-3.0; 8], vec![1.0; 8]].concat());
}

#[test]
fn level_mapper_follows_the_fpn_rule() {
    let m = LevelMapper::new(2, 5);
    let sq = |s: f32| [10.0, 10.0, 10.0 + s, 10.0 + s];
    let boxes = [sq(224.0), sq(112.0), sq(111.9), sq(448.0), sq(1000.0), sq(8.0), sq(0.0)];
    assert_eq!(m.map_levels(&boxes).unwrap(), vec![2, 1, 0, 3, 3, 0, 0]);
}

#[test]
fn scales_are_inferred_as_powers_of_two() {
    assert_eq!(infer_scale([200, 272], [800, 1088]).unwrap(), 0.25);
    assert_eq!(infer_scale([13, 17], [800, 1088]).unwrap(), 1.0 / 64.0);
    assert_eq!(infer_scale([25, 34], [797, 1066]).unwrap(), 1.0 / 32.0);
}

#[test]
fn multiscale_roi_align_with_several_images() {
    // Two images of different sizes in one padded batch; each box must be pooled from its own
    // image at the level its size maps to.
    let (n, c) = (2, 3);
    let sizes = [[64usize, 64usize], [32, 32], [16, 16], [8, 8]];
    let maps: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(l, [h, w])| (0..n * c * h * w).map(|i| ((i * 7 + l * 13) % 17) as f32 - 8.0).collect())
        .collect();
    let fms: Vec<FeatureMap> = maps.iter().zip(&sizes).map(|(m, [h, w])| FeatureMap::new(m, [n, c, *h, *w]).unwrap()).collect();
    let b0 = [[0.0f32, 0.0, 40.0, 40.0], [10.0, 10.0, 250.0, 200.0]];
    let b1 = [[5.0f32, 5.0, 120.0, 130.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 255.0, 200.0]];
    let image_sizes = [[256usize, 200usize], [200, 256]];
    let p = MultiScaleParams::new([7, 7], 2);
    let out = multiscale_roi_align(&fms, &[&b0, &b1], &image_sizes, &p).unwrap();
    assert_eq!(out.scales, vec![0.25, 0.125, 0.0625, 0.03125]);
    let mapper = LevelMapper::new(2, 5);
    let per = c * 49;
    for (k, (img, b)) in b0.iter().map(|b| (0, b)).chain(b1.iter().map(|b| (1, b))).enumerate() {
        let level = mapper.map_levels(&[*b]).unwrap()[0];
        assert_eq!(out.levels[k], level);
        let single = RoiAlignParams {
            output_size: [7, 7],
            spatial_scale: out.scales[level],
            sampling_ratio: 2,
            aligned: false,
            mode: PoolMode::Avg,
        };
        let expected = roi_align(&fms[level], &[[img as f32, b[0], b[1], b[2], b[3]]], &single).unwrap();
        assert_eq!(&out.values[k * per..(k + 1) * per], &expected[..], "box {k}");
    }
    assert_eq!(out.levels, vec![0, 1, 1, 0, 2]);
}

#[test]
fn cell_anchors_are_torchvisions() {
    let a = cell_anchors(&[32.0], &[0.5, 1.0, 2.0]);
    assert_eq!(a, vec![[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]);
    // Several sizes per level: ratio-major, then size.
    let a = cell_anchors(&[16.0, 32.0], &[1.0, 2.0]);
    assert_eq!(a[0], [-8.0, -8.0, 8.0, 8.0]);
    assert_eq!(a[1], [-16.0, -16.0, 16.0, 16.0]);
    assert_eq!(a[2], [-6.0, -11.0, 6.0, 11.0]);
}

#[test]
fn clip_and_remove_small() {
    let b = [[-5.0, -1.0, 20.0, 30.0], [3.0, 4.0, 3.5, 9.0], [1.0, 1.0, 2.0, 2.0]];
    let clipped = clip_boxes_to_image(&b, [25, 10]).unwrap();
    assert_eq!(clipped[0], [0.0, 0.0, 10.0, 25.0]);
    assert_eq!(remove_small_boxes(&clipped, 1.0).unwrap(), vec![0, 2]);
    assert_eq!(remove_small_boxes(&clipped, 0.5).unwrap(), vec![0, 1, 2]);
}

#[test]
fn top_k_per_level_orders_by_score_then_index() {
    let scores = [0.1, 0.9, 0.5, 0.9, 0.3, /* level 2 */ 0.2, 0.2, 0.7];
    assert_eq!(topk_per_level(&scores, &[5, 3], 3).unwrap(), vec![1, 3, 2, 7, 5, 6]);
    assert_eq!(topk_per_level(&scores, &[5, 3], 1).unwrap(), vec![1, 7]);
    assert_eq!(topk_per_level(&scores, &[5, 3], 0).unwrap(), Vec::<usize>::new());
}

#[test]
fn batched_nms_is_per_class_nms_on_both_paths() {
    // 300 boxes go through the coordinate-offset path, 3,000 through the per-class loop;
    // both must equal the union of per-class NMS ordered by score.
    for n in [300usize, 3000] {
        let mut state = 12345u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut boxes = Vec::new();
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let (x, y, w, h) = (rnd() * 200.0, rnd() * 200.0, 5.0 + rnd() * 60.0, 5.0 + rnd() * 60.0);
            boxes.push([x, y, x + w, y + h]);
            scores.push((rnd() * 50.0).round() / 50.0);
            labels.push((rnd() * 4.0) as i64);
        }
        let got = batched_nms(&boxes, &scores, &labels, 0.5).unwrap();
        let mut expected = Vec::new();
        for l in 0..4 {
            let idx: Vec<usize> = (0..n).filter(|&i| labels[i] == l).collect();
            let b: Vec<[f32; 4]> = idx.iter().map(|&i| boxes[i]).collect();
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            expected.extend(nms(&b, &s, 0.5).unwrap().into_iter().map(|k| idx[k]));
        }
        expected.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
        if n <= 1000 {
            // One NMS over all boxes: equal scores stay in index order (a stable sort).
            assert!(got == expected, "{n} boxes: {got:?}");
        } else {
            // Kept boxes are sorted by torch's unstable sort: same boxes, same score sequence.
            let by_score = |v: &[usize]| v.iter().map(|&i| scores[i]).collect::<Vec<_>>();
            assert!(by_score(&got) == by_score(&expected), "{n} boxes: not sorted by score");
            let (mut g, mut e) = (got.clone(), expected.clone());
            g.sort_unstable();
            e.sort_unstable();
            assert!(g == e, "{n} boxes: kept sets differ");
        }
    }
}

#[test]
fn nms_suppresses_strictly_above_the_threshold() {
    // IoU of these two boxes is exactly 0.5.
    let boxes = [[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 1.0]];
    assert_eq!(nms(&boxes, &[0.9, 0.8], 0.5).unwrap(), vec![0, 1]);
    assert_eq!(nms(&boxes, &[0.9, 0.8], 0.49).unwrap(), vec![0]);
    assert_eq!(nms(&boxes, &[0.8, 0.9], 0.49).unwrap(), vec![1]);
}

#[test]
fn pasting_places_the_resized_mask_in_the_expanded_box() {
    // A constant mask over a box well inside the image: the padded mask's interior is 1,
    // its resampled border falls off to 0 outside the expanded box.
    let m = 28;
    let masks = vec![1.0f32; m * m];
    let b = [20.0f32, 30.0, 76.0, 58.0];
    let out = paste_masks_in_image(&masks, m, &[b], [100, 120], 1).unwrap();
    let e = expand_box(&b, m, 1);
    assert_eq!(e, [18, 29, 78, 59]);
    for y in 0..100 {
        for x in 0..120 {
            let v = out[y * 120 + x];
            let inside = (e[0]..=e[2]).contains(&(x as i64)) && (e[1]..=e[3]).contains(&(y as i64));
            if !inside {
                assert_eq!(v, 0.0, "({y},{x}) outside the box");
            }
            if (b[0] as usize + 3..b[2] as usize - 3).contains(&x) && (b[1] as usize + 3..b[3] as usize - 3).contains(&y) {
                assert!((v - 1.0).abs() < 1e-6, "({y},{x}) inside the box: {v}");
            }
        }
    }
}

#[test]
fn pasting_boxes_outside_or_degenerate_gives_zeros_or_a_clipped_mask() {
    let m = 28;
    let masks = vec![0.7f32; 3 * m * m];
    let boxes = [[-50.0, -40.0, -20.0, -10.0], [200.0, 10.0, 260.0, 30.0], [5.0, 5.0, 5.0, 5.0]];
    let out = paste_masks_in_image(&masks, m, &boxes, [40, 50], 1).unwrap();
    assert!(out[..2 * 40 * 50].iter().all(|&v| v == 0.0));
    // A zero-size box becomes a single pixel: the 1×1 resize samples the padded mask's centre.
    let third = &out[2 * 40 * 50..];
    assert_eq!(third.iter().filter(|&&v| v != 0.0).count(), 1);
    assert!((third[5 * 50 + 5] - 0.7).abs() < 1e-6);
}

#[test]
fn projected_masks_select_the_matched_ground_truth() {
    let (h, w) = (40, 50);
    // Mask 0 is 0 everywhere, mask 1 is x / 50.
    let gt: Vec<f32> = (0..2 * h * w).map(|i| if i < h * w { 0.0 } else { (i % w) as f32 / 50.0 }).collect();
    let boxes = [[4.0f32, 2.0, 32.0, 30.0], [4.0, 2.0, 32.0, 30.0]];
    let out = project_masks_on_boxes(&gt, [h, w], &boxes, &[1, 0], 28).unwrap();
    assert_eq!(out.len(), 2 * 28 * 28);
    for (pw, v) in out[..28].iter().enumerate() {
        let x = 4.0 + (pw as f32 + 0.5) * 28.0 / 28.0;
        assert!((v - x / 50.0).abs() < 1e-5, "column {pw}: {v} vs {}", x / 50.0);
    }
    assert!(out[28 * 28..].iter().all(|&v| v == 0.0));
}

#[test]
fn batching_pads_images_of_different_sizes() {
    let a = vec![1.0f32; 3 * 10 * 40];
    let b = vec![2.0f32; 3 * 33 * 20];
    let batch = batch_images(&[(&a, [10, 40]), (&b, [33, 20])], 3, 32).unwrap();
    assert_eq!(batch.shape, [2, 3, 64, 64]);
    assert_eq!(batch.image_sizes, vec![[10, 40], [33, 20]]);
    let at = |n: usize, c: usize, y: usize, x: usize| batch.data[((n * 3 + c) * 64 + y) * 64 + x];
    assert_eq!((at(0, 2, 9, 39), at(0, 2, 10, 39), at(0, 2, 9, 40)), (1.0, 0.0, 0.0));
    assert_eq!((at(1, 1, 32, 19), at(1, 1, 33, 19), at(1, 1, 32, 20)), (2.0, 0.0, 0.0));
    let total: f32 = batch.data.iter().sum();
    assert_eq!(total, 3.0 * 400.0 + 2.0 * 3.0 * 660.0);
}

#[test]
fn boxes_map_back_to_the_original_image() {
    let b = resize_boxes(&[[10.0, 20.0, 30.0, 40.0]], [400, 600], [800, 900]).unwrap();
    assert_all_close(&b[0], &[15.0, 40.0, 45.0, 80.0]);
}
