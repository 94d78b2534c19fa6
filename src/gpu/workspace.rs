//! The host-call workspace: device buffers behind the host-slice calls of every
//! loss, kept between calls and grown when a call needs more room. The
//! [`Context`](crate::Context) owns one.
//!
//! The categorical cross-entropy and the BCE / KL / entropy / probability
//! cross-entropy family keep device buffers of their own ([`CallBuffers`]: the
//! family's outputs also cache its kernels' parameters and bind groups), but
//! share the transfer buffers (the targets' upload, and two upload and two
//! readback buffers of at most a piece each for the input and the gradient,
//! `transfer.rs`): one call holds the workspace at a time, so one set serves
//! both, and a program that alternates the two losses at one shape holds the
//! transfer memory once. The family's per-element `f32` targets may grow the
//! targets upload beyond what the cross-entropy's class indices need; it stays
//! grown until [`Context::release_buffers`](crate::Context::release_buffers).

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::GrowableBuffer;
use crate::gpu::outputs::{DeviceOutputs, RecordedCall};
use crate::gpu::readback::Wait;
use crate::gpu::transfer::{Pieces, Readbacks, Uploads};
use crate::gpu::upload::{UploadBuffer, word_padded};
use crate::types::LossOutput;

/// Device buffers behind the host-slice calls, kept between calls and replaced
/// only when a call needs more room than the last.
pub(crate) struct Workspace {
    cross_entropy: CallBuffers,
    /// The BCE / KL / entropy / probability cross-entropy calls' buffers.
    family: CallBuffers,
    /// The caller's input (logits), a piece at a time, and targets are written
    /// here, then copied into the call's device buffers.
    input_uploads: [UploadBuffer; 2],
    targets_upload: UploadBuffer,
    /// The gradient is copied here a piece at a time for reading.
    gradient_readbacks: [GrowableBuffer; 2],
    /// Bytes of a transfer piece ([`ContextOptions::transfer_piece_bytes`](crate::ContextOptions::transfer_piece_bytes)).
    piece_bytes: u64,
}

