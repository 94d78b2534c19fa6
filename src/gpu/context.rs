//! The GPU context: adapter choice, device and queue, the adapter's real limits
//! and features, the compiled kernels and the reusable host-call workspace.
//! Make one [`Context`] and reuse it for every call (it is `Send + Sync`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::gpu::device::{Gpu, scoped};
use crate::gpu::gradient_order::GradientOrder;
use crate::gpu::kernels::{KernelChoices, Kernels};
use crate::gpu::row_split::RowSplit;
use crate::gpu::shader_checks::ShaderChecks;
use crate::gpu::transfer::{DEFAULT_TRANSFER_PIECE_BYTES, check_piece_bytes};
use crate::gpu::unaligned_f32::UnalignedF32;
use crate::gpu::workgroup::choose_workgroup_size;
use crate::gpu::workspace::Workspace;
use crate::types::{LogitType, Shape};

/// How to pick and configure the adapter.
///
/// ```no_run
/// use xent::{Context, ContextOptions};
///
/// let context = Context::with_options(ContextOptions {
///     adapter_name: Some("llvmpipe".into()), // Mesa's lavapipe
///     workgroup_size: Some(64),
///     ..ContextOptions::default()
/// })?;
/// assert_eq!(context.workgroup_size(), 64);
/// # Ok::<(), xent::Error>(())
/// ```
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
    /// one of [`WORKGROUP_SIZE_CHOICES`](crate::WORKGROUP_SIZE_CHOICES). `None` (default): chosen for the
    /// adapter, its preference halved until the adapter's limits allow it. The
    /// preference is 64 on CPU adapters (lavapipe, llvmpipe; measured fastest on
    /// lavapipe), 512 on NVIDIA GPUs (measured on an H200) and 256 on other GPUs (not yet tuned; BENCHMARKS.md). A size
    /// outside the choices or the adapter's limits is an [`Error::InvalidOption`].
    /// `xent bench --workgroup-size` times the choices side by side.
    pub workgroup_size: Option<u32>,
    /// Whether the categorical cross-entropy splits long rows across
    /// workgroups to read each logit once ([`RowSplit`]; default
    /// [`RowSplit::Off`]: not yet timed on a GPU, `xent bench --row-split`
    /// compares). A [`RowSplit::Forced`] outside its choices is an
    /// [`Error::InvalidOption`].
    pub row_split: RowSplit,
    /// How the categorical cross-entropy reaches f32 rows that are not in
    /// aligned groups of 4 logits ([`UnalignedF32`]; default
    /// [`UnalignedF32::Auto`]: vectors on hardware Vulkan and DX12 adapters,
    /// entries elsewhere). [`UnalignedF32::Vectors`] on another backend is an
    /// [`Error::InvalidOption`].
    pub unaligned_f32: UnalignedF32,
    /// Host-slice calls move their logits in and their gradient out in pieces
    /// of at most this many bytes (default
    /// [`DEFAULT_TRANSFER_PIECE_BYTES`](crate::DEFAULT_TRANSFER_PIECE_BYTES),
    /// 64 MiB), through two mapped buffers each way, so that the host's copy of
    /// one piece overlaps the device's copy of the next; the workspace holds
    /// two pieces each way rather than the whole batch. A call within one piece
    /// is one submission. Not a positive multiple of 256: an
    /// [`Error::InvalidOption`].
    pub transfer_piece_bytes: u64,
    /// In which order the categorical cross-entropy's gradient pass walks a
    /// row's groups ([`GradientOrder`]; default [`GradientOrder::Forward`]:
    /// `Backward` is not yet timed on a GPU, `xent bench --gradient-order` compares).
    pub gradient_order: GradientOrder,
    /// Which of wgpu's run-time checks every kernel is compiled with
    /// ([`ShaderChecks`]; default [`ShaderChecks::Trusted`]: all but naga's
    /// forced loop bound, which no loop of xent's needs; `xent bench
    /// --shader-checks` compares).
    pub shader_checks: ShaderChecks,
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
            row_split: RowSplit::Off,
            unaligned_f32: UnalignedF32::Auto,
            transfer_piece_bytes: DEFAULT_TRANSFER_PIECE_BYTES,
            gradient_order: GradientOrder::Forward,
            shader_checks: ShaderChecks::Trusted,
        }
    }
}

