//! The detection operators of a graph, run by the runtime (`mrc_runtime::builtins`): the
//! attributes of the graph node become the runtime's parameters.

use super::{HostTensor, RunError};
use crate::graph::{Graph, NodeKind};
use crate::ops::{AttrsExt, Operator};
use mrc_runtime::builtins::{self as rt, DetectionParams, MultiscaleParams, RpnParams, TensorF32};
use mrc_runtime::ops::preprocess::Transform;
use petgraph::stable_graph::NodeIndex;

pub fn run(graph: &Graph, node: NodeIndex, inputs: &[&HostTensor]) -> Result<Vec<HostTensor>, RunError> {
    let NodeKind::Op { op, attrs } = &graph.nodes[node].kind else { unreachable!("built-ins are operators") };
    let error = |message: String| RunError::Builtin { op: op.name(), node: graph.nodes[node].name.clone(), message };
    // Inputs per slot: a list slot takes as many tensors as the node has edges beyond the others.
    let slots = split_slots(*op, inputs);
    let f32_of = |t: &HostTensor| match t {
        HostTensor::F32 { shape, data } => Ok(TensorF32 { shape: shape.clone(), data: data.clone() }),
        other => Err(error(format!("expected an f32 tensor, found shape {:?} of another type", other.shape()))),
    };
    let size_of = |t: &HostTensor| match t.i64() {
        Some(&[h, w]) => Ok([h as usize, w as usize]),
        _ => Err(error("expected an image size i64[2]".into())),
    };
    let hw = |t: &HostTensor, first: usize| [t.shape()[first], t.shape()[first + 1]];
    let float = |t: TensorF32| HostTensor::F32 { shape: t.shape, data: t.data };
    let size = |name: &str| attrs.ints(name).iter().map(|&v| v as usize).collect::<Vec<_>>();
    let square = |v: Vec<usize>| [v[0], *v.get(1).unwrap_or(&v[0])];
    let weights = |name: &str| {
        let w = attrs.floats(name);
        [w[0] as f32, w[1] as f32, w[2] as f32, w[3] as f32]
    };
    let out = match op.name() {
        "preprocess" => {
            let HostTensor::U8 { shape, data } = slots[0][0] else { return Err(error("expected a u8 image".into())) };
            let (mean, std) = (attrs.floats("mean"), attrs.floats("std"));
            let transform = Transform {
                min_size: attrs.int("min_size") as usize,
                max_size: attrs.int("max_size") as usize,
                mean: [mean[0] as f32, mean[1] as f32, mean[2] as f32],
                std: [std[0] as f32, std[1] as f32, std[2] as f32],
                size_divisible: attrs.int("size_divisible") as usize,
            };
            let (batch, [h, w]) = rt::preprocess(data, [shape[0], shape[1]], &transform).map_err(|e| error(e.to_string()))?;
            vec![float(batch), HostTensor::I64 { shape: vec![2], data: vec![h as i64, w as i64] }]
        }
        "anchors" => {
            let feature_sizes: Vec<[usize; 2]> = slots[0].iter().map(|t| hw(t, 2)).collect();
            let anchors = rt::anchors(&feature_sizes, hw(slots[1][0], 2), attrs.int_lists("sizes"), attrs.floats("aspect_ratios"));
            vec![float(anchors.map_err(|e| error(e.to_string()))?)]
        }
        "rpn_proposals" => {
            let objectness = slots[0].iter().map(|t| f32_of(t)).collect::<Result<Vec<_>, _>>()?;
            let deltas = slots[1].iter().map(|t| f32_of(t)).collect::<Result<Vec<_>, _>>()?;
            let params = RpnParams {
                pre_nms_top_n: attrs.int("pre_nms_top_n") as usize,
                post_nms_top_n: attrs.int("post_nms_top_n") as usize,
                nms_thresh: attrs.float("nms_thresh"),
                min_size: attrs.float("min_size"),
                score_thresh: attrs.float("score_thresh"),
                weights: weights("weights"),
            };
            let proposals = rt::rpn_proposals(&objectness, &deltas, &f32_of(slots[2][0])?, size_of(slots[3][0])?, &params);
            vec![float(proposals.map_err(|e| error(e.to_string()))?)]
        }
        "multiscale_roi_align" => {
            let features = slots[0].iter().map(|t| f32_of(t)).collect::<Result<Vec<_>, _>>()?;
            let params = MultiscaleParams {
                output_size: square(size("output_size")),
                sampling_ratio: attrs.int("sampling_ratio") as i32,
                canonical_scale: attrs.int("canonical_scale") as f32,
                canonical_level: attrs.int("canonical_level") as f32,
                aligned: attrs.flag("aligned"),
            };
            let pooled = rt::multiscale_roi_align(&features, &f32_of(slots[1][0])?, size_of(slots[2][0])?, &params);
            vec![float(pooled.map_err(|e| error(e.to_string()))?)]
        }
        "postprocess_detections" => {
            let params = DetectionParams {
                weights: weights("weights"),
                score_thresh: attrs.float("score_thresh"),
                nms_thresh: attrs.float("nms_thresh"),
                detections_per_img: attrs.int("detections_per_img") as usize,
                min_size: attrs.float("min_size"),
            };
            let (boxes, scores, labels) = rt::postprocess_detections(
                &f32_of(slots[0][0])?,
                &f32_of(slots[1][0])?,
                &f32_of(slots[2][0])?,
                size_of(slots[3][0])?,
                &params,
            )
            .map_err(|e| error(e.to_string()))?;
            vec![float(boxes), float(scores), HostTensor::I64 { shape: vec![labels.len()], data: labels }]
        }
        "mask_probs" => {
            let labels = slots[1][0].i64().ok_or_else(|| error("labels are i64".into()))?;
            vec![float(rt::mask_probs(&f32_of(slots[0][0])?, labels).map_err(|e| error(e.to_string()))?)]
        }
        "rescale_boxes" => {
            let boxes = rt::rescale_boxes(&f32_of(slots[0][0])?, size_of(slots[1][0])?, hw(slots[2][0], 0));
            vec![float(boxes.map_err(|e| error(e.to_string()))?)]
        }
        "paste_masks" => {
            let padding = attrs.int("padding") as usize;
            let masks = rt::paste_masks(&f32_of(slots[0][0])?, &f32_of(slots[1][0])?, hw(slots[2][0], 0), padding);
            vec![float(masks.map_err(|e| error(e.to_string()))?)]
        }
        name => return Err(error(format!("`{name}` does not run in process yet"))),
    };
    Ok(out)
}

/// Groups a node's flat inputs by the operator's slots; the list slot (at most one per
/// built-in besides lists of equal length) takes what the single slots leave.
fn split_slots<'t>(op: &dyn Operator, inputs: &[&'t HostTensor]) -> Vec<Vec<&'t HostTensor>> {
    let specs = op.inputs();
    let lists = specs.iter().filter(|s| s.list).count();
    let per_list = (inputs.len() - (specs.len() - lists)).checked_div(lists).unwrap_or(0);
    let mut rest = inputs;
    specs
        .iter()
        .map(|s| {
            let take = if s.list { per_list } else { 1 };
            let (head, tail) = rest.split_at(take);
            rest = tail;
            head.to_vec()
        })
        .collect()
}
