//! What a host call is given: the logits with the gradient's destination
//! ([`HostLogits`]) and the whole call ([`HostBatch`]). Its validation against the
//! options lives with the options (`options.rs`).

use crate::types::{Logits, LogitsMut, Shape, Targets};

/// Where a host call's logits come from and its gradient goes.
///
/// ```
/// use xent::{HostLogits, Logits, LogitsMut};
///
/// let (logits, mut gradient) = ([0.5f32, 1.0], [0.0f32; 2]);
/// assert!(!HostLogits::new(Logits::F32(&logits), None).has_gradient());
/// let with_gradient = HostLogits::new(Logits::F32(&logits), Some(LogitsMut::F32(&mut gradient)));
/// assert!(with_gradient.has_gradient());
/// assert_eq!(with_gradient.logits().len(), 2);
/// ```
#[derive(Debug)]
pub enum HostLogits<'a> {
    /// Read the logits; no gradient.
    LossOnly(Logits<'a>),
    /// Read the logits; write dL/dlogits into the second slice (same type and layout).
    WithGradient(Logits<'a>, LogitsMut<'a>),
    /// Read the logits, then overwrite them with dL/dlogits.
    InPlace(LogitsMut<'a>),
}

impl<'a> HostLogits<'a> {
    /// `logits` with the gradient going to `gradient`, if given.
    ///
    /// ```
    /// use xent::{HostLogits, Logits, LogitsMut};
    ///
    /// let (logits, mut gradient) = ([1.0f32], [0.0f32]);
    /// assert!(matches!(HostLogits::new(Logits::F32(&logits), None), HostLogits::LossOnly(_)));
    /// let with_gradient = HostLogits::new(Logits::F32(&logits), Some(LogitsMut::F32(&mut gradient)));
    /// assert!(matches!(with_gradient, HostLogits::WithGradient(..)));
    /// ```
    pub fn new(logits: Logits<'a>, gradient: Option<LogitsMut<'a>>) -> Self {
        match gradient {
            Some(gradient) => HostLogits::WithGradient(logits, gradient),
            None => HostLogits::LossOnly(logits),
        }
    }

    /// f32 `logits`, with the gradient going to the f32 slice `gradient`, if given.
    #[cfg(test)]
    pub(crate) fn from_f32(logits: &'a [f32], gradient: Option<&'a mut [f32]>) -> Self {
        Self::new(Logits::F32(logits), gradient.map(LogitsMut::F32))
    }

    /// The logits, read-only.
    ///
    /// ```
    /// use xent::{HostLogits, LogitsMut};
    ///
    /// let mut values = [0.5f32, 1.5];
    /// let in_place = HostLogits::InPlace(LogitsMut::F32(&mut values));
    /// assert_eq!(*in_place.logits().to_f32(), [0.5, 1.5]);
    /// ```
    pub fn logits(&self) -> Logits<'_> {
        match self {
            HostLogits::LossOnly(logits) | HostLogits::WithGradient(logits, _) => *logits,
            HostLogits::InPlace(logits) => logits.as_logits(),
        }
    }

    /// True when a gradient is written.
    ///
    /// ```
    /// use xent::{HostLogits, LogitsMut};
    ///
    /// let mut values = [0.0f32; 2];
    /// assert!(HostLogits::InPlace(LogitsMut::F32(&mut values)).has_gradient());
    /// ```
    pub fn has_gradient(&self) -> bool {
        !matches!(self, HostLogits::LossOnly(_))
    }
}

/// One call on host memory: logits, targets, their shape, and where the gradient
/// goes (if wanted), for [`CrossEntropyLoss::run`](crate::CrossEntropyLoss::run).
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, HostBatch, HostLogits, LogitsMut, Shape, Targets};
///
/// let mut logits = [0.0f32, 0.0];
/// let batch = HostBatch {
///     logits: HostLogits::InPlace(LogitsMut::F32(&mut logits)),
///     targets: Targets::I64(&[1]),
///     shape: Shape::new(1, 2),
///     row_stats: false,
/// };
/// let output = CrossEntropyLoss::new().run(&Cpu, batch)?;
/// assert!((output.loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// assert_eq!(logits, [0.5, -0.5]); // overwritten by dL/dlogits
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Debug)]
pub struct HostBatch<'a> {
    /// The logits (in the layout of `shape`) and the gradient's destination.
    pub logits: HostLogits<'a>,
    /// Class indices (one per row) or probabilities (one per logit).
    pub targets: Targets<'a>,
    /// rows × classes (and the N-d layout's spatial size).
    pub shape: Shape,
    /// Also return per-row lse and argmax.
    pub row_stats: bool,
}
