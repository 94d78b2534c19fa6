//! One `Context` shared by several threads at once, as an evaluation server or a
//! data-parallel host loop would share it: every thread's calls (host slices and
//! device-resident, cross-entropy and the family, shapes that make the
//! workspace grow, chunked bindings and transfers in pieces), while another
//! thread keeps asking for the workspace's release, must give exactly the bits
//! the same call gives alone. A call that read another call's upload,
//! outputs or workspace, or a pipeline or bind group of another shape, would
//! differ.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::family::{Data, Kind};
use xent::reference::cross_entropy_f64;
use xent::{
    BinaryCrossEntropyLoss, Context, ContextOptions, CrossEntropyLoss, KlDivLoss, Loss, Reduction, Shape, Targets,
};

/// Threads calling at once.
const THREADS: usize = 4;
/// Times each thread runs the whole list.
const ROUNDS: usize = 2;

/// What a call computes.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// Cross-entropy (label smoothing ε) with its gradient, through the host-slice door.
    CrossEntropy(f32),
    /// The cross-entropy alone, per row, through the host-slice door.
    CrossEntropyRows,
    /// Cross-entropy with its gradient through the device-resident door.
    CrossEntropyDevice,
    /// BCE on logits with its gradient.
    Binary,
    /// KL divergence with its gradient.
    Divergence,
}

/// One call: what, on rows × classes of data from a seed.
#[derive(Clone, Copy, Debug)]
struct Job {
    call: Call,
    rows: usize,
    classes: usize,
    seed: u64,
}

const fn job(call: Call, rows: usize, classes: usize, seed: u64) -> Job {
    Job {
        call,
        rows,
        classes,
        seed,
    }
}

/// Shapes from one class to a vocabulary of 50257 (beyond the row cache, and
/// above the chunked context's binding cap and transfer piece), so that the
/// workspace grows and shrinks between the threads' calls.
const JOBS: [Job; 9] = [
    job(Call::CrossEntropy(0.0), 64, 1000, 1),
    job(Call::CrossEntropy(0.1), 24, 50257, 2),
    job(Call::CrossEntropy(0.0), 3, 1, 3),
    job(Call::CrossEntropyRows, 300, 333, 4),
    job(Call::CrossEntropyRows, 17, 9000, 5),
    job(Call::CrossEntropyDevice, 128, 2000, 6),
    job(Call::CrossEntropyDevice, 12, 50257, 7),
    job(Call::Binary, 40, 700, 8),
    job(Call::Divergence, 33, 4097, 9),
];

/// The bits of a call's losses and gradient.
#[derive(Debug, PartialEq, Eq)]
struct Bits {
    loss: Vec<u32>,
    gradient: Vec<u32>,
}

impl Bits {
    fn new(loss: &Loss, gradient: &[f32]) -> Self {
        Self {
            loss: common::loss_bits(loss),
            gradient: gradient.iter().map(|value| value.to_bits()).collect(),
        }
    }
}

