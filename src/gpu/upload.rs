//! The host calls' upload buffers ([`UploadBuffer`]): a `MAP_WRITE | COPY_SRC`
//! buffer kept between calls and grown only when a call needs more room. A call
//! writes the caller's data (or one piece of it, `transfer.rs`) through its
//! mapping, unmaps it, copies it into the device buffers inside a submission,
//! and maps it again right after that submission; the next use waits for that
//! submission alone (in steady state the previous call's readback already
//! polled it to completion). The workspace holds the targets' and two for the
//! input, which the cross-entropy's and the BCE / KL / entropy family's host
//! doors share (`workspace.rs` says why).
//!
//! Why not `Queue::write_buffer`: wgpu makes a staging buffer of the write's
//! size on every call (4.2 GB for 8192 × 128256 f32 logits), whose pages are
//! touched for the first time on every call, and which
//! [`Context::workspace_bytes`](crate::Context::workspace_bytes) cannot see.
//! Why not `wgpu::util::StagingBelt`: it panics when a chunk cannot be created
//! or mapped (out of memory), keeps every chunk it ever made (a larger call adds
//! one, the smaller ones stay), makes a new chunk instead of waiting when the
//! last one is not mapped again yet (so a repeated call may allocate), and does
//! not tell how many bytes it holds.

use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::{copy_piece_bytes, create_mapped_buffer};
use crate::gpu::readback::{Wait, wait_for_submission};
use rayon::prelude::*;

/// Where the upload buffer's mapping stands.
enum MapState {
    /// Mapped for writing: the call may write into it.
    Mapped,
    /// Unmapped, mapping again once `after` (the submission that copies from
    /// it; `None`: the latest at the wait) is done: the map callback sends its
    /// result to `receiver`.
    Mapping {
        receiver: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
        after: Option<wgpu::SubmissionIndex>,
    },
    /// Unmapped, no mapping asked for (a call stopped between unmapping and
    /// submitting).
    Unmapped,
}

/// A `MAP_WRITE | COPY_SRC` buffer kept mapped between host calls.
pub(crate) struct UploadBuffer {
    label: &'static str,
    buffer: Option<wgpu::Buffer>,
    /// Behind a mutex so that a call can unmap and map again while other
    /// workspace buffers are borrowed.
    state: Mutex<MapState>,
}

impl UploadBuffer {
    pub(crate) const fn new(label: &'static str) -> Self {
        Self {
            label,
            buffer: None,
            state: Mutex::new(MapState::Unmapped),
        }
    }

    /// Bytes of the buffer currently held (0 when none).
    pub(crate) fn bytes(&self) -> u64 {
        self.buffer.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// Makes the buffer hold at least `size` bytes and be mapped for writing:
    /// replaced by a new mapped buffer when too small, else waits (where `wait`
    /// says) for the mapping asked for after the submission that last copied
    /// from it. A buffer whose mapping failed is replaced.
    pub(crate) async fn make_writable(&mut self, gpu: &Gpu, size: u64, wait: Wait) -> Result<()> {
        if self.buffer.as_ref().is_none_or(|buffer| buffer.size() < size) {
            return self.replace(gpu, size);
        }
        if matches!(*self.lock_state(), MapState::Unmapped) {
            // Nothing copies from it: the latest submission is as good as any.
            self.map_again(gpu, None)?;
        }
        let mut mapped = self.try_mapped();
        if mapped.is_none() {
            wait_for_submission(gpu.device(), self.pending_submission(), wait).await?;
            mapped = self.try_mapped();
        }
        match mapped {
            Some(true) => Ok(()),
            // The mapping failed, or its callback was dropped (a lost device
            // reports itself when the new buffer is made).
            Some(false) | None => self.replace(gpu, self.bytes()),
        }
    }

    /// Whether the pending mapping succeeded (`None`: still pending); `Mapped`
    /// once it did.
    fn try_mapped(&self) -> Option<bool> {
        let mut state = self.lock_state();
        let result = match &*state {
            MapState::Mapped => return Some(true),
            MapState::Unmapped => return Some(false),
            MapState::Mapping { receiver, .. } => receiver.try_recv(),
        };
        match result {
            Ok(Ok(())) => {
                *state = MapState::Mapped;
                Some(true)
            }
            Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                *state = MapState::Unmapped;
                Some(false)
            }
            Err(TryRecvError::Empty) => None,
        }
    }

