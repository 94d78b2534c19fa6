//! Burn's `CrossEntropyLoss` on burn-wgpu with autodiff (forward + backward) against
//! xent's fused GPU path, in one process, on the same adapter and the same shapes.
//!
//! ```text
//! cd benches/burn && cargo run --release -- [--shapes 64x1000,1024x32000] [--reps 5] [--warmup 2]
//! ```
//!
//! Two modes per shape, each the median of `--reps` timed calls after `--warmup`:
//!
//! - `host`: logits and targets in host memory, gradient back in host memory
//!   (burn: `from_data`, forward, backward, `grad(..).into_data()`; xent:
//!   `loss_and_grad` on host slices).
//! - `device`: logits and targets already on the GPU, gradient left there (burn:
//!   forward, backward, `grad`, `Device::sync`; xent: `record` into an encoder,
//!   submit, wait for the queue; like burn's `sync`, nothing is read back).
//!
//! Burn 0.22's tensors are backend-erased: `Device::wgpu_options().init_with_setup()`
//! brings up the wgpu runtime (and tells which adapter it took), `.autodiff()` makes
//! it the `Autodiff<Wgpu>` of earlier releases. xent's `Context` is then opened on the
//! adapter of the same name and backend: two wgpu devices on one adapter.
//!
//! Output: one JSON object per line, `{"rows","classes","backend","mode","median_ms",..}`
//! for `burn-wgpu` and `xent-gpu`, the burn line carrying `ratio_burn_over_xent` and the
//! largest difference between the two gradients and losses. Where burn fails on a
//! shape its line carries `error` instead (cubecl allocates a tensor within one
//! storage binding, `min(max_storage_buffer_binding_size, max_buffer_size)`: 128 MiB
//! on lavapipe, so 4096×32000 f32 logits cannot be created there), and xent's lines
//! follow as usual.

use std::time::Instant;

use burn::nn::loss::{CrossEntropyLoss as BurnCrossEntropy, CrossEntropyLossConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::json;
use xent::{
    Context, ContextOptions, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Shape,
    TargetType, UpstreamGradient,
};

/// The first three standard shapes of `xent bench`.
const DEFAULT_SHAPES: &str = "64x1000,1024x32000,4096x32000";

/// Command-line options.
struct Options {
    /// Shapes to time, in order.
    shapes: Vec<Shape>,
    /// Timed calls per shape, library and mode.
    reps: u32,
    /// Untimed calls before them.
    warmup: u32,
}

fn main() -> Result<(), String> {
    let options = parse_options(std::env::args().skip(1))?;
    let (burn_device, adapter) = burn_device()?;
    let context = xent_context_on(&adapter)?;
    eprintln!(
        "burn-wgpu adapter: {} ({:?}); xent adapter: {} ({:?})",
        adapter.name,
        adapter.backend,
        context.adapter_info().name,
        context.adapter_info().backend
    );
    for shape in &options.shapes {
        bench_shape(&burn_device, &context, *shape, &options)?;
    }
    Ok(())
}

/// Parses `--shapes RxC,..`, `--reps K` and `--warmup W`.
fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        shapes: parse_shapes(DEFAULT_SHAPES)?,
        reps: 5,
        warmup: 2,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--shapes" => options.shapes = parse_shapes(&value)?,
            "--reps" => options.reps = value.parse().map_err(|_| format!("--reps {value}"))?,
            "--warmup" => options.warmup = value.parse().map_err(|_| format!("--warmup {value}"))?,
            _ => return Err(format!("unknown option {flag} (--shapes, --reps, --warmup)")),
        }
    }
    if options.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    Ok(options)
}

/// `64x1000,4096x32000` into shapes.
fn parse_shapes(list: &str) -> Result<Vec<Shape>, String> {
    list.split(',')
        .map(|text| {
            let (rows, classes) = text
                .trim()
                .split_once('x')
                .ok_or_else(|| format!("`{text}` is not RxC"))?;
            let count = |part: &str| part.trim().parse::<usize>().map_err(|_| format!("`{text}` is not RxC"));
            Ok(Shape::new(count(rows)?, count(classes)?))
        })
        .collect()
}

