//! What the xent-burn test binaries share: Burn's wgpu device with an xent
//! context on it, and deterministic inputs.

use std::sync::OnceLock;

use burn::tensor::Device;

/// Burn's wgpu device with an xent context on it, or `None` when
/// `XENT_ALLOW_NO_GPU=1` and none exists.
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

/// Asserts `actual` is within `tolerance × (1 + |expected|)` of `expected`
/// element by element (NaN where NaN is expected).
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
