//! Host-memory calls (both backends): the bench's synthetic logits, the median wall
//! time of repeated calls after warm-up, and the fused and forward calls timed
//! from host slices to host slices.

use std::time::Instant;

use xent::half::{bf16, f16};
use xent::{CrossEntropyLoss, Shape};

use super::args::Element;
use crate::progress;

/// Untimed calls before the timed ones, for every timing.
const WARMUP_CALLS: u32 = 2;

/// The inputs `xent bench` times on `shape`: deterministic logits in [-8, 8)
/// (row-major, rows × classes) and one target class per row, from a SplitMix64
/// stream, so that a test can check the bench's loss against a reference.
///
/// ```
/// let (logits, targets) = xent_cli::synthetic_batch(xent::Shape::new(2, 3));
/// assert_eq!((logits.len(), targets.len()), (6, 2));
/// assert!(logits.iter().all(|logit| (-8.0..8.0).contains(logit)));
/// assert!(targets.iter().all(|target| (0..3).contains(target)));
/// ```
pub fn synthetic_batch(shape: Shape) -> (Vec<f32>, Vec<i64>) {
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

/// The logits of one benchmark, in its element type.
pub(super) enum BenchLogits {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl BenchLogits {
    /// `logits` in `element` (16-bit types: rounded to nearest).
    pub(super) fn new(logits: Vec<f32>, element: Element) -> Self {
        match element {
            Element::F32 => Self::F32(logits),
            Element::F16 => Self::F16(logits.iter().map(|&value| f16::from_f32(value)).collect()),
            Element::Bf16 => Self::Bf16(logits.iter().map(|&value| bf16::from_f32(value)).collect()),
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::F32(values) => bytemuck::cast_slice(values),
            Self::F16(values) => bytemuck::cast_slice(values),
            Self::Bf16(values) => bytemuck::cast_slice(values),
        }
    }

    pub(super) fn element(&self) -> Element {
        match self {
            Self::F32(_) => Element::F32,
            Self::F16(_) => Element::F16,
            Self::Bf16(_) => Element::Bf16,
        }
    }

    /// Median wall times of the fused call and of `loss` on `backend`, host slices
    /// to host slices, and the fused call's loss and gradient (widened to f32; empty
    /// `in_place`, where the gradient overwrites these logits).
    pub(super) fn time_host_calls(
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

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median wall time in ms of `call` over `reps` calls after [`WARMUP_CALLS`].
pub(super) fn median_wall_ms(reps: u32, mut call: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
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
pub(super) fn gbps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

/// A backend's end-to-end timings: fused call, forward call, and the fused results.
pub(super) struct HostTimings {
    pub(super) median_ms: f64,
    pub(super) forward_ms: f64,
    pub(super) loss: f32,
    pub(super) gradient: Vec<f32>,
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
