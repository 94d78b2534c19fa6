//! Recording one call of a family kernel into an encoder, on the caller's
//! buffers ([`Bindings`]): one compute pass with the kernel once per chunk (each
//! followed by `write_straddling_words` for a bf16 gradient of rows of odd C,
//! whose row entries go through a scratch buffer of one `f32` per row), then
//! (unless the reduction is `none`) `reduce_partials`, one workgroup, into the
//! outputs' loss word; per-row losses of `none` are copied into the outputs'
//! first row plane. Nothing is submitted.
//!
//! The upstream gradient costs no pass: its scale is folded into each chunk's
//! `scale`, and its values (one, or one per loss value) are bound to each chunk
//! as the window of that chunk's own values ([`upstream_window`]), read where the
//! gradient is written by a pipeline compiled with `USE_UPSTREAM_VALUES`.
//!
//! The parameter blocks, the bind groups and the partial-sum scratch are kept in
//! a [`FamilyRecordCache`] (one per `DeviceOutputs`, whose buffers they bind) and
//! reused while the next call has the same buffers, shape and options, so a
//! repeated call allocates nothing.

use std::sync::Mutex;

use super::contract::FamilyParams;
use super::contract::family_bindings::*;
use super::contract::family_flags::FLAG_FINAL_CHUNK;
use super::family::{
    FAMILY_WORKGROUP_SIZE, FLAG_WRITE_GRADIENT, FLAG_WRITE_LOSSES, FamilyKernel, FamilyKernels, FamilyPipelines,
    TILE_ELEMENTS, straddles_rows,
};
use super::family::{Work, plan_chunks};
use super::pipeline::{Chunk, SliceKey, Window, bind_group, dispatch_shape, params_binding, params_buffer};
use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::GrowableBuffer;
use crate::types::LogitType;

/// Where a call reads its targets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TargetBinding<'a> {
    /// The kernel reads no targets.
    None,
    /// One `f32` per element, laid out like the inputs.
    PerElement(wgpu::BufferSlice<'a>),
    /// One `u32` class index per row.
    Classes(wgpu::BufferSlice<'a>),
}

/// The buffers of one recorded call (slices start at aligned offsets; checked by the caller).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bindings<'a> {
    pub input: wgpu::BufferSlice<'a>,
    pub input_type: LogitType,
    pub targets: TargetBinding<'a>,
    /// The gradient, in the input's type and layout.
    pub gradient: Option<wgpu::BufferSlice<'a>>,
    /// The per-class parameters the kernel reads (BCE: weights then pos_weights).
    pub class_params: Option<wgpu::BufferSlice<'a>>,
    /// Factor of the whole gradient (1 without an upstream gradient).
    pub upstream_scale: f32,
    /// `f32` factors of the gradient: one for every loss value (4 bytes), or one
    /// per loss value of reduction `none` (per element or per row).
    pub upstream_values: Option<wgpu::BufferSlice<'a>>,
    /// Receives the losses of reduction `none` from offset 0 (one per element or row).
    pub losses: &'a wgpu::Buffer,
    /// Receives the reduced loss in its first word.
    pub result: &'a wgpu::Buffer,
}

/// What one call computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Job {
    pub kernel: FamilyKernel,
    pub rows: usize,
    pub classes: usize,
    /// Kernel-specific `FLAG_*` bits (the gradient and losses bits are added here).
    pub flags: u32,
    pub label_smoothing: f32,
    /// Factor of the gradient (1/divisor for a mean).
    pub gradient_scale: f32,
    /// `Some(d)`: one number, Σ losses / d; `None`: every loss (per element or per row).
    pub divisor: Option<f64>,
}

impl Job {
    /// Losses the call outputs: those of [`Job::unreduced_count`] for reduction
    /// `none`; 0 when reduced.
    pub(crate) fn value_count(&self) -> u64 {
        match self.divisor {
            Some(_) => 0,
            None => self.unreduced_count(),
        }
    }

    /// Losses a `none` reduction gives: one per element (elementwise kernels) or per row.
    pub(crate) fn unreduced_count(&self) -> u64 {
        match self.kernel.work(self.classes).1 {
            Work::Elements => self.rows as u64 * self.classes as u64,
            Work::Rows { .. } => self.rows as u64,
        }
    }

