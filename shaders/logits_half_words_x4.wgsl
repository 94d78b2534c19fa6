// Logits and gradient as 16-bit floats in 32-bit words (bf16, and f16 on
// adapters without Features::SHADER_F16), four to a vec2<u32> (8 bytes; the
// vectorised row kernel, as in logits_f32x4.wgsl). Element 4·g + k is the low
// (k even) or high (k odd) half of word k/2 of group g. Each group belongs to
// one invocation, so whole words are stored: no atomics, unlike
// logits_half_words.wgsl. The words come from shaders/logit_words*.wgsl;
// word_half and half_bits from shaders/half_words_bf16.wgsl or half_words_f16.wgsl.

alias LogitWord = vec2<u32>;

fn load_logit(element: u32) -> f32 {
    let word = load_word(element >> 2u)[(element >> 1u) & 1u];
    return word_half(word, (element & 1u) == 1u);
}

fn load_logits4(group: u32) -> vec4<f32> {
    let words = load_word(group);
    return vec4<f32>(word_half(words.x, false), word_half(words.x, true), word_half(words.y, false), word_half(words.y, true));
}

fn store_gradients4(group: u32, values: vec4<f32>) {
    store_word(group, vec2<u32>(
        half_bits(values.x) | (half_bits(values.y) << 16u),
        half_bits(values.z) | (half_bits(values.w) << 16u),
    ));
}

// One entry; only correct while the invocation owns the entry's whole group.
// The GROUPED kernel over this storage (LogitAccess::Groups: no partial groups)
// stores whole groups; this serves its entry-by-entry branch, which GROUPED
// compiles out.
fn store_gradient(element: u32, value: f32) {
    var words = load_gradient_word(element >> 2u);
    let word = (element >> 1u) & 1u;
    let shift = (element & 1u) * 16u;
    words[word] = (words[word] & ~(0xffffu << shift)) | (half_bits(value) << shift);
    store_word(element >> 2u, words);
}
