//! Property tests: random shapes (flat and N-d), logit element types, targets
//! (i64 / i32 / u32 class indices with `ignore_index` hits, soft targets),
//! options and calls, fed to every backend of `common::all_backends` (the CPU and
//! the GPU contexts). Every call must either agree with the f64 reference
//! (`xent::reference::cross_entropy_f64`) within tolerances derived from
//! f32 rounding, or fail; a case with an injected fault (a target out of range,
//! an option out of its domain, a length that does not match the shape) must
//! fail on every backend with the same typed error, the one the fault calls for.
//!
//! Reproducible: a fixed seed and no failure persistence. `PROPTEST_RNG_SEED`
//! and `PROPTEST_CASES` override the seed and the case count.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::half::{bf16, f16};
use xent::reference::{ReferenceCrossEntropy, cross_entropy_f64};
use xent::{Backend, CrossEntropyLoss, CrossEntropyOptions, Error, Logits, LogitsMut, Loss, Reduction, Shape, Targets};

/// The fixed seed of every property (unless `PROPTEST_RNG_SEED` is set).
const SEED: u64 = 0x5eed_2026_0c0d_e5ee;
/// Cases per property (unless `PROPTEST_CASES` is set): the GPU is a software
/// rasterizer on CI, and every new combination of options compiles a kernel.
const CASES: u32 = 64;

fn config() -> Config {
    let defaults = Config::default();
    Config {
        cases: match std::env::var_os("PROPTEST_CASES") {
            Some(_) => defaults.cases,
            None => CASES,
        },
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => defaults.rng_seed,
            None => RngSeed::Fixed(SEED),
        },
        failure_persistence: None,
        // Each shrinking step reruns every backend.
        max_shrink_iters: 256,
        ..defaults
    }
}

// ---------------------------------------------------------------------------
// The random case.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SoftKind {
    /// Random probabilities, at least 1/125 of the largest, normalised per row.
    Dense,
    /// 1 on one class per row.
    OneHot,
    /// Random values in [1/125, 1), not normalised (PyTorch accepts them).
    Unnormalised,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    I64,
    I32,
    U32,
    Soft(SoftKind),
}

#[derive(Clone, Copy, Debug)]
enum LogitKind {
    /// Uniform in [-magnitude, magnitude) plus `offset`.
    Uniform { magnitude: f32, offset: f32 },
    /// Every logit 0.5 (ties everywhere).
    AllEqual,
    /// The row's class at 0, the others at -23 - u: losses around C·1e-10.
    Confident,
}

#[derive(Clone, Copy, Debug)]
enum IgnoreChoice {
    /// PyTorch's -100.
    Default,
    /// A class of the shape (taken modulo `classes`).
    Class(usize),
    /// `classes + k`.
    Beyond(u32),
    /// `-1 - k`.
    Negative(u16),
}

#[derive(Clone, Copy, Debug)]
enum WeightKind {
    /// Uniform in [0.1, 3).
    Positive,
    /// About a third of the classes weigh 0.
    WithZeros,
}

#[derive(Clone, Copy, Debug)]
enum Call {
    /// `loss`.
    Loss,
    /// `loss_and_grad`.
    Separate,
    /// `loss_and_grad_in_place`.
    InPlace,
    /// `forward` with a gradient and the row statistics.
    Forward,
}

/// An out-of-range class index, made concrete per target type in [`BadValue::value`].
#[derive(Clone, Copy, Debug)]
enum BadValue {
    MinusOne,
    Classes,
    ClassesPlus(u32),
    Min,
    Max,
    /// A valid class plus 2^32 (2^31 for u32): only the low word is in range.
    HighWord,
}

/// At most one fault per case.
#[derive(Clone, Debug)]
enum Fault {
    /// Class-index targets out of range at these rows (modulo the row count).
    BadTargets(Vec<(usize, BadValue)>),
    Smoothing(f32),
    Softcap(f32),
    ZLoss(f32),
    LogitScale(f32),
    /// A weight vector of `classes ± k` entries.
    WeightLength(i8),
    /// Weight `class` (modulo classes) set to this value.
    WeightEntry(usize, f32),
    /// Logits of `rows × classes ± k` values.
    LogitsLength(i8),
    /// Targets of `len ± k` values.
    TargetsLength(i8),
    /// A separate gradient of `rows × classes ± k` values (inert for `loss` and in place).
    GradientLength(i8),
    /// A separate gradient of another element type (inert for `loss` and in place).
    GradientType,
    /// `rows` not a multiple of `spatial`.
    Spatial,
    /// No rows.
    NoRows,
    /// No classes.
    NoClasses,
}

#[derive(Clone, Debug)]
struct Options {
    reduction: Reduction,
    ignore: IgnoreChoice,
    /// Fraction of the rows whose target is `ignore_index` (where the target type can hold it).
    ignored: f32,
    weight: Option<WeightKind>,
    smoothing: f32,
    z_loss: f32,
    softcap: Option<f32>,
    logit_scale: f32,
}

