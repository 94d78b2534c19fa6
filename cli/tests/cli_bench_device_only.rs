//! `xent bench --device-only`: the GPU's device-resident timings without the
//! host-to-host calls, its loss against the f64 reference of the bench's own
//! logits, `null`/`-` for what was not measured, and the refusal without
//! `--backend gpu`.

mod common;

use common::cli::{assert_usage_error, stdout_json_lines, xent};

/// The JSON fields measured by the host-to-host calls (or derived from them).
const HOST_FIELDS: [&str; 8] = [
    "median_ms",
    "forward_ms",
    "gbps",
    "forward_gbps",
    "speedup_vs_cpu",
    "max_abs_diff",
    "upload_gbps",
    "download_gbps",
];

/// Whether the test adapter has timestamp queries, which `--device-only` needs;
/// `None` only when `XENT_ALLOW_NO_GPU=1` and there is no adapter.
fn timestamps() -> Option<bool> {
    common::gpu().map(|context| context.features().contains(wgpu::Features::TIMESTAMP_QUERY))
}

/// `xent bench --rows R --classes C --reps 1 --backend gpu` with `extra` appended.
fn bench_gpu(rows: usize, classes: usize, extra: &[&str]) -> std::process::Output {
    let (rows, classes) = (rows.to_string(), classes.to_string());
    let mut args = vec![
        "bench",
        "--rows",
        &rows,
        "--classes",
        &classes,
        "--reps",
        "1",
        "--backend",
        "gpu",
    ];
    args.extend(extra);
    xent(&args)
}

/// The f64 reference mean loss of the logits and targets `xent bench` generates for the shape.
fn reference_loss(rows: usize, classes: usize) -> f64 {
    let (logits, targets) = xent_cli::synthetic_batch(xent::Shape::new(rows, classes));
    common::expected(&logits, &targets, classes).mean
}

fn relative_difference(value: f64, expected: f64) -> f64 {
    (value - expected).abs() / expected.abs()
}

