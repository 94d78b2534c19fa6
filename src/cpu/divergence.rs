//! CPU KL divergence, entropy and probability cross-entropy.
//!
//! Inputs and outputs are f32; every term is evaluated in f64 from the f32 values
//! and sums are f64. The KL divergence runs through the elementwise driver of
//! [`super::elementwise`] (fixed blocks across threads); entropy and the probability
//! cross-entropy handle one row per task across rayon's threads, and the row
//! losses are added in row order, so results do not depend on the thread count.
//!
//! `reference` holds plain f64 transcriptions of the definitions, used by the
//! tests as an independent truth.

use rayon::prelude::*;

use super::elementwise::{Term, elementwise_loss, optional_chunks};
use crate::options::{InputKind, KERAS_EPSILON};
use crate::types::{Loss, RowTargets};

/// PyTorch's `kl_div` of `input` (log q) against `target` (p, or log p with
/// `log_target`), reduced as `Σ / divisor` (or per element without a divisor);
/// the gradient, times `scale`, goes into `gradient`.
pub fn kl_div(
    input: &[f32],
    target: &[f32],
    log_target: bool,
    divisor: Option<f64>,
    scale: f32,
    gradient: Option<&mut [f32]>,
) -> Loss {
    elementwise_loss(input, target, divisor, scale, gradient, |_, x, t| {
        kl_term(x, t, log_target)
    })
}

/// One element: `p·(log p − x)` (0 at `p == 0`, NaN for `p < 0`) or `exp(t)·(t − x)`,
/// which is `t − x` itself where that is infinite and `t > −inf` (`exp(t) > 0`, even
/// where f64 underflows it below `t ≈ −745`; the GPU's f32 already below −87).
fn kl_term(x: f64, t: f64, log_target: bool) -> Term {
    if log_target {
        let p = t.exp();
        let difference = t - x;
        let loss = if difference.is_infinite() && t > f64::NEG_INFINITY {
            difference
        } else {
            p * difference
        };
        return Term { loss, slope: -p };
    }
    let loss = if t > 0.0 {
        t * (t.ln() - x)
    } else if t == 0.0 {
        0.0 - t * x
    } else {
        f64::NAN
    };
    Term { loss, slope: -t }
}

/// Runs `row_loss(row index, row values, gradient row)` on every row of `input`
/// in parallel and returns the row losses in row order.
fn for_each_row(
    input: &[f32],
    classes: usize,
    gradient: Option<&mut [f32]>,
    row_loss: impl Fn(usize, &[f32], Option<&mut [f32]>) -> f64 + Sync,
) -> Vec<f64> {
    let rows = input.len() / classes;
    let gradient_rows = optional_chunks(gradient, classes, rows);
    input
        .par_chunks(classes)
        .zip(gradient_rows)
        .enumerate()
        .with_min_len(64)
        .map(|(row, (values, gradient))| row_loss(row, values, gradient))
        .collect()
}

/// `Σ / divisor` of the row losses (in row order), or the row losses themselves.
fn reduce_rows(row_losses: &[f64], divisor: Option<f64>) -> Loss {
    match divisor {
        Some(divisor) => Loss::Reduced((row_losses.iter().sum::<f64>() / divisor) as f32),
        None => Loss::PerRow(row_losses.iter().map(|&loss| loss as f32).collect()),
    }
}

/// The entropy of each row of `input` (probabilities, or logits with P = softmax),
/// reduced as `Σ / divisor` (or per row); the gradient, times `scale`, goes into `gradient`.
pub fn entropy(
    input: &[f32],
    classes: usize,
    kind: InputKind,
    divisor: Option<f64>,
    scale: f32,
    gradient: Option<&mut [f32]>,
) -> Loss {
    let scale = f64::from(scale);
    let row_losses = for_each_row(input, classes, gradient, |_, row, gradient| match kind {
        InputKind::Probabilities => entropy_of_probabilities(row, gradient, scale),
        InputKind::Logits => entropy_of_logits(row, gradient, scale),
    });
    reduce_rows(&row_losses, divisor)
}

/// `entr(p) = −p·ln p`, 0 at 0, −inf below 0 (`torch.special.entr`).
fn entr(p: f64) -> f64 {
    if p > 0.0 {
        -p * p.ln()
    } else if p == 0.0 {
        0.0
    } else if p < 0.0 {
        f64::NEG_INFINITY
    } else {
        p
    }
}

fn entropy_of_probabilities(row: &[f32], gradient: Option<&mut [f32]>, scale: f64) -> f64 {
    if let Some(gradient) = gradient {
        for (slot, &p) in gradient.iter_mut().zip(row) {
            let p = f64::from(p);
            // +inf at p == 0 (as PyTorch's entr backward); NaN below 0.
            let slope = if p == 0.0 { f64::INFINITY } else { -(p.ln() + 1.0) };
            *slot = (slope * scale) as f32;
        }
    }
    row.iter().map(|&p| entr(f64::from(p))).sum()
}

