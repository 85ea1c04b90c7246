//! Keypoints from heatmaps.

use super::*;

runtime_operator!(
    /// Keypoint heatmaps [D, K, S, S] to keypoints [D, K, 3] (x, y, visibility) in image
    /// coordinates, and their scores [D, K] (Mask R-CNN section 5).
    HeatmapsToKeypoints, "heatmaps_to_keypoints",
    inputs: [input("heatmaps"), input("boxes")],
    attrs: [],
    infer: |inputs, attrs| {
        let maps = &inputs[0][0];
        expect_rank("heatmaps_to_keypoints", 0, maps, "D, K, S, S")?;
        let d = boxes("heatmaps_to_keypoints", 1, &inputs[1][0])?;
        let k = maps.dims[1].clone();
        Ok(Inference {
            outputs: vec![TensorType::f32(vec![d.clone(), k.clone(), Dim::known(3)]), TensorType::f32(vec![d, k])],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        call(cx, node, RuntimeFunction::HeatmapsToKeypoints, (), &[slots[0][0], slots[1][0]])
    }
);
