//! The fast f32 CPU path: the production CPU backend and the benchmark baseline.
//!
//! Each row is handled in three passes over data that stays in cache:
//!
//! 1. `row_max`, folded over 16 lanes so it vectorises;
//! 2. `e_c = exp(x_c - row_max)` with the vectorisable [`exp_f32`], summed
//!    carefully (see [`SumExp`]) and, when a gradient is wanted, stored into the
//!    gradient row so that pass 3 rereads it instead of recomputing it;
//! 3. the gradient row is scaled in place, `g_c = e_c * scale / sum_exp`, and the
//!    target column gets its `- scale`.
//!
//! Rows are split across threads with rayon, in tasks of at least
//! [`MIN_TASK_ELEMENTS`] logits. On x86 an AVX2+FMA build of the row loop is
//! chosen at runtime when the CPU supports it.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::exp::exp_f32;

/// Width of the explicit accumulator lanes (two AVX registers of f32).
const LANES: usize = 16;

/// Each rayon task handles at least this many logits (whole rows), so small rows
/// do not drown in task overhead. Inputs no larger than this run on the calling
/// thread.
const MIN_TASK_ELEMENTS: usize = 1 << 16;

/// The fused per-row pass.
///
/// For each row `r` (one per target): `row_losses[r] = (row_max - x[target]) +
/// ln(sum_exp)` with `sum_exp = sum_c exp(x_c - row_max)`, and if `grad` is
/// `Some((g, scale))`: `g[r*C + c] = (exp(x_c - row_max) / sum_exp - [c ==
/// target]) * scale`, i.e. the gradient of `scale * sum_r row_losses[r]`.
///
/// NaN logits give a NaN loss and a NaN gradient row; so does a `+inf` logit
/// (as in PyTorch, where `exp(inf - inf)` is NaN). Rows are split across
/// threads (rayon).
///
/// Preconditions (checked with `debug_assert!`; validated by the caller):
/// `classes > 0` (with `classes == 0` every loss is set to NaN),
/// `logits.len() == targets.len() * classes`, `row_losses.len() ==
/// targets.len()`, `g.len() == logits.len()`, and every target `< classes`.
pub fn fused_rows(
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    grad: Option<(&mut [f32], f32)>,
    row_losses: &mut [f32],
) {
    debug_assert!(classes > 0, "classes must be positive");
    debug_assert_eq!(logits.len(), targets.len() * classes, "logits must be rows x classes");
    debug_assert_eq!(row_losses.len(), targets.len(), "one loss per row");
    debug_assert!(
        targets.iter().all(|&t| (t as usize) < classes),
        "every target must be < classes"
    );
    if classes == 0 {
        row_losses.fill(f32::NAN);
        return;
    }
    let kernel = Kernel::detected();
    if logits.len() <= MIN_TASK_ELEMENTS {
        kernel.rows(logits, targets, classes, grad, row_losses);
        return;
    }
    let rows_per_task = MIN_TASK_ELEMENTS.div_ceil(classes);
    let elements_per_task = rows_per_task * classes;
    let row_chunks = logits
        .par_chunks(elements_per_task)
        .zip(targets.par_chunks(rows_per_task))
        .zip(row_losses.par_chunks_mut(rows_per_task));
    match grad {
        Some((gradient, scale)) => {
            debug_assert_eq!(gradient.len(), logits.len(), "gradient must be rows x classes");
            row_chunks.zip(gradient.par_chunks_mut(elements_per_task)).for_each(
                |(((logits, targets), losses), gradient)| {
                    kernel.rows(logits, targets, classes, Some((gradient, scale)), losses);
                },
            );
        }
        None => row_chunks.for_each(|((logits, targets), losses)| {
            kernel.rows(logits, targets, classes, None, losses);
        }),
    }
}

/// Sum of row losses in f64 (sequential, so deterministic).
pub fn sum_f64(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum()
}

/// Which build of the row loop to run, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// The baseline build for the compilation target.
    Portable,
    /// The same code compiled with AVX2 and FMA enabled.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2Fma,
}

impl Kernel {
    fn detected() -> Self {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(Self::detect)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    fn detect() -> Self {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Self::Avx2Fma
        } else {
            Self::Portable
        }
    }

    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    fn detect() -> Self {
        Self::Portable
    }

