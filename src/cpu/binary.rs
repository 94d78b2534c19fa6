//! CPU binary cross-entropy.
//!
//! Inputs and outputs are f32; each element's loss and derivative are evaluated in
//! f64 from the f32 values (f64 `exp`, `ln_1p`, `ln`), and sums are f64. Elements
//! run through the elementwise driver of [`super::elementwise`] (fixed blocks of
//! [`BLOCK`](super::elementwise::BLOCK) across rayon's threads, block sums added in
//! block order), so the result does not depend on the thread count.
//!
//! `reference` holds plain f64 transcriptions of PyTorch's formulas, used by the
//! tests as an independent truth.

use super::elementwise::{Term, elementwise_loss};
use crate::options::{BinaryOptions, InputKind, reduction_scales};
use crate::types::Loss;

/// Binary cross-entropy of `input` ((N, `classes`) row-major, already validated)
/// against `targets`, with the options of `loss`; the gradient goes into `gradient`.
pub fn binary_cross_entropy(
    loss: &BinaryOptions,
    input: &[f32],
    targets: &[f32],
    classes: usize,
    gradient: Option<&mut [f32]>,
) -> Loss {
    let (divisor, scale) = reduction_scales(loss.reduction, input.len() as f64);
    let epsilon = f64::from(loss.label_smoothing);
    let class_value =
        |values: &Option<Vec<f32>>, class: usize| values.as_ref().map_or(1.0, |values| f64::from(values[class]));
    let probabilities = loss.input == InputKind::Probabilities;
    elementwise_loss(input, targets, divisor, scale, gradient, |index, x, y| {
        let class = index % classes;
        let weight = class_value(&loss.weight, class);
        if probabilities {
            from_probabilities(x, y, epsilon, weight)
        } else {
            let smoothed = y * (1.0 - epsilon) + epsilon / 2.0;
            from_logits(x, smoothed, weight, class_value(&loss.pos_weight, class))
        }
    })
}

/// `BCEWithLogitsLoss` of one element in the cancellation-free split form
/// (shaders/binary_cross_entropy.wgsl derives it).
fn from_logits(x: f64, smoothed: f64, weight: f64, pos_weight: f64) -> Term {
    let a = positive_factor(pos_weight, smoothed);
    let e = (-x.abs()).exp();
    let tail = e.ln_1p();
    let sigma_of_negative_magnitude = e / (1.0 + e);
    if x >= 0.0 {
        Term {
            loss: weight * (a * tail + (1.0 - smoothed) * x),
            slope: weight * ((1.0 - smoothed) - a * sigma_of_negative_magnitude),
        }
    } else {
        // NaN inputs land here and stay NaN.
        Term {
            loss: weight * (a * tail - pos_weight * smoothed * x),
            slope: weight * (a * sigma_of_negative_magnitude - pos_weight * smoothed),
        }
    }
}

/// `A = 1 + (π − 1)·y'`, exactly 1 for `π = 1` (no positive-class weight)
/// whatever `y'`: PyTorch's loss without `pos_weight` has no such factor, so
/// an infinite target gives its gradient `σ(x) − y' = −inf`, not `0·inf` = NaN.
fn positive_factor(pos_weight: f64, smoothed: f64) -> f64 {
    if pos_weight == 1.0 {
        1.0
    } else {
        1.0 + (pos_weight - 1.0) * smoothed
    }
}

/// `BCELoss` of one probability against target `y` smoothed by `epsilon`, with
/// PyTorch's clamps; `p − y'` is taken as `(p − y) + ε·(y − ½)` (as on the GPU).
fn from_probabilities(p: f64, y: f64, epsilon: f64, weight: f64) -> Term {
    let smoothed = y * (1.0 - epsilon) + epsilon / 2.0;
    let log_p = if p > 0.0 { p.ln().max(-100.0) } else { -100.0 };
    let log_complement = if p < 1.0 { (-p).ln_1p().max(-100.0) } else { -100.0 };
    Term {
        loss: -weight * (smoothed * log_p + (1.0 - smoothed) * log_complement),
        slope: weight * ((p - y) + epsilon * (y - 0.5)) / (p * (1.0 - p)).max(1e-12),
    }
}

/// Plain f64 references, transcribing PyTorch's formulas element by element.
/// Each returns the per-element losses and the gradient of their **sum** w.r.t. the
/// input (divide by N·C for the mean's). Preconditions: `targets.len() == input.len()`,
/// `input.len()` a multiple of `classes`, optional vectors of length `classes`.
#[cfg(any(test, feature = "reference"))]
pub mod reference {
    fn class_value(values: Option<&[f32]>, class: usize) -> f64 {
        values.map_or(1.0, |values| f64::from(values[class]))
    }

    fn smooth(y: f32, label_smoothing: f64) -> f64 {
        f64::from(y) * (1.0 - label_smoothing) + label_smoothing / 2.0
    }

    /// `term(x, y', class)` of every element, with its input `x` and smoothed
    /// target `y'` in f64: the per-element losses and derivatives.
    fn per_element(
        input: &[f32],
        targets: &[f32],
        classes: usize,
        label_smoothing: f64,
        term: impl Fn(f64, f64, usize) -> (f64, f64),
    ) -> (Vec<f64>, Vec<f64>) {
        input
            .iter()
            .zip(targets)
            .enumerate()
            .map(|(index, (&x, &y))| term(f64::from(x), smooth(y, label_smoothing), index % classes))
            .unzip()
    }

    /// `F.binary_cross_entropy_with_logits(x, y', weight, pos_weight, reduction='none')`:
    /// `(1−y')·x + (1 + (π−1)·y')·(log1p(exp(−|x|)) + max(−x, 0))`, times `w`;
    /// its derivative `w·((1 + (π−1)·y')·σ(x) − π·y')`.
    pub fn bce_with_logits_f64(
        input: &[f32],
        targets: &[f32],
        classes: usize,
        weight: Option<&[f32]>,
        pos_weight: Option<&[f32]>,
        label_smoothing: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        per_element(input, targets, classes, label_smoothing, |x, y, class| {
            let (w, p) = (class_value(weight, class), class_value(pos_weight, class));
            // 1 + (π−1)·y', and 1 where π = 1, as without pos_weight (PyTorch's formula then has no such factor).
            let a = if p == 1.0 { 1.0 } else { 1.0 + (p - 1.0) * y };
            let loss = w * ((1.0 - y) * x + a * ((-x.abs()).exp().ln_1p() + (-x).max(0.0)));
            let sigmoid = 1.0 / (1.0 + (-x).exp());
            (loss, w * (a * sigmoid - p * y))
        })
    }

    /// `F.binary_cross_entropy(p, y', weight, reduction='none')`:
    /// `−w·(y'·max(ln p, −100) + (1−y')·max(ln(1−p), −100))`; derivative
    /// `w·(p − y') / max(p·(1−p), 1e−12)` (PyTorch's backward).
    pub fn bce_probs_f64(
        input: &[f32],
        targets: &[f32],
        classes: usize,
        weight: Option<&[f32]>,
        label_smoothing: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        per_element(input, targets, classes, label_smoothing, |p, y, class| {
            let w = class_value(weight, class);
            let loss = -w * (y * p.ln().max(-100.0) + (1.0 - y) * (1.0 - p).ln().max(-100.0));
            (loss, w * (p - y) / (p * (1.0 - p)).max(1e-12))
        })
    }
}
