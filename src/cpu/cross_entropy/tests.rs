use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::cpu::cross_entropy::reference::{ReferenceCrossEntropy, cross_entropy_f64};

/// [`cross_entropy_host`] on f32 slices.
fn cross_entropy_with(
    kernel: Kernel,
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    options: &CrossEntropyOptions,
    gradient: Option<&mut [f32]>,
    row_stats: bool,
) -> CpuCrossEntropy {
    cross_entropy_host(
        kernel,
        HostLogits::from_f32(logits, gradient),
        targets,
        shape,
        options,
        row_stats,
    )
}

/// The kinds of logits the cases are drawn with.
#[derive(Clone, Copy, Debug)]
enum Logits {
    /// Standard normal.
    Normal,
    /// Standard normal times 30 (tanh saturates under a softcap; most exponentials underflow).
    Wide,
    /// Standard normal plus 1e4 (the offset must cancel).
    Offset,
    /// Target logit 3, the others about -23 (losses ~C·1e-11).
    Confident,
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// Class indices, about a fifth of them `ignore_index` when it is not a class.
fn class_targets(rng: &mut StdRng, shape: Shape, ignore_index: i64) -> Vec<i64> {
    (0..shape.rows)
        .map(|_| {
            if !(0..shape.classes as i64).contains(&ignore_index) && rng.random::<f32>() < 0.2 {
                ignore_index
            } else {
                rng.random_range(0..shape.classes as i64)
            }
        })
        .collect()
}

/// Probability rows (about a third of the entries exactly 0), in the logits' layout.
fn probability_targets(rng: &mut StdRng, shape: Shape) -> Vec<f32> {
    let mut probabilities = vec![0.0f32; shape.rows * shape.classes];
    for row in 0..shape.rows {
        let raw: Vec<f32> = (0..shape.classes)
            .map(|_| {
                if rng.random::<f32>() < 0.33 {
                    0.0
                } else {
                    rng.random::<f32>()
                }
            })
            .collect();
        let total: f32 = raw.iter().sum::<f32>().max(f32::MIN_POSITIVE);
        for (class, &value) in raw.iter().enumerate() {
            probabilities[shape.index(row, class)] = value / total;
        }
    }
    probabilities
}

/// Logits of `kind`; `Confident` puts the large logit on `classes[row]` (or class 0).
fn make_logits(rng: &mut StdRng, shape: Shape, kind: Logits, classes: &[i64]) -> Vec<f32> {
    let mut logits = vec![0.0f32; shape.rows * shape.classes];
    for row in 0..shape.rows {
        let target = classes
            .get(row)
            .map_or(0, |&class| class.clamp(0, shape.classes as i64 - 1) as usize);
        for class in 0..shape.classes {
            logits[shape.index(row, class)] = match kind {
                Logits::Normal => normal(rng),
                Logits::Wide => 30.0 * normal(rng),
                Logits::Offset => 1e4 + normal(rng),
                Logits::Confident if class == target => 3.0,
                Logits::Confident => -23.0 + 0.1 * normal(rng),
            };
        }
    }
    logits
}

/// Random class weights in [0.1, 3].
fn weights(rng: &mut StdRng, classes: usize) -> Vec<f32> {
    (0..classes).map(|_| 0.1 + 2.9 * rng.random::<f32>()).collect()
}

/// Largest errors seen, relative to each check's tolerance unit.
#[derive(Debug, Default)]
struct Worst {
    /// max |loss − ref| / |ref| over losses above 1e-6.
    loss_relative: f64,
    /// max |g − g_ref| / (scale·max(1, w_max)·(1 + 2z·max|lse|)).
    gradient: f64,
    /// max |lse − ref| / (1 + |ref|).
    lse: f64,
}

/// One case of the comparison with the reference.
struct Case<'a> {
    label: String,
    logits: &'a [f32],
    targets: Targets<'a>,
    shape: Shape,
    options: CrossEntropyOptions,
}

fn check_loss(label: &str, actual: f32, expected: f64, worst: &mut Worst) {
    if expected.is_nan() {
        assert!(actual.is_nan(), "{label}: {actual:e}, expected NaN");
        return;
    }
    let error = (f64::from(actual) - expected).abs();
    assert!(
        error <= 1e-5 * expected.abs() + 1e-12,
        "{label}: {actual:e} vs reference {expected:e}"
    );
    if expected.abs() > 1e-6 {
        worst.loss_relative = worst.loss_relative.max(error / expected.abs());
    }
}

