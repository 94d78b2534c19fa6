//! CPU implementations of the cross-entropy loss and its gradient.
//!
//! The categorical cross-entropy has three paths here, with PyTorch semantics (`cross_entropy(logits, targets)`
//! per row: `logsumexp(x) - x[target]`, NaN or `+inf` logits give a NaN loss):
//!
//! - `reference` is a plain, deliberately simple f64 implementation. It is the
//!   independent truth the tests compare every other path against (the fast CPU
//!   path here, the GPU path elsewhere). It is not meant to be fast; it is built
//!   for the crate's own unit tests and, behind the `reference` feature, re-exported
//!   as `xent::reference` for the integration tests.
//! - `fast` is the production CPU backend and the benchmark baseline: one fused
//!   pass per row in f32 with a vectorisable `exp::exp_f32`, careful
//!   accumulation of the softmax denominator, rows split across threads with
//!   rayon, and AVX-512 and AVX2+FMA specialisations chosen at runtime on x86.
//! - `general` is the production CPU path for every option (class weights,
//!   `ignore_index`, label smoothing, soft targets, z-loss, softcap, logit
//!   scale, N-d layouts), built the same way; the plain case goes to `fast`.
//! - `exp` holds the branch-free f32 exponential the fast path is built on;
//!   `dispatch` picks the portable, AVX2+FMA or AVX-512 build of the loops once per process.
//! - `staging` hands both paths f32 slices one task of rows at a time: 16-bit
//!   logits are widened into a per-thread buffer (and their gradient rounded
//!   back) there, and in-place gradients read a staged copy of the task, so no
//!   call converts or copies a whole N×C array.
//! - [`binary`] and [`divergence`] are the CPU paths (and f64 references) of the
//!   binary cross-entropy, KL divergence, entropy and probability-input
//!   cross-entropy.

pub(crate) mod binary;
mod dispatch;
pub(crate) mod divergence;
pub(crate) mod exp;
pub(crate) mod fast;
pub(crate) mod general;
#[cfg(any(test, feature = "reference"))]
pub(crate) mod reference;
mod staging;
