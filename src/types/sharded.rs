//! A vocabulary split over devices ([`VocabShard`]), what each shard computes
//! from its slice of the logits ([`ShardStats`]), those statistics rescaled to
//! the global row maxima and ready to be summed across shards ([`ShardSums`]),
//! and what the combination gives back to every shard ([`CombinedStats`]).
//! The arithmetic lives in the backends (`cpu/sharded.rs`,
//! `gpu/kernels/sharded.rs`), the public calls in `losses/sharded.rs`.

use crate::error::{Error, Result};
use crate::types::{Loss, Targets};

/// A contiguous range of classes `[start, start + len)` of a vocabulary of
/// `total_classes` classes: the part of an LM head one device holds.
///
/// ```
/// use xent::VocabShard;
///
/// let shards = VocabShard::split(10, 3)?; // [0, 4), [4, 7), [7, 10)
/// assert_eq!((shards[1].start(), shards[1].len(), shards[1].end()), (4, 3, 7));
/// assert!(VocabShard::new(8, 3, 10).is_err()); // runs past the vocabulary
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VocabShard {
    start: usize,
    len: usize,
    total_classes: usize,
}

impl VocabShard {
    /// Classes `[start, start + len)` of `total_classes`; [`Error::InvalidShards`]
    /// when the range is empty or leaves the vocabulary.
    ///
    /// ```
    /// use xent::{Error, VocabShard};
    ///
    /// let shard = VocabShard::new(4, 3, 10)?; // classes 4, 5, 6 of 10
    /// assert_eq!((shard.start(), shard.end()), (4, 7));
    /// assert!(matches!(VocabShard::new(4, 0, 10), Err(Error::InvalidShards(_))));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn new(start: usize, len: usize, total_classes: usize) -> Result<Self> {
        let end = start.checked_add(len);
        if len == 0 || end.is_none_or(|end| end > total_classes) {
            return Err(Error::InvalidShards(format!(
                "classes [{start}, {start} + {len}) are not a non-empty range of a vocabulary of {total_classes}"
            )));
        }
        Ok(Self {
            start,
            len,
            total_classes,
        })
    }

    /// `total_classes` cut into `parts` contiguous shards, in order, the first
    /// `total_classes % parts` of them one class longer.
    ///
    /// ```
    /// use xent::VocabShard;
    ///
    /// let lengths: Vec<usize> = VocabShard::split(7, 3)?.iter().map(VocabShard::len).collect();
    /// assert_eq!(lengths, [3, 2, 2]);
    /// assert!(VocabShard::split(2, 3).is_err()); // not enough classes for three shards
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn split(total_classes: usize, parts: usize) -> Result<Vec<Self>> {
        if parts == 0 || parts > total_classes {
            return Err(Error::InvalidShards(format!(
                "cannot cut {total_classes} classes into {parts} non-empty shards"
            )));
        }
        let (base, longer) = (total_classes / parts, total_classes % parts);
        let mut start = 0;
        (0..parts)
            .map(|part| {
                let len = base + usize::from(part < longer);
                let shard = Self::new(start, len, total_classes);
                start += len;
                shard
            })
            .collect()
    }

    /// First class of the shard.
    ///
    /// ```
    /// assert_eq!(xent::VocabShard::new(3, 2, 8)?.start(), 3);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn start(&self) -> usize {
        self.start
    }

    /// Classes in the shard.
    ///
    /// ```
    /// assert_eq!(xent::VocabShard::new(3, 2, 8)?.len(), 2);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a shard holds at least one class.
    ///
    /// ```
    /// assert!(!xent::VocabShard::new(0, 1, 1)?.is_empty());
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past the last class of the shard.
    ///
    /// ```
    /// assert_eq!(xent::VocabShard::new(3, 2, 8)?.end(), 5);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// Classes of the whole vocabulary.
    ///
    /// ```
    /// assert_eq!(xent::VocabShard::new(3, 2, 8)?.total_classes(), 8);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn total_classes(&self) -> usize {
        self.total_classes
    }

    /// `Σ_c w_c` over the shard's classes, of the vocabulary's weights `weight`
    /// (its length, without weights).
    pub(crate) fn weight_sum(&self, weight: Option<&[f32]>) -> f64 {
        match weight {
            Some(weight) => weight[self.start..self.end()].iter().map(|&w| f64::from(w)).sum(),
            None => self.len as f64,
        }
    }

    /// The class `class` of the vocabulary as an index into this shard, if it lies here.
    ///
    /// ```
    /// use xent::VocabShard;
    ///
    /// let shard = VocabShard::new(4, 3, 10)?; // classes 4, 5, 6
    /// assert_eq!(shard.local_class(5), Some(1));
    /// assert_eq!(shard.local_class(7), None);
    /// assert_eq!(shard.local_class(-100), None); // e.g. an ignored row
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn local_class(&self, class: i64) -> Option<usize> {
        let class = usize::try_from(class).ok()?;
        (self.start..self.end()).contains(&class).then(|| class - self.start)
    }
}

