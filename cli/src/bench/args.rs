//! `xent bench`'s options and what one benchmark is: a shape, the element type of
//! its logits, in place or not, and the labels and sizes derived from it.

use std::path::PathBuf;

use xent::{LogitType, Shape};

use super::knobs::{
    Choice, Knob, Sweep, parse_gradient_order, parse_piece_mib, parse_row_split, parse_shader_checks,
    parse_unaligned_f32, parse_workgroup_size,
};

/// Bytes of one logit (f32).
pub(super) const F32_BYTES: u64 = 4;

/// `xent bench`'s options.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rows of a single shape to time (with --classes); default: the standard shapes.
    #[arg(long, requires = "classes", conflicts_with = "shapes", value_parser = parse_count)]
    pub(super) rows: Option<usize>,
    /// Classes of that shape.
    #[arg(long, requires = "rows", value_parser = parse_count)]
    pub(super) classes: Option<usize>,
    /// Shapes to time instead of the standard ones, e.g. `64x1000,4096x32000`.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    pub(super) shapes: Vec<Shape>,
    /// Element type of the logits and gradient for --rows/--shapes (the standard
    /// shapes time f32, and bf16 for 8192x50257 and 8192x128256).
    #[arg(long, value_enum, default_value_t = Element::F32)]
    pub(super) dtype: Element,
    /// Which backends to time.
    #[arg(long, value_enum, default_value_t = BenchBackends::Both)]
    pub(super) backend: BenchBackends,
    /// Timed repetitions per shape, backend and timing (after warm-up), 1 to 1000.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) reps: u32,
    /// One JSON object per shape and backend instead of a table (notes go to stderr).
    #[arg(long)]
    pub(super) json: bool,
    /// Also draw fused loss + gradient throughput against N×C into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub(super) plot: Option<PathBuf>,
    /// Time the GPU with each of these row-kernel workgroup sizes side by side
    /// (e.g. `64,128,256,512,1024`), one context per size; default: the size the
    /// context chooses for the adapter.
    #[arg(long, value_delimiter = ',', value_name = "SIZES", value_parser = parse_workgroup_size)]
    pub(super) workgroup_size: Vec<Choice>,
    /// Time the GPU with each of these row-split settings side by side (e.g.
    /// `off,4,8`): `off` (the fused row kernel), `auto` (the library's
    /// automatic choice), or a number of vec4s per invocation (1, 2, 4 or 8: the
    /// split-row kernel forced, with the default spin limit), one context each
    /// (with --workgroup-size, one per pair); default: the library's default (off).
    #[arg(long, value_delimiter = ',', value_name = "SETTINGS", value_parser = parse_row_split)]
    pub(super) row_split: Vec<Choice>,
    /// Time the GPU with each of these ways to reach f32 rows that are not in
    /// aligned groups of 4 logits (e.g. `entries,vectors`): `auto` (the
    /// library's choice for the adapter), `entries` (one entry per load) or
    /// `vectors` (vec4 groups with masked edges; Vulkan and DX12 only), one
    /// context each (with the other sweeps, one per combination); default: auto.
    #[arg(long, value_delimiter = ',', value_name = "SETTINGS", value_parser = parse_unaligned_f32)]
    pub(super) unaligned_f32: Vec<Choice>,
    /// Time the host-to-host calls with each of these transfer piece sizes in
    /// MiB side by side (e.g. `16,64,1024`; `ContextOptions::transfer_piece_bytes`:
    /// logits in and gradient out a piece at a time, the host's copies beside the
    /// device's), one context each (with the other sweeps, one per combination);
    /// default: the library's 64 MiB.
    #[arg(long, value_delimiter = ',', value_name = "MIBS", value_parser = parse_piece_mib)]
    pub(super) transfer_piece_mib: Vec<Choice>,
    /// Time the GPU with the fused kernel's gradient pass walking each row in
    /// each of these orders side by side (`forward,backward`;
    /// `ContextOptions::gradient_order`: backward re-reads first the logits
    /// the statistics pass read last), one context each (with the other
    /// sweeps, one per combination); default: forward.
    #[arg(long, value_delimiter = ',', value_name = "ORDERS", value_parser = parse_gradient_order)]
    pub(super) gradient_order: Vec<Choice>,
    /// Time the GPU with its kernels compiled with each of these run-time
    /// checks side by side (`trusted,full`; `ContextOptions::shader_checks`:
    /// full adds naga's forced loop bound to every loop), one context each
    /// (with the other sweeps, one per combination); default: trusted.
    #[arg(long, value_delimiter = ',', value_name = "CHECKS", value_parser = parse_shader_checks)]
    pub(super) shader_checks: Vec<Choice>,
    /// Time the fused call with the gradient written over the logits
    /// (`loss_and_grad_in_place`), which needs no N×C memory beyond the logits.
    /// Each backend gets freshly generated logits; the loss alone is timed first,
    /// then every fused call overwrites the previous one's gradient (the same work
    /// per logit), so the loss shown is the last call's and the backends'
    /// gradients are not compared.
    #[arg(long)]
    pub(super) in_place: bool,
    /// GPU only (needs --backend gpu): time the device-resident calls and the
    /// copy bandwidth, and skip the host-to-host calls and the host↔device
    /// transfer rates (at 8192x128256 one host call moves ~8 GB over PCIe). The
    /// host columns show `-` (`null` and `"host_timed": false` in JSON); the loss
    /// is the device-resident fused call's.
    #[arg(long)]
    pub(super) device_only: bool,
}

