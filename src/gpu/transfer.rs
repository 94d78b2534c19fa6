//! Host transfers in pieces: a host-slice call moves its input in and its
//! gradient out through two mapped buffers each way, one piece of at most
//! [`ContextOptions::transfer_piece_bytes`](crate::ContextOptions::transfer_piece_bytes)
//! at a time, so that the host's copy of one piece into (or out of) a mapping
//! runs while the device copies the next (or the previous) piece over the bus,
//! instead of before (or after) all of it. The buffers hold two pieces each
//! way, not the whole batch twice.
//!
//! Upload: piece `i` goes through upload buffer `i % 2`. Every piece but the
//! last is copied in a submission of its own; the last piece and the targets go
//! into the call's encoder, before its passes (queue order lands every earlier
//! piece first). Making upload buffer `i % 2` writable waits for the submission
//! of piece `i − 2` only, so piece `i − 1`'s copy keeps the device busy while
//! the host writes piece `i`.
//!
//! Readback: the call's submission also copies the gradient's first two pieces
//! into the two readback buffers. Piece 0 is read with the results (one wait);
//! then the buffer that held piece `j − 1` takes piece `j + 1` in a submission of
//! its own before the host reads piece `j`, which waits for the submission that
//! copied piece `j` only.
//!
//! A call within one piece (most calls) is one submission with one wait, as
//! before: upload, passes, the results' and the gradient's readback copies.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;
use crate::gpu::memory::copy_piece_bytes;
use crate::gpu::readback::{UnmapOnDrop, Wait, map_after, mapped_bytes};
use crate::gpu::upload::{UploadBuffer, word_padded};
use rayon::prelude::*;

/// Bytes of each transfer piece of a host call by default
/// ([`ContextOptions::transfer_piece_bytes`](crate::ContextOptions::transfer_piece_bytes)):
/// big enough that a submission per piece costs little beside its copy, small
/// enough that two pieces each way hold little memory.
///
/// ```
/// use xent::{ContextOptions, DEFAULT_TRANSFER_PIECE_BYTES};
///
/// assert_eq!(ContextOptions::default().transfer_piece_bytes, DEFAULT_TRANSFER_PIECE_BYTES);
/// assert_eq!(DEFAULT_TRANSFER_PIECE_BYTES, 64 << 20);
/// ```
pub const DEFAULT_TRANSFER_PIECE_BYTES: u64 = 64 << 20;
/// A piece is a multiple of this many bytes (copy offsets keep wgpu's 4-byte
/// alignment, mapped ranges its 8-byte one; buffers are made in 256-byte steps).
pub(crate) const TRANSFER_PIECE_ALIGNMENT: u64 = 256;

/// [`Error::InvalidOption`] unless `bytes` is a positive multiple of
/// [`TRANSFER_PIECE_ALIGNMENT`].
pub(crate) fn check_piece_bytes(bytes: u64) -> Result<u64> {
    if bytes == 0 || !bytes.is_multiple_of(TRANSFER_PIECE_ALIGNMENT) {
        return Err(Error::InvalidOption(format!(
            "transfer_piece_bytes {bytes} must be a positive multiple of {TRANSFER_PIECE_ALIGNMENT}"
        )));
    }
    Ok(bytes)
}

/// The pieces of `bytes` bytes of host data, `piece` bytes each but the last.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pieces {
    bytes: usize,
    piece: usize,
}

impl Pieces {
    pub(crate) fn new(bytes: usize, piece: u64) -> Self {
        Self {
            bytes,
            piece: usize::try_from(piece).unwrap_or(usize::MAX).max(1),
        }
    }

    /// At least one (an empty input is one empty piece).
    pub(crate) fn count(&self) -> usize {
        self.bytes.div_ceil(self.piece).max(1)
    }

    /// Bytes of piece `index` in the host data.
    pub(crate) fn range(&self, index: usize) -> Range<usize> {
        let start = (index * self.piece).min(self.bytes);
        start..(start + self.piece).min(self.bytes)
    }

