//! `xent bench`: times the fused loss + gradient from host memory to host memory
//! (after warm-up, median of the repetitions), the GPU kernel alone through
//! timestamp queries where the adapter has them, and compares the backends.

use std::time::Instant;

use serde_json::json;
use xent::{Context, Cpu, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Shape, TargetType};

/// Classes of the default shape sized to exceed the storage binding limit.
const OVER_BINDING_CLASSES: usize = 32_000;
/// Binding limit assumed for that shape when no GPU is in use (lavapipe's).
const DEFAULT_BINDING_LIMIT: u64 = 128 << 20;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rows of a single shape to time (with --classes); default: the standard shapes.
    #[arg(long, requires = "classes")]
    rows: Option<usize>,
    /// Classes of that shape.
    #[arg(long, requires = "rows")]
    classes: Option<usize>,
    #[arg(long, value_enum, default_value_t = BenchBackends::Both)]
    backend: BenchBackends,
    /// Timed repetitions per shape and backend (after warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// One JSON object per shape and backend instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchBackends {
    Gpu,
    Cpu,
    Both,
}

/// One backend's numbers on one shape.
struct Measurement {
    backend: &'static str,
    median_ms: f64,
    kernel_ms: Option<f64>,
    loss: f32,
    gradient: Vec<f32>,
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let gpu = match args.backend {
        BenchBackends::Gpu | BenchBackends::Both => Some(Context::new().map_err(|error| error.to_string())?),
        BenchBackends::Cpu => None,
    };
    let run_cpu = args.backend != BenchBackends::Gpu;
    let shapes = match (args.rows, args.classes) {
        (Some(rows), Some(classes)) => vec![Shape::new(rows, classes)],
        _ => default_shapes(gpu.as_ref()),
    };
    if !args.json {
        if let Some(context) = &gpu {
            println!("{}", xent::Backend::describe(context));
        }
        println!(
            "{:>16} {:>7} {:>11} {:>9} {:>11} {:>9} {:>12}",
            "shape", "backend", "median ms", "GB/s", "kernel ms", "speedup", "max |diff|"
        );
    }
    for shape in shapes {
        let (logits, targets) = synthetic_batch(shape);
        let mut measurements = Vec::new();
        if let Some(context) = &gpu {
            measurements.push(measure_host(context, "gpu", &logits, &targets, shape, args.reps)?);
            if let Some(last) = measurements.last_mut() {
                last.kernel_ms = kernel_time(context, &logits, &targets, shape, args.reps)?;
            }
        }
        if run_cpu {
            measurements.push(measure_host(&Cpu, "cpu", &logits, &targets, shape, args.reps)?);
        }
        report(shape, &measurements, args.json);
    }
    Ok(())
}

/// 64×1000, 1024×32000, 4096×32000 and one shape whose logits exceed the binding limit.
fn default_shapes(gpu: Option<&Context>) -> Vec<Shape> {
    let binding_limit = gpu.map_or(DEFAULT_BINDING_LIMIT, Context::max_binding_size);
    let over_binding_rows = (binding_limit / (OVER_BINDING_CLASSES as u64 * 4)) as usize + 64;
    vec![
        Shape::new(64, 1000),
        Shape::new(1024, 32_000),
        Shape::new(4096, 32_000),
        Shape::new(over_binding_rows, OVER_BINDING_CLASSES),
    ]
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

/// Median wall time of `loss_and_grad` from host slices to host slices.
fn measure_host(
    backend: &dyn xent::Backend,
    name: &'static str,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
    reps: u32,
) -> Result<Measurement, String> {
    let loss = CrossEntropyLoss::new();
    let mut gradient = vec![0.0f32; logits.len()];
    let mut value = 0.0;
    for _ in 0..2 {
        value = loss
            .loss_and_grad(backend, logits, targets, shape, &mut gradient)
            .map_err(|error| error.to_string())?
            .value()
            .unwrap_or(f32::NAN);
    }
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        loss.loss_and_grad(backend, logits, targets, shape, &mut gradient)
            .map_err(|error| error.to_string())?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Measurement {
        backend: name,
        median_ms: median(times),
        kernel_ms: None,
        loss: value,
        gradient,
    })
}

