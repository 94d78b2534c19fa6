//! The fused loss on Burn's cube backend over the wgpu runtime: the raw wgpu
//! buffers of the (contiguous) tensors through cubecl's compute client, xent
//! recording into an encoder submitted on Burn's own queue after Burn's pending
//! work, and the results written straight into tensors Burn allocated.

use burn::backend::DType;
use burn::backend::TensorMetadata;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use xent::{
    CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Reduction, TargetType, UpstreamGradient,
};

use crate::call::XentCall;
use crate::device::{SharedDevice, shared_device};
use crate::error::{Error, Result};
use crate::ops::{LossAndGradient, XentBackend};

impl XentBackend for CubeBackend {
    fn xent_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        call: &XentCall,
        with_gradient: bool,
    ) -> Result<LossAndGradient<Self>> {
        let shape = checked_shape(&logits, &targets)?;
        let shared = shared_device(&logits.device)?;
        let target_type = target_type(targets.dtype)?;
        let logits = into_contiguous(logits);
        let targets = into_contiguous(targets);
        let client = logits.client.clone();
        let loss_len = match call.reduction() {
            Reduction::None => shape.rows,
            Reduction::Mean | Reduction::Sum => 1,
        };
        let logit_bytes = byte_count(shape.rows * shape.classes)?;
        let loss = client.empty(byte_count(loss_len)? as usize);
        let gradient = with_gradient.then(|| client.empty(logit_bytes as usize));
        // Burn's recorded work (the kernels that produced the logits) goes to the
        // queue before xent's submission, which the queue then runs after it.
        client.flush().map_err(runtime_error)?;
        let buffers = TensorBuffers {
            logits: storage(&client, &logits.handle)?,
            targets: storage(&client, &targets.handle)?,
            loss: storage(&client, &loss)?,
            gradient: gradient.as_ref().map(|handle| storage(&client, handle)).transpose()?,
        };
        record_and_submit(&shared, call, shape, target_type, &buffers)?;
        drop(buffers);
        let device = logits.device.clone();
        let gradient = gradient.map(|handle| {
            CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                Shape::new([shape.rows, shape.classes]),
                handle,
                DType::F32,
            )
        });
        let loss = CubeTensor::new_contiguous(client, device, Shape::new([loss_len]), loss, DType::F32);
        Ok(LossAndGradient { loss, gradient })
    }
}

/// rows × classes of 2-d logits with one target per row, f32 logits.
fn checked_shape(logits: &CubeTensor, targets: &CubeTensor) -> Result<xent::Shape> {
    let dims = logits.shape();
    let target_dims = targets.shape();
    if dims.num_dims() != 2 || target_dims.num_dims() != 1 || target_dims[0] != dims[0] {
        return Err(Error::InvalidInput(format!(
            "logits must be [rows, classes] and targets [rows]; got {dims:?} and {target_dims:?}"
        )));
    }
    if logits.dtype != DType::F32 {
        return Err(Error::InvalidInput(format!(
            "logits must be f32 (f16/bf16 are not wired yet); got {:?}",
            logits.dtype
        )));
    }
    Ok(xent::Shape::new(dims[0], dims[1]))
}

/// xent's name for Burn's integer element type.
fn target_type(dtype: DType) -> Result<TargetType> {
    match dtype {
        DType::I64 => Ok(TargetType::I64),
        DType::I32 => Ok(TargetType::I32),
        DType::U32 => Ok(TargetType::U32),
        other => Err(Error::InvalidInput(format!(
            "targets must be i64, i32 or u32 class indices; got {other:?}"
        ))),
    }
}

/// Bytes of `count` f32 values, checked.
fn byte_count(count: usize) -> Result<u64> {
    (count as u64)
        .checked_mul(4)
        .ok_or_else(|| Error::InvalidInput(format!("{count} values do not fit a buffer")))
}

fn runtime_error(error: impl std::fmt::Debug) -> Error {
    Error::Runtime(format!("{error:?}"))
}

/// The wgpu buffer and offset of one tensor's storage.
struct Storage {
    buffer: wgpu::Buffer,
    offset: u64,
    /// cubecl's `ManagedResource`: while held, cubecl neither frees nor reuses
    /// the allocation.
    _guard: Box<dyn std::any::Any>,
}

/// The storage behind a cubecl handle, through the wgpu server of the client.
fn storage(client: &Client, handle: &Handle) -> Result<Storage> {
    let managed = client
        .get_resource::<WgpuServer<AutoCompiler>>(handle.clone())
        .map_err(runtime_error)?;
    let resource = managed.resource();
    Ok(Storage {
        buffer: resource.buffer.clone(),
        offset: resource.offset,
        _guard: Box::new(managed),
    })
}

