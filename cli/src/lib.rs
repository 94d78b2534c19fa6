//! The `xent` command line as a library (the binary, `main.rs`, only sets up the
//! process and calls [`run`]): `info`, `loss`, `bce`, `kl` and `bench`. Every
//! computation goes through the xent library's public API; this crate parses,
//! reads and writes files, and prints.

mod bench;
mod failure;
mod family;
pub mod interrupt;
/// Public for the fuzz targets (`fuzz/`), which feed the readers hostile files.
pub mod npy_io;
mod outputs;
mod progress;
mod report;

pub use bench::synthetic_batch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use failure::{Failure, Outcome};
use serde_json::json;
use xent::{Backend, Context, Cpu, CrossEntropyLoss, Loss, Reduction, Shape};

/// The command line.
#[derive(Parser)]
#[command(
    name = "xent",
    version,
    about = "Fused cross-entropy loss and gradient on the GPU (wgpu) and CPU"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters found, the chosen one, its backend, limits and features.
    #[command(after_help = "Examples:\n  xent info\n  xent info --json")]
    Info(InfoArgs),
    /// Compute the loss (and optionally gradient / per-row losses) of .npy inputs.
    #[command(
        after_help = "Examples:\n  xent loss --logits logits.npy --targets targets.npy\n  xent loss --logits logits.npy \
                      --targets targets.npy --label-smoothing 0.1 --grad-out grad.npy --backend cpu"
    )]
    Loss(LossArgs),
    /// Time the fused loss + gradient and the loss alone, GPU against CPU.
    #[command(
        after_help = "Examples:\n  xent bench --shapes 64x1000,1024x32000\n  xent bench --rows 4096 --classes 32000 \
                      --dtype bf16 --json"
    )]
    Bench(bench::BenchArgs),
    /// Binary cross-entropy (BCEWithLogitsLoss, or BCELoss with --probs) of .npy inputs.
    #[command(
        after_help = "Examples:\n  xent bce --input logits.npy --targets labels.npy\n  xent bce --input probs.npy \
                      --targets labels.npy --probs --reduction sum --grad-out grad.npy"
    )]
    Bce(family::BceArgs),
    /// KL divergence (KLDivLoss) of log-probabilities against a target, from .npy inputs.
    #[command(
        after_help = "Examples:\n  xent kl --input log_q.npy --target p.npy --reduction batchmean\n  xent kl --input \
                      log_q.npy --target log_p.npy --log-target --losses-out terms.npy"
    )]
    Kl(family::KlArgs),
}

#[derive(clap::Args)]
struct InfoArgs {
    /// One JSON object (adapters found, the chosen one with its features and limits) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LossArgs {
    /// Logits, shape (N, C) or (N, C, d1, ..., dk), float32 (float64 is converted).
    #[arg(long)]
    logits: PathBuf,
    /// Targets: class indices of shape (N,) or (N, d1, ..., dk) (int64, int32 or
    /// uint32), or probabilities of the logits' shape (float: soft targets).
    #[arg(long)]
    targets: PathBuf,
    /// mean, sum or none.
    #[arg(long, default_value = "mean")]
    reduction: Reduction,
    /// Class-index targets equal to this are ignored (default -100, PyTorch's).
    #[arg(long, allow_negative_numbers = true)]
    ignore_index: Option<i64>,
    /// Class weights, shape (C,), float.
    #[arg(long)]
    weight: Option<PathBuf>,
    /// Label smoothing in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// z-loss scale: adds scale · lse² per row.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    z_loss: f32,
    /// Soft-capping threshold t: logits become t·tanh(x/t).
    #[arg(long, allow_negative_numbers = true)]
    softcap: Option<f32>,
    /// `logits` (default), or `probs`: the inputs are probabilities (Keras
    /// `from_logits=False`: each row renormalised, clamped to [1e-7, 1 - 1e-7]).
    #[arg(long, value_enum, default_value_t = InputChoice::Logits)]
    input: InputChoice,
    /// Multiplies the logits before softcap and softmax.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    logit_scale: f32,
    /// Where to compute: the GPU through wgpu, or the host CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Gpu)]
    backend: BackendChoice,
    /// Write dL/dlogits, the logits' shape, in the logits' dtype (float16 for
    /// float16 logits, else float32). Written only if the whole command succeeds.
    #[arg(long)]
    grad_out: Option<PathBuf>,
    /// Write the per-row losses, shape (N,) or (N, d1, ..., dk), float32. Written
    /// only if the whole command succeeds.
    #[arg(long)]
    losses_out: Option<PathBuf>,
}

