//! Buffer management: the outputs of a recorded call ([`DeviceOutputs`]), the
//! grow-only workspace behind the host-slice calls, and mapped readback.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::input::TargetType;
use crate::loss::Loss;

/// Bytes of the loss block and of the status block at the start of a readback.
const LOSS_BYTES: u64 = 16;
const STATUS_BYTES: u64 = 16;
const HEADER_BYTES: u64 = LOSS_BYTES + STATUS_BYTES;
/// Offsets inside a buffer that is copied or mapped are kept on this boundary.
const BUFFER_ALIGNMENT: u64 = 256;

/// What the last recorded call into a [`DeviceOutputs`] produces, for reading it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordedCall {
    pub rows: usize,
    pub classes: usize,
    pub target_type: TargetType,
    pub reduced: bool,
}

/// Device buffers a recorded loss call writes: the per-row losses, the reduced
/// loss and a status block through which the GPU reports an out-of-range target.
/// Create once per batch size and reuse across steps.
pub struct DeviceOutputs {
    capacity_rows: usize,
    row_losses: wgpu::Buffer,
    loss: wgpu::Buffer,
    status: wgpu::Buffer,
    staging: wgpu::Buffer,
    recorded: std::sync::Mutex<Option<RecordedCall>>,
}

impl std::fmt::Debug for DeviceOutputs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceOutputs")
            .field("capacity_rows", &self.capacity_rows)
            .finish()
    }
}

impl DeviceOutputs {
    /// Outputs for batches of up to `rows` rows.
    pub fn new(context: &Context, rows: usize) -> Result<Self> {
        let row_bytes = (rows.max(1) as u64)
            .checked_mul(4)
            .ok_or_else(|| Error::TooLarge(format!("{rows} rows")))?;
        context.checked(|| {
            let device = context.device();
            let storage = |label, size| {
                create_buffer(
                    device,
                    label,
                    size,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                )
            };
            Ok(Self {
                capacity_rows: rows,
                row_losses: storage("xent row losses", row_bytes),
                loss: storage("xent loss", LOSS_BYTES),
                status: storage("xent status", STATUS_BYTES),
                staging: create_buffer(
                    device,
                    "xent readback",
                    HEADER_BYTES + row_bytes,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                recorded: std::sync::Mutex::new(None),
            })
        })
    }

    /// Rows this instance can hold.
    pub fn capacity_rows(&self) -> usize {
        self.capacity_rows
    }

    /// The per-row losses (`f32`, one per row, unreduced), written by every call.
    pub fn row_losses_buffer(&self) -> &wgpu::Buffer {
        &self.row_losses
    }

    /// The reduced loss (`f32` at offset 0) for reductions `mean` and `sum`.
    pub fn loss_buffer(&self) -> &wgpu::Buffer {
        &self.loss
    }

    /// The status block: word 0 is 0 when every target was valid.
    pub fn status_buffer(&self) -> &wgpu::Buffer {
        &self.status
    }

    pub(crate) fn set_recorded(&self, call: RecordedCall) {
        *self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(call);
    }

    fn recorded(&self) -> Result<RecordedCall> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ok_or_else(|| Error::Readback("nothing was recorded into these outputs".into()))
    }

    /// Reads the last recorded call's results (after its commands were submitted),
    /// blocking. An out-of-range target found on the GPU comes back as
    /// [`Error::TargetOutOfRange`].
    pub fn read(&self, context: &Context) -> Result<Loss> {
        pollster::block_on(self.read_async(context))
    }

    /// Reads the last recorded call's results (after its commands were submitted).
    pub async fn read_async(&self, context: &Context) -> Result<Loss> {
        let call = self.recorded()?;
        context.checked(|| {
            let mut encoder = context
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("xent readback"),
                });
            self.copy_to_staging(&mut encoder, call);
            context.queue().submit([encoder.finish()]);
            Ok(())
        })?;
        self.finish_read(context, call, None).await
    }

    /// Records the copies of the results into the staging buffer.
    pub(crate) fn copy_to_staging(&self, encoder: &mut wgpu::CommandEncoder, call: RecordedCall) {
        encoder.copy_buffer_to_buffer(&self.loss, 0, &self.staging, 0, LOSS_BYTES);
        encoder.copy_buffer_to_buffer(&self.status, 0, &self.staging, LOSS_BYTES, STATUS_BYTES);
        if !call.reduced {
            encoder.copy_buffer_to_buffer(&self.row_losses, 0, &self.staging, HEADER_BYTES, call.rows as u64 * 4);
        }
    }

    /// Maps the staging buffer (and `gradient`'s staging, copying it into the caller's
    /// slice), checks the status block and returns the loss.
    pub(crate) async fn finish_read(
        &self,
        context: &Context,
        call: RecordedCall,
        gradient: Option<(&wgpu::Buffer, &mut [f32])>,
    ) -> Result<Loss> {
        let result_bytes = HEADER_BYTES + if call.reduced { 0 } else { call.rows as u64 * 4 };
        let results = self.staging.slice(..result_bytes);
        let gradient_slice = gradient
            .as_ref()
            .map(|(staging, values)| staging.slice(..std::mem::size_of_val(*values) as u64));
        let mut slices = vec![results];
        slices.extend(gradient_slice);
        map_for_reading(context, &slices).await?;

        let loss = read_loss(&results, call);
        let copied = match (gradient, gradient_slice) {
            (Some((staging, values)), Some(slice)) => {
                let copied = mapped_bytes(&slice).map(|bytes| values.copy_from_slice(bytemuck::cast_slice(&bytes)));
                staging.unmap();
                copied
            }
            _ => Ok(()),
        };
        // Unmapped on every path, errors included, so the outputs stay reusable.
        self.staging.unmap();
        copied?;
        loss
    }
}

