//! What bounds the GPU's timings, measured once per context: its copy bandwidth
//! (a WGSL vec4 copy kernel, bound in chunks within the storage binding limit,
//! and `copy_buffer_to_buffer`, both device-resident, warm and back to back, on
//! 1 GiB buffers), its read bandwidth (a WGSL vec4 read kernel on the same
//! buffer: the ceiling of the loss alone, which reads the logits and writes a
//! few words per row) and its host↔device transfer rates.

use std::num::NonZeroU64;

use xent::Context;

use super::CopyBandwidth;
use super::pass_timer::{PassTimer, gpu_checked, time_resident, wait_for_queue};
use super::timing::{gbps, median_wall_ms};
use crate::progress;

/// The bandwidth kernels, each a vec4 grid-stride loop, so any buffer fits the
/// dispatch limit: `copy` copies `source` into `destination`; `read_all` sums
/// what it reads and stores the sum (into `destination`'s first vec4, all it
/// binds there) only if it is a value the zero-filled source cannot give, so no
/// load can be left out and nothing is written.
const BANDWIDTH_SHADER: &str = r"
@group(0) @binding(0) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> destination: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let count = arrayLength(&source);
    let stride = groups.x * 256u;
    for (var index = id.x; index < count; index += stride) {
        destination[index] = source[index];
    }
}

@compute @workgroup_size(256)
fn read_all(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let count = arrayLength(&source);
    let stride = groups.x * 256u;
    var total = vec4<f32>(0.0);
    for (var index = id.x; index < count; index += stride) {
        total += source[index];
    }
    if dot(total, vec4<f32>(1.0)) == 1.5e30 {
        destination[0] = total;
    }
}
";
/// The copy shader's workgroup size.
const COPY_WORKGROUP_SIZE: u64 = 256;
/// Workgroups per dispatch at most (WebGPU's per-dimension minimum limit).
const COPY_MAX_WORKGROUPS: u64 = 65_535;
/// Bytes of one vec4<f32>.
const VEC4_BYTES: u64 = 16;

/// Bytes of each of the copy buffers: 1 GiB (far beyond any GPU's caches) where
/// the adapter allows, 256 MiB on a software adapter (its memory is the host's).
const COPY_BYTES: u64 = 1 << 30;
/// The copy buffers' size on a software adapter.
const SOFTWARE_COPY_BYTES: u64 = 256 << 20;
/// Bytes moved by each host↔device transfer timing.
const TRANSFER_BYTES: u64 = 256 << 20;
/// Timed transfers per direction (the median is kept).
const TRANSFER_REPS: u32 = 3;

/// What bounds a GPU's timings, measured once per context: the device's copy
/// bandwidth (the ceiling of the kernels) and the host↔device transfer rates
/// (the ceiling of the host-to-host calls).
pub(super) struct DeviceCeilings {
    /// The WGSL copy kernel, device-resident, warm, back to back.
    pub copy: CopyBandwidth,
    /// `copy_buffer_to_buffer`, timed the same way (GB/s, read + write), if timestamps exist.
    pub builtin_copy_gbps: Option<f64>,
    /// The WGSL read kernel, timed the same way (GB/s, bytes read), if timestamps exist.
    pub read_gbps: Option<f64>,
    /// Host→device and device→host GB/s, measured after the first shape's
    /// host-to-host timings (see [`DeviceCeilings::transfer_rates`]).
    transfers: std::cell::OnceCell<(f64, f64)>,
}

