//! xent-burn against Burn's own `CrossEntropyLoss` (the options Burn has: class
//! weights, label smoothing, pad tokens = `ignore_index`, mean) on a small linear
//! classifier trained a few steps, and against xent's f64 reference for the
//! options Burn lacks (`sum`, `none`, z-loss, softcap) with upstream gradients
//! other than 1. On lavapipe in CI; without an adapter these fail unless
//! `XENT_ALLOW_NO_GPU=1`.

mod common;

use burn::nn::loss::CrossEntropyLossConfig as BurnLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyOptions, Reduction, Shape, Targets};
use xent_burn::{CrossEntropyLossConfig, Error};

use common::{assert_close, device, values};

fn host(tensor: Tensor<1>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 data")
}

fn host2(tensor: Tensor<2>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 data")
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&value| f64::from(value)).collect()
}

/// The batch and classifier of the training test: inputs `rows × features`,
/// `classes` outputs, targets including `pad` on some rows.
struct Problem {
    rows: usize,
    features: usize,
    classes: usize,
    inputs: Vec<f32>,
    targets: Vec<i64>,
}

impl Problem {
    fn new(pad: i64) -> Self {
        let (rows, features, classes) = (24, 12, 7);
        let targets = (0..rows as i64)
            .map(|row| if row % 5 == 3 { pad } else { row * 3 % classes as i64 })
            .collect();
        Self {
            rows,
            features,
            classes,
            inputs: values(rows * features, 1, 1.0),
            targets,
        }
    }
}

/// Parameters of `logits = inputs · weight + bias` on the host.
#[derive(Clone)]
struct Classifier {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// What one step gives: the loss and the parameters' gradients.
struct Step {
    loss: f32,
    weight_grad: Vec<f32>,
    bias_grad: Vec<f32>,
}

/// One forward + backward of the classifier with `loss_fn`.
fn step(
    device: &Device,
    problem: &Problem,
    model: &Classifier,
    loss_fn: impl Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
) -> Step {
    let inputs = Tensor::<2>::from_data(
        TensorData::new(problem.inputs.clone(), [problem.rows, problem.features]),
        device,
    );
    let weight = Tensor::<2>::from_data(
        TensorData::new(model.weight.clone(), [problem.features, problem.classes]),
        device,
    )
    .require_grad();
    let bias = Tensor::<1>::from_data(TensorData::new(model.bias.clone(), [problem.classes]), device).require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(problem.targets.clone(), [problem.rows]), device);
    let logits = inputs.matmul(weight.clone()) + bias.clone().unsqueeze_dim(0);
    let loss = loss_fn(logits, targets);
    let gradients = loss.backward();
    Step {
        loss: loss.into_scalar::<f32>(),
        weight_grad: host2(weight.grad(&gradients).expect("weight gradient")),
        bias_grad: host(bias.grad(&gradients).expect("bias gradient")),
    }
}

fn sgd(model: &mut Classifier, step: &Step, learning_rate: f32) {
    for (parameter, gradient) in model.weight.iter_mut().zip(&step.weight_grad) {
        *parameter -= learning_rate * gradient;
    }
    for (parameter, gradient) in model.bias.iter_mut().zip(&step.bias_grad) {
        *parameter -= learning_rate * gradient;
    }
}

