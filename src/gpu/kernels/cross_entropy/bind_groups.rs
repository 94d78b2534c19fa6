//! What one recorded categorical cross-entropy call binds: the caller's buffer
//! slices ([`Bindings`]), the bind-group layouts and placeholders
//! ([`Layouts`]), the per-chunk parameter blocks, the bind groups, and the
//! [`RecordCache`] that keeps them while the next call binds the same slices.

pub(crate) use super::super::contract::row_planes;
use super::super::contract::{ReduceParams, RowParams, reduce_bindings, row_bindings, row_flags, target_formats};
use super::super::pipeline::{
    Chunk, SliceKey, Window, bind_group_layout, params_binding, params_buffer, storage_entry, uniform_entry,
};
use super::reduction::{MAX_PARTIALS, ReducePlan};
use super::source::{GradientMode, LogitAccess};
use crate::gpu::memory::create_buffer_with;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{LogitType, Shape, TargetType};

/// Planes of the per-row output buffer: losses, z-terms, lse, argmax, a bad
/// target's two words and the straddling-word pass's halves, the last three
/// shared with the gradient-word pass's sums ([`row_planes`]).
pub(crate) const ROW_PLANES: u64 = row_planes::ROW_PLANES as u64;

/// Where the row kernel writes the gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GradientBinding<'a> {
    /// Loss only.
    Skip,
    /// Into a separate slice laid out like the logits.
    Buffer(wgpu::BufferSlice<'a>),
    /// Over the logits.
    InPlace,
}

impl GradientBinding<'_> {
    pub(crate) fn mode(&self) -> GradientMode {
        match self {
            GradientBinding::Skip => GradientMode::Skip,
            GradientBinding::Buffer(_) => GradientMode::Separate,
            GradientBinding::InPlace => GradientMode::InPlace,
        }
    }
}

/// The upstream gradient the written gradient is multiplied by: `scale`, times
/// `values` (f32) when given, one per row when `per_row`, else its first value
/// for every row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamBinding<'a> {
    pub scale: f32,
    pub values: Option<wgpu::BufferSlice<'a>>,
    pub per_row: bool,
}

/// Buffers one recorded call reads and writes.
pub(crate) struct Bindings<'a> {
    pub logits: wgpu::BufferSlice<'a>,
    pub logit_type: LogitType,
    pub targets: wgpu::BufferSlice<'a>,
    pub target_type: TargetType,
    pub gradient: GradientBinding<'a>,
    pub upstream: UpstreamBinding<'a>,
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
    /// A mean's divisor the caller already wrote into the scalars (the host
    /// door, which has the targets on the host: `DeviceOutputs::write_divisor`),
    /// with the bits `compute_divisor` would give; `false`: the passes find it.
    pub given_divisor: bool,
}

impl Job<'_> {
    /// Whether the mean's divisor is computed before the row kernel
    /// (`compute_divisor`): only the gradient of a mean reads it there, and
    /// only when the caller did not give it and it is not the constant N of
    /// soft targets ([`Job::constant_divisor`]). A loss-only mean has
    /// `reduce_losses` sum it beside the losses instead.
    pub(crate) fn divisor_first(&self, bindings: &Bindings<'_>) -> bool {
        self.options.reduction == Reduction::Mean
            && bindings.gradient.mode() != GradientMode::Skip
            && !self.given_divisor
            && self.constant_divisor(bindings).is_none()
    }

    /// The divisor of a mean over soft targets: N, which the row kernel's
    /// parameters carry (folded into the gradient's scale, as
    /// `upstream_scale · (1 / N)`, the same f32 operations as the kernel's),
    /// so that no pass computes it first.
    fn constant_divisor(&self, bindings: &Bindings<'_>) -> Option<f32> {
        let soft = bindings.target_type == TargetType::Probabilities;
        (self.options.reduction == Reduction::Mean && soft).then_some(self.shape.rows as f32)
    }

    /// Whether `reduce_losses` sums the divisor beside the losses (a mean whose
    /// divisor nothing computed before it), else reads it from the scalars.
    fn folds_divisor(&self, bindings: &Bindings<'_>) -> bool {
        self.options.reduction == Reduction::Mean && !self.divisor_first(bindings) && !self.given_divisor
    }
}

