//! Plain f64 reference implementation of cross-entropy, used by the tests as the
//! independent truth. Simple, obviously-correct code with no tricks beyond the
//! usual max subtraction and an `ln_1p` for confident rows.
//!
//! Two levels:
//! - [`row_losses_f64`] and [`gradient_f64`]: the plain loss (row-major logits,
//!   `u32` class indices, no options);
//! - [`cross_entropy_f64`]: every option of
//!   [`CrossEntropyOptions`] (weights,
//!   `ignore_index`, label smoothing, soft targets, z-loss, softcap, logit
//!   scale, every reduction, N-d layouts), with the per-row `lse` and argmax.
//!
//! Preconditions shared by the plain functions (checked with `debug_assert!`):
//! `classes > 0` unless there are no rows (in release builds `classes == 0`
//! gives NaN losses and an empty gradient), `logits.len() == targets.len() *
//! classes` (row-major, one row per target) and every target is `< classes`.

use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{Shape, Targets};

/// The pieces of `logsumexp` for one row, all in f64.
struct RowSoftmax {
    /// Largest logit of the row (NaN logits are ignored here but poison `rest`).
    row_max: f64,
    /// Number of logits equal to `row_max`; each contributes exactly 1 to the sum.
    count: usize,
    /// Sum of `exp(x_c - row_max)` over the logits that are not equal to `row_max`.
    rest: f64,
    /// First index of `row_max` (0 when every value is NaN).
    argmax: usize,
}

impl RowSoftmax {
    fn new(row: &[f32]) -> Self {
        let values: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
        Self::of_values(&values)
    }

    fn of_values(row: &[f64]) -> Self {
        let row_max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let argmax = row.iter().position(|&x| x == row_max).unwrap_or(0);
        let mut count = 0;
        let mut rest = 0.0;
        for &x in row {
            if x == row_max && row_max.is_finite() {
                count += 1;
            } else {
                // A NaN logit lands here (NaN != row_max) and makes `rest` NaN. A
                // non-finite row_max (a +inf logit, or every logit -inf) lands here
                // too and gives exp(inf - inf) = NaN, exactly as in PyTorch.
                rest += (x - row_max).exp();
            }
        }
        Self {
            row_max,
            count,
            rest,
            argmax,
        }
    }

    /// `sum_c exp(x_c - row_max)`.
    fn sum_exp(&self) -> f64 {
        self.count as f64 + self.rest
    }

    /// `ln(sum_exp)`, with full relative precision when the sum is `1 + tiny`.
    fn ln_sum_exp(&self) -> f64 {
        if self.count == 1 {
            self.rest.ln_1p()
        } else {
            self.sum_exp().ln()
        }
    }
}

fn debug_check_shapes(logits: &[f32], targets: &[u32], classes: usize) {
    debug_assert!(classes > 0 || targets.is_empty(), "classes must be positive");
    debug_assert_eq!(logits.len(), targets.len() * classes, "logits must be rows x classes");
    debug_assert!(
        targets.iter().all(|&t| (t as usize) < classes),
        "every target must be < classes"
    );
}

/// Per-row loss `lse(x) - x[target]`, with `lse` computed as
/// `max + ln(sum exp(x - max))`, all in f64.
///
/// The loss is written as `(max - x[target]) + ln(sum)` so that it keeps its
/// precision for large logit offsets, and `ln(sum)` uses `ln_1p` when exactly
/// one logit attains the maximum, so confident rows (loss ~1e-10) are accurate.
/// NaN or `+inf` logits give a NaN loss, as in PyTorch.
///
/// Preconditions: `classes > 0`, `logits.len() == targets.len() * classes`,
/// every target `< classes`.
pub fn row_losses_f64(logits: &[f32], targets: &[u32], classes: usize) -> Vec<f64> {
    debug_check_shapes(logits, targets, classes);
    if classes == 0 {
        return vec![f64::NAN; targets.len()];
    }
    logits
        .chunks_exact(classes)
        .zip(targets)
        .map(|(row, &target)| {
            let softmax = RowSoftmax::new(row);
            let target_logit = f64::from(row[target as usize]);
            (softmax.row_max - target_logit) + softmax.ln_sum_exp()
        })
        .collect()
}

