//! The categorical cross-entropy's kernels (shaders/cross_entropy.wgsl with the
//! logits' storage, target decoding and row reductions it is compiled with, and
//! shaders/reduce.wgsl): the one pipeline cache, how a batch is split into row
//! chunks that fit the binding limit, and the dispatches. The WGSL source and
//! the pipeline keys are in `source`, the bindings, parameters and bind groups
//! in `bind_groups`.
//!
//! One categorical cross-entropy call records, into the caller's encoder and
//! inside one compute pass, after a clear of the status block: for the
//! gradient of a mean, `compute_divisor` (the divisor the gradient is divided
//! by; not when the caller wrote it already, `Job::given_divisor`, nor for
//! soft targets, whose constant N the parameters carry), then for each row chunk `cross_entropy_rows`
//! (loss, z-term, lse, argmax and optionally the gradient, times the upstream
//! gradient; a row per workgroup for large C, several rows per workgroup for
//! small C), then, unless the reduction is `none`, `reduce_losses`, which for a
//! loss-only mean also sums the divisor, beside the losses, in the same order
//! as `compute_divisor` (so the same bits). Each reduction is one workgroup over
//! every row, or above 65536 rows two dispatches (`divisor_partials` /
//! `loss_partials`, one workgroup per run of at least 4096 rows, at most 1024
//! runs, then the one-workgroup fold in index order; `reduction.rs`; a
//! loss-only mean's `loss_partials` sum the divisor too). A bad class target is
//! reported by the row kernel itself: the row's raw target words into the
//! `PLANE_TARGET_*` planes of the row outputs (bad rows only), the first bad
//! row into the status block (see `outputs.rs` for its readback). So a call is
//! 1 row-kernel dispatch per chunk (the split-row kernel: 2, `split_rows` then
//! `split_repair`), plus 1 for `sum`, for a loss-only `mean` and for a `mean`
//! with a given or constant divisor, and 2 for a `mean` with the gradient otherwise (each
//! of these doubled above 65536 rows); `none`
//! adds nothing. No gradient word is stored with atomics: a gradient of 16-bit
//! contiguous rows in groups with masked edges adds, after each chunk's rows,
//! `write_straddling_words` (shaders/straddling_words.wgsl: the words shared
//! across a row boundary, written once each), and a gradient of bf16 N-d rows
//! (and f16 ones on a device without `SHADER_F16`) adds
//! `write_gradient_words` (shaders/gradient_words.wgsl: every gradient word of
//! the chunk, written whole from the sums the row kernel recorded for each
//! row, in place too); see [`WordPass`].
//!
//! The caller's slices may start anywhere their element type allows: each is
//! bound at its offset rounded down to the adapter's
//! `min_storage_buffer_offset_alignment`, and the element (or word) offset of
//! its data inside that binding goes into the parameters. Nothing is copied.

mod bind_groups;
mod reduction;
mod source;
mod split;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) use self::bind_groups::{
    Bindings, GradientBinding, Job, ROW_PLANES, RecordCache, UpstreamBinding, row_planes,
};
use self::bind_groups::{ChunkWindows, Layouts, RecordKey};
use self::reduction::ReducePipelines;
use self::source::{GradientMode, LogitAccess, OptionFeatures, RowKernelConfig, RowKernelKey, WordPass, reduce_source};
use self::split::{SplitKernels, SplitPipelines};
/// The status block's words, which src/gpu/outputs.rs reads back.
pub(crate) use super::contract::status_words;
use super::pipeline::{Chunk, Window, compute_pipeline, dispatch_shape};
use crate::error::{Error, Result};
use crate::gpu::gradient_order::GradientOrder;
use crate::gpu::row_split::{RowSplit, SplitPlan, SplitSituation, split_plan};
use crate::gpu::shader_checks::ShaderChecks;
use crate::gpu::unaligned_f32::UnalignedF32;
use crate::gpu::workgroup::REDUCTION_SCRATCH_BYTES_PER_INVOCATION;
use crate::options::Reduction;
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

/// Floats of the row cache of a kernel whose workgroup holds `rows_per_workgroup`
/// rows of `classes` logits: when they fit `capacity` (the adapter's
/// [`row_cache_size`]), their count rounded up to a power of two (few distinct
/// kernels, and no more workgroup memory reserved than the rows need), else 0: a
/// streamed kernel, which declares no row cache.
fn row_cache_floats(classes: usize, rows_per_workgroup: u32, capacity: u32) -> u32 {
    let needed = u32::try_from(classes)
        .ok()
        .and_then(|classes| classes.checked_mul(rows_per_workgroup));
    match needed {
        Some(needed) if needed <= capacity => needed.next_power_of_two().min(capacity),
        _ => 0,
    }
}

