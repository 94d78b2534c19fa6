//! The public loss API: [`CrossEntropyLoss`] with its options, the [`Backend`]s it
//! runs on (the GPU [`Context`] and the [`Cpu`]), and the device-resident call.

use std::str::FromStr;

use crate::cpu;
use crate::error::{Error, Result};
use crate::gpu::buffers::{DeviceOutputs, RecordedCall};
use crate::gpu::context::Context;
use crate::gpu::kernels::{Bindings, Job};
use crate::input::{Shape, TargetType, Targets};

/// How per-row losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Mean over rows (the default); the gradient is divided by N.
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

impl FromStr for Reduction {
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

/// A computed loss: one number for `mean`/`sum`, one per row for `none`.
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

/// One call on host memory: row-major logits, targets, their shape, and where the
/// gradient goes (if wanted).
#[derive(Debug)]
pub struct HostBatch<'a> {
    /// rows × classes logits, row-major.
    pub logits: &'a [f32],
    /// One class index per row.
    pub targets: Targets<'a>,
    /// rows × classes.
    pub shape: Shape,
    /// Receives dL/dlogits (rows × classes) when given.
    pub gradient: Option<&'a mut [f32]>,
}

impl HostBatch<'_> {
    /// Checks lengths and target ranges; every backend calls this first.
    pub fn validate(&self) -> Result<()> {
        self.shape.check_logits(self.logits.len())?;
        self.targets.check(self.shape)?;
        if let Some(gradient) = &self.gradient {
            self.shape.check_gradient(gradient.len())?;
        }
        Ok(())
    }
}

/// Where a loss is computed: the GPU [`Context`] or the [`Cpu`].
pub trait Backend {
    /// A short description for reports, e.g. `gpu (NVIDIA H100, Vulkan)`.
    fn describe(&self) -> String;

    /// Computes `loss` on `batch`, writing the gradient if asked.
    fn compute(&self, loss: &CrossEntropyLoss, batch: HostBatch<'_>) -> Result<Loss>;
}

/// Categorical cross-entropy on logits with class-index targets, as PyTorch's
/// `F.cross_entropy(logits, targets, reduction=...)`:
/// `loss_r = logsumexp(x_r) - x_r[t_r]`, gradient `softmax(x_r) - onehot(t_r)`
/// (divided by N for `mean`).
///
/// NaN or ±inf logits propagate: the row's loss and gradient become NaN (an
/// all-`-inf` row too), as in PyTorch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    reduction: Reduction,
}

impl CrossEntropyLoss {
    /// Mean reduction, no other options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The configured reduction.
    pub fn get_reduction(&self) -> Reduction {
        self.reduction
    }

    /// dL/dloss_r: 1/N for mean, 1 for sum and none.
    pub(crate) fn gradient_scale(&self, rows: usize) -> f32 {
        match self.reduction {
            Reduction::Mean => 1.0 / rows as f32,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }

    /// The divisor applied to the sum of row losses, or `None` when not reduced.
    pub(crate) fn divisor(&self, rows: usize) -> Option<f32> {
        match self.reduction {
            Reduction::Mean => Some(rows as f32),
            Reduction::Sum => Some(1.0),
            Reduction::None => None,
        }
    }

    /// The loss of `logits` (rows × classes, row-major) against `targets`.
    pub fn loss<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: &'a [f32],
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Loss> {
        backend.compute(
            self,
            HostBatch {
                logits,
                targets: targets.into(),
                shape,
                gradient: None,
            },
        )
    }

    /// The loss, and dL/dlogits written into `gradient` (rows × classes), in one pass.
    pub fn loss_and_grad<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: &'a [f32],
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: &'a mut [f32],
    ) -> Result<Loss> {
        backend.compute(
            self,
            HostBatch {
                logits,
                targets: targets.into(),
                shape,
                gradient: Some(gradient),
            },
        )
    }

    /// The unreduced per-row losses, whatever the configured reduction.
    pub fn row_losses<'a, B: Backend + ?Sized>(
        &self,
        backend: &B,
        logits: &'a [f32],
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Vec<f32>> {
        let unreduced = self.clone().reduction(Reduction::None);
        match unreduced.loss(backend, logits, targets, shape)? {
            Loss::PerRow(values) => Ok(values),
            Loss::Reduced(_) => Err(Error::Gpu("a per-row call returned a reduced loss".into())),
        }
    }

    /// [`CrossEntropyLoss::loss`] on the GPU, awaiting the readback.
    pub async fn loss_async<'a>(
        &self,
        context: &Context,
        logits: &'a [f32],
        targets: impl Into<Targets<'a>>,
        shape: Shape,
    ) -> Result<Loss> {
        context
            .compute_host(
                self,
                HostBatch {
                    logits,
                    targets: targets.into(),
                    shape,
                    gradient: None,
                },
            )
            .await
    }

    /// [`CrossEntropyLoss::loss_and_grad`] on the GPU, awaiting the readback.
    pub async fn loss_and_grad_async<'a>(
        &self,
        context: &Context,
        logits: &'a [f32],
        targets: impl Into<Targets<'a>>,
        shape: Shape,
        gradient: &'a mut [f32],
    ) -> Result<Loss> {
        context
            .compute_host(
                self,
                HostBatch {
                    logits,
                    targets: targets.into(),
                    shape,
                    gradient: Some(gradient),
                },
            )
            .await
    }

    /// Records the loss (and gradient, if `inputs.gradient` is set) of device-resident
    /// buffers into the caller's `encoder`; nothing is submitted. After submitting,
    /// [`DeviceOutputs::read`] returns the loss (or the reduced loss stays on the GPU in
    /// [`DeviceOutputs::loss_buffer`]). Targets out of range are detected on the GPU
    /// and reported by the read.
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
        let bindings = Bindings {
            logits: inputs.logits,
            targets: inputs.targets,
            target_type: inputs.target_type,
            gradient: inputs.gradient,
            row_losses: outputs.row_losses_buffer(),
            loss: outputs.loss_buffer(),
            status: outputs.status_buffer(),
        };
        let job = Job {
            shape,
            grad_scale: self.gradient_scale(shape.rows),
            reduce_divisor: self.divisor(shape.rows),
        };
        context.checked(|| {
            context.kernels().record(
                context.device(),
                encoder,
                &bindings,
                job,
                context.max_binding_size(),
                timestamps,
            )
        })?;
        outputs.set_recorded(RecordedCall {
            rows: shape.rows,
            classes: shape.classes,
            target_type: inputs.target_type,
            reduced: job.reduce_divisor.is_some(),
        });
        Ok(())
    }
}

