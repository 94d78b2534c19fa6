//! `xent bench`: honest numbers for the fused loss + gradient and for the loss alone.
//!
//! Per shape and backend it reports the median wall time from host memory to host
//! memory (after warm-up), the achieved GB/s, the GPU-only time of the compute pass
//! from timestamp queries where the adapter has them, the device's own copy
//! bandwidth measured in the same run (and the loss's fraction of it), the same for
//! the forward pass alone, the GPU-vs-CPU speedup and the largest difference between
//! the backends. `--plot` draws throughput against size into an SVG file.
//! `--device-only` keeps the GPU's device-resident timings and copy ceilings and
//! leaves out the host-to-host calls and the transfer rates.

mod args;
mod cases;
mod copy;
mod cpu;
mod gpu;
mod pass_timer;
mod plot;
mod report;
mod timing;

use crate::failure::{Failure, Outcome};
use crate::outputs::Outputs;
use crate::progress;
use xent::Context;

pub use args::BenchArgs;
use args::{BenchBackends, Case, case_label, logits_bytes};
use cases::{check_requested, chosen_cases, gpu_skip_reason, host_memory_bytes, host_skip_reason};
use copy::DeviceCeilings;
use cpu::measure_cpu;
use gpu::{GpuSweeps, gpu_contexts, measure_gpu};
use plot::{draw_plot, plot_point, plot_title};
pub(crate) use report::context_settings;
use report::{print_header, report};
pub use timing::synthetic_batch;
use timing::{BenchLogits, HostTimings};

/// A backend's copy bandwidth and how it was measured.
#[derive(Clone, Debug)]
struct CopyBandwidth {
    /// Read + write bytes per second, in GB/s.
    gbps: f64,
    /// What was timed, for the report.
    method: String,
}

/// A GPU's other ceilings, from [`DeviceCeilings`].
#[derive(Clone, Copy, Debug)]
struct Transfers {
    builtin_copy_gbps: Option<f64>,
    /// The WGSL read kernel's GB/s (bytes read), the loss alone's ceiling.
    read_gbps: Option<f64>,
    /// Host→device and device→host GB/s; `None` with `--device-only`.
    host_transfer_gbps: Option<(f64, f64)>,
}

/// One backend's numbers on one shape.
struct Measurement {
    /// `gpu` or `cpu`.
    backend: &'static str,
    /// The GPU context's row-kernel workgroup size, when a sweep asked for it.
    workgroup_size: Option<u32>,
    /// The GPU context's row-split setting, when a sweep (`--row-split`) asked for it.
    row_split: Option<xent::RowSplit>,
    /// The GPU context's unaligned-f32 setting, when a sweep (`--unaligned-f32`) asked for it.
    unaligned_f32: Option<xent::UnalignedF32>,
    /// The GPU context's transfer piece in MiB, when a sweep (`--transfer-piece-mib`) asked for it.
    transfer_piece_mib: Option<u64>,
    /// The GPU context's gradient order, when a sweep (`--gradient-order`) asked for it.
    gradient_order: Option<xent::GradientOrder>,
    /// The GPU context's shader checks, when a sweep (`--shader-checks`) asked for it.
    shader_checks: Option<xent::ShaderChecks>,
    /// GPU only: whether the split-row kernel ran (else the fused row kernel).
    split_kernel: Option<bool>,
    /// The host-to-host calls: median ms of the fused loss + gradient and of the
    /// loss alone, host memory to host memory, and the fused call's gradient to
    /// compare the backends; `None` with `--device-only`.
    host: Option<HostTimings>,
    /// GPU time in ms of one fused call, device-resident, warm, back to back
    /// (timestamp queries; GPU only).
    kernel_ms: Option<f64>,
    /// The same for the loss alone.
    forward_kernel_ms: Option<f64>,
    /// The same backend's copy bandwidth (GPU: device-resident on 1 GiB buffers;
    /// CPU: a memcpy of the logits' bytes).
    copy: CopyBandwidth,
    /// GPU only: `copy_buffer_to_buffer` GB/s and the host→device and
    /// device→host transfer rates, the ceiling of the host-to-host calls.
    transfers: Option<Transfers>,
    /// The mean loss of the fused call: the host-to-host call's where timed,
    /// else the device-resident call's (read back once from its outputs).
    loss: f32,
}