/// H(softmax(x)) = ln S + D with M = max x, S = Σ exp(x − M), D = Σ p·(M − x);
/// gradient p_c·((M − x_c) − D) (shaders/divergence.wgsl derives both).
fn entropy_of_logits(row: &[f32], gradient: Option<&mut [f32]>, scale: f64) -> f64 {
    // f64::max skips NaN; a NaN logit still makes its gap, and so the row, NaN.
    let maximum = row
        .iter()
        .fold(f64::NEG_INFINITY, |maximum, &x| maximum.max(f64::from(x)));
    let (mut count, mut rest, mut weighted) = (0.0f64, 0.0f64, 0.0f64);
    for &x in row {
        let gap = maximum - f64::from(x);
        if gap == 0.0 {
            count += 1.0;
        } else {
            let e = (-gap).exp();
            rest += e;
            if e != 0.0 {
                weighted += e * gap;
            }
        }
    }
    let total = count + rest;
    let log_total = if count == 1.0 { rest.ln_1p() } else { total.ln() };
    let mean_gap = weighted / total;
    if let Some(gradient) = gradient {
        for (slot, &x) in gradient.iter_mut().zip(row) {
            let gap = maximum - f64::from(x);
            let probability = (-gap).exp() / total;
            // p = 0 (x = −inf, a masked class): p·(gap − D) → 0, not 0·inf = NaN. NaN stays NaN.
            let entry = if probability == 0.0 {
                0.0
            } else {
                probability * (gap - mean_gap)
            };
            *slot = (entry * scale) as f32;
        }
    }
    log_total + mean_gap
}

/// Keras' categorical cross-entropy on probabilities (see
/// [`ProbabilityCrossEntropyLoss`](crate::ProbabilityCrossEntropyLoss)) of each row,
/// reduced as `Σ / divisor` (or per row); the gradient, times `scale`, goes into `gradient`.
pub fn probability_cross_entropy(
    input: &[f32],
    targets: RowTargets<'_>,
    classes: usize,
    divisor: Option<f64>,
    scale: f32,
    gradient: Option<&mut [f32]>,
) -> Loss {
    let scale = f64::from(scale);
    let row_losses = for_each_row(input, classes, gradient, |row, values, gradient| {
        let target_of = |class: usize| match targets {
            RowTargets::Soft(soft) => f64::from(soft[row * classes + class]),
            RowTargets::Classes(indices) => f64::from(u8::from(indices[row] as usize == class)),
        };
        probability_cross_entropy_row(values, target_of, gradient, scale)
    });
    reduce_rows(&row_losses, divisor)
}

/// The clip bounds `[ε, 1 − ε]`, in f32 as Keras computes them, widened.
fn clip_bounds() -> (f64, f64) {
    (f64::from(KERAS_EPSILON), f64::from(1.0f32 - KERAS_EPSILON))
}

fn probability_cross_entropy_row(
    row: &[f32],
    target_of: impl Fn(usize) -> f64,
    gradient: Option<&mut [f32]>,
    scale: f64,
) -> f64 {
    let (lower, upper) = clip_bounds();
    let total: f64 = row.iter().map(|&p| f64::from(p)).sum();
    let inside = |p: f64| (lower..=upper).contains(&(p / total));
    // Some u = p / S is NaN (S = 0, a NaN, or inf / inf): Keras' clip keeps it and
    // −Σ t·log q takes 0·log NaN = NaN, so the loss and the gradient row are NaN.
    if row.iter().any(|&p| (f64::from(p) / total).is_nan()) {
        if let Some(gradient) = gradient {
            gradient.fill(f32::NAN);
        }
        return f64::NAN;
    }
    let (mut loss, mut passed) = (0.0, 0.0);
    for (class, &p) in row.iter().enumerate() {
        let (p, t) = (f64::from(p), target_of(class));
        if t != 0.0 {
            loss -= t * (p / total).clamp(lower, upper).ln();
        }
        if inside(p) {
            passed += t;
        }
    }
    if let Some(gradient) = gradient {
        for (class, (slot, &p)) in gradient.iter_mut().zip(row).enumerate() {
            let (p, t) = (f64::from(p), target_of(class));
            let own = if t != 0.0 && inside(p) { t / p } else { 0.0 };
            *slot = ((passed / total - own) * scale) as f32;
        }
    }
    loss
}

