//! Divergences and the probability-input cross-entropy: [`KlDivLoss`] (PyTorch's
//! `KLDivLoss`), [`Entropy`] / [`entropy`] (H(P) per row) and
//! [`ProbabilityCrossEntropyLoss`] (Keras' categorical cross-entropy on
//! probabilities), each on either [`Backend`].
//!
//! With the categorical [`CrossEntropyLoss`](crate::CrossEntropyLoss) on soft
//! targets they satisfy `H(P, Q) = H(P) + KL(P ‖ Q)` per row.

use crate::backend::Backend;
use crate::cpu;
use crate::error::Result;
use crate::gpu::family_call::{FamilyCall, FamilyInputs, FamilyTargets};
use crate::gpu::kernels::family::{FLAG_CLASS_TARGETS, FLAG_LOG_TARGET, FLAG_PROBABILITIES, FamilyKernel};
use crate::losses::family::{HostCall, check_matrix_call, check_targets_length, family_doors};
use crate::losses::setters::setters;
use crate::options::Reduction;
use crate::options::{InputKind, reduction_scales};
use crate::types::{Logits, LogitsMut, Loss, RowTargets, Shape, Targets};

/// How [`KlDivLoss`] combines its element-wise terms, as PyTorch's `reduction`.
///
/// ```
/// use xent::KlReduction;
///
/// assert_eq!("batchmean".parse::<KlReduction>(), Ok(KlReduction::BatchMean));
/// assert_eq!(KlReduction::default().as_str(), "mean");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KlReduction {
    /// One term per element (N·C values).
    None,
    /// Sum over all elements.
    Sum,
    /// Mean over all N·C elements (PyTorch's default, which it warns is not the KL divergence).
    #[default]
    Mean,
    /// Sum divided by the batch size N: the mathematical KL divergence per row.
    BatchMean,
}

impl KlReduction {
    /// The name PyTorch uses: `none`, `sum`, `mean` or `batchmean`.
    ///
    /// ```
    /// use xent::KlReduction;
    ///
    /// assert_eq!(KlReduction::BatchMean.as_str(), "batchmean");
    /// assert_eq!(KlReduction::Sum.to_string(), KlReduction::Sum.as_str());
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            KlReduction::None => "none",
            KlReduction::Sum => "sum",
            KlReduction::Mean => "mean",
            KlReduction::BatchMean => "batchmean",
        }
    }

    /// `(divisor of the reduced loss, factor of the gradient)` for `rows × classes`.
    fn scales(self, rows: usize, classes: usize) -> (Option<f64>, f32) {
        match self {
            KlReduction::None => reduction_scales(Reduction::None, 1.0),
            KlReduction::Sum => reduction_scales(Reduction::Sum, 1.0),
            KlReduction::Mean => reduction_scales(Reduction::Mean, rows as f64 * classes as f64),
            KlReduction::BatchMean => reduction_scales(Reduction::Mean, rows as f64),
        }
    }
}

impl std::str::FromStr for KlReduction {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "none" => Ok(KlReduction::None),
            "sum" => Ok(KlReduction::Sum),
            "mean" => Ok(KlReduction::Mean),
            "batchmean" => Ok(KlReduction::BatchMean),
            other => Err(format!(
                "unknown reduction {other:?} (expected none, sum, mean or batchmean)"
            )),
        }
    }
}

