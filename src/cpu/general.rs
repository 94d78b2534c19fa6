//! The production CPU path for every option of the cross-entropy: class
//! weights, `ignore_index`, label smoothing, soft targets, z-loss, softcap,
//! logit scale, every reduction and PyTorch's N-d layout (see
//! [`CrossEntropyOptions`] for the formulas).
//!
//! It is built like [`fast`]: f32 storage, f64 accumulation, the
//! vectorisable [`exp_f32`](super::exp::exp_f32), rows split across threads with
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
//! 3. the gradient row from `e_c`, in place, then its target entry.
//!
//! With `spatial > 1` (logits (N, C, d1, …)), a row's classes are gathered into
//! a contiguous buffer first and its gradient scattered back afterwards; tasks
//! are whole batch items, so that layout is slower and parallel only over N.
//!
//! The plain case (no weight, `ε = 0`, `z = 0`, no softcap, logit scale 1,
//! row-major logits, no ignored row, no row statistics asked for) goes to the
//! tuned [`fast::fused_rows`].

use rayon::prelude::*;

use super::dispatch::{Kernel, x86_builds};

use super::exp::exp_f32_no_overflow_with;
use super::fast;
use super::staging;
use crate::error::Result;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{HostBatch, HostLogits, Loss, LossOutput, Shape, Targets};

/// Width of the explicit accumulator lanes.
const LANES: usize = 16;

/// Logits per pass-2/pass-3 block: each block's elementwise loops vectorise at
/// full width over data in L1.
const BLOCK: usize = 256;

/// Each rayon task handles at least this many logits (whole rows, or whole
/// batch items for `spatial > 1`); inputs no larger than this run on the
/// calling thread.
const MIN_TASK_ELEMENTS: usize = 1 << 16;

/// The weights of an unweighted loss, one block at a time.
static ONES: [f32; BLOCK] = [1.0; BLOCK];

/// What [`cross_entropy`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CpuCrossEntropy {
    /// Loss of each row, z-loss included (0 for ignored rows).
    pub row_losses: Vec<f32>,
    /// The z-loss part `z·lse²` of each row (0 for ignored rows and when `z == 0`).
    pub row_z: Vec<f32>,
    /// `logsumexp(x')` of each row, ignored rows included; empty unless `row_stats`.
    pub row_lse: Vec<f32>,
    /// Index of each row's largest `x'` (the first on ties, NaN ignored; 0 when
    /// every `x'` is NaN), ignored rows included; empty unless `row_stats`.
    pub row_argmax: Vec<u32>,
    /// The loss reduced per `options.reduction` (for [`Reduction::None`]: the sum of the row losses).
    pub loss: f32,
    /// The z-loss reduced the same way (for [`Reduction::None`]: the sum of `row_z`).
    pub z_loss: f32,
}

/// The cross-entropy with every option of [`CrossEntropyOptions`], its row
/// statistics and, when `gradient` is given, d(`loss`)/d(logits) written into
/// it in the logits' layout (for [`Reduction::None`]: the gradient of the sum of
/// the row losses).
///
/// The mean divides by `Σ w_y` over the rows whose target is not `ignore_index`
/// (their count without weights; the row count for soft targets); when that is
/// 0 the mean is NaN (or ±inf) and every row not ignored has a NaN gradient row,
/// as in PyTorch (its NLL backward writes `w_y · (−1/0) = NaN` at the target and
/// the log-softmax backward spreads it over the row). Ignored rows get a loss of
/// 0 and an all-zero gradient row, even when their logits are NaN (unlike PyTorch). NaN logits, and
/// `+inf` ones without softcap, give NaN losses and gradient rows. Reductions
/// are sequential f64 sums, so results do not depend on the thread count.
///
/// With `row_stats == false`, `row_lse` and `row_argmax` are left empty and the
/// plain case goes to [`fast::fused_rows`].
///
/// Preconditions, validated by the caller (checked with `debug_assert!`):
/// `classes > 0`, `spatial > 0`, `rows` a multiple of `spatial`,
/// `logits.len() == rows × classes` (and so `gradient`), one class index per row
/// in `[0, classes)` or equal to `ignore_index`, or one probability per logit,
/// and options valid for `shape`.
#[cfg(test)]
pub(crate) fn cross_entropy(
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    options: &CrossEntropyOptions,
    gradient: Option<&mut [f32]>,
    row_stats: bool,
) -> CpuCrossEntropy {
    cross_entropy_host(
        HostLogits::from_f32(logits, gradient),
        targets,
        shape,
        options,
        row_stats,
    )
}

/// The CPU door: the general path (which hands the plain case to the tuned
/// one). 16-bit logits and in-place gradients are staged in f32 one task of
/// rows at a time, so no call copies the whole array.
pub(crate) fn cross_entropy_batch(options: &CrossEntropyOptions, batch: HostBatch<'_>) -> Result<LossOutput> {
    batch.validate(options)?;
    let HostBatch {
        logits,
        targets,
        shape,
        row_stats,
    } = batch;
    let result = cross_entropy_host(logits, targets, shape, options, row_stats);
    let (loss, z_loss) = if options.reduction != Reduction::None {
        (Loss::Reduced(result.loss), Loss::Reduced(result.z_loss))
    } else {
        (Loss::PerRow(result.row_losses), Loss::PerRow(result.row_z))
    };
    Ok(LossOutput {
        loss,
        z_loss: (options.z_loss > 0.0).then_some(z_loss),
        lse: row_stats.then_some(result.row_lse),
        argmax: row_stats.then_some(result.row_argmax),
    })
}

/// [`cross_entropy`] on logits of any element type, the gradient going where
/// `logits` says: 16-bit rows and in-place gradients are staged in f32 one task
/// at a time (see [`staging`]), never as a whole N×C copy.
pub(crate) fn cross_entropy_host(
    logits: HostLogits<'_>,
    targets: Targets<'_>,
    shape: Shape,
    options: &CrossEntropyOptions,
    row_stats: bool,
) -> CpuCrossEntropy {
    cross_entropy_host_with(Kernel::detected(), logits, targets, shape, options, row_stats)
}

/// [`cross_entropy_host`] with the given build of the row loop.
fn cross_entropy_host_with(
    kernel: Kernel,
    logits: HostLogits<'_>,
    targets: Targets<'_>,
    shape: Shape,
    options: &CrossEntropyOptions,
    row_stats: bool,
) -> CpuCrossEntropy {
    if cfg!(debug_assertions) {
        debug_check_inputs(&logits, targets, shape, options);
    }
    let plain_classes = if row_stats {
        None
    } else {
        plain_class_targets(targets, shape, options)
    };
    if let Some(classes) = plain_classes {
        return plain_cross_entropy(logits, &classes, shape, options.reduction);
    }
    let plan = Plan::new(targets, shape, options, row_stats);
    let mut rows = vec![RowResult::default(); shape.rows];
    run_tasks(kernel, &plan, logits, &mut rows);
    collect(&rows, plan.divisor, row_stats)
}

