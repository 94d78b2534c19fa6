//! The upstream gradient of the BCE / KL / entropy / probability cross-entropy
//! family's device-resident door (`FamilyInputs::upstream`): for every loss and
//! reduction (mean, sum, none), a scale and upstream values (one for all, and
//! for `none` one per loss value: per element for BCE and KL, per row for
//! entropy and the probability cross-entropy) give the f64 reference gradient
//! times the upstream and leave the loss's bits unchanged, also when the call is
//! cut into chunks; the default keeps the plain call's bits; bad values are
//! typed errors.

mod common;

use common::family::{Data, KINDS, Kind};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;
use xent::reference::binary as binary_reference;
use xent::reference::divergence::{self as divergence_reference, RowTargets};
use xent::{
    BinaryCrossEntropyLoss, Context, DeviceOutputs, Entropy, Error, FamilyInputs, FamilyTargets, InputKind, KlDivLoss,
    KlReduction, LogitType, Logits, LogitsMut, Loss, ProbabilityCrossEntropyLoss, Reduction, Shape, Targets,
    UpstreamGradient,
};

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// One loss on one batch.
struct Case {
    kind: Kind,
    reduction: Reduction,
    shape: Shape,
    input: Vec<f32>,
    /// Per-element targets (BCE, KL, soft probability cross-entropy).
    soft: Vec<f32>,
    /// Class indices (probability cross-entropy on classes).
    classes: Vec<u32>,
}

impl Case {
    fn new(kind: Kind, reduction: Reduction, shape: Shape, seed: u64) -> Self {
        let Data { input, soft, classes } = Data::new(kind, shape, seed);
        Self {
            kind,
            reduction,
            shape,
            input,
            soft,
            classes,
        }
    }

    fn name(&self) -> String {
        format!(
            "{:?} {:?} {}x{}",
            self.kind, self.reduction, self.shape.rows, self.shape.classes
        )
    }

    fn elementwise(&self) -> bool {
        matches!(
            self.kind,
            Kind::BceLogits | Kind::BceProbabilities | Kind::Kl | Kind::KlLogTarget
        )
    }

    /// Loss values reduction `none` gives: per element (BCE, KL) or per row.
    fn unreduced_count(&self) -> usize {
        if self.elementwise() {
            self.shape.rows * self.shape.classes
        } else {
            self.shape.rows
        }
    }

    /// Values the outputs must hold: the unreduced losses for `none`, else one.
    fn output_count(&self) -> usize {
        if self.reduction == Reduction::None {
            self.unreduced_count()
        } else {
            1
        }
    }

    /// The factor of the reference gradient of the sum: 1/divisor for a mean
    /// (N·C for BCE and KL, N for the row losses), else 1.
    fn reduction_scale(&self) -> f64 {
        match self.reduction {
            Reduction::Mean if self.elementwise() => 1.0 / (self.shape.rows * self.shape.classes) as f64,
            Reduction::Mean => 1.0 / self.shape.rows as f64,
            _ => 1.0,
        }
    }

