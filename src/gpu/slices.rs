//! Checks of the caller's device buffer slices (storage, aliasing, upstream
//! values), for every device-resident door
//! (the cross-entropy's in `device_call.rs`, the family's in `family_call.rs`).

use crate::error::{Error, Result};

/// Checks that `slice` starts at a multiple of `alignment` (the element size
/// where the kernel binds aligned down, the device's
/// `min_storage_buffer_offset_alignment` where it binds at the offset), holds `needed`
/// bytes, lies in a buffer that extends to the 4-byte word after them (the
/// kernel binds whole words) and has `STORAGE` usage.
pub(crate) fn check_storage_slice(
    name: &'static str,
    slice: wgpu::BufferSlice<'_>,
    needed: u64,
    alignment: u64,
) -> Result<()> {
    if !slice.offset().is_multiple_of(alignment.max(1)) {
        return Err(Error::BufferAlignment {
            name,
            offset: slice.offset(),
            alignment,
        });
    }
    // slice.offset() + slice.size() ≤ buffer size, so a needed ≤ slice.size() does not overflow below.
    let word_end = (slice.offset() + needed.min(slice.size())).div_ceil(4) * 4;
    if slice.size() < needed || word_end > slice.buffer().size() {
        return Err(Error::BufferTooSmall {
            name,
            needed: needed.max(word_end - slice.offset()),
            actual: slice.size(),
        });
    }
    let missing = wgpu::BufferUsages::STORAGE - slice.buffer().usage();
    if !missing.is_empty() {
        return Err(Error::BufferUsage { name, missing });
    }
    Ok(())
}

/// An input or output slice and its name in errors.
pub(crate) type NamedSlice<'a> = (&'static str, wgpu::BufferSlice<'a>);

/// wgpu binds a buffer either writable or read-only within one dispatch: the
/// `written` slice (if any) must not share its buffer with one of `read`
/// ([`Error::BufferAliasing`] names the first that does).
pub(crate) fn check_aliasing(written: Option<NamedSlice<'_>>, read: &[NamedSlice<'_>]) -> Result<()> {
    let Some((written, written_slice)) = written else {
        return Ok(());
    };
    match read.iter().find(|(_, slice)| slice.buffer() == written_slice.buffer()) {
        Some(&(read, _)) => Err(Error::BufferAliasing { written, read }),
        None => Ok(()),
    }
}

/// Checks the upstream gradient's values: one `f32` (used for every loss
/// value), or, when the call is `unreduced`, `per_value` bytes (one `f32` per
/// loss value it outputs) — else [`Error::UpstreamLength`] — then as a 4-byte
/// aligned storage slice.
pub(crate) fn check_upstream_values(values: wgpu::BufferSlice<'_>, per_value: u64, unreduced: bool) -> Result<()> {
    let fits = values.size() == 4 || (unreduced && values.size() == per_value);
    if !fits {
        return Err(Error::UpstreamLength {
            bytes: values.size(),
            per_row: per_value,
        });
    }
    check_storage_slice("upstream values", values, values.size(), 4)
}
