//! The BCE / KL / entropy / probability cross-entropy family's host door and
//! its uploads: repeated host calls (f32, and bf16 of an odd element count)
//! alternating two data sets give the device-resident `record` call's bits on
//! the same data and the f64 reference's values, allocate nothing after the
//! first call of a shape, and give the same bits again after
//! `release_buffers`; an ignored timing of host calls at 4096 × 32000.

mod common;

use std::time::Instant;

use xent::half::bf16;
use xent::reference::binary::bce_with_logits_f64;
use xent::reference::divergence::{RowTargets, entropy_f64, kl_div_f64, probability_cross_entropy_f64};
use xent::{
    BinaryCrossEntropyLoss, Context, ContextOptions, DeviceOutputs, Entropy, FamilyInputs, FamilyTargets, InputKind,
    KlDivLoss, KlReduction, LogitType, Logits, LogitsMut, Loss, ProbabilityCrossEntropyLoss, Reduction, Shape, Targets,
    UpstreamGradient,
};

use common::{decoded, encoded, read_buffer, storage_buffer};

/// One loss of each target layout: per element (BCE, KL), none (entropy), a
/// class per row (probability cross-entropy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bce,
    Kl,
    Entropy,
    ProbabilityCrossEntropy,
}

const KINDS: [Kind; 4] = [Kind::Bce, Kind::Kl, Kind::Entropy, Kind::ProbabilityCrossEntropy];

/// 37 × 29 = 1073 elements: a bf16 input ends in half a word.
const SHAPE: Shape = Shape {
    rows: 37,
    classes: 29,
    spatial: 1,
};

/// One data set of a loss: the input in its type's bytes (and the values they
/// hold), per-element targets and class targets.
struct DataSet {
    kind: Kind,
    input_type: LogitType,
    shape: Shape,
    reduced: bool,
    bytes: Vec<u8>,
    input: Vec<f32>,
    soft: Vec<f32>,
    classes: Vec<u32>,
}

/// A call's loss and the gradient's bytes (the input's type).
type Output = (Loss, Vec<u8>);

impl DataSet {
    fn new(kind: Kind, input_type: LogitType, shape: Shape, reduced: bool, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let elements = shape.rows * shape.classes;
        let mut uniform =
            |low: f32, high: f32| -> Vec<f32> { (0..elements).map(|_| rng.random_range(low..high)).collect() };
        let (values, soft) = match kind {
            Kind::Bce | Kind::Entropy => (uniform(-6.0, 6.0), uniform(0.0, 1.0)),
            Kind::Kl => (uniform(-5.0, -0.1), uniform(0.0, 1.0)),
            Kind::ProbabilityCrossEntropy => (uniform(0.001, 1.0), Vec::new()),
        };
        let classes = (0..shape.rows)
            .map(|_| rng.random_range(0..shape.classes as u32))
            .collect();
        let (bytes, input) = encoded(&values, input_type);
        Self {
            kind,
            input_type,
            shape,
            reduced,
            bytes,
            input,
            soft,
            classes,
        }
    }

    fn name(&self) -> String {
        let reduction = if self.reduced { "reduced" } else { "none" };
        format!("{:?} {:?} {reduction}", self.kind, self.input_type)
    }

    fn reduction(&self) -> Reduction {
        if self.reduced { Reduction::Mean } else { Reduction::None }
    }

    fn bce(&self) -> BinaryCrossEntropyLoss {
        BinaryCrossEntropyLoss::new().reduction(self.reduction())
    }

    fn kl(&self) -> KlDivLoss {
        KlDivLoss::new().reduction(if self.reduced {
            KlReduction::BatchMean
        } else {
            KlReduction::None
        })
    }

    fn entropy(&self) -> Entropy {
        Entropy::new().input(InputKind::Logits).reduction(self.reduction())
    }

    fn probability_cross_entropy(&self) -> ProbabilityCrossEntropyLoss {
        ProbabilityCrossEntropyLoss::new().reduction(self.reduction())
    }

    /// The host door with `input` and, when given, its gradient.
    fn host(&self, context: &Context, input: Logits<'_>, gradient: Option<LogitsMut<'_>>) -> xent::Result<Loss> {
        let (shape, soft) = (self.shape, &self.soft[..]);
        let classes = Targets::U32(&self.classes);
        match (self.kind, gradient) {
            (Kind::Bce, None) => self.bce().loss(context, input, soft, shape),
            (Kind::Bce, Some(gradient)) => self.bce().loss_and_grad(context, input, soft, shape, gradient),
            (Kind::Kl, None) => self.kl().loss(context, input, soft, shape),
            (Kind::Kl, Some(gradient)) => self.kl().loss_and_grad(context, input, soft, shape, gradient),
            (Kind::Entropy, None) => self.entropy().loss(context, input, shape),
            (Kind::Entropy, Some(gradient)) => self.entropy().loss_and_grad(context, input, shape, gradient),
            (Kind::ProbabilityCrossEntropy, None) => {
                self.probability_cross_entropy().loss(context, input, classes, shape)
            }
            (Kind::ProbabilityCrossEntropy, Some(gradient)) => self
                .probability_cross_entropy()
                .loss_and_grad(context, input, classes, shape, gradient),
        }
    }

