//! The crate's error type: every bad input and every GPU failure the library can
//! detect comes back as one of these variants instead of a panic.

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in a loss computation.
///
/// ```
/// use xent::{Cpu, CrossEntropyLoss, Error, Shape};
///
/// let result = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 0.0], &[2i64], Shape::new(1, 2));
/// assert_eq!(result, Err(Error::TargetOutOfRange { row: 0, value: 2, classes: 2 }));
/// assert_eq!(result.unwrap_err().to_string(), "target 2 at row 0 is outside [0, 2)");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch has no rows or no classes.
    #[error("empty shape: rows = {rows}, classes = {classes} (both must be at least 1)")]
    EmptyShape {
        /// Rows requested.
        rows: usize,
        /// Classes requested.
        classes: usize,
    },
    /// The logits slice does not hold rows × classes values.
    #[error("logits have {actual} elements, expected rows × classes = {rows} × {classes} = {expected}")]
    LogitsLength {
        /// Elements given.
        actual: usize,
        /// rows × classes.
        expected: usize,
        /// Rows of the shape.
        rows: usize,
        /// Classes of the shape.
        classes: usize,
    },
    /// The targets do not hold one class index per row.
    #[error("targets have {actual} entries, expected one per row ({rows})")]
    TargetsLength {
        /// Entries given.
        actual: usize,
        /// Rows of the shape.
        rows: usize,
    },
    /// Soft targets do not hold one probability per logit.
    #[error("soft targets have {actual} values, expected one per logit ({expected})")]
    ProbabilitiesLength {
        /// Values given.
        actual: usize,
        /// rows × classes.
        expected: usize,
    },
    /// A target class index lies outside `[0, classes)`.
    #[error("target {value} at row {row} is outside [0, {classes})")]
    TargetOutOfRange {
        /// First row (0-based) whose target is invalid.
        row: usize,
        /// Its target value.
        value: i64,
        /// Number of classes.
        classes: usize,
    },
    /// The gradient output does not hold rows × classes values.
    #[error("gradient output has {actual} elements, expected rows × classes = {expected}")]
    GradientLength {
        /// Elements given.
        actual: usize,
        /// rows × classes.
        expected: usize,
    },
    /// A caller-provided device buffer is smaller than the shape needs.
    #[error("device buffer `{name}` has {actual} bytes, the shape needs {needed}")]
    BufferTooSmall {
        /// Which input or output.
        name: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes the buffer has.
        actual: u64,
    },
    /// A caller-provided device buffer lacks a usage flag the computation needs.
    #[error("device buffer `{name}` lacks usage {missing:?}")]
    BufferUsage {
        /// Which input or output.
        name: &'static str,
        /// The usages it must also have.
        missing: wgpu::BufferUsages,
    },
    /// A caller-provided device buffer slice starts at an offset the adapter
    /// cannot bind (not a multiple of `min_storage_buffer_offset_alignment`).
    #[error(
        "device buffer slice `{name}` starts at byte {offset}, not a multiple of the adapter's storage offset alignment {alignment}"
    )]
    BufferOffsetAlignment {
        /// Which input or output.
        name: &'static str,
        /// The slice's offset in its buffer.
        offset: u64,
        /// `min_storage_buffer_offset_alignment` of the device.
        alignment: u32,
    },
    /// An option value is out of its domain (a smoothing outside [0, 1], a weight
    /// vector of the wrong length or with a negative entry, …).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The problem does not fit the adapter's limits even after chunking.
    #[error("too large for this adapter: {0}")]
    TooLarge(String),
    /// No adapter matched the request (or none exists on this machine).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// Creating the device failed.
    #[error("requesting the GPU device failed: {0}")]
    RequestDevice(String),
    /// The GPU reported a validation or out-of-memory error, or the device was lost.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Mapping a result buffer for reading failed.
    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),
}
