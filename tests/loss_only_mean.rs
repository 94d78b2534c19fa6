//! A loss-only mean dispatches no divisor pre-pass: the final reduction sums
//! the divisor beside the losses. The reduced loss and z-loss must match the
//! f64 reference, and the divisor left in the scalars block (`[loss, z_loss,
//! divisor, unused]`) must be the reference's (the count of rows not ignored,
//! or the sum of their targets' weights) and carry the very bits the pre-pass
//! computes for the same call with a gradient. Checked in one level (few rows)
//! and in two levels (above 65536 rows), in one chunk and across chunks, with
//! `ignore_index` rows and class weights, i32 and i64 targets; soft targets
//! divide by the row count; a mean over no rows is NaN.

mod common;

use std::sync::OnceLock;

use xent::reference::cross_entropy_f64;
use xent::{Context, ContextOptions, CrossEntropyLoss, CrossEntropyOptions, Loss, Reduction, Shape, Targets};

/// A context whose 16 KiB bindings split the batches below into several chunks.
fn chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            common::open(ContextOptions {
                max_binding_size: Some(16 << 10),
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// The reduced loss and the scalars block after one call of `loss` through the
/// device door (`common::device_outputs`: the gradient into a buffer of its own
/// when `gradient`).
fn device_mean(
    context: &Context,
    loss: &CrossEntropyLoss,
    batch: (&[f32], Targets<'_>, Shape),
    gradient: bool,
) -> (f32, [f32; 4]) {
    let (logits, targets, shape) = batch;
    let outputs = common::device_outputs(context, loss, logits, targets, shape, gradient).expect("record");
    let Loss::Reduced(value) = outputs.read(context).expect("read") else {
        panic!("a mean is one value");
    };
    let scalars: Vec<f32> = bytemuck::pod_collect_to_vec(&common::read_buffer(context, outputs.loss_buffer()));
    (value, [scalars[0], scalars[1], scalars[2], scalars[3]])
}

/// The reference's divisor of the mean: Σ w_y over the rows not ignored (their count without weights).
fn reference_divisor(targets: &[i64], options: &CrossEntropyOptions) -> f64 {
    targets
        .iter()
        .filter(|&&target| target != options.ignore_index)
        .map(|&target| {
            options
                .weight
                .as_ref()
                .map_or(1.0, |weights| f64::from(weights[target as usize]))
        })
        .sum()
}

/// Deterministic logits and targets for `shape`, every `ignore_every`-th row ignored (0: none).
fn inputs(shape: Shape, ignore_every: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let (logits, mut targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, seed);
    if ignore_every > 0 {
        for target in targets.iter_mut().step_by(ignore_every) {
            *target = -100;
        }
    }
    (logits, targets)
}

/// Class weights in [0.25, 2.25), not exactly representable sums.
fn weights(classes: usize) -> Vec<f32> {
    (0..classes)
        .map(|class| 0.25 + (class * 37 % 100) as f32 / 50.0 + 1e-3)
        .collect()
}

/// The option sets checked: plain, with ignored rows, with weights, with both
/// (and a z-loss and smoothing).
fn option_sets(classes: usize) -> Vec<(&'static str, CrossEntropyLoss, usize)> {
    let mean = CrossEntropyLoss::new().reduction(Reduction::Mean);
    vec![
        ("plain", mean.clone(), 0),
        ("ignore_index", mean.clone(), 7),
        ("weights", mean.clone().weight(weights(classes)), 0),
        (
            "weights, ignore_index, z-loss, smoothing",
            mean.weight(weights(classes)).z_loss(1e-3).label_smoothing(0.1),
            5,
        ),
    ]
}

/// Checks the loss-only mean of `shape` on `context` against the reference and
/// against the same call with a gradient (which runs the divisor pre-pass).
fn check(context: &Context, what: &str, shape: Shape) {
    for (name, loss, ignore_every) in option_sets(shape.classes) {
        let (logits, targets) = inputs(shape, ignore_every, 17);
        let narrow: Vec<i32> = targets.iter().map(|&target| target as i32).collect();
        let options = loss.options();
        let expected = cross_entropy_f64(&logits, Targets::I64(&targets), shape, options);
        let divisor = reference_divisor(&targets, options);
        for targets in [Targets::I64(&targets), Targets::I32(&narrow)] {
            let what = format!("{what} {shape:?} {name} {:?}", targets.target_type());
            let (value, scalars) = device_mean(context, &loss, (&logits, targets, shape), false);
            common::assert_loss(value, expected.loss, &what);
            assert_eq!(value.to_bits(), scalars[0].to_bits(), "{what}: read vs scalars");
            if options.z_loss > 0.0 {
                common::assert_loss(scalars[1], expected.z_loss, &format!("{what} z-loss"));
            }
            let divisor_error = (f64::from(scalars[2]) - divisor).abs();
            assert!(
                divisor_error <= 1e-6 * divisor,
                "{what}: divisor {} vs reference {divisor}",
                scalars[2]
            );
            if options.weight.is_none() {
                assert_eq!(f64::from(scalars[2]), divisor, "{what}: a count is exact");
            }
            let (_, with_gradient) = device_mean(context, &loss, (&logits, targets, shape), true);
            assert_eq!(
                scalars[2].to_bits(),
                with_gradient[2].to_bits(),
                "{what}: the divisor summed with the losses vs the pre-pass"
            );
            let host = loss.loss(context, &logits, targets, shape).expect("host call");
            common::assert_loss(host.value().expect("reduced"), expected.loss, &format!("{what} host"));
        }
    }
}

#[test]
fn a_loss_only_mean_in_one_level_matches_the_reference() {
    if let Some(context) = common::gpu() {
        check(context, "one chunk", Shape::new(300, 40));
    }
    if let Some(context) = chunked() {
        // Rows of 160 bytes in 16 KiB bindings: 3 chunks.
        check(context, "chunked", Shape::new(300, 40));
    }
}

#[test]
fn a_loss_only_mean_in_two_levels_matches_the_reference() {
    let Some(context) = common::gpu() else { return };
    // Above 65536 rows the reductions run as partial sums, then their fold.
    check(context, "two levels", Shape::new(70_001, 3));
}

#[test]
fn a_loss_only_mean_of_soft_targets_divides_by_the_rows() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(129, 6);
    let (logits, _) = inputs(shape, 0, 3);
    let probabilities: Vec<f32> = (0..shape.rows * shape.classes)
        .map(|index| ((index % shape.classes) + 1) as f32 / 21.0)
        .collect();
    let targets = Targets::Probabilities(&probabilities);
    let loss = CrossEntropyLoss::new().reduction(Reduction::Mean);
    let expected = cross_entropy_f64(&logits, targets, shape, loss.options());
    let (value, scalars) = device_mean(context, &loss, (&logits, targets, shape), false);
    common::assert_loss(value, expected.loss, "soft targets");
    assert_eq!(scalars[2], shape.rows as f32);
}

#[test]
fn a_loss_only_mean_over_no_rows_is_nan() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(40, 5);
    let (logits, _) = inputs(shape, 0, 5);
    let targets = vec![-100i64; shape.rows];
    let loss = CrossEntropyLoss::new().reduction(Reduction::Mean);
    for gradient in [false, true] {
        let (value, scalars) = device_mean(context, &loss, (&logits, Targets::I64(&targets), shape), gradient);
        assert!(value.is_nan(), "gradient {gradient}: {value}");
        assert_eq!(scalars[2], 0.0, "gradient {gradient}");
    }
}
