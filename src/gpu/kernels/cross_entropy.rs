//! The categorical cross-entropy's kernels (shaders/cross_entropy.wgsl with the
//! logits' storage, target decoding and row reductions it is compiled with, and
//! shaders/reduce.wgsl): its pipelines and bind-group layouts, how a batch is
//! split into row chunks that fit the binding limit, and the dispatch shapes.
//!
//! One categorical cross-entropy call records, into the caller's encoder and
//! inside one compute pass: for the mean, `compute_divisor` (one workgroup: the
//! divisor, which the gradient needs; `sum` and `none` read no divisor and skip
//! it), then for each row chunk `cross_entropy_rows`
//! (loss, z-term, lse, argmax and optionally the gradient; a row per workgroup for
//! large C, several rows per workgroup for small C) followed by
//! `capture_bad_target` (one invocation), then, unless the reduction is `none`,
//! `reduce_losses` (one workgroup).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::contract::row_flags::FLAG_MEAN;
use super::contract::target_formats::{TARGET_I32, TARGET_I64, TARGET_PROBABILITIES, TARGET_U32};
use super::contract::{ReduceParams, RowParams, reduce_bindings, row_bindings, row_flags, target_formats};
use super::pipeline::{
    Chunk, SUMS_SOURCE, Window, bind_group_layout, compute_pipeline, dispatch_shape, params_binding, params_buffer,
    storage_entry, uniform_entry,
};
use crate::error::{Error, Result};
use crate::gpu::memory::create_buffer_with;
use crate::gpu::workgroup::REDUCTION_SCRATCH_BYTES_PER_INVOCATION;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{LogitType, Shape, TargetType};

/// Invocations sharing one row in the narrow-row variants; wider rows take a
/// whole workgroup. The row kernel is compiled for each variant in use.
const NARROW_THREADS_PER_ROW: [u32; 3] = [4, 16, 64];
/// A row gets the narrowest variant that leaves each invocation at most this many logits.
const LOGITS_PER_THREAD: usize = 8;
/// Upper bound on the logits a workgroup keeps on chip between the statistics
/// and gradient passes (the adapter's workgroup memory may lower it).
const MAX_ROW_CACHE: u32 = 8192;
/// Logits cached on chip per workgroup of `workgroup_size`: what the adapter's
/// workgroup memory leaves beside the reductions' scratch, as a power of two, at
/// most `MAX_ROW_CACHE`.
fn row_cache_size(max_workgroup_storage: u32, workgroup_size: u32) -> u32 {
    let scratch = workgroup_size * REDUCTION_SCRATCH_BYTES_PER_INVOCATION;
    let floats = max_workgroup_storage.saturating_sub(scratch) / 4;
    match floats {
        0 => 1,
        floats => (1u32 << floats.ilog2()).min(MAX_ROW_CACHE),
    }
}

/// Invocations of the single reduction workgroup.
pub(crate) const REDUCE_WORKGROUP_SIZE: u32 = 256;
/// Planes of the per-row output buffer: losses, z-terms, lse, argmax.
pub(crate) const ROW_PLANES: u64 = 4;

const CROSS_ENTROPY_SOURCE: &str = include_str!("../../../shaders/cross_entropy.wgsl");
const REDUCE_SOURCE: &str = include_str!("../../../shaders/reduce.wgsl");
const TARGETS_SOURCE: &str = include_str!("../../../shaders/targets.wgsl");
const SHARED_MEMORY_REDUCTIONS: &str = include_str!("../../../shaders/row_reduce_shared.wgsl");
const SUBGROUP_REDUCTIONS: &str = include_str!("../../../shaders/row_reduce_subgroup.wgsl");
const LOGITS_F32: &str = include_str!("../../../shaders/logits_f32.wgsl");
const LOGITS_F16: &str = include_str!("../../../shaders/logits_f16.wgsl");
const LOGITS_BF16: &str = include_str!("../../../shaders/logits_bf16.wgsl");
const LOGITS_F32X4: &str = include_str!("../../../shaders/logits_f32x4.wgsl");
const LOGITS_F16X4: &str = include_str!("../../../shaders/logits_f16x4.wgsl");
const LOGITS_BF16X4: &str = include_str!("../../../shaders/logits_bf16x4.wgsl");
const BF16: &str = include_str!("../../../shaders/bf16.wgsl");
const SCALAR_GROUPS: &str = include_str!("../../../shaders/logits_scalar_groups.wgsl");
const LOGIT_WORDS: &str = include_str!("../../../shaders/logit_words.wgsl");
const LOGIT_WORDS_IN_PLACE: &str = include_str!("../../../shaders/logit_words_in_place.wgsl");
const LOGIT_WORDS_ATOMIC: &str = include_str!("../../../shaders/logit_words_atomic.wgsl");
const LOGIT_WORDS_ATOMIC_IN_PLACE: &str = include_str!("../../../shaders/logit_words_atomic_in_place.wgsl");

