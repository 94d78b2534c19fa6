//! Criterion benchmarks from host memory to host memory on the GPU and the CPU,
//! over the default shapes of `xent bench` (the shape above the binding limit
//! included): `loss_and_grad` (the fused loss + gradient; throughput counts one read
//! and one write of the logits) and `loss` (forward only; one read of the logits).
//! `cargo bench --bench loss`.
//!
//! Without an adapter the GPU half is skipped with a message (benchmarks are not
//! tests); set `XENT_BENCH_SHAPES=64x1000,1024x32000` to choose shapes.

use std::sync::OnceLock;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xent::{Backend, Context, Cpu, CrossEntropyLoss, Shape};

fn shapes(binding_limit: u64) -> Vec<Shape> {
    if let Ok(list) = std::env::var("XENT_BENCH_SHAPES") {
        return list
            .split(',')
            .filter_map(|shape| {
                let (rows, classes) = shape.split_once('x')?;
                Some(Shape::new(rows.trim().parse().ok()?, classes.trim().parse().ok()?))
            })
            .collect();
    }
    let over_binding_rows = (binding_limit / (32_000 * 4)) as usize + 64;
    vec![
        Shape::new(64, 1000),
        Shape::new(1024, 32_000),
        Shape::new(4096, 32_000),
        Shape::new(over_binding_rows, 32_000),
    ]
}

fn inputs(shape: Shape) -> (Vec<f32>, Vec<i64>) {
    let logits = (0..shape.rows * shape.classes)
        .map(|index| ((index * 7919) % 1601) as f32 / 100.0 - 8.0)
        .collect();
    let targets = (0..shape.rows).map(|row| ((row * 31) % shape.classes) as i64).collect();
    (logits, targets)
}

/// The GPU context, opened once for both groups, or `None` (with a message) when
/// no adapter exists.
fn gpu() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match Context::new() {
            Ok(context) => Some(context),
            Err(error) => {
                eprintln!("no GPU adapter ({error}): benchmarking the CPU only");
                None
            }
        })
        .as_ref()
}

/// The backends to time: the CPU, and the GPU when there is one.
fn backends(gpu: Option<&'static Context>) -> Vec<(&'static str, &'static dyn Backend)> {
    let mut backends: Vec<(&'static str, &'static dyn Backend)> = vec![("cpu", &Cpu)];
    if let Some(context) = gpu {
        backends.push(("gpu", context));
    }
    backends
}

fn shape_id(name: &str, shape: Shape) -> BenchmarkId {
    BenchmarkId::new(name, format!("{}x{}", shape.rows, shape.classes))
}

/// Bytes of the logits of `shape` (f32).
fn logits_bytes(shape: Shape) -> u64 {
    4 * (shape.rows * shape.classes) as u64
}

fn fused_loss_and_gradient(criterion: &mut Criterion) {
    let gpu = gpu();
    let binding_limit = gpu.map_or(128 << 20, Context::max_binding_size);
    let mut group = criterion.benchmark_group("loss_and_grad");
    group.sample_size(10);
    for shape in shapes(binding_limit) {
        let (logits, targets) = inputs(shape);
        let mut gradient = vec![0.0f32; logits.len()];
        group.throughput(Throughput::Bytes(2 * logits_bytes(shape)));
        for (name, backend) in backends(gpu) {
            group.bench_function(shape_id(name, shape), |bencher| {
                bencher.iter(|| {
                    CrossEntropyLoss::new()
                        .loss_and_grad(backend, &logits, &targets, shape, &mut gradient)
                        .expect("valid batch")
                })
            });
        }
    }
    group.finish();
}

fn forward_only(criterion: &mut Criterion) {
    let gpu = gpu();
    let binding_limit = gpu.map_or(128 << 20, Context::max_binding_size);
    let mut group = criterion.benchmark_group("loss");
    group.sample_size(10);
    for shape in shapes(binding_limit) {
        let (logits, targets) = inputs(shape);
        group.throughput(Throughput::Bytes(logits_bytes(shape)));
        for (name, backend) in backends(gpu) {
            group.bench_function(shape_id(name, shape), |bencher| {
                bencher.iter(|| {
                    CrossEntropyLoss::new()
                        .loss(backend, &logits, &targets, shape)
                        .expect("valid batch")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fused_loss_and_gradient, forward_only);
criterion_main!(benches);
