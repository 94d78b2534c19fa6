//! A training-step shape: logits already on the GPU, the loss and gradient
//! recorded into the caller's command encoder next to the rest of the step, one
//! submission, and only the scalar loss read back.
//! `cargo run --release --example device_resident`

use wgpu::util::DeviceExt;
use xent::{
    Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOutput, LogitType, Shape, TargetType,
    UpstreamGradient,
};

fn main() -> xent::Result<()> {
    let context = Context::new()?;
    let device = context.device();
    let shape = Shape::new(1024, 32_000);

    // In a real model these come out of the previous layers' kernels.
    let logits: Vec<f32> = (0..shape.rows * shape.classes)
        .map(|index| (index % 97) as f32 * 0.01)
        .collect();
    let targets: Vec<i64> = (0..shape.rows as i64)
        .map(|row| row * 31 % shape.classes as i64)
        .collect();
    let storage = |label, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let logits_buffer = storage("logits", bytemuck::cast_slice(&logits));
    let targets_buffer = storage("targets", bytemuck::cast_slice(&targets));
    let gradient_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("dlogits"),
        size: logits_buffer.size(),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });

    // Made once, reused every step.
    let outputs = DeviceOutputs::new(&context, shape.rows)?;
    let loss = CrossEntropyLoss::new();
    for step in 0..3 {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        // ... forward passes recorded here ...
        let inputs = DeviceInputs {
            // Slices: `buffer.slice(..)` here; a tensor's range of a pooled buffer in a framework.
            logits: logits_buffer.slice(..),
            logit_type: LogitType::F32,
            targets: targets_buffer.slice(..),
            target_type: TargetType::I64,
            shape,
            gradient: GradientOutput::Buffer(gradient_buffer.slice(..)), // or GradientOutput::InPlace
            // Autodiff's incoming gradient goes here (a device f32, or a constant scale).
            upstream: UpstreamGradient::ONE,
        };
        loss.record(&context, &mut encoder, &inputs, &outputs)?;
        // ... backward passes that read `gradient_buffer` recorded here ...
        context.queue().submit([encoder.finish()]);
        println!("step {step}: loss = {:?}", outputs.read(&context)?.value());
    }
    Ok(())
}
