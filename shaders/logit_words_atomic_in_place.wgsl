// The words of logit_words_atomic.wgsl with the gradient stored over the logits:
// one writable atomic array at BINDING_LOGITS (BINDING_GRADIENT is unused).

@group(0) @binding(BINDING_LOGITS) var<storage, read_write> logits: array<atomic<u32>>;

fn load_word(index: u32) -> u32 {
    return atomicLoad(&logits[index]);
}

// Sets the 16 bits at `shift` (0 or 16) of word `index` to `bits`.
fn store_half_word(index: u32, shift: u32, bits: u32) {
    atomicAnd(&logits[index], ~(0xffffu << shift));
    atomicOr(&logits[index], bits << shift);
}

// Stores the whole word `index` (both halves owned by the calling invocation).
fn store_word(index: u32, bits: u32) {
    atomicStore(&logits[index], bits);
}