    /// The host door with a gradient, the input and gradient as `T` (f32 or bf16).
    fn host_typed<T>(&self, context: &Context) -> Output
    where
        T: bytemuck::Pod,
        for<'a> &'a [T]: Into<Logits<'a>>,
        for<'a> &'a mut [T]: Into<LogitsMut<'a>>,
    {
        let input: Vec<T> = bytemuck::pod_collect_to_vec(&self.bytes);
        let mut gradient = vec![T::zeroed(); input.len()];
        let loss = self
            .host(context, (&input[..]).into(), Some((&mut gradient[..]).into()))
            .unwrap_or_else(|error| panic!("{}: host call failed: {error}", self.name()));
        (loss, bytemuck::cast_slice(&gradient).to_vec())
    }

    /// The host door with a gradient.
    fn host_call(&self, context: &Context) -> Output {
        match self.input_type {
            LogitType::Bf16 => self.host_typed::<bf16>(context),
            _ => self.host_typed::<f32>(context),
        }
    }

    /// The device-resident door on buffers of the test's own.
    fn record_call(&self, context: &Context) -> Output {
        let mut padded = self.bytes.clone();
        padded.resize(self.bytes.len().div_ceil(4) * 4, 0);
        let input = storage_buffer(context, &padded);
        let gradient = context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("test gradient"),
            size: padded.len() as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let soft = storage_buffer(context, bytemuck::cast_slice(&self.soft));
        let classes = storage_buffer(context, bytemuck::cast_slice(&self.classes));
        let targets = match self.kind {
            Kind::Bce | Kind::Kl => FamilyTargets::PerElement(soft.slice(..)),
            Kind::Entropy => FamilyTargets::None,
            Kind::ProbabilityCrossEntropy => FamilyTargets::Classes(classes.slice(..)),
        };
        let inputs = FamilyInputs {
            input: input.slice(..),
            input_type: self.input_type,
            targets,
            shape: self.shape,
            gradient: Some(gradient.slice(..)),
            upstream: UpstreamGradient::ONE,
        };
        let outputs = DeviceOutputs::new(context, self.shape.rows * self.shape.classes).expect("outputs");
        let mut encoder = context.device().create_command_encoder(&Default::default());
        let recorded = match self.kind {
            Kind::Bce => self.bce().record(context, &mut encoder, &inputs, &outputs),
            Kind::Kl => self.kl().record(context, &mut encoder, &inputs, &outputs),
            Kind::Entropy => self.entropy().record(context, &mut encoder, &inputs, &outputs),
            Kind::ProbabilityCrossEntropy => {
                self.probability_cross_entropy()
                    .record(context, &mut encoder, &inputs, &outputs)
            }
        };
        recorded.unwrap_or_else(|error| panic!("{}: record failed: {error}", self.name()));
        context.queue().submit([encoder.finish()]);
        let loss = outputs.read(context).expect("read");
        let mut gradient = read_buffer(context, &gradient);
        gradient.truncate(self.bytes.len());
        (loss, gradient)
    }

    /// The f64 reference on the input's values: the losses (per element or row)
    /// and the gradient of their sum, and the reduction's divisor.
    fn reference(&self) -> (Vec<f64>, Vec<f64>, f64) {
        let (rows, classes) = (self.shape.rows, self.shape.classes);
        let (losses, gradient) = match self.kind {
            Kind::Bce => bce_with_logits_f64(&self.input, &self.soft, classes, None, None, 0.0),
            Kind::Kl => kl_div_f64(&self.input, &self.soft, false),
            Kind::Entropy => entropy_f64(&self.input, classes, true),
            Kind::ProbabilityCrossEntropy => {
                probability_cross_entropy_f64(&self.input, RowTargets::Classes(&self.classes), classes)
            }
        };
        let divisor = if self.kind == Kind::Bce { rows * classes } else { rows };
        (losses, gradient, divisor as f64)
    }

    /// `output` against the reference: the loss within 1e-5 relative, the
    /// gradient within its type's rounding relative to its largest entry.
    fn assert_matches_reference(&self, (loss, gradient): &Output, what: &str) {
        let (losses, gradient_of_sum, divisor) = self.reference();
        let scale = if self.reduced { 1.0 / divisor } else { 1.0 };
        match loss {
            Loss::Reduced(value) if self.reduced => {
                common::assert_loss(*value, losses.iter().sum::<f64>() * scale, what);
            }
            Loss::PerRow(values) if !self.reduced => common::assert_row_losses(values, &losses, what),
            _ => panic!("{what}: {loss:?} has the wrong reduction"),
        }
        let rounding = if self.input_type == LogitType::Bf16 {
            1.0 / 256.0
        } else {
            0.0
        };
        let largest = gradient_of_sum
            .iter()
            .fold(0.0f64, |largest, value| largest.max(value.abs()))
            * scale;
        let actual = decoded(gradient, self.input_type);
        assert_eq!(actual.len(), gradient_of_sum.len(), "{what}: gradient length");
        for (index, (&actual, &wanted)) in actual.iter().zip(&gradient_of_sum).enumerate() {
            let error = (f64::from(actual) - wanted * scale).abs();
            assert!(
                error <= (rounding + 1e-5) * largest + 1e-30,
                "{what}: gradient[{index}] = {actual} vs reference {}",
                wanted * scale
            );
        }
    }
}

