//! What every GPU kernel of the BCE / KL / entropy family shares (the binary
//! cross-entropy's source in `binary.rs`, the divergences' in `divergence.rs`):
//! the module source (shaders/family.wgsl, the input type's accessors, the
//! kernels), one bind-group layout, the pipelines compiled on first use, and the
//! chunk planning. `family_record.rs` records a call with them.
//!
//! Chunks: elementwise kernels (BCE, KL) cut the batch into runs of whole tiles
//! (`TILE_ELEMENTS` elements, tiles at global multiples of it), each within the
//! binding limit; row kernels (entropy, probability cross-entropy) cut it into runs
//! of whole rows. Every chunk is bound at an aligned offset; the per-tile or
//! per-row partial sums are indexed globally, so a chunked call computes exactly
//! the same partial sums, in the same order, as an unchunked one.
//!
//! bf16 gradients (and f16 ones on a device without `SHADER_F16`) are stored a
//! whole 32-bit word at a time, without atomics
//! (shaders/family_half_words.wgsl); rows of odd C then leave the words that
//! straddle two rows to `write_straddling_words`, dispatched after each chunk's
//! rows ([`FamilyPipelines::straddling`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::binary::BINARY_CROSS_ENTROPY_SOURCE;
use super::contract::family_bindings::*;
pub(crate) use super::contract::family_flags::{
    FLAG_CLASS_TARGETS, FLAG_LOG_TARGET, FLAG_PROBABILITIES, FLAG_WRITE_GRADIENT, FLAG_WRITE_LOSSES,
};
use super::contract::{FamilyParams, family_bindings, family_flags};
use super::divergence::DIVERGENCE_SOURCE;
use super::pipeline::{Chunk, SUMS_SOURCE, Window, bind_group_layout, compute_pipeline, storage_entry, uniform_entry};
use crate::error::{Error, Result};
use crate::gpu::memory::create_buffer;
use crate::gpu::shader_checks::ShaderChecks;
use crate::options::KERAS_EPSILON;
use crate::types::LogitType;

/// Invocations per workgroup of every family kernel.
pub(crate) const FAMILY_WORKGROUP_SIZE: u32 = 256;
/// Elements each invocation of an elementwise kernel handles per tile.
const ELEMENTS_PER_INVOCATION: u32 = 16;
/// Elements per tile of the elementwise kernels (one workgroup each).
pub(crate) const TILE_ELEMENTS: u64 = (FAMILY_WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION) as u64;
/// Invocations sharing one row, by variant of the row kernels.
pub(crate) const THREADS_PER_ROW_CHOICES: [u32; 4] = [4, 16, 64, FAMILY_WORKGROUP_SIZE];
/// A row gets the narrowest variant that leaves each invocation at most this many columns.
const COLUMNS_PER_THREAD: usize = 8;

/// Bindings, flags, tiles, `reduce_partials` and the logarithms every family kernel uses.
const FAMILY_SOURCE: &str = include_str!("../../../shaders/family.wgsl");
/// The tile loop of the elementwise kernels (BCE, KL).
const ELEMENT_TILES: &str = include_str!("../../../shaders/element_tiles.wgsl");
// The input's element accessors and storage words, shared with the cross-entropy
// (which composes the same files, plus its vectorised variants).
const INPUTS_F32: &str = include_str!("../../../shaders/logits_f32.wgsl");
const INPUTS_F16: &str = include_str!("../../../shaders/logits_f16.wgsl");
/// bf16, and f16 without `Features::SHADER_F16`: two entries per 32-bit word.
const INPUTS_HALF_WORDS: &str = include_str!("../../../shaders/logits_half_words.wgsl");
const BF16: &str = include_str!("../../../shaders/bf16.wgsl");
const HALF_WORDS_BF16: &str = include_str!("../../../shaders/half_words_bf16.wgsl");
const HALF_WORDS_F16: &str = include_str!("../../../shaders/half_words_f16.wgsl");
const INPUT_WORDS: &str = include_str!("../../../shaders/logit_words.wgsl");
/// The gradient stores of storages with one entry per word (f32, f16).
const ENTRY_STORES: &str = include_str!("../../../shaders/family_entries.wgsl");
/// The gradient stores of 16-bit entries in words (bf16, f16 without
/// `Features::SHADER_F16`), whole words of two entries.
const HALF_WORD_STORES: &str = include_str!("../../../shaders/family_half_words.wgsl");

