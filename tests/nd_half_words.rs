//! 16-bit N-d rows (logits [N, C, d1, …], a row's entries `spatial` apart):
//! bf16 and f16, S even and odd, C·S even and odd, C small, cached and
//! streamed past the row cache (9000 and 9001 classes), with a separate
//! gradient and in place, the slices at offset 0 and at odd element offsets
//! inside bigger buffers (a 32-bit word then holds halves of two rows, or of a
//! row and bytes outside the slice), the plain mean and label smoothing with
//! class weights, ignore_index and a z-loss; every batch has an ignored row, a
//! row with a NaN logit, a row of equal logits and one with a tied maximum
//! beside rows with a unique maximum (the row kernel hands the gradient-word
//! pass `rest` or the whole sum of exponentials depending on that). bf16 with
//! soft targets, per-row upstream values, a softcap and a logit scale has its
//! own digests (tests/fixtures/nd_half_words_soft_digests.txt, from 9c58448, and
//! recorded again when shaders/softcap.wgsl replaced WGSL's `tanh`, whose
//! rounding its softcap changed).
//!
//! Each call is checked against the f64 reference (one rounding of the largest
//! entry to the type), byte for byte outside the caller's slices, and, on the
//! adapter they were recorded on, against digests of the loss bits and
//! gradient bytes in tests/fixtures/nd_half_words_digests.txt, recorded from
//! commit 9c58448, whose bf16 N-d rows stored each gradient half with atomics
//! (`XENT_RECORD_DIGESTS=1` rewrites the file). Chunked into one block of
//! C·S entries per chunk (a small binding cap), every call gives the unchunked
//! call's bits: a word that straddles two chunks is written right.

mod common;

use xent::reference::cross_entropy_f64;
use xent::{
    Context, ContextOptions, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Error, GradientOutput, LogitType, Loss,
    Reduction, Shape, Targets, UpstreamGradient,
};

const DIGESTS: &str = "tests/fixtures/nd_half_words_digests.txt";
const SOFT_DIGESTS: &str = "tests/fixtures/nd_half_words_soft_digests.txt";