/// Gradient of `scale * sum_rows loss_r` with respect to the logits:
/// `(softmax(x) - onehot(target)) * scale`, in f64, row-major like the logits.
///
/// Preconditions: `classes > 0`, `logits.len() == targets.len() * classes`,
/// every target `< classes`.
pub fn gradient_f64(logits: &[f32], targets: &[u32], classes: usize, scale: f64) -> Vec<f64> {
    debug_check_shapes(logits, targets, classes);
    if classes == 0 {
        return Vec::new();
    }
    let mut gradient = Vec::with_capacity(logits.len());
    for (row, &target) in logits.chunks_exact(classes).zip(targets) {
        let softmax = RowSoftmax::new(row);
        let sum_exp = softmax.sum_exp();
        // loss = lse(x) - x_t, lse(x) = ln(sum_c exp(x_c)), so
        // d loss / d x_c = exp(x_c) / sum_k exp(x_k) - [c == t]
        //                = exp(x_c - max) / sum_exp - [c == t].
        for (c, &x) in row.iter().enumerate() {
            let probability = (f64::from(x) - softmax.row_max).exp() / sum_exp;
            let onehot = if c == target as usize { 1.0 } else { 0.0 };
            gradient.push((probability - onehot) * scale);
        }
    }
    gradient
}

/// Everything [`cross_entropy_f64`] computes, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceCrossEntropy {
    /// Loss of each row, z-loss included (0 for ignored rows).
    pub row_losses: Vec<f64>,
    /// The z-loss part `z·lse²` of each row (0 for ignored rows and when `z == 0`).
    pub row_z: Vec<f64>,
    /// `logsumexp` of each row's transformed logits `x'`, ignored rows included.
    pub row_lse: Vec<f64>,
    /// Index of the largest `x'` of each row (the first on ties, NaN ignored;
    /// 0 when every `x'` is NaN), ignored rows included.
    pub row_argmax: Vec<u32>,
    /// The loss reduced per `options.reduction` (for [`Reduction::None`]: the sum of `row_losses`).
    pub loss: f64,
    /// The z-loss reduced the same way (same divisor; for [`Reduction::None`]: the sum of `row_z`).
    pub z_loss: f64,
    /// d `loss` / d logits, in the logits' layout.
    pub gradient: Vec<f64>,
}

/// What one row is compared with, widened to f64.
enum RowTarget {
    /// A class-index target equal to `ignore_index`.
    Ignored,
    /// A class-index target.
    Class(usize),
    /// Smoothed soft targets `t'_c = (1 − ε)·t_c + ε/C`.
    Smoothed(Vec<f64>),
}

/// The class-index target of `row` (only for class-index targets).
fn class_index(targets: Targets<'_>, row: usize) -> i64 {
    match targets {
        Targets::I64(values) => values[row],
        Targets::I32(values) => i64::from(values[row]),
        Targets::U32(values) => i64::from(values[row]),
        Targets::Probabilities(_) => unreachable!("soft targets have no class index"),
    }
}

/// The target of `row`, smoothing soft targets.
fn row_target(targets: Targets<'_>, shape: Shape, row: usize, options: &CrossEntropyOptions) -> RowTarget {
    let smoothing = option_f64(options.label_smoothing);
    match targets {
        Targets::Probabilities(probabilities) => {
            let uniform = smoothing / shape.classes as f64;
            let smoothed = (0..shape.classes)
                .map(|class| (1.0 - smoothing) * f64::from(probabilities[shape.index(row, class)]) + uniform)
                .collect();
            RowTarget::Smoothed(smoothed)
        }
        _ => {
            let class = class_index(targets, row);
            if class == options.ignore_index {
                RowTarget::Ignored
            } else {
                debug_assert!((0..shape.classes as i64).contains(&class), "target out of range");
                RowTarget::Class(class as usize)
            }
        }
    }
}

/// An option scalar widened to f64 as the decimal it was most likely written as:
/// the shortest decimal that rounds to `value` (so `0.1f32` becomes `0.1`, not
/// `0.100000001490116…`), which is what PyTorch receives from Python.
///
/// The f32 paths cannot tell the two apart, but the reference is compared with
/// PyTorch's float64 results to ~1e-12, well below the f32 rounding of `0.1`.
fn option_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `x' = t·tanh(s·x/t)` with softcap `t`, else `s·x`, in f64.
fn transform_f64(logit: f32, options: &CrossEntropyOptions) -> f64 {
    let scaled = option_f64(options.logit_scale) * f64::from(logit);
    match options.softcap {
        Some(cap) => {
            let cap = option_f64(cap);
            cap * (scaled / cap).tanh()
        }
        None => scaled,
    }
}