/// Burn's wgpu device with autodiff, and the adapter it runs on.
fn burn_device() -> Result<(Device, wgpu::AdapterInfo), String> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|error| format!("burn-wgpu init: {error:?}"))?;
    Ok((device.autodiff(), setup.adapter.get_info()))
}

/// An xent context on the adapter burn took (same name, same backend).
fn xent_context_on(adapter: &wgpu::AdapterInfo) -> Result<Context, String> {
    let options = ContextOptions {
        backends: Some(wgpu::Backends::from(adapter.backend)),
        adapter_name: Some(adapter.name.clone()),
        ..ContextOptions::default()
    };
    Context::with_options(options).map_err(|error| format!("xent context: {error}"))
}

/// Deterministic logits in [-8, 8) and targets (the same generator as `xent bench`).
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

/// The logits and targets of one shape, on the host.
struct Batch {
    shape: Shape,
    logits: Vec<f32>,
    targets: Vec<i64>,
}

/// How far burn's results are from xent's on one shape.
struct Differences {
    /// Largest |burn - xent| over the gradient.
    gradient: f64,
    /// |burn - xent| of the mean loss.
    loss: f64,
}

/// Times both libraries in both modes on one shape and prints the JSON lines. A
/// burn failure (it cannot allocate a tensor above the storage binding limit, for
/// one) is printed as an `error` line next to xent's timings.
fn bench_shape(device: &Device, context: &Context, shape: Shape, options: &Options) -> Result<(), String> {
    let (logits, targets) = synthetic_batch(shape);
    let batch = Batch { shape, logits, targets };
    let (xent_loss, xent_gradient) = xent_host_call(context, &batch)?;
    let differences = burn_host_call(device, &batch).map(|(burn_loss, burn_gradient)| Differences {
        gradient: max_abs_difference(&burn_gradient, &xent_gradient),
        loss: f64::from((burn_loss - xent_loss).abs()),
    });
    drop(xent_gradient);
    let xent_host = median_ms(options, || xent_host_call(context, &batch).map(drop))?;
    let xent_device = xent_device_resident_ms(context, &batch, options)?;
    match differences {
        Ok(differences) => {
            let burn_host = median_ms(options, || burn_host_call(device, &batch).map(drop))?;
            print_pair(shape, "host", burn_host, xent_host, &differences);
            let burn_device = burn_device_resident_ms(device, &batch, options)?;
            print_pair(shape, "device", burn_device, xent_device, &differences);
        }
        Err(error) => {
            println!(
                "{}",
                json!({ "rows": shape.rows, "classes": shape.classes, "backend": "burn-wgpu", "error": error })
            );
            print_xent(shape, "host", xent_host);
            print_xent(shape, "device", xent_device);
        }
    }
    Ok(())
}

/// A burn error on one line: its messages without the backtraces.
fn one_line(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains("backtrace") && !line.starts_with("Asked at"))
        .collect();
    lines.join(" / ")
}

