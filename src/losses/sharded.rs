//! The vocabulary-sharded categorical cross-entropy, [`ShardedCrossEntropy`]:
//! for an LM head whose vocabulary is split over devices (tensor parallelism),
//! each device computes per-row statistics of its slice of the logits, the
//! statistics are combined exactly (an all-reduce: `max`, then `sum`), and each
//! device computes the gradient of its slice from the combined per-row values.
//!
//! The math is at the top of `cpu/sharded.rs` (CPU) and
//! `shaders/sharded.wgsl` (GPU); the data types in `types/sharded.rs`.

use crate::backend::Backend;
use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernels::sharded::{self as gpu_sharded, ShardedKernels};
use crate::losses::cross_entropy::CrossEntropyLoss;
use crate::options::CrossEntropyOptions;
use crate::types::{
    CombinedStats, Shape, ShardStats, ShardSums, Targets, VocabShard, check_rows, check_shard_targets, check_tiling,
};

/// The categorical cross-entropy of a vocabulary split into [`VocabShard`]s,
/// with every option of [`CrossEntropyOptions`] for class-index targets
/// (reductions, `ignore_index`, class weights, label smoothing, z-loss, softcap,
/// logit scale) and f32 logits. It gives the loss and gradient of the unsharded
/// [`CrossEntropyLoss`] with the same options, to f32 rounding.
///
/// A step, per shard and then once (each shard on its own [`Backend`]: the CPU,
/// a GPU [`Context`](crate::Context), or one context per device):
///
/// 1. [`stats`](Self::stats): per-row statistics of the shard's logits (`rows × shard.len()`);
/// 2. [`combine_shards`](Self::combine_shards): the loss and per-row
///    coefficients, in a fixed shard order (deterministic);
/// 3. [`gradient`](Self::gradient): the shard's part of dL/dlogits.
///
/// Across processes, step 2 is an all-reduce: all-reduce [`ShardStats::max`]
/// with `max`; each rank rescales its statistics to that maximum
/// ([`ShardStats::sums_at`]); all-reduce [`ShardSums::values_mut`] with `sum`;
/// every rank then calls [`combine_sums`](Self::combine_sums) and gets the same
/// [`CombinedStats`].
///
/// Class weights are those of the whole vocabulary (`total_classes` entries);
/// each shard reads its own range. Soft targets are not supported (an
/// [`Error::InvalidOption`]); logits are f32 slices (no f16 / bf16 yet).
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, ShardedCrossEntropy, Shape, VocabShard};
///
/// let logits = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0]; // one row of 6 classes
/// let targets = [4i64];
/// let sharded = ShardedCrossEntropy::from(CrossEntropyLoss::new().label_smoothing(0.1));
/// let (left, right) = (VocabShard::new(0, 4, 6)?, VocabShard::new(4, 2, 6)?);
/// let stats = [
///     sharded.stats(&Cpu, left, &logits[..4], &targets)?,
///     sharded.stats(&Cpu, right, &logits[4..], &targets)?,
/// ];
/// let combined = sharded.combine_shards(&stats, &targets)?;
/// let mut gradient = [0.0f32; 6];
/// let (left_gradient, right_gradient) = gradient.split_at_mut(4);
/// sharded.gradient(&Cpu, left, &logits[..4], &targets, &combined, left_gradient)?;
/// sharded.gradient(&Cpu, right, &logits[4..], &targets, &combined, right_gradient)?;
///
/// let mut expected = [0.0f32; 6];
/// let whole = CrossEntropyLoss::new().label_smoothing(0.1);
/// let loss = whole.loss_and_grad(&Cpu, &logits, &targets, Shape::new(1, 6), &mut expected)?;
/// assert!((combined.loss.value().unwrap() - loss.value().unwrap()).abs() < 1e-6);
/// assert!(gradient.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardedCrossEntropy {
    options: CrossEntropyOptions,
}

impl From<CrossEntropyLoss> for ShardedCrossEntropy {
    fn from(loss: CrossEntropyLoss) -> Self {
        Self::with_options(loss.options().clone())
    }
}

impl ShardedCrossEntropy {
    /// The options (`weight`, if any, has one entry per class of the whole vocabulary).
    ///
    /// ```
    /// use xent::{CrossEntropyLoss, ShardedCrossEntropy};
    ///
    /// let sharded = ShardedCrossEntropy::from(CrossEntropyLoss::new().ignore_index(-1));
    /// assert_eq!(sharded.options().ignore_index, -1);
    /// ```
    pub fn options(&self) -> &CrossEntropyOptions {
        &self.options
    }

    /// The sharded loss with these options.
    ///
    /// ```
    /// use xent::{CrossEntropyOptions, Reduction, ShardedCrossEntropy};
    ///
    /// let options = CrossEntropyOptions { reduction: Reduction::Sum, ..Default::default() };
    /// assert_eq!(ShardedCrossEntropy::with_options(options).options().reduction, Reduction::Sum);
    /// ```
    pub fn with_options(options: CrossEntropyOptions) -> Self {
        Self { options }
    }

