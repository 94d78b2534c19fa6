//! The device-resident door of the cross-entropy: the caller's buffer slices
//! ([`DeviceInputs`], [`GradientOutput`], [`UpstreamGradient`]), their checks,
//! and the recording of the kernels into the caller's encoder, and the doors of
//! [`DeviceOutputs`] that take the [`Context`]: making them and reading them
//! back. The host door (`host_call.rs`) records through the same function.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernels::cross_entropy::{Bindings, GradientBinding, Job, UpstreamBinding};
use crate::gpu::outputs::{CallLayout, DeviceOutputs};
use crate::gpu::readback::Wait;
use crate::gpu::slices::{NamedSlice, check_aliasing, check_storage_slice, check_upstream_values};
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{LogitType, Loss, LossOutput, Shape, TargetType};

/// Where a recorded call writes the gradient.
///
/// ```
/// use xent::GradientOutput;
///
/// // Loss only, unless a `DeviceInputs` says otherwise (see its example for `InPlace`).
/// assert!(matches!(GradientOutput::default(), GradientOutput::Skip));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub enum GradientOutput<'a> {
    /// Loss only.
    #[default]
    Skip,
    /// Into this slice (the logits' element type and layout; `STORAGE` usage),
    /// e.g. `gradient.slice(..)`, or a tensor's range inside a pooled buffer. It
    /// must not lie in the buffer of the logits, targets or upstream values
    /// ([`Error::BufferAliasing`]). Only its elements are written.
    Buffer(wgpu::BufferSlice<'a>),
    /// Over the logits slice, which must then be writable storage.
    InPlace,
}

impl<'a> GradientOutput<'a> {
    fn binding(self) -> GradientBinding<'a> {
        match self {
            GradientOutput::Skip => GradientBinding::Skip,
            GradientOutput::Buffer(slice) => GradientBinding::Buffer(slice),
            GradientOutput::InPlace => GradientBinding::InPlace,
        }
    }
}

/// The gradient flowing into the loss from above (autodiff's `grad_output`): the
/// gradient written is `scale × u × dL/dlogits`, where `u` is 1 without
/// `values`, else the `f32` in `values` for the row: one `f32` per row (4 ×
/// rows bytes; reduction `none`, whose loss is a vector), or a single `f32`
/// (4 bytes) used for every row (what autodiff hands over for the scalar of
/// `mean` or `sum`). The loss itself is not multiplied. Ignored rows still get a
/// zero gradient.
///
/// The default (`scale` 1, no values) is the plain gradient, and costs nothing:
/// the values are read once per row, by a kernel compiled for them, only when given.
///
/// ```
/// use xent::UpstreamGradient;
///
/// let plain = UpstreamGradient::default();
/// assert_eq!((plain.scale, plain.values.is_none()), (1.0, true));
/// // Half the gradient (say, a loss weighted by 0.5 in a sum of losses):
/// let halved = UpstreamGradient { scale: 0.5, ..UpstreamGradient::ONE };
/// assert_eq!(halved.scale, 0.5);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct UpstreamGradient<'a> {
    /// A constant factor of the whole gradient.
    pub scale: f32,
    /// `f32` factors on the device (`STORAGE` usage, offset a multiple of 4):
    /// one, or one per row (reduction `none` only).
    pub values: Option<wgpu::BufferSlice<'a>>,
}

impl UpstreamGradient<'_> {
    /// The plain gradient: `scale` 1, no values.
    ///
    /// ```
    /// use xent::UpstreamGradient;
    ///
    /// assert_eq!((UpstreamGradient::ONE.scale, UpstreamGradient::ONE.values.is_none()), (1.0, true));
    /// let doubled = UpstreamGradient { scale: 2.0, ..UpstreamGradient::ONE };
    /// assert!(doubled.values.is_none());
    /// ```
    pub const ONE: Self = Self {
        scale: 1.0,
        values: None,
    };
}

impl Default for UpstreamGradient<'_> {
    fn default() -> Self {
        Self::ONE
    }
}

