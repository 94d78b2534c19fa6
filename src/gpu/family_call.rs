//! The two doors of the BCE / KL / entropy / probability cross-entropy family on
//! the GPU: the device-resident one ([`FamilyInputs`], recorded into the
//! caller's encoder, results in a [`DeviceOutputs`]) and the host-slice one
//! (upload into the context's workspace, record through the same function,
//! submit, read back). The losses (`losses/binary.rs`, `losses/divergence.rs`)
//! say what to compute ([`FamilyCall`]); this file checks the buffers.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::device_call::UpstreamGradient;
use crate::gpu::kernels::family::{FamilyKernel, FamilyKernels};
use crate::gpu::kernels::family_record::{Bindings, Job, TargetBinding};
use crate::gpu::outputs::{CallLayout, DeviceOutputs};
use crate::gpu::readback::Wait;
use crate::gpu::slices::{NamedSlice, check_aliasing, check_storage_slice, check_upstream_values};
use crate::gpu::upload::word_padded;
use crate::gpu::workspace::{Caller, HostRequest};
use crate::types::{LogitType, Logits, LogitsMut, Loss, RowTargets, Shape, TargetType};

/// The targets of a device-resident family call ([`FamilyInputs`]).
///
/// ```no_run
/// use wgpu::util::DeviceExt;
/// use xent::{Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, ProbabilityCrossEntropyLoss, Shape};
///
/// let context = Context::new()?;
/// let storage = |contents: &[u8]| {
///     let usage = wgpu::BufferUsages::STORAGE;
///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
/// };
/// let probabilities = storage(bytemuck::cast_slice(&[0.25f32, 0.75]));
/// let (class, one_hot) = (storage(bytemuck::cast_slice(&[1u32])), storage(bytemuck::cast_slice(&[0.0f32, 1.0])));
/// // Class 1 as an index and as one-hot soft targets: the same loss, −ln ¾.
/// for targets in [FamilyTargets::Classes(class.slice(..)), FamilyTargets::PerElement(one_hot.slice(..))] {
///     let inputs = FamilyInputs {
///         input: probabilities.slice(..),
///         input_type: LogitType::F32,
///         targets,
///         shape: Shape::new(1, 2),
///         gradient: None,
///         upstream: Default::default(),
///     };
///     let outputs = DeviceOutputs::new(&context, 1)?;
///     let mut encoder = context.device().create_command_encoder(&Default::default());
///     ProbabilityCrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
///     context.queue().submit([encoder.finish()]);
///     assert!((outputs.read(&context)?.value().unwrap() + 0.75f32.ln()).abs() < 1e-6);
/// }
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub enum FamilyTargets<'a> {
    /// No targets ([`Entropy`](crate::Entropy)).
    None,
    /// One `f32` per input element, laid out like the input
    /// ([`BinaryCrossEntropyLoss`](crate::BinaryCrossEntropyLoss),
    /// [`KlDivLoss`](crate::KlDivLoss), soft targets of
    /// [`ProbabilityCrossEntropyLoss`](crate::ProbabilityCrossEntropyLoss)).
    PerElement(wgpu::BufferSlice<'a>),
    /// One `u32` class index per row
    /// ([`ProbabilityCrossEntropyLoss`](crate::ProbabilityCrossEntropyLoss)). A
    /// host call checks them; on the device an index outside `[0, C)` makes its
    /// row's loss and gradient NaN.
    Classes(wgpu::BufferSlice<'a>),
}

/// The caller's device buffers for the family losses' `record`
/// ([`BinaryCrossEntropyLoss::record`](crate::BinaryCrossEntropyLoss::record),
/// [`KlDivLoss::record`](crate::KlDivLoss::record),
/// [`Entropy::record`](crate::Entropy::record),
/// [`ProbabilityCrossEntropyLoss::record`](crate::ProbabilityCrossEntropyLoss::record)).
///
/// Every slice needs `STORAGE` usage and must start at a multiple of the
/// device's `min_storage_buffer_offset_alignment` (else
/// [`Error::BufferAlignment`]: no copy is made to realign it), except the
/// upstream values, which need only a multiple of 4. The results go to a
/// [`DeviceOutputs`], read back as the cross-entropy's are.
///
/// The gradient written is `upstream.scale × u × d loss / d input`, where `u`
/// is 1 without `upstream.values`, else the `f32` in `values` for the loss value
/// the element belongs to: a single `f32` (4 bytes) for every element (what
/// autodiff hands over for the scalar of a reduced loss), or, for reduction
/// `none` only, one `f32` per loss value the call outputs, in their order: per
/// element for [`BinaryCrossEntropyLoss`](crate::BinaryCrossEntropyLoss) and
/// [`KlDivLoss`](crate::KlDivLoss) (rows × classes values), per row for
/// [`Entropy`](crate::Entropy) and
/// [`ProbabilityCrossEntropyLoss`](crate::ProbabilityCrossEntropyLoss) (rows
/// values). Any other length is [`Error::UpstreamLength`]; the values must not
/// lie in the gradient's buffer ([`Error::BufferAliasing`]). The loss itself is
/// not multiplied. The default ([`UpstreamGradient::ONE`]) costs nothing: the
/// values are read (once per element or row) only by kernels compiled for them.
///
/// ```no_run
/// use wgpu::util::DeviceExt;
/// use xent::{BinaryCrossEntropyLoss, Context, DeviceOutputs, FamilyInputs, FamilyTargets, LogitType, Shape};
/// use xent::UpstreamGradient;
///
/// let context = Context::new()?;
/// let storage = |contents: &[u8]| {
///     let usage = wgpu::BufferUsages::STORAGE;
///     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
/// };
/// let logits = storage(bytemuck::cast_slice(&[0.0f32, 0.0]));
/// let targets = storage(bytemuck::cast_slice(&[1.0f32, 0.0]));
/// let gradient = storage(&[0u8; 8]);
/// let inputs = FamilyInputs {
///     input: logits.slice(..),
///     input_type: LogitType::F32,
///     targets: FamilyTargets::PerElement(targets.slice(..)),
///     shape: Shape::new(1, 2),
///     gradient: Some(gradient.slice(..)), // or None
///     upstream: UpstreamGradient::ONE,    // or autodiff's incoming gradient
/// };
/// let outputs = DeviceOutputs::new(&context, 1)?;
/// let mut encoder = context.device().create_command_encoder(&Default::default());
/// BinaryCrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
/// context.queue().submit([encoder.finish()]);
/// assert!((outputs.read(&context)?.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FamilyInputs<'a> {
    /// The input (logits or probabilities, as the loss takes them) of
    /// `input_type` in the (N, C) row-major layout of `shape`. 16-bit inputs are
    /// packed two per word; the slice must then cover whole words.
    pub input: wgpu::BufferSlice<'a>,
    /// Element type of `input` (and of the gradient).
    pub input_type: LogitType,
    /// The targets the loss takes.
    pub targets: FamilyTargets<'a>,
    /// rows × classes (the N-d layout is not supported).
    pub shape: Shape,
    /// Receives d loss / d input (the input's type and layout), times the
    /// upstream gradient, if given.
    pub gradient: Option<wgpu::BufferSlice<'a>>,
    /// What the gradient is multiplied by ([`UpstreamGradient::ONE`]: nothing;
    /// `values` holds one `f32`, or for reduction `none` one per loss value).
    pub upstream: UpstreamGradient<'a>,
}