    /// The f64 reference: the unreduced losses and the gradient of their sum.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let (input, classes) = (&self.input, self.shape.classes);
        match self.kind {
            Kind::BceLogits => binary_reference::bce_with_logits_f64(input, &self.soft, classes, None, None, 0.0),
            Kind::BceProbabilities => binary_reference::bce_probs_f64(input, &self.soft, classes, None, 0.0),
            Kind::Kl | Kind::KlLogTarget => {
                divergence_reference::kl_div_f64(input, &self.soft, self.kind == Kind::KlLogTarget)
            }
            Kind::EntropyLogits | Kind::EntropyProbabilities => {
                divergence_reference::entropy_f64(input, classes, self.kind == Kind::EntropyLogits)
            }
            Kind::PceSoft => {
                divergence_reference::probability_cross_entropy_f64(input, RowTargets::Soft(&self.soft), classes)
            }
            Kind::PceClasses => {
                divergence_reference::probability_cross_entropy_f64(input, RowTargets::Classes(&self.classes), classes)
            }
        }
    }

    /// What the input is: probabilities or logits.
    fn input_kind(&self) -> InputKind {
        match self.kind {
            Kind::BceProbabilities | Kind::EntropyProbabilities => InputKind::Probabilities,
            _ => InputKind::Logits,
        }
    }

    fn bce(&self) -> BinaryCrossEntropyLoss {
        BinaryCrossEntropyLoss::new()
            .reduction(self.reduction)
            .input(self.input_kind())
    }

    fn kl(&self) -> KlDivLoss {
        KlDivLoss::new()
            .reduction(match self.reduction {
                Reduction::Mean => KlReduction::Mean,
                Reduction::Sum => KlReduction::Sum,
                Reduction::None => KlReduction::None,
            })
            .log_target(self.kind == Kind::KlLogTarget)
    }

    fn entropy(&self) -> Entropy {
        Entropy::new().reduction(self.reduction).input(self.input_kind())
    }

    fn pce(&self) -> ProbabilityCrossEntropyLoss {
        ProbabilityCrossEntropyLoss::new().reduction(self.reduction)
    }

    /// Records the loss on `inputs` into `outputs`.
    fn record(
        &self,
        context: &Context,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &FamilyInputs<'_>,
        outputs: &DeviceOutputs,
    ) -> xent::Result<()> {
        match self.kind {
            Kind::BceLogits | Kind::BceProbabilities => self.bce().record(context, encoder, inputs, outputs),
            Kind::Kl | Kind::KlLogTarget => self.kl().record(context, encoder, inputs, outputs),
            Kind::EntropyLogits | Kind::EntropyProbabilities => {
                self.entropy().record(context, encoder, inputs, outputs)
            }
            Kind::PceSoft | Kind::PceClasses => self.pce().record(context, encoder, inputs, outputs),
        }
    }

    /// The host call (which passes the default upstream gradient).
    fn host(&self, context: &Context, gradient: &mut [f32]) -> Loss {
        let (input, shape) = (Logits::F32(&self.input), self.shape);
        let gradient = LogitsMut::F32(gradient);
        let result = match self.kind {
            Kind::BceLogits | Kind::BceProbabilities => {
                self.bce().loss_and_grad(context, input, &self.soft, shape, gradient)
            }
            Kind::Kl | Kind::KlLogTarget => self.kl().loss_and_grad(context, input, &self.soft, shape, gradient),
            Kind::EntropyLogits | Kind::EntropyProbabilities => {
                self.entropy().loss_and_grad(context, input, shape, gradient)
            }
            Kind::PceSoft => {
                self.pce()
                    .loss_and_grad(context, input, Targets::Probabilities(&self.soft), shape, gradient)
            }
            Kind::PceClasses => self
                .pce()
                .loss_and_grad(context, input, Targets::U32(&self.classes), shape, gradient),
        };
        result.unwrap_or_else(|error| panic!("{}: host call: {error}", self.name()))
    }
}

fn storage(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test storage"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Copies the first `size` bytes of `buffer` back to the host.
fn read_floats(context: &Context, buffer: &wgpu::Buffer, size: u64) -> Vec<f32> {
    let staging = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = context.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    context.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| result.expect("mapped"));
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let floats = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().expect("mapped range")).to_vec();
    staging.unmap();
    floats
}

/// Bytes before the upstream values in their buffer: a multiple of 4 that is
/// not one of the storage offset alignment, behind NaN words.
const VALUES_LEAD: usize = 12;

/// A case's device buffers.
struct DeviceCase {
    input: wgpu::Buffer,
    targets: Option<wgpu::Buffer>,
    gradient: wgpu::Buffer,
    outputs: DeviceOutputs,
}

impl DeviceCase {
    fn new(context: &Context, case: &Case) -> Self {
        let targets = match case.kind {
            Kind::EntropyLogits | Kind::EntropyProbabilities => None,
            Kind::PceClasses => Some(storage(context, bytemuck::cast_slice(&case.classes))),
            _ => Some(storage(context, bytemuck::cast_slice(&case.soft))),
        };
        Self {
            input: storage(context, bytemuck::cast_slice(&case.input)),
            targets,
            gradient: storage(context, &vec![0u8; case.input.len() * 4]),
            outputs: DeviceOutputs::new(context, case.output_count()).expect("outputs"),
        }
    }

