//! Hands the CPU row loops f32 slices whatever the caller's storage, one task
//! (a few hundred KiB of whole rows) at a time, so that no call allocates or
//! converts a whole N×C array:
//!
//! - f32 logits with a separate f32 gradient are passed straight through;
//! - 16-bit logits are widened into a per-thread buffer, their gradient computed
//!   into a second one and rounded (to nearest even) into the caller's slice —
//!   both buffers are task-sized, so they stay in cache between the conversion
//!   and the row loop;
//! - in place, the task's logits are staged the same way (copied for f32) before
//!   the gradient overwrites them. Tasks are disjoint spans, so this is exact.

use std::cell::RefCell;

use crate::input::{Logits, LogitsMut};
use crate::loss::HostLogits;

thread_local! {
    /// The staged logits and gradient of this thread's current task (their
    /// length only grows, so a worker thread allocates them once).
    static STAGING: RefCell<Buffers> = const { RefCell::new(Buffers { logits: Vec::new(), gradient: Vec::new() }) };
}

/// A thread's staging buffers.
#[derive(Default)]
struct Buffers {
    logits: Vec<f32>,
    gradient: Vec<f32>,
}

/// Splits `host` into consecutive tasks of `elements_per_task` logits (the last
/// one may be shorter); callers pick a multiple of the row length.
pub(crate) fn split(host: HostLogits<'_>, elements_per_task: usize) -> Vec<HostLogits<'_>> {
    match host {
        HostLogits::LossOnly(logits) => chunks(logits, elements_per_task)
            .into_iter()
            .map(HostLogits::LossOnly)
            .collect(),
        HostLogits::WithGradient(logits, gradient) => chunks(logits, elements_per_task)
            .into_iter()
            .zip(chunks_mut(gradient, elements_per_task))
            .map(|(logits, gradient)| HostLogits::WithGradient(logits, gradient))
            .collect(),
        HostLogits::InPlace(logits) => chunks_mut(logits, elements_per_task)
            .into_iter()
            .map(HostLogits::InPlace)
            .collect(),
    }
}

/// Runs `row_loop(logits, gradient)` over one task's logits as f32, with its
/// gradient (if any) as an f32 slice that ends up in the task's destination.
pub(crate) fn with_f32<R>(host: HostLogits<'_>, row_loop: impl FnOnce(&[f32], Option<&mut [f32]>) -> R) -> R {
    match host {
        HostLogits::LossOnly(Logits::F32(logits)) => row_loop(logits, None),
        HostLogits::WithGradient(Logits::F32(logits), LogitsMut::F32(gradient)) => row_loop(logits, Some(gradient)),
        staged => {
            // Taken out of the thread-local rather than borrowed, so a nested call could not conflict.
            let mut buffers = STAGING.with_borrow_mut(std::mem::take);
            let result = run_staged(staged, &mut buffers, row_loop);
            STAGING.with_borrow_mut(|kept| *kept = buffers);
            result
        }
    }
}

/// [`with_f32`] for everything but f32 in, separate f32 out.
fn run_staged<R>(
    host: HostLogits<'_>,
    buffers: &mut Buffers,
    row_loop: impl FnOnce(&[f32], Option<&mut [f32]>) -> R,
) -> R {
    let length = host.logits().len();
    let staged_logits = at_least(&mut buffers.logits, length);
    widen_into(host.logits(), staged_logits);
    match host {
        HostLogits::LossOnly(_) => row_loop(staged_logits, None),
        // An f32 destination needs no staging: write the gradient into it directly.
        HostLogits::WithGradient(_, LogitsMut::F32(gradient)) | HostLogits::InPlace(LogitsMut::F32(gradient)) => {
            row_loop(staged_logits, Some(gradient))
        }
        HostLogits::WithGradient(_, mut destination) | HostLogits::InPlace(mut destination) => {
            let staged_gradient = at_least(&mut buffers.gradient, length);
            let result = row_loop(staged_logits, Some(&mut *staged_gradient));
            round_into(staged_gradient, &mut destination);
            result
        }
    }
}

/// The first `length` values of `buffer`, growing it if it is shorter (it never
/// shrinks, so reuse writes nothing but the conversion itself).
fn at_least(buffer: &mut Vec<f32>, length: usize) -> &mut [f32] {
    if buffer.len() < length {
        buffer.resize(length, 0.0);
    }
    &mut buffer[..length]
}

/// Writes `logits` as f32 into `out` (of the same length).
fn widen_into(logits: Logits<'_>, out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match logits {
        Logits::F32(values) => out.copy_from_slice(values),
        // `half` converts f16 with F16C where the CPU has it.
        Logits::F16(values) => values.convert_to_f32_slice(out),
        Logits::Bf16(values) => {
            for (out, value) in out.iter_mut().zip(values) {
                *out = widen_bf16(*value);
            }
        }
    }
}

