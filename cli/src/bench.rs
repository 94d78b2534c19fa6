//! `xent bench`: honest numbers for the fused loss + gradient and for the loss alone.
//!
//! Per shape and backend it reports the median wall time from host memory to host
//! memory (after warm-up), the achieved GB/s, the GPU-only time of the compute pass
//! from timestamp queries where the adapter has them, the device's own copy
//! bandwidth measured in the same run (and the loss's fraction of it), the same for
//! the forward pass alone, the GPU-vs-CPU speedup and the largest difference between
//! the backends. `--plot` draws throughput against size into an SVG file.

use std::num::NonZeroU64;
use std::path::PathBuf;

use crate::failure::{Failure, Outcome};
use crate::outputs::Outputs;
use crate::progress;
use crate::report;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;
use xent::half::{bf16, f16};
use xent::{Context, Cpu, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Shape, TargetType};

/// Classes of the default shape sized to exceed the storage binding limit.
const OVER_BINDING_CLASSES: usize = 32_000;
/// Binding limit assumed for that shape when no GPU is in use (lavapipe's).
const DEFAULT_BINDING_LIMIT: u64 = 128 << 20;
/// The standard shapes besides the one over the binding limit (rows, classes), in
/// the order they run; the last two only where memory allows.
const STANDARD_SHAPES: [(usize, usize); 5] = [
    (64, 1000),
    (1024, 32_000),
    (4096, 32_000),
    (8192, 50_257),
    (8192, 128_256),
];
/// Standard shapes also timed with bf16 logits (and gradient).
const BF16_SHAPES: [(usize, usize); 2] = [(8192, 50_257), (8192, 128_256)];
/// Untimed calls before the timed ones, for every timing.
const WARMUP_CALLS: u32 = 2;
/// Share of the host's RAM the benchmark's arrays may take.
const HOST_MEMORY_SHARE: f64 = 0.4;
/// Bytes of one logit (f32).
const F32_BYTES: u64 = 4;

/// `xent bench`'s options.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rows of a single shape to time (with --classes); default: the standard shapes.
    #[arg(long, requires = "classes", conflicts_with = "shapes", value_parser = parse_count)]
    rows: Option<usize>,
    /// Classes of that shape.
    #[arg(long, requires = "rows", value_parser = parse_count)]
    classes: Option<usize>,
    /// Shapes to time instead of the standard ones, e.g. `64x1000,4096x32000`.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<Shape>,
    /// Element type of the logits and gradient for --rows/--shapes (the standard
    /// shapes time f32, and bf16 for 8192x50257 and 8192x128256).
    #[arg(long, value_enum, default_value_t = Element::F32)]
    dtype: Element,
    /// Which backends to time.
    #[arg(long, value_enum, default_value_t = BenchBackends::Both)]
    backend: BenchBackends,
    /// Timed repetitions per shape, backend and timing (after warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// One JSON object per shape and backend instead of a table (notes go to stderr).
    #[arg(long)]
    json: bool,
    /// Also draw fused loss + gradient throughput against N×C into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Time the GPU with each of these row-kernel workgroup sizes side by side
    /// (e.g. `64,128,256,512,1024`), one context per size; default: the size the
    /// context chooses for the adapter.
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    workgroup_size: Vec<u32>,
    /// Time the fused call with the gradient written over the logits
    /// (`loss_and_grad_in_place`), which needs no N×C memory beyond the logits.
    /// Each backend gets freshly generated logits; the loss alone is timed first,
    /// then every fused call overwrites the previous one's gradient (the same work
    /// per logit), so the loss shown is the last call's and the backends'
    /// gradients are not compared.
    #[arg(long)]
    in_place: bool,
}

/// The backends `xent bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchBackends {
    Gpu,
    Cpu,
    Both,
}

/// The element type of a benchmark's logits and gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Element {
    F32,
    F16,
    Bf16,
}

impl Element {
    fn logit_type(self) -> LogitType {
        match self {
            Element::F32 => LogitType::F32,
            Element::F16 => LogitType::F16,
            Element::Bf16 => LogitType::Bf16,
        }
    }

    /// Bytes per logit.
    fn size(self) -> u64 {
        self.logit_type().size_in_bytes() as u64
    }

    /// `f32`, `f16` or `bf16`, as `--dtype` spells it.
    fn name(self) -> &'static str {
        match self {
            Element::F32 => "f32",
            Element::F16 => "f16",
            Element::Bf16 => "bf16",
        }
    }
}

/// One benchmark: a shape and the logits' element type.
#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    element: Element,
    /// The fused call writes the gradient over the logits (`--in-place`).
    in_place: bool,
}

/// The logits of one benchmark, in its element type.
enum BenchLogits {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl BenchLogits {
    /// `logits` in `element` (16-bit types: rounded to nearest).
    fn new(logits: Vec<f32>, element: Element) -> Self {
        match element {
            Element::F32 => Self::F32(logits),
            Element::F16 => Self::F16(logits.iter().map(|&value| f16::from_f32(value)).collect()),
            Element::Bf16 => Self::Bf16(logits.iter().map(|&value| bf16::from_f32(value)).collect()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::F32(values) => bytemuck::cast_slice(values),
            Self::F16(values) => bytemuck::cast_slice(values),
            Self::Bf16(values) => bytemuck::cast_slice(values),
        }
    }

    fn element(&self) -> Element {
        match self {
            Self::F32(_) => Element::F32,
            Self::F16(_) => Element::F16,
            Self::Bf16(_) => Element::Bf16,
        }
    }

    /// Median wall times of the fused call and of `loss` on `backend`, host slices
    /// to host slices, and the fused call's loss and gradient (widened to f32; empty
    /// `in_place`, where the gradient overwrites these logits).
    fn time_host_calls(
        &mut self,
        backend: &dyn xent::Backend,
        targets: &[i64],
        shape: Shape,
        reps: u32,
        in_place: bool,
    ) -> Result<HostTimings, String> {
        match self {
            Self::F32(logits) => time_typed_host_calls(backend, logits, targets, shape, reps, in_place, |value| value),
            Self::F16(logits) => time_typed_host_calls(backend, logits, targets, shape, reps, in_place, f16::to_f32),
            Self::Bf16(logits) => time_typed_host_calls(backend, logits, targets, shape, reps, in_place, bf16::to_f32),
        }
    }
}

/// [`time_host_calls`] on logits of type `T`, separately or in place, with the
/// separate gradient widened by `widen` (empty in place).
fn time_typed_host_calls<T: Copy + Default>(
    backend: &dyn xent::Backend,
    logits: &mut [T],
    targets: &[i64],
    shape: Shape,
    reps: u32,
    in_place: bool,
    widen: fn(T) -> f32,
) -> Result<HostTimings, String>
where
    for<'a> &'a [T]: Into<xent::Logits<'a>>,
    for<'a> &'a mut [T]: Into<xent::LogitsMut<'a>>,
{
    let mut gradient = if in_place {
        Vec::new()
    } else {
        vec![T::default(); logits.len()]
    };
    let destination = (!in_place).then_some(&mut gradient[..]);
    let (median_ms, forward_ms, loss) = time_host_calls(backend, logits, targets, shape, destination, reps)?;
    Ok(HostTimings {
        median_ms,
        forward_ms,
        loss,
        gradient: gradient.into_iter().map(widen).collect(),
    })
}

/// Parses `ROWSxCLASSES`, e.g. `4096x32000`.
fn parse_shape(text: &str) -> Result<Shape, String> {
    let (rows, classes) = text
        .trim()
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| format!("`{text}` is not ROWSxCLASSES"))?;
    let count = |part: &str| parse_count(part).map_err(|error| format!("{error} in `{text}`"));
    Ok(Shape::new(count(rows)?, count(classes)?))
}

/// Parses a positive count of rows or classes.
fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a positive integer")),
        Ok(value) => Ok(value),
    }
}

