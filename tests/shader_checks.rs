//! `ContextOptions::shader_checks`: the checks change no bit. The categorical
//! cross-entropy (fused row kernel, cached and streamed rows, entries and
//! groups, f32 and bf16, with options; the split-row kernel; reductions of many
//! rows), the family (BCE, KL, entropy) and the sharded cross-entropy give the
//! same bits under `ShaderChecks::Full` (wgpu's defaults) as under
//! `ShaderChecks::Trusted` (no forced loop bound; the default), and the f64
//! reference's values. That every loop of every kernel ends by its form, which
//! `Trusted` relies on, is the unit test of src/gpu/kernels/loop_form.rs.

mod common;

use xent::half::bf16;
use xent::reference::cross_entropy_f64;
use xent::{
    BinaryCrossEntropyLoss, Context, ContextOptions, CrossEntropyLoss, Entropy, KlDivLoss, KlReduction, Logits,
    LogitsMut, Loss, RowSplit, ShaderChecks, Shape, ShardedCrossEntropy, Targets, VocabShard,
};

/// A context compiling its kernels with `checks`, workgroups of 256 and `row_split`.
fn context(checks: ShaderChecks, row_split: RowSplit) -> Option<Context> {
    common::open(ContextOptions {
        shader_checks: checks,
        workgroup_size: Some(common::GPU_WORKGROUP_SIZE),
        row_split,
        ..ContextOptions::default()
    })
}

/// Every output of one call, as bits: loss (and z-loss), lse, argmax, gradient.
fn cross_entropy_bits(
    context: &Context,
    loss: &CrossEntropyLoss,
    logits: Logits<'_>,
    targets: &[i64],
    shape: Shape,
) -> Vec<u32> {
    let (mut f32s, mut halves) = (vec![0f32; logits.len()], vec![bf16::ZERO; logits.len()]);
    let gradient = match logits {
        Logits::Bf16(_) => LogitsMut::Bf16(&mut halves),
        _ => LogitsMut::F32(&mut f32s),
    };
    let output = loss
        .forward(context, logits, targets, shape, Some(gradient), true)
        .expect("a cross-entropy call");
    let mut bits = common::loss_bits(&output.loss);
    bits.extend(output.z_loss.as_ref().map(common::loss_bits).unwrap_or_default());
    bits.extend(output.lse.unwrap_or_default().iter().map(|lse| lse.to_bits()));
    bits.extend(output.argmax.unwrap_or_default());
    bits.extend(f32s.iter().map(|entry| entry.to_bits()));
    bits.extend(halves.iter().map(|entry| u32::from(entry.to_bits())));
    bits
}

#[test]
fn full_checks_give_the_trusted_bits_and_the_reference() {
    let split = RowSplit::Forced {
        vec4s_per_invocation: 2,
        spin_limit: xent::DEFAULT_SPIN_LIMIT,
    };
    let (Some(trusted), Some(full), Some(trusted_split), Some(full_split)) = (
        context(ShaderChecks::Trusted, RowSplit::Off),
        context(ShaderChecks::Full, RowSplit::Off),
        context(ShaderChecks::Trusted, split),
        context(ShaderChecks::Full, split),
    ) else {
        return;
    };
    assert_eq!(trusted.shader_checks(), ShaderChecks::Trusted);
    assert_eq!(full.shader_checks(), ShaderChecks::Full);
    assert_eq!(ContextOptions::default().shader_checks, ShaderChecks::Trusted);
    let losses = [
        CrossEntropyLoss::new(),
        CrossEntropyLoss::new().label_smoothing(0.1).z_loss(1e-3).softcap(15.0),
    ];
    // Cached and streamed rows, groups and entries (C odd), many rows (the
    // two-level reduction above 65536 rows).
    let mut split_calls = 0;
    for (rows, classes) in [(6, 4096), (5, 20_000), (9, 1001), (70_000, 3)] {
        let shape = Shape::new(rows, classes);
        let (values, targets) = common::batch(rows, classes, common::Logits::Random, 7 + classes as u64);
        let halves: Vec<bf16> = values.iter().map(|&value| bf16::from_f32(value)).collect();
        let rounded: Vec<f32> = halves.iter().map(|half| half.to_f32()).collect();
        for (logits, seen) in [(Logits::F32(&values), &values), (Logits::Bf16(&halves), &rounded)] {
            for loss in &losses {
                let what = format!("{rows}x{classes} {:?} {:?}", logits.logit_type(), loss.options());
                let bits = |context| cross_entropy_bits(context, loss, logits, &targets, shape);
                let expected = bits(&trusted);
                assert!(bits(&full) == expected, "{what}: full");
                let truth = cross_entropy_f64(seen, Targets::from(&targets[..]), shape, loss.options());
                common::assert_loss(f32::from_bits(expected[0]), truth.loss, &what);
                if trusted_split.splits_rows(shape, logits.logit_type()) {
                    let split_bits = bits(&trusted_split);
                    assert!(bits(&full_split) == split_bits, "{what}: split, full");
                    common::assert_loss(f32::from_bits(split_bits[0]), truth.loss, &format!("{what}: split"));
                    split_calls += 1;
                }
            }
        }
    }
    assert!(split_calls >= 8, "the split-row kernel ran {split_calls} times");
}