/// The unit of the gradient tolerance: the gradient's scale (1/D for the
/// mean), times the largest weight where it exceeds 1, times `1 + 2z·max|lse|`
/// (the z-loss adds `2z·lse·p_c` to every entry: with logits near 1e4 the
/// gradient itself is ~20× larger, and so is its f32 rounding).
fn gradient_unit(case: &Case<'_>, expected: &ReferenceCrossEntropy) -> f64 {
    let options = &case.options;
    let divisor = if options.reduction == Reduction::Mean {
        Plan::new(case.targets, case.shape, options, true).divisor
    } else {
        1.0
    };
    let max_weight = options
        .weight
        .as_ref()
        .map_or(1.0, |w| w.iter().fold(1.0f32, |a, &b| a.max(b)));
    let max_lse = expected
        .row_lse
        .iter()
        .filter(|lse| lse.is_finite())
        .fold(0.0f64, |a, &b| a.max(b.abs()));
    let z_slope = 1.0 + 2.0 * f64::from(options.z_loss) * max_lse;
    f64::from(max_weight) * z_slope / divisor
}

/// Runs `kernel` on `case` with and without row statistics and a gradient and
/// compares everything with the f64 reference.
fn check_case(kernel: Kernel, case: &Case<'_>, worst: &mut Worst) {
    let expected = cross_entropy_f64(case.logits, case.targets, case.shape, &case.options);
    let mut gradient = vec![f32::NAN; case.logits.len()];
    let actual = cross_entropy_with(
        kernel,
        case.logits,
        case.targets,
        case.shape,
        &case.options,
        Some(&mut gradient),
        true,
    );
    let label = &case.label;
    for row in 0..case.shape.rows {
        check_loss(
            &format!("{label} row {row} loss"),
            actual.row_losses[row],
            expected.row_losses[row],
            worst,
        );
        check_loss(
            &format!("{label} row {row} z"),
            actual.row_z[row],
            expected.row_z[row],
            worst,
        );
        let (lse, expected_lse) = (actual.row_lse[row], expected.row_lse[row]);
        if expected_lse.is_nan() {
            assert!(lse.is_nan(), "{label} row {row}: lse {lse:e}, expected NaN");
        } else {
            let error = (f64::from(lse) - expected_lse).abs() / (1.0 + expected_lse.abs());
            assert!(
                error <= 1e-6,
                "{label} row {row}: lse {lse:e} vs reference {expected_lse:e}"
            );
            worst.lse = worst.lse.max(error);
        }
        assert_eq!(
            actual.row_argmax[row], expected.row_argmax[row],
            "{label} row {row}: argmax"
        );
    }
    check_loss(&format!("{label} loss"), actual.loss, expected.loss, worst);
    check_loss(&format!("{label} z_loss"), actual.z_loss, expected.z_loss, worst);

    let unit = gradient_unit(case, &expected);
    for (index, (&g, &expected)) in gradient.iter().zip(&expected.gradient).enumerate() {
        if expected.is_nan() {
            assert!(g.is_nan(), "{label} gradient[{index}] = {g:e}, expected NaN");
            continue;
        }
        let error = (f64::from(g) - expected).abs() / unit;
        assert!(
            error <= 1e-6,
            "{label} gradient[{index}] = {g:e} vs reference {expected:e}"
        );
        worst.gradient = worst.gradient.max(error);
    }

    // Without row statistics and without a gradient: the same losses, bit for bit
    // (the plain case goes to the fast path, which is checked against the reference).
    let lean = cross_entropy_with(
        kernel,
        case.logits,
        case.targets,
        case.shape,
        &case.options,
        None,
        false,
    );
    assert!(lean.row_lse.is_empty() && lean.row_argmax.is_empty(), "{label}");
    if plain_class_targets(case.targets, case.shape, &case.options).is_none() {
        assert_eq!(
            bits(&lean.row_losses),
            bits(&actual.row_losses),
            "{label}: losses without gradient"
        );
        assert_eq!(lean.loss.to_bits(), actual.loss.to_bits(), "{label}");
    } else {
        for row in 0..case.shape.rows {
            check_loss(
                &format!("{label} fast row {row}"),
                lean.row_losses[row],
                expected.row_losses[row],
                worst,
            );
        }
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

/// Options alone and combined; `weight` has one entry per class.
fn option_cases(weight: &[f32]) -> Vec<(&'static str, CrossEntropyOptions)> {
    let base = CrossEntropyOptions::default();
    let weight = Some(weight.to_vec());
    vec![
        ("plain", base.clone()),
        (
            "weight",
            CrossEntropyOptions {
                weight: weight.clone(),
                ..base.clone()
            },
        ),
        (
            "ignore_index class 1",
            CrossEntropyOptions {
                ignore_index: 1,
                ..base.clone()
            },
        ),
        (
            "smoothing",
            CrossEntropyOptions {
                label_smoothing: 0.1,
                ..base.clone()
            },
        ),
        (
            "smoothing 1",
            CrossEntropyOptions {
                label_smoothing: 1.0,
                ..base.clone()
            },
        ),
        (
            "weight+ignore+smoothing",
            CrossEntropyOptions {
                weight: weight.clone(),
                label_smoothing: 0.2,
                ..base.clone()
            },
        ),
        (
            "z_loss",
            CrossEntropyOptions {
                z_loss: 1e-3,
                ..base.clone()
            },
        ),
        (
            "softcap",
            CrossEntropyOptions {
                softcap: Some(15.0),
                ..base.clone()
            },
        ),
        (
            "z_loss+softcap",
            CrossEntropyOptions {
                z_loss: 1e-2,
                softcap: Some(30.0),
                ..base.clone()
            },
        ),
        (
            "logit_scale 0.7",
            CrossEntropyOptions {
                logit_scale: 0.7,
                ..base.clone()
            },
        ),
        (
            "logit_scale -1.3",
            CrossEntropyOptions {
                logit_scale: -1.3,
                ..base.clone()
            },
        ),
        (
            "everything",
            CrossEntropyOptions {
                weight,
                label_smoothing: 0.05,
                z_loss: 1e-4,
                softcap: Some(20.0),
                logit_scale: 1.5,
                ..base
            },
        ),
    ]
}

const KINDS: [Logits; 4] = [Logits::Normal, Logits::Wide, Logits::Offset, Logits::Confident];
const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// Every option case, reduction and kind of logits on `shape`, with class and soft targets.
fn check_shape(rng: &mut StdRng, shape: Shape, kernel: Kernel, worst: &mut Worst) {
    let weight = weights(rng, shape.classes);
    for (name, options) in option_cases(&weight) {
        for kind in KINDS {
            let classes = class_targets(rng, shape, options.ignore_index);
            let probabilities = probability_targets(rng, shape);
            let logits = make_logits(rng, shape, kind, &classes);
            for reduction in REDUCTIONS {
                let options = CrossEntropyOptions {
                    reduction,
                    ..options.clone()
                };
                for targets in [Targets::I64(&classes), Targets::Probabilities(&probabilities)] {
                    let soft = if targets.is_probabilities() { " soft" } else { "" };
                    let case = Case {
                        label: format!("{kernel:?} {shape:?} {name}{soft} {reduction} {kind:?}"),
                        logits: &logits,
                        targets,
                        shape,
                        options: options.clone(),
                    };
                    check_case(kernel, &case, worst);
                }
            }
        }
    }
}

#[test]
fn matches_reference_for_every_option() {
    let mut rng = StdRng::seed_from_u64(0x9e11_e2a1);
    for kernel in Kernel::available() {
        let mut worst = Worst::default();
        for (rows, classes) in [(1, 1), (3, 2), (5, 7), (4, 257), (2, 1000), (17, 33)] {
            check_shape(&mut rng, Shape::new(rows, classes), kernel, &mut worst);
        }
        println!("{kernel:?} row-major, worst: {worst:?}");
    }
}

#[test]
fn matches_reference_in_the_nd_layout() {
    let mut rng = StdRng::seed_from_u64(0x0d1a_2d3e);
    for kernel in Kernel::available() {
        let mut worst = Worst::default();
        for shape in [
            Shape::nd(2, 5, &[3, 4]).expect("shape"),
            Shape::nd(1, 300, &[2, 3]).expect("shape"),
            Shape::nd(3, 1, &[2]).expect("shape"),
        ] {
            check_shape(&mut rng, shape, kernel, &mut worst);
        }
        println!("{kernel:?} N-d, worst: {worst:?}");
    }
}

#[test]
fn multi_task_split_matches_reference_and_is_deterministic() {
    // More than MIN_TASK_ELEMENTS logits, so rayon splits the rows (or batch items).
    let mut rng = StdRng::seed_from_u64(5);
    let mut worst = Worst::default();
    for shape in [Shape::new(40, 4000), Shape::nd(8, 1000, &[17]).expect("shape")] {
        let weight = weights(&mut rng, shape.classes);
        let options = CrossEntropyOptions {
            weight: Some(weight),
            label_smoothing: 0.1,
            z_loss: 1e-4,
            softcap: Some(30.0),
            ..CrossEntropyOptions::default()
        };
        let classes = class_targets(&mut rng, shape, options.ignore_index);
        let logits = make_logits(&mut rng, shape, Logits::Normal, &classes);
        let case = Case {
            label: format!("{shape:?}"),
            logits: &logits,
            targets: Targets::I64(&classes),
            shape,
            options: options.clone(),
        };
        check_case(Kernel::detected(), &case, &mut worst);
        let run = || {
            let mut gradient = vec![0.0f32; logits.len()];
            let result = cross_entropy(
                &logits,
                Targets::I64(&classes),
                shape,
                &options,
                Some(&mut gradient),
                true,
            );
            (result, bits(&gradient))
        };
        assert_eq!(run(), run(), "{shape:?}: not deterministic");
    }
    println!("multi-task, worst: {worst:?}");
}

#[test]
fn nan_inf_and_ignored_rows() {
    let shape = Shape::new(5, 4);
    let logits = [
        1.0,
        f32::NAN,
        0.0,
        2.0, // row 0: NaN
        1.0,
        f32::INFINITY,
        0.0,
        2.0, // row 1: +inf
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY, // row 2: all -inf
        f32::NAN,
        f32::INFINITY,
        0.0,
        1.0, // row 3: ignored
        0.5,
        f32::NEG_INFINITY,
        0.25,
        2.0, // row 4: finite (one -inf)
    ];
    let classes = [0i64, 2, 1, -100, 3];
    let weight = vec![0.5, 1.0, 2.0, 1.5];
    for options in [
        CrossEntropyOptions::default(),
        CrossEntropyOptions {
            weight: Some(weight.clone()),
            z_loss: 1e-3,
            ..CrossEntropyOptions::default()
        },
        CrossEntropyOptions {
            softcap: Some(10.0),
            logit_scale: -2.0,
            ..CrossEntropyOptions::default()
        },
    ] {
        let expected = cross_entropy_f64(&logits, Targets::I64(&classes), shape, &options);
        for kernel in Kernel::available() {
            let mut gradient = vec![0.5f32; logits.len()];
            let actual = cross_entropy_with(
                kernel,
                &logits,
                Targets::I64(&classes),
                shape,
                &options,
                Some(&mut gradient),
                true,
            );
            let label = format!("{kernel:?} {options:?}");
            for row in 0..shape.rows {
                let (loss, expected_loss) = (actual.row_losses[row], expected.row_losses[row]);
                assert_eq!(
                    loss.is_nan(),
                    expected_loss.is_nan(),
                    "{label} row {row}: {loss} vs {expected_loss}"
                );
                assert_eq!(actual.row_argmax[row], expected.row_argmax[row], "{label} row {row}");
                let gradient_row = &gradient[row * 4..row * 4 + 4];
                let expected_row = &expected.gradient[row * 4..row * 4 + 4];
                for (g, e) in gradient_row.iter().zip(expected_row) {
                    assert_eq!(
                        g.is_nan(),
                        e.is_nan(),
                        "{label} row {row}: {gradient_row:?} vs {expected_row:?}"
                    );
                }
            }
            // The ignored row: loss 0 and an exactly zero gradient, despite its NaN and inf.
            assert_eq!(actual.row_losses[3], 0.0, "{label}");
            assert_eq!(actual.row_z[3], 0.0, "{label}");
            assert!(
                gradient[12..16].iter().all(|&g| g == 0.0 && g.is_sign_positive()),
                "{label}"
            );
            assert!(actual.row_losses[4].is_finite(), "{label}");
        }
    }
    // The softcap maps +inf to t: row 1 stays finite.
    let capped = CrossEntropyOptions {
        softcap: Some(10.0),
        ..CrossEntropyOptions::default()
    };
    let actual = cross_entropy(&logits, Targets::I64(&classes), shape, &capped, None, true);
    assert!(actual.row_losses[1].is_finite() && actual.row_losses[0].is_nan());
}

#[test]
fn all_rows_ignored_or_zero_weight() {
    let shape = Shape::new(3, 4);
    let logits: Vec<f32> = (0..12).map(|i| i as f32 * 0.3).collect();
    let cases = [
        (vec![-100i64, -100, -100], CrossEntropyOptions::default()),
        (
            vec![0, 1, 0],
            CrossEntropyOptions {
                weight: Some(vec![0.0, 0.0, 1.0, 1.0]),
                ..CrossEntropyOptions::default()
            },
        ),
    ];
    for (classes, options) in cases {
        for row_stats in [false, true] {
            let mut gradient = vec![f32::NAN; 12];
            let mean = cross_entropy(
                &logits,
                Targets::I64(&classes),
                shape,
                &options,
                Some(&mut gradient),
                row_stats,
            );
            assert!(mean.loss.is_nan(), "{options:?}: mean {}", mean.loss);
            // PyTorch: ignored rows 0, rows of weight 0 NaN (w_y · (−1/0)).
            let all_ignored = classes.iter().all(|&class| class == -100);
            assert!(
                gradient
                    .iter()
                    .all(|&g| if all_ignored { g == 0.0 } else { g.is_nan() }),
                "{options:?}: {gradient:?}"
            );
            let sum_options = CrossEntropyOptions {
                reduction: Reduction::Sum,
                ..options.clone()
            };
            let sum = cross_entropy(&logits, Targets::I64(&classes), shape, &sum_options, None, row_stats);
            assert_eq!(sum.loss, 0.0);
        }
    }
}

#[test]
fn plain_case_goes_to_the_fast_path() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = Shape::new(9, 300);
    let classes: Vec<u32> = (0..shape.rows).map(|_| rng.random_range(0..300)).collect();
    let logits = make_logits(&mut rng, shape, Logits::Normal, &[]);
    let mut gradient = vec![0.0f32; logits.len()];
    let options = CrossEntropyOptions::default();
    let result = cross_entropy(
        &logits,
        Targets::U32(&classes),
        shape,
        &options,
        Some(&mut gradient),
        false,
    );
    let mut fast_losses = vec![0.0f32; shape.rows];
    let mut fast_gradient = vec![0.0f32; logits.len()];
    fast::fused_rows(
        &logits,
        &classes,
        300,
        Some((&mut fast_gradient, 1.0 / 9.0)),
        &mut fast_losses,
    );
    assert_eq!(bits(&result.row_losses), bits(&fast_losses));
    assert_eq!(bits(&gradient), bits(&fast_gradient));
    assert_eq!(result.row_z, vec![0.0; 9]);
    assert!(result.row_lse.is_empty() && result.row_argmax.is_empty());
    assert_eq!(
        f64::from(result.loss),
        (fast::sum_f64(&fast_losses) / 9.0) as f32 as f64
    );
}

#[test]
fn matches_pytorch_fixtures() {
    use crate::cpu::cross_entropy::reference::tests::pytorch::cross_entropy_fixtures;
    let fixtures = cross_entropy_fixtures();
    assert!(fixtures.len() >= 80);
    let (mut loss_relative, mut gradient_absolute) = (0.0f64, 0.0f64);
    for kernel in Kernel::available() {
        for fixture in &fixtures {
            let (name, shape, options) = (&fixture.name, fixture.shape, &fixture.options);
            let mut gradient = vec![f32::NAN; fixture.logits.len()];
            let result = cross_entropy_with(
                kernel,
                &fixture.logits,
                fixture.targets(),
                shape,
                options,
                Some(&mut gradient),
                true,
            );
            let (actual, expected): (Vec<f64>, &[f64]) = if options.reduction == Reduction::None {
                (
                    result.row_losses.iter().map(|&loss| f64::from(loss)).collect(),
                    &fixture.loss,
                )
            } else {
                (vec![f64::from(result.loss)], &fixture.loss)
            };
            for (&actual, &expected) in actual.iter().zip(expected) {
                if fixture.expect_nan {
                    assert!(actual.is_nan(), "{kernel:?} {name}: {actual}");
                    continue;
                }
                let error = (actual - expected).abs();
                assert!(
                    error <= 1e-5 * expected.abs() + 1e-12,
                    "{kernel:?} {name}: {actual:e} vs PyTorch {expected:e}"
                );
                if expected.abs() > 1e-6 {
                    loss_relative = loss_relative.max(error / expected.abs());
                }
            }
            if let Some(expected) = &fixture.gradient {
                // Relative to the case's largest gradient entry (its scale: 1/D, weights, z-loss slope).
                let expected_max = expected.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
                for (index, (&g, &expected)) in gradient.iter().zip(expected).enumerate() {
                    let error = (f64::from(g) - expected).abs();
                    assert!(
                        error <= 1e-6 * expected_max.max(1e-3),
                        "{kernel:?} {name} gradient[{index}]: {g:e} vs {expected:e}"
                    );
                    gradient_absolute = gradient_absolute.max(error);
                }
            }
        }
    }
    println!("general vs PyTorch, worst: loss relative {loss_relative:e}, gradient absolute {gradient_absolute:e}");
}

#[test]
fn target_types_agree() {
    let mut rng = StdRng::seed_from_u64(17);
    let shape = Shape::new(6, 9);
    let classes: Vec<i64> = vec![0, 8, 3, -100, 4, 4];
    let logits = make_logits(&mut rng, shape, Logits::Normal, &classes);
    let options = CrossEntropyOptions {
        label_smoothing: 0.1,
        ..CrossEntropyOptions::default()
    };
    let as_i32: Vec<i32> = classes.iter().map(|&class| class as i32).collect();
    let run = |targets: Targets<'_>| {
        let mut gradient = vec![0.0f32; logits.len()];
        let result = cross_entropy(&logits, targets, shape, &options, Some(&mut gradient), true);
        (result, bits(&gradient))
    };
    assert_eq!(run(Targets::I64(&classes)), run(Targets::I32(&as_i32)));
    // u32 cannot hold -100: the same rows with ignore_index 7 (not a target here).
    let u32_options = CrossEntropyOptions {
        ignore_index: 7,
        ..options.clone()
    };
    let as_u32: Vec<u32> = classes
        .iter()
        .map(|&class| if class < 0 { 7 } else { class as u32 })
        .collect();
    let as_i64: Vec<i64> = as_u32.iter().map(|&class| i64::from(class)).collect();
    let mut first = vec![0.0f32; logits.len()];
    let mut second = vec![0.0f32; logits.len()];
    let a = cross_entropy(
        &logits,
        Targets::U32(&as_u32),
        shape,
        &u32_options,
        Some(&mut first),
        true,
    );
    let b = cross_entropy(
        &logits,
        Targets::I64(&as_i64),
        shape,
        &u32_options,
        Some(&mut second),
        true,
    );
    assert_eq!((a, bits(&first)), (b, bits(&second)));
}

