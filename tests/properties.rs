//! Properties of the results: gradient rows sum to zero, gradients match finite
//! differences, runs are bit-identical, and the chunked path gives the same bits
//! as the unchunked one.

mod common;

use common::{Logits, batch};
use xent::reference;
use xent::{Backend, Context, CrossEntropyLoss, Loss, Reduction, Shape};

/// Loss, gradient and per-row losses of one call, for bitwise comparisons.
fn run(backend: &dyn Backend, logits: &[f32], targets: &[i64], shape: Shape, reduction: Reduction) -> (Loss, Vec<f32>) {
    let mut gradient = vec![f32::NAN; logits.len()];
    let loss = CrossEntropyLoss::new()
        .reduction(reduction)
        .loss_and_grad(backend, logits, targets, shape, &mut gradient)
        .expect("loss and gradient");
    (loss, gradient)
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

#[test]
fn gradient_rows_sum_to_zero() {
    for (name, backend) in common::all_backends() {
        for (rows, classes) in [(5, 3), (17, 1000), (4, 32_000)] {
            let (logits, targets) = batch(rows, classes, Logits::Random, 11);
            let (_, gradient) = run(backend, &logits, &targets, Shape::new(rows, classes), Reduction::Sum);
            for (row, values) in gradient.chunks(classes).enumerate() {
                let sum: f64 = values.iter().map(|&value| f64::from(value)).sum();
                assert!(
                    sum.abs() < 1e-5,
                    "{name} {rows}x{classes}: row {row} gradient sums to {sum:e}"
                );
            }
        }
    }
}

/// Central differences of the f64 reference's summed loss, with the f32 step
/// actually taken, against each backend's gradient of the sum.
#[test]
fn gradient_matches_finite_differences() {
    let (rows, classes) = (4, 6);
    let (logits, targets) = batch(rows, classes, Logits::Random, 3);
    let indices = common::class_indices(&targets);
    let total = |values: &[f32]| reference::row_losses_f64(values, &indices, classes).iter().sum::<f64>();
    let step = 1.0e-2f32;
    let numeric: Vec<f64> = (0..logits.len())
        .map(|index| {
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[index] += step;
            down[index] -= step;
            (total(&up) - total(&down)) / (f64::from(up[index]) - f64::from(down[index]))
        })
        .collect();
    for (name, backend) in common::all_backends() {
        let (_, gradient) = run(backend, &logits, &targets, Shape::new(rows, classes), Reduction::Sum);
        for (index, (&analytic, &numeric)) in gradient.iter().zip(&numeric).enumerate() {
            assert!(
                (f64::from(analytic) - numeric).abs() < 1e-4,
                "{name}: entry {index}: gradient {analytic} vs finite difference {numeric}"
            );
        }
    }
}

#[test]
fn two_runs_are_bit_identical() {
    for (name, backend) in common::all_backends() {
        for (rows, classes) in [(1000, 257), (70, 32_000), (3000, 7)] {
            let (logits, targets) = batch(rows, classes, Logits::Random, 5);
            let shape = Shape::new(rows, classes);
            for reduction in [Reduction::Mean, Reduction::None] {
                let (first_loss, first_gradient) = run(backend, &logits, &targets, shape, reduction);
                let (second_loss, second_gradient) = run(backend, &logits, &targets, shape, reduction);
                assert_eq!(
                    common::loss_bits(&first_loss),
                    common::loss_bits(&second_loss),
                    "{name} {rows}x{classes} loss"
                );
                assert_eq!(
                    bits(&first_gradient),
                    bits(&second_gradient),
                    "{name} {rows}x{classes} gradient"
                );
            }
        }
    }
}

#[test]
fn chunked_path_gives_the_same_bits() {
    // The same workgroup size as the chunked context: the reduction order depends on it.
    let whole = common::open(xent::ContextOptions {
        workgroup_size: Some(common::GPU_WORKGROUP_SIZE),
        ..xent::ContextOptions::default()
    });
    let (Some(whole), Some(chunked)) = (whole.as_ref(), common::gpu_chunked()) else {
        return;
    };
    assert_eq!(chunked.max_binding_size(), common::SMALL_BINDING);
    // 2 MiB bindings: 2100×257 in 2 chunks, 300×32000 in 19, 5×131072 in 2 (up to 3 rows each), 70000×8 in 2.
    for (rows, classes) in [(2100, 257), (300, 32_000), (5, 131_072), (70_000, 8)] {
        let (logits, targets) = batch(rows, classes, Logits::Random, 9);
        let shape = Shape::new(rows, classes);
        assert!(
            (rows * classes * 4) as u64 > common::SMALL_BINDING || rows * 8 > common::SMALL_BINDING as usize,
            "{rows}x{classes} must be chunked"
        );
        for reduction in [Reduction::Mean, Reduction::None] {
            let (whole_loss, whole_gradient) = run(whole, &logits, &targets, shape, reduction);
            let (chunked_loss, chunked_gradient) = run(chunked, &logits, &targets, shape, reduction);
            assert_eq!(
                common::loss_bits(&whole_loss),
                common::loss_bits(&chunked_loss),
                "{rows}x{classes} {reduction} loss"
            );
            assert_eq!(
                bits(&whole_gradient),
                bits(&chunked_gradient),
                "{rows}x{classes} {reduction} gradient"
            );
        }
    }
}

#[test]
fn nan_and_infinite_logits_propagate_like_pytorch() {
    let classes = 4;
    let logits = [
        0.0,
        1.0,
        2.0,
        3.0, // finite
        0.0,
        f32::NAN,
        2.0,
        3.0, // NaN
        0.0,
        f32::INFINITY,
        2.0,
        3.0, // +inf: inf - inf
        f32::NEG_INFINITY,
        1.0,
        2.0,
        3.0, // -inf on a non-target class: fine
    ];
    let targets: Vec<i64> = vec![3, 0, 1, 2];
    let expected = reference::row_losses_f64(&logits, &common::class_indices(&targets), classes);
    assert!(expected[1].is_nan() && expected[2].is_nan() && expected[3].is_finite());
    for (name, backend) in common::all_backends() {
        let per_row = CrossEntropyLoss::new()
            .row_losses(backend, &logits, &targets, Shape::new(4, classes))
            .expect("row losses");
        assert!((f64::from(per_row[0]) - expected[0]).abs() < 1e-6, "{name}: finite row");
        assert!(per_row[1].is_nan(), "{name}: NaN logit gives NaN, got {}", per_row[1]);
        assert!(per_row[2].is_nan(), "{name}: +inf logit gives NaN, got {}", per_row[2]);
        assert!(
            (f64::from(per_row[3]) - expected[3]).abs() < 1e-6,
            "{name}: -inf logit row"
        );
        let mean = CrossEntropyLoss::new()
            .loss(backend, &logits, &targets, Shape::new(4, classes))
            .expect("mean");
        assert!(
            mean.value().is_some_and(f32::is_nan),
            "{name}: a NaN row makes the mean NaN"
        );
    }
}

#[test]
fn workspace_is_reused_across_shapes() {
    let Some(context) = common::gpu() else { return };
    let context: &Context = context;
    // Large, then smaller, then larger again: results stay right when buffers are reused.
    for (rows, classes) in [(64, 1000), (8, 10), (128, 2000)] {
        let (logits, targets) = batch(rows, classes, Logits::Random, 13);
        let expected = common::expected(&logits, &targets, classes);
        let (loss, gradient) = run(context, &logits, &targets, Shape::new(rows, classes), Reduction::Mean);
        common::assert_loss(loss.value().expect("reduced"), expected.mean, "reuse");
        common::assert_gradient(&gradient, &expected.gradient_of_mean, 1.0 / rows as f64, "reuse");
    }
}