/// The caller's device buffer slices for [`CrossEntropyLoss::record`](crate::CrossEntropyLoss::record).
///
/// Each input is a [`wgpu::BufferSlice`]: `buffer.slice(..)` for a whole
/// buffer, or a tensor's byte range inside a pooled buffer (what a training
/// framework's allocator hands out). A slice's offset must be a multiple of its
/// element size (4 for `f32` and the targets, 2 for 16-bit logits); beyond that
/// it may start anywhere. Each slice is bound at its offset rounded down to the
/// device's `min_storage_buffer_offset_alignment`, and the kernel starts at the
/// slice's first element inside that binding: an aligned slice is bound exactly
/// at its offset, and nothing is ever copied. The binding may reach a few bytes
/// before the slice, and up to the next 4-byte boundary after it (a 16-bit slice
/// of odd length: the buffer must extend there); those bytes are read, never
/// written. The gradient writes only the slice's own elements: 16-bit entries
/// that share a 32-bit word with a neighbour's are stored with atomic half-word
/// updates that leave the other half's bits as they were, and whole words
/// (groups of 4 entries) are stored only where a group lies inside the slice.
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
/// let logits = storage(bytemuck::cast_slice(&[0.0f32, 0.0]));
/// let targets = storage(bytemuck::cast_slice(&[1i64]));
/// let inputs = DeviceInputs {
///     logits: logits.slice(..),
///     logit_type: LogitType::F32,
///     targets: targets.slice(..),
///     target_type: TargetType::I64,
///     shape: Shape::new(1, 2),
///     gradient: GradientOutput::InPlace, // or Buffer(gradient.slice(..)), or Skip
///     upstream: UpstreamGradient::ONE,   // or autodiff's incoming gradient
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
    pub logits: wgpu::BufferSlice<'a>,
    /// Element type of `logits` (and of the gradient).
    pub logit_type: LogitType,
    /// One class index per row of `target_type`, or (`TargetType::Probabilities`)
    /// one `f32` per logit; needs `STORAGE` usage.
    pub targets: wgpu::BufferSlice<'a>,
    /// Element type of `targets`.
    pub target_type: TargetType,
    /// rows × classes (and the N-d layout's spatial size).
    pub shape: Shape,
    /// Where dL/dlogits goes.
    pub gradient: GradientOutput<'a>,
    /// What the gradient is multiplied by ([`UpstreamGradient::ONE`]: nothing).
    pub upstream: UpstreamGradient<'a>,
}

impl<'a> DeviceInputs<'a> {
    fn validate(&self, outputs: &DeviceOutputs, reduction: Reduction) -> Result<()> {
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
        let logit_size = self.logit_type.size_in_bytes() as u64;
        let logits_bytes = byte_count(elements as u64, logit_size)?;
        check_storage_slice("logits", self.logits, logits_bytes, logit_size)?;
        let target_bytes = match self.target_type {
            TargetType::Probabilities => byte_count(elements as u64, 4)?,
            other => byte_count(shape.rows as u64, other.size_in_bytes() as u64)?,
        };
        check_storage_slice("targets", self.targets, target_bytes, 4)?;
        if let GradientOutput::Buffer(gradient) = self.gradient {
            check_storage_slice("gradient", gradient, logits_bytes, logit_size)?;
        }
        if let Some(values) = self.upstream.values {
            let per_row = byte_count(shape.rows as u64, 4)?;
            check_upstream_values(values, per_row, reduction == Reduction::None)?;
        }
        let (written, read) = self.written_and_read();
        check_aliasing(written, &read)
    }

    /// The slice the kernel writes (the gradient, or the logits in place) and the
    /// slices it only reads, by name.
    fn written_and_read(&self) -> (Option<NamedSlice<'a>>, Vec<NamedSlice<'a>>) {
        let mut read = vec![("targets", self.targets)];
        read.extend(self.upstream.values.map(|values| ("upstream values", values)));
        let written = match self.gradient {
            GradientOutput::Skip => None,
            GradientOutput::Buffer(gradient) => Some(("gradient", gradient)),
            GradientOutput::InPlace => Some(("logits", self.logits)),
        };
        if !matches!(self.gradient, GradientOutput::InPlace) {
            read.insert(0, ("logits", self.logits));
        }
        (written, read)
    }
}

/// `count` elements of `size` bytes, or [`Error::TooLarge`].
fn byte_count(count: u64, size: u64) -> Result<u64> {
    count
        .checked_mul(size)
        .ok_or_else(|| Error::TooLarge(format!("{count} elements of {size} bytes")))
}

