//! The vocabulary-sharded cross-entropy (`ShardedCrossEntropy`): a vocabulary
//! split into two and three (uneven) shards, on the CPU, on one GPU context and
//! over two GPU contexts; the combined loss and the concatenated shard gradients
//! against the f64 reference and against the unsharded `CrossEntropyLoss`, for
//! every option and reduction, with ignored rows and targets at shard borders;
//! the all-reduce path; and bad input as typed errors.

mod common;

use common::{Logits, batch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::reference::{ReferenceCrossEntropy, cross_entropy_f64};
use xent::{
    Backend, CombinedStats, Cpu, CrossEntropyLoss, Error, Loss, Reduction, Shape, ShardStats, ShardedCrossEntropy,
    Targets, VocabShard,
};

/// Where each shard runs.
type Placement<'a> = Vec<&'a dyn Backend>;

/// The columns `shard` of row-major `rows × total` logits, contiguous.
fn shard_columns(logits: &[f32], total: usize, shard: VocabShard) -> Vec<f32> {
    logits
        .chunks_exact(total)
        .flat_map(|row| row[shard.start()..shard.end()].iter().copied())
        .collect()
}

/// Runs every shard's statistics on its backend, combines them in order, and
/// runs every shard's gradient; returns the combination and the gradient
/// scattered back into the whole vocabulary's layout.
fn run_sharded(
    loss: &ShardedCrossEntropy,
    placement: &Placement<'_>,
    shards: &[VocabShard],
    logits: &[f32],
    targets: &[i64],
) -> (CombinedStats, Vec<f32>) {
    let total = shards[0].total_classes();
    let slices: Vec<Vec<f32>> = shards
        .iter()
        .map(|&shard| shard_columns(logits, total, shard))
        .collect();
    let stats: Vec<_> = shards
        .iter()
        .zip(&slices)
        .zip(placement)
        .map(|((&shard, slice), backend)| loss.stats(*backend, shard, slice, targets).expect("stats"))
        .collect();
    let combined = loss.combine_shards(&stats, targets).expect("combine");
    let mut gradient = vec![f32::NAN; logits.len()];
    for ((&shard, slice), backend) in shards.iter().zip(&slices).zip(placement) {
        let mut part = vec![f32::NAN; slice.len()];
        loss.gradient(*backend, shard, slice, targets, &combined, &mut part)
            .expect("gradient");
        for (row, values) in part.chunks_exact(shard.len()).enumerate() {
            gradient[row * total + shard.start()..row * total + shard.end()].copy_from_slice(values);
        }
    }
    (combined, gradient)
}

fn close(actual: f32, expected: f64) -> bool {
    let error = (f64::from(actual) - expected).abs();
    error <= 1e-5 * expected.abs() + 1e-9 || (actual.is_nan() && expected.is_nan())
}

fn assert_loss(actual: &Loss, expected: &[f64], reduced: f64, label: &str) {
    match actual {
        Loss::Reduced(value) => assert!(close(*value, reduced), "{label}: loss {value} vs {reduced}"),
        Loss::PerRow(values) => {
            assert_eq!(values.len(), expected.len(), "{label}: rows");
            for (row, (&value, &reference)) in values.iter().zip(expected).enumerate() {
                assert!(
                    close(value, reference),
                    "{label}: row {row} loss {value} vs {reference}"
                );
            }
        }
    }
}

/// Loss, z-loss, lse and gradient against the f64 reference.
fn assert_matches_reference(combined: &CombinedStats, gradient: &[f32], expected: &ReferenceCrossEntropy, label: &str) {
    assert_loss(&combined.loss, &expected.row_losses, expected.loss, label);
    if let Some(z_loss) = &combined.z_loss {
        assert_loss(z_loss, &expected.row_z, expected.z_loss, &format!("{label} z-loss"));
    }
    for (row, (&lse, &reference)) in combined.lse().iter().zip(&expected.row_lse).enumerate() {
        assert!(
            (lse - reference).abs() <= 1e-6 * (1.0 + reference.abs()),
            "{label}: lse {row} {lse} vs {reference}"
        );
    }
    let largest = expected
        .gradient
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    for (index, (&value, &reference)) in gradient.iter().zip(&expected.gradient).enumerate() {
        let both_nan = value.is_nan() && reference.is_nan();
        assert!(
            both_nan || (f64::from(value) - reference).abs() <= 2e-6 * largest,
            "{label}: gradient[{index}] {value} vs {reference}"
        );
    }
}

/// The same loss and gradient as the unsharded `CrossEntropyLoss` on `backend`.
fn assert_matches_unsharded(
    backend: &dyn Backend,
    loss: &ShardedCrossEntropy,
    combined: &CombinedStats,
    gradient: &[f32],
    logits: &[f32],
    targets: &[i64],
    label: &str,
) {
    let whole = CrossEntropyLoss::with_options(loss.options().clone());
    let mut expected_gradient = vec![0.0f32; logits.len()];
    let shape = Shape::new(targets.len(), logits.len() / targets.len());
    let expected = whole
        .loss_and_grad(backend, logits, targets, shape, &mut expected_gradient[..])
        .expect("unsharded");
    let widen = |values: &[f32]| values.iter().map(|&value| f64::from(value)).collect::<Vec<_>>();
    match (&combined.loss, &expected) {
        (Loss::Reduced(value), Loss::Reduced(reference)) => {
            assert!(
                close(*value, f64::from(*reference)),
                "{label}: loss {value} vs unsharded {reference}"
            )
        }
        (Loss::PerRow(_), Loss::PerRow(reference)) => assert_loss(&combined.loss, &widen(reference), 0.0, label),
        other => panic!("{label}: {other:?}"),
    }
    let largest = expected_gradient
        .iter()
        .fold(0.0f32, |largest, value| largest.max(value.abs()));
    for (index, (&value, &reference)) in gradient.iter().zip(&expected_gradient).enumerate() {
        assert!(
            (value - reference).abs() <= 3e-6 * largest || (value.is_nan() && reference.is_nan()),
            "{label}: gradient[{index}] {value} vs unsharded {reference}"
        );
    }
}

fn weights(classes: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..classes).map(|_| rng.random_range(0.1..3.0)).collect()
}

