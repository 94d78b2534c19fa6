// Group accessors over bf16 words (shaders/logits_bf16.wgsl with the atomic
// words of logit_words_atomic*.wgsl): group g is elements 4·g … 4·g + 3, the
// halves of words 2·g and 2·g + 1. The row kernel calls them only for groups
// that lie wholly inside one row (and so inside the caller's slice), which one
// invocation owns: both halves of each word are computed by that invocation and
// stored with one whole-word store, no read-modify-write. Entries of partial
// groups go through store_gradient, the atomic half-word store.

fn load_logits4(group: u32) -> vec4<f32> {
    let low = load_word(group * 2u);
    let high = load_word(group * 2u + 1u);
    return vec4<f32>(bf16_half(low, false), bf16_half(low, true), bf16_half(high, false), bf16_half(high, true));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group * 2u, bf16_bits(values.x) | (bf16_bits(values.y) << 16u));
    store_word(group * 2u + 1u, bf16_bits(values.z) | (bf16_bits(values.w) << 16u));
}
