//! The two box selections: the RPN's proposals (top-k per level, decoding, filters, NMS per
//! level) and the detection step's post-processing (softmax, per-class decoding, filters, NMS
//! per class). As kernels: bitonic sorts, exact greedy NMS as Cluster-NMS's fixed point,
//! compaction; only counts are read back to the host.

use super::*;

runtime_operator!(
    /// The RPN's proposal selection: decode deltas, top-k per level, clip, remove small boxes,
    /// drop low scores, NMS per level, keep the best `post_nms_top_n`.
    RpnProposals, "rpn_proposals",
    inputs: [list_input("objectness"), list_input("deltas"), input("anchors"), input("image_size")],
    attrs: [
        attr("pre_nms_top_n", Int, Default::Int(RPN.pre_nms_top_n as i64)).at_least(0),
        attr("post_nms_top_n", Int, Default::Int(RPN.post_nms_top_n as i64)).at_least(0),
        attr("nms_thresh", Float, Default::Float(RPN.nms_thresh)).between(0.0, 1.0),
        attr("min_size", Float, Default::Float(RPN.min_size)).at_least(0),
        attr("score_thresh", Float, Default::Float(RPN.score_thresh)).between(0.0, 1.0),
        attr("weights", Floats, Default::Floats(&RPN_WEIGHTS)).positive(),
    ],
    infer: |inputs, attrs| {
        let (objectness, deltas) = (&inputs[0], &inputs[1]);
        if objectness.len() != deltas.len() {
            return Err(OpError::at_input(1, format!("{} objectness maps but {} delta maps", objectness.len(), deltas.len())));
        }
        for (o, d) in objectness.iter().zip(deltas) {
            expect_rank("rpn_proposals", 0, o, "1, A, H, W")?;
            expect_rank("rpn_proposals", 1, d, "1, 4*A, H, W")?;
            if o.dims[1].scale(4)? != d.dims[1] || o.dims[2..] != d.dims[2..] {
                return Err(OpError::at_input(1, format!("deltas {d} do not match objectness {o}"))
                    .hint("the box branch has 4 channels per anchor of the objectness branch"));
            }
        }
        boxes("rpn_proposals", 2, &inputs[2][0])?;
        image_size("rpn_proposals", 3, &inputs[3][0])?;
        if attrs.floats("weights").len() != 4 {
            return Err(OpError::at_attr("weights", "box coder `weights` are four numbers (wx, wy, ww, wh)"));
        }
        Ok(Inference::output(TensorType::f32(vec![Dim::symbol("P"), Dim::known(4)])))
    },
    lower: |cx, node, slots| {
        let params = rpn_params(node.attrs);
        match cx.builtins() {
            BuiltIns::Runtime => {
                let (objectness, objectness_shapes) = cx.pack(&slots[0])?;
                let (deltas, deltas_shapes) = cx.pack(&slots[1])?;
                call(cx, node, RuntimeFunction::RpnProposals, params, &[objectness, objectness_shapes, deltas, deltas_shapes, slots[2][0], slots[3][0]])
            }
            BuiltIns::Kernels => rpn_proposals_kernel(cx, &slots[0], &slots[1], slots[2][0], slots[3][0], &params),
        }
    }
);

runtime_operator!(
    /// torchvision's `postprocess_detections`: softmax, per-class box decoding, clipping,
    /// score threshold, small-box removal, per-class NMS, the best `detections_per_img`.
    /// Outputs boxes, scores and labels.
    PostprocessDetections, "postprocess_detections",
    inputs: [input("class_logits"), input("box_regression"), input("proposals"), input("image_size")],
    attrs: [
        attr("weights", Floats, Default::Floats(&DETECTION_WEIGHTS)).positive(),
        attr("score_thresh", Float, Default::Float(DETECTION.score_thresh)).between(0.0, 1.0),
        attr("nms_thresh", Float, Default::Float(DETECTION.nms_thresh)).between(0.0, 1.0),
        attr("detections_per_img", Int, Default::Int(DETECTION.detections_per_img as i64)).at_least(0),
        attr("min_size", Float, Default::Float(DETECTION.min_size)).at_least(0),
    ],
    infer: |inputs, attrs| {
        let (logits, regression) = (&inputs[0][0], &inputs[1][0]);
        expect_rank("postprocess_detections", 0, logits, "P, classes")?;
        expect_rank("postprocess_detections", 1, regression, "P, 4*classes")?;
        let p = boxes("postprocess_detections", 2, &inputs[2][0])?;
        image_size("postprocess_detections", 3, &inputs[3][0])?;
        if logits.dims[1].scale(4)? != regression.dims[1] {
            return Err(OpError::at_input(1, format!("box regression {regression} does not match class logits {logits}"))
                .hint("the box predictor has 4 outputs per class"));
        }
        if logits.dims[0] != p || regression.dims[0] != p {
            return Err(OpError::at_input(0, format!("{logits} and {regression} are not one row per proposal of {}", inputs[2][0])));
        }
        let d = Dim::symbol("D");
        Ok(Inference {
            outputs: vec![
                TensorType::f32(vec![d.clone(), Dim::known(4)]),
                TensorType::f32(vec![d.clone()]),
                TensorType::new(DType::I64, vec![d]),
            ],
            state: vec![],
        })
    },
    lower: |cx, node, slots| {
        let params = DetectionParams {
            weights: box_weights(node.attrs),
            score_thresh: node.attrs.float("score_thresh"),
            nms_thresh: node.attrs.float("nms_thresh"),
            detections_per_img: node.attrs.int("detections_per_img") as usize,
            min_size: node.attrs.float("min_size"),
        };
        match cx.builtins() {
            BuiltIns::Runtime => call(cx, node, RuntimeFunction::PostprocessDetections, params, &[slots[0][0], slots[1][0], slots[2][0], slots[3][0]]),
            BuiltIns::Kernels => postprocess_detections_kernel(cx, slots[0][0], slots[1][0], slots[2][0], slots[3][0], &params),
        }
    }
);

