//! The general row loop of the cross-entropy: every option (class weights,
//! `ignore_index`, label smoothing, soft targets, z-loss, softcap, logit scale,
//! PyTorch's N-d layout; see [`CrossEntropyOptions`](crate::CrossEntropyOptions)
//! for the formulas), for every call [`super::fast`] does not take.
//!
//! It is built like [`super::fast`]: f32 storage, f64 accumulation, the
//! vectorisable [`exp_f32`](crate::cpu::exp::exp_f32), rows split across threads with
//! rayon and an AVX2+FMA build chosen at runtime on x86. Each row takes three
//! passes, the last two over data in cache:
//!
//! 1. the extreme logit (`x'` is monotonic in `x`, so `max x'` comes from
//!    `max x` for `s > 0`, `min x` for `s < 0`), and the argmax when asked for.
//!    With a softcap, `x'_c − max x'` with `x'_c = t·tanh(s·x_c/t)` is
//!    computed once per logit in f64 (with a vectorisable `tanh`) and kept,
//!    rounded to f32, in a row buffer;
//! 2. in blocks of 256: `d_c = x'_c − max x'` (≤ 0), `e_c = exp(d_c)`
//!    (stored into the gradient row when a gradient is wanted), and the row
//!    sums in f64 lanes: `Σ e_c`, kept split as `count` (the `d_c == 0`, whose
//!    exponential is exactly 1) plus `rest` so that `ln` is `ln_1p(rest)` for
//!    confident rows; `Σ w_c·(−d_c)` for label smoothing; `Σ w_c·t'_c` and
//!    `Σ w_c·t'_c·(−d_c)` for soft targets;
//! 3. the gradient row from `e_c`, in place, then its target entry (in
//!    [`gradient`]).
//!
//! With `spatial > 1` (logits (N, C, d1, …)), a row's classes are gathered into
//! a contiguous buffer first and its gradient scattered back afterwards; tasks
//! are whole batch items, so that layout is slower and parallel only over N.

use super::RowResult;
use super::plan::{Plan, RowTargets};
use crate::cpu::exp::exp_f32_no_overflow_with;
use crate::cpu::isa::{Kernel, x86_builds};
use crate::cpu::lanes::{BLOCK, LANES, accumulate, fold_lanes, fold_values, larger, prefetch, rest_term, smaller};
use crate::cpu::math::tanh_f64;
use crate::cpu::tasks;
use crate::types::{HostLogits, Shape};

mod gradient;

use gradient::{GradientTerms, write_gradient};

/// Splits the rows into rayon tasks of whole batch items (whole rows when
/// `spatial == 1`) holding at least [`MIN_TASK_ELEMENTS`](tasks::MIN_TASK_ELEMENTS)
/// logits, each staged in f32 where it has to be (see [`tasks`]).
pub(super) fn run_tasks(kernel: Kernel, plan: &Plan<'_>, logits: HostLogits<'_>, rows: &mut [RowResult]) {
    tasks::for_each_task(logits, plan.classes, plan.spatial, rows, |task, first_row, rows| {
        tasks::with_f32(task, |logits, gradient| {
            kernel.task(plan, logits, first_row, rows, gradient);
        });
    });
}

x86_builds!(
    /// Runs one task (see [`task_body`]) with this build.
    Kernel::task => task_body(
        plan: &Plan<'_>,
        task_logits: &[f32],
        first_row: usize,
        rows: &mut [RowResult],
        gradient: Option<&mut [f32]>,
    ) => task_avx2_fma, task_avx512
);

/// Per-task buffers, one row long.
struct RowBuffers {
    /// `spatial > 1`: the row's logits, gathered.
    logits: Vec<f32>,
    /// `spatial > 1` with soft targets: the row's probabilities, gathered.
    probabilities: Vec<f32>,
    /// `spatial > 1` with a gradient: the row's gradient, before it is scattered.
    gradient: Vec<f32>,
    /// Softcap: `x'_c − max x'`, rounded to f32.
    shifted: Vec<f32>,
    /// Block buffers of pass 2.
    blocks: Blocks,
}

/// Block-sized buffers of pass 2 (in L1).
struct Blocks {
    /// `e_c`, when there is no gradient row to hold them.
    exps: [f32; BLOCK],
    /// Soft targets: `w_c·t'_c`.
    targets: [f32; BLOCK],
}

