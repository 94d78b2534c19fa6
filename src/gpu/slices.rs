//! Checks of the caller's device buffer slices, for every device-resident door
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
