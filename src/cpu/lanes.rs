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
