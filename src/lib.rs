#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// The floor plan, bottom up: `error` and `types` (shared by everything), `options`
// (plain data + validation), the backends `cpu` and `gpu`, the `backend` trait that
// dispatches between them, and the public builders in `losses`. No module imports
// from a floor above its own.
mod backend;
mod cpu;
mod error;
mod gpu;
mod losses;
mod options;
#[cfg(feature = "reference")]
pub mod reference;
mod types;

/// The CPU row loops are internal: they trust their callers, and the public
/// losses check shapes, targets and options before calling them.
///
/// ```compile_fail
/// let _ = xent::cpu::cross_entropy::fast::fused_rows;
/// ```
///
/// ```compile_fail
/// let _ = xent::cpu::cross_entropy::cross_entropy;
/// ```
///
/// The CPU losses are reached through the public builders only.
///
/// ```compile_fail
/// let _ = xent::cpu::binary::binary_cross_entropy;
/// ```
#[cfg(doctest)]
pub struct CpuInternalsArePrivate;

pub use backend::{Backend, Cpu};
pub use error::{Error, Result};
pub use gpu::context::{Context, ContextOptions};
pub use gpu::device_call::{DeviceInputs, GradientOutput, UpstreamGradient};
pub use gpu::family_call::{FamilyInputs, FamilyTargets};
pub use gpu::gradient_order::GradientOrder;
pub use gpu::outputs::DeviceOutputs;
pub use gpu::row_split::{DEFAULT_SPIN_LIMIT, ROW_SPLIT_VEC4S_CHOICES, RowSplit};
pub use gpu::shader_checks::ShaderChecks;
pub use gpu::transfer::DEFAULT_TRANSFER_PIECE_BYTES;
pub use gpu::unaligned_f32::UnalignedF32;
pub use gpu::workgroup::WORKGROUP_SIZE_CHOICES;
pub use half;
pub use losses::binary::BinaryCrossEntropyLoss;
pub use losses::cross_entropy::CrossEntropyLoss;
pub use losses::divergence::{Entropy, KlDivLoss, KlReduction, ProbabilityCrossEntropyLoss, entropy};
pub use losses::sharded::ShardedCrossEntropy;
pub use options::{CrossEntropyOptions, DEFAULT_IGNORE_INDEX, InputKind, KERAS_EPSILON, Reduction};
pub use types::{
    CombinedStats, HostBatch, HostLogits, LogitType, Logits, LogitsMut, Loss, LossOutput, Shape, ShardStats, ShardSums,
    TargetType, Targets, VocabShard,
};

/// This crate's version (`CARGO_PKG_VERSION`), which results can carry so that
/// they say what computed them.
///
/// ```
/// assert!(!xent::VERSION.is_empty());
/// ```
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