#[test]
fn confident_rows_keep_relative_precision() {
    // Target 0, the others exactly 23 lower: loss = w_0·ln(1 + (C−1)·e^-23), gradient at the target ≈ −w_0·(C−1)·e^-23.
    for classes in [2usize, 7, 1000] {
        let mut logits = vec![-23.0f32; classes];
        logits[0] = 0.0;
        let others = (classes - 1) as f64 * (-23.0f64).exp();
        let options = CrossEntropyOptions {
            weight: Some(vec![0.75; classes]),
            reduction: Reduction::Sum,
            ..CrossEntropyOptions::default()
        };
        for kernel in Kernel::available() {
            let mut gradient = vec![0.0f32; classes];
            let shape = Shape::new(1, classes);
            let result = cross_entropy_with(
                kernel,
                &logits,
                Targets::I64(&[0]),
                shape,
                &options,
                Some(&mut gradient),
                true,
            );
            let expected_loss = 0.75 * others.ln_1p();
            let loss_error = (f64::from(result.loss) - expected_loss).abs() / expected_loss;
            assert!(loss_error <= 1e-6, "C={classes} {kernel:?}: loss {:e}", result.loss);
            let expected_gradient = -0.75 * others / (1.0 + others);
            let gradient_error = (f64::from(gradient[0]) - expected_gradient).abs() / expected_gradient.abs();
            assert!(
                gradient_error <= 1e-6,
                "C={classes} {kernel:?}: gradient {:e}",
                gradient[0]
            );
        }
    }
}