#[derive(Clone, Debug)]
struct Case {
    /// N of the N-d layout (the row count when `spatial == 1`).
    batch: usize,
    spatial: usize,
    classes: usize,
    dtype: Dtype,
    targets: TargetKind,
    logits: LogitKind,
    options: Options,
    call: Call,
    fault: Option<Fault>,
    /// Class weights of 0 on every row's target (see
    /// `weighted_means_over_a_zero_divisor_agree`).
    zero_target_weights: bool,
    /// Seeds the logits, targets and weights.
    seed: u64,
}

fn shapes() -> impl Strategy<Value = (usize, usize, usize)> {
    let classes = prop_oneof![1usize..8, 1usize..300];
    prop_oneof![
        3 => (1usize..40, classes.clone()).prop_map(|(rows, classes)| (rows, 1, classes)),
        1 => (1usize..=4, 2usize..=9, classes),
    ]
}

fn dtypes() -> impl Strategy<Value = Dtype> {
    prop_oneof![4 => Just(Dtype::F32), 1 => Just(Dtype::F16), 1 => Just(Dtype::Bf16)]
}

/// Class indices of each type, or soft targets (spread over every class, or one-hot).
fn target_kinds() -> impl Strategy<Value = TargetKind> {
    prop_oneof![
        2 => Just(TargetKind::I64),
        1 => Just(TargetKind::I32),
        1 => Just(TargetKind::U32),
        1 => prop_oneof![Just(SoftKind::Dense), Just(SoftKind::Unnormalised), Just(SoftKind::OneHot)]
            .prop_map(TargetKind::Soft),
    ]
}

fn logit_kinds() -> impl Strategy<Value = LogitKind> {
    prop_oneof![
        6 => (
            prop_oneof![Just(1.0f32), Just(4.0), Just(30.0), Just(250.0)],
            prop_oneof![3 => Just(0.0f32), 1 => Just(1.0e4), 1 => Just(-37.5)],
        )
            .prop_map(|(magnitude, offset)| LogitKind::Uniform { magnitude, offset }),
        1 => Just(LogitKind::AllEqual),
        1 => Just(LogitKind::Confident),
    ]
}

fn options() -> impl Strategy<Value = Options> {
    (
        prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum), Just(Reduction::None)],
        prop_oneof![
            2 => Just(IgnoreChoice::Default),
            1 => any::<usize>().prop_map(IgnoreChoice::Class),
            1 => (0u32..5).prop_map(IgnoreChoice::Beyond),
            1 => (0u16..200).prop_map(IgnoreChoice::Negative),
        ],
        prop_oneof![2 => Just(0.0f32), 2 => Just(0.25), 1 => Just(1.0)],
        prop::option::of(prop_oneof![Just(WeightKind::Positive), Just(WeightKind::WithZeros)]),
        prop_oneof![2 => Just(0.0f32), 2 => 0.0f32..=1.0, 1 => Just(1.0)],
        prop_oneof![2 => Just(0.0f32), 1 => 0.0f32..0.01, 1 => Just(1.0e-4)],
        prop::option::weighted(0.3, 0.5f32..50.0),
        prop_oneof![2 => Just(1.0f32), 1 => 0.1f32..3.0, 1 => -3.0f32..-0.1],
    )
        .prop_map(
            |(reduction, ignore, ignored, weight, smoothing, z_loss, softcap, logit_scale)| Options {
                reduction,
                ignore,
                ignored,
                weight,
                smoothing,
                z_loss,
                softcap,
                logit_scale,
            },
        )
}

fn calls() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => Just(Call::Loss),
        3 => Just(Call::Separate),
        2 => Just(Call::InPlace),
        2 => Just(Call::Forward),
    ]
}

fn bad_values() -> impl Strategy<Value = BadValue> {
    prop_oneof![
        Just(BadValue::MinusOne),
        Just(BadValue::Classes),
        (1u32..1000).prop_map(BadValue::ClassesPlus),
        Just(BadValue::Min),
        Just(BadValue::Max),
        Just(BadValue::HighWord),
    ]
}

fn faults() -> impl Strategy<Value = Fault> {
    let length = prop_oneof![-3i8..=-1, 1i8..=3];
    prop_oneof![
        6 => prop::collection::vec((any::<usize>(), bad_values()), 1..=3).prop_map(Fault::BadTargets),
        1 => prop_oneof![Just(1.5f32), Just(-0.1), Just(f32::NAN), Just(f32::INFINITY)].prop_map(Fault::Smoothing),
        1 => prop_oneof![Just(-1.0f32), Just(0.0), Just(f32::NAN), Just(f32::INFINITY)].prop_map(Fault::Softcap),
        1 => prop_oneof![Just(f32::NAN), Just(-1.0e-3), Just(f32::INFINITY)].prop_map(Fault::ZLoss),
        1 => prop_oneof![Just(0.0f32), Just(f32::NAN), Just(f32::NEG_INFINITY)].prop_map(Fault::LogitScale),
        1 => length.clone().prop_map(Fault::WeightLength),
        1 => (any::<usize>(), prop_oneof![Just(-0.5f32), Just(f32::NAN), Just(f32::INFINITY)])
            .prop_map(|(class, value)| Fault::WeightEntry(class, value)),
        1 => length.clone().prop_map(Fault::LogitsLength),
        1 => length.clone().prop_map(Fault::TargetsLength),
        1 => length.prop_map(Fault::GradientLength),
        1 => Just(Fault::GradientType),
        1 => Just(Fault::Spatial),
        1 => Just(Fault::NoRows),
        1 => Just(Fault::NoClasses),
    ]
}

