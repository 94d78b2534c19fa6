//! GPU plumbing shared by the GPU timings and the copy kernels: timestamp queries,
//! warm back-to-back device-resident timing, error scopes around allocations,
//! waiting for the queue.

use std::time::Instant;

use xent::Context;

use super::timing::median;
use crate::progress;

/// Untimed back-to-back calls before a device-resident timing, at least this
/// long (ms), so that a GPU's clocks have risen from idle.
const WARM_UP_MS: f64 = 200.0;
/// A timed span of back-to-back calls lasts at least this long (ms) where the
/// repetitions asked for would be shorter.
const SPAN_MS: f64 = 100.0;
/// At most this many calls in one span.
const MAX_CALLS: u32 = 10_000;
/// Spans longer than this (ms) are timed once instead of three times.
const LONG_SPAN_MS: f64 = 2_000.0;

/// Runs `work` inside validation and out-of-memory error scopes, so a failed
/// allocation is an error here rather than an invalid buffer later.
pub(super) fn gpu_checked<T>(context: &Context, work: impl FnOnce() -> T) -> Result<T, String> {
    let out_of_memory = context.device().push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = context.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let value = work();
    let validation_error = pollster::block_on(validation.pop());
    let memory_error = pollster::block_on(out_of_memory.pop());
    match validation_error.or(memory_error) {
        Some(error) => Err(error.to_string()),
        None => Ok(value),
    }
}

/// Waits until the queue is idle.
pub(super) fn wait_for_queue(context: &Context) -> Result<(), String> {
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map(drop)
        .map_err(|error| error.to_string())
}

/// A two-entry timestamp query set (the start and end of a span of calls), and
/// the buffers that bring it back to the host.
pub(super) struct PassTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl PassTimer {
    /// A timer, or `None` when the device has no `TIMESTAMP_QUERY`.
    pub(super) fn new(context: &Context) -> Option<Self> {
        if !context.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let device = context.device();
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: buffer(
                "bench timestamps resolved",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "bench timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            period_ns: f64::from(context.queue().get_timestamp_period()),
        })
    }

    /// An empty compute pass that writes timestamp `index`: a marker before the
    /// first or after the last of a span of submissions.
    fn marker(&self, encoder: &mut wgpu::CommandEncoder, index: u32) {
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench timestamp"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &self.queries,
                beginning_of_pass_write_index: Some(index),
                end_of_pass_write_index: None,
            }),
        });
    }

    /// Records the copy of the two timestamps into the readback buffer.
    pub(super) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16);
    }

    /// The span's duration in ms, once the submission that resolved it has run.
    pub(super) fn elapsed_ms(&self, context: &Context) -> Result<f64, String> {
        let slice = self.readback.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        wait_for_queue(context)?;
        let ticks = {
            let bytes = slice.get_mapped_range().map_err(|error| error.to_string())?;
            let words: &[u64] = bytemuck::cast_slice(&bytes);
            words[1].saturating_sub(words[0])
        };
        self.readback.unmap();
        Ok(ticks as f64 * self.period_ns / 1e6)
    }
}

/// A device-resident timing: the GPU time of one call, from back-to-back calls.
pub(super) struct Resident {
    /// Median over the spans of (span time ÷ calls), in ms.
    pub ms: f64,
    /// Calls per span.
    pub calls: u32,
}

/// Times the work `record` records, as a training step runs it: every buffer
/// stays on the device; after at least [`WARM_UP_MS`] of untimed calls back to
/// back, a span of `calls` calls in consecutive submissions (one per call, no
/// transfer or wait between them) is timed from a timestamp written before the
/// first call to one written after the last; per call = span ÷ calls. `calls` is
/// `reps`, or more where a span would be shorter than [`SPAN_MS`]; three spans
/// give the median (one where a span is long).
pub(super) fn time_resident(
    context: &Context,
    timer: &PassTimer,
    reps: u32,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<(), String>,
) -> Result<Resident, String> {
    let mut submit = |first: bool, last: bool| -> Result<(), String> {
        let mut encoder = context
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        if first {
            timer.marker(&mut encoder, 0);
        }
        record(&mut encoder)?;
        if last {
            timer.marker(&mut encoder, 1);
            timer.resolve(&mut encoder);
        }
        context.queue().submit([encoder.finish()]);
        Ok(())
    };
    progress::repetition(0, reps);
    let warm_up = Instant::now();
    let (mut batch, mut warm_calls, mut estimate_ms) = (1u32, 0u32, 0.0);
    while warm_calls < 2 || warm_up.elapsed().as_secs_f64() * 1e3 < WARM_UP_MS {
        let start = Instant::now();
        for _ in 0..batch {
            submit(false, false)?;
        }
        wait_for_queue(context)?;
        estimate_ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(batch);
        warm_calls += batch;
        batch = batch.saturating_mul(2).min(MAX_CALLS);
    }
    let wanted = (SPAN_MS / estimate_ms.max(1e-6)).ceil().min(f64::from(MAX_CALLS)) as u32;
    let calls = reps.max(wanted).clamp(1, MAX_CALLS);
    let spans = if estimate_ms * f64::from(calls) > LONG_SPAN_MS {
        1
    } else {
        3
    };
    let mut per_call = Vec::with_capacity(spans);
    for span in 0..spans {
        progress::repetition(span as u32 + 1, spans as u32);
        for call in 0..calls {
            submit(call == 0, call + 1 == calls)?;
        }
        per_call.push(timer.elapsed_ms(context)? / f64::from(calls));
    }
    Ok(Resident {
        ms: median(per_call),
        calls,
    })
}
