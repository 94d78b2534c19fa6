// Logits and gradient as f16 (Features::SHADER_F16; the prelude starts with
// `enable f16;`). Arithmetic stays f32: loads widen, stores round to nearest.
// The words come from shaders/logit_words*.wgsl, as in logits_f32.wgsl.

alias LogitWord = f16;

fn load_logit(element: u32) -> f32 {
    return f32(load_word(element));
}

fn store_gradient(element: u32, value: f32) {
    store_word(element, f16(value));
}
