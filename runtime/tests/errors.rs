//! Bad arguments give errors, never panics; zero boxes give empty results.

use mrc_runtime::ops::anchors::grid_anchors;
use mrc_runtime::ops::box_coder::{clip_boxes_to_image, remove_small_boxes, BoxCoder};
use mrc_runtime::ops::multiscale::{multiscale_roi_align, LevelMapper, MultiScaleParams};
use mrc_runtime::ops::nms::{batched_nms, nms, topk_per_level};
use mrc_runtime::ops::paste_masks::{paste_masks_in_image, project_masks_on_boxes};
use mrc_runtime::ops::preprocess::{batch_images, normalize, resize_bilinear, resized_size, ImageU8};
use mrc_runtime::ops::roi_align::{roi_align, PoolMode, RoiAlignParams};
use mrc_runtime::ops::roi_pool::roi_pool;
use mrc_runtime::tensor::rows;
use mrc_runtime::{Error, FeatureMap};

const NAN: f32 = f32::NAN;

fn params() -> RoiAlignParams {
    RoiAlignParams { output_size: [2, 2], spatial_scale: 1.0, sampling_ratio: 2, aligned: false, mode: PoolMode::Avg }
}

fn is_shape<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}
fn is_invalid<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}
fn is_non_finite<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::NonFinite { .. }))
}

#[test]
fn feature_maps_and_rows_check_lengths() {
    assert!(is_shape(FeatureMap::new(&[0.0; 10], [1, 1, 3, 3])));
    assert!(is_shape(FeatureMap::new(&[], [usize::MAX, 2, 2, 2])));
    assert!(is_shape(rows::<5>("roi_align", &[0.0; 9])));
    assert_eq!(rows::<4>("nms", &[0.0; 8]).unwrap().len(), 2);
}

#[test]
fn roi_align_rejects_bad_arguments() {
    let map = vec![0.0f32; 2 * 16];
    let fm = FeatureMap::new(&map, [2, 1, 4, 4]).unwrap();
    let ok = [0.0, 0.0, 0.0, 2.0, 2.0];
    assert!(is_non_finite(roi_align(&fm, &[[0.0, NAN, 0.0, 2.0, 2.0]], &params())));
    assert!(is_non_finite(roi_align(&fm, &[[0.0, 0.0, 0.0, f32::INFINITY, 2.0]], &params())));
    assert!(is_invalid(roi_align(&fm, &[[2.0, 0.0, 0.0, 2.0, 2.0]], &params())));
    assert!(is_invalid(roi_align(&fm, &[[-1.0, 0.0, 0.0, 2.0, 2.0]], &params())));
    assert!(is_invalid(roi_align(&fm, &[[0.5, 0.0, 0.0, 2.0, 2.0]], &params())));
    assert!(is_invalid(roi_align(&fm, &[ok], &RoiAlignParams { output_size: [0, 2], ..params() })));
    assert!(is_invalid(roi_align(&fm, &[ok], &RoiAlignParams { spatial_scale: -0.5, ..params() })));
    assert!(is_invalid(roi_align(&fm, &[ok], &RoiAlignParams { spatial_scale: NAN, ..params() })));
    assert_eq!(roi_align(&fm, &[], &params()).unwrap(), Vec::<f32>::new());
    assert!(is_invalid(roi_pool(&fm, &[[3.0, 0.0, 0.0, 1.0, 1.0]], [2, 2], 1.0)));
    assert!(is_non_finite(roi_pool(&fm, &[[0.0, 0.0, NAN, 1.0, 1.0]], [2, 2], 1.0)));
    assert!(is_invalid(roi_pool(&fm, &[ok], [2, 0], 1.0)));
    assert!(is_invalid(roi_pool(&fm, &[ok], [2, 2], -1.0)));
    // Coordinates that would overflow integer cells, and sampling grids that would exhaust memory.
    assert!(is_invalid(roi_pool(&fm, &[[0.0, -3e30, 0.0, 3e30, 2.0]], [2, 2], 1.0)));
    let adaptive = RoiAlignParams { sampling_ratio: 0, ..params() };
    assert!(is_invalid(roi_align(&fm, &[[0.0, 0.0, 0.0, 1e30, 1e30]], &adaptive)));
    assert!(roi_align(&fm, &[[0.0, 0.0, 0.0, 1e30, 1e30]], &params()).is_ok());
    let empty = roi_pool(&fm, &[], [2, 2], 1.0).unwrap();
    assert!(empty.values.is_empty() && empty.argmax.is_empty());
}