    /// Runs the fused pass over a block of whole rows with this build.
    fn rows(
        self,
        logits: &[f32],
        targets: &[u32],
        classes: usize,
        grad: Option<(&mut [f32], f32)>,
        row_losses: &mut [f32],
    ) {
        match self {
            Self::Portable => rows_body(logits, targets, classes, grad, row_losses),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx2Fma` is only chosen when the CPU reports AVX2 and FMA.
            Self::Avx2Fma => unsafe { rows_avx2_fma(logits, targets, classes, grad, row_losses) },
        }
    }
}

/// [`rows_body`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_fma(
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    grad: Option<(&mut [f32], f32)>,
    row_losses: &mut [f32],
) {
    rows_body(logits, targets, classes, grad, row_losses);
}

/// The fused pass over a block of whole rows. `#[inline(always)]` (as is
/// everything it calls) so that it is compiled anew inside each target-feature
/// wrapper.
#[inline(always)]
fn rows_body(logits: &[f32], targets: &[u32], classes: usize, grad: Option<(&mut [f32], f32)>, row_losses: &mut [f32]) {
    let rows = logits.chunks_exact(classes).zip(targets).zip(row_losses);
    match grad {
        Some((gradient, scale)) => {
            for (((row, &target), loss), gradient_row) in rows.zip(gradient.chunks_exact_mut(classes)) {
                *loss = row_loss_and_gradient(row, target as usize, gradient_row, scale);
            }
        }
        None => {
            for ((row, &target), loss) in rows {
                *loss = row_loss(row, target as usize);
            }
        }
    }
}

/// Loss of one row, without a gradient (pass 2 writes nothing).
#[inline(always)]
fn row_loss(row: &[f32], target: usize) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        return f32::NAN;
    }
    let sum_exp = SumExp::of_row(row, row_max);
    loss_from_parts(row_max, row[target], &sum_exp)
}

/// Loss of one row, and its gradient (scaled by `scale`) written into `gradient_row`.
#[inline(always)]
fn row_loss_and_gradient(row: &[f32], target: usize, gradient_row: &mut [f32], scale: f32) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        // A +inf logit (inf - inf in exp) or a row of -inf/NaN only: all NaN.
        gradient_row.fill(f32::NAN);
        return f32::NAN;
    }
    // Pass 2: gradient_row[c] = e_c = exp(x_c - row_max), and their sum.
    let sum_exp = SumExp::of_row_storing_exp(row, row_max, gradient_row);
    let loss = loss_from_parts(row_max, row[target], &sum_exp);

    // Pass 3. loss = lse(x) - x_t with lse(x) = row_max + ln(sum_exp), so
    //   d loss / d x_c = exp(x_c - row_max) / sum_exp - [c == t]
    //                  = e_c / sum_exp - [c == t],
    // and the gradient of scale * loss is scale times that.
    let scale = f64::from(scale);
    let sum = sum_exp.total();
    let target_exp = f64::from(gradient_row[target]);
    let probability_scale = (scale / sum) as f32;
    for g in gradient_row.iter_mut() {
        *g *= probability_scale;
    }
    // At the target, e_t / sum - 1 = (e_t - sum) / sum, with e_t - sum computed as
    // (e_t - count) - rest: exact cancellation when the target is the single max,
    // so confident rows keep the relative precision of a tiny gradient.
    let target_minus_sum = (target_exp - sum_exp.count as f64) - sum_exp.rest;
    gradient_row[target] = (scale * (target_minus_sum / sum)) as f32;
    loss
}

/// `(row_max - x_target) + ln(sum_exp)`, in that order so that a large common
/// offset of the logits cancels exactly before the logarithm is added.
#[inline(always)]
fn loss_from_parts(row_max: f32, target_logit: f32, sum_exp: &SumExp) -> f32 {
    // Both are f32, so their difference is exact in f64.
    let margin = f64::from(row_max) - f64::from(target_logit);
    (margin + sum_exp.ln()) as f32
}

/// Pass 1: the largest logit of the row, folded over [`LANES`] lanes.
///
/// NaN logits are ignored here (they poison the sum in pass 2 instead).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, x);
        }
    }
    let lanes_max = lanes.into_iter().fold(f32::NEG_INFINITY, larger);
    tail.iter().fold(lanes_max, |acc, &x| larger(acc, x))
}

/// `max(acc, x)` that keeps `acc` when `x` is NaN; a plain select, so it maps
/// onto one vector max instruction.
#[inline(always)]
fn larger(acc: f32, x: f32) -> f32 {
    if x > acc { x } else { acc }
}

/// The softmax denominator `sum_c exp(x_c - row_max)`, kept split for precision.
///
/// Logits equal to `row_max` contribute exactly 1 each and are only counted;
/// the others are summed in f64 lanes. Then `ln(count + rest)` is `ln_1p(rest)`
/// when `count == 1`, which keeps full relative precision for confident rows
/// (`rest` ~1e-10). A NaN logit is never equal to `row_max`, so it makes `rest`
/// (and everything computed from it) NaN.
struct SumExp {
    /// Number of logits equal to `row_max`.
    count: usize,
    /// Sum of `exp(x_c - row_max)` over the other logits.
    rest: f64,
}

