//! The vocabulary-sharded cross-entropy on Burn tensors (src/sharded.rs):
//! two and three shards, combined by the in-process all-reduce and by the
//! max-through-sum form a sum-only collective uses, against xent's f64
//! reference and the unsharded xent-burn loss and gradient. Also that Burn's
//! own collective all-reduce is refused on the wgpu runtime (the reason the
//! in-process all-reduce exists). On lavapipe in CI; without an adapter these
//! fail unless `XENT_ALLOW_NO_GPU=1`.

mod common;

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use xent::{CrossEntropyOptions, Reduction, Shape, VocabShard};
use xent_burn::{
    AllReduce, CrossEntropyLossConfig, Error, InProcess, LogitShard, MaxThroughSum, ReduceOp, ShardedCrossEntropy,
    Upstream,
};

use common::{assert_close, device, host, reference, values};

const ROWS: usize = 9;
const CLASSES: usize = 13;

/// Logits `[ROWS, CLASSES]` (row 4 confident: its target 40 above the rest;
/// row 1's last class at 800, so that `exp` overflows unless every shard
/// rescales to the true row maximum; row 6 with a tie at its maximum) and targets (rows 2 and 7 ignored, targets
/// at both ends of the vocabulary and at shard edges).
fn batch() -> (Vec<f32>, Vec<i64>) {
    let mut logits = values(ROWS * CLASSES, 31, 3.0);
    let targets: Vec<i64> = vec![0, 12, -100, 5, 9, 4, 8, -100, 3];
    logits[4 * CLASSES + 9] = 40.0;
    logits[CLASSES + 12] = 800.0;
    logits[6 * CLASSES + 2] = 7.0;
    logits[6 * CLASSES + 11] = 7.0;
    (logits, targets)
}

fn class_weights() -> Vec<f32> {
    values(CLASSES, 32, 0.5).iter().map(|w| w + 1.0).collect()
}

/// The columns `[shard.start(), shard.end())` of the batch's logits as a tensor.
fn shard_logits(logits: &[f32], shard: VocabShard, device: &Device) -> LogitShard {
    let columns: Vec<f32> = logits
        .chunks(CLASSES)
        .flat_map(|row| row[shard.start()..shard.end()].iter().copied())
        .collect();
    LogitShard {
        shard,
        logits: Tensor::from_data(TensorData::new(columns, [ROWS, shard.len()]), device),
    }
}

/// Each shard's gradient put back side by side: `[ROWS, CLASSES]` row-major.
fn joined(gradients: Vec<Tensor<2>>) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = gradients.into_iter().map(host).collect();
    let widths: Vec<usize> = parts.iter().map(|part| part.len() / ROWS).collect();
    (0..ROWS)
        .flat_map(|row| {
            parts
                .iter()
                .zip(&widths)
                .flat_map(move |(part, &width)| part[row * width..(row + 1) * width].iter().copied())
        })
        .collect()
}

/// The sharded loss and gradient of `config` with `parts` shards through
/// `collective`, against the f64 reference and the unsharded xent-burn call.
fn check_sharded(config: &CrossEntropyLossConfig, parts: usize, collective: &impl AllReduce) {
    let Some(device) = device() else { return };
    let (logits, targets) = batch();
    let shards = VocabShard::split(CLASSES, parts)
        .expect("shards")
        .into_iter()
        .map(|shard| shard_logits(&logits, shard, &device))
        .collect();
    let options = CrossEntropyOptions {
        reduction: config.reduction,
        ignore_index: config.ignore_index,
        weight: config.weight.clone(),
        label_smoothing: config.label_smoothing,
        ..CrossEntropyOptions::default()
    };
    let target_tensor = || Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [ROWS]), &device);
    let out = ShardedCrossEntropy::new(options)
        .forward_backward(shards, target_tensor(), collective)
        .expect("the sharded loss");
    assert_eq!(out.gradients.len(), parts);
    let (loss, gradient) = (host(out.loss), joined(out.gradients));

    let (expected_loss, expected_gradient) = reference(config, Shape::new(ROWS, CLASSES), &logits, &targets, &[1.0]);
    assert_close("loss vs f64", &loss, &expected_loss, 2e-6);
    assert_close("gradient vs f64", &gradient, &expected_gradient, 2e-6);

    let whole = Tensor::<2>::from_data(TensorData::new(logits.clone(), [ROWS, CLASSES]), &device);
    let (unsharded_loss, unsharded_gradient) = config
        .init()
        .expect("config")
        .loss_and_gradient(whole, target_tensor(), Upstream::default())
        .expect("the unsharded loss");
    let widen = |tensor| common::widen(&host::<2>(tensor));
    assert_close("loss vs unsharded", &loss, &common::widen(&host(unsharded_loss)), 2e-6);
    assert_close("gradient vs unsharded", &gradient, &widen(unsharded_gradient), 2e-6);
    // Without smoothing, the confident row's target gradient ∝ p_y − 1 ≈ −e^{-34}
    // is kept (xent's confident path survives the all-reduce), not rounded to 0.
    let confident = gradient[4 * CLASSES + 9];
    assert!(
        config.label_smoothing > 0.0 || confident < 0.0,
        "confident row's target gradient {confident}"
    );
}

