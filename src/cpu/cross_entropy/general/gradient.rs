//! Pass 3 of the general row loop: the gradient row, from the exponentials
//! pass 2 left in it and the row sums.

use super::{Blocks, PreparedRow, RowSums, RowTarget, weighted_targets};
use crate::cpu::cross_entropy::plan::Plan;
use crate::cpu::lanes::BLOCK;

/// The per-row coefficients of the gradient.
///
/// With `p_c = exp(x'_c − lse) = e_c / Σ e` (so `d lse / d x'_c = p_c`) and the
/// row loss `Σ_k T_k·(lse − x'_k) + z·lse²`, where the target terms are
/// `T_k = (1−ε)·w_y·[k = y] + (ε/C)·w_k` for a class target `y` and
/// `T_k = w_k·t'_k` for soft targets:
///
/// `d loss / d x'_c = (A + 2·z·lse)·p_c − T_c` with `A = Σ_k T_k`
/// (`(1−ε)·w_y + (ε/C)·Σ_k w_k`, or `Σ_k w_k·t'_k`),
///
/// then `d loss / d x_c = d loss / d x'_c · s·(1 − (x'_c/t)²)` with a softcap
/// (`d/du t·tanh(u/t) = 1 − tanh²(u/t)`), `· s` without; the reduced loss
/// multiplies everything by `1/D` (mean) or 1. So, in f32 per class:
/// `g_c = (α·e_c − β·u_c)·f_c` with `α = scale·(A + 2·z·lse)/Σ e`,
/// `β·u_c = scale·T_c` away from the target class, `f_c` the transform's
/// derivative (folded into α and β without a softcap).
pub(super) struct GradientTerms {
    /// `scale·(A + 2·z·lse) / Σ e` (times s without a softcap).
    alpha: f64,
    /// `scale·ε/C` for class targets, `scale` for soft ones (times s without a softcap).
    beta: f64,
    /// `2·z·lse` (0 without z-loss).
    z_slope: f64,
    /// The logit scale s where folding it into α and β would overflow f32
    /// (then applied to each entry after, as the GPU does: an entry whose
    /// `α·e_c − β·u_c` is 0 stays 0 instead of becoming `inf·0`).
    scale_after: Option<f32>,
    /// The row sums of pass 2.
    sums: RowSums,
}

impl GradientTerms {
    #[inline(always)]
    pub(super) fn new(plan: &Plan<'_>, row: &PreparedRow<'_>, target: RowTarget<'_>, sums: &RowSums, lse: f64) -> Self {
        let mass = match target {
            RowTarget::Class(class) => (1.0 - plan.smoothing) * plan.weight_of(class) + plan.uniform * plan.weight_sum,
            RowTarget::Probabilities(_) => sums.mass,
            RowTarget::Ignored => 0.0,
        };
        let z_slope = if plan.z_loss > 0.0 {
            2.0 * plan.z_loss * lse
        } else {
            0.0
        };
        let slope = plan.gradient_scale * (mass + z_slope);
        let beta = match target {
            RowTarget::Probabilities(_) => plan.gradient_scale,
            _ => plan.gradient_scale * plan.uniform,
        };
        let alpha = slope / sums.sum_exp();
        let scale = f64::from(plan.logit_scale);
        let fits_f32 = |value: f64| value.abs() <= f64::from(f32::MAX);
        let (folded, scale_after) = match row.softcap {
            Some(_) => (1.0, None),
            None if fits_f32(scale * alpha) && fits_f32(scale * beta) => (scale, None),
            None => (1.0, Some(plan.logit_scale)),
        };
        Self {
            alpha: folded * alpha,
            beta: folded * beta,
            z_slope,
            scale_after,
            sums: *sums,
        }
    }
}

/// Pass 3: turns `gradient = e` into the gradient row, block by block.
#[inline(always)]
pub(super) fn write_gradient<const FUSED: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    target: RowTarget<'_>,
    terms: &GradientTerms,
    gradient: &mut [f32],
    blocks: &mut Blocks,
) {
    let target_exp = match target {
        RowTarget::Class(class) => f64::from(gradient[class]),
        _ => 0.0,
    };
    let (alpha, beta) = (terms.alpha as f32, terms.beta as f32);
    for (block, gradient) in gradient.chunks_mut(BLOCK).enumerate() {
        let range = block * BLOCK..block * BLOCK + gradient.len();
        let weights = plan.weight_block(range.clone());
        match target {
            RowTarget::Probabilities(probabilities) => {
                let targets = &mut blocks.targets[..gradient.len()];
                weighted_targets(plan, &probabilities[range.clone()], weights, targets);
                for (g, &t) in gradient.iter_mut().zip(targets.iter()) {
                    *g = alpha * *g - beta * t;
                }
            }
            _ => {
                for (g, &w) in gradient.iter_mut().zip(weights) {
                    *g = alpha * *g - beta * w;
                }
            }
        }
        if let Some(softcap) = row.softcap {
            // x'_c = max x' + d_c: the f32 rounding of d_c moves the derivative by < 1e-7·s.
            for (g, &shift) in gradient.iter_mut().zip(&row.values[range]) {
                *g *= softcap.derivative(row.row_max + f64::from(shift)) as f32;
            }
        } else if let Some(scale) = terms.scale_after {
            for g in gradient.iter_mut() {
                *g *= scale;
            }
        }
    }
    if let RowTarget::Class(class) = target {
        gradient[class] = target_gradient::<FUSED>(plan, row, class, terms, target_exp) as f32;
    }
}

/// The target entry of a class-target gradient row, in f64:
/// `scale·((1−ε)·w_y·(p_y − 1) + ((ε/C)·Σ_k w_k + 2·z·lse)·p_y − (ε/C)·w_y)·f_y`,
/// where `p_y − 1 = ((e_y − count) − rest) / Σ e` cancels exactly when `y` is
/// the single largest logit (`e_y = 1`, `count = 1`), so confident rows keep the
/// relative precision of a tiny gradient.
#[inline(always)]
fn target_gradient<const FUSED: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    class: usize,
    terms: &GradientTerms,
    target_exp: f64,
) -> f64 {
    let sums = &terms.sums;
    let sum_exp = sums.sum_exp();
    let probability = target_exp / sum_exp;
    let probability_minus_one = ((target_exp - sums.count as f64) - sums.rest) / sum_exp;
    let weight = plan.weight_of(class);
    let d_transformed = (1.0 - plan.smoothing) * weight * probability_minus_one
        + (plan.uniform * plan.weight_sum + terms.z_slope) * probability
        - plan.uniform * weight;
    let derivative = match row.softcap {
        Some(softcap) => softcap.derivative(softcap.transform::<FUSED>(row.logits[class])),
        None => f64::from(plan.logit_scale),
    };
    plan.gradient_scale * d_transformed * derivative
}
