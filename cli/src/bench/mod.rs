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
mod knobs;
mod out;
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
use gpu::{gpu_contexts, measure_gpu};
pub(crate) use knobs::context_choices;
use knobs::{Choice, Knob, Sweep};
use out::{err_out, out};
use plot::{draw_plot, plot_point, plot_title};
use report::{print_header, report, swept_label};
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

/// The split-row kernel's slices in one call, and those its repair dispatch finished.
#[derive(Clone, Copy, Debug)]
struct RepairedSlices {
    slices: u64,
    repaired: u32,
}

/// One backend's numbers on one shape.
struct Measurement {
    /// `gpu` or `cpu`.
    backend: &'static str,
    /// GPU only: its context's value of every knob, in [`Knob::ALL`]'s order
    /// (empty on the CPU).
    settings: Vec<Choice>,
    /// Its context's values of the knobs this run sweeps (several values given),
    /// which tell the contexts apart in its device label.
    swept: Vec<Choice>,
    /// GPU only: whether the split-row kernel ran (else the fused row kernel).
    split_kernel: Option<bool>,
    /// GPU only, where the split-row kernel ran device-resident: the call's
    /// slices (rows × slices per row) and how many of them the last timed fused
    /// call left to the repair dispatch (`DeviceOutputs::repaired_slices`).
    repaired_slices: Option<RepairedSlices>,
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
        BenchBackends::Gpu | BenchBackends::Both => gpu_contexts(&args.sweeps())?,
        BenchBackends::Cpu => Vec::new(),
    };
    if args.device_only {
        check_timestamps(&gpus)?;
    }
    let ceilings: Vec<std::cell::OnceCell<DeviceCeilings>> = gpus.iter().map(|_| std::cell::OnceCell::new()).collect();
    let swept: Vec<Knob> = args
        .sweeps()
        .iter()
        .filter(|sweep| sweep.values.len() > 1)
        .map(|sweep| sweep.knob)
        .collect();
    let device_width = gpus
        .iter()
        .map(|context| swept_label("gpu", &swept_choices(&swept, context)).len())
        .fold(DEVICE_COLUMN_WIDTH, usize::max);
    let settings = Settings {
        device_width,
        gpus: &gpus,
        ceilings: &ceilings,
        swept,
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
        print_header(&gpus, settings.run_cpu, settings.device_only, settings.device_width);
    }
    let mut failures = Vec::new();
    let mut points = Vec::new();
    progress::start(cases.len(), !args.json);
    for case in cases {
        progress::case(&case_label(case));
        let measurements = measure_case(&settings, case, &mut failures);
        progress::suspend(|| report(case, &measurements, first_gpu, args.json, settings.device_width));
        progress::advance();
        points.extend(measurements.iter().map(|measurement| plot_point(case, measurement)));
    }
    progress::finish();
    if !args.json {
        print_ceilings(&gpus, &ceilings, &settings.swept);
    }
    // A report that could not be written fails the command before the plot replaces anything.
    out::finish()?;
    if let (Some(path), Some(mut outputs)) = (&args.plot, plot_output) {
        let title = plot_title(first_gpu, settings.run_cpu);
        let svg = draw_plot(&title, &points)?;
        outputs.stage("--plot", |out| out.write_all(svg.as_bytes()))?;
        outputs.commit_and(|| {
            note(args.json, &format!("plot written to {}", path.display()));
            out::finish()
        })?;
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
    let asked = args.sweeps().into_iter().filter(|sweep| !sweep.values.is_empty());
    for Sweep { knob, .. } in asked {
        if args.backend == BenchBackends::Cpu {
            return Err(format!("{} {}; it needs --backend gpu or both", knob.flag(), knob.purpose()).into());
        }
        if args.device_only && knob.host_calls_only() {
            return Err(format!(
                "{} sizes the host-to-host calls, which --device-only skips",
                knob.flag()
            )
            .into());
        }
    }
    if args.device_only && args.backend != BenchBackends::Gpu {
        return Err("--device-only times the GPU without host-to-host calls; it needs --backend gpu".into());
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
    /// The knobs whose values tell the contexts apart (flags given several values).
    swept: Vec<Knob>,
    /// The width of the table's `dev` column: its longest label.
    device_width: usize,
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
                let swept = swept_choices(&settings.swept, context);
                keep(
                    "gpu",
                    measurement.map(|measurement| Measurement { swept, ..measurement }),
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
fn print_ceilings(gpus: &[Context], ceilings: &[std::cell::OnceCell<DeviceCeilings>], swept: &[Knob]) {
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
        let swept = swept_choices(swept, context);
        out!(
            "{} ceilings: copy kernel {:.1} GB/s, copy_buffer_to_buffer {builtin} GB/s (read + write), read kernel \
             {read} GB/s (read); {transfers} ({})",
            swept_label("gpu", &swept),
            ceilings.copy.gbps,
            ceilings.copy.method
        );
    }
}

/// The table's `dev` column is at least this wide.
const DEVICE_COLUMN_WIDTH: usize = 8;

/// `context`'s values of the `swept` knobs.
fn swept_choices(swept: &[Knob], context: &Context) -> Vec<Choice> {
    swept.iter().map(|knob| knob.of(context)).collect()
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
            err_out!("note: {message}");
        } else {
            out!("note: {message}");
        }
    });
}