impl RowBuffers {
    fn new(plan: &Plan<'_>, with_gradient: bool) -> Self {
        let gathered = plan.spatial > 1;
        let soft = matches!(plan.targets, RowTargets::Probabilities(_));
        let length_if = |wanted: bool| if wanted { plan.classes } else { 0 };
        Self {
            logits: vec![0.0; length_if(gathered)],
            probabilities: vec![0.0; length_if(gathered && soft)],
            gradient: vec![0.0; length_if(gathered && with_gradient)],
            shifted: vec![0.0; length_if(plan.softcap.is_some())],
            blocks: Blocks {
                exps: [0.0; BLOCK],
                targets: [0.0; BLOCK],
            },
        }
    }
}

/// The target of one row.
#[derive(Clone, Copy)]
enum RowTarget<'a> {
    /// Ignored: loss 0, gradient 0.
    Ignored,
    /// A class index.
    Class(usize),
    /// Probabilities, one per class, contiguous.
    Probabilities(&'a [f32]),
}

/// The rows `first_row..first_row + rows.len()` (whole batch items): their
/// logits in `task_logits` and their gradient in `gradient` (the same rows'
/// span of the logits' layout).
#[inline(always)]
fn task_body<const FUSED: bool, const VECTOR: usize>(
    plan: &Plan<'_>,
    task_logits: &[f32],
    first_row: usize,
    rows: &mut [RowResult],
    mut gradient: Option<&mut [f32]>,
) {
    let classes = plan.classes;
    debug_assert_eq!(
        task_logits.len(),
        rows.len() * classes,
        "a task's logits are whole rows"
    );
    // first_row is a multiple of spatial, so the task's logits are contiguous, from here:
    let task_offset = first_row * classes;
    let task_shape = Shape {
        rows: rows.len(),
        classes,
        spatial: plan.spatial,
    };
    let mut buffers = RowBuffers::new(plan, gradient.is_some());
    for (local, result) in rows.iter_mut().enumerate() {
        let row = first_row + local;
        if plan.spatial == 1 {
            let row_span = local * classes..(local + 1) * classes;
            let target = row_target(plan, row, |probabilities| {
                &probabilities[task_offset + row_span.start..][..classes]
            });
            let gradient_row = gradient.as_deref_mut().map(|gradient| &mut gradient[row_span.clone()]);
            // Pass 2 prefetches the next row, so that its pass 1 reads from cache.
            let next_row = task_logits
                .get(row_span.end..row_span.end + classes)
                .unwrap_or_default();
            let row_logits = &task_logits[row_span];
            *result = row_result::<FUSED>(plan, row_logits, next_row, target, gradient_row, &mut buffers);
        } else {
            *result = strided_row::<FUSED>(
                plan,
                task_logits,
                task_shape,
                local,
                task_offset,
                gradient.as_deref_mut(),
                &mut buffers,
            );
        }
    }
}

/// The target of `row`; `probabilities_of` picks the row's probabilities out of the whole array.
#[inline(always)]
fn row_target<'a>(plan: &Plan<'a>, row: usize, probabilities_of: impl FnOnce(&'a [f32]) -> &'a [f32]) -> RowTarget<'a> {
    match &plan.targets {
        RowTargets::Classes { indices, ignore_index } => {
            let class = indices[row];
            if class == *ignore_index {
                RowTarget::Ignored
            } else {
                RowTarget::Class(class as usize)
            }
        }
        RowTargets::Probabilities(probabilities) => RowTarget::Probabilities(probabilities_of(probabilities)),
    }
}

