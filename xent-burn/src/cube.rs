//! The fused loss on Burn's cube backend over the wgpu runtime: each tensor's
//! storage (wgpu buffer, offset, size) through cubecl's compute client, bound by
//! xent as a buffer slice where Burn put it; xent records into an encoder
//! submitted on Burn's own queue after Burn's pending work, and writes the
//! results straight into tensors Burn allocated (or over the logits).

use burn::backend::DType;
use burn::backend::TensorMetadata;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use xent::{CrossEntropyLoss, DeviceInputs, GradientOutput, LogitType, Reduction, TargetType};

use crate::call::XentCall;
use crate::device::{SharedDevice, shared_device};
use crate::error::{Error, Result};
use crate::ops::{LossAndGradient, XentBackend};
use crate::paths;
use crate::storage::{ReadInput, Storage, byte_count, read_input, runtime_error, storage, target_type};

impl XentBackend for CubeBackend {
    fn xent_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        call: &XentCall,
        with_gradient: bool,
    ) -> Result<LossAndGradient<Self>> {
        let gradient = with_gradient.then_some(KernelUpstream {
            scale: 1.0,
            values: None,
        });
        cross_entropy(logits, targets, call, gradient)
    }
}

/// What xent multiplies the gradient by in the kernel (its `UpstreamGradient`):
/// `scale`, times `values` when given (one `f32`, or one per row for `none`).
pub(crate) struct KernelUpstream {
    pub(crate) scale: f32,
    pub(crate) values: Option<CubeTensor>,
}

/// The loss of `logits` against `targets`, and with `gradient` the gradient
/// multiplied by it.
pub(crate) fn cross_entropy(
    logits: CubeTensor,
    targets: CubeTensor,
    call: &XentCall,
    gradient: Option<KernelUpstream>,
) -> Result<LossAndGradient<CubeBackend>> {
    let (shape, logit_type) = checked_shape(&logits, &targets)?;
    let logit_dtype = logits.dtype;
    let shared = shared_device(&logits.device)?;
    let target_type = target_type(targets.dtype)?;
    let sizes = Sizes::new(shape, logit_type, target_type, call.reduction())?;
    let (scale, values) = match gradient {
        None => (None, None),
        Some(KernelUpstream { scale, values }) => (Some(scale), values),
    };
    let values = values
        .map(|values| checked_upstream(values, shape, call.reduction()))
        .transpose()?;
    let client = logits.client.clone();
    let device = logits.device.clone();
    let loss = client.empty(sizes.loss as usize);
    let targets = into_contiguous(targets);
    let (logits, written) = choose_gradient(into_contiguous(logits), &client, scale.is_some(), sizes.logits)?;
    // Burn's recorded work (the kernels that produced the logits, the copy of
    // them if any) goes to the queue before xent's submission, which the queue
    // then runs after it.
    client.flush().map_err(runtime_error)?;
    let storages = Storages {
        logits: storage(&client, &logits.handle, sizes.logits)?,
        targets: storage(&client, &targets.handle, sizes.targets)?,
        loss: storage(&client, &loss, sizes.loss)?,
        gradient: match &written {
            Written::Separate(handle) => Some(storage(&client, handle, sizes.logits)?),
            Written::Skip | Written::InPlace => None,
        },
        upstream: values
            .as_ref()
            .map(|values| storage(&client, &values.handle, values_bytes(values)))
            .transpose()?,
    };
    let upstream_scale = scale.unwrap_or(1.0);
    let types = (logit_type, target_type);
    record_and_submit(&shared, call, shape, types, &storages, &written, upstream_scale)?;
    drop(storages);
    let gradient_shape = Shape::new([shape.rows, shape.classes]);
    let gradient = match written {
        Written::Skip => None,
        Written::InPlace => Some(logits),
        Written::Separate(handle) => Some(CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            gradient_shape,
            handle,
            logit_dtype,
        )),
    };
    let loss_shape = Shape::new([sizes.loss as usize / 4]);
    let loss = CubeTensor::new_contiguous(client, device, loss_shape, loss, DType::F32);
    Ok(LossAndGradient { loss, gradient })
}

/// Where the gradient goes.
enum Written {
    /// Loss only.
    Skip,
    /// Over the logits tensor returned with it (the caller's, or a copy).
    InPlace,
    /// Into this new tensor, in another wgpu buffer than the logits'.
    Separate(Handle),
}

/// Picks where the gradient goes. In place over the logits when the call owns
/// them (`can_mut`: no other handle, as Burn's in-place kernels check); else a
/// new tensor, unless cubecl's pool put it in the logits' buffer (wgpu cannot
/// bind one buffer read-only and writable in one dispatch): then over a copy of
/// the logits made with Burn's copy kernel.
fn choose_gradient(logits: CubeTensor, client: &Client, wanted: bool, bytes: u64) -> Result<(CubeTensor, Written)> {
    if !wanted {
        return Ok((logits, Written::Skip));
    }
    if logits.can_mut() {
        paths::record(|paths| paths.in_place += 1);
        return Ok((logits, Written::InPlace));
    }
    let gradient = client.empty(bytes as usize);
    let shares_buffer = storage(client, &gradient, bytes)?.buffer == storage(client, &logits.handle, bytes)?.buffer;
    if !shares_buffer {
        paths::record(|paths| paths.new_tensor += 1);
        return Ok((logits, Written::Separate(gradient)));
    }
    drop(gradient);
    paths::record(|paths| paths.copy_in_place += 1);
    Ok((logits.copy(), Written::InPlace))
}