/// Trains two copies of the classifier four steps, one with Burn's loss and one
/// with xent-burn's, and checks that every step's loss and gradients agree and
/// that the loss falls.
fn train_both(burn_config: BurnLossConfig, xent_config: CrossEntropyLossConfig, pad: i64) {
    let Some(device) = device() else { return };
    let device = device.autodiff();
    let problem = Problem::new(pad);
    let initial = Classifier {
        weight: values(problem.features * problem.classes, 2, 0.5),
        bias: values(problem.classes, 3, 0.1),
    };
    let burn_loss = burn_config.init(&device);
    let xent_loss = xent_config.init().expect("valid options");
    let (mut burn_model, mut xent_model) = (initial.clone(), initial);
    let mut losses = Vec::new();
    for index in 0..4 {
        let burn_step = step(&device, &problem, &burn_model, |logits, targets| {
            burn_loss.forward(logits, targets)
        });
        let xent_step = step(&device, &problem, &xent_model, |logits, targets| {
            xent_loss.forward(logits, targets)
        });
        assert_close(
            &format!("step {index} loss"),
            &[xent_step.loss],
            &[f64::from(burn_step.loss)],
            1e-5,
        );
        let what = format!("step {index} d weight");
        assert_close(&what, &xent_step.weight_grad, &widen(&burn_step.weight_grad), 1e-5);
        let what = format!("step {index} d bias");
        assert_close(&what, &xent_step.bias_grad, &widen(&burn_step.bias_grad), 1e-5);
        sgd(&mut burn_model, &burn_step, 0.5);
        sgd(&mut xent_model, &xent_step, 0.5);
        losses.push(xent_step.loss);
    }
    assert!(losses[3] < losses[0], "the loss did not fall: {losses:?}");
}

#[test]
fn training_matches_burn_with_pytorch_defaults() {
    train_both(BurnLossConfig::new(), CrossEntropyLossConfig::new(), 0);
}

#[test]
fn training_matches_burn_with_class_weights() {
    let weights = vec![0.5, 1.0, 2.0, 0.25, 1.5, 3.0, 0.75];
    train_both(
        BurnLossConfig::new().with_weights(Some(weights.clone())),
        CrossEntropyLossConfig::new().with_weight(Some(weights)),
        0,
    );
}

#[test]
fn training_matches_burn_with_label_smoothing() {
    train_both(
        BurnLossConfig::new().with_smoothing(Some(0.2)),
        CrossEntropyLossConfig::new().with_label_smoothing(0.2),
        0,
    );
}

#[test]
fn training_matches_burn_with_pad_tokens_as_ignore_index() {
    train_both(
        BurnLossConfig::new().with_pad_tokens(Some(vec![2])),
        CrossEntropyLossConfig::new().with_ignore_index(2),
        2,
    );
}

#[test]
fn training_matches_burn_with_weights_smoothing_and_padding_together() {
    let weights = vec![1.0, 0.5, 2.0, 1.0, 0.25, 1.0, 4.0];
    train_both(
        BurnLossConfig::new()
            .with_weights(Some(weights.clone()))
            .with_smoothing(Some(0.1))
            .with_pad_tokens(Some(vec![4])),
        CrossEntropyLossConfig::new()
            .with_weight(Some(weights))
            .with_label_smoothing(0.1)
            .with_ignore_index(4),
        4,
    );
}

/// Logits and targets of the reference tests (one row ignored with -100).
fn reference_batch() -> (Shape, Vec<f32>, Vec<i64>) {
    let shape = Shape::new(9, 33);
    let logits = values(shape.rows * shape.classes, 7, 6.0);
    let targets = (0..shape.rows as i64)
        .map(|row| if row == 4 { -100 } else { row * 7 % 33 })
        .collect();
    (shape, logits, targets)
}

/// xent-burn's loss and d logits under autodiff, the backward seeded with
/// `upstream` (one value for mean/sum, one per row for none).
fn autodiff_call(config: &CrossEntropyLossConfig, upstream: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    let device = device()?.autodiff();
    let (shape, logits, targets) = reference_batch();
    let logits = Tensor::<2>::from_data(TensorData::new(logits, [shape.rows, shape.classes]), &device).require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [shape.rows]), &device);
    let loss = config.init().expect("valid options").forward(logits.clone(), targets);
    let seed = Tensor::<1>::from_data(TensorData::new(upstream.to_vec(), [upstream.len()]), &device);
    let gradients = (loss.clone() * seed).sum().backward();
    Some((host(loss), host2(logits.grad(&gradients).expect("logits gradient"))))
}

