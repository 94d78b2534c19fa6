//! What every GPU kernel of the BCE / KL / entropy family shares (the binary
//! cross-entropy in `binary.rs`, the divergences in `divergence.rs`):
//! shaders/family.wgsl and the source it heads, one bind-group layout, per-call
//! buffers, chunk planning, dispatch and readback.
//!
//! A family call makes its own buffers (inputs, targets, gradient, outputs and a
//! staging buffer; nothing is kept between calls, unlike the categorical
//! cross-entropy's workspace), then records in one compute pass of one submission:
//! the family kernel once per chunk, then, unless the reduction is `none`,
//! `reduce_partials` (one workgroup), and reads everything back with one mapping.
//!
//! Chunks: elementwise kernels (BCE, KL) cut the batch into runs of whole tiles
//! (`TILE_ELEMENTS` elements, tiles at global multiples of it), each within the
//! binding limit; row kernels (entropy, probability cross-entropy) cut it into runs
//! of whole rows. Every chunk is bound at an aligned offset; the per-tile or
//! per-row partial sums are indexed globally, so a chunked call computes exactly
//! the same partial sums, in the same order, as an unchunked one.

use std::sync::OnceLock;

use super::contract::family_bindings::*;
pub(crate) use super::contract::family_flags::{
    FLAG_CLASS_TARGETS, FLAG_LOG_TARGET, FLAG_PROBABILITIES, FLAG_WRITE_GRADIENT, FLAG_WRITE_LOSSES,
};
use super::contract::{FamilyParams, family_bindings, family_flags};
use super::pipeline::{
    Chunk, SUMS_SOURCE, Window, bind_group_layout, compute_pipeline, dispatch_shape, params_binding, params_bytes,
    storage_entry, uniform_entry,
};
use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::GrowableBuffer;
use crate::gpu::memory::create_buffer;
use crate::gpu::readback::{UnmapOnDrop, Wait, map_for_reading};
use crate::types::Loss;

/// Invocations per workgroup of every family kernel.
pub(crate) const FAMILY_WORKGROUP_SIZE: u32 = 256;
/// Elements each invocation of an elementwise kernel handles per tile.
const ELEMENTS_PER_INVOCATION: u32 = 16;
/// Elements per tile of the elementwise kernels (one workgroup each).
pub(crate) const TILE_ELEMENTS: u64 = (FAMILY_WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION) as u64;
/// Invocations sharing one row, by variant of the row kernels.
pub(crate) const THREADS_PER_ROW_CHOICES: [u32; 4] = [4, 16, 64, FAMILY_WORKGROUP_SIZE];
/// A row gets the narrowest variant that leaves each invocation at most this many columns.
const COLUMNS_PER_THREAD: usize = 8;
/// Offsets inside the staging buffer are kept on this boundary.
const STAGING_ALIGNMENT: u64 = 256;

/// Bindings, flags, tiles, `reduce_partials` and the logarithms every family kernel uses.
const FAMILY_SOURCE: &str = include_str!("../../../shaders/family.wgsl");

/// A family module's source: the generated prelude (the constants, flags,
/// binding numbers and uniform block the WGSL shares with this file, see
/// [`super::contract`]), shaders/sums.wgsl, shaders/family.wgsl, then `kernels`
/// (the kernel files), concatenated.
pub(crate) fn family_source(threads_per_row: u32, kernels: &[&str]) -> String {
    format!(
        "const WORKGROUP_SIZE: u32 = {FAMILY_WORKGROUP_SIZE}u;\n\
         const ELEMENTS_PER_INVOCATION: u32 = {ELEMENTS_PER_INVOCATION}u;\n\
         const THREADS_PER_ROW: u32 = {threads_per_row}u;\n\
         const ROWS_PER_WORKGROUP: u32 = {}u;\n\
         {}{}{}\n{SUMS_SOURCE}\n{FAMILY_SOURCE}\n{}",
        FAMILY_WORKGROUP_SIZE / threads_per_row,
        family_flags::WGSL,
        family_bindings::WGSL,
        FamilyParams::WGSL,
        kernels.join("\n")
    )
}

/// Index into [`THREADS_PER_ROW_CHOICES`] of the row-kernel variant for `classes` columns.
pub(crate) fn row_variant(classes: usize) -> usize {
    THREADS_PER_ROW_CHOICES
        .iter()
        .position(|&threads| classes <= threads as usize * COLUMNS_PER_THREAD)
        .unwrap_or(THREADS_PER_ROW_CHOICES.len() - 1)
}