/// The loss from the mapped results: the status block first, then the value(s).
fn read_loss(results: &wgpu::BufferSlice<'_>, call: RecordedCall) -> Result<Loss> {
    let bytes = mapped_bytes(results)?;
    let header: &[u32] = bytemuck::cast_slice(&bytes[..HEADER_BYTES as usize]);
    check_status(&header[4..8], call)?;
    Ok(if call.reduced {
        Loss::Reduced(f32::from_bits(header[0]))
    } else {
        Loss::PerRow(bytemuck::cast_slice(&bytes[HEADER_BYTES as usize..]).to_vec())
    })
}

/// Turns the status block into [`Error::TargetOutOfRange`] when a bad target was seen.
fn check_status(words: &[u32], call: RecordedCall) -> Result<()> {
    if words[0] == 0 {
        return Ok(());
    }
    Err(Error::TargetOutOfRange {
        row: (u32::MAX - words[0]) as usize,
        value: call.target_type.value_from_words(words[1], words[2]),
        classes: call.classes,
    })
}

fn mapped_bytes<'a>(slice: &wgpu::BufferSlice<'a>) -> Result<wgpu::BufferView> {
    slice
        .get_mapped_range()
        .map_err(|error| Error::Readback(error.to_string()))
}

/// Maps every slice for reading and waits until all are mapped.
async fn map_for_reading(context: &Context, slices: &[wgpu::BufferSlice<'_>]) -> Result<()> {
    let receivers: Vec<_> = slices
        .iter()
        .map(|slice| {
            let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
            slice.map_async(wgpu::MapMode::Read, move |result| {
                // The receiver outlives the poll below; a failed send has no one to tell.
                let _ = sender.send(result);
            });
            receiver
        })
        .collect();
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|error| Error::Readback(error.to_string()))?;
    for receiver in receivers {
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(Error::Readback(error.to_string())),
            None => return Err(Error::Readback("the map callback never ran".into())),
        }
    }
    Ok(())
}

fn create_buffer(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.div_ceil(BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT,
        usage,
        mapped_at_creation: false,
    })
}

/// A buffer that is replaced by a larger one only when a call needs more room.
struct GrowableBuffer {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

impl GrowableBuffer {
    const fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            label,
            usage,
            buffer: None,
        }
    }

    fn ensure(&mut self, device: &wgpu::Device, size: u64) -> &wgpu::Buffer {
        let too_small = self.buffer.as_ref().is_none_or(|buffer| buffer.size() < size);
        if too_small {
            self.buffer = Some(create_buffer(device, self.label, size, self.usage));
        }
        self.buffer
            .get_or_insert_with(|| create_buffer(device, self.label, size, self.usage))
    }
}

/// Device buffers behind the host-slice calls, kept between calls and replaced
/// only when a call needs more room than the last.
pub(crate) struct Workspace {
    logits: GrowableBuffer,
    targets: GrowableBuffer,
    gradient: GrowableBuffer,
    gradient_staging: GrowableBuffer,
    outputs: Option<DeviceOutputs>,
}

impl Default for Workspace {
    fn default() -> Self {
        let storage_in = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Self {
            logits: GrowableBuffer::new("xent logits", storage_in),
            targets: GrowableBuffer::new("xent targets", storage_in),
            gradient: GrowableBuffer::new(
                "xent gradient",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            gradient_staging: GrowableBuffer::new(
                "xent gradient readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            outputs: None,
        }
    }
}

/// The workspace buffers one host call uses.
pub(crate) struct HostBuffers<'a> {
    pub logits: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    pub gradient: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    pub outputs: &'a DeviceOutputs,
}

impl Workspace {
    /// Buffers for `rows` rows with `logits_bytes` of logits and `target_bytes` of
    /// targets; gradient buffers only when `with_gradient`.
    pub(crate) fn ensure(
        &mut self,
        context: &Context,
        rows: usize,
        logits_bytes: u64,
        target_bytes: u64,
        with_gradient: bool,
    ) -> Result<HostBuffers<'_>> {
        let max_buffer_size = context.limits().max_buffer_size;
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
            self.outputs = Some(DeviceOutputs::new(context, rows)?);
        }
        context.checked(|| {
            let device = context.device();
            self.logits.ensure(device, logits_bytes);
            self.targets.ensure(device, target_bytes);
            if with_gradient {
                self.gradient.ensure(device, logits_bytes);
                self.gradient_staging.ensure(device, logits_bytes);
            }
            Ok(())
        })?;
        let missing = || Error::Gpu("workspace buffer missing after allocation".into());
        let gradient = if with_gradient {
            Some((
                self.gradient.buffer.as_ref().ok_or_else(missing)?,
                self.gradient_staging.buffer.as_ref().ok_or_else(missing)?,
            ))
        } else {
            None
        };
        Ok(HostBuffers {
            logits: self.logits.buffer.as_ref().ok_or_else(missing)?,
            targets: self.targets.buffer.as_ref().ok_or_else(missing)?,
            gradient,
            outputs: self.outputs.as_ref().ok_or_else(missing)?,
        })
    }
}