/// `postprocess_detections` as kernels (the runtime's function step by step; only counts
/// cross to the host, through [`RuntimeFunction::Count`], to size buffers and end loops): each
/// candidate (proposal `i`, foreground class `c`, in that order) decoded and clipped (`[N, 4]`),
/// and its key: its class probability where it passes the score threshold and the small-box
/// test, else −∞; then [`select_by_nms`] with the classes as labels, the first
/// `detections_per_img`.
fn postprocess_detections_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    logits: Value<'c, 'b>,
    regression: Value<'c, 'b>,
    proposals: Value<'c, 'b>,
    image_size: Value<'c, 'b>,
    p: &DetectionParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let one = cx.constant_index(1)?;
    let classes = cx.size_value(cx.size(logits, 1)?)?;
    let foreground = cx.binary("arith.subi", cx.binary("arith.maxui", classes, one)?, one)?;
    let n = cx.binary("arith.muli", cx.size_value(cx.size(logits, 0)?)?, foreground)?;
    let weights = p.weights;
    let (score_thresh, min_size) = (p.score_thresh as f32, p.min_size as f32);
    let identity2 = identity_map(2);
    let decoded_init = cx.empty(&[Size::Dynamic(n), Size::Static(4)], f32_type)?;
    let decoded = cx.generic(&[], &[decoded_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let c = body.loop_index(0)?;
        let i = body.binary("arith.divui", c, foreground)?;
        let class = body.binary("arith.addi", body.binary("arith.remui", c, foreground)?, body.constant_index(1)?)?;
        let proposal = |k: i64| body.extract(proposals, &[i, body.constant_index(k)?]);
        let base = body.binary("arith.muli", class, body.constant_index(4)?)?;
        let delta = |k: i64| body.extract(regression, &[i, body.binary("arith.addi", base, body.constant_index(k)?)?]);
        let coordinates = decoded_box(body, [proposal(0)?, proposal(1)?, proposal(2)?, proposal(3)?], [delta(0)?, delta(1)?, delta(2)?, delta(3)?], image_size, weights)?;
        body.yield_values(&[coordinate_at(body, &coordinates, body.loop_index(1)?)?])
    })?[0];
    let sort = SortSize::of(cx, n)?;
    let keys_init = [cx.empty(&[Size::Dynamic(sort.padded)], f32_type)?, cx.empty(&[Size::Dynamic(sort.padded)], i64_type)?];
    let keys = cx.generic(&[], &keys_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let j = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, j, n)?;
        let key = body.if_else(inside, &[f32_type], |b| {
            let i = b.binary("arith.divui", j, foreground)?;
            let class = b.binary("arith.addi", b.binary("arith.remui", j, foreground)?, b.constant_index(1)?)?;
            let probability = class_probability(b, logits, i, class, classes)?;
            let large = large_enough(b, decoded, j, min_size)?;
            let likely = b.compare_floats(CmpfPredicate::Ogt, probability, b.constant_float(score_thresh as f64, f32_type)?)?;
            Ok(vec![b.select(b.binary("arith.andi", likely, large)?, probability, negative_infinity(b)?)?])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[key[0], body.convert("arith.index_cast", j, i64_type)?])
    })?;
    let selected = select_by_nms(cx, &sort, [keys[0], keys[1]], decoded, &|b, c| b.binary("arith.addi", b.binary("arith.remui", c, foreground)?, b.constant_index(1)?), p.nms_thresh, p.detections_per_img)?;
    let boxes = selected.gather_boxes(cx, decoded)?;
    let outputs_init = [cx.empty(&[Size::Dynamic(selected.count)], f32_type)?, cx.empty(&[Size::Dynamic(selected.count)], i64_type)?];
    let scored = cx.generic(&[], &outputs_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let j = slot_position(body, selected.prefix, selected.candidates, body.loop_index(0)?)?;
        let c = body.convert("arith.index_cast", body.extract(selected.indices, &[j])?, body.index_type())?;
        let class = body.binary("arith.addi", body.binary("arith.remui", c, foreground)?, body.constant_index(1)?)?;
        body.yield_values(&[body.extract(selected.keys, &[j])?, body.convert("arith.index_cast", class, i64_type)?])
    })?;
    Ok(vec![boxes, scored[0], scored[1]])
}

