//! The `xent` binary's contract: JSON on stdout, output files, and for bad input
//! exit status 2 with one `error:` line on stderr and nothing written.

mod common;

use common::cli::{assert_usage_error, read_f32, stdout_json, stdout_json_lines, write_npy, xent};

use std::path::{Path, PathBuf};

struct Files {
    _dir: tempfile::TempDir,
    logits: PathBuf,
    targets: PathBuf,
    grad: PathBuf,
    losses: PathBuf,
}

fn files(rows: usize, classes: usize) -> (Files, Vec<f32>, Vec<i64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 21);
    let paths = Files {
        logits: dir.path().join("logits.npy"),
        targets: dir.path().join("targets.npy"),
        grad: dir.path().join("grad.npy"),
        losses: dir.path().join("losses.npy"),
        _dir: dir,
    };
    write_npy(&paths.logits, &logits, &[rows as u64, classes as u64]);
    write_npy(&paths.targets, &targets, &[rows as u64]);
    (paths, logits, targets)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn loss_prints_json_and_writes_gradient_and_row_losses() {
    let (rows, classes) = (37, 300);
    let (files, logits, targets) = files(rows, classes);
    let expected = common::expected(&logits, &targets, classes);
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && common::gpu().is_none() {
            continue;
        }
        let output = xent(&[
            "loss",
            "--logits",
            path(&files.logits),
            "--targets",
            path(&files.targets),
            "--backend",
            backend,
            "--grad-out",
            path(&files.grad),
            "--losses-out",
            path(&files.losses),
        ]);
        let report = stdout_json(&output);
        assert_eq!(report["rows"], rows);
        assert_eq!(report["classes"], classes);
        assert_eq!(report["reduction"], "mean");
        common::cli::assert_machine_fields(&report, backend);
        common::assert_loss(report["loss"].as_f64().expect("loss") as f32, expected.mean, backend);
        let (gradient, shape) = read_f32(&files.grad);
        assert_eq!(shape, vec![rows as u64, classes as u64]);
        common::assert_gradient(&gradient, &expected.gradient_of_mean, 1.0 / rows as f64, backend);
        let (row_losses, shape) = read_f32(&files.losses);
        assert_eq!(shape, vec![rows as u64]);
        common::assert_row_losses(&row_losses, &expected.row_losses, backend);
    }
}

#[test]
fn reduction_none_reports_a_null_loss() {
    let (files, logits, targets) = files(5, 10);
    let expected = common::expected(&logits, &targets, 10);
    let output = xent(&[
        "loss",
        "--logits",
        path(&files.logits),
        "--targets",
        path(&files.targets),
        "--backend",
        "cpu",
        "--reduction",
        "none",
        "--losses-out",
        path(&files.losses),
    ]);
    let report = stdout_json(&output);
    assert!(report["loss"].is_null());
    assert_eq!(report["reduction"], "none");
    common::assert_row_losses(&read_f32(&files.losses).0, &expected.row_losses, "none");
}

#[test]
fn sum_reduction_over_float64_logits_and_int32_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logits64: Vec<f64> = vec![0.5, 2.0, -1.0, 0.1, 0.2, 0.3];
    let logits_path = dir.path().join("logits.npy");
    let targets_path = dir.path().join("targets.npy");
    write_npy(&logits_path, &logits64, &[2, 3]);
    write_npy(&targets_path, &[1i32, 2], &[2]);
    let logits: Vec<f32> = logits64.iter().map(|&value| value as f32).collect();
    let expected = common::expected(&logits, &[1, 2], 3);
    let report = stdout_json(&xent(&[
        "loss",
        "--logits",
        path(&logits_path),
        "--targets",
        path(&targets_path),
        "--backend",
        "cpu",
        "--reduction",
        "sum",
    ]));
    common::assert_loss(report["loss"].as_f64().expect("loss") as f32, expected.sum, "sum");
}