/// A backend's copy bandwidth and how it was measured.
#[derive(Clone, Debug)]
struct CopyBandwidth {
    /// Read + write bytes per second, in GB/s.
    gbps: f64,
    /// What was timed, for the report.
    method: String,
}

/// One backend's numbers on one shape.
struct Measurement {
    /// `gpu` or `cpu`.
    backend: &'static str,
    /// The GPU context's row-kernel workgroup size, when a sweep asked for it.
    workgroup_size: Option<u32>,
    /// Median ms of the fused loss + gradient, host memory to host memory.
    median_ms: f64,
    /// Median ms of the fused compute pass alone (timestamp queries; GPU only).
    kernel_ms: Option<f64>,
    /// Median ms of the loss alone (no gradient), host memory to host memory.
    forward_ms: f64,
    /// Median ms of the forward compute pass alone (timestamp queries; GPU only).
    forward_kernel_ms: Option<f64>,
    /// The same backend's copy bandwidth on a buffer of the logits' size.
    copy: CopyBandwidth,
    /// The mean loss of the fused call.
    loss: f32,
    /// The gradient of the fused call, to compare the backends.
    gradient: Vec<f32>,
}

/// Throughputs derived from a [`Measurement`].
struct Figures {
    /// Fused, end to end: read + write of the logits.
    gbps: f64,
    /// Fused, compute pass alone.
    kernel_gbps: Option<f64>,
    /// Fused GB/s over copy GB/s: of the kernel time where there is one (the
    /// device-only figure to hold against a device-only copy), else end to end.
    fraction_of_copy: f64,
    /// `kernel` or `end_to_end`: which GB/s `fraction_of_copy` divides.
    fraction_basis: &'static str,
    /// Forward only, end to end: one read of the logits.
    forward_gbps: f64,
    /// Forward only, compute pass alone.
    forward_kernel_gbps: Option<f64>,
    /// Forward GB/s (kernel where measured) over copy GB/s, the proxy for read bandwidth.
    forward_fraction_of_copy: f64,
    /// CPU time ÷ GPU time of the fused call (GPU rows only).
    speedup_vs_cpu: Option<f64>,
}

/// One point of the throughput plot.
struct PlotPoint {
    /// `gpu`, `cpu`, or `gpu/256` in a workgroup-size sweep.
    device: String,
    /// The logits' element type.
    element: Element,
    /// N × C.
    elements: f64,
    /// Fused loss + gradient, end to end.
    gbps: f64,
    /// Fused loss + gradient, compute pass alone.
    kernel_gbps: Option<f64>,
    /// The backend's copy bandwidth at this size.
    copy_gbps: f64,
}

/// Times every chosen shape on the chosen backends, prints the table or JSON lines,
/// and draws the plot if asked. A backend that fails on a shape does not stop the
/// others; the failures come back as the error at the end.
pub fn run(args: BenchArgs) -> Outcome {
    let plot_output = args
        .plot
        .as_deref()
        .map(|path| Outputs::plan(&[("--plot", path)], &[]))
        .transpose()?;
    let gpus = match args.backend {
        BenchBackends::Gpu | BenchBackends::Both => gpu_contexts(&args.workgroup_size)?,
        BenchBackends::Cpu if !args.workgroup_size.is_empty() => {
            return Err("--workgroup-size sizes the GPU's kernels; it needs --backend gpu or both".into());
        }
        BenchBackends::Cpu => Vec::new(),
    };
    let settings = Settings {
        gpus: &gpus,
        sweep: args.workgroup_size.len() > 1,
        run_cpu: args.backend != BenchBackends::Gpu,
        reps: args.reps,
        host_memory: host_memory_bytes(),
        json: args.json,
    };
    let first_gpu = gpus.first();
    let cases = chosen_cases(&args, first_gpu);
    if args.rows.is_some() || !args.shapes.is_empty() {
        for &case in &cases {
            check_requested(&settings, case)?;
        }
    }
    if !args.json {
        print_header(&gpus, settings.run_cpu);
    }
    let mut failures = Vec::new();
    let mut points = Vec::new();
    progress::start(cases.len(), !args.json);
    for case in cases {
        progress::case(&case_label(case));
        let measurements = measure_case(&settings, case, &mut failures);
        progress::suspend(|| report(case, &measurements, first_gpu, args.json));
        progress::advance();
        points.extend(measurements.iter().map(|measurement| plot_point(case, measurement)));
    }
    progress::finish();
    if let (Some(path), Some(mut outputs)) = (&args.plot, plot_output) {
        let title = plot_title(first_gpu, settings.run_cpu);
        let svg = draw_plot(&title, &points)?;
        outputs.stage("--plot", |out| out.write_all(svg.as_bytes()))?;
        outputs.commit()?;
        note(args.json, &format!("plot written to {}", path.display()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Machine(failures.join("; ")))
    }
}

/// One GPU context per asked workgroup size, or one with the adapter's own choice.
fn gpu_contexts(workgroup_sizes: &[u32]) -> Result<Vec<Context>, Failure> {
    for (index, size) in workgroup_sizes.iter().enumerate() {
        if workgroup_sizes[..index].contains(size) {
            return Err(format!("--workgroup-size lists {size} twice").into());
        }
    }
    let sizes: Vec<Option<u32>> = if workgroup_sizes.is_empty() {
        vec![None]
    } else {
        workgroup_sizes.iter().copied().map(Some).collect()
    };
    sizes
        .into_iter()
        .map(|workgroup_size| {
            Context::with_options(xent::ContextOptions {
                workgroup_size,
                ..xent::ContextOptions::default()
            })
            .map_err(Failure::from)
        })
        .collect()
}

/// `--rows/--classes`, else `--shapes`, else the standard shapes.
fn chosen_cases(args: &BenchArgs, gpu: Option<&Context>) -> Vec<Case> {
    let of = |shapes: Vec<Shape>| {
        shapes
            .into_iter()
            .map(|shape| Case {
                shape,
                element: args.dtype,
                in_place: args.in_place,
            })
            .collect()
    };
    match (args.rows, args.classes) {
        (Some(rows), Some(classes)) => of(vec![Shape::new(rows, classes)]),
        _ if !args.shapes.is_empty() => of(args.shapes.clone()),
        _ => default_cases(gpu, args.in_place),
    }
}

/// 64×1000, 1024×32000, 4096×32000, one shape whose logits exceed the binding
/// limit, 8192×50257 and 8192×128256 in f32, then the last two in bf16 (the large
/// ones are skipped per backend where memory does not allow).
fn default_cases(gpu: Option<&Context>, in_place: bool) -> Vec<Case> {
    let binding_limit = gpu.map_or(DEFAULT_BINDING_LIMIT, Context::max_binding_size);
    let over_binding_rows = (binding_limit / (OVER_BINDING_CLASSES as u64 * F32_BYTES)) as usize + 64;
    let mut shapes: Vec<Shape> = STANDARD_SHAPES
        .iter()
        .map(|&(rows, classes)| Shape::new(rows, classes))
        .collect();
    shapes.insert(3, Shape::new(over_binding_rows, OVER_BINDING_CLASSES));
    let f32_cases = shapes.into_iter().map(|shape| Case {
        shape,
        element: Element::F32,
        in_place,
    });
    let bf16_cases = BF16_SHAPES.iter().map(|&(rows, classes)| Case {
        shape: Shape::new(rows, classes),
        element: Element::Bf16,
        in_place,
    });
    f32_cases.chain(bf16_cases).collect()
}

/// What one `xent bench` run measures, and where.
struct Settings<'a> {
    /// The GPU contexts timed (one per swept workgroup size), empty when the GPU is not.
    gpus: &'a [Context],
    /// Whether the contexts differ by workgroup size (`--workgroup-size` with several).
    sweep: bool,
    /// Whether the CPU is timed.
    run_cpu: bool,
    /// Timed repetitions per timing.
    reps: u32,
    /// The host's RAM, where known.
    host_memory: Option<u64>,
    /// JSON lines instead of a table.
    json: bool,
}

