//! Structured input for the library's CPU backend: a shape (N ≤ 64 rows, C ≤ 512
//! classes, optional N-d spatial dimensions, or a raw `Shape` with odd fields),
//! logits of any value (NaN, ±inf, subnormal, huge) in f32/f16/bf16, targets of
//! each kind (in range, ignored, out of range, probabilities of any value), every
//! `CrossEntropyOptions` field in and out of its domain, every call, and the
//! family losses' builders and the sharded cross-entropy.
//!
//! Requirements: no panic; an `Err` exactly when the documented rules (README,
//! `CrossEntropyOptions::validate`) make the input invalid; and for accepted
//! cross-entropy inputs with finite logits, agreement with the f64 reference
//! (`xent::reference::cross_entropy_f64`) within a loose tolerance (see
//! [`Bounds`]), NaN exactly where the reference is NaN.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xent::half::{bf16, f16};
use xent::reference::{ReferenceCrossEntropy, cross_entropy_f64};
use xent::{
    BinaryCrossEntropyLoss, Cpu, CrossEntropyLoss, CrossEntropyOptions, Entropy, InputKind, KlDivLoss, KlReduction,
    Logits, LogitsMut, Loss, ProbabilityCrossEntropyLoss, Reduction, Shape, ShardedCrossEntropy, Targets, VocabShard,
};

const EPS: f64 = f32::EPSILON as f64;

/// A float chosen to reach the edges often.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum F {
    Zero,
    NegZero,
    One,
    NegOne,
    /// k / 16.
    Small(i8),
    /// k · 1000.
    Large(i16),
    /// Any bits.
    Raw(u32),
    Nan,
    Inf,
    NegInf,
    /// k · the smallest subnormal.
    Subnormal(u8),
    Max,
    NegMax,
    /// k · 1e30.
    Huge(i8),
    /// k / 255 (probabilities).
    Unit(u8),
}

impl F {
    fn get(self) -> f32 {
        match self {
            F::Zero => 0.0,
            F::NegZero => -0.0,
            F::One => 1.0,
            F::NegOne => -1.0,
            F::Small(k) => f32::from(k) / 16.0,
            F::Large(k) => f32::from(k) * 1000.0,
            F::Raw(bits) => f32::from_bits(bits),
            F::Nan => f32::NAN,
            F::Inf => f32::INFINITY,
            F::NegInf => f32::NEG_INFINITY,
            F::Subnormal(k) => f32::from_bits(u32::from(k)),
            F::Max => f32::MAX,
            F::NegMax => -f32::MAX,
            F::Huge(k) => f32::from(k) * 1e30,
            F::Unit(k) => f32::from(k) / 255.0,
        }
    }
}

/// `values` cycled to `len` entries (zeros when empty).
fn cycled(values: &[F], len: usize) -> Vec<f32> {
    if values.is_empty() {
        return vec![0.0; len];
    }
    (0..len).map(|index| values[index % values.len()].get()).collect()
}

fn resized(len: usize, delta: Option<i8>) -> usize {
    match delta {
        Some(delta) => len.saturating_add_signed(isize::from(delta)),
        None => len,
    }
}