/// Checks that `shards`, in the order given, tile `[0, total_classes)` exactly:
/// the same vocabulary, each starting where the previous one ended.
pub(crate) fn check_tiling(shards: impl IntoIterator<Item = VocabShard>) -> Result<()> {
    let mut next = 0;
    let mut total = None;
    for (index, shard) in shards.into_iter().enumerate() {
        let total = *total.get_or_insert(shard.total_classes);
        if shard.total_classes != total {
            return Err(Error::InvalidShards(format!(
                "shard {index} is of a vocabulary of {} classes, the first of {total}",
                shard.total_classes
            )));
        }
        if shard.start != next {
            let problem = if shard.start < next {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            return Err(Error::InvalidShards(format!(
                "shard {index} starts at class {}: it {problem} the shards before it, which end at {next}",
                shard.start
            )));
        }
        next = shard.end();
    }
    match total {
        None => Err(Error::InvalidShards("no shards".into())),
        Some(total) if next != total => Err(Error::InvalidShards(format!(
            "the shards cover classes [0, {next}) of a vocabulary of {total}"
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks class-index targets against the whole vocabulary of `shard`: each in
/// `[0, total_classes)` or equal to `ignore_index`.
pub(crate) fn check_shard_targets(targets: Targets<'_>, shard: VocabShard, ignore_index: i64) -> Result<()> {
    if targets.is_probabilities() {
        return Err(Error::InvalidOption(
            "the sharded cross-entropy takes class-index targets, not probabilities".into(),
        ));
    }
    targets.check(
        crate::types::Shape::new(targets.len(), shard.total_classes),
        ignore_index,
    )
}

/// The per-row statistics of one shard's logits (all in f64, one entry per row),
/// with `x'` the transformed logits (logit scale, softcap) and `w` the class
/// weights (1 without):
///
/// - `max`: `m = max x'` over the shard;
/// - `max_count`: how many of the shard's `x'` equal `m` (each adds exactly 1 to the sum below);
/// - `rest`: `Σ exp(x' − m)` over the others;
/// - `target_logit`: `x'_y` when the row's target `y` is in the shard, else 0;
/// - `target_count`: 1 when it is, else 0 (ignored rows: 0);
/// - `spread`: `Σ_c w_c·(m − x'_c)` over the shard (≥ 0), for label smoothing;
///
/// and, for the whole shard, `weight_sum = Σ_c w_c` over its classes. Made by
/// [`ShardedCrossEntropy::stats`](crate::ShardedCrossEntropy::stats).
///
/// ```
/// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
///
/// let shard = VocabShard::new(1, 2, 3)?; // classes 1 and 2 of 3
/// let logits = [0.5f32, 2.0, 1.0, -1.0]; // two rows of the shard's two classes
/// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &logits, &[2i64, 0])?;
/// assert_eq!((stats.shard(), stats.rows()), (shard, 2));
/// assert_eq!(stats.max(), [2.0, 1.0]);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ShardStats {
    pub(crate) shard: VocabShard,
    pub(crate) weight_sum: f64,
    pub(crate) max: Vec<f64>,
    pub(crate) max_count: Vec<f64>,
    pub(crate) rest: Vec<f64>,
    pub(crate) target_logit: Vec<f64>,
    pub(crate) target_count: Vec<f64>,
    pub(crate) spread: Vec<f64>,
    /// The digest of the options they were computed with (`statistics_key`).
    pub(crate) options_key: u64,
}

impl ShardStats {
    /// The shard these statistics are of.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 5)?;
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[1.0f32, 2.0], &[4i64])?;
    /// assert_eq!(stats.shard(), shard);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn shard(&self) -> VocabShard {
        self.shard
    }

    /// Rows.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 1, 2)?;
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[1.0f32, 2.0, 3.0], &[0i64, 1, 1])?;
    /// assert_eq!(stats.rows(), 3); // one logit per row for a one-class shard
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn rows(&self) -> usize {
        self.max.len()
    }

    /// Each row's largest transformed logit over the shard: the column a
    /// multi-device run all-reduces with `max` first.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 4)?;
    /// let scaled = ShardedCrossEntropy::from(CrossEntropyLoss::new().logit_scale(2.0));
    /// let stats = scaled.stats(&Cpu, shard, &[0.5f32, -1.0, 0.25, 1.5], &[1i64, 3])?;
    /// assert_eq!(stats.max(), [1.0, 3.0]); // of the scaled logits
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn max(&self) -> &[f64] {
        &self.max
    }

    /// This shard's statistics rescaled to the global row maxima `global_max`
    /// (the all-reduced [`ShardStats::max`]), so that the shards' [`ShardSums`]
    /// add up to the whole vocabulary's: with `M` the global and `m` this shard's
    /// maximum, a shard whose `m = M` keeps `(max_count, rest)`, the others add
    /// `(0, (max_count + rest)·exp(m − M))`; the spread becomes
    /// `spread + weight_sum·(M − m)`; the target columns are kept. A `global_max`
    /// below this shard's own maximum is no all-reduced maximum:
    /// [`Error::InvalidShards`].
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, Shape, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 4)?; // classes 0 and 1 of 4
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[3i64])?;
    /// let sums = stats.sums_at(&[3.0])?; // the other shard holds the row's maximum, 3
    /// assert_eq!(sums.max_count(), [0.0]);
    /// assert!((sums.rest()[0] - ((-3f64).exp() + (-2f64).exp())).abs() < 1e-15);
    /// assert!(stats.sums_at(&[0.5]).is_err()); // below the shard's own maximum, 1
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn sums_at(&self, global_max: &[f64]) -> Result<ShardSums> {
        let rows = self.rows();
        check_rows("global_max", global_max.len(), rows)?;
        let mut sums = ShardSums::zeros(rows, self.options_key);
        for (row, &row_max) in global_max.iter().enumerate() {
            let shard_max = self.max[row];
            if shard_max > row_max {
                return Err(Error::InvalidShards(format!(
                    "global_max[{row}] = {row_max} is below this shard's own maximum {shard_max}: not the maximum \
                     all-reduced over the shards"
                )));
            }
            let (count, rest) = if shard_max == row_max {
                (self.max_count[row], self.rest[row])
            } else {
                (
                    0.0,
                    (self.max_count[row] + self.rest[row]) * (shard_max - row_max).exp(),
                )
            };
            let spread = if shard_max == row_max {
                self.spread[row]
            } else {
                self.spread[row] + self.weight_sum * (row_max - shard_max)
            };
            let values = [count, rest, self.target_logit[row], self.target_count[row], spread];
            for (plane, value) in values.into_iter().enumerate() {
                sums.values[plane * rows + row] = value;
            }
        }
        Ok(sums)
    }
}

