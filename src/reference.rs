//! The f64 truth the tests compare against; not for production.
//!
//! Plain, deliberately simple f64 transcriptions of each loss's definition, with
//! no tricks beyond a max subtraction and an `ln_1p` for confident rows: slow,
//! allocating, and checked with `debug_assert!` only. xent's own tests compare
//! every CPU and GPU path with them. Only built with the `reference` feature:
//!
//! ```toml
//! [dev-dependencies]
//! xent = { version = "0.1", features = ["reference"] }
//! ```
//!
//! ```
//! use xent::{CrossEntropyOptions, Shape, Targets};
//! use xent::reference::cross_entropy_f64;
//!
//! let logits = [0.0f32, 0.0];
//! let truth = cross_entropy_f64(&logits, Targets::from(&[1i64][..]), Shape::new(1, 2), &CrossEntropyOptions::default());
//! assert!((truth.loss - std::f64::consts::LN_2).abs() < 1e-15);
//! assert_eq!(truth.gradient, [0.5, -0.5]);
//! ```

pub use crate::cpu::cross_entropy::reference::{
    ReferenceCrossEntropy, cross_entropy_f64, gradient_f64, row_losses_f64,
};

/// f64 references of the binary cross-entropy: per-element losses and the gradient
/// of their sum.
pub mod binary {
    pub use crate::cpu::binary::reference::{bce_probs_f64, bce_with_logits_f64};
}

/// f64 references of the KL divergence, entropy and probability cross-entropy:
/// losses (per element for KL, per row otherwise) and the gradient of their sum.
pub mod divergence {
    pub use crate::cpu::divergence::reference::{entropy_f64, kl_div_f64, probability_cross_entropy_f64};
    pub use crate::types::RowTargets;
}
