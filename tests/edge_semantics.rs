//! Edge-case semantics that must agree between the CPU and the GPU, and with
//! PyTorch / Keras (or differ from PyTorch deliberately, as README.md states):
//!
//! - the probability cross-entropy (Keras, `from_logits=False`) of a row that sums
//!   to 0 or holds a NaN or `+inf` is NaN, with a NaN gradient row (WGSL `clamp` of
//!   NaN returns a bound on GPUs, which used to give `−ln 1e−7 = 16.118`);
//! - NaN reaches the loss and the gradient of the rest of the family too;
//! - a cross-entropy mean whose divisor `Σ w_y` is 0 is NaN, every non-ignored row
//!   of its gradient is NaN (PyTorch: `w_y · (−1 / 0) = NaN` at the target, spread
//!   over the row by the log-softmax backward) and ignored rows stay 0;
//! - an ignored row full of NaN keeps an exactly zero gradient row and adds
//!   nothing (deliberately unlike PyTorch, whose gradient row is NaN there);
//! - a `−inf` logit at the target gives the loss `+inf`, reduced too;
//! - `−inf` (masked) logits leave the entropy of logits that of the other classes,
//!   with a zero gradient at the masked ones (PyTorch's `Categorical.entropy`);
//! - the `lse` of a row with an infinite maximum is `torch.logsumexp`'s: `−inf` for
//!   a row of `−inf`, `+inf` with a `+inf` logit, NaN with a NaN.

mod common;

use xent::reference::cross_entropy_f64;
use xent::reference::divergence::{self as divergence_reference, RowTargets};
use xent::{
    BinaryCrossEntropyLoss, CrossEntropyLoss, Entropy, InputKind, KlDivLoss, KlReduction, LogitType, Loss,
    ProbabilityCrossEntropyLoss, Reduction, Shape, Targets,
};

const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Mean, Reduction::Sum];

/// `actual` within `tolerance` relative of `expected` (NaN only against NaN, ±inf only against itself).
fn assert_close(actual: f32, expected: f64, tolerance: f64, label: &str) {
    if expected.is_nan() || expected.is_infinite() {
        assert!(
            f64::from(actual).to_bits() == expected.to_bits() || (actual.is_nan() && expected.is_nan()),
            "{label}: {actual:e}, expected {expected:e}"
        );
        return;
    }
    let error = (f64::from(actual) - expected).abs();
    assert!(
        error <= tolerance * expected.abs().max(1e-3),
        "{label}: {actual:e} vs reference {expected:e}"
    );
}

fn reduced(loss: &Loss, label: &str) -> f32 {
    loss.value()
        .unwrap_or_else(|| panic!("{label}: expected a reduced loss"))
}

fn per_row<'a>(loss: &'a Loss, label: &str) -> &'a [f32] {
    loss.per_row()
        .unwrap_or_else(|| panic!("{label}: expected per-row losses"))
}

/// `Σ / divisor` of the reference's row losses (`None` for reduction `none`).
fn divisor(reduction: Reduction, rows: usize) -> Option<f64> {
    match reduction {
        Reduction::None => None,
        Reduction::Mean => Some(rows as f64),
        Reduction::Sum => Some(1.0),
    }
}

// ------------------------------------------------------------------ probability cross-entropy