fn cases(
    targets: impl Strategy<Value = TargetKind>,
    logits: impl Strategy<Value = LogitKind>,
    fault: impl Strategy<Value = Option<Fault>>,
) -> impl Strategy<Value = Case> {
    (
        shapes(),
        dtypes(),
        targets,
        logits,
        options(),
        calls(),
        fault,
        any::<u64>(),
    )
        .prop_map(
            |((batch, spatial, classes), dtype, targets, logits, options, call, fault, seed)| Case {
                batch,
                spatial,
                classes,
                dtype,
                targets,
                logits,
                options,
                call,
                fault,
                zero_target_weights: false,
                seed,
            },
        )
}

// ---------------------------------------------------------------------------
// The case made concrete.

/// Logits (or a gradient) in their element type.
#[derive(Clone, Debug)]
enum Stored {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Stored {
    fn rounded(dtype: Dtype, values: &[f32]) -> Self {
        match dtype {
            Dtype::F32 => Stored::F32(values.to_vec()),
            Dtype::F16 => Stored::F16(values.iter().map(|&value| f16::from_f32(value)).collect()),
            Dtype::Bf16 => Stored::Bf16(values.iter().map(|&value| bf16::from_f32(value)).collect()),
        }
    }

    /// Filled with NaN, so that an entry left unwritten cannot pass.
    fn nan(dtype: Dtype, len: usize) -> Self {
        Self::rounded(dtype, &vec![f32::NAN; len])
    }

    fn view(&self) -> Logits<'_> {
        match self {
            Stored::F32(values) => Logits::F32(values),
            Stored::F16(values) => Logits::F16(values),
            Stored::Bf16(values) => Logits::Bf16(values),
        }
    }

    fn view_mut(&mut self) -> LogitsMut<'_> {
        match self {
            Stored::F32(values) => LogitsMut::F32(values),
            Stored::F16(values) => LogitsMut::F16(values),
            Stored::Bf16(values) => LogitsMut::Bf16(values),
        }
    }

    fn widened(&self) -> Vec<f32> {
        self.view().to_f32().into_owned()
    }
}

#[derive(Clone, Debug)]
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

/// What every backend must return.
#[derive(Clone, Debug)]
enum Expected {
    /// Agreement with the reference.
    Values,
    /// Exactly this error.
    Error(Error),
    /// Some [`Error::InvalidOption`] (the same on every backend).
    InvalidOption,
}

/// The inputs of one call.
#[derive(Debug)]
struct Built {
    shape: Shape,
    loss: CrossEntropyLoss,
    logits: Stored,
    targets: StoredTargets,
    call: Call,
    /// Element type and length of the separate gradient.
    gradient: (Dtype, usize),
    expected: Expected,
}

impl BadValue {
    /// The out-of-range value for a target type; never `ignore_index`.
    fn value(self, kind: TargetKind, classes: usize, valid: i64, ignore_index: i64) -> i64 {
        let classes = classes as i64;
        let value = match (self, kind) {
            (BadValue::MinusOne, TargetKind::U32) => i64::from(u32::MAX),
            (BadValue::MinusOne, _) => -1,
            (BadValue::Classes, _) => classes,
            (BadValue::ClassesPlus(k), _) => classes + i64::from(k),
            (BadValue::Min, TargetKind::I64) => i64::MIN,
            (BadValue::Min, TargetKind::I32) => i64::from(i32::MIN),
            (BadValue::Min, _) => 1 << 31,
            (BadValue::Max, TargetKind::I64) => i64::MAX,
            (BadValue::Max, TargetKind::I32) => i64::from(i32::MAX),
            (BadValue::Max, _) => i64::from(u32::MAX),
            (BadValue::HighWord, TargetKind::I64) => (1 << 32) + valid,
            (BadValue::HighWord, TargetKind::I32) => valid - (1 << 31),
            (BadValue::HighWord, _) => (1 << 31) + valid,
        };
        // `classes + 1000` is out of range, fits every type, and no ignore_index chosen is that large.
        if value == ignore_index { classes + 1000 } else { value }
    }
}

/// Whether a target type can hold `value`.
fn representable(kind: TargetKind, value: i64) -> bool {
    match kind {
        TargetKind::I64 => true,
        TargetKind::I32 => i32::try_from(value).is_ok(),
        TargetKind::U32 => u32::try_from(value).is_ok(),
        TargetKind::Soft(_) => false,
    }
}