    /// Mean reduction, no other options (set them on a [`CrossEntropyLoss`] and
    /// convert it with `From`, or use [`with_options`](Self::with_options)).
    ///
    /// ```
    /// use xent::{Reduction, ShardedCrossEntropy};
    ///
    /// assert_eq!(ShardedCrossEntropy::new().options().reduction, Reduction::Mean);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-row statistics of one shard's logits (`rows × shard.len()`, row-major;
    /// `targets` are the whole vocabulary's class indices, one per row).
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(2, 2, 4)?; // classes 2 and 3
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.5f32, 1.5], &[3i64])?;
    /// assert_eq!(stats.max(), [1.5]);
    /// assert!(ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.5f32, 1.5], &[4i64]).is_err());
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn stats<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        shard: VocabShard,
        logits: &[f32],
        targets: impl Into<Targets<'a>>,
    ) -> Result<ShardStats> {
        let targets = targets.into();
        self.check_shard_call(shard, logits, targets, None)?;
        let targets = targets.to_i64();
        match backend.gpu() {
            Some(context) => {
                let job = self.job(shard, logits, &targets);
                gpu_sharded::shard_stats(context.gpu(), sharded_kernels(context)?, &job)
            }
            None => Ok(cpu::sharded::shard_stats(&self.options, shard, logits, &targets)),
        }
    }

    /// The loss and the per-row values every shard's gradient needs, from the
    /// statistics of every shard, given in vocabulary order (they must tile
    /// `[0, total_classes)` exactly; [`Error::InvalidShards`] otherwise). The
    /// shards are combined in that order, so the result does not depend on
    /// where or when each was computed.
    ///
    /// ```
    /// use xent::{Cpu, Error, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 2.0], [0i64]);
    /// let [left, right] = [VocabShard::new(0, 1, 2)?, VocabShard::new(1, 1, 2)?];
    /// let stats = [loss.stats(&Cpu, left, &logits[..1], &targets)?, loss.stats(&Cpu, right, &logits[1..], &targets)?];
    /// let combined = loss.combine_shards(&stats, &targets)?;
    /// assert!((combined.loss.value().unwrap() - 2f32.exp().ln_1p()).abs() < 1e-6); // log(1 + e^2)
    /// // Out of vocabulary order, the shards do not tile [0, 2).
    /// let swapped = [stats[1].clone(), stats[0].clone()];
    /// assert!(matches!(loss.combine_shards(&swapped, &targets), Err(Error::InvalidShards(_))));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn combine_shards<'a>(&self, stats: &[ShardStats], targets: impl Into<Targets<'a>>) -> Result<CombinedStats> {
        let targets = targets.into();
        check_tiling(stats.iter().map(ShardStats::shard))?;
        let Some(first) = stats.first() else {
            return Err(Error::InvalidShards("no shards".into()));
        };
        for shard_stats in stats {
            check_rows("a shard's statistics", shard_stats.rows(), targets.len())?;
            self.check_options_key("the statistics of a shard", shard_stats.options_key, false)?;
        }
        let global_max: Vec<f64> = (0..first.rows())
            .map(|row| {
                stats
                    .iter()
                    .map(|shard| shard.max[row])
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect();
        let mut sums = first.sums_at(&global_max)?;
        for shard_stats in &stats[1..] {
            sums.add(&shard_stats.sums_at(&global_max)?)?;
        }
        self.combine_sums(first.shard().total_classes(), &global_max, &sums, targets)
    }

    /// [`combine_shards`](Self::combine_shards) after an all-reduce: from the
    /// row maxima all-reduced with `max` and the [`ShardSums`] (each rank's
    /// [`ShardStats::sums_at`] those maxima) all-reduced with `sum`.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 1.0, 2.0], [0i64]);
    /// // Each "rank" holds some classes of 3.
    /// let ranks = [VocabShard::new(0, 1, 3)?, VocabShard::new(1, 2, 3)?];
    /// let stats: Vec<_> = ranks
    ///     .iter()
    ///     .map(|&shard| loss.stats(&Cpu, shard, &logits[shard.start()..shard.end()], &targets))
    ///     .collect::<xent::Result<_>>()?;
    /// // all-reduce max of stats[r].max(), then sum of each rank's sums_at(max):
    /// let global_max: Vec<f64> = (0..1).map(|row| stats[0].max()[row].max(stats[1].max()[row])).collect();
    /// let mut sums = stats[0].sums_at(&global_max)?;
    /// sums.add(&stats[1].sums_at(&global_max)?)?;
    /// let combined = loss.combine_sums(3, &global_max, &sums, &targets)?;
    /// let expected = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
    /// assert!((f64::from(combined.loss.value().unwrap()) - expected).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn combine_sums<'a>(
        &self,
        total_classes: usize,
        global_max: &[f64],
        sums: &ShardSums,
        targets: impl Into<Targets<'a>>,
    ) -> Result<CombinedStats> {
        let targets = targets.into();
        let whole = VocabShard::new(0, total_classes, total_classes)?;
        self.check_targets_and_options(whole, targets)?;
        self.check_options_key("the sums", sums.options_key, false)?;
        cpu::sharded::combine_sums(&self.options, total_classes, global_max, sums, &targets.to_i64())
    }

    /// Writes one shard's part of dL/dlogits (`rows × shard.len()`, the layout of
    /// `logits`) into `gradient`, from the [`CombinedStats`] of every shard:
    /// softmax minus the (smoothed, weighted) target over the shard's classes,
    /// scaled as the full loss's gradient.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 0.0], [0i64]);
    /// let [left, right] = [VocabShard::new(0, 1, 2)?, VocabShard::new(1, 1, 2)?];
    /// let stats = [loss.stats(&Cpu, left, &logits[..1], &targets)?, loss.stats(&Cpu, right, &logits[1..], &targets)?];
    /// let combined = loss.combine_shards(&stats, &targets)?;
    /// let (mut left_gradient, mut right_gradient) = ([0.0f32], [0.0f32]);
    /// loss.gradient(&Cpu, left, &logits[..1], &targets, &combined, &mut left_gradient)?;
    /// loss.gradient(&Cpu, right, &logits[1..], &targets, &combined, &mut right_gradient)?;
    /// assert_eq!((left_gradient, right_gradient), ([-0.5], [0.5])); // softmax − one-hot
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn gradient<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        shard: VocabShard,
        logits: &[f32],
        targets: impl Into<Targets<'a>>,
        combined: &CombinedStats,
        gradient: &mut [f32],
    ) -> Result<()> {
        let targets = targets.into();
        self.check_shard_call(shard, logits, targets, Some(gradient))?;
        check_rows("the combined statistics", combined.rows(), targets.len())?;
        self.check_options_key("the combined statistics", combined.options_key, true)?;
        if combined.total_classes() != shard.total_classes() {
            return Err(Error::InvalidShards(format!(
                "the combined statistics are of {} classes, the shard of a vocabulary of {}",
                combined.total_classes(),
                shard.total_classes()
            )));
        }
        let targets = targets.to_i64();
        match backend.gpu() {
            Some(context) => {
                let job = self.job(shard, logits, &targets);
                gpu_sharded::shard_gradient(context.gpu(), sharded_kernels(context)?, &job, combined, gradient)
            }
            None => {
                cpu::sharded::shard_gradient(&self.options, shard, logits, &targets, combined, gradient);
                Ok(())
            }
        }
    }

    /// An error unless `key` is this loss's digest of the options that `what`
    /// depends on: every option for `combined`, else all but the reduction and
    /// the z-loss (the statistics').
    fn check_options_key(&self, what: &str, key: u64, combined: bool) -> Result<()> {
        let own = if combined {
            self.options.combination_key()
        } else {
            self.options.statistics_key()
        };
        if key != own {
            return Err(Error::InvalidShards(format!(
                "{what} were computed with other options than this loss's; use one ShardedCrossEntropy for \
                 every step"
            )));
        }
        Ok(())
    }

    /// One shard's GPU job.
    fn job<'a>(&'a self, shard: VocabShard, logits: &'a [f32], targets: &'a [i64]) -> gpu_sharded::Job<'a> {
        gpu_sharded::Job {
            options: &self.options,
            shard,
            logits,
            targets,
        }
    }

    /// Checks one shard's call: rows, options, targets, logits' and gradient's lengths.
    fn check_shard_call(
        &self,
        shard: VocabShard,
        logits: &[f32],
        targets: Targets<'_>,
        gradient: Option<&[f32]>,
    ) -> Result<()> {
        self.check_targets_and_options(shard, targets)?;
        let shape = Shape::new(targets.len(), shard.len());
        shape.check_logits(logits.len())?;
        if let Some(gradient) = gradient {
            shape.check_gradient(gradient.len())?;
        }
        Ok(())
    }

    /// Checks the options against the whole vocabulary and the class indices against its range.
    fn check_targets_and_options(&self, shard: VocabShard, targets: Targets<'_>) -> Result<()> {
        let whole = Shape::new(targets.len(), shard.total_classes());
        if whole.rows == 0 {
            return Err(Error::EmptyShape {
                rows: 0,
                classes: whole.classes,
            });
        }
        self.options.validate(whole)?;
        check_shard_targets(targets, shard, self.options.ignore_index)
    }
}

/// The context's sharded kernels, compiled (inside xent's error scopes) on first use.
fn sharded_kernels(context: &Context) -> Result<&ShardedKernels> {
    context.checked(|| Ok(context.kernels().sharded(context.device())))
}
