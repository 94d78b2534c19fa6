//! The split-row kernel (`RowSplit::Forced`, shaders/cross_entropy_split.wgsl)
//! on lavapipe: values against the f64 reference across slice boundaries and
//! every option, separate and in place; the same bits whichever path a slice
//! takes (all through the repair dispatch, or polling), across repeated runs
//! and across row chunks; upstream values; a bad target's typed error.

mod common;

use std::sync::OnceLock;

use common::{assert_gradient, assert_loss, assert_row_losses, open};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;
use xent::half::{bf16, f16};
use xent::reference::{ReferenceCrossEntropy, cross_entropy_f64};
use xent::{
    Context, ContextOptions, CrossEntropyLoss, CrossEntropyOptions, DeviceInputs, DeviceOutputs, Error, GradientOutput,
    LogitType, LogitsMut, LossOutput, Reduction, RowSplit, Shape, TargetType, Targets, UpstreamGradient,
};

/// Invocations per workgroup of the split contexts.
const WORKGROUP: u32 = 64;
/// Logits per slice with one vec4 per invocation.
const SLICE: usize = WORKGROUP as usize * 4;

fn split_options(spin_limit: u32, max_binding_size: Option<u64>) -> ContextOptions {
    ContextOptions {
        workgroup_size: Some(WORKGROUP),
        max_binding_size,
        row_split: RowSplit::Forced {
            vec4s_per_invocation: 1,
            spin_limit,
        },
        ..ContextOptions::default()
    }
}

/// Slices poll for each other (and go to the repair dispatch when that fails).
fn polling() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| open(split_options(xent::DEFAULT_SPIN_LIMIT, None)))
        .as_ref()
}

/// Slices never poll: every slice is finished by the repair dispatch.
fn repair_only() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT.get_or_init(|| open(split_options(0, None))).as_ref()
}

/// Polling, with bindings small enough that long batches run in several chunks.
fn chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| open(split_options(xent::DEFAULT_SPIN_LIMIT, Some(256 << 10))))
        .as_ref()
}

/// Random logits (spread over ±8) and class targets; row r's target is
/// `targets_at(r)`.
fn batch(shape: Shape, seed: u64, targets_at: impl Fn(usize) -> i64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let logits = (0..shape.rows * shape.classes)
        .map(|_| rng.random_range(-8.0f32..8.0))
        .collect();
    (logits, (0..shape.rows).map(targets_at).collect())
}

/// Loss, row statistics and gradient of one call (the gradient written over
/// the logits when `in_place`).
fn run(
    context: &Context,
    options: &CrossEntropyOptions,
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    in_place: bool,
) -> (LossOutput, Vec<f32>) {
    let loss = CrossEntropyLoss::with_options(options.clone());
    if in_place {
        let mut gradient = logits.to_vec();
        let output = loss
            .loss_and_grad_in_place(context, &mut gradient, targets, shape)
            .expect("in-place call");
        let stats = loss
            .forward(context, logits, targets, shape, None, true)
            .expect("row statistics");
        let output = LossOutput { loss: output, ..stats };
        return (output, gradient);
    }
    let mut gradient = vec![0.0f32; logits.len()];
    let output = loss
        .forward(
            context,
            logits,
            targets,
            shape,
            Some(LogitsMut::F32(&mut gradient)),
            true,
        )
        .expect("call");
    (output, gradient)
}

