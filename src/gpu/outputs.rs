//! The outputs of a recorded cross-entropy call ([`DeviceOutputs`]): per-row
//! outputs, the reduced loss, the status block, the class weights, and their
//! readback. The public doors that take a [`Context`](crate::Context) are in
//! `device_call.rs`; everything here takes the [`Gpu`] under it.

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::kernels::cross_entropy::{ROW_PLANES, RecordCache, row_planes, status_words};
use crate::gpu::kernels::family_record::FamilyRecordCache;
use crate::gpu::memory::{GrowableBuffer, create_buffer, create_buffer_with};
use crate::gpu::readback::{UnmapOnDrop, Wait, map_for_reading, mapped_bytes};
use crate::gpu::transfer::copy_out;
use crate::gpu::upload::word_padded;
use crate::types::TargetType;
use crate::types::{Loss, LossOutput};

/// Bytes of the scalars block ([loss, z_loss, divisor, unused]) and of the status
/// block at the start of a readback.
const SCALARS_BYTES: u64 = 16;
const STATUS_BYTES: u64 = status_words::STATUS_WORDS as u64 * 4;
const HEADER_BYTES: u64 = SCALARS_BYTES + STATUS_BYTES;
/// Byte offset of the divisor in the scalars block.
const DIVISOR_OFFSET: u64 = 8;
/// Distinct stamps a recording copies into the status block (word 3), so that a
/// readback can tell whether the last recording ran; byte offset of that word.
const STAMPS: u32 = 64;
const STAMP_OFFSET: u64 = status_words::STATUS_STAMP as u64 * 4;
/// The planes of the per-row outputs, in buffer order (the kernels' `row_planes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowPlane {
    Losses = row_planes::PLANE_LOSS as isize,
    ZTerms = row_planes::PLANE_Z as isize,
    Lse = row_planes::PLANE_LSE as isize,
    Argmax = row_planes::PLANE_ARGMAX as isize,
    /// A bad row's raw target words (written for bad rows only, read on the error path).
    TargetLow = row_planes::PLANE_TARGET_LOW as isize,
    TargetHigh = row_planes::PLANE_TARGET_HIGH as isize,
    /// 16-bit rows' gradient halves in words that straddle a row's boundary
    /// (scratch of the straddling-word pass). This plane and the two above
    /// also hold bf16 N-d rows' gradient sums for the gradient-word pass, in
    /// rows whose target is valid (`PLANE_ROW_MAX` and the next two).
    EdgeHalves = row_planes::PLANE_EDGE_HALVES as isize,
}

// Every plane has its variant, the last one last.
const _: () = assert!(RowPlane::EdgeHalves as u64 + 1 == ROW_PLANES);

/// Planes a readback copies at most (losses to argmax): the staging buffer's size.
const READ_PLANES: u64 = RowPlane::Argmax as u64 + 1;

/// What a recorded call into a [`DeviceOutputs`] produces, for reading it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallLayout {
    pub rows: usize,
    pub classes: usize,
    pub target_type: TargetType,
    pub reduced: bool,
    pub has_z_loss: bool,
}

/// The last call recorded into a [`DeviceOutputs`]
/// ([`DeviceOutputs::set_recorded`]): what it produces, and the stamp its
/// recording copies into the status block's word 3, which the readback checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordedCall {
    pub layout: CallLayout,
    pub stamp: u32,
}

