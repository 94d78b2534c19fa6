//! Every row-kernel workgroup size (`ContextOptions::workgroup_size`), with
//! subgroup reductions and with the workgroup-memory fallback, against the f64
//! reference: rows that share a workgroup (4, 16 and 64 invocations per row),
//! rows of a whole workgroup kept on chip, rows beyond the on-chip cache, groups
//! of 4 and single logits, 16-bit logits and the in-place gradient.

mod common;

use common::{Logits, assert_gradient, assert_loss, assert_row_losses, batch, expected};
use xent::half::bf16;
use xent::{Context, ContextOptions, CrossEntropyLoss, Error, Reduction, Shape, WORKGROUP_SIZE_CHOICES};

/// (rows, classes): 7, 100 and 500 classes share workgroups at every size
/// (where the variant is narrower than the workgroup); 513 and 1001 (not a
/// multiple of 4) take a whole workgroup on chip; 3000 fits the on-chip cache
/// where the adapter's workgroup memory leaves room for 4096 logits beside the
/// scratch (lavapipe at every size), 40 000 never. Row counts are not multiples
/// of the rows per workgroup.
const SHAPES: [(usize, usize); 7] = [
    (70, 7),
    (70, 100),
    (37, 500),
    (33, 513),
    (33, 1001),
    (9, 3000),
    (5, 40_000),
];

fn context(workgroup_size: u32, use_subgroups: bool) -> Option<Context> {
    common::open(ContextOptions {
        workgroup_size: Some(workgroup_size),
        use_subgroups,
        ..ContextOptions::default()
    })
}

/// Mean loss + gradient and per-row losses of f32 logits.
fn check_f32(context: &Context, label: &str, rows: usize, classes: usize) {
    let (logits, targets) = batch(rows, classes, Logits::Scaled, 3);
    let expected = expected(&logits, &targets, classes);
    let shape = Shape::new(rows, classes);
    let mut gradient = vec![f32::NAN; logits.len()];
    let mean = CrossEntropyLoss::new()
        .loss_and_grad(context, &logits, &targets, shape, &mut gradient)
        .unwrap_or_else(|error| panic!("{label}: {error}"));
    assert_loss(mean.value().expect("reduced"), expected.mean, label);
    assert_gradient(&gradient, &expected.gradient_of_mean, 1.0 / rows as f64, label);
    let per_row = CrossEntropyLoss::new()
        .reduction(Reduction::None)
        .row_losses(context, &logits, &targets, shape)
        .unwrap_or_else(|error| panic!("{label}: {error}"));
    assert_row_losses(&per_row, &expected.row_losses, label);
}

/// bf16 logits with label smoothing, the gradient written over them: loss within
/// 1e-5 and gradient within bf16's rounding (1/256 of the largest entry) of the
/// f64 reference on the rounded logits.
fn check_bf16_in_place(context: &Context, label: &str, rows: usize, classes: usize) {
    let (logits, targets) = batch(rows, classes, Logits::Random, 5);
    let mut rounded: Vec<bf16> = logits.iter().map(|&value| bf16::from_f32(value)).collect();
    let widened: Vec<f32> = rounded.iter().map(|value| value.to_f32()).collect();
    let shape = Shape::new(rows, classes);
    let loss = CrossEntropyLoss::new().label_smoothing(0.1);
    let expected =
        xent::reference::cross_entropy_f64(&widened, xent::Targets::from(&targets[..]), shape, loss.options());
    let value = loss
        .loss_and_grad_in_place(context, &mut rounded[..], &targets, shape)
        .unwrap_or_else(|error| panic!("{label}: {error}"));
    assert_loss(value.value().expect("reduced"), expected.loss, label);
    let largest = expected
        .gradient
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    for (index, (actual, reference)) in rounded.iter().zip(&expected.gradient).enumerate() {
        let error = (f64::from(actual.to_f32()) - reference).abs();
        assert!(
            error <= largest / 256.0,
            "{label}: gradient entry {index} is {actual} vs reference {reference}"
        );
    }
}

#[test]
fn every_workgroup_size_matches_the_reference() {
    let Some(default) = common::gpu() else {
        return;
    };
    let limits = default.limits();
    for workgroup_size in WORKGROUP_SIZE_CHOICES {
        // Sizes beyond the adapter's limits are refused (tested below and in the unit tests).
        if workgroup_size > limits.max_compute_invocations_per_workgroup
            || workgroup_size > limits.max_compute_workgroup_size_x
            || workgroup_size * 24 + 4 > limits.max_compute_workgroup_storage_size
        {
            continue;
        }
        for use_subgroups in [true, false] {
            let Some(context) = context(workgroup_size, use_subgroups) else {
                return;
            };
            assert_eq!(context.workgroup_size(), workgroup_size);
            for (rows, classes) in SHAPES {
                let label = format!("workgroup {workgroup_size} subgroups {use_subgroups} {rows}x{classes}");
                check_f32(&context, &label, rows, classes);
                check_bf16_in_place(&context, &format!("{label} bf16 in place"), rows, classes);
            }
        }
    }
}

#[test]
fn the_adapter_choice_is_one_of_the_sizes() {
    let Some(context) = common::gpu() else {
        return;
    };
    assert!(WORKGROUP_SIZE_CHOICES.contains(&context.workgroup_size()));
    let expected = match context.adapter_info().device_type {
        wgpu::DeviceType::Cpu => 64,
        _ => 256,
    };
    assert_eq!(context.workgroup_size(), expected, "{:?}", context.adapter_info());
}

#[test]
fn sizes_outside_the_choices_are_refused() {
    if common::gpu().is_none() {
        return;
    }
    let max_invocations = common::gpu().map_or(0, |context| context.limits().max_compute_invocations_per_workgroup);
    for size in [0, 100, 2048] {
        let result = Context::with_options(ContextOptions {
            workgroup_size: Some(size),
            ..ContextOptions::default()
        });
        assert!(
            matches!(result, Err(Error::InvalidOption(_))),
            "workgroup size {size} (adapter allows {max_invocations} invocations): {result:?}"
        );
    }
}
