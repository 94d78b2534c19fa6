//! Where xent-burn writes the gradient, each path forced and checked against
//! xent's f64 reference: in place over logits the call owns (at a nonzero
//! offset of their buffer, with targets in that buffer or not), a new tensor
//! when the caller keeps the logits, a copy of the logits when the new tensor
//! lands in the logits' buffer, in place under autodiff, and xent's in-kernel
//! upstream gradient. The path taken is read from `xent_burn::gradient_paths`
//! (per thread, so parallel tests do not mix). On lavapipe in CI; without an
//! adapter these fail unless `XENT_ALLOW_NO_GPU=1`.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{assert_close, device, host, int_storage_of, reference, storage_of, values};
use xent::{Reduction, Shape};
use xent_burn::{CrossEntropyLossConfig, Error, GradientPaths, Upstream, gradient_paths};

/// Logits and targets (row 1 ignored with -100).
struct Batch {
    shape: Shape,
    logits: Vec<f32>,
    targets: Vec<i64>,
}

impl Batch {
    fn new(rows: usize, classes: usize) -> Self {
        let targets = (0..rows)
            .map(|row| if row == 1 { -100 } else { (row * 7 % classes) as i64 })
            .collect();
        Self {
            shape: Shape::new(rows, classes),
            logits: values(rows * classes, rows as u64 + 5, 4.0),
            targets,
        }
    }

    /// The logits as rows 1..=rows of a tensor one row longer on each side:
    /// a view at a nonzero offset of its buffer (classes × 4 bytes must be a
    /// multiple of cubecl's alignment for the slice to stay a view, which the
    /// test checks). Dropping the parent leaves the view the only owner.
    fn logits_at_offset(&self, device: &Device) -> Tensor<2> {
        let Shape { rows, classes, .. } = self.shape;
        let mut padded = values(classes, 1, 1.0);
        padded.extend(&self.logits);
        padded.extend(values(classes, 2, 1.0));
        let parent = Tensor::<2>::from_data(TensorData::new(padded, [rows + 2, classes]), device);
        parent.narrow(0, 1, rows)
    }

    fn logits(&self, device: &Device) -> Tensor<2> {
        let dims = [self.shape.rows, self.shape.classes];
        Tensor::<2>::from_data(TensorData::new(self.logits.clone(), dims), device)
    }

    fn targets(&self, device: &Device) -> Tensor<1, Int> {
        Tensor::<1, Int>::from_data(TensorData::new(self.targets.clone(), [self.shape.rows]), device)
    }

    /// Checks a call's loss and gradient against the reference, the gradient's
    /// rows multiplied by `upstream`.
    fn check(&self, config: &CrossEntropyLossConfig, upstream: &[f32], loss: Tensor<1>, gradient: Tensor<2>) {
        let (expected_loss, expected_gradient) = reference(config, self.shape, &self.logits, &self.targets, upstream);
        assert_close("loss", &host(loss), &expected_loss, 2e-5);
        assert_close("gradient", &host(gradient), &expected_gradient, 2e-5);
    }
}

/// What `run` returns and the paths it took on this thread.
fn paths_of<T>(run: impl FnOnce() -> T) -> (T, GradientPaths) {
    let before = gradient_paths();
    let value = run();
    let after = gradient_paths();
    let taken = GradientPaths {
        in_place: after.in_place - before.in_place,
        new_tensor: after.new_tensor - before.new_tensor,
        copy_in_place: after.copy_in_place - before.copy_in_place,
        staged_reads: after.staged_reads - before.staged_reads,
    };
    (value, taken)
}

/// One call of `loss_and_gradient` with `config` and the plain gradient.
fn loss_and_gradient(
    config: &CrossEntropyLossConfig,
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
) -> ((Tensor<1>, Tensor<2>), GradientPaths) {
    let loss_fn = config.init().expect("valid options");
    paths_of(|| {
        loss_fn
            .loss_and_gradient(logits, targets, Upstream::default())
            .expect("the call")
    })
}

fn paths(in_place: u64, new_tensor: u64, copy_in_place: u64, staged_reads: u64) -> GradientPaths {
    GradientPaths {
        in_place,
        new_tensor,
        copy_in_place,
        staged_reads,
    }
}

#[test]
fn owned_logits_at_an_offset_are_overwritten_in_place_with_staged_targets() {
    let Some(device) = device() else { return };
    let batch = Batch::new(9, 64);
    let config = CrossEntropyLossConfig::new().with_label_smoothing(0.1);
    let logits = batch.logits_at_offset(&device);
    let targets = batch.targets(&device);
    let (buffer, offset) = storage_of(&logits);
    assert!(offset > 0, "the sliced logits start at offset 0");
    assert!(
        int_storage_of(&targets).0 == buffer,
        "small targets expected in the logits' buffer"
    );
    let ((loss, gradient), taken) = loss_and_gradient(&config, logits, targets);
    assert_eq!(taken, paths(1, 0, 0, 1));
    let (gradient_buffer, gradient_offset) = storage_of(&gradient);
    assert!(
        gradient_buffer == buffer && gradient_offset == offset,
        "the gradient is not where the logits were"
    );
    batch.check(&config, &[1.0], loss, gradient);
}

#[test]
fn large_owned_logits_are_overwritten_in_place_reading_targets_where_they_are() {
    let Some(device) = device() else { return };
    let batch = Batch::new(1024, 4096);
    let config = CrossEntropyLossConfig::new()
        .with_reduction(Reduction::Sum)
        .with_z_loss(1e-3);
    let logits = batch.logits_at_offset(&device);
    let targets = batch.targets(&device);
    let (buffer, offset) = storage_of(&logits);
    assert!(offset > 0, "the sliced logits start at offset 0");
    assert!(
        int_storage_of(&targets).0 != buffer,
        "16 MiB of logits expected in a buffer of their own"
    );
    let ((loss, gradient), taken) = loss_and_gradient(&config, logits, targets);
    assert_eq!(taken, paths(1, 0, 0, 0));
    batch.check(&config, &[1.0], loss, gradient);
}