    fn inputs<'a>(&'a self, case: &Case, upstream: UpstreamGradient<'a>) -> FamilyInputs<'a> {
        let targets = match (&self.targets, case.kind) {
            (None, _) => FamilyTargets::None,
            (Some(buffer), Kind::PceClasses) => FamilyTargets::Classes(buffer.slice(..)),
            (Some(buffer), _) => FamilyTargets::PerElement(buffer.slice(..)),
        };
        FamilyInputs {
            input: self.input.slice(..),
            input_type: LogitType::F32,
            targets,
            shape: case.shape,
            gradient: Some(self.gradient.slice(..)),
            upstream,
        }
    }

    /// Records `case` with `upstream`, submits, and reads the loss and the gradient.
    fn run(&self, context: &Context, case: &Case, upstream: UpstreamGradient<'_>) -> (Loss, Vec<f32>) {
        let mut encoder = context.device().create_command_encoder(&Default::default());
        case.record(context, &mut encoder, &self.inputs(case, upstream), &self.outputs)
            .unwrap_or_else(|error| panic!("{}: record failed: {error}", case.name()));
        context.queue().submit([encoder.finish()]);
        let loss = self.outputs.read(context).expect("read");
        (loss, read_floats(context, &self.gradient, case.input.len() as u64 * 4))
    }
}

/// `values` at byte `VALUES_LEAD` of a buffer whose other words are NaN.
fn upstream_buffer(context: &Context, values: &[f32]) -> wgpu::Buffer {
    let mut words = vec![f32::NAN; VALUES_LEAD / 4];
    words.extend_from_slice(values);
    words.extend_from_slice(&[f32::NAN; 4]);
    storage(context, bytemuck::cast_slice(&words))
}

fn upstream_slice(buffer: &wgpu::Buffer, count: usize) -> wgpu::BufferSlice<'_> {
    buffer.slice(VALUES_LEAD as u64..(VALUES_LEAD + count * 4) as u64)
}

/// The upstream values a case is checked with: one for every loss value, and
/// for `none` one per loss value (of both signs, some zero).
fn upstream_choices(case: &Case, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut choices = vec![("one value", vec![-1.75f32])];
    if case.reduction == Reduction::None {
        let mut rng = StdRng::seed_from_u64(seed);
        let per_value = (0..case.unreduced_count())
            .map(|index| {
                if index % 7 == 3 {
                    0.0
                } else {
                    rng.random_range(-2.0f32..2.0)
                }
            })
            .collect();
        choices.push(("one value per loss value", per_value));
    }
    choices
}

/// Asserts `gradient` ≈ the reference gradient × the reduction's scale ×
/// `scale` × the upstream value of each entry's loss value, within 1e-5 of the
/// largest entry.
fn assert_upstream_gradient(case: &Case, gradient: &[f32], scale: f32, values: Option<&[f32]>, what: &str) {
    let (_, gradient_of_sum) = case.reference();
    let classes = case.shape.classes;
    let expected: Vec<f64> = gradient_of_sum
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            let u = match values {
                None => 1.0,
                Some([one]) => f64::from(*one),
                Some(per_value) if case.elementwise() => f64::from(per_value[index]),
                Some(per_row) => f64::from(per_row[index / classes]),
            };
            value * case.reduction_scale() * f64::from(scale) * u
        })
        .collect();
    let largest = expected.iter().fold(0.0f64, |largest, value| largest.max(value.abs()));
    assert!(largest > 0.0, "{what}: a gradient to compare");
    for (index, (&actual, &wanted)) in gradient.iter().zip(&expected).enumerate() {
        let error = (f64::from(actual) - wanted).abs();
        assert!(
            error <= 1e-5 * largest,
            "{what}: gradient[{index}] = {actual} vs reference {wanted}"
        );
    }
}

