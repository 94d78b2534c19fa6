//! The kernels: the one place that knows the WGSL sources, the constants shared
//! with them, the bind-group layouts, how a batch is split into chunks that fit
//! the binding limit, and the dispatch shapes.
//!
//! One call records, into the caller's encoder and inside one compute pass:
//! for each row chunk, `cross_entropy_rows` (loss and, optionally, gradient; a
//! row per workgroup for large C, several rows per workgroup for small C)
//! followed by `capture_bad_target` (one invocation); then, unless the reduction
//! is `none`, `reduce_losses` (one workgroup).

use std::sync::OnceLock;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::input::{Shape, TargetType};

/// Invocations per workgroup of the row kernel.
pub(crate) const WORKGROUP_SIZE: u32 = 256;
/// Invocations sharing one row, by variant: the row kernel is compiled for each.
const THREADS_PER_ROW_CHOICES: [u32; 4] = [4, 16, 64, WORKGROUP_SIZE];
/// A row gets the narrowest variant that leaves each invocation at most this many logits.
const LOGITS_PER_THREAD: usize = 8;
/// Invocations of the single reduction workgroup.
pub(crate) const REDUCE_WORKGROUP_SIZE: u32 = 256;
/// Bytes between per-chunk parameter blocks in the uniform buffer (the largest
/// `min_uniform_buffer_offset_alignment` wgpu allows).
const PARAMS_STRIDE: u64 = 256;

const CROSS_ENTROPY_SOURCE: &str = include_str!("../../shaders/cross_entropy.wgsl");
const REDUCE_SOURCE: &str = include_str!("../../shaders/reduce.wgsl");
const SHARED_MEMORY_REDUCTIONS: &str = include_str!("../../shaders/row_reduce_shared.wgsl");
const SUBGROUP_REDUCTIONS: &str = include_str!("../../shaders/row_reduce_subgroup.wgsl");

/// The uniform block of `cross_entropy_rows` (mirrors `Params` in cross_entropy.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    classes: u32,
    logits_offset: u32,
    targets_offset: u32,
    losses_offset: u32,
    first_row: u32,
    target_format: u32,
    grad_scale: f32,
}

/// The uniform block of `reduce_losses` (mirrors `ReduceParams` in reduce.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    rows: u32,
    divisor: f32,
    padding: [u32; 2],
}

/// Buffers one recorded call reads and writes.
pub(crate) struct Bindings<'a> {
    pub logits: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    pub target_type: TargetType,
    pub gradient: Option<&'a wgpu::Buffer>,
    pub row_losses: &'a wgpu::Buffer,
    pub loss: &'a wgpu::Buffer,
    pub status: &'a wgpu::Buffer,
}

/// What one recorded call computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub shape: Shape,
    /// d L / d loss_r for the gradient: 1/N for mean, 1 otherwise.
    pub grad_scale: f32,
    /// `Some(divisor)` reduces the row losses to sum / divisor; `None` keeps them per row.
    pub reduce_divisor: Option<f32>,
}

/// A byte range of a buffer bound at an aligned offset, and where the data starts in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    byte_offset: u64,
    byte_size: u64,
    /// Index (in 4-byte words) of the first wanted word inside the binding.
    first_word: u32,
}

impl Window {
    fn new(first_byte: u64, byte_len: u64, alignment: u64) -> Self {
        let byte_offset = first_byte / alignment * alignment;
        let lead = first_byte - byte_offset;
        Self {
            byte_offset,
            byte_size: lead + byte_len,
            first_word: (lead / 4) as u32,
        }
    }

    fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.byte_offset,
            size: wgpu::BufferSize::new(self.byte_size),
        })
    }
}

/// A run of consecutive rows whose logits fit one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    first_row: u64,
    rows: u32,
    logits: Window,
    targets: Window,
    losses: Window,
}

/// Splits `shape` into chunks whose every binding stays within `max_binding` bytes.
fn plan_chunks(shape: Shape, target_type: TargetType, max_binding: u64, alignment: u64) -> Result<Vec<Chunk>> {
    let classes = shape.classes as u64;
    let target_bytes = target_type.size_in_bytes() as u64;
    let row_bytes = (classes * 4).max(target_bytes);
    let usable = max_binding.saturating_sub(alignment);
    let rows_per_chunk = (usable / row_bytes).min(u64::from(u32::MAX));
    if rows_per_chunk == 0 {
        return Err(Error::TooLarge(format!(
            "one row of {} classes needs {} bytes, above the {} byte storage binding limit",
            shape.classes,
            classes * 4,
            max_binding
        )));
    }
    let total_rows = shape.rows as u64;
    let chunk_count = total_rows.div_ceil(rows_per_chunk);
    Ok((0..chunk_count)
        .map(|index| {
            let first_row = index * rows_per_chunk;
            let rows = rows_per_chunk.min(total_rows - first_row);
            Chunk {
                first_row,
                rows: rows as u32,
                logits: Window::new(first_row * classes * 4, rows * classes * 4, alignment),
                targets: Window::new(first_row * target_bytes, rows * target_bytes, alignment),
                losses: Window::new(first_row * 4, rows * 4, alignment),
            }
        })
        .collect())
}

