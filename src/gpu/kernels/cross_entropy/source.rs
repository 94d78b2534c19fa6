//! The WGSL source of the categorical cross-entropy's kernels and what one
//! compiled row kernel is specialised for: the sources it is concatenated from,
//! the keys of the pipeline cache ([`RowKernelKey`]) and the generated prelude.

use super::super::contract::{
    ReduceParams, RowParams, reduce_bindings, row_bindings, row_flags, row_planes, status_words, target_formats,
};
use super::super::pipeline::SUMS_SOURCE;
use crate::options::CrossEntropyOptions;
use crate::types::{LogitType, TargetType};

/// Invocations of the single reduction workgroup.
pub(crate) const REDUCE_WORKGROUP_SIZE: u32 = 256;

const CROSS_ENTROPY_SOURCE: &str = include_str!("../../../../shaders/cross_entropy.wgsl");
const REDUCE_SOURCE: &str = include_str!("../../../../shaders/reduce.wgsl");
const TARGETS_SOURCE: &str = include_str!("../../../../shaders/targets.wgsl");
const SOFTCAP_SOURCE: &str = include_str!("../../../../shaders/softcap.wgsl");
const SHARED_MEMORY_REDUCTIONS: &str = include_str!("../../../../shaders/row_reduce_shared.wgsl");
const SUBGROUP_REDUCTIONS: &str = include_str!("../../../../shaders/row_reduce_subgroup.wgsl");
const LOGITS_F32: &str = include_str!("../../../../shaders/logits_f32.wgsl");
const LOGITS_F16: &str = include_str!("../../../../shaders/logits_f16.wgsl");
const LOGITS_HALF_WORDS: &str = include_str!("../../../../shaders/logits_half_words.wgsl");
const LOGITS_F32X4: &str = include_str!("../../../../shaders/logits_f32x4.wgsl");
const LOGITS_F16X4: &str = include_str!("../../../../shaders/logits_f16x4.wgsl");
const LOGITS_HALF_WORDS_X4: &str = include_str!("../../../../shaders/logits_half_words_x4.wgsl");
const BF16: &str = include_str!("../../../../shaders/bf16.wgsl");
const SCALAR_GROUPS: &str = include_str!("../../../../shaders/logits_scalar_groups.wgsl");
const HALF_WORD_GROUPS: &str = include_str!("../../../../shaders/logits_half_word_groups.wgsl");
const HALF_WORDS_BF16: &str = include_str!("../../../../shaders/half_words_bf16.wgsl");
const HALF_WORDS_F16: &str = include_str!("../../../../shaders/half_words_f16.wgsl");
const GROUP_EDGES: &str = include_str!("../../../../shaders/logits_group_edges.wgsl");
const LOGIT_WORDS: &str = include_str!("../../../../shaders/logit_words.wgsl");
const LOGIT_WORDS_IN_PLACE: &str = include_str!("../../../../shaders/logit_words_in_place.wgsl");
const DEFERRED_HALF_WORDS: &str = include_str!("../../../../shaders/deferred_half_words.wgsl");
const STRADDLING_WORDS: &str = include_str!("../../../../shaders/straddling_words.wgsl");
const GRADIENT_WORDS: &str = include_str!("../../../../shaders/gradient_words.wgsl");
const NO_EDGE_HALVES: &str = include_str!("../../../../shaders/no_edge_halves.wgsl");
pub(super) const VECTOR_LANES: &str = include_str!("../../../../shaders/vector_lanes.wgsl");
pub(super) const VECTOR_LANES_IN_PLACE: &str = include_str!("../../../../shaders/vector_lanes_in_place.wgsl");
const ROW_CACHE: &str = include_str!("../../../../shaders/row_cache.wgsl");
const ROW_CACHE_STREAMED: &str = include_str!("../../../../shaders/row_cache_streamed.wgsl");

/// The gradient modes the row kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GradientMode {
    Skip,
    Separate,
    InPlace,
}

/// The options a row kernel is compiled for (constants of its prelude).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct OptionFeatures {
    pub(crate) weights: bool,
    pub(crate) logit_scale: bool,
    pub(crate) softcap: bool,
    /// Label smoothing or soft targets: the per-class spread sums.
    pub(crate) spread: bool,
    /// The gradient is multiplied by upstream values read from a buffer (one
    /// load per row); without them the kernel reads none.
    pub(crate) upstream_values: bool,
}

