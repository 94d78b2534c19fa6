//! Buffer management: the outputs of a recorded call ([`DeviceOutputs`]), the
//! grow-only workspace behind the host-slice calls, and mapped readback.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernels::{ROW_PLANES, RecordCache};
use crate::types::{LogitsMut, TargetType};
use crate::types::{Loss, LossOutput};

/// Bytes of the scalars block ([loss, z_loss, divisor, unused]) and of the status
/// block at the start of a readback.
const SCALARS_BYTES: u64 = 16;
const STATUS_BYTES: u64 = 16;
const HEADER_BYTES: u64 = SCALARS_BYTES + STATUS_BYTES;
/// Offsets inside a buffer that is copied or mapped are kept on this boundary.
const BUFFER_ALIGNMENT: u64 = 256;

/// Where a readback waits for the GPU to finish and run the map callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Polls the device on the calling thread: the blocking doors, which block
    /// anyway, without the latency of a hop to another thread.
    Inline,
    /// Polls the device on a helper thread while the readback future is pending,
    /// so that the `*_async` doors leave the caller's executor free to run other
    /// tasks; the future is woken when the map callbacks have run.
    Background,
}

/// The planes of the per-row outputs, in buffer order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowPlane {
    Losses = 0,
    ZTerms = 1,
    Lse = 2,
    Argmax = 3,
}

/// What the last recorded call into a [`DeviceOutputs`] produces, for reading it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordedCall {
    pub rows: usize,
    pub classes: usize,
    pub target_type: TargetType,
    pub reduced: bool,
    pub has_z_loss: bool,
}

impl RecordedCall {
    /// The planes a readback copies: per-row losses (and z-terms) when unreduced,
    /// lse and argmax when asked for.
    fn planes(&self, row_stats: bool) -> Vec<RowPlane> {
        let mut planes = Vec::new();
        if !self.reduced {
            planes.push(RowPlane::Losses);
            if self.has_z_loss {
                planes.push(RowPlane::ZTerms);
            }
        }
        if row_stats {
            planes.extend([RowPlane::Lse, RowPlane::Argmax]);
        }
        planes
    }
}

