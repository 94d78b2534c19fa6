//! The fast f32 CPU path: the production CPU backend and the benchmark baseline.
//!
//! Each row is handled in three passes, the last two over data in cache:
//!
//! 1. `row_max`, folded over 16 lanes so it vectorises;
//! 2. `e_c = exp(x_c - row_max)` with the vectorisable
//!    [`exp_f32`](crate::cpu::exp::exp_f32), in blocks of 256: each block's
//!    exponentials are computed in one full-width vector loop (stored into the
//!    gradient row when a gradient is wanted, so pass 3 rereads rather than
//!    recomputes them), then summed from L1. The sum is kept split as `count`
//!    (logits equal to `row_max`, whose exponential is exactly 1) plus `rest`
//!    (the others, in 16 f32 lanes per block of 256, then 16 f64 lanes), and `ln(sum)` is `ln_1p(rest)` when
//!    `count == 1`, so confident rows (loss ~1e-10) keep their relative
//!    precision. Meanwhile the next row is prefetched, so that its pass 1 reads
//!    from cache;
//! 3. the gradient row is scaled in place, `g_c = e_c * scale / sum_exp`, and the
//!    target column gets its `- scale`.
//!
//! Rows are split across threads with rayon, in tasks of at least 64K logits
//! (whole rows). On x86 an AVX-512 or AVX2+FMA build of the row loop is chosen
//! at runtime from what the CPU supports.

use crate::cpu::exp::exp_f32_no_overflow_with;
use crate::cpu::isa::{Kernel, x86_builds};
use crate::cpu::lanes::{BLOCK, LANES, add_rest_terms, add_widened, fold_lanes, fold_values, larger, prefetch};
use crate::cpu::math::ln_1p;
use crate::cpu::tasks;
use crate::types::HostLogits;
use crate::types::LogitsMut;

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
/// `classes > 0` unless there are no rows (in release builds, `classes == 0`
/// sets every loss to NaN),
/// `logits.len() == targets.len() * classes`, `row_losses.len() ==
/// targets.len()`, `g.len() == logits.len()`, and every target `< classes`.
#[cfg(test)]
pub(crate) fn fused_rows(
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    grad: Option<(&mut [f32], f32)>,
    row_losses: &mut [f32],
) {
    let (gradient, scale) = match grad {
        Some((gradient, scale)) => (Some(gradient), scale),
        None => (None, 1.0),
    };
    let logits = HostLogits::from_f32(logits, gradient);
    fused_rows_with(Kernel::detected(), logits, targets, classes, scale, row_losses);
}

/// [`fused_rows`] on logits of any element type, the gradient (times
/// `gradient_scale`) going where `logits` says: 16-bit rows and in-place
/// gradients are staged in f32 one task at a time (see [`tasks`]).
pub(crate) fn fused_rows_host(
    logits: HostLogits<'_>,
    targets: &[u32],
    classes: usize,
    gradient_scale: f32,
    row_losses: &mut [f32],
) {
    fused_rows_with(Kernel::detected(), logits, targets, classes, gradient_scale, row_losses);
}

/// [`fused_rows_host`] with the given build of the row loop.
fn fused_rows_with(
    kernel: Kernel,
    logits: HostLogits<'_>,
    targets: &[u32],
    classes: usize,
    gradient_scale: f32,
    row_losses: &mut [f32],
) {
    let length = logits.logits().len();
    debug_assert!(classes > 0 || targets.is_empty(), "classes must be positive");
    debug_assert_eq!(length, targets.len() * classes, "logits must be rows x classes");
    debug_assert_eq!(row_losses.len(), targets.len(), "one loss per row");
    debug_assert!(
        targets.iter().all(|&t| (t as usize) < classes),
        "every target must be < classes"
    );
    if let HostLogits::WithGradient(_, gradient) = &logits {
        debug_assert_eq!(gradient.len(), length, "gradient must be rows x classes");
    }
    if classes == 0 {
        row_losses.fill(f32::NAN);
        return;
    }
    let run_task = |task: HostLogits<'_>, targets: &[u32], losses: &mut [f32]| match task {
        // f32 in place needs no staged copy: the row loop keeps each block's logits aside itself.
        HostLogits::InPlace(LogitsMut::F32(logits)) => {
            kernel.rows_in_place(logits, targets, classes, gradient_scale, losses);
        }
        task => tasks::with_f32(task, |logits, gradient| {
            let grad = gradient.map(|gradient| (gradient, gradient_scale));
            kernel.rows(logits, targets, classes, grad, losses);
        }),
    };
    tasks::for_each_task(logits, classes, 1, row_losses, |task, first_row, losses| {
        run_task(task, &targets[first_row..first_row + losses.len()], losses);
    });
}

/// Sum of row losses in f64 (sequential, so deterministic).
pub(crate) fn sum_f64(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum()
}

