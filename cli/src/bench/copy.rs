//! The GPU's copy bandwidth: a WGSL vec4 copy kernel over a buffer of the logits'
//! size, bound in chunks within the storage binding limit.

use std::num::NonZeroU64;
use std::time::Instant;

use xent::Context;

use super::CopyBandwidth;
use super::pass_timer::{PassTimer, gpu_checked, wait_for_queue};
use super::timing::{gbps, median};
use crate::progress;

/// A vec4 copy with a grid-stride loop, so any buffer fits the dispatch limit.
const COPY_SHADER: &str = r"
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
";
/// The copy shader's workgroup size.
const COPY_WORKGROUP_SIZE: u64 = 256;
/// Workgroups per dispatch at most (WebGPU's per-dimension minimum limit).
const COPY_MAX_WORKGROUPS: u64 = 65_535;
/// Bytes of one vec4<f32>.
const VEC4_BYTES: u64 = 16;

/// The GPU's copy bandwidth on a buffer of `logits_bytes` (capped at the adapter's
/// `max_buffer_size`): the WGSL copy kernel in one compute pass, bound in chunks
/// within the storage binding limit, timed by timestamp queries where the device
/// has them, else by the wall time of the submission. Read + write bytes.
pub(super) fn gpu_copy_bandwidth(context: &Context, logits_bytes: u64, reps: u32) -> Result<CopyBandwidth, String> {
    progress::phase("gpu", "copy bandwidth");
    let limits = context.limits();
    let bytes = (logits_bytes.min(limits.max_buffer_size) / VEC4_BYTES * VEC4_BYTES).max(VEC4_BYTES);
    let device = context.device();
    let (source, destination) = gpu_checked(context, || {
        let buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        (buffer("bench copy source"), buffer("bench copy destination"))
    })?;
    let pipeline = copy_pipeline(device);
    let dispatches = copy_dispatches(context, &pipeline, &source, &destination, bytes);
    let timer = PassTimer::new(context);
    let mut times = Vec::new();
    for rep in 0..=reps {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench copy"),
        });
        record_copy(&mut encoder, &pipeline, &dispatches, timer.as_ref());
        let start = Instant::now();
        gpu_checked(context, || context.queue().submit([encoder.finish()]))?;
        let ms = match &timer {
            Some(timer) => timer.elapsed_ms(context)?,
            None => wait_for_queue(context).map(|()| start.elapsed().as_secs_f64() * 1e3)?,
        };
        if rep > 0 {
            times.push(ms);
        }
    }
    let timing = match timer {
        Some(_) => "timestamp queries",
        None => "wall time of submit + wait (no TIMESTAMP_QUERY)",
    };
    Ok(CopyBandwidth {
        gbps: gbps(2 * bytes, median(times)),
        method: format!("WGSL vec4 copy kernel in one compute pass, {timing}, read + write bytes"),
    })
}

fn copy_pipeline(device: &wgpu::Device) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench copy"),
        layout: None,
        module: &module,
        entry_point: Some("copy"),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// One bind group per chunk of at most the storage binding limit (at aligned
/// offsets), with its workgroup count.
fn copy_dispatches(
    context: &Context,
    pipeline: &wgpu::ComputePipeline,
    source: &wgpu::Buffer,
    destination: &wgpu::Buffer,
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
            let binding = |binding, buffer| wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: NonZeroU64::new(size),
                }),
            };
            let group = context.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bench copy chunk"),
                layout: &layout,
                entries: &[binding(0, source), binding(1, destination)],
            });
            let workgroups = (size / VEC4_BYTES)
                .div_ceil(COPY_WORKGROUP_SIZE)
                .clamp(1, COPY_MAX_WORKGROUPS);
            (group, workgroups as u32)
        })
        .collect()
}

/// Records the copy of every chunk in one compute pass (timed when `timer` is given).
fn record_copy(
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    dispatches: &[(wgpu::BindGroup, u32)],
    timer: Option<&PassTimer>,
) {
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench copy"),
            timestamp_writes: timer.map(PassTimer::writes),
        });
        pass.set_pipeline(pipeline);
        for (group, workgroups) in dispatches {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
    }
    if let Some(timer) = timer {
        timer.resolve(encoder);
    }
}