/// Device buffers a recorded loss call writes: per-row outputs, the reduced loss
/// and a status block through which the GPU reports an out-of-range target, plus
/// the class weights it uploads. Create once per batch size and reuse across steps.
/// [`DeviceInputs`](crate::DeviceInputs) has an example of a whole call.
///
/// ```no_run
/// let context = xent::Context::new()?;
/// let outputs = xent::DeviceOutputs::new(&context, 4096)?; // for batches of up to 4096 rows
/// assert_eq!(outputs.capacity_rows(), 4096);
/// // Each step: `loss.record(&context, &mut encoder, &inputs, &outputs)?`, submit, then
/// // `outputs.read(&context)?` (or `read_all` for the lse and argmax too).
/// # Ok::<(), xent::Error>(())
/// ```
pub struct DeviceOutputs {
    capacity_rows: usize,
    row_outputs: wgpu::Buffer,
    scalars: wgpu::Buffer,
    status: wgpu::Buffer,
    weights: std::sync::Mutex<GrowableBuffer>,
    staging: wgpu::Buffer,
    recorded: std::sync::Mutex<Option<RecordedCall>>,
    record_cache: std::sync::Mutex<Option<RecordCache>>,
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
        let plane_bytes = (rows.max(1) as u64)
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
                row_outputs: storage("xent row outputs", ROW_PLANES * plane_bytes),
                scalars: storage("xent scalars", SCALARS_BYTES),
                status: storage("xent status", STATUS_BYTES),
                weights: std::sync::Mutex::new(GrowableBuffer::new(
                    "xent class weights",
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                )),
                staging: create_buffer(
                    device,
                    "xent readback",
                    HEADER_BYTES + ROW_PLANES * plane_bytes,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                recorded: std::sync::Mutex::new(None),
                record_cache: std::sync::Mutex::new(None),
            })
        })
    }

    /// Rows this instance can hold.
    pub fn capacity_rows(&self) -> usize {
        self.capacity_rows
    }

    /// Per-row outputs in four planes of [`DeviceOutputs::capacity_rows`] entries:
    /// losses (`f32`, unreduced, at offset 0), z-terms (`f32`), lse (`f32`) and
    /// argmax (`u32`), each plane `4 × capacity_rows` bytes after the previous.
    pub fn row_losses_buffer(&self) -> &wgpu::Buffer {
        &self.row_outputs
    }

    /// `[loss, z_loss, divisor, unused]` as `f32`: the reduced loss (z-term
    /// included) and z-loss for reductions `mean` and `sum`, and the divisor of the mean.
    pub fn loss_buffer(&self) -> &wgpu::Buffer {
        &self.scalars
    }

    /// The status block: word 0 is 0 when every target was valid.
    pub fn status_buffer(&self) -> &wgpu::Buffer {
        &self.status
    }

    /// Uploads `weights` (if any) into the weights buffer and lends it to `use_weights`.
    pub(crate) fn with_weights<T>(
        &self,
        context: &Context,
        weights: Option<&[f32]>,
        use_weights: impl FnOnce(Option<&wgpu::Buffer>) -> Result<T>,
    ) -> Result<T> {
        let Some(weights) = weights else {
            return use_weights(None);
        };
        let mut buffer = self.weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let buffer = buffer.ensure(context.device(), std::mem::size_of_val(weights) as u64);
        context.queue().write_buffer(buffer, 0, bytemuck::cast_slice(weights));
        use_weights(Some(buffer))
    }

    /// Bytes of device memory these outputs hold.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let weights = self.weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.row_outputs.size() + self.scalars.size() + self.status.size() + self.staging.size() + weights.bytes()
    }

    /// The bind groups and parameters of the last call recorded into these outputs.
    pub(crate) fn record_cache(&self) -> &std::sync::Mutex<Option<RecordCache>> {
        &self.record_cache
    }

    pub(crate) fn set_recorded(&self, call: RecordedCall) {
        *self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(call);
    }

    pub(crate) fn recorded(&self) -> Result<RecordedCall> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ok_or_else(|| Error::Readback("nothing was recorded into these outputs".into()))
    }

    /// Reads the last recorded call's results (after its commands were submitted),
    /// blocking. An out-of-range target found on the GPU comes back as
    /// [`Error::TargetOutOfRange`].
    pub fn read(&self, context: &Context) -> Result<Loss> {
        Ok(pollster::block_on(self.read_all_waiting(context, false, Wait::Inline))?.loss)
    }

    /// Reads the last recorded call's results (after its commands were submitted).
    /// The future is pending while the GPU works (a helper thread waits for it),
    /// so other tasks of the caller's executor run meanwhile.
    pub async fn read_async(&self, context: &Context) -> Result<Loss> {
        Ok(self.read_all_waiting(context, false, Wait::Background).await?.loss)
    }

    /// Reads every output of the last recorded call: loss, z-loss, and with
    /// `row_stats` the per-row lse and argmax (blocking).
    pub fn read_all(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        pollster::block_on(self.read_all_waiting(context, row_stats, Wait::Inline))
    }

    /// [`DeviceOutputs::read_all`], awaiting the readback: the future is pending
    /// while the GPU works (a helper thread waits for it).
    pub async fn read_all_async(&self, context: &Context, row_stats: bool) -> Result<LossOutput> {
        self.read_all_waiting(context, row_stats, Wait::Background).await
    }

    async fn read_all_waiting(&self, context: &Context, row_stats: bool, wait: Wait) -> Result<LossOutput> {
        let call = self.recorded()?;
        context.checked(|| {
            let mut encoder = context
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("xent readback"),
                });
            self.copy_to_staging(&mut encoder, call, row_stats);
            context.queue().submit([encoder.finish()]);
            Ok(())
        })?;
        self.finish_read(context, call, row_stats, None, wait).await
    }

    /// Records the copies of the results into the staging buffer: the header, then
    /// each wanted plane's first `rows` entries at `HEADER_BYTES + plane · rows · 4`.
    pub(crate) fn copy_to_staging(&self, encoder: &mut wgpu::CommandEncoder, call: RecordedCall, row_stats: bool) {
        encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.staging, 0, SCALARS_BYTES);
        encoder.copy_buffer_to_buffer(&self.status, 0, &self.staging, SCALARS_BYTES, STATUS_BYTES);
        let plane_bytes = call.rows as u64 * 4;
        let capacity_bytes = self.capacity_rows as u64 * 4;
        for plane in call.planes(row_stats) {
            let index = plane as u64;
            encoder.copy_buffer_to_buffer(
                &self.row_outputs,
                index * capacity_bytes,
                &self.staging,
                HEADER_BYTES + index * plane_bytes,
                plane_bytes,
            );
        }
    }

    /// Maps the staging buffer (and `gradient`'s staging, copying it into the caller's
    /// slice), checks the status block and returns the outputs.
    pub(crate) async fn finish_read(
        &self,
        context: &Context,
        call: RecordedCall,
        row_stats: bool,
        gradient: Option<(&wgpu::Buffer, LogitsMut<'_>)>,
        wait: Wait,
    ) -> Result<LossOutput> {
        let result_bytes = HEADER_BYTES + ROW_PLANES * call.rows as u64 * 4;
        let results = self.staging.slice(..result_bytes);
        let gradient_slice = gradient.as_ref().map(|(staging, values)| {
            let bytes = (values.len() * values.logit_type().size_in_bytes()) as u64;
            staging.slice(..bytes.div_ceil(4) * 4)
        });
        let mut slices = vec![results];
        slices.extend(gradient_slice);
        // Unmapped on every path (errors, or this future dropped while waiting) so
        // that the outputs stay reusable; declared before the views, dropped after.
        let mut mapped = vec![&self.staging];
        mapped.extend(gradient.as_ref().map(|(staging, _)| *staging));
        let _unmap = UnmapOnDrop {
            context,
            buffers: mapped,
        };
        map_for_reading(context, &slices, wait).await?;

        let output = read_output(&results, call, row_stats);
        if let (Some((_, mut values)), Some(slice)) = (gradient, gradient_slice) {
            let bytes = mapped_bytes(&slice)?;
            let destination = values.as_bytes_mut();
            let length = destination.len();
            destination.copy_from_slice(&bytes[..length]);
        }
        output
    }
}

