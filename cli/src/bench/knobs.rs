//! The GPU context's kernel settings that `xent bench` sweeps side by side and
//! `xent info` shows: each knob's flag, names, values and how it reaches
//! `xent::ContextOptions`, in one place. A new knob is a variant of [`Knob`] and
//! of [`Choice`], its arms below, and its flag in `BenchArgs`.

use serde_json::{Value, json};
use xent::{Context, ContextOptions, GradientOrder, RowSplit, ShaderChecks, UnalignedF32};

use crate::failure::Failure;

/// One of a GPU context's kernel settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Knob {
    WorkgroupSize,
    RowSplit,
    UnalignedF32,
    TransferPiece,
    GradientOrder,
    ShaderChecks,
}

/// A value of one [`Knob`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Choice {
    /// The row kernel's workgroup size.
    WorkgroupSize(u32),
    RowSplit(RowSplit),
    UnalignedF32(UnalignedF32),
    /// Host transfer pieces, in MiB.
    TransferPieceMib(u64),
    GradientOrder(GradientOrder),
    ShaderChecks(ShaderChecks),
}

impl Knob {
    /// Every knob, in the order of the header, the JSON and the device labels.
    pub(crate) const ALL: [Knob; 6] = [
        Knob::WorkgroupSize,
        Knob::RowSplit,
        Knob::UnalignedF32,
        Knob::TransferPiece,
        Knob::GradientOrder,
        Knob::ShaderChecks,
    ];

    /// `xent bench`'s flag that sweeps it.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Knob::WorkgroupSize => "--workgroup-size",
            Knob::RowSplit => "--row-split",
            Knob::UnalignedF32 => "--unaligned-f32",
            Knob::TransferPiece => "--transfer-piece-mib",
            Knob::GradientOrder => "--gradient-order",
            Knob::ShaderChecks => "--shader-checks",
        }
    }

    /// Its name in text output.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Knob::WorkgroupSize => "row kernel workgroup size",
            Knob::RowSplit => "row split",
            Knob::UnalignedF32 => "unaligned f32 rows",
            Knob::TransferPiece => "host transfer pieces",
            Knob::GradientOrder => "gradient pass order",
            Knob::ShaderChecks => "shader checks",
        }
    }

    /// Its key in JSON output.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Knob::WorkgroupSize => "workgroup_size",
            Knob::RowSplit => "row_split",
            Knob::UnalignedF32 => "unaligned_f32",
            Knob::TransferPiece => "transfer_piece_mib",
            Knob::GradientOrder => "gradient_order",
            Knob::ShaderChecks => "shader_checks",
        }
    }

    /// What it does to the GPU, for the error that refuses it on a CPU-only run.
    pub(crate) fn purpose(self) -> &'static str {
        match self {
            Knob::WorkgroupSize => "sizes the GPU's kernels",
            Knob::RowSplit | Knob::UnalignedF32 | Knob::GradientOrder => "chooses the GPU's kernels",
            Knob::TransferPiece => "sizes the GPU's host transfers",
            Knob::ShaderChecks => "compiles the GPU's kernels",
        }
    }

    /// Whether it acts on the host-to-host calls alone (which `--device-only` skips).
    pub(crate) fn host_calls_only(self) -> bool {
        self == Knob::TransferPiece
    }

    /// Its value in `context`.
    pub(crate) fn of(self, context: &Context) -> Choice {
        match self {
            Knob::WorkgroupSize => Choice::WorkgroupSize(context.workgroup_size()),
            Knob::RowSplit => Choice::RowSplit(context.row_split()),
            Knob::UnalignedF32 => Choice::UnalignedF32(context.unaligned_f32()),
            Knob::TransferPiece => Choice::TransferPieceMib(context.transfer_piece_bytes() >> 20),
            Knob::GradientOrder => Choice::GradientOrder(context.gradient_order()),
            Knob::ShaderChecks => Choice::ShaderChecks(context.shader_checks()),
        }
    }
}

impl Choice {
    /// The knob it is a value of.
    pub(crate) fn knob(self) -> Knob {
        match self {
            Choice::WorkgroupSize(_) => Knob::WorkgroupSize,
            Choice::RowSplit(_) => Knob::RowSplit,
            Choice::UnalignedF32(_) => Knob::UnalignedF32,
            Choice::TransferPieceMib(_) => Knob::TransferPiece,
            Choice::GradientOrder(_) => Knob::GradientOrder,
            Choice::ShaderChecks(_) => Knob::ShaderChecks,
        }
    }

    /// Sets it in `options`.
    fn apply(self, options: &mut ContextOptions) {
        match self {
            Choice::WorkgroupSize(size) => options.workgroup_size = Some(size),
            Choice::RowSplit(split) => options.row_split = split,
            Choice::UnalignedF32(access) => options.unaligned_f32 = access,
            Choice::TransferPieceMib(mib) => options.transfer_piece_bytes = mib << 20,
            Choice::GradientOrder(order) => options.gradient_order = order,
            Choice::ShaderChecks(checks) => options.shader_checks = checks,
        }
    }