impl OptionFeatures {
    /// The features of `options` on `target_type` targets, with or without
    /// `upstream_values`.
    pub(crate) fn of(options: &CrossEntropyOptions, target_type: TargetType, upstream_values: bool) -> Self {
        Self {
            weights: options.weight.is_some(),
            logit_scale: options.logit_scale != 1.0,
            softcap: options.softcap.is_some(),
            spread: options.label_smoothing > 0.0 || target_type == TargetType::Probabilities,
            upstream_values,
        }
    }
}

/// How the row kernel reaches a row's logits and gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LogitAccess {
    /// One entry per load and store, the lanes of a row on consecutive entries
    /// (coalesced for contiguous rows; a row's entries `spatial` apart for N-d
    /// inputs); bf16, and f16 as words (N-d rows only), stored by the gradient-word pass instead
    /// ([`WordPass::GradientWords`]).
    Entries,
    /// Contiguous rows of any length at any element offset (bf16 and f16,
    /// whose groups load as two whole 32-bit words; f32 over vec4 bindings that
    /// cover whole vectors, on backends whose lane stores write 4 bytes alone):
    /// both passes on 4-element groups aligned in the binding (the statistics
    /// pass in the logits', the gradient pass in the gradient's), the lanes of a
    /// row on consecutive groups, several groups' loads in flight: whole groups
    /// loaded with one group load (two whole 32-bit words for bf16 and f16, one
    /// 16-byte load for f32) and stored whole (no read-modify-write), the at
    /// most two partial groups at a row's ends masked, entry by entry (16-bit
    /// types leave a word that straddles the row's boundary to the
    /// straddling-word pass, [`WordPass::Straddling`]; f32 one lane of the
    /// vector at a time).
    MaskedGroups,
    /// Contiguous rows of a multiple of 4 logits whose logits and gradient start
    /// at multiples of 4: both passes in groups of 4 over vector storage (one
    /// 16-byte load for f32, 8 bytes for f16 and bf16).
    Groups,
}

/// What distinguishes one compiled row kernel from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowKernelKey {
    pub(crate) threads_per_row: u32,
    pub(crate) access: LogitAccess,
    /// Floats of the workgroup's row cache (ROW_CACHE_SIZE), or 0 for a
    /// streamed kernel, which declares no row cache (the rows do not fit).
    pub(crate) row_cache: u32,
    pub(crate) logit_type: LogitType,
    pub(crate) gradient: GradientMode,
    pub(crate) features: OptionFeatures,
}

/// What one compiled row kernel is specialised for.
pub(crate) struct RowKernelConfig {
    pub(crate) key: RowKernelKey,
    pub(crate) subgroups: bool,
    pub(crate) min_subgroup_size: u32,
    pub(crate) workgroup_size: u32,
    /// The gradient pass walks a row's groups from its end (`GradientOrder::Backward`).
    pub(crate) backward: bool,
    /// f16 values are read and written as halves of 32-bit words, with core
    /// WGSL's conversions (the device lacks `Features::SHADER_F16`).
    pub(crate) f16_words: bool,
}