impl CallLayout {
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
/// [`DeviceInputs`](crate::DeviceInputs) has an example of a whole call. The
/// family losses ([`FamilyInputs`](crate::FamilyInputs)) record into the same
/// outputs: the reduced loss, or with reduction `none` one loss per row
/// (entropy, probability cross-entropy) or per element (BCE, KL: the outputs
/// then need `rows × classes` of capacity).
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
    /// The [`Gpu::identity`] of the context that made them: another context is
    /// refused (its device would look the buffers up by ids of another device:
    /// a panic inside wgpu, or silently other buffers).
    gpu_identity: u64,
    row_outputs: wgpu::Buffer,
    scalars: wgpu::Buffer,
    status: wgpu::Buffer,
    /// The stamps 1..=STAMPS, one word each, copied into the status block by each recording.
    stamps: wgpu::Buffer,
    /// Recordings so far (the next stamp is `1 + recordings % STAMPS`).
    recordings: std::sync::atomic::AtomicU32,
    weights: std::sync::Mutex<GrowableBuffer>,
    staging: wgpu::Buffer,
    recorded: std::sync::Mutex<Option<RecordedCall>>,
    /// The status block's count of repaired split-row slices, as the last read found it.
    repaired_slices: std::sync::Mutex<Option<u32>>,
    record_cache: std::sync::Mutex<Option<RecordCache>>,
    /// The same for the BCE / KL / entropy family, with its partial-sum scratch.
    family_cache: std::sync::Mutex<FamilyRecordCache>,
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
    /// Outputs for batches of up to `rows` rows (the door is
    /// [`DeviceOutputs::new`]).
    pub(crate) fn create(gpu: &Gpu, rows: usize) -> Result<Self> {
        let plane_bytes = (rows.max(1) as u64)
            .checked_mul(4)
            .ok_or_else(|| Error::TooLarge(format!("{rows} rows")))?;
        gpu.checked(|| {
            let device = gpu.device();
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
                gpu_identity: gpu.identity(),
                row_outputs: storage("xent row outputs", ROW_PLANES * plane_bytes),
                scalars: storage("xent scalars", SCALARS_BYTES),
                status: storage("xent status", STATUS_BYTES),
                stamps: create_buffer_with(
                    device,
                    "xent stamps",
                    bytemuck::cast_slice(&(1..=STAMPS).collect::<Vec<u32>>()),
                    wgpu::BufferUsages::COPY_SRC,
                ),
                recordings: std::sync::atomic::AtomicU32::new(0),
                weights: std::sync::Mutex::new(GrowableBuffer::new(
                    "xent class weights",
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                )),
                staging: create_buffer(
                    device,
                    "xent readback",
                    HEADER_BYTES + READ_PLANES * plane_bytes,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                recorded: std::sync::Mutex::new(None),
                repaired_slices: std::sync::Mutex::new(None),
                record_cache: std::sync::Mutex::new(None),
                family_cache: std::sync::Mutex::new(FamilyRecordCache::default()),
            })
        })
    }

    /// Rows this instance can hold.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// assert_eq!(xent::DeviceOutputs::new(&context, 100)?.capacity_rows(), 100);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn capacity_rows(&self) -> usize {
        self.capacity_rows
    }

    /// Per-row outputs in seven planes of [`DeviceOutputs::capacity_rows`] entries:
    /// losses (`f32`, unreduced, at offset 0), z-terms (`f32`), lse (`f32`),
    /// argmax (`u32`), then planes 4 and 5: the low and high 32-bit words of
    /// the raw target (`i64`; the value and its sign for `i32`; the value and 0
    /// for `u32`) of a row whose class target was out of range, unspecified for
    /// other rows; plane 6 is the kernels' scratch (16-bit gradient halves at
    /// row boundaries). Each plane is `4 × capacity_rows` bytes after the previous.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// let outputs = xent::DeviceOutputs::new(&context, 1024)?;
    /// assert_eq!(outputs.row_losses_buffer().size(), 7 * 4 * 1024);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn row_losses_buffer(&self) -> &wgpu::Buffer {
        &self.row_outputs
    }

    /// `[loss, z_loss, divisor, unused]` as `f32`: the reduced loss (z-term
    /// included) and z-loss for reductions `mean` and `sum`, and the divisor of the mean.
    ///
    /// ```no_run
    /// # use wgpu::util::DeviceExt;
    /// # use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// # use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    /// # let context = Context::new()?;
    /// # let storage = |contents: &[u8]| {
    /// #     let usage = wgpu::BufferUsages::STORAGE;
    /// #     context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// # };
    /// # let logits = storage(bytemuck::cast_slice(&[0.0f32, 2.0, 0.0, 0.0]));
    /// # let targets = storage(bytemuck::cast_slice(&[1u32, 0]));
    /// # let inputs = DeviceInputs {
    /// #     logits: logits.slice(..),
    /// #     logit_type: LogitType::F32,
    /// #     targets: targets.slice(..),
    /// #     target_type: TargetType::U32,
    /// #     shape: Shape::new(2, 2),
    /// #     gradient: GradientOutput::Skip,
    /// #     upstream: UpstreamGradient::ONE,
    /// # };
    /// // Record the mean loss of rows (0, 2) → 1 and (0, 0) → 0, then submit:
    /// let outputs = DeviceOutputs::new(&context, 2)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]);
    /// let expected = ((-2f32).exp().ln_1p() + 2f32.ln()) / 2.0;
    /// // The loss stays on the GPU for the next kernel; here it is copied out to check it.
    /// let readable = context.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None,
    ///     size: 16,
    ///     usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// encoder.copy_buffer_to_buffer(outputs.loss_buffer(), 0, &readable, 0, 16);
    /// context.queue().submit([encoder.finish()]);
    /// readable.slice(..).map_async(wgpu::MapMode::Read, |_| ());
    /// context.device().poll(wgpu::PollType::wait_indefinitely()).unwrap();
    /// let view = readable.slice(..).get_mapped_range().expect("mapped");
    /// let scalars: &[f32] = bytemuck::cast_slice(&view);
    /// assert!((scalars[0] - expected).abs() < 1e-6);
    /// assert_eq!(scalars[2], 2.0); // the mean's divisor: two rows
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn loss_buffer(&self) -> &wgpu::Buffer {
        &self.scalars
    }

    /// The status block (4 words): word 0 is 0 when every target was valid,
    /// else `u32::MAX` minus the first row whose class target was out of range
    /// (that row's target words are in planes 4 and 5 of
    /// [`row_losses_buffer`](Self::row_losses_buffer)); word 1 counts the
    /// split-row kernel's repaired slices ([`repaired_slices`](Self::repaired_slices));
    /// word 3 is the last recording's stamp, which a readback checks (results
    /// read before that recording ran are an [`Error::Readback`]); word 2 is unused.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// let outputs = xent::DeviceOutputs::new(&context, 1024)?;
    /// assert_eq!(outputs.status_buffer().size(), 256); // the 16-byte block, in a buffer rounded up to 256 bytes
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn status_buffer(&self) -> &wgpu::Buffer {
        &self.status
    }

    /// Slices of the split-row kernel ([`RowSplit`](crate::RowSplit)) that
    /// gave up waiting for the rest of their row's statistics and were finished
    /// by its repair dispatch, which reads their logits a second time, in the
    /// call that the last read of these outputs read back: 0 when the split
    /// kernel did not run or every slice found its row's statistics in time;
    /// `None` before the first read. A diagnostic of the split kernel on an
    /// adapter: where a row's slices run side by side it stays near 0 of the
    /// call's `rows ×` [`Context::split_row_slices`](crate::Context::split_row_slices).
    ///
    /// ```no_run
    /// # let context = xent::Context::new()?;
    /// let outputs = xent::DeviceOutputs::new(&context, 1024)?;
    /// assert_eq!(outputs.repaired_slices(), None); // nothing read yet
    /// // … record a call into `outputs`, submit, `outputs.read(&context)?` …
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn repaired_slices(&self) -> Option<u32> {
        *self
            .repaired_slices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Uploads `weights` (if any) into the weights buffer and lends it to `use_weights`.
    pub(crate) fn with_weights<T>(
        &self,
        gpu: &Gpu,
        weights: Option<&[f32]>,
        use_weights: impl FnOnce(Option<&wgpu::Buffer>) -> Result<T>,
    ) -> Result<T> {
        let Some(weights) = weights else {
            return use_weights(None);
        };
        let mut buffer = self.weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let buffer = buffer.ensure(gpu.device(), std::mem::size_of_val(weights) as u64);
        gpu.queue().write_buffer(buffer, 0, bytemuck::cast_slice(weights));
        use_weights(Some(buffer))
    }

    /// Bytes of device memory these outputs hold.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let weights = self.weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let family = self
            .family_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.row_outputs.size()
            + self.scalars.size()
            + self.status.size()
            + self.stamps.size()
            + self.staging.size()
            + weights.bytes()
            + family.allocated_bytes()
    }

    /// The bind groups and parameters of the last call recorded into these outputs.
    pub(crate) fn record_cache(&self) -> &std::sync::Mutex<Option<RecordCache>> {
        &self.record_cache
    }

    /// The family's partial-sum scratch and the last family call recorded into these outputs.
    pub(crate) fn family_cache(&self) -> &std::sync::Mutex<FamilyRecordCache> {
        &self.family_cache
    }

    /// Remembers a call of `layout` as the last one recorded into these outputs,
    /// with the next stamp, and records into `encoder` (after the call's kernels,
    /// which clear the status block) the copy of that stamp into the status
    /// block's word 3, which the readback checks: results read before `encoder`
    /// ran are refused, not passed off as its own.
    pub(crate) fn set_recorded(&self, encoder: &mut wgpu::CommandEncoder, layout: CallLayout) {
        let recordings = self.recordings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let index = recordings % STAMPS;
        encoder.copy_buffer_to_buffer(&self.stamps, u64::from(index) * 4, &self.status, STAMP_OFFSET, 4);
        let call = RecordedCall {
            layout,
            stamp: index + 1,
        };
        *self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(call);
    }

    pub(crate) fn recorded(&self) -> Result<RecordedCall> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ok_or_else(|| Error::Readback("nothing was recorded into these outputs".into()))
    }

    /// Writes a mean's divisor into the scalars (word 2) ahead of the next
    /// submission, for a call recorded with `Job::given_divisor`.
    pub(crate) fn write_divisor(&self, gpu: &Gpu, divisor: f32) {
        gpu.queue()
            .write_buffer(&self.scalars, DIVISOR_OFFSET, bytemuck::bytes_of(&divisor));
    }

    /// An error unless these outputs were made by the context of `gpu`.
    pub(crate) fn check_device(&self, gpu: &Gpu) -> Result<()> {
        if self.gpu_identity != gpu.identity() {
            return Err(Error::InvalidOption(
                "these DeviceOutputs were made by another context (another device); make them with the context \
                 that records and reads them"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Copies the last recorded call's results out and reads them, waiting where `wait` says.
    pub(crate) async fn read_all_waiting(&self, gpu: &Gpu, row_stats: bool, wait: Wait) -> Result<LossOutput> {
        self.check_device(gpu)?;
        let call = self.recorded()?;
        gpu.checked(|| {
            let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent readback"),
            });
            self.copy_to_staging(&mut encoder, call, row_stats);
            gpu.queue().submit([encoder.finish()]);
            Ok(())
        })?;
        self.finish_read(gpu, call, row_stats, None, wait).await
    }

    /// Records the copies of the results into the staging buffer: the header, then
    /// each wanted plane's first `rows` entries at `HEADER_BYTES + plane · rows · 4`.
    pub(crate) fn copy_to_staging(&self, encoder: &mut wgpu::CommandEncoder, call: RecordedCall, row_stats: bool) {
        encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.staging, 0, SCALARS_BYTES);
        encoder.copy_buffer_to_buffer(&self.status, 0, &self.staging, SCALARS_BYTES, STATUS_BYTES);
        let plane_bytes = call.layout.rows as u64 * 4;
        let capacity_bytes = self.capacity_rows as u64 * 4;
        for plane in call.layout.planes(row_stats) {
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

    /// Maps the staging buffer (and `gradient`'s readback buffer, copying its
    /// start into the bytes given: a host call's gradient, or the first piece
    /// of it, `transfer.rs`), checks the status block and returns the outputs; after a bad
    /// target, [`Error::TargetOutOfRange`] with its words read by
    /// [`bad_target_error`](Self::bad_target_error).
    pub(crate) async fn finish_read(
        &self,
        gpu: &Gpu,
        call: RecordedCall,
        row_stats: bool,
        gradient: Option<(&wgpu::Buffer, &mut [u8])>,
        wait: Wait,
    ) -> Result<LossOutput> {
        let result_bytes = HEADER_BYTES + READ_PLANES * call.layout.rows as u64 * 4;
        let results = self.staging.slice(..result_bytes);
        // Nothing to map for an empty gradient.
        let gradient = gradient.filter(|(_, values)| !values.is_empty());
        let gradient_slice = gradient
            .as_ref()
            .map(|(staging, values)| staging.slice(..word_padded(values.len() as u64)));
        let mut slices = vec![results];
        slices.extend(gradient_slice);
        // Unmapped on every path (errors, or this future dropped while waiting) so
        // that the outputs stay reusable; declared before the views, dropped after.
        let mut mapped = vec![&self.staging];
        mapped.extend(gradient.as_ref().map(|(staging, _)| *staging));
        let unmap = UnmapOnDrop { gpu, buffers: mapped };
        map_for_reading(gpu, &slices, wait).await?;

        let (output, repaired_slices) = read_output(&results, call, row_stats)?;
        *self
            .repaired_slices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(repaired_slices);
        if let (Some((_, values)), Some(slice)) = (gradient, gradient_slice) {
            copy_out(&mapped_bytes(&slice)?, values);
        }
        match output {
            Results::Output(output) => Ok(output),
            Results::BadTarget { row } => {
                // The staging buffer is read again for the target's words.
                drop(unmap);
                Err(self.bad_target_error(gpu, call, row, wait).await?)
            }
        }
    }

    /// [`Error::TargetOutOfRange`] for `row`, the first bad row of `call`: the
    /// row kernel left its raw target words in the `TargetLow` / `TargetHigh`
    /// planes, which one small copy brings into the staging buffer's first 8
    /// bytes, mapped: a second readback on the error path only.
    async fn bad_target_error(&self, gpu: &Gpu, call: RecordedCall, row: usize, wait: Wait) -> Result<Error> {
        if row >= call.layout.rows {
            return Err(Error::Readback(format!(
                "the status block names row {row} of a call of {} rows",
                call.layout.rows
            )));
        }
        let capacity_bytes = self.capacity_rows as u64 * 4;
        gpu.checked(|| {
            let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent bad target readback"),
            });
            for (word, plane) in [RowPlane::TargetLow, RowPlane::TargetHigh].into_iter().enumerate() {
                let source = plane as u64 * capacity_bytes + row as u64 * 4;
                encoder.copy_buffer_to_buffer(&self.row_outputs, source, &self.staging, word as u64 * 4, 4);
            }
            gpu.queue().submit([encoder.finish()]);
            Ok(())
        })?;
        let words = self.staging.slice(..8);
        // Declared before the view, dropped after it.
        let _unmap = UnmapOnDrop {
            gpu,
            buffers: vec![&self.staging],
        };
        map_for_reading(gpu, &[words], wait).await?;
        let bytes = mapped_bytes(&words)?;
        let [low, high]: [u32; 2] = bytemuck::pod_read_unaligned(&bytes[..8]);
        Ok(Error::TargetOutOfRange {
            row,
            value: call.layout.target_type.value_from_words(low, high),
            classes: call.layout.classes,
        })
    }
}