/// The GPU side of the crate: one adapter, its device and queue, compiled kernels,
/// and buffers reused across calls.
///
/// # Sharing the device
///
/// [`Context::device`] and [`Context::queue`] can be used for the application's
/// own work. xent runs all the device work of a call inside its own error scopes
/// (validation, out-of-memory and internal, on the calling thread) and reports
/// only what those scopes catch, as [`Error::Gpu`] from that call, plus the loss
/// of the device, which every later call reports. Errors the application causes
/// never come back from a xent call: those it catches in its own error scopes
/// stay there, and those it leaves uncaptured go to the handler this context
/// installs in place of wgpu's default (which panics), where they wait for
/// [`Context::take_uncaptured_errors`]. An application that installs its own
/// handler with `device().on_uncaptured_error` replaces that one; xent does not
/// depend on it.
///
/// ```no_run
/// use xent::{Context, CrossEntropyLoss, Shape};
///
/// let context = Context::new()?; // once: adapter, device, compiled kernels
/// println!("{} (workgroups of {})", context.adapter_info().name, context.workgroup_size());
/// let loss = CrossEntropyLoss::new().loss(&context, &[0.0f32, 0.0], &[1i64], Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), xent::Error>(())
/// ```
pub struct Context {
    gpu: Gpu,
    kernels: Kernels,
    workspace: futures_intrusive::sync::Mutex<Workspace>,
    /// Set by [`Context::release_buffers`] while a host call holds the workspace;
    /// that call releases it when done.
    release_requested: AtomicBool,
    /// Bytes of the workspace's device buffers, updated whenever it changes.
    workspace_bytes: AtomicU64,
    /// [`ContextOptions::transfer_piece_bytes`], checked.
    transfer_piece_bytes: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Context")
            .field("adapter", &self.gpu.adapter().get_info())
            .field("subgroups", &self.kernels.uses_subgroups())
            .field("workgroup_size", &self.kernels.workgroup_size())
            .field("max_binding_size", &self.gpu.max_binding_size())
            .field("row_split", &self.kernels.cross_entropy.row_split())
            .field("unaligned_f32", &self.kernels.cross_entropy.unaligned_f32())
            .field("transfer_piece_bytes", &self.transfer_piece_bytes)
            .field("gradient_order", &self.kernels.cross_entropy.gradient_order())
            .field("shader_checks", &self.kernels.shader_checks())
            .finish()
    }
}

