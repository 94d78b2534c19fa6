//! The host calls' transfers and final reduction: the persistent upload
//! buffers (repeated calls give the device-resident call's bits, see fresh data
//! every time and allocate nothing after the first; growing and shrinking
//! shapes; release then call again; a dropped async call), chunked calls equal
//! to unchunked bits, the two-level reduction of many rows against the f64
//! reference and across chunkings, and transfers in pieces
//! (`ContextOptions::transfer_piece_bytes`): the one-piece bits for both doors,
//! in place, loss alone, chunked, bf16 ending in half a word and the BCE's
//! host door, and a workspace of two pieces each way.

mod common;

use std::future::Future;
use std::task::{Context as TaskContext, Poll, Waker};

use wgpu::util::DeviceExt;
use xent::reference::cross_entropy_f64;
use xent::{
    Context, ContextOptions, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Loss,
    LossOutput, Reduction, Shape, Targets, UpstreamGradient,
};

use common::{Logits, read_buffer, storage_buffer};

/// Row-kernel workgroups of every context here, so that only the binding cap
/// differs between the chunked and unchunked ones.
const WORKGROUP_SIZE: u32 = 256;

/// A context of its own (the workspace's size is per context), with `max_binding_size`.
fn context(max_binding_size: Option<u64>) -> Option<Context> {
    common::open(ContextOptions {
        max_binding_size,
        workgroup_size: Some(WORKGROUP_SIZE),
        ..ContextOptions::default()
    })
}

/// f32 logits and i64 targets of one shape.
struct Batch {
    logits: Vec<f32>,
    targets: Vec<i64>,
    shape: Shape,
}

impl Batch {
    fn new(rows: usize, classes: usize, kind: Logits, seed: u64) -> Self {
        let (logits, targets) = common::batch(rows, classes, kind, seed);
        Self {
            logits,
            targets,
            shape: Shape::new(rows, classes),
        }
    }
}

/// Which host door a call goes through.
#[derive(Clone, Copy, Debug)]
enum Door {
    Blocking,
    /// `forward_async`: its waits run on a helper thread.
    Async,
}

/// A host call's outputs (lse and argmax included) and gradient.
type HostResult = (LossOutput, Vec<f32>);

fn host_call(context: &Context, loss: &CrossEntropyLoss, batch: &Batch, door: Door) -> HostResult {
    let mut gradient = vec![f32::NAN; batch.logits.len()];
    let (logits, targets) = (&batch.logits[..], &batch.targets[..]);
    let destination = Some((&mut gradient[..]).into());
    let output = match door {
        Door::Blocking => loss.forward(context, logits, targets, batch.shape, destination, true),
        Door::Async => pollster::block_on(loss.forward_async(context, logits, targets, batch.shape, destination, true)),
    };
    (output.expect("host call"), gradient)
}

/// The device-resident call's loss and gradient on buffers of the test's own.
fn device_call(context: &Context, loss: &CrossEntropyLoss, batch: &Batch) -> (Loss, Vec<f32>) {
    device_call_with(
        context,
        loss,
        &batch.logits,
        Targets::from(&batch.targets[..]),
        batch.shape,
    )
}

/// [`device_call`] on `logits` and `targets` of any kind.
fn device_call_with(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
) -> (Loss, Vec<f32>) {
    let logits_buffer = storage_buffer(context, bytemuck::cast_slice(logits));
    let gradient_buffer = context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test gradient"),
        contents: bytemuck::cast_slice(logits),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let targets_buffer = storage_buffer(context, targets.as_bytes());
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let inputs = DeviceInputs {
        logits: logits_buffer.slice(..),
        logit_type: LogitType::F32,
        targets: targets_buffer.slice(..),
        target_type: targets.target_type(),
        shape,
        gradient: GradientOutput::Buffer(gradient_buffer.slice(..)),
        upstream: UpstreamGradient::ONE,
    };
    let mut encoder = context
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    loss.record(context, &mut encoder, &inputs, &outputs).expect("record");
    context.queue().submit([encoder.finish()]);
    let value = outputs.read(context).expect("read");
    let gradient = bytemuck::pod_collect_to_vec(&read_buffer(context, &gradient_buffer));
    (value, gradient)
}

/// The same bits in `left` and `right`, else the first difference.
fn assert_same_values(left: &[f32], right: &[f32], what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: lengths");
    if let Some(index) = (0..left.len()).find(|&index| left[index].to_bits() != right[index].to_bits()) {
        panic!("{what}: entry {index} is {} and {}", left[index], right[index]);
    }
}

