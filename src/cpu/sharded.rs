//! The vocabulary-sharded cross-entropy on the CPU: each shard's per-row
//! statistics, their combination into the loss and the per-row gradient
//! coefficients (the host step between the shards, whichever backend computed
//! them), and each shard's gradient. The public calls are in `losses/sharded.rs`.
//!
//! With transformed logits `x' = t·tanh(s·x/t)` (or `s·x`), class weights `w`
//! (1 without), smoothing `ε`, z-loss `z`, `C` classes in all, and a row whose
//! target `y` is not ignored, the unsharded loss is (see
//! [`CrossEntropyOptions`]):
//!
//! `loss = (1−ε)·w_y·(lse − x'_y) + (ε/C)·Σ_c w_c·(lse − x'_c) + z·lse²`.
//!
//! A shard `s` gives, over its classes, `m_s = max x'`, the count of `x' = m_s`
//! and `rest_s = Σ exp(x' − m_s)` over the others, `x'_y` when it holds `y`, and
//! `D_s = Σ_c w_c·(m_s − x'_c) ≥ 0` with its weight sum `W_s`. With the global
//! maximum `M = max_s m_s`, each shard rescales its sums to `M`
//! ([`ShardStats::sums_at`]), the sums add across shards, and
//!
//! - `S = count + rest`, `L = ln S` (`ln_1p(rest)` when one logit attains `M`,
//!   which keeps confident rows' 1e-10 losses), `lse = M + L`;
//! - `lse − x'_y = (M − x'_y) + L`;
//! - `Σ_c w_c·(lse − x'_c) = Σ_s (D_s + W_s·(M − m_s)) + W·L` (every term ≥ 0:
//!   nothing cancels, even for logits offset by 1e4).
//!
//! The gradient (`p_c = exp(x'_c − M − L)`, `d lse / d x'_c = p_c`, `scale` the
//! reduction's factor, `1/Σ w_y` for the mean):
//!
//! `d loss / d x_c = scale·((A + 2·z·lse)·p_c − (ε/C)·w_c − (1−ε)·w_y·[c = y])·d x'_c / d x_c`,
//! `A = (1−ε)·w_y + (ε/C)·W`, `d x'_c / d x_c = s·(1 − (x'_c/t)²)` (softcap) or `s`;
//!
//! so a shard needs, per row, `M`, `L` and the three factors
//! ([`CombinedStats`]). A mean over a zero divisor has `scale = NaN`: the loss is
//! NaN and every row not ignored gets a NaN gradient row, as in PyTorch.

use rayon::prelude::*;

use crate::cpu::math::tanh_f64;

use crate::error::{Error, Result};
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{CombinedStats, Loss, ShardStats, ShardSums, VocabShard, check_rows};

/// `x'` in f64.
pub(crate) fn transform_f64(options: &CrossEntropyOptions, logit: f32) -> f64 {
    let scaled = f64::from(options.logit_scale) * f64::from(logit);
    match options.softcap {
        Some(cap) => {
            let cap = f64::from(cap);
            cap * tanh_f64::<false>(scaled / cap)
        }
        None => scaled,
    }
}

/// `d x' / d x` at `x'`, in f64.
fn transform_derivative_f64(options: &CrossEntropyOptions, transformed: f64) -> f64 {
    let scale = f64::from(options.logit_scale);
    match options.softcap {
        Some(cap) => {
            let ratio = transformed / f64::from(cap);
            scale * (1.0 - ratio * ratio)
        }
        None => scale,
    }
}

/// The weight of the shard's class `local` (1 without weights).
fn shard_weight(options: &CrossEntropyOptions, shard: VocabShard, local: usize) -> f64 {
    // The options were validated: their weights cover every class.
    options.class_weight(shard.start() + local).map_or(f64::NAN, f64::from)
}

/// One row's statistics over the shard: max, max count, rest, target logit,
/// target count, spread.
fn row_stats(options: &CrossEntropyOptions, shard: VocabShard, row: &[f32], target: i64) -> [f64; 6] {
    // NaN logits are skipped here (f64::max) but make `rest` NaN below.
    let max = row
        .iter()
        .map(|&x| transform_f64(options, x))
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut count, mut rest, mut spread) = (0.0, 0.0, 0.0);
    for (local, &x) in row.iter().enumerate() {
        let transformed = transform_f64(options, x);
        if transformed == max {
            count += 1.0;
        } else {
            rest += (transformed - max).exp();
            spread += shard_weight(options, shard, local) * (max - transformed);
        }
    }
    let (target_logit, target_count) = match shard.local_class(target) {
        Some(local) if target != options.ignore_index => (transform_f64(options, row[local]), 1.0),
        _ => (0.0, 0.0),
    };
    [max, count, rest, target_logit, target_count, spread]
}

