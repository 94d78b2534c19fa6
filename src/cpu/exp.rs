//! A branch-free, vectorisable f32 exponential.
//!
//! [`exp_f32`] uses only arithmetic, bit casts and selects, so LLVM can
//! auto-vectorise a loop that calls it over a slice (no libm call, no branches).

/// `log2(e)`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// High part of the Cody–Waite split of `ln 2`: only 9 significant bits, so
/// `n * LN2_HI` is exact for every `|n| < 2^15`.
const LN2_HI: f32 = 0.693_359_4;
/// Low part of the Cody–Waite split: `LN2_HI + LN2_LO ≈ ln 2` to ~1e-12.
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding it to a float of magnitude `< 2^22` rounds that float to
/// the nearest integer, which then sits in the low mantissa bits of the sum.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Below this, `e^x` is below the smallest normal f32 (`e^-87.3365`); the result
/// is flushed to exactly `0.0` (no denormals, which are slow on x86).
const UNDERFLOW_BELOW: f32 = -87.33;
/// Largest f32 whose exponential is finite (`ln(f32::MAX) = 88.7228391...`);
/// anything above gives `+inf`.
const OVERFLOW_ABOVE: f32 = 88.722_83;

/// Minimax coefficients (Cephes `expf`) of `(e^r - 1 - r) / r^2` on
/// `|r| <= ln(2) / 2`, highest degree first.
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

/// `e^x` in f32, branch-free so that loops over slices auto-vectorise.
///
/// Relative error ≤ 2e-7 on `[-87, 88]` (tested against `f64::exp`). Edge cases:
/// `x < -87.33` gives exactly `0.0` (so do `x <= -104` and `-inf`), `x > 88.72283`
/// gives `+inf` (so does `+inf`), and NaN gives NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Keep the reduction in range (so the integer arithmetic below stays small);
    // out-of-range inputs are overridden by the selects at the end. Written as
    // selects that let NaN through.
    let clamped = if x < -100.0 { -100.0 } else { x };
    let clamped = if clamped > 100.0 { 100.0 } else { clamped };

    // x = n * ln2 + r with n = round(x / ln2), |r| <= ln2 / 2.
    let shifted = clamped * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (clamped - n * LN2_HI) - n * LN2_LO;

    // e^r = 1 + r + r^2 * poly(r), in [0.707, 1.415].
    let poly = POLY[1..].iter().fold(POLY[0], |acc, &c| acc * r + c);
    let exp_r = (r * r * poly + r) + 1.0;

    // e^x = e^r * 2^n: add n to the exponent field of e^r. For the inputs that
    // reach this value unchanged (x in [-87.33, 88.72283]) the result is a normal
    // float: n >= -126 comes with r > 0 (so e^r >= 1, exponent 127), and n = 128
    // comes with r < 0 (so e^r < 1, exponent 126).
    let scaled_bits = (exp_r.to_bits() as i32).wrapping_add(n_bits.wrapping_shl(23));
    let scaled = f32::from_bits(scaled_bits as u32);

    let result = if x < UNDERFLOW_BELOW { 0.0 } else { scaled };
    let result = if x > OVERFLOW_ABOVE { f32::INFINITY } else { result };
    // The exponent-field addition can turn NaN bits into a number: restore NaN.
    if x.is_nan() { x } else { result }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(x: f32) -> f64 {
        let exact = f64::from(x).exp();
        (f64::from(exp_f32(x)) - exact).abs() / exact
    }

    #[test]
    fn dense_sweep_relative_error() {
        let (low, high) = (-87.0f32, 88.0f32);
        let steps = 2_000_000;
        let mut worst = (0.0f64, 0.0f32);
        for i in 0..=steps {
            let x = low + (high - low) * (i as f32 / steps as f32);
            let error = relative_error(x);
            if error > worst.0 {
                worst = (error, x);
            }
        }
        println!("exp_f32 max relative error {:e} at x = {}", worst.0, worst.1);
        assert!(worst.0 <= 2e-7, "max relative error {:e} at x = {}", worst.0, worst.1);
    }

    #[test]
    fn every_float_near_zero() {
        // Every f32 in [-1, 1] with a coarse stride over the bit patterns.
        let mut worst = 0.0f64;
        for bits in (0u32..0x3f80_0000).step_by(97) {
            let x = f32::from_bits(bits);
            worst = worst.max(relative_error(x)).max(relative_error(-x));
        }
        assert!(worst <= 2e-7, "max relative error {worst:e}");
    }

    #[test]
    fn exact_and_special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-104.0), 0.0);
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(88.8), f32::INFINITY);
        assert_eq!(exp_f32(1e30), f32::INFINITY);
        assert_eq!(exp_f32(f32::MAX), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-f32::NAN).is_nan());
    }

    #[test]
    fn range_ends_are_normal_and_accurate() {
        // Just inside the underflow threshold the result is a normal float.
        let low = exp_f32(UNDERFLOW_BELOW);
        assert!(low.is_normal());
        assert!(relative_error(UNDERFLOW_BELOW) <= 2e-7);
        // The largest finite input gives a finite, accurate result near f32::MAX.
        let high = exp_f32(OVERFLOW_ABOVE);
        assert!(high.is_finite() && high > 3.0e38, "{high}");
        assert!(relative_error(OVERFLOW_ABOVE) <= 2e-7);
        // The next float up overflows, as the exact value does.
        let next = f32::from_bits(OVERFLOW_ABOVE.to_bits() + 1);
        assert!(f64::from(next).exp() > f64::from(f32::MAX));
        assert_eq!(exp_f32(next), f32::INFINITY);
        // Every input between the two thresholds is finite and non-negative.
        for i in 0..=100_000 {
            let x = UNDERFLOW_BELOW + (OVERFLOW_ABOVE - UNDERFLOW_BELOW) * (i as f32 / 1e5);
            let y = exp_f32(x);
            assert!(y.is_finite() && y > 0.0, "exp_f32({x}) = {y}");
        }
    }
}