/// The bind-group layout every family kernel uses, and the placeholders bound
/// where a call has no such input or output.
pub(crate) struct FamilyLayout {
    bind_group_layout: wgpu::BindGroupLayout,
    /// Bound in place of absent read-only inputs (targets, class parameters).
    unused_read: wgpu::Buffer,
    /// Bound in place of absent outputs (gradient, per-element losses).
    unused_write: wgpu::Buffer,
}

impl FamilyLayout {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let entries = [
            uniform_entry(BINDING_PARAMS),
            storage_entry(BINDING_INPUTS, true),
            storage_entry(BINDING_TARGETS, true),
            storage_entry(BINDING_GRADIENT, false),
            storage_entry(BINDING_LOSSES, false),
            storage_entry(BINDING_PARTIALS, false),
            storage_entry(BINDING_CLASS_PARAMS, true),
            storage_entry(BINDING_RESULT, false),
        ];
        let placeholder = |label| create_buffer(device, label, 16, wgpu::BufferUsages::STORAGE);
        Self {
            bind_group_layout: bind_group_layout(device, "xent family", &entries),
            unused_read: placeholder("xent family unused input"),
            unused_write: placeholder("xent family unused output"),
        }
    }

    /// Compiles `entry_point` of `source`.
    pub(crate) fn pipeline(&self, device: &wgpu::Device, source: &str, entry_point: &str) -> wgpu::ComputePipeline {
        compute_pipeline(device, &self.bind_group_layout, source, entry_point)
    }
}

/// How a kernel's work is laid over the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// One loss per element; one workgroup per tile of `TILE_ELEMENTS`.
    Elements,
    /// One loss per row; `rows_per_workgroup` rows per workgroup.
    Rows {
        /// Rows each workgroup holds.
        rows_per_workgroup: u32,
    },
}

/// What a call dispatches: the family kernel and the reduction, on the shared layout.
#[derive(Clone, Copy)]
pub(crate) struct FamilyPipelines<'a> {
    pub layout: &'a FamilyLayout,
    pub kernel: &'a wgpu::ComputePipeline,
    pub reduce: &'a wgpu::ComputePipeline,
    pub work: Work,
}

/// Targets as uploaded.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TargetUpload<'a> {
    /// The kernel reads no targets.
    None,
    /// One value per element, laid out like the inputs.
    PerElement(&'a [f32]),
    /// One class index per row.
    PerRow(&'a [u32]),
}

/// One call of a family kernel on host slices (already validated).
pub(crate) struct FamilyJob<'a> {
    pub rows: usize,
    pub classes: usize,
    pub inputs: &'a [f32],
    pub targets: TargetUpload<'a>,
    /// Per-class parameters the kernel reads (BCE: weights then pos_weights).
    pub class_params: Option<&'a [f32]>,
    /// Receives the gradient (the inputs' layout) when given.
    pub gradient: Option<&'a mut [f32]>,
    /// Kernel-specific `FLAG_*` bits (the gradient and losses bits are added here).
    pub flags: u32,
    pub label_smoothing: f32,
    /// Factor of the gradient (1/divisor for a mean).
    pub gradient_scale: f32,
    /// `Some(d)`: one number, Σ losses / d; `None`: every loss (per element or per row).
    pub divisor: Option<f64>,
}

/// Splits `rows × classes` into chunks (elements of whole tiles, or rows) whose
/// every binding stays within `max_binding` bytes; the targets' windows are
/// those of the inputs (per-row targets get theirs in [`plan`]).
fn plan_chunks(work: Work, rows: u64, classes: u64, max_binding: u64, alignment: u64) -> Result<Vec<Chunk>> {
    let usable_words = max_binding.saturating_sub(alignment) / 4;
    let (total, per_chunk, words_per_item) = match work {
        Work::Elements => (rows * classes, usable_words / TILE_ELEMENTS * TILE_ELEMENTS, 1),
        Work::Rows { .. } => (rows, usable_words / classes, classes),
    };
    if per_chunk == 0 {
        return Err(Error::TooLarge(format!(
            "one row of {classes} classes needs {} bytes, above the {max_binding} byte storage binding limit",
            classes * 4
        )));
    }
    Ok(super::pipeline::plan_chunks(total, per_chunk, |first, count| {
        let inputs = Window::new(first * words_per_item * 4, count * words_per_item * 4, alignment);
        (inputs, inputs)
    }))
}

