//! The row kernel's variants for contiguous rows whose vocabulary is not a
//! multiple of 4 (bf16 and f16: groups of 4 aligned in the binding with masked
//! edges; f32: entry by entry, several loads in flight, or as vec4 groups with
//! masked edges under `UnalignedF32::Vectors`), pinned against the
//! f64 reference: C of every residue mod 4 (4k+1, 4k+2, 4k+3, from
//! rows shorter than one group to rows longer than any row cache), the logits'
//! slice at element offsets 0..3 and the gradient's at other phases, f32, f16
//! and bf16, with a separate gradient and in place, on the default context and
//! on the workgroup-memory one (workgroups of 256). Rows of up to 1003 classes
//! fit the row cache (the cached kernel), rows of 8193 and more never do (the
//! streamed kernel: at most 8192 floats are cached). Every call is also checked
//! byte for byte outside the caller's slices.

mod common;

use xent::reference::cross_entropy_f64;
use xent::{Context, ContextOptions, CrossEntropyLoss, LogitType, Loss, Reduction, Shape, Targets, UnalignedF32};

/// Rows shorter than a group, narrow and wide cached rows, and streamed rows.
const CLASSES: [usize; 9] = [1, 2, 3, 5, 38, 1003, 8193, 8194, 8195];
const ROWS: usize = 6;
const IGNORED_ROW: usize = 2;
const IGNORE_INDEX: i64 = -100;
const NAN_ROW: usize = 4;

#[derive(Clone, Copy, Debug)]
struct Case {
    classes: usize,
    logit_type: LogitType,
    in_place: bool,
    /// Element offset of the logits' slice past an aligned start (0..3).
    offset: u64,
    /// The upstream gradient's constant factor.
    upstream_scale: f32,
    /// Row NAN_ROW holds a NaN logit.
    nan_row: bool,
    /// Bytes after the logits' and the gradient's slices in their buffers.
    after: u64,
}

impl Case {
    /// `classes` rows of `logit_type` at element `offset`, the upstream factor
    /// 1, no NaN row, `AFTER` bytes of room after the slices.
    fn plain(classes: usize, logit_type: LogitType, in_place: bool, offset: u64) -> Self {
        Self {
            classes,
            logit_type,
            in_place,
            offset,
            upstream_scale: 1.0,
            nan_row: false,
            after: common::AFTER,
        }
    }

    /// The gradient's element offset: the logits' phase (0, 2) or another (1, 3).
    fn gradient_offset(self) -> u64 {
        if self.in_place {
            self.offset
        } else {
            self.offset * 3 % 4
        }
    }

    /// Label smoothing on odd offsets, so that the spread terms (which read
    /// per-class weights by element) are covered too.
    fn loss(self) -> CrossEntropyLoss {
        let smoothing = if self.offset % 2 == 1 { 0.1 } else { 0.0 };
        CrossEntropyLoss::new()
            .reduction(Reduction::None)
            .label_smoothing(smoothing)
    }

    fn shape(self) -> Shape {
        Shape::new(ROWS, self.classes)
    }
}

/// The byte at which a slice `elements` elements past an aligned start begins.
fn lead(context: &Context, case: Case, elements: u64) -> u64 {
    let alignment = u64::from(context.device().limits().min_storage_buffer_offset_alignment);
    alignment + elements * case.logit_type.size_in_bytes() as u64
}

/// Per-row losses and the gradient of `case` on `context`, checked outside the slices.
fn run(context: &Context, case: Case) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i64>) {
    let what = format!("{case:?}");
    let (mut logits, mut targets) = common::batch(ROWS, case.classes, common::Logits::Random, 41);
    targets[IGNORED_ROW] = IGNORE_INDEX;
    if case.nan_row {
        logits[NAN_ROW * case.classes + case.classes / 2] = f32::NAN;
    }
    let (logit_bytes, seen) = common::encoded(&logits, case.logit_type);
    let call = common::SliceCall {
        logit_bytes: &logit_bytes,
        logit_type: case.logit_type,
        targets: &targets,
        shape: case.shape(),
        logits_lead: lead(context, case, case.offset),
        gradient_lead: (!case.in_place).then(|| lead(context, case, case.gradient_offset())),
        upstream_scale: case.upstream_scale,
        after: case.after,
    };
    let (loss, gradient_bytes) = call.run(context, &case.loss(), &what);
    let Loss::PerRow(losses) = loss else {
        panic!("{what}: the reduction `none` gives per-row losses");
    };
    let gradient = common::decoded(&gradient_bytes, case.logit_type);
    (losses, gradient, seen, targets)
}

