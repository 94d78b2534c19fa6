//! Checks of the caller's device buffer slices, for every device-resident door
//! (the family's in `family_call.rs`; meant for the cross-entropy's too once its
//! inputs are slices).

use crate::error::{Error, Result};

/// Checks that `slice` holds at least `needed` bytes, has `STORAGE` usage and
/// starts at a multiple of `alignment` (the device's
/// `min_storage_buffer_offset_alignment`: a binding must start there). A
/// misaligned slice is [`Error::BufferOffsetAlignment`] (no copy is made to
/// realign it).
pub(crate) fn check_storage_slice(
    name: &'static str,
    slice: wgpu::BufferSlice<'_>,
    needed: u64,
    alignment: u32,
) -> Result<()> {
    if slice.size() < needed {
        return Err(Error::BufferTooSmall {
            name,
            needed,
            actual: slice.size(),
        });
    }
    let missing = wgpu::BufferUsages::STORAGE - slice.buffer().usage();
    if !missing.is_empty() {
        return Err(Error::BufferUsage { name, missing });
    }
    if !slice.offset().is_multiple_of(u64::from(alignment.max(1))) {
        return Err(Error::BufferOffsetAlignment {
            name,
            offset: slice.offset(),
            alignment,
        });
    }
    Ok(())
}