/// The RPN's proposals as kernels (the runtime's `rpn_proposals` step by step): the anchors'
/// logits sorted by level, then logit descending (a bitonic sort; a level's anchors keep their
/// range), each level's first `pre_nms_top_n` the candidates, in level order; each decoded
/// against its anchor and clipped, its key the sigmoid of its logit where it passes the
/// small-box test and the score threshold, else −∞; then [`select_by_nms`] with the levels as
/// labels, the first `post_nms_top_n`.
fn rpn_proposals_kernel<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    objectness: &[Value<'c, 'b>],
    deltas: &[Value<'c, 'b>],
    anchors: Value<'c, 'b>,
    image_size: Value<'c, 'b>,
    p: &RpnParams,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let zero = cx.constant_index(0)?;
    // Per level: the anchors per cell, the width, the first anchor, the first candidate.
    let (mut per_cell, mut widths, mut starts, mut firsts) = (vec![], vec![], vec![], vec![]);
    let (mut start, mut first) = (zero, zero);
    let top = cx.constant_index(p.pre_nms_top_n as i64)?;
    for &level in objectness {
        let [a, h, w] = [1, 2, 3].map(|axis| cx.size(level, axis).and_then(|s| cx.size_value(s)));
        let (a, h, w) = (a?, h?, w?);
        let size = cx.binary("arith.muli", cx.binary("arith.muli", a, h)?, w)?;
        per_cell.push(a);
        widths.push(w);
        starts.push(start);
        firsts.push(first);
        start = cx.binary("arith.addi", start, size)?;
        first = cx.binary("arith.addi", first, cx.binary("arith.minui", size, top)?)?;
    }
    let (anchor_count, candidate_count) = (start, first);
    let sort = SortSize::of(cx, anchor_count)?;
    let logits_init = [cx.empty(&[Size::Dynamic(sort.padded)], f32_type)?, cx.empty(&[Size::Dynamic(sort.padded)], i64_type)?];
    let logits = cx.generic(&[], &logits_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let i = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, i, anchor_count)?;
        let logit = body.if_else(inside, &[f32_type], |b| {
            let level = level_index(b, &starts, i)?;
            Ok(vec![per_level(b, level, objectness.len(), 1, &|e, l| Ok(vec![anchor_value(e, objectness[l], starts[l], per_cell[l], widths[l], 1, i, 0)?]))?[0]])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[logit[0], body.convert("arith.index_cast", i, i64_type)?])
    })?;
    let by_level = bitonic_sort(cx, &sort, [logits[0], logits[1]], &|b, own, other| {
        let level = |index| level_index(b, &starts, b.convert("arith.index_cast", index, b.index_type())?);
        let (own_level, other_level) = (level(own.1)?, level(other.1)?);
        let same = b.compare_integers(CmpiPredicate::Eq, own_level, other_level)?;
        let lower = b.compare_integers(CmpiPredicate::Ult, own_level, other_level)?;
        b.binary("arith.ori", lower, b.binary("arith.andi", same, score_first(b, own, other)?)?)
    })?;
    let identity2 = identity_map(2);
    let decoded_init = cx.empty(&[Size::Dynamic(candidate_count), Size::Static(4)], f32_type)?;
    let decoded = cx.generic(&[], &[decoded_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let t = body.loop_index(0)?;
        let level = level_index(body, &firsts, t)?;
        let position = body.binary("arith.addi", select_level(body, level, &starts)?, body.binary("arith.subi", t, select_level(body, level, &firsts)?)?)?;
        let i = body.convert("arith.index_cast", body.extract(by_level[1], &[position])?, body.index_type())?;
        let anchor = |k: i64| body.extract(anchors, &[i, body.constant_index(k)?]);
        let delta = per_level(body, level, deltas.len(), 4, &|e, l| (0..4).map(|j| anchor_value(e, deltas[l], starts[l], per_cell[l], widths[l], 4, i, j)).collect())?;
        let coordinates = decoded_box(body, [anchor(0)?, anchor(1)?, anchor(2)?, anchor(3)?], [delta[0], delta[1], delta[2], delta[3]], image_size, p.weights)?;
        body.yield_values(&[coordinate_at(body, &coordinates, body.loop_index(1)?)?])
    })?[0];
    let candidates = SortSize::of(cx, candidate_count)?;
    let (min_size, score_thresh) = (p.min_size as f32, p.score_thresh as f32);
    let keys_init = [cx.empty(&[Size::Dynamic(candidates.padded)], f32_type)?, cx.empty(&[Size::Dynamic(candidates.padded)], i64_type)?];
    let keys = cx.generic(&[], &keys_init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let t = body.loop_index(0)?;
        let inside = body.compare_integers(CmpiPredicate::Ult, t, candidate_count)?;
        let key = body.if_else(inside, &[f32_type], |b| {
            let level = level_index(b, &firsts, t)?;
            let position = b.binary("arith.addi", select_level(b, level, &starts)?, b.binary("arith.subi", t, select_level(b, level, &firsts)?)?)?;
            let score = sigmoid_of(b, b.extract(by_level[0], &[position])?)?;
            let likely = b.compare_floats(CmpfPredicate::Oge, score, b.constant_float(score_thresh as f64, f32_type)?)?;
            let valid = b.binary("arith.andi", likely, large_enough(b, decoded, t, min_size)?)?;
            Ok(vec![b.select(valid, score, negative_infinity(b)?)?])
        }, |b| Ok(vec![negative_infinity(b)?]))?;
        body.yield_values(&[key[0], body.convert("arith.index_cast", t, i64_type)?])
    })?;
    let selected = select_by_nms(cx, &candidates, [keys[0], keys[1]], decoded, &|b, t| level_index(b, &firsts, t), p.nms_thresh, p.post_nms_top_n)?;
    Ok(vec![selected.gather_boxes(cx, decoded)?])
}

