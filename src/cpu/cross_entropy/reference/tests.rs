use super::*;
use crate::options::Reduction;

fn total_loss(logits: &[f32], targets: &[u32], classes: usize) -> f64 {
    row_losses_f64(logits, targets, classes).iter().sum()
}

#[test]
fn known_values() {
    // Two equal logits: loss = ln 2, gradient = (0.5 - onehot) * scale.
    let losses = row_losses_f64(&[3.0, 3.0], &[1], 2);
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-15);
    let gradient = gradient_f64(&[3.0, 3.0], &[1], 2, 2.0);
    assert_eq!(gradient, vec![1.0, -1.0]);

    // [0, ln 3] with target 0: softmax = [1/4, 3/4], loss = ln 4.
    let ln3 = 3.0f64.ln() as f32;
    let losses = row_losses_f64(&[0.0, ln3], &[0], 2);
    let expected = (f64::from(ln3) - 0.0) + (1.0 + (-f64::from(ln3)).exp()).ln();
    assert!((losses[0] - expected).abs() < 1e-15);
    assert!((losses[0] - 4.0f64.ln()).abs() < 1e-7);

    // One class: loss 0, gradient 0.
    assert_eq!(row_losses_f64(&[5.0], &[0], 1), vec![0.0]);
    assert_eq!(gradient_f64(&[5.0], &[0], 1, 1.0), vec![0.0]);
}

#[test]
fn confident_row_keeps_relative_precision() {
    // Target is the max, the other logit 30 lower: loss = ln(1 + e^-30).
    let losses = row_losses_f64(&[0.0, -30.0], &[0], 2);
    let expected = (-30.0f64).exp().ln_1p();
    assert!((losses[0] - expected).abs() <= 1e-15 * expected);
}

#[test]
fn nan_and_inf_propagate() {
    let losses = row_losses_f64(&[1.0, f32::NAN, 2.0, 0.0, 1.0, 2.0], &[0, 0], 3);
    assert!(losses[0].is_nan());
    assert!(losses[1].is_finite());
    assert!(row_losses_f64(&[1.0, f32::INFINITY], &[1], 2)[0].is_nan());
    assert!(row_losses_f64(&[1.0, f32::INFINITY], &[0], 2)[0].is_nan());
    assert!(gradient_f64(&[1.0, f32::NAN], &[0], 2, 1.0).iter().all(|g| g.is_nan()));
    // -inf logits are fine: they just have probability 0.
    let losses = row_losses_f64(&[0.0, f32::NEG_INFINITY], &[0], 2);
    assert_eq!(losses, vec![0.0]);
}

#[test]
fn gradient_matches_central_finite_differences() {
    // Logits on a 2^-10 grid and a 2^-7 step, so x +- step is exact in f32.
    let classes = 5;
    let targets = [0u32, 3, 4];
    let logits: Vec<f32> = (0..targets.len() * classes)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
        .map(|x| (x * 1024.0).round() / 1024.0)
        .collect();
    let step = 1.0f32 / 128.0;
    let scale = 0.75;
    let gradient = gradient_f64(&logits, &targets, classes, scale);
    let mut max_error = 0.0f64;
    for (i, &analytic) in gradient.iter().enumerate() {
        let mut plus = logits.clone();
        plus[i] += step;
        let mut minus = logits.clone();
        minus[i] -= step;
        let numeric = scale * (total_loss(&plus, &targets, classes) - total_loss(&minus, &targets, classes))
            / (2.0 * f64::from(step));
        max_error = max_error.max((numeric - analytic).abs());
    }
    // Central differences are O(step^2) accurate: step^2 = 6e-5, times |f'''|/6 < 0.1.
    assert!(max_error < 1e-5, "max finite-difference error {max_error:e}");
}

