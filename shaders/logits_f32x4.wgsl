// Logits and gradient as f32, four to a vec4 (the vectorised row kernel: rows of
// a multiple of 4 logits that start at a multiple of 4, so every vec4 belongs to
// one row and one invocation). GRADIENT_STORAGE and LOGITS_ACCESS as in
// logits_f32.wgsl.

@group(0) @binding(BINDING_LOGITS) var<storage, LOGITS_ACCESS> logits: array<vec4<f32>>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<vec4<f32>>;

fn load_logit(element: u32) -> f32 {
    return logits[element >> 2u][element & 3u];
}

// Logits 4·group … 4·group + 3.
fn load_logits4(group: u32) -> vec4<f32> {
    return logits[group];
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    GRADIENT_STORAGE[group] = values;
}

// One entry; only correct while the invocation owns the entry's whole group,
// as in the VECTORISED kernel (the kernel stores groups there; this serves its
// scalar branch, which VECTORISED compiles out).
fn store_gradient(element: u32, value: f32) {
    GRADIENT_STORAGE[element >> 2u][element & 3u] = value;
}