/// The row cache of a kernel ([`row_cache_floats`]) that makes the gradient
/// pass (`gradient_pass`); none for the loss alone, or for a gradient that the
/// gradient-word pass writes, since only the gradient pass reads the cache back.
fn kernel_row_cache(gradient_pass: bool, classes: usize, rows_per_workgroup: u32, capacity: u32) -> u32 {
    if gradient_pass {
        row_cache_floats(classes, rows_per_workgroup, capacity)
    } else {
        0
    }
}

/// Where the batch's data starts: the byte offsets of the logits and targets
/// slices in their buffers.
#[derive(Clone, Copy, Debug, Default)]
struct Starts {
    logits: u64,
    targets: u64,
}

/// The window over rows `first_row .. first_row + rows` of logits-shaped data
/// (the logits, or the gradient) whose first row starts at byte `start`.
fn logit_rows_window(
    start: u64,
    first_row: u64,
    rows: u64,
    shape: Shape,
    logit_type: LogitType,
    alignment: u64,
) -> Window {
    let logit_size = logit_type.size_in_bytes() as u64;
    let row_bytes = shape.classes as u64 * logit_size;
    Window::of_elements(start + first_row * row_bytes, rows * row_bytes, alignment, logit_size)
}

/// Splits `shape` into chunks whose every binding stays within `max_binding`
/// bytes, the logits and targets starting at `starts`.
fn plan_chunks(
    shape: Shape,
    logit_type: LogitType,
    target_type: TargetType,
    max_binding: u64,
    alignment: u64,
    starts: Starts,
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
    // Room for the aligned-down start and the rounding up to whole vec4s.
    let usable = max_binding.saturating_sub(alignment + VECTOR_BYTES);
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
                logit_rows_window(starts.logits, first_row, rows, shape, logit_type, alignment),
                Window::new(
                    starts.targets + first_row * target_row_bytes,
                    rows * target_row_bytes,
                    alignment,
                ),
            )
        },
    ))
}

/// One dispatch shape per chunk, of `workgroups(chunk)` workgroups.
fn chunk_dispatches(
    chunks: &[Chunk],
    max_workgroups_per_dimension: u32,
    workgroups: impl Fn(&Chunk) -> u64,
) -> Result<Vec<(u32, u32)>> {
    chunks
        .iter()
        .map(|chunk| dispatch_shape(workgroups(chunk), max_workgroups_per_dimension))
        .collect()
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

/// What the context chose for the cross-entropy kernels from its options and adapter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelChoices {
    /// Subgroup reductions.
    pub(crate) subgroups: bool,
    /// Invocations per workgroup of the row kernels.
    pub(crate) workgroup_size: u32,
    pub(crate) row_split: RowSplit,
    /// The option, and whether it gives vector storage on this adapter.
    pub(crate) unaligned_f32: (UnalignedF32, bool),
    pub(crate) gradient_order: GradientOrder,
    pub(crate) shader_checks: ShaderChecks,
}

/// The compiled cross-entropy pipelines and their layouts.
pub(crate) struct CrossEntropyKernels {
    layouts: Layouts,
    /// Row kernels, compiled on first use.
    row_kernels: Mutex<HashMap<RowKernelKey, Arc<wgpu::ComputePipeline>>>,
    /// The word passes ([`WordPass`]) of the row kernels that have one, compiled on first use.
    word_pass_kernels: Mutex<HashMap<RowKernelKey, Arc<wgpu::ComputePipeline>>>,
    reductions: ReducePipelines,
    uses_subgroups: bool,
    min_subgroup_size: u32,
    /// Invocations per workgroup of the row kernels (see
    /// [`choose_workgroup_size`](crate::gpu::workgroup::choose_workgroup_size)).
    workgroup_size: u32,
    row_cache_size: u32,
    /// f16 logits are read and written as halves of 32-bit words: the device
    /// lacks `Features::SHADER_F16` (bf16 always is).
    f16_words: bool,
    /// The context's option for f32 rows not in aligned groups of 4.
    unaligned_f32: UnalignedF32,
    /// Whether such rows take vector storage (`MaskedGroups`) on this adapter
    /// ([`UnalignedF32::vectors_on`]).
    unaligned_f32_vectors: bool,
    /// In which order the gradient pass walks a row's groups.
    gradient_order: GradientOrder,
    /// The run-time checks every pipeline is compiled with.
    shader_checks: ShaderChecks,
    /// The split-row kernels and when they run.
    split: SplitKernels,
    row_split: RowSplit,
    split_situation: SplitSituation,
}