/// Workgroup counts (x, y) covering `workgroups`, with x within the per-dimension limit.
fn dispatch_shape(workgroups: u32, max_per_dimension: u32) -> Result<(u32, u32)> {
    let x = workgroups.min(max_per_dimension);
    let y = workgroups.div_ceil(x);
    if y > max_per_dimension {
        return Err(Error::TooLarge(format!(
            "{workgroups} workgroups exceed the dispatch limit"
        )));
    }
    Ok((x, y))
}

/// Index into `THREADS_PER_ROW_CHOICES` of the variant for rows of `classes` logits.
fn row_variant(classes: usize) -> usize {
    THREADS_PER_ROW_CHOICES
        .iter()
        .position(|&threads| classes <= threads as usize * LOGITS_PER_THREAD)
        .unwrap_or(THREADS_PER_ROW_CHOICES.len() - 1)
}

/// The row kernel of one width, with and without the gradient.
struct RowPipelines {
    with_gradient: wgpu::ComputePipeline,
    loss_only: wgpu::ComputePipeline,
}

/// The compiled pipelines and their layouts.
pub(crate) struct Kernels {
    rows_layout: wgpu::BindGroupLayout,
    reduce_layout: wgpu::BindGroupLayout,
    /// One entry per `THREADS_PER_ROW_CHOICES`, compiled on first use.
    row_variants: [OnceLock<RowPipelines>; THREADS_PER_ROW_CHOICES.len()],
    capture_bad_target: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    /// Bound as the gradient of loss-only calls, which never write it.
    unused_gradient: wgpu::Buffer,
    uses_subgroups: bool,
    min_subgroup_size: u32,
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device, adapter: &wgpu::Adapter, subgroups: bool) -> Self {
        let rows_layout = bind_group_layout(
            device,
            "xent rows",
            &[
                uniform_entry(0),
                storage_entry(1, true),
                storage_entry(2, true),
                storage_entry(3, false),
                storage_entry(4, false),
                storage_entry(5, false),
            ],
        );
        let reduce_layout = bind_group_layout(
            device,
            "xent reduce",
            &[uniform_entry(0), storage_entry(1, true), storage_entry(2, false)],
        );
        let min_subgroup_size = adapter.get_info().subgroup_min_size.max(1);
        let widest = RowKernelConfig {
            threads_per_row: WORKGROUP_SIZE,
            subgroups,
            min_subgroup_size,
            write_gradient: false,
        };
        let capture_bad_target = compute_pipeline(device, &rows_layout, &widest.source(), "capture_bad_target");
        let reduce_source = format!("const REDUCE_WORKGROUP_SIZE: u32 = {REDUCE_WORKGROUP_SIZE}u;\n{REDUCE_SOURCE}");
        let reduce = compute_pipeline(device, &reduce_layout, &reduce_source, "reduce_losses");
        let unused_gradient = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("xent unused gradient"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let kernels = Self {
            rows_layout,
            reduce_layout,
            row_variants: Default::default(),
            capture_bad_target,
            reduce,
            unused_gradient,
            uses_subgroups: subgroups,
            min_subgroup_size,
        };
        // Compile the large-C variant now so that a broken shader fails the context.
        kernels.row_pipelines(device, THREADS_PER_ROW_CHOICES.len() - 1);
        kernels
    }

    /// The row kernels of variant `index`, compiled on first use.
    fn row_pipelines(&self, device: &wgpu::Device, index: usize) -> &RowPipelines {
        self.row_variants[index].get_or_init(|| {
            let threads_per_row = THREADS_PER_ROW_CHOICES[index];
            let config = |write_gradient| RowKernelConfig {
                threads_per_row,
                // Subgroups reduce whole workgroups; narrower rows use the segmented tree.
                subgroups: self.uses_subgroups && threads_per_row == WORKGROUP_SIZE,
                min_subgroup_size: self.min_subgroup_size,
                write_gradient,
            };
            let compile = |write_gradient| {
                compute_pipeline(
                    device,
                    &self.rows_layout,
                    &config(write_gradient).source(),
                    "cross_entropy_rows",
                )
            };
            RowPipelines {
                with_gradient: compile(true),
                loss_only: compile(false),
            }
        })
    }

    pub(crate) fn uses_subgroups(&self) -> bool {
        self.uses_subgroups
    }

    /// Records `job` on `bindings` into `encoder`: clears the status words, then one
    /// compute pass with every chunk's dispatches and the final reduction.
    /// `timestamps` (if any) brackets that pass.
    pub(crate) fn record(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &Bindings<'_>,
        job: Job,
        max_binding: u64,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let limits = device.limits();
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
        let chunks = plan_chunks(job.shape, bindings.target_type, max_binding, alignment)?;
        let row_bytes = job.shape.rows as u64 * 4;
        if job.reduce_divisor.is_some() && row_bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{} rows of losses ({row_bytes} bytes) exceed the {max_binding} byte binding limit of the reduction",
                job.shape.rows
            )));
        }
        let params = self.params_buffer(device, &chunks, job, bindings.target_type);
        let chunk_groups: Vec<wgpu::BindGroup> = chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| self.rows_bind_group(device, bindings, &params, index as u64, chunk))
            .collect();
        let reduce_group = job
            .reduce_divisor
            .map(|divisor| self.reduce_bind_group(device, bindings, job.shape.rows, divisor));

        encoder.clear_buffer(bindings.status, 0, None);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent cross-entropy"),
            timestamp_writes: timestamps,
        });
        let variant = row_variant(job.shape.classes);
        let rows_per_workgroup = WORKGROUP_SIZE / THREADS_PER_ROW_CHOICES[variant];
        let row_pipelines = self.row_pipelines(device, variant);
        let rows_pipeline = if bindings.gradient.is_some() {
            &row_pipelines.with_gradient
        } else {
            &row_pipelines.loss_only
        };
        for (chunk, group) in chunks.iter().zip(&chunk_groups) {
            let workgroups = chunk.rows.div_ceil(rows_per_workgroup);
            let (x, y) = dispatch_shape(workgroups, limits.max_compute_workgroups_per_dimension)?;
            pass.set_pipeline(rows_pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            pass.set_pipeline(&self.capture_bad_target);
            pass.dispatch_workgroups(1, 1, 1);
        }
        if let Some(group) = &reduce_group {
            pass.set_pipeline(&self.reduce);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        Ok(())
    }

    /// One parameter block per chunk, `PARAMS_STRIDE` bytes apart.
    fn params_buffer(
        &self,
        device: &wgpu::Device,
        chunks: &[Chunk],
        job: Job,
        target_type: TargetType,
    ) -> wgpu::Buffer {
        let words_per_target = (target_type.size_in_bytes() / 4) as u32;
        let mut bytes = vec![0u8; chunks.len() * PARAMS_STRIDE as usize];
        for (chunk, block) in chunks.iter().zip(bytes.chunks_exact_mut(PARAMS_STRIDE as usize)) {
            let params = RowParams {
                rows: chunk.rows,
                classes: job.shape.classes as u32,
                logits_offset: chunk.logits.first_word,
                targets_offset: chunk.targets.first_word,
                losses_offset: chunk.losses.first_word,
                first_row: chunk.first_row as u32,
                target_format: target_format_code(target_type),
                grad_scale: job.grad_scale,
            };
            debug_assert_eq!(chunk.targets.first_word % words_per_target, 0);
            block[..size_of::<RowParams>()].copy_from_slice(bytemuck::bytes_of(&params));
        }
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("xent row params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    fn rows_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        params: &wgpu::Buffer,
        index: u64,
        chunk: &Chunk,
    ) -> wgpu::BindGroup {
        let gradient = match bindings.gradient {
            Some(gradient) => chunk.logits.binding(gradient),
            None => self.unused_gradient.as_entire_binding(),
        };
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent rows"),
            layout: &self.rows_layout,
            entries: &[
                entry(
                    0,
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: params,
                        offset: index * PARAMS_STRIDE,
                        size: wgpu::BufferSize::new(size_of::<RowParams>() as u64),
                    }),
                ),
                entry(1, chunk.logits.binding(bindings.logits)),
                entry(2, chunk.targets.binding(bindings.targets)),
                entry(3, gradient),
                entry(4, chunk.losses.binding(bindings.row_losses)),
                entry(5, bindings.status.as_entire_binding()),
            ],
        })
    }

    fn reduce_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        rows: usize,
        divisor: f32,
    ) -> wgpu::BindGroup {
        let params = ReduceParams {
            rows: rows as u32,
            divisor,
            padding: [0; 2],
        };
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("xent reduce params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let losses = Window::new(0, rows as u64 * 4, 1);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent reduce"),
            layout: &self.reduce_layout,
            entries: &[
                entry(0, params.as_entire_binding()),
                entry(1, losses.binding(bindings.row_losses)),
                entry(
                    2,
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: bindings.loss,
                        offset: 0,
                        size: wgpu::BufferSize::new(4),
                    }),
                ),
            ],
        })
    }
}