/// The level of index `i` of a range split into levels starting at `starts` (the first 0).
fn level_index<'c, 'n>(b: &Emitter<'c, 'n>, starts: &[Value<'c, '_>], i: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let mut level = b.constant_index(0)?;
    for &start in &starts[1..] {
        let reached = b.compare_integers(CmpiPredicate::Uge, i, start)?;
        level = b.binary("arith.addi", level, b.select(reached, b.constant_index(1)?, b.constant_index(0)?)?)?;
    }
    Ok(level)
}

/// `values[level]` (as a value of `b`'s block: level 0's selected either way to begin).
fn select_level<'c, 'n>(b: &Emitter<'c, 'n>, level: Value<'c, '_>, values: &[Value<'c, '_>]) -> Result<Value<'c, 'n>, LoweringError> {
    let mut value = b.select(b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(0)?)?, values[0], values[0])?;
    for (l, &v) in values.iter().enumerate().skip(1) {
        value = b.select(b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(l as i64)?)?, v, value)?;
    }
    Ok(value)
}

/// What reads a level's values, in a block of its own.
type LevelRead<'c, 'r> = dyn for<'m> Fn(&Emitter<'c, 'm>, usize) -> Result<Vec<Value<'c, 'm>>, LoweringError> + 'r;

/// The `values` floats `read(level)` gives for the level `level` (0 to `levels − 1`): one
/// `scf.if` per level, so that only that level's tensors are read.
fn per_level<'c, 'n>(
    b: &Emitter<'c, 'n>,
    level: Value<'c, '_>,
    levels: usize,
    values: usize,
    read: &LevelRead<'c, '_>,
) -> Result<Vec<Value<'c, 'n>>, LoweringError> {
    per_level_from(b, level, 0, levels, values, read)
}

fn per_level_from<'c, 'n>(
    b: &Emitter<'c, 'n>,
    level: Value<'c, '_>,
    from: usize,
    levels: usize,
    values: usize,
    read: &LevelRead<'c, '_>,
) -> Result<Vec<Value<'c, 'n>>, LoweringError> {
    if from + 1 == levels {
        return read(b, from);
    }
    let is_level = b.compare_integers(CmpiPredicate::Eq, level, b.constant_index(from as i64)?)?;
    b.if_else(is_level, &vec![b.f32_type(); values], |e| read(e, from), |e| per_level_from(e, level, from + 1, levels, values, read))
}

/// Anchor `i`'s value `j` (of `per` per anchor) in the level map `map` `[1, A·per, H, W]` whose
/// anchors start at `start`, `anchors` per cell, cells `width` per row: channel `k·per + j` of
/// anchor `k` of its cell (cells are row-major, each cell's anchors together).
#[allow(clippy::too_many_arguments)]
fn anchor_value<'c, 'n>(
    b: &Emitter<'c, 'n>,
    map: Value<'c, '_>,
    start: Value<'c, '_>,
    anchors: Value<'c, '_>,
    width: Value<'c, '_>,
    per: i64,
    i: Value<'c, '_>,
    j: i64,
) -> Result<Value<'c, 'n>, LoweringError> {
    let local = b.binary("arith.subi", i, start)?;
    let (cell, k) = (b.binary("arith.divui", local, anchors)?, b.binary("arith.remui", local, anchors)?);
    let (y, x) = (b.binary("arith.divui", cell, width)?, b.binary("arith.remui", cell, width)?);
    let channel = b.binary("arith.addi", b.binary("arith.muli", k, b.constant_index(per)?)?, b.constant_index(j)?)?;
    b.extract(map, &[b.constant_index(0)?, channel, y, x])
}

/// `coordinates[k]`.
fn coordinate_at<'c, 'n>(b: &Emitter<'c, 'n>, coordinates: &[Value<'c, 'n>; 4], k: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let mut value = coordinates[3];
    for j in (0..3).rev() {
        value = b.select(b.compare_integers(CmpiPredicate::Eq, k, b.constant_index(j as i64)?)?, coordinates[j], value)?;
    }
    Ok(value)
}

/// Whether box `row` of `boxes` is at least `min_size` wide and high (`remove_small_boxes`).
fn large_enough<'c, 'n>(b: &Emitter<'c, 'n>, boxes: Value<'c, '_>, row: Value<'c, '_>, min_size: f32) -> Result<Value<'c, 'n>, LoweringError> {
    let coordinate = |k: i64| b.extract(boxes, &[row, b.constant_index(k)?]);
    let min = b.constant_float(min_size as f64, b.f32_type())?;
    let wide = b.compare_floats(CmpfPredicate::Oge, b.subf(coordinate(2)?, coordinate(0)?)?, min)?;
    let high = b.compare_floats(CmpfPredicate::Oge, b.subf(coordinate(3)?, coordinate(1)?)?, min)?;
    b.binary("arith.andi", wide, high)
}

/// The size of a bitonic sort of `n` elements: `padded = 2^bits ≥ max(n, 1)`, and `unit`, a 1
/// the canonicalizer cannot see through, the extent of one-thread kernels (which it would
/// otherwise inline, a loop nest of one iteration, into host code).
struct SortSize<'c, 'b> {
    bits: Value<'c, 'b>,
    padded: Value<'c, 'b>,
    unit: Value<'c, 'b>,
}

