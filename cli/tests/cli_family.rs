//! The `xent bce` and `xent kl` contract: one JSON object on stdout, the gradient
//! and per-element losses as (N, C) float32 files, and for bad input exit status 2
//! with one `error:` line on stderr and nothing written.

mod common;

use common::cli::{assert_usage_error, read_f32, stdout_json, write_npy, xent};

use std::path::PathBuf;
use std::process::Output;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::reference::binary::{bce_probs_f64, bce_with_logits_f64};
use xent::reference::divergence::kl_div_f64;

/// A temporary folder with the inputs of one batch.
struct Files {
    dir: tempfile::TempDir,
    rows: usize,
    classes: usize,
    logits: Vec<f32>,
    probabilities: Vec<f32>,
    targets: Vec<f32>,
    weight: Vec<f32>,
}

impl Files {
    fn new(rows: usize, classes: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(9);
        let elements = rows * classes;
        let files = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            rows,
            classes,
            logits: (0..elements).map(|_| rng.random_range(-5.0..5.0)).collect(),
            probabilities: (0..elements).map(|_| rng.random_range(0.01..0.99)).collect(),
            targets: (0..elements).map(|_| rng.random_range(0.0..1.0)).collect(),
            weight: (0..classes).map(|_| rng.random_range(0.5..2.0)).collect(),
        };
        let matrix = [rows as u64, classes as u64];
        write_npy(&files.path("logits.npy"), &files.logits, &matrix);
        write_npy(&files.path("probabilities.npy"), &files.probabilities, &matrix);
        write_npy(&files.path("targets.npy"), &files.targets, &matrix);
        write_npy(&files.path("weight.npy"), &files.weight, &[classes as u64]);
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        let owned: Vec<String> = args
            .iter()
            .map(|arg| {
                if arg.ends_with(".npy") {
                    self.arg(arg)
                } else {
                    arg.to_string()
                }
            })
            .collect();
        xent(&owned.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Removes the output files a run may have written.
    fn clear_outputs(&self) {
        for name in ["grad.npy", "losses.npy"] {
            let _ = std::fs::remove_file(self.path(name));
        }
    }

    fn assert_no_outputs(&self, label: &str) {
        for name in ["grad.npy", "losses.npy"] {
            assert!(!self.path(name).exists(), "{label}: {name} must not be written");
        }
    }
}

fn backends() -> Vec<&'static str> {
    if common::gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}

fn assert_close(actual: f64, expected: f64, label: &str) {
    let error = (actual - expected).abs();
    assert!(
        error <= 1e-5 * expected.abs() + 1e-12,
        "{label}: {actual:e} vs {expected:e}"
    );
}

fn assert_all_close(actual: &[f32], expected: &[f64], scale: f64, tolerance: f64, label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}: length");
    for (index, (&value, &reference)) in actual.iter().zip(expected).enumerate() {
        let error = (f64::from(value) - reference).abs();
        assert!(
            error <= tolerance * reference.abs().max(scale),
            "{label} [{index}]: {value:e} vs {reference:e}"
        );
    }
}

#[test]
fn bce_prints_json_and_writes_gradient_and_element_losses() {
    let files = Files::new(9, 7);
    let elements = (files.rows * files.classes) as f64;
    let (losses, gradient) = bce_with_logits_f64(
        &files.logits,
        &files.targets,
        files.classes,
        Some(&files.weight),
        Some(&files.weight),
        0.1f32.into(),
    );
    for backend in backends() {
        files.clear_outputs();
        let output = files.run(&[
            "bce",
            "--input",
            "logits.npy",
            "--targets",
            "targets.npy",
            "--weight",
            "weight.npy",
            "--pos-weight",
            "weight.npy",
            "--label-smoothing",
            "0.1",
            "--backend",
            backend,
            "--grad-out",
            "grad.npy",
            "--losses-out",
            "losses.npy",
        ]);
        let report = stdout_json(&output);
        assert_eq!(report["rows"], files.rows);
        assert_eq!(report["classes"], files.classes);
        assert_eq!(report["reduction"], "mean");
        common::cli::assert_machine_fields(&report, backend);
        let mean = losses.iter().sum::<f64>() / elements;
        assert_close(report["loss"].as_f64().expect("loss"), mean, backend);
        let (written, shape) = read_f32(&files.path("grad.npy"));
        assert_eq!(shape, [files.rows as u64, files.classes as u64]);
        let gradient_of_mean: Vec<f64> = gradient.iter().map(|value| value / elements).collect();
        assert_all_close(&written, &gradient_of_mean, 1.0 / elements, 1e-6, backend);
        let (written, shape) = read_f32(&files.path("losses.npy"));
        assert_eq!(shape, [files.rows as u64, files.classes as u64]);
        assert_all_close(&written, &losses, 1e-12, 1e-5, backend);
    }
}

