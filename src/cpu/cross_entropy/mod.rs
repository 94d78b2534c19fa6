//! The cross-entropy on the CPU (the loss of
//! [`CrossEntropyLoss`](crate::CrossEntropyLoss)), with PyTorch's semantics: the door
//! [`cross_entropy_batch`], which works out the call and reduces its rows, and
//! the row loops behind it.
//!
//! - [`fast`]: the tuned plain loss, the benchmark baseline. The plain case (no
//!   weight, `ε = 0`, `z = 0`, no softcap, logit scale 1, row-major logits, no
//!   ignored row, no row statistics asked for) goes there.
//! - [`general`]: every option of [`CrossEntropyOptions`] (and pass 3, the
//!   gradient, in `general/gradient.rs`), on the per-call constants of [`plan`].
//! - `reference`: the f64 truth the tests compare both with (and, behind the
//!   `reference` feature, `xent::reference`).
//!
//! Tasks of rows and their f32 staging are in [`tasks`](crate::cpu::tasks), the
//! lane folds both loops share in [`lanes`](crate::cpu::lanes), the choice of
//! build (portable, AVX2+FMA, AVX-512) in [`isa`](crate::cpu::isa).

pub(crate) mod fast;
mod general;
mod plan;
#[cfg(any(test, feature = "reference"))]
pub(crate) mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

use self::plan::{Plan, class_indices};
use crate::cpu::isa::Kernel;
use crate::error::Result;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{HostBatch, HostLogits, Loss, LossOutput, Shape, Targets};

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
        Kernel::detected(),
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
    let row_stats = batch.row_stats;
    let kernel = Kernel::detected();
    let result = cross_entropy_host(kernel, batch.logits, batch.targets, batch.shape, options, row_stats);
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

/// [`cross_entropy`] on logits of any element type with the given build of the
/// row loop, the gradient going where `logits` says: 16-bit rows and in-place
/// gradients are staged in f32 one task at a time (see
/// [`tasks`](crate::cpu::tasks)), never as a whole N×C copy.
pub(crate) fn cross_entropy_host(
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
    general::run_tasks(kernel, &plan, logits, &mut rows);
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
