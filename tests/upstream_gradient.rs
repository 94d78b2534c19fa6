//! The device-resident door as a training framework uses it: inputs and the
//! gradient as slices of larger buffers (at offset 0, at an aligned offset, at
//! an unaligned one), and an upstream gradient (a scale and one value, or one per
//! row) that multiplies the gradient written. Checked against the f64 reference
//! times the upstream values, and byte for byte outside the slices.

mod common;

use wgpu::util::DeviceExt;
use xent::reference::cross_entropy_f64;
use xent::{
    Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Error, GradientOutput, LogitType, Loss, Reduction, Shape,
    TargetType, Targets, UpstreamGradient,
};

/// Every byte of a test buffer outside the caller's slice.
const SENTINEL: u8 = 0xa5;
/// Bytes after each slice, so that a write past its end would show.
const TAIL: u64 = 64;
const IGNORE_INDEX: i64 = -100;

/// Where the slices start in their buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Offset {
    Zero,
    /// At multiples of the adapter's `min_storage_buffer_offset_alignment`.
    Aligned,
    /// An odd number of elements past it (for bf16, the high half of a word).
    Unaligned,
}

impl Offset {
    /// The start of the slice of `role` (0, 1, 2, …: each role's differs from
    /// the others', so that no kernel can take one slice's offset for another's).
    fn bytes(self, context: &Context, element_size: u64, role: u64) -> u64 {
        let alignment = u64::from(context.device().limits().min_storage_buffer_offset_alignment);
        match self {
            Offset::Zero => 0,
            Offset::Aligned => alignment * (1 + role),
            Offset::Unaligned => alignment + (3 + 2 * role) * element_size,
        }
    }
}

/// `data` at byte `lead` of a buffer whose other bytes are `SENTINEL`.
struct Placed {
    buffer: wgpu::Buffer,
    lead: u64,
    len: u64,
}

impl Placed {
    fn new(context: &Context, data: &[u8], lead: u64, usage: wgpu::BufferUsages) -> Self {
        let len = data.len() as u64;
        let mut bytes = vec![SENTINEL; (lead + len + TAIL).next_multiple_of(4) as usize];
        bytes[lead as usize..(lead + len) as usize].copy_from_slice(data);
        let buffer = context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test slice"),
            contents: &bytes,
            usage,
        });
        Self { buffer, lead, len }
    }

    fn storage(context: &Context, data: &[u8], lead: u64) -> Self {
        Self::new(
            context,
            data,
            lead,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )
    }

    fn slice(&self) -> wgpu::BufferSlice<'_> {
        self.buffer.slice(self.lead..self.lead + self.len)
    }

    /// The whole buffer's bytes; panics unless every byte outside the slice is
    /// still `SENTINEL`, and returns the slice's bytes.
    fn read_checked(&self, context: &Context, what: &str) -> Vec<u8> {
        let bytes = common::read_buffer(context, &self.buffer);
        let (start, end) = (self.lead as usize, (self.lead + self.len) as usize);
        let outside = bytes[..start].iter().chain(&bytes[end..]).enumerate();
        if let Some((index, byte)) = outside.clone().find(|&(_, &byte)| byte != SENTINEL) {
            panic!("{what}: byte {index} outside the slice was overwritten with {byte:#x}");
        }
        bytes[start..end].to_vec()
    }
}

/// One call: the batch, the upstream gradient, and where the slices start.
#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    logit_type: LogitType,
    reduction: Reduction,
    in_place: bool,
    offset: Offset,
}

/// What a call gave: the loss and the gradient's values.
#[derive(Debug, PartialEq)]
struct Outcome {
    loss: Loss,
    gradient: Vec<f32>,
}

/// The batch of `shape` with two ignored rows.
fn batch_with_ignored_rows(shape: Shape) -> (Vec<f32>, Vec<i64>) {
    let (logits, mut targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 41);
    targets[2] = IGNORE_INDEX;
    targets[shape.rows - 2] = IGNORE_INDEX;
    (logits, targets)
}