/// Plain f64 references, transcribing each definition directly. Each returns the
/// losses (per element for KL, per row otherwise) and the gradient of their **sum**
/// w.r.t. the input (divide by the reduction's divisor for a mean's).
/// Preconditions: lengths as in the losses' own checks, `classes > 0`.
#[cfg(any(test, feature = "reference"))]
pub mod reference {
    use super::{RowTargets, clip_bounds};

    /// `F.kl_div(input, target, reduction='none', log_target=)`: `xlogy(t, t) − t·x`,
    /// or `exp(t)·(t − x)`; derivatives `−t` and `−exp(t)`.
    pub fn kl_div_f64(input: &[f32], target: &[f32], log_target: bool) -> (Vec<f64>, Vec<f64>) {
        input
            .iter()
            .zip(target)
            .map(|(&x, &t)| {
                let (x, t) = (f64::from(x), f64::from(t));
                if log_target {
                    (t.exp() * (t - x), -t.exp())
                } else {
                    let xlogy = if t == 0.0 { 0.0 } else { t * t.ln() };
                    (xlogy - t * x, -t)
                }
            })
            .unzip()
    }

    /// `H(P)` per row: `Σ_c entr(p_c)` from probabilities (derivative `−(ln p + 1)`),
    /// or through an explicit `log_softmax` from logits (derivative `−p·(log p + H)`).
    pub fn entropy_f64(input: &[f32], classes: usize, from_logits: bool) -> (Vec<f64>, Vec<f64>) {
        let mut row_entropies = Vec::new();
        let mut gradient = Vec::with_capacity(input.len());
        for row in input.chunks_exact(classes) {
            let row: Vec<f64> = row.iter().map(|&value| f64::from(value)).collect();
            if from_logits {
                let maximum = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = maximum + row.iter().map(|&x| (x - maximum).exp()).sum::<f64>().ln();
                let log_p: Vec<f64> = row.iter().map(|&x| x - lse).collect();
                // p·log p → 0 as p → 0 (a −inf logit), where 0·(−inf) would be NaN.
                let p_log_p = |l: f64| if l == f64::NEG_INFINITY { 0.0 } else { l.exp() * l };
                let h = -log_p.iter().map(|&l| p_log_p(l)).sum::<f64>();
                gradient.extend(log_p.iter().map(|&l| {
                    if l == f64::NEG_INFINITY {
                        0.0
                    } else {
                        -l.exp() * (l + h)
                    }
                }));
                row_entropies.push(h);
            } else {
                let entr = |p: f64| if p == 0.0 { 0.0 } else { -p * p.ln() };
                row_entropies.push(row.iter().map(|&p| entr(p)).sum());
                gradient.extend(row.iter().map(|&p| -(p.ln() + 1.0)));
            }
        }
        (row_entropies, gradient)
    }

    /// Keras' `categorical_crossentropy(from_logits=False)` per row: `q = clip(p / Σp)`,
    /// `−Σ t·ln q` over every class (so a NaN `q`, from `Σp = 0`, a NaN or an
    /// infinite `p`, makes the row NaN even where `t = 0`, as Keras); the gradient
    /// by the chain rule through the clip (passing where `ε ≤ u ≤ 1 − ε`) and the
    /// renormalisation `du_c/dp_j = (δ_cj − u_c) / S`.
    pub fn probability_cross_entropy_f64(
        input: &[f32],
        targets: RowTargets<'_>,
        classes: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (lower, upper) = clip_bounds();
        let mut losses = Vec::new();
        let mut gradient = Vec::with_capacity(input.len());
        for (row, values) in input.chunks_exact(classes).enumerate() {
            let t: Vec<f64> = (0..classes)
                .map(|class| match targets {
                    RowTargets::Soft(soft) => f64::from(soft[row * classes + class]),
                    RowTargets::Classes(indices) => f64::from(u8::from(indices[row] as usize == class)),
                })
                .collect();
            let total: f64 = values.iter().map(|&p| f64::from(p)).sum();
            let u: Vec<f64> = values.iter().map(|&p| f64::from(p) / total).collect();
            let q: Vec<f64> = u.iter().map(|&u| u.clamp(lower, upper)).collect();
            losses.push(-(0..classes).map(|c| t[c] * q[c].ln()).sum::<f64>());
            // d loss / d u_c, zero where the clip is active.
            let d_u: Vec<f64> = (0..classes)
                .map(|c| {
                    if (lower..=upper).contains(&u[c]) {
                        -t[c] / q[c]
                    } else {
                        0.0
                    }
                })
                .collect();
            let through_total: f64 = (0..classes).map(|c| d_u[c] * u[c]).sum();
            gradient.extend((0..classes).map(|j| (d_u[j] - through_total) / total));
        }
        (losses, gradient)
    }
}
