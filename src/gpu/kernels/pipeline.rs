//! What every kernel family (the categorical cross-entropy, the BCE / KL /
//! entropy family) needs from wgpu, written once: bind-group layout entries,
//! pipeline compilation, parameter blocks, dispatch shapes, the windows and
//! chunks that keep every binding within the adapter's limit, the cache key of a
//! bound slice, and the WGSL reductions they all compile in.

use crate::error::{Error, Result};
use crate::gpu::memory::create_buffer_with;
use crate::gpu::shader_checks::ShaderChecks;

/// The Kahan sum and workgroup tree sum every reduction uses.
pub(crate) const SUMS_SOURCE: &str = include_str!("../../../shaders/sums.wgsl");

/// Bytes between per-chunk parameter blocks in a uniform buffer (the largest
/// `min_uniform_buffer_offset_alignment` wgpu allows).
pub(crate) const PARAMS_STRIDE: u64 = 256;

/// A buffer slice as a cache key: the buffer and the byte range (the record
/// caches reuse their bind groups while a call binds the same slices).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SliceKey {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl SliceKey {
    pub(crate) fn of(slice: wgpu::BufferSlice<'_>) -> Self {
        Self {
            buffer: slice.buffer().clone(),
            offset: slice.offset(),
            size: slice.size(),
        }
    }
}

/// A buffer binding visible to compute shaders.
pub(crate) fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

pub(crate) fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    layout_entry(binding, wgpu::BufferBindingType::Uniform)
}

pub(crate) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    layout_entry(binding, wgpu::BufferBindingType::Storage { read_only })
}

pub(crate) fn bind_group_layout(
    device: &wgpu::Device,
    label: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries,
    })
}

/// A bind group of `layout` binding each `(binding, resource)` pair.
pub(crate) fn bind_group<'a>(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    resources: impl IntoIterator<Item = (u32, wgpu::BindingResource<'a>)>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .into_iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

/// Compiles `entry_point` of the WGSL `source` against one bind group of
/// `layout`, with the run-time `checks`.
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    source: &str,
    entry_point: &str,
    checks: ShaderChecks,
) -> wgpu::ComputePipeline {
    compute_pipeline_with_groups(device, &[layout], source, entry_point, checks)
}

/// Compiles `entry_point` of the WGSL `source` against bind groups 0, 1, … of
/// `layouts`, with the run-time `checks`.
pub(crate) fn compute_pipeline_with_groups(
    device: &wgpu::Device,
    layouts: &[&wgpu::BindGroupLayout],
    source: &str,
    entry_point: &str,
    checks: ShaderChecks,
) -> wgpu::ComputePipeline {
    let descriptor = wgpu::ShaderModuleDescriptor {
        label: Some(entry_point),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    // SAFETY: the checks are wgpu's own but, for `ShaderChecks::Trusted`, the
    // forced loop bound, and every loop of every kernel source ends by its form
    // (src/gpu/kernels/loop_form.rs, applied by the unit tests to every file of
    // shaders/ and, through `assert_valid_wgsl`, to every composed source).
    let module = unsafe { device.create_shader_module_trusted(descriptor, checks.runtime_checks()) };
    let bind_group_layouts: Vec<Option<&wgpu::BindGroupLayout>> = layouts.iter().copied().map(Some).collect();
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry_point),
        bind_group_layouts: &bind_group_layouts,
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry_point),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            // Every workgroup variable is written before it is read.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

/// A uniform buffer of `blocks`, `PARAMS_STRIDE` bytes apart (bind block `i`
/// with [`params_binding`]).
pub(crate) fn params_buffer<T: bytemuck::Pod>(device: &wgpu::Device, label: &str, blocks: &[T]) -> wgpu::Buffer {
    create_buffer_with(device, label, &params_bytes(blocks), wgpu::BufferUsages::UNIFORM)
}

/// The bytes of a [`params_buffer`]: each block at a multiple of `PARAMS_STRIDE`.
pub(crate) fn params_bytes<T: bytemuck::Pod>(blocks: &[T]) -> Vec<u8> {
    let mut bytes = vec![0u8; blocks.len() * PARAMS_STRIDE as usize];
    for (block, slot) in blocks.iter().zip(bytes.chunks_exact_mut(PARAMS_STRIDE as usize)) {
        slot[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(block));
    }
    bytes
}

/// Block `index` of a [`params_buffer`] of `T`.
pub(crate) fn params_binding<T>(params: &wgpu::Buffer, index: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: params,
        offset: index as u64 * PARAMS_STRIDE,
        size: wgpu::BufferSize::new(size_of::<T>() as u64),
    })
}

