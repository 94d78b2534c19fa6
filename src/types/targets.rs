//! Class-index or probability [`Targets`] and their element [`TargetType`], with
//! the range checks shared by both backends.

use crate::error::{Error, Result};
use crate::types::Shape;

/// The element type of a targets array, on the host or in a device buffer.
///
/// ```
/// use xent::{TargetType, Targets};
///
/// assert_eq!(Targets::from(&[0u32, 2]).target_type(), TargetType::U32);
/// assert_eq!(Targets::Probabilities(&[0.5, 0.5]).target_type(), TargetType::Probabilities);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetType {
    /// `i64`, PyTorch's class-index dtype.
    I64,
    /// `i32`.
    I32,
    /// `u32`.
    U32,
    /// `f32` class probabilities (soft targets), laid out like the logits.
    Probabilities,
}

impl TargetType {
    /// Bytes per target.
    ///
    /// ```
    /// use xent::TargetType;
    ///
    /// assert_eq!(TargetType::I64.size_in_bytes(), 8);
    /// assert_eq!(TargetType::I32.size_in_bytes(), 4);
    /// ```
    pub fn size_in_bytes(self) -> usize {
        match self {
            TargetType::I64 => 8,
            TargetType::I32 | TargetType::U32 | TargetType::Probabilities => 4,
        }
    }

    /// Rebuilds a target value from the two 32-bit words the GPU reports.
    pub(crate) fn value_from_words(self, low: u32, high: u32) -> i64 {
        match self {
            TargetType::I64 => ((u64::from(high) << 32) | u64::from(low)) as i64,
            TargetType::I32 => i64::from(low as i32),
            TargetType::U32 | TargetType::Probabilities => i64::from(low),
        }
    }
}

/// The checked targets of a row batch of the probability cross-entropy (and the
/// form its CPU kernel, GPU upload and f64 reference take): soft targets, one
/// per input value, or one class index in `[0, C)` per row.
///
/// ```
/// use xent::reference::divergence::{RowTargets, probability_cross_entropy_f64};
///
/// let (losses, _) = probability_cross_entropy_f64(&[0.25, 0.75], RowTargets::Classes(&[1]), 2);
/// assert!((losses[0] + 0.75f64.ln()).abs() < 1e-7);
/// ```
#[derive(Clone, Copy, Debug)]
pub enum RowTargets<'a> {
    /// One probability per input value, row-major.
    Soft(&'a [f32]),
    /// One class index in `[0, C)` per row.
    Classes(&'a [u32]),
}

impl<'a> RowTargets<'a> {
    /// Checks `targets` against `shape`: soft targets of the input's length, or
    /// one class index in `[0, C)` per row, converted to `u32` into `classes`.
    pub(crate) fn checked(targets: Targets<'a>, shape: Shape, classes: &'a mut Vec<u32>) -> Result<Self> {
        if let Targets::Probabilities(values) = targets {
            let expected = shape.elements()?;
            if values.len() != expected {
                return Err(Error::ProbabilitiesLength {
                    actual: values.len(),
                    expected,
                });
            }
            return Ok(RowTargets::Soft(values));
        }
        if targets.len() != shape.rows {
            return Err(Error::TargetsLength {
                actual: targets.len(),
                rows: shape.rows,
            });
        }
        let values = targets.to_i64();
        // A class count beyond i64 admits every non-negative i64 index.
        let class_count = i64::try_from(shape.classes).unwrap_or(i64::MAX);
        if let Some(row) = values.iter().position(|value| !(0..class_count).contains(value)) {
            return Err(Error::TargetOutOfRange {
                row,
                value: values[row],
                classes: shape.classes,
            });
        }
        *classes = values
            .iter()
            .map(|&value| u32::try_from(value))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::TooLarge(format!("class indices above {} (u32)", u32::MAX)))?;
        Ok(RowTargets::Classes(classes))
    }
}

