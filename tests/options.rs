//! Every option of the categorical cross-entropy on every backend against the f64
//! reference (`xent::reference::cross_entropy_f64`) on random batches larger
//! than the PyTorch fixtures, the per-row lse / argmax outputs, and the N-d layout.

mod common;

use common::{Logits, batch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyLoss, LogitsMut, Loss, Reduction, Shape, Targets};

/// Loss within 1e-5 relative (absolute floor 1e-9), gradient within 2e-6 of its largest entry.
fn check(loss: &CrossEntropyLoss, logits: &[f32], targets: Targets<'_>, shape: Shape, label: &str) {
    let expected = cross_entropy_f64(logits, targets, shape, loss.options());
    for (name, backend) in common::all_backends() {
        let label = format!("{name} {label}");
        let mut gradient = vec![f32::NAN; logits.len()];
        let output = loss
            .forward(
                backend,
                logits,
                targets,
                shape,
                Some(LogitsMut::F32(&mut gradient)),
                true,
            )
            .unwrap_or_else(|error| panic!("{label}: {error}"));
        let close =
            |actual: f32, reference: f64| (f64::from(actual) - reference).abs() <= 1e-5 * reference.abs() + 1e-9;
        match &output.loss {
            Loss::Reduced(value) => assert!(
                close(*value, expected.loss),
                "{label}: loss {value} vs {}",
                expected.loss
            ),
            Loss::PerRow(values) => {
                for (row, (&value, &reference)) in values.iter().zip(&expected.row_losses).enumerate() {
                    assert!(
                        close(value, reference),
                        "{label}: row {row} loss {value} vs {reference}"
                    );
                }
            }
        }
        if let Some(Loss::Reduced(z_loss)) = output.z_loss {
            assert!(
                close(z_loss, expected.z_loss),
                "{label}: z-loss {z_loss} vs {}",
                expected.z_loss
            );
        }
        let largest = expected
            .gradient
            .iter()
            .fold(0.0f64, |largest, value| largest.max(value.abs()));
        for (index, (&value, &reference)) in gradient.iter().zip(&expected.gradient).enumerate() {
            assert!(
                (f64::from(value) - reference).abs() <= 2e-6 * largest,
                "{label}: gradient[{index}] {value} vs {reference}"
            );
        }
        let lse = output.lse.expect("row stats asked for");
        for (row, (&value, &reference)) in lse.iter().zip(&expected.row_lse).enumerate() {
            assert!(
                (f64::from(value) - reference).abs() <= 1e-6 * (1.0 + reference.abs()),
                "{label}: lse {row}"
            );
        }
        assert_eq!(
            output.argmax.expect("row stats asked for"),
            expected.row_argmax,
            "{label}: argmax"
        );
    }
}

fn with_ignored_rows(mut targets: Vec<i64>, ignore_index: i64, every: usize) -> Vec<i64> {
    targets
        .iter_mut()
        .step_by(every)
        .for_each(|target| *target = ignore_index);
    targets
}

fn weights(classes: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..classes).map(|_| rng.random_range(0.1..3.0)).collect()
}

#[test]
fn every_option_combined_on_class_targets() {
    let (rows, classes) = (300, 700);
    let (logits, targets) = batch(rows, classes, Logits::Random, 43);
    let targets = with_ignored_rows(targets, 7, 5);
    let shape = Shape::new(rows, classes);
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let loss = CrossEntropyLoss::new()
            .reduction(reduction)
            .ignore_index(7)
            .weight(weights(classes, 1))
            .label_smoothing(0.15)
            .z_loss(1e-3)
            .softcap(5.0)
            .logit_scale(1.5);
        check(
            &loss,
            &logits,
            Targets::I64(&targets),
            shape,
            &format!("all options {reduction}"),
        );
    }
}

#[test]
fn each_option_alone_on_small_and_wide_rows() {
    for (rows, classes) in [(1000, 13), (20, 5000)] {
        let (logits, targets) = batch(rows, classes, Logits::Random, 47);
        let shape = Shape::new(rows, classes);
        let ignored = with_ignored_rows(targets.clone(), -100, 3);
        let cases: [(&str, CrossEntropyLoss, &[i64]); 6] = [
            ("ignore", CrossEntropyLoss::new(), &ignored),
            ("weight", CrossEntropyLoss::new().weight(weights(classes, 2)), &targets),
            ("smoothing", CrossEntropyLoss::new().label_smoothing(0.3), &targets),
            ("z-loss", CrossEntropyLoss::new().z_loss(1e-2), &targets),
            ("softcap", CrossEntropyLoss::new().softcap(2.0), &targets),
            ("scale", CrossEntropyLoss::new().logit_scale(0.25), &targets),
        ];
        for (name, loss, targets) in cases {
            check(
                &loss,
                &logits,
                Targets::I64(targets),
                shape,
                &format!("{name} {rows}x{classes}"),
            );
        }
    }
}

