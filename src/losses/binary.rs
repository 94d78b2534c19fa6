//! Binary cross-entropy: [`BinaryCrossEntropyLoss`], PyTorch's `BCEWithLogitsLoss`
//! (inputs are logits) and `BCELoss` (inputs are probabilities), one independent
//! binary problem per element of an (N, C) batch, on either [`Backend`].

use crate::backend::Backend;
use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernels::binary::BinaryKernels;
use crate::gpu::kernels::family::{FLAG_PROBABILITIES, FamilyJob, TargetUpload, run_family};
use crate::losses::family::{check_matrix_call, check_targets_length};
use crate::options::{BinaryOptions, InputKind, Reduction, reduction_scales};
use crate::types::Loss;
use crate::types::Shape;

/// Binary cross-entropy over an (N, C) batch: element (r, c) is an independent
/// binary problem with target `y` in [0, 1] (soft targets allowed), as PyTorch's
/// `BCEWithLogitsLoss` (inputs are logits, the default) or `BCELoss`
/// ([`InputKind::Probabilities`]).
///
/// With label smoothing ε (Keras-style, `y' = y·(1−ε) + ε/2`), class weight `w_c`
/// and positive-class weight `π_c` (both (C,) vectors broadcast over rows, 1 when absent):
///
/// - logits x: `loss = w·[(1−y')·x + (1 + (π−1)·y')·(log1p(exp(−|x|)) + max(−x, 0))]`,
///   evaluated in a form without cancellation (a loss of 1e-30 keeps its digits);
///   `dloss/dx = w·[(1 + (π−1)·y')·σ(x) − π·y']`;
/// - probabilities p: `loss = −w·[y'·max(log p, −100) + (1−y')·max(log(1−p), −100)]`
///   (PyTorch's clamp), `dloss/dp = w·(p − y') / max(p·(1−p), 1e−12)` (PyTorch's
///   backward). `pos_weight` does not apply (it is an error, as `BCELoss` has none),
///   and every p must lie in [0, 1] (PyTorch raises otherwise).
///
/// Reductions: `mean` over all N·C elements (its gradient carries 1/(N·C)), `sum`,
/// or `none`: [`Loss::PerRow`] then holds the N·C per-element losses, row-major.
/// The gradient is w.r.t. the input (logits or probabilities), laid out like it.
/// NaN inputs give NaN losses and gradients.
///
/// On the GPU each call runs in one submission on the context's workspace
/// (repeated shapes allocate no buffer); the sum is a deterministic fixed-order
/// reduction.
///
/// ```
/// use xent::{BinaryCrossEntropyLoss, Cpu, InputKind, Shape};
///
/// // Logit 0 is probability ½: the loss is ln 2 against either target.
/// let on_logits = BinaryCrossEntropyLoss::new().pos_weight(vec![1.0]).label_smoothing(0.0);
/// let loss = on_logits.loss(&Cpu, &[0.0], &[1.0], Shape::new(1, 1))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// let on_probabilities = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
/// let loss = on_probabilities.loss(&Cpu, &[0.5], &[0.0], Shape::new(1, 1))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BinaryCrossEntropyLoss {
    options: BinaryOptions,
}