    /// The submission the pending mapping waits for (`None`: none pending).
    fn pending_submission(&self) -> Option<wgpu::SubmissionIndex> {
        match &*self.lock_state() {
            MapState::Mapping { after, .. } => after.clone(),
            MapState::Mapped | MapState::Unmapped => None,
        }
    }

    /// A new buffer of `size` bytes, mapped at creation, in place of the old one.
    fn replace(&mut self, gpu: &Gpu, size: u64) -> Result<()> {
        self.buffer = None;
        let buffer = gpu.checked(|| {
            Ok(create_mapped_buffer(
                gpu.device(),
                self.label,
                size.max(4),
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            ))
        })?;
        self.buffer = Some(buffer);
        *self.lock_state() = MapState::Mapped;
        Ok(())
    }

    /// The buffer; [`Error::Gpu`] before [`UploadBuffer::make_writable`].
    pub(crate) fn buffer(&self) -> Result<&wgpu::Buffer> {
        self.buffer
            .as_ref()
            .ok_or_else(|| Error::Gpu(format!("{} missing after allocation", self.label)))
    }

    /// Writes `bytes` at the start, padded with zeros to whole 4-byte words. The
    /// buffer must be mapped ([`UploadBuffer::make_writable`]) and large enough.
    /// Large writes are split into pieces copied on rayon's threads
    /// ([`copy_piece_bytes`]), each through a view of its own range of the mapping.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<()> {
        if word_padded(bytes.len() as u64) > self.bytes() {
            return Err(Error::Gpu(format!("{} bytes overflow {}", bytes.len(), self.label)));
        }
        let buffer = self.buffer()?;
        let piece = copy_piece_bytes(bytes.len());
        bytes
            .par_chunks(piece)
            .enumerate()
            .try_for_each(|(index, chunk)| self.write_piece(buffer, (index * piece) as u64, chunk))
    }

    /// Writes `bytes` at `offset` (a multiple of the piece size) through a view of
    /// that range, padded with zeros to whole words.
    fn write_piece(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset + word_padded(bytes.len() as u64);
        let mut view = buffer
            .slice(offset..end)
            .get_mapped_range_mut()
            .map_err(|error| Error::Gpu(format!("writing {}: {error}", self.label)))?;
        let mut view = view.slice(..);
        view.slice(..bytes.len()).copy_from_slice(bytes);
        view.slice(bytes.len()..).fill(0);
        Ok(())
    }

    /// Writes `bytes` (padded to whole words), unmaps the buffer, and records the
    /// copy of those words into `destination` at `offset` (a multiple of 4) in
    /// `encoder`. Both host doors upload through here; after submitting, they
    /// call [`UploadBuffer::map_again`].
    pub(crate) fn upload_into(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bytes: &[u8],
        destination: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        self.write(bytes)?;
        self.unmap()?;
        let size = word_padded(bytes.len() as u64);
        if size > 0 {
            encoder.copy_buffer_to_buffer(self.buffer()?, 0, destination, offset, size);
        }
        Ok(())
    }

    /// Unmaps the buffer so that the submission can copy from it.
    pub(crate) fn unmap(&self) -> Result<()> {
        self.buffer()?.unmap();
        *self.lock_state() = MapState::Unmapped;
        Ok(())
    }

    /// Asks for the buffer to be mapped again once `after` (the submission that
    /// copies from it; `None`: the latest) is done; the next
    /// [`UploadBuffer::make_writable`] waits for that submission.
    pub(crate) fn map_again(&self, gpu: &Gpu, after: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let (sender, receiver) = channel();
        gpu.checked(|| {
            self.buffer()?.map_async(wgpu::MapMode::Write, .., move |result| {
                // A receiver dropped with its buffer has no one to tell.
                let _ = sender.send(result);
            });
            Ok(())
        })?;
        *self.lock_state() = MapState::Mapping { receiver, after };
        Ok(())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `bytes` rounded up to whole 4-byte words (16-bit data of odd count).
pub(crate) fn word_padded(bytes: u64) -> u64 {
    bytes.div_ceil(4) * 4
}
