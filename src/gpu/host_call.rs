//! The host-slice door of the cross-entropy on the GPU: upload into the
//! context's workspace, record the same passes as the device-resident door
//! (`device_call.rs`), submit, and read the results back.

use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::device_call::{DeviceInputs, GradientOutput, UpstreamGradient};
use crate::gpu::readback::Wait;
use crate::options::CrossEntropyOptions;
use crate::types::{HostBatch, HostLogits, LossOutput};

impl Context {
    /// The host-slice door: upload into the workspace, record the same passes as
    /// [`CrossEntropyLoss::record`], copy results out, one submission, one readback.
    /// `wait` says where the readback waits for the GPU.
    pub(crate) async fn compute_host(
        &self,
        options: &CrossEntropyOptions,
        batch: HostBatch<'_>,
        wait: Wait,
    ) -> Result<LossOutput> {
        batch.validate(options)?;
        let HostBatch {
            logits,
            targets,
            shape,
            row_stats,
        } = batch;
        let logits_bytes = logits.logits().as_bytes();
        let logit_type = logits.logits().logit_type();
        let in_place = matches!(logits, HostLogits::InPlace(_));
        let mut workspace = self.lock_workspace().await;
        let buffers = workspace.ensure(
            self.gpu(),
            shape.rows,
            logits_bytes.len() as u64,
            targets.as_bytes().len() as u64,
            logits.has_gradient(),
            in_place,
            |workspace| self.note_workspace_size(workspace),
        )?;
        let call = self.checked(|| {
            self.queue()
                .write_buffer(buffers.logits, 0, &padded_to_words(logits_bytes));
            self.queue().write_buffer(buffers.targets, 0, targets.as_bytes());
            let mut encoder = self.device().create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("xent host call"),
            });
            let gradient = match (&logits, buffers.gradient) {
                (HostLogits::InPlace(_), _) => GradientOutput::InPlace,
                (HostLogits::WithGradient(..), Some(device_gradient)) => {
                    GradientOutput::Buffer(device_gradient.slice(..))
                }
                _ => GradientOutput::Skip,
            };
            let inputs = DeviceInputs {
                logits: buffers.logits.slice(..),
                logit_type,
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
                let source = buffers.gradient.unwrap_or(buffers.logits);
                let bytes = (logits_bytes.len() as u64).div_ceil(4) * 4;
                encoder.copy_buffer_to_buffer(source, 0, staging, 0, bytes);
            }
            self.queue().submit([encoder.finish()]);
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
        let output = buffers
            .outputs
            .finish_read(self.gpu(), call, row_stats, gradient, wait)
            .await;
        self.unlock_workspace(workspace);
        output
    }
}

/// `bytes` padded with zeros to whole 4-byte words (16-bit logits of odd count).
pub(crate) fn padded_to_words(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.len().is_multiple_of(4) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0);
    std::borrow::Cow::Owned(padded)
}
