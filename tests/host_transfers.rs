//! The host calls' transfers and final reduction: the persistent upload
//! buffers (repeated calls give the device-resident call's bits, see fresh data
//! every time and allocate nothing after the first; growing and shrinking
//! shapes; release then call again; a dropped async call), chunked calls equal
//! to unchunked bits, and the two-level reduction of many rows against the f64
//! reference and across chunkings.

mod common;

use std::future::Future;
use std::task::{Context as TaskContext, Poll, Waker};

use xent::reference::cross_entropy_f64;
use xent::{
    Context, ContextOptions, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Loss,
    LossOutput, Reduction, Shape, Targets, UpstreamGradient,
};

use common::{Logits, batch, read_buffer, storage_buffer};
use wgpu::util::DeviceExt;

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

/// The host call's loss and gradient (blocking).
fn host_call(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
) -> (Loss, Vec<f32>) {
    let mut gradient = vec![f32::NAN; logits.len()];
    let value = loss
        .loss_and_grad(context, logits, targets, shape, &mut gradient[..])
        .expect("host call");
    (value, gradient)
}

/// The same through the `_async` door (its upload waits on a helper thread).
fn host_call_async(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
) -> (Loss, Vec<f32>) {
    let mut gradient = vec![f32::NAN; logits.len()];
    let value = pollster::block_on(loss.loss_and_grad_async(context, logits, targets, shape, &mut gradient[..]))
        .expect("async host call");
    (value, gradient)
}

