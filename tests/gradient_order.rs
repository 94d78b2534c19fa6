//! `ContextOptions::gradient_order`: the gradient pass walking a row's groups
//! backwards gives the forward pass's bits, for every storage that walks groups
//! (f32 and bf16 rows of a multiple of 4 classes, 16-bit rows with masked
//! edges, f32 rows as vectors where the backend allows them), cached and
//! streamed rows, slices at odd offsets, separate and in place, with options,
//! and chunked; and the values match the f64 reference.

mod common;

use common::SliceCall;
use xent::reference::cross_entropy_f64;
use xent::{Context, ContextOptions, CrossEntropyLoss, GradientOrder, LogitType, Loss, Shape, Targets, UnalignedF32};

/// A context walking the gradient `order`, with workgroups of 256 (rows of
/// more than one lane's runs) and optionally a small binding cap.
fn context(order: GradientOrder, max_binding_size: Option<u64>) -> Option<Context> {
    let vectors = |backend| matches!(backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12);
    let backend = Context::available_adapters(None).first().map(|info| info.backend);
    common::open(ContextOptions {
        gradient_order: order,
        workgroup_size: Some(common::GPU_WORKGROUP_SIZE),
        max_binding_size,
        unaligned_f32: if backend.is_some_and(vectors) {
            UnalignedF32::Vectors
        } else {
            UnalignedF32::Entries
        },
        ..ContextOptions::default()
    })
}

#[test]
fn backward_gives_the_forward_bits_and_the_reference() {
    let (Some(forward), Some(backward), Some(chunked)) = (
        context(GradientOrder::Forward, None),
        context(GradientOrder::Backward, None),
        context(GradientOrder::Backward, Some(256 << 10)),
    ) else {
        return;
    };
    assert_eq!(backward.gradient_order(), GradientOrder::Backward);
    assert_eq!(forward.gradient_order(), GradientOrder::Forward);
    let losses = [
        CrossEntropyLoss::new(),
        CrossEntropyLoss::new().label_smoothing(0.1).z_loss(1e-3).softcap(15.0),
    ];
    // Cached (≤ 8192 floats a workgroup) and streamed rows; a multiple of 4
    // classes and not; runs of LOADS_IN_FLIGHT groups and single groups left over.
    for (rows, classes) in [(6, 4096), (5, 20_000), (9, 1001), (3, 9001), (2, 50_257)] {
        let shape = Shape::new(rows, classes);
        let (values, mut targets) = common::batch(rows, classes, common::Logits::Random, 41 + classes as u64);
        targets[rows - 1] = classes as i64 - 1;
        for logit_type in [LogitType::F32, LogitType::Bf16] {
            let (bytes, seen) = common::encoded(&values, logit_type);
            let size = logit_type.size_in_bytes() as u64;
            // Element offsets: aligned; odd (masked groups, or entries) apart and in place.
            for leads in [(0, Some(0)), (size, Some(3 * size)), (2 * size, None)] {
                for loss in &losses {
                    let call = SliceCall::plain(&bytes, logit_type, &targets, shape, leads);
                    let what = format!("{rows}x{classes} {logit_type:?} leads {leads:?} {:?}", loss.options());
                    let expected = call.run(&forward, loss, &what);
                    assert_same(
                        &call.run(&backward, loss, &what),
                        &expected,
                        &format!("{what}: backward"),
                    );
                    let chunked_what = format!("{what}: backward, chunked");
                    assert_same(&call.run(&chunked, loss, &what), &expected, &chunked_what);
                    let truth = cross_entropy_f64(&seen, Targets::from(&targets[..]), shape, loss.options());
                    let Loss::Reduced(value) = expected.0 else {
                        panic!("a mean")
                    };
                    common::assert_loss(value, truth.loss, &what);
                    let gradient = common::decoded(&expected.1, logit_type);
                    common::assert_gradient_within_rounding(&gradient, &truth.gradient, logit_type, &what);
                }
            }
        }
    }
}

/// The same loss bits and gradient bytes, else the first difference.
fn assert_same((loss, bytes): &(Loss, Vec<u8>), (expected_loss, expected_bytes): &(Loss, Vec<u8>), what: &str) {
    assert_eq!(loss, expected_loss, "{what}: loss");
    assert_eq!(bytes.len(), expected_bytes.len(), "{what}: gradient bytes");
    if let Some(index) = (0..bytes.len()).find(|&index| bytes[index] != expected_bytes[index]) {
        panic!(
            "{what}: gradient byte {index} is {} and {}",
            bytes[index], expected_bytes[index]
        );
    }
}
