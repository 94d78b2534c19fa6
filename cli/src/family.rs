//! The `bce` and `kl` subcommands: binary cross-entropy and KL divergence of .npy
//! inputs through the library's public API. Like `loss`: one JSON object on
//! stdout; bad input is an `Err` (exit status 2, one `error:` line) and nothing is
//! written unless every computation succeeded.

use std::path::{Path, PathBuf};

use serde_json::json;
use xent::{Backend, BinaryCrossEntropyLoss, InputKind, KlDivLoss, KlReduction, Loss, Reduction, Shape};

use crate::failure::{Failure, Outcome};
use crate::npy_io;
use crate::outputs::Outputs;
use crate::report;
use crate::{AnyBackend, BackendChoice, json_loss, plan_outputs};

#[derive(clap::Args)]
pub struct BceArgs {
    /// Logits (or probabilities with --probs), shape (N, C), float32 (float64 is converted).
    #[arg(long)]
    input: PathBuf,
    /// Targets in [0, 1] (soft targets allowed), shape (N, C), float.
    #[arg(long)]
    targets: PathBuf,
    /// The input holds probabilities (BCELoss) instead of logits (BCEWithLogitsLoss).
    #[arg(long)]
    probs: bool,
    /// Class weights, shape (C,), float, broadcast over rows.
    #[arg(long)]
    weight: Option<PathBuf>,
    /// Positive-class weights, shape (C,), float, broadcast over rows (logits only).
    #[arg(long)]
    pos_weight: Option<PathBuf>,
    /// Keras-style label smoothing ε in [0, 1]: y' = y·(1−ε) + ε/2.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// mean (over all N·C elements), sum or none.
    #[arg(long, default_value = "mean")]
    reduction: Reduction,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
pub struct KlArgs {
    /// log q, shape (N, C), float32 (float64 is converted).
    #[arg(long)]
    input: PathBuf,
    /// p (or log p with --log-target), shape (N, C), float.
    #[arg(long)]
    target: PathBuf,
    /// The target holds log-probabilities.
    #[arg(long)]
    log_target: bool,
    /// none, sum, mean (over all N·C elements) or batchmean (sum / N).
    #[arg(long, default_value = "mean")]
    reduction: KlReduction,
    #[command(flatten)]
    run: RunArgs,
}

/// Where `bce` and `kl` compute and what they write besides the report.
#[derive(clap::Args)]
struct RunArgs {
    /// Where to compute: the GPU through wgpu, or the host CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Gpu)]
    backend: BackendChoice,
    /// Write d loss / d input, shape (N, C) float32 (only if the whole command succeeds).
    #[arg(long)]
    grad_out: Option<PathBuf>,
    /// Write the per-element losses, shape (N, C) float32 (only if the whole command succeeds).
    #[arg(long)]
    losses_out: Option<PathBuf>,
}

/// An (N, C) input and a second array of the same shape.
struct Pair {
    input: Vec<f32>,
    other: Vec<f32>,
    shape: Shape,
}

fn read_pair(input: &Path, other: &Path, other_name: &str) -> Result<Pair, String> {
    let (input, rows, classes) = npy_io::read_matrix(input, "input")?;
    let (other, other_rows, other_classes) = npy_io::read_matrix(other, other_name)?;
    if (other_rows, other_classes) != (rows, classes) {
        return Err(format!(
            "{other_name} has shape ({other_rows}, {other_classes}), expected the input's ({rows}, {classes})"
        ));
    }
    Ok(Pair {
        input,
        other,
        shape: Shape::new(rows, classes),
    })
}

/// A loss of an (N, C) input against a second array of that shape: `bce`, `kl`.
trait PairLoss {
    /// The same loss with reduction `none`.
    fn unreduced(&self) -> Self;
    /// The loss of `pair` on `backend`, its gradient into `gradient` when given.
    fn compute(&self, backend: &dyn Backend, pair: &Pair, gradient: Option<&mut [f32]>) -> xent::Result<Loss>;
}

/// [`PairLoss`] for a library loss with `loss(backend, input, other, shape)` and
/// `loss_and_grad(…, gradient)`, whose reduction `none` is `$none`.
macro_rules! pair_loss {
    ($loss:ty, $none:expr) => {
        impl PairLoss for $loss {
            fn unreduced(&self) -> Self {
                self.clone().reduction($none)
            }

            fn compute(&self, backend: &dyn Backend, pair: &Pair, gradient: Option<&mut [f32]>) -> xent::Result<Loss> {
                match gradient {
                    Some(gradient) => self.loss_and_grad(backend, &pair.input, &pair.other, pair.shape, gradient),
                    None => self.loss(backend, &pair.input, &pair.other, pair.shape),
                }
            }
        }
    };
}

pair_loss!(BinaryCrossEntropyLoss, Reduction::None);
pair_loss!(KlDivLoss, KlReduction::None);

/// Computes `loss` of `pair` (with the gradient when asked) and, for
/// `--losses-out` with a reduction, again unreduced; writes the files only when
/// both succeeded (all of them or none), then prints the report.
fn run(pair: &Pair, mut outputs: Outputs, reduction: &str, backend: &AnyBackend, loss: &impl PairLoss) -> Outcome {
    let mut gradient = outputs.wants("--grad-out").then(|| vec![0.0f32; pair.input.len()]);
    let reduced = loss.compute(backend.backend(), pair, gradient.as_deref_mut())?;
    let element_losses = match (outputs.wants("--losses-out"), &reduced) {
        (false, _) => None,
        (true, Loss::PerRow(values)) => Some(values.clone()),
        (true, Loss::Reduced(_)) => match loss.unreduced().compute(backend.backend(), pair, None)? {
            Loss::PerRow(values) => Some(values),
            Loss::Reduced(_) => return Err(Failure::Machine("the unreduced loss came back reduced".into())),
        },
    };
    let shape = [pair.shape.rows as u64, pair.shape.classes as u64];
    if let Some(values) = &gradient {
        outputs.stage("--grad-out", |out| npy_io::write_f32(out, values, &shape))?;
    }
    if let Some(values) = &element_losses {
        outputs.stage("--losses-out", |out| npy_io::write_f32(out, values, &shape))?;
    }
    let report = report::with_machine(
        json!({
            "loss": json_loss(&reduced),
            "rows": pair.shape.rows,
            "classes": pair.shape.classes,
            "reduction": reduction,
        }),
        backend.gpu(),
    );
    outputs.commit_and(|| report::print_json(&report))
}

/// `xent bce`: binary cross-entropy of logits or probabilities.
pub fn bce(args: BceArgs) -> Outcome {
    let mut inputs = vec![("--input", args.input.as_path()), ("--targets", args.targets.as_path())];
    inputs.extend(args.weight.as_deref().map(|path| ("--weight", path)));
    inputs.extend(args.pos_weight.as_deref().map(|path| ("--pos-weight", path)));
    let outputs = plan_outputs(args.run.grad_out.as_deref(), args.run.losses_out.as_deref(), &inputs)?;
    let pair = read_pair(&args.input, &args.targets, "targets")?;
    let classes = pair.shape.classes;
    let kind = if args.probs {
        InputKind::Probabilities
    } else {
        InputKind::Logits
    };
    let mut loss = BinaryCrossEntropyLoss::new()
        .input(kind)
        .reduction(args.reduction)
        .label_smoothing(args.label_smoothing);
    if let Some(path) = &args.weight {
        loss = loss.weight(npy_io::read_vector(path, "weight", classes)?);
    }
    if let Some(path) = &args.pos_weight {
        loss = loss.pos_weight(npy_io::read_vector(path, "pos_weight", classes)?);
    }
    loss.validate(pair.shape)?;
    let backend = AnyBackend::open(args.run.backend)?;
    run(&pair, outputs, args.reduction.as_str(), &backend, &loss)
}

/// `xent kl`: PyTorch's KL divergence of log q against p (or log p).
pub fn kl(args: KlArgs) -> Outcome {
    let inputs = [("--input", args.input.as_path()), ("--target", args.target.as_path())];
    let outputs = plan_outputs(args.run.grad_out.as_deref(), args.run.losses_out.as_deref(), &inputs)?;
    let pair = read_pair(&args.input, &args.target, "target")?;
    let loss = KlDivLoss::new().reduction(args.reduction).log_target(args.log_target);
    let backend = AnyBackend::open(args.run.backend)?;
    run(&pair, outputs, args.reduction.as_str(), &backend, &loss)
}
