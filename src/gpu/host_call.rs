//! The host-slice door of the cross-entropy on the GPU: upload the caller's
//! slices through the workspace's mapped upload buffers, record the same passes
//! as the device-resident door (`device_call.rs`) after the last upload, copy
//! the results out, and read them back. A call within one transfer piece
//! (`transfer.rs`) is one submission and one wait; a larger one uploads its
//! logits and reads its gradient back a piece at a time, the host's copies
//! beside the device's. The passes themselves run after the whole upload (the
//! gradient of a mean needs every target's weight first, and wgpu tracks a
//! buffer's use as a whole, so a copy into the logits buffer would wait for a
//! pass reading another part of it anyway); the device-resident door
//! ([`CrossEntropyLoss::record`](crate::CrossEntropyLoss::record)) is the way to
//! keep the data on the device instead.

use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::device_call::{DeviceInputs, GradientOutput, UpstreamGradient};
use crate::gpu::readback::Wait;
use crate::gpu::workspace::{Caller, HostRequest, Workspace};
use crate::options::{CrossEntropyOptions, Reduction};
use crate::types::{HostBatch, HostLogits, LogitsMut, LossOutput, Shape, Targets};

impl Context {
    /// The host-slice door: upload into the workspace, record the same passes as
    /// [`CrossEntropyLoss::record`], copy results out, one submission, one readback.
    /// `wait` says where the readback (and the wait for the upload buffers'
    /// mapping) waits for the GPU.
    pub(crate) async fn compute_host(
        &self,
        options: &CrossEntropyOptions,
        batch: HostBatch<'_>,
        wait: Wait,
    ) -> Result<LossOutput> {
        batch.validate(options)?;
        let mut workspace = self.lock_workspace().await;
        let output = self.compute_in_workspace(options, batch, &mut workspace, wait).await;
        self.unlock_workspace(workspace);
        output
    }

    async fn compute_in_workspace(
        &self,
        options: &CrossEntropyOptions,
        batch: HostBatch<'_>,
        workspace: &mut Workspace,
        wait: Wait,
    ) -> Result<LossOutput> {
        let HostBatch {
            logits,
            targets,
            shape,
            row_stats,
        } = batch;
        let logits_bytes = logits.logits().as_bytes();
        let request = HostRequest {
            values: shape.rows,
            input_bytes: logits_bytes.len() as u64,
            target_bytes: targets.as_bytes().len() as u64,
            with_gradient: logits.has_gradient(),
            in_place: matches!(logits, HostLogits::InPlace(_)),
        };
        let mut buffers = workspace
            .ensure(self.gpu(), Caller::CrossEntropy, &request, wait)
            .await?;
        let mut encoder = buffers
            .upload(self.gpu(), logits_bytes, targets.as_bytes(), wait)
            .await?;
        let (call, submission) = self.checked(|| {
            let gradient = match (&logits, buffers.gradient) {
                (HostLogits::InPlace(_), _) => GradientOutput::InPlace,
                (HostLogits::WithGradient(..), Some(device_gradient)) => {
                    GradientOutput::Buffer(device_gradient.slice(..))
                }
                _ => GradientOutput::Skip,
            };
            let inputs = DeviceInputs {
                logits: buffers.input.slice(..),
                logit_type: logits.logits().logit_type(),
                targets: buffers.targets.slice(..),
                target_type: targets.target_type(),
                shape,
                gradient,
                upstream: UpstreamGradient::ONE,
            };
            let divisor = host_divisor(options, &targets, shape, logits.has_gradient());
            self.record_cross_entropy(options, &mut encoder, &inputs, buffers.outputs, None, divisor)?;
            let call = buffers.outputs.recorded()?;
            buffers.outputs.copy_to_staging(&mut encoder, call, row_stats);
            let submission = buffers.submit(self.gpu(), encoder)?;
            Ok((call, submission))
        })?;
        let mut gradient = match logits {
            HostLogits::LossOnly(_) => None,
            HostLogits::WithGradient(_, gradient) | HostLogits::InPlace(gradient) => Some(gradient),
        };
        let gradient = gradient.as_mut().map(LogitsMut::as_bytes_mut);
        buffers
            .read_back(self.gpu(), call, row_stats, gradient, submission, wait)
            .await
    }
}

/// Rows up to which an f32 count of rows is exact (2^24), as the divisor pass's
/// f32 sum of ones is.
const EXACT_F32_COUNT: usize = 1 << 24;

/// The divisor of a mean with a gradient over class targets, counted here from
/// the host's targets instead of by a pass before the row kernel, where the
/// count has the pass's bits: without weights, the rows not ignored (exact in
/// f32 up to 2^24 rows). `None` (the pass counts) for weights, whose f32 sum's
/// bits depend on its order, for more rows, for soft targets (whose constant N
/// the kernel's parameters carry) and where no gradient reads it first (a
/// loss-only mean sums it in the final reduction).
fn host_divisor(options: &CrossEntropyOptions, targets: &Targets<'_>, shape: Shape, gradient: bool) -> Option<f32> {
    if options.reduction != Reduction::Mean || !gradient {
        return None;
    }
    if targets.is_probabilities() || options.weight.is_some() || shape.rows > EXACT_F32_COUNT {
        return None;
    }
    Some(targets.count_not_ignored(options.ignore_index) as f32)
}