/// Where the row kernel writes the gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GradientBinding<'a> {
    /// Loss only.
    Skip,
    /// Into a separate buffer laid out like the logits.
    Buffer(&'a wgpu::Buffer),
    /// Over the logits.
    InPlace,
}

/// The gradient modes the row kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum GradientMode {
    Skip,
    Separate,
    InPlace,
}

impl GradientBinding<'_> {
    fn mode(&self) -> GradientMode {
        match self {
            GradientBinding::Skip => GradientMode::Skip,
            GradientBinding::Buffer(_) => GradientMode::Separate,
            GradientBinding::InPlace => GradientMode::InPlace,
        }
    }
}

/// Buffers one recorded call reads and writes.
pub(crate) struct Bindings<'a> {
    pub logits: &'a wgpu::Buffer,
    pub logit_type: LogitType,
    pub targets: &'a wgpu::Buffer,
    pub target_type: TargetType,
    pub gradient: GradientBinding<'a>,
    /// C class weights, when the options have them.
    pub weights: Option<&'a wgpu::Buffer>,
    /// `ROW_PLANES` planes of `plane_stride` rows.
    pub row_outputs: &'a wgpu::Buffer,
    pub plane_stride: u64,
    /// [loss, z_loss, divisor, unused] f32.
    pub scalars: &'a wgpu::Buffer,
    pub status: &'a wgpu::Buffer,
}

/// What one recorded call computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job<'a> {
    pub shape: Shape,
    pub options: &'a CrossEntropyOptions,
}

/// Splits `shape` into chunks whose every binding stays within `max_binding` bytes.
fn plan_chunks(
    shape: Shape,
    logit_type: LogitType,
    target_type: TargetType,
    max_binding: u64,
    alignment: u64,
) -> Result<Vec<Chunk>> {
    let classes = shape.classes as u64;
    let spatial = shape.spatial as u64;
    let logit_size = logit_type.size_in_bytes() as u64;
    let soft = target_type == TargetType::Probabilities;
    let target_row_bytes = if soft {
        classes * 4
    } else {
        target_type.size_in_bytes() as u64
    };
    let block_bytes = (classes * logit_size).max(target_row_bytes) * spatial;
    // Room for the aligned-down start and the rounding up to whole words.
    let usable = max_binding.saturating_sub(alignment + 4);
    let blocks_per_chunk = (usable / block_bytes).min(u64::from(u32::MAX) / spatial);
    if blocks_per_chunk == 0 {
        return Err(Error::TooLarge(format!(
            "one block of {} classes × {} positions needs {block_bytes} bytes, above the {max_binding} byte \
             storage binding limit",
            shape.classes, shape.spatial
        )));
    }
    let rows_per_chunk = blocks_per_chunk * spatial;
    Ok(super::pipeline::plan_chunks(
        shape.rows as u64,
        rows_per_chunk,
        |first_row, rows| {
            (
                Window::of_elements(
                    first_row * classes * logit_size,
                    rows * classes * logit_size,
                    alignment,
                    logit_size,
                ),
                Window::new(first_row * target_row_bytes, rows * target_row_bytes, alignment),
            )
        },
    ))
}