/// The upstream gradient of `reduction`: `(scale, values)`; one value for the
/// reductions to a scalar, one per row for `none`.
fn upstream_of(reduction: Reduction, rows: usize) -> (f32, Vec<f32>) {
    match reduction {
        Reduction::None => (0.5, (0..rows).map(|row| (row as f32 * 0.37).sin() * 2.0).collect()),
        Reduction::Mean | Reduction::Sum => (-2.0, vec![0.75]),
    }
}

/// Runs `case` on `context`, checking that no byte outside a slice changed.
fn run(context: &Context, case: Case) -> Outcome {
    let Case {
        shape,
        logit_type,
        reduction,
        in_place,
        offset,
    } = case;
    let (logits, targets) = batch_with_ignored_rows(shape);
    let (logit_bytes, _) = common::encoded(&logits, logit_type);
    let element_size = logit_type.size_in_bytes() as u64;
    let logits_placed = Placed::storage(context, &logit_bytes, offset.bytes(context, element_size, 0));
    let targets_placed = Placed::storage(context, bytemuck::cast_slice(&targets), offset.bytes(context, 8, 1));
    let gradient_lead = offset.bytes(context, element_size, 2);
    let gradient_placed = Placed::storage(context, &vec![SENTINEL; logit_bytes.len()], gradient_lead);
    let (scale, values) = upstream_of(reduction, shape.rows);
    let upstream_placed = Placed::storage(context, bytemuck::cast_slice(&values), offset.bytes(context, 4, 3));
    let inputs = DeviceInputs {
        logits: logits_placed.slice(),
        logit_type,
        targets: targets_placed.slice(),
        target_type: TargetType::I64,
        shape,
        gradient: if in_place {
            GradientOutput::InPlace
        } else {
            GradientOutput::Buffer(gradient_placed.slice())
        },
        upstream: UpstreamGradient {
            scale,
            values: Some(upstream_placed.slice()),
        },
    };
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    CrossEntropyLoss::new()
        .reduction(reduction)
        .record(context, &mut encoder, &inputs, &outputs)
        .unwrap_or_else(|error| panic!("{case:?}: {error}"));
    context.queue().submit([encoder.finish()]);
    let loss = outputs.read(context).expect("read");
    let what = format!("{case:?}");
    let written = if in_place { &logits_placed } else { &gradient_placed };
    let gradient = common::decoded(&written.read_checked(context, &what), logit_type);
    if !in_place {
        assert_eq!(
            logits_placed.read_checked(context, &what),
            logit_bytes,
            "{what}: logits unchanged"
        );
    }
    Outcome { loss, gradient }
}

/// Checks `outcome` against the f64 reference of `case` times the upstream gradient.
fn assert_matches_reference(case: Case, outcome: &Outcome) {
    let (logits, targets) = batch_with_ignored_rows(case.shape);
    let (_, seen) = common::encoded(&logits, case.logit_type);
    let options = CrossEntropyLoss::new().reduction(case.reduction).options().clone();
    let reference = cross_entropy_f64(&seen, Targets::I64(&targets), case.shape, &options);
    let what = format!("{case:?}");
    match &outcome.loss {
        Loss::Reduced(loss) => common::assert_loss(*loss, reference.loss, &what),
        Loss::PerRow(losses) => common::assert_row_losses(losses, &reference.row_losses, &what),
    }
    let (scale, values) = upstream_of(case.reduction, case.shape.rows);
    let classes = case.shape.classes;
    let expected: Vec<f64> = reference
        .gradient
        .iter()
        .enumerate()
        .map(|(index, &gradient)| {
            let value = values.get(index / classes).or(values.first()).copied().unwrap_or(1.0);
            gradient * f64::from(scale) * f64::from(value)
        })
        .collect();
    for ignored in [2, case.shape.rows - 2] {
        let row = &outcome.gradient[ignored * classes..(ignored + 1) * classes];
        assert!(row.iter().all(|&value| value == 0.0), "{what}: ignored row {ignored}");
    }
    let largest = expected.iter().fold(0.0f64, |largest, value| largest.max(value.abs()));
    let worst = outcome
        .gradient
        .iter()
        .zip(&expected)
        .fold(0.0f64, |worst, (&actual, &expected)| {
            worst.max((f64::from(actual) - expected).abs())
        });
    // bf16 keeps 8 bits; f32 a few roundings of the largest entry.
    let tolerance = if case.logit_type == LogitType::Bf16 {
        1.0 / 256.0
    } else {
        1e-5
    };
    assert!(
        worst <= tolerance * largest,
        "{what}: gradient error {worst:e} vs largest {largest:e}"
    );
}