/// Measures every backend that fits on `shape`; a backend that fails is noted,
/// added to `failures` and left out, so one bad shape does not hide the others.
fn measure_case(settings: &Settings<'_>, case: Case, failures: &mut Vec<String>) -> Vec<Measurement> {
    let json = settings.json;
    let shape = case.shape;
    let label = case_label(case);
    let Some(logits_bytes) = logits_bytes(case) else {
        note(json, &format!("{label}: skipped, N×C overflows"));
        return Vec::new();
    };
    let measurements = settings.gpus.len() + usize::from(settings.run_cpu);
    if let Some(reason) = host_skip_reason(case, logits_bytes, settings.host_memory, measurements) {
        note(json, &format!("{label}: skipped on both backends, {reason}"));
        return Vec::new();
    }
    let (logits, targets) = synthetic_batch(shape);
    let mut logits = BenchLogits::new(logits, case.element);
    // In place, every backend after the first gets the logits generated afresh.
    let mut logits_used = false;
    let mut fresh_logits = |logits: &mut BenchLogits| {
        if case.in_place && logits_used {
            // Freed before the new ones are made, so that one copy lives at a time.
            *logits = BenchLogits::F32(Vec::new());
            *logits = BenchLogits::new(synthetic_batch(shape).0, case.element);
        }
        logits_used = true;
    };
    let mut measurements = Vec::new();
    let mut keep = |backend: &str, result: Result<Measurement, String>| match result {
        Ok(measurement) => measurements.push(measurement),
        Err(error) => {
            let failure = format!("{backend} failed on {label}: {error}");
            note(json, &failure);
            failures.push(failure);
        }
    };
    for context in settings.gpus {
        match gpu_skip_reason(context, logits_bytes, settings.host_memory, settings.gpus.len()) {
            Some(reason) => note(json, &format!("{label}: gpu skipped, {reason}")),
            None => {
                fresh_logits(&mut logits);
                let measurement = measure_gpu(context, &mut logits, &targets, case, settings.reps);
                let workgroup_size = settings.sweep.then(|| context.workgroup_size());
                keep(
                    "gpu",
                    measurement.map(|measurement| Measurement {
                        workgroup_size,
                        ..measurement
                    }),
                );
            }
        }
    }
    if settings.run_cpu {
        fresh_logits(&mut logits);
        keep("cpu", measure_cpu(&mut logits, &targets, case, settings.reps));
    }
    measurements
}

/// Refuses, before anything is timed, a shape the user asked for that a chosen
/// backend cannot run here (the standard shapes are skipped with a note instead).
fn check_requested(settings: &Settings<'_>, case: Case) -> Result<(), String> {
    let label = case_label(case);
    let logits_bytes =
        logits_bytes(case).ok_or_else(|| format!("{label}: N×C × the element size overflows 64 bits"))?;
    let measurements = settings.gpus.len() + usize::from(settings.run_cpu);
    if let Some(reason) = host_skip_reason(case, logits_bytes, settings.host_memory, measurements) {
        return Err(format!("{label} cannot run here: {reason}"));
    }
    for context in settings.gpus {
        if let Some(reason) = gpu_skip_reason(context, logits_bytes, settings.host_memory, settings.gpus.len()) {
            return Err(format!(
                "{label} cannot run on the GPU here: {reason}; try --backend cpu"
            ));
        }
    }
    Ok(())
}

/// N×C × the element size, or `None` on overflow.
fn logits_bytes(case: Case) -> Option<u64> {
    let elements = case.shape.elements().ok()?;
    (elements as u64).checked_mul(case.element.size())
}

fn shape_label(shape: Shape) -> String {
    format!("{}x{}", shape.rows, shape.classes)
}

/// The shape, with the element type after it for 16-bit logits, and `in place`.
fn case_label(case: Case) -> String {
    let mut label = shape_label(case.shape);
    if case.element != Element::F32 {
        label = format!("{label} {}", case.element.name());
    }
    if case.in_place {
        label.push_str(" in place");
    }
    label
}

/// Why the host cannot hold the bench's arrays within its memory share, if so:
/// the logits (for 16-bit types also the f32 logits they are generated from) and,
/// unless in place, the f32 gradient each of the `measurements` keeps to compare
/// the backends.
fn host_skip_reason(case: Case, logits_bytes: u64, host_memory: Option<u64>, measurements: usize) -> Option<String> {
    let budget = host_memory? as f64 * HOST_MEMORY_SHARE;
    let kept = measurements as u64;
    let (needed, what) = match (case.element, case.in_place) {
        (Element::F32, false) => ((1 + kept) * logits_bytes, "logits + each backend's gradient"),
        (Element::F16 | Element::Bf16, false) => (
            (2 + 2 * kept) * logits_bytes,
            "logits + gradient and the bench's f32 copies",
        ),
        (Element::F32, true) => (logits_bytes, "the logits"),
        (Element::F16 | Element::Bf16, true) => (3 * logits_bytes, "the logits and the f32 logits they come from"),
    };
    (needed as f64 > budget).then(|| {
        format!(
            "{what} take {} > {:.0}% of host RAM ({})",
            gigabytes(needed),
            HOST_MEMORY_SHARE * 100.0,
            gigabytes(host_memory.unwrap_or(0))
        )
    })
}

