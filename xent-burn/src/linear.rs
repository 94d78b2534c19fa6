//! Chunked linear + cross-entropy for language-model heads: the loss of
//! `logits = hidden · weightᵀ + bias` and the gradients of `hidden`, `weight` and
//! `bias`, without ever holding more than one chunk of rows' logits.
//!
//! For each chunk of rows `r₀..r₁`:
//!
//! ```text
//! L_c  = h[r₀..r₁] · Wᵀ + b                   Burn's matmul, [chunk, V]
//! G_c  = s · ∂(Σ_rows ℓ_i)/∂L_c               xent, in place over L_c (s: below)
//! dh[r₀..r₁] = G_c · W                        [chunk, H]
//! dW += G_cᵀ · h[r₀..r₁]                      [V, H]
//! db += Σ_rows G_c                            [V]
//! ```
//!
//! xent runs each chunk with reduction `none` (per-row losses, the gradient of
//! their sum); the reduction is applied over the whole batch: `sum` adds the
//! rows' losses, `mean` divides them by the whole batch's divisor `D` (the
//! number of rows whose target is not `ignore_index`, or with class weights
//! `Σ w[target]` over them, as PyTorch), computed once up front on the device.
//! The gradient factor `s` is `1/D` for `mean` (1 otherwise), handed to xent as
//! its upstream gradient (a one-value device buffer: no host round trip), so the
//! gradient is scaled inside the kernel. `D = 0` gives a NaN loss and NaN
//! gradients for the rows not ignored, as PyTorch's `0/0`.

use burn::backend::Backend;
use burn::backend::DType;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::NodeGuard;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Int, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use xent::{CrossEntropyOptions, DeviceInputs, GradientOutput, LogitType, Reduction};
use xent::{TargetType, UpstreamGradient};

use crate::device::{SharedDevice, cube_device, shared_device};
use crate::error::{Error, Result};
use crate::storage::{ReadInput, byte_count, read_input, runtime_error, storage, storage_range, target_type};

/// Logits bytes one chunk may hold by default: 1 GiB.
pub const DEFAULT_LOGIT_BUDGET: u64 = 1 << 30;

/// How many rows one chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkSize {
    /// As many rows as keep `rows × classes × 4` bytes of logits within this
    /// budget (at least one row).
    LogitBytes(u64),
    /// This many rows (at least one).
    Rows(usize),
}

impl ChunkSize {
    /// Rows per chunk for a batch of `rows` over `classes` classes, also kept
    /// within `max_binding` bytes (the device's largest storage binding, which
    /// one chunk's logits must fit). At least 1, at most `rows`.
    ///
    /// ```
    /// use xent_burn::ChunkSize;
    ///
    /// // Llama 3's head: 128 256 classes, 1 GiB of logits per chunk → 2092 rows.
    /// let budget = ChunkSize::LogitBytes(xent_burn::DEFAULT_LOGIT_BUDGET);
    /// assert_eq!(budget.rows_per_chunk(8192, 128_256, u64::MAX), 2092);
    /// assert_eq!(ChunkSize::Rows(100).rows_per_chunk(30, 10, u64::MAX), 30);
    /// ```
    pub fn rows_per_chunk(self, rows: usize, classes: usize, max_binding: u64) -> usize {
        let row_bytes = (classes as u64).saturating_mul(4).max(1);
        let fitting = |bytes: u64| usize::try_from(bytes / row_bytes).unwrap_or(usize::MAX);
        let wanted = match self {
            ChunkSize::LogitBytes(budget) => fitting(budget),
            ChunkSize::Rows(count) => count,
        };
        wanted.min(fitting(max_binding)).min(rows).max(1)
    }
}

