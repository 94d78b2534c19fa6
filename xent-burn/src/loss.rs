//! The loss as a Burn user writes it: a config with PyTorch's option names and a
//! `forward(logits, targets)` like `burn::nn::loss::CrossEntropyLoss`.

use burn::backend::autodiff::Autodiff;
use burn::tensor::{Device, Int, Tensor};
use burn_cubecl::CubeBackend;
use xent::{CrossEntropyOptions, DEFAULT_IGNORE_INDEX, Reduction};

use crate::call::XentCall;
use crate::cube::{KernelUpstream, cross_entropy};
use crate::device::cube_device;
use crate::error::{Error, Result};
use crate::ops::XentBackend;

/// The options of [`CrossEntropyLoss`], with PyTorch's names and defaults
/// (`reduction = mean`, `ignore_index = -100`, no weights, no smoothing), plus
/// xent's `z_loss` and `softcap`.
///
/// ```
/// use xent_burn::CrossEntropyLossConfig;
///
/// let config = CrossEntropyLossConfig::new().with_label_smoothing(0.1).with_ignore_index(0);
/// assert_eq!(config.ignore_index, 0);
/// assert!(config.init().is_ok());
/// assert!(CrossEntropyLossConfig::new().with_label_smoothing(2.0).init().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyLossConfig {
    /// Rows whose target equals this give 0 and leave the mean's divisor.
    pub ignore_index: i64,
    /// One non-negative weight per class.
    pub weight: Option<Vec<f32>>,
    /// Label smoothing ε in [0, 1].
    pub label_smoothing: f32,
    /// z-loss scale: adds `z · logsumexp²` per row.
    pub z_loss: f32,
    /// Soft-capping threshold t > 0: logits become `t·tanh(x/t)`.
    pub softcap: Option<f32>,
    /// `mean` (a `[1]` loss), `sum` (`[1]`) or `none` (`[rows]`).
    pub reduction: Reduction,
}

impl Default for CrossEntropyLossConfig {
    fn default() -> Self {
        Self {
            ignore_index: DEFAULT_IGNORE_INDEX,
            weight: None,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            reduction: Reduction::Mean,
        }
    }
}

impl CrossEntropyLossConfig {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `ignore_index`.
    pub fn with_ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// With class weights.
    pub fn with_weight(mut self, weight: Option<Vec<f32>>) -> Self {
        self.weight = weight;
        self
    }

    /// With label smoothing ε.
    pub fn with_label_smoothing(mut self, epsilon: f32) -> Self {
        self.label_smoothing = epsilon;
        self
    }

    /// With a z-loss scale.
    pub fn with_z_loss(mut self, scale: f32) -> Self {
        self.z_loss = scale;
        self
    }

    /// With a softcap threshold.
    pub fn with_softcap(mut self, threshold: Option<f32>) -> Self {
        self.softcap = threshold;
        self
    }

    /// With a reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The loss, after checking the options that do not depend on the batch
    /// (the rest, such as the weights' length, are checked on each call).
    pub fn init(&self) -> Result<CrossEntropyLoss> {
        let options = CrossEntropyOptions {
            reduction: self.reduction,
            ignore_index: self.ignore_index,
            weight: self.weight.clone(),
            label_smoothing: self.label_smoothing,
            z_loss: self.z_loss,
            softcap: self.softcap,
            ..CrossEntropyOptions::default()
        };
        let classes = self.weight.as_ref().map_or(1, Vec::len).max(1);
        options.validate(xent::Shape::new(1, classes))?;
        Ok(CrossEntropyLoss {
            call: XentCall::new(options),
        })
    }
}

/// xent's fused cross-entropy on Burn tensors: `forward(logits, targets)` as
/// `burn::nn::loss::CrossEntropyLoss`, on Burn's wgpu runtime (with or without
/// autodiff); the gradient is computed in the same kernel as the loss.
///
/// ```no_run
/// use burn::tensor::{Int, Tensor};
///
/// let device = xent_burn::init_wgpu()?.autodiff();
/// let loss_fn = xent_burn::CrossEntropyLossConfig::new().init()?;
/// let logits = Tensor::<2>::zeros([2, 4], &device).require_grad();
/// let targets = Tensor::<1, Int>::from_ints([1, 3], &device);
/// let loss = loss_fn.try_forward(logits.clone(), targets)?;
/// let gradients = loss.backward();
/// assert_eq!(logits.grad(&gradients).unwrap().dims(), [2, 4]);
/// # Ok::<(), xent_burn::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CrossEntropyLoss {
    call: XentCall,
}

impl CrossEntropyLoss {
    /// The loss of `logits` `[rows, classes]` against class indices `targets`
    /// `[rows]`: `[1]` for `mean`/`sum`, `[rows]` for `none`.
    ///
    /// # Panics
    ///
    /// On what [`CrossEntropyLoss::try_forward`] returns as an error (like Burn's
    /// own loss, which asserts its inputs).
    pub fn forward(&self, logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        self.try_forward(logits, targets)
            .unwrap_or_else(|error| panic!("xent-burn cross-entropy: {error}"))
    }

    /// [`CrossEntropyLoss::forward`], with an error instead of a panic for
    /// tensors off Burn's wgpu runtime, an unregistered device, mismatched
    /// shapes, non-f32 logits or options that do not fit the batch. An
    /// out-of-range target is found on the device: its row's loss (and the
    /// reduced loss) is NaN.
    pub fn try_forward(&self, logits: Tensor<2>, targets: Tensor<1, Int>) -> Result<Tensor<1>> {
        let device = self.checked_inputs(&logits, &targets)?;
        if device.is_autodiff() {
            run::<Autodiff<CubeBackend>>(logits, targets, &self.call)
        } else {
            run::<CubeBackend>(logits, targets, &self.call)
        }
    }