#[test]
fn bce_on_probabilities_sums() {
    let files = Files::new(6, 5);
    let (losses, _) = bce_probs_f64(&files.probabilities, &files.targets, files.classes, None, 0.0);
    for backend in backends() {
        let output = files.run(&[
            "bce",
            "--input",
            "probabilities.npy",
            "--targets",
            "targets.npy",
            "--probs",
            "--reduction",
            "sum",
            "--backend",
            backend,
        ]);
        let report = stdout_json(&output);
        assert_eq!(report["reduction"], "sum");
        assert_close(report["loss"].as_f64().expect("loss"), losses.iter().sum(), backend);
    }
}

#[test]
fn kl_reports_batchmean_and_null_for_none() {
    let files = Files::new(8, 6);
    // input: log-probabilities; target given as its log (--log-target).
    let log_q: Vec<f32> = files.probabilities.iter().map(|p| p.ln()).collect();
    let log_p: Vec<f32> = files.targets.iter().map(|t| (t + 0.01).ln()).collect();
    let matrix = [files.rows as u64, files.classes as u64];
    write_npy(&files.path("log_q.npy"), &log_q, &matrix);
    write_npy(&files.path("log_p.npy"), &log_p, &matrix);
    let (terms, gradient) = kl_div_f64(&log_q, &log_p, true);
    for backend in backends() {
        files.clear_outputs();
        let output = files.run(&[
            "kl",
            "--input",
            "log_q.npy",
            "--target",
            "log_p.npy",
            "--log-target",
            "--reduction",
            "batchmean",
            "--backend",
            backend,
            "--grad-out",
            "grad.npy",
        ]);
        let report = stdout_json(&output);
        assert_eq!(report["reduction"], "batchmean");
        let rows = files.rows as f64;
        assert_close(
            report["loss"].as_f64().expect("loss"),
            terms.iter().sum::<f64>() / rows,
            backend,
        );
        let (written, _) = read_f32(&files.path("grad.npy"));
        let expected: Vec<f64> = gradient.iter().map(|value| value / rows).collect();
        assert_all_close(&written, &expected, 1.0 / rows, 1e-6, backend);

        let output = files.run(&[
            "kl",
            "--input",
            "log_q.npy",
            "--target",
            "log_p.npy",
            "--log-target",
            "--reduction",
            "none",
            "--backend",
            backend,
            "--losses-out",
            "losses.npy",
        ]);
        let report = stdout_json(&output);
        assert!(report["loss"].is_null(), "{backend}: none reports a null loss");
        let (written, shape) = read_f32(&files.path("losses.npy"));
        assert_eq!(shape, matrix);
        assert_all_close(&written, &terms, 1e-12, 1e-5, backend);
    }
}

#[test]
fn bad_input_exits_with_status_2_and_writes_nothing() {
    let files = Files::new(4, 3);
    write_npy(&files.path("wrong_shape.npy"), &files.targets[..9], &[3, 3]);
    write_npy(&files.path("vector.npy"), &files.targets[..12], &[12]);
    write_npy(&files.path("short_weight.npy"), &files.weight[..2], &[2]);
    write_npy(&files.path("labels.npy"), &[0i64, 1, 2, 0], &[4]);
    let outputs = ["--grad-out", "grad.npy", "--losses-out", "losses.npy"];
    let bce = ["bce", "--input", "logits.npy", "--targets", "targets.npy"];
    let kl = ["kl", "--input", "logits.npy", "--target", "probabilities.npy"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&bce[..3], &["--targets", "wrong_shape.npy"]].concat(),
            "targets has shape (3, 3)",
        ),
        ([&bce[..3], &["--targets", "labels.npy"]].concat(), "float32 or float64"),
        (
            ["bce", "--input", "vector.npy", "--targets", "targets.npy"].to_vec(),
            "(N, C)",
        ),
        (
            ["bce", "--input", "missing.npy", "--targets", "targets.npy"].to_vec(),
            "cannot open",
        ),
        (
            [&bce[..], &["--weight", "short_weight.npy"]].concat(),
            "weight must have shape (3,)",
        ),
        ([&bce[..], &["--label-smoothing", "2"]].concat(), "label_smoothing"),
        ([&bce[..], &["--reduction", "batchmean"]].concat(), "batchmean"),
        (
            [
                "bce",
                "--input",
                "probabilities.npy",
                "--targets",
                "targets.npy",
                "--probs",
                "--pos-weight",
                "weight.npy",
            ]
            .to_vec(),
            "pos_weight applies to logits only",
        ),
        (
            ["bce", "--input", "logits.npy", "--targets", "targets.npy", "--probs"].to_vec(),
            "not a probability",
        ),
        (
            [&kl[..3], &["--target", "wrong_shape.npy"]].concat(),
            "target has shape (3, 3)",
        ),
        ([&kl[..], &["--reduction", "average"]].concat(), "average"),
    ];
    for (args, needle) in cases {
        files.clear_outputs();
        let output = files.run(&[&args[..], &["--backend", "cpu"], &outputs[..]].concat());
        let label = args.join(" ");
        assert_usage_error(&output, needle);
        files.assert_no_outputs(&label);
    }
}
