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

/// Every per-row and reduced output of [`cross_entropy_f64`], in f64.
///
/// ```
/// use xent::reference::{ReferenceCrossEntropy, cross_entropy_f64};
/// use xent::{CrossEntropyOptions, Reduction, Shape, Targets};
///
/// let options = CrossEntropyOptions { reduction: Reduction::None, ..Default::default() };
/// let truth: ReferenceCrossEntropy = cross_entropy_f64(&[0.0, 2.0], Targets::I64(&[1]), Shape::new(1, 2), &options);
/// assert!((truth.row_losses[0] - (-2f64).exp().ln_1p()).abs() < 1e-15); // log(1 + e^-2)
/// assert!((truth.row_lse[0] - 2f64.exp().ln_1p()).abs() < 1e-15);
/// assert_eq!(truth.row_argmax, [1]);
/// ```
pub use crate::cpu::cross_entropy::reference::ReferenceCrossEntropy;
/// PyTorch's `F.cross_entropy` with every option of [`CrossEntropyOptions`](crate::CrossEntropyOptions), in f64.
///
/// ```
/// use xent::reference::cross_entropy_f64;
/// use xent::{CrossEntropyOptions, Shape, Targets};
///
/// // Row 1 is ignored (-100): the mean is row 0's log(1 + e^-2).
/// let logits = [0.0f32, 2.0, 7.0, 0.0];
/// let truth = cross_entropy_f64(&logits, Targets::I64(&[1, -100]), Shape::new(2, 2), &CrossEntropyOptions::default());
/// assert!((truth.loss - (-2f64).exp().ln_1p()).abs() < 1e-15);
/// assert_eq!(truth.gradient[2..], [0.0, 0.0]);
/// ```
pub use crate::cpu::cross_entropy::reference::cross_entropy_f64;
/// The plain cross-entropy's gradient `(softmax(x) − onehot(target))·scale`, in f64.
///
/// ```
/// use xent::reference::gradient_f64;
///
/// // softmax − onehot, times the scale: (½ − 1, ½)·2.
/// assert_eq!(gradient_f64(&[0.0, 0.0], &[0], 2, 2.0), [-1.0, 1.0]);
/// ```
pub use crate::cpu::cross_entropy::reference::gradient_f64;
/// The plain cross-entropy's per-row loss `lse(x) − x[target]`, in f64.
///
/// ```
/// use xent::reference::row_losses_f64;
///
/// let losses = row_losses_f64(&[0.0, 2.0, 0.0, 0.0], &[1, 0], 2);
/// assert!((losses[0] - (-2f64).exp().ln_1p()).abs() < 1e-15); // log(1 + e^-2)
/// assert!((losses[1] - std::f64::consts::LN_2).abs() < 1e-15);
/// ```
pub use crate::cpu::cross_entropy::reference::row_losses_f64;

/// f64 references of the binary cross-entropy: per-element losses and the gradient
/// of their sum.
pub mod binary {
    /// `F.binary_cross_entropy` per element, with its derivative, in f64.
    ///
    /// ```
    /// use xent::reference::binary::bce_probs_f64;
    ///
    /// // p = ¼ against y = 0: −ln(1 − ¼); derivative (p − y) / (p·(1 − p)) = 4/3.
    /// let (losses, gradient) = bce_probs_f64(&[0.25], &[0.0], 1, None, 0.0);
    /// assert!((losses[0] + 0.75f64.ln()).abs() < 1e-15);
    /// assert!((gradient[0] - 4.0 / 3.0).abs() < 1e-12);
    /// ```
    pub use crate::cpu::binary::reference::bce_probs_f64;
    /// `F.binary_cross_entropy_with_logits` per element, with its derivative, in f64.
    ///
    /// ```
    /// use xent::reference::binary::bce_with_logits_f64;
    ///
    /// // Logit 2, target 1, π = 3: 3·log(1 + e^-2); derivative 3·σ(2) − 3.
    /// let (losses, gradient) = bce_with_logits_f64(&[2.0], &[1.0], 1, None, Some(&[3.0]), 0.0);
    /// assert!((losses[0] - 3.0 * (-2f64).exp().ln_1p()).abs() < 1e-15);
    /// assert!((gradient[0] - 3.0 * (1.0 / (1.0 + (-2f64).exp()) - 1.0)).abs() < 1e-15);
    /// ```
    pub use crate::cpu::binary::reference::bce_with_logits_f64;
}

/// f64 references of the KL divergence, entropy and probability cross-entropy:
/// losses (per element for KL, per row otherwise) and the gradient of their sum.
pub mod divergence {
    /// `H(P)` per row, with its gradient, in f64.
    ///
    /// ```
    /// use xent::reference::divergence::entropy_f64;
    ///
    /// // From probabilities (½, ½) and from logits (0, 0): both ln 2.
    /// let (from_probabilities, _) = entropy_f64(&[0.5, 0.5], 2, false);
    /// let (from_logits, gradient) = entropy_f64(&[0.0, 0.0], 2, true);
    /// assert!((from_probabilities[0] - std::f64::consts::LN_2).abs() < 1e-15);
    /// assert!((from_logits[0] - std::f64::consts::LN_2).abs() < 1e-15);
    /// assert!(gradient.iter().all(|g| g.abs() < 1e-15)); // the maximum of H
    /// ```
    pub use crate::cpu::divergence::reference::entropy_f64;
    /// `F.kl_div` per element, with its derivative, in f64.
    ///
    /// ```
    /// use xent::reference::divergence::kl_div_f64;
    ///
    /// // p·(ln p − x) per element, 0 where p = 0; derivative −p.
    /// let (terms, gradient) = kl_div_f64(&[0.5f32.ln(), 0.5f32.ln()], &[1.0, 0.0], false);
    /// assert!((terms[0] - (-f64::from(0.5f32.ln()))).abs() < 1e-15 && terms[1] == 0.0);
    /// assert_eq!(gradient, [-1.0, 0.0]);
    /// ```
    pub use crate::cpu::divergence::reference::kl_div_f64;
    /// Keras' categorical cross-entropy on probabilities per row, with its gradient, in f64.
    ///
    /// ```
    /// use xent::reference::divergence::{RowTargets, probability_cross_entropy_f64};
    ///
    /// // The row (1, 3) is renormalised to (¼, ¾): −ln ¾ against class 1, as against one-hot soft targets.
    /// let (by_class, _) = probability_cross_entropy_f64(&[1.0, 3.0], RowTargets::Classes(&[1]), 2);
    /// let (soft, _) = probability_cross_entropy_f64(&[1.0, 3.0], RowTargets::Soft(&[0.0, 1.0]), 2);
    /// assert!((by_class[0] + 0.75f64.ln()).abs() < 1e-15);
    /// assert_eq!(by_class, soft);
    /// ```
    pub use crate::cpu::divergence::reference::probability_cross_entropy_f64;
    pub use crate::types::RowTargets;
}