    /// Bytes of the largest piece, padded to whole words: what each buffer holds.
    pub(crate) fn buffer_bytes(&self) -> u64 {
        word_padded(self.piece.min(self.bytes) as u64)
    }
}

/// The two upload buffers the input's pieces take in turn.
pub(crate) struct Uploads<'a> {
    pub buffers: &'a mut [UploadBuffer; 2],
    pub piece: u64,
    /// Bytes of the input the call uploads.
    pub bytes: usize,
}

impl Uploads<'_> {
    fn pieces(&self) -> Pieces {
        Pieces::new(self.bytes, self.piece)
    }

    /// Which of the buffers takes the last piece.
    fn last_buffer(&self) -> usize {
        (self.pieces().count() - 1) % 2
    }

    /// Uploads `input` (of [`Uploads::bytes`]) into `destination` piece by piece, every piece but the
    /// last submitted here, and returns a new encoder holding the last piece's
    /// copy, for the call to record its passes after. The caller submits it and
    /// then calls [`Uploads::submitted`].
    pub(crate) async fn upload(
        &mut self,
        gpu: &Gpu,
        input: &[u8],
        destination: &wgpu::Buffer,
        wait: Wait,
    ) -> Result<wgpu::CommandEncoder> {
        debug_assert_eq!(input.len(), self.bytes, "the input the uploads were sized for");
        let pieces = self.pieces();
        let last = pieces.count() - 1;
        for index in 0..last {
            let upload = &mut self.buffers[index % 2];
            upload.make_writable(gpu, pieces.buffer_bytes(), wait).await?;
            let submission = gpu.checked(|| {
                let mut encoder = encoder(gpu, "xent upload piece");
                record_piece(upload, &mut encoder, input, pieces.range(index), destination)?;
                Ok(gpu.queue().submit([encoder.finish()]))
            })?;
            upload.map_again(gpu, Some(submission))?;
        }
        let upload = &mut self.buffers[self.last_buffer()];
        upload.make_writable(gpu, pieces.buffer_bytes(), wait).await?;
        gpu.checked(|| {
            let mut encoder = encoder(gpu, "xent host call");
            record_piece(upload, &mut encoder, input, pieces.range(last), destination)?;
            Ok(encoder)
        })
    }

    /// After the submission of the encoder [`Uploads::upload`] returned: maps its
    /// upload buffer again once that submission is done.
    pub(crate) fn submitted(&self, gpu: &Gpu, submission: &wgpu::SubmissionIndex) -> Result<()> {
        self.buffers[self.last_buffer()].map_again(gpu, Some(submission.clone()))
    }
}

fn encoder(gpu: &Gpu, label: &str) -> wgpu::CommandEncoder {
    gpu.device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
}

/// Writes the bytes `range` of `input` into `upload` and records their copy to
/// the same offset of `destination`.
fn record_piece(
    upload: &UploadBuffer,
    encoder: &mut wgpu::CommandEncoder,
    input: &[u8],
    range: Range<usize>,
    destination: &wgpu::Buffer,
) -> Result<()> {
    let offset = range.start as u64;
    upload.upload_into(encoder, &input[range], destination, offset)
}

/// The two readback buffers the gradient's pieces take in turn.
pub(crate) struct Readbacks<'a> {
    pub buffers: [&'a wgpu::Buffer; 2],
    pub piece: u64,
}