/// Everything the parameters and bind groups of a recorded call depend on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RecordKey {
    logits: SliceKey,
    logit_type: LogitType,
    targets: SliceKey,
    target_type: TargetType,
    gradient: Option<SliceKey>,
    gradient_mode: GradientMode,
    upstream_scale: f32,
    upstream_values: Option<SliceKey>,
    upstream_per_row: bool,
    weights: Option<wgpu::Buffer>,
    plane_stride: u64,
    shape: Shape,
    options: CrossEntropyOptions,
    given_divisor: bool,
    max_binding: u64,
}

impl RecordKey {
    pub(crate) fn new(bindings: &Bindings<'_>, job: Job<'_>, max_binding: u64) -> Self {
        Self {
            logits: SliceKey::of(bindings.logits),
            logit_type: bindings.logit_type,
            targets: SliceKey::of(bindings.targets),
            target_type: bindings.target_type,
            gradient: match bindings.gradient {
                GradientBinding::Buffer(slice) => Some(SliceKey::of(slice)),
                GradientBinding::Skip | GradientBinding::InPlace => None,
            },
            gradient_mode: bindings.gradient.mode(),
            upstream_scale: bindings.upstream.scale,
            upstream_values: bindings.upstream.values.map(SliceKey::of),
            upstream_per_row: bindings.upstream.per_row,
            weights: bindings.weights.cloned(),
            plane_stride: bindings.plane_stride,
            shape: job.shape,
            options: job.options.clone(),
            given_divisor: job.given_divisor,
            max_binding,
        }
    }
}

/// The parameters and bind groups of the last call recorded into one
/// `DeviceOutputs` (whose own buffers they also bind).
pub(crate) struct RecordCache {
    pub(crate) key: RecordKey,
    pub(crate) chunks: Vec<Chunk>,
    /// How the row kernel reaches the logits and the gradient.
    pub(crate) access: LogitAccess,
    pub(crate) chunk_groups: Vec<wgpu::BindGroup>,
    pub(crate) reduce_group: wgpu::BindGroup,
    /// The split-row kernel's buffers and bind groups, when the call splits its rows.
    pub(crate) split: Option<super::split::SplitResources>,
    /// Kept alive with the bind groups that bind it.
    pub(crate) _params: wgpu::Buffer,
}

/// Where each chunk's data lies inside its bindings, beside [`Chunk`]'s logits
/// and targets windows.
pub(crate) struct ChunkWindows {
    /// One per chunk: the gradient's window (the logits' when in place or skipped).
    pub(crate) gradient: Vec<Window>,
    /// The upstream values' window, when there are values.
    pub(crate) upstream: Option<Window>,
    /// Every class target in one binding, for the mean's divisor, which counts
    /// them (`compute_divisor`, or `reduce_losses` for a loss-only mean).
    /// Always there for the mean of class targets; never for soft targets or
    /// the reductions `sum` and `none`.
    pub(crate) reduce_targets: Option<Window>,
}

/// The bind-group layouts of the cross-entropy kernels and the placeholders
/// bound in place of absent buffers.
pub(crate) struct Layouts {
    pub(crate) rows: wgpu::BindGroupLayout,
    /// The same with the logits writable, for the in-place gradient.
    pub(crate) rows_in_place: wgpu::BindGroupLayout,
    pub(crate) reduce: wgpu::BindGroupLayout,
    /// Bound in place of absent read-only inputs (weights, upstream values,
    /// targets the divisor skips).
    unused: wgpu::Buffer,
    /// Bound as the gradient of loss-only and in-place calls, which never write it.
    unused_gradient: wgpu::Buffer,
    /// The two-level reductions' partial sums (`MAX_PARTIALS` vec4<f32>): each
    /// written and folded inside one compute pass, so the calls share it.
    partials: wgpu::Buffer,
}

