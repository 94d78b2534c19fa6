//! The host-call workspace: device buffers behind the host-slice calls of every
//! loss, kept between calls and grown when a call needs more room. The
//! [`Context`](crate::Context) owns one.
//!
//! The categorical cross-entropy and the BCE / KL / entropy / probability
//! cross-entropy family keep device buffers of their own ([`CallBuffers`]: the
//! family's outputs also cache its kernels' parameters and bind groups), but
//! share the two upload buffers ("input" and "targets", [`UploadBuffer`]): one
//! call holds the workspace at a time, so one pair serves both, and a program
//! that alternates the two losses at one shape holds the upload memory once. The
//! family's per-element `f32` targets may grow the targets upload beyond what
//! the cross-entropy's class indices need; it stays grown until
//! [`Context::release_buffers`](crate::Context::release_buffers).

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::GrowableBuffer;
use crate::gpu::outputs::DeviceOutputs;
use crate::gpu::readback::Wait;
use crate::gpu::upload::{UploadBuffer, word_padded};

/// Device buffers behind the host-slice calls, kept between calls and replaced
/// only when a call needs more room than the last.
pub(crate) struct Workspace {
    cross_entropy: CallBuffers,
    /// The BCE / KL / entropy / probability cross-entropy calls' buffers.
    family: CallBuffers,
    /// The caller's input (logits) and targets are written here, then copied
    /// into the call's device buffers inside its submission.
    input_upload: UploadBuffer,
    targets_upload: UploadBuffer,
}

impl Default for Workspace {
    fn default() -> Self {
        Self {
            cross_entropy: CallBuffers::new(["xent logits", "xent targets", "xent gradient", "xent gradient readback"]),
            family: CallBuffers::new([
                "xent family inputs",
                "xent family targets",
                "xent family gradient",
                "xent family gradient readback",
            ]),
            input_upload: UploadBuffer::new("xent input upload"),
            targets_upload: UploadBuffer::new("xent targets upload"),
        }
    }
}

/// Which loss's device buffers a host call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    CrossEntropy,
    /// BCE, KL, entropy, probability cross-entropy.
    Family,
}

/// What one host call needs room for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostRequest {
    /// Per-row (or per-element) results the call outputs.
    pub values: usize,
    /// Bytes of the caller's input (logits), before padding to whole words.
    pub input_bytes: u64,
    /// Bytes of the caller's targets (whole words).
    pub target_bytes: u64,
    /// Whether the gradient is read back...
    pub with_gradient: bool,
    /// ... from the input's own buffer (overwritten in place) rather than a
    /// gradient buffer of its own.
    pub in_place: bool,
}

/// The device buffers of one loss's host calls: the uploaded input and targets,
/// the device gradient and its readback, and the outputs the calls record into.
struct CallBuffers {
    input: GrowableBuffer,
    targets: GrowableBuffer,
    gradient: GrowableBuffer,
    gradient_staging: GrowableBuffer,
    outputs: Option<DeviceOutputs>,
}

impl CallBuffers {
    /// Buffers labelled `[input, targets, gradient, gradient readback]`.
    fn new([input, targets, gradient, staging]: [&'static str; 4]) -> Self {
        let storage_in = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            // COPY_SRC: an in-place call reads its gradient back from here.
            input: GrowableBuffer::new(input, storage_in | wgpu::BufferUsages::COPY_SRC),
            targets: GrowableBuffer::new(targets, storage_in),
            gradient: GrowableBuffer::new(gradient, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC),
            gradient_staging: GrowableBuffer::new(staging, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            outputs: None,
        }
    }

    /// Bytes of device memory held.
    fn allocated_bytes(&self) -> u64 {
        let outputs = self.outputs.as_ref().map_or(0, DeviceOutputs::allocated_bytes);
        self.input.bytes() + self.targets.bytes() + self.gradient.bytes() + self.gradient_staging.bytes() + outputs
    }

    /// Grows the buffers to `request` (the input's bytes padded to whole words);
    /// outputs for at least one value, replaced only when too small.
    fn ensure(&mut self, gpu: &Gpu, request: &HostRequest, input_bytes: u64) -> Result<()> {
        let values = request.values.max(1);
        if self
            .outputs
            .as_ref()
            .is_none_or(|outputs| outputs.capacity_rows() < values)
        {
            self.outputs = Some(DeviceOutputs::create(gpu, values)?);
        }
        gpu.checked(|| {
            let device = gpu.device();
            self.input.ensure(device, input_bytes);
            // At least a word: a binding is never empty.
            self.targets.ensure(device, request.target_bytes.max(4));
            if request.with_gradient && !request.in_place {
                self.gradient.ensure(device, input_bytes);
            }
            if request.with_gradient {
                self.gradient_staging.ensure(device, input_bytes);
            }
            Ok(())
        })
    }
}

/// The workspace buffers one host call uses.
pub(crate) struct HostBuffers<'a> {
    /// The device input (logits), at least the input's bytes padded to words.
    pub input: &'a wgpu::Buffer,
    /// The device targets, at least a word.
    pub targets: &'a wgpu::Buffer,
    /// Mapped for writing, at least as large as the input and targets' data.
    input_upload: &'a UploadBuffer,
    targets_upload: &'a UploadBuffer,
    /// The device gradient (separate-gradient calls only).
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Where the gradient (or the input overwritten in place) is copied for reading.
    pub gradient_staging: Option<&'a wgpu::Buffer>,
    pub outputs: &'a DeviceOutputs,
}

