//! The host-slice door of the cross-entropy on the GPU: write the caller's
//! slices into the workspace's mapped upload buffers, then in one submission
//! copy them into the device buffers, record the same passes as the
//! device-resident door (`device_call.rs`) and copy the results out; map the
//! upload buffers again for the next call, and read the results back.
//!
//! Row chunks (when the logits exceed the binding limit) are not overlapped
//! with the transfers: the uploads, every chunk's dispatches and the readback
//! copies are one submission, and wgpu tracks a buffer's use as a whole, so a
//! copy into the logits buffer after a dispatch that reads another part of it
//! waits for that dispatch (a barrier) anyway. The host-side writes could only
//! run beside the GPU's work with one submission per chunk, a second upload
//! buffer and a record pass per chunk; the device-resident door
//! ([`CrossEntropyLoss::record`](crate::CrossEntropyLoss::record)) is the way to
//! keep the data on the device instead.

use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::device_call::{DeviceInputs, GradientOutput, UpstreamGradient};
use crate::gpu::readback::Wait;
use crate::gpu::upload::word_padded;
use crate::gpu::workspace::{Caller, HostRequest, Workspace};
use crate::options::CrossEntropyOptions;
use crate::types::{HostBatch, HostLogits, LossOutput};

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
        let buffers = workspace
            .ensure(self.gpu(), Caller::CrossEntropy, &request, wait)
            .await?;
        let call = self.checked(|| {
            let mut encoder = self.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent host call"),
            });
            buffers.upload(&mut encoder, logits_bytes, targets.as_bytes())?;
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
            self.record_cross_entropy(options, &mut encoder, &inputs, buffers.outputs, None)?;
            let call = buffers.outputs.recorded()?;
            buffers.outputs.copy_to_staging(&mut encoder, call, row_stats);
            if let Some(staging) = buffers.gradient_staging {
                let source = buffers.gradient.unwrap_or(buffers.input);
                encoder.copy_buffer_to_buffer(source, 0, staging, 0, word_padded(logits_bytes.len() as u64));
            }
            buffers.submit(self.gpu(), encoder)?;
            Ok(call)
        })?;
        let destination = match logits {
            HostLogits::LossOnly(_) => None,
            HostLogits::WithGradient(_, gradient) | HostLogits::InPlace(gradient) => Some(gradient),
        };
        let gradient = match (buffers.gradient_staging, destination) {
            (Some(staging), Some(values)) => Some((staging, values)),
            _ => None,
        };
        buffers
            .outputs
            .finish_read(self.gpu(), call, row_stats, gradient, wait)
            .await
    }
}