fn build(case: &Case) -> Built {
    let mut rng = StdRng::seed_from_u64(case.seed);
    let fault = case.fault.as_ref();
    let (mut rows, mut spatial, mut classes) = (case.batch * case.spatial, case.spatial, case.classes);
    match fault {
        Some(Fault::Spatial) => {
            spatial = spatial.max(2);
            rows = case.batch * spatial + 1;
        }
        Some(Fault::NoRows) => rows = 0,
        Some(Fault::NoClasses) => classes = 0,
        _ => {}
    }
    let shape = Shape { rows, classes, spatial };
    let elements = rows * classes;
    let index = |row: usize, class: usize| match fault {
        // The N-d index needs rows to be a multiple of spatial: fill row-major.
        Some(Fault::Spatial) => row * classes + class,
        _ => shape.index(row, class),
    };
    let mut expected = Expected::Values;

    // Options.
    let options = &case.options;
    let ignore_index = match options.ignore {
        IgnoreChoice::Default => -100,
        // Soft targets refuse a non-negative ignore_index (as PyTorch): a negative one instead.
        IgnoreChoice::Class(k) if matches!(case.targets, TargetKind::Soft(_)) => -1 - (k % 1000) as i64,
        IgnoreChoice::Beyond(k) if matches!(case.targets, TargetKind::Soft(_)) => -1 - i64::from(k),
        IgnoreChoice::Class(class) => (class % classes.max(1)) as i64,
        IgnoreChoice::Beyond(k) => classes as i64 + i64::from(k),
        IgnoreChoice::Negative(k) => -1 - i64::from(k),
    };
    let mut loss = CrossEntropyLoss::new()
        .reduction(options.reduction)
        .ignore_index(ignore_index)
        .label_smoothing(options.smoothing)
        .z_loss(options.z_loss)
        .logit_scale(options.logit_scale);
    if let Some(cap) = options.softcap {
        loss = loss.softcap(cap);
    }
    let mut weight = options.weight.map(|kind| {
        (0..classes)
            .map(|_| match kind {
                WeightKind::WithZeros if rng.random_range(0..3) == 0 => 0.0,
                _ => rng.random_range(0.1f32..3.0),
            })
            .collect::<Vec<f32>>()
    });
    match fault {
        Some(Fault::Smoothing(value)) => loss = loss.label_smoothing(*value),
        Some(Fault::Softcap(value)) => loss = loss.softcap(*value),
        Some(Fault::ZLoss(value)) => loss = loss.z_loss(*value),
        Some(Fault::LogitScale(value)) => loss = loss.logit_scale(*value),
        Some(Fault::WeightLength(delta)) => {
            let len = (classes as isize + isize::from(*delta)).max(0) as usize;
            weight = Some((0..len).map(|_| rng.random_range(0.1f32..3.0)).collect());
        }
        Some(Fault::WeightEntry(class, value)) if classes > 0 => {
            let weights = weight.get_or_insert_with(|| vec![1.0; classes]);
            weights[class % classes] = *value;
        }
        _ => {}
    }
    if let Some(weight) = weight {
        loss = loss.weight(weight);
    }
    if matches!(
        fault,
        Some(
            Fault::Smoothing(_)
                | Fault::Softcap(_)
                | Fault::ZLoss(_)
                | Fault::LogitScale(_)
                | Fault::WeightLength(_)
                | Fault::WeightEntry(..)
                | Fault::Spatial
        )
    ) {
        expected = Expected::InvalidOption;
    }
    if matches!(fault, Some(Fault::NoRows | Fault::NoClasses)) {
        expected = Expected::Error(Error::EmptyShape { rows, classes });
    }

    // Each row's class (valid), then the targets.
    let row_classes: Vec<usize> = (0..rows).map(|_| rng.random_range(0..classes.max(1))).collect();
    let mut targets = match case.targets {
        TargetKind::Soft(kind) => {
            let mut probabilities = vec![0.0f32; elements];
            for (row, &target) in row_classes.iter().enumerate() {
                let values: Vec<f32> = match kind {
                    SoftKind::OneHot => (0..classes).map(|class| f32::from(u8::from(class == target))).collect(),
                    SoftKind::Dense | SoftKind::Unnormalised => {
                        (0..classes).map(|_| rng.random_range(0.2f32..1.0).powi(3)).collect()
                    }
                };
                let total: f32 = match kind {
                    SoftKind::Dense => values.iter().sum::<f32>().max(f32::MIN_POSITIVE),
                    _ => 1.0,
                };
                for (class, value) in values.into_iter().enumerate() {
                    probabilities[index(row, class)] = value / total;
                }
            }
            StoredTargets::Probabilities(probabilities)
        }
        kind => {
            let mut values: Vec<i64> = row_classes.iter().map(|&class| class as i64).collect();
            if representable(kind, ignore_index) {
                for value in &mut values {
                    if rng.random_range(0.0f32..1.0) < options.ignored {
                        *value = ignore_index;
                    }
                }
            }
            if let Some(Fault::BadTargets(bad)) = fault
                && rows > 0
            {
                let mut first: Option<usize> = None;
                for &(row, bad_value) in bad {
                    let row = row % rows;
                    values[row] = bad_value.value(kind, classes, row_classes[row] as i64, ignore_index);
                    first = Some(first.map_or(row, |first| first.min(row)));
                }
                let row = first.expect("at least one bad row");
                expected = Expected::Error(Error::TargetOutOfRange {
                    row,
                    value: values[row],
                    classes,
                });
            }
            let narrow = |value: i64| {
                assert!(representable(kind, value), "{value} in {kind:?}");
                value
            };
            match kind {
                TargetKind::I64 => StoredTargets::I64(values),
                TargetKind::I32 => StoredTargets::I32(values.into_iter().map(|v| narrow(v) as i32).collect()),
                TargetKind::U32 => StoredTargets::U32(values.into_iter().map(|v| narrow(v) as u32).collect()),
                TargetKind::Soft(_) => unreachable!(),
            }
        }
    };
    if let Some(Fault::TargetsLength(delta)) = fault {
        let resize = |len: usize| {
            let grown = len as isize + isize::from(*delta);
            if grown >= 0 {
                grown as usize
            } else {
                len + delta.unsigned_abs() as usize
            }
        };
        match &mut targets {
            StoredTargets::I64(values) => values.resize(resize(values.len()), 0),
            StoredTargets::I32(values) => values.resize(resize(values.len()), 0),
            StoredTargets::U32(values) => values.resize(resize(values.len()), 0),
            StoredTargets::Probabilities(values) => values.resize(resize(values.len()), 0.0),
        }
        expected = Expected::Error(match &targets {
            StoredTargets::Probabilities(values) => Error::ProbabilitiesLength {
                actual: values.len(),
                expected: elements,
            },
            other => Error::TargetsLength {
                actual: other.view().len(),
                rows,
            },
        });
    }

    if case.zero_target_weights && !matches!(targets, StoredTargets::Probabilities(_)) {
        let mut weights = loss.options().weight.clone().unwrap_or_else(|| vec![1.0; classes]);
        for value in targets.view().to_i64() {
            if value != ignore_index {
                weights[value as usize] = 0.0;
            }
        }
        loss = loss.weight(weights);
    }

    // Logits.
    let mut logits = vec![0.0f32; elements];
    for (row, &target) in row_classes.iter().enumerate() {
        for class in 0..classes {
            let uniform: f32 = rng.random_range(-1.0f32..1.0);
            logits[index(row, class)] = match case.logits {
                LogitKind::Uniform { magnitude, offset } => uniform * magnitude + offset,
                LogitKind::AllEqual => 0.5,
                LogitKind::Confident if class == target => 0.0,
                LogitKind::Confident => -23.0 - uniform.abs(),
            };
        }
    }
    if let Some(Fault::LogitsLength(delta)) = fault {
        let grown = elements as isize + isize::from(*delta);
        let len = if grown >= 0 {
            grown as usize
        } else {
            elements + delta.unsigned_abs() as usize
        };
        logits.resize(len, 0.25);
        expected = Expected::Error(Error::LogitsLength {
            actual: len,
            expected: elements,
            rows,
            classes,
        });
    }

    // The separate gradient.
    let separate = matches!(case.call, Call::Separate | Call::Forward);
    let mut gradient = (case.dtype, elements);
    match fault {
        Some(Fault::GradientLength(delta)) if separate => {
            let grown = elements as isize + isize::from(*delta);
            gradient.1 = if grown >= 0 {
                grown as usize
            } else {
                elements + delta.unsigned_abs() as usize
            };
            expected = Expected::Error(Error::GradientLength {
                actual: gradient.1,
                expected: elements,
            });
        }
        Some(Fault::GradientType) if separate => {
            gradient.0 = match case.dtype {
                Dtype::F32 => Dtype::Bf16,
                Dtype::F16 | Dtype::Bf16 => Dtype::F32,
            };
            expected = Expected::InvalidOption;
        }
        _ => {}
    }

    Built {
        shape,
        loss,
        logits: Stored::rounded(case.dtype, &logits),
        targets,
        call: case.call,
        gradient,
        expected,
    }
}