/// Checks the preconditions of [`cross_entropy`] in debug builds.
fn debug_check_inputs(logits: &HostLogits<'_>, targets: Targets<'_>, shape: Shape, options: &CrossEntropyOptions) {
    let length = logits.logits().len();
    debug_assert!(
        shape.classes > 0 && shape.spatial > 0,
        "classes and spatial must be positive"
    );
    debug_assert_eq!(shape.rows % shape.spatial, 0, "rows must be a multiple of spatial");
    debug_assert_eq!(length, shape.rows * shape.classes, "logits must be rows x classes");
    if let HostLogits::WithGradient(_, gradient) = logits {
        debug_assert_eq!(gradient.len(), length, "gradient must be rows x classes");
    }
    debug_assert!(options.validate(shape).is_ok(), "invalid options");
    match class_indices(targets) {
        Some(classes) => {
            debug_assert_eq!(classes.len(), shape.rows, "one class index per row");
            debug_assert!(
                classes
                    .iter()
                    .all(|&class| class == options.ignore_index || (0..shape.classes as i64).contains(&class)),
                "every class index must be in [0, classes) or equal ignore_index"
            );
        }
        None => debug_assert_eq!(targets.len(), length, "one probability per logit"),
    }
}

/// The class-index targets widened to `i64`, or `None` for soft targets.
fn class_indices(targets: Targets<'_>) -> Option<Vec<i64>> {
    match targets {
        Targets::I64(values) => Some(values.to_vec()),
        Targets::I32(values) => Some(values.iter().map(|&value| i64::from(value)).collect()),
        Targets::U32(values) => Some(values.iter().map(|&value| i64::from(value)).collect()),
        Targets::Probabilities(_) => None,
    }
}

/// The class indices as `u32` when the call is the plain case [`fast`] handles:
/// no option but the reduction, row-major logits, class-index targets none of
/// which is ignored.
fn plain_class_targets(targets: Targets<'_>, shape: Shape, options: &CrossEntropyOptions) -> Option<Vec<u32>> {
    let plain_options = options.weight.is_none()
        && options.label_smoothing == 0.0
        && options.z_loss == 0.0
        && options.softcap.is_none()
        && options.logit_scale == 1.0
        && shape.spatial == 1;
    if !plain_options {
        return None;
    }
    let classes = class_indices(targets)?;
    if classes.contains(&options.ignore_index) {
        return None;
    }
    Some(classes.into_iter().map(|class| class as u32).collect())
}

/// The plain case, on [`fast::fused_rows_host`].
fn plain_cross_entropy(logits: HostLogits<'_>, classes: &[u32], shape: Shape, reduction: Reduction) -> CpuCrossEntropy {
    let divisor = if reduction == Reduction::Mean {
        shape.rows as f64
    } else {
        1.0
    };
    let mut row_losses = vec![0.0f32; shape.rows];
    fast::fused_rows_host(logits, classes, shape.classes, (1.0 / divisor) as f32, &mut row_losses);
    let loss = (fast::sum_f64(&row_losses) / divisor) as f32;
    CpuCrossEntropy {
        row_z: vec![0.0; shape.rows],
        row_lse: Vec::new(),
        row_argmax: Vec::new(),
        loss,
        z_loss: 0.0,
        row_losses,
    }
}

/// The targets as the row loop reads them.
enum RowTargets<'a> {
    /// Class indices (widened), with the index that marks an ignored row.
    Classes { indices: Vec<i64>, ignore_index: i64 },
    /// Probabilities in the logits' layout.
    Probabilities(&'a [f32]),
}

/// Everything the row loop needs that does not change from row to row.
struct Plan<'a> {
    /// Classes per row.
    classes: usize,
    /// Elements between a row's consecutive classes.
    spatial: usize,
    /// The targets.
    targets: RowTargets<'a>,
    /// Class weights, if any.
    weight: Option<&'a [f32]>,
    /// `Σ_c w_c` (C without weights).
    weight_sum: f64,
    /// Label smoothing ε.
    smoothing: f64,
    /// `1 − ε`, in f32 for the soft-target loops.
    keep: f32,
    /// `ε / C`.
    uniform: f64,
    /// z-loss scale.
    z_loss: f64,
    /// Logit scale s.
    logit_scale: f32,
    /// Softcap t.
    softcap: Option<f64>,
    /// Whether the argmax is wanted.
    row_stats: bool,
    /// The mean's divisor (1 for the other reductions).
    divisor: f64,
    /// `1 / divisor`: the gradient's factor; NaN when the divisor is 0 (a mean
    /// over rows that are all ignored or all of weight 0), so that every row not
    /// ignored gets a NaN gradient row, as PyTorch's `0 · (1/0)`; ignored rows
    /// write zeros without it.
    gradient_scale: f64,
}

impl<'a> Plan<'a> {
    fn new(targets: Targets<'a>, shape: Shape, options: &'a CrossEntropyOptions, row_stats: bool) -> Self {
        let weight = options.weight.as_deref();
        let targets = match (targets, class_indices(targets)) {
            (Targets::Probabilities(probabilities), _) => RowTargets::Probabilities(probabilities),
            (_, indices) => RowTargets::Classes {
                indices: indices.unwrap_or_default(),
                ignore_index: options.ignore_index,
            },
        };
        let divisor = match (options.reduction, &targets) {
            (Reduction::Mean, RowTargets::Classes { indices, ignore_index }) => indices
                .iter()
                .filter(|&&class| class != *ignore_index)
                .map(|&class| weight.map_or(1.0, |weight| f64::from(weight[class as usize])))
                .sum(),
            (Reduction::Mean, RowTargets::Probabilities(_)) => shape.rows as f64,
            (Reduction::Sum | Reduction::None, _) => 1.0,
        };
        let smoothing = f64::from(options.label_smoothing);
        Self {
            classes: shape.classes,
            spatial: shape.spatial,
            targets,
            weight,
            weight_sum: weight.map_or(shape.classes as f64, |weight| {
                weight.iter().map(|&w| f64::from(w)).sum()
            }),
            smoothing,
            keep: (1.0 - smoothing) as f32,
            uniform: smoothing / shape.classes as f64,
            z_loss: f64::from(options.z_loss),
            logit_scale: options.logit_scale,
            softcap: options.softcap.map(f64::from),
            row_stats,
            divisor,
            gradient_scale: if divisor == 0.0 { f64::NAN } else { 1.0 / divisor },
        }
    }

    /// The weight of `class` (1 without weights).
    fn weight_of(&self, class: usize) -> f64 {
        self.weight.map_or(1.0, |weight| f64::from(weight[class]))
    }

    /// The weights of classes `range` (ones without weights).
    fn weight_block(&self, range: std::ops::Range<usize>) -> &[f32] {
        match self.weight {
            Some(weight) => &weight[range],
            None => &ONES[..range.len()],
        }
    }
}

/// One row's results, before they are split into the output vectors.
#[derive(Clone, Copy, Debug, Default)]
struct RowResult {
    /// The row's loss, z-loss included.
    loss: f64,
    /// The z-loss part.
    z: f64,
    /// `logsumexp(x')`.
    lse: f32,
    /// First index of `max x'` (only with row statistics).
    argmax: u32,
}

