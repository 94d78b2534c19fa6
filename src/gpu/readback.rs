//! Mapped readback: where a readback waits for the device ([`Wait`]), mapping
//! slices for reading, and unmapping on every path ([`UnmapOnDrop`]).

use crate::error::{Error, Result};
use crate::gpu::device::Gpu;

/// Where a readback waits for the GPU to finish and run the map callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Polls the device on the calling thread: the blocking doors, which block
    /// anyway, without the latency of a hop to another thread.
    Inline,
    /// Polls the device on a helper thread while the readback future is pending,
    /// so that the `*_async` doors leave the caller's executor free to run other
    /// tasks; the future is woken when the map callbacks have run.
    Background,
}

/// Unmaps its buffers when dropped. Inside xent's error scopes: a buffer whose
/// mapping failed or never started is not mapped, which wgpu reports as an error
/// that concerns no one once the readback has given up.
pub(crate) struct UnmapOnDrop<'a> {
    pub gpu: &'a Gpu,
    pub buffers: Vec<&'a wgpu::Buffer>,
}

impl Drop for UnmapOnDrop<'_> {
    fn drop(&mut self) {
        // Ignored: the readback's own result already says what went wrong.
        let _ = self.gpu.checked(|| {
            for buffer in &self.buffers {
                buffer.unmap();
            }
            Ok(())
        });
    }
}

pub(crate) fn mapped_bytes<'a>(slice: &wgpu::BufferSlice<'a>) -> Result<wgpu::BufferView> {
    slice
        .get_mapped_range()
        .map_err(|error| Error::Readback(error.to_string()))
}

/// Maps every slice for reading and waits until all are mapped, polling the
/// device where `wait` says. The map requests run inside xent's error scopes.
pub(crate) async fn map_for_reading(gpu: &Gpu, slices: &[wgpu::BufferSlice<'_>], wait: Wait) -> Result<()> {
    map_after(gpu, slices, None, wait).await
}

/// [`map_for_reading`] waiting only for `submission` (the one that last wrote
/// the slices; `None`: the latest), so that later submissions keep the GPU busy
/// while the host reads.
pub(crate) async fn map_after(
    gpu: &Gpu,
    slices: &[wgpu::BufferSlice<'_>],
    submission: Option<wgpu::SubmissionIndex>,
    wait: Wait,
) -> Result<()> {
    let receivers = gpu.checked(|| {
        Ok(slices
            .iter()
            .map(|slice| {
                let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
                slice.map_async(wgpu::MapMode::Read, move |result| {
                    // A receiver dropped with its future has no one to tell.
                    let _ = sender.send(result);
                });
                receiver
            })
            .collect::<Vec<_>>())
    })?;
    wait_for_submission(gpu.device(), submission, wait).await?;
    for receiver in receivers {
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(Error::Readback(error.to_string())),
            None => return Err(Error::Readback("the map callback never ran".into())),
        }
    }
    Ok(())
}

/// Waits until `submission` (`None`: the device's latest) is done and its
/// callbacks ran, polling where `wait` says.
pub(crate) async fn wait_for_submission(
    device: &wgpu::Device,
    submission: Option<wgpu::SubmissionIndex>,
    wait: Wait,
) -> Result<()> {
    match wait {
        Wait::Inline => poll_until_done(device, submission),
        Wait::Background => poll_in_background(device, submission).await,
    }
}

/// Blocks until `submission` (`None`: the latest) is done and its callbacks ran.
fn poll_until_done(device: &wgpu::Device, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
    device
        .poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        })
        .map(drop)
        .map_err(|error| Error::Readback(error.to_string()))
}

/// [`poll_until_done`] on a helper thread: the returned future is pending until
/// that poll returns (the map callbacks have then run), and nothing spins.
async fn poll_in_background(device: &wgpu::Device, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    let device = device.clone();
    std::thread::Builder::new()
        .name("xent readback poll".into())
        .spawn(move || {
            // The receiver is gone if the readback was dropped; the poll still ran.
            let _ = sender.send(poll_until_done(&device, submission));
        })
        .map_err(|error| Error::Readback(format!("starting the poll thread failed: {error}")))?;
    receiver.receive().await.unwrap_or_else(|| {
        Err(Error::Readback(
            "the poll thread stopped before the device was polled".into(),
        ))
    })
}
