//! The backends agree on non-finite and extreme inputs to the rest of the
//! family, as `nonfinite_agreement.rs` checks for the cross-entropy: random
//! batches of BCE (logits and probabilities, with class weights and
//! `pos_weight` holding zeros, label smoothing), KL divergence (probability and
//! log targets), entropy (of probabilities and of logits) and the probability
//! cross-entropy (soft and class targets), whose inputs and targets hold NaN,
//! ±inf, ±1e30, 0, 1 and exp's overflow and underflow edges (none, a few, a
//! fifth or all of them). Each GPU context (default, workgroup-memory
//! reductions, chunked bindings) must give the CPU's NaN and infinities at the
//! same places in the per-element (or per-row) losses and the gradient, and
//! its finite values within f32 rounding.
//!
//! Left out on purpose (documented in README.md): subnormal probabilities,
//! which GPUs flush to zero, and probabilities at the probability
//! cross-entropy's clip bounds, where the two backends' renormalisation rounds
//! to either side of the bound. Fixed seed; `FAMILY_NONFINITE_SEED` and
//! `FAMILY_NONFINITE_CASES` override it.

mod common;

use common::family::{KINDS, Kind};
use common::nonfinite::{agrees, assert_no_disagreements, setting};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::{
    Backend, BinaryCrossEntropyLoss, Entropy, InputKind, KlDivLoss, KlReduction, Loss, ProbabilityCrossEntropyLoss,
    Reduction, Shape, Targets,
};

const SEED: u64 = 0x0fa3_1e55;
const CASES: usize = 400;

/// Values a fraction of the inputs and targets take.
const SPECIALS: [f32; 10] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e30,
    -1e30,
    0.0,
    1.0,
    88.0,
    -104.0,
    -1.0,
];
/// [`SPECIALS`] without the negative ones, for the probability cross-entropy:
/// it sums each row's probabilities (to renormalise them) and its targets'
/// terms (for the gradient), which `±1e30` would cancel to a value that depends
/// on the order of the additions.
const NON_NEGATIVE_SPECIALS: [f32; 6] = [f32::NAN, f32::INFINITY, 1e30, 0.0, 1.0, 88.0];
/// [`SPECIALS`] without the infinities, for BCE's targets: with an infinite
/// target, PyTorch's own loss (±inf or NaN) and gradient (NaN) disagree with its
/// formula's limits, and a GPU compiler may reorder `1 + (π − 1)·y` into
/// `1 + π·y − y` (lavapipe's does), which is NaN there; README.md says so.
const FINITE_SPECIALS: [f32; 8] = [f32::NAN, 1e30, -1e30, 0.0, 1.0, 88.0, -104.0, -1.0];
/// BCE's targets on probabilities: NaN and the bounds. A target far outside
/// [0, 1] multiplies `ln p − ln(1 − p)`, which cancels near p = ½, so its loss
/// carries the logarithms' rounding times 1e30 on either backend.
const TARGET_BOUNDS: [f32; 3] = [f32::NAN, 0.0, 1.0];
/// Row widths: one class, odd and aligned widths, one past the 256-wide workgroup.
const CLASSES: [usize; 8] = [1, 2, 3, 7, 50, 257, 513, 1000];

#[derive(Debug)]
struct Case {
    kind: Kind,
    shape: Shape,
    input: Vec<f32>,
    /// Per-element targets (BCE, KL, soft probability cross-entropy).
    targets: Vec<f32>,
    /// Class targets (probability cross-entropy on classes).
    classes: Vec<u32>,
    /// BCE's class weights, `pos_weight` and label smoothing.
    weight: Option<Vec<f32>>,
    pos_weight: Option<Vec<f32>>,
    smoothing: f32,
}

/// `count` values in `low..high`, a fraction `rate` of them replaced by `specials`.
fn values_with(rng: &mut StdRng, specials: &[f32], count: usize, rate: f64, low: f32, high: f32) -> Vec<f32> {
    (0..count)
        .map(|_| match rng.random_bool(rate) {
            true => specials[rng.random_range(0..specials.len())],
            false => rng.random_range(low..high),
        })
        .collect()
}

/// [`values_with`] [`SPECIALS`].
fn values(rng: &mut StdRng, count: usize, rate: f64, low: f32, high: f32) -> Vec<f32> {
    values_with(rng, &SPECIALS, count, rate, low, high)
}

impl Case {
    fn random(rng: &mut StdRng) -> Self {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let classes = CLASSES[rng.random_range(0..CLASSES.len())];
        let rows = rng.random_range(1..5);
        let elements = rows * classes;
        let rate = [0.0, 0.02, 0.2, 1.0][rng.random_range(0..4)];
        let target_rate = [0.0, 0.02, 0.2][rng.random_range(0..3)];
        let (input, targets) = match kind {
            Kind::BceLogits => (
                values(rng, elements, rate, -8.0, 8.0),
                values_with(rng, &FINITE_SPECIALS, elements, target_rate, 0.0, 1.0),
            ),
            Kind::BceProbabilities => (
                values(rng, elements, rate, 0.0, 1.0),
                values_with(rng, &TARGET_BOUNDS, elements, target_rate, 0.0, 1.0),
            ),
            Kind::EntropyLogits => (values(rng, elements, rate, -8.0, 8.0), Vec::new()),
            Kind::EntropyProbabilities => (values(rng, elements, rate, 0.0, 1.0), Vec::new()),
            Kind::PceSoft | Kind::PceClasses => (
                values_with(rng, &NON_NEGATIVE_SPECIALS, elements, rate, 0.0, 1.0),
                values_with(rng, &NON_NEGATIVE_SPECIALS, elements, target_rate, 0.0, 1.0),
            ),
            Kind::Kl => (
                values(rng, elements, rate, -6.0, 0.0),
                values(rng, elements, target_rate, 0.0, 1.0),
            ),
            Kind::KlLogTarget => (
                values(rng, elements, rate, -6.0, 0.0),
                values(rng, elements, target_rate, -6.0, 0.0),
            ),
        };
        let is_bce = matches!(kind, Kind::BceLogits | Kind::BceProbabilities);
        let weight = (is_bce && rng.random_bool(0.4)).then(|| values(rng, classes, 0.1, 0.0, 2.0));
        let pos_weight =
            (matches!(kind, Kind::BceLogits) && rng.random_bool(0.4)).then(|| values(rng, classes, 0.1, 0.0, 3.0));
        let smoothing = if is_bce && rng.random_bool(0.3) { 0.1 } else { 0.0 };
        let class_targets = (0..rows).map(|_| rng.random_range(0..classes as u32)).collect();
        Self {
            kind,
            shape: Shape::new(rows, classes),
            input,
            targets,
            classes: class_targets,
            weight,
            pos_weight,
            smoothing,
        }
    }

