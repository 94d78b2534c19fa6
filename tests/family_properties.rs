//! Properties of the BCE / KL / entropy / probability cross-entropy family:
//! gradients match finite differences of the f64 references, results match those
//! references on larger and edge-case inputs, GPU reruns are bit-identical, the
//! chunked GPU path gives the same bits as the unchunked one, and every bad input
//! comes back as its typed error.

mod common;

use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::reference::binary as binary_reference;
use xent::reference::divergence::{self as divergence_reference, RowTargets};
use xent::{
    Backend, BinaryCrossEntropyLoss, Context, ContextOptions, Entropy, Error, InputKind, KlDivLoss, KlReduction, Loss,
    ProbabilityCrossEntropyLoss, Reduction, Shape, Targets,
};

/// Binding cap of the chunking context: the 700 × 500 batches below (1.4 MB) are split.
const CHUNK_BINDING: u64 = 1 << 20;

/// A context whose bindings are capped at [`CHUNK_BINDING`] bytes (`None` only when
/// `XENT_ALLOW_NO_GPU=1` and no adapter exists, as `common::gpu`).
fn gpu_chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            common::gpu()?;
            let options = ContextOptions {
                max_binding_size: Some(CHUNK_BINDING),
                ..ContextOptions::default()
            };
            Some(Context::with_options(options).expect("a context on the adapter common::gpu found"))
        })
        .as_ref()
}

type RunFn = Box<dyn Fn(&dyn Backend, &[f32], &mut [f32]) -> xent::Result<Loss> + Sync>;
type ReferenceFn = Box<dyn Fn(&[f32]) -> (Vec<f64>, Vec<f64>) + Sync>;

/// One configured loss of the family with its inputs, its runner and its f64 reference.
struct Subject {
    name: &'static str,
    input: Vec<f32>,
    /// The reduction's divisor (N·C or N for a mean, 1 for a sum); `None` for `none`.
    divisor: Option<f64>,
    /// The loss with its gradient on a backend.
    run: RunFn,
    /// The reference's per-value losses and the gradient of their sum, at an input.
    reference: ReferenceFn,
}

impl Subject {
    fn run(&self, backend: &dyn Backend) -> (Loss, Vec<f32>) {
        self.run_on(backend, &self.input)
    }

    fn run_on(&self, backend: &dyn Backend, input: &[f32]) -> (Loss, Vec<f32>) {
        let mut gradient = vec![f32::NAN; input.len()];
        let loss = (self.run)(backend, input, &mut gradient).unwrap_or_else(|error| panic!("{}: {error}", self.name));
        (loss, gradient)
    }

    /// The reduction's factor on the gradient.
    fn factor(&self) -> f64 {
        1.0 / self.divisor.unwrap_or(1.0)
    }

    /// The reference's reduced loss (the sum for `none`) at `input`.
    fn reference_total(&self, input: &[f32]) -> f64 {
        (self.reference)(input).0.iter().sum::<f64>() / self.divisor.unwrap_or(1.0)
    }
}

fn uniform(rng: &mut StdRng, count: usize, low: f32, high: f32) -> Vec<f32> {
    (0..count).map(|_| rng.random_range(low..high)).collect()
}

/// Rows of positive probabilities (each at least `floor` before normalising).
fn probability_rows(rng: &mut StdRng, shape: Shape, floor: f32) -> Vec<f32> {
    let mut values = uniform(rng, shape.rows * shape.classes, floor, 1.0);
    for row in values.chunks_mut(shape.classes) {
        let total: f32 = row.iter().sum();
        row.iter_mut().for_each(|value| *value /= total);
    }
    values
}

fn class_vector(rng: &mut StdRng, classes: usize, low: f32, high: f32) -> Vec<f32> {
    uniform(rng, classes, low, high)
}