    /// Its name: `512`, `off`/`auto`/`split4`, `entries`, `64`, `backward`, `full`.
    pub(crate) fn name(self) -> String {
        match self {
            Choice::WorkgroupSize(size) => size.to_string(),
            Choice::RowSplit(RowSplit::Off) => "off".to_owned(),
            Choice::RowSplit(RowSplit::Auto) => "auto".to_owned(),
            Choice::RowSplit(RowSplit::Forced {
                vec4s_per_invocation, ..
            }) => format!("split{vec4s_per_invocation}"),
            Choice::UnalignedF32(access) => unaligned_f32_name(access).to_owned(),
            Choice::TransferPieceMib(mib) => mib.to_string(),
            Choice::GradientOrder(order) => gradient_order_name(order).to_owned(),
            Choice::ShaderChecks(checks) => shader_checks_name(checks).to_owned(),
        }
    }

    /// Its JSON value: a number for the sizes, else its name.
    pub(crate) fn json(self) -> Value {
        match self {
            Choice::WorkgroupSize(size) => json!(size),
            Choice::TransferPieceMib(mib) => json!(mib),
            choice => json!(choice.name()),
        }
    }

    /// Its name with its unit, for text output (`64 MiB`).
    pub(crate) fn text(self) -> String {
        match self {
            Choice::TransferPieceMib(mib) => format!("{mib} MiB"),
            choice => choice.name(),
        }
    }

    /// Its part of a device label in a sweep (`gpu/512/split4/piece64`).
    pub(crate) fn tag(self) -> String {
        match self {
            Choice::TransferPieceMib(mib) => format!("piece{mib}"),
            choice => choice.name(),
        }
    }
}

/// Every knob's value in `context`, in [`Knob::ALL`]'s order.
pub(crate) fn context_choices(context: &Context) -> [Choice; 6] {
    Knob::ALL.map(|knob| knob.of(context))
}

/// One swept knob: the values its flag asked for (none: the library's default).
pub(crate) struct Sweep<'a> {
    pub(crate) knob: Knob,
    pub(crate) values: &'a [Choice],
}

/// The options of one GPU context per combination of the swept values (each
/// knob not swept left at the library's default), in the sweeps' order; an
/// error where a flag lists a value twice.
pub(crate) fn swept_options(sweeps: &[Sweep<'_>]) -> Result<Vec<ContextOptions>, Failure> {
    let mut combinations = vec![ContextOptions::default()];
    for sweep in sweeps {
        let values = sweep.values;
        if let Some(index) = (1..values.len()).find(|&index| values[..index].contains(&values[index])) {
            return Err(format!("{} lists {} twice", sweep.knob.flag(), values[index].name()).into());
        }
        if values.is_empty() {
            continue;
        }
        combinations = combinations
            .iter()
            .flat_map(|options| {
                values.iter().map(|&choice| {
                    let mut options = options.clone();
                    choice.apply(&mut options);
                    options
                })
            })
            .collect();
    }
    Ok(combinations)
}

/// The one of `values` whose name is `text`; the error names them all
/// (`` `x` is not a, b or c ``).
fn parse_named(text: &str, values: &[Choice]) -> Result<Choice, String> {
    if let Some(&value) = values.iter().find(|value| value.name() == text.trim()) {
        return Ok(value);
    }
    let names: Vec<String> = values.iter().map(|value| value.name()).collect();
    let named = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, others)) => format!("{} or {last}", others.join(", ")),
        None => String::new(),
    };
    Err(format!("`{text}` is not {named}"))
}

/// Parses a workgroup size (the library checks it against its choices and the adapter).
pub(crate) fn parse_workgroup_size(text: &str) -> Result<Choice, String> {
    text.trim()
        .parse::<u32>()
        .map(Choice::WorkgroupSize)
        .map_err(|_| format!("`{text}` is not a workgroup size"))
}

/// Parses `off`, `auto` or a number of vec4s per invocation (the split kernel forced).
pub(crate) fn parse_row_split(text: &str) -> Result<Choice, String> {
    match text.trim() {
        "off" => Ok(Choice::RowSplit(RowSplit::Off)),
        "auto" => Ok(Choice::RowSplit(RowSplit::Auto)),
        number => match number.parse::<u32>() {
            Ok(vec4s) if xent::ROW_SPLIT_VEC4S_CHOICES.contains(&vec4s) => Ok(Choice::RowSplit(RowSplit::Forced {
                vec4s_per_invocation: vec4s,
                spin_limit: xent::DEFAULT_SPIN_LIMIT,
            })),
            _ => Err(format!(
                "`{text}` is not off, auto or one of {:?} (vec4s per invocation)",
                xent::ROW_SPLIT_VEC4S_CHOICES
            )),
        },
    }
}