/// Invocations sharing each row of `classes` logits in a workgroup of
/// `workgroup_size`: the narrowest narrow-row variant (below the workgroup size)
/// that leaves each invocation at most `LOGITS_PER_THREAD` logits, else the whole workgroup.
fn threads_per_row(classes: usize, workgroup_size: u32) -> u32 {
    NARROW_THREADS_PER_ROW
        .iter()
        .copied()
        .filter(|&threads| threads < workgroup_size)
        .find(|&threads| classes <= threads as usize * LOGITS_PER_THREAD)
        .unwrap_or(workgroup_size)
}

/// `target_format` codes of shaders/targets.wgsl.
fn target_format_code(target_type: TargetType) -> u32 {
    match target_type {
        TargetType::U32 => TARGET_U32,
        TargetType::I32 => TARGET_I32,
        TargetType::I64 => TARGET_I64,
        TargetType::Probabilities => TARGET_PROBABILITIES,
    }
}

/// `ignore_index` as the (low, high) words of an i64.
fn ignore_words(ignore_index: i64) -> (u32, u32) {
    let bits = ignore_index as u64;
    (bits as u32, (bits >> 32) as u32)
}

/// Everything the parameters and bind groups of a recorded call depend on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RecordKey {
    logits: wgpu::Buffer,
    logit_type: LogitType,
    targets: wgpu::Buffer,
    target_type: TargetType,
    gradient: Option<wgpu::Buffer>,
    gradient_mode: GradientMode,
    weights: Option<wgpu::Buffer>,
    plane_stride: u64,
    shape: Shape,
    options: CrossEntropyOptions,
    max_binding: u64,
}

impl RecordKey {
    fn new(bindings: &Bindings<'_>, job: Job<'_>, max_binding: u64) -> Self {
        Self {
            logits: bindings.logits.clone(),
            logit_type: bindings.logit_type,
            targets: bindings.targets.clone(),
            target_type: bindings.target_type,
            gradient: match bindings.gradient {
                GradientBinding::Buffer(buffer) => Some(buffer.clone()),
                GradientBinding::Skip | GradientBinding::InPlace => None,
            },
            gradient_mode: bindings.gradient.mode(),
            weights: bindings.weights.cloned(),
            plane_stride: bindings.plane_stride,
            shape: job.shape,
            options: job.options.clone(),
            max_binding,
        }
    }
}

/// The parameters and bind groups of the last call recorded into one
/// `DeviceOutputs` (whose own buffers they also bind).
pub(crate) struct RecordCache {
    key: RecordKey,
    chunks: Vec<Chunk>,
    chunk_groups: Vec<wgpu::BindGroup>,
    reduce_group: wgpu::BindGroup,
    /// Kept alive with the bind groups that bind it.
    _params: wgpu::Buffer,
}

/// The options a row kernel is compiled for (constants of its prelude).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct OptionFeatures {
    weights: bool,
    logit_scale: bool,
    softcap: bool,
    /// Label smoothing or soft targets: the per-class spread sums.
    spread: bool,
}

impl OptionFeatures {
    fn of(options: &CrossEntropyOptions, target_type: TargetType) -> Self {
        Self {
            weights: options.weight.is_some(),
            logit_scale: options.logit_scale != 1.0,
            softcap: options.softcap.is_some(),
            spread: options.label_smoothing > 0.0 || target_type == TargetType::Probabilities,
        }
    }
}

/// What distinguishes one compiled row kernel from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RowKernelKey {
    threads_per_row: u32,
    /// Groups of 4 logits per load and store (see [`vectorised`]).
    vectorised: bool,
    logit_type: LogitType,
    gradient: GradientMode,
    features: OptionFeatures,
}