impl Context {
    /// A context on the best adapter, honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, Shape};
    ///
    /// let context = Context::new()?;
    /// let loss = CrossEntropyLoss::new().loss(&context, &[0.0f32, 2.0], &[1i64], Shape::new(1, 2))?;
    /// assert!((loss.value().unwrap() - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2)
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// A context configured by `options` (blocking).
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions};
    ///
    /// let options = ContextOptions { use_subgroups: false, ..ContextOptions::default() };
    /// assert!(!Context::with_options(options)?.uses_subgroups());
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn with_options(options: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// A context configured by `options`.
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions};
    ///
    /// let options = ContextOptions { backends: Some(wgpu::Backends::VULKAN), ..ContextOptions::default() };
    /// let context = pollster::block_on(Context::with_options_async(options))?; // or `.await`
    /// assert_eq!(context.adapter_info().backend, wgpu::Backend::Vulkan);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub async fn with_options_async(options: ContextOptions) -> Result<Self> {
        let backends = options.backends.unwrap_or_else(|| wgpu::Backends::all().with_env());
        let adapters = enumerate_adapters(backends).await;
        let adapter = choose_adapter(adapters, &options)?;
        let features = requested_features(&adapter, &options);
        // The adapter's real limits, not wgpu's conservative defaults.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("xent"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|error| Error::RequestDevice(error.to_string()))?;
        Self::assemble(adapter, device, queue, &options, DeviceOwner::Xent)
    }

    /// A context on a device someone else created and owns (an application, or a
    /// framework such as Burn's wgpu backend), so that xent's kernels and the
    /// caller's work share one device and queue and buffers pass between them
    /// without a host round trip.
    ///
    /// The device is used as it is: its enabled features (`SHADER_F16` for
    /// `vec4<f16>` loads of f16 logits, else read as halves of 32-bit words,
    /// `SUBGROUP` for subgroup reductions if `options.use_subgroups`,
    /// `TIMESTAMP_QUERY`) and its limits (the binding cap, the workgroup size)
    /// decide what the kernels do; `options.backends`, `adapter_name` and
    /// `power_preference` are ignored. xent installs **no** device-wide handler on
    /// a device it does not own: its own errors still come back from its calls
    /// (error scopes), the application's uncaptured errors stay with the
    /// application's handler (and [`Context::take_uncaptured_errors`] returns
    /// none), and a lost device shows as the errors of later calls.
    ///
    /// ```no_run
    /// # async fn demo() -> xent::Result<()> {
    /// let instance = wgpu::Instance::default();
    /// let adapter = instance.request_adapter(&wgpu::RequestAdapterOptions::default()).await.unwrap();
    /// let (device, queue) = adapter.request_device(&wgpu::DeviceDescriptor::default()).await.unwrap();
    /// let context = xent::Context::from_wgpu(adapter, device.clone(), queue.clone(), Default::default())?;
    /// assert_eq!(context.device().features(), device.features());
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_wgpu(
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: ContextOptions,
    ) -> Result<Self> {
        Self::assemble(adapter, device, queue, &options, DeviceOwner::Caller)
    }

    /// The context of a device: kernels compiled for its features and limits.
    fn assemble(
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
        owner: DeviceOwner,
    ) -> Result<Self> {
        let limits = device.limits();
        let workgroup_size = choose_workgroup_size(&adapter.get_info(), &limits, options.workgroup_size)?;
        let max_binding_size = binding_cap(&limits, options.max_binding_size);
        let subgroups = options.use_subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        let row_split = options.row_split.validate()?;
        let unaligned_f32_vectors = options.unaligned_f32.vectors_on(&adapter.get_info())?;
        let transfer_piece_bytes = check_piece_bytes(options.transfer_piece_bytes)?;
        let kernels = scoped(&device, || {
            Ok(Kernels::new(
                &device,
                &adapter,
                KernelChoices {
                    subgroups,
                    workgroup_size,
                    row_split,
                    unaligned_f32: (options.unaligned_f32, unaligned_f32_vectors),
                    gradient_order: options.gradient_order,
                    shader_checks: options.shader_checks,
                },
                max_binding_size,
            ))
        })
        .map_err(|error| match error {
            Error::Gpu(message) => Error::Gpu(format!("compiling the kernels failed: {message}")),
            other => other,
        })?;
        let gpu = match owner {
            DeviceOwner::Xent => Gpu::new(adapter, device, queue, max_binding_size),
            DeviceOwner::Caller => Gpu::borrowed(adapter, device, queue, max_binding_size),
        };
        Ok(Self {
            gpu,
            kernels,
            workspace: futures_intrusive::sync::Mutex::new(Workspace::new(transfer_piece_bytes), true),
            release_requested: AtomicBool::new(false),
            workspace_bytes: AtomicU64::new(0),
            transfer_piece_bytes,
        })
    }

    /// The adapter the context runs on.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// assert_eq!(context.adapter().get_info(), context.adapter_info());
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn adapter(&self) -> &wgpu::Adapter {
        self.gpu.adapter()
    }

    /// Every adapter wgpu finds on this machine for `backends` (`None`: `WGPU_BACKEND` or all).
    ///
    /// ```no_run
    /// for adapter in xent::Context::available_adapters(Some(wgpu::Backends::VULKAN)) {
    ///     println!("{} ({:?}, {:?})", adapter.name, adapter.device_type, adapter.backend);
    /// }
    /// ```
    pub fn available_adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::AdapterInfo> {
        let backends = backends.unwrap_or_else(|| wgpu::Backends::all().with_env());
        pollster::block_on(enumerate_adapters(backends))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    }

    /// Name, backend, driver and type of the chosen adapter.
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions};
    ///
    /// let options = ContextOptions { adapter_name: Some("llvmpipe".into()), ..Default::default() };
    /// let context = Context::with_options(options)?;
    /// let info = context.adapter_info();
    /// assert!(info.name.to_lowercase().contains("llvmpipe"));
    /// assert_eq!(info.device_type, wgpu::DeviceType::Cpu);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.gpu.adapter().get_info()
    }

    /// The device's limits (the adapter's own, requested in full).
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// assert!(context.max_binding_size() <= context.limits().max_storage_buffer_binding_size);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn limits(&self) -> wgpu::Limits {
        self.gpu.limits()
    }

    /// The features enabled on the device.
    ///
    /// ```no_run
    /// use xent::half::f16;
    /// use xent::{Context, CrossEntropyLoss, Shape};
    ///
    /// let context = Context::new()?;
    /// // f16 logits run with or without SHADER_F16 (as `f16`, or as halves of 32-bit words).
    /// let f16_in_shaders = context.features().contains(wgpu::Features::SHADER_F16);
    /// let loss = CrossEntropyLoss::new().loss(&context, &[f16::ZERO; 2], &[0i64], Shape::new(1, 2))?;
    /// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-3);
    /// println!("SHADER_F16: {f16_in_shaders}");
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn features(&self) -> wgpu::Features {
        self.gpu.device().features()
    }

    /// True when the kernels use subgroup reductions.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// // On by default wherever the device has subgroups.
    /// assert_eq!(context.uses_subgroups(), context.features().contains(wgpu::Features::SUBGROUP));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn uses_subgroups(&self) -> bool {
        self.kernels.uses_subgroups()
    }

    /// Invocations per workgroup of the categorical cross-entropy row kernels.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// assert!(xent::WORKGROUP_SIZE_CHOICES.contains(&context.workgroup_size()));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn workgroup_size(&self) -> u32 {
        self.kernels.workgroup_size()
    }

    /// The unaligned-f32 option the context was made with
    /// ([`ContextOptions::unaligned_f32`]).
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions, UnalignedF32};
    ///
    /// assert_eq!(Context::new()?.unaligned_f32(), UnalignedF32::Auto);
    /// let entries = ContextOptions { unaligned_f32: UnalignedF32::Entries, ..Default::default() };
    /// assert_eq!(Context::with_options(entries)?.unaligned_f32(), UnalignedF32::Entries);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn unaligned_f32(&self) -> UnalignedF32 {
        self.kernels.cross_entropy.unaligned_f32()
    }

    /// The gradient-order option the context was made with ([`ContextOptions::gradient_order`]).
    ///
    /// ```no_run
    /// use xent::{Context, GradientOrder};
    ///
    /// assert_eq!(Context::new()?.gradient_order(), GradientOrder::Forward);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn gradient_order(&self) -> GradientOrder {
        self.kernels.cross_entropy.gradient_order()
    }

    /// The shader-checks option the context was made with ([`ContextOptions::shader_checks`]).
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// assert_eq!(context.shader_checks(), xent::ShaderChecks::Trusted);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn shader_checks(&self) -> ShaderChecks {
        self.kernels.shader_checks()
    }

    /// Bytes of a host call's transfer pieces ([`ContextOptions::transfer_piece_bytes`]).
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions, DEFAULT_TRANSFER_PIECE_BYTES};
    ///
    /// assert_eq!(Context::new()?.transfer_piece_bytes(), DEFAULT_TRANSFER_PIECE_BYTES);
    /// let small = ContextOptions { transfer_piece_bytes: 1 << 20, ..Default::default() };
    /// assert_eq!(Context::with_options(small)?.transfer_piece_bytes(), 1 << 20);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn transfer_piece_bytes(&self) -> u64 {
        self.transfer_piece_bytes
    }

    /// The split-row option the context was made with ([`ContextOptions::row_split`]).
    ///
    /// ```no_run
    /// use xent::{Context, RowSplit};
    ///
    /// assert_eq!(Context::new()?.row_split(), RowSplit::Off);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn row_split(&self) -> RowSplit {
        self.kernels.cross_entropy.row_split()
    }

    /// Whether a categorical cross-entropy call of `shape` with `logit_type`
    /// logits runs the split-row kernel (per [`ContextOptions::row_split`]) rather
    /// than the fused row kernel, for logits and gradient that start at a
    /// multiple of 4 elements in their buffers (as host calls' do; 16-bit logits
    /// elsewhere take the fused kernel).
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions, LogitType, RowSplit, Shape};
    ///
    /// let context = Context::with_options(ContextOptions {
    ///     row_split: RowSplit::Forced { vec4s_per_invocation: 4, spin_limit: 64 },
    ///     ..ContextOptions::default()
    /// })?;
    /// assert!(context.splits_rows(Shape::new(8, 50_000), LogitType::F32));
    /// assert!(!Context::new()?.splits_rows(Shape::new(8, 50_000), LogitType::F32));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn splits_rows(&self, shape: Shape, logit_type: LogitType) -> bool {
        self.split_row_slices(shape, logit_type).is_some()
    }

    /// The slices each row of such a call is cut into by the split-row kernel,
    /// or `None` where the fused row kernel runs ([`splits_rows`](Self::splits_rows)).
    /// With [`DeviceOutputs::repaired_slices`](crate::DeviceOutputs::repaired_slices) it tells how many of a call's
    /// `rows × slices` slices waited in vain for the rest of their row.
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions, LogitType, RowSplit, Shape};
    ///
    /// let split = RowSplit::Forced { vec4s_per_invocation: 4, spin_limit: 64 };
    /// let context = Context::with_options(ContextOptions { row_split: split, ..ContextOptions::default() })?;
    /// // Slices of workgroup size × 4 vec4s × 4 logits.
    /// let slice = context.workgroup_size() as usize * 16;
    /// let slices = context.split_row_slices(Shape::new(8, 50_000), LogitType::F32);
    /// assert_eq!(slices, Some(50_000usize.div_ceil(slice) as u32));
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn split_row_slices(&self, shape: Shape, logit_type: LogitType) -> Option<u32> {
        self.kernels
            .cross_entropy
            .split_plan_aligned(shape, logit_type)
            .map(|plan| plan.slices)
    }

    /// Bytes bound per storage binding at most; larger problems are chunked.
    ///
    /// ```no_run
    /// use xent::{Context, ContextOptions};
    ///
    /// // A 1 MiB cap: larger problems are cut into row chunks, with the same results.
    /// let capped = Context::with_options(ContextOptions { max_binding_size: Some(1 << 20), ..Default::default() })?;
    /// assert!(capped.max_binding_size() <= 1 << 20);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn max_binding_size(&self) -> u64 {
        self.gpu.max_binding_size()
    }

    /// The wgpu device, for creating the buffers of device-resident calls.
    ///
    /// ```no_run
    /// let context = xent::Context::new()?;
    /// let buffer = context.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("logits"),
    ///     size: 1024,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// assert_eq!(buffer.size(), 1024);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn device(&self) -> &wgpu::Device {
        self.gpu.device()
    }

    /// The wgpu queue.
    ///
    /// ```no_run
    /// use xent::{Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput};
    /// use xent::{LogitType, Shape, TargetType, UpstreamGradient};
    ///
    /// let context = Context::new()?;
    /// let storage = |size| context.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None,
    ///     size,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// let (logits, targets) = (storage(8), storage(4));
    /// context.queue().write_buffer(&logits, 0, bytemuck::cast_slice(&[0.0f32, 2.0]));
    /// context.queue().write_buffer(&targets, 0, bytemuck::cast_slice(&[1u32]));
    /// let inputs = DeviceInputs {
    ///     logits: logits.slice(..),
    ///     logit_type: LogitType::F32,
    ///     targets: targets.slice(..),
    ///     target_type: TargetType::U32,
    ///     shape: Shape::new(1, 2),
    ///     gradient: GradientOutput::Skip,
    ///     upstream: UpstreamGradient::ONE,
    /// };
    /// let outputs = DeviceOutputs::new(&context, 1)?;
    /// let mut encoder = context.device().create_command_encoder(&Default::default());
    /// CrossEntropyLoss::new().record(&context, &mut encoder, &inputs, &outputs)?;
    /// context.queue().submit([encoder.finish()]); // after the writes above
    /// assert!((outputs.read(&context)?.value().unwrap() - (-2f32).exp().ln_1p()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    pub fn queue(&self) -> &wgpu::Queue {
        self.gpu.queue()
    }

    /// The device under the calls, which the kernels, buffers and readback take.
    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub(crate) fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The errors wgpu raised on this context's device outside every error scope
    /// since the last `take_uncaptured_errors`, oldest first (at most the 64
    /// newest are kept), and forgets them.
    ///
    /// xent's own device work always runs inside its error scopes and its errors
    /// come back from the call that caused them, so these are the application's
    /// (commands it issued on [`Context::device`] or [`Context::queue`] outside a
    /// scope of its own). They are kept here rather than panicking, as wgpu's
    /// default handler would, and never turn into an error of a xent call. An
    /// application that sets its own `on_uncaptured_error` handler receives them
    /// there instead.
    ///
    /// ```no_run
    /// # fn main() -> xent::Result<()> {
    /// let context = xent::Context::new()?;
    /// for message in context.take_uncaptured_errors() {
    ///     eprintln!("wgpu error in the application's own work: {message}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_uncaptured_errors(&self) -> Vec<String> {
        self.gpu.take_uncaptured_errors()
    }

    /// Drops the device buffers kept between host-slice calls (logits, targets,
    /// gradient, the mapped upload and readback buffers, and per-row outputs,
    /// with the bind groups and parameters cached for them), so that their
    /// memory goes back to the device. The next
    /// host call creates what it needs again. Useful after a large batch: the
    /// workspace otherwise keeps the largest size any call needed.
    ///
    /// When a host call is in progress (on another thread, or an `*_async` call
    /// still pending) the buffers are released as soon as it finishes; this
    /// method never waits. Device-resident calls
    /// ([`CrossEntropyLoss::record`](crate::CrossEntropyLoss::record)) use the
    /// caller's buffers and are not affected.
    ///
    /// ```no_run
    /// # fn main() -> xent::Result<()> {
    /// use xent::{Context, CrossEntropyLoss, Shape};
    /// let context = Context::new()?;
    /// let (rows, classes) = (4096, 32_000);
    /// let logits = vec![0.0f32; rows * classes];
    /// let targets = vec![0i64; rows];
    /// CrossEntropyLoss::new().loss(&context, &logits[..], &targets[..], Shape::new(rows, classes))?;
    /// context.release_buffers();
    /// assert_eq!(context.workspace_bytes(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn release_buffers(&self) {
        match self.workspace.try_lock() {
            Some(mut workspace) => self.release_workspace(&mut workspace),
            None => self.release_requested.store(true, Ordering::Release),
        }
    }

    /// Bytes of device memory held by the buffers kept between host-slice calls
    /// (0 after [`Context::release_buffers`] and before the first host call).
    ///
    /// ```no_run
    /// # fn main() -> xent::Result<()> {
    /// let context = xent::Context::new()?;
    /// assert_eq!(context.workspace_bytes(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn workspace_bytes(&self) -> u64 {
        self.workspace_bytes.load(Ordering::Acquire)
    }

    /// The host-call workspace; one host call at a time uses it. A release asked
    /// for while another call held it happens here, before this call uses it.
    pub(crate) async fn lock_workspace(&self) -> futures_intrusive::sync::MutexGuard<'_, Workspace> {
        let mut workspace = self.workspace.lock().await;
        self.release_if_requested(&mut workspace);
        workspace
    }

    /// Ends a host call's hold on the workspace, releasing it if
    /// [`Context::release_buffers`] asked for that meanwhile. (A call that ends
    /// otherwise, its future dropped, leaves the release to the next lock.)
    pub(crate) fn unlock_workspace(&self, workspace: futures_intrusive::sync::MutexGuard<'_, Workspace>) {
        // The call may have grown the class weights.
        self.note_workspace_size(&workspace);
        drop(workspace);
        if self.release_requested.load(Ordering::Acquire) {
            // Held again already: that holder releases it when it unlocks.
            if let Some(mut workspace) = self.workspace.try_lock() {
                self.release_if_requested(&mut workspace);
            }
        }
    }

    fn release_if_requested(&self, workspace: &mut Workspace) {
        if self.release_requested.swap(false, Ordering::AcqRel) {
            self.release_workspace(workspace);
        }
    }

    fn release_workspace(&self, workspace: &mut Workspace) {
        self.release_requested.store(false, Ordering::Release);
        workspace.release();
        self.note_workspace_size(workspace);
    }

    /// Runs a family call (BCE, KL, entropy, probability cross-entropy) with the
    /// workspace (its family buffers and the upload buffers). The family calls
    /// are blocking, so they never wait for the workspace: when another call
    /// holds it (another thread, or a pending `*_async` cross-entropy call on this
    /// thread, which waiting would deadlock), this call uses a workspace of its own.
    pub(crate) fn with_family_buffers<T>(&self, call: impl FnOnce(&mut Workspace) -> T) -> T {
        match self.workspace.try_lock() {
            Some(mut workspace) => {
                self.release_if_requested(&mut workspace);
                let result = call(&mut workspace);
                self.unlock_workspace(workspace);
                result
            }
            None => call(&mut Workspace::new(self.transfer_piece_bytes)),
        }
    }

    /// Runs `work` inside xent's error scopes (see [`Gpu::checked`]).
    pub(crate) fn checked<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        self.gpu.checked(work)
    }

    /// Records the workspace's current size for [`Context::workspace_bytes`].
    pub(crate) fn note_workspace_size(&self, workspace: &Workspace) {
        self.workspace_bytes
            .store(workspace.allocated_bytes(), Ordering::Release);
    }
}