/// Checks one call's outputs against the f64 reference.
fn assert_matches(output: &LossOutput, gradient: &[f32], truth: &ReferenceCrossEntropy, label: &str) {
    match output.loss.per_row() {
        Some(rows) => assert_row_losses(rows, &truth.row_losses, label),
        None => assert_loss(output.loss.value().expect("reduced"), truth.loss, label),
    }
    let lse = output.lse.as_ref().expect("lse");
    assert_row_losses(lse, &truth.row_lse, &format!("{label}: lse"));
    assert_eq!(output.argmax.as_ref(), Some(&truth.row_argmax), "{label}: argmax");
    let scale = truth.gradient.iter().fold(0.0f64, |max, value| max.max(value.abs()));
    assert_gradient(gradient, &truth.gradient, scale, &format!("{label}: gradient"));
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

fn loss_bits(output: &LossOutput) -> Vec<u32> {
    match output.loss.per_row() {
        Some(rows) => bits(rows),
        None => bits(&[output.loss.value().expect("reduced")]),
    }
}

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

#[test]
fn forced_contexts_split_contiguous_f32_rows() {
    let Some(context) = polling() else { return };
    assert!(context.splits_rows(Shape::new(3, 40_000), LogitType::F32));
    assert!(context.splits_rows(Shape::new(3, SLICE - 1), LogitType::F32));
    assert!(!context.splits_rows(Shape::new(3, 256 * SLICE + 1), LogitType::F32));
    let bad = Context::with_options(ContextOptions {
        row_split: RowSplit::Forced {
            vec4s_per_invocation: 3,
            spin_limit: 1,
        },
        ..ContextOptions::default()
    });
    assert!(matches!(bad, Err(Error::InvalidOption(_))), "{bad:?}");
}

#[test]
fn slices_match_the_reference_across_slice_boundaries() {
    let Some(polling) = polling() else { return };
    // The workgroup-memory reductions too, where the default context has subgroups.
    let tree = open(ContextOptions {
        use_subgroups: false,
        ..split_options(xent::DEFAULT_SPIN_LIMIT, None)
    });
    let contexts: Vec<&Context> = [Some(polling), tree.as_ref().filter(|_| polling.uses_subgroups())]
        .into_iter()
        .flatten()
        .collect();
    for (context, classes) in contexts
        .iter()
        .flat_map(|&context| [SLICE - 1, SLICE, SLICE + 1, 3 * SLICE + 5, 40_000].map(|classes| (context, classes)))
    {
        let shape = Shape::new(3, classes);
        // Targets in the first class, the last class, and one in between.
        let last = classes as i64 - 1;
        let (logits, targets) = batch(shape, classes as u64, |row| [0, last, last / 2][row]);
        for reduction in REDUCTIONS {
            let options = CrossEntropyOptions {
                reduction,
                ..CrossEntropyOptions::default()
            };
            let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &options);
            for in_place in [false, true] {
                let (output, gradient) = run(context, &options, &logits, Targets::I64(&targets), shape, in_place);
                let subgroups = context.uses_subgroups();
                let label = format!("C={classes} {reduction:?} in_place={in_place} subgroups={subgroups}");
                assert_matches(&output, &gradient, &truth, &label);
            }
        }
    }
}

/// Every option at once over slices, class and soft targets, separate and in place.
#[test]
fn options_match_the_reference() {
    let Some(context) = polling() else { return };
    let shape = Shape::new(4, 3 * SLICE + 5);
    let classes = shape.classes;
    let mut rng = StdRng::seed_from_u64(7);
    let weight: Vec<f32> = (0..classes).map(|_| rng.random_range(0.25f32..2.0)).collect();
    let (logits, mut targets) = batch(shape, 11, |row| [classes as i64 - 1, 0, 17, 500][row]);
    targets[2] = -100;
    let soft: Vec<f32> = {
        let raw: Vec<f32> = (0..logits.len()).map(|_| rng.random_range(0.0f32..1.0)).collect();
        raw.chunks(classes)
            .flat_map(|row| {
                let total: f32 = row.iter().sum();
                row.iter().map(move |value| value / total).collect::<Vec<_>>()
            })
            .collect()
    };
    let variants = [
        (
            "weights",
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                ..CrossEntropyOptions::default()
            },
        ),
        (
            "smoothing+z",
            CrossEntropyOptions {
                label_smoothing: 0.1,
                z_loss: 1e-3,
                ..CrossEntropyOptions::default()
            },
        ),
        (
            "softcap+scale",
            CrossEntropyOptions {
                softcap: Some(5.0),
                logit_scale: 1.5,
                reduction: Reduction::Sum,
                ..CrossEntropyOptions::default()
            },
        ),
        (
            "all",
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                label_smoothing: 0.05,
                z_loss: 1e-4,
                softcap: Some(6.0),
                logit_scale: 0.75,
                reduction: Reduction::None,
                ..CrossEntropyOptions::default()
            },
        ),
    ];
    for (name, options) in &variants {
        let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, options);
        for in_place in [false, true] {
            let (output, gradient) = run(context, options, &logits, Targets::I64(&targets), shape, in_place);
            assert_matches(&output, &gradient, &truth, &format!("{name} in_place={in_place}"));
        }
    }
    for reduction in REDUCTIONS {
        let options = CrossEntropyOptions {
            reduction,
            label_smoothing: 0.1,
            ..CrossEntropyOptions::default()
        };
        let truth = cross_entropy_f64(&logits, Targets::Probabilities(&soft), shape, &options);
        let (output, gradient) = run(context, &options, &logits, Targets::Probabilities(&soft), shape, false);
        assert_matches(&output, &gradient, &truth, &format!("soft {reduction:?}"));
    }
}