/// Every option alone, then all of them together.
fn option_sets(classes: usize) -> Vec<(&'static str, CrossEntropyLoss)> {
    vec![
        ("plain", CrossEntropyLoss::new()),
        ("ignore_index", CrossEntropyLoss::new().ignore_index(7)),
        ("weights", CrossEntropyLoss::new().weight(weights(classes, 3))),
        ("smoothing", CrossEntropyLoss::new().label_smoothing(0.2)),
        ("z-loss", CrossEntropyLoss::new().z_loss(1e-3)),
        ("softcap", CrossEntropyLoss::new().softcap(5.0)),
        ("logit scale", CrossEntropyLoss::new().logit_scale(-1.5)),
        (
            "all options",
            CrossEntropyLoss::new()
                .ignore_index(7)
                .weight(weights(classes, 1))
                .label_smoothing(0.15)
                .z_loss(1e-3)
                .softcap(5.0)
                .logit_scale(1.5),
        ),
    ]
}

/// Uneven cuts: 2 shards and 3 shards, the last of each a few classes wide.
fn splits(total: usize) -> Vec<Vec<VocabShard>> {
    let cut = |bounds: &[usize]| {
        bounds
            .windows(2)
            .map(|pair| VocabShard::new(pair[0], pair[1] - pair[0], total).expect("valid shard"))
            .collect()
    };
    vec![
        VocabShard::split(total, 2).expect("two shards"),
        cut(&[0, 1, total - 5, total]),
        cut(&[0, total / 3, total / 3 + 40, total]),
    ]
}

