// 32-bit words holding two 16-bit halves (bf16, or f16 read as words) of
// contiguous rows, stored without atomics, with a separate gradient: the logits
// read-only at BINDING_LOGITS, the gradient at BINDING_GRADIENT, plain arrays of
// u32 (logit_words_deferred_in_place.wgsl: one writable array). The row kernel
// stores only the words whose two halves are its own row's, whole; a word that
// straddles a row's boundary (shared with the neighbouring row, or with bytes
// outside the caller's slice) is left as it is: the row kernel records the
// row's halves in it (record_edge_halves, into PLANE_EDGE_HALVES), and the
// straddling-word pass (shaders/straddling_words.wgsl) writes each such word
// once, whole, after the rows on both sides are done.

alias LogitWord = u32;

@group(0) @binding(BINDING_LOGITS) var<storage, read> logits: array<u32>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<u32>;

fn load_word(index: u32) -> u32 {
    return logits[index];
}

fn load_gradient_word(index: u32) -> u32 {
    return gradient[index];
}

fn store_word(index: u32, bits: u32) {
    gradient[index] = bits;
}

// A half of a word that straddles a row's boundary: deferred to the
// straddling-word pass, which gets it from record_edge_halves.
fn store_half_word(index: u32, shift: u32, bits: u32) {}
