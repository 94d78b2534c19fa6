//! Half-precision logits (f16, bf16) and the in-place gradient, on both backends,
//! against the f64 reference computed from the same (rounded) logits.

mod common;

use common::{Logits, batch};
use xent::half::{bf16, f16};
use xent::{Backend, CrossEntropyLoss, Shape};

/// Largest |gradient - reference| over the largest |reference| entry.
fn relative_gradient_error(actual: &[f32], expected: &[f64]) -> f64 {
    let largest = expected.iter().fold(0.0f64, |largest, value| largest.max(value.abs()));
    let worst = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |worst, (&a, &e)| worst.max((f64::from(a) - e).abs()));
    worst / largest
}

fn backends() -> Vec<(&'static str, &'static dyn Backend)> {
    common::all_backends()
}

#[test]
fn in_place_gradient_matches_the_separate_one() {
    for (name, backend) in backends() {
        for (rows, classes) in [(5, 7), (33, 1000), (3, 32_000)] {
            let (logits, targets) = batch(rows, classes, Logits::Random, 17);
            let shape = Shape::new(rows, classes);
            let loss = CrossEntropyLoss::new().label_smoothing(0.1).z_loss(1e-3);
            let mut gradient = vec![0.0f32; logits.len()];
            let separate = loss
                .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
                .expect("separate");
            let mut in_place = logits.clone();
            let overwritten = loss
                .loss_and_grad_in_place(backend, &mut in_place, &targets, shape)
                .expect("in place");
            assert_eq!(separate, overwritten, "{name} {rows}x{classes}: same loss");
            assert_eq!(gradient, in_place, "{name} {rows}x{classes}: same gradient bits");
        }
    }
}

#[test]
fn in_place_on_the_chunked_path() {
    let Some(context) = common::gpu_chunked() else { return };
    let (rows, classes) = (300, 32_000);
    let (logits, targets) = batch(rows, classes, Logits::Random, 19);
    let expected = common::expected(&logits, &targets, classes);
    let mut in_place = logits.clone();
    let loss =
        CrossEntropyLoss::new().loss_and_grad_in_place(context, &mut in_place, &targets, Shape::new(rows, classes));
    common::assert_loss(
        loss.expect("in place").value().expect("reduced"),
        expected.mean,
        "chunked in place",
    );
    common::assert_gradient(
        &in_place,
        &expected.gradient_of_mean,
        1.0 / rows as f64,
        "chunked in place",
    );
}

/// The literature's bar: with bf16 logits the target-class gradient stays within
/// 0.5% relative of the f64 value (computed in f32, rounded once when stored).
#[test]
fn bf16_logits_keep_the_target_gradient_within_half_a_percent() {
    for (name, backend) in backends() {
        for (rows, classes) in [(4, 50_257), (64, 1000), (100, 7)] {
            let (logits, targets) = batch(rows, classes, Logits::Random, 23);
            let rounded: Vec<bf16> = logits.iter().map(|&value| bf16::from_f32(value)).collect();
            let widened: Vec<f32> = rounded.iter().map(|value| value.to_f32()).collect();
            let expected = common::expected(&widened, &targets, classes);
            let shape = Shape::new(rows, classes);
            let mut gradient = vec![bf16::ZERO; logits.len()];
            let loss = CrossEntropyLoss::new().loss_and_grad(backend, &rounded, &targets, shape, &mut gradient);
            common::assert_loss(loss.expect("bf16").value().expect("reduced"), expected.mean, name);
            for (row, &target) in targets.iter().enumerate() {
                let index = row * classes + target as usize;
                let reference = expected.gradient_of_mean[index];
                let actual = f64::from(gradient[index].to_f32());
                assert!(
                    (actual - reference).abs() <= 0.005 * reference.abs(),
                    "{name} {rows}x{classes} row {row}: target gradient {actual} vs {reference}"
                );
            }
            let widened_gradient: Vec<f32> = gradient.iter().map(|value| value.to_f32()).collect();
            // bf16 keeps 8 bits: every entry within one rounding (2^-8 relative) of the largest.
            assert!(
                relative_gradient_error(&widened_gradient, &expected.gradient_of_mean) < 1.0 / 256.0,
                "{name}"
            );
        }
    }
}

#[test]
fn f16_logits_and_gradient() {
    for (name, backend) in backends() {
        let (rows, classes) = (37, 1000);
        let (logits, targets) = batch(rows, classes, Logits::Random, 29);
        let rounded: Vec<f16> = logits.iter().map(|&value| f16::from_f32(value)).collect();
        let widened: Vec<f32> = rounded.iter().map(|value| value.to_f32()).collect();
        let expected = common::expected(&widened, &targets, classes);
        let mut gradient = vec![f16::ZERO; logits.len()];
        let loss = CrossEntropyLoss::new()
            .loss_and_grad(backend, &rounded, &targets, Shape::new(rows, classes), &mut gradient)
            .expect("f16");
        common::assert_loss(loss.value().expect("reduced"), expected.mean, name);
        let widened_gradient: Vec<f32> = gradient.iter().map(|value| value.to_f32()).collect();
        // f16 keeps 11 bits.
        assert!(
            relative_gradient_error(&widened_gradient, &expected.gradient_of_mean) < 1.0 / 2048.0,
            "{name}"
        );
    }
}