/// Row `local` of a task with `spatial > 1`: gathers its logits (and
/// probabilities), runs [`row_result`] and scatters its gradient.
#[inline(always)]
fn strided_row<const FUSED: bool>(
    plan: &Plan<'_>,
    task_logits: &[f32],
    task_shape: Shape,
    local: usize,
    task_offset: usize,
    gradient: Option<&mut [f32]>,
    buffers: &mut RowBuffers,
) -> RowResult {
    let mut row_logits = std::mem::take(&mut buffers.logits);
    let mut row_probabilities = std::mem::take(&mut buffers.probabilities);
    let mut row_gradient = std::mem::take(&mut buffers.gradient);
    for (class, logit) in row_logits.iter_mut().enumerate() {
        *logit = task_logits[task_shape.index(local, class)];
    }
    let first_row = task_offset / task_shape.classes;
    let target = row_target(plan, first_row + local, |probabilities| {
        let task_probabilities = &probabilities[task_offset..task_offset + task_logits.len()];
        for (class, probability) in row_probabilities.iter_mut().enumerate() {
            *probability = task_probabilities[task_shape.index(local, class)];
        }
        &row_probabilities
    });
    let gradient_row = gradient.is_some().then_some(&mut row_gradient[..]);
    let result = row_result::<FUSED>(plan, &row_logits, &[], target, gradient_row, buffers);
    if let Some(gradient) = gradient {
        for (class, &value) in row_gradient.iter().enumerate() {
            gradient[task_shape.index(local, class)] = value;
        }
    }
    buffers.logits = row_logits;
    buffers.probabilities = row_probabilities;
    buffers.gradient = row_gradient;
    result
}

/// One row's transformed logits, ready for pass 2: `d_c = scale·(values[c] − extreme)`.
struct PreparedRow<'a> {
    /// The raw logits, or with a softcap `x'_c − max x'` (rounded to f32).
    values: &'a [f32],
    /// The raw logits.
    logits: &'a [f32],
    /// s, or 1 with a softcap.
    scale: f32,
    /// The logit that becomes `max x'`, or 0 with a softcap.
    extreme: f32,
    /// `max x'` in f64.
    row_max: f64,
    /// The softcap, if any.
    softcap: Option<Softcap>,
    /// First index of `max x'` (0 unless row statistics are wanted).
    argmax: usize,
}

impl PreparedRow<'_> {
    /// `max x' − x'_c`, in f64.
    #[inline(always)]
    fn margin<const FUSED: bool>(&self, class: usize) -> f64 {
        match self.softcap {
            Some(softcap) => self.row_max - softcap.transform::<FUSED>(self.logits[class]),
            // Both are f32, so the difference is exact in f64 (up to overflow).
            None => f64::from(self.scale) * (f64::from(self.extreme) - f64::from(self.values[class])),
        }
    }
}

/// The softcap transform `x' = t·tanh(s·x/t)`.
#[derive(Clone, Copy)]
struct Softcap {
    /// t.
    cap: f64,
    /// s/t.
    scale_over_cap: f64,
    /// s.
    scale: f64,
}

impl Softcap {
    /// `x'` of logit `x`, in f64.
    #[inline(always)]
    fn transform<const FUSED: bool>(self, logit: f32) -> f64 {
        self.cap * tanh_f64::<FUSED>(self.scale_over_cap * f64::from(logit))
    }

    /// `d x' / d x = s·(1 − (x'/t)²)` at `x'`.
    #[inline(always)]
    fn derivative(self, transformed: f64) -> f64 {
        let ratio = transformed / self.cap;
        self.scale * (1.0 - ratio * ratio)
    }
}

/// Pass 1: the row's `max x'` (and argmax); with a softcap also `x'_c − max x'`
/// into `shifted`.
#[inline(always)]
fn prepare_row<'a, const FUSED: bool>(plan: &Plan<'_>, logits: &'a [f32], shifted: &'a mut [f32]) -> PreparedRow<'a> {
    let scale = plan.logit_scale;
    // x' is increasing in x for s > 0 (s·x, and tanh is increasing), decreasing for s < 0.
    let extreme = if scale > 0.0 {
        fold_values(logits, f32::NEG_INFINITY, larger)
    } else {
        fold_values(logits, f32::INFINITY, smaller)
    };
    let Some(cap) = plan.softcap else {
        return PreparedRow {
            values: logits,
            logits,
            scale,
            extreme,
            row_max: f64::from(scale) * f64::from(extreme),
            softcap: None,
            argmax: if plan.row_stats {
                first_index_of(logits, extreme)
            } else {
                0
            },
        };
    };
    let softcap = Softcap {
        cap,
        scale_over_cap: f64::from(scale) / cap,
        scale: f64::from(scale),
    };
    // Finite even for infinite logits; a row of NaN only (extreme ±inf) gets −t
    // here and NaN sums in pass 2.
    let row_max = softcap.transform::<FUSED>(extreme);
    for (shift, &logit) in shifted.iter_mut().zip(logits) {
        *shift = (softcap.transform::<FUSED>(logit) - row_max) as f32;
    }
    PreparedRow {
        values: shifted,
        logits,
        scale: 1.0,
        extreme: 0.0,
        row_max,
        softcap: Some(softcap),
        argmax: if plan.row_stats {
            first_index_of(shifted, 0.0)
        } else {
            0
        },
    }
}

