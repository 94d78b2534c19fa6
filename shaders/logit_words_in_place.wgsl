// The logits' storage words with the gradient stored over the logits: one
// writable array of LogitWord at BINDING_LOGITS (BINDING_GRADIENT is unused), with
// the functions of logit_words.wgsl.

@group(0) @binding(BINDING_LOGITS) var<storage, read_write> logits: array<LogitWord>;

fn load_word(index: u32) -> LogitWord {
    return logits[index];
}

fn load_gradient_word(index: u32) -> LogitWord {
    return logits[index];
}

fn store_word(index: u32, value: LogitWord) {
    logits[index] = value;
}
