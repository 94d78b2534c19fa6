//! GPU plumbing shared by the GPU timings and the copy kernel: timestamp queries
//! around one compute pass, error scopes around allocations, waiting for the queue.

use xent::Context;

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

/// A two-entry timestamp query set around one compute pass, and the buffers that
/// bring it back to the host.
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

    /// Timestamp writes at the beginning and end of a compute pass.
    pub(super) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the copy of the two timestamps into the readback buffer.
    pub(super) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16);
    }

    /// The pass's duration in ms, once the submission that resolved it has run.
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