/// A family module's source: the generated prelude (the constants, flags,
/// binding numbers and uniform block the WGSL shares with this file, see
/// [`super::contract`]; `USE_UPSTREAM_VALUES`: whether the gradient reads
/// upstream values; `KERAS_EPSILON`, the CPU's clip of probabilities, written
/// in the shortest form that gives back its f32), shaders/sums.wgsl, shaders/family.wgsl,
/// shaders/element_tiles.wgsl, the accessors of `input_type` (`load_logit`,
/// `store_gradient`; f16 as `f16`, or as halves of 32-bit words when
/// `f16_words`, as bf16 always is), its words and gradient stores
/// (shaders/family_entries.wgsl, or shaders/family_half_words.wgsl) and the
/// kernel files, concatenated.
pub(crate) fn family_source(
    threads_per_row: u32,
    input_type: LogitType,
    upstream_values: bool,
    f16_words: bool,
) -> String {
    let (enable_f16, accessors) = match input_type {
        LogitType::F32 => ("", [INPUTS_F32, INPUT_WORDS, ENTRY_STORES].join("\n")),
        LogitType::F16 if !f16_words => ("enable f16;\n", [INPUTS_F16, INPUT_WORDS, ENTRY_STORES].join("\n")),
        LogitType::F16 => (
            "",
            [HALF_WORDS_F16, INPUTS_HALF_WORDS, INPUT_WORDS, HALF_WORD_STORES].join("\n"),
        ),
        LogitType::Bf16 => (
            "",
            [BF16, HALF_WORDS_BF16, INPUTS_HALF_WORDS, INPUT_WORDS, HALF_WORD_STORES].join("\n"),
        ),
    };
    format!(
        "{enable_f16}const WORKGROUP_SIZE: u32 = {FAMILY_WORKGROUP_SIZE}u;\n\
         const ELEMENTS_PER_INVOCATION: u32 = {ELEMENTS_PER_INVOCATION}u;\n\
         const THREADS_PER_ROW: u32 = {threads_per_row}u;\n\
         const ROWS_PER_WORKGROUP: u32 = {}u;\n\
         const USE_UPSTREAM_VALUES: bool = {upstream_values};\n\
         const KERAS_EPSILON: f32 = {:e}f;\n\
         {}{}{}\n{SUMS_SOURCE}\n{FAMILY_SOURCE}\n{ELEMENT_TILES}\n{accessors}\n{BINARY_CROSS_ENTROPY_SOURCE}\n{DIVERGENCE_SOURCE}",
        FAMILY_WORKGROUP_SIZE / threads_per_row,
        KERAS_EPSILON,
        family_flags::WGSL,
        family_bindings::WGSL,
        FamilyParams::WGSL,
    )
}

/// Index into [`THREADS_PER_ROW_CHOICES`] of the row-kernel variant for `classes` columns.
pub(crate) fn row_variant(classes: usize) -> usize {
    THREADS_PER_ROW_CHOICES
        .iter()
        .position(|&threads| classes <= threads as usize * COLUMNS_PER_THREAD)
        .unwrap_or(THREADS_PER_ROW_CHOICES.len() - 1)
}

/// The kernels of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FamilyKernel {
    /// `bce_elements` (shaders/binary_cross_entropy.wgsl).
    BinaryCrossEntropy,
    /// `kl_elements` (shaders/divergence.wgsl).
    KlDivergence,
    /// `entropy_rows` (shaders/divergence.wgsl).
    Entropy,
    /// `probability_cross_entropy_rows` (shaders/divergence.wgsl).
    ProbabilityCrossEntropy,
}

