//! Binary cross-entropy: [`BinaryCrossEntropyLoss`], PyTorch's `BCEWithLogitsLoss`
//! (inputs are logits) and `BCELoss` (inputs are probabilities), one independent
//! binary problem per element of an (N, C) batch, on either [`Backend`].

use crate::backend::Backend;
use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::family_call::{FamilyCall, FamilyInputs};
use crate::gpu::kernels::family::{FLAG_PROBABILITIES, FamilyKernel};
use crate::losses::family::{HostCall, check_matrix_call, check_targets_length, family_doors};
use crate::losses::setters::setters;
use crate::options::{BinaryOptions, InputKind, Reduction, reduction_scales};
use crate::types::{Logits, LogitsMut, Loss, RowTargets, Shape};

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
/// Inputs may be `f32`, `f16` or `bf16` (arithmetic is f32 on the GPU, f64 on the
/// CPU; the gradient is written in the input's type). On the GPU each host call
/// runs in one submission on the context's workspace (repeated shapes allocate
/// no buffer), through the same recording as the device-resident
/// [`BinaryCrossEntropyLoss::record`]; the sum is a deterministic fixed-order
/// reduction.
///
/// ```
/// use xent::{BinaryCrossEntropyLoss, Cpu, InputKind, Shape};
///
/// // Logit 0 is probability ½: the loss is ln 2 against either target.
/// let on_logits = BinaryCrossEntropyLoss::new().pos_weight(vec![1.0]).label_smoothing(0.0);
/// let loss = on_logits.loss(&Cpu, &[0.0f32], &[1.0], Shape::new(1, 1))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// let on_probabilities = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
/// let loss = on_probabilities.loss(&Cpu, &[0.5f32], &[0.0], Shape::new(1, 1))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BinaryCrossEntropyLoss {
    options: BinaryOptions,
}

