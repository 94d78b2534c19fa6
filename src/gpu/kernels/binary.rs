//! The binary cross-entropy's kernel (`shaders/binary_cross_entropy.wgsl`,
//! `bce_elements`), compiled appended to shaders/family.wgsl; its pipelines and
//! recording are the family's (`family.rs`, `family_record.rs`).

/// The WGSL of `bce_elements`.
pub(crate) const BINARY_CROSS_ENTROPY_SOURCE: &str = include_str!("../../../shaders/binary_cross_entropy.wgsl");
