//! GPU kernels of the binary cross-entropy (`shaders/binary_cross_entropy.wgsl`,
//! compiled appended to shaders/family.wgsl). Calls run through
//! [`super::family::run_family`]: the workspace's family buffers, one
//! submission, chunked by tiles of elements.

use super::family::{FAMILY_WORKGROUP_SIZE, FamilyLayout, FamilyPipelines, Work, family_source};

const BINARY_CROSS_ENTROPY_SOURCE: &str = include_str!("../../../shaders/binary_cross_entropy.wgsl");

/// The compiled binary cross-entropy kernels (made once per [`Context`](crate::Context)).
pub(crate) struct BinaryKernels {
    layout: FamilyLayout,
    elements: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

impl BinaryKernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let layout = FamilyLayout::new(device);
        let source = family_source(FAMILY_WORKGROUP_SIZE, &[BINARY_CROSS_ENTROPY_SOURCE]);
        let elements = layout.pipeline(device, &source, "bce_elements");
        let reduce = layout.pipeline(device, &source, "reduce_partials");
        Self {
            layout,
            elements,
            reduce,
        }
    }

    /// The elementwise BCE kernel with the shared reduction.
    pub(crate) fn pipelines(&self) -> FamilyPipelines<'_> {
        FamilyPipelines {
            layout: &self.layout,
            kernel: &self.elements,
            reduce: &self.reduce,
            work: Work::Elements,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::family::{FAMILY_WORKGROUP_SIZE, family_source};
    use super::super::pipeline::assert_valid_wgsl;
    use super::BINARY_CROSS_ENTROPY_SOURCE;

    #[test]
    fn the_binary_cross_entropy_module_is_valid_wgsl() {
        assert_valid_wgsl(&family_source(FAMILY_WORKGROUP_SIZE, &[BINARY_CROSS_ENTROPY_SOURCE]));
    }
}