#[test]
fn bf16_in_place_with_odd_class_counts() {
    for (name, backend) in backends() {
        let (rows, classes) = (9, 255);
        let (logits, targets) = batch(rows, classes, Logits::Random, 31);
        let mut values: Vec<bf16> = logits.iter().map(|&value| bf16::from_f32(value)).collect();
        let widened: Vec<f32> = values.iter().map(|value| value.to_f32()).collect();
        let expected = common::expected(&widened, &targets, classes);
        CrossEntropyLoss::new()
            .loss_and_grad_in_place(backend, &mut values, &targets, Shape::new(rows, classes))
            .expect("bf16 in place");
        let gradient: Vec<f32> = values.iter().map(|value| value.to_f32()).collect();
        assert!(
            relative_gradient_error(&gradient, &expected.gradient_of_mean) < 1.0 / 256.0,
            "{name}"
        );
    }
}

#[test]
fn ignored_rows_give_zero_loss_and_gradient() {
    for (name, backend) in backends() {
        let (rows, classes) = (6, 5);
        let (logits, mut targets) = batch(rows, classes, Logits::Random, 37);
        targets[1] = -100;
        targets[4] = -100;
        let mut gradient = vec![f32::NAN; logits.len()];
        let shape = Shape::new(rows, classes);
        let loss = CrossEntropyLoss::new()
            .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
            .expect("mean");
        let per_row = CrossEntropyLoss::new()
            .row_losses(backend, &logits, &targets, shape)
            .expect("rows");
        assert_eq!((per_row[1], per_row[4]), (0.0, 0.0), "{name}");
        assert!(
            gradient[classes..2 * classes].iter().all(|&value| value == 0.0),
            "{name}"
        );
        let kept: f64 = per_row.iter().map(|&value| f64::from(value)).sum::<f64>() / 4.0;
        common::assert_loss(
            loss.value().expect("reduced"),
            kept,
            &format!("{name}: mean over the 4 rows kept"),
        );
    }
}

/// One 16-bit storage on every backend and the chunked GPU, in both kernel
/// layouts (rows of a multiple of 4 classes load and store groups of 4; others
/// one logit at a time), with a separate gradient and in place, with and
/// without label smoothing: against the f64 reference of the rounded logits.
fn check_sixteen_bit<T: Copy + Default>(type_name: &str, round: fn(f32) -> T, widen: fn(T) -> f32, tolerance: f64)
where
    for<'a> &'a [T]: Into<xent::Logits<'a>>,
    for<'a> &'a mut [T]: Into<xent::LogitsMut<'a>>,
{
    let mut backends = backends();
    backends.extend(common::gpu_chunked().map(|context| ("gpu-chunked", context as &dyn Backend)));
    for (name, backend) in backends {
        // 1000 and 4: groups of 4; 1001 and 6: one logit at a time.
        for (rows, classes) in [(300, 1000), (301, 1001), (9, 4), (7, 6)] {
            for smoothing in [0.0, 0.1] {
                let label = format!("{type_name} {name} {rows}x{classes} smoothing {smoothing}");
                let (logits, targets) = batch(rows, classes, Logits::Random, 41);
                let rounded: Vec<T> = logits.iter().map(|&value| round(value)).collect();
                let widened: Vec<f32> = rounded.iter().map(|&value| widen(value)).collect();
                let loss = CrossEntropyLoss::new().label_smoothing(smoothing);
                let shape = Shape::new(rows, classes);
                let expected = xent::reference::cross_entropy_f64(
                    &widened,
                    xent::Targets::from(&targets[..]),
                    shape,
                    loss.options(),
                );
                let mut gradient = vec![T::default(); logits.len()];
                let value = loss
                    .loss_and_grad(backend, &rounded[..], &targets, shape, &mut gradient[..])
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                common::assert_loss(value.value().expect("reduced"), expected.loss, &label);
                let separate: Vec<f32> = gradient.iter().map(|&value| widen(value)).collect();
                let error = relative_gradient_error(&separate, &expected.gradient);
                assert!(error < tolerance, "{label}: gradient error {error:e}");

                let mut in_place = rounded.clone();
                let value = loss
                    .loss_and_grad_in_place(backend, &mut in_place[..], &targets, shape)
                    .unwrap_or_else(|error| panic!("{label} in place: {error}"));
                common::assert_loss(value.value().expect("reduced"), expected.loss, &label);
                let overwritten: Vec<f32> = in_place.iter().map(|&value| widen(value)).collect();
                assert_eq!(separate, overwritten, "{label}: in place = separate");
            }
        }
    }
}