#[test]
fn bad_inputs_exit_with_status_2_and_write_nothing() {
    let (files, _, _) = files(4, 3);
    let dir = files.logits.parent().expect("dir").to_path_buf();
    let bad_targets = dir.join("bad_targets.npy");
    write_npy(&bad_targets, &[0i64, 1, 3, 0], &[4]);
    let short_targets = dir.join("short_targets.npy");
    write_npy(&short_targets, &[0i64, 1], &[2]);
    let float_targets = dir.join("float_targets.npy");
    write_npy(&float_targets, &[0.0f32, 1.0, 2.0, 0.0], &[4]);
    let flat_logits = dir.join("flat_logits.npy");
    write_npy(&flat_logits, &[0.0f32; 12], &[12]);
    let bad_weight = dir.join("bad_weight.npy");
    write_npy(&bad_weight, &[1.0f32, 2.0], &[2]);
    let negative_weight = dir.join("negative_weight.npy");
    write_npy(&negative_weight, &[1.0f32, -2.0, 1.0], &[3]);
    let not_npy = dir.join("not.npy");
    std::fs::write(&not_npy, b"hello").expect("write");
    let missing = dir.join("missing.npy");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--logits", path(&files.logits), "--targets", path(&bad_targets)],
            "target 3 at row 2",
        ),
        (
            vec!["--logits", path(&files.logits), "--targets", path(&short_targets)],
            "must have shape [4], found [2]",
        ),
        (
            vec!["--logits", path(&files.logits), "--targets", path(&float_targets)],
            "soft targets must have the logits' shape",
        ),
        (
            vec!["--logits", path(&flat_logits), "--targets", path(&files.targets)],
            "shape (N, C)",
        ),
        (
            vec![
                "--logits",
                path(&files.logits),
                "--targets",
                path(&files.targets),
                "--label-smoothing",
                "1.5",
            ],
            "label_smoothing",
        ),
        (
            vec![
                "--logits",
                path(&files.logits),
                "--targets",
                path(&files.targets),
                "--softcap",
                "-1",
            ],
            "softcap",
        ),
        (
            vec![
                "--logits",
                path(&files.logits),
                "--targets",
                path(&files.targets),
                "--weight",
                path(&bad_weight),
            ],
            "weight",
        ),
        (
            vec![
                "--logits",
                path(&files.logits),
                "--targets",
                path(&files.targets),
                "--weight",
                path(&negative_weight),
            ],
            "non-negative",
        ),
        (
            vec!["--logits", path(&not_npy), "--targets", path(&files.targets)],
            "not a valid .npy",
        ),
        (
            vec!["--logits", path(&missing), "--targets", path(&files.targets)],
            "cannot open",
        ),
        (
            vec![
                "--logits",
                path(&files.logits),
                "--targets",
                path(&files.targets),
                "--reduction",
                "avg",
            ],
            "avg",
        ),
    ];
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && common::gpu().is_none() {
            continue;
        }
        for (args, needle) in &cases {
            let mut full = vec!["loss", "--backend", backend, "--grad-out", path(&files.grad)];
            full.extend(args);
            assert_usage_error(&xent(&full), needle);
            assert!(!files.grad.exists(), "no gradient written after an error");
        }
    }
}