impl<'c, 'b> SortSize<'c, 'b> {
    fn of(cx: &Emitter<'c, 'b>, n: Value<'c, 'b>) -> Result<Self, LoweringError> {
        let one = cx.constant_index(1)?;
        let bits = ceil_log2(cx, n)?;
        let padded = cx.binary("arith.shli", one, bits)?;
        Ok(SortSize { bits, padded, unit: cx.binary("arith.minui", padded, one)? })
    }
}

/// A (key, index) pair of a sort.
type Pair<'c, 'n> = (Value<'c, 'n>, Value<'c, 'n>);

/// Whether `own` comes before `other`: the higher score first, the lower index among equal
/// scores (the runtime's stable sort by descending score; −0 and +0 equal).
fn score_first<'c, 'n>(b: &Emitter<'c, 'n>, own: Pair<'c, '_>, other: Pair<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    b.binary(
        "arith.ori",
        b.compare_floats(CmpfPredicate::Ogt, own.0, other.0)?,
        b.binary("arith.andi", b.compare_floats(CmpfPredicate::Oeq, own.0, other.0)?, b.compare_integers(CmpiPredicate::Slt, own.1, other.1)?)?,
    )
}

/// Bitonic sort of (key `f32`, index `i64`) pairs `[padded]` so that `first(own, other)` holds
/// of each element and every later one (a strict total order: indices are distinct): for block
/// sizes 2^k, distances 2^(k−1) down to 1, each compare-exchange pass a kernel (element `i`
/// reads itself and `i ^ distance`), the passes driven by host loops.
fn bitonic_sort<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    size: &SortSize<'c, 'b>,
    pairs: [Value<'c, 'b>; 2],
    first: &dyn for<'n> Fn(&Emitter<'c, 'n>, Pair<'c, 'n>, Pair<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let padded = size.padded;
    cx.for_loop(cx.constant_index(1)?, cx.binary("arith.addi", size.bits, cx.constant_index(1)?)?, &pairs, |outer, a| {
        let k = a[0];
        let block = outer.binary("arith.shli", outer.constant_index(1)?, k)?;
        outer.for_loop(outer.constant_index(0)?, k, &[a[1], a[2]], |inner, b| {
            let step = inner.binary("arith.subi", inner.binary("arith.subi", k, b[0])?, inner.constant_index(1)?)?;
            let distance = inner.binary("arith.shli", inner.constant_index(1)?, step)?;
            let (keys, indices) = (b[1], b[2]);
            let init = [inner.empty(&[Size::Dynamic(padded)], f32_type)?, inner.empty(&[Size::Dynamic(padded)], i64_type)?];
            inner.generic(&[], &init, &["(d0) -> (d0)", "(d0) -> (d0)"], &[Iterator::Parallel], |body| {
                let i = body.loop_index(0)?;
                let partner = body.binary("arith.xori", i, distance)?;
                let own = (body.extract(keys, &[i])?, body.extract(indices, &[i])?);
                let other = (body.extract(keys, &[partner])?, body.extract(indices, &[partner])?);
                let own_first = first(body, own, other)?;
                let lower = body.compare_integers(CmpiPredicate::Ult, i, partner)?;
                let ascending = body.compare_integers(CmpiPredicate::Eq, body.binary("arith.andi", i, block)?, body.constant_index(0)?)?;
                // The lower element of an ascending block takes the first of the two.
                let takes_first = body.compare_integers(CmpiPredicate::Eq, ascending, lower)?;
                let keeps_own = body.compare_integers(CmpiPredicate::Eq, takes_first, own_first)?;
                body.yield_values(&[body.select(keeps_own, own.0, other.0)?, body.select(keeps_own, own.1, other.1)?])
            })
        })
    })
}

/// What [`select_by_nms`] keeps: the candidates sorted (keys and indices), how many passed
/// (`candidates`, first in that order), the inclusive prefix sums of their keep flags, and how
/// many are output (`count`).
struct Selected<'c, 'b> {
    keys: Value<'c, 'b>,
    indices: Value<'c, 'b>,
    candidates: Value<'c, 'b>,
    prefix: Value<'c, 'b>,
    count: Value<'c, 'b>,
}

impl<'c, 'b> Selected<'c, 'b> {
    /// The output boxes `[count, 4]`: row `p` of `boxes` for the candidate of slot `p`.
    fn gather_boxes(&self, cx: &Emitter<'c, 'b>, boxes: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
        let init = cx.empty(&[Size::Dynamic(self.count), Size::Static(4)], cx.f32_type())?;
        let identity2 = identity_map(2);
        Ok(cx.generic(&[], &[init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
            let j = slot_position(body, self.prefix, self.candidates, body.loop_index(0)?)?;
            let c = body.convert("arith.index_cast", body.extract(self.indices, &[j])?, body.index_type())?;
            body.yield_values(&[body.extract(boxes, &[c, body.loop_index(1)?])?])
        })?[0])
    }
}

