// Logits and gradient as 16-bit floats, two per 32-bit word (element e is the
// low half of word e/2 when e is even, the high half when odd): bf16, and f16
// on adapters without Features::SHADER_F16 (and in every f16 kernel that
// reads whole words). word_half and half_bits, the conversions of one half,
// come from shaders/half_words_bf16.wgsl or half_words_f16.wgsl. Two
// invocations may own the two halves of one word (a row boundary, or
// neighbouring classes), and no store is atomic. In the cross-entropy the
// words are plain (shaders/logit_words*.wgsl): in contiguous rows a shared word
// is written once, whole, by the straddling-word pass
// (shaders/straddling_words.wgsl), in N-d rows every gradient word by the
// gradient-word pass (shaders/gradient_words.wgsl); the family's kernels store
// whole words (shaders/family_half_words.wgsl). The cross-entropy stores the
// words inside a contiguous row whole (logits_half_word_groups.wgsl) and only
// a row's edge entries here; rows of a multiple of 4 logits at aligned offsets
// use logits_half_words_x4.wgsl instead.

fn load_logit(element: u32) -> f32 {
    return word_half(load_word(element >> 1u), (element & 1u) == 1u);
}

fn store_gradient(element: u32, value: f32) {
    store_half_word(element >> 1u, (element & 1u) * 16u, half_bits(value));
}