/// Linear + cross-entropy over row chunks, for a language-model head: from
/// hidden states `[N, H]`, the classifier weight `[V, H]` (Burn's `Linear`
/// stores `[H, V]`: pass its transpose), an optional bias `[V]` and targets
/// `[N]`, the loss with every option of [`xent::CrossEntropyOptions`]; at most
/// one chunk's `chunk × V` logits exist at once.
///
/// - [`LinearCrossEntropy::forward_backward`] returns the loss and the
///   gradients `dh`, `dW`, `db` explicitly (with or without autodiff on the
///   device; for `none`, the gradients of the per-row losses' sum).
/// - [`LinearCrossEntropy::forward`] on an autodiff device is an autodiff op:
///   the gradients are computed in the forward and stored, and the backward
///   multiplies them by the upstream scalar (reduction `mean` or `sum` only).
///   On a plain device it computes the loss alone.
///
/// ```no_run
/// use burn::tensor::{Int, Tensor};
/// use xent::CrossEntropyOptions;
/// use xent_burn::{ChunkSize, LinearCrossEntropy};
///
/// let device = xent_burn::init_wgpu()?;
/// let hidden = Tensor::<2>::zeros([6, 4], &device);
/// let weight = Tensor::<2>::zeros([10, 4], &device);
/// let targets = Tensor::<1, Int>::from_ints([1, 3, 5, 7, 9, 0], &device);
/// let head = LinearCrossEntropy::new(CrossEntropyOptions::default()).with_chunk(ChunkSize::Rows(4));
/// let out = head.forward_backward(hidden, weight, None, targets)?;
/// assert!((out.loss.into_scalar::<f32>() - 10f32.ln()).abs() < 1e-5);
/// assert_eq!(out.weight.dims(), [10, 4]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LinearCrossEntropy {
    options: CrossEntropyOptions,
    chunk: ChunkSize,
}

/// The loss and gradients of [`LinearCrossEntropy::forward_backward`].
#[derive(Clone, Debug)]
pub struct LinearGradients {
    /// `[1]` for `mean` and `sum`, `[N]` for `none`.
    pub loss: Tensor<1>,
    /// d loss / d hidden, `[N, H]`.
    pub hidden: Tensor<2>,
    /// d loss / d weight, `[V, H]`.
    pub weight: Tensor<2>,
    /// d loss / d bias, `[V]`, when a bias was given.
    pub bias: Option<Tensor<1>>,
}

impl LinearCrossEntropy {
    /// A head with `options` (checked against the shapes on each call) and
    /// chunks of [`DEFAULT_LOGIT_BUDGET`] bytes of logits.
    pub fn new(options: CrossEntropyOptions) -> Self {
        Self {
            options,
            chunk: ChunkSize::LogitBytes(DEFAULT_LOGIT_BUDGET),
        }
    }

    /// With another chunk size.
    pub fn with_chunk(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// The loss options.
    pub fn options(&self) -> &CrossEntropyOptions {
        &self.options
    }

    /// The chunk size.
    pub fn chunk(&self) -> ChunkSize {
        self.chunk
    }

    /// The loss and the gradients of hidden, weight and bias, computed
    /// chunk by chunk. The inputs may be on an autodiff device: the results are
    /// then plain tensors on its inner device (nothing is recorded).
    pub fn forward_backward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
    ) -> Result<LinearGradients> {
        let head = Head::new(hidden.inner(), weight.inner(), bias.map(Tensor::inner), targets.inner())?;
        let (loss, gradients) = self.run_with_gradients(&head)?;
        Ok(LinearGradients {
            loss,
            hidden: gradients.hidden,
            weight: gradients.weight,
            bias: gradients.bias,
        })
    }