#[derive(Arbitrary, Debug)]
enum ShapeSpec {
    Flat,
    /// Up to three spatial dimensions, each 0..=4.
    Nd(Vec<u8>),
    /// A `Shape` built field by field (rows not a multiple of spatial, zeros, …).
    Raw {
        rows: u8,
        classes: u16,
        spatial: u8,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum T {
    Class(u16),
    Ignore,
    Raw(i64),
    Negative(u8),
    Beyond(u8),
}

#[derive(Arbitrary, Debug)]
enum TargetKind {
    I64,
    I32,
    U32,
    Probabilities(Vec<F>),
}

#[derive(Arbitrary, Debug)]
enum Ignore {
    Default,
    Raw(i64),
    Class(u16),
    Negative(u8),
}

#[derive(Arbitrary, Debug)]
struct OptionsSpec {
    reduction: u8,
    ignore: Ignore,
    weight: Option<(Option<i8>, Vec<F>)>,
    smoothing: Option<F>,
    z_loss: Option<F>,
    softcap: Option<F>,
    logit_scale: Option<F>,
}

#[derive(Arbitrary, Debug)]
enum Call {
    Loss,
    Separate { delta: Option<i8>, other_type: bool },
    InPlace,
    Forward { gradient: bool, row_stats: bool },
    RowLosses,
}

#[derive(Arbitrary, Debug)]
enum Which {
    CrossEntropy(Call),
    Binary {
        probabilities: bool,
        pos_weight: Option<(Option<i8>, Vec<F>)>,
        gradient: bool,
    },
    KlDiv {
        reduction: u8,
        log_target: bool,
        gradient: bool,
    },
    Entropy {
        probabilities: bool,
        gradient: bool,
    },
    ProbabilityCrossEntropy {
        gradient: bool,
    },
    /// Shards of `VocabShard::split(C, parts)`, or (start, len) pairs as given.
    Sharded {
        parts: u8,
        raw: Option<Vec<(u16, u16)>>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    batch: u8,
    classes: u16,
    shape: ShapeSpec,
    dtype: u8,
    logits: Vec<F>,
    logits_delta: Option<i8>,
    targets: TargetKind,
    target_values: Vec<T>,
    targets_delta: Option<i8>,
    options: OptionsSpec,
    which: Which,
}

/// Logits in the element type the input chose.
enum Stored {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Stored {
    fn logits(&self) -> Logits<'_> {
        match self {
            Stored::F32(values) => Logits::F32(values),
            Stored::F16(values) => Logits::F16(values),
            Stored::Bf16(values) => Logits::Bf16(values),
        }
    }

    fn widened(&self) -> Vec<f32> {
        match self {
            Stored::F32(values) => values.clone(),
            Stored::F16(values) => values.iter().map(|value| value.to_f32()).collect(),
            Stored::Bf16(values) => values.iter().map(|value| value.to_f32()).collect(),
        }
    }

    fn zeros(&self, len: usize, other_type: bool) -> Stored {
        match (self, other_type) {
            (Stored::F32(_), false) | (Stored::F16(_), true) => Stored::F32(vec![0.0; len]),
            (Stored::F16(_), false) | (Stored::Bf16(_), true) => Stored::F16(vec![f16::ZERO; len]),
            (Stored::Bf16(_), false) | (Stored::F32(_), true) => Stored::Bf16(vec![bf16::ZERO; len]),
        }
    }

    fn as_mut(&mut self) -> LogitsMut<'_> {
        match self {
            Stored::F32(values) => LogitsMut::F32(values),
            Stored::F16(values) => LogitsMut::F16(values),
            Stored::Bf16(values) => LogitsMut::Bf16(values),
        }
    }

    /// The relative and absolute rounding of a gradient stored in this type, and
    /// its largest finite value (a gradient beyond it is stored as ±inf).
    fn rounding(&self) -> (f64, f64, f64) {
        match self {
            Stored::F32(_) => (0.0, 0.0, f64::from(f32::MAX)),
            Stored::F16(_) => (1.0 / 1024.0, 2.0f64.powi(-24), f16::MAX.to_f64()),
            Stored::Bf16(_) => (1.0 / 256.0, 1e-38, bf16::MAX.to_f64()),
        }
    }
}

enum StoredTargets {
    I64(Vec<i64>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    Probabilities(Vec<f32>),
}

impl StoredTargets {
    fn view(&self) -> Targets<'_> {
        match self {
            StoredTargets::I64(values) => Targets::I64(values),
            StoredTargets::I32(values) => Targets::I32(values),
            StoredTargets::U32(values) => Targets::U32(values),
            StoredTargets::Probabilities(values) => Targets::Probabilities(values),
        }
    }
}

fn reduction(choice: u8) -> Reduction {
    match choice % 3 {
        0 => Reduction::Mean,
        1 => Reduction::Sum,
        _ => Reduction::None,
    }
}

fuzz_target!(|input: Input| {
    let classes = usize::from(input.classes % 513);
    let batch = usize::from(input.batch % 65);
    let shape = match &input.shape {
        ShapeSpec::Flat => Shape::new(batch, classes),
        ShapeSpec::Nd(dims) => {
            let dims: Vec<usize> = dims.iter().take(3).map(|&extent| usize::from(extent % 5)).collect();
            Shape::nd(batch.min(8), classes, &dims).expect("small dimensions cannot overflow")
        }
        &ShapeSpec::Raw { rows, classes, spatial } => Shape {
            rows: usize::from(rows % 65),
            classes: usize::from(classes % 513),
            spatial: usize::from(spatial % 9),
        },
    };
    // At most 64 rows of 512 (what a multiple of the spatial size can give).
    if shape.rows > 64 || shape.classes > 512 {
        return;
    }
    let elements = shape.rows * shape.classes;

    let values = cycled(&input.logits, resized(elements, input.logits_delta));
    let logits = match input.dtype % 3 {
        0 => Stored::F32(values),
        1 => Stored::F16(values.iter().map(|&value| f16::from_f32(value)).collect()),
        _ => Stored::Bf16(values.iter().map(|&value| bf16::from_f32(value)).collect()),
    };

    let options = options(&input.options, shape.classes);
    let target_len = match input.targets {
        TargetKind::Probabilities(_) => elements,
        _ => shape.rows,
    };
    let target_len = resized(target_len, input.targets_delta);
    let class_value = |index: usize| -> i64 {
        let choice = input
            .target_values
            .get(index % input.target_values.len().max(1))
            .copied();
        let classes = shape.classes as i64;
        match choice.unwrap_or(T::Class(index as u16)) {
            T::Class(class) => i64::from(class) % classes.max(1),
            T::Ignore => options.ignore_index,
            T::Raw(value) => value,
            T::Negative(k) => -1 - i64::from(k),
            T::Beyond(k) => classes + i64::from(k),
        }
    };
    let targets = match &input.targets {
        TargetKind::I64 => StoredTargets::I64((0..target_len).map(class_value).collect()),
        TargetKind::I32 => StoredTargets::I32((0..target_len).map(|row| class_value(row) as i32).collect()),
        TargetKind::U32 => StoredTargets::U32((0..target_len).map(|row| class_value(row) as u32).collect()),
        TargetKind::Probabilities(values) => StoredTargets::Probabilities(cycled(values, target_len)),
    };

    match &input.which {
        Which::CrossEntropy(call) => cross_entropy(shape, &logits, &targets, &options, call),
        Which::Binary {
            probabilities,
            pos_weight,
            gradient,
        } => binary(
            shape,
            &logits,
            &targets,
            &input.options,
            *probabilities,
            pos_weight,
            *gradient,
        ),
        &Which::KlDiv {
            reduction,
            log_target,
            gradient,
        } => {
            let reduction = [
                KlReduction::None,
                KlReduction::Sum,
                KlReduction::Mean,
                KlReduction::BatchMean,
            ][usize::from(reduction % 4)];
            let loss = KlDivLoss::new().reduction(reduction).log_target(log_target);
            let soft = soft_values(&targets);
            let valid = matrix_valid(shape, logits.logits().len()) && soft.len() == elements;
            let mut out = logits.zeros(elements, false);
            let result = match gradient {
                true => loss.loss_and_grad(&Cpu, logits.logits(), &soft, shape, out.as_mut()),
                false => loss.loss(&Cpu, logits.logits(), &soft, shape),
            };
            expect_outcome(valid, &result);
        }
        &Which::Entropy {
            probabilities,
            gradient,
        } => {
            let kind = if probabilities {
                InputKind::Probabilities
            } else {
                InputKind::Logits
            };
            let loss = Entropy::new().input(kind).reduction(options.reduction);
            let valid = matrix_valid(shape, logits.logits().len());
            let mut out = logits.zeros(elements, false);
            let result = match gradient {
                true => loss.loss_and_grad(&Cpu, logits.logits(), shape, out.as_mut()),
                false => loss.loss(&Cpu, logits.logits(), shape),
            };
            expect_outcome(valid, &result);
        }
        &Which::ProbabilityCrossEntropy { gradient } => {
            let loss = ProbabilityCrossEntropyLoss::new().reduction(options.reduction);
            let valid = matrix_valid(shape, logits.logits().len())
                && match &targets {
                    StoredTargets::Probabilities(values) => values.len() == elements,
                    _ => {
                        let indices = targets.view().to_i64();
                        indices.len() == shape.rows
                            && indices.iter().all(|&value| (0..shape.classes as i64).contains(&value))
                    }
                };
            let mut out = logits.zeros(elements, false);
            let result = match gradient {
                true => loss.loss_and_grad(&Cpu, logits.logits(), targets.view(), shape, out.as_mut()),
                false => loss.loss(&Cpu, logits.logits(), targets.view(), shape),
            };
            expect_outcome(valid, &result);
        }
        Which::Sharded { parts, raw } => sharded(shape, &logits, &targets, &options, *parts, raw.as_deref()),
    }
});

fn options(spec: &OptionsSpec, classes: usize) -> CrossEntropyOptions {
    let weight = spec
        .weight
        .as_ref()
        .map(|(delta, values)| cycled(values, resized(classes, *delta)));
    CrossEntropyOptions {
        reduction: reduction(spec.reduction),
        ignore_index: match spec.ignore {
            Ignore::Default => xent::DEFAULT_IGNORE_INDEX,
            Ignore::Raw(value) => value,
            Ignore::Class(class) => i64::from(class) % (classes as i64).max(1),
            Ignore::Negative(k) => -1 - i64::from(k),
        },
        weight,
        label_smoothing: spec.smoothing.map_or(0.0, F::get),
        z_loss: spec.z_loss.map_or(0.0, F::get),
        softcap: spec.softcap.map(F::get),
        logit_scale: spec.logit_scale.map_or(1.0, F::get),
    }
}

/// The documented domain of every option (README "Options").
fn options_valid(options: &CrossEntropyOptions, classes: usize) -> bool {
    let weights_valid = options
        .weight
        .as_ref()
        .is_none_or(|weight| weight.len() == classes && weight.iter().all(|&value| value.is_finite() && value >= 0.0));
    (0.0..=1.0).contains(&options.label_smoothing)
        && weights_valid
        && options.z_loss.is_finite()
        && options.z_loss >= 0.0
        && options.softcap.is_none_or(|cap| cap.is_finite() && cap > 0.0)
        && options.logit_scale.is_finite()
        && options.logit_scale != 0.0
}

/// A shape and logits length any loss accepts.
fn shape_valid(shape: Shape, logits_len: usize) -> bool {
    shape.rows > 0
        && shape.classes > 0
        && shape.spatial > 0
        && shape.rows.is_multiple_of(shape.spatial)
        && logits_len == shape.rows * shape.classes
}

/// The family losses take (N, C) only.
fn matrix_valid(shape: Shape, logits_len: usize) -> bool {
    shape_valid(shape, logits_len) && shape.spatial == 1
}

fn targets_valid(targets: Targets<'_>, shape: Shape, ignore_index: i64) -> bool {
    match targets {
        // PyTorch refuses a non-negative ignore_index with probabilities.
        Targets::Probabilities(values) => values.len() == shape.rows * shape.classes && ignore_index < 0,
        _ => {
            let indices = targets.to_i64();
            indices.len() == shape.rows
                && indices
                    .iter()
                    .all(|&value| value == ignore_index || (0..shape.classes as i64).contains(&value))
        }
    }
}

fn expect_outcome<T: std::fmt::Debug>(valid: bool, result: &xent::Result<T>) {
    match (valid, result) {
        (true, Err(error)) => panic!("a valid input was refused: {error:?}"),
        (false, Ok(value)) => panic!("an invalid input was accepted: {value:?}"),
        _ => {}
    }
}

fn soft_values(targets: &StoredTargets) -> Vec<f32> {
    match targets {
        StoredTargets::Probabilities(values) => values.clone(),
        other => other.view().to_i64().iter().map(|&value| value as f32).collect(),
    }
}

fn cross_entropy(shape: Shape, logits: &Stored, targets: &StoredTargets, options: &CrossEntropyOptions, call: &Call) {
    let loss = CrossEntropyLoss::with_options(options.clone());
    let elements = shape.rows * shape.classes;
    let mut valid = shape_valid(shape, logits.logits().len())
        && options_valid(options, shape.classes)
        && targets_valid(targets.view(), shape, options.ignore_index);
    let mut gradient = None;
    let (mut lse, mut argmax, mut z_loss) = (None, None, None);
    let result = match call {
        Call::Loss => loss.loss(&Cpu, logits.logits(), targets.view(), shape),
        Call::RowLosses => loss
            .row_losses(&Cpu, logits.logits(), targets.view(), shape)
            .map(Loss::PerRow),
        &Call::Separate { delta, other_type } => {
            let len = resized(elements, delta);
            valid &= len == elements && !other_type;
            let mut out = logits.zeros(len, other_type);
            let result = loss.loss_and_grad(&Cpu, logits.logits(), targets.view(), shape, out.as_mut());
            gradient = Some(out);
            result
        }
        Call::InPlace => {
            let mut out = match logits {
                Stored::F32(values) => Stored::F32(values.clone()),
                Stored::F16(values) => Stored::F16(values.clone()),
                Stored::Bf16(values) => Stored::Bf16(values.clone()),
            };
            let result = loss.loss_and_grad_in_place(&Cpu, out.as_mut(), targets.view(), shape);
            gradient = Some(out);
            result
        }
        &Call::Forward {
            gradient: with_gradient,
            row_stats,
        } => {
            let mut out = logits.zeros(elements, false);
            let result = loss.forward(
                &Cpu,
                logits.logits(),
                targets.view(),
                shape,
                with_gradient.then(|| out.as_mut()),
                row_stats,
            );
            if with_gradient {
                gradient = Some(out);
            }
            result.map(|output| {
                (lse, argmax, z_loss) = (output.lse, output.argmax, output.z_loss);
                output.loss
            })
        }
    };
    expect_outcome(valid, &result);
    let Ok(loss_value) = result else { return };
    let widened = logits.widened();
    if !widened.iter().all(|value| value.is_finite()) {
        return;
    }
    let reference = cross_entropy_f64(&widened, targets.view(), shape, options);
    let Some(bounds) = Bounds::new(&widened, targets.view(), shape, options, &reference) else {
        return;
    };
    let per_row = matches!(call, Call::RowLosses) || options.reduction == Reduction::None;
    bounds.check_loss(&loss_value, &reference, per_row);
    if let Some(z_loss) = z_loss {
        bounds.check_z_loss(&z_loss, &reference, per_row);
    }
    if let Some(gradient) = gradient {
        bounds.check_gradient(&gradient.widened(), &reference, logits.rounding());
    }
    if let Some(lse) = lse {
        bounds.check_lse(&lse, &reference);
    }
    if let Some(argmax) = argmax {
        bounds.check_argmax(&argmax, &reference);
    }
}

/// Loose error bounds of an f32 computation of the cross-entropy, from the
/// reasoning of tests/random_agreement.rs (f32 rounding of each term, and with a
/// logit scale or softcap the rounding `δ` of the transformed logits), widened so
/// that only real disagreements fail:
///
/// - each row's loss `Σ_c a_c·(lse − x'_c) + z·lse²` (`a_c` the row's target
///   coefficients: `(1−ε)·w_y` at the target plus `ε/C·w_c`, or `w_c·t'_c`) within
///   `16·eps·(Σ_c |a_c|·(|lse| + |x'_c|) + z·lse²)` (each difference rounded
///   relative to its operands, which dominates with huge logits), plus
///   `2·Σ_c |dL/dx'_c|·δ_c`;
/// - on top, 1e-3 relative (of `Σ |row loss|`) and 1e-4 absolute on the loss;
/// - cases where an f32 intermediate overflows (a row's magnitude, a summed
///   `lse − x'_c` beyond half of f32's largest value, the divisor or its inverse
///   beyond 1e36) are not compared: f32 arithmetic, PyTorch's too, gives inf or
///   NaN there.
struct Bounds {
    shape: Shape,
    /// Per row: the loss bound (without the relative and absolute parts).
    row: Vec<f64>,
    /// Per row: the z-loss bound.
    row_z: Vec<f64>,
    /// Per row: the largest δ.
    delta: Vec<f64>,
    /// Per element: the gradient bound.
    gradient: Vec<f64>,
    /// x' in f64.
    transformed: Vec<f64>,
    /// The mean's divisor (1 for sum and none).
    divisor: f64,
}

fn transform_f64(logit: f32, options: &CrossEntropyOptions) -> f64 {
    let scaled = f64::from(options.logit_scale) * f64::from(logit);
    match options.softcap {
        Some(cap) => f64::from(cap) * (scaled / f64::from(cap)).tanh(),
        None => scaled,
    }
}

fn close(actual: f32, expected: f64, tolerance: f64) -> bool {
    if expected.is_nan() {
        return actual.is_nan();
    }
    (f64::from(actual) - expected).abs() <= tolerance
}

impl Bounds {
    fn new(
        widened: &[f32],
        targets: Targets<'_>,
        shape: Shape,
        options: &CrossEntropyOptions,
        reference: &ReferenceCrossEntropy,
    ) -> Option<Bounds> {
        const OVERFLOW: f64 = 1e36;
        let classes = shape.classes;
        let transformed: Vec<f64> = widened.iter().map(|&logit| transform_f64(logit, options)).collect();
        let has_transform = options.softcap.is_some() || options.logit_scale != 1.0;
        let cap = options.softcap.map_or(0.0, f64::from);
        let delta: Vec<f64> = transformed
            .iter()
            .map(|&value| {
                if has_transform {
                    4.0 * EPS * (value.abs() + cap)
                } else {
                    0.0
                }
            })
            .collect();
        let weight = |class: usize| f64::from(options.class_weight(class).unwrap_or(1.0));
        let smoothing = f64::from(options.label_smoothing);
        let z = f64::from(options.z_loss);
        let scale = f64::from(options.logit_scale).abs();
        let indices = targets.to_i64();
        let mut divisor = 0.0;
        let mut row = Vec::with_capacity(shape.rows);
        let mut row_z = Vec::with_capacity(shape.rows);
        let mut row_delta = Vec::with_capacity(shape.rows);
        let mut gradient_parts = Vec::with_capacity(shape.rows);
        for r in 0..shape.rows {
            let element = |class: usize| shape.index(r, class);
            // No class indices for probabilities: `indices` is empty then.
            let index = (!targets.is_probabilities()).then(|| indices.get(r).copied()).flatten();
            let ignored = index == Some(options.ignore_index);
            let target = index.filter(|_| !ignored).map(|class| class as usize);
            let coefficients: Vec<f64> = match (targets, target) {
                (Targets::Probabilities(values), _) => {
                    divisor += 1.0;
                    (0..classes)
                        .map(|class| {
                            let t = f64::from(values[element(class)]);
                            weight(class) * ((1.0 - smoothing) * t + smoothing / classes as f64)
                        })
                        .collect()
                }
                // Ignored.
                (_, None) => vec![0.0; classes],
                (_, Some(target)) => {
                    divisor += weight(target);
                    (0..classes)
                        .map(|class| {
                            let at = if class == target {
                                (1.0 - smoothing) * weight(target)
                            } else {
                                0.0
                            };
                            at + smoothing / classes as f64 * weight(class)
                        })
                        .collect()
                }
            };
            let lse = reference.row_lse[r];
            let total: f64 = coefficients.iter().map(|a| a.abs()).sum();
            let z_row = if ignored { 0.0 } else { z };
            let z_slope = 2.0 * z_row * lse.abs();
            let delta_max = (0..classes).map(|class| delta[element(class)]).fold(0.0, f64::max);
            let mut magnitude = z_row * lse * lse;
            let mut sensitivity = 0.0;
            let mut gradient = Vec::with_capacity(classes);
            for (class, &a) in coefficients.iter().enumerate() {
                let x = transformed[element(class)];
                // x' − lse ≤ 0 in exact arithmetic; clamped where the f64 transform rounds above lse.
                let p = (x - lse).min(0.0).exp();
                magnitude += a.abs() * (lse.abs() + x.abs());
                // `lse − x'_c` beyond f32's range is inf in f32 (and 0·inf NaN for a
                // zero coefficient: PyTorch's `t·log_softmax` too) for every term the
                // row's loss sums: all classes with soft targets or smoothing, else the target's.
                let summed = targets.is_probabilities() || (!ignored && (smoothing > 0.0 || Some(class) == target));
                if summed && (lse - x).abs() > f64::from(f32::MAX) / 2.0 {
                    return None;
                }
                let d = a.abs() + (total + z_slope) * p;
                sensitivity += d * delta[element(class)];
                // softmax's rounding (relative to |x' − lse|) and x''s, through A·p;
                // each term's own rounding; the softcap derivative's.
                let mut bound = (total + z_slope + 2.0 * z_row) * p * (8.0 * EPS * (x - lse).abs() + 2.0 * delta_max)
                    + 16.0 * EPS * (total + a.abs() + z_slope);
                if options.softcap.is_some() {
                    bound += 2.0 * d * delta[element(class)] / cap;
                }
                gradient.push(scale * bound);
            }
            if !magnitude.is_finite() || magnitude > OVERFLOW || !lse.is_finite() {
                return None;
            }
            row.push(16.0 * EPS * magnitude + 2.0 * sensitivity);
            row_z.push(16.0 * EPS * z_row * lse * lse + 2.0 * z_slope * delta_max);
            row_delta.push(delta_max);
            gradient_parts.push(gradient);
        }
        let divisor = match options.reduction {
            Reduction::Mean => divisor,
            _ => 1.0,
        };
        if divisor > OVERFLOW || (divisor != 0.0 && 1.0 / divisor > OVERFLOW) {
            return None;
        }
        let inverse = if divisor > 0.0 { 1.0 / divisor } else { 0.0 };
        // A gradient factor |s|/divisor below f32's normal range is itself rounded
        // to a multiple of the smallest subnormal: a relative error of up to one
        // subnormal step over the factor, and a few steps absolute.
        let factor = scale * inverse;
        let subnormal = f64::from(f32::from_bits(1));
        let relative = if factor > 0.0 {
            (4.0 * subnormal / factor).min(1.0)
        } else {
            0.0
        };
        let mut gradient = vec![0.0; widened.len()];
        for (r, parts) in gradient_parts.iter().enumerate() {
            for (class, &bound) in parts.iter().enumerate() {
                let index = shape.index(r, class);
                gradient[index] = bound * inverse + relative * reference.gradient[index].abs() + 4.0 * subnormal;
            }
        }
        Some(Bounds {
            shape,
            row,
            row_z,
            delta: row_delta,
            gradient,
            transformed,
            divisor,
        })
    }

    fn check_loss(&self, loss: &Loss, reference: &ReferenceCrossEntropy, per_row: bool) {
        match loss {
            Loss::PerRow(values) => {
                assert!(per_row, "per-row losses for a reduced call");
                assert_eq!(values.len(), self.shape.rows, "per-row losses");
                for (r, (&value, &expected)) in values.iter().zip(&reference.row_losses).enumerate() {
                    let tolerance = 1e-3 * expected.abs() + 1e-4 + self.row[r];
                    assert!(
                        close(value, expected, tolerance),
                        "row {r}: loss {value:e} vs reference {expected:e} (tolerance {tolerance:e})"
                    );
                }
            }
            &Loss::Reduced(value) => {
                assert!(!per_row, "a reduced loss for reduction none");
                let magnitude: f64 = reference.row_losses.iter().map(|loss| loss.abs()).sum();
                let tolerance = (1e-3 * magnitude + self.row.iter().sum::<f64>()) / self.divisor + 1e-4;
                assert!(
                    close(value, reference.loss, tolerance),
                    "loss {value:e} vs reference {:e} (tolerance {tolerance:e}; rows {:?}, divisor {}, row losses {:?})",
                    reference.loss,
                    self.row,
                    self.divisor,
                    reference.row_losses
                );
            }
        }
    }

    fn check_z_loss(&self, z_loss: &Loss, reference: &ReferenceCrossEntropy, per_row: bool) {
        match z_loss {
            Loss::PerRow(values) => {
                assert!(per_row, "per-row z-losses for a reduced call");
                for (r, (&value, &expected)) in values.iter().zip(&reference.row_z).enumerate() {
                    let tolerance = 1e-3 * expected.abs() + 1e-4 + self.row_z[r];
                    assert!(
                        close(value, expected, tolerance),
                        "row {r}: z-loss {value:e} vs reference {expected:e} (tolerance {tolerance:e})"
                    );
                }
            }
            &Loss::Reduced(value) => {
                let magnitude: f64 = reference.row_z.iter().sum();
                let tolerance = (1e-3 * magnitude + self.row_z.iter().sum::<f64>()) / self.divisor + 1e-4;
                assert!(
                    close(value, reference.z_loss, tolerance),
                    "z-loss {value:e} vs reference {:e} (tolerance {tolerance:e})",
                    reference.z_loss
                );
            }
        }
    }

    fn check_gradient(
        &self,
        gradient: &[f32],
        reference: &ReferenceCrossEntropy,
        (rounding, floor, largest_finite): (f64, f64, f64),
    ) {
        assert_eq!(gradient.len(), reference.gradient.len(), "gradient length");
        let classes = self.shape.classes;
        for r in 0..self.shape.rows {
            let largest = (0..classes)
                .map(|class| reference.gradient[self.shape.index(r, class)].abs())
                .fold(0.0, f64::max);
            for class in 0..classes {
                let index = self.shape.index(r, class);
                let expected = reference.gradient[index];
                let mut tolerance = 1e-3 * expected.abs() + 1e-5 * largest + self.gradient[index];
                tolerance += rounding * (expected.abs() + tolerance) + floor;
                let actual = gradient[index];
                // Rounded to the stored type, a value near or beyond its range is ±inf.
                let overflowed = actual.is_infinite()
                    && f64::from(actual).signum() == expected.signum()
                    && expected.abs() + tolerance >= largest_finite;
                assert!(
                    overflowed || close(actual, expected, tolerance),
                    "gradient[{index}] (row {r}, class {class}) {:e} vs reference {expected:e} (tolerance \
                     {tolerance:e})",
                    gradient[index]
                );
            }
        }
    }

    fn check_lse(&self, lse: &[f32], reference: &ReferenceCrossEntropy) {
        for (r, (&value, &expected)) in lse.iter().zip(&reference.row_lse).enumerate() {
            let tolerance = 1e-6 * (1.0 + expected.abs()) + 2.0 * self.delta[r];
            assert!(
                close(value, expected, tolerance),
                "row {r}: lse {value:e} vs reference {expected:e} (tolerance {tolerance:e})"
            );
        }
    }

    fn check_argmax(&self, argmax: &[u32], reference: &ReferenceCrossEntropy) {
        assert_eq!(argmax.len(), self.shape.rows, "argmax length");
        for (r, (&actual, &expected)) in argmax.iter().zip(&reference.row_argmax).enumerate() {
            if actual == expected {
                continue;
            }
            assert!((actual as usize) < self.shape.classes, "row {r}: argmax {actual}");
            let value = |class: u32| self.transformed[self.shape.index(r, class as usize)];
            let (best, chosen) = (value(expected), value(actual));
            let slack = 2.0 * self.delta[r] + 4.0 * EPS * best.abs();
            assert!(
                chosen != best && chosen >= best - slack,
                "row {r}: argmax {actual} (x' = {chosen:e}) vs reference {expected} (x' = {best:e})"
            );
        }
    }
}

fn binary(
    shape: Shape,
    logits: &Stored,
    targets: &StoredTargets,
    spec: &OptionsSpec,
    probabilities: bool,
    pos_weight: &Option<(Option<i8>, Vec<F>)>,
    with_gradient: bool,
) {
    let elements = shape.rows * shape.classes;
    let kind = if probabilities {
        InputKind::Probabilities
    } else {
        InputKind::Logits
    };
    let mut loss = BinaryCrossEntropyLoss::new()
        .input(kind)
        .reduction(reduction(spec.reduction))
        .label_smoothing(spec.smoothing.map_or(0.0, F::get));
    let class_vector = |(delta, values): &(Option<i8>, Vec<F>)| cycled(values, resized(shape.classes, *delta));
    let weight = spec.weight.as_ref().map(class_vector);
    let pos_weight = pos_weight.as_ref().map(class_vector);
    if let Some(weight) = &weight {
        loss = loss.weight(weight.clone());
    }
    if let Some(pos_weight) = &pos_weight {
        loss = loss.pos_weight(pos_weight.clone());
    }
    let soft = soft_values(targets);
    let smoothing = spec.smoothing.map_or(0.0, F::get);
    let vector_valid = |values: &Option<Vec<f32>>, non_negative: bool| {
        values.as_ref().is_none_or(|values| {
            values.len() == shape.classes
                && values
                    .iter()
                    .all(|&value| value.is_finite() && (!non_negative || value >= 0.0))
        })
    };
    let valid = matrix_valid(shape, logits.logits().len())
        && soft.len() == elements
        && (0.0..=1.0).contains(&smoothing)
        && vector_valid(&weight, true)
        && vector_valid(&pos_weight, false)
        && !(probabilities && pos_weight.is_some())
        && (!probabilities || logits.widened().iter().all(|value| (0.0..=1.0).contains(value)));
    let mut out = logits.zeros(elements, false);
    let result = match with_gradient {
        true => loss.loss_and_grad(&Cpu, logits.logits(), &soft, shape, out.as_mut()),
        false => loss.loss(&Cpu, logits.logits(), &soft, shape),
    };
    expect_outcome(valid, &result);
}

fn sharded(
    shape: Shape,
    logits: &Stored,
    targets: &StoredTargets,
    options: &CrossEntropyOptions,
    parts: u8,
    raw: Option<&[(u16, u16)]>,
) {
    let Stored::F32(values) = logits else { return };
    if shape.spatial != 1 || shape.classes == 0 || values.len() != shape.rows * shape.classes {
        return;
    }
    let classes = shape.classes;
    let shards: Vec<VocabShard> = match raw {
        None => match VocabShard::split(classes, usize::from(parts % 9)) {
            Ok(shards) => shards,
            Err(_) => {
                assert!(
                    parts.is_multiple_of(9) || usize::from(parts % 9) > classes,
                    "split refused {parts} of {classes}"
                );
                return;
            }
        },
        Some(pairs) => {
            let mut shards = Vec::new();
            for &(start, len) in pairs.iter().take(8) {
                let (start, len) = (usize::from(start) % (classes + 1), usize::from(len) % (classes + 1));
                match VocabShard::new(start, len, classes) {
                    Ok(shard) => shards.push(shard),
                    Err(_) => assert!(
                        len == 0 || start + len > classes,
                        "shard [{start}, +{len}) of {classes}"
                    ),
                }
            }
            shards
        }
    };
    let tiles = !shards.is_empty()
        && shards[0].start() == 0
        && shards.windows(2).all(|pair| pair[1].start() == pair[0].end())
        && shards.last().is_some_and(|shard| shard.end() == classes);
    let loss = ShardedCrossEntropy::with_options(options.clone());
    let valid_call = shape.rows > 0
        && !targets.view().is_probabilities()
        && options_valid(options, classes)
        && targets_valid(targets.view(), shape, options.ignore_index);
    let columns = |shard: &VocabShard| -> Vec<f32> {
        (0..shape.rows)
            .flat_map(|r| {
                values[r * classes + shard.start()..r * classes + shard.end()]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let mut stats = Vec::new();
    for shard in &shards {
        let result = loss.stats(&Cpu, *shard, &columns(shard), targets.view());
        expect_outcome(valid_call, &result);
        let Ok(shard_stats) = result else { return };
        stats.push(shard_stats);
    }
    let combined = loss.combine_shards(&stats, targets.view());
    expect_outcome(valid_call && tiles, &combined);
    let Ok(combined) = combined else { return };
    let mut gradient = vec![0.0f32; values.len()];
    for shard in &shards {
        let mut part = vec![0.0f32; shape.rows * shard.len()];
        let result = loss.gradient(&Cpu, *shard, &columns(shard), targets.view(), &combined, &mut part);
        expect_outcome(true, &result);
        for r in 0..shape.rows {
            gradient[r * classes + shard.start()..r * classes + shard.end()]
                .copy_from_slice(&part[r * shard.len()..(r + 1) * shard.len()]);
        }
    }
    if !values.iter().all(|value| value.is_finite()) {
        return;
    }
    let reference = cross_entropy_f64(values, targets.view(), shape, options);
    let Some(bounds) = Bounds::new(values, targets.view(), shape, options, &reference) else {
        return;
    };
    bounds.check_loss(&combined.loss, &reference, options.reduction == Reduction::None);
    if let Some(z_loss) = &combined.z_loss {
        bounds.check_z_loss(z_loss, &reference, options.reduction == Reduction::None);
    }
    bounds.check_gradient(&gradient, &reference, (0.0, 0.0, f64::from(f32::MAX)));
}