impl BinaryCrossEntropyLoss {
    /// Inputs are logits (`BCEWithLogitsLoss`), mean reduction, no other options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what the inputs are: logits (`BCEWithLogitsLoss`) or probabilities (`BCELoss`).
    pub fn input(mut self, kind: InputKind) -> Self {
        self.options.input = kind;
        self
    }

    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.options.reduction = reduction;
        self
    }

    /// Sets one non-negative weight per class column, broadcast over rows.
    pub fn weight(mut self, weight: Vec<f32>) -> Self {
        self.options.weight = Some(weight);
        self
    }

    /// Sets one positive-class weight per class column, broadcast over rows (logits only).
    pub fn pos_weight(mut self, pos_weight: Vec<f32>) -> Self {
        self.options.pos_weight = Some(pos_weight);
        self
    }

    /// Sets Keras-style label smoothing ε in [0, 1]: `y' = y·(1−ε) + ε/2`.
    pub fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.options.label_smoothing = epsilon;
        self
    }

    /// What the inputs are.
    pub fn input_kind(&self) -> InputKind {
        self.options.input
    }

    /// The configured reduction.
    pub fn get_reduction(&self) -> Reduction {
        self.options.reduction
    }

    /// Checks the options' domains against `shape`.
    pub fn validate(&self, shape: Shape) -> Result<()> {
        check_unit_interval("label_smoothing", self.options.label_smoothing)?;
        if let Some(weight) = &self.options.weight {
            check_class_vector("weight", weight, shape.classes, true)?;
        }
        if let Some(pos_weight) = &self.options.pos_weight {
            if self.options.input == InputKind::Probabilities {
                return Err(Error::InvalidOption(
                    "pos_weight applies to logits only (BCEWithLogitsLoss); BCELoss on probabilities has none".into(),
                ));
            }
            check_class_vector("pos_weight", pos_weight, shape.classes, false)?;
        }
        Ok(())
    }

    /// The loss of `input` (logits or probabilities, (N, C) row-major) against
    /// `targets` (same shape).
    pub fn loss<B: Backend + ?Sized>(&self, backend: &B, input: &[f32], targets: &[f32], shape: Shape) -> Result<Loss> {
        self.compute(backend, input, targets, shape, None)
    }

    /// The loss, and d loss / d input written into `gradient` (the input's layout).
    ///
    /// ```
    /// use xent::{BinaryCrossEntropyLoss, Cpu, Reduction, Shape};
    ///
    /// let mut gradient = [0.0f32; 2];
    /// let loss = BinaryCrossEntropyLoss::new().reduction(Reduction::Sum);
    /// loss.loss_and_grad(&Cpu, &[0.0, 0.0], &[1.0, 0.0], Shape::new(1, 2), &mut gradient)?;
    /// assert_eq!(gradient, [-0.5, 0.5]); // σ(x) − y
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn loss_and_grad<B: Backend + ?Sized>(
        &self,
        backend: &B,
        input: &[f32],
        targets: &[f32],
        shape: Shape,
        gradient: &mut [f32],
    ) -> Result<Loss> {
        self.compute(backend, input, targets, shape, Some(gradient))
    }

    fn compute<B: Backend + ?Sized>(
        &self,
        backend: &B,
        input: &[f32],
        targets: &[f32],
        shape: Shape,
        gradient: Option<&mut [f32]>,
    ) -> Result<Loss> {
        self.check_call(input, targets, shape, gradient.as_deref())?;
        match backend.gpu() {
            Some(context) => self.compute_gpu(context, input, targets, shape, gradient),
            None => Ok(cpu::binary::binary_cross_entropy(
                &self.options,
                input,
                targets,
                shape.classes,
                gradient,
            )),
        }
    }

    /// Every check of a call: shape, options, lengths, probability range.
    fn check_call(&self, input: &[f32], targets: &[f32], shape: Shape, gradient: Option<&[f32]>) -> Result<()> {
        check_matrix_call(input, shape, gradient)?;
        self.validate(shape)?;
        check_targets_length(targets, input.len())?;
        if self.options.input == InputKind::Probabilities {
            check_probabilities(input)?;
        }
        Ok(())
    }

    fn compute_gpu(
        &self,
        context: &Context,
        input: &[f32],
        targets: &[f32],
        shape: Shape,
        gradient: Option<&mut [f32]>,
    ) -> Result<Loss> {
        let classes = shape.classes;
        let mut class_params = self.options.weight.clone().unwrap_or_else(|| vec![1.0; classes]);
        class_params.extend(self.options.pos_weight.clone().unwrap_or_else(|| vec![1.0; classes]));
        let elements = input.len() as f64;
        let (divisor, gradient_scale) = reduction_scales(self.options.reduction, elements);
        let flags = if self.options.input == InputKind::Probabilities {
            FLAG_PROBABILITIES
        } else {
            0
        };
        let job = FamilyJob {
            rows: shape.rows,
            classes,
            inputs: input,
            targets: TargetUpload::PerElement(targets),
            class_params: Some(&class_params),
            gradient,
            flags,
            label_smoothing: self.options.label_smoothing,
            gradient_scale,
            divisor,
        };
        let kernels = context.checked(|| {
            Ok(context
                .kernels()
                .binary
                .get_or_init(|| BinaryKernels::new(context.device())))
        })?;
        context.with_family_buffers(|gpu, kept| run_family(gpu, kept, kernels.pipelines(), job))
    }
}

fn check_unit_interval(name: &str, value: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::InvalidOption(format!("{name} {value} is outside [0, 1]")));
    }
    Ok(())
}

/// A (C,) vector: one finite entry per class, non-negative when `non_negative`.
fn check_class_vector(name: &str, values: &[f32], classes: usize, non_negative: bool) -> Result<()> {
    if values.len() != classes {
        return Err(Error::InvalidOption(format!(
            "{name} has {} entries, expected one per class ({classes})",
            values.len()
        )));
    }
    let bad = |value: f32| !value.is_finite() || (non_negative && value < 0.0);
    if let Some(class) = values.iter().position(|&value| bad(value)) {
        let requirement = if non_negative {
            "finite and non-negative"
        } else {
            "finite"
        };
        return Err(Error::InvalidOption(format!(
            "{name}[{class}] = {} must be {requirement}",
            values[class]
        )));
    }
    Ok(())
}

/// `BCELoss` inputs must be probabilities (PyTorch raises otherwise; NaN included).
fn check_probabilities(input: &[f32]) -> Result<()> {
    match input.iter().position(|value| !(0.0..=1.0).contains(value)) {
        Some(index) => Err(Error::InvalidOption(format!(
            "input[{index}] = {} is not a probability in [0, 1] (BCELoss on probabilities)",
            input[index]
        ))),
        None => Ok(()),
    }
}