    /// The losses (reduction `none`) and gradient on `backend`, or the error.
    fn run(&self, backend: &dyn Backend) -> Result<(Vec<f32>, Vec<f32>), xent::Error> {
        let mut gradient = vec![0.0f32; self.input.len()];
        let (shape, input, targets) = (self.shape, &self.input[..], &self.targets[..]);
        let grad = &mut gradient[..];
        let loss = match self.kind {
            Kind::BceLogits | Kind::BceProbabilities => {
                let mut loss = BinaryCrossEntropyLoss::new()
                    .reduction(Reduction::None)
                    .label_smoothing(self.smoothing);
                if matches!(self.kind, Kind::BceProbabilities) {
                    loss = loss.input(InputKind::Probabilities);
                }
                if let Some(weight) = &self.weight {
                    loss = loss.weight(weight.clone());
                }
                if let Some(pos_weight) = &self.pos_weight {
                    loss = loss.pos_weight(pos_weight.clone());
                }
                loss.loss_and_grad(backend, input, targets, shape, grad)
            }
            Kind::Kl | Kind::KlLogTarget => KlDivLoss::new()
                .reduction(KlReduction::None)
                .log_target(matches!(self.kind, Kind::KlLogTarget))
                .loss_and_grad(backend, input, targets, shape, grad),
            Kind::EntropyProbabilities | Kind::EntropyLogits => {
                let kind = match self.kind {
                    Kind::EntropyLogits => InputKind::Logits,
                    _ => InputKind::Probabilities,
                };
                Entropy::new()
                    .input(kind)
                    .reduction(Reduction::None)
                    .loss_and_grad(backend, input, shape, grad)
            }
            Kind::PceSoft | Kind::PceClasses => {
                let targets = match self.kind {
                    Kind::PceClasses => Targets::U32(&self.classes),
                    _ => Targets::Probabilities(targets),
                };
                ProbabilityCrossEntropyLoss::new()
                    .reduction(Reduction::None)
                    .loss_and_grad(backend, input, targets, shape, grad)
            }
        }?;
        let Loss::PerRow(losses) = loss else {
            panic!("{:?}: reduction none gave a reduced loss", self.kind)
        };
        Ok((losses, gradient))
    }

    /// Where `actual` differs from `expected` (the CPU's), one line each.
    fn differences(&self, actual: &(Vec<f32>, Vec<f32>), expected: &(Vec<f32>, Vec<f32>)) -> Vec<String> {
        let mut found = Vec::new();
        if actual.0.len() != expected.0.len() {
            return vec![format!("{} losses vs {}", actual.0.len(), expected.0.len())];
        }
        if let Some(index) = (0..actual.0.len()).find(|&index| !agrees(actual.0[index], expected.0[index], 1e-4)) {
            found.push(format!("loss [{index}]: {} vs {}", actual.0[index], expected.0[index]));
        }
        if let Some(index) = (0..actual.1.len()).find(|&index| !agrees(actual.1[index], expected.1[index], 1e-3)) {
            found.push(format!(
                "gradient [{}, {}]: {} vs {}",
                index / self.shape.classes,
                index % self.shape.classes,
                actual.1[index],
                expected.1[index]
            ));
        }
        found
    }
}

#[test]
fn the_gpu_puts_nan_and_infinities_where_the_cpu_does_across_the_family() {
    let mut gpus: Vec<(&str, &dyn Backend)> = common::all_backends().into_iter().skip(1).collect();
    if let Some(chunked) = common::gpu_chunked() {
        gpus.push(("gpu-chunked", chunked));
    }
    let mut rng = StdRng::seed_from_u64(setting("FAMILY_NONFINITE_SEED", SEED));
    let cases = setting("FAMILY_NONFINITE_CASES", CASES);
    let mut failures = Vec::new();
    for index in 0..cases {
        let case = Case::random(&mut rng);
        let expected = case.run(&xent::Cpu);
        for &(name, gpu) in &gpus {
            let actual = case.run(gpu);
            let differences = match (&actual, &expected) {
                (Ok(actual), Ok(expected)) => case.differences(actual, expected),
                (Err(error), Ok(_)) => vec![format!("the GPU refused what the CPU took: {error}")],
                (Ok(_), Err(error)) => vec![format!("the GPU took what the CPU refused: {error}")],
                (Err(_), Err(_)) => Vec::new(),
            };
            if !differences.is_empty() {
                failures.push(format!(
                    "case {index} ({:?}, {}×{}) on {name}: {}",
                    case.kind,
                    case.shape.rows,
                    case.shape.classes,
                    differences.join("; ")
                ));
            }
        }
    }
    assert_no_disagreements(&failures);
}
