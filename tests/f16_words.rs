//! f16 on a device without `Features::SHADER_F16` (the adapter's device asked
//! for everything else it has: its limits, subgroups, timestamps): the kernels
//! read and write f16 as halves of 32-bit words with core WGSL's conversions,
//! as they do bf16. Every path of the categorical cross-entropy (aligned rows
//! in groups, odd vocabularies with straddling words, N-d rows through the
//! gradient-word pass, in place, options, the split-row kernel, row chunks)
//! and of the family (rows of odd C: straddling words) gives the same bits as
//! the same adapter with `SHADER_F16` and the f64 reference's values within
//! f16 rounding.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::half::f16;
use xent::reference::binary::bce_with_logits_f64;
use xent::reference::cross_entropy_f64;
use xent::reference::divergence::{RowTargets, entropy_f64, kl_div_f64, probability_cross_entropy_f64};
use xent::{
    BinaryCrossEntropyLoss, Context, ContextOptions, CrossEntropyLoss, CrossEntropyOptions, Entropy, InputKind,
    KlDivLoss, LogitType, LogitsMut, Loss, ProbabilityCrossEntropyLoss, Reduction, RowSplit, Shape, Targets,
};

use common::family::{Data, Kind};

/// The device with `options`, and the same adapter's device without
/// `SHADER_F16` (else with the same features and limits). The first is `None`
/// where the adapter has no `SHADER_F16` (then the default context is already
/// the second kind). `None` only without an adapter under `XENT_ALLOW_NO_GPU=1`.
fn contexts(options: ContextOptions) -> Option<(Option<Context>, Context)> {
    let native = common::open(options.clone())?;
    let adapter = native.adapter().clone();
    let descriptor = wgpu::DeviceDescriptor {
        label: Some("xent test device without SHADER_F16"),
        required_features: native.features() - wgpu::Features::SHADER_F16,
        required_limits: native.limits(),
        ..wgpu::DeviceDescriptor::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).expect("a device without SHADER_F16");
    let words = Context::from_wgpu(adapter, device, queue, options).expect("a context without SHADER_F16");
    assert!(!words.features().contains(wgpu::Features::SHADER_F16));
    let native = native.features().contains(wgpu::Features::SHADER_F16).then_some(native);
    Some((native, words))
}

/// Random logits rounded to f16 (spread over ±6) and class targets, some ignored.
fn batch(shape: Shape, seed: u64) -> (Vec<f16>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let logits = (0..shape.rows * shape.classes)
        .map(|_| f16::from_f32(rng.random_range(-6.0f32..6.0)))
        .collect();
    let targets = (0..shape.rows)
        .map(|row| {
            if row % 7 == 3 {
                -100
            } else {
                rng.random_range(0..shape.classes as i64)
            }
        })
        .collect();
    (logits, targets)
}

/// One cross-entropy call's loss bits and gradient bits (written over the
/// logits when `in_place`).
fn cross_entropy_bits(
    context: &Context,
    options: &CrossEntropyOptions,
    logits: &[f16],
    targets: &[i64],
    shape: Shape,
    in_place: bool,
) -> (Vec<u32>, Vec<u16>) {
    let loss = CrossEntropyLoss::with_options(options.clone());
    let mut gradient = logits.to_vec();
    let value = if in_place {
        loss.loss_and_grad_in_place(context, &mut gradient, targets, shape)
    } else {
        loss.forward(
            context,
            logits,
            targets,
            shape,
            Some(LogitsMut::F16(&mut gradient)),
            false,
        )
        .map(|output| output.loss)
    }
    .expect("f16 call");
    (
        common::loss_bits(&value),
        gradient.iter().map(|value| value.to_bits()).collect(),
    )
}

/// The words device's call against the native device's bits and the f64
/// reference, for one shape and option set.
fn assert_cross_entropy(options: ContextOptions, shape: Shape, call_options: &CrossEntropyOptions, label: &str) {
    let Some((native, words)) = contexts(options) else {
        return;
    };
    let (logits, targets) = batch(shape, shape.classes as u64);
    let widened: Vec<f32> = logits.iter().map(|value| value.to_f32()).collect();
    let truth = cross_entropy_f64(&widened, Targets::I64(&targets), shape, call_options);
    for in_place in [false, true] {
        let label = format!("{label}, in place {in_place}");
        let (loss, gradient) = cross_entropy_bits(&words, call_options, &logits, &targets, shape, in_place);
        match loss[..] {
            [reduced] => common::assert_loss(f32::from_bits(reduced), truth.loss, &label),
            _ => {
                let rows: Vec<f32> = loss.iter().map(|&bits| f32::from_bits(bits)).collect();
                common::assert_row_losses(&rows, &truth.row_losses, &label);
            }
        }
        let gradient_values: Vec<f32> = gradient.iter().map(|&bits| f16::from_bits(bits).to_f32()).collect();
        common::assert_gradient_within_rounding(&gradient_values, &truth.gradient, LogitType::F16, &label);
        if let Some(native) = &native {
            let expected = cross_entropy_bits(native, call_options, &logits, &targets, shape, in_place);
            assert!(
                (loss.clone(), gradient) == expected,
                "{label}: bits differ from SHADER_F16's"
            );
        }
    }
}