/// Who created the device, and so who may install device-wide handlers on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceOwner {
    /// [`Context::new`] and friends: xent requested it.
    Xent,
    /// [`Context::from_wgpu`]: the caller's.
    Caller,
}

/// Every adapter wgpu finds for `backends`: GL's from an instance of its own
/// each time (the devices of a GL adapter share its one GL context, which only
/// one thread at a time can use), the others' from the process's one instance
/// for them ([`shared_instance`]), in wgpu's order of backends.
async fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let shared = backends.difference(wgpu::Backends::GL);
    let mut adapters = Vec::new();
    if !shared.is_empty() {
        adapters.extend(shared_instance(shared).enumerate_adapters(shared).await);
    }
    if backends.contains(wgpu::Backends::GL) {
        let gl = wgpu::Instance::new(instance_descriptor(wgpu::Backends::GL));
        adapters.extend(gl.enumerate_adapters(wgpu::Backends::GL).await);
    }
    adapters
}

fn instance_descriptor(backends: wgpu::Backends) -> wgpu::InstanceDescriptor {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    descriptor
}

/// The process's one wgpu instance for `backends` (and the rest of the
/// settings wgpu reads from the environment), shared by every context xent
/// creates on them. wgpu looks a buffer up among the buffers of the instance
/// it is used with: on two instances, a buffer of one context's device passed
/// to another context is taken for one of that context's own buffers (another
/// buffer, silently, when the sizes allow). On one instance it is recognised
/// as another device's, and wgpu's validation error comes back as
/// [`Error::Gpu`](crate::Error::Gpu).
fn shared_instance(backends: wgpu::Backends) -> wgpu::Instance {
    static INSTANCES: std::sync::Mutex<Vec<(String, wgpu::Instance)>> = std::sync::Mutex::new(Vec::new());
    let descriptor = instance_descriptor(backends);
    let settings = format!("{descriptor:?}");
    let mut instances = INSTANCES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, instance)) = instances.iter().find(|(made_for, _)| *made_for == settings) {
        return instance.clone();
    }
    let instance = wgpu::Instance::new(descriptor);
    instances.push((settings, instance.clone()));
    instance
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