// ---------------------------------------------------------------------------
// Running a call.

#[derive(Debug)]
struct Outcome {
    loss: Loss,
    /// `forward` only: the z-loss output.
    z_loss: Option<Option<Loss>>,
    /// The gradient, widened (absent for `loss`).
    gradient: Option<Vec<f32>>,
    /// `forward` only.
    lse: Option<Vec<f32>>,
    argmax: Option<Vec<u32>>,
}

fn run(backend: &dyn Backend, built: &Built) -> xent::Result<Outcome> {
    let (loss, shape, targets) = (&built.loss, built.shape, built.targets.view());
    let logits = built.logits.view();
    let mut outcome = Outcome {
        loss: Loss::Reduced(f32::NAN),
        z_loss: None,
        gradient: None,
        lse: None,
        argmax: None,
    };
    match built.call {
        Call::Loss => outcome.loss = loss.loss(backend, logits, targets, shape)?,
        Call::Separate => {
            let mut gradient = Stored::nan(built.gradient.0, built.gradient.1);
            outcome.loss = loss.loss_and_grad(backend, logits, targets, shape, gradient.view_mut())?;
            outcome.gradient = Some(gradient.widened());
        }
        Call::InPlace => {
            let mut values = built.logits.clone();
            outcome.loss = loss.loss_and_grad_in_place(backend, values.view_mut(), targets, shape)?;
            outcome.gradient = Some(values.widened());
        }
        Call::Forward => {
            let mut gradient = Stored::nan(built.gradient.0, built.gradient.1);
            let output = loss.forward(backend, logits, targets, shape, Some(gradient.view_mut()), true)?;
            outcome.loss = output.loss;
            outcome.z_loss = Some(output.z_loss);
            outcome.gradient = Some(gradient.widened());
            outcome.lse = output.lse;
            outcome.argmax = output.argmax;
        }
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// Tolerances.

const EPS: f64 = f32::EPSILON as f64;
/// Ulps of error allowed in each transformed logit `x'` (f32 products, tanh).
const TRANSFORM_ULPS: f64 = 4.0;

/// An option as the f64 the reference uses (the shortest decimal of the f32).
fn option_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `x'` in f64, as the reference computes it.
fn transform_f64(logit: f32, options: &CrossEntropyOptions) -> f64 {
    let scaled = option_f64(options.logit_scale) * f64::from(logit);
    match options.softcap {
        Some(cap) => option_f64(cap) * (scaled / option_f64(cap)).tanh(),
        None => scaled,
    }
}

/// Per-value tolerances of one valid case.
///
/// f32 arithmetic on exact inputs: loss within 1e-5 relative (1e-9 absolute),
/// gradient within 2e-6 of its largest entry, plus 4 ulps of the largest term a
/// row's gradient entry is the difference of (`|s|·(A + 2z·|lse|)/divisor`, for
/// confident rows, where every entry is tiny). With a logit scale or softcap the
/// transformed logits `x'` are themselves rounded (`δ = 4 ulps` of `|x'|`, plus
/// `4·eps·t` with softcap since tanh's error is absolute near 0), and to first
/// order the loss moves by `Σ |dL/dx'|·δ`, `p_c` by `2·p_c·max δ`, and the
/// softcap derivative `s·(1 − (x'/t)²)` by `2·|s|·δ/t`.
struct Tolerances {
    /// Per row (reduction `none`) or one entry (reduced).
    loss: Vec<f64>,
    z_loss: f64,
    gradient: Vec<f64>,
    /// x' in f64, for the argmax check.
    transformed: Vec<f64>,
    /// Per row: the largest δ.
    delta: Vec<f64>,
}

fn tolerances(built: &Built, widened: &[f32], reference: &ReferenceCrossEntropy) -> Tolerances {
    let (shape, options) = (built.shape, built.loss.options());
    let targets = built.targets.view();
    let transformed: Vec<f64> = widened.iter().map(|&logit| transform_f64(logit, options)).collect();
    let has_transform = options.softcap.is_some() || options.logit_scale != 1.0;
    let cap = options.softcap.map(option_f64);
    let delta: Vec<f64> = transformed
        .iter()
        .map(|&value| match cap {
            _ if !has_transform => 0.0,
            Some(cap) => TRANSFORM_ULPS * EPS * (value.abs() + cap),
            None => TRANSFORM_ULPS * EPS * value.abs(),
        })
        .collect();
    // d L / d x': the reference on the transformed logits without the transform.
    let d_transformed = if has_transform {
        let plain = CrossEntropyOptions {
            softcap: None,
            logit_scale: 1.0,
            ..options.clone()
        };
        let rounded: Vec<f32> = transformed.iter().map(|&value| value as f32).collect();
        cross_entropy_f64(&rounded, targets, shape, &plain).gradient
    } else {
        vec![0.0; widened.len()]
    };

    let classes = shape.classes;
    let weight = |class: usize| f64::from(options.class_weight(class).expect("a weight per class"));
    let smoothing = option_f64(options.label_smoothing);
    let z = option_f64(options.z_loss);
    let scale = option_f64(options.logit_scale).abs();
    let weight_sum: f64 = (0..classes).map(weight).sum();
    let class_indices = targets.to_i64();
    let soft = targets.is_probabilities();
    let ignored: Vec<bool> = (0..shape.rows)
        .map(|row| !soft && class_indices[row] == options.ignore_index)
        .collect();
    // Each row's target mass A (0 when ignored) and share of the mean's divisor.
    let (mass, share): (Vec<f64>, Vec<f64>) = (0..shape.rows)
        .map(|row| match &built.targets {
            StoredTargets::Probabilities(probabilities) => {
                let mass = (0..classes)
                    .map(|class| {
                        let t = f64::from(probabilities[shape.index(row, class)]);
                        weight(class) * ((1.0 - smoothing) * t + smoothing / classes as f64)
                    })
                    .sum();
                (mass, 1.0)
            }
            _ if ignored[row] => (0.0, 0.0),
            _ => {
                let target = class_indices[row] as usize;
                (
                    (1.0 - smoothing) * weight(target) + smoothing / classes as f64 * weight_sum,
                    weight(target),
                )
            }
        })
        .unzip();
    let divisor = match options.reduction {
        Reduction::Mean => share.iter().sum::<f64>(),
        _ => 1.0,
    };
    let inverse = if divisor > 0.0 { 1.0 / divisor } else { 0.0 };

    let mut gradient = vec![0.0; widened.len()];
    let mut row_loss = Vec::with_capacity(shape.rows);
    let mut row_delta = Vec::with_capacity(shape.rows);
    let mut z_loss = 0.0;
    for row in 0..shape.rows {
        let lse = reference.row_lse[row];
        let z_slope = if ignored[row] { 0.0 } else { 2.0 * z * lse.abs() };
        let delta_max = (0..classes)
            .map(|class| delta[shape.index(row, class)])
            .fold(0.0, f64::max);
        let floor = TRANSFORM_ULPS * EPS * scale * (mass[row] + z_slope) * inverse;
        let mut loss = 0.0;
        for class in 0..classes {
            let element = shape.index(row, class);
            let probability = (transformed[element] - lse).exp();
            let d = d_transformed[element].abs();
            loss += d * delta[element];
            let mut tolerance =
                floor + 2.0 * scale * (mass[row] + z_slope + 2.0 * z) * inverse * probability * delta_max;
            if let Some(cap) = cap {
                tolerance += 2.0 * scale * d * delta[element] / cap;
            }
            gradient[element] = tolerance;
        }
        row_loss.push(loss);
        row_delta.push(delta_max);
        if !ignored[row] {
            z_loss += z_slope * delta_max * inverse;
        }
    }
    let largest = reference
        .gradient
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    let (rounding, floor16) = match &built.logits {
        Stored::F32(_) => (0.0, 0.0),
        // f16 keeps 11 bits: one ulp, whichever way the GPU's conversion rounds.
        Stored::F16(_) => (1.0 / 1024.0, 2.0f64.powi(-24)),
        // bf16 keeps 8 bits, rounded to nearest: half an ulp.
        Stored::Bf16(_) => (1.0 / 256.0, 1e-38),
    };
    for (tolerance, &value) in gradient.iter_mut().zip(&reference.gradient) {
        *tolerance += 2e-6 * largest;
        *tolerance += rounding * (value.abs() + *tolerance) + floor16;
    }
    let loss = match options.reduction {
        Reduction::None => row_loss
            .iter()
            .zip(&reference.row_losses)
            .map(|(&extra, &value)| 1e-5 * value.abs() + 1e-9 + extra)
            .collect(),
        _ => vec![1e-5 * reference.loss.abs() + 1e-9 + row_loss.iter().sum::<f64>()],
    };
    Tolerances {
        loss,
        z_loss: 1e-5 * reference.z_loss.abs() + 1e-9 + z_loss,
        gradient,
        transformed,
        delta: row_delta,
    }
}

/// `actual` within `tolerance` of `expected`, NaN only where the reference is NaN.
fn close(actual: f32, expected: f64, tolerance: f64) -> bool {
    if expected.is_nan() {
        return actual.is_nan();
    }
    (f64::from(actual) - expected).abs() <= tolerance
}

// ---------------------------------------------------------------------------
// The checks.

fn check_values(
    name: &str,
    built: &Built,
    outcome: &Outcome,
    reference: &ReferenceCrossEntropy,
    tolerances: &Tolerances,
) -> Result<(), TestCaseError> {
    let options = built.loss.options();
    match (&outcome.loss, options.reduction) {
        (Loss::Reduced(value), Reduction::Mean | Reduction::Sum) => prop_assert!(
            close(*value, reference.loss, tolerances.loss[0]),
            "{name}: loss {value:e} vs reference {:e} (tolerance {:e})",
            reference.loss,
            tolerances.loss[0]
        ),
        (Loss::PerRow(values), Reduction::None) => {
            prop_assert_eq!(values.len(), built.shape.rows, "{}: per-row losses", name);
            for (row, (&value, &expected)) in values.iter().zip(&reference.row_losses).enumerate() {
                prop_assert!(
                    close(value, expected, tolerances.loss[row]),
                    "{name}: row {row} loss {value:e} vs reference {expected:e} (tolerance {:e})",
                    tolerances.loss[row]
                );
            }
        }
        (loss, reduction) => prop_assert!(false, "{name}: {loss:?} for reduction {reduction}"),
    }
    if let Some(z_loss) = &outcome.z_loss {
        match (z_loss, options.z_loss > 0.0) {
            (None, false) => {}
            (Some(Loss::Reduced(value)), true) if options.reduction != Reduction::None => prop_assert!(
                close(*value, reference.z_loss, tolerances.z_loss),
                "{name}: z-loss {value:e} vs reference {:e}",
                reference.z_loss
            ),
            (Some(Loss::PerRow(values)), true) if options.reduction == Reduction::None => {
                for (row, (&value, &expected)) in values.iter().zip(&reference.row_z).enumerate() {
                    prop_assert!(
                        close(value, expected, 1e-5 * expected.abs() + 1e-9 + tolerances.z_loss),
                        "{name}: row {row} z-loss {value:e} vs reference {expected:e}"
                    );
                }
            }
            (other, _) => prop_assert!(false, "{name}: z-loss output {other:?} with z = {}", options.z_loss),
        }
    }
    if let Some(gradient) = &outcome.gradient {
        prop_assert_eq!(gradient.len(), reference.gradient.len(), "{}: gradient length", name);
        for (index, ((&value, &expected), &tolerance)) in gradient
            .iter()
            .zip(&reference.gradient)
            .zip(&tolerances.gradient)
            .enumerate()
        {
            prop_assert!(
                close(value, expected, tolerance),
                "{name}: gradient[{index}] {value:e} vs reference {expected:e} (tolerance {tolerance:e})"
            );
        }
    }
    if let Some(lse) = &outcome.lse {
        for (row, (&value, &expected)) in lse.iter().zip(&reference.row_lse).enumerate() {
            let tolerance = 1e-6 * (1.0 + expected.abs()) + 2.0 * tolerances.delta[row];
            prop_assert!(
                close(value, expected, tolerance),
                "{name}: row {row} lse {value:e} vs reference {expected:e}"
            );
        }
    }
    if let Some(argmax) = &outcome.argmax {
        let shape = built.shape;
        prop_assert_eq!(argmax.len(), shape.rows, "{}: argmax length", name);
        for (row, (&actual, &expected)) in argmax.iter().zip(&reference.row_argmax).enumerate() {
            if actual == expected {
                continue;
            }
            // Rounding of x' may tie or reorder nearly equal logits; an exact tie
            // in f64 must still go to the first index.
            prop_assert!((actual as usize) < shape.classes, "{name}: row {row} argmax {actual}");
            let value = |class: u32| tolerances.transformed[shape.index(row, class as usize)];
            let (best, chosen) = (value(expected), value(actual));
            let slack = 2.0 * tolerances.delta[row] + 4.0 * EPS * best.abs();
            prop_assert!(
                chosen != best && chosen >= best - slack,
                "{name}: row {row} argmax {actual} (x' = {chosen:e}) vs reference {expected} (x' = {best:e})"
            );
        }
    }
    Ok(())
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let built = build(case);
    let widened = built.logits.widened();
    let reference = matches!(built.expected, Expected::Values).then(|| {
        let reference = cross_entropy_f64(&widened, built.targets.view(), built.shape, built.loss.options());
        let tolerances = tolerances(&built, &widened, &reference);
        (reference, tolerances)
    });
    let mut errors: Vec<(&str, Error)> = Vec::new();
    for (name, backend) in common::all_backends() {
        match (run(backend, &built), &built.expected) {
            (Ok(outcome), Expected::Values) => {
                let (reference, tolerances) = reference.as_ref().expect("reference of a valid case");
                check_values(name, &built, &outcome, reference, tolerances)?;
            }
            (Ok(outcome), expected) => prop_assert!(false, "{name}: expected {expected:?}, got {outcome:?}"),
            (Err(error), Expected::Values) => prop_assert!(false, "{name}: unexpected error {error:?}"),
            (Err(error), expected) => {
                match expected {
                    Expected::Error(expected) => prop_assert_eq!(&error, expected, "{}", name),
                    _ => prop_assert!(matches!(error, Error::InvalidOption(_)), "{name}: {error:?}"),
                }
                errors.push((name, error));
            }
        }
    }
    // The same variant and fields (hence the same message) on every backend.
    if let Some(((first, first_error), rest)) = errors.split_first() {
        for (name, error) in rest {
            prop_assert_eq!(
                std::mem::discriminant(error),
                std::mem::discriminant(first_error),
                "{} vs {}",
                name,
                first
            );
            prop_assert_eq!(error, first_error, "{} vs {}", name, first);
            prop_assert_eq!(error.to_string(), first_error.to_string(), "{} vs {}", name, first);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Valid inputs: every backend agrees with the f64 reference.
    #[test]
    fn valid_inputs_agree_with_the_reference(case in cases(target_kinds(), logit_kinds(), Just(None))) {
        check_case(&case)?;
    }

    /// One fault per case: every backend returns the same typed error, the one the
    /// fault calls for (the first bad row's for out-of-range targets).
    #[test]
    fn faulty_inputs_give_the_same_typed_error(
        case in cases(target_kinds(), logit_kinds(), faults().prop_map(Some))
    ) {
        check_case(&case)?;
    }

    /// Soft targets peaked on a row's largest logit keep the precision of a
    /// confident row on every backend: one row `[-23, 0]` with soft targets `[0, 1]`
    /// has the loss 1.0261880e-10 (the GPU once gave 0 here, from a spread sum
    /// taken relative to the row's first logit).
    #[test]
    fn peaked_soft_targets_on_confident_rows_keep_their_precision(
        case in cases(
            Just(TargetKind::Soft(SoftKind::OneHot)),
            prop_oneof![
                Just(LogitKind::Confident),
                Just(LogitKind::Uniform { magnitude: 30.0, offset: 0.0 }),
            ],
            Just(None),
        )
    ) {
        check_case(&case)?;
    }

    /// A weighted mean whose divisor `Σ w_y` over the rows not ignored is 0 (every
    /// kept row's target weighs 0): NaN loss and NaN gradient rows on every backend
    /// and in the reference, as in PyTorch (the CPU once gave zeros, the GPU NaN).
    #[test]
    fn weighted_means_over_a_zero_divisor_agree(
        case in cases(
            prop_oneof![Just(TargetKind::I64), Just(TargetKind::I32), Just(TargetKind::U32)],
            logit_kinds(),
            Just(None),
        )
        .prop_map(|mut case| {
            case.zero_target_weights = true;
            case.options.reduction = Reduction::Mean;
            case.options.ignore = IgnoreChoice::Default;
            case.options.ignored = 0.0;
            case.call = Call::Separate;
            case
        })
    ) {
        check_case(&case)?;
    }
}
