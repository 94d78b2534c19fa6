//! The fast f32 CPU path: the production CPU backend and the benchmark baseline.
//!
//! Each row is handled in three passes, the last two over data in cache:
//!
//! 1. `row_max`, folded over 16 lanes so it vectorises;
//! 2. `e_c = exp(x_c - row_max)` with the vectorisable
//!    [`exp_f32`](super::exp::exp_f32), in blocks of 256: each block's
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

use rayon::prelude::*;

use super::dispatch::{Kernel, x86_builds};

use super::exp::exp_f32_no_overflow_with;
use super::staging;
use crate::types::HostLogits;
use crate::types::LogitsMut;

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
/// gradients are staged in f32 one task at a time (see [`staging`]).
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
        task => staging::with_f32(task, |logits, gradient| {
            let grad = gradient.map(|gradient| (gradient, gradient_scale));
            kernel.rows(logits, targets, classes, grad, losses);
        }),
    };
    if length <= MIN_TASK_ELEMENTS {
        run_task(logits, targets, row_losses);
        return;
    }
    let rows_per_task = MIN_TASK_ELEMENTS.div_ceil(classes);
    staging::split(logits, rows_per_task * classes)
        .into_par_iter()
        .zip(targets.par_chunks(rows_per_task))
        .zip(row_losses.par_chunks_mut(rows_per_task))
        .for_each(|((task, targets), losses)| run_task(task, targets, losses));
}

/// Sum of row losses in f64 (sequential, so deterministic).
pub(crate) fn sum_f64(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum()
}

impl Kernel {
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
            Self::Portable => rows_body::<false>(logits, targets, classes, grad, row_losses),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx2Fma` is only chosen when the CPU reports AVX2 and FMA.
            Self::Avx2Fma => unsafe { rows_avx2_fma(logits, targets, classes, grad, row_losses) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx512` is only chosen when the CPU reports AVX-512 F/VL/DQ/BW, AVX2 and FMA.
            Self::Avx512 => unsafe { rows_avx512(logits, targets, classes, grad, row_losses) },
        }
    }
}

impl Kernel {
    /// Runs the fused pass over a block of whole rows with this build, the
    /// gradient (times `scale`) overwriting the logits.
    fn rows_in_place(self, logits: &mut [f32], targets: &[u32], classes: usize, scale: f32, row_losses: &mut [f32]) {
        match self {
            Self::Portable => rows_in_place_body::<false>(logits, targets, classes, scale, row_losses),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx2Fma` is only chosen when the CPU reports AVX2 and FMA.
            Self::Avx2Fma => unsafe { rows_in_place_avx2_fma(logits, targets, classes, scale, row_losses) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx512` is only chosen when the CPU reports AVX-512 F/VL/DQ/BW, AVX2 and FMA.
            Self::Avx512 => unsafe { rows_in_place_avx512(logits, targets, classes, scale, row_losses) },
        }
    }
}

x86_builds!(rows_in_place_body(
    logits: &mut [f32],
    targets: &[u32],
    classes: usize,
    scale: f32,
    row_losses: &mut [f32],
) => rows_in_place_avx2_fma, rows_in_place_avx512);

/// [`rows_body`] with the gradient written over the logits: the same operations
/// on the same values, so the same bits as a separate gradient.
#[inline(always)]
fn rows_in_place_body<const FUSED: bool>(
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
        *loss = row_loss_and_gradient_in_place::<FUSED>(row, next_row, target as usize, scale);
        remaining = rest;
    }
}

x86_builds!(rows_body(
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    grad: Option<(&mut [f32], f32)>,
    row_losses: &mut [f32],
) => rows_avx2_fma, rows_avx512);

/// The fused pass over a block of whole rows. `#[inline(always)]` (as is
/// everything it calls) so that it is compiled anew inside each target-feature
/// wrapper. `FUSED` selects fused multiply-adds in the exponential: only for
/// the FMA build (see [`super::exp::mul_add`]).
#[inline(always)]
fn rows_body<const FUSED: bool>(
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
                *loss = row_loss_and_gradient::<FUSED>(row, next_row, target as usize, gradient_row, scale);
            }
        }
        None => {
            let mut exp_buffer = [0.0f32; BLOCK];
            for (((row, next_row), &target), loss) in rows {
                *loss = row_loss::<FUSED>(row, next_row, target as usize, &mut exp_buffer);
            }
        }
    }
}

/// Loss of one row, without a gradient (pass 2 writes only to `exp_buffer`).
#[inline(always)]
fn row_loss<const FUSED: bool>(row: &[f32], next_row: &[f32], target: usize, exp_buffer: &mut [f32; BLOCK]) -> f32 {
    let row_max = row_max(row);
    if !row_max.is_finite() {
        return f32::NAN;
    }
    let sum_exp = SumExp::of_row::<FUSED>(row, row_max, next_row, exp_buffer);
    loss_from_parts(row_max, row[target], &sum_exp)
}