#[test]
fn multiscale_rejects_bad_arguments() {
    let a = vec![0.0f32; 64];
    let b = vec![0.0f32; 16];
    let fms = [FeatureMap::new(&a, [1, 1, 8, 8]).unwrap(), FeatureMap::new(&b, [1, 1, 4, 4]).unwrap()];
    let p = MultiScaleParams::new([2, 2], 2);
    let boxes = [[0.0f32, 0.0, 10.0, 10.0]];
    assert!(is_invalid(multiscale_roi_align(&[], &[&boxes], &[[32, 32]], &p)));
    assert!(is_shape(multiscale_roi_align(&fms, &[&boxes, &boxes], &[[32, 32]], &p)));
    assert!(is_shape(multiscale_roi_align(&fms, &[&boxes], &[[32, 32], [32, 32]], &p)));
    assert!(is_non_finite(multiscale_roi_align(&fms, &[&[[0.0, NAN, 1.0, 1.0]]], &[[32, 32]], &p)));
    // Levels 8×8 and 4×4 of a 32×32 image are consecutive; 8×8 and 2×2 are not.
    let c = vec![0.0f32; 4];
    let gap = [fms[0], FeatureMap::new(&c, [1, 1, 2, 2]).unwrap()];
    assert!(is_invalid(multiscale_roi_align(&gap, &[&boxes], &[[32, 32]], &p)));
    assert!(is_invalid(LevelMapper::new(2, 5).map_levels(&[[10.0, 10.0, 5.0, 20.0]])));
    let huge = MultiScaleParams { sampling_ratio: 0, ..p };
    assert!(is_invalid(multiscale_roi_align(&fms, &[&[[0.0, 0.0, 1e30, 1e30]]], &[[32, 32]], &huge)));
    let out = multiscale_roi_align(&fms, &[&[]], &[[32, 32]], &p).unwrap();
    assert!(out.values.is_empty() && out.levels.is_empty());
}

#[test]
fn nms_rejects_bad_arguments() {
    let b = [[0.0f32, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]];
    assert!(is_shape(nms(&b, &[0.5], 0.5)));
    assert!(is_non_finite(nms(&b, &[0.5, NAN], 0.5)));
    assert!(is_non_finite(nms(&[[0.0, NAN, 1.0, 1.0]], &[0.5], 0.5)));
    assert!(is_invalid(nms(&b, &[0.5, 0.4], f64::NAN)));
    assert!(is_shape(batched_nms(&b, &[0.5, 0.4], &[1], 0.5)));
    assert!(is_shape(topk_per_level(&[0.1, 0.2], &[1], 1)));
    assert!(is_non_finite(topk_per_level(&[0.1, NAN], &[2], 1)));
    assert_eq!(nms(&[], &[], 0.5).unwrap(), Vec::<usize>::new());
    assert_eq!(batched_nms(&[], &[], &[], 0.5).unwrap(), Vec::<usize>::new());
    assert_eq!(topk_per_level(&[], &[0, 0], 10).unwrap(), Vec::<usize>::new());
}

