//! f64 scalar functions of the cross-entropy row loops that libm would make
//! slow: [`tanh_f64`] for the softcap and [`ln_1p`] for the log of a confident
//! row's softmax denominator. Both are branch-free or nearly so, and
//! `#[inline(always)]`, so that they vectorise inside each build of the loops.
//! (The f32 exponential has its own file, [`super::exp`].)

/// `tanh(u)` in f64, branch-free so that the softcap loop vectorises (libm's
/// `tanh` is a call per logit, several times slower): `1 − 2/(e^{2u} + 1)`, with
/// `e^{2u}` from a Cody–Waite reduction and a degree-13 Taylor polynomial
/// (truncation error < 1e-17, evaluated by Estrin's scheme), and the reciprocal from an f32 division refined
/// by two Newton steps (an f64 division is the slowest step otherwise).
///
/// Absolute error < 1e-15, and relative error < 1e-12 (below `|u| = 1e-3` the
/// Taylor series, as `tanh(u) ≈ u` would otherwise come out of a difference: a
/// softcap `t` far above the logits needs `t·tanh(x/t) ≈ x`). `|u| ≥ 20` gives ±1 exactly; NaN gives NaN. Multiply-adds are
/// fused when `FUSED` (see [`mul_add`](super::exp::mul_add)).
#[inline(always)]
pub(crate) fn tanh_f64<const FUSED: bool>(u: f64) -> f64 {
    /// Beyond this, `2/(e^{2u} + 1)` is below half an ulp of 1.
    const SATURATED: f64 = 20.0;
    /// Below this, the odd Taylor series to `u⁷`.
    const SERIES_BELOW: f64 = 1e-3;
    /// `1.5·2^52`: adding it rounds a float of magnitude `< 2^51` to an integer.
    const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
    /// `ln 2` split so that `n·LN2_HI` is exact for `|n| < 2^20`.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    /// `1/k!` for k = 2..=13.
    const INVERSE_FACTORIALS: [f64; 12] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    // Selects, not min/max, so that NaN passes through (and is restored below).
    let clamped = if u > SATURATED { SATURATED } else { u };
    let clamped = if clamped < -SATURATED { -SATURATED } else { clamped };
    // e^v with v = 2u = n·ln 2 + r, |r| ≤ ln 2 / 2, |n| ≤ 58.
    let v = 2.0 * clamped;
    let shifted = mul_add_f64::<FUSED>(v, std::f64::consts::LOG2_E, ROUND_MAGIC);
    let n = shifted - ROUND_MAGIC;
    let n_bits = (shifted.to_bits() as i64).wrapping_sub(ROUND_MAGIC.to_bits() as i64);
    let r = mul_add_f64::<FUSED>(-n, LN2_LO, mul_add_f64::<FUSED>(-n, LN2_HI, v));
    // Σ_k r^k/(k+2)! by Estrin's scheme: a dependency chain of 5 multiply-adds, not 11.
    let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11] = INVERSE_FACTORIALS;
    let fma = mul_add_f64::<FUSED>;
    let (r2, r4) = (r * r, r * r * (r * r));
    let low = fma(fma(c3, r, c2), r2, fma(c1, r, c0));
    let middle = fma(fma(c7, r, c6), r2, fma(c5, r, c4));
    let high = fma(fma(c11, r, c10), r2, fma(c9, r, c8));
    let poly = fma(fma(high, r4, middle), r4, low);
    let exp_r = fma(r2, poly, r) + 1.0;
    let exp_v = f64::from_bits((exp_r.to_bits() as i64).wrapping_add(n_bits.wrapping_shl(52)) as u64);
    // q = 1/(e^v + 1) in [1/(e^40 + 1), 1): f32 first (relative error 6e-8),
    // then q ← q·(2 − a·q) squares the error twice (below f64 rounding).
    let denominator = exp_v + 1.0;
    let mut reciprocal = f64::from(1.0 / denominator as f32);
    for _ in 0..2 {
        reciprocal *= mul_add_f64::<FUSED>(-denominator, reciprocal, 2.0);
    }
    let result = mul_add_f64::<FUSED>(-2.0, reciprocal, 1.0);
    // Near 0 the difference above has no relative accuracy (u = 1e-20 gives 0), and
    // a softcap t far above the logits multiplies that error by t: there the Taylor
    // series u − u³/3 + 2u⁵/15 − 17u⁷/315, whose truncation is below 1e-25 relative.
    let z = u * u;
    let series = mul_add_f64::<FUSED>(
        u * z,
        mul_add_f64::<FUSED>(z, mul_add_f64::<FUSED>(z, -17.0 / 315.0, 2.0 / 15.0), -1.0 / 3.0),
        u,
    );
    let result = if u.abs() < SERIES_BELOW { series } else { result };
    if u.is_nan() { u } else { result }
}

/// `a·b + c` in f64, fused (one rounding) when `FUSED`; see [`mul_add`](super::exp::mul_add).
#[inline(always)]
fn mul_add_f64<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// `ln(1 + x)` for finite `x >= 0` (or NaN), accurate to a few f64 ulps, via `ln`:
/// several times faster than libm's `log1p`, which dominates rows of a few
/// classes.
///
/// Kahan's trick: with `u = 1 + x` rounded, `ln(u) * x / (u - 1)` corrects the
/// rounding of `u` to first order, since `ln(u) / (u - 1)` varies slowly (≈ 1).
#[inline(always)]
pub(crate) fn ln_1p(x: f64) -> f64 {
    let u = 1.0 + x;
    if u == 1.0 { x } else { u.ln() * (x / (u - 1.0)) }
}

#[cfg(test)]
mod tests;