fn bce_logits_subject(shape: Shape, seed: u64) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed);
    let elements = shape.rows * shape.classes;
    let input = uniform(&mut rng, elements, -6.0, 6.0);
    let targets = uniform(&mut rng, elements, 0.0, 1.0);
    let weight = class_vector(&mut rng, shape.classes, 0.2, 2.0);
    let pos_weight = class_vector(&mut rng, shape.classes, 0.5, 3.0);
    let loss = BinaryCrossEntropyLoss::new()
        .weight(weight.clone())
        .pos_weight(pos_weight.clone())
        .label_smoothing(0.1);
    let run_targets = targets.clone();
    let classes = shape.classes;
    Subject {
        name: "bce with logits (weight, pos_weight, smoothing; mean)",
        input,
        divisor: Some(elements as f64),
        run: Box::new(move |backend, input, gradient| {
            loss.loss_and_grad(backend, input, &run_targets, shape, gradient)
        }),
        reference: Box::new(move |input| {
            binary_reference::bce_with_logits_f64(
                input,
                &targets,
                classes,
                Some(&weight),
                Some(&pos_weight),
                0.1f32.into(),
            )
        }),
    }
}

fn bce_probs_subject(shape: Shape, seed: u64) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed);
    let elements = shape.rows * shape.classes;
    let input = uniform(&mut rng, elements, 0.05, 0.95);
    let targets: Vec<f32> = (0..elements)
        .map(|_| f32::from(u8::from(rng.random_bool(0.4))))
        .collect();
    let weight = class_vector(&mut rng, shape.classes, 0.2, 2.0);
    let loss = BinaryCrossEntropyLoss::new()
        .input(InputKind::Probabilities)
        .reduction(Reduction::Sum)
        .weight(weight.clone())
        .label_smoothing(0.2);
    let run_targets = targets.clone();
    let classes = shape.classes;
    Subject {
        name: "bce on probabilities (weight, smoothing; sum)",
        input,
        divisor: Some(1.0),
        run: Box::new(move |backend, input, gradient| {
            loss.loss_and_grad(backend, input, &run_targets, shape, gradient)
        }),
        reference: Box::new(move |input| {
            binary_reference::bce_probs_f64(input, &targets, classes, Some(&weight), 0.2f32.into())
        }),
    }
}

fn kl_subject(shape: Shape, seed: u64, log_target: bool) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed);
    let elements = shape.rows * shape.classes;
    let input = uniform(&mut rng, elements, -5.0, 0.0);
    let mut target = probability_rows(&mut rng, shape, 0.01);
    if log_target {
        target.iter_mut().for_each(|value| *value = value.ln());
    } else {
        // Exact zeros: 0·log 0 = 0.
        target.iter_mut().step_by(7).for_each(|value| *value = 0.0);
    }
    let (reduction, divisor, name) = if log_target {
        (
            KlReduction::BatchMean,
            shape.rows as f64,
            "kl divergence (log target; batchmean)",
        )
    } else {
        (
            KlReduction::Mean,
            elements as f64,
            "kl divergence (probability target with zeros; mean)",
        )
    };
    let loss = KlDivLoss::new().reduction(reduction).log_target(log_target);
    let run_target = target.clone();
    Subject {
        name,
        input,
        divisor: Some(divisor),
        run: Box::new(move |backend, input, gradient| loss.loss_and_grad(backend, input, &run_target, shape, gradient)),
        reference: Box::new(move |input| divergence_reference::kl_div_f64(input, &target, log_target)),
    }
}

fn entropy_subject(shape: Shape, seed: u64, kind: InputKind) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed);
    let (input, reduction, divisor, name) = match kind {
        InputKind::Probabilities => (
            probability_rows(&mut rng, shape, 0.05),
            Reduction::Mean,
            shape.rows as f64,
            "entropy of probabilities (mean)",
        ),
        InputKind::Logits => (
            uniform(&mut rng, shape.rows * shape.classes, -3.0, 3.0),
            Reduction::Sum,
            1.0,
            "entropy of logits (sum)",
        ),
    };
    let entropy = Entropy::new().input(kind).reduction(reduction);
    let classes = shape.classes;
    Subject {
        name,
        input,
        divisor: Some(divisor),
        run: Box::new(move |backend, input, gradient| entropy.loss_and_grad(backend, input, shape, gradient)),
        reference: Box::new(move |input| divergence_reference::entropy_f64(input, classes, kind == InputKind::Logits)),
    }
}

