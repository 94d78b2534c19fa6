//! The row kernel's variants for contiguous rows whose vocabulary is not a
//! multiple of 4 (bf16: groups of 4 aligned in the binding with masked edges;
//! f32 and f16: entry by entry, several loads in flight), pinned against the
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
use xent::{
    Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Loss, Reduction, Shape,
    TargetType, Targets, UpstreamGradient,
};

/// Rows shorter than a group, narrow and wide cached rows, and streamed rows.
const CLASSES: [usize; 9] = [1, 2, 3, 5, 38, 1003, 8193, 8194, 8195];
const ROWS: usize = 6;
const IGNORED_ROW: usize = 2;
const IGNORE_INDEX: i64 = -100;

#[derive(Clone, Copy, Debug)]
struct Case {
    classes: usize,
    logit_type: LogitType,
    in_place: bool,
    /// Element offset of the logits' slice past an aligned start (0..3).
    offset: u64,
}

impl Case {
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
    let (logits, mut targets) = common::batch(ROWS, case.classes, common::Logits::Random, 41);
    targets[IGNORED_ROW] = IGNORE_INDEX;
    let (logit_bytes, seen) = common::encoded(&logits, case.logit_type);
    let len = logit_bytes.len() as u64;
    let logits_lead = lead(context, case, case.offset);
    let gradient_lead = lead(context, case, case.gradient_offset());
    let logits_buffer = common::filled_buffer(context, &logit_bytes, logits_lead);
    let gradient_buffer = common::filled_buffer(context, &vec![common::FILL; logit_bytes.len()], gradient_lead);
    let targets_buffer = common::filled_buffer(context, bytemuck::cast_slice(&targets), 0);
    let inputs = DeviceInputs {
        logits: logits_buffer.slice(logits_lead..logits_lead + len),
        logit_type: case.logit_type,
        targets: targets_buffer.slice(..ROWS as u64 * 8),
        target_type: TargetType::I64,
        shape: case.shape(),
        gradient: if case.in_place {
            GradientOutput::InPlace
        } else {
            GradientOutput::Buffer(gradient_buffer.slice(gradient_lead..gradient_lead + len))
        },
        upstream: UpstreamGradient::default(),
    };
    let outputs = DeviceOutputs::new(context, ROWS).expect("outputs");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    case.loss()
        .record(context, &mut encoder, &inputs, &outputs)
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    context.queue().submit([encoder.finish()]);
    let Loss::PerRow(losses) = outputs.read(context).expect("read") else {
        panic!("{what}: the reduction `none` gives per-row losses");
    };
    let untouched = common::slice_bytes(context, &logits_buffer, logits_lead, logit_bytes.len(), &what);
    let gradient_bytes = if case.in_place {
        untouched
    } else {
        assert_eq!(untouched, logit_bytes, "{what}: logits changed");
        common::slice_bytes(context, &gradient_buffer, gradient_lead, logit_bytes.len(), &what)
    };
    let gradient = common::decoded(&gradient_bytes, case.logit_type);
    (losses, gradient, seen, targets)
}

/// Checks `case` on `context` against the f64 reference of the logits its type holds.
fn check(context: &Context, case: Case) {
    let what = format!("{case:?}");
    let (losses, gradient, seen, targets) = run(context, case);
    let reference = cross_entropy_f64(&seen, Targets::I64(&targets), case.shape(), case.loss().options());
    common::assert_row_losses(&losses, &reference.row_losses, &what);
    let ignored = &gradient[IGNORED_ROW * case.classes..(IGNORED_ROW + 1) * case.classes];
    assert!(ignored.iter().all(|&value| value == 0.0), "{what}: ignored row");
    // Entry by entry: one rounding to the gradient's type, relative to the entry
    // and to the row's largest entry (the target's, about 1).
    // f16 entries below 2^-14 are subnormal, 2^-24 apart.
    let (tolerance, subnormal_step) = match case.logit_type {
        LogitType::Bf16 => (1.0 / 128.0, 0.0),
        LogitType::F16 => (1.0 / 1024.0, 2f64.powi(-24)),
        LogitType::F32 => (1e-5, 0.0),
    };
    for (index, (&actual, &expected)) in gradient.iter().zip(&reference.gradient).enumerate() {
        let error = (f64::from(actual) - expected).abs();
        assert!(
            error <= tolerance * (expected.abs() + 1.0 / ROWS as f64 / case.classes as f64) + subnormal_step,
            "{what}: gradient entry {index} (row {}, class {}) is {actual:e}, reference {expected:e}",
            index / case.classes,
            index % case.classes
        );
    }
}

fn every_case(has_f16: bool) -> impl Iterator<Item = Case> {
    let logit_types = [LogitType::F32, LogitType::F16, LogitType::Bf16];
    CLASSES.into_iter().flat_map(move |classes| {
        logit_types
            .into_iter()
            .filter(move |&logit_type| has_f16 || logit_type != LogitType::F16)
            .flat_map(move |logit_type| {
                [false, true].into_iter().flat_map(move |in_place| {
                    (0..4).map(move |offset| Case {
                        classes,
                        logit_type,
                        in_place,
                        offset,
                    })
                })
            })
    })
}

fn check_every_case(context: Option<&Context>) {
    let Some(context) = context else { return };
    let has_f16 = context.features().contains(wgpu::Features::SHADER_F16);
    for case in every_case(has_f16) {
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