impl Context {
    /// Records the cross-entropy of `inputs` with `options` into `encoder` (with
    /// `timestamps` around the compute pass, if given); nothing is submitted
    /// but, with `given_divisor` (a mean's divisor the host door counted, with
    /// the bits the divisor pass would give), its write into the outputs ahead
    /// of the next submission, in place of the divisor pass.
    pub(crate) fn record_cross_entropy(
        &self,
        options: &CrossEntropyOptions,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &DeviceInputs<'_>,
        outputs: &DeviceOutputs,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
        given_divisor: Option<f32>,
    ) -> Result<()> {
        inputs.validate(outputs, options.reduction)?;
        outputs.check_device(self.gpu())?;
        let shape = inputs.shape;
        options.validate(shape)?;
        options.check_ignore_index(inputs.target_type == TargetType::Probabilities)?;
        self.checked(|| {
            outputs.with_weights(self.gpu(), options.weight.as_deref(), |weights| {
                let bindings = Bindings {
                    logits: inputs.logits,
                    logit_type: inputs.logit_type,
                    targets: inputs.targets,
                    target_type: inputs.target_type,
                    gradient: inputs.gradient.binding(),
                    upstream: UpstreamBinding {
                        scale: inputs.upstream.scale,
                        values: inputs.upstream.values,
                        per_row: inputs.upstream.values.is_some_and(|values| values.size() > 4),
                    },
                    weights,
                    row_outputs: outputs.row_losses_buffer(),
                    plane_stride: outputs.capacity_rows() as u64,
                    scalars: outputs.loss_buffer(),
                    status: outputs.status_buffer(),
                };
                let job = Job {
                    shape,
                    options,
                    given_divisor: given_divisor.is_some(),
                };
                if let Some(divisor) = given_divisor {
                    outputs.write_divisor(self.gpu(), divisor);
                }
                self.kernels().cross_entropy.record(
                    self.device(),
                    encoder,
                    &bindings,
                    job,
                    self.max_binding_size(),
                    timestamps,
                    outputs.record_cache(),
                )
            })
        })?;
        outputs.set_recorded(
            encoder,
            CallLayout {
                rows: shape.rows,
                classes: shape.classes,
                target_type: inputs.target_type,
                reduced: options.reduction != Reduction::None,
                has_z_loss: options.z_loss > 0.0,
            },
        );
        Ok(())
    }
}

