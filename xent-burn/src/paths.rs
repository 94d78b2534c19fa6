//! Which way the calls of this thread wrote their gradient: a diagnostic (the
//! tests check with it that each path is taken; a training loop can check that
//! its steps run in place).

use std::cell::Cell;

/// Counts of the gradient paths taken by the calls made on the current thread
/// (see the crate's README, "Where the gradient goes").
///
/// ```
/// let paths = xent_burn::gradient_paths();
/// assert_eq!(paths, xent_burn::GradientPaths::default()); // no call on this thread yet
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GradientPaths {
    /// Written over the logits, which the call owned (no other handle on them).
    pub in_place: u64,
    /// Written into a new tensor in a buffer of its own (the logits are read).
    pub new_tensor: u64,
    /// Written over a copy of the logits (Burn's copy kernel): the logits were
    /// shared and the new tensor landed in the logits' buffer.
    pub copy_in_place: u64,
    /// Calls whose targets or upstream values shared the written buffer and
    /// were first copied into a buffer of xent-burn's own (a few bytes a row).
    pub staged_reads: u64,
}

thread_local! {
    static PATHS: Cell<GradientPaths> = const { Cell::new(GradientPaths {
        in_place: 0,
        new_tensor: 0,
        copy_in_place: 0,
        staged_reads: 0,
    }) };
}

/// The gradient paths the calls on the current thread took so far.
///
/// ```
/// assert_eq!(xent_burn::gradient_paths().in_place, 0);
/// ```
pub fn gradient_paths() -> GradientPaths {
    PATHS.with(Cell::get)
}

/// Adds one call's path to the current thread's counts.
pub(crate) fn record(update: impl FnOnce(&mut GradientPaths)) {
    PATHS.with(|paths| {
        let mut counts = paths.get();
        update(&mut counts);
        paths.set(counts);
    });
}