/// Checks `case` on `context` against the f64 reference of the logits its type holds.
fn check(context: &Context, case: Case) {
    let what = format!("{case:?}");
    let (losses, gradient, seen, targets) = run(context, case);
    let reference = cross_entropy_f64(&seen, Targets::I64(&targets), case.shape(), case.loss().options());
    common::assert_row_losses_or_nan(&losses, &reference.row_losses, &what);
    let ignored = &gradient[IGNORED_ROW * case.classes..(IGNORED_ROW + 1) * case.classes];
    assert!(ignored.iter().all(|&value| value == 0.0), "{what}: ignored row");
    let scale = f64::from(case.upstream_scale);
    for (index, (&actual, &expected)) in gradient.iter().zip(&reference.gradient).enumerate() {
        let at = format!(
            "{what}: gradient entry {index} (row {}, class {})",
            index / case.classes,
            index % case.classes
        );
        assert_entry(
            actual,
            expected * scale,
            case.logit_type,
            scale / (ROWS * case.classes) as f64,
            &at,
        );
    }
}

/// Asserts one gradient entry against its reference: one rounding to the
/// type, relative to the entry plus `floor`; NaN where the reference is NaN,
/// and ±inf where it lies beyond the largest finite value after rounding.
fn assert_entry(actual: f32, expected: f64, logit_type: LogitType, floor: f64, at: &str) {
    // f16 entries below 2^-14 are subnormal, 2^-24 apart.
    let (tolerance, subnormal_step, overflow) = match logit_type {
        LogitType::Bf16 => (1.0 / 128.0, 0.0, f64::MAX),
        LogitType::F16 => (1.0 / 1024.0, 2f64.powi(-24), 65520.0),
        LogitType::F32 => (1e-5, 0.0, f64::MAX),
    };
    if expected.is_nan() {
        assert!(actual.is_nan(), "{at} is {actual:e}, reference NaN");
    } else if expected.abs() >= overflow * (1.0 + tolerance) {
        assert_eq!(
            actual,
            f32::INFINITY.copysign(expected as f32),
            "{at}: reference {expected:e}"
        );
    } else if expected.abs() <= overflow * (1.0 - tolerance) {
        let error = (f64::from(actual) - expected).abs();
        assert!(
            error <= tolerance * (expected.abs() + floor) + subnormal_step,
            "{at} is {actual:e}, reference {expected:e}"
        );
    }
}

#[test]
fn sixteen_bit_words_keep_nan_and_overflow_to_infinity() {
    let Some(context) = common::gpu() else { return };
    for logit_type in [LogitType::F16, LogitType::Bf16] {
        for (classes, offset) in [(7, 1), (1003, 2), (8195, 3)] {
            // Entries near 1 (the target's) times 1e6 overflow f16; p_c · 1e6 mostly do not.
            let case = Case {
                upstream_scale: 1e6,
                nan_row: true,
                ..Case::plain(classes, logit_type, false, offset)
            };
            check(context, case);
            let (_, gradient, _, _) = run(context, case);
            let nan_row = &gradient[NAN_ROW * classes..(NAN_ROW + 1) * classes];
            assert!(nan_row.iter().all(|value| value.is_nan()), "{case:?}: the NaN row");
            if logit_type == LogitType::F16 {
                assert!(
                    gradient.iter().any(|value| value.is_infinite()),
                    "{case:?}: no entry overflowed"
                );
            }
        }
    }
}

fn every_case() -> impl Iterator<Item = Case> {
    let logit_types = [LogitType::F32, LogitType::F16, LogitType::Bf16];
    CLASSES.into_iter().flat_map(move |classes| {
        logit_types.into_iter().flat_map(move |logit_type| {
            [false, true]
                .into_iter()
                .flat_map(move |in_place| (0..4).map(move |offset| Case::plain(classes, logit_type, in_place, offset)))
        })
    })
}

fn check_every_case(context: Option<&Context>) {
    let Some(context) = context else { return };
    for case in every_case() {
        check(context, case);
    }
}

#[test]
fn unaligned_rows_match_the_reference_at_every_offset_cached_and_streamed() {
    check_every_case(common::gpu());
}

#[test]
fn unaligned_rows_match_the_reference_in_workgroups_of_256_without_subgroups() {
    check_every_case(common::gpu_without_subgroups());
}

/// The context of `options` with [`UnalignedF32::Vectors`], or `None` on a
/// backend without single-lane vector stores, where asking for it must be an
/// `InvalidOption`.
fn vector_context_of(options: ContextOptions) -> Option<Context> {
    let default = common::gpu()?;
    let options = ContextOptions {
        unaligned_f32: UnalignedF32::Vectors,
        ..options
    };
    let backend = default.adapter_info().backend;
    if matches!(backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12) {
        let context = common::open(options)?;
        assert_eq!(context.unaligned_f32(), UnalignedF32::Vectors);
        Some(context)
    } else {
        let result = Context::with_options(options);
        assert!(
            matches!(result, Err(xent::Error::InvalidOption(_))),
            "{backend:?}: vectors must be refused"
        );
        None
    }
}

/// [`vector_context_of`] with the default context's workgroup size (so that
/// its entry-by-entry bits are the default's) and bindings capped at
/// `max_binding_size`.
fn vector_context(max_binding_size: Option<u64>) -> Option<Context> {
    vector_context_of(ContextOptions {
        workgroup_size: Some(common::gpu()?.workgroup_size()),
        max_binding_size,
        ..ContextOptions::default()
    })
}