/// The family's device buffers, kept between calls (in the context's workspace)
/// and replaced only when a call needs more room, so that repeated calls of a
/// shape allocate no buffer. No family kernel reads past the sizes its
/// parameters give, so a larger buffer than a call needs is never misread.
pub(crate) struct FamilyBuffers {
    inputs: GrowableBuffer,
    targets: GrowableBuffer,
    class_params: GrowableBuffer,
    gradient: GrowableBuffer,
    losses: GrowableBuffer,
    partials: GrowableBuffer,
    result: GrowableBuffer,
    params: GrowableBuffer,
    staging: GrowableBuffer,
}

impl Default for FamilyBuffers {
    fn default() -> Self {
        let input = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let output = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        Self {
            inputs: GrowableBuffer::new("xent family inputs", input),
            targets: GrowableBuffer::new("xent family targets", input),
            class_params: GrowableBuffer::new("xent family class parameters", input),
            gradient: GrowableBuffer::new("xent family gradient", output),
            losses: GrowableBuffer::new("xent family losses", output),
            partials: GrowableBuffer::new("xent family partials", output),
            result: GrowableBuffer::new("xent family result", output),
            params: GrowableBuffer::new(
                "xent family params",
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
            staging: GrowableBuffer::new(
                "xent family readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        }
    }
}

impl FamilyBuffers {
    /// Bytes of device memory held.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        [
            &self.inputs,
            &self.targets,
            &self.class_params,
            &self.gradient,
            &self.losses,
            &self.partials,
            &self.result,
            &self.params,
            &self.staging,
        ]
        .iter()
        .map(|buffer| buffer.bytes())
        .sum()
    }
}

/// The device buffers of one call (handles to the kept [`FamilyBuffers`]).
struct CallBuffers {
    inputs: wgpu::Buffer,
    targets: Option<wgpu::Buffer>,
    class_params: Option<wgpu::Buffer>,
    gradient: Option<wgpu::Buffer>,
    losses: Option<wgpu::Buffer>,
    partials: wgpu::Buffer,
    result: wgpu::Buffer,
    params: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// Where the staging buffer holds each result, in bytes.
#[derive(Clone, Copy, Debug)]
struct StagingLayout {
    /// Per-element or per-row losses (reduction `none`): offset and length.
    values: (u64, u64),
    /// The gradient: offset and length.
    gradient: (u64, u64),
    total: u64,
}

impl StagingLayout {
    fn new(value_count: u64, gradient_count: u64) -> Self {
        let align = |bytes: u64| bytes.div_ceil(STAGING_ALIGNMENT) * STAGING_ALIGNMENT;
        let values = (STAGING_ALIGNMENT, value_count * 4);
        let gradient = (align(values.0 + values.1), gradient_count * 4);
        Self {
            values,
            gradient,
            total: gradient.0 + gradient.1,
        }
    }
}

/// Sizes derived from a job, checked against the adapter's limits.
struct Plan {
    chunks: Vec<Chunk>,
    /// Entries of `partials`: tiles (elementwise) or rows.
    partial_count: u64,
    /// Losses read back for reduction `none` (elements or rows), else 0.
    value_count: u64,
    flags: u32,
    staging: StagingLayout,
}

fn plan(gpu: &Gpu, pipelines: FamilyPipelines<'_>, job: &FamilyJob<'_>) -> Result<Plan> {
    let limits = gpu.limits();
    let max_binding = gpu.max_binding_size();
    let rows = job.rows as u64;
    let classes = job.classes as u64;
    let elements = job.inputs.len() as u64;
    if elements > u64::from(u32::MAX) {
        return Err(Error::TooLarge(format!(
            "{elements} elements do not fit 32-bit indices"
        )));
    }
    if elements * 4 > limits.max_buffer_size {
        return Err(Error::TooLarge(format!(
            "{} bytes of inputs exceed the adapter's max_buffer_size ({})",
            elements * 4,
            limits.max_buffer_size
        )));
    }
    let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
    let mut chunks = plan_chunks(pipelines.work, rows, classes, max_binding, alignment)?;
    if let (Work::Rows { .. }, TargetUpload::PerRow(_)) = (pipelines.work, job.targets) {
        for chunk in &mut chunks {
            chunk.targets = Window::new(chunk.first * 4, chunk.count * 4, alignment);
        }
    }
    let partial_count = match pipelines.work {
        Work::Elements => elements.div_ceil(TILE_ELEMENTS),
        Work::Rows { .. } => rows,
    };
    let class_param_bytes = job.class_params.map_or(0, |values| values.len() as u64 * 4);
    for (what, bytes) in [
        ("per-row or per-tile losses", partial_count * 4),
        ("class parameters", class_param_bytes),
    ] {
        if bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{bytes} bytes of {what} exceed the {max_binding} byte binding limit"
            )));
        }
    }
    let reduced = job.divisor.is_some();
    let value_count = match (reduced, pipelines.work) {
        (true, _) => 0,
        (false, Work::Elements) => elements,
        (false, Work::Rows { .. }) => rows,
    };
    let mut flags = job.flags;
    if job.gradient.is_some() {
        flags |= FLAG_WRITE_GRADIENT;
    }
    if !reduced && pipelines.work == Work::Elements {
        flags |= FLAG_WRITE_LOSSES;
    }
    let gradient_count = if job.gradient.is_some() { elements } else { 0 };
    let staging = StagingLayout::new(value_count, gradient_count);
    Ok(Plan {
        chunks,
        partial_count,
        value_count,
        flags,
        staging,
    })
}

