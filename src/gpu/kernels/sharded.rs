//! GPU kernels of the vocabulary-sharded cross-entropy (shaders/sharded.wgsl,
//! whose top has the math): `shard_stats` writes one shard's per-row statistics,
//! `shard_gradient` reads the combined per-row coefficients and writes the
//! shard's gradient. One workgroup per row; rows are cut into chunks whose
//! logits (and gradient) fit the binding limit, dispatched in one compute pass
//! of one submission. Each call makes its own buffers and reads back with one
//! mapping. The combination between the two kernels runs on the host.

use super::contract::shard_bindings::*;
use super::contract::shard_rows::{
    COEFFICIENT_CONFIDENT_REST, COEFFICIENT_LN_SUM_EXP, COEFFICIENT_MAX, COEFFICIENT_OTHER, COEFFICIENT_PLANES,
    COEFFICIENT_SMOOTHING, COEFFICIENT_TARGET, STAT_MAX, STAT_MAX_COUNT, STAT_PLANES, STAT_REST, STAT_SPREAD,
    STAT_TARGET_COUNT, STAT_TARGET_LOGIT, TARGET_IGNORED, TARGET_NOT_IN_SHARD,
};
use super::contract::{ShardParams, shard_bindings, shard_rows};
use super::pipeline::{
    Chunk, SUMS_SOURCE, Window, bind_group_layout, compute_pipeline, dispatch_shape, params_binding, params_buffer,
    plan_chunks, storage_entry, uniform_entry,
};
use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::{create_buffer, create_buffer_with};
use crate::gpu::readback::{UnmapOnDrop, Wait, map_for_reading, mapped_bytes};
use crate::gpu::shader_checks::ShaderChecks;
use crate::options::CrossEntropyOptions;
use crate::types::{CombinedStats, ShardStats, VocabShard};

const SHARDED_SOURCE: &str = include_str!("../../../shaders/sharded.wgsl");
const SOFTCAP_SOURCE: &str = include_str!("../../../shaders/softcap.wgsl");

/// The largest workgroup the kernels use (their tree scratch is 16 bytes per invocation).
const MAX_SHARD_WORKGROUP_SIZE: u32 = 256;

/// The module source for workgroups of `workgroup_size`: the generated prelude
/// (see [`super::contract`]), shaders/sums.wgsl, shaders/softcap.wgsl, then shaders/sharded.wgsl.
fn source(workgroup_size: u32) -> String {
    format!(
        "const WORKGROUP_SIZE: u32 = {workgroup_size}u;\n{}{}{}\n{SUMS_SOURCE}\n{SOFTCAP_SOURCE}\n{SHARDED_SOURCE}",
        ShardParams::WGSL,
        shard_bindings::WGSL,
        shard_rows::WGSL
    )
}

/// The compiled sharded kernels (made once per [`Context`](crate::Context), on first use).
pub(crate) struct ShardedKernels {
    layout: wgpu::BindGroupLayout,
    stats: wgpu::ComputePipeline,
    gradient: wgpu::ComputePipeline,
}

impl ShardedKernels {
    /// Compiles both kernels for workgroups of `workgroup_size` (at most 256) invocations.
    pub(crate) fn new(device: &wgpu::Device, workgroup_size: u32, checks: ShaderChecks) -> Self {
        let entries = [
            uniform_entry(BINDING_PARAMS),
            storage_entry(BINDING_LOGITS, true),
            storage_entry(BINDING_LOCAL_TARGETS, true),
            storage_entry(BINDING_CLASS_WEIGHTS, true),
            storage_entry(BINDING_ROW_DATA, false),
            storage_entry(BINDING_GRADIENT, false),
        ];
        let layout = bind_group_layout(device, "xent sharded", &entries);
        let source = source(workgroup_size.min(MAX_SHARD_WORKGROUP_SIZE));
        Self {
            stats: compute_pipeline(device, &layout, &source, "shard_stats", checks),
            gradient: compute_pipeline(device, &layout, &source, "shard_gradient", checks),
            layout,
        }
    }
}

