// The words of logit_words_deferred.wgsl with the gradient stored over the
// logits: one writable array of u32 at BINDING_LOGITS (BINDING_GRADIENT is unused).

alias LogitWord = u32;

@group(0) @binding(BINDING_LOGITS) var<storage, read_write> logits: array<u32>;

fn load_word(index: u32) -> u32 {
    return logits[index];
}

fn load_gradient_word(index: u32) -> u32 {
    return logits[index];
}

fn store_word(index: u32, bits: u32) {
    logits[index] = bits;
}

// A half of a word that straddles a row's boundary: deferred to the
// straddling-word pass, which gets it from record_edge_halves.
fn store_half_word(index: u32, shift: u32, bits: u32) {}