/// Targets at every shard border of every split, and every fifth row ignored (7).
fn border_targets(mut targets: Vec<i64>, total: usize) -> Vec<i64> {
    let mut borders: Vec<i64> = splits(total)
        .iter()
        .flatten()
        .flat_map(|shard| [shard.start() as i64, shard.end() as i64 - 1])
        .collect();
    borders.sort_unstable();
    borders.dedup();
    for (target, border) in targets.iter_mut().skip(1).step_by(2).zip(borders) {
        *target = border;
    }
    targets.iter_mut().step_by(5).for_each(|target| *target = 7);
    targets
}

/// Every option set, reduction and split with every shard on `placement(shards)`.
fn check_all(name: &str, placement: impl Fn(usize) -> Placement<'static>, unsharded: &dyn Backend) {
    let (rows, total) = (40, 300);
    let (logits, targets) = batch(rows, total, Logits::Random, 11);
    let targets = border_targets(targets, total);
    let shape = Shape::new(rows, total);
    for (option_name, options) in option_sets(total) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let options = options.clone().reduction(reduction);
            let expected = cross_entropy_f64(&logits, Targets::I64(&targets), shape, options.options());
            let loss = ShardedCrossEntropy::from(options);
            for shards in splits(total) {
                let label = format!("{name} {option_name} {reduction} over {} shards", shards.len());
                let (combined, gradient) = run_sharded(&loss, &placement(shards.len()), &shards, &logits, &targets);
                assert_matches_reference(&combined, &gradient, &expected, &label);
                assert_matches_unsharded(unsharded, &loss, &combined, &gradient, &logits, &targets, &label);
            }
        }
    }
}

#[test]
fn cpu_shards_match_the_unsharded_loss_for_every_option() {
    check_all("cpu", |shards| vec![&Cpu as &dyn Backend; shards], &Cpu);
}

#[test]
fn shards_on_one_gpu_context_match_the_unsharded_loss_for_every_option() {
    let Some(gpu) = common::gpu() else { return };
    check_all("gpu", |shards| vec![gpu as &dyn Backend; shards], gpu);
}

#[test]
fn shards_over_two_gpu_contexts_match_the_unsharded_loss_for_every_option() {
    let (Some(first), Some(second)) = (common::gpu(), common::gpu_without_subgroups()) else {
        return;
    };
    let placement = |shards: usize| {
        (0..shards)
            .map(|index| {
                if index % 2 == 0 {
                    first as &dyn Backend
                } else {
                    second as &dyn Backend
                }
            })
            .collect()
    };
    check_all("two gpus", placement, first);
}

#[test]
fn chunked_gpu_shards_and_a_cpu_shard_together() {
    let Some(chunked) = common::gpu_chunked() else { return };
    // 300 rows of 2500 classes: the first shard's logits (3 MB) exceed the 2 MiB binding cap.
    let (rows, total) = (300, 2600);
    let (logits, targets) = batch(rows, total, Logits::Random, 5);
    let targets = border_targets(targets, total);
    let loss = ShardedCrossEntropy::from(
        CrossEntropyLoss::new()
            .label_smoothing(0.1)
            .ignore_index(7)
            .z_loss(1e-4),
    );
    let shards = vec![
        VocabShard::new(0, 2500, total).expect("valid"),
        VocabShard::new(2500, 100, total).expect("valid"),
    ];
    let placement: Placement<'_> = vec![chunked, &Cpu];
    let (combined, gradient) = run_sharded(&loss, &placement, &shards, &logits, &targets);
    let expected = cross_entropy_f64(&logits, Targets::I64(&targets), Shape::new(rows, total), loss.options());
    assert_matches_reference(&combined, &gradient, &expected, "chunked gpu + cpu");
}

/// The CPU and, where an adapter exists, the default GPU context.
fn cpu_and_gpu() -> Vec<&'static dyn Backend> {
    let mut backends: Vec<&'static dyn Backend> = vec![&Cpu];
    backends.extend(common::gpu().map(|gpu| gpu as &dyn Backend));
    backends
}