#[test]
fn aligned_rows_in_groups() {
    let options = CrossEntropyOptions::default();
    assert_cross_entropy(ContextOptions::default(), Shape::new(7, 1000), &options, "7x1000");
}

#[test]
fn odd_vocabularies_with_straddling_words_and_every_option() {
    let plain = CrossEntropyOptions::default();
    assert_cross_entropy(ContextOptions::default(), Shape::new(5, 1001), &plain, "5x1001");
    let every_option = CrossEntropyOptions {
        reduction: Reduction::None,
        weight: Some((0..37).map(|class| 0.5 + (class % 5) as f32 * 0.25).collect()),
        label_smoothing: 0.1,
        z_loss: 1e-3,
        softcap: Some(20.0),
        ..CrossEntropyOptions::default()
    };
    assert_cross_entropy(
        ContextOptions::default(),
        Shape::new(9, 37),
        &every_option,
        "9x37, options",
    );
}

#[test]
fn nd_rows_through_the_gradient_word_pass() {
    let options = CrossEntropyOptions::default();
    assert_cross_entropy(
        ContextOptions::default(),
        Shape::nd(3, 5, &[3, 3]).expect("shape"),
        &options,
        "N-d 3x5x3x3",
    );
}

#[test]
fn split_rows_and_row_chunks() {
    let split = ContextOptions {
        workgroup_size: Some(64),
        row_split: RowSplit::Forced {
            vec4s_per_invocation: 1,
            spin_limit: xent::DEFAULT_SPIN_LIMIT,
        },
        ..ContextOptions::default()
    };
    let options = CrossEntropyOptions::default();
    if let Some((_, words)) = contexts(split.clone()) {
        assert!(words.splits_rows(Shape::new(3, 4000), LogitType::F16));
    }
    assert_cross_entropy(split, Shape::new(3, 4000), &options, "split 3x4000");
    let chunked = ContextOptions {
        max_binding_size: Some(64 << 10),
        ..ContextOptions::default()
    };
    assert_cross_entropy(chunked, Shape::new(64, 1001), &options, "chunked 64x1001");
}

/// `values` rounded to f16 (the targets, f32, hold the same values on every side).
fn f16_rounded(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&value| f16::from_f32(value).to_f32()).collect()
}

/// One family call's loss bits and f16 gradient bits.
fn family_bits(context: &Context, kind: Kind, data: &Data, input: &[f16], shape: Shape) -> (Vec<u32>, Vec<u16>) {
    let mut gradient = vec![f16::ZERO; input.len()];
    let soft = f16_rounded(&data.soft);
    let loss: xent::Result<Loss> = match kind {
        Kind::BceLogits => BinaryCrossEntropyLoss::new().loss_and_grad(context, input, &soft[..], shape, &mut gradient),
        Kind::Kl => KlDivLoss::new().loss_and_grad(context, input, &soft[..], shape, &mut gradient),
        Kind::EntropyLogits => {
            Entropy::new()
                .input(InputKind::Logits)
                .loss_and_grad(context, input, shape, &mut gradient)
        }
        Kind::PceClasses => {
            ProbabilityCrossEntropyLoss::new().loss_and_grad(context, input, &data.classes[..], shape, &mut gradient)
        }
        _ => unreachable!("not timed here"),
    };
    let loss = loss.expect("f16 family call");
    (
        common::loss_bits(&loss),
        gradient.iter().map(|value| value.to_bits()).collect(),
    )
}

/// BCE and KL (elementwise), entropy and probability cross-entropy (rows) on
/// rows of an odd count of f16 entries: the same bits with and without
/// `SHADER_F16`, and the f64 reference's mean loss of the same f16 values.
#[test]
fn family_rows_of_odd_length() {
    let Some((native, words)) = contexts(ContextOptions::default()) else {
        return;
    };
    let shape = Shape::new(37, 29);
    for kind in [Kind::BceLogits, Kind::Kl, Kind::EntropyLogits, Kind::PceClasses] {
        let data = Data::new(kind, shape, 41);
        let input: Vec<f16> = data.input.iter().map(|&value| f16::from_f32(value)).collect();
        let (loss, gradient) = family_bits(&words, kind, &data, &input, shape);
        assert!(
            gradient.iter().any(|&bits| bits != 0),
            "{kind:?}: a gradient was written"
        );
        let wide: Vec<f32> = input.iter().map(|value| value.to_f32()).collect();
        let soft = f16_rounded(&data.soft);
        let classes = shape.classes;
        let (losses, _) = match kind {
            Kind::BceLogits => bce_with_logits_f64(&wide, &soft, classes, None, None, 0.0),
            Kind::Kl => kl_div_f64(&wide, &soft, false),
            Kind::EntropyLogits => entropy_f64(&wide, classes, true),
            _ => probability_cross_entropy_f64(&wide, RowTargets::Classes(&data.classes), classes),
        };
        // Every loss here is a mean over its per-element or per-row losses.
        let expected = losses.iter().sum::<f64>() / losses.len() as f64;
        common::assert_loss(f32::from_bits(loss[0]), expected, &format!("{kind:?}"));
        if let Some(native) = &native {
            let expected = family_bits(native, kind, &data, &input, shape);
            assert!((loss, gradient) == expected, "{kind:?}: bits differ from SHADER_F16's");
        }
    }
}