impl Readbacks<'_> {
    /// Records into the call's encoder the copies of the first two pieces of the
    /// `bytes` bytes at the start of `source` into the two buffers.
    pub(crate) fn record_first_pieces(&self, encoder: &mut wgpu::CommandEncoder, source: &wgpu::Buffer, bytes: usize) {
        let pieces = Pieces::new(bytes, self.piece);
        for index in 0..pieces.count().min(2) {
            record_read(encoder, source, pieces.range(index), self.buffers[index]);
        }
    }

    /// The first piece's buffer and its bytes of `destination`, which the
    /// results' readback reads in the same wait
    /// ([`DeviceOutputs::finish_read`](crate::gpu::outputs::DeviceOutputs)).
    pub(crate) fn first_piece<'d>(&self, destination: &'d mut [u8]) -> (&wgpu::Buffer, &'d mut [u8]) {
        let range = Pieces::new(destination.len(), self.piece).range(0);
        (self.buffers[0], &mut destination[range])
    }

    /// Reads the pieces after the first into `destination`, the second copied
    /// by `submission` (the call's), the others copied here as the buffers free up.
    pub(crate) async fn read_rest(
        &self,
        gpu: &Gpu,
        source: &wgpu::Buffer,
        destination: &mut [u8],
        submission: wgpu::SubmissionIndex,
        wait: Wait,
    ) -> Result<()> {
        let pieces = Pieces::new(destination.len(), self.piece);
        let mut copied_by = [None, Some(submission)];
        for index in 1..pieces.count() {
            let next = index + 1;
            if next < pieces.count() {
                // Its buffer held piece index − 1, read already.
                let buffer = self.buffers[next % 2];
                copied_by[next % 2] = Some(gpu.checked(|| {
                    let mut encoder = encoder(gpu, "xent readback piece");
                    record_read(&mut encoder, source, pieces.range(next), buffer);
                    Ok(gpu.queue().submit([encoder.finish()]))
                })?);
            }
            let range = pieces.range(index);
            let buffer = self.buffers[index % 2];
            let after = copied_by[index % 2].clone();
            read_piece(gpu, buffer, &mut destination[range], after, wait).await?;
        }
        Ok(())
    }
}

/// Records the copy of the bytes `range` of `source` (padded to whole words)
/// into the start of `buffer`.
fn record_read(encoder: &mut wgpu::CommandEncoder, source: &wgpu::Buffer, range: Range<usize>, buffer: &wgpu::Buffer) {
    let size = word_padded(range.len() as u64);
    if size > 0 {
        encoder.copy_buffer_to_buffer(source, range.start as u64, buffer, 0, size);
    }
}

/// Maps the start of `buffer` once `after` is done and copies it into `destination`.
async fn read_piece(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    destination: &mut [u8],
    after: Option<wgpu::SubmissionIndex>,
    wait: Wait,
) -> Result<()> {
    if destination.is_empty() {
        return Ok(());
    }
    let slice = buffer.slice(..word_padded(destination.len() as u64));
    // Declared before the view, dropped after it.
    let _unmap = UnmapOnDrop {
        gpu,
        buffers: vec![buffer],
    };
    map_after(gpu, &[slice], after, wait).await?;
    copy_out(&mapped_bytes(&slice)?, destination);
    Ok(())
}

/// Copies the start of `mapped` into `destination`, in pieces on rayon's threads
/// ([`copy_piece_bytes`]).
pub(crate) fn copy_out(mapped: &[u8], destination: &mut [u8]) {
    let length = destination.len();
    let piece = copy_piece_bytes(length);
    destination
        .par_chunks_mut(piece)
        .zip(mapped[..length].par_chunks(piece))
        .for_each(|(to, from)| to.copy_from_slice(from));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_bytes_in_order() {
        let pieces = Pieces::new(1000, 256);
        assert_eq!(pieces.count(), 4);
        let ranges: Vec<_> = (0..4).map(|index| pieces.range(index)).collect();
        assert_eq!(ranges, [0..256, 256..512, 512..768, 768..1000]);
        assert_eq!(pieces.buffer_bytes(), 256);
        let small = Pieces::new(6, 256);
        assert_eq!((small.count(), small.range(0), small.buffer_bytes()), (1, 0..6, 8));
        let empty = Pieces::new(0, 256);
        assert_eq!((empty.count(), empty.range(0)), (1, 0..0));
    }

    #[test]
    fn piece_bytes_are_positive_multiples_of_256() {
        assert_eq!(check_piece_bytes(512), Ok(512));
        for bad in [0, 100, 257] {
            assert!(matches!(check_piece_bytes(bad), Err(Error::InvalidOption(_))), "{bad}");
        }
    }
}
