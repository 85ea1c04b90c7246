//! The losses of Mask R-CNN's training step and their gradients, as torchvision's
//! `rpn.py`/`roi_heads.py` compute them: binary cross-entropy with logits, smooth-L1 with
//! `beta`, cross-entropy. Generic over the float type ([`Real`]) so that the same code runs in
//! float32 for training and in float64 for gradient checks.
//!
//! An empty set to average over (no sampled anchor, no RoI, no positive mask) gives a loss of 0
//! and a zero gradient, where torch would give NaN or (for the mask loss) 0.

use crate::error::{invalid, shape_err, Error, Result};

/// The float types the losses compute in.
pub trait Real: num_traits::Float + std::iter::Sum + Send + Sync + std::fmt::Debug + 'static {
    /// `x` rounded to this type.
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
}

/// `binary_cross_entropy_with_logits` of one element: `max(x, 0) − x·y + log(1 + e^−|x|)`.
pub fn bce_with_logits<T: Real>(x: T, y: T) -> T {
    x.max(T::zero()) - x * y + (-x.abs()).exp().ln_1p()
}

/// Its derivative in `x`: `σ(x) − y`.
pub fn bce_with_logits_grad<T: Real>(x: T, y: T) -> T {
    T::one() / (T::one() + (-x).exp()) - y
}

/// `smooth_l1_loss` of one difference `d`: `0.5·d²/β` below `β`, else `|d| − 0.5·β`.
pub fn smooth_l1<T: Real>(d: T, beta: T) -> T {
    let half = T::of(0.5);
    if d.abs() < beta {
        half * d * d / beta
    } else {
        d.abs() - half * beta
    }
}

/// Its derivative in `d`.
pub fn smooth_l1_grad<T: Real>(d: T, beta: T) -> T {
    if d.abs() < beta {
        d / beta
    } else {
        d.signum()
    }
}

fn check_beta(op: &'static str, beta: f64) -> Result<()> {
    if !beta.is_finite() || beta <= 0.0 {
        return invalid(op, format!("smooth-L1 beta {beta}"));
    }
    Ok(())
}

fn non_finite(op: &'static str, what: &str) -> Error {
    Error::NonFinite { op, what: what.to_owned() }
}

fn check_all_finite<T: Real>(op: &'static str, what: &str, values: &[T]) -> Result<()> {
    match values.iter().all(|v| v.is_finite()) {
        true => Ok(()),
        false => Err(non_finite(op, what)),
    }
}

/// The RPN's inputs over the `M` anchors of the whole batch, in `concat_box_prediction_layers`'
/// order (image, level, cell, anchor).
#[derive(Clone, Copy, Debug)]
pub struct RpnLossInputs<'a, T> {
    /// Objectness logits `[M]`.
    pub objectness: &'a [T],
    /// Predicted deltas `[M, 4]`.
    pub deltas: &'a [T],
    /// 1 (foreground), 0 (background) or −1 (ignored) `[M]`.
    pub labels: &'a [T],
    /// Encoded matched boxes `[M, 4]`.
    pub regression_targets: &'a [T],
    /// The sampled positives `[M]`.
    pub positive: &'a [bool],
    /// The sampled positives and negatives `[M]`.
    pub sampled: &'a [bool],
    /// Smooth-L1's `beta` (1/9).
    pub beta: f64,
}

