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
#[cfg(test)]
const OVERFLOW_ABOVE: f32 = 88.722_83;

/// Near-minimax coefficients of `(e^r - 1 - r) / r^2` on `|r| <= ln(2) / 2`,
/// lowest degree first (`POLY[k]` multiplies `r^k`): fitted for the relative
/// error of `1 + r + r^2 * poly(r)`, which is 3.1e-9 in exact arithmetic.
const POLY: [f32; 5] = [
    4.999_999_4e-1,
    1.666_652_1e-1,
    4.166_839e-2,
    8.368_71e-3,
    1.381_461_2e-3,
];

/// `e^x` in f32, branch-free so that loops over slices auto-vectorise.
///
/// Relative error ≤ 2e-7 on `[-87, 88]` (tested against `f64::exp`). Edge cases:
/// `x < -87.33` gives exactly `0.0` (so do `x <= -104` and `-inf`), `x > 88.72283`
/// gives `+inf` (so does `+inf`), and NaN gives NaN.
#[cfg(test)]
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_f32_with::<false>(x)
}

/// `a * b + c`, fused (one rounding) when `FUSED`, else a separate multiply and add.
///
/// `FUSED = true` must only be used in code compiled with the `fma` target
/// feature: elsewhere `f32::mul_add` is a (correct but slow) libm call.
#[inline(always)]
pub(crate) fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// [`exp_f32`], with its multiply-adds fused when `FUSED` (see [`mul_add`]).
/// Same accuracy and edge cases either way; results may differ in the last bit.
#[cfg(test)]
#[inline(always)]
pub(crate) fn exp_f32_with<const FUSED: bool>(x: f32) -> f32 {
    let result = exp_f32_no_overflow_with::<FUSED>(x);
    if x > OVERFLOW_ABOVE { f32::INFINITY } else { result }
}