/// Loss, lse, argmax and gradient bits of one call.
fn call_bits(
    context: &Context,
    options: &CrossEntropyOptions,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
    in_place: bool,
) -> Vec<Vec<u32>> {
    let (output, gradient) = run(context, options, logits, Targets::I64(targets), shape, in_place);
    let argmax = output.argmax.clone().expect("argmax");
    vec![
        loss_bits(&output),
        bits(output.lse.as_ref().expect("lse")),
        argmax,
        bits(&gradient),
    ]
}

#[test]
fn repair_polling_repeats_and_chunks_give_the_same_bits() {
    let (Some(polling), Some(repair), Some(chunked)) = (polling(), repair_only(), chunked()) else {
        return;
    };
    // 12 rows of 40 000 logits: 1.9 MB, several chunks of 256 KiB bindings.
    let shape = Shape::new(12, 40_000);
    let last = shape.classes as i64 - 1;
    let (logits, targets) = batch(shape, 3, |row| if row % 2 == 0 { last } else { row as i64 * 1000 });
    let options = CrossEntropyOptions {
        label_smoothing: 0.1,
        z_loss: 1e-4,
        reduction: Reduction::None,
        ..CrossEntropyOptions::default()
    };
    for in_place in [false, true] {
        let expected = call_bits(polling, &options, &logits, &targets, shape, in_place);
        let label = format!("in_place={in_place}");
        assert_eq!(
            call_bits(polling, &options, &logits, &targets, shape, in_place),
            expected,
            "{label}: repeated"
        );
        assert_eq!(
            call_bits(repair, &options, &logits, &targets, shape, in_place),
            expected,
            "{label}: repair"
        );
        assert_eq!(
            call_bits(chunked, &options, &logits, &targets, shape, in_place),
            expected,
            "{label}: chunked"
        );
    }
}

/// In place with the target in each row's last class (the slice that publishes
/// x'_y is the last to be read), many times: the same bits, the reference's values.
#[test]
fn in_place_with_the_target_last_is_stable() {
    let Some(context) = polling() else { return };
    let shape = Shape::new(8, 7 * SLICE + 3);
    let last = shape.classes as i64 - 1;
    let (logits, targets) = batch(shape, 5, |_| last);
    let options = CrossEntropyOptions::default();
    let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &options);
    let first = call_bits(context, &options, &logits, &targets, shape, true);
    let (output, gradient) = run(context, &options, &logits, Targets::I64(&targets), shape, true);
    assert_matches(&output, &gradient, &truth, "in place, target last");
    for attempt in 0..20 {
        assert_eq!(
            call_bits(context, &options, &logits, &targets, shape, true),
            first,
            "run {attempt}"
        );
    }
}

