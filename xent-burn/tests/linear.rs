//! The chunked linear + cross-entropy head against the unfused composition:
//! an f64 host reference (logits = h·Wᵀ + b, xent's f64 cross-entropy, then
//! dh = G·W, dW = Gᵀ·h, db = Σ G) and, under autodiff, Burn's matmul → full
//! logits → xent-burn's loss → backward on the device. Also the peak device
//! memory of both, from cubecl's memory report. On lavapipe in CI; without an
//! adapter these fail unless `XENT_ALLOW_NO_GPU=1`.

mod common;

use std::sync::{Mutex, MutexGuard};

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_cubecl::cubecl::MemoryScope;
use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyOptions, Reduction, Shape, Targets};
use xent_burn::{ChunkSize, CrossEntropyLossConfig, Error, LinearCrossEntropy};

use common::{assert_close, device, values};

/// One test at a time on the shared device, so that the memory test measures
/// its own allocations only.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 data")
}

/// A language-model head: hidden `[rows, features]`, weight `[classes,
/// features]`, bias `[classes]`, targets `[rows]` (every fifth row `-100`).
struct HeadData {
    rows: usize,
    features: usize,
    classes: usize,
    hidden: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    targets: Vec<i64>,
}

impl HeadData {
    fn new(rows: usize, features: usize, classes: usize) -> Self {
        let targets = (0..rows)
            .map(|row| if row % 5 == 2 { -100 } else { (row * 7 % classes) as i64 })
            .collect();
        Self {
            rows,
            features,
            classes,
            hidden: values(rows * features, 11, 1.0),
            weight: values(classes * features, 12, 0.5),
            bias: values(classes, 13, 0.3),
            targets,
        }
    }

    fn tensors(&self, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1>, Tensor<1, Int>) {
        (
            Tensor::from_data(TensorData::new(self.hidden.clone(), [self.rows, self.features]), device),
            Tensor::from_data(
                TensorData::new(self.weight.clone(), [self.classes, self.features]),
                device,
            ),
            Tensor::from_data(TensorData::new(self.bias.clone(), [self.classes]), device),
            Tensor::from_data(TensorData::new(self.targets.clone(), [self.rows]), device),
        )
    }

    /// The unfused composition in f64: loss (`[1]` or per row), dh, dW, db.
    fn reference(&self, options: &CrossEntropyOptions, with_bias: bool) -> [Vec<f64>; 4] {
        let (rows, features, classes) = (self.rows, self.features, self.classes);
        let logits: Vec<f32> = (0..rows * classes)
            .map(|index| {
                let (row, class) = (index / classes, index % classes);
                let dot: f64 = (0..features)
                    .map(|k| f64::from(self.hidden[row * features + k]) * f64::from(self.weight[class * features + k]))
                    .sum();
                (dot + if with_bias { f64::from(self.bias[class]) } else { 0.0 }) as f32
            })
            .collect();
        let reference = cross_entropy_f64(
            &logits,
            Targets::from(&self.targets[..]),
            Shape::new(rows, classes),
            options,
        );
        let gradient = &reference.gradient;
        let hidden_grad = (0..rows * features)
            .map(|index| {
                let (row, k) = (index / features, index % features);
                (0..classes)
                    .map(|class| gradient[row * classes + class] * f64::from(self.weight[class * features + k]))
                    .sum()
            })
            .collect();
        let weight_grad = (0..classes * features)
            .map(|index| {
                let (class, k) = (index / features, index % features);
                (0..rows)
                    .map(|row| gradient[row * classes + class] * f64::from(self.hidden[row * features + k]))
                    .sum()
            })
            .collect();
        let bias_grad = (0..classes)
            .map(|class| (0..rows).map(|row| gradient[row * classes + class]).sum())
            .collect();
        let loss = match options.reduction {
            Reduction::None => reference.row_losses.clone(),
            Reduction::Mean | Reduction::Sum => vec![reference.loss],
        };
        [loss, hidden_grad, weight_grad, bias_grad]
    }
}

/// forward_backward with `chunk` rows per chunk against the f64 reference.
fn check_chunked(data: &HeadData, options: &CrossEntropyOptions, chunk: usize, with_bias: bool) {
    let Some(device) = device() else { return };
    let (hidden, weight, bias, targets) = data.tensors(&device);
    let head = LinearCrossEntropy::new(options.clone()).with_chunk(ChunkSize::Rows(chunk));
    let out = head
        .forward_backward(hidden, weight, with_bias.then_some(bias), targets)
        .expect("chunked head");
    let [loss, hidden_grad, weight_grad, bias_grad] = data.reference(options, with_bias);
    let what = |name: &str| format!("{name} ({:?}, chunk {chunk})", options.reduction);
    assert_close(&what("loss"), &host(out.loss), &loss, 1e-4);
    assert_close(&what("dh"), &host(out.hidden), &hidden_grad, 1e-4);
    assert_close(&what("dW"), &host(out.weight), &weight_grad, 1e-4);
    match out.bias {
        Some(bias) => assert_close(&what("db"), &host(bias), &bias_grad, 1e-4),
        None => assert!(!with_bias, "no bias gradient"),
    }
}