/// `target_format` codes of cross_entropy.wgsl.
fn target_format_code(target_type: TargetType) -> u32 {
    match target_type {
        TargetType::U32 => 0,
        TargetType::I32 => 1,
        TargetType::I64 => 2,
    }
}

/// What one compiled row kernel is specialised for.
struct RowKernelConfig {
    threads_per_row: u32,
    subgroups: bool,
    min_subgroup_size: u32,
    write_gradient: bool,
}

impl RowKernelConfig {
    /// The kernel's source: a generated prelude of the constants shared with Rust,
    /// the chosen row reductions, then the kernel.
    fn source(&self) -> String {
        let threads_per_row = self.threads_per_row;
        let rows_per_workgroup = WORKGROUP_SIZE / threads_per_row;
        let max_subgroups = WORKGROUP_SIZE.div_ceil(self.min_subgroup_size);
        let write_gradient = self.write_gradient;
        let reductions = if self.subgroups {
            SUBGROUP_REDUCTIONS
        } else {
            SHARED_MEMORY_REDUCTIONS
        };
        format!(
            "const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;\n\
             const THREADS_PER_ROW: u32 = {threads_per_row}u;\n\
             const ROWS_PER_WORKGROUP: u32 = {rows_per_workgroup}u;\n\
             const MAX_SUBGROUPS: u32 = {max_subgroups}u;\n\
             const WRITE_GRADIENT: bool = {write_gradient};\n\
             {reductions}\n{CROSS_ENTROPY_SOURCE}"
        )
    }
}