/// Why the GPU cannot run a shape, if so: one array above the adapter's
/// `max_buffer_size` (the host-slice calls' limit), or, on a software adapter whose
/// memory is the host's, logits + gradient + staging for each of the run's
/// `contexts` above the host memory share.
fn gpu_skip_reason(context: &Context, logits_bytes: u64, host_memory: Option<u64>, contexts: usize) -> Option<String> {
    let max_buffer_size = context.limits().max_buffer_size;
    if logits_bytes > max_buffer_size {
        return Some(format!(
            "one array of {} exceeds the adapter's max_buffer_size ({})",
            gigabytes(logits_bytes),
            gigabytes(max_buffer_size)
        ));
    }
    let on_host = context.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let budget = host_memory.map(|bytes| bytes as f64 * HOST_MEMORY_SHARE)?;
    let needed = 3 * logits_bytes * contexts as u64;
    (on_host && needed as f64 > budget).then(|| {
        format!(
            "logits + gradient + staging ({contexts} context(s)) take {} of host RAM > the {:.0}% share",
            gigabytes(needed),
            HOST_MEMORY_SHARE * 100.0
        )
    })
}

fn gigabytes(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// The host's RAM (sysinfo: Linux, macOS, Windows, the BSDs), or `None` where it
/// cannot be read.
fn host_memory_bytes() -> Option<u64> {
    let mut system = sysinfo::System::new();
    system.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
    Some(system.total_memory()).filter(|&bytes| bytes > 0)
}

/// The CPU's model name (sysinfo), or `unknown CPU`.
fn cpu_model() -> String {
    let mut system = sysinfo::System::new();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system
        .cpus()
        .first()
        .map(|cpu| cpu.brand().trim().to_owned())
        .filter(|brand| !brand.is_empty())
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Prints a note: on stdout under the table, on stderr in JSON mode.
fn note(json: bool, message: &str) {
    progress::suspend(|| {
        if json {
            eprintln!("note: {message}");
        } else {
            println!("note: {message}");
        }
    });
}

/// Deterministic logits in [-8, 8) and targets, from a SplitMix64 stream.
fn synthetic_batch(shape: Shape) -> (Vec<f32>, Vec<i64>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    };
    let logits = (0..shape.rows * shape.classes)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 16.0 - 8.0)
        .collect();
    let targets = (0..shape.rows)
        .map(|_| (next() % shape.classes as u64) as i64)
        .collect();
    (logits, targets)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median wall time in ms of `call` over `reps` calls after [`WARMUP_CALLS`].
fn median_wall_ms(reps: u32, mut call: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    progress::repetition(0, reps);
    for _ in 0..WARMUP_CALLS {
        call()?;
    }
    let mut times = Vec::new();
    for rep in 0..reps {
        progress::repetition(rep + 1, reps);
        let start = Instant::now();
        call()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// GB/s of moving `bytes` in `ms` milliseconds.
fn gbps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

// ---------------------------------------------------------------------------
// Host-memory calls (both backends)
// ---------------------------------------------------------------------------

/// A backend's end-to-end timings: fused call, forward call, and the fused results.
struct HostTimings {
    median_ms: f64,
    forward_ms: f64,
    loss: f32,
    gradient: Vec<f32>,
}

/// Median wall times of the fused call and of `loss`, host slices to host
/// slices, and the (last) fused call's loss. The gradient goes into `gradient`,
/// or over the logits when it is `None` (`loss_and_grad_in_place`); then the
/// loss alone is timed first, on the logits as given, and each fused call
/// overwrites the previous gradient.
fn time_host_calls<T>(
    backend: &dyn xent::Backend,
    logits: &mut [T],
    targets: &[i64],
    shape: Shape,
    mut gradient: Option<&mut [T]>,
    reps: u32,
) -> Result<(f64, f64, f32), String>
where
    for<'a> &'a [T]: Into<xent::Logits<'a>>,
    for<'a> &'a mut [T]: Into<xent::LogitsMut<'a>>,
{
    let loss = CrossEntropyLoss::new();
    let name = if backend.gpu().is_some() { "gpu" } else { "cpu" };
    let time_forward = |logits: &[T]| {
        progress::phase(name, "loss alone, host to host");
        median_wall_ms(reps, || {
            loss.loss(backend, logits, targets, shape)
                .map(drop)
                .map_err(|error| error.to_string())
        })
    };
    let forward_before = match gradient {
        None => Some(time_forward(logits)?),
        Some(_) => None,
    };
    let mut value = f32::NAN;
    progress::phase(name, "fused, host to host");
    let median_ms = median_wall_ms(reps, || {
        let result = match gradient.as_deref_mut() {
            Some(gradient) => loss.loss_and_grad(backend, &*logits, targets, shape, gradient),
            None => loss.loss_and_grad_in_place(backend, &mut *logits, targets, shape),
        };
        value = result.map_err(|error| error.to_string())?.value().unwrap_or(f32::NAN);
        Ok(())
    })?;
    let forward_ms = match forward_before {
        Some(ms) => ms,
        None => time_forward(logits)?,
    };
    Ok((median_ms, forward_ms, value))
}

// ---------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------

/// The CPU backend's timings and its copy bandwidth on a buffer of the logits' size.
fn measure_cpu(logits: &mut BenchLogits, targets: &[i64], case: Case, reps: u32) -> Result<Measurement, String> {
    let copy = cpu_copy_bandwidth(logits.bytes(), reps);
    let host = logits.time_host_calls(&Cpu, targets, case.shape, reps, case.in_place)?;
    Ok(Measurement {
        backend: "cpu",
        workgroup_size: None,
        median_ms: host.median_ms,
        kernel_ms: None,
        forward_ms: host.forward_ms,
        forward_kernel_ms: None,
        copy,
        loss: host.loss,
        gradient: host.gradient,
    })
}

/// Elements per thread of the CPU copy at least: the CPU backend's smallest task
/// (`MIN_TASK_ELEMENTS` in `src/cpu`), so small copies stay on one thread as the
/// loss does.
const MIN_COPY_PART_ELEMENTS: usize = 1 << 16;

/// Bytes the CPU copy moves at most: far beyond every cache, so larger copies run
/// at the same DRAM bandwidth, and the bench's memory stays that of the logits.
const CPU_COPY_MAX_BYTES: usize = 1 << 30;

/// Copies the bytes of `source` (the first [`CPU_COPY_MAX_BYTES`]) into a fresh
/// buffer in one contiguous part per thread of the CPU backend's rayon pool (one
/// part below [`MIN_COPY_PART_ELEMENTS`] per thread), counting read + write bytes.
fn cpu_copy_bandwidth(source: &[u8], reps: u32) -> CopyBandwidth {
    progress::phase("cpu", "copy bandwidth");
    let source = &source[..source.len().min(CPU_COPY_MAX_BYTES)];
    let threads = rayon::current_num_threads();
    let parts = (source.len() / (MIN_COPY_PART_ELEMENTS * F32_BYTES as usize)).clamp(1, threads);
    let part = source.len().div_ceil(parts).max(1);
    let mut destination = vec![0u8; source.len()];
    let ms = median_wall_ms(reps, || {
        copy_in_parts(source, &mut destination, part);
        Ok(())
    })
    .unwrap_or(f64::NAN);
    let bytes = 2 * std::mem::size_of_val(source) as u64;
    CopyBandwidth {
        gbps: gbps(bytes, ms),
        method: format!(
            "memcpy of {:.1} MB split over {parts} of {threads} threads (rayon), wall time, read + write bytes",
            source.len() as f64 / 1e6
        ),
    }
}

/// `destination.copy_from_slice(source)`, in parts of `part` bytes on the rayon
/// pool (inline when there is one part).
fn copy_in_parts(source: &[u8], destination: &mut [u8], part: usize) {
    if part >= source.len() {
        destination.copy_from_slice(source);
        return;
    }
    destination
        .par_chunks_mut(part)
        .zip(source.par_chunks(part))
        .for_each(|(to, from)| to.copy_from_slice(from));
}

// ---------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------

/// The GPU's timings: copy bandwidth, compute passes alone (timestamps), then the
/// host-slice calls. Device-resident buffers are freed before the host calls grow
/// the context's workspace, which keeps the peak memory down.
fn measure_gpu(
    context: &Context,
    logits: &mut BenchLogits,
    targets: &[i64],
    case: Case,
    reps: u32,
) -> Result<Measurement, String> {
    let copy = gpu_copy_bandwidth(context, logits.bytes().len() as u64, reps)?;
    let (kernel_ms, forward_kernel_ms) = match PassTimer::new(context) {
        Some(timer) => {
            let batch = DeviceBatch::upload(context, logits, targets, case)?;
            let forward = batch.median_pass_ms(context, &timer, false, reps)?;
            let fused = batch.median_pass_ms(context, &timer, true, reps)?;
            (Some(fused), Some(forward))
        }
        None => (None, None),
    };
    let host = logits.time_host_calls(context, targets, case.shape, reps, case.in_place)?;
    Ok(Measurement {
        backend: "gpu",
        workgroup_size: None,
        median_ms: host.median_ms,
        kernel_ms,
        forward_ms: host.forward_ms,
        forward_kernel_ms,
        copy,
        loss: host.loss,
        gradient: host.gradient,
    })
}

/// Runs `work` inside validation and out-of-memory error scopes, so a failed
/// allocation is an error here rather than an invalid buffer later.
fn gpu_checked<T>(context: &Context, work: impl FnOnce() -> T) -> Result<T, String> {
    let out_of_memory = context.device().push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = context.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let value = work();
    let validation_error = pollster::block_on(validation.pop());
    let memory_error = pollster::block_on(out_of_memory.pop());
    match validation_error.or(memory_error) {
        Some(error) => Err(error.to_string()),
        None => Ok(value),
    }
}

/// Waits until the queue is idle.
fn wait_for_queue(context: &Context) -> Result<(), String> {
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map(drop)
        .map_err(|error| error.to_string())
}

/// A two-entry timestamp query set around one compute pass, and the buffers that
/// bring it back to the host.
struct PassTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl PassTimer {
    /// A timer, or `None` when the device has no `TIMESTAMP_QUERY`.
    fn new(context: &Context) -> Option<Self> {
        if !context.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let device = context.device();
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: buffer(
                "bench timestamps resolved",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "bench timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            period_ns: f64::from(context.queue().get_timestamp_period()),
        })
    }

    /// Timestamp writes at the beginning and end of a compute pass.
    fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the copy of the two timestamps into the readback buffer.
    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16);
    }

    /// The pass's duration in ms, once the submission that resolved it has run.
    fn elapsed_ms(&self, context: &Context) -> Result<f64, String> {
        let slice = self.readback.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        wait_for_queue(context)?;
        let ticks = {
            let bytes = slice.get_mapped_range().map_err(|error| error.to_string())?;
            let words: &[u64] = bytemuck::cast_slice(&bytes);
            words[1].saturating_sub(words[0])
        };
        self.readback.unmap();
        Ok(ticks as f64 * self.period_ns / 1e6)
    }
}