/// The first index of `target` in `values` (0 when absent, e.g. for NaN).
///
/// Searches 64 values at a time with a branch-free comparison (which
/// vectorises), then within the first block that has a match.
#[inline(always)]
fn first_index_of(values: &[f32], target: f32) -> usize {
    const SEARCH_BLOCK: usize = 64;
    let mut blocks = values.chunks(SEARCH_BLOCK);
    let found = blocks.position(|block| block.iter().fold(false, |any, &x| any | (x == target)));
    found
        .and_then(|block| {
            let start = block * SEARCH_BLOCK;
            let offset = values[start..].iter().position(|&x| x == target)?;
            Some(start + offset)
        })
        .unwrap_or(0)
}

/// The row sums of pass 2.
#[derive(Clone, Copy, Debug)]
struct RowSums {
    /// Number of `d_c == 0` (each `e_c` exactly 1).
    count: usize,
    /// `Σ e_c` over the other classes.
    rest: f64,
    /// Class targets with smoothing: `Σ_c w_c·(−d_c)`; soft targets: `Σ_c w_c·t'_c·(−d_c)`.
    margin: f64,
    /// Soft targets: `Σ_c w_c·t'_c`.
    mass: f64,
}

impl RowSums {
    /// `Σ_c e_c`.
    fn sum_exp(&self) -> f64 {
        self.count as f64 + self.rest
    }

    /// `ln Σ_c e_c`, as `ln_1p(rest)` when `count == 1` (full relative precision for confident rows).
    fn ln_sum_exp(&self) -> f64 {
        if self.count == 1 {
            self.rest.ln_1p()
        } else {
            self.sum_exp().ln()
        }
    }
}

/// What pass 2 accumulates besides `Σ e_c`.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    /// Nothing (class targets without smoothing, or ignored rows).
    None,
    /// `Σ w_c·(−d_c)`.
    Smoothing,
    /// `Σ w_c·t'_c` and `Σ w_c·t'_c·(−d_c)`, with the row's probabilities.
    Soft,
}

/// Pass 2 over one row: `e_c = exp(d_c)` into `exps` (the gradient row) or,
/// block by block, into a buffer; and the [`RowSums`]. Meanwhile `next_row` is
/// prefetched.
///
/// It runs in a function of its own per kind of extra sum: inlined into the
/// whole row loop, or with a run-time choice of sums inside its loop, LLVM
/// leaves the f64 lane sums scalar (about 1.5× slower).
#[inline(always)]
fn row_sums<const FUSED: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    extra: Extra,
    probabilities: &[f32],
    next_row: &[f32],
    exps: Option<&mut [f32]>,
    blocks: &mut Blocks,
) -> RowSums {
    match extra {
        Extra::None => row_sums_call::<FUSED, false, false>(plan, row, probabilities, next_row, exps, blocks),
        Extra::Smoothing => row_sums_call::<FUSED, true, false>(plan, row, probabilities, next_row, exps, blocks),
        Extra::Soft => row_sums_call::<FUSED, false, true>(plan, row, probabilities, next_row, exps, blocks),
    }
}

/// Calls the build of [`row_sums_with`] that matches `FUSED`.
#[inline(always)]
fn row_sums_call<const FUSED: bool, const SMOOTHING: bool, const SOFT: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    probabilities: &[f32],
    next_row: &[f32],
    exps: Option<&mut [f32]>,
    blocks: &mut Blocks,
) -> RowSums {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if FUSED {
        // SAFETY: FUSED is only set in `task_avx2_fma`, which only runs on CPUs with AVX2 and FMA.
        return unsafe { row_sums_avx2_fma::<SMOOTHING, SOFT>(plan, row, probabilities, next_row, exps, blocks) };
    }
    row_sums_portable::<SMOOTHING, SOFT>(plan, row, probabilities, next_row, exps, blocks)
}