/// Checks that a per-row column has one entry per row.
pub(crate) fn check_rows(what: &str, actual: usize, rows: usize) -> Result<()> {
    if actual != rows {
        return Err(Error::InvalidShards(format!(
            "{what} has {actual} rows, expected {rows}"
        )));
    }
    Ok(())
}

/// Planes of [`ShardSums::values`].
const SUM_PLANES: usize = 5;

/// Per-row sums that add across shards once every shard is rescaled to the
/// global row maxima ([`ShardStats::sums_at`]): a multi-device run all-reduces
/// [`ShardSums::values_mut`] with `sum`; a single process adds them with
/// [`ShardSums::add`]. Five planes of one entry per row, in this order:
/// `max_count`, `rest`, `target_logit`, `target_count`, `spread` (see [`ShardStats`]).
///
/// ```
/// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
///
/// let loss = ShardedCrossEntropy::new();
/// let (logits, targets) = ([2.0f32, 2.0, 0.0], [1i64]);
/// let left = loss.stats(&Cpu, VocabShard::new(0, 1, 3)?, &logits[..1], &targets)?;
/// let right = loss.stats(&Cpu, VocabShard::new(1, 2, 3)?, &logits[1..], &targets)?;
/// let mut sums = left.sums_at(&[2.0])?;
/// sums.add(&right.sums_at(&[2.0])?)?;
/// assert_eq!(sums.max_count(), [2.0]); // both shards attain the maximum 2
/// assert_eq!((sums.target_logit(), sums.target_count()), (&[2.0][..], &[1.0][..]));
/// assert_eq!(sums.values().len(), 5);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ShardSums {
    rows: usize,
    values: Vec<f64>,
    /// The digest of the options of the statistics they come from.
    pub(crate) options_key: u64,
}

