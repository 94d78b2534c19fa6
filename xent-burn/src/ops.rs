//! The backend extension: the fused loss as an operation of a Burn backend.

use burn::backend::Backend;
use burn::backend::tensor::{FloatTensor, IntTensor};

use crate::call::XentCall;
use crate::error::Result;

/// The loss of one call and, when asked for, dL/dlogits (of the per-row losses'
/// sum for `none`).
#[derive(Debug)]
pub struct LossAndGradient<B: Backend> {
    /// `[1]` for `mean` and `sum`, `[rows]` for `none`.
    pub loss: FloatTensor<B>,
    /// `[rows, classes]`, the logits' layout; `None` when not asked for (and
    /// always under `Autodiff`, which keeps it for the backward).
    pub gradient: Option<FloatTensor<B>>,
}

/// xent's fused cross-entropy as a backend operation, the shape Burn's
/// custom-kernel example gives an extension: implemented for Burn's cube backend
/// on the wgpu runtime ([`burn_cubecl::CubeBackend`]) and for `Autodiff<B>`
/// over it. Use it through [`CrossEntropyLoss`](crate::CrossEntropyLoss), which
/// finds the backend of backend-erased Burn tensors.
///
/// ```no_run
/// use burn::tensor::{Int, Tensor};
/// use burn_cubecl::CubeBackend;
/// use xent_burn::{XentBackend, XentCall};
///
/// let device = xent_burn::init_wgpu()?;
/// let logits = Tensor::<2>::zeros([2, 4], &device).try_into_primitive::<CubeBackend>().unwrap();
/// let targets = Tensor::<1, Int>::from_ints([1, 3], &device).try_into_primitive::<CubeBackend>().unwrap();
/// let out = CubeBackend::xent_cross_entropy(logits, targets, &XentCall::new(Default::default()), true)?;
/// let loss = Tensor::<1>::from_primitive::<CubeBackend>(out.loss);
/// assert!((loss.into_scalar::<f32>() - 4f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent_burn::Error>(())
/// ```
pub trait XentBackend: Backend {
    /// The loss of `logits` (`[rows, classes]`) against class indices `targets`
    /// (`[rows]`) with `call`'s options, and with `with_gradient` the gradient.
    fn xent_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        call: &XentCall,
        with_gradient: bool,
    ) -> Result<LossAndGradient<Self>>;
}
