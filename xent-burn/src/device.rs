//! One xent [`Context`] per Burn wgpu device, built on the device and queue Burn
//! runs on (`Context::from_wgpu`), so that xent reads Burn's buffers in place.

use std::sync::{Arc, Mutex};

use burn::backend::DispatchDevice;
use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;
use burn_cubecl::CubeDevice;
use xent::{Context, ContextOptions, DeviceOutputs};

use crate::error::{Error, Result};

/// The xent state of one Burn wgpu device.
pub(crate) struct SharedDevice {
    /// Burn's device, to find this entry from a tensor.
    pub(crate) device: CubeDevice,
    /// xent on Burn's own wgpu device and queue.
    pub(crate) context: Context,
    /// Reused across calls; grown when a batch has more rows. Held while a call
    /// records and submits, so calls on one device do not share it.
    pub(crate) outputs: Mutex<Option<DeviceOutputs>>,
    /// Buffers of xent-burn's own that small inputs (targets, upstream values)
    /// are copied into when they share the buffer the gradient is written to.
    pub(crate) staging: Mutex<Staging>,
}

impl SharedDevice {
    /// Runs `record` with this device's outputs, grown first to hold `rows`
    /// rows; they stay locked (no other call on the device uses them) until
    /// `record` returns, so record and submit inside it.
    pub(crate) fn with_outputs<T>(&self, rows: usize, record: impl FnOnce(&DeviceOutputs) -> Result<T>) -> Result<T> {
        let mut outputs = self.outputs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = match &mut *outputs {
            Some(outputs) if outputs.capacity_rows() >= rows => outputs,
            slot => slot.insert(DeviceOutputs::new(&self.context, rows)?),
        };
        record(outputs)
    }
}

/// Reused staging buffers, grown when a call needs more bytes.
#[derive(Default)]
pub(crate) struct Staging {
    pub(crate) targets: Option<wgpu::Buffer>,
    pub(crate) upstream: Option<wgpu::Buffer>,
}

/// The buffer in `slot`, replaced by a bigger one when it holds fewer than
/// `bytes` bytes (storage, copy destination; at least 4 bytes).
pub(crate) fn staging_buffer(device: &wgpu::Device, slot: &mut Option<wgpu::Buffer>, bytes: u64) -> wgpu::Buffer {
    let size = bytes.max(4).next_multiple_of(4);
    match slot {
        Some(buffer) if buffer.size() >= size => buffer.clone(),
        _ => {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("xent-burn staged input"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            *slot = Some(buffer.clone());
            buffer
        }
    }
}

static DEVICES: Mutex<Vec<Arc<SharedDevice>>> = Mutex::new(Vec::new());

/// Starts Burn's wgpu runtime (default adapter) and registers an xent context on
/// its device and queue; returns the Burn device to put tensors on.
///
/// ```no_run
/// let device = xent_burn::init_wgpu()?; // or `.autodiff()` for training
/// # Ok::<(), xent_burn::Error>(())
/// ```
pub fn init_wgpu() -> Result<Device> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|error| Error::Runtime(format!("{error:?}")))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Registers an xent context on `setup`, the wgpu handles Burn's runtime for
/// `device` uses (as `Device::wgpu_options().init_with_setup()` returns them).
/// Registering a device again replaces its context.
///
/// ```no_run
/// use burn::tensor::Device;
///
/// let (device, setup) = Device::wgpu_options().init_with_setup().expect("wgpu");
/// xent_burn::register(&device, &setup)?;
/// # Ok::<(), xent_burn::Error>(())
/// ```
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<()> {
    let cube = cube_device(device)?;
    let context = Context::from_wgpu(
        setup.adapter.clone(),
        setup.device.clone(),
        setup.queue.clone(),
        ContextOptions::default(),
    )?;
    let shared = Arc::new(SharedDevice {
        device: cube.clone(),
        context,
        outputs: Mutex::new(None),
        staging: Mutex::new(Staging::default()),
    });
    let mut devices = DEVICES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    devices.retain(|entry| entry.device != cube);
    devices.push(shared);
    Ok(())
}

/// The xent state registered for `device`.
pub(crate) fn shared_device(device: &CubeDevice) -> Result<Arc<SharedDevice>> {
    if !matches!(device, CubeDevice::Wgpu(_)) {
        return Err(Error::UnsupportedBackend(format!("the tensor is on {device:?}")));
    }
    let devices = DEVICES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    devices
        .iter()
        .find(|entry| entry.device == *device)
        .cloned()
        .ok_or(Error::NotRegistered)
}

/// The cube (wgpu) device under a Burn device, looking through `Autodiff`.
pub(crate) fn cube_device(device: &Device) -> Result<CubeDevice> {
    let mut dispatch = device.as_dispatch().clone();
    while let DispatchDevice::Autodiff(inner) = dispatch {
        dispatch = inner.inner();
    }
    match dispatch {
        DispatchDevice::Cube(cube @ CubeDevice::Wgpu(_)) => Ok(cube),
        other => Err(Error::UnsupportedBackend(format!(
            "the device is {:?}",
            Device::new(other)
        ))),
    }
}
