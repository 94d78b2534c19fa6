//! The device-resident door of the cross-entropy: the caller's buffers
//! ([`DeviceInputs`], [`GradientOutput`]), their checks, and the recording of the
//! kernels into the caller's encoder, and the doors of [`DeviceOutputs`] that
//! take the [`Context`]: making them and reading them back. The host door (`host_call.rs`) records
//! through the same function.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernels::cross_entropy::{Bindings, GradientBinding, Job};
use crate::gpu::outputs::{DeviceOutputs, RecordedCall};
use crate::gpu::readback::Wait;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{LogitType, Loss, LossOutput, Shape, TargetType};

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

/// The caller's device buffers for [`CrossEntropyLoss::record`](crate::CrossEntropyLoss::record).
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
    /// Records the cross-entropy of `inputs` with `options` into `encoder` (with
    /// `timestamps` around the compute pass, if given); nothing is submitted.
    pub(crate) fn record_cross_entropy(
        &self,
        options: &CrossEntropyOptions,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &DeviceInputs<'_>,
        outputs: &DeviceOutputs,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        inputs.validate(outputs)?;
        let shape = inputs.shape;
        options.validate(shape)?;
        self.checked(|| {
            outputs.with_weights(self.gpu(), options.weight.as_deref(), |weights| {
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
                let job = Job { shape, options };
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
        outputs.set_recorded(RecordedCall {
            rows: shape.rows,
            classes: shape.classes,
            target_type: inputs.target_type,
            reduced: options.reduction != Reduction::None,
            has_z_loss: options.z_loss > 0.0,
        });
        Ok(())
    }
}

impl DeviceOutputs {
    /// Outputs for batches of up to `rows` rows.
    pub fn new(context: &Context, rows: usize) -> Result<Self> {
        Self::create(context.gpu(), rows)
    }

    /// Reads the last recorded call's results (after its commands were submitted),
    /// blocking. An out-of-range target found on the GPU comes back as
    /// [`Error::TargetOutOfRange`].
    pub fn read(&self, context: &Context) -> Result<Loss> {
        Ok(pollster::block_on(self.read_all_waiting(context.gpu(), false, Wait::Inline))?.loss)
    }

    /// Reads the last recorded call's results (after its commands were submitted).
    /// The future is pending while the GPU works (a helper thread waits for it),
    /// so other tasks of the caller's executor run meanwhile.
    pub async fn read_async(&self, context: &Context) -> Result<Loss> {
        Ok(self
            .read_all_waiting(context.gpu(), false, Wait::Background)
            .await?
            .loss)
    }

    /// Reads every output of the last recorded call: loss, z-loss, and with
    /// `row_stats` the per-row lse and argmax (blocking).
    pub fn read_all(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        pollster::block_on(self.read_all_waiting(context.gpu(), row_stats, Wait::Inline))
    }

    /// [`DeviceOutputs::read_all`], awaiting the readback: the future is pending
    /// while the GPU works (a helper thread waits for it).
    pub async fn read_all_async(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        self.read_all_waiting(context.gpu(), row_stats, Wait::Background).await
    }
}