/// 16-bit logits split when their rows come in groups of 4 (each invocation
/// stores whole 32-bit words of its own), else take the fused kernel.
#[test]
fn half_precision_rows_in_groups_of_4_split() {
    let (Some(polling), Some(repair)) = (polling(), repair_only()) else {
        return;
    };
    let shape = Shape::new(3, 3 * SLICE + 4);
    assert!(polling.splits_rows(shape, LogitType::Bf16));
    assert!(!polling.splits_rows(Shape::new(3, 3 * SLICE + 5), LogitType::Bf16));
    let last = shape.classes as i64 - 1;
    let (logits, targets) = batch(shape, 13, |row| [last, 0, 5][row]);
    let mut types = vec![LogitType::Bf16];
    if polling.features().contains(wgpu::Features::SHADER_F16) {
        types.push(LogitType::F16);
    }
    for logit_type in types {
        let (bytes, seen) = common::encoded(&logits, logit_type);
        let options = CrossEntropyOptions {
            label_smoothing: 0.1,
            ..CrossEntropyOptions::default()
        };
        let truth = cross_entropy_f64(&seen, Targets::I64(&targets), shape, &options);
        let largest = truth.gradient.iter().fold(0.0f64, |max, value| max.max(value.abs()));
        // One rounding of the largest entry to the gradient's type.
        let tolerance = if logit_type == LogitType::Bf16 {
            1.0 / 128.0
        } else {
            1.0 / 1024.0
        };
        let mut results = Vec::new();
        for context in [polling, repair] {
            let mut gradient = bytes.clone();
            let loss = half_in_place(context, &options, &mut gradient, logit_type, &targets, shape);
            assert_loss(loss, truth.loss, &format!("{logit_type:?}"));
            let gradient = common::decoded(&gradient, logit_type);
            let worst = gradient
                .iter()
                .zip(&truth.gradient)
                .fold(0.0f64, |worst, (&actual, &expected)| {
                    worst.max((f64::from(actual) - expected).abs())
                });
            assert!(
                worst <= tolerance * largest,
                "{logit_type:?}: gradient error {worst:e} vs {largest:e}"
            );
            results.push((loss.to_bits(), bits(&gradient)));
        }
        assert_eq!(results[0], results[1], "{logit_type:?}: polling and repair bits");
    }
}

/// The loss of 16-bit `bytes`, with the gradient written over them.
fn half_in_place(
    context: &Context,
    options: &CrossEntropyOptions,
    bytes: &mut [u8],
    logit_type: LogitType,
    targets: &[i64],
    shape: Shape,
) -> f32 {
    let loss = CrossEntropyLoss::with_options(options.clone());
    let call = |logits: LogitsMut<'_>| {
        loss.loss_and_grad_in_place(context, logits, Targets::I64(targets), shape)
            .expect("in-place call")
            .value()
            .expect("reduced")
    };
    if logit_type == LogitType::Bf16 {
        let mut values: Vec<bf16> = bytemuck::pod_collect_to_vec(bytes);
        let loss = call(LogitsMut::Bf16(&mut values));
        bytes.copy_from_slice(bytemuck::cast_slice(&values));
        loss
    } else {
        let mut values: Vec<f16> = bytemuck::pod_collect_to_vec(bytes);
        let loss = call(LogitsMut::F16(&mut values));
        bytes.copy_from_slice(bytemuck::cast_slice(&values));
        loss
    }
}