/// What a family loss computes, whichever door its data comes through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FamilyCall<'a> {
    pub kernel: FamilyKernel,
    /// Kernel-specific `FLAG_*` bits.
    pub flags: u32,
    pub label_smoothing: f32,
    /// Factor of the gradient (1/divisor for a mean).
    pub gradient_scale: f32,
    /// `Some(d)`: Σ losses / d; `None`: every loss.
    pub divisor: Option<f64>,
    /// Per-class parameters the kernel reads (BCE: weights then pos_weights).
    pub class_params: Option<&'a [f32]>,
}

impl FamilyCall<'_> {
    fn job(&self, shape: Shape) -> Job {
        Job {
            kernel: self.kernel,
            rows: shape.rows,
            classes: shape.classes,
            flags: self.flags,
            label_smoothing: self.label_smoothing,
            gradient_scale: self.gradient_scale,
            divisor: self.divisor,
        }
    }
}

/// The bytes of a host call's targets (none, soft or per-element `f32`, or `u32` classes).
fn target_bytes<'a>(targets: Option<RowTargets<'a>>) -> &'a [u8] {
    match targets {
        None => &[],
        Some(RowTargets::Soft(values)) => bytemuck::cast_slice(values),
        Some(RowTargets::Classes(values)) => bytemuck::cast_slice(values),
    }
}