    /// Entries of the partial sums: tiles (elementwise) or rows.
    fn partial_count(&self) -> u64 {
        match self.kernel.work(self.classes).1 {
            Work::Elements => (self.rows as u64 * self.classes as u64).div_ceil(TILE_ELEMENTS),
            Work::Rows { .. } => self.rows as u64,
        }
    }
}

/// Everything the parameters and bind groups of a recorded call depend on.
#[derive(Clone, Debug, PartialEq)]
struct RecordKey {
    input: SliceKey,
    input_type: LogitType,
    /// The targets and whether they are class indices.
    targets: Option<(SliceKey, bool)>,
    gradient: Option<SliceKey>,
    class_params: Option<SliceKey>,
    upstream_scale: f32,
    upstream_values: Option<SliceKey>,
    losses: wgpu::Buffer,
    result: wgpu::Buffer,
    scratch: Scratch,
    job: Job,
    max_binding: u64,
}

/// The buffers of a call's own: the partial sums, and the straddling entries
/// of a bf16 gradient of rows of odd C.
#[derive(Clone, Debug, PartialEq)]
struct Scratch {
    partials: wgpu::Buffer,
    straddling_entries: Option<wgpu::Buffer>,
}

impl RecordKey {
    fn new(bindings: &Bindings<'_>, job: Job, scratch: Scratch, max_binding: u64) -> Self {
        Self {
            input: SliceKey::of(bindings.input),
            input_type: bindings.input_type,
            targets: match bindings.targets {
                TargetBinding::None => None,
                TargetBinding::PerElement(slice) => Some((SliceKey::of(slice), false)),
                TargetBinding::Classes(slice) => Some((SliceKey::of(slice), true)),
            },
            gradient: bindings.gradient.map(SliceKey::of),
            class_params: bindings.class_params.map(SliceKey::of),
            upstream_scale: bindings.upstream_scale,
            upstream_values: bindings.upstream_values.map(SliceKey::of),
            losses: bindings.losses.clone(),
            result: bindings.result.clone(),
            scratch,
            job,
            max_binding,
        }
    }
}

/// One chunk's bind group and workgroups: of the kernel, and of the
/// straddling-word pass if the call has one.
struct ChunkDispatch {
    group: wgpu::BindGroup,
    workgroups: (u32, u32),
    straddling_workgroups: Option<(u32, u32)>,
}

/// The pipelines, parameters and bind groups of one prepared call.
struct Prepared {
    key: RecordKey,
    pipelines: FamilyPipelines,
    chunk_groups: Vec<ChunkDispatch>,
    reduce_group: wgpu::BindGroup,
    /// Kept alive with the bind groups that bind it.
    params: wgpu::Buffer,
}

/// The scratch buffers and the last prepared call of one `DeviceOutputs`.
pub(crate) struct FamilyRecordCache {
    partials: GrowableBuffer,
    straddling_entries: GrowableBuffer,
    prepared: Option<Prepared>,
}

impl Default for FamilyRecordCache {
    fn default() -> Self {
        Self {
            partials: GrowableBuffer::new(
                "xent family partials",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            straddling_entries: GrowableBuffer::new("xent family straddling entries", wgpu::BufferUsages::STORAGE),
            prepared: None,
        }
    }
}

impl FamilyRecordCache {
    /// Bytes of device memory held (the scratch and the cached parameters).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let scratch = self.partials.bytes() + self.straddling_entries.bytes();
        scratch + self.prepared.as_ref().map_or(0, |prepared| prepared.params.size())
    }

    /// The scratch buffers of `job` (with the straddling words' row entries
    /// when `straddles`), each grown where it is too small.
    fn scratch(&mut self, device: &wgpu::Device, job: &Job, straddles: bool) -> Scratch {
        let partial_bytes = (job.partial_count() * 4).max(4);
        Scratch {
            partials: self.partials.ensure(device, partial_bytes).clone(),
            // One f32 per row, as many as the row kernels' partials.
            straddling_entries: straddles.then(|| self.straddling_entries.ensure(device, partial_bytes).clone()),
        }
    }
}

