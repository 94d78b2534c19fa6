//! Shared helpers of the integration tests: the GPU contexts (shared per test
//! binary), input generators and comparisons against the f64 reference.
#![allow(dead_code)]

pub mod digests;
pub mod family;
pub mod nonfinite;

use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;
use xent::half::{bf16, f16};
use xent::reference;
use xent::{
    Backend, Context, ContextOptions, Cpu, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Error, GradientOutput,
    LogitType, Loss, Shape, Targets, UpstreamGradient,
};

/// Binding cap of the chunking context: small enough that most test shapes are split.
pub const SMALL_BINDING: u64 = 2 << 20;

/// The largest absolute difference between `actual` and the f64 `expected`.
pub fn largest_difference(actual: &[f32], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(&actual, &expected)| (f64::from(actual) - expected).abs())
        .fold(0.0, f64::max)
}

/// The bits of a loss's values.
pub fn loss_bits(loss: &Loss) -> Vec<u32> {
    match loss {
        Loss::Reduced(value) => vec![value.to_bits()],
        Loss::PerRow(values) => values.iter().map(|value| value.to_bits()).collect(),
    }
}

/// True when the caller deliberately allows running without an adapter.
fn no_gpu_allowed() -> bool {
    std::env::var("XENT_ALLOW_NO_GPU").is_ok_and(|value| value == "1")
}

/// A context with `options`, or `None` only when `XENT_ALLOW_NO_GPU=1` and no
/// adapter exists.
pub fn open(options: ContextOptions) -> Option<Context> {
    match Context::with_options(options) {
        Ok(context) => Some(context),
        Err(error) if no_gpu_allowed() => {
            eprintln!("XENT_ALLOW_NO_GPU=1: skipping GPU checks ({error})");
            None
        }
        Err(error) => panic!(
            "no GPU adapter ({error}); install mesa-vulkan-drivers, or set XENT_ALLOW_NO_GPU=1 to run without GPU tests"
        ),
    }
}

/// The default context (subgroups where the adapter has them), or `None` only
/// when `XENT_ALLOW_NO_GPU=1` and no adapter exists.
pub fn gpu() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT.get_or_init(|| open(ContextOptions::default())).as_ref()
}

/// The row-kernel workgroup size of the non-default test contexts: what real
/// GPUs get ([`gpu`] has the adapter's own choice, 64 on lavapipe), so that the
/// large suites cover both.
pub const GPU_WORKGROUP_SIZE: u32 = 256;

