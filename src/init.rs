//! `mrc init`: weights for every state tensor of a model, drawn from the distributions
//! torchvision gives each kind of layer when it builds an untrained Mask R-CNN. A tensor's rule
//! follows from the operator that owns it and the scope of that operator's node; [`RULES`] holds
//! them all, first match first.
//!
//! Each tensor is drawn by its own xoshiro256++ generator (`rand_xoshiro`, whose output is fixed
//! across versions), seeded with the FNV-1a hash of the seed and the tensor's name: a tensor's
//! values depend only on the seed and its name, not on the model's other tensors or their order.

use crate::graph::types::DType;
use crate::graph::{Graph, NodeKind};
use mrc_runtime::weights::{Dtype, Tensor, Weights, WeightsError};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

/// How a layer's weight is drawn; fans as torch's `_calculate_fan_in_and_fan_out` computes them
/// from the weight's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightRule {
    /// `kaiming_uniform_(w, a)`: U(±√3·gain/√fan_in), gain = √(2/(1 + a²)).
    KaimingUniform { a: f64 },
    /// `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: N(0, √2/√fan_out).
    KaimingNormalFanOut,
    /// `normal_(w, std=std)`.
    Normal { std: f64 },
}

/// How a layer's bias is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasRule {
    Zero,
    /// PyTorch's default: U(±1/√fan_in), with the fan-in of the layer's weight.
    FanIn,
}

/// The initialization torchvision gives the layers of some scope.
#[derive(Debug)]
pub struct Rule {
    /// Where torchvision sets it.
    pub source: &'static str,
    /// The operators it applies to.
    pub ops: &'static [&'static str],
    /// Consecutive components of the owning node's scope (`rpn.head.conv.0.0` matches
    /// `["rpn", "head"]`); empty for any scope.
    pub scope: &'static [&'static str],
    pub weight: WeightRule,
    pub bias: BiasRule,
}

/// `a = √5`: PyTorch's default `kaiming_uniform_` of convolutions and linear layers.
const SQRT_5: f64 = 2.23606797749979;

/// torchvision's rules, first match first. ResNet convolutions have no bias; should a model give
/// one, it keeps PyTorch's default. The C4 model's `roi_heads.res5` is ResNet's fifth stage, and
/// its `mask_head.conv5_mask` and `mask_fcn_logits` are `MaskRCNNPredictor`'s layers.
pub const RULES: &[Rule] = &[
    Rule {
        source: "ops/feature_pyramid_network.py: FeaturePyramidNetwork",
        ops: &["conv2d"],
        scope: &["fpn"],
        weight: WeightRule::KaimingUniform { a: 1.0 },
        bias: BiasRule::Zero,
    },
    Rule {
        source: "models/detection/rpn.py: RPNHead",
        ops: &["conv2d"],
        scope: &["rpn", "head"],
        weight: WeightRule::Normal { std: 0.01 },
        bias: BiasRule::Zero,
    },
    Rule {
        source: "models/detection/mask_rcnn.py: MaskRCNNPredictor (its biases keep PyTorch's default)",
        ops: &["conv_transpose2d"],
        scope: &["conv5_mask"],
        weight: WeightRule::KaimingNormalFanOut,
        bias: BiasRule::FanIn,
    },
    Rule {
        source: "models/detection/mask_rcnn.py: MaskRCNNPredictor (its biases keep PyTorch's default)",
        ops: &["conv2d"],
        scope: &["mask_fcn_logits"],
        weight: WeightRule::KaimingNormalFanOut,
        bias: BiasRule::FanIn,
    },
    Rule {
        source: "models/detection/mask_rcnn.py: MaskRCNNHeads",
        ops: &["conv2d"],
        scope: &["mask_head"],
        weight: WeightRule::KaimingNormalFanOut,
        bias: BiasRule::Zero,
    },
    Rule {
        source: "models/resnet.py: ResNet",
        ops: &["conv2d"],
        scope: &["body"],
        weight: WeightRule::KaimingNormalFanOut,
        bias: BiasRule::FanIn,
    },
    Rule {
        source: "models/resnet.py: ResNet (layer4, the C4 model's RoI head)",
        ops: &["conv2d"],
        scope: &["res5"],
        weight: WeightRule::KaimingNormalFanOut,
        bias: BiasRule::FanIn,
    },
    Rule {
        source: "PyTorch's reset_parameters of Conv2d, ConvTranspose2d and Linear (TwoMLPHead, FastRCNNPredictor)",
        ops: &["conv2d", "conv_transpose2d", "linear"],
        scope: &[],
        weight: WeightRule::KaimingUniform { a: SQRT_5 },
        bias: BiasRule::FanIn,
    },
];