/// Runs `job` on `context`; checks the cross-entropy against the f64 reference
/// (so that the bits compared are right ones, not merely repeatable).
fn run(context: &Context, job: Job) -> Bits {
    let label = format!("{job:?}");
    let Job {
        call,
        rows,
        classes,
        seed,
    } = job;
    let shape = Shape::new(rows, classes);
    let fail = |error: xent::Error| -> Loss { panic!("{label}: {error}") };
    match call {
        Call::CrossEntropy(smoothing) => {
            let (logits, targets) = common::batch(rows, classes, common::Logits::Random, seed);
            let loss = CrossEntropyLoss::new().label_smoothing(smoothing);
            let mut gradient = vec![f32::NAN; logits.len()];
            let output = loss
                .loss_and_grad(context, &logits[..], &targets[..], shape, &mut gradient[..])
                .unwrap_or_else(fail);
            let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
            common::assert_loss_matches(&output, &truth, &label);
            common::assert_gradient(&gradient, &truth.gradient, 1.0 / rows as f64, &label);
            Bits::new(&output, &gradient)
        }
        Call::CrossEntropyRows => {
            let (logits, targets) = common::batch(rows, classes, common::Logits::Scaled, seed);
            let loss = CrossEntropyLoss::new().reduction(Reduction::None);
            let output = loss
                .loss(context, &logits[..], &targets[..], shape)
                .unwrap_or_else(fail);
            let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
            common::assert_loss_matches(&output, &truth, &label);
            Bits::new(&output, &[])
        }
        Call::CrossEntropyDevice => {
            let (logits, targets) = common::batch(rows, classes, common::Logits::Offset, seed);
            let loss = CrossEntropyLoss::new();
            let output =
                common::device_loss(context, &loss, &logits, Targets::I64(&targets), shape, true).unwrap_or_else(fail);
            let truth = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
            common::assert_loss_matches(&output, &truth, &label);
            Bits::new(&output, &[])
        }
        Call::Binary => {
            let data = Data::new(Kind::BceLogits, shape, seed);
            let mut gradient = vec![f32::NAN; data.input.len()];
            let output = BinaryCrossEntropyLoss::new()
                .loss_and_grad(context, &data.input[..], &data.soft, shape, &mut gradient[..])
                .unwrap_or_else(fail);
            Bits::new(&output, &gradient)
        }
        Call::Divergence => {
            let data = Data::new(Kind::Kl, shape, seed);
            let mut gradient = vec![f32::NAN; data.input.len()];
            let output = KlDivLoss::new()
                .loss_and_grad(context, &data.input[..], &data.soft, shape, &mut gradient[..])
                .unwrap_or_else(fail);
            Bits::new(&output, &gradient)
        }
    }
}

/// Every job alone, then [`THREADS`] threads running every job [`ROUNDS`]
/// times at once, each starting at a different job, while one more thread asks
/// for the workspace's release again and again: the same bits.
fn assert_threads_agree(context: &Context, name: &str) {
    let alone: Vec<Bits> = JOBS.iter().map(|&job| run(context, job)).collect();
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let alone = &alone;
        let releaser = scope.spawn(|| {
            let mut releases = 0u32;
            while running.load(Ordering::Acquire) {
                context.release_buffers();
                releases += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            releases
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        for step in 0..JOBS.len() {
                            let index = (thread * 2 + round + step) % JOBS.len();
                            let bits = run(context, JOBS[index]);
                            assert!(
                                bits == alone[index],
                                "{name}: thread {thread}, round {round}: {:?} differs from the same call alone",
                                JOBS[index]
                            );
                        }
                    }
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|thread| thread.join()).collect();
        running.store(false, Ordering::Release);
        let releases = releaser.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for outcome in outcomes {
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        }
        assert!(releases > 0, "{name}: the releasing thread never ran");
    });
    // No call holds the workspace now: the release happens at once.
    context.release_buffers();
    assert_eq!(
        context.workspace_bytes(),
        0,
        "{name}: the workspace outlived its release"
    );
}

#[test]
fn threads_sharing_the_default_context_get_the_bits_of_lone_calls() {
    let Some(context) = common::gpu() else { return };
    assert_threads_agree(context, "default");
}

#[test]
fn threads_sharing_a_chunked_context_with_transfer_pieces_get_the_bits_of_lone_calls() {
    // Bindings of 2 MiB and transfer pieces of 1 MiB: the 50257-class jobs
    // (4.8 MB and 2.4 MB of logits) run in chunks, and move in pieces.
    let Some(context) = common::open(ContextOptions {
        max_binding_size: Some(common::SMALL_BINDING),
        transfer_piece_bytes: 1 << 20,
        workgroup_size: Some(common::GPU_WORKGROUP_SIZE),
        ..ContextOptions::default()
    }) else {
        return;
    };
    assert_threads_agree(&context, "chunked, pieces");
}
