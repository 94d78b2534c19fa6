//! What a loss call is given: the batch [`Shape`] and the class-index [`Targets`],
//! with the host-side validation shared by both backends.

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
    pub fn index(&self, row: usize, class: usize) -> usize {
        (row / self.spatial) * self.classes * self.spatial + class * self.spatial + row % self.spatial
    }

    /// rows × classes, or an error when it overflows `usize`.
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

/// The element type of logits (and of their gradient), on the host or in a device buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogitType {
    /// `f32`.
    #[default]
    F32,
    /// IEEE half precision (`half::f16`); on the GPU needs `Features::SHADER_F16`.
    F16,
    /// bfloat16 (`half::bf16`), two per 32-bit word on the GPU.
    Bf16,
}

impl LogitType {
    /// Bytes per logit.
    pub fn size_in_bytes(self) -> usize {
        match self {
            LogitType::F32 => 4,
            LogitType::F16 | LogitType::Bf16 => 2,
        }
    }
}

/// Logits borrowed from the caller, in any of the supported element types.
/// Arithmetic is f32 whatever the storage. Slices, arrays and vectors of `f32`,
/// `half::f16` and `half::bf16` convert into it, so the loss calls take them as they are.
///
/// ```
/// use xent::half::bf16;
/// use xent::{Cpu, CrossEntropyLoss, LogitType, Logits, Shape};
///
/// let logits = [bf16::from_f32(0.0); 2];
/// assert_eq!(Logits::from(&logits).logit_type(), LogitType::Bf16);
/// let loss = CrossEntropyLoss::new().loss(&Cpu, &logits, &[1i64], Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Logits<'a> {
    /// `f32` logits.
    F32(&'a [f32]),
    /// `f16` logits.
    F16(&'a [half::f16]),
    /// `bf16` logits.
    Bf16(&'a [half::bf16]),
}

impl<'a> Logits<'a> {
    /// Number of logits.
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(values) => values.len(),
            Logits::F16(values) => values.len(),
            Logits::Bf16(values) => values.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn logit_type(&self) -> LogitType {
        match self {
            Logits::F32(_) => LogitType::F32,
            Logits::F16(_) => LogitType::F16,
            Logits::Bf16(_) => LogitType::Bf16,
        }
    }

    /// The raw bytes, as uploaded to the GPU.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Logits::F32(values) => bytemuck::cast_slice(values),
            Logits::F16(values) => bytemuck::cast_slice(values),
            Logits::Bf16(values) => bytemuck::cast_slice(values),
        }
    }

    /// Writes the logits as f32 into `out` (exact).
    ///
    /// # Panics
    /// If `out` does not have the logits' length.
    pub fn widen_into(&self, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        assert_eq!(out.len(), self.len(), "widen_into: lengths differ");
        match self {
            Logits::F32(values) => out.copy_from_slice(values),
            // `half` converts f16 with F16C where the CPU has it.
            Logits::F16(values) => values.convert_to_f32_slice(out),
            Logits::Bf16(values) => {
                for (out, &value) in out.iter_mut().zip(*values) {
                    *out = widen_bf16(value);
                }
            }
        }
    }

    /// The logits as f32: borrowed when they are f32, converted otherwise.
    pub fn to_f32(&self) -> std::borrow::Cow<'a, [f32]> {
        use half::slice::HalfFloatSliceExt;
        match self {
            Logits::F32(values) => std::borrow::Cow::Borrowed(values),
            Logits::F16(values) => std::borrow::Cow::Owned(values.to_f32_vec()),
            Logits::Bf16(values) => std::borrow::Cow::Owned(values.to_f32_vec()),
        }
    }
}