#[test]
fn upstream_gradient_multiplies_the_gradient_at_every_offset() {
    let Some(context) = common::gpu() else { return };
    // 13 × 7: odd rows (bf16 entries share words across rows, the last word is
    // half used); 9 × 64: rows of groups of 4.
    for shape in [Shape::new(13, 7), Shape::new(9, 64)] {
        for logit_type in [LogitType::F32, LogitType::Bf16] {
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for in_place in [false, true] {
                    let case = |offset| Case {
                        shape,
                        logit_type,
                        reduction,
                        in_place,
                        offset,
                    };
                    let at_zero = run(context, case(Offset::Zero));
                    assert_matches_reference(case(Offset::Zero), &at_zero);
                    // The same binding layout at an aligned offset: the same bits.
                    assert_eq!(
                        run(context, case(Offset::Aligned)),
                        at_zero,
                        "{:?}",
                        case(Offset::Aligned)
                    );
                    let unaligned = run(context, case(Offset::Unaligned));
                    assert_matches_reference(case(Offset::Unaligned), &unaligned);
                }
            }
        }
    }
}

/// The plain call through a whole buffer.
fn plain_gradient(context: &Context, shape: Shape, upstream: UpstreamGradient<'_>, logits: &wgpu::Buffer) -> Vec<u8> {
    let (_, targets) = batch_with_ignored_rows(shape);
    let targets = Placed::storage(context, bytemuck::cast_slice(&targets), 0);
    let gradient = Placed::storage(context, &vec![0; (logits.size() - TAIL) as usize], 0);
    let inputs = DeviceInputs {
        logits: logits.slice(..logits.size() - TAIL),
        logit_type: LogitType::F32,
        targets: targets.slice(),
        target_type: TargetType::I64,
        shape,
        gradient: GradientOutput::Buffer(gradient.slice()),
        upstream,
    };
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    CrossEntropyLoss::new()
        .record(context, &mut encoder, &inputs, &outputs)
        .expect("record");
    context.queue().submit([encoder.finish()]);
    gradient.read_checked(context, "plain")
}

#[test]
fn an_upstream_of_one_gives_the_plain_gradient_bits() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(6, 40);
    let (logits, _) = batch_with_ignored_rows(shape);
    let logits = Placed::storage(context, bytemuck::cast_slice(&logits), 0);
    let one = Placed::storage(context, bytemuck::cast_slice(&[1.0f32]), 0);
    let plain = plain_gradient(context, shape, UpstreamGradient::ONE, &logits.buffer);
    let with_values = UpstreamGradient {
        scale: 1.0,
        values: Some(one.slice()),
    };
    assert_eq!(plain_gradient(context, shape, with_values, &logits.buffer), plain);
    let doubled = plain_gradient(
        context,
        shape,
        UpstreamGradient {
            scale: 2.0,
            values: None,
        },
        &logits.buffer,
    );
    let halves: Vec<f32> = bytemuck::pod_collect_to_vec::<u8, f32>(&doubled)
        .iter()
        .map(|value| value / 2.0)
        .collect();
    assert_eq!(
        halves,
        bytemuck::pod_collect_to_vec::<u8, f32>(&plain),
        "a power of two scales exactly"
    );
}

#[test]
fn per_row_upstream_values_follow_the_rows_across_chunks() {
    let Some(context) = common::gpu_chunked() else { return };
    // 2 MiB bindings hold 3 rows of 131 072 logits: 7 rows are 3 chunks.
    let case = Case {
        shape: Shape::new(7, 131_072),
        logit_type: LogitType::F32,
        reduction: Reduction::None,
        in_place: false,
        offset: Offset::Unaligned,
    };
    let outcome = run(context, case);
    assert_matches_reference(case, &outcome);
}