impl DeviceCeilings {
    /// Copy bandwidth on two buffers of [`COPY_BYTES`] (capped at the adapter's
    /// `max_buffer_size`), and read bandwidth on the first.
    pub(super) fn measure(context: &Context, reps: u32) -> Result<Self, String> {
        progress::phase("gpu", "copy bandwidth");
        let software = crate::report::is_software(context);
        let wanted = if software { SOFTWARE_COPY_BYTES } else { COPY_BYTES };
        let bytes = (wanted.min(context.limits().max_buffer_size) / VEC4_BYTES * VEC4_BYTES).max(VEC4_BYTES);
        let device = context.device();
        let (source, destination) = gpu_checked(context, || {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            let buffer = |label| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            (buffer("bench copy source"), buffer("bench copy destination"))
        })?;
        let (pipeline, dispatches) = gpu_checked(context, || {
            let pipeline = bench_pipeline(device, context.shader_checks(), "copy");
            let dispatches = copy_dispatches(context, &pipeline, &source, Second::Chunk(&destination), bytes);
            (pipeline, dispatches)
        })?;
        let (copy, builtin_copy_gbps, read_gbps) = match PassTimer::new(context) {
            Some(timer) => {
                let kernel = time_resident(context, &timer, reps, |encoder| {
                    record_copy(encoder, &pipeline, &dispatches);
                    Ok(())
                })?;
                progress::phase("gpu", "copy_buffer_to_buffer bandwidth");
                let builtin = time_resident(context, &timer, reps, |encoder| {
                    encoder.copy_buffer_to_buffer(&source, 0, &destination, 0, bytes);
                    Ok(())
                })?;
                progress::phase("gpu", "read bandwidth");
                let (read_pipeline, read_dispatches) = gpu_checked(context, || {
                    let pipeline = bench_pipeline(device, context.shader_checks(), "read_all");
                    let dispatches = copy_dispatches(context, &pipeline, &source, Second::Whole(&destination), bytes);
                    (pipeline, dispatches)
                })?;
                let read = time_resident(context, &timer, reps, |encoder| {
                    record_copy(encoder, &read_pipeline, &read_dispatches);
                    Ok(())
                })?;
                let copy = CopyBandwidth {
                    gbps: gbps(2 * bytes, kernel.ms),
                    method: format!(
                        "WGSL vec4 copy kernel on {} MiB, device-resident, warm, {} back-to-back calls per timestamped \
                         span, read + write bytes",
                        bytes >> 20,
                        kernel.calls
                    ),
                };
                (copy, Some(gbps(2 * bytes, builtin.ms)), Some(gbps(bytes, read.ms)))
            }
            None => (
                wall_time_copy(context, &pipeline, &dispatches, bytes, reps)?,
                None,
                None,
            ),
        };
        Ok(Self {
            copy,
            builtin_copy_gbps,
            read_gbps,
            transfers: std::cell::OnceCell::new(),
        })
    }

    /// (host→device, device→host) GB/s, measured on first use. Measured after a
    /// shape's host-to-host timings, not before: on lavapipe the timed transfers
    /// slowed the host calls that followed them by 20–45 %.
    pub(super) fn transfer_rates(&self, context: &Context) -> Result<(f64, f64), String> {
        if let Some(&rates) = self.transfers.get() {
            return Ok(rates);
        }
        progress::phase("gpu", "host↔device transfer rates");
        let rates = transfer_rates(context)?;
        let _ = self.transfers.set(rates);
        Ok(rates)
    }

    /// The transfer rates, where measured.
    pub(super) fn measured_transfer_rates(&self) -> Option<(f64, f64)> {
        self.transfers.get().copied()
    }
}

/// The copy kernel timed by wall time (submit + wait), where there are no timestamps.
fn wall_time_copy(
    context: &Context,
    pipeline: &wgpu::ComputePipeline,
    dispatches: &[(wgpu::BindGroup, u32)],
    bytes: u64,
    reps: u32,
) -> Result<CopyBandwidth, String> {
    let ms = median_wall_ms(reps, || {
        let mut encoder = context
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench copy"),
            });
        record_copy(&mut encoder, pipeline, dispatches);
        context.queue().submit([encoder.finish()]);
        wait_for_queue(context)
    })?;
    Ok(CopyBandwidth {
        gbps: gbps(2 * bytes, ms),
        method: format!(
            "WGSL vec4 copy kernel on {} MiB, wall time of submit + wait (no TIMESTAMP_QUERY), read + write bytes",
            bytes >> 20
        ),
    })
}

