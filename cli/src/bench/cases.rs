//! Which cases run: the ones asked for or the standard shapes, and why a backend
//! skips one here (the host's memory budget, the adapter's limits).

use xent::{Context, Shape};

use super::Settings;
use super::args::{BenchArgs, Case, Element, F32_BYTES, case_label, logits_bytes};

/// Classes of the default shape sized to exceed the storage binding limit.
const OVER_BINDING_CLASSES: usize = 32_000;
/// Binding limit assumed for that shape when no GPU is in use (lavapipe's).
const DEFAULT_BINDING_LIMIT: u64 = 128 << 20;
/// The standard shapes besides the one over the binding limit (rows, classes), in
/// the order they run; the last two only where memory allows.
const STANDARD_SHAPES: [(usize, usize); 5] = [
    (64, 1000),
    (1024, 32_000),
    (4096, 32_000),
    (8192, 50_257),
    (8192, 128_256),
];
/// Standard shapes also timed with bf16 logits (and gradient).
const BF16_SHAPES: [(usize, usize); 2] = [(8192, 50_257), (8192, 128_256)];
/// Share of the host's RAM the benchmark's arrays may take.
const HOST_MEMORY_SHARE: f64 = 0.4;

/// `--rows/--classes`, else `--shapes`, else the standard shapes.
pub(super) fn chosen_cases(args: &BenchArgs, gpu: Option<&Context>) -> Vec<Case> {
    let of = |shapes: Vec<Shape>| {
        shapes
            .into_iter()
            .map(|shape| Case {
                shape,
                element: args.dtype,
                in_place: args.in_place,
            })
            .collect()
    };
    match (args.rows, args.classes) {
        (Some(rows), Some(classes)) => of(vec![Shape::new(rows, classes)]),
        _ if !args.shapes.is_empty() => of(args.shapes.clone()),
        _ => default_cases(gpu, args.in_place),
    }
}

/// 64×1000, 1024×32000, 4096×32000, one shape whose logits exceed the binding
/// limit, 8192×50257 and 8192×128256 in f32, then the last two in bf16 (the large
/// ones are skipped per backend where memory does not allow).
fn default_cases(gpu: Option<&Context>, in_place: bool) -> Vec<Case> {
    let binding_limit = gpu.map_or(DEFAULT_BINDING_LIMIT, Context::max_binding_size);
    let over_binding_rows = (binding_limit / (OVER_BINDING_CLASSES as u64 * F32_BYTES)) as usize + 64;
    let mut shapes: Vec<Shape> = STANDARD_SHAPES
        .iter()
        .map(|&(rows, classes)| Shape::new(rows, classes))
        .collect();
    shapes.insert(3, Shape::new(over_binding_rows, OVER_BINDING_CLASSES));
    let f32_cases = shapes.into_iter().map(|shape| Case {
        shape,
        element: Element::F32,
        in_place,
    });
    let bf16_cases = BF16_SHAPES.iter().map(|&(rows, classes)| Case {
        shape: Shape::new(rows, classes),
        element: Element::Bf16,
        in_place,
    });
    f32_cases.chain(bf16_cases).collect()
}

/// Refuses, before anything is timed, a shape the user asked for that a chosen
/// backend cannot run here (the standard shapes are skipped with a note instead).
pub(super) fn check_requested(settings: &Settings<'_>, case: Case) -> Result<(), String> {
    let label = case_label(case);
    let logits_bytes =
        logits_bytes(case).ok_or_else(|| format!("{label}: N×C × the element size overflows 64 bits"))?;
    let measurements = settings.gpus.len() + usize::from(settings.run_cpu);
    if let Some(reason) = host_skip_reason(case, logits_bytes, settings.host_memory, measurements) {
        return Err(format!("{label} cannot run here: {reason}"));
    }
    for context in settings.gpus {
        if let Some(reason) = gpu_skip_reason(context, logits_bytes, settings.host_memory, settings.gpus.len()) {
            return Err(format!(
                "{label} cannot run on the GPU here: {reason}; try --backend cpu"
            ));
        }
    }
    Ok(())
}

/// Why the host cannot hold the bench's arrays within its memory share, if so:
/// the logits (for 16-bit types also the f32 logits they are generated from) and,
/// unless in place, the f32 gradient each of the `measurements` keeps to compare
/// the backends.
pub(super) fn host_skip_reason(
    case: Case,
    logits_bytes: u64,
    host_memory: Option<u64>,
    measurements: usize,
) -> Option<String> {
    let budget = host_memory? as f64 * HOST_MEMORY_SHARE;
    let kept = measurements as u64;
    let (needed, what) = match (case.element, case.in_place) {
        (Element::F32, false) => ((1 + kept) * logits_bytes, "logits + each backend's gradient"),
        (Element::F16 | Element::Bf16, false) => (
            (2 + 2 * kept) * logits_bytes,
            "logits + gradient and the bench's f32 copies",
        ),
        (Element::F32, true) => (logits_bytes, "the logits"),
        (Element::F16 | Element::Bf16, true) => (3 * logits_bytes, "the logits and the f32 logits they come from"),
    };
    (needed as f64 > budget).then(|| {
        format!(
            "{what} take {} > {:.0}% of host RAM ({})",
            gigabytes(needed),
            HOST_MEMORY_SHARE * 100.0,
            gigabytes(host_memory.unwrap_or(0))
        )
    })
}

/// Why the GPU cannot run a shape, if so: one array above the adapter's
/// `max_buffer_size` (the host-slice calls' limit), or, on a software adapter whose
/// memory is the host's, logits + gradient + staging for each of the run's
/// `contexts` above the host memory share.
pub(super) fn gpu_skip_reason(
    context: &Context,
    logits_bytes: u64,
    host_memory: Option<u64>,
    contexts: usize,
) -> Option<String> {
    let max_buffer_size = context.limits().max_buffer_size;
    if logits_bytes > max_buffer_size {
        return Some(format!(
            "one array of {} exceeds the adapter's max_buffer_size ({})",
            gigabytes(logits_bytes),
            gigabytes(max_buffer_size)
        ));
    }
    let on_host = crate::report::is_software(context);
    let budget = host_memory.map(|bytes| bytes as f64 * HOST_MEMORY_SHARE)?;
    let needed = 3 * logits_bytes * contexts as u64;
    (on_host && needed as f64 > budget).then(|| {
        format!(
            "logits + gradient + staging ({contexts} context(s)) take {} of host RAM > the {:.0}% share",
            gigabytes(needed),
            HOST_MEMORY_SHARE * 100.0
        )
    })
}

pub(super) fn gigabytes(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// The host's RAM (sysinfo: Linux, macOS, Windows, the BSDs), or `None` where it
/// cannot be read.
pub(super) fn host_memory_bytes() -> Option<u64> {
    let mut system = sysinfo::System::new();
    system.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
    Some(system.total_memory()).filter(|&bytes| bytes > 0)
}