impl<T: Real> RpnLossInputs<'_, T> {
    fn check(&self, op: &'static str) -> Result<usize> {
        let m = self.objectness.len();
        if [self.labels.len(), self.positive.len(), self.sampled.len()] != [m; 3]
            || self.deltas.len() != 4 * m
            || self.regression_targets.len() != 4 * m
        {
            return shape_err(
                op,
                format!(
                    "{m} logits, {} deltas, {} labels, {} targets, masks of {} and {}",
                    self.deltas.len(),
                    self.labels.len(),
                    self.regression_targets.len(),
                    self.positive.len(),
                    self.sampled.len()
                ),
            );
        }
        check_beta(op, self.beta)?;
        for i in 0..m {
            let label = self.labels[i];
            if self.positive[i] && !self.sampled[i] {
                return invalid(op, format!("anchor {i} is positive but not sampled"));
            }
            if self.sampled[i] && label != T::zero() && label != T::one() {
                return invalid(op, format!("sampled anchor {i} has label {label:?}, expected 0 or 1"));
            }
            if self.positive[i] && label != T::one() {
                return invalid(op, format!("positive anchor {i} has label {label:?}"));
            }
        }
        check_all_finite(op, "objectness", self.objectness)?;
        check_all_finite(op, "delta", self.deltas)?;
        check_all_finite(op, "regression target", self.regression_targets)?;
        Ok(self.sampled.iter().filter(|&&s| s).count())
    }

    /// `(loss_objectness, loss_rpn_box_reg)`: BCE with logits averaged over the sampled
    /// anchors; smooth-L1 of the positives' deltas summed and divided by the number sampled.
    pub fn losses(&self) -> Result<(T, T)> {
        const OP: &str = "rpn_loss";
        let sampled = self.check(OP)?;
        if sampled == 0 {
            return Ok((T::zero(), T::zero()));
        }
        let count = T::of(sampled as f64);
        let beta = T::of(self.beta);
        let objectness: T = (0..self.objectness.len())
            .filter(|&i| self.sampled[i])
            .map(|i| bce_with_logits(self.objectness[i], self.labels[i]))
            .sum();
        let boxes: T = (0..self.objectness.len())
            .filter(|&i| self.positive[i])
            .flat_map(|i| (4 * i..4 * i + 4).map(|j| smooth_l1(self.deltas[j] - self.regression_targets[j], beta)))
            .sum();
        Ok((objectness / count, boxes / count))
    }

    /// The gradients `([M], [M, 4])` of `grad_objectness · loss_objectness + grad_box ·
    /// loss_rpn_box_reg` with respect to the logits and the deltas.
    pub fn backward(&self, grad_objectness: T, grad_box: T) -> Result<(Vec<T>, Vec<T>)> {
        const OP: &str = "rpn_loss_backward";
        let sampled = self.check(OP)?;
        let mut d_objectness = vec![T::zero(); self.objectness.len()];
        let mut d_deltas = vec![T::zero(); self.deltas.len()];
        if sampled == 0 {
            return Ok((d_objectness, d_deltas));
        }
        let count = T::of(sampled as f64);
        let beta = T::of(self.beta);
        for (i, (d_logit, d_box)) in d_objectness.iter_mut().zip(d_deltas.chunks_exact_mut(4)).enumerate() {
            if self.sampled[i] {
                *d_logit = grad_objectness * bce_with_logits_grad(self.objectness[i], self.labels[i]) / count;
            }
            if self.positive[i] {
                for (j, d) in (4 * i..).zip(d_box) {
                    *d = grad_box * smooth_l1_grad(self.deltas[j] - self.regression_targets[j], beta) / count;
                }
            }
        }
        Ok((d_objectness, d_deltas))
    }
}

/// The box head's inputs over `R` sampled RoIs and `C` classes (`fastrcnn_loss`).
#[derive(Clone, Copy, Debug)]
pub struct FastRcnnLossInputs<'a, T> {
    /// `[R, C]`.
    pub class_logits: &'a [T],
    /// `[R, 4·C]`: a box per class.
    pub box_regression: &'a [T],
    /// `[R]` in `0..C`, 0 the background.
    pub labels: &'a [i64],
    /// `[R, 4]`.
    pub regression_targets: &'a [T],
    pub classes: usize,
    pub beta: f64,
}

impl<T: Real> FastRcnnLossInputs<'_, T> {
    fn check(&self, op: &'static str) -> Result<()> {
        let r = self.labels.len();
        let c = self.classes;
        if c == 0
            || self.class_logits.len() != r * c
            || self.box_regression.len() != 4 * r * c
            || self.regression_targets.len() != 4 * r
        {
            return shape_err(
                op,
                format!(
                    "class logits of {} values, box regression of {}, targets of {} for {r} labels and {c} classes",
                    self.class_logits.len(),
                    self.box_regression.len(),
                    self.regression_targets.len()
                ),
            );
        }
        check_beta(op, self.beta)?;
        if let Some((i, l)) = self.labels.iter().enumerate().find(|(_, &l)| !(0..c as i64).contains(&l)) {
            return invalid(op, format!("RoI {i} has label {l} for {c} classes"));
        }
        check_all_finite(op, "class logit", self.class_logits)?;
        check_all_finite(op, "box regression", self.box_regression)?;
        check_all_finite(op, "regression target", self.regression_targets)
    }

    /// Row `r`'s log-sum-exp, computed from its maximum.
    fn log_sum_exp(&self, r: usize) -> T {
        let row = &self.class_logits[r * self.classes..(r + 1) * self.classes];
        let max = row.iter().copied().fold(T::neg_infinity(), T::max);
        max + row.iter().map(|&x| (x - max).exp()).sum::<T>().ln()
    }

    /// The 4 deltas of row `r` for its label.
    fn label_deltas(&self, r: usize) -> std::ops::Range<usize> {
        let start = (r * self.classes + self.labels[r] as usize) * 4;
        start..start + 4
    }

    /// `(loss_classifier, loss_box_reg)`: cross-entropy averaged over the RoIs; smooth-L1 of the
    /// positives' deltas for their label, summed and divided by the number of RoIs.
    pub fn losses(&self) -> Result<(T, T)> {
        self.check("fastrcnn_loss")?;
        let r = self.labels.len();
        if r == 0 {
            return Ok((T::zero(), T::zero()));
        }
        let count = T::of(r as f64);
        let beta = T::of(self.beta);
        let classifier: T =
            (0..r).map(|i| self.log_sum_exp(i) - self.class_logits[i * self.classes + self.labels[i] as usize]).sum();
        let boxes: T = (0..r)
            .filter(|&i| self.labels[i] > 0)
            .flat_map(|i| {
                self.label_deltas(i)
                    .zip(4 * i..4 * i + 4)
                    .map(|(d, t)| smooth_l1(self.box_regression[d] - self.regression_targets[t], beta))
            })
            .sum();
        Ok((classifier / count, boxes / count))
    }

    /// The gradients (`[R, C]`, `[R, 4·C]`) of `grad_classifier · loss_classifier + grad_box ·
    /// loss_box_reg` with respect to the class logits and the box regression.
    pub fn backward(&self, grad_classifier: T, grad_box: T) -> Result<(Vec<T>, Vec<T>)> {
        self.check("fastrcnn_loss_backward")?;
        let r = self.labels.len();
        let mut d_logits = vec![T::zero(); self.class_logits.len()];
        let mut d_boxes = vec![T::zero(); self.box_regression.len()];
        if r == 0 {
            return Ok((d_logits, d_boxes));
        }
        let count = T::of(r as f64);
        let beta = T::of(self.beta);
        for i in 0..r {
            let lse = self.log_sum_exp(i);
            let label = self.labels[i] as usize;
            for c in 0..self.classes {
                let at = i * self.classes + c;
                let one_hot = if c == label { T::one() } else { T::zero() };
                d_logits[at] = grad_classifier * ((self.class_logits[at] - lse).exp() - one_hot) / count;
            }
            if label > 0 {
                for (d, t) in self.label_deltas(i).zip(4 * i..4 * i + 4) {
                    d_boxes[d] =
                        grad_box * smooth_l1_grad(self.box_regression[d] - self.regression_targets[t], beta) / count;
                }
            }
        }
        Ok((d_logits, d_boxes))
    }
}