impl Layouts {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
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
                storage_entry(BINDING_UPSTREAM, true),
            ]
        };
        let reduce_entries = [
            uniform_entry(reduce_bindings::BINDING_PARAMS),
            storage_entry(reduce_bindings::BINDING_ROW_OUTPUTS, true),
            storage_entry(reduce_bindings::BINDING_TARGETS, true),
            storage_entry(reduce_bindings::BINDING_CLASS_WEIGHTS, true),
            storage_entry(reduce_bindings::BINDING_SCALARS, false),
            storage_entry(reduce_bindings::BINDING_PARTIALS, false),
        ];
        let scratch = |label, size| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Self {
            rows: bind_group_layout(device, "xent rows", &rows_entries(true)),
            rows_in_place: bind_group_layout(device, "xent rows in place", &rows_entries(false)),
            reduce: bind_group_layout(device, "xent reduce", &reduce_entries),
            unused: scratch("xent unused input", 16),
            unused_gradient: scratch("xent unused gradient", 16),
            partials: scratch("xent reduce partials", MAX_PARTIALS * 16),
        }
    }

    /// The rows layout of `mode`: writable logits when in place.
    pub(crate) fn rows_layout(&self, mode: GradientMode) -> &wgpu::BindGroupLayout {
        match mode {
            GradientMode::InPlace => &self.rows_in_place,
            GradientMode::Skip | GradientMode::Separate => &self.rows,
        }
    }

    /// One row bind group per chunk, over one parameter block per chunk.
    pub(crate) fn rows_bind_groups(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        chunks: &[Chunk],
        windows: &ChunkWindows,
    ) -> (wgpu::Buffer, Vec<wgpu::BindGroup>) {
        let params = row_params_buffer(device, chunks, windows, job, bindings);
        let groups = chunks
            .iter()
            .zip(&windows.gradient)
            .enumerate()
            .map(|(index, (chunk, gradient))| {
                self.rows_bind_group(device, bindings, &params, index, chunk, *gradient, windows.upstream)
            })
            .collect();
        (params, groups)
    }

    #[allow(clippy::too_many_arguments)]
    fn rows_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        params: &wgpu::Buffer,
        index: usize,
        chunk: &Chunk,
        gradient_window: Window,
        upstream_window: Option<Window>,
    ) -> wgpu::BindGroup {
        let gradient = match bindings.gradient {
            GradientBinding::Buffer(gradient) => gradient_window.binding(gradient.buffer()),
            GradientBinding::Skip | GradientBinding::InPlace => self.unused_gradient.as_entire_binding(),
        };
        let upstream = match (bindings.upstream.values, upstream_window) {
            (Some(values), Some(window)) => window.binding(values.buffer()),
            _ => self.unused.as_entire_binding(),
        };
        let params = params_binding::<RowParams>(params, index);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent rows"),
            layout: self.rows_layout(bindings.gradient.mode()),
            entries: &[
                entry(row_bindings::BINDING_PARAMS, params),
                entry(
                    row_bindings::BINDING_LOGITS,
                    chunk.inputs.binding(bindings.logits.buffer()),
                ),
                entry(
                    row_bindings::BINDING_TARGETS,
                    chunk.targets.binding(bindings.targets.buffer()),
                ),
                entry(row_bindings::BINDING_GRADIENT, gradient),
                entry(row_bindings::BINDING_ROW_OUTPUTS, row_outputs_binding(bindings)),
                entry(row_bindings::BINDING_STATUS, bindings.status.as_entire_binding()),
                entry(row_bindings::BINDING_CLASS_WEIGHTS, self.weights_binding(bindings)),
                entry(row_bindings::BINDING_SCALARS, scalars_binding(bindings.scalars)),
                entry(row_bindings::BINDING_UPSTREAM, upstream),
            ],
        })
    }

    fn weights_binding<'a>(&'a self, bindings: &Bindings<'a>) -> wgpu::BindingResource<'a> {
        bindings.weights.unwrap_or(&self.unused).as_entire_binding()
    }

    /// The bind group of the reductions (shaders/reduce.wgsl); with
    /// `reduce_targets`, the mean's divisor counts those targets, summed by
    /// `compute_divisor` before the row kernel when the gradient needs it
    /// ([`Job::divisor_first`]), else by `reduce_losses` beside the losses.
    pub(crate) fn reduce_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        reduce_targets: Option<Window>,
    ) -> wgpu::BindGroup {
        let options = job.options;
        let (ignore_low, ignore_high) = ignore_words(options.ignore_index);
        let constant_divisor = match options.reduction {
            Reduction::Mean => job.shape.rows as f32,
            Reduction::Sum | Reduction::None => 1.0,
        };
        let plan = ReducePlan::of(job.shape.rows as u64);
        let params = ReduceParams {
            rows: job.shape.rows as u32,
            classes: job.shape.classes as u32,
            target_format: target_format_code(bindings.target_type),
            count_targets: u32::from(options.reduction == Reduction::Mean && reduce_targets.is_some()),
            constant_divisor,
            divide: u32::from(options.reduction == Reduction::Mean),
            has_weights: u32::from(bindings.weights.is_some()),
            plane_stride: bindings.plane_stride as u32,
            ignore_low,
            ignore_high,
            targets_offset: reduce_targets.map_or(0, |window| window.first_word),
            fold_divisor: u32::from(job.folds_divisor(bindings)),
            partials: plan.partials,
            rows_per_partial: plan.rows_per_partial,
            ..ReduceParams::default()
        };
        let params = create_buffer_with(
            device,
            "xent reduce params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::UNIFORM,
        );
        let targets = match reduce_targets {
            Some(window) => window.binding(bindings.targets.buffer()),
            None => self.unused.as_entire_binding(),
        };
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("xent reduce"),
            layout: &self.reduce,
            entries: &[
                entry(reduce_bindings::BINDING_PARAMS, params.as_entire_binding()),
                entry(reduce_bindings::BINDING_ROW_OUTPUTS, row_outputs_binding(bindings)),
                entry(reduce_bindings::BINDING_TARGETS, targets),
                entry(reduce_bindings::BINDING_CLASS_WEIGHTS, self.weights_binding(bindings)),
                entry(reduce_bindings::BINDING_SCALARS, scalars_binding(bindings.scalars)),
                entry(reduce_bindings::BINDING_PARTIALS, self.partials.as_entire_binding()),
            ],
        })
    }
}

