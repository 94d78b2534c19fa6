//! Report: the throughputs derived from a measurement, the header and rows of the
//! table, and the JSON lines.

use serde_json::json;
use xent::{Context, Cpu};

use super::Measurement;
use super::args::{Case, case_label, logits_bytes};
use super::cases::gigabytes;
use super::cpu::{CPU_COPY_MAX_BYTES, MIN_COPY_PART_ELEMENTS, cpu_model};
use super::knobs::{Choice, Knob};
use super::out::out;
use super::timing::gbps;
use crate::report;

/// Throughputs derived from a [`Measurement`]; the end-to-end ones are `None`
/// where the host-to-host calls were not timed (`--device-only`).
pub(super) struct Figures {
    /// Fused, end to end: read + write of the logits.
    pub(super) gbps: Option<f64>,
    /// Fused, compute pass alone.
    pub(super) kernel_gbps: Option<f64>,
    /// Fused GB/s over copy GB/s: of the kernel time where there is one (the
    /// device-only figure to hold against a device-only copy), else end to end.
    fraction_of_copy: Option<f64>,
    /// `kernel` or `end_to_end`: which GB/s `fraction_of_copy` divides.
    fraction_basis: Option<&'static str>,
    /// Forward only, end to end: one read of the logits.
    forward_gbps: Option<f64>,
    /// Forward only, compute pass alone.
    forward_kernel_gbps: Option<f64>,
    /// Forward GB/s (kernel where measured) over copy GB/s, the proxy for read bandwidth.
    forward_fraction_of_copy: Option<f64>,
    /// The loss alone's GB/s over the read kernel's, where measured.
    forward_fraction_of_read: Option<f64>,
    /// CPU time ÷ GPU time of the fused call, host to host (GPU rows only).
    speedup_vs_cpu: Option<f64>,
}

/// Throughputs and ratios of one measurement; `cpu_ms` is the CPU's fused time on
/// the same shape, if it ran.
pub(super) fn figures(case: Case, measurement: &Measurement, cpu_ms: Option<f64>) -> Figures {
    let read_bytes = logits_bytes(case).unwrap_or(0);
    let fused_bytes = 2 * read_bytes;
    let host = measurement.host.as_ref();
    let gbps_fused = host.map(|host| gbps(fused_bytes, host.median_ms));
    let kernel_gbps = measurement.kernel_ms.map(|ms| gbps(fused_bytes, ms));
    let forward_gbps = host.map(|host| gbps(read_bytes, host.forward_ms));
    let forward_kernel_gbps = measurement.forward_kernel_ms.map(|ms| gbps(read_bytes, ms));
    let of_copy = |gbps: Option<f64>| gbps.map(|gbps| gbps / measurement.copy.gbps);
    Figures {
        gbps: gbps_fused,
        kernel_gbps,
        fraction_of_copy: of_copy(kernel_gbps.or(gbps_fused)),
        fraction_basis: match (kernel_gbps, gbps_fused) {
            (Some(_), _) => Some("kernel"),
            (None, Some(_)) => Some("end_to_end"),
            (None, None) => None,
        },
        forward_gbps,
        forward_kernel_gbps,
        forward_fraction_of_copy: of_copy(forward_kernel_gbps.or(forward_gbps)),
        forward_fraction_of_read: measurement
            .transfers
            .and_then(|transfers| transfers.read_gbps)
            .zip(forward_kernel_gbps)
            .map(|(read, forward)| forward / read),
        speedup_vs_cpu: match (measurement.backend, cpu_ms, host) {
            ("gpu", Some(cpu_ms), Some(host)) => Some(cpu_ms / host.median_ms),
            _ => None,
        },
    }
}