/// The runtime's `batched_nms` of candidates whose (key, index) pairs are `pairs` (`[padded]`;
/// the key the score where a candidate passed its filters, −∞ otherwise and for padding), boxes
/// `boxes` `[N, 4]` and labels `label(c)`, then the first `limit`:
/// 1. the pairs sorted by score descending, the earlier candidate first among equals (the
///    runtime's stable sort): the `M` candidates that passed come first;
/// 2. greedy NMS as its fixed point (Cluster-NMS): `keep[j]` iff no earlier kept candidate
///    suppresses it, iterated from all-kept until an iteration changes nothing (the host reads
///    the count of changes). As the runtime: up to 1,000 candidates IoUs of boxes shifted apart
///    by label (`label · (max coordinate + 1)`), beyond that unshifted boxes of the same label;
/// 3. the inclusive prefix sum of the keep flags (Hillis–Steele passes), the count of kept
///    candidates read; output slot `p` finds its candidate by binary search.
///
/// Beyond 1,000 candidates the runtime orders kept boxes of equal scores by `std::sort`'s
/// swaps; here they stay in candidate order.
fn select_by_nms<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    size: &SortSize<'c, 'b>,
    pairs: [Value<'c, 'b>; 2],
    boxes: Value<'c, 'b>,
    label: &dyn for<'n> Fn(&Emitter<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
    nms_thresh: f64,
    limit: usize,
) -> Result<Selected<'c, 'b>, LoweringError> {
    let (f32_type, i64_type) = (cx.f32_type(), cx.element_type(DType::I64));
    let (zero, unit) = (cx.constant_index(0)?, size.unit);
    let threshold = f32_threshold(nms_thresh);
    let sorted = bitonic_sort(cx, size, pairs, &|b, own, other| score_first(b, own, other))?;
    let (sorted_keys, sorted_indices) = (sorted[0], sorted[1]);
    let candidates = device_count(cx, unit, size.padded, |b, j| b.compare_floats(CmpfPredicate::Ogt, b.extract(sorted_keys, &[j])?, negative_infinity(b)?))?;

    let shifted = cx.compare_integers(CmpiPredicate::Ule, candidates, cx.constant_index(1000)?)?;
    let max_init = cx.empty(&[Size::Dynamic(unit)], f32_type)?;
    let max_coordinate = cx.generic(&[], &[max_init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let [zero, four] = [body.constant_index(0)?, body.constant_index(4)?];
        let max = body.for_loop(zero, candidates, &[negative_infinity(body)?], |l, a| {
            let c = l.convert("arith.index_cast", l.extract(sorted_indices, &[a[0]])?, l.index_type())?;
            l.for_loop(l.constant_index(0)?, four, &[a[1]], |m, b| Ok(vec![m.binary("arith.maxnumf", b[1], m.extract(boxes, &[c, b[0]])?)?]))
        })?;
        body.yield_values(&max)
    })?[0];
    let identity2 = identity_map(2);
    let boxes_init = cx.empty(&[Size::Dynamic(candidates), Size::Static(4)], f32_type)?;
    let nms_boxes = cx.generic(&[], &[boxes_init], &[identity2.as_str()], &[Iterator::Parallel; 2], |body| {
        let c = body.convert("arith.index_cast", body.extract(sorted_indices, &[body.loop_index(0)?])?, body.index_type())?;
        let value = body.extract(boxes, &[c, body.loop_index(1)?])?;
        let label = body.convert("arith.sitofp", body.convert("arith.index_cast", label(body, c)?, i64_type)?, f32_type)?;
        let max = body.extract(max_coordinate, &[body.constant_index(0)?])?;
        let offset = body.mulf(label, body.addf(max, body.constant_float(1.0, f32_type)?)?)?;
        body.yield_values(&[body.select(shifted, body.addf(value, offset)?, value)?])
    })?[0];
    let all_init = cx.empty(&[Size::Dynamic(candidates)], i64_type)?;
    let all_kept = cx.fill(cx.constant_integer(1, i64_type)?, all_init)?;
    let converged = cx.for_loop(zero, candidates, &[all_kept, cx.constant_integer(0, cx.element_type(DType::Bool))?], |l, a| {
        let (keep, done) = (a[1], a[2]);
        l.unless(done, &[keep, done], |b| {
            let next_init = b.empty(&[Size::Dynamic(candidates)], i64_type)?;
            let next = b.generic(&[], &[next_init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
                let j = body.loop_index(0)?;
                let true_value = body.constant_integer(1, body.element_type(DType::Bool))?;
                let survives = body.for_loop(body.constant_index(0)?, j, &[true_value], |m, s| {
                    let i = s[0];
                    let kept = m.compare_integers(CmpiPredicate::Ne, m.extract(keep, &[i])?, m.constant_integer(0, i64_type)?)?;
                    let label_at = |position| -> Result<Value<'c, '_>, LoweringError> {
                        label(m, m.convert("arith.index_cast", m.extract(sorted_indices, &[position])?, m.index_type())?)
                    };
                    let same_label = m.compare_integers(CmpiPredicate::Eq, label_at(i)?, label_at(j)?)?;
                    let comparable = m.binary("arith.ori", shifted, same_label)?;
                    let overlaps = m.compare_floats(CmpfPredicate::Ogt, iou(m, nms_boxes, i, j)?, m.constant_float(threshold as f64, f32_type)?)?;
                    let suppresses = m.binary("arith.andi", kept, m.binary("arith.andi", comparable, overlaps)?)?;
                    let not = m.binary("arith.xori", suppresses, m.constant_integer(1, m.element_type(DType::Bool))?)?;
                    Ok(vec![m.binary("arith.andi", s[1], not)?])
                })?;
                body.yield_values(&[body.convert("arith.extui", survives[0], i64_type)?])
            })?[0];
            let changes = device_count(b, unit, candidates, |e, j| e.compare_integers(CmpiPredicate::Ne, e.extract(next, &[j])?, e.extract(keep, &[j])?))?;
            Ok(vec![next, b.compare_integers(CmpiPredicate::Eq, changes, b.constant_index(0)?)?])
        })
    })?;
    let keep = converged[0];

    let prefix = cx.for_loop(zero, ceil_log2(cx, candidates)?, &[keep], |l, a| {
        let distance = l.binary("arith.shli", l.constant_index(1)?, a[0])?;
        let sums = a[1];
        let init = l.empty(&[Size::Dynamic(candidates)], i64_type)?;
        Ok(vec![l.generic(&[], &[init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
            let j = body.loop_index(0)?;
            let reaches = body.compare_integers(CmpiPredicate::Uge, j, distance)?;
            let earlier = body.select(reaches, body.binary("arith.subi", j, distance)?, j)?;
            let addend = body.select(reaches, body.extract(sums, &[earlier])?, body.constant_integer(0, i64_type)?)?;
            body.yield_values(&[body.binary("arith.addi", body.extract(sums, &[j])?, addend)?])
        })?[0]])
    })?[0];
    let kept = device_count(cx, unit, candidates, |b, j| b.compare_integers(CmpiPredicate::Ne, b.extract(keep, &[j])?, b.constant_integer(0, i64_type)?))?;
    let count = cx.binary("arith.minui", kept, cx.constant_index(limit as i64)?)?;
    Ok(Selected { keys: sorted_keys, indices: sorted_indices, candidates, prefix, count })
}

