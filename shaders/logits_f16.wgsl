// Logits and gradient as f16 (Features::SHADER_F16; the prelude starts with
// `enable f16;`). Arithmetic stays f32: loads widen, stores round to nearest.
// GRADIENT_STORAGE and LOGITS_ACCESS as in logits_f32.wgsl.

@group(0) @binding(BINDING_LOGITS) var<storage, LOGITS_ACCESS> logits: array<f16>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<f16>;

fn load_logit(element: u32) -> f32 {
    return f32(logits[element]);
}

fn store_gradient(element: u32, value: f32) {
    GRADIENT_STORAGE[element] = f16(value);
}
