//! The BCE / KL / entropy / probability cross-entropy family's device-resident
//! door (`record` on `FamilyInputs` of buffer slices, results in a
//! `DeviceOutputs`) and its 16-bit inputs: the recorded call matches the f64
//! references and gives the host call's bits (both go through one recording),
//! slices bind at their aligned offsets, repeated records give identical bits,
//! every bad buffer is a typed error, and f16 / bf16 inputs match the references
//! evaluated on the rounded inputs on every backend, the gradient in the input's type.

mod common;

use common::family::{Data, KINDS, Kind};

use wgpu::util::DeviceExt;
use xent::half::{bf16, f16};
use xent::reference::binary as binary_reference;
use xent::reference::divergence::{self as divergence_reference, RowTargets};
use xent::{
    Backend, BinaryCrossEntropyLoss, Context, Cpu, DeviceOutputs, Entropy, Error, FamilyInputs, FamilyTargets,
    InputKind, KlDivLoss, KlReduction, LogitType, Logits, LogitsMut, Loss, ProbabilityCrossEntropyLoss, Reduction,
    Shape, Targets, UpstreamGradient,
};

/// One call: a loss, its inputs and targets, the shape and whether it is reduced.
struct Case {
    kind: Kind,
    shape: Shape,
    /// Reduced (`mean`; KL `batchmean`) or `none`.
    reduced: bool,
    input: Vec<f32>,
    /// Per-element targets (BCE, KL, soft probability cross-entropy).
    soft: Vec<f32>,
    /// Class indices (probability cross-entropy on classes).
    classes: Vec<u32>,
}

impl Case {
    fn new(kind: Kind, shape: Shape, reduced: bool, seed: u64) -> Self {
        let Data { input, soft, classes } = Data::new(kind, shape, seed);
        Self {
            kind,
            shape,
            reduced,
            input,
            soft,
            classes,
        }
    }

    fn name(&self) -> String {
        format!(
            "{:?} {}x{} {}",
            self.kind,
            self.shape.rows,
            self.shape.classes,
            if self.reduced { "reduced" } else { "none" }
        )
    }

    fn reduction(&self) -> Reduction {
        if self.reduced { Reduction::Mean } else { Reduction::None }
    }

    fn weights(&self) -> Vec<f32> {
        (0..self.shape.classes).map(|class| 0.5 + class as f32 / 8.0).collect()
    }

    fn bce(&self) -> BinaryCrossEntropyLoss {
        let loss = BinaryCrossEntropyLoss::new()
            .reduction(self.reduction())
            .weight(self.weights())
            .label_smoothing(0.1);
        match self.kind {
            Kind::BceProbabilities => loss.input(InputKind::Probabilities),
            _ => loss.pos_weight(vec![1.5; self.shape.classes]),
        }
    }

    fn kl(&self) -> KlDivLoss {
        let reduction = if self.reduced {
            KlReduction::BatchMean
        } else {
            KlReduction::None
        };
        KlDivLoss::new()
            .reduction(reduction)
            .log_target(self.kind == Kind::KlLogTarget)
    }

    fn entropy(&self) -> Entropy {
        let input = if self.kind == Kind::EntropyLogits {
            InputKind::Logits
        } else {
            InputKind::Probabilities
        };
        Entropy::new().input(input).reduction(self.reduction())
    }

    fn pce(&self) -> ProbabilityCrossEntropyLoss {
        ProbabilityCrossEntropyLoss::new().reduction(self.reduction())
    }