/// One word per row: the target's class in `shard`, or `TARGET_IGNORED` /
/// `TARGET_NOT_IN_SHARD`.
fn local_target_words(shard: VocabShard, targets: &[i64], ignore_index: i64) -> Vec<u32> {
    targets
        .iter()
        .map(|&target| match shard.local_class(target) {
            _ if target == ignore_index => TARGET_IGNORED,
            Some(local) => local as u32,
            None => TARGET_NOT_IN_SHARD,
        })
        .collect()
}

/// The chunks of one call, checked against the adapter's limits.
struct Plan {
    chunks: Vec<Chunk>,
    rows: usize,
}

fn plan(gpu: &Gpu, rows: usize, shard: VocabShard, planes: u32) -> Result<Plan> {
    let limits = gpu.limits();
    let max_binding = gpu.max_binding_size();
    let classes = shard.len() as u64;
    let elements = rows as u64 * classes;
    if elements > u64::from(u32::MAX) || elements * 4 > limits.max_buffer_size {
        return Err(Error::TooLarge(format!(
            "{rows} rows of {classes} classes exceed 32-bit indices or the adapter's max_buffer_size ({})",
            limits.max_buffer_size
        )));
    }
    for (what, bytes) in [
        ("per-row data", rows as u64 * u64::from(planes) * 4),
        ("class weights", classes * 4),
    ] {
        if bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{bytes} bytes of {what} exceed the {max_binding} byte binding limit"
            )));
        }
    }
    let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
    let rows_per_chunk = max_binding.saturating_sub(alignment) / 4 / classes;
    if rows_per_chunk == 0 {
        return Err(Error::TooLarge(format!(
            "one row of {classes} classes needs {} bytes, above the {max_binding} byte binding limit",
            classes * 4
        )));
    }
    let chunks = plan_chunks(rows as u64, rows_per_chunk, |first, count| {
        let logits = Window::new(first * classes * 4, count * classes * 4, alignment);
        (logits, logits)
    });
    Ok(Plan { chunks, rows })
}

/// What a call runs: the statistics kernel, or the gradient kernel on these
/// coefficient planes.
#[derive(Clone, Copy)]
enum Call<'a> {
    Stats,
    Gradient { coefficients: &'a [f32] },
}

/// The buffers of one call.
struct CallBuffers {
    logits: wgpu::Buffer,
    local_targets: wgpu::Buffer,
    class_weights: wgpu::Buffer,
    /// Statistics written (`Stats`) or coefficients read (`Gradient`).
    row_data: wgpu::Buffer,
    /// The gradient (`Gradient`), else a placeholder.
    gradient: Option<wgpu::Buffer>,
    unused: wgpu::Buffer,
    params: wgpu::Buffer,
}

impl CallBuffers {
    /// Uploads the logits, local targets, the shard's weights, the row data and
    /// one parameter block per chunk; creates the outputs.
    fn new(gpu: &Gpu, job: &Job<'_>, plan: &Plan, call: Call<'_>) -> Self {
        let Job {
            options,
            shard,
            logits,
            targets,
        } = *job;
        let device = gpu.device();
        let input = wgpu::BufferUsages::STORAGE;
        let output = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let words = local_target_words(shard, targets, options.ignore_index);
        let weights = options
            .weight
            .as_ref()
            .map_or(&[1.0f32][..], |weight| &weight[shard.start()..shard.end()]);
        let (row_data, gradient) = match call {
            Call::Stats => {
                let bytes = plan.rows as u64 * u64::from(STAT_PLANES) * 4;
                (create_buffer(device, "xent shard statistics", bytes, output), None)
            }
            Call::Gradient { coefficients } => (
                create_buffer_with(
                    device,
                    "xent shard coefficients",
                    bytemuck::cast_slice(coefficients),
                    input,
                ),
                Some(create_buffer(
                    device,
                    "xent shard gradient",
                    logits.len() as u64 * 4,
                    output,
                )),
            ),
        };
        Self {
            logits: create_buffer_with(device, "xent shard logits", bytemuck::cast_slice(logits), input),
            local_targets: create_buffer_with(device, "xent shard targets", bytemuck::cast_slice(&words), input),
            class_weights: create_buffer_with(device, "xent shard weights", bytemuck::cast_slice(weights), input),
            row_data,
            gradient,
            unused: create_buffer(device, "xent shard unused output", 16, input),
            params: params_buffer(device, "xent shard params", &chunk_params(job, plan)),
        }
    }