fn compute_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    source: &str,
    entry_point: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(entry_point),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry_point),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry_point),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            // Every workgroup variable is written before it is read.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

fn bind_group_layout(
    device: &wgpu::Device,
    label: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries,
    })
}

fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    layout_entry(binding, wgpu::BufferBindingType::Uniform)
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    layout_entry(binding, wgpu::BufferBindingType::Storage { read_only })
}

fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_aligned_and_cover_the_data() {
        let window = Window::new(1000, 40, 256);
        assert_eq!(
            window,
            Window {
                byte_offset: 768,
                byte_size: 272,
                first_word: 58
            }
        );
    }

    #[test]
    fn chunks_cover_every_row_once_within_the_binding() {
        let shape = Shape::new(1003, 77);
        let max_binding = 4096;
        let chunks = plan_chunks(shape, TargetType::I64, max_binding, 256).expect("plan");
        assert_eq!(chunks.first().map(|chunk| chunk.first_row), Some(0));
        let mut next_row = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first_row, next_row);
            next_row += u64::from(chunk.rows);
            for window in [chunk.logits, chunk.targets, chunk.losses] {
                assert_eq!(window.byte_offset % 256, 0);
                assert!(window.byte_size <= max_binding);
            }
        }
        assert_eq!(next_row, 1003);
        assert_eq!(chunks.len(), 1003usize.div_ceil(((4096 - 256) / (77 * 4)) as usize));
    }

    #[test]
    fn a_row_larger_than_a_binding_is_an_error() {
        let result = plan_chunks(Shape::new(2, 1 << 20), TargetType::U32, 1 << 20, 256);
        assert!(matches!(result, Err(Error::TooLarge(_))));
    }

    #[test]
    fn narrow_rows_share_a_workgroup() {
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(1)], 4);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(32)], 4);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(33)], 16);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(512)], 64);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(513)], WORKGROUP_SIZE);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(262_144)], WORKGROUP_SIZE);
    }

    #[test]
    fn dispatch_shape_splits_beyond_the_dimension_limit() {
        assert_eq!(dispatch_shape(70_000, 65_535).expect("fits"), (65_535, 2));
        assert_eq!(dispatch_shape(10, 65_535).expect("fits"), (10, 1));
    }
}
