//! xent's fused cross-entropy (loss and gradient in one kernel, PyTorch's
//! semantics) as a Burn 0.22 loss on Burn's wgpu runtime, on Burn's own wgpu
//! device and queue: the logits never leave the GPU.
//!
//! ```no_run
//! use burn::tensor::{Int, Tensor};
//! use xent_burn::CrossEntropyLossConfig;
//!
//! let device = xent_burn::init_wgpu()?.autodiff(); // Burn's wgpu runtime + an xent context on it
//! let loss_fn = CrossEntropyLossConfig::new().with_label_smoothing(0.1).init()?;
//! let logits = Tensor::<2>::zeros([8, 10], &device).require_grad();
//! let targets = Tensor::<1, Int>::zeros([8], &device);
//! let loss = loss_fn.forward(logits.clone(), targets);
//! let gradients = loss.backward();
//! # Ok::<(), xent_burn::Error>(())
//! ```
//!
//! Supported: Burn's cube backend on the wgpu runtime without fusion (Burn
//! built without its `fusion` feature), and `Autodiff` over it (no gradient
//! checkpointing). Logits may be f32, f16 or bf16 (bf16 only where Burn's
//! runtime can make bf16 tensors: its WGSL compiler cannot); the loss is f32
//! and the gradient has the logits' type. Other backends get [`Error::UnsupportedBackend`] from
//! [`CrossEntropyLoss::try_forward`]; use `burn::nn::loss::CrossEntropyLoss` there.

mod autodiff;
mod call;
mod cube;
mod device;
mod error;
mod linear;
mod loss;
mod ops;
mod paths;
mod sharded;
mod storage;

pub use call::XentCall;
pub use device::{init_wgpu, register};
pub use error::{Error, Result};
pub use linear::{ChunkSize, DEFAULT_LOGIT_BUDGET, LinearCrossEntropy, LinearGradients};
pub use loss::{CrossEntropyLoss, CrossEntropyLossConfig, Upstream};
pub use ops::{LossAndGradient, XentBackend};
pub use paths::{GradientPaths, gradient_paths};
pub use sharded::{AllReduce, InProcess, LogitShard, MaxThroughSum, ReduceOp, ShardedCrossEntropy, ShardedOutput};
pub use xent::Reduction;
