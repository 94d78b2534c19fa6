//! The GPU context: adapter choice, device and queue, the adapter's real limits
//! and features, the compiled kernels and the reusable host-call workspace.
//! Make one [`Context`] and reuse it for every call (it is `Send + Sync`).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::buffers::Workspace;
pub use crate::gpu::kernels::WORKGROUP_SIZE_CHOICES;
use crate::gpu::kernels::{Kernels, choose_workgroup_size};

/// How to pick and configure the adapter.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Backends to search. `None`: the `WGPU_BACKEND` environment variable
    /// (e.g. `vulkan`, `gl`, `metal`, `dx12`), else all of them.
    pub backends: Option<wgpu::Backends>,
    /// Use the first adapter whose name contains this (case-insensitive). `None`:
    /// the `WGPU_ADAPTER_NAME` environment variable, else the best-ranked adapter.
    pub adapter_name: Option<String>,
    /// Ranking of adapter types when no name is given: `HighPerformance` (default)
    /// prefers discrete over integrated GPUs, `LowPower` the reverse. Software
    /// adapters (lavapipe, llvmpipe) always rank last.
    pub power_preference: wgpu::PowerPreference,
    /// Use subgroup operations for the workgroup reductions when the adapter has
    /// `Features::SUBGROUP` (default `true`). `false` forces the workgroup-memory
    /// fallback.
    pub use_subgroups: bool,
    /// Cap on the bytes bound per storage binding, below the adapter's
    /// `max_storage_buffer_binding_size`. Problems larger than a binding are split
    /// into row chunks inside one submission; lowering the cap exercises that path.
    pub max_binding_size: Option<u64>,
    /// Invocations per workgroup of the categorical cross-entropy row kernels,
    /// one of [`WORKGROUP_SIZE_CHOICES`]. `None` (default): chosen for the
    /// adapter, its preference halved until the adapter's limits allow it. The
    /// preference is 64 on CPU adapters (lavapipe, llvmpipe; measured fastest on
    /// lavapipe) and 256 on GPUs (not yet tuned on one; BENCHMARKS.md). A size
    /// outside the choices or the adapter's limits is an [`Error::InvalidOption`].
    /// `xent bench --workgroup-size` times the choices side by side.
    pub workgroup_size: Option<u32>,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter_name: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
            use_subgroups: true,
            max_binding_size: None,
            workgroup_size: None,
        }
    }
}

/// The GPU side of the crate: one adapter, its device and queue, compiled kernels,
/// and buffers reused across calls.
pub struct Context {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    kernels: Kernels,
    workspace: futures_intrusive::sync::Mutex<Workspace>,
    max_binding_size: u64,
    uncaptured_errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Context")
            .field("adapter", &self.adapter.get_info())
            .field("subgroups", &self.kernels.uses_subgroups())
            .field("workgroup_size", &self.kernels.workgroup_size())
            .field("max_binding_size", &self.max_binding_size)
            .finish()
    }
}

impl Context {
    /// A context on the best adapter, honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// A context configured by `options` (blocking).
    pub fn with_options(options: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// A context configured by `options`.
    pub async fn with_options_async(options: ContextOptions) -> Result<Self> {
        let backends = options.backends.unwrap_or_else(|| wgpu::Backends::all().with_env());
        let instance = new_instance(backends);
        let adapters = instance.enumerate_adapters(backends).await;
        let adapter = choose_adapter(adapters, &options)?;
        let features = requested_features(&adapter, &options);
        // The adapter's real limits, not wgpu's conservative defaults.
        let limits = adapter.limits();
        let workgroup_size = choose_workgroup_size(&adapter.get_info(), &limits, options.workgroup_size)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("xent"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|error| Error::RequestDevice(error.to_string()))?;
        let uncaptured_errors = Arc::new(Mutex::new(Vec::new()));
        install_error_handlers(&device, &uncaptured_errors);
        let max_binding_size = binding_cap(&limits, options.max_binding_size);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = Kernels::new(
            &device,
            &adapter,
            features.contains(wgpu::Features::SUBGROUP),
            workgroup_size,
        );
        if let Some(error) = scope.pop().await {
            return Err(Error::Gpu(format!("compiling the kernels failed: {error}")));
        }
        Ok(Self {
            adapter,
            device,
            queue,
            kernels,
            workspace: futures_intrusive::sync::Mutex::new(Workspace::default(), true),
            max_binding_size,
            uncaptured_errors,
        })
    }

    /// Every adapter wgpu finds on this machine for `backends` (`None`: `WGPU_BACKEND` or all).
    pub fn available_adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::AdapterInfo> {
        let backends = backends.unwrap_or_else(|| wgpu::Backends::all().with_env());
        let instance = new_instance(backends);
        pollster::block_on(instance.enumerate_adapters(backends))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    }

    /// Name, backend, driver and type of the chosen adapter.
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.adapter.get_info()
    }