/// [`exp_f32_with`] for inputs that cannot overflow: `x <= 88.72283` or NaN,
/// such as `x - row_max` in a softmax. It saves the overflow select, which is a
/// few percent of the cost; larger inputs give garbage.
#[inline(always)]
pub(crate) fn exp_f32_no_overflow_with<const FUSED: bool>(x: f32) -> f32 {
    // Inputs below UNDERFLOW_BELOW (and NaN) go through the arithmetic below as
    // well, producing garbage that the selects at the end replace; all integer
    // operations wrap, so nothing can panic on the way.

    // x = n * ln2 + r with n = round(x / ln2), |r| <= ln2 / 2. The first step is
    // exact (n * LN2_HI is exact, and so is the cancellation), fused or not.
    let shifted = mul_add::<FUSED>(x, LOG2_E, ROUND_MAGIC);
    let n = shifted - ROUND_MAGIC;
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = mul_add::<FUSED>(-n, LN2_HI, x);
    let r = mul_add::<FUSED>(-n, LN2_LO, r);

    // e^r = 1 + r + r^2 * poly(r), in [0.707, 1.415]; poly by Estrin's scheme
    // (shorter dependency chains than Horner's, so more vector lanes in flight).
    let [p0, p1, p2, p3, p4] = POLY;
    let r2 = r * r;
    let r4 = r2 * r2;
    let low = mul_add::<FUSED>(p1, r, p0);
    let middle = mul_add::<FUSED>(p3, r, p2);
    let poly = mul_add::<FUSED>(r4, p4, mul_add::<FUSED>(r2, middle, low));
    let exp_r = mul_add::<FUSED>(r2, poly, r) + 1.0;

    // e^x = e^r * 2^n: add n to the exponent field of e^r. For the inputs that
    // reach this value unchanged (x in [-87.33, 88.72283]) the result is a normal
    // float: n >= -126 comes with r > 0 (so e^r >= 1, exponent 127), and n = 128
    // comes with r < 0 (so e^r < 1, exponent 126).
    let scaled_bits = (exp_r.to_bits() as i32).wrapping_add(n_bits.wrapping_shl(23));
    let scaled = f32::from_bits(scaled_bits as u32);

    let result = if x < UNDERFLOW_BELOW { 0.0 } else { scaled };
    // The exponent-field addition can turn NaN bits into a number: restore NaN.
    if x.is_nan() { x } else { result }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Exp = fn(f32) -> f32;

    /// The full-range builds of the exponential: plain and with fused multiply-adds.
    const FULL_RANGE: [(&str, Exp); 2] = [("plain", exp_f32), ("fused", exp_f32_with::<true>)];

    /// Every build, including the ones only valid up to `OVERFLOW_ABOVE`.
    const ALL: [(&str, Exp); 4] = [
        ("plain", exp_f32),
        ("fused", exp_f32_with::<true>),
        ("plain no-overflow", exp_f32_no_overflow_with::<false>),
        ("fused no-overflow", exp_f32_no_overflow_with::<true>),
    ];

    fn relative_error(exp: Exp, x: f32) -> f64 {
        let exact = f64::from(x).exp();
        (f64::from(exp(x)) - exact).abs() / exact
    }

    #[test]
    fn dense_sweep_relative_error() {
        let (low, high) = (-87.0f32, 88.0f32);
        let steps = 500_000;
        for (name, exp) in ALL {
            let mut worst = (0.0f64, 0.0f32);
            for i in 0..=steps {
                let x = low + (high - low) * (i as f32 / steps as f32);
                let error = relative_error(exp, x);
                if error > worst.0 {
                    worst = (error, x);
                }
            }
            let (error, x) = worst;
            println!("exp_f32 ({name}) max relative error {error:e} at x = {x}");
            assert!(error <= 2e-7, "{name}: max relative error {error:e} at x = {x}");
        }
    }

    #[test]
    fn floats_near_zero() {
        // f32s in [-1, 1], with a coarse stride over the bit patterns.
        for (name, exp) in ALL {
            let mut worst = 0.0f64;
            for bits in (0u32..0x3f80_0000).step_by(409) {
                let x = f32::from_bits(bits);
                worst = worst.max(relative_error(exp, x)).max(relative_error(exp, -x));
            }
            assert!(worst <= 2e-7, "{name}: max relative error {worst:e}");
        }
    }

    #[test]
    fn exact_and_special_values() {
        for (name, exp) in ALL {
            assert_eq!(exp(0.0), 1.0, "{name}");
            assert_eq!(exp(-0.0), 1.0, "{name}");
            for x in [f32::NEG_INFINITY, f32::MIN, -1e30, -104.0, -87.5, -87.331] {
                assert_eq!(exp(x).to_bits(), 0, "{name}: exp({x})");
            }
            assert!(exp(f32::NAN).is_nan(), "{name}");
            assert!(exp(-f32::NAN).is_nan(), "{name}");
        }
        for (name, exp) in FULL_RANGE {
            for x in [f32::INFINITY, f32::MAX, 1e30, 88.8] {
                assert_eq!(exp(x), f32::INFINITY, "{name}: exp({x})");
            }
        }
    }

    #[test]
    fn range_ends_are_normal_and_accurate() {
        for (name, exp) in ALL {
            // Just inside the underflow threshold the result is a normal float.
            assert!(exp(UNDERFLOW_BELOW).is_normal(), "{name}");
            assert!(relative_error(exp, UNDERFLOW_BELOW) <= 2e-7, "{name}");
            // The largest finite input gives a finite, accurate result near f32::MAX.
            let high = exp(OVERFLOW_ABOVE);
            assert!(high.is_finite() && high > 3.0e38, "{name}: {high}");
            assert!(relative_error(exp, OVERFLOW_ABOVE) <= 2e-7, "{name}");
            // Every input between the two thresholds is finite and positive.
            for i in 0..=100_000 {
                let x = UNDERFLOW_BELOW + (OVERFLOW_ABOVE - UNDERFLOW_BELOW) * (i as f32 / 1e5);
                let y = exp(x);
                assert!(y.is_finite() && y > 0.0, "{name}: exp({x}) = {y}");
            }
        }
        // The next float up overflows, as the exact value does.
        let above = f32::from_bits(OVERFLOW_ABOVE.to_bits() + 1);
        assert!(f64::from(above).exp() > f64::from(f32::MAX));
        for (name, exp) in FULL_RANGE {
            assert_eq!(exp(above), f32::INFINITY, "{name}");
        }
    }
}