impl std::fmt::Display for KlReduction {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// PyTorch's `KLDivLoss` / `F.kl_div(input, target, reduction=, log_target=)` on an
/// (N, C) batch. The input is `log q` (not normalised by the loss: it is used as
/// given); the target is `p`, or `log p` with [`KlDivLoss::log_target`]. Element-wise:
///
/// - target p: `p·(log p − input)`, and 0 where `p == 0` (xlogy: `0·log 0 = 0`);
///   d/d input = `−p`;
/// - log-target t: `exp(t)·(t − input)`; d/d input = `−exp(t)`.
///
/// Reductions ([`KlReduction`]): `none` ([`Loss::PerRow`] holds the N·C element
/// terms, row-major), `sum`, `mean` over all N·C elements (the default, as in
/// PyTorch), `batchmean` (sum / N). The gradient carries the same divisor.
///
/// On the GPU each call runs in one submission on the context's workspace
/// (repeated shapes allocate no buffer); the sum is a deterministic fixed-order
/// reduction.
///
/// ```
/// use xent::{Cpu, KlDivLoss, KlReduction, Shape};
///
/// // KL(p ‖ q) with p = (1, 0), q = (½, ½): ln 2.
/// let (log_q, p) = ([0.5f32.ln(), 0.5f32.ln()], [1.0f32, 0.0]);
/// let mut gradient = [0.0f32; 2];
/// let kl = KlDivLoss::new().reduction(KlReduction::BatchMean);
/// let loss = kl.loss_and_grad(&Cpu, &log_q, &p, Shape::new(1, 2), &mut gradient)?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// assert_eq!(gradient, [-1.0, 0.0]); // −p
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KlDivLoss {
    pub(crate) reduction: KlReduction,
    pub(crate) log_target: bool,
}

impl KlDivLoss {
    /// Mean reduction, target given as probabilities.
    ///
    /// ```
    /// use xent::{KlDivLoss, KlReduction};
    ///
    /// let kl = KlDivLoss::new();
    /// assert_eq!((kl.get_reduction(), kl.is_log_target()), (KlReduction::Mean, false));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets the reduction.
        ///
        /// ```
        /// use xent::{Cpu, KlDivLoss, KlReduction, Shape};
        ///
        /// // p = (½, ½) against q = (1, 1) (not normalised: used as given): ½·ln ½ per element.
        /// let (log_q, p) = ([0.0f32; 2], [0.5f32, 0.5]);
        /// let sum = KlDivLoss::new().reduction(KlReduction::Sum).loss(&Cpu, &log_q, &p, Shape::new(1, 2))?;
        /// let mean = KlDivLoss::new().loss(&Cpu, &log_q, &p, Shape::new(1, 2))?; // over N·C = 2
        /// assert!((sum.value().unwrap() - 0.5f32.ln()).abs() < 1e-6);
        /// assert!((mean.value().unwrap() - 0.5 * 0.5f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        reduction(reduction: KlReduction) => reduction = reduction;

        /// Sets whether the target holds log-probabilities (`log_target=True`).
        ///
        /// ```
        /// use xent::{Cpu, KlDivLoss, KlReduction, Shape};
        ///
        /// // KL(p ‖ q) for p = (¼, ¾), q = (½, ½): ¼·ln ½ + ¾·ln 1.5, whether p is given as is or as log p.
        /// let (log_q, p) = ([0.5f32.ln(); 2], [0.25f32, 0.75]);
        /// let kl = KlDivLoss::new().reduction(KlReduction::BatchMean);
        /// let from_log_p = kl.clone().log_target(true).loss(&Cpu, &log_q, &p.map(f32::ln), Shape::new(1, 2))?;
        /// let expected = 0.25 * 0.5f32.ln() + 0.75 * 1.5f32.ln();
        /// assert!((from_log_p.value().unwrap() - expected).abs() < 1e-6);
        /// assert!((kl.loss(&Cpu, &log_q, &p, Shape::new(1, 2))?.value().unwrap() - expected).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        log_target(log_target: bool) => log_target = log_target;
    }

    /// The configured reduction.
    ///
    /// ```
    /// use xent::{KlDivLoss, KlReduction};
    ///
    /// assert_eq!(KlDivLoss::new().reduction(KlReduction::BatchMean).get_reduction(), KlReduction::BatchMean);
    /// ```
    pub fn get_reduction(&self) -> KlReduction {
        self.reduction
    }

    /// True when the target holds log-probabilities.
    ///
    /// ```
    /// assert!(xent::KlDivLoss::new().log_target(true).is_log_target());
    /// ```
    pub fn is_log_target(&self) -> bool {
        self.log_target
    }