fn mean_ignored_weighted() -> CrossEntropyLossConfig {
    CrossEntropyLossConfig::new().with_weight(Some(class_weights()))
}

fn sum_smoothed() -> CrossEntropyLossConfig {
    CrossEntropyLossConfig::new()
        .with_reduction(Reduction::Sum)
        .with_label_smoothing(0.1)
}

#[test]
fn two_shards_mean_with_ignore_index_and_weights() {
    check_sharded(&mean_ignored_weighted(), 2, &InProcess);
}

#[test]
fn three_shards_mean_with_ignore_index_and_weights() {
    check_sharded(&mean_ignored_weighted(), 3, &InProcess);
}

#[test]
fn two_shards_sum_with_label_smoothing() {
    check_sharded(&sum_smoothed(), 2, &InProcess);
}

#[test]
fn three_shards_sum_with_label_smoothing() {
    check_sharded(&sum_smoothed(), 3, &InProcess);
}

#[test]
fn max_through_a_sum_only_collective_gives_the_same_loss() {
    check_sharded(&mean_ignored_weighted(), 3, &MaxThroughSum(InProcess));
    check_sharded(&sum_smoothed(), 2, &MaxThroughSum(InProcess));
}

/// Both all-reduces on values whose maxima are negative (so a max taken over
/// the gathered zeros would be wrong) and whose f64 bits do not fit an f32.
#[test]
fn all_reduces_are_exact_in_f64() {
    let Some(device) = device() else { return };
    let ranks: Vec<Vec<f64>> = vec![
        vec![-3.0, -1.0 - 1e-12, -7.5],
        vec![-2.0, -1.0, -9.0],
        vec![-5.0, -4.0, -8.0],
    ];
    let tensors = || {
        ranks
            .iter()
            .map(|rank| Tensor::<2>::from_data(TensorData::new(rank.clone(), [1, 3]), (&device, DType::F64)))
            .collect::<Vec<_>>()
    };
    let read = |tensor: Tensor<2>| tensor.into_data().try_into_vec::<f64>().expect("f64");
    for collective in [&InProcess as &dyn AllReduce, &MaxThroughSum(InProcess)] {
        let maxima = collective.all_reduce(tensors(), ReduceOp::Max).expect("max");
        let sums = collective.all_reduce(tensors(), ReduceOp::Sum).expect("sum");
        assert_eq!(maxima.len(), 3);
        for (max, sum) in maxima.into_iter().zip(sums) {
            assert_eq!(read(max), [-2.0, -1.0, -7.5]);
            assert_eq!(read(sum), [-10.0, -6.0 - 1e-12, -24.5]);
        }
    }
}

#[test]
fn bad_shards_are_errors() {
    let Some(device) = device() else { return };
    let (logits, targets) = batch();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [ROWS]), &device);
    let loss = ShardedCrossEntropy::new(CrossEntropyOptions::default());
    let shard = |start, len| shard_logits(&logits, VocabShard::new(start, len, CLASSES).expect("shard"), &device);
    let cases = [
        ("none", vec![]),
        ("a gap", vec![shard(0, 5), shard(6, 7)]),
        ("overlap", vec![shard(0, 6), shard(5, 8)]),
        ("out of order", vec![shard(5, 8), shard(0, 5)]),
        ("short", vec![shard(0, 5), shard(5, 4)]),
    ];
    for (what, shards) in cases {
        let result = loss.forward_backward(shards, targets.clone(), &InProcess);
        assert!(matches!(result, Err(Error::InvalidInput(_))), "{what}: {result:?}");
    }
    let mut wrong_width = vec![shard(0, 5), shard(5, 8)];
    wrong_width[1].logits = Tensor::zeros([ROWS, 7], &device);
    let result = loss.forward_backward(wrong_width, targets.clone(), &InProcess);
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    let out_of_range = Tensor::<1, Int>::from_data(TensorData::new(vec![13i64; ROWS], [ROWS]), &device);
    let result = loss.forward_backward(vec![shard(0, 5), shard(5, 8)], out_of_range, &InProcess);
    assert!(matches!(result, Err(Error::Xent(_))), "{result:?}");
}

/// Burn 0.22's collective all-reduce needs a transport between devices, which
/// only its CUDA runtime (NCCL) has: on wgpu it panics before doing anything.
/// When this starts failing, Burn's `all_reduce` can serve as the `Sum` of an
/// `AllReduce` on wgpu too (README, "Sharded vocabularies").
#[test]
fn burn_all_reduce_is_refused_on_wgpu() {
    let Some(device) = device() else { return };
    let tensor = Tensor::<2>::ones([1, 4], &device);
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        all_reduce(tensor, ReduceOperation::Sum, vec![device.clone()]).resolve()
    }));
    let message = attempt.err().and_then(|panic| panic.downcast_ref::<String>().cloned());
    assert!(
        message
            .as_deref()
            .is_some_and(|text| text.contains("no transport between its devices")),
        "{message:?}"
    );
}