/// The device-resident call's loss and gradient on buffers of the test's own.
fn device_call(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
) -> (Loss, Vec<f32>) {
    let logits_buffer = storage_buffer(context, bytemuck::cast_slice(logits));
    let gradient_buffer = context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test gradient"),
        contents: bytemuck::cast_slice(logits),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let targets_buffer = storage_buffer(context, bytemuck::cast_slice(targets));
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let inputs = DeviceInputs {
        logits: logits_buffer.slice(..),
        logit_type: LogitType::F32,
        targets: targets_buffer.slice(..),
        target_type: Targets::from(targets).target_type(),
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

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

/// The same bits in `left` and `right`, else the first difference.
fn assert_same_values(left: &[f32], right: &[f32], what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: lengths");
    if let Some(index) = (0..left.len()).find(|&index| left[index].to_bits() != right[index].to_bits()) {
        panic!("{what}: entry {index} is {} and {}", left[index], right[index]);
    }
}

fn loss_bits(loss: &Loss) -> Vec<u32> {
    match loss {
        Loss::Reduced(value) => vec![value.to_bits()],
        Loss::PerRow(values) => bits(values),
    }
}

/// Checks `loss` and `gradient` against the f64 reference of `options`.
fn assert_matches_reference(
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
    (value, gradient): &(Loss, Vec<f32>),
    what: &str,
) {
    let truth = cross_entropy_f64(logits, Targets::from(targets), shape, loss.options());
    match value {
        Loss::Reduced(value) => {
            let error = (f64::from(*value) - truth.loss).abs();
            assert!(
                error <= 1e-5 * truth.loss.abs().max(1.0),
                "{what}: loss {value} vs {}",
                truth.loss
            );
        }
        Loss::PerRow(values) => common::assert_row_losses(values, &truth.row_losses, what),
    }
    let worst = gradient
        .iter()
        .zip(&truth.gradient)
        .map(|(&actual, &expected)| (f64::from(actual) - expected).abs())
        .fold(0.0, f64::max);
    let scale = truth.gradient.iter().fold(0.0f64, |max, value| max.max(value.abs()));
    assert!(
        worst <= 1e-5 * scale.max(1e-30),
        "{what}: gradient off by {worst} (largest entry {scale})"
    );
}

#[test]
fn repeated_host_calls_give_the_device_bits_on_fresh_data_and_allocate_nothing_after_the_first() {
    let Some(context) = context(None) else { return };
    let shape = Shape::new(64, 1000);
    let loss = CrossEntropyLoss::new().z_loss(1e-3);
    let (first_logits, first_targets) = batch(shape.rows, shape.classes, Logits::Random, 1);
    let (second_logits, second_targets) = batch(shape.rows, shape.classes, Logits::Scaled, 2);
    let mut workspace_bytes = None;
    for call in 0..6 {
        // Alternating data: a call that read the last call's upload would give its bits.
        let (logits, targets) = if call % 2 == 0 {
            (&first_logits, &first_targets)
        } else {
            (&second_logits, &second_targets)
        };
        let host = if call % 3 == 2 {
            host_call_async(&context, &loss, logits, targets, shape)
        } else {
            host_call(&context, &loss, logits, targets, shape)
        };
        let device = device_call(&context, &loss, logits, targets, shape);
        assert_eq!(loss_bits(&host.0), loss_bits(&device.0), "call {call}: loss");
        assert_same_values(&host.1, &device.1, &format!("call {call}: gradient"));
        assert_matches_reference(&loss, logits, targets, shape, &host, &format!("call {call}"));
        let bytes = context.workspace_bytes();
        assert!(bytes > 0);
        assert_eq!(
            *workspace_bytes.get_or_insert(bytes),
            bytes,
            "call {call}: the workspace changed"
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
        let shape = Shape::new(rows, classes);
        let (logits, targets) = batch(rows, classes, Logits::Random, 10 + index as u64);
        let result = host_call(&context, &loss, &logits, &targets, shape);
        assert_matches_reference(&loss, &logits, &targets, shape, &result, &format!("{rows}x{classes}"));
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
    let shape = Shape::new(33, 517);
    let loss = CrossEntropyLoss::new();
    let (logits, targets) = batch(shape.rows, shape.classes, Logits::Random, 3);
    let first = host_call(&context, &loss, &logits, &targets, shape);
    let bytes = context.workspace_bytes();
    context.release_buffers();
    assert_eq!(context.workspace_bytes(), 0);
    let (other_logits, other_targets) = batch(shape.rows, shape.classes, Logits::Offset, 4);
    let other = host_call(&context, &loss, &other_logits, &other_targets, shape);
    assert_matches_reference(&loss, &other_logits, &other_targets, shape, &other, "after release");
    assert_eq!(context.workspace_bytes(), bytes);
    let again = host_call(&context, &loss, &logits, &targets, shape);
    assert_eq!(loss_bits(&again.0), loss_bits(&first.0));
    assert_same_values(&again.1, &first.1, "gradient after release");
}

#[test]
fn a_dropped_async_call_leaves_the_upload_buffers_usable() {
    let Some(context) = context(None) else { return };
    let shape = Shape::new(40, 700);
    let loss = CrossEntropyLoss::new();
    let (logits, targets) = batch(shape.rows, shape.classes, Logits::Random, 5);
    let expected = host_call(&context, &loss, &logits, &targets, shape);
    for polls in 0..3 {
        let mut gradient = vec![0.0f32; logits.len()];
        let mut future =
            Box::pin(loss.loss_and_grad_async(&context, &logits[..], &targets[..], shape, &mut gradient[..]));
        let mut task = TaskContext::from_waker(Waker::noop());
        for _ in 0..polls {
            if let Poll::Ready(result) = future.as_mut().poll(&mut task) {
                result.expect("async call");
            }
        }
        drop(future);
        let again = host_call(&context, &loss, &logits, &targets, shape);
        assert_eq!(loss_bits(&again.0), loss_bits(&expected.0), "after {polls} polls");
        assert_same_values(&again.1, &expected.1, &format!("gradient after {polls} polls"));
    }
}

/// `forward` with the lse and argmax, for comparing every output's bits.
fn forward(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
) -> (LossOutput, Vec<f32>) {
    let mut gradient = vec![f32::NAN; logits.len()];
    let output = loss
        .forward(context, logits, targets, shape, Some((&mut gradient[..]).into()), true)
        .expect("forward");
    (output, gradient)
}

fn assert_same_bits(
    (left, left_gradient): &(LossOutput, Vec<f32>),
    (right, right_gradient): &(LossOutput, Vec<f32>),
    what: &str,
) {
    assert_eq!(loss_bits(&left.loss), loss_bits(&right.loss), "{what}: loss");
    assert_eq!(
        left.z_loss.as_ref().map(loss_bits),
        right.z_loss.as_ref().map(loss_bits),
        "{what}: z-loss"
    );
    assert_same_values(
        left.lse.as_deref().unwrap_or_default(),
        right.lse.as_deref().unwrap_or_default(),
        &format!("{what}: lse"),
    );
    assert!(left.argmax == right.argmax, "{what}: argmax");
    assert_same_values(left_gradient, right_gradient, &format!("{what}: gradient"));
}

#[test]
fn chunked_host_calls_give_the_unchunked_bits() {
    let (Some(whole), Some(chunked)) = (context(None), context(Some(64 << 10))) else {
        return;
    };
    let shape = Shape::new(512, 1000);
    let (logits, targets) = batch(shape.rows, shape.classes, Logits::Random, 6);
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let loss = CrossEntropyLoss::new().reduction(reduction).z_loss(1e-4);
        let unchunked = forward(&whole, &loss, &logits, &targets, shape);
        // Twice: the second call reuses the chunked plan and the upload buffers.
        for call in 0..2 {
            let split = forward(&chunked, &loss, &logits, &targets, shape);
            assert_same_bits(&split, &unchunked, &format!("{reduction:?}, call {call}"));
        }
        let result = (unchunked.0.loss.clone(), unchunked.1.clone());
        assert_matches_reference(&loss, &logits, &targets, shape, &result, &format!("{reduction:?}"));
    }
}

#[test]
fn many_rows_reduce_in_two_levels_to_the_reference_with_the_same_bits_in_any_chunking() {
    // 4 MiB bindings: the row outputs (16 bytes a row) fit one, the logits take two.
    let (Some(whole), Some(chunked)) = (context(None), context(Some(4 << 20))) else {
        return;
    };
    let shape = Shape::new(200_000, 8);
    let (logits, mut targets) = batch(shape.rows, shape.classes, Logits::Random, 7);
    for row in (0..shape.rows).step_by(7) {
        targets[row] = -100;
    }
    let weights: Vec<f32> = (0..shape.classes).map(|class| 0.5 + class as f32 * 0.25).collect();
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
        let unchunked = forward(&whole, &loss, &logits, &targets, shape);
        let split = forward(&chunked, &loss, &logits, &targets, shape);
        assert_same_bits(&split, &unchunked, &what);
        let truth = cross_entropy_f64(&logits, Targets::from(&targets[..]), shape, loss.options());
        let result = (unchunked.0.loss.clone(), unchunked.1.clone());
        assert_matches_reference(&loss, &logits, &targets, shape, &result, &what);
        let z_loss = unchunked.0.z_loss.as_ref().and_then(Loss::value).map(f64::from);
        if let Some(z_loss) = z_loss {
            assert!(
                (z_loss - truth.z_loss).abs() <= 1e-5 * truth.z_loss.abs(),
                "{what}: z-loss {z_loss} vs {}",
                truth.z_loss
            );
        }
    }
}