fn negative_infinity<'c, 'n>(b: &Emitter<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError> {
    b.constant_float(f64::NEG_INFINITY, b.f32_type())
}

/// The smallest `bits` with `2^bits ≥ max(n, 1)`, on the host (`n` an index).
fn ceil_log2<'c, 'b>(cx: &Emitter<'c, 'b>, n: Value<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
    let at_least_one = cx.binary("arith.maxui", n, cx.constant_index(1)?)?;
    Ok(cx.for_loop(cx.constant_index(0)?, cx.constant_index(63)?, &[cx.constant_index(0)?], |l, a| {
        let below = l.compare_integers(CmpiPredicate::Ult, l.binary("arith.shli", l.constant_index(1)?, a[0])?, at_least_one)?;
        Ok(vec![l.binary("arith.addi", a[1], l.select(below, l.constant_index(1)?, l.constant_index(0)?)?)?])
    })?[0])
}

/// How many of `0..n` satisfy `flag`, counted by a kernel (one thread: `unit` is an opaque 1)
/// and read by the host.
fn device_count<'c, 'b>(
    cx: &Emitter<'c, 'b>,
    unit: Value<'c, '_>,
    n: Value<'c, 'b>,
    flag: impl for<'n> Fn(&Emitter<'c, 'n>, Value<'c, 'n>) -> Result<Value<'c, 'n>, LoweringError>,
) -> Result<Value<'c, 'b>, LoweringError> {
    let i64_type = cx.element_type(DType::I64);
    let init = cx.empty(&[Size::Dynamic(unit)], i64_type)?;
    let counted = cx.generic(&[], &[init], &["(d0) -> (d0)"], &[Iterator::Parallel], |body| {
        let total = body.for_loop(body.constant_index(0)?, n, &[body.constant_integer(0, i64_type)?], |l, a| {
            Ok(vec![l.binary("arith.addi", a[1], l.convert("arith.extui", flag(l, a[0])?, i64_type)?)?])
        })?;
        body.yield_values(&total)
    })?[0];
    let count = cx.call_runtime(RuntimeFunction::Count, &[counted], &[i64_type])?[0];
    cx.convert("arith.index_cast", count, cx.index_type())
}

/// The sorted position of output slot `slot`: the first whose inclusive prefix sum of keep
/// flags (`prefix`, `n` long) exceeds `slot` (binary search).
fn slot_position<'c, 'n>(b: &Emitter<'c, 'n>, prefix: Value<'c, '_>, n: Value<'c, '_>, slot: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let i64_type = b.element_type(DType::I64);
    let target = b.convert("arith.index_cast", b.binary("arith.addi", slot, b.constant_index(1)?)?, i64_type)?;
    let last = b.binary("arith.subi", n, b.constant_index(1)?)?;
    let bounds = b.for_loop(b.constant_index(0)?, b.constant_index(64)?, &[b.constant_index(0)?, n], |l, a| {
        let (low, high) = (a[1], a[2]);
        let active = l.compare_integers(CmpiPredicate::Ult, low, high)?;
        let middle = l.binary("arith.minui", l.binary("arith.divui", l.binary("arith.addi", low, high)?, l.constant_index(2)?)?, last)?;
        let below = l.compare_integers(CmpiPredicate::Slt, l.extract(prefix, &[middle])?, target)?;
        let next_low = l.select(below, l.binary("arith.addi", middle, l.constant_index(1)?)?, low)?;
        let next_high = l.select(below, high, middle)?;
        Ok(vec![l.select(active, next_low, low)?, l.select(active, next_high, high)?])
    })?;
    Ok(bounds[0])
}

/// The IoU of the boxes at rows `i` (the earlier, kept one) and `j` of `boxes`, as the
/// runtime's `nms::iou`.
fn iou<'c, 'n>(b: &Emitter<'c, 'n>, boxes: Value<'c, '_>, i: Value<'c, '_>, j: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let coordinates = |row| -> Result<Vec<Value<'c, 'n>>, LoweringError> { (0..4).map(|k| b.extract(boxes, &[row, b.constant_index(k)?])).collect() };
    let (a, o) = (coordinates(i)?, coordinates(j)?);
    let zero = b.constant_float(0.0, b.f32_type())?;
    let (xx1, yy1) = (b.binary("arith.maxnumf", a[0], o[0])?, b.binary("arith.maxnumf", a[1], o[1])?);
    let (xx2, yy2) = (b.binary("arith.minnumf", a[2], o[2])?, b.binary("arith.minnumf", a[3], o[3])?);
    let inter = b.mulf(b.binary("arith.maxnumf", b.subf(xx2, xx1)?, zero)?, b.binary("arith.maxnumf", b.subf(yy2, yy1)?, zero)?)?;
    let area = |c: &[Value<'c, 'n>]| b.mulf(b.subf(c[2], c[0])?, b.subf(c[3], c[1])?);
    b.divf(inter, b.subf(b.addf(area(&a)?, area(&o)?)?, inter)?)
}

/// A box (`x1, y1, x2, y2`) decoded from `deltas` against `reference` (the box coder's weights
/// and clamp) and clipped to the image, as the runtime's `BoxCoder::decode` and
/// `clip_boxes_to_image`.
fn decoded_box<'c, 'n>(
    b: &Emitter<'c, 'n>,
    reference: [Value<'c, 'n>; 4],
    deltas: [Value<'c, 'n>; 4],
    image_size: Value<'c, '_>,
    weights: [f32; 4],
) -> Result<[Value<'c, 'n>; 4], LoweringError> {
    let f32_type = b.f32_type();
    let float = |v: f32| b.constant_float(v as f64, f32_type);
    let [x1, y1, x2, y2] = reference;
    let (w, h) = (b.subf(x2, x1)?, b.subf(y2, y1)?);
    let (center_x, center_y) = (b.addf(x1, b.mulf(float(0.5)?, w)?)?, b.addf(y1, b.mulf(float(0.5)?, h)?)?);
    let delta = |k: usize| b.divf(deltas[k], float(weights[k])?);
    let clip = float(BoxCoder::new(weights).bbox_xform_clip)?;
    let (dx, dy) = (delta(0)?, delta(1)?);
    let (dw, dh) = (b.binary("arith.minnumf", delta(2)?, clip)?, b.binary("arith.minnumf", delta(3)?, clip)?);
    let (pcx, pcy) = (b.addf(b.mulf(dx, w)?, center_x)?, b.addf(b.mulf(dy, h)?, center_y)?);
    let (pw, ph) = (b.mulf(b.unary("math.exp", dw)?, w)?, b.mulf(b.unary("math.exp", dh)?, h)?);
    let (hw, hh) = (b.mulf(float(0.5)?, pw)?, b.mulf(float(0.5)?, ph)?);
    let side = |k: i64| b.convert("arith.sitofp", b.extract(image_size, &[b.constant_index(k)?])?, f32_type);
    let (height, width) = (side(0)?, side(1)?);
    // `f32::clamp(0, high)`: below 0 is 0, then above `high` is `high`.
    let clamp = |v, high| -> Result<Value<'c, 'n>, LoweringError> {
        let zero = float(0.0)?;
        let v = b.select(b.compare_floats(CmpfPredicate::Olt, v, zero)?, zero, v)?;
        b.select(b.compare_floats(CmpfPredicate::Ogt, v, high)?, high, v)
    };
    Ok([
        clamp(b.subf(pcx, hw)?, width)?,
        clamp(b.subf(pcy, hh)?, height)?,
        clamp(b.addf(pcx, hw)?, width)?,
        clamp(b.addf(pcy, hh)?, height)?,
    ])
}

/// Row `i`'s softmax probability of `class` (torch's: the maximum subtracted, exponentials
/// summed in order), as the runtime's `softmax`.
fn class_probability<'c, 'n>(b: &Emitter<'c, 'n>, logits: Value<'c, '_>, i: Value<'c, '_>, class: Value<'c, '_>, classes: Value<'c, '_>) -> Result<Value<'c, 'n>, LoweringError> {
    let f32_type = b.f32_type();
    let zero = b.constant_index(0)?;
    let max = b.for_loop(zero, classes, &[b.constant_float(f64::NEG_INFINITY, f32_type)?], |l, a| {
        Ok(vec![l.binary("arith.maxnumf", a[1], l.extract(logits, &[i, a[0]])?)?])
    })?[0];
    let sum = b.for_loop(zero, classes, &[b.constant_float(0.0, f32_type)?], |l, a| {
        Ok(vec![l.addf(a[1], l.unary("math.exp", l.subf(l.extract(logits, &[i, a[0]])?, max)?)?)?])
    })?[0];
    b.divf(b.unary("math.exp", b.subf(b.extract(logits, &[i, class])?, max)?)?, sum)
}