    /// The loss. On an autodiff device, an op of the graph whose backward
    /// scales the gradients computed here by the upstream scalar (reduction
    /// `mean` or `sum`; `none` is refused there with [`Error::InvalidInput`], as
    /// its per-row upstream does not factor out of `dW`); on a plain device, the
    /// loss alone (no gradient products).
    pub fn forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
    ) -> Result<Tensor<1>> {
        if !hidden.device().is_autodiff() {
            let head = Head::new(hidden, weight, bias, targets.inner())?;
            return Ok(self.run(&head, false)?.loss);
        }
        if self.options.reduction == Reduction::None {
            return Err(Error::InvalidInput(
                "reduction none under autodiff: use forward_backward (the per-row upstream gradient does not factor out of dW)".into(),
            ));
        }
        self.tracked_forward(hidden, weight, bias, targets.inner())
    }

    /// [`LinearCrossEntropy::forward`] under autodiff: the inner tensors run
    /// through [`LinearCrossEntropy::run`], the result is tracked with the
    /// parents that require a gradient.
    fn tracked_forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Tensor<1, Int>,
    ) -> Result<Tensor<1>> {
        let (hidden, hidden_node) = autodiff_parts(hidden)?.into_parts();
        let (weight, weight_node) = autodiff_parts(weight)?.into_parts();
        let head_of = |bias| Head::new(plain(hidden), plain(weight), bias, targets);
        let loss = match bias {
            None => {
                let head = head_of(None)?;
                self.track(ScaleStoredGradients::<2>, [hidden_node, weight_node], &head)?
            }
            Some(bias) => {
                let (bias, bias_node) = autodiff_parts(bias)?.into_parts();
                let head = head_of(Some(plain(bias)))?;
                self.track(ScaleStoredGradients::<3>, [hidden_node, weight_node, bias_node], &head)?
            }
        };
        Ok(Tensor::from_primitive::<Autodiff<CubeBackend>>(loss))
    }

    /// Runs `head` and registers the op over `nodes` (hidden, weight[, bias]),
    /// storing the gradients when the op is tracked.
    fn track<const N: usize>(
        &self,
        op: ScaleStoredGradients<N>,
        nodes: [NodeGuard; N],
        head: &Head,
    ) -> Result<FloatTensor<Autodiff<CubeBackend>>> {
        match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (loss, gradients) = self.run_with_gradients(head)?;
                let mut stored = vec![cube_primitive(gradients.hidden)?, cube_primitive(gradients.weight)?];
                if let Some(bias) = gradients.bias {
                    stored.push(cube_primitive(bias)?);
                }
                Ok(prep.finish(stored, cube_primitive(loss)?))
            }
            OpsKind::UnTracked(prep) => Ok(prep.finish(cube_primitive(self.run(head, false)?.loss)?)),
        }
    }

    /// The chunk loop with the gradients: the loss, dh, dW and db.
    fn run_with_gradients(&self, head: &Head) -> Result<(Tensor<1>, HeadGradients)> {
        let computed = self.run(head, true)?;
        let gradients = computed
            .gradients
            .ok_or_else(|| Error::Runtime("no gradients were computed".into()))?;
        Ok((computed.loss, gradients))
    }

    /// The chunk loop: the loss and, with `with_gradients`, the gradients.
    fn run(&self, head: &Head, with_gradients: bool) -> Result<Computed> {
        let (rows, classes) = (head.rows, head.classes);
        let shared = shared_device(&head.device)?;
        let max_binding = shared.context.device().limits().max_storage_buffer_binding_size;
        let chunk_rows = self.chunk.rows_per_chunk(rows, classes, max_binding);
        let scale = match self.options.reduction {
            Reduction::Mean => Some(head.mean_scale(&self.options)),
            Reduction::Sum | Reduction::None => None,
        };
        let chunk_loss = xent::CrossEntropyLoss::with_options(CrossEntropyOptions {
            reduction: Reduction::None,
            ..self.options.clone()
        });
        let row_losses = head.empty_f32(rows)?;
        let targets = into_contiguous(cube_primitive_int(head.targets.clone())?);
        let scale_primitive = scale.clone().map(cube_primitive).transpose()?;
        let weight_t = head.weight.clone().transpose();
        let mut accumulated: Option<Accumulated> = None;
        let mut hidden_chunks = Vec::new();
        for start in (0..rows).step_by(chunk_rows) {
            let length = chunk_rows.min(rows - start);
            let hidden = head.hidden.clone().narrow(0, start, length);
            let mut logits = hidden.clone().matmul(weight_t.clone());
            if let Some(bias) = &head.bias {
                logits = logits + bias.clone().unsqueeze_dim(0);
            }
            let logits = into_contiguous(cube_primitive(logits)?);
            let chunk = Chunk {
                rows: start..start + length,
                classes,
                target_type: head.target_type,
                with_gradient: with_gradients,
            };
            record_chunk(
                &shared,
                &chunk_loss,
                &chunk,
                ChunkTensors {
                    logits: &logits,
                    targets: &targets,
                    scale: scale_primitive.as_ref(),
                    row_losses: &row_losses,
                },
            )?;
            if with_gradients {
                let gradient = Tensor::<2>::from_primitive::<CubeBackend>(logits);
                hidden_chunks.push(gradient.clone().matmul(head.weight.clone()));
                accumulated = Some(Accumulated::add(accumulated, gradient, hidden, head.bias.is_some()));
            }
        }
        let row_losses = Tensor::<1>::from_primitive::<CubeBackend>(row_losses);
        let loss = match (self.options.reduction, scale) {
            (Reduction::None, _) => row_losses,
            (_, Some(scale)) => row_losses.sum() * scale,
            (_, None) => row_losses.sum(),
        };
        let gradients = match accumulated {
            Some(accumulated) if with_gradients => Some(HeadGradients {
                hidden: Tensor::cat(hidden_chunks, 0),
                weight: accumulated.weight,
                bias: accumulated.bias,
            }),
            _ => None,
        };
        Ok(Computed { loss, gradients })
    }
}