impl Workspace {
    /// An empty workspace whose transfers move pieces of `piece_bytes`.
    pub(crate) fn new(piece_bytes: u64) -> Self {
        let readback = |label| GrowableBuffer::new(label, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Self {
            cross_entropy: CallBuffers::new(["xent logits", "xent targets", "xent gradient"]),
            family: CallBuffers::new(["xent family inputs", "xent family targets", "xent family gradient"]),
            input_uploads: [
                UploadBuffer::new("xent input upload 0"),
                UploadBuffer::new("xent input upload 1"),
            ],
            targets_upload: UploadBuffer::new("xent targets upload"),
            gradient_readbacks: [
                readback("xent gradient readback 0"),
                readback("xent gradient readback 1"),
            ],
            piece_bytes,
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
/// the device gradient, and the outputs the calls record into.
struct CallBuffers {
    input: GrowableBuffer,
    targets: GrowableBuffer,
    gradient: GrowableBuffer,
    outputs: Option<DeviceOutputs>,
}

impl CallBuffers {
    /// Buffers labelled `[input, targets, gradient]`.
    fn new([input, targets, gradient]: [&'static str; 3]) -> Self {
        let storage_in = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            // COPY_SRC: an in-place call reads its gradient back from here.
            input: GrowableBuffer::new(input, storage_in | wgpu::BufferUsages::COPY_SRC),
            targets: GrowableBuffer::new(targets, storage_in),
            gradient: GrowableBuffer::new(gradient, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC),
            outputs: None,
        }
    }

    /// Bytes of device memory held.
    fn allocated_bytes(&self) -> u64 {
        let outputs = self.outputs.as_ref().map_or(0, DeviceOutputs::allocated_bytes);
        self.input.bytes() + self.targets.bytes() + self.gradient.bytes() + outputs
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
    input_uploads: Uploads<'a>,
    /// Mapped for writing, at least as large as the targets' data.
    targets_upload: &'a UploadBuffer,
    /// The device gradient (separate-gradient calls only).
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Where the gradient (or the input overwritten in place) is copied for
    /// reading, a piece at a time (calls with a gradient only).
    gradient_readbacks: Option<Readbacks<'a>>,
    pub outputs: &'a DeviceOutputs,
}

impl HostBuffers<'_> {
    /// Uploads the caller's input (a piece at a time, `transfer.rs`) and
    /// targets into the device buffers and returns the encoder that holds the
    /// last copies, for the call to record its passes after.
    pub(crate) async fn upload(
        &mut self,
        gpu: &Gpu,
        input: &[u8],
        targets: &[u8],
        wait: Wait,
    ) -> Result<wgpu::CommandEncoder> {
        let mut encoder = self.input_uploads.upload(gpu, input, self.input, wait).await?;
        gpu.checked(|| self.targets_upload.upload_into(&mut encoder, targets, self.targets, 0))?;
        Ok(encoder)
    }

    /// The buffer the gradient is read back from: the device gradient, or in
    /// place the input overwritten by it.
    fn gradient_source(&self) -> &wgpu::Buffer {
        self.gradient.unwrap_or(self.input)
    }

    /// Records the copies of the gradient's first pieces into the readback
    /// buffers (calls with a gradient), submits `encoder` (which copies from
    /// the upload buffers) and asks for the upload buffers to be mapped again
    /// once it is done.
    pub(crate) fn submit(&self, gpu: &Gpu, mut encoder: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        if let Some(readbacks) = &self.gradient_readbacks {
            readbacks.record_first_pieces(&mut encoder, self.gradient_source(), self.input_uploads.bytes);
        }
        let submission = gpu.queue().submit([encoder.finish()]);
        self.input_uploads.submitted(gpu, &submission)?;
        self.targets_upload.map_again(gpu, Some(submission.clone()))?;
        Ok(submission)
    }

    /// Reads back `call`'s results and, into `gradient` (the caller's bytes),
    /// the gradient: the first piece in the results' wait, the others piece by
    /// piece (`transfer.rs`); `submission`: the call's.
    pub(crate) async fn read_back(
        &self,
        gpu: &Gpu,
        call: RecordedCall,
        row_stats: bool,
        gradient: Option<&mut [u8]>,
        submission: wgpu::SubmissionIndex,
        wait: Wait,
    ) -> Result<LossOutput> {
        let (Some(readbacks), Some(destination)) = (&self.gradient_readbacks, gradient) else {
            return self.outputs.finish_read(gpu, call, row_stats, None, wait).await;
        };
        let source = self.gradient_source();
        let first = readbacks.first_piece(destination);
        let output = self
            .outputs
            .finish_read(gpu, call, row_stats, Some(first), wait)
            .await?;
        readbacks.read_rest(gpu, source, destination, submission, wait).await?;
        Ok(output)
    }
}

impl Workspace {
    /// Drops every buffer (and the bind groups cached with the outputs); the next
    /// call creates them again.
    pub(crate) fn release(&mut self) {
        *self = Self::new(self.piece_bytes);
    }

    /// Bytes of device memory the workspace holds.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.cross_entropy.allocated_bytes()
            + self.family.allocated_bytes()
            + self.input_uploads.iter().map(UploadBuffer::bytes).sum::<u64>()
            + self.targets_upload.bytes()
            + self.gradient_readbacks.iter().map(GrowableBuffer::bytes).sum::<u64>()
    }

    /// `caller`'s buffers for `request`: a device gradient for calls with a
    /// gradient that are not in place, and the readback buffers for both; the
    /// targets' upload buffer mapped for writing (waiting for its mapping where
    /// `wait` says; the input's are made writable piece by piece as it uploads).
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
        self.targets_upload
            .make_writable(gpu, request.target_bytes, wait)
            .await?;
        // One piece needs one readback buffer.
        let host_input_bytes = request.input_bytes as usize;
        let pieces = Pieces::new(host_input_bytes, self.piece_bytes);
        let readbacks_used = if pieces.count() > 1 { 2 } else { 1 };
        if request.with_gradient {
            gpu.checked(|| {
                for readback in &mut self.gradient_readbacks[..readbacks_used] {
                    readback.ensure(gpu.device(), pieces.buffer_bytes());
                }
                Ok(())
            })?;
        }
        let missing = || Error::Gpu("workspace buffer missing after allocation".into());
        let separate_gradient = request.with_gradient && !request.in_place;
        let first_readback = &self.gradient_readbacks[0];
        let second_readback = &self.gradient_readbacks[readbacks_used - 1];
        Ok(HostBuffers {
            input: buffers.input.buffer.as_ref().ok_or_else(missing)?,
            targets: buffers.targets.buffer.as_ref().ok_or_else(missing)?,
            input_uploads: Uploads {
                buffers: &mut self.input_uploads,
                piece: self.piece_bytes,
                bytes: host_input_bytes,
            },
            targets_upload: &self.targets_upload,
            gradient: if separate_gradient {
                Some(buffers.gradient.buffer.as_ref().ok_or_else(missing)?)
            } else {
                None
            },
            gradient_readbacks: if request.with_gradient {
                Some(Readbacks {
                    buffers: [
                        first_readback.buffer.as_ref().ok_or_else(missing)?,
                        second_readback.buffer.as_ref().ok_or_else(missing)?,
                    ],
                    piece: self.piece_bytes,
                })
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