/// The per-row statistics of one shard's logits (`rows × shard.len()`, row-major).
/// Preconditions (checked by the caller): lengths, targets and options valid.
pub(crate) fn shard_stats(
    options: &CrossEntropyOptions,
    shard: VocabShard,
    logits: &[f32],
    targets: &[i64],
) -> ShardStats {
    let rows: Vec<[f64; 6]> = logits
        .par_chunks(shard.len())
        .zip(targets.par_iter())
        .map(|(row, &target)| row_stats(options, shard, row, target))
        .collect();
    let column = |index: usize| rows.iter().map(|row| row[index]).collect();
    ShardStats {
        shard,
        weight_sum: shard.weight_sum(options.weight.as_deref()),
        max: column(0),
        max_count: column(1),
        rest: column(2),
        target_logit: column(3),
        target_count: column(4),
        spread: column(5),
        options_key: options.statistics_key(),
    }
}

/// One row's combined results.
#[derive(Clone, Copy, Default)]
struct CombinedRow {
    loss: f64,
    z: f64,
    /// The row's share of the mean's divisor (`w_y`; 0 when ignored).
    divisor: f64,
    max: f64,
    ln_sum_exp: f64,
    /// `torch.logsumexp` of the row: `max + ln_sum_exp`, or `max` itself where it
    /// is infinite and no logit is NaN (`ln_sum_exp` is NaN there).
    lse: f64,
    ignored: bool,
    /// `rest` when the maximum is unique, else −1.
    confident_rest: f64,
    /// `(ε/C)·W + 2·z·lse` and `(1−ε)·w_y`, before the reduction's scale.
    other_factor: f64,
    target_factor: f64,
}

/// The option values the combination needs, widened once.
struct Constants {
    smoothing: f64,
    uniform: f64,
    z_loss: f64,
    total_weight: f64,
}

/// `ln Σ exp(x' − M)` from its count of `x' = M` and the rest (NaN for a
/// non-finite `M`: a `+inf` logit, or a row of `-inf`, as in PyTorch).
fn ln_sum_exp(max: f64, count: f64, rest: f64) -> f64 {
    if !max.is_finite() {
        f64::NAN
    } else if count == 1.0 {
        rest.ln_1p()
    } else {
        (count + rest).ln()
    }
}

/// Combines one row (see the module documentation).
fn combine_row(
    options: &CrossEntropyOptions,
    constants: &Constants,
    sums: [f64; 6],
    target: i64,
    row: usize,
) -> Result<CombinedRow> {
    let [max, count, rest, target_logit, target_count, spread] = sums;
    let ln_sum_exp = ln_sum_exp(max, count, rest);
    let lse = max + ln_sum_exp;
    // A NaN logit makes `rest` NaN (every shard's, rescaled or not).
    let reported_lse = if max.is_infinite() && !rest.is_nan() { max } else { lse };
    let confident_rest = if count == 1.0 { rest } else { -1.0 };
    if target == options.ignore_index {
        return Ok(CombinedRow {
            max,
            ln_sum_exp,
            lse: reported_lse,
            confident_rest,
            ignored: true,
            ..CombinedRow::default()
        });
    }
    if target_count != 1.0 {
        return Err(Error::InvalidShards(format!(
            "the target {target} of row {row} is held by {target_count} shards, expected 1"
        )));
    }
    // The target is in range and the weights cover every class (both checked).
    let weight = options.class_weight(target as usize).map_or(f64::NAN, f64::from);
    let Constants {
        smoothing,
        uniform,
        z_loss,
        total_weight,
    } = *constants;
    let hard = (1.0 - smoothing) * weight * ((max - target_logit) + ln_sum_exp);
    let smooth = if smoothing > 0.0 {
        uniform * (spread + total_weight * ln_sum_exp)
    } else {
        0.0
    };
    let (z, z_slope) = if z_loss > 0.0 {
        (z_loss * lse * lse, 2.0 * z_loss * lse)
    } else {
        (0.0, 0.0)
    };
    Ok(CombinedRow {
        loss: hard + smooth + z,
        z,
        divisor: weight,
        max,
        ln_sum_exp,
        lse: reported_lse,
        ignored: false,
        confident_rest,
        other_factor: uniform * total_weight + z_slope,
        target_factor: (1.0 - smoothing) * weight,
    })
}