/// Stores f32 `values` into `destination` (of the same length), rounded to
/// nearest even for 16-bit types.
fn round_into(values: &[f32], destination: &mut LogitsMut<'_>) {
    match destination {
        LogitsMut::Bf16(destination) => {
            for (out, &value) in destination.iter_mut().zip(values) {
                *out = round_to_bf16(value);
            }
        }
        destination => destination.store_f32(values),
    }
}

/// A bf16 is the top half of an f32: widening is exact (NaN stays NaN).
/// Branch-free, unlike `half`'s, so the loop vectorises.
#[inline(always)]
fn widen_bf16(value: half::bf16) -> f32 {
    f32::from_bits(u32::from(value.to_bits()) << 16)
}

/// f32 to bf16, rounded to nearest even (as `half::bf16::from_f32`, and as the
/// shader's `pack_bf16`): add `0x7fff` plus the kept part's lowest bit, then
/// truncate; NaN keeps its top bits with the quiet bit set. Branch-free, so the
/// loop vectorises.
#[inline(always)]
fn round_to_bf16(value: f32) -> half::bf16 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x0040;
    let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
    half::bf16::from_bits(if is_nan { quiet_nan } else { rounded } as u16)
}

/// `logits` in consecutive pieces of `size`.
fn chunks(logits: Logits<'_>, size: usize) -> Vec<Logits<'_>> {
    match logits {
        Logits::F32(values) => values.chunks(size).map(Logits::F32).collect(),
        Logits::F16(values) => values.chunks(size).map(Logits::F16).collect(),
        Logits::Bf16(values) => values.chunks(size).map(Logits::Bf16).collect(),
    }
}

/// `values` in consecutive pieces of `size`.
fn chunks_mut(values: LogitsMut<'_>, size: usize) -> Vec<LogitsMut<'_>> {
    match values {
        LogitsMut::F32(values) => values.chunks_mut(size).map(LogitsMut::F32).collect(),
        LogitsMut::F16(values) => values.chunks_mut(size).map(LogitsMut::F16).collect(),
        LogitsMut::Bf16(values) => values.chunks_mut(size).map(LogitsMut::Bf16).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bf16 pattern widens as `half` does (NaN to a NaN), and f32 values around every
    /// rounding case (ties both ways, overflow to infinity, NaN, subnormals,
    /// signed zeros) round as `half` does.
    #[test]
    fn bf16_conversions_match_half() {
        for bits in 0..=u16::MAX {
            let value = half::bf16::from_bits(bits);
            let (widened, expected) = (widen_bf16(value), value.to_f32());
            if expected.is_nan() {
                // `half` also sets the quiet bit; any NaN is a NaN to the loss.
                assert!(widened.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(widened.to_bits(), expected.to_bits(), "{bits:#06x}");
            }
        }
        let mut patterns = vec![
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x0000_0001,
            0x8000_0000,
        ];
        for high in (0..=u32::from(u16::MAX)).step_by(97) {
            for low in [0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff] {
                patterns.push(high << 16 | low);
            }
        }
        for bits in patterns {
            let value = f32::from_bits(bits);
            assert_eq!(
                round_to_bf16(value).to_bits(),
                half::bf16::from_f32(value).to_bits(),
                "{bits:#010x}"
            );
        }
    }
}