/// Logits, targets, gradient and outputs resident on the GPU, for timing the
/// compute passes without the transfers.
struct DeviceBatch {
    logits: wgpu::Buffer,
    targets: wgpu::Buffer,
    /// `None` in place: the gradient overwrites `logits`.
    gradient: Option<wgpu::Buffer>,
    outputs: DeviceOutputs,
    shape: Shape,
    logit_type: LogitType,
}

impl DeviceBatch {
    fn upload(context: &Context, logits: &BenchLogits, targets: &[i64], case: Case) -> Result<Self, String> {
        let shape = case.shape;
        let device = context.device();
        let storage = |label, bytes: &[u8]| {
            wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                },
            )
        };
        let logit_type = logits.element().logit_type();
        let (logits, targets, gradient) = gpu_checked(context, || {
            let gradient = (!case.in_place).then(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench gradient"),
                    size: logits.bytes().len().next_multiple_of(4) as u64,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
            (
                storage("bench logits", logits.bytes()),
                storage("bench targets", bytemuck::cast_slice(targets)),
                gradient,
            )
        })?;
        let outputs = DeviceOutputs::new(context, shape.rows).map_err(|error| error.to_string())?;
        Ok(Self {
            logits,
            targets,
            gradient,
            outputs,
            shape,
            logit_type,
        })
    }

    fn inputs(&self, with_gradient: bool) -> DeviceInputs<'_> {
        DeviceInputs {
            logits: &self.logits,
            logit_type: self.logit_type,
            targets: &self.targets,
            target_type: TargetType::I64,
            shape: self.shape,
            gradient: match (with_gradient, &self.gradient) {
                (false, _) => GradientOutput::Skip,
                (true, Some(gradient)) => GradientOutput::Buffer(gradient),
                (true, None) => GradientOutput::InPlace,
            },
        }
    }

    /// Median GPU time in ms of the recorded compute pass (loss and gradient, or
    /// the loss alone), from timestamp queries, after one untimed pass.
    fn median_pass_ms(
        &self,
        context: &Context,
        timer: &PassTimer,
        with_gradient: bool,
        reps: u32,
    ) -> Result<f64, String> {
        let to_message = |error: xent::Error| error.to_string();
        let loss = CrossEntropyLoss::new();
        let inputs = self.inputs(with_gradient);
        let mut times = Vec::new();
        progress::phase(
            "gpu",
            if with_gradient {
                "fused, compute pass"
            } else {
                "loss alone, compute pass"
            },
        );
        for rep in 0..=reps {
            progress::repetition(rep, reps);
            let mut encoder = context
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
            loss.record_with_timestamps(context, &mut encoder, &inputs, &self.outputs, Some(timer.writes()))
                .map_err(to_message)?;
            timer.resolve(&mut encoder);
            context.queue().submit([encoder.finish()]);
            self.outputs.read(context).map_err(to_message)?;
            let ms = timer.elapsed_ms(context)?;
            if rep > 0 {
                times.push(ms);
            }
        }
        Ok(median(times))
    }
}

