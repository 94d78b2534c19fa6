//! Bad input gives the right typed error on both backends (never a panic), and an
//! out-of-range target in device-resident buffers is caught on the GPU.

mod common;

use xent::{
    Backend, BinaryCrossEntropyLoss, Context, Cpu, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Error, FamilyInputs,
    FamilyTargets, GradientOutput, LogitType, Loss, Shape, TargetType, Targets, UpstreamGradient,
};

fn backends() -> Vec<(&'static str, &'static dyn Backend)> {
    let mut backends: Vec<(&'static str, &'static dyn Backend)> = vec![("cpu", &Cpu)];
    if let Some(context) = common::gpu() {
        backends.push(("gpu", context));
    }
    backends
}

fn loss_error(backend: &dyn Backend, logits: &[f32], targets: Targets<'_>, shape: Shape) -> Error {
    match CrossEntropyLoss::new().loss(backend, logits, targets, shape) {
        Ok(loss) => panic!("expected an error, got {loss:?}"),
        Err(error) => error,
    }
}

#[test]
fn logits_length_must_match_the_shape() {
    for (name, backend) in backends() {
        let error = loss_error(backend, &[0.0; 5], Targets::I64(&[0, 1]), Shape::new(2, 3));
        assert_eq!(
            error,
            Error::LogitsLength {
                actual: 5,
                expected: 6,
                rows: 2,
                classes: 3
            },
            "{name}"
        );
    }
}

#[test]
fn empty_shapes_are_rejected() {
    for (name, backend) in backends() {
        let error = loss_error(backend, &[], Targets::I64(&[]), Shape::new(0, 3));
        assert_eq!(error, Error::EmptyShape { rows: 0, classes: 3 }, "{name}");
        let error = loss_error(backend, &[], Targets::I64(&[0, 0]), Shape::new(2, 0));
        assert_eq!(error, Error::EmptyShape { rows: 2, classes: 0 }, "{name}");
    }
}

/// Class indices and argmaxes are u32: more classes is an error on every
/// backend, before any length is compared (no 17 GB of logits needed to find out).
#[test]
fn more_classes_than_u32_indices_is_too_large() {
    for (name, backend) in backends() {
        let error = loss_error(backend, &[0.0; 2], Targets::I64(&[0]), Shape::new(1, 1usize << 32));
        assert!(
            matches!(&error, Error::TooLarge(message) if message.contains("32-bit")),
            "{name}: {error:?}"
        );
    }
}

#[test]
fn targets_length_must_match_the_rows() {
    for (name, backend) in backends() {
        let error = loss_error(backend, &[0.0; 6], Targets::I32(&[0, 1, 2]), Shape::new(2, 3));
        assert_eq!(error, Error::TargetsLength { actual: 3, rows: 2 }, "{name}");
    }
}