/// The upstream gradient of `values` alone.
fn upstream_values(values: wgpu::BufferSlice<'_>) -> UpstreamGradient<'_> {
    UpstreamGradient {
        scale: 1.0,
        values: Some(values),
    }
}

/// Records `inputs` with `reduction`, returning the error if any.
fn record(context: &Context, inputs: &DeviceInputs<'_>, reduction: Reduction) -> Result<(), Error> {
    let outputs = DeviceOutputs::new(context, inputs.shape.rows)?;
    let mut encoder = context.device().create_command_encoder(&Default::default());
    CrossEntropyLoss::new()
        .reduction(reduction)
        .record(context, &mut encoder, inputs, &outputs)
}

#[test]
fn bad_slices_and_upstream_values_are_typed_errors() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(4, 3);
    // Buffers of exactly `size` bytes.
    let storage = |size| {
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("exact"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let logits = storage(48);
    let bf16_logits = storage(30);
    let targets = storage(32);
    let values = storage(16);
    let not_storage = Placed::new(context, &[0; 16], 0, wgpu::BufferUsages::COPY_SRC).buffer;
    let valid = DeviceInputs {
        logits: logits.slice(..48),
        logit_type: LogitType::F32,
        targets: targets.slice(..32),
        target_type: TargetType::I64,
        shape,
        gradient: GradientOutput::Skip,
        upstream: UpstreamGradient::ONE,
    };
    assert_eq!(record(context, &valid, Reduction::Mean), Ok(()));
    let cases: Vec<(DeviceInputs<'_>, Reduction, Error)> = vec![
        (
            DeviceInputs {
                logits: logits.slice(2..),
                ..valid
            },
            Reduction::Mean,
            Error::BufferAlignment {
                name: "logits",
                offset: 2,
                alignment: 4,
            },
        ),
        (
            DeviceInputs {
                targets: targets.slice(4..28),
                ..valid
            },
            Reduction::Mean,
            Error::BufferTooSmall {
                name: "targets",
                needed: 32,
                actual: 24,
            },
        ),
        (
            // 12 bf16 logits from byte 6: their last word ends at byte 32, past the 30-byte buffer.
            DeviceInputs {
                logits: bf16_logits.slice(6..30),
                logit_type: LogitType::Bf16,
                ..valid
            },
            Reduction::Mean,
            Error::BufferTooSmall {
                name: "logits",
                needed: 26,
                actual: 24,
            },
        ),
        (
            DeviceInputs {
                gradient: GradientOutput::Buffer(logits.slice(..)),
                ..valid
            },
            Reduction::Mean,
            Error::BufferAliasing {
                written: "gradient",
                read: "logits",
            },
        ),
        (
            DeviceInputs {
                gradient: GradientOutput::InPlace,
                upstream: upstream_values(logits.slice(..4)),
                ..valid
            },
            Reduction::Mean,
            Error::BufferAliasing {
                written: "logits",
                read: "upstream values",
            },
        ),
        (
            DeviceInputs {
                upstream: upstream_values(values.slice(..16)),
                ..valid
            },
            Reduction::Mean,
            Error::UpstreamLength { bytes: 16, per_row: 16 },
        ),
        (
            DeviceInputs {
                upstream: upstream_values(values.slice(..8)),
                ..valid
            },
            Reduction::None,
            Error::UpstreamLength { bytes: 8, per_row: 16 },
        ),
        (
            DeviceInputs {
                upstream: upstream_values(values.slice(2..6)),
                ..valid
            },
            Reduction::Mean,
            Error::BufferAlignment {
                name: "upstream values",
                offset: 2,
                alignment: 4,
            },
        ),
        (
            DeviceInputs {
                upstream: upstream_values(not_storage.slice(..4)),
                ..valid
            },
            Reduction::Sum,
            Error::BufferUsage {
                name: "upstream values",
                missing: wgpu::BufferUsages::STORAGE,
            },
        ),
    ];
    for (inputs, reduction, error) in cases {
        assert_eq!(record(context, &inputs, reduction), Err(error));
    }
    let per_row = DeviceInputs {
        upstream: upstream_values(values.slice(..16)),
        ..valid
    };
    assert_eq!(record(context, &per_row, Reduction::None), Ok(()));
}
