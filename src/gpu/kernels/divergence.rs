//! The kernels of the KL divergence, the entropy and the probability
//! cross-entropy (`shaders/divergence.wgsl`: `kl_elements`, `entropy_rows`,
//! `probability_cross_entropy_rows`), compiled appended to shaders/family.wgsl,
//! whose bindings, reductions and logarithms they use; their pipelines and
//! recording are the family's (`family.rs`, `family_record.rs`).

/// The WGSL of the divergence kernels.
pub(crate) const DIVERGENCE_SOURCE: &str = include_str!("../../../shaders/divergence.wgsl");