#[test]
fn logits_the_caller_keeps_get_a_new_gradient_tensor_and_stay_unchanged() {
    let Some(device) = device() else { return };
    let batch = Batch::new(1024, 4096);
    let config = CrossEntropyLossConfig::new().with_reduction(Reduction::None);
    let kept = batch.logits_at_offset(&device);
    let ((loss, gradient), taken) = loss_and_gradient(&config, kept.clone(), batch.targets(&device));
    assert_eq!(taken, paths(0, 1, 0, 0));
    assert!(
        storage_of(&gradient).0 != storage_of(&kept).0,
        "gradient in the logits' buffer"
    );
    assert_eq!(host(kept), batch.logits, "the caller's logits changed");
    batch.check(&config, &[1.0], loss, gradient);
}

#[test]
fn kept_small_logits_whose_new_tensor_shares_their_buffer_are_copied_then_overwritten() {
    let Some(device) = device() else { return };
    let batch = Batch::new(9, 33);
    let config = CrossEntropyLossConfig::new().with_softcap(Some(3.0));
    let kept = batch.logits(&device);
    let probe = Tensor::<2>::empty([9, 33], &device);
    assert!(
        storage_of(&probe).0 == storage_of(&kept).0,
        "small tensors expected in one pooled buffer"
    );
    drop(probe);
    let ((loss, gradient), taken) = loss_and_gradient(&config, kept.clone(), batch.targets(&device));
    assert_eq!((taken.in_place, taken.new_tensor, taken.copy_in_place), (0, 0, 1));
    assert_eq!(host(kept), batch.logits, "the caller's logits changed");
    batch.check(&config, &[1.0], loss, gradient);
}

#[test]
fn autodiff_writes_the_gradient_over_logits_nothing_else_holds() {
    let Some(device) = device() else { return };
    let device = device.autodiff();
    let batch = Batch::new(9, 64);
    let config =
        CrossEntropyLossConfig::new().with_weight(Some(values(64, 3, 1.0).iter().map(|w| w.abs() + 0.1).collect()));
    let halves: Vec<f32> = batch.logits.iter().map(|value| value / 2.0).collect();
    let parameter = Tensor::<2>::from_data(TensorData::new(halves, [9, 64]), &device).require_grad();
    let loss_fn = config.init().expect("valid options");
    // The logits are 2 × parameter: mul_scalar keeps nothing for its backward,
    // so the loss owns them.
    let (gradients, taken) = paths_of(|| {
        let loss = loss_fn.forward(parameter.clone().mul_scalar(2.0), batch.targets(&device));
        (loss.clone(), loss.backward())
    });
    let (loss, gradients) = gradients;
    assert_eq!(taken.in_place, 1, "{taken:?}");
    assert_eq!(taken.new_tensor + taken.copy_in_place, 0, "{taken:?}");
    // d loss / d parameter = 2 × d loss / d logits.
    batch.check(
        &config,
        &[2.0],
        loss,
        parameter.grad(&gradients).expect("parameter gradient"),
    );
}

#[test]
fn upstream_values_multiply_each_row_inside_the_kernel() {
    let Some(device) = device() else { return };
    let batch = Batch::new(9, 64);
    let config = CrossEntropyLossConfig::new()
        .with_reduction(Reduction::None)
        .with_z_loss(1e-3);
    let per_row: Vec<f32> = (0..9).map(|row| row as f32 * 0.5 - 1.5).collect();
    let upstream = Upstream {
        scale: 0.5,
        values: Some(Tensor::<1>::from_data(TensorData::new(per_row.clone(), [9]), &device)),
    };
    let loss_fn = config.init().expect("valid options");
    let (loss, gradient) = loss_fn
        .loss_and_gradient(batch.logits_at_offset(&device), batch.targets(&device), upstream)
        .expect("the call");
    let scaled: Vec<f32> = per_row.iter().map(|value| value * 0.5).collect();
    batch.check(&config, &scaled, loss, gradient);
}

#[test]
fn one_upstream_value_and_a_scale_multiply_every_row() {
    let Some(device) = device() else { return };
    let batch = Batch::new(9, 64);
    let config = CrossEntropyLossConfig::new();
    let value = Tensor::<1>::from_data(TensorData::new(vec![3.0f32], [1]), &device);
    let upstream = Upstream {
        scale: -0.25,
        values: Some(value),
    };
    let loss_fn = config.init().expect("valid options");
    let (loss, gradient) = loss_fn
        .loss_and_gradient(batch.logits(&device), batch.targets(&device), upstream)
        .expect("the call");
    batch.check(&config, &[-0.75], loss, gradient);
}

#[test]
fn bad_upstream_values_and_autodiff_devices_are_typed_errors() {
    let Some(device) = device() else { return };
    let batch = Batch::new(9, 64);
    let loss_fn = CrossEntropyLossConfig::new().init().expect("valid options");
    let per_row = Upstream::values(Tensor::<1>::ones([9], &device));
    let mean_with_rows = loss_fn.loss_and_gradient(batch.logits(&device), batch.targets(&device), per_row);
    assert!(matches!(mean_with_rows, Err(Error::InvalidInput(_))));
    let device = device.autodiff();
    let on_autodiff = loss_fn.loss_and_gradient(batch.logits(&device), batch.targets(&device), Upstream::default());
    assert!(matches!(on_autodiff, Err(Error::InvalidInput(_))));
}