/// The compiled cross-entropy pipelines and their layouts.
pub(crate) struct CrossEntropyKernels {
    rows_layout: wgpu::BindGroupLayout,
    /// The same with the logits writable, for the in-place gradient.
    rows_layout_in_place: wgpu::BindGroupLayout,
    reduce_layout: wgpu::BindGroupLayout,
    /// Row kernels, compiled on first use.
    row_kernels: Mutex<HashMap<RowKernelKey, Arc<wgpu::ComputePipeline>>>,
    /// `capture_bad_target` for each rows layout (read-only logits, writable logits).
    capture_bad_target: [wgpu::ComputePipeline; 2],
    compute_divisor: wgpu::ComputePipeline,
    reduce_losses: wgpu::ComputePipeline,
    /// Bound in place of absent read-only inputs (weights, targets the divisor skips).
    unused: wgpu::Buffer,
    /// Bound as the gradient of loss-only and in-place calls, which never write it.
    unused_gradient: wgpu::Buffer,
    uses_subgroups: bool,
    min_subgroup_size: u32,
    /// Invocations per workgroup of the row kernels (see
    /// [`choose_workgroup_size`](crate::gpu::workgroup::choose_workgroup_size)).
    workgroup_size: u32,
    row_cache_size: u32,
    has_f16: bool,
}

impl CrossEntropyKernels {
    pub(crate) fn new(device: &wgpu::Device, adapter: &wgpu::Adapter, subgroups: bool, workgroup_size: u32) -> Self {
        let rows_entries = |logits_read_only| {
            use row_bindings::*;
            [
                uniform_entry(BINDING_PARAMS),
                storage_entry(BINDING_LOGITS, logits_read_only),
                storage_entry(BINDING_TARGETS, true),
                storage_entry(BINDING_GRADIENT, false),
                storage_entry(BINDING_ROW_OUTPUTS, false),
                storage_entry(BINDING_STATUS, false),
                storage_entry(BINDING_CLASS_WEIGHTS, true),
                storage_entry(BINDING_SCALARS, true),
            ]
        };
        let rows_layout = bind_group_layout(device, "xent rows", &rows_entries(true));
        let rows_layout_in_place = bind_group_layout(device, "xent rows in place", &rows_entries(false));
        let reduce_layout = bind_group_layout(
            device,
            "xent reduce",
            &[
                uniform_entry(reduce_bindings::BINDING_PARAMS),
                storage_entry(reduce_bindings::BINDING_ROW_OUTPUTS, true),
                storage_entry(reduce_bindings::BINDING_TARGETS, true),
                storage_entry(reduce_bindings::BINDING_CLASS_WEIGHTS, true),
                storage_entry(reduce_bindings::BINDING_SCALARS, false),
            ],
        );
        let min_subgroup_size = adapter.get_info().subgroup_min_size.max(1);
        let row_cache_size = row_cache_size(device.limits().max_compute_workgroup_storage_size, workgroup_size);
        let capture = |layout, gradient| {
            let config = RowKernelConfig {
                key: RowKernelKey {
                    threads_per_row: workgroup_size,
                    vectorised: false,
                    logit_type: LogitType::F32,
                    gradient,
                    features: OptionFeatures::default(),
                },
                subgroups,
                min_subgroup_size,
                workgroup_size,
                row_cache_size,
            };
            compute_pipeline(device, layout, &config.source(), "capture_bad_target")
        };
        let capture_bad_target = [
            capture(&rows_layout, GradientMode::Separate),
            capture(&rows_layout_in_place, GradientMode::InPlace),
        ];
        let reduce_source = reduce_source();
        let compute_divisor = compute_pipeline(device, &reduce_layout, &reduce_source, "compute_divisor");
        let reduce_losses = compute_pipeline(device, &reduce_layout, &reduce_source, "reduce_losses");
        let placeholder = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let unused = placeholder("xent unused input");
        let unused_gradient = placeholder("xent unused gradient");
        let kernels = Self {
            rows_layout,
            rows_layout_in_place,
            reduce_layout,
            row_kernels: Mutex::new(HashMap::new()),
            capture_bad_target,
            compute_divisor,
            reduce_losses,
            unused,
            unused_gradient,
            uses_subgroups: subgroups,
            min_subgroup_size,
            workgroup_size,
            row_cache_size,
            has_f16: device.features().contains(wgpu::Features::SHADER_F16),
        };
        // Compile the common large-C kernel now so that a broken shader fails the context.
        let widest = RowKernelKey {
            threads_per_row: workgroup_size,
            vectorised: true,
            logit_type: LogitType::F32,
            gradient: GradientMode::Separate,
            features: OptionFeatures::default(),
        };
        kernels.row_kernel(device, widest);
        kernels
    }