/// 37 rows (prime: no chunk size but 1 and 37 divides it), 16 features, 50 classes.
fn small_head() -> HeadData {
    HeadData::new(37, 16, 50)
}

const CHUNKS: [usize; 5] = [1, 8, 10, 37, 64];

#[test]
fn mean_with_ignored_rows_weights_and_smoothing_matches_the_unfused_composition() {
    let _serial = serial();
    let data = small_head();
    let options = CrossEntropyOptions {
        weight: Some(values(data.classes, 14, 1.0).iter().map(|w| w.abs() + 0.1).collect()),
        label_smoothing: 0.1,
        ..CrossEntropyOptions::default()
    };
    for chunk in CHUNKS {
        check_chunked(&data, &options, chunk, true);
    }
}

#[test]
fn sum_with_z_loss_and_softcap_matches_the_unfused_composition() {
    let _serial = serial();
    let data = small_head();
    let options = CrossEntropyOptions {
        reduction: Reduction::Sum,
        z_loss: 1e-3,
        softcap: Some(2.0),
        ..CrossEntropyOptions::default()
    };
    for chunk in CHUNKS {
        check_chunked(&data, &options, chunk, true);
    }
}

#[test]
fn none_with_weights_and_another_ignore_index_without_bias_matches() {
    let _serial = serial();
    let mut data = small_head();
    // The rows of -100 now target class 7, the ignored one.
    data.targets
        .iter_mut()
        .filter(|target| **target < 0)
        .for_each(|target| *target = 7);
    let options = CrossEntropyOptions {
        reduction: Reduction::None,
        ignore_index: 7, // a real class
        weight: Some(values(data.classes, 15, 2.0).iter().map(|w| w.abs()).collect()),
        ..CrossEntropyOptions::default()
    };
    for chunk in [3, 37] {
        check_chunked(&data, &options, chunk, false);
    }
}

#[test]
fn mean_over_only_ignored_rows_is_nan_as_pytorch() {
    let _serial = serial();
    let mut data = HeadData::new(6, 4, 5);
    data.targets = vec![-100; 6];
    let options = CrossEntropyOptions::default();
    check_chunked(&data, &options, 4, true);
    let [loss, ..] = data.reference(&options, true);
    assert!(loss[0].is_nan(), "the reference's 0/0");
}