/// The bits of a run's losses and gradient.
fn run_bits(context: &Context, case: Case) -> Vec<u32> {
    let (losses, gradient, _, _) = run(context, case);
    losses.iter().chain(&gradient).map(|value| value.to_bits()).collect()
}

/// f32 rows not in aligned groups of 4 as vec4 groups with masked edges (the
/// default on hardware Vulkan and DX12 adapters, forced here): every residue
/// and offset, separate and in place, cached and streamed, against the
/// reference and byte for byte outside the slices.
#[test]
fn f32_vector_rows_match_the_reference_at_every_offset() {
    let Some(context) = vector_context(None) else { return };
    for case in every_case().filter(|case| case.logit_type == LogitType::F32) {
        check(&context, case);
    }
}

/// The vector path needs both buffers to hold whole vec4s past the slices; a
/// logits or gradient buffer that ends at the slice's last entry goes entry by
/// entry: its bits are those of the entry-by-entry default context on this
/// software adapter (`UnalignedF32::Auto` takes entries on software adapters),
/// and differ from the vector path's (their sums run in other orders).
#[test]
fn f32_vector_rows_fall_back_to_entries_without_room_after_the_slice() {
    let Some(context) = vector_context(None) else { return };
    let Some(default) = common::gpu() else { return };
    assert_eq!(default.unaligned_f32(), UnalignedF32::Auto);
    let software = default.adapter_info().device_type == wgpu::DeviceType::Cpu;
    for classes in [5, 1003, 8195] {
        for in_place in [false, true] {
            for offset in [1, 3] {
                let roomy = Case::plain(classes, LogitType::F32, in_place, offset);
                let exact = Case { after: 0, ..roomy };
                check(&context, exact);
                let vectors = run_bits(&context, roomy);
                let fallback = run_bits(&context, exact);
                assert_ne!(vectors, fallback, "{roomy:?}: the fallback is another path");
                if software {
                    assert_eq!(
                        fallback,
                        run_bits(default, roomy),
                        "{roomy:?}: the fallback is the entries path"
                    );
                }
            }
        }
    }
}

/// Chunked calls (bindings capped at 16 KiB: about 3 rows of 1003 logits a
/// chunk, each chunk's windows widened to whole vec4s, overlapping the next
/// chunk's first row) match the reference and give the unchunked call's bits,
/// separate and in place.
#[test]
fn f32_vector_rows_in_chunks_give_the_unchunked_bits() {
    let Some(whole) = vector_context(None) else { return };
    let Some(chunked) = vector_context(Some(16 << 10)) else {
        return;
    };
    for in_place in [false, true] {
        for offset in [1, 2, 3] {
            let case = Case::plain(1003, LogitType::F32, in_place, offset);
            check(&chunked, case);
            assert_eq!(run_bits(&chunked, case), run_bits(&whole, case), "{case:?}");
        }
    }
}

/// Where the split-row kernel takes the rows (forced here), it reaches f32 rows
/// entry by entry whatever `UnalignedF32` says: with vectors asked for, split
/// rows of every residue still match the reference, separate and in place.
#[test]
fn split_f32_rows_under_vectors_match_the_reference() {
    let Some(context) = vector_context_of(ContextOptions {
        row_split: xent::RowSplit::Forced {
            vec4s_per_invocation: 1,
            spin_limit: xent::DEFAULT_SPIN_LIMIT,
        },
        ..ContextOptions::default()
    }) else {
        return;
    };
    for classes in [1003, 8193, 8195] {
        assert!(
            context.splits_rows(Shape::new(ROWS, classes), LogitType::F32),
            "{classes}"
        );
        for in_place in [false, true] {
            for offset in [1, 3] {
                check(&context, Case::plain(classes, LogitType::F32, in_place, offset));
            }
        }
    }
}

/// 16-bit rows in chunks of one or two rows (4 KiB bindings): the words that
/// straddle a chunk's boundary are written by the next chunk's straddling-word
/// pass, after both rows are done, in place too; the chunked calls match the
/// reference and give the unchunked call's bits.
#[test]
fn sixteen_bit_rows_in_chunks_give_the_unchunked_bits() {
    let Some(whole) = common::gpu() else { return };
    let Some(chunked) = common::open(ContextOptions {
        max_binding_size: Some(4 << 10),
        ..ContextOptions::default()
    }) else {
        return;
    };
    assert_eq!(chunked.workgroup_size(), whole.workgroup_size());
    for logit_type in [LogitType::Bf16, LogitType::F16] {
        for classes in [5, 1003] {
            for in_place in [false, true] {
                for offset in [1, 2, 3] {
                    let case = Case::plain(classes, logit_type, in_place, offset);
                    check(&chunked, case);
                    assert_eq!(run_bits(&chunked, case), run_bits(whole, case), "{case:?}");
                }
            }
        }
    }
}
