// The halves of bf16 words, as shaders/logits_half_word_groups.wgsl reads and
// writes them (shaders/bf16.wgsl's conversions under the names that file uses;
// shaders/logits_f16_words.wgsl defines the same two for f16).

fn word_half(word: u32, high: bool) -> f32 {
    return bf16_half(word, high);
}

fn half_bits(value: f32) -> u32 {
    return bf16_bits(value);
}
