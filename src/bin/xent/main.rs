//! The `xent` command line: `info`, `loss` and `bench`. Every computation goes
//! through the library's public API; this file only parses, reads and prints.

mod bench;
mod npy_io;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use xent::{Backend, Context, Cpu, CrossEntropyLoss, Loss, Reduction, Shape};

#[derive(Parser)]
#[command(
    name = "xent",
    version,
    about = "Fused cross-entropy loss and gradient on the GPU (wgpu) and CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters found, the chosen one, its backend, limits and features.
    Info,
    /// Compute the loss (and optionally gradient / per-row losses) of .npy inputs.
    Loss(LossArgs),
    /// Time the fused loss + gradient from host memory to host memory.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct LossArgs {
    /// Logits, shape (N, C), float32 (float64 is converted).
    #[arg(long)]
    logits: PathBuf,
    /// Targets, shape (N,), int64, int32 or uint32 class indices.
    #[arg(long)]
    targets: PathBuf,
    /// mean, sum or none.
    #[arg(long, default_value = "mean")]
    reduction: Reduction,
    #[arg(long, value_enum, default_value_t = BackendChoice::Gpu)]
    backend: BackendChoice,
    /// Write dL/dlogits, shape (N, C) float32.
    #[arg(long)]
    grad_out: Option<PathBuf>,
    /// Write the per-row losses, shape (N,) float32.
    #[arg(long)]
    losses_out: Option<PathBuf>,
}

/// Which backend a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The GPU through wgpu.
    Gpu,
    /// The host CPU.
    Cpu,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Loss(args) => loss(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn info() -> Result<(), String> {
    println!("adapters found:");
    let adapters = Context::available_adapters(None);
    if adapters.is_empty() {
        println!("  (none)");
    }
    for adapter in &adapters {
        println!(
            "  - {} ({:?}, {:?}, driver {} {})",
            adapter.name, adapter.backend, adapter.device_type, adapter.driver, adapter.driver_info
        );
    }
    let context = Context::new().map_err(|error| error.to_string())?;
    let info = context.adapter_info();
    let limits = context.limits();
    println!("chosen: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
    println!("  driver: {} {}", info.driver, info.driver_info);
    println!(
        "  subgroups: {} (sizes {}..={})",
        context.uses_subgroups(),
        info.subgroup_min_size,
        info.subgroup_max_size
    );
    println!("  features: {:?}", context.features());
    println!("  max_buffer_size: {}", limits.max_buffer_size);
    println!(
        "  max_storage_buffer_binding_size: {}",
        limits.max_storage_buffer_binding_size
    );
    println!(
        "  min_storage_buffer_offset_alignment: {}",
        limits.min_storage_buffer_offset_alignment
    );
    println!(
        "  max_compute_workgroups_per_dimension: {}",
        limits.max_compute_workgroups_per_dimension
    );
    println!(
        "  max_compute_invocations_per_workgroup: {}",
        limits.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_compute_workgroup_storage_size: {}",
        limits.max_compute_workgroup_storage_size
    );
    Ok(())
}

/// The chosen backend, constructed.
pub enum AnyBackend {
    Gpu(Box<Context>),
    Cpu(Cpu),
}

impl AnyBackend {
    pub fn open(choice: BackendChoice) -> Result<Self, String> {
        match choice {
            BackendChoice::Gpu => Ok(AnyBackend::Gpu(Box::new(
                Context::new().map_err(|error| error.to_string())?,
            ))),
            BackendChoice::Cpu => Ok(AnyBackend::Cpu(Cpu)),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        match self {
            AnyBackend::Gpu(context) => context.as_ref(),
            AnyBackend::Cpu(cpu) => cpu,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Gpu(_) => "gpu",
            AnyBackend::Cpu(_) => "cpu",
        }
    }
}

fn loss(args: LossArgs) -> Result<(), String> {
    let (logits, rows, classes) = npy_io::read_logits(&args.logits)?;
    let targets = npy_io::read_targets(&args.targets)?;
    let shape = Shape::new(rows, classes);
    let backend = AnyBackend::open(args.backend)?;
    let options = CrossEntropyLoss::new().reduction(args.reduction);
    let to_message = |error: xent::Error| error.to_string();

    let mut gradient = args.grad_out.as_ref().map(|_| vec![0.0f32; logits.len()]);
    let loss = match gradient.as_mut() {
        Some(gradient) => options
            .loss_and_grad(backend.backend(), &logits, targets.as_targets(), shape, gradient)
            .map_err(to_message)?,
        None => options
            .loss(backend.backend(), &logits, targets.as_targets(), shape)
            .map_err(to_message)?,
    };
    let row_losses = match (&args.losses_out, &loss) {
        (None, _) => None,
        (Some(_), Loss::PerRow(values)) => Some(values.clone()),
        (Some(_), Loss::Reduced(_)) => Some(
            options
                .row_losses(backend.backend(), &logits, targets.as_targets(), shape)
                .map_err(to_message)?,
        ),
    };

    if let (Some(path), Some(values)) = (&args.grad_out, &gradient) {
        npy_io::write_f32(path, values, &[rows as u64, classes as u64])?;
    }
    if let (Some(path), Some(values)) = (&args.losses_out, &row_losses) {
        npy_io::write_f32(path, values, &[rows as u64])?;
    }
    let report = json!({
        "loss": loss.value(),
        "rows": rows,
        "classes": classes,
        "reduction": args.reduction.as_str(),
        "backend": backend.name(),
        "adapter": backend.backend().describe(),
    });
    println!("{report}");
    Ok(())
}
