//! The elementwise driver the CPU binary cross-entropy and KL divergence share.
//!
//! Elements are processed in fixed blocks of [`BLOCK`] across rayon's threads;
//! the block sums are added in block order, so the result does not depend on the
//! thread count.

use rayon::prelude::*;

use crate::types::Loss;

/// Elements per parallel block.
pub const BLOCK: usize = 4096;

/// A loss and its derivative w.r.t. the input (before the reduction's factor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Term {
    pub loss: f64,
    pub slope: f64,
}

/// Applies `term(index, input, target)` to every element: writes the gradient
/// (`slope · scale`) and, when `losses` is given, each loss; returns Σ loss in f64.
pub(crate) fn for_each_element(
    input: &[f32],
    targets: &[f32],
    gradient: Option<&mut [f32]>,
    losses: Option<&mut [f32]>,
    scale: f64,
    term: impl Fn(usize, f64, f64) -> Term + Sync,
) -> f64 {
    let blocks = input.len().div_ceil(BLOCK);
    let gradient_blocks = optional_chunks(gradient, BLOCK, blocks);
    let loss_blocks = optional_chunks(losses, BLOCK, blocks);
    let block_sums: Vec<f64> = gradient_blocks
        .into_par_iter()
        .zip(loss_blocks)
        .enumerate()
        .map(|(block, (mut gradient, mut losses))| {
            let start = block * BLOCK;
            let end = (start + BLOCK).min(input.len());
            let mut sum = 0.0;
            for (offset, index) in (start..end).enumerate() {
                let Term { loss, slope } = term(index, f64::from(input[index]), f64::from(targets[index]));
                if let Some(gradient) = gradient.as_deref_mut() {
                    gradient[offset] = (slope * scale) as f32;
                }
                if let Some(losses) = losses.as_deref_mut() {
                    losses[offset] = loss as f32;
                }
                sum += loss;
            }
            sum
        })
        .collect();
    block_sums.iter().sum()
}

/// The `count` mutable chunks of `size` values of `values`, or `count` placeholders without it.
pub(crate) fn optional_chunks(values: Option<&mut [f32]>, size: usize, count: usize) -> Vec<Option<&mut [f32]>> {
    match values {
        Some(values) => values.chunks_mut(size).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}

/// The reduced loss, or the per-element losses for reduction `none`.
pub(crate) fn elementwise_loss(
    input: &[f32],
    targets: &[f32],
    divisor: Option<f64>,
    scale: f32,
    gradient: Option<&mut [f32]>,
    term: impl Fn(usize, f64, f64) -> Term + Sync,
) -> Loss {
    let scale = f64::from(scale);
    match divisor {
        Some(divisor) => {
            Loss::Reduced((for_each_element(input, targets, gradient, None, scale, term) / divisor) as f32)
        }
        None => {
            let mut losses = vec![0.0f32; input.len()];
            for_each_element(input, targets, gradient, Some(&mut losses), scale, term);
            Loss::PerRow(losses)
        }
    }
}