fn loss_values(loss: &Loss) -> &[f32] {
    match loss {
        Loss::Reduced(value) => std::slice::from_ref(value),
        Loss::PerRow(values) => values,
    }
}

/// The same bits in every output and the gradient.
fn assert_same_bits((left, left_gradient): &HostResult, (right, right_gradient): &HostResult, what: &str) {
    assert_same_values(
        loss_values(&left.loss),
        loss_values(&right.loss),
        &format!("{what}: loss"),
    );
    let z_loss = |output: &LossOutput| output.z_loss.as_ref().map(|z| loss_values(z).to_vec());
    assert_same_values(
        &z_loss(left).unwrap_or_default(),
        &z_loss(right).unwrap_or_default(),
        &format!("{what}: z-loss"),
    );
    assert_same_values(
        left.lse.as_deref().unwrap_or_default(),
        right.lse.as_deref().unwrap_or_default(),
        &format!("{what}: lse"),
    );
    assert!(left.argmax == right.argmax, "{what}: argmax");
    assert_same_values(left_gradient, right_gradient, &format!("{what}: gradient"));
}

/// Checks the loss, z-loss and gradient against the f64 reference of `loss`'s options.
fn assert_matches_reference(loss: &CrossEntropyLoss, batch: &Batch, (output, gradient): &HostResult, what: &str) {
    let truth = cross_entropy_f64(
        &batch.logits,
        Targets::from(&batch.targets[..]),
        batch.shape,
        loss.options(),
    );
    let close = |actual: f32, expected: f64| (f64::from(actual) - expected).abs() <= 1e-5 * expected.abs().max(1e-6);
    match &output.loss {
        Loss::Reduced(value) => assert!(close(*value, truth.loss), "{what}: loss {value} vs {}", truth.loss),
        Loss::PerRow(values) => common::assert_row_losses(values, &truth.row_losses, what),
    }
    if let Some(Loss::Reduced(z_loss)) = output.z_loss {
        assert!(
            close(z_loss, truth.z_loss),
            "{what}: z-loss {z_loss} vs {}",
            truth.z_loss
        );
    }
    let worst = common::largest_difference(gradient, &truth.gradient);
    let scale = truth.gradient.iter().fold(0.0f64, |max, value| max.max(value.abs()));
    assert!(
        worst <= 1e-5 * scale.max(1e-30),
        "{what}: gradient off by {worst} (largest entry {scale})"
    );
}

#[test]
fn repeated_host_calls_give_the_device_bits_on_fresh_data_and_allocate_nothing_after_the_first() {
    let Some(context) = context(None) else { return };
    let loss = CrossEntropyLoss::new().z_loss(1e-3);
    let batches = [
        Batch::new(64, 1000, Logits::Random, 1),
        Batch::new(64, 1000, Logits::Scaled, 2),
    ];
    let mut workspace_bytes = None;
    for call in 0..6 {
        // Alternating data: a call that read the last call's upload would give its bits.
        let batch = &batches[call % 2];
        let door = if call % 3 == 2 { Door::Async } else { Door::Blocking };
        let host = host_call(&context, &loss, batch, door);
        let (device_loss, device_gradient) = device_call(&context, &loss, batch);
        let what = format!("call {call} ({door:?})");
        assert_same_values(loss_values(&host.0.loss), loss_values(&device_loss), &what);
        assert_same_values(&host.1, &device_gradient, &what);
        assert_matches_reference(&loss, batch, &host, &what);
        let bytes = context.workspace_bytes();
        assert!(bytes > 0);
        assert_eq!(
            *workspace_bytes.get_or_insert(bytes),
            bytes,
            "{what}: the workspace changed"
        );
    }
}

#[test]
fn growing_and_shrinking_shapes_stay_correct_and_keep_the_largest_workspace() {
    let Some(context) = context(None) else { return };
    let loss = CrossEntropyLoss::new().reduction(Reduction::Sum);
    let mut largest = 0;
    for (index, (rows, classes)) in [(8, 100), (300, 2000), (5, 37), (128, 3000), (300, 2000), (1, 1)]
        .into_iter()
        .enumerate()
    {
        let batch = Batch::new(rows, classes, Logits::Random, 10 + index as u64);
        let result = host_call(&context, &loss, &batch, Door::Blocking);
        assert_matches_reference(&loss, &batch, &result, &format!("{rows}x{classes}"));
        let bytes = context.workspace_bytes();
        assert!(
            bytes >= largest,
            "{rows}x{classes}: the workspace shrank from {largest} to {bytes}"
        );
        // Every later shape fits what the second (the largest) made.
        if index > 1 {
            assert_eq!(bytes, largest, "{rows}x{classes}: a smaller call grew the workspace");
        }
        largest = bytes;
    }
}