/// The loss and per-row gradient coefficients from the global row maxima and
/// the shards' summed [`ShardSums`]. Preconditions (checked by the caller):
/// targets in range or ignored, options valid for `total_classes`.
pub(crate) fn combine_sums(
    options: &CrossEntropyOptions,
    total_classes: usize,
    global_max: &[f64],
    sums: &ShardSums,
    targets: &[i64],
) -> Result<CombinedStats> {
    let rows = targets.len();
    check_rows("global_max", global_max.len(), rows)?;
    check_rows("the summed statistics", sums.rows(), rows)?;
    let smoothing = f64::from(options.label_smoothing);
    let constants = Constants {
        smoothing,
        uniform: smoothing / total_classes as f64,
        z_loss: f64::from(options.z_loss),
        total_weight: options.weight.as_ref().map_or(total_classes as f64, |weight| {
            weight.iter().map(|&w| f64::from(w)).sum()
        }),
    };
    let combined: Vec<CombinedRow> = (0..rows)
        .map(|row| {
            let sums = [
                global_max[row],
                sums.max_count()[row],
                sums.rest()[row],
                sums.target_logit()[row],
                sums.target_count()[row],
                sums.spread()[row],
            ];
            combine_row(options, &constants, sums, targets[row], row)
        })
        .collect::<Result<_>>()?;
    Ok(reduce(options, total_classes, &constants, &combined))
}

/// The reduction of the combined rows, and the gradient factors scaled by it.
fn reduce(
    options: &CrossEntropyOptions,
    total_classes: usize,
    constants: &Constants,
    rows: &[CombinedRow],
) -> CombinedStats {
    let divisor = match options.reduction {
        Reduction::Mean => rows.iter().map(|row| row.divisor).sum(),
        Reduction::Sum | Reduction::None => 1.0,
    };
    // PyTorch's nll term is 0/0 over a zero divisor: NaN, whatever smoothing adds.
    let reduced = |sum: f64| if divisor == 0.0 { f64::NAN } else { sum / divisor };
    let scale = if divisor == 0.0 { f64::NAN } else { 1.0 / divisor };
    let losses = |value: fn(&CombinedRow) -> f64| match options.reduction {
        Reduction::None => Loss::PerRow(rows.iter().map(|row| value(row) as f32).collect()),
        _ => Loss::Reduced(reduced(rows.iter().map(value).sum()) as f32),
    };
    let scaled = |value: fn(&CombinedRow) -> f64| -> Vec<f64> {
        rows.iter()
            .map(|row| if row.ignored { 0.0 } else { scale * value(row) })
            .collect()
    };
    CombinedStats {
        loss: losses(|row| row.loss),
        z_loss: (options.z_loss > 0.0).then(|| losses(|row| row.z)),
        total_classes,
        max: rows.iter().map(|row| row.max).collect(),
        ln_sum_exp: rows.iter().map(|row| row.ln_sum_exp).collect(),
        lse: rows.iter().map(|row| row.lse).collect(),
        ignored: rows.iter().map(|row| row.ignored).collect(),
        other_scale: scaled(|row| row.other_factor),
        confident_rest: rows.iter().map(|row| row.confident_rest).collect(),
        smoothing_scale: rows
            .iter()
            .map(|row| if row.ignored { 0.0 } else { scale * constants.uniform })
            .collect(),
        target_scale: scaled(|row| row.target_factor),
        options_key: options.combination_key(),
    }
}

/// One shard's gradient (`rows × shard.len()`, row-major) from the combined
/// statistics. Preconditions (checked by the caller): lengths, targets, options
/// and `combined` of these rows and this vocabulary.
pub(crate) fn shard_gradient(
    options: &CrossEntropyOptions,
    shard: VocabShard,
    logits: &[f32],
    targets: &[i64],
    combined: &CombinedStats,
    gradient: &mut [f32],
) {
    gradient
        .par_chunks_mut(shard.len())
        .zip(logits.par_chunks(shard.len()))
        .enumerate()
        .for_each(|(row, (gradient_row, logits_row))| {
            if combined.ignored[row] {
                gradient_row.fill(0.0);
                return;
            }
            let (max, ln_sum_exp) = (combined.max[row], combined.ln_sum_exp[row]);
            let target = shard.local_class(targets[row]);
            for (local, (out, &x)) in gradient_row.iter_mut().zip(logits_row).enumerate() {
                let transformed = transform_f64(options, x);
                let probability = ((transformed - max) - ln_sum_exp).exp();
                let probability_scale = combined.other_scale[row] + combined.target_scale[row];
                let mut d_transformed = probability_scale * probability
                    - combined.smoothing_scale[row] * shard_weight(options, shard, local);
                if target == Some(local) {
                    d_transformed -= combined.target_scale[row];
                }
                *out = (d_transformed * transform_derivative_f64(options, transformed)) as f32;
            }
        });
}