    family_doors! {
        /// The loss of `input` (log q, (N, C) row-major; `f32`, `f16` or `bf16`)
        /// against `target` (same shape).
        ///
        /// ```
        /// use xent::{Cpu, KlDivLoss, KlReduction, Shape};
        ///
        /// // Two rows: p = q gives 0; p = (1, 0) against q = (½, ½) gives ln 2. Batch mean: ln 2 / 2.
        /// let log_q = [0.25f32.ln(), 0.75f32.ln(), 0.5f32.ln(), 0.5f32.ln()];
        /// let p = [0.25f32, 0.75, 1.0, 0.0];
        /// let kl = KlDivLoss::new().reduction(KlReduction::BatchMean);
        /// let loss = kl.loss(&Cpu, &log_q, &p, Shape::new(2, 2))?;
        /// assert!((loss.value().unwrap() - 2f32.ln() / 2.0).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss(input, target: &[f32]);

        /// The loss, and d loss / d input written into `gradient` (the input's type and layout).
        ///
        /// ```
        /// use xent::{Cpu, KlDivLoss, KlReduction, Shape};
        ///
        /// let mut gradient = [0.0f32; 2];
        /// let kl = KlDivLoss::new().reduction(KlReduction::Sum);
        /// kl.loss_and_grad(&Cpu, &[0.0f32, 0.0], &[0.25, 0.75], Shape::new(1, 2), &mut gradient)?;
        /// assert_eq!(gradient, [-0.25, -0.75]); // −p
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss_and_grad;

        /// Records the loss of `inputs` (targets [`FamilyTargets::PerElement`]) into
        /// `encoder`, its results into `outputs` (reduction `none`: N·C values, so
        /// `outputs` needs that capacity); nothing is submitted. Repeated calls on
        /// the same buffers and shape allocate nothing. [`FamilyInputs`] has an example.
        ///
        /// ```no_run
        /// use wgpu::util::DeviceExt;
        /// use xent::{Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, Shape, UpstreamGradient};
        /// use xent::{KlDivLoss, KlReduction};
        ///
        /// let context = Context::new()?;
        /// let storage = |contents: &[u8]| {
        ///     let usage = wgpu::BufferUsages::STORAGE;
        ///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
        /// };
        /// let input = storage(bytemuck::cast_slice(&[0.5f32.ln(), 0.5f32.ln()]));
        /// let targets = storage(bytemuck::cast_slice(&[1.0f32, 0.0]));
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
        /// KlDivLoss::new().reduction(KlReduction::BatchMean).record(&context, &mut encoder, &inputs, &outputs)?;
        /// context.queue().submit([encoder.finish()]);
        /// assert!((outputs.read(&context)?.value().unwrap() - 2f32.ln()).abs() < 1e-6); // KL((1, 0) ‖ (½, ½))
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn record(PerElement, "the KL divergence");
    }

    /// Hands the call that `record` records for `inputs` to `record`.
    fn with_device_call(
        &self,
        inputs: &FamilyInputs<'_>,
        record: impl FnOnce(&FamilyCall<'_>) -> Result<()>,
    ) -> Result<()> {
        record(&self.call(inputs.shape))
    }

    fn compute<B: Backend + ?Sized>(
        &self,
        backend: &B,
        input: Logits<'_>,
        target: &[f32],
        shape: Shape,
        gradient: Option<LogitsMut<'_>>,
    ) -> Result<Loss> {
        check_matrix_call(input, shape, gradient.as_ref())?;
        check_targets_length(target, input.len())?;
        let call = self.call(shape);
        let host = HostCall {
            input,
            targets: Some(RowTargets::Soft(target)),
            shape,
            gradient,
        };
        host.run(backend, call, |input, gradient| {
            cpu::divergence::kl_div(
                input,
                target,
                self.log_target,
                call.divisor,
                call.gradient_scale,
                gradient,
            )
        })
    }

    /// What the GPU computes for `shape`.
    fn call(&self, shape: Shape) -> FamilyCall<'static> {
        let (divisor, gradient_scale) = self.reduction.scales(shape.rows, shape.classes);
        FamilyCall {
            kernel: FamilyKernel::KlDivergence,
            flags: if self.log_target { FLAG_LOG_TARGET } else { 0 },
            label_smoothing: 0.0,
            gradient_scale,
            divisor,
            class_params: None,
        }
    }
}

/// The entropy `H(P)_r = −Σ_c p_c·log p_c` of each row of an (N, C) batch
/// (`0·log 0 = 0`, `torch.special.entr` summed over the row), from probabilities
/// (the default: P is the input, used as given) or from logits (P = softmax(input)).
///
/// Reductions: `mean` over rows (the default), `sum`, `none` (one value per row).
/// The gradient w.r.t. the input: from probabilities `−(log p_c + 1)` (+inf where
/// `p_c == 0`, as PyTorch); from logits `−p_c·(log p_c + H)`.
///
/// On the GPU each call runs in one submission on the context's workspace.
///
/// ```
/// use xent::{Cpu, Entropy, InputKind, Shape};
///
/// let uniform = Entropy::new().loss(&Cpu, &[0.25; 4], Shape::new(1, 4))?;
/// assert!((uniform.value().unwrap() - 4f32.ln()).abs() < 1e-6);
/// let mut gradient = [0.0f32; 4];
/// let from_logits = Entropy::new().input(InputKind::Logits);
/// let same = from_logits.loss_and_grad(&Cpu, &[0.0; 4], Shape::new(1, 4), &mut gradient)?;
/// assert!((same.value().unwrap() - 4f32.ln()).abs() < 1e-6);
/// assert!(gradient.iter().all(|g| g.abs() < 1e-6)); // the uniform row is H's maximum
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entropy {
    pub(crate) input: InputKind,
    pub(crate) reduction: Reduction,
}

