//! How the CPU row loops of the cross-entropy get their rows: split into rayon
//! tasks ([`for_each_task`]), and each task handed to its row loop as f32 slices
//! whatever the caller's storage, one task (a few hundred KiB of whole rows) at
//! a time, so that no call allocates or converts a whole N×C array:
//!
//! - f32 logits with a separate f32 gradient are passed straight through;
//! - 16-bit logits are widened into a per-thread buffer, their gradient computed
//!   into a second one and rounded (to nearest even) into the caller's slice —
//!   both buffers are task-sized, so they stay in cache between the conversion
//!   and the row loop;
//! - in place, the task's logits are staged the same way (copied for f32) before
//!   the gradient overwrites them. Tasks are disjoint spans, so this is exact.
//!   (The tuned path's f32 in-place rows skip this: `cross_entropy/fast.rs` keeps
//!   each block of 256 logits aside itself.)

use std::cell::RefCell;

use rayon::prelude::*;

use crate::types::HostLogits;
use crate::types::{Logits, LogitsMut};

/// Each rayon task handles at least this many logits (whole rows, or whole
/// batch items for `spatial > 1`), so that small rows do not drown in task
/// overhead. Inputs no larger than this run on the calling thread.
pub(crate) const MIN_TASK_ELEMENTS: usize = 1 << 16;

/// Runs `run_task(task_logits, first_row, task_rows)` over the rows split into
/// rayon tasks of at least [`MIN_TASK_ELEMENTS`] logits, made of whole groups of
/// `group_rows` rows (1, or the `spatial` rows of a batch item); `task_rows` is
/// the task's part of `rows` (one entry per row), which starts at row
/// `first_row`. Inputs of at most [`MIN_TASK_ELEMENTS`] logits run as one task
/// on the calling thread. Callers stage each task with [`with_f32`].
pub(crate) fn for_each_task<T: Send>(
    logits: HostLogits<'_>,
    classes: usize,
    group_rows: usize,
    rows: &mut [T],
    run_task: impl Fn(HostLogits<'_>, usize, &mut [T]) + Sync,
) {
    if logits.logits().len() <= MIN_TASK_ELEMENTS {
        run_task(logits, 0, rows);
        return;
    }
    let groups_per_task = MIN_TASK_ELEMENTS.div_ceil(classes * group_rows).max(1);
    let rows_per_task = groups_per_task * group_rows;
    split(logits, rows_per_task * classes)
        .into_par_iter()
        .zip(rows.par_chunks_mut(rows_per_task))
        .enumerate()
        .for_each(|(task, (logits, rows))| run_task(logits, task * rows_per_task, rows));
}

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
fn split(host: HostLogits<'_>, elements_per_task: usize) -> Vec<HostLogits<'_>> {
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
    host.logits().widen_into(staged_logits);
    match host {
        HostLogits::LossOnly(_) => row_loop(staged_logits, None),
        // An f32 destination needs no staging: write the gradient into it directly.
        HostLogits::WithGradient(_, LogitsMut::F32(gradient)) | HostLogits::InPlace(LogitsMut::F32(gradient)) => {
            row_loop(staged_logits, Some(gradient))
        }
        HostLogits::WithGradient(_, mut destination) | HostLogits::InPlace(mut destination) => {
            let staged_gradient = at_least(&mut buffers.gradient, length);
            let result = row_loop(staged_logits, Some(&mut *staged_gradient));
            destination.store_f32(staged_gradient);
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