/// `options` over `parts` even shards, all on `backend`, against the f64 reference
/// of the `rows × total` batch.
fn check_even_split(
    backend: &dyn Backend,
    options: CrossEntropyLoss,
    batch: (&[f32], &[i64]),
    parts: usize,
    label: &str,
) {
    let (logits, targets) = batch;
    let total = logits.len() / targets.len();
    let expected = cross_entropy_f64(
        logits,
        Targets::I64(targets),
        Shape::new(targets.len(), total),
        options.options(),
    );
    let loss = ShardedCrossEntropy::from(options);
    let shards = VocabShard::split(total, parts).expect("even shards");
    let (combined, gradient) = run_sharded(&loss, &vec![backend; parts], &shards, logits, targets);
    assert_matches_reference(
        &combined,
        &gradient,
        &expected,
        &format!("{} {label}", backend.describe()),
    );
}

#[test]
fn offset_and_confident_rows_keep_their_precision() {
    for kind in [Logits::Offset, Logits::Confident, Logits::AllEqual, Logits::Scaled] {
        let (logits, targets) = batch(16, 257, kind, 9);
        for backend in cpu_and_gpu() {
            for options in [
                CrossEntropyLoss::new().reduction(Reduction::None),
                CrossEntropyLoss::new().label_smoothing(0.1),
            ] {
                check_even_split(backend, options, (&logits, &targets), 3, &format!("{kind:?}"));
            }
        }
    }
}

/// A softcap far above the logits leaves them as they are, on every shard as
/// unsharded (see `softcaps_far_above_the_logits_leave_them_unchanged` in tests/options.rs).
#[test]
fn softcaps_far_above_the_logits_leave_them_unchanged() {
    let (logits, targets) = batch(16, 257, Logits::Random, 13);
    for backend in cpu_and_gpu() {
        for softcap in [1e6, 1e12, 1e20, 3e38] {
            let options = CrossEntropyLoss::new().softcap(softcap).label_smoothing(0.1);
            check_even_split(
                backend,
                options,
                (&logits, &targets),
                2,
                &format!("softcap {softcap:e}"),
            );
        }
    }
}

#[test]
fn every_row_ignored_gives_a_nan_mean_and_a_zero_gradient() {
    let (logits, _) = batch(4, 10, Logits::Random, 2);
    let targets = [-100i64; 4];
    let shards = VocabShard::split(10, 2).expect("two shards");
    let mut backends: Vec<&dyn Backend> = vec![&Cpu];
    backends.extend(common::gpu().map(|gpu| gpu as &dyn Backend));
    for backend in backends {
        let (combined, gradient) = run_sharded(
            &ShardedCrossEntropy::new(),
            &vec![backend; 2],
            &shards,
            &logits,
            &targets,
        );
        assert!(
            combined.loss.value().expect("reduced").is_nan(),
            "{}",
            backend.describe()
        );
        assert!(gradient.iter().all(|&value| value == 0.0), "{}", backend.describe());
    }
}