/// Times every chosen shape on the chosen backends, prints the table or JSON lines,
/// and draws the plot if asked. A backend that fails on a shape does not stop the
/// others; the failures come back as the error at the end.
pub fn run(args: BenchArgs) -> Outcome {
    let plot_output = args
        .plot
        .as_deref()
        .map(|path| Outputs::plan(&[("--plot", path)], &[]))
        .transpose()?;
    check_gpu_options(&args)?;
    let gpus = match args.backend {
        BenchBackends::Gpu | BenchBackends::Both => gpu_contexts(GpuSweeps {
            workgroup_sizes: &args.workgroup_size,
            row_splits: &args.row_split,
            unaligned_f32: &args.unaligned_f32,
            transfer_piece_mib: &args.transfer_piece_mib,
            gradient_orders: &args.gradient_order,
            shader_checks: &args.shader_checks,
        })?,
        BenchBackends::Cpu => Vec::new(),
    };
    if args.device_only {
        check_timestamps(&gpus)?;
    }
    let ceilings: Vec<std::cell::OnceCell<DeviceCeilings>> = gpus.iter().map(|_| std::cell::OnceCell::new()).collect();
    let settings = Settings {
        gpus: &gpus,
        ceilings: &ceilings,
        sweep: args.workgroup_size.len() > 1,
        split_sweep: args.row_split.len() > 1,
        unaligned_sweep: args.unaligned_f32.len() > 1,
        piece_sweep: args.transfer_piece_mib.len() > 1,
        order_sweep: args.gradient_order.len() > 1,
        checks_sweep: args.shader_checks.len() > 1,
        run_cpu: args.backend != BenchBackends::Gpu,
        device_only: args.device_only,
        reps: args.reps,
        host_memory: host_memory_bytes(),
        json: args.json,
    };
    let first_gpu = gpus.first();
    let cases = chosen_cases(&args, first_gpu);
    if args.rows.is_some() || !args.shapes.is_empty() {
        for &case in &cases {
            check_requested(&settings, case)?;
        }
    }
    if !args.json {
        print_header(&gpus, settings.run_cpu, settings.device_only);
    }
    let mut failures = Vec::new();
    let mut points = Vec::new();
    progress::start(cases.len(), !args.json);
    for case in cases {
        progress::case(&case_label(case));
        let measurements = measure_case(&settings, case, &mut failures);
        progress::suspend(|| report(case, &measurements, first_gpu, args.json));
        progress::advance();
        points.extend(measurements.iter().map(|measurement| plot_point(case, measurement)));
    }
    progress::finish();
    if !args.json {
        print_ceilings(&gpus, &ceilings);
    }
    if let (Some(path), Some(mut outputs)) = (&args.plot, plot_output) {
        let title = plot_title(first_gpu, settings.run_cpu);
        let svg = draw_plot(&title, &points)?;
        outputs.stage("--plot", |out| out.write_all(svg.as_bytes()))?;
        outputs.commit()?;
        note(args.json, &format!("plot written to {}", path.display()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Machine(failures.join("; ")))
    }
}

/// Refuses the GPU's options on a run that does not time the GPU, and
/// `--device-only` on one that also times the CPU (whose calls are host to host).
fn check_gpu_options(args: &BenchArgs) -> Outcome {
    if args.backend == BenchBackends::Cpu {
        let gpu_sweeps = [
            (
                args.workgroup_size.is_empty(),
                "--workgroup-size sizes the GPU's kernels",
            ),
            (args.row_split.is_empty(), "--row-split chooses the GPU's kernels"),
            (
                args.unaligned_f32.is_empty(),
                "--unaligned-f32 chooses the GPU's kernels",
            ),
            (
                args.transfer_piece_mib.is_empty(),
                "--transfer-piece-mib sizes the GPU's host transfers",
            ),
            (
                args.gradient_order.is_empty(),
                "--gradient-order chooses the GPU's kernels",
            ),
            (
                args.shader_checks.is_empty(),
                "--shader-checks compiles the GPU's kernels",
            ),
        ];
        if let Some((_, what)) = gpu_sweeps.iter().find(|(unasked, _)| !unasked) {
            return Err(format!("{what}; it needs --backend gpu or both").into());
        }
    }
    if args.device_only && args.backend != BenchBackends::Gpu {
        return Err("--device-only times the GPU without host-to-host calls; it needs --backend gpu".into());
    }
    if args.device_only && !args.transfer_piece_mib.is_empty() {
        return Err("--transfer-piece-mib sizes the host-to-host calls, which --device-only skips".into());
    }
    Ok(())
}

/// `--device-only` times with timestamp queries alone: refused where the adapter has none.
fn check_timestamps(gpus: &[Context]) -> Outcome {
    match gpus
        .iter()
        .find(|context| !context.features().contains(wgpu::Features::TIMESTAMP_QUERY))
    {
        Some(context) => Err(format!(
            "--device-only times the GPU with timestamp queries, which {} lacks (TIMESTAMP_QUERY)",
            context.adapter_info().name
        )
        .into()),
        None => Ok(()),
    }
}

/// What one `xent bench` run measures, and where.
struct Settings<'a> {
    /// The GPU contexts timed (one per swept workgroup size), empty when the GPU is not.
    gpus: &'a [Context],
    /// Per context, its copy bandwidth and transfer rates, measured on first use.
    ceilings: &'a [std::cell::OnceCell<DeviceCeilings>],
    /// Whether the contexts differ by workgroup size (`--workgroup-size` with several).
    sweep: bool,
    /// Whether the contexts differ by row-split setting (`--row-split` with several).
    split_sweep: bool,
    /// Whether the contexts differ by unaligned-f32 setting (`--unaligned-f32` with several).
    unaligned_sweep: bool,
    /// Whether the contexts differ by transfer piece (`--transfer-piece-mib` with several).
    piece_sweep: bool,
    /// Whether the contexts differ by gradient order (`--gradient-order` with several).
    order_sweep: bool,
    /// Whether the contexts differ by shader checks (`--shader-checks` with several).
    checks_sweep: bool,
    /// Whether the CPU is timed.
    run_cpu: bool,
    /// GPU only, without the host-to-host calls and the transfer rates (`--device-only`).
    device_only: bool,
    /// Timed repetitions per timing.
    reps: u32,
    /// The host's RAM, where known.
    host_memory: Option<u64>,
    /// JSON lines instead of a table.
    json: bool,
}

