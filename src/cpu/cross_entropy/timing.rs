//! Timings, a benchmark rather than a test (ignored unless asked for; release
//! builds): `cargo test --release --lib cpu::cross_entropy::timing -- --ignored --nocapture`,
//! with `XENT_TIMING_ROWS` (default 4096 rows of 32000 classes), `XENT_TIMING_ONLY` (a
//! substring of the case names) and `RAYON_NUM_THREADS`.

use std::time::Instant;

use super::*;

/// CPU time of every thread of this process so far, in nanoseconds (Linux:
/// `/proc/self/task/*/schedstat`; 0 elsewhere). Unlike wall time, it does not
/// count the time this process waits for a core on a busy machine.
fn cpu_time_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Best wall time and best CPU time of `runs` calls of `call`, in milliseconds.
fn best_ms(runs: usize, mut call: impl FnMut()) -> (f64, f64) {
    (0..runs)
        .map(|_| {
            let (start, cpu_start) = (Instant::now(), cpu_time_ns());
            call();
            (
                start.elapsed().as_secs_f64() * 1e3,
                (cpu_time_ns() - cpu_start) as f64 / 1e6,
            )
        })
        .fold((f64::INFINITY, f64::INFINITY), |(wall, cpu), (w, c)| {
            (wall.min(w), cpu.min(c))
        })
}

#[test]
#[ignore = "timing, run explicitly in release"]
fn large_batch() {
    let rows = std::env::var("XENT_TIMING_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(4096);
    let classes = 32000;
    let shape = Shape::new(rows, classes);
    // Cheap deterministic pseudo-random logits in about [-4, 4].
    let logits: Vec<f32> = (0..rows * classes)
        .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
        .collect();
    let targets: Vec<i64> = (0..rows).map(|row| (row * 7919 % classes) as i64).collect();
    let weight: Vec<f32> = (0..classes).map(|class| 0.5 + (class % 3) as f32 * 0.5).collect();
    let probabilities: Vec<f32> = vec![1.0 / classes as f32; rows * classes];
    let mut gradient = vec![0.0f32; rows * classes];
    let plain = CrossEntropyOptions::default();
    let options = [
        ("plain (fast path)", plain.clone(), false),
        ("plain, row stats (general)", plain.clone(), true),
        (
            "z 1e-30, no row stats (general)",
            CrossEntropyOptions {
                z_loss: 1e-30,
                ..plain.clone()
            },
            false,
        ),
        (
            "weight + smoothing + z-loss",
            CrossEntropyOptions {
                weight: Some(weight.clone()),
                label_smoothing: 0.1,
                z_loss: 1e-4,
                ..plain.clone()
            },
            true,
        ),
        (
            "logit_scale 0.7",
            CrossEntropyOptions {
                logit_scale: 0.7,
                ..plain.clone()
            },
            true,
        ),
        (
            "softcap 30",
            CrossEntropyOptions {
                softcap: Some(30.0),
                ..plain.clone()
            },
            true,
        ),
    ];
    let only = std::env::var("XENT_TIMING_ONLY").unwrap_or_default();
    for (name, options, row_stats) in options.iter().filter(|(name, ..)| name.contains(&only)) {
        let targets = Targets::I64(&targets);
        let (wall, cpu) = best_ms(5, || {
            cross_entropy(&logits, targets, shape, options, Some(&mut gradient), *row_stats);
        });
        let (loss_wall, loss_cpu) = best_ms(5, || {
            cross_entropy(&logits, targets, shape, options, None, *row_stats);
        });
        println!(
            "{rows}x{classes} {name}: loss+gradient {wall:.0} ms (CPU {cpu:.0} ms), loss only {loss_wall:.0} ms (CPU {loss_cpu:.0} ms)"
        );
    }
    let soft = CrossEntropyOptions {
        weight: Some(weight),
        label_smoothing: 0.1,
        ..plain
    };
    if "soft targets".contains(&only) {
        let (wall, cpu) = best_ms(5, || {
            cross_entropy(
                &logits,
                Targets::Probabilities(&probabilities),
                shape,
                &soft,
                Some(&mut gradient),
                true,
            );
        });
        println!("{rows}x{classes} soft targets + weight + smoothing: loss+gradient {wall:.0} ms (CPU {cpu:.0} ms)");
    }
}