/// Workgroup counts (x, y) covering `workgroups` (at least one), with x within
/// the per-dimension limit.
pub(crate) fn dispatch_shape(workgroups: u64, max_per_dimension: u32) -> Result<(u32, u32)> {
    let x = workgroups.clamp(1, u64::from(max_per_dimension));
    let y = workgroups.div_ceil(x);
    if y > u64::from(max_per_dimension) {
        return Err(Error::TooLarge(format!(
            "{workgroups} workgroups exceed the dispatch limit"
        )));
    }
    Ok((x as u32, y as u32))
}

/// A byte range of a buffer bound at an aligned offset, and where the data starts in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) byte_offset: u64,
    pub(crate) byte_size: u64,
    /// Index (in 4-byte words) of the first wanted word inside the binding.
    pub(crate) first_word: u32,
}

impl Window {
    /// A window over 4-byte words.
    pub(crate) fn new(first_byte: u64, byte_len: u64, alignment: u64) -> Self {
        Self::of_elements(first_byte, byte_len, alignment, 4)
    }

    /// A window over elements of `element_size` bytes; `first_word` then counts
    /// elements. The size is rounded up to whole 4-byte words (buffers of 16-bit
    /// data are padded to match), and is never 0 (an empty range binds one word).
    pub(crate) fn of_elements(first_byte: u64, byte_len: u64, alignment: u64, element_size: u64) -> Self {
        let byte_offset = first_byte / alignment * alignment;
        let lead = first_byte - byte_offset;
        Self {
            byte_offset,
            byte_size: ((lead + byte_len).div_ceil(4) * 4).max(4),
            first_word: (lead / element_size) as u32,
        }
    }

    pub(crate) fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.byte_offset,
            size: wgpu::BufferSize::new(self.byte_size),
        })
    }
}

/// A run of consecutive items (rows, or elements of whole tiles) whose bindings
/// fit the adapter's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Global index of the first item.
    pub(crate) first: u64,
    /// Items in the chunk.
    pub(crate) count: u64,
    /// The inputs (logits; also the gradient, and the family's per-element losses).
    pub(crate) inputs: Window,
    /// The targets.
    pub(crate) targets: Window,
}

/// `total` items cut into chunks of `per_chunk` (the last one shorter), each
/// bound through the (inputs, targets) windows `windows(first, count)` gives.
pub(crate) fn plan_chunks(total: u64, per_chunk: u64, windows: impl Fn(u64, u64) -> (Window, Window)) -> Vec<Chunk> {
    (0..total.div_ceil(per_chunk))
        .map(|index| {
            let first = index * per_chunk;
            let count = per_chunk.min(total - first);
            let (inputs, targets) = windows(first, count);
            Chunk {
                first,
                count,
                inputs,
                targets,
            }
        })
        .collect()
}

/// Parses and validates `source` with naga (every capability on), as the
/// device would before compiling it, and checks that each of its loops ends by
/// its form ([`loop_faults`](super::loop_form::loop_faults)), which compiling it
/// without naga's forced loop bound relies on.
#[cfg(test)]
pub(crate) fn assert_valid_wgsl(source: &str) {
    let faults = super::loop_form::loop_faults(source);
    assert!(faults.is_empty(), "loops that might not end:\n{}", faults.join("\n"));
    use wgpu::naga::valid::{Capabilities, ValidationFlags, Validator};
    let module =
        wgpu::naga::front::wgsl::parse_str(source).unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)));
    if let Err(error) = Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module) {
        panic!("{}", error.emit_to_string(source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_aligned_and_cover_the_data() {
        let window = Window::new(1000, 40, 256);
        assert_eq!(
            window,
            Window {
                byte_offset: 768,
                byte_size: 272,
                first_word: 58
            }
        );
    }

    #[test]
    fn dispatches_split_beyond_the_dimension_limit() {
        assert_eq!(dispatch_shape(70_000, 65_535).expect("fits"), (65_535, 2));
        assert_eq!(dispatch_shape(10, 65_535).expect("fits"), (10, 1));
    }

    #[test]
    fn chunks_cover_the_items_in_order() {
        let window = Window::new(0, 4, 4);
        let chunks = plan_chunks(10, 4, |_, _| (window, window));
        let ranges: Vec<(u64, u64)> = chunks.iter().map(|chunk| (chunk.first, chunk.count)).collect();
        assert_eq!(ranges, [(0, 4), (4, 4), (8, 2)]);
    }
}
