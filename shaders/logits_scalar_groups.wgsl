// Group accessors over the scalar storages logits_f32.wgsl and logits_f16.wgsl
// (bf16 words have logits_half_word_groups.wgsl): group g is elements 4·g … 4·g + 3
// of the binding. The GROUPED row kernel (LogitAccess::MaskedGroups) calls them
// only for groups wholly inside one row, which one invocation owns; the loads
// of a group are 4 independent entries, and the kernel issues several groups'
// loads before it consumes them.

fn load_logits4(group: u32) -> vec4<f32> {
    let element = group * 4u;
    return vec4<f32>(load_logit(element), load_logit(element + 1u), load_logit(element + 2u), load_logit(element + 3u));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    for (var k = 0u; k < 4u; k++) {
        store_gradient(group * 4u + k, values[k]);
    }
}