#[test]
fn the_all_reduce_path_gives_the_combination_of_the_shards() {
    let (rows, total) = (12, 90);
    let (logits, targets) = batch(rows, total, Logits::Random, 21);
    let loss = ShardedCrossEntropy::from(CrossEntropyLoss::new().label_smoothing(0.3).weight(weights(total, 8)));
    let shards = VocabShard::split(total, 3).expect("three shards");
    let stats: Vec<_> = shards
        .iter()
        .map(|&shard| {
            loss.stats(&Cpu, shard, &shard_columns(&logits, total, shard), &targets[..])
                .expect("stats")
        })
        .collect();
    // Each "rank" takes part in max then sum all-reduces.
    let global_max: Vec<f64> = (0..rows)
        .map(|row| {
            stats
                .iter()
                .map(|shard| shard.max()[row])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let mut reduced = stats[0].sums_at(&global_max).expect("rescaled");
    for shard_stats in &stats[1..] {
        let rank_sums = shard_stats.sums_at(&global_max).expect("rescaled");
        for (sum, value) in reduced.values_mut().iter_mut().zip(rank_sums.values()) {
            *sum += value;
        }
    }
    let from_sums = loss
        .combine_sums(total, &global_max, &reduced, &targets[..])
        .expect("combined");
    assert_eq!(from_sums, loss.combine_shards(&stats, &targets[..]).expect("combined"));
    let expected = cross_entropy_f64(&logits, Targets::I64(&targets), Shape::new(rows, total), loss.options());
    assert!(close(from_sums.loss.value().expect("mean"), expected.loss));
}

/// Statistics, sums and combined statistics carry the options they were computed
/// with: combined, or turned into a gradient, under other options they would give
/// silently wrong numbers, so that is an error (the reduction alone may differ
/// between the statistics and their combination, which it does not change).
/// A global maximum below a shard's own is no all-reduced maximum: an error too.
#[test]
fn statistics_of_other_options_or_maxima_are_refused() {
    let total = 10;
    let (logits, targets) = batch(3, total, Logits::Random, 8);
    let shards = VocabShard::split(total, 2).expect("two shards");
    let capped = ShardedCrossEntropy::from(CrossEntropyLoss::new().softcap(2.0));
    let smoothed = ShardedCrossEntropy::from(CrossEntropyLoss::new().label_smoothing(0.3));
    let stats_of = |loss: &ShardedCrossEntropy| -> Vec<ShardStats> {
        shards
            .iter()
            .map(|&shard| loss.stats(&Cpu, shard, &shard_columns(&logits, total, shard), &targets[..]))
            .collect::<Result<_, _>>()
            .expect("stats")
    };
    let refused = |result: Result<CombinedStats, Error>| matches!(result, Err(Error::InvalidShards(message)) if message.contains("other options"));
    let capped_stats = stats_of(&capped);
    assert!(refused(smoothed.combine_shards(&capped_stats, &targets[..])));
    let mixed = [capped_stats[0].clone(), stats_of(&smoothed)[1].clone()];
    assert!(refused(capped.combine_shards(&mixed, &targets[..])));
    let global_max: Vec<f64> = (0..3)
        .map(|row| capped_stats[0].max()[row].max(capped_stats[1].max()[row]))
        .collect();
    let mut sums = capped_stats[0].sums_at(&global_max).expect("sums");
    sums.add(&capped_stats[1].sums_at(&global_max).expect("sums"))
        .expect("add");
    assert!(refused(smoothed.combine_sums(total, &global_max, &sums, &targets[..])));
    let smoothed_stats = stats_of(&smoothed);
    let smoothed_sums = smoothed_stats[1].sums_at(smoothed_stats[1].max()).expect("sums");
    assert!(matches!(
        sums.clone().add(&smoothed_sums),
        Err(Error::InvalidShards(message)) if message.contains("other options")
    ));
    // The reduction does not change the statistics: they combine under any.
    let summed = ShardedCrossEntropy::from(CrossEntropyLoss::new().softcap(2.0).reduction(Reduction::Sum));
    let combined = summed.combine_shards(&capped_stats, &targets[..]).expect("combined");
    let expected = cross_entropy_f64(&logits, Targets::I64(&targets), Shape::new(3, total), summed.options());
    assert!(close(combined.loss.value().expect("sum"), expected.loss));
    // The gradient under other options than the combination's (the reduction included).
    let left = shard_columns(&logits, total, shards[0]);
    let mut gradient = vec![0.0f32; left.len()];
    for other in [&capped, &smoothed] {
        assert!(matches!(
            other.gradient(&Cpu, shards[0], &left, &targets[..], &combined, &mut gradient),
            Err(Error::InvalidShards(message)) if message.contains("other options")
        ));
    }
    summed
        .gradient(&Cpu, shards[0], &left, &targets[..], &combined, &mut gradient)
        .expect("same options");
    // A "global" maximum below the shard's own.
    let below: Vec<f64> = capped_stats[0].max().iter().map(|max| max - 1.0).collect();
    assert!(matches!(capped_stats[0].sums_at(&below), Err(Error::InvalidShards(message)) if message.contains("below")));
}

#[test]
fn bad_shards_and_targets_are_typed_errors() {
    let loss = ShardedCrossEntropy::new();
    let total = 10;
    let (logits, targets) = batch(2, total, Logits::Random, 4);
    let stats_of = |shard: VocabShard| loss.stats(&Cpu, shard, &shard_columns(&logits, total, shard), &targets[..]);
    let shard = |start, len| VocabShard::new(start, len, total).expect("valid shard");
    let invalid = |result: Result<CombinedStats, Error>| matches!(result, Err(Error::InvalidShards(_)));

    assert!(matches!(VocabShard::new(8, 3, total), Err(Error::InvalidShards(_))));
    assert!(matches!(VocabShard::new(0, 0, total), Err(Error::InvalidShards(_))));
    assert!(matches!(
        VocabShard::new(usize::MAX, 2, total),
        Err(Error::InvalidShards(_))
    ));
    assert!(VocabShard::split(3, 4).is_err());

    let (left, right) = (
        stats_of(shard(0, 6)).expect("stats"),
        stats_of(shard(6, 4)).expect("stats"),
    );
    let overlapping = stats_of(shard(4, 6)).expect("stats");
    let short = stats_of(shard(6, 3)).expect("stats");
    assert!(
        invalid(loss.combine_shards(&[left.clone(), overlapping], &targets[..])),
        "overlap"
    );
    assert!(
        invalid(loss.combine_shards(&[left.clone(), short], &targets[..])),
        "incomplete"
    );
    assert!(
        invalid(loss.combine_shards(std::slice::from_ref(&left), &targets[..])),
        "one shard of two"
    );
    assert!(
        invalid(loss.combine_shards(&[right.clone(), left.clone()], &targets[..])),
        "out of order"
    );
    assert!(invalid(loss.combine_shards(&[], &targets[..])), "no shards");
    assert!(
        invalid(loss.combine_shards(&[left.clone(), right.clone()], &targets[..1])),
        "rows"
    );
    let other_vocabulary = loss
        .stats(
            &Cpu,
            VocabShard::new(6, 4, 11).expect("valid"),
            &shard_columns(&logits, total, shard(6, 4)),
            &targets[..],
        )
        .expect("stats");
    assert!(
        invalid(loss.combine_shards(&[left.clone(), other_vocabulary], &targets[..])),
        "vocabulary"
    );

    let out_of_range = [3i64, 10];
    assert_eq!(
        loss.stats(
            &Cpu,
            shard(0, 6),
            &shard_columns(&logits, total, shard(0, 6)),
            &out_of_range[..]
        ),
        Err(Error::TargetOutOfRange {
            row: 1,
            value: 10,
            classes: total
        })
    );
    assert_eq!(
        loss.combine_shards(&[left.clone(), right.clone()], &[-1i64, 2][..]),
        Err(Error::TargetOutOfRange {
            row: 0,
            value: -1,
            classes: total
        })
    );
    assert!(matches!(
        loss.stats(&Cpu, shard(0, 6), &logits[..5], &targets[..]),
        Err(Error::LogitsLength { .. })
    ));
    assert!(matches!(
        loss.stats(&Cpu, shard(0, 6), &logits[..12], Targets::Probabilities(&[0.5; 20])),
        Err(Error::InvalidOption(_))
    ));
    let weighted = ShardedCrossEntropy::from(CrossEntropyLoss::new().weight(vec![1.0; 6]));
    assert!(matches!(
        weighted.stats(
            &Cpu,
            shard(0, 6),
            &shard_columns(&logits, total, shard(0, 6)),
            &targets[..]
        ),
        Err(Error::InvalidOption(_))
    ));

    let combined = loss.combine_shards(&[left, right], &targets[..]).expect("combined");
    let slice = shard_columns(&logits, total, shard(6, 4));
    let mut gradient = vec![0.0f32; slice.len()];
    assert!(matches!(
        loss.gradient(&Cpu, shard(6, 4), &slice, &targets[..], &combined, &mut gradient[..3]),
        Err(Error::GradientLength { .. })
    ));
    assert!(matches!(
        loss.gradient(
            &Cpu,
            shard(6, 4),
            &slice[..4],
            &targets[..1],
            &combined,
            &mut gradient[..4]
        ),
        Err(Error::InvalidShards(_))
    ));
    let first_stats = ShardedCrossEntropy::new()
        .stats(
            &Cpu,
            shard(0, 6),
            &shard_columns(&logits, total, shard(0, 6)),
            &targets[..],
        )
        .expect("stats");
    let mut sums = first_stats.sums_at(first_stats.max()).expect("sums");
    assert!(matches!(sums.add(&sums.clone()), Ok(())));
    // Sums of one shard only: a target outside it is held by no shard.
    let row_of_other_shard = [7i64, 8];
    assert!(invalid(loss.combine_sums(
        total,
        &[0.0, 0.0],
        &sums,
        &row_of_other_shard[..]
    )));
    assert!(invalid(loss.combine_sums(
        total,
        &[0.0],
        &sums,
        &row_of_other_shard[..]
    )));
}

#[test]
fn nan_and_infinite_logits_give_nan_rows_as_unsharded() {
    let (rows, total) = (3, 12);
    let (mut logits, targets) = batch(rows, total, Logits::Random, 13);
    logits[2] = f32::NAN; // row 0, first shard
    logits[total + 10] = f32::INFINITY; // row 1, last shard
    let shape = Shape::new(rows, total);
    let options = CrossEntropyLoss::new().reduction(Reduction::None).label_smoothing(0.1);
    let expected = cross_entropy_f64(&logits, Targets::I64(&targets), shape, options.options());
    let loss = ShardedCrossEntropy::from(options);
    let shards = VocabShard::split(total, 3).expect("three shards");
    let mut backends: Vec<&dyn Backend> = vec![&Cpu];
    backends.extend(common::gpu().map(|gpu| gpu as &dyn Backend));
    for backend in backends {
        let (combined, gradient) = run_sharded(&loss, &vec![backend; 3], &shards, &logits, &targets);
        let label = backend.describe();
        let per_row = combined.loss.per_row().expect("none");
        assert!(per_row[0].is_nan() && per_row[1].is_nan(), "{label}: {per_row:?}");
        assert!(close(per_row[2], expected.row_losses[2]), "{label}: {per_row:?}");
        assert!(gradient[..2 * total].iter().all(|value| value.is_nan()), "{label}");
        assert!(gradient[2 * total..].iter().all(|value| value.is_finite()), "{label}");
    }
}

/// The per-row values of `loss` (reduction `none`).
fn rows_of(loss: &Loss) -> &[f32] {
    loss.per_row().expect("reduction none")
}

/// Random batches whose logits hold NaN, ±inf, ±1e30, subnormals and exp's
/// edges (none, a few, a fifth or all of them), under random options (class
/// weights with zeros, label smoothing up to 1, z-loss, softcap up to 1e30, a
/// negative or fractional logit scale, ignored rows), split into 2 or 3 random
/// shards: on the CPU, on the GPU and on both at once, the sharded loss puts
/// NaN and infinities in the row losses, z-terms, lse and gradient where the
/// unsharded CPU loss does, and its finite values within f32 rounding (the
/// mixed placement without a softcap: README.md, "Sharded vocabularies").
/// `SHARDED_NONFINITE_SEED` and `SHARDED_NONFINITE_CASES` override the fixed
/// seed and count.
#[test]
fn nonfinite_logits_land_where_the_unsharded_loss_puts_them() {
    use common::nonfinite::{LOGIT_SPECIALS, agrees, assert_no_disagreements, setting};
    let mut placements: Vec<(&str, Placement<'static>)> = vec![("cpu", vec![&Cpu; 3])];
    if let Some(gpu) = common::gpu() {
        placements.push(("gpu", vec![gpu; 3]));
        placements.push(("gpu, cpu, gpu", vec![gpu, &Cpu, gpu]));
    }
    let mut rng = StdRng::seed_from_u64(setting("SHARDED_NONFINITE_SEED", 0x0005_aded));
    let cases = setting("SHARDED_NONFINITE_CASES", 150);
    let mut failures = Vec::new();
    for index in 0..cases {
        let total = [2, 3, 7, 50, 300, 1001][rng.random_range(0..6)];
        let rows = rng.random_range(1..5);
        let rate = [0.0, 0.01, 0.2, 1.0][rng.random_range(0..4)];
        let logits: Vec<f32> = (0..rows * total)
            .map(|_| match rng.random_bool(rate) {
                true => LOGIT_SPECIALS[rng.random_range(0..LOGIT_SPECIALS.len())],
                false => rng.random_range(-5.0..5.0),
            })
            .collect();
        let mut options = CrossEntropyLoss::new().reduction(Reduction::None);
        if rng.random_bool(0.3) {
            options = options.weight((0..total).map(|_| rng.random_range(0.0..2.0)).collect());
        }
        if rng.random_bool(0.3) {
            options = options.label_smoothing([0.1, 1.0][rng.random_range(0..2)]);
        }
        if rng.random_bool(0.3) {
            options = options.z_loss(1e-3);
        }
        if rng.random_bool(0.3) {
            options = options.softcap([0.5, 30.0, 1e30][rng.random_range(0..3)]);
        }
        if rng.random_bool(0.2) {
            options = options.logit_scale([-1.0, 0.5, 2.0][rng.random_range(0..3)]);
        }
        let targets: Vec<i64> = (0..rows)
            .map(|_| match rng.random_bool(0.2) {
                true => -100,
                false => rng.random_range(0..total as i64),
            })
            .collect();
        let shards = VocabShard::split(total, rng.random_range(2..4).min(total)).expect("shards");
        let shape = Shape::new(rows, total);
        let mut expected_gradient = vec![0.0f32; logits.len()];
        let expected = options
            .forward(
                &Cpu,
                &logits[..],
                &targets[..],
                shape,
                Some((&mut expected_gradient[..]).into()),
                true,
            )
            .expect("unsharded");
        let softcap = options.options().softcap.is_some();
        let loss = ShardedCrossEntropy::from(options);
        for (name, placement) in &placements {
            // The backends' tanh differ by an ulp of x', 7e22 at |x'| = 1e30: shards
            // of one row on both break its ties and cancel its M − x'_y differently.
            if softcap && name.contains(',') {
                continue;
            }
            let (combined, gradient) = run_sharded(&loss, placement, &shards, &logits, &targets);
            // f64 here, rounded as the unsharded loss rounds its lse.
            let lse: Vec<f32> = combined.lse().iter().map(|&lse| lse as f32).collect();
            let pairs = [
                ("loss", rows_of(&combined.loss), rows_of(&expected.loss)),
                ("lse", &lse[..], expected.lse.as_deref().unwrap_or_default()),
                ("gradient", &gradient[..], &expected_gradient[..]),
            ];
            let z_pair = combined.z_loss.as_ref().zip(expected.z_loss.as_ref());
            let z_pair = z_pair.map(|(actual, expected)| ("z-loss", rows_of(actual), rows_of(expected)));
            for (what, actual, expected) in pairs.into_iter().chain(z_pair) {
                let tolerance = if what == "gradient" { 1e-3 } else { 1e-4 };
                let first = (0..expected.len()).find(|&at| !agrees(actual[at], expected[at], tolerance));
                if actual.len() != expected.len() || first.is_some() {
                    let at = first.unwrap_or_default();
                    failures.push(format!(
                        "case {index} ({rows}×{total}, {} shards) on {name}: {what}[{at}] {:?} vs {:?}",
                        shards.len(),
                        actual.get(at),
                        expected.get(at)
                    ));
                }
            }
        }
    }
    assert_no_disagreements(&failures);
}