/// A vec4 copy with a grid-stride loop, so any buffer fits the dispatch limit.
const COPY_SHADER: &str = r"
@group(0) @binding(0) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> destination: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let count = arrayLength(&source);
    let stride = groups.x * 256u;
    for (var index = id.x; index < count; index += stride) {
        destination[index] = source[index];
    }
}
";
/// The copy shader's workgroup size.
const COPY_WORKGROUP_SIZE: u64 = 256;
/// Workgroups per dispatch at most (WebGPU's per-dimension minimum limit).
const COPY_MAX_WORKGROUPS: u64 = 65_535;
/// Bytes of one vec4<f32>.
const VEC4_BYTES: u64 = 16;

/// The GPU's copy bandwidth on a buffer of `logits_bytes` (capped at the adapter's
/// `max_buffer_size`): the WGSL copy kernel in one compute pass, bound in chunks
/// within the storage binding limit, timed by timestamp queries where the device
/// has them, else by the wall time of the submission. Read + write bytes.
fn gpu_copy_bandwidth(context: &Context, logits_bytes: u64, reps: u32) -> Result<CopyBandwidth, String> {
    progress::phase("gpu", "copy bandwidth");
    let limits = context.limits();
    let bytes = (logits_bytes.min(limits.max_buffer_size) / VEC4_BYTES * VEC4_BYTES).max(VEC4_BYTES);
    let device = context.device();
    let (source, destination) = gpu_checked(context, || {
        let buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        (buffer("bench copy source"), buffer("bench copy destination"))
    })?;
    let pipeline = copy_pipeline(device);
    let dispatches = copy_dispatches(context, &pipeline, &source, &destination, bytes);
    let timer = PassTimer::new(context);
    let mut times = Vec::new();
    for rep in 0..=reps {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench copy"),
        });
        record_copy(&mut encoder, &pipeline, &dispatches, timer.as_ref());
        let start = Instant::now();
        gpu_checked(context, || context.queue().submit([encoder.finish()]))?;
        let ms = match &timer {
            Some(timer) => timer.elapsed_ms(context)?,
            None => wait_for_queue(context).map(|()| start.elapsed().as_secs_f64() * 1e3)?,
        };
        if rep > 0 {
            times.push(ms);
        }
    }
    let timing = match timer {
        Some(_) => "timestamp queries",
        None => "wall time of submit + wait (no TIMESTAMP_QUERY)",
    };
    Ok(CopyBandwidth {
        gbps: gbps(2 * bytes, median(times)),
        method: format!("WGSL vec4 copy kernel in one compute pass, {timing}, read + write bytes"),
    })
}

fn copy_pipeline(device: &wgpu::Device) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench copy"),
        layout: None,
        module: &module,
        entry_point: Some("copy"),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// One bind group per chunk of at most the storage binding limit (at aligned
/// offsets), with its workgroup count.
fn copy_dispatches(
    context: &Context,
    pipeline: &wgpu::ComputePipeline,
    source: &wgpu::Buffer,
    destination: &wgpu::Buffer,
    bytes: u64,
) -> Vec<(wgpu::BindGroup, u32)> {
    let limits = context.limits();
    let alignment = u64::from(limits.min_storage_buffer_offset_alignment).max(VEC4_BYTES);
    let chunk = (limits.max_storage_buffer_binding_size / alignment * alignment).max(alignment);
    let layout = pipeline.get_bind_group_layout(0);
    (0..bytes)
        .step_by(chunk as usize)
        .map(|offset| {
            let size = chunk.min(bytes - offset);
            let binding = |binding, buffer| wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: NonZeroU64::new(size),
                }),
            };
            let group = context.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bench copy chunk"),
                layout: &layout,
                entries: &[binding(0, source), binding(1, destination)],
            });
            let workgroups = (size / VEC4_BYTES)
                .div_ceil(COPY_WORKGROUP_SIZE)
                .clamp(1, COPY_MAX_WORKGROUPS);
            (group, workgroups as u32)
        })
        .collect()
}