    /// The row kernel for `key`, compiled on first use.
    fn row_kernel(&self, device: &wgpu::Device, key: RowKernelKey) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.row_kernels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pipeline = cache.entry(key).or_insert_with(|| {
            let config = RowKernelConfig {
                key,
                // Subgroups reduce whole workgroups; narrower rows use the segmented tree.
                subgroups: self.uses_subgroups && key.threads_per_row == self.workgroup_size,
                min_subgroup_size: self.min_subgroup_size,
                workgroup_size: self.workgroup_size,
                row_cache_size: self.row_cache_size,
            };
            let layout = if key.gradient == GradientMode::InPlace {
                &self.rows_layout_in_place
            } else {
                &self.rows_layout
            };
            Arc::new(compute_pipeline(device, layout, &config.source(), "cross_entropy_rows"))
        });
        Arc::clone(pipeline)
    }

    pub(crate) fn uses_subgroups(&self) -> bool {
        self.uses_subgroups
    }

    pub(crate) fn workgroup_size(&self) -> u32 {
        self.workgroup_size
    }

    /// Records `job` on `bindings` into `encoder`: clears the status words, then one
    /// compute pass with the divisor, every chunk's dispatches and the final
    /// reduction. `timestamps` (if any) brackets that pass. The parameters and
    /// bind groups are kept in `cache` and reused while the next call has the same
    /// buffers, shape and options, so a repeated call allocates nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        max_binding: u64,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        cache: &Mutex<Option<RecordCache>>,
    ) -> Result<()> {
        let key = RecordKey::new(bindings, job, max_binding);
        let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.as_ref().is_none_or(|cached| cached.key != key) {
            *cache = Some(self.prepare(device, bindings, job, max_binding, key)?);
        }
        let Some(prepared) = cache.as_ref() else {
            return Err(Error::Gpu("the recorded call was not prepared".into()));
        };
        let limits = device.limits();
        let threads_per_row = threads_per_row(job.shape.classes, self.workgroup_size);
        let rows_per_workgroup = self.workgroup_size / threads_per_row;
        let kernel = RowKernelKey {
            threads_per_row,
            vectorised: vectorised(job.shape, &prepared.chunks),
            logit_type: bindings.logit_type,
            gradient: bindings.gradient.mode(),
            features: OptionFeatures::of(job.options, bindings.target_type),
        };
        let rows_pipeline = self.row_kernel(device, kernel);
        let capture_bad_target = &self.capture_bad_target[usize::from(kernel.gradient == GradientMode::InPlace)];
        let dispatches = prepared
            .chunks
            .iter()
            .map(|chunk| {
                dispatch_shape(
                    chunk.count.div_ceil(u64::from(rows_per_workgroup)),
                    limits.max_compute_workgroups_per_dimension,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        encoder.clear_buffer(bindings.status, 0, None);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent cross-entropy"),
            timestamp_writes: timestamps,
        });
        // Only the mean reads the divisor (the row kernel under FLAG_MEAN,
        // reduce_losses when it divides).
        if job.options.reduction == Reduction::Mean {
            pass.set_pipeline(&self.compute_divisor);
            pass.set_bind_group(0, &prepared.reduce_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        for (group, (x, y)) in prepared.chunk_groups.iter().zip(dispatches) {
            pass.set_pipeline(&rows_pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            pass.set_pipeline(capture_bad_target);
            pass.dispatch_workgroups(1, 1, 1);
        }
        if job.options.reduction != Reduction::None {
            pass.set_pipeline(&self.reduce_losses);
            pass.set_bind_group(0, &prepared.reduce_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        Ok(())
    }

    /// Checks the limits, plans the chunks, and builds the parameters and bind groups.
    fn prepare(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        max_binding: u64,
        key: RecordKey,
    ) -> Result<RecordCache> {
        let alignment = u64::from(device.limits().min_storage_buffer_offset_alignment);
        if bindings.logit_type == LogitType::F16 && !self.has_f16 {
            return Err(Error::InvalidOption(
                "f16 logits need an adapter with Features::SHADER_F16".into(),
            ));
        }
        let chunks = plan_chunks(
            job.shape,
            bindings.logit_type,
            bindings.target_type,
            max_binding,
            alignment,
        )?;
        let row_output_bytes = ROW_PLANES * bindings.plane_stride * 4;
        if row_output_bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{} rows of per-row outputs ({row_output_bytes} bytes) exceed the {max_binding} byte binding limit",
                bindings.plane_stride
            )));
        }
        let counts_targets =
            job.options.reduction == Reduction::Mean && bindings.target_type != TargetType::Probabilities;
        let target_bytes = job.shape.rows as u64 * bindings.target_type.size_in_bytes() as u64;
        if counts_targets && target_bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{target_bytes} bytes of targets exceed the {max_binding} byte binding limit of the mean's divisor"
            )));
        }
        let params = self.params_buffer(device, &chunks, job, bindings);
        let chunk_groups = chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| self.rows_bind_group(device, bindings, &params, index, chunk))
            .collect();
        let reduce_group = self.reduce_bind_group(device, bindings, job, counts_targets);
        Ok(RecordCache {
            key,
            chunks,
            chunk_groups,
            reduce_group,
            _params: params,
        })
    }

    /// One parameter block per chunk, `PARAMS_STRIDE` bytes apart.
    fn params_buffer(
        &self,
        device: &wgpu::Device,
        chunks: &[Chunk],
        job: Job<'_>,
        bindings: &Bindings<'_>,
    ) -> wgpu::Buffer {
        let options = job.options;
        let (ignore_low, ignore_high) = ignore_words(options.ignore_index);
        let mut flags = 0;
        if options.reduction == Reduction::Mean {
            flags |= FLAG_MEAN;
        }
        let weight_total = options.weight.as_ref().map_or(job.shape.classes as f64, |weight| {
            weight.iter().map(|&value| f64::from(value)).sum()
        });
        let blocks: Vec<RowParams> = chunks
            .iter()
            .map(|chunk| RowParams {
                rows: chunk.count as u32,
                classes: job.shape.classes as u32,
                spatial: job.shape.spatial as u32,
                logits_offset: chunk.inputs.first_word,
                targets_offset: chunk.targets.first_word,
                first_row: chunk.first as u32,
                target_format: target_format_code(bindings.target_type),
                flags,
                plane_stride: bindings.plane_stride as u32,
                ignore_low,
                ignore_high,
                label_smoothing: options.label_smoothing,
                z_loss: options.z_loss,
                softcap: options.softcap.unwrap_or(1.0),
                logit_scale: options.logit_scale,
                weight_total: weight_total as f32,
            })
            .collect();
        params_buffer(device, "xent row params", &blocks)
    }

    fn rows_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        params: &wgpu::Buffer,
        index: usize,
        chunk: &Chunk,
    ) -> wgpu::BindGroup {
        let gradient = match bindings.gradient {
            GradientBinding::Buffer(gradient) => chunk.inputs.binding(gradient),
            GradientBinding::Skip | GradientBinding::InPlace => self.unused_gradient.as_entire_binding(),
        };
        let layout = match bindings.gradient {
            GradientBinding::InPlace => &self.rows_layout_in_place,
            GradientBinding::Skip | GradientBinding::Buffer(_) => &self.rows_layout,
        };
        let params = params_binding::<RowParams>(params, index);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent rows"),
            layout,
            entries: &[
                entry(row_bindings::BINDING_PARAMS, params),
                entry(row_bindings::BINDING_LOGITS, chunk.inputs.binding(bindings.logits)),
                entry(row_bindings::BINDING_TARGETS, chunk.targets.binding(bindings.targets)),
                entry(row_bindings::BINDING_GRADIENT, gradient),
                entry(row_bindings::BINDING_ROW_OUTPUTS, self.row_outputs_binding(bindings)),
                entry(row_bindings::BINDING_STATUS, bindings.status.as_entire_binding()),
                entry(
                    row_bindings::BINDING_CLASS_WEIGHTS,
                    bindings.weights.unwrap_or(&self.unused).as_entire_binding(),
                ),
                entry(row_bindings::BINDING_SCALARS, scalars_binding(bindings.scalars)),
            ],
        })
    }

    fn row_outputs_binding<'a>(&self, bindings: &Bindings<'a>) -> wgpu::BindingResource<'a> {
        Window::new(0, ROW_PLANES * bindings.plane_stride * 4, 1).binding(bindings.row_outputs)
    }

    fn reduce_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        counts_targets: bool,
    ) -> wgpu::BindGroup {
        let options = job.options;
        let (ignore_low, ignore_high) = ignore_words(options.ignore_index);
        let constant_divisor = match options.reduction {
            Reduction::Mean => job.shape.rows as f32,
            Reduction::Sum | Reduction::None => 1.0,
        };
        let params = ReduceParams {
            rows: job.shape.rows as u32,
            classes: job.shape.classes as u32,
            target_format: target_format_code(bindings.target_type),
            count_targets: u32::from(counts_targets),
            constant_divisor,
            divide: u32::from(options.reduction == Reduction::Mean),
            has_weights: u32::from(bindings.weights.is_some()),
            plane_stride: bindings.plane_stride as u32,
            ignore_low,
            ignore_high,
            ..ReduceParams::default()
        };
        let params = create_buffer_with(
            device,
            "xent reduce params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::UNIFORM,
        );
        let targets = if counts_targets {
            let bytes = job.shape.rows as u64 * bindings.target_type.size_in_bytes() as u64;
            Window::new(0, bytes, 1).binding(bindings.targets)
        } else {
            self.unused.as_entire_binding()
        };
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent reduce"),
            layout: &self.reduce_layout,
            entries: &[
                entry(reduce_bindings::BINDING_PARAMS, params.as_entire_binding()),
                entry(reduce_bindings::BINDING_ROW_OUTPUTS, self.row_outputs_binding(bindings)),
                entry(reduce_bindings::BINDING_TARGETS, targets),
                entry(
                    reduce_bindings::BINDING_CLASS_WEIGHTS,
                    bindings.weights.unwrap_or(&self.unused).as_entire_binding(),
                ),
                entry(reduce_bindings::BINDING_SCALARS, scalars_binding(bindings.scalars)),
            ],
        })
    }
}

