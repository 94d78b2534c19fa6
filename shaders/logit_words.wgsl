// The logits' storage words with a separate gradient: the logits read-only at
// BINDING_LOGITS and the gradient at BINDING_GRADIENT, both arrays of LogitWord,
// the word type that the element accessors (shaders/logits_f32.wgsl,
// logits_f16.wgsl, logits_*x4.wgsl) declare, or u32 for the 16-bit halves
// (shaders/deferred_half_words.wgsl: the words that straddling_words.wgsl or
// gradient_words.wgsl write). logit_words_in_place.wgsl has the
// same functions over one writable buffer (the gradient stored over the logits);
// the kernel is compiled with one of the two appended to one accessor file.

@group(0) @binding(BINDING_LOGITS) var<storage, read> logits: array<LogitWord>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<LogitWord>;

fn load_word(index: u32) -> LogitWord {
    return logits[index];
}

fn load_gradient_word(index: u32) -> LogitWord {
    return gradient[index];
}

fn store_word(index: u32, value: LogitWord) {
    gradient[index] = value;
}
