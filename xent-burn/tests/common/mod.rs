//! What the xent-burn tests share: Burn's wgpu device with an xent context,
//! deterministic values, host copies, comparisons and where a tensor lies.

#![allow(dead_code)] // each test binary uses a part

use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::tensor::CubeTensor;
use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyOptions, Reduction, Shape, Targets};
use xent_burn::CrossEntropyLossConfig;

/// Burn's wgpu device with an xent context on it (one per process: Burn's
/// runtime starts once), or `None` when `XENT_ALLOW_NO_GPU=1` and none exists.
pub fn device() -> Option<Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match xent_burn::init_wgpu() {
            Ok(device) => Some(device),
            Err(error) if std::env::var("XENT_ALLOW_NO_GPU").is_ok_and(|value| value == "1") => {
                eprintln!("XENT_ALLOW_NO_GPU=1: skipping ({error})");
                None
            }
            Err(error) => panic!("no wgpu adapter for Burn ({error}); set XENT_ALLOW_NO_GPU=1 to skip"),
        })
        .clone()
}

/// Deterministic values in [-scale, scale).
pub fn values(count: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The values of an f32 tensor of any rank, on the host.
pub fn host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 data")
}

/// Checks `actual` against `expected` elementwise, to `tolerance` relative to 1 + |expected| (NaN where NaN is expected).
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        let error = (f64::from(*a) - e).abs();
        assert!(
            error <= tolerance * (1.0 + e.abs()) || (a.is_nan() && e.is_nan()),
            "{what}[{index}]: {a} vs {e} (|diff| {error:e})"
        );
    }
}

pub fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&value| f64::from(value)).collect()
}

/// Where a (non-autodiff) float tensor's storage lies: its wgpu buffer and
/// byte offset in it, through cubecl's compute client.
pub fn storage_of<const D: usize>(tensor: &Tensor<D>) -> (wgpu::Buffer, u64) {
    cube_storage(
        &tensor
            .clone()
            .try_into_primitive::<CubeBackend>()
            .expect("a cube tensor"),
    )
}

/// [`storage_of`] for integer tensors.
pub fn int_storage_of(tensor: &Tensor<1, Int>) -> (wgpu::Buffer, u64) {
    cube_storage(
        &tensor
            .clone()
            .try_into_primitive::<CubeBackend>()
            .expect("a cube tensor"),
    )
}

fn cube_storage(primitive: &CubeTensor) -> (wgpu::Buffer, u64) {
    let managed = primitive
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(primitive.handle.clone())
        .expect("the tensor's storage");
    let resource = managed.resource();
    (resource.buffer.clone(), resource.offset)
}

/// xent's f64 truth for `config` on `logits`/`targets`: the per-row or reduced
/// loss, and the gradient with each row multiplied by its `upstream` value (one
/// value for all rows, or one per row).
pub fn reference(
    config: &CrossEntropyLossConfig,
    shape: Shape,
    logits: &[f32],
    targets: &[i64],
    upstream: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let options = CrossEntropyOptions {
        reduction: config.reduction,
        ignore_index: config.ignore_index,
        weight: config.weight.clone(),
        label_smoothing: config.label_smoothing,
        z_loss: config.z_loss,
        softcap: config.softcap,
        ..CrossEntropyOptions::default()
    };
    let reference = cross_entropy_f64(logits, Targets::from(targets), shape, &options);
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
