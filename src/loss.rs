//! The public loss API: [`CrossEntropyLoss`] with its options, the [`Backend`]s it
//! runs on (the GPU [`Context`] and the [`Cpu`]), and the device-resident call.

use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::buffers::{DeviceOutputs, RecordedCall, Wait};
use crate::gpu::context::Context;
use crate::gpu::kernels::{Bindings, GradientBinding, Job};
use crate::input::{LogitType, Logits, LogitsMut, Shape, TargetType, Targets};
use crate::options::{CrossEntropyOptions, Reduction};

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
    pub fn value(&self) -> Option<f32> {
        match self {
            Loss::Reduced(value) => Some(*value),
            Loss::PerRow(_) => None,
        }
    }

    /// The per-row losses, or `None` for a reduced loss.
    pub fn per_row(&self) -> Option<&[f32]> {
        match self {
            Loss::Reduced(_) => None,
            Loss::PerRow(values) => Some(values),
        }
    }
}

/// Everything one call computes (see [`CrossEntropyLoss::forward`]).
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
    /// class-index target. `None` without row statistics or with soft targets.
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
    pub fn logits(&self) -> Logits<'_> {
        match self {
            HostLogits::LossOnly(logits) | HostLogits::WithGradient(logits, _) => *logits,
            HostLogits::InPlace(logits) => logits.as_logits(),
        }
    }

    /// True when a gradient is written.
    pub fn has_gradient(&self) -> bool {
        !matches!(self, HostLogits::LossOnly(_))
    }
}

/// One call on host memory: logits, targets, their shape, and where the gradient
/// goes (if wanted), for [`CrossEntropyLoss::run`].
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

/// Where a loss is computed: the GPU [`Context`] or the [`Cpu`].
pub trait Backend {
    /// A short description for reports, e.g. `gpu (NVIDIA H100, Vulkan)`.
    fn describe(&self) -> String;

    /// The GPU context, or `None` for the CPU.
    fn gpu(&self) -> Option<&Context>;
}

impl Backend for Context {
    fn describe(&self) -> String {
        let info = self.adapter_info();
        format!("gpu ({}, {:?})", info.name, info.backend)
    }

    fn gpu(&self) -> Option<&Context> {
        Some(self)
    }
}

/// The CPU backend: the same API on the host's cores (f32, vectorised exp,
/// rows split across threads). The baseline of the benchmarks and the fallback
/// when no adapter exists.
///
/// ```
/// use xent::{Backend, Cpu, CrossEntropyLoss, Shape};
///
/// let loss = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 0.0], &[1i64], Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// assert!(Cpu.describe().starts_with("cpu"));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn gpu(&self) -> Option<&Context> {
        None
    }
}

/// Categorical cross-entropy, as PyTorch's `F.cross_entropy(logits, targets,
/// weight=, ignore_index=, reduction=, label_smoothing=)`, plus the large-model
/// options z-loss, logit soft-capping and logit scaling
/// ([`CrossEntropyOptions`] has the formulas). Without options:
/// `loss_r = logsumexp(x_r) - x_r[t_r]`, gradient `softmax(x_r) - onehot(t_r)`
/// (divided by N for `mean`).
///
/// NaN or +inf logits propagate: the row's loss and gradient become NaN, as in
/// PyTorch. With every row ignored, `mean` is NaN (0/0) and the gradient 0.
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Reduction, Shape};
///
/// let loss = CrossEntropyLoss::new().reduction(Reduction::Sum).ignore_index(-1).label_smoothing(0.1);
/// // Row 0: uniform logits, loss ln 2 whatever the smoothing; row 1 is ignored.
/// let value = loss.loss(&Cpu, &[0.0f32, 0.0, 5.0, -5.0], &[1i64, -1], Shape::new(2, 2))?;
/// assert!((value.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    options: CrossEntropyOptions,
}

impl CrossEntropyLoss {
    /// Mean reduction, no other options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A loss with these options.
    pub fn with_options(options: CrossEntropyOptions) -> Self {
        Self { options }
    }