/// Byte sizes of one call's tensors, checked.
struct Sizes {
    logits: u64,
    targets: u64,
    /// 4 for `mean`/`sum`, 4 × rows for `none`.
    loss: u64,
}

impl Sizes {
    fn new(shape: xent::Shape, logit_type: LogitType, target_type: TargetType, reduction: Reduction) -> Result<Self> {
        let logits = shape
            .rows
            .checked_mul(shape.classes)
            .ok_or_else(|| Error::InvalidInput(format!("{} × {} logits", shape.rows, shape.classes)))?;
        let loss_len = match reduction {
            Reduction::None => shape.rows,
            Reduction::Mean | Reduction::Sum => 1,
        };
        Ok(Self {
            logits: byte_count(logits, logit_type.size_in_bytes())?,
            targets: byte_count(shape.rows, target_type.size_in_bytes())?,
            loss: byte_count(loss_len, 4)?,
        })
    }
}

/// rows × classes of 2-d logits with one target per row, and the logits'
/// element type (f32, f16 or bf16; the loss is f32 either way, the gradient
/// has the logits' type).
fn checked_shape(logits: &CubeTensor, targets: &CubeTensor) -> Result<(xent::Shape, LogitType)> {
    let dims = logits.shape();
    let target_dims = targets.shape();
    if dims.num_dims() != 2 || target_dims.num_dims() != 1 || target_dims[0] != dims[0] {
        return Err(Error::InvalidInput(format!(
            "logits must be [rows, classes] and targets [rows]; got {dims:?} and {target_dims:?}"
        )));
    }
    let logit_type = match logits.dtype {
        DType::F32 => LogitType::F32,
        DType::F16 => LogitType::F16,
        DType::BF16 => LogitType::Bf16,
        other => {
            return Err(Error::InvalidInput(format!(
                "logits must be f32, f16 or bf16; got {other:?}"
            )));
        }
    };
    Ok((xent::Shape::new(dims[0], dims[1]), logit_type))
}

/// Contiguous f32 upstream values: one, or one per row for `none`.
fn checked_upstream(values: CubeTensor, shape: xent::Shape, reduction: Reduction) -> Result<CubeTensor> {
    let dims = values.shape();
    let length = (dims.num_dims() == 1).then(|| dims[0]);
    let fits = length == Some(1) || (reduction == Reduction::None && length == Some(shape.rows));
    if !fits || values.dtype != DType::F32 {
        return Err(Error::InvalidInput(format!(
            "upstream values must be f32 [1] (or [{}] for reduction none); got {:?} {dims:?}",
            shape.rows, values.dtype
        )));
    }
    Ok(into_contiguous(values))
}

/// Bytes of a contiguous 1-d f32 tensor.
fn values_bytes(values: &CubeTensor) -> u64 {
    values.shape()[0] as u64 * 4
}

/// The storage of the tensors of one call.
struct Storages {
    logits: Storage,
    targets: Storage,
    loss: Storage,
    /// The new gradient tensor (none when skipped or written in place).
    gradient: Option<Storage>,
    upstream: Option<Storage>,
}

impl Storages {
    /// The buffer the kernel writes, if any.
    fn written<'a>(&'a self, written: &Written) -> Option<&'a wgpu::Buffer> {
        match written {
            Written::Skip => None,
            Written::InPlace => Some(&self.logits.buffer),
            Written::Separate(_) => self.gradient.as_ref().map(|gradient| &gradient.buffer),
        }
    }
}

/// Records the fused loss (and gradient) into one encoder on xent's context,
/// which shares Burn's device and queue, and submits it.
fn record_and_submit(
    shared: &SharedDevice,
    call: &XentCall,
    shape: xent::Shape,
    (logit_type, target_type): (LogitType, TargetType),
    storages: &Storages,
    written: &Written,
    upstream_scale: f32,
) -> Result<()> {
    let context = &shared.context;
    let device = context.device();
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("xent-burn cross-entropy"),
    });
    let written_buffer = storages.written(written);
    let mut staging = shared.staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let targets = read_input(
        device,
        &mut encoder,
        &storages.targets,
        written_buffer,
        &mut staging.targets,
    );
    let upstream = storages
        .upstream
        .as_ref()
        .map(|values| read_input(device, &mut encoder, values, written_buffer, &mut staging.upstream));
    drop(staging);
    let staged = [Some(&targets), upstream.as_ref()];
    if staged.iter().flatten().any(|input| input.is_staged()) {
        paths::record(|paths| paths.staged_reads += 1);
    }
    shared.with_outputs(shape.rows, |outputs| {
        let inputs = DeviceInputs {
            logits: storages.logits.slice(),
            logit_type,
            targets: targets.slice(),
            target_type,
            shape,
            gradient: match (written, &storages.gradient) {
                (Written::InPlace, _) => GradientOutput::InPlace,
                (Written::Separate(_), Some(gradient)) => GradientOutput::Buffer(gradient.slice()),
                _ => GradientOutput::Skip,
            },
            upstream: xent::UpstreamGradient {
                scale: upstream_scale,
                values: upstream.as_ref().map(ReadInput::slice),
            },
        };
        CrossEntropyLoss::with_options(call.options().clone()).record(context, &mut encoder, &inputs, outputs)?;
        let loss_source = match call.reduction() {
            Reduction::None => outputs.row_losses_buffer(),
            Reduction::Mean | Reduction::Sum => outputs.loss_buffer(),
        };
        let loss = &storages.loss;
        encoder.copy_buffer_to_buffer(loss_source, 0, &loss.buffer, loss.offset, loss.bytes);
        context.queue().submit([encoder.finish()]);
        Ok(())
    })
}
