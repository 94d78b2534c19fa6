//! The kernels: the one place that knows the WGSL sources, the constants shared
//! with them, the bind-group layouts, how a batch is split into chunks that fit
//! the binding limit, and the dispatch shapes. One file per loss, as in
//! shaders/: `cross_entropy` (the categorical cross-entropy), `binary` (the
//! binary cross-entropy), `divergence` (KL divergence, entropy, probability
//! cross-entropy), `sharded` (the vocabulary-sharded cross-entropy); `family`
//! (pipelines, chunks) and `family_record` (recording a call) are what BCE and
//! the divergences share, `pipeline` and
//! `contract` what they all share. This file is
//! the registry a [`Context`](crate::Context) owns: the cross-entropy kernels,
//! compiled with the context, and the others, compiled on first use.

pub(crate) mod binary;
mod contract;
pub(crate) mod cross_entropy;
pub(crate) mod divergence;
pub(crate) mod family;
pub(crate) mod family_record;
#[cfg(test)]
mod loop_form;
mod pipeline;
pub(crate) mod sharded;

use std::sync::OnceLock;

use self::cross_entropy::CrossEntropyKernels;
pub(crate) use self::cross_entropy::KernelChoices;
use self::family::FamilyKernels;
use self::sharded::ShardedKernels;
use crate::gpu::shader_checks::ShaderChecks;

/// Every compiled kernel of one device.
pub(crate) struct Kernels {
    /// The categorical cross-entropy kernels, compiled with the context.
    pub(crate) cross_entropy: CrossEntropyKernels,
    /// The BCE, KL divergence, entropy and probability cross-entropy kernels:
    /// their layout made on first use, each pipeline compiled on first use.
    pub(crate) family: OnceLock<FamilyKernels>,
    /// The vocabulary-sharded cross-entropy kernels, compiled on first use.
    sharded: OnceLock<ShardedKernels>,
}

impl Kernels {
    /// Compiles the cross-entropy kernels as `choices` say (the split rows'
    /// partials bound in at most `max_binding` bytes).
    pub(crate) fn new(
        device: &wgpu::Device,
        adapter: &wgpu::Adapter,
        choices: KernelChoices,
        max_binding: u64,
    ) -> Self {
        Self {
            cross_entropy: CrossEntropyKernels::new(device, adapter, choices, max_binding),
            family: OnceLock::new(),
            sharded: OnceLock::new(),
        }
    }

    /// The vocabulary-sharded cross-entropy kernels, compiled on first use (for
    /// workgroups of the row kernels' size, at most 256).
    pub(crate) fn sharded(&self, device: &wgpu::Device) -> &ShardedKernels {
        self.sharded
            .get_or_init(|| ShardedKernels::new(device, self.workgroup_size(), self.shader_checks()))
    }

    /// True when the cross-entropy kernels use subgroup reductions.
    pub(crate) fn uses_subgroups(&self) -> bool {
        self.cross_entropy.uses_subgroups()
    }

    /// Invocations per workgroup of the cross-entropy row kernels.
    pub(crate) fn workgroup_size(&self) -> u32 {
        self.cross_entropy.workgroup_size()
    }

    /// The run-time checks every kernel is compiled with.
    pub(crate) fn shader_checks(&self) -> ShaderChecks {
        self.cross_entropy.shader_checks()
    }
}