/// [`row_sums_with`] for the baseline target.
#[inline(never)]
fn row_sums_portable<const SMOOTHING: bool, const SOFT: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    probabilities: &[f32],
    next_row: &[f32],
    exps: Option<&mut [f32]>,
    blocks: &mut Blocks,
) -> RowSums {
    row_sums_with::<false, SMOOTHING, SOFT>(plan, row, probabilities, next_row, exps, blocks)
}

/// [`row_sums_with`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_sums_avx2_fma<const SMOOTHING: bool, const SOFT: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    probabilities: &[f32],
    next_row: &[f32],
    exps: Option<&mut [f32]>,
    blocks: &mut Blocks,
) -> RowSums {
    row_sums_with::<true, SMOOTHING, SOFT>(plan, row, probabilities, next_row, exps, blocks)
}

/// [`row_sums`] with `Σ w_c·(−d_c)` when `SMOOTHING`, `Σ w_c·t'_c` and
/// `Σ w_c·t'_c·(−d_c)` when `SOFT`.
#[inline(always)]
fn row_sums_with<const FUSED: bool, const SMOOTHING: bool, const SOFT: bool>(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    probabilities: &[f32],
    next_row: &[f32],
    mut exps: Option<&mut [f32]>,
    blocks: &mut Blocks,
) -> RowSums {
    let mut count = 0usize;
    let mut rest = [0.0f64; LANES];
    let mut margins = [0.0f64; LANES];
    let mut mass = [0.0f64; LANES];
    let (scale, extreme) = (row.scale, row.extreme);
    // −d_c = scale·(extreme − x_c) ≥ 0: the margin max x' − x'_c.
    let margin = move |x: f32| scale * (extreme - x);
    let mut prefetch_blocks = next_row.chunks(BLOCK);
    for (block, values) in row.values.chunks(BLOCK).enumerate() {
        prefetch(prefetch_blocks.next().unwrap_or_default());
        let range = block * BLOCK..block * BLOCK + values.len();
        let block_exps = match exps.as_deref_mut() {
            Some(exps) => &mut exps[range.clone()],
            None => &mut blocks.exps[..values.len()],
        };
        let mut maxima = 0u32;
        for (e, &x) in block_exps.iter_mut().zip(values) {
            // scale·(x − extreme) ≤ 0 by the choice of extreme (or NaN), so it cannot overflow.
            *e = exp_f32_no_overflow_with::<FUSED>(scale * (x - extreme));
            maxima += u32::from(x == extreme);
        }
        count += maxima as usize;
        accumulate(&mut rest, values, block_exps, move |x, e| {
            f64::from(rest_term(x, extreme, e))
        });
        if SMOOTHING {
            let weights = plan.weight_block(range.clone());
            accumulate(&mut margins, values, weights, move |x, w| f64::from(margin(x) * w));
        }
        if SOFT {
            let targets = &mut blocks.targets[..values.len()];
            weighted_targets(plan, &probabilities[range.clone()], plan.weight_block(range), targets);
            let targets = &blocks.targets[..values.len()];
            accumulate(&mut mass, targets, targets, |t, _| f64::from(t));
            accumulate(&mut margins, values, targets, move |x, t| f64::from(margin(x) * t));
        }
    }
    RowSums {
        count,
        rest: fold_lanes(rest, |a, b| a + b),
        margin: fold_lanes(margins, |a, b| a + b),
        mass: fold_lanes(mass, |a, b| a + b),
    }
}

/// `targets[c] = w_c·t'_c` with `t'_c = (1 − ε)·t_c + ε/C`.
#[inline(always)]
fn weighted_targets(plan: &Plan<'_>, probabilities: &[f32], weights: &[f32], targets: &mut [f32]) {
    let (keep, uniform) = (plan.keep, plan.uniform as f32);
    for ((target, &t), &w) in targets.iter_mut().zip(probabilities).zip(weights) {
        *target = w * (keep * t + uniform);
    }
}

