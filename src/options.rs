//! The options of the categorical cross-entropy, with PyTorch's meaning (and the
//! large-model extras of Liger-Kernel and flash-attention), and their validation.

use crate::error::{Error, Result};
use crate::types::{HostBatch, HostLogits, Shape};

/// How per-row losses are combined, as PyTorch's `reduction`.
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Reduction, Shape};
///
/// assert_eq!("sum".parse::<Reduction>(), Ok(Reduction::Sum));
/// let loss = CrossEntropyLoss::new().reduction(Reduction::Sum);
/// let sum = loss.loss(&Cpu, &[0.0f32; 4], &[0i64, 1], Shape::new(2, 2))?;
/// assert!((sum.value().unwrap() - 2.0 * 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Mean over rows (the default). With class-index targets the divisor is the
    /// number of rows not equal to `ignore_index`, or with `weight` the sum of
    /// `weight[target]` over those rows; with soft targets it is the row count.
    #[default]
    Mean,
    /// Sum over rows.
    Sum,
    /// No reduction: one loss per row.
    None,
}

impl Reduction {
    /// The name PyTorch uses: `mean`, `sum` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
            Reduction::None => "none",
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            other => Err(format!("unknown reduction {other:?} (expected mean, sum or none)")),
        }
    }
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// PyTorch's default `ignore_index`.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

/// Every option of a categorical cross-entropy call.
///
/// With logits `x`, the transformed logits are `x' = t·tanh(s·x / t)` (softcap
/// `t`, logit scale `s`; without softcap `x' = s·x`), `lse = logsumexp(x')`,
/// `C` classes, class weights `w` (all 1 when absent) and smoothing `ε`:
///
/// - class-index target `y` (rows with `y == ignore_index` give 0 and leave the
///   mean's divisor):
///   `loss = (1−ε)·w_y·(lse − x'_y) + (ε/C)·Σ_c w_c·(lse − x'_c) + z·lse²`;
///   mean divides by `Σ w_y` over the rows not ignored (their count without `w`);
/// - soft targets `t` (probabilities): `t' = (1−ε)·t + ε/C`,
///   `loss = Σ_c w_c·t'_c·(lse − x'_c) + z·lse²`; mean divides by the row count.
///
/// `z·lse²` is the z-loss (`lse_square_scale` of Liger-Kernel / flash-attention);
/// it is also returned on its own, reduced the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyOptions {
    /// How rows are combined.
    pub reduction: Reduction,
    /// Class-index targets equal to this are ignored (PyTorch's default: -100).
    pub ignore_index: i64,
    /// One non-negative weight per class.
    pub weight: Option<Vec<f32>>,
    /// Label smoothing ε in [0, 1].
    pub label_smoothing: f32,
    /// z-loss scale (≥ 0): adds `z · lse²` per row.
    pub z_loss: f32,
    /// Soft-capping threshold t > 0 (Gemma 2): logits become `t·tanh(x/t)`.
    pub softcap: Option<f32>,
    /// Multiplies the logits before softcap and softmax (finite, non-zero).
    pub logit_scale: f32,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        Self {
            reduction: Reduction::Mean,
            ignore_index: DEFAULT_IGNORE_INDEX,
            weight: None,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            logit_scale: 1.0,
        }
    }
}