/// Prints the devices, how copy bandwidth is measured, and the table's header.
/// `device_width` is the width of the `dev` column (its longest label).
pub(super) fn print_header(gpus: &[Context], run_cpu: bool, device_only: bool, device_width: usize) {
    if let Some(context) = gpus.first() {
        out!("{}", xent::Backend::describe(context));
        if let Some(warning) = report::software_warning(context) {
            out!("  {warning}");
        }
        for knob in Knob::ALL {
            let values: Vec<String> = gpus.iter().map(|context| knob.of(context).text()).collect();
            out!("  {}: {}", knob.label(), values.join(", "));
        }
        let timestamps = context.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        out!(
            "  gpu kern and copy: {}",
            if timestamps {
                "every buffer on the device, >= 200 ms of warm-up calls, then back-to-back calls in consecutive \
                 submissions between two timestamps (per call = span / calls); copy on 1 GiB buffers (256 MiB on a \
                 software adapter), measured once per context"
            } else {
                "no TIMESTAMP_QUERY: copy timed by the wall time of submit + wait, no kern column"
            }
        );
    }
    if run_cpu {
        out!("{} on {}", xent::Backend::describe(&Cpu), cpu_model());
        out!(
            "  cpu copy: memcpy of the logits' bytes (at most {}) split over up to {} threads (rayon, >= {} elements \
             each), wall time",
            gigabytes(CPU_COPY_MAX_BYTES as u64),
            rayon::current_num_threads(),
            MIN_COPY_PART_ELEMENTS
        );
    }
    out!(
        "fused = loss + gradient, GB/s = 2×N×C×(4, or 2 for f16/bf16) bytes; fwd = loss alone, GB/s = N×C×(4 or 2) \
         bytes; \
         end to end = host memory to host memory;\nkern = one call, device-resident, warm, back to back (timestamps); \
         copy GB/s = read + write bytes; %copy = kern GB/s (else end to end) ÷ copy GB/s; fwd %read = fwd kern GB/s ÷ \
         the read kernel's GB/s (bytes read; where timed, else fwd GB/s ÷ copy GB/s)"
    );
    if device_only {
        out!(
            "--device-only: no host-to-host calls and no transfer rates (end-to-end columns `-`); the loss is the \
             device-resident fused call's"
        );
    }
    out!(
        "{:>22} {:>device_width$} {:>10} {:>7} {:>10} {:>8} {:>8} {:>6} {:>10} {:>7} {:>10} {:>6} {:>8} {:>9}",
        "shape",
        "dev",
        "fused ms",
        "GB/s",
        "kern ms",
        "kern GB/s",
        "copy GB/s",
        "%copy",
        "fwd ms",
        "GB/s",
        "fwd kern",
        "%read",
        "speedup",
        "max|diff|"
    );
}

/// Prints each of `measurements` of `case` as a table row (its `dev` column
/// `device_width` wide) or a JSON line.
pub(super) fn report(case: Case, measurements: &[Measurement], gpu: Option<&Context>, json: bool, device_width: usize) {
    let cpu_ms = measurements
        .iter()
        .find(|m| m.backend == "cpu")
        .and_then(|m| m.host.as_ref())
        .map(|host| host.median_ms);
    let max_diff = largest_difference(case, measurements);
    for measurement in measurements {
        let figures = figures(case, measurement, cpu_ms);
        if json {
            let gpu = gpu.filter(|_| measurement.backend == "gpu");
            print_json(case, measurement, gpu, &figures, max_diff);
        } else {
            print_row(case, measurement, &figures, max_diff, device_width);
        }
    }
}

/// The largest difference of every other measurement from the first, loss and
/// gradient of the host-to-host calls; `None` with one measurement, in place
/// (each call overwrote the previous gradient), or without host calls.
fn largest_difference(case: Case, measurements: &[Measurement]) -> Option<f64> {
    let [first, others @ ..] = measurements else {
        return None;
    };
    if others.is_empty() || case.in_place {
        return None;
    }
    fn gradient(measurement: &Measurement) -> Option<&[f32]> {
        measurement.host.as_ref().map(|host| &host.gradient[..])
    }
    let first_gradient = gradient(first)?;
    others.iter().try_fold(0.0, |largest: f64, other| {
        let loss_difference = (f64::from(first.loss) - f64::from(other.loss)).abs();
        let difference = max_abs_difference(first_gradient, gradient(other)?).max(loss_difference);
        Some(largest.max(difference))
    })
}

