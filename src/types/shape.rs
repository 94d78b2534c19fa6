//! The batch [`Shape`]: rows × classes (and PyTorch's N-d layout), with the
//! length checks shared by every loss and backend.

use crate::error::{Error, Result};

/// A batch of `rows` predictions over `classes` classes.
///
/// Two layouts, as in PyTorch:
/// - `Shape::new(rows, classes)`: logits (rows, C), row-major (`spatial == 1`);
/// - `Shape::nd(batch, classes, &[d1, …, dk])`: logits (N, C, d1, …, dk) with
///   targets (N, d1, …, dk); each of the N·d1·…·dk positions is a row, and its
///   classes are `spatial = d1·…·dk` elements apart.
///
/// The logit of row `r`, class `c` sits at `(r / spatial) · C · spatial + c · spatial + r % spatial`.
///
/// ```
/// use xent::Shape;
///
/// let shape = Shape::new(4, 10); // logits (4, 10), row-major
/// assert_eq!(shape.index(2, 3), 23);
/// assert_eq!(shape.elements()?, 40);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows: N for (N, C), N·d1·…·dk for (N, C, d1, …, dk).
    pub rows: usize,
    /// Classes per row (C).
    pub classes: usize,
    /// Elements between a row's consecutive classes: 1, or d1·…·dk.
    pub spatial: usize,
}

impl Shape {
    /// A shape of `rows` × `classes`, row-major.
    ///
    /// ```
    /// use xent::Shape;
    ///
    /// let shape = Shape::new(3, 5);
    /// assert_eq!((shape.rows, shape.classes, shape.spatial), (3, 5, 1));
    /// ```
    pub fn new(rows: usize, classes: usize) -> Self {
        Self {
            rows,
            classes,
            spatial: 1,
        }
    }

    /// PyTorch's N-d layout: logits (batch, classes, d1, …, dk).
    ///
    /// Returns [`Error::TooLarge`] when d1·…·dk or batch·d1·…·dk overflows `usize`.
    ///
    /// ```
    /// use xent::Shape;
    ///
    /// let shape = Shape::nd(2, 5, &[3, 4])?; // logits (2, 5, 3, 4), targets (2, 3, 4)
    /// assert_eq!((shape.rows, shape.classes, shape.spatial), (24, 5, 12));
    /// assert!(Shape::nd(2, 5, &[usize::MAX, 2]).is_err());
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn nd(batch: usize, classes: usize, spatial_dims: &[usize]) -> Result<Self> {
        let overflow = || {
            Error::TooLarge(format!(
                "the shape ({batch}, {classes}, {spatial_dims:?}) overflows usize"
            ))
        };
        let spatial = spatial_dims
            .iter()
            .try_fold(1usize, |product, &extent| product.checked_mul(extent))
            .ok_or_else(overflow)?;
        let rows = batch.checked_mul(spatial).ok_or_else(overflow)?;
        Ok(Self { rows, classes, spatial })
    }

    /// Index of the logit of `row`, `class` in the flat logits.
    ///
    /// ```
    /// use xent::Shape;
    ///
    /// assert_eq!(Shape::new(2, 3).index(1, 2), 5); // row-major: 1 · 3 + 2
    /// // (N, C, d) = (1, 3, 2): row 1 is position 1, its class 2 sits at 2 · 2 + 1.
    /// assert_eq!(Shape::nd(1, 3, &[2])?.index(1, 2), 5);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn index(&self, row: usize, class: usize) -> usize {
        (row / self.spatial) * self.classes * self.spatial + class * self.spatial + row % self.spatial
    }

    /// rows × classes, or an error when it overflows `usize`.
    ///
    /// ```
    /// use xent::{Error, Shape};
    ///
    /// assert_eq!(Shape::new(3, 4).elements()?, 12);
    /// assert!(matches!(Shape::new(usize::MAX, 2).elements(), Err(Error::TooLarge(_))));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn elements(&self) -> Result<usize> {
        self.rows
            .checked_mul(self.classes)
            .ok_or_else(|| Error::TooLarge(format!("{} × {} elements overflow usize", self.rows, self.classes)))
    }

    /// Checks that the shape is non-empty and that `logits_len` equals rows × classes.
    pub(crate) fn check_logits(&self, logits_len: usize) -> Result<()> {
        if self.rows == 0 || self.classes == 0 || self.spatial == 0 {
            return Err(Error::EmptyShape {
                rows: self.rows,
                classes: self.classes,
            });
        }
        if !self.rows.is_multiple_of(self.spatial) {
            return Err(Error::InvalidOption(format!(
                "rows ({}) must be a multiple of the spatial size ({})",
                self.rows, self.spatial
            )));
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
