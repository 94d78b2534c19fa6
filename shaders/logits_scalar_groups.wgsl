// Group accessors over the scalar storages (logits_f32.wgsl, logits_f16.wgsl,
// logits_bf16.wgsl), so cross_entropy.wgsl compiles with either kind of storage;
// they are only called when VECTORISED, which the scalar storages never are.

fn load_logits4(group: u32) -> vec4<f32> {
    let element = group * 4u;
    return vec4<f32>(load_logit(element), load_logit(element + 1u), load_logit(element + 2u), load_logit(element + 3u));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    for (var k = 0u; k < 4u; k++) {
        store_gradient(group * 4u + k, values[k]);
    }
}
