//! Sharing the device with the application: the application's own GPU errors
//! never surface from xent calls (whose own errors still do), the `*_async`
//! doors leave the caller's executor free while the GPU works, and the host-call
//! workspace can be released. Every test makes its own context, so that its
//! uncaptured errors and workspace are its own.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;
use xent::reference::cross_entropy_f64;
use xent::{
    BinaryCrossEntropyLoss, Context, ContextOptions, CrossEntropyLoss, CrossEntropyOptions, DeviceInputs,
    DeviceOutputs, Error, GradientOutput, LogitType, Loss, Reduction, Shape, TargetType, Targets, UpstreamGradient,
};

/// A fresh context (the device, its uncaptured errors and workspace are this test's).
fn own_context() -> Option<Context> {
    common::open(ContextOptions::default())
}

/// The f64 reference loss (mean) and gradient of the mean.
fn reference(logits: &[f32], targets: &[i64], shape: Shape) -> (f64, Vec<f64>) {
    let result = cross_entropy_f64(logits, Targets::I64(targets), shape, &CrossEntropyOptions::default());
    let expected = common::expected(logits, targets, shape.classes);
    assert!((result.loss - expected.mean).abs() <= 1e-12 * expected.mean.abs());
    (result.loss, expected.gradient_of_mean)
}

/// A host call with gradient, checked against the reference.
fn assert_host_call_matches(context: &Context, rows: usize, classes: usize, seed: u64, what: &str) {
    let shape = Shape::new(rows, classes);
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, seed);
    let mut gradient = vec![0.0f32; logits.len()];
    let loss = CrossEntropyLoss::new()
        .loss_and_grad(context, &logits[..], &targets[..], shape, &mut gradient[..])
        .unwrap_or_else(|error| panic!("{what}: the xent call failed: {error}"));
    let (expected_loss, expected_gradient) = reference(&logits, &targets, shape);
    common::assert_loss(loss.value().expect("reduced"), expected_loss, what);
    common::assert_gradient(&gradient, &expected_gradient, 1.0 / rows as f64, what);
}

fn storage_buffer(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test input"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE,
    })
}

/// The device-resident door: record into our encoder, submit, read.
fn device_call(context: &Context, logits: &wgpu::Buffer, targets: &[i64], shape: Shape) -> Result<Loss, Error> {
    let targets_buffer = storage_buffer(context, bytemuck::cast_slice(targets));
    let outputs = DeviceOutputs::new(context, shape.rows)?;
    let inputs = DeviceInputs {
        logits: logits.slice(..),
        logit_type: LogitType::F32,
        targets: targets_buffer.slice(..),
        target_type: TargetType::I64,
        shape,
        gradient: GradientOutput::Skip,
        upstream: UpstreamGradient::ONE,
    };
    let mut encoder = context
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    CrossEntropyLoss::new().record(context, &mut encoder, &inputs, &outputs)?;
    context.queue().submit([encoder.finish()]);
    outputs.read(context)
}

/// The application's invalid command: a copy past the end of both buffers, submitted.
fn invalid_application_copy(context: &Context) {
    let buffer = |usage| {
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("application buffer"),
            size: 16,
            usage,
            mapped_at_creation: false,
        })
    };
    let source = buffer(wgpu::BufferUsages::COPY_SRC);
    let destination = buffer(wgpu::BufferUsages::COPY_DST);
    let mut encoder = context
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    encoder.copy_buffer_to_buffer(&source, 0, &destination, 0, 64);
    context.queue().submit([encoder.finish()]);
}

/// Binary cross-entropy with logits, mean, in f64.
fn bce_reference(inputs: &[f32], targets: &[f32]) -> f64 {
    let sum: f64 = inputs
        .iter()
        .zip(targets)
        .map(|(&x, &y)| {
            let (x, y) = (f64::from(x), f64::from(y));
            x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
        })
        .sum();
    sum / inputs.len() as f64
}