impl Default for Entropy {
    fn default() -> Self {
        Self {
            input: InputKind::Probabilities,
            reduction: Reduction::Mean,
        }
    }
}

impl Entropy {
    /// From probabilities, mean over rows.
    ///
    /// ```
    /// use xent::{Entropy, InputKind, Reduction};
    ///
    /// let entropy = Entropy::new();
    /// assert_eq!((entropy.input_kind(), entropy.get_reduction()), (InputKind::Probabilities, Reduction::Mean));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets what the input is: probabilities or logits (P = softmax).
        ///
        /// ```
        /// use xent::{Cpu, Entropy, InputKind, Shape};
        ///
        /// // Logits (0, 0) are P = (½, ½): H = ln 2.
        /// let from_logits = Entropy::new().input(InputKind::Logits);
        /// let h = from_logits.loss(&Cpu, &[0.0f32, 0.0], Shape::new(1, 2))?;
        /// assert!((h.value().unwrap() - 2f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        input(kind: InputKind) => input = kind;

        /// Sets the reduction over rows.
        ///
        /// ```
        /// use xent::{Cpu, Entropy, Reduction, Shape};
        ///
        /// // Rows (½, ½) and (1, 0): ln 2 + 0.
        /// let sum = Entropy::new().reduction(Reduction::Sum).loss(&Cpu, &[0.5f32, 0.5, 1.0, 0.0], Shape::new(2, 2))?;
        /// assert!((sum.value().unwrap() - 2f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        reduction(reduction: Reduction) => reduction = reduction;
    }

    /// What the input is.
    ///
    /// ```
    /// use xent::{Entropy, InputKind};
    ///
    /// assert_eq!(Entropy::new().input(InputKind::Logits).input_kind(), InputKind::Logits);
    /// ```
    pub fn input_kind(&self) -> InputKind {
        self.input
    }

    /// The configured reduction.
    ///
    /// ```
    /// use xent::{Entropy, Reduction};
    ///
    /// assert_eq!(Entropy::new().reduction(Reduction::None).get_reduction(), Reduction::None);
    /// ```
    pub fn get_reduction(&self) -> Reduction {
        self.reduction
    }

    family_doors! {
        /// The entropy of the rows of `input` ((N, C) row-major; `f32`, `f16` or `bf16`).
        ///
        /// ```
        /// use xent::{Cpu, Entropy, Shape};
        ///
        /// // Mean of H(½, ½) = ln 2 and H(1, 0) = 0.
        /// let h = Entropy::new().loss(&Cpu, &[0.5f32, 0.5, 1.0, 0.0], Shape::new(2, 2))?;
        /// assert!((h.value().unwrap() - 2f32.ln() / 2.0).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss(input);

        /// The entropy, and its gradient w.r.t. the input written into `gradient`
        /// (the input's type and layout).
        ///
        /// ```
        /// use xent::{Cpu, Entropy, Shape};
        ///
        /// // From probabilities: −(log p + 1); at p = ½ that is ln 2 − 1.
        /// let mut gradient = [0.0f32; 2];
        /// Entropy::new().loss_and_grad(&Cpu, &[0.5f32, 0.5], Shape::new(1, 2), &mut gradient)?;
        /// assert!(gradient.iter().all(|g| (g - (2f32.ln() - 1.0)).abs() < 1e-6));
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss_and_grad;

        /// Records the entropy of `inputs` (targets [`FamilyTargets::None`]) into
        /// `encoder`, its results into `outputs`; nothing is submitted. Repeated
        /// calls on the same buffers and shape allocate nothing. [`FamilyInputs`]
        /// has an example of a whole call.
        ///
        /// ```no_run
        /// use wgpu::util::DeviceExt;
        /// use xent::{Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, Shape, UpstreamGradient};
        /// use xent::{Entropy};
        ///
        /// let context = Context::new()?;
        /// let storage = |contents: &[u8]| {
        ///     let usage = wgpu::BufferUsages::STORAGE;
        ///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
        /// };
        /// let input = storage(bytemuck::cast_slice(&[0.5f32, 0.5]));
        /// let inputs = FamilyInputs {
        ///     input: input.slice(..),
        ///     input_type: LogitType::F32,
        ///     targets: FamilyTargets::None,
        ///     shape: Shape::new(1, 2),
        ///     gradient: None,
        ///     upstream: UpstreamGradient::ONE,
        /// };
        /// let outputs = DeviceOutputs::new(&context, 1)?;
        /// let mut encoder = context.device().create_command_encoder(&Default::default());
        /// Entropy::new().record(&context, &mut encoder, &inputs, &outputs)?;
        /// context.queue().submit([encoder.finish()]);
        /// assert!((outputs.read(&context)?.value().unwrap() - 2f32.ln()).abs() < 1e-6); // H(½, ½)
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn record(None, "the entropy");
    }

    /// Hands the call that `record` records for `inputs` to `record`.
    fn with_device_call(
        &self,
        inputs: &FamilyInputs<'_>,
        record: impl FnOnce(&FamilyCall<'_>) -> Result<()>,
    ) -> Result<()> {
        record(&self.call(inputs.shape))
    }

    fn compute<B: Backend + ?Sized>(
        &self,
        backend: &B,
        input: Logits<'_>,
        shape: Shape,
        gradient: Option<LogitsMut<'_>>,
    ) -> Result<Loss> {
        check_matrix_call(input, shape, gradient.as_ref())?;
        let call = self.call(shape);
        let host = HostCall {
            input,
            targets: None,
            shape,
            gradient,
        };
        host.run(backend, call, |input, gradient| {
            cpu::divergence::entropy(
                input,
                shape.classes,
                self.input,
                call.divisor,
                call.gradient_scale,
                gradient,
            )
        })
    }

    /// What the GPU computes for `shape`.
    fn call(&self, shape: Shape) -> FamilyCall<'static> {
        let (divisor, gradient_scale) = reduction_scales(self.reduction, shape.rows as f64);
        FamilyCall {
            kernel: FamilyKernel::Entropy,
            flags: if self.input == InputKind::Probabilities {
                FLAG_PROBABILITIES
            } else {
                0
            },
            label_smoothing: 0.0,
            gradient_scale,
            divisor,
            class_params: None,
        }
    }
}