impl BinaryCrossEntropyLoss {
    /// Inputs are logits (`BCEWithLogitsLoss`), mean reduction, no other options.
    ///
    /// ```
    /// use xent::{BinaryCrossEntropyLoss, InputKind, Reduction};
    ///
    /// let loss = BinaryCrossEntropyLoss::new();
    /// assert_eq!((loss.input_kind(), loss.get_reduction()), (InputKind::Logits, Reduction::Mean));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets what the inputs are: logits (`BCEWithLogitsLoss`) or probabilities (`BCELoss`).
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, InputKind, Shape};
        ///
        /// // Probability 0.25 of class 1 against target 0: −log(1 − 0.25).
        /// let loss = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
        /// let value = loss.loss(&Cpu, &[0.25f32], &[0.0], Shape::new(1, 1))?;
        /// assert!((value.value().unwrap() + 0.75f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        input(kind: InputKind) => options.input = kind;

        /// Sets the reduction.
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Reduction, Shape};
        ///
        /// // One loss per element (N·C = 2), row-major.
        /// let none = BinaryCrossEntropyLoss::new().reduction(Reduction::None);
        /// let losses = none.loss(&Cpu, &[0.0f32, 2.0], &[1.0, 1.0], Shape::new(1, 2))?;
        /// let losses = losses.per_row().unwrap();
        /// assert!((losses[0] - 2f32.ln()).abs() < 1e-6 && (losses[1] - (-2f32).exp().ln_1p()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        reduction(reduction: Reduction) => options.reduction = reduction;

        /// Sets one non-negative weight per class column, broadcast over rows.
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Reduction, Shape};
        ///
        /// // Column 1 counts three times: ln 2 + 3·ln 2 over two rows of logit 0.
        /// let loss = BinaryCrossEntropyLoss::new().weight(vec![1.0, 3.0]).reduction(Reduction::Sum);
        /// let value = loss.loss(&Cpu, &[0.0f32; 2], &[1.0, 0.0], Shape::new(1, 2))?;
        /// assert!((value.value().unwrap() - 4.0 * 2f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        weight(weight: Vec<f32>) => options.weight = Some(weight);

        /// Sets one positive-class weight per class column, broadcast over rows (logits only).
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Shape};
        ///
        /// // A positive target's term is multiplied by π = 3; a negative one's is not.
        /// let loss = BinaryCrossEntropyLoss::new().pos_weight(vec![3.0]);
        /// let positive = loss.loss(&Cpu, &[0.0f32], &[1.0], Shape::new(1, 1))?;
        /// let negative = loss.loss(&Cpu, &[0.0f32], &[0.0], Shape::new(1, 1))?;
        /// assert!((positive.value().unwrap() - 3.0 * 2f32.ln()).abs() < 1e-6);
        /// assert!((negative.value().unwrap() - 2f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        pos_weight(pos_weight: Vec<f32>) => options.pos_weight = Some(pos_weight);

        /// Sets Keras-style label smoothing ε in [0, 1]: `y' = y·(1−ε) + ε/2`.
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Shape};
        ///
        /// // Target 1 becomes y' = 0.9; at logit 2 the loss is log(1 + e^-2) + (1 − y')·2.
        /// let loss = BinaryCrossEntropyLoss::new().label_smoothing(0.2);
        /// let value = loss.loss(&Cpu, &[2.0f32], &[1.0], Shape::new(1, 1))?;
        /// assert!((value.value().unwrap() - ((-2f32).exp().ln_1p() + 0.2)).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        label_smoothing(epsilon: f32) => options.label_smoothing = epsilon;
    }

    /// What the inputs are.
    ///
    /// ```
    /// use xent::{BinaryCrossEntropyLoss, InputKind};
    ///
    /// let loss = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities);
    /// assert_eq!(loss.input_kind(), InputKind::Probabilities);
    /// ```
    pub fn input_kind(&self) -> InputKind {
        self.options.input
    }

    /// The configured reduction.
    ///
    /// ```
    /// use xent::{BinaryCrossEntropyLoss, Reduction};
    ///
    /// assert_eq!(BinaryCrossEntropyLoss::new().reduction(Reduction::None).get_reduction(), Reduction::None);
    /// ```
    pub fn get_reduction(&self) -> Reduction {
        self.options.reduction
    }

    /// Checks the options' domains against `shape`.
    ///
    /// ```
    /// use xent::{BinaryCrossEntropyLoss, Error, InputKind, Shape};
    ///
    /// let shape = Shape::new(2, 3);
    /// assert_eq!(BinaryCrossEntropyLoss::new().pos_weight(vec![2.0; 3]).validate(shape), Ok(()));
    /// assert!(BinaryCrossEntropyLoss::new().weight(vec![1.0; 2]).validate(shape).is_err()); // 3 columns
    /// let on_probabilities = BinaryCrossEntropyLoss::new().input(InputKind::Probabilities).pos_weight(vec![2.0; 3]);
    /// assert!(matches!(on_probabilities.validate(shape), Err(Error::InvalidOption(_))));
    /// ```
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

    family_doors! {
        /// The loss of `input` (logits or probabilities, (N, C) row-major; `f32`,
        /// `f16` or `bf16`) against `targets` (same shape).
        ///
        /// ```
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Shape};
        ///
        /// // Logits 0 and 2, both of target 1: the mean of ln 2 and log(1 + e^-2).
        /// let loss = BinaryCrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 2.0], &[1.0, 1.0], Shape::new(1, 2))?;
        /// let expected = (2f32.ln() + (-2f32).exp().ln_1p()) / 2.0;
        /// assert!((loss.value().unwrap() - expected).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss(input, targets: &[f32]);

        /// The loss, and d loss / d input written into `gradient` (the input's type and layout).
        ///
        /// ```
        /// use xent::half::bf16;
        /// use xent::{BinaryCrossEntropyLoss, Cpu, Reduction, Shape};
        ///
        /// let mut gradient = [0.0f32; 2];
        /// let loss = BinaryCrossEntropyLoss::new().reduction(Reduction::Sum);
        /// loss.loss_and_grad(&Cpu, &[0.0f32, 0.0], &[1.0, 0.0], Shape::new(1, 2), &mut gradient)?;
        /// assert_eq!(gradient, [-0.5, 0.5]); // σ(x) − y
        /// let mut half_gradient = [bf16::ZERO; 2];
        /// loss.loss_and_grad(&Cpu, &[bf16::ZERO; 2], &[1.0, 0.0], Shape::new(1, 2), &mut half_gradient)?;
        /// assert_eq!(half_gradient, [bf16::from_f32(-0.5), bf16::from_f32(0.5)]);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss_and_grad;

        /// Records the loss of `inputs` (targets [`FamilyTargets::PerElement`](crate::FamilyTargets::PerElement)) into
        /// `encoder`, its results into `outputs`; nothing is submitted. Each step:
        /// record, submit, then [`DeviceOutputs::read`](crate::DeviceOutputs::read). Repeated calls on the same
        /// buffers and shape allocate nothing. [`FamilyInputs`] has an example.
        ///
        /// On probabilities ([`InputKind::Probabilities`]) an input outside [0, 1],
        /// which a host call rejects, cannot be checked on the device: its loss and
        /// gradient are NaN.
        ///
        /// ```no_run
        /// use wgpu::util::DeviceExt;
        /// use xent::{Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, Shape, UpstreamGradient};
        /// use xent::{BinaryCrossEntropyLoss};
        ///
        /// let context = Context::new()?;
        /// let storage = |contents: &[u8]| {
        ///     let usage = wgpu::BufferUsages::STORAGE;
        ///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
        /// };
        /// let input = storage(bytemuck::cast_slice(&[0.0f32, 2.0]));
        /// let targets = storage(bytemuck::cast_slice(&[1.0f32, 1.0]));
        /// let inputs = FamilyInputs {
        ///     input: input.slice(..),
        ///     input_type: LogitType::F32,
        ///     targets: FamilyTargets::PerElement(targets.slice(..)),
        ///     shape: Shape::new(1, 2),
        ///     gradient: None,
        ///     upstream: UpstreamGradient::ONE,
        /// };
        /// let outputs = DeviceOutputs::new(&context, 1)?;
        /// let mut encoder = context.device().create_command_encoder(&Default::default());
        /// BinaryCrossEntropyLoss::new().pos_weight(vec![2.0, 1.0]).record(&context, &mut encoder, &inputs, &outputs)?;
        /// context.queue().submit([encoder.finish()]);
        /// let expected = (2.0 * 2f32.ln() + (-2f32).exp().ln_1p()) / 2.0; // π = 2 on column 0
        /// assert!((outputs.read(&context)?.value().unwrap() - expected).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn record(PerElement, "the binary cross-entropy");
    }

    /// Hands the call that `record` records for `inputs` to `record`.
    fn with_device_call(
        &self,
        inputs: &FamilyInputs<'_>,
        record: impl FnOnce(&FamilyCall<'_>) -> Result<()>,
    ) -> Result<()> {
        self.validate(inputs.shape)?;
        let class_params = self.class_params(inputs.shape.classes);
        record(&self.call(inputs.shape, &class_params))
    }

    fn compute<B: Backend + ?Sized>(
        &self,
        backend: &B,
        input: Logits<'_>,
        targets: &[f32],
        shape: Shape,
        gradient: Option<LogitsMut<'_>>,
    ) -> Result<Loss> {
        check_matrix_call(input, shape, gradient.as_ref())?;
        self.validate(shape)?;
        check_targets_length(targets, input.len())?;
        if self.options.input == InputKind::Probabilities {
            check_probabilities(&input.to_f32())?;
        }
        let class_params = self.class_params(shape.classes);
        let call = HostCall {
            input,
            targets: Some(RowTargets::Soft(targets)),
            shape,
            gradient,
        };
        call.run(backend, self.call(shape, &class_params), |input, gradient| {
            cpu::binary::binary_cross_entropy(&self.options, input, targets, shape.classes, gradient)
        })
    }

    /// The weights then the pos_weights, each 1 where absent.
    fn class_params(&self, classes: usize) -> Vec<f32> {
        let mut class_params = self.options.weight.clone().unwrap_or_else(|| vec![1.0; classes]);
        class_params.extend(self.options.pos_weight.clone().unwrap_or_else(|| vec![1.0; classes]));
        class_params
    }

    /// What the GPU computes for `shape`.
    fn call<'a>(&self, shape: Shape, class_params: &'a [f32]) -> FamilyCall<'a> {
        let elements = shape.rows as f64 * shape.classes as f64;
        let (divisor, gradient_scale) = reduction_scales(self.options.reduction, elements);
        let flags = if self.options.input == InputKind::Probabilities {
            FLAG_PROBABILITIES
        } else {
            0
        };
        FamilyCall {
            kernel: FamilyKernel::BinaryCrossEntropy,
            flags,
            label_smoothing: self.options.label_smoothing,
            gradient_scale,
            divisor,
            class_params: Some(class_params),
        }
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