/// A context forced onto the workgroup-memory reductions, with workgroups of
/// [`GPU_WORKGROUP_SIZE`].
pub fn gpu_without_subgroups() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            open(ContextOptions {
                use_subgroups: false,
                workgroup_size: Some(GPU_WORKGROUP_SIZE),
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// A context whose bindings are capped at [`SMALL_BINDING`] bytes, so that
/// batches are split into many chunks, with workgroups of [`GPU_WORKGROUP_SIZE`].
pub fn gpu_chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            open(ContextOptions {
                max_binding_size: Some(SMALL_BINDING),
                workgroup_size: Some(GPU_WORKGROUP_SIZE),
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// A context that splits every long enough contiguous f32 row over workgroups
/// of 64 invocations (`RowSplit::Forced`, one vec4 each: slices of 256 logits),
/// polling for the row's other slices.
pub fn gpu_split_rows() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            open(ContextOptions {
                workgroup_size: Some(64),
                row_split: xent::RowSplit::Forced {
                    vec4s_per_invocation: 1,
                    spin_limit: xent::DEFAULT_SPIN_LIMIT,
                },
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// Kinds of logits the accuracy tests cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Uniform in [-4, 4).
    Random,
    /// Uniform in [-1000, 1000).
    Scaled,
    /// Uniform in [-4, 4) plus 1e4.
    Offset,
    /// Every logit 0.5: loss = ln C exactly.
    AllEqual,
    /// Target logit 0, others -23 - u: losses around C · 1e-10.
    Confident,
}

pub const ALL_LOGITS: [Logits; 5] = [
    Logits::Random,
    Logits::Scaled,
    Logits::Offset,
    Logits::AllEqual,
    Logits::Confident,
];

/// Deterministic logits and i64 targets for `rows` × `classes`.
pub fn batch(rows: usize, classes: usize, kind: Logits, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (rows as u64) << 32 ^ classes as u64);
    let targets: Vec<i64> = (0..rows).map(|_| rng.random_range(0..classes as i64)).collect();
    let mut logits = Vec::with_capacity(rows * classes);
    for &target in &targets {
        for class in 0..classes {
            let uniform: f32 = rng.random_range(-4.0..4.0);
            logits.push(match kind {
                Logits::Random => uniform,
                Logits::Scaled => uniform * 250.0,
                Logits::Offset => uniform + 1.0e4,
                Logits::AllEqual => 0.5,
                Logits::Confident if class as i64 == target => 0.0,
                Logits::Confident => -23.0 - uniform.abs(),
            });
        }
    }
    (logits, targets)
}

pub fn class_indices(targets: &[i64]) -> Vec<u32> {
    targets.iter().map(|&target| target as u32).collect()
}

/// Asserts per-row losses within 1e-5 relative of the f64 reference.
pub fn assert_row_losses(actual: &[f32], expected: &[f64], context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: length");
    for (row, (&actual, &expected)) in actual.iter().zip(expected).enumerate() {
        let error = (f64::from(actual) - expected).abs();
        assert!(
            error <= 1e-5 * expected.abs() + 1e-30,
            "{context}: row {row} loss {actual:e} vs reference {expected:e} (relative error {:e})",
            error / expected.abs()
        );
    }
}

/// [`assert_row_losses`], except that a row whose reference is NaN must be NaN.
pub fn assert_row_losses_or_nan(actual: &[f32], expected: &[f64], context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: length");
    for (row, (&loss, &expected)) in actual.iter().zip(expected).enumerate() {
        if expected.is_nan() {
            assert!(loss.is_nan(), "{context}: row {row} loss {loss:e}, reference NaN");
        } else {
            assert_row_losses(&[loss], &[expected], &format!("{context}: row {row}"));
        }
    }
}

/// Asserts `loss` (reduced or per row) against `reference`; NaN where it is NaN.
pub fn assert_loss_matches(loss: &Loss, reference: &reference::ReferenceCrossEntropy, context: &str) {
    match loss {
        Loss::Reduced(loss) if reference.loss.is_nan() => {
            assert!(loss.is_nan(), "{context}: loss {loss:e}, reference NaN")
        }
        Loss::Reduced(loss) => assert_loss(*loss, reference.loss, context),
        Loss::PerRow(losses) => assert_row_losses_or_nan(losses, &reference.row_losses, context),
    }
}

/// Asserts a reduced loss within 1e-5 relative of the reference.
pub fn assert_loss(actual: f32, expected: f64, context: &str) {
    let error = (f64::from(actual) - expected).abs();
    assert!(
        error <= 1e-5 * expected.abs() + 1e-30,
        "{context}: loss {actual:e} vs reference {expected:e}"
    );
}

/// Asserts every gradient entry within 1e-6 · scale of the reference.
pub fn assert_gradient(actual: &[f32], expected: &[f64], scale: f64, context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: length");
    let (index, error) = actual
        .iter()
        .zip(expected)
        .map(|(&actual, &expected)| (f64::from(actual) - expected).abs())
        .enumerate()
        .fold(
            (0, 0.0f64),
            |worst, (index, error)| if error > worst.1 { (index, error) } else { worst },
        );
    assert!(
        error <= 1e-6 * scale,
        "{context}: gradient entry {index} is {} vs reference {} (error {error:e} > {:e})",
        actual[index],
        expected[index],
        1e-6 * scale
    );
}

/// Asserts that no gradient entry is further from the f64 reference than one
/// rounding of the largest entry to `logit_type` (1e-5 of it for f32).
pub fn assert_gradient_within_rounding(actual: &[f32], expected: &[f64], logit_type: LogitType, context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: length");
    let largest = expected.iter().fold(0.0f64, |largest, value| largest.max(value.abs()));
    let worst = actual.iter().zip(expected).fold(0.0f64, |worst, (&actual, &expected)| {
        worst.max((f64::from(actual) - expected).abs())
    });
    let tolerance = match logit_type {
        LogitType::Bf16 => 1.0 / 128.0,
        LogitType::F16 => 1.0 / 1024.0,
        LogitType::F32 => 1e-5,
    };
    assert!(
        worst <= tolerance * largest,
        "{context}: gradient error {worst:e} vs largest {largest:e}"
    );
}

/// The f64 reference: per-row losses, their mean, and the mean-reduction gradient.
pub struct Expected {
    pub row_losses: Vec<f64>,
    pub mean: f64,
    pub sum: f64,
    pub gradient_of_mean: Vec<f64>,
}

pub fn expected(logits: &[f32], targets: &[i64], classes: usize) -> Expected {
    let indices = class_indices(targets);
    let row_losses = reference::row_losses_f64(logits, &indices, classes);
    let sum: f64 = row_losses.iter().sum();
    let rows = targets.len();
    Expected {
        mean: sum / rows as f64,
        sum,
        gradient_of_mean: reference::gradient_f64(logits, &indices, classes, 1.0 / rows as f64),
        row_losses,
    }
}

/// Every backend under test: the CPU, the GPU with its default reductions and
/// the GPU on the workgroup-memory fallback (GPU entries absent only when
/// `XENT_ALLOW_NO_GPU=1` and there is no adapter).
pub fn all_backends() -> Vec<(&'static str, &'static dyn Backend)> {
    let mut backends: Vec<(&'static str, &'static dyn Backend)> = vec![("cpu", &Cpu)];
    if let Some(context) = gpu() {
        backends.push(("gpu", context));
    }
    if let Some(context) = gpu_without_subgroups() {
        backends.push(("gpu-shared-memory", context));
    }
    backends
}

/// Every byte of `buffer` (copied through a mapped staging buffer).
pub fn read_buffer(context: &Context, buffer: &wgpu::Buffer) -> Vec<u8> {
    let device = context.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    context.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| result.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let bytes = staging.slice(..).get_mapped_range().expect("mapped").to_vec();
    staging.unmap();
    bytes
}

/// The logits in `logit_type`'s bytes, and the values those bytes hold.
pub fn encoded(logits: &[f32], logit_type: LogitType) -> (Vec<u8>, Vec<f32>) {
    match logit_type {
        LogitType::Bf16 => {
            let values: Vec<bf16> = logits.iter().map(|&value| bf16::from_f32(value)).collect();
            let widened = values.iter().map(|value| value.to_f32()).collect();
            (bytemuck::cast_slice(&values).to_vec(), widened)
        }
        LogitType::F16 => {
            let values: Vec<f16> = logits.iter().map(|&value| f16::from_f32(value)).collect();
            let widened = values.iter().map(|value| value.to_f32()).collect();
            (bytemuck::cast_slice(&values).to_vec(), widened)
        }
        _ => (bytemuck::cast_slice(logits).to_vec(), logits.to_vec()),
    }
}

/// The values of `logit_type` entries in `bytes`.
pub fn decoded(bytes: &[u8], logit_type: LogitType) -> Vec<f32> {
    let pairs = bytes.chunks_exact(2).map(|pair| [pair[0], pair[1]]);
    match logit_type {
        LogitType::Bf16 => pairs.map(|pair| bf16::from_le_bytes(pair).to_f32()).collect(),
        LogitType::F16 => pairs.map(|pair| f16::from_le_bytes(pair).to_f32()).collect(),
        _ => bytemuck::pod_collect_to_vec(bytes),
    }
}

/// A storage buffer holding `bytes`.
pub fn storage_buffer(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test input"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE,
    })
}

/// `loss` of f32 `logits` through the device-resident door (recorded into our
/// own encoder, submitted, read), writing the gradient to a buffer of its own
/// when `gradient`.
pub fn device_loss(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    gradient: bool,
) -> Result<Loss, Error> {
    device_outputs(context, loss, logits, targets, shape, gradient)?.read(context)
}

/// [`device_loss`]'s outputs, submitted but not read yet.
pub fn device_outputs(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: &[f32],
    targets: Targets<'_>,
    shape: Shape,
    gradient: bool,
) -> Result<DeviceOutputs, Error> {
    let logits_buffer = storage_buffer(context, bytemuck::cast_slice(logits));
    let gradient_buffer = storage_buffer(context, bytemuck::cast_slice(logits));
    let targets_buffer = storage_buffer(context, targets.as_bytes());
    let outputs = DeviceOutputs::new(context, shape.rows)?;
    let inputs = DeviceInputs {
        logits: logits_buffer.slice(..),
        logit_type: LogitType::F32,
        targets: targets_buffer.slice(..),
        target_type: targets.target_type(),
        shape,
        gradient: if gradient {
            GradientOutput::Buffer(gradient_buffer.slice(..))
        } else {
            GradientOutput::Skip
        },
        upstream: UpstreamGradient::ONE,
    };
    let mut encoder = context
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    loss.record(context, &mut encoder, &inputs, &outputs)?;
    context.queue().submit([encoder.finish()]);
    Ok(outputs)
}

/// Fills every byte of a test buffer outside the caller's slice.
pub const FILL: u8 = 0x5a;
/// Bytes after each slice, so that a write past its end would show.
pub const AFTER: u64 = 24;

/// A storage buffer holding `data` at byte `lead`, `FILL` elsewhere.
pub fn filled_buffer(context: &Context, data: &[u8], lead: u64) -> wgpu::Buffer {
    filled_buffer_with_tail(context, data, lead, AFTER)
}

/// [`filled_buffer`] with `after` bytes of `FILL` after the data (then rounded up to a word).
pub fn filled_buffer_with_tail(context: &Context, data: &[u8], lead: u64, after: u64) -> wgpu::Buffer {
    let mut bytes = vec![FILL; (lead + data.len() as u64 + after).next_multiple_of(4) as usize];
    bytes[lead as usize..lead as usize + data.len()].copy_from_slice(data);
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test slice"),
        contents: &bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// The `len` bytes at `lead` of `buffer`, after checking that every other byte is `FILL`.
pub fn slice_bytes(context: &Context, buffer: &wgpu::Buffer, lead: u64, len: usize, what: &str) -> Vec<u8> {
    let all = read_buffer(context, buffer);
    let range = lead as usize..lead as usize + len;
    let outside = all.iter().enumerate().filter(|(index, _)| !range.contains(index));
    if let Some((index, byte)) = outside.into_iter().find(|&(_, &byte)| byte != FILL) {
        panic!("{what}: byte {index} outside the slice became {byte:#x}");
    }
    all[range].to_vec()
}

/// One call through the device-resident door on slices of i64-target batches
/// that start `logits_lead` (and `gradient_lead`) bytes into buffers filled
/// with `FILL` elsewhere.
pub struct SliceCall<'a> {
    pub logit_bytes: &'a [u8],
    pub logit_type: LogitType,
    pub targets: &'a [i64],
    pub shape: Shape,
    pub logits_lead: u64,
    /// The gradient's slice, or `None` for the gradient over the logits.
    pub gradient_lead: Option<u64>,
    pub upstream_scale: f32,
    /// Bytes of `FILL` after the logits' and the gradient's slices (`AFTER` usually).
    pub after: u64,
}

impl<'a> SliceCall<'a> {
    /// A call with the upstream factor 1 and `AFTER` bytes after the slices;
    /// `leads`: the logits' and (`None` in place) the gradient's.
    pub fn plain(
        logit_bytes: &'a [u8],
        logit_type: LogitType,
        targets: &'a [i64],
        shape: Shape,
        leads: (u64, Option<u64>),
    ) -> Self {
        Self {
            logit_bytes,
            logit_type,
            targets,
            shape,
            logits_lead: leads.0,
            gradient_lead: leads.1,
            upstream_scale: 1.0,
            after: AFTER,
        }
    }

    /// The loss of `loss` and the gradient's bytes, after checking that no byte
    /// outside the slices changed (nor, with a separate gradient, the logits).
    pub fn run(&self, context: &Context, loss: &CrossEntropyLoss, what: &str) -> (Loss, Vec<u8>) {
        let len = self.logit_bytes.len();
        let logits = filled_buffer_with_tail(context, self.logit_bytes, self.logits_lead, self.after);
        let gradient_lead = self.gradient_lead.unwrap_or(0);
        let gradient = filled_buffer_with_tail(context, &vec![FILL; len], gradient_lead, self.after);
        let targets = filled_buffer(context, bytemuck::cast_slice(self.targets), 0);
        let slice = |buffer, lead| bytes_at(buffer, lead, len);
        let inputs = DeviceInputs {
            logits: slice(&logits, self.logits_lead),
            logit_type: self.logit_type,
            targets: targets.slice(..self.targets.len() as u64 * 8),
            target_type: xent::TargetType::I64,
            shape: self.shape,
            gradient: match self.gradient_lead {
                Some(lead) => GradientOutput::Buffer(slice(&gradient, lead)),
                None => GradientOutput::InPlace,
            },
            upstream: UpstreamGradient {
                scale: self.upstream_scale,
                values: None,
            },
        };
        let outputs = DeviceOutputs::new(context, self.shape.rows).expect("outputs");
        let mut encoder = context.device().create_command_encoder(&Default::default());
        loss.record(context, &mut encoder, &inputs, &outputs)
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        context.queue().submit([encoder.finish()]);
        let result = outputs.read(context).expect("read");
        let written = slice_bytes(context, &logits, self.logits_lead, len, what);
        if self.gradient_lead.is_none() {
            return (result, written);
        }
        assert_eq!(written, self.logit_bytes, "{what}: logits changed");
        (result, slice_bytes(context, &gradient, gradient_lead, len, what))
    }
}

/// The `len` bytes of `buffer` from byte `lead`.
fn bytes_at(buffer: &wgpu::Buffer, lead: u64, len: usize) -> wgpu::BufferSlice<'_> {
    buffer.slice(lead..lead + len as u64)
}
