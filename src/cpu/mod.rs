//! CPU implementations of the losses and their gradients, with PyTorch's
//! semantics. One loss, one name: the cross-entropy is in [`cross_entropy`],
//! the binary cross-entropy in [`binary`], the KL divergence, entropy and
//! probability-input cross-entropy in [`divergence`], the vocabulary-sharded
//! cross-entropy's statistics, combination and gradient in [`sharded`]; each
//! loss of the first three has its f64
//! reference beside it (`reference`, for the tests and, behind the `reference`
//! feature, `xent::reference`).
//!
//! The cross-entropy (`cross_entropy(logits, targets)` per row:
//! `logsumexp(x) - x[target]`, NaN or `+inf` logits give a NaN loss) has a tuned
//! row loop for the plain loss (`cross_entropy/fast.rs`, the benchmark baseline)
//! and a general one for every option (`cross_entropy/general.rs`), built from
//! the same pieces:
//!
//! - [`exp`]: the branch-free, vectorisable f32 exponential;
//! - [`math`]: the f64 `tanh` (softcap) and `ln_1p` (confident rows);
//! - [`lanes`]: the 16-lane folds, the masked softmax term and the prefetch;
//! - [`tasks`]: rows split into rayon tasks, each handed to its row loop as f32
//!   slices (16-bit logits widened into a per-thread buffer and their gradient
//!   rounded back, in-place gradients on a staged copy of the task), so no call
//!   converts or copies a whole N×C array;
//! - [`isa`]: the portable, AVX2+FMA or AVX-512 build of the loops, picked once
//!   per process.

pub(crate) mod binary;
pub(crate) mod cross_entropy;
pub(crate) mod divergence;
pub(crate) mod elementwise;
pub(crate) mod exp;
mod isa;
mod lanes;
mod math;
pub(crate) mod sharded;
mod tasks;