/// Unmaps its buffers when dropped. Inside xent's error scopes: a buffer whose
/// mapping failed or never started is not mapped, which wgpu reports as an error
/// that concerns no one once the readback has given up.
pub(crate) struct UnmapOnDrop<'a> {
    pub context: &'a Context,
    pub buffers: Vec<&'a wgpu::Buffer>,
}

impl Drop for UnmapOnDrop<'_> {
    fn drop(&mut self) {
        // Ignored: the readback's own result already says what went wrong.
        let _ = self.context.checked(|| {
            for buffer in &self.buffers {
                buffer.unmap();
            }
            Ok(())
        });
    }
}

/// The outputs from the mapped results: the status block first, then the values.
fn read_output(results: &wgpu::BufferSlice<'_>, call: RecordedCall, row_stats: bool) -> Result<LossOutput> {
    let bytes = mapped_bytes(results)?;
    let words: &[u32] = bytemuck::cast_slice(&bytes);
    check_status(&words[4..8], call)?;
    let plane_words = |plane: RowPlane| {
        let start = HEADER_BYTES as usize / 4 + plane as usize * call.rows;
        &words[start..start + call.rows]
    };
    let floats = |plane: RowPlane| {
        plane_words(plane)
            .iter()
            .map(|&bits| f32::from_bits(bits))
            .collect::<Vec<f32>>()
    };
    let (loss, z_loss) = if call.reduced {
        (
            Loss::Reduced(f32::from_bits(words[0])),
            Loss::Reduced(f32::from_bits(words[1])),
        )
    } else {
        let z_terms = if call.has_z_loss {
            floats(RowPlane::ZTerms)
        } else {
            vec![0.0; call.rows]
        };
        (Loss::PerRow(floats(RowPlane::Losses)), Loss::PerRow(z_terms))
    };
    Ok(LossOutput {
        loss,
        z_loss: call.has_z_loss.then_some(z_loss),
        lse: row_stats.then(|| floats(RowPlane::Lse)),
        argmax: row_stats.then(|| plane_words(RowPlane::Argmax).to_vec()),
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

/// Maps every slice for reading and waits until all are mapped, polling the
/// device where `wait` says. The map requests run inside xent's error scopes.
pub(crate) async fn map_for_reading(context: &Context, slices: &[wgpu::BufferSlice<'_>], wait: Wait) -> Result<()> {
    let receivers = context.checked(|| {
        Ok(slices
            .iter()
            .map(|slice| {
                let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
                slice.map_async(wgpu::MapMode::Read, move |result| {
                    // A receiver dropped with its future has no one to tell.
                    let _ = sender.send(result);
                });
                receiver
            })
            .collect::<Vec<_>>())
    })?;
    match wait {
        Wait::Inline => poll_until_done(context.device())?,
        Wait::Background => poll_in_background(context.device()).await?,
    }
    for receiver in receivers {
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(Error::Readback(error.to_string())),
            None => return Err(Error::Readback("the map callback never ran".into())),
        }
    }
    Ok(())
}

/// Blocks until the device's latest submission is done and its callbacks ran.
fn poll_until_done(device: &wgpu::Device) -> Result<()> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(drop)
        .map_err(|error| Error::Readback(error.to_string()))
}

/// [`poll_until_done`] on a helper thread: the returned future is pending until
/// that poll returns (the map callbacks have then run), and nothing spins.
async fn poll_in_background(device: &wgpu::Device) -> Result<()> {
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    let device = device.clone();
    std::thread::Builder::new()
        .name("xent readback poll".into())
        .spawn(move || {
            // The receiver is gone if the readback was dropped; the poll still ran.
            let _ = sender.send(poll_until_done(&device));
        })
        .map_err(|error| Error::Readback(format!("starting the poll thread failed: {error}")))?;
    receiver.receive().await.unwrap_or_else(|| {
        Err(Error::Readback(
            "the poll thread stopped before the device was polled".into(),
        ))
    })
}

pub(crate) fn create_buffer(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.div_ceil(BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT,
        usage,
        mapped_at_creation: false,
    })
}

/// A buffer holding `contents` (padded to whole 4-byte words): wgpu's
/// `create_buffer_init` without its panic when the buffer could not be created
/// (out of memory, a lost device). That error goes to the caller's error scope.
pub(crate) fn create_buffer_with(
    device: &wgpu::Device,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (contents.len() as u64).div_ceil(4).max(1) * 4,
        usage,
        mapped_at_creation: true,
    });
    // An invalid buffer has no mapping: nothing to fill, its error is already raised.
    if let Ok(mut view) = buffer.slice(..).get_mapped_range_mut() {
        view.slice(..contents.len()).copy_from_slice(contents);
    }
    buffer.unmap();
    buffer
}