impl RowKernelConfig {
    /// The kernel's source: a generated prelude of the constants shared with Rust,
    /// the logits' storage for the element type and gradient mode, the target
    /// decoding, the softcap (shaders/softcap.wgsl), the chosen row reductions (with shaders/sums.wgsl for the
    /// workgroup-memory ones), the row cache (shaders/row_cache.wgsl when the
    /// key has one, else shaders/row_cache_streamed.wgsl), then the kernel;
    /// concatenated, nothing replaced.
    pub(crate) fn source(&self) -> String {
        let RowKernelKey {
            threads_per_row,
            access,
            row_cache,
            logit_type,
            gradient,
            features,
        } = self.key;
        let grouped = access != LogitAccess::Entries;
        let use_row_cache = row_cache > 0;
        let row_cache_source = if use_row_cache { ROW_CACHE } else { ROW_CACHE_STREAMED };
        let workgroup_size = self.workgroup_size;
        let rows_per_workgroup = workgroup_size / threads_per_row;
        let max_subgroups = workgroup_size.div_ceil(self.min_subgroup_size);
        let write_gradient = gradient != GradientMode::Skip;
        let reductions = if self.subgroups {
            SUBGROUP_REDUCTIONS.to_owned()
        } else {
            format!("{SUMS_SOURCE}\n{SHARED_MEMORY_REDUCTIONS}")
        };
        let f16_words = self.f16_words;
        let word_pass = WordPass::of(logit_type, access, f16_words);
        let enable_f16 = if logit_type == LogitType::F16 && !f16_words {
            "enable f16;\n"
        } else {
            ""
        };
        format!(
            "{enable_f16}\
             const WORKGROUP_SIZE: u32 = {workgroup_size}u;\n\
             const THREADS_PER_ROW: u32 = {threads_per_row}u;\n\
             const ROWS_PER_WORKGROUP: u32 = {rows_per_workgroup}u;\n\
             const MAX_SUBGROUPS: u32 = {max_subgroups}u;\n\
             const ROW_CACHE_SIZE: u32 = {row_cache}u;\n\
             const USE_ROW_CACHE: bool = {use_row_cache};\n\
             const WRITE_GRADIENT: bool = {write_gradient};\n\
             const GROUPED: bool = {grouped};\n\
             const USE_WEIGHTS: bool = {};\n\
             const USE_LOGIT_SCALE: bool = {};\n\
             const USE_SOFTCAP: bool = {};\n\
             const USE_SPREAD: bool = {};\n\
             const USE_UPSTREAM_VALUES: bool = {};\n\
             const DEFER_EDGE_HALVES: bool = {};\n\
             const DEFER_GRADIENT_WORDS: bool = {};\n\
             const GRADIENT_BACKWARD: bool = {};\n\
             {}{}{}{}{}{}\n{}\n{TARGETS_SOURCE}\n{SOFTCAP_SOURCE}\n{reductions}\n{row_cache_source}\n{CROSS_ENTROPY_SOURCE}",
            features.weights,
            features.logit_scale,
            features.softcap,
            features.spread,
            features.upstream_values,
            word_pass == Some(WordPass::Straddling),
            word_pass == Some(WordPass::GradientWords),
            self.backward,
            row_flags::WGSL,
            target_formats::WGSL,
            row_bindings::WGSL,
            RowParams::WGSL,
            row_planes::WGSL,
            status_words::WGSL,
            logits_storage(logit_type, access, gradient == GradientMode::InPlace, f16_words)
        )
    }
}

/// The logits' storage for `logit_type` and `access`, by concatenation only:
/// the element accessors and group accessors, and the words they read and write
/// (shaders/logit_words*.wgsl: the logits writable and the gradient stored over
/// them when `in_place`). No storage stores with atomics.
///
/// - f32 in `Groups` and `MaskedGroups`: vectors of 4 (shaders/logits_f32x4.wgsl),
///   a partial group's entries one lane at a time (shaders/vector_lanes*.wgsl).
/// - f16 in `Groups`: `vec4<f16>` (shaders/logits_f16x4.wgsl); bf16, and f16
///   when `f16_words` (no `Features::SHADER_F16`), two 32-bit words
///   (logits_half_words_x4.wgsl); no partial groups.
/// - bf16 and f16 in `MaskedGroups`: halves of 32-bit words
///   (shaders/logits_half_words.wgsl), groups of two whole words
///   (logits_half_word_groups.wgsl), plain words (logit_words*.wgsl,
///   deferred_half_words.wgsl) whose straddling halves are left to the
///   straddling-word pass (straddling_words.wgsl).
/// - bf16 entry by entry (N-d rows), and f16 when `f16_words`: the same halves
///   and plain words; the row kernel records each row's sums and the
///   gradient-word pass (gradient_words.wgsl) writes every gradient word whole.
/// - f32 and f16 entry by entry: single entries (logits_f32.wgsl,
///   logits_f16.wgsl: an f16 store writes its 2 bytes alone) with the group
///   accessors of logits_scalar_groups.wgsl and the partial-group store of
///   logits_group_edges.wgsl.
///
/// The half-word storages convert a half with `word_half` and `half_bits`
/// (shaders/half_words_bf16.wgsl over bf16.wgsl, or half_words_f16.wgsl).
/// Every storage without the straddling-word pass gets its hook
/// `record_edge_halves` as a no-op (no_edge_halves.wgsl).
fn logits_storage(logit_type: LogitType, access: LogitAccess, in_place: bool, f16_words: bool) -> String {
    let scalar_groups = [SCALAR_GROUPS, GROUP_EDGES].join("\n");
    // 16-bit values as halves of 32-bit words: bf16 always, f16 without
    // SHADER_F16 or in groups with masked edges.
    let half_words = match logit_type {
        LogitType::F32 => false,
        LogitType::Bf16 => true,
        LogitType::F16 => f16_words || access == LogitAccess::MaskedGroups,
    };
    let (accessors, groups) = match (logit_type, access) {
        (LogitType::F32, LogitAccess::Groups | LogitAccess::MaskedGroups) => (LOGITS_F32X4, GROUP_EDGES.to_owned()),
        (LogitType::F32, LogitAccess::Entries) => (LOGITS_F32, scalar_groups),
        (_, LogitAccess::Groups) if half_words => (LOGITS_HALF_WORDS_X4, GROUP_EDGES.to_owned()),
        _ if half_words => (LOGITS_HALF_WORDS, HALF_WORD_GROUPS.to_owned()),
        (_, LogitAccess::Groups) => (LOGITS_F16X4, GROUP_EDGES.to_owned()),
        _ => (LOGITS_F16, scalar_groups),
    };
    let halves = match logit_type {
        _ if !half_words => String::new(),
        LogitType::Bf16 => [BF16, HALF_WORDS_BF16].join("\n"),
        _ => HALF_WORDS_F16.to_owned(),
    };
    let words = if in_place { LOGIT_WORDS_IN_PLACE } else { LOGIT_WORDS };
    let word_pass = match WordPass::of(logit_type, access, f16_words) {
        Some(WordPass::Straddling) => [DEFERRED_HALF_WORDS, STRADDLING_WORDS].join("\n"),
        Some(WordPass::GradientWords) => [DEFERRED_HALF_WORDS, NO_EDGE_HALVES, GRADIENT_WORDS].join("\n"),
        None => NO_EDGE_HALVES.to_owned(),
    };
    let lanes = match (logit_type, access, in_place) {
        (LogitType::F32, LogitAccess::Groups | LogitAccess::MaskedGroups, false) => VECTOR_LANES,
        (LogitType::F32, LogitAccess::Groups | LogitAccess::MaskedGroups, true) => VECTOR_LANES_IN_PLACE,
        _ => "",
    };
    [&halves, accessors, words, &word_pass, lanes, &groups].join("\n")
}