impl HostBuffers<'_> {
    /// Writes the caller's input and targets into the mapped upload buffers,
    /// unmaps them, and records their copies into the device buffers in `encoder`
    /// (before the passes recorded after this).
    pub(crate) fn upload(&self, encoder: &mut wgpu::CommandEncoder, input: &[u8], targets: &[u8]) -> Result<()> {
        self.input_upload.upload_into(encoder, input, self.input)?;
        self.targets_upload.upload_into(encoder, targets, self.targets)
    }

    /// Submits `encoder` (which copies from the upload buffers) and asks for the
    /// upload buffers to be mapped again for the next call.
    pub(crate) fn submit(&self, gpu: &Gpu, encoder: wgpu::CommandEncoder) -> Result<()> {
        gpu.queue().submit([encoder.finish()]);
        self.input_upload.map_again(gpu)?;
        self.targets_upload.map_again(gpu)
    }
}

impl Workspace {
    /// Drops every buffer (and the bind groups cached with the outputs); the next
    /// call creates them again.
    pub(crate) fn release(&mut self) {
        *self = Self::default();
    }

    /// Bytes of device memory the workspace holds.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.cross_entropy.allocated_bytes()
            + self.family.allocated_bytes()
            + self.input_upload.bytes()
            + self.targets_upload.bytes()
    }

    /// `caller`'s buffers for `request`: a device gradient for calls with a
    /// gradient that are not in place, and a readback buffer for both; the upload
    /// buffers mapped for writing (waiting for their mapping where `wait` says).
    /// Input or targets larger than the adapter's `max_buffer_size` are
    /// [`Error::TooLarge`].
    pub(crate) async fn ensure(
        &mut self,
        gpu: &Gpu,
        caller: Caller,
        request: &HostRequest,
        wait: Wait,
    ) -> Result<HostBuffers<'_>> {
        let input_bytes = word_padded(request.input_bytes);
        check_buffer_size(gpu, input_bytes, "input")?;
        check_buffer_size(gpu, request.target_bytes, "targets")?;
        let buffers = match caller {
            Caller::CrossEntropy => &mut self.cross_entropy,
            Caller::Family => &mut self.family,
        };
        buffers.ensure(gpu, request, input_bytes)?;
        self.input_upload.make_writable(gpu, input_bytes, wait).await?;
        self.targets_upload
            .make_writable(gpu, request.target_bytes, wait)
            .await?;
        let missing = || Error::Gpu("workspace buffer missing after allocation".into());
        let separate_gradient = request.with_gradient && !request.in_place;
        Ok(HostBuffers {
            input: buffers.input.buffer.as_ref().ok_or_else(missing)?,
            targets: buffers.targets.buffer.as_ref().ok_or_else(missing)?,
            input_upload: &self.input_upload,
            targets_upload: &self.targets_upload,
            gradient: if separate_gradient {
                Some(buffers.gradient.buffer.as_ref().ok_or_else(missing)?)
            } else {
                None
            },
            gradient_staging: if request.with_gradient {
                Some(buffers.gradient_staging.buffer.as_ref().ok_or_else(missing)?)
            } else {
                None
            },
            outputs: buffers.outputs.as_ref().ok_or_else(missing)?,
        })
    }
}

/// [`Error::TooLarge`] when `bytes` of `what` exceed the adapter's `max_buffer_size`.
fn check_buffer_size(gpu: &Gpu, bytes: u64, what: &str) -> Result<()> {
    let max_buffer_size = gpu.limits().max_buffer_size;
    if bytes > max_buffer_size {
        return Err(Error::TooLarge(format!(
            "{bytes} bytes of {what} exceed the adapter's max_buffer_size ({max_buffer_size}); \
             pass device buffers in smaller batches"
        )));
    }
    Ok(())
}