impl FamilyKernel {
    fn entry_point(self) -> &'static str {
        match self {
            FamilyKernel::BinaryCrossEntropy => "bce_elements",
            FamilyKernel::KlDivergence => "kl_elements",
            FamilyKernel::Entropy => "entropy_rows",
            FamilyKernel::ProbabilityCrossEntropy => "probability_cross_entropy_rows",
        }
    }

    /// Invocations per row of the variant for rows of `classes` columns (the
    /// whole workgroup for elementwise kernels) and how its work lies over the batch.
    pub(crate) fn work(self, classes: usize) -> (u32, Work) {
        match self {
            FamilyKernel::BinaryCrossEntropy | FamilyKernel::KlDivergence => (FAMILY_WORKGROUP_SIZE, Work::Elements),
            FamilyKernel::Entropy | FamilyKernel::ProbabilityCrossEntropy => {
                let threads_per_row = THREADS_PER_ROW_CHOICES[row_variant(classes)];
                (
                    threads_per_row,
                    Work::Rows {
                        rows_per_workgroup: FAMILY_WORKGROUP_SIZE / threads_per_row,
                    },
                )
            }
        }
    }
}

/// How a kernel's work is laid over the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Work {
    /// One loss per element; one workgroup per tile of `TILE_ELEMENTS`.
    Elements,
    /// One loss per row; `rows_per_workgroup` rows per workgroup.
    Rows {
        /// Rows each workgroup holds.
        rows_per_workgroup: u32,
    },
}

/// What distinguishes one compiled family pipeline from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    entry_point: &'static str,
    threads_per_row: u32,
    input_type: LogitType,
    upstream_values: bool,
}

/// The pipelines of one call: the family kernel and the reduction.
pub(crate) struct FamilyPipelines {
    pub kernel: Arc<wgpu::ComputePipeline>,
    pub reduce: Arc<wgpu::ComputePipeline>,
    /// `write_straddling_words`, after each chunk's rows: a bf16 gradient of rows
    /// of odd C (see [`straddles_rows`]).
    pub straddling: Option<Arc<wgpu::ComputePipeline>>,
    pub work: Work,
}

/// Whether a gradient written by `kernel` on rows of `classes` entries, two to
/// a 32-bit word (`in_words`), has words that straddle two rows (odd C), left
/// to `write_straddling_words`, whose row entries the row kernel keeps in a
/// scratch buffer of one `f32` per row.
pub(crate) fn straddles_rows(kernel: FamilyKernel, classes: usize, in_words: bool) -> bool {
    let rows = matches!(kernel.work(classes).1, Work::Rows { .. });
    rows && in_words && classes % 2 == 1
}

/// The family's bind-group layout, the placeholders bound where a call has no
/// such input or output, and its pipelines, compiled on first use (made once
/// per [`Context`](crate::Context)).
pub(crate) struct FamilyKernels {
    pub(crate) bind_group_layout: wgpu::BindGroupLayout,
    /// Bound in place of absent read-only inputs (targets, class parameters,
    /// upstream values).
    pub(crate) unused_read: wgpu::Buffer,
    /// Bound in place of absent outputs (gradient, per-element losses).
    pub(crate) unused_write: wgpu::Buffer,
    /// f16 inputs are read and written as halves of 32-bit words: the device
    /// lacks `Features::SHADER_F16`.
    f16_words: bool,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    checks: ShaderChecks,
}

impl FamilyKernels {
    pub(crate) fn new(device: &wgpu::Device, checks: ShaderChecks) -> Self {
        let entries = [
            uniform_entry(BINDING_PARAMS),
            storage_entry(BINDING_LOGITS, true),
            storage_entry(BINDING_TARGETS, true),
            storage_entry(BINDING_GRADIENT, false),
            storage_entry(BINDING_LOSSES, false),
            storage_entry(BINDING_PARTIALS, false),
            storage_entry(BINDING_CLASS_PARAMS, true),
            storage_entry(BINDING_RESULT, false),
            storage_entry(BINDING_UPSTREAM, true),
        ];
        let placeholder = |label| create_buffer(device, label, 16, wgpu::BufferUsages::STORAGE);
        Self {
            bind_group_layout: bind_group_layout(device, "xent family", &entries),
            unused_read: placeholder("xent family unused input"),
            unused_write: placeholder("xent family unused output"),
            f16_words: !device.features().contains(wgpu::Features::SHADER_F16),
            pipelines: Mutex::new(HashMap::new()),
            checks,
        }
    }

