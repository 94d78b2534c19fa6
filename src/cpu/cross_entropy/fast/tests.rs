use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::cpu::cross_entropy::reference::{gradient_f64, row_losses_f64};

const ROWS: [usize; 3] = [1, 3, 64];
const CLASSES: [usize; 8] = [1, 2, 7, 255, 256, 257, 1000, 32000];

/// The kinds of logits every shape is tested with.
#[derive(Clone, Copy, Debug)]
enum Logits {
    /// Standard normal.
    Normal,
    /// Standard normal times 1000 (most exponentials underflow).
    Wide,
    /// Standard normal plus 1e4 (tests the offset cancellation).
    Offset,
    /// Every logit of a row equal (per-row value random).
    AllEqual,
    /// Target logit 0, the others about -23: loss ~ (C - 1) * 1e-10.
    Confident,
}

const KINDS: [Logits; 5] = [
    Logits::Normal,
    Logits::Wide,
    Logits::Offset,
    Logits::AllEqual,
    Logits::Confident,
];

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

fn make_case(rng: &mut StdRng, rows: usize, classes: usize, kind: Logits) -> (Vec<f32>, Vec<u32>) {
    let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes as u32)).collect();
    let mut logits = Vec::with_capacity(rows * classes);
    for &target in &targets {
        let row_value = normal(rng);
        for c in 0..classes {
            logits.push(match kind {
                Logits::Normal => normal(rng),
                Logits::Wide => 1000.0 * normal(rng),
                Logits::Offset => 1e4 + normal(rng),
                Logits::AllEqual => row_value,
                Logits::Confident if c == target as usize => 0.0,
                Logits::Confident => -23.0 + 0.1 * normal(rng),
            });
        }
    }
    (logits, targets)
}

/// Runs [`fused_rows_with`] with a gradient; returns `(losses, gradient)`.
fn run_with_gradient(
    kernel: Kernel,
    logits: &[f32],
    targets: &[u32],
    classes: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut losses = vec![f32::NAN; targets.len()];
    let mut gradient = vec![f32::NAN; logits.len()];
    let host = HostLogits::from_f32(logits, Some(&mut gradient));
    fused_rows_with(kernel, host, targets, classes, scale, &mut losses);
    // In place: the same bits.
    let mut in_place = logits.to_vec();
    let mut in_place_losses = vec![f32::NAN; targets.len()];
    let host = HostLogits::InPlace(LogitsMut::F32(&mut in_place));
    fused_rows_with(kernel, host, targets, classes, scale, &mut in_place_losses);
    assert_eq!(bits(&in_place_losses), bits(&losses), "{kernel:?}: in-place losses");
    assert_eq!(bits(&in_place), bits(&gradient), "{kernel:?}: in-place gradient");
    (losses, gradient)
}

/// Runs [`fused_rows_with`] without a gradient; returns the losses.
fn run_loss_only(kernel: Kernel, logits: &[f32], targets: &[u32], classes: usize) -> Vec<f32> {
    let mut losses = vec![f32::NAN; targets.len()];
    fused_rows_with(
        kernel,
        HostLogits::from_f32(logits, None),
        targets,
        classes,
        1.0,
        &mut losses,
    );
    losses
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Worst errors seen, for the report printed by `--nocapture`.
#[derive(Default, Debug)]
struct Worst {
    /// Relative loss error where the reference loss exceeds 1e-20.
    loss_relative: f64,
    /// Absolute loss error where the reference loss is at most 1e-20.
    tiny_loss_absolute: f64,
    /// `|g - g_ref| / scale`.
    gradient_absolute_over_scale: f64,
    /// `|sum_c g_c| / scale`.
    gradient_row_sum_over_scale: f64,
}

struct Case<'a> {
    label: String,
    logits: &'a [f32],
    targets: &'a [u32],
    classes: usize,
    scale: f32,
}

/// Checks every available kernel against the f64 reference on one case.
fn check_case(case: &Case, worst: &mut Worst) {
    let Case {
        label,
        logits,
        targets,
        classes,
        scale,
    } = case;
    let (classes, scale) = (*classes, *scale);
    let expected_losses = row_losses_f64(logits, targets, classes);
    let expected_gradient = gradient_f64(logits, targets, classes, f64::from(scale));
    for kernel in Kernel::available() {
        let label = format!("{label} {kernel:?}");
        let (losses, gradient) = run_with_gradient(kernel, logits, targets, classes, scale);
        let losses_only = run_loss_only(kernel, logits, targets, classes);
        assert_eq!(
            bits(&losses),
            bits(&losses_only),
            "{label}: loss-only and fused losses differ"
        );
        check_losses(&label, &losses, &expected_losses, worst);
        check_gradient(&label, &gradient, &expected_gradient, classes, f64::from(scale), worst);
    }
}

