//! Both backends against the f64 reference over the shape grid of the spec:
//! rows in {1, 3, 64, 1000, 70 000} × classes in {1, 2, 7, 255, 256, 257, 1000,
//! 32 000, 131 072} (the largest products trimmed), with random, scaled (±1000),
//! offset (+1e4), all-equal and confident (loss ~1e-10) logits.
//! Loss: ≤ 1e-5 relative; gradient: ≤ 1e-6 × (1/N) per entry.

mod common;

use common::{Logits, assert_gradient, assert_loss, assert_row_losses, batch, expected};
use xent::{Backend, CrossEntropyLoss, Reduction, Shape};

const CLASSES: [usize; 9] = [1, 2, 7, 255, 256, 257, 1000, 32_000, 131_072];

/// Mean loss + gradient, sum loss and per-row losses of one batch on one backend.
fn check(backend: &dyn Backend, name: &str, rows: usize, classes: usize, kind: Logits) {
    let context = format!("{name} {rows}x{classes} {kind:?}");
    let (logits, targets) = batch(rows, classes, kind, 7);
    let expected = expected(&logits, &targets, classes);
    let shape = Shape::new(rows, classes);

    let mut gradient = vec![f32::NAN; logits.len()];
    let mean = CrossEntropyLoss::new()
        .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
        .expect("mean loss and gradient");
    assert_loss(mean.value().expect("reduced"), expected.mean, &context);
    assert_gradient(&gradient, &expected.gradient_of_mean, 1.0 / rows as f64, &context);

    let sum = CrossEntropyLoss::new()
        .reduction(Reduction::Sum)
        .loss(backend, &logits, &targets, shape)
        .expect("sum");
    assert_loss(sum.value().expect("reduced"), expected.sum, &context);

    let per_row = CrossEntropyLoss::new()
        .row_losses(backend, &logits, &targets, shape)
        .expect("row losses");
    assert_row_losses(&per_row, &expected.row_losses, &context);
    if kind == Logits::AllEqual {
        let ln_classes = (classes as f64).ln();
        assert_loss(mean.value().expect("reduced"), ln_classes, &format!("{context} = ln C"));
    }
}

fn check_grid(rows: &[usize], classes: &[usize], kinds: &[Logits]) {
    for (name, backend) in common::all_backends() {
        for &rows in rows {
            for &classes in classes {
                for &kind in kinds {
                    check(backend, name, rows, classes, kind);
                }
            }
        }
    }
}

#[test]
fn few_rows_every_class_count() {
    check_grid(&[1, 3], &CLASSES, &common::ALL_LOGITS);
}

#[test]
fn sixty_four_rows() {
    check_grid(&[64], &CLASSES[..8], &common::ALL_LOGITS);
    check_grid(&[64], &CLASSES[8..], &[Logits::Random, Logits::Confident]);
}

#[test]
fn thousand_rows() {
    check_grid(&[1000], &CLASSES[..7], &common::ALL_LOGITS);
}

#[test]
fn seventy_thousand_rows_beyond_the_dispatch_limit() {
    check_grid(&[70_000], &[1, 7, 255], &[Logits::Random, Logits::Confident]);
}

/// 70 000 rows of one workgroup each (a 2-D dispatch) whose logits exceed the
/// adapter's real binding limit (168 MB on lavapipe's 128 MiB): chunked.
#[test]
fn above_the_binding_limit_and_the_dispatch_limit() {
    let Some(context) = common::gpu() else { return };
    let rows = 70_000;
    let classes = 600.max((context.max_binding_size() / (rows as u64 * 4)) as usize + 1);
    let shape = Shape::new(rows, classes);
    assert!((shape.rows * shape.classes * 4) as u64 > context.max_binding_size());
    check(context, "gpu", shape.rows, shape.classes, Logits::Random);
}