/// The same loss bits and gradient bytes.
fn assert_same_bits(left: &Output, right: &Output, what: &str) {
    assert_eq!(common::loss_bits(&left.0), common::loss_bits(&right.0), "{what}: loss");
    assert!(left.1 == right.1, "{what}: gradient bytes differ");
}

/// A context of its own: the workspace's size is per context, and the tests of
/// this binary run side by side.
fn context() -> Option<Context> {
    common::open(ContextOptions::default())
}

/// Two data sets of each loss, input type and reduction, called in turn through
/// the host door four times: every call the recorded call's bits on its data
/// and the reference's values (a stale or partial upload would give the other
/// set's), nothing allocated after the first call of the shape, and after
/// `release_buffers` the same bits again.
#[test]
fn alternating_host_calls_give_the_recorded_bits_and_allocate_nothing() {
    let Some(context) = context() else {
        return;
    };
    for (seed, kind) in (0u64..).step_by(2).zip(KINDS) {
        for input_type in [LogitType::F32, LogitType::Bf16] {
            for reduced in [false, true] {
                let sets = [seed, seed + 1].map(|seed| DataSet::new(kind, input_type, SHAPE, reduced, seed));
                let recorded = sets.each_ref().map(|set| set.record_call(&context));
                let mut held = None;
                for call in 0..4 {
                    let (set, recorded) = (&sets[call % 2], &recorded[call % 2]);
                    let what = format!("{} call {call}", set.name());
                    let output = set.host_call(&context);
                    set.assert_matches_reference(&output, &what);
                    assert_same_bits(&output, recorded, &what);
                    let bytes = *held.get_or_insert(context.workspace_bytes());
                    assert_eq!(context.workspace_bytes(), bytes, "{what}: allocated again");
                }
                context.release_buffers();
                assert_eq!(context.workspace_bytes(), 0, "released");
                let what = format!("{} after release", sets[1].name());
                assert_same_bits(&sets[1].host_call(&context), &recorded[1], &what);
            }
        }
    }
}

/// A loss-only call between calls with a gradient, and a larger shape after a
/// smaller one then the smaller again (the upload buffers grow, then the larger
/// ones serve): every call the recorded call's bits.
#[test]
fn growing_shapes_and_loss_only_calls_give_the_recorded_bits() {
    let Some(context) = context() else {
        return;
    };
    let shapes = [SHAPE, Shape::new(64, 301), SHAPE];
    for (seed, kind) in (100u64..).zip(KINDS) {
        for (index, &shape) in shapes.iter().enumerate() {
            let set = DataSet::new(kind, LogitType::Bf16, shape, true, seed + index as u64);
            let what = format!("{} {}x{}", set.name(), shape.rows, shape.classes);
            let recorded = set.record_call(&context);
            let input: Vec<bf16> = bytemuck::pod_collect_to_vec(&set.bytes);
            let loss = set.host(&context, (&input[..]).into(), None).expect("loss-only call");
            assert_eq!(
                common::loss_bits(&loss),
                common::loss_bits(&recorded.0),
                "{what}: loss-only call"
            );
            assert_same_bits(&set.host_call(&context), &recorded, &what);
        }
    }
}

/// Host-to-host calls at 4096 × 32000 f32 (BCE and KL with a gradient, BCE and
/// entropy without), the median of 5 after a warm-up call. Run with
/// `cargo test --release --test family_host_transfers -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn host_call_timings() {
    let Some(context) = context() else {
        return;
    };
    let shape = Shape::new(4096, 32_000);
    for (kind, with_gradient) in [
        (Kind::Bce, true),
        (Kind::Bce, false),
        (Kind::Kl, true),
        (Kind::Entropy, false),
    ] {
        let set = DataSet::new(kind, LogitType::F32, shape, true, 7);
        let input: &[f32] = &set.input;
        let mut gradient = vec![0.0f32; input.len()];
        let mut times: Vec<f64> = (0..6)
            .map(|_| {
                let start = Instant::now();
                let gradient = with_gradient.then_some((&mut gradient[..]).into());
                set.host(&context, input.into(), gradient).expect("host call");
                start.elapsed().as_secs_f64() * 1e3
            })
            .skip(1)
            .collect();
        times.sort_by(f64::total_cmp);
        let what = if with_gradient { "loss and gradient" } else { "loss" };
        println!(
            "{kind:?} {what} 4096x32000 f32: median {:.0} ms (of {:?})",
            times[times.len() / 2],
            times.iter().map(|time| time.round()).collect::<Vec<_>>()
        );
    }
}