/// Runs `job` with `pipelines` on `gpu`: upload, one submission, one readback.
/// Writes the gradient into `job.gradient` and returns the loss.
pub(crate) fn run_family(
    gpu: &Gpu,
    kept: &mut FamilyBuffers,
    pipelines: FamilyPipelines<'_>,
    job: FamilyJob<'_>,
) -> Result<Loss> {
    let plan = plan(gpu, pipelines, &job)?;
    let buffers = gpu.checked(|| {
        let buffers = call_buffers(gpu, kept, &job, &plan);
        let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("xent family call"),
        });
        record(gpu, &mut encoder, pipelines, &buffers, &plan, job.divisor.is_some())?;
        copy_to_staging(&mut encoder, &buffers, &plan);
        gpu.queue().submit([encoder.finish()]);
        Ok(buffers)
    })?;
    read_back(gpu, &buffers, &plan, job.gradient)
}

/// The call's buffers from `kept` (grown where too small), with the inputs,
/// targets, class parameters and parameter blocks uploaded.
fn call_buffers(gpu: &Gpu, kept: &mut FamilyBuffers, job: &FamilyJob<'_>, plan: &Plan) -> CallBuffers {
    let device = gpu.device();
    let upload = |buffer: &mut GrowableBuffer, bytes: &[u8]| {
        let buffer = buffer.ensure(device, (bytes.len() as u64).max(4)).clone();
        gpu.queue().write_buffer(&buffer, 0, bytes);
        buffer
    };
    let output = |buffer: &mut GrowableBuffer, bytes: u64| buffer.ensure(device, bytes.max(4)).clone();
    let elements = job.inputs.len() as u64;
    let targets = match job.targets {
        TargetUpload::None => None,
        TargetUpload::PerElement(values) => Some(upload(&mut kept.targets, bytemuck::cast_slice(values))),
        TargetUpload::PerRow(values) => Some(upload(&mut kept.targets, bytemuck::cast_slice(values))),
    };
    let losses_written = plan.flags & FLAG_WRITE_LOSSES != 0;
    CallBuffers {
        inputs: upload(&mut kept.inputs, bytemuck::cast_slice(job.inputs)),
        targets,
        class_params: job
            .class_params
            .map(|values| upload(&mut kept.class_params, bytemuck::cast_slice(values))),
        gradient: job.gradient.as_ref().map(|_| output(&mut kept.gradient, elements * 4)),
        losses: losses_written.then(|| output(&mut kept.losses, elements * 4)),
        partials: output(&mut kept.partials, plan.partial_count * 4),
        result: output(&mut kept.result, 16),
        params: upload(&mut kept.params, &call_params(job, plan)),
        staging: output(&mut kept.staging, plan.staging.total),
    }
}

/// One parameter block per chunk, then the reduction's, `PARAMS_STRIDE` bytes apart.
fn call_params(job: &FamilyJob<'_>, plan: &Plan) -> Vec<u8> {
    let mut blocks: Vec<FamilyParams> = plan
        .chunks
        .iter()
        .map(|chunk| FamilyParams {
            count: chunk.count as u32,
            classes: job.classes as u32,
            first_index: chunk.first as u32,
            input_offset: chunk.inputs.first_word,
            targets_offset: chunk.targets.first_word,
            flags: plan.flags,
            label_smoothing: job.label_smoothing,
            scale: job.gradient_scale,
            ..FamilyParams::default()
        })
        .collect();
    blocks.push(FamilyParams {
        count: plan.partial_count as u32,
        classes: job.classes as u32,
        divisor: job.divisor.unwrap_or(1.0) as f32,
        ..FamilyParams::default()
    });
    params_bytes(&blocks)
}

