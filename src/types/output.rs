//! What a loss call returns: the [`Loss`] (reduced or per row) and the
//! [`LossOutput`] with the optional per-row statistics.

use crate::types::Targets;

/// A computed loss: one number for `mean`/`sum`, one per row for `none`.
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Loss, Reduction, Shape};
///
/// let (logits, targets) = ([0.0f32, 0.0, 0.0, 0.0], [1i64, 0]);
/// let mean = CrossEntropyLoss::new().loss(&Cpu, &logits, &targets, Shape::new(2, 2))?;
/// assert!((mean.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// let unreduced = CrossEntropyLoss::new().reduction(Reduction::None);
/// let none = unreduced.loss(&Cpu, &logits, &targets, Shape::new(2, 2))?;
/// assert_eq!(none.value(), None);
/// assert!(matches!(none, Loss::PerRow(rows) if rows.len() == 2));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// The reduced loss.
    Reduced(f32),
    /// Per-row losses (reduction `none`).
    PerRow(Vec<f32>),
}

impl Loss {
    /// The reduced loss, or `None` for per-row losses.
    ///
    /// ```
    /// use xent::Loss;
    ///
    /// assert_eq!(Loss::Reduced(0.5).value(), Some(0.5));
    /// assert_eq!(Loss::PerRow(vec![0.5, 1.0]).value(), None);
    /// ```
    pub fn value(&self) -> Option<f32> {
        match self {
            Loss::Reduced(value) => Some(*value),
            Loss::PerRow(_) => None,
        }
    }

    /// The per-row losses, or `None` for a reduced loss.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Loss, Reduction, Shape};
    ///
    /// assert_eq!(Loss::Reduced(0.5).per_row(), None);
    /// let none = CrossEntropyLoss::new().reduction(Reduction::None);
    /// let losses = none.loss(&Cpu, &[0.0f32, 0.0, 2.0, 0.0], &[1i64, 0], Shape::new(2, 2))?;
    /// let per_row = losses.per_row().unwrap();
    /// assert!((per_row[0] - 2f32.ln()).abs() < 1e-6);
    /// assert!((per_row[1] - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2)
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn per_row(&self) -> Option<&[f32]> {
        match self {
            Loss::Reduced(_) => None,
            Loss::PerRow(values) => Some(values),
        }
    }
}

/// Everything one call computes (see [`CrossEntropyLoss::forward`](crate::CrossEntropyLoss::forward)).
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Loss, Shape, Targets};
///
/// let logits = [0.0f32, 2.0, 1.0, 3.0, 0.0, 0.0];
/// let loss = CrossEntropyLoss::new().z_loss(1e-4);
/// let output = loss.forward(&Cpu, &logits, &[1i64, 1], Shape::new(2, 3), None, true)?;
/// assert_eq!(output.argmax, Some(vec![1, 0]));
/// assert!(output.z_loss.as_ref().and_then(Loss::value).unwrap() > 0.0);
/// assert_eq!(output.accuracy(Targets::I64(&[1, 1]), -100), Some(0.5));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// The loss, z-loss term included.
    pub loss: Loss,
    /// The z-loss part alone (`z · lse²`, reduced like the loss), when `z_loss > 0`.
    pub z_loss: Option<Loss>,
    /// Per-row log-sum-exp of the (transformed) logits, when row statistics were asked for.
    pub lse: Option<Vec<f32>>,
    /// Per-row argmax of the logits (smallest index on ties), when row statistics were asked for.
    pub argmax: Option<Vec<u32>>,
}

impl LossOutput {
    /// Token accuracy: the fraction of rows (not ignored) whose argmax is their
    /// class-index target. `None` without row statistics or with soft targets;
    /// NaN when every row is ignored (0 / 0, as PyTorch's mean over no rows).
    ///
    /// ```
    /// use xent::{Loss, LossOutput, Targets};
    ///
    /// let output = LossOutput {
    ///     loss: Loss::Reduced(1.0),
    ///     z_loss: None,
    ///     lse: None,
    ///     argmax: Some(vec![2, 0, 1]),
    /// };
    /// // Row 1 is ignored; of rows 0 and 2, row 0 is right.
    /// assert_eq!(output.accuracy(Targets::I64(&[2, -100, 0]), -100), Some(0.5));
    /// assert_eq!(output.accuracy(Targets::Probabilities(&[1.0; 9]), -100), None);
    /// assert!(output.accuracy(Targets::I64(&[-100; 3]), -100).is_some_and(f64::is_nan));
    /// ```
    pub fn accuracy(&self, targets: Targets<'_>, ignore_index: i64) -> Option<f64> {
        let argmax = self.argmax.as_ref()?;
        let targets = targets.to_i64();
        if targets.len() != argmax.len() {
            return None;
        }
        let counted: Vec<(i64, u32)> = targets
            .iter()
            .zip(argmax)
            .filter(|(target, _)| **target != ignore_index)
            .map(|(target, argmax)| (*target, *argmax))
            .collect();
        let correct = counted
            .iter()
            .filter(|(target, argmax)| *target == i64::from(*argmax))
            .count();
        Some(correct as f64 / counted.len() as f64)
    }
}