/// A buffer that is replaced by a larger one only when a call needs more room.
pub(crate) struct GrowableBuffer {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

impl GrowableBuffer {
    pub(crate) const fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            label,
            usage,
            buffer: None,
        }
    }

    /// Bytes of the buffer currently held (0 when none).
    pub(crate) fn bytes(&self) -> u64 {
        self.buffer.as_ref().map_or(0, wgpu::Buffer::size)
    }

    pub(crate) fn ensure(&mut self, device: &wgpu::Device, size: u64) -> &wgpu::Buffer {
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
            outputs: None,
        }
    }
}

/// The workspace buffers one host call uses.
pub(crate) struct HostBuffers<'a> {
    pub logits: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    /// The device gradient (separate-gradient calls only).
    pub gradient: Option<&'a wgpu::Buffer>,
    /// Where the gradient (or the logits overwritten in place) is copied for reading.
    pub gradient_staging: Option<&'a wgpu::Buffer>,
    pub outputs: &'a DeviceOutputs,
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
        self.logits.bytes() + self.targets.bytes() + self.gradient.bytes() + self.gradient_staging.bytes() + outputs
    }

    /// Buffers for `rows` rows with `logits_bytes` of logits and `target_bytes` of
    /// targets; a device gradient for `with_gradient` calls that are not `in_place`,
    /// and a readback buffer for both.
    pub(crate) fn ensure(
        &mut self,
        context: &Context,
        rows: usize,
        logits_bytes: u64,
        target_bytes: u64,
        with_gradient: bool,
        in_place: bool,
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
        let separate_gradient = with_gradient && !in_place;
        let allocated = context.checked(|| {
            let device = context.device();
            self.logits.ensure(device, logits_bytes);
            self.targets.ensure(device, target_bytes);
            if separate_gradient {
                self.gradient.ensure(device, logits_bytes);
            }
            if with_gradient {
                self.gradient_staging.ensure(device, logits_bytes);
            }
            Ok(())
        });
        context.note_workspace_size(self);
        allocated?;
        let missing = || Error::Gpu("workspace buffer missing after allocation".into());
        Ok(HostBuffers {
            logits: self.logits.buffer.as_ref().ok_or_else(missing)?,
            targets: self.targets.buffer.as_ref().ok_or_else(missing)?,
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