/// The autodiff op (`forward` + `backward`) against Burn's matmul → full logits
/// → xent-burn's loss → backward, both on the device.
#[test]
fn autodiff_op_matches_burn_matmul_and_xent_burn_loss() {
    let _serial = serial();
    let Some(device) = device() else { return };
    let device = device.autodiff();
    let data = small_head();
    let weight_values: Vec<f32> = values(data.classes, 16, 1.0).iter().map(|w| w.abs() + 0.2).collect();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let config = CrossEntropyLossConfig::new()
            .with_weight(Some(weight_values.clone()))
            .with_label_smoothing(0.05)
            .with_reduction(reduction);
        let gradients_of = |chunked: bool| {
            let (hidden, weight, bias, targets) = data.tensors(&device);
            let (hidden, weight, bias) = (hidden.require_grad(), weight.require_grad(), bias.require_grad());
            let loss = if chunked {
                let options = CrossEntropyOptions {
                    reduction,
                    weight: Some(weight_values.clone()),
                    label_smoothing: 0.05,
                    ..CrossEntropyOptions::default()
                };
                LinearCrossEntropy::new(options)
                    .with_chunk(ChunkSize::Rows(10))
                    .forward(hidden.clone(), weight.clone(), Some(bias.clone()), targets)
                    .expect("chunked forward")
            } else {
                let logits = hidden.clone().matmul(weight.clone().transpose()) + bias.clone().unsqueeze_dim(0);
                config.init().expect("config").forward(logits, targets)
            };
            // A loss scaled by 3 checks that the upstream scalar reaches the stored gradients.
            let gradients = (loss.clone() * 3.0).backward();
            let grad = |tensor: Tensor<2>| host(tensor.grad(&gradients).expect("gradient"));
            let bias_grad = host(bias.grad(&gradients).expect("bias gradient"));
            (host(loss), grad(hidden), grad(weight), bias_grad)
        };
        let (chunked, unfused) = (gradients_of(true), gradients_of(false));
        let widen = |values: &[f32]| values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        assert_close("loss", &chunked.0, &widen(&unfused.0), 1e-5);
        assert_close("dh", &chunked.1, &widen(&unfused.1), 1e-5);
        assert_close("dW", &chunked.2, &widen(&unfused.2), 1e-5);
        assert_close("db", &chunked.3, &widen(&unfused.3), 1e-5);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let _serial = serial();
    let Some(device) = device() else { return };
    let data = small_head();
    let (hidden, weight, bias, targets) = data.tensors(&device);
    let head = LinearCrossEntropy::new(CrossEntropyOptions::default());
    let wrong_features = Tensor::<2>::zeros([data.classes, data.features + 1], &device);
    let result = head.forward_backward(hidden.clone(), wrong_features, None, targets.clone());
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    let short_bias = Tensor::<1>::zeros([data.classes - 1], &device);
    let result = head.forward_backward(hidden.clone(), weight.clone(), Some(short_bias), targets.clone());
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    let wrong_weights = LinearCrossEntropy::new(CrossEntropyOptions {
        weight: Some(vec![1.0; 3]),
        ..CrossEntropyOptions::default()
    });
    let result = wrong_weights.forward_backward(hidden.clone(), weight.clone(), Some(bias), targets.clone());
    assert!(matches!(result, Err(Error::Xent(_))), "{result:?}");
    let none = LinearCrossEntropy::new(CrossEntropyOptions {
        reduction: Reduction::None,
        ..CrossEntropyOptions::default()
    });
    let autodiff = device.autodiff();
    let (hidden, weight, _, targets) = data.tensors(&autodiff);
    let result = none.forward(hidden.require_grad(), weight, None, targets);
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
}

/// Bytes the device's memory pools reserve now (cubecl's memory report).
fn reserved_bytes(device: &Device) -> u64 {
    let DispatchDevice::Cube(cube) = device.as_dispatch().clone() else {
        panic!("not a cube device");
    };
    cube.client().memory_report(MemoryScope::Device).usage().bytes_reserved
}

/// The pools' reservation grown by `step`, after freeing what they held:
/// cubecl keeps pages reserved until a cleanup, so this is the step's peak.
fn peak_reserved(device: &Device, step: impl FnOnce()) -> u64 {
    device.memory_cleanup();
    let before = reserved_bytes(device);
    step();
    let after = reserved_bytes(device);
    after.saturating_sub(before)
}

#[test]
fn chunked_peak_memory_is_lower_by_the_logits_share() {
    let _serial = serial();
    let Some(device) = device() else { return };
    let (rows, features, classes, chunk) = (512, 64, 32_000, 64);
    let data = HeadData::new(rows, features, classes);
    let options = CrossEntropyOptions::default();
    // The chunked call first: cubecl's adaptive pool sizes its pages after the
    // largest allocation it has served, which the unfused call's logits would set.
    let chunked = peak_reserved(&device, || {
        let (hidden, weight, bias, targets) = data.tensors(&device);
        let head = LinearCrossEntropy::new(options.clone()).with_chunk(ChunkSize::Rows(chunk));
        let out = head
            .forward_backward(hidden, weight, Some(bias), targets)
            .expect("chunked head");
        assert_eq!(host(out.weight).len(), classes * features);
    });
    let unfused = peak_reserved(&device, || {
        let autodiff = device.clone().autodiff();
        let (hidden, weight, bias, targets) = data.tensors(&autodiff);
        let (weight, bias) = (weight.require_grad(), bias.require_grad());
        let logits = hidden.matmul(weight.clone().transpose()) + bias.clone().unsqueeze_dim(0);
        let loss = CrossEntropyLossConfig::new()
            .init()
            .expect("config")
            .forward(logits, targets);
        let gradients = loss.backward();
        let weight_grad = host(weight.grad(&gradients).expect("weight gradient"));
        assert_eq!(weight_grad.len(), classes * features);
    });
    let logits_saved = ((rows - chunk) * classes * 4) as u64;
    println!(
        "peak reserved, N={rows} V={classes} H={features}: unfused {:.1} MB, chunked (chunk {chunk}) {:.1} MB; \
         the logits of N−chunk rows: {:.1} MB",
        unfused as f64 / 1e6,
        chunked as f64 / 1e6,
        logits_saved as f64 / 1e6
    );
    assert!(
        unfused >= chunked + logits_saved * 9 / 10,
        "unfused {unfused} B vs chunked {chunked} B: expected at least {logits_saved} B less"
    );
}