/// The checked inputs of one call, on the plain (non-autodiff) cube device.
struct Head {
    hidden: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: Tensor<1, Int>,
    rows: usize,
    classes: usize,
    target_type: TargetType,
    device: burn_cubecl::CubeDevice,
}

impl Head {
    /// Checks shapes (hidden `[N, H]`, weight `[V, H]`, bias `[V]`, targets
    /// `[N]`, N > 0), element types and the device.
    fn new(hidden: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>, targets: Tensor<1, Int>) -> Result<Self> {
        let device = hidden.device();
        let cube = cube_device(&device)?;
        let [rows, features] = hidden.dims();
        let [classes, weight_features] = weight.dims();
        let bias_fits = bias.as_ref().is_none_or(|bias| bias.dims() == [classes]);
        if weight_features != features || targets.dims() != [rows] || !bias_fits || rows == 0 {
            return Err(Error::InvalidInput(format!(
                "hidden must be [rows > 0, H], weight [V, H], bias [V] and targets [rows]; got {:?}, {:?}, {:?}, {:?}",
                hidden.dims(),
                weight.dims(),
                bias.as_ref().map(Tensor::dims),
                targets.dims()
            )));
        }
        let same_device = [weight.device(), targets.device()]
            .into_iter()
            .chain(bias.as_ref().map(Tensor::device))
            .all(|other| other == device);
        if !same_device {
            return Err(Error::InvalidInput("the inputs are on different devices".into()));
        }
        let all_f32 = [hidden.dtype(), weight.dtype()]
            .into_iter()
            .chain(bias.as_ref().map(Tensor::dtype))
            .all(|dtype| dtype == DType::F32);
        if !all_f32 {
            return Err(Error::InvalidInput(
                "hidden, weight and bias must be f32 (f16/bf16 are not wired yet)".into(),
            ));
        }
        let target_type = target_type(targets.dtype())?;
        Ok(Self {
            hidden,
            weight,
            bias,
            targets,
            rows,
            classes,
            target_type,
            device: cube,
        })
    }

