//! The lane-level building blocks both cross-entropy row loops share: the lane
//! and block widths, folds over [`LANES`] explicit lanes (max, min, sums), the
//! masked term of the softmax denominator, and the prefetch that brings the next
//! row into cache.
//!
//! Everything here is `#[inline(always)]`, so that it is compiled anew inside
//! each target-feature build of the loops that call it (see [`super::isa`]).

/// Width of the explicit accumulator lanes (two AVX registers of f32).
pub(crate) const LANES: usize = 16;

/// Logits per pass-2/pass-3 block: the exponentials of a block are computed in
/// one elementwise loop (which vectorises at full width), then summed from L1.
pub(crate) const BLOCK: usize = 256;

/// Folds `values` over [`LANES`] lanes with `pick`, then the lanes pairwise
/// ([`fold_lanes`]), then the tail.
#[inline(always)]
pub(crate) fn fold_values(values: &[f32], init: f32, pick: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = pick(*lane, x);
        }
    }
    tail.iter().fold(fold_lanes(lanes, pick), |acc, &x| pick(acc, x))
}

/// Combines the lanes pairwise (a tree of depth log2(LANES), not a serial chain
/// of LANES - 1 dependent operations, which matters for short rows).
#[inline(always)]
pub(crate) fn fold_lanes<T: Copy>(mut lanes: [T; LANES], combine: impl Fn(T, T) -> T) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] = combine(lanes[i], lanes[i + width]);
        }
    }
    lanes[0]
}

/// `max(acc, x)` that keeps `acc` when `x` is NaN; a plain select, so it maps
/// onto one vector max instruction.
#[inline(always)]
pub(crate) fn larger(acc: f32, x: f32) -> f32 {
    if x > acc { x } else { acc }
}

/// `min(acc, x)` that keeps `acc` when `x` is NaN.
#[inline(always)]
pub(crate) fn smaller(acc: f32, x: f32) -> f32 {
    if x < acc { x } else { acc }
}

/// `lanes[i % LANES] += term(a[i], b[i])` over the block, in [`LANES`]-wide chunks.
#[inline(always)]
pub(crate) fn accumulate(lanes: &mut [f64; LANES], a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f64 + Copy) {
    let local = lanes;
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a_chunk, b_chunk) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in local.iter_mut().zip(a_chunk).zip(b_chunk) {
            *lane += term(x, y);
        }
    }
    for ((lane, &x), &y) in local.iter_mut().zip(a_tail).zip(b_tail) {
        *lane += term(x, y);
    }
}

/// The contribution of logit `x` (with `exp_x = exp(x - extreme)`, `extreme`
/// the logit of the row's largest transformed value) to the softmax
/// denominator's `rest`: none for an extreme logit (its exponential is exactly
/// 1; it is counted instead).
///
/// Written as a bit mask rather than an `if`: with an `if`, LLVM makes the load
/// of `exp_x` conditional and turns the loop into branches. A NaN logit is
/// never extreme and passes its NaN through.
#[inline(always)]
pub(crate) fn rest_term(x: f32, extreme: f32, exp_x: f32) -> f32 {
    let keep_bits = 0u32.wrapping_sub(u32::from(x != extreme));
    f32::from_bits(exp_x.to_bits() & keep_bits)
}