/// Options of the finite-difference and known-value tests: every option alone and combined.
fn option_cases(classes: usize) -> Vec<(&'static str, CrossEntropyOptions)> {
    let weight: Vec<f32> = (0..classes).map(|class| 0.25 + (class * 7 % 5) as f32 * 0.5).collect();
    let base = CrossEntropyOptions::default();
    vec![
        ("plain", base.clone()),
        (
            "weight",
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                ..base.clone()
            },
        ),
        (
            "ignore",
            CrossEntropyOptions {
                ignore_index: 1,
                ..base.clone()
            },
        ),
        (
            "smoothing",
            CrossEntropyOptions {
                label_smoothing: 0.2,
                ..base.clone()
            },
        ),
        (
            "weight+ignore+smoothing",
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                ignore_index: 1,
                label_smoothing: 0.3,
                ..base.clone()
            },
        ),
        (
            "z_loss",
            CrossEntropyOptions {
                z_loss: 0.01,
                ..base.clone()
            },
        ),
        (
            "softcap",
            CrossEntropyOptions {
                softcap: Some(2.5),
                ..base.clone()
            },
        ),
        (
            "z_loss+softcap",
            CrossEntropyOptions {
                z_loss: 0.05,
                softcap: Some(3.0),
                ..base.clone()
            },
        ),
        (
            "logit_scale",
            CrossEntropyOptions {
                logit_scale: -1.7,
                ..base.clone()
            },
        ),
        (
            "everything",
            CrossEntropyOptions {
                weight: Some(weight),
                ignore_index: 2,
                label_smoothing: 0.1,
                z_loss: 0.02,
                softcap: Some(4.0),
                logit_scale: 0.6,
                ..base
            },
        ),
    ]
}

/// Logits on a 2^-10 grid in [-4, 4], so that the finite-difference steps below are exact in f32.
fn grid_logits(count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 37 + 11) % 23) as f32 * 0.35 - 3.9)
        .map(|x| (x * 1024.0).round() / 1024.0)
        .collect()
}

/// Soft targets: a few probability vectors (some exact zeros) in the logits' layout.
fn soft_targets(shape: Shape) -> Vec<f32> {
    let mut probabilities = vec![0.0f32; shape.rows * shape.classes];
    for row in 0..shape.rows {
        let raw: Vec<f32> = (0..shape.classes)
            .map(|class| ((row * 5 + class * 3) % 4) as f32)
            .collect();
        let total: f32 = raw.iter().sum();
        for (class, value) in raw.iter().enumerate() {
            probabilities[shape.index(row, class)] = value / total;
        }
    }
    probabilities
}

/// `(4·D(h/2) − D(h)) / 3` of central differences `D`: the O(h²) error cancels.
fn richardson_derivative(loss_at: impl Fn(f32) -> f64, step: f32) -> f64 {
    let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
    (4.0 * central(step / 2.0) - central(step)) / 3.0
}

/// Largest |analytic − numeric| gradient entry of the reference on one case.
fn finite_difference_error(logits: &[f32], targets: Targets<'_>, shape: Shape, options: &CrossEntropyOptions) -> f64 {
    let analytic = cross_entropy_f64(logits, targets, shape, options).gradient;
    let step = 1.0f32 / 64.0;
    let mut worst = 0.0f64;
    for (index, &expected) in analytic.iter().enumerate() {
        let loss_at = |offset: f32| {
            let mut moved = logits.to_vec();
            moved[index] += offset;
            cross_entropy_f64(&moved, targets, shape, options).loss
        };
        worst = worst.max((richardson_derivative(loss_at, step) - expected).abs());
    }
    worst
}