/// One host-slice family call (already validated: lengths, types).
#[derive(Debug)]
pub(crate) struct HostFamilyBatch<'a> {
    pub input: Logits<'a>,
    /// One `f32` per element (`Soft`), a class per row, or none.
    pub targets: Option<RowTargets<'a>>,
    pub shape: Shape,
    pub gradient: Option<LogitsMut<'a>>,
}

/// Bytes of `elements` values of `input_type`, padded to whole 4-byte words.
fn padded_bytes(elements: u64, input_type: LogitType) -> u64 {
    (elements * input_type.size_in_bytes() as u64).div_ceil(4) * 4
}

impl FamilyInputs<'_> {
    /// Checks the slices against the shape and `outputs` against the losses
    /// `job` gives; returns the targets as the kernels bind them.
    fn validate(&self, job: &Job, outputs: &DeviceOutputs, alignment: u64) -> Result<TargetBinding<'_>> {
        let elements = self.shape.elements()? as u64;
        if elements > u64::from(u32::MAX) {
            return Err(Error::TooLarge(format!(
                "{elements} elements do not fit 32-bit indices"
            )));
        }
        let values = job.value_count();
        if (outputs.capacity_rows() as u64) < values {
            return Err(Error::BufferTooSmall {
                name: "outputs",
                needed: values * 4,
                actual: outputs.capacity_rows() as u64 * 4,
            });
        }
        let input_bytes = padded_bytes(elements, self.input_type);
        check_storage_slice("input", self.input, input_bytes, alignment)?;
        if let Some(gradient) = self.gradient {
            check_storage_slice("gradient", gradient, input_bytes, alignment)?;
        }
        if let Some(upstream) = self.upstream.values {
            // At most u32::MAX elements (checked first): no overflow.
            let per_value = job.unreduced_count() * 4;
            check_upstream_values(upstream, per_value, job.divisor.is_none())?;
        }
        let targets = match self.targets {
            FamilyTargets::None => TargetBinding::None,
            FamilyTargets::PerElement(slice) => {
                check_storage_slice("targets", slice, elements * 4, alignment)?;
                TargetBinding::PerElement(slice)
            }
            FamilyTargets::Classes(slice) => {
                check_storage_slice("targets", slice, self.shape.rows as u64 * 4, alignment)?;
                TargetBinding::Classes(slice)
            }
        };
        let written = self.gradient.map(|gradient| ("gradient", gradient));
        check_aliasing(written, &self.read_slices())?;
        Ok(targets)
    }

    /// The slices the kernels only read, by name: the gradient (the one slice
    /// they write) must lie in another buffer than each of them.
    fn read_slices(&self) -> Vec<NamedSlice<'_>> {
        let mut read = vec![("input", self.input)];
        match self.targets {
            FamilyTargets::None => {}
            FamilyTargets::PerElement(slice) | FamilyTargets::Classes(slice) => read.push(("targets", slice)),
        }
        read.extend(self.upstream.values.map(|values| ("upstream values", values)));
        read
    }
}

impl Context {
    /// The family's kernels (their layout made on first use).
    fn family_kernels(&self) -> Result<&FamilyKernels> {
        self.checked(|| {
            Ok(self
                .kernels()
                .family
                .get_or_init(|| FamilyKernels::new(self.device(), self.kernels().shader_checks())))
        })
    }