impl CrossEntropyKernels {
    pub(crate) fn new(
        device: &wgpu::Device,
        adapter: &wgpu::Adapter,
        choices: KernelChoices,
        max_binding: u64,
    ) -> Self {
        let KernelChoices {
            subgroups,
            workgroup_size,
            row_split,
            unaligned_f32: (unaligned_f32, unaligned_f32_vectors),
            gradient_order,
            shader_checks,
        } = choices;
        let layouts = Layouts::new(device);
        let min_subgroup_size = adapter.get_info().subgroup_min_size.max(1);
        let row_cache_size = row_cache_size(device.limits().max_compute_workgroup_storage_size, workgroup_size);
        let reductions = ReducePipelines::new(device, &layouts.reduce, &reduce_source(), shader_checks);
        let kernels = Self {
            layouts,
            row_kernels: Mutex::new(HashMap::new()),
            word_pass_kernels: Mutex::new(HashMap::new()),
            reductions,
            uses_subgroups: subgroups,
            min_subgroup_size,
            workgroup_size,
            row_cache_size,
            f16_words: !device.features().contains(wgpu::Features::SHADER_F16),
            unaligned_f32,
            unaligned_f32_vectors,
            gradient_order,
            shader_checks,
            split: SplitKernels::new(device),
            row_split,
            split_situation: SplitSituation {
                software_adapter: adapter.get_info().device_type == wgpu::DeviceType::Cpu,
                workgroup_size,
                row_cache_size,
                fits_adapter: split::workgroup_bytes(workgroup_size)
                    <= device.limits().max_compute_workgroup_storage_size,
                max_slices: split::MAX_SLICES,
                max_binding,
                partial_bytes_per_slice: split::WORDS_PER_SLICE * 4,
            },
        };
        // Compile the common large-C kernel now so that a broken shader fails the context.
        let widest = RowKernelKey {
            threads_per_row: workgroup_size,
            access: LogitAccess::Groups,
            row_cache: 0,
            logit_type: LogitType::F32,
            gradient: GradientMode::Separate,
            features: OptionFeatures::default(),
        };
        kernels.row_kernel(device, widest);
        kernels
    }

    /// What the row kernel of `key` is compiled for.
    fn row_kernel_config(&self, key: RowKernelKey) -> RowKernelConfig {
        RowKernelConfig {
            key,
            // Subgroups reduce whole workgroups; narrower rows use the segmented tree.
            subgroups: self.uses_subgroups && key.threads_per_row == self.workgroup_size,
            min_subgroup_size: self.min_subgroup_size,
            workgroup_size: self.workgroup_size,
            backward: self.gradient_order == GradientOrder::Backward,
            f16_words: self.f16_words,
        }
    }

    /// The row kernel for `key`, compiled on first use.
    fn row_kernel(&self, device: &wgpu::Device, key: RowKernelKey) -> Arc<wgpu::ComputePipeline> {
        self.cached_entry(device, key, &self.row_kernels, "cross_entropy_rows")
    }

    /// The word pass `pass` of the row kernel for `key`; compiled on first use.
    fn word_pass_kernel(&self, device: &wgpu::Device, key: RowKernelKey, pass: WordPass) -> Arc<wgpu::ComputePipeline> {
        self.cached_entry(device, key, &self.word_pass_kernels, pass.entry())
    }

    /// Entry point `entry` of the row kernel source for `key`, compiled once into `cache`.
    fn cached_entry(
        &self,
        device: &wgpu::Device,
        key: RowKernelKey,
        cache: &Mutex<HashMap<RowKernelKey, Arc<wgpu::ComputePipeline>>>,
        entry: &str,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pipeline = cache.entry(key).or_insert_with(|| {
            let config = self.row_kernel_config(key);
            let layout = self.layouts.rows_layout(key.gradient);
            Arc::new(compute_pipeline(
                device,
                layout,
                &config.source(),
                entry,
                self.shader_checks,
            ))
        });
        Arc::clone(pipeline)
    }