/// `sum / divisor`, NaN over a zero divisor (every row ignored or of weight 0),
/// whatever the sum: PyTorch's nll term is 0/0 there, so its mean is NaN even
/// when label smoothing adds a positive sum.
fn mean_or_nan(sum: f64, divisor: f64) -> f64 {
    if divisor == 0.0 { f64::NAN } else { sum / divisor }
}

/// Splits the row results into [`CpuCrossEntropy`], reducing with sequential f64 sums.
fn collect(rows: &[RowResult], divisor: f64, row_stats: bool) -> CpuCrossEntropy {
    let loss_sum: f64 = rows.iter().map(|row| row.loss).sum();
    let z_sum: f64 = rows.iter().map(|row| row.z).sum();
    CpuCrossEntropy {
        row_losses: rows.iter().map(|row| row.loss as f32).collect(),
        row_z: rows.iter().map(|row| row.z as f32).collect(),
        row_lse: if row_stats {
            rows.iter().map(|row| row.lse).collect()
        } else {
            Vec::new()
        },
        row_argmax: if row_stats {
            rows.iter().map(|row| row.argmax).collect()
        } else {
            Vec::new()
        },
        loss: mean_or_nan(loss_sum, divisor) as f32,
        z_loss: mean_or_nan(z_sum, divisor) as f32,
    }
}

/// Splits the rows into rayon tasks of whole batch items (whole rows when
/// `spatial == 1`) holding at least [`MIN_TASK_ELEMENTS`] logits, each staged
/// in f32 where it has to be (see [`staging`]).
fn run_tasks(kernel: Kernel, plan: &Plan<'_>, logits: HostLogits<'_>, rows: &mut [RowResult]) {
    let item_elements = plan.classes * plan.spatial;
    let items_per_task = MIN_TASK_ELEMENTS.div_ceil(item_elements).max(1);
    let rows_per_task = items_per_task * plan.spatial;
    let run_task = |task: HostLogits<'_>, first_row: usize, rows: &mut [RowResult]| {
        staging::with_f32(task, |logits, gradient| {
            kernel.task(plan, logits, first_row, rows, gradient);
        });
    };
    if logits.logits().len() <= MIN_TASK_ELEMENTS {
        run_task(logits, 0, rows);
        return;
    }
    staging::split(logits, rows_per_task * plan.classes)
        .into_par_iter()
        .zip(rows.par_chunks_mut(rows_per_task))
        .enumerate()
        .for_each(|(task, (logits, rows))| run_task(logits, task * rows_per_task, rows));
}