fn probability_cross_entropy_subject(shape: Shape, seed: u64, class_targets: bool) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed);
    // Unnormalised rows: the loss renormalises them.
    let input = uniform(&mut rng, shape.rows * shape.classes, 0.05, 1.0);
    let soft = probability_rows(&mut rng, shape, 0.0);
    let classes: Vec<u32> = (0..shape.rows)
        .map(|_| rng.random_range(0..shape.classes as u32))
        .collect();
    let (reduction, divisor, name) = if class_targets {
        (Reduction::Sum, 1.0, "probability cross-entropy (class indices; sum)")
    } else {
        (
            Reduction::Mean,
            shape.rows as f64,
            "probability cross-entropy (soft targets; mean)",
        )
    };
    let loss = ProbabilityCrossEntropyLoss::new().reduction(reduction);
    let (run_soft, run_classes) = (soft.clone(), classes.clone());
    let width = shape.classes;
    Subject {
        name,
        input,
        divisor: Some(divisor),
        run: Box::new(move |backend, input, gradient| {
            let targets = if class_targets {
                Targets::U32(&run_classes)
            } else {
                Targets::Probabilities(&run_soft)
            };
            loss.loss_and_grad(backend, input, targets, shape, gradient)
        }),
        reference: Box::new(move |input| {
            let targets = if class_targets {
                RowTargets::Classes(&classes)
            } else {
                RowTargets::Soft(&soft)
            };
            divergence_reference::probability_cross_entropy_f64(input, targets, width)
        }),
    }
}

/// Every configured loss on `shape`.
fn subjects(shape: Shape, seed: u64) -> Vec<Subject> {
    vec![
        bce_logits_subject(shape, seed),
        bce_probs_subject(shape, seed + 1),
        kl_subject(shape, seed + 2, false),
        kl_subject(shape, seed + 3, true),
        entropy_subject(shape, seed + 4, InputKind::Probabilities),
        entropy_subject(shape, seed + 5, InputKind::Logits),
        probability_cross_entropy_subject(shape, seed + 6, false),
        probability_cross_entropy_subject(shape, seed + 7, true),
    ]
}

fn reduced(loss: &Loss, label: &str) -> f64 {
    f64::from(
        loss.value()
            .unwrap_or_else(|| panic!("{label}: expected a reduced loss")),
    )
}

fn assert_relative(actual: f64, expected: f64, tolerance: f64, label: &str) {
    let error = (actual - expected).abs();
    assert!(
        error <= tolerance * expected.abs() + 1e-12,
        "{label}: {actual:e} vs reference {expected:e} (error {error:e})"
    );
}