#[test]
fn out_of_range_targets_name_the_row_and_value() {
    for (name, backend) in backends() {
        let logits = [0.0f32; 12];
        let shape = Shape::new(4, 3);
        let cases: [(Targets<'_>, usize, i64); 4] = [
            (Targets::I64(&[0, 1, 3, 7]), 2, 3),
            (Targets::I64(&[0, -1, 2, 2]), 1, -1),
            (Targets::I32(&[0, 1, 2, -99]), 3, -99),
            (Targets::U32(&[5, 1, 2, 0]), 0, 5),
        ];
        for (targets, row, value) in cases {
            let error = loss_error(backend, &logits, targets, shape);
            assert_eq!(
                error,
                Error::TargetOutOfRange { row, value, classes: 3 },
                "{name} {targets:?}"
            );
            assert_eq!(
                error.to_string(),
                format!("target {value} at row {row} is outside [0, 3)")
            );
        }
    }
}

#[test]
fn gradient_length_must_match_the_logits() {
    for (name, backend) in backends() {
        let mut gradient = [0.0f32; 5];
        let result =
            CrossEntropyLoss::new().loss_and_grad(backend, &[0.0; 6], &[0i64, 1][..], Shape::new(2, 3), &mut gradient);
        assert_eq!(result, Err(Error::GradientLength { actual: 5, expected: 6 }), "{name}");
    }
}

#[test]
fn a_bad_call_leaves_the_context_usable() {
    let Some(context) = common::gpu() else { return };
    let _ = CrossEntropyLoss::new().loss(context, &[0.0; 6], &[0i64, 9][..], Shape::new(2, 3));
    let loss = CrossEntropyLoss::new()
        .loss(context, &[0.0; 6], &[0i64, 2][..], Shape::new(2, 3))
        .expect("valid call");
    assert!((f64::from(loss.value().expect("reduced")) - 3f64.ln()).abs() < 1e-6);
}

/// A non-negative `ignore_index` with probability targets is `Error::InvalidOption`
/// on every door, as PyTorch raises `ignore_index is not supported for floating
/// point target`; a negative one (the default −100 included) is unused. Found by
/// scripts/torch_sweep.py: xent silently ignored it.
#[test]
fn a_non_negative_ignore_index_with_probabilities_is_refused() {
    let (logits, probabilities, shape) = ([0.5f32, -1.0, 2.0, 0.0], [0.25f32, 0.75, 1.0, 0.0], Shape::new(2, 2));
    let soft = Targets::Probabilities(&probabilities);
    let expected =
        0.25 * (1.0f64 + (-1.5f64).exp()).ln() + 0.75 * (1.0f64 + 1.5f64.exp()).ln() + (1.0f64 + (-2.0f64).exp()).ln();
    let refused = |result: Result<Loss, Error>| matches!(result, Err(Error::InvalidOption(message)) if message.contains("ignore_index 0"));
    for (name, backend) in backends() {
        let sum = |ignore_index| {
            CrossEntropyLoss::new()
                .ignore_index(ignore_index)
                .reduction(xent::Reduction::Sum)
                .loss(backend, &logits, soft, shape)
        };
        assert!(refused(sum(0)), "{name}: {:?}", sum(0));
        assert!(sum(1).is_err(), "{name}");
        for ignore_index in [-100, -1] {
            let value = sum(ignore_index)
                .expect("a negative ignore_index is unused")
                .value()
                .expect("reduced");
            assert!(
                (f64::from(value) - expected).abs() < 1e-5,
                "{name} {ignore_index}: {value} vs {expected}"
            );
        }
    }
    if let Some(context) = common::gpu() {
        let loss = CrossEntropyLoss::new().ignore_index(0);
        let device = common::device_loss(context, &loss, &logits, soft, shape, true);
        assert!(refused(device), "device-resident");
    }
}

/// Records into our own encoder, submits, reads: the device-resident door.
fn device_call(context: &Context, logits: &[f32], targets: Targets<'_>, shape: Shape) -> Result<Loss, Error> {
    common::device_loss(context, &CrossEntropyLoss::new(), logits, targets, shape, false)
}

#[test]
fn device_targets_out_of_range_are_caught_on_the_gpu() {
    let Some(context) = common::gpu() else { return };
    let logits = [0.5f32; 4000];
    let shape = Shape::new(1000, 4);
    let mut targets = vec![1i64; 1000];
    targets[611] = -5;
    targets[900] = 4;
    targets[700] = 1 << 40;
    assert_eq!(
        device_call(context, &logits, Targets::I64(&targets), shape),
        Err(Error::TargetOutOfRange {
            row: 611,
            value: -5,
            classes: 4
        })
    );
    let mut targets = vec![3i32; 1000];
    targets[999] = 4;
    assert_eq!(
        device_call(context, &logits, Targets::I32(&targets), shape),
        Err(Error::TargetOutOfRange {
            row: 999,
            value: 4,
            classes: 4
        })
    );
    let mut targets = vec![0u32; 1000];
    targets[0] = u32::MAX;
    assert_eq!(
        device_call(context, &logits, Targets::U32(&targets), shape),
        Err(Error::TargetOutOfRange {
            row: 0,
            value: i64::from(u32::MAX),
            classes: 4
        })
    );
    let targets = vec![2i64; 1000];
    let loss = device_call(context, &logits, Targets::I64(&targets), shape).expect("valid targets");
    assert!((f64::from(loss.value().expect("reduced")) - 4f64.ln()).abs() < 1e-6);
}

#[test]
fn device_targets_are_checked_in_every_chunk() {
    let Some(context) = common::gpu_chunked() else { return };
    // 2 MiB bindings hold 3 rows of 131 072 logits: the bad row 4 is in the second chunk.
    let shape = Shape::new(6, 131_072);
    let logits = vec![0.0f32; shape.rows * shape.classes];
    let error = device_call(context, &logits, Targets::I64(&[0, 5, 7, 9, -3, 1]), shape);
    assert_eq!(
        error,
        Err(Error::TargetOutOfRange {
            row: 4,
            value: -3,
            classes: 131_072
        })
    );
}

#[test]
fn device_buffers_are_checked_before_recording() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(4, 8);
    let small = common::storage_buffer(context, &[0u8; 64]);
    let logits = common::storage_buffer(context, &[0u8; 128]);
    let targets = common::storage_buffer(context, &[0u8; 32]);
    let not_storage = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 128,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let outputs = DeviceOutputs::new(context, 4).expect("outputs");
    let record = |logits: &wgpu::Buffer, gradient: Option<&wgpu::Buffer>, outputs: &DeviceOutputs| {
        let gradient = gradient.map_or(GradientOutput::Skip, |gradient| {
            GradientOutput::Buffer(gradient.slice(..))
        });
        let inputs = DeviceInputs {
            logits: logits.slice(..),
            logit_type: LogitType::F32,
            targets: targets.slice(..),
            target_type: TargetType::I64,
            shape,
            gradient,
            upstream: UpstreamGradient::ONE,
        };
        let mut encoder = context
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        CrossEntropyLoss::new().record(context, &mut encoder, &inputs, outputs)
    };
    assert_eq!(
        record(&small, None, &outputs),
        Err(Error::BufferTooSmall {
            name: "logits",
            needed: 128,
            actual: 64
        })
    );
    assert_eq!(
        record(&logits, Some(&not_storage), &outputs),
        Err(Error::BufferUsage {
            name: "gradient",
            missing: wgpu::BufferUsages::STORAGE
        })
    );
    let too_few_rows = DeviceOutputs::new(context, 2).expect("outputs");
    assert!(matches!(
        record(&logits, None, &too_few_rows),
        Err(Error::BufferTooSmall { name: "outputs", .. })
    ));
    assert!(record(&logits, None, &outputs).is_ok());
}