#[test]
fn uncaptured_application_errors_do_not_fail_later_xent_calls() {
    let Some(context) = own_context() else { return };
    invalid_application_copy(&context);

    // The host door, with gradient.
    assert_host_call_matches(&context, 64, 1000, 1, "host call after an application error");

    // The device-resident door (record + read).
    let shape = Shape::new(37, 300);
    let (logits, targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 2);
    invalid_application_copy(&context);
    let logits_buffer = storage_buffer(&context, bytemuck::cast_slice(&logits));
    let loss = device_call(&context, &logits_buffer, &targets, shape).expect("device-resident call");
    let (expected, _) = reference(&logits, &targets, shape);
    common::assert_loss(loss.value().expect("reduced"), expected, "device-resident call");

    // The BCE / KL / entropy family.
    invalid_application_copy(&context);
    let inputs: Vec<f32> = logits.iter().map(|&x| x * 0.5).collect();
    let bce_targets: Vec<f32> = (0..inputs.len()).map(|index| (index % 3) as f32 / 2.0).collect();
    let bce = BinaryCrossEntropyLoss::new()
        .loss(&context, &inputs, &bce_targets, shape)
        .expect("binary cross-entropy after an application error");
    common::assert_loss(
        bce.value().expect("reduced"),
        bce_reference(&inputs, &bce_targets),
        "bce",
    );

    // The application's errors were kept for it, not lost and not reported twice.
    let uncaptured = context.take_uncaptured_errors();
    assert!(uncaptured.len() >= 3, "{uncaptured:?}");
    assert!(
        uncaptured
            .iter()
            .all(|message| message.contains("copy_buffer_to_buffer")
                || message.contains("CommandEncoder")
                || message.contains("submit")),
        "only the application's errors: {uncaptured:?}"
    );
    assert!(context.take_uncaptured_errors().is_empty());
}

#[test]
fn application_errors_on_another_thread_do_not_fail_xent_calls() {
    let Some(context) = own_context() else { return };
    std::thread::scope(|scope| {
        scope.spawn(|| invalid_application_copy(&context));
    });
    assert_host_call_matches(&context, 64, 1000, 3, "after another thread's error");
    assert!(!context.take_uncaptured_errors().is_empty());
}

#[test]
fn application_errors_stay_in_the_application_scope() {
    let Some(context) = own_context() else { return };
    let scope = context.device().push_error_scope(wgpu::ErrorFilter::Validation);
    invalid_application_copy(&context);
    // A xent call inside the application's scope: its own scopes nest inside.
    assert_host_call_matches(&context, 16, 4000, 4, "inside the application's scope");
    let caught = pollster::block_on(scope.pop());
    assert!(caught.is_some(), "the application's scope keeps its error");
    assert!(context.take_uncaptured_errors().is_empty());
}

#[test]
fn xent_errors_still_come_back_typed_after_application_errors() {
    let Some(context) = own_context() else { return };
    invalid_application_copy(&context);
    let shape = Shape::new(4, 10);
    let logits = vec![0.25f32; 40];

    // Bad input, host door: the GPU's status block reports the bad target.
    let error = CrossEntropyLoss::new().loss(&context, &logits[..], &[0i64, 3, 10, 1][..], shape);
    assert_eq!(
        error,
        Err(Error::TargetOutOfRange {
            row: 2,
            value: 10,
            classes: 10
        })
    );
    // Bad input, device door: caught before recording.
    let small = storage_buffer(&context, &[0u8; 64]);
    assert_eq!(
        device_call(&context, &small, &[0, 1, 2, 3], shape),
        Err(Error::BufferTooSmall {
            name: "logits",
            needed: 160,
            actual: 64
        })
    );
    // A wgpu error of xent's own work (a destroyed input buffer) comes back from
    // the call that caused it, not through the uncaptured errors.
    let destroyed = storage_buffer(&context, bytemuck::cast_slice(&logits));
    destroyed.destroy();
    let result = device_call(&context, &destroyed, &[0, 1, 2, 3], shape);
    assert!(matches!(result, Err(Error::Gpu(_))), "{result:?}");
    let uncaptured = context.take_uncaptured_errors();
    assert!(
        !uncaptured.is_empty() && uncaptured.iter().all(|message| !message.contains("destroyed")),
        "{uncaptured:?}"
    );
    // And the context still works.
    assert_host_call_matches(&context, 8, 10, 5, "after xent's own error");
}

