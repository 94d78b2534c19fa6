//! Logits and gradients in any supported element type ([`Logits`],
//! [`LogitsMut`], [`LogitType`]), borrowed from the caller, with the bf16
//! conversions the CPU path and staging use.

/// The element type of logits (and of their gradient), on the host or in a device buffer.
///
/// ```
/// use xent::half::f16;
/// use xent::{LogitType, Logits};
///
/// assert_eq!(LogitType::default(), LogitType::F32);
/// assert_eq!(Logits::from(&[f16::ONE; 3]).logit_type(), LogitType::F16);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogitType {
    /// `f32`.
    #[default]
    F32,
    /// IEEE half precision (`half::f16`); on the GPU as `f16` where the device
    /// has `Features::SHADER_F16`, else as halves of 32-bit words (the same bits).
    F16,
    /// bfloat16 (`half::bf16`), two per 32-bit word on the GPU.
    Bf16,
}

impl LogitType {
    /// Bytes per logit.
    ///
    /// ```
    /// use xent::LogitType;
    ///
    /// assert_eq!(LogitType::F32.size_in_bytes(), 4);
    /// assert_eq!(LogitType::Bf16.size_in_bytes(), 2);
    /// ```
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
    ///
    /// ```
    /// assert_eq!(xent::Logits::from(&[1.0f32, 2.0, 3.0]).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(values) => values.len(),
            Logits::F16(values) => values.len(),
            Logits::Bf16(values) => values.len(),
        }
    }

    /// True when there are none.
    ///
    /// ```
    /// assert!(xent::Logits::F32(&[]).is_empty());
    /// assert!(!xent::Logits::from(&[1.0f32]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    ///
    /// ```
    /// use xent::half::bf16;
    /// use xent::{LogitType, Logits};
    ///
    /// assert_eq!(Logits::from(&[bf16::ONE]).logit_type(), LogitType::Bf16);
    /// ```
    pub fn logit_type(&self) -> LogitType {
        match self {
            Logits::F32(_) => LogitType::F32,
            Logits::F16(_) => LogitType::F16,
            Logits::Bf16(_) => LogitType::Bf16,
        }
    }

    /// The raw bytes, as uploaded to the GPU.
    ///
    /// ```
    /// use xent::Logits;
    ///
    /// let bytes = Logits::from(&[1.0f32, 2.0]).as_bytes();
    /// assert_eq!(bytes.len(), 8);
    /// assert_eq!(bytes[..4], 1.0f32.to_le_bytes());
    /// ```
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Logits::F32(values) => bytemuck::cast_slice(values),
            Logits::F16(values) => bytemuck::cast_slice(values),
            Logits::Bf16(values) => bytemuck::cast_slice(values),
        }
    }

    /// Writes the logits as f32 into `out` (exact), which the caller sizes to
    /// the logits' length (the CPU backend's staging; callers outside the crate
    /// use [`Logits::to_f32`]).
    pub(crate) fn widen_into(&self, out: &mut [f32]) {
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
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use xent::Logits;
    /// use xent::half::f16;
    ///
    /// assert!(matches!(Logits::from(&[1.0f32]).to_f32(), Cow::Borrowed(_)));
    /// assert_eq!(*Logits::from(&[f16::from_f32(0.25)]).to_f32(), [0.25]);
    /// ```
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
    ///
    /// ```
    /// assert_eq!(xent::LogitsMut::from(&mut [0.0f32; 3]).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            LogitsMut::F32(values) => values.len(),
            LogitsMut::F16(values) => values.len(),
            LogitsMut::Bf16(values) => values.len(),
        }
    }

    /// True when there are none.
    ///
    /// ```
    /// assert!(xent::LogitsMut::F32(&mut []).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    ///
    /// ```
    /// use xent::half::f16;
    /// use xent::{LogitType, LogitsMut};
    ///
    /// assert_eq!(LogitsMut::from(&mut [f16::ZERO; 2]).logit_type(), LogitType::F16);
    /// ```
    pub fn logit_type(&self) -> LogitType {
        match self {
            LogitsMut::F32(_) => LogitType::F32,
            LogitsMut::F16(_) => LogitType::F16,
            LogitsMut::Bf16(_) => LogitType::Bf16,
        }
    }

    /// The raw bytes, for copying results in.
    ///
    /// ```
    /// use xent::LogitsMut;
    ///
    /// let mut values = [0.0f32; 2];
    /// LogitsMut::from(&mut values).as_bytes_mut()[4..].copy_from_slice(&3.0f32.to_le_bytes());
    /// assert_eq!(values, [0.0, 3.0]);
    /// ```
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            LogitsMut::F32(values) => bytemuck::cast_slice_mut(values),
            LogitsMut::F16(values) => bytemuck::cast_slice_mut(values),
            LogitsMut::Bf16(values) => bytemuck::cast_slice_mut(values),
        }
    }

    /// Shared view of the same values.
    ///
    /// ```
    /// use xent::LogitsMut;
    ///
    /// let mut values = [1.0f32, 2.0];
    /// let gradient = LogitsMut::from(&mut values);
    /// assert_eq!(*gradient.as_logits().to_f32(), [1.0, 2.0]);
    /// ```
    pub fn as_logits(&self) -> Logits<'_> {
        match self {
            LogitsMut::F32(values) => Logits::F32(values),
            LogitsMut::F16(values) => Logits::F16(values),
            LogitsMut::Bf16(values) => Logits::Bf16(values),
        }
    }

    /// Sets every value to zero.
    ///
    /// ```
    /// use xent::LogitsMut;
    /// use xent::half::bf16;
    ///
    /// let mut values = [bf16::ONE; 2];
    /// LogitsMut::from(&mut values).fill_zeros();
    /// assert_eq!(values, [bf16::ZERO; 2]);
    /// ```
    pub fn fill_zeros(&mut self) {
        match self {
            LogitsMut::F32(values) => values.fill(0.0),
            LogitsMut::F16(values) => values.fill(half::f16::ZERO),
            LogitsMut::Bf16(values) => values.fill(half::bf16::ZERO),
        }
    }

    /// Stores f32 `values` (rounded to nearest even for 16-bit types), which the
    /// caller sizes to this slice's length (the CPU backend's staged gradient).
    pub(crate) fn store_f32(&mut self, values: &[f32]) {
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