impl FamilyKernels {
    /// Records `job` on `bindings` into `encoder` (see the module's doc), reusing
    /// what `cache` holds for the same call.
    pub(crate) fn record(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &Bindings<'_>,
        job: Job,
        cache: &Mutex<FamilyRecordCache>,
    ) -> Result<()> {
        let max_binding = gpu.max_binding_size();
        let partial_bytes = job.partial_count() * 4;
        if partial_bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{partial_bytes} bytes of per-row or per-tile losses exceed the {max_binding} byte binding limit"
            )));
        }
        let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_words = self.in_words(bindings.input_type);
        let straddles = bindings.gradient.is_some() && straddles_rows(job.kernel, job.classes, in_words);
        let scratch = cache.scratch(gpu.device(), &job, straddles);
        let partials = scratch.partials.clone();
        let key = RecordKey::new(bindings, job, scratch, max_binding);
        if cache.prepared.as_ref().is_none_or(|prepared| prepared.key != key) {
            cache.prepared = Some(self.prepare(gpu, bindings, key)?);
        }
        let Some(prepared) = cache.prepared.as_ref() else {
            return Err(Error::Gpu("the recorded call was not prepared".into()));
        };
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("xent family"),
                timestamp_writes: None,
            });
            for chunk in &prepared.chunk_groups {
                pass.set_pipeline(&prepared.pipelines.kernel);
                pass.set_bind_group(0, &chunk.group, &[]);
                pass.dispatch_workgroups(chunk.workgroups.0, chunk.workgroups.1, 1);
                if let (Some(pipeline), Some((x, y))) = (&prepared.pipelines.straddling, chunk.straddling_workgroups) {
                    pass.set_pipeline(pipeline);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            if job.divisor.is_some() {
                pass.set_pipeline(&prepared.pipelines.reduce);
                pass.set_bind_group(0, &prepared.reduce_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        if let (None, Work::Rows { .. }) = (job.divisor, prepared.pipelines.work) {
            encoder.copy_buffer_to_buffer(&partials, 0, bindings.losses, 0, job.rows as u64 * 4);
        }
        Ok(())
    }

    /// Compiles (or finds) the pipelines, plans the chunks, and builds the
    /// parameters and bind groups.
    fn prepare(&self, gpu: &Gpu, bindings: &Bindings<'_>, key: RecordKey) -> Result<Prepared> {
        let job = key.job;
        let device = gpu.device();
        let limits = gpu.limits();
        let upstream_values = bindings.upstream_values.is_some();
        let gradient = bindings.gradient.is_some();
        let pipelines = self.pipelines(
            device,
            job.kernel,
            job.classes,
            bindings.input_type,
            gradient,
            upstream_values,
        )?;
        if let Some(class_params) = bindings.class_params
            && class_params.size() > key.max_binding
        {
            return Err(Error::TooLarge(format!(
                "{} bytes of class parameters exceed the {} byte binding limit",
                class_params.size(),
                key.max_binding
            )));
        }
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
        let chunks = plan_chunks(
            pipelines.work,
            job.rows as u64,
            job.classes as u64,
            bindings.input_type.size_in_bytes() as u64,
            matches!(bindings.targets, TargetBinding::Classes(_)),
            key.max_binding,
            alignment,
        )?;
        let upstream_windows: Vec<Option<Window>> = chunks
            .iter()
            .map(|chunk| {
                bindings
                    .upstream_values
                    .map(|values| upstream_window(values, chunk, alignment))
            })
            .collect();
        let params = params_buffer(
            device,
            "xent family params",
            &call_params(&job, bindings, &chunks, &upstream_windows),
        );
        let max_workgroups = limits.max_compute_workgroups_per_dimension;
        let scratch = &key.scratch;
        let chunk_groups = chunks
            .iter()
            .zip(&upstream_windows)
            .enumerate()
            .map(|(index, (chunk, upstream))| {
                let workgroups = match pipelines.work {
                    Work::Elements => chunk.count.div_ceil(TILE_ELEMENTS),
                    Work::Rows { rows_per_workgroup } => chunk.count.div_ceil(u64::from(rows_per_workgroup)),
                };
                // One invocation per row.
                let straddling_workgroups = pipelines
                    .straddling
                    .as_ref()
                    .map(|_| dispatch_shape(chunk.count.div_ceil(u64::from(FAMILY_WORKGROUP_SIZE)), max_workgroups))
                    .transpose()?;
                Ok(ChunkDispatch {
                    group: self.chunk_bind_group(device, &job, bindings, &params, scratch, index, chunk, *upstream),
                    workgroups: dispatch_shape(workgroups, max_workgroups)?,
                    straddling_workgroups,
                })
            })
            .collect::<Result<_>>()?;
        let reduce_group = self.reduce_bind_group(device, bindings, &params, &scratch.partials, chunks.len());
        Ok(Prepared {
            key,
            pipelines,
            chunk_groups,
            reduce_group,
            params,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk_bind_group(
        &self,
        device: &wgpu::Device,
        job: &Job,
        bindings: &Bindings<'_>,
        params: &wgpu::Buffer,
        scratch: &Scratch,
        index: usize,
        chunk: &Chunk,
        upstream_window: Option<Window>,
    ) -> wgpu::BindGroup {
        let read = &self.unused_read;
        let write = &self.unused_write;
        let targets = match bindings.targets {
            TargetBinding::None => read.as_entire_binding(),
            TargetBinding::PerElement(slice) | TargetBinding::Classes(slice) => slice_window(slice, chunk.targets),
        };
        let gradient = match bindings.gradient {
            Some(slice) => slice_window(slice, chunk.inputs),
            None => write.as_entire_binding(),
        };
        let upstream = match (bindings.upstream_values, upstream_window) {
            (Some(values), Some(window)) => window.binding(values.buffer()),
            _ => read.as_entire_binding(),
        };
        let losses = if call_flags(job, bindings) & FLAG_WRITE_LOSSES != 0 {
            let window = Window::new(chunk.first * 4, chunk.count * 4, 4);
            slice_window(bindings.losses.slice(..), window)
        } else if let Some(entries) = &scratch.straddling_entries {
            entries.as_entire_binding()
        } else {
            write.as_entire_binding()
        };
        let entries = [
            (BINDING_PARAMS, params_binding::<FamilyParams>(params, index)),
            (BINDING_LOGITS, slice_window(bindings.input, chunk.inputs)),
            (BINDING_TARGETS, targets),
            (BINDING_GRADIENT, gradient),
            (BINDING_LOSSES, losses),
            (BINDING_PARTIALS, scratch.partials.as_entire_binding()),
            (BINDING_CLASS_PARAMS, class_params_binding(bindings, read)),
            (BINDING_RESULT, write.as_entire_binding()),
            (BINDING_UPSTREAM, upstream),
        ];
        bind_group(device, "xent family", &self.bind_group_layout, entries)
    }

    fn reduce_bind_group(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        params: &wgpu::Buffer,
        partials: &wgpu::Buffer,
        block: usize,
    ) -> wgpu::BindGroup {
        let read = &self.unused_read;
        let write = &self.unused_write;
        let entries = [
            (BINDING_PARAMS, params_binding::<FamilyParams>(params, block)),
            (BINDING_LOGITS, read.as_entire_binding()),
            (BINDING_TARGETS, read.as_entire_binding()),
            (BINDING_GRADIENT, write.as_entire_binding()),
            (BINDING_LOSSES, write.as_entire_binding()),
            (BINDING_PARTIALS, partials.as_entire_binding()),
            (BINDING_CLASS_PARAMS, read.as_entire_binding()),
            (
                BINDING_RESULT,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: bindings.result,
                    offset: 0,
                    size: wgpu::BufferSize::new(4),
                }),
            ),
            (BINDING_UPSTREAM, read.as_entire_binding()),
        ];
        bind_group(device, "xent family", &self.bind_group_layout, entries)
    }
}

/// `window` (relative to the slice's start, which is aligned) of `slice`.
fn slice_window<'a>(slice: wgpu::BufferSlice<'a>, window: Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: slice.buffer(),
        offset: slice.offset() + window.byte_offset,
        size: wgpu::BufferSize::new(window.byte_size),
    })
}

