//! Where a Burn tensor lies for xent: the wgpu buffer range of its storage
//! through cubecl's compute client (held in place while xent uses it), the
//! read inputs that must be copied apart when they share the written buffer,
//! and the small conversions both device paths (`cube.rs`, `linear.rs`) share.

use burn::backend::DType;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use xent::TargetType;

use crate::device::staging_buffer;
use crate::error::{Error, Result};

/// The wgpu buffer range of one tensor's storage (or of a range of rows in it).
pub(crate) struct Storage {
    pub(crate) buffer: wgpu::Buffer,
    /// Byte offset of the range in `buffer`.
    pub(crate) offset: u64,
    /// The range's bytes (not the allocation's, which may be padded).
    pub(crate) bytes: u64,
    /// cubecl's `ManagedResource`: while held, cubecl neither frees nor reuses
    /// the allocation.
    _guard: Box<dyn std::any::Any>,
}

impl Storage {
    /// The range as a slice of its buffer, where xent binds it.
    pub(crate) fn slice(&self) -> wgpu::BufferSlice<'_> {
        self.buffer.slice(self.offset..self.offset + self.bytes)
    }
}

/// The storage of the first `bytes` bytes behind a cubecl handle.
pub(crate) fn storage(client: &Client, handle: &Handle, bytes: u64) -> Result<Storage> {
    storage_range(client, handle, 0, bytes)
}

/// The storage of `bytes` bytes from byte `start` of the tensor behind a cubecl
/// handle, through the wgpu server of the client; an error when the range is
/// not inside the tensor's storage.
pub(crate) fn storage_range(client: &Client, handle: &Handle, start: u64, bytes: u64) -> Result<Storage> {
    let managed = client
        .get_resource::<WgpuServer<AutoCompiler>>(handle.clone())
        .map_err(runtime_error)?;
    let resource = managed.resource();
    let end = start.checked_add(bytes);
    let fits = end.is_some_and(|end| end <= resource.size)
        && resource
            .offset
            .checked_add(end.unwrap_or(u64::MAX))
            .is_some_and(|end| end <= resource.buffer.size());
    if !fits {
        return Err(Error::Runtime(format!(
            "bytes {start}..+{bytes} of a tensor with {} bytes of storage",
            resource.size
        )));
    }
    Ok(Storage {
        buffer: resource.buffer.clone(),
        offset: resource.offset + start,
        bytes,
        _guard: Box::new(managed),
    })
}

/// A read-only input as xent binds it: the tensor's own storage, or (when it
/// shares the written buffer) a staging buffer it was copied into.
pub(crate) enum ReadInput<'a> {
    Direct(&'a Storage),
    Staged(wgpu::Buffer, u64),
}

impl ReadInput<'_> {
    pub(crate) fn slice(&self) -> wgpu::BufferSlice<'_> {
        match self {
            ReadInput::Direct(storage) => storage.slice(),
            ReadInput::Staged(buffer, bytes) => buffer.slice(..*bytes),
        }
    }

    pub(crate) fn is_staged(&self) -> bool {
        matches!(self, ReadInput::Staged(..))
    }
}

/// `input` itself, or, when it lies in `written` (wgpu cannot bind one buffer
/// read-only and writable in one dispatch), a copy recorded into `encoder`
/// into the reusable staging buffer in `slot`.
pub(crate) fn read_input<'a>(
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    input: &'a Storage,
    written: Option<&wgpu::Buffer>,
    slot: &mut Option<wgpu::Buffer>,
) -> ReadInput<'a> {
    if written != Some(&input.buffer) {
        return ReadInput::Direct(input);
    }
    let staged = staging_buffer(device, slot, input.bytes);
    encoder.copy_buffer_to_buffer(&input.buffer, input.offset, &staged, 0, input.bytes);
    ReadInput::Staged(staged, input.bytes)
}

/// xent's name for Burn's integer element type.
pub(crate) fn target_type(dtype: DType) -> Result<TargetType> {
    match dtype {
        DType::I64 => Ok(TargetType::I64),
        DType::I32 => Ok(TargetType::I32),
        DType::U32 => Ok(TargetType::U32),
        other => Err(Error::InvalidInput(format!(
            "targets must be i64, i32 or u32 class indices; got {other:?}"
        ))),
    }
}

/// Bytes of `count` values of `size` bytes, checked.
pub(crate) fn byte_count(count: usize, size: usize) -> Result<u64> {
    (count as u64)
        .checked_mul(size as u64)
        .ok_or_else(|| Error::InvalidInput(format!("{count} values do not fit a buffer")))
}

/// A cubecl runtime error as this crate's.
pub(crate) fn runtime_error(error: impl std::fmt::Debug) -> Error {
    Error::Runtime(format!("{error:?}"))
}