#[test]
fn box_ops_reject_bad_arguments() {
    let c = BoxCoder::new([1.0, 1.0, 1.0, 1.0]);
    let b = [[0.0f32, 0.0, 1.0, 1.0]];
    assert!(is_shape(c.encode(&b, &[])));
    assert!(is_non_finite(c.encode(&[[NAN, 0.0, 1.0, 1.0]], &b)));
    assert!(is_shape(c.decode(&[0.0; 6], &b)));
    assert!(is_shape(c.decode(&[0.0; 4], &[])));
    assert!(is_non_finite(c.decode(&[0.0, NAN, 0.0, 0.0], &b)));
    assert!(is_invalid(BoxCoder::new([1.0, -1.0, 1.0, 1.0]).decode(&[0.0; 4], &b)));
    assert!(c.encode(&[], &[]).unwrap().is_empty());
    assert!(c.decode(&[], &[]).unwrap().is_empty());
    assert!(is_non_finite(clip_boxes_to_image(&[[0.0, 0.0, NAN, 1.0]], [4, 4])));
    assert!(is_invalid(remove_small_boxes(&b, -1.0)));
    assert!(is_invalid(remove_small_boxes(&b, NAN)));
    assert!(clip_boxes_to_image(&[], [4, 4]).unwrap().is_empty());
    assert!(remove_small_boxes(&[], 1.0).unwrap().is_empty());
}

#[test]
fn anchors_reject_bad_arguments() {
    let sizes = vec![vec![32.0f32]];
    let ratios = vec![vec![1.0f32]];
    assert!(is_shape(grid_anchors([64, 64], &[[16, 16], [8, 8]], &sizes, &ratios)));
    assert!(is_invalid(grid_anchors([64, 64], &[[16, 16]], &[vec![-32.0]], &ratios)));
    assert!(is_invalid(grid_anchors([64, 64], &[[16, 16]], &sizes, &[vec![NAN]])));
    assert!(is_invalid(grid_anchors([64, 64], &[[0, 16]], &sizes, &ratios)));
    assert!(is_invalid(grid_anchors([8, 8], &[[16, 16]], &sizes, &ratios)));
}

#[test]
fn masks_reject_bad_arguments() {
    let b = [[0.0f32, 0.0, 4.0, 4.0]];
    assert!(is_shape(paste_masks_in_image(&[0.0; 10], 28, &b, [10, 10], 1)));
    assert!(is_invalid(paste_masks_in_image(&[], 0, &[], [10, 10], 1)));
    assert!(is_non_finite(paste_masks_in_image(&[0.0; 4], 2, &[[0.0, NAN, 1.0, 1.0]], [10, 10], 1)));
    assert!(paste_masks_in_image(&[], 28, &[], [10, 10], 1).unwrap().is_empty());
    assert!(is_invalid(paste_masks_in_image(&[0.0; 4], 2, &[[-1e30, 0.0, 1e30, 1.0]], [10, 10], 1)));
    assert!(is_shape(project_masks_on_boxes(&[0.0; 16], [4, 4], &b, &[], 28)));
    assert!(is_shape(project_masks_on_boxes(&[0.0; 15], [4, 4], &b, &[0], 28)));
    assert!(is_invalid(project_masks_on_boxes(&[0.0; 16], [4, 4], &b, &[1], 28)));
    assert!(project_masks_on_boxes(&[0.0; 16], [4, 4], &[], &[], 28).unwrap().is_empty());
}

#[test]
fn preprocessing_rejects_bad_arguments() {
    assert!(is_invalid(resized_size([0, 10], 800, 1333)));
    assert!(is_invalid(resized_size([10, 10], 0, 1333)));
    let img = ImageU8 { data: &[0; 11], height: 2, width: 2 };
    assert!(is_shape(normalize(&img, [0.0; 3], [1.0; 3])));
    let img = ImageU8 { data: &[0; 12], height: 2, width: 2 };
    assert!(is_invalid(normalize(&img, [0.0; 3], [1.0, 0.0, 1.0])));
    assert!(is_shape(resize_bilinear(&[0.0; 5], 1, [2, 2], [4, 4])));
    assert!(is_invalid(resize_bilinear(&[0.0; 4], 1, [2, 2], [0, 4])));
    assert!(is_shape(batch_images(&[(&[0.0; 5], [2, 2])], 1, 32)));
    assert!(is_invalid(batch_images(&[(&[0.0; 4], [2, 2])], 1, 0)));
    assert_eq!(batch_images(&[], 3, 32).unwrap().shape, [0, 3, 0, 0]);
}