    /// Records `call` on `inputs` into `encoder`, its results into `outputs`;
    /// nothing is submitted. The shape is a checked (N, C) one.
    pub(crate) fn record_family(
        &self,
        call: &FamilyCall<'_>,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &FamilyInputs<'_>,
        outputs: &DeviceOutputs,
    ) -> Result<()> {
        let job = call.job(inputs.shape);
        let alignment = u64::from(self.limits().min_storage_buffer_offset_alignment);
        let targets = inputs.validate(&job, outputs, alignment)?;
        outputs.check_device(self.gpu())?;
        let kernels = self.family_kernels()?;
        self.checked(|| {
            outputs.with_weights(self.gpu(), call.class_params, |class_params| {
                let class_param_bytes = call.class_params.map_or(0, |values| values.len() as u64 * 4);
                let bindings = Bindings {
                    input: inputs.input,
                    input_type: inputs.input_type,
                    targets,
                    gradient: inputs.gradient,
                    class_params: class_params.map(|buffer| buffer.slice(..class_param_bytes)),
                    upstream_scale: inputs.upstream.scale,
                    upstream_values: inputs.upstream.values,
                    losses: outputs.row_losses_buffer(),
                    result: outputs.loss_buffer(),
                };
                // No family kernel reports through the status block: clear what
                // an earlier call left there.
                encoder.clear_buffer(outputs.status_buffer(), 0, None);
                kernels.record(self.gpu(), encoder, &bindings, job, outputs.family_cache())
            })
        })?;
        outputs.set_recorded(
            encoder,
            CallLayout {
                rows: job.value_count() as usize,
                classes: job.classes,
                target_type: TargetType::U32,
                reduced: job.divisor.is_some(),
                has_z_loss: false,
            },
        );
        Ok(())
    }

    /// The host-slice door: upload through the workspace's upload buffers into
    /// its family buffers, record through [`Context::record_family`], one
    /// submission, one readback.
    pub(crate) fn family_host(&self, call: &FamilyCall<'_>, batch: HostFamilyBatch<'_>) -> Result<Loss> {
        let input_bytes = batch.input.as_bytes();
        let target_bytes = target_bytes(batch.targets);
        let request = HostRequest {
            values: call.job(batch.shape).value_count() as usize,
            input_bytes: input_bytes.len() as u64,
            target_bytes: target_bytes.len() as u64,
            with_gradient: batch.gradient.is_some(),
            in_place: false,
        };
        self.with_family_buffers(|workspace| {
            let ensure = workspace.ensure(self.gpu(), Caller::Family, &request, Wait::Inline);
            let mut buffers = pollster::block_on(ensure)?;
            let upload = buffers.upload(self.gpu(), input_bytes, target_bytes, Wait::Inline);
            let mut encoder = pollster::block_on(upload)?;
            let padded = word_padded(request.input_bytes);
            let (recorded, submission) = self.checked(|| {
                let target_slice = buffers.targets.slice(..request.target_bytes.max(4));
                let inputs = FamilyInputs {
                    input: buffers.input.slice(..padded),
                    input_type: batch.input.logit_type(),
                    targets: match batch.targets {
                        None => FamilyTargets::None,
                        Some(RowTargets::Soft(_)) => FamilyTargets::PerElement(target_slice),
                        Some(RowTargets::Classes(_)) => FamilyTargets::Classes(target_slice),
                    },
                    shape: batch.shape,
                    gradient: buffers.gradient.map(|gradient| gradient.slice(..padded)),
                    upstream: UpstreamGradient::ONE,
                };
                self.record_family(call, &mut encoder, &inputs, buffers.outputs)?;
                let recorded = buffers.outputs.recorded()?;
                buffers.outputs.copy_to_staging(&mut encoder, recorded, false);
                let submission = buffers.submit(self.gpu(), encoder)?;
                Ok((recorded, submission))
            })?;
            let mut destination = batch.gradient;
            let gradient = destination.as_mut().map(LogitsMut::as_bytes_mut);
            let read = buffers.read_back(self.gpu(), recorded, false, gradient, submission, Wait::Inline);
            Ok(pollster::block_on(read)?.loss)
        })
    }
}