/// `H(P)` of each row of `input` on `backend`, reduced by `reduction`: shorthand for
/// `Entropy::new().input(kind).reduction(reduction).loss(backend, input, shape)`.
///
/// ```
/// use xent::{Cpu, InputKind, Reduction, Shape, entropy};
///
/// let probabilities = [0.5, 0.5, 1.0, 0.0];
/// let rows = entropy(&Cpu, &probabilities, Shape::new(2, 2), InputKind::Probabilities, Reduction::None)?;
/// let rows = rows.per_row().unwrap();
/// assert!((rows[0] - 2f32.ln()).abs() < 1e-6 && rows[1] == 0.0);
/// # Ok::<(), xent::Error>(())
/// ```
pub fn entropy<'a, B: Backend + ?Sized>(
    backend: &B,
    input: impl Into<Logits<'a>>,
    shape: Shape,
    kind: InputKind,
    reduction: Reduction,
) -> Result<Loss> {
    Entropy::new()
        .input(kind)
        .reduction(reduction)
        .loss(backend, input, shape)
}

/// Categorical cross-entropy on **probabilities**, as Keras'
/// `categorical_crossentropy(from_logits=False)` / `sparse_categorical_crossentropy`
/// (PyTorch has no such loss: its `cross_entropy` takes logits).
///
/// Keras' choice, followed here: each row of the input is renormalised,
/// `q = p / Σ_c p_c`, then clipped to `[ε, 1 − ε]` with ε = [`KERAS_EPSILON`](crate::KERAS_EPSILON) (so
/// a zero probability costs `−log 1e-7 ≈ 16.1`, never infinity), and
///
/// - soft targets ([`Targets::Probabilities`], one per input value): `loss = −Σ_c t_c·log q_c`;
/// - class indices ([`Targets::I64`], `I32`, `U32`): `loss = −log q_y`.
///
/// The gradient w.r.t. the input probabilities goes through the renormalisation and
/// is zero through clipped entries (TensorFlow's `clip_by_value` passes it where
/// `ε ≤ u ≤ 1 − ε`): with `S = Σ_c p_c`, `u_c = p_c / S`, `m_c = [ε ≤ u_c ≤ 1 − ε]`
/// and `T = Σ_c m_c·t_c`, `d loss / d p_j = T/S − m_j·t_j / p_j`.
///
/// Reductions: `mean` over rows (the default), `sum`, `none` (one value per row).
/// A row summing to 0, or holding a NaN or an infinite probability, has a NaN
/// loss and a NaN gradient row on both backends (Keras: the clip keeps NaN and
/// `0·log NaN` is NaN), so the mean and the sum are NaN too. Class indices outside `[0, C)` are
/// [`Error::TargetOutOfRange`](crate::Error::TargetOutOfRange); there is no `ignore_index`.
///
/// ```
/// use xent::{Cpu, ProbabilityCrossEntropyLoss, Shape, Targets};
///
/// let loss = ProbabilityCrossEntropyLoss::new();
/// let (probabilities, shape) = ([0.25f32, 0.75], Shape::new(1, 2));
/// let by_class = loss.loss(&Cpu, &probabilities, &[1i64], shape)?;
/// assert!((by_class.value().unwrap() + 0.75f32.ln()).abs() < 1e-6);
/// let mut gradient = [0.0f32; 2];
/// let one_hot = Targets::Probabilities(&[0.0, 1.0]);
/// let soft = loss.loss_and_grad(&Cpu, &probabilities, one_hot, shape, &mut gradient)?;
/// assert!((soft.value().unwrap() - by_class.value().unwrap()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbabilityCrossEntropyLoss {
    pub(crate) reduction: Reduction,
}