    /// The options.
    pub fn options(&self) -> &CrossEntropyOptions {
        &self.options
    }

    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.options.reduction = reduction;
        self
    }

    /// Sets `ignore_index` (default -100).
    pub fn ignore_index(mut self, ignore_index: i64) -> Self {
        self.options.ignore_index = ignore_index;
        self
    }

    /// Sets one weight per class.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Shape};
    ///
    /// // The mean divides by the targets' weights: (1·ln 2 + 3·ln 2) / (1 + 3).
    /// let loss = CrossEntropyLoss::new().weight(vec![1.0, 3.0]);
    /// let value = loss.loss(&Cpu, &[0.0f32; 4], &[0i64, 1], Shape::new(2, 2))?;
    /// assert!((value.value().unwrap() - 2f32.ln()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn weight(mut self, weight: Vec<f32>) -> Self {
        self.options.weight = Some(weight);
        self
    }

    /// Sets label smoothing ε in [0, 1].
    pub fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.options.label_smoothing = epsilon;
        self
    }

    /// Sets the z-loss scale (`lse_square_scale`).
    pub fn z_loss(mut self, scale: f32) -> Self {
        self.options.z_loss = scale;
        self
    }

    /// Sets the soft-capping threshold (`t·tanh(x/t)`).
    pub fn softcap(mut self, threshold: f32) -> Self {
        self.options.softcap = Some(threshold);
        self
    }

    /// Sets the factor applied to the logits before softcap and softmax.
    pub fn logit_scale(mut self, scale: f32) -> Self {
        self.options.logit_scale = scale;
        self
    }

    /// The configured reduction.
    pub fn get_reduction(&self) -> Reduction {
        self.options.reduction
    }

    /// Every output of one call on `backend`: loss, z-loss, and with `row_stats`
    /// the per-row lse and argmax; the gradient goes into `gradient` when given.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, LogitsMut, Shape};
    ///
    /// let (logits, mut gradient) = ([0.0f32, 2.0, 1.0], [0.0f32; 3]);
    /// let gradient_out = Some(LogitsMut::F32(&mut gradient));
    /// let output = CrossEntropyLoss::new().forward(&Cpu, &logits, &[1i64], Shape::new(1, 3), gradient_out, true)?;
    /// let lse = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
    /// assert!((output.lse.unwrap()[0] - lse).abs() < 1e-6);
    /// assert_eq!(output.argmax, Some(vec![1]));
    /// assert!(gradient[1] < 0.0 && gradient.iter().sum::<f32>().abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn forward<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: Option<LogitsMut<'a>>,
        row_stats: bool,
    ) -> Result<LossOutput> {
        let logits = HostLogits::new(logits.into(), gradient);
        self.run(
            backend,
            HostBatch {
                logits,
                targets: targets.into(),
                shape,
                row_stats,
            },
        )
    }

    /// Runs `batch` on `backend`.
    pub fn run<B: Backend + ?Sized>(&self, backend: &B, batch: HostBatch<'_>) -> Result<LossOutput> {
        match backend.gpu() {
            Some(context) => pollster::block_on(context.compute_host(self, batch, Wait::Inline)),
            None => self.compute_cpu(batch),
        }
    }

    /// The loss, with dL/dlogits written over the logits (no memory for a separate
    /// gradient: on the GPU the kernel overwrites the logits buffer in place).
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Shape};
    ///
    /// let mut logits = vec![0.0f32, 0.0];
    /// CrossEntropyLoss::new().loss_and_grad_in_place(&Cpu, &mut logits, &[1i64], Shape::new(1, 2))?;
    /// assert_eq!(logits, [0.5, -0.5]);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn loss_and_grad_in_place<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: impl Into<LogitsMut<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Loss> {
        let batch = HostBatch {
            logits: HostLogits::InPlace(logits.into()),
            targets: targets.into(),
            shape,
            row_stats: false,
        };
        Ok(self.run(backend, batch)?.loss)
    }

    /// The loss of `logits` against `targets`.
    pub fn loss<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Loss> {
        Ok(self.forward(backend, logits, targets, shape, None, false)?.loss)
    }

    /// The loss, and dL/dlogits written into `gradient` (the logits' layout), in one pass.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Shape};
    ///
    /// let mut gradient = [0.0f32; 4];
    /// let (logits, targets) = ([0.0f32; 4], [1i64, 0]);
    /// let loss = CrossEntropyLoss::new().loss_and_grad(&Cpu, &logits, &targets, Shape::new(2, 2), &mut gradient)?;
    /// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
    /// assert_eq!(gradient, [0.25, -0.25, -0.25, 0.25]); // softmax − onehot, over N = 2
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn loss_and_grad<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: impl Into<LogitsMut<'a>>,
    ) -> Result<Loss> {
        Ok(self
            .forward(backend, logits, targets, shape, Some(gradient.into()), false)?
            .loss)
    }

    /// The unreduced per-row losses, whatever the configured reduction.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Shape};
    ///
    /// let rows = CrossEntropyLoss::new().row_losses(&Cpu, &[0.0f32; 6], &[0u32, 2], Shape::new(2, 3))?;
    /// assert!(rows.iter().all(|&loss| (loss - 3f32.ln()).abs() < 1e-6));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn row_losses<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Vec<f32>> {
        let unreduced = self.clone().reduction(Reduction::None);
        match unreduced.loss(backend, logits, targets, shape)? {
            Loss::PerRow(values) => Ok(values),
            Loss::Reduced(value) => Ok(vec![value]),
        }
    }

    /// [`CrossEntropyLoss::forward`] on the GPU, awaiting the readback. The future
    /// is pending while the GPU works (a helper thread waits for it), so other
    /// tasks of the caller's executor run meanwhile.
    pub async fn forward_async<'a>(
        &self,
        context: &Context,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: Option<LogitsMut<'a>>,
        row_stats: bool,
    ) -> Result<LossOutput> {
        let logits = HostLogits::new(logits.into(), gradient);
        context
            .compute_host(
                self,
                HostBatch {
                    logits,
                    targets: targets.into(),
                    shape,
                    row_stats,
                },
                Wait::Background,
            )
            .await
    }

    /// [`CrossEntropyLoss::loss`] on the GPU, awaiting the readback (without
    /// blocking the caller's executor, as [`CrossEntropyLoss::forward_async`]).
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, Shape};
    ///
    /// async fn step(context: &Context, logits: &[f32], targets: &[i64]) -> xent::Result<f32> {
    ///     let shape = Shape::new(targets.len(), logits.len() / targets.len());
    ///     let loss = CrossEntropyLoss::new().loss_async(context, logits, targets, shape).await?;
    ///     Ok(loss.value().unwrap())
    /// }
    /// ```
    pub async fn loss_async<'a>(
        &self,
        context: &Context,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Loss> {
        Ok(self
            .forward_async(context, logits, targets, shape, None, false)
            .await?
            .loss)
    }

    /// [`CrossEntropyLoss::loss_and_grad`] on the GPU, awaiting the readback
    /// (without blocking the caller's executor, as [`CrossEntropyLoss::forward_async`]).
    pub async fn loss_and_grad_async<'a>(
        &self,
        context: &Context,
        logits: impl Into<Logits<'a>>,
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: impl Into<LogitsMut<'a>>,
    ) -> Result<Loss> {
        Ok(self
            .forward_async(context, logits, targets, shape, Some(gradient.into()), false)
            .await?
            .loss)
    }

    /// Records the loss (and gradient, if `inputs.gradient` is set) of device-resident
    /// buffers into the caller's `encoder`; nothing is submitted. After submitting,
    /// [`DeviceOutputs::read`] returns the loss (or it stays on the GPU in
    /// [`DeviceOutputs::loss_buffer`]). Targets out of range are detected on the GPU
    /// and reported by the read. Class weights are uploaded into `outputs`.
    /// [`DeviceInputs`] has an example; `examples/device_resident.rs` a training step.
    pub fn record(
        &self,
        context: &Context,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &DeviceInputs<'_>,
        outputs: &DeviceOutputs,
    ) -> Result<()> {
        self.record_with_timestamps(context, encoder, inputs, outputs, None)
    }

    /// [`CrossEntropyLoss::record`] with timestamp writes around the compute pass
    /// (needs `Features::TIMESTAMP_QUERY`), for measuring kernel time.
    pub fn record_with_timestamps(
        &self,
        context: &Context,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &DeviceInputs<'_>,
        outputs: &DeviceOutputs,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        inputs.validate(outputs)?;
        let shape = inputs.shape;
        self.options.validate(shape)?;
        context.checked(|| {
            outputs.with_weights(context, self.options.weight.as_deref(), |weights| {
                let bindings = Bindings {
                    logits: inputs.logits,
                    logit_type: inputs.logit_type,
                    targets: inputs.targets,
                    target_type: inputs.target_type,
                    gradient: inputs.gradient.binding(),
                    weights,
                    row_outputs: outputs.row_losses_buffer(),
                    plane_stride: outputs.capacity_rows() as u64,
                    scalars: outputs.loss_buffer(),
                    status: outputs.status_buffer(),
                };
                let job = Job {
                    shape,
                    options: &self.options,
                };
                context.kernels().record(
                    context.device(),
                    encoder,
                    &bindings,
                    job,
                    context.max_binding_size(),
                    timestamps,
                    outputs.record_cache(),
                )
            })
        })?;
        outputs.set_recorded(RecordedCall {
            rows: shape.rows,
            classes: shape.classes,
            target_type: inputs.target_type,
            reduced: self.options.reduction != Reduction::None,
            has_z_loss: self.options.z_loss > 0.0,
        });
        Ok(())
    }

    /// The CPU door: the general path (which hands the plain case to the tuned
    /// one). 16-bit logits and in-place gradients are staged in f32 one task of
    /// rows at a time, so no call copies the whole array.
    fn compute_cpu(&self, batch: HostBatch<'_>) -> Result<LossOutput> {
        batch.validate(&self.options)?;
        let HostBatch {
            logits,
            targets,
            shape,
            row_stats,
        } = batch;
        let result = cpu::general::cross_entropy_host(logits, targets, shape, &self.options, row_stats);
        let (loss, z_loss) = if self.options.reduction != Reduction::None {
            (Loss::Reduced(result.loss), Loss::Reduced(result.z_loss))
        } else {
            (Loss::PerRow(result.row_losses), Loss::PerRow(result.row_z))
        };
        Ok(LossOutput {
            loss,
            z_loss: (self.options.z_loss > 0.0).then_some(z_loss),
            lse: row_stats.then_some(result.row_lse),
            argmax: row_stats.then_some(result.row_argmax),
        })
    }
}