/// A storage buffer holding `bytes` that can be read back.
fn readable_buffer(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("split test buffer"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// f32 logits, i64 targets and a gradient in device buffers.
struct Resident {
    logits: wgpu::Buffer,
    targets: wgpu::Buffer,
    gradient: wgpu::Buffer,
    shape: Shape,
}

impl Resident {
    fn new(context: &Context, logits: &[f32], targets: &[i64], shape: Shape) -> Self {
        Self {
            logits: readable_buffer(context, bytemuck::cast_slice(logits)),
            targets: readable_buffer(context, bytemuck::cast_slice(targets)),
            gradient: readable_buffer(context, &vec![0u8; logits.len() * 4]),
            shape,
        }
    }

    /// The call's inputs, the gradient into its own buffer.
    fn inputs<'a>(&'a self, upstream: UpstreamGradient<'a>) -> DeviceInputs<'a> {
        DeviceInputs {
            logits: self.logits.slice(..),
            logit_type: LogitType::F32,
            targets: self.targets.slice(..),
            target_type: TargetType::I64,
            shape: self.shape,
            gradient: GradientOutput::Buffer(self.gradient.slice(..)),
            upstream,
        }
    }
}

/// Records `loss` on `inputs` into `outputs` and submits it.
fn submit(context: &Context, loss: &CrossEntropyLoss, inputs: &DeviceInputs<'_>, outputs: &DeviceOutputs) {
    let mut encoder = context
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    loss.record(context, &mut encoder, inputs, outputs).expect("record");
    context.queue().submit([encoder.finish()]);
}

/// Per-row upstream values and a scale multiply each split row's gradient.
#[test]
fn upstream_values_scale_each_row() {
    let Some(context) = polling() else { return };
    let shape = Shape::new(4, 2 * SLICE + 7);
    let last = shape.classes as i64 - 1;
    let (logits, targets) = batch(shape, 17, |row| [0, 1, last, 300][row]);
    let upstream = [0.5f32, -2.0, 1.25, 3.0];
    let scale = 0.75f32;
    let options = CrossEntropyOptions {
        reduction: Reduction::None,
        z_loss: 1e-3,
        ..CrossEntropyOptions::default()
    };
    let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &options);
    let resident = Resident::new(context, &logits, &targets, shape);
    let upstream_buffer = readable_buffer(context, bytemuck::cast_slice(&upstream));
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let inputs = resident.inputs(UpstreamGradient {
        scale,
        values: Some(upstream_buffer.slice(..)),
    });
    submit(context, &CrossEntropyLoss::with_options(options), &inputs, &outputs);
    let losses = outputs.read(context).expect("read");
    assert_row_losses(
        losses.per_row().expect("per row"),
        &truth.row_losses,
        "upstream: losses",
    );
    let gradient: Vec<f32> = bytemuck::pod_collect_to_vec(&common::read_buffer(context, &resident.gradient));
    let expected: Vec<f64> = truth
        .gradient
        .iter()
        .enumerate()
        .map(|(index, value)| value * f64::from(scale) * f64::from(upstream[index / shape.classes]))
        .collect();
    let largest = expected.iter().fold(0.0f64, |max, value| max.max(value.abs()));
    assert_gradient(&gradient, &expected, largest, "upstream: gradient");
}

/// A target out of range is the same typed error as with the fused kernel.
#[test]
fn a_bad_target_is_the_fused_kernels_error() {
    let (Some(split), Some(fused)) = (polling(), common::gpu()) else {
        return;
    };
    let shape = Shape::new(3, 2 * SLICE + 1);
    let (logits, targets) = batch(shape, 19, |row| [4, shape.classes as i64, 7][row]);
    let mut gradient = vec![0.0f32; logits.len()];
    let call = |context: &Context, gradient: &mut [f32]| {
        CrossEntropyLoss::new()
            .loss_and_grad(context, &logits, &targets, shape, gradient)
            .map(|loss| loss.value())
    };
    let expected = call(fused, &mut gradient);
    assert!(expected.is_err(), "{expected:?}");
    assert_eq!(format!("{:?}", call(split, &mut gradient)), format!("{expected:?}"));
}

/// Workgroups of 256 invocations with 8 vec4s each (slices of 8192 logits, the
/// largest choice): one slice per row (nothing to wait for) and several, polling
/// or all repaired, against the reference and bit for bit alike.
#[test]
fn wide_slices_match_the_reference() {
    let contexts: Vec<Context> = [4096, 0]
        .into_iter()
        .filter_map(|spin_limit| {
            open(ContextOptions {
                workgroup_size: Some(256),
                row_split: RowSplit::Forced {
                    vec4s_per_invocation: 8,
                    spin_limit,
                },
                ..ContextOptions::default()
            })
        })
        .collect();
    if contexts.is_empty() {
        return;
    }
    let options = CrossEntropyOptions {
        label_smoothing: 0.05,
        ..CrossEntropyOptions::default()
    };
    for classes in [8192, 2 * 8192 + 3] {
        let shape = Shape::new(2, classes);
        assert!(contexts[0].splits_rows(shape, LogitType::F32));
        let (logits, targets) = batch(shape, 23, |row| [classes as i64 - 1, 0][row]);
        let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &options);
        let (output, gradient) = run(&contexts[0], &options, &logits, Targets::I64(&targets), shape, true);
        assert_matches(&output, &gradient, &truth, &format!("C={classes}"));
        let expected = call_bits(&contexts[0], &options, &logits, &targets, shape, true);
        assert_eq!(
            call_bits(&contexts[1], &options, &logits, &targets, shape, true),
            expected,
            "C={classes}"
        );
    }
}