/// The loss alone of whole buffers of f32 logits and i64 targets.
fn loss_only_inputs<'a>(logits: &'a wgpu::Buffer, targets: &'a wgpu::Buffer, shape: Shape) -> DeviceInputs<'a> {
    DeviceInputs {
        logits: logits.slice(..),
        logit_type: LogitType::F32,
        targets: targets.slice(..),
        target_type: TargetType::I64,
        shape,
        gradient: GradientOutput::Skip,
        upstream: UpstreamGradient::ONE,
    }
}

/// `DeviceOutputs` made by one context, recorded into or read through another
/// (another device): a typed error, not a panic inside wgpu or, worse, the
/// other device's buffer ids looked up among this one's buffers.
#[test]
fn outputs_of_another_context_are_an_error() {
    let (Some(context), Some(other)) = (common::gpu(), common::gpu_without_subgroups()) else {
        return;
    };
    let shape = Shape::new(2, 3);
    let logits = common::storage_buffer(context, bytemuck::cast_slice(&[0.0f32; 6]));
    let targets = common::storage_buffer(context, bytemuck::cast_slice(&[1i64, 2]));
    let probabilities = common::storage_buffer(context, bytemuck::cast_slice(&[0.5f32; 6]));
    let inputs = loss_only_inputs(&logits, &targets, shape);
    let family_inputs = FamilyInputs {
        input: logits.slice(..),
        input_type: LogitType::F32,
        targets: FamilyTargets::PerElement(probabilities.slice(..)),
        shape,
        gradient: None,
        upstream: UpstreamGradient::ONE,
    };
    let foreign = DeviceOutputs::new(other, 2).expect("outputs");
    let is_foreign = |result: Result<(), Error>| matches!(result, Err(Error::InvalidOption(message)) if message.contains("another device"));
    let mut encoder = context.device().create_command_encoder(&Default::default());
    assert!(is_foreign(CrossEntropyLoss::new().record(
        context,
        &mut encoder,
        &inputs,
        &foreign
    )));
    assert!(is_foreign(BinaryCrossEntropyLoss::new().record(
        context,
        &mut encoder,
        &family_inputs,
        &foreign
    )));
    // Recorded and submitted on its own context, then read through the other one.
    let outputs = DeviceOutputs::new(context, 2).expect("outputs");
    CrossEntropyLoss::new()
        .record(context, &mut encoder, &inputs, &outputs)
        .expect("record");
    context.queue().submit([encoder.finish()]);
    assert!(is_foreign(outputs.read(other).map(|_| ())));
    assert!(is_foreign(outputs.read_all(other, true).map(|_| ())));
    let loss = outputs.read(context).expect("read").value().expect("mean");
    assert!((loss - 3f32.ln()).abs() < 1e-6, "{loss}");
}