x86_builds!(
    /// Runs the fused pass over a block of whole rows with this build, the
    /// gradient (times `scale`) overwriting the logits.
    Kernel::rows_in_place => rows_in_place_body(
        logits: &mut [f32],
        targets: &[u32],
        classes: usize,
        scale: f32,
        row_losses: &mut [f32],
    ) => rows_in_place_avx2_fma, rows_in_place_avx512
);

/// [`rows_body`] with the gradient written over the logits: the same operations
/// on the same values, so the same bits as a separate gradient.
#[inline(always)]
fn rows_in_place_body<const FUSED: bool, const VECTOR: usize>(
    logits: &mut [f32],
    targets: &[u32],
    classes: usize,
    scale: f32,
    row_losses: &mut [f32],
) {
    let mut remaining = logits;
    for (&target, loss) in targets.iter().zip(row_losses) {
        let (row, rest) = std::mem::take(&mut remaining).split_at_mut(classes);
        let next_row = &rest[..classes.min(rest.len())];
        *loss = row_loss_and_gradient_in_place::<FUSED, VECTOR>(row, next_row, target as usize, scale);
        remaining = rest;
    }
}

x86_builds!(
    /// Runs the fused pass over a block of whole rows with this build.
    Kernel::rows => rows_body(
        logits: &[f32],
        targets: &[u32],
        classes: usize,
        grad: Option<(&mut [f32], f32)>,
        row_losses: &mut [f32],
    ) => rows_avx2_fma, rows_avx512
);

/// The fused pass over a block of whole rows. `#[inline(always)]` (as is
/// everything it calls) so that it is compiled anew inside each target-feature
/// wrapper. `FUSED` selects fused multiply-adds in the exponential: only for
/// the FMA build (see [`crate::cpu::exp::mul_add`]).
#[inline(always)]
fn rows_body<const FUSED: bool, const VECTOR: usize>(
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    grad: Option<(&mut [f32], f32)>,
    row_losses: &mut [f32],
) {
    // Each row is paired with the next one (empty after the last), which pass 2
    // prefetches so that pass 1 of the next row reads from cache.
    let next_rows = logits.chunks_exact(classes).skip(1).chain(std::iter::once(&[][..]));
    let rows = logits.chunks_exact(classes).zip(next_rows).zip(targets).zip(row_losses);
    match grad {
        Some((gradient, scale)) => {
            for ((((row, next_row), &target), loss), gradient_row) in rows.zip(gradient.chunks_exact_mut(classes)) {
                *loss = row_loss_and_gradient::<FUSED, VECTOR>(row, next_row, target as usize, gradient_row, scale);
            }
        }
        None => {
            let mut exp_buffer = [0.0f32; BLOCK];
            for (((row, next_row), &target), loss) in rows {
                *loss = row_loss::<FUSED, VECTOR>(row, next_row, target as usize, &mut exp_buffer);
            }
        }
    }
}

/// Loss of one row, without a gradient (pass 2 writes only to `exp_buffer`).
#[inline(always)]
fn row_loss<const FUSED: bool, const VECTOR: usize>(
    row: &[f32],
    next_row: &[f32],
    target: usize,
    exp_buffer: &mut [f32; BLOCK],
) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        return f32::NAN;
    }
    let sum_exp = SumExp::of_row::<FUSED, VECTOR>(row, row_max, next_row, exp_buffer);
    loss_from_parts(row_max, row[target], &sum_exp)
}

/// Loss of one row, and its gradient (scaled by `scale`) written into `gradient_row`.
#[inline(always)]
fn row_loss_and_gradient<const FUSED: bool, const VECTOR: usize>(
    row: &[f32],
    next_row: &[f32],
    target: usize,
    gradient_row: &mut [f32],
    scale: f32,
) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        // A +inf logit (inf - inf in exp) or a row of -inf/NaN only: all NaN.
        gradient_row.fill(f32::NAN);
        return f32::NAN;
    }
    // Pass 2: gradient_row[c] = e_c = exp(x_c - row_max), and their sum.
    let sum_exp = SumExp::of_row_storing_exp::<FUSED, VECTOR>(row, row_max, gradient_row, next_row);
    let loss = loss_from_parts(row_max, row[target], &sum_exp);
    scale_into_gradient(gradient_row, target, &sum_exp, scale);
    loss
}

/// Loss of one row, its gradient (scaled by `scale`) written over it.
#[inline(always)]
fn row_loss_and_gradient_in_place<const FUSED: bool, const VECTOR: usize>(
    row: &mut [f32],
    next_row: &[f32],
    target: usize,
    scale: f32,
) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        row.fill(f32::NAN);
        return f32::NAN;
    }
    let target_logit = row[target];
    // Pass 2: row[c] = e_c = exp(x_c - row_max), and their sum.
    let sum_exp = SumExp::of_row_in_place::<FUSED, VECTOR>(row, row_max, next_row);
    let loss = loss_from_parts(row_max, target_logit, &sum_exp);
    scale_into_gradient(row, target, &sum_exp, scale);
    loss
}