/// Where a recorded call writes the gradient.
#[derive(Clone, Copy, Debug, Default)]
pub enum GradientOutput<'a> {
    /// Loss only.
    #[default]
    Skip,
    /// Into this buffer (the logits' element type and layout; `STORAGE` usage).
    Buffer(&'a wgpu::Buffer),
    /// Over the logits, which must then be writable storage.
    InPlace,
}

impl<'a> GradientOutput<'a> {
    fn binding(self) -> GradientBinding<'a> {
        match self {
            GradientOutput::Skip => GradientBinding::Skip,
            GradientOutput::Buffer(buffer) => GradientBinding::Buffer(buffer),
            GradientOutput::InPlace => GradientBinding::InPlace,
        }
    }
}

/// The caller's device buffers for [`CrossEntropyLoss::record`].
///
/// ```no_run
/// use wgpu::util::DeviceExt;
/// use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
/// use xent::{LogitType, Shape, TargetType};
///
/// let context = Context::new()?;
/// let storage = |contents: &[u8]| {
///     let usage = wgpu::BufferUsages::STORAGE;
///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
/// };
/// let logits = storage(bytemuck::cast_slice(&[0.0f32, 0.0]));
/// let targets = storage(bytemuck::cast_slice(&[1i64]));
/// let inputs = DeviceInputs {
///     logits: &logits,
///     logit_type: LogitType::F32,
///     targets: &targets,
///     target_type: TargetType::I64,
///     shape: Shape::new(1, 2),
///     gradient: GradientOutput::InPlace, // or Buffer(&gradient), or Skip
/// };
/// let outputs = DeviceOutputs::new(&context, 1)?;
/// let mut encoder = context.device().create_command_encoder(&Default::default());
/// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
/// context.queue().submit([encoder.finish()]);
/// assert!((outputs.read(&context)?.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DeviceInputs<'a> {
    /// Logits of `logit_type` in the layout of `shape`; needs `STORAGE` usage.
    /// 16-bit logits are packed two per word; pad the buffer to a multiple of 4 bytes.
    pub logits: &'a wgpu::Buffer,
    /// Element type of `logits` (and of the gradient).
    pub logit_type: LogitType,
    /// One class index per row of `target_type`, or (`TargetType::Probabilities`)
    /// one `f32` per logit; needs `STORAGE` usage.
    pub targets: &'a wgpu::Buffer,
    /// Element type of `targets`.
    pub target_type: TargetType,
    /// rows × classes (and the N-d layout's spatial size).
    pub shape: Shape,
    /// Where dL/dlogits goes.
    pub gradient: GradientOutput<'a>,
}

