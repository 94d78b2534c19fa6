//! The vocabulary-sharded cross-entropy on Burn tensors: xent's
//! [`xent::ShardedCrossEntropy`] per shard, with its combine written as the
//! all-reduce a multi-device run makes (`max`, then `sum`), over Burn tensors.
//!
//! Per rank (one shard of the vocabulary, `rows × shard.len()` logits on the
//! rank's device):
//!
//! 1. xent's `stats` of the shard (on the device's xent context; the logits go
//!    through the host, as xent's sharded API is host-level);
//! 2. **all-reduce `max`** of the row maxima (`[1, rows]`, f64);
//! 3. `sums_at(global_max)`: the statistics rescaled to the global maxima;
//! 4. **all-reduce `sum`** of those sums (`[5, rows]`, f64);
//! 5. `combine_sums`: the loss and per-row values (every rank gets the same);
//! 6. xent's `gradient` of the shard, back into a tensor on the rank's device.
//!
//! The two all-reduces are the one call of an [`AllReduce`]: [`InProcess`]
//! reduces the shards of one process with Burn tensor ops (stack, then
//! `max_dim` / `sum_dim`); a multi-device run passes its own collective.
//! Burn 0.22's `burn::tensor::distributed::all_reduce` has `Sum` and `Mean`
//! only and runs on CUDA (NCCL) only: [`MaxThroughSum`] makes the `max` out of a
//! `sum` (an all-gather through zeros), so a sum-only collective is enough.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use xent::{CombinedStats, CrossEntropyOptions, Loss, ShardStats, ShardSums, VocabShard};

use crate::device::{cube_device, shared_device};
use crate::error::{Error, Result};

/// The element-wise reduction of an [`AllReduce`].
///
/// ```
/// assert_ne!(xent_burn::ReduceOp::Max, xent_burn::ReduceOp::Sum);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The largest value of every rank (NCCL's `ncclMax`).
    Max,
    /// The sum over the ranks (Burn's `ReduceOperation::Sum`, NCCL's `ncclSum`).
    Sum,
}

/// **The collective of a sharded step**: the function a multi-device run
/// replaces. `values[r]` is rank `r`'s tensor (f64, every rank the same
/// shape, on the rank's device); the result holds, for every rank and on its
/// device, the element-wise `op` over all ranks. A step calls it twice: `Max`
/// on the row maxima `[1, rows]`, then `Sum` on the rescaled sums `[5, rows]`.
///
/// In a run with one thread or process per device, rank `r` passes its own
/// tensor to the collective and receives entry `r` of the result (with Burn:
/// `burn::tensor::distributed::all_reduce(tensor, ReduceOperation::Sum,
/// devices).resolve()`; with NCCL: `ncclAllReduce(.., ncclFloat64, ncclMax /
/// ncclSum, ..)`; see the README).
///
/// ```no_run
/// use burn::tensor::{DType, Tensor, TensorData};
/// use xent_burn::{AllReduce, InProcess, ReduceOp};
///
/// let device = xent_burn::init_wgpu()?;
/// let rank = |values: Vec<f64>| Tensor::<2>::from_data(TensorData::new(values, [1, 2]), (&device, DType::F64));
/// let reduced = InProcess.all_reduce(vec![rank(vec![1.0, 5.0]), rank(vec![3.0, 2.0])], ReduceOp::Max)?;
/// assert_eq!(reduced[1].clone().into_data().try_into_vec::<f64>().unwrap(), [3.0, 5.0]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
pub trait AllReduce {
    /// The element-wise `op` of every rank's `values`, one copy per rank on its device.
    fn all_reduce(&self, values: Vec<Tensor<2>>, op: ReduceOp) -> Result<Vec<Tensor<2>>>;
}

/// The all-reduce of shards held by one process, with Burn tensor ops: the
/// ranks' tensors are copied to the first rank's device and stacked, reduced
/// along the stack (`max_dim` / `sum_dim`, in rank order), and the result is
/// copied to every rank's device.
///
/// ```no_run
/// use burn::tensor::{DType, Tensor, TensorData};
/// use xent_burn::{AllReduce, InProcess, ReduceOp};
///
/// let device = xent_burn::init_wgpu()?;
/// let one = Tensor::<2>::from_data(TensorData::new(vec![1.5f64], [1, 1]), (&device, DType::F64));
/// let sums = InProcess.all_reduce(vec![one.clone(), one], ReduceOp::Sum)?;
/// assert_eq!(sums[0].clone().into_data().try_into_vec::<f64>().unwrap(), [3.0]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct InProcess;