/// Targets borrowed from the caller: class indices, one per row, in any of the
/// integer types PyTorch and NumPy produce, or class probabilities (soft targets).
/// Slices, arrays and vectors of `i64`, `i32` and `u32` convert into class indices.
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Shape, Targets};
///
/// assert_eq!(Targets::from(&[3i32, 1]).to_i64(), [3, 1]);
/// let soft = Targets::Probabilities(&[0.5, 0.5]); // one per logit
/// let loss = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 0.0], soft, Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// `i64` class indices (PyTorch's `long`).
    I64(&'a [i64]),
    /// `i32` class indices.
    I32(&'a [i32]),
    /// `u32` class indices.
    U32(&'a [u32]),
    /// Soft targets: one probability per logit, in the logits' layout.
    Probabilities(&'a [f32]),
}

impl Targets<'_> {
    /// Number of values (rows for class indices, rows × classes for probabilities).
    ///
    /// ```
    /// use xent::Targets;
    ///
    /// assert_eq!(Targets::from(&[1i64, 0, 2]).len(), 3); // three rows
    /// assert_eq!(Targets::Probabilities(&[0.25, 0.75, 1.0, 0.0]).len(), 4); // 2 rows × 2 classes
    /// ```
    pub fn len(&self) -> usize {
        match self {
            Targets::I64(values) => values.len(),
            Targets::I32(values) => values.len(),
            Targets::U32(values) => values.len(),
            Targets::Probabilities(values) => values.len(),
        }
    }

    /// True for soft targets.
    ///
    /// ```
    /// use xent::Targets;
    ///
    /// assert!(Targets::Probabilities(&[1.0, 0.0]).is_probabilities());
    /// assert!(!Targets::from(&[0i32]).is_probabilities());
    /// ```
    pub fn is_probabilities(&self) -> bool {
        matches!(self, Targets::Probabilities(_))
    }

    /// True when there are no targets.
    ///
    /// ```
    /// assert!(xent::Targets::I64(&[]).is_empty());
    /// assert!(!xent::Targets::from(&[7u32]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    ///
    /// ```
    /// use xent::{TargetType, Targets};
    ///
    /// assert_eq!(Targets::from(&[1i64]).target_type(), TargetType::I64);
    /// ```
    pub fn target_type(&self) -> TargetType {
        match self {
            Targets::I64(_) => TargetType::I64,
            Targets::I32(_) => TargetType::I32,
            Targets::U32(_) => TargetType::U32,
            Targets::Probabilities(_) => TargetType::Probabilities,
        }
    }

    /// The raw little-endian bytes, as uploaded to the GPU.
    ///
    /// ```
    /// use xent::Targets;
    ///
    /// let targets = Targets::from(&[1i32, -100]);
    /// let bytes = targets.as_bytes();
    /// assert_eq!(bytes.len(), 8);
    /// assert_eq!(bytes[4..], (-100i32).to_le_bytes());
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Targets::I64(values) => bytemuck::cast_slice(values),
            Targets::I32(values) => bytemuck::cast_slice(values),
            Targets::U32(values) => bytemuck::cast_slice(values),
            Targets::Probabilities(values) => bytemuck::cast_slice(values),
        }
    }

    /// Class index of `row` widened to `i64` (0 for probabilities).
    fn value(&self, row: usize) -> i64 {
        match self {
            Targets::I64(values) => values[row],
            Targets::I32(values) => i64::from(values[row]),
            Targets::U32(values) => i64::from(values[row]),
            Targets::Probabilities(_) => 0,
        }
    }

    /// Checks the targets against the shape: one class index per row, each in
    /// `[0, classes)` or equal to `ignore_index`, or one probability per logit.
    /// Reports the first bad row.
    pub(crate) fn check(&self, shape: Shape, ignore_index: i64) -> Result<()> {
        if let Targets::Probabilities(values) = self {
            let expected = shape.elements()?;
            return match values.len() == expected {
                true => Ok(()),
                false => Err(Error::ProbabilitiesLength {
                    actual: values.len(),
                    expected,
                }),
            };
        }
        if self.len() != shape.rows {
            return Err(Error::TargetsLength {
                actual: self.len(),
                rows: shape.rows,
            });
        }
        // A class count beyond i64 admits every non-negative i64 index.
        let classes = i64::try_from(shape.classes).unwrap_or(i64::MAX);
        let bad = |row: usize| {
            let value = self.value(row);
            value != ignore_index && !(0..classes).contains(&value)
        };
        match (0..self.len()).find(|&row| bad(row)) {
            Some(row) => Err(Error::TargetOutOfRange {
                row,
                value: self.value(row),
                classes: shape.classes,
            }),
            None => Ok(()),
        }
    }

    /// Class targets other than `ignore_index` (0 for probabilities).
    pub(crate) fn count_not_ignored(&self, ignore_index: i64) -> usize {
        let rows = if self.is_probabilities() { 0 } else { self.len() };
        (0..rows).filter(|&row| self.value(row) != ignore_index).count()
    }

    /// The class indices widened to `i64` (empty for probabilities).
    ///
    /// ```
    /// use xent::Targets;
    ///
    /// assert_eq!(Targets::from(&[3u32, 0]).to_i64(), [3, 0]);
    /// assert!(Targets::Probabilities(&[0.5, 0.5]).to_i64().is_empty());
    /// ```
    pub fn to_i64(self) -> Vec<i64> {
        let rows = if self.is_probabilities() { 0 } else { self.len() };
        (0..rows).map(|row| self.value(row)).collect()
    }
}

/// `From` conversions from slices and vectors of each target element type.
macro_rules! targets_from {
    ($element:ty, $variant:ident) => {
        impl<'a> From<&'a [$element]> for Targets<'a> {
            fn from(values: &'a [$element]) -> Self {
                Targets::$variant(values)
            }
        }

        impl<'a> From<&'a Vec<$element>> for Targets<'a> {
            fn from(values: &'a Vec<$element>) -> Self {
                Targets::$variant(values)
            }
        }

        impl<'a, const N: usize> From<&'a [$element; N]> for Targets<'a> {
            fn from(values: &'a [$element; N]) -> Self {
                Targets::$variant(values)
            }
        }
    };
}

targets_from!(i64, I64);
targets_from!(i32, I32);
targets_from!(u32, U32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_targets_beyond_u32_or_usize_are_errors_not_truncations() {
        let mut classes = Vec::new();
        // A class index past u32 (C of 5e9 admits it) cannot be a u32 class.
        let wide = Shape::new(1, 5_000_000_000);
        let beyond = RowTargets::checked(Targets::I64(&[4_300_000_000]), wide, &mut classes);
        assert!(matches!(beyond, Err(Error::TooLarge(_))), "{beyond:?}");
        let within = RowTargets::checked(Targets::I64(&[7]), wide, &mut classes);
        assert!(matches!(within, Ok(RowTargets::Classes([7]))), "{within:?}");
        // rows × classes of soft targets overflowing usize.
        let overflow = RowTargets::checked(Targets::Probabilities(&[]), Shape::new(usize::MAX, 2), &mut classes);
        assert!(matches!(overflow, Err(Error::TooLarge(_))), "{overflow:?}");
    }
}