#[test]
fn bf16_in_both_kernel_layouts() {
    // bf16 keeps 8 bits.
    check_sixteen_bit("bf16", bf16::from_f32, bf16::to_f32, 1.0 / 256.0);
}

#[test]
fn f16_in_both_kernel_layouts() {
    check_sixteen_bit("f16", f16::from_f32, f16::to_f32, 1.0 / 2048.0);
}

/// The CPU stages 16-bit logits (and in-place gradients) in f32 one task of rows
/// at a time. Whatever the task boundaries, layout or options, the result must be
/// the f32 path's on the widened logits, with the gradient rounded once: bit for
/// bit, separate and in place. (The f32 path itself is checked against the f64
/// reference elsewhere.)
fn check_staged_on_cpu<T: Copy + Default + PartialEq + std::fmt::Debug>(round: fn(f32) -> T, widen: fn(T) -> f32)
where
    for<'a> &'a [T]: Into<xent::Logits<'a>>,
    for<'a> &'a mut [T]: Into<xent::LogitsMut<'a>>,
{
    let weights: Vec<f32> = (0..300).map(|class| 0.5 + (class % 7) as f32 / 4.0).collect();
    let everything_ignored = CrossEntropyLoss::new().ignore_index(-100);
    let cases: [(&str, Shape, CrossEntropyLoss); 6] = [
        // Tasks of 66 rows, the last one short; the tuned path.
        ("plain", Shape::new(301, 1000), CrossEntropyLoss::new()),
        // Rows longer than a task (one row per task).
        (
            "long rows",
            Shape::new(5, 70_001),
            CrossEntropyLoss::new().reduction(xent::Reduction::Sum),
        ),
        (
            "options",
            Shape::new(333, 300),
            CrossEntropyLoss::new()
                .weight(weights)
                .label_smoothing(0.1)
                .z_loss(1e-3),
        ),
        // (N, C, d): tasks are whole batch items.
        (
            "nd",
            Shape::nd(9, 300, &[5, 7]).expect("shape"),
            CrossEntropyLoss::new().label_smoothing(0.05),
        ),
        (
            "per row",
            Shape::new(250, 512),
            CrossEntropyLoss::new().reduction(xent::Reduction::None),
        ),
        // A mean over no row: NaN loss, all-zero gradient.
        ("all ignored", Shape::new(200, 400), everything_ignored),
    ];
    for (label, shape, loss) in cases {
        let (logits, mut targets) = batch(shape.rows, shape.classes, Logits::Random, 43);
        if label == "all ignored" {
            targets.fill(-100);
        }
        let rounded: Vec<T> = logits.iter().map(|&value| round(value)).collect();
        let widened: Vec<f32> = rounded.iter().map(|&value| widen(value)).collect();
        let mut f32_gradient = vec![0.0f32; logits.len()];
        let expected = loss
            .loss_and_grad(&xent::Cpu, &widened, &targets, shape, &mut f32_gradient)
            .expect("f32");
        let expected_gradient: Vec<T> = f32_gradient.iter().map(|&value| round(value)).collect();

        let mut gradient = vec![T::default(); logits.len()];
        let actual = loss
            .loss_and_grad(&xent::Cpu, &rounded[..], &targets, shape, &mut gradient[..])
            .expect("16-bit");
        assert_eq!(format!("{actual:?}"), format!("{expected:?}"), "{label}: loss");
        assert!(gradient == expected_gradient, "{label}: gradient bits");

        let mut in_place = rounded.clone();
        let actual = loss
            .loss_and_grad_in_place(&xent::Cpu, &mut in_place[..], &targets, shape)
            .expect("16-bit in place");
        assert_eq!(format!("{actual:?}"), format!("{expected:?}"), "{label}: loss in place");
        assert!(in_place == expected_gradient, "{label}: in-place gradient bits");

        let mut f32_in_place = widened.clone();
        let actual = loss
            .loss_and_grad_in_place(&xent::Cpu, &mut f32_in_place, &targets, shape)
            .expect("f32 in place");
        assert_eq!(
            format!("{actual:?}"),
            format!("{expected:?}"),
            "{label}: f32 loss in place"
        );
        assert!(f32_in_place == f32_gradient, "{label}: f32 in-place gradient bits");
    }
}

#[test]
fn sixteen_bit_and_in_place_cpu_tasks_match_the_f32_path() {
    check_staged_on_cpu(bf16::from_f32, bf16::to_f32);
    check_staged_on_cpu(f16::from_f32, f16::to_f32);
}
