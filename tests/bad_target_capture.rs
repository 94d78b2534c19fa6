//! An out-of-range target in device-resident buffers is reported with the first
//! bad row and its value for every reduction (`mean`, `sum`, `none`: the GPU
//! copies the bad row's target words in a different pass for each), every
//! class-index type, in one chunk and when the bad rows lie in later chunks, with
//! and without a gradient. The expected error is the CPU backend's for the same
//! call.

mod common;

use xent::{Context, Cpu, CrossEntropyLoss, Error, Reduction, Shape, Targets};

/// The device door's error for `targets`.
fn device_error(context: &Context, shape: Shape, targets: Targets<'_>, reduction: Reduction, gradient: bool) -> Error {
    let logits = vec![0.25f32; shape.rows * shape.classes];
    let loss = CrossEntropyLoss::new().reduction(reduction);
    common::device_loss(context, &loss, &logits, targets, shape, gradient).expect_err("a bad target is an error")
}

/// The CPU backend's error for the same call.
fn cpu_error(shape: Shape, targets: Targets<'_>, reduction: Reduction) -> Error {
    let logits = vec![0.25f32; shape.rows * shape.classes];
    CrossEntropyLoss::new()
        .reduction(reduction)
        .loss(&Cpu, &logits, targets, shape)
        .expect_err("a bad target is an error")
}

/// Targets of `rows` rows, all valid but for `bad` (row, value) pairs.
fn with_bad(rows: usize, bad: &[(usize, i64)]) -> Vec<i64> {
    let mut targets: Vec<i64> = (0..rows as i64).map(|row| row % 3).collect();
    for &(row, value) in bad {
        targets[row] = value;
    }
    targets
}

fn check(context: &Context, name: &str, shape: Shape, bad: &[(usize, i64)]) {
    let targets = with_bad(shape.rows, bad);
    let narrow_i32: Vec<i32> = targets.iter().map(|&target| target as i32).collect();
    let narrow_u32: Vec<u32> = targets.iter().map(|&target| target as u32).collect();
    for targets in [
        Targets::I64(&targets),
        Targets::I32(&narrow_i32),
        Targets::U32(&narrow_u32),
    ] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let expected = cpu_error(shape, targets, reduction);
            assert!(matches!(expected, Error::TargetOutOfRange { .. }), "{expected:?}");
            for gradient in [false, true] {
                let actual = device_error(context, shape, targets, reduction, gradient);
                assert_eq!(
                    actual,
                    expected,
                    "{name} {shape:?} {:?} {reduction:?} gradient {gradient}",
                    targets.target_type()
                );
            }
        }
    }
}

#[test]
fn the_first_bad_target_is_reported_for_every_reduction() {
    if let Some(context) = common::gpu() {
        check(
            context,
            "one chunk",
            Shape::new(300, 7),
            &[(250, 9), (17, -4), (299, 7)],
        );
    }
    if let Some(context) = common::gpu_chunked() {
        // 2 MiB bindings hold 3 rows of 131 072 logits: the bad rows lie in the
        // second and third chunks.
        check(context, "chunked", Shape::new(8, 131_072), &[(7, 131_072), (4, -3)]);
    }
}