impl DeviceInputs<'_> {
    fn validate(&self, outputs: &DeviceOutputs) -> Result<()> {
        let shape = self.shape;
        let elements = shape.elements()?;
        shape.check_logits(elements)?;
        if shape.rows >= u32::MAX as usize || shape.classes >= u32::MAX as usize {
            return Err(Error::TooLarge(format!(
                "{} × {} does not fit 32-bit indices",
                shape.rows, shape.classes
            )));
        }
        if outputs.capacity_rows() < shape.rows {
            return Err(Error::BufferTooSmall {
                name: "outputs",
                needed: shape.rows as u64 * 4,
                actual: outputs.capacity_rows() as u64 * 4,
            });
        }
        let logits_bytes = (elements as u64 * self.logit_type.size_in_bytes() as u64).div_ceil(4) * 4;
        check_device_buffer("logits", self.logits, logits_bytes)?;
        let target_bytes = match self.target_type {
            TargetType::Probabilities => elements as u64 * 4,
            other => (shape.rows * other.size_in_bytes()) as u64,
        };
        check_device_buffer("targets", self.targets, target_bytes)?;
        if let GradientOutput::Buffer(gradient) = self.gradient {
            check_device_buffer("gradient", gradient, logits_bytes)?;
        }
        Ok(())
    }
}