/// Records every chunk's dispatch and the reduction into one compute pass.
fn record(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    pipelines: FamilyPipelines<'_>,
    buffers: &CallBuffers,
    plan: &Plan,
    reduced: bool,
) -> Result<()> {
    let device = gpu.device();
    let max_per_dimension = gpu.limits().max_compute_workgroups_per_dimension;
    let layout = pipelines.layout;
    let chunk_groups: Vec<(wgpu::BindGroup, (u32, u32))> = plan
        .chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let workgroups = match pipelines.work {
                Work::Elements => chunk.count.div_ceil(TILE_ELEMENTS),
                Work::Rows { rows_per_workgroup } => chunk.count.div_ceil(u64::from(rows_per_workgroup)),
            };
            Ok((
                chunk_bind_group(device, layout, buffers, index, chunk),
                dispatch_shape(workgroups, max_per_dimension)?,
            ))
        })
        .collect::<Result<_>>()?;
    let reduce_group = reduce_bind_group(device, layout, buffers, plan.chunks.len());
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("xent family"),
        timestamp_writes: None,
    });
    pass.set_pipeline(pipelines.kernel);
    for (group, (x, y)) in &chunk_groups {
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(*x, *y, 1);
    }
    if reduced {
        pass.set_pipeline(pipelines.reduce);
        pass.set_bind_group(0, &reduce_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    Ok(())
}

fn chunk_bind_group(
    device: &wgpu::Device,
    layout: &FamilyLayout,
    buffers: &CallBuffers,
    index: usize,
    chunk: &Chunk,
) -> wgpu::BindGroup {
    fn windowed<'a>(
        buffer: Option<&'a wgpu::Buffer>,
        window: Window,
        unused: &'a wgpu::Buffer,
    ) -> wgpu::BindingResource<'a> {
        match buffer {
            Some(buffer) => window.binding(buffer),
            None => unused.as_entire_binding(),
        }
    }
    let read = &layout.unused_read;
    let write = &layout.unused_write;
    let entries = [
        (BINDING_PARAMS, params_binding::<FamilyParams>(&buffers.params, index)),
        (BINDING_INPUTS, chunk.inputs.binding(&buffers.inputs)),
        (BINDING_TARGETS, windowed(buffers.targets.as_ref(), chunk.targets, read)),
        (
            BINDING_GRADIENT,
            windowed(buffers.gradient.as_ref(), chunk.inputs, write),
        ),
        (BINDING_LOSSES, windowed(buffers.losses.as_ref(), chunk.inputs, write)),
        (BINDING_PARTIALS, buffers.partials.as_entire_binding()),
        (
            BINDING_CLASS_PARAMS,
            buffers.class_params.as_ref().unwrap_or(read).as_entire_binding(),
        ),
        (BINDING_RESULT, buffers.result.as_entire_binding()),
    ];
    bind_group(device, layout, entries)
}

fn reduce_bind_group(
    device: &wgpu::Device,
    layout: &FamilyLayout,
    buffers: &CallBuffers,
    block: usize,
) -> wgpu::BindGroup {
    let read = &layout.unused_read;
    let write = &layout.unused_write;
    let entries = [
        (BINDING_PARAMS, params_binding::<FamilyParams>(&buffers.params, block)),
        (BINDING_INPUTS, read.as_entire_binding()),
        (BINDING_TARGETS, read.as_entire_binding()),
        (BINDING_GRADIENT, write.as_entire_binding()),
        (BINDING_LOSSES, write.as_entire_binding()),
        (BINDING_PARTIALS, buffers.partials.as_entire_binding()),
        (BINDING_CLASS_PARAMS, read.as_entire_binding()),
        (BINDING_RESULT, buffers.result.as_entire_binding()),
    ];
    bind_group(device, layout, entries)
}

fn bind_group(
    device: &wgpu::Device,
    layout: &FamilyLayout,
    resources: [(u32, wgpu::BindingResource<'_>); 8],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .into_iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("xent family"),
        layout: &layout.bind_group_layout,
        entries: &entries,
    })
}