    fn bind_group(
        &self,
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        index: usize,
        chunk: &Chunk,
    ) -> wgpu::BindGroup {
        let gradient = match &self.gradient {
            Some(gradient) => chunk.inputs.binding(gradient),
            None => self.unused.as_entire_binding(),
        };
        let resources = [
            (BINDING_PARAMS, params_binding::<ShardParams>(&self.params, index)),
            (BINDING_LOGITS, chunk.inputs.binding(&self.logits)),
            (BINDING_LOCAL_TARGETS, self.local_targets.as_entire_binding()),
            (BINDING_CLASS_WEIGHTS, self.class_weights.as_entire_binding()),
            (BINDING_ROW_DATA, self.row_data.as_entire_binding()),
            (BINDING_GRADIENT, gradient),
        ];
        super::pipeline::bind_group(device, "xent sharded", layout, resources)
    }
}

/// One parameter block per chunk.
fn chunk_params(job: &Job<'_>, plan: &Plan) -> Vec<ShardParams> {
    let options = job.options;
    plan.chunks
        .iter()
        .map(|chunk| ShardParams {
            rows: chunk.count as u32,
            classes: job.shard.len() as u32,
            logits_offset: chunk.inputs.first_word,
            first_row: chunk.first as u32,
            plane_stride: plan.rows as u32,
            has_weights: u32::from(options.weight.is_some()),
            has_softcap: u32::from(options.softcap.is_some()),
            softcap: options.softcap.unwrap_or(1.0),
            logit_scale: options.logit_scale,
            ..ShardParams::default()
        })
        .collect()
}

/// One shard's inputs (already validated).
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub(crate) options: &'a CrossEntropyOptions,
    pub(crate) shard: VocabShard,
    /// `rows × shard.len()`, row-major.
    pub(crate) logits: &'a [f32],
    /// The whole vocabulary's class indices, one per row.
    pub(crate) targets: &'a [i64],
}

/// Runs `call` for `job`: upload, one submission, and the `bytes` of the
/// call's output (statistics or gradient) read back as floats.
fn run(gpu: &Gpu, kernels: &ShardedKernels, job: &Job<'_>, call: Call<'_>) -> Result<Vec<f32>> {
    let (planes, pipeline) = match call {
        Call::Stats => (STAT_PLANES, &kernels.stats),
        Call::Gradient { .. } => (COEFFICIENT_PLANES, &kernels.gradient),
    };
    let plan = plan(gpu, job.targets.len(), job.shard, planes)?;
    let count = match call {
        Call::Stats => plan.rows * STAT_PLANES as usize,
        Call::Gradient { .. } => job.logits.len(),
    };
    let staging = gpu.checked(|| {
        let buffers = CallBuffers::new(gpu, job, &plan, call);
        let output = buffers.gradient.as_ref().unwrap_or(&buffers.row_data);
        dispatch_and_stage(gpu, kernels, pipeline, &buffers, &plan, output, count as u64 * 4)
    })?;
    read_floats(gpu, &staging, count)
}