#[test]
fn device_only_reports_kernel_times_and_the_reference_loss_without_host_calls() {
    let Some(timestamps) = timestamps() else {
        return;
    };
    let (rows, classes) = (8, 3000);
    let output = bench_gpu(rows, classes, &["--device-only", "--json", "--row-split", "off,1"]);
    if !timestamps {
        assert_usage_error(&output, "timestamp queries");
        return;
    }
    let reports = stdout_json_lines(&output);
    let splits: Vec<&serde_json::Value> = reports.iter().map(|report| &report["split_kernel"]).collect();
    assert_eq!(splits, [false, true], "the fused and the split kernel: {reports:?}");
    // The split kernel's slices (workgroup size × 1 vec4 × 4 logits each) and
    // those its repair dispatch finished; nothing for the fused kernel.
    assert!(reports[0]["split_slices"].is_null() && reports[0]["repaired_slices"].is_null());
    let slice = reports[1]["workgroup_size"].as_u64().expect("workgroup size") * 4;
    let slices = rows as u64 * (classes as u64).div_ceil(slice);
    assert_eq!(reports[1]["split_slices"], slices, "{}", reports[1]);
    let repaired = reports[1]["repaired_slices"].as_u64();
    assert!(repaired.is_some_and(|repaired| repaired <= slices), "{}", reports[1]);
    let expected = reference_loss(rows, classes);
    for report in &reports {
        common::cli::assert_machine_fields(report, "gpu");
        assert_eq!(report["host_timed"], false, "{report}");
        for field in HOST_FIELDS {
            assert!(report[field].is_null(), "{field}: {report}");
        }
        for field in [
            "kernel_ms",
            "forward_kernel_ms",
            "kernel_gbps",
            "copy_gbps",
            "fraction_of_copy",
            "read_gbps",
            "forward_fraction_of_read",
        ] {
            assert!(
                report[field].as_f64().is_some_and(|value| value > 0.0),
                "{field}: {report}"
            );
        }
        assert_eq!(report["fraction_basis"], "kernel", "{report}");
        // The read kernel really reads every byte: a kernel the compiler emptied
        // (or a dispatch that never ran) shows thousands of times the copy's rate.
        let (read, copy) = (report["read_gbps"].as_f64(), report["copy_gbps"].as_f64());
        assert!(
            read.zip(copy).is_some_and(|(read, copy)| read < 4.0 * copy),
            "read {read:?} GB/s against copy {copy:?} GB/s: {report}"
        );
        let loss = report["loss"].as_f64().expect("loss");
        assert!(
            relative_difference(loss, expected) <= 1e-5,
            "loss {loss} against the reference {expected}: {report}"
        );
    }
    // The same shape with the host calls: timed, and the same loss.
    let hosted = stdout_json_lines(&bench_gpu(rows, classes, &["--json"]));
    assert_eq!(hosted.len(), 1, "{hosted:?}");
    assert_eq!(hosted[0]["host_timed"], true, "{}", hosted[0]);
    assert!(
        hosted[0]["median_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{}",
        hosted[0]
    );
    let hosted_loss = hosted[0]["loss"].as_f64().expect("loss");
    let device_loss = reports[0]["loss"].as_f64().expect("loss");
    assert!(
        relative_difference(device_loss, hosted_loss) <= 1e-6,
        "device-only {device_loss} against host-to-host {hosted_loss}"
    );
}

/// The columns of a table row of `16x100`: shape, device, fused ms, GB/s, kern
/// ms, kern GB/s, copy GB/s, %copy, fwd ms, GB/s, fwd kern, %read, speedup, max|diff|.
fn table_row(stdout: &str) -> Vec<String> {
    let row = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("16x100 "))
        .unwrap_or_else(|| panic!("no 16x100 row: {stdout}"));
    row.split_whitespace().map(str::to_owned).collect()
}

/// The table's host columns: fused ms and GB/s, fwd ms and GB/s, speedup, max|diff|.
const HOST_COLUMNS: [usize; 6] = [2, 3, 8, 9, 12, 13];

#[test]
fn device_only_table_shows_dashes_for_host_columns_and_the_plot_draws_kernel_times() {
    if timestamps() != Some(true) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("plot.svg");
    let plot_arg = plot.to_str().expect("utf-8 path");
    let output = bench_gpu(16, 100, &["--device-only", "--plot", plot_arg]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let columns = table_row(&stdout);
    assert_eq!(columns.len(), 14, "{columns:?}");
    for column in HOST_COLUMNS {
        assert_eq!(columns[column], "-", "column {column}: {columns:?}");
    }
    for column in [4, 7, 10, 11] {
        let value: f64 = columns[column]
            .parse()
            .unwrap_or_else(|_| panic!("column {column}: {columns:?}"));
        assert!(value > 0.0, "column {column}: {columns:?}");
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("gpu f32 compute pass alone"), "the kernel line is drawn");
    assert!(!svg.contains("end to end"), "no end-to-end line without host calls");
    // With the host calls, the same columns hold numbers.
    let hosted = bench_gpu(16, 100, &[]);
    assert!(hosted.status.success(), "{}", String::from_utf8_lossy(&hosted.stderr));
    let columns = table_row(&String::from_utf8_lossy(&hosted.stdout));
    for column in [2, 3, 8, 9] {
        assert!(columns[column].parse::<f64>().is_ok(), "column {column}: {columns:?}");
    }
}

#[test]
fn device_only_needs_backend_gpu() {
    for backend in [vec!["--backend", "cpu"], vec!["--backend", "both"], vec![]] {
        let mut args = vec!["bench", "--rows", "16", "--classes", "100", "--device-only", "--json"];
        args.extend(&backend);
        assert_usage_error(&xent(&args), "--device-only");
    }
}
