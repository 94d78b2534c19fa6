//! GPU kernels of the KL divergence, the entropy and the probability
//! cross-entropy (`shaders/divergence.wgsl`, compiled appended to
//! `shaders/family.wgsl`, whose bindings, reductions and logarithms it uses).
//! Calls run through [`super::family::run_family`]: the workspace's family
//! buffers, one submission, chunked by tiles (KL) or rows (entropy, probability
//! cross-entropy).

use super::family::{FAMILY_WORKGROUP_SIZE, FamilyLayout, FamilyPipelines, RowVariants, Work, family_source};

const DIVERGENCE_SOURCE: &str = include_str!("../../../shaders/divergence.wgsl");

/// The module source for rows shared by `threads_per_row` invocations.
fn source(threads_per_row: u32) -> String {
    family_source(threads_per_row, &[DIVERGENCE_SOURCE])
}

/// The compiled divergence kernels (made once per `Context`; row widths on first use).
pub(crate) struct DivergenceKernels {
    layout: FamilyLayout,
    kl: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    entropy: RowVariants,
    probability_cross_entropy: RowVariants,
}

impl DivergenceKernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let layout = FamilyLayout::new(device);
        let elementwise_source = source(FAMILY_WORKGROUP_SIZE);
        let kl = layout.pipeline(device, &elementwise_source, "kl_elements");
        let reduce = layout.pipeline(device, &elementwise_source, "reduce_partials");
        Self {
            layout,
            kl,
            reduce,
            entropy: RowVariants::new("entropy_rows", source),
            probability_cross_entropy: RowVariants::new("probability_cross_entropy_rows", source),
        }
    }

    /// The elementwise KL kernel.
    pub(crate) fn kl(&self) -> FamilyPipelines<'_> {
        FamilyPipelines {
            layout: &self.layout,
            kernel: &self.kl,
            reduce: &self.reduce,
            work: Work::Elements,
        }
    }

    /// The entropy row kernel for rows of `classes` columns.
    pub(crate) fn entropy(&self, device: &wgpu::Device, classes: usize) -> FamilyPipelines<'_> {
        self.rows(&self.entropy, device, classes)
    }

    /// The probability cross-entropy row kernel for rows of `classes` columns.
    pub(crate) fn probability_cross_entropy(&self, device: &wgpu::Device, classes: usize) -> FamilyPipelines<'_> {
        self.rows(&self.probability_cross_entropy, device, classes)
    }

    fn rows<'a>(&'a self, variants: &'a RowVariants, device: &wgpu::Device, classes: usize) -> FamilyPipelines<'a> {
        let (kernel, work) = variants.for_classes(device, &self.layout, classes);
        FamilyPipelines {
            layout: &self.layout,
            kernel,
            reduce: &self.reduce,
            work,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::family::THREADS_PER_ROW_CHOICES;
    use super::super::pipeline::assert_valid_wgsl;
    use super::source;

    #[test]
    fn every_family_variant_is_valid_wgsl() {
        for threads_per_row in THREADS_PER_ROW_CHOICES {
            assert_valid_wgsl(&source(threads_per_row));
        }
    }
}