#[test]
fn a_lost_device_fails_every_later_call() {
    let Some(context) = own_context() else { return };
    assert_host_call_matches(&context, 8, 100, 6, "before the loss");
    context.device().destroy();
    let logits = vec![0.0f32; 800];
    let call = || CrossEntropyLoss::new().loss(&context, &logits[..], &[0i64; 8][..], Shape::new(8, 100));
    // At once: xent's scopes catch the invalid device's errors.
    let result = call();
    assert!(matches!(result, Err(Error::Gpu(_))), "{result:?}");
    // Once wgpu has run the device-lost callback (on a poll), every call says so.
    let _ = context.device().poll(wgpu::PollType::Poll);
    for _ in 0..2 {
        match call() {
            Err(Error::Gpu(message)) => assert!(message.contains("device lost"), "{message}"),
            other => panic!("expected the device loss, got {other:?}"),
        }
    }
    assert!(context.take_uncaptured_errors().is_empty());
}

/// Unparks the executor's thread, and records that it was woken.
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Runs `attempt` (which runs a xent future with [`run_beside_another_task`] and
/// checks its result) until the xent future was pending beside the other task,
/// at most 5 times.
fn assert_overlaps(what: &str, mut attempt: impl FnMut() -> bool) {
    let overlapped = (0..5).any(|_| attempt());
    assert!(
        overlapped,
        "{what}: the xent future completed on its first poll every time: it blocks its executor's thread"
    );
}

/// A task that needs several polls (yielding in between), counting them.
struct Counter {
    polls: u32,
    needed: u32,
}

impl Future for Counter {
    type Output = u32;

    fn poll(mut self: std::pin::Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<u32> {
        self.polls += 1;
        if self.polls == self.needed {
            return Poll::Ready(self.polls);
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A single-threaded executor: polls `xent` once; when it is pending (the GPU
/// still working), runs a second task to completion on this thread meanwhile,
/// then parks until `xent`'s waker fires, without spinning. Returns `xent`'s
/// output and whether it was pending while the other task ran. (The blocking
/// readback of old always completed on the first poll; a non-blocking one can
/// too, rarely, when the GPU finishes before the first poll checks: callers try
/// again.)
fn run_beside_another_task<T>(xent: impl Future<Output = T>) -> (T, bool) {
    let waker_state = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&waker_state));
    let mut task = TaskContext::from_waker(&waker);
    let mut xent = pin!(xent);
    if let Poll::Ready(output) = xent.as_mut().poll(&mut task) {
        return (output, false);
    }
    let mut other = pin!(Counter { polls: 0, needed: 3 });
    let progress = loop {
        if let Poll::Ready(polls) = other.as_mut().poll(&mut task) {
            break polls;
        }
    };
    assert_eq!(progress, 3, "the other task ran to completion while xent was pending");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Poll::Ready(output) = xent.as_mut().poll(&mut task) {
            assert!(waker_state.woken.load(Ordering::SeqCst), "completed through its waker");
            return (output, true);
        }
        assert!(Instant::now() < deadline, "the xent future was never woken");
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn async_host_calls_leave_the_executor_free() {
    let Some(context) = own_context() else { return };
    let shape = Shape::new(256, 8192);
    let (logits, targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 7);
    let (expected_loss, expected_gradient) = reference(&logits, &targets, shape);
    let loss_function = CrossEntropyLoss::new();
    // The futures can move to a multi-threaded executor's other threads.
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&loss_function.loss_async(&context, &logits[..], &targets[..], shape));

    assert_overlaps("loss_and_grad_async", || {
        let mut gradient = vec![0.0f32; logits.len()];
        let (loss, overlapped) = run_beside_another_task(loss_function.loss_and_grad_async(
            &context,
            &logits[..],
            &targets[..],
            shape,
            &mut gradient[..],
        ));
        let loss = loss.expect("loss_and_grad_async");
        common::assert_loss(loss.value().expect("reduced"), expected_loss, "loss_and_grad_async");
        common::assert_gradient(
            &gradient,
            &expected_gradient,
            1.0 / shape.rows as f64,
            "loss_and_grad_async",
        );
        overlapped
    });
    assert_overlaps("loss_async", || {
        let (loss, overlapped) =
            run_beside_another_task(loss_function.loss_async(&context, &logits[..], &targets[..], shape));
        common::assert_loss(
            loss.expect("loss_async").value().expect("reduced"),
            expected_loss,
            "loss_async",
        );
        overlapped
    });
}

#[test]
fn async_device_reads_leave_the_executor_free() {
    let Some(context) = own_context() else { return };
    let shape = Shape::new(256, 8192);
    let (logits, targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 8);
    let logits_buffer = storage_buffer(&context, bytemuck::cast_slice(&logits));
    let targets_buffer = storage_buffer(&context, bytemuck::cast_slice(&targets));
    let outputs = DeviceOutputs::new(&context, shape.rows).expect("outputs");
    let loss_function = CrossEntropyLoss::new().reduction(Reduction::None);
    let inputs = DeviceInputs {
        logits: logits_buffer.slice(..),
        logit_type: LogitType::F32,
        targets: targets_buffer.slice(..),
        target_type: TargetType::I64,
        shape,
        gradient: GradientOutput::Skip,
        upstream: UpstreamGradient::ONE,
    };
    let expected = cross_entropy_f64(&logits, Targets::I64(&targets), shape, &CrossEntropyOptions::default());
    assert_overlaps("read_all_async", || {
        let mut encoder = context
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        loss_function
            .record(&context, &mut encoder, &inputs, &outputs)
            .expect("record");
        context.queue().submit([encoder.finish()]);
        let (output, overlapped) = run_beside_another_task(outputs.read_all_async(&context, true));
        let output = output.expect("read_all_async");
        let Loss::PerRow(losses) = output.loss else {
            panic!("per-row losses expected")
        };
        common::assert_row_losses(&losses, &expected.row_losses, "read_all_async");
        assert_eq!(output.argmax.as_deref(), Some(&expected.row_argmax[..]));
        overlapped
    });
}

#[test]
fn released_buffers_are_recreated_by_the_next_call() {
    let Some(context) = own_context() else { return };
    assert_eq!(context.workspace_bytes(), 0);
    let (rows, classes) = (256, 1000);
    assert_host_call_matches(&context, rows, classes, 9, "before the release");
    let logits_bytes = (rows * classes * 4) as u64;
    let held = context.workspace_bytes();
    // Logits, gradient and its readback at least.
    assert!(held >= 3 * logits_bytes, "{held} bytes held");

    context.release_buffers();
    assert_eq!(context.workspace_bytes(), 0);
    assert_host_call_matches(&context, rows, classes, 10, "after the release");
    assert_eq!(context.workspace_bytes(), held, "the same buffers again");

    // A release asked for while an async call holds the workspace happens when it ends.
    let shape = Shape::new(rows, classes);
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 11);
    let loss_function = CrossEntropyLoss::new();
    let waker = Waker::noop();
    let mut task = TaskContext::from_waker(waker);
    let mut call = pin!(loss_function.loss_async(&context, &logits[..], &targets[..], shape));
    let mut output = match call.as_mut().poll(&mut task) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    };
    context.release_buffers();
    if output.is_none() {
        assert_eq!(context.workspace_bytes(), held, "kept while the pending call uses it");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while output.is_none() {
        assert!(Instant::now() < deadline, "the call never completed");
        std::thread::sleep(Duration::from_millis(5));
        if let Poll::Ready(result) = call.as_mut().poll(&mut task) {
            output = Some(result);
        }
    }
    let loss = output.and_then(Result::ok).expect("the pending call succeeds");
    let (expected, _) = reference(&logits, &targets, shape);
    common::assert_loss(loss.value().expect("reduced"), expected, "during the release");
    assert_eq!(context.workspace_bytes(), 0, "released once the call ended");
    assert_host_call_matches(&context, rows, classes, 12, "after the deferred release");
}

/// The application's own adapter, device and queue: wgpu's default limits and no
/// optional feature (no `SHADER_F16`, no `SUBGROUP`), as a framework might
/// request them. `None` only without an adapter under `XENT_ALLOW_NO_GPU=1`.
fn application_device() -> Option<(wgpu::Adapter, wgpu::Device, wgpu::Queue)> {
    common::gpu()?;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("the application's adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
        .expect("the application's device");
    Some((adapter, device, queue))
}

#[test]
fn a_context_on_the_applications_device_computes_on_its_buffers() {
    let Some((adapter, device, queue)) = application_device() else {
        return;
    };
    let context = Context::from_wgpu(adapter.clone(), device.clone(), queue, ContextOptions::default())
        .expect("a context on the application's device");
    assert_eq!(context.adapter().get_info(), adapter.get_info());
    assert_eq!(context.features(), device.features());
    assert_eq!(
        context.limits().max_storage_buffer_binding_size,
        device.limits().max_storage_buffer_binding_size
    );
    assert!(!context.uses_subgroups(), "the device has no SUBGROUP feature");
    // A buffer the application made on its device goes straight into a recorded call.
    let (rows, classes) = (37, 1000);
    let shape = Shape::new(rows, classes);
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 17);
    let logits_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("application logits"),
        contents: bytemuck::cast_slice(&logits),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let loss = device_call(&context, &logits_buffer, &targets, shape).expect("recorded call");
    let (expected, _) = reference(&logits, &targets, shape);
    common::assert_loss(
        loss.value().expect("reduced"),
        expected,
        "device call on the application's device",
    );
    assert_host_call_matches(&context, 64, 300, 18, "host call on the application's device");
}

#[test]
fn the_applications_error_handler_stays_in_place() {
    let Some((adapter, device, queue)) = application_device() else {
        return;
    };
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    device.on_uncaptured_error(Arc::new(move |_error: wgpu::Error| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let context = Context::from_wgpu(adapter, device, queue, ContextOptions::default()).expect("context");
    invalid_application_copy(&context);
    let _ = context.device().poll(wgpu::PollType::wait_indefinitely());
    let application_errors = seen.load(Ordering::SeqCst);
    assert!(application_errors >= 1, "the application's handler got its error");
    assert!(context.take_uncaptured_errors().is_empty(), "xent kept nothing of it");
    assert_host_call_matches(&context, 16, 100, 19, "after the application's error");
    let _ = context.device().poll(wgpu::PollType::wait_indefinitely());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        application_errors,
        "xent's own work raised nothing in the application's handler"
    );
}

/// f16 logits on a device without `SHADER_F16` (read as halves of 32-bit
/// words: tests/f16_words.rs has every path).
#[test]
fn f16_logits_need_no_shader_f16() {
    let Some((adapter, device, queue)) = application_device() else {
        return;
    };
    let context = Context::from_wgpu(adapter, device, queue, ContextOptions::default()).expect("context");
    // Rows (0, ln 2, 0) and (1, 1, 1) against classes 0 and 2: ln 4 − 0 and ln 3.
    let values = [0.0f32, std::f32::consts::LN_2, 0.0, 1.0, 1.0, 1.0];
    let logits = values.map(xent::half::f16::from_f32);
    let loss = CrossEntropyLoss::new()
        .loss(&context, &logits[..], &[0i64, 2][..], Shape::new(2, 3))
        .expect("f16 logits without SHADER_F16");
    let widened: Vec<f32> = logits.iter().map(|value| value.to_f32()).collect();
    let (expected, _) = reference(&widened, &[0, 2], Shape::new(2, 3));
    common::assert_loss(loss.value().expect("mean"), expected, "f16 without SHADER_F16");
}

/// A blocking family call while a `*_async` cross-entropy call holds the
/// workspace on this thread does not wait for it (waiting would deadlock: the
/// async call only finishes when this thread polls it): it uses buffers of its
/// own, and both results are right.
#[test]
fn a_family_call_beside_a_pending_async_call_does_not_wait_for_it() {
    let Some(context) = own_context() else {
        return;
    };
    let (rows, classes) = (256, 4000);
    let shape = Shape::new(rows, classes);
    let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 23);
    let inputs: Vec<f32> = (0..64).map(|index| (index as f32 - 32.0) / 8.0).collect();
    let labels: Vec<f32> = (0..64).map(|index| f32::from(u8::from(index % 3 == 0))).collect();
    let bce = || BinaryCrossEntropyLoss::new().loss(&context, &inputs[..], &labels[..], Shape::new(8, 8));
    assert_overlaps("the async call", || {
        let loss = CrossEntropyLoss::new();
        let mut pending = pin!(loss.loss_async(&context, &logits[..], &targets[..], shape));
        let mut task = TaskContext::from_waker(Waker::noop());
        if pending.as_mut().poll(&mut task).is_ready() {
            return false;
        }
        // The async call holds the workspace now; the family call runs beside it.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = sender.send(bce());
            });
            let result = receiver.recv_timeout(Duration::from_secs(20));
            let async_loss = pollster::block_on(pending.as_mut()).expect("the async call");
            let (expected, _) = reference(&logits, &targets, shape);
            common::assert_loss(async_loss.value().expect("reduced"), expected, "the async call");
            let family_loss = result.expect("the family call finished without waiting").expect("BCE");
            let expected_bce = bce_reference(&inputs, &labels);
            let actual = f64::from(family_loss.value().expect("reduced"));
            assert!(
                (actual - expected_bce).abs() <= 1e-6 * expected_bce.abs(),
                "BCE {actual} vs {expected_bce}"
            );
        });
        true
    });
}