/// What the `--logits` file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum InputChoice {
    /// Unnormalised scores.
    Logits,
    /// Probabilities.
    Probs,
}

/// Which backend a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The GPU through wgpu.
    Gpu,
    /// The host CPU.
    Cpu,
}

/// Runs the parsed command line: the command's outcome as the process's exit
/// status (0; 2 for usage errors and bad input; 1 when the machine failed), with
/// its one `error:` line printed.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Info(args) => info(args),
        Command::Loss(args) => loss(args),
        Command::Bench(args) => bench::run(args),
        Command::Bce(args) => family::bce(args),
        Command::Kl(args) => family::kl(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// The names of a feature set, e.g. `["SHADER_F16", "SUBGROUP", "TIMESTAMP_QUERY"]`.
fn feature_names(features: wgpu::Features) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = features
        .features_webgpu
        .iter_names()
        .map(|(name, _)| name)
        .chain(features.features_wgpu.iter_names().map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    names
}

/// Appends one formatted line to a `String` (writing to memory cannot fail).
macro_rules! say {
    ($text:ident, $($format:tt)*) => {{
        $text.push_str(&format!($($format)*));
        $text.push('\n');
    }};
}

fn info(args: InfoArgs) -> Outcome {
    let adapters = Context::available_adapters(None);
    let listed: Vec<serde_json::Value> = adapters
        .iter()
        .map(|adapter| {
            json!({
                "name": adapter.name,
                "device_type": format!("{:?}", adapter.device_type),
                "api": format!("{:?}", adapter.backend),
                "driver": adapter.driver,
                "driver_info": adapter.driver_info,
            })
        })
        .collect();
    if !args.json {
        let mut text = String::new();
        say!(text, "adapters found:");
        if adapters.is_empty() {
            say!(text, "  (none)");
        }
        for adapter in &adapters {
            say!(
                text,
                "  - {} ({:?}, {:?}, driver {} {})",
                adapter.name,
                adapter.backend,
                adapter.device_type,
                adapter.driver,
                adapter.driver_info
            );
        }
        report::print(&text)?;
    }
    let context = Context::new()?;
    let limits = context.limits();
    let features = feature_names(context.features());
    if args.json {
        let mut chosen = report::adapter_json(&context);
        if let serde_json::Value::Object(fields) = &mut chosen {
            fields.insert("subgroups".into(), json!(context.uses_subgroups()));
            let settings: serde_json::Map<String, serde_json::Value> = bench::context_choices(&context)
                .into_iter()
                .map(|choice| (choice.knob().key().to_owned(), choice.json()))
                .collect();
            fields.insert("settings".into(), settings.into());
            fields.insert("features".into(), json!(features));
            fields.insert(
                "limits".into(),
                json!({
                    "max_buffer_size": limits.max_buffer_size,
                    "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
                    "min_storage_buffer_offset_alignment": limits.min_storage_buffer_offset_alignment,
                    "max_compute_workgroups_per_dimension": limits.max_compute_workgroups_per_dimension,
                    "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
                    "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
                }),
            );
        }
        let report = json!({ "adapters": listed, "chosen": chosen, "xent_version": report::VERSION });
        return report::print(&format!("{report}\n"));
    }
    let info = context.adapter_info();
    let mut text = String::new();
    say!(
        text,
        "chosen: {} ({:?}, {:?})",
        info.name,
        info.backend,
        info.device_type
    );
    if let Some(warning) = report::software_warning(&context) {
        say!(text, "  {warning}");
    }
    say!(text, "  driver: {} {}", info.driver, info.driver_info);
    say!(
        text,
        "  subgroups: {} (sizes {}..={})",
        context.uses_subgroups(),
        info.subgroup_min_size,
        info.subgroup_max_size
    );
    for choice in bench::context_choices(&context) {
        say!(text, "  {}: {}", choice.knob().label(), choice.text());
    }
    say!(text, "  features:");
    for name in features {
        say!(text, "    - {name}");
    }
    say!(text, "  max_buffer_size: {}", limits.max_buffer_size);
    say!(
        text,
        "  max_storage_buffer_binding_size: {}",
        limits.max_storage_buffer_binding_size
    );
    say!(
        text,
        "  min_storage_buffer_offset_alignment: {}",
        limits.min_storage_buffer_offset_alignment
    );
    say!(
        text,
        "  max_compute_workgroups_per_dimension: {}",
        limits.max_compute_workgroups_per_dimension
    );
    say!(
        text,
        "  max_compute_invocations_per_workgroup: {}",
        limits.max_compute_invocations_per_workgroup
    );
    say!(
        text,
        "  max_compute_workgroup_storage_size: {}",
        limits.max_compute_workgroup_storage_size
    );
    report::print(&text)
}

/// The chosen backend, constructed.
pub enum AnyBackend {
    Gpu(Box<Context>),
    Cpu(Cpu),
}

impl AnyBackend {
    pub fn open(choice: BackendChoice) -> Result<Self, Failure> {
        match choice {
            BackendChoice::Gpu => Ok(AnyBackend::Gpu(Box::new(Context::new()?))),
            BackendChoice::Cpu => Ok(AnyBackend::Cpu(Cpu)),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        match self {
            AnyBackend::Gpu(context) => context.as_ref(),
            AnyBackend::Cpu(cpu) => cpu,
        }
    }

    /// The GPU context, or `None` for the CPU.
    pub fn gpu(&self) -> Option<&Context> {
        match self {
            AnyBackend::Gpu(context) => Some(context),
            AnyBackend::Cpu(_) => None,
        }
    }
}

/// A loss value for the JSON report: a number when finite, else the string
/// `"NaN"`, `"Infinity"` or `"-Infinity"` (JSON has no non-finite numbers; these
/// are the spellings JavaScript's and Python's float parsers accept).
pub fn json_value(value: f32) -> serde_json::Value {
    if value.is_nan() {
        json!("NaN")
    } else if value.is_infinite() {
        json!(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(value)
    }
}

/// The reduced loss (or `null` for `--reduction none`) for the JSON report.
pub fn json_loss(loss: &Loss) -> serde_json::Value {
    loss.value().map_or(serde_json::Value::Null, json_value)
}

/// The output files of `loss`, `bce` and `kl`, checked against each other and the inputs.
pub fn plan_outputs(
    grad_out: Option<&std::path::Path>,
    losses_out: Option<&std::path::Path>,
    inputs: &[(&'static str, &std::path::Path)],
) -> Result<outputs::Outputs, String> {
    let outputs: Vec<(&'static str, &std::path::Path)> = [("--grad-out", grad_out), ("--losses-out", losses_out)]
        .into_iter()
        .filter_map(|(option, path)| Some((option, path?)))
        .collect();
    outputs::Outputs::plan(&outputs, inputs)
}

/// The inputs of `loss` whose paths no output may name.
fn loss_inputs(args: &LossArgs) -> Vec<(&'static str, &std::path::Path)> {
    let mut inputs = vec![
        ("--logits", args.logits.as_path()),
        ("--targets", args.targets.as_path()),
    ];
    if let Some(weight) = &args.weight {
        inputs.push(("--weight", weight.as_path()));
    }
    inputs
}

/// A file dimension as `usize`.
fn extent(value: u64) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| format!("dimension {value} does not fit this machine's address space"))
}

fn loss(args: LossArgs) -> Outcome {
    let mut outputs = plan_outputs(
        args.grad_out.as_deref(),
        args.losses_out.as_deref(),
        &loss_inputs(&args),
    )?;
    let (logits, logits_shape) = npy_io::read_logits(&args.logits)?;
    let (batch, classes) = (extent(logits_shape[0])?, extent(logits_shape[1])?);
    let spatial_dims = logits_shape[2..]
        .iter()
        .map(|&value| extent(value))
        .collect::<Result<Vec<usize>, String>>()?;
    let shape = Shape::nd(batch, classes, &spatial_dims)?;
    let index_shape: Vec<u64> = std::iter::once(logits_shape[0])
        .chain(logits_shape[2..].iter().copied())
        .collect();
    let targets = npy_io::read_targets(&args.targets, &index_shape, &logits_shape)?;
    let mut options = CrossEntropyLoss::new()
        .reduction(args.reduction)
        .ignore_index(args.ignore_index.unwrap_or(xent::DEFAULT_IGNORE_INDEX))
        .label_smoothing(args.label_smoothing)
        .z_loss(args.z_loss)
        .logit_scale(args.logit_scale);
    if let Some(path) = &args.weight {
        options = options.weight(npy_io::read_vector(path, "weight", classes)?);
    }
    if let Some(threshold) = args.softcap {
        options = options.softcap(threshold);
    }
    if args.input == InputChoice::Probs {
        return probability_loss(&args, outputs, &logits, &logits_shape, &targets, shape);
    }
    let backend = AnyBackend::open(args.backend)?;

    let mut gradient = args.grad_out.as_ref().map(|_| match &logits {
        npy_io::LogitsFile::F32(values) => npy_io::LogitsFile::F32(vec![0.0; values.len()]),
        npy_io::LogitsFile::F16(values) => npy_io::LogitsFile::F16(vec![xent::half::f16::ZERO; values.len()]),
    });
    let gradient_slice = gradient.as_mut().map(|gradient| match gradient {
        npy_io::LogitsFile::F32(values) => xent::LogitsMut::F32(values),
        npy_io::LogitsFile::F16(values) => xent::LogitsMut::F16(values),
    });
    let output = options.forward(
        backend.backend(),
        logits.as_logits(),
        targets.as_targets(),
        shape,
        gradient_slice,
        false,
    )?;
    let row_losses = match (&args.losses_out, &output.loss) {
        (None, _) => None,
        (Some(_), Loss::PerRow(values)) => Some(values.clone()),
        (Some(_), Loss::Reduced(_)) => {
            Some(options.row_losses(backend.backend(), logits.as_logits(), targets.as_targets(), shape)?)
        }
    };

    match &gradient {
        Some(npy_io::LogitsFile::F32(values)) => {
            outputs.stage("--grad-out", |out| npy_io::write_f32(out, values, &logits_shape))?;
        }
        Some(npy_io::LogitsFile::F16(values)) => {
            outputs.stage("--grad-out", |out| npy_io::write_f16(out, values, &logits_shape))?;
        }
        None => {}
    }
    if let Some(values) = &row_losses {
        outputs.stage("--losses-out", |out| npy_io::write_f32(out, values, &index_shape))?;
    }
    let report = report::with_machine(
        json!({
            "loss": json_loss(&output.loss),
            "z_loss": output.z_loss.as_ref().map_or(serde_json::Value::Null, json_loss),
            "rows": shape.rows,
            "classes": classes,
            "reduction": args.reduction.as_str(),
        }),
        backend.gpu(),
    );
    outputs.commit_and(|| report::print_json(&report))
}

/// `xent loss --input probs`: Keras' categorical cross-entropy on probabilities.
fn probability_loss(
    args: &LossArgs,
    mut outputs: outputs::Outputs,
    logits: &npy_io::LogitsFile,
    logits_shape: &[u64],
    targets: &npy_io::TargetsFile,
    shape: Shape,
) -> Outcome {
    let npy_io::LogitsFile::F32(probabilities) = logits else {
        return Err("--input probs takes float32 or float64 probabilities".into());
    };
    let logit_options = args.weight.is_some()
        || args.ignore_index.is_some()
        || args.label_smoothing != 0.0
        || args.z_loss != 0.0
        || args.softcap.is_some()
        || args.logit_scale != 1.0;
    if logit_options || shape.spatial != 1 {
        return Err(
            "--input probs takes (N, C) probabilities without --ignore-index, --weight, --label-smoothing, \
             --z-loss, --softcap or --logit-scale"
                .into(),
        );
    }
    let backend = AnyBackend::open(args.backend)?;
    let loss = xent::ProbabilityCrossEntropyLoss::new().reduction(args.reduction);
    let mut gradient = args.grad_out.as_ref().map(|_| vec![0.0f32; probabilities.len()]);
    let value = match gradient.as_mut() {
        Some(gradient) => loss.loss_and_grad(backend.backend(), probabilities, targets.as_targets(), shape, gradient),
        None => loss.loss(backend.backend(), probabilities, targets.as_targets(), shape),
    }?;
    let row_losses = match (&args.losses_out, &value) {
        (None, _) => None,
        (Some(_), Loss::PerRow(values)) => Some(values.clone()),
        (Some(_), Loss::Reduced(_)) => Some(
            match xent::ProbabilityCrossEntropyLoss::new()
                .reduction(Reduction::None)
                .loss(backend.backend(), probabilities, targets.as_targets(), shape)
            {
                Ok(Loss::PerRow(values)) => values,
                Ok(Loss::Reduced(value)) => vec![value],
                Err(error) => return Err(error.into()),
            },
        ),
    };
    if let Some(values) = &gradient {
        outputs.stage("--grad-out", |out| npy_io::write_f32(out, values, logits_shape))?;
    }
    if let Some(values) = &row_losses {
        outputs.stage("--losses-out", |out| {
            npy_io::write_f32(out, values, &[shape.rows as u64])
        })?;
    }
    let report = report::with_machine(
        json!({
            "loss": json_loss(&value),
            "rows": shape.rows,
            "classes": shape.classes,
            "reduction": args.reduction.as_str(),
            "input": "probs",
        }),
        backend.gpu(),
    );
    outputs.commit_and(|| report::print_json(&report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_option_is_described_and_every_subcommand_shows_examples() {
        let command = Cli::command();
        command.clone().debug_assert();
        for subcommand in command.get_subcommands() {
            let name = subcommand.get_name();
            for argument in subcommand.get_arguments() {
                let id = argument.get_id().as_str();
                assert!(
                    argument
                        .get_help()
                        .is_some_and(|help| !help.to_string().trim().is_empty()),
                    "xent {name} --{id} has no description"
                );
            }
            let examples = subcommand.get_after_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                examples.starts_with("Examples:") && examples.contains(&format!("xent {name} ")),
                "xent {name} --help ends without examples of itself: {examples:?}"
            );
        }
    }

    #[test]
    fn feature_names_are_listed_by_name() {
        let names = feature_names(wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY);
        assert_eq!(names, ["SHADER_F16", "TIMESTAMP_QUERY"]);
    }

    #[test]
    fn non_finite_losses_are_json_strings() {
        assert_eq!(json_value(f32::NAN), json!("NaN"));
        assert_eq!(json_value(f32::INFINITY), json!("Infinity"));
        assert_eq!(json_value(f32::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(json_value(0.5), json!(0.5));
    }
}
