//! The categorical cross-entropy's public builder, [`CrossEntropyLoss`]: PyTorch's
//! options, the host calls on any [`Backend`], the async GPU doors and the
//! device-resident [`CrossEntropyLoss::record`].
//!
//! The math lives below: `cpu/general.rs` and `cpu/fast.rs` on the host,
//! `gpu/kernels/mod.rs` with `shaders/cross_entropy.wgsl` on the GPU, and the f64
//! truth in `cpu/reference.rs`.

use crate::backend::Backend;
use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::device_call::DeviceInputs;
use crate::gpu::outputs::DeviceOutputs;
use crate::gpu::readback::Wait;
use crate::losses::setters::setters;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{HostBatch, HostLogits, Logits, LogitsMut, Loss, LossOutput, Shape, Targets};

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
    ///
    /// ```
    /// use xent::{CrossEntropyLoss, CrossEntropyOptions, Reduction};
    ///
    /// assert_eq!(CrossEntropyLoss::new().get_reduction(), Reduction::Mean);
    /// assert_eq!(CrossEntropyLoss::new().options(), &CrossEntropyOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A loss with these options.
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, CrossEntropyOptions, Shape};
    ///
    /// let options = CrossEntropyOptions { logit_scale: 2.0, ..Default::default() };
    /// let loss = CrossEntropyLoss::with_options(options).loss(&Cpu, &[0.0f32, 1.0], &[0i64], Shape::new(1, 2))?;
    /// assert!((loss.value().unwrap() - 2f32.exp().ln_1p()).abs() < 1e-6); // log(1 + e^2)
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn with_options(options: CrossEntropyOptions) -> Self {
        Self { options }
    }

    /// The options.
    ///
    /// ```
    /// use xent::CrossEntropyLoss;
    ///
    /// assert_eq!(CrossEntropyLoss::new().z_loss(1e-4).options().z_loss, 1e-4);
    /// ```
    pub fn options(&self) -> &CrossEntropyOptions {
        &self.options
    }

    setters! {
        /// Sets the reduction.
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Reduction, Shape};
        ///
        /// let none = CrossEntropyLoss::new().reduction(Reduction::None);
        /// let rows = none.loss(&Cpu, &[0.0f32, 0.0, 0.0, 2.0], &[0i64, 1], Shape::new(2, 2))?;
        /// let rows = rows.per_row().unwrap();
        /// assert!((rows[0] - 2f32.ln()).abs() < 1e-6 && (rows[1] - (-2f32).exp().ln_1p()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        reduction(reduction: Reduction) => options.reduction = reduction;

        /// Sets `ignore_index` (default -100).
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Shape};
        ///
        /// // Row 0 is ignored: the mean is row 1's loss alone.
        /// let loss = CrossEntropyLoss::new().ignore_index(-1);
        /// let value = loss.loss(&Cpu, &[5.0f32, -5.0, 0.0, 0.0], &[-1i64, 1], Shape::new(2, 2))?;
        /// assert!((value.value().unwrap() - 2f32.ln()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        ignore_index(ignore_index: i64) => options.ignore_index = ignore_index;

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
        weight(weight: Vec<f32>) => options.weight = Some(weight);

        /// Sets label smoothing ε in [0, 1].
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Shape};
        ///
        /// // Two classes, target 1: (1 − ε)·(lse − 2) + (ε/2)·((lse − 0) + (lse − 2))
        /// // = log(1 + e^-2) + ε.
        /// let loss = CrossEntropyLoss::new().label_smoothing(0.2);
        /// let value = loss.loss(&Cpu, &[0.0f32, 2.0], &[1i64], Shape::new(1, 2))?;
        /// assert!((value.value().unwrap() - ((-2f32).exp().ln_1p() + 0.2)).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        label_smoothing(epsilon: f32) => options.label_smoothing = epsilon;

        /// Sets the z-loss scale (`lse_square_scale`).
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Shape};
        ///
        /// // lse = ln 2 here: the loss gains z·lse², also reported alone.
        /// let loss = CrossEntropyLoss::new().z_loss(0.01);
        /// let output = loss.forward(&Cpu, &[0.0f32, 0.0], &[0i64], Shape::new(1, 2), None, false)?;
        /// let z_term = 0.01 * 2f32.ln().powi(2);
        /// assert!((output.loss.value().unwrap() - (2f32.ln() + z_term)).abs() < 1e-6);
        /// assert!((output.z_loss.unwrap().value().unwrap() - z_term).abs() < 1e-7);
        /// # Ok::<(), xent::Error>(())
        /// ```
        z_loss(scale: f32) => options.z_loss = scale;

        /// Sets the soft-capping threshold (`t·tanh(x/t)`).
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Shape};
        ///
        /// // Capped at 1: the logits 0 and 100 become tanh(0) = 0 and tanh(100) = 1.
        /// let loss = CrossEntropyLoss::new().softcap(1.0);
        /// let value = loss.loss(&Cpu, &[0.0f32, 100.0], &[0i64], Shape::new(1, 2))?;
        /// assert!((value.value().unwrap() - 1f32.exp().ln_1p()).abs() < 1e-6); // log(1 + e)
        /// # Ok::<(), xent::Error>(())
        /// ```
        softcap(threshold: f32) => options.softcap = Some(threshold);

        /// Sets the factor applied to the logits before softcap and softmax.
        ///
        /// ```
        /// use xent::{Cpu, CrossEntropyLoss, Shape};
        ///
        /// // The logits 0 and 1, doubled: log(1 + e^2) for target 0.
        /// let loss = CrossEntropyLoss::new().logit_scale(2.0);
        /// let value = loss.loss(&Cpu, &[0.0f32, 1.0], &[0i64], Shape::new(1, 2))?;
        /// assert!((value.value().unwrap() - 2f32.exp().ln_1p()).abs() < 1e-6);
        /// # Ok::<(), xent::Error>(())
        /// ```
        logit_scale(scale: f32) => options.logit_scale = scale;
    }

    /// The configured reduction.
    ///
    /// ```
    /// use xent::{CrossEntropyLoss, Reduction};
    ///
    /// assert_eq!(CrossEntropyLoss::new().reduction(Reduction::Sum).get_reduction(), Reduction::Sum);
    /// ```
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
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, HostBatch, HostLogits, Logits, Shape, Targets};
    ///
    /// let batch = HostBatch {
    ///     logits: HostLogits::new(Logits::F32(&[1.0, 3.0]), None),
    ///     targets: Targets::I64(&[1]),
    ///     shape: Shape::new(1, 2),
    ///     row_stats: true,
    /// };
    /// let output = CrossEntropyLoss::new().run(&Cpu, batch)?;
    /// assert!((output.loss.value().unwrap() - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2)
    /// assert_eq!(output.argmax, Some(vec![1]));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn run<B: Backend + ?Sized>(&self, backend: &B, batch: HostBatch<'_>) -> Result<LossOutput> {
        backend.cross_entropy(&self.options, batch)
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
    ///
    /// ```
    /// use xent::{Cpu, CrossEntropyLoss, Error, Shape};
    ///
    /// let loss = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 2.0], &[1i64], Shape::new(1, 2))?;
    /// assert!((loss.value().unwrap() - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2)
    /// let short = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32], &[1i64], Shape::new(1, 2));
    /// assert!(matches!(short, Err(Error::LogitsLength { actual: 1, expected: 2, .. })));
    /// # Ok::<(), xent::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, Shape};
    ///
    /// let context = Context::new()?;
    /// let (logits, mut gradient) = ([0.0f32, 0.0], [0.0f32; 2]);
    /// let (loss, shape) = (CrossEntropyLoss::new(), Shape::new(1, 2));
    /// let call = loss.forward_async(&context, &logits, &[1i64], shape, Some((&mut gradient).into()), true);
    /// let output = pollster::block_on(call)?; // or `.await` inside the caller's async code
    /// assert_eq!((output.argmax, gradient), (Some(vec![0]), [0.5, -0.5]));
    /// # Ok::<(), xent::Error>(())
    /// ```
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
                &self.options,
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
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, Shape};
    ///
    /// let context = Context::new()?;
    /// let mut gradient = [0.0f32; 2];
    /// let cross_entropy = CrossEntropyLoss::new();
    /// let shape = Shape::new(1, 2);
    /// let call = cross_entropy.loss_and_grad_async(&context, &[0.0f32, 0.0], &[1i64], shape, &mut gradient);
    /// let loss = pollster::block_on(call)?;
    /// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
    /// assert_eq!(gradient, [0.5, -0.5]);
    /// # Ok::<(), xent::Error>(())
    /// ```
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

    /// Records the loss (and gradient, if `inputs.gradient` is set, multiplied
    /// by `inputs.upstream`) of device-resident buffer slices into the caller's
    /// `encoder`; nothing is submitted. After submitting,
    /// [`DeviceOutputs::read`] returns the loss (or it stays on the GPU in
    /// [`DeviceOutputs::loss_buffer`]). Targets out of range are detected on the GPU
    /// and reported by the read. Class weights are uploaded into `outputs`.
    /// [`DeviceInputs`] has an example; `examples/device_resident.rs` a training step.
    ///
    /// An error found before anything is recorded (the inputs' shapes, types
    /// and aliasing, outputs of another context) leaves `encoder` as it was.
    /// After an [`Error::Gpu`](crate::Error::Gpu), wgpu's validation of the
    /// recording (a buffer of another device, say), wgpu may have marked
    /// `encoder` invalid: drop it and record into a new one.
    ///
    /// ```no_run
    /// use wgpu::util::DeviceExt;
    /// use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    ///
    /// let context = Context::new()?;
    /// let storage = |contents: &[u8]| {
    ///     let usage = wgpu::BufferUsages::STORAGE;
    ///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// };
    /// let (logits, targets) = (storage(bytemuck::cast_slice(&[0.0f32, 2.0])), storage(bytemuck::cast_slice(&[1u32])));
    /// let gradient = storage(&[0; 8]);
    /// let inputs = DeviceInputs {
    ///     logits: logits.slice(..),
    ///     logit_type: LogitType::F32,
    ///     targets: targets.slice(..),
    ///     target_type: TargetType::U32,
    ///     shape: Shape::new(1, 2),
    ///     gradient: GradientOutput::Buffer(gradient.slice(..)),
    ///     upstream: UpstreamGradient::ONE,
    /// };
    /// let outputs = DeviceOutputs::new(&context, 1)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let loss = outputs.read(&context)?.value().unwrap();
    /// assert!((loss - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2); the gradient stays on the GPU
    /// # Ok::<(), xent::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs};
    ///
    /// /// Records one loss between two timestamps (query 0 before the pass, 1 after).
    /// fn timed(
    ///     context: &Context,
    ///     inputs: &DeviceInputs,
    ///     outputs: &DeviceOutputs,
    /// ) -> xent::Result<wgpu::CommandBuffer> {
    ///     assert!(context.features().contains(wgpu::Features::TIMESTAMP_QUERY));
    ///     let queries = context.device().create_query_set(&wgpu::QuerySetDescriptor {
    ///         label: None,
    ///         ty: wgpu::QueryType::Timestamp,
    ///         count: 2,
    ///     });
    ///     let timestamps = wgpu::ComputePassTimestampWrites {
    ///         query_set: &queries,
    ///         beginning_of_pass_write_index: Some(0),
    ///         end_of_pass_write_index: Some(1),
    ///     };
    ///     let mut encoder = context.device().create_command_encoder(&Default::default());
    ///     CrossEntropyLoss::new().record_with_timestamps(context, &mut encoder, inputs, outputs, Some(timestamps))?;
    ///     // …resolve `queries` into a buffer here, then submit.
    ///     Ok(encoder.finish())
    /// }
    /// ```
    pub fn record_with_timestamps(
        &self,
        context: &Context,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &DeviceInputs<'_>,
        outputs: &DeviceOutputs,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        context.record_cross_entropy(&self.options, encoder, inputs, outputs, timestamps, None)
    }
}