/// Rows 1 (all zeros), 2 (a NaN), 3 (a `+inf`) and 5 (NaN, with all-zero soft
/// targets) are NaN rows; rows 0 and 4 are ordinary, one of them clipped.
#[test]
fn probability_cross_entropy_of_zero_or_nan_rows_is_nan_on_every_backend() {
    let shape = Shape::new(6, 5);
    #[rustfmt::skip]
    let input: Vec<f32> = vec![
        0.1, 0.2, 0.3, 0.25, 0.15,
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.2, f32::NAN, 0.3, 0.1, 0.4,
        0.2, 0.1, f32::INFINITY, 0.3, 0.4,
        0.0, 0.5, 0.5, 1e-9, 0.0,
        f32::NAN, 0.2, 0.2, 0.2, 0.4,
    ];
    let classes: Vec<u32> = vec![2, 0, 4, 1, 1, 3];
    let mut soft: Vec<f32> = (0..30).map(|index| [0.5, 0.0, 0.25, 0.0, 0.25][index % 5]).collect();
    soft[25..30].fill(0.0);
    let nan_rows = [1usize, 2, 3, 5];
    for (targets, reference_targets, what) in [
        (Targets::U32(&classes), RowTargets::Classes(&classes), "classes"),
        (Targets::Probabilities(&soft), RowTargets::Soft(&soft), "soft"),
    ] {
        let (row_losses, sum_gradient) =
            divergence_reference::probability_cross_entropy_f64(&input, reference_targets, shape.classes);
        for &row in &nan_rows {
            assert!(
                row_losses[row].is_nan(),
                "reference {what} row {row}: {}",
                row_losses[row]
            );
        }
        for (backend_name, backend) in common::all_backends() {
            for reduction in REDUCTIONS {
                let label = format!("{backend_name} {what} {reduction:?}");
                let mut gradient = vec![0.0f32; input.len()];
                let loss = ProbabilityCrossEntropyLoss::new()
                    .reduction(reduction)
                    .loss_and_grad(backend, &input, targets, shape, &mut gradient)
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                let Some(divisor) = divisor(reduction, shape.rows) else {
                    for (row, (&value, &expected)) in per_row(&loss, &label).iter().zip(&row_losses).enumerate() {
                        assert_close(value, expected, 1e-5, &format!("{label} row {row} loss"));
                    }
                    continue;
                };
                assert!(reduced(&loss, &label).is_nan(), "{label}: {loss:?}");
                for (index, (&value, &expected)) in gradient.iter().zip(&sum_gradient).enumerate() {
                    let row = index / shape.classes;
                    if nan_rows.contains(&row) {
                        assert!(value.is_nan(), "{label} gradient[{index}] = {value:e}, expected NaN");
                    } else {
                        assert_close(value, expected / divisor, 1e-5, &format!("{label} gradient[{index}]"));
                    }
                }
            }
        }
    }
}

/// NaN inputs and targets of the rest of the family give NaN losses and gradients
/// (a NaN probability of `BCELoss` is rejected instead, as PyTorch raises).
#[test]
fn nan_reaches_the_loss_and_gradient_of_the_whole_family() {
    let shape = Shape::new(2, 4);
    let clean = [0.1f32, 0.2, 0.3, 0.4, 0.25, 0.25, 0.25, 0.25];
    let with_nan_input = {
        let mut values = clean;
        values[5] = f32::NAN;
        values
    };
    let with_nan_target = with_nan_input;
    for (backend_name, backend) in common::all_backends() {
        type Run<'a> = Box<dyn Fn(&mut [f32]) -> xent::Result<Loss> + 'a>;
        // (what, run, whether the gradient at the NaN is NaN: KL's is −t whatever the input)
        let runs: Vec<(&str, Run<'_>, bool)> = vec![
            (
                "bce probabilities, NaN target",
                Box::new(|gradient| {
                    BinaryCrossEntropyLoss::new()
                        .input(InputKind::Probabilities)
                        .reduction(Reduction::None)
                        .loss_and_grad(backend, &clean, &with_nan_target, shape, gradient)
                }),
                true,
            ),
            (
                "bce logits, NaN input",
                Box::new(|gradient| {
                    BinaryCrossEntropyLoss::new().reduction(Reduction::None).loss_and_grad(
                        backend,
                        &with_nan_input,
                        &clean,
                        shape,
                        gradient,
                    )
                }),
                true,
            ),
            (
                "kl, NaN input",
                Box::new(|gradient| {
                    KlDivLoss::new().reduction(KlReduction::None).loss_and_grad(
                        backend,
                        &with_nan_input,
                        &clean,
                        shape,
                        gradient,
                    )
                }),
                false,
            ),
            (
                "kl, NaN target",
                Box::new(|gradient| {
                    KlDivLoss::new().reduction(KlReduction::None).loss_and_grad(
                        backend,
                        &clean,
                        &with_nan_target,
                        shape,
                        gradient,
                    )
                }),
                true,
            ),
            (
                "entropy of probabilities, NaN input",
                Box::new(|gradient| {
                    Entropy::new()
                        .input(InputKind::Probabilities)
                        .reduction(Reduction::None)
                        .loss_and_grad(backend, &with_nan_input, shape, gradient)
                }),
                true,
            ),
            (
                "entropy of logits, NaN input",
                Box::new(|gradient| {
                    Entropy::new()
                        .input(InputKind::Logits)
                        .reduction(Reduction::None)
                        .loss_and_grad(backend, &with_nan_input, shape, gradient)
                }),
                true,
            ),
        ];
        for (what, run, nan_gradient) in runs {
            let label = format!("{backend_name} {what}");
            let mut gradient = vec![0.0f32; 8];
            let loss = run(&mut gradient).unwrap_or_else(|error| panic!("{label}: {error}"));
            let values = per_row(&loss, &label);
            // Elementwise losses have one value per element, row losses one per row.
            let nan_value = if values.len() == 8 { 5 } else { 1 };
            assert!(values[nan_value].is_nan(), "{label}: {values:?}");
            assert!(values[0].is_finite(), "{label}: {values:?}");
            if nan_gradient {
                assert!(gradient[5].is_nan(), "{label}: {gradient:?}");
            } else {
                assert_eq!(gradient[5], -clean[5], "{label}: d kl / d x = -t");
            }
            assert!(gradient[0].is_finite(), "{label}: {gradient:?}");
        }
        let error =
            BinaryCrossEntropyLoss::new()
                .input(InputKind::Probabilities)
                .loss(backend, &with_nan_input, &clean, shape);
        assert!(
            matches!(error, Err(xent::Error::InvalidOption(_))),
            "{backend_name}: NaN probability: {error:?}"
        );
    }
}