    /// `[1]`: 1 / the whole batch's mean divisor (NaN when it is 0): the rows
    /// whose target is not `ignore_index` are counted, or with class weights
    /// their targets' weights summed.
    fn mean_scale(&self, options: &CrossEntropyOptions) -> Tensor<1> {
        let device = self.hidden.device();
        let kept = self.targets.clone().not_equal_elem(options.ignore_index).float();
        let divisor = match &options.weight {
            None => kept.sum(),
            Some(weight) => {
                let weight = Tensor::<1>::from_floats(weight.as_slice(), &device);
                // Clamped so that an out-of-range target (whose loss xent makes NaN)
                // reads a valid entry here.
                let classes = self.classes.saturating_sub(1) as i64;
                let clamped = self.targets.clone().clamp(0, classes);
                (weight.select(0, clamped) * kept).sum()
            }
        };
        let empty = divisor.clone().equal_elem(0.0);
        divisor.recip().mask_fill(empty, f32::NAN)
    }

    /// A new `[length]` f32 tensor on the head's device, its contents unset.
    fn empty_f32(&self, length: usize) -> Result<CubeTensor> {
        let template = cube_primitive(self.hidden.clone())?;
        let handle = template.client.empty(byte_count(length, 4)? as usize);
        Ok(CubeTensor::new_contiguous(
            template.client,
            template.device,
            Shape::new([length]),
            handle,
            DType::F32,
        ))
    }
}

/// What the chunk loop computed.
struct Computed {
    loss: Tensor<1>,
    gradients: Option<HeadGradients>,
}

/// dh, dW, db.
struct HeadGradients {
    hidden: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

/// dW and db summed over the chunks so far.
struct Accumulated {
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

impl Accumulated {
    /// `so_far` plus chunk gradient `gradient` `[chunk, V]` of hidden rows `hidden`.
    fn add(so_far: Option<Self>, gradient: Tensor<2>, hidden: Tensor<2>, with_bias: bool) -> Self {
        let bias = with_bias.then(|| gradient.clone().sum_dim(0).squeeze_dim::<1>(0));
        let weight = gradient.transpose().matmul(hidden);
        match so_far {
            None => Self { weight, bias },
            Some(so_far) => Self {
                weight: so_far.weight + weight,
                bias: so_far.bias.zip(bias).map(|(old, new)| old + new),
            },
        }
    }
}

/// Which rows one chunk covers and what xent writes for it.
struct Chunk {
    rows: std::ops::Range<usize>,
    classes: usize,
    target_type: TargetType,
    with_gradient: bool,
}

/// The device tensors one chunk's xent call reads and writes.
struct ChunkTensors<'a> {
    /// The chunk's `[rows, V]` logits (contiguous), overwritten by the gradient.
    logits: &'a CubeTensor,
    /// All targets `[N]` (contiguous); the chunk's rows are bound.
    targets: &'a CubeTensor,
    /// `[1]`: the gradient's factor, when not 1.
    scale: Option<&'a CubeTensor>,
    /// `[N]`: the chunk's rows are written.
    row_losses: &'a CubeTensor,
}

/// Records xent's fused loss (and gradient, in place over the logits) of one
/// chunk on the shared queue, after Burn's pending work, and copies its per-row
/// losses into place.
fn record_chunk(
    shared: &SharedDevice,
    loss: &xent::CrossEntropyLoss,
    chunk: &Chunk,
    tensors: ChunkTensors,
) -> Result<()> {
    let client = &tensors.logits.client;
    let length = chunk.rows.len();
    let target_size = chunk.target_type.size_in_bytes() as u64;
    let elements = length
        .checked_mul(chunk.classes)
        .ok_or_else(|| Error::InvalidInput("a chunk's logits do not fit a buffer".into()))?;
    let logit_bytes = byte_count(elements, 4)?;
    // Burn's recorded work (the matmul that made the logits) is submitted first.
    client.flush().map_err(runtime_error)?;
    let logits = storage(client, &tensors.logits.handle, logit_bytes)?;
    let targets = storage_range(
        client,
        &tensors.targets.handle,
        chunk.rows.start as u64 * target_size,
        length as u64 * target_size,
    )?;
    let row_losses = storage_range(
        client,
        &tensors.row_losses.handle,
        chunk.rows.start as u64 * 4,
        length as u64 * 4,
    )?;
    let scale = tensors
        .scale
        .map(|scale| storage(client, &scale.handle, 4))
        .transpose()?;
    let context = &shared.context;
    let device = context.device();
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("xent-burn linear cross-entropy chunk"),
    });
    // The gradient is written over the logits; wgpu cannot bind their buffer
    // read-only in the same dispatch, so a read input that shares it is copied.
    let written = chunk.with_gradient.then_some(&logits.buffer);
    let mut staging = shared.staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let targets = read_input(device, &mut encoder, &targets, written, &mut staging.targets);
    let scale = scale
        .as_ref()
        .map(|scale| read_input(device, &mut encoder, scale, written, &mut staging.upstream));
    drop(staging);
    shared.with_outputs(length, |outputs| {
        let inputs = DeviceInputs {
            logits: logits.slice(),
            logit_type: LogitType::F32,
            targets: targets.slice(),
            target_type: chunk.target_type,
            shape: xent::Shape::new(length, chunk.classes),
            gradient: if chunk.with_gradient {
                GradientOutput::InPlace
            } else {
                GradientOutput::Skip
            },
            upstream: UpstreamGradient {
                scale: 1.0,
                values: scale.as_ref().map(ReadInput::slice),
            },
        };
        loss.record(context, &mut encoder, &inputs, outputs)?;
        encoder.copy_buffer_to_buffer(
            outputs.row_losses_buffer(),
            0,
            &row_losses.buffer,
            row_losses.offset,
            length as u64 * 4,
        );
        context.queue().submit([encoder.finish()]);
        Ok(())
    })
}

