// Logits and gradient as bf16, two per 32-bit word (element e is the low half of
// word e/2 when e is even, the high half when odd). A bf16 is the top 16 bits of
// an f32: loading shifts it up; storing rounds the f32 to nearest-even on bit 16
// (NaN stays a quiet NaN). Two invocations may own the two halves of one word
// (a row boundary, or neighbouring classes), and no store is atomic. In the
// cross-entropy the words are plain (shaders/logit_words*.wgsl): in contiguous
// rows a shared word is written once, whole, by the straddling-word pass
// (shaders/straddling_words.wgsl), in N-d rows every gradient word by the
// gradient-word pass (shaders/gradient_words.wgsl); the family's kernels store
// whole words (shaders/family_words_bf16.wgsl). bf16_half and bf16_bits come
// from shaders/bf16.wgsl. The cross-entropy stores the words inside a
// contiguous row whole (logits_half_word_groups.wgsl) and only a row's edge
// entries here; rows of a
// multiple of 4 logits at aligned offsets use logits_bf16x4.wgsl instead.

fn load_logit(element: u32) -> f32 {
    return bf16_half(load_word(element >> 1u), (element & 1u) == 1u);
}

fn store_gradient(element: u32, value: f32) {
    store_half_word(element >> 1u, (element & 1u) * 16u, bf16_bits(value));
}
