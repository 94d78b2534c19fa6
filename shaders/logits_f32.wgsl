// Logits and gradient as f32. GRADIENT_STORAGE is `gradient` (a separate output)
// or `logits` (the gradient overwrites the logits in place); LOGITS_ACCESS is
// `read` or `read_write` to match.

@group(0) @binding(BINDING_LOGITS) var<storage, LOGITS_ACCESS> logits: array<f32>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<f32>;

fn load_logit(element: u32) -> f32 {
    return logits[element];
}

fn store_gradient(element: u32, value: f32) {
    GRADIENT_STORAGE[element] = value;
}