/// Pass 3: turns `gradient_row[c] = e_c` into the gradient of `scale * loss`.
#[inline(always)]
fn scale_into_gradient(gradient_row: &mut [f32], target: usize, sum_exp: &SumExp, scale: f32) {
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
    fold_values(row, f32::NEG_INFINITY, larger)
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

    /// Adds a block of logits `xs`, their `exps[c] = exp(xs[c] - row_max)`, and
    /// the number of `xs[c] == row_max`.
    ///
    /// The block (at most [`BLOCK`] logits, so at most `BLOCK / LANES` = 16 terms
    /// a lane) is summed in f32 lanes first ([`add_rest_terms`], in the build's
    /// vector instructions), then added to the f64 lanes: the terms are
    /// positive, so the block's relative rounding error stays below 16 f32 ulps
    /// (1e-6) whatever the row length, without widening every term to f64.
    #[inline(always)]
    fn add_block<const VECTOR: usize>(&mut self, xs: &[f32], row_max: f32, exps: &[f32], maxima: usize) {
        debug_assert!(xs.len() <= BLOCK);
        self.count += maxima;
        let mut block = [0.0f32; LANES];
        add_rest_terms::<VECTOR>(&mut block, xs, row_max, exps);
        add_widened::<VECTOR>(&mut self.rest, &block);
    }

    /// Folds the lanes into one [`SumExp`].
    #[inline(always)]
    fn finish(self) -> SumExp {
        SumExp {
            count: self.count,
            rest: fold_lanes(self.rest, |a, b| a + b),
        }
    }
}

/// `exps[c] = exp(xs[c] - row_max)`; returns how many `xs[c] == row_max` (at
/// most [`BLOCK`] elements, so a `u32` count cannot overflow).
#[inline(always)]
fn exp_shifted<const FUSED: bool>(xs: &[f32], row_max: f32, exps: &mut [f32]) -> usize {
    debug_assert!(xs.len() <= BLOCK && exps.len() == xs.len());
    let mut maxima = 0u32;
    for (e, &x) in exps.iter_mut().zip(xs) {
        // x - row_max <= 0 (or NaN: row_max is finite here), so it cannot overflow.
        *e = exp_f32_no_overflow_with::<FUSED>(x - row_max);
        maxima += u32::from(x == row_max);
    }
    maxima as usize
}

impl SumExp {
    /// Pass 2 for a loss-only call: sums `exp(x_c - row_max)`; the exponentials
    /// only pass through the block-sized `buffer`.
    #[inline(always)]
    fn of_row<const FUSED: bool, const VECTOR: usize>(
        row: &[f32],
        row_max: f32,
        prefetch_row: &[f32],
        buffer: &mut [f32; BLOCK],
    ) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut prefetch_blocks = prefetch_row.chunks(BLOCK);
        for xs in row.chunks(BLOCK) {
            prefetch(prefetch_blocks.next().unwrap_or_default());
            let exps = &mut buffer[..xs.len()];
            let maxima = exp_shifted::<FUSED>(xs, row_max, exps);
            lanes.add_block::<VECTOR>(xs, row_max, exps, maxima);
        }
        lanes.finish()
    }

    /// Pass 2 with a gradient: also stores `e_c = exp(x_c - row_max)` into
    /// `exp_out[c]`, so that pass 3 rereads it from cache.
    #[inline(always)]
    fn of_row_storing_exp<const FUSED: bool, const VECTOR: usize>(
        row: &[f32],
        row_max: f32,
        exp_out: &mut [f32],
        prefetch_row: &[f32],
    ) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut prefetch_blocks = prefetch_row.chunks(BLOCK);
        for (xs, exps) in row.chunks(BLOCK).zip(exp_out.chunks_mut(BLOCK)) {
            prefetch(prefetch_blocks.next().unwrap_or_default());
            let maxima = exp_shifted::<FUSED>(xs, row_max, exps);
            lanes.add_block::<VECTOR>(xs, row_max, exps, maxima);
        }
        lanes.finish()
    }

    /// Pass 2 in place: `row[c]` becomes `e_c = exp(x_c - row_max)`; each
    /// block's logits are kept aside in an L1 buffer for the sum's mask.
    #[inline(always)]
    fn of_row_in_place<const FUSED: bool, const VECTOR: usize>(
        row: &mut [f32],
        row_max: f32,
        prefetch_row: &[f32],
    ) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut logits_buffer = [0.0f32; BLOCK];
        let mut prefetch_blocks = prefetch_row.chunks(BLOCK);
        for block in row.chunks_mut(BLOCK) {
            prefetch(prefetch_blocks.next().unwrap_or_default());
            let xs = &mut logits_buffer[..block.len()];
            xs.copy_from_slice(block);
            let maxima = exp_shifted::<FUSED>(xs, row_max, block);
            lanes.add_block::<VECTOR>(xs, row_max, block, maxima);
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
            ln_1p(self.rest)
        } else {
            self.total().ln()
        }
    }
}

#[cfg(test)]
mod tests;