// ------------------------------------------------------------------ cross-entropy: zero divisor

fn logits(shape: Shape) -> Vec<f32> {
    (0..shape.rows * shape.classes)
        .map(|index| ((index * 37 % 23) as f32 - 11.0) * 0.3)
        .collect()
}

/// A mean over a zero divisor: NaN loss; every non-ignored row's gradient NaN
/// (PyTorch's `w_y · (−1/0)` spread by the log-softmax backward), ignored rows 0.
#[test]
fn mean_over_a_zero_divisor_is_nan_with_nan_rows_as_pytorch() {
    let shape = Shape::new(5, 4);
    let logits = logits(shape);
    let zero_weights = vec![0.0f32, 0.0, 1.0, 1.0];
    let cases: Vec<(&str, Vec<i64>, CrossEntropyLoss)> = vec![
        (
            "all weights zero",
            vec![0, 1, 0, 1, 1],
            CrossEntropyLoss::new().weight(vec![0.0; 4]),
        ),
        (
            "target weights zero, one row ignored",
            vec![0, -100, 1, 0, 1],
            CrossEntropyLoss::new().weight(zero_weights.clone()),
        ),
        (
            "target weights zero, smoothing",
            vec![0, 1, -100, 1, 0],
            CrossEntropyLoss::new()
                .weight(zero_weights.clone())
                .label_smoothing(0.1),
        ),
        (
            "target weights zero, z-loss",
            vec![1, 0, 0, -100, 1],
            CrossEntropyLoss::new().weight(vec![0.0, 0.0, 1.0, 1.0]).z_loss(1e-2),
        ),
        ("every row ignored", vec![-100; 5], CrossEntropyLoss::new()),
        (
            "every row ignored, smoothing",
            vec![-100; 5],
            CrossEntropyLoss::new().label_smoothing(0.2),
        ),
    ];
    for (what, targets, loss) in cases {
        let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
        assert!(reference.loss.is_nan(), "reference {what}: {}", reference.loss);
        for (backend_name, backend) in common::all_backends() {
            let label = format!("{backend_name} {what}");
            let mut gradient = vec![0.5f32; logits.len()];
            let value = loss
                .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            assert!(reduced(&value, &label).is_nan(), "{label}: {value:?}");
            let mut in_place = logits.clone();
            let value = loss
                .loss_and_grad_in_place(backend, &mut in_place, &targets, shape)
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            assert!(reduced(&value, &label).is_nan(), "{label} in place: {value:?}");
            for (row, &target) in targets.iter().enumerate() {
                for class in 0..shape.classes {
                    let index = row * shape.classes + class;
                    for (path, g) in [("", gradient[index]), (" in place", in_place[index])] {
                        if target == -100 {
                            assert!(g == 0.0, "{label}{path}: ignored gradient[{index}] = {g:e}");
                        } else {
                            assert!(g.is_nan(), "{label}{path}: gradient[{index}] = {g:e}, expected NaN");
                        }
                    }
                    let expected = reference.gradient[index];
                    assert!(
                        if target == -100 {
                            expected == 0.0
                        } else {
                            expected.is_nan()
                        },
                        "reference {what}: gradient[{index}] = {expected:e}"
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------ cross-entropy: deliberate differences

/// An ignored row full of NaN (and ±inf): its gradient row is exactly 0.0 and it
/// adds nothing to the loss (PyTorch's gradient row would be NaN: README.md,
/// "Deliberate differences from PyTorch"); the other rows match the reference.
#[test]
fn ignored_rows_full_of_nan_keep_a_zero_gradient_and_add_nothing() {
    let shape = Shape::new(6, 7);
    let mut logits = logits(shape);
    let garbage = 2 * shape.classes..3 * shape.classes;
    logits[garbage.clone()].fill(f32::NAN);
    logits[garbage.start + 1] = f32::INFINITY;
    logits[garbage.start + 4] = f32::NEG_INFINITY;
    let targets: Vec<i64> = vec![3, 0, -100, 6, 2, 5];
    let options: Vec<(&str, CrossEntropyLoss)> = vec![
        ("plain", CrossEntropyLoss::new()),
        (
            "weights, smoothing",
            CrossEntropyLoss::new()
                .weight(vec![0.5, 1.0, 2.0, 1.5, 1.0, 0.25, 3.0])
                .label_smoothing(0.1),
        ),
    ];
    for (what, loss) in options {
        for reduction in REDUCTIONS {
            let loss = loss.clone().reduction(reduction);
            let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
            assert!(reference.loss.is_finite(), "reference {what}: {}", reference.loss);
            for (backend_name, backend) in common::all_backends() {
                let label = format!("{backend_name} {what} {reduction:?}");
                let mut gradient = vec![f32::NAN; logits.len()];
                let value = loss
                    .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                let mut in_place = logits.clone();
                loss.loss_and_grad_in_place(backend, &mut in_place, &targets, shape)
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                match &value {
                    Loss::Reduced(actual) => assert_close(*actual, reference.loss, 1e-5, &label),
                    Loss::PerRow(rows) => {
                        assert_eq!(rows[2].to_bits(), 0.0f32.to_bits(), "{label}: ignored row loss");
                        for (row, (&actual, &expected)) in rows.iter().zip(&reference.row_losses).enumerate() {
                            assert_close(actual, expected, 1e-5, &format!("{label} row {row}"));
                        }
                    }
                }
                for (path, values) in [("", &gradient), (" in place", &in_place)] {
                    for (index, (&g, &expected)) in values.iter().zip(&reference.gradient).enumerate() {
                        if garbage.contains(&index) {
                            assert_eq!(
                                g.to_bits(),
                                0.0f32.to_bits(),
                                "{label}{path}: gradient[{index}] = {g:e}"
                            );
                        } else {
                            let error = (f64::from(g) - expected).abs();
                            assert!(
                                error <= 1e-6,
                                "{label}{path}: gradient[{index}] {g:e} vs reference {expected:e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A `−inf` logit at the target: that row's loss is `+inf`, and so are the mean
/// and the sum, however many rows the reduction adds after it (a Kahan
/// compensation of `inf − inf` would turn later additions into NaN); the gradient
/// stays finite (`p_y − 1 = −1` there).
#[test]
fn negative_infinity_at_the_target_gives_an_infinite_loss() {
    let shape = Shape::new(700, 6);
    let mut logits = logits(shape);
    let targets: Vec<i64> = (0..shape.rows as i64).map(|row| row % 6).collect();
    for row in [0usize, 3, 517] {
        logits[row * shape.classes + targets[row] as usize] = f32::NEG_INFINITY;
    }
    for (what, loss) in [
        ("plain", CrossEntropyLoss::new()),
        ("smoothing", CrossEntropyLoss::new().label_smoothing(0.1)),
    ] {
        for reduction in REDUCTIONS {
            let loss = loss.clone().reduction(reduction);
            let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
            assert_eq!(reference.loss, f64::INFINITY, "reference {what}");
            for (backend_name, backend) in common::all_backends() {
                let label = format!("{backend_name} {what} {reduction:?}");
                let mut gradient = vec![f32::NAN; logits.len()];
                let value = loss
                    .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                match &value {
                    Loss::Reduced(actual) => assert_eq!(*actual, f32::INFINITY, "{label}"),
                    Loss::PerRow(rows) => {
                        for (row, (&actual, &expected)) in rows.iter().zip(&reference.row_losses).enumerate() {
                            assert_close(actual, expected, 1e-5, &format!("{label} row {row}"));
                        }
                    }
                }
                common::assert_gradient(&gradient, &reference.gradient, 1.0, &label);
            }
        }
    }
}

/// The entropy of logits with `−inf` (masked) classes is the entropy of the other
/// classes alone, and its gradient is 0 at the masked ones and that of the other
/// classes alone elsewhere (`p·log p → 0`; PyTorch's `Categorical(logits).entropy()`
/// clamps the logits and gives the same), checked against the f64 reference of
/// the rows without the masked classes.
#[test]
fn masked_logits_leave_the_entropy_of_the_other_classes() {
    let shape = Shape::new(40, 9);
    let full = logits(shape);
    let masked = |class: usize, row: usize| (class + row).is_multiple_of(3) && class != row % 9;
    let mut logits = full.clone();
    let mut kept = Vec::new();
    let mut kept_rows = Vec::new();
    for row in 0..shape.rows {
        let classes: Vec<usize> = (0..shape.classes).filter(|&class| !masked(class, row)).collect();
        for class in 0..shape.classes {
            if masked(class, row) {
                logits[row * shape.classes + class] = f32::NEG_INFINITY;
            }
        }
        kept_rows.push(classes);
    }
    for reduction in REDUCTIONS {
        for (backend_name, backend) in common::all_backends() {
            let label = format!("{backend_name} {reduction:?}");
            let mut gradient = vec![f32::NAN; logits.len()];
            let value = Entropy::new()
                .input(InputKind::Logits)
                .reduction(reduction)
                .loss_and_grad(backend, &logits[..], shape, &mut gradient[..])
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            let mut total = 0.0;
            for (row, classes) in kept_rows.iter().enumerate() {
                kept.clear();
                kept.extend(classes.iter().map(|&class| full[row * shape.classes + class]));
                let (entropies, reference_gradient) = divergence_reference::entropy_f64(&kept, kept.len(), true);
                total += entropies[0];
                if let Loss::PerRow(rows) = &value {
                    assert_close(rows[row], entropies[0], 1e-5, &format!("{label} row {row}"));
                }
                let scale = divisor(reduction, shape.rows).unwrap_or(1.0);
                for class in 0..shape.classes {
                    let actual = gradient[row * shape.classes + class];
                    let expected = match classes.iter().position(|&kept_class| kept_class == class) {
                        Some(index) => reference_gradient[index] / scale,
                        None => 0.0,
                    };
                    assert!(
                        (f64::from(actual) - expected).abs() <= 1e-6,
                        "{label}: gradient of row {row}, class {class}: {actual} vs {expected}"
                    );
                }
            }
            if let Some(divisor) = divisor(reduction, shape.rows) {
                assert_close(reduced(&value, &label), total / divisor, 1e-5, &label);
            }
        }
    }
}

/// The per-row `lse` of rows whose maximum is infinite is `torch.logsumexp`'s on
/// every backend and in the reference: `−inf` for a row of `−inf`, `+inf` with a
/// `+inf` logit (also after a negative logit scale turns `−inf` into it), NaN with
/// a NaN; their losses stay NaN (ignored rows 0).
#[test]
fn the_lse_of_infinite_rows_is_that_of_torch_logsumexp() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let logits = [
        -inf, -inf, -inf, // row 0
        inf, 0.0, 1.0, // row 1
        inf, inf, -inf, // row 2
        nan, -inf, -inf, // row 3
        nan, inf, 0.0, // row 4
        0.0, 1.0, 2.0, // row 5
    ];
    let shape = Shape::new(6, 3);
    let targets = [-100i64, 0, -100, 1, 2, 1];
    for (what, loss, expected) in [
        ("plain", CrossEntropyLoss::new(), [-inf, inf, inf, nan, nan]),
        // Row 1 becomes (−inf, 0, −1): a finite lse, ln(1 + e^−1).
        (
            "negative scale",
            CrossEntropyLoss::new().logit_scale(-1.0),
            [inf, 0.313_261_7, inf, nan, nan],
        ),
        (
            "smoothing",
            CrossEntropyLoss::new().label_smoothing(0.1),
            [-inf, inf, inf, nan, nan],
        ),
    ] {
        let loss = loss.reduction(Reduction::None);
        let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
        for (row, &lse) in expected.iter().enumerate() {
            assert_close(
                lse,
                reference.row_lse[row],
                1e-6,
                &format!("reference {what} row {row}"),
            );
        }
        for (backend_name, backend) in common::all_backends() {
            let label = format!("{backend_name} {what}");
            let output = loss
                .forward(backend, &logits[..], &targets[..], shape, None, true)
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            let lse = output.lse.expect("row stats asked for");
            for (row, &reference) in reference.row_lse.iter().enumerate() {
                assert_close(lse[row], reference, 1e-6, &format!("{label} lse of row {row}"));
            }
            for (row, (&actual, &expected)) in per_row(&output.loss, &label)
                .iter()
                .zip(&reference.row_losses)
                .enumerate()
            {
                assert_close(actual, expected, 1e-5, &format!("{label} loss of row {row}"));
            }
        }
    }
}

/// The per-row argmax skips NaN logits on every backend and in the reference:
/// the smallest index of the largest other logit, 0 for a row of NaN only
/// (`torch.argmax` gives the first NaN's index; README, "Deliberate
/// differences"). The rows' lse and loss are NaN all the same.
#[test]
fn the_argmax_skips_nan_logits() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let logits = [
        1.0, nan, 3.0, // row 0
        nan, 5.0, 5.0, // row 1: a tie after the NaN
        nan, nan, nan, // row 2
        -inf, nan, -inf, // row 3
        0.0, 1.0, 2.0, // row 4
    ];
    let shape = Shape::new(5, 3);
    let targets = [0i64; 5];
    let expected = [2u32, 1, 0, 0, 2];
    let loss = CrossEntropyLoss::new().reduction(Reduction::None);
    let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
    assert_eq!(reference.row_argmax, expected, "reference");
    for (backend_name, backend) in common::all_backends() {
        let output = loss
            .forward(backend, &logits[..], &targets[..], shape, None, true)
            .unwrap_or_else(|error| panic!("{backend_name}: {error}"));
        assert_eq!(output.argmax.as_deref(), Some(&expected[..]), "{backend_name}");
        let lse = output.lse.expect("row stats asked for");
        assert!(lse[..4].iter().all(|value| value.is_nan()), "{backend_name}: {lse:?}");
    }
    // Rows of a whole workgroup (vec4 groups), also split over workgroups.
    let shape = Shape::new(3, 1000);
    let mut logits = vec![0.5f32; 3000];
    logits[..1000].fill(nan);
    logits[1005] = nan;
    logits[1700] = 4.0;
    logits[2000..].fill(-inf);
    logits[2003] = nan;
    let targets = [0i64; 3];
    let expected = [0u32, 700, 0];
    let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
    assert_eq!(reference.row_argmax, expected, "reference, wide rows");
    let mut backends = common::all_backends();
    if let Some(split) = common::gpu_split_rows() {
        assert_eq!(split.split_row_slices(shape, LogitType::F32), Some(4));
        backends.push(("gpu-split", split));
    }
    for (backend_name, backend) in backends {
        let output = loss
            .forward(backend, &logits[..], &targets[..], shape, None, true)
            .unwrap_or_else(|error| panic!("{backend_name}: {error}"));
        assert_eq!(
            output.argmax.as_deref(),
            Some(&expected[..]),
            "{backend_name}, wide rows"
        );
    }
}

/// Rows whose maximum is not finite (a `+inf` logit, at the target or not, or
/// no finite logit) have a NaN loss, a NaN z-term and a NaN gradient row on every
/// backend with a z-loss too, for class and soft targets, as in the f64 reference
/// (`max + ln Σ exp(x' − max)` is `inf − inf` there; only the reported lse is
/// `torch.logsumexp`'s). Found by scripts/torch_sweep.py: the GPU gave the z-term
/// `+inf`, the loss `+inf` for a soft-target row of `−inf` and the gradient `+inf`
/// at a `+inf` target (its confident-row path).
#[test]
fn rows_with_an_infinite_maximum_are_nan_with_a_z_loss_too() {
    let inf = f32::INFINITY;
    let classes = 64;
    let shape = Shape::new(4, classes);
    let mut logits: Vec<f32> = (0..4 * classes)
        .map(|index| ((index * 7) % 13) as f32 * 0.25 - 1.5)
        .collect();
    logits[1] = inf; // row 0: +inf at its target, class 1
    logits[classes..2 * classes].fill(-inf); // row 1: no finite logit
    logits[2 * classes] = inf; // row 2: +inf off its target, class 3
    let targets = [1i64, 2, 3, 0];
    let probabilities = vec![1.0 / classes as f32; logits.len()];
    // The split-row kernel (shaders/cross_entropy_split.wgsl) shares the row code.
    let split = common::open(xent::ContextOptions {
        row_split: xent::RowSplit::Forced {
            vec4s_per_invocation: 1,
            spin_limit: xent::DEFAULT_SPIN_LIMIT,
        },
        ..xent::ContextOptions::default()
    });
    let mut backends = common::all_backends();
    if let Some(context) = &split {
        assert!(
            context.splits_rows(shape, xent::LogitType::F32),
            "the forced split splits {shape:?}"
        );
        backends.push(("gpu-split", context));
    }
    for (what, targets) in [
        ("class", Targets::I64(&targets)),
        ("soft", Targets::Probabilities(&probabilities)),
    ] {
        let loss = CrossEntropyLoss::new().z_loss(0.01).reduction(Reduction::None);
        let reference = cross_entropy_f64(&logits, targets, shape, loss.options());
        for &(backend_name, backend) in &backends {
            let label = format!("{backend_name} {what}");
            let mut gradient = vec![0.0f32; logits.len()];
            let output = loss
                .forward(
                    backend,
                    &logits[..],
                    targets,
                    shape,
                    Some((&mut gradient).into()),
                    false,
                )
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            let rows = per_row(&output.loss, &label);
            let z = per_row(output.z_loss.as_ref().expect("a z-loss"), &label);
            for row in 0..4 {
                assert_close(
                    rows[row],
                    reference.row_losses[row],
                    1e-5,
                    &format!("{label} loss of row {row}"),
                );
                assert_close(
                    z[row],
                    reference.row_z[row],
                    1e-5,
                    &format!("{label} z-term of row {row}"),
                );
                for class in 0..classes {
                    let index = row * classes + class;
                    let label = format!("{label} gradient [{row}, {class}]");
                    assert_close(gradient[index], reference.gradient[index], 1e-5, &label);
                }
            }
            assert!(
                rows[..3].iter().chain(&z[..3]).all(|value| value.is_nan()),
                "{label}: loss {rows:?}, z {z:?}"
            );
        }
    }
}

/// BCE with logits at infinite logits, on every backend: the limits of
/// `−w·(pw·y·log σ(x) + (1 − y)·log(1 − σ(x)))`. A logit of `−inf` with a target
/// above 0 is `+inf` (PyTorch's formula gives NaN there; README, "Deliberate
/// differences"), as is `+inf` with a target below 1; the targets 0 at `−inf`
/// and 1 at `+inf` are NaN (`0·inf`), as in PyTorch. The gradient
/// `w·((pw·y + 1 − y)·σ(x) − pw·y)` is finite: PyTorch's.
#[test]
fn binary_cross_entropy_at_infinite_logits_is_the_limit() {
    let inf = f32::INFINITY;
    let logits = [-inf, -inf, -inf, inf, inf, inf];
    let targets = [0.0f32, 0.5, 1.0, 0.0, 0.5, 1.0];
    let shape = Shape::new(2, 3);
    let nan = f32::NAN;
    let expected_loss = [nan, inf, inf, inf, inf, nan];
    let expected_gradient = [0.0f32, -0.5, -1.0, 1.0, 0.5, 0.0];
    for (backend_name, backend) in common::all_backends() {
        let mut gradient = [nan; 6];
        let loss = BinaryCrossEntropyLoss::new()
            .reduction(Reduction::None)
            .loss_and_grad(backend, &logits, &targets, shape, &mut gradient[..])
            .unwrap_or_else(|error| panic!("{backend_name}: {error}"));
        let losses = per_row(&loss, backend_name);
        for (index, (&actual, &expected)) in losses.iter().zip(&expected_loss).enumerate() {
            assert_close(
                actual,
                f64::from(expected),
                1e-6,
                &format!("{backend_name} loss {index}"),
            );
        }
        for (index, (&actual, &expected)) in gradient.iter().zip(&expected_gradient).enumerate() {
            assert_close(
                actual,
                f64::from(expected),
                1e-6,
                &format!("{backend_name} gradient {index}"),
            );
        }
    }
}

/// A logit scale so large that the gradient's coefficients overflow f32 (here
/// with a z-loss: `(1 + 2·z·lse)·s ≈ 6e57`): the classes whose softmax is 0 get
/// a gradient of 0 on every backend, as in the f64 reference, not `inf·0` =
/// NaN (the CPU folded the scale into the coefficient before multiplying).
#[test]
fn an_overflowing_logit_scale_leaves_zero_gradients_zero() {
    let logits = [1.0f32, 3.0, -1.0];
    let targets = [2i64];
    let shape = Shape::new(1, 3);
    let loss = CrossEntropyLoss::new()
        .reduction(Reduction::None)
        .z_loss(1e-3)
        .logit_scale(1e30);
    let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
    assert_eq!(reference.gradient[0], 0.0);
    assert!((reference.gradient[2] + 1e30).abs() < 1e24, "{:?}", reference.gradient);
    for (backend_name, backend) in common::all_backends() {
        let mut gradient = [f32::NAN; 3];
        let output = loss
            .loss_and_grad(backend, &logits[..], &targets[..], shape, &mut gradient[..])
            .unwrap_or_else(|error| panic!("{backend_name}: {error}"));
        assert_eq!(per_row(&output, backend_name), [f32::INFINITY], "{backend_name}");
        assert_eq!(gradient[0], 0.0, "{backend_name}: {gradient:?}");
        assert_eq!(gradient[1], f32::INFINITY, "{backend_name}: {gradient:?}");
        assert_close(gradient[2], reference.gradient[2], 1e-6, backend_name);
    }
}

/// Infinite KL targets and entropy probabilities, log-targets whose `exp`
/// underflows f32 beside an infinite input, and BCE targets far outside [0, 1]:
/// PyTorch's values (float64, and float32 where it agrees) on every backend.
/// The GPU's logarithm of `+inf` was NaN (so KL's `t·(ln t − x)` and `entr(inf)`
/// were NaN), its `exp(−104)·(−104 − x)` was `0·inf` = NaN, and lavapipe's
/// compiler turned BCE's `1 + (π − 1)·y` into 0 for `y ≥ 1e10` (a loss of 0
/// instead of ln 2).
#[test]
fn family_terms_at_infinite_and_extreme_values_are_pytorchs() {
    let inf = f32::INFINITY;
    let one_row = |classes| Shape::new(1, classes);
    for (name, backend) in common::all_backends() {
        let label = |what: &str| format!("{name}: {what}");
        // KL, target p: p·(ln p − x) with p = +inf is +inf (NaN at x = +inf).
        let (input, target) = ([-0.5f32, -0.5, inf, -inf, -0.5], [inf, 1e30, inf, inf, -inf]);
        let mut gradient = [0.0f32; 5];
        let loss = KlDivLoss::new()
            .reduction(KlReduction::None)
            .loss_and_grad(backend, &input[..], &target, one_row(5), &mut gradient[..])
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let (inf64, nan64) = (f64::INFINITY, f64::NAN);
        let expected = [inf64, 6.957_755_278_982_137e31, nan64, inf64, nan64];
        for (&actual, &expected) in per_row(&loss, name).iter().zip(&expected) {
            assert_close(actual, expected, 1e-6, &label("kl loss"));
        }
        assert_eq!(gradient, [-inf, -1e30, -inf, -inf, inf], "{name}: kl gradient");
        // KL, log target: exp(t)·(t − x) is ±inf for an infinite x whatever t > −inf
        // (PyTorch float64; its float32 gives NaN where exp(t) underflows).
        let (input, target) = ([-inf, inf, -inf, -1.0], [-104.0f32, -104.0, -90.0, f32::NEG_INFINITY]);
        let loss = KlDivLoss::new()
            .reduction(KlReduction::None)
            .log_target(true)
            .loss(backend, &input[..], &target, one_row(4))
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let losses = per_row(&loss, name);
        assert_eq!(losses[..3], [inf, -inf, inf], "{name}: kl log-target losses {losses:?}");
        assert!(losses[3].is_nan(), "{name}: 0·(−inf + 1) is NaN: {losses:?}");
        // Entropy of probabilities: entr(+inf) = −inf, slope −(ln p + 1) = −inf.
        let mut gradient = [0.0f32; 2];
        let loss = Entropy::new()
            .input(InputKind::Probabilities)
            .reduction(Reduction::None)
            .loss_and_grad(backend, &[inf, 0.5][..], one_row(2), &mut gradient[..])
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(per_row(&loss, name), [f32::NEG_INFINITY], "{name}: entropy");
        assert_eq!(gradient[0], f32::NEG_INFINITY, "{name}: entropy gradient {gradient:?}");
        assert_close(gradient[1], -(0.5f64.ln() + 1.0), 1e-6, &label("entropy gradient"));
        // BCE on logits at x = 0: ln 2 whatever the target; gradient σ(0) − y.
        let targets = [1e10f32, -1e30, 1e20];
        let mut gradient = [0.0f32; 3];
        let loss = BinaryCrossEntropyLoss::new()
            .reduction(Reduction::None)
            .loss_and_grad(backend, &[0.0f32; 3][..], &targets, one_row(3), &mut gradient[..])
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        for &actual in per_row(&loss, name) {
            assert_close(actual, std::f64::consts::LN_2, 1e-6, &label("bce loss"));
        }
        for (&actual, &target) in gradient.iter().zip(&targets) {
            assert_close(actual, 0.5 - f64::from(target), 1e-6, &label("bce gradient"));
        }
    }
}