    fn host_targets(&self) -> Targets<'_> {
        match self.kind {
            Kind::PceClasses => Targets::U32(&self.classes),
            _ => Targets::Probabilities(&self.soft),
        }
    }

    /// The host call on `backend` with `input` (of any type) and its gradient.
    fn host(&self, backend: &dyn Backend, input: Logits<'_>, gradient: LogitsMut<'_>) -> xent::Result<Loss> {
        let shape = self.shape;
        match self.kind {
            Kind::BceLogits | Kind::BceProbabilities => {
                self.bce().loss_and_grad(backend, input, &self.soft, shape, gradient)
            }
            Kind::Kl | Kind::KlLogTarget => self.kl().loss_and_grad(backend, input, &self.soft, shape, gradient),
            Kind::EntropyProbabilities | Kind::EntropyLogits => {
                self.entropy().loss_and_grad(backend, input, shape, gradient)
            }
            Kind::PceSoft | Kind::PceClasses => {
                self.pce()
                    .loss_and_grad(backend, input, self.host_targets(), shape, gradient)
            }
        }
    }

    /// The recorded call on `inputs`.
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
            Kind::EntropyProbabilities | Kind::EntropyLogits => {
                self.entropy().record(context, encoder, inputs, outputs)
            }
            Kind::PceSoft | Kind::PceClasses => self.pce().record(context, encoder, inputs, outputs),
        }
    }

    /// Losses a `none` reduction gives: per element (BCE, KL) or per row.
    fn value_count(&self) -> usize {
        match self.kind {
            Kind::BceLogits | Kind::BceProbabilities | Kind::Kl | Kind::KlLogTarget => {
                self.shape.rows * self.shape.classes
            }
            _ => self.shape.rows,
        }
    }

    /// The reduction's divisor: N·C for the BCE mean, N for the others.
    fn divisor(&self) -> f64 {
        match self.kind {
            Kind::BceLogits | Kind::BceProbabilities => (self.shape.rows * self.shape.classes) as f64,
            _ => self.shape.rows as f64,
        }
    }

    /// The f64 reference at `input`: the losses (per element or row) and the gradient of their sum.
    fn reference(&self, input: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let classes = self.shape.classes;
        let weights = self.weights();
        let pos_weight = vec![1.5; classes];
        match self.kind {
            Kind::BceLogits => binary_reference::bce_with_logits_f64(
                input,
                &self.soft,
                classes,
                Some(&weights),
                Some(&pos_weight),
                0.1,
            ),
            Kind::BceProbabilities => binary_reference::bce_probs_f64(input, &self.soft, classes, Some(&weights), 0.1),
            Kind::Kl | Kind::KlLogTarget => {
                divergence_reference::kl_div_f64(input, &self.soft, self.kind == Kind::KlLogTarget)
            }
            Kind::EntropyProbabilities | Kind::EntropyLogits => {
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

    /// Checks `loss` and `gradient` against the reference at `input`, the
    /// gradient within `gradient_tolerance` relative to its largest entry.
    fn assert_matches_reference(
        &self,
        input: &[f32],
        loss: &Loss,
        gradient: &[f32],
        gradient_tolerance: f64,
        what: &str,
    ) {
        let (losses, gradient_of_sum) = self.reference(input);
        let scale = if self.reduced { 1.0 / self.divisor() } else { 1.0 };
        match loss {
            Loss::Reduced(value) => {
                assert!(self.reduced, "{what}: reduced");
                common::assert_loss(*value, losses.iter().sum::<f64>() * scale, what);
            }
            Loss::PerRow(values) => {
                assert!(!self.reduced, "{what}: per value");
                common::assert_row_losses(values, &losses, what);
            }
        }
        let expected: Vec<f64> = gradient_of_sum.iter().map(|value| value * scale).collect();
        let largest = expected.iter().fold(0.0f64, |largest, value| largest.max(value.abs()));
        for (index, (&actual, &wanted)) in gradient.iter().zip(&expected).enumerate() {
            let error = (f64::from(actual) - wanted).abs();
            assert!(
                error <= gradient_tolerance * largest + 1e-30,
                "{what}: gradient[{index}] = {actual} vs reference {wanted}"
            );
        }
    }
}

fn storage(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test storage"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// `bytes` placed `offset` bytes into a buffer whose other bytes are 0xff (NaN as f32).
fn storage_at(context: &Context, bytes: &[u8], offset: usize) -> wgpu::Buffer {
    let mut contents = vec![0xffu8; offset + bytes.len().div_ceil(4) * 4 + 256];
    contents[offset..offset + bytes.len()].copy_from_slice(bytes);
    storage(context, &contents)
}

/// Copies `size` bytes at `offset` of `buffer` back to the host.
fn read_bytes(context: &Context, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Vec<u8> {
    let staging = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = context.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    context.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| result.expect("mapped"));
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let bytes = staging.slice(..).get_mapped_range().expect("mapped range").to_vec();
    staging.unmap();
    bytes
}

/// Device buffers of a case's inputs (f32), each `offset` bytes into its buffer.
struct DeviceCase {
    input: wgpu::Buffer,
    targets: Option<wgpu::Buffer>,
    gradient: wgpu::Buffer,
    offset: u64,
    bytes: u64,
}

impl DeviceCase {
    fn new(context: &Context, case: &Case, input_bytes: &[u8], offset: usize) -> Self {
        let targets = match case.kind {
            Kind::EntropyProbabilities | Kind::EntropyLogits => None,
            Kind::PceClasses => Some(storage_at(context, bytemuck::cast_slice(&case.classes), offset)),
            _ => Some(storage_at(context, bytemuck::cast_slice(&case.soft), offset)),
        };
        let bytes = (input_bytes.len() as u64).div_ceil(4) * 4;
        Self {
            input: storage_at(context, input_bytes, offset),
            targets,
            gradient: storage_at(context, &vec![0u8; input_bytes.len()], offset),
            offset: offset as u64,
            bytes,
        }
    }

    fn inputs(&self, case: &Case, input_type: LogitType) -> FamilyInputs<'_> {
        let range = self.offset..self.offset + self.bytes;
        let targets = match (&self.targets, case.kind) {
            (None, _) => FamilyTargets::None,
            (Some(buffer), Kind::PceClasses) => FamilyTargets::Classes(buffer.slice(self.offset..)),
            (Some(buffer), _) => FamilyTargets::PerElement(buffer.slice(self.offset..)),
        };
        FamilyInputs {
            input: self.input.slice(range.clone()),
            input_type,
            targets,
            shape: case.shape,
            gradient: Some(self.gradient.slice(range)),
            upstream: UpstreamGradient::ONE,
        }
    }

    /// Records `case` on these buffers into `outputs`, submits, reads the loss and the gradient bytes.
    fn run(&self, context: &Context, case: &Case, input_type: LogitType, outputs: &DeviceOutputs) -> (Loss, Vec<u8>) {
        let mut encoder = context.device().create_command_encoder(&Default::default());
        case.record(context, &mut encoder, &self.inputs(case, input_type), outputs)
            .unwrap_or_else(|error| panic!("{}: record failed: {error}", case.name()));
        context.queue().submit([encoder.finish()]);
        let loss = outputs.read(context).expect("read");
        (loss, read_bytes(context, &self.gradient, self.offset, self.bytes))
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytemuck::cast_slice(bytes).to_vec()
}

/// Every loss, reduced and not, recorded on device buffers (at offset 0 and at
/// the device's storage offset alignment, behind NaN bytes): the f64 reference's
/// values, and the host call's bits.
#[test]
fn recorded_calls_match_the_reference_and_the_host_call() {
    let Some(context) = common::gpu() else {
        return;
    };
    let alignment = context.limits().min_storage_buffer_offset_alignment as usize;
    for (seed, kind) in (0u64..).zip(KINDS) {
        for reduced in [true, false] {
            let case = Case::new(kind, Shape::new(37, 29), reduced, seed);
            let what = case.name();
            let outputs = DeviceOutputs::new(context, case.value_count()).expect("outputs");
            let mut host_gradient = vec![0.0f32; case.input.len()];
            let host = case
                .host(context, Logits::F32(&case.input), LogitsMut::F32(&mut host_gradient))
                .expect("host call");
            for offset in [0, alignment] {
                let device = DeviceCase::new(context, &case, bytemuck::cast_slice(&case.input), offset);
                let (loss, gradient) = device.run(context, &case, LogitType::F32, &outputs);
                let what = format!("{what} at offset {offset}");
                case.assert_matches_reference(&case.input, &loss, &floats(&gradient), 1e-5, &what);
                assert_eq!(
                    common::loss_bits(&loss),
                    common::loss_bits(&host),
                    "{what}: the host call's loss"
                );
                assert_eq!(floats(&gradient), host_gradient, "{what}: the host call's gradient");
            }
        }
    }
}

/// Recording the same call again reuses the cached bind groups and parameters:
/// the same bits every time, and the host calls on top keep the workspace's size.
#[test]
fn repeated_records_give_identical_bits_and_allocate_nothing() {
    let Some(context) = common::open(xent::ContextOptions::default()) else {
        return;
    };
    for (seed, kind) in (10u64..).zip(KINDS) {
        let case = Case::new(kind, Shape::new(64, 300), false, seed);
        let outputs = DeviceOutputs::new(&context, case.value_count()).expect("outputs");
        let device = DeviceCase::new(&context, &case, bytemuck::cast_slice(&case.input), 0);
        let first = device.run(&context, &case, LogitType::F32, &outputs);
        let mut gradient = vec![0.0f32; case.input.len()];
        case.host(&context, Logits::F32(&case.input), LogitsMut::F32(&mut gradient))
            .expect("host call");
        let held = context.workspace_bytes();
        for _ in 0..3 {
            let again = device.run(&context, &case, LogitType::F32, &outputs);
            assert_eq!(
                common::loss_bits(&again.0),
                common::loss_bits(&first.0),
                "{:?}: loss",
                kind
            );
            assert_eq!(again.1, first.1, "{:?}: gradient", kind);
            case.host(&context, Logits::F32(&case.input), LogitsMut::F32(&mut gradient))
                .expect("host call");
            assert_eq!(context.workspace_bytes(), held, "{:?}: nothing allocated again", kind);
        }
    }
}

/// Bad device buffers come back as typed errors, before anything is recorded.
#[test]
fn bad_device_inputs_are_typed_errors() {
    let Some(context) = common::gpu() else {
        return;
    };
    let case = Case::new(Kind::Kl, Shape::new(4, 8), false, 3);
    let outputs = DeviceOutputs::new(context, case.value_count()).expect("outputs");
    let device = DeviceCase::new(context, &case, bytemuck::cast_slice(&case.input), 0);
    let record = |inputs: &FamilyInputs<'_>, outputs: &DeviceOutputs| {
        let mut encoder = context.device().create_command_encoder(&Default::default());
        case.record(context, &mut encoder, inputs, outputs)
    };
    let good = device.inputs(&case, LogitType::F32);
    assert!(record(&good, &outputs).is_ok());

    let short = FamilyInputs {
        input: device.input.slice(..64),
        ..good
    };
    assert_eq!(
        record(&short, &outputs),
        Err(Error::BufferTooSmall {
            name: "input",
            needed: 128,
            actual: 64
        })
    );
    let misaligned = FamilyInputs {
        input: device.input.slice(4..),
        ..good
    };
    let alignment = context.limits().min_storage_buffer_offset_alignment;
    assert_eq!(
        record(&misaligned, &outputs),
        Err(Error::BufferAlignment {
            name: "input",
            offset: 4,
            alignment: u64::from(alignment)
        })
    );
    let not_storage = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let gradient_not_storage = FamilyInputs {
        gradient: Some(not_storage.slice(..)),
        ..good
    };
    assert_eq!(
        record(&gradient_not_storage, &outputs),
        Err(Error::BufferUsage {
            name: "gradient",
            missing: wgpu::BufferUsages::STORAGE
        })
    );
    let few_outputs = DeviceOutputs::new(context, 4).expect("outputs");
    assert_eq!(
        record(&good, &few_outputs),
        Err(Error::BufferTooSmall {
            name: "outputs",
            needed: 128,
            actual: 16
        })
    );
    let no_targets = FamilyInputs {
        targets: FamilyTargets::None,
        ..good
    };
    assert!(matches!(record(&no_targets, &outputs), Err(Error::InvalidOption(_))));
    let n_d = FamilyInputs {
        shape: Shape::nd(2, 8, &[2]).expect("shape"),
        ..good
    };
    assert!(matches!(record(&n_d, &outputs), Err(Error::InvalidOption(_))));
    let mut encoder = context.device().create_command_encoder(&Default::default());
    let entropy_with_targets = Entropy::new().record(context, &mut encoder, &good, &outputs);
    assert!(matches!(entropy_with_targets, Err(Error::InvalidOption(_))));
}

/// On the device, a probability outside [0, 1] (BCELoss) and a class index
/// outside [0, C) (probability cross-entropy), which host calls reject, give NaN
/// rather than a number.
#[test]
fn unchecked_device_inputs_give_nan() {
    let Some(context) = common::gpu() else {
        return;
    };
    let mut bce = Case::new(Kind::BceProbabilities, Shape::new(2, 4), false, 5);
    bce.input[5] = 1.5;
    let mut pce = Case::new(Kind::PceClasses, Shape::new(3, 4), false, 6);
    pce.classes[1] = 4;
    for (case, bad) in [(&bce, 5), (&pce, 1)] {
        let outputs = DeviceOutputs::new(context, case.value_count()).expect("outputs");
        let device = DeviceCase::new(context, case, bytemuck::cast_slice(&case.input), 0);
        let (loss, _) = device.run(context, case, LogitType::F32, &outputs);
        let values = loss.per_row().expect("per value");
        for (index, value) in values.iter().enumerate() {
            assert_eq!(value.is_nan(), index == bad, "{}: value {index} = {value}", case.name());
        }
    }
}

/// The input rounded to `input_type` and widened back to f32, and its bytes.
fn rounded(input: &[f32], input_type: LogitType) -> (Vec<f32>, Vec<u8>) {
    match input_type {
        LogitType::F32 => (input.to_vec(), bytemuck::cast_slice(input).to_vec()),
        LogitType::F16 => {
            let values: Vec<f16> = input.iter().map(|&value| f16::from_f32(value)).collect();
            (
                values.iter().map(|value| value.to_f32()).collect(),
                bytemuck::cast_slice(&values).to_vec(),
            )
        }
        LogitType::Bf16 => {
            let values: Vec<bf16> = input.iter().map(|&value| bf16::from_f32(value)).collect();
            (
                values.iter().map(|value| value.to_f32()).collect(),
                bytemuck::cast_slice(&values).to_vec(),
            )
        }
    }
}

/// A host call on `bytes` of `T` (f16 or bf16), its gradient widened to f32.
fn host_typed<T>(case: &Case, backend: &dyn Backend, bytes: &[u8], zero: T) -> xent::Result<(Loss, Vec<f32>)>
where
    T: bytemuck::Pod,
    for<'a> &'a [T]: Into<Logits<'a>>,
    for<'a> &'a mut [T]: Into<LogitsMut<'a>>,
{
    let input: &[T] = bytemuck::cast_slice(bytes);
    let mut gradient = vec![zero; input.len()];
    let loss = case.host(backend, input.into(), (&mut gradient[..]).into())?;
    let wide = (&gradient[..]).into().to_f32().into_owned();
    Ok((loss, wide))
}

/// A host call on `bytes` of `input_type`, its gradient widened to f32.
fn host_bytes(
    case: &Case,
    backend: &dyn Backend,
    input_type: LogitType,
    bytes: &[u8],
) -> xent::Result<(Loss, Vec<f32>)> {
    match input_type {
        LogitType::F32 => host_typed(case, backend, bytes, 0.0f32),
        LogitType::F16 => host_typed(case, backend, bytes, f16::ZERO),
        LogitType::Bf16 => host_typed(case, backend, bytes, bf16::ZERO),
    }
}

/// The gradient bytes of a device call (`input_type`) widened to f32.
fn widen_bytes(bytes: &[u8], input_type: LogitType, count: usize) -> Vec<f32> {
    let logits = match input_type {
        LogitType::F32 => Logits::F32(&bytemuck::cast_slice(bytes)[..count]),
        LogitType::F16 => Logits::F16(&bytemuck::cast_slice(bytes)[..count]),
        LogitType::Bf16 => Logits::Bf16(&bytemuck::cast_slice(bytes)[..count]),
    };
    logits.to_f32().into_owned()
}

/// The gradient's tolerance relative to its largest entry: half an ulp of the
/// stored gradient (`input_type`), plus the f32 arithmetic's error.
fn gradient_tolerance(input_type: LogitType) -> f64 {
    let rounding = match input_type {
        LogitType::F32 => 0.0,
        LogitType::F16 => 1.0 / 2048.0,
        LogitType::Bf16 => 1.0 / 256.0,
    };
    rounding + 1e-5
}

/// f16 and bf16 inputs (odd element counts, so the last word is half used) on
/// the CPU, the GPU's host door and its device door: the f64 reference evaluated
/// on the rounded inputs, the gradient in the input's type (within its rounding);
/// the GPU's two doors give the same bits.
#[test]
fn half_precision_inputs_match_the_reference_on_the_rounded_values() {
    let gpu = common::gpu();
    for (seed, kind) in (20u64..).zip(KINDS) {
        for input_type in [LogitType::F16, LogitType::Bf16] {
            let case = Case::new(kind, Shape::new(9, 13), true, seed);
            let (widened, bytes) = rounded(&case.input, input_type);
            let tolerance = gradient_tolerance(input_type);
            let what = format!("{} {:?}", case.name(), input_type);
            let (loss, gradient) = host_bytes(&case, &Cpu, input_type, &bytes).expect("cpu");
            case.assert_matches_reference(&widened, &loss, &gradient, tolerance, &format!("{what} cpu"));
            let Some(context) = gpu else {
                continue;
            };
            let (host_loss, host_gradient) = host_bytes(&case, context, input_type, &bytes).expect("gpu host");
            case.assert_matches_reference(&widened, &host_loss, &host_gradient, tolerance, &format!("{what} gpu"));
            let outputs = DeviceOutputs::new(context, 1).expect("outputs");
            let device = DeviceCase::new(context, &case, &bytes, 0);
            let (device_loss, device_gradient) = device.run(context, &case, input_type, &outputs);
            assert_eq!(
                common::loss_bits(&device_loss),
                common::loss_bits(&host_loss),
                "{what}: device loss"
            );
            let device_gradient = widen_bytes(&device_gradient, input_type, case.input.len());
            assert_eq!(
                device_gradient.iter().map(|value| value.to_bits()).collect::<Vec<_>>(),
                host_gradient.iter().map(|value| value.to_bits()).collect::<Vec<_>>(),
                "{what}: device gradient"
            );
        }
    }
}

/// 16-bit inputs split into many chunks (bindings capped at 32 KiB: tiles of
/// 4096 elements, runs of 105 rows of 77 classes, so row chunks start inside a
/// word) give the unchunked context's bits.
#[test]
fn chunked_half_precision_calls_give_the_unchunked_bits() {
    let Some(whole) = common::gpu() else {
        return;
    };
    let chunked = chunked_context();
    for (seed, kind) in (40u64..).zip(KINDS) {
        for input_type in [LogitType::F16, LogitType::Bf16] {
            let case = Case::new(kind, Shape::new(300, 77), kind == Kind::Kl, seed);
            let (_, bytes) = rounded(&case.input, input_type);
            let what = format!("{} {input_type:?}", case.name());
            let (whole_loss, whole_gradient) = host_bytes(&case, whole, input_type, &bytes).expect("whole");
            let (chunked_loss, chunked_gradient) = host_bytes(&case, &chunked, input_type, &bytes).expect("chunked");
            assert_eq!(
                common::loss_bits(&chunked_loss),
                common::loss_bits(&whole_loss),
                "{what}: loss"
            );
            let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&chunked_gradient), bits(&whole_gradient), "{what}: gradient");
        }
    }
}