fn check_losses(label: &str, losses: &[f32], expected_losses: &[f64], worst: &mut Worst) {
    for (r, (&loss, &expected)) in losses.iter().zip(expected_losses).enumerate() {
        let error = (f64::from(loss) - expected).abs();
        assert!(
            error <= 1e-5 * expected.abs() + 1e-30,
            "{label} row {r}: loss {loss:e}, expected {expected:e}"
        );
        if expected.abs() > 1e-20 {
            worst.loss_relative = worst.loss_relative.max(error / expected.abs());
        } else {
            worst.tiny_loss_absolute = worst.tiny_loss_absolute.max(error);
        }
    }
}

fn check_gradient(label: &str, gradient: &[f32], expected: &[f64], classes: usize, scale: f64, worst: &mut Worst) {
    let rows = gradient.chunks_exact(classes).zip(expected.chunks_exact(classes));
    for (r, (row, expected_row)) in rows.enumerate() {
        let mut row_sum = 0.0;
        for (c, (&g, &expected)) in row.iter().zip(expected_row).enumerate() {
            let error = (f64::from(g) - expected).abs();
            assert!(
                error <= 1e-6 * scale,
                "{label} row {r} class {c}: gradient {g:e}, expected {expected:e}"
            );
            worst.gradient_absolute_over_scale = worst.gradient_absolute_over_scale.max(error / scale);
            row_sum += f64::from(g);
        }
        assert!(
            row_sum.abs() <= 1e-5 * scale,
            "{label} row {r}: gradient sums to {row_sum:e}"
        );
        worst.gradient_row_sum_over_scale = worst.gradient_row_sum_over_scale.max(row_sum.abs() / scale);
    }
}

#[test]
fn matches_reference_over_shapes_and_kinds() {
    let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
    let mut worst = Worst::default();
    for &classes in &CLASSES {
        for &rows in &ROWS {
            for kind in KINDS {
                let (logits, targets) = make_case(&mut rng, rows, classes, kind);
                let case = Case {
                    label: format!("{rows}x{classes} {kind:?}"),
                    logits: &logits,
                    targets: &targets,
                    classes,
                    scale: if rows == 3 { 0.25 } else { 1.0 / rows as f32 },
                };
                check_case(&case, &mut worst);
            }
        }
    }
    println!("worst errors: {worst:?}");
}

#[test]
fn confident_rows_keep_relative_precision() {
    // Target is the single max, the others exactly 23 lower: loss = ln(1 + (C-1) e^-23).
    for classes in [2usize, 7, 1000] {
        let target = classes / 2;
        let mut logits = vec![-23.0f32; classes];
        logits[target] = 0.0;
        let others = (classes - 1) as f64 * (-23.0f64).exp();
        let expected_loss = others.ln_1p();
        // The target's gradient is p_t - 1 = -others / (1 + others).
        let expected_target_gradient = -others / (1.0 + others);
        for kernel in Kernel::available() {
            let (losses, gradient) = run_with_gradient(kernel, &logits, &[target as u32], classes, 1.0);
            let loss_error = (f64::from(losses[0]) - expected_loss).abs() / expected_loss;
            assert!(
                loss_error <= 1e-5,
                "C={classes} {kernel:?}: loss {:e} vs {expected_loss:e}",
                losses[0]
            );
            let target_gradient = f64::from(gradient[target]);
            let gradient_error = (target_gradient - expected_target_gradient).abs() / others;
            assert!(
                gradient_error <= 1e-5,
                "C={classes} {kernel:?}: target gradient {target_gradient:e}"
            );
        }
    }
}