/// `RowSplit::Auto` leaves software adapters on the fused kernel, and on a
/// hardware adapter splits rows longer than the fused kernel's row cache (8192
/// logits at most), with the reference's values either way.
#[test]
fn auto_splits_long_rows_on_hardware_only() {
    let Some(context) = open(ContextOptions {
        row_split: RowSplit::Auto,
        ..ContextOptions::default()
    }) else {
        return;
    };
    let software = context.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let shape = Shape::new(4, 40_000);
    assert_eq!(context.splits_rows(shape, LogitType::F32), !software);
    assert!(!context.splits_rows(Shape::new(4, 512), LogitType::F32));
    let last = shape.classes as i64 - 1;
    let (logits, targets) = batch(shape, 29, |row| [last, 0, 1, 20_000][row]);
    let options = CrossEntropyOptions::default();
    let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &options);
    let (output, gradient) = run(&context, &options, &logits, Targets::I64(&targets), shape, true);
    assert_matches(&output, &gradient, &truth, "auto");
}

/// Records one device call of `shape` (with a gradient when `with_gradient`)
/// into fresh outputs, reads it and returns `DeviceOutputs::repaired_slices`
/// before and after the read.
fn repaired_slices(context: &Context, shape: Shape, with_gradient: bool) -> (Option<u32>, Option<u32>) {
    let (logits, targets) = batch(shape, 23, |row| (row * 131 % shape.classes) as i64);
    let resident = Resident::new(context, &logits, &targets, shape);
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let mut inputs = resident.inputs(UpstreamGradient::ONE);
    if !with_gradient {
        inputs.gradient = GradientOutput::Skip;
    }
    submit(context, &CrossEntropyLoss::new(), &inputs, &outputs);
    let before = outputs.repaired_slices();
    let loss = outputs.read(context).expect("read").value().expect("mean");
    let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &CrossEntropyOptions::default());
    assert_loss(loss, truth.loss, "repaired slices: loss");
    (before, outputs.repaired_slices())
}

/// The status block counts the slices the repair dispatch finished: every one
/// when slices never poll (in one chunk or several), slice 0 of each row alone
/// for the loss without a gradient (the other slices do not wait), none with
/// the fused kernel, at most every one when they poll.
#[test]
fn the_outputs_count_the_repaired_slices() {
    let (Some(repair), Some(polling), Some(fused)) = (repair_only(), polling(), common::gpu()) else {
        return;
    };
    // 4 slices per row, the last one a single logit.
    let shape = Shape::new(5, 3 * SLICE + 1);
    assert_eq!(repair.split_row_slices(shape, LogitType::F32), Some(4));
    assert_eq!(repaired_slices(repair, shape, true), (None, Some(20)));
    assert_eq!(repaired_slices(repair, shape, false), (None, Some(5)));
    assert_eq!(fused.split_row_slices(shape, LogitType::F32), None);
    assert_eq!(repaired_slices(fused, shape, true), (None, Some(0)));
    let (_, polled) = repaired_slices(polling, shape, true);
    assert!(polled.is_some_and(|count| count <= 20), "{polled:?}");
    // 100 rows of 3 KB in bindings of 256 KiB: two chunks, counted together.
    let chunked_repair = open(split_options(0, Some(256 << 10))).expect("context");
    let rows = Shape::new(100, 3 * SLICE + 1);
    assert_eq!(repaired_slices(&chunked_repair, rows, true), (None, Some(400)));
}