#[test]
fn full_checks_give_the_trusted_bits_for_the_family_and_the_shards() {
    let (Some(trusted), Some(full)) = (
        context(ShaderChecks::Trusted, RowSplit::Off),
        context(ShaderChecks::Full, RowSplit::Off),
    ) else {
        return;
    };
    let shape = Shape::new(37, 1001);
    let (values, targets) = common::batch(shape.rows, shape.classes, common::Logits::Random, 99);
    let probabilities: Vec<f32> = values.iter().map(|value| 1.0 / (1.0 + (-value).exp())).collect();
    let log_probabilities: Vec<f32> = probabilities.iter().map(|value| value.ln()).collect();
    let family = |context: &Context| -> Vec<u32> {
        let mut bits = Vec::new();
        let mut gradient = vec![0f32; values.len()];
        let mut push = |loss: xent::Result<Loss>, gradient: &[f32]| {
            let Loss::Reduced(value) = loss.expect("a family call") else {
                panic!("a mean")
            };
            bits.push(value.to_bits());
            bits.extend(gradient.iter().map(|entry| entry.to_bits()));
        };
        let bce = BinaryCrossEntropyLoss::new().label_smoothing(0.1);
        push(
            bce.loss_and_grad(context, &values, &probabilities, shape, &mut gradient[..]),
            &gradient,
        );
        let kl = KlDivLoss::new().reduction(KlReduction::BatchMean);
        push(
            kl.loss_and_grad(context, &log_probabilities, &probabilities, shape, &mut gradient[..]),
            &gradient,
        );
        push(
            Entropy::new().loss_and_grad(context, &values, shape, &mut gradient[..]),
            &gradient,
        );
        bits
    };
    let expected = family(&trusted);
    assert!(family(&full) == expected, "the family under full checks");
    let (losses, _) =
        xent::reference::binary::bce_with_logits_f64(&values, &probabilities, shape.classes, None, None, 0.1);
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    common::assert_loss(f32::from_bits(expected[0]), mean, "BCE");

    let shard = VocabShard::new(500, 501, shape.classes).expect("a shard");
    let shard_logits: Vec<f32> = values
        .chunks(shape.classes)
        .flat_map(|row| row[500..].iter().copied())
        .collect();
    let sharded = ShardedCrossEntropy::new();
    let stats = |context: &Context| {
        let stats = sharded
            .stats(context, shard, &shard_logits, &targets[..])
            .expect("shard statistics");
        let sums = stats.sums_at(stats.max()).expect("the shard's own maxima");
        let mut bits: Vec<u64> = stats.max().iter().map(|max| max.to_bits()).collect();
        bits.extend(sums.max_count().iter().chain(sums.rest()).map(|sum| sum.to_bits()));
        bits
    };
    assert!(
        stats(&full) == stats(&trusted),
        "the shard statistics under full checks"
    );
}