/// Partial sums of [`SumExp`]: `rest` in per-lane f64 partials, so the
/// accumulation vectorises without reassociating any single floating-point sum.
struct SumExpLanes {
    count: usize,
    rest: [f64; LANES],
}

impl SumExpLanes {
    #[inline(always)]
    fn new() -> Self {
        Self {
            count: 0,
            rest: [0.0; LANES],
        }
    }

    /// Adds a block of logits `xs` and their `exps[c] = exp(xs[c] - row_max)`.
    #[inline(always)]
    fn add_block(&mut self, xs: &[f32], row_max: f32, exps: &[f32]) {
        // Counted in its own (integer, so freely vectorised) loop over L1 data.
        self.count += xs.iter().filter(|&&x| x == row_max).count();
        let x_chunks = xs.chunks_exact(LANES);
        let e_chunks = exps.chunks_exact(LANES);
        let (x_tail, e_tail) = (x_chunks.remainder(), e_chunks.remainder());
        for (x_chunk, e_chunk) in x_chunks.zip(e_chunks) {
            for ((rest, &x), &e) in self.rest.iter_mut().zip(x_chunk).zip(e_chunk) {
                *rest += rest_term(x, row_max, e);
            }
        }
        for ((rest, &x), &e) in self.rest.iter_mut().zip(x_tail).zip(e_tail) {
            *rest += rest_term(x, row_max, e);
        }
    }

    /// Folds the lanes into one [`SumExp`].
    #[inline(always)]
    fn finish(self) -> SumExp {
        SumExp {
            count: self.count,
            rest: self.rest.iter().sum(),
        }
    }
}

/// The contribution of logit `x` (with `exp_x = exp(x - row_max)`) to
/// [`SumExp::rest`]: none for a maximal logit (it is counted instead).
#[inline(always)]
fn rest_term(x: f32, row_max: f32, exp_x: f32) -> f64 {
    if x == row_max { 0.0 } else { f64::from(exp_x) }
}

/// Logits per pass-2 block: the exponentials of a block are computed in one
/// elementwise loop (which vectorises at full width), then summed from L1.
const BLOCK: usize = 256;

/// `exps[c] = exp(xs[c] - row_max)`.
#[inline(always)]
fn exp_shifted(xs: &[f32], row_max: f32, exps: &mut [f32]) {
    for (e, &x) in exps.iter_mut().zip(xs) {
        *e = exp_f32(x - row_max);
    }
}