/// Reading outputs whose last recording was never submitted is an error, not the
/// results of an earlier call passed off as its own: forgotten, or submitted
/// out of order behind a later recording.
#[test]
fn a_recording_that_was_not_submitted_is_an_error() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(2, 3);
    let logits = common::storage_buffer(context, bytemuck::cast_slice(&[0.0f32, 1.0, 2.0, 0.0, 0.0, 0.0]));
    let first_targets = common::storage_buffer(context, bytemuck::cast_slice(&[2i64, 0]));
    let second_targets = common::storage_buffer(context, bytemuck::cast_slice(&[0i64, 0]));
    let outputs = DeviceOutputs::new(context, 2).expect("outputs");
    let record = |targets: &wgpu::Buffer| {
        let mut encoder = context.device().create_command_encoder(&Default::default());
        CrossEntropyLoss::new()
            .record(
                context,
                &mut encoder,
                &loss_only_inputs(&logits, targets, shape),
                &outputs,
            )
            .expect("record");
        encoder.finish()
    };
    // ln(1 + e + e²) − 2 and ln(1 + e + e²), each averaged with ln 3.
    let lse = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
    let first = (lse - 2.0 + 3f64.ln()) / 2.0;
    let second = (lse + 3f64.ln()) / 2.0;
    let read = || outputs.read(context).map(|loss| f64::from(loss.value().expect("mean")));
    let not_submitted = |result: Result<f64, Error>| matches!(result, Err(Error::Readback(message)) if message.contains("not submitted"));
    context.queue().submit([record(&first_targets)]);
    assert!((read().expect("read") - first).abs() < 1e-6);
    let second_call = record(&second_targets);
    assert!(not_submitted(read()), "the second call is not submitted yet");
    context.queue().submit([second_call]);
    assert!((read().expect("read") - second).abs() < 1e-6);
    // Two recordings, only the earlier submitted: the outputs describe the later one.
    let earlier = record(&first_targets);
    let _later = record(&second_targets);
    context.queue().submit([earlier]);
    assert!(
        not_submitted(read()),
        "only the earlier of two recordings was submitted"
    );
}

#[test]
fn reading_outputs_before_recording_is_an_error() {
    let Some(context) = common::gpu() else { return };
    let outputs = DeviceOutputs::new(context, 4).expect("outputs");
    assert!(matches!(outputs.read(context), Err(Error::Readback(_))));
}

#[test]
fn an_unknown_adapter_name_is_an_error() {
    if common::gpu().is_none() {
        return;
    }
    let options = xent::ContextOptions {
        adapter_name: Some("no such adapter 1234".into()),
        ..Default::default()
    };
    assert!(matches!(Context::with_options(options), Err(Error::NoAdapter(_))));
}