/// Loss of one row, and its gradient (scaled by `scale`) written into `gradient_row`.
#[inline(always)]
fn row_loss_and_gradient<const FUSED: bool>(
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
    let sum_exp = SumExp::of_row_storing_exp::<FUSED>(row, row_max, gradient_row, next_row);
    let loss = loss_from_parts(row_max, row[target], &sum_exp);
    scale_into_gradient(gradient_row, target, &sum_exp, scale);
    loss
}

/// Loss of one row, its gradient (scaled by `scale`) written over it.
#[inline(always)]
fn row_loss_and_gradient_in_place<const FUSED: bool>(
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
    let sum_exp = SumExp::of_row_in_place::<FUSED>(row, row_max, next_row);
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
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, x);
        }
    }
    tail.iter().fold(fold_lanes(lanes, larger), |acc, &x| larger(acc, x))
}

/// Combines the lanes pairwise (a tree of depth log2(LANES), not a serial chain
/// of LANES - 1 dependent operations, which matters for short rows).
#[inline(always)]
fn fold_lanes<T: Copy>(mut lanes: [T; LANES], combine: impl Fn(T, T) -> T) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] = combine(lanes[i], lanes[i + width]);
        }
    }
    lanes[0]
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

    /// Adds a block of logits `xs`, their `exps[c] = exp(xs[c] - row_max)`, and
    /// the number of `xs[c] == row_max`.
    ///
    /// The block (at most [`BLOCK`] logits, so at most `BLOCK / LANES` = 16 terms
    /// a lane) is summed in f32 lanes first, then added to the f64 lanes: the terms
    /// are positive, so the block's relative rounding error stays below 16 f32 ulps
    /// (1e-6) whatever the row length, without widening every term to f64. The
    /// lanes are fixed-size arrays (`as_chunks`), which LLVM vectorises at full
    /// width (with zip over `chunks_exact` it used 4-wide vectors in the AVX-512 build).
    #[inline(always)]
    fn add_block(&mut self, xs: &[f32], row_max: f32, exps: &[f32], maxima: usize) {
        debug_assert!(xs.len() <= BLOCK);
        self.count += maxima;
        let mut block = [0.0f32; LANES];
        let (x_chunks, x_tail) = xs.as_chunks::<LANES>();
        let (e_chunks, e_tail) = exps.as_chunks::<LANES>();
        for (x_chunk, e_chunk) in x_chunks.iter().zip(e_chunks) {
            for lane in 0..LANES {
                block[lane] += rest_term(x_chunk[lane], row_max, e_chunk[lane]);
            }
        }
        for ((partial, &x), &e) in block.iter_mut().zip(x_tail).zip(e_tail) {
            *partial += rest_term(x, row_max, e);
        }
        for (rest, partial) in self.rest.iter_mut().zip(block) {
            *rest += f64::from(partial);
        }
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

/// The contribution of logit `x` (with `exp_x = exp(x - row_max)`) to
/// [`SumExp::rest`]: none for a maximal logit (it is counted instead).
///
/// Written as a bit mask rather than an `if`: with an `if`, LLVM makes the load
/// of `exp_x` conditional and turns the loop into branches. A NaN logit is
/// never maximal and passes its NaN through.
#[inline(always)]
fn rest_term(x: f32, row_max: f32, exp_x: f32) -> f32 {
    let keep_bits = 0u32.wrapping_sub(u32::from(x != row_max));
    f32::from_bits(exp_x.to_bits() & keep_bits)
}

/// f32 values per 64-byte cache line.
const CACHE_LINE_F32S: usize = 16;

/// Asks the CPU to start loading `values` into cache; only a hint (a no-op on
/// targets other than x86).
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(CACHE_LINE_F32S) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch only hints the cache; it never faults or changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Logits per pass-2 block: the exponentials of a block are computed in one
/// elementwise loop (which vectorises at full width), then summed from L1.
const BLOCK: usize = 256;

/// `exps[c] = exp(xs[c] - row_max)`; returns how many `xs[c] == row_max` (at
/// most [`BLOCK`] elements, so a `u32` count cannot overflow).
#[inline(always)]
fn exp_shifted<const FUSED: bool>(xs: &[f32], row_max: f32, exps: &mut [f32]) -> usize {
    debug_assert!(xs.len() <= BLOCK);
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
    fn of_row<const FUSED: bool>(row: &[f32], row_max: f32, prefetch_row: &[f32], buffer: &mut [f32; BLOCK]) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut prefetch_blocks = prefetch_row.chunks(BLOCK);
        for xs in row.chunks(BLOCK) {
            prefetch(prefetch_blocks.next().unwrap_or_default());
            let exps = &mut buffer[..xs.len()];
            let maxima = exp_shifted::<FUSED>(xs, row_max, exps);
            lanes.add_block(xs, row_max, exps, maxima);
        }
        lanes.finish()
    }

    /// Pass 2 with a gradient: also stores `e_c = exp(x_c - row_max)` into
    /// `exp_out[c]`, so that pass 3 rereads it from cache.
    #[inline(always)]
    fn of_row_storing_exp<const FUSED: bool>(
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
            lanes.add_block(xs, row_max, exps, maxima);
        }
        lanes.finish()
    }

    /// Pass 2 in place: `row[c]` becomes `e_c = exp(x_c - row_max)`; each
    /// block's logits are kept aside in an L1 buffer for the sum's mask.
    #[inline(always)]
    fn of_row_in_place<const FUSED: bool>(row: &mut [f32], row_max: f32, prefetch_row: &[f32]) -> Self {
        let mut lanes = SumExpLanes::new();
        let mut logits_buffer = [0.0f32; BLOCK];
        let mut prefetch_blocks = prefetch_row.chunks(BLOCK);
        for block in row.chunks_mut(BLOCK) {
            prefetch(prefetch_blocks.next().unwrap_or_default());
            let xs = &mut logits_buffer[..block.len()];
            xs.copy_from_slice(block);
            let maxima = exp_shifted::<FUSED>(xs, row_max, block);
            lanes.add_block(xs, row_max, block, maxima);
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

/// `ln(1 + x)` for finite `x >= 0` (or NaN), accurate to a few f64 ulps, via `ln`:
/// several times faster than libm's `log1p`, which dominates rows of a few
/// classes.
///
/// Kahan's trick: with `u = 1 + x` rounded, `ln(u) * x / (u - 1)` corrects the
/// rounding of `u` to first order, since `ln(u) / (u - 1)` varies slowly (≈ 1).
#[inline(always)]
fn ln_1p(x: f64) -> f64 {
    let u = 1.0 + x;
    if u == 1.0 { x } else { u.ln() * (x / (u - 1.0)) }
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

    /// Runs [`fused_rows_with`] with a gradient; returns `(losses, gradient)`.
    fn run_with_gradient(
        kernel: Kernel,
        logits: &[f32],
        targets: &[u32],
        classes: usize,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut losses = vec![f32::NAN; targets.len()];
        let mut gradient = vec![f32::NAN; logits.len()];
        let host = HostLogits::from_f32(logits, Some(&mut gradient));
        fused_rows_with(kernel, host, targets, classes, scale, &mut losses);
        // In place: the same bits.
        let mut in_place = logits.to_vec();
        let mut in_place_losses = vec![f32::NAN; targets.len()];
        let host = HostLogits::InPlace(LogitsMut::F32(&mut in_place));
        fused_rows_with(kernel, host, targets, classes, scale, &mut in_place_losses);
        assert_eq!(bits(&in_place_losses), bits(&losses), "{kernel:?}: in-place losses");
        assert_eq!(bits(&in_place), bits(&gradient), "{kernel:?}: in-place gradient");
        (losses, gradient)
    }

    /// Runs [`fused_rows_with`] without a gradient; returns the losses.
    fn run_loss_only(kernel: Kernel, logits: &[f32], targets: &[u32], classes: usize) -> Vec<f32> {
        let mut losses = vec![f32::NAN; targets.len()];
        fused_rows_with(
            kernel,
            HostLogits::from_f32(logits, None),
            targets,
            classes,
            1.0,
            &mut losses,
        );
        losses
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Worst errors seen, for the report printed by `--nocapture`.
    #[derive(Default, Debug)]
    struct Worst {
        /// Relative loss error where the reference loss exceeds 1e-20.
        loss_relative: f64,
        /// Absolute loss error where the reference loss is at most 1e-20.
        tiny_loss_absolute: f64,
        /// `|g - g_ref| / scale`.
        gradient_absolute_over_scale: f64,
        /// `|sum_c g_c| / scale`.
        gradient_row_sum_over_scale: f64,
    }

    struct Case<'a> {
        label: String,
        logits: &'a [f32],
        targets: &'a [u32],
        classes: usize,
        scale: f32,
    }

    /// Checks every available kernel against the f64 reference on one case.
    fn check_case(case: &Case, worst: &mut Worst) {
        let Case {
            label,
            logits,
            targets,
            classes,
            scale,
        } = case;
        let (classes, scale) = (*classes, *scale);
        let expected_losses = row_losses_f64(logits, targets, classes);
        let expected_gradient = gradient_f64(logits, targets, classes, f64::from(scale));
        for kernel in Kernel::available() {
            let label = format!("{label} {kernel:?}");
            let (losses, gradient) = run_with_gradient(kernel, logits, targets, classes, scale);
            let losses_only = run_loss_only(kernel, logits, targets, classes);
            assert_eq!(
                bits(&losses),
                bits(&losses_only),
                "{label}: loss-only and fused losses differ"
            );
            check_losses(&label, &losses, &expected_losses, worst);
            check_gradient(&label, &gradient, &expected_gradient, classes, f64::from(scale), worst);
        }
    }

    fn check_losses(label: &str, losses: &[f32], expected_losses: &[f64], worst: &mut Worst) {
        for (r, (&loss, &expected)) in losses.iter().zip(expected_losses).enumerate() {
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
    }

    fn check_gradient(label: &str, gradient: &[f32], expected: &[f64], classes: usize, scale: f64, worst: &mut Worst) {
        let rows = gradient.chunks_exact(classes).zip(expected.chunks_exact(classes));
        for (r, (row, expected_row)) in rows.enumerate() {
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
                    let case = Case {
                        label: format!("{rows}x{classes} {kind:?}"),
                        logits: &logits,
                        targets: &targets,
                        classes,
                        scale: if rows == 3 { 0.25 } else { 1.0 / rows as f32 },
                    };
                    check_case(&case, &mut worst);
                }
            }
        }
        println!("worst errors: {worst:?}");
    }

    #[test]
    fn confident_rows_keep_relative_precision() {
        // Target is the single max, the others exactly 23 lower: loss = ln(1 + (C-1) e^-23).
        for classes in [2usize, 7, 1000] {
            let target = classes / 2;
            let mut logits = vec![-23.0f32; classes];
            logits[target] = 0.0;
            let others = (classes - 1) as f64 * (-23.0f64).exp();
            let expected_loss = others.ln_1p();
            // The target's gradient is p_t - 1 = -others / (1 + others).
            let expected_target_gradient = -others / (1.0 + others);
            for kernel in Kernel::available() {
                let (losses, gradient) = run_with_gradient(kernel, &logits, &[target as u32], classes, 1.0);
                let loss_error = (f64::from(losses[0]) - expected_loss).abs() / expected_loss;
                assert!(
                    loss_error <= 1e-5,
                    "C={classes} {kernel:?}: loss {:e} vs {expected_loss:e}",
                    losses[0]
                );
                let target_gradient = f64::from(gradient[target]);
                let gradient_error = (target_gradient - expected_target_gradient).abs() / others;
                assert!(
                    gradient_error <= 1e-5,
                    "C={classes} {kernel:?}: target gradient {target_gradient:e}"
                );
            }
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
        let expected = row_losses_f64(&logits, &targets, classes);
        for kernel in Kernel::available() {
            let (losses, gradient) = run_with_gradient(kernel, &logits, &targets, classes, 1.0);
            for row in 0..3 {
                assert!(losses[row].is_nan(), "{kernel:?} row {row}: loss {}", losses[row]);
                assert!(expected[row].is_nan(), "reference row {row}: {}", expected[row]);
                let gradient_row = &gradient[row * classes..(row + 1) * classes];
                assert!(
                    gradient_row.iter().all(|g| g.is_nan()),
                    "{kernel:?} row {row}: gradient not NaN"
                );
            }
            assert!(losses[3].is_finite());
            assert!(gradient[3 * classes..].iter().all(|g| g.is_finite()));

            // A NaN in the 16-lane body of one row and in the tail of the other.
            let mut logits = vec![0.5f32; 2 * 40];
            logits[5] = f32::NAN;
            logits[40 + 38] = f32::NAN;
            let losses = run_loss_only(kernel, &logits, &[0, 1], 40);
            assert!(losses.iter().all(|l| l.is_nan()), "{kernel:?}: {losses:?}");
        }
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
            assert_eq!(bits(&row_gradient), bits(&gradient[r * classes..(r + 1) * classes]));
        }
    }

    #[test]
    fn ln_1p_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = 1e-300f64;
        while x < 1e300 {
            for y in [x, x * 1.37, x * 2.9, x * 7.1] {
                let error = (ln_1p(y) - y.ln_1p()).abs() / y.ln_1p();
                worst = worst.max(error);
            }
            x *= 10.0;
        }
        assert!(worst <= 1e-15, "worst relative error {worst:e}");
        assert_eq!(ln_1p(0.0), 0.0);
        assert!(ln_1p(f64::NAN).is_nan());
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