#[test]
fn nan_and_inf_propagate() {
    let classes = 37;
    let mut rng = StdRng::seed_from_u64(7);
    let (mut logits, targets) = make_case(&mut rng, 4, classes, Logits::Normal);
    logits[3] = f32::NAN; // row 0
    logits[classes + 20] = f32::INFINITY; // row 1
    logits[2 * classes..3 * classes].fill(f32::NEG_INFINITY); // row 2
    let expected = row_losses_f64(&logits, &targets, classes);
    for kernel in Kernel::available() {
        let (losses, gradient) = run_with_gradient(kernel, &logits, &targets, classes, 1.0);
        for row in 0..3 {
            assert!(losses[row].is_nan(), "{kernel:?} row {row}: loss {}", losses[row]);
            assert!(expected[row].is_nan(), "reference row {row}: {}", expected[row]);
            let gradient_row = &gradient[row * classes..(row + 1) * classes];
            assert!(
                gradient_row.iter().all(|g| g.is_nan()),
                "{kernel:?} row {row}: gradient not NaN"
            );
        }
        assert!(losses[3].is_finite());
        assert!(gradient[3 * classes..].iter().all(|g| g.is_finite()));

        // A NaN in the 16-lane body of one row and in the tail of the other.
        let mut logits = vec![0.5f32; 2 * 40];
        logits[5] = f32::NAN;
        logits[40 + 38] = f32::NAN;
        let losses = run_loss_only(kernel, &logits, &[0, 1], 40);
        assert!(losses.iter().all(|l| l.is_nan()), "{kernel:?}: {losses:?}");
    }
}

#[test]
fn multi_task_split_matches_single_row_calls() {
    // 40 rows of 4000 classes: several rayon tasks of 17 rows each.
    let (rows, classes) = (40, 4000);
    let mut rng = StdRng::seed_from_u64(11);
    let (logits, targets) = make_case(&mut rng, rows, classes, Logits::Normal);
    let mut losses = vec![0.0f32; rows];
    let mut gradient = vec![0.0f32; rows * classes];
    fused_rows(&logits, &targets, classes, Some((&mut gradient, 0.5)), &mut losses);
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let mut loss = [0.0f32];
        let mut row_gradient = vec![0.0f32; classes];
        fused_rows(row, &targets[r..=r], classes, Some((&mut row_gradient, 0.5)), &mut loss);
        assert_eq!(loss[0].to_bits(), losses[r].to_bits());
        assert_eq!(bits(&row_gradient), bits(&gradient[r * classes..(r + 1) * classes]));
    }
}

#[test]
fn empty_inputs_and_sum() {
    let mut losses: [f32; 0] = [];
    fused_rows(&[], &[], 10, Some((&mut [], 1.0)), &mut losses);
    fused_rows(&[], &[], 10, None, &mut losses);
    assert_eq!(sum_f64(&[]), 0.0);
    assert_eq!(sum_f64(&[1.5, 2.25, -0.75]), 3.0);
    // Summed in f64: 1 + 1e-8 (below half an f32 ulp of 1) is not lost.
    assert_eq!(sum_f64(&[1.0, 1e-8]), 1.0 + f64::from(1e-8f32));
}

/// The AVX2 and AVX-512 builds add the softmax denominator's terms in explicit
/// vector instructions of different widths (`add_rest_terms`) but in the same
/// order per lane, with the same fused exponential: the same bits, loss and
/// gradient, including rows with ties at the maximum (masked terms) and NaN.
#[test]
fn vector_builds_give_the_same_bits() {
    let builds: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|&kernel| kernel != Kernel::Portable)
        .collect();
    let Some((&first, others)) = builds.split_first() else {
        return;
    };
    assert!(
        !others.is_empty() || Kernel::detected() != Kernel::Avx512,
        "an AVX-512 CPU must offer the AVX2 build too"
    );
    let mut rng = StdRng::seed_from_u64(0xb175);
    for &classes in &[17usize, 256, 1000, 4099] {
        for kind in KINDS {
            let (logits, targets) = make_case(&mut rng, 5, classes, kind);
            let (losses, gradient) = run_with_gradient(first, &logits, &targets, classes, 0.2);
            for &other in others {
                let (other_losses, other_gradient) = run_with_gradient(other, &logits, &targets, classes, 0.2);
                assert_eq!(
                    bits(&losses),
                    bits(&other_losses),
                    "C={classes} {kind:?}: losses differ"
                );
                assert_eq!(
                    bits(&gradient),
                    bits(&other_gradient),
                    "C={classes} {kind:?}: gradients differ"
                );
            }
        }
    }
}