/// Copies the result, the losses read back and the gradient into the staging buffer.
fn copy_to_staging(encoder: &mut wgpu::CommandEncoder, buffers: &CallBuffers, plan: &Plan) {
    encoder.copy_buffer_to_buffer(&buffers.result, 0, &buffers.staging, 0, 4);
    let (values_offset, values_bytes) = plan.staging.values;
    if values_bytes > 0 {
        let source = buffers.losses.as_ref().unwrap_or(&buffers.partials);
        encoder.copy_buffer_to_buffer(source, 0, &buffers.staging, values_offset, values_bytes);
    }
    let (gradient_offset, gradient_bytes) = plan.staging.gradient;
    if let Some(gradient) = &buffers.gradient {
        encoder.copy_buffer_to_buffer(gradient, 0, &buffers.staging, gradient_offset, gradient_bytes);
    }
}

/// Maps the staging buffer, copies the gradient out and returns the loss.
fn read_back(gpu: &Gpu, buffers: &CallBuffers, plan: &Plan, gradient: Option<&mut [f32]>) -> Result<Loss> {
    let slice = buffers.staging.slice(..plan.staging.total);
    // Declared before the view, so dropped (unmapping) after it, on every path.
    let _unmap = UnmapOnDrop {
        gpu,
        buffers: vec![&buffers.staging],
    };
    pollster::block_on(map_for_reading(gpu, &[slice], Wait::Inline))?;
    let loss = {
        let bytes = slice
            .get_mapped_range()
            .map_err(|error| Error::Readback(error.to_string()))?;
        let floats = |(offset, length): (u64, u64)| -> &[f32] {
            bytemuck::cast_slice(&bytes[offset as usize..(offset + length) as usize])
        };
        if let Some(gradient) = gradient {
            gradient.copy_from_slice(floats(plan.staging.gradient));
        }
        if plan.value_count > 0 {
            Loss::PerRow(floats(plan.staging.values).to_vec())
        } else {
            Loss::Reduced(floats((0, 4))[0])
        }
    };
    Ok(loss)
}

/// The row kernels of every [`THREADS_PER_ROW_CHOICES`] variant, compiled on first use.
pub(crate) struct RowVariants {
    entry_point: &'static str,
    sources: fn(u32) -> String,
    pipelines: [OnceLock<wgpu::ComputePipeline>; THREADS_PER_ROW_CHOICES.len()],
}

impl RowVariants {
    /// Variants of `entry_point`, whose source for a row width comes from `sources`.
    pub(crate) fn new(entry_point: &'static str, sources: fn(u32) -> String) -> Self {
        Self {
            entry_point,
            sources,
            pipelines: Default::default(),
        }
    }

    /// The pipeline for rows of `classes` columns and its work shape.
    pub(crate) fn for_classes(
        &self,
        device: &wgpu::Device,
        layout: &FamilyLayout,
        classes: usize,
    ) -> (&wgpu::ComputePipeline, Work) {
        let index = row_variant(classes);
        let threads_per_row = THREADS_PER_ROW_CHOICES[index];
        let pipeline = self.pipelines[index]
            .get_or_init(|| layout.pipeline(device, &(self.sources)(threads_per_row), self.entry_point));
        (
            pipeline,
            Work::Rows {
                rows_per_workgroup: FAMILY_WORKGROUP_SIZE / threads_per_row,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_chunks_hold_whole_tiles_within_the_binding() {
        let max_binding = 1 << 20;
        let chunks = plan_chunks(Work::Elements, 1000, 1000, max_binding, 256).expect("plan");
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first, next);
            assert_eq!(chunk.first % TILE_ELEMENTS, 0);
            assert_eq!(chunk.inputs.byte_offset % 256, 0);
            assert!(chunk.inputs.byte_size <= max_binding);
            next += chunk.count;
        }
        assert_eq!(next, 1_000_000);
        assert!(chunks.len() > 1);
    }

    #[test]
    fn row_chunks_cover_every_row_once() {
        let chunks = plan_chunks(Work::Rows { rows_per_workgroup: 4 }, 1003, 77, 4096, 256).expect("plan");
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first, next);
            assert!(chunk.inputs.byte_size <= 4096);
            next += chunk.count;
        }
        assert_eq!(next, 1003);
        assert!(Window::new(77 * 4 * 12, 77 * 4, 256).first_word > 0);
    }

    #[test]
    fn a_row_wider_than_a_binding_is_too_large() {
        let result = plan_chunks(Work::Rows { rows_per_workgroup: 1 }, 2, 1 << 20, 1 << 20, 256);
        assert!(matches!(result, Err(Error::TooLarge(_))));
    }

    #[test]
    fn narrow_rows_share_a_workgroup() {
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(9)], 4);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(100)], 16);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(100_000)], FAMILY_WORKGROUP_SIZE);
    }
}
