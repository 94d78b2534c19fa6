//! The backends agree on non-finite and extreme inputs: random batches whose
//! logits hold NaN, ±inf, ±1e30, subnormals and exp's overflow and underflow
//! edges (none, a few, a fifth or all of them), under random options (class
//! weights with zeros, label smoothing up to 1, z-loss, softcap up to 1e30, a
//! negative or fractional logit scale, ignored rows, soft targets), with rows
//! of every kernel strategy (1 to 1001 classes). The GPU contexts (default,
//! workgroup-memory reductions, forced split rows) must give the CPU's NaN and
//! infinities at the same places, its finite values within f32 rounding, and
//! its argmax (ties broken alike; not compared under a softcap, whose
//! saturation makes ties that the two `tanh`s round differently).
//!
//! Written after such a differential found the GPU's argmax of a row of NaN
//! (4294967295, no class) and the CPU's NaN gradient under an overflowing
//! logit scale. The f64 reference judges the finite values elsewhere
//! (`random_agreement.rs`); here the point is that NaN and infinities land in
//! the same places. Fixed seed; `NONFINITE_SEED` and `NONFINITE_CASES`
//! override it.

mod common;

use common::nonfinite::{LOGIT_SPECIALS, agrees, setting};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::{Backend, CrossEntropyLoss, CrossEntropyOptions, Loss, LossOutput, Reduction};
use xent::{Shape, Targets};

const SEED: u64 = 0x0ddf_1a75;
const CASES: usize = 300;

/// Row widths: every kernel strategy, odd and aligned.
const CLASSES: [usize; 9] = [1, 2, 3, 7, 50, 300, 513, 1000, 1001];

struct Case {
    shape: Shape,
    logits: Vec<f32>,
    classes: Vec<i64>,
    probabilities: Option<Vec<f32>>,
    options: CrossEntropyOptions,
}

impl Case {
    fn random(rng: &mut StdRng) -> Self {
        let classes = CLASSES[rng.random_range(0..CLASSES.len())];
        let rows = rng.random_range(1..6);
        let rate = [0.0, 0.01, 0.2, 1.0][rng.random_range(0..4)];
        let logits = (0..rows * classes)
            .map(|_| match rng.random_bool(rate) {
                true => LOGIT_SPECIALS[rng.random_range(0..LOGIT_SPECIALS.len())],
                false => rng.random_range(-5.0..5.0),
            })
            .collect();
        let mut options = CrossEntropyOptions {
            reduction: Reduction::None,
            ..Default::default()
        };
        if rng.random_bool(0.3) {
            options.weight = Some((0..classes).map(|_| rng.random_range(0.0..2.0)).collect());
        }
        if rng.random_bool(0.3) {
            options.label_smoothing = [0.1, 1.0][rng.random_range(0..2)];
        }
        if rng.random_bool(0.3) {
            options.z_loss = 1e-3;
        }
        if rng.random_bool(0.3) {
            options.softcap = Some([0.5, 30.0, 1e30][rng.random_range(0..3)]);
        }
        if rng.random_bool(0.2) {
            options.logit_scale = [-1.0, 0.5, 2.0][rng.random_range(0..3)];
        }
        let targets = (0..rows)
            .map(|_| match rng.random_bool(0.2) {
                true => options.ignore_index,
                false => rng.random_range(0..classes as i64),
            })
            .collect();
        let probabilities = rng
            .random_bool(0.25)
            .then(|| (0..rows * classes).map(|_| rng.random_range(0.0..1.0)).collect());
        Self {
            shape: Shape::new(rows, classes),
            logits,
            classes: targets,
            probabilities,
            options,
        }
    }

    fn targets(&self) -> Targets<'_> {
        match &self.probabilities {
            Some(probabilities) => Targets::Probabilities(probabilities),
            None => Targets::I64(&self.classes),
        }
    }

    fn run(&self, backend: &dyn Backend) -> (LossOutput, Vec<f32>) {
        let mut gradient = vec![0.0f32; self.logits.len()];
        let output = CrossEntropyLoss::with_options(self.options.clone())
            .forward(
                backend,
                &self.logits[..],
                self.targets(),
                self.shape,
                Some((&mut gradient[..]).into()),
                true,
            )
            .unwrap_or_else(|error| panic!("{error}"));
        (output, gradient)
    }

    /// Where `actual` differs from `expected` (the CPU's), one line each.
    fn differences(
        &self,
        (actual, actual_gradient): &(LossOutput, Vec<f32>),
        expected: &(LossOutput, Vec<f32>),
    ) -> Vec<String> {
        let (expected, expected_gradient) = expected;
        let (Loss::PerRow(losses), Loss::PerRow(expected_losses)) = (&actual.loss, &expected.loss) else {
            return vec!["not per-row losses".into()];
        };
        let (lse, expected_lse) = (
            actual.lse.as_deref().unwrap_or(&[]),
            expected.lse.as_deref().unwrap_or(&[]),
        );
        let argmax = actual.argmax.as_deref().unwrap_or(&[]);
        let expected_argmax = expected.argmax.as_deref().unwrap_or(&[]);
        let classes = self.shape.classes;
        let mut found = Vec::new();
        for row in 0..self.shape.rows {
            if !agrees(losses[row], expected_losses[row], 1e-4) {
                found.push(format!(
                    "loss of row {row}: {} vs {}",
                    losses[row], expected_losses[row]
                ));
            }
            if !agrees(lse[row], expected_lse[row], 1e-5) {
                found.push(format!("lse of row {row}: {} vs {}", lse[row], expected_lse[row]));
            }
            if self.options.softcap.is_none() && argmax[row] != expected_argmax[row] {
                found.push(format!(
                    "argmax of row {row}: {} vs {}",
                    argmax[row], expected_argmax[row]
                ));
            }
            let entries = row * classes..(row + 1) * classes;
            let first = entries
                .clone()
                .find(|&entry| !agrees(actual_gradient[entry], expected_gradient[entry], 1e-3));
            if let Some(entry) = first {
                found.push(format!(
                    "gradient [{row}, {}]: {} vs {}",
                    entry - row * classes,
                    actual_gradient[entry],
                    expected_gradient[entry]
                ));
            }
        }
        found
    }
}

#[test]
fn the_gpu_puts_nan_and_infinities_where_the_cpu_does() {
    let mut gpus: Vec<(&str, &dyn Backend)> = common::all_backends().into_iter().skip(1).collect();
    if let Some(split) = common::gpu_split_rows() {
        gpus.push(("gpu-split", split));
    }
    let mut rng = StdRng::seed_from_u64(setting("NONFINITE_SEED", SEED));
    let cases = setting("NONFINITE_CASES", CASES);
    let mut failures = Vec::new();
    for index in 0..cases {
        let case = Case::random(&mut rng);
        let cpu = case.run(&xent::Cpu);
        for (name, gpu) in &gpus {
            let differences = case.differences(&case.run(*gpu), &cpu);
            if !differences.is_empty() {
                failures.push(format!(
                    "case {index} on {name}: {:?}, soft targets {}, options {:?}:\n  {}",
                    case.shape,
                    case.probabilities.is_some(),
                    CrossEntropyOptions {
                        weight: None,
                        ..case.options.clone()
                    },
                    differences.join("\n  ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