/// A softcap far above the logits leaves them as they are: `t·tanh(x/t) = x·(1 − (x/t)²/3 + …)`.
/// Each backend's `tanh` must be accurate relative to its argument near 0, not
/// only in absolute terms (`1 − 2/(e^{2u} + 1)` rounds `u = 1e-8` to 0), and the
/// argument `x/t` may be subnormal (`t = 3e38`), which a GPU may flush to zero.
#[test]
fn softcaps_far_above_the_logits_leave_them_unchanged() {
    let (rows, classes) = (64, 300);
    let (logits, targets) = batch(rows, classes, Logits::Random, 53);
    let shape = Shape::new(rows, classes);
    for softcap in [1e4, 1e6, 1e8, 1e12, 1e20, 3e38] {
        for reduction in [Reduction::Mean, Reduction::None] {
            let loss = CrossEntropyLoss::new()
                .reduction(reduction)
                .softcap(softcap)
                .label_smoothing(0.1);
            check(
                &loss,
                &logits,
                Targets::I64(&targets),
                shape,
                &format!("softcap {softcap:e} {reduction}"),
            );
        }
    }
}

#[test]
fn soft_targets_with_smoothing_and_weights() {
    let (rows, classes) = (200, 300);
    let (logits, _) = batch(rows, classes, Logits::Offset, 53);
    let mut rng = StdRng::seed_from_u64(5);
    let mut probabilities: Vec<f32> = (0..rows * classes)
        .map(|_| rng.random_range(0.0..1.0f32).powi(4))
        .collect();
    for row in probabilities.chunks_mut(classes) {
        let total: f32 = row.iter().sum();
        row.iter_mut().for_each(|value| *value /= total);
    }
    let shape = Shape::new(rows, classes);
    for reduction in [Reduction::Mean, Reduction::None] {
        let loss = CrossEntropyLoss::new()
            .reduction(reduction)
            .label_smoothing(0.1)
            .weight(weights(classes, 3));
        check(
            &loss,
            &logits,
            Targets::Probabilities(&probabilities),
            shape,
            &format!("soft {reduction}"),
        );
    }
}

#[test]
fn nd_layout_with_options() {
    let shape = Shape::nd(3, 19, &[5, 7]).expect("shape");
    let (logits, targets) = batch(shape.rows, shape.classes, Logits::Random, 59);
    let targets = with_ignored_rows(targets, -100, 4);
    let loss = CrossEntropyLoss::new()
        .weight(weights(19, 4))
        .label_smoothing(0.05)
        .z_loss(1e-3);
    check(&loss, &logits, Targets::I64(&targets), shape, "N-d");
}

#[test]
fn token_accuracy_from_argmax() {
    let (rows, classes) = (50, 10);
    let (logits, mut targets) = batch(rows, classes, Logits::Random, 61);
    for (row, target) in targets.iter_mut().enumerate().filter(|(row, _)| row % 2 == 0) {
        let values = &logits[row * classes..(row + 1) * classes];
        let best = (0..classes).fold(0, |best, class| if values[class] > values[best] { class } else { best });
        *target = best as i64;
    }
    targets[1] = -100;
    for (name, backend) in common::all_backends() {
        let output = CrossEntropyLoss::new()
            .forward(backend, &logits, &targets, Shape::new(rows, classes), None, true)
            .expect("forward");
        let accuracy = output.accuracy(Targets::I64(&targets), -100).expect("argmax");
        let expected = targets
            .iter()
            .enumerate()
            .filter(|(_, target)| **target != -100)
            .filter(|(row, target)| {
                let values = &logits[row * classes..(row + 1) * classes];
                (0..classes).fold(0, |best, class| if values[class] > values[best] { class } else { best }) as i64
                    == **target
            })
            .count() as f64
            / 49.0;
        assert!(
            (accuracy - expected).abs() < 1e-12 && accuracy >= 25.0 / 49.0,
            "{name}: {accuracy} vs {expected}"
        );
    }
}

#[test]
fn bad_option_values_are_errors() {
    let logits = [0.0f32; 6];
    let targets = [0i64, 1];
    let shape = Shape::new(2, 3);
    let cases = [
        CrossEntropyLoss::new().label_smoothing(-0.1),
        CrossEntropyLoss::new().label_smoothing(1.5),
        CrossEntropyLoss::new().weight(vec![1.0, 2.0]),
        CrossEntropyLoss::new().weight(vec![1.0, -2.0, 1.0]),
        CrossEntropyLoss::new().weight(vec![1.0, f32::NAN, 1.0]),
        CrossEntropyLoss::new().z_loss(-1.0),
        CrossEntropyLoss::new().softcap(0.0),
        CrossEntropyLoss::new().logit_scale(0.0),
    ];
    for (name, backend) in common::all_backends() {
        for loss in &cases {
            let result = loss.loss(backend, &logits, &targets, shape);
            assert!(
                matches!(result, Err(xent::Error::InvalidOption(_))),
                "{name} {:?}: {result:?}",
                loss.options()
            );
        }
        let probabilities = [0.5f32; 5];
        let result = CrossEntropyLoss::new().loss(backend, &logits, Targets::Probabilities(&probabilities), shape);
        assert_eq!(
            result,
            Err(xent::Error::ProbabilitiesLength { actual: 5, expected: 6 }),
            "{name}"
        );
    }
}
