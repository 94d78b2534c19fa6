//! The checks every loss of the BCE / KL / entropy family shares: (N, C)
//! row-major calls and targets laid out like the input.

use crate::error::{Error, Result};
use crate::types::Shape;

/// Checks an (N, C) call: a plain row-major shape, the input's and the gradient's lengths.
pub(crate) fn check_matrix_call(input: &[f32], shape: Shape, gradient: Option<&[f32]>) -> Result<()> {
    if shape.spatial != 1 {
        return Err(Error::InvalidOption(format!(
            "this loss takes (N, C) row-major inputs; the N-d layout (spatial size {}) is not supported",
            shape.spatial
        )));
    }
    shape.check_logits(input.len())?;
    if let Some(gradient) = gradient {
        shape.check_gradient(gradient.len())?;
    }
    Ok(())
}

/// Targets laid out like the input: one value per element.
pub(crate) fn check_targets_length(targets: &[f32], expected: usize) -> Result<()> {
    if targets.len() != expected {
        return Err(Error::ProbabilitiesLength {
            actual: targets.len(),
            expected,
        });
    }
    Ok(())
}