/// Median GPU time of the recorded compute pass, from timestamp queries, or
/// `None` when the adapter has no `TIMESTAMP_QUERY`.
fn kernel_time(
    context: &Context,
    logits: &[f32],
    targets: &[i64],
    shape: Shape,
    reps: u32,
) -> Result<Option<f64>, String> {
    if !context.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        return Ok(None);
    }
    let to_message = |error: xent::Error| error.to_string();
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
    let logits_buffer = storage("bench logits", bytemuck::cast_slice(logits));
    let targets_buffer = storage("bench targets", bytemuck::cast_slice(targets));
    let gradient_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench gradient"),
        size: std::mem::size_of_val(logits) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let outputs = DeviceOutputs::new(context, shape.rows).map_err(to_message)?;
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("bench timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolved = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench timestamps resolved"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench timestamps readback"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let inputs = DeviceInputs {
        logits: &logits_buffer,
        targets: &targets_buffer,
        target_type: TargetType::I64,
        shape,
        gradient: Some(&gradient_buffer),
    };
    let period_ns = f64::from(context.queue().get_timestamp_period());
    let loss = CrossEntropyLoss::new();
    let mut times = Vec::new();
    for rep in 0..reps + 1 {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        let timestamps = wgpu::ComputePassTimestampWrites {
            query_set: &queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        };
        loss.record_with_timestamps(context, &mut encoder, &inputs, &outputs, Some(timestamps))
            .map_err(to_message)?;
        encoder.resolve_query_set(&queries, 0..2, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, 16);
        context.queue().submit([encoder.finish()]);
        outputs.read(context).map_err(to_message)?;
        let ticks = read_timestamps(context, &readback)?;
        if rep > 0 {
            times.push(ticks.1.saturating_sub(ticks.0) as f64 * period_ns / 1e6);
        }
    }
    Ok(Some(median(times)))
}

fn read_timestamps(context: &Context, readback: &wgpu::Buffer) -> Result<(u64, u64), String> {
    let slice = readback.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|error| error.to_string())?;
    let ticks = {
        let bytes = slice.get_mapped_range().map_err(|error| error.to_string())?;
        let words: &[u64] = bytemuck::cast_slice(&bytes);
        (words[0], words[1])
    };
    readback.unmap();
    Ok(ticks)
}

fn report(shape: Shape, measurements: &[Measurement], json: bool) {
    let bytes = 2.0 * (shape.rows * shape.classes * 4) as f64;
    let cpu_ms = measurements.iter().find(|m| m.backend == "cpu").map(|m| m.median_ms);
    let max_diff = match measurements {
        [first, second] => Some(
            max_abs_difference(&first.gradient, &second.gradient)
                .max((f64::from(first.loss) - f64::from(second.loss)).abs()),
        ),
        _ => None,
    };
    for measurement in measurements {
        let gbps = bytes / (measurement.median_ms * 1e-3) / 1e9;
        let speedup = match (measurement.backend, cpu_ms) {
            ("gpu", Some(cpu_ms)) => Some(cpu_ms / measurement.median_ms),
            _ => None,
        };
        if json {
            println!(
                "{}",
                json!({
                    "rows": shape.rows,
                    "classes": shape.classes,
                    "backend": measurement.backend,
                    "median_ms": measurement.median_ms,
                    "gbps": gbps,
                    "kernel_ms": measurement.kernel_ms,
                    "kernel_gbps": measurement.kernel_ms.map(|ms| bytes / (ms * 1e-3) / 1e9),
                    "speedup_vs_cpu": speedup,
                    "max_abs_diff": max_diff,
                    "loss": measurement.loss,
                })
            );
        } else {
            let optional = |value: Option<f64>, precision: usize| {
                value.map_or_else(|| "-".to_string(), |value| format!("{value:.precision$}"))
            };
            println!(
                "{:>16} {:>7} {:>11.3} {:>9.2} {:>11} {:>9} {:>12}",
                format!("{}x{}", shape.rows, shape.classes),
                measurement.backend,
                measurement.median_ms,
                gbps,
                optional(measurement.kernel_ms, 3),
                optional(speedup, 2),
                max_diff.map_or_else(|| "-".to_string(), |diff| format!("{diff:.2e}")),
            );
        }
    }
}

fn max_abs_difference(first: &[f32], second: &[f32]) -> f64 {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max)
}