impl AllReduce for InProcess {
    fn all_reduce(&self, values: Vec<Tensor<2>>, op: ReduceOp) -> Result<Vec<Tensor<2>>> {
        let devices = check_ranks(&values)?;
        let first = &devices[0];
        let gathered: Vec<Tensor<2>> = values.into_iter().map(|value| value.to_device(first)).collect();
        let stacked: Tensor<3> = Tensor::stack(gathered, 0);
        let reduced = match op {
            ReduceOp::Max => stacked.max_dim(0),
            ReduceOp::Sum => stacked.sum_dim(0),
        };
        let reduced: Tensor<2> = reduced.squeeze_dim(0);
        Ok(devices.iter().map(|device| reduced.clone().to_device(device)).collect())
    }
}

/// `Max` made of a `Sum` all-reduce of `A`, for collectives without a max
/// (Burn 0.22's `ReduceOperation` has `Sum` and `Mean` only): rank `r` writes
/// its values into block `r` of an otherwise zero `[ranks·n, m]` tensor, the
/// blocks are summed across ranks (adding zeros is exact: an all-gather), and
/// each rank takes the maximum over the blocks itself. `Sum` goes straight
/// to `A`. Costs `ranks` times the data of a native max (`ranks × rows` values
/// for the row maxima).
///
/// ```no_run
/// use burn::tensor::{DType, Tensor, TensorData};
/// use xent_burn::{AllReduce, InProcess, MaxThroughSum, ReduceOp};
///
/// let device = xent_burn::init_wgpu()?;
/// let rank = |value: f64| Tensor::<2>::from_data(TensorData::new(vec![value], [1, 1]), (&device, DType::F64));
/// let maxima = MaxThroughSum(InProcess).all_reduce(vec![rank(-4.0), rank(-2.5)], ReduceOp::Max)?;
/// assert_eq!(maxima[0].clone().into_data().try_into_vec::<f64>().unwrap(), [-2.5]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxThroughSum<A>(pub A);

impl<A: AllReduce> AllReduce for MaxThroughSum<A> {
    fn all_reduce(&self, values: Vec<Tensor<2>>, op: ReduceOp) -> Result<Vec<Tensor<2>>> {
        if op == ReduceOp::Sum {
            return self.0.all_reduce(values, op);
        }
        check_ranks(&values)?;
        let ranks = values.len();
        let [n, m] = values[0].dims();
        let blocks = values
            .into_iter()
            .enumerate()
            .map(|(rank, value)| {
                let zeros = Tensor::<2>::zeros([ranks * n, m], (&value.device(), value.dtype()));
                zeros.slice_assign([rank * n..(rank + 1) * n, 0..m], value)
            })
            .collect();
        let gathered = self.0.all_reduce(blocks, ReduceOp::Sum)?;
        Ok(gathered
            .into_iter()
            .map(|blocks| blocks.reshape([ranks, n, m]).max_dim(0).reshape([n, m]))
            .collect())
    }
}

/// Checks that there is at least one rank and that every rank's tensor has
/// the first one's shape and dtype; the ranks' devices.
fn check_ranks(values: &[Tensor<2>]) -> Result<Vec<Device>> {
    let first = values
        .first()
        .ok_or_else(|| Error::InvalidInput("an all-reduce of no ranks".into()))?;
    let (dims, dtype) = (first.dims(), first.dtype());
    if let Some(rank) = values
        .iter()
        .position(|value| value.dims() != dims || value.dtype() != dtype)
    {
        return Err(Error::InvalidInput(format!(
            "rank {rank} gives {:?} {:?} to the all-reduce, rank 0 {dims:?} {dtype:?}",
            values[rank].dims(),
            values[rank].dtype()
        )));
    }
    Ok(values.iter().map(Tensor::device).collect())
}

/// One rank's part of the vocabulary: which classes, and its logits
/// `[rows, shard.len()]` (f32, on the rank's device, with or without autodiff).
#[derive(Clone, Debug)]
pub struct LogitShard {
    /// The classes of the vocabulary the logits hold.
    pub shard: VocabShard,
    /// `[rows, shard.len()]` logits.
    pub logits: Tensor<2>,
}

/// What [`ShardedCrossEntropy::forward_backward`] returns.
#[derive(Clone, Debug)]
pub struct ShardedOutput {
    /// The loss of the whole vocabulary (`[1]` for `mean`/`sum`, `[rows]` for
    /// `none`), on the first rank's device.
    pub loss: Tensor<1>,
    /// dL/dlogits of each shard, `[rows, shard.len()]` f32, on its rank's device.
    pub gradients: Vec<Tensor<2>>,
}