/// `lanes[i % LANES] += rest_term(xs[i], extreme, exps[i])` over a block (each
/// lane's terms added in the order of `i`), the softmax denominator's `rest`.
///
/// With explicit vector instructions of the build's width (`VECTOR` of
/// [`x86_builds`](crate::cpu::isa::x86_builds)): AVX-512 as one 16-lane
/// accumulator with masked loads, AVX2 as two 8-lane ones, the portable build
/// as plain code. Left to LLVM's SLP vectoriser, the same lane loop came out
/// 4-wide in some builds of the crate and 16-wide in others, depending on
/// unrelated code elsewhere (the fused CPU loss + gradient up to 1.5x slower).
/// Every build adds the same terms in the same order per lane, so the AVX2 and
/// AVX-512 builds (the same fused exponential) give the same bits.
#[inline(always)]
pub(crate) fn add_rest_terms<const VECTOR: usize>(lanes: &mut [f32; LANES], xs: &[f32], extreme: f32, exps: &[f32]) {
    debug_assert_eq!(xs.len(), exps.len());
    let (x_chunks, x_tail) = xs.as_chunks::<LANES>();
    let (e_chunks, e_tail) = exps.as_chunks::<LANES>();
    match VECTOR {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VECTOR is AVX512_VECTOR only in the AVX-512 build (x86_builds),
        // which runs only on CPUs with AVX-512 F.
        crate::cpu::isa::AVX512_VECTOR => unsafe { add_rest_chunks_avx512(lanes, x_chunks, extreme, e_chunks) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VECTOR is AVX2_VECTOR only in the AVX2 build, which runs only on CPUs with AVX2.
        crate::cpu::isa::AVX2_VECTOR => unsafe { add_rest_chunks_avx2(lanes, x_chunks, extreme, e_chunks) },
        _ => {
            for (x_chunk, e_chunk) in x_chunks.iter().zip(e_chunks) {
                for lane in 0..LANES {
                    lanes[lane] += rest_term(x_chunk[lane], extreme, e_chunk[lane]);
                }
            }
        }
    }
    for ((lane, &x), &e) in lanes.iter_mut().zip(x_tail).zip(e_tail) {
        *lane += rest_term(x, extreme, e);
    }
}

/// `sums[lane] += f64::from(block[lane])` for every lane, in explicit vector
/// instructions of the build's width like [`add_rest_terms`] (left to LLVM, the
/// widening adds came out as scalar adds with shuffles in some builds). The
/// conversion is exact and each lane is one add, so every build gives the same bits.
#[inline(always)]
pub(crate) fn add_widened<const VECTOR: usize>(sums: &mut [f64; LANES], block: &[f32; LANES]) {
    match VECTOR {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VECTOR is AVX512_VECTOR only in the AVX-512 build (x86_builds),
        // which runs only on CPUs with AVX-512 F.
        crate::cpu::isa::AVX512_VECTOR => unsafe { add_widened_avx512(sums, block) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: VECTOR is AVX2_VECTOR only in the AVX2 build, which runs only on CPUs with AVX2.
        crate::cpu::isa::AVX2_VECTOR => unsafe { add_widened_avx2(sums, block) },
        _ => {
            for (sum, &value) in sums.iter_mut().zip(block) {
                *sum += f64::from(value);
            }
        }
    }
}

/// [`add_widened`] in two 8-lane AVX-512 f64 vectors.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_widened_avx512(sums: &mut [f64; LANES], block: &[f32; LANES]) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm512_add_pd, _mm512_cvtps_pd, _mm512_loadu_pd, _mm512_storeu_pd};
    const HALF: usize = LANES / 2;
    // SAFETY: the caller guarantees AVX-512 F; every pointer is to 8 values in bounds.
    unsafe {
        for half in [0, HALF] {
            let widened = _mm512_cvtps_pd(_mm256_loadu_ps(block[half..].as_ptr()));
            let sum = _mm512_add_pd(_mm512_loadu_pd(sums[half..].as_ptr()), widened);
            _mm512_storeu_pd(sums[half..].as_mut_ptr(), sum);
        }
    }
}

/// [`add_widened`] in four 4-lane AVX f64 vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_widened_avx2(sums: &mut [f64; LANES], block: &[f32; LANES]) {
    use std::arch::x86_64::{_mm_loadu_ps, _mm256_add_pd, _mm256_cvtps_pd, _mm256_loadu_pd, _mm256_storeu_pd};
    const QUARTER: usize = LANES / 4;
    // SAFETY: the caller guarantees AVX2; every pointer is to 4 values in bounds.
    unsafe {
        for quarter in [0, QUARTER, 2 * QUARTER, 3 * QUARTER] {
            let widened = _mm256_cvtps_pd(_mm_loadu_ps(block[quarter..].as_ptr()));
            let sum = _mm256_add_pd(_mm256_loadu_pd(sums[quarter..].as_ptr()), widened);
            _mm256_storeu_pd(sums[quarter..].as_mut_ptr(), sum);
        }
    }
}

/// [`add_rest_terms`]' whole chunks in one 16-lane AVX-512 accumulator: the
/// exponentials of logits equal to `extreme` load as 0 (a masked load).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_rest_chunks_avx512(
    lanes: &mut [f32; LANES],
    x_chunks: &[[f32; LANES]],
    extreme: f32,
    e_chunks: &[[f32; LANES]],
) {
    use std::arch::x86_64::{
        _CMP_NEQ_UQ, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
        _mm512_storeu_ps,
    };
    // SAFETY: the caller guarantees AVX-512 F; every pointer is to 16 f32 in bounds.
    unsafe {
        let extreme = _mm512_set1_ps(extreme);
        let mut sum = _mm512_loadu_ps(lanes.as_ptr());
        for (x_chunk, e_chunk) in x_chunks.iter().zip(e_chunks) {
            // Kept: x != extreme, or x NaN (whose NaN exponential poisons the sum).
            let kept = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(_mm512_loadu_ps(x_chunk.as_ptr()), extreme);
            sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(kept, e_chunk.as_ptr()));
        }
        _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
    }
}

/// [`add_rest_terms`]' whole chunks in two 8-lane AVX accumulators (lanes 0–7
/// and 8–15): the exponentials of logits equal to `extreme` masked to 0.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_rest_chunks_avx2(
    lanes: &mut [f32; LANES],
    x_chunks: &[[f32; LANES]],
    extreme: f32,
    e_chunks: &[[f32; LANES]],
) {
    use std::arch::x86_64::{
        _CMP_NEQ_UQ, _mm256_add_ps, _mm256_and_ps, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };
    const HALF: usize = LANES / 2;
    // SAFETY: the caller guarantees AVX2; every pointer is to 8 f32 in bounds.
    unsafe {
        let extreme = _mm256_set1_ps(extreme);
        let mut low = _mm256_loadu_ps(lanes.as_ptr());
        let mut high = _mm256_loadu_ps(lanes[HALF..].as_ptr());
        for (x_chunk, e_chunk) in x_chunks.iter().zip(e_chunks) {
            let kept_low = _mm256_cmp_ps::<_CMP_NEQ_UQ>(_mm256_loadu_ps(x_chunk.as_ptr()), extreme);
            let kept_high = _mm256_cmp_ps::<_CMP_NEQ_UQ>(_mm256_loadu_ps(x_chunk[HALF..].as_ptr()), extreme);
            low = _mm256_add_ps(low, _mm256_and_ps(kept_low, _mm256_loadu_ps(e_chunk.as_ptr())));
            high = _mm256_add_ps(
                high,
                _mm256_and_ps(kept_high, _mm256_loadu_ps(e_chunk[HALF..].as_ptr())),
            );
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), low);
        _mm256_storeu_ps(lanes[HALF..].as_mut_ptr(), high);
    }
}

/// f32 values per 64-byte cache line.
const CACHE_LINE_F32S: usize = 16;

/// Asks the CPU to start loading `values` into cache; only a hint (a no-op on
/// targets other than x86-64).
#[inline(always)]
pub(crate) fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(CACHE_LINE_F32S) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch only hints the cache; it never faults or changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}