/// Checks every loss and reduction on `context` at `shape`: the default call
/// against the reference and the host call's bits, then each scale and values
/// against the reference times the upstream, with the default call's loss bits.
fn check_upstream_gradients(context: &Context, shape: Shape) {
    for (seed, kind) in (0u64..).zip(KINDS) {
        for reduction in REDUCTIONS {
            let case = Case::new(kind, reduction, shape, seed);
            let device = DeviceCase::new(context, &case);
            let (plain_loss, plain_gradient) = device.run(context, &case, UpstreamGradient::ONE);
            let what = case.name();
            assert_upstream_gradient(&case, &plain_gradient, 1.0, None, &format!("{what}, default"));
            let mut host_gradient = vec![0.0f32; case.input.len()];
            let host_loss = case.host(context, &mut host_gradient);
            assert_eq!(
                common::loss_bits(&plain_loss),
                common::loss_bits(&host_loss),
                "{what}: the host call's loss"
            );
            assert_eq!(plain_gradient, host_gradient, "{what}: the host call's gradient");

            let scaled = UpstreamGradient {
                scale: 0.375,
                values: None,
            };
            let (loss, gradient) = device.run(context, &case, scaled);
            assert_eq!(
                common::loss_bits(&loss),
                common::loss_bits(&plain_loss),
                "{what}, scale: the loss"
            );
            assert_upstream_gradient(&case, &gradient, 0.375, None, &format!("{what}, scale"));
            for (which, values) in upstream_choices(&case, seed + 100) {
                let buffer = upstream_buffer(context, &values);
                let upstream = UpstreamGradient {
                    scale: -0.5,
                    values: Some(upstream_slice(&buffer, values.len())),
                };
                let what = format!("{what}, scale and {which}");
                let (loss, gradient) = device.run(context, &case, upstream);
                assert_eq!(
                    common::loss_bits(&loss),
                    common::loss_bits(&plain_loss),
                    "{what}: the loss"
                );
                assert_upstream_gradient(&case, &gradient, -0.5, Some(&values), &what);
            }
        }
    }
}

/// Every loss and reduction, on a batch of one chunk.
#[test]
fn upstream_gradients_multiply_the_reference_gradient() {
    let Some(context) = common::gpu() else {
        return;
    };
    check_upstream_gradients(context, Shape::new(37, 29));
}

/// The same, on a batch the chunking context cuts into several chunks (each
/// reads its own window of the per-value upstream values).
#[test]
fn chunked_calls_read_each_chunks_upstream_values() {
    let Some(context) = common::gpu_chunked() else {
        return;
    };
    let shape = Shape::new(300, 2500);
    assert!(
        shape.rows * shape.classes * 4 > common::SMALL_BINDING as usize,
        "more than one chunk"
    );
    check_upstream_gradients(context, shape);
}

/// Upstream values of 1 (one, or one per loss value) and a scale of 1 give the
/// default call's bits: the values' pipeline multiplies by exactly 1.
#[test]
fn unit_upstream_values_keep_the_default_bits() {
    let Some(context) = common::gpu() else {
        return;
    };
    for (seed, kind) in (20u64..).zip(KINDS) {
        for reduction in REDUCTIONS {
            let case = Case::new(kind, reduction, Shape::new(19, 67), seed);
            let device = DeviceCase::new(context, &case);
            let plain = device.run(context, &case, UpstreamGradient::default());
            let counts = if reduction == Reduction::None {
                vec![1, case.unreduced_count()]
            } else {
                vec![1]
            };
            for count in counts {
                let buffer = upstream_buffer(context, &vec![1.0; count]);
                let upstream = UpstreamGradient {
                    scale: 1.0,
                    values: Some(upstream_slice(&buffer, count)),
                };
                let (loss, gradient) = device.run(context, &case, upstream);
                let what = format!("{}, {count} unit values", case.name());
                assert_eq!(
                    common::loss_bits(&loss),
                    common::loss_bits(&plain.0),
                    "{what}: the loss"
                );
                let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&gradient), bits(&plain.1), "{what}: the gradient");
            }
        }
    }
}