/// One JSON line: the case, where it ran (backend, adapter, xent's version), and
/// its numbers. `median_ms`/`forward_ms` are host memory to host memory (`null`,
/// with the other end-to-end figures, where `host_timed` is false);
/// `kernel_ms`/`forward_kernel_ms` (when `device_resident`) the GPU time of one
/// call with every buffer on the device, warm, back to back (timestamps); the
/// ceilings: `copy_gbps` (WGSL copy kernel), `copy_builtin_gbps`
/// (`copy_buffer_to_buffer`), `read_gbps` (WGSL read kernel, bytes read; the
/// loss alone's ceiling, `forward_fraction_of_read` its kernel's share of it),
/// `upload_gbps`/`download_gbps` (host↔device); where the split-row kernel
/// ran, `split_slices` (rows × slices per row) and `repaired_slices` (those the
/// last timed fused call left to its repair dispatch, which reads them again).
fn print_json(case: Case, measurement: &Measurement, gpu: Option<&Context>, figures: &Figures, max_diff: Option<f64>) {
    let host = measurement.host.as_ref();
    let host_transfer_gbps = measurement.transfers.and_then(|transfers| transfers.host_transfer_gbps);
    let mut fields = json!({
            "rows": case.shape.rows,
            "classes": case.shape.classes,
            "dtype": case.element.name(),
            "in_place": case.in_place,
            "device_resident": measurement.kernel_ms.is_some(),
            "split_kernel": measurement.split_kernel,
            "split_slices": measurement.repaired_slices.map(|slices| slices.slices),
            "repaired_slices": measurement.repaired_slices.map(|slices| slices.repaired),
            "host_timed": host.is_some(),
            "median_ms": host.map(|host| host.median_ms),
            "gbps": figures.gbps,
            "kernel_ms": measurement.kernel_ms,
            "kernel_gbps": figures.kernel_gbps,
            "copy_gbps": measurement.copy.gbps,
            "copy_builtin_gbps": measurement.transfers.and_then(|transfers| transfers.builtin_copy_gbps),
            "upload_gbps": host_transfer_gbps.map(|(upload, _)| upload),
            "download_gbps": host_transfer_gbps.map(|(_, download)| download),
            "copy_method": measurement.copy.method,
            "fraction_of_copy": figures.fraction_of_copy,
            "fraction_basis": figures.fraction_basis,
            "forward_ms": host.map(|host| host.forward_ms),
            "forward_gbps": figures.forward_gbps,
            "forward_kernel_ms": measurement.forward_kernel_ms,
            "forward_kernel_gbps": figures.forward_kernel_gbps,
            "forward_fraction_of_copy": figures.forward_fraction_of_copy,
            "read_gbps": measurement.transfers.and_then(|transfers| transfers.read_gbps),
            "forward_fraction_of_read": figures.forward_fraction_of_read,
            "speedup_vs_cpu": figures.speedup_vs_cpu,
            "max_abs_diff": max_diff,
            "loss": measurement.loss,
    });
    if let serde_json::Value::Object(fields) = &mut fields {
        // Every knob, `null` on the CPU and, for the host transfers' knob, where
        // no host-to-host call was timed.
        for knob in Knob::ALL {
            let value = measurement
                .settings
                .iter()
                .find(|choice| choice.knob() == knob)
                .filter(|_| host.is_some() || !knob.host_calls_only());
            fields.insert(
                knob.key().to_owned(),
                value.map_or(serde_json::Value::Null, |choice| choice.json()),
            );
        }
    }
    out!("{}", report::with_machine(fields, gpu));
}

/// One table row; what was not measured shows `-`.
fn print_row(case: Case, measurement: &Measurement, figures: &Figures, max_diff: Option<f64>, device_width: usize) {
    let optional = |value: Option<f64>, precision: usize| {
        value.map_or_else(|| "-".to_string(), |value| format!("{value:.precision$}"))
    };
    let percent = |fraction: Option<f64>| optional(fraction.map(|fraction| fraction * 100.0), 1);
    let host = measurement.host.as_ref();
    out!(
        "{:>22} {:>device_width$} {:>10} {:>7} {:>10} {:>9} {:>9.2} {:>6} {:>10} {:>7} {:>10} {:>6} {:>8} {:>9}",
        case_label(case),
        device_label(measurement),
        optional(host.map(|host| host.median_ms), 3),
        optional(figures.gbps, 2),
        optional(measurement.kernel_ms, 3),
        optional(figures.kernel_gbps, 2),
        measurement.copy.gbps,
        percent(figures.fraction_of_copy),
        optional(host.map(|host| host.forward_ms), 3),
        optional(figures.forward_gbps, 2),
        optional(measurement.forward_kernel_ms, 3),
        percent(figures.forward_fraction_of_read.or(figures.forward_fraction_of_copy)),
        optional(figures.speedup_vs_cpu, 2),
        max_diff.map_or_else(|| "-".to_string(), |diff| format!("{diff:.1e}")),
    );
}

/// `gpu`, `cpu`, or in a sweep the backend and its context's swept values:
/// `gpu/256` (workgroup size), `gpu/256/split4` (and row split), `gpu/vectors`
/// (unaligned f32), `gpu/piece64` (transfer pieces), `gpu/backward` (gradient
/// order), `gpu/full` (shader checks).
pub(super) fn device_label(measurement: &Measurement) -> String {
    swept_label(measurement.backend, &measurement.swept)
}

/// `backend` followed by the tags of `swept`, joined by `/`.
pub(super) fn swept_label(backend: &str, swept: &[Choice]) -> String {
    std::iter::once(backend.to_owned())
        .chain(swept.iter().map(|choice| choice.tag()))
        .collect::<Vec<_>>()
        .join("/")
}

fn max_abs_difference(first: &[f32], second: &[f32]) -> f64 {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max)
}