impl Kernel {
    /// Runs one task (see [`task_body`]) with this build.
    fn task(
        self,
        plan: &Plan<'_>,
        logits: &[f32],
        first_row: usize,
        rows: &mut [RowResult],
        gradient: Option<&mut [f32]>,
    ) {
        match self {
            Self::Portable => task_body::<false>(plan, logits, first_row, rows, gradient),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx2Fma` is only chosen when the CPU reports AVX2 and FMA.
            Self::Avx2Fma => unsafe { task_avx2_fma(plan, logits, first_row, rows, gradient) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `Avx512` is only chosen when the CPU reports AVX-512 F/VL/DQ/BW, AVX2 and FMA.
            Self::Avx512 => unsafe { task_avx512(plan, logits, first_row, rows, gradient) },
        }
    }
}

x86_builds!(task_body(
    plan: &Plan<'_>,
    task_logits: &[f32],
    first_row: usize,
    rows: &mut [RowResult],
    gradient: Option<&mut [f32]>,
) => task_avx2_fma, task_avx512);

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
fn task_body<const FUSED: bool>(
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
        fold16(logits, f32::NEG_INFINITY, larger)
    } else {
        fold16(logits, f32::INFINITY, smaller)
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

/// `tanh(u)` in f64, branch-free so that the softcap loop vectorises (libm's
/// `tanh` is a call per logit, several times slower): `1 − 2/(e^{2u} + 1)`, with
/// `e^{2u}` from a Cody–Waite reduction and a degree-13 Taylor polynomial
/// (truncation error < 1e-17, evaluated by Estrin's scheme), and the reciprocal from an f32 division refined
/// by two Newton steps (an f64 division is the slowest step otherwise).
///
/// Absolute error < 1e-15, which is what the softmax of `t·tanh(u)` needs (its
/// relative error near `u = 0` is larger: `tanh(u) ≈ u` comes out of a
/// difference). `|u| ≥ 20` gives ±1 exactly; NaN gives NaN. Multiply-adds are
/// fused when `FUSED` (see [`mul_add`](super::exp::mul_add)).
#[inline(always)]
fn tanh_f64<const FUSED: bool>(u: f64) -> f64 {
    /// Beyond this, `2/(e^{2u} + 1)` is below half an ulp of 1.
    const SATURATED: f64 = 20.0;
    /// `1.5·2^52`: adding it rounds a float of magnitude `< 2^51` to an integer.
    const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
    /// `ln 2` split so that `n·LN2_HI` is exact for `|n| < 2^20`.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    /// `1/k!` for k = 2..=13.
    const INVERSE_FACTORIALS: [f64; 12] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    // Selects, not min/max, so that NaN passes through (and is restored below).
    let clamped = if u > SATURATED { SATURATED } else { u };
    let clamped = if clamped < -SATURATED { -SATURATED } else { clamped };
    // e^v with v = 2u = n·ln 2 + r, |r| ≤ ln 2 / 2, |n| ≤ 58.
    let v = 2.0 * clamped;
    let shifted = mul_add_f64::<FUSED>(v, std::f64::consts::LOG2_E, ROUND_MAGIC);
    let n = shifted - ROUND_MAGIC;
    let n_bits = (shifted.to_bits() as i64).wrapping_sub(ROUND_MAGIC.to_bits() as i64);
    let r = mul_add_f64::<FUSED>(-n, LN2_LO, mul_add_f64::<FUSED>(-n, LN2_HI, v));
    // Σ_k r^k/(k+2)! by Estrin's scheme: a dependency chain of 5 multiply-adds, not 11.
    let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11] = INVERSE_FACTORIALS;
    let fma = mul_add_f64::<FUSED>;
    let (r2, r4) = (r * r, r * r * (r * r));
    let low = fma(fma(c3, r, c2), r2, fma(c1, r, c0));
    let middle = fma(fma(c7, r, c6), r2, fma(c5, r, c4));
    let high = fma(fma(c11, r, c10), r2, fma(c9, r, c8));
    let poly = fma(fma(high, r4, middle), r4, low);
    let exp_r = fma(r2, poly, r) + 1.0;
    let exp_v = f64::from_bits((exp_r.to_bits() as i64).wrapping_add(n_bits.wrapping_shl(52)) as u64);
    // q = 1/(e^v + 1) in [1/(e^40 + 1), 1): f32 first (relative error 6e-8),
    // then q ← q·(2 − a·q) squares the error twice (below f64 rounding).
    let denominator = exp_v + 1.0;
    let mut reciprocal = f64::from(1.0 / denominator as f32);
    for _ in 0..2 {
        reciprocal *= mul_add_f64::<FUSED>(-denominator, reciprocal, 2.0);
    }
    let result = mul_add_f64::<FUSED>(-2.0, reciprocal, 1.0);
    if u.is_nan() { u } else { result }
}

/// `a·b + c` in f64, fused (one rounding) when `FUSED`; see [`mul_add`](super::exp::mul_add).
#[inline(always)]
fn mul_add_f64<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// Folds `values` over [`LANES`] lanes with `pick`, then the lanes pairwise.
#[inline(always)]
fn fold16(values: &[f32], init: f32, pick: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = pick(*lane, x);
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] = pick(lanes[i], lanes[i + width]);
        }
    }
    tail.iter().fold(lanes[0], |acc, &x| pick(acc, x))
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

/// `max(acc, x)` that keeps `acc` when `x` is NaN (one vector max instruction).
#[inline(always)]
fn larger(acc: f32, x: f32) -> f32 {
    if x > acc { x } else { acc }
}

/// `min(acc, x)` that keeps `acc` when `x` is NaN.
#[inline(always)]
fn smaller(acc: f32, x: f32) -> f32 {
    if x < acc { x } else { acc }
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

/// Sums f64 lanes pairwise.
#[inline(always)]
fn fold_lanes(mut lanes: [f64; LANES]) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0]
}

/// `lanes[i % LANES] += term(a[i], b[i])` over the block, in [`LANES`]-wide chunks.
#[inline(always)]
fn accumulate(lanes: &mut [f64; LANES], a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f64 + Copy) {
    let local = lanes;
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a_chunk, b_chunk) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in local.iter_mut().zip(a_chunk).zip(b_chunk) {
            *lane += term(x, y);
        }
    }
    for ((lane, &x), &y) in local.iter_mut().zip(a_tail).zip(b_tail) {
        *lane += term(x, y);
    }
}

/// `e` (the exponential of logit `x`) unless `x` is the extreme (then it is
/// counted instead), as a bit mask so that the loop stays branch-free. NaN
/// passes through.
#[inline(always)]
fn rest_term(x: f32, extreme: f32, e: f32) -> f64 {
    let keep_bits = 0u32.wrapping_sub(u32::from(x != extreme));
    f64::from(f32::from_bits(e.to_bits() & keep_bits))
}

/// f32 values per 64-byte cache line.
const CACHE_LINE_F32S: usize = 16;

/// Asks the CPU to start loading `values` into cache; only a hint (a no-op on
/// targets other than x86-64).
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
        accumulate(&mut rest, values, block_exps, move |x, e| rest_term(x, extreme, e));
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
        rest: fold_lanes(rest),
        margin: fold_lanes(margins),
        mass: fold_lanes(mass),
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
/// `lse`, loss and gradient are NaN, except that an ignored row keeps a loss
/// of 0 and a zero gradient.
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
        lse: f32::NAN,
        argmax: row.argmax as u32,
    }
}

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
struct GradientTerms {
    /// `scale·(A + 2·z·lse) / Σ e` (times s without a softcap).
    alpha: f64,
    /// `scale·ε/C` for class targets, `scale` for soft ones (times s without a softcap).
    beta: f64,
    /// `2·z·lse` (0 without z-loss).
    z_slope: f64,
    /// The row sums of pass 2.
    sums: RowSums,
}

impl GradientTerms {
    #[inline(always)]
    fn new(plan: &Plan<'_>, row: &PreparedRow<'_>, target: RowTarget<'_>, sums: &RowSums, lse: f64) -> Self {
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
        let folded = if row.softcap.is_some() {
            1.0
        } else {
            f64::from(plan.logit_scale)
        };
        Self {
            alpha: folded * slope / sums.sum_exp(),
            beta: folded * beta,
            z_slope,
            sums: *sums,
        }
    }
}

/// Pass 3: turns `gradient = e` into the gradient row, block by block.
#[inline(always)]
fn write_gradient<const FUSED: bool>(
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::cpu::reference::{ReferenceCrossEntropy, cross_entropy_f64};

    /// [`cross_entropy_host_with`] on f32 slices.
    fn cross_entropy_with(
        kernel: Kernel,
        logits: &[f32],
        targets: Targets<'_>,
        shape: Shape,
        options: &CrossEntropyOptions,
        gradient: Option<&mut [f32]>,
        row_stats: bool,
    ) -> CpuCrossEntropy {
        cross_entropy_host_with(
            kernel,
            HostLogits::from_f32(logits, gradient),
            targets,
            shape,
            options,
            row_stats,
        )
    }

    /// The kinds of logits the cases are drawn with.
    #[derive(Clone, Copy, Debug)]
    enum Logits {
        /// Standard normal.
        Normal,
        /// Standard normal times 30 (tanh saturates under a softcap; most exponentials underflow).
        Wide,
        /// Standard normal plus 1e4 (the offset must cancel).
        Offset,
        /// Target logit 3, the others about -23 (losses ~C·1e-11).
        Confident,
    }

    /// A standard normal sample (Box–Muller).
    fn normal(rng: &mut StdRng) -> f32 {
        let u: f64 = 1.0 - rng.random::<f64>();
        let v: f64 = rng.random();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Class indices, about a fifth of them `ignore_index` when it is not a class.
    fn class_targets(rng: &mut StdRng, shape: Shape, ignore_index: i64) -> Vec<i64> {
        (0..shape.rows)
            .map(|_| {
                if !(0..shape.classes as i64).contains(&ignore_index) && rng.random::<f32>() < 0.2 {
                    ignore_index
                } else {
                    rng.random_range(0..shape.classes as i64)
                }
            })
            .collect()
    }

    /// Probability rows (about a third of the entries exactly 0), in the logits' layout.
    fn probability_targets(rng: &mut StdRng, shape: Shape) -> Vec<f32> {
        let mut probabilities = vec![0.0f32; shape.rows * shape.classes];
        for row in 0..shape.rows {
            let raw: Vec<f32> = (0..shape.classes)
                .map(|_| {
                    if rng.random::<f32>() < 0.33 {
                        0.0
                    } else {
                        rng.random::<f32>()
                    }
                })
                .collect();
            let total: f32 = raw.iter().sum::<f32>().max(f32::MIN_POSITIVE);
            for (class, &value) in raw.iter().enumerate() {
                probabilities[shape.index(row, class)] = value / total;
            }
        }
        probabilities
    }

    /// Logits of `kind`; `Confident` puts the large logit on `classes[row]` (or class 0).
    fn make_logits(rng: &mut StdRng, shape: Shape, kind: Logits, classes: &[i64]) -> Vec<f32> {
        let mut logits = vec![0.0f32; shape.rows * shape.classes];
        for row in 0..shape.rows {
            let target = classes
                .get(row)
                .map_or(0, |&class| class.clamp(0, shape.classes as i64 - 1) as usize);
            for class in 0..shape.classes {
                logits[shape.index(row, class)] = match kind {
                    Logits::Normal => normal(rng),
                    Logits::Wide => 30.0 * normal(rng),
                    Logits::Offset => 1e4 + normal(rng),
                    Logits::Confident if class == target => 3.0,
                    Logits::Confident => -23.0 + 0.1 * normal(rng),
                };
            }
        }
        logits
    }

    /// Random class weights in [0.1, 3].
    fn weights(rng: &mut StdRng, classes: usize) -> Vec<f32> {
        (0..classes).map(|_| 0.1 + 2.9 * rng.random::<f32>()).collect()
    }

    /// Largest errors seen, relative to each check's tolerance unit.
    #[derive(Debug, Default)]
    struct Worst {
        /// max |loss − ref| / |ref| over losses above 1e-6.
        loss_relative: f64,
        /// max |g − g_ref| / (scale·max(1, w_max)·(1 + 2z·max|lse|)).
        gradient: f64,
        /// max |lse − ref| / (1 + |ref|).
        lse: f64,
    }

    /// One case of the comparison with the reference.
    struct Case<'a> {
        label: String,
        logits: &'a [f32],
        targets: Targets<'a>,
        shape: Shape,
        options: CrossEntropyOptions,
    }

    fn check_loss(label: &str, actual: f32, expected: f64, worst: &mut Worst) {
        if expected.is_nan() {
            assert!(actual.is_nan(), "{label}: {actual:e}, expected NaN");
            return;
        }
        let error = (f64::from(actual) - expected).abs();
        assert!(
            error <= 1e-5 * expected.abs() + 1e-12,
            "{label}: {actual:e} vs reference {expected:e}"
        );
        if expected.abs() > 1e-6 {
            worst.loss_relative = worst.loss_relative.max(error / expected.abs());
        }
    }

    /// The unit of the gradient tolerance: the gradient's scale (1/D for the
    /// mean), times the largest weight where it exceeds 1, times `1 + 2z·max|lse|`
    /// (the z-loss adds `2z·lse·p_c` to every entry: with logits near 1e4 the
    /// gradient itself is ~20× larger, and so is its f32 rounding).
    fn gradient_unit(case: &Case<'_>, expected: &ReferenceCrossEntropy) -> f64 {
        let options = &case.options;
        let divisor = if options.reduction == Reduction::Mean {
            Plan::new(case.targets, case.shape, options, true).divisor
        } else {
            1.0
        };
        let max_weight = options
            .weight
            .as_ref()
            .map_or(1.0, |w| w.iter().fold(1.0f32, |a, &b| a.max(b)));
        let max_lse = expected
            .row_lse
            .iter()
            .filter(|lse| lse.is_finite())
            .fold(0.0f64, |a, &b| a.max(b.abs()));
        let z_slope = 1.0 + 2.0 * f64::from(options.z_loss) * max_lse;
        f64::from(max_weight) * z_slope / divisor
    }

    /// Runs `kernel` on `case` with and without row statistics and a gradient and
    /// compares everything with the f64 reference.
    fn check_case(kernel: Kernel, case: &Case<'_>, worst: &mut Worst) {
        let expected = cross_entropy_f64(case.logits, case.targets, case.shape, &case.options);
        let mut gradient = vec![f32::NAN; case.logits.len()];
        let actual = cross_entropy_with(
            kernel,
            case.logits,
            case.targets,
            case.shape,
            &case.options,
            Some(&mut gradient),
            true,
        );
        let label = &case.label;
        for row in 0..case.shape.rows {
            check_loss(
                &format!("{label} row {row} loss"),
                actual.row_losses[row],
                expected.row_losses[row],
                worst,
            );
            check_loss(
                &format!("{label} row {row} z"),
                actual.row_z[row],
                expected.row_z[row],
                worst,
            );
            let (lse, expected_lse) = (actual.row_lse[row], expected.row_lse[row]);
            if expected_lse.is_nan() {
                assert!(lse.is_nan(), "{label} row {row}: lse {lse:e}, expected NaN");
            } else {
                let error = (f64::from(lse) - expected_lse).abs() / (1.0 + expected_lse.abs());
                assert!(
                    error <= 1e-6,
                    "{label} row {row}: lse {lse:e} vs reference {expected_lse:e}"
                );
                worst.lse = worst.lse.max(error);
            }
            assert_eq!(
                actual.row_argmax[row], expected.row_argmax[row],
                "{label} row {row}: argmax"
            );
        }
        check_loss(&format!("{label} loss"), actual.loss, expected.loss, worst);
        check_loss(&format!("{label} z_loss"), actual.z_loss, expected.z_loss, worst);

        let unit = gradient_unit(case, &expected);
        for (index, (&g, &expected)) in gradient.iter().zip(&expected.gradient).enumerate() {
            if expected.is_nan() {
                assert!(g.is_nan(), "{label} gradient[{index}] = {g:e}, expected NaN");
                continue;
            }
            let error = (f64::from(g) - expected).abs() / unit;
            assert!(
                error <= 1e-6,
                "{label} gradient[{index}] = {g:e} vs reference {expected:e}"
            );
            worst.gradient = worst.gradient.max(error);
        }

        // Without row statistics and without a gradient: the same losses, bit for bit
        // (the plain case goes to the fast path, which is checked against the reference).
        let lean = cross_entropy_with(
            kernel,
            case.logits,
            case.targets,
            case.shape,
            &case.options,
            None,
            false,
        );
        assert!(lean.row_lse.is_empty() && lean.row_argmax.is_empty(), "{label}");
        if plain_class_targets(case.targets, case.shape, &case.options).is_none() {
            assert_eq!(
                bits(&lean.row_losses),
                bits(&actual.row_losses),
                "{label}: losses without gradient"
            );
            assert_eq!(lean.loss.to_bits(), actual.loss.to_bits(), "{label}");
        } else {
            for row in 0..case.shape.rows {
                check_loss(
                    &format!("{label} fast row {row}"),
                    lean.row_losses[row],
                    expected.row_losses[row],
                    worst,
                );
            }
        }
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|value| value.to_bits()).collect()
    }

    /// Options alone and combined; `weight` has one entry per class.
    fn option_cases(weight: &[f32]) -> Vec<(&'static str, CrossEntropyOptions)> {
        let base = CrossEntropyOptions::default();
        let weight = Some(weight.to_vec());
        vec![
            ("plain", base.clone()),
            (
                "weight",
                CrossEntropyOptions {
                    weight: weight.clone(),
                    ..base.clone()
                },
            ),
            (
                "ignore_index class 1",
                CrossEntropyOptions {
                    ignore_index: 1,
                    ..base.clone()
                },
            ),
            (
                "smoothing",
                CrossEntropyOptions {
                    label_smoothing: 0.1,
                    ..base.clone()
                },
            ),
            (
                "smoothing 1",
                CrossEntropyOptions {
                    label_smoothing: 1.0,
                    ..base.clone()
                },
            ),
            (
                "weight+ignore+smoothing",
                CrossEntropyOptions {
                    weight: weight.clone(),
                    label_smoothing: 0.2,
                    ..base.clone()
                },
            ),
            (
                "z_loss",
                CrossEntropyOptions {
                    z_loss: 1e-3,
                    ..base.clone()
                },
            ),
            (
                "softcap",
                CrossEntropyOptions {
                    softcap: Some(15.0),
                    ..base.clone()
                },
            ),
            (
                "z_loss+softcap",
                CrossEntropyOptions {
                    z_loss: 1e-2,
                    softcap: Some(30.0),
                    ..base.clone()
                },
            ),
            (
                "logit_scale 0.7",
                CrossEntropyOptions {
                    logit_scale: 0.7,
                    ..base.clone()
                },
            ),
            (
                "logit_scale -1.3",
                CrossEntropyOptions {
                    logit_scale: -1.3,
                    ..base.clone()
                },
            ),
            (
                "everything",
                CrossEntropyOptions {
                    weight,
                    label_smoothing: 0.05,
                    z_loss: 1e-4,
                    softcap: Some(20.0),
                    logit_scale: 1.5,
                    ..base
                },
            ),
        ]
    }

    const KINDS: [Logits; 4] = [Logits::Normal, Logits::Wide, Logits::Offset, Logits::Confident];
    const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

    /// Every option case, reduction and kind of logits on `shape`, with class and soft targets.
    fn check_shape(rng: &mut StdRng, shape: Shape, kernel: Kernel, worst: &mut Worst) {
        let weight = weights(rng, shape.classes);
        for (name, options) in option_cases(&weight) {
            for kind in KINDS {
                let classes = class_targets(rng, shape, options.ignore_index);
                let probabilities = probability_targets(rng, shape);
                let logits = make_logits(rng, shape, kind, &classes);
                for reduction in REDUCTIONS {
                    let options = CrossEntropyOptions {
                        reduction,
                        ..options.clone()
                    };
                    for targets in [Targets::I64(&classes), Targets::Probabilities(&probabilities)] {
                        let soft = if targets.is_probabilities() { " soft" } else { "" };
                        let case = Case {
                            label: format!("{kernel:?} {shape:?} {name}{soft} {reduction} {kind:?}"),
                            logits: &logits,
                            targets,
                            shape,
                            options: options.clone(),
                        };
                        check_case(kernel, &case, worst);
                    }
                }
            }
        }
    }

    #[test]
    fn matches_reference_for_every_option() {
        let mut rng = StdRng::seed_from_u64(0x9e11_e2a1);
        for kernel in Kernel::available() {
            let mut worst = Worst::default();
            for (rows, classes) in [(1, 1), (3, 2), (5, 7), (4, 257), (2, 1000), (17, 33)] {
                check_shape(&mut rng, Shape::new(rows, classes), kernel, &mut worst);
            }
            println!("{kernel:?} row-major, worst: {worst:?}");
        }
    }

    #[test]
    fn matches_reference_in_the_nd_layout() {
        let mut rng = StdRng::seed_from_u64(0x0d1a_2d3e);
        for kernel in Kernel::available() {
            let mut worst = Worst::default();
            for shape in [
                Shape::nd(2, 5, &[3, 4]).expect("shape"),
                Shape::nd(1, 300, &[2, 3]).expect("shape"),
                Shape::nd(3, 1, &[2]).expect("shape"),
            ] {
                check_shape(&mut rng, shape, kernel, &mut worst);
            }
            println!("{kernel:?} N-d, worst: {worst:?}");
        }
    }

    #[test]
    fn multi_task_split_matches_reference_and_is_deterministic() {
        // More than MIN_TASK_ELEMENTS logits, so rayon splits the rows (or batch items).
        let mut rng = StdRng::seed_from_u64(5);
        let mut worst = Worst::default();
        for shape in [Shape::new(40, 4000), Shape::nd(8, 1000, &[17]).expect("shape")] {
            let weight = weights(&mut rng, shape.classes);
            let options = CrossEntropyOptions {
                weight: Some(weight),
                label_smoothing: 0.1,
                z_loss: 1e-4,
                softcap: Some(30.0),
                ..CrossEntropyOptions::default()
            };
            let classes = class_targets(&mut rng, shape, options.ignore_index);
            let logits = make_logits(&mut rng, shape, Logits::Normal, &classes);
            let case = Case {
                label: format!("{shape:?}"),
                logits: &logits,
                targets: Targets::I64(&classes),
                shape,
                options: options.clone(),
            };
            check_case(Kernel::detected(), &case, &mut worst);
            let run = || {
                let mut gradient = vec![0.0f32; logits.len()];
                let result = cross_entropy(
                    &logits,
                    Targets::I64(&classes),
                    shape,
                    &options,
                    Some(&mut gradient),
                    true,
                );
                (result, bits(&gradient))
            };
            assert_eq!(run(), run(), "{shape:?}: not deterministic");
        }
        println!("multi-task, worst: {worst:?}");
    }

    #[test]
    fn nan_inf_and_ignored_rows() {
        let shape = Shape::new(5, 4);
        let logits = [
            1.0,
            f32::NAN,
            0.0,
            2.0, // row 0: NaN
            1.0,
            f32::INFINITY,
            0.0,
            2.0, // row 1: +inf
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY, // row 2: all -inf
            f32::NAN,
            f32::INFINITY,
            0.0,
            1.0, // row 3: ignored
            0.5,
            f32::NEG_INFINITY,
            0.25,
            2.0, // row 4: finite (one -inf)
        ];
        let classes = [0i64, 2, 1, -100, 3];
        let weight = vec![0.5, 1.0, 2.0, 1.5];
        for options in [
            CrossEntropyOptions::default(),
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                z_loss: 1e-3,
                ..CrossEntropyOptions::default()
            },
            CrossEntropyOptions {
                softcap: Some(10.0),
                logit_scale: -2.0,
                ..CrossEntropyOptions::default()
            },
        ] {
            let expected = cross_entropy_f64(&logits, Targets::I64(&classes), shape, &options);
            for kernel in Kernel::available() {
                let mut gradient = vec![0.5f32; logits.len()];
                let actual = cross_entropy_with(
                    kernel,
                    &logits,
                    Targets::I64(&classes),
                    shape,
                    &options,
                    Some(&mut gradient),
                    true,
                );
                let label = format!("{kernel:?} {options:?}");
                for row in 0..shape.rows {
                    let (loss, expected_loss) = (actual.row_losses[row], expected.row_losses[row]);
                    assert_eq!(
                        loss.is_nan(),
                        expected_loss.is_nan(),
                        "{label} row {row}: {loss} vs {expected_loss}"
                    );
                    assert_eq!(actual.row_argmax[row], expected.row_argmax[row], "{label} row {row}");
                    let gradient_row = &gradient[row * 4..row * 4 + 4];
                    let expected_row = &expected.gradient[row * 4..row * 4 + 4];
                    for (g, e) in gradient_row.iter().zip(expected_row) {
                        assert_eq!(
                            g.is_nan(),
                            e.is_nan(),
                            "{label} row {row}: {gradient_row:?} vs {expected_row:?}"
                        );
                    }
                }
                // The ignored row: loss 0 and an exactly zero gradient, despite its NaN and inf.
                assert_eq!(actual.row_losses[3], 0.0, "{label}");
                assert_eq!(actual.row_z[3], 0.0, "{label}");
                assert!(
                    gradient[12..16].iter().all(|&g| g == 0.0 && g.is_sign_positive()),
                    "{label}"
                );
                assert!(actual.row_losses[4].is_finite(), "{label}");
            }
        }
        // The softcap maps +inf to t: row 1 stays finite.
        let capped = CrossEntropyOptions {
            softcap: Some(10.0),
            ..CrossEntropyOptions::default()
        };
        let actual = cross_entropy(&logits, Targets::I64(&classes), shape, &capped, None, true);
        assert!(actual.row_losses[1].is_finite() && actual.row_losses[0].is_nan());
    }

    #[test]
    fn all_rows_ignored_or_zero_weight() {
        let shape = Shape::new(3, 4);
        let logits: Vec<f32> = (0..12).map(|i| i as f32 * 0.3).collect();
        let cases = [
            (vec![-100i64, -100, -100], CrossEntropyOptions::default()),
            (
                vec![0, 1, 0],
                CrossEntropyOptions {
                    weight: Some(vec![0.0, 0.0, 1.0, 1.0]),
                    ..CrossEntropyOptions::default()
                },
            ),
        ];
        for (classes, options) in cases {
            for row_stats in [false, true] {
                let mut gradient = vec![f32::NAN; 12];
                let mean = cross_entropy(
                    &logits,
                    Targets::I64(&classes),
                    shape,
                    &options,
                    Some(&mut gradient),
                    row_stats,
                );
                assert!(mean.loss.is_nan(), "{options:?}: mean {}", mean.loss);
                // PyTorch: ignored rows 0, rows of weight 0 NaN (w_y · (−1/0)).
                let all_ignored = classes.iter().all(|&class| class == -100);
                assert!(
                    gradient
                        .iter()
                        .all(|&g| if all_ignored { g == 0.0 } else { g.is_nan() }),
                    "{options:?}: {gradient:?}"
                );
                let sum_options = CrossEntropyOptions {
                    reduction: Reduction::Sum,
                    ..options.clone()
                };
                let sum = cross_entropy(&logits, Targets::I64(&classes), shape, &sum_options, None, row_stats);
                assert_eq!(sum.loss, 0.0);
            }
        }
    }

    #[test]
    fn plain_case_goes_to_the_fast_path() {
        let mut rng = StdRng::seed_from_u64(3);
        let shape = Shape::new(9, 300);
        let classes: Vec<u32> = (0..shape.rows).map(|_| rng.random_range(0..300)).collect();
        let logits = make_logits(&mut rng, shape, Logits::Normal, &[]);
        let mut gradient = vec![0.0f32; logits.len()];
        let options = CrossEntropyOptions::default();
        let result = cross_entropy(
            &logits,
            Targets::U32(&classes),
            shape,
            &options,
            Some(&mut gradient),
            false,
        );
        let mut fast_losses = vec![0.0f32; shape.rows];
        let mut fast_gradient = vec![0.0f32; logits.len()];
        fast::fused_rows(
            &logits,
            &classes,
            300,
            Some((&mut fast_gradient, 1.0 / 9.0)),
            &mut fast_losses,
        );
        assert_eq!(bits(&result.row_losses), bits(&fast_losses));
        assert_eq!(bits(&gradient), bits(&fast_gradient));
        assert_eq!(result.row_z, vec![0.0; 9]);
        assert!(result.row_lse.is_empty() && result.row_argmax.is_empty());
        assert_eq!(
            f64::from(result.loss),
            (fast::sum_f64(&fast_losses) / 9.0) as f32 as f64
        );
    }

    #[test]
    fn matches_pytorch_fixtures() {
        use crate::cpu::reference::tests::pytorch::cross_entropy_fixtures;
        let fixtures = cross_entropy_fixtures();
        assert!(fixtures.len() >= 80);
        let (mut loss_relative, mut gradient_absolute) = (0.0f64, 0.0f64);
        for kernel in Kernel::available() {
            for fixture in &fixtures {
                let (name, shape, options) = (&fixture.name, fixture.shape, &fixture.options);
                let mut gradient = vec![f32::NAN; fixture.logits.len()];
                let result = cross_entropy_with(
                    kernel,
                    &fixture.logits,
                    fixture.targets(),
                    shape,
                    options,
                    Some(&mut gradient),
                    true,
                );
                let (actual, expected): (Vec<f64>, &[f64]) = if options.reduction == Reduction::None {
                    (
                        result.row_losses.iter().map(|&loss| f64::from(loss)).collect(),
                        &fixture.loss,
                    )
                } else {
                    (vec![f64::from(result.loss)], &fixture.loss)
                };
                for (&actual, &expected) in actual.iter().zip(expected) {
                    if fixture.expect_nan {
                        assert!(actual.is_nan(), "{kernel:?} {name}: {actual}");
                        continue;
                    }
                    let error = (actual - expected).abs();
                    assert!(
                        error <= 1e-5 * expected.abs() + 1e-12,
                        "{kernel:?} {name}: {actual:e} vs PyTorch {expected:e}"
                    );
                    if expected.abs() > 1e-6 {
                        loss_relative = loss_relative.max(error / expected.abs());
                    }
                }
                if let Some(expected) = &fixture.gradient {
                    // Relative to the case's largest gradient entry (its scale: 1/D, weights, z-loss slope).
                    let expected_max = expected.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
                    for (index, (&g, &expected)) in gradient.iter().zip(expected).enumerate() {
                        let error = (f64::from(g) - expected).abs();
                        assert!(
                            error <= 1e-6 * expected_max.max(1e-3),
                            "{kernel:?} {name} gradient[{index}]: {g:e} vs {expected:e}"
                        );
                        gradient_absolute = gradient_absolute.max(error);
                    }
                }
            }
        }
        println!("general vs PyTorch, worst: loss relative {loss_relative:e}, gradient absolute {gradient_absolute:e}");
    }

    #[test]
    fn target_types_agree() {
        let mut rng = StdRng::seed_from_u64(17);
        let shape = Shape::new(6, 9);
        let classes: Vec<i64> = vec![0, 8, 3, -100, 4, 4];
        let logits = make_logits(&mut rng, shape, Logits::Normal, &classes);
        let options = CrossEntropyOptions {
            label_smoothing: 0.1,
            ..CrossEntropyOptions::default()
        };
        let as_i32: Vec<i32> = classes.iter().map(|&class| class as i32).collect();
        let run = |targets: Targets<'_>| {
            let mut gradient = vec![0.0f32; logits.len()];
            let result = cross_entropy(&logits, targets, shape, &options, Some(&mut gradient), true);
            (result, bits(&gradient))
        };
        assert_eq!(run(Targets::I64(&classes)), run(Targets::I32(&as_i32)));
        // u32 cannot hold -100: the same rows with ignore_index 7 (not a target here).
        let u32_options = CrossEntropyOptions {
            ignore_index: 7,
            ..options.clone()
        };
        let as_u32: Vec<u32> = classes
            .iter()
            .map(|&class| if class < 0 { 7 } else { class as u32 })
            .collect();
        let as_i64: Vec<i64> = as_u32.iter().map(|&class| i64::from(class)).collect();
        let mut first = vec![0.0f32; logits.len()];
        let mut second = vec![0.0f32; logits.len()];
        let a = cross_entropy(
            &logits,
            Targets::U32(&as_u32),
            shape,
            &u32_options,
            Some(&mut first),
            true,
        );
        let b = cross_entropy(
            &logits,
            Targets::I64(&as_i64),
            shape,
            &u32_options,
            Some(&mut second),
            true,
        );
        assert_eq!((a, bits(&first)), (b, bits(&second)));
    }

    #[test]
    fn tanh_matches_libm() {
        for (name, tanh) in [
            ("plain", tanh_f64::<false> as fn(f64) -> f64),
            ("fused", tanh_f64::<true>),
        ] {
            let mut worst = 0.0f64;
            let mut u = -25.0f64;
            while u < 25.0 {
                worst = worst.max((tanh(u) - u.tanh()).abs());
                u += 1.37e-4;
            }
            println!("tanh_f64 ({name}): worst absolute error {worst:e}");
            assert!(worst <= 1e-15, "{name}: worst absolute error {worst:e}");
            // Absolute, not relative, accuracy near 0 (where tanh(u) ≈ u comes out of a difference).
            for u in [1e-300, 1e-20, 1e-8, 0.3, 19.0, 20.0, 700.0, f64::INFINITY] {
                assert!(
                    (tanh(u) - u.tanh()).abs() <= 2.0 * f64::EPSILON,
                    "{name}: tanh({u}) = {}",
                    tanh(u)
                );
                assert!((tanh(-u) + tanh(u)).abs() <= 2.0 * f64::EPSILON, "{name}: tanh(-{u})");
            }
            assert_eq!(tanh(0.0), 0.0, "{name}");
            assert_eq!(tanh(25.0), 1.0, "{name}");
            assert!(tanh(f64::NAN).is_nan(), "{name}");
        }
    }

    #[test]
    fn confident_rows_keep_relative_precision() {
        // Target 0, the others exactly 23 lower: loss = w_0·ln(1 + (C−1)·e^-23), gradient at the target ≈ −w_0·(C−1)·e^-23.
        for classes in [2usize, 7, 1000] {
            let mut logits = vec![-23.0f32; classes];
            logits[0] = 0.0;
            let others = (classes - 1) as f64 * (-23.0f64).exp();
            let options = CrossEntropyOptions {
                weight: Some(vec![0.75; classes]),
                reduction: Reduction::Sum,
                ..CrossEntropyOptions::default()
            };
            for kernel in Kernel::available() {
                let mut gradient = vec![0.0f32; classes];
                let shape = Shape::new(1, classes);
                let result = cross_entropy_with(
                    kernel,
                    &logits,
                    Targets::I64(&[0]),
                    shape,
                    &options,
                    Some(&mut gradient),
                    true,
                );
                let expected_loss = 0.75 * others.ln_1p();
                let loss_error = (f64::from(result.loss) - expected_loss).abs() / expected_loss;
                assert!(loss_error <= 1e-6, "C={classes} {kernel:?}: loss {:e}", result.loss);
                let expected_gradient = -0.75 * others / (1.0 + others);
                let gradient_error = (f64::from(gradient[0]) - expected_gradient).abs() / expected_gradient.abs();
                assert!(
                    gradient_error <= 1e-6,
                    "C={classes} {kernel:?}: gradient {:e}",
                    gradient[0]
                );
            }
        }
    }
}

/// Timings (release builds): `cargo test --release --lib cpu::general::timing -- --ignored --nocapture`,
/// with `XENT_TIMING_ROWS` (default 4096 rows of 32000 classes), `XENT_TIMING_ONLY` (a
/// substring of the case names) and `RAYON_NUM_THREADS`.
#[cfg(test)]
mod timing {
    use std::time::Instant;

    use super::*;

    /// CPU time of every thread of this process so far, in nanoseconds (Linux:
    /// `/proc/self/task/*/schedstat`; 0 elsewhere). Unlike wall time, it does not
    /// count the time this process waits for a core on a busy machine.
    fn cpu_time_ns() -> u64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Best wall time and best CPU time of `runs` calls of `call`, in milliseconds.
    fn best_ms(runs: usize, mut call: impl FnMut()) -> (f64, f64) {
        (0..runs)
            .map(|_| {
                let (start, cpu_start) = (Instant::now(), cpu_time_ns());
                call();
                (
                    start.elapsed().as_secs_f64() * 1e3,
                    (cpu_time_ns() - cpu_start) as f64 / 1e6,
                )
            })
            .fold((f64::INFINITY, f64::INFINITY), |(wall, cpu), (w, c)| {
                (wall.min(w), cpu.min(c))
            })
    }

    #[test]
    #[ignore = "timing, run explicitly in release"]
    fn large_batch() {
        let rows = std::env::var("XENT_TIMING_ROWS")
            .ok()
            .and_then(|rows| rows.parse().ok())
            .unwrap_or(4096);
        let classes = 32000;
        let shape = Shape::new(rows, classes);
        // Cheap deterministic pseudo-random logits in about [-4, 4].
        let logits: Vec<f32> = (0..rows * classes)
            .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
            .collect();
        let targets: Vec<i64> = (0..rows).map(|row| (row * 7919 % classes) as i64).collect();
        let weight: Vec<f32> = (0..classes).map(|class| 0.5 + (class % 3) as f32 * 0.5).collect();
        let probabilities: Vec<f32> = vec![1.0 / classes as f32; rows * classes];
        let mut gradient = vec![0.0f32; rows * classes];
        let plain = CrossEntropyOptions::default();
        let options = [
            ("plain (fast path)", plain.clone(), false),
            ("plain, row stats (general)", plain.clone(), true),
            (
                "z 1e-30, no row stats (general)",
                CrossEntropyOptions {
                    z_loss: 1e-30,
                    ..plain.clone()
                },
                false,
            ),
            (
                "weight + smoothing + z-loss",
                CrossEntropyOptions {
                    weight: Some(weight.clone()),
                    label_smoothing: 0.1,
                    z_loss: 1e-4,
                    ..plain.clone()
                },
                true,
            ),
            (
                "logit_scale 0.7",
                CrossEntropyOptions {
                    logit_scale: 0.7,
                    ..plain.clone()
                },
                true,
            ),
            (
                "softcap 30",
                CrossEntropyOptions {
                    softcap: Some(30.0),
                    ..plain.clone()
                },
                true,
            ),
        ];
        let only = std::env::var("XENT_TIMING_ONLY").unwrap_or_default();
        for (name, options, row_stats) in options.iter().filter(|(name, ..)| name.contains(&only)) {
            let targets = Targets::I64(&targets);
            let (wall, cpu) = best_ms(5, || {
                cross_entropy(&logits, targets, shape, options, Some(&mut gradient), *row_stats);
            });
            let (loss_wall, loss_cpu) = best_ms(5, || {
                cross_entropy(&logits, targets, shape, options, None, *row_stats);
            });
            println!(
                "{rows}x{classes} {name}: loss+gradient {wall:.0} ms (CPU {cpu:.0} ms), loss only {loss_wall:.0} ms (CPU {loss_cpu:.0} ms)"
            );
        }
        let soft = CrossEntropyOptions {
            weight: Some(weight),
            label_smoothing: 0.1,
            ..plain
        };
        if "soft targets".contains(&only) {
            let (wall, cpu) = best_ms(5, || {
                cross_entropy(
                    &logits,
                    Targets::Probabilities(&probabilities),
                    shape,
                    &soft,
                    Some(&mut gradient),
                    true,
                );
            });
            println!(
                "{rows}x{classes} soft targets + weight + smoothing: loss+gradient {wall:.0} ms (CPU {cpu:.0} ms)"
            );
        }
    }
}