/// Host→device and device→host GB/s on [`TRANSFER_BYTES`] (capped at the
/// adapter's `max_buffer_size`), wall time including the wait, median of
/// [`TRANSFER_REPS`].
fn transfer_rates(context: &Context) -> Result<(f64, f64), String> {
    let bytes = TRANSFER_BYTES.min(context.limits().max_buffer_size) / 4 * 4;
    let device = context.device();
    let host = vec![0x3f80_0000u32; (bytes / 4) as usize];
    let (device_buffer, readback) = gpu_checked(context, || {
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        (
            buffer(
                "bench upload",
                wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            ),
            buffer(
                "bench download",
                wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            ),
        )
    })?;
    let upload_ms = median_wall_ms(TRANSFER_REPS, || {
        context
            .queue()
            .write_buffer(&device_buffer, 0, bytemuck::cast_slice(&host));
        context.queue().submit([]);
        wait_for_queue(context)
    })?;
    let download_ms = median_wall_ms(TRANSFER_REPS, || {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench download"),
        });
        encoder.copy_buffer_to_buffer(&device_buffer, 0, &readback, 0, bytes);
        context.queue().submit([encoder.finish()]);
        let slice = readback.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        wait_for_queue(context)?;
        let checksum = slice
            .get_mapped_range()
            .map_err(|error| error.to_string())?
            .iter()
            .step_by(4096)
            .fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        std::hint::black_box(checksum);
        readback.unmap();
        Ok(())
    })?;
    Ok((gbps(bytes, upload_ms), gbps(bytes, download_ms)))
}

/// The bandwidth kernel `entry` (`copy` or `read_all`), compiled with the
/// run-time checks of the context's own kernels, so that it is their ceiling.
fn bench_pipeline(device: &wgpu::Device, checks: xent::ShaderChecks, entry: &'static str) -> wgpu::ComputePipeline {
    let descriptor = wgpu::ShaderModuleDescriptor {
        label: Some(entry),
        source: wgpu::ShaderSource::Wgsl(BANDWIDTH_SHADER.into()),
    };
    // SAFETY: the checks are wgpu's own but, for `ShaderChecks::Trusted`, the
    // forced loop bound, and each kernel's one loop ends: its index rises by
    // `stride` = 256 × the workgroups (at least 256) toward the element count
    // of a binding (at most 2^28 vec4s), so it cannot wrap past it.
    let module = unsafe { device.create_shader_module_trusted(descriptor, checks.runtime_checks()) };
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// What a kernel binds as `destination`: the copy's chunk beside each source
/// chunk, or for the read the buffer's first vec4, for every chunk.
#[derive(Clone, Copy)]
enum Second<'a> {
    Chunk(&'a wgpu::Buffer),
    Whole(&'a wgpu::Buffer),
}

/// One bind group per chunk of `source` of at most the storage binding limit
/// (at aligned offsets), with its workgroup count.
fn copy_dispatches(
    context: &Context,
    pipeline: &wgpu::ComputePipeline,
    source: &wgpu::Buffer,
    second: Second<'_>,
    bytes: u64,
) -> Vec<(wgpu::BindGroup, u32)> {
    let limits = context.limits();
    let alignment = u64::from(limits.min_storage_buffer_offset_alignment).max(VEC4_BYTES);
    let chunk = (limits.max_storage_buffer_binding_size / alignment * alignment).max(alignment);
    let layout = pipeline.get_bind_group_layout(0);
    (0..bytes)
        .step_by(chunk as usize)
        .map(|offset| {
            let size = chunk.min(bytes - offset);
            let binding = |binding, buffer, offset, size| wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: NonZeroU64::new(size),
                }),
            };
            let second = match second {
                Second::Chunk(destination) => binding(1, destination, offset, size),
                Second::Whole(sink) => binding(1, sink, 0, VEC4_BYTES),
            };
            let group = context.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bench copy chunk"),
                layout: &layout,
                entries: &[binding(0, source, offset, size), second],
            });
            let workgroups = (size / VEC4_BYTES)
                .div_ceil(COPY_WORKGROUP_SIZE)
                .clamp(1, COPY_MAX_WORKGROUPS);
            (group, workgroups as u32)
        })
        .collect()
}

/// Records the copy (or read) of every chunk in one compute pass.
fn record_copy(
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    dispatches: &[(wgpu::BindGroup, u32)],
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("bench copy"),
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    for (group, workgroups) in dispatches {
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(*workgroups, 1, 1);
    }
}