    /// The loss and dL/dlogits (`[rows, classes]`) in one kernel, without
    /// autodiff (a device without `.autodiff()`): for a training loop that
    /// writes its own backward. xent multiplies the gradient by `upstream` in
    /// the same kernel (no extra pass over the gradient): `upstream.scale` times
    /// the value of `upstream.values`, a `[1]` tensor or, for `none`, one value
    /// per row. The loss is not multiplied. The gradient is written over the
    /// logits when the call owns them (no other clone of the tensor alive),
    /// which saves rows × classes of memory.
    ///
    /// ```no_run
    /// use burn::tensor::{Int, Tensor};
    /// use xent_burn::Upstream;
    ///
    /// let device = xent_burn::init_wgpu()?;
    /// let loss_fn = xent_burn::CrossEntropyLossConfig::new().init()?;
    /// let logits = Tensor::<2>::zeros([2, 4], &device);
    /// let targets = Tensor::<1, Int>::from_ints([1, 3], &device);
    /// // The gradient of 0.5 × loss (say, one of two losses averaged):
    /// let (loss, gradient) = loss_fn.loss_and_gradient(logits, targets, Upstream::scale(0.5))?;
    /// assert_eq!(gradient.dims(), [2, 4]);
    /// # Ok::<(), xent_burn::Error>(())
    /// ```
    pub fn loss_and_gradient(
        &self,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        upstream: Upstream,
    ) -> Result<(Tensor<1>, Tensor<2>)> {
        let device = self.checked_inputs(&logits, &targets)?;
        if device.is_autodiff() {
            return Err(Error::InvalidInput(
                "loss_and_gradient runs without autodiff; under autodiff use forward and backward".into(),
            ));
        }
        if let Some(values) = &upstream.values
            && values.device() != device
        {
            return Err(Error::InvalidInput(
                "the upstream values are on another device than the logits".into(),
            ));
        }
        let logits = logits.try_into_primitive::<CubeBackend>().map_err(unsupported)?;
        let targets = targets.try_into_primitive::<CubeBackend>().map_err(unsupported)?;
        let values = upstream
            .values
            .map(|values| values.try_into_primitive::<CubeBackend>().map_err(unsupported))
            .transpose()?;
        let upstream = KernelUpstream {
            scale: upstream.scale,
            values,
        };
        let out = cross_entropy(logits, targets, &self.call, Some(upstream))?;
        let gradient = out
            .gradient
            .ok_or_else(|| Error::Runtime("the backend returned no gradient".into()))?;
        Ok((
            Tensor::from_primitive::<CubeBackend>(out.loss),
            Tensor::from_primitive::<CubeBackend>(gradient),
        ))
    }

    /// The device of `logits` after checking that both tensors are on one
    /// registered-kind device with matching rows and that the options fit.
    fn checked_inputs(&self, logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Result<Device> {
        let device = logits.device();
        cube_device(&device)?;
        if device != targets.device() {
            return Err(Error::InvalidInput(
                "logits and targets are on different devices".into(),
            ));
        }
        let [rows, classes] = logits.dims();
        if targets.dims() != [rows] {
            return Err(Error::InvalidInput(format!(
                "targets must be [{rows}], got {:?}",
                targets.dims()
            )));
        }
        self.call.options().validate(xent::Shape::new(rows, classes))?;
        Ok(device)
    }
}

/// What [`CrossEntropyLoss::loss_and_gradient`] multiplies the gradient by,
/// inside xent's kernel: `scale`, times the `f32` of `values` (`[1]`, or `[rows]`
/// for reduction `none`) when given.
///
/// ```
/// use xent_burn::Upstream;
///
/// assert_eq!(Upstream::default().scale, 1.0);
/// assert!(Upstream::scale(0.25).values.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Upstream {
    /// A constant factor of the whole gradient.
    pub scale: f32,
    /// Factors on the device: one, or one per row (reduction `none`).
    pub values: Option<Tensor<1>>,
}

impl Upstream {
    /// The gradient times `scale`.
    pub fn scale(scale: f32) -> Self {
        Self { scale, values: None }
    }

    /// The gradient times `values` (`[1]`, or `[rows]` for reduction `none`).
    pub fn values(values: Tensor<1>) -> Self {
        Self {
            scale: 1.0,
            values: Some(values),
        }
    }
}

impl Default for Upstream {
    /// The plain gradient.
    fn default() -> Self {
        Self::scale(1.0)
    }
}

fn unsupported(error: impl std::fmt::Debug) -> Error {
    Error::UnsupportedBackend(format!("{error:?}"))
}

/// The call on backend `B`, from and back to backend-erased tensors.
fn run<B>(logits: Tensor<2>, targets: Tensor<1, Int>, call: &XentCall) -> Result<Tensor<1>>
where
    B: XentBackend,
    burn::tensor::Float: burn::tensor::BackendPrimitive<B, Primitive = burn::backend::tensor::FloatTensor<B>>,
    Int: burn::tensor::BackendPrimitive<B, Primitive = burn::backend::tensor::IntTensor<B>>,
    burn::backend::DispatchTensor: burn::backend::DispatchKindConversion<B>,
{
    let logits = logits.try_into_primitive::<B>().map_err(unsupported)?;
    let targets = targets.try_into_primitive::<B>().map_err(unsupported)?;
    let out = B::xent_cross_entropy(logits, targets, call, false)?;
    Ok(Tensor::from_primitive::<B>(out.loss))
}