/// Measures every backend that fits on `shape`; a backend that fails is
/// added to `failures` and left out, so one bad shape does not hide the others.
fn measure_case(settings: &Settings<'_>, case: Case, failures: &mut Vec<String>) -> Vec<Measurement> {
    let json = settings.json;
    let shape = case.shape;
    let label = case_label(case);
    let Some(logits_bytes) = logits_bytes(case) else {
        note(json, &format!("{label}: skipped, N×C overflows"));
        return Vec::new();
    };
    let measurements = settings.gpus.len() + usize::from(settings.run_cpu);
    if let Some(reason) = host_skip_reason(case, logits_bytes, settings.host_memory, measurements) {
        note(json, &format!("{label}: skipped on both backends, {reason}"));
        return Vec::new();
    }
    let (logits, targets) = synthetic_batch(shape);
    let mut logits = BenchLogits::new(logits, case.element);
    // In place, every backend after the first gets the logits generated afresh.
    let mut logits_used = false;
    let mut fresh_logits = |logits: &mut BenchLogits| {
        if case.in_place && logits_used {
            // Freed before the new ones are made, so that one copy lives at a time.
            *logits = BenchLogits::F32(Vec::new());
            *logits = BenchLogits::new(synthetic_batch(shape).0, case.element);
        }
        logits_used = true;
    };
    let mut measurements = Vec::new();
    let mut keep = |backend: &str, result: Result<Measurement, String>| match result {
        Ok(measurement) => measurements.push(measurement),
        // Reported once, as the command's one `error:` line at the end.
        Err(error) => failures.push(format!("{backend} failed on {label}: {error}")),
    };
    for (context, ceilings) in settings.gpus.iter().zip(settings.ceilings) {
        match gpu_skip_reason(context, logits_bytes, settings.host_memory, settings.gpus.len()) {
            Some(reason) => note(json, &format!("{label}: gpu skipped, {reason}")),
            None => {
                fresh_logits(&mut logits);
                let measurement = device_ceilings(context, ceilings, settings.reps).and_then(|ceilings| {
                    let reps = settings.reps;
                    measure_gpu(
                        context,
                        ceilings,
                        &mut logits,
                        &targets,
                        case,
                        reps,
                        settings.device_only,
                    )
                });
                let workgroup_size = settings.sweep.then(|| context.workgroup_size());
                let row_split = settings.split_sweep.then(|| context.row_split());
                let unaligned_f32 = settings.unaligned_sweep.then(|| context.unaligned_f32());
                let transfer_piece_mib = settings.piece_sweep.then(|| context.transfer_piece_bytes() >> 20);
                let gradient_order = settings.order_sweep.then(|| context.gradient_order());
                let shader_checks = settings.checks_sweep.then(|| context.shader_checks());
                keep(
                    "gpu",
                    measurement.map(|measurement| Measurement {
                        workgroup_size,
                        row_split,
                        unaligned_f32,
                        transfer_piece_mib,
                        gradient_order,
                        shader_checks,
                        ..measurement
                    }),
                );
            }
        }
    }
    if settings.run_cpu {
        fresh_logits(&mut logits);
        keep("cpu", measure_cpu(&mut logits, &targets, case, settings.reps));
    }
    measurements
}

