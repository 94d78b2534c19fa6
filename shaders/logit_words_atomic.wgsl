// 32-bit words holding two 16-bit halves that two invocations may own
// (shaders/logits_bf16.wgsl), with a separate gradient: the logits read-only at
// BINDING_LOGITS, the gradient atomic at BINDING_GRADIENT. A half-word store
// clears and sets its half with atomicAnd / atomicOr, which commute with the
// other half's; a word whose halves one invocation owns is stored whole
// (store_word, a plain atomicStore: no read-modify-write).
// logit_words_atomic_in_place.wgsl has the same functions over one writable
// (atomic) buffer.

@group(0) @binding(BINDING_LOGITS) var<storage, read> logits: array<u32>;
@group(0) @binding(BINDING_GRADIENT) var<storage, read_write> gradient: array<atomic<u32>>;

fn load_word(index: u32) -> u32 {
    return logits[index];
}

// Sets the 16 bits at `shift` (0 or 16) of word `index` to `bits`.
fn store_half_word(index: u32, shift: u32, bits: u32) {
    atomicAnd(&gradient[index], ~(0xffffu << shift));
    atomicOr(&gradient[index], bits << shift);
}

// Stores the whole word `index` (both halves owned by the calling invocation).
fn store_word(index: u32, bits: u32) {
    atomicStore(&gradient[index], bits);
}