/// Asserts every gradient entry within `tolerance × max(|reference|, factor)`.
fn assert_gradient(actual: &[f32], expected: &[f64], factor: f64, tolerance: f64, label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}: gradient length");
    for (index, (&value, &reference)) in actual.iter().zip(expected).enumerate() {
        let error = (f64::from(value) - reference).abs();
        assert!(
            error <= tolerance * reference.abs().max(factor),
            "{label}: gradient [{index}] {value:e} vs {reference:e} (error {error:e})"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    for (backend_name, backend) in common::all_backends() {
        for subject in subjects(Shape::new(4, 6), 100) {
            let label = format!("{backend_name} {}", subject.name);
            let (_, gradient) = subject.run(backend);
            for index in 0..subject.input.len() {
                let x = subject.input[index];
                let step = 1e-4 * x.abs().max(1.0);
                let mut plus = subject.input.clone();
                let mut minus = subject.input.clone();
                plus[index] = x + step;
                minus[index] = x - step;
                let actual_step = f64::from(plus[index]) - f64::from(minus[index]);
                let difference = (subject.reference_total(&plus) - subject.reference_total(&minus)) / actual_step;
                let error = (f64::from(gradient[index]) - difference).abs();
                assert!(
                    error <= 1e-4 * difference.abs().max(subject.factor()),
                    "{label}: d/dx[{index}] = {} but the central difference is {difference:e}",
                    gradient[index]
                );
            }
        }
    }
}

/// Backends for the larger comparisons: CPU, GPU and the chunking GPU.
fn comparison_backends() -> Vec<(&'static str, &'static dyn Backend)> {
    let mut backends = common::all_backends();
    if let Some(context) = gpu_chunked() {
        backends.push(("gpu-chunked", context));
    }
    backends
}

#[test]
fn larger_batches_match_the_references() {
    // 700 × 500 × 4 bytes = 1.4 MB: two chunks or more on the 1 MiB context.
    for subject in subjects(Shape::new(700, 500), 7) {
        let (losses, reference_gradient) = (subject.reference)(&subject.input);
        let expected = losses.iter().sum::<f64>() / subject.divisor.unwrap_or(1.0);
        let expected_gradient: Vec<f64> = reference_gradient
            .iter()
            .map(|value| value * subject.factor())
            .collect();
        for (backend_name, backend) in comparison_backends() {
            let label = format!("{backend_name} {}", subject.name);
            let (loss, gradient) = subject.run(backend);
            assert_relative(reduced(&loss, &label), expected, 1e-5, &label);
            assert_gradient(&gradient, &expected_gradient, subject.factor(), 1e-6, &label);
        }
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

#[test]
fn gpu_reruns_and_chunked_runs_give_identical_bits() {
    let (Some(gpu), Some(chunked)) = (common::gpu(), gpu_chunked()) else {
        return;
    };
    for subject in subjects(Shape::new(700, 500), 21) {
        let (first_loss, first_gradient) = subject.run(gpu);
        let (second_loss, second_gradient) = subject.run(gpu);
        let (chunked_loss, chunked_gradient) = subject.run(chunked);
        assert_eq!(
            common::loss_bits(&first_loss),
            common::loss_bits(&second_loss),
            "{}: rerun loss",
            subject.name
        );
        assert_eq!(
            bits(&first_gradient),
            bits(&second_gradient),
            "{}: rerun gradient",
            subject.name
        );
        assert_eq!(
            common::loss_bits(&first_loss),
            common::loss_bits(&chunked_loss),
            "{}: chunked loss",
            subject.name
        );
        assert_eq!(
            bits(&first_gradient),
            bits(&chunked_gradient),
            "{}: chunked gradient",
            subject.name
        );
    }
}

#[test]
fn unreduced_losses_are_per_element_or_per_row_and_match_across_paths() {
    let shape = Shape::new(700, 500);
    let mut rng = StdRng::seed_from_u64(5);
    let logits = uniform(&mut rng, shape.rows * shape.classes, -5.0, 5.0);
    let targets = uniform(&mut rng, shape.rows * shape.classes, 0.0, 1.0);
    let bce = BinaryCrossEntropyLoss::new().reduction(Reduction::None);
    let entropy = Entropy::new().input(InputKind::Logits).reduction(Reduction::None);
    let (expected_bce, _) = binary_reference::bce_with_logits_f64(&logits, &targets, shape.classes, None, None, 0.0);
    let (expected_entropy, _) = divergence_reference::entropy_f64(&logits, shape.classes, true);
    let mut per_backend = Vec::new();
    for (backend_name, backend) in comparison_backends() {
        let elements = bce.loss(backend, &logits, &targets, shape).expect("bce");
        let rows = entropy.loss(backend, &logits, shape).expect("entropy");
        let (Loss::PerRow(elements), Loss::PerRow(rows)) = (elements, rows) else {
            panic!("{backend_name}: reduction none gives per-value losses");
        };
        assert_eq!((elements.len(), rows.len()), (shape.rows * shape.classes, shape.rows));
        for (index, (&value, &reference)) in elements.iter().zip(&expected_bce).enumerate() {
            assert_relative(value.into(), reference, 1e-5, &format!("{backend_name} bce [{index}]"));
        }
        for (row, (&value, &reference)) in rows.iter().zip(&expected_entropy).enumerate() {
            assert_relative(
                value.into(),
                reference,
                1e-5,
                &format!("{backend_name} entropy [{row}]"),
            );
        }
        per_backend.push((backend_name, bits(&elements), bits(&rows)));
    }
    let gpu_runs: Vec<_> = per_backend
        .iter()
        .filter(|(name, ..)| name.starts_with("gpu"))
        .collect();
    for pair in gpu_runs.windows(2) {
        assert_eq!(pair[0].1, pair[1].1, "{} vs {}: per-element bits", pair[0].0, pair[1].0);
        assert_eq!(pair[0].2, pair[1].2, "{} vs {}: per-row bits", pair[0].0, pair[1].0);
    }
}

/// Inputs at the edges of each loss's domain, against the references.
#[test]
fn edge_values_match_the_references() {
    let shape = Shape::new(4, 8);
    let extreme_logits: Vec<f32> = [-1e4, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e4]
        .iter()
        .copied()
        .cycle()
        .take(32)
        .collect();
    let binary_targets: Vec<f32> = (0..32).map(|index| [0.0, 1.0, 0.3][index % 3]).collect();
    let edge_probabilities: Vec<f32> = [0.0, 1e-30, 1e-7, 0.5, 1.0 - 6e-8, 1.0, 0.25, 0.999]
        .iter()
        .copied()
        .cycle()
        .take(32)
        .collect();
    // Confident rows (entropy ~1e-12), rows with -inf-like gaps, and equal logits.
    let mut entropy_logits = vec![0.0f32; 32];
    entropy_logits[..8].copy_from_slice(&[30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    entropy_logits[8..16].copy_from_slice(&[1e4, 1e4 - 5.0, 1e4 - 90.0, 1e4, 1e4 - 1.0, 1e4, 1e4, 1e4]);
    // Rows with zeros (clipped to ε) and a dominant entry (clipped to 1 − ε).
    let mut pce_input = vec![0.3f32; 32];
    pce_input[..8].copy_from_slice(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    pce_input[8..16].copy_from_slice(&[1e-9, 0.5, 0.5, 0.0, 2.0, 3.0, 1e-3, 0.1]);
    let pce_classes: Vec<u32> = vec![2, 0, 5, 7];
    let soft: Vec<f32> = (0..32).map(|index| if index % 3 == 0 { 0.5 } else { 0.125 }).collect();

    for (backend_name, backend) in common::all_backends() {
        let label = |what: &str| format!("{backend_name} {what}");
        let check = |loss: Loss, gradient: &[f32], (losses, grad): (Vec<f64>, Vec<f64>), what: &str| {
            let Loss::PerRow(values) = loss else {
                panic!("{}: per-value losses", label(what))
            };
            for (index, (&value, &reference)) in values.iter().zip(&losses).enumerate() {
                assert_relative(value.into(), reference, 1e-5, &format!("{} [{index}]", label(what)));
            }
            assert_gradient(gradient, &grad, 1.0, 1e-6, &label(what));
        };
        let none = Reduction::None;
        let mut gradient = vec![0.0f32; 32];
        let loss = BinaryCrossEntropyLoss::new().reduction(none).pos_weight(vec![2.0; 8]);
        let value = loss.loss_and_grad(backend, &extreme_logits, &binary_targets, shape, &mut gradient);
        let pos_weight = [2.0f32; 8];
        let expected =
            binary_reference::bce_with_logits_f64(&extreme_logits, &binary_targets, 8, None, Some(&pos_weight), 0.0);
        check(value.expect("bce logits"), &gradient, expected, "bce extreme logits");

        let loss = BinaryCrossEntropyLoss::new()
            .input(InputKind::Probabilities)
            .reduction(none);
        let value = loss.loss_and_grad(backend, &edge_probabilities, &binary_targets, shape, &mut gradient);
        let expected = binary_reference::bce_probs_f64(&edge_probabilities, &binary_targets, 8, None, 0.0);
        check(
            value.expect("bce probabilities"),
            &gradient,
            expected,
            "bce edge probabilities",
        );

        let entropy = Entropy::new().input(InputKind::Logits).reduction(none);
        let value = entropy.loss_and_grad(backend, &entropy_logits, shape, &mut gradient);
        let expected = divergence_reference::entropy_f64(&entropy_logits, 8, true);
        check(
            value.expect("entropy"),
            &gradient,
            expected,
            "entropy of confident and offset logits",
        );

        for (targets, reference_targets, what) in [
            (
                Targets::U32(&pce_classes),
                RowTargets::Classes(&pce_classes),
                "probability cross-entropy, clipped, classes",
            ),
            (
                Targets::Probabilities(&soft),
                RowTargets::Soft(&soft),
                "probability cross-entropy, clipped, soft",
            ),
        ] {
            let loss = ProbabilityCrossEntropyLoss::new().reduction(none);
            let value = loss.loss_and_grad(backend, &pce_input, targets, shape, &mut gradient);
            let expected = divergence_reference::probability_cross_entropy_f64(&pce_input, reference_targets, 8);
            check(value.expect("probability cross-entropy"), &gradient, expected, what);
        }
    }
}

#[test]
fn nan_inputs_propagate() {
    let shape = Shape::new(2, 3);
    let logits = [0.5, f32::NAN, 1.0, 0.1, 0.2, 0.3];
    let targets = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    for (backend_name, backend) in common::all_backends() {
        let bce = BinaryCrossEntropyLoss::new()
            .reduction(Reduction::None)
            .loss(backend, &logits, &targets, shape);
        let Ok(Loss::PerRow(values)) = bce else {
            panic!("{backend_name}: bce")
        };
        assert!(
            values[1].is_nan() && values[0].is_finite(),
            "{backend_name}: {values:?}"
        );
        let entropy = Entropy::new()
            .input(InputKind::Logits)
            .reduction(Reduction::None)
            .loss(backend, &logits, shape);
        let Ok(Loss::PerRow(rows)) = entropy else {
            panic!("{backend_name}: entropy")
        };
        assert!(rows[0].is_nan() && rows[1].is_finite(), "{backend_name}: {rows:?}");
    }
}

fn expect_error(result: xent::Result<Loss>, label: &str) -> Error {
    match result {
        Err(error) => error,
        Ok(loss) => panic!("{label}: expected an error, got {loss:?}"),
    }
}

fn assert_invalid_option(error: Error, needle: &str, label: &str) {
    match error {
        Error::InvalidOption(message) => assert!(message.contains(needle), "{label}: {message}"),
        other => panic!("{label}: expected InvalidOption({needle}…), got {other:?}"),
    }
}

#[test]
fn bad_binary_inputs_are_typed_errors() {
    let shape = Shape::new(2, 3);
    let input = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
    let targets = [0.0f32, 1.0, 0.0, 1.0, 0.0, 1.0];
    for (name, backend) in common::all_backends() {
        let bce = BinaryCrossEntropyLoss::new();
        let mut gradient = [7.0f32; 5];
        let error = expect_error(bce.loss_and_grad(backend, &input, &targets, shape, &mut gradient), name);
        assert_eq!(error, Error::GradientLength { actual: 5, expected: 6 });
        assert_eq!(gradient, [7.0; 5], "{name}: nothing written on error");
        let error = expect_error(bce.loss(backend, &input[..5], &targets, shape), name);
        assert!(
            matches!(
                error,
                Error::LogitsLength {
                    actual: 5,
                    expected: 6,
                    ..
                }
            ),
            "{name}: {error:?}"
        );
        let error = expect_error(bce.loss(backend, &input, &targets[..4], shape), name);
        assert_eq!(error, Error::ProbabilitiesLength { actual: 4, expected: 6 });
        let error = expect_error(bce.loss(backend, &[0.0f32; 0], &[], Shape::new(0, 3)), name);
        assert_eq!(error, Error::EmptyShape { rows: 0, classes: 3 });
        let error = expect_error(
            bce.loss(backend, &input, &targets, Shape::nd(1, 3, &[2]).expect("shape")),
            name,
        );
        assert_invalid_option(error, "N-d layout", name);

        let option_cases: Vec<(BinaryCrossEntropyLoss, &str)> = vec![
            (BinaryCrossEntropyLoss::new().label_smoothing(1.5), "label_smoothing"),
            (
                BinaryCrossEntropyLoss::new().label_smoothing(f32::NAN),
                "label_smoothing",
            ),
            (
                BinaryCrossEntropyLoss::new().weight(vec![1.0; 2]),
                "weight has 2 entries",
            ),
            (BinaryCrossEntropyLoss::new().weight(vec![1.0, -1.0, 1.0]), "weight[1]"),
            (
                BinaryCrossEntropyLoss::new().weight(vec![1.0, 1.0, f32::INFINITY]),
                "weight[2]",
            ),
            (
                BinaryCrossEntropyLoss::new().pos_weight(vec![1.0; 4]),
                "pos_weight has 4 entries",
            ),
            (
                BinaryCrossEntropyLoss::new().pos_weight(vec![1.0, f32::NAN, 1.0]),
                "pos_weight[1]",
            ),
            (
                BinaryCrossEntropyLoss::new()
                    .input(InputKind::Probabilities)
                    .pos_weight(vec![1.0; 3]),
                "pos_weight applies to logits only",
            ),
        ];
        for (loss, needle) in option_cases {
            assert_invalid_option(
                expect_error(loss.loss(backend, &input, &targets, shape), name),
                needle,
                name,
            );
        }
        let probabilities = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
        for bad in [1.5f32, -0.1, f32::NAN] {
            let mut values = input;
            values[4] = bad;
            let error = expect_error(probabilities.loss(backend, &values, &targets, shape), name);
            assert_invalid_option(error, "input[4]", name);
        }
    }
}

#[test]
fn bad_divergence_inputs_are_typed_errors() {
    let shape = Shape::new(2, 3);
    let input = [0.1f32, 0.2, 0.7, 0.4, 0.5, 0.1];
    for (name, backend) in common::all_backends() {
        let kl = KlDivLoss::new();
        let error = expect_error(kl.loss(backend, &input, &input[..5], shape), name);
        assert_eq!(error, Error::ProbabilitiesLength { actual: 5, expected: 6 });
        let error = expect_error(kl.loss(backend, &input[..4], &input, shape), name);
        assert!(
            matches!(error, Error::LogitsLength { actual: 4, .. }),
            "{name}: {error:?}"
        );
        let error = expect_error(kl.loss_and_grad(backend, &input, &input, shape, &mut [0.0; 7]), name);
        assert_eq!(error, Error::GradientLength { actual: 7, expected: 6 });
        let error = expect_error(kl.loss(backend, &input, &input, Shape::new(2, 0)), name);
        assert_eq!(error, Error::EmptyShape { rows: 2, classes: 0 });

        let entropy = Entropy::new();
        let error = expect_error(entropy.loss(backend, &input, Shape::new(3, 3)), name);
        assert!(
            matches!(
                error,
                Error::LogitsLength {
                    actual: 6,
                    expected: 9,
                    ..
                }
            ),
            "{name}: {error:?}"
        );
        let error = expect_error(entropy.loss_and_grad(backend, &input, shape, &mut [0.0; 2]), name);
        assert_eq!(error, Error::GradientLength { actual: 2, expected: 6 });

        let pce = ProbabilityCrossEntropyLoss::new();
        let error = expect_error(pce.loss(backend, &input, &[0i64][..], shape), name);
        assert_eq!(error, Error::TargetsLength { actual: 1, rows: 2 });
        let error = expect_error(pce.loss(backend, &input, &[0i64, 3][..], shape), name);
        assert_eq!(
            error,
            Error::TargetOutOfRange {
                row: 1,
                value: 3,
                classes: 3
            }
        );
        let error = expect_error(pce.loss(backend, &input, &[-1i32, 0][..], shape), name);
        assert_eq!(
            error,
            Error::TargetOutOfRange {
                row: 0,
                value: -1,
                classes: 3
            }
        );
        let error = expect_error(
            pce.loss(backend, &input, Targets::Probabilities(&input[..3]), shape),
            name,
        );
        assert_eq!(error, Error::ProbabilitiesLength { actual: 3, expected: 6 });
        let error = expect_error(
            pce.loss_and_grad(backend, &input, &[0u32, 1][..], shape, &mut [0.0; 1]),
            name,
        );
        assert_eq!(error, Error::GradientLength { actual: 1, expected: 6 });
    }
}

#[test]
fn rows_wider_than_a_binding_are_too_large_on_the_gpu() {
    let Some(chunked) = gpu_chunked() else {
        return;
    };
    // One row of 300 000 classes needs 1.2 MB, above the 1 MiB binding cap.
    let shape = Shape::new(1, 300_000);
    let input = vec![1.0f32 / 300_000.0; shape.classes];
    let error = expect_error(Entropy::new().loss(chunked, &input, shape), "entropy");
    assert!(matches!(error, Error::TooLarge(_)), "{error:?}");
    // Elementwise losses have no such limit: the same batch is cut into tiles.
    let value = KlDivLoss::new()
        .reduction(KlReduction::Sum)
        .loss(chunked, &input, &input, shape);
    assert!(value.expect("KL of a wide row").value().is_some_and(f32::is_finite));
}

/// `p·(log p − input)` where the input is close to `log p`: the GPU keeps about
/// 1.3e-8 / |log p − input| relative (log p − input is formed without cancelling;
/// shaders/binary_cross_entropy.wgsl), the CPU works in f64.
#[test]
fn kl_keeps_its_digits_when_the_input_is_close_to_log_p() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = Shape::new(64, 64);
    let target = uniform(&mut rng, shape.rows * shape.classes, 1e-3, 1.0);
    for (gap, tolerance) in [(1e-1, 1e-6), (1e-2, 1e-5)] {
        let input: Vec<f32> = target
            .iter()
            .enumerate()
            .map(|(index, &p)| (f64::from(p).ln() + if index % 2 == 0 { gap } else { -gap }) as f32)
            .collect();
        let (expected, _) = divergence_reference::kl_div_f64(&input, &target, false);
        for (backend_name, backend) in common::all_backends() {
            let loss = KlDivLoss::new()
                .reduction(KlReduction::None)
                .loss(backend, &input, &target, shape);
            let Ok(Loss::PerRow(values)) = loss else {
                panic!("{backend_name}: KL")
            };
            for (index, (&value, &reference)) in values.iter().zip(&expected).enumerate() {
                let label = format!("{backend_name} gap {gap:e} [{index}]");
                assert_relative(value.into(), reference, tolerance, &label);
            }
        }
    }
}

/// 4.2 M rows of 2 classes share workgroups 64 rows at a time: 65 625 workgroups,
/// beyond the 65 535 of one dispatch dimension, so the grid is two-dimensional.
#[test]
fn more_than_65535_workgroups_cover_every_row_once() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let shape = Shape::new(4_200_000, 2);
    let input: Vec<f32> = (0..shape.rows)
        .flat_map(|row| {
            let p = (row % 1000) as f32 / 1000.0;
            [p, 1.0 - p]
        })
        .collect();
    let entropy = Entropy::new().reduction(Reduction::None);
    let (Ok(Loss::PerRow(gpu_rows)), Ok(Loss::PerRow(cpu_rows))) = (
        entropy.loss(gpu, &input, shape),
        entropy.loss(&xent::Cpu, &input, shape),
    ) else {
        panic!("per-row entropies");
    };
    assert_eq!(gpu_rows.len(), shape.rows);
    let mismatch = gpu_rows.iter().zip(&cpu_rows).position(|(&gpu_value, &cpu_value)| {
        (f64::from(gpu_value) - f64::from(cpu_value)).abs() > 1e-5 * f64::from(cpu_value).abs() + 1e-12
    });
    if let Some(row) = mismatch {
        panic!("row {row}: gpu {} vs cpu {}", gpu_rows[row], cpu_rows[row]);
    }
}

/// The family's buffers are the context's workspace's: repeated calls of a shape
/// allocate nothing more (the workspace holds the same bytes) and give the same
/// bits; a smaller call after a larger one reads none of the larger call's data
/// (it gives the bits a context that never saw the larger call gives), and
/// `release_buffers` frees them too.
#[test]
fn family_calls_reuse_the_workspace() {
    let Some(fresh) = common::gpu() else {
        return;
    };
    let Some(context) = common::open(xent::ContextOptions::default()) else {
        return;
    };
    let large = subjects(Shape::new(300, 200), 31);
    let small = subjects(Shape::new(50, 30), 32);
    for (large, small) in large.iter().zip(&small) {
        let (first_loss, first_gradient) = large.run(&context);
        let held = context.workspace_bytes();
        assert!(held > 0, "{}: the call's buffers are kept", large.name);
        for _ in 0..3 {
            let (loss, gradient) = large.run(&context);
            assert_eq!(
                common::loss_bits(&loss),
                common::loss_bits(&first_loss),
                "{}: rerun loss",
                large.name
            );
            assert_eq!(bits(&gradient), bits(&first_gradient), "{}: rerun gradient", large.name);
            assert_eq!(
                context.workspace_bytes(),
                held,
                "{}: nothing allocated again",
                large.name
            );
        }
        let (small_loss, small_gradient) = small.run(&context);
        let (fresh_loss, fresh_gradient) = small.run(fresh);
        assert_eq!(
            common::loss_bits(&small_loss),
            common::loss_bits(&fresh_loss),
            "{}: after a larger call",
            small.name
        );
        assert_eq!(
            bits(&small_gradient),
            bits(&fresh_gradient),
            "{}: after a larger call",
            small.name
        );
        assert!(context.workspace_bytes() <= held, "{}: a smaller call fits", small.name);
    }
    context.release_buffers();
    assert_eq!(context.workspace_bytes(), 0, "released");
    let (loss, _) = large[0].run(&context);
    assert_relative(
        reduced(&loss, large[0].name),
        large[0].reference_total(&large[0].input),
        1e-5,
        large[0].name,
    );
}