fn check_device_buffer(name: &'static str, buffer: &wgpu::Buffer, needed: u64) -> Result<()> {
    if buffer.size() < needed {
        return Err(Error::BufferTooSmall {
            name,
            needed,
            actual: buffer.size(),
        });
    }
    let missing = wgpu::BufferUsages::STORAGE - buffer.usage();
    if !missing.is_empty() {
        return Err(Error::BufferUsage { name, missing });
    }
    Ok(())
}

impl Context {
    /// The host-slice door: upload into the workspace, record the same passes as
    /// [`CrossEntropyLoss::record`], copy results out, one submission, one readback.
    /// `wait` says where the readback waits for the GPU.
    pub(crate) async fn compute_host(
        &self,
        loss: &CrossEntropyLoss,
        batch: HostBatch<'_>,
        wait: Wait,
    ) -> Result<LossOutput> {
        batch.validate(&loss.options)?;
        let HostBatch {
            logits,
            targets,
            shape,
            row_stats,
        } = batch;
        let logits_bytes = logits.logits().as_bytes();
        let logit_type = logits.logits().logit_type();
        let in_place = matches!(logits, HostLogits::InPlace(_));
        let mut workspace = self.lock_workspace().await;
        let buffers = workspace.ensure(
            self,
            shape.rows,
            logits_bytes.len() as u64,
            targets.as_bytes().len() as u64,
            logits.has_gradient(),
            in_place,
        )?;
        let call = self.checked(|| {
            self.queue()
                .write_buffer(buffers.logits, 0, &padded_to_words(logits_bytes));
            self.queue().write_buffer(buffers.targets, 0, targets.as_bytes());
            let mut encoder = self.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent host call"),
            });
            let gradient = match (&logits, buffers.gradient) {
                (HostLogits::InPlace(_), _) => GradientOutput::InPlace,
                (HostLogits::WithGradient(..), Some(device_gradient)) => GradientOutput::Buffer(device_gradient),
                _ => GradientOutput::Skip,
            };
            let inputs = DeviceInputs {
                logits: buffers.logits,
                logit_type,
                targets: buffers.targets,
                target_type: targets.target_type(),
                shape,
                gradient,
            };
            loss.record(self, &mut encoder, &inputs, buffers.outputs)?;
            let call = buffers.outputs.recorded()?;
            buffers.outputs.copy_to_staging(&mut encoder, call, row_stats);
            if let Some(staging) = buffers.gradient_staging {
                let source = buffers.gradient.unwrap_or(buffers.logits);
                let bytes = (logits_bytes.len() as u64).div_ceil(4) * 4;
                encoder.copy_buffer_to_buffer(source, 0, staging, 0, bytes);
            }
            self.queue().submit([encoder.finish()]);
            Ok(call)
        })?;
        let destination = match logits {
            HostLogits::LossOnly(_) => None,
            HostLogits::WithGradient(_, gradient) | HostLogits::InPlace(gradient) => Some(gradient),
        };
        let gradient = match (buffers.gradient_staging, destination) {
            (Some(staging), Some(values)) => Some((staging, values)),
            _ => None,
        };
        let output = buffers.outputs.finish_read(self, call, row_stats, gradient, wait).await;
        self.unlock_workspace(workspace);
        output
    }
}

/// `bytes` padded with zeros to whole 4-byte words (16-bit logits of odd count).
fn padded_to_words(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.len().is_multiple_of(4) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0);
    std::borrow::Cow::Owned(padded)
}