fn class_params_binding<'a>(bindings: &Bindings<'a>, unused: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
    match bindings.class_params {
        Some(slice) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: slice.buffer(),
            offset: slice.offset(),
            size: wgpu::BufferSize::new(slice.size()),
        }),
        None => unused.as_entire_binding(),
    }
}

/// The call's `FLAG_*` bits: the kernel's, plus writing the gradient (when one
/// is bound) and the per-element losses (elementwise kernels, reduction `none`).
fn call_flags(job: &Job, bindings: &Bindings<'_>) -> u32 {
    let mut flags = job.flags;
    if bindings.gradient.is_some() {
        flags |= FLAG_WRITE_GRADIENT;
    }
    if job.divisor.is_none() && job.kernel.work(job.classes).1 == Work::Elements {
        flags |= FLAG_WRITE_LOSSES;
    }
    flags
}

/// The window of the upstream `values` a chunk reads: its own run of one value
/// per loss value (per element or per row, as `chunk` counts them), or the
/// single value every chunk shares.
fn upstream_window(values: wgpu::BufferSlice<'_>, chunk: &Chunk, alignment: u64) -> Window {
    if values.size() > 4 {
        Window::new(values.offset() + chunk.first * 4, chunk.count * 4, alignment)
    } else {
        Window::new(values.offset(), 4, alignment)
    }
}