#[test]
fn outputs_stay_usable_after_a_gpu_detected_error() {
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(2, 3);
    let logits = common::storage_buffer(context, bytemuck::cast_slice(&[0.0f32; 6]));
    let outputs = DeviceOutputs::new(context, shape.rows).expect("outputs");
    let run = |targets: &[i64]| {
        let targets = common::storage_buffer(context, bytemuck::cast_slice(targets));
        let inputs = loss_only_inputs(&logits, &targets, shape);
        let mut encoder = context
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        CrossEntropyLoss::new().record(context, &mut encoder, &inputs, &outputs)?;
        context.queue().submit([encoder.finish()]);
        outputs.read(context)
    };
    assert_eq!(
        run(&[0, 3]),
        Err(Error::TargetOutOfRange {
            row: 1,
            value: 3,
            classes: 3
        })
    );
    let loss = run(&[0, 2]).expect("the same outputs work again");
    assert!((f64::from(loss.value().expect("reduced")) - 3f64.ln()).abs() < 1e-6);
}

/// Buffers of another context's device in `DeviceInputs` / `FamilyInputs`: the
/// contexts xent makes share one wgpu instance, so wgpu sees the buffer is
/// another device's, and the call is `Error::Gpu` from wgpu's validation. On
/// two instances the buffer would be looked up among this device's own buffers
/// and taken for another one of them: here a buffer of the same size, so the
/// call would succeed and read the wrong logits. GL contexts keep an instance
/// each (README), so on GL only the last part runs: the context's own call.
#[test]
fn input_buffers_of_another_device_are_an_error() {
    let (Some(context), Some(other)) = (common::gpu(), common::gpu_without_subgroups()) else {
        return;
    };
    let shape = Shape::new(2, 3);
    let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    // Both devices hold a buffer of each size, so a lookup of the other's ids
    // among this device's buffers finds buffers that fit.
    let own_logits = common::storage_buffer(context, bytemuck::cast_slice(&logits));
    let own_targets = common::storage_buffer(context, bytemuck::cast_slice(&[1i64, 2]));
    let foreign_logits = common::storage_buffer(other, bytemuck::cast_slice(&logits));
    let foreign_targets = common::storage_buffer(other, bytemuck::cast_slice(&[1i64, 2]));
    let outputs = DeviceOutputs::new(context, 2).expect("outputs");
    let is_mismatch = |result: Result<(), Error>| {
        matches!(&result, Err(Error::Gpu(message)) if message.contains("doesn't match Device"))
            .then_some(())
            .ok_or(result)
    };
    // wgpu marks an encoder invalid after such an error: each call gets a new one.
    let encoder = || context.device().create_command_encoder(&Default::default());
    let shared_instance = context.adapter_info().backend != wgpu::Backend::Gl;
    for (logits, targets) in [(&foreign_logits, &own_targets), (&own_logits, &foreign_targets)] {
        let inputs = loss_only_inputs(logits, targets, shape);
        if shared_instance {
            let result = CrossEntropyLoss::new().record(context, &mut encoder(), &inputs, &outputs);
            is_mismatch(result).expect("a device mismatch");
        }
    }
    let family_inputs = FamilyInputs {
        input: foreign_logits.slice(..),
        input_type: LogitType::F32,
        targets: FamilyTargets::PerElement(own_logits.slice(..)),
        shape,
        gradient: None,
        upstream: UpstreamGradient::ONE,
    };
    if shared_instance {
        let result = BinaryCrossEntropyLoss::new().record(context, &mut encoder(), &family_inputs, &outputs);
        is_mismatch(result).expect("a device mismatch");
    }
    // The context goes on working with its own buffers.
    let inputs = loss_only_inputs(&own_logits, &own_targets, shape);
    let mut encoder = encoder();
    CrossEntropyLoss::new()
        .record(context, &mut encoder, &inputs, &outputs)
        .expect("record");
    context.queue().submit([encoder.finish()]);
    let loss = outputs.read(context).expect("read").value().expect("mean");
    // Rows (0, 1, 2) → 1 and (3, 4, 5) → 2: ln(1 + e + e²) − 1 and ln(1 + e + e²) − 2.
    let expected = (1f32 + 1f32.exp() + 2f32.exp()).ln() - 1.5;
    assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
}
