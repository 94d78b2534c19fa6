//! The final reductions of a categorical cross-entropy call (shaders/reduce.wgsl):
//! the mean's divisor before the row kernel (when the gradient needs it) and
//! the loss after it (with the divisor beside it for a loss-only mean: the
//! `fold_divisor` parameter, no separate pass), one workgroup over every row
//! for few rows, two levels for many ([`ReducePlan`]), and their dispatches
//! ([`ReducePipelines`]).

use super::super::pipeline::compute_pipeline;
use super::source::REDUCE_WORKGROUP_SIZE;
use crate::gpu::shader_checks::ShaderChecks;

/// Above this many rows a reduction runs in two levels: one workgroup alone
/// would walk every row.
const TWO_LEVEL_ABOVE_ROWS: u64 = 65_536;
/// Rows of one partial sum at least: 16 per invocation.
const MIN_ROWS_PER_PARTIAL: u64 = 16 * REDUCE_WORKGROUP_SIZE as u64;
/// Partial sums at most (the scratch holds this many `vec4<f32>`).
pub(crate) const MAX_PARTIALS: u64 = 1024;

/// How a reduction over `rows` rows is split: one workgroup per
/// `rows_per_partial` rows, `partials` of them (0: one level). A function of
/// the row count alone, so the bits never depend on the row chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReducePlan {
    pub(crate) partials: u32,
    pub(crate) rows_per_partial: u32,
}

impl ReducePlan {
    pub(crate) fn of(rows: u64) -> Self {
        if rows <= TWO_LEVEL_ABOVE_ROWS {
            return Self {
                partials: 0,
                rows_per_partial: 0,
            };
        }
        let rows_per_partial = rows.div_ceil(MAX_PARTIALS).max(MIN_ROWS_PER_PARTIAL);
        // Both fit u32: rows ≤ u32::MAX (a chunk's row count is a u32) and
        // partials ≤ MAX_PARTIALS.
        Self {
            partials: rows.div_ceil(rows_per_partial) as u32,
            rows_per_partial: rows_per_partial.min(u64::from(u32::MAX)) as u32,
        }
    }
}

/// The reduction pipelines: the two folds (one level, or the second of two)
/// and the first level's partial sums.
pub(crate) struct ReducePipelines {
    divisor_partials: wgpu::ComputePipeline,
    compute_divisor: wgpu::ComputePipeline,
    loss_partials: wgpu::ComputePipeline,
    reduce_losses: wgpu::ComputePipeline,
}

impl ReducePipelines {
    pub(crate) fn new(
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        source: &str,
        checks: ShaderChecks,
    ) -> Self {
        let pipeline = |entry| compute_pipeline(device, layout, source, entry, checks);
        Self {
            divisor_partials: pipeline("divisor_partials"),
            compute_divisor: pipeline("compute_divisor"),
            loss_partials: pipeline("loss_partials"),
            reduce_losses: pipeline("reduce_losses"),
        }
    }

    /// The mean's divisor into `scalars[2]`, for the gradient: 1 dispatch, or 2 for many rows.
    pub(crate) fn record_divisor(&self, pass: &mut wgpu::ComputePass<'_>, group: &wgpu::BindGroup, rows: usize) {
        record(
            pass,
            group,
            ReducePlan::of(rows as u64),
            &self.divisor_partials,
            &self.compute_divisor,
        );
    }

    /// The reduced loss and z-loss into `scalars[0..2]` (and with `fold_divisor`
    /// the divisor into `scalars[2]`): 1 dispatch, or 2 for many rows.
    pub(crate) fn record_losses(&self, pass: &mut wgpu::ComputePass<'_>, group: &wgpu::BindGroup, rows: usize) {
        record(
            pass,
            group,
            ReducePlan::of(rows as u64),
            &self.loss_partials,
            &self.reduce_losses,
        );
    }
}

/// The first level's `partials` workgroups (if any), then the fold's one.
fn record(
    pass: &mut wgpu::ComputePass<'_>,
    group: &wgpu::BindGroup,
    plan: ReducePlan,
    partials: &wgpu::ComputePipeline,
    fold: &wgpu::ComputePipeline,
) {
    pass.set_bind_group(0, group, &[]);
    if plan.partials > 0 {
        pass.set_pipeline(partials);
        pass.dispatch_workgroups(plan.partials, 1, 1);
    }
    pass.set_pipeline(fold);
    pass.dispatch_workgroups(1, 1, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_rows_take_one_level() {
        assert_eq!(ReducePlan::of(0).partials, 0);
        assert_eq!(ReducePlan::of(TWO_LEVEL_ABOVE_ROWS).partials, 0);
    }

    #[test]
    fn partials_cover_every_row_once_and_stay_within_the_scratch() {
        for rows in [
            TWO_LEVEL_ABOVE_ROWS + 1,
            200_000,
            1 << 22,
            123_456_789,
            u64::from(u32::MAX),
        ] {
            let plan = ReducePlan::of(rows);
            let (partials, per_partial) = (u64::from(plan.partials), u64::from(plan.rows_per_partial));
            assert!((1..=MAX_PARTIALS).contains(&partials), "{rows}: {plan:?}");
            assert!(per_partial >= MIN_ROWS_PER_PARTIAL, "{rows}: {plan:?}");
            assert!(partials * per_partial >= rows, "{rows}: {plan:?}");
            assert!((partials - 1) * per_partial < rows, "{rows}: {plan:?}");
        }
    }
}