/// The cross-entropy of a vocabulary split into [`LogitShard`]s over Burn
/// devices, with every option of xent's [`xent::ShardedCrossEntropy`]
/// (reductions, `ignore_index`, class weights of the whole vocabulary, label
/// smoothing, z-loss, softcap): the loss and gradient of the unsharded loss,
/// to rounding. The shards' statistics are combined through an [`AllReduce`]
/// (`max`, then `sum`; f64 tensors, so the device needs f64 shaders, as
/// lavapipe and Vulkan/CUDA GPUs have).
///
/// Host round trips: xent's sharded API takes host slices, so each shard's
/// logits are read back, its statistics and gradient computed by xent on the
/// device's xent context (registered with [`init_wgpu`](crate::init_wgpu) /
/// [`register`](crate::register)), and the gradient uploaded again. Nothing
/// is recorded for autodiff; feed the gradients to the layer's backward.
///
/// ```no_run
/// use burn::tensor::{Int, Tensor};
/// use xent::{CrossEntropyOptions, VocabShard};
/// use xent_burn::{InProcess, LogitShard, ShardedCrossEntropy};
///
/// let device = xent_burn::init_wgpu()?;
/// let shards = VocabShard::split(10, 2)?; // classes [0, 5) and [5, 10)
/// let logits: Vec<LogitShard> = shards
///     .into_iter()
///     .map(|shard| LogitShard { shard, logits: Tensor::<2>::zeros([3, shard.len()], &device) })
///     .collect();
/// let targets = Tensor::<1, Int>::from_ints([1, 7, 9], &device);
/// let out = ShardedCrossEntropy::new(CrossEntropyOptions::default()).forward_backward(logits, targets, &InProcess)?;
/// let loss = out.loss.into_data().try_into_vec::<f32>().unwrap();
/// assert!((loss[0] - 10f32.ln()).abs() < 1e-5);
/// assert_eq!(out.gradients[1].dims(), [3, 5]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ShardedCrossEntropy {
    inner: xent::ShardedCrossEntropy,
}

/// One rank's state between the steps: its shard, logits on the host, device
/// and statistics.
struct Rank {
    shard: VocabShard,
    logits: Vec<f32>,
    device: Device,
    stats: ShardStats,
}

impl ShardedCrossEntropy {
    /// The sharded loss with `options` (`weight`, if any, has one entry per
    /// class of the whole vocabulary; soft targets are refused).
    pub fn new(options: CrossEntropyOptions) -> Self {
        Self {
            inner: xent::ShardedCrossEntropy::with_options(options),
        }
    }

    /// The options.
    pub fn options(&self) -> &CrossEntropyOptions {
        self.inner.options()
    }

    /// The loss and each shard's gradient, the shards (in vocabulary order,
    /// tiling `[0, total_classes)`) combined through `collective`. `targets`
    /// `[rows]` are class indices of the whole vocabulary, on any device.
    /// Errors: no shards, shards that do not tile the vocabulary, logits
    /// that are not f32 `[rows, shard.len()]`, devices without an xent
    /// context, options xent refuses.
    pub fn forward_backward(
        &self,
        shards: Vec<LogitShard>,
        targets: Tensor<1, Int>,
        collective: &impl AllReduce,
    ) -> Result<ShardedOutput> {
        check_tiling(&shards)?;
        let [rows] = targets.dims();
        if rows == 0 {
            return Err(Error::InvalidInput("no rows".into()));
        }
        let targets: Vec<i64> = read_back(targets.try_into_data(), "targets")?;
        let ranks = shards
            .into_iter()
            .map(|shard| self.rank_stats(shard, rows, &targets))
            .collect::<Result<Vec<Rank>>>()?;

        let maxima = ranks
            .iter()
            .map(|rank| f64_tensor(rank.stats.max().to_vec(), 1, rows, &rank.device))
            .collect();
        let global_maxima = reduce_to_host(collective, maxima, ReduceOp::Max)?;
        let mut rank_sums = ranks
            .iter()
            .zip(&global_maxima)
            .map(|(rank, global_max)| rank.stats.sums_at(global_max))
            .collect::<xent::Result<Vec<ShardSums>>>()?;
        let sums = rank_sums
            .iter()
            .zip(&ranks)
            .map(|(sums, rank)| f64_tensor(sums.values().to_vec(), sums.values().len() / rows, rows, &rank.device))
            .collect();
        for (sums, reduced) in rank_sums
            .iter_mut()
            .zip(reduce_to_host(collective, sums, ReduceOp::Sum)?)
        {
            sums.values_mut().copy_from_slice(&reduced);
        }

        let mut loss = None;
        let mut gradients = Vec::with_capacity(ranks.len());
        for ((rank, global_max), sums) in ranks.iter().zip(&global_maxima).zip(&rank_sums) {
            let total_classes = rank.shard.total_classes();
            let combined = self.inner.combine_sums(total_classes, global_max, sums, &targets[..])?;
            gradients.push(self.rank_gradient(rank, &targets, &combined)?);
            loss.get_or_insert_with(|| loss_tensor(&combined.loss, &rank.device));
        }
        let loss = loss.ok_or_else(|| Error::InvalidInput("no shards".into()))?;
        Ok(ShardedOutput { loss, gradients })
    }