/// One parameter block per chunk, `PARAMS_STRIDE` bytes apart.
fn row_params_buffer(
    device: &wgpu::Device,
    chunks: &[Chunk],
    windows: &ChunkWindows,
    job: Job<'_>,
    bindings: &Bindings<'_>,
) -> wgpu::Buffer {
    let options = job.options;
    let (ignore_low, ignore_high) = ignore_words(options.ignore_index);
    let mut flags = 0;
    // A constant divisor is folded into the scale; else a mean's kernel divides by scalars[2].
    let upstream_scale = match job.constant_divisor(bindings) {
        Some(divisor) => bindings.upstream.scale * (1.0 / divisor),
        None => {
            if options.reduction == Reduction::Mean {
                flags |= row_flags::FLAG_MEAN;
            }
            bindings.upstream.scale
        }
    };
    let weight_total = options.weight.as_ref().map_or(job.shape.classes as f64, |weight| {
        weight.iter().map(|&value| f64::from(value)).sum()
    });
    let last_chunk = chunks.len().saturating_sub(1);
    let blocks: Vec<RowParams> = chunks
        .iter()
        .zip(&windows.gradient)
        .enumerate()
        .map(|(index, (chunk, gradient))| RowParams {
            rows: chunk.count as u32,
            classes: job.shape.classes as u32,
            spatial: job.shape.spatial as u32,
            logits_offset: chunk.inputs.first_word,
            targets_offset: chunk.targets.first_word,
            first_row: chunk.first as u32,
            target_format: target_format_code(bindings.target_type),
            flags: if index == last_chunk {
                flags | row_flags::FLAG_LAST_CHUNK
            } else {
                flags
            },
            plane_stride: bindings.plane_stride as u32,
            ignore_low,
            ignore_high,
            label_smoothing: options.label_smoothing,
            z_loss: options.z_loss,
            softcap: options.softcap.unwrap_or(1.0),
            logit_scale: options.logit_scale,
            weight_total: weight_total as f32,
            gradient_offset: gradient.first_word,
            upstream_offset: windows.upstream.map_or(0, |window| window.first_word),
            upstream_step: u32::from(bindings.upstream.per_row),
            upstream_scale,
        })
        .collect();
    params_buffer(device, "xent row params", &blocks)
}

fn row_outputs_binding<'a>(bindings: &Bindings<'a>) -> wgpu::BindingResource<'a> {
    Window::new(0, ROW_PLANES * bindings.plane_stride * 4, 1).binding(bindings.row_outputs)
}

fn scalars_binding(scalars: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    Window::new(0, 16, 1).binding(scalars)
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// `target_format` codes of shaders/targets.wgsl.
fn target_format_code(target_type: TargetType) -> u32 {
    match target_type {
        TargetType::U32 => target_formats::TARGET_U32,
        TargetType::I32 => target_formats::TARGET_I32,
        TargetType::I64 => target_formats::TARGET_I64,
        TargetType::Probabilities => target_formats::TARGET_PROBABILITIES,
    }
}

/// `ignore_index` as the (low, high) words of an i64.
pub(crate) fn ignore_words(ignore_index: i64) -> (u32, u32) {
    let bits = ignore_index as u64;
    (bits as u32, (bits >> 32) as u32)
}
