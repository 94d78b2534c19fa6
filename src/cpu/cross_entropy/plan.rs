//! The plan of a general cross-entropy call: everything its row loop needs
//! that does not change from row to row (targets, weights, smoothing, z-loss,
//! softcap, the mean's divisor), worked out once from the options.

use crate::cpu::lanes::BLOCK;
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{Shape, Targets};

/// The weights of an unweighted loss, one block at a time.
static ONES: [f32; BLOCK] = [1.0; BLOCK];

/// The targets as the row loop reads them.
pub(super) enum RowTargets<'a> {
    /// Class indices (widened), with the index that marks an ignored row.
    Classes { indices: Vec<i64>, ignore_index: i64 },
    /// Probabilities in the logits' layout.
    Probabilities(&'a [f32]),
}

/// Everything the row loop needs that does not change from row to row.
pub(super) struct Plan<'a> {
    /// Classes per row.
    pub(super) classes: usize,
    /// Elements between a row's consecutive classes.
    pub(super) spatial: usize,
    /// The targets.
    pub(super) targets: RowTargets<'a>,
    /// Class weights, if any.
    pub(super) weight: Option<&'a [f32]>,
    /// `Σ_c w_c` (C without weights).
    pub(super) weight_sum: f64,
    /// Label smoothing ε.
    pub(super) smoothing: f64,
    /// `1 − ε`, in f32 for the soft-target loops.
    pub(super) keep: f32,
    /// `ε / C`.
    pub(super) uniform: f64,
    /// z-loss scale.
    pub(super) z_loss: f64,
    /// Logit scale s.
    pub(super) logit_scale: f32,
    /// Softcap t.
    pub(super) softcap: Option<f64>,
    /// Whether the argmax is wanted.
    pub(super) row_stats: bool,
    /// The mean's divisor (1 for the other reductions).
    pub(super) divisor: f64,
    /// `1 / divisor`: the gradient's factor; NaN when the divisor is 0 (a mean
    /// over rows that are all ignored or all of weight 0), so that every row not
    /// ignored gets a NaN gradient row, as PyTorch's `0 · (1/0)`; ignored rows
    /// write zeros without it.
    pub(super) gradient_scale: f64,
}

impl<'a> Plan<'a> {
    pub(super) fn new(targets: Targets<'a>, shape: Shape, options: &'a CrossEntropyOptions, row_stats: bool) -> Self {
        let weight = options.weight.as_deref();
        let targets = match (targets, class_indices(targets)) {
            (Targets::Probabilities(probabilities), _) => RowTargets::Probabilities(probabilities),
            (_, indices) => RowTargets::Classes {
                indices: indices.unwrap_or_default(),
                ignore_index: options.ignore_index,
            },
        };
        let divisor = match (options.reduction, &targets) {
            (Reduction::Mean, RowTargets::Classes { indices, ignore_index }) => indices
                .iter()
                .filter(|&&class| class != *ignore_index)
                .map(|&class| weight.map_or(1.0, |weight| f64::from(weight[class as usize])))
                .sum(),
            (Reduction::Mean, RowTargets::Probabilities(_)) => shape.rows as f64,
            (Reduction::Sum | Reduction::None, _) => 1.0,
        };
        let smoothing = f64::from(options.label_smoothing);
        Self {
            classes: shape.classes,
            spatial: shape.spatial,
            targets,
            weight,
            weight_sum: weight.map_or(shape.classes as f64, |weight| {
                weight.iter().map(|&w| f64::from(w)).sum()
            }),
            smoothing,
            keep: (1.0 - smoothing) as f32,
            uniform: smoothing / shape.classes as f64,
            z_loss: f64::from(options.z_loss),
            logit_scale: options.logit_scale,
            softcap: options.softcap.map(f64::from),
            row_stats,
            divisor,
            gradient_scale: if divisor == 0.0 { f64::NAN } else { 1.0 / divisor },
        }
    }

    /// The weight of `class` (1 without weights).
    pub(super) fn weight_of(&self, class: usize) -> f64 {
        self.weight.map_or(1.0, |weight| f64::from(weight[class]))
    }

    /// The weights of classes `range` (ones without weights).
    pub(super) fn weight_block(&self, range: std::ops::Range<usize>) -> &[f32] {
        match self.weight {
            Some(weight) => &weight[range],
            None => &ONES[..range.len()],
        }
    }
}

/// The class-index targets widened to `i64`, or `None` for soft targets.
pub(super) fn class_indices(targets: Targets<'_>) -> Option<Vec<i64>> {
    match targets {
        Targets::I64(values) => Some(values.to_vec()),
        Targets::I32(values) => Some(values.iter().map(|&value| i64::from(value)).collect()),
        Targets::U32(values) => Some(values.iter().map(|&value| i64::from(value)).collect()),
        Targets::Probabilities(_) => None,
    }
}