    /// Step 1 on one rank: its logits on the host and xent's statistics of them.
    fn rank_stats(&self, shard: LogitShard, rows: usize, targets: &[i64]) -> Result<Rank> {
        let LogitShard { shard, logits } = shard;
        if logits.dims() != [rows, shard.len()] || logits.dtype() != DType::F32 {
            return Err(Error::InvalidInput(format!(
                "the logits of classes [{}, {}) must be f32 [{rows}, {}], got {:?} {:?}",
                shard.start(),
                shard.end(),
                shard.len(),
                logits.dtype(),
                logits.dims()
            )));
        }
        let device = logits.device();
        let context = &shared_device(&cube_device(&device)?)?.context;
        let logits: Vec<f32> = read_back(logits.try_into_data(), "logits")?;
        let stats = self.inner.stats(context, shard, &logits, targets)?;
        Ok(Rank {
            shard,
            logits,
            device,
            stats,
        })
    }

    /// Step 6 on one rank: xent's gradient of its shard, as a tensor on its device.
    fn rank_gradient(&self, rank: &Rank, targets: &[i64], combined: &CombinedStats) -> Result<Tensor<2>> {
        let context = &shared_device(&cube_device(&rank.device)?)?.context;
        let mut gradient = vec![0.0f32; rank.logits.len()];
        self.inner
            .gradient(context, rank.shard, &rank.logits, targets, combined, &mut gradient)?;
        let shape = [targets.len(), rank.shard.len()];
        Ok(Tensor::from_data(TensorData::new(gradient, shape), &rank.device))
    }
}

/// Checks that the shards are given in vocabulary order and tile `[0, total_classes)`.
fn check_tiling(shards: &[LogitShard]) -> Result<()> {
    let total = shards
        .first()
        .map(|first| first.shard.total_classes())
        .ok_or_else(|| Error::InvalidInput("no shards".into()))?;
    let mut next = 0;
    for (index, LogitShard { shard, .. }) in shards.iter().enumerate() {
        if shard.total_classes() != total || shard.start() != next {
            return Err(Error::InvalidInput(format!(
                "shard {index} holds classes [{}, {}) of {}, expected one starting at {next} of {total}",
                shard.start(),
                shard.end(),
                shard.total_classes()
            )));
        }
        next = shard.end();
    }
    if next != total {
        return Err(Error::InvalidInput(format!(
            "the shards end at class {next} of {total}"
        )));
    }
    Ok(())
}

/// An f64 `[planes, rows]` tensor of `values` on `device`.
fn f64_tensor(values: Vec<f64>, planes: usize, rows: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [planes, rows]), (device, DType::F64))
}

/// The all-reduce of `values` by `collective`, each rank's result read back:
/// one host vector per rank.
fn reduce_to_host(collective: &impl AllReduce, values: Vec<Tensor<2>>, op: ReduceOp) -> Result<Vec<Vec<f64>>> {
    let ranks = values.len();
    let reduced = collective.all_reduce(values, op)?;
    if reduced.len() != ranks {
        return Err(Error::Runtime(format!(
            "the all-reduce returned {} tensors for {ranks} ranks",
            reduced.len()
        )));
    }
    reduced
        .into_iter()
        .map(|tensor| read_back(tensor.try_into_data(), "all-reduce"))
        .collect()
}

/// A tensor's values on the host (`tensor.try_into_data()`), converted to `E`.
fn read_back<E: burn::tensor::Element>(
    data: std::result::Result<TensorData, impl std::fmt::Debug>,
    what: &str,
) -> Result<Vec<E>> {
    data.map_err(|error| Error::Runtime(format!("reading the {what} back: {error:?}")))?
        .try_into_vec_as::<E>()
        .map_err(|error| Error::InvalidInput(format!("the {what}: {error:?}")))
}

/// xent's loss as a Burn tensor: `[1]` reduced or `[rows]` per row.
fn loss_tensor(loss: &Loss, device: &Device) -> Tensor<1> {
    let values = match loss {
        Loss::Reduced(value) => vec![*value],
        Loss::PerRow(rows) => rows.clone(),
    };
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}
