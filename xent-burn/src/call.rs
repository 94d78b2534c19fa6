//! The options of one fused call, as the backend trait receives them.

use std::sync::Arc;

use xent::{CrossEntropyOptions, Reduction};

/// The options of one [`XentBackend::xent_cross_entropy`](crate::XentBackend::xent_cross_entropy)
/// call (cheap to clone: the options are shared).
///
/// ```
/// use xent::{CrossEntropyOptions, Reduction};
///
/// let call = xent_burn::XentCall::new(CrossEntropyOptions { reduction: Reduction::Sum, ..Default::default() });
/// assert_eq!(call.reduction(), Reduction::Sum);
/// ```
#[derive(Clone, Debug)]
pub struct XentCall {
    options: Arc<CrossEntropyOptions>,
}

impl XentCall {
    /// A call with `options` (validated against the shape when it runs).
    pub fn new(options: CrossEntropyOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }

    /// The options.
    pub fn options(&self) -> &CrossEntropyOptions {
        &self.options
    }

    /// How rows are combined: the loss has one element for `mean` and `sum`, one per row for `none`.
    pub fn reduction(&self) -> Reduction {
        self.options.reduction
    }
}