/// Runs `xent` with the space-separated `command` and `both` (cpu alone without an adapter) appended,
/// e.g. `bench … --json --backend`, and parses its lines: one report per backend.
fn bench_reports(command: &str) -> Vec<serde_json::Value> {
    let mut args: Vec<&str> = command.split(' ').collect();
    args.push(if common::gpu().is_some() { "both" } else { "cpu" });
    let output = xent(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // No progress line when stderr is not a terminal (here a pipe) or with --json.
    assert!(!stderr.contains(" shapes, "), "no progress drawn: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(reports.len(), if common::gpu().is_some() { 2 } else { 1 });
    for report in &reports {
        let backend = report["backend"].as_str().expect("backend").to_owned();
        common::cli::assert_machine_fields(report, &backend);
        // The GPU's kernel times are device-resident where the adapter has
        // timestamps; the CPU has none, and no transfer rates.
        let timestamps = backend == "gpu"
            && common::gpu().is_some_and(|context| context.features().contains(wgpu::Features::TIMESTAMP_QUERY));
        assert_eq!(report["device_resident"], timestamps, "{report}");
        assert_eq!(report["host_timed"], true, "{report}");
        assert_eq!(report["kernel_ms"].is_f64(), timestamps, "{report}");
        assert_eq!(report["upload_gbps"].is_f64(), backend == "gpu", "{report}");
        assert_eq!(report["download_gbps"].is_f64(), backend == "gpu", "{report}");
        assert_eq!(report["copy_builtin_gbps"].is_f64(), timestamps, "{report}");
    }
    reports
}

#[test]
fn bench_json_reports_each_backend() {
    let reports = bench_reports("bench --rows 16 --classes 100 --reps 2 --json --backend");
    for report in &reports {
        assert_eq!(report["rows"], 16);
        assert_eq!(report["classes"], 100);
        assert!(report["median_ms"].as_f64().is_some_and(|ms| ms > 0.0));
        assert!(report["gbps"].as_f64().is_some_and(|gbps| gbps > 0.0));
    }
    if let [gpu, _cpu] = &reports[..] {
        assert_eq!(gpu["backend"], "gpu");
        assert!(
            gpu["max_abs_diff"].as_f64().is_some_and(|diff| diff < 1e-5),
            "backends agree: {gpu}"
        );
    }
}

#[test]
fn bench_times_bf16_logits() {
    let reports = bench_reports("bench --rows 8 --classes 1000 --dtype bf16 --reps 2 --json --backend");
    for report in &reports {
        assert_eq!(report["dtype"], "bf16");
        // GB/s counts 2 bytes per logit: read + write of 8000 bf16 over the fused time.
        let expected_gbps = 2.0 * 8000.0 * 2.0 / (report["median_ms"].as_f64().expect("ms") * 1e6);
        let gbps = report["gbps"].as_f64().expect("GB/s");
        assert!((gbps - expected_gbps).abs() <= 1e-9 * expected_gbps, "{report}");
    }
    if let [gpu, _cpu] = &reports[..] {
        // Both round the same f32 gradient to bf16: at most one bf16 step of the largest entry apart.
        assert!(
            gpu["max_abs_diff"].as_f64().is_some_and(|diff| diff < 1e-3),
            "backends agree: {gpu}"
        );
    }
}

#[test]
fn bench_sweeps_workgroup_sizes_in_place_with_f16() {
    if common::gpu().is_none() {
        return;
    }
    let output = xent(&[
        "bench",
        "--rows",
        "8",
        "--classes",
        "600",
        "--reps",
        "1",
        "--dtype",
        "f16",
        "--in-place",
        "--json",
        "--workgroup-size",
        "64,256",
        "--backend",
        "gpu",
    ]);
    let reports = stdout_json_lines(&output);
    let sizes: Vec<&serde_json::Value> = reports.iter().map(|report| &report["workgroup_size"]).collect();
    assert_eq!(sizes, [64, 256], "one report per size: {reports:?}");
    for report in &reports {
        assert_eq!(report["dtype"], "f16");
        assert_eq!(report["in_place"], true);
        // In place, each fused call overwrites the previous gradient: not compared.
        assert!(report["max_abs_diff"].is_null(), "{report}");
        assert!(report["median_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    }
    assert_usage_error(
        &xent(&[
            "bench",
            "--rows",
            "8",
            "--classes",
            "600",
            "--workgroup-size",
            "100",
            "--backend",
            "gpu",
        ]),
        "workgroup size 100",
    );
}

/// The contexts of one bench run agree on the loss (to f32 rounding).
fn assert_same_losses(reports: &[serde_json::Value]) {
    let losses: Vec<f64> = reports
        .iter()
        .map(|report| report["loss"].as_f64().expect("loss"))
        .collect();
    assert!(
        losses
            .iter()
            .all(|loss| (loss - losses[0]).abs() <= 1e-5 * losses[0].abs()),
        "{losses:?}"
    );
}

#[test]
fn bench_times_unaligned_f32_rows_as_entries_and_as_vectors_side_by_side() {
    let Some(context) = common::gpu() else { return };
    let arguments = |settings: &'static str| {
        [
            "bench",
            "--rows",
            "4",
            "--classes",
            "1001",
            "--reps",
            "1",
            "--json",
            "--unaligned-f32",
            settings,
            "--backend",
            "gpu",
        ]
    };
    let backend = context.adapter_info().backend;
    if !matches!(backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12) {
        // Vectors need single-lane stores: refused with a clear error elsewhere.
        let output = xent(&arguments("entries,vectors"));
        assert_eq!(output.status.code(), Some(2), "{backend:?}");
        return;
    }
    let reports = stdout_json_lines(&xent(&arguments("entries,vectors")));
    let settings: Vec<&serde_json::Value> = reports.iter().map(|report| &report["unaligned_f32"]).collect();
    assert_eq!(settings, [&serde_json::Value::from("entries"), &"vectors".into()]);
    assert_same_losses(&reports);
    assert_usage_error(
        &xent(&arguments("entries,sideways")),
        "`sideways` is not auto, entries or vectors",
    );
    assert_usage_error(
        &xent(&arguments("vectors,vectors")),
        "--unaligned-f32 lists vectors twice",
    );
}

#[test]
fn bench_times_the_fused_and_split_kernels_side_by_side() {
    if common::gpu().is_none() {
        return;
    }
    let output = xent(&[
        "bench",
        "--rows",
        "4",
        "--classes",
        "3000",
        "--reps",
        "1",
        "--json",
        "--row-split",
        "off,1",
        "--backend",
        "gpu",
    ]);
    let reports = stdout_json_lines(&output);
    let settings: Vec<(&serde_json::Value, &serde_json::Value)> = reports
        .iter()
        .map(|report| (&report["row_split"], &report["split_kernel"]))
        .collect();
    assert_eq!(
        settings,
        [(&"off".into(), &false.into()), (&"split1".into(), &true.into())]
    );
    assert_same_losses(&reports);
    assert_usage_error(
        &xent(&[
            "bench",
            "--rows",
            "8",
            "--classes",
            "600",
            "--row-split",
            "3",
            "--backend",
            "gpu",
        ]),
        "`3` is not off, auto",
    );
}

#[test]
fn info_names_the_chosen_adapter() {
    if common::gpu().is_none() {
        return;
    }
    let output = xent(&["info"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("chosen:")
            && stdout.contains("max_storage_buffer_binding_size")
            && stdout.contains("shader checks: trusted"),
        "{stdout}"
    );
}

#[test]
fn float16_logits_give_a_float16_gradient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rows, classes) = (8, 50);
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 41);
    let halves: Vec<xent::half::f16> = logits.iter().map(|&value| xent::half::f16::from_f32(value)).collect();
    let widened: Vec<f32> = halves.iter().map(|value| value.to_f32()).collect();
    let expected = common::expected(&widened, &targets, classes);
    let (logits_path, targets_path, grad_path) = (
        dir.path().join("logits.npy"),
        dir.path().join("targets.npy"),
        dir.path().join("grad.npy"),
    );
    write_npy(&logits_path, &halves, &[rows as u64, classes as u64]);
    write_npy(&targets_path, &targets, &[rows as u64]);
    for backend in ["cpu", "gpu"] {
        if backend == "gpu"
            && common::gpu().is_none_or(|context| !context.features().contains(wgpu::Features::SHADER_F16))
        {
            continue;
        }
        let report = stdout_json(&xent(&[
            "loss",
            "--logits",
            path(&logits_path),
            "--targets",
            path(&targets_path),
            "--backend",
            backend,
            "--grad-out",
            path(&grad_path),
        ]));
        common::assert_loss(report["loss"].as_f64().expect("loss") as f32, expected.mean, backend);
        let bytes = std::fs::read(&grad_path).expect("gradient file");
        let gradient: Vec<xent::half::f16> = npyz::NpyFile::new(&bytes[..])
            .expect("npy")
            .into_vec()
            .expect("f16 dtype");
        let largest = expected
            .gradient_of_mean
            .iter()
            .fold(0.0f64, |largest, value| largest.max(value.abs()));
        for (value, reference) in gradient.iter().zip(&expected.gradient_of_mean) {
            assert!(
                (f64::from(value.to_f32()) - reference).abs() <= largest / 1024.0,
                "{backend}"
            );
        }
    }
}

fn fixture(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/pytorch")
        .join(case)
        .join(file)
}

#[test]
fn options_match_the_pytorch_fixture() {
    // ce_weight_ignore_smooth_mean: weight, ignore_index 4, label smoothing 0.2; PyTorch: 3.8108063070031823.
    let case = "ce_weight_ignore_smooth_mean";
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && common::gpu().is_none() {
            continue;
        }
        let report = stdout_json(&xent(&[
            "loss",
            "--logits",
            path(&fixture(case, "logits.npy")),
            "--targets",
            path(&fixture(case, "targets.npy")),
            "--weight",
            path(&fixture(case, "weight.npy")),
            "--ignore-index",
            "4",
            "--label-smoothing",
            "0.2",
            "--backend",
            backend,
        ]));
        common::assert_loss(
            report["loss"].as_f64().expect("loss") as f32,
            3.8108063070031823,
            backend,
        );
    }
}

#[test]
fn probability_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probabilities: Vec<f32> = vec![0.2, 0.5, 0.3, 0.0, 1.0, 0.0];
    let (input, targets) = (dir.path().join("probs.npy"), dir.path().join("targets.npy"));
    write_npy(&input, &probabilities, &[2, 3]);
    write_npy(&targets, &[1i64, 0], &[2]);
    // `xent loss --input probs` on these files, then `option` and `value`.
    let probability_loss = |option: &str, value: &str| {
        xent(&[
            "loss",
            "--logits",
            path(&input),
            "--targets",
            path(&targets),
            "--input",
            "probs",
            option,
            value,
        ])
    };
    // Keras: -log(0.5) and -log(1e-7) (the clamp), averaged.
    let expected = (-(0.5f64.ln()) - (1e-7f64).ln()) / 2.0;
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && common::gpu().is_none() {
            continue;
        }
        let report = stdout_json(&probability_loss("--backend", backend));
        assert!(
            (report["loss"].as_f64().expect("loss") - expected).abs() < 1e-5 * expected,
            "{backend}: {report}"
        );
        assert_eq!(report["input"], "probs");
    }
    // Logit options are refused; so is --ignore-index: Keras' loss on probabilities
    // ignores no row, and the option (even the default's value, given explicitly)
    // would be silently left out.
    for (option, value, needle) in [
        ("--z-loss", "1", "--input probs"),
        ("--ignore-index", "0", "--ignore-index"),
        ("--ignore-index", "-100", "--ignore-index"),
    ] {
        assert_usage_error(&probability_loss(option, value), needle);
    }
}