impl SumExp {
    /// Pass 2 for a loss-only call: sums `exp(x_c - row_max)`; the exponentials
    /// only pass through a block-sized stack buffer.
    #[inline(always)]
    fn of_row(row: &[f32], row_max: f32) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut buffer = [0.0f32; BLOCK];
        for xs in row.chunks(BLOCK) {
            let exps = &mut buffer[..xs.len()];
            exp_shifted(xs, row_max, exps);
            lanes.add_block(xs, row_max, exps);
        }
        lanes.finish()
    }

    /// Pass 2 with a gradient: also stores `e_c = exp(x_c - row_max)` into
    /// `exp_out[c]`, so that pass 3 rereads it from cache.
    #[inline(always)]
    fn of_row_storing_exp(row: &[f32], row_max: f32, exp_out: &mut [f32]) -> Self {
        let mut lanes = SumExpLanes::new();
        for (xs, exps) in row.chunks(BLOCK).zip(exp_out.chunks_mut(BLOCK)) {
            exp_shifted(xs, row_max, exps);
            lanes.add_block(xs, row_max, exps);
        }
        lanes.finish()
    }

    /// `count + rest`.
    #[inline(always)]
    fn total(&self) -> f64 {
        self.count as f64 + self.rest
    }

    /// `ln(count + rest)`, as `ln_1p(rest)` when `count == 1`.
    #[inline(always)]
    fn ln(&self) -> f64 {
        if self.count == 1 {
            self.rest.ln_1p()
        } else {
            self.total().ln()
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::cpu::reference::{gradient_f64, row_losses_f64};

    const ROWS: [usize; 3] = [1, 3, 64];
    const CLASSES: [usize; 8] = [1, 2, 7, 255, 256, 257, 1000, 32000];

    /// The kinds of logits every shape is tested with.
    #[derive(Clone, Copy, Debug)]
    enum Logits {
        /// Standard normal.
        Normal,
        /// Standard normal times 1000 (most exponentials underflow).
        Wide,
        /// Standard normal plus 1e4 (tests the offset cancellation).
        Offset,
        /// Every logit of a row equal (per-row value random).
        AllEqual,
        /// Target logit 0, the others about -23: loss ~ (C - 1) * 1e-10.
        Confident,
    }

    const KINDS: [Logits; 5] = [
        Logits::Normal,
        Logits::Wide,
        Logits::Offset,
        Logits::AllEqual,
        Logits::Confident,
    ];

    /// A standard normal sample (Box–Muller).
    fn normal(rng: &mut StdRng) -> f32 {
        let u: f64 = 1.0 - rng.random::<f64>();
        let v: f64 = rng.random();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    fn make_case(rng: &mut StdRng, rows: usize, classes: usize, kind: Logits) -> (Vec<f32>, Vec<u32>) {
        let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes as u32)).collect();
        let mut logits = Vec::with_capacity(rows * classes);
        for &target in &targets {
            let row_value = normal(rng);
            for c in 0..classes {
                logits.push(match kind {
                    Logits::Normal => normal(rng),
                    Logits::Wide => 1000.0 * normal(rng),
                    Logits::Offset => 1e4 + normal(rng),
                    Logits::AllEqual => row_value,
                    Logits::Confident if c == target as usize => 0.0,
                    Logits::Confident => -23.0 + 0.1 * normal(rng),
                });
            }
        }
        (logits, targets)
    }

    /// Worst errors seen, for the report printed by `--nocapture`.
    #[derive(Default, Debug)]
    struct Worst {
        /// Relative loss error where the reference loss exceeds 1e-20.
        loss_relative: f64,
        /// Absolute loss error where the reference loss is at most 1e-20.
        tiny_loss_absolute: f64,
        gradient_absolute_over_scale: f64,
        gradient_row_sum_over_scale: f64,
    }

    fn check_case(logits: &[f32], targets: &[u32], classes: usize, scale: f32, worst: &mut Worst, label: &str) {
        let rows = targets.len();
        let expected_losses = row_losses_f64(logits, targets, classes);
        let expected_gradient = gradient_f64(logits, targets, classes, f64::from(scale));

        let mut losses_only = vec![f32::NAN; rows];
        fused_rows(logits, targets, classes, None, &mut losses_only);
        let mut losses = vec![f32::NAN; rows];
        let mut gradient = vec![f32::NAN; rows * classes];
        fused_rows(logits, targets, classes, Some((&mut gradient, scale)), &mut losses);

        assert_eq!(
            losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            losses_only.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            "{label}: loss-only and fused losses differ"
        );
        for (r, (&loss, &expected)) in losses.iter().zip(&expected_losses).enumerate() {
            let error = (f64::from(loss) - expected).abs();
            assert!(
                error <= 1e-5 * expected.abs() + 1e-30,
                "{label} row {r}: loss {loss:e}, expected {expected:e}"
            );
            if expected.abs() > 1e-20 {
                worst.loss_relative = worst.loss_relative.max(error / expected.abs());
            } else {
                worst.tiny_loss_absolute = worst.tiny_loss_absolute.max(error);
            }
        }
        let scale = f64::from(scale);
        for (r, (row, expected_row)) in gradient
            .chunks_exact(classes)
            .zip(expected_gradient.chunks_exact(classes))
            .enumerate()
        {
            let mut row_sum = 0.0;
            for (c, (&g, &expected)) in row.iter().zip(expected_row).enumerate() {
                let error = (f64::from(g) - expected).abs();
                assert!(
                    error <= 1e-6 * scale,
                    "{label} row {r} class {c}: gradient {g:e}, expected {expected:e}"
                );
                worst.gradient_absolute_over_scale = worst.gradient_absolute_over_scale.max(error / scale);
                row_sum += f64::from(g);
            }
            assert!(
                row_sum.abs() <= 1e-5 * scale,
                "{label} row {r}: gradient sums to {row_sum:e}"
            );
            worst.gradient_row_sum_over_scale = worst.gradient_row_sum_over_scale.max(row_sum.abs() / scale);
        }
    }

    #[test]
    fn matches_reference_over_shapes_and_kinds() {
        let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
        let mut worst = Worst::default();
        for &classes in &CLASSES {
            for &rows in &ROWS {
                for kind in KINDS {
                    let (logits, targets) = make_case(&mut rng, rows, classes, kind);
                    let scale = if rows == 3 { 0.25 } else { 1.0 / rows as f32 };
                    let label = format!("{rows}x{classes} {kind:?}");
                    check_case(&logits, &targets, classes, scale, &mut worst, &label);
                }
            }
        }
        println!("worst errors: {worst:?}");
    }

    #[test]
    fn confident_rows_keep_relative_precision() {
        // Target is the single max, the others exactly 23 lower: loss = ln(1 + (C-1) e^-23).
        for classes in [2usize, 7, 1000] {
            let mut logits = vec![-23.0f32; classes];
            logits[classes / 2] = 0.0;
            let targets = [(classes / 2) as u32];
            let mut losses = [0.0f32];
            let mut gradient = vec![0.0f32; classes];
            fused_rows(&logits, &targets, classes, Some((&mut gradient, 1.0)), &mut losses);
            let expected = ((classes - 1) as f64 * (-23.0f64).exp()).ln_1p();
            let error = (f64::from(losses[0]) - expected).abs() / expected;
            assert!(error <= 1e-5, "C={classes}: loss {:e} vs {expected:e}", losses[0]);
            // The target's gradient is -(1 - p_t) ~ -expected: also relatively precise.
            let target_gradient = f64::from(gradient[classes / 2]);
            let expected_target = -(1.0 - 1.0 / (1.0 + (classes - 1) as f64 * (-23.0f64).exp()));
            assert!((target_gradient - expected_target).abs() <= 1e-5 * expected_target.abs());
        }
    }

    #[test]
    fn nan_and_inf_propagate() {
        let classes = 37;
        let mut rng = StdRng::seed_from_u64(7);
        let (mut logits, targets) = make_case(&mut rng, 4, classes, Logits::Normal);
        logits[3] = f32::NAN; // row 0
        logits[classes + 20] = f32::INFINITY; // row 1
        logits[2 * classes..3 * classes].fill(f32::NEG_INFINITY); // row 2
        let mut losses = [0.0f32; 4];
        let mut gradient = vec![0.0f32; 4 * classes];
        fused_rows(&logits, &targets, classes, Some((&mut gradient, 1.0)), &mut losses);
        let expected = row_losses_f64(&logits, &targets, classes);
        for row in 0..3 {
            assert!(losses[row].is_nan(), "row {row}: loss {}", losses[row]);
            assert!(expected[row].is_nan(), "reference row {row}: {}", expected[row]);
            let gradient_row = &gradient[row * classes..(row + 1) * classes];
            assert!(gradient_row.iter().all(|g| g.is_nan()), "row {row}: gradient not NaN");
        }
        assert!(losses[3].is_finite());
        assert!(gradient[3 * classes..].iter().all(|g| g.is_finite()));

        // A NaN in the 16-lane body and one in the tail, loss only.
        let mut logits = vec![0.5f32; 2 * 40];
        logits[5] = f32::NAN;
        logits[40 + 38] = f32::NAN;
        let mut losses = [0.0f32; 2];
        fused_rows(&logits, &[0, 1], 40, None, &mut losses);
        assert!(losses[0].is_nan() && losses[1].is_nan());
    }

    #[test]
    fn multi_task_split_matches_single_row_calls() {
        // 40 rows of 4000 classes: several rayon tasks of 17 rows each.
        let (rows, classes) = (40, 4000);
        let mut rng = StdRng::seed_from_u64(11);
        let (logits, targets) = make_case(&mut rng, rows, classes, Logits::Normal);
        let mut losses = vec![0.0f32; rows];
        let mut gradient = vec![0.0f32; rows * classes];
        fused_rows(&logits, &targets, classes, Some((&mut gradient, 0.5)), &mut losses);
        for r in 0..rows {
            let row = &logits[r * classes..(r + 1) * classes];
            let mut loss = [0.0f32];
            let mut row_gradient = vec![0.0f32; classes];
            fused_rows(row, &targets[r..=r], classes, Some((&mut row_gradient, 0.5)), &mut loss);
            assert_eq!(loss[0].to_bits(), losses[r].to_bits());
            assert_eq!(row_gradient, gradient[r * classes..(r + 1) * classes]);
        }
    }

    #[test]
    fn empty_inputs_and_sum() {
        let mut losses: [f32; 0] = [];
        fused_rows(&[], &[], 10, Some((&mut [], 1.0)), &mut losses);
        fused_rows(&[], &[], 10, None, &mut losses);
        assert_eq!(sum_f64(&[]), 0.0);
        assert_eq!(sum_f64(&[1.5, 2.25, -0.75]), 3.0);
        // Summed in f64: 1 + 1e-8 (below half an f32 ulp of 1) is not lost.
        assert_eq!(sum_f64(&[1.0, 1e-8]), 1.0 + f64::from(1e-8f32));
    }
}
