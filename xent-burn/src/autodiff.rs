//! The fused loss under `Autodiff`: xent computes the gradient in the forward,
//! the backward only scales it by the upstream gradient.
//!
//! The forward writes dL/dlogits in place over the logits when the loss owns
//! them (the usual training step: nothing else keeps the output of the last
//! layer), so the stored gradient takes the logits' memory instead of another
//! rows × classes. The backward's multiply is Burn's `float_mul`, which reuses
//! the stored gradient's memory (it owns it) for its output.
//!
//! The alternative is xent's in-kernel `UpstreamGradient`: the forward records
//! only the loss and keeps the logits; the backward runs the kernel again with
//! autodiff's incoming gradient bound as its `values`, writing the scaled
//! gradient over the logits. Per step that is one write of rows × classes fewer
//! (forward: read the logits; backward: read them, write the gradient; against
//! forward: read, write; backward: read, write), at the price of running the
//! kernel twice, keeping the logits alive until the backward, and a backward,
//! a generic `Backward<B>`, that calls back into the wgpu backend. We keep the gradient-in-forward form; the in-kernel upstream is
//! used where no autodiff stands between the caller and the kernel:
//! [`CrossEntropyLoss::loss_and_gradient`](crate::CrossEntropyLoss::loss_and_gradient)
//! with an [`Upstream`](crate::Upstream).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::Shape;
use xent::Reduction;

use crate::call::XentCall;
use crate::error::{Error, Result};
use crate::ops::{LossAndGradient, XentBackend};

/// The backward of the fused loss: dL/dlogits = stored gradient × upstream
/// gradient (a scalar for `mean`/`sum`, one value per row for `none`).
#[derive(Debug)]
struct ScaleStoredGradient;

impl<B: Backend> Backward<B, 1> for ScaleStoredGradient {
    /// The gradient xent wrote in the forward, and the reduction.
    type State = (FloatTensor<B>, Reduction);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (gradient, reduction) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            let rows = match reduction {
                Reduction::None => gradient.shape()[0],
                Reduction::Mean | Reduction::Sum => 1,
            };
            let upstream = B::float_reshape(upstream, Shape::new([rows, 1]));
            // The loss is f32; a 16-bit gradient takes the upstream gradient in its own type.
            let dtype = gradient.dtype();
            let upstream = if upstream.dtype() == dtype {
                upstream
            } else {
                B::float_cast(upstream, dtype.into())
            };
            B::float_mul(gradient, upstream)
        });
    }
}

impl<B: XentBackend, C: CheckpointStrategy> XentBackend for Autodiff<B, C> {
    fn xent_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        call: &XentCall,
        _with_gradient: bool,
    ) -> Result<LossAndGradient<Self>> {
        let (logits, node) = logits.into_parts();
        let loss = match ScaleStoredGradient.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::xent_cross_entropy(logits, targets, call, true)?;
                let gradient = out
                    .gradient
                    .ok_or_else(|| Error::Runtime("the backend returned no gradient".into()))?;
                prep.finish((gradient, call.reduction()), out.loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::xent_cross_entropy(logits, targets, call, false)?.loss),
        };
        Ok(LossAndGradient { loss, gradient: None })
    }
}
