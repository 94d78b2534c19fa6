//! What the non-finite differentials (`nonfinite_agreement.rs`,
//! `family_nonfinite_agreement.rs`, `sharded.rs`) share: the comparison of one
//! backend's value with another's, and their seed and case-count settings.

/// Logits that a fraction of the entries take: NaN, ±inf, ±1e30, a subnormal,
/// 0 and exp's overflow and underflow edges.
pub const LOGIT_SPECIALS: [f32; 9] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e30,
    -1e30,
    1e-40,
    0.0,
    88.0,
    -104.0,
];

/// NaN only against NaN, an infinity only against itself, else within
/// `tolerance` relative (and as much absolute).
pub fn agrees(actual: f32, expected: f32, tolerance: f32) -> bool {
    if actual.is_nan() || expected.is_nan() {
        return actual.is_nan() && expected.is_nan();
    }
    if actual.is_infinite() || expected.is_infinite() {
        return actual == expected;
    }
    (actual - expected).abs() <= tolerance * (1.0 + actual.abs().max(expected.abs()))
}

/// The environment variable `name` parsed, else `default` (a seed or a number of cases).
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Fails with every disagreement found, one per line.
pub fn assert_no_disagreements(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
