//! What every loss of the BCE / KL / entropy family shares: (N, C) row-major
//! calls, targets laid out like the input, the two ways a host call runs
//! (the GPU's host door, or the CPU on the input widened to f32, its gradient
//! stored back in the input's type), and the public doors (`loss`,
//! `loss_and_grad`, `record`), written once in [`family_doors`].

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::family_call::{FamilyCall, FamilyInputs, FamilyTargets, HostFamilyBatch};
use crate::types::{Logits, LogitsMut, Loss, RowTargets, Shape};

/// Checks that `shape` is a plain (N, C) row-major one.
pub(crate) fn check_matrix_shape(shape: Shape) -> Result<()> {
    if shape.spatial != 1 {
        return Err(Error::InvalidOption(format!(
            "this loss takes (N, C) row-major inputs; the N-d layout (spatial size {}) is not supported",
            shape.spatial
        )));
    }
    shape.elements().map(|_| ())
}

/// Checks an (N, C) call: the shape, the input's and the gradient's lengths, and
/// the gradient's element type (the input's).
pub(crate) fn check_matrix_call(input: Logits<'_>, shape: Shape, gradient: Option<&LogitsMut<'_>>) -> Result<()> {
    check_matrix_shape(shape)?;
    shape.check_logits(input.len())?;
    if let Some(gradient) = gradient {
        shape.check_gradient(gradient.len())?;
        if gradient.logit_type() != input.logit_type() {
            return Err(Error::InvalidOption(format!(
                "the gradient ({:?}) must have the input's element type ({:?})",
                gradient.logit_type(),
                input.logit_type()
            )));
        }
    }
    Ok(())
}

/// The targets a family loss's `record` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordTargets {
    /// [`FamilyTargets::None`].
    None,
    /// [`FamilyTargets::PerElement`].
    PerElement,
    /// [`FamilyTargets::PerElement`] or [`FamilyTargets::Classes`].
    PerElementOrClasses,
}

/// Checks a device-resident call of `loss`: an (N, C) shape and the targets it takes.
pub(crate) fn check_record_inputs(inputs: &FamilyInputs<'_>, takes: RecordTargets, loss: &str) -> Result<()> {
    check_matrix_shape(inputs.shape)?;
    let taken = match inputs.targets {
        FamilyTargets::None => takes == RecordTargets::None,
        FamilyTargets::PerElement(_) => takes != RecordTargets::None,
        FamilyTargets::Classes(_) => takes == RecordTargets::PerElementOrClasses,
    };
    if !taken {
        return Err(Error::InvalidOption(format!(
            "{loss} takes targets {takes:?}, not {:?}",
            inputs.targets
        )));
    }
    Ok(())
}

/// Targets laid out like the input: one value per element.
pub(crate) fn check_targets_length(targets: &[f32], expected: usize) -> Result<()> {
    if targets.len() != expected {
        return Err(Error::ProbabilitiesLength {
            actual: targets.len(),
            expected,
        });
    }
    Ok(())
}

/// One checked host call of a family loss.
pub(crate) struct HostCall<'a> {
    pub input: Logits<'a>,
    /// One `f32` per element (`Soft`), a class per row, or none.
    pub targets: Option<RowTargets<'a>>,
    pub shape: Shape,
    pub gradient: Option<LogitsMut<'a>>,
}

impl HostCall<'_> {
    /// Runs the call on `backend`: `call` through the GPU's host door, or
    /// `on_cpu(input as f32, f32 gradient)` on the CPU, whose gradient is then
    /// stored in the input's type.
    pub(crate) fn run<B: Backend + ?Sized>(
        self,
        backend: &B,
        call: FamilyCall<'_>,
        on_cpu: impl FnOnce(&[f32], Option<&mut [f32]>) -> Loss,
    ) -> Result<Loss> {
        if let Some(context) = backend.gpu() {
            let batch = HostFamilyBatch {
                input: self.input,
                targets: self.targets,
                shape: self.shape,
                gradient: self.gradient,
            };
            return context.family_host(&call, batch);
        }
        let input = self.input.to_f32();
        Ok(match self.gradient {
            None => on_cpu(&input, None),
            Some(LogitsMut::F32(gradient)) => on_cpu(&input, Some(gradient)),
            Some(mut gradient) => {
                let mut wide = vec![0.0f32; gradient.len()];
                let loss = on_cpu(&input, Some(&mut wide));
                gradient.store_f32(&wide);
                loss
            }
        })
    }
}