/// Median wall time in ms of `call` over `options.reps` after `options.warmup` calls.
fn median_ms(options: &Options, mut call: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    for _ in 0..options.warmup {
        call()?;
    }
    let mut times = Vec::new();
    for _ in 0..options.reps {
        let start = Instant::now();
        call()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Burn, host memory to host memory: upload, forward, backward, gradient back.
fn burn_host_call(device: &Device, batch: &Batch) -> Result<(f32, Vec<f32>), String> {
    let shape = batch.shape;
    let logits_data = TensorData::new(batch.logits.clone(), [shape.rows, shape.classes]);
    let targets_data = TensorData::new(batch.targets.clone(), [shape.rows]);
    let logits = Tensor::<2>::from_data(logits_data, device).require_grad();
    let targets = Tensor::<1, Int>::from_data(targets_data, device);
    let loss = burn_loss(device).forward(logits.clone(), targets);
    let gradients = loss.backward();
    let gradient = logits
        .grad(&gradients)
        .ok_or("burn returned no gradient for the logits")?;
    let values = gradient
        .try_into_data()
        .map_err(one_line)?
        .try_into_vec::<f32>()
        .map_err(one_line)?;
    Ok((loss.try_into_scalar::<f32>().map_err(one_line)?, values))
}

/// Burn's loss with PyTorch's defaults (mean, no weights, no smoothing).
fn burn_loss(device: &Device) -> BurnCrossEntropy {
    CrossEntropyLossConfig::new().init(device)
}

/// xent, host memory to host memory: `loss_and_grad` on host slices.
fn xent_host_call(context: &Context, batch: &Batch) -> Result<(f32, Vec<f32>), String> {
    let mut gradient = vec![0.0f32; batch.logits.len()];
    let loss = CrossEntropyLoss::new()
        .loss_and_grad(context, &batch.logits, &batch.targets, batch.shape, &mut gradient)
        .map_err(|error| error.to_string())?;
    Ok((loss.value().unwrap_or(f32::NAN), gradient))
}

/// Burn with the logits and targets already on the device: forward, backward,
/// gradient, then `sync` (the gradient is kept alive across the sync so the lazy
/// fusion stream has to compute it).
fn burn_device_resident_ms(device: &Device, batch: &Batch, options: &Options) -> Result<f64, String> {
    let shape = batch.shape;
    let logits = Tensor::<2>::from_data(
        TensorData::new(batch.logits.clone(), [shape.rows, shape.classes]),
        device,
    )
    .require_grad();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [shape.rows]), device);
    let loss_fn = burn_loss(device);
    device
        .sync()
        .map_err(|error| format!("burn sync: {}", one_line(error)))?;
    median_ms(options, || {
        let loss = loss_fn.forward(logits.clone(), targets.clone());
        let gradients = loss.backward();
        let gradient = logits.grad(&gradients);
        device
            .sync()
            .map_err(|error| format!("burn sync: {}", one_line(error)))?;
        drop((gradient, loss));
        Ok(())
    })
}

/// xent with the logits and targets already in device buffers: record, submit,
/// wait until the queue is idle (no readback, as burn's `sync`).
fn xent_device_resident_ms(context: &Context, batch: &Batch, options: &Options) -> Result<f64, String> {
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
    let logits = storage("logits", bytemuck::cast_slice(&batch.logits));
    let targets = storage("targets", bytemuck::cast_slice(&batch.targets));
    let gradient = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gradient"),
        size: logits.size(),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let outputs = DeviceOutputs::new(context, batch.shape.rows).map_err(to_message)?;
    let inputs = DeviceInputs {
        logits: logits.slice(..),
        logit_type: LogitType::F32,
        targets: targets.slice(..),
        target_type: TargetType::I64,
        shape: batch.shape,
        gradient: GradientOutput::Buffer(gradient.slice(..)),
        upstream: UpstreamGradient::ONE,
    };
    let loss = CrossEntropyLoss::new();
    median_ms(options, || {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("xent") });
        loss.record(context, &mut encoder, &inputs, &outputs)
            .map_err(to_message)?;
        context.queue().submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(drop)
            .map_err(|error| error.to_string())
    })
}

/// Prints the burn and xent lines of one shape and mode.
fn print_pair(shape: Shape, mode: &str, burn_ms: f64, xent_ms: f64, differences: &Differences) {
    println!(
        "{}",
        json!({
            "rows": shape.rows,
            "classes": shape.classes,
            "backend": "burn-wgpu",
            "mode": mode,
            "median_ms": burn_ms,
            "ratio_burn_over_xent": burn_ms / xent_ms,
            "gradient_max_abs_diff_vs_xent": differences.gradient,
            "loss_abs_diff_vs_xent": differences.loss,
        })
    );
    print_xent(shape, mode, xent_ms);
}

/// Prints xent's line of one shape and mode.
fn print_xent(shape: Shape, mode: &str, xent_ms: f64) {
    println!(
        "{}",
        json!({ "rows": shape.rows, "classes": shape.classes, "backend": "xent-gpu", "mode": mode, "median_ms": xent_ms })
    );
}

fn max_abs_difference(first: &[f32], second: &[f32]) -> f64 {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max)
}
