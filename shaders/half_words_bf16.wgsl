// The halves of bf16 words, as shaders/logits_half_words.wgsl,
// logits_half_words_x4.wgsl, logits_half_word_groups.wgsl and
// family_half_words.wgsl read and write them (shaders/bf16.wgsl's conversions
// under the names those files use; shaders/half_words_f16.wgsl defines the
// same two for f16).

fn word_half(word: u32, high: bool) -> f32 {
    return bf16_half(word, high);
}

fn half_bits(value: f32) -> u32 {
    return bf16_bits(value);
}