/// `d x' / d x` at `x'`: `s·(1 − (x'/t)²)` with softcap, else `s`.
fn transform_derivative_f64(transformed: f64, options: &CrossEntropyOptions) -> f64 {
    let scale = option_f64(options.logit_scale);
    match options.softcap {
        Some(cap) => {
            let ratio = transformed / option_f64(cap);
            scale * (1.0 - ratio * ratio)
        }
        None => scale,
    }
}

/// One row's results before the reduction.
struct ReferenceRow {
    /// The row's loss, z-loss included.
    loss: f64,
    /// The z-loss part.
    z: f64,
    /// `logsumexp(x')`.
    lse: f64,
    /// First index of `max x'`.
    argmax: usize,
    /// The row's share of the mean's divisor: `w_y`, 1 for soft targets, 0 when ignored.
    divisor: f64,
    /// d loss / d x (the raw logits) of this row alone, class by class.
    gradient: Vec<f64>,
}

/// Loss, z-loss, statistics and gradient of one row of transformed logits `x'`.
///
/// With `lse = logsumexp(x')`, `p_c = exp(x'_c − lse)` (so `d lse / d x'_c = p_c`):
/// - class target `y`: `loss = (1−ε)·w_y·(lse − x'_y) + (ε/C)·Σ_c w_c·(lse − x'_c) + z·lse²`, so
///   `d loss / d x'_c = ((1−ε)·w_y + (ε/C)·Σ_k w_k)·p_c + 2·z·lse·p_c − (1−ε)·w_y·[c = y] − (ε/C)·w_c`;
/// - soft targets `t'`: `loss = Σ_k w_k·t'_k·(lse − x'_k) + z·lse²`, so
///   `d loss / d x'_c = (Σ_k w_k·t'_k)·p_c + 2·z·lse·p_c − w_c·t'_c`;
///
/// and `d loss / d x_c = d loss / d x'_c · d x'_c / d x_c` (chain rule through the transform).
fn reference_row(transformed: &[f64], target: &RowTarget, options: &CrossEntropyOptions) -> ReferenceRow {
    let classes = transformed.len();
    let softmax = RowSoftmax::of_values(transformed);
    let ln_sum_exp = softmax.ln_sum_exp();
    let lse = softmax.row_max + ln_sum_exp;
    // The reported lse is torch.logsumexp's: an infinite maximum (a row of −inf,
    // or a +inf) is the lse itself, where max + ln Σ exp(x' − max) is inf − inf;
    // a NaN makes it NaN.
    let logsumexp = if softmax.row_max.is_infinite() && !transformed.iter().any(|x| x.is_nan()) {
        softmax.row_max
    } else {
        lse
    };
    // lse − x'_c, written so that a large common offset cancels before ln(sum) is added.
    let margin = |class: usize| (softmax.row_max - transformed[class]) + ln_sum_exp;
    // The options were validated: their weights cover every class.
    let weight = |class: usize| options.class_weight(class).map_or(f64::NAN, f64::from);
    let smoothing = option_f64(options.label_smoothing);
    let z_loss = option_f64(options.z_loss);

    // Per class: the target term T_c; and the total target mass A = Σ_c T_c.
    let (target_terms, divisor): (Vec<f64>, f64) = match target {
        RowTarget::Ignored => {
            return ReferenceRow {
                loss: 0.0,
                z: 0.0,
                lse: logsumexp,
                argmax: softmax.argmax,
                divisor: 0.0,
                gradient: vec![0.0; classes],
            };
        }
        RowTarget::Class(target) => {
            let uniform = smoothing / classes as f64;
            let terms = (0..classes)
                .map(|class| {
                    let hard = if class == *target {
                        (1.0 - smoothing) * weight(class)
                    } else {
                        0.0
                    };
                    hard + uniform * weight(class)
                })
                .collect();
            (terms, weight(*target))
        }
        RowTarget::Smoothed(smoothed) => {
            let terms = smoothed
                .iter()
                .enumerate()
                .map(|(class, &t)| weight(class) * t)
                .collect();
            (terms, 1.0)
        }
    };
    let cross_entropy = match target {
        // PyTorch: (1−ε)·nll + (ε/C)·smooth, where the smoothing term exists only for ε > 0.
        RowTarget::Class(target) => {
            let hard = (1.0 - smoothing) * weight(*target) * margin(*target);
            let smooth = if smoothing > 0.0 {
                smoothing / classes as f64 * (0..classes).map(|class| weight(class) * margin(class)).sum::<f64>()
            } else {
                0.0
            };
            hard + smooth
        }
        _ => (0..classes).map(|class| target_terms[class] * margin(class)).sum(),
    };
    let z = if z_loss > 0.0 { z_loss * lse * lse } else { 0.0 };
    let target_mass: f64 = target_terms.iter().sum();
    let z_slope = if z_loss > 0.0 { 2.0 * z_loss * lse } else { 0.0 };
    let sum_exp = softmax.sum_exp();
    let gradient = (0..classes)
        .map(|class| {
            let probability = (transformed[class] - softmax.row_max).exp() / sum_exp;
            let d_transformed = (target_mass + z_slope) * probability - target_terms[class];
            d_transformed * transform_derivative_f64(transformed[class], options)
        })
        .collect();
    ReferenceRow {
        loss: cross_entropy + z,
        z,
        lse: logsumexp,
        argmax: softmax.argmax,
        divisor,
        gradient,
    }
}

