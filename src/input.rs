//! What a loss call is given: the batch [`Shape`] and the class-index [`Targets`],
//! with the host-side validation shared by both backends.

use crate::error::{Error, Result};

/// A batch of `rows` predictions over `classes` classes; logits are row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows (the batch size N).
    pub rows: usize,
    /// Classes per row (C).
    pub classes: usize,
}

impl Shape {
    /// A shape of `rows` × `classes`.
    pub fn new(rows: usize, classes: usize) -> Self {
        Self { rows, classes }
    }

    /// rows × classes, or an error when it overflows `usize`.
    pub fn elements(&self) -> Result<usize> {
        self.rows
            .checked_mul(self.classes)
            .ok_or_else(|| Error::TooLarge(format!("{} × {} elements overflow usize", self.rows, self.classes)))
    }

    /// Checks that the shape is non-empty and that `logits_len` equals rows × classes.
    pub(crate) fn check_logits(&self, logits_len: usize) -> Result<()> {
        if self.rows == 0 || self.classes == 0 {
            return Err(Error::EmptyShape {
                rows: self.rows,
                classes: self.classes,
            });
        }
        let expected = self.elements()?;
        if logits_len != expected {
            return Err(Error::LogitsLength {
                actual: logits_len,
                expected,
                rows: self.rows,
                classes: self.classes,
            });
        }
        Ok(())
    }

    /// Checks a gradient output's length.
    pub(crate) fn check_gradient(&self, gradient_len: usize) -> Result<()> {
        let expected = self.elements()?;
        if gradient_len != expected {
            return Err(Error::GradientLength {
                actual: gradient_len,
                expected,
            });
        }
        Ok(())
    }
}

/// The element type of a targets array, on the host or in a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetType {
    /// `i64`, PyTorch's class-index dtype.
    I64,
    /// `i32`.
    I32,
    /// `u32`.
    U32,
}

impl TargetType {
    /// Bytes per target.
    pub fn size_in_bytes(self) -> usize {
        match self {
            TargetType::I64 => 8,
            TargetType::I32 | TargetType::U32 => 4,
        }
    }

    /// Rebuilds a target value from the two 32-bit words the GPU reports.
    pub(crate) fn value_from_words(self, low: u32, high: u32) -> i64 {
        match self {
            TargetType::I64 => ((u64::from(high) << 32) | u64::from(low)) as i64,
            TargetType::I32 => i64::from(low as i32),
            TargetType::U32 => i64::from(low),
        }
    }
}

/// Class-index targets, one per row, borrowed from the caller in any of the
/// integer types PyTorch and NumPy produce.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// `i64` targets (PyTorch's `long`).
    I64(&'a [i64]),
    /// `i32` targets.
    I32(&'a [i32]),
    /// `u32` targets.
    U32(&'a [u32]),
}

impl Targets<'_> {
    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::I64(values) => values.len(),
            Targets::I32(values) => values.len(),
            Targets::U32(values) => values.len(),
        }
    }

    /// True when there are no targets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn target_type(&self) -> TargetType {
        match self {
            Targets::I64(_) => TargetType::I64,
            Targets::I32(_) => TargetType::I32,
            Targets::U32(_) => TargetType::U32,
        }
    }

    /// The raw little-endian bytes, as uploaded to the GPU.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Targets::I64(values) => bytemuck::cast_slice(values),
            Targets::I32(values) => bytemuck::cast_slice(values),
            Targets::U32(values) => bytemuck::cast_slice(values),
        }
    }

    /// Target of `row` widened to `i64`.
    fn value(&self, row: usize) -> i64 {
        match self {
            Targets::I64(values) => values[row],
            Targets::I32(values) => i64::from(values[row]),
            Targets::U32(values) => i64::from(values[row]),
        }
    }

    /// Checks one target per row, each in `[0, classes)`; reports the first bad row.
    pub(crate) fn check(&self, shape: Shape) -> Result<()> {
        if self.len() != shape.rows {
            return Err(Error::TargetsLength {
                actual: self.len(),
                rows: shape.rows,
            });
        }
        let classes = shape.classes as i64;
        match (0..self.len()).find(|&row| !(0..classes).contains(&self.value(row))) {
            Some(row) => Err(Error::TargetOutOfRange {
                row,
                value: self.value(row),
                classes: shape.classes,
            }),
            None => Ok(()),
        }
    }

    /// The targets as `u32` class indices; call after [`Targets::check`].
    pub(crate) fn to_class_indices(self) -> Vec<u32> {
        (0..self.len()).map(|row| self.value(row) as u32).collect()
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
    };
}

targets_from!(i64, I64);
targets_from!(i32, I32);
targets_from!(u32, U32);