/// The caller's device buffers for [`CrossEntropyLoss::record`].
#[derive(Clone, Copy, Debug)]
pub struct DeviceInputs<'a> {
    /// rows × classes `f32` logits, row-major; needs `STORAGE` usage.
    pub logits: &'a wgpu::Buffer,
    /// One target per row of `target_type`; needs `STORAGE` usage.
    pub targets: &'a wgpu::Buffer,
    /// Element type of `targets`.
    pub target_type: TargetType,
    /// rows × classes.
    pub shape: Shape,
    /// Receives dL/dlogits (rows × classes `f32`) when given; needs `STORAGE` usage.
    pub gradient: Option<&'a wgpu::Buffer>,
}

impl DeviceInputs<'_> {
    fn validate(&self, outputs: &DeviceOutputs) -> Result<()> {
        let shape = self.shape;
        shape.check_logits(shape.elements()?)?;
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
        let logits_bytes = shape.elements()? as u64 * 4;
        check_device_buffer("logits", self.logits, logits_bytes)?;
        check_device_buffer(
            "targets",
            self.targets,
            (shape.rows * self.target_type.size_in_bytes()) as u64,
        )?;
        if let Some(gradient) = self.gradient {
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

impl Backend for Context {
    fn describe(&self) -> String {
        let info = self.adapter_info();
        format!("gpu ({}, {:?})", info.name, info.backend)
    }

    fn compute(&self, loss: &CrossEntropyLoss, batch: HostBatch<'_>) -> Result<Loss> {
        pollster::block_on(self.compute_host(loss, batch))
    }
}

impl Context {
    /// The host-slice door: upload into the workspace, record the same passes as
    /// [`CrossEntropyLoss::record`], copy results out, one submission, one readback.
    pub(crate) async fn compute_host(&self, loss: &CrossEntropyLoss, batch: HostBatch<'_>) -> Result<Loss> {
        batch.validate()?;
        let HostBatch {
            logits,
            targets,
            shape,
            gradient,
        } = batch;
        let mut workspace = self.lock_workspace().await;
        let buffers = workspace.ensure(
            self,
            shape.rows,
            std::mem::size_of_val(logits) as u64,
            targets.as_bytes().len() as u64,
            gradient.is_some(),
        )?;
        let call = self.checked(|| {
            self.queue()
                .write_buffer(buffers.logits, 0, bytemuck::cast_slice(logits));
            self.queue().write_buffer(buffers.targets, 0, targets.as_bytes());
            let mut encoder = self.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent host call"),
            });
            let inputs = DeviceInputs {
                logits: buffers.logits,
                targets: buffers.targets,
                target_type: targets.target_type(),
                shape,
                gradient: buffers.gradient.map(|(device_gradient, _)| device_gradient),
            };
            loss.record(self, &mut encoder, &inputs, buffers.outputs)?;
            let call = RecordedCall {
                rows: shape.rows,
                classes: shape.classes,
                target_type: targets.target_type(),
                reduced: loss.divisor(shape.rows).is_some(),
            };
            buffers.outputs.copy_to_staging(&mut encoder, call);
            if let Some((device_gradient, staging)) = buffers.gradient {
                encoder.copy_buffer_to_buffer(device_gradient, 0, staging, 0, std::mem::size_of_val(logits) as u64);
            }
            self.queue().submit([encoder.finish()]);
            Ok(call)
        })?;
        let gradient = match (buffers.gradient, gradient) {
            (Some((_, staging)), Some(values)) => Some((staging, values)),
            _ => None,
        };
        buffers.outputs.finish_read(self, call, gradient).await
    }
}

/// The CPU backend: the same API on the host's cores (f32, vectorised exp,
/// rows split across threads). The baseline of the benchmarks and the fallback
/// when no adapter exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn compute(&self, loss: &CrossEntropyLoss, batch: HostBatch<'_>) -> Result<Loss> {
        batch.validate()?;
        let HostBatch {
            logits,
            targets,
            shape,
            gradient,
        } = batch;
        let classes = targets.to_class_indices();
        let mut row_losses = vec![0.0f32; shape.rows];
        let scale = loss.gradient_scale(shape.rows);
        cpu::fast::fused_rows(
            logits,
            &classes,
            shape.classes,
            gradient.map(|values| (values, scale)),
            &mut row_losses,
        );
        Ok(match loss.divisor(shape.rows) {
            Some(divisor) => Loss::Reduced((cpu::fast::sum_f64(&row_losses) / f64::from(divisor)) as f32),
            None => Loss::PerRow(row_losses),
        })
    }
}