/// Parses `auto`, `entries` or `vectors`.
pub(crate) fn parse_unaligned_f32(text: &str) -> Result<Choice, String> {
    let all = [UnalignedF32::Auto, UnalignedF32::Entries, UnalignedF32::Vectors];
    parse_named(text, &all.map(Choice::UnalignedF32))
}

/// Parses a transfer piece size in MiB (1 to 65536).
pub(crate) fn parse_piece_mib(text: &str) -> Result<Choice, String> {
    match text.trim().parse::<u64>() {
        Ok(mib @ 1..=65536) => Ok(Choice::TransferPieceMib(mib)),
        _ => Err(format!("`{text}` is not a piece size in MiB from 1 to 65536")),
    }
}

/// Parses `forward` or `backward`.
pub(crate) fn parse_gradient_order(text: &str) -> Result<Choice, String> {
    let all = [GradientOrder::Forward, GradientOrder::Backward];
    parse_named(text, &all.map(Choice::GradientOrder))
}

/// Parses `trusted` or `full`.
pub(crate) fn parse_shader_checks(text: &str) -> Result<Choice, String> {
    let all = [ShaderChecks::Trusted, ShaderChecks::Full];
    parse_named(text, &all.map(Choice::ShaderChecks))
}

fn unaligned_f32_name(access: UnalignedF32) -> &'static str {
    match access {
        UnalignedF32::Auto => "auto",
        UnalignedF32::Entries => "entries",
        UnalignedF32::Vectors => "vectors",
    }
}

fn gradient_order_name(order: GradientOrder) -> &'static str {
    match order {
        GradientOrder::Forward => "forward",
        GradientOrder::Backward => "backward",
    }
}

fn shader_checks_name(checks: ShaderChecks) -> &'static str {
    match checks {
        ShaderChecks::Trusted => "trusted",
        ShaderChecks::Full => "full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_names_itself_and_its_values_once() {
        let keys: Vec<&str> = Knob::ALL.iter().map(|knob| knob.key()).collect();
        // Sorted first: dedup only drops neighbours.
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        let flags: std::collections::BTreeSet<&str> = Knob::ALL.iter().map(|knob| knob.flag()).collect();
        assert_eq!(flags.len(), Knob::ALL.len());
        let parsed = [
            parse_workgroup_size("512"),
            parse_row_split("4"),
            parse_unaligned_f32("vectors"),
            parse_piece_mib("64"),
            parse_gradient_order("backward"),
            parse_shader_checks("full"),
        ];
        let choices: Vec<Choice> = parsed.into_iter().map(|choice| choice.expect("parses")).collect();
        let knobs: Vec<Knob> = choices.iter().map(|choice| choice.knob()).collect();
        assert_eq!(knobs, Knob::ALL);
        let tags: Vec<String> = choices.iter().map(|choice| choice.tag()).collect();
        assert_eq!(tags, ["512", "split4", "vectors", "piece64", "backward", "full"]);
        assert_eq!(choices[3].text(), "64 MiB");
        assert_eq!(choices[3].json(), json!(64));
        assert_eq!(choices[1].json(), json!("split4"));
    }

    #[test]
    fn sweeps_combine_in_order_and_refuse_repeats() {
        let sizes = [Choice::WorkgroupSize(64), Choice::WorkgroupSize(256)];
        let orders = [GradientOrder::Forward, GradientOrder::Backward].map(Choice::GradientOrder);
        let sweeps = [
            Sweep {
                knob: Knob::WorkgroupSize,
                values: &sizes,
            },
            Sweep {
                knob: Knob::ShaderChecks,
                values: &[],
            },
            Sweep {
                knob: Knob::GradientOrder,
                values: &orders,
            },
        ];
        let options = swept_options(&sweeps).expect("combinations");
        let combined: Vec<(Option<u32>, GradientOrder, ShaderChecks)> = options
            .iter()
            .map(|options| (options.workgroup_size, options.gradient_order, options.shader_checks))
            .collect();
        let (forward, backward, trusted) = (GradientOrder::Forward, GradientOrder::Backward, ShaderChecks::default());
        assert_eq!(
            combined,
            [
                (Some(64), forward, trusted),
                (Some(64), backward, trusted),
                (Some(256), forward, trusted),
                (Some(256), backward, trusted)
            ]
        );
        let twice = [Choice::WorkgroupSize(64), Choice::WorkgroupSize(64)];
        let repeated = swept_options(&[Sweep {
            knob: Knob::WorkgroupSize,
            values: &twice,
        }]);
        assert!(matches!(repeated, Err(Failure::Usage(message)) if message == "--workgroup-size lists 64 twice"));
        assert_eq!(
            parse_gradient_order("sideways"),
            Err("`sideways` is not forward or backward".to_owned())
        );
    }
}
