//! Plain f64 reference implementation of cross-entropy, used by the tests as the
//! independent truth. Simple, obviously-correct code with no tricks beyond the
//! usual max subtraction and an `ln_1p` for confident rows.
//!
//! Preconditions shared by every function here (checked with `debug_assert!`):
//! `classes > 0` unless there are no rows (in release builds `classes == 0`
//! gives NaN losses and an empty gradient), `logits.len() == targets.len() *
//! classes` (row-major, one row per target) and every target is `< classes`.

/// The pieces of `logsumexp` for one row, all in f64.
struct RowSoftmax {
    /// Largest logit of the row (NaN logits are ignored here but poison `rest`).
    row_max: f64,
    /// Number of logits equal to `row_max`; each contributes exactly 1 to the sum.
    count: usize,
    /// Sum of `exp(x_c - row_max)` over the logits that are not equal to `row_max`.
    rest: f64,
}

impl RowSoftmax {
    fn new(row: &[f32]) -> Self {
        let row_max = row.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
        let mut count = 0;
        let mut rest = 0.0;
        for &x in row {
            let x = f64::from(x);
            if x == row_max && row_max.is_finite() {
                count += 1;
            } else {
                // A NaN logit lands here (NaN != row_max) and makes `rest` NaN. A
                // non-finite row_max (a +inf logit, or every logit -inf) lands here
                // too and gives exp(inf - inf) = NaN, exactly as in PyTorch.
                rest += (x - row_max).exp();
            }
        }
        Self { row_max, count, rest }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