/// Records the copy of every chunk in one compute pass (timed when `timer` is given).
fn record_copy(
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    dispatches: &[(wgpu::BindGroup, u32)],
    timer: Option<&PassTimer>,
) {
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench copy"),
            timestamp_writes: timer.map(PassTimer::writes),
        });
        pass.set_pipeline(pipeline);
        for (group, workgroups) in dispatches {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
    }
    if let Some(timer) = timer {
        timer.resolve(encoder);
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// Throughputs and ratios of one measurement; `cpu_ms` is the CPU's fused time on
/// the same shape, if it ran.
fn figures(case: Case, measurement: &Measurement, cpu_ms: Option<f64>) -> Figures {
    let read_bytes = logits_bytes(case).unwrap_or(0);
    let fused_bytes = 2 * read_bytes;
    let gbps_fused = gbps(fused_bytes, measurement.median_ms);
    let kernel_gbps = measurement.kernel_ms.map(|ms| gbps(fused_bytes, ms));
    let forward_gbps = gbps(read_bytes, measurement.forward_ms);
    let forward_kernel_gbps = measurement.forward_kernel_ms.map(|ms| gbps(read_bytes, ms));
    let copy_gbps = measurement.copy.gbps;
    Figures {
        gbps: gbps_fused,
        kernel_gbps,
        fraction_of_copy: kernel_gbps.unwrap_or(gbps_fused) / copy_gbps,
        fraction_basis: if kernel_gbps.is_some() { "kernel" } else { "end_to_end" },
        forward_gbps,
        forward_kernel_gbps,
        forward_fraction_of_copy: forward_kernel_gbps.unwrap_or(forward_gbps) / copy_gbps,
        speedup_vs_cpu: match (measurement.backend, cpu_ms) {
            ("gpu", Some(cpu_ms)) => Some(cpu_ms / measurement.median_ms),
            _ => None,
        },
    }
}

/// Prints the devices, how copy bandwidth is measured, and the table's header.
fn print_header(gpus: &[Context], run_cpu: bool) {
    if let Some(context) = gpus.first() {
        println!("{}", xent::Backend::describe(context));
        if let Some(warning) = report::software_warning(context) {
            println!("  {warning}");
        }
        let sizes: Vec<String> = gpus
            .iter()
            .map(|context| context.workgroup_size().to_string())
            .collect();
        println!("  row kernel workgroup size: {}", sizes.join(", "));
        let timestamps = context.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        println!(
            "  gpu copy: WGSL vec4 copy kernel in one compute pass, {}",
            if timestamps {
                "timed by timestamp queries"
            } else {
                "wall time of submit + wait (no TIMESTAMP_QUERY)"
            }
        );
    }
    if run_cpu {
        println!("{} on {}", xent::Backend::describe(&Cpu), cpu_model());
        println!(
            "  cpu copy: memcpy of the logits' bytes (at most {}) split over up to {} threads (rayon, >= {} elements \
             each), wall time",
            gigabytes(CPU_COPY_MAX_BYTES as u64),
            rayon::current_num_threads(),
            MIN_COPY_PART_ELEMENTS
        );
    }
    println!(
        "fused = loss + gradient, GB/s = 2×N×C×(4, or 2 for f16/bf16) bytes; fwd = loss alone, GB/s = N×C×(4 or 2) \
         bytes; \
         end to end = host memory to host memory;\nkern = compute pass alone (timestamps); copy GB/s = read + \
         write bytes; %copy = kern GB/s (else end to end) ÷ copy GB/s; for fwd, copy stands in for read bandwidth"
    );
    println!(
        "{:>22} {:>8} {:>10} {:>7} {:>10} {:>8} {:>8} {:>6} {:>10} {:>7} {:>10} {:>6} {:>8} {:>9}",
        "shape",
        "dev",
        "fused ms",
        "GB/s",
        "kern ms",
        "kern GB/s",
        "copy GB/s",
        "%copy",
        "fwd ms",
        "GB/s",
        "fwd kern",
        "%copy",
        "speedup",
        "max|diff|"
    );
}

fn report(case: Case, measurements: &[Measurement], gpu: Option<&Context>, json: bool) {
    let cpu_ms = measurements.iter().find(|m| m.backend == "cpu").map(|m| m.median_ms);
    // The largest difference of every other measurement from the first, loss and gradient.
    let max_diff = match measurements {
        [first, others @ ..] if !others.is_empty() && !case.in_place => Some(
            others
                .iter()
                .map(|other| {
                    max_abs_difference(&first.gradient, &other.gradient)
                        .max((f64::from(first.loss) - f64::from(other.loss)).abs())
                })
                .fold(0.0, f64::max),
        ),
        _ => None,
    };
    for measurement in measurements {
        let figures = figures(case, measurement, cpu_ms);
        if json {
            let gpu = gpu.filter(|_| measurement.backend == "gpu");
            print_json(case, measurement, gpu, &figures, max_diff);
        } else {
            print_row(case, measurement, &figures, max_diff);
        }
    }
}

/// One JSON line: the case, where it ran (backend, adapter, xent's version), and
/// its numbers. `device_resident` is false: `median_ms` is host memory to host
/// memory, `kernel_ms` the compute pass alone (timestamp queries).
fn print_json(case: Case, measurement: &Measurement, gpu: Option<&Context>, figures: &Figures, max_diff: Option<f64>) {
    let workgroup_size = measurement.workgroup_size.or_else(|| gpu.map(Context::workgroup_size));
    let fields = json!({
            "rows": case.shape.rows,
            "classes": case.shape.classes,
            "dtype": case.element.name(),
            "in_place": case.in_place,
            "device_resident": false,
            "workgroup_size": workgroup_size,
            "median_ms": measurement.median_ms,
            "gbps": figures.gbps,
            "kernel_ms": measurement.kernel_ms,
            "kernel_gbps": figures.kernel_gbps,
            "copy_gbps": measurement.copy.gbps,
            "copy_method": measurement.copy.method,
            "fraction_of_copy": figures.fraction_of_copy,
            "fraction_basis": figures.fraction_basis,
            "forward_ms": measurement.forward_ms,
            "forward_gbps": figures.forward_gbps,
            "forward_kernel_ms": measurement.forward_kernel_ms,
            "forward_kernel_gbps": figures.forward_kernel_gbps,
            "forward_fraction_of_copy": figures.forward_fraction_of_copy,
            "speedup_vs_cpu": figures.speedup_vs_cpu,
            "max_abs_diff": max_diff,
            "loss": measurement.loss,
    });
    println!("{}", report::with_machine(fields, gpu));
}

fn print_row(case: Case, measurement: &Measurement, figures: &Figures, max_diff: Option<f64>) {
    let optional = |value: Option<f64>, precision: usize| {
        value.map_or_else(|| "-".to_string(), |value| format!("{value:.precision$}"))
    };
    let percent = |fraction: f64| format!("{:.1}", fraction * 100.0);
    println!(
        "{:>22} {:>8} {:>10.3} {:>7.2} {:>10} {:>9} {:>9.2} {:>6} {:>10.3} {:>7.2} {:>10} {:>6} {:>8} {:>9}",
        case_label(case),
        device_label(measurement),
        measurement.median_ms,
        figures.gbps,
        optional(measurement.kernel_ms, 3),
        optional(figures.kernel_gbps, 2),
        measurement.copy.gbps,
        percent(figures.fraction_of_copy),
        measurement.forward_ms,
        figures.forward_gbps,
        optional(measurement.forward_kernel_ms, 3),
        percent(figures.forward_fraction_of_copy),
        optional(figures.speedup_vs_cpu, 2),
        max_diff.map_or_else(|| "-".to_string(), |diff| format!("{diff:.1e}")),
    );
}

/// `gpu`, `cpu`, or `gpu/256` in a workgroup-size sweep.
fn device_label(measurement: &Measurement) -> String {
    match measurement.workgroup_size {
        Some(size) => format!("{}/{size}", measurement.backend),
        None => measurement.backend.to_string(),
    }
}

fn max_abs_difference(first: &[f32], second: &[f32]) -> f64 {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------
// Plot
// ---------------------------------------------------------------------------

fn plot_point(case: Case, measurement: &Measurement) -> PlotPoint {
    let figures = figures(case, measurement, None);
    PlotPoint {
        device: device_label(measurement),
        element: case.element,
        elements: (case.shape.rows * case.shape.classes) as f64,
        gbps: figures.gbps,
        kernel_gbps: figures.kernel_gbps,
        copy_gbps: measurement.copy.gbps,
    }
}

/// `xent loss + gradient throughput: <adapter> vs <CPU>`.
fn plot_title(gpu: Option<&Context>, run_cpu: bool) -> String {
    let devices: Vec<String> = gpu
        .map(|context| context.adapter_info().name)
        .into_iter()
        .chain(run_cpu.then(|| format!("{} ({} threads)", cpu_model(), rayon::current_num_threads())))
        .collect();
    format!("xent fused loss + gradient throughput: {}", devices.join(" vs "))
}

/// One line of the plot: its legend label, points and style.
struct PlotLine {
    label: String,
    points: Vec<(f64, f64)>,
    color: plotters::style::RGBColor,
    dashed: bool,
}

/// Line colours of the GPU devices of a run (one per swept workgroup size), in order.
const GPU_COLORS: [plotters::style::RGBColor; 5] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
];
const CPU_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(214, 39, 40);
const KERNEL_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(44, 160, 44);

/// The colour halfway between `first` and `second`.
fn blend(first: plotters::style::RGBColor, second: plotters::style::RGBColor) -> plotters::style::RGBColor {
    let mix = |a: u8, b: u8| ((u16::from(a) + u16::from(b)) / 2) as u8;
    plotters::style::RGBColor(mix(first.0, second.0), mix(first.1, second.1), mix(first.2, second.2))
}

/// `color` for f32, lightened for bf16 and darkened for f16, so a device's
/// element types share a hue.
fn element_shade(color: plotters::style::RGBColor, element: Element) -> plotters::style::RGBColor {
    let (target, amount) = match element {
        Element::F32 => return color,
        Element::Bf16 => (255.0, 0.5),
        Element::F16 => (0.0, 0.4),
    };
    let mix = |channel: u8| (f64::from(channel) + (target - f64::from(channel)) * amount).round() as u8;
    plotters::style::RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// The plot's lines: per device and element type, end to end and compute pass
/// alone where timed; per device, copy bandwidth (dashed) as the ceiling, from
/// its f32 cases where it has them.
fn plot_lines(points: &[PlotPoint]) -> Vec<PlotLine> {
    let mut devices: Vec<&str> = Vec::new();
    for point in points {
        if !devices.contains(&point.device.as_str()) {
            devices.push(&point.device);
        }
    }
    let mut gpu_colors = GPU_COLORS.iter().cycle();
    let mut lines = Vec::new();
    for device in devices {
        let color = match device {
            "cpu" => CPU_COLOR,
            _ => gpu_colors.next().copied().unwrap_or(CPU_COLOR),
        };
        let series = |element: Option<Element>, value: &dyn Fn(&PlotPoint) -> Option<f64>| {
            let mut series: Vec<(f64, f64)> = points
                .iter()
                .filter(|point| point.device == device && element.is_none_or(|element| point.element == element))
                .filter_map(|point| Some((point.elements, value(point)?)))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            series
        };
        let mut candidates = Vec::new();
        for element in [Element::F32, Element::Bf16, Element::F16] {
            let name = element.name();
            candidates.push((
                format!("{device} {name} end to end (host memory to host memory)"),
                series(Some(element), &|p| Some(p.gbps)),
                element_shade(color, element),
                false,
            ));
            candidates.push((
                format!("{device} {name} compute pass alone (timestamps)"),
                series(Some(element), &|p| p.kernel_gbps),
                // Greenish, and distinct per device in a workgroup-size sweep.
                element_shade(blend(KERNEL_COLOR, color), element),
                false,
            ));
        }
        let copy_element = [Element::F32, Element::Bf16, Element::F16]
            .into_iter()
            .find(|&element| points.iter().any(|p| p.device == device && p.element == element));
        candidates.push((
            format!("{device} copy bandwidth (read + write)"),
            series(copy_element, &|p| Some(p.copy_gbps)),
            color,
            true,
        ));
        lines.extend(
            candidates
                .into_iter()
                .filter(|(_, points, _, _)| !points.is_empty())
                .map(|(label, points, color, dashed)| PlotLine {
                    label,
                    points,
                    color,
                    dashed,
                }),
        );
    }
    lines
}

/// The range `[low, high]` of `values` widened by the factors `below` and `above`,
/// for a log axis.
fn log_range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(low, high), value| {
            (low.min(value), high.max(value))
        });
    if high <= 0.0 {
        return 1.0..10.0;
    }
    // At least the decade around the lowest value, so that a single point (one
    // shape) still gets labelled ticks at two powers of ten.
    let decade = 10f64.powf(low.log10().floor());
    (low / below).min(decade)..(high * above).max(decade * 10.0)
}