/// A context whose bindings are capped at 32 KiB: elementwise calls split into
/// one tile (4096 elements) per chunk, row calls into runs of whole rows that
/// start inside a 32-bit word when C is odd.
fn chunked_context() -> Context {
    Context::with_options(xent::ContextOptions {
        max_binding_size: Some(1 << 15),
        ..xent::ContextOptions::default()
    })
    .expect("a context on the adapter common::gpu found")
}

/// The gradient-word cases: odd C throughout (so 16-bit words straddle row
/// boundaries), odd element counts (the last word half outside the call), one
/// class per row (every 16-bit word straddles), 301 × 77 (six tiles, the last
/// one partial; with bindings capped at 32 KiB, one tile per chunk and row
/// chunks of 105 rows, the second starting inside a word), and rows for each of
/// the four row-kernel widths (4, 16, 64 and 256 invocations per row).
const WORD_SHAPES: [(usize, usize); 5] = [(9, 13), (33, 1), (301, 77), (7, 301), (5, 1001)];

const GRADIENT_DIGESTS: &str = "tests/fixtures/family_gradient_digests.txt";

/// FNV-1a over `bytes`.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The digests of [`GRADIENT_DIGESTS`] recorded for `adapter` (case → digest).
fn recorded_digests(adapter: &str) -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string(GRADIENT_DIGESTS).unwrap_or_default();
    let mut lines = text.lines().skip_while(|line| *line != adapter).skip(1);
    let mut digests = std::collections::BTreeMap::new();
    for line in lines.by_ref().take_while(|line| !line.starts_with("adapter ")) {
        let (name, value) = line.rsplit_once(' ').expect("a case and its digest");
        digests.insert(
            name.to_owned(),
            u64::from_str_radix(value, 16).expect("a hexadecimal digest"),
        );
    }
    digests
}