    /// The split-row kernels for `key` (a whole-workgroup row, no row cache:
    /// the split kernel keeps its slice in registers) under `plan`.
    fn split_kernels(&self, device: &wgpu::Device, key: RowKernelKey, plan: SplitPlan) -> Arc<SplitPipelines> {
        // The split shader reads GROUPED as "aligned groups over vector storage":
        // split_plan splits only rows the fused kernel reaches as Groups, or f32
        // rows of any length, which the split kernel reaches entry by entry.
        debug_assert!(key.access != LogitAccess::MaskedGroups || key.logit_type == LogitType::F32);
        let access = match key.access {
            LogitAccess::MaskedGroups => LogitAccess::Entries,
            access => access,
        };
        let key = RowKernelKey {
            access,
            threads_per_row: self.workgroup_size,
            row_cache: 0,
            ..key
        };
        let config = self.row_kernel_config(key);
        self.split.pipelines(
            device,
            self.layouts.rows_layout(key.gradient),
            &config,
            plan.vec4s_per_invocation,
            self.shader_checks,
        )
    }

    /// The context's unaligned-f32 option.
    pub(crate) fn unaligned_f32(&self) -> UnalignedF32 {
        self.unaligned_f32
    }

    /// The context's gradient-order option.
    pub(crate) fn gradient_order(&self) -> GradientOrder {
        self.gradient_order
    }

    /// The context's shader-checks option.
    pub(crate) fn shader_checks(&self) -> ShaderChecks {
        self.shader_checks
    }

    /// The context's row-split option.
    pub(crate) fn row_split(&self) -> RowSplit {
        self.row_split
    }

    /// How a call of `shape` with `logit_type` logits splits its rows, or `None`
    /// (the fused kernel); `access`: how the fused kernel would reach them.
    pub(crate) fn split_plan(&self, shape: Shape, logit_type: LogitType, access: LogitAccess) -> Option<SplitPlan> {
        let groups_of_4 = access == LogitAccess::Groups;
        split_plan(self.row_split, self.split_situation, shape, logit_type, groups_of_4)
    }