#[test]
fn release_buffers_then_call_again() {
    let Some(context) = context(None) else { return };
    let loss = CrossEntropyLoss::new();
    let batch = Batch::new(33, 517, Logits::Random, 3);
    let first = host_call(&context, &loss, &batch, Door::Blocking);
    let bytes = context.workspace_bytes();
    context.release_buffers();
    assert_eq!(context.workspace_bytes(), 0);
    let other = Batch::new(33, 517, Logits::Offset, 4);
    let result = host_call(&context, &loss, &other, Door::Blocking);
    assert_matches_reference(&loss, &other, &result, "after release");
    assert_eq!(context.workspace_bytes(), bytes);
    assert_same_bits(&host_call(&context, &loss, &batch, Door::Blocking), &first, "again");
}

/// Starts an async fused call, polls it up to `polls` times (a millisecond
/// apart, so that the device makes progress) and drops it.
fn poll_then_drop(context: &Context, loss: &CrossEntropyLoss, batch: &Batch, polls: usize) {
    let mut gradient = vec![0.0f32; batch.logits.len()];
    let mut future = Box::pin(loss.loss_and_grad_async(
        context,
        &batch.logits[..],
        &batch.targets[..],
        batch.shape,
        &mut gradient[..],
    ));
    let mut task = TaskContext::from_waker(Waker::noop());
    for _ in 0..polls {
        if let Poll::Ready(result) = future.as_mut().poll(&mut task) {
            result.expect("async call");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_dropped_async_call_leaves_the_upload_buffers_usable() {
    let Some(context) = context(None) else { return };
    let loss = CrossEntropyLoss::new();
    let batch = Batch::new(40, 700, Logits::Random, 5);
    let expected = host_call(&context, &loss, &batch, Door::Blocking);
    for polls in 0..3 {
        poll_then_drop(&context, &loss, &batch, polls);
        let again = host_call(&context, &loss, &batch, Door::Blocking);
        assert_same_bits(&again, &expected, &format!("after {polls} polls"));
    }
}

#[test]
fn chunked_host_calls_give_the_unchunked_bits() {
    let (Some(whole), Some(chunked)) = (context(None), context(Some(64 << 10))) else {
        return;
    };
    let batch = Batch::new(512, 1000, Logits::Random, 6);
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let loss = CrossEntropyLoss::new().reduction(reduction).z_loss(1e-4);
        let unchunked = host_call(&whole, &loss, &batch, Door::Blocking);
        // Twice: the second call reuses the chunked plan and the upload buffers.
        for call in 0..2 {
            let split = host_call(&chunked, &loss, &batch, Door::Blocking);
            assert_same_bits(&split, &unchunked, &format!("{reduction:?}, call {call}"));
        }
        assert_matches_reference(&loss, &batch, &unchunked, &format!("{reduction:?}"));
    }
}

#[test]
fn many_rows_reduce_in_two_levels_to_the_reference_with_the_same_bits_in_any_chunking() {
    // 6 MiB bindings: the row outputs (28 bytes a row) fit one, the logits take two.
    let (Some(whole), Some(chunked)) = (context(None), context(Some(6 << 20))) else {
        return;
    };
    let mut batch = Batch::new(200_000, 8, Logits::Random, 7);
    for row in (0..batch.shape.rows).step_by(7) {
        batch.targets[row] = -100;
    }
    let weights: Vec<f32> = (0..batch.shape.classes)
        .map(|class| 0.5 + class as f32 * 0.25)
        .collect();
    for loss in [
        CrossEntropyLoss::new().weight(weights.clone()).z_loss(1e-3),
        CrossEntropyLoss::new(),
        CrossEntropyLoss::new().reduction(Reduction::Sum).z_loss(1e-3),
    ] {
        let what = format!(
            "{:?}, weights {}",
            loss.get_reduction(),
            loss.options().weight.is_some()
        );
        let unchunked = host_call(&whole, &loss, &batch, Door::Blocking);
        let split = host_call(&chunked, &loss, &batch, Door::Async);
        assert_same_bits(&split, &unchunked, &what);
        assert_matches_reference(&loss, &batch, &unchunked, &what);
    }
}

#[test]
fn an_odd_count_of_16_bit_logits_over_several_upload_pieces_reaches_the_kernel_whole() {
    let Some(context) = context(None) else { return };
    // 2049 × 1025 bf16 logits: 4.2 MB, more than one 4 MiB piece of the upload,
    // an odd count (the last piece ends in half a word).
    let batch = Batch::new(2049, 1025, Logits::Random, 8);
    let values: Vec<xent::half::bf16> = batch
        .logits
        .iter()
        .map(|&value| xent::half::bf16::from_f32(value))
        .collect();
    let widened: Vec<f32> = values.iter().map(|value| value.to_f32()).collect();
    let loss = CrossEntropyLoss::new();
    let mut gradient = vec![xent::half::bf16::ZERO; values.len()];
    let value = loss
        .loss_and_grad(
            &context,
            &values[..],
            &batch.targets[..],
            batch.shape,
            &mut gradient[..],
        )
        .expect("bf16 host call");
    let truth = cross_entropy_f64(&widened, Targets::from(&batch.targets[..]), batch.shape, loss.options());
    let Loss::Reduced(value) = value else { panic!("a mean") };
    assert!(
        (f64::from(value) - truth.loss).abs() <= 1e-5 * truth.loss,
        "loss {value} vs {}",
        truth.loss
    );
    // Each gradient entry is the f32 value rounded to bf16: within 2^-8 of it.
    for (index, (actual, expected)) in gradient.iter().zip(&truth.gradient).enumerate() {
        let error = (f64::from(actual.to_f32()) - expected).abs();
        assert!(
            error <= expected.abs() / 256.0 + 1e-12,
            "entry {index}: {actual} vs {expected}"
        );
    }
}

/// A context moving host data in pieces of `piece_bytes`, else like [`context`].
fn piece_context(max_binding_size: Option<u64>, piece_bytes: u64) -> Option<Context> {
    common::open(ContextOptions {
        max_binding_size,
        workgroup_size: Some(WORKGROUP_SIZE),
        transfer_piece_bytes: piece_bytes,
        ..ContextOptions::default()
    })
}

/// The in-place call's outputs and gradient (the logits overwritten).
fn in_place_call(context: &Context, loss: &CrossEntropyLoss, batch: &Batch) -> (Loss, Vec<f32>) {
    let mut values = batch.logits.clone();
    let value = loss
        .loss_and_grad_in_place(context, &mut values[..], &batch.targets[..], batch.shape)
        .expect("in-place call");
    (value, values)
}

#[test]
fn transfers_in_pieces_give_the_one_piece_bits() {
    // 2 MB of logits: 32 pieces of 64 KiB, or one; and 64 KiB pieces of 256 KiB chunks.
    let (Some(whole), Some(pieces), Some(chunked_pieces)) = (
        context(None),
        piece_context(None, 64 << 10),
        piece_context(Some(256 << 10), 64 << 10),
    ) else {
        return;
    };
    let batch = Batch::new(512, 1000, Logits::Random, 9);
    for reduction in [Reduction::Mean, Reduction::None] {
        let loss = CrossEntropyLoss::new().reduction(reduction).z_loss(1e-4);
        let expected = host_call(&whole, &loss, &batch, Door::Blocking);
        assert_matches_reference(&loss, &batch, &expected, &format!("{reduction:?}"));
        for (context, name) in [(&pieces, "pieces"), (&chunked_pieces, "chunked pieces")] {
            // Twice each door: the second calls reuse the buffers in their mapped state.
            for door in [Door::Blocking, Door::Async, Door::Blocking, Door::Async] {
                let what = format!("{reduction:?}, {name}, {door:?}");
                assert_same_bits(&host_call(context, &loss, &batch, door), &expected, &what);
            }
            let (value, gradient) = in_place_call(context, &loss, &batch);
            let (expected_value, expected_gradient) = in_place_call(&whole, &loss, &batch);
            let what = format!("{reduction:?}, {name}, in place");
            assert_same_values(loss_values(&value), loss_values(&expected_value), &what);
            assert_same_values(&gradient, &expected_gradient, &what);
            assert_same_values(&gradient, &expected.1, &what);
            let loss_only = loss
                .loss(context, &batch.logits[..], &batch.targets[..], batch.shape)
                .expect("loss alone");
            assert_same_values(loss_values(&loss_only), loss_values(&expected.0.loss), &what);
        }
    }
}

#[test]
fn an_odd_count_of_bf16_logits_in_256_byte_pieces_ends_in_half_a_word() {
    let (Some(whole), Some(pieces)) = (context(None), piece_context(None, 256)) else {
        return;
    };
    // 7 × 37 bf16: 518 bytes, pieces of 256, 256 and 6 (the last word half padding).
    let batch = Batch::new(7, 37, Logits::Random, 11);
    let values: Vec<xent::half::bf16> = batch
        .logits
        .iter()
        .map(|&value| xent::half::bf16::from_f32(value))
        .collect();
    let loss = CrossEntropyLoss::new();
    let call = |context: &Context| {
        let mut gradient = vec![xent::half::bf16::NAN; values.len()];
        let value = loss
            .loss_and_grad(context, &values[..], &batch.targets[..], batch.shape, &mut gradient[..])
            .expect("bf16 host call");
        let bits: Vec<u16> = gradient.iter().map(|value| value.to_bits()).collect();
        (loss_values(&value).to_vec(), bits)
    };
    let expected = call(&whole);
    assert_eq!(call(&pieces), expected);
    let widened: Vec<f32> = values.iter().map(|value| value.to_f32()).collect();
    let truth = cross_entropy_f64(&widened, Targets::from(&batch.targets[..]), batch.shape, loss.options());
    for (index, (&bits, expected)) in expected.1.iter().zip(&truth.gradient).enumerate() {
        let actual = f64::from(xent::half::bf16::from_bits(bits).to_f32());
        assert!(
            (actual - expected).abs() <= expected.abs() / 256.0 + 1e-12,
            "entry {index}: {actual} vs {expected}"
        );
    }
}

#[test]
fn transfer_pieces_bound_the_workspace_to_two_pieces_each_way() {
    let piece = 64 << 10;
    let (Some(whole), Some(pieces)) = (context(None), piece_context(None, piece)) else {
        return;
    };
    let batch = Batch::new(512, 1000, Logits::Random, 12);
    let loss = CrossEntropyLoss::new();
    host_call(&whole, &loss, &batch, Door::Blocking);
    host_call(&pieces, &loss, &batch, Door::Blocking);
    // One piece: an upload and a readback buffer of the whole logits; in
    // pieces: two of a piece each way. The device buffers are the same.
    let logits_bytes = (batch.logits.len() * 4) as u64;
    assert_eq!(
        whole.workspace_bytes() - pieces.workspace_bytes(),
        2 * logits_bytes - 4 * piece,
        "whole {} bytes, in pieces {}",
        whole.workspace_bytes(),
        pieces.workspace_bytes()
    );
}

#[test]
fn transfer_pieces_must_be_positive_multiples_of_256_bytes() {
    for bad in [0, 100, 1000] {
        let result = Context::with_options(ContextOptions {
            transfer_piece_bytes: bad,
            ..ContextOptions::default()
        });
        assert!(
            matches!(result, Err(xent::Error::InvalidOption(ref message)) if message.contains("transfer_piece_bytes")),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn family_transfers_in_pieces_give_the_one_piece_bits() {
    let (Some(whole), Some(pieces)) = (context(None), piece_context(None, 1 << 10)) else {
        return;
    };
    // 33 × 101 f32 and bf16 inputs: 13 and 7 pieces of 1 KiB, the bf16 input
    // ending in half a word.
    let shape = Shape::new(33, 101);
    let (inputs, targets) = common::batch(shape.rows, shape.classes, Logits::Random, 13);
    let probabilities: Vec<f32> = targets
        .iter()
        .cycle()
        .take(inputs.len())
        .enumerate()
        .map(|(index, &target)| ((index as i64 + target) % 10) as f32 / 9.0)
        .collect();
    let halves: Vec<xent::half::bf16> = inputs.iter().map(|&value| xent::half::bf16::from_f32(value)).collect();
    // Per element: the losses and the gradient of their sum (`none`'s gradient).
    let (_, truth) =
        xent::reference::binary::bce_with_logits_f64(&inputs, &probabilities, shape.classes, None, None, 0.0);
    for reduction in [Reduction::Mean, Reduction::None] {
        let bce = xent::BinaryCrossEntropyLoss::new().reduction(reduction);
        let f32_call = |context: &Context| {
            let mut gradient = vec![f32::NAN; inputs.len()];
            let value = bce
                .loss_and_grad(context, &inputs[..], &probabilities[..], shape, &mut gradient[..])
                .expect("f32 BCE");
            (loss_values(&value).to_vec(), gradient)
        };
        let bf16_call = |context: &Context| {
            let mut gradient = vec![xent::half::bf16::NAN; halves.len()];
            let value = bce
                .loss_and_grad(context, &halves[..], &probabilities[..], shape, &mut gradient[..])
                .expect("bf16 BCE");
            let bits: Vec<u16> = gradient.iter().map(|value| value.to_bits()).collect();
            (loss_values(&value).to_vec(), bits)
        };
        let (expected_loss, expected_gradient) = f32_call(&whole);
        let (loss, gradient) = f32_call(&pieces);
        assert_same_values(&loss, &expected_loss, &format!("{reduction:?} f32 loss"));
        assert_same_values(&gradient, &expected_gradient, &format!("{reduction:?} f32 gradient"));
        assert_eq!(bf16_call(&pieces), bf16_call(&whole), "{reduction:?} bf16");
        if reduction == Reduction::None {
            let worst = common::largest_difference(&gradient, &truth);
            assert!(worst < 1e-6, "f32 gradient off the reference by {worst}");
        }
    }
}

#[test]
fn the_host_doors_counted_divisor_gives_the_divisor_pass_bits() {
    let Some(context) = context(None) else { return };
    // Every fifth row ignored: the divisor is 77 of 96 rows.
    let mut batch = Batch::new(96, 333, Logits::Random, 14);
    for row in (0..batch.shape.rows).step_by(5) {
        batch.targets[row] = -100;
    }
    let narrow: Vec<i32> = batch.targets.iter().map(|&target| target as i32).collect();
    let probabilities: Vec<f32> = (0..batch.logits.len())
        .map(|index| {
            if index % batch.shape.classes == batch.targets[index / batch.shape.classes].max(0) as usize {
                0.75
            } else {
                0.25 / 332.0
            }
        })
        .collect();
    for loss in [
        CrossEntropyLoss::new(),
        CrossEntropyLoss::new().label_smoothing(0.1).z_loss(1e-3),
    ] {
        for targets in [
            Targets::from(&batch.targets[..]),
            Targets::from(&narrow[..]),
            Targets::Probabilities(&probabilities),
        ] {
            let what = format!(
                "{:?} targets, smoothing {}",
                targets.target_type(),
                loss.options().label_smoothing
            );
            let mut gradient = vec![f32::NAN; batch.logits.len()];
            let value = loss
                .loss_and_grad(&context, &batch.logits[..], targets, batch.shape, &mut gradient[..])
                .expect("host call");
            let (device_value, device_gradient) =
                device_call_with(&context, &loss, &batch.logits, targets, batch.shape);
            assert_same_values(loss_values(&value), loss_values(&device_value), &what);
            assert_same_values(&gradient, &device_gradient, &what);
            let truth = cross_entropy_f64(&batch.logits, targets, batch.shape, loss.options());
            let Loss::Reduced(value) = value else { panic!("a mean") };
            assert!(
                (f64::from(value) - truth.loss).abs() <= 1e-5 * truth.loss,
                "{what}: {value} vs {}",
                truth.loss
            );
            let worst = common::largest_difference(&gradient, &truth.gradient);
            assert!(worst <= 1e-7, "{what}: gradient off by {worst}");
        }
    }
}

#[test]
fn a_dropped_async_call_in_pieces_leaves_the_transfer_buffers_usable() {
    // 2 MB of logits in 64 KiB pieces: a drop lands between pieces, up or down.
    let (Some(whole), Some(pieces)) = (context(None), piece_context(None, 64 << 10)) else {
        return;
    };
    let loss = CrossEntropyLoss::new();
    let batch = Batch::new(512, 1000, Logits::Random, 15);
    let expected = host_call(&whole, &loss, &batch, Door::Blocking);
    for polls in [0, 1, 2, 5, 20, 60] {
        poll_then_drop(&pieces, &loss, &batch, polls);
        for door in [Door::Blocking, Door::Async] {
            let again = host_call(&pieces, &loss, &batch, door);
            assert_same_bits(&again, &expected, &format!("after {polls} polls, {door:?}"));
        }
    }
}