/// `case` in `input_type` on the host door of `context` and of `chunked`, and
/// on the device door at byte `offset` of buffers whose other bytes are 0xff:
/// the reference's values, the same bits everywhere, no byte outside the
/// gradient's elements changed. Returns the digest of the loss bits and the
/// gradient's bytes.
fn checked_gradient_digest(
    context: &Context,
    chunked: &Context,
    case: &Case,
    input_type: LogitType,
    offset: usize,
) -> u64 {
    let what = format!("{} {input_type:?}", case.name());
    let (widened, bytes) = rounded(&case.input, input_type);
    let (loss, gradient) = host_bytes(case, context, input_type, &bytes).expect("host");
    case.assert_matches_reference(&widened, &loss, &gradient, gradient_tolerance(input_type), &what);
    let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();

    let (chunked_loss, chunked_gradient) = host_bytes(case, chunked, input_type, &bytes).expect("chunked");
    assert_eq!(
        common::loss_bits(&chunked_loss),
        common::loss_bits(&loss),
        "{what}: chunked loss"
    );
    assert_eq!(bits(&chunked_gradient), bits(&gradient), "{what}: chunked gradient");

    let outputs = DeviceOutputs::new(context, case.value_count()).expect("outputs");
    let device = DeviceCase::new(context, case, &bytes, offset);
    let (device_loss, _) = device.run(context, case, input_type, &outputs);
    let whole = common::read_buffer(context, &device.gradient);
    let elements = offset..offset + bytes.len();
    let changed = whole
        .iter()
        .enumerate()
        .find(|&(index, &byte)| !elements.contains(&index) && byte != 0xff);
    assert_eq!(changed, None, "{what}: a byte outside the gradient's elements changed");
    let device_gradient = widen_bytes(&whole[elements.clone()], input_type, case.input.len());
    assert_eq!(
        common::loss_bits(&device_loss),
        common::loss_bits(&loss),
        "{what}: device loss"
    );
    assert_eq!(bits(&device_gradient), bits(&gradient), "{what}: device gradient");

    let loss_bytes = common::loss_bits(&loss).into_iter().flat_map(u32::to_le_bytes);
    fnv1a(loss_bytes.chain(whole[elements].iter().copied()))
}