/// Under the table: each context's copy bandwidths and transfer rates, where measured.
fn print_ceilings(gpus: &[Context], ceilings: &[std::cell::OnceCell<DeviceCeilings>]) {
    for (context, ceilings) in gpus.iter().zip(ceilings) {
        let Some(ceilings) = ceilings.get() else {
            continue;
        };
        let figure = |gbps: Option<f64>| gbps.map_or_else(|| "-".to_owned(), |gbps| format!("{gbps:.1}"));
        let (builtin, read) = (figure(ceilings.builtin_copy_gbps), figure(ceilings.read_gbps));
        let transfers = ceilings.measured_transfer_rates().map_or_else(
            || "host<->device rates not measured".to_owned(),
            |(up, down)| format!("host->device {up:.2} GB/s, device->host {down:.2} GB/s"),
        );
        println!(
            "gpu/{} ceilings: copy kernel {:.1} GB/s, copy_buffer_to_buffer {builtin} GB/s (read + write), read kernel \
             {read} GB/s (read); {transfers} ({})",
            context.workgroup_size(),
            ceilings.copy.gbps,
            ceilings.copy.method
        );
    }
}

/// The context's ceilings, measured the first time a shape needs them.
fn device_ceilings<'a>(
    context: &Context,
    cell: &'a std::cell::OnceCell<DeviceCeilings>,
    reps: u32,
) -> Result<&'a DeviceCeilings, String> {
    if cell.get().is_none() {
        let measured = DeviceCeilings::measure(context, reps)?;
        let _ = cell.set(measured);
    }
    cell.get()
        .ok_or_else(|| "the copy bandwidth was not measured".to_owned())
}

/// Prints a note: on stdout under the table, on stderr in JSON mode.
fn note(json: bool, message: &str) {
    progress::suspend(|| {
        if json {
            eprintln!("note: {message}");
        } else {
            println!("note: {message}");
        }
    });
}