/// Batch norms start as the identity: weight 1, bias 0, running mean 0, running variance 1
/// (`BatchNorm2d.reset_parameters`, `FrozenBatchNorm2d`'s buffers), no batches tracked.
const NORMS: &[&str] = &["frozen_batch_norm", "batch_norm"];

/// The distribution of one tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Draw {
    Constant(f64),
    /// U(−bound, bound).
    Uniform {
        bound: f64,
    },
    /// N(0, std²).
    Normal {
        std: f64,
    },
}

/// One state tensor and how it is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub draw: Draw,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("no initialization rule for `{tensor}` of `{op}` (the rules: src/init.rs)")]
    NoRule { tensor: String, op: &'static str },
    #[error("`{tensor}` is read by no operator, so nothing says how to initialize it")]
    Unowned { tensor: String },
    #[error("`{tensor}`: {reason}")]
    Shape { tensor: String, reason: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// How each state tensor of `graph` is drawn, in `state_dict` order.
pub fn plan(graph: &Graph) -> Result<Vec<Planned>, InitError> {
    graph.state.iter().map(|&s| plan_one(graph, s)).collect()
}

fn plan_one(graph: &Graph, state: NodeIndex) -> Result<Planned, InitError> {
    let node = &graph.nodes[state];
    let name = node.name.clone();
    let ty = &node.outputs[0];
    let shape: Vec<usize> = ty.dims.iter().map(|d| d.value().unwrap_or(0) as usize).collect();
    let dtype = if ty.dtype == DType::I64 { Dtype::I64 } else { Dtype::F32 };
    // The first operator reading the tensor (shared weights have several, all alike).
    let owner = graph
        .nodes
        .neighbors_directed(state, Direction::Outgoing)
        .filter_map(|n| match &graph.nodes[n].kind {
            NodeKind::Op { op, .. } => Some((n, op.name())),
            _ => None,
        })
        .min_by_key(|&(n, _)| n);
    let Some((owner, op)) = owner else {
        return Err(InitError::Unowned { tensor: name });
    };
    let scope = &graph.nodes[owner].name;
    let role = name.strip_prefix(scope.as_str()).and_then(|r| r.strip_prefix('.')).unwrap_or(&name);
    let no_rule = || InitError::NoRule { tensor: name.clone(), op };
    let draw = if NORMS.contains(&op) {
        match role {
            "weight" | "running_var" => Draw::Constant(1.0),
            "bias" | "running_mean" | "num_batches_tracked" => Draw::Constant(0.0),
            _ => return Err(no_rule()),
        }
    } else {
        let components: Vec<&str> = scope.split('.').collect();
        let rule = RULES
            .iter()
            .find(|r| {
                r.ops.contains(&op) && (r.scope.is_empty() || components.windows(r.scope.len()).any(|w| w == r.scope))
            })
            .ok_or_else(no_rule)?;
        let weight = graph.state_named(&format!("{scope}.weight")).ok_or_else(no_rule)?;
        let weight_shape: Vec<usize> =
            graph.nodes[weight].outputs[0].dims.iter().map(|d| d.value().unwrap_or(0) as usize).collect();
        let (fan_in, fan_out) = fans(&weight_shape).ok_or_else(|| InitError::Shape {
            tensor: name.clone(),
            reason: format!("a layer's weight of shape {weight_shape:?} has no fan-in and fan-out"),
        })?;
        // torch leaves zero-element tensors alone; a zero fan means no elements here.
        let scaled = |numerator: f64, fan: usize| if fan == 0 { 0.0 } else { numerator / (fan as f64).sqrt() };
        match (role, rule.weight, rule.bias) {
            ("weight", WeightRule::KaimingUniform { a }, _) => {
                let gain = (2.0 / (1.0 + a * a)).sqrt();
                Draw::Uniform { bound: scaled(3f64.sqrt() * gain, fan_in) }
            }
            ("weight", WeightRule::KaimingNormalFanOut, _) => Draw::Normal { std: scaled(2f64.sqrt(), fan_out) },
            ("weight", WeightRule::Normal { std }, _) => Draw::Normal { std },
            ("bias", _, BiasRule::Zero) => Draw::Constant(0.0),
            ("bias", _, BiasRule::FanIn) => Draw::Uniform { bound: scaled(1.0, fan_in) },
            _ => return Err(no_rule()),
        }
    };
    Ok(Planned { name, shape, dtype, draw })
}

/// torch's `_calculate_fan_in_and_fan_out`: dimension 1 (inputs) and 0 (outputs) times the
/// receptive field; `None` below rank 2.
fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    let [outputs, inputs, receptive @ ..] = shape else {
        return None;
    };
    let receptive: usize = receptive.iter().product();
    Some((inputs * receptive, outputs * receptive))
}

/// Weights for every state tensor of `graph`, drawn as [`plan`] says from streams of `seed`.
pub fn init(graph: &Graph, seed: u64) -> Result<Weights, InitError> {
    // Each tensor its own generator: drawn in parallel, the same values in any order.
    let tensors = plan(graph)?
        .into_par_iter()
        .map(|Planned { name, shape, dtype, draw }| {
            let count = shape.iter().product();
            let tensor = match (dtype, draw) {
                (Dtype::F32, _) => Tensor::from_f32(shape, &sample(&draw, count, seed, &name)),
                // Integer state: batch counters, which start at zero.
                (_, Draw::Constant(v)) => {
                    let bytes: Vec<u8> = (0..count).flat_map(|_| (v as i64).to_le_bytes()).collect();
                    Tensor::from_le_bytes(Dtype::I64, shape, &bytes)
                }
                _ => return Err(InitError::Shape { tensor: name, reason: "an integer tensor drawn at random".into() }),
            };
            Ok((name, tensor.expect("as many values as the shape has")))
        })
        .collect::<Result<Vec<_>, InitError>>()?;
    Ok(Weights::from_tensors("initialized weights", tensors)?)
}

/// `count` values of `draw` from the generator of `name` under `seed`.
fn sample(draw: &Draw, count: usize, seed: u64, name: &str) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(fnv1a(seed.to_le_bytes().iter().chain(name.as_bytes())));
    match *draw {
        Draw::Constant(v) => vec![v as f32; count],
        Draw::Uniform { bound } if bound > 0.0 => {
            let uniform = Uniform::new_inclusive(-bound as f32, bound as f32).expect("a finite positive bound");
            (0..count).map(|_| uniform.sample(&mut rng)).collect()
        }
        Draw::Normal { std } if std > 0.0 => {
            let normal = Normal::new(0.0, std as f32).expect("a finite positive deviation");
            (0..count).map(|_| normal.sample(&mut rng)).collect()
        }
        Draw::Uniform { .. } | Draw::Normal { .. } => vec![0.0; count],
    }
}

/// The 64-bit FNV-1a hash of `bytes`: stable across platforms and versions.
fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