/// The backward of the head: each stored gradient (hidden, weight[, bias])
/// times the upstream scalar.
#[derive(Debug)]
struct ScaleStoredGradients<const N: usize>;

impl<B: Backend, const N: usize> Backward<B, N> for ScaleStoredGradients<N> {
    type State = Vec<FloatTensor<B>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let upstream = grads.consume::<B>(&ops.node);
        for (parent, stored) in ops.parents.into_iter().zip(ops.state) {
            let Some(parent) = parent else { continue };
            let rank = stored.shape().num_dims();
            let factor = B::float_reshape(upstream.clone(), Shape::from(vec![1; rank]));
            grads.register::<B>(parent.id, B::float_mul(stored, factor));
        }
    }
}

/// The autodiff primitive of a tensor on `Autodiff<CubeBackend>`.
fn autodiff_parts<const D: usize>(tensor: Tensor<D>) -> Result<FloatTensor<Autodiff<CubeBackend>>> {
    tensor
        .try_into_primitive::<Autodiff<CubeBackend>>()
        .map_err(unsupported)
}

/// A plain (non-autodiff) tensor around a cube primitive.
fn plain<const D: usize>(primitive: FloatTensor<CubeBackend>) -> Tensor<D> {
    Tensor::from_primitive::<CubeBackend>(primitive)
}

/// The cube primitive of a plain float tensor.
fn cube_primitive<const D: usize>(tensor: Tensor<D>) -> Result<FloatTensor<CubeBackend>> {
    tensor.try_into_primitive::<CubeBackend>().map_err(unsupported)
}

/// The cube primitive of a plain int tensor.
fn cube_primitive_int(tensor: Tensor<1, Int>) -> Result<CubeTensor> {
    tensor.try_into_primitive::<CubeBackend>().map_err(unsupported)
}

fn unsupported(error: impl std::fmt::Debug) -> Error {
    Error::UnsupportedBackend(format!("{error:?}"))
}