/// A mutable slice of logits or gradient in any supported element type: where a
/// gradient is written (or, in place, the logits it overwrites). Its element type
/// must be the logits'.
///
/// ```
/// use xent::half::f16;
/// use xent::{Cpu, CrossEntropyLoss, LogitsMut, Shape};
///
/// let logits = [f16::ZERO; 2];
/// let mut gradient = [f16::ZERO; 2];
/// let gradient_out = LogitsMut::F16(&mut gradient); // or just `&mut gradient`
/// CrossEntropyLoss::new().loss_and_grad(&Cpu, &logits, &[1i64], Shape::new(1, 2), gradient_out)?;
/// assert_eq!(gradient, [f16::from_f32(0.5), f16::from_f32(-0.5)]);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Debug)]
pub enum LogitsMut<'a> {
    /// `f32` values.
    F32(&'a mut [f32]),
    /// `f16` values.
    F16(&'a mut [half::f16]),
    /// `bf16` values.
    Bf16(&'a mut [half::bf16]),
}

impl LogitsMut<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            LogitsMut::F32(values) => values.len(),
            LogitsMut::F16(values) => values.len(),
            LogitsMut::Bf16(values) => values.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn logit_type(&self) -> LogitType {
        match self {
            LogitsMut::F32(_) => LogitType::F32,
            LogitsMut::F16(_) => LogitType::F16,
            LogitsMut::Bf16(_) => LogitType::Bf16,
        }
    }

    /// The raw bytes, for copying results in.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            LogitsMut::F32(values) => bytemuck::cast_slice_mut(values),
            LogitsMut::F16(values) => bytemuck::cast_slice_mut(values),
            LogitsMut::Bf16(values) => bytemuck::cast_slice_mut(values),
        }
    }

    /// Shared view of the same values.
    pub fn as_logits(&self) -> Logits<'_> {
        match self {
            LogitsMut::F32(values) => Logits::F32(values),
            LogitsMut::F16(values) => Logits::F16(values),
            LogitsMut::Bf16(values) => Logits::Bf16(values),
        }
    }

    /// Sets every value to zero.
    pub fn fill_zeros(&mut self) {
        match self {
            LogitsMut::F32(values) => values.fill(0.0),
            LogitsMut::F16(values) => values.fill(half::f16::ZERO),
            LogitsMut::Bf16(values) => values.fill(half::bf16::ZERO),
        }
    }

    /// Stores f32 `values` (rounded to nearest even for 16-bit types).
    ///
    /// # Panics
    /// If `values` does not have this slice's length.
    pub fn store_f32(&mut self, values: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        assert_eq!(values.len(), self.len(), "store_f32: lengths differ");
        match self {
            LogitsMut::F32(target) => target.copy_from_slice(values),
            LogitsMut::F16(target) => target.convert_from_f32_slice(values),
            LogitsMut::Bf16(target) => {
                for (out, &value) in target.iter_mut().zip(values) {
                    *out = round_to_bf16(value);
                }
            }
        }
    }
}

/// A bf16 is the top half of an f32: widening is exact (NaN stays NaN).
/// Branch-free, unlike `half`'s, so the loop vectorises.
#[inline(always)]
fn widen_bf16(value: half::bf16) -> f32 {
    f32::from_bits(u32::from(value.to_bits()) << 16)
}

/// f32 to bf16, rounded to nearest even (bit for bit as `half::bf16::from_f32`;
/// finite values as the shader's `bf16_bits`): add `0x7fff` plus the kept part's
/// lowest bit, then truncate; NaN keeps its top bits with the quiet bit set.
/// Branch-free, so the loop vectorises.
#[inline(always)]
fn round_to_bf16(value: f32) -> half::bf16 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x0040;
    let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
    half::bf16::from_bits(if is_nan { quiet_nan } else { rounded } as u16)
}

/// `From` conversions from slices, arrays and vectors of each logit element type.
macro_rules! logits_from {
    ($element:ty, $variant:ident) => {
        impl<'a> From<&'a [$element]> for Logits<'a> {
            fn from(values: &'a [$element]) -> Self {
                Logits::$variant(values)
            }
        }

        impl<'a, const N: usize> From<&'a [$element; N]> for Logits<'a> {
            fn from(values: &'a [$element; N]) -> Self {
                Logits::$variant(values)
            }
        }

        impl<'a> From<&'a Vec<$element>> for Logits<'a> {
            fn from(values: &'a Vec<$element>) -> Self {
                Logits::$variant(values)
            }
        }

        impl<'a> From<&'a mut [$element]> for LogitsMut<'a> {
            fn from(values: &'a mut [$element]) -> Self {
                LogitsMut::$variant(values)
            }
        }

        impl<'a, const N: usize> From<&'a mut [$element; N]> for LogitsMut<'a> {
            fn from(values: &'a mut [$element; N]) -> Self {
                LogitsMut::$variant(values)
            }
        }

        impl<'a> From<&'a mut Vec<$element>> for LogitsMut<'a> {
            fn from(values: &'a mut Vec<$element>) -> Self {
                LogitsMut::$variant(values)
            }
        }
    };
}

logits_from!(f32, F32);
logits_from!(half::f16, F16);
logits_from!(half::bf16, Bf16);

/// The element type of a targets array, on the host or in a device buffer.
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
    pub fn len(&self) -> usize {
        match self {
            Targets::I64(values) => values.len(),
            Targets::I32(values) => values.len(),
            Targets::U32(values) => values.len(),
            Targets::Probabilities(values) => values.len(),
        }
    }

    /// True for soft targets.
    pub fn is_probabilities(&self) -> bool {
        matches!(self, Targets::Probabilities(_))
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
            Targets::Probabilities(_) => TargetType::Probabilities,
        }
    }

    /// The raw little-endian bytes, as uploaded to the GPU.
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
        let classes = shape.classes as i64;
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

    /// The class indices widened to `i64` (empty for probabilities).
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