impl ShardSums {
    fn zeros(rows: usize, options_key: u64) -> Self {
        Self {
            rows,
            values: vec![0.0; rows * SUM_PLANES],
            options_key,
        }
    }

    /// Rows.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.rows(), 1);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Every plane, one after the other (`5 × rows` values).
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.values().len(), 5 * sums.rows());
    /// assert_eq!(sums.values()[0], 1.0); // max_count: only class 1 attains 1.0
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Every plane, for an in-place all-reduce.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let mut sums = stats.sums_at(&[1.0])?;
    /// // A one-rank "all-reduce with sum": doubles every value.
    /// sums.values_mut().iter_mut().for_each(|value| *value *= 2.0);
    /// assert_eq!(sums.max_count(), [2.0]);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn values_mut(&mut self) -> &mut [f64] {
        &mut self.values
    }

    /// Adds `other` (the same rows, from statistics of the same options),
    /// value by value.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let mut sums = stats.sums_at(&[1.0])?;
    /// let copy = sums.clone();
    /// sums.add(&copy)?;
    /// assert_eq!(sums.target_count(), [2.0]);
    /// let other_rows = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32; 4], &[0i64, 1])?;
    /// assert!(sums.add(&other_rows.sums_at(&[0.0, 0.0])?).is_err()); // 2 rows, not 1
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn add(&mut self, other: &ShardSums) -> Result<()> {
        check_rows("the added sums", other.rows, self.rows)?;
        if other.options_key != self.options_key {
            return Err(Error::InvalidShards(
                "the added sums come from statistics computed with other options".into(),
            ));
        }
        self.values
            .iter_mut()
            .zip(&other.values)
            .for_each(|(sum, value)| *sum += value);
        Ok(())
    }

    fn plane(&self, index: usize) -> &[f64] {
        &self.values[index * self.rows..(index + 1) * self.rows]
    }

    /// How many transformed logits equal the row's maximum.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.max_count(), [1.0]);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn max_count(&self) -> &[f64] {
        self.plane(0)
    }

    /// `Σ exp(x' − M)` over the others.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert!((sums.rest()[0] - (-1f64).exp()).abs() < 1e-15); // exp(0 − 1)
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn rest(&self) -> &[f64] {
        self.plane(1)
    }

    /// The target's transformed logit `x'_y` (0 for ignored rows).
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.target_logit(), [0.0]); // class 0's logit
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn target_logit(&self) -> &[f64] {
        self.plane(2)
    }

    /// How many shards hold the row's target (1, or 0 for ignored rows).
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.target_count(), [1.0]);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn target_count(&self) -> &[f64] {
        self.plane(3)
    }

    /// `Σ_c w_c·(M − x'_c)` over the vocabulary.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let shard = VocabShard::new(0, 2, 2)?; // the whole vocabulary of 2
    /// let stats = ShardedCrossEntropy::new().stats(&Cpu, shard, &[0.0f32, 1.0], &[0i64])?;
    /// let sums = stats.sums_at(&[1.0])?;
    /// assert_eq!(sums.spread(), [1.0]); // (1 − 0) + (1 − 1)
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn spread(&self) -> &[f64] {
        self.plane(4)
    }
}