    /// Whether `input_type` entries are stored two to a 32-bit word (bf16, and
    /// f16 without `Features::SHADER_F16`).
    pub(crate) fn in_words(&self, input_type: LogitType) -> bool {
        input_type == LogitType::Bf16 || (input_type == LogitType::F16 && self.f16_words)
    }

    /// The pipelines of `kernel` on rows of `classes` inputs of `input_type`,
    /// its gradient (if `gradient`) multiplied by upstream values when `upstream_values`.
    pub(crate) fn pipelines(
        &self,
        device: &wgpu::Device,
        kernel: FamilyKernel,
        classes: usize,
        input_type: LogitType,
        gradient: bool,
        upstream_values: bool,
    ) -> Result<FamilyPipelines> {
        let (threads_per_row, work) = kernel.work(classes);
        let pipeline = |entry_point, upstream_values| {
            let key = PipelineKey {
                entry_point,
                threads_per_row,
                input_type,
                upstream_values,
            };
            let mut pipelines = self.pipelines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(pipelines.entry(key).or_insert_with(|| {
                let source = family_source(threads_per_row, input_type, upstream_values, self.f16_words);
                Arc::new(compute_pipeline(
                    device,
                    &self.bind_group_layout,
                    &source,
                    entry_point,
                    self.checks,
                ))
            }))
        };
        Ok(FamilyPipelines {
            kernel: pipeline(kernel.entry_point(), upstream_values),
            // The reduction writes no gradient: one variant serves every call.
            reduce: pipeline("reduce_partials", false),
            straddling: (gradient && straddles_rows(kernel, classes, self.in_words(input_type)))
                .then(|| pipeline("write_straddling_words", false)),
            work,
        })
    }
}