fn scalars_binding(scalars: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    Window::new(0, 16, 1).binding(scalars)
}

/// The source of `compute_divisor` and `reduce_losses`: the generated prelude,
/// shaders/sums.wgsl, shaders/targets.wgsl, then shaders/reduce.wgsl.
fn reduce_source() -> String {
    format!(
        "const WORKGROUP_SIZE: u32 = {REDUCE_WORKGROUP_SIZE}u;\n{}{}{}\n{SUMS_SOURCE}\n{TARGETS_SOURCE}\n{REDUCE_SOURCE}",
        target_formats::WGSL,
        reduce_bindings::WGSL,
        ReduceParams::WGSL
    )
}

/// What one compiled row kernel is specialised for.
struct RowKernelConfig {
    key: RowKernelKey,
    subgroups: bool,
    min_subgroup_size: u32,
    workgroup_size: u32,
    row_cache_size: u32,
}

impl RowKernelConfig {
    /// The kernel's source: a generated prelude of the constants shared with Rust,
    /// the logits' storage for the element type and gradient mode, the target
    /// decoding, the chosen row reductions (with shaders/sums.wgsl for the
    /// workgroup-memory ones), then the kernel; concatenated, nothing replaced.
    fn source(&self) -> String {
        let RowKernelKey {
            threads_per_row,
            vectorised,
            logit_type,
            gradient,
            features,
        } = self.key;
        let workgroup_size = self.workgroup_size;
        let rows_per_workgroup = workgroup_size / threads_per_row;
        let max_subgroups = workgroup_size.div_ceil(self.min_subgroup_size);
        let write_gradient = gradient != GradientMode::Skip;
        let row_cache_size = self.row_cache_size;
        let reductions = if self.subgroups {
            SUBGROUP_REDUCTIONS.to_owned()
        } else {
            format!("{SUMS_SOURCE}\n{SHARED_MEMORY_REDUCTIONS}")
        };
        let enable_f16 = if logit_type == LogitType::F16 {
            "enable f16;\n"
        } else {
            ""
        };
        format!(
            "{enable_f16}\
             const WORKGROUP_SIZE: u32 = {workgroup_size}u;\n\
             const THREADS_PER_ROW: u32 = {threads_per_row}u;\n\
             const ROWS_PER_WORKGROUP: u32 = {rows_per_workgroup}u;\n\
             const MAX_SUBGROUPS: u32 = {max_subgroups}u;\n\
             const ROW_CACHE_SIZE: u32 = {row_cache_size}u;\n\
             const WRITE_GRADIENT: bool = {write_gradient};\n\
             const VECTORISED: bool = {vectorised};\n\
             const USE_WEIGHTS: bool = {};\n\
             const USE_LOGIT_SCALE: bool = {};\n\
             const USE_SOFTCAP: bool = {};\n\
             const USE_SPREAD: bool = {};\n\
             {}{}{}{}\n{}\n{TARGETS_SOURCE}\n{reductions}\n{CROSS_ENTROPY_SOURCE}",
            features.weights,
            features.logit_scale,
            features.softcap,
            features.spread,
            row_flags::WGSL,
            target_formats::WGSL,
            row_bindings::WGSL,
            RowParams::WGSL,
            logits_storage(logit_type, vectorised, gradient == GradientMode::InPlace)
        )
    }
}