/// The combined statistics of every shard: the loss and, per row, what each
/// shard's gradient needs. Made by
/// [`ShardedCrossEntropy::combine_shards`](crate::ShardedCrossEntropy::combine_shards)
/// (or [`combine_sums`](crate::ShardedCrossEntropy::combine_sums) after an all-reduce).
///
/// Per row, with `M` the global maximum, `L = ln Σ exp(x' − M)` and `lse = M + L`,
/// `p_c = exp(x'_c − M − L)`, the gradient of class `c` is
/// `((other_scale + target_scale)·p_c − smoothing_scale·w_c − target_scale·[c = y])·dx'_c/dx_c`
/// (`target_scale = scale·(1−ε)·w_y`, `other_scale = scale·((ε/C)·W + 2·z·lse)`),
/// and 0 on ignored rows. When the target is the row's unique maximum,
/// `p_y − 1 = −rest/(1 + rest)` is used instead of the f32 difference, which
/// would lose a confident row's gradient.
///
/// ```
/// use xent::{Cpu, Loss, Reduction, ShardedCrossEntropy, VocabShard};
/// use xent::CrossEntropyLoss;
///
/// let loss = ShardedCrossEntropy::from(CrossEntropyLoss::new().reduction(Reduction::None));
/// let (logits, targets) = ([0.0f32, 0.0, 0.0, 0.0], [3i64]);
/// let shards = VocabShard::split(4, 2)?;
/// let stats = [
///     loss.stats(&Cpu, shards[0], &logits[..2], &targets)?,
///     loss.stats(&Cpu, shards[1], &logits[2..], &targets)?,
/// ];
/// let combined = loss.combine_shards(&stats, &targets)?;
/// assert!((combined.lse()[0] - 4f64.ln()).abs() < 1e-12);
/// assert!(matches!(&combined.loss, Loss::PerRow(rows) if (rows[0] - 4f32.ln()).abs() < 1e-6));
/// assert_eq!((combined.rows(), combined.total_classes(), combined.z_loss.as_ref()), (1, 4, None));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CombinedStats {
    /// The loss reduced as the options say (z-loss included), or one per row for `none`.
    pub loss: Loss,
    /// The z-loss part alone, reduced the same way, when `z_loss > 0`.
    pub z_loss: Option<Loss>,
    pub(crate) total_classes: usize,
    pub(crate) max: Vec<f64>,
    pub(crate) ln_sum_exp: Vec<f64>,
    /// [`CombinedStats::lse`].
    pub(crate) lse: Vec<f64>,
    pub(crate) ignored: Vec<bool>,
    pub(crate) other_scale: Vec<f64>,
    /// `rest` when one logit alone attains the row's maximum, else −1.
    pub(crate) confident_rest: Vec<f64>,
    pub(crate) smoothing_scale: Vec<f64>,
    pub(crate) target_scale: Vec<f64>,
    /// The digest of the options they were combined with (`combination_key`).
    pub(crate) options_key: u64,
}

impl CombinedStats {
    /// Rows.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 0.0, 0.0], [1i64]);
    /// let stats = loss.stats(&Cpu, VocabShard::new(0, 3, 3)?, &logits, &targets)?;
    /// let combined = loss.combine_shards(&[stats], &targets)?;
    /// assert_eq!(combined.rows(), 1);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn rows(&self) -> usize {
        self.max.len()
    }

    /// Classes of the whole vocabulary.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 0.0, 0.0], [1i64]);
    /// let stats = loss.stats(&Cpu, VocabShard::new(0, 3, 3)?, &logits, &targets)?;
    /// let combined = loss.combine_shards(&[stats], &targets)?;
    /// assert_eq!(combined.total_classes(), 3);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn total_classes(&self) -> usize {
        self.total_classes
    }

    /// Each row's log-sum-exp over the whole vocabulary (ignored rows included),
    /// as `torch.logsumexp` and the unsharded loss give it: `+inf` for a row
    /// with a `+inf` logit, `−inf` for a row of `−inf`, NaN for a row with a NaN.
    ///
    /// ```
    /// use xent::{Cpu, ShardedCrossEntropy, VocabShard};
    ///
    /// let loss = ShardedCrossEntropy::new();
    /// let (logits, targets) = ([0.0f32, 0.0, 0.0], [1i64]);
    /// let stats = loss.stats(&Cpu, VocabShard::new(0, 3, 3)?, &logits, &targets)?;
    /// let combined = loss.combine_shards(&[stats], &targets)?;
    /// assert!((combined.lse()[0] - 3f64.ln()).abs() < 1e-12);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn lse(&self) -> Vec<f64> {
        self.lse.clone()
    }
}
