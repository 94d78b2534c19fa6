//! Loss and gradient of host slices on the GPU, with the CPU as fallback.
//! `cargo run --release --example host_slices`

use xent::{Backend, Context, Cpu, CrossEntropyLoss, Reduction, Shape};

fn main() -> xent::Result<()> {
    // Fall back to the CPU when this machine has no adapter.
    let gpu = Context::new();
    let backend: &dyn Backend = match &gpu {
        Ok(context) => context,
        Err(error) => {
            eprintln!("no GPU ({error}); using the CPU");
            &Cpu
        }
    };
    println!("backend: {}", backend.describe());

    let shape = Shape::new(4, 5);
    let logits: Vec<f32> = (0..20).map(|index| (index % 7) as f32 * 0.5 - 1.0).collect();
    let targets: Vec<i64> = vec![0, 4, 2, 1];
    let mut gradient = vec![0.0f32; logits.len()];

    let loss = CrossEntropyLoss::new().reduction(Reduction::Mean).loss_and_grad(
        backend,
        &logits,
        &targets,
        shape,
        &mut gradient,
    )?;
    println!("mean loss: {:?}", loss.value());
    println!(
        "per-row losses: {:?}",
        CrossEntropyLoss::new().row_losses(backend, &logits, &targets, shape)?
    );
    println!("gradient of row 0: {:?}", &gradient[..shape.classes]);
    Ok(())
}