/// A tick label with as many decimals as its size needs (0.05, 0.5, 5, 50).
fn axis_number(value: f64) -> String {
    let decimals = (-value.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{value:.decimals$}")
}

/// Draws GB/s (log) against N×C elements (log) into an SVG file at `path`.
/// The SVG of the throughput plot.
fn draw_plot(title: &str, points: &[PlotPoint]) -> Result<String, String> {
    use plotters::prelude::*;
    let lines = plot_lines(points);
    let x_range = log_range(
        lines.iter().flat_map(|line| line.points.iter().map(|point| point.0)),
        1.5,
        1.5,
    );
    let y_range = log_range(
        lines.iter().flat_map(|line| line.points.iter().map(|point| point.1)),
        2.0,
        // A decade of headroom keeps the legend (upper left) clear of the lines.
        12.0,
    );
    let to_message = |error: DrawingAreaErrorKind<std::io::Error>| format!("drawing the plot: {error}");
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(to_message)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())
        .map_err(to_message)?;
    chart
        .configure_mesh()
        .x_desc("N × C (logits, elements; log scale)")
        .y_desc("GB/s (2 × N × C × bytes per logit ÷ time; log scale)")
        .x_label_formatter(&|value| format!("{value:.1e}"))
        .y_label_formatter(&|value| axis_number(*value))
        .draw()
        .map_err(to_message)?;
    for line in lines {
        let style = ShapeStyle::from(line.color).stroke_width(2);
        let legend_style = style;
        let annotation = if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(line.points, 8, 5, style))
                .map_err(to_message)?
        } else {
            chart
                .draw_series(LineSeries::new(line.points, style).point_size(4))
                .map_err(to_message)?
        };
        annotation
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend_style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(to_message)?;
    root.present().map_err(to_message)?;
    drop(chart);
    drop(root);
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_spans_at_least_a_decade_of_powers_of_ten() {
        for value in [3.2e4, 1e6, 0.07] {
            let range = log_range(std::iter::once(value), 1.5, 1.5);
            let decade = 10f64.powf(value.log10().floor());
            assert!(
                range.start <= decade && range.end >= decade * 10.0,
                "{value}: {range:?}"
            );
            assert!(
                range.start <= value / 1.5 && range.end >= value * 1.5,
                "{value}: {range:?}"
            );
        }
        let range = log_range([1e3, 1e8].into_iter(), 2.0, 2.0);
        assert_eq!(range, 500.0..2e8);
    }
}
