//! The detection operators of a graph, run by the runtime: attributes of the graph node become
//! the runtime's parameters.

use super::{HostTensor, RunError};
use crate::graph::{Graph, NodeKind};
use crate::ops::AttrsExt;
use mrc_runtime::ops::anchors::grid_anchors;
use mrc_runtime::ops::preprocess::{preprocess, ImageU8, Transform};
use petgraph::stable_graph::NodeIndex;

pub fn run(graph: &Graph, node: NodeIndex, inputs: &[&HostTensor]) -> Result<Vec<HostTensor>, RunError> {
    let NodeKind::Op { op, attrs } = &graph.nodes[node].kind else { unreachable!("built-ins are operators") };
    let fail = |message: String| RunError::Builtin { op: op.name(), node: graph.nodes[node].name.clone(), message };
    match op.name() {
        "preprocess" => {
            let HostTensor::U8 { shape, data } = inputs[0] else { return Err(fail("expected a u8 image".into())) };
            let [height, width, _] = shape[..] else { return Err(fail(format!("expected [H, W, 3], found {shape:?}"))) };
            let mean = attrs.floats("mean");
            let std = attrs.floats("std");
            let transform = Transform {
                min_size: attrs.int("min_size") as usize,
                max_size: attrs.int("max_size") as usize,
                mean: [mean[0] as f32, mean[1] as f32, mean[2] as f32],
                std: [std[0] as f32, std[1] as f32, std[2] as f32],
                size_divisible: attrs.int("size_divisible") as usize,
            };
            let batch = preprocess(&[ImageU8 { data, height, width }], &transform).map_err(|e| fail(e.to_string()))?;
            let [h, w] = batch.image_sizes[0];
            Ok(vec![
                HostTensor::F32 { shape: batch.shape.to_vec(), data: batch.data },
                HostTensor::I64 { shape: vec![2], data: vec![h as i64, w as i64] },
            ])
        }
        "anchors" => {
            let (levels, batch) = inputs.split_at(inputs.len() - 1);
            let feature_sizes: Vec<[usize; 2]> = levels.iter().map(|t| [t.shape()[2], t.shape()[3]]).collect();
            let image = [batch[0].shape()[2], batch[0].shape()[3]];
            let sizes: Vec<Vec<f32>> = attrs.int_lists("sizes").iter().map(|l| l.iter().map(|&s| s as f32).collect()).collect();
            let ratios: Vec<f32> = attrs.floats("aspect_ratios").iter().map(|&r| r as f32).collect();
            let anchors = grid_anchors(image, &feature_sizes, &sizes, &vec![ratios; sizes.len()]).map_err(|e| fail(e.to_string()))?;
            Ok(vec![HostTensor::F32 { shape: vec![anchors.len(), 4], data: anchors.concat() }])
        }
        name => Err(fail(format!("`{name}` does not run in process yet"))),
    }
}