impl CrossEntropyOptions {
    /// Checks every option's domain against `shape`.
    pub fn validate(&self, shape: Shape) -> Result<()> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::InvalidOption(format!(
                "label_smoothing {} is outside [0, 1]",
                self.label_smoothing
            )));
        }
        if let Some(weight) = &self.weight {
            if weight.len() != shape.classes {
                return Err(Error::InvalidOption(format!(
                    "weight has {} entries, expected one per class ({})",
                    weight.len(),
                    shape.classes
                )));
            }
            if let Some(class) = weight.iter().position(|&value| !(value >= 0.0 && value.is_finite())) {
                return Err(Error::InvalidOption(format!(
                    "weight[{class}] = {} must be finite and non-negative",
                    weight[class]
                )));
            }
        }
        if !(self.z_loss >= 0.0 && self.z_loss.is_finite()) {
            return Err(Error::InvalidOption(format!(
                "z_loss {} must be finite and non-negative",
                self.z_loss
            )));
        }
        if let Some(softcap) = self.softcap
            && !(softcap > 0.0 && softcap.is_finite())
        {
            return Err(Error::InvalidOption(format!(
                "softcap {softcap} must be finite and positive"
            )));
        }
        if !(self.logit_scale.is_finite() && self.logit_scale != 0.0) {
            return Err(Error::InvalidOption(format!(
                "logit_scale {} must be finite and non-zero",
                self.logit_scale
            )));
        }
        Ok(())
    }

    /// The class weight of `class` (1 without weights).
    pub fn class_weight(&self, class: usize) -> f32 {
        self.weight.as_ref().map_or(1.0, |weight| weight[class])
    }

    /// `x'`: the logit after scaling and soft-capping.
    pub fn transform(&self, logit: f32) -> f32 {
        let scaled = logit * self.logit_scale;
        match self.softcap {
            Some(cap) => cap * (scaled / cap).tanh(),
            None => scaled,
        }
    }

    /// `d x' / d x` at a transformed logit `x'`: `s·(1 − (x'/t)²)` with softcap, `s` without.
    pub fn transform_derivative(&self, transformed: f32) -> f32 {
        match self.softcap {
            Some(cap) => {
                let ratio = transformed / cap;
                self.logit_scale * (1.0 - ratio * ratio)
            }
            None => self.logit_scale,
        }
    }
}

impl HostBatch<'_> {
    /// Checks lengths, types, target ranges and option domains; every backend calls this first.
    pub fn validate(&self, options: &CrossEntropyOptions) -> Result<()> {
        self.shape.check_logits(self.logits.logits().len())?;
        options.validate(self.shape)?;
        self.targets.check(self.shape, options.ignore_index)?;
        if let HostLogits::WithGradient(logits, gradient) = &self.logits {
            self.shape.check_gradient(gradient.len())?;
            if gradient.logit_type() != logits.logit_type() {
                return Err(Error::InvalidOption(format!(
                    "the gradient ({:?}) must have the logits' element type ({:?})",
                    gradient.logit_type(),
                    logits.logit_type()
                )));
            }
        }
        Ok(())
    }
}

/// What the values a loss is given are: logits (any real) or probabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Unnormalised scores: a sigmoid (binary) or softmax (entropy) gives the probabilities.
    #[default]
    Logits,
    /// Probabilities in [0, 1].
    Probabilities,
}

/// The binary cross-entropy's options as plain data (the builder
/// [`crate::BinaryCrossEntropyLoss`] holds them; both backends read them).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct BinaryOptions {
    pub input: InputKind,
    pub reduction: Reduction,
    pub weight: Option<Vec<f32>>,
    pub pos_weight: Option<Vec<f32>>,
    pub label_smoothing: f32,
}

/// `(divisor of the reduced loss, factor of the gradient)` for a reduction whose
/// mean divides by `count`; no divisor for `none`.
pub(crate) fn reduction_scales(reduction: Reduction, count: f64) -> (Option<f64>, f32) {
    match reduction {
        Reduction::Mean => (Some(count), (1.0 / count) as f32),
        Reduction::Sum => (Some(1.0), 1.0),
        Reduction::None => (None, 1.0),
    }
}

/// The clip bound ε of [`crate::ProbabilityCrossEntropyLoss`] (Keras' `backend.epsilon()`),
/// as f32: rows are clipped to `[ε, 1 − ε]` (upper bound `1 − ε` rounded to f32).
pub const KERAS_EPSILON: f32 = 1e-7;