impl DeviceOutputs {
    /// Outputs for batches of up to `rows` rows. They belong to `context`:
    /// recording into them or reading them through another context is an
    /// [`Error::InvalidOption`].
    ///
    /// ```no_run
    /// use xent::{Context, DeviceOutputs};
    ///
    /// let context = Context::new()?;
    /// let outputs = DeviceOutputs::new(&context, 512)?; // batches of up to 512 rows
    /// assert_eq!(outputs.capacity_rows(), 512);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn new(context: &Context, rows: usize) -> Result<Self> {
        Self::create(context.gpu(), rows)
    }

    /// Reads the last recorded call's results (after its commands were submitted),
    /// blocking. An out-of-range target found on the GPU comes back as
    /// [`Error::TargetOutOfRange`].
    ///
    /// ```no_run
    /// # use wgpu::util::DeviceExt;
    /// # use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// # use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    /// # let context = Context::new()?;
    /// # let storage = |contents: &[u8]| {
    /// #     let usage = wgpu::BufferUsages::STORAGE;
    /// #     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// # };
    /// # let logits = storage(bytemuck::cast_slice(&[0.0f32, 2.0, 0.0, 0.0]));
    /// # let targets = storage(bytemuck::cast_slice(&[1u32, 0]));
    /// # let inputs = DeviceInputs {
    /// #     logits: logits.slice(..),
    /// #     logit_type: LogitType::F32,
    /// #     targets: targets.slice(..),
    /// #     target_type: TargetType::U32,
    /// #     shape: Shape::new(2, 2),
    /// #     gradient: GradientOutput::Skip,
    /// #     upstream: UpstreamGradient::ONE,
    /// # };
    /// // Record the mean loss of rows (0, 2) → 1 and (0, 0) → 0, then submit:
    /// let outputs = DeviceOutputs::new(&context, 2)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let expected = ((-2f32).exp().ln_1p() + 2f32.ln()) / 2.0;
    /// assert!((outputs.read(&context)?.value().unwrap() - expected).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn read(&self, context: &Context) -> Result<Loss> {
        Ok(pollster::block_on(self.read_all_waiting(context.gpu(), false, Wait::Inline))?.loss)
    }

    /// Reads the last recorded call's results (after its commands were submitted).
    /// The future is pending while the GPU works (a helper thread waits for it),
    /// so other tasks of the caller's executor run meanwhile.
    ///
    /// ```no_run
    /// # use wgpu::util::DeviceExt;
    /// # use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// # use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    /// # let context = Context::new()?;
    /// # let storage = |contents: &[u8]| {
    /// #     let usage = wgpu::BufferUsages::STORAGE;
    /// #     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// # };
    /// # let logits = storage(bytemuck::cast_slice(&[0.0f32, 2.0, 0.0, 0.0]));
    /// # let targets = storage(bytemuck::cast_slice(&[1u32, 0]));
    /// # let inputs = DeviceInputs {
    /// #     logits: logits.slice(..),
    /// #     logit_type: LogitType::F32,
    /// #     targets: targets.slice(..),
    /// #     target_type: TargetType::U32,
    /// #     shape: Shape::new(2, 2),
    /// #     gradient: GradientOutput::Skip,
    /// #     upstream: UpstreamGradient::ONE,
    /// # };
    /// // Record the mean loss of rows (0, 2) → 1 and (0, 0) → 0, then submit:
    /// let outputs = DeviceOutputs::new(&context, 2)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let expected = ((-2f32).exp().ln_1p() + 2f32.ln()) / 2.0;
    /// let loss = pollster::block_on(outputs.read_async(&context))?; // or `.await`
    /// assert!((loss.value().unwrap() - expected).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub async fn read_async(&self, context: &Context) -> Result<Loss> {
        Ok(self
            .read_all_waiting(context.gpu(), false, Wait::Background)
            .await?
            .loss)
    }

    /// Reads every output of the last recorded call: loss, z-loss, and with
    /// `row_stats` the per-row lse and argmax (blocking).
    ///
    /// ```no_run
    /// # use wgpu::util::DeviceExt;
    /// # use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// # use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    /// # let context = Context::new()?;
    /// # let storage = |contents: &[u8]| {
    /// #     let usage = wgpu::BufferUsages::STORAGE;
    /// #     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// # };
    /// # let logits = storage(bytemuck::cast_slice(&[0.0f32, 2.0, 0.0, 0.0]));
    /// # let targets = storage(bytemuck::cast_slice(&[1u32, 0]));
    /// # let inputs = DeviceInputs {
    /// #     logits: logits.slice(..),
    /// #     logit_type: LogitType::F32,
    /// #     targets: targets.slice(..),
    /// #     target_type: TargetType::U32,
    /// #     shape: Shape::new(2, 2),
    /// #     gradient: GradientOutput::Skip,
    /// #     upstream: UpstreamGradient::ONE,
    /// # };
    /// // Record the mean loss of rows (0, 2) → 1 and (0, 0) → 0, then submit:
    /// let outputs = DeviceOutputs::new(&context, 2)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let expected = ((-2f32).exp().ln_1p() + 2f32.ln()) / 2.0;
    /// let output = outputs.read_all(&context, true)?;
    /// assert!((output.loss.value().unwrap() - expected).abs() < 1e-6);
    /// assert_eq!(output.argmax, Some(vec![1, 0])); // the first of tied logits
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn read_all(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        pollster::block_on(self.read_all_waiting(context.gpu(), row_stats, Wait::Inline))
    }

    /// [`DeviceOutputs::read_all`], awaiting the readback: the future is pending
    /// while the GPU works (a helper thread waits for it).
    ///
    /// ```no_run
    /// # use wgpu::util::DeviceExt;
    /// # use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// # use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    /// # let context = Context::new()?;
    /// # let storage = |contents: &[u8]| {
    /// #     let usage = wgpu::BufferUsages::STORAGE;
    /// #     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// # };
    /// # let logits = storage(bytemuck::cast_slice(&[0.0f32, 2.0, 0.0, 0.0]));
    /// # let targets = storage(bytemuck::cast_slice(&[1u32, 0]));
    /// # let inputs = DeviceInputs {
    /// #     logits: logits.slice(..),
    /// #     logit_type: LogitType::F32,
    /// #     targets: targets.slice(..),
    /// #     target_type: TargetType::U32,
    /// #     shape: Shape::new(2, 2),
    /// #     gradient: GradientOutput::Skip,
    /// #     upstream: UpstreamGradient::ONE,
    /// # };
    /// // Record the mean loss of rows (0, 2) → 1 and (0, 0) → 0, then submit:
    /// let outputs = DeviceOutputs::new(&context, 2)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let expected = ((-2f32).exp().ln_1p() + 2f32.ln()) / 2.0;
    /// let output = pollster::block_on(outputs.read_all_async(&context, true))?; // or `.await`
    /// let lse = output.lse.unwrap();
    /// assert!((lse[0] - 2f32.exp().ln_1p()).abs() < 1e-6 && (lse[1] - 2f32.ln()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub async fn read_all_async(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        self.read_all_waiting(context.gpu(), row_stats, Wait::Background).await
    }
}
