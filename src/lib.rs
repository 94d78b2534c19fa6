#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod binary;
mod cpu;
pub mod divergence;
pub mod error;
pub mod gpu;
pub mod input;
pub mod loss;
pub mod options;
#[cfg(feature = "reference")]
pub mod reference;

/// The CPU row loops are internal: they trust their callers, and the public
/// losses check shapes, targets and options before calling them.
///
/// ```compile_fail
/// let _ = xent::cpu::fast::fused_rows;
/// ```
///
/// ```compile_fail
/// let _ = xent::cpu::general::cross_entropy;
/// ```
///
/// The CPU losses are reached through the public builders only.
///
/// ```compile_fail
/// let _ = xent::cpu::binary::binary_cross_entropy;
/// ```
#[cfg(doctest)]
pub struct CpuInternalsArePrivate;

pub use binary::{BinaryCrossEntropyLoss, InputKind};
pub use divergence::{Entropy, KERAS_EPSILON, KlDivLoss, KlReduction, ProbabilityCrossEntropyLoss, entropy};
pub use error::{Error, Result};
pub use gpu::buffers::DeviceOutputs;
pub use gpu::context::{Context, ContextOptions, WORKGROUP_SIZE_CHOICES};
pub use half;
pub use input::{LogitType, Logits, LogitsMut, Shape, TargetType, Targets};
pub use loss::{Backend, Cpu, CrossEntropyLoss, DeviceInputs, GradientOutput, HostBatch, HostLogits, Loss, LossOutput};
pub use options::{CrossEntropyOptions, DEFAULT_IGNORE_INDEX, Reduction};

/// This crate's version (`CARGO_PKG_VERSION`), which results can carry so that
/// they say what computed them.
///
/// ```
/// assert!(!xent::VERSION.is_empty());
/// ```
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