/// The logits' storage for `logit_type`, by concatenation only: the element
/// accessors (shaders/logits_*x4.wgsl, groups of 4, when `vectorised`, else
/// shaders/logits_*.wgsl and the scalar group accessors) and the words they read
/// and write (shaders/logit_words*.wgsl: the logits writable and the gradient
/// stored over them when `in_place`; atomic half-word stores for scalar bf16).
fn logits_storage(logit_type: LogitType, vectorised: bool, in_place: bool) -> String {
    let accessors = match (logit_type, vectorised) {
        (LogitType::F32, true) => LOGITS_F32X4,
        (LogitType::F16, true) => LOGITS_F16X4,
        (LogitType::Bf16, true) => LOGITS_BF16X4,
        (LogitType::F32, false) => LOGITS_F32,
        (LogitType::F16, false) => LOGITS_F16,
        (LogitType::Bf16, false) => LOGITS_BF16,
    };
    let atomic_halves = logit_type == LogitType::Bf16 && !vectorised;
    let words = match (atomic_halves, in_place) {
        (false, false) => LOGIT_WORDS,
        (false, true) => LOGIT_WORDS_IN_PLACE,
        (true, false) => LOGIT_WORDS_ATOMIC,
        (true, true) => LOGIT_WORDS_ATOMIC_IN_PLACE,
    };
    let bf16 = if logit_type == LogitType::Bf16 { BF16 } else { "" };
    let groups = if vectorised { "" } else { SCALAR_GROUPS };
    [bf16, accessors, words, groups].join("\n")
}

/// Whether the row kernel can load and store the logits in groups of 4: rows of
/// a multiple of 4 classes, contiguous (no N-d spatial stride), and every chunk's
/// first logit at a multiple of 4 inside its binding, so that each group lies
/// inside one row (and, for 16-bit types, whole 32-bit words belong to one
/// invocation, which is what lets bf16 stores skip the atomics).
fn vectorised(shape: Shape, chunks: &[Chunk]) -> bool {
    shape.spatial == 1
        && shape.classes.is_multiple_of(4)
        && chunks.iter().all(|chunk| chunk.inputs.first_word.is_multiple_of(4))
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

#[cfg(test)]
mod tests;