/// Splits `rows × classes` into chunks (elements of whole tiles, or rows) whose
/// every binding stays within `max_binding` bytes: the inputs (and gradient) of
/// `input_size` bytes each, and the f32 targets and losses. Class-index targets
/// (one word per row) get their windows with `class_targets`.
pub(crate) fn plan_chunks(
    work: Work,
    rows: u64,
    classes: u64,
    input_size: u64,
    class_targets: bool,
    max_binding: u64,
    alignment: u64,
) -> Result<Vec<Chunk>> {
    // Every binding holds at most 4 bytes per element (f32 targets and losses).
    let usable_words = max_binding.saturating_sub(alignment) / 4;
    let (total, per_chunk, elements_per_item) = match work {
        Work::Elements => (rows * classes, usable_words / TILE_ELEMENTS * TILE_ELEMENTS, 1),
        Work::Rows { .. } => (rows, usable_words / classes, classes),
    };
    if per_chunk == 0 {
        return Err(Error::TooLarge(format!(
            "one row of {classes} classes needs {} bytes, above the {max_binding} byte storage binding limit",
            classes * 4
        )));
    }
    Ok(super::pipeline::plan_chunks(total, per_chunk, |first, count| {
        let (first_element, elements) = (first * elements_per_item, count * elements_per_item);
        let inputs = Window::of_elements(first_element * input_size, elements * input_size, alignment, input_size);
        let targets = if class_targets {
            Window::new(first * 4, count * 4, alignment)
        } else {
            Window::new(first_element * 4, elements * 4, alignment)
        };
        (inputs, targets)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::pipeline::assert_valid_wgsl;

    #[test]
    fn every_family_variant_is_valid_wgsl() {
        for threads_per_row in THREADS_PER_ROW_CHOICES {
            for input_type in [LogitType::F32, LogitType::F16, LogitType::Bf16] {
                for upstream_values in [false, true] {
                    for f16_words in [false, true] {
                        assert_valid_wgsl(&family_source(threads_per_row, input_type, upstream_values, f16_words));
                    }
                }
            }
        }
    }

    /// The kernels clip probabilities with the CPU's ε, generated from it.
    #[test]
    fn the_kernels_clip_with_the_cpus_epsilon() {
        let source = family_source(FAMILY_WORKGROUP_SIZE, LogitType::F32, false, false);
        let module = wgpu::naga::front::wgsl::parse_str(&source).expect("parses");
        let mut validator = wgpu::naga::valid::Validator::new(Default::default(), Default::default());
        validator.validate(&module).expect("valid");
        let (_, epsilon) = module
            .constants
            .iter()
            .find(|(_, constant)| constant.name.as_deref() == Some("KERAS_EPSILON"))
            .expect("KERAS_EPSILON is declared");
        let value = &module.global_expressions[epsilon.init];
        assert_eq!(
            *value,
            wgpu::naga::Expression::Literal(wgpu::naga::Literal::F32(KERAS_EPSILON)),
            "{value:?}"
        );
    }

    /// Issue 10: no family kernel stores a gradient with atomics (bf16 words are
    /// stored whole, shaders/family_half_words.wgsl).
    #[test]
    fn no_family_variant_uses_atomics() {
        for threads_per_row in THREADS_PER_ROW_CHOICES {
            for (input_type, f16_words) in [
                (LogitType::F32, false),
                (LogitType::F16, false),
                (LogitType::F16, true),
                (LogitType::Bf16, false),
            ] {
                let source = family_source(threads_per_row, input_type, true, f16_words);
                let module = wgpu::naga::front::wgsl::parse_str(&source).expect("parses");
                let atomic = module
                    .types
                    .iter()
                    .any(|(_, ty)| matches!(ty.inner, wgpu::naga::TypeInner::Atomic(_)));
                assert!(!atomic, "{input_type:?}, {threads_per_row} per row: an atomic type");
            }
        }
    }

    #[test]
    fn element_chunks_hold_whole_tiles_within_the_binding() {
        let max_binding = 1 << 20;
        for input_size in [2, 4] {
            let chunks = plan_chunks(Work::Elements, 1000, 1000, input_size, false, max_binding, 256).expect("plan");
            let mut next = 0;
            for chunk in &chunks {
                assert_eq!(chunk.first, next);
                assert_eq!(chunk.first % TILE_ELEMENTS, 0);
                assert_eq!(chunk.inputs.byte_offset % 256, 0);
                // Tiles start aligned, so inputs, targets and losses share offset 0.
                assert_eq!((chunk.inputs.first_word, chunk.targets.first_word), (0, 0));
                assert!(chunk.targets.byte_size <= max_binding);
                next += chunk.count;
            }
            assert_eq!(next, 1_000_000);
            assert!(chunks.len() > 1);
        }
    }

    #[test]
    fn row_chunks_cover_every_row_once() {
        let rows = Work::Rows { rows_per_workgroup: 4 };
        let chunks = plan_chunks(rows, 1003, 77, 2, true, 4096, 256).expect("plan");
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first, next);
            assert!(chunk.inputs.byte_size <= 4096);
            assert_eq!(
                chunk.targets.byte_offset + u64::from(chunk.targets.first_word) * 4,
                chunk.first * 4
            );
            assert_eq!(
                chunk.inputs.byte_offset + u64::from(chunk.inputs.first_word) * 2,
                chunk.first * 77 * 2
            );
            next += chunk.count;
        }
        assert_eq!(next, 1003);
    }

    #[test]
    fn a_row_wider_than_a_binding_is_too_large() {
        let result = plan_chunks(Work::Rows { rows_per_workgroup: 1 }, 2, 1 << 20, 4, false, 1 << 20, 256);
        assert!(matches!(result, Err(Error::TooLarge(_))));
    }

    #[test]
    fn narrow_rows_share_a_workgroup() {
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(9)], 4);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(100)], 16);
        assert_eq!(THREADS_PER_ROW_CHOICES[row_variant(100_000)], FAMILY_WORKGROUP_SIZE);
    }
}