impl BenchArgs {
    /// Each knob's swept values (none where its flag was not given), in [`Knob::ALL`]'s order.
    pub(super) fn sweeps(&self) -> [Sweep<'_>; 6] {
        let values = |knob| match knob {
            Knob::WorkgroupSize => &self.workgroup_size,
            Knob::RowSplit => &self.row_split,
            Knob::UnalignedF32 => &self.unaligned_f32,
            Knob::TransferPiece => &self.transfer_piece_mib,
            Knob::GradientOrder => &self.gradient_order,
            Knob::ShaderChecks => &self.shader_checks,
        };
        Knob::ALL.map(|knob| Sweep {
            knob,
            values: values(knob),
        })
    }
}

/// The backends `xent bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BenchBackends {
    Gpu,
    Cpu,
    Both,
}

/// The element type of a benchmark's logits and gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Element {
    F32,
    F16,
    Bf16,
}

impl Element {
    pub(super) fn logit_type(self) -> LogitType {
        match self {
            Element::F32 => LogitType::F32,
            Element::F16 => LogitType::F16,
            Element::Bf16 => LogitType::Bf16,
        }
    }

    /// Bytes per logit.
    fn size(self) -> u64 {
        self.logit_type().size_in_bytes() as u64
    }

    /// `f32`, `f16` or `bf16`, as `--dtype` spells it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Element::F32 => "f32",
            Element::F16 => "f16",
            Element::Bf16 => "bf16",
        }
    }
}

/// One benchmark: a shape and the logits' element type.
#[derive(Clone, Copy, Debug)]
pub(super) struct Case {
    pub(super) shape: Shape,
    pub(super) element: Element,
    /// The fused call writes the gradient over the logits (`--in-place`).
    pub(super) in_place: bool,
}

/// Parses `ROWSxCLASSES`, e.g. `4096x32000`.
fn parse_shape(text: &str) -> Result<Shape, String> {
    let (rows, classes) = text
        .trim()
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| format!("`{text}` is not ROWSxCLASSES"))?;
    let count = |part: &str| parse_count(part).map_err(|error| format!("{error} in `{text}`"));
    Ok(Shape::new(count(rows)?, count(classes)?))
}

/// Parses a positive count of rows or classes.
fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a positive integer")),
        Ok(value) => Ok(value),
    }
}

/// N×C × the element size, or `None` on overflow.
pub(super) fn logits_bytes(case: Case) -> Option<u64> {
    let elements = case.shape.elements().ok()?;
    (elements as u64).checked_mul(case.element.size())
}

fn shape_label(shape: Shape) -> String {
    format!("{}x{}", shape.rows, shape.classes)
}

/// The shape, with the element type after it for 16-bit logits, and `in place`.
pub(super) fn case_label(case: Case) -> String {
    let mut label = shape_label(case.shape);
    if case.element != Element::F32 {
        label = format!("{label} {}", case.element.name());
    }
    if case.in_place {
        label.push_str(" in place");
    }
    label
}