    /// The device's limits (the adapter's own, requested in full).
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// True when the kernels use subgroup reductions.
    pub fn uses_subgroups(&self) -> bool {
        self.kernels.uses_subgroups()
    }

    /// Invocations per workgroup of the categorical cross-entropy row kernels.
    pub fn workgroup_size(&self) -> u32 {
        self.kernels.workgroup_size()
    }

    /// Bytes bound per storage binding at most; larger problems are chunked.
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding_size
    }

    /// The wgpu device, for creating the buffers of device-resident calls.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub(crate) fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The host-call workspace; one host call at a time uses it.
    pub(crate) async fn lock_workspace(&self) -> futures_intrusive::sync::MutexGuard<'_, Workspace> {
        self.workspace.lock().await
    }

    /// Runs `work` inside validation and out-of-memory error scopes and turns any
    /// error wgpu raised (or one reported since the last call) into [`Error::Gpu`].
    pub(crate) fn checked<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        let validation_error = pollster::block_on(validation.pop());
        let memory_error = pollster::block_on(out_of_memory.pop());
        if let Some(error) = validation_error.or(memory_error) {
            return Err(Error::Gpu(error.to_string()));
        }
        self.take_uncaptured_error()?;
        result
    }

    fn take_uncaptured_error(&self) -> Result<()> {
        let mut errors = self
            .uncaptured_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match errors.drain(..).next() {
            Some(message) => Err(Error::Gpu(message)),
            None => Ok(()),
        }
    }
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

/// Adapter selection: a name match when one is asked for, else the best rank.
fn choose_adapter(adapters: Vec<wgpu::Adapter>, options: &ContextOptions) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "wgpu found no adapter; on a machine without a GPU install Mesa's software Vulkan \
             driver (apt-get install mesa-vulkan-drivers) or use the CPU backend"
                .into(),
        ));
    }
    let wanted_name = options
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|name| !name.is_empty());
    if let Some(wanted) = wanted_name {
        let names: Vec<String> = adapters.iter().map(|adapter| adapter.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|adapter| adapter.get_info().name.to_lowercase().contains(&wanted.to_lowercase()))
            .ok_or_else(|| Error::NoAdapter(format!("no adapter name contains {wanted:?}; found {names:?}")));
    }
    adapters
        .into_iter()
        .min_by_key(|adapter| adapter_rank(&adapter.get_info(), options.power_preference))
        .ok_or_else(|| Error::NoAdapter("no adapter".into()))
}

/// Lower is better: device type first, then native backends before GL.
fn adapter_rank(info: &wgpu::AdapterInfo, preference: wgpu::PowerPreference) -> (u8, u8) {
    let type_rank = match (info.device_type, preference) {
        (wgpu::DeviceType::DiscreteGpu, wgpu::PowerPreference::LowPower) => 1,
        (wgpu::DeviceType::DiscreteGpu, _) => 0,
        (wgpu::DeviceType::IntegratedGpu, wgpu::PowerPreference::LowPower) => 0,
        (wgpu::DeviceType::IntegratedGpu, _) => 1,
        (wgpu::DeviceType::VirtualGpu, _) => 2,
        (wgpu::DeviceType::Other, _) => 3,
        (wgpu::DeviceType::Cpu, _) => 4,
    };
    let backend_rank = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (type_rank, backend_rank)
}

fn requested_features(adapter: &wgpu::Adapter, options: &ContextOptions) -> wgpu::Features {
    let mut wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
    if options.use_subgroups {
        wanted |= wgpu::Features::SUBGROUP;
    }
    adapter.features() & wanted
}

/// The binding cap: the adapter's limit, optionally lowered, in whole 4-byte words.
fn binding_cap(limits: &wgpu::Limits, requested: Option<u64>) -> u64 {
    let adapter_limit = limits.max_storage_buffer_binding_size;
    let cap = requested.map_or(adapter_limit, |requested| requested.min(adapter_limit));
    cap / 4 * 4
}

/// wgpu's default handler panics on an uncaptured error; record it instead so the
/// next call returns it as [`Error::Gpu`].
fn install_error_handlers(device: &wgpu::Device, errors: &Arc<Mutex<Vec<String>>>) {
    let sink = Arc::clone(errors);
    device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
        let mut errors = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        errors.push(error.to_string());
    }));
    let sink = Arc::clone(errors);
    device.set_device_lost_callback(move |reason, message| {
        let mut errors = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        errors.push(format!("device lost ({reason:?}): {message}"));
    });
}