/// The cross-entropy with every option, in f64: PyTorch's `F.cross_entropy`
/// (plus z-loss, softcap and logit scale, see
/// [`CrossEntropyOptions`]), computed plainly from its definition.
///
/// `loss` and `z_loss` are reduced per `options.reduction`: the mean divides by
/// `Σ w_y` over the rows not ignored (their count without weights; the row count
/// for soft targets), so a mean over no rows is NaN; for [`Reduction::None`]
/// they are the sums. `gradient` is the gradient of `loss`, in the logits' layout;
/// when the mean's divisor is 0, every row not ignored has a NaN gradient row (as
/// PyTorch: `w_y · (−1/0)` at the target, spread by the log-softmax backward) and
/// ignored rows 0.
///
/// Preconditions (checked with `debug_assert!`): `shape.classes > 0`,
/// `logits.len() == rows × classes`, one class index per row (each in
/// `[0, classes)` or equal to `ignore_index`) or one probability per logit,
/// options valid for `shape`.
pub fn cross_entropy_f64(
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    options: &CrossEntropyOptions,
) -> ReferenceCrossEntropy {
    debug_assert!(
        shape.classes > 0 && shape.spatial > 0,
        "classes and spatial must be positive"
    );
    debug_assert_eq!(
        logits.len(),
        shape.rows * shape.classes,
        "logits must be rows x classes"
    );
    debug_assert_eq!(
        targets.len(),
        if targets.is_probabilities() {
            logits.len()
        } else {
            shape.rows
        },
        "one class index per row, or one probability per logit"
    );
    debug_assert!(options.validate(shape).is_ok(), "invalid options");
    let mut result = ReferenceCrossEntropy {
        row_losses: Vec::with_capacity(shape.rows),
        row_z: Vec::with_capacity(shape.rows),
        row_lse: Vec::with_capacity(shape.rows),
        row_argmax: Vec::with_capacity(shape.rows),
        loss: 0.0,
        z_loss: 0.0,
        gradient: vec![0.0; logits.len()],
    };
    let mut divisor = 0.0;
    let mut ignored_rows = Vec::with_capacity(shape.rows);
    for row in 0..shape.rows {
        let transformed: Vec<f64> = (0..shape.classes)
            .map(|class| transform_f64(logits[shape.index(row, class)], options))
            .collect();
        let target = row_target(targets, shape, row, options);
        ignored_rows.push(matches!(target, RowTarget::Ignored));
        let row_result = reference_row(&transformed, &target, options);
        for (class, &gradient) in row_result.gradient.iter().enumerate() {
            result.gradient[shape.index(row, class)] = gradient;
        }
        result.row_losses.push(row_result.loss);
        result.row_z.push(row_result.z);
        result.row_lse.push(row_result.lse);
        result.row_argmax.push(row_result.argmax as u32);
        divisor += row_result.divisor;
    }
    let divisor = if options.reduction == Reduction::Mean {
        divisor
    } else {
        1.0
    };
    result.loss = result.row_losses.iter().sum::<f64>() / divisor;
    result.z_loss = result.row_z.iter().sum::<f64>() / divisor;
    if divisor == 0.0 {
        // PyTorch's nll term is 0/0: NaN, whatever the smoothing term adds.
        result.loss = f64::NAN;
        result.z_loss = f64::NAN;
        for (row, &ignored) in ignored_rows.iter().enumerate() {
            for class in 0..shape.classes {
                result.gradient[shape.index(row, class)] = if ignored { 0.0 } else { f64::NAN };
            }
        }
    } else {
        result.gradient.iter_mut().for_each(|gradient| *gradient /= divisor);
    }
    result
}

#[cfg(test)]
pub(crate) mod tests;
