//! How the categorical cross-entropy reaches f32 rows that are not in aligned
//! groups of 4 logits (a vocabulary such as 50257, or a slice at an odd offset):
//! the option ([`UnalignedF32`]) and, in one place, which adapters may take
//! vector storage for them.

use crate::error::{Error, Result};

/// How f32 rows that are not in aligned groups of 4 logits are read and written
/// ([`ContextOptions::unaligned_f32`](crate::ContextOptions::unaligned_f32)).
///
/// - `Vectors`: in 4-element groups aligned in the binding, one 16-byte load or
///   store per whole group, the at most two partial groups at a row's ends one
///   lane of the vector at a time. Storing one lane alone is what naga's SPIR-V
///   (Vulkan) and HLSL (DX12) do, but not what WGSL promises (Metal may rewrite
///   the whole vector, racing with the neighbouring row), so only those backends
///   allow it. The bindings are widened to whole vectors, so a buffer needs up to
///   12 bytes of room after the caller's slice; a call without it goes entry by
///   entry (same results, other rounding).
/// - `Entries`: one entry per load and store, the invocations of a row on
///   consecutive entries.
/// - `Auto` (the default): `Vectors` on hardware adapters of those backends,
///   `Entries` elsewhere, including software adapters (lavapipe, llvmpipe), which
///   run invocations as the lanes of CPU vectors: there the contiguous entries
///   are the faster access (256×50257 on lavapipe: 19.5 ms forward with entries,
///   22.5 ms with vectors).
///
/// `xent bench --unaligned-f32 entries,vectors` times both side by side.
///
/// ```no_run
/// use xent::{Context, ContextOptions, UnalignedF32};
///
/// let context = Context::with_options(ContextOptions {
///     unaligned_f32: UnalignedF32::Entries,
///     ..ContextOptions::default()
/// })?;
/// assert_eq!(context.unaligned_f32(), UnalignedF32::Entries);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UnalignedF32 {
    /// Vectors where the adapter is hardware on Vulkan or DX12, else entries.
    #[default]
    Auto,
    /// One entry per load and store.
    Entries,
    /// Groups of 4 as vectors with masked edges; an [`Error::InvalidOption`] on
    /// a backend other than Vulkan or DX12.
    Vectors,
}

impl UnalignedF32 {
    /// Whether rows take vector storage on the adapter `info` describes.
    pub(crate) fn vectors_on(self, info: &wgpu::AdapterInfo) -> Result<bool> {
        let lane_stores = matches!(info.backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12);
        match self {
            UnalignedF32::Auto => Ok(lane_stores && info.device_type != wgpu::DeviceType::Cpu),
            UnalignedF32::Entries => Ok(false),
            UnalignedF32::Vectors if lane_stores => Ok(true),
            UnalignedF32::Vectors => Err(Error::InvalidOption(format!(
                "unaligned f32 rows as vectors need a backend whose shaders store one lane of a vector alone \
                 (Vulkan, DX12); this adapter is on {:?}",
                info.backend
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(backend: wgpu::Backend, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo::new(device_type, backend)
    }

    #[test]
    fn vectors_only_where_one_lane_stores_alone_and_by_default_only_on_hardware() {
        use wgpu::{Backend, DeviceType};
        let gpu = |backend| adapter(backend, DeviceType::DiscreteGpu);
        let lavapipe = adapter(Backend::Vulkan, DeviceType::Cpu);
        assert!(UnalignedF32::Auto.vectors_on(&gpu(Backend::Vulkan)).expect("auto"));
        assert!(UnalignedF32::Auto.vectors_on(&gpu(Backend::Dx12)).expect("auto"));
        assert!(!UnalignedF32::Auto.vectors_on(&gpu(Backend::Metal)).expect("auto"));
        assert!(!UnalignedF32::Auto.vectors_on(&gpu(Backend::Gl)).expect("auto"));
        assert!(!UnalignedF32::Auto.vectors_on(&lavapipe).expect("auto"));
        assert!(UnalignedF32::Vectors.vectors_on(&lavapipe).expect("forced"));
        assert!(
            !UnalignedF32::Entries
                .vectors_on(&gpu(Backend::Vulkan))
                .expect("entries")
        );
        assert!(matches!(
            UnalignedF32::Vectors.vectors_on(&gpu(Backend::Metal)),
            Err(Error::InvalidOption(_))
        ));
    }
}