#[test]
fn option_gradients_match_finite_differences() {
    let mut worst = 0.0f64;
    for shape in [Shape::new(5, 4), Shape::nd(2, 4, &[3]).expect("shape")] {
        let logits = grid_logits(shape.rows * shape.classes);
        // Rows 1 and 3 (and, with ignore_index 1 or 2, more) are ignored by some options.
        let classes: Vec<i64> = (0..shape.rows).map(|row| [0, 1, 3, 2, 1, 0][row % 6]).collect();
        let probabilities = soft_targets(shape);
        for (name, options) in option_cases(shape.classes) {
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                let options = CrossEntropyOptions {
                    reduction,
                    ..options.clone()
                };
                for targets in [Targets::I64(&classes), Targets::Probabilities(&probabilities)] {
                    let error = finite_difference_error(&logits, targets, shape, &options);
                    let label = format!("{name} {reduction} {shape:?} soft={}", targets.is_probabilities());
                    assert!(error < 1e-8, "{label}: finite-difference error {error:e}");
                    worst = worst.max(error);
                }
            }
        }
    }
    println!("reference gradient vs finite differences, worst: {worst:e}");
}

#[test]
fn options_known_values() {
    let shape = Shape::new(2, 2);
    let logits = [3.0f32, 3.0, 0.0, 0.0];
    // Both rows: p = [1/2, 1/2], lse = 3 + ln 2 and ln 2.
    let options = CrossEntropyOptions {
        ignore_index: 0,
        ..CrossEntropyOptions::default()
    };
    let result = cross_entropy_f64(&logits, Targets::I64(&[0, 1]), shape, &options);
    let ln2 = std::f64::consts::LN_2;
    assert_eq!(result.row_losses, vec![0.0, ln2]);
    assert_eq!(result.loss, ln2);
    assert_eq!(result.gradient, vec![0.0, 0.0, 0.5, -0.5]);
    assert_eq!(result.row_argmax, vec![0, 0]);
    assert!((result.row_lse[0] - (3.0 + ln2)).abs() < 1e-15);

    // Every row ignored: mean NaN, zero gradient; sum 0.
    let all_ignored = cross_entropy_f64(&logits, Targets::I64(&[0, 0]), shape, &options);
    assert!(all_ignored.loss.is_nan() && all_ignored.z_loss.is_nan());
    assert!(all_ignored.gradient.iter().all(|&g| g == 0.0));
    let sum = CrossEntropyOptions {
        reduction: Reduction::Sum,
        ..options.clone()
    };
    assert_eq!(cross_entropy_f64(&logits, Targets::I64(&[0, 0]), shape, &sum).loss, 0.0);

    // Weighted mean divides by Σ w_y; smoothing 1 is the uniform soft target.
    let weighted = CrossEntropyOptions {
        weight: Some(vec![2.0, 6.0]),
        ..CrossEntropyOptions::default()
    };
    let result = cross_entropy_f64(&[0.0, 0.0, 0.0, 0.0], Targets::I64(&[0, 1]), shape, &weighted);
    assert!((result.loss - ln2).abs() < 1e-15);
    let uniform = CrossEntropyOptions {
        label_smoothing: 1.0,
        ..CrossEntropyOptions::default()
    };
    let hard = cross_entropy_f64(&logits, Targets::I64(&[0, 1]), shape, &uniform);
    let soft = cross_entropy_f64(&logits, Targets::Probabilities(&[1.0, 0.0, 0.0, 1.0]), shape, &uniform);
    assert_eq!(hard.row_losses, soft.row_losses);

    // Softcap turns +inf into t, so the row stays finite; NaN still propagates.
    let capped = CrossEntropyOptions {
        softcap: Some(5.0),
        ..CrossEntropyOptions::default()
    };
    let result = cross_entropy_f64(
        &[f32::INFINITY, 0.0, f32::NAN, 1.0],
        Targets::I64(&[0, 1]),
        shape,
        &capped,
    );
    assert!(result.row_losses[0].is_finite() && result.row_losses[1].is_nan());
    assert_eq!(result.row_argmax, vec![0, 1]);
    let plain = CrossEntropyOptions::default();
    let result = cross_entropy_f64(&[f32::INFINITY, 0.0, 1.0, 2.0], Targets::I64(&[1, 1]), shape, &plain);
    assert!(result.row_losses[0].is_nan() && result.row_losses[1].is_finite());

    // A negative logit scale makes the smallest logit the argmax.
    let negative = CrossEntropyOptions {
        logit_scale: -1.0,
        ..CrossEntropyOptions::default()
    };
    let result = cross_entropy_f64(&[1.0, 2.0, 5.0, 4.0], Targets::I64(&[0, 0]), shape, &negative);
    assert_eq!(result.row_argmax, vec![0, 1]);
}