    /// [`split_plan`](Self::split_plan) for slices that start at a multiple of 4 elements.
    pub(crate) fn split_plan_aligned(&self, shape: Shape, logit_type: LogitType) -> Option<SplitPlan> {
        self.split_plan(
            shape,
            logit_type,
            access_of(shape, logit_type, true, self.unaligned_f32_vectors),
        )
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
    /// slices, shape, options and upstream gradient, so a repeated call allocates nothing.
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
        let gradient = bindings.gradient.mode();
        // The split-row kernel takes contiguous rows in groups only, which have no word pass.
        let word_pass = WordPass::of(bindings.logit_type, prepared.access, self.f16_words)
            .filter(|_| gradient != GradientMode::Skip && prepared.split.is_none());
        let gradient_pass = gradient != GradientMode::Skip && word_pass != Some(WordPass::GradientWords);
        let kernel = RowKernelKey {
            threads_per_row,
            access: prepared.access,
            row_cache: kernel_row_cache(
                gradient_pass,
                job.shape.classes,
                rows_per_workgroup,
                self.row_cache_size,
            ),
            logit_type: bindings.logit_type,
            gradient,
            features: OptionFeatures::of(job.options, bindings.target_type, bindings.upstream.values.is_some()),
        };
        let split = prepared
            .split
            .as_ref()
            .map(|split| (split, self.split_kernels(device, kernel, split.plan)));
        let rows_pipeline = self.row_kernel(device, kernel);
        // 16-bit rows whose gradient words (some or all) wait for their own pass.
        let word_pass_pipeline = word_pass.map(|pass| self.word_pass_kernel(device, kernel, pass));
        let max_workgroups = limits.max_compute_workgroups_per_dimension;
        let dispatches = chunk_dispatches(&prepared.chunks, max_workgroups, |chunk| match &split {
            Some((split, _)) => split.workgroups(chunk),
            None => chunk.count.div_ceil(u64::from(rows_per_workgroup)),
        })?;
        let word_pass_dispatches = match word_pass {
            Some(pass) => chunk_dispatches(&prepared.chunks, max_workgroups, |chunk| {
                let invocations = pass.invocations(chunk.count, job.shape.classes as u64);
                invocations.div_ceil(u64::from(self.workgroup_size))
            })?,
            None => Vec::new(),
        };
        encoder.clear_buffer(bindings.status, 0, None);
        if let Some((split, _)) = &split {
            split.clear(encoder);
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("xent cross-entropy"),
            timestamp_writes: timestamps,
        });
        // Only the gradient of a mean reads the divisor before the final
        // reduction; a loss-only mean's reduce_losses sums it beside the losses.
        if job.divisor_first(bindings) {
            self.reductions
                .record_divisor(&mut pass, &prepared.reduce_group, job.shape.rows);
        }
        for (index, (group, (x, y))) in prepared.chunk_groups.iter().zip(dispatches).enumerate() {
            pass.set_bind_group(0, group, &[]);
            match &split {
                Some((split, pipelines)) => split.record_chunk(&mut pass, pipelines, index, (x, y)),
                None => {
                    pass.set_pipeline(&rows_pipeline);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            if let (Some(pipeline), Some(&(x, y))) = (&word_pass_pipeline, word_pass_dispatches.get(index)) {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        if job.options.reduction != Reduction::None {
            self.reductions
                .record_losses(&mut pass, &prepared.reduce_group, job.shape.rows);
        }
        Ok(())
    }

    /// Checks the limits, plans the chunks and windows, and builds the
    /// parameters and bind groups.
    fn prepare(
        &self,
        device: &wgpu::Device,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        max_binding: u64,
        key: RecordKey,
    ) -> Result<RecordCache> {
        let alignment = u64::from(device.limits().min_storage_buffer_offset_alignment);
        let starts = Starts {
            logits: bindings.logits.offset(),
            targets: bindings.targets.offset(),
        };
        let chunks = plan_chunks(
            job.shape,
            bindings.logit_type,
            bindings.target_type,
            max_binding,
            alignment,
            starts,
        )?;
        let row_output_bytes = ROW_PLANES * bindings.plane_stride * 4;
        if row_output_bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{} rows of per-row outputs ({row_output_bytes} bytes) exceed the {max_binding} byte binding limit",
                bindings.plane_stride
            )));
        }
        let mut chunks = chunks;
        let mut windows = self.windows(bindings, job, &chunks, max_binding, alignment)?;
        let access = self.choose_access(job.shape, bindings, &mut chunks, &mut windows.gradient);
        let (params, chunk_groups) = self.layouts.rows_bind_groups(device, bindings, job, &chunks, &windows);
        let reduce_group = self
            .layouts
            .reduce_bind_group(device, bindings, job, windows.reduce_targets);
        let split = self
            .split_plan(job.shape, bindings.logit_type, access)
            .and_then(|plan| {
                self.split
                    .prepare(device, &chunks, job.shape.rows as u64, plan, max_binding)
            });
        Ok(RecordCache {
            split,
            key,
            access,
            chunks,
            chunk_groups,
            reduce_group,
            _params: params,
        })
    }

    /// The windows beside the chunks': each chunk's gradient, the upstream
    /// values, and the targets the mean's divisor counts; each checked against
    /// the binding limit.
    fn windows(
        &self,
        bindings: &Bindings<'_>,
        job: Job<'_>,
        chunks: &[Chunk],
        max_binding: u64,
        alignment: u64,
    ) -> Result<ChunkWindows> {
        let gradient = chunks
            .iter()
            .map(|chunk| match bindings.gradient {
                GradientBinding::Buffer(slice) => logit_rows_window(
                    slice.offset(),
                    chunk.first,
                    chunk.count,
                    job.shape,
                    bindings.logit_type,
                    alignment,
                ),
                GradientBinding::Skip | GradientBinding::InPlace => chunk.inputs,
            })
            .collect();
        let within_limit = |window: Window, what: &str| {
            if window.byte_size > max_binding {
                return Err(Error::TooLarge(format!(
                    "{} bytes of {what} exceed the {max_binding} byte binding limit",
                    window.byte_size
                )));
            }
            Ok(window)
        };
        let upstream = bindings
            .upstream
            .values
            .map(|values| {
                within_limit(
                    Window::new(values.offset(), values.size(), alignment),
                    "upstream values",
                )
            })
            .transpose()?;
        let class_targets = bindings.target_type != TargetType::Probabilities;
        let target_bytes = job.shape.rows as u64 * bindings.target_type.size_in_bytes() as u64;
        let all_targets = Window::new(bindings.targets.offset(), target_bytes, alignment);
        let reduce_targets = match job.options.reduction {
            Reduction::Mean if class_targets => Some(within_limit(
                all_targets,
                "targets (the mean's divisor reads them in one binding)",
            )?),
            _ => None,
        };
        Ok(ChunkWindows {
            gradient,
            upstream,
            reduce_targets,
        })
    }
}

