//! torchvision's `BalancedPositiveNegativeSampler` with its randomness made explicit: the
//! candidates taken are those with the smallest keys, so that a choice is reproducible (keys
//! from [`uniform_keys`]) or replayable (keys 0 for recorded choices, 1 elsewhere).

use crate::error::{check_finite, invalid, shape_err, Result};

/// What a candidate can be sampled as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Positive,
    Negative,
    /// Between the thresholds: never sampled.
    Ignored,
}

/// `BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub batch_size_per_image: usize,
    /// The largest share of positives: 0.5 for the RPN, 0.25 for the RoI heads.
    pub positive_fraction: f64,
}

/// The candidates one image's sampling took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub positive: Vec<bool>,
    pub negative: Vec<bool>,
}

impl Sampler {
    pub fn new(op: &'static str, batch_size_per_image: usize, positive_fraction: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&positive_fraction) {
            return invalid(op, format!("positive fraction {positive_fraction}"));
        }
        Ok(Sampler { batch_size_per_image, positive_fraction })
    }

    /// Samples one image's candidates: `min(#positive, int(batch · fraction))` positives, then
    /// `min(#negative, batch − positives taken)` negatives, each the ones with the smallest
    /// `keys` (the lower index first among equal keys).
    pub fn sample(&self, op: &'static str, classes: &[Class], keys: &[f32]) -> Result<Sample> {
        if classes.len() != keys.len() {
            return shape_err(op, format!("{} keys for {} candidates", keys.len(), classes.len()));
        }
        check_finite(op, "key", keys)?;
        // Python's `int(batch_size_per_image * positive_fraction)` in double precision.
        let positive_quota = (self.batch_size_per_image as f64 * self.positive_fraction) as usize;
        let positive = smallest_keys(classes, keys, Class::Positive, positive_quota);
        let taken = positive.iter().filter(|&&p| p).count();
        let negative = smallest_keys(classes, keys, Class::Negative, self.batch_size_per_image - taken);
        Ok(Sample { positive, negative })
    }
}

/// A mask of the at most `quota` candidates of `class` with the smallest keys.
fn smallest_keys(classes: &[Class], keys: &[f32], class: Class, quota: usize) -> Vec<bool> {
    let mut members: Vec<usize> = (0..classes.len()).filter(|&i| classes[i] == class).collect();
    members.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]).then(a.cmp(&b)));
    let mut mask = vec![false; classes.len()];
    for &i in members.iter().take(quota) {
        mask[i] = true;
    }
    mask
}

/// SplitMix64's finalizer (Steele, Lea and Flood 2014): a bijection of `u64` whose outputs of
/// consecutive inputs pass BigCrush.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64's increment, the golden ratio in 64-bit fixed point.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// `count` keys uniform in `[0, 1)`, a pure function of `(seed, stream, index)`: element `i` is
/// the `i`-th output of SplitMix64 seeded with `mix64(seed ^ mix64(stream))`, its top 24 bits
/// scaled by 2⁻²⁴ (every value exact in float32). Different streams (one per sampler of a
/// training step) give independent sequences from one seed.
pub fn uniform_keys(seed: i64, stream: u64, count: usize) -> Vec<f32> {
    let state = mix64(seed as u64 ^ mix64(stream));
    (0..count as u64)
        .map(|i| {
            let z = mix64(state.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)));
            (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
        })
        .collect()
}
