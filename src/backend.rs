//! The two backends behind one trait: the GPU [`Context`] and the [`Cpu`].

use crate::cpu;
use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::readback::Wait;
use crate::options::CrossEntropyOptions;
use crate::types::{HostBatch, LossOutput};

/// Where a loss is computed: the GPU [`Context`] or the [`Cpu`]. The one place
/// that knows both backends: each loss's host call dispatches here.
///
/// ```
/// use xent::{Backend, Cpu, CrossEntropyLoss, Shape};
///
/// /// One training step's loss, wherever it runs (`&Cpu` or `&Context`).
/// fn step_loss(backend: &dyn Backend, logits: &[f32], targets: &[i64]) -> xent::Result<f32> {
///     let shape = Shape::new(targets.len(), logits.len() / targets.len());
///     Ok(CrossEntropyLoss::new().loss(backend, logits, targets, shape)?.value().unwrap_or(f32::NAN))
/// }
/// let loss = step_loss(&Cpu, &[0.0, 2.0], &[1])?;
/// assert!((loss - (-2f32).exp().ln_1p()).abs() < 1e-6); // log(1 + e^-2)
/// # Ok::<(), xent::Error>(())
/// ```
pub trait Backend {
    /// A short description for reports, e.g. `gpu (NVIDIA H100, Vulkan)`.
    ///
    /// ```
    /// use xent::{Backend, Cpu};
    ///
    /// assert!(Cpu.describe().starts_with("cpu ("));
    /// ```
    fn describe(&self) -> String;

    /// The GPU context, or `None` for the CPU.
    ///
    /// ```
    /// use xent::{Backend, Cpu};
    ///
    /// assert!(Cpu.gpu().is_none());
    /// ```
    fn gpu(&self) -> Option<&Context>;

    /// The categorical cross-entropy of `batch` with `options`, blocking until the
    /// result is on the host (the builders' door: [`crate::CrossEntropyLoss::run`]).
    ///
    /// ```
    /// use xent::{Backend, Cpu, CrossEntropyOptions, HostBatch, HostLogits, Logits, Shape, Targets};
    ///
    /// let batch = HostBatch {
    ///     logits: HostLogits::new(Logits::F32(&[0.0, 0.0, 0.0]), None),
    ///     targets: Targets::U32(&[2]),
    ///     shape: Shape::new(1, 3),
    ///     row_stats: false,
    /// };
    /// let output = Cpu.cross_entropy(&CrossEntropyOptions::default(), batch)?;
    /// assert!((output.loss.value().unwrap() - 3f32.ln()).abs() < 1e-6);
    /// # Ok::<(), xent::Error>(())
    /// ```
    fn cross_entropy(&self, options: &CrossEntropyOptions, batch: HostBatch<'_>) -> Result<LossOutput>;
}

impl Backend for Context {
    fn describe(&self) -> String {
        let info = self.adapter_info();
        format!("gpu ({}, {:?})", info.name, info.backend)
    }

    fn gpu(&self) -> Option<&Context> {
        Some(self)
    }

    fn cross_entropy(&self, options: &CrossEntropyOptions, batch: HostBatch<'_>) -> Result<LossOutput> {
        pollster::block_on(self.compute_host(options, batch, Wait::Inline))
    }
}

/// The CPU backend: the same API on the host's cores (f32, vectorised exp,
/// rows split across threads). The baseline of the benchmarks and the fallback
/// when no adapter exists.
///
/// ```
/// use xent::{Backend, Cpu, CrossEntropyLoss, Shape};
///
/// let loss = CrossEntropyLoss::new().loss(&Cpu, &[0.0f32, 0.0], &[1i64], Shape::new(1, 2))?;
/// assert!((loss.value().unwrap() - 2f32.ln()).abs() < 1e-6);
/// assert!(Cpu.describe().starts_with("cpu"));
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn gpu(&self) -> Option<&Context> {
        None
    }

    fn cross_entropy(&self, options: &CrossEntropyOptions, batch: HostBatch<'_>) -> Result<LossOutput> {
        cpu::cross_entropy::cross_entropy_batch(options, batch)
    }
}
