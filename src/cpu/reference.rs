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
    // lse − x'_c, written so that a large common offset cancels before ln(sum) is added.
    let margin = |class: usize| (softmax.row_max - transformed[class]) + ln_sum_exp;
    let weight = |class: usize| f64::from(options.class_weight(class));
    let smoothing = option_f64(options.label_smoothing);
    let z_loss = option_f64(options.z_loss);

    // Per class: the target term T_c; and the total target mass A = Σ_c T_c.
    let (target_terms, divisor): (Vec<f64>, f64) = match target {
        RowTarget::Ignored => {
            return ReferenceRow {
                loss: 0.0,
                z: 0.0,
                lse,
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
        lse,
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
pub(crate) mod tests {
    use super::*;
    use crate::options::Reduction;

    fn total_loss(logits: &[f32], targets: &[u32], classes: usize) -> f64 {
        row_losses_f64(logits, targets, classes).iter().sum()
    }

    #[test]
    fn known_values() {
        // Two equal logits: loss = ln 2, gradient = (0.5 - onehot) * scale.
        let losses = row_losses_f64(&[3.0, 3.0], &[1], 2);
        assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-15);
        let gradient = gradient_f64(&[3.0, 3.0], &[1], 2, 2.0);
        assert_eq!(gradient, vec![1.0, -1.0]);

        // [0, ln 3] with target 0: softmax = [1/4, 3/4], loss = ln 4.
        let ln3 = 3.0f64.ln() as f32;
        let losses = row_losses_f64(&[0.0, ln3], &[0], 2);
        let expected = (f64::from(ln3) - 0.0) + (1.0 + (-f64::from(ln3)).exp()).ln();
        assert!((losses[0] - expected).abs() < 1e-15);
        assert!((losses[0] - 4.0f64.ln()).abs() < 1e-7);

        // One class: loss 0, gradient 0.
        assert_eq!(row_losses_f64(&[5.0], &[0], 1), vec![0.0]);
        assert_eq!(gradient_f64(&[5.0], &[0], 1, 1.0), vec![0.0]);
    }

    #[test]
    fn confident_row_keeps_relative_precision() {
        // Target is the max, the other logit 30 lower: loss = ln(1 + e^-30).
        let losses = row_losses_f64(&[0.0, -30.0], &[0], 2);
        let expected = (-30.0f64).exp().ln_1p();
        assert!((losses[0] - expected).abs() <= 1e-15 * expected);
    }

    #[test]
    fn nan_and_inf_propagate() {
        let losses = row_losses_f64(&[1.0, f32::NAN, 2.0, 0.0, 1.0, 2.0], &[0, 0], 3);
        assert!(losses[0].is_nan());
        assert!(losses[1].is_finite());
        assert!(row_losses_f64(&[1.0, f32::INFINITY], &[1], 2)[0].is_nan());
        assert!(row_losses_f64(&[1.0, f32::INFINITY], &[0], 2)[0].is_nan());
        assert!(gradient_f64(&[1.0, f32::NAN], &[0], 2, 1.0).iter().all(|g| g.is_nan()));
        // -inf logits are fine: they just have probability 0.
        let losses = row_losses_f64(&[0.0, f32::NEG_INFINITY], &[0], 2);
        assert_eq!(losses, vec![0.0]);
    }

    #[test]
    fn gradient_matches_central_finite_differences() {
        // Logits on a 2^-10 grid and a 2^-7 step, so x +- step is exact in f32.
        let classes = 5;
        let targets = [0u32, 3, 4];
        let logits: Vec<f32> = (0..targets.len() * classes)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .map(|x| (x * 1024.0).round() / 1024.0)
            .collect();
        let step = 1.0f32 / 128.0;
        let scale = 0.75;
        let gradient = gradient_f64(&logits, &targets, classes, scale);
        let mut max_error = 0.0f64;
        for (i, &analytic) in gradient.iter().enumerate() {
            let mut plus = logits.clone();
            plus[i] += step;
            let mut minus = logits.clone();
            minus[i] -= step;
            let numeric = scale * (total_loss(&plus, &targets, classes) - total_loss(&minus, &targets, classes))
                / (2.0 * f64::from(step));
            max_error = max_error.max((numeric - analytic).abs());
        }
        // Central differences are O(step^2) accurate: step^2 = 6e-5, times |f'''|/6 < 0.1.
        assert!(max_error < 1e-5, "max finite-difference error {max_error:e}");
    }

    /// Options of the finite-difference and known-value tests: every option alone and combined.
    fn option_cases(classes: usize) -> Vec<(&'static str, CrossEntropyOptions)> {
        let weight: Vec<f32> = (0..classes).map(|class| 0.25 + (class * 7 % 5) as f32 * 0.5).collect();
        let base = CrossEntropyOptions::default();
        vec![
            ("plain", base.clone()),
            (
                "weight",
                CrossEntropyOptions {
                    weight: Some(weight.clone()),
                    ..base.clone()
                },
            ),
            (
                "ignore",
                CrossEntropyOptions {
                    ignore_index: 1,
                    ..base.clone()
                },
            ),
            (
                "smoothing",
                CrossEntropyOptions {
                    label_smoothing: 0.2,
                    ..base.clone()
                },
            ),
            (
                "weight+ignore+smoothing",
                CrossEntropyOptions {
                    weight: Some(weight.clone()),
                    ignore_index: 1,
                    label_smoothing: 0.3,
                    ..base.clone()
                },
            ),
            (
                "z_loss",
                CrossEntropyOptions {
                    z_loss: 0.01,
                    ..base.clone()
                },
            ),
            (
                "softcap",
                CrossEntropyOptions {
                    softcap: Some(2.5),
                    ..base.clone()
                },
            ),
            (
                "z_loss+softcap",
                CrossEntropyOptions {
                    z_loss: 0.05,
                    softcap: Some(3.0),
                    ..base.clone()
                },
            ),
            (
                "logit_scale",
                CrossEntropyOptions {
                    logit_scale: -1.7,
                    ..base.clone()
                },
            ),
            (
                "everything",
                CrossEntropyOptions {
                    weight: Some(weight),
                    ignore_index: 2,
                    label_smoothing: 0.1,
                    z_loss: 0.02,
                    softcap: Some(4.0),
                    logit_scale: 0.6,
                    ..base
                },
            ),
        ]
    }

    /// Logits on a 2^-10 grid in [-4, 4], so that the finite-difference steps below are exact in f32.
    fn grid_logits(count: usize) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 37 + 11) % 23) as f32 * 0.35 - 3.9)
            .map(|x| (x * 1024.0).round() / 1024.0)
            .collect()
    }

    /// Soft targets: a few probability vectors (some exact zeros) in the logits' layout.
    fn soft_targets(shape: Shape) -> Vec<f32> {
        let mut probabilities = vec![0.0f32; shape.rows * shape.classes];
        for row in 0..shape.rows {
            let raw: Vec<f32> = (0..shape.classes)
                .map(|class| ((row * 5 + class * 3) % 4) as f32)
                .collect();
            let total: f32 = raw.iter().sum();
            for (class, value) in raw.iter().enumerate() {
                probabilities[shape.index(row, class)] = value / total;
            }
        }
        probabilities
    }

    /// `(4·D(h/2) − D(h)) / 3` of central differences `D`: the O(h²) error cancels.
    fn richardson_derivative(loss_at: impl Fn(f32) -> f64, step: f32) -> f64 {
        let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
        (4.0 * central(step / 2.0) - central(step)) / 3.0
    }

    /// Largest |analytic − numeric| gradient entry of the reference on one case.
    fn finite_difference_error(
        logits: &[f32],
        targets: Targets<'_>,
        shape: Shape,
        options: &CrossEntropyOptions,
    ) -> f64 {
        let analytic = cross_entropy_f64(logits, targets, shape, options).gradient;
        let step = 1.0f32 / 64.0;
        let mut worst = 0.0f64;
        for (index, &expected) in analytic.iter().enumerate() {
            let loss_at = |offset: f32| {
                let mut moved = logits.to_vec();
                moved[index] += offset;
                cross_entropy_f64(&moved, targets, shape, options).loss
            };
            worst = worst.max((richardson_derivative(loss_at, step) - expected).abs());
        }
        worst
    }

    #[test]
    fn option_gradients_match_finite_differences() {
        let mut worst = 0.0f64;
        for shape in [Shape::new(5, 4), Shape::nd(2, 4, &[3]).expect("shape")] {
            let logits = grid_logits(shape.rows * shape.classes);
            // Rows 1 and 3 (and, with ignore_index 1 or 2, more) are ignored by some options.
            let classes: Vec<i64> = (0..shape.rows).map(|row| [0, 1, 3, 2, 1, 0][row % 6]).collect();
            let probabilities = soft_targets(shape);
            for (name, options) in option_cases(shape.classes) {
                for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                    let options = CrossEntropyOptions {
                        reduction,
                        ..options.clone()
                    };
                    for targets in [Targets::I64(&classes), Targets::Probabilities(&probabilities)] {
                        let error = finite_difference_error(&logits, targets, shape, &options);
                        let label = format!("{name} {reduction} {shape:?} soft={}", targets.is_probabilities());
                        assert!(error < 1e-8, "{label}: finite-difference error {error:e}");
                        worst = worst.max(error);
                    }
                }
            }
        }
        println!("reference gradient vs finite differences, worst: {worst:e}");
    }

    #[test]
    fn options_known_values() {
        let shape = Shape::new(2, 2);
        let logits = [3.0f32, 3.0, 0.0, 0.0];
        // Both rows: p = [1/2, 1/2], lse = 3 + ln 2 and ln 2.
        let options = CrossEntropyOptions {
            ignore_index: 0,
            ..CrossEntropyOptions::default()
        };
        let result = cross_entropy_f64(&logits, Targets::I64(&[0, 1]), shape, &options);
        let ln2 = std::f64::consts::LN_2;
        assert_eq!(result.row_losses, vec![0.0, ln2]);
        assert_eq!(result.loss, ln2);
        assert_eq!(result.gradient, vec![0.0, 0.0, 0.5, -0.5]);
        assert_eq!(result.row_argmax, vec![0, 0]);
        assert!((result.row_lse[0] - (3.0 + ln2)).abs() < 1e-15);

        // Every row ignored: mean NaN, zero gradient; sum 0.
        let all_ignored = cross_entropy_f64(&logits, Targets::I64(&[0, 0]), shape, &options);
        assert!(all_ignored.loss.is_nan() && all_ignored.z_loss.is_nan());
        assert!(all_ignored.gradient.iter().all(|&g| g == 0.0));
        let sum = CrossEntropyOptions {
            reduction: Reduction::Sum,
            ..options.clone()
        };
        assert_eq!(cross_entropy_f64(&logits, Targets::I64(&[0, 0]), shape, &sum).loss, 0.0);

        // Weighted mean divides by Σ w_y; smoothing 1 is the uniform soft target.
        let weighted = CrossEntropyOptions {
            weight: Some(vec![2.0, 6.0]),
            ..CrossEntropyOptions::default()
        };
        let result = cross_entropy_f64(&[0.0, 0.0, 0.0, 0.0], Targets::I64(&[0, 1]), shape, &weighted);
        assert!((result.loss - ln2).abs() < 1e-15);
        let uniform = CrossEntropyOptions {
            label_smoothing: 1.0,
            ..CrossEntropyOptions::default()
        };
        let hard = cross_entropy_f64(&logits, Targets::I64(&[0, 1]), shape, &uniform);
        let soft = cross_entropy_f64(&logits, Targets::Probabilities(&[1.0, 0.0, 0.0, 1.0]), shape, &uniform);
        assert_eq!(hard.row_losses, soft.row_losses);

        // Softcap turns +inf into t, so the row stays finite; NaN still propagates.
        let capped = CrossEntropyOptions {
            softcap: Some(5.0),
            ..CrossEntropyOptions::default()
        };
        let result = cross_entropy_f64(
            &[f32::INFINITY, 0.0, f32::NAN, 1.0],
            Targets::I64(&[0, 1]),
            shape,
            &capped,
        );
        assert!(result.row_losses[0].is_finite() && result.row_losses[1].is_nan());
        assert_eq!(result.row_argmax, vec![0, 1]);
        let plain = CrossEntropyOptions::default();
        let result = cross_entropy_f64(&[f32::INFINITY, 0.0, 1.0, 2.0], Targets::I64(&[1, 1]), shape, &plain);
        assert!(result.row_losses[0].is_nan() && result.row_losses[1].is_finite());

        // A negative logit scale makes the smallest logit the argmax.
        let negative = CrossEntropyOptions {
            logit_scale: -1.0,
            ..CrossEntropyOptions::default()
        };
        let result = cross_entropy_f64(&[1.0, 2.0, 5.0, 4.0], Targets::I64(&[0, 0]), shape, &negative);
        assert_eq!(result.row_argmax, vec![0, 1]);
    }

    #[test]
    fn options_reduce_to_the_plain_reference() {
        let (rows, classes) = (4, 6);
        let logits = grid_logits(rows * classes);
        let targets = [5u32, 0, 2, 3];
        let result = cross_entropy_f64(
            &logits,
            Targets::U32(&targets),
            Shape::new(rows, classes),
            &CrossEntropyOptions::default(),
        );
        assert_eq!(result.row_losses, row_losses_f64(&logits, &targets, classes));
        let gradient = gradient_f64(&logits, &targets, classes, 1.0 / rows as f64);
        let worst = result
            .gradient
            .iter()
            .zip(&gradient)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-17, "{worst:e}");
    }

    /// The PyTorch fixtures of `tests/fixtures/pytorch`.
    /// The PyTorch fixtures of `tests/fixtures/pytorch` (also used by the tests of `general`).
    pub(crate) mod pytorch {
        use std::path::{Path, PathBuf};

        use serde_json::Value;

        use super::super::*;

        fn fixtures() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch")
        }

        fn read_npy<T: npyz::Deserialize>(case: &Path, file: &str) -> Vec<T> {
            let path = case.join(file);
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            npyz::NpyFile::new(&bytes[..])
                .and_then(|npy| npy.into_vec::<T>())
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        }

        fn shape_of(case: &Value) -> Shape {
            let dims: Vec<usize> = case["logits_shape"]
                .as_array()
                .expect("logits_shape")
                .iter()
                .map(|dim| dim.as_u64().expect("dimension") as usize)
                .collect();
            if dims.len() == 2 {
                Shape::new(dims[0], dims[1])
            } else {
                Shape::nd(dims[0], dims[1], &dims[2..]).expect("shape")
            }
        }

        fn options_of(case: &Value, folder: &Path) -> CrossEntropyOptions {
            let as_f32 = |key: &str| case[key].as_f64().map(|value| value as f32);
            CrossEntropyOptions {
                reduction: case["reduction"]
                    .as_str()
                    .expect("reduction")
                    .parse()
                    .expect("reduction name"),
                ignore_index: case["ignore_index"].as_i64().expect("ignore_index"),
                weight: case["has_weight"]
                    .as_bool()
                    .expect("has_weight")
                    .then(|| read_npy(folder, "weight.npy")),
                label_smoothing: as_f32("label_smoothing").expect("label_smoothing"),
                z_loss: as_f32("z_loss_scale").expect("z_loss_scale"),
                softcap: as_f32("softcap"),
                logit_scale: 1.0,
            }
        }

        /// One `cross_entropy` case of the fixtures, loaded.
        pub(crate) struct Fixture {
            /// The case's name.
            pub(crate) name: String,
            pub(crate) shape: Shape,
            pub(crate) options: CrossEntropyOptions,
            pub(crate) logits: Vec<f32>,
            /// Class indices (empty for soft targets).
            pub(crate) classes: Vec<i64>,
            /// Soft targets (empty for class indices).
            pub(crate) probabilities: Vec<f32>,
            /// PyTorch's loss: one value, or one per row for `none`.
            pub(crate) loss: Vec<f64>,
            /// The z-loss part alone, reduced like `loss`, when the case has one.
            pub(crate) z_loss: Option<Vec<f64>>,
            /// d loss / d logits (of the sum for `none`).
            pub(crate) gradient: Option<Vec<f64>>,
            /// PyTorch's loss is NaN (a mean over no rows).
            pub(crate) expect_nan: bool,
        }

        impl Fixture {
            pub(crate) fn targets(&self) -> Targets<'_> {
                if self.classes.is_empty() {
                    Targets::Probabilities(&self.probabilities)
                } else {
                    Targets::I64(&self.classes)
                }
            }
        }

        /// Every case of `family == "cross_entropy"`.
        pub(crate) fn cross_entropy_fixtures() -> Vec<Fixture> {
            let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
            let manifest: Value = serde_json::from_str(&text).expect("manifest JSON");
            let cases = manifest["cases"].as_array().expect("cases").iter();
            cases
                .filter(|case| case["family"] == "cross_entropy")
                .map(|case| {
                    let name = case["name"].as_str().expect("name").to_string();
                    let folder = fixtures().join(&name);
                    let soft = case["soft_targets"] == true;
                    let files = &case["files"];
                    Fixture {
                        shape: shape_of(case),
                        options: options_of(case, &folder),
                        logits: read_npy(&folder, "logits.npy"),
                        classes: if soft {
                            Vec::new()
                        } else {
                            read_npy(&folder, "targets.npy")
                        },
                        probabilities: if soft {
                            read_npy(&folder, "targets.npy")
                        } else {
                            Vec::new()
                        },
                        loss: read_npy(&folder, "loss.npy"),
                        z_loss: files.get("z_term").map(|_| read_npy(&folder, "z_term.npy")),
                        gradient: (case["has_grad"] == true).then(|| read_npy(&folder, "grad.npy")),
                        expect_nan: case["expect_nan"] == true,
                        name,
                    }
                })
                .collect()
        }

        /// Largest errors seen, for the report.
        #[derive(Debug, Default)]
        struct Worst {
            loss_relative: f64,
            loss_relative_at: String,
            loss_absolute: f64,
            gradient_absolute: f64,
        }

        impl Worst {
            fn loss(&mut self, label: &str, actual: f64, expected: f64) {
                let error = (actual - expected).abs();
                assert!(
                    error <= 1e-9 * expected.abs() + 1e-13,
                    "{label}: {actual:e} vs PyTorch {expected:e}"
                );
                self.loss_absolute = self.loss_absolute.max(error);
                if expected.abs() > 1e-6 && error / expected.abs() > self.loss_relative {
                    self.loss_relative = error / expected.abs();
                    self.loss_relative_at = label.to_string();
                }
            }

            fn losses(&mut self, label: &str, actual: &[f64], expected: &[f64]) {
                assert_eq!(actual.len(), expected.len(), "{label}");
                for (row, (&actual, &expected)) in actual.iter().zip(expected).enumerate() {
                    self.loss(&format!("{label} row {row}"), actual, expected);
                }
            }
        }

        #[test]
        fn reference_matches_pytorch_fixtures() {
            let fixtures = cross_entropy_fixtures();
            assert!(fixtures.len() >= 80, "only {} cross_entropy cases", fixtures.len());
            let mut worst = Worst::default();
            for fixture in &fixtures {
                let name = &fixture.name;
                let result = cross_entropy_f64(&fixture.logits, fixture.targets(), fixture.shape, &fixture.options);
                if fixture.options.reduction == Reduction::None {
                    worst.losses(name, &result.row_losses, &fixture.loss);
                    if let Some(expected_z) = &fixture.z_loss {
                        worst.losses(&format!("{name} z"), &result.row_z, expected_z);
                    }
                } else if fixture.expect_nan {
                    assert!(
                        result.loss.is_nan() && fixture.loss[0].is_nan(),
                        "{name}: {}",
                        result.loss
                    );
                } else {
                    worst.loss(name, result.loss, fixture.loss[0]);
                    if let Some(expected_z) = &fixture.z_loss {
                        worst.loss(&format!("{name} z"), result.z_loss, expected_z[0]);
                    }
                }
                if let Some(expected) = &fixture.gradient {
                    assert_eq!(expected.len(), result.gradient.len(), "{name}");
                    for (index, (&actual, &expected)) in result.gradient.iter().zip(expected).enumerate() {
                        let error = (actual - expected).abs();
                        assert!(
                            error <= 1e-12,
                            "{name} gradient[{index}]: {actual:e} vs PyTorch {expected:e}"
                        );
                        worst.gradient_absolute = worst.gradient_absolute.max(error);
                    }
                }
            }
            println!("reference vs PyTorch, worst: {worst:?}");
        }
    }
}
