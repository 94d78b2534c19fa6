//! The workgroup-size policy of the categorical cross-entropy's row kernels:
//! the sizes they can be compiled for, each adapter kind's preference, and what
//! the adapter's limits allow.

use crate::error::{Error, Result};

/// Workgroup sizes the categorical row kernel can be compiled for (powers of
/// two: the reductions halve their stride). The context picks one per adapter
/// (the adapter kind's preference, halved until its limits allow it) unless
/// [`ContextOptions::workgroup_size`](crate::ContextOptions::workgroup_size) names one.
///
/// ```
/// use xent::WORKGROUP_SIZE_CHOICES;
///
/// assert!(WORKGROUP_SIZE_CHOICES.iter().all(|size| size.is_power_of_two()));
/// assert_eq!((WORKGROUP_SIZE_CHOICES[0], WORKGROUP_SIZE_CHOICES[4]), (64, 1024));
/// ```
pub const WORKGROUP_SIZE_CHOICES: [u32; 5] = [64, 128, 256, 512, 1024];
/// The row kernel's workgroup size on adapters without a measured preference.
pub(crate) const DEFAULT_WORKGROUP_SIZE: u32 = 256;
/// The row kernel's workgroup size on CPU adapters (lavapipe, llvmpipe): the
/// fastest compute pass of `xent bench --workgroup-size 64,128,256,512` on
/// lavapipe at every shape timed (BENCHMARKS.md), where each workgroup runs on
/// one CPU thread and its barriers are what costs.
const CPU_ADAPTER_WORKGROUP_SIZE: u32 = 64;
/// The row kernel's workgroup size on NVIDIA GPUs: on an H200 (driver
/// 580.159.04, Vulkan) `xent bench --workgroup-size` timed the fused call at
/// 4096×32000 f32 in 1.09 ms at 512 against 1.86 ms at 256 (issue 10; a GPU
/// whose clock had not risen yet, so the ratio, not the times, is what counts).
const NVIDIA_WORKGROUP_SIZE: u32 = 512;
/// PCI vendor id of NVIDIA (`wgpu::AdapterInfo::vendor`).
const NVIDIA_VENDOR: u32 = 0x10de;
/// Workgroup memory per invocation of the row reductions' scratch arrays (an
/// `ArgMax` and a `vec4<f32>` in the workgroup-memory variant).
pub(crate) const REDUCTION_SCRATCH_BYTES_PER_INVOCATION: u32 = 8 + 16;

/// The adapter's preferred workgroup size for the row kernel, before its limits
/// are applied: measured for CPU adapters (lavapipe) and NVIDIA (an H200);
/// every other GPU gets [`DEFAULT_WORKGROUP_SIZE`] until `xent bench
/// --workgroup-size` has been run on it (BENCHMARKS.md).
fn preferred_workgroup_size(info: &wgpu::AdapterInfo) -> u32 {
    match info.device_type {
        wgpu::DeviceType::Cpu => CPU_ADAPTER_WORKGROUP_SIZE,
        _ if info.vendor == NVIDIA_VENDOR => NVIDIA_WORKGROUP_SIZE,
        _ => DEFAULT_WORKGROUP_SIZE,
    }
}

/// Whether the row kernel at `workgroup_size` fits `limits`: the invocation and
/// x-dimension limits, and workgroup memory for the reductions' scratch with
/// room left for a row cache.
fn workgroup_size_fits(workgroup_size: u32, limits: &wgpu::Limits) -> bool {
    let scratch = workgroup_size * REDUCTION_SCRATCH_BYTES_PER_INVOCATION;
    workgroup_size <= limits.max_compute_invocations_per_workgroup
        && workgroup_size <= limits.max_compute_workgroup_size_x
        && scratch + 4 <= limits.max_compute_workgroup_storage_size
}

/// The row kernel's workgroup size: `requested` when given (an error unless it is
/// one of [`WORKGROUP_SIZE_CHOICES`] and fits the adapter), else the adapter's
/// preference, halved until it fits.
pub(crate) fn choose_workgroup_size(
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
    requested: Option<u32>,
) -> Result<u32> {
    if let Some(requested) = requested {
        if !WORKGROUP_SIZE_CHOICES.contains(&requested) {
            return Err(Error::InvalidOption(format!(
                "workgroup size {requested} is not one of {WORKGROUP_SIZE_CHOICES:?}"
            )));
        }
        if !workgroup_size_fits(requested, limits) {
            return Err(Error::InvalidOption(format!(
                "workgroup size {requested} exceeds the adapter's limits ({} invocations, {} in x, {} bytes of \
                 workgroup memory)",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_size_x,
                limits.max_compute_workgroup_storage_size
            )));
        }
        return Ok(requested);
    }
    let preferred = preferred_workgroup_size(info);
    WORKGROUP_SIZE_CHOICES
        .iter()
        .rev()
        .copied()
        .find(|&size| size <= preferred && workgroup_size_fits(size, limits))
        .ok_or_else(|| {
            Error::InvalidOption(format!(
                "the adapter's compute limits ({} invocations, {} bytes of workgroup memory) are below the \
                 smallest row kernel ({} invocations)",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size,
                WORKGROUP_SIZE_CHOICES[0]
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(invocations: u32, storage: u32) -> wgpu::Limits {
        wgpu::Limits {
            max_compute_invocations_per_workgroup: invocations,
            max_compute_workgroup_size_x: invocations,
            max_compute_workgroup_storage_size: storage,
            ..wgpu::Limits::default()
        }
    }

    fn adapter(device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan)
    }

    #[test]
    fn workgroup_size_follows_the_adapter_and_its_limits() {
        let gpu = adapter(wgpu::DeviceType::DiscreteGpu);
        let cpu = adapter(wgpu::DeviceType::Cpu);
        assert_eq!(
            choose_workgroup_size(&gpu, &limits(1024, 49_152), None).ok(),
            Some(DEFAULT_WORKGROUP_SIZE)
        );
        assert_eq!(
            choose_workgroup_size(&cpu, &limits(1024, 49_152), None).ok(),
            Some(CPU_ADAPTER_WORKGROUP_SIZE)
        );
        // Limits below the preference halve it: 128 invocations, or 4 KiB of workgroup memory.
        assert_eq!(choose_workgroup_size(&gpu, &limits(128, 49_152), None).ok(), Some(128));
        assert_eq!(choose_workgroup_size(&gpu, &limits(1024, 4096), None).ok(), Some(128));
        assert!(choose_workgroup_size(&gpu, &limits(32, 49_152), None).is_err());
        // NVIDIA's measured preference, halved like any other by smaller limits.
        let nvidia = wgpu::AdapterInfo {
            vendor: NVIDIA_VENDOR,
            ..adapter(wgpu::DeviceType::DiscreteGpu)
        };
        assert_eq!(
            choose_workgroup_size(&nvidia, &limits(1024, 49_152), None).ok(),
            Some(512)
        );
        assert_eq!(
            choose_workgroup_size(&nvidia, &limits(256, 49_152), None).ok(),
            Some(256)
        );
        // A request is honoured when it fits, refused otherwise.
        assert_eq!(
            choose_workgroup_size(&gpu, &limits(1024, 49_152), Some(1024)).ok(),
            Some(1024)
        );
        assert!(matches!(
            choose_workgroup_size(&gpu, &limits(256, 49_152), Some(512)),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            choose_workgroup_size(&gpu, &limits(1024, 49_152), Some(100)),
            Err(Error::InvalidOption(_))
        ));
    }
}
