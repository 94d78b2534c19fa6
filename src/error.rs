//! The crate's error type: every bad input and every GPU failure the library can
//! detect comes back as one of these variants instead of a panic.

/// Result alias used throughout the crate.
///
/// ```
/// use xent::{Error, Shape};
///
/// fn logits_needed(rows: usize, classes: usize) -> xent::Result<usize> {
///     Shape::new(rows, classes).elements()
/// }
/// assert_eq!(logits_needed(4, 8), Ok(32));
/// assert!(matches!(logits_needed(usize::MAX, 2), Err(Error::TooLarge(_))));
/// ```
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
    /// A caller-provided device buffer slice starts at a byte offset that is not
    /// a multiple of its element size.
    #[error("device buffer slice `{name}` starts at byte {offset}, not a multiple of {alignment}")]
    BufferAlignment {
        /// Which input or output.
        name: &'static str,
        /// The slice's offset in its buffer.
        offset: u64,
        /// The multiple it must be.
        alignment: u64,
    },
    /// One device buffer is given both as an output the kernel writes and as an
    /// input it reads, which wgpu cannot bind in one dispatch.
    #[error(
        "device buffer `{written}` is the same buffer as `{read}`: a buffer the kernel writes cannot also be \
         bound as one it reads; use separate buffers"
    )]
    BufferAliasing {
        /// The output (or the logits, overwritten in place).
        written: &'static str,
        /// The input in the same buffer.
        read: &'static str,
    },
    /// The upstream gradient's values are neither one `f32` nor one per loss
    /// value of reduction `none` (per row; per element for the binary
    /// cross-entropy and the KL divergence).
    #[error(
        "upstream gradient values have {bytes} bytes; expected 4 (one f32 for every loss value) or, for \
         reduction `none`, {per_row} (one f32 per loss value the call outputs)"
    )]
    UpstreamLength {
        /// Bytes of the values slice.
        bytes: u64,
        /// Bytes of one f32 per loss value of reduction `none` (per row; per
        /// element for the binary cross-entropy and the KL divergence).
        per_row: u64,
    },
    /// An option value is out of its domain (a smoothing outside [0, 1], a weight
    /// vector of the wrong length or with a negative entry, …).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Vocabulary shards that do not tile the vocabulary (empty, overlapping,
    /// leaving a gap, of different vocabularies or row counts), or per-row
    /// statistics that do not match each other.
    #[error("invalid vocabulary shards: {0}")]
    InvalidShards(String),
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