/// Loss, z-loss, `lse`, argmax and (into `gradient`) the gradient of one
/// contiguous row of logits.
#[inline(always)]
fn row_result<const FUSED: bool>(
    plan: &Plan<'_>,
    logits: &[f32],
    next_row: &[f32],
    target: RowTarget<'_>,
    gradient: Option<&mut [f32]>,
    buffers: &mut RowBuffers,
) -> RowResult {
    if matches!(target, RowTarget::Ignored) && !plan.row_stats {
        if let Some(gradient) = gradient {
            gradient.fill(0.0);
        }
        return RowResult::default();
    }
    let row = prepare_row::<FUSED>(plan, logits, &mut buffers.shifted);
    if !row.row_max.is_finite() {
        return non_finite_row(plan, &row, target, gradient);
    }
    let (extra, probabilities) = match target {
        RowTarget::Ignored => (Extra::None, &[][..]),
        RowTarget::Class(_) if plan.smoothing > 0.0 => (Extra::Smoothing, &[][..]),
        RowTarget::Class(_) => (Extra::None, &[][..]),
        RowTarget::Probabilities(probabilities) => (Extra::Soft, probabilities),
    };
    let mut gradient = gradient;
    let sums = row_sums::<FUSED>(
        plan,
        &row,
        extra,
        probabilities,
        next_row,
        gradient.as_deref_mut(),
        &mut buffers.blocks,
    );
    let ln_sum_exp = sums.ln_sum_exp();
    let lse = row.row_max + ln_sum_exp;
    let mut result = RowResult {
        loss: 0.0,
        z: 0.0,
        lse: lse as f32,
        argmax: row.argmax as u32,
    };
    let cross_entropy = match target {
        RowTarget::Ignored => {
            if let Some(gradient) = gradient {
                gradient.fill(0.0);
            }
            return result;
        }
        // (1−ε)·w_y·(lse − x'_y) + (ε/C)·Σ_c w_c·(lse − x'_c), with lse − x'_c = (max x' − x'_c) + ln Σ e.
        RowTarget::Class(class) => {
            let hard = (1.0 - plan.smoothing) * plan.weight_of(class) * (row.margin::<FUSED>(class) + ln_sum_exp);
            let smooth = if extra == Extra::Smoothing {
                plan.uniform * (sums.margin + plan.weight_sum * ln_sum_exp)
            } else {
                0.0
            };
            hard + smooth
        }
        // Σ_c w_c·t'_c·(lse − x'_c).
        RowTarget::Probabilities(_) => sums.margin + sums.mass * ln_sum_exp,
    };
    result.z = if plan.z_loss > 0.0 {
        plan.z_loss * lse * lse
    } else {
        0.0
    };
    result.loss = cross_entropy + result.z;
    if let Some(gradient) = gradient {
        let terms = GradientTerms::new(plan, &row, target, &sums, lse);
        write_gradient::<FUSED>(plan, &row, target, &terms, gradient, &mut buffers.blocks);
    }
    result
}

/// A row whose `max x'` is not finite: a `+inf` logit without softcap (then
/// `exp(inf − inf)` is NaN, as in PyTorch), or only `-inf` and NaN logits. Its
/// loss and gradient are NaN, except that an ignored row keeps a loss of 0 and a
/// zero gradient; its `lse` is `torch.logsumexp`'s: `max x'` (±inf) without a NaN
/// logit, else NaN.
#[inline(always)]
fn non_finite_row(
    plan: &Plan<'_>,
    row: &PreparedRow<'_>,
    target: RowTarget<'_>,
    gradient: Option<&mut [f32]>,
) -> RowResult {
    let ignored = matches!(target, RowTarget::Ignored);
    if let Some(gradient) = gradient {
        gradient.fill(if ignored { 0.0 } else { f32::NAN });
    }
    let nan_unless_ignored = if ignored { 0.0 } else { f64::NAN };
    RowResult {
        loss: nan_unless_ignored,
        z: if plan.z_loss > 0.0 { nan_unless_ignored } else { 0.0 },
        lse: if row.logits.iter().any(|logit| logit.is_nan()) {
            f32::NAN
        } else {
            row.row_max as f32
        },
        argmax: row.argmax as u32,
    }
}
