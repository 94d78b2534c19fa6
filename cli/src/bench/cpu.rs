//! CPU: the CPU backend's timings, its copy bandwidth (a memcpy split over the rayon
//! pool) and its model name.

use rayon::prelude::*;
use xent::Cpu;

use super::args::{Case, F32_BYTES};
use super::timing::{BenchLogits, gbps, median_wall_ms};
use super::{CopyBandwidth, Measurement};
use crate::progress;

/// The CPU backend's timings and its copy bandwidth on a buffer of the logits' size.
pub(super) fn measure_cpu(
    logits: &mut BenchLogits,
    targets: &[i64],
    case: Case,
    reps: u32,
) -> Result<Measurement, String> {
    let copy = cpu_copy_bandwidth(logits.bytes(), reps);
    let host = logits.time_host_calls(&Cpu, targets, case.shape, reps, case.in_place)?;
    Ok(Measurement {
        backend: "cpu",
        settings: Vec::new(),
        swept: Vec::new(),
        split_kernel: None,
        repaired_slices: None,
        kernel_ms: None,
        forward_kernel_ms: None,
        copy,
        transfers: None,
        loss: host.loss,
        host: Some(host),
    })
}

/// Elements per thread of the CPU copy at least: the CPU backend's smallest task
/// (`MIN_TASK_ELEMENTS` in `src/cpu`), so small copies stay on one thread as the
/// loss does.
pub(super) const MIN_COPY_PART_ELEMENTS: usize = 1 << 16;

/// Bytes the CPU copy moves at most: far beyond every cache, so larger copies run
/// at the same DRAM bandwidth, and the bench's memory stays that of the logits.
pub(super) const CPU_COPY_MAX_BYTES: usize = 1 << 30;

/// Copies the bytes of `source` (the first [`CPU_COPY_MAX_BYTES`]) into a fresh
/// buffer in one contiguous part per thread of the CPU backend's rayon pool (one
/// part below [`MIN_COPY_PART_ELEMENTS`] per thread), counting read + write bytes.
fn cpu_copy_bandwidth(source: &[u8], reps: u32) -> CopyBandwidth {
    progress::phase("cpu", "copy bandwidth");
    let source = &source[..source.len().min(CPU_COPY_MAX_BYTES)];
    let threads = rayon::current_num_threads();
    let parts = (source.len() / (MIN_COPY_PART_ELEMENTS * F32_BYTES as usize)).clamp(1, threads);
    let part = source.len().div_ceil(parts).max(1);
    let mut destination = vec![0u8; source.len()];
    let ms = median_wall_ms(reps, || {
        copy_in_parts(source, &mut destination, part);
        Ok(())
    })
    .unwrap_or(f64::NAN);
    let bytes = 2 * std::mem::size_of_val(source) as u64;
    CopyBandwidth {
        gbps: gbps(bytes, ms),
        method: format!(
            "memcpy of {:.1} MB split over {parts} of {threads} threads (rayon), wall time, read + write bytes",
            source.len() as f64 / 1e6
        ),
    }
}

/// `destination.copy_from_slice(source)`, in parts of `part` bytes on the rayon
/// pool (inline when there is one part).
fn copy_in_parts(source: &[u8], destination: &mut [u8], part: usize) {
    if part >= source.len() {
        destination.copy_from_slice(source);
        return;
    }
    destination
        .par_chunks_mut(part)
        .zip(source.par_chunks(part))
        .for_each(|(to, from)| to.copy_from_slice(from));
}

/// The CPU's model name (sysinfo), or `unknown CPU`.
pub(super) fn cpu_model() -> String {
    let mut system = sysinfo::System::new();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system
        .cpus()
        .first()
        .map(|cpu| cpu.brand().trim().to_owned())
        .filter(|brand| !brand.is_empty())
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
