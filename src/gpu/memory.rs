//! Buffer creation: storage and staging buffers on the 256-byte boundary that
//! copies and mappings keep, buffers created with their contents, and buffers that
//! grow when a call needs more room. The bottom of the GPU backend's buffers: it
//! imports nothing from the rest of the crate.

/// Offsets inside a buffer that is copied or mapped are kept on this boundary.
const BUFFER_ALIGNMENT: u64 = 256;

/// Large host copies into and out of mappings are split into pieces for
/// rayon's threads (one memcpy thread rarely reaches the memory's bandwidth):
/// a multiple of this many bytes (so that a piece's view of a mapping starts on
/// wgpu's `MAP_ALIGNMENT`), at least this many (small copies stay one piece on
/// the calling thread)...
const MIN_PIECE_BYTES: usize = 4 << 20;
/// ... and at most this many, so that the threads share the work evenly.
const MAX_PIECE_BYTES: usize = 64 << 20;

/// Bytes of each piece of a host copy of `total` bytes.
pub(crate) fn copy_piece_bytes(total: usize) -> usize {
    (total / rayon::current_num_threads())
        .clamp(MIN_PIECE_BYTES, MAX_PIECE_BYTES)
        .next_multiple_of(MIN_PIECE_BYTES)
}

pub(crate) fn create_buffer(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    aligned_buffer(device, label, size, usage, false)
}

/// [`create_buffer`], mapped at creation (for writing when `usage` has `MAP_WRITE`).
pub(crate) fn create_mapped_buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    aligned_buffer(device, label, size, usage, true)
}

fn aligned_buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
    mapped_at_creation: bool,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.div_ceil(BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT,
        usage,
        mapped_at_creation,
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
    pub(crate) buffer: Option<wgpu::Buffer>,
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
