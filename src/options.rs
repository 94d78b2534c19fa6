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
    ///
    /// ```
    /// use xent::Reduction;
    ///
    /// assert_eq!(Reduction::None.as_str(), "none");
    /// assert_eq!(Reduction::Mean.as_str().parse(), Ok(Reduction::Mean));
    /// ```
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
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, CrossEntropyOptions, DEFAULT_IGNORE_INDEX, Shape};
///
/// assert_eq!(CrossEntropyOptions::default().ignore_index, DEFAULT_IGNORE_INDEX);
/// // A row whose target is -100 is left out of the mean.
/// let loss = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 0.0, 9.0, 0.0], &[1i64, -100], Shape::new(2, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
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
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, CrossEntropyOptions, Reduction, Shape};
///
/// let options = CrossEntropyOptions { reduction: Reduction::Sum, weight: Some(vec![2.0, 1.0]), ..Default::default() };
/// // Two uniform rows, targets 0 and 1: 2·ln 2 + 1·ln 2, summed.
/// let loss = CrossEntropyLoss::with_options(options).loss(&Cpu, &[0.0f32; 4], &[0i64, 1], Shape::new(2, 2))?;
/// assert!((loss.value().unwrap() - 3.0 * 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
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
    ///
    /// ```
    /// use xent::{CrossEntropyOptions, Error, Shape};
    ///
    /// assert_eq!(CrossEntropyOptions::default().validate(Shape::new(4, 3)), Ok(()));
    /// let smoothing = CrossEntropyOptions { label_smoothing: 1.5, ..Default::default() };
    /// assert!(matches!(smoothing.validate(Shape::new(4, 3)), Err(Error::InvalidOption(_))));
    /// let weights = CrossEntropyOptions { weight: Some(vec![1.0; 2]), ..Default::default() };
    /// assert!(weights.validate(Shape::new(4, 3)).is_err()); // two weights for three classes
    /// ```
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

    /// Checks that `ignore_index` fits the kind of targets: PyTorch refuses a
    /// non-negative `ignore_index` with probabilities (`ignore_index is not
    /// supported for floating point target`); a negative one (the default −100
    /// included) is unused there.
    pub(crate) fn check_ignore_index(&self, probabilities: bool) -> Result<()> {
        if probabilities && self.ignore_index >= 0 {
            return Err(Error::InvalidOption(format!(
                "ignore_index {} applies to class-index targets only: with probabilities PyTorch refuses a \
                 non-negative ignore_index (a negative one, the default -100 included, is unused)",
                self.ignore_index
            )));
        }
        Ok(())
    }

    /// A digest of the options the sharded statistics depend on (all but the
    /// reduction and the z-loss), which `ShardStats` and `ShardSums` carry so that
    /// they are not combined under other options.
    pub(crate) fn statistics_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.ignore_index.hash(&mut hasher);
        let weight_bits = self
            .weight
            .as_ref()
            .map(|weight| weight.iter().map(|value| value.to_bits()).collect::<Vec<u32>>());
        weight_bits.hash(&mut hasher);
        self.label_smoothing.to_bits().hash(&mut hasher);
        self.softcap.map(f32::to_bits).hash(&mut hasher);
        self.logit_scale.to_bits().hash(&mut hasher);
        hasher.finish()
    }

    /// A digest of every option, which `CombinedStats` carry so that a shard's
    /// gradient is not computed from them under other options.
    pub(crate) fn combination_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.statistics_key().hash(&mut hasher);
        self.reduction.hash(&mut hasher);
        self.z_loss.to_bits().hash(&mut hasher);
        hasher.finish()
    }

    /// The class weight of `class`: 1 without weights, `None` for a class the
    /// weights do not reach.
    ///
    /// ```
    /// use xent::CrossEntropyOptions;
    ///
    /// let weighted = CrossEntropyOptions { weight: Some(vec![0.5, 2.0]), ..Default::default() };
    /// assert_eq!(weighted.class_weight(1), Some(2.0));
    /// assert_eq!(weighted.class_weight(2), None);
    /// assert_eq!(CrossEntropyOptions::default().class_weight(7), Some(1.0));
    /// ```
    pub fn class_weight(&self, class: usize) -> Option<f32> {
        match &self.weight {
            Some(weight) => weight.get(class).copied(),
            None => Some(1.0),
        }
    }

    /// `x'`: the logit after scaling and soft-capping.
    ///
    /// ```
    /// use xent::CrossEntropyOptions;
    ///
    /// let scaled = CrossEntropyOptions { logit_scale: 2.0, ..Default::default() };
    /// assert_eq!(scaled.transform(1.5), 3.0);
    /// let capped = CrossEntropyOptions { softcap: Some(1.0), ..scaled };
    /// assert_eq!(capped.transform(0.5), 1f32.tanh()); // 1·tanh(2·0.5 / 1)
    /// ```
    pub fn transform(&self, logit: f32) -> f32 {
        let scaled = logit * self.logit_scale;
        match self.softcap {
            Some(cap) => cap * (scaled / cap).tanh(),
            None => scaled,
        }
    }

    /// `d x' / d x` at a transformed logit `x'`: `s·(1 − (x'/t)²)` with softcap, `s` without.
    ///
    /// ```
    /// use xent::CrossEntropyOptions;
    ///
    /// let scaled = CrossEntropyOptions { logit_scale: 2.0, ..Default::default() };
    /// assert_eq!(scaled.transform_derivative(123.0), 2.0);
    /// let capped = CrossEntropyOptions { softcap: Some(2.0), ..Default::default() };
    /// assert_eq!(capped.transform_derivative(1.0), 0.75); // 1 − (1/2)²
    /// ```
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
    ///
    /// ```
    /// use xent::{CrossEntropyOptions, Error, HostBatch, HostLogits, Logits, Shape, Targets};
    ///
    /// let batch = HostBatch {
    ///     logits: HostLogits::new(Logits::F32(&[0.0; 4]), None),
    ///     targets: Targets::I64(&[1, 2]),
    ///     shape: Shape::new(2, 2),
    ///     row_stats: false,
    /// };
    /// let out_of_range = Error::TargetOutOfRange { row: 1, value: 2, classes: 2 };
    /// assert_eq!(batch.validate(&CrossEntropyOptions::default()), Err(out_of_range));
    /// ```
    pub fn validate(&self, options: &CrossEntropyOptions) -> Result<()> {
        // Class indices and argmaxes are u32 on both backends.
        if u32::try_from(self.shape.classes).is_err() {
            return Err(Error::TooLarge(format!(
                "{} classes: class indices are 32-bit",
                self.shape.classes
            )));
        }
        self.shape.check_logits(self.logits.logits().len())?;
        options.validate(self.shape)?;
        options.check_ignore_index(self.targets.is_probabilities())?;
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
///
/// ```
/// use xent::{BinaryCrossEntropyLoss, Cpu, InputKind, Shape};
///
/// assert_eq!(InputKind::default(), InputKind::Logits);
/// // The same prediction, 0.5, as a probability and as a logit (sigmoid(0) = 0.5):
/// let probabilities = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
/// let from_probability = probabilities.loss(&Cpu, &[0.5f32], &[1.0], Shape::new(1, 1))?;
/// let from_logit = BinaryCrossEntropyLoss::new().loss(&Cpu, &[0.0f32], &[1.0], Shape::new(1, 1))?;
/// assert!((from_probability.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// assert!((from_logit.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
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
///
/// ```
/// use xent::{Cpu, KERAS_EPSILON, ProbabilityCrossEntropyLoss, Shape};
///
/// // A zero probability of the target class costs −log ε ≈ 16.1.
/// let loss = ProbabilityCrossEntropyLoss::new().loss(&Cpu, &[1.0f32, 0.0], &[1i64], Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() + KERAS_EPSILON.ln()).abs() < 1e-3);
/// assert!((loss.value().unwrap() - 16.118).abs() < 1e-3);
/// # Ok::<(), xent::Error>(())
/// ```
pub const KERAS_EPSILON: f32 = 1e-7;