/// Upstream values of the wrong length, misaligned, without `STORAGE` usage, or
/// in the gradient's buffer are typed errors.
#[test]
fn bad_upstream_values_are_typed_errors() {
    let Some(context) = common::gpu() else {
        return;
    };
    let shape = Shape::new(4, 8);
    let values = upstream_buffer(context, &[0.5; 64]);
    for kind in KINDS {
        for reduction in REDUCTIONS {
            let case = Case::new(kind, reduction, shape, 7);
            let device = DeviceCase::new(context, &case);
            let record = |count: usize| {
                let upstream = UpstreamGradient {
                    scale: 1.0,
                    values: Some(upstream_slice(&values, count)),
                };
                let mut encoder = context.device().create_command_encoder(&Default::default());
                case.record(context, &mut encoder, &device.inputs(&case, upstream), &device.outputs)
            };
            let what = case.name();
            let per_value = case.unreduced_count() as u64 * 4;
            let length_error = |count: usize| {
                Err(Error::UpstreamLength {
                    bytes: count as u64 * 4,
                    per_row: per_value,
                })
            };
            assert_eq!(record(1), Ok(()), "{what}: one value");
            // Per element where the losses are per row, per row where they are per element.
            let other_count = if case.elementwise() {
                shape.rows
            } else {
                shape.rows * shape.classes
            };
            assert_eq!(
                record(other_count),
                length_error(other_count),
                "{what}: {other_count} values"
            );
            assert_eq!(record(2), length_error(2), "{what}: 2 values");
            let per_value_result = record(case.unreduced_count());
            if reduction == Reduction::None {
                assert_eq!(per_value_result, Ok(()), "{what}: one per loss value");
            } else {
                assert_eq!(
                    per_value_result,
                    length_error(case.unreduced_count()),
                    "{what}: per value, reduced"
                );
            }
        }
    }
    let case = Case::new(Kind::Kl, Reduction::None, shape, 8);
    let device = DeviceCase::new(context, &case);
    let record = |upstream: UpstreamGradient<'_>, gradient: Option<wgpu::BufferSlice<'_>>| {
        let inputs = FamilyInputs {
            gradient,
            ..device.inputs(&case, upstream)
        };
        let mut encoder = context.device().create_command_encoder(&Default::default());
        case.record(context, &mut encoder, &inputs, &device.outputs)
    };
    let with_values = |slice| UpstreamGradient {
        scale: 1.0,
        values: Some(slice),
    };
    let gradient = Some(device.gradient.slice(..));
    assert_eq!(
        record(with_values(values.slice(2..6)), gradient),
        Err(Error::BufferAlignment {
            name: "upstream values",
            offset: 2,
            alignment: 4
        })
    );
    let not_storage = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    assert_eq!(
        record(with_values(not_storage.slice(..4)), gradient),
        Err(Error::BufferUsage {
            name: "upstream values",
            missing: wgpu::BufferUsages::STORAGE
        })
    );
    let in_gradient = with_values(device.gradient.slice(..4));
    assert_eq!(
        record(in_gradient, gradient),
        Err(Error::BufferAliasing {
            written: "gradient",
            read: "upstream values"
        })
    );
    assert_eq!(
        record(in_gradient, None),
        Ok(()),
        "no gradient written: nothing aliases"
    );
    // The gradient in the buffer of an input or of the targets: a typed error
    // before anything is recorded, not a wgpu usage conflict.
    let plain = UpstreamGradient::default();
    assert_eq!(
        record(plain, Some(device.input.slice(..))),
        Err(Error::BufferAliasing {
            written: "gradient",
            read: "input"
        })
    );
    let targets = device.targets.as_ref().expect("KL has targets");
    assert_eq!(
        record(plain, Some(targets.slice(..))),
        Err(Error::BufferAliasing {
            written: "gradient",
            read: "targets"
        })
    );
}