/// The mask head's inputs (`maskrcnn_loss`): `[Q, C, M, M]` logits, each positive RoI's label
/// and its `[Q, M, M]` target.
#[derive(Clone, Copy, Debug)]
pub struct MaskLossInputs<'a, T> {
    pub mask_logits: &'a [T],
    /// `[Q, C, M, M']`.
    pub shape: [usize; 4],
    /// `[Q]` in `0..C`; a class-agnostic head (`C = 1`) uses its only channel for every label.
    pub labels: &'a [i64],
    pub targets: &'a [T],
}

impl<T: Real> MaskLossInputs<'_, T> {
    /// Checks the inputs; returns the channel each RoI's loss reads.
    fn channels(&self, op: &'static str) -> Result<Vec<usize>> {
        let [q, c, mh, mw] = self.shape;
        if self.mask_logits.len() != q * c * mh * mw
            || self.labels.len() != q
            || self.targets.len() != q * mh * mw
            || c == 0
        {
            return shape_err(
                op,
                format!(
                    "mask logits of {} values for shape {:?}, {} labels, targets of {} values",
                    self.mask_logits.len(),
                    self.shape,
                    self.labels.len(),
                    self.targets.len()
                ),
            );
        }
        check_all_finite(op, "mask logit", self.mask_logits)?;
        check_all_finite(op, "mask target", self.targets)?;
        self.labels
            .iter()
            .enumerate()
            .map(|(i, &l)| match (c, usize::try_from(l)) {
                (1, Ok(_)) => Ok(0),
                (_, Ok(l)) if l < c => Ok(l),
                _ => invalid(op, format!("RoI {i} has label {l} for {c} mask classes")),
            })
            .collect()
    }

    /// `loss_mask`: BCE with logits of each RoI's label channel against its target, averaged
    /// over `Q·M·M`.
    pub fn loss(&self) -> Result<T> {
        let channels = self.channels("maskrcnn_loss")?;
        let [q, c, mh, mw] = self.shape;
        let plane = mh * mw;
        if q * plane == 0 {
            return Ok(T::zero());
        }
        let sum: T = channels
            .iter()
            .enumerate()
            .flat_map(|(i, &ch)| {
                let logits = &self.mask_logits[(i * c + ch) * plane..][..plane];
                logits.iter().zip(&self.targets[i * plane..][..plane]).map(|(&x, &y)| bce_with_logits(x, y))
            })
            .sum();
        Ok(sum / T::of((q * plane) as f64))
    }

    /// The gradient `[Q, C, M, M]` of `grad · loss_mask` (zero on the channels not read).
    pub fn backward(&self, grad: T) -> Result<Vec<T>> {
        let channels = self.channels("maskrcnn_loss_backward")?;
        let [q, c, mh, mw] = self.shape;
        let plane = mh * mw;
        let mut d_logits = vec![T::zero(); self.mask_logits.len()];
        if q * plane == 0 {
            return Ok(d_logits);
        }
        let count = T::of((q * plane) as f64);
        for (i, &ch) in channels.iter().enumerate() {
            let at = (i * c + ch) * plane;
            for p in 0..plane {
                d_logits[at + p] =
                    grad * bce_with_logits_grad(self.mask_logits[at + p], self.targets[i * plane + p]) / count;
            }
        }
        Ok(d_logits)
    }
}