/// One parameter block per chunk (with its upstream values' window, if any),
/// then the reduction's.
fn call_params(job: &Job, bindings: &Bindings<'_>, chunks: &[Chunk], upstream: &[Option<Window>]) -> Vec<FamilyParams> {
    let flags = call_flags(job, bindings);
    let upstream_step = u32::from(bindings.upstream_values.is_some_and(|values| values.size() > 4));
    let last = chunks.len().saturating_sub(1);
    let mut blocks: Vec<FamilyParams> = chunks
        .iter()
        .zip(upstream)
        .enumerate()
        .map(|(index, (chunk, upstream))| FamilyParams {
            count: chunk.count as u32,
            classes: job.classes as u32,
            first_index: chunk.first as u32,
            input_offset: chunk.inputs.first_word,
            targets_offset: chunk.targets.first_word,
            flags: if index == last { flags | FLAG_FINAL_CHUNK } else { flags },
            label_smoothing: job.label_smoothing,
            scale: job.gradient_scale * bindings.upstream_scale,
            upstream_offset: upstream.map_or(0, |window| window.first_word),
            upstream_step,
            ..FamilyParams::default()
        })
        .collect();
    blocks.push(FamilyParams {
        count: job.partial_count() as u32,
        classes: job.classes as u32,
        divisor: job.divisor.unwrap_or(1.0) as f32,
        ..FamilyParams::default()
    });
    blocks
}

#[cfg(test)]
mod tests {
    use wgpu::util::DeviceExt;

    use crate::{
        Context, DeviceOutputs, FamilyInputs, FamilyTargets, KlDivLoss, KlReduction, LogitType, Shape, UpstreamGradient,
    };

    /// The parameters buffer and the first chunk's bind group of the call last
    /// prepared in `outputs`.
    fn prepared(outputs: &DeviceOutputs) -> (wgpu::Buffer, wgpu::BindGroup) {
        let cache = outputs.family_cache().lock().expect("cache");
        let prepared = cache.prepared.as_ref().expect("prepared");
        (prepared.params.clone(), prepared.chunk_groups[0].group.clone())
    }

    /// A repeated record reuses the cached parameters and bind groups (no new
    /// buffer, no new bind group); another shape prepares new ones.
    #[test]
    fn a_repeated_record_reuses_its_parameters_and_bind_groups() {
        let context = match Context::new() {
            Ok(context) => context,
            Err(error) if std::env::var("XENT_ALLOW_NO_GPU").is_ok_and(|value| value == "1") => {
                eprintln!("XENT_ALLOW_NO_GPU=1: skipping ({error})");
                return;
            }
            Err(error) => panic!("no GPU adapter ({error}); set XENT_ALLOW_NO_GPU=1 to skip"),
        };
        let storage = |contents: &[u8]| {
            context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let input = storage(bytemuck::cast_slice(&[-1.0f32; 64]));
        let target = storage(bytemuck::cast_slice(&[0.25f32; 64]));
        let outputs = DeviceOutputs::new(&context, 1).expect("outputs");
        let kl = KlDivLoss::new().reduction(KlReduction::BatchMean);
        let record = |shape: Shape| {
            let inputs = FamilyInputs {
                input: input.slice(..),
                input_type: LogitType::F32,
                targets: FamilyTargets::PerElement(target.slice(..)),
                shape,
                gradient: None,
                upstream: UpstreamGradient::ONE,
            };
            let mut encoder = context.device().create_command_encoder(&Default::default());
            kl.record(&context, &mut encoder, &inputs, &outputs).expect("record");
            context.queue().submit([encoder.finish()]);
            prepared(&outputs)
        };
        let first = record(Shape::new(4, 16));
        assert_eq!(record(Shape::new(4, 16)), first, "the same call again");
        let other = record(Shape::new(8, 8));
        assert_ne!(other.0, first.0, "another shape has its own parameters");
        assert_ne!(other.1, first.1, "and bind groups");
    }
}