/// (N, C, spatial dimensions).
type Dims = (usize, usize, &'static [usize]);

const SHAPES: [Dims; 6] = [
    // S odd, C·S odd.
    (4, 37, &[3]),
    // S even.
    (3, 40, &[4]),
    // Two spatial dimensions (S = 6), C odd.
    (2, 33, &[2, 3]),
    // Tiny rows (the narrowest row variant), C·S odd.
    (5, 3, &[7]),
    // Streamed: C above the row cache.
    (2, 9000, &[3]),
    (2, 9001, &[3]),
];
/// The (logits, gradient) slices' element offsets past an aligned start.
const OFFSETS: [(u64, u64); 3] = [(0, 0), (1, 2), (3, 1)];
const IGNORED_ROW: usize = 1;
/// A row with a NaN logit: its loss and gradient are NaN.
const NAN_ROW: usize = 2;
/// A row of equal logits: its maximum is not unique (count = C).
const EQUAL_ROW: usize = 3;
/// A row whose maximum two classes share (count = 2).
const TIED_ROW: usize = 4;
const IGNORE_INDEX: i64 = -7;

#[derive(Clone, Copy, Debug)]
struct Case {
    dims: Dims,
    logit_type: LogitType,
    in_place: bool,
    /// Element offsets (logits, gradient); in place the gradient is the logits'.
    offsets: (u64, u64),
}

impl Case {
    fn shape(self) -> Shape {
        let (batch, classes, spatial) = self.dims;
        Shape::nd(batch, classes, spatial).expect("a small shape")
    }

    /// The plain mean at offset 0; elsewhere label smoothing, class weights, a
    /// z-loss and per-row losses. Both ignore row IGNORED_ROW.
    fn loss(self) -> CrossEntropyLoss {
        if self.offsets.0 == 0 {
            return CrossEntropyLoss::new()
                .reduction(Reduction::Mean)
                .ignore_index(IGNORE_INDEX);
        }
        let classes = self.dims.1;
        let weights = (0..classes).map(|class| 0.5 + (class % 7) as f32 * 0.25).collect();
        CrossEntropyLoss::new()
            .reduction(Reduction::None)
            .ignore_index(IGNORE_INDEX)
            .weight(weights)
            .label_smoothing(0.1)
            .z_loss(1e-3)
    }

    /// The logits' bytes, the values they hold, and the targets: one ignored
    /// row, one with a NaN logit, one of equal logits and one with a tied maximum.
    fn batch(self) -> (Vec<u8>, Vec<f32>, Vec<i64>) {
        let shape = self.shape();
        let (mut logits, mut targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 29);
        targets[IGNORED_ROW] = IGNORE_INDEX;
        logits[shape.index(NAN_ROW, shape.classes / 2)] = f32::NAN;
        for class in 0..shape.classes {
            logits[shape.index(EQUAL_ROW, class)] = 0.5;
        }
        logits[shape.index(TIED_ROW, 0)] = 5.0;
        logits[shape.index(TIED_ROW, shape.classes - 1)] = 5.0;
        let (bytes, seen) = common::encoded(&logits, self.logit_type);
        (bytes, seen, targets)
    }
}

fn every_case(has_f16: bool) -> impl Iterator<Item = Case> {
    let logit_types = [LogitType::Bf16, LogitType::F16]
        .into_iter()
        .filter(move |&logit_type| has_f16 || logit_type != LogitType::F16);
    logit_types.flat_map(|logit_type| {
        SHAPES.into_iter().flat_map(move |dims| {
            [false, true].into_iter().flat_map(move |in_place| {
                OFFSETS.into_iter().map(move |offsets| Case {
                    dims,
                    logit_type,
                    in_place,
                    offsets,
                })
            })
        })
    })
}

fn has_f16(context: &Context) -> bool {
    context.features().contains(wgpu::Features::SHADER_F16)
}

/// The byte at which a slice `elements` elements past an aligned start begins.
fn lead(context: &Context, logit_type: LogitType, elements: u64) -> u64 {
    let alignment = u64::from(context.device().limits().min_storage_buffer_offset_alignment);
    alignment + elements * logit_type.size_in_bytes() as u64
}

/// The loss and the gradient's bytes of `case` on `context`, checked outside the slices.
fn run(context: &Context, case: Case) -> (Loss, Vec<u8>) {
    let (logit_bytes, _, targets) = case.batch();
    let leads = (
        lead(context, case.logit_type, case.offsets.0),
        (!case.in_place).then(|| lead(context, case.logit_type, case.offsets.1)),
    );
    let call = common::SliceCall::plain(&logit_bytes, case.logit_type, &targets, case.shape(), leads);
    call.run(context, &case.loss(), &format!("{case:?}"))
}

/// Checks the loss and gradient of `case` against the f64 reference.
fn assert_matches_reference(case: Case, loss: &Loss, gradient_bytes: &[u8]) {
    let what = format!("{case:?}");
    let shape = case.shape();
    let (_, seen, targets) = case.batch();
    let reference = cross_entropy_f64(&seen, Targets::I64(&targets), shape, case.loss().options());
    common::assert_loss_matches(loss, &reference, &what);
    let gradient = common::decoded(gradient_bytes, case.logit_type);
    for class in 0..shape.classes {
        let ignored = gradient[shape.index(IGNORED_ROW, class)];
        assert!(ignored == 0.0, "{what}: ignored row, class {class}: {ignored:e}");
        let poisoned = gradient[shape.index(NAN_ROW, class)];
        assert!(poisoned.is_nan(), "{what}: NaN row, class {class}: {poisoned:e}");
    }
    common::assert_gradient_within_rounding(&gradient, &reference.gradient, case.logit_type, &what);
}

#[test]
fn nd_half_rows_match_the_reference_the_atomic_kernel_and_stay_in_their_slices() {
    let cases = |context: &Context| every_case(has_f16(context));
    common::digests::check_every_case(DIGESTS, cases, run, assert_matches_reference);
}

/// A bf16 N-d call with soft targets (which the gradient-word pass reads per
/// element), per-row upstream values, a softcap, a logit scale and label
/// smoothing, the logits one element and the gradient two past an aligned start.
#[derive(Clone, Copy, Debug)]
struct SoftCase {
    dims: Dims,
    in_place: bool,
}

impl SoftCase {
    fn shape(self) -> Shape {
        Shape::nd(self.dims.0, self.dims.1, self.dims.2).expect("a small shape")
    }

    fn loss() -> CrossEntropyLoss {
        CrossEntropyLoss::new()
            .reduction(Reduction::None)
            .softcap(20.0)
            .logit_scale(1.5)
            .label_smoothing(0.05)
    }

    /// The logits' bytes, the values they hold, the probabilities (in the
    /// logits' layout, each row's summing to 1) and one upstream value per row.
    fn batch(self) -> (Vec<u8>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let shape = self.shape();
        let (logits, _) = common::batch(shape.rows, shape.classes, common::Logits::Random, 31);
        let (bytes, seen) = common::encoded(&logits, LogitType::Bf16);
        let mut probabilities = vec![0.0f32; logits.len()];
        for row in 0..shape.rows {
            let raw = |class: usize| 1.0 + ((row * 7 + class * 3) % 5) as f32;
            let total: f32 = (0..shape.classes).map(raw).sum();
            for class in 0..shape.classes {
                probabilities[shape.index(row, class)] = raw(class) / total;
            }
        }
        let upstream = (0..shape.rows).map(|row| 0.5 + (row % 3) as f32 * 0.25).collect();
        (bytes, seen, probabilities, upstream)
    }
}

fn soft_cases() -> impl Iterator<Item = SoftCase> {
    [SHAPES[0], SHAPES[2], SHAPES[5]]
        .into_iter()
        .flat_map(|dims| [false, true].map(|in_place| SoftCase { dims, in_place }))
}

/// The loss and the gradient's bytes of `case` on `context`, checked outside the slices.
fn run_soft(context: &Context, case: SoftCase) -> (Loss, Vec<u8>) {
    let what = format!("{case:?}");
    let (logit_bytes, _, probabilities, upstream) = case.batch();
    let len = logit_bytes.len();
    let (logits_lead, gradient_lead) = (lead(context, LogitType::Bf16, 1), lead(context, LogitType::Bf16, 2));
    let logits = common::filled_buffer(context, &logit_bytes, logits_lead);
    let gradient = common::filled_buffer(context, &vec![common::FILL; len], gradient_lead);
    let targets = common::storage_buffer(context, bytemuck::cast_slice(&probabilities));
    let upstream = common::storage_buffer(context, bytemuck::cast_slice(&upstream));
    let inputs = DeviceInputs {
        logits: logits.slice(logits_lead..logits_lead + len as u64),
        logit_type: LogitType::Bf16,
        targets: targets.slice(..),
        target_type: xent::TargetType::Probabilities,
        shape: case.shape(),
        gradient: if case.in_place {
            GradientOutput::InPlace
        } else {
            GradientOutput::Buffer(gradient.slice(gradient_lead..gradient_lead + len as u64))
        },
        upstream: UpstreamGradient {
            scale: 1.0,
            values: Some(upstream.slice(..)),
        },
    };
    let outputs = DeviceOutputs::new(context, case.shape().rows).expect("outputs");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    SoftCase::loss()
        .record(context, &mut encoder, &inputs, &outputs)
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    context.queue().submit([encoder.finish()]);
    let loss = outputs.read(context).expect("read");
    let written = common::slice_bytes(context, &logits, logits_lead, len, &what);
    if case.in_place {
        return (loss, written);
    }
    assert_eq!(written, logit_bytes, "{what}: logits changed");
    (loss, common::slice_bytes(context, &gradient, gradient_lead, len, &what))
}

/// Checks the per-row losses and the gradient (times each row's upstream
/// value) of a soft case against the f64 reference.
fn assert_soft_matches_reference(case: SoftCase, loss: &Loss, gradient_bytes: &[u8]) {
    let what = format!("{case:?}");
    let shape = case.shape();
    let (_, seen, probabilities, upstream) = case.batch();
    let options = SoftCase::loss().options().clone();
    let reference = cross_entropy_f64(&seen, Targets::Probabilities(&probabilities), shape, &options);
    common::assert_loss_matches(loss, &reference, &what);
    let mut expected = reference.gradient;
    for row in 0..shape.rows {
        for class in 0..shape.classes {
            expected[shape.index(row, class)] *= f64::from(upstream[row]);
        }
    }
    let gradient = common::decoded(gradient_bytes, LogitType::Bf16);
    common::assert_gradient_within_rounding(&gradient, &expected, LogitType::Bf16, &what);
}

#[test]
fn nd_bf16_soft_targets_with_upstream_values_match_the_reference_and_the_atomic_kernel() {
    common::digests::check_every_case(SOFT_DIGESTS, |_| soft_cases(), run_soft, assert_soft_matches_reference);
}

/// The error of a bf16 call of `shape` on `logit_bytes` and `targets` (i64)
/// through the device door, with a separate gradient or in place.
fn bad_target_error(context: &Context, shape: Shape, logit_bytes: &[u8], targets: &[i64], in_place: bool) -> Error {
    let logits = common::storage_buffer(context, logit_bytes);
    let gradient = common::storage_buffer(context, logit_bytes);
    let targets = common::storage_buffer(context, bytemuck::cast_slice(targets));
    let inputs = DeviceInputs {
        logits: logits.slice(..),
        logit_type: LogitType::Bf16,
        targets: targets.slice(..),
        target_type: xent::TargetType::I64,
        shape,
        gradient: if in_place {
            GradientOutput::InPlace
        } else {
            GradientOutput::Buffer(gradient.slice(..))
        },
        upstream: UpstreamGradient::ONE,
    };
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    let loss = CrossEntropyLoss::new().label_smoothing(0.1);
    loss.record(context, &mut encoder, &inputs, &outputs).expect("recorded");
    context.queue().submit([encoder.finish()]);
    outputs.read(context).expect_err("a bad target is an error")
}

/// The rows around a bad target record their gradient sums in the planes
/// where the bad row leaves its raw target words: the error still names the
/// first bad row's value, unchunked and in one-block chunks.
#[test]
fn a_bad_target_among_nd_half_rows_keeps_its_words() {
    let Some(whole) = common::gpu() else { return };
    for dims in [SHAPES[0], SHAPES[5]] {
        let shape = Shape::nd(dims.0, dims.1, dims.2).expect("a small shape");
        let chunked = one_block_context(whole, dims, 2).expect("chunks of one block");
        let (logits, mut targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 5);
        let (logit_bytes, _) = common::encoded(&logits, LogitType::Bf16);
        let first_bad = shape.rows / 3;
        let classes = shape.classes as i64;
        for (row, value) in [(first_bad, -3), (first_bad + 1, classes), (shape.rows - 1, classes + 5)] {
            targets[row] = value;
        }
        let expected = Error::TargetOutOfRange {
            row: first_bad,
            value: -3,
            classes: shape.classes,
        };
        for context in [whole, &chunked] {
            for in_place in [false, true] {
                let error = bad_target_error(context, shape, &logit_bytes, &targets, in_place);
                assert_eq!(error, expected, "{dims:?} in place {in_place}");
            }
        }
    }
}

/// The binding cap under which `dims` goes one block (C·S entries of
/// `entry_bytes`: 2 for 16-bit logits, 4 with soft targets) per chunk, on an
/// adapter of `alignment`, or `None` when the per-row outputs (7 planes of
/// 4-byte words) need more: rows of fewer than about 14 classes.
fn one_block_binding(dims: Dims, entry_bytes: u64, alignment: u64) -> Option<u64> {
    let shape = Shape::nd(dims.0, dims.1, dims.2).expect("a small shape");
    let block = (shape.classes * shape.spatial) as u64 * entry_bytes;
    // The chunk planner keeps room for the aligned-down start and a vec4.
    let cap = (alignment + 16 + block + block / 2) / 4 * 4;
    (shape.rows as u64 * 7 * 4 <= cap).then_some(cap)
}

/// A context of `whole`'s workgroup size whose bindings hold one block of
/// `dims` ([`one_block_binding`]), or `None` when `dims` cannot go one block per chunk.
fn one_block_context(whole: &Context, dims: Dims, entry_bytes: u64) -> Option<Context> {
    let alignment = u64::from(whole.device().limits().min_storage_buffer_offset_alignment);
    let cap = one_block_binding(dims, entry_bytes, alignment)?;
    let chunked = common::open(ContextOptions {
        max_binding_size: Some(cap),
        ..ContextOptions::default()
    })
    .expect("the adapter of `whole`");
    assert_eq!(chunked.workgroup_size(), whole.workgroup_size());
    Some(chunked)
}

/// Checks `case` on `chunked` with `check`, and that it gives the bits it gives on `whole`.
fn assert_chunked_bits<C: Copy + std::fmt::Debug>(
    (whole, chunked): (&Context, &Context),
    case: C,
    run: impl Fn(&Context, C) -> (Loss, Vec<u8>),
    check: impl Fn(C, &Loss, &[u8]),
) {
    let (loss, gradient) = run(chunked, case);
    check(case, &loss, &gradient);
    let (whole_loss, whole_gradient) = run(whole, case);
    assert_eq!(
        common::digests::digest(&loss, &gradient),
        common::digests::digest(&whole_loss, &whole_gradient),
        "{case:?}: chunked bits"
    );
}

/// The chunked calls match the reference and give the unchunked call's bits,
/// where every 32-bit word that straddles two chunks (C·S odd, or the slice
/// at an odd offset) is written once per chunk, each keeping the other's half.
#[test]
fn nd_half_rows_in_one_block_chunks_give_the_unchunked_bits() {
    let Some(whole) = common::gpu() else { return };
    let mut chunked_shapes = 0;
    for dims in SHAPES {
        let Some(chunked) = one_block_context(whole, dims, 2) else {
            continue;
        };
        for case in every_case(has_f16(whole)).filter(|case| case.dims == dims) {
            assert_chunked_bits((whole, &chunked), case, run, assert_matches_reference);
        }
        chunked_shapes += 1;
    }
    assert_eq!(chunked_shapes, SHAPES.len() - 1, "every shape but C = 3 chunks");
}

/// The same for soft targets (one block of logits and of probabilities per chunk).
#[test]
fn nd_bf16_soft_targets_in_one_block_chunks_give_the_unchunked_bits() {
    let Some(whole) = common::gpu() else { return };
    for case in soft_cases() {
        let chunked = one_block_context(whole, case.dims, 4).expect("chunks of one block");
        assert_chunked_bits((whole, &chunked), case, run_soft, assert_soft_matches_reference);
    }
}