/// The pass that, after each chunk's rows, writes the 16-bit gradient words
/// the row kernel leaves (an entry point of the row kernel's source, on the
/// same bindings), so that no gradient word is stored with atomics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WordPass {
    /// `write_straddling_words` (shaders/straddling_words.wgsl): 16-bit
    /// contiguous rows in groups with masked edges, whose row kernel stores
    /// every word but those that straddle a row's boundary; one invocation per row.
    Straddling,
    /// `write_gradient_words` (shaders/gradient_words.wgsl): N-d rows of bf16
    /// (or of f16 as words), whose row kernel stores no gradient entry but records each row's sums;
    /// one invocation per gradient word.
    GradientWords,
}

impl WordPass {
    /// The pass of the row kernel for `logit_type` rows reached by `access`
    /// (when it writes a gradient), if any; `f16_words`: f16 is stored as
    /// halves of 32-bit words, as bf16 is. 16-bit entry by entry is N-d rows
    /// only: contiguous 16-bit rows take groups ([`LogitAccess`]).
    pub(crate) fn of(logit_type: LogitType, access: LogitAccess, f16_words: bool) -> Option<Self> {
        match (access, logit_type) {
            (LogitAccess::MaskedGroups, LogitType::Bf16 | LogitType::F16) => Some(Self::Straddling),
            (LogitAccess::Entries, LogitType::Bf16) => Some(Self::GradientWords),
            (LogitAccess::Entries, LogitType::F16) if f16_words => Some(Self::GradientWords),
            _ => None,
        }
    }

    /// Its entry point.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            Self::Straddling => "write_straddling_words",
            Self::GradientWords => "write_gradient_words",
        }
    }

    /// Its invocations for a chunk of `rows` rows of `classes` entries: one per
    /// row, or one per 32-bit word the chunk's rows·classes halves touch (at
    /// most one more than half of them; the pass skips the rest).
    pub(crate) fn invocations(self, rows: u64, classes: u64) -> u64 {
        match self {
            Self::Straddling => rows,
            Self::GradientWords => rows * classes / 2 + 1,
        }
    }
}

/// The source of `compute_divisor` and `reduce_losses`: the generated prelude,
/// shaders/sums.wgsl, shaders/targets.wgsl, then shaders/reduce.wgsl.
pub(crate) fn reduce_source() -> String {
    format!(
        "const WORKGROUP_SIZE: u32 = {REDUCE_WORKGROUP_SIZE}u;\n{}{}{}{}\n{SUMS_SOURCE}\n{TARGETS_SOURCE}\n{REDUCE_SOURCE}",
        target_formats::WGSL,
        reduce_bindings::WGSL,
        row_planes::WGSL,
        ReduceParams::WGSL
    )
}
