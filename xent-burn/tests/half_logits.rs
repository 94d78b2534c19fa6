//! f16 logits through xent-burn on Burn's wgpu device, forward and backward
//! through autodiff: the loss is f32, the gradient has the logits' type. (bf16
//! takes the same path in xent-burn, but Burn's WGSL compiler has no bf16:
//! cubecl-wgpu 0.11 fails any bf16 kernel with `UnsupportedType("cube.bf16")`,
//! so a bf16 tensor cannot be made on this runtime.) Checked against xent's f64 reference on the logits as the tensor holds
//! them (rounded to the 16-bit type): the loss to f32 accuracy, each gradient
//! entry to one rounding to f16. 1001 classes, so that rows share
//! 32-bit words at their boundaries (the straddling-word pass), and 1024 as the
//! aligned control; mean, sum and none.

mod common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::device;
use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyOptions, Reduction, Shape, Targets};
use xent_burn::CrossEntropyLossConfig;

/// The values of a float tensor of any type, widened to f32 on the host.
fn host_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    common::host(tensor.cast(DType::F32))
}

#[test]
fn f16_logits_give_the_references_loss_and_an_f16_gradient() {
    let Some(device) = device() else { return };
    let device = device.autodiff();
    // The adapter Burn took is the default one; an xent context on it says whether it has f16.
    let has_f16 = xent::Context::new()
        .expect("an xent context on the same adapter")
        .features()
        .contains(wgpu::Features::SHADER_F16);
    assert!(has_f16, "lavapipe and the GPUs this runs on have shader-f16");
    // One rounding to f16: half an ulp, 2^-11 relative.
    let (dtype, step) = (DType::F16, 1.0 / 2048.0);
    for classes in [1001, 1024] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let what = format!("{dtype:?} 6x{classes} {reduction:?}");
            let rows = 6;
            let shape = Shape::new(rows, classes);
            let values = common::values(rows * classes, 3, 4.0);
            let targets: Vec<i64> = (0..rows as i64).map(|row| row * 167 % classes as i64).collect();
            let logits =
                Tensor::<2>::from_data(TensorData::new(values, [rows, classes]), (&device, dtype)).require_grad();
            let target_tensor = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [rows]), &device);
            let loss_fn = CrossEntropyLossConfig::new()
                .with_reduction(reduction)
                .init()
                .expect("loss");
            let loss = loss_fn.forward(logits.clone(), target_tensor);
            let gradients = loss.backward();
            let gradient = logits.grad(&gradients).expect("gradient");
            assert_eq!(gradient.dtype(), dtype, "{what}: the gradient's type");
            let held = host_f32(logits.clone().inner());
            let options = CrossEntropyOptions {
                reduction,
                ..CrossEntropyOptions::default()
            };
            let reference = cross_entropy_f64(&held, Targets::from(targets.as_slice()), shape, &options);
            let expected_loss = match reduction {
                Reduction::None => reference.row_losses.clone(),
                Reduction::Mean | Reduction::Sum => vec![reference.loss],
            };
            common::assert_close(&what, &host_f32(loss.inner()), &expected_loss, 1e-5);
            // d(sum of per-row losses)/dx for `none` (backward seeds ones).
            for (index, (&actual, &expected)) in host_f32(gradient).iter().zip(&reference.gradient).enumerate() {
                let error = (f64::from(actual) - expected).abs();
                assert!(
                    error <= step * expected.abs() + 1e-7,
                    "{what}: gradient[{index}] {actual} vs {expected}"
                );
            }
        }
    }
}