/// Records `pipeline` once per chunk into one compute pass, then copies
/// `bytes` of `source` into a new staging buffer, submits, and returns it.
fn dispatch_and_stage(
    gpu: &Gpu,
    kernels: &ShardedKernels,
    pipeline: &wgpu::ComputePipeline,
    buffers: &CallBuffers,
    plan: &Plan,
    source: &wgpu::Buffer,
    bytes: u64,
) -> Result<wgpu::Buffer> {
    let device = gpu.device();
    let max_per_dimension = gpu.limits().max_compute_workgroups_per_dimension;
    let groups: Vec<(wgpu::BindGroup, (u32, u32))> = plan
        .chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            Ok((
                buffers.bind_group(device, &kernels.layout, index, chunk),
                dispatch_shape(chunk.count, max_per_dimension)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("xent sharded call"),
    });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent sharded"),
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        for (group, (x, y)) in &groups {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
    }
    let staging = create_buffer(
        device,
        "xent sharded readback",
        bytes,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    encoder.copy_buffer_to_buffer(source, 0, &staging, 0, bytes);
    gpu.queue().submit([encoder.finish()]);
    Ok(staging)
}

/// Maps `staging` and copies its first `count` floats out.
fn read_floats(gpu: &Gpu, staging: &wgpu::Buffer, count: usize) -> Result<Vec<f32>> {
    let slice = staging.slice(..count as u64 * 4);
    // Declared before the view, so dropped (unmapping) after it, on every path.
    let _unmap = UnmapOnDrop {
        gpu,
        buffers: vec![staging],
    };
    pollster::block_on(map_for_reading(gpu, &[slice], Wait::Inline))?;
    let bytes = mapped_bytes(&slice)?;
    Ok(bytemuck::cast_slice(&bytes).to_vec())
}

/// One shard's per-row statistics on the GPU.
pub(crate) fn shard_stats(gpu: &Gpu, kernels: &ShardedKernels, job: &Job<'_>) -> Result<ShardStats> {
    let values = run(gpu, kernels, job, Call::Stats)?;
    let rows = job.targets.len();
    let plane = |index: u32| -> Vec<f64> {
        let start = index as usize * rows;
        values[start..start + rows]
            .iter()
            .map(|&value| f64::from(value))
            .collect()
    };
    Ok(ShardStats {
        shard: job.shard,
        weight_sum: job.shard.weight_sum(job.options.weight.as_deref()),
        max: plane(STAT_MAX),
        max_count: plane(STAT_MAX_COUNT),
        rest: plane(STAT_REST),
        target_logit: plane(STAT_TARGET_LOGIT),
        target_count: plane(STAT_TARGET_COUNT),
        spread: plane(STAT_SPREAD),
        options_key: job.options.statistics_key(),
    })
}

/// The combined coefficients as the gradient kernel reads them: the
/// COEFFICIENT_* planes, in f32.
fn coefficient_planes(combined: &CombinedStats) -> Vec<f32> {
    let rows = combined.rows();
    let columns = [
        (COEFFICIENT_MAX, &combined.max),
        (COEFFICIENT_LN_SUM_EXP, &combined.ln_sum_exp),
        (COEFFICIENT_OTHER, &combined.other_scale),
        (COEFFICIENT_CONFIDENT_REST, &combined.confident_rest),
        (COEFFICIENT_SMOOTHING, &combined.smoothing_scale),
        (COEFFICIENT_TARGET, &combined.target_scale),
    ];
    let mut planes = vec![0.0f32; rows * COEFFICIENT_PLANES as usize];
    for (plane, column) in columns {
        let start = plane as usize * rows;
        for (slot, &value) in planes[start..start + rows].iter_mut().zip(column) {
            *slot = value as f32;
        }
    }
    planes
}

/// One shard's gradient on the GPU from the combined statistics, written into
/// `gradient` (the logits' length).
pub(crate) fn shard_gradient(
    gpu: &Gpu,
    kernels: &ShardedKernels,
    job: &Job<'_>,
    combined: &CombinedStats,
    gradient: &mut [f32],
) -> Result<()> {
    let coefficients = coefficient_planes(combined);
    gradient.copy_from_slice(&run(
        gpu,
        kernels,
        job,
        Call::Gradient {
            coefficients: &coefficients,
        },
    )?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::pipeline::assert_valid_wgsl;
    use super::*;

    #[test]
    fn the_sharded_module_is_valid_wgsl() {
        for workgroup_size in [64, MAX_SHARD_WORKGROUP_SIZE] {
            assert_valid_wgsl(&source(workgroup_size));
        }
    }

    #[test]
    fn local_targets_mark_ignored_rows_and_other_shards() {
        let shard = VocabShard::new(4, 3, 10).expect("valid");
        let words = local_target_words(shard, &[4, 6, 7, 3, -100], -100);
        assert_eq!(words, [0, 2, TARGET_NOT_IN_SHARD, TARGET_NOT_IN_SHARD, TARGET_IGNORED]);
    }
}