/// What the mapped results hold: the outputs, or the first row whose class
/// target was out of range.
enum Results {
    Output(LossOutput),
    BadTarget { row: usize },
}

/// The outputs from the mapped results (the status block first, then the
/// values) and the status block's count of repaired split-row slices.
fn read_output(results: &wgpu::BufferSlice<'_>, call: RecordedCall, row_stats: bool) -> Result<(Results, u32)> {
    let bytes = mapped_bytes(results)?;
    let words: &[u32] = bytemuck::cast_slice(&bytes);
    let status = &words[SCALARS_BYTES as usize / 4..HEADER_BYTES as usize / 4];
    let repaired_slices = status[status_words::STATUS_REPAIRED_SLICES as usize];
    if status[status_words::STATUS_STAMP as usize] != call.stamp {
        return Err(Error::Readback(
            "the commands last recorded into these outputs were not submitted (or were submitted before an \
             earlier recording's): submit that encoder before reading"
                .into(),
        ));
    }
    if let Some(row) = bad_row(status) {
        return Ok((Results::BadTarget { row }, repaired_slices));
    }
    let plane_words = |plane: RowPlane| {
        let start = HEADER_BYTES as usize / 4 + plane as usize * call.layout.rows;
        &words[start..start + call.layout.rows]
    };
    let floats = |plane: RowPlane| {
        plane_words(plane)
            .iter()
            .map(|&bits| f32::from_bits(bits))
            .collect::<Vec<f32>>()
    };
    let (loss, z_loss) = if call.layout.reduced {
        (
            Loss::Reduced(f32::from_bits(words[0])),
            Loss::Reduced(f32::from_bits(words[1])),
        )
    } else {
        let z_terms = if call.layout.has_z_loss {
            floats(RowPlane::ZTerms)
        } else {
            vec![0.0; call.layout.rows]
        };
        (Loss::PerRow(floats(RowPlane::Losses)), Loss::PerRow(z_terms))
    };
    let output = LossOutput {
        loss,
        z_loss: call.layout.has_z_loss.then_some(z_loss),
        lse: row_stats.then(|| floats(RowPlane::Lse)),
        argmax: row_stats.then(|| plane_words(RowPlane::Argmax).to_vec()),
    };
    Ok((Results::Output(output), repaired_slices))
}

/// The first bad row the status block names (`u32::MAX - row`, 0 when every
/// target was valid).
fn bad_row(status: &[u32]) -> Option<usize> {
    match status[status_words::STATUS_FIRST_BAD_ROW as usize] {
        0 => None,
        encoded => Some((u32::MAX - encoded) as usize),
    }
}