/// Bytes of the vector storage's words (vec4<f32>).
const VECTOR_BYTES: u64 = 16;

impl CrossEntropyKernels {
    /// How the row kernel reaches the logits and the gradient ([`logit_access`]).
    /// For f32 `MaskedGroups` the windows are widened to whole vec4s, which
    /// needs room for the widened window in each buffer; else f32 goes entry by
    /// entry.
    fn choose_access(
        &self,
        shape: Shape,
        bindings: &Bindings<'_>,
        chunks: &mut [Chunk],
        gradient_windows: &mut [Window],
    ) -> LogitAccess {
        let access = logit_access(
            shape,
            bindings.logit_type,
            chunks,
            gradient_windows,
            self.unaligned_f32_vectors,
        );
        if access != LogitAccess::MaskedGroups || bindings.logit_type != LogitType::F32 {
            return access;
        }
        let logits_size = bindings.logits.buffer().size();
        let mut inputs: Vec<Window> = chunks.iter().map(|chunk| chunk.inputs).collect();
        let widened_inputs = widen_to_vectors(&mut inputs, logits_size);
        let widened_gradient = match bindings.gradient {
            GradientBinding::Buffer(slice) => widen_to_vectors(gradient_windows, slice.buffer().size()),
            // The gradient's windows are the logits'.
            GradientBinding::Skip | GradientBinding::InPlace => widen_to_vectors(gradient_windows, logits_size),
        };
        if !(widened_inputs && widened_gradient) {
            return LogitAccess::Entries;
        }
        for (chunk, window) in chunks.iter_mut().zip(inputs) {
            chunk.inputs = window;
        }
        access
    }
}

/// Rounds every window's size up to whole vec4s when each stays inside a buffer
/// of `buffer_size` bytes (then true; else false, and the windows are left as
/// they were).
fn widen_to_vectors(windows: &mut [Window], buffer_size: u64) -> bool {
    let widened: Vec<Window> = windows
        .iter()
        .map(|window| Window {
            byte_size: window.byte_size.next_multiple_of(VECTOR_BYTES),
            ..*window
        })
        .collect();
    let fits = widened
        .iter()
        .all(|window| window.byte_offset + window.byte_size <= buffer_size);
    if fits {
        windows.copy_from_slice(&widened);
    }
    fits
}

/// [`access_of`] for chunks whose windows start where `chunks` and
/// `gradient_windows` say.
fn logit_access(
    shape: Shape,
    logit_type: LogitType,
    chunks: &[Chunk],
    gradient_windows: &[Window],
    f32_vectors: bool,
) -> LogitAccess {
    let aligned = chunks.iter().all(|chunk| chunk.inputs.first_word.is_multiple_of(4))
        && gradient_windows
            .iter()
            .all(|window| window.first_word.is_multiple_of(4));
    access_of(shape, logit_type, aligned, f32_vectors)
}

/// How the row kernel reaches the logits and the gradient: in groups of 4 in
/// both passes over vector storage (`Groups`) for rows of a multiple of 4
/// classes, contiguous (no N-d spatial stride), with every chunk's first logit
/// and gradient entry at a multiple of 4 inside its binding (`aligned`), so that
/// each group lies inside one row (and, for 16-bit types, whole 32-bit words
/// belong to one invocation and to the caller's slice). Other contiguous rows (a
/// vocabulary such as 50257, or an unaligned slice) take groups aligned in the
/// binding with masked edges (`MaskedGroups`): bf16 and f16 as two whole 32-bit
/// words per group (the words straddling a row's boundary left to the
/// straddling-word pass), f32 as one vec4 per group when `f32_vectors`
/// ([`UnalignedF32`]; a partial group's entries stored one lane at a time).
/// Everything else goes entry by entry (`Entries`): f32 otherwise, and N-d rows
/// (f16 stores single entries; bf16, and f16 without `SHADER_F16`, two to a
/// 32-bit word that no row owns, have their gradient written by the
/// gradient-word pass, [`WordPass::GradientWords`]).
fn access_of(shape: Shape, logit_type: LogitType, aligned: bool, f32_vectors: bool) -> LogitAccess {
    let contiguous = shape.spatial == 1;
    if contiguous && aligned && shape.classes.is_multiple_of(4) {
        LogitAccess::Groups
    } else if contiguous && (logit_type != LogitType::F32 || f32_vectors) {
        LogitAccess::MaskedGroups
    } else {
        LogitAccess::Entries
    }
}

#[cfg(test)]
mod tests;