/// Without XDG_RUNTIME_DIR, Mesa's drivers would print `error: XDG_RUNTIME_DIR is
/// invalid or not set` before anything else; xent gives them a private directory.
/// On a software adapter, `info` says in one line that GPU timings mean nothing.
#[test]
fn gpu_commands_print_no_mesa_noise_and_name_a_software_adapter() {
    let Some(context) = common::gpu() else {
        return;
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_xent"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run xent");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert!(stderr.trim().is_empty(), "nothing on stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let software = context.adapter_info().device_type == wgpu::DeviceType::Cpu;
    assert_eq!(
        stdout.contains("is a software rasterizer running on the CPU"),
        software,
        "{stdout}"
    );
    assert!(stdout.contains("features:\n    - "), "features as a list: {stdout}");
}

#[test]
fn info_json_names_the_adapters_and_the_chosen_one() {
    let Some(context) = common::gpu() else {
        return;
    };
    let report = stdout_json(&xent(&["info", "--json"]));
    let info = context.adapter_info();
    assert_eq!(report["chosen"]["name"], info.name.as_str(), "{report}");
    assert_eq!(report["chosen"]["device_type"], format!("{:?}", info.device_type));
    assert_eq!(report["xent_version"], env!("CARGO_PKG_VERSION"));
    let adapters = report["adapters"].as_array().expect("adapters");
    assert!(adapters.iter().any(|adapter| adapter["name"] == info.name.as_str()));
    let features = report["chosen"]["features"].as_array().expect("features");
    assert_eq!(
        features.iter().any(|feature| feature == "SHADER_F16"),
        context.features().contains(wgpu::Features::SHADER_F16)
    );
    assert_eq!(
        report["chosen"]["limits"]["max_buffer_size"],
        context.limits().max_buffer_size
    );
    let settings = &report["chosen"]["settings"];
    assert_eq!(settings["workgroup_size"], context.workgroup_size(), "{report}");
    assert_eq!(settings["transfer_piece_mib"], 64, "{report}");
    assert_eq!(settings["shader_checks"], "trusted", "{report}");
    assert_eq!(settings["gradient_order"], "forward", "{report}");
}

#[test]
fn bench_times_host_transfer_pieces_side_by_side() {
    if common::gpu().is_none() {
        return;
    }
    let arguments = |mibs: &'static str, device_only: bool| {
        let mut arguments = vec![
            "bench",
            "--rows",
            "300",
            "--classes",
            "2000",
            "--reps",
            "1",
            "--json",
            "--transfer-piece-mib",
            mibs,
            "--backend",
            "gpu",
        ];
        if device_only {
            arguments.push("--device-only");
        }
        arguments
    };
    // 2.4 MB of logits: three pieces of 1 MiB, or one of 64 MiB.
    let reports = stdout_json_lines(&xent(&arguments("1,64", false)));
    let pieces: Vec<&serde_json::Value> = reports.iter().map(|report| &report["transfer_piece_mib"]).collect();
    assert_eq!(pieces, [&serde_json::Value::from(1), &64.into()]);
    assert!(
        reports.iter().all(|report| report["max_abs_diff"] == 0.0),
        "{reports:?}"
    );
    assert_same_losses(&reports);
    assert_usage_error(&xent(&arguments("0", false)), "`0` is not a piece size in MiB");
    assert_usage_error(&xent(&arguments("64,64", false)), "--transfer-piece-mib lists 64 twice");
    assert_usage_error(&xent(&arguments("64", true)), "which --device-only skips");
}

