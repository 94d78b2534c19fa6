//! The split-row kernel of the categorical cross-entropy
//! (shaders/cross_entropy_split.wgsl, compiled after the fused kernel's source
//! whose functions it calls): its pipelines (`split_rows`, then `split_repair`
//! on the same grid), the bind group 1 it adds to the row kernel's group 0 (its
//! parameters and the `partials` buffer of slice records and pending flags),
//! and its dispatches. When it runs is [`split_plan`](crate::gpu::row_split)'s
//! decision; this file only carries it out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::contract::{SplitParams, split_bindings};
use super::super::pipeline::{
    Chunk, bind_group, bind_group_layout, compute_pipeline_with_groups, params_binding, params_buffer, storage_entry,
    uniform_entry,
};
use super::source::{RowKernelConfig, RowKernelKey};
use crate::gpu::row_split::SplitPlan;
use crate::gpu::shader_checks::ShaderChecks;
use crate::gpu::workgroup::REDUCTION_SCRATCH_BYTES_PER_INVOCATION;

const SPLIT_SOURCE: &str = include_str!("../../../../shaders/cross_entropy_split.wgsl");

/// Words of one slice in `partials`: its record and its pending flag.
pub(crate) const WORDS_PER_SLICE: u64 = split_bindings::RECORD_WORDS as u64 + 1;

/// Most slices a row may have.
pub(crate) const MAX_SLICES: u32 = split_bindings::MAX_SLICES;

/// Bytes of workgroup memory the split kernel needs at `workgroup_size`: the
/// reductions' scratch, the gathered records (`SliceStats`, 6 words each), the
/// target logit, the two flags and the fused kernel's one-entry row cache.
pub(crate) fn workgroup_bytes(workgroup_size: u32) -> u32 {
    workgroup_size * REDUCTION_SCRATCH_BYTES_PER_INVOCATION + MAX_SLICES * 24 + 4 * 4
}

/// The two entry points compiled for one row-kernel configuration.
pub(crate) struct SplitPipelines {
    rows: wgpu::ComputePipeline,
    repair: wgpu::ComputePipeline,
}

/// Compiled split kernels (on first use) and the layout of their bind group 1.
pub(crate) struct SplitKernels {
    layout: wgpu::BindGroupLayout,
    pipelines: Mutex<HashMap<(RowKernelKey, u32), Arc<SplitPipelines>>>,
}

impl SplitKernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let entries = [
            uniform_entry(split_bindings::BINDING_SPLIT_PARAMS),
            storage_entry(split_bindings::BINDING_PARTIALS, false),
        ];
        Self {
            layout: bind_group_layout(device, "xent split rows", &entries),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// The pipelines of `config` (a whole-workgroup row kernel) with
    /// `vec4s_per_invocation`, against the row kernel's `rows_layout`.
    pub(crate) fn pipelines(
        &self,
        device: &wgpu::Device,
        rows_layout: &wgpu::BindGroupLayout,
        config: &RowKernelConfig,
        vec4s_per_invocation: u32,
        checks: ShaderChecks,
    ) -> Arc<SplitPipelines> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pipelines = cache.entry((config.key, vec4s_per_invocation)).or_insert_with(|| {
            let source = split_source(config, vec4s_per_invocation);
            let layouts = [rows_layout, &self.layout];
            Arc::new(SplitPipelines {
                rows: compute_pipeline_with_groups(device, &layouts, &source, "split_rows", checks),
                repair: compute_pipeline_with_groups(device, &layouts, &source, "split_repair", checks),
            })
        });
        Arc::clone(pipelines)
    }

    /// The partials buffer and one bind group per chunk for `plan` over
    /// `chunks` (of `rows` rows in all); `None` when the partials would not fit
    /// one binding of `max_binding` bytes (the fused kernel runs instead).
    pub(crate) fn prepare(
        &self,
        device: &wgpu::Device,
        chunks: &[Chunk],
        rows: u64,
        plan: SplitPlan,
        max_binding: u64,
    ) -> Option<SplitResources> {
        let slices = u64::from(plan.slices);
        let record_words = rows
            .checked_mul(slices)?
            .checked_mul(u64::from(split_bindings::RECORD_WORDS))?;
        let words = rows.checked_mul(slices)?.checked_mul(WORDS_PER_SLICE)?;
        let bytes = words.checked_mul(4)?;
        if bytes > max_binding || words > u64::from(u32::MAX) {
            return None;
        }
        let blocks: Vec<SplitParams> = chunks
            .iter()
            .map(|chunk| SplitParams {
                slices: plan.slices,
                spin_limit: plan.spin_limit,
                // Both below `words`, which fits a u32.
                records_offset: (chunk.first * slices * u64::from(split_bindings::RECORD_WORDS)) as u32,
                pending_offset: (record_words + chunk.first * slices) as u32,
            })
            .collect();
        let params = params_buffer(device, "xent split params", &blocks);
        let partials = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("xent split partials"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let groups = (0..chunks.len())
            .map(|index| {
                bind_group(
                    device,
                    "xent split rows",
                    &self.layout,
                    [
                        (
                            split_bindings::BINDING_SPLIT_PARAMS,
                            params_binding::<SplitParams>(&params, index),
                        ),
                        (split_bindings::BINDING_PARTIALS, partials.as_entire_binding()),
                    ],
                )
            })
            .collect();
        Some(SplitResources {
            plan,
            partials,
            groups,
            _params: params,
        })
    }
}

/// The split kernel's buffers and bind groups of one prepared call.
pub(crate) struct SplitResources {
    pub(crate) plan: SplitPlan,
    partials: wgpu::Buffer,
    groups: Vec<wgpu::BindGroup>,
    _params: wgpu::Buffer,
}

impl SplitResources {
    /// Empties every record and pending flag (before the call's compute pass).
    pub(crate) fn clear(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.partials, 0, None);
    }

    /// Workgroups of one chunk's dispatches: one per slice.
    pub(crate) fn workgroups(&self, chunk: &Chunk) -> u64 {
        chunk.count * u64::from(self.plan.slices)
    }

    /// Records chunk `index`'s `split_rows` and `split_repair` over the
    /// `shape` grid, with the row kernel's group 0 already set.
    pub(crate) fn record_chunk(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        pipelines: &SplitPipelines,
        index: usize,
        shape: (u32, u32),
    ) {
        pass.set_bind_group(1, &self.groups[index], &[]);
        for pipeline in [&pipelines.rows, &pipelines.repair] {
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(shape.0, shape.1, 1);
        }
    }
}

/// The split kernel's source: the fused kernel's (its prelude, storage,
/// reductions and functions), the split constants and bindings, then
/// shaders/cross_entropy_split.wgsl; concatenated, nothing replaced.
pub(super) fn split_source(config: &RowKernelConfig, vec4s_per_invocation: u32) -> String {
    let slice_size = config.workgroup_size * vec4s_per_invocation * 4;
    format!(
        "{}\nconst VEC4S_PER_INVOCATION: u32 = {vec4s_per_invocation}u;\nconst SLICE_SIZE: u32 = {slice_size}u;\n{}{}\n{SPLIT_SOURCE}",
        config.source(),
        split_bindings::WGSL,
        SplitParams::WGSL
    )
}
