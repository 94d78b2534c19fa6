//! The device under every GPU call: the adapter, device and queue, the binding
//! cap, and xent's error scopes (what they catch, the application's uncaptured
//! errors, the loss of the device). The bottom of the GPU backend: the kernels,
//! buffers and readback take a [`Gpu`]; the [`Context`](crate::Context) owns one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// Uncaptured errors a context keeps for [`Context::take_uncaptured_errors`](crate::Context::take_uncaptured_errors);
/// older ones are dropped first.
const MAX_UNCAPTURED_ERRORS: usize = 64;

/// What the device's callbacks report outside xent's error scopes.
#[derive(Default)]
struct DeviceErrors {
    /// Errors raised outside every error scope (the application's), the newest
    /// [`MAX_UNCAPTURED_ERRORS`].
    uncaptured: Mutex<VecDeque<String>>,
    /// Why the device was lost, once it was.
    lost: Mutex<Option<String>>,
}

/// One adapter, its device and queue, the binding cap, and the errors the
/// device's callbacks reported.
pub(crate) struct Gpu {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    max_binding_size: u64,
    device_errors: Arc<DeviceErrors>,
    /// Unique in the process: tells the objects made on this `Gpu` (such as
    /// `DeviceOutputs`) from another's. (`wgpu::Device`'s equality compares ids
    /// that repeat across instances, and a buffer of another instance's device is
    /// looked up by its id in this one's: a panic, or silently another buffer.)
    identity: u64,
}

/// The next [`Gpu::identity`].
static NEXT_IDENTITY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Gpu {
    /// Wraps a freshly requested device, installing xent's handlers for uncaptured
    /// errors and the loss of the device.
    pub(crate) fn new(adapter: wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue, max_binding_size: u64) -> Self {
        let gpu = Self::borrowed(adapter, device, queue, max_binding_size);
        install_error_handlers(&gpu.device, &gpu.device_errors);
        gpu
    }

    /// Wraps a device the caller owns: no device-wide handler is installed (the
    /// caller's stay in place), so nothing is kept for `take_uncaptured_errors`
    /// and the loss of the device shows only as the errors of later calls.
    pub(crate) fn borrowed(
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        max_binding_size: u64,
    ) -> Self {
        Self {
            adapter,
            device,
            queue,
            max_binding_size,
            device_errors: Arc::new(DeviceErrors::default()),
            identity: NEXT_IDENTITY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This `Gpu`'s identity, unique in the process.
    pub(crate) fn identity(&self) -> u64 {
        self.identity
    }

    pub(crate) fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The device's limits (the adapter's own, requested in full).
    pub(crate) fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Bytes bound per storage binding at most; larger problems are chunked.
    pub(crate) fn max_binding_size(&self) -> u64 {
        self.max_binding_size
    }

    /// The uncaptured errors kept since the last call, oldest first, forgotten here.
    pub(crate) fn take_uncaptured_errors(&self) -> Vec<String> {
        let mut errors = self
            .device_errors
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        errors.drain(..).collect()
    }

    /// Runs `work` inside validation, out-of-memory and internal error scopes on
    /// this thread and turns what they catch (or the loss of the device) into
    /// [`Error::Gpu`]. Only xent's own device work runs in `work`; errors the
    /// application raises elsewhere are never reported here.
    pub(crate) fn checked<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = scoped(&self.device, work);
        self.check_device_lost()?;
        result
    }

    /// [`Error::Gpu`] once the device is lost (every later call fails).
    pub(crate) fn check_device_lost(&self) -> Result<()> {
        let lost = self.device_errors.lost.lock().unwrap_or_else(PoisonError::into_inner);
        match lost.as_ref() {
            Some(message) => Err(Error::Gpu(message.clone())),
            None => Ok(()),
        }
    }
}

/// Runs `work` inside validation, out-of-memory and internal error scopes pushed
/// on this thread (wgpu's scopes are per thread) and popped before returning, so
/// they catch exactly the errors `work` raises. A caught error wins over `work`'s
/// own result.
pub(crate) fn scoped<T>(device: &wgpu::Device, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = work();
    // Popped in reverse order; on wgpu-core the futures are ready at once.
    let validation_error = pollster::block_on(validation.pop());
    let memory_error = pollster::block_on(out_of_memory.pop());
    let internal_error = pollster::block_on(internal.pop());
    match validation_error.or(memory_error).or(internal_error) {
        Some(error) => Err(Error::Gpu(error.to_string())),
        None => result,
    }
}

/// wgpu's default handler panics on an uncaptured error. xent's own work never
/// raises one (it runs inside its error scopes), so what arrives here is the
/// application's: kept (the newest [`MAX_UNCAPTURED_ERRORS`]) for
/// [`Context::take_uncaptured_errors`](crate::Context::take_uncaptured_errors), never reported by a xent call. The loss
/// of the device is kept apart and reported by every later call.
fn install_error_handlers(device: &wgpu::Device, errors: &Arc<DeviceErrors>) {
    let sink = Arc::clone(errors);
    device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
        let mut uncaptured = sink.uncaptured.lock().unwrap_or_else(PoisonError::into_inner);
        if uncaptured.len() == MAX_UNCAPTURED_ERRORS {
            uncaptured.pop_front();
        }
        uncaptured.push_back(error.to_string());
    }));
    let sink = Arc::clone(errors);
    device.set_device_lost_callback(move |reason, message| {
        let mut lost = sink.lost.lock().unwrap_or_else(PoisonError::into_inner);
        lost.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
    });
}
