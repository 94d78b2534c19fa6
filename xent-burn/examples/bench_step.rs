//! The loss part of one training step on Burn's wgpu runtime, device-resident:
//! Burn's `CrossEntropyLoss` against xent-burn's, each as forward + backward +
//! the logits' gradient under `Autodiff`, on the same adapter (xent runs on
//! Burn's own device and queue). A benchmark, not a test.
//!
//! ```text
//! cargo run --release -p xent-burn --example bench_step
//! ```
//!
//! For each shape: logits (a leaf that requires its gradient) and targets are
//! put on the device once; each side is warmed up with at least 200 ms of
//! back-to-back steps; then `RUNS` times, `K` steps are recorded back to back
//! and the device is synced once at the end. The time of a step is the median
//! over the runs of run time / K; `burn_over_xent` is Burn's step time over
//! xent-burn's. One JSON line per shape. Shapes larger than 128 MiB of logits
//! (lavapipe's biggest storage binding) are skipped.

use std::time::{Duration, Instant};

use burn::nn::loss::CrossEntropyLossConfig as BurnLossConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use xent_burn::CrossEntropyLossConfig;

/// rows × classes.
const SHAPES: [(usize, usize); 2] = [(64, 1000), (1024, 32000)];
/// lavapipe's `max_storage_buffer_binding_size`.
const BINDING_LIMIT: usize = 128 << 20;
const WARMUP: Duration = Duration::from_millis(200);
/// Timed runs per side and shape (the median is reported).
const RUNS: usize = 5;
/// A timed run lasts about this long (K is sized from the warm-up).
const RUN_TARGET: Duration = Duration::from_millis(500);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|error| format!("{error:?}"))?;
    xent_burn::register(&device, &setup)?;
    let info = setup.adapter.get_info();
    let adapter = format!("{} ({:?}, {})", info.name, info.backend, info.driver);
    let device = device.autodiff();
    device.seed(7);
    let burn_loss = BurnLossConfig::new().init(&device);
    let xent_loss = CrossEntropyLossConfig::new().init()?;
    for (rows, classes) in SHAPES {
        if rows * classes * 4 > BINDING_LIMIT {
            eprintln!("{rows}x{classes}: over the 128 MiB binding limit, skipped");
            continue;
        }
        let logits = Tensor::<2>::random([rows, classes], Distribution::Normal(0.0, 2.0), &device).require_grad();
        let targets = Tensor::<1, Int>::random([rows], Distribution::Uniform(0.0, classes as f64), &device);
        let burn = time_steps(&device, || {
            step(&logits, |l| burn_loss.forward(l, targets.clone()));
        })?;
        let xent = time_steps(&device, || {
            step(&logits, |l| xent_loss.forward(l, targets.clone()));
        })?;
        println!(
            "{{\"adapter\":\"{adapter}\",\"rows\":{rows},\"classes\":{classes},\"burn\":{},\"xent\":{},\"burn_over_xent\":{:.2}}}",
            burn.json(),
            xent.json(),
            burn.step.as_secs_f64() / xent.step.as_secs_f64(),
        );
    }
    Ok(())
}

/// One step's loss part: the loss of `logits`, its backward, and the logits'
/// gradient (left on the device).
fn step(logits: &Tensor<2>, loss_fn: impl Fn(Tensor<2>) -> Tensor<1>) {
    let loss = loss_fn(logits.clone());
    let gradients = loss.backward();
    let gradient = logits.grad(&gradients).expect("the logits' gradient");
    drop(gradient);
}

/// The median step time over the runs, their spread, and the K it was measured with.
struct Timing {
    step: Duration,
    /// The fastest and slowest run's step time.
    spread: (Duration, Duration),
    steps_per_run: usize,
}

impl Timing {
    /// `{"ms":median,"min_ms":…,"max_ms":…,"runs":…,"steps_per_run":K}`.
    fn json(&self) -> String {
        let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
        format!(
            "{{\"ms\":{:.3},\"min_ms\":{:.3},\"max_ms\":{:.3},\"runs\":{RUNS},\"steps_per_run\":{}}}",
            ms(self.step),
            ms(self.spread.0),
            ms(self.spread.1),
            self.steps_per_run
        )
    }
}

/// Warms `step` up with at least [`WARMUP`] of back-to-back steps, then times [`RUNS`] runs of K
/// back-to-back steps, each closed by one device sync.
fn time_steps(device: &Device, mut step: impl FnMut()) -> Result<Timing, Box<dyn std::error::Error>> {
    let sync = || device.sync().map_err(|error| format!("sync: {error:?}"));
    let start = Instant::now();
    let mut warm_steps = 0u32;
    while start.elapsed() < WARMUP || warm_steps < 2 {
        step();
        warm_steps += 1;
    }
    sync()?;
    // K from a calibration batch after the warm-up (shader compilation is over).
    let mut batch = 1usize;
    let estimate = loop {
        let run = Instant::now();
        (0..batch).for_each(|_| step());
        sync()?;
        let elapsed = run.elapsed();
        if elapsed >= RUN_TARGET / 5 || batch >= 1000 {
            break elapsed / batch as u32;
        }
        batch *= 2;
    };
    let steps_per_run = (RUN_TARGET.as_secs_f64() / estimate.as_secs_f64())
        .ceil()
        .clamp(3.0, 1000.0) as usize;
    let mut per_step = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let run = Instant::now();
        for _ in 0..steps_per_run {
            step();
        }
        sync()?;
        per_step.push(run.elapsed() / steps_per_run as u32);
    }
    per_step.sort();
    Ok(Timing {
        step: per_step[RUNS / 2],
        spread: (per_step[0], per_step[RUNS - 1]),
        steps_per_run,
    })
}