#[test]
fn options_reduce_to_the_plain_reference() {
    let (rows, classes) = (4, 6);
    let logits = grid_logits(rows * classes);
    let targets = [5u32, 0, 2, 3];
    let result = cross_entropy_f64(
        &logits,
        Targets::U32(&targets),
        Shape::new(rows, classes),
        &CrossEntropyOptions::default(),
    );
    assert_eq!(result.row_losses, row_losses_f64(&logits, &targets, classes));
    let gradient = gradient_f64(&logits, &targets, classes, 1.0 / rows as f64);
    let worst = result
        .gradient
        .iter()
        .zip(&gradient)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-17, "{worst:e}");
}

/// The PyTorch fixtures of `tests/fixtures/pytorch`.
/// The PyTorch fixtures of `tests/fixtures/pytorch` (also used by the tests of `general`).
pub(crate) mod pytorch {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch")
    }

    fn read_npy<T: npyz::Deserialize>(case: &Path, file: &str) -> Vec<T> {
        let path = case.join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        npyz::NpyFile::new(&bytes[..])
            .and_then(|npy| npy.into_vec::<T>())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    fn shape_of(case: &Value) -> Shape {
        let dims: Vec<usize> = case["logits_shape"]
            .as_array()
            .expect("logits_shape")
            .iter()
            .map(|dim| dim.as_u64().expect("dimension") as usize)
            .collect();
        if dims.len() == 2 {
            Shape::new(dims[0], dims[1])
        } else {
            Shape::nd(dims[0], dims[1], &dims[2..]).expect("shape")
        }
    }

    fn options_of(case: &Value, folder: &Path) -> CrossEntropyOptions {
        let as_f32 = |key: &str| case[key].as_f64().map(|value| value as f32);
        CrossEntropyOptions {
            reduction: case["reduction"]
                .as_str()
                .expect("reduction")
                .parse()
                .expect("reduction name"),
            ignore_index: case["ignore_index"].as_i64().expect("ignore_index"),
            weight: case["has_weight"]
                .as_bool()
                .expect("has_weight")
                .then(|| read_npy(folder, "weight.npy")),
            label_smoothing: as_f32("label_smoothing").expect("label_smoothing"),
            z_loss: as_f32("z_loss_scale").expect("z_loss_scale"),
            softcap: as_f32("softcap"),
            logit_scale: 1.0,
        }
    }

    /// One `cross_entropy` case of the fixtures, loaded.
    pub(crate) struct Fixture {
        /// The case's name.
        pub(crate) name: String,
        pub(crate) shape: Shape,
        pub(crate) options: CrossEntropyOptions,
        pub(crate) logits: Vec<f32>,
        /// Class indices (empty for soft targets).
        pub(crate) classes: Vec<i64>,
        /// Soft targets (empty for class indices).
        pub(crate) probabilities: Vec<f32>,
        /// PyTorch's loss: one value, or one per row for `none`.
        pub(crate) loss: Vec<f64>,
        /// The z-loss part alone, reduced like `loss`, when the case has one.
        pub(crate) z_loss: Option<Vec<f64>>,
        /// d loss / d logits (of the sum for `none`).
        pub(crate) gradient: Option<Vec<f64>>,
        /// PyTorch's loss is NaN (a mean over no rows).
        pub(crate) expect_nan: bool,
    }

    impl Fixture {
        pub(crate) fn targets(&self) -> Targets<'_> {
            if self.classes.is_empty() {
                Targets::Probabilities(&self.probabilities)
            } else {
                Targets::I64(&self.classes)
            }
        }
    }

    /// Every case of `family == "cross_entropy"`.
    pub(crate) fn cross_entropy_fixtures() -> Vec<Fixture> {
        let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
        let manifest: Value = serde_json::from_str(&text).expect("manifest JSON");
        let cases = manifest["cases"].as_array().expect("cases").iter();
        cases
            .filter(|case| case["family"] == "cross_entropy")
            .map(|case| {
                let name = case["name"].as_str().expect("name").to_string();
                let folder = fixtures().join(&name);
                let soft = case["soft_targets"] == true;
                let files = &case["files"];
                Fixture {
                    shape: shape_of(case),
                    options: options_of(case, &folder),
                    logits: read_npy(&folder, "logits.npy"),
                    classes: if soft {
                        Vec::new()
                    } else {
                        read_npy(&folder, "targets.npy")
                    },
                    probabilities: if soft {
                        read_npy(&folder, "targets.npy")
                    } else {
                        Vec::new()
                    },
                    loss: read_npy(&folder, "loss.npy"),
                    z_loss: files.get("z_term").map(|_| read_npy(&folder, "z_term.npy")),
                    gradient: (case["has_grad"] == true).then(|| read_npy(&folder, "grad.npy")),
                    expect_nan: case["expect_nan"] == true,
                    name,
                }
            })
            .collect()
    }

    /// Largest errors seen, for the report.
    #[derive(Debug, Default)]
    struct Worst {
        loss_relative: f64,
        loss_relative_at: String,
        loss_absolute: f64,
        gradient_absolute: f64,
    }

    impl Worst {
        fn loss(&mut self, label: &str, actual: f64, expected: f64) {
            let error = (actual - expected).abs();
            assert!(
                error <= 1e-9 * expected.abs() + 1e-13,
                "{label}: {actual:e} vs PyTorch {expected:e}"
            );
            self.loss_absolute = self.loss_absolute.max(error);
            if expected.abs() > 1e-6 && error / expected.abs() > self.loss_relative {
                self.loss_relative = error / expected.abs();
                self.loss_relative_at = label.to_string();
            }
        }

        fn losses(&mut self, label: &str, actual: &[f64], expected: &[f64]) {
            assert_eq!(actual.len(), expected.len(), "{label}");
            for (row, (&actual, &expected)) in actual.iter().zip(expected).enumerate() {
                self.loss(&format!("{label} row {row}"), actual, expected);
            }
        }
    }

    #[test]
    fn reference_matches_pytorch_fixtures() {
        let fixtures = cross_entropy_fixtures();
        assert!(fixtures.len() >= 80, "only {} cross_entropy cases", fixtures.len());
        let mut worst = Worst::default();
        for fixture in &fixtures {
            let name = &fixture.name;
            let result = cross_entropy_f64(&fixture.logits, fixture.targets(), fixture.shape, &fixture.options);
            if fixture.options.reduction == Reduction::None {
                worst.losses(name, &result.row_losses, &fixture.loss);
                if let Some(expected_z) = &fixture.z_loss {
                    worst.losses(&format!("{name} z"), &result.row_z, expected_z);
                }
            } else if fixture.expect_nan {
                assert!(
                    result.loss.is_nan() && fixture.loss[0].is_nan(),
                    "{name}: {}",
                    result.loss
                );
            } else {
                worst.loss(name, result.loss, fixture.loss[0]);
                if let Some(expected_z) = &fixture.z_loss {
                    worst.loss(&format!("{name} z"), result.z_loss, expected_z[0]);
                }
            }
            if let Some(expected) = &fixture.gradient {
                assert_eq!(expected.len(), result.gradient.len(), "{name}");
                for (index, (&actual, &expected)) in result.gradient.iter().zip(expected).enumerate() {
                    let error = (actual - expected).abs();
                    assert!(
                        error <= 1e-12,
                        "{name} gradient[{index}]: {actual:e} vs PyTorch {expected:e}"
                    );
                    worst.gradient_absolute = worst.gradient_absolute.max(error);
                }
            }
        }
        println!("reference vs PyTorch, worst: {worst:?}");
    }
}
