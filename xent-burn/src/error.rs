//! What can go wrong between Burn and xent.

/// An error of an `xent-burn` call.
///
/// ```
/// let error = xent_burn::Error::NotRegistered;
/// assert!(error.to_string().contains("register"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tensors are not on Burn's wgpu runtime without fusion (or its
    /// `Autodiff` wrapper): another backend, another cubecl runtime, or a
    /// checkpointing strategy other than none.
    #[error("xent-burn runs on Burn's wgpu runtime (cube backend, optionally under Autodiff): {0}")]
    UnsupportedBackend(String),
    /// The tensors are on a wgpu device that no xent context was registered for.
    #[error(
        "no xent context for this wgpu device: create it with xent_burn::init_wgpu() or register its setup with xent_burn::register()"
    )]
    NotRegistered,
    /// Shapes or element types that the fused loss does not take.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Burn's wgpu runtime could not start or hand out a buffer.
    #[error("burn wgpu runtime: {0}")]
    Runtime(String),
    /// xent refused the call (options, sizes) or the device failed.
    #[error(transparent)]
    Xent(#[from] xent::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