/// A device-only bench of one small shape with `flag values`, side by side:
/// one JSON report per value, `key` naming each in order, all timed and all
/// with the same loss; `bad` is refused with `bad_error` and `twice` (a value
/// listed twice) with `twice_error`.
fn assert_bench_sweep(
    flag: &'static str,
    values: [&'static str; 2],
    key: &str,
    [bad, bad_error]: [&str; 2],
    twice: &'static str,
) {
    let bench = |settings: &str| {
        xent(&[
            "bench",
            "--rows",
            "4",
            "--classes",
            "20000",
            "--reps",
            "1",
            "--json",
            "--device-only",
            flag,
            settings,
            "--backend",
            "gpu",
        ])
    };
    let reports = stdout_json_lines(&bench(&values.join(",")));
    let labels: Vec<&serde_json::Value> = reports.iter().map(|report| &report[key]).collect();
    assert_eq!(labels, [&serde_json::Value::from(values[0]), &values[1].into()]);
    assert!(
        reports
            .iter()
            .all(|report| report["kernel_ms"].as_f64().is_some_and(|ms| ms > 0.0))
    );
    assert_same_losses(&reports);
    assert_usage_error(&bench(bad), bad_error);
    assert_usage_error(
        &bench(&format!("{twice},{twice}")),
        &format!("{flag} lists {twice} twice"),
    );
}

#[test]
fn bench_times_the_gradient_orders_side_by_side() {
    if common::gpu().is_none() {
        return;
    }
    assert_bench_sweep(
        "--gradient-order",
        ["forward", "backward"],
        "gradient_order",
        ["sideways", "`sideways` is not forward or backward"],
        "backward",
    );
}

#[test]
fn bench_times_the_shader_checks_side_by_side() {
    if common::gpu().is_none() {
        return;
    }
    assert_bench_sweep(
        "--shader-checks",
        ["trusted", "full"],
        "shader_checks",
        ["none", "`none` is not trusted or full"],
        "full",
    );
}
