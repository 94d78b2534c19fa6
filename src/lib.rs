//! `xent`: cross-entropy losses and their gradients for large batches, on the GPU
//! through wgpu and WGSL compute shaders, with a fast CPU path behind the same API.
//!
//! The loss of a row of logits `x` with target class `t` is
//! `logsumexp(x) - x[t]` (the negative log-probability of the true class), and its
//! gradient is `softmax(x) - onehot(t)`, divided by N for the mean — PyTorch's
//! `F.cross_entropy` semantics. The GPU computes the per-row log-softmax
//! statistics, loss and gradient in one fused kernel and reduces the row losses
//! with a deterministic tree, all in one submission.
//!
//! ```no_run
//! use xent::{Context, CrossEntropyLoss, Reduction, Shape};
//!
//! # fn main() -> xent::Result<()> {
//! let context = Context::new()?; // or xent::Cpu for the CPU backend
//! let logits = vec![0.5f32, 2.0, -1.0, 0.1, 0.2, 0.3];
//! let targets: Vec<i64> = vec![1, 2];
//! let mut gradient = vec![0.0f32; logits.len()];
//! let loss = CrossEntropyLoss::new()
//!     .reduction(Reduction::Mean)
//!     .loss_and_grad(&context, &logits, &targets, Shape::new(2, 3), &mut gradient)?;
//! println!("loss = {:?}", loss.value());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod binary;
pub mod cpu;
pub mod divergence;
pub mod error;
pub mod gpu;
pub mod input;
pub mod loss;
pub mod options;

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

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