/// Gradients of every kind and input type, reduced and not, on [`WORD_SHAPES`]
/// ([`checked_gradient_digest`]: the f64 reference on the rounded inputs, both
/// doors and chunked calls giving the same bits, bytes outside the elements
/// unchanged, the half word after an odd count too), and, on the adapter they
/// were recorded on, the bits of the kernels before bf16 gradients were stored
/// a whole word at a time, when each bf16 half was set with atomicAnd /
/// atomicOr and f32 / f16 row gradients were written in each kernel's own loop
/// (tests/fixtures/family_gradient_digests.txt; `XENT_RECORD_DIGESTS=1`
/// rewrites it).
#[test]
fn gradients_keep_their_bits_and_their_slices() {
    let Some(context) = common::gpu() else {
        return;
    };
    let chunked = chunked_context();
    let info = context.adapter().get_info();
    let adapter = format!("adapter {} / {}", info.name, info.driver_info);
    let recording = std::env::var("XENT_RECORD_DIGESTS").is_ok_and(|value| value == "1");
    let expected = recorded_digests(&adapter);
    if expected.is_empty() && !recording {
        eprintln!("no digests recorded for {adapter}: checking the reference, the slices and the doors only");
    }
    let types = [LogitType::F32, LogitType::F16, LogitType::Bf16];
    let offset = context.limits().min_storage_buffer_offset_alignment as usize;
    let mut record = format!("{adapter}\n");
    for (seed, kind) in (80u64..).zip(KINDS) {
        for (rows, classes) in WORD_SHAPES {
            for reduced in [true, false] {
                let case = Case::new(kind, Shape::new(rows, classes), reduced, seed);
                for input_type in types {
                    let what = format!("{} {input_type:?}", case.name());
                    let actual = checked_gradient_digest(context, &chunked, &case, input_type, offset);
                    record.push_str(&format!("{what} {actual:016x}\n"));
                    if recording || expected.is_empty() {
                        continue;
                    }
                    let wanted = expected
                        .get(&what)
                        .unwrap_or_else(|| panic!("{adapter}: no digest for {what}"));
                    assert_eq!(actual, *wanted, "{what}: bits differ from the earlier kernels'");
                }
            }
        }
    }
    if recording {
        std::fs::write(GRADIENT_DIGESTS, record).expect("write the digests");
    }
}