/// The storage of the four tensors of one call.
struct TensorBuffers {
    logits: Storage,
    targets: Storage,
    loss: Storage,
    gradient: Option<Storage>,
}

/// Records the fused loss (and gradient) into one encoder on xent's context,
/// which shares Burn's device and queue, and submits it.
fn record_and_submit(
    shared: &SharedDevice,
    call: &XentCall,
    shape: xent::Shape,
    target_type: TargetType,
    buffers: &TensorBuffers,
) -> Result<()> {
    let context = &shared.context;
    let device = context.device();
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("xent-burn cross-entropy"),
    });
    let logit_bytes = byte_count(shape.rows * shape.classes)?;
    let target_bytes = (shape.rows as u64)
        .checked_mul(target_type.size_in_bytes() as u64)
        .ok_or_else(|| Error::InvalidInput("targets do not fit a buffer".into()))?;
    let logits = copy_to_offset_zero(device, &mut encoder, &buffers.logits, logit_bytes, "logits");
    let targets = copy_to_offset_zero(device, &mut encoder, &buffers.targets, target_bytes, "targets");
    let gradient = buffers.gradient.as_ref().map(|resource| match resource.offset {
        0 => OutputBuffer::InPlace(resource.buffer.clone()),
        _ => OutputBuffer::Staged(scratch_buffer(device, logit_bytes, "gradient")),
    });
    let mut outputs = shared.outputs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if outputs
        .as_ref()
        .is_none_or(|outputs| outputs.capacity_rows() < shape.rows)
    {
        *outputs = Some(DeviceOutputs::new(context, shape.rows)?);
    }
    let outputs = outputs.as_ref().ok_or_else(|| Error::Runtime("no outputs".into()))?;
    let inputs = DeviceInputs {
        logits: logits.slice(..),
        logit_type: LogitType::F32,
        targets: targets.slice(..),
        target_type,
        shape,
        gradient: match &gradient {
            None => GradientOutput::Skip,
            Some(OutputBuffer::InPlace(buffer) | OutputBuffer::Staged(buffer)) => {
                GradientOutput::Buffer(buffer.slice(..))
            }
        },
        upstream: UpstreamGradient::ONE,
    };
    CrossEntropyLoss::with_options(call.options().clone()).record(context, &mut encoder, &inputs, outputs)?;
    let (loss_source, loss_bytes) = match call.reduction() {
        Reduction::None => (outputs.row_losses_buffer(), byte_count(shape.rows)?),
        Reduction::Mean | Reduction::Sum => (outputs.loss_buffer(), 4),
    };
    let loss = &buffers.loss;
    encoder.copy_buffer_to_buffer(loss_source, 0, &loss.buffer, loss.offset, loss_bytes);
    if let (Some(OutputBuffer::Staged(staged)), Some(target)) = (&gradient, &buffers.gradient) {
        encoder.copy_buffer_to_buffer(staged, 0, &target.buffer, target.offset, logit_bytes);
    }
    context.queue().submit([encoder.finish()]);
    Ok(())
}

/// Where xent writes the gradient: the tensor's own buffer when its storage
/// starts at offset 0, else a buffer of ours copied into place afterwards.
enum OutputBuffer {
    InPlace(wgpu::Buffer),
    Staged(wgpu::Buffer),
}

/// A buffer holding `bytes` bytes of `resource` at offset 0: the resource's own
/// buffer when its storage starts there, else a copy recorded into `encoder`.
///
/// Stopgap until xent's `DeviceInputs` takes buffer slices (buffer, offset,
/// size): cubecl pools allocations, so a tensor usually sits at an offset inside
/// a larger buffer, which xent cannot bind yet. This function (and the staged
/// gradient above) goes away then.
fn copy_to_offset_zero(
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    resource: &Storage,
    bytes: u64,
    label: &'static str,
) -> wgpu::Buffer {
    if resource.offset == 0 {
        return resource.buffer.clone();
    }
    let copy = scratch_buffer(device, bytes, label);
    encoder.copy_buffer_to_buffer(&resource.buffer, resource.offset, &copy, 0, bytes);
    copy
}

/// A storage buffer of `bytes` bytes (at least 4) that copies go in and out of.
fn scratch_buffer(device: &wgpu::Device, bytes: u64, label: &'static str) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}