impl ProbabilityCrossEntropyLoss {
    /// Mean over rows.
    ///
    /// ```
    /// use xent::{ProbabilityCrossEntropyLoss, Reduction};
    ///
    /// assert_eq!(ProbabilityCrossEntropyLoss::new().get_reduction(), Reduction::Mean);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets the reduction over rows.
        ///
        /// ```
        /// use xent::{Cpu, ProbabilityCrossEntropyLoss, Reduction, Shape};
        ///
        /// // Rows are renormalised: (1, 3) is q = (¼, ¾).
        /// let none = ProbabilityCrossEntropyLoss::new().reduction(Reduction::None);
        /// let rows = none.loss(&Cpu, &[0.5f32, 0.5, 1.0, 3.0], &[0i64, 1], Shape::new(2, 2))?;
        /// let rows = rows.per_row().unwrap();
        /// assert!((rows[0] - 2f32.ln()).abs() < 1e-6 && (rows[1] + 0.75f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        reduction(reduction: Reduction) => reduction = reduction;
    }

    /// The configured reduction.
    ///
    /// ```
    /// use xent::{ProbabilityCrossEntropyLoss, Reduction};
    ///
    /// assert_eq!(ProbabilityCrossEntropyLoss::new().reduction(Reduction::Sum).get_reduction(), Reduction::Sum);
    /// ```
    pub fn get_reduction(&self) -> Reduction {
        self.reduction
    }

    family_doors! {
        /// The loss of `probabilities` ((N, C) row-major; `f32`, `f16` or `bf16`) against `targets`.
        ///
        /// ```
        /// use xent::{Cpu, KERAS_EPSILON, ProbabilityCrossEntropyLoss, Shape};
        ///
        /// let loss = ProbabilityCrossEntropyLoss::new();
        /// let confident = loss.loss(&Cpu, &[0.25f32, 0.75], &[1u32], Shape::new(1, 2))?;
        /// assert!((confident.value().unwrap() + 0.75f32.ln()).abs() < 1e-6); // −log q_y
        /// // A zero probability is clipped to ε: a finite loss, not infinity.
        /// let wrong = loss.loss(&Cpu, &[1.0f32, 0.0], &[1u32], Shape::new(1, 2))?;
        /// assert!((wrong.value().unwrap() + KERAS_EPSILON.ln()).abs() < 1e-3);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss<'t>(probabilities, targets: impl Into<Targets<'t>>);

        /// The loss, and d loss / d probabilities written into `gradient` (the input's type and layout).
        ///
        /// ```
        /// use xent::{Cpu, ProbabilityCrossEntropyLoss, Reduction, Shape};
        ///
        /// // With S = 1 and no clipping: d/dp_j = T/S − t_j/p_j = 1 − [j = 1]/0.75.
        /// let mut gradient = [0.0f32; 2];
        /// let loss = ProbabilityCrossEntropyLoss::new().reduction(Reduction::Sum);
        /// loss.loss_and_grad(&Cpu, &[0.25f32, 0.75], &[1i64], Shape::new(1, 2), &mut gradient)?;
        /// assert!((gradient[0] - 1.0).abs() < 1e-6 && (gradient[1] - (1.0 - 1.0 / 0.75)).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn loss_and_grad;

        /// Records the loss of `inputs` (soft targets [`FamilyTargets::PerElement`]
        /// or `u32` class indices [`FamilyTargets::Classes`]) into `encoder`, its
        /// results into `outputs`; nothing is submitted. Repeated calls on the same
        /// buffers and shape allocate nothing. A class index outside `[0, C)`, which
        /// a host call rejects, cannot be checked on the device: its row's loss and
        /// gradient are NaN. [`FamilyInputs`] has an example of a whole call.
        ///
        /// ```no_run
        /// use wgpu::util::DeviceExt;
        /// use xent::{Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, Shape, UpstreamGradient};
        /// use xent::{ProbabilityCrossEntropyLoss};
        ///
        /// let context = Context::new()?;
        /// let storage = |contents: &[u8]| {
        ///     let usage = wgpu::BufferUsages::STORAGE;
        ///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
        /// };
        /// let input = storage(bytemuck::cast_slice(&[0.25f32, 0.75]));
        /// let classes = storage(bytemuck::cast_slice(&[1u32]));
        /// let inputs = FamilyInputs {
        ///     input: input.slice(..),
        ///     input_type: LogitType::F32,
        ///     targets: FamilyTargets::Classes(classes.slice(..)),
        ///     shape: Shape::new(1, 2),
        ///     gradient: None,
        ///     upstream: UpstreamGradient::ONE,
        /// };
        /// let outputs = DeviceOutputs::new(&context, 1)?;
        /// let mut encoder = context.device().create_command_encoder(&Default::default());
        /// ProbabilityCrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
        /// context.queue().submit([encoder.finish()]);
        /// assert!((outputs.read(&context)?.value().unwrap() + 0.75f32.ln()).abs() < 1e-6); // −log q_1
        /// # Ok::<(), xent::Error>(())
        /// ```
        fn record(PerElementOrClasses, "the probability cross-entropy");
    }

    /// Hands the call that `record` records for `inputs` to `record`.
    fn with_device_call(
        &self,
        inputs: &FamilyInputs<'_>,
        record: impl FnOnce(&FamilyCall<'_>) -> Result<()>,
    ) -> Result<()> {
        let class_targets = matches!(inputs.targets, FamilyTargets::Classes(_));
        record(&self.call(inputs.shape, class_targets))
    }

    fn compute<'t, B: Backend + ?Sized>(
        &self,
        backend: &B,
        probabilities: Logits<'_>,
        targets: impl Into<Targets<'t>>,
        shape: Shape,
        gradient: Option<LogitsMut<'_>>,
    ) -> Result<Loss> {
        check_matrix_call(probabilities, shape, gradient.as_ref())?;
        let mut classes = Vec::new();
        let targets = RowTargets::checked(targets.into(), shape, &mut classes)?;
        let call = self.call(shape, matches!(targets, RowTargets::Classes(_)));
        let host = HostCall {
            input: probabilities,
            targets: Some(targets),
            shape,
            gradient,
        };
        host.run(backend, call, |input, gradient| {
            cpu::divergence::probability_cross_entropy(
                input,
                targets,
                shape.classes,
                call.divisor,
                call.gradient_scale,
                gradient,
            )
        })
    }

    /// What the GPU computes for `shape`, on class-index targets when `class_targets`.
    fn call(&self, shape: Shape, class_targets: bool) -> FamilyCall<'static> {
        let (divisor, gradient_scale) = reduction_scales(self.reduction, shape.rows as f64);
        FamilyCall {
            kernel: FamilyKernel::ProbabilityCrossEntropy,
            flags: if class_targets { FLAG_CLASS_TARGETS } else { 0 },
            label_smoothing: 0.0,
            gradient_scale,
            divisor,
            class_params: None,
        }
    }
}