/// The public doors of a family loss, each with the docs written where it is used:
///
/// - `fn loss(input[, targets: Type]);` makes `loss` and `fn loss_and_grad;` makes
///   `loss_and_grad`, on host slices and either backend: both hand `(backend,
///   input as Logits, [targets,] shape, gradient)` to the loss's own `compute`,
///   without and with the caller's gradient. A lifetime the target type names
///   goes after `loss`: `fn loss<'t>(probabilities, targets: impl Into<Targets<'t>>);`.
/// - `fn record(Takes, "the loss");` makes the device-resident `record`: it
///   checks that the inputs are (N, C) with targets [`RecordTargets`]`::Takes`, then
///   records, into the caller's encoder and outputs, the call that the loss's
///   own `with_device_call(inputs, record)` hands to `record` (its gradient
///   times `inputs.upstream`, which the host doors leave at
///   [`UpstreamGradient::ONE`](crate::UpstreamGradient::ONE)).
macro_rules! family_doors {
    (
        $(#[$loss_doc:meta])*
        fn loss$(<$target_lifetime:lifetime>)?($input:ident $(, $targets:ident: $target_type:ty)?);
        $(#[$gradient_doc:meta])*
        fn loss_and_grad;
        $(#[$record_doc:meta])*
        fn record($takes:ident, $loss_name:literal);
    ) => {
        $(#[$loss_doc])*
        pub fn loss<'a, $($target_lifetime,)? B: $crate::backend::Backend + ?Sized>(
            &self,
            backend: &B,
            $input: impl Into<$crate::types::Logits<'a>>,
            $($targets: $target_type,)?
            shape: $crate::types::Shape,
        ) -> $crate::error::Result<$crate::types::Loss> {
            self.compute(backend, $input.into(), $($targets,)? shape, None)
        }

        $(#[$gradient_doc])*
        pub fn loss_and_grad<'a, $($target_lifetime,)? 'g, B: $crate::backend::Backend + ?Sized>(
            &self,
            backend: &B,
            $input: impl Into<$crate::types::Logits<'a>>,
            $($targets: $target_type,)?
            shape: $crate::types::Shape,
            gradient: impl Into<$crate::types::LogitsMut<'g>>,
        ) -> $crate::error::Result<$crate::types::Loss> {
            self.compute(backend, $input.into(), $($targets,)? shape, Some(gradient.into()))
        }

        $(#[$record_doc])*
        ///
        /// An error found before anything is recorded (the inputs' shapes, types
        /// and aliasing, outputs of another context) leaves `encoder` as it was.
        /// After an [`Error::Gpu`](crate::Error::Gpu), wgpu's validation of the
        /// recording (a buffer of another device, say), wgpu may have marked
        /// `encoder` invalid: drop it and record into a new one.
        pub fn record(
            &self,
            context: &$crate::gpu::context::Context,
            encoder: &mut wgpu::CommandEncoder,
            inputs: &$crate::gpu::family_call::FamilyInputs<'_>,
            outputs: &$crate::gpu::outputs::DeviceOutputs,
        ) -> $crate::error::Result<()> {
            $crate::losses::family::check_record_inputs(
                inputs,
                $crate::losses::family::RecordTargets::$takes,
                $loss_name,
            )?;
            self.with_device_call(inputs, |call| context.record_family(call, encoder, inputs, outputs))
        }
    };
}
pub(crate) use family_doors;
