//! The host-call workspace: device buffers behind the host-slice calls of every
//! loss, kept between calls and grown when a call needs more room. The
//! [`Context`](crate::Context) owns one.

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::GrowableBuffer;
use crate::gpu::outputs::DeviceOutputs;
use crate::gpu::readback::Wait;
use crate::gpu::upload::{UploadBuffer, word_padded};

/// Device buffers behind the host-slice calls, kept between calls and replaced
/// only when a call needs more room than the last.
pub(crate) struct Workspace {
    logits: GrowableBuffer,
    targets: GrowableBuffer,
    gradient: GrowableBuffer,
    gradient_staging: GrowableBuffer,
    /// The caller's logits and targets are written here, then copied into
    /// `logits` and `targets` inside the call's submission.
    logits_upload: UploadBuffer,
    targets_upload: UploadBuffer,
    outputs: Option<DeviceOutputs>,
    /// The BCE / KL / entropy / probability cross-entropy calls' buffers.
    family: FamilyBuffers,
}

impl Default for Workspace {
    fn default() -> Self {
        let storage_in = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            // COPY_SRC: an in-place call reads its gradient back from here.
            logits: GrowableBuffer::new("xent logits", storage_in | wgpu::BufferUsages::COPY_SRC),
            targets: GrowableBuffer::new("xent targets", storage_in),
            gradient: GrowableBuffer::new(
                "xent gradient",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            gradient_staging: GrowableBuffer::new(
                "xent gradient readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            logits_upload: UploadBuffer::new("xent logits upload"),
            targets_upload: UploadBuffer::new("xent targets upload"),
            outputs: None,
            family: FamilyBuffers::default(),
        }
    }
}

/// The workspace buffers one host call uses.
pub(crate) struct HostBuffers<'a> {
    pub logits: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    /// Mapped for writing, at least as large as `logits` and `targets`' data.
    pub logits_upload: &'a UploadBuffer,
    pub targets_upload: &'a UploadBuffer,
    /// The device gradient (separate-gradient calls only).
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Where the gradient (or the logits overwritten in place) is copied for reading.
    pub gradient_staging: Option<&'a wgpu::Buffer>,
    pub outputs: &'a DeviceOutputs,
}

/// The host buffers of the BCE / KL / entropy / probability cross-entropy
/// calls: the uploaded inputs and targets, the device gradient and its
/// readback, and the outputs the calls record into (which also hold the
/// family's cached parameters, bind groups and partial sums).
pub(crate) struct FamilyBuffers {
    pub(crate) inputs: GrowableBuffer,
    pub(crate) targets: GrowableBuffer,
    pub(crate) gradient: GrowableBuffer,
    pub(crate) gradient_staging: GrowableBuffer,
    pub(crate) outputs: Option<DeviceOutputs>,
}

impl Default for FamilyBuffers {
    fn default() -> Self {
        let input = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            inputs: GrowableBuffer::new("xent family inputs", input),
            targets: GrowableBuffer::new("xent family targets", input),
            gradient: GrowableBuffer::new(
                "xent family gradient",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            gradient_staging: GrowableBuffer::new(
                "xent family gradient readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            outputs: None,
        }
    }
}

impl FamilyBuffers {
    /// Bytes of device memory held.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let outputs = self.outputs.as_ref().map_or(0, DeviceOutputs::allocated_bytes);
        self.inputs.bytes() + self.targets.bytes() + self.gradient.bytes() + self.gradient_staging.bytes() + outputs
    }

    /// Outputs for `values` losses (at least one), replaced only when too small.
    pub(crate) fn outputs(&mut self, gpu: &Gpu, values: usize) -> Result<&DeviceOutputs> {
        let rows = values.max(1);
        if self
            .outputs
            .as_ref()
            .is_none_or(|outputs| outputs.capacity_rows() < rows)
        {
            self.outputs = Some(DeviceOutputs::create(gpu, rows)?);
        }
        self.outputs
            .as_ref()
            .ok_or_else(|| Error::Gpu("family outputs missing after allocation".into()))
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
        let outputs = self.outputs.as_ref().map_or(0, DeviceOutputs::allocated_bytes);
        self.logits.bytes()
            + self.targets.bytes()
            + self.gradient.bytes()
            + self.gradient_staging.bytes()
            + self.logits_upload.bytes()
            + self.targets_upload.bytes()
            + outputs
            + self.family.allocated_bytes()
    }

    /// The family calls' buffers.
    pub(crate) fn family(&mut self) -> &mut FamilyBuffers {
        &mut self.family
    }

    /// Buffers for `rows` rows with `logits_bytes` of logits and `target_bytes` of
    /// targets; a device gradient for `with_gradient` calls that are not `in_place`,
    /// and a readback buffer for both; the upload buffers mapped for writing
    /// (waiting for their mapping where `wait` says).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ensure(
        &mut self,
        gpu: &Gpu,
        rows: usize,
        logits_bytes: u64,
        target_bytes: u64,
        with_gradient: bool,
        in_place: bool,
        wait: Wait,
    ) -> Result<HostBuffers<'_>> {
        let max_buffer_size = gpu.limits().max_buffer_size;
        if logits_bytes > max_buffer_size {
            return Err(Error::TooLarge(format!(
                "{logits_bytes} bytes of logits exceed the adapter's max_buffer_size ({max_buffer_size}); \
                 pass device buffers in smaller batches"
            )));
        }
        if self
            .outputs
            .as_ref()
            .is_none_or(|outputs| outputs.capacity_rows() < rows)
        {
            self.outputs = Some(DeviceOutputs::create(gpu, rows)?);
        }
        let separate_gradient = with_gradient && !in_place;
        let logits_bytes = word_padded(logits_bytes);
        self.logits_upload.make_writable(gpu, logits_bytes, wait).await?;
        self.targets_upload.make_writable(gpu, target_bytes, wait).await?;
        gpu.checked(|| {
            let device = gpu.device();
            self.logits.ensure(device, logits_bytes);
            self.targets.ensure(device, target_bytes);
            if separate_gradient {
                self.gradient.ensure(device, logits_bytes);
            }
            if with_gradient {
                self.gradient_staging.ensure(device, logits_bytes);
            }
            Ok(())
        })?;
        let missing = || Error::Gpu("workspace buffer missing after allocation".into());
        Ok(HostBuffers {
            logits: self.logits.buffer.as_ref().ok_or_else(missing)?,
            targets: self.targets.buffer.as_ref().ok_or_else(missing)?,
            logits_upload: &self.logits_upload,
            targets_upload: &self.targets_upload,
            gradient: if separate_gradient {
                Some(self.gradient.buffer.as_ref().ok_or_else(missing)?)
            } else {
                None
            },
            gradient_staging: if with_gradient {
                Some(self.gradient_staging.buffer.as_ref().ok_or_else(missing)?)
            } else {
                None
            },
            outputs: self.outputs.as_ref().ok_or_else(missing)?,
        })
    }
}