/// xent's f64 truth for `config` on the reference batch: per-row or reduced
/// loss, and the gradient with each row scaled by its upstream value.
fn truth(config: &CrossEntropyLossConfig, upstream: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (shape, logits, targets) = reference_batch();
    let options = CrossEntropyOptions {
        reduction: config.reduction,
        ignore_index: config.ignore_index,
        weight: config.weight.clone(),
        label_smoothing: config.label_smoothing,
        z_loss: config.z_loss,
        softcap: config.softcap,
        ..CrossEntropyOptions::default()
    };
    let reference = cross_entropy_f64(&logits, Targets::from(&targets[..]), shape, &options);
    let loss = match config.reduction {
        Reduction::None => reference.row_losses.clone(),
        Reduction::Mean | Reduction::Sum => vec![reference.loss],
    };
    let gradient = reference
        .gradient
        .chunks(shape.classes)
        .enumerate()
        .flat_map(|(row, values)| {
            let scale = f64::from(upstream[row.min(upstream.len() - 1)]);
            values.iter().map(move |value| value * scale)
        })
        .collect();
    (loss, gradient)
}

fn check_against_reference(config: CrossEntropyLossConfig, upstream: &[f32]) {
    let Some((loss, gradient)) = autodiff_call(&config, upstream) else {
        return;
    };
    let (expected_loss, expected_gradient) = truth(&config, upstream);
    assert_close("loss", &loss, &expected_loss, 2e-5);
    assert_close("d logits", &gradient, &expected_gradient, 2e-5);
}

#[test]
fn sum_with_z_loss_scales_by_the_upstream_scalar() {
    check_against_reference(
        CrossEntropyLossConfig::new()
            .with_reduction(Reduction::Sum)
            .with_z_loss(1e-3),
        &[2.5],
    );
}

#[test]
fn none_scales_each_row_by_its_upstream_value() {
    let upstream: Vec<f32> = (0..9).map(|row| row as f32 * 0.5 - 1.0).collect();
    check_against_reference(
        CrossEntropyLossConfig::new()
            .with_reduction(Reduction::None)
            .with_label_smoothing(0.05),
        &upstream,
    );
}

#[test]
fn mean_with_softcap_z_loss_and_weights() {
    let weight = values(33, 11, 1.0).iter().map(|value| value.abs() + 0.1).collect();
    check_against_reference(
        CrossEntropyLossConfig::new()
            .with_softcap(Some(5.0))
            .with_z_loss(1e-4)
            .with_weight(Some(weight)),
        &[0.75],
    );
}

#[test]
fn forward_without_autodiff_matches_the_reference() {
    let Some(device) = device() else { return };
    let (shape, logits, targets) = reference_batch();
    let config = CrossEntropyLossConfig::new()
        .with_reduction(Reduction::None)
        .with_softcap(Some(3.0));
    let logits = Tensor::<2>::from_data(TensorData::new(logits, [shape.rows, shape.classes]), &device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [shape.rows]), &device);
    let loss = config.init().expect("valid options").forward(logits, targets);
    let (expected, _) = truth(&config, &[1.0]);
    assert_close("row losses", &host(loss), &expected, 2e-5);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let Some(device) = device() else { return };
    let logits = Tensor::<2>::zeros([4, 3], &device);
    let loss = CrossEntropyLossConfig::new().init().expect("valid options");
    let short_targets = Tensor::<1, Int>::zeros([3], &device);
    assert!(matches!(
        loss.try_forward(logits.clone(), short_targets),
        Err(Error::InvalidInput(_))
    ));
    let weighted = CrossEntropyLossConfig::new()
        .with_weight(Some(vec![1.0; 5]))
        .init()
        .expect("valid options");
    let targets = Tensor::<1, Int>::zeros([4], &device);
    assert!(matches!(weighted.try_forward(logits, targets), Err(Error::Xent(_))));
    assert!(matches!(
        CrossEntropyLossConfig::new().with_z_loss(-1.0).init(),
        Err(Error::Xent(_))
    ));
}
