//! Trains a linear classifier end to end on Burn's wgpu runtime with xent's
//! fused cross-entropy as the loss, and prints the loss falling.
//!
//! ```text
//! cargo run --release -p xent-burn --example train
//! ```
//!
//! The data: 512 points in 32 dimensions, labelled by the argmax of a hidden
//! random 32 → 10 map, so a linear model can learn them.

use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor};
use xent_burn::CrossEntropyLossConfig;

const ROWS: usize = 512;
const FEATURES: usize = 32;
const CLASSES: usize = 10;

fn main() -> Result<(), xent_burn::Error> {
    // Burn's wgpu runtime, an xent context on its device and queue, and autodiff.
    let device = xent_burn::init_wgpu()?.autodiff();
    device.seed(7);

    let inputs = Tensor::<2>::random([ROWS, FEATURES], Distribution::Normal(0.0, 1.0), &device);
    let teacher = Tensor::<2>::random([FEATURES, CLASSES], Distribution::Normal(0.0, 1.0), &device);
    let targets: Tensor<1, Int> = inputs.clone().matmul(teacher).argmax(1).squeeze_dim(1);

    let mut model: Linear = LinearConfig::new(FEATURES, CLASSES).init(&device);
    let mut optimizer = SgdConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().with_label_smoothing(0.05).init()?;

    let mut losses = Vec::new();
    for step in 0..=60 {
        let logits = model.forward(inputs.clone());
        let loss = loss_fn.try_forward(logits, targets.clone())?;
        let value = loss.clone().into_scalar::<f32>();
        losses.push(value);
        if step % 10 == 0 {
            println!("step {step:>3}: loss {value:.4}");
        }
        let gradients = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.5, model, gradients);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    println!("loss {first:.4} -> {last:.4}");
    Ok(())
}
